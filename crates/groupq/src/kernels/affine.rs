//! The element arithmetic of every quantize formula, the one scalar core
//! behind the recipe engine's general path and the affine plans: the
//! rounded value `r` of an element, its code, its fake-quantized value,
//! its dequantized value and its straight-through mask, each under an
//! [`AffineFormula`] fixed at `select`.
//!
//! Values travel as f64 holding values of the arithmetic's dtype exactly;
//! every operation is rounded by [`Arith`] as the formula's dtype would
//! round it.

#[cfg(test)]
use super::recipe::rne;
use super::recipe::{codes_into, round, Arith, FormulaKernel, VectorRecipe, CHUNK};
use super::{FormulaParams, GroupExtremes};
use crate::affine::{AffineFormula, CodeConversion, ZeroScale};
use crate::element::ElementKind;
use crate::element::{Element, IntElement};
use crate::recipe::{Recipe, Rounding, ScaleApplication, ZeroPointStage};

/// 2^63: an f64 at or beyond it (in magnitude) has no int64 value.
const TWO_63: f64 = 9_223_372_036_854_775_808.0;
/// FBGEMM's clamp before its float → i32 conversion (the largest f32 below 2^31).
const FBGEMM_MAX: f64 = 2_147_483_520.0;

/// An [`AffineFormula`] with its arithmetic resolved for one input dtype.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AffineKernel {
    pub f: AffineFormula,
    /// The quantize arithmetic.
    pub a: Arith,
    /// The arithmetic of `(q − z) · s`.
    pub d: Arith,
}

impl AffineKernel {
    pub fn new(f: AffineFormula, input: ElementKind) -> AffineKernel {
        AffineKernel {
            f,
            a: Arith(Recipe::arithmetic_kind(f.quantize.arithmetic, input)),
            d: Arith(Recipe::arithmetic_kind(f.dequantize_arithmetic, input)),
        }
    }

    /// The zero point as the formula adds it: an integer as `M(z)` (f32
    /// below f64, SPEC §3.1), a float zero point as given.
    #[inline(always)]
    pub fn zero_point(&self, z: i32) -> f64 {
        if self.a.0 == ElementKind::F64 {
            f64::from(z)
        } else {
            f64::from(z as f32)
        }
    }

    /// The scale as the formula uses it.
    #[inline(always)]
    fn scale(&self, s: f64) -> f64 {
        if self.f.scale_to_arithmetic {
            self.a.r(s)
        } else {
            s
        }
    }

    /// The rounded, unclamped value `r` of `x` with scale `s`, zero point
    /// `zf` (from [`zero_point`](Self::zero_point), or a float zero point)
    /// and float offset (subtracted first; 0 for none). Under
    /// [`CodeConversion::Fbgemm`] the zero point is left out (it is added in
    /// i32 by [`code`](Self::code)). NaN where the arithmetic gives NaN.
    #[inline(always)]
    pub fn rounded(&self, x: f64, s: f64, zf: f64, offset: f64) -> f64 {
        let (f, a) = (&self.f.quantize, self.a);
        let x = a.r(x);
        let x = if offset != 0.0 { a.sub(x, offset) } else { x };
        let s = self.scale(s);
        // ggml's `x * id + 8.5`: the half and the zero point are one
        // constant, itself computed in the math type.
        let half_up =
            f.rounding == Rounding::HalfUp && f.zero_point_stage == ZeroPointStage::BeforeRounding;
        let c = match (half_up, a.0 == ElementKind::F64) {
            (false, _) => zf,
            (true, true) => zf + 0.5,
            (true, false) => f64::from(zf as f32 + 0.5),
        };
        let zero = s == 0.0 && self.f.zero_scale == ZeroScale::Zero;
        if f.scale_application == ScaleApplication::ReciprocalMultiplyFused && !zero {
            // x * (1/s) + c with one rounding of the sum: the product of two
            // f32 values is exact in f64, and the f64 sum is then rounded to
            // the dtype (what an FMA-contracting build computes, except for
            // a sum that f64 cannot hold and that lands on a tie of the
            // dtype, about 2^-29 of random inputs). f64 arithmetic rounds
            // the product and the sum.
            let t = a.r(x * a.div(1.0, s) + c);
            return if half_up {
                t.trunc()
            } else {
                round(f.rounding, a, t)
            };
        }
        let v = if zero {
            0.0
        } else {
            match f.scale_application {
                ScaleApplication::Divide => a.div(x, s),
                _ => a.mul(x, a.div(1.0, s)),
            }
        };
        match f.zero_point_stage {
            ZeroPointStage::BeforeRounding if half_up => a.add(v, c).trunc(),
            ZeroPointStage::BeforeRounding => round(f.rounding, a, a.add(v, zf)),
            ZeroPointStage::AfterRounding if self.f.conversion == CodeConversion::Fbgemm => {
                round(f.rounding, a, v)
            }
            ZeroPointStage::AfterRounding => a.add(round(f.rounding, a, v), zf),
        }
    }

    /// The code of a rounded value `r` (from [`rounded`](Self::rounded)),
    /// in `[lo, hi]`; `z` is the integer zero point (used by FBGEMM's
    /// conversion only).
    #[inline(always)]
    pub fn code(&self, r: f64, z: i32, lo: i32, hi: i32) -> i32 {
        let clamp = |v: f64| v.clamp(f64::from(lo), f64::from(hi)) as i32;
        match self.f.conversion {
            CodeConversion::Saturate => clamp(if r.is_nan() { 0.0 } else { r }),
            CodeConversion::CastAfterClamp | CodeConversion::NanPropagates => {
                if r.is_nan() {
                    0
                } else {
                    clamp(r)
                }
            }
            CodeConversion::NanToMin => {
                if r.is_nan() {
                    lo
                } else {
                    clamp(r)
                }
            }
            CodeConversion::Int64Cast => {
                if r.abs() < TWO_63 {
                    clamp(r)
                } else {
                    lo
                }
            }
            CodeConversion::Fbgemm => {
                let m = if r.is_nan() {
                    FBGEMM_MAX
                } else {
                    r.min(FBGEMM_MAX)
                };
                let i = if m >= f64::from(i32::MIN) {
                    m as i32
                } else {
                    i32::MIN
                };
                i.wrapping_add(z).clamp(lo, hi)
            }
        }
    }

    /// The code of `x` with scale `s` and zero point `z` (`zf` as the
    /// formula adds it), in `[lo, hi]`: [`rounded`](Self::rounded) then
    /// [`code`](Self::code).
    #[inline(always)]
    pub fn code_of(&self, x: f64, s: f64, (z, zf): (i32, f64), lo: i32, hi: i32) -> i32 {
        self.code(self.rounded(x, s, zf, 0.0), z, lo, hi)
    }

    /// Whether `r` lies inside `[lo, hi]` (`inclusive`) or `(lo, hi)`: the
    /// straight-through mask. NaN is never inside.
    #[inline(always)]
    pub fn inside(r: f64, lo: i32, hi: i32, inclusive: bool) -> bool {
        let (lo, hi) = (f64::from(lo), f64::from(hi));
        if inclusive {
            lo <= r && r <= hi
        } else {
            lo < r && r < hi
        }
    }

    /// `(q − z) · s` in the dequantize arithmetic: the difference exact for
    /// an integer zero point (then rounded to the arithmetic, as
    /// `M(q − z)`), in f64 for a float one.
    #[inline(always)]
    pub fn dequantized(&self, q: i32, zf: f64, s: f64) -> f64 {
        let d = self.d;
        d.mul(d.r(f64::from(q) - zf), self.scale(s))
    }

    /// The fake-quantized value of `x`: its code dequantized, or NaN where
    /// the formula passes NaN through. Also gives the mask's `r`.
    #[inline(always)]
    pub fn fake(&self, x: f64, s: f64, z: i32, zf: f64, lo: i32, hi: i32) -> (f64, f64) {
        let r = self.rounded(x, s, zf, 0.0);
        if r.is_nan() && self.f.conversion == CodeConversion::NanPropagates {
            return (f64::NAN, r);
        }
        (self.dequantized(self.code(r, z, lo, hi), zf, s), r)
    }
}

/// The recipe engine's vector codes kernels for an affine formula on inputs
/// `T`, where they compute the element core's codes: the formula has a
/// vector form, and its conversion agrees with SPEC's on every value a
/// finite group with a finite non-zero scale can produce (NaN is then
/// impossible; ±inf and huge values saturate in all of them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AffineVector<T> {
    formula: FormulaKernel,
    vector: VectorRecipe<T>,
}

impl<T: Element> AffineVector<T> {
    /// The kernels of backend `b` for `k`'s formula and codes `Q`, if any.
    pub fn new<Q: IntElement>(
        k: &AffineKernel,
        input: ElementKind,
        b: crate::plan::BackendKind,
    ) -> Option<Self> {
        let agrees = matches!(
            k.f.conversion,
            CodeConversion::Saturate
                | CodeConversion::CastAfterClamp
                | CodeConversion::NanPropagates
                | CodeConversion::NanToMin
        );
        if !agrees || Q::PACK != 1 {
            return None;
        }
        let formula = FormulaKernel::new(k.f.quantize, input);
        let vector = formula.vector::<T, Q>(b)?;
        vector.codes?;
        Some(AffineVector { formula, vector })
    }
}

/// The codes of one run of contiguous values sharing scale `s` and zero
/// point `z` (`zf` as the formula adds it): by the vector kernel where the
/// run is finite and the scale is one the vector formula takes (finite,
/// non-zero, exact in f32, and unchanged by the formula's rounding of the
/// scale), by the element core otherwise. Both give the same codes.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn quantize_run<T: Element, Q: IntElement>(
    k: &AffineKernel,
    vector: Option<&AffineVector<T>>,
    xs: &[T],
    (s, z, zf): (f64, i32, f64),
    out: &mut [Q],
    (lo, hi): (i32, i32),
    bytes: &mut [u8; CHUNK],
) {
    if let Some(v) = vector {
        let (mut e, mut p) = (GroupExtremes::default(), FormulaParams::default());
        let scale_kept = !k.f.scale_to_arithmetic || k.a.r(s).to_bits() == s.to_bits();
        if scale_kept
            && (v.vector.extremes)(xs, &mut e)
            && v.formula
                .formula_params(s, z, 0.0, e.max.max(-e.min), (lo, hi), &mut p)
        {
            if let Some(codes) = v.vector.codes {
                codes_into(codes, xs, &p, out, bytes);
                return;
            }
        }
    }
    for (x, q) in xs.iter().zip(out.iter_mut()) {
        *q = Q::from_i32_in_range(k.code_of(x.to_f64(), s, (z, zf), lo, hi));
    }
}

/// Round half to even of an f64, re-exported for the affine kernels' tests.
#[cfg(test)]
pub(crate) fn round_even(v: f64) -> f64 {
    rne(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(f: AffineFormula) -> AffineKernel {
        AffineKernel::new(f, ElementKind::F32)
    }

    #[test]
    fn conversions_of_non_finite_values() {
        let nan = f64::NAN;
        let inf = f64::INFINITY;
        let sat = k(AffineFormula::TORCH_DECOMPOSED);
        assert_eq!(sat.code(nan, 0, -128, 127), 0);
        assert_eq!(sat.code(inf, 0, -128, 127), 127);
        assert_eq!(sat.code(-inf, 0, -128, 127), -128);
        let fmin = k(AffineFormula::TORCH_FAKE_QUANTIZE_PER_TENSOR);
        assert_eq!(fmin.code(nan, 0, -128, 127), -128);
        assert_eq!(fmin.code(inf, 0, -128, 127), 127);
        let cast = k(AffineFormula::TORCH_FAKE_QUANTIZE_PER_CHANNEL);
        for v in [nan, inf, -inf, 1e19, -1e19] {
            assert_eq!(cast.code(v, 0, -128, 127), -128, "{v}");
        }
        assert_eq!(cast.code(1e18, 0, -128, 127), 127);
        let fb = k(AffineFormula::TORCH_QUANTIZE_PER_TENSOR);
        // NaN acts as +inf, and the i32 add wraps for a zero point ≥ 128.
        assert_eq!(fb.code(nan, 3, 0, 255), 255);
        assert_eq!(fb.code(inf, 131, 0, 255), 0);
        assert_eq!(fb.code(inf, 127, 0, 255), 255);
        assert_eq!(fb.code(-inf, 5, 0, 255), 0);
        assert_eq!(fb.code(10.0, 5, 0, 255), 15);
    }

    #[test]
    fn zero_scales() {
        // SPEC: v = 0, the code is clamp(z).
        let spec = k(AffineFormula::SPEC);
        let r = spec.rounded(5.0, 0.0, 3.0, 0.0);
        assert_eq!(spec.code(r, 3, -8, 7), 3);
        // PyTorch: 1/0 = inf, 0 · inf = NaN → 0, ±x → ±inf.
        let t = k(AffineFormula::TORCH_DECOMPOSED);
        assert_eq!(t.code(t.rounded(0.0, 0.0, 3.0, 0.0), 3, -8, 7), 0);
        assert_eq!(t.code(t.rounded(5.0, 0.0, 3.0, 0.0), 3, -8, 7), 7);
        assert_eq!(t.code(t.rounded(-5.0, 0.0, 3.0, 0.0), 3, -8, 7), -8);
        // A subnormal f32 scale: its reciprocal overflows f32.
        let s = f64::from(f32::from_bits(1));
        assert_eq!(t.code(t.rounded(1e-30, s, 0.0, 0.0), 0, -8, 7), 7);
    }

    #[test]
    fn reciprocal_and_zero_point_stage() {
        // 2.45 · fl32(1/0.02) is a tie in f32 (122.5 → 122); 2.45 / 0.02 is not.
        let (x, s) = (f64::from(2.45f32), f64::from(0.02f32));
        let t = k(AffineFormula::TORCH_DECOMPOSED);
        assert_eq!(t.rounded(x, s, 0.0, 0.0), 122.0);
        let spec = k(AffineFormula::SPEC);
        assert_eq!(spec.rounded(x, s, 0.0, 0.0), 123.0);
        // A zero point after rounding: rne(0.5) + 1 = 1; before: rne(1.5) = 2.
        assert_eq!(t.rounded(0.5, 1.0, 1.0, 0.0), 1.0);
        assert_eq!(spec.rounded(0.5, 1.0, 1.0, 0.0), 2.0);
        assert_eq!(round_even(2.5), 2.0);
    }

    #[test]
    fn fake_values_and_nan() {
        let t = k(AffineFormula::TORCH_DECOMPOSED_FAKE_QUANT);
        let (y, r) = t.fake(f64::NAN, 0.5, 1, 1.0, -8, 7);
        assert!(y.is_nan() && r.is_nan());
        let p = k(AffineFormula::TORCH_FAKE_QUANTIZE_PER_TENSOR);
        // NaN → q_min: (−8 − 1) · 0.5.
        assert_eq!(p.fake(f64::NAN, 0.5, 1, 1.0, -8, 7).0, -4.5);
        assert_eq!(p.fake(1.0, 0.5, 1, 1.0, -8, 7).0, 1.0);
        assert!(!AffineKernel::inside(f64::NAN, -8, 7, true));
        assert!(AffineKernel::inside(7.0, -8, 7, true));
        assert!(!AffineKernel::inside(7.0, -8, 7, false));
    }
}
