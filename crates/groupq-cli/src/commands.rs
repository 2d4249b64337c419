//! The subcommands: `quantize`, `dequantize`, `inspect`.

use crate::checkpoint::{write_safetensors, Checkpoint, OutTensor, Shard, TensorInfo, INDEX};
use crate::formats::{dequantize_module, Detected, Spec, Stats, Storage};
use anyhow::{anyhow, bail, Context, Result};
use groupq::half::{bf16, f16};
use groupq::Stream;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use safetensors::Dtype;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of `groupq quantize`.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub spec: Spec,
    pub ignore: Vec<String>,
    pub quantize_lm_head: bool,
    pub skip_indivisible: bool,
    pub force: bool,
    pub quiet: bool,
    pub report: Option<PathBuf>,
}

/// One quantized tensor's line of the summary.
#[derive(Debug, Clone)]
pub struct TensorReport {
    pub name: String,
    pub shape: [usize; 2],
    pub stats: Stats,
}

/// What `quantize` did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub quantized: Vec<TensorReport>,
    pub kept: Vec<(String, String)>,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub seconds: f64,
}

/// `*` and `?` wildcards (matching the whole name), else a substring match.
/// `--ignore` patterns are tried on the module name and on the tensor name.
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    if !pattern.contains(['*', '?']) {
        return name.contains(pattern);
    }
    fn glob(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
            (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
            _ => false,
        }
    }
    glob(pattern.as_bytes(), name.as_bytes())
}

/// What happens to one input tensor.
enum Action {
    Copy,
    Quantize { prefix: String, n: usize, k: usize },
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16)
}

/// Whether a tensor is the weight of a Linear layer: a rank-2 float
/// `*.weight` that is not an embedding or a norm.
fn is_linear_weight(t: &TensorInfo) -> bool {
    let lower = t.name.to_lowercase();
    t.name.ends_with(".weight")
        && t.shape.len() == 2
        && is_float(t.dtype)
        && !["embed", "norm", "wte", "wpe"]
            .iter()
            .any(|s| lower.contains(s))
}

/// Whether the options quantize this Linear weight (`lm_head` only when
/// asked, nothing matching `--ignore`).
fn selected(o: &QuantizeOptions, t: &TensorInfo) -> bool {
    let module = t.name.trim_end_matches(".weight");
    if t.name.to_lowercase().contains("lm_head") && !o.quantize_lm_head {
        return false;
    }
    !o.ignore
        .iter()
        .any(|p| matches_pattern(p, &t.name) || matches_pattern(p, module))
}

/// Refuses an output path that is the input, or exists without `--force`.
fn check_output(input: &Path, output: &Path, force: bool) -> Result<()> {
    let canon_in = input
        .canonicalize()
        .with_context(|| format!("{}: no such file or directory", input.display()))?;
    let canon_out = match output.canonicalize() {
        Ok(p) => p,
        Err(_) => {
            let parent = output
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let parent = parent.canonicalize().with_context(|| {
                format!("{}: the parent directory does not exist", output.display())
            })?;
            parent.join(output.file_name().unwrap_or_default())
        }
    };
    if canon_in == canon_out {
        bail!(
            "the output {} is the input: choose another -o",
            output.display()
        );
    }
    if canon_in.starts_with(&canon_out) {
        bail!(
            "the output {} contains the input: choose another -o",
            output.display()
        );
    }
    if output.exists() && !force {
        bail!(
            "{} already exists (use --force to replace it)",
            output.display()
        );
    }
    Ok(())
}

/// A temporary directory beside `output`, renamed to it by `commit`, removed
/// when dropped uncommitted: nothing is left half-written at `output`.
struct Staging {
    tmp: PathBuf,
    output: PathBuf,
    done: bool,
}

impl Staging {
    fn new(output: &Path) -> Result<Staging> {
        let name = output
            .file_name()
            .ok_or_else(|| anyhow!("{}: not a directory name", output.display()))?;
        let tmp = output.with_file_name(format!(
            ".{}.groupq-tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(Staging {
            tmp,
            output: output.to_path_buf(),
            done: false,
        })
    }

    fn commit(mut self) -> Result<()> {
        if self.output.is_dir() {
            std::fs::remove_dir_all(&self.output)?;
        } else if self.output.exists() {
            std::fs::remove_file(&self.output)?;
        }
        std::fs::rename(&self.tmp, &self.output).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.tmp.display(),
                self.output.display()
            )
        })?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

fn progress(total: usize, quiet: bool, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total as u64),
        if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Copies every top-level file of the model directory that groupq does not
/// rewrite (tokenizer, generation config, …).
fn copy_other_files(ckpt: &Checkpoint, dest: &Path) -> Result<()> {
    let Some(dir) = &ckpt.dir else { return Ok(()) };
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type()?.is_file()
            || name.ends_with(".safetensors")
            || name == INDEX
            || name == "config.json"
        {
            continue;
        }
        std::fs::copy(entry.path(), dest.join(&name))
            .with_context(|| format!("cannot copy {name}"))?;
    }
    Ok(())
}

/// Writes `config.json` (the input's, or an empty object, with
/// `quantization_config` set or removed) and the index when there is one.
fn write_metadata(
    ckpt: &Checkpoint,
    dest: &Path,
    quantization_config: Option<Value>,
    weight_map: &BTreeMap<String, String>,
    total_size: usize,
) -> Result<()> {
    let mut config = ckpt.config.clone().unwrap_or_else(|| json!({}));
    let obj = config
        .as_object_mut()
        .ok_or_else(|| anyhow!("config.json is not an object"))?;
    match quantization_config {
        Some(q) => {
            obj.insert("quantization_config".into(), q);
        }
        None => {
            obj.remove("quantization_config");
        }
    }
    std::fs::write(
        dest.join("config.json"),
        serde_json::to_string_pretty(&config)? + "\n",
    )?;
    if ckpt.indexed || ckpt.shards.len() > 1 {
        let index = json!({"metadata": {"total_size": total_size}, "weight_map": weight_map});
        std::fs::write(
            dest.join(INDEX),
            serde_json::to_string_pretty(&index)? + "\n",
        )?;
    }
    Ok(())
}

/// `groupq quantize`.
pub fn quantize(o: &QuantizeOptions) -> Result<Summary> {
    o.spec.validate()?;
    check_output(&o.input, &o.output, o.force)?;
    let ckpt = Checkpoint::open(&o.input)?;
    if let Some(q) = ckpt.quantization_config() {
        bail!(
            "{} is already quantized ({}): dequantize it first",
            o.input.display(),
            q["quant_method"].as_str().unwrap_or("unknown method")
        );
    }
    let start = Instant::now();
    let stream = Stream::cpu();

    // Decide every tensor's fate before writing anything.
    let mut summary = Summary::default();
    let mut actions: Vec<Vec<Action>> = Vec::new();
    let mut ignored_modules = Vec::new();
    for shard in &ckpt.shards {
        let mut list = Vec::new();
        for t in &shard.tensors {
            summary.bytes_in += t.end - t.start;
            if !is_linear_weight(t) || !selected(o, t) {
                if is_linear_weight(t) {
                    // A Linear left in float (lm_head, --ignore): loaders must know.
                    ignored_modules.push(t.name.trim_end_matches(".weight").to_string());
                }
                list.push(Action::Copy);
                continue;
            }
            let (n, k) = (t.shape[0], t.shape[1]);
            match o.spec.shape_problem(n, k) {
                None => list.push(Action::Quantize {
                    prefix: t.name.trim_end_matches(".weight").to_string(),
                    n,
                    k,
                }),
                Some(why) if o.skip_indivisible => {
                    if !o.quiet {
                        eprintln!("warning: {} [{n}, {k}] kept in {:?}: {why}", t.name, t.dtype);
                    }
                    summary.kept.push((t.name.clone(), why));
                    ignored_modules.push(t.name.trim_end_matches(".weight").to_string());
                    list.push(Action::Copy);
                }
                Some(why) => bail!(
                    "{} [{n}, {k}] cannot be stored as {}: {why} (--skip-indivisible keeps such tensors in float)",
                    t.name,
                    o.spec.format.name()
                ),
            }
        }
        actions.push(list);
    }

    let staging = Staging::new(&o.output)?;
    let bar = progress(summary.bytes_in, o.quiet, "quantizing");
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0usize;
    for (shard, list) in ckpt.shards.iter().zip(&actions) {
        let mut outs: Vec<OutTensor> = Vec::new();
        // For each output tensor: (input tensor index, part index).
        let mut source: Vec<(usize, usize)> = Vec::new();
        for (i, (t, a)) in shard.tensors.iter().zip(list).enumerate() {
            let produced = match a {
                Action::Copy => vec![OutTensor::new(t.name.clone(), t.dtype, t.shape.clone())],
                Action::Quantize { prefix, n, k } => o.spec.outputs(prefix, t.dtype, *n, *k),
            };
            for (p, out) in produced.into_iter().enumerate() {
                weight_map.insert(out.name.clone(), shard.file_name.clone());
                total_size += out.bytes();
                source.push((i, p));
                outs.push(out);
            }
        }
        let mut pending: Vec<Vec<u8>> = Vec::new();
        let path = staging.tmp.join(&shard.file_name);
        write_safetensors(
            &path,
            &outs,
            shard.metadata.as_ref(),
            |j, w: &mut dyn Write| {
                let (i, part) = source[j];
                let t = &shard.tensors[i];
                match &list[i] {
                    Action::Copy => {
                        w.write_all(shard.data(t))?;
                        bar.inc((t.end - t.start) as u64);
                    }
                    Action::Quantize { n, k, .. } => {
                        if part == 0 {
                            let (bytes, stats) =
                                quantize_tensor(&o.spec, &stream, shard, t, *n, *k)
                                    .with_context(|| format!("quantizing {}", t.name))?;
                            pending = bytes;
                            summary.quantized.push(TensorReport {
                                name: t.name.clone(),
                                shape: [*n, *k],
                                stats,
                            });
                            bar.inc((t.end - t.start) as u64);
                        }
                        w.write_all(&pending[part])?;
                    }
                }
                Ok(())
            },
        )?;
    }
    bar.finish_and_clear();
    summary.bytes_out = total_size;
    let config = o.spec.quantization_config(&ignored_modules);
    write_metadata(&ckpt, &staging.tmp, Some(config), &weight_map, total_size)?;
    copy_other_files(&ckpt, &staging.tmp)?;
    if let Some(report) = &o.report {
        std::fs::write(
            report,
            serde_json::to_string_pretty(&report_json(o, &summary))? + "\n",
        )
        .with_context(|| format!("cannot write {}", report.display()))?;
    }
    staging.commit()?;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

fn quantize_tensor(
    spec: &Spec,
    stream: &Stream,
    shard: &Shard,
    t: &TensorInfo,
    n: usize,
    k: usize,
) -> Result<(Vec<Vec<u8>>, Stats)> {
    let bytes = shard.data(t);
    match t.dtype {
        Dtype::BF16 => spec.quantize::<bf16>(stream, &bf16::read(bytes), n, k),
        Dtype::F16 => spec.quantize::<f16>(stream, &f16::read(bytes), n, k),
        Dtype::F32 => spec.quantize::<f32>(stream, &f32::read(bytes), n, k),
        d => bail!("unsupported weight dtype {d:?}"),
    }
}

/// The `--report` JSON.
pub fn report_json(o: &QuantizeOptions, s: &Summary) -> Value {
    let finite = |v: f64| if v.is_finite() { json!(v) } else { json!(null) };
    json!({
        "input": o.input.display().to_string(),
        "output": o.output.display().to_string(),
        "format": o.spec.format.name(),
        "bits": o.spec.bits,
        "group_size": o.spec.group_size,
        "symmetric": o.spec.symmetric,
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "tensors": s.quantized.iter().map(|t| json!({
            "name": t.name,
            "shape": t.shape,
            "sqnr_db": finite(t.stats.sqnr_db),
            "max_abs_error": t.stats.max_abs_error,
        })).collect::<Vec<_>>(),
        "kept_in_float": s.kept.iter().map(|(n, why)| json!({"name": n, "reason": why})).collect::<Vec<_>>(),
    })
}

/// The summary table printed after `quantize`.
pub fn print_summary(o: &QuantizeOptions, s: &Summary) {
    let width = s
        .quantized
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "{:<width$}  {:>13}  {:>9}  {:>13}",
        "tensor", "shape", "SQNR dB", "max abs err"
    );
    for t in &s.quantized {
        let shape = format!("{} x {}", t.shape[0], t.shape[1]);
        println!(
            "{:<width$}  {:>13}  {:>9.2}  {:>13.3e}",
            t.name, shape, t.stats.sqnr_db, t.stats.max_abs_error
        );
    }
    let mean =
        s.quantized.iter().map(|t| t.stats.sqnr_db).sum::<f64>() / s.quantized.len().max(1) as f64;
    println!(
        "{} tensors quantized to {} {}-bit group {} ({}), {} kept in float; {:.1} MB -> {:.1} MB in {:.2} s; mean SQNR {:.2} dB",
        s.quantized.len(),
        o.spec.format.name(),
        o.spec.bits,
        o.spec.group_size,
        if o.spec.symmetric { "sym" } else { "asym" },
        s.kept.len(),
        s.bytes_in as f64 / 1e6,
        s.bytes_out as f64 / 1e6,
        s.seconds,
        mean
    );
    println!("wrote {}", o.output.display());
}

/// `groupq dequantize`: float weights back, `quantization_config` removed.
pub fn dequantize(input: &Path, output: &Path, force: bool, quiet: bool) -> Result<usize> {
    check_output(input, output, force)?;
    let ckpt = Checkpoint::open(input)?;
    let names: Vec<&str> = ckpt.tensors().map(|(_, t)| t.name.as_str()).collect();
    let detected = Detected::detect(ckpt.quantization_config(), &names)
        .ok_or_else(|| anyhow!("{}: no quantized tensors found", input.display()))?;
    let qc = ckpt.quantization_config();
    let bits = qc
        .and_then(|c| {
            c["bits"]
                .as_u64()
                .or_else(|| c["config_groups"]["group_0"]["weights"]["num_bits"].as_u64())
        })
        .unwrap_or(4) as u32;
    let group_size = qc
        .and_then(|c| c["group_size"].as_u64())
        .map(|g| g as usize);
    let stream = Stream::cpu();
    // Module prefixes, and where each part lives.
    let mut parts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (si, shard) in ckpt.shards.iter().enumerate() {
        for (ti, t) in shard.tensors.iter().enumerate() {
            parts.insert(t.name.clone(), (si, ti));
        }
    }
    let marker = format!(".{}", detected.marker());
    let is_part = |name: &str| {
        detected.parts().iter().any(|p| {
            name.strip_suffix(p)
                .and_then(|r| r.strip_suffix('.'))
                .is_some_and(|m| parts.contains_key(&format!("{m}{marker}")))
        })
    };
    let staging = Staging::new(output)?;
    let total: usize = ckpt.tensors().map(|(_, t)| t.end - t.start).sum();
    let bar = progress(total, quiet, "dequantizing");
    let (mut weight_map, mut total_size, mut modules) = (BTreeMap::new(), 0usize, 0usize);
    for shard in &ckpt.shards {
        let mut outs = Vec::new();
        // Per output tensor: an input tensor copied, or a module rebuilt.
        enum Source {
            Copy(usize),
            Rebuilt(Vec<u8>),
        }
        let mut sources = Vec::new();
        for (ti, t) in shard.tensors.iter().enumerate() {
            if let Some(prefix) = t.name.strip_suffix(&marker) {
                let lookup = |part: &str| {
                    let (si, ti) = *parts.get(&format!("{prefix}.{part}"))?;
                    let (s, t) = (&ckpt.shards[si], &ckpt.shards[si].tensors[ti]);
                    Some((t.dtype, t.shape.clone(), s.data(t)))
                };
                let (dtype, shape, bytes) =
                    dequantize_module(detected, bits, group_size, &lookup, &stream)
                        .with_context(|| format!("dequantizing {prefix}"))?;
                outs.push(OutTensor::new(format!("{prefix}.weight"), dtype, shape));
                sources.push(Source::Rebuilt(bytes));
                modules += 1;
            } else if !is_part(&t.name) {
                outs.push(OutTensor::new(t.name.clone(), t.dtype, t.shape.clone()));
                sources.push(Source::Copy(ti));
            }
        }
        for out in &outs {
            weight_map.insert(out.name.clone(), shard.file_name.clone());
            total_size += out.bytes();
        }
        write_safetensors(
            &staging.tmp.join(&shard.file_name),
            &outs,
            shard.metadata.as_ref(),
            |j, w: &mut dyn Write| {
                match &sources[j] {
                    Source::Copy(ti) => w.write_all(shard.data(&shard.tensors[*ti]))?,
                    Source::Rebuilt(bytes) => w.write_all(bytes)?,
                }
                Ok(())
            },
        )?;
        bar.inc(shard.tensors.iter().map(|t| (t.end - t.start) as u64).sum());
    }
    bar.finish_and_clear();
    write_metadata(&ckpt, &staging.tmp, None, &weight_map, total_size)?;
    copy_other_files(&ckpt, &staging.tmp)?;
    staging.commit()?;
    Ok(modules)
}

/// `groupq inspect`: tensors, dtypes, shapes, and the detected format.
pub fn inspect(path: &Path) -> Result<String> {
    let ckpt = Checkpoint::open(path)?;
    let mut out = String::new();
    let names: Vec<&str> = ckpt.tensors().map(|(_, t)| t.name.as_str()).collect();
    let detected = Detected::detect(ckpt.quantization_config(), &names);
    let width = names.iter().map(|n| n.len()).max().unwrap_or(6).max(6);
    for shard in &ckpt.shards {
        out += &format!("{} ({} tensors)\n", shard.file_name, shard.tensors.len());
        for t in &shard.tensors {
            out += &format!(
                "  {:<width$}  {:>5}  {:?}\n",
                t.name,
                format!("{:?}", t.dtype),
                t.shape
            );
        }
    }
    let total: usize = ckpt.tensors().map(|(_, t)| t.end - t.start).sum();
    out += &format!(
        "{} tensors, {:.1} MB in {} file(s)\n",
        names.len(),
        total as f64 / 1e6,
        ckpt.shards.len()
    );
    out += &match detected {
        Some(d) => {
            let modules = names
                .iter()
                .filter(|n| n.ends_with(&format!(".{}", d.marker())))
                .count();
            let mut line = format!("quantization: {} ({modules} quantized modules)", d.name());
            if let Some(q) = ckpt.quantization_config() {
                let bits = q["bits"]
                    .as_u64()
                    .or_else(|| q["config_groups"]["group_0"]["weights"]["num_bits"].as_u64());
                let gs = q["group_size"]
                    .as_u64()
                    .or_else(|| q["config_groups"]["group_0"]["weights"]["group_size"].as_u64());
                if let (Some(b), Some(g)) = (bits, gs) {
                    line += &format!(", {b}-bit, group {g}");
                }
            }
            line + "\n"
        }
        None => "quantization: none (float checkpoint)\n".to_string(),
    };
    Ok(out)
}
