//! x86-64 AVX2 kernels (8 f32 lanes), with F16C for f16, FMA for the
//! recipes' division, and integer shifts for bf16. Used when the CPU has
//! AVX2, F16C and FMA (every AVX2 CPU made has all three).

use super::simd::{F32Lanes, Isa};
use half::{bf16, f16};
use std::arch::x86_64::*;

/// The AVX2 + F16C instruction set.
#[derive(Clone, Copy)]
pub(crate) struct Avx2;

const ROUND_EVEN: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

// Every method below is an `unsafe fn` under the contract of `Isa`: it runs
// only inside the `#[target_feature(enable = "avx2,f16c,fma")]` entry points,
// which check the CPU first, and its pointers are valid for the lanes used.
impl Isa for Avx2 {
    const LANES: usize = 8;
    const HAS_FMA: bool = true;
    type F = __m256;
    type D = __m256d;
    type I = __m256i;
    type M = __m256;

    #[inline(always)]
    unsafe fn splat_f(v: f32) -> __m256 {
        _mm256_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn add_f(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul_f(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn div_f(a: __m256, b: __m256) -> __m256 {
        _mm256_div_ps(a, b)
    }
    #[inline(always)]
    unsafe fn round_f(a: __m256) -> __m256 {
        _mm256_round_ps::<ROUND_EVEN>(a)
    }
    #[inline(always)]
    unsafe fn nan_to_zero_f(a: __m256) -> __m256 {
        _mm256_and_ps(a, _mm256_cmp_ps::<_CMP_ORD_Q>(a, a))
    }
    #[inline(always)]
    unsafe fn clamp_f(a: __m256, lo: __m256, hi: __m256) -> __m256 {
        _mm256_min_ps(_mm256_max_ps(a, lo), hi)
    }
    #[inline(always)]
    unsafe fn canon_nan_f(a: __m256) -> __m256 {
        let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a);
        _mm256_blendv_ps(a, _mm256_set1_ps(f32::NAN), nan)
    }
    #[inline(always)]
    unsafe fn inside_f(g: __m256, r: __m256, lo: __m256, hi: __m256, incl: bool) -> __m256 {
        let mask = if incl {
            _mm256_and_ps(
                _mm256_cmp_ps::<_CMP_GE_OQ>(r, lo),
                _mm256_cmp_ps::<_CMP_LE_OQ>(r, hi),
            )
        } else {
            _mm256_and_ps(
                _mm256_cmp_ps::<_CMP_GT_OQ>(r, lo),
                _mm256_cmp_ps::<_CMP_LT_OQ>(r, hi),
            )
        };
        _mm256_and_ps(g, mask)
    }
    #[inline(always)]
    unsafe fn round_to_i(a: __m256) -> __m256i {
        _mm256_cvtps_epi32(a)
    }
    #[inline(always)]
    unsafe fn i_to_f(a: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn splat_i(v: i32) -> __m256i {
        _mm256_set1_epi32(v)
    }
    #[inline(always)]
    unsafe fn sub_i(a: __m256i, b: __m256i) -> __m256i {
        _mm256_sub_epi32(a, b)
    }

    #[inline(always)]
    unsafe fn splat_d(v: f64) -> __m256d {
        _mm256_set1_pd(v)
    }
    #[inline(always)]
    unsafe fn add_d(a: __m256d, b: __m256d) -> __m256d {
        _mm256_add_pd(a, b)
    }
    #[inline(always)]
    unsafe fn sub_d(a: __m256d, b: __m256d) -> __m256d {
        _mm256_sub_pd(a, b)
    }
    #[inline(always)]
    unsafe fn mul_d(a: __m256d, b: __m256d) -> __m256d {
        _mm256_mul_pd(a, b)
    }
    #[inline(always)]
    unsafe fn div_d(a: __m256d, b: __m256d) -> __m256d {
        _mm256_div_pd(a, b)
    }
    #[inline(always)]
    unsafe fn round_d(a: __m256d) -> __m256d {
        _mm256_round_pd::<ROUND_EVEN>(a)
    }
    #[inline(always)]
    unsafe fn nan_to_zero_d(a: __m256d) -> __m256d {
        _mm256_and_pd(a, _mm256_cmp_pd::<_CMP_ORD_Q>(a, a))
    }
    #[inline(always)]
    unsafe fn clamp_d(a: __m256d, lo: __m256d, hi: __m256d) -> __m256d {
        _mm256_min_pd(_mm256_max_pd(a, lo), hi)
    }
    #[inline(always)]
    unsafe fn canon_nan_d(a: __m256d) -> __m256d {
        let nan = _mm256_cmp_pd::<_CMP_UNORD_Q>(a, a);
        _mm256_blendv_pd(a, _mm256_set1_pd(f64::NAN), nan)
    }
    #[inline(always)]
    unsafe fn inside_d(g: __m256d, r: __m256d, lo: __m256d, hi: __m256d, incl: bool) -> __m256d {
        let mask = if incl {
            _mm256_and_pd(
                _mm256_cmp_pd::<_CMP_GE_OQ>(r, lo),
                _mm256_cmp_pd::<_CMP_LE_OQ>(r, hi),
            )
        } else {
            _mm256_and_pd(
                _mm256_cmp_pd::<_CMP_GT_OQ>(r, lo),
                _mm256_cmp_pd::<_CMP_LT_OQ>(r, hi),
            )
        };
        _mm256_and_pd(g, mask)
    }
    #[inline(always)]
    unsafe fn round_dd_to_i(lo: __m256d, hi: __m256d) -> __m256i {
        _mm256_set_m128i(_mm256_cvtpd_epi32(hi), _mm256_cvtpd_epi32(lo))
    }
    #[inline(always)]
    unsafe fn i_to_dd(a: __m256i) -> (__m256d, __m256d) {
        (
            _mm256_cvtepi32_pd(_mm256_castsi256_si128(a)),
            _mm256_cvtepi32_pd(_mm256_extracti128_si256::<1>(a)),
        )
    }
    #[inline(always)]
    unsafe fn load_d(p: *const f64) -> __m256d {
        _mm256_loadu_pd(p)
    }
    #[inline(always)]
    unsafe fn store_d(p: *mut f64, v: __m256d) {
        _mm256_storeu_pd(p, v)
    }

    #[inline(always)]
    unsafe fn store_i(p: *mut u8, v: __m256i) {
        _mm256_storeu_si256(p.cast(), v)
    }
    #[inline(always)]
    unsafe fn load_i(p: *const u8) -> __m256i {
        _mm256_loadu_si256(p.cast())
    }
    #[inline(always)]
    unsafe fn or_i(a: __m256i, b: __m256i) -> __m256i {
        _mm256_or_si256(a, b)
    }
    #[inline(always)]
    unsafe fn exp_all_ones(w: __m256i, mask: u32, width: usize) -> __m256i {
        let m = _mm256_set1_epi32(mask as i32);
        let e = _mm256_and_si256(w, m);
        if width == 2 {
            _mm256_cmpeq_epi16(e, m)
        } else {
            _mm256_cmpeq_epi32(e, m)
        }
    }
    #[inline(always)]
    unsafe fn any_i(a: __m256i) -> bool {
        _mm256_testz_si256(a, a) == 0
    }
    #[inline(always)]
    unsafe fn div_fma_f(x: __m256, s: __m256, inv: __m256) -> __m256 {
        let q = _mm256_mul_ps(x, inv);
        let r = _mm256_fnmadd_ps(q, s, x);
        _mm256_fmadd_ps(r, inv, q)
    }
    #[inline(always)]
    unsafe fn round_bf16_nonan_f(a: __m256) -> __m256 {
        let bits = _mm256_castps_si256(a);
        let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
        let rounded = _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), odd);
        _mm256_castsi256_ps(_mm256_and_si256(rounded, _mm256_set1_epi32(-65536)))
    }
    #[inline(always)]
    unsafe fn sub_f(a: __m256, b: __m256) -> __m256 {
        _mm256_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn trunc_f(a: __m256) -> __m256 {
        _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(a)
    }
    #[inline(always)]
    unsafe fn round_away_f(a: __m256) -> __m256 {
        // trunc(a), plus ±1 where the dropped fraction is at least one half
        // (exact: `a - trunc(a)` has no rounding error).
        let t = Self::trunc_f(a);
        let sign = _mm256_set1_ps(-0.0);
        let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(a, t));
        let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
        let one = _mm256_or_ps(_mm256_and_ps(a, sign), _mm256_set1_ps(1.0));
        _mm256_add_ps(t, _mm256_and_ps(up, one))
    }
    #[inline(always)]
    unsafe fn store_low_bytes(p: *mut u8, v: __m256i) {
        let low = _mm256_and_si256(v, _mm256_set1_epi32(0xff));
        let words = _mm_packus_epi32(
            _mm256_castsi256_si128(low),
            _mm256_extracti128_si256::<1>(low),
        );
        _mm_storel_epi64(p.cast(), _mm_packus_epi16(words, words))
    }
    #[inline(always)]
    unsafe fn store_codes4<const NIB: bool>(p: *mut u8, [a, b, c, d]: [__m256i; 4]) {
        // Saturating packs are exact on values in i16 range; the low byte
        // of each word is then kept by the mask, and the unsigned pack
        // takes it as it is. The packs work per 128-bit half, so the
        // dwords come out as a0-3 b0-3 c0-3 d0-3 a4-7 b4-7 c4-7 d4-7.
        let low = _mm256_set1_epi16(0xff);
        let ab = _mm256_and_si256(_mm256_packs_epi32(a, b), low);
        let cd = _mm256_and_si256(_mm256_packs_epi32(c, d), low);
        let mixed = _mm256_packus_epi16(ab, cd);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let bytes = _mm256_permutevar8x32_epi32(mixed, order);
        if NIB {
            // Byte pairs to one byte: the even byte's low nibble, the odd
            // byte's low nibble above it, in the low byte of each word.
            let w = _mm256_or_si256(
                _mm256_and_si256(bytes, _mm256_set1_epi16(0x0f)),
                _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), _mm256_set1_epi16(0xf0)),
            );
            let packed =
                _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
            _mm_storeu_si128(p.cast(), packed)
        } else {
            _mm256_storeu_si256(p.cast(), bytes)
        }
    }
    #[inline(always)]
    unsafe fn key16(v: __m256i) -> __m256i {
        let flip = _mm256_and_si256(_mm256_srai_epi16::<15>(v), _mm256_set1_epi16(0x7fff));
        _mm256_xor_si256(v, flip)
    }
    #[inline(always)]
    unsafe fn min16(a: __m256i, b: __m256i) -> __m256i {
        _mm256_min_epi16(a, b)
    }
    #[inline(always)]
    unsafe fn max16(a: __m256i, b: __m256i) -> __m256i {
        _mm256_max_epi16(a, b)
    }
    #[inline(always)]
    unsafe fn max_i(a: __m256i, b: __m256i) -> __m256i {
        _mm256_max_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn add_i(a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn trunc_to_i(a: __m256) -> __m256i {
        _mm256_cvttps_epi32(a)
    }
    #[inline(always)]
    unsafe fn min_f(a: __m256, b: __m256) -> __m256 {
        _mm256_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max_f(a: __m256, b: __m256) -> __m256 {
        _mm256_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn round_bf16_f(a: __m256) -> __m256 {
        // Round to nearest even on the bits (as the bf16 store); NaN lanes
        // are kept as they are, since the carry could turn one into inf.
        let bits = _mm256_castps_si256(a);
        let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
        let rounded = _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), odd);
        let kept = _mm256_and_si256(rounded, _mm256_set1_epi32(-65536));
        let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a);
        _mm256_blendv_ps(_mm256_castsi256_ps(kept), a, nan)
    }
    #[inline(always)]
    unsafe fn round_f16_f(a: __m256) -> __m256 {
        _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(a))
    }

    #[inline(always)]
    unsafe fn load_codes<Q: crate::IntElement>(p: *const Q) -> __m256i {
        if Q::PACK == 2 {
            // Four bytes of nibbles.
            let bytes = _mm_cvtsi32_si128(p.cast::<i32>().read_unaligned());
            let v = _mm256_cvtepu8_epi32(super::sse41::nibble_bytes(bytes));
            return if Q::MIN < 0 {
                let eight = _mm256_set1_epi32(8);
                _mm256_sub_epi32(_mm256_xor_si256(v, eight), eight)
            } else {
                v
            };
        }
        let bytes = _mm_loadl_epi64(p.cast());
        if Q::MIN < 0 {
            _mm256_cvtepi8_epi32(bytes)
        } else {
            _mm256_cvtepu8_epi32(bytes)
        }
    }
    #[inline(always)]
    unsafe fn store_codes<Q: crate::IntElement>(p: *mut Q, v: __m256i) {
        let words = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let bytes = if Q::MIN < 0 {
            _mm_packs_epi16(words, words)
        } else {
            _mm_packus_epi16(words, words)
        };
        _mm_storel_epi64(p.cast(), bytes)
    }
    #[inline(always)]
    unsafe fn lt_f(a: __m256, b: __m256) -> __m256 {
        _mm256_cmp_ps::<_CMP_LT_OQ>(a, b)
    }
    #[inline(always)]
    unsafe fn gt_f(a: __m256, b: __m256) -> __m256 {
        _mm256_cmp_ps::<_CMP_GT_OQ>(a, b)
    }
    #[inline(always)]
    unsafe fn eq_f(a: __m256, b: __m256) -> __m256 {
        _mm256_cmp_ps::<_CMP_EQ_OQ>(a, b)
    }
    #[inline(always)]
    unsafe fn and_m(a: __m256, b: __m256) -> __m256 {
        _mm256_and_ps(a, b)
    }
    #[inline(always)]
    unsafe fn select_f(m: __m256, a: __m256, b: __m256) -> __m256 {
        _mm256_blendv_ps(b, a, m)
    }
    #[inline(always)]
    unsafe fn select_i(m: __m256, a: __m256i, b: __m256i) -> __m256i {
        _mm256_castps_si256(_mm256_blendv_ps(
            _mm256_castsi256_ps(b),
            _mm256_castsi256_ps(a),
            m,
        ))
    }
    #[inline(always)]
    unsafe fn abs_f(a: __m256) -> __m256 {
        _mm256_andnot_ps(_mm256_set1_ps(-0.0), a)
    }
    #[inline(always)]
    unsafe fn sqrt_f(a: __m256) -> __m256 {
        _mm256_sqrt_ps(a)
    }
    #[inline(always)]
    unsafe fn min_i(a: __m256i, b: __m256i) -> __m256i {
        _mm256_min_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn nearest_int_f(a: __m256) -> __m256i {
        let bits = _mm256_castps_si256(_mm256_add_ps(a, _mm256_set1_ps(12582912.0)));
        _mm256_sub_epi32(
            _mm256_and_si256(bits, _mm256_set1_epi32(0x007f_ffff)),
            _mm256_set1_epi32(0x0040_0000),
        )
    }
}

impl F32Lanes<Avx2> for f32 {
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
}

impl F32Lanes<Avx2> for f16 {
    #[inline(always)]
    unsafe fn load(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f16, v: __m256) {
        _mm_storeu_si128(p.cast(), _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
    }
}

impl F32Lanes<Avx2> for bf16 {
    #[inline(always)]
    unsafe fn load(p: *const bf16) -> __m256 {
        let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(wide))
    }
    #[inline(always)]
    unsafe fn store(p: *mut bf16, v: __m256) {
        // Round to nearest even on the bits: add 0x7fff plus the lowest kept
        // bit, then keep the high half. Canonical NaN and ±inf pass through.
        let bits = _mm256_castps_si256(v);
        let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
        let rounded = _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), odd);
        let high = _mm256_srli_epi32::<16>(rounded);
        let packed = _mm256_packus_epi32(high, high);
        let ordered = _mm256_permute4x64_epi64::<0b10_00_10_00>(packed);
        _mm_storeu_si128(p.cast(), _mm256_castsi256_si128(ordered))
    }
}

super::simd::simd_entry_points!(
    Avx2,
    "avx2,f16c,fma",
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("fma")
);

#[cfg(test)]
mod tests {
    use super::*;

    /// `(x / s, div_fma_f(x, s, RN(1 / s)))` lane by lane.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn both(x: [f32; 8], s: [f32; 8]) -> ([f32; 8], [f32; 8]) {
        let (vx, vs) = (_mm256_loadu_ps(x.as_ptr()), _mm256_loadu_ps(s.as_ptr()));
        let inv = _mm256_div_ps(_mm256_set1_ps(1.0), vs);
        let mut out = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(out.0.as_mut_ptr(), _mm256_div_ps(vx, vs));
        _mm256_storeu_ps(out.1.as_mut_ptr(), Avx2::div_fma_f(vx, vs, inv));
        out
    }

    /// Markstein's correction gives the divider's quotient inside the bounds
    /// the recipe kernels check (`2^-96 <= |s| <= 2^96`, `|x / s| < 2^120`)
    /// whenever `|x / s| >= 1/4`, over random pairs and over bf16 and f16
    /// pairs, whose quotients come closest to their rounding boundaries.
    #[test]
    fn fma_division_is_the_division() {
        if !available() {
            return;
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut checked = 0;
        for round in 0..300_000 {
            let mut x = [0f32; 8];
            let mut s = [0f32; 8];
            for (x, s) in x.iter_mut().zip(&mut s) {
                let r = next();
                let exp_s = (r % 193) as i32 - 96;
                let mant_s = (r >> 8) as u32 & 0x7f_ffff;
                let exp_x = exp_s + ((r >> 40) % 130) as i32 - 4;
                let mant_x = (r >> 20) as u32 & 0x7f_ffff;
                let mask = match round % 3 {
                    0 => 0x7f_ffff,
                    1 => 0x7f_0000, // bf16 significands
                    _ => 0x7f_e000, // f16 significands
                };
                let sign = ((r >> 63) as u32) << 31;
                *s = f32::from_bits(sign | (((exp_s + 127) as u32) << 23) | (mant_s & mask));
                let exp_x = exp_x.clamp(-126, 127);
                *x = f32::from_bits((((exp_x + 127) as u32) << 23) | (mant_x & mask));
            }
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            let (div, fma) = unsafe { both(x, s) };
            for i in 0..8 {
                let q = div[i];
                if q.abs() >= 0.25 && q.abs() < 2f32.powi(120) {
                    assert_eq!(q.to_bits(), fma[i].to_bits(), "{:e} / {:e}", x[i], s[i]);
                    checked += 1;
                }
            }
        }
        assert!(checked > 1_000_000, "{checked}");
    }
}
