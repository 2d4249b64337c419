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
use std::sync::OnceLock;

/// The shared device stream, or `None` (skip) without an adapter.
fn gpu() -> Option<&'static Stream> {
    static STREAM: OnceLock<Option<Stream>> = OnceLock::new();
    STREAM
        .get_or_init(|| match Stream::wgpu() {
            Ok(s) => {
                eprintln!("GPU tests on {:?}", s.device_name().unwrap_or_default());
                Some(s)
            }
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("CI needs a GPU adapter for the device tests: {e}")
            }
            Err(e) => {
                eprintln!("skipping GPU tests: {e}");
                None
            }
        })
        .as_ref()
}

/// The reference: the scalar backend on one CPU thread.
fn scalar() -> (Stream, PlanPreference) {
    let pref = PlanPreference {
        prefer_backend: Some(BackendKind::Scalar),
        ..Default::default()
    };
    (Stream::cpu_with_threads(1).unwrap(), pref)
}

fn bytes<T: DeviceElement>(v: &[T]) -> Vec<u8> {
    let mut out = vec![0u8; v.len() * T::BYTES];
    for (x, o) in v.iter().zip(out.chunks_exact_mut(T::BYTES)) {
        x.store(o);
    }
    out
}

/// A value from raw bits (NaN payloads, subnormals, infinities included).
fn from_bits<T: DeviceElement>(bits: u64) -> T {
    T::load(&bits.to_le_bytes()[..T::BYTES])
}

/// Inputs where the arithmetic is decided: raw bit patterns, exact ties
/// and near-ties at several scales, zeros, extremes.
fn value<T: Element + DeviceElement>(r: u64) -> T {
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
fn scale<T: Element + DeviceElement>(r: u64) -> T {
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
fn check_quantize<T: Element + DeviceElement, Q: IntElement + DeviceElement>(
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
fn check_inverse_and_gradients<T: Element + DeviceElement, Q: IntElement + DeviceElement>(
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
fn random_case<T: Element + DeviceElement, Q: IntElement + DeviceElement>(
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
    let z = if rng.next().is_multiple_of(2) { &z } else { &z_small };
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
fn exhaustive<T: Element + DeviceElement>(gpu: &Stream) {
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
