//! The affine plans against a plain oracle written here from the formulas
//! (SPEC §3.1/§3.2 and PyTorch's), over random ranks, shapes, granularities,
//! strided and padded layouts, thread counts and special values; and their
//! error paths.

use groupq::affine::{AffineFormula, Granularity, Shape, MAX_RANK};
use groupq::*;
use proptest::prelude::*;

/// A deterministic generator.
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
}

/// Values with specials, ties and extremes, relative to a scale.
fn value(rng: &mut Rng, s: f32) -> f32 {
    let s = if s.is_finite() && s != 0.0 { s } else { 1.0 };
    match rng.below(12) {
        0..=4 => ((rng.unit() - 0.5) * 300.0) as f32 * s,
        5..=6 => (rng.below(300) as f32 - 150.0 + 0.5) * s,
        7 => [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            f32::MAX,
            f32::MIN,
        ][rng.below(7) as usize],
        8 => {
            f32::from_bits(rng.below(0x7f_ffff) as u32 + 1)
                * if rng.below(2) == 0 { 1.0 } else { -1.0 }
        }
        9 => ((rng.unit() - 0.5) * 1e30) as f32,
        _ => (rng.below(40) as f32 - 20.0) * s,
    }
}

fn scale(rng: &mut Rng) -> f32 {
    match rng.below(10) {
        0..=3 => 2f32.powi(rng.below(10) as i32 - 6) * if rng.below(4) == 0 { -1.0 } else { 1.0 },
        4..=6 => (rng.unit() * 4.0 + 1e-3) as f32,
        7 => 0.0,
        8 => f32::from_bits(1 + rng.below(100) as u32),
        _ => [f32::NAN, f32::INFINITY, -0.0, 0.1][rng.below(4) as usize],
    }
}

/// The oracle's code of `x` under SPEC §3.1 in f32.
fn spec_code(x: f32, s: f32, z: i32, lo: i32, hi: i32) -> i32 {
    let v = if s != 0.0 { x / s } else { 0.0 };
    let t = (v + z as f32).round_ties_even();
    if t.is_nan() {
        0.clamp(lo, hi)
    } else {
        (t as i32).clamp(lo, hi)
    }
}

/// PyTorch's `quantized_decomposed.quantize_per_*` in f32.
fn torch_code(x: f32, s: f32, z: i32, lo: i32, hi: i32) -> i32 {
    let inv = (1.0f64 / f64::from(s)) as f32;
    let t = (x * inv).round_ties_even() + z as f32;
    if t.is_nan() {
        0
    } else {
        (t as i32).clamp(lo, hi)
    }
}

/// PyTorch's `fake_quantize_per_tensor_affine` in f32: (value, mask).
fn torch_fake(x: f32, s: f32, z: i32, lo: i32, hi: i32) -> (f32, bool) {
    let inv = 1.0f32 / s;
    let qf = z as f32 + (x * inv).round_ties_even();
    let q = qf.max(lo as f32).min(hi as f32); // fmax/fmin: NaN → lo
    let q = if qf.is_nan() { lo as f32 } else { q };
    (
        ((q as i64 - z as i64) as f32) * s,
        lo as f32 <= qf && qf <= hi as f32,
    )
}

/// A random problem: shape, granularity, and strides (dense, padded or
/// permuted) for the input and the output.
#[derive(Debug, Clone)]
struct Problem {
    dims: Vec<usize>,
    granularity: Granularity,
    in_stride: Vec<usize>,
    out_stride: Vec<usize>,
}

fn layout(rng: &mut Rng, dims: &[usize], row_major: bool) -> (Vec<usize>, usize) {
    // A permutation of the axes (row-major when asked), each padded by 0..2
    // elements.
    let r = dims.len();
    let mut order: Vec<usize> = (0..r).collect();
    for i in (1..r).rev().filter(|_| !row_major) {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut stride = vec![0; r];
    let mut acc = 1;
    for &d in order.iter().rev() {
        stride[d] = acc;
        acc *= dims[d] + rng.below(2) as usize;
    }
    (stride, acc)
}

fn problem(seed: u64) -> (Problem, Rng) {
    let mut rng = Rng(seed | 1);
    let rank = 1 + rng.below(4) as usize;
    let mut dims: Vec<usize> = (0..rank).map(|_| 1 + rng.below(6) as usize).collect();
    // A third of the problems have long rows kept innermost, so that runs
    // sharing a parameter reach the vector kernels.
    let long = rng.below(3) == 0;
    if long {
        dims[rank - 1] = 16 + rng.below(90) as usize;
    }
    let axis = rng.below(rank as u64) as usize;
    let granularity = match rng.below(4) {
        0 => Granularity::PerTensor,
        1 => Granularity::PerChannel { axis },
        2 => Granularity::PerToken,
        _ => {
            let divisors: Vec<usize> = (1..=dims[axis])
                .filter(|g| dims[axis].is_multiple_of(*g))
                .collect();
            let group_size = divisors[rng.below(divisors.len() as u64) as usize];
            Granularity::PerGroup { axis, group_size }
        }
    };
    let (in_stride, _) = layout(&mut rng, &dims, long);
    let (out_stride, _) = layout(&mut rng, &dims, long);
    (
        Problem {
            dims,
            granularity,
            in_stride,
            out_stride,
        },
        rng,
    )
}

/// Every index of `dims` in row-major order.
fn indices(dims: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    for &d in dims {
        out = out
            .into_iter()
            .flat_map(|p| {
                (0..d).map(move |i| {
                    let mut q = p.clone();
                    q.push(i);
                    q
                })
            })
            .collect();
    }
    out
}

fn offset(idx: &[usize], stride: &[usize]) -> usize {
    idx.iter().zip(stride).map(|(i, s)| i * s).sum()
}

/// The parameter index of an element, computed from the granularity's
/// definition (not from the plans' block shapes).
fn param_index(p: &Problem, idx: &[usize]) -> usize {
    let r = p.dims.len();
    match p.granularity {
        Granularity::PerTensor => 0,
        Granularity::PerChannel { axis } => idx[axis],
        Granularity::PerToken => (0..r - 1).fold(0, |k, d| k * p.dims[d] + idx[d]),
        Granularity::PerGroup { axis, group_size } => (0..r).fold(0, |k, d| {
            let (i, n) = if d == axis {
                (idx[d] / group_size, p.dims[d] / group_size)
            } else {
                (idx[d], p.dims[d])
            };
            k * n + i
        }),
        _ => unreachable!(),
    }
}

fn span(dims: &[usize], stride: &[usize]) -> usize {
    1 + dims
        .iter()
        .zip(stride)
        .map(|(d, s)| (d - 1) * s)
        .sum::<usize>()
}

/// Runs `f` with a const `R` equal to `$rank`.
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

fn arr<const R: usize>(v: &[usize]) -> [usize; R] {
    v.try_into().unwrap()
}

fn check_quantize(seed: u64, threads: usize) -> std::result::Result<(), TestCaseError> {
    let (p, mut rng) = problem(seed);
    let shape = Shape::new(&p.dims).unwrap();
    let nparams = p.granularity.param_shape(&shape).unwrap().numel().unwrap();
    let s: Vec<f32> = (0..nparams).map(|_| scale(&mut rng)).collect();
    let (lo, hi) = [(-128, 127), (-8, 7), (3, 3)][rng.below(3) as usize];
    let z: Vec<i32> = (0..nparams)
        .map(|_| match rng.below(8) {
            0 => [i32::MIN, i32::MAX, (1 << 24) + 1][rng.below(3) as usize],
            _ => rng.below(20) as i32 - 10,
        })
        .collect();
    let all = indices(&p.dims);
    let mut x = vec![0f32; span(&p.dims, &p.in_stride)];
    for idx in &all {
        x[offset(idx, &p.in_stride)] = value(&mut rng, s[param_index(&p, idx)]);
    }
    let stream = Stream::cpu_with_threads(threads).unwrap();
    for (formula, oracle) in [
        (
            AffineFormula::SPEC,
            spec_code as fn(f32, f32, i32, i32, i32) -> i32,
        ),
        (AffineFormula::TORCH_DECOMPOSED, torch_code),
    ] {
        let desc = QuantizeAffineDescriptor {
            shape,
            granularity: p.granularity,
            q_min: lo,
            q_max: hi,
            formula,
            input_element: ElementKind::F32,
            scale_element: ElementKind::F32,
            output_element: ElementKind::S8,
        };
        let plan =
            QuantizeAffinePlan::<f32, f32, i8>::select(&stream, &desc, Default::default()).unwrap();
        let sentinel = 0x55u8 as i8;
        let mut q = vec![sentinel; span(&p.dims, &p.out_stride)];
        with_rank!(p.dims.len(), R => plan
            .run(&stream, Workspace::None, QuantizeAffineArgs {
                input: TensorRef::with_strides(&x, arr::<R>(&p.dims), arr::<R>(&p.in_stride)).unwrap(),
                scale: &s,
                zero_point: ZeroPoints::Int(&z),
                output: TensorMut::with_strides(&mut q, arr::<R>(&p.dims), arr::<R>(&p.out_stride)).unwrap(),
            })
            .unwrap());
        // The scalar core alone gives the same codes as the best backend
        // (the recipe engine's vector kernels on runs that reach them).
        let scalar = PlanPreference {
            prefer_backend: Some(BackendKind::Scalar),
            ..Default::default()
        };
        let splan = QuantizeAffinePlan::<f32, f32, i8>::select(&stream, &desc, scalar).unwrap();
        let mut qs = vec![sentinel; q.len()];
        with_rank!(p.dims.len(), R => splan
            .run(&stream, Workspace::None, QuantizeAffineArgs {
                input: TensorRef::with_strides(&x, arr::<R>(&p.dims), arr::<R>(&p.in_stride)).unwrap(),
                scale: &s,
                zero_point: ZeroPoints::Int(&z),
                output: TensorMut::with_strides(&mut qs, arr::<R>(&p.dims), arr::<R>(&p.out_stride)).unwrap(),
            })
            .unwrap());
        prop_assert_eq!(&qs, &q, "scalar vs {:?}", plan.sku().backend);
        let mut written = vec![false; q.len()];
        for idx in &all {
            let (k, o) = (param_index(&p, idx), offset(idx, &p.out_stride));
            let xv = x[offset(idx, &p.in_stride)];
            let want = oracle(xv, s[k], z[k], lo, hi);
            prop_assert_eq!(
                i32::from(q[o]),
                want,
                "{:?} {:?} at {:?}: x {} s {} z {}",
                formula.conversion,
                p,
                idx,
                xv,
                s[k],
                z[k]
            );
            written[o] = true;
        }
        // Padding between the view's elements is never touched.
        for (i, w) in written.iter().enumerate() {
            if !w {
                prop_assert_eq!(q[i], sentinel, "padding at {} written", i);
            }
        }
    }
    Ok(())
}

fn check_fake_and_dequantize(seed: u64, threads: usize) -> std::result::Result<(), TestCaseError> {
    let (p, mut rng) = problem(seed ^ 0xabc);
    let shape = Shape::new(&p.dims).unwrap();
    let nparams = p.granularity.param_shape(&shape).unwrap().numel().unwrap();
    let s: Vec<f32> = (0..nparams).map(|_| scale(&mut rng)).collect();
    let (lo, hi) = (-8, 7);
    let z: Vec<i32> = (0..nparams).map(|_| rng.below(16) as i32 - 8).collect();
    let all = indices(&p.dims);
    let mut x = vec![0f32; span(&p.dims, &p.in_stride)];
    for idx in &all {
        x[offset(idx, &p.in_stride)] = value(&mut rng, s[param_index(&p, idx)]);
    }
    let stream = Stream::cpu_with_threads(threads).unwrap();
    let desc = FakeQuantizeAffineDescriptor {
        shape,
        granularity: p.granularity,
        q_min: lo,
        q_max: hi,
        formula: AffineFormula::TORCH_FAKE_QUANTIZE_PER_TENSOR,
        element: ElementKind::F32,
        scale_element: ElementKind::F32,
    };
    let plan =
        FakeQuantizeAffinePlan::<f32, f32>::select(&stream, &desc, Default::default()).unwrap();
    let n = span(&p.dims, &p.out_stride);
    let (mut y, mut mask) = (vec![0f32; n], vec![false; n]);
    // Codes to dequantize: random in the range, dense.
    let codes: Vec<i8> = (0..all.len()).map(|_| rng.below(16) as i8 - 8).collect();
    let mut back = vec![0f32; n];
    with_rank!(p.dims.len(), R => {
        let d = arr::<R>(&p.dims);
        plan.run(&stream, Workspace::None, FakeQuantizeAffineArgs {
            input: TensorRef::with_strides(&x, d, arr::<R>(&p.in_stride)).unwrap(),
            scale: &s,
            zero_point: ZeroPoints::Int(&z),
            output: TensorMut::with_strides(&mut y, d, arr::<R>(&p.out_stride)).unwrap(),
            mask: Some(TensorMut::with_strides(&mut mask, d, arr::<R>(&p.out_stride)).unwrap()),
        })
        .unwrap();
        let ddesc = DequantizeAffineDescriptor {
            shape,
            granularity: p.granularity,
            formula: AffineFormula::SPEC,
            input_element: ElementKind::S8,
            scale_element: ElementKind::F32,
            output_element: ElementKind::F32,
        };
        let dplan = DequantizeAffinePlan::<i8, f32, f32>::select(&stream, &ddesc, Default::default()).unwrap();
        dplan.run(&stream, Workspace::None, DequantizeAffineArgs {
            input: TensorRef::new(&codes, d).unwrap(),
            scale: &s,
            zero_point: ZeroPoints::Int(&z),
            output: TensorMut::with_strides(&mut back, d, arr::<R>(&p.out_stride)).unwrap(),
        })
        .unwrap();
    });
    for (flat, idx) in all.iter().enumerate() {
        let (k, o) = (param_index(&p, idx), offset(idx, &p.out_stride));
        let xv = x[offset(idx, &p.in_stride)];
        let (want, want_mask) = torch_fake(xv, s[k], z[k], lo, hi);
        prop_assert!(
            y[o].to_bits() == want.to_bits() || (y[o].is_nan() && want.is_nan()),
            "{:?} at {:?}: x {} s {} z {}: {} vs {}",
            p,
            idx,
            xv,
            s[k],
            z[k],
            y[o],
            want
        );
        if y[o].is_nan() {
            prop_assert_eq!(y[o].to_bits(), f32::NAN.to_bits(), "canonical NaN");
        }
        prop_assert_eq!(mask[o], want_mask);
        let deq = ((i32::from(codes[flat]) - z[k]) as f32) * s[k];
        prop_assert!(back[o].to_bits() == deq.to_bits() || (back[o].is_nan() && deq.is_nan()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn quantize_matches_the_oracle(seed in any::<u64>(), threads in 1usize..4) {
        check_quantize(seed, threads)?;
    }

    #[test]
    fn fake_quantize_and_dequantize_match_the_oracle(seed in any::<u64>(), threads in 1usize..4) {
        check_fake_and_dequantize(seed, threads)?;
    }
}

/// A tensor large enough to be split over threads (along the first axis,
/// or inside the only one): every thread count gives the same bits, equal
/// to the oracle's.
#[test]
fn thread_counts_and_splits_agree() {
    let mut rng = Rng(7);
    for dims in [
        vec![3usize, 50_000],
        vec![70_001],
        vec![1, 1, 40_000],
        vec![64, 33, 17],
    ] {
        let n: usize = dims.iter().product();
        let shape = Shape::new(&dims).unwrap();
        let g = Granularity::PerChannel {
            axis: dims.len() - 1,
        };
        let np = g.param_shape(&shape).unwrap().numel().unwrap();
        let s: Vec<f32> = (0..np).map(|_| scale(&mut rng)).collect();
        let z: Vec<i32> = (0..np).map(|_| rng.below(9) as i32 - 4).collect();
        let x: Vec<f32> = (0..n).map(|i| value(&mut rng, s[i % np])).collect();
        let desc = QuantizeAffineDescriptor {
            shape,
            granularity: g,
            q_min: -128,
            q_max: 127,
            formula: AffineFormula::TORCH_DECOMPOSED,
            input_element: ElementKind::F32,
            scale_element: ElementKind::F32,
            output_element: ElementKind::S8,
        };
        let want: Vec<i8> = (0..n)
            .map(|i| torch_code(x[i], s[i % np], z[i % np], -128, 127) as i8)
            .collect();
        for threads in 1..=3 {
            let st = Stream::cpu_with_threads(threads).unwrap();
            let plan =
                QuantizeAffinePlan::<f32, f32, i8>::select(&st, &desc, Default::default()).unwrap();
            let mut q = vec![0i8; n];
            with_rank!(dims.len(), R => plan
                .run(&st, Workspace::None, QuantizeAffineArgs {
                    input: TensorRef::new(&x, arr::<R>(&dims)).unwrap(),
                    scale: &s,
                    zero_point: ZeroPoints::Int(&z),
                    output: TensorMut::new(&mut q, arr::<R>(&dims)).unwrap(),
                })
                .unwrap());
            assert_eq!(q, want, "{dims:?} with {threads} threads");
        }
    }
}

fn per_channel(dims: &[usize], axis: usize) -> QuantizeAffineDescriptor {
    QuantizeAffineDescriptor {
        shape: Shape::new(dims).unwrap(),
        granularity: Granularity::PerChannel { axis },
        q_min: -128,
        q_max: 127,
        formula: AffineFormula::TORCH_DECOMPOSED,
        input_element: ElementKind::F32,
        scale_element: ElementKind::F32,
        output_element: ElementKind::S8,
    }
}

fn message(e: Error) -> String {
    e.to_string()
}

#[test]
fn errors_name_the_field_and_the_values() {
    let st = Stream::cpu();
    let sel = |d: &QuantizeAffineDescriptor| {
        QuantizeAffinePlan::<f32, f32, i8>::select(&st, d, Default::default())
    };
    // Rank above MAX_RANK.
    let e = Shape::new(&[1; MAX_RANK + 1]).unwrap_err();
    assert!(matches!(e, Error::InvalidProblem(_)) && message(e).contains("rank 9"));
    // Axis out of range.
    let e = sel(&per_channel(&[2, 3], 2)).unwrap_err();
    assert!(matches!(e, Error::InvalidProblem(_)));
    assert!(message(e).contains("axis 2 is out of range for shape [2, 3]"));
    // A group that does not divide its axis.
    let mut d = per_channel(&[4, 6], 0);
    d.granularity = Granularity::PerGroup {
        axis: 1,
        group_size: 4,
    };
    assert!(
        message(sel(&d).unwrap_err()).contains("group_size 4 does not divide axis 1 of length 6")
    );
    // Kinds.
    let mut d = per_channel(&[4, 6], 0);
    d.scale_element = ElementKind::Bf16;
    assert!(matches!(sel(&d).unwrap_err(), Error::Unsupported(_)));
    // A code range outside i8.
    let mut d = per_channel(&[4, 6], 0);
    d.q_max = 128;
    assert!(matches!(sel(&d).unwrap_err(), Error::InvalidProblem(_)));
    // A vector backend for a formula without a vector form (FBGEMM's
    // conversion), and for a plan that has only the scalar core.
    let pref = PlanPreference {
        prefer_backend: Some(BackendKind::Sse41),
        ..Default::default()
    };
    let mut d = per_channel(&[4, 6], 0);
    d.formula = AffineFormula::TORCH_QUANTIZE_PER_TENSOR;
    let e = QuantizeAffinePlan::<f32, f32, i8>::select(&st, &d, pref).unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
    let fdesc = FakeQuantizeAffineDescriptor {
        shape: Shape::new(&[4, 6]).unwrap(),
        granularity: Granularity::PerTensor,
        q_min: -8,
        q_max: 7,
        formula: AffineFormula::TORCH_FAKE_QUANTIZE_PER_CHANNEL_FLOAT_ZERO_POINT,
        element: ElementKind::F32,
        scale_element: ElementKind::F32,
    };
    let e = FakeQuantizeAffinePlan::<f32, f32>::select(&st, &fdesc, pref).unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
    // A fake-quantize code range no 8-bit code type holds has no vector
    // form either.
    let fdesc = FakeQuantizeAffineDescriptor {
        q_min: -1000,
        q_max: 1000,
        formula: AffineFormula::TORCH_FAKE_QUANTIZE_PER_TENSOR,
        ..fdesc
    };
    let e = FakeQuantizeAffinePlan::<f32, f32>::select(&st, &fdesc, pref).unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
    let fdesc = FakeQuantizeAffineDescriptor {
        q_min: 0,
        q_max: 255,
        ..fdesc
    };
    assert!(FakeQuantizeAffinePlan::<f32, f32>::select(&st, &fdesc, pref).is_ok());
    // Packed codes.
    let mut d = per_channel(&[4, 6], 0);
    d.output_element = ElementKind::S4;
    assert!(matches!(
        QuantizeAffinePlan::<f32, f32, S4>::select(&st, &d, Default::default()).unwrap_err(),
        Error::Unsupported(_)
    ));

    // Views and parameters.
    let plan = sel(&per_channel(&[4, 6], 0)).unwrap();
    let x = [0f32; 24];
    let s = [1f32; 4];
    let z = [0i32; 4];
    let mut q = [0i8; 24];
    let mut run = |shape: [usize; 2],
                   stride: [usize; 2],
                   s: &[f32],
                   z: ZeroPoints<'_>,
                   ostride: [usize; 2]| {
        let args = QuantizeAffineArgs {
            input: TensorRef {
                data: &x[..],
                shape,
                stride,
            },
            scale: s,
            zero_point: z,
            output: TensorMut {
                data: &mut q[..],
                shape,
                stride: ostride,
            },
        };
        plan.run(&st, Workspace::None, args)
    };
    let e = run([4, 5], [5, 1], &s, ZeroPoints::Int(&z), [5, 1]).unwrap_err();
    assert!(message(e).contains("input shape [4, 5] does not match the descriptor's [4, 6]"));
    let e = run([4, 6], [7, 1], &s, ZeroPoints::Int(&z), [6, 1]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::BufferTooSmall {
                needed: 27,
                got: 24
            }
        ),
        "{e:?}"
    );
    let e = run([4, 6], [6, 1], &s[..3], ZeroPoints::Int(&z), [6, 1]).unwrap_err();
    assert!(matches!(e, Error::BufferTooSmall { needed: 4, got: 3 }));
    let e = run([4, 6], [6, 1], &[1f32; 5], ZeroPoints::Int(&z), [6, 1]).unwrap_err();
    assert!(message(e).contains("scale has 5 elements; the parameter shape [4, 1] holds 4"));
    let e = run([4, 6], [6, 1], &s, ZeroPoints::Int(&z), [1, 1]).unwrap_err();
    assert!(
        message(e).contains("puts two elements at one place"),
        "overlap"
    );
    // Nothing was written by the failed calls.
    assert!(q.iter().all(|&c| c == 0));
    // A float zero point cannot go through FBGEMM's integer add.
    let mut d = per_channel(&[4, 6], 0);
    d.formula = AffineFormula::TORCH_QUANTIZE_PER_TENSOR;
    let plan = sel(&d).unwrap();
    let zf = [0f32; 4];
    let e = plan
        .run(
            &st,
            Workspace::None,
            QuantizeAffineArgs {
                input: TensorRef::new(&x, [4, 6]).unwrap(),
                scale: &s,
                zero_point: ZeroPoints::Float(&zf),
                output: TensorMut::new(&mut q, [4, 6]).unwrap(),
            },
        )
        .unwrap_err();
    assert!(message(e).contains("float zero_point"));
    // A rank other than the descriptor's.
    let plan = sel(&per_channel(&[4, 6], 0)).unwrap();
    let e = plan
        .run(
            &st,
            Workspace::None,
            QuantizeAffineArgs {
                input: TensorRef::new(&x, [24]).unwrap(),
                scale: &s,
                zero_point: ZeroPoints::Int(&z),
                output: TensorMut::new(&mut q, [24]).unwrap(),
            },
        )
        .unwrap_err();
    assert!(message(e).contains("does not match the descriptor's"));
}

/// Empty tensors are `Ok` and touch nothing; a rank-0 tensor is one element.
#[test]
fn empty_and_scalar_tensors() {
    let st = Stream::cpu();
    let desc = per_channel(&[0, 5], 1);
    let plan = QuantizeAffinePlan::<f32, f32, i8>::select(&st, &desc, Default::default()).unwrap();
    let mut q: [i8; 0] = [];
    plan.run(
        &st,
        Workspace::None,
        QuantizeAffineArgs {
            input: TensorRef::new(&[], [0, 5]).unwrap(),
            scale: &[1.0; 5],
            zero_point: ZeroPoints::None,
            output: TensorMut::new(&mut q, [0, 5]).unwrap(),
        },
    )
    .unwrap();
    let mut desc = per_channel(&[], 0);
    desc.granularity = Granularity::PerTensor;
    let plan = QuantizeAffinePlan::<f32, f32, i8>::select(&st, &desc, Default::default()).unwrap();
    let mut q = [0i8];
    plan.run(
        &st,
        Workspace::None,
        QuantizeAffineArgs {
            input: TensorRef::new(&[2.5], []).unwrap(),
            scale: &[0.5],
            zero_point: ZeroPoints::Int(&[1]),
            output: TensorMut::new(&mut q, []).unwrap(),
        },
    )
    .unwrap();
    assert_eq!(q, [6]);
}

/// The affine backward plans with SPEC's formula, per group of the last
/// axis of a matrix, equal the per-group backward plans (SPEC §3.3, §3.4)
/// bit for bit; the matrix is then also read transposed (groups down the
/// columns of the `[K, N]` layout) through strides, with the same result.
fn check_backward(seed: u64, threads: usize) -> std::result::Result<(), TestCaseError> {
    let mut rng = Rng(seed | 1);
    let outer = 1 + rng.below(5) as usize;
    let gs = 1 + rng.below(6) as usize;
    let axis = gs * (1 + rng.below(4) as usize);
    let groups = axis / gs;
    let s: Vec<f32> = (0..outer * groups).map(|_| scale(&mut rng)).collect();
    let z: Vec<i32> = (0..outer * groups)
        .map(|_| rng.below(20) as i32 - 10)
        .collect();
    let x: Vec<f32> = (0..outer * axis)
        .map(|i| value(&mut rng, s[i / gs]))
        .collect();
    let dy: Vec<f32> = (0..outer * axis)
        .map(|i| value(&mut rng, s[i / gs]))
        .collect();
    let (lo, hi) = (-8, 7);
    let st = Stream::cpu_with_threads(threads).unwrap();
    for boundary in [SteBoundary::Exclusive, SteBoundary::Inclusive] {
        let pdesc = QuantizePerGroupBackwardDescriptor {
            outer_size: outer,
            axis_size: axis,
            group_size: gs,
            q_min: lo,
            q_max: hi,
            input_element: ElementKind::F32,
            boundary,
        };
        let pplan =
            QuantizePerGroupBackwardPlan::<f32>::select(&st, &pdesc, Default::default()).unwrap();
        let mut want = vec![0f32; outer * axis];
        pplan
            .run(
                &st,
                Workspace::None,
                QuantizePerGroupBackwardArgs {
                    grad_output: TensorRef::new(&dy, [outer, axis]).unwrap(),
                    input: TensorRef::new(&x, [outer, axis]).unwrap(),
                    scale: TensorRef::new(&s, [outer, groups]).unwrap(),
                    zero_point: TensorRef::new(&z, [outer, groups]).unwrap(),
                    grad_input: TensorMut::new(&mut want, [outer, axis]).unwrap(),
                },
            )
            .unwrap();
        let desc = QuantizeAffineBackwardDescriptor {
            shape: Shape::new(&[outer, axis]).unwrap(),
            granularity: Granularity::PerGroup {
                axis: 1,
                group_size: gs,
            },
            q_min: lo,
            q_max: hi,
            formula: AffineFormula::SPEC,
            boundary,
            element: ElementKind::F32,
            scale_element: ElementKind::F32,
        };
        let plan =
            QuantizeAffineBackwardPlan::<f32, f32>::select(&st, &desc, Default::default()).unwrap();
        let mut got = vec![0f32; outer * axis];
        plan.run(
            &st,
            Workspace::None,
            QuantizeAffineBackwardArgs {
                grad_output: TensorRef::new(&dy, [outer, axis]).unwrap(),
                input: TensorRef::new(&x, [outer, axis]).unwrap(),
                scale: &s,
                zero_point: ZeroPoints::Int(&z),
                grad_input: TensorMut::new(&mut got, [outer, axis]).unwrap(),
            },
        )
        .unwrap();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&got), bits(&want), "{:?}", boundary);
        // The same data seen as its transpose [axis, outer] with groups
        // down the columns (axis 0), read through strides; the parameters
        // are then laid out [groups, outer].
        let tdesc = QuantizeAffineBackwardDescriptor {
            shape: Shape::new(&[axis, outer]).unwrap(),
            granularity: Granularity::PerGroup {
                axis: 0,
                group_size: gs,
            },
            ..desc
        };
        let tplan = QuantizeAffineBackwardPlan::<f32, f32>::select(&st, &tdesc, Default::default())
            .unwrap();
        let ts: Vec<f32> = (0..groups * outer)
            .map(|i| s[(i % outer) * groups + i / outer])
            .collect();
        let tz: Vec<i32> = (0..groups * outer)
            .map(|i| z[(i % outer) * groups + i / outer])
            .collect();
        let mut tgot = vec![0f32; outer * axis];
        tplan
            .run(
                &st,
                Workspace::None,
                QuantizeAffineBackwardArgs {
                    grad_output: TensorRef::with_strides(&dy, [axis, outer], [1, axis]).unwrap(),
                    input: TensorRef::with_strides(&x, [axis, outer], [1, axis]).unwrap(),
                    scale: &ts,
                    zero_point: ZeroPoints::Int(&tz),
                    grad_input: TensorMut::with_strides(&mut tgot, [axis, outer], [1, axis])
                        .unwrap(),
                },
            )
            .unwrap();
        prop_assert_eq!(bits(&tgot), bits(&want), "transposed {:?}", boundary);
    }
    // SPEC §3.4.
    let ddesc = DequantizePerGroupBackwardDescriptor {
        outer_size: outer,
        axis_size: axis,
        group_size: gs,
    };
    let dplan =
        DequantizePerGroupBackwardPlan::<i8, f32>::select(&st, &ddesc, Default::default()).unwrap();
    let mut want = vec![0f32; outer * axis];
    dplan
        .run(
            &st,
            Workspace::None,
            DequantizePerGroupBackwardArgs {
                grad_output: TensorRef::new(&dy, [outer, axis]).unwrap(),
                scale: TensorRef::new(&s, [outer, groups]).unwrap(),
                grad_input: TensorMut::new(&mut want, [outer, axis]).unwrap(),
            },
        )
        .unwrap();
    let adesc = DequantizeAffineBackwardDescriptor {
        shape: Shape::new(&[outer, axis]).unwrap(),
        granularity: Granularity::PerGroup {
            axis: 1,
            group_size: gs,
        },
        formula: AffineFormula::SPEC,
        element: ElementKind::F32,
        scale_element: ElementKind::F32,
    };
    let aplan =
        DequantizeAffineBackwardPlan::<f32, f32>::select(&st, &adesc, Default::default()).unwrap();
    let mut got = vec![0f32; outer * axis];
    aplan
        .run(
            &st,
            Workspace::None,
            DequantizeAffineBackwardArgs {
                grad_output: TensorRef::new(&dy, [outer, axis]).unwrap(),
                scale: &s,
                grad_input: TensorMut::new(&mut got, [outer, axis]).unwrap(),
            },
        )
        .unwrap();
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    prop_assert_eq!(bits(&got), bits(&want));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn backward_plans_equal_the_per_group_ones(seed in any::<u64>(), threads in 1usize..4) {
        check_backward(seed, threads)?;
    }
}

/// The dynamic plan: per block, the parameters the per-group choose plan
/// gives (one group per token of a matrix, and per channel down its
/// columns through a transposed view), the codes of QuantizeAffinePlan with
/// those parameters; under NonFinitePolicy::Error a NaN is `NonFiniteInput`
/// naming the first bad block, with nothing written.
#[test]
fn dynamic_plan_equals_choose_then_quantize() {
    use groupq::recipe::{NonFinitePolicy, Recipe, TorchaoMapping};
    let mut rng = Rng(99);
    let (rows, cols) = (7usize, 24usize);
    let x: Vec<f32> = (0..rows * cols).map(|_| value(&mut rng, 0.25)).collect();
    let x: Vec<f32> = x
        .iter()
        .map(|v| if v.is_finite() { *v } else { 1.5 })
        .collect();
    let st = Stream::cpu_with_threads(2).unwrap();
    for recipe in [
        Recipe::torchao(TorchaoMapping::Asymmetric, -128, 127),
        Recipe::torchao(TorchaoMapping::Symmetric, -8, 7),
        Recipe::torch_per_token_asymmetric_int8(),
    ] {
        // The oracle: the per-group choose plan, one group per row.
        let cdesc = ChooseQParamsPerGroupDescriptor {
            outer_size: rows,
            axis_size: cols,
            group_size: cols,
            recipe,
            input_element: ElementKind::F32,
            scale_element: ElementKind::F32,
        };
        let choose =
            ChooseQParamsPerGroupPlan::<f32, f32>::select(&st, &cdesc, Default::default()).unwrap();
        let (mut s, mut z) = (vec![0f32; rows], vec![0i32; rows]);
        choose
            .run(
                &st,
                Workspace::None,
                ChooseQParamsPerGroupArgs {
                    input: TensorRef::new(&x, [rows, cols]).unwrap(),
                    scale: TensorMut::new(&mut s, [rows, 1]).unwrap(),
                    zero_point: TensorMut::new(&mut z, [rows, 1]).unwrap(),
                },
            )
            .unwrap();
        let formula = AffineFormula::from_quantize(recipe.quantize);
        let mut want = vec![0i8; rows * cols];
        let qdesc = QuantizeAffineDescriptor {
            shape: Shape::new(&[rows, cols]).unwrap(),
            granularity: Granularity::PerToken,
            q_min: recipe.q_min,
            q_max: recipe.q_max,
            formula,
            input_element: ElementKind::F32,
            scale_element: ElementKind::F32,
            output_element: ElementKind::S8,
        };
        QuantizeAffinePlan::<f32, f32, i8>::select(&st, &qdesc, Default::default())
            .unwrap()
            .run(
                &st,
                Workspace::None,
                QuantizeAffineArgs {
                    input: TensorRef::new(&x, [rows, cols]).unwrap(),
                    scale: &s,
                    zero_point: ZeroPoints::Int(&z),
                    output: TensorMut::new(&mut want, [rows, cols]).unwrap(),
                },
            )
            .unwrap();
        // Per token, and per channel of the transposed view.
        for (shape, g, stride) in [
            ([rows, cols], Granularity::PerToken, [cols, 1]),
            ([cols, rows], Granularity::PerChannel { axis: 1 }, [1, cols]),
        ] {
            let desc = QuantizeDynamicAffineDescriptor {
                shape: Shape::new(&shape).unwrap(),
                granularity: g,
                recipe,
                formula,
                input_element: ElementKind::F32,
                scale_element: ElementKind::F32,
                output_element: ElementKind::S8,
            };
            let plan =
                QuantizeDynamicAffinePlan::<f32, f32, i8>::select(&st, &desc, Default::default())
                    .unwrap();
            let (mut ds, mut dz, mut dq) =
                (vec![0f32; rows], vec![0i32; rows], vec![0i8; rows * cols]);
            plan.run(
                &st,
                Workspace::None,
                QuantizeDynamicAffineArgs {
                    input: TensorRef::with_strides(&x, shape, stride).unwrap(),
                    scale: &mut ds,
                    zero_point: &mut dz,
                    output: TensorMut::with_strides(&mut dq, shape, stride).unwrap(),
                },
            )
            .unwrap();
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&ds), bits(&s), "{recipe:?} {g:?}");
            assert_eq!(dz, z, "{recipe:?} {g:?}");
            assert_eq!(dq, want, "{recipe:?} {g:?}");
        }
        // A NaN in row 3 under the Error policy.
        let mut bad = x.clone();
        bad[3 * cols + 5] = f32::NAN;
        let desc = QuantizeDynamicAffineDescriptor {
            shape: Shape::new(&[rows, cols]).unwrap(),
            granularity: Granularity::PerToken,
            recipe: recipe.with_non_finite(NonFinitePolicy::Error),
            formula,
            input_element: ElementKind::F32,
            scale_element: ElementKind::F32,
            output_element: ElementKind::S8,
        };
        let plan =
            QuantizeDynamicAffinePlan::<f32, f32, i8>::select(&st, &desc, Default::default())
                .unwrap();
        let (mut ds, mut dz, mut dq) = (vec![9f32; rows], vec![9i32; rows], vec![9i8; rows * cols]);
        let e = plan
            .run(
                &st,
                Workspace::None,
                QuantizeDynamicAffineArgs {
                    input: TensorRef::new(&bad, [rows, cols]).unwrap(),
                    scale: &mut ds,
                    zero_point: &mut dz,
                    output: TensorMut::new(&mut dq, [rows, cols]).unwrap(),
                },
            )
            .unwrap_err();
        assert!(
            matches!(e, Error::NonFiniteInput { row: 3, group: 0 }),
            "{e:?}"
        );
        assert!(
            ds.iter().all(|&v| v == 9.0)
                && dz.iter().all(|&v| v == 9)
                && dq.iter().all(|&v| v == 9)
        );
    }
}
