//! The per-group plans on a wgpu device stream, bit for bit against the
//! scalar CPU reference: exhaustive over every f16 and bf16 input, property
//! tests over shapes, strides, offsets and special values for every dtype
//! pair, problems cut into many binding-sized chunks, several plans in a
//! row on one stream, and the error paths.
//!
//! Without a GPU adapter the tests skip with a message naming what to
//! install; with `CI=true` a missing adapter fails them.
#![cfg(feature = "wgpu")]

use groupq::half::{bf16, f16};
use groupq::*;
use proptest::prelude::*;

mod device_common;
use device_common::{bytes, gpu};

/// The reference: the scalar backend on one CPU thread.
fn scalar() -> (Stream, PlanPreference) {
    let pref = PlanPreference {
        prefer_backend: Some(BackendKind::Scalar),
        ..Default::default()
    };
    (Stream::cpu_with_threads(1).unwrap(), pref)
}

/// A value from raw bits (NaN payloads, subnormals, infinities included).
fn from_bits<T: DeviceElement>(bits: u64) -> T {
    T::load_le(&bits.to_le_bytes()[..T::BYTES])
}

/// Inputs where the arithmetic is decided: raw bit patterns, exact ties
/// and near-ties at several scales, zeros, extremes.
fn value<T: Element>(r: u64) -> T {
    let k = (r >> 8) % 64;
    match r % 8 {
        0 | 1 => from_bits(r >> 11),
        2 => T::from_f64((k as f64 - 32.0) + 0.5),
        3 => T::from_f64(((k as f64) - 32.0 + 0.5) * 2f64.powi((r >> 20) as i32 % 40 - 20)),
        4 => T::from_f64([0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN][k as usize % 5]),
        5 => T::from_f64(f64::from(f32::MAX) * if k.is_multiple_of(2) { 1.0 } else { -1.0 }),
        _ => T::from_f64(((r >> 16) % 100_000) as f64 / 997.0 - 50.0),
    }
}

/// Scales: zero of both signs, negative, subnormal, raw bits, ordinary.
fn scale<T: Element>(r: u64) -> T {
    match r % 8 {
        0 => T::from_f64(0.0),
        1 => T::from_f64(-0.0),
        2 => from_bits(r >> 11),
        3 => T::from_f64(-(((r >> 16) % 1000) as f64 + 1.0) / 512.0),
        4 => T::from_f64(2f64.powi(-(((r >> 16) % 30) as i32) - 120)),
        _ => T::from_f64((((r >> 16) % 1000) as f64 + 1.0) / 256.0),
    }
}

fn zero_point(r: u64, q_min: i32, q_max: i32) -> i32 {
    match r % 6 {
        0 => i32::MIN,
        1 => i32::MAX,
        2 => (r >> 8) as i32,
        _ => q_min + ((r >> 8) % (q_max - q_min + 1) as u64) as i32 - 2,
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Where the views sit in their buffers: leading offset and padding after
/// each row, per operand (data, parameters, output).
#[derive(Debug, Clone, Copy)]
struct Placement {
    offset: [usize; 3],
    pad: [usize; 3],
}

/// A buffer holding a `[rows, cols]` view at `offset` with row pitch
/// `cols + pad`, the other elements `fill`.
fn place<T: Copy>(v: &[T], rows: usize, cols: usize, offset: usize, pad: usize, fill: T) -> Vec<T> {
    let pitch = cols + pad;
    let mut out = vec![fill; offset + rows * pitch];
    for r in 0..rows {
        out[offset + r * pitch..][..cols].copy_from_slice(&v[r * cols..][..cols]);
    }
    out
}

/// Quantizes on the device and with the scalar reference; equal bytes,
/// including the elements between and around the output view.
#[allow(clippy::too_many_arguments)]
fn check_quantize<T: Element, Q: IntElement>(
    gpu: &Stream,
    rows: usize,
    cols: usize,
    gs: usize,
    x: &[T],
    s: &[T],
    z: &[i32],
    q: (i32, i32),
    at: Placement,
) {
    let desc = QuantizePerGroupDescriptor {
        outer_size: rows,
        axis_size: cols,
        group_size: gs,
        q_min: q.0,
        q_max: q.1,
        input_element: T::KIND,
        output_element: Q::KIND,
    };
    let (g, u) = (cols / gs, cols / Q::PACK);
    let [ox, os, oq] = at.offset;
    let [px, ps, pq] = at.pad;
    let (xb, sb, zb) = (
        place(x, rows, cols, ox, px, T::from_f64(7.0)),
        place(s, rows, g, os, ps, T::from_f64(1.0)),
        place(z, rows, g, os, ps, 3),
    );
    let fill: Q = from_bits(0x5a);
    let mut want = place(&vec![fill; rows * u], rows, u, oq, pq, fill);
    let (cpu, pref) = scalar();
    let plan = QuantizePerGroupPlan::<T, Q>::select(&cpu, &desc, pref).unwrap();
    plan.run(
        &cpu,
        Workspace::None,
        QuantizePerGroupArgs {
            input: TensorRef::with_strides(&xb[ox..], [rows, cols], [cols + px, 1]).unwrap(),
            scale: TensorRef::with_strides(&sb[os..], [rows, g], [g + ps, 1]).unwrap(),
            zero_point: TensorRef::with_strides(&zb[os..], [rows, g], [g + ps, 1]).unwrap(),
            output: TensorMut::with_strides(&mut want[oq..], [rows, u], [u + pq, 1]).unwrap(),
        },
    )
    .unwrap();

    let plan = QuantizePerGroupPlan::<T, Q>::select(gpu, &desc, PlanPreference::default()).unwrap();
    assert_eq!(plan.sku().backend, BackendKind::Wgpu);
    let (dx, ds, dz) = (
        DeviceBuffer::from_slice(gpu, &xb).unwrap(),
        DeviceBuffer::from_slice(gpu, &sb).unwrap(),
        DeviceBuffer::from_slice(gpu, &zb).unwrap(),
    );
    let mut dq = DeviceBuffer::from_slice(gpu, &vec![fill; want.len()]).unwrap();
    plan.run_device(
        gpu,
        Workspace::None,
        QuantizePerGroupDeviceArgs {
            input: dx.view_strided(ox, [rows, cols], [cols + px, 1]).unwrap(),
            scale: ds.view_strided(os, [rows, g], [g + ps, 1]).unwrap(),
            zero_point: dz.view_strided(os, [rows, g], [g + ps, 1]).unwrap(),
            output: dq.view_strided_mut(oq, [rows, u], [u + pq, 1]).unwrap(),
        },
    )
    .unwrap();
    let got = dq.to_vec(gpu).unwrap();
    if bytes(&got) != bytes(&want) {
        let first = (0..want.len())
            .find(|&i| bytes(&got[i..=i]) != bytes(&want[i..=i]))
            .unwrap();
        panic!(
            "{}→{} {rows}×{cols}/{gs} {at:?}: unit {first}: device {:?}, scalar {:?}",
            T::KIND,
            Q::KIND,
            got[first],
            want[first]
        );
    }
}

/// The other three plans, on the device and with the scalar reference.
#[allow(clippy::too_many_arguments)]
fn check_inverse_and_gradients<T: Element, Q: IntElement>(
    gpu: &Stream,
    rows: usize,
    cols: usize,
    gs: usize,
    codes: &[Q],
    x: &[T],
    dy: &[T],
    s: &[T],
    z: &[i32],
    q: (i32, i32),
    boundary: SteBoundary,
) {
    let g = cols / gs;
    let (cpu, pref) = scalar();
    let dev = |v: &[T]| DeviceBuffer::from_slice(gpu, v).unwrap();
    let (ds, dz) = (dev(s), DeviceBuffer::from_slice(gpu, z).unwrap());
    let what = format!("{}/{} {rows}×{cols}/{gs} {boundary:?}", T::KIND, Q::KIND);
    let same = |got: Vec<T>, want: &[T], op: &str| {
        if let Some(i) = (0..want.len()).find(|&i| bytes(&got[i..=i]) != bytes(&want[i..=i])) {
            panic!(
                "{op} {what}: element {i}: device {:?}, scalar {:?}",
                got[i], want[i]
            );
        }
    };

    // Dequantize.
    let desc = DequantizePerGroupDescriptor {
        outer_size: rows,
        axis_size: cols,
        group_size: gs,
        input_element: Q::KIND,
        output_element: T::KIND,
    };
    let mut want = vec![T::default(); rows * cols];
    let plan = DequantizePerGroupPlan::<Q, T>::select(&cpu, &desc, pref).unwrap();
    plan.run(
        &cpu,
        Workspace::None,
        DequantizePerGroupArgs {
            input: TensorRef::new(codes, [rows, cols / Q::PACK]).unwrap(),
            scale: TensorRef::new(s, [rows, g]).unwrap(),
            zero_point: TensorRef::new(z, [rows, g]).unwrap(),
            output: TensorMut::new(&mut want, [rows, cols]).unwrap(),
        },
    )
    .unwrap();
    let plan = DequantizePerGroupPlan::<Q, T>::select(gpu, &desc, Default::default()).unwrap();
    let dcodes = DeviceBuffer::from_slice(gpu, codes).unwrap();
    let mut out = DeviceBuffer::<T>::zeros(gpu, rows * cols).unwrap();
    plan.run_device(
        gpu,
        Workspace::None,
        DequantizePerGroupDeviceArgs {
            input: dcodes.view([rows, cols / Q::PACK]).unwrap(),
            scale: ds.view([rows, g]).unwrap(),
            zero_point: dz.view([rows, g]).unwrap(),
            output: out.view_mut([rows, cols]).unwrap(),
        },
    )
    .unwrap();
    same(out.to_vec(gpu).unwrap(), &want, "dequantize");

    // Quantize backward.
    let desc = QuantizePerGroupBackwardDescriptor {
        outer_size: rows,
        axis_size: cols,
        group_size: gs,
        q_min: q.0,
        q_max: q.1,
        input_element: T::KIND,
        boundary,
    };
    let plan = QuantizePerGroupBackwardPlan::<T>::select(&cpu, &desc, pref).unwrap();
    plan.run(
        &cpu,
        Workspace::None,
        QuantizePerGroupBackwardArgs {
            grad_output: TensorRef::new(dy, [rows, cols]).unwrap(),
            input: TensorRef::new(x, [rows, cols]).unwrap(),
            scale: TensorRef::new(s, [rows, g]).unwrap(),
            zero_point: TensorRef::new(z, [rows, g]).unwrap(),
            grad_input: TensorMut::new(&mut want, [rows, cols]).unwrap(),
        },
    )
    .unwrap();
    let plan = QuantizePerGroupBackwardPlan::<T>::select(gpu, &desc, Default::default()).unwrap();
    let (ddy, dx) = (dev(dy), dev(x));
    plan.run_device(
        gpu,
        Workspace::None,
        QuantizePerGroupBackwardDeviceArgs {
            grad_output: ddy.view([rows, cols]).unwrap(),
            input: dx.view([rows, cols]).unwrap(),
            scale: ds.view([rows, g]).unwrap(),
            zero_point: dz.view([rows, g]).unwrap(),
            grad_input: out.view_mut([rows, cols]).unwrap(),
        },
    )
    .unwrap();
    same(out.to_vec(gpu).unwrap(), &want, "quantize backward");

    // Dequantize backward.
    let desc = DequantizePerGroupBackwardDescriptor {
        outer_size: rows,
        axis_size: cols,
        group_size: gs,
    };
    let plan = DequantizePerGroupBackwardPlan::<Q, T>::select(&cpu, &desc, pref).unwrap();
    plan.run(
        &cpu,
        Workspace::None,
        DequantizePerGroupBackwardArgs {
            grad_output: TensorRef::new(dy, [rows, cols]).unwrap(),
            scale: TensorRef::new(s, [rows, g]).unwrap(),
            grad_input: TensorMut::new(&mut want, [rows, cols]).unwrap(),
        },
    )
    .unwrap();
    let plan =
        DequantizePerGroupBackwardPlan::<Q, T>::select(gpu, &desc, Default::default()).unwrap();
    plan.run_device(
        gpu,
        Workspace::None,
        DequantizePerGroupBackwardDeviceArgs {
            grad_output: ddy.view([rows, cols]).unwrap(),
            scale: ds.view([rows, g]).unwrap(),
            grad_input: out.view_mut([rows, cols]).unwrap(),
        },
    )
    .unwrap();
    same(out.to_vec(gpu).unwrap(), &want, "dequantize backward");
}

/// One random case of every plan for `T` and `Q`.
fn random_case<T: Element, Q: IntElement>(
    gpu: &Stream,
    seed: u64,
    shape: (usize, usize, usize),
    at: Placement,
) {
    let mut rng = Rng(seed | 1);
    let (rows, groups, gs) = shape;
    let gs = gs * Q::PACK;
    let cols = groups * gs;
    let (lo, hi) = (Q::MIN, Q::MAX);
    let q_min = lo + (rng.next() % 3) as i32;
    let q_max = hi - (rng.next() % 3) as i32;
    let x: Vec<T> = (0..rows * cols).map(|_| value(rng.next())).collect();
    let dy: Vec<T> = (0..rows * cols).map(|_| value(rng.next())).collect();
    let s: Vec<T> = (0..rows * groups).map(|_| scale(rng.next())).collect();
    let z: Vec<i32> = (0..rows * groups)
        .map(|_| zero_point(rng.next(), q_min, q_max))
        .collect();
    let codes: Vec<Q> = (0..rows * cols / Q::PACK)
        .map(|_| from_bits(rng.next() >> 3))
        .collect();
    check_quantize::<T, Q>(gpu, rows, cols, gs, &x, &s, &z, (q_min, q_max), at);
    let boundary = if rng.next().is_multiple_of(2) {
        SteBoundary::Exclusive
    } else {
        SteBoundary::Inclusive
    };
    let z_small: Vec<i32> = z.iter().map(|&v| v.clamp(-300, 300)).collect();
    let z = if rng.next().is_multiple_of(2) {
        &z
    } else {
        &z_small
    };
    check_inverse_and_gradients::<T, Q>(
        gpu,
        rows,
        cols,
        gs,
        &codes,
        &x,
        &dy,
        &s,
        z,
        (q_min, q_max),
        boundary,
    );
}

fn placement() -> impl Strategy<Value = Placement> {
    (
        prop::array::uniform3(0usize..7),
        prop::array::uniform3(0usize..5),
    )
        .prop_map(|(offset, pad)| Placement { offset, pad })
}

macro_rules! random_tests {
    ($($name:ident: $t:ty, $q:ty;)*) => {$(
        proptest! {
            #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
            #[test]
            fn $name(seed in any::<u64>(), rows in 1usize..5, groups in 1usize..4,
                     gs in prop::sample::select(vec![1usize, 2, 3, 4, 8, 32]), at in placement()) {
                let Some(gpu) = gpu() else { return Ok(()) };
                random_case::<$t, $q>(gpu, seed, (rows, groups, gs), at);
            }
        }
    )*};
}

random_tests! {
    random_f32_s8: f32, i8;
    random_f32_u8: f32, u8;
    random_f32_s4: f32, S4;
    random_f32_u4: f32, U4;
    random_f16_s8: f16, i8;
    random_f16_u4: f16, U4;
    random_bf16_s8: bf16, i8;
    random_bf16_u8: bf16, u8;
    random_bf16_s4: bf16, S4;
    random_f64_s8: f64, i8;
    random_f64_u8: f64, u8;
    random_f64_u4: f64, U4;
}

/// Every f16 and bf16 bit pattern, quantized with scales that decide ties,
/// subnormals and specials: zero of both signs, tiny, subnormal, negative,
/// powers of two, an inexact decimal, infinity and NaN.
fn exhaustive<T: Element>(gpu: &Stream) {
    let x: Vec<T> = (0..=u16::MAX).map(|b| from_bits(u64::from(b))).collect();
    let cols = 256;
    let rows = x.len() / cols;
    let scales = [
        1.0,
        0.5,
        0.1,
        -0.37,
        0.0,
        -0.0,
        2e-8,
        1e-40,
        65504.0,
        3e38,
        f64::INFINITY,
        f64::NAN,
    ];
    for (k, &sv) in scales.iter().enumerate() {
        let s = vec![T::from_f64(sv); rows];
        for (zv, q) in [(0, (-128, 127)), (3, (0, 255)), (-7, (-8, 7))] {
            let z = vec![zv + k as i32 % 2; rows];
            let at = Placement {
                offset: [0; 3],
                pad: [0; 3],
            };
            if q.0 < 0 {
                check_quantize::<T, i8>(gpu, rows, cols, cols, &x, &s, &z, q, at);
            } else {
                check_quantize::<T, u8>(gpu, rows, cols, cols, &x, &s, &z, q, at);
            }
        }
        check_quantize::<T, S4>(
            gpu,
            rows,
            cols,
            cols,
            &x,
            &s,
            &vec![1; rows],
            (-8, 7),
            Placement {
                offset: [0; 3],
                pad: [0; 3],
            },
        );
    }
}

#[test]
fn exhaustive_f16_inputs() {
    if let Some(gpu) = gpu() {
        exhaustive::<f16>(gpu);
    }
}

#[test]
fn exhaustive_bf16_inputs() {
    if let Some(gpu) = gpu() {
        exhaustive::<bf16>(gpu);
    }
}

/// A second device on the same adapter with a storage binding of `binding`
/// bytes at most and the given features, wrapped as a stream.
fn small_device(binding: u64, features: wgpu::Features) -> Stream {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .unwrap();
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: binding,
        ..adapter.limits()
    };
    let desc = wgpu::DeviceDescriptor {
        required_features: features,
        required_limits: limits,
        ..Default::default()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&desc)).unwrap();
    Stream::from_wgpu(device, queue)
}

/// Problems cut into many chunks (whole rows, and runs of groups within a
/// row) on a device whose storage bindings hold 4 KiB: same bits.
#[test]
fn problems_larger_than_a_binding_are_chunked() {
    if gpu().is_none() {
        return;
    }
    let small = small_device(4096, wgpu::Features::SHADER_INT64);
    for (seed, shape) in [
        (1u64, (9usize, 40usize, 32usize)),
        (2, (3, 3, 512)),
        (3, (1, 200, 8)),
    ] {
        let at = Placement {
            offset: [3, 1, 5],
            pad: [2, 1, 3],
        };
        random_case::<f32, i8>(&small, seed, shape, at);
        random_case::<bf16, U4>(&small, seed, shape, at);
        random_case::<f64, u8>(&small, seed, (shape.0, shape.1, shape.2 / 4), at);
    }
    // One group larger than a binding cannot be cut.
    let desc = QuantizePerGroupDescriptor {
        outer_size: 1,
        axis_size: 2048,
        group_size: 2048,
        q_min: -8,
        q_max: 7,
        input_element: ElementKind::F32,
        output_element: ElementKind::S8,
    };
    let plan = QuantizePerGroupPlan::<f32, i8>::select(&small, &desc, Default::default()).unwrap();
    let x = DeviceBuffer::<f32>::zeros(&small, 2048).unwrap();
    let s = DeviceBuffer::<f32>::zeros(&small, 1).unwrap();
    let z = DeviceBuffer::<i32>::zeros(&small, 1).unwrap();
    let mut q = DeviceBuffer::<i8>::zeros(&small, 2048).unwrap();
    let err = plan
        .run_device(
            &small,
            Workspace::None,
            QuantizePerGroupDeviceArgs {
                input: x.view([1, 2048]).unwrap(),
                scale: s.view([1, 1]).unwrap(),
                zero_point: z.view([1, 1]).unwrap(),
                output: q.view_mut([1, 2048]).unwrap(),
            },
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported(m) if m.contains("storage binding")),
        "{err}"
    );
}

/// A tensor larger than the device's real storage binding (128 MiB on
/// lavapipe): 36 × 2^20 f32 values, most groups with a zero scale (cheap),
/// every zero point different, so a misplaced chunk shows.
#[test]
fn a_tensor_larger_than_the_real_binding() {
    let Some(gpu) = gpu() else { return };
    let limit = gpu
        .wgpu_device()
        .unwrap()
        .limits()
        .max_storage_buffer_binding_size as usize;
    let cols = 1 << 20;
    let rows = (limit / 4).div_ceil(cols) + 4;
    let gs = 256;
    let g = cols / gs;
    let mut rng = Rng(77);
    let x: Vec<f32> = (0..rows * cols)
        .map(|i| (i % 1000) as f32 * 0.37 - 170.0)
        .collect();
    let s: Vec<f32> = (0..rows * g)
        .map(|i| if i % 97 == 0 { 0.75 } else { 0.0 })
        .collect();
    let z: Vec<i32> = (0..rows * g)
        .map(|_| (rng.next() % 200) as i32 - 100)
        .collect();
    let at = Placement {
        offset: [0; 3],
        pad: [0; 3],
    };
    check_quantize::<f32, i8>(gpu, rows, cols, gs, &x, &s, &z, (-128, 127), at);
}

/// Several plans in a row on one stream: quantize on the device, then
/// dequantize the device codes, then one download; equal to the CPU chain.
#[test]
fn plans_in_a_row_on_one_stream() {
    let Some(gpu) = gpu() else { return };
    let (rows, cols, gs) = (16, 512, 64);
    let g = cols / gs;
    let mut rng = Rng(5);
    let x: Vec<bf16> = (0..rows * cols).map(|_| value(rng.next())).collect();
    let s: Vec<bf16> = (0..rows * g).map(|_| scale(rng.next())).collect();
    let z: Vec<i32> = (0..rows * g).map(|_| (rng.next() % 16) as i32).collect();
    let qd = QuantizePerGroupDescriptor {
        outer_size: rows,
        axis_size: cols,
        group_size: gs,
        q_min: 0,
        q_max: 15,
        input_element: ElementKind::Bf16,
        output_element: ElementKind::U4,
    };
    let dd = DequantizePerGroupDescriptor {
        outer_size: rows,
        axis_size: cols,
        group_size: gs,
        input_element: ElementKind::U4,
        output_element: ElementKind::Bf16,
    };
    // CPU chain.
    let cpu = Stream::cpu();
    let mut q = vec![U4(0); rows * cols / 2];
    let mut want = vec![bf16::ZERO; rows * cols];
    QuantizePerGroupPlan::<bf16, U4>::select(&cpu, &qd, Default::default())
        .unwrap()
        .run(
            &cpu,
            Workspace::None,
            QuantizePerGroupArgs {
                input: TensorRef::new(&x, [rows, cols]).unwrap(),
                scale: TensorRef::new(&s, [rows, g]).unwrap(),
                zero_point: TensorRef::new(&z, [rows, g]).unwrap(),
                output: TensorMut::new(&mut q, [rows, cols / 2]).unwrap(),
            },
        )
        .unwrap();
    DequantizePerGroupPlan::<U4, bf16>::select(&cpu, &dd, Default::default())
        .unwrap()
        .run(
            &cpu,
            Workspace::None,
            DequantizePerGroupArgs {
                input: TensorRef::new(&q, [rows, cols / 2]).unwrap(),
                scale: TensorRef::new(&s, [rows, g]).unwrap(),
                zero_point: TensorRef::new(&z, [rows, g]).unwrap(),
                output: TensorMut::new(&mut want, [rows, cols]).unwrap(),
            },
        )
        .unwrap();
    // Device chain, no host round trip in between.
    let quant = QuantizePerGroupPlan::<bf16, U4>::select(gpu, &qd, Default::default()).unwrap();
    let dequant = DequantizePerGroupPlan::<U4, bf16>::select(gpu, &dd, Default::default()).unwrap();
    let dx = DeviceBuffer::from_slice(gpu, &x).unwrap();
    let ds = DeviceBuffer::from_slice(gpu, &s).unwrap();
    let dz = DeviceBuffer::from_slice(gpu, &z).unwrap();
    let mut dq = DeviceBuffer::<U4>::zeros(gpu, q.len()).unwrap();
    let mut dy = DeviceBuffer::<bf16>::zeros(gpu, want.len()).unwrap();
    for _ in 0..3 {
        quant
            .run_device(
                gpu,
                Workspace::None,
                QuantizePerGroupDeviceArgs {
                    input: dx.view([rows, cols]).unwrap(),
                    scale: ds.view([rows, g]).unwrap(),
                    zero_point: dz.view([rows, g]).unwrap(),
                    output: dq.view_mut([rows, cols / 2]).unwrap(),
                },
            )
            .unwrap();
        dequant
            .run_device(
                gpu,
                Workspace::None,
                DequantizePerGroupDeviceArgs {
                    input: dq.view([rows, cols / 2]).unwrap(),
                    scale: ds.view([rows, g]).unwrap(),
                    zero_point: dz.view([rows, g]).unwrap(),
                    output: dy.view_mut([rows, cols]).unwrap(),
                },
            )
            .unwrap();
    }
    gpu.synchronize().unwrap();
    assert_eq!(bytes(&dq.to_vec(gpu).unwrap()), bytes(&q));
    assert_eq!(bytes(&dy.to_vec(gpu).unwrap()), bytes(&want));
}

#[test]
fn device_buffers_round_trip_and_partial_writes_keep_neighbours() {
    let Some(gpu) = gpu() else { return };
    let v: Vec<i8> = (0..37).map(|i| i as i8 - 18).collect();
    let mut b = DeviceBuffer::from_slice(gpu, &v).unwrap();
    assert_eq!(b.to_vec(gpu).unwrap(), v);
    b.write(gpu, 5, &[100, 101, 102]).unwrap();
    let mut w = v.clone();
    w[5..8].copy_from_slice(&[100, 101, 102]);
    assert_eq!(b.to_vec(gpu).unwrap(), w);
    assert_eq!(
        b.write(gpu, 36, &[1, 2]).unwrap_err(),
        Error::BufferTooSmall {
            needed: 38,
            got: 37
        }
    );
    let h: Vec<f16> = (0..5).map(|i| f16::from_f32(i as f32)).collect();
    assert_eq!(
        DeviceBuffer::from_slice(gpu, &h)
            .unwrap()
            .to_vec(gpu)
            .unwrap(),
        h
    );
    assert!(DeviceBuffer::<f32>::zeros(gpu, 0)
        .unwrap()
        .to_vec(gpu)
        .unwrap()
        .is_empty());
}

fn host_args<'a>(
    x: &'a [f32],
    s: &'a [f32],
    z: &'a [i32],
    q: &'a mut [i8],
) -> QuantizePerGroupArgs<'a, f32, i8> {
    QuantizePerGroupArgs {
        input: TensorRef::new(x, [2, 8]).unwrap(),
        scale: TensorRef::new(s, [2, 2]).unwrap(),
        zero_point: TensorRef::new(z, [2, 2]).unwrap(),
        output: TensorMut::new(q, [2, 8]).unwrap(),
    }
}

fn device_args<'a>(
    x: &'a DeviceBuffer<f32>,
    s: &'a DeviceBuffer<f32>,
    z: &'a DeviceBuffer<i32>,
    q: &'a mut DeviceBuffer<i8>,
) -> QuantizePerGroupDeviceArgs<'a, f32, i8> {
    QuantizePerGroupDeviceArgs {
        input: x.view([2, 8]).unwrap(),
        scale: s.view([2, 2]).unwrap(),
        zero_point: z.view([2, 2]).unwrap(),
        output: q.view_mut([2, 8]).unwrap(),
    }
}

/// Every misuse is a typed error, before anything is enqueued.
#[test]
fn device_errors_are_typed() {
    let Some(gpu) = gpu() else { return };
    let cpu = Stream::cpu();
    let desc = QuantizePerGroupDescriptor {
        outer_size: 2,
        axis_size: 8,
        group_size: 4,
        q_min: -8,
        q_max: 7,
        input_element: ElementKind::F32,
        output_element: ElementKind::S8,
    };
    let unsupported = |r: Result<()>, needle: &str| match r {
        Err(Error::Unsupported(m)) => assert!(m.contains(needle), "{m}"),
        other => panic!("expected Unsupported containing {needle:?}, got {other:?}"),
    };
    let dplan = QuantizePerGroupPlan::<f32, i8>::select(gpu, &desc, Default::default()).unwrap();
    let cplan = QuantizePerGroupPlan::<f32, i8>::select(&cpu, &desc, Default::default()).unwrap();
    assert_eq!(dplan.sku().backend, BackendKind::Wgpu);
    assert_ne!(cplan.sku().backend, BackendKind::Wgpu);

    let (x, s, z) = ([1.0f32; 16], [0.5f32; 4], [0i32; 4]);
    let mut q = [0i8; 16];
    unsupported(
        dplan.run(gpu, Workspace::None, host_args(&x, &s, &z, &mut q)),
        "run_device",
    );
    unsupported(
        dplan.run(&cpu, Workspace::None, host_args(&x, &s, &z, &mut q)),
        "run_device",
    );
    unsupported(
        cplan.run(gpu, Workspace::None, host_args(&x, &s, &z, &mut q)),
        "run_device",
    );
    assert_eq!(q, [0; 16], "nothing written");

    let dx = DeviceBuffer::from_slice(gpu, &x).unwrap();
    let ds = DeviceBuffer::from_slice(gpu, &s).unwrap();
    let dz = DeviceBuffer::from_slice(gpu, &z).unwrap();
    let mut dq = DeviceBuffer::<i8>::zeros(gpu, 16).unwrap();
    // A device plan on a CPU stream, a CPU plan on the device.
    unsupported(
        dplan.run_device(&cpu, Workspace::None, device_args(&dx, &ds, &dz, &mut dq)),
        "CPU stream",
    );
    unsupported(
        cplan.run_device(gpu, Workspace::None, device_args(&dx, &ds, &dz, &mut dq)),
        "CPU stream",
    );
    // Shapes, lengths and strides as on the host.
    let mut a = device_args(&dx, &ds, &dz, &mut dq);
    a.input.shape = [2, 4];
    assert!(matches!(
        dplan.run_device(gpu, Workspace::None, a),
        Err(Error::InvalidProblem(m)) if m.contains("input shape [2, 4]")
    ));
    let mut a = device_args(&dx, &ds, &dz, &mut dq);
    a.input.offset = 3;
    assert_eq!(
        dplan.run_device(gpu, Workspace::None, a).unwrap_err(),
        Error::BufferTooSmall {
            needed: 19,
            got: 16
        }
    );
    let mut a = device_args(&dx, &ds, &dz, &mut dq);
    a.scale.stride = [0, 2];
    assert!(matches!(
        dplan.run_device(gpu, Workspace::None, a),
        Err(Error::InvalidProblem(m)) if m.contains("last-axis stride")
    ));
    let mut a = device_args(&dx, &ds, &dz, &mut dq);
    a.output.stride = [4, 1];
    assert!(matches!(
        dplan.run_device(gpu, Workspace::None, a),
        Err(Error::InvalidProblem(m)) if m.contains("overlap")
    ));
    assert_eq!(
        dq.to_vec(gpu).unwrap(),
        [0; 16],
        "nothing enqueued on error"
    );

    // A buffer of another device.
    let other = small_device(1 << 20, wgpu::Features::empty());
    let foreign = DeviceBuffer::from_slice(&other, &x).unwrap();
    let mut a = device_args(&dx, &ds, &dz, &mut dq);
    a.input = foreign.view([2, 8]).unwrap();
    assert!(matches!(
        dplan.run_device(gpu, Workspace::None, a),
        Err(Error::InvalidProblem(m)) if m.contains("another device")
    ));
    // f64 needs 64-bit integers on the device.
    let d64 = QuantizePerGroupDescriptor {
        input_element: ElementKind::F64,
        ..desc
    };
    let err =
        QuantizePerGroupPlan::<f64, i8>::select(&other, &d64, Default::default()).unwrap_err();
    unsupported(Err(err.clone()), "SHADER_INT64");
    unsupported(Err(err), "SHADER_F64");

    // Backend preferences.
    let prefer = |b| PlanPreference {
        prefer_backend: Some(b),
        ..Default::default()
    };
    let e = QuantizePerGroupPlan::<f32, i8>::select(gpu, &desc, prefer(BackendKind::Scalar));
    unsupported(e.map(|_| ()), "device stream");
    let e = QuantizePerGroupPlan::<f32, i8>::select(&cpu, &desc, prefer(BackendKind::Wgpu));
    unsupported(e.map(|_| ()), "device stream");
    assert!(QuantizePerGroupPlan::<f32, i8>::select(gpu, &desc, prefer(BackendKind::Wgpu)).is_ok());

    // Plans without a device form refuse device streams at select.
    let ggml = QuantizeGgmlBlocksDescriptor {
        rows: 1,
        n_per_row: 32,
        ggml_type: groupq::ggml::GgmlType::Q4_0,
        imatrix: false,
    };
    let e = QuantizeGgmlBlocksPlan::select(gpu, &ggml, Default::default());
    unsupported(e.map(|_| ()), "CPU streams only");
    // Formulas other than SPEC's need 64-bit integers on the device.
    let torch = groupq::recipe::Recipe::torch_per_channel_group(-128, 127).quantize;
    let e = QuantizePerGroupPlan::<f32, i8>::select_with_formula(
        &other,
        &desc,
        torch,
        Default::default(),
    );
    unsupported(e.map(|_| ()), "SHADER_INT64");

    // Too large for the device.
    let max = gpu.wgpu_device().unwrap().limits().max_buffer_size;
    let err = DeviceBuffer::<f32>::zeros(gpu, (max / 4 + 1) as usize).unwrap_err();
    unsupported(Err(err), "max_buffer_size");
    // Device buffers need a device stream.
    unsupported(DeviceBuffer::from_slice(&cpu, &x).map(|_| ()), "CPU stream");
}

/// Plans stay Send, Sync and unwind-safe with a device half.
#[test]
fn plans_are_send_sync_unwind_safe() {
    fn check<T: Send + Sync + Unpin + std::panic::UnwindSafe + std::panic::RefUnwindSafe>() {}
    check::<QuantizePerGroupPlan<f32, i8>>();
    check::<DequantizePerGroupPlan<U4, bf16>>();
    check::<QuantizePerGroupBackwardPlan<f16>>();
    check::<DequantizePerGroupBackwardPlan<u8, f64>>();
}

// ---------------------------------------------------------------- recipes

use groupq::recipe::{NonFinitePolicy, Recipe, TorchaoMapping, ZeroPointRule};

/// Every preset, signed-code and unsigned-code ones apart.
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
            Recipe::gguf_q8_0().fused(),
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
            Recipe::gguf_q5_0(),
            Recipe::gguf_q4_1(),
            Recipe::gguf_q5_1(),
            // gguf-py 0.17's fused multiply-add.
            Recipe::gguf_q4_0().fused(),
            Recipe::gguf_q5_0().fused(),
            Recipe::gguf_q4_1().fused(),
        ]
    }
}

/// What a recipe plan wrote: scale bytes, zero points, code bytes, offset
/// bytes (dynamic plan), then the choose plan's scale, zero point and
/// offset bytes.
type Written = (
    Vec<u8>,
    Vec<i32>,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    Vec<i32>,
    Vec<u8>,
);

/// Runs the dynamic and the choose plan of `recipe` on `stream` (host
/// slices on a CPU stream, device buffers on a device stream).
fn recipe_run<T: Element, S: Element, Q: IntElement>(
    stream: &Stream,
    pref: PlanPreference,
    x: &[T],
    (m, k, g): (usize, usize, usize),
    recipe: Recipe,
) -> Result<Written> {
    let ng = k / g;
    let offset = recipe.zero_point == ZeroPointRule::FloatOffset;
    let dd = QuantizeDynamicPerGroupDescriptor {
        outer_size: m,
        axis_size: k,
        group_size: g,
        recipe,
        input_element: T::KIND,
        scale_element: S::KIND,
        output_element: Q::KIND,
    };
    let cd = ChooseQParamsPerGroupDescriptor {
        outer_size: m,
        axis_size: k,
        group_size: g,
        recipe,
        input_element: T::KIND,
        scale_element: S::KIND,
    };
    let dynamic = QuantizeDynamicPerGroupPlan::<T, S, Q>::select(stream, &dd, pref)?;
    let choose = ChooseQParamsPerGroupPlan::<T, S>::select(stream, &cd, pref)?;
    let fill_s = S::from_f64(9.0);
    let (mut s, mut z, mut q, mut o) = (
        vec![fill_s; m * ng],
        vec![7i32; m * ng],
        vec![Q::default(); m * k / Q::PACK],
        vec![fill_s; m * ng],
    );
    let (mut s2, mut z2, mut o2) = (
        vec![fill_s; m * ng],
        vec![7i32; m * ng],
        vec![fill_s; m * ng],
    );
    if !stream.is_device() {
        let args = QuantizeDynamicPerGroupArgs {
            input: TensorRef::new(x, [m, k])?,
            scale: TensorMut::new(&mut s, [m, ng])?,
            zero_point: TensorMut::new(&mut z, [m, ng])?,
            output: TensorMut::new(&mut q, [m, k / Q::PACK])?,
        };
        if offset {
            dynamic.run_with_offset(
                stream,
                Workspace::None,
                args,
                TensorMut::new(&mut o, [m, ng])?,
            )?;
        } else {
            dynamic.run(stream, Workspace::None, args)?;
        }
        let args = ChooseQParamsPerGroupArgs {
            input: TensorRef::new(x, [m, k])?,
            scale: TensorMut::new(&mut s2, [m, ng])?,
            zero_point: TensorMut::new(&mut z2, [m, ng])?,
        };
        if offset {
            choose.run_with_offset(
                stream,
                Workspace::None,
                args,
                TensorMut::new(&mut o2, [m, ng])?,
            )?;
        } else {
            choose.run(stream, Workspace::None, args)?;
        }
    } else {
        assert_eq!(dynamic.sku().backend, BackendKind::Wgpu);
        let dx = DeviceBuffer::from_slice(stream, x)?;
        let mut ds = DeviceBuffer::from_slice(stream, &s)?;
        let mut dz = DeviceBuffer::from_slice(stream, &z)?;
        let mut dq = DeviceBuffer::from_slice(stream, &q)?;
        let mut dof = DeviceBuffer::from_slice(stream, &o)?;
        let args = QuantizeDynamicPerGroupDeviceArgs {
            input: dx.view([m, k])?,
            scale: ds.view_mut([m, ng])?,
            zero_point: dz.view_mut([m, ng])?,
            output: dq.view_mut([m, k / Q::PACK])?,
        };
        if offset {
            dynamic.run_device_with_offset(
                stream,
                Workspace::None,
                args,
                dof.view_mut([m, ng])?,
            )?;
        } else {
            dynamic.run_device(stream, Workspace::None, args)?;
        }
        (s, z, q, o) = (
            ds.to_vec(stream)?,
            dz.to_vec(stream)?,
            dq.to_vec(stream)?,
            dof.to_vec(stream)?,
        );
        let args = ChooseQParamsPerGroupDeviceArgs {
            input: dx.view([m, k])?,
            scale: ds.view_mut([m, ng])?,
            zero_point: dz.view_mut([m, ng])?,
        };
        if offset {
            choose.run_device_with_offset(stream, Workspace::None, args, dof.view_mut([m, ng])?)?;
        } else {
            choose.run_device(stream, Workspace::None, args)?;
        }
        (s2, z2, o2) = (ds.to_vec(stream)?, dz.to_vec(stream)?, dof.to_vec(stream)?);
    }
    Ok((
        bytes(&s),
        z,
        bytes(&q),
        bytes(&o),
        bytes(&s2),
        z2,
        bytes(&o2),
    ))
}

/// Weight-like values with specials: zeros of both signs, ties, tiny and
/// huge values, and (unless `finite`) NaN and infinities.
fn recipe_values<T: Element>(n: usize, seed: u64, finite: bool) -> Vec<T> {
    let mut rng = Rng(seed | 1);
    let constant = seed.is_multiple_of(7);
    (0..n)
        .map(|i| {
            let r = rng.next();
            if constant {
                return T::from_f64(0.75);
            }
            let u = (r >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            match r % 61 {
                0 if !finite => T::from_f64(f64::NAN),
                1 if !finite => T::from_f64(f64::INFINITY),
                2 if !finite => T::from_f64(f64::NEG_INFINITY),
                3 => T::from_f64(1e30),
                4 => T::from_f64(2f64.powi(-140) * (i % 5) as f64),
                5 | 6 => T::from_f64(0.0),
                7 => T::from_f64(-0.0),
                8 => T::from_f64((i % 16) as f64 * 0.125 - 1.0),
                9 => T::from_f64(u * 40.0),
                _ => T::from_f64(u * 0.1),
            }
        })
        .collect()
}

/// The device equals the scalar engine, bit for bit, for one recipe and
/// dtype triple (a recipe the device refuses at select is reported).
fn recipe_case<T: Element, S: Element, Q: IntElement>(
    gpu: &Stream,
    shape: (usize, usize, usize),
    recipe: Recipe,
    seed: u64,
    refused: &mut Vec<String>,
) {
    let (cpu, pref) = scalar();
    for policy in [NonFinitePolicy::Propagate, NonFinitePolicy::Error] {
        let recipe = recipe.with_non_finite(policy);
        let finite = policy == NonFinitePolicy::Error && !seed.is_multiple_of(3);
        let x: Vec<T> = recipe_values(shape.0 * shape.1, seed, finite);
        let what = format!("{}→{}/{} {shape:?} {recipe:?}", T::KIND, S::KIND, Q::KIND);
        let want = recipe_run::<T, S, Q>(&cpu, pref, &x, shape, recipe);
        let got = recipe_run::<T, S, Q>(gpu, Default::default(), &x, shape, recipe);
        match (got, want) {
            (Err(Error::Unsupported(m)), _) => refused.push(format!("{what}: {m}")),
            (Ok(got), Ok(want)) => {
                assert_eq!(got.0, want.0, "scales: {what}");
                assert_eq!(got.1, want.1, "zero points: {what}");
                assert!(got.2 == want.2, "codes: {what}");
                assert_eq!(got.3, want.3, "offsets: {what}");
                assert_eq!(got.4, want.4, "choose scales: {what}");
                assert_eq!(got.5, want.5, "choose zero points: {what}");
                assert_eq!(got.6, want.6, "choose offsets: {what}");
            }
            (got, want) => assert_eq!(got.err(), want.err(), "{what}"),
        }
    }
}

fn recipe_all_presets<T: Element>(
    gpu: &Stream,
    shape: (usize, usize, usize),
    seed: u64,
) -> Vec<String> {
    let mut refused = Vec::new();
    let r = &mut refused;
    for recipe in presets(true) {
        recipe_case::<T, T, i8>(gpu, shape, recipe, seed, r);
        recipe_case::<T, f32, i8>(gpu, shape, recipe, seed, r);
        recipe_case::<T, f16, i8>(gpu, shape, recipe, seed, r);
        if recipe.q_min >= -8 && recipe.q_max <= 7 {
            recipe_case::<T, T, S4>(gpu, shape, recipe, seed, r);
        }
    }
    for recipe in presets(false) {
        recipe_case::<T, T, u8>(gpu, shape, recipe, seed, r);
        recipe_case::<T, f32, u8>(gpu, shape, recipe, seed, r);
        recipe_case::<T, bf16, u8>(gpu, shape, recipe, seed, r);
        if recipe.q_min >= 0 && recipe.q_max <= 15 {
            recipe_case::<T, f16, U4>(gpu, shape, recipe, seed, r);
        }
    }
    refused
}

macro_rules! recipe_tests {
    ($($name:ident: $t:ty;)*) => {$(
        proptest! {
            #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]
            #[test]
            fn $name(seed in any::<u64>(), rows in 1usize..4, groups in 1usize..4,
                     gs in prop::sample::select(vec![2usize, 4, 32, 128])) {
                let Some(gpu) = gpu() else { return Ok(()) };
                let refused = recipe_all_presets::<$t>(gpu, (rows, groups * gs, gs), seed);
                // Only f64 scales stored as a half type from f64 arithmetic
                // may be refused.
                for r in &refused {
                    prop_assert!(r.contains("f64→f16") || r.contains("f64→bf16"), "refused: {r}");
                }
            }
        }
    )*};
}

recipe_tests! {
    recipes_f32: f32;
    recipes_bf16: bf16;
    recipes_f16: f16;
    recipes_f64: f64;
}

/// The first non-finite group is reported, and nothing written, as on the CPU.
#[test]
fn recipe_non_finite_error_writes_nothing() {
    let Some(gpu) = gpu() else { return };
    let (m, k, g) = (40, 256, 32);
    let mut x: Vec<bf16> = recipe_values(m * k, 11, true);
    for &(row, col) in &[(39, 3), (17, 200), (17, 70), (30, 0)] {
        x[row * k + col] = bf16::NAN;
    }
    let recipe = Recipe::torchao(TorchaoMapping::Symmetric, -8, 7);
    let e =
        recipe_run::<bf16, bf16, i8>(gpu, Default::default(), &x, (m, k, g), recipe).unwrap_err();
    assert_eq!(e, Error::NonFiniteInput { row: 17, group: 2 });
    let desc = QuantizeDynamicPerGroupDescriptor {
        outer_size: m,
        axis_size: k,
        group_size: g,
        recipe,
        input_element: ElementKind::Bf16,
        scale_element: ElementKind::Bf16,
        output_element: ElementKind::S8,
    };
    let plan =
        QuantizeDynamicPerGroupPlan::<bf16, bf16, i8>::select(gpu, &desc, Default::default())
            .unwrap();
    let dx = DeviceBuffer::from_slice(gpu, &x).unwrap();
    let mut ds = DeviceBuffer::from_slice(gpu, &vec![bf16::ONE; m * k / g]).unwrap();
    let mut dz = DeviceBuffer::from_slice(gpu, &vec![5i32; m * k / g]).unwrap();
    let mut dq = DeviceBuffer::from_slice(gpu, &vec![3i8; m * k]).unwrap();
    let err = plan
        .run_device(
            gpu,
            Workspace::None,
            QuantizeDynamicPerGroupDeviceArgs {
                input: dx.view([m, k]).unwrap(),
                scale: ds.view_mut([m, k / g]).unwrap(),
                zero_point: dz.view_mut([m, k / g]).unwrap(),
                output: dq.view_mut([m, k]).unwrap(),
            },
        )
        .unwrap_err();
    assert_eq!(err, Error::NonFiniteInput { row: 17, group: 2 });
    assert!(ds.to_vec(gpu).unwrap().iter().all(|&v| v == bf16::ONE));
    assert!(dz.to_vec(gpu).unwrap().iter().all(|&v| v == 5));
    assert!(dq.to_vec(gpu).unwrap().iter().all(|&v| v == 3));
}

/// `select_with_formula`: every preset's quantize formula on caller-given
/// scales and zero points (any i32, huge ones included), device = scalar.
fn formula_case<T: Element, Q: IntElement>(
    gpu: &Stream,
    seed: u64,
    (rows, groups, gs): (usize, usize, usize),
) {
    let mut rng = Rng(seed | 1);
    let gs = gs * Q::PACK;
    let cols = groups * gs;
    let (q_min, q_max) = (Q::MIN, Q::MAX);
    let x: Vec<T> = (0..rows * cols).map(|_| value(rng.next())).collect();
    let s: Vec<T> = (0..rows * groups).map(|_| scale(rng.next())).collect();
    let z: Vec<i32> = (0..rows * groups)
        .map(|_| zero_point(rng.next(), q_min, q_max))
        .collect();
    let desc = QuantizePerGroupDescriptor {
        outer_size: rows,
        axis_size: cols,
        group_size: gs,
        q_min,
        q_max,
        input_element: T::KIND,
        output_element: Q::KIND,
    };
    let (cpu, pref) = scalar();
    let (dx, ds, dz) = (
        DeviceBuffer::from_slice(gpu, &x).unwrap(),
        DeviceBuffer::from_slice(gpu, &s).unwrap(),
        DeviceBuffer::from_slice(gpu, &z).unwrap(),
    );
    for recipe in presets(true).into_iter().chain(presets(false)) {
        let f = recipe.quantize;
        let mut want = vec![Q::default(); rows * cols / Q::PACK];
        QuantizePerGroupPlan::<T, Q>::select_with_formula(&cpu, &desc, f, pref)
            .unwrap()
            .run(
                &cpu,
                Workspace::None,
                QuantizePerGroupArgs {
                    input: TensorRef::new(&x, [rows, cols]).unwrap(),
                    scale: TensorRef::new(&s, [rows, groups]).unwrap(),
                    zero_point: TensorRef::new(&z, [rows, groups]).unwrap(),
                    output: TensorMut::new(&mut want, [rows, cols / Q::PACK]).unwrap(),
                },
            )
            .unwrap();
        let plan =
            QuantizePerGroupPlan::<T, Q>::select_with_formula(gpu, &desc, f, Default::default())
                .unwrap();
        let mut dq = DeviceBuffer::<Q>::zeros(gpu, want.len()).unwrap();
        plan.run_device(
            gpu,
            Workspace::None,
            QuantizePerGroupDeviceArgs {
                input: dx.view([rows, cols]).unwrap(),
                scale: ds.view([rows, groups]).unwrap(),
                zero_point: dz.view([rows, groups]).unwrap(),
                output: dq.view_mut([rows, cols / Q::PACK]).unwrap(),
            },
        )
        .unwrap();
        assert!(
            bytes(&dq.to_vec(gpu).unwrap()) == bytes(&want),
            "{}→{} {rows}×{cols}/{gs} {f:?}",
            T::KIND,
            Q::KIND
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]
    #[test]
    fn formulas_on_caller_parameters(seed in any::<u64>(), rows in 1usize..4, groups in 1usize..4,
                                     gs in prop::sample::select(vec![1usize, 4, 32])) {
        let Some(gpu) = gpu() else { return Ok(()) };
        formula_case::<f32, i8>(gpu, seed, (rows, groups, gs));
        formula_case::<bf16, u8>(gpu, seed, (rows, groups, gs));
        formula_case::<f16, S4>(gpu, seed, (rows, groups, gs));
        formula_case::<f64, U4>(gpu, seed, (rows, groups, gs));
    }
}

/// Every f16 and bf16 bit pattern through the dynamic recipe plans (the
/// patterns in order, then shuffled so that groups mix magnitudes, NaN and
/// infinities included), device = scalar engine.
fn exhaustive_recipes<T: Element>(gpu: &Stream) {
    let natural: Vec<T> = (0..=u16::MAX).map(|b| from_bits(u64::from(b))).collect();
    let mut rng = Rng(0x5eed);
    let mut shuffled = natural.clone();
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let (cpu, pref) = scalar();
    let shape = (512, 128, 128);
    for x in [&natural, &shuffled] {
        for recipe in [
            Recipe::gptq(false, 4),
            Recipe::torchao(TorchaoMapping::Asymmetric, 0, 15),
            Recipe::compressed_tensors_w4a16(),
            Recipe::awq_f16(true, 4),
            Recipe::torch_per_token_asymmetric_int8(),
        ] {
            let recipe = recipe.with_non_finite(NonFinitePolicy::Propagate);
            let signed = recipe.q_min < 0;
            let (want, got) = if signed {
                (
                    recipe_run::<T, f32, i8>(&cpu, pref, x, shape, recipe),
                    recipe_run::<T, f32, i8>(gpu, Default::default(), x, shape, recipe),
                )
            } else {
                (
                    recipe_run::<T, T, u8>(&cpu, pref, x, shape, recipe),
                    recipe_run::<T, T, u8>(gpu, Default::default(), x, shape, recipe),
                )
            };
            let (want, got) = (want.unwrap(), got.unwrap());
            let what = format!("{} {recipe:?}", T::KIND);
            assert_eq!(got.0, want.0, "scales: {what}");
            assert_eq!(got.1, want.1, "zero points: {what}");
            assert!(got.2 == want.2, "codes: {what}");
        }
    }
}

#[test]
fn exhaustive_f16_recipes() {
    if let Some(gpu) = gpu() {
        exhaustive_recipes::<f16>(gpu);
    }
}

#[test]
fn exhaustive_bf16_recipes() {
    if let Some(gpu) = gpu() {
        exhaustive_recipes::<bf16>(gpu);
    }
}

/// One device stream used from several threads at once (plans, uploads and
/// downloads interleaved): every thread gets the CPU's bits.
#[test]
fn one_stream_from_several_threads() {
    let Some(gpu) = gpu() else { return };
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            scope.spawn(move || {
                for k in 0..3 {
                    let at = Placement {
                        offset: [t as usize, 1, 2],
                        pad: [k, 0, 1],
                    };
                    random_case::<f32, i8>(gpu, 1000 * t + k as u64, (3, 2, 32), at);
                    random_case::<bf16, U4>(gpu, 7 + t, (2, 3, 8), at);
                }
            });
        }
    });
}
