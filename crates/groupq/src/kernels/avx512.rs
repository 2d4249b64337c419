//! x86-64 AVX-512 kernels (16 f32 lanes, AVX-512F). Compiled everywhere on
//! x86-64, selected and tested only where the CPU has AVX-512F.

use super::simd::{F32Lanes, Isa};
use half::{bf16, f16};
use std::arch::x86_64::*;

/// The AVX-512F instruction set.
#[derive(Clone, Copy)]
pub(crate) struct Avx512;

const ROUND_EVEN: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

// Every method below is an `unsafe fn` under the contract of `Isa`: it runs
// only inside the `#[target_feature(enable = "avx512f")]` entry points, which
// check the CPU first, and its pointers are valid for the lanes used.
impl Isa for Avx512 {
    const LANES: usize = 16;
    const HAS_FMA: bool = true;
    type F = __m512;
    type D = __m512d;
    type I = __m512i;
    type M = __mmask16;

    #[inline(always)]
    unsafe fn splat_f(v: f32) -> __m512 {
        _mm512_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn add_f(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul_f(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn div_f(a: __m512, b: __m512) -> __m512 {
        _mm512_div_ps(a, b)
    }
    #[inline(always)]
    unsafe fn round_f(a: __m512) -> __m512 {
        _mm512_roundscale_ps::<ROUND_EVEN>(a)
    }
    #[inline(always)]
    unsafe fn nan_to_zero_f(a: __m512) -> __m512 {
        _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(a, a), a)
    }
    #[inline(always)]
    unsafe fn clamp_f(a: __m512, lo: __m512, hi: __m512) -> __m512 {
        _mm512_min_ps(_mm512_max_ps(a, lo), hi)
    }
    #[inline(always)]
    unsafe fn canon_nan_f(a: __m512) -> __m512 {
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, a);
        _mm512_mask_mov_ps(a, nan, _mm512_set1_ps(f32::NAN))
    }
    #[inline(always)]
    unsafe fn inside_f(g: __m512, r: __m512, lo: __m512, hi: __m512, incl: bool) -> __m512 {
        let mask = if incl {
            _mm512_cmp_ps_mask::<_CMP_GE_OQ>(r, lo) & _mm512_cmp_ps_mask::<_CMP_LE_OQ>(r, hi)
        } else {
            _mm512_cmp_ps_mask::<_CMP_GT_OQ>(r, lo) & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(r, hi)
        };
        _mm512_maskz_mov_ps(mask, g)
    }
    #[inline(always)]
    unsafe fn round_to_i(a: __m512) -> __m512i {
        _mm512_cvtps_epi32(a)
    }
    #[inline(always)]
    unsafe fn i_to_f(a: __m512i) -> __m512 {
        _mm512_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn splat_i(v: i32) -> __m512i {
        _mm512_set1_epi32(v)
    }
    #[inline(always)]
    unsafe fn sub_i(a: __m512i, b: __m512i) -> __m512i {
        _mm512_sub_epi32(a, b)
    }

    #[inline(always)]
    unsafe fn splat_d(v: f64) -> __m512d {
        _mm512_set1_pd(v)
    }
    #[inline(always)]
    unsafe fn add_d(a: __m512d, b: __m512d) -> __m512d {
        _mm512_add_pd(a, b)
    }
    #[inline(always)]
    unsafe fn sub_d(a: __m512d, b: __m512d) -> __m512d {
        _mm512_sub_pd(a, b)
    }
    #[inline(always)]
    unsafe fn mul_d(a: __m512d, b: __m512d) -> __m512d {
        _mm512_mul_pd(a, b)
    }
    #[inline(always)]
    unsafe fn div_d(a: __m512d, b: __m512d) -> __m512d {
        _mm512_div_pd(a, b)
    }
    #[inline(always)]
    unsafe fn round_d(a: __m512d) -> __m512d {
        _mm512_roundscale_pd::<ROUND_EVEN>(a)
    }
    #[inline(always)]
    unsafe fn nan_to_zero_d(a: __m512d) -> __m512d {
        _mm512_maskz_mov_pd(_mm512_cmp_pd_mask::<_CMP_ORD_Q>(a, a), a)
    }
    #[inline(always)]
    unsafe fn clamp_d(a: __m512d, lo: __m512d, hi: __m512d) -> __m512d {
        _mm512_min_pd(_mm512_max_pd(a, lo), hi)
    }
    #[inline(always)]
    unsafe fn canon_nan_d(a: __m512d) -> __m512d {
        let nan = _mm512_cmp_pd_mask::<_CMP_UNORD_Q>(a, a);
        _mm512_mask_mov_pd(a, nan, _mm512_set1_pd(f64::NAN))
    }
    #[inline(always)]
    unsafe fn inside_d(g: __m512d, r: __m512d, lo: __m512d, hi: __m512d, incl: bool) -> __m512d {
        let mask = if incl {
            _mm512_cmp_pd_mask::<_CMP_GE_OQ>(r, lo) & _mm512_cmp_pd_mask::<_CMP_LE_OQ>(r, hi)
        } else {
            _mm512_cmp_pd_mask::<_CMP_GT_OQ>(r, lo) & _mm512_cmp_pd_mask::<_CMP_LT_OQ>(r, hi)
        };
        _mm512_maskz_mov_pd(mask, g)
    }
    #[inline(always)]
    unsafe fn round_dd_to_i(lo: __m512d, hi: __m512d) -> __m512i {
        let low = _mm512_castsi256_si512(_mm512_cvtpd_epi32(lo));
        _mm512_inserti64x4::<1>(low, _mm512_cvtpd_epi32(hi))
    }
    #[inline(always)]
    unsafe fn i_to_dd(a: __m512i) -> (__m512d, __m512d) {
        (
            _mm512_cvtepi32_pd(_mm512_castsi512_si256(a)),
            _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64::<1>(a)),
        )
    }
    #[inline(always)]
    unsafe fn load_d(p: *const f64) -> __m512d {
        _mm512_loadu_pd(p)
    }
    #[inline(always)]
    unsafe fn store_d(p: *mut f64, v: __m512d) {
        _mm512_storeu_pd(p, v)
    }

    #[inline(always)]
    unsafe fn store_i(p: *mut u8, v: __m512i) {
        _mm512_storeu_si512(p.cast(), v)
    }
    #[inline(always)]
    unsafe fn load_i(p: *const u8) -> __m512i {
        _mm512_loadu_si512(p.cast())
    }
    #[inline(always)]
    unsafe fn or_i(a: __m512i, b: __m512i) -> __m512i {
        _mm512_or_si512(a, b)
    }
    #[inline(always)]
    unsafe fn exp_all_ones(w: __m512i, mask: u32, width: usize) -> __m512i {
        // AVX-512F has no 16-bit compare: for 2-byte lanes, each half of a
        // word is tested by shifting its exponent field into the top half.
        let m = _mm512_set1_epi32(mask as i32);
        let e = _mm512_and_si512(w, m);
        let hit = if width == 2 {
            let half = _mm512_set1_epi32((mask & 0xffff0000) as i32);
            let low = _mm512_slli_epi32::<16>(e);
            _mm512_cmpeq_epi32_mask(_mm512_and_si512(e, half), half)
                | _mm512_cmpeq_epi32_mask(low, half)
        } else {
            _mm512_cmpeq_epi32_mask(e, m)
        };
        _mm512_maskz_set1_epi32(hit, -1)
    }
    #[inline(always)]
    unsafe fn any_i(a: __m512i) -> bool {
        _mm512_test_epi32_mask(a, a) != 0
    }
    #[inline(always)]
    unsafe fn div_fma_f(x: __m512, s: __m512, inv: __m512) -> __m512 {
        let q = _mm512_mul_ps(x, inv);
        let r = _mm512_fnmadd_ps(q, s, x);
        _mm512_fmadd_ps(r, inv, q)
    }
    #[inline(always)]
    unsafe fn round_bf16_nonan_f(a: __m512) -> __m512 {
        let bits = _mm512_castps_si512(a);
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
        let rounded = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), odd);
        _mm512_castsi512_ps(_mm512_and_si512(rounded, _mm512_set1_epi32(-65536)))
    }
    #[inline(always)]
    unsafe fn sub_f(a: __m512, b: __m512) -> __m512 {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn trunc_f(a: __m512) -> __m512 {
        _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(a)
    }
    #[inline(always)]
    unsafe fn round_away_f(a: __m512) -> __m512 {
        // As in the AVX2 file.
        let t = Self::trunc_f(a);
        let sign = _mm512_set1_epi32(i32::MIN);
        let diff = _mm512_castps_si512(_mm512_sub_ps(a, t));
        let frac = _mm512_castsi512_ps(_mm512_andnot_si512(sign, diff));
        let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, _mm512_set1_ps(0.5));
        let a_sign = _mm512_and_si512(_mm512_castps_si512(a), sign);
        let one = _mm512_castsi512_ps(_mm512_or_si512(
            a_sign,
            _mm512_castps_si512(_mm512_set1_ps(1.0)),
        ));
        _mm512_mask_add_ps(t, up, t, one)
    }
    #[inline(always)]
    unsafe fn store_low_bytes(p: *mut u8, v: __m512i) {
        _mm_storeu_si128(p.cast(), _mm512_cvtepi32_epi8(v))
    }
    #[inline(always)]
    unsafe fn store_codes4<const NIB: bool>(p: *mut u8, v: [__m512i; 4]) {
        for (k, v) in v.into_iter().enumerate() {
            // The low byte of each lane (a truncating narrowing).
            let bytes = _mm512_cvtepi32_epi8(v);
            if NIB {
                let w = _mm_or_si128(
                    _mm_and_si128(bytes, _mm_set1_epi16(0x0f)),
                    _mm_and_si128(_mm_srli_epi16::<4>(bytes), _mm_set1_epi16(0xf0)),
                );
                _mm_storel_epi64(p.add(8 * k).cast(), _mm_packus_epi16(w, w))
            } else {
                _mm_storeu_si128(p.add(16 * k).cast(), bytes)
            }
        }
    }
    #[inline(always)]
    unsafe fn key16(v: __m512i) -> __m512i {
        // AVX-512F has no 16-bit shifts: the sign of each half-word,
        // spread over its 15 magnitude bits, from 32-bit shifts.
        let hi_sign = _mm512_srai_epi32::<31>(v);
        let lo_sign = _mm512_srai_epi32::<31>(_mm512_slli_epi32::<16>(v));
        let flip = _mm512_or_si512(
            _mm512_and_si512(hi_sign, _mm512_set1_epi32(0x7fff_0000)),
            _mm512_and_si512(lo_sign, _mm512_set1_epi32(0x7fff)),
        );
        _mm512_xor_si512(v, flip)
    }
    #[inline(always)]
    unsafe fn min16(a: __m512i, b: __m512i) -> __m512i {
        // Per 256-bit half, with AVX2 (which AVX-512F implies).
        let lo = _mm256_min_epi16(_mm512_castsi512_si256(a), _mm512_castsi512_si256(b));
        let hi = _mm256_min_epi16(
            _mm512_extracti64x4_epi64::<1>(a),
            _mm512_extracti64x4_epi64::<1>(b),
        );
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }
    #[inline(always)]
    unsafe fn max16(a: __m512i, b: __m512i) -> __m512i {
        let lo = _mm256_max_epi16(_mm512_castsi512_si256(a), _mm512_castsi512_si256(b));
        let hi = _mm256_max_epi16(
            _mm512_extracti64x4_epi64::<1>(a),
            _mm512_extracti64x4_epi64::<1>(b),
        );
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }
    #[inline(always)]
    unsafe fn max_i(a: __m512i, b: __m512i) -> __m512i {
        _mm512_max_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn add_i(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn trunc_to_i(a: __m512) -> __m512i {
        _mm512_cvttps_epi32(a)
    }
    #[inline(always)]
    unsafe fn min_f(a: __m512, b: __m512) -> __m512 {
        _mm512_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max_f(a: __m512, b: __m512) -> __m512 {
        _mm512_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn round_bf16_f(a: __m512) -> __m512 {
        // As the bf16 store; NaN lanes are kept as they are.
        let bits = _mm512_castps_si512(a);
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
        let rounded = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), odd);
        let kept = _mm512_and_si512(rounded, _mm512_set1_epi32(-65536));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, a);
        _mm512_mask_blend_ps(nan, _mm512_castsi512_ps(kept), a)
    }
    #[inline(always)]
    unsafe fn round_f16_f(a: __m512) -> __m512 {
        _mm512_cvtph_ps(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(a))
    }

    #[inline(always)]
    unsafe fn load_codes<Q: crate::IntElement>(p: *const Q) -> __m512i {
        if Q::PACK == 2 {
            // Eight bytes of nibbles.
            let v = _mm512_cvtepu8_epi32(super::sse41::nibble_bytes(_mm_loadl_epi64(p.cast())));
            return if Q::MIN < 0 {
                let eight = _mm512_set1_epi32(8);
                _mm512_sub_epi32(_mm512_xor_si512(v, eight), eight)
            } else {
                v
            };
        }
        let bytes = _mm_loadu_si128(p.cast());
        if Q::MIN < 0 {
            _mm512_cvtepi8_epi32(bytes)
        } else {
            _mm512_cvtepu8_epi32(bytes)
        }
    }
    #[inline(always)]
    unsafe fn store_codes<Q: crate::IntElement>(p: *mut Q, v: __m512i) {
        // The values are inside Q's range: truncation is exact.
        _mm_storeu_si128(p.cast(), _mm512_cvtepi32_epi8(v))
    }
    #[inline(always)]
    unsafe fn lt_f(a: __m512, b: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b)
    }
    #[inline(always)]
    unsafe fn gt_f(a: __m512, b: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, b)
    }
    #[inline(always)]
    unsafe fn eq_f(a: __m512, b: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, b)
    }
    #[inline(always)]
    unsafe fn and_m(a: __mmask16, b: __mmask16) -> __mmask16 {
        a & b
    }
    #[inline(always)]
    unsafe fn select_f(m: __mmask16, a: __m512, b: __m512) -> __m512 {
        _mm512_mask_blend_ps(m, b, a)
    }
    #[inline(always)]
    unsafe fn select_i(m: __mmask16, a: __m512i, b: __m512i) -> __m512i {
        _mm512_mask_blend_epi32(m, b, a)
    }
    #[inline(always)]
    unsafe fn abs_f(a: __m512) -> __m512 {
        _mm512_castsi512_ps(_mm512_and_si512(
            _mm512_castps_si512(a),
            _mm512_set1_epi32(0x7fff_ffff),
        ))
    }
    #[inline(always)]
    unsafe fn sqrt_f(a: __m512) -> __m512 {
        _mm512_sqrt_ps(a)
    }
    #[inline(always)]
    unsafe fn min_i(a: __m512i, b: __m512i) -> __m512i {
        _mm512_min_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn nearest_int_f(a: __m512) -> __m512i {
        let bits = _mm512_castps_si512(_mm512_add_ps(a, _mm512_set1_ps(12582912.0)));
        _mm512_sub_epi32(
            _mm512_and_si512(bits, _mm512_set1_epi32(0x007f_ffff)),
            _mm512_set1_epi32(0x0040_0000),
        )
    }
}

impl F32Lanes<Avx512> for f32 {
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
}

impl F32Lanes<Avx512> for f16 {
    #[inline(always)]
    unsafe fn load(p: *const f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f16, v: __m512) {
        _mm256_storeu_si256(p.cast(), _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
    }
}

impl F32Lanes<Avx512> for bf16 {
    #[inline(always)]
    unsafe fn load(p: *const bf16) -> __m512 {
        let wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(wide))
    }
    #[inline(always)]
    unsafe fn store(p: *mut bf16, v: __m512) {
        // Round to nearest even on the bits, as in the AVX2 kernel.
        let bits = _mm512_castps_si512(v);
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
        let rounded = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), odd);
        let high = _mm512_srli_epi32::<16>(rounded);
        _mm256_storeu_si256(p.cast(), _mm512_cvtepi32_epi16(high))
    }
}

super::simd::simd_entry_points!(Avx512, "avx512f", is_x86_feature_detected!("avx512f"));
