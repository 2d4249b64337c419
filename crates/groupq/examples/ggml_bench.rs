//! Speed of the ggml block quantizers ([`QuantizeGgmlBlocksPlan`]) on f32
//! rows, each as a fraction of a same-run copy of the same bytes.
//!
//! ```text
//! cargo run --release -p groupq --example ggml_bench -- --threads 2
//! cargo run --release -p groupq --example ggml_bench -- --types q4_0,q4_K --rows 512 --cols 4096
//! cargo run --release -p groupq --example ggml_bench -- --save-input w.f32 --json
//! ```
//!
//! The input is `rows × cols` weight-like f32 values (uniform ±0.06 with one
//! outlier × 20 in every 1000; `--imatrix` adds an importance matrix). `--save-input FILE` writes them
//! (raw little-endian f32) so that `scripts/bench_ggml_quantize_chunk.py`
//! can time llama.cpp's own `ggml_quantize_chunk` on the same data; `--json`
//! prints one JSON object per type for that script, and `--save-output
//! PREFIX` writes each type's blocks to `PREFIX.TYPE.bin` (the script checks
//! them against ggml's bytes).

use groupq::bench_support::{kernel_and_copy_seconds, synthetic_weights};
use groupq::ggml::GgmlType;
use groupq::*;

struct Opts {
    rows: usize,
    cols: usize,
    threads: usize,
    reps: usize,
    types: Vec<GgmlType>,
    save: Option<String>,
    save_output: Option<String>,
    json: bool,
    backend: Option<BackendKind>,
    imatrix: bool,
}

fn parse() -> std::result::Result<Opts, String> {
    let mut o = Opts {
        rows: 1024,
        cols: 4096,
        threads: 2,
        reps: 5,
        types: GgmlType::ALL.to_vec(),
        save: None,
        save_output: None,
        json: false,
        backend: None,
        imatrix: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{v}: {e}"));
        match a.as_str() {
            "--rows" => o.rows = num(value()?)?,
            "--cols" => o.cols = num(value()?)?,
            "--threads" => o.threads = num(value()?)?,
            "--reps" => o.reps = num(value()?)?,
            "--types" => {
                o.types = value()?
                    .split(',')
                    .map(|t| GgmlType::from_name(t).ok_or(format!("unknown ggml type {t}")))
                    .collect::<std::result::Result<_, _>>()?
            }
            "--save-input" => o.save = Some(value()?),
            "--save-output" => o.save_output = Some(value()?),
            "--json" => o.json = true,
            "--imatrix" => o.imatrix = true,
            "--backend" => {
                let v = value()?;
                o.backend = Some(
                    [
                        BackendKind::Scalar,
                        BackendKind::Sse41,
                        BackendKind::Avx2,
                        BackendKind::Avx512,
                    ]
                    .into_iter()
                    .find(|b| b.name() == v)
                    .ok_or(format!("unknown backend {v}"))?,
                )
            }
            "-h" | "--help" => {
                return Err("usage: ggml_bench [--rows N] [--cols N] [--threads N] [--reps N] \
                            [--types q4_0,q4_K,...] [--save-input FILE] [--save-output PREFIX] [--json] [--backend scalar|sse4.1|avx2|avx512] [--imatrix]"
                    .into())
            }
            other => return Err(format!("unknown option {other} (try --help)")),
        }
    }
    Ok(o)
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let n = o.rows * o.cols;
    let mut x: Vec<f32> = synthetic_weights(n, 7);
    for (i, v) in x.iter_mut().enumerate() {
        if i % 1000 == 999 {
            *v *= 20.0;
        }
    }
    if let Some(path) = &o.save {
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes).expect("write --save-input");
    }
    let stream = Stream::cpu_with_threads(o.threads).expect("threads");
    // `--imatrix`: a fixed importance matrix, 1 to 7 by column.
    let qw: Option<Vec<f32>> = o
        .imatrix
        .then(|| (0..o.cols).map(|j| 1.0 + (j % 7) as f32).collect());
    if !o.json {
        println!(
            "ggml block quantizers, f32 [{} x {}], {} threads (median of {} samples)\n",
            o.rows, o.cols, o.threads, o.reps
        );
        println!("| type | backend | ns/weight | input GB/s | fraction of copy |");
        println!("|---|---|---|---|---|");
    }
    for ty in o.types {
        let rb = ty
            .row_bytes(o.cols)
            .expect("--cols must be a multiple of the block size");
        let desc = QuantizeGgmlBlocksDescriptor {
            rows: o.rows,
            n_per_row: o.cols,
            ggml_type: ty,
            imatrix: o.imatrix,
        };
        let pref = PlanPreference {
            prefer_backend: o.backend,
            ..Default::default()
        };
        let Ok(plan) = QuantizeGgmlBlocksPlan::select(&stream, &desc, pref) else {
            continue; // no kernel for this type on the requested backend
        };
        let mut out = vec![0u8; o.rows * rb];
        let bytes = n * 4 + out.len();
        let (k, c) = kernel_and_copy_seconds(&stream, bytes, o.reps, || {
            plan.run(
                &stream,
                Workspace::None,
                QuantizeGgmlBlocksArgs {
                    input: TensorRef::new(&x, [o.rows, o.cols]).unwrap(),
                    imatrix: qw.as_deref(),
                    output: TensorMut::new(&mut out, [o.rows, rb]).unwrap(),
                },
            )
            .unwrap()
        });
        let backend = plan.sku().backend;
        if let Some(prefix) = &o.save_output {
            std::fs::write(format!("{prefix}.{ty}.bin"), &out).expect("write --save-output");
        }
        if o.json {
            println!(
                "{{\"type\":\"{ty}\",\"backend\":\"{backend}\",\"seconds\":{k:e},\"copy_seconds\":{c:e},\
                 \"weights\":{n},\"bytes\":{bytes}}}"
            );
        } else {
            println!(
                "| {ty} | {backend} | {:.2} | {:.2} | {:.2} |",
                k * 1e9 / n as f64,
                (n * 4) as f64 / k / 1e9,
                c / k
            );
        }
    }
}
