//! The scalar arithmetic of recipes: choosing a group's scale and zero point,
//! and quantizing one value with a [`QuantizeFormula`].
//!
//! Values travel as `f64` and every operation is rounded to the arithmetic
//! dtype with [`Arith`]. For f32, f16 and bf16 this gives exactly the
//! correctly rounded operation in that dtype (f64 has more than twice their
//! precision plus two bits, so the double rounding is innocuous), which is
//! also what PyTorch computes when it evaluates a bf16/f16 op in f32 and
//! rounds back.

use super::{FormulaParams, GroupExtremes, RecipeCodesKernel, RecipeExtremesKernel};
use crate::element::{Element, ElementKind, IntElement};
use crate::plan::BackendKind;
use crate::recipe::{
    Eps, EpsPolicy, Mapping, QuantizeFormula, Recipe, Rounding, ScaleApplication, SymmetricDivisor,
    ZeroPointRule, ZeroPointStage,
};

/// Rounding to one arithmetic dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Arith(pub ElementKind);

impl Arith {
    /// `v` rounded to nearest-even in the dtype (NaN stays NaN). f16 and
    /// bf16 go through f32, as PyTorch's ops do (its "opmath" type): for
    /// results of an operation on values of the dtype this is the correctly
    /// rounded result either way, and for a constant (an eps) it is what
    /// PyTorch computes.
    #[inline(always)]
    pub fn r(self, v: f64) -> f64 {
        match self.0 {
            ElementKind::F32 => f64::from(v as f32),
            ElementKind::F16 => f64::from(crate::element::round_to_f16(v as f32)),
            ElementKind::Bf16 => f64::from(crate::element::round_to_bf16(v as f32)),
            _ => v,
        }
    }
    #[inline(always)]
    pub fn add(self, a: f64, b: f64) -> f64 {
        self.r(a + b)
    }
    #[inline(always)]
    pub fn sub(self, a: f64, b: f64) -> f64 {
        self.r(a - b)
    }
    #[inline(always)]
    pub fn mul(self, a: f64, b: f64) -> f64 {
        self.r(a * b)
    }
    #[inline(always)]
    pub fn div(self, a: f64, b: f64) -> f64 {
        self.r(a / b)
    }
}

/// The value of an [`Eps`] for an input of kind `input` whose scale is of
/// kind `scale`.
pub(crate) fn eps_value(eps: Eps, input: ElementKind, scale: ElementKind) -> f64 {
    let smallest_normal = |k| match k {
        ElementKind::F16 => 2f64.powi(-14),
        ElementKind::F64 => f64::MIN_POSITIVE,
        _ => f64::from(f32::MIN_POSITIVE),
    };
    let epsilon = |k| match k {
        ElementKind::F16 => 2f64.powi(-10),
        ElementKind::Bf16 => 2f64.powi(-7),
        ElementKind::F64 => f64::EPSILON,
        _ => f64::from(f32::EPSILON),
    };
    match eps {
        Eps::Value(c) => c.0,
        Eps::SmallestNormal => smallest_normal(input),
        Eps::Epsilon => epsilon(scale),
    }
}

/// Round half to even without a library call: adding 2^52 to a magnitude
/// below 2^52 rounds it to an integer in the FPU's round-to-nearest-even
/// mode (which Rust requires); larger magnitudes, infinities and NaN are
/// already integral or pass through.
#[inline]
pub(crate) fn rne(v: f64) -> f64 {
    const TWO_52: f64 = 4503599627370496.0;
    if v.abs() < TWO_52 {
        ((v.abs() + TWO_52) - TWO_52).copysign(v)
    } else {
        v
    }
}

/// Rounds to an integer-valued float.
#[inline(always)]
pub(crate) fn round(rounding: Rounding, a: Arith, v: f64) -> f64 {
    match rounding {
        Rounding::TiesEven => rne(v),
        Rounding::TiesAway => v.round(),
        Rounding::HalfUp => a.add(v, 0.5).trunc(),
    }
}

/// An integral float (or NaN) to `i32`: NaN → 0 (what an x86 float → int
/// cast gives, and SPEC §3.1's rule), clamped to `[lo, hi]`.
#[inline(always)]
fn to_code(v: f64, lo: i32, hi: i32) -> i32 {
    let v = if v.is_nan() { 0.0 } else { v };
    v.clamp(f64::from(lo), f64::from(hi)) as i32
}

/// A group's extremes in the arithmetic dtype: `min`, `max` (`±0` equal),
/// and the signed value of the first element with the largest magnitude.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Extremes {
    pub min: f64,
    pub max: f64,
    pub signed_absmax: f64,
}

impl Extremes {
    /// No value yet.
    pub const EMPTY: Extremes = Extremes {
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        signed_absmax: 0.0,
    };

    /// Takes one value of the choose arithmetic, in the group's order: the
    /// first of equal values (±0) is kept; a NaN makes every extreme NaN,
    /// for good.
    #[inline(always)]
    pub fn add(&mut self, v: f64) {
        if self.min.is_nan() {
            return;
        }
        if v.is_nan() {
            *self = Extremes {
                min: v,
                max: v,
                signed_absmax: v,
            };
            return;
        }
        if v < self.min {
            self.min = v;
        }
        if v > self.max {
            self.max = v;
        }
        if v.abs() > self.signed_absmax.abs() {
            self.signed_absmax = v;
        }
    }
}

/// A group's `(scale, zero_point, offset)` under `recipe`. The scale and the
/// float offset (0 unless the recipe has one) are values of the arithmetic
/// dtype.
#[inline(always)]
pub(crate) fn choose(recipe: &Recipe, a: Arith, eps: f64, e: Extremes) -> (f64, i32, f64) {
    let (min, max) = (e.min, e.max);
    // A group holding NaN: the peers' `amin`/`amax`, `min(·, 0)` and
    // `clamp(·, eps)` all propagate it, so the scale (and a float offset)
    // is NaN; see `nan_zero_point` for the zero point.
    if min.is_nan() || max.is_nan() {
        let offset = match recipe.zero_point {
            ZeroPointRule::FloatOffset => f64::NAN,
            _ => 0.0,
        };
        return (f64::NAN, nan_zero_point(recipe), offset);
    }
    let (q_min, q_max) = (f64::from(recipe.q_min), f64::from(recipe.q_max));
    let levels = q_max - q_min;
    let clamp_range = |v: f64| match recipe.eps {
        EpsPolicy::ClampRange(_) => a.r(v.max(eps)),
        _ => v,
    };
    // The range the zero point is measured from, and the raw scale.
    let (lo, hi, scale) = match recipe.mapping {
        // `+ 0.0` makes a zero +0: which zero `f64::min`/`max` return for
        // equal zeros is left open, and the peers' absolute maxima are +0.
        Mapping::Symmetric(divisor) => {
            let (lo, hi) = (min.min(0.0) + 0.0, max.max(0.0) + 0.0);
            let amax = clamp_range((-lo).max(hi) + 0.0);
            let divisor = match divisor {
                SymmetricDivisor::HalfRange => levels / 2.0,
                SymmetricDivisor::QMax => q_max,
            };
            (lo, hi, a.div(amax, divisor))
        }
        Mapping::AsymmetricWithZero | Mapping::GptqSymmetric => {
            let (mut lo, mut hi) = (min.min(0.0) + 0.0, max.max(0.0) + 0.0);
            if recipe.mapping == Mapping::GptqSymmetric {
                hi = hi.max(-lo) + 0.0;
                if lo < 0.0 {
                    lo = -hi;
                }
            }
            if recipe.eps == EpsPolicy::UnitRangeForZeroGroup && lo == 0.0 && hi == 0.0 {
                (lo, hi) = (-1.0, 1.0);
            }
            (lo, hi, a.div(clamp_range(a.sub(hi, lo)), levels))
        }
        Mapping::Asymmetric => (min, max, a.div(clamp_range(a.sub(max, min)), levels)),
        Mapping::SignedAbsMax(divisor) => {
            let (lo, hi) = (min.min(0.0) + 0.0, max.max(0.0) + 0.0);
            (lo, hi, a.div(e.signed_absmax, divisor.0))
        }
    };
    let scale = match recipe.eps {
        EpsPolicy::ClampScale(_) => a.r(scale.max(eps)),
        _ => scale,
    };
    let zero_point = match recipe.zero_point {
        ZeroPointRule::Midpoint => (recipe.q_max + recipe.q_min + 1) / 2,
        ZeroPointRule::QMinMinusRoundedMin => {
            let z = a.sub(q_min, rne(a.div(lo, scale)));
            to_code(z, recipe.q_min, recipe.q_max)
        }
        ZeroPointRule::RoundedClampedQMinMinusMin => {
            // NaN (a zero scale, before any replacement) clamps to NaN and
            // casts to 0, as the peer's int8 cast does on x86.
            let z = a.sub(q_min, a.div(lo, scale));
            let z = if z.is_nan() { z } else { z.clamp(q_min, q_max) };
            to_code(rne(z), i32::MIN, i32::MAX)
        }
        ZeroPointRule::RoundedNegatedMin => to_code(rne(a.div(-lo, scale)), i32::MIN, i32::MAX),
        ZeroPointRule::FloatOffset => 0,
        ZeroPointRule::PerTokenAsymmetric => {
            let (dmin, dmax) = (a.div(lo, scale), a.div(hi, scale));
            let error = a.add(a.add(q_min, dmin), a.add(q_max, dmax));
            let z = if error > 0.0 {
                a.sub(q_min, dmin)
            } else {
                a.sub(q_max, dmax)
            };
            // A NaN zero point (an infinite scale: inf / inf) is PyTorch's
            // int64 INT64_MIN, held as i32::MIN (see `nan_zero_point`).
            if z.is_nan() {
                i32::MIN
            } else {
                to_code(rne(z.clamp(q_min, q_max)), i32::MIN, i32::MAX)
            }
        }
    };
    let scale = match recipe.eps {
        EpsPolicy::ReplaceZeroScale(_) if scale == 0.0 => a.r(eps),
        _ => scale,
    };
    let offset = match recipe.zero_point {
        ZeroPointRule::FloatOffset => lo,
        _ => 0.0,
    };
    (scale, zero_point, offset)
}

/// The zero point of a group holding NaN. The peers convert a NaN float
/// zero point to an integer, which C++ leaves undefined; groupq fixes the
/// x86-64 results: PyTorch's per-token rule returns an int64 zero point,
/// `INT64_MIN` there, held as `i32::MIN`; the midpoint rule does not depend
/// on the data; every other rule gives 0 (an int8 conversion on x86).
pub(crate) fn nan_zero_point(recipe: &Recipe) -> i32 {
    match recipe.zero_point {
        ZeroPointRule::Midpoint => (recipe.q_max + recipe.q_min + 1) / 2,
        ZeroPointRule::PerTokenAsymmetric => i32::MIN,
        _ => 0,
    }
}

/// One code under `formula`: `clamp(round(apply(x, s) ⊕ z))`, every
/// operation rounded by `a`; a zero scale gives `v = 0` (SPEC §3.1) and a
/// NaN becomes 0 before the clamp. The arithmetic is the affine core's
/// ([`AffineKernel`](super::affine::AffineKernel)), with SPEC's zero-scale
/// and conversion rules.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn quantize(
    f: &QuantizeFormula,
    a: Arith,
    x: f64,
    s: f64,
    z: i32,
    offset: f64,
    q_min: i32,
    q_max: i32,
) -> i32 {
    let k = super::affine::AffineKernel {
        f: crate::affine::AffineFormula::from_quantize(*f),
        a,
        d: a,
    };
    let r = k.rounded(x, s, k.zero_point(z), offset);
    k.code(r, z, q_min, q_max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    #[test]
    fn fast_round_half_even() {
        for v in [
            0.5,
            1.5,
            2.5,
            -0.5,
            -2.5,
            0.49999999999999994,
            3.7,
            -3.2,
            4503599627370495.5,
            1e300,
        ] {
            assert_eq!(rne(v).to_bits(), v.round_ties_even().to_bits(), "{v}");
        }
        assert!(rne(f64::NAN).is_nan());
        assert_eq!(rne(-0.3).to_bits(), (-0.0f64).to_bits());
        assert_eq!(rne(f64::NEG_INFINITY), f64::NEG_INFINITY);
    }

    /// The f32 fast path equals the general f64-emulated path, value by
    /// value, over ties, extremes, NaN, infinities and subnormals.
    #[test]
    fn f32_fast_path_equals_the_general_path() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let specials = [
            0.0f32,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            2.5,
            -3.5,
            8388607.5,
        ];
        for _ in 0..2000 {
            let xs: Vec<f32> = (0..64)
                .map(|i| match next() % 4 {
                    0 => specials[i % specials.len()],
                    1 => ((next() % 64) as f32 - 32.0 + 0.5) * 0.125,
                    _ => f32::from_bits(next() as u32),
                })
                .collect();
            let s = match next() % 5 {
                0 => 0.0,
                1 => 0.125,
                2 => -0.3,
                _ => f32::from_bits((next() as u32 & 0x3fff_ffff) | 0x0080_0000),
            };
            let z = (next() % 40) as i32 - 20;
            for (app, divide) in [
                (ScaleApplication::Divide, true),
                (ScaleApplication::ReciprocalMultiply, false),
            ] {
                for (stage, before) in [
                    (ZeroPointStage::BeforeRounding, true),
                    (ZeroPointStage::AfterRounding, false),
                ] {
                    let f = QuantizeFormula {
                        scale_application: app,
                        zero_point_stage: stage,
                        rounding: Rounding::TiesEven,
                        arithmetic: crate::recipe::Arithmetic::Math,
                    };
                    let g = (s, z, divide, before);
                    let mut fast = [vec![0i8; 64], vec![0i8; 64], vec![0i8; 64]];
                    quantize_group_f32(&xs, g, |v| v, &mut fast[0], -128, 127);
                    let to_bf16 = |v: f32| bf16::from_f32(v).to_f32();
                    quantize_group_f32(&xs, g, to_bf16, &mut fast[1], -128, 127);
                    let to_f16 = |v: f32| f16::from_f32(v).to_f32();
                    quantize_group_f32(&xs, g, to_f16, &mut fast[2], -128, 127);
                    let kinds = [ElementKind::F32, ElementKind::Bf16, ElementKind::F16];
                    for (k, kind) in kinds.into_iter().enumerate() {
                        let a = Arith(kind);
                        // Scales are values of the dtype where it is used.
                        if a.r(f64::from(s)) != f64::from(s) {
                            continue;
                        }
                        for (i, &x) in xs.iter().enumerate() {
                            let general =
                                quantize(&f, a, f64::from(x), f64::from(s), z, 0.0, -128, 127);
                            let what = format!("{kind:?}: x {x:e} s {s:e} z {z} {app:?} {stage:?}");
                            assert_eq!(i32::from(fast[k][i]), general, "{what}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn arithmetic_rounds_per_dtype() {
        let bf = Arith(ElementKind::Bf16);
        assert_eq!(bf.div(1.0, 3.0), f64::from(bf16::from_f64(1.0 / 3.0)));
        assert_eq!(Arith(ElementKind::F32).add(1.0, 1e-9), 1.0);
        assert_eq!(Arith(ElementKind::F64).add(1.0, 1e-9), 1.0 + 1e-9);
    }

    #[test]
    fn formulas_differ_where_the_peers_do() {
        let spec = QuantizeFormula::SPEC;
        let after = QuantizeFormula {
            zero_point_stage: ZeroPointStage::AfterRounding,
            ..spec
        };
        let f32a = Arith(ElementKind::F32);
        // x/s = 0.5 exactly, z = 7: round(0.5 + 7) = 8, round(0.5) + 7 = 7.
        assert_eq!(quantize(&spec, f32a, 0.5, 1.0, 7, 0.0, 0, 15), 8);
        assert_eq!(quantize(&after, f32a, 0.5, 1.0, 7, 0.0, 0, 15), 7);
        let away = QuantizeFormula {
            rounding: Rounding::TiesAway,
            ..spec
        };
        assert_eq!(quantize(&away, f32a, 2.5, 1.0, 0, 0.0, -8, 7), 3);
        assert_eq!(quantize(&spec, f32a, 2.5, 1.0, 0, 0.0, -8, 7), 2);
    }

    fn ext(min: f64, max: f64) -> Extremes {
        let signed_absmax = if -min > max { min } else { max };
        Extremes {
            min,
            max,
            signed_absmax,
        }
    }

    #[test]
    fn gptq_symmetric_keeps_non_negative_groups_one_sided() {
        let r = Recipe::gptq(true, 4);
        let f32a = Arith(ElementKind::F32);
        assert_eq!(
            choose(&r, f32a, 0.0, ext(0.0, 1.5)),
            (f64::from(1.5f32 / 15.0), 8, 0.0)
        );
        assert_eq!(
            choose(&r, f32a, 0.0, ext(-1.5, 1.0)),
            (f64::from(3.0f32 / 15.0), 8, 0.0)
        );
        assert_eq!(
            choose(&r, f32a, 0.0, ext(0.0, 0.0)),
            (f64::from(2.0f32 / 15.0), 8, 0.0)
        );
    }
}

/// A quantize formula bound to its arithmetic dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FormulaKernel {
    pub formula: QuantizeFormula,
    pub arith: Arith,
}

/// The scale as f32 when the f32 paths (scalar and vector) can take a
/// group's `(scale, zero_point, offset)`: the scale exact in f32, the zero
/// point exact in f32 (`|z| <= 2^24`), no offset.
pub(crate) fn f32_scale(s: f64, z: i32, offset: f64) -> Option<f32> {
    let s32 = s as f32;
    (f64::from(s32).to_bits() == s.to_bits() && z.unsigned_abs() <= 1 << 24 && offset == 0.0)
        .then_some(s32)
}

impl FormulaKernel {
    /// The formula as the f32 paths take it, `(arithmetic dtype, divide,
    /// zero point before rounding)`, when it rounds ties to even and divides
    /// or multiplies by the reciprocal (not the fused reciprocal-add).
    pub fn f32_form(&self) -> Option<(ElementKind, bool, bool)> {
        let f = &self.formula;
        let divide = match f.scale_application {
            ScaleApplication::Divide => true,
            ScaleApplication::ReciprocalMultiply => false,
            ScaleApplication::ReciprocalMultiplyFused => return None,
        };
        let before = f.zero_point_stage == ZeroPointStage::BeforeRounding;
        (f.rounding == Rounding::TiesEven).then_some((self.arith.0, divide, before))
    }

    /// The formula's vector form, `(divide, finishing steps)`, when a
    /// vector codes kernel computes it: the fused reciprocal-add (one
    /// rounding of an f64 sum) stays scalar, as do the rounding/stage pairs
    /// no preset uses.
    pub fn vector_form(&self) -> Option<(bool, u8)> {
        use super::finish as fin;
        let f = &self.formula;
        let divide = match f.scale_application {
            ScaleApplication::Divide => true,
            ScaleApplication::ReciprocalMultiply => false,
            ScaleApplication::ReciprocalMultiplyFused => return None,
        };
        let finish = match (f.rounding, f.zero_point_stage) {
            (Rounding::TiesEven, ZeroPointStage::BeforeRounding) => fin::EVEN_BEFORE,
            (Rounding::TiesEven, ZeroPointStage::AfterRounding) => fin::EVEN_AFTER,
            (Rounding::TiesAway, ZeroPointStage::BeforeRounding) => fin::AWAY_BEFORE,
            (Rounding::HalfUp, ZeroPointStage::BeforeRounding) => fin::HALF_UP_BEFORE,
            _ => return None,
        };
        Some((divide, finish))
    }

    /// The vector kernels backend `b` has for this formula on inputs `T`
    /// and codes `Q` of at most 8 bits: the extremes kernel (for the
    /// division's range check) and the codes kernel.
    pub fn vector<T: Element, Q: IntElement>(&self, b: BackendKind) -> Option<VectorRecipe<T>> {
        let (divide, fin) = self.vector_form()?;
        let round = self.arith.0;
        let extremes = super::recipe_extremes::<T>(b, round, false)?;
        let codes = Some(super::recipe_codes::<T>(
            b,
            round,
            divide,
            fin,
            Q::PACK == 2,
        )?);
        Some(VectorRecipe { extremes, codes })
    }

    /// The vector formula's values for a group with scale `s`, zero point
    /// `z` and offset, whose values are at most `amax` in magnitude, codes
    /// in `[lo, hi]`, when the vector kernel can take them: all exact in f32
    /// (`|z| < 2^22`, so `z + 0.5` is too), `s` finite and non-zero,
    /// `rd(1 / s)` finite.
    pub fn formula_params(
        &self,
        s: f64,
        z: i32,
        offset: f64,
        amax: f32,
        (lo, hi): (i32, i32),
        p: &mut FormulaParams,
    ) -> bool {
        let (s32, m32) = (s as f32, offset as f32);
        let exact = f64::from(s32).to_bits() == s.to_bits() && f64::from(m32) == offset;
        // The reciprocal the formula multiplies by is rounded to its
        // arithmetic; the one a division's FMA correction starts from must be
        // the f32 reciprocal (a bf16/f16 one leaves the corrected quotient an
        // ulp off in rare cases: f16 0.5 / 0.99951 gave 0.5, code 0, not 1).
        let inv = match self.formula.scale_application {
            ScaleApplication::Divide => 1.0 / s32,
            _ => self.arith.r(1.0 / s) as f32,
        };
        if !exact
            || z.unsigned_abs() >= 1 << 22
            || !s32.is_finite()
            || s32 == 0.0
            || !inv.is_finite()
        {
            return false;
        }
        let f = &self.formula;
        let half_up =
            f.rounding == Rounding::HalfUp && f.zero_point_stage == ZeroPointStage::BeforeRounding;
        // See `FormulaParams::fast_divide`; the offset's subtraction can at
        // most add its magnitude.
        const LO: f32 = f32::from_bits((127 - 96) << 23); // 2^-96
        const HI: f32 = f32::from_bits((127 + 96) << 23); // 2^96
        const REACH: f64 = f64::from_bits((1023 + 120) << 52); // 2^120
        let a = s32.abs();
        let reach = f64::from(amax) + offset.abs();
        p.fast_divide = (LO..=HI).contains(&a) && reach < f64::from(a) * REACH;
        p.s = s32;
        p.inv = inv;
        p.c = if half_up { z as f32 + 0.5 } else { z as f32 };
        p.offset = m32;
        p.lo = lo as f32;
        p.hi = hi as f32;
        true
    }

    /// [`quantize_groups`](Self::quantize_groups) with the vector kernels
    /// of `vector`: per group, the codes kernel where the values are
    /// finite and the formula takes the group's scale, the scalar path
    /// otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn quantize_groups_vector<T: Element, Q: IntElement>(
        &self,
        vector: &VectorRecipe<T>,
        x: &[T],
        scale: &[T],
        zero_point: &[i32],
        out: &mut [Q],
        gs: usize,
        (q_min, q_max): (i32, i32),
    ) {
        let mut bytes = [0u8; CHUNK];
        let (mut e, mut p) = (GroupExtremes::default(), FormulaParams::default());
        let units = gs / Q::PACK;
        let groups = x.chunks_exact(gs).zip(out.chunks_exact_mut(units));
        for ((xs, os), (&s, &z)) in groups.zip(scale.iter().zip(zero_point)) {
            let s = s.to_f64();
            let ready = (vector.extremes)(xs, &mut e)
                && self.formula_params(s, z, 0.0, e.max.max(-e.min), (q_min, q_max), &mut p);
            match vector.codes {
                Some(codes) if ready => codes_into(codes, xs, &p, os, &mut bytes),
                _ => self.quantize_group(xs, s, z, 0.0, os, q_min, q_max),
            }
        }
    }

    pub fn new(formula: QuantizeFormula, input: ElementKind) -> FormulaKernel {
        FormulaKernel {
            formula,
            arith: Arith(Recipe::arithmetic_kind(formula.arithmetic, input)),
        }
    }

    /// The codes of whole groups of one row, as the scalar forward kernels
    /// take them: `scale.len()` groups of `gs` elements.
    #[allow(clippy::too_many_arguments)]
    pub fn quantize_groups<T: Element, Q: IntElement>(
        &self,
        x: &[T],
        scale: &[f64],
        zero_point: &[i32],
        out: &mut [Q],
        gs: usize,
        q_min: i32,
        q_max: i32,
    ) {
        let groups = x.chunks_exact(gs).zip(out.chunks_exact_mut(gs / Q::PACK));
        for ((xs, os), (&s, &z)) in groups.zip(scale.iter().zip(zero_point)) {
            self.quantize_group(xs, s, z, 0.0, os, q_min, q_max);
        }
    }

    /// The codes of one group with scale `s`, zero point `z` and float offset.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn quantize_group<T: Element, Q: IntElement>(
        &self,
        xs: &[T],
        s: f64,
        z: i32,
        offset: f64,
        out: &mut [Q],
        q_min: i32,
        q_max: i32,
    ) {
        if let (Some((kind, divide, before)), Some(s32)) =
            (self.f32_form(), f32_scale(s, z, offset))
        {
            let g = (s32, z, divide, before);
            match kind {
                ElementKind::F32 => return quantize_group_f32(xs, g, |v| v, out, q_min, q_max),
                ElementKind::Bf16 => {
                    let rd = crate::element::round_to_bf16;
                    return quantize_group_f32(xs, g, rd, out, q_min, q_max);
                }
                ElementKind::F16 => {
                    let rd = crate::element::round_to_f16;
                    return quantize_group_f32(xs, g, rd, out, q_min, q_max);
                }
                _ => {}
            }
        }
        Q::write_codes(out, |i| {
            quantize(
                &self.formula,
                self.arith,
                xs[i].to_f64(),
                s,
                z,
                offset,
                q_min,
                q_max,
            )
        });
    }
}

/// Round half to even in f32 without a library call (see [`rne`]).
#[inline(always)]
fn rne32(v: f32) -> f32 {
    const TWO_23: f32 = 8388608.0;
    if v.abs() < TWO_23 {
        ((v.abs() + TWO_23) - TWO_23).copysign(v)
    } else {
        v
    }
}

/// [`quantize`] for f32, f16 or bf16 arithmetic (`rd` rounds an f32 to the
/// dtype), ties-to-even rounding, no offset and a scale and zero point exact
/// in f32, computed in f32: an operation on values of the dtype computed in
/// f32 and rounded by `rd` is the correctly rounded one, which is what the
/// f64-then-round path yields.
#[inline(always)]
fn quantize_group_f32<T: Element, Q: IntElement>(
    xs: &[T],
    (s, z, divide, before): (f32, i32, bool, bool),
    rd: impl Fn(f32) -> f32 + Copy,
    out: &mut [Q],
    q_min: i32,
    q_max: i32,
) {
    let (zf, inv) = (z as f32, rd(1.0 / s));
    let (lo, hi) = (q_min as f32, q_max as f32);
    Q::write_codes(out, |i| {
        let x = rd(xs[i].to_f64() as f32);
        let v = if s == 0.0 {
            0.0
        } else if divide {
            rd(x / s)
        } else {
            rd(x * inv)
        };
        let r = if before {
            rne32(rd(v + zf))
        } else {
            rd(rne32(v) + zf)
        };
        let r = if r.is_nan() { 0.0 } else { r };
        r.clamp(lo, hi) as i32
    });
}

/// Codes written per call of a codes kernel (through a buffer of this many
/// bytes).
pub(crate) const CHUNK: usize = 1024;
/// Most groups taken together by the vector recipe kernels.
const BATCH: usize = 16;

/// The vector kernels of a recipe on one backend, chosen at `select`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VectorRecipe<T> {
    /// The group's extremes after rounding to the arithmetic.
    pub extremes: RecipeExtremesKernel<T>,
    /// The codes, where the formula has a vector form.
    pub codes: Option<RecipeCodesKernel<T>>,
}

/// The codes of one group by the codes kernel, into `out`'s storage units
/// through `bytes`, [`CHUNK`] values at a time.
#[inline]
pub(crate) fn codes_into<T, Q: IntElement>(
    codes: RecipeCodesKernel<T>,
    xs: &[T],
    p: &FormulaParams,
    out: &mut [Q],
    bytes: &mut [u8; CHUNK],
) {
    for (xs, out) in xs.chunks(CHUNK).zip(out.chunks_mut(CHUNK / Q::PACK)) {
        let bytes = &mut bytes[..out.len()];
        codes(xs, p, bytes);
        for (o, &b) in out.iter_mut().zip(bytes.iter()) {
            *o = Q::from_unit_byte(b);
        }
    }
}

/// A recipe bound to its input and scale dtypes: what the recipe plans run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RecipeKernel {
    pub recipe: Recipe,
    choose: Arith,
    quant: FormulaKernel,
    eps_bits: u64,
}

impl RecipeKernel {
    pub fn new(recipe: Recipe, input: ElementKind, scale: ElementKind) -> RecipeKernel {
        let eps = match recipe.eps {
            EpsPolicy::ClampScale(e)
            | EpsPolicy::ReplaceZeroScale(e)
            | EpsPolicy::ClampRange(e) => eps_value(e, input, scale),
            _ => 0.0,
        };
        RecipeKernel {
            recipe,
            choose: Arith(Recipe::arithmetic_kind(recipe.choose_arithmetic, input)),
            quant: FormulaKernel::new(recipe.quantize, input),
            eps_bits: eps.to_bits(),
        }
    }

    /// The index of the first group of `xs` (groups of `gs`) holding NaN or
    /// an infinity.
    pub fn first_non_finite<T: Element>(xs: &[T], gs: usize) -> Option<usize> {
        xs.chunks_exact(gs)
            .position(|g| g.iter().any(|x| !x.to_f64().is_finite()))
    }

    /// The dtype the recipe computes its codes in (the quantize formula's
    /// arithmetic).
    pub fn arithmetic_kind(&self) -> ElementKind {
        self.quant.arith.0
    }

    /// The formula's vector form (see [`FormulaKernel::vector_form`]); the
    /// values the codes kernel takes are rounded to the choose arithmetic,
    /// so both arithmetics must agree.
    fn vector_form(&self) -> Option<(bool, u8)> {
        if self.quant.arith != self.choose {
            return None;
        }
        self.quant.vector_form()
    }

    /// The vector kernels backend `b` has for this recipe on inputs `T`
    /// (`nibbles`: codes two per byte; `with_codes`: the codes kernel too,
    /// where the formula has one), or `None` when it has no extremes
    /// kernel.
    pub fn vector<T: Element>(
        &self,
        b: BackendKind,
        with_codes: bool,
        nibbles: bool,
    ) -> Option<VectorRecipe<T>> {
        let round = self.choose.0;
        let abs = matches!(self.recipe.mapping, Mapping::SignedAbsMax(_));
        let extremes = super::recipe_extremes::<T>(b, round, abs)?;
        let codes = with_codes
            .then(|| self.vector_form())
            .flatten()
            .and_then(|(divide, fin)| super::recipe_codes::<T>(b, round, divide, fin, nibbles));
        Some(VectorRecipe { extremes, codes })
    }

    /// [`params`](Self::params) from the extremes the extremes kernel found,
    /// or `None` where they cannot stand for the group: with a float
    /// offset a zero minimum is the offset, and the scalar engine fixes
    /// which zero it is.
    fn params_from(&self, e: &GroupExtremes) -> Option<(f64, i32, f64)> {
        if self.recipe.zero_point == ZeroPointRule::FloatOffset && e.min == 0.0 {
            return None;
        }
        let e = Extremes {
            min: f64::from(e.min),
            max: f64::from(e.max),
            signed_absmax: f64::from(e.signed_absmax),
        };
        Some(choose(
            &self.recipe,
            self.choose,
            f64::from_bits(self.eps_bits),
            e,
        ))
    }

    /// The vector formula's values for a group (see
    /// [`FormulaKernel::formula_params`]).
    fn formula_params(
        &self,
        s: f64,
        z: i32,
        offset: f64,
        amax: f32,
        p: &mut FormulaParams,
    ) -> bool {
        let range = (self.recipe.q_min, self.recipe.q_max);
        self.quant.formula_params(s, z, offset, amax, range, p)
    }

    /// Chooses and stores the parameters of every group of one row, and
    /// its codes when `codes` is given: per group the vector kernels where
    /// `vector` has them and the group's values allow (finite values, a
    /// scale the vector formula takes), the scalar engine otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn run_row<T: Element, TScale: Element, Q: IntElement>(
        &self,
        vector: Option<&VectorRecipe<T>>,
        xs: &[T],
        gs: usize,
        scale: &mut [TScale],
        zero_point: &mut [i32],
        mut codes: Option<&mut [Q]>,
        mut offset: Option<&mut [TScale]>,
    ) {
        let mut bytes = [0u8; CHUNK];
        // Per group of a batch, in plain arrays (no `Option` of a struct:
        // the kernels' field stores then forward to the reads here).
        let mut extremes = [GroupExtremes::default(); BATCH];
        let mut found = [false; BATCH];
        let mut params = [FormulaParams::default(); BATCH];
        let mut vectorized = [false; BATCH];
        let mut chosen = [(0.0, 0, 0.0); BATCH];
        let units = gs / Q::PACK;
        // Groups are taken in batches: all extremes, then all parameters
        // (independent scalar chains the core overlaps), then all codes,
        // each group still in L1.
        let batch = (CHUNK / gs).clamp(1, BATCH);
        let num_groups = xs.len() / gs;
        let codes_kernel = vector.and_then(|v| v.codes);
        let mut g0 = 0;
        while g0 < num_groups {
            let n = batch.min(num_groups - g0);
            for j in 0..n {
                let group = &xs[(g0 + j) * gs..][..gs];
                found[j] = vector.is_some_and(|v| (v.extremes)(group, &mut extremes[j]));
            }
            // The rule of each group first, in a loop of its own: the groups'
            // chains of dependent divisions are independent, and a short
            // loop body lets the core overlap them.
            for j in 0..n {
                let group = &xs[(g0 + j) * gs..][..gs];
                let from_extremes = if found[j] {
                    self.params_from(&extremes[j])
                } else {
                    None
                };
                chosen[j] = from_extremes.unwrap_or_else(|| self.params(group));
            }
            for j in 0..n {
                let g = g0 + j;
                let (sv, zv, mv) = chosen[j];
                // NaN parameters are stored as the canonical NaN, as every
                // float output is (SPEC §3.2): their sign and payload would
                // otherwise depend on the hardware.
                let canonical = |v: f64| TScale::from_f64(if v.is_nan() { f64::NAN } else { v });
                let (stored, stored_m) = (canonical(sv), canonical(mv));
                scale[g] = stored;
                zero_point[g] = zv;
                if let Some(m) = offset.as_deref_mut() {
                    m[g] = stored_m;
                }
                let (s64, m64) = (stored.to_f64(), stored_m.to_f64());
                chosen[j] = (s64, zv, m64);
                vectorized[j] = codes.is_some() && codes_kernel.is_some() && found[j] && {
                    let reach = extremes[j].max.max(-extremes[j].min);
                    self.formula_params(s64, zv, m64, reach, &mut params[j])
                };
            }
            let Some(q) = codes.as_deref_mut() else {
                g0 += n;
                continue;
            };
            for j in 0..n {
                let (g, group) = (g0 + j, &xs[(g0 + j) * gs..][..gs]);
                let out = &mut q[g * units..(g + 1) * units];
                match codes_kernel {
                    Some(k) if vectorized[j] => codes_into(k, group, &params[j], out, &mut bytes),
                    _ => self.quantize_group(group, chosen[j], out),
                }
            }
            g0 += n;
        }
    }

    /// `(scale, zero_point, offset)` of one group; the scale and offset are
    /// values of the choose arithmetic's dtype. NaN extremes propagate.
    pub fn params<T: Element>(&self, xs: &[T]) -> (f64, i32, f64) {
        let a = self.choose;
        let mut e = Extremes::EMPTY;
        for x in xs {
            e.add(a.r(x.to_f64()));
            if e.min.is_nan() {
                break;
            }
        }
        self.choose_from(e)
    }

    /// The choose arithmetic (values are rounded by it before
    /// [`Extremes::add`]).
    pub fn choose_arith(&self) -> Arith {
        self.choose
    }

    /// `(scale, zero_point, offset)` from a group's extremes.
    pub fn choose_from(&self, e: Extremes) -> (f64, i32, f64) {
        choose(&self.recipe, self.choose, f64::from_bits(self.eps_bits), e)
    }

    /// The codes of one group with scale `s`, zero point `z` and float offset.
    pub fn quantize_group<T: Element, Q: IntElement>(
        &self,
        xs: &[T],
        (s, z, offset): (f64, i32, f64),
        out: &mut [Q],
    ) {
        let (lo, hi) = (self.recipe.q_min, self.recipe.q_max);
        self.quant.quantize_group(xs, s, z, offset, out, lo, hi);
    }
}
