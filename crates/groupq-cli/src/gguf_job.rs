//! `groupq quantize IN.gguf -o OUT.gguf --format gguf --type TYPE`: what
//! llama-quantize does to an F32/F16/BF16 GGUF model, byte for byte — the
//! same per-tensor types (see [`llama_mix`](crate::llama_mix)), metadata,
//! tensor order and padding — on every core.

use crate::commands::{check_output, progress, Summary, TensorReport};
use crate::formats::{sums, Stats, Storage};
use crate::gguf::{GgmlDtype, Gguf, GgufWriter, TensorInfo, Value};
use crate::imatrix::Imatrix;
use crate::llama_mix::{choose_types, tensor_order, Ftype, Hparams, MixTensor};
use crate::staging::Staging;
use anyhow::{bail, Context, Result};
use groupq::ggml;
use groupq::half::{bf16, f16};
use rayon::prelude::*;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of the GGUF job.
#[derive(Debug, Clone)]
pub struct GgufOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub ftype: Ftype,
    pub force: bool,
    pub quiet: bool,
    /// Where to write the `--report` JSON.
    pub report: Option<PathBuf>,
    /// llama-imatrix's importance-matrix file (`--imatrix`), as given on
    /// the command line (llama-quantize records the path in the output).
    pub imatrix: Option<PathBuf>,
}

/// The keys llama-quantize drops from the input's metadata (the two
/// quantization keys come back at the end).
const DROPPED_KEYS: [&str; 5] = [
    "general.quantization_version",
    "general.file_type",
    "split.no",
    "split.count",
    "split.tensors.count",
];

/// ggml's `GGML_QNT_VERSION`.
const QNT_VERSION: u32 = 2;

/// Rows per unit of parallel work: about 64 Ki elements, whole rows.
fn rows_per_chunk(n_per_row: usize) -> usize {
    ((1 << 16) / n_per_row.max(1)).max(1)
}

/// Whether `path` starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == crate::gguf::MAGIC
}

/// One output tensor: the input's info and the type it becomes.
struct Planned<'a> {
    info: &'a TensorInfo,
    to: GgmlDtype,
    /// The importance of each column (per matrix of a 3-D weight).
    imatrix: Option<&'a [f32]>,
}

/// A GGUF input mapped read-only, with what the file was when mapped.
struct Mapped {
    bytes: memmap2::Mmap,
    file: std::fs::File,
    path: std::path::PathBuf,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Mapped {
    /// The file still has the size and modification time it had when it
    /// was mapped; checked before an output made from it is committed.
    fn check_unchanged(&self) -> Result<()> {
        let meta = self
            .file
            .metadata()
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        if meta.len() != self.len || meta.modified().ok() != self.modified {
            bail!(
                "{} changed while being read (it was {} bytes, it is now {}); nothing was written",
                self.path.display(),
                self.len,
                meta.len()
            );
        }
        Ok(())
    }
}

/// Maps a regular file read-only (a FIFO or device is refused before it is
/// opened).
fn map(path: &Path) -> Result<Mapped> {
    let (file, meta) = crate::checkpoint::open_regular(path)?;
    // SAFETY: a map is undefined behaviour only if the file changes while
    // mapped. groupq never writes its input (OUT == IN is refused); another
    // process truncating it mid-run ends this one with SIGBUS (its staging
    // folder is removed by the next run, as for any killed run), and a
    // rewrite is caught by `check_unchanged` before OUT is committed. The
    // safetensors readers use positioned reads instead; GGUF inputs keep the
    // map because their readers borrow the whole file.
    let bytes = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("cannot map {}", path.display()))?;
    Ok(Mapped {
        bytes,
        file,
        path: path.to_path_buf(),
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// Runs the job.
pub fn quantize_gguf(o: &GgufOptions) -> Result<Summary> {
    let start = Instant::now();
    check_output(&o.input, &o.output, o.force)?;
    let bytes = map(&o.input)?;
    let g = Gguf::parse(&bytes)
        .with_context(|| format!("{}: not a GGUF file llama.cpp can load", o.input.display()))?;
    if g.alignment != crate::gguf::DEFAULT_ALIGNMENT {
        bail!(
            "{}: general.alignment is {}; llama-quantize writes tensor data aligned to 32 bytes, so groupq only re-quantizes files with the default alignment",
            o.input.display(),
            g.alignment
        );
    }
    if let Some((_, v)) = g.metadata.iter().find(|(k, _)| k == "split.count") {
        if !matches!(v, Value::U16(0 | 1)) {
            bail!(
                "{}: one part of a split GGUF model (split.count {v:?}); merge the parts first \
                 (llama.cpp's llama-gguf-split --merge), groupq reads single files",
                o.input.display()
            );
        }
    }
    let hp = Hparams::from_gguf(&g).with_context(|| o.input.display().to_string())?;
    let mut order: Vec<&TensorInfo> = g.tensors.iter().collect();
    order.sort_by(|a, b| tensor_order(&a.name, &b.name));
    let mix: Vec<MixTensor<'_>> = order
        .iter()
        .map(|t| MixTensor {
            name: &t.name,
            dims: &t.dims,
            dtype: t.dtype,
        })
        .collect();
    let imatrix = match &o.imatrix {
        Some(path) => Some(Imatrix::load(path)?),
        None => None,
    };
    // llama-quantize passes an importance matrix only when it has entries.
    let imatrix = imatrix.filter(|m| !m.values.is_empty());
    let types = choose_types(&hp, o.ftype, &mix, imatrix.is_some())?;
    let plan: Vec<Planned<'_>> = order
        .iter()
        .zip(types)
        .map(|(info, to)| -> Result<Planned<'_>> {
            let weights = match &imatrix {
                Some(m) if info.dtype != to => importance(m, info, to, o.ftype)?,
                _ => None,
            };
            Ok(Planned {
                info,
                to,
                imatrix: weights,
            })
        })
        .collect::<Result<_>>()?;
    for p in &plan {
        check_convertible(p)?;
    }

    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        if !DROPPED_KEYS.contains(&k.as_str()) {
            w.push_kv(k, v.clone());
        }
    }
    w.push_kv("general.quantization_version", Value::U32(QNT_VERSION));
    w.push_kv("general.file_type", Value::U32(o.ftype.id));
    if let (Some(m), Some(path)) = (&imatrix, &o.imatrix) {
        // llama-quantize's overrides, in its order: strings cut to 127
        // bytes, integers written as UINT32.
        let cut = |s: &[u8]| s[..s.len().min(127)].to_vec();
        let path = path.as_os_str().as_encoded_bytes();
        set_kv(&mut w, "quantize.imatrix.file", Value::String(cut(path)));
        if let Some(d) = m.datasets.first() {
            set_kv(
                &mut w,
                "quantize.imatrix.dataset",
                Value::String(cut(d.as_bytes())),
            );
        }
        set_kv(
            &mut w,
            "quantize.imatrix.entries_count",
            Value::U32(m.values.len() as u32),
        );
        if m.chunk_count > 0 {
            set_kv(
                &mut w,
                "quantize.imatrix.chunks_count",
                Value::U32(m.chunk_count as u32),
            );
        }
    }
    for p in &plan {
        w.push_tensor(&p.info.name, &p.info.dims, p.to)?;
    }

    let (staged, mut out) = create_staged(&o.output)?;
    let werr = write_error(&staged.tmp);
    w.write_header(&mut out).map_err(werr)?;
    let total: u64 = plan.iter().map(|p| p.info.size).sum();
    let bar = progress(total as usize, o.quiet, "quantizing");
    let mut summary = Summary::default();
    // Tensors are converted on the pool while the previous one is written.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<u8>)>(2);
    std::thread::scope(|scope| -> Result<()> {
        let writer = scope.spawn(|| -> Result<()> {
            for (i, data) in rx {
                let t = &w.tensors[i];
                anyhow::ensure!(data.len() as u64 == t.size, "internal: size of {}", t.name);
                w.write_tensor_data(&mut out, &data).map_err(werr)?;
            }
            out.flush().map_err(werr)?;
            out.get_ref().sync_all().map_err(werr)?;
            Ok(())
        });
        let mut sent = Ok(());
        for (i, p) in plan.iter().enumerate() {
            let src = g.tensor_data(p.info);
            let data = if p.info.dtype == p.to {
                summary
                    .kept
                    .push((p.info.name.clone(), format!("kept as {}", p.to)));
                src.to_vec()
            } else {
                let (data, stats) = convert(p, src)?;
                if let Some(stats) = stats {
                    let k = p.info.dims[0] as usize;
                    summary.quantized.push(TensorReport {
                        name: format!("{} ({})", p.info.name, p.to),
                        shape: [p.info.rows() as usize, k],
                        stats,
                    });
                } else {
                    summary
                        .kept
                        .push((p.info.name.clone(), format!("converted to {}", p.to)));
                }
                data
            };
            bar.inc(p.info.size);
            if tx.send((i, data)).is_err() {
                sent = Err(());
                break;
            }
        }
        drop(tx);
        let written = writer.join().expect("the writer thread does not panic");
        written?;
        anyhow::ensure!(sent.is_ok(), "the writer stopped early");
        Ok(())
    })?;
    bar.finish_and_clear();
    bytes.check_unchanged()?;
    staged.commit()?;
    summary.bytes_in = bytes.len();
    summary.bytes_out = w.file_size() as usize;
    summary.seconds = start.elapsed().as_secs_f64();
    if let Some(path) = &o.report {
        let text = serde_json::to_string_pretty(&report_json(o, &summary))? + "\n";
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(summary)
}

/// ggml's `gguf_set_val_*`: an existing key is removed, the new one goes
/// last.
fn set_kv(w: &mut GgufWriter, key: &str, value: Value) {
    w.metadata.retain(|(k, _)| k != key);
    w.push_kv(key, value);
}

/// The importance weights llama-quantize uses for a tensor quantized to
/// `to`: none where the matrix has no entry for it; an entry of the wrong
/// size is an error (but for the token embedding, which goes without).
fn importance<'m>(
    m: &'m Imatrix,
    info: &TensorInfo,
    to: GgmlDtype,
    ftype: Ftype,
) -> Result<Option<&'m [f32]>> {
    let ne0 = info.dims.first().copied().unwrap_or(1);
    let ne2 = info.dims.get(2).copied().unwrap_or(1);
    let found = match m.values.get(&info.name) {
        None => None,
        Some(v) if v.len() as u64 == ne0 * ne2 => Some(v.as_slice()),
        Some(v) => {
            if !crate::llama_mix::is_token_embd(&info.name) {
                bail!(
                    "the importance matrix holds {} values for {}, which needs {} (ne0 {ne0} × ne2 {ne2})",
                    v.len(),
                    info.name,
                    ne0 * ne2
                );
            }
            None
        }
    };
    if found.is_none() && crate::llama_mix::requires_imatrix(&info.name, to, ftype) {
        bail!(
            "the importance matrix has no entry for {}, which {} quantizes to {to}: llama-quantize refuses this too",
            info.name,
            ftype.name
        );
    }
    Ok(found)
}

/// The `--report` JSON: every quantized tensor's type, SQNR and largest
/// error, and the tensors kept or converted.
pub fn report_json(o: &GgufOptions, s: &Summary) -> serde_json::Value {
    use serde_json::json;
    json!({
        "input": o.input.display().to_string(),
        "output": o.output.display().to_string(),
        "format": "gguf",
        "type": o.ftype.name,
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "tensors": s.tensors_json(),
        "kept": s.kept_json(),
    })
}

/// The summary table printed after the job.
pub fn print_summary(o: &GgufOptions, s: &Summary) {
    crate::commands::print_table(s);
    println!(
        "{} tensors quantized to GGUF {}, {} kept or converted; {:.1} MB -> {:.1} MB in {:.2} s; mean SQNR {:.2} dB",
        s.quantized.len(),
        o.ftype.name,
        s.kept.len(),
        s.bytes_in as f64 / 1e6,
        s.bytes_out as f64 / 1e6,
        s.seconds,
        s.mean_sqnr_db()
    );
    println!("wrote {}", o.output.display());
}

/// Refuses what llama-quantize refuses: re-quantizing a quantized tensor.
fn check_convertible(p: &Planned<'_>) -> Result<()> {
    let from = p.info.dtype;
    if from == p.to || [GgmlDtype::F32, GgmlDtype::F16, GgmlDtype::BF16].contains(&from) {
        return Ok(());
    }
    bail!(
        "{}: requantizing from type {from} is disabled (llama-quantize refuses it too): start from an F32, F16 or BF16 GGUF",
        p.info.name
    )
}

/// Little-endian bytes as a slice of `T`, without a copy, where the host is
/// little-endian and the bytes are aligned for `T`.
fn in_place<T: bytemuck::Pod>(b: &[u8]) -> Option<&[T]> {
    if cfg!(target_endian = "little") {
        bytemuck::try_cast_slice(b).ok()
    } else {
        None
    }
}

/// The input rows `[r0, r0 + n)` as f32 (F16 exactly, BF16 by a shift),
/// read in place where the bytes are aligned for their type (tensor data in
/// a GGUF is 32-byte aligned and the file is mapped at a page boundary).
/// `out` is a scratch buffer, resized to the rows.
fn widen_rows<'b>(
    from: GgmlDtype,
    src: &[u8],
    k: usize,
    r0: usize,
    n: usize,
    out: &'b mut Vec<f32>,
) -> &'b mut [f32] {
    out.resize(n * k, 0.0);
    let out = &mut out[..n * k];
    let span = |size: usize| &src[r0 * k * size..(r0 + n) * k * size];
    match from.id() {
        0 => match in_place::<f32>(span(4)) {
            Some(v) => out.copy_from_slice(v),
            None => {
                for (o, b) in out.iter_mut().zip(span(4).chunks_exact(4)) {
                    *o = f32::from_le_bytes(b.try_into().expect("4 bytes"));
                }
            }
        },
        1 => match in_place::<f16>(span(2)) {
            Some(v) => f16::widen(v, out),
            None => f16::widen(&f16::read(span(2)), out),
        },
        _ => match in_place::<bf16>(span(2)) {
            Some(v) => bf16::widen(v, out),
            None => bf16::widen(&bf16::read(span(2)), out),
        },
    }
    out
}

/// ggml's f32 → bf16 (`ggml_compute_fp32_to_bf16`): NaN quieted, else
/// round to nearest even.
fn bf16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// ggml's f32 → f16 (`ggml_compute_fp32_to_fp16`): round to nearest even,
/// every NaN to the quiet NaN `0x7e00` with its sign.
fn f16_bits(v: f32) -> u16 {
    if v.is_nan() {
        return ((v.to_bits() >> 16) as u16 & 0x8000) | 0x7e00;
    }
    f16::from_f32(v).to_bits()
}

/// One tensor to its new type, with the statistics of a quantized one.
fn convert(p: &Planned<'_>, src: &[u8]) -> Result<(Vec<u8>, Option<Stats>)> {
    let k = p.info.dims.first().copied().unwrap_or(1) as usize;
    let rows = p.info.rows() as usize;
    let size = p.info.elements() / p.to.block_size() * p.to.type_size();
    let mut data = vec![0u8; size as usize];
    if rows == 0 || k == 0 {
        return Ok((data, None));
    }
    let row_bytes = size as usize / rows;
    let per = rows_per_chunk(k);
    let from = p.info.dtype;
    let rows_per_matrix = p.info.dims.get(1).copied().unwrap_or(1).max(1) as usize;
    match p.to.quant() {
        Some(ty) => {
            // Scratch buffers live as long as a rayon task, not a chunk:
            // fresh 256 KiB buffers per chunk cost page faults and zeroing.
            let parts: Vec<(f64, f64, f64)> = data
                .par_chunks_mut(per * row_bytes)
                .enumerate()
                .map_init(
                    || (Vec::new(), Vec::new()),
                    |(xbuf, back), (c, out)| -> Result<(f64, f64, f64)> {
                        let n = out.len() / row_bytes;
                        let x = widen_rows(from, src, k, c * per, n, xbuf);
                        quantize_chunk(ty, x, k, c * per, rows_per_matrix, p.imatrix, out)?;
                        back.resize(x.len(), 0.0);
                        ggml::dequantize_rows(ty, out, k, &mut back[..x.len()])?;
                        Ok(sums::<f32, f32>(x, &back[..x.len()]))
                    },
                )
                .collect::<Result<_>>()?;
            let (s, e, m) = parts.iter().fold((0.0, 0.0, 0.0f64), |a, b| {
                (a.0 + b.0, a.1 + b.1, a.2.max(b.2))
            });
            Ok((data, Some(Stats::from_sums(s, e, m))))
        }
        None => {
            data.par_chunks_mut(per * row_bytes)
                .enumerate()
                .for_each_init(Vec::new, |xbuf, (c, out)| {
                    let n = out.len() / row_bytes;
                    let x = widen_rows(from, src, k, c * per, n, xbuf);
                    write_floats(p.to, x, out);
                });
            Ok((data, None))
        }
    }
}

/// Rows `r0..` of a tensor (`x`, whole rows of `k`) to `ty`, each matrix's
/// rows (of a 3-D weight) with that matrix's importance weights.
fn quantize_chunk(
    ty: ggml::GgmlType,
    x: &[f32],
    k: usize,
    r0: usize,
    rows_per_matrix: usize,
    imatrix: Option<&[f32]>,
    out: &mut [u8],
) -> Result<()> {
    let Some(im) = imatrix else {
        ggml::quantize_rows(ty, x, k, None, out)?;
        return Ok(());
    };
    let row_bytes = ty.row_bytes(k)?;
    let rows = x.len() / k;
    let mut r = 0;
    while r < rows {
        let matrix = (r0 + r) / rows_per_matrix;
        let n = (rows_per_matrix - (r0 + r) % rows_per_matrix).min(rows - r);
        ggml::quantize_rows(
            ty,
            &x[r * k..(r + n) * k],
            k,
            Some(&im[matrix * k..(matrix + 1) * k]),
            &mut out[r * row_bytes..(r + n) * row_bytes],
        )?;
        r += n;
    }
    Ok(())
}

/// A staged output file with a large buffer, and the error of a failed
/// write naming it.
fn create_staged(output: &Path) -> Result<(Staging, BufWriter<std::fs::File>)> {
    let staged = Staging::file(output)?;
    let file = std::fs::File::create(&staged.tmp)
        .with_context(|| format!("cannot create {}", staged.tmp.display()))?;
    Ok((staged, BufWriter::with_capacity(1 << 22, file)))
}

/// The error of a failed write to `path`.
fn write_error(path: &Path) -> impl Fn(std::io::Error) -> anyhow::Error + Copy + '_ {
    move |e| crate::staging::write_failed(e, path, None)
}

/// `groupq inspect` of a GGUF file: metadata (arrays summarized), tensors
/// with their ggml type and shape, and the type mixture.
pub fn inspect_gguf(path: &Path) -> Result<String> {
    let bytes = map(path)?;
    let g =
        Gguf::parse(&bytes).with_context(|| format!("{}: invalid GGUF file", path.display()))?;
    let mut out = format!(
        "{}: GGUF v{}, {} metadata keys, {} tensors, alignment {}\n",
        path.display(),
        g.version,
        g.metadata.len(),
        g.tensors.len(),
        g.alignment
    );
    for (k, v) in &g.metadata {
        out += &format!("  {k} = {}\n", v.display_short());
    }
    let width = g
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut counts: std::collections::BTreeMap<&str, (usize, u64)> = Default::default();
    for t in &g.tensors {
        out += &format!(
            "  {:<width$}  {:>7}  {:?}\n",
            t.name,
            t.dtype.name(),
            t.shape()
        );
        let c = counts.entry(t.dtype.name()).or_default();
        c.0 += 1;
        c.1 += t.size;
    }
    let total: u64 = g.tensors.iter().map(|t| t.size).sum();
    let mix: Vec<String> = counts
        .iter()
        .map(|(n, (c, b))| format!("{n} {c} ({:.1} MB)", *b as f64 / 1e6))
        .collect();
    out += &format!(
        "{} tensors, {:.1} MB; types: {}\n",
        g.tensors.len(),
        total as f64 / 1e6,
        mix.join(", ")
    );
    if let Some(ft) = g.get("general.file_type").and_then(Value::as_u64) {
        let name = crate::llama_mix::FTYPES
            .iter()
            .find(|f| u64::from(f.id) == ft)
            .map_or("other", |f| f.name);
        out += &format!("file type: {ft} ({name})\n");
    }
    Ok(out)
}

/// `groupq dequantize` of a GGUF file: every block-quantized tensor back to
/// `to` (F32, F16 or BF16), the others copied; `general.file_type` set to
/// match and `general.quantization_version` dropped. Returns how many
/// tensors were dequantized.
pub fn dequantize_gguf(
    input: &Path,
    output: &Path,
    to: GgmlDtype,
    force: bool,
    quiet: bool,
) -> Result<usize> {
    check_output(input, output, force)?;
    let bytes = map(input)?;
    let g =
        Gguf::parse(&bytes).with_context(|| format!("{}: invalid GGUF file", input.display()))?;
    let file_type = match to.id() {
        0 => 0,
        1 => 1,
        30 => 32,
        _ => bail!("GGUF dequantizes to F32, F16 or BF16, not {to}"),
    };
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        if !DROPPED_KEYS.contains(&k.as_str()) {
            w.push_kv(k, v.clone());
        }
    }
    w.push_kv("general.file_type", Value::U32(file_type));
    let mut converted = 0;
    let mut plan = Vec::new();
    for t in &g.tensors {
        let new = if t.dtype.quant().is_some() {
            converted += 1;
            to
        } else {
            t.dtype
        };
        w.push_tensor(&t.name, &t.dims, new)?;
        plan.push(new);
    }
    anyhow::ensure!(
        converted > 0,
        "{}: no block-quantized tensors to dequantize",
        input.display()
    );
    let (staged, mut out) = create_staged(output)?;
    let werr = write_error(&staged.tmp);
    w.write_header(&mut out).map_err(werr)?;
    let bar = progress(
        g.tensors.iter().map(|t| t.size as usize).sum(),
        quiet,
        "dequantizing",
    );
    for (t, &new) in g.tensors.iter().zip(&plan) {
        let src = g.tensor_data(t);
        let data = match t.dtype.quant() {
            None => src.to_vec(),
            Some(ty) => {
                let k = t.dims.first().copied().unwrap_or(1) as usize;
                let rows = t.rows() as usize;
                let row_bytes = (t.size as usize).checked_div(rows).unwrap_or(0);
                let out_size = (new.type_size() as usize) * k;
                let mut data = vec![0u8; rows * out_size];
                let per = rows_per_chunk(k);
                if rows > 0 && k > 0 {
                    data.par_chunks_mut(per * out_size)
                        .zip(src.par_chunks(per * row_bytes))
                        .try_for_each_init(Vec::new, |x, (o, s)| -> Result<()> {
                            x.resize(o.len() / out_size * k, 0.0);
                            ggml::dequantize_rows(ty, s, k, x)?;
                            write_floats(new, x, o);
                            Ok(())
                        })?;
                }
                data
            }
        };
        w.write_tensor_data(&mut out, &data).map_err(werr)?;
        bar.inc(t.size);
    }
    out.flush().map_err(werr)?;
    bar.finish_and_clear();
    drop(out);
    bytes.check_unchanged()?;
    staged.commit()?;
    Ok(converted)
}

/// f32 values as F32, F16 or BF16 bytes (ggml's roundings).
fn write_floats(to: GgmlDtype, x: &[f32], out: &mut [u8]) {
    match to.id() {
        0 => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        1 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&f16_bits(*v).to_le_bytes());
            }
        }
        _ => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&bf16_bits(*v).to_le_bytes());
            }
        }
    }
}
