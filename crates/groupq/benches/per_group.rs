//! `cargo bench`: the per-group plans on a 4096 × 4096 matrix, group 128, on
//! all cores, each in a criterion group beside `copy`, a plain parallel copy
//! of the same number of bytes on the same threads (the bandwidth probe of
//! `groupq::bench_support`). Every benchmark in a group reports the same
//! byte throughput, so a kernel's fraction of the machine's streaming
//! bandwidth is its GB/s divided by the group's `copy` GB/s. The bench
//! example (`cargo run --release --example bench`) prints those fractions
//! directly, for more shapes and thread counts.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use groupq::bench_support::{synthetic_weights, Copier};
use groupq::half::{bf16, f16};
use groupq::*;
use std::hint::black_box;
use std::time::Duration;

const ROWS: usize = 4096;
const COLS: usize = 4096;
const GROUP: usize = 128;
const N: usize = ROWS * COLS;
const NG: usize = N / GROUP;

/// A group with the byte throughput of one run, and its `copy` baseline.
fn group<'c>(
    c: &'c mut Criterion,
    name: &str,
    stream: &Stream,
    bytes: usize,
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(bytes as u64))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut copier = Copier::new(stream, bytes / 2);
    g.bench_function("copy", |b| b.iter(|| copier.run()));
    g
}

fn quantize<T: Element>(c: &mut Criterion, stream: &Stream) {
    let (x, s, z) = (
        synthetic_weights::<T>(N, 1),
        vec![T::from_f64(0.01); NG],
        vec![0i32; NG],
    );
    let mut q = vec![0i8; N];
    let desc = QuantizePerGroupDescriptor {
        outer_size: ROWS,
        axis_size: COLS,
        group_size: GROUP,
        q_min: -8,
        q_max: 7,
        input_element: T::KIND,
        output_element: ElementKind::S8,
    };
    let plan = QuantizePerGroupPlan::<T, i8>::select(stream, &desc, Default::default()).unwrap();
    let bytes = N * T::KIND.size_bytes() + N + NG * (T::KIND.size_bytes() + 4);
    let mut g = group(c, &format!("quantize_{}_s8", T::KIND), stream, bytes);
    g.bench_function(plan.sku().backend.name(), |b| {
        b.iter(|| {
            let args = QuantizePerGroupArgs {
                input: TensorRef::new(&x, [ROWS, COLS]).unwrap(),
                scale: TensorRef::new(&s, [ROWS, COLS / GROUP]).unwrap(),
                zero_point: TensorRef::new(&z, [ROWS, COLS / GROUP]).unwrap(),
                output: TensorMut::new(&mut q, [ROWS, COLS]).unwrap(),
            };
            plan.run(stream, Workspace::None, args).unwrap();
            black_box(&q);
        })
    });
    g.finish();
}

fn dequantize<T: Element>(c: &mut Criterion, stream: &Stream) {
    let (q, s, z) = (vec![3i8; N], vec![T::from_f64(0.01); NG], vec![1i32; NG]);
    let mut y = vec![T::from_f64(0.0); N];
    let desc = DequantizePerGroupDescriptor {
        outer_size: ROWS,
        axis_size: COLS,
        group_size: GROUP,
        input_element: ElementKind::S8,
        output_element: T::KIND,
    };
    let plan = DequantizePerGroupPlan::<i8, T>::select(stream, &desc, Default::default()).unwrap();
    let bytes = N + N * T::KIND.size_bytes() + NG * (T::KIND.size_bytes() + 4);
    let mut g = group(c, &format!("dequantize_s8_{}", T::KIND), stream, bytes);
    g.bench_function(plan.sku().backend.name(), |b| {
        b.iter(|| {
            let args = DequantizePerGroupArgs {
                input: TensorRef::new(&q, [ROWS, COLS]).unwrap(),
                scale: TensorRef::new(&s, [ROWS, COLS / GROUP]).unwrap(),
                zero_point: TensorRef::new(&z, [ROWS, COLS / GROUP]).unwrap(),
                output: TensorMut::new(&mut y, [ROWS, COLS]).unwrap(),
            };
            plan.run(stream, Workspace::None, args).unwrap();
            black_box(&y);
        })
    });
    g.finish();
}

fn quantize_backward<T: Element>(c: &mut Criterion, stream: &Stream) {
    let (dy, x) = (synthetic_weights::<T>(N, 2), synthetic_weights::<T>(N, 3));
    let (s, z) = (vec![T::from_f64(0.01); NG], vec![0i32; NG]);
    let mut dx = vec![T::from_f64(0.0); N];
    let desc = QuantizePerGroupBackwardDescriptor {
        outer_size: ROWS,
        axis_size: COLS,
        group_size: GROUP,
        q_min: -8,
        q_max: 7,
        input_element: T::KIND,
        boundary: SteBoundary::Inclusive,
    };
    let plan =
        QuantizePerGroupBackwardPlan::<T>::select(stream, &desc, Default::default()).unwrap();
    let bytes = 3 * N * T::KIND.size_bytes() + NG * (T::KIND.size_bytes() + 4);
    let mut g = group(c, &format!("quantize_backward_{}", T::KIND), stream, bytes);
    g.bench_function(plan.sku().backend.name(), |b| {
        b.iter(|| {
            let args = QuantizePerGroupBackwardArgs {
                grad_output: TensorRef::new(&dy, [ROWS, COLS]).unwrap(),
                input: TensorRef::new(&x, [ROWS, COLS]).unwrap(),
                scale: TensorRef::new(&s, [ROWS, COLS / GROUP]).unwrap(),
                zero_point: TensorRef::new(&z, [ROWS, COLS / GROUP]).unwrap(),
                grad_input: TensorMut::new(&mut dx, [ROWS, COLS]).unwrap(),
            };
            plan.run(stream, Workspace::None, args).unwrap();
            black_box(&dx);
        })
    });
    g.finish();
}

fn dequantize_backward<T: Element>(c: &mut Criterion, stream: &Stream) {
    let (dy, s) = (synthetic_weights::<T>(N, 4), vec![T::from_f64(0.01); NG]);
    let mut dx = vec![T::from_f64(0.0); N];
    let desc = DequantizePerGroupBackwardDescriptor {
        outer_size: ROWS,
        axis_size: COLS,
        group_size: GROUP,
    };
    let plan =
        DequantizePerGroupBackwardPlan::<i8, T>::select(stream, &desc, Default::default()).unwrap();
    let bytes = 2 * N * T::KIND.size_bytes() + NG * T::KIND.size_bytes();
    let mut g = group(
        c,
        &format!("dequantize_backward_{}", T::KIND),
        stream,
        bytes,
    );
    g.bench_function(plan.sku().backend.name(), |b| {
        b.iter(|| {
            let args = DequantizePerGroupBackwardArgs {
                grad_output: TensorRef::new(&dy, [ROWS, COLS]).unwrap(),
                scale: TensorRef::new(&s, [ROWS, COLS / GROUP]).unwrap(),
                grad_input: TensorMut::new(&mut dx, [ROWS, COLS]).unwrap(),
            };
            plan.run(stream, Workspace::None, args).unwrap();
            black_box(&dx);
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let stream = Stream::cpu();
    quantize::<f32>(c, &stream);
    quantize::<bf16>(c, &stream);
    quantize::<f16>(c, &stream);
    quantize::<f64>(c, &stream);
    dequantize::<f32>(c, &stream);
    dequantize::<bf16>(c, &stream);
    dequantize::<f16>(c, &stream);
    quantize_backward::<f32>(c, &stream);
    quantize_backward::<bf16>(c, &stream);
    dequantize_backward::<bf16>(c, &stream);
}

criterion_group!(per_group, benches);
criterion_main!(per_group);
