//! `groupq._native`: the Python extension behind the `groupq` package.
//!
//! Thin glue over the library: numpy arrays in (f16 and bf16 as their
//! `uint16` bit patterns, viewed by the Python layer without a copy), the
//! library's plans run with the GIL released, numpy arrays out. Errors
//! become `groupq._native.GroupqError(kind, message)`, which the Python
//! layer turns into `groupq.Error` subclasses. No arithmetic lives here.

use groupq::half::slice::HalfBitsSliceExt;
use groupq::half::{bf16, f16};
use groupq::recipe::{QuantizeFormula, Recipe, TorchaoMapping};
use groupq::*;
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use std::collections::HashMap;
use std::sync::Mutex;

pyo3::create_exception!(_native, GroupqError, PyException);

/// A library error as `GroupqError(kind, message)`.
pub(crate) fn err(e: groupq::Error) -> PyErr {
    let kind = match &e {
        groupq::Error::InvalidProblem(_) => "invalid",
        groupq::Error::Unsupported(_) => "unsupported",
        groupq::Error::BufferTooSmall { .. } => "buffer",
        _ => "other",
    };
    GroupqError::new_err((kind, e.to_string()))
}

/// A usage error of the Python API, named like the library's.
pub(crate) fn invalid(msg: String) -> PyErr {
    GroupqError::new_err(("invalid", msg))
}

/// One CPU stream per thread count, made once (a stream owns a thread pool).
pub(crate) fn stream(threads: Option<usize>) -> PyResult<Stream> {
    static STREAMS: Mutex<Option<HashMap<usize, Stream>>> = Mutex::new(None);
    let n = match threads {
        Some(0) => return Err(invalid("threads must be at least 1".into())),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut map = STREAMS.lock().unwrap_or_else(|p| p.into_inner());
    let map = map.get_or_insert_with(HashMap::new);
    if let Some(s) = map.get(&n) {
        return Ok(s.clone());
    }
    let s = Stream::cpu_with_threads(n).map_err(err)?;
    map.insert(n, s.clone());
    Ok(s)
}

/// A flat, C-contiguous float array of one of the four kinds (f16/bf16 as
/// `uint16` bits).
pub(crate) enum Floats<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

/// Reads a float array of `kind` (`"float32"`, `"float64"`, `"float16"`,
/// `"bfloat16"`; the last two as `uint16` bits) as a slice, without a copy.
macro_rules! floats {
    ($obj:expr, $kind:expr, $name:expr, |$x:ident| $body:expr) => {{
        let obj: &Bound<'_, PyAny> = $obj;
        match $kind {
            "float32" => {
                let a = obj.extract::<PyReadonlyArray1<'_, f32>>()?;
                let $x = Floats::F32(slice(&a, $name)?);
                $body
            }
            "float64" => {
                let a = obj.extract::<PyReadonlyArray1<'_, f64>>()?;
                let $x = Floats::F64(slice(&a, $name)?);
                $body
            }
            "float16" => {
                let a = obj.extract::<PyReadonlyArray1<'_, u16>>()?;
                let $x = Floats::F16(
                    groupq::half::slice::HalfBitsSliceExt::reinterpret_cast::<f16>(slice(
                        &a, $name,
                    )?),
                );
                $body
            }
            "bfloat16" => {
                let a = obj.extract::<PyReadonlyArray1<'_, u16>>()?;
                let $x = Floats::Bf16(groupq::half::slice::HalfBitsSliceExt::reinterpret_cast::<
                    bf16,
                >(slice(&a, $name)?));
                $body
            }
            other => {
                return Err(GroupqError::new_err((
                    "unsupported",
                    format!(
                        "{}: dtype {other} is not float32, float64, float16 or bfloat16",
                        $name
                    ),
                )))
            }
        }
    }};
}

mod affine;

pub(crate) fn slice<'a, T: numpy::Element>(
    a: &'a PyReadonlyArray1<'_, T>,
    name: &str,
) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| invalid(format!("{name} must be C-contiguous")))
}

/// A new flat array of `n` elements, filled by `f` with the GIL released.
/// numpy allocates it (large arrays get transparent huge pages, which
/// makes the kernel's first writes several times cheaper than a `Vec`'s).
pub(crate) fn fill<'py, T: numpy::Element + Send>(
    py: Python<'py>,
    n: usize,
    f: impl FnOnce(&mut [T]) -> groupq::Result<()> + Send,
) -> PyResult<Bound<'py, PyArray1<T>>> {
    let a = PyArray1::<T>::zeros(py, n, false);
    {
        let mut w = a.readwrite();
        let out = w.as_slice_mut().map_err(|e| invalid(e.to_string()))?;
        py.detach(|| f(out)).map_err(err)?;
    }
    Ok(a)
}

/// A float type as numpy holds it: f32 and f64 as themselves, f16 and
/// bf16 as their `uint16` bits (the Python layer views them as the dtype).
pub(crate) trait Held: Element + Send {
    /// The numpy dtype name of the values.
    const NAME: &'static str;
    type Held: numpy::Element + Send;
    fn from_held(h: &mut [Self::Held]) -> &mut [Self];
}
impl Held for f32 {
    const NAME: &'static str = "float32";
    type Held = f32;
    fn from_held(h: &mut [f32]) -> &mut [f32] {
        h
    }
}
impl Held for f64 {
    const NAME: &'static str = "float64";
    type Held = f64;
    fn from_held(h: &mut [f64]) -> &mut [f64] {
        h
    }
}
impl Held for f16 {
    const NAME: &'static str = "float16";
    type Held = u16;
    fn from_held(h: &mut [u16]) -> &mut [f16] {
        h.reinterpret_cast_mut::<f16>()
    }
}
impl Held for bf16 {
    const NAME: &'static str = "bfloat16";
    type Held = u16;
    fn from_held(h: &mut [u16]) -> &mut [bf16] {
        h.reinterpret_cast_mut::<bf16>()
    }
}

/// [`fill`] for float values of `T`, held as numpy holds them.
pub(crate) fn fill_held<'py, T: Held>(
    py: Python<'py>,
    n: usize,
    f: impl FnOnce(&mut [T]) -> groupq::Result<()> + Send,
) -> PyResult<Bound<'py, PyArray1<T::Held>>> {
    fill::<T::Held>(py, n, |h| f(T::from_held(h)))
}

fn quantize_pg<T: Element, Q: IntElement>(
    st: &Stream,
    formula: Option<QuantizeFormula>,
    (x, s, z): (&[T], &[T], &[i32]),
    (outer, axis, g, rs): (usize, usize, usize, usize),
    (lo, hi): (i32, i32),
    out: &mut [Q],
) -> groupq::Result<()> {
    let desc = QuantizePerGroupDescriptor {
        outer_size: outer,
        axis_size: axis,
        group_size: g,
        q_min: lo,
        q_max: hi,
        input_element: T::KIND,
        output_element: Q::KIND,
    };
    let plan = match formula {
        None => QuantizePerGroupPlan::<T, Q>::select(st, &desc, Default::default())?,
        Some(f) => {
            QuantizePerGroupPlan::<T, Q>::select_with_formula(st, &desc, f, Default::default())?
        }
    };
    let ng = desc.num_groups();
    plan.run(
        st,
        Workspace::None,
        QuantizePerGroupArgs {
            input: TensorRef::with_strides(x, [outer, axis], [rs, 1])?,
            scale: TensorRef::new(s, [outer, ng])?,
            zero_point: TensorRef::new(z, [outer, ng])?,
            output: TensorMut::new(out, [outer, axis])?,
        },
    )
}

/// SPEC §3.1 per group: codes of `x` (`outer × axis`, flat) with one scale
/// (of `x`'s dtype) and zero point per group; `out_dtype` `"int8"` or
/// `"uint8"`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn quantize_per_group<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    kind: &str,
    scale: &Bound<'py, PyAny>,
    zero_point: PyReadonlyArray1<'py, i32>,
    dims: (usize, usize, usize, usize),
    range: (i32, i32),
    out_dtype: &str,
    formula: &str,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let st = stream(threads)?;
    let z = slice(&zero_point, "zero_point")?;
    let formula = match formula {
        "spec" => None,
        "torch-per-channel-group" => {
            Some(Recipe::torch_per_channel_group(range.0, range.1).quantize)
        }
        other => {
            return Err(invalid(format!(
                "formula {other:?} is not \"spec\" or \"torch-per-channel-group\""
            )))
        }
    };
    let n = dims.0 * dims.1;
    macro_rules! go {
        ($x:expr, $s:expr) => {
            match out_dtype {
                "int8" => fill::<i8>(py, n, |o| {
                    quantize_pg(&st, formula, ($x, $s, z), dims, range, o)
                })?
                .into_any(),
                "uint8" => fill::<u8>(py, n, |o| {
                    quantize_pg(&st, formula, ($x, $s, z), dims, range, o)
                })?
                .into_any(),
                other => {
                    return Err(GroupqError::new_err((
                        "unsupported",
                        format!("out_dtype {other} is not int8 or uint8"),
                    )))
                }
            }
        };
    }
    Ok(floats!(x, kind, "x", |xs| floats!(
        scale,
        kind,
        "scale",
        |ss| match (xs, ss) {
            (Floats::F32(x), Floats::F32(s)) => go!(x, s),
            (Floats::F64(x), Floats::F64(s)) => go!(x, s),
            (Floats::F16(x), Floats::F16(s)) => go!(x, s),
            (Floats::Bf16(x), Floats::Bf16(s)) => go!(x, s),
            _ => unreachable!("one kind for both"),
        }
    )))
}

fn dequantize_pg<Q: IntElement, T: Element>(
    st: &Stream,
    (q, s, z): (&[Q], &[T], &[i32]),
    (outer, axis, g, rs): (usize, usize, usize, usize),
    out: &mut [T],
) -> groupq::Result<()> {
    let desc = DequantizePerGroupDescriptor {
        outer_size: outer,
        axis_size: axis,
        group_size: g,
        input_element: Q::KIND,
        output_element: T::KIND,
    };
    let plan = DequantizePerGroupPlan::<Q, T>::select(st, &desc, Default::default())?;
    let ng = desc.num_groups();
    plan.run(
        st,
        Workspace::None,
        DequantizePerGroupArgs {
            input: TensorRef::with_strides(q, [outer, axis], [rs, 1])?,
            scale: TensorRef::new(s, [outer, ng])?,
            zero_point: TensorRef::new(z, [outer, ng])?,
            output: TensorMut::new(out, [outer, axis])?,
        },
    )
}

/// SPEC §3.2 per group: values of `kind` (f16/bf16 returned as `uint16`
/// bits) from int8/uint8 codes, scales of `kind`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn dequantize_per_group<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    q_dtype: &str,
    scale: &Bound<'py, PyAny>,
    zero_point: PyReadonlyArray1<'py, i32>,
    dims: (usize, usize, usize, usize),
    kind: &str,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let st = stream(threads)?;
    let z = slice(&zero_point, "zero_point")?;
    let n = dims.0 * dims.1;
    macro_rules! go {
        ($q:expr) => {
            floats!(scale, kind, "scale", |ss| match ss {
                Floats::F32(s) => fill_held::<f32>(py, n, |o| dequantize_pg(&st, ($q, s, z), dims, o))?.into_any(),
                Floats::F64(s) => fill_held::<f64>(py, n, |o| dequantize_pg(&st, ($q, s, z), dims, o))?.into_any(),
                Floats::F16(s) => fill_held::<f16>(py, n, |o| dequantize_pg(&st, ($q, s, z), dims, o))?.into_any(),
                Floats::Bf16(s) => fill_held::<bf16>(py, n, |o| dequantize_pg(&st, ($q, s, z), dims, o))?.into_any(),
            })
        };
    }
    Ok(match q_dtype {
        "int8" => {
            let a = q.extract::<PyReadonlyArray1<'_, i8>>()?;
            let qs = slice(&a, "q")?;
            go!(qs)
        }
        "uint8" => {
            let a = q.extract::<PyReadonlyArray1<'_, u8>>()?;
            let qs = slice(&a, "q")?;
            go!(qs)
        }
        other => {
            return Err(GroupqError::new_err((
                "unsupported",
                format!("q: dtype {other} is not int8 or uint8"),
            )))
        }
    })
}

/// The scale dtype a preset's peer stores.
#[derive(Clone, Copy)]
enum ScaleKind {
    Input,
    F32,
    F16,
}

/// The presets `quantize_dynamic` knows, in `presets()` order.
const PRESETS: [&str; 13] = [
    "torchao",
    "compressed-tensors",
    "gptq",
    "awq",
    "awq-f16",
    "torch-per-token",
    "gguf-q8_0",
    "gguf-q4_0",
    "gguf-q5_0",
    "gguf-q4_0-fused",
    "gguf-q5_0-fused",
    "gguf-q4_1",
    "gguf-q5_1",
];

/// The presets whose groups also have a float offset (ggml's `m`).
const WITH_OFFSET: [&str; 2] = ["gguf-q4_1", "gguf-q5_1"];

/// A preset's recipe, scale dtype and whether its codes are signed.
fn preset(
    name: &str,
    bits: u32,
    symmetric: bool,
    range: Option<(i32, i32)>,
) -> PyResult<(Recipe, ScaleKind, bool)> {
    if range.is_some() && name != "torchao" {
        return Err(invalid(format!(
            "preset {name}: q_min/q_max are the peer's; only the torchao preset takes a code range"
        )));
    }
    let need = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(invalid(format!(
                "preset {name}: {what} (bits {bits}, symmetric {symmetric})"
            )))
        }
    };
    Ok(match name {
        "torchao" => {
            need((1..=8).contains(&bits), "bits must be 1 to 8")?;
            // torchao's dtypes: int8 for 8 bits (symmetric or not), int1..int7
            // symmetric, uint1..uint7 asymmetric.
            let h = 1i32 << (bits - 1);
            let (mapping, lo, hi) = match (symmetric, bits) {
                (true, _) => (TorchaoMapping::Symmetric, -h, h - 1),
                (false, 8) => (TorchaoMapping::Asymmetric, -128, 127),
                (false, _) => (TorchaoMapping::Asymmetric, 0, (1 << bits) - 1),
            };
            let (lo, hi) = range.unwrap_or((lo, hi));
            need(
                lo <= hi && -128 <= lo && hi <= 255 && (lo < 0) <= (hi <= 127),
                "q_min..=q_max must be an 8-bit range (int8 or uint8 codes)",
            )?;
            (Recipe::torchao(mapping, lo, hi), ScaleKind::Input, lo < 0)
        }
        "compressed-tensors" => {
            need(bits == 4, "compressed-tensors' W4A16 presets take 4 bits")?;
            let r = if symmetric {
                Recipe::compressed_tensors_w4a16()
            } else {
                Recipe::compressed_tensors_w4a16_asym()
            };
            (r, ScaleKind::Input, true)
        }
        "gptq" => {
            need(matches!(bits, 2 | 3 | 4 | 8), "bits must be 2, 3, 4 or 8")?;
            (Recipe::gptq(symmetric, bits), ScaleKind::F32, false)
        }
        "awq" | "awq-f16" => {
            need((1..=8).contains(&bits), "bits must be 1 to 8")?;
            let r = if name == "awq" {
                Recipe::awq(!symmetric, bits)
            } else {
                Recipe::awq_f16(!symmetric, bits)
            };
            let s = if name == "awq" {
                ScaleKind::Input
            } else {
                ScaleKind::F16
            };
            (r, s, symmetric)
        }
        "torch-per-token" => {
            need(bits == 8, "PyTorch's per-token preset is int8")?;
            (
                Recipe::torch_per_token_asymmetric_int8(),
                ScaleKind::F32,
                true,
            )
        }
        "gguf-q8_0" => {
            need(bits == 8, "q8_0 is 8-bit")?;
            (Recipe::gguf_q8_0(), ScaleKind::F32, true)
        }
        "gguf-q4_0" => {
            need(bits == 4, "q4_0 is 4-bit")?;
            (Recipe::gguf_q4_0(), ScaleKind::F32, false)
        }
        "gguf-q5_0" => {
            need(bits == 5, "q5_0 is 5-bit")?;
            (Recipe::gguf_q5_0(), ScaleKind::F32, false)
        }
        "gguf-q4_0-fused" | "gguf-q5_0-fused" => {
            let four = name == "gguf-q4_0-fused";
            need(bits == if four { 4 } else { 5 }, "the block type's bits")?;
            let r = if four {
                Recipe::gguf_q4_0()
            } else {
                Recipe::gguf_q5_0()
            };
            (r.fused(), ScaleKind::F32, false)
        }
        "gguf-q4_1" => {
            need(bits == 4, "q4_1 is 4-bit")?;
            (Recipe::gguf_q4_1(), ScaleKind::F32, false)
        }
        "gguf-q5_1" => {
            need(bits == 5, "q5_1 is 5-bit")?;
            (Recipe::gguf_q5_1(), ScaleKind::F32, false)
        }
        other => {
            return Err(invalid(format!(
                "unknown preset {other:?}; groupq.presets() lists {}",
                PRESETS.join(", ")
            )))
        }
    })
}

/// The names `quantize_dynamic` takes as `preset`.
#[pyfunction]
fn presets() -> Vec<&'static str> {
    PRESETS.to_vec()
}

#[allow(clippy::type_complexity)]
fn dynamic<T: Element, S: Element, Q: IntElement>(
    st: &Stream,
    x: &[T],
    recipe: Recipe,
    (outer, axis, g, rs): (usize, usize, usize, usize),
    (s, z, q, offset): (&mut [S], &mut [i32], &mut [Q], Option<&mut [S]>),
) -> groupq::Result<()> {
    let desc = QuantizeDynamicPerGroupDescriptor {
        outer_size: outer,
        axis_size: axis,
        group_size: g,
        recipe,
        input_element: T::KIND,
        scale_element: S::KIND,
        output_element: Q::KIND,
    };
    let plan = QuantizeDynamicPerGroupPlan::<T, S, Q>::select(st, &desc, Default::default())?;
    let ng = desc.num_groups();
    let args = QuantizeDynamicPerGroupArgs {
        input: TensorRef::with_strides(x, [outer, axis], [rs, 1])?,
        scale: TensorMut::new(s, [outer, ng])?,
        zero_point: TensorMut::new(z, [outer, ng])?,
        output: TensorMut::new(q, [outer, axis])?,
    };
    match offset {
        Some(m) => plan.run_with_offset(st, Workspace::None, args, TensorMut::new(m, [outer, ng])?),
        None => plan.run(st, Workspace::None, args),
    }
}

/// `(codes, scale, zero_point, scale_dtype, offset)`.
type Quantized<'py> = (
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    &'static str,
    Option<Bound<'py, PyAny>>,
);

fn dynamic_out<'py, T: Element, S: Held, Q: IntElement + numpy::Element>(
    py: Python<'py>,
    st: &Stream,
    x: &[T],
    recipe: Recipe,
    dims: (usize, usize, usize, usize),
    with_offset: bool,
) -> PyResult<Quantized<'py>> {
    let ng = dims.0 * (dims.1 / dims.2.max(1));
    let s = PyArray1::<S::Held>::zeros(py, ng, false);
    let z = PyArray1::<i32>::zeros(py, ng, false);
    let q = PyArray1::<Q>::zeros(py, dims.0 * dims.1, false);
    let m = with_offset.then(|| PyArray1::<S::Held>::zeros(py, ng, false));
    {
        let (mut sw, mut zw, mut qw) = (s.readwrite(), z.readwrite(), q.readwrite());
        let mut mw = m.as_ref().map(|m| m.readwrite());
        let bad = |e: numpy::AsSliceError| invalid(e.to_string());
        let sl = S::from_held(sw.as_slice_mut().map_err(bad)?);
        let zl = zw.as_slice_mut().map_err(bad)?;
        let ql = qw.as_slice_mut().map_err(bad)?;
        let ml = match mw.as_mut() {
            Some(w) => Some(S::from_held(w.as_slice_mut().map_err(bad)?)),
            None => None,
        };
        py.detach(|| dynamic(st, x, recipe, dims, (sl, zl, ql, ml)))
            .map_err(err)?;
    }
    Ok((
        q.into_any(),
        s.into_any(),
        z.into_any(),
        S::NAME,
        m.map(|m| m.into_any()),
    ))
}

/// A preset's codes, scales and zero points for `x` (`outer × axis`,
/// flat, of `kind`): `(codes, scale, zero_point, scale_dtype, offset)`,
/// `offset` for the presets that have one (then `offset` must be asked
/// for: the caller cannot dequantize without it).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn quantize_dynamic<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    kind: &str,
    preset_name: &str,
    dims: (usize, usize, usize, usize),
    bits: u32,
    symmetric: bool,
    offset: bool,
    range: Option<(i32, i32)>,
    threads: Option<usize>,
) -> PyResult<Quantized<'py>> {
    let st = stream(threads)?;
    let (recipe, sk, signed) = preset(preset_name, bits, symmetric, range)?;
    let has_offset = WITH_OFFSET.contains(&preset_name);
    if has_offset != offset {
        return Err(invalid(if has_offset {
            format!("preset {preset_name} has a float offset per group (ggml's m): pass offset=True to get (codes, scale, zero_point, offset)")
        } else {
            format!("preset {preset_name} has no offset: leave offset=False")
        }));
    }
    macro_rules! by_q {
        ($T:ty, $S:ty, $x:expr) => {
            if signed {
                dynamic_out::<$T, $S, i8>(py, &st, $x, recipe, dims, offset)
            } else {
                dynamic_out::<$T, $S, u8>(py, &st, $x, recipe, dims, offset)
            }
        };
    }
    macro_rules! by_s {
        ($T:ty, $x:expr) => {
            match sk {
                ScaleKind::Input => by_q!($T, $T, $x),
                ScaleKind::F32 => by_q!($T, f32, $x),
                ScaleKind::F16 => by_q!($T, f16, $x),
            }
        };
    }
    floats!(x, kind, "x", |xs| match xs {
        Floats::F32(x) => by_s!(f32, x),
        Floats::F64(x) => by_s!(f64, x),
        Floats::F16(x) => by_s!(f16, x),
        Floats::Bf16(x) => by_s!(bf16, x),
    })
}

/// A packer's result as a flat array.
fn packed<T: numpy::Element>(
    py: Python<'_>,
    r: groupq::Result<Vec<T>>,
) -> PyResult<Bound<'_, PyAny>> {
    Ok(PyArray1::from_vec(py, r.map_err(err)?).into_any())
}

fn gptq_encoding(name: &str) -> PyResult<pack::GptqZeros> {
    Ok(match name {
        "v2" => pack::GptqZeros::V2,
        "v1" => pack::GptqZeros::V1,
        "v1-whole-word" => pack::GptqZeros::V1WholeWord,
        "v1-autogptq" => pack::GptqZeros::V1AutoGptq,
        other => {
            return Err(invalid(format!(
                "encoding {other:?} is not v2, v1, v1-whole-word or v1-autogptq"
            )))
        }
    })
}

fn gguf_kind(name: &str) -> PyResult<pack::GgufBlock> {
    Ok(match name {
        "q8_0" => pack::GgufBlock::Q8_0,
        "q4_0" => pack::GgufBlock::Q4_0,
        "q4_1" => pack::GgufBlock::Q4_1,
        "q5_0" => pack::GgufBlock::Q5_0,
        "q5_1" => pack::GgufBlock::Q5_1,
        other => {
            return Err(invalid(format!(
                "block type {other:?} is not q8_0, q4_0, q4_1, q5_0 or q5_1"
            )))
        }
    })
}

/// The packers and unpackers of `groupq::pack`, one entry point each:
/// `pack(name, data, dims, bits, encoding)` with flat arrays.
#[pyfunction]
#[pyo3(signature = (name, data, n, k, bits, encoding = "v2"))]
fn pack_words<'py>(
    py: Python<'py>,
    name: &str,
    data: &Bound<'py, PyAny>,
    n: usize,
    k: usize,
    bits: u32,
    encoding: &str,
) -> PyResult<Bound<'py, PyAny>> {
    // `$d`: the data as a slice of `$t`, borrowed from the array (no copy).
    macro_rules! with {
        ($t:ty, |$d:ident| $e:expr) => {{
            let a = data.extract::<PyReadonlyArray1<'_, $t>>()?;
            let $d = slice(&a, "data")?;
            $e
        }};
    }
    match name {
        "gptq_qweight" => with!(u8, |d| packed(py, pack::gptq_qweight(d, n, k, bits))),
        "gptq_qweight_unpack" => with!(i32, |d| packed(
            py,
            pack::gptq_qweight_unpack(d, n, k, bits)
        )),
        "gptq_qzeros" => {
            let enc = gptq_encoding(encoding)?;
            with!(i32, |d| packed(py, pack::gptq_qzeros(d, n, k, bits, enc)))
        }
        "gptq_qzeros_unpack" => {
            let enc = gptq_encoding(encoding)?;
            with!(i32, |d| packed(
                py,
                pack::gptq_qzeros_unpack(d, n, k, bits, enc)
            ))
        }
        "awq_qweight" => with!(u8, |d| packed(py, pack::awq_qweight(d, n, k, bits))),
        "awq_qweight_unpack" => with!(i32, |d| packed(py, pack::awq_qweight_unpack(d, n, k, bits))),
        "awq_qzeros" => with!(i32, |d| packed(py, pack::awq_qzeros(d, n, k, bits))),
        "awq_qzeros_unpack" => with!(i32, |d| packed(py, pack::awq_qzeros_unpack(d, n, k, bits))),
        "compressed_tensors_weight" => {
            with!(i8, |d| packed(
                py,
                pack::compressed_tensors_weight(d, n, k, bits)
            ))
        }
        "compressed_tensors_weight_unpack" => {
            with!(i32, |d| packed(
                py,
                pack::compressed_tensors_weight_unpack(d, n, k, bits)
            ))
        }
        "compressed_tensors_zero_point" => {
            with!(i32, |d| packed(
                py,
                pack::compressed_tensors_zero_point(d, n, k, bits)
            ))
        }
        "compressed_tensors_zero_point_unpack" => {
            with!(i32, |d| packed(
                py,
                pack::compressed_tensors_zero_point_unpack(d, n, k, bits)
            ))
        }
        other => Err(invalid(format!("no packer named {other:?}"))),
    }
}

/// ggml blocks: codes (int32, a multiple of 32), `d` and `m` as f16 bits
/// (`uint16`), to the bytes gguf stores.
#[pyfunction]
#[pyo3(signature = (kind, codes, d, m = None))]
fn gguf_blocks<'py>(
    py: Python<'py>,
    kind: &str,
    codes: PyReadonlyArray1<'py, i32>,
    d: PyReadonlyArray1<'py, u16>,
    m: Option<PyReadonlyArray1<'py, u16>>,
) -> PyResult<Bound<'py, PyAny>> {
    let m = match &m {
        Some(m) => Some(slice(m, "m")?),
        None => None,
    };
    packed(
        py,
        pack::gguf_blocks(
            gguf_kind(kind)?,
            slice(&codes, "codes")?,
            slice(&d, "d")?,
            m,
        ),
    )
}

type Blocks<'py> = (
    Bound<'py, PyArray1<i32>>,
    Bound<'py, PyArray1<u16>>,
    Option<Bound<'py, PyArray1<u16>>>,
);

/// The inverse of [`gguf_blocks`]: `(codes, d, m)`.
#[pyfunction]
fn gguf_blocks_unpack<'py>(
    py: Python<'py>,
    kind: &str,
    data: PyReadonlyArray1<'py, u8>,
) -> PyResult<Blocks<'py>> {
    let (q, d, m) =
        pack::gguf_blocks_unpack(gguf_kind(kind)?, slice(&data, "data")?).map_err(err)?;
    Ok((
        PyArray1::from_vec(py, q),
        PyArray1::from_vec(py, d),
        m.map(|m| PyArray1::from_vec(py, m)),
    ))
}

fn ggml_type(name: &str) -> PyResult<groupq::ggml::GgmlType> {
    groupq::ggml::GgmlType::from_name(name).ok_or_else(|| {
        let all: Vec<&str> = groupq::ggml::GgmlType::ALL
            .iter()
            .map(|t| t.name())
            .collect();
        invalid(format!(
            "ggml type {name:?} is not one of {}",
            all.join(", ")
        ))
    })
}

/// The ggml block types, by name.
#[pyfunction]
fn ggml_types() -> Vec<&'static str> {
    groupq::ggml::GgmlType::ALL
        .iter()
        .map(|t| t.name())
        .collect()
}

/// `(block_size, type_size)` of a ggml type: values per block, bytes per
/// block.
#[pyfunction]
fn ggml_type_info(name: &str) -> PyResult<(usize, usize)> {
    let t = ggml_type(name)?;
    Ok((t.block_size(), t.type_size()))
}

/// ggml's `ggml_quantize_chunk`: f32 rows (`rows × n`, flat) to blocks
/// (`rows × bytes_per_row`), with an optional importance matrix of `n`.
#[pyfunction]
#[pyo3(signature = (x, rows, n, type_name, imatrix = None, threads = None))]
fn ggml_quantize<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f32>,
    rows: usize,
    n: usize,
    type_name: &str,
    imatrix: Option<PyReadonlyArray1<'py, f32>>,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray1<u8>>> {
    let st = stream(threads)?;
    let t = ggml_type(type_name)?;
    let xs = slice(&x, "x")?;
    let im = match &imatrix {
        Some(a) => Some(slice(a, "imatrix")?),
        None => None,
    };
    let bpr = n / t.block_size().max(1) * t.type_size();
    fill::<u8>(py, rows * bpr, |out| {
        let desc = QuantizeGgmlBlocksDescriptor {
            rows,
            n_per_row: n,
            ggml_type: t,
            imatrix: im.is_some(),
        };
        let plan = QuantizeGgmlBlocksPlan::select(&st, &desc, Default::default())?;
        plan.run(
            &st,
            Workspace::None,
            QuantizeGgmlBlocksArgs {
                input: TensorRef::new(xs, [rows, n])?,
                imatrix: im,
                output: TensorMut::new(out, [rows, bpr])?,
            },
        )
    })
}

/// ggml's dequantization: blocks (`rows × bytes_per_row`, flat) to f32
/// (`rows × n`).
#[pyfunction]
#[pyo3(signature = (blocks, rows, n, type_name, threads = None))]
fn ggml_dequantize<'py>(
    py: Python<'py>,
    blocks: PyReadonlyArray1<'py, u8>,
    rows: usize,
    n: usize,
    type_name: &str,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let st = stream(threads)?;
    let t = ggml_type(type_name)?;
    let b = slice(&blocks, "blocks")?;
    let bpr = n / t.block_size().max(1) * t.type_size();
    fill::<f32>(py, rows * n, |out| {
        let desc = DequantizeGgmlBlocksDescriptor {
            rows,
            n_per_row: n,
            ggml_type: t,
        };
        let plan = DequantizeGgmlBlocksPlan::select(&st, &desc, Default::default())?;
        plan.run(
            &st,
            Workspace::None,
            DequantizeGgmlBlocksArgs {
                input: TensorRef::new(b, [rows, bpr])?,
                output: TensorMut::new(out, [rows, n])?,
            },
        )
    })
}

/// Runs the `groupq` command line (`argv[0]` the program name); returns
/// its exit status.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(|| groupq_cli::cli::main_with_args(argv))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("GroupqError", m.py().get_type::<GroupqError>())?;
    m.add_function(wrap_pyfunction!(quantize_per_group, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize_per_group, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_dynamic, m)?)?;
    m.add_function(wrap_pyfunction!(presets, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(pack_words, m)?)?;
    m.add_function(wrap_pyfunction!(affine::affine_formulas, m)?)?;
    m.add_function(wrap_pyfunction!(affine::affine_quantize, m)?)?;
    m.add_function(wrap_pyfunction!(affine::affine_dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(affine::affine_fake_quantize, m)?)?;
    m.add_function(wrap_pyfunction!(affine::affine_per_token_dynamic, m)?)?;
    m.add_function(wrap_pyfunction!(ggml_types, m)?)?;
    m.add_function(wrap_pyfunction!(ggml_type_info, m)?)?;
    m.add_function(wrap_pyfunction!(ggml_quantize, m)?)?;
    m.add_function(wrap_pyfunction!(ggml_dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(gguf_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(gguf_blocks_unpack, m)?)?;
    Ok(())
}
