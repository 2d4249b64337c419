//! PyTorch 2.15's per-tensor, per-channel and per-token ops (the
//! `torchgran__` golden files, written by torch itself; see
//! `tests/golden/torchgran/README.md`) reproduced bit for bit by the affine
//! plans: every case of the index is run, and a case no plan handles is a
//! failure.

use groupq::affine::{AffineFormula, Granularity, Shape};
use groupq::half::{bf16, f16};
use groupq::*;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/torchgran")
}

/// A tensor of a golden file: raw little-endian bytes and its dtype.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Raw {
    fn f64s(&self) -> Vec<f64> {
        let b = &self.bytes;
        match self.dtype {
            Dtype::F32 => b
                .chunks(4)
                .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
                .collect(),
            Dtype::F64 => b
                .chunks(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::F16 => b
                .chunks(2)
                .map(|c| f64::from(f16::from_le_bytes(c.try_into().unwrap())))
                .collect(),
            Dtype::BF16 => b
                .chunks(2)
                .map(|c| f64::from(bf16::from_le_bytes(c.try_into().unwrap())))
                .collect(),
            Dtype::I64 => b
                .chunks(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Dtype::I32 => b
                .chunks(4)
                .map(|c| f64::from(i32::from_le_bytes(c.try_into().unwrap())))
                .collect(),
            Dtype::I8 => b.iter().map(|&v| f64::from(v as i8)).collect(),
            Dtype::U8 | Dtype::BOOL => b.iter().map(|&v| f64::from(v)).collect(),
            d => panic!("dtype {d:?}"),
        }
    }

    /// Integer values (zero points) as i32, saturating (PyTorch's int64
    /// `INT64_MIN` of a NaN token becomes `i32::MIN`; its scale is NaN, so
    /// no result depends on it).
    fn i32s(&self) -> Vec<i32> {
        self.f64s()
            .iter()
            .map(|&v| v.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32)
            .collect()
    }
}

struct Case {
    name: String,
    op: String,
    meta: HashMap<String, String>,
    tensors: HashMap<String, Raw>,
}

impl Case {
    fn load(file: &str) -> Case {
        let buf = std::fs::read(dir().join(file)).unwrap();
        let st = SafeTensors::deserialize(&buf).unwrap();
        let (_, header) = SafeTensors::read_metadata(&buf).unwrap();
        let meta = header.metadata().clone().unwrap_or_default();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(n, t)| {
                (
                    n,
                    Raw {
                        dtype: t.dtype(),
                        shape: t.shape().to_vec(),
                        bytes: t.data().to_vec(),
                    },
                )
            })
            .collect();
        Case {
            name: file.to_string(),
            op: meta["op"].clone(),
            meta,
            tensors,
        }
    }

    fn t(&self, name: &str) -> &Raw {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("{}: no tensor {name}", self.name))
    }

    fn shape(&self) -> Vec<usize> {
        self.t("input").shape.clone()
    }

    fn range(&self) -> (i32, i32) {
        (
            self.meta["qmin"].parse().unwrap(),
            self.meta["qmax"].parse().unwrap(),
        )
    }

    fn granularity(&self) -> Granularity {
        match self.meta["granularity"].as_str() {
            "per_tensor" => Granularity::PerTensor,
            "per_channel" => Granularity::PerChannel {
                axis: self.meta["axis"].parse().unwrap(),
            },
            "per_token" => Granularity::PerToken,
            g => panic!("{}: granularity {g}", self.name),
        }
    }
}

/// Float element types of the files.
trait Float: Element {
    const DTYPE: Dtype;
    fn bits(self) -> u64;
}
impl Float for f32 {
    const DTYPE: Dtype = Dtype::F32;
    fn bits(self) -> u64 {
        self.to_bits().into()
    }
}
impl Float for f64 {
    const DTYPE: Dtype = Dtype::F64;
    fn bits(self) -> u64 {
        self.to_bits()
    }
}
impl Float for f16 {
    const DTYPE: Dtype = Dtype::F16;
    fn bits(self) -> u64 {
        self.to_bits().into()
    }
}
impl Float for bf16 {
    const DTYPE: Dtype = Dtype::BF16;
    fn bits(self) -> u64 {
        self.to_bits().into()
    }
}

fn floats<T: Element>(r: &Raw) -> Vec<T> {
    r.f64s().into_iter().map(T::from_f64).collect()
}

/// The golden tensor's bits, widened to u64 (floats) or its values (codes,
/// masks).
fn golden_bits(r: &Raw) -> Vec<u64> {
    let b = &r.bytes;
    match r.dtype {
        Dtype::F32 => b
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()).into())
            .collect(),
        Dtype::F64 => b
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::F16 | Dtype::BF16 => b
            .chunks(2)
            .map(|c| u16::from_le_bytes(c.try_into().unwrap()).into())
            .collect(),
        _ => r.f64s().iter().map(|&v| v as i64 as u64).collect(),
    }
}

/// Compares bits; a NaN matches any NaN of the golden file (PyTorch's NaN
/// signs and payloads are not defined; groupq's are canonical).
fn check(
    case: &Case,
    what: &str,
    ours: &[u64],
    golden: &Raw,
    float: Option<Dtype>,
    failures: &mut Vec<String>,
) {
    let want = golden_bits(golden);
    assert_eq!(ours.len(), want.len(), "{}: {what} length", case.name);
    let is_nan = |b: u64| match float {
        Some(Dtype::F32) => f32::from_bits(b as u32).is_nan(),
        Some(Dtype::F64) => f64::from_bits(b).is_nan(),
        Some(Dtype::F16) => f16::from_bits(b as u16).is_nan(),
        Some(Dtype::BF16) => bf16::from_bits(b as u16).is_nan(),
        _ => false,
    };
    let bad: Vec<usize> = (0..want.len())
        .filter(|&i| ours[i] != want[i] && !(is_nan(ours[i]) && is_nan(want[i])))
        .collect();
    if let Some(&i) = bad.first() {
        failures.push(format!(
            "{} {what}: {} of {} differ, first at {i}: ours {:#x}, torch {:#x} (input {:?})",
            case.name,
            bad.len(),
            want.len(),
            ours[i],
            want[i],
            case.t("input").f64s().get(i)
        ));
    }
}

fn stream() -> Stream {
    Stream::cpu_with_threads(2).unwrap()
}

/// Runs `$body` with a const `R` equal to the case's rank.
macro_rules! with_rank {
    ($rank:expr, $R:ident => $body:expr) => {
        match $rank {
            1 => {
                const $R: usize = 1;
                $body
            }
            2 => {
                const $R: usize = 2;
                $body
            }
            3 => {
                const $R: usize = 3;
                $body
            }
            4 => {
                const $R: usize = 4;
                $body
            }
            r => panic!("rank {r}"),
        }
    };
}

fn dims<const R: usize>(shape: &[usize]) -> [usize; R] {
    shape.try_into().unwrap()
}

/// Codes (`q`) and the dequantized outputs of a quantize/dequantize case.
fn quantize_case<T: Float, Q: IntElement + Into<i32> + TryFrom<i32>>(
    case: &Case,
    formula: AffineFormula,
    dequant_formula: AffineFormula,
    scale_name: &str,
    codes: &str,
    failures: &mut Vec<String>,
) {
    let shape = case.shape();
    let (lo, hi) = case.range();
    let x: Vec<T> = floats(case.t("input"));
    let scale: Vec<f32> = floats(case.t(scale_name));
    let zp = case.t("zero_point").i32s();
    let g = case.granularity();
    let st = stream();
    let desc = QuantizeAffineDescriptor {
        shape: Shape::new(&shape).unwrap(),
        granularity: g,
        q_min: lo,
        q_max: hi,
        formula,
        input_element: T::KIND,
        scale_element: ElementKind::F32,
        output_element: Q::KIND,
    };
    let plan = QuantizeAffinePlan::<T, f32, Q>::select(&st, &desc, Default::default()).unwrap();
    let mut q = vec![Q::default(); x.len()];
    with_rank!(shape.len(), R => plan
        .run(&st, Workspace::None, QuantizeAffineArgs {
            input: TensorRef::new(&x, dims::<R>(&shape)).unwrap(),
            scale: &scale,
            zero_point: ZeroPoints::Int(&zp),
            output: TensorMut::new(&mut q, dims::<R>(&shape)).unwrap(),
        })
        .unwrap());
    let ours: Vec<u64> = q.iter().map(|&c| i64::from(c.into()) as u64).collect();
    check(case, codes, &ours, case.t(codes), None, failures);
    // Dequantize the golden codes (so that a code mismatch is not counted twice).
    let golden_q: Vec<Q> = case
        .t(codes)
        .f64s()
        .iter()
        .map(|&v| Q::try_from(v as i32).ok().unwrap())
        .collect();
    dequantize_into::<Q, f32>(
        case,
        &golden_q,
        &scale,
        &zp,
        dequant_formula,
        "dequant",
        failures,
    );
    let out = match case.meta["dtype"].as_str() {
        "float16" => "dequant_out_f16",
        "bfloat16" => "dequant_out_bf16",
        _ => "dequant_out_f32",
    };
    if case.tensors.contains_key(out) {
        match T::DTYPE {
            Dtype::F16 => dequantize_into::<Q, f16>(
                case,
                &golden_q,
                &scale,
                &zp,
                dequant_formula,
                out,
                failures,
            ),
            Dtype::BF16 => dequantize_into::<Q, bf16>(
                case,
                &golden_q,
                &scale,
                &zp,
                dequant_formula,
                out,
                failures,
            ),
            _ => {}
        }
    }
}

fn dequantize_into<Q: IntElement, O: Float>(
    case: &Case,
    q: &[Q],
    scale: &[f32],
    zp: &[i32],
    formula: AffineFormula,
    name: &str,
    failures: &mut Vec<String>,
) {
    let shape = case.shape();
    let st = stream();
    let desc = DequantizeAffineDescriptor {
        shape: Shape::new(&shape).unwrap(),
        granularity: case.granularity(),
        formula,
        input_element: Q::KIND,
        scale_element: ElementKind::F32,
        output_element: O::KIND,
    };
    let plan = DequantizeAffinePlan::<Q, f32, O>::select(&st, &desc, Default::default()).unwrap();
    let mut y = vec![O::default(); q.len()];
    with_rank!(shape.len(), R => plan
        .run(&st, Workspace::None, DequantizeAffineArgs {
            input: TensorRef::new(q, dims::<R>(&shape)).unwrap(),
            scale,
            zero_point: ZeroPoints::Int(zp),
            output: TensorMut::new(&mut y, dims::<R>(&shape)).unwrap(),
        })
        .unwrap());
    let ours: Vec<u64> = y.iter().map(|v| v.bits()).collect();
    check(case, name, &ours, case.t(name), Some(O::DTYPE), failures);
}

/// A fake-quantize case: output, mask (where the file has one) and the
/// gradient.
fn fake_case<T: Float>(
    case: &Case,
    formula: AffineFormula,
    float_zp: bool,
    failures: &mut Vec<String>,
) {
    let shape = case.shape();
    let (lo, hi) = case.range();
    let x: Vec<T> = floats(case.t("input"));
    let dy: Vec<T> = floats(case.t("grad_output"));
    let scale: Vec<f32> = floats(case.t("scale"));
    let (zi, zf): (Vec<i32>, Vec<f32>) = if float_zp {
        (Vec::new(), floats(case.t("zero_point")))
    } else {
        (case.t("zero_point").i32s(), Vec::new())
    };
    let zp = if float_zp {
        ZeroPoints::Float(&zf)
    } else {
        ZeroPoints::Int(&zi)
    };
    let st = stream();
    let desc = FakeQuantizeAffineDescriptor {
        shape: Shape::new(&shape).unwrap(),
        granularity: case.granularity(),
        q_min: lo,
        q_max: hi,
        formula,
        element: T::KIND,
        scale_element: ElementKind::F32,
    };
    let plan = FakeQuantizeAffinePlan::<T, f32>::select(&st, &desc, Default::default()).unwrap();
    let back =
        FakeQuantizeAffineBackwardPlan::<T, f32>::select(&st, &desc, Default::default()).unwrap();
    let mut y = vec![T::default(); x.len()];
    let mut mask = vec![false; x.len()];
    let mut dx = vec![T::default(); x.len()];
    with_rank!(shape.len(), R => {
        let d = dims::<R>(&shape);
        plan.run(&st, Workspace::None, FakeQuantizeAffineArgs {
            input: TensorRef::new(&x, d).unwrap(),
            scale: &scale,
            zero_point: zp,
            output: TensorMut::new(&mut y, d).unwrap(),
            mask: Some(TensorMut::new(&mut mask, d).unwrap()),
        })
        .unwrap();
        back.run(&st, Workspace::None, FakeQuantizeAffineBackwardArgs {
            grad_output: TensorRef::new(&dy, d).unwrap(),
            input: TensorRef::new(&x, d).unwrap(),
            scale: &scale,
            zero_point: zp,
            grad_input: TensorMut::new(&mut dx, d).unwrap(),
        })
        .unwrap();
    });
    let bits = |v: &[T]| v.iter().map(|e| e.bits()).collect::<Vec<_>>();
    check(
        case,
        "fake_quant",
        &bits(&y),
        case.t("fake_quant"),
        Some(T::DTYPE),
        failures,
    );
    check(
        case,
        "grad_input",
        &bits(&dx),
        case.t("grad_input"),
        Some(T::DTYPE),
        failures,
    );
    if case.tensors.contains_key("mask") {
        let m: Vec<u64> = mask.iter().map(|&b| u64::from(b)).collect();
        check(case, "mask", &m, case.t("mask"), None, failures);
    }
}

/// `choose_qparams_per_token_asymmetric` (in the input's dtype), then
/// `quantize_per_token` / `dequantize_per_token` with its float64 scales
/// (all in f64) and with `scale.float()` / `zp.int()` (in f32).
fn per_token_case<T: Float>(case: &Case, failures: &mut Vec<String>) {
    let shape = case.shape();
    let (lo, hi) = case.range();
    let x: Vec<T> = floats(case.t("input"));
    let tokens = x.len() / shape[shape.len() - 1];
    let width = shape[shape.len() - 1];
    let st = stream();

    // The parameters, chosen by the per-group choose plan with one group
    // per token.
    let mut recipe = groupq::recipe::Recipe::torch_per_token_asymmetric_int8();
    recipe.choose_arithmetic = groupq::recipe::Arithmetic::Input;
    recipe.non_finite = groupq::recipe::NonFinitePolicy::Propagate;
    let desc = ChooseQParamsPerGroupDescriptor {
        outer_size: tokens,
        axis_size: width,
        group_size: width,
        recipe,
        input_element: T::KIND,
        scale_element: ElementKind::F64,
    };
    let choose =
        ChooseQParamsPerGroupPlan::<T, f64>::select(&st, &desc, Default::default()).unwrap();
    let (mut s, mut z) = (vec![0f64; tokens], vec![0i32; tokens]);
    choose
        .run(
            &st,
            Workspace::None,
            ChooseQParamsPerGroupArgs {
                input: TensorRef::new(&x, [tokens, width]).unwrap(),
                scale: TensorMut::new(&mut s, [tokens, 1]).unwrap(),
                zero_point: TensorMut::new(&mut z, [tokens, 1]).unwrap(),
            },
        )
        .unwrap();
    let sbits: Vec<u64> = s.iter().map(|v| v.to_bits()).collect();
    check(
        case,
        "scale",
        &sbits,
        case.t("scale"),
        Some(Dtype::F64),
        failures,
    );
    // A NaN token's zero point is PyTorch's INT64_MIN (from a NaN cast);
    // groupq's i32 zero point holds i32::MIN there.
    let zg = case.t("zero_point").i32s();
    let zbits: Vec<u64> = z.iter().map(|&v| i64::from(v) as u64).collect();
    let want: Vec<u64> = zg.iter().map(|&v| i64::from(v) as u64).collect();
    if zbits != want {
        failures.push(format!(
            "{} zero_point: ours {z:?}, torch {zg:?}",
            case.name
        ));
    }

    // The dynamic plan: the same parameters and the codes in one call.
    let ddesc = QuantizeDynamicAffineDescriptor::torch_per_token(&shape, T::KIND).unwrap();
    let dynamic =
        QuantizeDynamicAffinePlan::<T, f64, i8>::select(&st, &ddesc, Default::default()).unwrap();
    let (mut ds, mut dz, mut dq) = (vec![0f64; tokens], vec![0i32; tokens], vec![0i8; x.len()]);
    with_rank!(shape.len(), R => dynamic
        .run(&st, Workspace::None, QuantizeDynamicAffineArgs {
            input: TensorRef::new(&x, dims::<R>(&shape)).unwrap(),
            scale: &mut ds,
            zero_point: &mut dz,
            output: TensorMut::new(&mut dq, dims::<R>(&shape)).unwrap(),
        })
        .unwrap());
    let dsb: Vec<u64> = ds.iter().map(|v| v.to_bits()).collect();
    check(
        case,
        "dynamic scale",
        &dsb,
        case.t("scale"),
        Some(Dtype::F64),
        failures,
    );
    if dz != z {
        failures.push(format!("{} dynamic zero_point: {dz:?} vs {z:?}", case.name));
    }
    let dqb: Vec<u64> = dq.iter().map(|&c| i64::from(c) as u64).collect();
    check(case, "dynamic q", &dqb, case.t("q"), None, failures);

    let golden_s: Vec<f64> = case.t("scale").f64s();
    for (f, scale, zp, codes, deq) in [
        (
            AffineFormula::TORCH_PER_TOKEN,
            golden_s.clone(),
            zg.clone(),
            "q",
            "dequant",
        ),
        (
            AffineFormula::TORCH_PER_TOKEN_F32,
            golden_s.iter().map(|&v| f64::from(v as f32)).collect(),
            // `zp.int()` of INT64_MIN is 0; its scale is NaN either way.
            zg.iter()
                .map(|&v| if v == i32::MIN { 0 } else { v })
                .collect(),
            "q_f32_qparams",
            "dequant_f32_qparams",
        ),
    ] {
        let qdesc = QuantizeAffineDescriptor {
            shape: Shape::new(&shape).unwrap(),
            granularity: Granularity::PerToken,
            q_min: lo,
            q_max: hi,
            formula: f,
            input_element: T::KIND,
            scale_element: ElementKind::F64,
            output_element: ElementKind::S8,
        };
        let plan =
            QuantizeAffinePlan::<T, f64, i8>::select(&st, &qdesc, Default::default()).unwrap();
        let ddesc = DequantizeAffineDescriptor {
            shape: Shape::new(&shape).unwrap(),
            granularity: Granularity::PerToken,
            formula: f,
            input_element: ElementKind::S8,
            scale_element: ElementKind::F64,
            output_element: ElementKind::F32,
        };
        let dplan =
            DequantizeAffinePlan::<i8, f64, f32>::select(&st, &ddesc, Default::default()).unwrap();
        let mut q = vec![0i8; x.len()];
        let golden_q: Vec<i8> = case.t(codes).f64s().iter().map(|&v| v as i8).collect();
        let mut y = vec![0f32; x.len()];
        with_rank!(shape.len(), R => {
            let d = dims::<R>(&shape);
            plan.run(&st, Workspace::None, QuantizeAffineArgs {
                input: TensorRef::new(&x, d).unwrap(),
                scale: &scale,
                zero_point: ZeroPoints::Int(&zp),
                output: TensorMut::new(&mut q, d).unwrap(),
            })
            .unwrap();
            dplan.run(&st, Workspace::None, DequantizeAffineArgs {
                input: TensorRef::new(&golden_q, d).unwrap(),
                scale: &scale,
                zero_point: ZeroPoints::Int(&zp),
                output: TensorMut::new(&mut y, d).unwrap(),
            })
            .unwrap();
        });
        let qb: Vec<u64> = q.iter().map(|&c| i64::from(c) as u64).collect();
        check(case, codes, &qb, case.t(codes), None, failures);
        // Where PyTorch's zero point is INT64_MIN (a NaN or inf token: its
        // float zero point cast to int64, undefined in C++), its
        // dequantize computes `q - INT64_MIN` in int64, which overflows;
        // groupq holds that zero point as i32::MIN and computes
        // `(q - i32::MIN) · s`. Those tokens' values are not compared, and
        // are NaN or infinite in both.
        let mut yb: Vec<u64> = y.iter().map(|v| v.bits()).collect();
        let mut golden_y = Raw {
            dtype: Dtype::F32,
            shape: shape.clone(),
            bytes: case.t(deq).bytes.clone(),
        };
        for (t, &zt) in zg.iter().enumerate() {
            if zt == i32::MIN {
                for i in t * width..(t + 1) * width {
                    assert!(!y[i].is_finite(), "{}: token {t}", case.name);
                    yb[i] = 0;
                    golden_y.bytes[i * 4..i * 4 + 4].copy_from_slice(&[0; 4]);
                }
            }
        }
        check(case, deq, &yb, &golden_y, Some(Dtype::F32), failures);
    }
}

fn run_case(case: &Case, failures: &mut Vec<String>) -> bool {
    let signed = case.range().0 < 0;
    let q = |case: &Case, f: AffineFormula, scale: &str, failures: &mut Vec<String>| {
        macro_rules! go {
            ($t:ty) => {
                if signed {
                    quantize_case::<$t, i8>(case, f, f, scale, "q", failures)
                } else {
                    quantize_case::<$t, u8>(case, f, f, scale, "q", failures)
                }
            };
        }
        match case.meta["dtype"].as_str() {
            "float32" => go!(f32),
            "float16" => go!(f16),
            "bfloat16" => go!(bf16),
            d => panic!("{d}"),
        }
    };
    match case.op.as_str() {
        "qd_per_tensor" | "qd_per_channel" => {
            q(case, AffineFormula::TORCH_DECOMPOSED, "scale", failures)
        }
        "tq_per_channel" => q(case, AffineFormula::TORCH_DECOMPOSED, "scale", failures),
        "tq_per_tensor" => q(
            case,
            AffineFormula::TORCH_QUANTIZE_PER_TENSOR,
            "scale",
            failures,
        ),
        "fq_per_tensor" | "fq_per_channel" | "fq_per_channel_fzp" | "qd_fake_quant_per_channel" => {
            let (f, fzp) = match case.op.as_str() {
                "fq_per_tensor" => (AffineFormula::TORCH_FAKE_QUANTIZE_PER_TENSOR, false),
                "fq_per_channel" => (AffineFormula::TORCH_FAKE_QUANTIZE_PER_CHANNEL, false),
                "fq_per_channel_fzp" => (
                    AffineFormula::TORCH_FAKE_QUANTIZE_PER_CHANNEL_FLOAT_ZERO_POINT,
                    true,
                ),
                _ => (AffineFormula::TORCH_DECOMPOSED_FAKE_QUANT, false),
            };
            match case.meta["dtype"].as_str() {
                "float32" => fake_case::<f32>(case, f, fzp, failures),
                "float16" => fake_case::<f16>(case, f, fzp, failures),
                "bfloat16" => fake_case::<bf16>(case, f, fzp, failures),
                d => panic!("{}: dtype {d}", case.name),
            }
        }
        "qd_per_token" => match case.meta["dtype"].as_str() {
            "float32" => per_token_case::<f32>(case, failures),
            "float16" => per_token_case::<f16>(case, failures),
            "bfloat16" => per_token_case::<bf16>(case, failures),
            d => panic!("{}: dtype {d}", case.name),
        },
        _ => return false,
    }
    true
}

#[test]
fn every_public_case_bit_for_bit() {
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir().join("torchgran__index.json")).unwrap(),
    )
    .unwrap();
    let cases = index["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 215);
    let mut failures = Vec::new();
    let mut unhandled = Vec::new();
    let mut ran = 0;
    for c in cases {
        let case = Case::load(c["file"].as_str().unwrap());
        if run_case(&case, &mut failures) {
            ran += 1;
        } else {
            unhandled.push(case.name.clone());
        }
    }
    eprintln!("{ran} cases run, {} not handled", unhandled.len());
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        unhandled.is_empty(),
        "no plan for:\n{}",
        unhandled.join("\n")
    );
}
