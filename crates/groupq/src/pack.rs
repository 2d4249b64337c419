//! Packed storage of low-bit codes: the layouts checkpoints use, each with
//! its inverse.
//!
//! All formats put `32 / bits` codes in a 32-bit word, code `t` of the word
//! at bits `t·bits` (least significant first), and differ in which axis is
//! packed, the order of the codes inside a word, and an offset:
//!
//! | format | codes | packed tensor |
//! |---|---|---|
//! | [`nibbles`] | any `[len]`, 4-bit | bytes, element `2i` in the low nibble of byte `i` (groupq's `S4`/`U4` storage) |
//! | [`gptq_qweight`] | `[N, K]` | `[K·bits/32, N]`, packed along K |
//! | [`gptq_qzeros`] | zero points `[N, G]` | `[G, ⌈N·bits/32⌉]`, packed along N; v1 stores `z − 1` ([`GptqZeros`]) |
//! | [`awq_qweight`] | `[N, K]` | `[K, N·bits/32]`, packed along N in the order `[0, 2, 4, 6, 1, 3, 5, 7]` |
//! | [`awq_qzeros`] | zero points `[N, G]` | `[G, N·bits/32]`, the same order |
//! | [`compressed_tensors_weight`] | signed codes `[N, K]` | `[N, ⌈K·bits/32⌉]`, packed along K, stored as `q + 2^(bits−1)` |
//! | [`compressed_tensors_zero_point`] | signed zero points `[N, G]` | `[⌈N·bits/32⌉, G]`, packed along N, `z + 2^(bits−1)` |
//! | [`gguf_blocks`] | codes, `d` (and `m`) per 32-element block | ggml's Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 block bytes |
//!
//! [`compressed_tensors_weight_s4`], [`gptq_qweight_u4`] and
//! [`awq_qweight_u4`] give the same words from 4-bit codes already packed
//! two per byte (the [`S4`]/[`U4`] tensors the plans write), at memory
//! speed: no range check is needed, and no byte-per-code copy is made.
//!
//! torchao's `PlainLayout` stores codes unpacked, one per byte, row-major
//! `[M, K]` beside `scale` and `zero_point` `[M, G]`: that is groupq's own
//! `i8`/`u8` code tensor, so it needs no codec.
//!
//! Words are returned as `i32`, the dtype the checkpoints store. A code
//! outside `0..2^bits` (after the format's offset) is an `InvalidProblem`,
//! never silently truncated, except where a format's own quirk is being
//! reproduced ([`GptqZeros::V1AutoGptq`]).
//!
//! ```
//! use groupq::pack;
//! // GPTQ: 2 output rows (N), 8 input columns (K), 4 bits: one word per column of N.
//! let codes: Vec<u8> = (0..16).map(|i| i % 16).collect();
//! let words = pack::gptq_qweight(&codes, 2, 8, 4)?;
//! assert_eq!(words.len(), 2);
//! assert_eq!(pack::gptq_qweight_unpack(&words, 2, 8, 4)?, codes);
//! # Ok::<(), groupq::Error>(())
//! ```

use crate::element::{S4, U4};
use crate::error::{Error, Result};

/// AWQ's order of the codes inside a 4-bit word: nibble `i` holds code `AWQ_ORDER[i]`.
pub const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

fn invalid(what: String) -> Error {
    Error::InvalidProblem(what)
}

fn per_word(fmt: &str, bits: u32) -> Result<usize> {
    match bits {
        2 | 4 | 8 => Ok(32 / bits as usize),
        _ => Err(invalid(format!(
            "{fmt}: bits {bits} is not supported (2, 4 or 8)"
        ))),
    }
}

fn check_len(fmt: &str, what: &str, len: usize, rows: usize, cols: usize) -> Result<()> {
    match rows.checked_mul(cols) {
        Some(n) if n == len => Ok(()),
        _ => Err(invalid(format!(
            "{fmt}: {what} has {len} elements, the shape [{rows}, {cols}] needs {}",
            rows.saturating_mul(cols)
        ))),
    }
}

/// Packs a `[rows, cols]` matrix, whose code at `(r, c)` is `get(r, c)`
/// (generic, so that each layout's accessor is inlined), along its columns (`along_rows = false`:
/// output `[rows, ⌈cols/pf⌉]`) or rows (`true`: `[⌈rows/pf⌉, cols]`); slot
/// `t` of a word takes the element `order[t]` of its run of `pf`.
fn pack(
    fmt: &str,
    get: impl Fn(usize, usize) -> i64,
    rows: usize,
    cols: usize,
    bits: u32,
    along_rows: bool,
    order: Option<&[usize]>,
) -> Result<Vec<i32>> {
    let pf = per_word(fmt, bits)?;
    let max = (1i64 << bits) - 1;
    let (out_rows, out_cols) = if along_rows {
        (rows.div_ceil(pf), cols)
    } else {
        (rows, cols.div_ceil(pf))
    };
    let mut words = vec![0i32; out_rows * out_cols];
    for or in 0..out_rows {
        for oc in 0..out_cols {
            let mut word = 0u32;
            for t in 0..pf {
                let k = order.map_or(t, |o| o[t]);
                let (r, c) = if along_rows {
                    (or * pf + k, oc)
                } else {
                    (or, oc * pf + k)
                };
                if r >= rows || c >= cols {
                    continue; // padding of a partial word stays 0
                }
                let v = get(r, c);
                if !(0..=max).contains(&v) {
                    return Err(invalid(format!(
                        "{fmt}: value {v} at [{r}, {c}] does not fit {bits} bits (after the format's offset)"
                    )));
                }
                word |= (v as u32) << (t as u32 * bits);
            }
            words[or * out_cols + oc] = word as i32;
        }
    }
    Ok(words)
}

/// Eight 4-bit codes (each byte below 16) as one word, byte `t` at bit
/// `4t`: neighbouring nibbles merged pairwise, then bytes, then halves.
#[inline(always)]
fn nibble_word(b: [u8; 8]) -> i32 {
    nibble_word64(u64::from_le_bytes(b))
}

/// [`nibble_word`] of the little-endian bytes of `x`.
#[inline(always)]
fn nibble_word64(x: u64) -> i32 {
    let x = (x | (x >> 4)) & 0x00ff_00ff_00ff_00ff;
    let x = (x | (x >> 8)) & 0x0000_ffff_0000_ffff;
    (x | (x >> 16)) as u32 as i32
}

/// Codes already known to fit `bits` as one word, slot `t` at bit `t·bits`:
/// the fast packers' inner step.
#[inline(always)]
fn word_of(codes: impl Iterator<Item = u32>, bits: u32) -> i32 {
    codes
        .enumerate()
        .fold(0u32, |w, (t, c)| w | c << (t as u32 * bits)) as i32
}

/// The inverse of [`pack`]: the `[rows, cols]` matrix of raw codes.
fn unpack(
    fmt: &str,
    words: &[i32],
    rows: usize,
    cols: usize,
    bits: u32,
    along_rows: bool,
    order: Option<&[usize]>,
) -> Result<Vec<u32>> {
    let pf = per_word(fmt, bits)?;
    let (out_rows, out_cols) = if along_rows {
        (rows.div_ceil(pf), cols)
    } else {
        (rows, cols.div_ceil(pf))
    };
    check_len(fmt, "the packed tensor", words.len(), out_rows, out_cols)?;
    let mask = (1u32 << bits) - 1;
    let mut codes = vec![0u32; rows * cols];
    for or in 0..out_rows {
        for oc in 0..out_cols {
            let word = words[or * out_cols + oc] as u32;
            for t in 0..pf {
                let k = order.map_or(t, |o| o[t]);
                let (r, c) = if along_rows {
                    (or * pf + k, oc)
                } else {
                    (or, oc * pf + k)
                };
                if r < rows && c < cols {
                    codes[r * cols + c] = (word >> (t as u32 * bits)) & mask;
                }
            }
        }
    }
    Ok(codes)
}

/// 4-bit codes two per byte, element `2i` in the low nibble of byte `i`
/// (groupq's `S4`/`U4` storage; an odd length leaves the last high nibble 0).
/// Signed codes are stored in two's complement.
///
/// ```
/// use groupq::pack;
/// assert_eq!(pack::nibbles(&[1, -2, 7])?, vec![0xe1, 0x07]);
/// assert_eq!(pack::nibbles_unpack(&[0xe1, 0x07], 3, true), vec![1, -2, 7]);
/// # Ok::<(), groupq::Error>(())
/// ```
pub fn nibbles(codes: &[i32]) -> Result<Vec<u8>> {
    codes
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            let mut byte = 0u8;
            for (j, &c) in pair.iter().enumerate() {
                if !(-8..=15).contains(&c) {
                    return Err(invalid(format!(
                        "nibbles: code {c} at {} does not fit 4 bits",
                        2 * i + j
                    )));
                }
                byte |= ((c & 0xf) as u8) << (4 * j);
            }
            Ok(byte)
        })
        .collect()
}

/// The inverse of [`nibbles`]: `len` codes, sign-extended when `signed`.
pub fn nibbles_unpack(bytes: &[u8], len: usize, signed: bool) -> Vec<i32> {
    (0..len.min(bytes.len() * 2))
        .map(|i| {
            let n = i32::from((bytes[i / 2] >> (4 * (i % 2))) & 0xf);
            if signed && n >= 8 {
                n - 16
            } else {
                n
            }
        })
        .collect()
}

/// GPTQ `qweight`: codes `[n, k]` (`0..2^bits`, row-major, `n` output
/// features) to words `[k·bits/32, n]`, word `[r, j]` holding
/// `codes[j, r·32/bits + t]` at bits `t·bits`.
pub fn gptq_qweight(codes: &[u8], n: usize, k: usize, bits: u32) -> Result<Vec<i32>> {
    let fmt = "gptq_qweight";
    check_len(fmt, "codes", codes.len(), n, k)?;
    if !k.is_multiple_of(per_word(fmt, bits)?) {
        return Err(invalid(format!(
            "{fmt}: in_features {k} is not a multiple of {}",
            32 / bits
        )));
    }
    let pf = per_word(fmt, bits)?;
    if codes.iter().all(|&c| u32::from(c) < 1 << bits) {
        // Word (i, j) holds codes[j, i·pf .. (i+1)·pf]: each row of `codes`
        // is read once, in order.
        let mut words = vec![0i32; k / pf * n];
        for (j, row) in codes.chunks_exact(k).enumerate() {
            if bits == 4 {
                for (i, run) in row.as_chunks::<8>().0.iter().enumerate() {
                    words[i * n + j] = nibble_word(*run);
                }
                continue;
            }
            for (i, run) in row.chunks_exact(pf).enumerate() {
                words[i * n + j] = word_of(run.iter().map(|&c| u32::from(c)), bits);
            }
        }
        return Ok(words);
    }
    // The transpose [k, n], packed along its rows (this finds and names the
    // value that does not fit).
    pack(
        fmt,
        |r, c| i64::from(codes[c * k + r]),
        k,
        n,
        bits,
        true,
        None,
    )
}

/// The inverse of [`gptq_qweight`]: codes `[n, k]`.
pub fn gptq_qweight_unpack(words: &[i32], n: usize, k: usize, bits: u32) -> Result<Vec<u8>> {
    let t = unpack("gptq_qweight", words, k, n, bits, true, None)?;
    Ok((0..n * k).map(|i| t[(i % k) * n + i / k] as u8).collect())
}

/// How GPTQ's `qzeros` store a zero point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GptqZeros {
    /// `gptq_v2` (GPTQModel): the zero point itself.
    V2,
    /// `gptq` v1 as per-nibble readers (AutoGPTQ, exllama, vLLM) read it:
    /// `(z − 1) mod 2^bits`, read back as `(nibble + 1) mod 2^bits`. Exact
    /// for every zero point.
    V1,
    /// `gptq` v1 as GPTQModel writes it: the v2 word minus `0x11111111`
    /// (for 4 bits) as one wrapping 32-bit subtraction, so `z = 0` borrows
    /// from the next nibble; read back by adding it again (exact), while a
    /// per-nibble reader gets the borrowed nibbles wrong.
    V1WholeWord,
    /// `gptq` v1 as AutoGPTQ 0.7 writes it: `z − 1` cast to `u32` and ORed
    /// in unmasked, so `z = 0` sets that nibble and every higher nibble of
    /// its word to all ones. Lossy: reproduced for bit-exact comparison,
    /// read back as AutoGPTQ does (per nibble).
    V1AutoGptq,
}

fn ones(bits: u32) -> u32 {
    // 0x11111111 for 4 bits: a 1 in the lowest bit of every slot.
    let pf = 32 / bits;
    (0..pf).fold(0u32, |w, t| w | (1 << (t * bits)))
}

/// GPTQ `qzeros`: zero points `[n, g]` (`0..2^bits`) to words
/// `[g, ⌈n·bits/32⌉]`, packed along `n`, in the given encoding.
pub fn gptq_qzeros(
    zeros: &[i32],
    n: usize,
    g: usize,
    bits: u32,
    encoding: GptqZeros,
) -> Result<Vec<i32>> {
    let fmt = "gptq_qzeros";
    check_len(fmt, "zero points", zeros.len(), n, g)?;
    let pf = per_word(fmt, bits)?;
    let max = (1i32 << bits) - 1;
    if let Some((i, &z)) = zeros
        .iter()
        .enumerate()
        .find(|(_, z)| !(0..=max).contains(*z))
    {
        return Err(invalid(format!(
            "{fmt}: zero point {z} at [{}, {}] does not fit {bits} bits",
            i / g,
            i % g
        )));
    }
    // Transpose to [g, n] and pack along n.
    let raw = |r: usize, c: usize| i64::from(zeros[c * g + r]);
    match encoding {
        GptqZeros::V2 => pack(fmt, raw, g, n, bits, false, None),
        GptqZeros::V1 => pack(
            fmt,
            |r, c| (raw(r, c) - 1).rem_euclid(1 << bits),
            g,
            n,
            bits,
            false,
            None,
        ),
        GptqZeros::V1WholeWord => {
            let v2 = pack(fmt, raw, g, n, bits, false, None)?;
            Ok(v2
                .iter()
                .map(|&w| (w as u32).wrapping_sub(ones(bits)) as i32)
                .collect())
        }
        GptqZeros::V1AutoGptq => {
            let cols = n.div_ceil(pf);
            let mut words = vec![0u32; g * cols];
            for r in 0..g {
                for c in 0..n {
                    let v = (raw(r, c) - 1) as i32 as u32; // -1 becomes 0xffffffff
                    words[r * cols + c / pf] |= v << ((c % pf) as u32 * bits);
                }
            }
            Ok(words.into_iter().map(|w| w as i32).collect())
        }
    }
}

/// The inverse of [`gptq_qzeros`]: zero points `[n, g]` as the encoding's
/// reader gets them.
pub fn gptq_qzeros_unpack(
    words: &[i32],
    n: usize,
    g: usize,
    bits: u32,
    encoding: GptqZeros,
) -> Result<Vec<i32>> {
    let fmt = "gptq_qzeros";
    let mask = (1u32 << bits) - 1;
    let words: Vec<i32> = match encoding {
        GptqZeros::V1WholeWord => words
            .iter()
            .map(|&w| (w as u32).wrapping_add(ones(bits)) as i32)
            .collect(),
        _ => words.to_vec(),
    };
    let t = unpack(fmt, &words, g, n, bits, false, None)?;
    let read = |v: u32| match encoding {
        GptqZeros::V1 | GptqZeros::V1AutoGptq => ((v + 1) & mask) as i32,
        _ => v as i32,
    };
    Ok((0..n * g).map(|i| read(t[(i % g) * n + i / g])).collect())
}

/// AWQ GEMM `qweight`: codes `[n, k]` to words `[k, n·bits/32]`, packed along
/// `n` in [`AWQ_ORDER`] (for 4 bits).
pub fn awq_qweight(codes: &[u8], n: usize, k: usize, bits: u32) -> Result<Vec<i32>> {
    let fmt = "awq_qweight";
    check_len(fmt, "codes", codes.len(), n, k)?;
    let order = awq_order(fmt, n, bits)?;
    let pf = per_word(fmt, bits)?;
    if codes.iter().all(|&c| u32::from(c) < 1 << bits) {
        // Word (r, o) holds column r of rows o·pf .. (o+1)·pf of `codes`, in
        // AWQ's order: `pf` rows are read side by side, in order.
        let slots: Vec<usize> = (0..pf).map(|t| order.map_or(t, |o| o[t])).collect();
        let (cols, mut words) = (n / pf, vec![0i32; k * (n / pf)]);
        for (o, rows) in codes.chunks_exact(pf * k).enumerate() {
            for r in 0..k {
                words[r * cols + o] = if bits == 4 {
                    nibble_word(std::array::from_fn(|t| rows[slots[t] * k + r]))
                } else {
                    word_of(
                        slots.iter().map(|&slot| u32::from(rows[slot * k + r])),
                        bits,
                    )
                };
            }
        }
        return Ok(words);
    }
    // This finds and names the value that does not fit.
    pack(
        fmt,
        |r, c| i64::from(codes[c * k + r]),
        k,
        n,
        bits,
        false,
        order,
    )
}

/// The inverse of [`awq_qweight`]: codes `[n, k]`.
pub fn awq_qweight_unpack(words: &[i32], n: usize, k: usize, bits: u32) -> Result<Vec<u8>> {
    let order = awq_order("awq_qweight", n, bits)?;
    let t = unpack("awq_qweight", words, k, n, bits, false, order)?;
    Ok((0..n * k).map(|i| t[(i % k) * n + i / k] as u8).collect())
}

/// AWQ GEMM `qzeros`: zero points `[n, g]` to words `[g, n·bits/32]`, raw,
/// in [`AWQ_ORDER`].
pub fn awq_qzeros(zeros: &[i32], n: usize, g: usize, bits: u32) -> Result<Vec<i32>> {
    let fmt = "awq_qzeros";
    check_len(fmt, "zero points", zeros.len(), n, g)?;
    let order = awq_order(fmt, n, bits)?;
    pack(
        fmt,
        |r, c| i64::from(zeros[c * g + r]),
        g,
        n,
        bits,
        false,
        order,
    )
}

/// The inverse of [`awq_qzeros`]: zero points `[n, g]`.
pub fn awq_qzeros_unpack(words: &[i32], n: usize, g: usize, bits: u32) -> Result<Vec<i32>> {
    let order = awq_order("awq_qzeros", n, bits)?;
    let t = unpack("awq_qzeros", words, g, n, bits, false, order)?;
    Ok((0..n * g).map(|i| t[(i % g) * n + i / g] as i32).collect())
}

fn awq_order(fmt: &str, n: usize, bits: u32) -> Result<Option<&'static [usize]>> {
    let pf = per_word(fmt, bits)?;
    if !n.is_multiple_of(pf) {
        return Err(invalid(format!(
            "{fmt}: out_features {n} is not a multiple of {pf}"
        )));
    }
    Ok((bits == 4).then_some(&AWQ_ORDER[..]))
}

/// compressed-tensors `weight_packed`: signed codes `[n, k]` to words
/// `[n, ⌈k·bits/32⌉]`, each stored as `q + 2^(bits−1)`.
pub fn compressed_tensors_weight(codes: &[i8], n: usize, k: usize, bits: u32) -> Result<Vec<i32>> {
    let fmt = "compressed_tensors_weight";
    check_len(fmt, "codes", codes.len(), n, k)?;
    let offset = 1i64 << (bits - 1);
    let pf = per_word(fmt, bits)?;
    if k.is_multiple_of(pf) {
        // Whole words per row: `pf` consecutive codes each, row-major. One
        // range check for the whole tensor; the pack below finds the
        // offending value when it fails.
        let max = (1i32 << bits) - 1;
        let off = offset as i32;
        if codes
            .iter()
            .all(|&c| (0..=max).contains(&(i32::from(c) + off)))
        {
            let word = |run: &[i8]| word_of(run.iter().map(|&c| (i32::from(c) + off) as u32), bits);
            // (The range check above makes `c + off` a byte below 16.)
            let nibbles = |run: &[i8; 8]| nibble_word(run.map(|c| (i32::from(c) + off) as u8));
            return Ok(match pf {
                8 if bits == 4 => codes.as_chunks::<8>().0.iter().map(nibbles).collect(),
                8 => codes.chunks_exact(8).map(word).collect(),
                4 => codes.chunks_exact(4).map(word).collect(),
                _ => codes.chunks_exact(pf).map(word).collect(),
            });
        }
    }
    pack(
        fmt,
        |r, c| i64::from(codes[r * k + c]) + offset,
        n,
        k,
        bits,
        false,
        None,
    )
}

/// The inverse of [`compressed_tensors_weight`]: signed codes `[n, k]`.
pub fn compressed_tensors_weight_unpack(
    words: &[i32],
    n: usize,
    k: usize,
    bits: u32,
) -> Result<Vec<i8>> {
    let t = unpack("compressed_tensors_weight", words, n, k, bits, false, None)?;
    let offset = 1i32 << (bits - 1);
    Ok(t.into_iter().map(|v| (v as i32 - offset) as i8).collect())
}

/// compressed-tensors `weight_zero_point`: signed zero points `[n, g]` to
/// words `[⌈n·bits/32⌉, g]`, packed along `n`, each `z + 2^(bits−1)`.
pub fn compressed_tensors_zero_point(
    zeros: &[i32],
    n: usize,
    g: usize,
    bits: u32,
) -> Result<Vec<i32>> {
    let fmt = "compressed_tensors_zero_point";
    check_len(fmt, "zero points", zeros.len(), n, g)?;
    let offset = 1i64 << (bits - 1);
    pack(
        fmt,
        |r, c| i64::from(zeros[r * g + c]) + offset,
        n,
        g,
        bits,
        true,
        None,
    )
}

/// The inverse of [`compressed_tensors_zero_point`]: zero points `[n, g]`.
pub fn compressed_tensors_zero_point_unpack(
    words: &[i32],
    n: usize,
    g: usize,
    bits: u32,
) -> Result<Vec<i32>> {
    let t = unpack(
        "compressed_tensors_zero_point",
        words,
        n,
        g,
        bits,
        true,
        None,
    )?;
    let offset = 1i32 << (bits - 1);
    Ok(t.into_iter().map(|v| v as i32 - offset).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_layouts() {
        // GPTQ: codes of one output row along K, lowest nibble first.
        let codes: Vec<u8> = (0..8).collect();
        assert_eq!(gptq_qweight(&codes, 1, 8, 4).unwrap(), vec![0x7654_3210]);
        // AWQ: nibble i holds column AWQ_ORDER[i].
        let codes: Vec<u8> = (0..8).collect(); // n = 8, k = 1
        assert_eq!(awq_qweight(&codes, 8, 1, 4).unwrap(), vec![0x7531_6420]);
        // compressed-tensors: offset +8.
        let codes: Vec<i8> = vec![-8, -7, 0, 7, 1, 2, 3, 4];
        assert_eq!(
            compressed_tensors_weight(&codes, 1, 8, 4).unwrap(),
            vec![0xcba9_f810u32 as i32]
        );
    }

    #[test]
    fn gptq_v1_encodings() {
        let zeros = [1, 0, 8, 15, 2, 3, 4, 5];
        let v1 = gptq_qzeros(&zeros, 8, 1, 4, GptqZeros::V1).unwrap();
        assert_eq!(v1, vec![0x4321_e7f0]);
        let whole = gptq_qzeros(&zeros, 8, 1, 4, GptqZeros::V1WholeWord).unwrap();
        assert_eq!(whole[0] as u32, 0x5432_f801u32.wrapping_sub(0x1111_1111));
        for enc in [GptqZeros::V2, GptqZeros::V1, GptqZeros::V1WholeWord] {
            let w = gptq_qzeros(&zeros, 8, 1, 4, enc).unwrap();
            assert_eq!(
                gptq_qzeros_unpack(&w, 8, 1, 4, enc).unwrap(),
                zeros,
                "{enc:?}"
            );
        }
        // AutoGPTQ's unmasked OR: z = 0 at column 1 sets nibbles 1..8 to 15.
        let auto = gptq_qzeros(&zeros, 8, 1, 4, GptqZeros::V1AutoGptq).unwrap();
        assert_eq!(auto[0] as u32, 0xffff_fff0);
    }

    #[test]
    fn out_of_range_codes_are_errors() {
        assert!(gptq_qweight(&[16, 0, 0, 0, 0, 0, 0, 0], 1, 8, 4).is_err());
        assert!(compressed_tensors_weight(&[8; 8], 1, 8, 4).is_err());
        assert!(gptq_qzeros(&[16], 1, 1, 4, GptqZeros::V2).is_err());
        assert!(gptq_qweight(&[0; 8], 1, 8, 3).is_err());
        assert!(gptq_qweight(&[0; 7], 1, 7, 4).is_err());
        assert!(nibbles(&[16]).is_err());
    }
}

/// The checks of the packers of [`S4`]/[`U4`] codes: `codes` holds the
/// `[n, k]` codes two per byte (`n · k / 2` bytes) and `k` is a multiple of
/// `multiple`.
fn check_nibbles(fmt: &str, len: usize, n: usize, k: usize, multiple: usize) -> Result<()> {
    if !k.is_multiple_of(multiple) {
        return Err(invalid(format!(
            "{fmt}: in_features {k} is not a multiple of {multiple}"
        )));
    }
    check_len(fmt, "codes (bytes of two)", len, n, k / 2)
}

/// [`compressed_tensors_weight`] of 4-bit codes already packed two per byte
/// (what a plan writes into an [`S4`] tensor): `codes` `[n, k / 2]` bytes,
/// `k` a multiple of 8. Every [`S4`] code fits, so this cannot fail on
/// values; it runs at memory speed (a nibble `q + 8` is `q ^ 8` on four
/// bits, and the words are the rows' bytes read little-endian).
///
/// ```
/// use groupq::{pack, S4};
/// let codes: Vec<i8> = vec![-8, -7, 0, 7, 1, 2, 3, 4];
/// let s4: Vec<S4> = codes.chunks(2).map(|p| S4::from_codes(p[0].into(), p[1].into())).collect();
/// assert_eq!(
///     pack::compressed_tensors_weight_s4(&s4, 1, 8)?,
///     pack::compressed_tensors_weight(&codes, 1, 8, 4)?,
/// );
/// # Ok::<(), groupq::Error>(())
/// ```
pub fn compressed_tensors_weight_s4(codes: &[S4], n: usize, k: usize) -> Result<Vec<i32>> {
    check_nibbles("compressed_tensors_weight_s4", codes.len(), n, k, 8)?;
    Ok(codes
        .as_chunks::<4>()
        .0
        .iter()
        .map(|b| i32::from_le_bytes(b.map(|s| s.0 ^ 0x88)))
        .collect())
}

/// [`gptq_qweight`] of 4-bit codes already packed two per byte (a [`U4`]
/// tensor `[n, k / 2]`), `k` a multiple of 8: word `[r, j]` is bytes
/// `4r .. 4r + 4` of row `j`, read little-endian, so the words are the
/// transpose of the rows' words, done in blocks of rows that stay in cache.
///
/// ```
/// use groupq::{pack, U4};
/// let codes: Vec<u8> = (0..16).collect();
/// let u4: Vec<U4> = codes.chunks(2).map(|p| U4::from_codes(p[0].into(), p[1].into())).collect();
/// assert_eq!(pack::gptq_qweight_u4(&u4, 2, 8)?, pack::gptq_qweight(&codes, 2, 8, 4)?);
/// # Ok::<(), groupq::Error>(())
/// ```
pub fn gptq_qweight_u4(codes: &[U4], n: usize, k: usize) -> Result<Vec<i32>> {
    check_nibbles("gptq_qweight_u4", codes.len(), n, k, 8)?;
    /// Rows transposed together: their words of one column fill whole
    /// cache lines of the output.
    const ROWS: usize = 32;
    let (half, per_row) = (k / 2, k / 8);
    let mut words = vec![0i32; per_row * n];
    if n == 0 || k == 0 {
        return Ok(words);
    }
    for (b, block) in codes.chunks(ROWS * half).enumerate() {
        let rows: Vec<&[[U4; 4]]> = block
            .chunks_exact(half)
            .map(|r| r.as_chunks::<4>().0)
            .collect();
        for r in 0..per_row {
            let out = &mut words[r * n + b * ROWS..][..rows.len()];
            for (o, row) in out.iter_mut().zip(&rows) {
                *o = i32::from_le_bytes(row[r].map(|u| u.0));
            }
        }
    }
    Ok(words)
}

/// [`awq_qweight`] of 4-bit codes already packed two per byte (a [`U4`]
/// tensor `[n, k / 2]`), `n` a multiple of 8 and `k` even: sixteen codes of
/// each of a word's eight rows give sixteen words (a nibble transpose in
/// registers), in blocks of rows that write whole cache lines.
///
/// ```
/// use groupq::{pack, U4};
/// let codes: Vec<u8> = (0..32).map(|i| (i * 7 % 16) as u8).collect();
/// let u4: Vec<U4> = codes.chunks(2).map(|p| U4::from_codes(p[0].into(), p[1].into())).collect();
/// assert_eq!(pack::awq_qweight_u4(&u4, 8, 4)?, pack::awq_qweight(&codes, 8, 4, 4)?);
/// # Ok::<(), groupq::Error>(())
/// ```
pub fn awq_qweight_u4(codes: &[U4], n: usize, k: usize) -> Result<Vec<i32>> {
    let fmt = "awq_qweight_u4";
    check_nibbles(fmt, codes.len(), n, k, 2)?;
    awq_order(fmt, n, 4)?;
    /// Words of a row of the output written together (one cache line).
    const WORDS: usize = 16;
    const LOW: u64 = 0x0f0f_0f0f_0f0f_0f0f;
    let (half, cols) = (k / 2, n / 8);
    let mut words = vec![0i32; k * cols];
    if n == 0 || k == 0 {
        return Ok(words);
    }
    // Bytes `c` of the eight rows of a word (in AWQ's order) as one u64:
    // its low nibbles are the word of column `2c`, its high nibbles that
    // of `2c + 1`.
    fn put(words: &mut [i32], cols: usize, c: usize, o: usize, x: u64) {
        words[2 * c * cols + o] = nibble_word64(x & LOW);
        words[(2 * c + 1) * cols + o] = nibble_word64((x >> 4) & LOW);
    }
    let whole = half - half % 8;
    for (b, block) in codes.chunks(WORDS * 8 * half).enumerate() {
        // The eight rows of each word, in AWQ's order.
        let groups: Vec<[&[U4]; 8]> = block
            .chunks_exact(8 * half)
            .map(|g| std::array::from_fn(|t| &g[AWQ_ORDER[t] * half..][..half]))
            .collect();
        // Sixteen codes of each of the eight rows at a time (eight bytes,
        // columns `2 c0 ..`), as an 8×16 matrix of nibbles transposed in
        // registers: then row `j` holds the words of columns `2 c0 + j`
        // (low half) and `2 c0 + 8 + j` (high half).
        for c0 in (0..whole).step_by(8) {
            for (i, rows) in groups.iter().enumerate() {
                let mut m = [0u64; 8];
                for (m, r) in m.iter_mut().zip(rows) {
                    *m = r[c0..c0 + 8]
                        .iter()
                        .rev()
                        .fold(0, |v, u| v << 8 | u64::from(u.0));
                }
                let o = b * WORDS + i;
                for (j, x) in transpose_nibbles(m).into_iter().enumerate() {
                    words[(2 * c0 + j) * cols + o] = x as u32 as i32;
                    words[(2 * c0 + 8 + j) * cols + o] = (x >> 32) as u32 as i32;
                }
            }
        }
        for c in whole..half {
            for (i, rows) in groups.iter().enumerate() {
                let x = u64::from_le_bytes(rows.map(|r| r[c].0));
                put(&mut words, cols, c, b * WORDS + i, x);
            }
        }
    }
    Ok(words)
}

/// The transposes of two 8×8 matrices of nibbles side by side: row `r` of
/// the first is the low 32 bits of `m[r]` (nibble `c` at bits `4c`), of the
/// second the high 32 bits; nibble `c` of the result's row `r` (in each
/// half) is nibble `r` of row `c`. Three rounds swap 1-, 2- and 4-nibble
/// blocks between row pairs (no block crosses the halves).
#[inline(always)]
fn transpose_nibbles(mut m: [u64; 8]) -> [u64; 8] {
    /// A round: block width in bits, mask of a row's kept blocks, row pairs.
    type Round = (u32, u64, [(usize, usize); 4]);
    const ROUNDS: [Round; 3] = [
        (4, 0x0f0f_0f0f_0f0f_0f0f, [(0, 1), (2, 3), (4, 5), (6, 7)]),
        (8, 0x00ff_00ff_00ff_00ff, [(0, 2), (1, 3), (4, 6), (5, 7)]),
        (16, 0x0000_ffff_0000_ffff, [(0, 4), (1, 5), (2, 6), (3, 7)]),
    ];
    for (shift, mask, pairs) in ROUNDS {
        for (a, b) in pairs {
            let t = ((m[a] >> shift) ^ m[b]) & mask;
            m[b] ^= t;
            m[a] ^= t << shift;
        }
    }
    m
}

/// The ggml block types of [`gguf_blocks`]: 32 codes a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GgufBlock {
    /// `d: f16, qs: [i8; 32]` (34 bytes).
    Q8_0,
    /// `d: f16, qs: [u8; 16]` (18 bytes): 4-bit codes, element `j` in the low
    /// nibble of `qs[j]`, element `j + 16` in its high nibble.
    Q4_0,
    /// `d: f16, m: f16, qs: [u8; 16]` (20 bytes).
    Q4_1,
    /// `d: f16, qh: u32, qs: [u8; 16]` (22 bytes): 5-bit codes, bit 4 of
    /// element `j` in bit `j` of `qh` (little-endian), the low 4 bits as Q4_0.
    Q5_0,
    /// `d: f16, m: f16, qh: u32, qs: [u8; 16]` (24 bytes).
    Q5_1,
}

impl GgufBlock {
    /// Codes per block.
    pub const SIZE: usize = 32;

    /// Bytes per block.
    pub const fn bytes(self) -> usize {
        match self {
            GgufBlock::Q8_0 => 34,
            GgufBlock::Q4_0 => 18,
            GgufBlock::Q4_1 => 20,
            GgufBlock::Q5_0 => 22,
            GgufBlock::Q5_1 => 24,
        }
    }

    fn has_min(self) -> bool {
        matches!(self, GgufBlock::Q4_1 | GgufBlock::Q5_1)
    }

    fn code_range(self) -> (i32, i32) {
        match self {
            GgufBlock::Q8_0 => (-128, 127),
            GgufBlock::Q4_0 | GgufBlock::Q4_1 => (0, 15),
            GgufBlock::Q5_0 | GgufBlock::Q5_1 => (0, 31),
        }
    }
}

/// ggml blocks: `codes` (a multiple of 32, in element order), one `d` (and,
/// for Q4_1/Q5_1, one `m`) per block as f16 bits, to the raw bytes gguf
/// stores.
///
/// ```
/// use groupq::pack::{gguf_blocks, gguf_blocks_unpack, GgufBlock};
/// let codes: Vec<i32> = (0..32).map(|i| i % 16).collect();
/// let bytes = gguf_blocks(GgufBlock::Q4_0, &codes, &[0x3c00], None)?;
/// assert_eq!(bytes.len(), 18);
/// assert_eq!(gguf_blocks_unpack(GgufBlock::Q4_0, &bytes)?, (codes, vec![0x3c00], None));
/// # Ok::<(), groupq::Error>(())
/// ```
pub fn gguf_blocks(
    kind: GgufBlock,
    codes: &[i32],
    d: &[u16],
    m: Option<&[u16]>,
) -> Result<Vec<u8>> {
    let fmt = "gguf_blocks";
    let blocks = codes.len() / GgufBlock::SIZE;
    if !codes.len().is_multiple_of(GgufBlock::SIZE) || d.len() != blocks {
        return Err(invalid(format!(
            "{fmt}: {} codes and {} scales do not make whole blocks of 32",
            codes.len(),
            d.len()
        )));
    }
    if kind.has_min() != m.is_some() || m.is_some_and(|m| m.len() != blocks) {
        return Err(invalid(format!(
            "{fmt}: {kind:?} needs one minimum per block exactly when it has minimums"
        )));
    }
    let (lo, hi) = kind.code_range();
    if let Some((i, &c)) = codes
        .iter()
        .enumerate()
        .find(|(_, c)| !(lo..=hi).contains(*c))
    {
        return Err(invalid(format!(
            "{fmt}: code {c} at {i} is outside {kind:?}'s [{lo}, {hi}]"
        )));
    }
    let mut out = Vec::with_capacity(blocks * kind.bytes());
    for (b, q) in codes.chunks_exact(GgufBlock::SIZE).enumerate() {
        out.extend_from_slice(&d[b].to_le_bytes());
        if let Some(m) = m {
            out.extend_from_slice(&m[b].to_le_bytes());
        }
        if kind == GgufBlock::Q8_0 {
            out.extend(q.iter().map(|&c| c as i8 as u8));
            continue;
        }
        if matches!(kind, GgufBlock::Q5_0 | GgufBlock::Q5_1) {
            let qh = q
                .iter()
                .enumerate()
                .fold(0u32, |h, (j, &c)| h | (((c as u32 >> 4) & 1) << j));
            out.extend_from_slice(&qh.to_le_bytes());
        }
        out.extend((0..16).map(|j| ((q[j] & 0xf) | ((q[j + 16] & 0xf) << 4)) as u8));
    }
    Ok(out)
}

/// The inverse of [`gguf_blocks`]: `(codes, d, m)`.
pub type GgufUnpacked = (Vec<i32>, Vec<u16>, Option<Vec<u16>>);

/// The inverse of [`gguf_blocks`].
pub fn gguf_blocks_unpack(kind: GgufBlock, bytes: &[u8]) -> Result<GgufUnpacked> {
    if !bytes.len().is_multiple_of(kind.bytes()) {
        return Err(invalid(format!(
            "gguf_blocks_unpack: {} bytes are not whole {kind:?} blocks of {}",
            bytes.len(),
            kind.bytes()
        )));
    }
    let (mut codes, mut d, mut m) = (Vec::new(), Vec::new(), kind.has_min().then(Vec::new));
    let half = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
    for block in bytes.chunks_exact(kind.bytes()) {
        d.push(half(block));
        let mut rest = &block[2..];
        if let Some(m) = m.as_mut() {
            m.push(half(rest));
            rest = &rest[2..];
        }
        if kind == GgufBlock::Q8_0 {
            codes.extend(rest.iter().map(|&b| i32::from(b as i8)));
            continue;
        }
        let qh = if matches!(kind, GgufBlock::Q5_0 | GgufBlock::Q5_1) {
            let h = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
            rest = &rest[4..];
            h
        } else {
            0
        };
        let high = |j: usize| (((qh >> j) & 1) << 4) as i32;
        codes.extend((0..16).map(|j| i32::from(rest[j] & 0xf) | high(j)));
        codes.extend((0..16).map(|j| i32::from(rest[j] >> 4) | high(j + 16)));
    }
    Ok((codes, d, m))
}
