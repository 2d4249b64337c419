//! Every vector backend of the affine dequantize, fake-quantize and
//! backward plans against their scalar core, bit for bit: random shapes,
//! granularities, padded rows, thread counts, formulas, code ranges, zero
//! point kinds, every float type and scale type, and runs that hold
//! specials (NaN, ±inf, ±0, subnormals, ties, values at and beyond the code
//! range, zero, negative, subnormal and non-finite scales).

use groupq::affine::{AffineFormula, Granularity, Shape};
use groupq::half::{bf16, f16};
use groupq::*;
use proptest::prelude::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const SPECIALS: [f64; 9] = [
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    0.0,
    -0.0,
    3.4e38,
    -3.4e38,
    1e-40,
    -1e-45,
];

/// A value near the code grid of scale `s`: ties, clipping, the range's
/// ends; a special one with probability `1 / rare`.
fn value(rng: &mut Rng, s: f64, rare: u64) -> f64 {
    let s = if s.is_finite() && s != 0.0 { s } else { 1.0 };
    if rng.below(rare) == 0 {
        return rng.pick(&SPECIALS);
    }
    match rng.below(4) {
        0 => (rng.below(600) as f64 - 300.0 + 0.5) * s,
        1 => (rng.below(600) as f64 - 300.0) * s,
        2 => (rng.unit() - 0.5) * 600.0 * s,
        _ => (rng.unit() - 0.5) * 40.0 * s,
    }
}

fn scale(rng: &mut Rng) -> f64 {
    match rng.below(16) {
        0 => rng.pick(&[0.0, -0.0, f64::NAN, f64::INFINITY, 1e-45, 1e-300]),
        1..=4 => 2f64.powi(rng.below(12) as i32 - 8) * rng.pick(&[1.0, -1.0]),
        _ => rng.unit() * 2.0 + 1e-3,
    }
}

fn zero_point(rng: &mut Rng, lo: i32, hi: i32) -> i32 {
    match rng.below(20) {
        0 => rng.pick(&[i32::MIN, i32::MAX, (1 << 24) + 1, -(1 << 23)]),
        _ => lo + rng.below((hi - lo + 1).min(300) as u64) as i32,
    }
}

struct Problem {
    dims: [usize; 3],
    granularity: Granularity,
    stride: [usize; 3],
    len: usize,
    threads: usize,
    rare: u64,
}

fn problem(rng: &mut Rng) -> Problem {
    let c = 16 * (1 + rng.below(6) as usize) + rng.pick(&[0, 0, 3]);
    let dims = [1 + rng.below(3) as usize, 1 + rng.below(4) as usize, c];
    let divisors = |n: usize| (1..=n).filter(|g| n.is_multiple_of(*g)).collect::<Vec<_>>();
    let granularity = match rng.below(8) {
        0 => Granularity::PerTensor,
        1 => Granularity::PerChannel { axis: 0 },
        2 => Granularity::PerChannel { axis: 1 },
        3 => Granularity::PerChannel { axis: 2 },
        4 => Granularity::PerToken,
        5 => Granularity::PerGroup {
            axis: 0,
            group_size: rng.pick(&divisors(dims[0])),
        },
        _ => Granularity::PerGroup {
            axis: 2,
            group_size: rng.pick(&divisors(c)),
        },
    };
    // Row-major with padded rows (the last stride stays 1), or a view
    // whose last dimension is not contiguous.
    let pad = rng.below(3) as usize;
    let stride = if rng.below(6) == 0 {
        [dims[1] * dims[2] * 2, dims[2] * 2, 2]
    } else {
        [dims[1] * (c + pad), c + pad, 1]
    };
    let len = (dims[0] - 1) * stride[0] + (dims[1] - 1) * stride[1] + (c - 1) * stride[2] + 1;
    Problem {
        dims,
        granularity,
        stride,
        len,
        threads: 1 + rng.below(2) as usize,
        rare: rng.pick(&[1_000_000, 300, 40, 3]),
    }
}

const BACKENDS: [BackendKind; 3] = [BackendKind::Sse41, BackendKind::Avx2, BackendKind::Avx512];

/// The preferences to compare with the scalar core's: the default and
/// each vector backend (skipped where this CPU or plan has none).
fn preferences() -> Vec<PlanPreference> {
    let mut v = vec![PlanPreference::default()];
    v.extend(BACKENDS.iter().map(|&b| PlanPreference {
        prefer_backend: Some(b),
        ..Default::default()
    }));
    v
}

fn scalar() -> PlanPreference {
    PlanPreference {
        prefer_backend: Some(BackendKind::Scalar),
        ..Default::default()
    }
}

fn bits<T: Element>(v: &[T]) -> Vec<u64> {
    v.iter().map(|x| x.to_f64().to_bits()).collect()
}

enum Zp {
    None,
    Int(Vec<i32>),
    Float(Vec<f32>),
}
impl Zp {
    fn get(&self) -> ZeroPoints<'_> {
        match self {
            Zp::None => ZeroPoints::None,
            Zp::Int(z) => ZeroPoints::Int(z),
            Zp::Float(z) => ZeroPoints::Float(z),
        }
    }
}

const FAKE: [AffineFormula; 6] = [
    AffineFormula::TORCH_FAKE_QUANTIZE_PER_TENSOR,
    AffineFormula::TORCH_FAKE_QUANTIZE_PER_CHANNEL,
    AffineFormula::TORCH_DECOMPOSED_FAKE_QUANT,
    AffineFormula::SPEC,
    AffineFormula::TORCH_DECOMPOSED,
    AffineFormula::TORCH_PER_TOKEN_F32,
];

fn check<T: Element, TS: Element>(seed: u64) -> std::result::Result<usize, TestCaseError> {
    let mut rng = Rng(seed | 1);
    let p = problem(&mut rng);
    let shape = Shape::new(&p.dims).unwrap();
    let np = p.granularity.param_shape(&shape).unwrap().numel().unwrap();
    let (lo, hi) = rng.pick(&[(-128, 127), (-8, 7), (0, 255), (0, 15), (-1000, 1000)]);
    let s: Vec<TS> = (0..np).map(|_| TS::from_f64(scale(&mut rng))).collect();
    let zint: Vec<i32> = (0..np).map(|_| zero_point(&mut rng, lo, hi)).collect();
    let zp = match rng.below(5) {
        0 => Zp::None,
        1 => Zp::Float(zint.iter().map(|&z| z as f32 + 0.25).collect()),
        _ => Zp::Int(zint.clone()),
    };
    // Each element near the grid of its own block's scale.
    let block = p.granularity.block(&shape).unwrap();
    let params = p.granularity.param_shape(&shape).unwrap();
    let (b, pd) = (block.dims(), params.dims());
    let mut x: Vec<T> = (0..p.len).map(|_| T::from_f64(1.5)).collect();
    for i in 0..p.dims[0] {
        for j in 0..p.dims[1] {
            for k in 0..p.dims[2] {
                let param = ((i / b[0]) * pd[1] + j / b[1]) * pd[2] + k / b[2];
                let v = value(&mut rng, s[param].to_f64(), p.rare);
                x[i * p.stride[0] + j * p.stride[1] + k * p.stride[2]] = T::from_f64(v);
            }
        }
    }
    let dy: Vec<T> = (0..p.len)
        .map(|_| T::from_f64(value(&mut rng, 0.37, p.rare)))
        .collect();
    let codes_i8: Vec<i8> = (0..p.len).map(|_| rng.below(256) as u8 as i8).collect();
    let codes_u8: Vec<u8> = (0..p.len).map(|_| rng.below(256) as u8).collect();
    let stream = Stream::cpu_with_threads(p.threads).unwrap();
    let (d, st) = (p.dims, p.stride);
    let mut compared = 0;

    // Runs `f` with the scalar core and with each other preference; the
    // outputs must agree bit for bit.
    macro_rules! compare {
        ($name:expr, $select:expr, $run:expr) => {{
            let base = match $select(scalar()) {
                Ok(plan) => $run(&plan),
                Err(e) => {
                    prop_assert!(matches!(e, Error::Unsupported(_)), "{}: {e:?}", $name);
                    None
                }
            };
            if let Some(base) = base {
                for pref in preferences() {
                    match $select(pref) {
                        Ok(plan) => {
                            let got = $run(&plan).unwrap();
                            prop_assert_eq!(
                                &got,
                                &base,
                                "{} with {:?} ({:?}) on {:?} {:?} stride {:?} range {:?}",
                                $name,
                                pref.prefer_backend,
                                plan.sku().backend,
                                p.dims,
                                p.granularity,
                                p.stride,
                                (lo, hi)
                            );
                            compared += 1;
                        }
                        Err(e) => prop_assert!(
                            matches!(e, Error::Unsupported(_)) && pref.prefer_backend.is_some(),
                            "{}: {e:?}",
                            $name
                        ),
                    }
                }
            }
        }};
    }

    // Dequantize (i8 and u8 codes).
    for formula in [
        AffineFormula::SPEC,
        AffineFormula::TORCH_DECOMPOSED,
        AffineFormula::TORCH_FAKE_QUANTIZE_PER_CHANNEL,
        AffineFormula::TORCH_PER_TOKEN,
    ] {
        let desc = |q: ElementKind| DequantizeAffineDescriptor {
            shape,
            granularity: p.granularity,
            formula,
            input_element: q,
            scale_element: TS::KIND,
            output_element: T::KIND,
        };
        compare!(
            "dequantize i8",
            |pref| DequantizeAffinePlan::<i8, TS, T>::select(&stream, &desc(ElementKind::S8), pref),
            |plan: &DequantizeAffinePlan<i8, TS, T>| {
                let mut y = vec![T::from_f64(7.0); p.len];
                plan.run(
                    &stream,
                    Workspace::None,
                    DequantizeAffineArgs {
                        input: TensorRef::with_strides(&codes_i8, d, st).unwrap(),
                        scale: &s,
                        zero_point: zp.get(),
                        output: TensorMut::with_strides(&mut y, d, st).unwrap(),
                    },
                )
                .unwrap();
                Some(bits(&y))
            }
        );
        compare!(
            "dequantize u8",
            |pref| DequantizeAffinePlan::<u8, TS, T>::select(&stream, &desc(ElementKind::U8), pref),
            |plan: &DequantizeAffinePlan<u8, TS, T>| {
                let mut y = vec![T::from_f64(7.0); p.len];
                plan.run(
                    &stream,
                    Workspace::None,
                    DequantizeAffineArgs {
                        input: TensorRef::with_strides(&codes_u8, d, st).unwrap(),
                        scale: &s,
                        zero_point: zp.get(),
                        output: TensorMut::with_strides(&mut y, d, st).unwrap(),
                    },
                )
                .unwrap();
                Some(bits(&y))
            }
        );
    }

    // Fake quantize, its mask and its backward.
    for formula in FAKE {
        let desc = FakeQuantizeAffineDescriptor {
            shape,
            granularity: p.granularity,
            q_min: lo,
            q_max: hi,
            formula,
            element: T::KIND,
            scale_element: TS::KIND,
        };
        let with_mask = rng.below(3) != 0;
        compare!(
            "fake quantize",
            |pref| FakeQuantizeAffinePlan::<T, TS>::select(&stream, &desc, pref),
            |plan: &FakeQuantizeAffinePlan<T, TS>| {
                let mut y = vec![T::from_f64(7.0); p.len];
                let mut m = vec![true; p.len];
                plan.run(
                    &stream,
                    Workspace::None,
                    FakeQuantizeAffineArgs {
                        input: TensorRef::with_strides(&x, d, st).unwrap(),
                        scale: &s,
                        zero_point: zp.get(),
                        output: TensorMut::with_strides(&mut y, d, st).unwrap(),
                        mask: with_mask.then(|| TensorMut::with_strides(&mut m, d, st).unwrap()),
                    },
                )
                .unwrap();
                let mut b = bits(&y);
                b.extend(m.iter().map(|&m| m as u64));
                Some(b)
            }
        );
        compare!(
            "fake quantize backward",
            |pref| FakeQuantizeAffineBackwardPlan::<T, TS>::select(&stream, &desc, pref),
            |plan: &FakeQuantizeAffineBackwardPlan<T, TS>| {
                let mut g = vec![T::from_f64(7.0); p.len];
                plan.run(
                    &stream,
                    Workspace::None,
                    FakeQuantizeAffineBackwardArgs {
                        grad_output: TensorRef::with_strides(&dy, d, st).unwrap(),
                        input: TensorRef::with_strides(&x, d, st).unwrap(),
                        scale: &s,
                        zero_point: zp.get(),
                        grad_input: TensorMut::with_strides(&mut g, d, st).unwrap(),
                    },
                )
                .unwrap();
                Some(bits(&g))
            }
        );
    }

    // The straight-through and dequantize gradients.
    for (formula, boundary) in [
        (AffineFormula::SPEC, SteBoundary::Exclusive),
        (AffineFormula::SPEC, SteBoundary::Inclusive),
        (AffineFormula::TORCH_DECOMPOSED, SteBoundary::Inclusive),
    ] {
        if matches!(zp, Zp::Float(_)) {
            break;
        }
        let desc = QuantizeAffineBackwardDescriptor {
            shape,
            granularity: p.granularity,
            q_min: lo,
            q_max: hi,
            formula,
            boundary,
            element: T::KIND,
            scale_element: TS::KIND,
        };
        compare!(
            "quantize backward",
            |pref| QuantizeAffineBackwardPlan::<T, TS>::select(&stream, &desc, pref),
            |plan: &QuantizeAffineBackwardPlan<T, TS>| {
                let mut g = vec![T::from_f64(7.0); p.len];
                plan.run(
                    &stream,
                    Workspace::None,
                    QuantizeAffineBackwardArgs {
                        grad_output: TensorRef::with_strides(&dy, d, st).unwrap(),
                        input: TensorRef::with_strides(&x, d, st).unwrap(),
                        scale: &s,
                        zero_point: zp.get(),
                        grad_input: TensorMut::with_strides(&mut g, d, st).unwrap(),
                    },
                )
                .unwrap();
                Some(bits(&g))
            }
        );
    }
    for formula in [
        AffineFormula::SPEC,
        AffineFormula::TORCH_FAKE_QUANTIZE_PER_CHANNEL,
        AffineFormula::TORCH_PER_TOKEN,
    ] {
        let desc = DequantizeAffineBackwardDescriptor {
            shape,
            granularity: p.granularity,
            formula,
            element: T::KIND,
            scale_element: TS::KIND,
        };
        compare!(
            "dequantize backward",
            |pref| DequantizeAffineBackwardPlan::<T, TS>::select(&stream, &desc, pref),
            |plan: &DequantizeAffineBackwardPlan<T, TS>| {
                let mut g = vec![T::from_f64(7.0); p.len];
                plan.run(
                    &stream,
                    Workspace::None,
                    DequantizeAffineBackwardArgs {
                        grad_output: TensorRef::with_strides(&dy, d, st).unwrap(),
                        scale: &s,
                        grad_input: TensorMut::with_strides(&mut g, d, st).unwrap(),
                    },
                )
                .unwrap();
                Some(bits(&g))
            }
        );
    }
    Ok(compared)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    #[test]
    fn f32_runs_equal_the_scalar_core(seed in any::<u64>()) {
        check::<f32, f32>(seed)?;
    }

    #[test]
    fn bf16_runs_equal_the_scalar_core(seed in any::<u64>()) {
        check::<bf16, f32>(seed)?;
        check::<bf16, bf16>(seed ^ 1)?;
    }

    #[test]
    fn f16_runs_equal_the_scalar_core(seed in any::<u64>()) {
        check::<f16, f32>(seed)?;
        check::<f16, f16>(seed ^ 1)?;
    }

    #[test]
    fn f64_runs_equal_the_scalar_core(seed in any::<u64>()) {
        check::<f64, f64>(seed)?;
        check::<f32, f64>(seed ^ 1)?;
    }
}

/// The comparisons above reach a vector backend: the default preference
/// picks one on an x86-64 CPU with SSE4.1 for each of the plans.
#[test]
fn the_default_backend_is_a_vector_one() {
    if !cfg!(target_arch = "x86_64") || !std::is_x86_feature_detected!("sse4.1") {
        return;
    }
    let stream = Stream::cpu();
    let shape = Shape::new(&[4, 64]).unwrap();
    let g = Granularity::PerToken;
    let f = FakeQuantizeAffineDescriptor {
        shape,
        granularity: g,
        q_min: -128,
        q_max: 127,
        formula: AffineFormula::TORCH_FAKE_QUANTIZE_PER_CHANNEL,
        element: ElementKind::F32,
        scale_element: ElementKind::F32,
    };
    let fq = FakeQuantizeAffinePlan::<f32, f32>::select(&stream, &f, Default::default()).unwrap();
    assert_ne!(fq.sku().backend, BackendKind::Scalar);
    let dq = DequantizeAffineDescriptor {
        shape,
        granularity: g,
        formula: AffineFormula::TORCH_DECOMPOSED,
        input_element: ElementKind::S8,
        scale_element: ElementKind::F32,
        output_element: ElementKind::Bf16,
    };
    let plan = DequantizeAffinePlan::<i8, f32, bf16>::select(&stream, &dq, Default::default());
    assert_ne!(plan.unwrap().sku().backend, BackendKind::Scalar);
    let qb = QuantizeAffineBackwardDescriptor {
        shape,
        granularity: g,
        q_min: -8,
        q_max: 7,
        formula: AffineFormula::SPEC,
        boundary: SteBoundary::Inclusive,
        element: ElementKind::F64,
        scale_element: ElementKind::F64,
    };
    let plan = QuantizeAffineBackwardPlan::<f64, f64>::select(&stream, &qb, Default::default());
    assert_ne!(plan.unwrap().sku().backend, BackendKind::Scalar);
}
