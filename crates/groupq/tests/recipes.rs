//! Property tests of the recipe plans and the packing codecs: the fused plan
//! equals choose + quantize, results do not depend on thread count or on
//! the sign of zeros, non-finite input is reported before anything is
//! written, and every codec round-trips.

use groupq::half::{bf16, f16};
use groupq::pack::{self, GptqZeros};
use groupq::recipe::{NonFinitePolicy, Recipe, TorchaoMapping, ZeroPointRule};
use groupq::*;
use proptest::prelude::*;

/// Presets whose codes fit signed (`i8`) or unsigned (`u8`) storage.
fn presets(signed: bool) -> Vec<Recipe> {
    if signed {
        vec![
            Recipe::torch_per_token_asymmetric_int8(),
            Recipe::torchao(TorchaoMapping::Symmetric, -8, 7),
            Recipe::torchao(TorchaoMapping::Asymmetric, -128, 127),
            Recipe::compressed_tensors_w4a16(),
            Recipe::compressed_tensors_w4a16_asym(),
            Recipe::awq(false, 4),
            Recipe::gguf_q8_0(),
        ]
    } else {
        vec![
            Recipe::torchao(TorchaoMapping::Asymmetric, 0, 15),
            Recipe::torchao(TorchaoMapping::Symmetric, 0, 15),
            Recipe::gptq(true, 4),
            Recipe::gptq(false, 4),
            Recipe::gptq(false, 8),
            Recipe::awq(true, 4),
            Recipe::awq_f16(true, 4),
            Recipe::gguf_q4_0(),
            Recipe::gguf_q5_0().fused(),
        ]
    }
}

/// Weight-like values with exact zeros of both signs, ties and outliers.
fn values<T: Element>(n: usize, seed: u64) -> Vec<T> {
    let mut state = seed | 1;
    (0..n)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            T::from_f64(match state % 11 {
                0 => 0.0,
                1 => -0.0,
                2 => (i % 16) as f64 * 0.125 - 1.0,
                3 => u * 40.0,
                _ => u * 0.1,
            })
        })
        .collect()
}

struct Out<S, Q> {
    scale: Vec<S>,
    zero_point: Vec<i32>,
    codes: Vec<Q>,
    /// The float offsets of a `FloatOffset` recipe (else empty).
    offset: Vec<S>,
}

fn fused<T: Element, S: Element, Q: IntElement>(
    x: &[T],
    shape: (usize, usize, usize),
    recipe: Recipe,
    threads: usize,
) -> Result<Out<S, Q>> {
    fused_on(x, shape, recipe, threads, PlanPreference::default())
}

/// [`fused`] with a plan preference (codes `Q::PACK` to a unit).
fn fused_on<T: Element, S: Element, Q: IntElement>(
    x: &[T],
    (m, k, g): (usize, usize, usize),
    recipe: Recipe,
    threads: usize,
    pref: PlanPreference,
) -> Result<Out<S, Q>> {
    let stream = Stream::cpu_with_threads(threads)?;
    let desc = QuantizeDynamicPerGroupDescriptor {
        outer_size: m,
        axis_size: k,
        group_size: g,
        recipe,
        input_element: T::KIND,
        scale_element: S::KIND,
        output_element: Q::KIND,
    };
    let plan = QuantizeDynamicPerGroupPlan::<T, S, Q>::select(&stream, &desc, pref)?;
    if let Some(b) = pref.prefer_backend {
        assert_eq!(plan.sku().backend, b);
    }
    let ng = m * k / g;
    let with_offset = recipe.zero_point == ZeroPointRule::FloatOffset;
    let mut out = Out {
        scale: vec![S::from_f64(-3.0); ng],
        zero_point: vec![-3; ng],
        codes: vec![Q::default(); m * k / Q::PACK],
        offset: vec![S::from_f64(-3.0); if with_offset { ng } else { 0 }],
    };
    let args = QuantizeDynamicPerGroupArgs {
        input: TensorRef::new(x, [m, k])?,
        scale: TensorMut::new(&mut out.scale, [m, k / g])?,
        zero_point: TensorMut::new(&mut out.zero_point, [m, k / g])?,
        output: TensorMut::new(&mut out.codes, [m, k / Q::PACK])?,
    };
    if with_offset {
        let offset = TensorMut::new(&mut out.offset, [m, k / g])?;
        plan.run_with_offset(&stream, Workspace::None, args, offset)?;
    } else {
        plan.run(&stream, Workspace::None, args)?;
    }
    Ok(out)
}

fn choose_then_quantize<T: Element, Q: IntElement>(
    x: &[T],
    (m, k, g): (usize, usize, usize),
    recipe: Recipe,
) -> Out<T, Q> {
    let stream = Stream::cpu_with_threads(2).unwrap();
    let ng = m * k / g;
    let (mut s, mut z) = (vec![T::from_f64(0.0); ng], vec![0i32; ng]);
    let choose = ChooseQParamsPerGroupPlan::<T, T>::select(
        &stream,
        &ChooseQParamsPerGroupDescriptor {
            outer_size: m,
            axis_size: k,
            group_size: g,
            recipe,
            input_element: T::KIND,
            scale_element: T::KIND,
        },
        Default::default(),
    )
    .unwrap();
    choose
        .run(
            &stream,
            Workspace::None,
            ChooseQParamsPerGroupArgs {
                input: TensorRef::new(x, [m, k]).unwrap(),
                scale: TensorMut::new(&mut s, [m, k / g]).unwrap(),
                zero_point: TensorMut::new(&mut z, [m, k / g]).unwrap(),
            },
        )
        .unwrap();
    let desc = QuantizePerGroupDescriptor {
        outer_size: m,
        axis_size: k,
        group_size: g,
        q_min: recipe.q_min,
        q_max: recipe.q_max,
        input_element: T::KIND,
        output_element: Q::KIND,
    };
    let quantize = QuantizePerGroupPlan::<T, Q>::select_with_formula(
        &stream,
        &desc,
        recipe.quantize,
        Default::default(),
    )
    .unwrap();
    let mut q = vec![Q::default(); m * k];
    quantize
        .run(
            &stream,
            Workspace::None,
            QuantizePerGroupArgs {
                input: TensorRef::new(x, [m, k]).unwrap(),
                scale: TensorRef::new(&s, [m, k / g]).unwrap(),
                zero_point: TensorRef::new(&z, [m, k / g]).unwrap(),
                output: TensorMut::new(&mut q, [m, k]).unwrap(),
            },
        )
        .unwrap();
    Out {
        scale: s,
        zero_point: z,
        codes: q,
        offset: Vec::new(),
    }
}

fn bits<T: Element>(v: &[T]) -> Vec<u64> {
    v.iter().map(|x| x.to_f64().to_bits()).collect()
}

fn check_recipe<T: Element, Q: IntElement + IntoI32>(
    shape: (usize, usize, usize),
    recipe: Recipe,
    seed: u64,
) {
    let x: Vec<T> = values(shape.0 * shape.1, seed);
    let a = fused::<T, T, Q>(&x, shape, recipe, 1).unwrap();
    let b = choose_then_quantize::<T, Q>(&x, shape, recipe);
    assert_eq!(bits(&a.scale), bits(&b.scale), "{recipe:?}: scales");
    assert_eq!(a.zero_point, b.zero_point, "{recipe:?}: zero points");
    assert_eq!(a.codes, b.codes, "{recipe:?}: codes");
    assert!(a
        .codes
        .iter()
        .all(|&q| (recipe.q_min..=recipe.q_max).contains(&q.into_i32())));
    // Thread counts, and the sign of zeros, change nothing.
    let c = fused::<T, T, Q>(&x, shape, recipe, 3).unwrap();
    assert_eq!(
        (bits(&a.scale), &a.zero_point, &a.codes),
        (bits(&c.scale), &c.zero_point, &c.codes)
    );
    let flipped: Vec<T> = x
        .iter()
        .map(|&v| {
            if v.to_f64() == 0.0 {
                T::from_f64(-v.to_f64())
            } else {
                v
            }
        })
        .collect();
    let d = fused::<T, T, Q>(&flipped, shape, recipe, 2).unwrap();
    assert_eq!(
        (bits(&a.scale), &a.zero_point, &a.codes),
        (bits(&d.scale), &d.zero_point, &d.codes)
    );
}

trait IntoI32 {
    fn into_i32(self) -> i32;
}
impl IntoI32 for i8 {
    fn into_i32(self) -> i32 {
        self.into()
    }
}
impl IntoI32 for u8 {
    fn into_i32(self) -> i32 {
        self.into()
    }
}

fn check_all_presets<T: Element>(shape: (usize, usize, usize), seed: u64) {
    for recipe in presets(true) {
        check_recipe::<T, i8>(shape, recipe, seed);
    }
    for recipe in presets(false) {
        check_recipe::<T, u8>(shape, recipe, seed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn fused_equals_choose_then_quantize(
        m in 1usize..5,
        groups in 1usize..4,
        g in prop::sample::select(vec![1usize, 3, 8, 32, 128]),
        seed in any::<u64>(),
    ) {
        let shape = (m, groups * g, g);
        check_all_presets::<f32>(shape, seed);
        check_all_presets::<bf16>(shape, seed);
        check_all_presets::<f16>(shape, seed);
    }
}

#[test]
fn large_problems_are_thread_invariant() {
    // 300 × 512: split over the pool's threads.
    check_all_presets::<bf16>((300, 512, 128), 7);
}

#[test]
fn non_finite_input_is_an_error_before_any_write() {
    let (m, k, g) = (3, 64, 32);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut x: Vec<f32> = values(m * k, 3);
        x[2 * k + 40] = bad; // row 2, group 1
        x[2 * k + 50] = bad;
        let err = fused::<f32, f32, i8>(&x, (m, k, g), Recipe::compressed_tensors_w4a16(), 2)
            .err()
            .expect("an error");
        assert_eq!(err, Error::NonFiniteInput { row: 2, group: 1 });
        assert!(err.to_string().contains("row 2, group 1"));

        // Nothing written: run the plan directly on sentinel outputs.
        let stream = Stream::cpu();
        let desc = QuantizeDynamicPerGroupDescriptor {
            outer_size: m,
            axis_size: k,
            group_size: g,
            recipe: Recipe::gptq(false, 4),
            input_element: ElementKind::F32,
            scale_element: ElementKind::F32,
            output_element: ElementKind::U8,
        };
        let plan =
            QuantizeDynamicPerGroupPlan::<f32, f32, u8>::select(&stream, &desc, Default::default())
                .unwrap();
        let (mut s, mut z, mut q) = (vec![7.0f32; m * 2], vec![7i32; m * 2], vec![7u8; m * k]);
        let args = QuantizeDynamicPerGroupArgs {
            input: TensorRef::new(&x, [m, k]).unwrap(),
            scale: TensorMut::new(&mut s, [m, 2]).unwrap(),
            zero_point: TensorMut::new(&mut z, [m, 2]).unwrap(),
            output: TensorMut::new(&mut q, [m, k]).unwrap(),
        };
        assert!(plan.run(&stream, Workspace::None, args).is_err());
        assert!(
            s.iter().all(|&v| v == 7.0) && z.iter().all(|&v| v == 7) && q.iter().all(|&v| v == 7)
        );

        // With the Propagate policy the same input runs.
        let recipe = Recipe::gptq(false, 4).with_non_finite(NonFinitePolicy::Propagate);
        assert!(fused::<f32, f32, u8>(&x, (m, k, g), recipe, 1).is_ok());
    }
}

#[test]
fn the_first_non_finite_group_is_reported_at_every_thread_count() {
    // Large enough for the check pass to run on the pool.
    let (m, k, g) = (600, 256, 32);
    let mut x: Vec<bf16> = values(m * k, 11);
    for &(row, col) in &[(599, 3), (417, 200), (417, 70), (500, 0)] {
        x[row * k + col] = bf16::NAN;
    }
    for threads in 1..=3 {
        let recipe = Recipe::torchao(TorchaoMapping::Symmetric, -8, 7);
        let e = fused::<bf16, bf16, i8>(&x, (m, k, g), recipe, threads)
            .err()
            .expect("an error");
        assert_eq!(
            e,
            Error::NonFiniteInput { row: 417, group: 2 },
            "{threads} threads"
        );
    }
}

#[test]
fn recipe_plans_validate() {
    let stream = Stream::cpu();
    let mut desc = QuantizeDynamicPerGroupDescriptor {
        outer_size: 2,
        axis_size: 64,
        group_size: 32,
        recipe: Recipe::gptq(false, 4),
        input_element: ElementKind::F32,
        scale_element: ElementKind::F32,
        output_element: ElementKind::S8,
    };
    // GPTQ's 0..15 fits i8, but 8-bit GPTQ (0..255) does not.
    assert!(QuantizeDynamicPerGroupPlan::<f32, f32, i8>::select(
        &stream,
        &desc,
        Default::default()
    )
    .is_ok());
    desc.recipe = Recipe::gptq(false, 8);
    let e = QuantizeDynamicPerGroupPlan::<f32, f32, i8>::select(&stream, &desc, Default::default())
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidProblem(_)) && e.to_string().contains("[0, 255]"),
        "{e}"
    );
    desc.output_element = ElementKind::U8;
    desc.recipe.q_max = desc.recipe.q_min;
    let e = QuantizeDynamicPerGroupPlan::<f32, f32, u8>::select(&stream, &desc, Default::default())
        .unwrap_err();
    assert!(e.to_string().contains("must be greater than q_min"), "{e}");
    desc.recipe = Recipe::gptq(false, 4);
    desc.scale_element = ElementKind::Bf16;
    let e = QuantizeDynamicPerGroupPlan::<f32, f32, u8>::select(&stream, &desc, Default::default())
        .unwrap_err();
    assert!(
        matches!(e, Error::Unsupported(_)) && e.to_string().contains("scale_element"),
        "{e}"
    );
    desc.scale_element = ElementKind::F32;
    desc.group_size = 48;
    let e = QuantizeDynamicPerGroupPlan::<f32, f32, u8>::select(&stream, &desc, Default::default())
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("axis_size 64 is not a multiple of group_size 48"),
        "{e}"
    );
    desc.group_size = 32;
    let pref = PlanPreference {
        prefer_backend: Some(BackendKind::Avx2),
        ..Default::default()
    };
    // A preferred vector backend is used where the CPU has it.
    match QuantizeDynamicPerGroupPlan::<f32, f32, u8>::select(&stream, &desc, pref) {
        Ok(plan) => assert_eq!(plan.sku().backend, BackendKind::Avx2),
        Err(e) => assert!(
            matches!(e, Error::Unsupported(_)) && e.to_string().contains("not available"),
            "{e}"
        ),
    }

    // Views: a short scale buffer and a wrong shape.
    let plan =
        QuantizeDynamicPerGroupPlan::<f32, f32, u8>::select(&stream, &desc, Default::default())
            .unwrap();
    let x = vec![0.5f32; 128];
    let (mut s, mut z, mut q) = (vec![0f32; 3], vec![0i32; 4], vec![0u8; 128]);
    let args = QuantizeDynamicPerGroupArgs {
        input: TensorRef::new(&x, [2, 64]).unwrap(),
        scale: TensorMut {
            data: &mut s,
            shape: [2, 2],
            stride: [2, 1],
        },
        zero_point: TensorMut::new(&mut z, [2, 2]).unwrap(),
        output: TensorMut::new(&mut q, [2, 64]).unwrap(),
    };
    assert_eq!(
        plan.run(&stream, Workspace::None, args).unwrap_err(),
        Error::BufferTooSmall { needed: 4, got: 3 }
    );
    let mut s = vec![0f32; 4];
    let args = QuantizeDynamicPerGroupArgs {
        input: TensorRef::new(&x, [2, 64]).unwrap(),
        scale: TensorMut::new(&mut s, [4, 1]).unwrap(),
        zero_point: TensorMut::new(&mut z, [2, 2]).unwrap(),
        output: TensorMut::new(&mut q, [2, 64]).unwrap(),
    };
    let e = plan.run(&stream, Workspace::None, args).unwrap_err();
    assert!(e.to_string().contains("scale shape [4, 1]"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn codecs_round_trip(
        n8 in 1usize..5,
        k8 in 1usize..5,
        groups in 1usize..4,
        bits in prop::sample::select(vec![2u32, 4, 8]),
        seed in any::<u64>(),
    ) {
        let pf = 32 / bits as usize;
        let (n, k) = (n8 * pf, k8 * pf);
        let max = (1u64 << bits) - 1;
        let mut state = seed | 1;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % (max + 1)
        };
        let codes: Vec<u8> = (0..n * k).map(|_| next() as u8).collect();
        let zeros: Vec<i32> = (0..n * groups).map(|_| next() as i32).collect();
        let w = pack::gptq_qweight(&codes, n, k, bits).unwrap();
        prop_assert_eq!(w.len(), n * k * bits as usize / 32);
        prop_assert_eq!(pack::gptq_qweight_unpack(&w, n, k, bits).unwrap(), codes.clone());
        for enc in [GptqZeros::V2, GptqZeros::V1, GptqZeros::V1WholeWord] {
            // Odd n too: the last word is partial.
            for n in [n, n - 1] {
                if n == 0 { continue; }
                let z = &zeros[..n * groups];
                let p = pack::gptq_qzeros(z, n, groups, bits, enc).unwrap();
                prop_assert_eq!(pack::gptq_qzeros_unpack(&p, n, groups, bits, enc).unwrap(), z.to_vec());
            }
        }
        let w = pack::awq_qweight(&codes, n, k, bits).unwrap();
        prop_assert_eq!(pack::awq_qweight_unpack(&w, n, k, bits).unwrap(), codes.clone());
        let p = pack::awq_qzeros(&zeros, n, groups, bits).unwrap();
        prop_assert_eq!(pack::awq_qzeros_unpack(&p, n, groups, bits).unwrap(), zeros.clone());
        let half = 1i32 << (bits - 1);
        let signed: Vec<i8> = codes.iter().map(|&c| (i32::from(c) - half) as i8).collect();
        let w = pack::compressed_tensors_weight(&signed, n, k, bits).unwrap();
        prop_assert_eq!(pack::compressed_tensors_weight_unpack(&w, n, k, bits).unwrap(), signed);
        let signed_z: Vec<i32> = zeros.iter().map(|&z| z - half).collect();
        for n in [n, n - 1] {
            if n == 0 { continue; }
            let z = &signed_z[..n * groups];
            let p = pack::compressed_tensors_zero_point(z, n, groups, bits).unwrap();
            prop_assert_eq!(p.len(), n.div_ceil(pf) * groups);
            prop_assert_eq!(pack::compressed_tensors_zero_point_unpack(&p, n, groups, bits).unwrap(), z.to_vec());
        }
        for (kind, lo, span) in [
            (pack::GgufBlock::Q8_0, -128i32, 256u64),
            (pack::GgufBlock::Q4_0, 0, 16),
            (pack::GgufBlock::Q4_1, 0, 16),
            (pack::GgufBlock::Q5_0, 0, 32),
            (pack::GgufBlock::Q5_1, 0, 32),
        ] {
            let blocks = n8 * k8;
            let q: Vec<i32> = (0..blocks * 32).map(|_| lo + ((next() * 7919) % span) as i32).collect();
            let d: Vec<u16> = (0..blocks).map(|i| (seed as u16).wrapping_add(i as u16)).collect();
            let m = matches!(kind, pack::GgufBlock::Q4_1 | pack::GgufBlock::Q5_1).then(|| d.iter().map(|v| v ^ 0x5555).collect::<Vec<u16>>());
            let b = pack::gguf_blocks(kind, &q, &d, m.as_deref()).unwrap();
            prop_assert_eq!(b.len(), blocks * kind.bytes());
            prop_assert_eq!(pack::gguf_blocks_unpack(kind, &b).unwrap(), (q, d, m));
        }
        if bits == 4 {
            let signed: Vec<i32> = codes.iter().map(|&c| i32::from(c) - 8).collect();
            for len in [signed.len(), signed.len() - 1] {
                let b = pack::nibbles(&signed[..len]).unwrap();
                prop_assert_eq!(b.len(), len.div_ceil(2));
                prop_assert_eq!(pack::nibbles_unpack(&b, len, true), signed[..len].to_vec());
            }
        }
    }
}

/// Values with every special a group can hold: NaN, ±inf, ±0, subnormals,
/// ties, the dtype's extremes, and groups of one repeated value.
fn special_values<T: Element>(n: usize, seed: u64) -> Vec<T> {
    let base: Vec<T> = values(n, seed);
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let max = match T::KIND {
        ElementKind::F16 => 65504.0,
        ElementKind::Bf16 => 3.389_531_389_251_535_5e38,
        _ => f64::from(f32::MAX),
    };
    let tiny = match T::KIND {
        ElementKind::F16 => 2f64.powi(-24),
        ElementKind::Bf16 => 2f64.powi(-133),
        _ => 2f64.powi(-149),
    };
    let constant = seed.is_multiple_of(5);
    base.into_iter()
        .enumerate()
        .map(|(i, v)| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if constant {
                return T::from_f64(0.75);
            }
            match state % 97 {
                0 => T::from_f64(f64::NAN),
                1 => T::from_f64(f64::INFINITY),
                2 => T::from_f64(f64::NEG_INFINITY),
                3 => T::from_f64(max),
                4 => T::from_f64(-max),
                5 | 6 => T::from_f64(tiny * (i % 7) as f64),
                7 => T::from_f64(-tiny),
                8..=11 => T::from_f64((i % 9) as f64 * 0.5 - 2.0),
                _ => v,
            }
        })
        .collect()
}

/// Runs the fused and the choose plan pinned to `backend`; `None` when the
/// CPU lacks it.
#[allow(clippy::type_complexity)]
fn on_backend<T: Element, S: Element, Q: IntElement>(
    x: &[T],
    (m, k, g): (usize, usize, usize),
    recipe: Recipe,
    backend: BackendKind,
    threads: usize,
) -> Option<(
    Vec<u64>,
    Vec<i32>,
    Vec<Q>,
    Vec<u64>,
    Vec<i32>,
    Vec<u64>,
    Vec<u64>,
)> {
    let pref = PlanPreference {
        prefer_backend: Some(backend),
        ..Default::default()
    };
    // Only a backend this CPU lacks may be refused; any other error fails.
    let fused = match fused_on::<T, S, Q>(x, (m, k, g), recipe, threads, pref) {
        Ok(out) => out,
        Err(Error::Unsupported(_)) => return None,
        Err(e) => panic!("{backend:?}: {e}"),
    };
    let stream = Stream::cpu_with_threads(threads).unwrap();
    let ng = m * k / g;
    let choose = ChooseQParamsPerGroupPlan::<T, S>::select(
        &stream,
        &ChooseQParamsPerGroupDescriptor {
            outer_size: m,
            axis_size: k,
            group_size: g,
            recipe,
            input_element: T::KIND,
            scale_element: S::KIND,
        },
        pref,
    )
    .ok()?;
    let (mut s2, mut z2, mut m2) = (
        vec![S::from_f64(0.0); ng],
        vec![0i32; ng],
        vec![S::from_f64(0.0); ng],
    );
    let args = ChooseQParamsPerGroupArgs {
        input: TensorRef::new(x, [m, k]).unwrap(),
        scale: TensorMut::new(&mut s2, [m, k / g]).unwrap(),
        zero_point: TensorMut::new(&mut z2, [m, k / g]).unwrap(),
    };
    if recipe.zero_point == ZeroPointRule::FloatOffset {
        let offset = TensorMut::new(&mut m2, [m, k / g]).unwrap();
        choose.run_with_offset(&stream, Workspace::None, args, offset)
    } else {
        m2.clear();
        choose.run(&stream, Workspace::None, args)
    }
    .unwrap();
    Some((
        bits(&fused.scale),
        fused.zero_point,
        fused.codes,
        bits(&s2),
        z2,
        bits(&fused.offset),
        bits(&m2),
    ))
}

const VECTOR_BACKENDS: [BackendKind; 3] =
    [BackendKind::Sse41, BackendKind::Avx2, BackendKind::Avx512];

/// Every vector backend this CPU has equals the scalar engine, bit for bit,
/// for one recipe and dtype triple; the scalar engine is the oracle.
fn vector_equals_scalar<T: Element, S: Element, Q: IntElement>(
    shape: (usize, usize, usize),
    recipe: Recipe,
    seed: u64,
) {
    let recipe = Recipe {
        non_finite: NonFinitePolicy::Propagate,
        ..recipe
    };
    let x: Vec<T> = special_values(shape.0 * shape.1, seed);
    let want = on_backend::<T, S, Q>(&x, shape, recipe, BackendKind::Scalar, 1).unwrap();
    for backend in VECTOR_BACKENDS {
        for threads in [1, 3] {
            if let Some(got) = on_backend::<T, S, Q>(&x, shape, recipe, backend, threads) {
                let what = format!(
                    "{backend:?} {threads} threads {}→{}/{} {recipe:?}",
                    T::KIND,
                    S::KIND,
                    Q::KIND
                );
                assert_eq!(got.0, want.0, "scales: {what}");
                assert_eq!(got.1, want.1, "zero points: {what}");
                assert!(got.2 == want.2, "codes: {what}");
                assert_eq!(got.3, want.3, "choose scales: {what}");
                assert_eq!(got.4, want.4, "choose zero points: {what}");
                assert_eq!(got.5, want.5, "offsets: {what}");
                assert_eq!(got.6, want.6, "choose offsets: {what}");
            }
        }
    }
}

fn vector_all_presets<T: Element>(shape: (usize, usize, usize), seed: u64) {
    for recipe in presets(true) {
        vector_equals_scalar::<T, T, i8>(shape, recipe, seed);
        vector_equals_scalar::<T, f32, i8>(shape, recipe, seed);
        vector_equals_scalar::<T, f16, i8>(shape, recipe, seed);
        if shape.2.is_multiple_of(2) && recipe.q_min >= -8 && recipe.q_max <= 7 {
            vector_equals_scalar::<T, T, S4>(shape, recipe, seed);
        }
    }
    for recipe in presets(false) {
        vector_equals_scalar::<T, T, u8>(shape, recipe, seed);
        vector_equals_scalar::<T, f32, u8>(shape, recipe, seed);
        vector_equals_scalar::<T, bf16, u8>(shape, recipe, seed);
        if shape.2.is_multiple_of(2) && recipe.q_min >= 0 && recipe.q_max <= 15 {
            vector_equals_scalar::<T, f16, U4>(shape, recipe, seed);
        }
    }
    // ggml's other recipes: float offsets, and the fused reciprocal-add.
    for recipe in [
        Recipe::gguf_q4_1(),
        Recipe::gguf_q5_1(),
        Recipe::gguf_q5_0(),
        Recipe::gguf_q4_1().fused(),
        Recipe::gguf_q8_0().fused(),
    ] {
        if recipe.q_min >= 0 {
            vector_equals_scalar::<T, f16, u8>(shape, recipe, seed);
            vector_equals_scalar::<T, f32, u8>(shape, recipe, seed);
            if shape.2.is_multiple_of(2) && recipe.q_max <= 15 {
                vector_equals_scalar::<T, f16, U4>(shape, recipe, seed);
            }
        } else {
            vector_equals_scalar::<T, f16, i8>(shape, recipe, seed);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn vector_backends_equal_the_scalar_engine(
        m in 1usize..4,
        groups in 1usize..4,
        g in prop::sample::select(vec![1usize, 3, 8, 17, 32, 64, 128]),
        seed in any::<u64>(),
    ) {
        let shape = (m, groups * g, g);
        vector_all_presets::<f32>(shape, seed);
        vector_all_presets::<bf16>(shape, seed);
        vector_all_presets::<f16>(shape, seed);
    }
}

/// Large enough to split over threads, with every backend.
#[test]
fn vector_backends_on_large_problems() {
    for seed in [1u64, 7] {
        vector_equals_scalar::<bf16, bf16, i8>(
            (96, 1024, 128),
            Recipe::compressed_tensors_w4a16(),
            seed,
        );
        vector_equals_scalar::<bf16, f32, u8>((96, 1024, 128), Recipe::gptq(false, 4), seed);
        vector_equals_scalar::<f32, f16, u8>((64, 2048, 64), Recipe::awq_f16(true, 4), seed);
        vector_equals_scalar::<f16, f16, i8>(
            (64, 1024, 32),
            Recipe::torchao(TorchaoMapping::Symmetric, -8, 7),
            seed,
        );
        vector_equals_scalar::<f32, f16, U4>((96, 1024, 32), Recipe::gguf_q4_1(), seed);
        // Groups longer than the kernels' load buffer are loaded in chunks.
        vector_equals_scalar::<bf16, bf16, S4>(
            (4, 6144, 3072),
            Recipe::compressed_tensors_w4a16(),
            seed,
        );
        vector_equals_scalar::<f32, f32, u8>((4, 4100, 2050), Recipe::gguf_q4_0(), seed);
    }
}

/// `QuantizePerGroupPlan` with formula `formula` pinned to `backend`;
/// `None` when the CPU lacks it.
fn formula_on<T: Element, Q: IntElement>(
    (x, s, z): (&[T], &[T], &[i32]),
    (m, k, g): (usize, usize, usize),
    (formula, q_min, q_max): (groupq::recipe::QuantizeFormula, i32, i32),
    backend: BackendKind,
    threads: usize,
) -> Option<Vec<Q>> {
    let stream = Stream::cpu_with_threads(threads).unwrap();
    let desc = QuantizePerGroupDescriptor {
        outer_size: m,
        axis_size: k,
        group_size: g,
        q_min,
        q_max,
        input_element: T::KIND,
        output_element: Q::KIND,
    };
    let pref = PlanPreference {
        prefer_backend: Some(backend),
        ..Default::default()
    };
    let plan =
        match QuantizePerGroupPlan::<T, Q>::select_with_formula(&stream, &desc, formula, pref) {
            Ok(p) => p,
            Err(Error::Unsupported(_)) => return None,
            Err(e) => panic!("{backend:?}: {e}"),
        };
    let mut q = vec![Q::default(); m * k / Q::PACK];
    let args = QuantizePerGroupArgs {
        input: TensorRef::new(x, [m, k]).unwrap(),
        scale: TensorRef::new(s, [m, k / g]).unwrap(),
        zero_point: TensorRef::new(z, [m, k / g]).unwrap(),
        output: TensorMut::new(&mut q, [m, k / Q::PACK]).unwrap(),
    };
    plan.run(&stream, Workspace::None, args).unwrap();
    Some(q)
}

/// Caller-given scales and zero points as they come: ordinary, zero,
/// negative, tiny, huge, NaN and infinite scales; zero points inside and far
/// outside the code range.
fn given_params<T: Element>(n: usize, seed: u64, (q_min, q_max): (i32, i32)) -> (Vec<T>, Vec<i32>) {
    let mut state = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| {
            let r = next();
            let s = match r % 16 {
                0 => 0.0,
                1 => -0.05,
                2 => 1e-30,
                3 => 3e30,
                4 => f64::NAN,
                5 => f64::INFINITY,
                6 => 0.02,
                _ => ((r >> 8) % 1000 + 1) as f64 / 997.0,
            };
            let z = match (r >> 20) % 8 {
                0 => 1 << 23,
                1 => -5000,
                _ => q_min + ((r >> 24) % (q_max - q_min + 1) as u64) as i32,
            };
            (T::from_f64(s), z)
        })
        .unzip()
}

/// Every vector backend this CPU has equals the scalar engine for one
/// formula on caller-given parameters, one code per byte and packed.
fn formula_equals_scalar<T: Element, Q: IntElement>(
    shape: (usize, usize, usize),
    formula: (groupq::recipe::QuantizeFormula, i32, i32),
    seed: u64,
) {
    let x: Vec<T> = special_values(shape.0 * shape.1, seed);
    let (s, z) = given_params::<T>(shape.0 * shape.1 / shape.2, seed, (formula.1, formula.2));
    let inputs = (&x[..], &s[..], &z[..]);
    let want = formula_on::<T, Q>(inputs, shape, formula, BackendKind::Scalar, 1).unwrap();
    for backend in VECTOR_BACKENDS {
        for threads in [1, 3] {
            if let Some(got) = formula_on::<T, Q>(inputs, shape, formula, backend, threads) {
                let what = format!(
                    "{backend:?} {threads} threads {}→{} {formula:?}",
                    T::KIND,
                    Q::KIND
                );
                assert!(got == want, "codes: {what}");
            }
        }
    }
}

fn formulas_all<T: Element>(shape: (usize, usize, usize), seed: u64) {
    let spec = groupq::recipe::QuantizeFormula::SPEC;
    let mut signed = vec![(spec, -128, 127), (spec, -8, 7)];
    let mut unsigned = vec![(spec, 0, 255), (spec, 0, 15)];
    for r in presets(true) {
        signed.push((r.quantize, r.q_min, r.q_max));
    }
    for r in presets(false).into_iter().chain([Recipe::gguf_q4_1()]) {
        unsigned.push((r.quantize, r.q_min, r.q_max));
    }
    let even = shape.2.is_multiple_of(2);
    for f in signed {
        formula_equals_scalar::<T, i8>(shape, f, seed);
        if even && f.1 >= -8 && f.2 <= 7 {
            formula_equals_scalar::<T, S4>(shape, f, seed);
        }
    }
    for f in unsigned {
        formula_equals_scalar::<T, u8>(shape, f, seed);
        if even && f.2 <= 15 {
            formula_equals_scalar::<T, U4>(shape, f, seed);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// `select_with_formula` (and SPEC §3.1 with packed codes) on the vector
    /// backends equals the scalar engine bit for bit.
    #[test]
    fn formula_backends_equal_the_scalar_engine(
        m in 1usize..4,
        groups in 1usize..4,
        g in prop::sample::select(vec![1usize, 2, 8, 17, 32, 128]),
        seed in any::<u64>(),
    ) {
        let shape = (m, groups * g, g);
        formulas_all::<f32>(shape, seed);
        formulas_all::<bf16>(shape, seed);
        formulas_all::<f16>(shape, seed);
    }
}

#[test]
fn formula_backends_on_large_problems() {
    let spec = groupq::recipe::QuantizeFormula::SPEC;
    let ct = Recipe::compressed_tensors_w4a16();
    formula_equals_scalar::<bf16, S4>((96, 1024, 128), (spec, -8, 7), 3);
    formula_equals_scalar::<bf16, i8>((96, 1024, 128), (ct.quantize, -8, 7), 3);
    // Groups longer than the load buffer.
    formula_equals_scalar::<f32, U4>((4, 6144, 3072), (Recipe::gguf_q4_0().quantize, 0, 15), 5);
}

/// Codes of `x` (a group of 16 copies) with scale `s`, zero point 0, codes
/// 0..=255, by `select_with_formula`'s plan for a bf16/f16-arithmetic
/// division on backend `b` (`None`: the default choice).
fn divide_codes<T: Element>(x: T, s: T, b: Option<BackendKind>) -> u8 {
    use groupq::recipe::{Arithmetic, QuantizeFormula, Rounding, ScaleApplication, ZeroPointStage};
    let formula = QuantizeFormula {
        scale_application: ScaleApplication::Divide,
        zero_point_stage: ZeroPointStage::BeforeRounding,
        rounding: Rounding::TiesEven,
        arithmetic: Arithmetic::Input,
    };
    let stream = Stream::cpu_with_threads(1).unwrap();
    let desc = QuantizePerGroupDescriptor {
        outer_size: 1,
        axis_size: 16,
        group_size: 16,
        q_min: 0,
        q_max: 255,
        input_element: T::KIND,
        output_element: ElementKind::U8,
    };
    let pref = PlanPreference {
        prefer_backend: b,
        ..Default::default()
    };
    let plan =
        QuantizePerGroupPlan::<T, u8>::select_with_formula(&stream, &desc, formula, pref).unwrap();
    let (xs, mut q) = ([x; 16], [0u8; 16]);
    plan.run(
        &stream,
        Workspace::None,
        QuantizePerGroupArgs {
            input: TensorRef::new(&xs, [1, 16]).unwrap(),
            scale: TensorRef::new(&[s], [1, 1]).unwrap(),
            zero_point: TensorRef::new(&[0], [1, 1]).unwrap(),
            output: TensorMut::new(&mut q, [1, 16]).unwrap(),
        },
    )
    .unwrap();
    assert!(q.iter().all(|&c| c == q[0]), "{q:?}");
    q[0]
}

/// A division in bf16/f16 arithmetic computed by the vector kernels' FMA
/// correction must start from the f32 reciprocal: from the reciprocal
/// rounded to bf16/f16 the corrected quotient was an ulp off for these
/// pairs (found by sweeping all bf16 and f16 pairs), and with it the code
/// (f16 0.5 / 0.99951 = 0.50049 is code 1, not 0).
#[test]
fn fma_division_matches_the_divider_where_it_once_did_not() {
    // (x, s, code): the code is round-half-even of the correctly rounded
    // quotient in the dtype (`x / s` in f64 rounds once to f32 and once to
    // the dtype; both roundings are innocuous for a quotient).
    let bf = [
        (0x13d3u16, 0x0ffdu16, 214u8),
        (0x13d3, 0x107d, 107),
        (0x1562, 0x117b, 231),
        (0x1562, 0x11fb, 116),
    ];
    let hf = [
        (0x3800u16, 0x3bffu16, 1u8),
        (0x2633, 0x06a7, 239),
        (0x3b9c, 0x1ba7, 255),
        (0x4233, 0x22a7, 239),
    ];
    for (x, s, code) in bf {
        let (x, s) = (bf16::from_bits(x), bf16::from_bits(s));
        let q = bf16::from_f64(x.to_f64() / s.to_f64())
            .to_f64()
            .round_ties_even();
        assert_eq!(q, f64::from(code), "{x} / {s}");
        assert_eq!(divide_codes(x, s, None), code, "{x} / {s}");
        assert_eq!(
            divide_codes(x, s, Some(BackendKind::Scalar)),
            code,
            "{x} / {s}"
        );
    }
    for (x, s, code) in hf {
        let (x, s) = (f16::from_bits(x), f16::from_bits(s));
        let q = f16::from_f64(x.to_f64() / s.to_f64())
            .to_f64()
            .round_ties_even();
        assert_eq!(q.min(255.0), f64::from(code), "{x} / {s}");
        assert_eq!(divide_codes(x, s, None), code, "{x} / {s}");
        assert_eq!(
            divide_codes(x, s, Some(BackendKind::Scalar)),
            code,
            "{x} / {s}"
        );
    }
}
