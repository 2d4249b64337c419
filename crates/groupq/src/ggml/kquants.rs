//! The K-quants, super-blocks of 256: `q2_K`, `q3_K`, `q4_K`, `q5_K`,
//! `q6_K` (ggml's `quantize_row_q*_K_ref`, `quantize_row_q*_K_impl` and
//! `dequantize_row_q*_K`).
//!
//! Layouts (byte offsets; f16 little-endian):
//! - `q2_K` (84): scales\[16\] @0 (scale | min << 4), qs\[64\] @16, d @80, dmin @82;
//! - `q3_K` (110): hmask\[32\] @0, qs\[64\] @32, scales\[12\] @96 (6-bit), d @108;
//! - `q4_K` (144): d @0, dmin @2, scales\[12\] @4 (6-bit scales and mins), qs\[128\] @16;
//! - `q5_K` (176): d @0, dmin @2, scales\[12\] @4, qh\[32\] @16, qs\[128\] @48;
//! - `q6_K` (210): ql\[128\] @0, qh\[64\] @128, scales\[16\] @192 (i8), d @208.

use super::search::{
    make_q3_quants, make_qkx2_quants, make_qkx3_quants, make_qp_quants, make_qx_quants,
    nearest_int, GROUP_MAX_EPS,
};
use super::{read_f16, write_f16};
use crate::kernels::ggml::{Search, SearchOut};
use crate::plan::BackendKind;

const QK_K: usize = 256;
/// Bytes of a `q2_K` super-block.
pub(crate) const Q2K_BYTES: usize = QK_K / 16 + QK_K / 4 + 4;
/// Bytes of a `q3_K` super-block.
pub(crate) const Q3K_BYTES: usize = QK_K / 8 + QK_K / 4 + 12 + 2;
/// Bytes of a `q4_K` super-block.
pub(crate) const Q4K_BYTES: usize = 4 + 12 + QK_K / 2;
/// Bytes of a `q5_K` super-block.
pub(crate) const Q5K_BYTES: usize = 4 + 12 + QK_K / 8 + QK_K / 2;
/// Bytes of a `q6_K` super-block.
pub(crate) const Q6K_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;

/// `Σ x²` over a slice, in order.
fn sum_sq(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// The importance weights `qw[l] · sqrt(sigma2 + x[l]²)` of a sub-block
/// into `w`; returns their sum (in order).
fn imatrix_weights_into(xs: &[f32], qw: &[f32], sigma2: f32, w: &mut [f32]) -> f32 {
    for ((w, &x), &q) in w.iter_mut().zip(xs).zip(qw) {
        *w = q * (sigma2 + x * x).sqrt();
    }
    let mut sumw = 0.0f32;
    for &v in w.iter() {
        sumw += v;
    }
    sumw
}

/// Packs 2-bit codes: `qs[j/4 + l] = L[j+l] | L[j+l+32] << 2 | … << 6`.
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8]) {
    for j in (0..QK_K).step_by(128) {
        for i in 0..32 {
            qs[j / 4 + i] =
                l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
}

/// Sub-block `j` of `N` values and its codes, as fixed-size arrays: the
/// requantization loops over them compile to vector code.
#[inline(always)]
fn sub_block<'a, const N: usize, L>(
    x: &'a [f32],
    l: &'a mut [L; QK_K],
    j: usize,
) -> (&'a [f32; N], &'a mut [L; N]) {
    let xs = x[N * j..N * (j + 1)].try_into().expect("a whole sub-block");
    let ls = (&mut l[N * j..N * (j + 1)])
        .try_into()
        .expect("a whole sub-block");
    (xs, ls)
}

/// Values whose sub-block searches run in one call: 8 super-blocks, so
/// the vector search fills whole vectors and its results stay on the stack.
const CHUNK: usize = 8 * QK_K;

/// The reference path's sub-block searches over the super-blocks of `x`
/// (at most [`CHUNK`] values): per sub-block of `kind.len()` values its
/// scale, its minimum (0 for `q6_K`) and its codes. Backend `b`'s vector
/// search where it has one (bit-identical, one sub-block per lane), else
/// the scalar search, one sub-block at a time.
///
/// `weights` holds one weight per value for the weighted kinds (the
/// importance-matrix searches), and is empty otherwise.
#[allow(clippy::too_many_arguments)]
pub(crate) fn search_subblocks(
    b: BackendKind,
    kind: Search,
    x: &[f32],
    weights: &[f32],
    scales: &mut [f32],
    mins: &mut [f32],
    codes: &mut [u8],
) {
    let mut out = SearchOut {
        weights,
        scales,
        mins,
        codes,
    };
    #[cfg(target_arch = "x86_64")]
    if b != BackendKind::Scalar && crate::kernels::ggml_search_on(b, kind, x, &mut out) {
        return;
    }
    let _ = b;
    let n = kind.len();
    for (j, xs) in x.chunks_exact(n).enumerate() {
        let ws = if kind.weighted() {
            &out.weights[n * j..n * (j + 1)]
        } else {
            &[]
        };
        (out.scales[j], out.mins[j]) = search_one(kind, xs, ws, &mut out.codes[n * j..n * (j + 1)]);
    }
}

/// One sub-block of the reference path's search, scalar (ggml's code):
/// `(scale, minimum)`, the codes in `l`.
fn search_one(kind: Search, xs: &[f32], ws: &[f32], l: &mut [u8]) -> (f32, f32) {
    match kind {
        Search::Q4KW => make_qkx3_quants(15, xs, Some(ws), l, -0.9, 0.05, 36, false),
        Search::Q2KW => make_qkx3_quants(3, xs, Some(ws), l, -0.9, 0.05, 36, false),
        Search::Q6KW | Search::Q4_0W | Search::Q5_0W | Search::Q3KW => {
            let nmax = match kind {
                Search::Q6KW => 32,
                Search::Q4_0W => 8,
                Search::Q3KW => 4,
                _ => 16,
            };
            let mut li = [0i8; 32];
            let scale = make_qx_quants(nmax, xs, &mut li[..xs.len()], 1, Some(ws));
            for (d, s) in l.iter_mut().zip(li) {
                *d = s as u8;
            }
            (scale, 0.0)
        }
        Search::Q5KW => make_qkx3_quants(31, xs, Some(ws), l, -0.9, 0.05, 36, false),
        Search::Q2K => {
            let mut weights = [0.0f32; 16];
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            make_qkx2_quants(3, xs, &weights, l, -0.5, 0.1, 15, true)
        }
        Search::Q4K | Search::Q5K => {
            let av_x = (sum_sq(xs) / 32.0).sqrt();
            let mut weights = [0.0f32; 32];
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = av_x + v.abs();
            }
            let (nmax, rmin, nstep) = if kind == Search::Q4K {
                (15, -1.0, 20)
            } else {
                (31, -0.5, 15)
            };
            make_qkx2_quants(nmax, xs, &weights, l, rmin, 0.1, nstep, false)
        }
        Search::Iq4 => {
            let mut weight = [0.0f32; 32];
            for (w, &v) in weight.iter_mut().zip(xs) {
                *w = v * v;
            }
            let scale = super::iq4::search_block(xs, &weight, 7, &super::iq4::KVALUES_IQ4NL);
            (scale, 0.0)
        }
        Search::Q3K => {
            let mut li = [0i8; 16];
            let scale = make_q3_quants(4, xs, &mut li, true);
            for (d, s) in l.iter_mut().zip(li) {
                *d = s as u8;
            }
            (scale, 0.0)
        }
        Search::Q6K => {
            let mut li = [0i8; 16];
            let scale = make_qx_quants(32, xs, &mut li, 1, None);
            for (d, s) in l.iter_mut().zip(li) {
                *d = s as u8;
            }
            (scale, 0.0)
        }
    }
}

/// The sub-block searches of `kind` over a row, [`CHUNK`] values at a time
/// (so that a vector search fills whole vectors and its results stay on
/// the stack): for the weighted kinds `fill(offset, values, weights)`
/// first writes the chunk's weights (it is not called otherwise), then
/// `finish(offset, scales, mins, codes)` takes the chunk's results.
pub(crate) fn search_chunks(
    b: BackendKind,
    kind: Search,
    x: &[f32],
    mut fill: impl FnMut(usize, &[f32], &mut [f32]),
    mut finish: impl FnMut(usize, &[f32], &[f32], &[u8]),
) {
    let mut w = [0.0f32; CHUNK];
    let (mut scales, mut mins) = ([0.0f32; CHUNK / 16], [0.0f32; CHUNK / 16]);
    let mut codes = [0u8; CHUNK];
    for (c, xc) in x.chunks(CHUNK).enumerate() {
        let n = xc.len();
        let subs = n / kind.len();
        let weights: &[f32] = if kind.weighted() {
            fill(c * CHUNK, xc, &mut w[..n]);
            &w[..n]
        } else {
            &[]
        };
        search_subblocks(
            b,
            kind,
            xc,
            weights,
            &mut scales[..subs],
            &mut mins[..subs],
            &mut codes[..n],
        );
        finish(c * CHUNK, &scales[..subs], &mins[..subs], &codes[..n]);
    }
}

/// Runs `finish(super_block, x, scales, mins, codes, y)` on every
/// super-block of a row after [`search_subblocks`] of `kind`, a chunk of
/// super-blocks at a time.
fn by_chunks(
    b: BackendKind,
    kind: Search,
    x: &[f32],
    y: &mut [u8],
    type_size: usize,
    mut finish: impl FnMut(&[f32], &[f32], &[f32], &mut [u8; QK_K], &mut [u8]),
) {
    let per = QK_K / kind.len();
    let no_weights = |_: usize, _: &[f32], _: &mut [f32]| {};
    search_chunks(b, kind, x, no_weights, |at, scales, mins, codes| {
        for (k, xb) in x[at..at + codes.len()].chunks_exact(QK_K).enumerate() {
            let i = at / QK_K + k;
            let mut l = [0u8; QK_K];
            l.copy_from_slice(&codes[QK_K * k..QK_K * (k + 1)]);
            let r = per * k..per * (k + 1);
            let yb = &mut y[type_size * i..type_size * (i + 1)];
            finish(xb, &scales[r.clone()], &mins[r], &mut l, yb);
        }
    });
}

// ---------------------------------------------------------------- q2_K

/// `q2_K` of one row (`quantize_q2_K`).
/// Without an importance matrix the sub-block searches run on backend `b`.
pub(crate) fn quantize_q2_k(b: BackendKind, x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    match qw {
        None => by_chunks(b, Search::Q2K, x, y, Q2K_BYTES, q2_k_ref),
        Some(qw) => weighted_k(b, Search::Q2KW, x, qw, 1.0, |xb, scales, mins, sw, l, i| {
            let yb = &mut y[Q2K_BYTES * i..Q2K_BYTES * (i + 1)];
            q2_k_finish(xb, scales, mins, sw, l, yb);
        }),
    }
}

/// `quantize_row_q2_K_ref` of one super-block after its sub-block
/// searches ([`search_one`] of [`Search::Q2K`]: `scales`, `mins`, codes in
/// `l`).
fn q2_k_ref(x: &[f32], scales: &[f32], mins: &[f32], l: &mut [u8; QK_K], y: &mut [u8]) {
    let q4scale = 15.0f32;

    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..16 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }

    if max_scale > 0.0 {
        let iscale = q4scale / max_scale;
        for j in 0..16 {
            y[j] = nearest_int(iscale * scales[j]) as u8;
        }
        write_f16(y, 80, max_scale / q4scale);
    } else {
        y[..16].fill(0);
        write_f16(y, 80, 0.0);
    }
    if max_min > 0.0 {
        let iscale = q4scale / max_min;
        for j in 0..16 {
            y[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        write_f16(y, 82, max_min / q4scale);
    } else {
        write_f16(y, 82, 0.0);
    }
    q2_k_requantize(x, l, y);
}

/// The end of `quantize_row_q2_K_impl` after the sub-block searches
/// ([`Search::Q2KW`]: `scales`, `mins`, codes in `l`; `sw` the sums of the
/// weights): the 4-bit scales and mins by `make_qp_quants`, then the
/// requantization.
fn q2_k_finish(
    x: &[f32],
    scales: &[f32],
    mins: &[f32],
    sw: &[f32],
    l: &mut [u8; QK_K],
    y: &mut [u8],
) {
    let mut ls = [0u8; 16];
    let mut lm = [0u8; 16];
    let dm = make_qp_quants(15, scales, &mut ls, sw);
    let mm = make_qp_quants(15, mins, &mut lm, sw);
    write_f16(y, 80, dm);
    write_f16(y, 82, mm);
    for j in 0..16 {
        y[j] = ls[j] | (lm[j] << 4);
    }
    q2_k_requantize(x, l, y);
}

/// The common tail of both `q2_K` quantizers: requantize with the stored
/// (f16) scales, then pack.
fn q2_k_requantize(x: &[f32], l: &mut [u8; QK_K], y: &mut [u8]) {
    let dall = read_f16(y, 80);
    let mall = read_f16(y, 82);
    for j in 0..16 {
        let d = dall * f32::from(y[j] & 0xF);
        if d == 0.0 {
            continue;
        }
        let m = mall * f32::from(y[j] >> 4);
        let (xs, ls) = sub_block::<16, _>(x, l, j);
        for ii in 0..16 {
            let q = nearest_int((xs[ii] + m) / d).min(3).max(0);
            ls[ii] = q as u8;
        }
    }
    pack_2bit(l, &mut y[16..80]);
}

/// `dequantize_row_q2_K` of one super-block.
pub(crate) fn dequantize_q2_k(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 80);
    let min = read_f16(b, 82);
    let mut out = 0;
    let mut is = 0;
    for n in (0..QK_K).step_by(128) {
        let q = &b[16 + n / 4..16 + n / 4 + 32];
        for shift in (0..8).step_by(2) {
            for half in 0..2 {
                let sc = b[is];
                is += 1;
                let dl = d * f32::from(sc & 0xF);
                let ml = min * f32::from(sc >> 4);
                for &qv in &q[16 * half..16 * half + 16] {
                    y[out] = dl * f32::from((qv >> shift) & 3) - ml;
                    out += 1;
                }
            }
        }
    }
}

// ---------------------------------------------------------------- q3_K

/// `q3_K` of one row (`quantize_q3_K`).
/// Without an importance matrix the sub-block searches run on backend `b`.
pub(crate) fn quantize_q3_k(b: BackendKind, x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    match qw {
        None => by_chunks(b, Search::Q3K, x, y, Q3K_BYTES, |xb, scales, _, l, yb| {
            let mut li: [i8; QK_K] = std::array::from_fn(|i| l[i] as i8);
            q3_k_ref(xb, scales, &mut li, yb)
        }),
        Some(qw) => weighted_k(b, Search::Q3KW, x, qw, 2.0, |xb, scales, _, sw, l, i| {
            let yb = &mut y[Q3K_BYTES * i..Q3K_BYTES * (i + 1)];
            let mut li: [i8; QK_K] = std::array::from_fn(|k| l[k] as i8);
            q3_k_finish(xb, scales, sw, &mut li, yb);
        }),
    }
}

/// Stores the 6-bit `q3_K` scale code `l` (0..64) of sub-block `j`.
fn q3_k_put_scale(s: &mut [u8], j: usize, l: i32) {
    if j < 8 {
        s[j] = (l & 0xF) as u8;
    } else {
        s[j - 8] |= ((l & 0xF) << 4) as u8;
    }
    s[j % 4 + 8] |= ((l >> 4) << (2 * (j / 4))) as u8;
}

/// The signed 6-bit `q3_K` scale of sub-block `j` (−32..32).
fn q3_k_get_scale(s: &[u8], j: usize) -> i8 {
    let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
    let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    (i32::from(low | (high << 4)) - 32) as i8
}

/// `quantize_row_q3_K_ref` of one super-block after its sub-block
/// searches ([`search_one`] of [`Search::Q3K`]: `scales`, codes plus 4 in
/// `l`).
fn q3_k_ref(x: &[f32], scales: &[f32], l: &mut [i8; QK_K], y: &mut [u8]) {
    let mut max_scale = 0.0f32;
    let mut amax = 0.0f32;
    for j in 0..16 {
        let scale = scales[j].abs();
        if scale > amax {
            amax = scale;
            max_scale = scales[j];
        }
    }
    y[96..108].fill(0);
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for j in 0..16 {
            let lj = i32::from(nearest_int(iscale * scales[j]) as i8);
            q3_k_put_scale(&mut y[96..108], j, lj.min(31).max(-32) + 32);
        }
        write_f16(y, 108, 1.0 / iscale);
    } else {
        write_f16(y, 108, 0.0);
    }
    q3_k_requantize(x, l, y);
}

/// The end of `quantize_row_q3_K_impl` after the sub-block searches
/// ([`Search::Q3KW`]: `scales`, codes plus 4 in `l`; `sw` the sums of the
/// weights): the 6-bit scales by `make_qx_quants`, then the
/// requantization.
fn q3_k_finish(x: &[f32], scales: &[f32], sw: &[f32], l: &mut [i8; QK_K], y: &mut [u8]) {
    let mut ls = [0i8; 16];
    y[96..108].fill(0);
    let d_block = make_qx_quants(32, scales, &mut ls, 1, Some(sw));
    for j in 0..16 {
        q3_k_put_scale(&mut y[96..108], j, i32::from(ls[j]));
    }
    write_f16(y, 108, d_block);
    q3_k_requantize(x, l, y);
}

/// The importance-matrix path of q2_K (σ² factor 1), q3_K, q4_K and q5_K
/// (2): per super-block σ² = factor·Σx²/256, the sub-blocks' weights
/// `qw·sqrt(σ² + x²)` and their sums, the searches of `kind` on backend
/// `b`, then `finish(x, scales, mins, sums, codes, super_block)`.
fn weighted_k(
    b: BackendKind,
    kind: Search,
    x: &[f32],
    qw: &[f32],
    sigma_factor: f32,
    mut finish: impl FnMut(&[f32], &[f32], &[f32], &[f32], &mut [u8; QK_K], usize),
) {
    let mut sw = [0.0f32; CHUNK / 16];
    let sw_cell = std::cell::RefCell::new(&mut sw);
    search_chunks(
        b,
        kind,
        x,
        |at, xc, w| {
            let mut sw = sw_cell.borrow_mut();
            let n = kind.len();
            let per = QK_K / n;
            for (k, xb) in xc.chunks_exact(QK_K).enumerate() {
                let sigma2 = sigma_factor * sum_sq(xb) / QK_K as f32;
                for j in 0..per {
                    let o = QK_K * k + n * j;
                    let (wb, qb) = (&mut w[o..o + n], &qw[at + o..at + o + n]);
                    sw[per * k + j] = imatrix_weights_into(&xb[n * j..n * (j + 1)], qb, sigma2, wb);
                }
            }
        },
        |at, scales, mins, codes| {
            let sw = sw_cell.borrow();
            for (k, xb) in x[at..at + codes.len()].chunks_exact(QK_K).enumerate() {
                let mut l = [0u8; QK_K];
                l.copy_from_slice(&codes[QK_K * k..QK_K * (k + 1)]);
                let per = QK_K / kind.len();
                let r = per * k..per * (k + 1);
                let (s, m) = (&scales[r.clone()], &mins[r.clone()]);
                finish(xb, s, m, &sw[r], &mut l, at / QK_K + k);
            }
        },
    );
}

/// The common tail of both `q3_K` quantizers: requantize with the stored
/// scales, split off the high bits into `hmask`, pack the low bits.
fn q3_k_requantize(x: &[f32], l: &mut [i8; QK_K], y: &mut [u8]) {
    let dall = read_f16(y, 108);
    for j in 0..16 {
        let sc = q3_k_get_scale(&y[96..108], j);
        let d = dall * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        let (xs, ls) = sub_block::<16, _>(x, l, j);
        for ii in 0..16 {
            let q = nearest_int(xs[ii] / d).min(3).max(-4);
            ls[ii] = (q + 4) as i8;
        }
    }

    let (hmask, rest) = y.split_at_mut(32);
    hmask.fill(0);
    // ggml walks the codes with a byte index m (wrapping at 32) and a bit
    // hm (shifting at each wrap): code 32·g + m sets bit g of hmask[m].
    // Branch-free, so that the compiler vectorizes it.
    for g in 0..QK_K / 32 {
        for m in 0..32 {
            let lj = &mut l[32 * g + m];
            let high = u8::from(*lj > 3);
            hmask[m] |= high << g;
            *lj -= 4 * high as i8;
        }
    }
    let lu: [u8; QK_K] = std::array::from_fn(|i| l[i] as u8);
    pack_2bit(&lu, &mut rest[..64]);
}

/// `dequantize_row_q3_K` of one super-block.
pub(crate) fn dequantize_q3_k(b: &[u8], y: &mut [f32]) {
    let d_all = read_f16(b, 108);
    let hm = &b[..32];
    let scales = &b[96..108];
    let mut m = 1u8;
    let mut out = 0;
    let mut is = 0;
    for n in (0..QK_K).step_by(128) {
        let q = &b[32 + n / 4..32 + n / 4 + 32];
        for shift in (0..8).step_by(2) {
            for half in 0..2 {
                let dl = d_all * f32::from(q3_k_get_scale(scales, is));
                is += 1;
                for l in 16 * half..16 * half + 16 {
                    let low = i32::from((q[l] >> shift) & 3);
                    let high = if hm[l] & m != 0 { 0 } else { 4 };
                    y[out] = dl * (low - high) as f32;
                    out += 1;
                }
            }
            m = m.wrapping_shl(1);
        }
    }
}

// ------------------------------------------------------- q4_K and q5_K

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j`.
fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Stores the 6-bit scale `ls` and min `lm` of sub-block `j` (in order
/// j = 0..8, as ggml does).
fn put_scale_min_k4(j: usize, ls: u8, lm: u8, q: &mut [u8]) {
    if j < 4 {
        q[j] = ls;
        q[j + 4] = lm;
    } else {
        q[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
        q[j - 4] |= (ls >> 4) << 6;
        q[j] |= (lm >> 4) << 6;
    }
}

/// `quantize_row_q4_K_ref` and `quantize_row_q5_K_ref` after the
/// sub-block searches ([`search_one`]): writes d, dmin and scales.
fn q45_k_ref(scales: &[f32], mins: &[f32], y: &mut [u8]) {
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        put_scale_min_k4(j, ls, lm, &mut y[4..16]);
    }
    write_f16(y, 0, max_scale / 63.0);
    write_f16(y, 2, max_min / 63.0);
}

/// The end of `quantize_row_q4_K_impl` (`nmax` 15) and
/// `quantize_row_q5_K_impl` (`nmax` 31) after the sub-block searches
/// ([`search_one`] of [`Search::Q4KW`] / [`Search::Q5KW`]: `scales`,
/// `mins`, and `sw` the sums of the weights): the 6-bit scales and mins by
/// `make_qp_quants`, d and dmin.
fn q45_k_scales(nmax: i32, scales: &[f32], mins: &[f32], sw: &[f32], y: &mut [u8]) {
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    let d_block = make_qp_quants(63, scales, &mut ls, sw);
    let m_block = make_qp_quants(63, mins, &mut lm, sw);
    for j in 0..8 {
        // q5_K clamps the codes to 63 here, q4_K does not.
        let (lsj, lmj) = if nmax == 31 {
            (ls[j].min(63), lm[j].min(63))
        } else {
            (ls[j], lm[j])
        };
        put_scale_min_k4(j, lsj, lmj, &mut y[4..16]);
    }
    write_f16(y, 0, d_block);
    write_f16(y, 2, m_block);
}

/// The common requantization of `q4_K`/`q5_K` with the stored scales.
fn q45_k_requantize(nmax: i32, x: &[f32], l: &mut [u8; QK_K], y: &[u8]) {
    let dall = read_f16(y, 0);
    let mall = read_f16(y, 2);
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &y[4..16]);
        let d = dall * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        let dm = mall * f32::from(m);
        let (xs, ls) = sub_block::<32, _>(x, l, j);
        for ii in 0..32 {
            let q = nearest_int((xs[ii] + dm) / d).min(nmax).max(0);
            ls[ii] = q as u8;
        }
    }
}

/// `q4_K` of one row (`quantize_q4_K`).
/// Without an importance matrix the sub-block searches run on backend `b`.
pub(crate) fn quantize_q4_k(b: BackendKind, x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    q45_k_row(b, 15, x, qw, y, Q4K_BYTES, q4_k_pack);
}

/// `q4_K`'s code packing.
fn q4_k_pack(l: &[u8; QK_K], yb: &mut [u8]) {
    let q = &mut yb[16..];
    for j in (0..QK_K).step_by(64) {
        for i in 0..32 {
            q[j / 2 + i] = l[j + i] | (l[j + i + 32] << 4);
        }
    }
}

/// One row of `q4_K` (`nmax` 15) or `q5_K` (`nmax` 31).
fn q45_k_row(
    b: BackendKind,
    nmax: i32,
    x: &[f32],
    qw: Option<&[f32]>,
    y: &mut [u8],
    type_size: usize,
    pack: fn(&[u8; QK_K], &mut [u8]),
) {
    match qw {
        None => {
            let kind = if nmax == 15 { Search::Q4K } else { Search::Q5K };
            by_chunks(b, kind, x, y, type_size, |xb, scales, mins, l, yb| {
                q45_k_ref(scales, mins, yb);
                q45_k_requantize(nmax, xb, l, yb);
                pack(l, yb);
            });
        }
        Some(qw) => {
            let kind = if nmax == 15 {
                Search::Q4KW
            } else {
                Search::Q5KW
            };
            weighted_k(b, kind, x, qw, 2.0, |xb, scales, mins, sw, l, i| {
                let yb = &mut y[type_size * i..type_size * (i + 1)];
                q45_k_scales(nmax, scales, mins, sw, yb);
                q45_k_requantize(nmax, xb, l, yb);
                pack(l, yb);
            })
        }
    }
}

/// `q5_K` of one row (`quantize_q5_K`).
/// Without an importance matrix the sub-block searches run on backend `b`.
pub(crate) fn quantize_q5_k(b: BackendKind, x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    q45_k_row(b, 31, x, qw, y, Q5K_BYTES, q5_k_pack);
}

/// `q5_K`'s code packing.
fn q5_k_pack(l: &[u8; QK_K], yb: &mut [u8]) {
    let (qh, ql) = yb[16..].split_at_mut(32);
    qh.fill(0);
    let mut m1 = 1u8;
    let mut m2 = 2u8;
    for n in (0..QK_K).step_by(64) {
        for j in 0..32 {
            // Branch-free, as in q3_K.
            let (l1, l2) = (l[n + j], l[n + j + 32]);
            let (h1, h2) = (u8::from(l1 > 15), u8::from(l2 > 15));
            qh[j] |= (m1 * h1) | (m2 * h2);
            ql[n / 2 + j] = (l1 - 16 * h1) | ((l2 - 16 * h2) << 4);
        }
        m1 = m1.wrapping_shl(2);
        m2 = m2.wrapping_shl(2);
    }
}

/// `dequantize_row_q4_K` of one super-block.
pub(crate) fn dequantize_q4_k(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    let min = read_f16(b, 2);
    for (k, j) in (0..QK_K).step_by(64).enumerate() {
        let q = &b[16 + j / 2..16 + j / 2 + 32];
        let (sc1, m1) = get_scale_min_k4(2 * k, &b[4..16]);
        let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
        let (sc2, m2) = get_scale_min_k4(2 * k + 1, &b[4..16]);
        let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
        for l in 0..32 {
            y[j + l] = d1 * f32::from(q[l] & 0xF) - m1;
            y[j + 32 + l] = d2 * f32::from(q[l] >> 4) - m2;
        }
    }
}

/// `dequantize_row_q5_K` of one super-block.
pub(crate) fn dequantize_q5_k(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 0);
    let min = read_f16(b, 2);
    let qh = &b[16..48];
    let (mut u1, mut u2) = (1u8, 2u8);
    for (k, j) in (0..QK_K).step_by(64).enumerate() {
        let ql = &b[48 + j / 2..48 + j / 2 + 32];
        let (sc1, m1) = get_scale_min_k4(2 * k, &b[4..16]);
        let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
        let (sc2, m2) = get_scale_min_k4(2 * k + 1, &b[4..16]);
        let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[j + l] = d1 * f32::from((ql[l] & 0xF) + h1) - m1;
            y[j + 32 + l] = d2 * f32::from((ql[l] >> 4) + h2) - m2;
        }
        u1 = u1.wrapping_shl(2);
        u2 = u2.wrapping_shl(2);
    }
}

// ---------------------------------------------------------------- q6_K

/// `q6_K` of one row (`quantize_q6_K`: `quantize_row_q6_K_ref` without an
/// imatrix, `quantize_row_q6_K_impl` with one; they differ only in the
/// weights of the sub-block search).
/// Without an importance matrix the sub-block searches run on backend `b`.
pub(crate) fn quantize_q6_k(b: BackendKind, x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    match qw {
        None => by_chunks(b, Search::Q6K, x, y, Q6K_BYTES, |xb, scales, _, l, yb| {
            q6_k_block(xb, scales, l, yb)
        }),
        Some(qw) => search_chunks(
            b,
            Search::Q6KW,
            x,
            |at, xc, w| w.copy_from_slice(&qw[at..at + xc.len()]),
            |at, scales, _, codes| {
                for (k, xb) in x[at..at + codes.len()].chunks_exact(QK_K).enumerate() {
                    let i = at / QK_K + k;
                    let mut l = [0u8; QK_K];
                    l.copy_from_slice(&codes[QK_K * k..QK_K * (k + 1)]);
                    let yb = &mut y[Q6K_BYTES * i..Q6K_BYTES * (i + 1)];
                    q6_k_block(xb, &scales[16 * k..16 * (k + 1)], &mut l, yb);
                }
            },
        ),
    }
}

/// `quantize_row_q6_K_ref` / `_impl` of one super-block after the
/// sub-block searches (`scales`, codes plus 32 in `l`).
fn q6_k_block(x: &[f32], scales: &[f32], l: &mut [u8; QK_K], y: &mut [u8]) {
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for &scale in scales.iter().take(16) {
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        write_f16(y, 208, 0.0);
        return;
    }
    let iscale = -128.0 / max_scale;
    write_f16(y, 208, 1.0 / iscale);
    for ib in 0..16 {
        y[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as u8;
    }
    let dall = read_f16(y, 208);
    for j in 0..16 {
        let d = dall * f32::from(y[192 + j] as i8);
        if d == 0.0 {
            continue;
        }
        let (xs, ls) = sub_block::<16, _>(x, l, j);
        for ii in 0..16 {
            let q = nearest_int(xs[ii] / d).min(31).max(-32);
            ls[ii] = (q + 32) as u8;
        }
    }
    let lu = l;
    let (ql, qh) = y[..192].split_at_mut(128);
    for j in (0..QK_K).step_by(128) {
        for i in 0..32 {
            let q1 = lu[j + i] & 0xF;
            let q2 = lu[j + i + 32] & 0xF;
            let q3 = lu[j + i + 64] & 0xF;
            let q4 = lu[j + i + 96] & 0xF;
            ql[j / 2 + i] = q1 | (q3 << 4);
            ql[j / 2 + i + 32] = q2 | (q4 << 4);
            qh[j / 4 + i] = (lu[j + i] >> 4)
                | ((lu[j + i + 32] >> 4) << 2)
                | ((lu[j + i + 64] >> 4) << 4)
                | ((lu[j + i + 96] >> 4) << 6);
        }
    }
}

/// `dequantize_row_q6_K` of one super-block.
pub(crate) fn dequantize_q6_k(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b, 208);
    for n in (0..QK_K).step_by(128) {
        let ql = &b[n / 2..n / 2 + 64];
        let qh = &b[128 + n / 4..128 + n / 4 + 32];
        let sc = &b[192 + n / 16..192 + n / 16 + 8];
        let y = &mut y[n..n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = i32::from((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            let s = |k: usize| f32::from(sc[is + k] as i8);
            y[l] = d * s(0) * q1 as f32;
            y[l + 32] = d * s(2) * q2 as f32;
            y[l + 64] = d * s(4) * q3 as f32;
            y[l + 96] = d * s(6) * q4 as f32;
        }
    }
}
