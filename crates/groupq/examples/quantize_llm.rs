//! The main job: quantize a synthetic LLM-shaped bf16 weight matrix to the
//! int4 range, group-wise, then dequantize it and report the error (SQNR)
//! and the throughput.
//!
//! ```text
//! cargo run --release -p groupq --example quantize_llm
//! cargo run --release -p groupq --example quantize_llm -- --rows 4096 --cols 11008 --group 128 --threads 2
//! ```
//!
//! The weights are drawn from a normal distribution with a few large
//! outliers, as in real projection matrices. Scales are symmetric,
//! `absmax / 7` per group (computed here, in f32, then rounded to bf16), zero
//! points 0 and codes clamped to `[-8, 7]`, stored one per `i8`.

use groupq::bench_support::median_seconds;
use groupq::half::bf16;
use groupq::*;

struct Options {
    rows: usize,
    cols: usize,
    group: usize,
    threads: Option<usize>,
}

fn parse_options() -> std::result::Result<Options, String> {
    let mut o = Options {
        rows: 4096,
        cols: 11008,
        group: 128,
        threads: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || -> std::result::Result<usize, String> {
            let v = args.next().ok_or(format!("{flag} needs a value"))?;
            v.parse()
                .map_err(|_| format!("{flag}: '{v}' is not a number"))
        };
        match flag.as_str() {
            "--rows" => o.rows = value()?,
            "--cols" => o.cols = value()?,
            "--group" => o.group = value()?,
            "--threads" => o.threads = Some(value()?),
            "-h" | "--help" => {
                return Err(
                    "usage: quantize_llm [--rows N] [--cols N] [--group N] [--threads N]".into(),
                )
            }
            other => return Err(format!("unknown option {other} (try --help)")),
        }
    }
    Ok(o)
}

/// splitmix64 + Box–Muller: a reproducible normal stream without dependencies.
struct Normal(u64);
impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn sample(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn gbps(bytes: usize, seconds: f64) -> f64 {
    bytes as f64 / seconds / 1e9
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let o = parse_options()?;
    let stream = match o.threads {
        Some(n) => Stream::cpu_with_threads(n)?,
        None => Stream::cpu(),
    };
    let (rows, cols, group) = (o.rows, o.cols, o.group);
    let desc = QuantizePerGroupDescriptor {
        outer_size: rows,
        axis_size: cols,
        group_size: group,
        q_min: -8,
        q_max: 7,
        input_element: ElementKind::Bf16,
        output_element: ElementKind::S8,
    };
    // Select first: a bad shape is reported before any work is done.
    let quantize = QuantizePerGroupPlan::<bf16, i8>::select(&stream, &desc, Default::default())?;
    let dequantize = DequantizePerGroupPlan::<i8, bf16>::select(
        &stream,
        &DequantizePerGroupDescriptor {
            outer_size: rows,
            axis_size: cols,
            group_size: group,
            input_element: ElementKind::S8,
            output_element: ElementKind::Bf16,
        },
        Default::default(),
    )?;

    println!(
        "groupq: {rows} x {cols} bf16 weight, group {group}, int4 range [-8, 7], {} threads, backend {}",
        stream.threads(),
        quantize.sku().backend
    );

    // Synthetic weights: N(0, 0.02²) with one outlier in ~4096 at 10σ.
    let mut rng = Normal(0x5eed);
    let n = rows * cols;
    let weight: Vec<bf16> = (0..n)
        .map(|_| {
            let outlier = rng.uniform() < 1.0 / 4096.0;
            let sigma = if outlier { 0.2 } else { 0.02 };
            bf16::from_f64(rng.sample() * sigma)
        })
        .collect();

    // Symmetric per-group scales: absmax / 7 (a zero group gets scale 0 and codes 0).
    let scale: Vec<bf16> = weight
        .chunks(group)
        .map(|g| bf16::from_f32(g.iter().map(|v| v.to_f32().abs()).fold(0.0, f32::max) / 7.0))
        .collect();
    let zero_point = vec![0i32; scale.len()];
    let params = [rows, cols / group];

    // Each plan runs 3 times; the median time is reported (the first run
    // also pays for faulting in the freshly allocated output pages).
    let mut codes = vec![0i8; n];
    let t_q = median_seconds(3, || {
        let args = QuantizePerGroupArgs {
            input: TensorRef::new(&weight, [rows, cols]).expect("valid view"),
            scale: TensorRef::new(&scale, params).expect("valid view"),
            zero_point: TensorRef::new(&zero_point, params).expect("valid view"),
            output: TensorMut::new(&mut codes, [rows, cols]).expect("valid view"),
        };
        quantize
            .run(&stream, Workspace::None, args)
            .expect("validated plan");
    });

    let mut restored = vec![bf16::ZERO; n];
    let t_dq = median_seconds(3, || {
        let args = DequantizePerGroupArgs {
            input: TensorRef::new(&codes, [rows, cols]).expect("valid view"),
            scale: TensorRef::new(&scale, params).expect("valid view"),
            zero_point: TensorRef::new(&zero_point, params).expect("valid view"),
            output: TensorMut::new(&mut restored, [rows, cols]).expect("valid view"),
        };
        dequantize
            .run(&stream, Workspace::None, args)
            .expect("validated plan");
    });

    let (mut signal, mut noise, mut max_err) = (0.0f64, 0.0f64, 0.0f64);
    for (w, r) in weight.iter().zip(&restored) {
        let (w, r) = (f64::from(w.to_f32()), f64::from(r.to_f32()));
        signal += w * w;
        noise += (w - r) * (w - r);
        max_err = max_err.max((w - r).abs());
    }
    let sqnr = 10.0 * (signal / noise).log10();
    let mut histogram = [0usize; 16];
    for &c in &codes {
        histogram[(c + 8) as usize] += 1;
    }

    let scale_bytes = scale.len() * (2 + 4);
    println!(
        "quantize   bf16 -> s8 : {:8.2} ms  {:6.2} GB/s (read {} MB + write {} MB)",
        t_q * 1e3,
        gbps(n * 3 + scale_bytes, t_q),
        n * 2 / 1_000_000,
        n / 1_000_000
    );
    println!(
        "dequantize s8 -> bf16 : {:8.2} ms  {:6.2} GB/s",
        t_dq * 1e3,
        gbps(n * 3 + scale_bytes, t_dq)
    );
    println!("SQNR {sqnr:.2} dB, max abs error {max_err:.3e}");
    println!("codes -8..=7: {histogram:?}");
    Ok(())
}
