//! Packed 4-bit codes (`S4`, `U4`): every plan that writes or reads codes
//! gives exactly the byte-per-code result, packed two per byte with the
//! even index in the low nibble.

use groupq::half::{bf16, f16};
use groupq::pack;
use groupq::recipe::Recipe;
use groupq::*;
use proptest::prelude::*;

fn data(n: usize, seed: u64) -> Vec<bf16> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            bf16::from_f64(((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 3.0)
        })
        .collect()
}

fn quantize<Q: IntElement + Default>(
    x: &[bf16],
    s: &[bf16],
    z: &[i32],
    (m, k, g): (usize, usize, usize),
    range: (i32, i32),
    threads: usize,
) -> Vec<Q> {
    let stream = Stream::cpu_with_threads(threads).unwrap();
    let desc = QuantizePerGroupDescriptor {
        outer_size: m,
        axis_size: k,
        group_size: g,
        q_min: range.0,
        q_max: range.1,
        input_element: ElementKind::Bf16,
        output_element: Q::KIND,
    };
    let plan = QuantizePerGroupPlan::<bf16, Q>::select(&stream, &desc, Default::default()).unwrap();
    let mut q = vec![Q::default(); m * k / Q::PACK];
    let args = QuantizePerGroupArgs {
        input: TensorRef::new(x, [m, k]).unwrap(),
        scale: TensorRef::new(s, [m, k / g]).unwrap(),
        zero_point: TensorRef::new(z, [m, k / g]).unwrap(),
        output: TensorMut::new(&mut q, [m, k / Q::PACK]).unwrap(),
    };
    plan.run(&stream, Workspace::None, args).unwrap();
    q
}

fn dequantize<Q: IntElement>(
    q: &[Q],
    s: &[bf16],
    z: &[i32],
    (m, k, g): (usize, usize, usize),
) -> Vec<u16> {
    let stream = Stream::cpu_with_threads(2).unwrap();
    let desc = DequantizePerGroupDescriptor {
        outer_size: m,
        axis_size: k,
        group_size: g,
        input_element: Q::KIND,
        output_element: ElementKind::Bf16,
    };
    let plan =
        DequantizePerGroupPlan::<Q, bf16>::select(&stream, &desc, Default::default()).unwrap();
    let mut y = vec![bf16::ZERO; m * k];
    let args = DequantizePerGroupArgs {
        input: TensorRef::new(q, [m, k / Q::PACK]).unwrap(),
        scale: TensorRef::new(s, [m, k / g]).unwrap(),
        zero_point: TensorRef::new(z, [m, k / g]).unwrap(),
        output: TensorMut::new(&mut y, [m, k]).unwrap(),
    };
    plan.run(&stream, Workspace::None, args).unwrap();
    y.iter().map(|v| v.to_bits()).collect()
}

fn packed_bytes<Q: Copy>(q: &[Q], byte: impl Fn(Q) -> u8) -> Vec<u8> {
    q.iter().map(|&b| byte(b)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn s4_and_u4_equal_packed_bytes(
        m in 1usize..40,
        groups in 1usize..5,
        g in prop::sample::select(vec![2usize, 8, 32, 128]),
        seed in any::<u64>(),
        threads in 1usize..4,
    ) {
        let shape = (m, groups * g, g);
        let mut x = data(m * groups * g, seed);
        let s: Vec<bf16> = data(m * groups, seed ^ 9).iter().map(|v| bf16::from_f32(v.to_f32().abs() / 4.0)).collect();
        // Every seventh group has an extreme zero point and values whose
        // `x / s` cancels it: a zero point beyond 2^24 is added as M(z),
        // rounded to f32 first (SPEC §3.1), on the packed path as well.
        let extremes = [i32::MIN, i32::MAX, (1 << 24) + 1, -(1 << 24) - 3, 1 << 30];
        let z: Vec<i32> = (0..m * groups)
            .map(|i| if i % 7 == 3 { extremes[(i / 7) % 5] } else { (i % 5) as i32 - 2 })
            .collect();
        for (i, xs) in x.chunks_mut(g).enumerate().filter(|(i, _)| i % 7 == 3) {
            let sv = f64::from(s[i].to_f32());
            for (j, v) in xs.iter_mut().enumerate() {
                *v = bf16::from_f64(((j % 16) as f64 - 8.0 - f64::from(z[i])) * sv);
            }
        }

        let wide = quantize::<i8>(&x, &s, &z, shape, (-8, 7), threads);
        let packed = quantize::<S4>(&x, &s, &z, shape, (-8, 7), threads);
        let wide32: Vec<i32> = wide.iter().map(|&c| c.into()).collect();
        prop_assert_eq!(packed_bytes(&packed, |b| b.0), pack::nibbles(&wide32).unwrap());
        prop_assert_eq!(dequantize(&packed, &s, &z, shape), dequantize(&wide, &s, &z, shape));

        let zu: Vec<i32> = z.iter().map(|&v| v.saturating_add(8)).collect();
        let wide = quantize::<u8>(&x, &s, &zu, shape, (0, 15), threads);
        let packed = quantize::<U4>(&x, &s, &zu, shape, (0, 15), threads);
        let wide32: Vec<i32> = wide.iter().map(|&c| c.into()).collect();
        prop_assert_eq!(packed_bytes(&packed, |b| b.0), pack::nibbles(&wide32).unwrap());
        prop_assert_eq!(dequantize(&packed, &s, &zu, shape), dequantize(&wide, &s, &zu, shape));
    }
}

#[test]
fn dynamic_plans_write_packed_codes() {
    let (m, k, g) = (64, 256, 128);
    let x = data(m * k, 5);
    let stream = Stream::cpu();
    let run = |recipe: Recipe| {
        let desc = QuantizeDynamicPerGroupDescriptor {
            outer_size: m,
            axis_size: k,
            group_size: g,
            recipe,
            input_element: ElementKind::Bf16,
            scale_element: ElementKind::F32,
            output_element: ElementKind::U4,
        };
        let plan = QuantizeDynamicPerGroupPlan::<bf16, f32, U4>::select(
            &stream,
            &desc,
            Default::default(),
        )
        .unwrap();
        let (mut s, mut z, mut q) = (vec![0f32; m * 2], vec![0i32; m * 2], vec![U4(0); m * k / 2]);
        let args = QuantizeDynamicPerGroupArgs {
            input: TensorRef::new(&x, [m, k]).unwrap(),
            scale: TensorMut::new(&mut s, [m, 2]).unwrap(),
            zero_point: TensorMut::new(&mut z, [m, 2]).unwrap(),
            output: TensorMut::new(&mut q, [m, k / 2]).unwrap(),
        };
        plan.run(&stream, Workspace::None, args).unwrap();
        q.iter().map(|b| b.0).collect::<Vec<u8>>()
    };
    let packed = run(Recipe::gptq(false, 4));
    let desc = QuantizeDynamicPerGroupDescriptor {
        outer_size: m,
        axis_size: k,
        group_size: g,
        recipe: Recipe::gptq(false, 4),
        input_element: ElementKind::Bf16,
        scale_element: ElementKind::F32,
        output_element: ElementKind::U8,
    };
    let plan =
        QuantizeDynamicPerGroupPlan::<bf16, f32, u8>::select(&stream, &desc, Default::default())
            .unwrap();
    let (mut s, mut z, mut q) = (vec![0f32; m * 2], vec![0i32; m * 2], vec![0u8; m * k]);
    let args = QuantizeDynamicPerGroupArgs {
        input: TensorRef::new(&x, [m, k]).unwrap(),
        scale: TensorMut::new(&mut s, [m, 2]).unwrap(),
        zero_point: TensorMut::new(&mut z, [m, 2]).unwrap(),
        output: TensorMut::new(&mut q, [m, k]).unwrap(),
    };
    plan.run(&stream, Workspace::None, args).unwrap();
    let wide: Vec<i32> = q.iter().map(|&c| c.into()).collect();
    assert_eq!(packed, pack::nibbles(&wide).unwrap());
}

#[test]
fn packed_codes_need_even_groups() {
    let stream = Stream::cpu();
    let mut desc = QuantizePerGroupDescriptor {
        outer_size: 2,
        axis_size: 6,
        group_size: 3,
        q_min: -8,
        q_max: 7,
        input_element: ElementKind::F32,
        output_element: ElementKind::S4,
    };
    let e =
        QuantizePerGroupPlan::<f32, S4>::select(&stream, &desc, Default::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("group_size 3 must be a multiple of 2 for s4"),
        "{e}"
    );
    desc.group_size = 2;
    desc.q_max = 8;
    assert!(QuantizePerGroupPlan::<f32, S4>::select(&stream, &desc, Default::default()).is_err());
    desc.q_max = 7;
    let plan = QuantizePerGroupPlan::<f32, S4>::select(&stream, &desc, Default::default()).unwrap();
    assert_eq!(plan.sku().aux_element, Some(ElementKind::S4));
    // Packed codes run on the recipe engine's vector kernels where the CPU
    // has a vector backend (tests/recipes.rs checks them against the
    // scalar engine).
    let scalar = PlanPreference {
        prefer_backend: Some(BackendKind::Scalar),
        ..Default::default()
    };
    assert!(QuantizePerGroupPlan::<f32, S4>::select(&stream, &desc, scalar).is_ok());
    // The code tensor is [outer, axis / 2] bytes.
    let x = [0.0f32; 12];
    let (s, z) = ([1.0f32; 6], [0i32; 6]);
    let mut q = [S4(0xff); 12];
    let args = QuantizePerGroupArgs {
        input: TensorRef::new(&x, [2, 6]).unwrap(),
        scale: TensorRef::new(&s, [2, 3]).unwrap(),
        zero_point: TensorRef::new(&z, [2, 3]).unwrap(),
        output: TensorMut::new(&mut q, [2, 6]).unwrap(),
    };
    let e = plan.run(&stream, Workspace::None, args).unwrap_err();
    assert!(
        e.to_string()
            .contains("output shape [2, 6] does not match the descriptor's [2, 3]"),
        "{e}"
    );
}

/// `len` random 4-bit codes (`len` even).
fn random_codes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 60) as u8
        })
        .collect()
}

/// 4-bit codes packed two per byte, as `U4` and as `S4` (the same nibbles),
/// and the signed codes those `S4` bytes hold.
fn packed_forms(codes: &[u8]) -> (Vec<U4>, Vec<S4>, Vec<i8>) {
    let wide: Vec<i32> = codes.iter().map(|&c| c.into()).collect();
    let bytes = pack::nibbles(&wide).unwrap();
    (
        bytes.iter().map(|&b| U4(b)).collect(),
        bytes.iter().map(|&b| S4(b)).collect(),
        codes.iter().map(|&c| ((c as i8) << 4) >> 4).collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The packers of S4/U4 tensors give the words of the byte-per-code
    /// packers (which the golden files check), for any codes and shapes,
    /// rows beyond one transposition block included.
    #[test]
    fn checkpoint_layouts_from_packed_codes(
        n8 in 1usize..40,
        k8 in 1usize..10,
        seed in any::<u64>(),
    ) {
        let (n, k) = (n8 * 8, k8 * 8);
        let codes = random_codes(n * k, seed);
        let (u4, s4, signed) = packed_forms(&codes);
        prop_assert_eq!(
            pack::gptq_qweight_u4(&u4, n, k).unwrap(),
            pack::gptq_qweight(&codes, n, k, 4).unwrap()
        );
        prop_assert_eq!(
            pack::awq_qweight_u4(&u4, n, k).unwrap(),
            pack::awq_qweight(&codes, n, k, 4).unwrap()
        );
        prop_assert_eq!(
            pack::compressed_tensors_weight_s4(&s4, n, k).unwrap(),
            pack::compressed_tensors_weight(&signed, n, k, 4).unwrap()
        );
        // AWQ needs only an even k.
        let k2 = k - 2;
        let rows: Vec<u8> = codes.chunks(k).flat_map(|r| r[..k2].to_vec()).collect();
        let (u4, _, _) = packed_forms(&rows);
        prop_assert_eq!(
            pack::awq_qweight_u4(&u4, n, k2).unwrap(),
            pack::awq_qweight(&rows, n, k2, 4).unwrap()
        );
    }
}

#[test]
fn packed_code_packers_check_shapes() {
    let u4 = [U4(0); 8];
    let e = pack::gptq_qweight_u4(&u4, 2, 6).unwrap_err().to_string();
    assert!(e.contains("in_features 6 is not a multiple of 8"), "{e}");
    let e = pack::gptq_qweight_u4(&u4, 3, 8).unwrap_err().to_string();
    assert!(e.contains("[3, 4] needs 12"), "{e}");
    let e = pack::awq_qweight_u4(&u4, 4, 4).unwrap_err().to_string();
    assert!(e.contains("out_features 4 is not a multiple of 8"), "{e}");
    let e = pack::compressed_tensors_weight_s4(&[S4(0); 8], 1, 12)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a multiple of 8"), "{e}");
}

/// Dequantizes packed codes `q` (`[m, k / 2]`) with backend `b`, or `None`
/// where the CPU (or the type) has no such backend.
fn dequantize_on<Q: IntElement, T: Element>(
    b: BackendKind,
    q: &[Q],
    s: &[T],
    z: &[i32],
    (m, k, g): (usize, usize, usize),
    threads: usize,
) -> Option<Vec<T>> {
    let stream = Stream::cpu_with_threads(threads).unwrap();
    let desc = DequantizePerGroupDescriptor {
        outer_size: m,
        axis_size: k,
        group_size: g,
        input_element: Q::KIND,
        output_element: T::KIND,
    };
    let pref = PlanPreference {
        prefer_backend: Some(b),
        ..Default::default()
    };
    let plan = DequantizePerGroupPlan::<Q, T>::select(&stream, &desc, pref).ok()?;
    assert_eq!(plan.sku().backend, b);
    let mut y = vec![T::from_f64(-7.0); m * k];
    let args = DequantizePerGroupArgs {
        input: TensorRef::new(q, [m, k / Q::PACK]).unwrap(),
        scale: TensorRef::new(s, [m, k / g]).unwrap(),
        zero_point: TensorRef::new(z, [m, k / g]).unwrap(),
        output: TensorMut::new(&mut y, [m, k]).unwrap(),
    };
    plan.run(&stream, Workspace::None, args).unwrap();
    Some(y)
}

/// Scales of every kind a group may have: typical, negative, zero, ±0,
/// subnormal, huge, NaN, ±inf.
fn special_scales<T: Element>(n: usize, seed: u64) -> Vec<T> {
    let specials = [
        0.0,
        -0.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e-40,
        -3e38,
        65504.0,
    ];
    let mut r = seed | 1;
    (0..n)
        .map(|i| {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            let v = match r % 4 {
                0 => specials[i % specials.len()],
                1 => -((r >> 40) as f64) / 1e6,
                _ => (r >> 40) as f64 / 1e7,
            };
            T::from_f64(v)
        })
        .collect()
}

/// Whether this CPU has backend `b`.
fn detected(b: BackendKind) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match b {
            BackendKind::Sse41 => std::is_x86_feature_detected!("sse4.1"),
            BackendKind::Avx2 => {
                std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("f16c")
                    && std::is_x86_feature_detected!("fma")
            }
            BackendKind::Avx512 => {
                std::is_x86_feature_detected!("avx512f")
            }
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = b;
        false
    }
}

fn check_packed_dequantize<Q: IntElement, W: IntElement, T: Element>(
    wide: &[W],
    packed: &[Q],
    shape: (usize, usize, usize),
    seed: u64,
    threads: usize,
) -> std::result::Result<(), TestCaseError> {
    let (m, k, g) = shape;
    let s: Vec<T> = special_scales(m * k / g, seed);
    let extremes = [i32::MIN, i32::MAX, 1 << 24, -(1 << 24) - 1];
    let z: Vec<i32> = (0..m * k / g)
        .map(|i| match i % 7 {
            0 => extremes[(i / 7) % 4],
            _ => (i % 19) as i32 - 9,
        })
        .collect();
    let bits = |v: Vec<T>| v.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
    let oracle = dequantize_on(BackendKind::Scalar, wide, &s, &z, shape, 1).unwrap();
    for b in [BackendKind::Sse41, BackendKind::Avx2, BackendKind::Avx512] {
        match dequantize_on(b, packed, &s, &z, shape, threads) {
            Some(y) => {
                prop_assert_eq!(
                    bits(y),
                    bits(oracle.clone()),
                    "{:?} {:?} {:?}",
                    b,
                    Q::KIND,
                    T::KIND
                )
            }
            // A backend the CPU has is never skipped (SSE4.1 has no f16).
            None => prop_assert!(
                !detected(b) || (b == BackendKind::Sse41 && T::KIND == ElementKind::F16),
                "{:?} was not selected for {:?}",
                b,
                T::KIND
            ),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every vector backend dequantizes packed S4/U4 codes exactly as the
    /// scalar backend dequantizes the same codes one per byte, for every
    /// float type, vector tails, special scales and extreme zero points.
    #[test]
    fn packed_dequantize_matches_scalar_on_every_backend(
        m in 1usize..12,
        groups in 1usize..4,
        g in prop::sample::select(vec![2usize, 6, 8, 16, 34, 128]),
        seed in any::<u64>(),
        threads in 1usize..4,
    ) {
        let k = groups * g;
        let codes = random_codes(m * k, seed);
        let shape = (m, k, g);
        let (u4, s4, signed) = packed_forms(&codes);
        check_packed_dequantize::<U4, u8, f32>(&codes, &u4, shape, seed, threads)?;
        check_packed_dequantize::<U4, u8, f64>(&codes, &u4, shape, seed, threads)?;
        check_packed_dequantize::<U4, u8, f16>(&codes, &u4, shape, seed, threads)?;
        check_packed_dequantize::<U4, u8, bf16>(&codes, &u4, shape, seed, threads)?;
        check_packed_dequantize::<S4, i8, f32>(&signed, &s4, shape, seed, threads)?;
        check_packed_dequantize::<S4, i8, f64>(&signed, &s4, shape, seed, threads)?;
        check_packed_dequantize::<S4, i8, f16>(&signed, &s4, shape, seed, threads)?;
        check_packed_dequantize::<S4, i8, bf16>(&signed, &s4, shape, seed, threads)?;
    }
}
