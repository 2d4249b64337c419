//! The subcommands: `quantize`, `dequantize`, `inspect`.

use crate::checkpoint::{write_safetensors, Checkpoint, OutTensor, Shard, TensorInfo, INDEX};
use crate::formats::{
    dtype_config_name, dtype_from_config, restored_bytes, transpose, Format, ModulePlan, Quantized,
    Scope, Spec, Stats, Weights,
};
use crate::layout::{is_linear_weight, is_lm_head, stack_of, Layout};
use crate::staging::Staging;
use anyhow::{anyhow, bail, Context, Result};
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

impl Summary {
    /// The mean SQNR of the quantized tensors (0 when there are none).
    pub fn mean_sqnr_db(&self) -> f64 {
        self.quantized.iter().map(|t| t.stats.sqnr_db).sum::<f64>()
            / self.quantized.len().max(1) as f64
    }

    /// The report's per-tensor entries (a non-finite SQNR as `null`).
    pub fn tensors_json(&self) -> Value {
        let finite = |v: f64| if v.is_finite() { json!(v) } else { json!(null) };
        self.quantized
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "shape": t.shape,
                    "sqnr_db": finite(t.stats.sqnr_db),
                    "max_abs_error": t.stats.max_abs_error,
                })
            })
            .collect()
    }

    /// The report's entries of the tensors kept, with the reason.
    pub fn kept_json(&self) -> Value {
        self.kept
            .iter()
            .map(|(n, why)| json!({"name": n, "reason": why}))
            .collect()
    }
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
    /// `transposed`: a `Conv1D` weight, stored `[k, n]`.
    Quantize {
        prefix: String,
        n: usize,
        k: usize,
        transposed: bool,
    },
}

/// Decides every Linear layer's fate: quantized, or kept in float with the
/// reason. Fails on a weight the format cannot store (unless
/// `--skip-indivisible`) and when nothing would be quantized.
fn plan_modules(
    o: &QuantizeOptions,
    ckpt: &Checkpoint,
    layout: &Layout,
    summary: &mut Summary,
) -> Result<ModulePlan> {
    let fmt = o.spec.format.imp();
    let scope = fmt.scope(layout)?;
    let mut plan = ModulePlan::default();
    let mut used_patterns = vec![false; o.ignore.len()];
    for (_, t) in ckpt.tensors() {
        if !is_linear_weight(t) {
            continue;
        }
        let module = t.name.trim_end_matches(".weight");
        let conv1d = layout.is_conv1d(module);
        let ignored = o
            .ignore
            .iter()
            .position(|p| matches_pattern(p, &t.name) || matches_pattern(p, module));
        if let Some(i) = ignored {
            used_patterns[i] = true;
        }
        let in_scope = match &scope {
            Scope::AllLinear => true,
            Scope::Blocks => layout.stacks.is_empty() || stack_of(module).is_some(),
            Scope::Prefix(p) => module.starts_with(p.as_str()),
        };
        let reason = if conv1d && !fmt.reads_conv1d() {
            Some(format!(
                "a Conv1D layer ({} model); {} loaders quantize nn.Linear only",
                layout.model_type.as_deref().unwrap_or("this"),
                fmt.name()
            ))
        } else if is_lm_head(module) {
            (!o.quantize_lm_head).then(|| "lm_head (--quantize-lm-head quantizes it)".to_string())
        } else if !in_scope {
            Some(match &scope {
                Scope::Prefix(p) => format!(
                    "outside the repeated blocks {p}.N: {} loaders quantize only those",
                    fmt.name()
                ),
                _ => format!(
                    "outside the repeated blocks: {} quantizes only those",
                    fmt.name()
                ),
            })
        } else {
            ignored.map(|i| format!("--ignore {}", o.ignore[i]))
        };
        if let Some(why) = reason {
            plan.float.insert(module.to_string(), why);
            continue;
        }
        let (n, k) = layout.out_in(t);
        match o.spec.shape_problem(n, k) {
            None => {
                plan.quantized.insert(module.to_string());
            }
            Some(why) if o.skip_indivisible => {
                if !o.quiet {
                    eprintln!("warning: {} [{n}, {k}] kept in {:?}: {why}", t.name, t.dtype);
                }
                plan.float.insert(module.to_string(), why);
            }
            Some(why) => bail!(
                "{} [{n}, {k}] cannot be stored as {}: {why} (--skip-indivisible keeps such tensors in float)",
                t.name,
                fmt.name()
            ),
        }
    }
    if !o.quiet {
        for (p, used) in o.ignore.iter().zip(&used_patterns) {
            if !used {
                eprintln!("warning: --ignore {p} matches no Linear layer");
            }
        }
    }
    if o.quantize_lm_head && !layout.linears.iter().any(|m| is_lm_head(m)) && !o.quiet {
        eprintln!(
            "warning: --quantize-lm-head: the checkpoint has no lm_head weight (tied to the embeddings?)"
        );
    }
    if plan.quantized.is_empty() {
        let why: BTreeMap<&str, usize> = plan.float.values().fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.as_str()).or_default() += 1;
            m
        });
        let why: Vec<String> = why.iter().map(|(r, c)| format!("{c} × {r}")).collect();
        bail!(
            "nothing to quantize in {} as {}: {} Linear layers found{}{}",
            o.input.display(),
            fmt.name(),
            layout.linears.len(),
            if why.is_empty() {
                ""
            } else {
                ", kept in float: "
            },
            why.join("; ")
        );
    }
    if let Some(why) = fmt.plan_problem(layout, &plan) {
        bail!("{why}");
    }
    summary.kept = plan
        .float
        .iter()
        .map(|(m, why)| (format!("{m}.weight"), why.clone()))
        .collect();
    Ok(plan)
}

/// The config to write, checked against the format's model of its loader:
/// the loader must quantize exactly the modules that are quantized.
fn checked_config(o: &QuantizeOptions, layout: &Layout, plan: &ModulePlan) -> Result<Value> {
    let fmt = o.spec.format.imp();
    let config = fmt.quantization_config(&o.spec, layout, plan)?;
    let loaded = fmt.loader_quantizes(&config, layout)?;
    if loaded != plan.quantized {
        let extra: Vec<&String> = loaded.difference(&plan.quantized).take(5).collect();
        let missing: Vec<&String> = plan.quantized.difference(&loaded).take(5).collect();
        bail!(
            "{} cannot express this selection: its loader would also quantize {extra:?} and would not quantize {missing:?}",
            fmt.name()
        );
    }
    Ok(config)
}

/// Refuses an output path that is the input, or exists without `--force`.
pub(crate) fn check_output(input: &Path, output: &Path, force: bool) -> Result<()> {
    let canon_in = input
        .canonicalize()
        .with_context(|| format!("{}: no such file or directory", input.display()))?;
    // OUT and missing parents are created (as `save_pretrained` does):
    // resolve the nearest existing ancestor and append the rest.
    let absolute = std::path::absolute(output)
        .with_context(|| format!("{}: not a usable path", output.display()))?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    let canon_out = loop {
        if let Ok(c) = existing.canonicalize() {
            break rest.iter().rev().fold(c, |p: PathBuf, n| p.join(n));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => bail!("{}: no existing parent directory", output.display()),
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

pub(crate) fn progress(total: usize, quiet: bool, what: &str) -> ProgressBar {
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

/// Copies every file of the model directory that groupq does not rewrite
/// (tokenizer, generation config, …) and every sub-folder (a
/// sentence-transformers `1_Pooling/`, …), recursively and bit for bit.
/// Symbolic links are followed (a Hugging Face cache snapshot is made of
/// them); `.git`, `.cache` and groupq's own staging folders are skipped.
fn copy_other_files(ckpt: &Checkpoint, dest: &Path, output: &Path) -> Result<()> {
    let Some(dir) = &ckpt.dir else { return Ok(()) };
    let skip_top =
        |name: &str| name.ends_with(".safetensors") || name == INDEX || name == "config.json";
    // OUT may lie inside IN: never copy it (or the staging folder) into itself.
    let exclude: Vec<PathBuf> = [dest, output]
        .iter()
        .filter_map(|p| p.canonicalize().ok())
        .collect();
    copy_tree(dir, dest, &skip_top, &exclude)
}

fn copy_tree(
    src: &Path,
    dest: &Path,
    skip: &dyn Fn(&str) -> bool,
    exclude: &[PathBuf],
) -> Result<()> {
    let entries =
        std::fs::read_dir(src).with_context(|| format!("cannot read {}", src.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if skip(&name) || name == ".git" || name == ".cache" || name.contains(".groupq-") {
            continue;
        }
        let path = entry.path();
        let meta =
            std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let target = dest.join(&name);
        if meta.is_dir() {
            let canonical = path
                .canonicalize()
                .with_context(|| format!("cannot read {}", path.display()))?;
            // OUT, the staging folder, and a link back to a folder being
            // copied (which would recurse without end) are not copied.
            if exclude.contains(&canonical)
                || src.canonicalize().is_ok_and(|s| s.starts_with(&canonical))
            {
                continue;
            }
            std::fs::create_dir_all(&target)
                .with_context(|| format!("cannot create {}", target.display()))?;
            copy_tree(&path, &target, &|_| false, exclude)?;
        } else if meta.is_file() {
            std::fs::copy(&path, &target).map_err(|e| {
                let needed = std::fs::metadata(&path).ok().map(|m| m.len());
                crate::staging::write_failed(e, &target, needed)
                    .context(format!("cannot copy {}", path.display()))
            })?;
        }
    }
    Ok(())
}

/// `config.json` of the input (an empty object when there is none).
fn input_config(ckpt: &Checkpoint) -> Result<serde_json::Map<String, Value>> {
    match ckpt.config.clone().unwrap_or_else(|| json!({})) {
        Value::Object(m) => Ok(m),
        _ => bail!("config.json is not an object"),
    }
}

/// Writes `config.json` and the index when the input has one.
fn write_metadata(
    ckpt: &Checkpoint,
    dest: &Path,
    config: serde_json::Map<String, Value>,
    weight_map: &BTreeMap<String, String>,
    total_size: usize,
) -> Result<()> {
    let write = |path: PathBuf, text: String| {
        let needed = Some(text.len() as u64);
        std::fs::write(&path, text).map_err(|e| crate::staging::write_failed(e, &path, needed))
    };
    write(
        dest.join("config.json"),
        serde_json::to_string_pretty(&Value::Object(config))? + "\n",
    )?;
    if ckpt.indexed || ckpt.shards.len() > 1 {
        let index = json!({"metadata": {"total_size": total_size}, "weight_map": weight_map});
        write(
            dest.join(INDEX),
            serde_json::to_string_pretty(&index)? + "\n",
        )?;
    }
    Ok(())
}

/// `groupq quantize`.
pub fn quantize(o: &QuantizeOptions) -> Result<Summary> {
    o.spec.validate()?;
    let fmt = o.spec.format.imp();
    if o.quantize_lm_head {
        if let Some(why) = fmt.lm_head_problem() {
            bail!(
                "--quantize-lm-head cannot be used with --format {}: {why}. Drop --quantize-lm-head \
                 (lm_head stays in float) or use --format compressed-tensors",
                fmt.name()
            );
        }
    }
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

    // Decide every tensor's fate, and the config, before writing anything.
    let layout = Layout::of(&ckpt);
    let mut summary = Summary::default();
    let plan = plan_modules(o, &ckpt, &layout, &mut summary)?;
    let quantization_config = checked_config(o, &layout, &plan)?;
    let mut actions: Vec<Vec<Action>> = Vec::new();
    for shard in &ckpt.shards {
        let list = shard
            .tensors
            .iter()
            .map(|t| {
                summary.bytes_in += t.end - t.start;
                let module = t.name.trim_end_matches(".weight");
                if !is_linear_weight(t) || !plan.quantized.contains(module) {
                    return Action::Copy;
                }
                let (n, k) = layout.out_in(t);
                Action::Quantize {
                    prefix: module.to_string(),
                    n,
                    k,
                    transposed: layout.is_conv1d(module),
                }
            })
            .collect();
        actions.push(list);
    }

    let existing: std::collections::BTreeSet<&str> =
        ckpt.tensors().map(|(_, t)| t.name.as_str()).collect();
    let staging = Staging::dir(&o.output)?;
    let bar = progress(summary.bytes_in, o.quiet, "quantizing");
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0usize;
    // The weights are quantized on a producer thread, in file order, up to
    // LOOKAHEAD weights ahead of the writer: reading, quantizing and packing
    // the next weights (on every core) overlaps writing the previous ones and
    // copying the tensors in between (an embedding takes as long to copy as
    // several weights take to quantize). A quantized weight is a quarter of
    // its input or less, so the queue holds little memory.
    const LOOKAHEAD: usize = 8;
    let (send, receive) = std::sync::mpsc::sync_channel::<Result<Quantized>>(LOOKAHEAD);
    let jobs: Vec<(&Shard, &crate::checkpoint::TensorInfo, usize, usize, bool)> = ckpt
        .shards
        .iter()
        .zip(&actions)
        .flat_map(|(shard, list)| {
            shard
                .tensors
                .iter()
                .zip(list)
                .filter_map(move |(t, a)| match a {
                    Action::Quantize {
                        n, k, transposed, ..
                    } => Some((shard, t, *n, *k, *transposed)),
                    Action::Copy => None,
                })
        })
        .collect();
    std::thread::scope(|scope| -> Result<()> {
        // Owned here, so that every way out of this closure (an error
        // included) drops it before the scope waits for the producer, whose
        // next send then fails and ends it.
        let receive = receive;
        let spec = &o.spec;
        scope.spawn(move || {
            for (shard, t, n, k, transposed) in jobs {
                let out = shard
                    .read(t)
                    .and_then(|bytes: Vec<u8>| quantize_tensor(spec, &bytes, t, n, k, transposed))
                    .with_context(|| format!("quantizing {}", t.name));
                let failed = out.is_err();
                // The writer has stopped (an error): so does the producer.
                if send.send(out).is_err() || failed {
                    return;
                }
            }
        });
        for (shard, list) in ckpt.shards.iter().zip(&actions) {
            let mut outs: Vec<OutTensor> = Vec::new();
            // Where each output tensor's bytes come from: part `p` of what
            // input tensor `i` becomes, or a tensor the format's loader
            // needs beside a layer.
            enum Source {
                Part(usize, usize),
                Bytes(Vec<u8>),
            }
            let mut source = Vec::new();
            for (i, (t, a)) in shard.tensors.iter().zip(list).enumerate() {
                let produced = match a {
                    Action::Copy => {
                        vec![OutTensor::new(t.name.clone(), t.dtype, t.shape.clone())]
                    }
                    Action::Quantize { prefix, n, k, .. } => {
                        o.spec.outputs(prefix, t.dtype, *n, *k)
                    }
                };
                let extra = match t.name.strip_suffix(".weight") {
                    Some(module) if layout.matrices.contains(module) => fmt
                        .companions(&layout, module, layout.out_in(t).0, t.dtype)
                        .into_iter()
                        .filter(|(c, _)| !existing.contains(c.name.as_str()))
                        .collect(),
                    _ => Vec::new(),
                };
                for (p, out) in produced.into_iter().enumerate() {
                    source.push(Source::Part(i, p));
                    outs.push(out);
                }
                for (out, bytes) in extra {
                    source.push(Source::Bytes(bytes));
                    outs.push(out);
                }
            }
            for out in &outs {
                weight_map.insert(out.name.clone(), shard.file_name.clone());
                total_size += out.bytes();
            }
            let mut pending: Vec<Vec<u8>> = Vec::new();
            let path = staging.tmp.join(&shard.file_name);
            write_safetensors(
                &path,
                &outs,
                shard.metadata.as_ref(),
                |j, w: &mut dyn Write| {
                    let (i, part) = match &source[j] {
                        Source::Part(i, part) => (*i, *part),
                        Source::Bytes(bytes) => return Ok(w.write_all(bytes)?),
                    };
                    let t = &shard.tensors[i];
                    match &list[i] {
                        Action::Copy => {
                            shard.copy_to(t, w)?;
                            bar.inc((t.end - t.start) as u64);
                        }
                        Action::Quantize { n, k, .. } => {
                            if part == 0 {
                                let Quantized { stats, pack } =
                                    receive.recv().map_err(|_| {
                                        anyhow!("internal error: the quantizer stopped")
                                    })??;
                                // Packed here, on the writer's thread, while
                                // the next weights are quantized.
                                pending = pack().with_context(|| format!("packing {}", t.name))?;
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
        Ok(())
    })?;
    bar.finish_and_clear();
    summary.bytes_out = total_size;
    let mut config = input_config(&ckpt)?;
    config.insert("quantization_config".into(), quantization_config);
    write_metadata(&ckpt, &staging.tmp, config, &weight_map, total_size)?;
    copy_other_files(&ckpt, &staging.tmp, &o.output)?;
    if let Some(report) = &o.report {
        std::fs::write(
            report,
            serde_json::to_string_pretty(&report_json(o, &summary))? + "\n",
        )
        .with_context(|| format!("cannot write {}", report.display()))?;
    }
    // An input changed while it was read is an error, and OUT is not made.
    ckpt.check_unchanged()?;
    staging.commit()?;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

fn quantize_tensor(
    spec: &Spec,
    bytes: &[u8],
    t: &TensorInfo,
    n: usize,
    k: usize,
    transposed: bool,
) -> Result<Quantized> {
    let mut w = Weights::read(t.dtype, bytes)?;
    if transposed {
        // A Conv1D weight is stored [in_features, out_features].
        w = w.transposed(k, n);
    }
    spec.quantize(&w, n, k)
}

/// The `--report` JSON.
pub fn report_json(o: &QuantizeOptions, s: &Summary) -> Value {
    json!({
        "input": o.input.display().to_string(),
        "output": o.output.display().to_string(),
        "format": o.spec.format.name(),
        "bits": o.spec.bits,
        "group_size": o.spec.group_size,
        "symmetric": o.spec.symmetric,
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "tensors": s.tensors_json(),
        "kept_in_float": s.kept_json(),
    })
}

/// The summary table printed after `quantize`.
pub fn print_summary(o: &QuantizeOptions, s: &Summary) {
    print_table(s);
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
        s.mean_sqnr_db()
    );
    println!("wrote {}", o.output.display());
}

/// The per-tensor lines of the summary.
pub(crate) fn print_table(s: &Summary) {
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
}

/// `groupq dequantize`: float weights back, `quantization_config` removed.
pub fn dequantize(
    input: &Path,
    output: &Path,
    dtype: Option<Dtype>,
    force: bool,
    quiet: bool,
) -> Result<usize> {
    check_output(input, output, force)?;
    let ckpt = Checkpoint::open(input)?;
    let names: Vec<&str> = ckpt.tensors().map(|(_, t)| t.name.as_str()).collect();
    let format = Format::detect(ckpt.quantization_config(), &names)
        .ok_or_else(|| anyhow!("{}: no quantized tensors found", input.display()))?;
    let detected = format.imp();
    let qc = ckpt.quantization_config();
    let mut config = input_config(&ckpt)?;
    config.remove("quantization_config");
    // The weights are written in the dtype the model loads in: --dtype, else
    // the config's, else that of the checkpoint's other float tensors.
    let config_dtype = ["torch_dtype", "dtype"].iter().find_map(|key| {
        config
            .get(*key)
            .and_then(|v| v.as_str())
            .and_then(dtype_from_config)
    });
    let others = ckpt
        .tensors()
        .map(|(_, t)| t.dtype)
        .find(|d| matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16));
    let target = dtype.or(config_dtype).or(others);
    if let Some(d) = target {
        let mut keyed = false;
        for key in ["torch_dtype", "dtype"] {
            if config.get(key).is_some_and(|v| v.is_string()) {
                config.insert(key.into(), json!(dtype_config_name(d)));
                keyed = true;
            }
        }
        if !keyed && d != Dtype::F32 {
            config.insert("torch_dtype".into(), json!(dtype_config_name(d)));
        }
    }
    let layout = Layout::of(&ckpt);
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
    let staging = Staging::dir(output)?;
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
                let lookup = |part: &str| -> Result<Option<crate::formats::Stored>> {
                    let Some(&(si, ti)) = parts.get(&format!("{prefix}.{part}")) else {
                        return Ok(None);
                    };
                    let (s, t) = (&ckpt.shards[si], &ckpt.shards[si].tensors[ti]);
                    Ok(Some((t.dtype, t.shape.clone(), s.read(t)?)))
                };
                let r = detected
                    .dequantize_module(qc, &lookup, &stream)
                    .with_context(|| format!("dequantizing {prefix}"))?;
                let out_dtype = target.unwrap_or(r.native);
                let (values, shape) = if layout.is_conv1d(prefix) {
                    // A Conv1D weight is stored [in_features, out_features].
                    (transpose(&r.values, r.n, r.k), vec![r.k, r.n])
                } else {
                    (r.values, vec![r.n, r.k])
                };
                let bytes = restored_bytes(&values, out_dtype)?;
                outs.push(OutTensor::new(format!("{prefix}.weight"), out_dtype, shape));
                sources.push(Source::Rebuilt(bytes));
                modules += 1;
            } else if !is_part(&t.name) && !detected.is_companion(&layout, &t.name) {
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
                    Source::Copy(ti) => shard.copy_to(&shard.tensors[*ti], w)?,
                    Source::Rebuilt(bytes) => w.write_all(bytes)?,
                }
                Ok(())
            },
        )?;
        bar.inc(shard.tensors.iter().map(|t| (t.end - t.start) as u64).sum());
    }
    bar.finish_and_clear();
    write_metadata(&ckpt, &staging.tmp, config, &weight_map, total_size)?;
    copy_other_files(&ckpt, &staging.tmp, output)?;
    // An input changed while it was read is an error, and OUT is not made.
    ckpt.check_unchanged()?;
    staging.commit()?;
    Ok(modules)
}

/// `groupq inspect`: tensors, dtypes, shapes, and the detected format.
pub fn inspect(path: &Path) -> Result<String> {
    let ckpt = Checkpoint::open(path)?;
    let mut out = String::new();
    let names: Vec<&str> = ckpt.tensors().map(|(_, t)| t.name.as_str()).collect();
    let detected = Format::detect(ckpt.quantization_config(), &names).map(Format::imp);
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
            let qc = ckpt.quantization_config();
            let mut line = format!(
                "quantization: {} ({modules} quantized modules)",
                d.describe(qc)
            );
            if let Some(q) = qc {
                if let (Some(b), Some(g)) = d.bits_and_group(q) {
                    line += &format!(", {b}-bit, group {g}");
                }
            }
            line + "\n"
        }
        None => "quantization: none (float checkpoint)\n".to_string(),
    };
    Ok(out)
}
