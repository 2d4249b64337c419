//! Packed 4-bit codes (`S4`, `U4`): every plan that writes or reads codes
//! gives exactly the byte-per-code result, packed two per byte with the
//! even index in the low nibble.

use groupq::half::bf16;
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
        let x = data(m * groups * g, seed);
        let s: Vec<bf16> = data(m * groups, seed ^ 9).iter().map(|v| bf16::from_f32(v.to_f32().abs() / 4.0)).collect();
        let z: Vec<i32> = (0..m * groups).map(|i| (i % 5) as i32 - 2).collect();

        let wide = quantize::<i8>(&x, &s, &z, shape, (-8, 7), threads);
        let packed = quantize::<S4>(&x, &s, &z, shape, (-8, 7), threads);
        let wide32: Vec<i32> = wide.iter().map(|&c| c.into()).collect();
        prop_assert_eq!(packed_bytes(&packed, |b| b.0), pack::nibbles(&wide32).unwrap());
        prop_assert_eq!(dequantize(&packed, &s, &z, shape), dequantize(&wide, &s, &z, shape));

        let zu: Vec<i32> = z.iter().map(|&v| v + 8).collect();
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
