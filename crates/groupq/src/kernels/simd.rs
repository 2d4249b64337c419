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
use super::{FormulaParams, GroupExtremes};
use crate::element::sealed::FloatSealed;
use crate::element::{Element, IntElement, MathFloat};
use crate::plan::SteBoundary;

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
    /// Whether [`div_fma_f`](Isa::div_fma_f) uses fused multiply-adds
    /// (else it divides, and the fast path is pointless).
    const HAS_FMA: bool;
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

    unsafe fn sub_f(a: Self::F, b: Self::F) -> Self::F;
    /// `x / s` correctly rounded, by Markstein's correction from `inv =
    /// RN(1 / s)` with fused multiply-adds: `q = RN(x * inv)`, `r = x - q s`
    /// (exact), `RN(q + r * inv)`. Equal to `div_f` when no step
    /// overflows or underflows: the caller bounds `|s|` and `|x / s|`
    /// (see `FormulaParams::fast_divide`). Instruction sets without FMA
    /// divide.
    unsafe fn div_fma_f(x: Self::F, s: Self::F, inv: Self::F) -> Self::F;
    /// [`round_bf16_f`](Isa::round_bf16_f) for lanes that are not NaN.
    unsafe fn round_bf16_nonan_f(a: Self::F) -> Self::F;
    /// Round toward zero; ±inf pass through.
    unsafe fn trunc_f(a: Self::F) -> Self::F;
    /// Round half away from zero for non-NaN lanes; ±inf pass through.
    unsafe fn round_away_f(a: Self::F) -> Self::F;
    /// The low byte of each `i32` lane, `LANES` bytes.
    unsafe fn store_low_bytes(p: *mut u8, v: Self::I);
    /// Four vectors of codes in `[-128, 255]`, in order: the low byte of
    /// each lane (`4 * LANES` bytes), or with `NIB` the low nibbles of
    /// lane pairs, the first in the low half (`2 * LANES` bytes).
    unsafe fn store_codes4<const NIB: bool>(p: *mut u8, v: [Self::I; 4]);
    /// Each 16-bit lane of sign-magnitude bits (a bf16 or f16) as an `i16`
    /// in the order of the values: `v ^ ((v >> 15) & 0x7fff)` (arithmetic
    /// shift), so negative values reverse their magnitude bits.
    unsafe fn key16(v: Self::I) -> Self::I;
    /// Lane-wise `i16` minimum and maximum.
    unsafe fn min16(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn max16(a: Self::I, b: Self::I) -> Self::I;
    /// Lane-wise `i32` maximum and sum (wrapping).
    unsafe fn max_i(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn add_i(a: Self::I, b: Self::I) -> Self::I;
    /// Values in `i32` range to `i32`, rounding toward zero.
    unsafe fn trunc_to_i(a: Self::F) -> Self::I;

    /// `4 * LANES` bytes as an integer vector, and back.
    unsafe fn load_i(p: *const u8) -> Self::I;
    unsafe fn store_i(p: *mut u8, v: Self::I);
    unsafe fn or_i(a: Self::I, b: Self::I) -> Self::I;
    /// All ones in each `width`-byte lane (2 or 4) of `w` whose bits under
    /// `mask` (the lane's exponent field, repeated in both halves of a
    /// 32-bit word for 2-byte lanes) are all set.
    unsafe fn exp_all_ones(w: Self::I, mask: u32, width: usize) -> Self::I;
    /// Whether any bit of `a` is set.
    unsafe fn any_i(a: Self::I) -> bool;

    /// A lane mask, from the compares below: all-ones/all-zeros lanes of an
    /// `F` on SSE4.1 and AVX2, a k-mask on AVX-512.
    type M: Copy;
    /// Ordered compares (false where either lane is NaN), as C's `<`, `>`
    /// and `==` on floats.
    unsafe fn lt_f(a: Self::F, b: Self::F) -> Self::M;
    unsafe fn gt_f(a: Self::F, b: Self::F) -> Self::M;
    unsafe fn eq_f(a: Self::F, b: Self::F) -> Self::M;
    unsafe fn and_m(a: Self::M, b: Self::M) -> Self::M;
    /// `m ? a : b` lane by lane.
    unsafe fn select_f(m: Self::M, a: Self::F, b: Self::F) -> Self::F;
    unsafe fn select_i(m: Self::M, a: Self::I, b: Self::I) -> Self::I;
    /// `|a|` (the sign bit cleared, NaN kept) and the correctly rounded
    /// square root.
    unsafe fn abs_f(a: Self::F) -> Self::F;
    unsafe fn sqrt_f(a: Self::F) -> Self::F;
    /// Lane-wise `i32` minimum.
    unsafe fn min_i(a: Self::I, b: Self::I) -> Self::I;
    /// ggml's `nearest_int`, bit for bit for every input: the low 23 bits
    /// of `a + 12582912` (rounded to nearest even) minus `0x400000`.
    unsafe fn nearest_int_f(a: Self::F) -> Self::I;

    /// `LANES` codes, sign- or zero-extended; for packed codes
    /// (`Q::PACK == 2`) the `LANES / 2` storage units at `p`.
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
    // Packed codes: `gs` is even, as is every multiple of `LANES`, so a
    // vector's codes start a storage unit.
    let units = gs / Q::PACK;
    for (g, (&s, &z)) in scale.iter().zip(zero_point).enumerate() {
        let (qs, os) = (&q[g * units..][..units], &mut out[g * gs..][..gs]);
        dequantize_run_f32::<S, Q, T>(qs, s.to_math(), z, os);
    }
}

/// The inverse of one run of codes sharing the f32 scale `s` and zero
/// point `z` (the runs of the per-group and affine plans).
#[inline(always)]
pub(crate) unsafe fn dequantize_run_f32<S: Isa, Q: IntElement, T: F32Lanes<S>>(
    qs: &[Q],
    s: f32,
    z: i32,
    os: &mut [T],
) {
    let n = os.len();
    let full = if z.unsigned_abs() <= EXACT_ZERO_POINT {
        n - n % S::LANES
    } else {
        0
    };
    let (vs, vz) = (S::splat_f(s), S::splat_i(z));
    // `q - z` is finite, so only a NaN or infinite scale can give NaN.
    let canon = !s.is_finite();
    let mut k = 0;
    while k < full {
        let d = S::i_to_f(S::sub_i(S::load_codes(qs.as_ptr().add(k / Q::PACK)), vz));
        let y = S::mul_f(d, vs);
        T::store(
            os.as_mut_ptr().add(k),
            if canon { S::canon_nan_f(y) } else { y },
        );
        k += S::LANES;
    }
    for (i, o) in os.iter_mut().enumerate().skip(full) {
        *o = T::from_math(scalar::dequantize(Q::read_code(qs, i), z, s));
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
    let units = gs / Q::PACK;
    for (g, (&s, &z)) in scale.iter().zip(zero_point).enumerate() {
        let (qs, os) = (&q[g * units..][..units], &mut out[g * gs..][..gs]);
        dequantize_run_f64::<S, Q>(qs, s, z, os);
    }
}

/// The inverse of one run of codes to f64 outputs.
#[inline(always)]
pub(crate) unsafe fn dequantize_run_f64<S: Isa, Q: IntElement>(
    qs: &[Q],
    s: f64,
    z: i32,
    os: &mut [f64],
) {
    let half = S::LANES / 2;
    let n = os.len();
    let full = n - n % S::LANES;
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
        let (a, b) = S::i_to_dd(S::load_codes(qs.as_ptr().add(k / Q::PACK)));
        let p = os.as_mut_ptr().add(k);
        S::store_d(p, y(a));
        S::store_d(p.add(half), y(b));
        k += S::LANES;
    }
    for (i, o) in os.iter_mut().enumerate().skip(full) {
        *o = f64::from_math(scalar::dequantize(Q::read_code(qs, i), z, s));
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
    for (g, (&s, &z)) in scale.iter().zip(zero_point).enumerate() {
        let range = g * gs..(g + 1) * gs;
        let (dys, xs, os) = (&dy[range.clone()], &x[range.clone()], &mut out[range]);
        quantize_backward_run_f32::<S, T>(dys, xs, s.to_math(), z, os, q_min, q_max, boundary);
    }
}

/// The straight-through gradient of one run sharing the f32 scale `s`
/// and zero point `z`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn quantize_backward_run_f32<S: Isa, T: F32Lanes<S>>(
    dys: &[T],
    xs: &[T],
    s: f32,
    z: i32,
    os: &mut [T],
    q_min: i32,
    q_max: i32,
    boundary: SteBoundary,
) {
    if s == 0.0 {
        os.fill(T::from_math(0.0));
        return;
    }
    let n = os.len();
    let full = if q_min < -EXACT_CODE || q_max > EXACT_CODE {
        0
    } else {
        n - n % S::LANES
    };
    let incl = boundary == SteBoundary::Inclusive;
    let (lo, hi) = (S::splat_f(q_min as f32), S::splat_f(q_max as f32));
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
        let grad = scalar::quantize_grad(dy.to_math(), x.to_math(), s, z, q_min, q_max, boundary);
        *o = T::from_math(grad);
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
    for (g, (&s, &z)) in scale.iter().zip(zero_point).enumerate() {
        let range = g * gs..(g + 1) * gs;
        let (dys, xs, os) = (&dy[range.clone()], &x[range.clone()], &mut out[range]);
        quantize_backward_run_f64::<S>(dys, xs, s, z, os, q_min, q_max, boundary);
    }
}

/// The straight-through gradient of one run of f64 values.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn quantize_backward_run_f64<S: Isa>(
    dys: &[f64],
    xs: &[f64],
    s: f64,
    z: i32,
    os: &mut [f64],
    q_min: i32,
    q_max: i32,
    boundary: SteBoundary,
) {
    if s == 0.0 {
        os.fill(0.0);
        return;
    }
    let half = S::LANES / 2;
    let n = os.len();
    let full = if q_min < -EXACT_CODE || q_max > EXACT_CODE {
        0
    } else {
        n - n % half
    };
    let incl = boundary == SteBoundary::Inclusive;
    let (lo, hi) = (S::splat_d(q_min.into()), S::splat_d(q_max.into()));
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

/// Dequantize backward (SPEC §3.4) for f32-math tensors.
#[inline(always)]
pub(crate) unsafe fn dequantize_backward_f32<S: Isa, T: F32Lanes<S>>(
    dy: &[T],
    scale: &[T],
    out: &mut [T],
    gs: usize,
) {
    for (g, &s) in scale.iter().enumerate() {
        let (dys, os) = (&dy[g * gs..][..gs], &mut out[g * gs..][..gs]);
        dequantize_backward_run_f32::<S, T>(dys, s.to_math(), os);
    }
}

/// The dequantize gradient of one run sharing the f32 scale `s`.
#[inline(always)]
pub(crate) unsafe fn dequantize_backward_run_f32<S: Isa, T: F32Lanes<S>>(
    dys: &[T],
    s: f32,
    os: &mut [T],
) {
    let n = os.len();
    let full = n - n % S::LANES;
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

/// Dequantize backward for f64 tensors.
#[inline(always)]
pub(crate) unsafe fn dequantize_backward_f64<S: Isa>(
    dy: &[f64],
    scale: &[f64],
    out: &mut [f64],
    gs: usize,
) {
    for (g, &s) in scale.iter().enumerate() {
        let (dys, os) = (&dy[g * gs..][..gs], &mut out[g * gs..][..gs]);
        dequantize_backward_run_f64::<S>(dys, s, os);
    }
}

/// The dequantize gradient of one run of f64 values.
#[inline(always)]
pub(crate) unsafe fn dequantize_backward_run_f64<S: Isa>(dys: &[f64], s: f64, os: &mut [f64]) {
    let half = S::LANES / 2;
    let n = os.len();
    let full = n - n % half;
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
    /// One run of [`dequantize`](Self::dequantize) with the scale `s`, a
    /// value of the math type (the caller checks that it is one).
    unsafe fn dequantize_run<Q: IntElement>(q: &[Q], s: f64, z: i32, o: &mut [Self]);
    /// One run of [`quantize_backward`](Self::quantize_backward) (scale as
    /// in [`dequantize_run`](Self::dequantize_run)).
    #[allow(clippy::too_many_arguments)]
    unsafe fn quantize_backward_run(
        dy: &[Self],
        x: &[Self],
        s: f64,
        z: i32,
        o: &mut [Self],
        lo: i32,
        hi: i32,
        b: SteBoundary,
    );
    /// One run of [`dequantize_backward`](Self::dequantize_backward).
    unsafe fn dequantize_backward_run(dy: &[Self], s: f64, o: &mut [Self]);
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
    #[inline(always)]
    unsafe fn dequantize_run<Q: IntElement>(q: &[Q], s: f64, z: i32, o: &mut [T]) {
        dequantize_run_f32::<S, Q, T>(q, s as f32, z, o)
    }
    #[inline(always)]
    unsafe fn quantize_backward_run(
        dy: &[T],
        x: &[T],
        s: f64,
        z: i32,
        o: &mut [T],
        lo: i32,
        hi: i32,
        b: SteBoundary,
    ) {
        quantize_backward_run_f32::<S, T>(dy, x, s as f32, z, o, lo, hi, b)
    }
    #[inline(always)]
    unsafe fn dequantize_backward_run(dy: &[T], s: f64, o: &mut [T]) {
        dequantize_backward_run_f32::<S, T>(dy, s as f32, o)
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
    #[inline(always)]
    unsafe fn dequantize_run<Q: IntElement>(q: &[Q], s: f64, z: i32, o: &mut [f64]) {
        dequantize_run_f64::<S, Q>(q, s, z, o)
    }
    #[inline(always)]
    unsafe fn quantize_backward_run(
        dy: &[f64],
        x: &[f64],
        s: f64,
        z: i32,
        o: &mut [f64],
        lo: i32,
        hi: i32,
        b: SteBoundary,
    ) {
        quantize_backward_run_f64::<S>(dy, x, s, z, o, lo, hi, b)
    }
    #[inline(always)]
    unsafe fn dequantize_backward_run(dy: &[f64], s: f64, o: &mut [f64]) {
        dequantize_backward_run_f64::<S>(dy, s, o)
    }
}

/// Rounding of f32 lanes to a recipe's arithmetic dtype: the vector form
/// and the one-lane form of the same operation.
pub(crate) trait LaneRound<S: Isa> {
    /// The dtype rounded to (values of it are left as they are).
    const KIND: crate::element::ElementKind;
    unsafe fn rd(v: S::F) -> S::F;
    /// [`rd`](LaneRound::rd) for lanes that are not NaN.
    unsafe fn rdf(v: S::F) -> S::F {
        Self::rd(v)
    }
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
    unsafe fn rdf(v: S::F) -> S::F {
        S::round_bf16_nonan_f(v)
    }
    #[inline(always)]
    fn rd1(v: f32) -> f32 {
        crate::element::round_to_bf16(v)
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
        crate::element::round_to_f16(v)
    }
}

/// `LANES` values rounded by `R`: a value of `R`'s dtype already is one.
#[inline(always)]
unsafe fn load_rounded<S: Isa, T: F32Lanes<S>, R: LaneRound<S>>(p: *const T) -> S::F {
    let v = T::load(p);
    // Every f16 and bf16 value is an f32.
    if T::KIND == R::KIND || R::KIND == crate::element::ElementKind::F32 {
        v
    } else {
        R::rd(v)
    }
}

/// Whether a run of values holds a NaN or an infinity, from the raw bits:
/// an exponent field of all ones. `T` is 2 or 4 bytes wide; `exp` is its
/// exponent mask (`0x7f80` bf16, `0x7c00` f16, `0x7f80_0000` f32).
#[inline(always)]
pub(crate) unsafe fn recipe_non_finite<S: Isa, T: F32Lanes<S>>(xs: &[T]) -> bool {
    let width = std::mem::size_of::<T>();
    let bytes = std::mem::size_of_val(xs);
    let p = xs.as_ptr().cast::<u8>();
    // Whole vectors of `LANES` 32-bit words; the mask covers both halves of
    // a word for 16-bit types.
    let word_mask = match T::KIND {
        crate::element::ElementKind::Bf16 => 0x7f80_7f80u32,
        crate::element::ElementKind::F16 => 0x7c00_7c00,
        _ => 0x7f80_0000,
    };
    let step = 4 * S::LANES;
    let full = bytes - bytes % step;
    let mut any = S::splat_i(0);
    let mut k = 0;
    while k < full {
        any = S::or_i(any, S::exp_all_ones(S::load_i(p.add(k)), word_mask, width));
        k += step;
    }
    if S::any_i(any) {
        return true;
    }
    let done = full / width;
    xs[done..].iter().any(|x| !x.to_math().is_finite())
}

/// The extremes of a run of values after rounding to `R` (the recipe's
/// arithmetic), written to `e`; `false` when a value is NaN or infinite,
/// or rounds to an infinity (the scalar engine then takes the group).
/// Rounding is monotone, so the extremes of the rounded values are the
/// rounded extremes: the loop reads the values as they are and writes
/// nothing. `ABS`: also the first value of largest magnitude after
/// rounding (ggml's rule), else `signed_absmax` is 0. Which zero a `±0`
/// extreme carries is left open.
#[inline(always)]
pub(crate) unsafe fn recipe_extremes<S: Isa, T: F32Lanes<S>, R: LaneRound<S>, const ABS: bool>(
    xs: &[T],
    e: &mut GroupExtremes,
) -> bool
where
    f32: F32Lanes<S>,
{
    if std::mem::size_of::<T>() == 2 {
        return recipe_extremes16::<S, T, R, ABS>(xs, e);
    }
    let n = xs.len();
    let full = n - n % S::LANES;
    let (mut mn0, mut mn1) = (S::splat_f(f32::INFINITY), S::splat_f(f32::INFINITY));
    let (mut mx0, mut mx1) = (S::splat_f(f32::NEG_INFINITY), S::splat_f(f32::NEG_INFINITY));
    let mut flag = S::splat_f(0.0);
    let p = xs.as_ptr();
    let mut k = 0;
    while k + 2 * S::LANES <= full {
        let a = T::load(p.add(k));
        let b = T::load(p.add(k + S::LANES));
        (mn0, mx0) = (S::min_f(mn0, a), S::max_f(mx0, a));
        (mn1, mx1) = (S::min_f(mn1, b), S::max_f(mx1, b));
        // `v - v` is NaN exactly for NaN and ±inf.
        flag = S::add_f(flag, S::add_f(S::sub_f(a, a), S::sub_f(b, b)));
        k += 2 * S::LANES;
    }
    if k < full {
        let a = T::load(p.add(k));
        (mn0, mx0) = (S::min_f(mn0, a), S::max_f(mx0, a));
        flag = S::add_f(flag, S::sub_f(a, a));
    }
    let mut lanes = [[0f32; 16]; 3];
    <f32 as F32Lanes<S>>::store(lanes[0].as_mut_ptr(), S::min_f(mn0, mn1));
    <f32 as F32Lanes<S>>::store(lanes[1].as_mut_ptr(), S::max_f(mx0, mx1));
    <f32 as F32Lanes<S>>::store(lanes[2].as_mut_ptr(), flag);
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    let [mins, maxs, flags] = &lanes;
    for ((&a, &b), &f) in mins.iter().zip(maxs).zip(flags).take(S::LANES) {
        if f.is_nan() {
            return false;
        }
        lo = lo.min(a);
        hi = hi.max(b);
    }
    for x in &xs[full..] {
        let v = x.to_math();
        if !v.is_finite() {
            return false;
        }
        lo = lo.min(v);
        hi = hi.max(v);
    }
    extremes_found::<S, T, R, ABS>(xs, lo, hi, e)
}

/// The end of both extremes kernels: the raw extremes `lo`, `hi` of `xs`
/// (finite) rounded by `R` and written to `e`, with the first value of
/// largest rounded magnitude for `ABS`; `false` when rounding overflows.
#[inline(always)]
fn extremes_found<S: Isa, T: F32Lanes<S>, R: LaneRound<S>, const ABS: bool>(
    xs: &[T],
    lo: f32,
    hi: f32,
    e: &mut GroupExtremes,
) -> bool {
    let (lo, hi) = (R::rd1(lo), R::rd1(hi));
    if !(lo.is_finite() && hi.is_finite()) {
        return false;
    }
    let mut signed_absmax = 0.0;
    if ABS {
        // The first value whose rounded magnitude is the group's largest
        // (none when every value is a zero: then +0).
        let amax = hi.max(-lo);
        if amax > 0.0 {
            match xs
                .iter()
                .map(|x| R::rd1(x.to_math()))
                .find(|v| v.abs() == amax)
            {
                Some(v) => signed_absmax = v,
                None => return false,
            }
        }
    }
    e.min = lo;
    e.max = hi;
    e.signed_absmax = signed_absmax;
    true
}

/// [`recipe_extremes`] for 16-bit values (bf16, f16), on their bits: each
/// value's [`key16`](Isa::key16) orders like the value (`-0` just below
/// `+0`), so the extremes are an integer minimum and maximum over twice
/// the lanes, and a NaN or an infinity is a key at or beyond the
/// infinities'.
#[inline(always)]
unsafe fn recipe_extremes16<S: Isa, T: F32Lanes<S>, R: LaneRound<S>, const ABS: bool>(
    xs: &[T],
    e: &mut GroupExtremes,
) -> bool {
    let n = xs.len();
    let per = 2 * S::LANES;
    let full = n - n % per;
    let key = |bits: u16| (bits ^ ((((bits as i16) >> 15) as u16) & 0x7fff)) as i16;
    let p = xs.as_ptr().cast::<u8>();
    let (mut mn, mut mx) = (S::splat_i(0x7fff_7fff), S::splat_i(0x8000_8000u32 as i32));
    let mut k = 0;
    while k < full {
        let v = S::key16(S::load_i(p.add(2 * k)));
        mn = S::min16(mn, v);
        mx = S::max16(mx, v);
        k += per;
    }
    let mut lanes = [[0i16; 32]; 2];
    S::store_i(lanes[0].as_mut_ptr().cast(), mn);
    S::store_i(lanes[1].as_mut_ptr().cast(), mx);
    let mut lo = lanes[0][..per].iter().copied().min().unwrap_or(i16::MAX);
    let mut hi = lanes[1][..per].iter().copied().max().unwrap_or(i16::MIN);
    for i in full..n {
        // SAFETY (of the read): `i < n`, and `T` is two bytes.
        let bits = p.add(2 * i).cast::<u16>().read_unaligned();
        lo = lo.min(key(bits));
        hi = hi.max(key(bits));
    }
    let inf: u16 = match T::KIND {
        crate::element::ElementKind::F16 => 0x7c00,
        _ => 0x7f80,
    };
    if n == 0 || hi >= inf as i16 || lo <= key(0x8000 | inf) {
        return false;
    }
    // A key back to its value: the key is its own inverse.
    let value = |k: i16| {
        let bits = key(k as u16) as u16;
        (&bits as *const u16).cast::<T>().read_unaligned().to_math()
    };
    extremes_found::<S, T, R, ABS>(xs, value(lo), value(hi), e)
}

pub(crate) use super::finish;

/// How the scale is applied, as a const parameter of the codes kernels.
mod apply {
    /// `x / s`, the divider's correctly rounded quotient.
    pub const DIVIDE: u8 = 0;
    /// `x / s` by [`Isa::div_fma_f`](super::Isa::div_fma_f): the same value.
    pub const DIVIDE_FMA: u8 = 1;
    /// `x * rd(1 / s)`.
    pub const RECIPROCAL: u8 = 2;
}

/// The splatted parameters of one group for the codes kernels.
#[derive(Clone, Copy)]
struct Splat<S: Isa> {
    s: S::F,
    inv: S::F,
    c: S::F,
    offset: S::F,
    /// `hi` as a float, for the clamp before the conversion.
    hi: S::F,
    /// `lo` as an integer, for the clamp after it.
    lo: S::I,
    /// `EVEN_AFTER`: `hi - z`, `lo - z` and `z`.
    hi_c: S::F,
    lo_c: S::I,
    c_i: S::I,
}

impl<S: Isa> Splat<S> {
    #[inline(always)]
    unsafe fn new(p: &FormulaParams) -> Self {
        Splat {
            s: S::splat_f(p.s),
            inv: S::splat_f(p.inv),
            c: S::splat_f(p.c),
            offset: S::splat_f(p.offset),
            hi: S::splat_f(p.hi),
            lo: S::splat_i(p.lo as i32),
            hi_c: S::splat_f(p.hi - p.c),
            lo_c: S::splat_i((p.lo - p.c) as i32),
            c_i: S::splat_i(p.c as i32),
        }
    }
}

/// `LANES` codes of the formula from values rounded to the arithmetic.
/// No lane is NaN; quotients may be ±inf.
///
/// The clamp to `[lo, hi]` is split around the conversion, which rounds
/// (half to even, or toward zero for half-up): clamping to integers and
/// rounding commute, so `min(v, hi)` first keeps the conversion in range
/// from above, and what lies below `i32` converts to `i32::MIN`, which
/// `max(., lo)` then clamps as it should.
#[inline(always)]
unsafe fn recipe_step<S: Isa, R: LaneRound<S>, const APP: u8, const FIN: u8, const OFF: bool>(
    x: S::F,
    k: &Splat<S>,
) -> S::I {
    let x = if OFF {
        R::rdf(S::sub_f(x, k.offset))
    } else {
        x
    };
    let v = match APP {
        apply::DIVIDE => R::rdf(S::div_f(x, k.s)),
        apply::DIVIDE_FMA => R::rdf(S::div_fma_f(x, k.s, k.inv)),
        _ => R::rdf(S::mul_f(x, k.inv)),
    };
    // Two roundings of the one-lane form are left out where they cannot
    // change a code:
    // - `rd(v + z)` with `z == 0` (`*_ZERO`) is `v` (`-0` becomes `+0`,
    //   which gives the same code);
    // - `rd(round(v) + z)`: the sum is an integer, exact in bf16/f16 up to
    //   256/2048 in magnitude; beyond, rounding keeps it beyond on the same
    //   side, and the clamp to a code range inside `[-256, 256]` (the codes
    //   are at most 8 bits) gives the same code. So the code is
    //   `clamp(round(v), lo - z, hi - z) + z`, all in integers.
    match FIN {
        finish::EVEN_BEFORE => S::max_i(
            S::round_to_i(S::min_f(R::rdf(S::add_f(v, k.c)), k.hi)),
            k.lo,
        ),
        finish::EVEN_AFTER => {
            let r = S::max_i(S::round_to_i(S::min_f(v, k.hi_c)), k.lo_c);
            S::add_i(r, k.c_i)
        }
        finish::AWAY_BEFORE => {
            let r = S::round_away_f(R::rdf(S::add_f(v, k.c)));
            S::max_i(S::round_to_i(S::min_f(r, k.hi)), k.lo)
        }
        finish::EVEN_BEFORE_ZERO => S::max_i(S::round_to_i(S::min_f(v, k.hi)), k.lo),
        finish::AWAY_BEFORE_ZERO => {
            S::max_i(S::round_to_i(S::min_f(S::round_away_f(v), k.hi)), k.lo)
        }
        _ => S::max_i(
            S::trunc_to_i(S::min_f(R::rdf(S::add_f(v, k.c)), k.hi)),
            k.lo,
        ),
    }
}

/// The codes of a run of values under a recipe formula: one code's low
/// byte per byte of `out`, or with `NIB` two codes per byte (the first in
/// the low nibble; `xs.len()` is even).
///
/// The values are finite (the extremes kernel checked them) and are
/// rounded to the arithmetic as they are loaded; `p.s` is finite and
/// non-zero and `p.inv` (`rd(1 / s)`) finite, so no step meets a NaN:
/// `±inf` quotients pass the rounding and saturate in the clamp. Every
/// operation is the one the scalar engine performs, rounded by `R` where
/// it rounds, so the codes are bit-identical to it.
#[inline(always)]
pub(crate) unsafe fn recipe_codes<
    S: Isa,
    T: F32Lanes<S>,
    R: LaneRound<S>,
    const DIVIDE: bool,
    const FIN: u8,
    const NIB: bool,
>(
    xs: &[T],
    p: &FormulaParams,
    out: &mut [u8],
) {
    use apply::{DIVIDE as DIV, DIVIDE_FMA as FMA, RECIPROCAL as RECIP};
    use finish::{AWAY_BEFORE, AWAY_BEFORE_ZERO, EVEN_BEFORE, EVEN_BEFORE_ZERO};
    if DIVIDE && S::HAS_FMA && !p.fast_divide {
        // A scale so far out that the fused division could be off: the
        // one-lane form (the divider) for the whole run. No preset meets it
        // on real weights.
        return recipe_codes_one_lane::<S, T, R, FIN, NIB>(xs, p, out, true);
    }
    macro_rules! go {
        ($fin:expr) => {
            match (DIVIDE, S::HAS_FMA, p.offset != 0.0) {
                (true, true, true) => {
                    recipe_codes_run::<S, T, R, FMA, { $fin }, true, NIB>(xs, p, out)
                }
                (true, true, false) => {
                    recipe_codes_run::<S, T, R, FMA, { $fin }, false, NIB>(xs, p, out)
                }
                (true, false, true) => {
                    recipe_codes_run::<S, T, R, DIV, { $fin }, true, NIB>(xs, p, out)
                }
                (true, false, false) => {
                    recipe_codes_run::<S, T, R, DIV, { $fin }, false, NIB>(xs, p, out)
                }
                (false, _, true) => {
                    recipe_codes_run::<S, T, R, RECIP, { $fin }, true, NIB>(xs, p, out)
                }
                (false, _, false) => {
                    recipe_codes_run::<S, T, R, RECIP, { $fin }, false, NIB>(xs, p, out)
                }
            }
        };
    }
    match (FIN, p.c == 0.0) {
        (EVEN_BEFORE, true) => go!(EVEN_BEFORE_ZERO),
        (AWAY_BEFORE, true) => go!(AWAY_BEFORE_ZERO),
        _ => go!(FIN),
    }
}

/// [`recipe_codes`] by [`recipe_code1`] alone.
#[inline(always)]
pub(crate) fn recipe_codes_one_lane<
    S: Isa,
    T: F32Lanes<S>,
    R: LaneRound<S>,
    const FIN: u8,
    const NIB: bool,
>(
    xs: &[T],
    p: &FormulaParams,
    out: &mut [u8],
    divide: bool,
) {
    let code = |x: &T| {
        let x = R::rd1(x.to_math());
        if p.offset != 0.0 {
            recipe_code1::<S, R, FIN, true>(x, p, divide) as u8
        } else {
            recipe_code1::<S, R, FIN, false>(x, p, divide) as u8
        }
    };
    if NIB {
        for (o, pair) in out.iter_mut().zip(xs.chunks_exact(2)) {
            *o = (code(&pair[0]) & 0xf) | (code(&pair[1]) << 4);
        }
    } else {
        for (o, x) in out.iter_mut().zip(xs) {
            *o = code(x);
        }
    }
}

/// [`recipe_codes`] with the scale application and the offset chosen.
#[inline(always)]
unsafe fn recipe_codes_run<
    S: Isa,
    T: F32Lanes<S>,
    R: LaneRound<S>,
    const APP: u8,
    const FIN: u8,
    const OFF: bool,
    const NIB: bool,
>(
    xs: &[T],
    p: &FormulaParams,
    out: &mut [u8],
) {
    let n = xs.len();
    let k = Splat::<S>::new(p);
    let src = xs.as_ptr();
    // A function, not a closure, so that it inherits the caller's target
    // features when inlined.
    #[inline(always)]
    unsafe fn at<
        S: Isa,
        T: F32Lanes<S>,
        R: LaneRound<S>,
        const APP: u8,
        const FIN: u8,
        const OFF: bool,
    >(
        src: *const T,
        k: &Splat<S>,
    ) -> S::I {
        recipe_step::<S, R, APP, FIN, OFF>(load_rounded::<S, T, R>(src), k)
    }
    // Four vectors per step: independent chains keep the units busy, and
    // their codes are narrowed together.
    let step = 4 * S::LANES;
    let full = n - n % step;
    let dst = out.as_mut_ptr();
    let mut i = 0;
    while i < full {
        let v = [
            at::<S, T, R, APP, FIN, OFF>(src.add(i), &k),
            at::<S, T, R, APP, FIN, OFF>(src.add(i + S::LANES), &k),
            at::<S, T, R, APP, FIN, OFF>(src.add(i + 2 * S::LANES), &k),
            at::<S, T, R, APP, FIN, OFF>(src.add(i + 3 * S::LANES), &k),
        ];
        S::store_codes4::<NIB>(dst.add(if NIB { i / 2 } else { i }), v);
        i += step;
    }
    if i == n {
        return;
    }
    // The tail, through a buffer: whole vectors, then single values.
    let rest = n - i;
    let mut tmp = [0u8; 64];
    let mut j = 0;
    while j + S::LANES <= rest {
        S::store_low_bytes(
            tmp.as_mut_ptr().add(j),
            at::<S, T, R, APP, FIN, OFF>(src.add(i + j), &k),
        );
        j += S::LANES;
    }
    let divide = APP != apply::RECIPROCAL;
    for (t, x) in tmp[j..rest].iter_mut().zip(&xs[i + j..]) {
        *t = recipe_code1::<S, R, FIN, OFF>(R::rd1(x.to_math()), p, divide) as u8;
    }
    if NIB {
        for (o, pair) in out[i / 2..n / 2]
            .iter_mut()
            .zip(tmp[..rest].chunks_exact(2))
        {
            *o = (pair[0] & 0xf) | (pair[1] << 4);
        }
    } else {
        out[i..n].copy_from_slice(&tmp[..rest]);
    }
}

/// One code of [`recipe_codes`]: the same steps on one value.
#[inline(always)]
pub(crate) fn recipe_code1<S: Isa, R: LaneRound<S>, const FIN: u8, const OFF: bool>(
    x: f32,
    p: &FormulaParams,
    divide: bool,
) -> i32 {
    let x = if OFF { R::rd1(x - p.offset) } else { x };
    let v = if divide {
        R::rd1(x / p.s)
    } else {
        R::rd1(x * p.inv)
    };
    let r = match FIN {
        finish::EVEN_BEFORE | finish::EVEN_BEFORE_ZERO => R::rd1(v + p.c).round_ties_even(),
        finish::EVEN_AFTER => R::rd1(v.round_ties_even() + p.c),
        finish::AWAY_BEFORE | finish::AWAY_BEFORE_ZERO => R::rd1(v + p.c).round(),
        _ => R::rd1(v + p.c).trunc(),
    };
    r.clamp(p.lo, p.hi) as i32
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
        use crate::plan::SteBoundary;

        #[target_feature(enable = $features)]
        unsafe fn ggml_search_tf(
            kind: crate::kernels::ggml::Search,
            x: &[f32],
            out: &mut crate::kernels::ggml::SearchOut<'_>,
        ) {
            crate::kernels::ggml::search::<$isa>(kind, x, out)
        }

        /// ggml's K-quant scale search over every sub-block of `x`, one
        /// sub-block per lane (see [`crate::kernels::ggml`]); `false`, with
        /// nothing written, where the CPU lacks the features or `out` is
        /// too small.
        pub(crate) fn ggml_search(
            kind: crate::kernels::ggml::Search,
            x: &[f32],
            out: &mut crate::kernels::ggml::SearchOut<'_>,
        ) -> bool {
            let n = kind.len();
            let count = x.len() / n;
            if !available()
                || x.len() % n != 0
                || out.scales.len() < count
                || out.mins.len() < count
                || out.codes.len() < x.len()
                || (kind.weighted() && out.weights.len() != x.len())
            {
                return false;
            }
            // SAFETY: the CPU has the features and the sizes fit (both
            // checked above); the kernel reads inside `x` and writes one
            // entry per sub-block of `out`.
            unsafe { ggml_search_tf(kind, x, out) };
            true
        }

        #[target_feature(enable = $features)]
        unsafe fn recipe_non_finite_tf<T: crate::kernels::simd::F32Lanes<$isa>>(xs: &[T]) -> bool {
            crate::kernels::simd::recipe_non_finite::<$isa, T>(xs)
        }

        /// Whether a run of values holds a NaN or an infinity.
        pub(crate) fn recipe_non_finite<T: crate::kernels::simd::F32Lanes<$isa>>(xs: &[T]) -> bool {
            if !available() {
                return xs.iter().any(|x| !x.to_math().is_finite());
            }
            // SAFETY: the CPU has the features (checked above), and the
            // kernel reads only inside the slice it is given.
            unsafe { recipe_non_finite_tf::<T>(xs) }
        }

        #[target_feature(enable = $features)]
        unsafe fn recipe_extremes_tf<T, R, const ABS: bool>(
            xs: &[T],
            e: &mut crate::kernels::GroupExtremes,
        ) -> bool
        where
            T: crate::kernels::simd::F32Lanes<$isa>,
            R: crate::kernels::simd::LaneRound<$isa>,
        {
            crate::kernels::simd::recipe_extremes::<$isa, T, R, ABS>(xs, e)
        }

        /// The extremes of a run of values rounded to a recipe's
        /// arithmetic, into `e` (`false`: the scalar engine takes the
        /// group).
        pub(crate) fn recipe_extremes<T, R, const ABS: bool>(
            xs: &[T],
            e: &mut crate::kernels::GroupExtremes,
        ) -> bool
        where
            T: crate::kernels::simd::F32Lanes<$isa>,
            R: crate::kernels::simd::LaneRound<$isa>,
        {
            if !available() {
                return false;
            }
            // SAFETY: the CPU has the features (checked above), and the
            // kernel reads only inside `xs`.
            unsafe { recipe_extremes_tf::<T, R, ABS>(xs, e) }
        }

        #[target_feature(enable = $features)]
        unsafe fn recipe_codes_tf<T, R, const D: bool, const F: u8, const N: bool>(
            xs: &[T],
            p: &crate::kernels::FormulaParams,
            out: &mut [u8],
        ) where
            T: crate::kernels::simd::F32Lanes<$isa>,
            R: crate::kernels::simd::LaneRound<$isa>,
        {
            crate::kernels::simd::recipe_codes::<$isa, T, R, D, F, N>(xs, p, out)
        }

        /// The codes of a run of finite values under a recipe formula (see
        /// [`recipe_codes`](crate::kernels::simd::recipe_codes)): one per
        /// byte of `out`, or two (`N`).
        pub(crate) fn recipe_codes<T, R, const D: bool, const F: u8, const N: bool>(
            xs: &[T],
            p: &crate::kernels::FormulaParams,
            out: &mut [u8],
        ) where
            T: crate::kernels::simd::F32Lanes<$isa>,
            R: crate::kernels::simd::LaneRound<$isa>,
        {
            let units = if N { xs.len() / 2 } else { xs.len() };
            if !available() || out.len() < units || (N && xs.len() % 2 != 0) {
                // The one-lane form of the same steps, over what fits.
                return crate::kernels::simd::recipe_codes_one_lane::<$isa, T, R, F, N>(
                    xs, p, out, D,
                );
            }
            // SAFETY: the CPU has the features (checked above); the kernel
            // reads inside `xs` and writes inside `out[..units]`, which
            // exists (checked above).
            unsafe { recipe_codes_tf::<T, R, D, F, N>(xs, p, out) }
        }

        /// The extremes kernel for an arithmetic of kind `round` (`abs`:
        /// with the first largest magnitude).
        pub(crate) fn recipe_extremes_for<T: crate::kernels::simd::F32Lanes<$isa>>(
            round: crate::element::ElementKind,
            abs: bool,
        ) -> Option<crate::kernels::RecipeExtremesKernel<T>> {
            use crate::element::ElementKind as K;
            use crate::kernels::simd::{KeepF32, ToBf16, ToF16};
            Some(match (round, abs) {
                (K::F32, false) => recipe_extremes::<T, KeepF32, false>,
                (K::F32, true) => recipe_extremes::<T, KeepF32, true>,
                (K::Bf16, false) => recipe_extremes::<T, ToBf16, false>,
                (K::Bf16, true) => recipe_extremes::<T, ToBf16, true>,
                (K::F16, false) => recipe_extremes::<T, ToF16, false>,
                (K::F16, true) => recipe_extremes::<T, ToF16, true>,
                _ => return None,
            })
        }

        fn recipe_codes_by<T, R, const N: bool>(
            divide: bool,
            fin: u8,
        ) -> Option<crate::kernels::RecipeCodesKernel<T>>
        where
            T: crate::kernels::simd::F32Lanes<$isa>,
            R: crate::kernels::simd::LaneRound<$isa>,
        {
            use crate::kernels::simd::finish as f;
            Some(match (divide, fin) {
                (true, f::EVEN_BEFORE) => recipe_codes::<T, R, true, { f::EVEN_BEFORE }, N>,
                (true, f::EVEN_AFTER) => recipe_codes::<T, R, true, { f::EVEN_AFTER }, N>,
                (true, f::AWAY_BEFORE) => recipe_codes::<T, R, true, { f::AWAY_BEFORE }, N>,
                (true, f::HALF_UP_BEFORE) => recipe_codes::<T, R, true, { f::HALF_UP_BEFORE }, N>,
                (false, f::EVEN_BEFORE) => recipe_codes::<T, R, false, { f::EVEN_BEFORE }, N>,
                (false, f::EVEN_AFTER) => recipe_codes::<T, R, false, { f::EVEN_AFTER }, N>,
                (false, f::AWAY_BEFORE) => recipe_codes::<T, R, false, { f::AWAY_BEFORE }, N>,
                (false, f::HALF_UP_BEFORE) => recipe_codes::<T, R, false, { f::HALF_UP_BEFORE }, N>,
                _ => return None,
            })
        }

        /// The codes kernel for a formula (`divide` or multiply by the
        /// reciprocal, finishing steps `fin`) in an arithmetic of kind
        /// `round`, one code per byte or two (`nibbles`).
        pub(crate) fn recipe_codes_for<T: crate::kernels::simd::F32Lanes<$isa>>(
            round: crate::element::ElementKind,
            divide: bool,
            fin: u8,
            nibbles: bool,
        ) -> Option<crate::kernels::RecipeCodesKernel<T>> {
            use crate::element::ElementKind as K;
            use crate::kernels::simd::{KeepF32, ToBf16, ToF16};
            match (round, nibbles) {
                (K::F32, false) => recipe_codes_by::<T, KeepF32, false>(divide, fin),
                (K::F32, true) => recipe_codes_by::<T, KeepF32, true>(divide, fin),
                (K::Bf16, false) => recipe_codes_by::<T, ToBf16, false>(divide, fin),
                (K::Bf16, true) => recipe_codes_by::<T, ToBf16, true>(divide, fin),
                (K::F16, false) => recipe_codes_by::<T, ToF16, false>(divide, fin),
                (K::F16, true) => recipe_codes_by::<T, ToF16, true>(divide, fin),
                _ => None,
            }
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

        #[target_feature(enable = $features)]
        unsafe fn dequantize_run_tf<Q: IntElement, T: SimdElement<$isa>>(
            q: &[Q],
            s: f64,
            z: i32,
            o: &mut [T],
        ) {
            <T as SimdElement<$isa>>::dequantize_run::<Q>(q, s, z, o)
        }

        /// Inverse kernel for one run (scale a value of the math type).
        pub(crate) fn dequantize_run<Q: IntElement, T: SimdElement<$isa>>(
            q: &[Q],
            s: f64,
            z: i32,
            o: &mut [T],
        ) {
            if !available() {
                return scalar::dequantize_run(q, s, z, o);
            }
            // SAFETY: as in `quantize`.
            unsafe { dequantize_run_tf::<Q, T>(q, s, z, o) }
        }

        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn quantize_backward_run_tf<T: SimdElement<$isa>>(
            dy: &[T],
            x: &[T],
            s: f64,
            z: i32,
            o: &mut [T],
            lo: i32,
            hi: i32,
            b: SteBoundary,
        ) {
            <T as SimdElement<$isa>>::quantize_backward_run(dy, x, s, z, o, lo, hi, b)
        }

        /// Straight-through backward kernel for one run.
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn quantize_backward_run<T: SimdElement<$isa>>(
            dy: &[T],
            x: &[T],
            s: f64,
            z: i32,
            o: &mut [T],
            lo: i32,
            hi: i32,
            b: SteBoundary,
        ) {
            if !available() {
                return scalar::quantize_backward_run(dy, x, s, z, o, lo, hi, b);
            }
            // SAFETY: as in `quantize`.
            unsafe { quantize_backward_run_tf::<T>(dy, x, s, z, o, lo, hi, b) }
        }

        #[target_feature(enable = $features)]
        unsafe fn dequantize_backward_run_tf<T: SimdElement<$isa>>(dy: &[T], s: f64, o: &mut [T]) {
            <T as SimdElement<$isa>>::dequantize_backward_run(dy, s, o)
        }

        /// Dequantize-backward kernel for one run.
        pub(crate) fn dequantize_backward_run<T: SimdElement<$isa>>(dy: &[T], s: f64, o: &mut [T]) {
            if !available() {
                return scalar::dequantize_backward_run(dy, s, o);
            }
            // SAFETY: as in `quantize`.
            unsafe { dequantize_backward_run_tf::<T>(dy, s, o) }
        }
    };
}
pub(crate) use simd_entry_points;
