//! The vector kernels, written once over an instruction set ([`Isa`]).
//!
//! Each instruction-set file (`sse41.rs`, `avx2.rs`, `avx512.rs`) implements
//! [`Isa`] with its intrinsics and instantiates these functions inside
//! `#[target_feature]` entry points (see [`simd_entry_points`]), so that every
//! `#[inline(always)]` helper here is compiled for that instruction set.
//!
//! Bit-identity with [`scalar`](super::scalar) holds lane by lane:
//! - the same IEEE operations in the same order (division, never a
//!   reciprocal; no fused multiply-add);
//! - rounding with the instruction set's round-to-nearest-even;
//! - in the forward, NaN → 0 and then the clamp in the float domain, before
//!   the rounding conversion: clamping to the integers `q_min`, `q_max` and
//!   rounding commute, and clamping first equals saturating to `i32` and then
//!   clamping because `[q_min, q_max]` is inside `i32` and exact in the math
//!   type;
//! - NaN results replaced by the canonical quiet NaN before narrowing;
//! - bf16 narrowing by the integer round-to-nearest-even of the f32 bits,
//!   f16 narrowing by F16C's round-to-nearest-even.
//!
//! Whatever a vector cannot do exactly goes to the scalar functions, element
//! by element: group tails shorter than a vector, zero points too large for
//! exact `i32`/`f32` arithmetic in the dequantization, and backward code
//! ranges beyond ±2^24.

use super::scalar;
use crate::element::sealed::FloatSealed;
use crate::element::{Element, IntElement, MathFloat};
use crate::quantize::SteBoundary;

/// `|z|` up to this keeps `q - z` exact in `i32` and in `f32` for 8-bit codes.
const EXACT_ZERO_POINT: u32 = (1 << 24) - 256;
/// `|q_min|, |q_max|` up to this are exact in `f32`, so comparing the rounded
/// float with them equals comparing the saturated integer.
const EXACT_CODE: i32 = 1 << 24;

/// The operations the vector kernels need from an instruction set.
///
/// `F` holds `LANES` f32, `I` holds `LANES` i32, `D` holds `LANES / 2` f64.
///
/// # Safety
///
/// Every method may only run on a CPU that has the instruction set's
/// features (the entry points check this). Pointer arguments must be valid
/// for `LANES` elements (`LANES / 2` for `D` loads and stores).
pub(crate) trait Isa {
    const LANES: usize;
    type F: Copy;
    type D: Copy;
    type I: Copy;

    unsafe fn splat_f(v: f32) -> Self::F;
    unsafe fn add_f(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn mul_f(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn div_f(a: Self::F, b: Self::F) -> Self::F;
    /// Round half to even; NaN and ±inf pass through.
    unsafe fn round_f(a: Self::F) -> Self::F;
    /// NaN lanes become +0.
    unsafe fn nan_to_zero_f(a: Self::F) -> Self::F;
    /// `min(max(a, lo), hi)` for non-NaN `a`.
    unsafe fn clamp_f(a: Self::F, lo: Self::F, hi: Self::F) -> Self::F;
    /// NaN lanes become the canonical quiet NaN.
    unsafe fn canon_nan_f(a: Self::F) -> Self::F;
    /// `g` where `lo < r < hi` (`lo <= r <= hi` when inclusive), else +0;
    /// a NaN `r` is never inside.
    unsafe fn inside_f(g: Self::F, r: Self::F, lo: Self::F, hi: Self::F, incl: bool) -> Self::F;
    /// Values in `i32` range to `i32`, rounding half to even (the
    /// conversion's rounding comes from MXCSR, whose default, round to
    /// nearest even, Rust requires programs to keep).
    unsafe fn round_to_i(a: Self::F) -> Self::I;
    /// `i32` with `|v| <= 2^24` to f32 (exact).
    unsafe fn i_to_f(a: Self::I) -> Self::F;
    unsafe fn splat_i(v: i32) -> Self::I;
    unsafe fn sub_i(a: Self::I, b: Self::I) -> Self::I;

    unsafe fn splat_d(v: f64) -> Self::D;
    unsafe fn add_d(a: Self::D, b: Self::D) -> Self::D;
    unsafe fn sub_d(a: Self::D, b: Self::D) -> Self::D;
    unsafe fn mul_d(a: Self::D, b: Self::D) -> Self::D;
    unsafe fn div_d(a: Self::D, b: Self::D) -> Self::D;
    unsafe fn round_d(a: Self::D) -> Self::D;
    unsafe fn nan_to_zero_d(a: Self::D) -> Self::D;
    unsafe fn clamp_d(a: Self::D, lo: Self::D, hi: Self::D) -> Self::D;
    unsafe fn canon_nan_d(a: Self::D) -> Self::D;
    unsafe fn inside_d(g: Self::D, r: Self::D, lo: Self::D, hi: Self::D, incl: bool) -> Self::D;
    /// Two halves of f64 in `i32` range to one `I`, rounding half to even
    /// (as `round_to_i`).
    unsafe fn round_dd_to_i(lo: Self::D, hi: Self::D) -> Self::I;
    /// One `I` to two halves of f64 (exact).
    unsafe fn i_to_dd(a: Self::I) -> (Self::D, Self::D);
    unsafe fn load_d(p: *const f64) -> Self::D;
    unsafe fn store_d(p: *mut f64, v: Self::D);

    /// Lane-wise minimum and maximum of non-NaN lanes.
    unsafe fn min_f(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn max_f(a: Self::F, b: Self::F) -> Self::F;
    /// Each lane rounded to the nearest bf16 (ties to even) and widened
    /// back; NaN stays NaN, overflow gives ±inf.
    unsafe fn round_bf16_f(a: Self::F) -> Self::F;
    /// Each lane rounded to the nearest f16 (ties to even, subnormals and
    /// overflow as IEEE says) and widened back; NaN stays NaN.
    unsafe fn round_f16_f(a: Self::F) -> Self::F;

    /// `LANES` codes, sign- or zero-extended.
    unsafe fn load_codes<Q: IntElement>(p: *const Q) -> Self::I;
    /// `LANES` values already inside `Q`'s range.
    unsafe fn store_codes<Q: IntElement>(p: *mut Q, v: Self::I);
}

/// Element types whose math type is f32 (f32, f16, bf16), loaded and stored
/// `S::LANES` at a time. Same safety contract as [`Isa`].
pub(crate) trait F32Lanes<S: Isa>: Element + FloatSealed<Math = f32> {
    /// Exact widening load.
    unsafe fn load(p: *const Self) -> S::F;
    /// Round-to-nearest-even narrowing store of non-NaN or canonical-NaN lanes.
    unsafe fn store(p: *mut Self, v: S::F);
}

/// Forward (SPEC §3.1) for f32-math inputs over whole groups of one row.
#[inline(always)]
pub(crate) unsafe fn quantize_f32<S: Isa, T: F32Lanes<S>, Q: IntElement>(
    x: &[T],
    scale: &[T],
    zero_point: &[i32],
    out: &mut [Q],
    gs: usize,
    q_min: i32,
    q_max: i32,
) {
    let (lo, hi) = (S::splat_f(q_min as f32), S::splat_f(q_max as f32));
    let full = gs - gs % S::LANES;
    for (g, (&s, &z)) in scale.iter().zip(zero_point).enumerate() {
        let (xs, os) = (&x[g * gs..][..gs], &mut out[g * gs..][..gs]);
        let s = s.to_math();
        if s == 0.0 {
            os.fill(Q::from_i32_in_range(scalar::quantize(
                0.0, s, z, q_min, q_max,
            )));
            continue;
        }
        let (vs, vz) = (S::splat_f(s), S::splat_f(f32::from_i32(z)));
        let codes = |k: usize| {
            let t = S::add_f(S::div_f(T::load(xs.as_ptr().add(k)), vs), vz);
            S::round_to_i(S::clamp_f(S::nan_to_zero_f(t), lo, hi))
        };
        let mut k = 0;
        // Two vectors per step: independent divisions keep the divider busy.
        while k + 2 * S::LANES <= full {
            let (a, b) = (codes(k), codes(k + S::LANES));
            S::store_codes(os.as_mut_ptr().add(k), a);
            S::store_codes(os.as_mut_ptr().add(k + S::LANES), b);
            k += 2 * S::LANES;
        }
        if k < full {
            S::store_codes(os.as_mut_ptr().add(k), codes(k));
        }
        for (o, &x) in os[full..].iter_mut().zip(&xs[full..]) {
            *o = Q::from_i32_in_range(scalar::quantize(x.to_math(), s, z, q_min, q_max));
        }
    }
}

/// Forward for f64 inputs.
#[inline(always)]
pub(crate) unsafe fn quantize_f64<S: Isa, Q: IntElement>(
    x: &[f64],
    scale: &[f64],
    zero_point: &[i32],
    out: &mut [Q],
    gs: usize,
    q_min: i32,
    q_max: i32,
) {
    let (lo, hi) = (S::splat_d(q_min.into()), S::splat_d(q_max.into()));
    let half = S::LANES / 2;
    let full = gs - gs % S::LANES;
    for (g, (&s, &z)) in scale.iter().zip(zero_point).enumerate() {
        let (xs, os) = (&x[g * gs..][..gs], &mut out[g * gs..][..gs]);
        if s == 0.0 {
            os.fill(Q::from_i32_in_range(scalar::quantize(
                0.0, s, z, q_min, q_max,
            )));
            continue;
        }
        let (vs, vz) = (S::splat_d(s), S::splat_d(z.into()));
        let step = |p: *const f64| {
            let t = S::add_d(S::div_d(S::load_d(p), vs), vz);
            S::clamp_d(S::nan_to_zero_d(t), lo, hi)
        };
        let mut k = 0;
        while k < full {
            let p = xs.as_ptr().add(k);
            let codes = S::round_dd_to_i(step(p), step(p.add(half)));
            S::store_codes(os.as_mut_ptr().add(k), codes);
            k += S::LANES;
        }
        for (o, &x) in os[full..].iter_mut().zip(&xs[full..]) {
            *o = Q::from_i32_in_range(scalar::quantize(x, s, z, q_min, q_max));
        }
    }
}

/// Inverse (SPEC §3.2) to f32-math outputs.
#[inline(always)]
pub(crate) unsafe fn dequantize_f32<S: Isa, Q: IntElement, T: F32Lanes<S>>(
    q: &[Q],
    scale: &[T],
    zero_point: &[i32],
    out: &mut [T],
    gs: usize,
) {
    for (g, (&s, &z)) in scale.iter().zip(zero_point).enumerate() {
        let (qs, os) = (&q[g * gs..][..gs], &mut out[g * gs..][..gs]);
        let s = s.to_math();
        let full = if z.unsigned_abs() <= EXACT_ZERO_POINT {
            gs - gs % S::LANES
        } else {
            0
        };
        let (vs, vz) = (S::splat_f(s), S::splat_i(z));
        // `q - z` is finite, so only a NaN or infinite scale can give NaN.
        let canon = !s.is_finite();
        let mut k = 0;
        while k < full {
            let d = S::i_to_f(S::sub_i(S::load_codes(qs.as_ptr().add(k)), vz));
            let y = S::mul_f(d, vs);
            T::store(
                os.as_mut_ptr().add(k),
                if canon { S::canon_nan_f(y) } else { y },
            );
            k += S::LANES;
        }
        for (o, &q) in os[full..].iter_mut().zip(&qs[full..]) {
            *o = T::from_math(scalar::dequantize(q.to_i32(), z, s));
        }
    }
}

/// Inverse to f64 outputs; `q - z` is exact in f64 for every zero point.
#[inline(always)]
pub(crate) unsafe fn dequantize_f64<S: Isa, Q: IntElement>(
    q: &[Q],
    scale: &[f64],
    zero_point: &[i32],
    out: &mut [f64],
    gs: usize,
) {
    let half = S::LANES / 2;
    let full = gs - gs % S::LANES;
    for (g, (&s, &z)) in scale.iter().zip(zero_point).enumerate() {
        let (qs, os) = (&q[g * gs..][..gs], &mut out[g * gs..][..gs]);
        let (vs, vz) = (S::splat_d(s), S::splat_d(z.into()));
        let canon = !s.is_finite();
        let y = |d: S::D| {
            let y = S::mul_d(S::sub_d(d, vz), vs);
            if canon {
                S::canon_nan_d(y)
            } else {
                y
            }
        };
        let mut k = 0;
        while k < full {
            let (a, b) = S::i_to_dd(S::load_codes(qs.as_ptr().add(k)));
            let p = os.as_mut_ptr().add(k);
            S::store_d(p, y(a));
            S::store_d(p.add(half), y(b));
            k += S::LANES;
        }
        for (o, &q) in os[full..].iter_mut().zip(&qs[full..]) {
            *o = f64::from_math(scalar::dequantize(q.to_i32(), z, s));
        }
    }
}

/// Straight-through backward (SPEC §3.3) for f32-math tensors.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn quantize_backward_f32<S: Isa, T: F32Lanes<S>>(
    dy: &[T],
    x: &[T],
    scale: &[T],
    zero_point: &[i32],
    out: &mut [T],
    gs: usize,
    q_min: i32,
    q_max: i32,
    boundary: SteBoundary,
) {
    if q_min < -EXACT_CODE || q_max > EXACT_CODE {
        return scalar::quantize_backward_groups(
            dy, x, scale, zero_point, out, gs, q_min, q_max, boundary,
        );
    }
    let incl = boundary == SteBoundary::Inclusive;
    let (lo, hi) = (S::splat_f(q_min as f32), S::splat_f(q_max as f32));
    let full = gs - gs % S::LANES;
    for (g, (&s, &z)) in scale.iter().zip(zero_point).enumerate() {
        let range = g * gs..(g + 1) * gs;
        let (dys, xs, os) = (&dy[range.clone()], &x[range.clone()], &mut out[range]);
        let s = s.to_math();
        if s == 0.0 {
            os.fill(T::from_math(0.0));
            continue;
        }
        let (vs, vz) = (S::splat_f(s), S::splat_f(f32::from_i32(z)));
        let mut k = 0;
        while k < full {
            let r = S::round_f(S::add_f(S::div_f(T::load(xs.as_ptr().add(k)), vs), vz));
            let grad = S::div_f(T::load(dys.as_ptr().add(k)), vs);
            let grad = S::inside_f(grad, r, lo, hi, incl);
            T::store(os.as_mut_ptr().add(k), S::canon_nan_f(grad));
            k += S::LANES;
        }
        let tail = os[full..].iter_mut().zip(&dys[full..]).zip(&xs[full..]);
        for ((o, &dy), &x) in tail {
            let grad =
                scalar::quantize_grad(dy.to_math(), x.to_math(), s, z, q_min, q_max, boundary);
            *o = T::from_math(grad);
        }
    }
}

/// Straight-through backward for f64 tensors.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn quantize_backward_f64<S: Isa>(
    dy: &[f64],
    x: &[f64],
    scale: &[f64],
    zero_point: &[i32],
    out: &mut [f64],
    gs: usize,
    q_min: i32,
    q_max: i32,
    boundary: SteBoundary,
) {
    if q_min < -EXACT_CODE || q_max > EXACT_CODE {
        return scalar::quantize_backward_groups(
            dy, x, scale, zero_point, out, gs, q_min, q_max, boundary,
        );
    }
    let incl = boundary == SteBoundary::Inclusive;
    let (lo, hi) = (S::splat_d(q_min.into()), S::splat_d(q_max.into()));
    let half = S::LANES / 2;
    let full = gs - gs % half;
    for (g, (&s, &z)) in scale.iter().zip(zero_point).enumerate() {
        let range = g * gs..(g + 1) * gs;
        let (dys, xs, os) = (&dy[range.clone()], &x[range.clone()], &mut out[range]);
        if s == 0.0 {
            os.fill(0.0);
            continue;
        }
        let (vs, vz) = (S::splat_d(s), S::splat_d(z.into()));
        let mut k = 0;
        while k < full {
            let r = S::round_d(S::add_d(S::div_d(S::load_d(xs.as_ptr().add(k)), vs), vz));
            let grad = S::div_d(S::load_d(dys.as_ptr().add(k)), vs);
            let grad = S::inside_d(grad, r, lo, hi, incl);
            S::store_d(os.as_mut_ptr().add(k), S::canon_nan_d(grad));
            k += half;
        }
        let tail = os[full..].iter_mut().zip(&dys[full..]).zip(&xs[full..]);
        for ((o, &dy), &x) in tail {
            *o = f64::from_math(scalar::quantize_grad(dy, x, s, z, q_min, q_max, boundary));
        }
    }
}

/// Dequantize backward (SPEC §3.4) for f32-math tensors.
#[inline(always)]
pub(crate) unsafe fn dequantize_backward_f32<S: Isa, T: F32Lanes<S>>(
    dy: &[T],
    scale: &[T],
    out: &mut [T],
    gs: usize,
) {
    let full = gs - gs % S::LANES;
    for (g, &s) in scale.iter().enumerate() {
        let (dys, os) = (&dy[g * gs..][..gs], &mut out[g * gs..][..gs]);
        let s = s.to_math();
        let vs = S::splat_f(s);
        let mut k = 0;
        while k < full {
            let grad = S::mul_f(T::load(dys.as_ptr().add(k)), vs);
            T::store(os.as_mut_ptr().add(k), S::canon_nan_f(grad));
            k += S::LANES;
        }
        for (o, &dy) in os[full..].iter_mut().zip(&dys[full..]) {
            *o = T::from_math(scalar::dequantize_grad(dy.to_math(), s));
        }
    }
}

/// Dequantize backward for f64 tensors.
#[inline(always)]
pub(crate) unsafe fn dequantize_backward_f64<S: Isa>(
    dy: &[f64],
    scale: &[f64],
    out: &mut [f64],
    gs: usize,
) {
    let half = S::LANES / 2;
    let full = gs - gs % half;
    for (g, &s) in scale.iter().enumerate() {
        let (dys, os) = (&dy[g * gs..][..gs], &mut out[g * gs..][..gs]);
        let vs = S::splat_d(s);
        let mut k = 0;
        while k < full {
            let grad = S::mul_d(S::load_d(dys.as_ptr().add(k)), vs);
            S::store_d(os.as_mut_ptr().add(k), S::canon_nan_d(grad));
            k += half;
        }
        for (o, &dy) in os[full..].iter_mut().zip(&dys[full..]) {
            *o = f64::from_math(scalar::dequantize_grad(dy, s));
        }
    }
}

/// The four kernels of one element type on one instruction set: f32,
/// f16 and bf16 use the f32-math kernels, f64 the f64 ones. Same safety
/// contract as [`Isa`].
pub(crate) trait SimdElement<S: Isa>: Element {
    unsafe fn quantize<Q: IntElement>(
        x: &[Self],
        s: &[Self],
        z: &[i32],
        o: &mut [Q],
        gs: usize,
        lo: i32,
        hi: i32,
    );
    unsafe fn dequantize<Q: IntElement>(q: &[Q], s: &[Self], z: &[i32], o: &mut [Self], gs: usize);
    #[allow(clippy::too_many_arguments)]
    unsafe fn quantize_backward(
        dy: &[Self],
        x: &[Self],
        s: &[Self],
        z: &[i32],
        o: &mut [Self],
        gs: usize,
        lo: i32,
        hi: i32,
        b: SteBoundary,
    );
    unsafe fn dequantize_backward(dy: &[Self], s: &[Self], o: &mut [Self], gs: usize);
}

impl<S: Isa, T: F32Lanes<S>> SimdElement<S> for T {
    #[inline(always)]
    unsafe fn quantize<Q: IntElement>(
        x: &[T],
        s: &[T],
        z: &[i32],
        o: &mut [Q],
        gs: usize,
        lo: i32,
        hi: i32,
    ) {
        quantize_f32::<S, T, Q>(x, s, z, o, gs, lo, hi)
    }
    #[inline(always)]
    unsafe fn dequantize<Q: IntElement>(q: &[Q], s: &[T], z: &[i32], o: &mut [T], gs: usize) {
        dequantize_f32::<S, Q, T>(q, s, z, o, gs)
    }
    #[inline(always)]
    unsafe fn quantize_backward(
        dy: &[T],
        x: &[T],
        s: &[T],
        z: &[i32],
        o: &mut [T],
        gs: usize,
        lo: i32,
        hi: i32,
        b: SteBoundary,
    ) {
        quantize_backward_f32::<S, T>(dy, x, s, z, o, gs, lo, hi, b)
    }
    #[inline(always)]
    unsafe fn dequantize_backward(dy: &[T], s: &[T], o: &mut [T], gs: usize) {
        dequantize_backward_f32::<S, T>(dy, s, o, gs)
    }
}

impl<S: Isa> SimdElement<S> for f64 {
    #[inline(always)]
    unsafe fn quantize<Q: IntElement>(
        x: &[f64],
        s: &[f64],
        z: &[i32],
        o: &mut [Q],
        gs: usize,
        lo: i32,
        hi: i32,
    ) {
        quantize_f64::<S, Q>(x, s, z, o, gs, lo, hi)
    }
    #[inline(always)]
    unsafe fn dequantize<Q: IntElement>(q: &[Q], s: &[f64], z: &[i32], o: &mut [f64], gs: usize) {
        dequantize_f64::<S, Q>(q, s, z, o, gs)
    }
    #[inline(always)]
    unsafe fn quantize_backward(
        dy: &[f64],
        x: &[f64],
        s: &[f64],
        z: &[i32],
        o: &mut [f64],
        gs: usize,
        lo: i32,
        hi: i32,
        b: SteBoundary,
    ) {
        quantize_backward_f64::<S>(dy, x, s, z, o, gs, lo, hi, b)
    }
    #[inline(always)]
    unsafe fn dequantize_backward(dy: &[f64], s: &[f64], o: &mut [f64], gs: usize) {
        dequantize_backward_f64::<S>(dy, s, o, gs)
    }
}

/// Rounding of f32 lanes to a recipe's arithmetic dtype: the vector form
/// and the one-lane form of the same operation.
pub(crate) trait LaneRound<S: Isa> {
    /// The dtype rounded to (values of it are left as they are).
    const KIND: crate::element::ElementKind;
    unsafe fn rd(v: S::F) -> S::F;
    fn rd1(v: f32) -> f32;
}

/// f32 arithmetic: no rounding.
pub(crate) struct KeepF32;
/// bf16 arithmetic: every result rounded to bf16.
pub(crate) struct ToBf16;
/// f16 arithmetic: every result rounded to f16.
pub(crate) struct ToF16;

impl<S: Isa> LaneRound<S> for KeepF32 {
    const KIND: crate::element::ElementKind = crate::element::ElementKind::F32;
    #[inline(always)]
    unsafe fn rd(v: S::F) -> S::F {
        v
    }
    #[inline(always)]
    fn rd1(v: f32) -> f32 {
        v
    }
}
impl<S: Isa> LaneRound<S> for ToBf16 {
    const KIND: crate::element::ElementKind = crate::element::ElementKind::Bf16;
    #[inline(always)]
    unsafe fn rd(v: S::F) -> S::F {
        S::round_bf16_f(v)
    }
    #[inline(always)]
    fn rd1(v: f32) -> f32 {
        half::bf16::from_f32(v).to_f32()
    }
}
impl<S: Isa> LaneRound<S> for ToF16 {
    const KIND: crate::element::ElementKind = crate::element::ElementKind::F16;
    #[inline(always)]
    unsafe fn rd(v: S::F) -> S::F {
        S::round_f16_f(v)
    }
    #[inline(always)]
    fn rd1(v: f32) -> f32 {
        half::f16::from_f32(v).to_f32()
    }
}

/// `LANES` values rounded by `R`: a value of `R`'s dtype already is one.
#[inline(always)]
unsafe fn load_rounded<S: Isa, T: F32Lanes<S>, R: LaneRound<S>>(p: *const T) -> S::F {
    let v = T::load(p);
    if T::KIND == R::KIND {
        v
    } else {
        R::rd(v)
    }
}

/// Whether a group holds a NaN or an infinity (`v * 0` is NaN exactly for
/// those).
#[inline(always)]
pub(crate) unsafe fn recipe_non_finite<S: Isa, T: F32Lanes<S>>(xs: &[T]) -> bool
where
    f32: F32Lanes<S>,
{
    let full = xs.len() - xs.len() % S::LANES;
    let (mut a, mut b, zero) = (S::splat_f(0.0), S::splat_f(0.0), S::splat_f(0.0));
    let mut k = 0;
    while k + 2 * S::LANES <= full {
        a = S::add_f(a, S::mul_f(T::load(xs.as_ptr().add(k)), zero));
        b = S::add_f(b, S::mul_f(T::load(xs.as_ptr().add(k + S::LANES)), zero));
        k += 2 * S::LANES;
    }
    if k < full {
        a = S::add_f(a, S::mul_f(T::load(xs.as_ptr().add(k)), zero));
    }
    let mut lanes = [0f32; 16];
    <f32 as F32Lanes<S>>::store(lanes.as_mut_ptr(), S::add_f(a, b));
    lanes[..S::LANES].iter().any(|v| v.is_nan())
        || xs[full..].iter().any(|x| !x.to_math().is_finite())
}

/// A group's minimum and maximum after rounding each value by `R` (the
/// recipe's choose arithmetic), or `None` when a value is NaN or infinite:
/// such groups take the scalar path. Which zero a `±0` extreme carries is
/// left open, as in the scalar engine, whose results do not depend on it.
#[inline(always)]
pub(crate) unsafe fn recipe_extremes<S: Isa, T: F32Lanes<S>, R: LaneRound<S>>(
    xs: &[T],
) -> Option<(f32, f32)>
where
    f32: F32Lanes<S>,
{
    let full = xs.len() - xs.len() % S::LANES;
    let mut mn = S::splat_f(f32::INFINITY);
    let mut mx = S::splat_f(f32::NEG_INFINITY);
    // `v * 0` is NaN exactly for NaN and ±inf: one sum flags them all.
    let (mut flag, zero) = (S::splat_f(0.0), S::splat_f(0.0));
    let mut k = 0;
    while k < full {
        let v = load_rounded::<S, T, R>(xs.as_ptr().add(k));
        mn = S::min_f(mn, v);
        mx = S::max_f(mx, v);
        flag = S::add_f(flag, S::mul_f(v, zero));
        k += S::LANES;
    }
    let mut lanes = [[0f32; 16]; 3];
    <f32 as F32Lanes<S>>::store(lanes[0].as_mut_ptr(), mn);
    <f32 as F32Lanes<S>>::store(lanes[1].as_mut_ptr(), mx);
    <f32 as F32Lanes<S>>::store(lanes[2].as_mut_ptr(), flag);
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    let [mins, maxs, flags] = &lanes;
    for ((&a, &b), &f) in mins.iter().zip(maxs).zip(flags).take(S::LANES) {
        if f.is_nan() {
            return None;
        }
        lo = lo.min(a);
        hi = hi.max(b);
    }
    for x in &xs[full..] {
        let v = R::rd1(x.to_math());
        if !v.is_finite() {
            return None;
        }
        lo = lo.min(v);
        hi = hi.max(v);
    }
    Some((lo, hi))
}

/// One code of a recipe formula in f32-math arithmetic rounded by `R`, ties
/// to even, no offset: the one-lane form of [`recipe_quantize`] (and of the
/// scalar engine's f32 path). `DIVIDE`: `x / s`, else `x * rd(1 / s)`;
/// `BEFORE`: the zero point is added before rounding, else after.
#[inline(always)]
pub(crate) fn recipe_code<S: Isa, R: LaneRound<S>, const DIVIDE: bool, const BEFORE: bool>(
    x: f32,
    (s, inv, zf): (f32, f32, f32),
    (lo, hi): (f32, f32),
) -> i32 {
    let x = R::rd1(x);
    let v = if DIVIDE {
        R::rd1(x / s)
    } else {
        R::rd1(x * inv)
    };
    let r = if BEFORE {
        R::rd1(v + zf).round_ties_even()
    } else {
        R::rd1(v.round_ties_even() + zf)
    };
    let r = if r.is_nan() { 0.0 } else { r };
    r.clamp(lo, hi) as i32
}

/// `LANES` codes of [`recipe_quantize`]: `c` is `(s, rd(1 / s), z, q_min,
/// q_max)` splatted.
#[inline(always)]
unsafe fn recipe_codes<
    S: Isa,
    T: F32Lanes<S>,
    R: LaneRound<S>,
    const DIVIDE: bool,
    const BEFORE: bool,
    const ZERO: bool,
>(
    p: *const T,
    [vs, vinv, vz, lo, hi]: [S::F; 5],
) -> S::I {
    let x = load_rounded::<S, T, R>(p);
    let v = if DIVIDE {
        R::rd(S::div_f(x, vs))
    } else {
        R::rd(S::mul_f(x, vinv))
    };
    // Two roundings of the one-lane form are left out where they cannot
    // change a code:
    // - `rd(v + z)` with `z == 0` (`ZERO`) is `v` (`-0` becomes `+0`, which
    //   rounds to the same code);
    // - `rd(round(v) + z)`: the sum is an integer, exact in bf16/f16 up to
    //   256/2048 in magnitude; beyond, rounding keeps it beyond, on the same
    //   side, and the clamp to an 8-bit code range (`|q| <= 255`, all this
    //   kernel takes) gives the same code. NaN and ±inf pass either way.
    let r = if BEFORE && ZERO {
        S::round_f(v)
    } else if BEFORE {
        S::round_f(R::rd(S::add_f(v, vz)))
    } else {
        S::add_f(S::round_f(v), vz)
    };
    // Integral (or ±inf) already: the conversion only saturates.
    S::round_to_i(S::clamp_f(S::nan_to_zero_f(r), lo, hi))
}

/// [`recipe_codes`] over whole vectors (`xs.len()` a multiple of `LANES`).
#[inline(always)]
unsafe fn recipe_vectors<
    S: Isa,
    T: F32Lanes<S>,
    Q: IntElement,
    R: LaneRound<S>,
    const DIVIDE: bool,
    const BEFORE: bool,
    const ZERO: bool,
>(
    xs: &[T],
    out: &mut [Q],
    c: [S::F; 5],
) {
    let mut k = 0;
    // Two vectors per step: independent chains keep the units busy.
    while k + 2 * S::LANES <= xs.len() {
        let a = recipe_codes::<S, T, R, DIVIDE, BEFORE, ZERO>(xs.as_ptr().add(k), c);
        let b = recipe_codes::<S, T, R, DIVIDE, BEFORE, ZERO>(xs.as_ptr().add(k + S::LANES), c);
        S::store_codes(out.as_mut_ptr().add(k), a);
        S::store_codes(out.as_mut_ptr().add(k + S::LANES), b);
        k += 2 * S::LANES;
    }
    if k < xs.len() {
        let a = recipe_codes::<S, T, R, DIVIDE, BEFORE, ZERO>(xs.as_ptr().add(k), c);
        S::store_codes(out.as_mut_ptr().add(k), a);
    }
}

/// The codes of one group (one code per byte) under a recipe formula in
/// f32-math arithmetic: scale `s` (non-zero, a value of f32), zero point
/// `z` (`|z| <= 2^24`). Bit-identical to the scalar engine.
#[inline(always)]
pub(crate) unsafe fn recipe_quantize<
    S: Isa,
    T: F32Lanes<S>,
    Q: IntElement,
    R: LaneRound<S>,
    const DIVIDE: bool,
    const BEFORE: bool,
>(
    xs: &[T],
    s: f32,
    z: i32,
    out: &mut [Q],
    q_min: i32,
    q_max: i32,
) {
    let params = (s, R::rd1(1.0 / s), z as f32);
    let bounds = (q_min as f32, q_max as f32);
    let (vs, vinv, vz) = (S::splat_f(s), S::splat_f(params.1), S::splat_f(params.2));
    let (lo, hi) = (S::splat_f(bounds.0), S::splat_f(bounds.1));
    let full = xs.len() - xs.len() % S::LANES;
    let c = [vs, vinv, vz, lo, hi];
    if z == 0 {
        recipe_vectors::<S, T, Q, R, DIVIDE, BEFORE, true>(&xs[..full], out, c);
    } else {
        recipe_vectors::<S, T, Q, R, DIVIDE, BEFORE, false>(&xs[..full], out, c);
    }
    for (x, o) in xs[full..].iter().zip(&mut out[full..]) {
        let c = recipe_code::<S, R, DIVIDE, BEFORE>(x.to_math(), params, bounds);
        *o = Q::from_i32_in_range(c);
    }
}

/// Defines, in an instruction-set module, the safe entry points of the four
/// kernels: each checks the CPU features (a cached atomic load), runs the
/// generic kernel inside a `#[target_feature]` function when they are
/// present, and the scalar reference otherwise, so an entry point is sound
/// on any CPU.
macro_rules! simd_entry_points {
    ($isa:ty, $features:literal, $detected:expr) => {
        use crate::element::IntElement;
        use crate::kernels::scalar;
        use crate::kernels::simd::SimdElement;
        use crate::quantize::SteBoundary;

        #[target_feature(enable = $features)]
        unsafe fn recipe_non_finite_tf<T: crate::kernels::simd::F32Lanes<$isa>>(xs: &[T]) -> bool {
            crate::kernels::simd::recipe_non_finite::<$isa, T>(xs)
        }

        /// Whether a group holds a NaN or an infinity.
        pub(crate) fn recipe_non_finite<T: crate::kernels::simd::F32Lanes<$isa>>(xs: &[T]) -> bool {
            if !available() {
                return xs.iter().any(|x| !x.to_math().is_finite());
            }
            // SAFETY: the CPU has the features (checked above), and the
            // kernel reads only inside the slice it is given.
            unsafe { recipe_non_finite_tf::<T>(xs) }
        }

        #[target_feature(enable = $features)]
        unsafe fn recipe_extremes_tf<T, R>(xs: &[T]) -> Option<(f32, f32)>
        where
            T: crate::kernels::simd::F32Lanes<$isa>,
            R: crate::kernels::simd::LaneRound<$isa>,
        {
            crate::kernels::simd::recipe_extremes::<$isa, T, R>(xs)
        }

        /// A group's extremes under a recipe's choose arithmetic (`None`:
        /// the scalar engine takes the group).
        pub(crate) fn recipe_extremes<T, R>(xs: &[T]) -> Option<(f32, f32)>
        where
            T: crate::kernels::simd::F32Lanes<$isa>,
            R: crate::kernels::simd::LaneRound<$isa>,
        {
            if !available() {
                return None;
            }
            // SAFETY: the CPU has the features (checked above), and the
            // kernel reads only inside the slice it is given.
            unsafe { recipe_extremes_tf::<T, R>(xs) }
        }

        #[target_feature(enable = $features)]
        unsafe fn recipe_quantize_tf<T, Q, R, const D: bool, const B: bool>(
            xs: &[T],
            s: f32,
            z: i32,
            o: &mut [Q],
            lo: i32,
            hi: i32,
        ) where
            T: crate::kernels::simd::F32Lanes<$isa>,
            Q: IntElement,
            R: crate::kernels::simd::LaneRound<$isa>,
        {
            crate::kernels::simd::recipe_quantize::<$isa, T, Q, R, D, B>(xs, s, z, o, lo, hi)
        }

        /// One group's codes under a recipe formula (see
        /// [`recipe_quantize`](crate::kernels::simd::recipe_quantize)).
        pub(crate) fn recipe_quantize<T, Q, R, const D: bool, const B: bool>(
            xs: &[T],
            s: f32,
            z: i32,
            o: &mut [Q],
            lo: i32,
            hi: i32,
        ) where
            T: crate::kernels::simd::F32Lanes<$isa>,
            Q: IntElement,
            R: crate::kernels::simd::LaneRound<$isa>,
        {
            if !available() {
                let p = (s, R::rd1(1.0 / s), z as f32);
                for (x, c) in xs.iter().zip(o.iter_mut()) {
                    let v = crate::kernels::simd::recipe_code::<$isa, R, D, B>(
                        x.to_math(),
                        p,
                        (lo as f32, hi as f32),
                    );
                    *c = Q::from_i32_in_range(v);
                }
                return;
            }
            // SAFETY: as in `recipe_extremes`; `o` holds one code per
            // element of `xs` (the lookup refuses packed codes).
            unsafe { recipe_quantize_tf::<T, Q, R, D, B>(xs, s, z, o, lo, hi) }
        }

        fn recipe_by_formula<T, Q, R>(
            divide: bool,
            before: bool,
        ) -> crate::kernels::RecipeQuantizeKernel<T, Q>
        where
            T: crate::kernels::simd::F32Lanes<$isa>,
            Q: IntElement,
            R: crate::kernels::simd::LaneRound<$isa>,
        {
            match (divide, before) {
                (true, true) => recipe_quantize::<T, Q, R, true, true>,
                (true, false) => recipe_quantize::<T, Q, R, true, false>,
                (false, true) => recipe_quantize::<T, Q, R, false, true>,
                (false, false) => recipe_quantize::<T, Q, R, false, false>,
            }
        }

        /// The extremes kernel for a choose arithmetic of kind `round`.
        pub(crate) fn recipe_extremes_for<T: crate::kernels::simd::F32Lanes<$isa>>(
            round: crate::element::ElementKind,
        ) -> Option<crate::kernels::RecipeExtremesKernel<T>> {
            use crate::element::ElementKind as K;
            use crate::kernels::simd::{KeepF32, ToBf16, ToF16};
            Some(match round {
                K::F32 => recipe_extremes::<T, KeepF32>,
                K::Bf16 => recipe_extremes::<T, ToBf16>,
                K::F16 => recipe_extremes::<T, ToF16>,
                _ => return None,
            })
        }

        /// The quantize kernel for a formula (`divide`, zero point `before`
        /// rounding) in an arithmetic of kind `round`; one code per byte.
        pub(crate) fn recipe_quantize_for<
            T: crate::kernels::simd::F32Lanes<$isa>,
            Q: IntElement,
        >(
            round: crate::element::ElementKind,
            divide: bool,
            before: bool,
        ) -> Option<crate::kernels::RecipeQuantizeKernel<T, Q>> {
            use crate::element::ElementKind as K;
            use crate::kernels::simd::{KeepF32, ToBf16, ToF16};
            if Q::PACK != 1 {
                return None;
            }
            Some(match round {
                K::F32 => recipe_by_formula::<T, Q, KeepF32>(divide, before),
                K::Bf16 => recipe_by_formula::<T, Q, ToBf16>(divide, before),
                K::F16 => recipe_by_formula::<T, Q, ToF16>(divide, before),
                _ => return None,
            })
        }

        /// Whether this CPU can run the instruction set.
        #[inline]
        pub(crate) fn available() -> bool {
            $detected
        }

        #[target_feature(enable = $features)]
        unsafe fn quantize_tf<T: SimdElement<$isa>, Q: IntElement>(
            x: &[T],
            s: &[T],
            z: &[i32],
            o: &mut [Q],
            gs: usize,
            lo: i32,
            hi: i32,
        ) {
            <T as SimdElement<$isa>>::quantize::<Q>(x, s, z, o, gs, lo, hi)
        }

        /// Forward kernel.
        pub(crate) fn quantize<T: SimdElement<$isa>, Q: IntElement>(
            x: &[T],
            s: &[T],
            z: &[i32],
            o: &mut [Q],
            gs: usize,
            lo: i32,
            hi: i32,
        ) {
            if !available() {
                return scalar::quantize_groups(x, s, z, o, gs, lo, hi);
            }
            // SAFETY: the CPU has the features (checked above), and the
            // kernel reads and writes only inside the slices it is given.
            unsafe { quantize_tf::<T, Q>(x, s, z, o, gs, lo, hi) }
        }

        #[target_feature(enable = $features)]
        unsafe fn dequantize_tf<Q: IntElement, T: SimdElement<$isa>>(
            q: &[Q],
            s: &[T],
            z: &[i32],
            o: &mut [T],
            gs: usize,
        ) {
            <T as SimdElement<$isa>>::dequantize::<Q>(q, s, z, o, gs)
        }

        /// Inverse kernel.
        pub(crate) fn dequantize<Q: IntElement, T: SimdElement<$isa>>(
            q: &[Q],
            s: &[T],
            z: &[i32],
            o: &mut [T],
            gs: usize,
        ) {
            if !available() {
                return scalar::dequantize_groups(q, s, z, o, gs);
            }
            // SAFETY: as in `quantize`.
            unsafe { dequantize_tf::<Q, T>(q, s, z, o, gs) }
        }

        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn quantize_backward_tf<T: SimdElement<$isa>>(
            dy: &[T],
            x: &[T],
            s: &[T],
            z: &[i32],
            o: &mut [T],
            gs: usize,
            lo: i32,
            hi: i32,
            b: SteBoundary,
        ) {
            <T as SimdElement<$isa>>::quantize_backward(dy, x, s, z, o, gs, lo, hi, b)
        }

        /// Straight-through backward kernel.
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn quantize_backward<T: SimdElement<$isa>>(
            dy: &[T],
            x: &[T],
            s: &[T],
            z: &[i32],
            o: &mut [T],
            gs: usize,
            lo: i32,
            hi: i32,
            b: SteBoundary,
        ) {
            if !available() {
                return scalar::quantize_backward_groups(dy, x, s, z, o, gs, lo, hi, b);
            }
            // SAFETY: as in `quantize`.
            unsafe { quantize_backward_tf::<T>(dy, x, s, z, o, gs, lo, hi, b) }
        }

        #[target_feature(enable = $features)]
        unsafe fn dequantize_backward_tf<T: SimdElement<$isa>>(
            dy: &[T],
            s: &[T],
            o: &mut [T],
            gs: usize,
        ) {
            <T as SimdElement<$isa>>::dequantize_backward(dy, s, o, gs)
        }

        /// Dequantize-backward kernel.
        pub(crate) fn dequantize_backward<T: SimdElement<$isa>>(
            dy: &[T],
            s: &[T],
            o: &mut [T],
            gs: usize,
        ) {
            if !available() {
                return scalar::dequantize_backward_groups(dy, s, o, gs);
            }
            // SAFETY: as in `quantize`.
            unsafe { dequantize_backward_tf::<T>(dy, s, o, gs) }
        }
    };
}
pub(crate) use simd_entry_points;
