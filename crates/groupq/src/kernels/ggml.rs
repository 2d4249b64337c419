//! ggml's K-quant scale searches, one sub-block per SIMD lane.
//!
//! ggml (llama.cpp) quantizes a K-quant super-block by searching, for each
//! of its sub-blocks, the scale (and minimum) that minimizes a weighted
//! error: `make_qkx2_quants` (q2_K, q4_K, q5_K) tries up to 21 candidate
//! scales, `make_qx_quants` (q6_K) 19. The sub-blocks are independent, so
//! here lane `j` of every vector runs sub-block `j`'s search with exactly
//! the scalar code's operations in its order (no fused multiply-add, the
//! same sequential sums, `nearest_int`'s magic-number rounding, the
//! branches as selects): every lane's result is bit-identical to the
//! scalar search ([`crate::ggml`]'s, the oracle the tests compare with).

#[cfg(target_arch = "x86_64")]
use super::simd::{F32Lanes, Isa};

/// Which search a run of sub-blocks takes, with the weights its type uses
/// without an importance matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Search {
    /// q4_K: 32 values, weights `sqrt(Σx²/32) + |x|`, levels 0..=15,
    /// `make_qkx2_quants(.., -1, 0.1, 20, false)`.
    Q4K,
    /// q5_K: as q4_K with levels 0..=31 and `(-0.5, 0.1, 15)`.
    Q5K,
    /// q2_K: 16 values, weights `|x|`, levels 0..=3, `(-0.5, 0.1, 15)`,
    /// absolute errors.
    Q2K,
    /// q6_K: 16 values, `make_qx_quants(16, 32, x, L, 1, NULL)`.
    Q6K,
    /// q3_K: 16 values, `make_q3_quants(16, 4, x, L, true)`.
    Q3K,
    /// iq4_nl / iq4_xs: 32 values, weights `x²`, the block scale of
    /// `quantize_row_iq4_nl_impl` (`ntry` 7); no codes (the callers
    /// requantize with the final scales).
    Iq4,
    /// q4_K with an importance matrix: given weights, levels 0..=15,
    /// `make_qkx3_quants(32, 15, x, w, L, .., -0.9, 0.05, 36, false)`.
    Q4KW,
    /// q5_K with an importance matrix: as [`Search::Q4KW`], levels 0..=31.
    Q5KW,
    /// q2_K with an importance matrix: 16 values, levels 0..=3,
    /// `make_qkx3_quants(16, 3, x, w, L, .., -0.9, 0.05, 36, false)`.
    Q2KW,
    /// q3_K with an importance matrix: 16 values,
    /// `make_qx_quants(16, 4, x, L, 1, weights)`.
    Q3KW,
    /// q6_K with an importance matrix: 16 values,
    /// `make_qx_quants(16, 32, x, L, 1, weights)`.
    Q6KW,
    /// q4_0 with an importance matrix: 32 values,
    /// `make_qx_quants(32, 8, x, L, 1, weights)`.
    Q4_0W,
    /// q5_0 with an importance matrix: 32 values,
    /// `make_qx_quants(32, 16, x, L, 1, weights)`.
    Q5_0W,
}

impl Search {
    /// Whether the search takes its weights from [`SearchOut::weights`].
    pub fn weighted(self) -> bool {
        matches!(
            self,
            Search::Q4KW
                | Search::Q5KW
                | Search::Q6KW
                | Search::Q4_0W
                | Search::Q5_0W
                | Search::Q2KW
                | Search::Q3KW
        )
    }

    /// Values per sub-block.
    pub fn len(self) -> usize {
        match self {
            Search::Q4K
            | Search::Q5K
            | Search::Iq4
            | Search::Q4KW
            | Search::Q5KW
            | Search::Q4_0W
            | Search::Q5_0W => 32,
            Search::Q2K
            | Search::Q6K
            | Search::Q3K
            | Search::Q6KW
            | Search::Q2KW
            | Search::Q3KW => 16,
        }
    }
}

/// The result of one run: per sub-block its scale, its minimum (`the_min`
/// of `make_qkx2_quants`; 0 for q6_K) and its codes (`L`, q6_K's with the
/// `+ nmax` offset).
pub(crate) struct SearchOut<'a> {
    /// Input: one weight per value for the [`Search::weighted`] kinds
    /// (empty otherwise).
    pub weights: &'a [f32],
    pub scales: &'a mut [f32],
    pub mins: &'a mut [f32],
    pub codes: &'a mut [u8],
}

// Helpers are functions, not closures: a closure does not inherit its
// caller's target features, so the intrinsics inside one may be called out
// of line (q6_K ran 15x slower that way).

#[cfg(target_arch = "x86_64")]
/// `clamp(nearest_int(v), lo, hi)`.
#[inline(always)]
unsafe fn clamped_code<S: Isa>(v: S::F, lo: S::I, hi: S::I) -> S::I {
    S::max_i(lo, S::min_i(hi, S::nearest_int_f(v)))
}

#[cfg(target_arch = "x86_64")]
/// The error of a difference: `|d|` (`use_mad`) or `d²`.
#[inline(always)]
unsafe fn err_of<S: Isa>(d: S::F, use_mad: bool) -> S::F {
    if use_mad {
        S::abs_f(d)
    } else {
        S::mul_f(d, d)
    }
}

#[cfg(target_arch = "x86_64")]
/// `make_qkx2_quants` over lanes: returns `(scale, the_min)`, codes in `l`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn make_qkx2<S: Isa, const N: usize>(
    x: &[S::F; N],
    w: &[S::F; N],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
    l: &mut [S::I; N],
) -> (S::F, S::F) {
    let zero = S::splat_f(0.0);
    let (lo, hi) = (S::splat_i(0), S::splat_i(nmax));
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x = S::mul_f(sum_w, x[0]);
    for i in 1..N {
        min = S::select_f(S::lt_f(x[i], min), x[i], min);
        max = S::select_f(S::gt_f(x[i], max), x[i], max);
        sum_w = S::add_f(sum_w, w[i]);
        sum_x = S::add_f(sum_x, S::mul_f(w[i], x[i]));
    }
    min = S::select_f(S::gt_f(min, zero), zero, min);
    // Lanes with max == min return early in the scalar code: their results
    // are replaced at the end, whatever the steps computed.
    let flat = S::eq_f(max, min);
    let mut iscale = S::div_f(S::splat_f(nmax as f32), S::sub_f(max, min));
    let mut scale = S::div_f(S::splat_f(1.0), iscale);
    let mut best_error = zero;
    for i in 0..N {
        let li = clamped_code::<S>(S::mul_f(iscale, S::sub_f(x[i], min)), lo, hi);
        l[i] = li;
        let diff = S::sub_f(S::add_f(S::mul_f(scale, S::i_to_f(li)), min), x[i]);
        best_error = S::add_f(best_error, S::mul_f(w[i], err_of::<S>(diff, use_mad)));
    }
    if nstep >= 1 {
        let mut laux = [lo; N];
        for is in 0..=nstep {
            // (rmin + rdelta*is + nmax) / (max - min), with the minimum as
            // the steps so far left it.
            let c = rmin + rdelta * is as f32 + nmax as f32;
            iscale = S::div_f(S::splat_f(c), S::sub_f(max, min));
            let (mut sum_l, mut sum_l2, mut sum_xl) = (zero, zero, zero);
            for i in 0..N {
                let li = clamped_code::<S>(S::mul_f(iscale, S::sub_f(x[i], min)), lo, hi);
                laux[i] = li;
                let lf = S::i_to_f(li);
                let wl = S::mul_f(w[i], lf);
                sum_l = S::add_f(sum_l, wl);
                sum_l2 = S::add_f(sum_l2, S::mul_f(wl, lf));
                sum_xl = S::add_f(sum_xl, S::mul_f(wl, x[i]));
            }
            let d = S::sub_f(S::mul_f(sum_w, sum_l2), S::mul_f(sum_l, sum_l));
            let solved = S::gt_f(d, zero);
            let num_scale = S::sub_f(S::mul_f(sum_w, sum_xl), S::mul_f(sum_x, sum_l));
            let num_min = S::sub_f(S::mul_f(sum_l2, sum_x), S::mul_f(sum_l, sum_xl));
            let mut this_scale = S::div_f(num_scale, d);
            let mut this_min = S::div_f(num_min, d);
            let positive = S::gt_f(this_min, zero);
            this_min = S::select_f(positive, zero, this_min);
            this_scale = S::select_f(positive, S::div_f(sum_xl, sum_l2), this_scale);
            let mut cur_error = zero;
            for i in 0..N {
                let fitted = S::add_f(S::mul_f(this_scale, S::i_to_f(laux[i])), this_min);
                cur_error = S::add_f(
                    cur_error,
                    S::mul_f(w[i], err_of::<S>(S::sub_f(fitted, x[i]), use_mad)),
                );
            }
            let better = S::and_m(solved, S::lt_f(cur_error, best_error));
            for i in 0..N {
                l[i] = S::select_i(better, laux[i], l[i]);
            }
            best_error = S::select_f(better, cur_error, best_error);
            scale = S::select_f(better, this_scale, scale);
            min = S::select_f(better, this_min, min);
        }
    }
    for li in l.iter_mut() {
        *li = S::select_i(flat, lo, *li);
    }
    // -min exactly as C negates (-(+0) is -0): q4_1/q5_1 store it as is.
    (
        S::select_f(flat, zero, scale),
        S::mul_f(min, S::splat_f(-1.0)),
    )
}

#[cfg(target_arch = "x86_64")]
/// `make_qx_quants(N, nmax, x, L, 1, weights)` over lanes (weights `x²`
/// when none are given): returns the scale, codes plus `nmax` in `l`.
#[inline(always)]
unsafe fn make_qx1<S: Isa, const N: usize>(
    x: &[S::F; N],
    weights: Option<&[S::F; N]>,
    nmax: i32,
    l: &mut [S::I; N],
) -> S::F {
    let zero = S::splat_f(0.0);
    let (mut max, mut amax) = (zero, zero);
    for xi in x {
        let ax = S::abs_f(*xi);
        let larger = S::gt_f(ax, amax);
        amax = S::select_f(larger, ax, amax);
        max = S::select_f(larger, *xi, max);
    }
    let all_zero = S::lt_f(amax, S::splat_f(1e-15));
    let mut w = [zero; N];
    for i in 0..N {
        w[i] = match weights {
            Some(ws) => ws[i],
            None => S::mul_f(x[i], x[i]),
        };
    }
    #[inline(always)]
    unsafe fn sums<S: Isa, const N: usize>(
        x: &[S::F; N],
        w: &[S::F; N],
        nmax: i32,
        iscale: S::F,
        l: &mut [S::I; N],
    ) -> (S::F, S::F) {
        let (lo, hi) = (S::splat_i(-nmax), S::splat_i(nmax - 1));
        let (mut sumlx, mut suml2) = (S::splat_f(0.0), S::splat_f(0.0));
        for i in 0..N {
            let li = clamped_code::<S>(S::mul_f(iscale, x[i]), lo, hi);
            l[i] = li;
            let lf = S::i_to_f(li);
            sumlx = S::add_f(sumlx, S::mul_f(S::mul_f(w[i], x[i]), lf));
            suml2 = S::add_f(suml2, S::mul_f(S::mul_f(w[i], lf), lf));
        }
        (sumlx, suml2)
    }
    let (sumlx, suml2) = sums::<S, N>(x, &w, nmax, S::div_f(S::splat_f(-(nmax as f32)), max), l);
    // C's `suml2 ? sumlx/suml2 : 0` (NaN counts as true).
    let mut scale = S::select_f(S::eq_f(suml2, zero), zero, S::div_f(sumlx, suml2));
    let mut best = S::mul_f(scale, sumlx);
    let mut laux = [S::splat_i(0); N];
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let c = -(nmax as f32 + 0.1f32 * is as f32);
        let (sumlx, suml2) = sums::<S, N>(x, &w, nmax, S::div_f(S::splat_f(c), max), &mut laux);
        let better = S::and_m(
            S::gt_f(suml2, zero),
            S::gt_f(S::mul_f(sumlx, sumlx), S::mul_f(best, suml2)),
        );
        for i in 0..N {
            l[i] = S::select_i(better, laux[i], l[i]);
        }
        scale = S::select_f(better, S::div_f(sumlx, suml2), scale);
        best = S::select_f(better, S::mul_f(scale, sumlx), best);
    }
    let offset = S::splat_i(nmax);
    for li in l.iter_mut() {
        *li = S::select_i(all_zero, S::splat_i(0), S::add_i(*li, offset));
    }
    S::select_f(all_zero, zero, scale)
}

/// `make_q3_quants(N, nmax, x, L, true)` over lanes: returns the scale,
/// codes plus `nmax` in `l`. The scalar code stops its five passes early
/// once a pass changes nothing; a lane that runs on (because another lane
/// changed) repeats that pass on the same state and so changes nothing
/// either.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn make_q3<S: Isa, const N: usize>(x: &[S::F; N], nmax: i32, l: &mut [S::I; N]) -> S::F {
    let zero = S::splat_f(0.0);
    let (lo, hi) = (S::splat_i(-nmax), S::splat_i(nmax - 1));
    let (mut max, mut amax) = (zero, zero);
    for xi in x {
        let ax = S::abs_f(*xi);
        let larger = S::gt_f(ax, amax);
        amax = S::select_f(larger, ax, amax);
        max = S::select_f(larger, *xi, max);
    }
    let all_zero = S::lt_f(amax, S::splat_f(1e-15));
    let iscale = S::div_f(S::splat_f(-(nmax as f32)), max);
    let mut wx = [zero; N];
    let mut w = [zero; N];
    let (mut sumlx, mut suml2) = (zero, zero);
    for i in 0..N {
        let li = clamped_code::<S>(S::mul_f(iscale, x[i]), lo, hi);
        l[i] = li;
        w[i] = S::mul_f(x[i], x[i]);
        wx[i] = S::mul_f(w[i], x[i]);
        let lf = S::i_to_f(li);
        sumlx = S::add_f(sumlx, S::mul_f(wx[i], lf));
        suml2 = S::add_f(suml2, S::mul_f(S::mul_f(w[i], lf), lf));
    }
    let (one, none) = (S::splat_i(1), S::splat_i(0));
    for _ in 0..5 {
        let mut changed = none;
        for i in 0..N {
            let li = S::i_to_f(l[i]);
            let slx0 = S::sub_f(sumlx, S::mul_f(wx[i], li));
            let sl20 = S::sub_f(suml2, S::mul_f(S::mul_f(w[i], li), li));
            let new_l = clamped_code::<S>(S::div_f(S::mul_f(x[i], sl20), slx0), lo, hi);
            let nl = S::i_to_f(new_l);
            let slx = S::add_f(slx0, S::mul_f(wx[i], nl));
            let sl2 = S::add_f(sl20, S::mul_f(S::mul_f(w[i], nl), nl));
            // slx0 > 0, the code changes, sl2 > 0 and the error shrinks.
            let accept = S::and_m(
                S::and_m(
                    S::gt_f(slx0, zero),
                    S::gt_f(S::abs_f(S::sub_f(nl, li)), zero),
                ),
                S::and_m(
                    S::gt_f(sl2, zero),
                    S::gt_f(
                        S::mul_f(S::mul_f(slx, slx), suml2),
                        S::mul_f(S::mul_f(sumlx, sumlx), sl2),
                    ),
                ),
            );
            l[i] = S::select_i(accept, new_l, l[i]);
            sumlx = S::select_f(accept, slx, sumlx);
            suml2 = S::select_f(accept, sl2, suml2);
            changed = S::or_i(changed, S::select_i(accept, one, none));
        }
        // Every lane's pass changed nothing: so would every later one.
        if !S::any_i(changed) {
            break;
        }
    }
    let offset = S::splat_i(nmax);
    for li in l.iter_mut() {
        *li = S::select_i(all_zero, S::splat_i(0), S::add_i(*li, offset));
    }
    let scale = S::select_f(S::gt_f(suml2, zero), S::div_f(sumlx, suml2), zero);
    S::select_f(all_zero, zero, scale)
}

/// `iq4_nl`'s code book (ggml's `kvalues_iq4nl`) as floats.
#[cfg(target_arch = "x86_64")]
const IQ4_VALUES: [f32; 16] = [
    -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0, 1.0, 13.0, 25.0, 38.0, 53.0, 69.0,
    89.0, 113.0,
];

/// The code-book value `best_index_int8` picks for `al`, without branches:
/// at most the first value (`al ≤ −127`), at least the last (`al ≥ 113`,
/// and NaN), else the nearer of the largest value `≤ al` and the smallest
/// value `> al` (a tie goes up), as ggml's binary search finds them.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn iq4_nearest<S: Isa>(al: S::F) -> S::F {
    let v = |k: usize| S::splat_f(IQ4_VALUES[k]);
    let mut lo = v(0);
    for k in 1..15 {
        lo = S::select_f(S::lt_f(al, v(k)), lo, v(k));
    }
    let mut hi = v(15);
    for k in (1..15).rev() {
        hi = S::select_f(S::lt_f(al, v(k)), v(k), hi);
    }
    let q = S::select_f(S::lt_f(S::sub_f(al, lo), S::sub_f(hi, al)), lo, hi);
    // al ≤ −127 ⇔ al < the float after −127; al ≥ 113 ⇔ al > the float
    // before 113 (both false for NaN, as in ggml).
    let q = S::select_f(
        S::lt_f(al, S::splat_f(f32::from_bits(0xC2FD_FFFF))),
        v(0),
        q,
    );
    S::select_f(
        S::gt_f(al, S::splat_f(f32::from_bits(0x42E1_FFFF))),
        v(15),
        q,
    )
}

/// `Σ (w·q)·x` and `Σ (w·q)·q` with `q` the code-book value of `id·x`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn iq4_sums<S: Isa, const N: usize>(x: &[S::F; N], w: &[S::F; N], id: S::F) -> (S::F, S::F) {
    let (mut sumqx, mut sumq2) = (S::splat_f(0.0), S::splat_f(0.0));
    for i in 0..N {
        let q = iq4_nearest::<S>(S::mul_f(id, x[i]));
        let wq = S::mul_f(w[i], q);
        sumqx = S::add_f(sumqx, S::mul_f(wq, x[i]));
        sumq2 = S::add_f(sumq2, S::mul_f(wq, q));
    }
    (sumqx, sumq2)
}

/// The block scale of ggml's `quantize_row_iq4_nl_impl` (weights `x²`,
/// `ntry` 7) over lanes: 0 for blocks whose largest magnitude is under
/// `GROUP_MAX_EPS`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn iq4_scale<S: Isa, const N: usize>(x: &[S::F; N]) -> S::F {
    let zero = S::splat_f(0.0);
    let mut w = [zero; N];
    let (mut amax, mut max) = (zero, zero);
    for i in 0..N {
        w[i] = S::mul_f(x[i], x[i]);
        let ax = S::abs_f(x[i]);
        let larger = S::gt_f(ax, amax);
        amax = S::select_f(larger, ax, amax);
        max = S::select_f(larger, x[i], max);
    }
    let small = S::lt_f(amax, S::splat_f(1e-15));
    // d = -max / values[0]; id = 1 / d.
    let d0 = S::div_f(S::mul_f(max, S::splat_f(-1.0)), S::splat_f(IQ4_VALUES[0]));
    let (sumqx, sumq2) = iq4_sums::<S, N>(x, &w, S::div_f(S::splat_f(1.0), d0));
    let mut d = S::select_f(S::gt_f(sumq2, zero), S::div_f(sumqx, sumq2), zero);
    let mut best = S::mul_f(d, sumqx);
    for itry in -7i32..=7 {
        let id = S::div_f(S::splat_f((itry - 127) as f32), max);
        let (sumqx, sumq2) = iq4_sums::<S, N>(x, &w, id);
        let better = S::and_m(
            S::gt_f(sumq2, zero),
            S::gt_f(S::mul_f(sumqx, sumqx), S::mul_f(best, sumq2)),
        );
        d = S::select_f(better, S::div_f(sumqx, sumq2), d);
        best = S::select_f(better, S::mul_f(d, sumqx), best);
    }
    S::select_f(small, zero, d)
}

#[cfg(target_arch = "x86_64")]
/// Element `i` of sub-blocks `first..first + LANES` of `src` (`N` values
/// each) in lane order, vector `i` of the result; lanes past `count`
/// repeat sub-block 0.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn gather<S: Isa, const N: usize>(src: &[f32], first: usize, count: usize) -> [S::F; N]
where
    f32: F32Lanes<S>,
{
    let mut buf = [0f32; 16];
    let mut v = [S::splat_f(0.0); N];
    for (i, vi) in v.iter_mut().enumerate() {
        for (lane, b) in buf.iter_mut().enumerate().take(S::LANES) {
            let j = if first + lane < count {
                first + lane
            } else {
                0
            };
            *b = src[N * j + i];
        }
        *vi = <f32 as F32Lanes<S>>::load(buf.as_ptr());
    }
    v
}

/// One vector of `LANES` sub-blocks (`first..`, the lanes past `count`
/// repeating sub-block 0, their results dropped) through `kind`'s search.
#[inline(always)]
unsafe fn lanes<S: Isa, const N: usize>(
    kind: Search,
    x: &[f32],
    first: usize,
    count: usize,
    out: &mut SearchOut<'_>,
) where
    f32: F32Lanes<S>,
{
    let xs = gather::<S, N>(x, first, count);
    let ws = if kind.weighted() {
        gather::<S, N>(out.weights, first, count)
    } else {
        [S::splat_f(0.0); N]
    };
    let mut l = [S::splat_i(0); N];
    let (scale, min) = match kind {
        Search::Q4KW => make_qkx2::<S, N>(&xs, &ws, 15, -0.9, 0.05, 36, false, &mut l),
        Search::Q5KW => make_qkx2::<S, N>(&xs, &ws, 31, -0.9, 0.05, 36, false, &mut l),
        Search::Q6K => (make_qx1::<S, N>(&xs, None, 32, &mut l), S::splat_f(0.0)),
        Search::Q6KW => (
            make_qx1::<S, N>(&xs, Some(&ws), 32, &mut l),
            S::splat_f(0.0),
        ),
        Search::Q4_0W => (make_qx1::<S, N>(&xs, Some(&ws), 8, &mut l), S::splat_f(0.0)),
        Search::Q3KW => (make_qx1::<S, N>(&xs, Some(&ws), 4, &mut l), S::splat_f(0.0)),
        Search::Q2KW => make_qkx2::<S, N>(&xs, &ws, 3, -0.9, 0.05, 36, false, &mut l),
        Search::Q5_0W => (
            make_qx1::<S, N>(&xs, Some(&ws), 16, &mut l),
            S::splat_f(0.0),
        ),
        Search::Q3K => (make_q3::<S, N>(&xs, 4, &mut l), S::splat_f(0.0)),
        Search::Iq4 => (iq4_scale::<S, N>(&xs), S::splat_f(0.0)),
        Search::Q2K => {
            let mut w = [S::splat_f(0.0); N];
            for i in 0..N {
                w[i] = S::abs_f(xs[i]);
            }
            make_qkx2::<S, N>(&xs, &w, 3, -0.5, 0.1, 15, true, &mut l)
        }
        Search::Q4K | Search::Q5K => {
            let mut sum_x2 = S::splat_f(0.0);
            for v in &xs {
                sum_x2 = S::add_f(sum_x2, S::mul_f(*v, *v));
            }
            let av_x = S::sqrt_f(S::div_f(sum_x2, S::splat_f(N as f32)));
            let mut w = [S::splat_f(0.0); N];
            for i in 0..N {
                w[i] = S::add_f(av_x, S::abs_f(xs[i]));
            }
            if kind == Search::Q4K {
                make_qkx2::<S, N>(&xs, &w, 15, -1.0, 0.1, 20, false, &mut l)
            } else {
                make_qkx2::<S, N>(&xs, &w, 31, -0.5, 0.1, 15, false, &mut l)
            }
        }
    };
    let keep = S::LANES.min(count - first);
    let mut buf = [0f32; 16];
    <f32 as F32Lanes<S>>::store(buf.as_mut_ptr(), scale);
    out.scales[first..first + keep].copy_from_slice(&buf[..keep]);
    <f32 as F32Lanes<S>>::store(buf.as_mut_ptr(), min);
    out.mins[first..first + keep].copy_from_slice(&buf[..keep]);
    let mut ib = [0i32; 16];
    for (i, li) in l.iter().enumerate() {
        S::store_i(ib.as_mut_ptr().cast(), *li);
        for (lane, &v) in ib.iter().enumerate().take(keep) {
            out.codes[N * (first + lane) + i] = v as u8;
        }
    }
}

#[cfg(target_arch = "x86_64")]
/// Every sub-block of `x` (`kind.len()` values each) through `kind`'s
/// search, `LANES` at a time. `out`'s slices hold one entry per sub-block
/// (codes: one per value).
///
/// # Safety
/// The CPU has `S`'s features. `x.len()` is a multiple of `kind.len()`
/// and `out` has room for every sub-block (the entry points check both).
#[inline(always)]
pub(crate) unsafe fn search<S: Isa>(kind: Search, x: &[f32], out: &mut SearchOut<'_>)
where
    f32: F32Lanes<S>,
{
    let count = x.len() / kind.len();
    for first in (0..count).step_by(S::LANES) {
        match kind.len() {
            32 => lanes::<S, 32>(kind, x, first, count, out),
            _ => lanes::<S, 16>(kind, x, first, count, out),
        }
    }
}

/// The codes of one legacy block (32 values) as ggml's reference code
/// computes them: `t = (int)((x[j] - sub) * id + add)` (C's truncating
/// conversion, `i32::MIN` for NaN and out-of-range values), then either
/// `MIN(clamp, (int8_t)t)` or, without `clamp`, the low byte of `t`.
/// Four values at a time with SSE2 on x86-64 (`cvttps2dq` is exactly that
/// conversion), one at a time elsewhere.
#[inline]
pub(crate) fn legacy_codes(
    xb: &[f32; 32],
    sub: f32,
    id: f32,
    add: f32,
    clamp: Option<i8>,
) -> [u8; 32] {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE2 is part of the x86-64 baseline; the loads and stores
        // stay inside `xb` and the local arrays (8 × 4 values of 32).
        unsafe { legacy_codes_sse2(xb, sub, id, add, clamp) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    legacy_codes_scalar(xb, sub, id, add, clamp)
}

/// C's `(int)f` as x86-64 computes it (`cvttss2si`): truncation toward
/// zero, `i32::MIN` for NaN and values out of range.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn c_trunc(f: f32) -> i32 {
    if f > -2_147_483_904.0 && f < 2_147_483_648.0 {
        f as i32
    } else {
        i32::MIN
    }
}

/// [`legacy_codes`], one value at a time (the oracle of the tests).
#[cfg(any(test, not(target_arch = "x86_64")))]
fn legacy_codes_scalar(xb: &[f32; 32], sub: f32, id: f32, add: f32, clamp: Option<i8>) -> [u8; 32] {
    let mut l = [0u8; 32];
    for (q, &v) in l.iter_mut().zip(xb) {
        let t = c_trunc((v - sub) * id + add);
        *q = match clamp {
            Some(c) => (t as i8).min(c) as u8,
            None => t as u8,
        };
    }
    l
}

/// [`legacy_codes`] with SSE2.
///
/// # Safety
/// The CPU has SSE2 (every x86-64 CPU does).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn legacy_codes_sse2(
    xb: &[f32; 32],
    sub: f32,
    id: f32,
    add: f32,
    clamp: Option<i8>,
) -> [u8; 32] {
    use std::arch::x86_64::*;
    let (vsub, vid, vadd) = (_mm_set1_ps(sub), _mm_set1_ps(id), _mm_set1_ps(add));
    let low = _mm_set1_epi32(0xFF);
    let mut out = [0u8; 32];
    let mut t = [_mm_setzero_si128(); 8];
    for (k, tk) in t.iter_mut().enumerate() {
        let v = _mm_loadu_ps(xb.as_ptr().add(4 * k));
        let q = _mm_cvttps_epi32(_mm_add_ps(_mm_mul_ps(_mm_sub_ps(v, vsub), vid), vadd));
        *tk = match clamp {
            Some(c) => {
                // (int8_t)t: the low byte, sign-extended; then MIN(c, ·).
                let s = _mm_srai_epi32(_mm_slli_epi32(q, 24), 24);
                let c = _mm_set1_epi32(i32::from(c));
                let gt = _mm_cmpgt_epi32(s, c);
                _mm_and_si128(
                    _mm_or_si128(_mm_and_si128(gt, c), _mm_andnot_si128(gt, s)),
                    low,
                )
            }
            None => _mm_and_si128(q, low),
        };
    }
    // Every lane is 0..=255: the packs do not saturate.
    for k in 0..2 {
        let a = _mm_packs_epi32(t[4 * k], t[4 * k + 1]);
        let b = _mm_packs_epi32(t[4 * k + 2], t[4 * k + 3]);
        _mm_storeu_si128(out.as_mut_ptr().add(16 * k).cast(), _mm_packus_epi16(a, b));
    }
    out
}

/// The codes of one `q8_0` block: the low byte of `(int)roundf(x[j] * id)`
/// (C's `roundf`, half away from zero; `i32::MIN` for NaN and values out
/// of range), four at a time with SSE2 on x86-64.
#[inline]
pub(crate) fn q8_0_codes(xb: &[f32; 32], id: f32) -> [u8; 32] {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE2 is part of the x86-64 baseline; the loads and stores
        // stay inside `xb` and `out` (8 × 4 values of 32).
        unsafe { q8_0_codes_sse2(xb, id) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    q8_0_codes_scalar(xb, id)
}

/// [`q8_0_codes`], one value at a time (the oracle of the tests).
#[cfg(any(test, not(target_arch = "x86_64")))]
fn q8_0_codes_scalar(xb: &[f32; 32], id: f32) -> [u8; 32] {
    let mut l = [0u8; 32];
    for (q, &v) in l.iter_mut().zip(xb) {
        *q = c_trunc((v * id).round()) as u8;
    }
    l
}

/// [`q8_0_codes`] with SSE2: `t = trunc(v)`, then one step away from zero
/// where `|v − t| ≥ 0.5` (the difference is exact: `t` and `v` share their
/// leading bits), except where the conversion failed (`i32::MIN`).
///
/// # Safety
/// The CPU has SSE2 (every x86-64 CPU does).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn q8_0_codes_sse2(xb: &[f32; 32], id: f32) -> [u8; 32] {
    use std::arch::x86_64::*;
    let vid = _mm_set1_ps(id);
    let half = _mm_set1_ps(0.5);
    let abs = _mm_castsi128_ps(_mm_set1_epi32(0x7FFF_FFFF));
    let min = _mm_set1_epi32(i32::MIN);
    let low = _mm_set1_epi32(0xFF);
    let mut t = [_mm_setzero_si128(); 8];
    for (k, tk) in t.iter_mut().enumerate() {
        let v = _mm_mul_ps(_mm_loadu_ps(xb.as_ptr().add(4 * k)), vid);
        let q = _mm_cvttps_epi32(v);
        let diff = _mm_and_ps(_mm_sub_ps(v, _mm_cvtepi32_ps(q)), abs);
        let up = _mm_andnot_si128(
            _mm_cmpeq_epi32(q, min),
            _mm_castps_si128(_mm_cmpge_ps(diff, half)),
        );
        // +1 for positive v, −1 for negative: (v < 0 ? -1 : 1) & up.
        let neg = _mm_castps_si128(_mm_cmplt_ps(v, _mm_setzero_ps()));
        let step = _mm_and_si128(up, _mm_or_si128(neg, _mm_set1_epi32(1)));
        *tk = _mm_and_si128(_mm_add_epi32(q, step), low);
    }
    let mut out = [0u8; 32];
    for k in 0..2 {
        let a = _mm_packs_epi32(t[4 * k], t[4 * k + 1]);
        let b = _mm_packs_epi32(t[4 * k + 2], t[4 * k + 3]);
        _mm_storeu_si128(out.as_mut_ptr().add(16 * k).cast(), _mm_packus_epi16(a, b));
    }
    out
}

/// The largest magnitude in a block of 32 and the first element of that
/// magnitude, as ggml's scan `if (amax < fabsf(v)) { amax = fabsf(v); max =
/// v; }` leaves them (NaN never wins; `(0, +0)` when every magnitude is 0).
/// The largest non-NaN magnitude does not depend on the order it is found
/// in, so SSE2 finds it four lanes at a time (`maxps` keeps its second
/// operand when the first is NaN), then the first element of that
/// magnitude.
#[inline]
pub(crate) fn block_abs_max(xb: &[f32; 32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of the x86-64 baseline; the loads stay inside
    // `xb` (8 × 4 values of 32).
    let amax = unsafe {
        use std::arch::x86_64::*;
        let mask = _mm_castsi128_ps(_mm_set1_epi32(0x7FFF_FFFF));
        let mut acc = _mm_setzero_ps();
        for k in 0..8 {
            let a = _mm_and_ps(_mm_loadu_ps(xb.as_ptr().add(4 * k)), mask);
            acc = _mm_max_ps(a, acc);
        }
        // The lanes hold no NaN: the reduction's order does not matter.
        let acc = _mm_max_ps(acc, _mm_movehl_ps(acc, acc));
        let acc = _mm_max_ps(acc, _mm_shuffle_ps(acc, acc, 1));
        _mm_cvtss_f32(acc)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let amax = xb
        .iter()
        .fold(0.0f32, |m, v| if m < v.abs() { v.abs() } else { m });
    if amax > 0.0 {
        let max = xb.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0);
        (amax, max)
    } else {
        (0.0, 0.0)
    }
}

/// ggml's `min`/`max` scan of a block of 32 (`if (v < min) min = v;` and
/// `if (v > max) max = v;` from `f32::MAX` / `-f32::MAX`; NaN never wins), four
/// lanes at a time with SSE2. It equals the scan but for which zero it
/// keeps when both `+0.0` and `-0.0` are present: when an extremum is 0,
/// the scan itself runs.
#[inline]
pub(crate) fn block_min_max(xb: &[f32; 32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE2 is part of the x86-64 baseline; the loads stay
        // inside `xb` (8 × 4 values of 32).
        let (min, max) = unsafe {
            use std::arch::x86_64::*;
            let mut lo = _mm_set1_ps(f32::MAX);
            let mut hi = _mm_set1_ps(-f32::MAX);
            for k in 0..8 {
                let v = _mm_loadu_ps(xb.as_ptr().add(4 * k));
                // minps/maxps keep the second operand when the first is NaN.
                lo = _mm_min_ps(v, lo);
                hi = _mm_max_ps(v, hi);
            }
            let lo = _mm_min_ps(lo, _mm_movehl_ps(lo, lo));
            let lo = _mm_min_ps(lo, _mm_shuffle_ps(lo, lo, 1));
            let hi = _mm_max_ps(hi, _mm_movehl_ps(hi, hi));
            let hi = _mm_max_ps(hi, _mm_shuffle_ps(hi, hi, 1));
            (_mm_cvtss_f32(lo), _mm_cvtss_f32(hi))
        };
        if min != 0.0 && max != 0.0 {
            return (min, max);
        }
    }
    // The scan, in ggml's order.
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            6 => -20.0f32..20.0,
            // Exact halves and their neighbours: the rounding ties.
            2 => (-64i32..64).prop_map(|k| k as f32 * 0.5),
            2 => (-64i32..64, prop::bool::ANY).prop_map(|(k, up)| {
                let h = k as f32 * 0.5;
                if up { f32::from_bits(h.to_bits() + 1) } else { f32::from_bits(h.to_bits().saturating_sub(1)) }
            }),
            1 => prop::sample::select(vec![
                0.0f32, -0.0, f32::MAX, -f32::MAX, f32::MIN_POSITIVE, 1e-40, -1e-40,
                f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 2147483520.0, -2147483648.0,
                2147483648.0, -2147483904.0, 8388608.5, 8388607.5, 127.5, -127.5, 255.5,
            ]),
        ]
    }

    fn block() -> impl Strategy<Value = [f32; 32]> {
        prop::collection::vec(value(), 32).prop_map(|v| v.try_into().unwrap())
    }

    fn scale() -> impl Strategy<Value = f32> {
        prop_oneof![
            4 => -2.0f32..2.0,
            1 => prop::sample::select(vec![0.0f32, -0.0, 1.0, 1e30, -1e-30, f32::INFINITY, f32::NAN]),
        ]
    }

    #[test]
    fn c_trunc_is_cvttss2si() {
        assert_eq!(c_trunc(16.9), 16);
        assert_eq!(c_trunc(-0.9), 0);
        assert_eq!(c_trunc(f32::NAN), i32::MIN);
        assert_eq!(c_trunc(3e9), i32::MIN);
        assert_eq!(c_trunc(-2_147_483_648.0), i32::MIN);
        assert_eq!(c_trunc(-2_147_483_904.0), i32::MIN);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn legacy_codes_equal_the_scalar_formula(
            xb in block(), sub in value(), id in scale(),
            add in prop::sample::select(vec![0.5f32, 8.5, 16.5]),
            clamp in prop::sample::select(vec![None, Some(15i8), Some(31)]),
        ) {
            prop_assert_eq!(
                legacy_codes(&xb, sub, id, add, clamp),
                legacy_codes_scalar(&xb, sub, id, add, clamp)
            );
        }

        #[test]
        fn q8_0_codes_equal_the_scalar_formula(xb in block(), id in scale()) {
            prop_assert_eq!(q8_0_codes(&xb, id), q8_0_codes_scalar(&xb, id));
        }
    }
}
