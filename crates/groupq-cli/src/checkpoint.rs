//! Reading model checkpoints (a directory of safetensors shards, or one
//! file) with positioned reads, and writing safetensors files one tensor at a
//! time.

use anyhow::{anyhow, bail, Context, Result};
use safetensors::Dtype;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

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

/// One safetensors file, open for reading. Tensors are read with positioned
/// reads (`pread`), never through a memory map: another process truncating
/// or rewriting the file while groupq reads it is then an error naming the
/// file ([`Shard::read`], [`Shard::check_unchanged`]), not a SIGBUS or
/// undefined behaviour.
pub struct Shard {
    pub path: PathBuf,
    pub file_name: String,
    pub metadata: Option<BTreeMap<String, String>>,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
    file: File,
    /// The file as opened: its size, modification time and header bytes.
    len: u64,
    modified: Option<SystemTime>,
    header: Vec<u8>,
}

/// Bytes copied per read when a tensor is copied unchanged.
const COPY_CHUNK: usize = 8 << 20;

/// Opens an input file for reading: it must be a regular file (a symlink to
/// one is followed, as in a Hugging Face cache); a FIFO, socket, device or
/// directory is refused before it is opened (opening a FIFO would block),
/// and a dangling symlink is named as such.
pub fn open_regular(path: &Path) -> Result<(File, std::fs::Metadata)> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.is_symlink() => {
            let target = std::fs::read_link(path).unwrap_or_default();
            bail!(
                "{}: a symbolic link to {}, which does not exist",
                path.display(),
                target.display()
            );
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if !meta.is_file() {
        bail!(
            "{}: not a regular file ({})",
            path.display(),
            file_kind(&meta)
        );
    }
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // What was opened, not what the name pointed at a moment before.
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "{}: not a regular file ({})",
            path.display(),
            file_kind(&meta)
        );
    }
    Ok((file, meta))
}

/// What kind of file a non-regular file is, for errors.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() || t.is_char_device() {
            return "a device";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}

/// Reads exactly `buf.len()` bytes at `offset` without moving a cursor, so
/// that several threads can read one file.
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, offset)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let (mut done, mut buf) = (0u64, buf);
        while !buf.is_empty() {
            match file.seek_read(buf, offset + done) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    done += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Shard {
    /// Opens and validates one file: a truncated or corrupt header, or data
    /// that does not fit the file, is an error naming the file. Only the
    /// header is read here.
    pub fn open(path: &Path) -> Result<Shard> {
        let (file, meta) = open_regular(path)?;
        let len = meta.len();
        let invalid = || format!("{}: not a valid safetensors file", path.display());
        let mut n = [0u8; 8];
        if len < 8 {
            return Err(anyhow!(
                "{len} bytes, shorter than the 8-byte header length"
            ))
            .with_context(invalid);
        }
        read_exact_at(&file, &mut n, 0)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER_BYTES || n > len - 8 {
            return Err(anyhow!(
                "the header claims {n} bytes; the file has {} after the length (and groupq reads at most {MAX_HEADER_BYTES})",
                len - 8
            ))
            .with_context(invalid);
        }
        let mut header = vec![0u8; 8 + n as usize];
        read_exact_at(&file, &mut header, 0)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let (metadata, tensors) = parse_header(&header, len).with_context(invalid)?;
        Ok(Shard {
            file_name: path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            path: path.to_path_buf(),
            metadata,
            tensors,
            file,
            len,
            modified: meta.modified().ok(),
            header,
        })
    }

    /// The raw little-endian bytes of a tensor, read from the file. A file
    /// that has shrunk or changed since it was opened is an error.
    pub fn read(&self, t: &TensorInfo) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; t.end - t.start];
        self.read_into(t, t.start, &mut buf)?;
        Ok(buf)
    }

    /// Copies a tensor's bytes to `w`, a bounded chunk at a time.
    pub fn copy_to(&self, t: &TensorInfo, w: &mut dyn Write) -> Result<()> {
        let mut buf = vec![0u8; COPY_CHUNK.min(t.end - t.start)];
        let mut at = t.start;
        while at < t.end {
            let n = buf.len().min(t.end - at);
            self.read_into(t, at, &mut buf[..n])?;
            w.write_all(&buf[..n])?;
            at += n;
        }
        Ok(())
    }

    fn read_into(&self, t: &TensorInfo, at: usize, buf: &mut [u8]) -> Result<()> {
        if let Err(e) = read_exact_at(&self.file, buf, at as u64) {
            self.check_size()?;
            return Err(e).with_context(|| {
                format!(
                    "cannot read {} (tensor {}, bytes {}..{})",
                    self.path.display(),
                    t.name,
                    at,
                    at + buf.len()
                )
            });
        }
        self.check_size()
    }

    /// The file's size and modification time are still those it had when
    /// it was opened (a cheap check made after every read).
    fn check_size(&self) -> Result<()> {
        let meta = self
            .file
            .metadata()
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        if meta.len() != self.len {
            bail!(
                "{} changed while being read: it was {} bytes, it is now {}",
                self.path.display(),
                self.len,
                meta.len()
            );
        }
        if meta.modified().ok() != self.modified {
            bail!(
                "{} changed while being read: it was modified (same size, {} bytes)",
                self.path.display(),
                self.len
            );
        }
        Ok(())
    }

    /// The file is still the one that was opened: same size, same
    /// modification time, same header bytes. Called before an output made
    /// from it is committed.
    pub fn check_unchanged(&self) -> Result<()> {
        self.check_size()?;
        let mut now = vec![0u8; self.header.len()];
        read_exact_at(&self.file, &mut now, 0)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        if now != self.header {
            bail!(
                "{} changed while being read: its header is not the one read at the start",
                self.path.display()
            );
        }
        Ok(())
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

/// Largest safetensors header read (the safetensors crate's own limit).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// A safetensors file's header, validated against the file's size
/// `file_len` (every tensor's data inside the file and the data filling it
/// exactly, shapes and dtypes consistent, sizes without overflow): the
/// metadata and the tensors in file order. `header` holds the file's first
/// bytes: the 8-byte length and at least the JSON it announces.
pub fn parse_header(header: &[u8], file_len: u64) -> Result<Header> {
    let n = header
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| {
            anyhow!(
                "{} bytes, shorter than the 8-byte header length",
                header.len()
            )
        })?;
    if n > MAX_HEADER_BYTES {
        bail!("the header claims {n} bytes, more than groupq reads ({MAX_HEADER_BYTES})");
    }
    let json = header.get(8..8 + n as usize).ok_or_else(|| {
        anyhow!(
            "the header claims {n} bytes; the file has {} after the length",
            header.len() - 8
        )
    })?;
    let json = std::str::from_utf8(json).map_err(|e| anyhow!("invalid header: {e}"))?;
    // Deserializing validates: offsets contiguous from 0, each tensor's size
    // that of its shape and dtype, no overflow.
    let meta: safetensors::tensor::Metadata =
        serde_json::from_str(json).map_err(|e| anyhow!("invalid header: {e}"))?;
    let data = file_len
        .checked_sub(8 + n)
        .ok_or_else(|| anyhow!("the header claims {n} bytes; the file has {file_len} in all"))?;
    if meta.data_len() as u64 != data {
        bail!(
            "the header describes {} bytes of tensor data; the file has {data}",
            meta.data_len()
        );
    }
    let header_len = n as usize;
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
    if let Ok((_, tensors)) = parse_header(d, d.len() as u64) {
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

    /// Every shard is still the file that was opened (see
    /// [`Shard::check_unchanged`]); called before an output is committed.
    pub fn check_unchanged(&self) -> Result<()> {
        self.shards.iter().try_for_each(Shard::check_unchanged)
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
