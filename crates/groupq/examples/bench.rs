//! The benchmark table: every plan of the per-group family on LLM-sized
//! shapes, as a fraction of the machine's streaming bandwidth measured in the
//! same run, and as a speed-up over the scalar reference.
//!
//! ```text
//! cargo run --release -p groupq --example bench                 # the full table
//! cargo run --release -p groupq --example bench -- --quick      # one shape, one rep
//! cargo run --release -p groupq --example bench -- --filter bf16 --threads 2
//! cargo run --release -p groupq --features wgpu --example bench -- --device   # + the GPU column
//! ```
//!
//! "device GB/s" (with `--device`, feature `wgpu`) times the same plan on
//! the default GPU adapter: inputs already in device memory, `run_device`
//! plus `synchronize`, the same bytes counted. On Mesa's lavapipe (Vulkan on
//! the CPU) it is a smoke test of the device path, not a speed claim.
//!
//! GB/s counts the bytes each run reads and writes (data, scales and zero
//! points). "× copy" divides that by the rate of a plain parallel copy of the
//! same number of bytes on the same threads, timed in alternation with the
//! kernel (kernel sample, copy sample, …) so that both see the same machine;
//! "vs scalar" is the speed-up over the same plan pinned to the scalar
//! backend. Every figure is the median of `--reps` timed samples.

use groupq::bench_support::{
    copy_bandwidth, kernel_and_copy_seconds, seconds_per_run, synthetic_weights,
};
use groupq::half::{bf16, f16};
use groupq::*;

struct Options {
    quick: bool,
    /// Skip the scalar-backend timing (the "vs scalar" column shows 0).
    no_scalar: bool,
    reps: usize,
    filter: Option<String>,
    threads: Vec<usize>,
    /// Also time the SPEC plans on the default GPU adapter.
    device: bool,
}

fn parse() -> std::result::Result<Options, String> {
    let mut o = Options {
        quick: false,
        no_scalar: false,
        reps: 5,
        filter: None,
        threads: vec![1, 2],
        device: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--no-scalar" => o.no_scalar = true,
            "--device" => o.device = true,
            "--quick" => {
                o.quick = true;
                o.reps = 1;
            }
            "--reps" => o.reps = args.next().and_then(|v| v.parse().ok()).ok_or("--reps N")?,
            "--filter" => o.filter = Some(args.next().ok_or("--filter TEXT")?),
            "--threads" => {
                let v = args.next().ok_or("--threads N[,N...]")?;
                o.threads = v
                    .split(',')
                    .map(|t| t.parse().map_err(|_| format!("bad thread count {t}")))
                    .collect::<std::result::Result<_, _>>()?;
            }
            "-h" | "--help" => return Err(
                "usage: bench [--quick] [--no-scalar] [--device] [--reps N] [--filter TEXT] [--threads 1,2]"
                    .into(),
            ),
            other => return Err(format!("unknown option {other} (try --help)")),
        }
    }
    Ok(o)
}

/// One measured configuration.
struct Row {
    plan: &'static str,
    dtypes: String,
    shape: (usize, usize),
    group: usize,
    threads: usize,
    backend: BackendKind,
    gbps: f64,
    of_copy: f64,
    vs_scalar: f64,
    /// GB/s of the same plan on the GPU stream, where measured.
    device_gbps: Option<f64>,
}

struct Bench {
    o: Options,
    rows: Vec<Row>,
    /// The GPU stream of `--device`, and the device timings by row key.
    device: Option<Stream>,
    device_times: std::collections::HashMap<String, f64>,
}

impl Bench {
    fn wanted(&self, name: &str) -> bool {
        self.o
            .filter
            .as_ref()
            .is_none_or(|f| name.contains(f.as_str()))
    }

    /// Times the plan `select` gives with no preference and pinned to the
    /// scalar backend, then a copy of the same bytes, and records the row.
    #[allow(clippy::too_many_arguments)]
    fn measure<P>(
        &mut self,
        plan: &'static str,
        dtypes: String,
        shape: (usize, usize),
        group: usize,
        stream: &Stream,
        bytes: usize,
        select: impl Fn(PlanPreference) -> Result<P>,
        sku: impl Fn(&P) -> KernelSku,
        mut run: impl FnMut(&P),
        device: impl FnOnce(&Stream, usize) -> Option<f64>,
    ) -> Result<()> {
        let reps = self.o.reps;
        let key = format!("{plan} {dtypes} {shape:?} {group}");
        let device_seconds = match (&self.device, self.device_times.get(&key)) {
            (_, Some(&t)) => Some(t),
            (Some(gpu), None) => device(gpu, reps),
            (None, None) => None,
        };
        if let Some(t) = device_seconds {
            self.device_times.insert(key, t);
        }
        let best = select(PlanPreference::default())?;
        let scalar = select(PlanPreference {
            prefer_backend: Some(BackendKind::Scalar),
            ..Default::default()
        })?;
        let (t, t_copy) = kernel_and_copy_seconds(stream, bytes, reps, || run(&best));
        let t_scalar = if self.o.no_scalar {
            0.0
        } else {
            seconds_per_run(bytes, reps, || run(&scalar))
        };
        let gbps = bytes as f64 / t / 1e9;
        let row = Row {
            plan,
            dtypes,
            shape,
            group,
            threads: stream.threads(),
            backend: sku(&best).backend,
            gbps,
            of_copy: t_copy / t,
            vs_scalar: t_scalar / t,
            device_gbps: device_seconds.map(|t| bytes as f64 / t / 1e9),
        };
        print_row(&row);
        self.rows.push(row);
        Ok(())
    }

    fn forward<T: Element, Q: IntElement>(
        &mut self,
        (rows, cols): (usize, usize),
        group: usize,
        stream: &Stream,
    ) -> Result<()> {
        let dtypes = format!("{}->{}", T::KIND, Q::KIND);
        if !self.wanted(&format!("quantize {dtypes}")) {
            return Ok(());
        }
        let (n, ng) = (rows * cols, rows * cols / group);
        let (x, s, z) = (
            synthetic_weights::<T>(n, 1),
            vec![T::from_f64(0.06 / 7.0); ng],
            vec![0i32; ng],
        );
        let mut q = vec![Q::default(); n];
        let desc = QuantizePerGroupDescriptor {
            outer_size: rows,
            axis_size: cols,
            group_size: group,
            q_min: Q::MIN.max(-8),
            q_max: Q::MAX.min(15),
            input_element: T::KIND,
            output_element: Q::KIND,
        };
        let bytes = n * T::KIND.size_bytes() + n + ng * (T::KIND.size_bytes() + 4);
        let p = [rows, cols / group];
        self.measure(
            "quantize",
            dtypes,
            (rows, cols),
            group,
            stream,
            bytes,
            |pref| QuantizePerGroupPlan::<T, Q>::select(stream, &desc, pref),
            |plan| plan.sku(),
            |plan| {
                let args = QuantizePerGroupArgs {
                    input: TensorRef::new(&x, [rows, cols]).unwrap(),
                    scale: TensorRef::new(&s, p).unwrap(),
                    zero_point: TensorRef::new(&z, p).unwrap(),
                    output: TensorMut::new(&mut q, [rows, cols]).unwrap(),
                };
                plan.run(stream, Workspace::None, args).unwrap()
            },
            |gpu, reps| gpu_bench::forward::<T, Q>(gpu, &desc, &x, &s, &z, reps),
        )
    }

    fn dequantize<Q: IntElement, T: Element>(
        &mut self,
        (rows, cols): (usize, usize),
        group: usize,
        stream: &Stream,
    ) -> Result<()> {
        let dtypes = format!("{}->{}", Q::KIND, T::KIND);
        if !self.wanted(&format!("dequantize {dtypes}")) {
            return Ok(());
        }
        let (n, ng) = (rows * cols, rows * cols / group);
        let q: Vec<Q> = vec![Q::default(); n];
        let (s, z) = (vec![T::from_f64(0.06 / 7.0); ng], vec![3i32; ng]);
        let mut y = vec![T::from_f64(0.0); n];
        let desc = DequantizePerGroupDescriptor {
            outer_size: rows,
            axis_size: cols,
            group_size: group,
            input_element: Q::KIND,
            output_element: T::KIND,
        };
        let bytes = n + n * T::KIND.size_bytes() + ng * (T::KIND.size_bytes() + 4);
        let p = [rows, cols / group];
        self.measure(
            "dequantize",
            dtypes,
            (rows, cols),
            group,
            stream,
            bytes,
            |pref| DequantizePerGroupPlan::<Q, T>::select(stream, &desc, pref),
            |plan| plan.sku(),
            |plan| {
                let args = DequantizePerGroupArgs {
                    input: TensorRef::new(&q, [rows, cols]).unwrap(),
                    scale: TensorRef::new(&s, p).unwrap(),
                    zero_point: TensorRef::new(&z, p).unwrap(),
                    output: TensorMut::new(&mut y, [rows, cols]).unwrap(),
                };
                plan.run(stream, Workspace::None, args).unwrap()
            },
            |gpu, reps| gpu_bench::dequantize::<Q, T>(gpu, &desc, &q, &s, &z, reps),
        )
    }

    fn quantize_backward<T: Element>(
        &mut self,
        (rows, cols): (usize, usize),
        group: usize,
        stream: &Stream,
    ) -> Result<()> {
        let dtypes = format!("{}", T::KIND);
        if !self.wanted(&format!("quantize_backward {dtypes}")) {
            return Ok(());
        }
        let (n, ng) = (rows * cols, rows * cols / group);
        let (dy, x) = (synthetic_weights::<T>(n, 2), synthetic_weights::<T>(n, 3));
        let (s, z) = (vec![T::from_f64(0.06 / 7.0); ng], vec![0i32; ng]);
        let mut dx = vec![T::from_f64(0.0); n];
        let desc = QuantizePerGroupBackwardDescriptor {
            outer_size: rows,
            axis_size: cols,
            group_size: group,
            q_min: -8,
            q_max: 7,
            input_element: T::KIND,
            boundary: SteBoundary::Inclusive,
        };
        let bytes = 3 * n * T::KIND.size_bytes() + ng * (T::KIND.size_bytes() + 4);
        let p = [rows, cols / group];
        self.measure(
            "quantize_backward",
            dtypes,
            (rows, cols),
            group,
            stream,
            bytes,
            |pref| QuantizePerGroupBackwardPlan::<T>::select(stream, &desc, pref),
            |plan| plan.sku(),
            |plan| {
                let args = QuantizePerGroupBackwardArgs {
                    grad_output: TensorRef::new(&dy, [rows, cols]).unwrap(),
                    input: TensorRef::new(&x, [rows, cols]).unwrap(),
                    scale: TensorRef::new(&s, p).unwrap(),
                    zero_point: TensorRef::new(&z, p).unwrap(),
                    grad_input: TensorMut::new(&mut dx, [rows, cols]).unwrap(),
                };
                plan.run(stream, Workspace::None, args).unwrap()
            },
            |gpu, reps| gpu_bench::quantize_backward::<T>(gpu, &desc, [&dy, &x, &s], &z, reps),
        )
    }

    fn dequantize_backward<T: Element>(
        &mut self,
        (rows, cols): (usize, usize),
        group: usize,
        stream: &Stream,
    ) -> Result<()> {
        let dtypes = format!("s8->{}", T::KIND);
        if !self.wanted(&format!("dequantize_backward {dtypes}")) {
            return Ok(());
        }
        let (n, ng) = (rows * cols, rows * cols / group);
        let (dy, s) = (
            synthetic_weights::<T>(n, 4),
            vec![T::from_f64(0.06 / 7.0); ng],
        );
        let mut dx = vec![T::from_f64(0.0); n];
        let desc = DequantizePerGroupBackwardDescriptor {
            outer_size: rows,
            axis_size: cols,
            group_size: group,
        };
        let bytes = 2 * n * T::KIND.size_bytes() + ng * T::KIND.size_bytes();
        let p = [rows, cols / group];
        self.measure(
            "dequantize_backward",
            dtypes,
            (rows, cols),
            group,
            stream,
            bytes,
            |pref| DequantizePerGroupBackwardPlan::<i8, T>::select(stream, &desc, pref),
            |plan| plan.sku(),
            |plan| {
                let args = DequantizePerGroupBackwardArgs {
                    grad_output: TensorRef::new(&dy, [rows, cols]).unwrap(),
                    scale: TensorRef::new(&s, p).unwrap(),
                    grad_input: TensorMut::new(&mut dx, [rows, cols]).unwrap(),
                };
                plan.run(stream, Workspace::None, args).unwrap()
            },
            |gpu, reps| gpu_bench::dequantize_backward::<T>(gpu, &desc, &dy, &s, reps),
        )
    }

    /// A preset's dynamic plan (scales, zero points and codes in one pass)
    /// on `TIn` weights, with scales `S` and codes `Q` (packed for S4/U4).
    #[allow(clippy::too_many_arguments)]
    fn dynamic<TIn: Element, S: Element, Q: IntElement>(
        &mut self,
        name: &'static str,
        recipe: groupq::recipe::Recipe,
        (rows, cols): (usize, usize),
        group: usize,
        stream: &Stream,
    ) -> Result<()> {
        let dtypes = format!("{}->{}", TIn::KIND, Q::KIND);
        if !self.wanted(&format!("{name} {dtypes}")) {
            return Ok(());
        }
        let (n, ng) = (rows * cols, rows * cols / group);
        let x = synthetic_weights::<TIn>(n, 5);
        let with_offset = recipe.zero_point == groupq::recipe::ZeroPointRule::FloatOffset;
        let (mut s, mut z, mut q, mut m) = (
            vec![S::from_f64(0.0); ng],
            vec![0i32; ng],
            vec![Q::default(); n / Q::PACK],
            vec![S::from_f64(0.0); ng],
        );
        let desc = QuantizeDynamicPerGroupDescriptor {
            outer_size: rows,
            axis_size: cols,
            group_size: group,
            recipe,
            input_element: TIn::KIND,
            scale_element: S::KIND,
            output_element: Q::KIND,
        };
        let params = if with_offset { 2 } else { 1 } * S::KIND.size_bytes() + 4;
        let bytes = TIn::KIND.size_bytes() * n + n / Q::PACK + ng * params;
        let p = [rows, cols / group];
        self.measure(
            name,
            dtypes,
            (rows, cols),
            group,
            stream,
            bytes,
            |pref| QuantizeDynamicPerGroupPlan::<TIn, S, Q>::select(stream, &desc, pref),
            |plan| plan.sku(),
            |plan| {
                let args = QuantizeDynamicPerGroupArgs {
                    input: TensorRef::new(&x, [rows, cols]).unwrap(),
                    scale: TensorMut::new(&mut s, p).unwrap(),
                    zero_point: TensorMut::new(&mut z, p).unwrap(),
                    output: TensorMut::new(&mut q, [rows, cols / Q::PACK]).unwrap(),
                };
                if with_offset {
                    let m = TensorMut::new(&mut m, p).unwrap();
                    plan.run_with_offset(stream, Workspace::None, args, m)
                        .unwrap()
                } else {
                    plan.run(stream, Workspace::None, args).unwrap()
                }
            },
            |gpu, reps| gpu_bench::dynamic::<TIn, S, Q>(gpu, &desc, &x, reps),
        )
    }

    /// `ChooseQParamsPerGroupPlan` alone (scales and zero points).
    fn choose<TIn: Element, S: Element>(
        &mut self,
        name: &'static str,
        recipe: groupq::recipe::Recipe,
        (rows, cols): (usize, usize),
        group: usize,
        stream: &Stream,
    ) -> Result<()> {
        let dtypes = format!("{}->{}", TIn::KIND, S::KIND);
        if !self.wanted(&format!("{name} {dtypes}")) {
            return Ok(());
        }
        let (n, ng) = (rows * cols, rows * cols / group);
        let x = synthetic_weights::<TIn>(n, 5);
        let (mut s, mut z) = (vec![S::from_f64(0.0); ng], vec![0i32; ng]);
        let desc = ChooseQParamsPerGroupDescriptor {
            outer_size: rows,
            axis_size: cols,
            group_size: group,
            recipe,
            input_element: TIn::KIND,
            scale_element: S::KIND,
        };
        let bytes = TIn::KIND.size_bytes() * n + ng * (S::KIND.size_bytes() + 4);
        let p = [rows, cols / group];
        self.measure(
            name,
            dtypes,
            (rows, cols),
            group,
            stream,
            bytes,
            |pref| ChooseQParamsPerGroupPlan::<TIn, S>::select(stream, &desc, pref),
            |plan| plan.sku(),
            |plan| {
                let args = ChooseQParamsPerGroupArgs {
                    input: TensorRef::new(&x, [rows, cols]).unwrap(),
                    scale: TensorMut::new(&mut s, p).unwrap(),
                    zero_point: TensorMut::new(&mut z, p).unwrap(),
                };
                plan.run(stream, Workspace::None, args).unwrap()
            },
            |_, _| None,
        )
    }

    /// Every preset's dynamic plan: bf16 weights in groups of 128 (f32 in
    /// groups of 32 for ggml's), codes one per byte and packed.
    fn presets(&mut self, shape: (usize, usize), stream: &Stream) -> Result<()> {
        use groupq::recipe::{Recipe, TorchaoMapping};
        let g = 128;
        let ct = Recipe::compressed_tensors_w4a16();
        let ct_asym = Recipe::compressed_tensors_w4a16_asym();
        self.dynamic::<bf16, bf16, i8>("dynamic ct w4a16", ct, shape, g, stream)?;
        self.dynamic::<bf16, bf16, S4>("dynamic ct w4a16", ct, shape, g, stream)?;
        self.dynamic::<bf16, bf16, i8>("dynamic ct w4a16 asym", ct_asym, shape, g, stream)?;
        self.dynamic::<bf16, f32, u8>("dynamic gptq sym", Recipe::gptq(true, 4), shape, g, stream)?;
        self.dynamic::<bf16, f32, u8>("dynamic gptq", Recipe::gptq(false, 4), shape, g, stream)?;
        self.dynamic::<bf16, f32, U4>("dynamic gptq", Recipe::gptq(false, 4), shape, g, stream)?;
        self.dynamic::<bf16, bf16, u8>("dynamic awq", Recipe::awq(true, 4), shape, g, stream)?;
        self.dynamic::<bf16, f16, u8>(
            "dynamic awq f16",
            Recipe::awq_f16(true, 4),
            shape,
            g,
            stream,
        )?;
        let int4 = Recipe::torchao(TorchaoMapping::Asymmetric, 0, 15);
        let int8 = Recipe::torchao(TorchaoMapping::Symmetric, -128, 127);
        self.dynamic::<bf16, bf16, u8>("dynamic torchao int4", int4, shape, g, stream)?;
        self.dynamic::<bf16, bf16, i8>("dynamic torchao int8", int8, shape, g, stream)?;
        let g = 32;
        self.dynamic::<f32, f16, i8>("dynamic gguf q8_0", Recipe::gguf_q8_0(), shape, g, stream)?;
        self.dynamic::<f32, f16, u8>("dynamic gguf q4_0", Recipe::gguf_q4_0(), shape, g, stream)?;
        self.dynamic::<f32, f16, U4>("dynamic gguf q4_0", Recipe::gguf_q4_0(), shape, g, stream)?;
        self.dynamic::<f32, f16, u8>("dynamic gguf q4_1", Recipe::gguf_q4_1(), shape, g, stream)?;
        self.choose::<bf16, bf16>("choose ct w4a16", ct, shape, 128, stream)?;
        self.choose::<bf16, f32>("choose gptq", Recipe::gptq(false, 4), shape, 128, stream)?;
        Ok(())
    }

    /// Every plan and dtype on every shape, group size and thread count.
    fn run_all(&mut self) -> Result<()> {
        let shapes: &[(usize, usize)] = if self.o.quick {
            &[(4096, 4096), (1, 4096)]
        } else {
            &[(4096, 4096), (11008, 4096), (1, 4096)]
        };
        let groups: &[usize] = if self.o.quick { &[128] } else { &[32, 64, 128] };
        for threads in self.o.threads.clone() {
            let stream = Stream::cpu_with_threads(threads)?;
            for &shape in shapes {
                for &g in groups {
                    self.forward::<f32, i8>(shape, g, &stream)?;
                    self.forward::<bf16, i8>(shape, g, &stream)?;
                    self.forward::<f16, i8>(shape, g, &stream)?;
                    self.forward::<f64, i8>(shape, g, &stream)?;
                }
                let g = 128;
                self.forward::<f32, u8>(shape, g, &stream)?;
                self.forward::<bf16, u8>(shape, g, &stream)?;
                self.dequantize::<i8, f32>(shape, g, &stream)?;
                self.dequantize::<i8, bf16>(shape, g, &stream)?;
                self.dequantize::<i8, f16>(shape, g, &stream)?;
                self.dequantize::<i8, f64>(shape, g, &stream)?;
                self.dequantize::<u8, bf16>(shape, g, &stream)?;
                self.quantize_backward::<f32>(shape, g, &stream)?;
                self.quantize_backward::<bf16>(shape, g, &stream)?;
                self.quantize_backward::<f16>(shape, g, &stream)?;
                self.quantize_backward::<f64>(shape, g, &stream)?;
                self.dequantize_backward::<f32>(shape, g, &stream)?;
                self.dequantize_backward::<bf16>(shape, g, &stream)?;
                self.dequantize_backward::<f16>(shape, g, &stream)?;
                self.dequantize_backward::<f64>(shape, g, &stream)?;
                self.presets(shape, &stream)?;
            }
        }
        Ok(())
    }

    /// The issue's targets, checked on the rows measured (group 128,
    /// 4096 × 4096 and larger unless stated).
    fn targets(&self) {
        let big = |r: &&Row| {
            r.shape.0 * r.shape.1 >= 4096 * 4096 && (r.group == 128 || r.plan.contains("gguf"))
        };
        type Pick = dyn Fn(&Row) -> bool;
        let checks: Vec<(&str, f64, Box<Pick>)> = vec![
            (
                "quantize f32->s8, 2 threads",
                0.80,
                Box::new(|r| r.plan == "quantize" && r.dtypes == "f32->s8" && r.threads == 2),
            ),
            (
                "quantize bf16/f16->s8, 2 threads",
                0.70,
                Box::new(|r| {
                    r.plan == "quantize"
                        && (r.dtypes == "bf16->s8" || r.dtypes == "f16->s8")
                        && r.threads == 2
                }),
            ),
            (
                "dequantize s8->f32/bf16/f16, 2 threads",
                0.70,
                Box::new(|r| {
                    r.plan == "dequantize"
                        && r.dtypes.starts_with("s8->")
                        && !r.dtypes.ends_with("f64")
                        && r.threads == 2
                }),
            ),
            (
                "backward plans (not f64), 2 threads",
                0.70,
                Box::new(|r| {
                    r.plan.ends_with("backward") && !r.dtypes.ends_with("f64") && r.threads == 2
                }),
            ),
            (
                "quantize (not f64), 1 thread",
                0.45,
                Box::new(|r| {
                    r.plan == "quantize" && !r.dtypes.starts_with("f64") && r.threads == 1
                }),
            ),
            (
                "every preset's dynamic plan, codes per byte, 2 threads",
                0.50,
                Box::new(|r| {
                    r.plan.starts_with("dynamic")
                        && !r.dtypes.ends_with("s4")
                        && !r.dtypes.ends_with("u4")
                        && r.threads == 2
                }),
            ),
            (
                "dynamic plans, packed s4/u4, 2 threads",
                0.45,
                Box::new(|r| {
                    r.plan.starts_with("dynamic")
                        && (r.dtypes.ends_with("s4") || r.dtypes.ends_with("u4"))
                        && r.threads == 2
                }),
            ),
            (
                "ChooseQParamsPerGroupPlan, 2 threads",
                0.60,
                Box::new(|r| r.plan.starts_with("choose") && r.threads == 2),
            ),
            (
                "f64 plans, 2 threads",
                0.50,
                Box::new(|r| {
                    (r.dtypes.starts_with("f64") || r.dtypes.ends_with("f64")) && r.threads == 2
                }),
            ),
        ];
        println!("\nTargets (fraction of the same-run copy bandwidth, worst row):");
        for (name, target, pick) in &checks {
            let worst = self
                .rows
                .iter()
                .filter(big)
                .filter(|r| pick(r))
                .map(|r| r.of_copy)
                .fold(f64::INFINITY, f64::min);
            if worst.is_finite() {
                let verdict = if worst >= *target { "met" } else { "MISSED" };
                println!("- {name}: {worst:.2} (target {target:.2}) {verdict}");
            }
        }
        let latency = self
            .rows
            .iter()
            // Issue 3's latency target is the four SPEC plans'; the recipe
            // plans' rows are listed above, not judged by it.
            .filter(|r| r.shape == (1, 4096))
            .filter(|r| !r.plan.starts_with("dynamic") && !r.plan.starts_with("choose"))
            .map(|r| r.of_copy)
            .fold(f64::INFINITY, f64::min);
        if latency.is_finite() {
            let verdict = if latency >= 1.0 / 3.0 {
                "met"
            } else {
                "MISSED"
            };
            println!("- 1 × 4096, the SPEC plans: worst {latency:.2} of copy speed, i.e. {:.1}× the copy's time (target ≤ 3×) {verdict}", 1.0 / latency);
        }
    }
}

fn print_row(r: &Row) {
    println!(
        "| {:<19} | {:<9} | {:>5} × {:<5} | {:>5} | {:>7} | {:<7} | {:>6.2} | {:>6.2} | {:>8.1}× | {:>10} |",
        r.plan,
        r.dtypes,
        r.shape.0,
        r.shape.1,
        r.group,
        r.threads,
        r.backend,
        r.gbps,
        r.of_copy,
        r.vs_scalar,
        r.device_gbps.map_or("-".to_string(), |g| format!("{g:.3}"))
    );
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    println!(
        "groupq bench: {cpu}, {} cores available, reps {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        o.reps
    );
    for &t in &o.threads {
        if let Ok(stream) = Stream::cpu_with_threads(t) {
            let copy = copy_bandwidth(&stream, 64 << 20, o.reps);
            println!(
                "copy bandwidth, 64 MiB, {t} thread(s): {:.2} GB/s (read + write)",
                copy.bytes_per_second / 1e9
            );
        }
    }
    println!();
    let device = o.device.then(gpu_bench::stream).flatten();
    if let Some(gpu) = &device {
        println!("device column: {gpu:?}");
    }
    println!("| plan                | dtypes    | shape         | group | threads | backend |   GB/s | × copy | vs scalar | device GB/s |");
    println!("|---------------------|-----------|---------------|-------|---------|---------|--------|--------|-----------|-------------|");
    let mut bench = Bench {
        o,
        rows: Vec::new(),
        device,
        device_times: Default::default(),
    };
    if let Err(e) = bench.run_all() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    bench.targets();
}

/// The device column (feature `wgpu`): the SPEC plans on the default GPU
/// adapter, inputs resident in device memory, median seconds of `run_device`
/// plus `synchronize`.
#[cfg(feature = "wgpu")]
mod gpu_bench {
    use groupq::*;
    use std::time::Instant;

    pub fn stream() -> Option<Stream> {
        Stream::wgpu().map_err(|e| eprintln!("--device: {e}")).ok()
    }

    fn median(gpu: &Stream, reps: usize, mut run: impl FnMut() -> Result<()>) -> Option<f64> {
        // The first run compiles the pipeline.
        run().ok()?;
        gpu.synchronize().ok()?;
        let mut t: Vec<f64> = (0..reps.max(1))
            .map(|_| {
                let start = Instant::now();
                run().and_then(|()| gpu.synchronize()).ok()?;
                Some(start.elapsed().as_secs_f64())
            })
            .collect::<Option<_>>()?;
        t.sort_by(f64::total_cmp);
        Some(t[t.len() / 2])
    }

    fn up<T: DeviceElement>(gpu: &Stream, v: &[T]) -> Option<DeviceBuffer<T>> {
        DeviceBuffer::from_slice(gpu, v).ok()
    }

    pub fn forward<T: Element, Q: IntElement>(
        gpu: &Stream,
        desc: &QuantizePerGroupDescriptor,
        x: &[T],
        s: &[T],
        z: &[i32],
        reps: usize,
    ) -> Option<f64> {
        let plan = QuantizePerGroupPlan::<T, Q>::select(gpu, desc, Default::default()).ok()?;
        let (rows, cols, g) = (desc.outer_size, desc.axis_size, desc.num_groups());
        let (dx, ds, dz) = (up(gpu, x)?, up(gpu, s)?, up(gpu, z)?);
        let mut dq = DeviceBuffer::<Q>::zeros(gpu, rows * cols / Q::PACK).ok()?;
        median(gpu, reps, || {
            let args = QuantizePerGroupDeviceArgs {
                input: dx.view([rows, cols])?,
                scale: ds.view([rows, g])?,
                zero_point: dz.view([rows, g])?,
                output: dq.view_mut([rows, cols / Q::PACK])?,
            };
            plan.run_device(gpu, Workspace::None, args)
        })
    }

    pub fn dequantize<Q: IntElement, T: Element>(
        gpu: &Stream,
        desc: &DequantizePerGroupDescriptor,
        q: &[Q],
        s: &[T],
        z: &[i32],
        reps: usize,
    ) -> Option<f64> {
        let plan = DequantizePerGroupPlan::<Q, T>::select(gpu, desc, Default::default()).ok()?;
        let (rows, cols, g) = (desc.outer_size, desc.axis_size, desc.num_groups());
        let (dq, ds, dz) = (up(gpu, q)?, up(gpu, s)?, up(gpu, z)?);
        let mut dy = DeviceBuffer::<T>::zeros(gpu, rows * cols).ok()?;
        median(gpu, reps, || {
            let args = DequantizePerGroupDeviceArgs {
                input: dq.view([rows, cols / Q::PACK])?,
                scale: ds.view([rows, g])?,
                zero_point: dz.view([rows, g])?,
                output: dy.view_mut([rows, cols])?,
            };
            plan.run_device(gpu, Workspace::None, args)
        })
    }

    pub fn quantize_backward<T: Element>(
        gpu: &Stream,
        desc: &QuantizePerGroupBackwardDescriptor,
        [dy, x, s]: [&[T]; 3],
        z: &[i32],
        reps: usize,
    ) -> Option<f64> {
        let plan = QuantizePerGroupBackwardPlan::<T>::select(gpu, desc, Default::default()).ok()?;
        let (rows, cols, g) = (desc.outer_size, desc.axis_size, desc.num_groups());
        let (ddy, dx, ds, dz) = (up(gpu, dy)?, up(gpu, x)?, up(gpu, s)?, up(gpu, z)?);
        let mut dgx = DeviceBuffer::<T>::zeros(gpu, rows * cols).ok()?;
        median(gpu, reps, || {
            let args = QuantizePerGroupBackwardDeviceArgs {
                grad_output: ddy.view([rows, cols])?,
                input: dx.view([rows, cols])?,
                scale: ds.view([rows, g])?,
                zero_point: dz.view([rows, g])?,
                grad_input: dgx.view_mut([rows, cols])?,
            };
            plan.run_device(gpu, Workspace::None, args)
        })
    }

    pub fn dynamic<T: Element, S: Element, Q: IntElement>(
        gpu: &Stream,
        desc: &QuantizeDynamicPerGroupDescriptor,
        x: &[T],
        reps: usize,
    ) -> Option<f64> {
        let plan = QuantizeDynamicPerGroupPlan::<T, S, Q>::select(gpu, desc, Default::default())
            .map_err(|e| eprintln!("device: {e}"))
            .ok()?;
        let (rows, cols, g) = (desc.outer_size, desc.axis_size, desc.num_groups());
        let dx = up(gpu, x)?;
        let mut ds = DeviceBuffer::<S>::zeros(gpu, rows * g).ok()?;
        let mut dz = DeviceBuffer::<i32>::zeros(gpu, rows * g).ok()?;
        let mut dm = DeviceBuffer::<S>::zeros(gpu, rows * g).ok()?;
        let mut dq = DeviceBuffer::<Q>::zeros(gpu, rows * cols / Q::PACK).ok()?;
        let offset = desc.recipe.zero_point == groupq::recipe::ZeroPointRule::FloatOffset;
        median(gpu, reps, || {
            let args = QuantizeDynamicPerGroupDeviceArgs {
                input: dx.view([rows, cols])?,
                scale: ds.view_mut([rows, g])?,
                zero_point: dz.view_mut([rows, g])?,
                output: dq.view_mut([rows, cols / Q::PACK])?,
            };
            if offset {
                plan.run_device_with_offset(gpu, Workspace::None, args, dm.view_mut([rows, g])?)
            } else {
                plan.run_device(gpu, Workspace::None, args)
            }
        })
    }

    pub fn dequantize_backward<T: Element>(
        gpu: &Stream,
        desc: &DequantizePerGroupBackwardDescriptor,
        dy: &[T],
        s: &[T],
        reps: usize,
    ) -> Option<f64> {
        let plan =
            DequantizePerGroupBackwardPlan::<i8, T>::select(gpu, desc, Default::default()).ok()?;
        let (rows, cols, g) = (desc.outer_size, desc.axis_size, desc.num_groups());
        let (ddy, ds) = (up(gpu, dy)?, up(gpu, s)?);
        let mut dgx = DeviceBuffer::<T>::zeros(gpu, rows * cols).ok()?;
        median(gpu, reps, || {
            let args = DequantizePerGroupBackwardDeviceArgs {
                grad_output: ddy.view([rows, cols])?,
                scale: ds.view([rows, g])?,
                grad_input: dgx.view_mut([rows, cols])?,
            };
            plan.run_device(gpu, Workspace::None, args)
        })
    }
}

/// Without the `wgpu` feature there is no device column.
#[cfg(not(feature = "wgpu"))]
#[allow(clippy::extra_unused_type_parameters)]
mod gpu_bench {
    use groupq::*;

    pub fn stream() -> Option<Stream> {
        eprintln!("--device: build with --features wgpu for the device column");
        None
    }
    pub fn forward<T: Element, Q: IntElement>(
        _: &Stream,
        _: &QuantizePerGroupDescriptor,
        _: &[T],
        _: &[T],
        _: &[i32],
        _: usize,
    ) -> Option<f64> {
        None
    }
    pub fn dequantize<Q: IntElement, T: Element>(
        _: &Stream,
        _: &DequantizePerGroupDescriptor,
        _: &[Q],
        _: &[T],
        _: &[i32],
        _: usize,
    ) -> Option<f64> {
        None
    }
    pub fn quantize_backward<T: Element>(
        _: &Stream,
        _: &QuantizePerGroupBackwardDescriptor,
        _: [&[T]; 3],
        _: &[i32],
        _: usize,
    ) -> Option<f64> {
        None
    }
    pub fn dynamic<T: Element, S: Element, Q: IntElement>(
        _: &Stream,
        _: &QuantizeDynamicPerGroupDescriptor,
        _: &[T],
        _: usize,
    ) -> Option<f64> {
        None
    }
    pub fn dequantize_backward<T: Element>(
        _: &Stream,
        _: &DequantizePerGroupBackwardDescriptor,
        _: &[T],
        _: &[T],
        _: usize,
    ) -> Option<f64> {
        None
    }
}
