//! The GGUF container (version 3, and the version 2 files ggml still reads):
//! a strict reader over the bytes of a file and a writer that lays files out
//! as ggml's `gguf_write_to_file` does.
//!
//! A GGUF file is a header (`GGUF`, version, tensor count, key-value count),
//! the key-value metadata, the tensor infos (name, dimensions in ggml order —
//! `ne[0]` is the row, the fastest-varying axis —, ggml type, offset), zero
//! padding to the alignment, then each tensor's bytes padded to the
//! alignment.
//!
//! The reader applies ggml's loader rules (`gguf_init_from_file`) and a few
//! more, and never trusts a count or a length before checking it against the
//! bytes that remain: every hostile file is a [`GgufError`], never a panic,
//! a huge allocation or a read outside the file.
//!
//! ```
//! use groupq_cli::gguf::{Gguf, GgufWriter, GgmlDtype, Value};
//!
//! let mut w = GgufWriter::new();
//! w.push_kv("general.architecture", Value::String(b"llama".to_vec()));
//! w.push_tensor("token_embd.weight", &[4, 2], GgmlDtype::F32)?;
//! let data: Vec<u8> = (0..8u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
//! let mut file = Vec::new();
//! w.write_header(&mut file)?;
//! w.write_tensor_data(&mut file, &data)?;
//!
//! let g = Gguf::parse(&file)?;
//! assert_eq!(g.get_str("general.architecture"), Some("llama"));
//! let t = &g.tensors[0];
//! assert_eq!((t.name.as_str(), t.dims.as_slice()), ("token_embd.weight", &[4u64, 2][..]));
//! assert_eq!(g.tensor_data(t), &data[..]);
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::fmt;
use std::io::Write;

/// `GGUF` as a little-endian `u32`.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The alignment when the file has no `general.alignment` key.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The longest string ggml reads (1 GiB).
pub const MAX_STRING_LENGTH: u64 = 1 << 30;
/// The most elements of an array ggml reads.
pub const MAX_ARRAY_ELEMENTS: u64 = 1 << 30;
/// ggml's `GGML_MAX_NAME`: a tensor name is shorter.
pub const MAX_NAME: usize = 64;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;

/// Why a file is not a GGUF file ggml would load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GgufError {
    /// The file ends before a field.
    #[error("truncated: {what} at byte {offset} needs {needed} bytes, {remaining} remain")]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        remaining: u64,
    },
    /// The first four bytes are not `GGUF`.
    #[error("bad magic {0:02x?}: not a GGUF file (expected \"GGUF\")")]
    BadMagic([u8; 4]),
    /// A version other than 2 or 3 (or a big-endian file).
    #[error("unsupported GGUF version {0} (groupq reads versions 2 and 3; a version with its low 16 bits zero is a big-endian file)")]
    UnsupportedVersion(u32),
    /// A count or a length past what the file can hold or ggml accepts.
    #[error("{what} is {value}, more than {limit}")]
    TooLarge {
        what: String,
        value: u64,
        limit: u64,
    },
    /// A metadata key or value that ggml refuses.
    #[error("metadata key {index} ({key:?}): {problem}")]
    BadKey {
        index: u64,
        key: String,
        problem: String,
    },
    /// A tensor info that ggml refuses.
    #[error("tensor {index} ({name:?}): {problem}")]
    BadTensor {
        index: u64,
        name: String,
        problem: String,
    },
    /// `general.alignment` of the wrong type, zero or not a power of two.
    #[error("general.alignment: {0}")]
    BadAlignment(String),
}

type Result<T, E = GgufError> = std::result::Result<T, E>;

/// The value types of GGUF metadata (the numbers are the file's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    /// The type with file number `v`.
    pub fn from_u32(v: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Bytes of one value of a fixed-size type (`None` for strings and
    /// arrays).
    pub fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }
}

/// One metadata value. Strings are kept as their bytes (GGUF says UTF-8,
/// ggml does not check), so a file is rewritten byte for byte.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    /// ggml reads any non-zero byte as `true`; the byte is kept.
    Bool(u8),
    String(Vec<u8>),
    U64(u64),
    I64(i64),
    F64(f64),
    Array(Array),
}

/// A metadata array (GGUF has no arrays of arrays).
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    /// Fixed-size elements of `ty`, as their little-endian bytes.
    Fixed {
        ty: ValueType,
        len: u64,
        bytes: Vec<u8>,
    },
    Strings(Vec<Vec<u8>>),
}

impl Value {
    /// The value's type.
    pub fn ty(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
            Value::Array(_) => ValueType::Array,
        }
    }

    /// An unsigned or non-negative signed integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A string value, when it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// A short human-readable form (arrays summarized).
    pub fn display_short(&self) -> String {
        match self {
            Value::U8(v) => v.to_string(),
            Value::I8(v) => v.to_string(),
            Value::U16(v) => v.to_string(),
            Value::I16(v) => v.to_string(),
            Value::U32(v) => v.to_string(),
            Value::I32(v) => v.to_string(),
            Value::F32(v) => v.to_string(),
            Value::Bool(v) => (*v != 0).to_string(),
            Value::String(b) => format!("{:?}", String::from_utf8_lossy(b)),
            Value::U64(v) => v.to_string(),
            Value::I64(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            Value::Array(Array::Fixed { ty, len, .. }) => format!("[{ty:?}; {len}]"),
            Value::Array(Array::Strings(s)) => format!("[String; {}]", s.len()),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.extend(v.to_le_bytes()),
            Value::U16(v) => out.extend(v.to_le_bytes()),
            Value::I16(v) => out.extend(v.to_le_bytes()),
            Value::U32(v) => out.extend(v.to_le_bytes()),
            Value::I32(v) => out.extend(v.to_le_bytes()),
            Value::F32(v) => out.extend(v.to_le_bytes()),
            Value::Bool(v) => out.push(*v),
            Value::String(b) => write_string(out, b),
            Value::U64(v) => out.extend(v.to_le_bytes()),
            Value::I64(v) => out.extend(v.to_le_bytes()),
            Value::F64(v) => out.extend(v.to_le_bytes()),
            Value::Array(Array::Fixed { ty, len, bytes }) => {
                out.extend((*ty as u32).to_le_bytes());
                out.extend(len.to_le_bytes());
                out.extend(bytes);
            }
            Value::Array(Array::Strings(s)) => {
                out.extend((ValueType::String as u32).to_le_bytes());
                out.extend((s.len() as u64).to_le_bytes());
                for b in s {
                    write_string(out, b);
                }
            }
        }
    }
}

fn write_string(out: &mut Vec<u8>, b: &[u8]) {
    out.extend((b.len() as u64).to_le_bytes());
    out.extend(b);
}

/// The ggml tensor types a GGUF file may hold: `(id, name, block size,
/// bytes per block)`. Ids 4, 5, 31–33 and 36–38 were removed from ggml.
const DTYPES: [(u32, &str, u64, u64); 37] = [
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
    (40, "NVFP4", 64, 36),
    (41, "Q1_0", 128, 18),
    (42, "Q2_0", 64, 18),
    // Placeholders never returned (keep the table's length a constant).
    (u32::MAX, "", 1, 1),
    (u32::MAX, "", 1, 1),
];

/// A ggml tensor type, by its id in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GgmlDtype(u32);

impl GgmlDtype {
    pub const F32: GgmlDtype = GgmlDtype(0);
    pub const F16: GgmlDtype = GgmlDtype(1);
    pub const BF16: GgmlDtype = GgmlDtype(30);

    /// A type from an id of the table (for constants; unchecked).
    pub(crate) const fn const_from_id(id: u32) -> GgmlDtype {
        GgmlDtype(id)
    }

    fn entry(self) -> &'static (u32, &'static str, u64, u64) {
        DTYPES
            .iter()
            .find(|e| e.0 == self.0)
            .expect("GgmlDtype values are known ids")
    }

    /// The type with ggml id `id`, if ggml has it.
    pub fn from_id(id: u32) -> Option<GgmlDtype> {
        DTYPES
            .iter()
            .any(|e| e.0 == id && id != u32::MAX)
            .then_some(GgmlDtype(id))
    }

    /// The type named `name` (case-insensitive: `q4_K`, `Q4_K`, `f16`).
    pub fn from_name(name: &str) -> Option<GgmlDtype> {
        DTYPES
            .iter()
            .find(|e| e.0 != u32::MAX && e.1.eq_ignore_ascii_case(name))
            .map(|e| GgmlDtype(e.0))
    }

    /// ggml's id.
    pub fn id(self) -> u32 {
        self.0
    }

    /// The name as llama.cpp prints it (`Q4_K`, `F16`).
    pub fn name(self) -> &'static str {
        self.entry().1
    }

    /// Elements per block.
    pub fn block_size(self) -> u64 {
        self.entry().2
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.entry().3
    }

    /// The library's block quantizer for this type, if it has one.
    pub fn quant(self) -> Option<groupq::ggml::GgmlType> {
        groupq::ggml::GgmlType::from_id(self.0)
    }
}

impl fmt::Display for GgmlDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor of a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub dtype: GgmlDtype,
    /// From the start of the data section.
    pub offset: u64,
    /// Bytes of data (without padding).
    pub size: u64,
}

impl TensorInfo {
    /// Elements in all.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Rows: the product of the dimensions after the first (1 for a
    /// vector).
    pub fn rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }

    /// The shape in the row-major order of safetensors and numpy (the
    /// reverse of `dims`).
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A parsed GGUF file, borrowing its bytes.
#[derive(Debug)]
pub struct Gguf<'a> {
    pub version: u32,
    pub alignment: u64,
    /// In file order.
    pub metadata: Vec<(String, Value)>,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
    /// Where the data section starts in the file.
    pub data_offset: u64,
    bytes: &'a [u8],
}

/// A cursor over the bytes that checks every read.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: impl Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                needed: n,
                remaining: self.remaining(),
            });
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: impl Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        Ok(s.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: impl Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: impl Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed string's bytes.
    fn string(&mut self, what: impl Fn() -> String + Copy) -> Result<&'a [u8]> {
        let len = self.u64(|| format!("length of {}", what()))?;
        if len > MAX_STRING_LENGTH {
            return Err(GgufError::TooLarge {
                what: format!("length of {}", what()),
                value: len,
                limit: MAX_STRING_LENGTH,
            });
        }
        self.take(len, what)
    }

    /// One value of `ty` (not an array).
    fn scalar(&mut self, ty: ValueType, what: impl Fn() -> String + Copy) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::Bool => Value::Bool(self.array::<1>(what)?[0]),
            ValueType::String => Value::String(self.string(what)?.to_vec()),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Array => unreachable!("arrays are read by the caller"),
        })
    }
}

fn align(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x / a * a)
}

impl<'a> Gguf<'a> {
    /// Parses a whole file. Tensor data must lie inside `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Gguf<'a>> {
        let mut r = Reader { bytes, pos: 0 };
        let magic: [u8; 4] = r.array(|| "magic".into())?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32(|| "version".into())?;
        if !(version == 2 || version == 3) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64(|| "tensor count".into())?;
        let n_kv = r.u64(|| "metadata count".into())?;
        // Every key-value pair takes at least 8 + 1 + 4 + 1 bytes, every
        // tensor info at least 8 + 1 + 4 + 4 + 8: counts beyond what the file
        // can hold are refused before anything is allocated for them.
        for (what, n, least) in [
            ("metadata count", n_kv, 14u64),
            ("tensor count", n_tensors, 25),
        ] {
            let limit = r.remaining() / least;
            if n > limit {
                return Err(GgufError::TooLarge {
                    what: format!(
                        "{what} (the remaining {} bytes hold at most {limit})",
                        r.remaining()
                    ),
                    value: n,
                    limit,
                });
            }
        }
        let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv as usize);
        let mut keys = std::collections::HashSet::new();
        for i in 0..n_kv {
            let bad = |key: &str, problem: String| GgufError::BadKey {
                index: i,
                key: key.to_string(),
                problem,
            };
            let raw = r.string(|| format!("key {i}"))?;
            let key = std::str::from_utf8(raw)
                .map_err(|_| bad(&String::from_utf8_lossy(raw), "key is not UTF-8".into()))?
                .to_string();
            if key.is_empty() {
                return Err(bad(&key, "empty key".into()));
            }
            if !keys.insert(key.clone()) {
                return Err(bad(&key, "duplicate key".into()));
            }
            let what = || format!("value of key {key:?}");
            let ty_raw = r.u32(what)?;
            let ty = ValueType::from_u32(ty_raw)
                .ok_or_else(|| bad(&key, format!("unknown value type {ty_raw}")))?;
            let value = if ty == ValueType::Array {
                let ety_raw = r.u32(what)?;
                let ety = ValueType::from_u32(ety_raw)
                    .filter(|t| *t != ValueType::Array)
                    .ok_or_else(|| bad(&key, format!("invalid array element type {ety_raw}")))?;
                let n = r.u64(what)?;
                if n > MAX_ARRAY_ELEMENTS {
                    return Err(bad(
                        &key,
                        format!("array of {n} elements, more than {MAX_ARRAY_ELEMENTS}"),
                    ));
                }
                match ety.fixed_size() {
                    Some(size) => {
                        let len = n * size as u64;
                        Value::Array(Array::Fixed {
                            ty: ety,
                            len: n,
                            bytes: r.take(len, what)?.to_vec(),
                        })
                    }
                    None => {
                        // Each string takes at least its 8-byte length.
                        if n > r.remaining() / 8 {
                            return Err(bad(
                                &key,
                                format!(
                                    "array of {n} strings, more than the remaining {} bytes hold",
                                    r.remaining()
                                ),
                            ));
                        }
                        let mut s = Vec::with_capacity(n as usize);
                        for _ in 0..n {
                            s.push(r.string(what)?.to_vec());
                        }
                        Value::Array(Array::Strings(s))
                    }
                }
            } else {
                r.scalar(ty, what)?
            };
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if *a != 0 && a.is_power_of_two() => u64::from(*a),
            Some((_, Value::U32(a))) => {
                return Err(GgufError::BadAlignment(format!("{a} is not a power of 2")))
            }
            Some((_, v)) => {
                return Err(GgufError::BadAlignment(format!(
                    "must be of type U32 but is {:?}",
                    v.ty()
                )))
            }
        };
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
        let mut names = std::collections::HashSet::new();
        for i in 0..n_tensors {
            let raw = r.string(|| format!("name of tensor {i}"))?;
            let lossy = String::from_utf8_lossy(raw).into_owned();
            let bad = |problem: String| GgufError::BadTensor {
                index: i,
                name: lossy.clone(),
                problem,
            };
            let name = std::str::from_utf8(raw)
                .map_err(|_| bad("name is not UTF-8".into()))?
                .to_string();
            if name.len() >= MAX_NAME {
                return Err(bad(format!(
                    "name is {} bytes long, ggml allows at most {}",
                    name.len(),
                    MAX_NAME - 1
                )));
            }
            if !names.insert(name.clone()) {
                return Err(bad("duplicate tensor name".into()));
            }
            let what = || format!("info of tensor {name:?}");
            let n_dims = r.u32(what)?;
            if n_dims > MAX_DIMS {
                return Err(bad(format!(
                    "{n_dims} dimensions, ggml allows at most {MAX_DIMS}"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                let v = i64::from_le_bytes(r.array(what)?);
                if v < 0 {
                    return Err(bad(format!("dimension {d} is {v} < 0")));
                }
                dims.push(v as u64);
            }
            let elements = dims
                .iter()
                .try_fold(1u64, |a, &d| {
                    a.checked_mul(d).filter(|&p| p < i64::MAX as u64)
                })
                .ok_or_else(|| bad(format!("{dims:?} has 2^63 or more elements")))?;
            let id = r.u32(what)?;
            let dtype =
                GgmlDtype::from_id(id).ok_or_else(|| bad(format!("unknown ggml type {id}")))?;
            let row = dims.first().copied().unwrap_or(1);
            if row % dtype.block_size() != 0 {
                return Err(bad(format!(
                    "{row} elements per row, not a multiple of {dtype}'s block size {}",
                    dtype.block_size()
                )));
            }
            let size = (elements / dtype.block_size())
                .checked_mul(dtype.type_size())
                .filter(|&s| s <= isize::MAX as u64)
                .ok_or_else(|| bad(format!("{dims:?} of {dtype} is too many bytes")))?;
            let offset = r.u64(what)?;
            tensors.push(TensorInfo {
                name,
                dims,
                dtype,
                offset,
                size,
            });
        }
        let mut data_offset = r.pos as u64;
        if n_tensors > 0 {
            data_offset = align(data_offset, alignment)
                .filter(|&d| d <= bytes.len() as u64)
                .ok_or_else(|| GgufError::Truncated {
                    what: "padding before the data section".into(),
                    offset: r.pos as u64,
                    needed: align(data_offset, alignment).unwrap_or(u64::MAX) - data_offset,
                    remaining: r.remaining(),
                })?;
        }
        // ggml requires the tensors in file order, each at the end of the
        // previous one padded to the alignment; their bytes must be in the
        // file.
        let mut expected = 0u64;
        for (i, t) in tensors.iter().enumerate() {
            let bad = |problem: String| GgufError::BadTensor {
                index: i as u64,
                name: t.name.clone(),
                problem,
            };
            if t.offset != expected {
                return Err(bad(format!(
                    "offset {} where ggml expects {expected} (tensors are stored in order, each padded to {alignment} bytes)",
                    t.offset
                )));
            }
            let inside = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.size))
                .is_some_and(|e| e <= bytes.len() as u64);
            if !inside {
                return Err(bad(format!(
                    "data at bytes {}..+{} lies past the end of the file ({} bytes)",
                    data_offset.saturating_add(t.offset),
                    t.size,
                    bytes.len()
                )));
            }
            expected = t
                .offset
                .checked_add(t.size)
                .and_then(|e| align(e, alignment))
                .ok_or_else(|| bad("offset overflows".into()))?;
        }
        Ok(Gguf {
            version,
            alignment,
            metadata,
            tensors,
            data_offset,
            bytes,
        })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A string value, when it is UTF-8.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's bytes (checked to be in the file by [`parse`](Self::parse)).
    pub fn tensor_data(&self, t: &TensorInfo) -> &'a [u8] {
        let start = (self.data_offset + t.offset) as usize;
        &self.bytes[start..start + t.size as usize]
    }
}

/// Lays out a GGUF v3 file: metadata and tensor infos first
/// ([`write_header`](Self::write_header)), then each tensor's bytes in the
/// order they were pushed ([`write_tensor_data`](Self::write_tensor_data)),
/// zero-padded to the alignment, as ggml writes files.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    pub alignment: u64,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    next_offset: u64,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty file with the default alignment (32).
    pub fn new() -> GgufWriter {
        GgufWriter {
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
            next_offset: 0,
        }
    }

    /// Appends a key (keys are not checked for duplicates here; the caller
    /// builds the list).
    pub fn push_kv(&mut self, key: &str, value: Value) {
        self.metadata.push((key.to_string(), value));
    }

    /// Appends a tensor of `dims` (ggml order) and type `dtype`.
    pub fn push_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        dtype: GgmlDtype,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            name.len() < MAX_NAME,
            "tensor name {name:?} is {} bytes long, ggml allows at most {}",
            name.len(),
            MAX_NAME - 1
        );
        anyhow::ensure!(
            dims.len() <= MAX_DIMS as usize,
            "{name}: more than 4 dimensions"
        );
        let row = dims.first().copied().unwrap_or(1);
        anyhow::ensure!(
            row % dtype.block_size() == 0,
            "{name}: rows of {row} are not whole {dtype} blocks of {}",
            dtype.block_size()
        );
        let elements: u64 = dims.iter().product();
        let size = elements / dtype.block_size() * dtype.type_size();
        self.tensors.push(TensorInfo {
            name: name.to_string(),
            dims: dims.to_vec(),
            dtype,
            offset: self.next_offset,
            size,
        });
        self.next_offset = align(self.next_offset + size, self.alignment).expect("small sizes");
        Ok(())
    }

    /// The header, metadata and tensor infos, padded to the alignment.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(MAGIC);
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            write_string(&mut out, k.as_bytes());
            out.extend((v.ty() as u32).to_le_bytes());
            v.write(&mut out);
        }
        for t in &self.tensors {
            write_string(&mut out, t.name.as_bytes());
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.dtype.id().to_le_bytes());
            out.extend(t.offset.to_le_bytes());
        }
        let padded = align(out.len() as u64, self.alignment).expect("small header") as usize;
        out.resize(padded, 0);
        out
    }

    /// Writes [`header_bytes`](Self::header_bytes).
    pub fn write_header(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&self.header_bytes())
    }

    /// Writes one tensor's bytes and the zero padding after them.
    pub fn write_tensor_data(&self, w: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
        w.write_all(data)?;
        let pad =
            align(data.len() as u64, self.alignment).expect("small sizes") - data.len() as u64;
        w.write_all(&vec![0u8; pad as usize])
    }

    /// The size of the whole file.
    pub fn file_size(&self) -> u64 {
        self.header_bytes().len() as u64 + self.next_offset
    }
}

/// The property the fuzz target checks (`fuzz/`), also run on its corpus by
/// the tests: `data` either fails to read with a typed error, or reads as a
/// file whose tensors lie inside `data`, and what was read writes back to
/// bytes that read the same. Panics where the property fails; returns
/// whether `data` read as a GGUF file.
#[doc(hidden)]
pub fn fuzz_round_trip(data: &[u8]) -> bool {
    let Ok(g) = Gguf::parse(data) else {
        return false;
    };
    let mut w = GgufWriter::new();
    w.alignment = g.alignment;
    for (k, v) in &g.metadata {
        w.push_kv(k, v.clone());
    }
    for t in &g.tensors {
        w.push_tensor(&t.name, &t.dims, t.dtype)
            .expect("a tensor the reader accepted");
    }
    let mut out = Vec::new();
    w.write_header(&mut out).expect("writing to memory");
    for t in &g.tensors {
        let d = g.tensor_data(t);
        assert_eq!(d.len() as u64, t.size);
        w.write_tensor_data(&mut out, d).expect("writing to memory");
    }
    let again = Gguf::parse(&out).expect("what the writer wrote reads back");
    assert_eq!(again.metadata.len(), g.metadata.len());
    assert_eq!(again.tensors, w.tensors);
    for (a, b) in again.metadata.iter().zip(&g.metadata) {
        assert_eq!(a.0, b.0);
        // NaN floats compare unequal: compare the serialized forms instead.
        assert_eq!(format!("{:?}", a.1), format!("{:?}", b.1));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = GgufWriter::new();
        w.push_kv("general.architecture", Value::String(b"llama".to_vec()));
        w.push_kv("a.u8", Value::U8(7));
        w.push_kv("a.i8", Value::I8(-7));
        w.push_kv("a.u16", Value::U16(700));
        w.push_kv("a.i16", Value::I16(-700));
        w.push_kv("a.u32", Value::U32(70000));
        w.push_kv("a.i32", Value::I32(-70000));
        w.push_kv("a.f32", Value::F32(1.5));
        w.push_kv("a.bool", Value::Bool(1));
        w.push_kv("a.u64", Value::U64(1 << 40));
        w.push_kv("a.i64", Value::I64(-(1 << 40)));
        w.push_kv("a.f64", Value::F64(-2.25));
        w.push_kv(
            "a.arr",
            Value::Array(Array::Fixed {
                ty: ValueType::I32,
                len: 3,
                bytes: [1i32, -2, 3].iter().flat_map(|v| v.to_le_bytes()).collect(),
            }),
        );
        w.push_kv(
            "a.strs",
            Value::Array(Array::Strings(vec![
                b"x".to_vec(),
                vec![],
                b"\xff".to_vec(),
            ])),
        );
        w.push_tensor("a", &[64, 3], GgmlDtype::F16).unwrap();
        w.push_tensor("b", &[32], GgmlDtype::from_name("q4_0").unwrap())
            .unwrap();
        let mut f = Vec::new();
        w.write_header(&mut f).unwrap();
        w.write_tensor_data(&mut f, &[1u8; 384]).unwrap();
        w.write_tensor_data(&mut f, &[2u8; 18]).unwrap();
        assert_eq!(f.len() as u64, w.file_size());
        f
    }

    #[test]
    fn round_trip_every_value_type() {
        let f = sample();
        let g = Gguf::parse(&f).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.metadata.len(), 14);
        assert_eq!(g.get("a.i16"), Some(&Value::I16(-700)));
        assert_eq!(g.get("a.f64"), Some(&Value::F64(-2.25)));
        assert_eq!(g.tensors[1].offset, 384);
        assert_eq!(g.tensor_data(&g.tensors[1]), &[2u8; 18][..]);
        assert_eq!(g.data_offset % 32, 0);
        assert_eq!(f.len() % 32, 0);
        // Rewriting what was read gives the same bytes.
        let mut w = GgufWriter::new();
        for (k, v) in &g.metadata {
            w.push_kv(k, v.clone());
        }
        for t in &g.tensors {
            w.push_tensor(&t.name, &t.dims, t.dtype).unwrap();
        }
        let mut again = Vec::new();
        w.write_header(&mut again).unwrap();
        for t in &g.tensors {
            w.write_tensor_data(&mut again, g.tensor_data(t)).unwrap();
        }
        assert_eq!(again, f);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let f = sample();
        for n in 0..f.len() - 32 {
            assert!(Gguf::parse(&f[..n]).is_err(), "{n} bytes parsed");
        }
    }

    #[test]
    fn hostile_headers_are_typed_errors() {
        let mut f = sample();
        f[0] = b'X';
        assert!(matches!(Gguf::parse(&f), Err(GgufError::BadMagic(_))));
        let mut f = sample();
        f[4..8].copy_from_slice(&0x0300_0000u32.to_le_bytes());
        assert!(matches!(
            Gguf::parse(&f),
            Err(GgufError::UnsupportedVersion(_))
        ));
        // Huge counts are refused before allocating.
        let mut f = sample();
        f[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(Gguf::parse(&f), Err(GgufError::TooLarge { .. })));
        let mut f = sample();
        f[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(matches!(Gguf::parse(&f), Err(GgufError::TooLarge { .. })));
        // A string length past the end.
        let mut f = sample();
        f[24..32].copy_from_slice(&(1u64 << 20).to_le_bytes());
        assert!(matches!(Gguf::parse(&f), Err(GgufError::Truncated { .. })));
    }

    #[test]
    fn overlapping_or_misplaced_tensors_are_refused() {
        let f = sample();
        let g = Gguf::parse(&f).unwrap();
        let info_end = g.data_offset as usize;
        // The last 8 bytes before the padding are tensor b's offset: find it.
        let pos = (0..info_end - 8)
            .rev()
            .find(|&p| f[p..p + 8] == 384u64.to_le_bytes())
            .unwrap();
        let mut bad = f.clone();
        bad[pos..pos + 8].copy_from_slice(&0u64.to_le_bytes());
        let e = Gguf::parse(&bad).unwrap_err();
        assert!(
            e.to_string().contains("offset 0 where ggml expects 384"),
            "{e}"
        );
        // The file cut inside b's data.
        let e = Gguf::parse(&f[..f.len() - 20]).unwrap_err();
        assert!(e.to_string().contains("past the end"), "{e}");
    }

    #[test]
    fn dtype_table() {
        let q = GgmlDtype::from_name("Q4_k").unwrap();
        assert_eq!((q.id(), q.block_size(), q.type_size()), (12, 256, 144));
        assert_eq!(GgmlDtype::from_id(4), None);
        assert_eq!(GgmlDtype::from_id(u32::MAX), None);
        assert_eq!(GgmlDtype::from_name(""), None);
        assert_eq!(GgmlDtype::BF16.name(), "BF16");
    }
}
