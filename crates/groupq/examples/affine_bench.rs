//! The affine plans on LLM-sized tensors, as a fraction of the machine's
//! streaming bandwidth measured in the same run (a plain parallel copy of
//! the same bytes, timed in alternation with the kernel).
//!
//! ```text
//! cargo run --release -p groupq --example affine_bench [-- --threads N --reps R]
//! ```

use groupq::affine::{AffineFormula, Granularity, Shape};
use groupq::bench_support::{kernel_and_copy_seconds, synthetic_weights};
use groupq::half::bf16;
use groupq::*;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut threads, mut reps) = (
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        5,
    );
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => threads = args.next().and_then(|v| v.parse().ok()).unwrap_or(threads),
            "--reps" => reps = args.next().and_then(|v| v.parse().ok()).unwrap_or(reps),
            _ => {}
        }
    }
    let st = Stream::cpu_with_threads(threads)?;
    let (rows, cols) = (4096usize, 4096usize);
    let n = rows * cols;
    let x: Vec<bf16> = synthetic_weights(n, 1);
    let s: Vec<f32> = (0..rows).map(|i| 0.01 + i as f32 * 1e-6).collect();
    let z: Vec<i32> = (0..rows).map(|i| (i % 7) as i32 - 3).collect();
    println!("affine plans, {rows} × {cols}, {threads} thread(s), median of {reps}");
    println!("| plan | granularity | dtypes | GB/s | × copy |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, g: &str, types: &str, bytes: usize, f: &mut dyn FnMut()| {
        let (k, c) = kernel_and_copy_seconds(&st, bytes, reps, f);
        println!(
            "| {name} | {g} | {types} | {:.2} | {:.2} |",
            bytes as f64 / k / 1e9,
            c / k
        );
    };
    // Per channel (axis 0), PyTorch's quantized_decomposed formula.
    let desc = QuantizeAffineDescriptor {
        shape: Shape::new(&[rows, cols])?,
        granularity: Granularity::PerChannel { axis: 0 },
        q_min: -128,
        q_max: 127,
        formula: AffineFormula::TORCH_DECOMPOSED,
        input_element: ElementKind::Bf16,
        scale_element: ElementKind::F32,
        output_element: ElementKind::S8,
    };
    let plan = QuantizeAffinePlan::<bf16, f32, i8>::select(&st, &desc, Default::default())?;
    let mut q = vec![0i8; n];
    row(
        "QuantizeAffine",
        "per channel, axis 0",
        "bf16 → i8",
        3 * n,
        &mut || {
            plan.run(
                &st,
                Workspace::None,
                QuantizeAffineArgs {
                    input: TensorRef::new(&x, [rows, cols]).unwrap(),
                    scale: &s,
                    zero_point: ZeroPoints::Int(&z),
                    output: TensorMut::new(&mut q, [rows, cols]).unwrap(),
                },
            )
            .unwrap()
        },
    );
    // Per channel on the last axis: a parameter per element of a row.
    let sc: Vec<f32> = (0..cols).map(|i| 0.01 + i as f32 * 1e-6).collect();
    let zc: Vec<i32> = (0..cols).map(|i| (i % 7) as i32 - 3).collect();
    let desc1 = QuantizeAffineDescriptor {
        granularity: Granularity::PerChannel { axis: 1 },
        ..desc
    };
    let plan1 = QuantizeAffinePlan::<bf16, f32, i8>::select(&st, &desc1, Default::default())?;
    row(
        "QuantizeAffine",
        "per channel, axis 1",
        "bf16 → i8",
        3 * n,
        &mut || {
            plan1
                .run(
                    &st,
                    Workspace::None,
                    QuantizeAffineArgs {
                        input: TensorRef::new(&x, [rows, cols]).unwrap(),
                        scale: &sc,
                        zero_point: ZeroPoints::Int(&zc),
                        output: TensorMut::new(&mut q, [rows, cols]).unwrap(),
                    },
                )
                .unwrap()
        },
    );
    // Fake quantize per channel, with the mask.
    let fdesc = FakeQuantizeAffineDescriptor {
        shape: Shape::new(&[rows, cols])?,
        granularity: Granularity::PerChannel { axis: 0 },
        q_min: -128,
        q_max: 127,
        formula: AffineFormula::TORCH_FAKE_QUANTIZE_PER_CHANNEL,
        element: ElementKind::Bf16,
        scale_element: ElementKind::F32,
    };
    let fplan = FakeQuantizeAffinePlan::<bf16, f32>::select(&st, &fdesc, Default::default())?;
    let (mut y, mut mask) = (vec![bf16::ZERO; n], vec![false; n]);
    row(
        "FakeQuantizeAffine",
        "per channel, axis 0",
        "bf16 → bf16 + mask",
        5 * n,
        &mut || {
            fplan
                .run(
                    &st,
                    Workspace::None,
                    FakeQuantizeAffineArgs {
                        input: TensorRef::new(&x, [rows, cols]).unwrap(),
                        scale: &s,
                        zero_point: ZeroPoints::Int(&z),
                        output: TensorMut::new(&mut y, [rows, cols]).unwrap(),
                        mask: Some(TensorMut::new(&mut mask, [rows, cols]).unwrap()),
                    },
                )
                .unwrap()
        },
    );
    // Its gradient: the mask again, times dY.
    let bplan =
        FakeQuantizeAffineBackwardPlan::<bf16, f32>::select(&st, &fdesc, Default::default())?;
    let mut g = vec![bf16::ZERO; n];
    row(
        "FakeQuantizeAffineBackward",
        "per channel, axis 0",
        "bf16, bf16 → bf16",
        6 * n,
        &mut || {
            bplan
                .run(
                    &st,
                    Workspace::None,
                    FakeQuantizeAffineBackwardArgs {
                        grad_output: TensorRef::new(&y, [rows, cols]).unwrap(),
                        input: TensorRef::new(&x, [rows, cols]).unwrap(),
                        scale: &s,
                        zero_point: ZeroPoints::Int(&z),
                        grad_input: TensorMut::new(&mut g, [rows, cols]).unwrap(),
                    },
                )
                .unwrap()
        },
    );
    // Dequantize per channel to bf16 (f32 scales, f32 arithmetic).
    let qdesc = DequantizeAffineDescriptor {
        shape: Shape::new(&[rows, cols])?,
        granularity: Granularity::PerChannel { axis: 0 },
        formula: AffineFormula::TORCH_DECOMPOSED,
        input_element: ElementKind::S8,
        scale_element: ElementKind::F32,
        output_element: ElementKind::Bf16,
    };
    let qplan = DequantizeAffinePlan::<i8, f32, bf16>::select(&st, &qdesc, Default::default())?;
    row(
        "DequantizeAffine",
        "per channel, axis 0",
        "i8 → bf16",
        3 * n,
        &mut || {
            qplan
                .run(
                    &st,
                    Workspace::None,
                    DequantizeAffineArgs {
                        input: TensorRef::new(&q, [rows, cols]).unwrap(),
                        scale: &s,
                        zero_point: ZeroPoints::Int(&z),
                        output: TensorMut::new(&mut y, [rows, cols]).unwrap(),
                    },
                )
                .unwrap()
        },
    );
    // The straight-through gradient of SPEC's quantize, per channel.
    let sdesc = QuantizeAffineBackwardDescriptor {
        shape: Shape::new(&[rows, cols])?,
        granularity: Granularity::PerChannel { axis: 0 },
        q_min: -128,
        q_max: 127,
        formula: AffineFormula::SPEC,
        boundary: SteBoundary::Inclusive,
        element: ElementKind::Bf16,
        scale_element: ElementKind::F32,
    };
    let splan = QuantizeAffineBackwardPlan::<bf16, f32>::select(&st, &sdesc, Default::default())?;
    row(
        "QuantizeAffineBackward",
        "per channel, axis 0",
        "bf16, bf16 → bf16",
        6 * n,
        &mut || {
            splan
                .run(
                    &st,
                    Workspace::None,
                    QuantizeAffineBackwardArgs {
                        grad_output: TensorRef::new(&y, [rows, cols]).unwrap(),
                        input: TensorRef::new(&x, [rows, cols]).unwrap(),
                        scale: &s,
                        zero_point: ZeroPoints::Int(&z),
                        grad_input: TensorMut::new(&mut g, [rows, cols]).unwrap(),
                    },
                )
                .unwrap()
        },
    );
    // Dynamic per token (choose in bf16, quantize in f64).
    let ddesc = QuantizeDynamicAffineDescriptor::torch_per_token(&[rows, cols], ElementKind::Bf16)?;
    let dplan =
        QuantizeDynamicAffinePlan::<bf16, f64, i8>::select(&st, &ddesc, Default::default())?;
    let (mut ds, mut dz) = (vec![0f64; rows], vec![0i32; rows]);
    row(
        "QuantizeDynamicAffine",
        "per token",
        "bf16 → i8",
        3 * n,
        &mut || {
            dplan
                .run(
                    &st,
                    Workspace::None,
                    QuantizeDynamicAffineArgs {
                        input: TensorRef::new(&x, [rows, cols]).unwrap(),
                        scale: &mut ds,
                        zero_point: &mut dz,
                        output: TensorMut::new(&mut q, [rows, cols]).unwrap(),
                    },
                )
                .unwrap()
        },
    );
    Ok(())
}
