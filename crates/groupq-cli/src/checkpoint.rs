//! Reading model checkpoints (a directory of safetensors shards, or one
//! file) through memory maps, and writing safetensors files one tensor at a
//! time.

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// One tensor of a shard.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range inside the file.
    pub start: usize,
    pub end: usize,
}

/// One safetensors file, memory-mapped.
pub struct Shard {
    pub path: PathBuf,
    pub file_name: String,
    pub metadata: Option<BTreeMap<String, String>>,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
    mmap: Mmap,
}

impl Shard {
    /// Maps and validates one file: a truncated or corrupt header, or data
    /// that does not fit the file, is an error naming the file.
    pub fn open(path: &Path) -> Result<Shard> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: a map is undefined behaviour only if the file is changed
        // while mapped. groupq never writes its inputs (outputs go to a new
        // directory, and IN == OUT is refused); another process truncating
        // the checkpoint mid-run is outside what any mmap reader can guard.
        let mmap = unsafe { Mmap::map(&file) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        let (metadata, tensors) = parse_header(&mmap)
            .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
        Ok(Shard {
            file_name: path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            path: path.to_path_buf(),
            metadata,
            tensors,
            mmap,
        })
    }

    /// The raw little-endian bytes of a tensor.
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        &self.mmap[t.start..t.end]
    }
}

/// A model: `config.json` (optional), the shards, the other files.
pub struct Checkpoint {
    /// The model directory (`None` when the input is a single file).
    pub dir: Option<PathBuf>,
    pub config: Option<Value>,
    pub shards: Vec<Shard>,
    /// Whether the input had `model.safetensors.index.json`.
    pub indexed: bool,
}

pub const INDEX: &str = "model.safetensors.index.json";

/// Largest JSON file (config, index) read: real ones are kilobytes to a few
/// megabytes; a larger one is refused before it is read.
pub const MAX_JSON_BYTES: u64 = 64 << 20;
/// Most shard files an index may name.
pub const MAX_SHARDS: usize = 65_536;

/// A parsed safetensors header: its metadata and its tensors in file order.
pub type Header = (Option<BTreeMap<String, String>>, Vec<TensorInfo>);

/// A safetensors file's header, validated against its bytes (every
/// tensor's data inside the file, shapes and dtypes consistent): the
/// metadata and the tensors in file order.
pub fn parse_header(bytes: &[u8]) -> Result<Header> {
    SafeTensors::deserialize(bytes).map_err(|e| anyhow!("{e}"))?;
    let (header_len, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| anyhow!("invalid header: {e}"))?;
    let base = 8 + header_len;
    let mut tensors: Vec<TensorInfo> = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| TensorInfo {
            name,
            dtype: info.dtype,
            shape: info.shape.clone(),
            start: base + info.data_offsets.0,
            end: base + info.data_offsets.1,
        })
        .collect();
    tensors.sort_by_key(|t| t.start);
    let metadata = meta
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect::<BTreeMap<_, _>>());
    Ok((metadata, tensors))
}

/// The shard files an index names (sorted, each once): plain file names of
/// the model folder, at most [`MAX_SHARDS`]. `index_path` names it in errors.
pub fn shard_names(index: &Value, index_path: &Path) -> Result<Vec<String>> {
    let map = index["weight_map"]
        .as_object()
        .ok_or_else(|| anyhow!("{}: no weight_map", index_path.display()))?;
    let mut files: Vec<String> = Vec::new();
    for (tensor, v) in map {
        let file = v.as_str().ok_or_else(|| {
            anyhow!(
                "{}: weight_map[{tensor:?}] is not a file name",
                index_path.display()
            )
        })?;
        // A shard is a file of this folder: no path, no `..`.
        let plain = Path::new(file).file_name().is_some_and(|n| n == file)
            && file != ".."
            && !file.contains(['/', '\\']);
        if !plain {
            bail!(
                "{}: weight_map[{tensor:?}] = {file:?} is not a file of the model folder",
                index_path.display()
            );
        }
        files.push(file.to_string());
    }
    files.sort();
    files.dedup();
    if files.len() > MAX_SHARDS {
        bail!(
            "{}: {} shard files, more than groupq takes ({MAX_SHARDS})",
            index_path.display(),
            files.len()
        );
    }
    Ok(files)
}

/// The fuzz property of the checkpoint readers as `groupq quantize` uses
/// them (cargo-fuzz target `checkpoint`, and the normal tests): `data` is
/// split into a config.json, an index and a shard; each is parsed and
/// validated, the layout detected from what parsed. Every failure is an
/// error value, every accepted shard's tensors lie inside its bytes with a
/// size that matches shape and dtype; never a panic.
pub fn fuzz_checkpoint(data: &[u8]) {
    let take = |d: &mut &[u8]| -> Vec<u8> {
        let n = d
            .first()
            .map_or(0, |&b| usize::from(b) * 4)
            .min(d.len().saturating_sub(1));
        let (head, rest) = d.split_at((1 + n).min(d.len()));
        *d = rest;
        head.get(1..).unwrap_or_default().to_vec()
    };
    let mut d = data;
    let config_bytes = take(&mut d);
    let index_bytes = take(&mut d);
    let config: Option<Value> = serde_json::from_slice(&config_bytes).ok();
    if let Ok(index) = serde_json::from_slice::<Value>(&index_bytes) {
        if let Ok(names) = shard_names(&index, Path::new("index.json")) {
            assert!(names.len() <= MAX_SHARDS);
            assert!(names
                .iter()
                .all(|n| !n.contains('/') && n != ".." && !n.is_empty()));
        }
    }
    if let Ok((_, tensors)) = parse_header(d) {
        for t in &tensors {
            assert!(
                t.start <= t.end && t.end <= d.len(),
                "{} outside the file",
                t.name
            );
            let bits = t
                .shape
                .iter()
                .try_fold(t.dtype.bitsize(), |a, &d| a.checked_mul(d));
            assert_eq!(bits, Some((t.end - t.start) * 8), "{}: size", t.name);
        }
        let refs: Vec<&TensorInfo> = tensors.iter().collect();
        let layout = crate::layout::Layout::from_tensors(&refs, config.as_ref());
        for t in &tensors {
            if crate::layout::is_linear_weight(t) {
                let _ = layout.out_in(t);
            }
        }
    }
}

/// A JSON file of the model folder, or `None` where it does not exist. A
/// file larger than [`MAX_JSON_BYTES`], unreadable, or not JSON is an error
/// naming it.
pub fn read_json(path: &Path) -> Result<Option<Value>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if !meta.is_file() {
        bail!("{}: not a regular file", path.display());
    }
    if meta.len() > MAX_JSON_BYTES {
        bail!(
            "{}: {} bytes, more than a JSON file of a model can be ({MAX_JSON_BYTES})",
            path.display(),
            meta.len()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    Ok(Some(v))
}

impl Checkpoint {
    /// Opens a model directory or a single `.safetensors` file.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        if path.is_file() {
            return Ok(Checkpoint {
                dir: None,
                config: None,
                shards: vec![Shard::open(path)?],
                indexed: false,
            });
        }
        if !path.is_dir() {
            bail!("{}: no such file or directory", path.display());
        }
        let config = read_json(&path.join("config.json"))?;
        let index_path = path.join(INDEX);
        let indexed = index_path.is_file();
        let names: Vec<String> = if indexed {
            let index = read_json(&index_path)?.unwrap_or(Value::Null);
            shard_names(&index, &index_path)?
        } else {
            let mut files: Vec<String> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors"))
                .collect();
            files.sort();
            files
        };
        if names.is_empty() {
            bail!("{}: no .safetensors files", path.display());
        }
        let shards = names
            .iter()
            .map(|n| Shard::open(&path.join(n)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Checkpoint {
            dir: Some(path.to_path_buf()),
            config,
            shards,
            indexed,
        })
    }

    /// Every tensor, with its shard.
    pub fn tensors(&self) -> impl Iterator<Item = (&Shard, &TensorInfo)> {
        self.shards
            .iter()
            .flat_map(|s| s.tensors.iter().map(move |t| (s, t)))
    }

    /// The `quantization_config` of `config.json`, if any (`null` is none).
    pub fn quantization_config(&self) -> Option<&Value> {
        self.config
            .as_ref()
            .and_then(|c| c.get("quantization_config"))
            .filter(|q| !q.is_null())
    }
}

/// A tensor to be written: its name, dtype, shape and size in bytes.
#[derive(Debug, Clone)]
pub struct OutTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl OutTensor {
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>) -> OutTensor {
        OutTensor {
            name: name.into(),
            dtype,
            shape,
        }
    }

    pub fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * dtype_size(self.dtype)
    }
}

pub fn dtype_size(d: Dtype) -> usize {
    match d {
        Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
        Dtype::F16 | Dtype::BF16 | Dtype::I16 | Dtype::U16 => 2,
        _ => 1,
    }
}

pub fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

/// Writes a safetensors file whose tensors are known up front: the header
/// first, then each tensor's bytes from `data(i, out)`, in order. The bytes
/// written for each tensor must be exactly `tensors[i].bytes()`.
pub fn write_safetensors(
    path: &Path,
    tensors: &[OutTensor],
    metadata: Option<&BTreeMap<String, String>>,
    mut data: impl FnMut(usize, &mut dyn Write) -> Result<()>,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    if let Some(m) = metadata {
        header.insert("__metadata__".into(), serde_json::to_value(m)?);
    }
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + t.bytes();
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": dtype_name(t.dtype), "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header = serde_json::to_string(&Value::Object(header))?.into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let needed = Some((8 + header.len() + offset) as u64);
    let failed = |e: anyhow::Error| crate::staging::write_failed(e, path, needed);
    let file = File::create(path).map_err(|e| failed(e.into()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(|e| failed(e.into()))?;
    out.write_all(&header).map_err(|e| failed(e.into()))?;
    for (i, t) in tensors.iter().enumerate() {
        let mut counter = Counting {
            inner: &mut out,
            written: 0,
        };
        data(i, &mut counter).map_err(failed)?;
        if counter.written != t.bytes() {
            bail!(
                "internal error: {} wrote {} bytes, expected {}",
                t.name,
                counter.written,
                t.bytes()
            );
        }
    }
    out.flush().map_err(|e| failed(e.into()))?;
    Ok(())
}

struct Counting<'a, W: Write> {
    inner: &'a mut W,
    written: usize,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
