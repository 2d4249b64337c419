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
use super::recipe::{codes_into, round, Arith, FormulaKernel, CHUNK};
use super::{
    DequantizeBackwardRun, DequantizeRun, FormulaParams, GroupExtremes, QuantizeBackwardRun,
    RecipeCodesKernel, RecipeExtremesKernel,
};
use crate::affine::{AffineFormula, CodeConversion, ZeroScale};
use crate::element::ElementKind;
use crate::element::{Element, IntElement};
use crate::plan::SteBoundary;
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

/// `v` (a value of the output's dtype or wider) stored as `T`, rounded as
/// the dtype rounds it (through f32 for f16/bf16, as PyTorch), NaN
/// canonical.
#[inline(always)]
pub(crate) fn store<T: Element>(v: f64) -> T {
    if v.is_nan() {
        T::from_f64(f64::NAN)
    } else {
        T::from_f64(Arith(T::KIND).r(v))
    }
}

/// The largest zero point (in magnitude) the run kernels take: `M(z) = z`
/// and `q − z` exact in f32 for every 8-bit code.
const RUN_ZERO_POINT: u32 = (1 << 24) - 256;

/// The scale `s` as the run kernels of an output `T` take it (a value of
/// `T`'s math type: f64 below f64, else f32), when it is one and finite.
#[inline(always)]
fn run_scale<T: Element>(s: f64) -> Option<f64> {
    let exact = T::KIND == ElementKind::F64 || f64::from(s as f32).to_bits() == s.to_bits();
    (exact && s.is_finite()).then_some(s)
}

impl AffineKernel {
    /// Whether the dequantize arithmetic, stored as `out`, is the run
    /// kernels' `M(q − z) · s` (and `M(dy) · s`): f32 arithmetic below f64,
    /// or f64 arithmetic (whose product of a difference of at most 2^24
    /// and an f32 scale is exact, so one rounding to f32 remains).
    pub fn dequantize_is_math(&self, out: ElementKind) -> bool {
        match (out, self.d.0) {
            (ElementKind::F64, d) => d == ElementKind::F64,
            (_, d) => d == ElementKind::F32 || d == ElementKind::F64,
        }
    }

    /// Whether the quantize formula is SPEC §3.1's (division, zero point
    /// before rounding, ties to even, in the math type): the straight-through
    /// run kernel's.
    pub fn quantize_is_spec(&self, input: ElementKind) -> bool {
        let spec = AffineFormula::SPEC;
        self.f.quantize.scale_application == spec.quantize.scale_application
            && self.f.quantize.zero_point_stage == spec.quantize.zero_point_stage
            && self.f.quantize.rounding == spec.quantize.rounding
            && self.a.0 == Recipe::arithmetic_kind(spec.quantize.arithmetic, input)
    }

    /// SPEC §3.3 per element under this formula: `(inside(r) && s != 0) ?
    /// A(dy) / s : 0`, `r` the forward's rounded value.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub fn ste_grad(
        &self,
        dy: f64,
        x: f64,
        s: f64,
        zf: f64,
        lo: i32,
        hi: i32,
        inclusive: bool,
    ) -> f64 {
        let r = self.rounded(x, s, zf, 0.0);
        if AffineKernel::inside(r, lo, hi, inclusive) && s != 0.0 {
            self.a.div(self.a.r(dy), s)
        } else {
            0.0
        }
    }

    /// SPEC §3.4 per element: `D(dy) · s` in the dequantize arithmetic.
    #[inline(always)]
    pub fn dequantize_grad(&self, dy: f64, s: f64) -> f64 {
        self.d.mul(self.d.r(dy), s)
    }
}

/// The straight-through gradients of one run sharing scale `s` and zero
/// point `z` (`Some` for an integer one): by the run kernel `run` (SPEC's
/// formula, checked at `select`) where it takes the parameters, by the
/// element core otherwise.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn quantize_backward_run<T: Element>(
    k: &AffineKernel,
    run: Option<QuantizeBackwardRun<T>>,
    (dys, xs): (&[T], &[T]),
    (s, z, zf): (f64, Option<i32>, f64),
    out: &mut [T],
    (lo, hi): (i32, i32),
    boundary: SteBoundary,
) {
    let params = run_params::<T>(k, s, z).filter(|&(sm, _)| sm.to_bits() == s.to_bits());
    if let (Some(f), Some((sm, z))) = (run, params) {
        return f(dys, xs, sm, z, out, lo, hi, boundary);
    }
    let inclusive = boundary == SteBoundary::Inclusive;
    for ((g, dy), x) in out.iter_mut().zip(dys).zip(xs) {
        *g = store(k.ste_grad(dy.to_f64(), x.to_f64(), s, zf, lo, hi, inclusive));
    }
}

/// The dequantize gradients of one run sharing scale `s`: by the run
/// kernel `run` where the arithmetic is the math type's (checked at
/// `select`) and `s` one of its values, by the element core otherwise.
#[inline]
pub(crate) fn dequantize_backward_run<T: Element>(
    k: &AffineKernel,
    run: Option<DequantizeBackwardRun<T>>,
    dys: &[T],
    s: f64,
    out: &mut [T],
) {
    if let (Some(f), Some(sm)) = (run, run_scale::<T>(s)) {
        return f(dys, sm, out);
    }
    for (g, dy) in out.iter_mut().zip(dys) {
        *g = store(k.dequantize_grad(dy.to_f64(), s));
    }
}

/// The recipe engine's vector codes kernels for an affine formula on inputs
/// `T`, where they compute the element core's codes: the formula has a
/// vector form, and its conversion agrees with SPEC's on every value a
/// finite group with a finite non-zero scale can produce (NaN is then
/// impossible; ±inf and huge values saturate in all of them but the int64
/// cast, checked per run).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AffineVector<T> {
    formula: FormulaKernel,
    extremes: RecipeExtremesKernel<T>,
    codes: RecipeCodesKernel<T>,
    /// The conversion is the int64 cast: values at or beyond 2^63 go to
    /// `q_min`, so runs that could reach them take the element core.
    int64: bool,
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
                | CodeConversion::Int64Cast
        );
        if !agrees || Q::PACK != 1 {
            return None;
        }
        let formula = FormulaKernel::new(k.f.quantize, input);
        let vector = formula.vector::<T, Q>(b)?;
        Some(AffineVector {
            formula,
            extremes: vector.extremes,
            codes: vector.codes?,
            int64: k.f.conversion == CodeConversion::Int64Cast,
        })
    }

    /// The vector formula's parameters for a run `xs` with scale `s` and
    /// zero point `z`, when its codes are the element core's: the run is
    /// finite, the scale one the vector formula takes (finite, non-zero,
    /// exact in f32, unchanged by the formula's rounding of the scale), and
    /// under the int64 cast no value can reach 2^63.
    fn params(
        &self,
        k: &AffineKernel,
        xs: &[T],
        (s, z): (f64, i32),
        range: (i32, i32),
        p: &mut FormulaParams,
    ) -> bool {
        /// 2^61: `|x| / |s|` below it keeps `|r|` (with rounding and any
        /// 8-bit zero point) below 2^63.
        const REACH: f64 = 2_305_843_009_213_693_952.0;
        let mut e = GroupExtremes::default();
        let scale_kept = !k.f.scale_to_arithmetic || k.a.r(s).to_bits() == s.to_bits();
        if !scale_kept || !(self.extremes)(xs, &mut e) {
            return false;
        }
        let amax = e.max.max(-e.min);
        if self.int64 && !(f64::from(amax) < s.abs() * REACH && z.unsigned_abs() < 1 << 22) {
            return false;
        }
        self.formula.formula_params(s, z, 0.0, amax, range, p)
    }
}

/// The codes of one run of contiguous values sharing scale `s` and zero
/// point `z` (`zf` as the formula adds it): by the vector kernel where
/// [`AffineVector::params`] allows, by the element core otherwise. Both
/// give the same codes.
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
        let mut p = FormulaParams::default();
        if v.params(k, xs, (s, z), (lo, hi), &mut p) {
            return codes_into(v.codes, xs, &p, out, bytes);
        }
    }
    for (x, q) in xs.iter().zip(out.iter_mut()) {
        *q = Q::from_i32_in_range(k.code_of(x.to_f64(), s, (z, zf), lo, hi));
    }
}

/// The parameters of a run the run kernels take: the scale as the formula
/// uses it, a value of `T`'s math type, and an integer zero point they add
/// as the element core does.
#[inline(always)]
fn run_params<T: Element>(k: &AffineKernel, s: f64, z: Option<i32>) -> Option<(f64, i32)> {
    let z = z.filter(|z| z.unsigned_abs() <= RUN_ZERO_POINT)?;
    Some((run_scale::<T>(k.scale(s))?, z))
}

/// The dequantized values of one run of codes sharing scale `s` and zero
/// point `z` (`Some` for an integer one; `zf` as the formula adds it): by
/// the run kernel `run` (the per-group inverse) where the formula's
/// arithmetic is its own (checked at `select`) and it takes the parameters,
/// by the element core otherwise.
#[inline]
pub(crate) fn dequantize_run<Q: IntElement, T: Element>(
    k: &AffineKernel,
    run: Option<DequantizeRun<Q, T>>,
    qs: &[Q],
    (s, z, zf): (f64, Option<i32>, f64),
    out: &mut [T],
) {
    if let (Some(f), Some((sm, z))) = (run, run_params::<T>(k, s, z)) {
        return f(qs, sm, z, out);
    }
    for (q, y) in qs.iter().zip(out.iter_mut()) {
        *y = store(k.dequantized(q.to_i32(), zf, s));
    }
}

/// The kernels of a fake-quantize run: the vector codes (as `Q`, the
/// narrowest 8-bit type holding the code range) and the inverse.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FakeVector<Q, T> {
    pub codes: AffineVector<T>,
    /// The inverse run kernel, where the dequantize arithmetic is the
    /// math type's (else the element core dequantizes the codes).
    pub dequantize: Option<DequantizeRun<Q, T>>,
}

/// The fake-quantized values (when `out` is given) and inclusive mask (when
/// `mask` is) of one run sharing scale `s` and zero point `z` (`Some` for
/// an integer one): the vector codes, then the inverse run kernel and, for
/// the mask, the element core's rounded value of the codes at `q_min` or
/// `q_max` only (a code strictly inside is its own rounded value); the
/// element core where the vector kernels cannot take the run. At most
/// [`CHUNK`] values.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn fake_run<Q: IntElement, T: Element>(
    k: &AffineKernel,
    vector: Option<&FakeVector<Q, T>>,
    xs: &[T],
    (s, z, zf): (f64, Option<i32>, f64),
    mut out: Option<&mut [T]>,
    mut mask: Option<&mut [bool]>,
    (lo, hi): (i32, i32),
    bytes: &mut [u8; CHUNK],
) {
    debug_assert!(xs.len() <= CHUNK);
    let zi = z.unwrap_or(0);
    if let Some(v) = vector {
        let mut p = FormulaParams::default();
        let deq = match (&out, v.dequantize) {
            (None, _) => Some(None),
            (Some(_), Some(f)) => run_params::<T>(k, s, z).map(|sm| Some((f, sm))),
            (Some(_), None) => None,
        };
        if let Some(deq) =
            deq.filter(|_| z.is_some() && v.codes.params(k, xs, (s, zi), (lo, hi), &mut p))
        {
            let n = xs.len();
            let mut qs = [Q::from_unit_byte(0); CHUNK];
            codes_into(v.codes.codes, xs, &p, &mut qs[..n], bytes);
            if let (Some(o), Some((f, (sm, zr)))) = (out.as_deref_mut(), deq) {
                f(&qs[..n], sm, zr, o);
            }
            if let Some(m) = mask.as_deref_mut() {
                for ((m, q), x) in m.iter_mut().zip(&qs[..n]).zip(xs) {
                    let q = q.to_i32();
                    *m = (q != lo && q != hi)
                        || AffineKernel::inside(k.rounded(x.to_f64(), s, zf, 0.0), lo, hi, true);
                }
            }
            return;
        }
    }
    for (i, x) in xs.iter().enumerate() {
        let (v, r) = k.fake(x.to_f64(), s, zi, zf, lo, hi);
        if let Some(o) = out.as_deref_mut() {
            o[i] = store(v);
        }
        if let Some(m) = mask.as_deref_mut() {
            m[i] = AffineKernel::inside(r, lo, hi, true);
        }
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
