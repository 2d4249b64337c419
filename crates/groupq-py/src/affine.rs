//! The affine plans (`groupq::affine`: per tensor, per channel on any axis,
//! per token, per group on any axis, blocks; PyTorch's quantize,
//! dequantize and fake-quantize ops) for numpy arrays of any rank up to 8
//! and any positive strides.
//!
//! Every call runs the rank-8 plans: an array of rank `r` is the same array
//! with `8 − r` leading dimensions of extent 1 (the granularity's axes
//! shift with it), which changes neither the elements' parameters nor
//! their order.

use crate::{err, fill, fill_held, invalid, slice, stream, Floats, GroupqError, Held};
use groupq::affine::{AffineFormula, Granularity, Shape, MAX_RANK};
use groupq::half::{bf16, f16};
use groupq::*;
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::prelude::*;

/// Dimensions and strides padded to rank 8 with leading extent-1 axes.
#[derive(Clone, Copy)]
pub(crate) struct Nd {
    rank: usize,
    dims: [usize; MAX_RANK],
}

impl Nd {
    fn new(shape: &[usize]) -> PyResult<Nd> {
        if shape.len() > MAX_RANK {
            return Err(invalid(format!(
                "rank {} (shape {shape:?}) is above the affine plans' {MAX_RANK}",
                shape.len()
            )));
        }
        let mut dims = [1; MAX_RANK];
        dims[MAX_RANK - shape.len()..].copy_from_slice(shape);
        Ok(Nd {
            rank: shape.len(),
            dims,
        })
    }

    fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// Element strides padded the same way.
    fn strides(&self, strides: &[usize]) -> PyResult<[usize; MAX_RANK]> {
        if strides.len() != self.rank {
            return Err(invalid(format!(
                "{} strides for a rank-{} array",
                strides.len(),
                self.rank
            )));
        }
        let mut out = [0; MAX_RANK];
        out[MAX_RANK - self.rank..].copy_from_slice(strides);
        Ok(out)
    }

    /// Row-major strides of a dense array of these dimensions.
    fn dense(&self) -> [usize; MAX_RANK] {
        let mut out = [0; MAX_RANK];
        let mut acc = 1;
        for d in (0..MAX_RANK).rev() {
            out[d] = acc;
            acc *= self.dims[d];
        }
        out
    }

    /// An axis of the caller's array as an axis of the padded one.
    fn axis(&self, axis: usize, what: &str) -> PyResult<usize> {
        if axis >= self.rank.max(1) {
            return Err(invalid(format!(
                "{what} axis {axis} is out of range for a rank-{} array",
                self.rank
            )));
        }
        Ok(axis + MAX_RANK - self.rank)
    }

    fn granularity(&self, g: &Gran) -> PyResult<Granularity> {
        Ok(match g.0.as_str() {
            "per_tensor" => Granularity::PerTensor,
            "per_token" => Granularity::PerToken,
            "per_channel" => Granularity::PerChannel {
                axis: self.axis(need(g.1, "per_channel", "axis")?, "per_channel")?,
            },
            "per_group" => Granularity::PerGroup {
                axis: self.axis(need(g.1, "per_group", "axis")?, "per_group")?,
                group_size: need(g.2, "per_group", "group_size")?,
            },
            "blocks" => {
                let b = g
                    .3
                    .as_ref()
                    .ok_or_else(|| invalid("granularity blocks needs block_size".into()))?;
                if b.len() != self.rank {
                    return Err(invalid(format!(
                        "block_size {b:?} has {} entries for a rank-{} array",
                        b.len(),
                        self.rank
                    )));
                }
                let mut blocks = [1; MAX_RANK];
                blocks[MAX_RANK - self.rank..].copy_from_slice(b);
                Granularity::Blocks(blocks)
            }
            other => {
                return Err(invalid(format!(
                    "granularity {other:?} is not per_tensor, per_channel, per_token, per_group or blocks"
                )))
            }
        })
    }
}

fn need(v: Option<usize>, g: &str, what: &str) -> PyResult<usize> {
    v.ok_or_else(|| invalid(format!("granularity {g} needs {what}")))
}

/// `(kind, axis, group_size, block_size)`.
pub(crate) type Gran = (String, Option<usize>, Option<usize>, Option<Vec<usize>>);

/// The formulas by name (README "The affine family").
pub(crate) const FORMULAS: [(&str, AffineFormula); 9] = [
    ("spec", AffineFormula::SPEC),
    ("torch-decomposed", AffineFormula::TORCH_DECOMPOSED),
    (
        "torch-quantize-per-tensor",
        AffineFormula::TORCH_QUANTIZE_PER_TENSOR,
    ),
    (
        "torch-fake-quantize-per-tensor",
        AffineFormula::TORCH_FAKE_QUANTIZE_PER_TENSOR,
    ),
    (
        "torch-fake-quantize-per-channel",
        AffineFormula::TORCH_FAKE_QUANTIZE_PER_CHANNEL,
    ),
    (
        "torch-fake-quantize-per-channel-float-zero-point",
        AffineFormula::TORCH_FAKE_QUANTIZE_PER_CHANNEL_FLOAT_ZERO_POINT,
    ),
    (
        "torch-decomposed-fake-quant",
        AffineFormula::TORCH_DECOMPOSED_FAKE_QUANT,
    ),
    ("torch-per-token", AffineFormula::TORCH_PER_TOKEN),
    ("torch-per-token-f32", AffineFormula::TORCH_PER_TOKEN_F32),
];

fn formula(name: &str) -> PyResult<AffineFormula> {
    FORMULAS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .ok_or_else(|| {
            let all: Vec<&str> = FORMULAS.iter().map(|(n, _)| *n).collect();
            invalid(format!("formula {name:?} is not one of {}", all.join(", ")))
        })
}

/// The names `formula=` takes.
#[pyfunction]
pub(crate) fn affine_formulas() -> Vec<&'static str> {
    FORMULAS.iter().map(|(n, _)| *n).collect()
}

/// Scales: f32 or f64 (the Python layer widens f16/bf16 to f32, exactly).
enum Scales<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

/// A float array (of `kind`) and a parameter array, read without a copy.
macro_rules! scales {
    ($obj:expr, |$s:ident| $body:expr) => {{
        let obj: &Bound<'_, PyAny> = $obj;
        if let Ok(a) = obj.extract::<PyReadonlyArray1<'_, f64>>() {
            let $s = Scales::F64(slice(&a, "scale")?);
            $body
        } else {
            let a = obj.extract::<PyReadonlyArray1<'_, f32>>()?;
            let $s = Scales::F32(slice(&a, "scale")?);
            $body
        }
    }};
}

/// Zero points: none, int32, or float32.
macro_rules! zero_points {
    ($obj:expr, |$z:ident| $body:expr) => {{
        let obj: &Option<Bound<'_, PyAny>> = $obj;
        match obj {
            None => {
                let $z = ZeroPoints::None;
                $body
            }
            Some(o) => {
                if let Ok(a) = o.extract::<PyReadonlyArray1<'_, i32>>() {
                    let $z = ZeroPoints::Int(slice(&a, "zero_point")?);
                    $body
                } else {
                    let a = o.extract::<PyReadonlyArray1<'_, f32>>()?;
                    let $z = ZeroPoints::Float(slice(&a, "zero_point")?);
                    $body
                }
            }
        }
    }};
}

/// `QuantizeAffinePlan`: codes (int8/uint8) of a float array.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub(crate) fn affine_quantize<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    kind: &str,
    shape: Vec<usize>,
    strides: Vec<usize>,
    scale: &Bound<'py, PyAny>,
    zero_point: Option<Bound<'py, PyAny>>,
    gran: Gran,
    range: (i32, i32),
    formula_name: &str,
    out_dtype: &str,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let st = stream(threads)?;
    let nd = Nd::new(&shape)?;
    let g = nd.granularity(&gran)?;
    let f = formula(formula_name)?;
    let xst = nd.strides(&strides)?;
    fn go<T: Element, S: Element, Q: IntElement>(
        st: &Stream,
        (nd, g, f, range): (Nd, Granularity, AffineFormula, (i32, i32)),
        x: &[T],
        xst: [usize; MAX_RANK],
        (s, z): (&[S], ZeroPoints<'_>),
        out: &mut [Q],
    ) -> groupq::Result<()> {
        let desc = QuantizeAffineDescriptor {
            shape: Shape::new(&nd.dims)?,
            granularity: g,
            q_min: range.0,
            q_max: range.1,
            formula: f,
            input_element: T::KIND,
            scale_element: S::KIND,
            output_element: Q::KIND,
        };
        let plan = QuantizeAffinePlan::<T, S, Q>::select(st, &desc, Default::default())?;
        plan.run(
            st,
            Workspace::None,
            QuantizeAffineArgs {
                input: TensorRef::with_strides(x, nd.dims, xst)?,
                scale: s,
                zero_point: z,
                output: TensorMut::with_strides(out, nd.dims, nd.dense())?,
            },
        )
    }
    let n = nd.numel();
    let p = (nd, g, f, range);
    macro_rules! by_q {
        ($x:expr, $s:expr, $z:expr) => {
            match out_dtype {
                "int8" => fill::<i8>(py, n, |o| go(&st, p, $x, xst, ($s, $z), o))?.into_any(),
                "uint8" => fill::<u8>(py, n, |o| go(&st, p, $x, xst, ($s, $z), o))?.into_any(),
                other => {
                    return Err(GroupqError::new_err((
                        "unsupported",
                        format!("out_dtype {other} is not int8 or uint8"),
                    )))
                }
            }
        };
    }
    Ok(floats!(x, kind, "x", |xs| scales!(scale, |ss| {
        zero_points!(&zero_point, |zs| match (xs, ss) {
            (Floats::F32(x), Scales::F32(s)) => by_q!(x, s, zs),
            (Floats::F32(x), Scales::F64(s)) => by_q!(x, s, zs),
            (Floats::F64(x), Scales::F32(s)) => by_q!(x, s, zs),
            (Floats::F64(x), Scales::F64(s)) => by_q!(x, s, zs),
            (Floats::F16(x), Scales::F32(s)) => by_q!(x, s, zs),
            (Floats::F16(x), Scales::F64(s)) => by_q!(x, s, zs),
            (Floats::Bf16(x), Scales::F32(s)) => by_q!(x, s, zs),
            (Floats::Bf16(x), Scales::F64(s)) => by_q!(x, s, zs),
        })
    })))
}

/// `DequantizeAffinePlan`: float values (of `kind`; f16/bf16 as `uint16`
/// bits) from int8/uint8 codes.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub(crate) fn affine_dequantize<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    q_dtype: &str,
    shape: Vec<usize>,
    strides: Vec<usize>,
    scale: &Bound<'py, PyAny>,
    zero_point: Option<Bound<'py, PyAny>>,
    gran: Gran,
    formula_name: &str,
    kind: &str,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let st = stream(threads)?;
    let nd = Nd::new(&shape)?;
    let g = nd.granularity(&gran)?;
    let f = formula(formula_name)?;
    let qst = nd.strides(&strides)?;
    fn go<Q: IntElement, S: Element, T: Element>(
        st: &Stream,
        (nd, g, f): (Nd, Granularity, AffineFormula),
        q: &[Q],
        qst: [usize; MAX_RANK],
        (s, z): (&[S], ZeroPoints<'_>),
        out: &mut [T],
    ) -> groupq::Result<()> {
        let desc = DequantizeAffineDescriptor {
            shape: Shape::new(&nd.dims)?,
            granularity: g,
            formula: f,
            input_element: Q::KIND,
            scale_element: S::KIND,
            output_element: T::KIND,
        };
        let plan = DequantizeAffinePlan::<Q, S, T>::select(st, &desc, Default::default())?;
        plan.run(
            st,
            Workspace::None,
            DequantizeAffineArgs {
                input: TensorRef::with_strides(q, nd.dims, qst)?,
                scale: s,
                zero_point: z,
                output: TensorMut::with_strides(out, nd.dims, nd.dense())?,
            },
        )
    }
    let n = nd.numel();
    let p = (nd, g, f);
    macro_rules! by_out {
        ($q:expr, $s:expr, $z:expr) => {
            match kind {
                "float32" => {
                    fill_held::<f32>(py, n, |o| go(&st, p, $q, qst, ($s, $z), o))?.into_any()
                }
                "float64" => {
                    fill_held::<f64>(py, n, |o| go(&st, p, $q, qst, ($s, $z), o))?.into_any()
                }
                "float16" => {
                    fill_held::<f16>(py, n, |o| go(&st, p, $q, qst, ($s, $z), o))?.into_any()
                }
                "bfloat16" => {
                    fill_held::<bf16>(py, n, |o| go(&st, p, $q, qst, ($s, $z), o))?.into_any()
                }
                other => {
                    return Err(GroupqError::new_err((
                        "unsupported",
                        format!("out_dtype {other} is not float32, float64, float16 or bfloat16"),
                    )))
                }
            }
        };
    }
    macro_rules! by_s {
        ($q:expr) => {
            scales!(scale, |ss| zero_points!(&zero_point, |zs| match ss {
                Scales::F32(s) => by_out!($q, s, zs),
                Scales::F64(s) => by_out!($q, s, zs),
            }))
        };
    }
    Ok(match q_dtype {
        "int8" => {
            let a = q.extract::<PyReadonlyArray1<'_, i8>>()?;
            let qs = slice(&a, "q")?;
            by_s!(qs)
        }
        "uint8" => {
            let a = q.extract::<PyReadonlyArray1<'_, u8>>()?;
            let qs = slice(&a, "q")?;
            by_s!(qs)
        }
        other => {
            return Err(GroupqError::new_err((
                "unsupported",
                format!("q: dtype {other} is not int8 or uint8"),
            )))
        }
    })
}

/// `FakeQuantizeAffinePlan` (and its mask), or with `grad_output` its
/// backward (`dY · mask`): values of `x`'s kind.
#[pyfunction]
#[pyo3(signature = (x, kind, shape, strides, scale, zero_point, gran, range, formula_name, with_mask, grad_output = None, grad_strides = None, threads = None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn affine_fake_quantize<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    kind: &str,
    shape: Vec<usize>,
    strides: Vec<usize>,
    scale: &Bound<'py, PyAny>,
    zero_point: Option<Bound<'py, PyAny>>,
    gran: Gran,
    range: (i32, i32),
    formula_name: &str,
    with_mask: bool,
    grad_output: Option<Bound<'py, PyAny>>,
    grad_strides: Option<Vec<usize>>,
    threads: Option<usize>,
) -> PyResult<(Bound<'py, PyAny>, Option<Bound<'py, PyAny>>)> {
    let st = stream(threads)?;
    let nd = Nd::new(&shape)?;
    let g = nd.granularity(&gran)?;
    let f = formula(formula_name)?;
    let xst = nd.strides(&strides)?;
    let dst = match &grad_strides {
        Some(s) => nd.strides(s)?,
        None => [0; MAX_RANK],
    };
    let n = nd.numel();
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn go<'py, T: Held, S: Element>(
        py: Python<'py>,
        st: &Stream,
        (nd, g, f, range, with_mask): (Nd, Granularity, AffineFormula, (i32, i32), bool),
        (x, xst): (&[T], [usize; MAX_RANK]),
        dy: Option<(&[T], [usize; MAX_RANK])>,
        (s, z): (&[S], ZeroPoints<'_>),
    ) -> PyResult<(Bound<'py, PyAny>, Option<Bound<'py, PyAny>>)> {
        let desc = FakeQuantizeAffineDescriptor {
            shape: Shape::new(&nd.dims).map_err(err)?,
            granularity: g,
            q_min: range.0,
            q_max: range.1,
            formula: f,
            element: T::KIND,
            scale_element: S::KIND,
        };
        let n = nd.numel();
        let y = PyArray1::<T::Held>::zeros(py, n, false);
        let m = (with_mask && dy.is_none()).then(|| PyArray1::<bool>::zeros(py, n, false));
        {
            let mut yw = y.readwrite();
            let mut mw = m.as_ref().map(|m| m.readwrite());
            let bad = |e: numpy::AsSliceError| invalid(e.to_string());
            let ys = T::from_held(yw.as_slice_mut().map_err(bad)?);
            let ms = match mw.as_mut() {
                Some(w) => Some(w.as_slice_mut().map_err(bad)?),
                None => None,
            };
            let run = || -> groupq::Result<()> {
                let input = TensorRef::with_strides(x, nd.dims, xst)?;
                match dy {
                    None => {
                        let plan =
                            FakeQuantizeAffinePlan::<T, S>::select(st, &desc, Default::default())?;
                        let mask = match ms {
                            Some(m) => Some(TensorMut::with_strides(m, nd.dims, nd.dense())?),
                            None => None,
                        };
                        plan.run(
                            st,
                            Workspace::None,
                            FakeQuantizeAffineArgs {
                                input,
                                scale: s,
                                zero_point: z,
                                output: TensorMut::with_strides(ys, nd.dims, nd.dense())?,
                                mask,
                            },
                        )
                    }
                    Some((dy, dst)) => {
                        let plan = FakeQuantizeAffineBackwardPlan::<T, S>::select(
                            st,
                            &desc,
                            Default::default(),
                        )?;
                        plan.run(
                            st,
                            Workspace::None,
                            FakeQuantizeAffineBackwardArgs {
                                grad_output: TensorRef::with_strides(dy, nd.dims, dst)?,
                                input,
                                scale: s,
                                zero_point: z,
                                grad_input: TensorMut::with_strides(ys, nd.dims, nd.dense())?,
                            },
                        )
                    }
                }
            };
            py.detach(run).map_err(err)?;
        }
        Ok((y.into_any(), m.map(|m| m.into_any())))
    }
    let _ = n;
    let p = (nd, g, f, range, with_mask);
    macro_rules! by_s {
        ($T:ty, $x:expr, $dy:expr) => {
            scales!(scale, |ss| zero_points!(&zero_point, |zs| match ss {
                Scales::F32(s) => go::<$T, f32>(py, &st, p, ($x, xst), $dy, (s, zs)),
                Scales::F64(s) => go::<$T, f64>(py, &st, p, ($x, xst), $dy, (s, zs)),
            }))
        };
    }
    macro_rules! with_dy {
        ($T:ty, $x:expr, $variant:ident) => {
            match &grad_output {
                None => by_s!($T, $x, None),
                Some(d) => floats!(d, kind, "grad_output", |ds| match ds {
                    Floats::$variant(dy) => by_s!($T, $x, Some((dy, dst))),
                    _ => unreachable!("one kind for both"),
                }),
            }
        };
    }
    floats!(x, kind, "x", |xs| match xs {
        Floats::F32(x) => with_dy!(f32, x, F32),
        Floats::F64(x) => with_dy!(f64, x, F64),
        Floats::F16(x) => with_dy!(f16, x, F16),
        Floats::Bf16(x) => with_dy!(bf16, x, Bf16),
    })
}

/// PyTorch's `choose_qparams_per_token_asymmetric` + `quantize_per_token`
/// in one call: `(codes int8, scale float64, zero_point int32)`, one
/// parameter per token (every index but the last).
#[pyfunction]
pub(crate) fn affine_per_token_dynamic<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    kind: &str,
    shape: Vec<usize>,
    strides: Vec<usize>,
    threads: Option<usize>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let st = stream(threads)?;
    let nd = Nd::new(&shape)?;
    let xst = nd.strides(&strides)?;
    let tokens = nd.numel() / nd.dims[MAX_RANK - 1].max(1);
    fn go<'py, T: Element>(
        py: Python<'py>,
        st: &Stream,
        nd: Nd,
        (x, xst): (&[T], [usize; MAX_RANK]),
        tokens: usize,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let desc =
            QuantizeDynamicAffineDescriptor::torch_per_token(&nd.dims, T::KIND).map_err(err)?;
        let q = PyArray1::<i8>::zeros(py, nd.numel(), false);
        let s = PyArray1::<f64>::zeros(py, tokens, false);
        let z = PyArray1::<i32>::zeros(py, tokens, false);
        {
            let (mut qw, mut sw, mut zw) = (q.readwrite(), s.readwrite(), z.readwrite());
            let bad = |e: numpy::AsSliceError| invalid(e.to_string());
            let (qs, ss, zs) = (
                qw.as_slice_mut().map_err(bad)?,
                sw.as_slice_mut().map_err(bad)?,
                zw.as_slice_mut().map_err(bad)?,
            );
            py.detach(|| -> groupq::Result<()> {
                let plan =
                    QuantizeDynamicAffinePlan::<T, f64, i8>::select(st, &desc, Default::default())?;
                plan.run(
                    st,
                    Workspace::None,
                    QuantizeDynamicAffineArgs {
                        input: TensorRef::with_strides(x, nd.dims, xst)?,
                        scale: ss,
                        zero_point: zs,
                        output: TensorMut::with_strides(qs, nd.dims, nd.dense())?,
                    },
                )
            })
            .map_err(err)?;
        }
        Ok((q.into_any(), s.into_any(), z.into_any()))
    }
    floats!(x, kind, "x", |xs| match xs {
        Floats::F32(x) => go(py, &st, nd, (x, xst), tokens),
        Floats::F64(x) => go(py, &st, nd, (x, xst), tokens),
        Floats::F16(x) => go(py, &st, nd, (x, xst), tokens),
        Floats::Bf16(x) => go(py, &st, nd, (x, xst), tokens),
    })
}
