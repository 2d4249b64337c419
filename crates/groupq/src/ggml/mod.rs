//! ggml's (llama.cpp's) block quantization formats, bit-exact with ggml's
//! reference C code.
//!
//! [`quantize_rows`] produces exactly the bytes that
//! `ggml_quantize_chunk(type, x, out, 0, rows, n_per_row, imatrix)` writes
//! (ggml's scalar code as built for baseline x86-64: no FMA contraction,
//! `f32` arithmetic, no fast-math), and [`dequantize_rows`] exactly the
//! floats of ggml's `dequantize_row_*`. The formats are
//!
//! | type | block | bytes | |
//! |---|---|---|---|
//! | `q4_0` `q5_0` `q8_0` | 32 | 18, 22, 34 | symmetric, one f16 scale |
//! | `q4_1` `q5_1` | 32 | 20, 24 | f16 scale and f16 minimum |
//! | `iq4_nl` | 32 | 18 | non-linear 4-bit code book, f16 scale |
//! | `q2_K` … `q6_K` | 256 | 84, 110, 144, 176, 210 | super-blocks of 16 or 32 |
//! | `iq4_xs` | 256 | 136 | `iq4_nl` code book, 6-bit sub-scales |
//!
//! An importance matrix (`imatrix`, ggml's `quant_weights`: one weight per
//! column, the same for every row) switches every type but `q8_0` to ggml's
//! weighted search, which also uses row statistics; without it, ggml's
//! `quantize_row_*_ref` paths run. Rows are independent: splitting the rows
//! of a call across several calls (or threads) gives the same bytes.
//!
//! ```
//! use groupq::ggml::{dequantize_rows, quantize_rows, GgmlType};
//!
//! let ty = GgmlType::from_name("q4_K").unwrap();
//! let (rows, n) = (2, 512);
//! let x: Vec<f32> = (0..rows * n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01).collect();
//!
//! let mut blocks = vec![0u8; rows * ty.row_bytes(n)?];
//! quantize_rows(ty, &x, n, None, &mut blocks)?;
//! assert_eq!(blocks.len(), rows * 2 * 144); // two super-blocks of 144 bytes a row
//!
//! let mut back = vec![0f32; rows * n];
//! dequantize_rows(ty, &blocks, n, &mut back)?;
//! assert!(x.iter().zip(&back).all(|(a, b)| (a - b).abs() < 0.05));
//!
//! // With an importance matrix (one positive weight per column).
//! let imatrix: Vec<f32> = (0..n).map(|j| 1.0 + (j % 7) as f32).collect();
//! quantize_rows(ty, &x, n, Some(&imatrix), &mut blocks)?;
//! # Ok::<(), groupq::Error>(())
//! ```
//!
//! Inputs are expected to be finite, as in ggml (whose C code converts out
//! of range floats to integers, which C leaves undefined): non-finite inputs
//! never panic here, but their bytes are not promised to match a ggml build.

// The ports keep ggml's loops and clamps in ggml's shape (index loops over
// several arrays at once, `min` then `max`), so that each line can be read
// against the C it reproduces.
#![allow(clippy::needless_range_loop, clippy::manual_clamp)]

use crate::plan::BackendKind;
use crate::{Error, Result};

mod fp16;
mod iq4;
mod kquants;
mod legacy;
mod search;

pub use fp16::{fp16_to_fp32, fp32_to_fp16};

/// A ggml block quantization type (a `ggml_type` of ggml.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// `q4_0`: 32 weights, 4-bit codes, one f16 scale (`x = d·(q − 8)`).
    Q4_0,
    /// `q4_1`: 32 weights, 4-bit codes, f16 scale and minimum (`x = d·q + m`).
    Q4_1,
    /// `q5_0`: 32 weights, 5-bit codes, one f16 scale (`x = d·(q − 16)`).
    Q5_0,
    /// `q5_1`: 32 weights, 5-bit codes, f16 scale and minimum.
    Q5_1,
    /// `q8_0`: 32 weights, 8-bit codes, one f16 scale.
    Q8_0,
    /// `q2_K`: super-blocks of 256, 16 sub-blocks with 4-bit scales and mins.
    Q2K,
    /// `q3_K`: super-blocks of 256, 16 sub-blocks with 6-bit scales.
    Q3K,
    /// `q4_K`: super-blocks of 256, 8 sub-blocks with 6-bit scales and mins.
    Q4K,
    /// `q5_K`: super-blocks of 256, 8 sub-blocks with 6-bit scales and mins.
    Q5K,
    /// `q6_K`: super-blocks of 256, 16 sub-blocks with 8-bit scales.
    Q6K,
    /// `iq4_nl`: 32 weights, 4-bit indices into a non-linear code book.
    Iq4Nl,
    /// `iq4_xs`: super-blocks of 256, the `iq4_nl` code book, 6-bit sub-scales.
    Iq4Xs,
}

impl GgmlType {
    /// Every type, in ggml id order.
    pub const ALL: [GgmlType; 12] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Iq4Nl,
        GgmlType::Iq4Xs,
    ];

    /// ggml's name of the type (`"q4_0"`, `"q4_K"`, `"iq4_nl"`, …).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q4_1 => "q4_1",
            GgmlType::Q5_0 => "q5_0",
            GgmlType::Q5_1 => "q5_1",
            GgmlType::Q8_0 => "q8_0",
            GgmlType::Q2K => "q2_K",
            GgmlType::Q3K => "q3_K",
            GgmlType::Q4K => "q4_K",
            GgmlType::Q5K => "q5_K",
            GgmlType::Q6K => "q6_K",
            GgmlType::Iq4Nl => "iq4_nl",
            GgmlType::Iq4Xs => "iq4_xs",
        }
    }

    /// The type of a ggml name, ignoring case (`"Q4_K"`, `"q4_k"` and
    /// `"q4_K"` are all [`GgmlType::Q4K`]); `None` for any other name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// ggml's `ggml_type` id (q4_0 = 2, …, q6_K = 14, iq4_nl = 20, iq4_xs = 23).
    pub fn id(self) -> u32 {
        match self {
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Iq4Nl => 20,
            GgmlType::Iq4Xs => 23,
        }
    }

    /// The type of a `ggml_type` id; `None` for ids of other types.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    /// Weights per block: 32, or 256 for the K-quants and `iq4_xs`.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Iq4Nl => 32,
            GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
            | GgmlType::Iq4Xs => 256,
        }
    }

    /// Bytes per block (ggml's `type_size`).
    pub fn type_size(self) -> usize {
        match self {
            GgmlType::Q4_0 => legacy::Q4_0_BYTES,
            GgmlType::Q4_1 => legacy::Q4_1_BYTES,
            GgmlType::Q5_0 => legacy::Q5_0_BYTES,
            GgmlType::Q5_1 => legacy::Q5_1_BYTES,
            GgmlType::Q8_0 => legacy::Q8_0_BYTES,
            GgmlType::Q2K => kquants::Q2K_BYTES,
            GgmlType::Q3K => kquants::Q3K_BYTES,
            GgmlType::Q4K => kquants::Q4K_BYTES,
            GgmlType::Q5K => kquants::Q5K_BYTES,
            GgmlType::Q6K => kquants::Q6K_BYTES,
            GgmlType::Iq4Nl => iq4::IQ4_NL_BYTES,
            GgmlType::Iq4Xs => iq4::IQ4_XS_BYTES,
        }
    }

    /// Bytes of one row of `n` weights (ggml's `ggml_row_size`).
    ///
    /// # Errors
    /// [`Error::InvalidProblem`] when `n` is not a multiple of
    /// [`block_size`](Self::block_size) or the size overflows `usize`.
    pub fn row_bytes(self, n: usize) -> Result<usize> {
        let bs = self.block_size();
        if !n.is_multiple_of(bs) {
            return Err(Error::InvalidProblem(format!(
                "ggml {}: a row of {n} weights is not a multiple of the block size {bs}",
                self.name()
            )));
        }
        (n / bs).checked_mul(self.type_size()).ok_or_else(|| {
            Error::InvalidProblem(format!(
                "ggml {}: the row size of {n} weights overflows usize",
                self.name()
            ))
        })
    }

    /// Whether ggml's quantizer of this type reads an importance matrix
    /// (every type but `q8_0`, which ignores it).
    pub fn uses_imatrix(self) -> bool {
        self != GgmlType::Q8_0
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Checks `n_per_row` and returns the number of rows of `len` values.
fn rows_of(ty: GgmlType, what: &str, len: usize, n_per_row: usize) -> Result<usize> {
    let bs = ty.block_size();
    if n_per_row == 0 || !n_per_row.is_multiple_of(bs) {
        return Err(Error::InvalidProblem(format!(
            "ggml {ty}: n_per_row {n_per_row} must be a non-zero multiple of the block size {bs}"
        )));
    }
    if !len.is_multiple_of(n_per_row) {
        return Err(Error::InvalidProblem(format!(
            "ggml {ty}: {what} holds {len} values, not a whole number of rows of n_per_row {n_per_row}"
        )));
    }
    Ok(len / n_per_row)
}

/// Checks that a buffer of `got` items is exactly `needed` long.
fn check_len(ty: GgmlType, what: &str, needed: usize, got: usize) -> Result<()> {
    if got < needed {
        return Err(Error::BufferTooSmall { needed, got });
    }
    if got > needed {
        return Err(Error::InvalidProblem(format!(
            "ggml {ty}: {what} holds {got} items, the rows need exactly {needed}"
        )));
    }
    Ok(())
}

/// Quantizes rows of `n_per_row` weights to ggml blocks, exactly as
/// `ggml_quantize_chunk(ty, x, out, 0, rows, n_per_row, imatrix)`.
///
/// `x` holds `rows × n_per_row` weights, row-major; `out` receives
/// `rows × ty.row_bytes(n_per_row)` bytes. `imatrix`, when given, holds one
/// importance weight per column (`n_per_row` values, shared by every row).
///
/// # Errors
/// [`Error::InvalidProblem`] when `n_per_row` is not a non-zero multiple of
/// the block size, `x.len()` is not a multiple of `n_per_row`, `imatrix`
/// does not hold `n_per_row` values or `out` is longer than needed;
/// [`Error::BufferTooSmall`] when `out` is shorter. Nothing is written then.
pub fn quantize_rows(
    ty: GgmlType,
    x: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    out: &mut [u8],
) -> Result<()> {
    let rows = rows_of(ty, "x", x.len(), n_per_row)?;
    let row_bytes = ty.row_bytes(n_per_row)?;
    let needed = rows.checked_mul(row_bytes).ok_or_else(|| {
        Error::InvalidProblem(format!("ggml {ty}: the output size overflows usize"))
    })?;
    check_len(ty, "out", needed, out.len())?;
    if let Some(qw) = imatrix {
        if qw.len() != n_per_row {
            return Err(Error::InvalidProblem(format!(
                "ggml {ty}: imatrix holds {} values, n_per_row is {n_per_row}",
                qw.len()
            )));
        }
    }
    let b = fastest_backend();
    for (xr, yr) in x
        .chunks_exact(n_per_row)
        .zip(out.chunks_exact_mut(row_bytes))
    {
        quantize_row(b, ty, xr, imatrix, yr);
    }
    Ok(())
}

/// Whether `ty`'s quantizer has a vector search: the reference paths (no
/// importance matrix) of the K-quants and iq4 types, and with one every
/// type but q8_0 (which ignores it) and the iq4 types.
pub(crate) fn has_vector_search(ty: GgmlType, imatrix: bool) -> bool {
    if imatrix {
        // Every weighted search but iq4's.
        return !matches!(ty, GgmlType::Q8_0 | GgmlType::Iq4Nl | GgmlType::Iq4Xs);
    }
    matches!(
        ty,
        GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
            | GgmlType::Iq4Nl
            | GgmlType::Iq4Xs
    )
}

/// The widest backend this CPU has (every backend gives the same bytes;
/// the scalar one where there is no vector backend).
pub(crate) fn fastest_backend() -> BackendKind {
    [BackendKind::Avx512, BackendKind::Avx2, BackendKind::Sse41]
        .into_iter()
        .find(|&b| crate::kernels::cpu_has(b))
        .unwrap_or(BackendKind::Scalar)
}

/// One row; the lengths are checked by the caller. The K-quants' sub-block
/// searches run on backend `b` (any backend: the bytes are the same).
pub(crate) fn quantize_row(
    b: BackendKind,
    ty: GgmlType,
    x: &[f32],
    qw: Option<&[f32]>,
    y: &mut [u8],
) {
    match ty {
        GgmlType::Q4_0 => legacy::quantize_q4_0(b, x, qw, y),
        GgmlType::Q4_1 => legacy::quantize_q4_1(b, x, qw, y),
        GgmlType::Q5_0 => legacy::quantize_q5_0(b, x, qw, y),
        GgmlType::Q5_1 => legacy::quantize_q5_1(b, x, qw, y),
        GgmlType::Q8_0 => legacy::quantize_q8_0(x, y),
        GgmlType::Q2K => kquants::quantize_q2_k(b, x, qw, y),
        GgmlType::Q3K => kquants::quantize_q3_k(b, x, qw, y),
        GgmlType::Q4K => kquants::quantize_q4_k(b, x, qw, y),
        GgmlType::Q5K => kquants::quantize_q5_k(b, x, qw, y),
        GgmlType::Q6K => kquants::quantize_q6_k(b, x, qw, y),
        GgmlType::Iq4Nl => iq4::quantize_iq4_nl(b, x, qw, y),
        GgmlType::Iq4Xs => iq4::quantize_iq4_xs(b, x, qw, y),
    }
}

/// Dequantizes rows of ggml blocks to `f32`, exactly as ggml's
/// `dequantize_row_*`.
///
/// `bytes` holds whole rows of `ty.row_bytes(n_per_row)` bytes; `out`
/// receives `n_per_row` floats per row. Every byte pattern is accepted
/// (f16 scales that are infinite or NaN give infinite or NaN outputs).
///
/// # Errors
/// [`Error::InvalidProblem`] when `n_per_row` is not a non-zero multiple of
/// the block size, `bytes` is not a whole number of rows or `out` is longer
/// than needed; [`Error::BufferTooSmall`] when `out` is shorter.
pub fn dequantize_rows(
    ty: GgmlType,
    bytes: &[u8],
    n_per_row: usize,
    out: &mut [f32],
) -> Result<()> {
    // Validates n_per_row first, with the message that names it.
    rows_of(ty, "out", 0, n_per_row)?;
    let row_bytes = ty.row_bytes(n_per_row)?;
    if !bytes.len().is_multiple_of(row_bytes) {
        return Err(Error::InvalidProblem(format!(
            "ggml {ty}: bytes holds {} bytes, not a whole number of rows of {row_bytes} bytes \
             (n_per_row {n_per_row})",
            bytes.len()
        )));
    }
    let rows = bytes.len() / row_bytes;
    let needed = rows.checked_mul(n_per_row).ok_or_else(|| {
        Error::InvalidProblem(format!("ggml {ty}: the output size overflows usize"))
    })?;
    check_len(ty, "out", needed, out.len())?;
    let bs = ty.block_size();
    let ts = ty.type_size();
    for (b, y) in bytes.chunks_exact(ts).zip(out.chunks_exact_mut(bs)) {
        dequantize_block(ty, b, y);
    }
    Ok(())
}

/// One block; the lengths are checked by the caller.
pub(crate) fn dequantize_block(ty: GgmlType, b: &[u8], y: &mut [f32]) {
    match ty {
        GgmlType::Q4_0 => legacy::dequantize_q4_0(b, y),
        GgmlType::Q4_1 => legacy::dequantize_q4_1(b, y),
        GgmlType::Q5_0 => legacy::dequantize_q5_0(b, y),
        GgmlType::Q5_1 => legacy::dequantize_q5_1(b, y),
        GgmlType::Q8_0 => legacy::dequantize_q8_0(b, y),
        GgmlType::Q2K => kquants::dequantize_q2_k(b, y),
        GgmlType::Q3K => kquants::dequantize_q3_k(b, y),
        GgmlType::Q4K => kquants::dequantize_q4_k(b, y),
        GgmlType::Q5K => kquants::dequantize_q5_k(b, y),
        GgmlType::Q6K => kquants::dequantize_q6_k(b, y),
        GgmlType::Iq4Nl => iq4::dequantize_iq4_nl(b, y),
        GgmlType::Iq4Xs => iq4::dequantize_iq4_xs(b, y),
    }
}

/// Reads the little-endian f16 at `b[at..at + 2]` as `f32`.
#[inline]
fn read_f16(b: &[u8], at: usize) -> f32 {
    fp16_to_fp32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Writes `v` rounded to f16 (ggml's conversion) at `b[at..at + 2]`.
#[inline]
fn write_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&fp32_to_fp16(v).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_round_trip() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_name(t.name()), Some(t));
            assert_eq!(GgmlType::from_name(&t.name().to_uppercase()), Some(t));
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(t.row_bytes(t.block_size() * 3).unwrap(), 3 * t.type_size());
            assert!(t.row_bytes(t.block_size() + 1).is_err());
        }
        assert_eq!(GgmlType::from_name("q4_K"), Some(GgmlType::Q4K));
        assert_eq!(GgmlType::from_name("f16"), None);
        assert_eq!(GgmlType::from_id(9), None);
    }

    #[test]
    fn validation_errors_write_nothing() {
        let ty = GgmlType::Q4_0;
        let x = vec![1.0f32; 64];
        let mut out = vec![0xAAu8; 36];
        let e = quantize_rows(ty, &x, 48, None, &mut out).unwrap_err();
        assert!(e.to_string().contains("n_per_row 48"), "{e}");
        let e = quantize_rows(ty, &x[..40], 32, None, &mut out).unwrap_err();
        assert!(e.to_string().contains("x holds 40"), "{e}");
        let e = quantize_rows(ty, &x, 32, None, &mut out[..35]).unwrap_err();
        assert_eq!(
            e,
            Error::BufferTooSmall {
                needed: 36,
                got: 35
            }
        );
        let e = quantize_rows(ty, &x, 32, Some(&[1.0; 31]), &mut out).unwrap_err();
        assert!(e.to_string().contains("imatrix holds 31"), "{e}");
        let mut long = vec![0xAAu8; 37];
        assert!(quantize_rows(ty, &x, 32, None, &mut long).is_err());
        assert!(out.iter().chain(&long).all(|&b| b == 0xAA));
        let mut y = vec![0f32; 64];
        assert!(dequantize_rows(ty, &out[..35], 32, &mut y).is_err());
        assert!(dequantize_rows(ty, &out, 0, &mut y).is_err());
        assert_eq!(
            dequantize_rows(ty, &out, 32, &mut y[..63]).unwrap_err(),
            Error::BufferTooSmall {
                needed: 64,
                got: 63
            }
        );
        assert!(quantize_rows(ty, &x, 32, None, &mut out).is_ok());
    }
}
