//! The non-linear 4-bit types `iq4_nl` (blocks of 32) and `iq4_xs`
//! (super-blocks of 256): ggml's `quantize_row_iq4_nl_impl` search as
//! `quantize_iq4_nl` / `quantize_iq4_xs` call it (`ntry = 7`, with or without
//! an imatrix), and `dequantize_row_iq4_nl` / `dequantize_row_iq4_xs`.
//!
//! Layouts: `iq4_nl` (18) = d, qs\[16\]; `iq4_xs` (136) = d @0, scales_h (u16)
//! @2, scales_l\[4\] @4, qs\[128\] @8. Nibbles index [`KVALUES_IQ4NL`];
//! `qs[16·i + j]` holds weight `32·i + j` (low) and `32·i + 16 + j` (high).

use super::read_f16;
use super::search::{nearest_int, GROUP_MAX_EPS};
use crate::kernels::ggml::Search;
use crate::plan::BackendKind;

/// ggml's `kvalues_iq4nl`: the 16 code-book values of `iq4_nl`/`iq4_xs`.
pub(crate) const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Bytes of an `iq4_nl` block.
pub(crate) const IQ4_NL_BYTES: usize = 2 + 16;
/// Bytes of an `iq4_xs` super-block.
pub(crate) const IQ4_XS_BYTES: usize = 2 + 2 + 4 + 128;

/// The `ntry` that `quantize_iq4_nl` and `quantize_iq4_xs` pass.
const NTRY: i32 = 7;

/// ggml's `best_index_int8`: the index of the code-book value nearest to
/// `x` by binary search (ties and NaN go to the upper neighbour); the
/// oracle of [`best_index_branchless`], which the quantizers use.
#[cfg(test)]
fn best_index_int8(val: &[i8; 16], x: f32) -> usize {
    let n = val.len();
    if x <= f32::from(val[0]) {
        return 0;
    }
    if x >= f32::from(val[n - 1]) {
        return n - 1;
    }
    let mut ml = 0;
    let mut mu = n - 1;
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < f32::from(val[mav]) {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - f32::from(val[mu - 1]) < f32::from(val[mu]) - x {
        mu - 1
    } else {
        mu
    }
}

/// The block-scale search of ggml's `quantize_row_iq4_nl_impl` for one
/// block of 32 with its weights (`ntry` tries each side): the scalar oracle
/// of the vector search (`kernels::ggml`, `Search::Iq4`).
pub(crate) fn search_block(xb: &[f32], weight: &[f32; 32], ntry: i32, values: &[i8; 16]) -> f32 {
    const BLOCK: usize = 32;
    let v0 = f32::from(values[0]);
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in xb {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    // Σ w·q·x and Σ w·q·q with q the code-book value of id·x.
    let sums = |id: f32| {
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for j in 0..BLOCK {
            let q = f32::from(values[best_index_branchless(values, id * xb[j])]);
            let w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        (sumqx, sumq2)
    };
    let mut d = if ntry > 0 { -max / v0 } else { max / v0 };
    let (sumqx, sumq2) = sums(1.0 / d);
    d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -ntry..=ntry {
        let (sumqx, sumq2) = sums((itry + i32::from(values[0])) as f32 / max);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// [`best_index_int8`] without branches (the codes are data: a binary
/// search on them mispredicts about every other step), for the final
/// requantization: below the first value 0, from the last value (and NaN)
/// 15, else the nearer of the neighbours around `x` (a tie goes up).
#[inline]
fn best_index_branchless(val: &[i8; 16], x: f32) -> usize {
    // mu: the first index whose value exceeds x (1..=15 inside the range).
    let mut mu = 1usize;
    for &v in &val[1..15] {
        mu += usize::from(f32::from(v) <= x);
    }
    let nearer_low = x - f32::from(val[mu - 1]) < f32::from(val[mu]) - x;
    let inside = mu - usize::from(nearer_low);
    if x <= f32::from(val[0]) {
        0
    } else if x >= f32::from(val[15]) || x.is_nan() {
        15
    } else {
        inside
    }
}

/// What `quantize_row_iq4_nl_impl` writes besides the nibbles.
struct Iq4Header {
    /// The f16 super-block scale `dh[0]`.
    d: u16,
    /// `scales_h` (`iq4_xs` only).
    scales_h: u16,
    /// `scales_l` (`iq4_xs` only).
    scales_l: [u8; 4],
}

/// ggml's `quantize_row_iq4_nl_impl` with `block_size` 32 for a
/// super-block `x` of 32 (`iq4_nl`) or 256 (`iq4_xs`) weights; `qw` holds
/// the super-block's importance weights. Writes the nibbles to `q4`.
/// `scales_in`, when given, holds the blocks' scales as the search found
/// them (the vector search): the search is skipped.
fn quantize_iq4_impl(
    x: &[f32],
    qw: Option<&[f32]>,
    ntry: i32,
    values: &[i8; 16],
    q4: &mut [u8],
    scales_in: Option<&[f32]>,
) -> Iq4Header {
    const BLOCK: usize = 32;
    let super_block_size = x.len();
    let nb = super_block_size / BLOCK;
    let mut scales = [0.0f32; 8];
    let mut l = [0u8; 256];
    let mut head = Iq4Header {
        d: super::fp32_to_fp16(0.0),
        scales_h: 0,
        scales_l: [0; 4],
    };

    let mut sigma2 = 0.0f32;
    for &v in x {
        sigma2 += v * v;
    }
    sigma2 *= 2.0 / super_block_size as f32;

    q4[..super_block_size / 2].fill(0);

    let mut max_scale = 0.0f32;
    let mut amax_scale = 0.0f32;
    for ib in 0..nb {
        let xb = &x[ib * BLOCK..(ib + 1) * BLOCK];
        let d = match scales_in {
            Some(sc) => sc[ib],
            None => {
                let mut weight = [0.0f32; BLOCK];
                match qw {
                    Some(qw) => {
                        let qw = &qw[ib * BLOCK..];
                        for j in 0..BLOCK {
                            weight[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
                        }
                    }
                    None => {
                        for j in 0..BLOCK {
                            weight[j] = xb[j] * xb[j];
                        }
                    }
                }
                search_block(xb, &weight, ntry, values)
            }
        };
        scales[ib] = d;
        let abs_d = d.abs();
        if abs_d > amax_scale {
            amax_scale = abs_d;
            max_scale = d;
        }
    }

    if nb > 1 {
        let d = -max_scale / 32.0;
        head.d = super::fp32_to_fp16(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for ib in 0..nb {
            let ls = nearest_int(id * scales[ib]).min(31).max(-32);
            let dl = d * ls as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            let xb = &x[ib * BLOCK..(ib + 1) * BLOCK];
            let lb = &mut l[ib * BLOCK..(ib + 1) * BLOCK];
            for j in 0..BLOCK {
                lb[j] = best_index_branchless(values, idl * xb[j]) as u8;
            }
            let ls = ls + 32;
            let l_l = (ls & 0xF) as u8;
            let l_h = (ls >> 4) as u16;
            if ib % 2 == 0 {
                head.scales_l[ib / 2] = l_l;
            } else {
                head.scales_l[ib / 2] |= l_l << 4;
            }
            head.scales_h |= l_h << (2 * (ib % 8));
        }
    } else {
        head.d = super::fp32_to_fp16(scales[0]);
        if ntry > 0 {
            let id = if scales[0] != 0.0 {
                1.0 / scales[0]
            } else {
                0.0
            };
            for j in 0..super_block_size {
                l[j] = best_index_branchless(values, id * x[j]) as u8;
            }
        }
    }

    for i in 0..super_block_size / 32 {
        for j in 0..16 {
            q4[16 * i + j] = l[32 * i + j] | (l[32 * i + 16 + j] << 4);
        }
    }
    head
}

/// The block scales of a row without an importance matrix, from the
/// vector search on backend `b` (or the scalar one), a chunk at a time:
/// `f(offset, scales)`.
fn with_scales(b: BackendKind, x: &[f32], mut f: impl FnMut(usize, &[f32])) {
    let no_weights = |_: usize, _: &[f32], _: &mut [f32]| {};
    super::kquants::search_chunks(b, Search::Iq4, x, no_weights, |at, scales, _, _| {
        f(at, scales)
    });
}

/// `iq4_nl` of one row (`quantize_iq4_nl`); without an importance matrix
/// the block-scale searches run on backend `b`.
pub(crate) fn quantize_iq4_nl(b: BackendKind, x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let one = |xb: &[f32], qwb: Option<&[f32]>, sc: Option<&[f32]>, yb: &mut [u8]| {
        let head = quantize_iq4_impl(xb, qwb, NTRY, &KVALUES_IQ4NL, &mut yb[2..], sc);
        yb[..2].copy_from_slice(&head.d.to_le_bytes());
    };
    match qw {
        None => with_scales(b, x, |at, scales| {
            for (k, xb) in x[at..at + 32 * scales.len()].chunks_exact(32).enumerate() {
                let i = at / 32 + k;
                let yb = &mut y[IQ4_NL_BYTES * i..IQ4_NL_BYTES * (i + 1)];
                one(xb, None, Some(&scales[k..k + 1]), yb);
            }
        }),
        Some(qw) => {
            for (ib, (xb, yb)) in x
                .chunks_exact(32)
                .zip(y.chunks_exact_mut(IQ4_NL_BYTES))
                .enumerate()
            {
                one(xb, Some(&qw[32 * ib..32 * (ib + 1)]), None, yb);
            }
        }
    }
}

/// `iq4_xs` of one row (`quantize_iq4_xs`); without an importance matrix
/// the block-scale searches run on backend `b`.
pub(crate) fn quantize_iq4_xs(b: BackendKind, x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let one = |xb: &[f32], qwb: Option<&[f32]>, sc: Option<&[f32]>, yb: &mut [u8]| {
        let head = quantize_iq4_impl(xb, qwb, NTRY, &KVALUES_IQ4NL, &mut yb[8..], sc);
        yb[..2].copy_from_slice(&head.d.to_le_bytes());
        yb[2..4].copy_from_slice(&head.scales_h.to_le_bytes());
        yb[4..8].copy_from_slice(&head.scales_l);
    };
    match qw {
        None => with_scales(b, x, |at, scales| {
            for (k, xb) in x[at..at + 32 * scales.len()].chunks_exact(256).enumerate() {
                let i = at / 256 + k;
                let yb = &mut y[IQ4_XS_BYTES * i..IQ4_XS_BYTES * (i + 1)];
                one(xb, None, Some(&scales[8 * k..8 * (k + 1)]), yb);
            }
        }),
        Some(qw) => {
            for (ib, (xb, yb)) in x
                .chunks_exact(256)
                .zip(y.chunks_exact_mut(IQ4_XS_BYTES))
                .enumerate()
            {
                one(xb, Some(&qw[256 * ib..256 * (ib + 1)]), None, yb);
            }
        }
    }
}

/// `dequantize_row_iq4_nl` of one block.
pub(crate) fn dequantize_iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = d * f32::from(KVALUES_IQ4NL[usize::from(q & 0xF)]);
        y[j + 16] = d * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
    }
}

/// `dequantize_row_iq4_xs` of one super-block.
pub(crate) fn dequantize_iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    for ib in 0..8 {
        let ls = i32::from((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xF)
            | (i32::from((scales_h >> (2 * ib)) & 3) << 4);
        let dl = d * (ls - 32) as f32;
        let qs = &b[8 + 16 * ib..8 + 16 * (ib + 1)];
        let y = &mut y[32 * ib..32 * (ib + 1)];
        for j in 0..16 {
            y[j] = dl * f32::from(KVALUES_IQ4NL[usize::from(qs[j] & 0xF)]);
            y[j + 16] = dl * f32::from(KVALUES_IQ4NL[usize::from(qs[j] >> 4)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_branchless_index_equals_the_binary_search() {
        let v = &KVALUES_IQ4NL;
        let mut seed = 0x9e37_79b9u32;
        let mut xs: Vec<f32> = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0];
        for k in -130..=130 {
            // Every integer, every half (the ties) and their neighbours.
            for h in [k as f32, k as f32 + 0.5] {
                xs.extend([
                    h,
                    f32::from_bits(h.to_bits() + 1),
                    f32::from_bits(h.to_bits().max(1) - 1),
                ]);
            }
        }
        for _ in 0..100_000 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            xs.push((seed as f32 / u32::MAX as f32 - 0.5) * 300.0);
        }
        for x in xs {
            assert_eq!(best_index_branchless(v, x), best_index_int8(v, x), "{x}");
        }
    }

    #[test]
    fn best_index_picks_nearest_and_breaks_ties_upward() {
        let v = &KVALUES_IQ4NL;
        assert_eq!(best_index_int8(v, -1000.0), 0);
        assert_eq!(best_index_int8(v, 1000.0), 15);
        assert_eq!(best_index_int8(v, 0.0), 8); // 1 is nearer than -10
        assert_eq!(best_index_int8(v, -4.5), 8); // tie between -10 and 1: upper
        assert_eq!(best_index_int8(v, -4.6), 7);
        assert_eq!(best_index_int8(v, f32::NAN), 15);
        for (i, &k) in v.iter().enumerate() {
            assert_eq!(best_index_int8(v, f32::from(k)), i);
        }
    }
}
