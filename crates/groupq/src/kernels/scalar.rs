//! The scalar reference kernels: SPEC §3 written out one element at a time.
//!
//! Every other backend is tested bit for bit against these functions. The
//! per-element functions are the single definition of the arithmetic; the
//! `*_groups` loops apply them to a run of whole groups of one row.
//!
//! Notation as in SPEC §3: `x` input, `s` scale, `z` zero point, `M` the math
//! type (`f64` for f64 tensors, else `f32`), `q_min..=q_max` the code range.

use crate::element::{Element, IntElement, MathFloat};
use crate::plan::SteBoundary;

/// SPEC §3.1: `t = ((s != 0) ? x / s : 0) + M(z)`: IEEE division (never a
/// reciprocal multiply), the zero point added before rounding.
#[inline(always)]
pub(crate) fn shifted<M: MathFloat>(x: M, s: M, z: i32) -> M {
    let v = if s != M::ZERO { x / s } else { M::ZERO };
    v + M::from_i32(z)
}

/// SPEC §3.1: `r = round_half_to_even(t)`; NaN → 0, ±inf and values beyond
/// `i32` saturate to `i32::MAX` / `i32::MIN`.
#[inline(always)]
pub(crate) fn round_saturating<M: MathFloat>(t: M) -> i32 {
    t.round_ties_even().to_i32_saturating()
}

/// SPEC §3.1: `q = min(max(r, q_min), q_max)`.
#[inline(always)]
pub(crate) fn quantize<M: MathFloat>(x: M, s: M, z: i32, q_min: i32, q_max: i32) -> i32 {
    round_saturating(shifted(x, s, z)).clamp(q_min, q_max)
}

/// SPEC §3.2: `y = M(q - z) * s`, the difference exact in `i64`.
#[inline(always)]
pub(crate) fn dequantize<M: MathFloat>(q: i32, z: i32, s: M) -> M {
    M::from_i64(i64::from(q) - i64::from(z)) * s
}

/// SPEC §3.3: the straight-through gradient. `r` is the forward's unclamped
/// rounded value from the same `t`; a NaN `t` is never inside.
#[inline(always)]
pub(crate) fn quantize_grad<M: MathFloat>(
    dy: M,
    x: M,
    s: M,
    z: i32,
    q_min: i32,
    q_max: i32,
    boundary: SteBoundary,
) -> M {
    let t = shifted(x, s, z);
    let r = round_saturating(t);
    let inside = !t.is_nan()
        && match boundary {
            SteBoundary::Exclusive => q_min < r && r < q_max,
            SteBoundary::Inclusive => q_min <= r && r <= q_max,
        };
    if inside && s != M::ZERO {
        dy / s
    } else {
        M::ZERO
    }
}

/// SPEC §3.4: `grad_input = M(dy) * s`.
#[inline(always)]
pub(crate) fn dequantize_grad<M: MathFloat>(dy: M, s: M) -> M {
    dy * s
}

/// Forward over whole groups: `x` holds `scale.len()` groups of
/// `group_size` elements of one row, `out` their codes (`group_size /
/// TOut::PACK` storage units a group).
pub(crate) fn quantize_groups<TIn: Element, TOut: IntElement>(
    x: &[TIn],
    scale: &[TIn],
    zero_point: &[i32],
    out: &mut [TOut],
    group_size: usize,
    q_min: i32,
    q_max: i32,
) {
    let units = group_size / TOut::PACK;
    let groups = x.chunks_exact(group_size).zip(out.chunks_exact_mut(units));
    for ((xs, os), (&s, &z)) in groups.zip(scale.iter().zip(zero_point)) {
        let s = s.to_math();
        TOut::write_codes(os, |i| quantize(xs[i].to_math(), s, z, q_min, q_max));
    }
}

/// Inverse over whole groups of one row (`group_size / TQ::PACK` storage
/// units of codes a group).
pub(crate) fn dequantize_groups<TQ: IntElement, TOut: Element>(
    q: &[TQ],
    scale: &[TOut],
    zero_point: &[i32],
    out: &mut [TOut],
    group_size: usize,
) {
    let units = group_size / TQ::PACK;
    let groups = q.chunks_exact(units).zip(out.chunks_exact_mut(group_size));
    for ((qs, os), (&s, &z)) in groups.zip(scale.iter().zip(zero_point)) {
        dequantize_run(qs, s.to_f64(), z, os);
    }
}

/// Straight-through backward over whole groups of one row.
#[allow(clippy::too_many_arguments)]
pub(crate) fn quantize_backward_groups<T: Element>(
    dy: &[T],
    x: &[T],
    scale: &[T],
    zero_point: &[i32],
    out: &mut [T],
    group_size: usize,
    q_min: i32,
    q_max: i32,
    boundary: SteBoundary,
) {
    let inputs = dy.chunks_exact(group_size).zip(x.chunks_exact(group_size));
    let groups = inputs.zip(out.chunks_exact_mut(group_size));
    for (((dys, xs), os), (&s, &z)) in groups.zip(scale.iter().zip(zero_point)) {
        quantize_backward_run(dys, xs, s.to_f64(), z, os, q_min, q_max, boundary);
    }
}

/// Dequantize backward over whole groups of one row.
pub(crate) fn dequantize_backward_groups<T: Element>(
    dy: &[T],
    scale: &[T],
    out: &mut [T],
    group_size: usize,
) {
    let groups = dy
        .chunks_exact(group_size)
        .zip(out.chunks_exact_mut(group_size));
    for ((dys, os), &s) in groups.zip(scale) {
        dequantize_backward_run(dys, s.to_f64(), os);
    }
}

/// Inverse of one run of codes sharing scale `s` (a value of the math
/// type, so the conversion below is exact) and zero point `z`.
pub(crate) fn dequantize_run<TQ: IntElement, TOut: Element>(
    q: &[TQ],
    s: f64,
    z: i32,
    out: &mut [TOut],
) {
    let s = <TOut::Math as MathFloat>::from_f64(s);
    for (i, o) in out.iter_mut().enumerate() {
        *o = TOut::from_math(dequantize(TQ::read_code(q, i), z, s));
    }
}

/// Straight-through backward of one run sharing scale `s` (a value of the
/// math type) and zero point `z`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn quantize_backward_run<T: Element>(
    dy: &[T],
    x: &[T],
    s: f64,
    z: i32,
    out: &mut [T],
    q_min: i32,
    q_max: i32,
    boundary: SteBoundary,
) {
    let s = <T::Math as MathFloat>::from_f64(s);
    for ((o, &dy), &x) in out.iter_mut().zip(dy).zip(x) {
        let g = quantize_grad(dy.to_math(), x.to_math(), s, z, q_min, q_max, boundary);
        *o = T::from_math(g);
    }
}

/// Dequantize backward of one run sharing scale `s` (a value of the math
/// type).
pub(crate) fn dequantize_backward_run<T: Element>(dy: &[T], s: f64, out: &mut [T]) {
    let s = <T::Math as MathFloat>::from_f64(s);
    for (o, &dy) in out.iter_mut().zip(dy) {
        *o = T::from_math(dequantize_grad(dy.to_math(), s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_consequences() {
        // NaN input with a nonzero scale gives clamp(0), not clamp(z).
        assert_eq!(quantize(f32::NAN, 1.0, 5, -8, 7), 0);
        // A zero scale gives clamp(z).
        assert_eq!(quantize(123.0f32, 0.0, 5, -8, 7), 5);
        assert_eq!(quantize(123.0f32, -0.0, 50, -8, 7), 7);
        // A negative scale flips signs.
        assert_eq!(quantize(3.0f32, -1.0, 0, -8, 7), -3);
        // Ties go to even, after the zero point is added.
        assert_eq!(quantize(2.5f32, 1.0, 0, -8, 7), 2);
        assert_eq!(quantize(0.5f32, 1.0, 1, -8, 7), 2);
        assert_eq!(quantize(-0.5f32, 1.0, 0, -8, 7), 0);
        // Infinities saturate, then clamp.
        assert_eq!(quantize(f64::INFINITY, 1.0, 0, -128, 127), 127);
        assert_eq!(round_saturating(f32::NEG_INFINITY), i32::MIN);
    }

    #[test]
    fn ste_mask_uses_the_forward_t() {
        // t = 6.5 + 1 = 7.5 → r = 8: outside [-8, 7] in both modes.
        assert_eq!(
            quantize_grad(1.0f32, 6.5, 1.0, 1, -8, 7, SteBoundary::Inclusive),
            0.0
        );
        // t = 6.4 → r = 6: inside both.
        assert_eq!(
            quantize_grad(2.0f32, 6.4, 2.0, 3, -8, 7, SteBoundary::Exclusive),
            1.0
        );
        // r = 7 = q_max: inside only when inclusive.
        assert_eq!(
            quantize_grad(1.0f32, 7.0, 1.0, 0, -8, 7, SteBoundary::Exclusive),
            0.0
        );
        assert_eq!(
            quantize_grad(1.0f32, 7.0, 1.0, 0, -8, 7, SteBoundary::Inclusive),
            1.0
        );
        // NaN t is never inside, even when the saturated r = 0 would be.
        assert_eq!(
            quantize_grad(1.0f32, f32::NAN, 1.0, 0, -8, 7, SteBoundary::Inclusive),
            0.0
        );
    }

    #[test]
    fn dequantize_difference_is_exact() {
        assert_eq!(dequantize(i32::MAX, i32::MIN, 1.0f64), 4294967295.0);
        assert_eq!(dequantize(-3, 2, 0.5f32), -2.5);
    }
}
