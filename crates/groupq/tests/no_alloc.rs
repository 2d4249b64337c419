//! `run` allocates nothing, on any thread: a counting global allocator
//! watches every plan (the recipe plans included) on a latency-sized problem
//! (1 × 4096) and on one large enough to be split over the pool, on a
//! two-thread stream. Every thread's allocations count while a plan runs,
//! the pool's workers included (this file holds one test, so no other test
//! runs meanwhile).

use groupq::half::bf16;
use groupq::recipe::Recipe;
use groupq::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
/// While set, every thread's allocations are counted.
static COUNTING: AtomicBool = AtomicBool::new(false);

// SAFETY: defers every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::SeqCst) {
            ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by any thread while `f` runs.
fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

fn check(rows: usize, cols: usize, stream: &Stream) {
    let group = 128;
    let (n, ng) = (rows * cols, rows * cols / group);
    let p = [rows, cols / group];
    let x = vec![bf16::from_f32(0.3); n];
    let s = vec![bf16::from_f32(0.01); ng];
    let z = vec![1i32; ng];
    let mut q = vec![0i8; n];
    let mut y = vec![bf16::ZERO; n];
    let mut q2 = vec![0i8; n];

    let forward = QuantizePerGroupPlan::<bf16, i8>::select(
        stream,
        &QuantizePerGroupDescriptor {
            outer_size: rows,
            axis_size: cols,
            group_size: group,
            q_min: -8,
            q_max: 7,
            input_element: ElementKind::Bf16,
            output_element: ElementKind::S8,
        },
        Default::default(),
    )
    .unwrap();
    let inverse = DequantizePerGroupPlan::<i8, bf16>::select(
        stream,
        &DequantizePerGroupDescriptor {
            outer_size: rows,
            axis_size: cols,
            group_size: group,
            input_element: ElementKind::S8,
            output_element: ElementKind::Bf16,
        },
        Default::default(),
    )
    .unwrap();
    let backward = QuantizePerGroupBackwardPlan::<bf16>::select(
        stream,
        &QuantizePerGroupBackwardDescriptor {
            outer_size: rows,
            axis_size: cols,
            group_size: group,
            q_min: -8,
            q_max: 7,
            input_element: ElementKind::Bf16,
            boundary: SteBoundary::Exclusive,
        },
        Default::default(),
    )
    .unwrap();
    let inverse_backward = DequantizePerGroupBackwardPlan::<i8, bf16>::select(
        stream,
        &DequantizePerGroupBackwardDescriptor {
            outer_size: rows,
            axis_size: cols,
            group_size: group,
        },
        Default::default(),
    )
    .unwrap();

    let mut dynamic_plans = Vec::new();
    for recipe in [
        Recipe::compressed_tensors_w4a16(),
        Recipe::gptq(false, 4),
        Recipe::awq_f16(true, 4),
        Recipe::gguf_q4_0(),
    ] {
        let desc = QuantizeDynamicPerGroupDescriptor {
            outer_size: rows,
            axis_size: cols,
            group_size: group,
            recipe: Recipe {
                q_min: -8,
                q_max: 7,
                ..recipe
            },
            input_element: ElementKind::Bf16,
            scale_element: ElementKind::Bf16,
            output_element: ElementKind::S8,
        };
        dynamic_plans.push(
            QuantizeDynamicPerGroupPlan::<bf16, bf16, i8>::select(
                stream,
                &desc,
                Default::default(),
            )
            .unwrap(),
        );
    }
    let choose = ChooseQParamsPerGroupPlan::<bf16, bf16>::select(
        stream,
        &ChooseQParamsPerGroupDescriptor {
            outer_size: rows,
            axis_size: cols,
            group_size: group,
            recipe: Recipe::compressed_tensors_w4a16(),
            input_element: ElementKind::Bf16,
            scale_element: ElementKind::Bf16,
        },
        Default::default(),
    )
    .unwrap();
    let (mut s2, mut z2) = (vec![bf16::ZERO; ng], vec![0i32; ng]);

    // Warm up once: the pool's threads and queues exist before counting.
    for counted in [false, true] {
        let mut run = || {
            let args = QuantizePerGroupArgs {
                input: TensorRef::new(&x, [rows, cols]).unwrap(),
                scale: TensorRef::new(&s, p).unwrap(),
                zero_point: TensorRef::new(&z, p).unwrap(),
                output: TensorMut::new(&mut q, [rows, cols]).unwrap(),
            };
            forward.run(stream, Workspace::None, args).unwrap();
            let args = DequantizePerGroupArgs {
                input: TensorRef::new(&q, [rows, cols]).unwrap(),
                scale: TensorRef::new(&s, p).unwrap(),
                zero_point: TensorRef::new(&z, p).unwrap(),
                output: TensorMut::new(&mut y, [rows, cols]).unwrap(),
            };
            inverse.run(stream, Workspace::None, args).unwrap();
            let args = QuantizePerGroupBackwardArgs {
                grad_output: TensorRef::new(&x, [rows, cols]).unwrap(),
                input: TensorRef::new(&x, [rows, cols]).unwrap(),
                scale: TensorRef::new(&s, p).unwrap(),
                zero_point: TensorRef::new(&z, p).unwrap(),
                grad_input: TensorMut::new(&mut y, [rows, cols]).unwrap(),
            };
            backward.run(stream, Workspace::None, args).unwrap();
            let args = DequantizePerGroupBackwardArgs {
                grad_output: TensorRef::new(&x, [rows, cols]).unwrap(),
                scale: TensorRef::new(&s, p).unwrap(),
                grad_input: TensorMut::new(&mut y, [rows, cols]).unwrap(),
            };
            inverse_backward.run(stream, Workspace::None, args).unwrap();
            for plan in &dynamic_plans {
                let args = QuantizeDynamicPerGroupArgs {
                    input: TensorRef::new(&x, [rows, cols]).unwrap(),
                    scale: TensorMut::new(&mut s2, p).unwrap(),
                    zero_point: TensorMut::new(&mut z2, p).unwrap(),
                    output: TensorMut::new(&mut q2, [rows, cols]).unwrap(),
                };
                plan.run(stream, Workspace::None, args).unwrap();
            }
            let args = ChooseQParamsPerGroupArgs {
                input: TensorRef::new(&x, [rows, cols]).unwrap(),
                scale: TensorMut::new(&mut s2, p).unwrap(),
                zero_point: TensorMut::new(&mut z2, p).unwrap(),
            };
            choose.run(stream, Workspace::None, args).unwrap();
        };
        if counted {
            let n = allocations_in(run);
            assert_eq!(n, 0, "{rows} × {cols}: run allocated {n} times");
        } else {
            run();
        }
    }
    assert!(q.iter().all(|&c| c == 7), "the plans ran");
}

#[test]
fn run_does_not_allocate() {
    let stream = Stream::cpu_with_threads(2).unwrap();
    // The pool's workers start asynchronously, and a thread's start-up
    // allocates: the large problem (whose warm-up runs on the workers) goes
    // first, and the workers get time to settle, so that no start-up falls
    // into a counted run of the small problem, which stays on this thread.
    std::thread::sleep(std::time::Duration::from_millis(50));
    check(256, 4096, &stream);
    std::thread::sleep(std::time::Duration::from_millis(50));
    check(1, 4096, &stream);
    check(1, 4096, &Stream::cpu_with_threads(1).unwrap());
}
