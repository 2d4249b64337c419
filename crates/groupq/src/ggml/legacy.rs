//! The legacy blocks of 32: `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q8_0`
//! (ggml's `quantize_row_q*_ref`, `quantize_row_q*_impl` and
//! `dequantize_row_q*`).
//!
//! Layouts (little-endian f16 `d`, `m`):
//! `q4_0` = d, qs\[16\]; `q4_1` = d, m, qs\[16\]; `q5_0` = d, qh\[4\], qs\[16\];
//! `q5_1` = d, m, qh\[4\], qs\[16\]; `q8_0` = d, qs\[32\] (i8). Nibble `j` of
//! `qs` holds weight `j` (low) and `j + 16` (high); bit `j` of `qh` the
//! fifth bit of weight `j`.

use super::kquants::search_chunks;
use super::search::c_max;
use super::{read_f16, write_f16};
use crate::kernels::ggml::{legacy_codes, q8_0_codes, Search};
use crate::plan::BackendKind;

const QK: usize = 32;
/// Bytes of a `q4_0` block.
pub(crate) const Q4_0_BYTES: usize = 2 + QK / 2;
/// Bytes of a `q4_1` block.
pub(crate) const Q4_1_BYTES: usize = 4 + QK / 2;
/// Bytes of a `q5_0` block.
pub(crate) const Q5_0_BYTES: usize = 2 + 4 + QK / 2;
/// Bytes of a `q5_1` block.
pub(crate) const Q5_1_BYTES: usize = 4 + 4 + QK / 2;
/// Bytes of a `q8_0` block.
pub(crate) const Q8_0_BYTES: usize = 2 + QK;

/// The row statistic of the weighted legacy quantizers:
/// `sigma2 = Σx² / n_per_row`.
fn row_sigma2(x: &[f32]) -> f32 {
    let mut sum_x2 = 0.0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    sum_x2 / x.len() as f32
}

/// `weight[j] = qw[j] · sqrt(sigma2 + x[j]²)`.
fn block_weights(xb: &[f32], qw: &[f32], sigma2: f32) -> [f32; QK] {
    let mut weight = [0.0f32; QK];
    for j in 0..QK {
        weight[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
    }
    weight
}

/// Packs 32 4-bit codes: `qs[j] = L[j] | L[j + 16] << 4` (ggml does not mask
/// the low code).
fn pack4(l: impl Fn(usize) -> u8, qs: &mut [u8]) {
    for j in 0..QK / 2 {
        qs[j] = l(j) | (l(j + QK / 2) << 4);
    }
}

/// Packs 32 5-bit codes into nibbles `qs` and returns the fifth bits `qh`.
fn pack_nibbles(l: impl Fn(usize) -> u8, qs: &mut [u8]) -> u32 {
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let xi0 = l(j);
        let xi1 = l(j + QK / 2);
        qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= ((u32::from(xi0) & 0x10) >> 4) << j;
        qh |= ((u32::from(xi1) & 0x10) >> 4) << (j + QK / 2);
    }
    qh
}

/// `q4_0` of one row (`quantize_q4_0`).
/// With an importance matrix the block searches run on backend `b`.
pub(crate) fn quantize_q4_0(b: BackendKind, x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    match qw {
        None => {
            let blocks = x.chunks_exact(QK).zip(y.chunks_exact_mut(Q4_0_BYTES));
            blocks.for_each(|(xb, yb)| q4_0_ref(xb, yb))
        }
        Some(qw) => weighted_blocks(b, Search::Q4_0W, x, qw, |i, d, _, l| {
            let yb = &mut y[Q4_0_BYTES * i..Q4_0_BYTES * (i + 1)];
            write_f16(yb, 0, d);
            pack4(|j| l[j], &mut yb[2..]);
        }),
    }
}

/// The importance-matrix path of q4_0 / q5_0: the blocks' weights (with
/// the row's σ²), the searches of `kind` on backend `b`, then
/// `finish(block, scale, the_min, codes)` per block.
fn weighted_blocks(
    b: BackendKind,
    kind: Search,
    x: &[f32],
    qw: &[f32],
    mut finish: impl FnMut(usize, f32, f32, &[u8]),
) {
    let sigma2 = row_sigma2(x);
    search_chunks(
        b,
        kind,
        x,
        |at, xc, w| {
            for ((xb, qb), wb) in xc
                .chunks_exact(QK)
                .zip(qw[at..].chunks_exact(QK))
                .zip(w.chunks_exact_mut(QK))
            {
                wb.copy_from_slice(&block_weights(xb, qb, sigma2));
            }
        },
        |at, scales, mins, codes| {
            for (k, (&d, &m)) in scales.iter().zip(mins).enumerate() {
                finish(at / QK + k, d, m, &codes[QK * k..QK * (k + 1)]);
            }
        },
    );
}

/// `quantize_row_q4_0_ref` of one block.
fn q4_0_ref(xb: &[f32], yb: &mut [u8]) {
    let max = block_abs_max(xb);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    write_f16(yb, 0, d);
    let l = legacy_codes(block(xb), 0.0, id, 8.5, Some(15));
    pack4(|j| l[j], &mut yb[2..]);
}

/// The element of `xb` that ggml's scan `if (amax < fabsf(v)) { amax =
/// fabsf(v); max = v; }` keeps (`kernels::ggml::block_abs_max`).
#[inline]
fn block_abs_max(xb: &[f32]) -> f32 {
    crate::kernels::ggml::block_abs_max(block(xb)).1
}

/// ggml's `min`/`max` scan (`kernels::ggml::block_min_max`).
#[inline]
fn block_min_max(xb: &[f32]) -> (f32, f32) {
    crate::kernels::ggml::block_min_max(block(xb))
}

/// A block of 32 values (the callers pass `chunks_exact(32)` slices).
#[inline(always)]
fn block(xb: &[f32]) -> &[f32; QK] {
    xb.try_into().expect("a block of 32 values")
}

/// `q4_1` of one row (`quantize_q4_1`).
/// With an importance matrix the block searches (make_qkx3_quants, as
/// q4_K's) run on backend `b`.
pub(crate) fn quantize_q4_1(b: BackendKind, x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    match qw {
        None => {
            let blocks = x.chunks_exact(QK).zip(y.chunks_exact_mut(Q4_1_BYTES));
            blocks.for_each(|(xb, yb)| q_1_ref(15, xb, yb))
        }
        Some(qw) => weighted_blocks(b, Search::Q4KW, x, qw, |i, d, min, l| {
            let yb = &mut y[Q4_1_BYTES * i..Q4_1_BYTES * (i + 1)];
            write_f16(yb, 0, d);
            write_f16(yb, 2, -min);
            pack4(|j| l[j], &mut yb[4..]);
        }),
    }
}

/// `quantize_row_q4_1_ref` (`nmax` 15) and `quantize_row_q5_1_ref`
/// (`nmax` 31) of one block.
fn q_1_ref(nmax: i32, xb: &[f32], yb: &mut [u8]) {
    let (min, max) = block_min_max(xb);
    let d = (max - min) / nmax as f32;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    write_f16(yb, 0, d);
    write_f16(yb, 2, min);
    if nmax == 15 {
        // (int8_t)(x0 + 0.5f), then MIN(15, ·).
        let l = legacy_codes(block(xb), min, id, 0.5, Some(15));
        pack4(|j| l[j], &mut yb[4..]);
    } else {
        // (uint8_t)(x0 + 0.5f), no clamp.
        let l = legacy_codes(block(xb), min, id, 0.5, None);
        let qh = pack_nibbles(|j| l[j], &mut yb[8..]);
        yb[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}

/// `q5_0` of one row (`quantize_q5_0`).
/// With an importance matrix the block searches run on backend `b`.
pub(crate) fn quantize_q5_0(b: BackendKind, x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    match qw {
        None => {
            let blocks = x.chunks_exact(QK).zip(y.chunks_exact_mut(Q5_0_BYTES));
            blocks.for_each(|(xb, yb)| q5_0_ref(xb, yb))
        }
        Some(qw) => weighted_blocks(b, Search::Q5_0W, x, qw, |i, d, _, l| {
            let yb = &mut y[Q5_0_BYTES * i..Q5_0_BYTES * (i + 1)];
            write_f16(yb, 0, d);
            let qh = pack_nibbles(|j| l[j], &mut yb[6..]);
            yb[2..6].copy_from_slice(&qh.to_le_bytes());
        }),
    }
}

/// `quantize_row_q5_0_ref` of one block.
fn q5_0_ref(xb: &[f32], yb: &mut [u8]) {
    let max = block_abs_max(xb);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    write_f16(yb, 0, d);
    let l = legacy_codes(block(xb), 0.0, id, 16.5, Some(31));
    let qh = pack_nibbles(|j| l[j], &mut yb[6..]);
    yb[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// `q5_1` of one row (`quantize_q5_1`).
/// With an importance matrix the block searches (make_qkx3_quants, as
/// q5_K's) run on backend `b`.
pub(crate) fn quantize_q5_1(b: BackendKind, x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    match qw {
        None => {
            let blocks = x.chunks_exact(QK).zip(y.chunks_exact_mut(Q5_1_BYTES));
            blocks.for_each(|(xb, yb)| q_1_ref(31, xb, yb))
        }
        Some(qw) => weighted_blocks(b, Search::Q5KW, x, qw, |i, d, min, l| {
            let yb = &mut y[Q5_1_BYTES * i..Q5_1_BYTES * (i + 1)];
            write_f16(yb, 0, d);
            write_f16(yb, 2, -min);
            let qh = pack_nibbles(|j| l[j], &mut yb[8..]);
            yb[4..8].copy_from_slice(&qh.to_le_bytes());
        }),
    }
}

/// `q8_0` of one row (`quantize_row_q8_0_ref`; ggml ignores the imatrix).
pub(crate) fn quantize_q8_0(x: &[f32], y: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(QK).zip(y.chunks_exact_mut(Q8_0_BYTES)) {
        // `amax = MAX(amax, fabsf(v))`: a NaN resets it, so a block with
        // one takes the scan; otherwise the order does not matter.
        let amax = if xb.iter().any(|v| v.is_nan()) {
            let mut amax = 0.0f32;
            for &v in xb {
                amax = c_max(amax, v.abs());
            }
            amax
        } else {
            block_abs_max(xb).abs()
        };
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(yb, 0, d);
        // roundf: half away from zero, then the int8_t store.
        yb[2..].copy_from_slice(&q8_0_codes(block(xb), id));
    }
}

/// `dequantize_row_q4_0` of one block.
pub(crate) fn dequantize_q4_0(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    for j in 0..QK / 2 {
        let q = b[2 + j];
        y[j] = (i32::from(q & 0x0F) - 8) as f32 * d;
        y[j + QK / 2] = (i32::from(q >> 4) - 8) as f32 * d;
    }
}

/// `dequantize_row_q4_1` of one block.
pub(crate) fn dequantize_q4_1(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    let m = read_f16(b, 2);
    for j in 0..QK / 2 {
        let q = b[4 + j];
        y[j] = f32::from(q & 0x0F) * d + m;
        y[j + QK / 2] = f32::from(q >> 4) * d + m;
    }
}

/// The fifth bits of a 5-bit block: `(xh_0, xh_1)` for weight `j`, `j + 16`.
#[inline]
fn high_bits(qh: u32, j: usize) -> (u8, u8) {
    let xh_0 = ((qh >> j) << 4) & 0x10;
    let xh_1 = (qh >> (j + 12)) & 0x10;
    (xh_0 as u8, xh_1 as u8)
}

/// `dequantize_row_q5_0` of one block.
pub(crate) fn dequantize_q5_0(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..QK / 2 {
        let (xh_0, xh_1) = high_bits(qh, j);
        let q = b[6 + j];
        let x0 = i32::from((q & 0x0F) | xh_0) - 16;
        let x1 = i32::from((q >> 4) | xh_1) - 16;
        y[j] = x0 as f32 * d;
        y[j + QK / 2] = x1 as f32 * d;
    }
}

/// `dequantize_row_q5_1` of one block.
pub(crate) fn dequantize_q5_1(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    let m = read_f16(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..QK / 2 {
        let (xh_0, xh_1) = high_bits(qh, j);
        let q = b[8 + j];
        y[j] = f32::from((q & 0x0F) | xh_0) * d + m;
        y[j + QK / 2] = f32::from((q >> 4) | xh_1) * d + m;
    }
}

/// `dequantize_row_q8_0` of one block.
pub(crate) fn dequantize_q8_0(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    for (v, &q) in y.iter_mut().zip(&b[2..]) {
        *v = f32::from(q as i8) * d;
    }
}

#[cfg(test)]
mod scan_tests {
    use super::*;
    use proptest::prelude::*;

    /// ggml's scans, element by element in order.
    fn abs_max_scan(xb: &[f32]) -> f32 {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        max
    }

    fn min_max_scan(xb: &[f32]) -> (f32, f32) {
        let (mut min, mut max) = (f32::MAX, -f32::MAX);
        for &v in xb {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        (min, max)
    }

    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            4 => -2.0f32..2.0,
            // Few distinct magnitudes, so that ties of |x| with both signs are common.
            3 => prop::sample::select(vec![0.0f32, -0.0, 1.0, -1.0, 0.5, -0.5]),
            1 => prop::sample::select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, -f32::MAX]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        #[test]
        fn vectorizable_scans_equal_ggmls(
            xb in prop::collection::vec(value(), 32),
            sign in prop::sample::select(vec![0, 1, 2]),
        ) {
            // Blocks without negative (or positive) values, whose minimum
            // (maximum) may be a zero of either sign.
            let xb: Vec<f32> = match sign {
                1 => xb.iter().map(|v| if *v < 0.0 { -v } else { *v }).collect(),
                2 => xb.iter().map(|v| if *v > 0.0 { -v } else { *v }).collect(),
                _ => xb,
            };
            prop_assert_eq!(block_abs_max(&xb).to_bits(), abs_max_scan(&xb).to_bits());
            let (a, b) = block_min_max(&xb);
            let (c, d) = min_max_scan(&xb);
            prop_assert_eq!((a.to_bits(), b.to_bits()), (c.to_bits(), d.to_bits()));
        }
    }
}
