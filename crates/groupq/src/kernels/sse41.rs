//! x86-64 SSE4.1 kernels (x86-64-v2, 4 f32 lanes). f16 needs F16C, which
//! SSE4.1-only CPUs lack, so f16 stays on the scalar kernels there.

use super::simd::{F32Lanes, Isa};
use half::bf16;
use std::arch::x86_64::*;

/// The SSE4.1 instruction set.
#[derive(Clone, Copy)]
pub(crate) struct Sse41;

const ROUND_EVEN: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

// Every method below is an `unsafe fn` under the contract of `Isa`: it runs
// only inside the `#[target_feature(enable = "sse4.1")]` entry points, which
// check the CPU first, and its pointers are valid for the lanes used.
impl Isa for Sse41 {
    const LANES: usize = 4;
    const HAS_FMA: bool = false;
    type F = __m128;
    type D = __m128d;
    type I = __m128i;
    type M = __m128;

    #[inline(always)]
    unsafe fn splat_f(v: f32) -> __m128 {
        _mm_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn add_f(a: __m128, b: __m128) -> __m128 {
        _mm_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul_f(a: __m128, b: __m128) -> __m128 {
        _mm_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn div_f(a: __m128, b: __m128) -> __m128 {
        _mm_div_ps(a, b)
    }
    #[inline(always)]
    unsafe fn round_f(a: __m128) -> __m128 {
        _mm_round_ps::<ROUND_EVEN>(a)
    }
    #[inline(always)]
    unsafe fn nan_to_zero_f(a: __m128) -> __m128 {
        _mm_and_ps(a, _mm_cmpord_ps(a, a))
    }
    #[inline(always)]
    unsafe fn clamp_f(a: __m128, lo: __m128, hi: __m128) -> __m128 {
        _mm_min_ps(_mm_max_ps(a, lo), hi)
    }
    #[inline(always)]
    unsafe fn canon_nan_f(a: __m128) -> __m128 {
        _mm_blendv_ps(a, _mm_set1_ps(f32::NAN), _mm_cmpunord_ps(a, a))
    }
    #[inline(always)]
    unsafe fn inside_f(g: __m128, r: __m128, lo: __m128, hi: __m128, incl: bool) -> __m128 {
        let mask = if incl {
            _mm_and_ps(_mm_cmpge_ps(r, lo), _mm_cmple_ps(r, hi))
        } else {
            _mm_and_ps(_mm_cmpgt_ps(r, lo), _mm_cmplt_ps(r, hi))
        };
        _mm_and_ps(g, mask)
    }
    #[inline(always)]
    unsafe fn round_to_i(a: __m128) -> __m128i {
        _mm_cvtps_epi32(a)
    }
    #[inline(always)]
    unsafe fn i_to_f(a: __m128i) -> __m128 {
        _mm_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn splat_i(v: i32) -> __m128i {
        _mm_set1_epi32(v)
    }
    #[inline(always)]
    unsafe fn sub_i(a: __m128i, b: __m128i) -> __m128i {
        _mm_sub_epi32(a, b)
    }

    #[inline(always)]
    unsafe fn splat_d(v: f64) -> __m128d {
        _mm_set1_pd(v)
    }
    #[inline(always)]
    unsafe fn add_d(a: __m128d, b: __m128d) -> __m128d {
        _mm_add_pd(a, b)
    }
    #[inline(always)]
    unsafe fn sub_d(a: __m128d, b: __m128d) -> __m128d {
        _mm_sub_pd(a, b)
    }
    #[inline(always)]
    unsafe fn mul_d(a: __m128d, b: __m128d) -> __m128d {
        _mm_mul_pd(a, b)
    }
    #[inline(always)]
    unsafe fn div_d(a: __m128d, b: __m128d) -> __m128d {
        _mm_div_pd(a, b)
    }
    #[inline(always)]
    unsafe fn round_d(a: __m128d) -> __m128d {
        _mm_round_pd::<ROUND_EVEN>(a)
    }
    #[inline(always)]
    unsafe fn nan_to_zero_d(a: __m128d) -> __m128d {
        _mm_and_pd(a, _mm_cmpord_pd(a, a))
    }
    #[inline(always)]
    unsafe fn clamp_d(a: __m128d, lo: __m128d, hi: __m128d) -> __m128d {
        _mm_min_pd(_mm_max_pd(a, lo), hi)
    }
    #[inline(always)]
    unsafe fn canon_nan_d(a: __m128d) -> __m128d {
        _mm_blendv_pd(a, _mm_set1_pd(f64::NAN), _mm_cmpunord_pd(a, a))
    }
    #[inline(always)]
    unsafe fn inside_d(g: __m128d, r: __m128d, lo: __m128d, hi: __m128d, incl: bool) -> __m128d {
        let mask = if incl {
            _mm_and_pd(_mm_cmpge_pd(r, lo), _mm_cmple_pd(r, hi))
        } else {
            _mm_and_pd(_mm_cmpgt_pd(r, lo), _mm_cmplt_pd(r, hi))
        };
        _mm_and_pd(g, mask)
    }
    #[inline(always)]
    unsafe fn round_dd_to_i(lo: __m128d, hi: __m128d) -> __m128i {
        _mm_unpacklo_epi64(_mm_cvtpd_epi32(lo), _mm_cvtpd_epi32(hi))
    }
    #[inline(always)]
    unsafe fn i_to_dd(a: __m128i) -> (__m128d, __m128d) {
        (_mm_cvtepi32_pd(a), _mm_cvtepi32_pd(_mm_srli_si128::<8>(a)))
    }
    #[inline(always)]
    unsafe fn load_d(p: *const f64) -> __m128d {
        _mm_loadu_pd(p)
    }
    #[inline(always)]
    unsafe fn store_d(p: *mut f64, v: __m128d) {
        _mm_storeu_pd(p, v)
    }

    #[inline(always)]
    unsafe fn store_i(p: *mut u8, v: __m128i) {
        _mm_storeu_si128(p.cast(), v)
    }
    #[inline(always)]
    unsafe fn load_i(p: *const u8) -> __m128i {
        _mm_loadu_si128(p.cast())
    }
    #[inline(always)]
    unsafe fn or_i(a: __m128i, b: __m128i) -> __m128i {
        _mm_or_si128(a, b)
    }
    #[inline(always)]
    unsafe fn exp_all_ones(w: __m128i, mask: u32, width: usize) -> __m128i {
        let m = _mm_set1_epi32(mask as i32);
        let e = _mm_and_si128(w, m);
        if width == 2 {
            _mm_cmpeq_epi16(e, m)
        } else {
            _mm_cmpeq_epi32(e, m)
        }
    }
    #[inline(always)]
    unsafe fn any_i(a: __m128i) -> bool {
        _mm_testz_si128(a, a) == 0
    }
    #[inline(always)]
    unsafe fn div_fma_f(x: __m128, s: __m128, inv: __m128) -> __m128 {
        let _ = inv;
        _mm_div_ps(x, s)
    }
    #[inline(always)]
    unsafe fn round_bf16_nonan_f(a: __m128) -> __m128 {
        let bits = _mm_castps_si128(a);
        let odd = _mm_and_si128(_mm_srli_epi32::<16>(bits), _mm_set1_epi32(1));
        let rounded = _mm_add_epi32(_mm_add_epi32(bits, _mm_set1_epi32(0x7fff)), odd);
        _mm_castsi128_ps(_mm_and_si128(rounded, _mm_set1_epi32(-65536)))
    }
    #[inline(always)]
    unsafe fn sub_f(a: __m128, b: __m128) -> __m128 {
        _mm_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn trunc_f(a: __m128) -> __m128 {
        _mm_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(a)
    }
    #[inline(always)]
    unsafe fn round_away_f(a: __m128) -> __m128 {
        // As in the AVX2 file.
        let t = Self::trunc_f(a);
        let sign = _mm_set1_ps(-0.0);
        let frac = _mm_andnot_ps(sign, _mm_sub_ps(a, t));
        let up = _mm_cmpge_ps(frac, _mm_set1_ps(0.5));
        let one = _mm_or_ps(_mm_and_ps(a, sign), _mm_set1_ps(1.0));
        _mm_add_ps(t, _mm_and_ps(up, one))
    }
    #[inline(always)]
    unsafe fn store_low_bytes(p: *mut u8, v: __m128i) {
        let low = _mm_and_si128(v, _mm_set1_epi32(0xff));
        let words = _mm_packus_epi32(low, low);
        let bytes = _mm_packus_epi16(words, words);
        p.cast::<i32>().write_unaligned(_mm_cvtsi128_si32(bytes))
    }
    #[inline(always)]
    unsafe fn store_codes4<const NIB: bool>(p: *mut u8, [a, b, c, d]: [__m128i; 4]) {
        // Saturating packs are exact on values in i16 range; the mask keeps
        // the low byte of each word for the unsigned pack.
        let low = _mm_set1_epi16(0xff);
        let ab = _mm_and_si128(_mm_packs_epi32(a, b), low);
        let cd = _mm_and_si128(_mm_packs_epi32(c, d), low);
        let bytes = _mm_packus_epi16(ab, cd);
        if NIB {
            let w = _mm_or_si128(
                _mm_and_si128(bytes, _mm_set1_epi16(0x0f)),
                _mm_and_si128(_mm_srli_epi16::<4>(bytes), _mm_set1_epi16(0xf0)),
            );
            _mm_storel_epi64(p.cast(), _mm_packus_epi16(w, w))
        } else {
            _mm_storeu_si128(p.cast(), bytes)
        }
    }
    #[inline(always)]
    unsafe fn key16(v: __m128i) -> __m128i {
        let flip = _mm_and_si128(_mm_srai_epi16::<15>(v), _mm_set1_epi16(0x7fff));
        _mm_xor_si128(v, flip)
    }
    #[inline(always)]
    unsafe fn min16(a: __m128i, b: __m128i) -> __m128i {
        _mm_min_epi16(a, b)
    }
    #[inline(always)]
    unsafe fn max16(a: __m128i, b: __m128i) -> __m128i {
        _mm_max_epi16(a, b)
    }
    #[inline(always)]
    unsafe fn max_i(a: __m128i, b: __m128i) -> __m128i {
        _mm_max_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn add_i(a: __m128i, b: __m128i) -> __m128i {
        _mm_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn trunc_to_i(a: __m128) -> __m128i {
        _mm_cvttps_epi32(a)
    }
    #[inline(always)]
    unsafe fn min_f(a: __m128, b: __m128) -> __m128 {
        _mm_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max_f(a: __m128, b: __m128) -> __m128 {
        _mm_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn round_bf16_f(a: __m128) -> __m128 {
        // As the bf16 store; NaN lanes are kept as they are.
        let bits = _mm_castps_si128(a);
        let odd = _mm_and_si128(_mm_srli_epi32::<16>(bits), _mm_set1_epi32(1));
        let rounded = _mm_add_epi32(_mm_add_epi32(bits, _mm_set1_epi32(0x7fff)), odd);
        let kept = _mm_and_si128(rounded, _mm_set1_epi32(-65536));
        let nan = _mm_cmpunord_ps(a, a);
        _mm_blendv_ps(_mm_castsi128_ps(kept), a, nan)
    }
    #[inline(always)]
    unsafe fn round_f16_f(a: __m128) -> __m128 {
        // No F16C here: lane by lane, with the same rounding.
        let mut lanes = [0f32; 4];
        _mm_storeu_ps(lanes.as_mut_ptr(), a);
        for v in &mut lanes {
            *v = half::f16::from_f32(*v).to_f32();
        }
        _mm_loadu_ps(lanes.as_ptr())
    }

    #[inline(always)]
    unsafe fn load_codes<Q: crate::IntElement>(p: *const Q) -> __m128i {
        if Q::PACK == 2 {
            // Two bytes of nibbles.
            let bytes = nibble_bytes(_mm_cvtsi32_si128(i32::from(
                p.cast::<u16>().read_unaligned(),
            )));
            return signed_nibbles::<Q>(_mm_cvtepu8_epi32(bytes));
        }
        let bytes = _mm_cvtsi32_si128(p.cast::<i32>().read_unaligned());
        if Q::MIN < 0 {
            _mm_cvtepi8_epi32(bytes)
        } else {
            _mm_cvtepu8_epi32(bytes)
        }
    }
    #[inline(always)]
    unsafe fn store_codes<Q: crate::IntElement>(p: *mut Q, v: __m128i) {
        let words = _mm_packs_epi32(v, v);
        let bytes = if Q::MIN < 0 {
            _mm_packs_epi16(words, words)
        } else {
            _mm_packus_epi16(words, words)
        };
        p.cast::<i32>().write_unaligned(_mm_cvtsi128_si32(bytes))
    }
    #[inline(always)]
    unsafe fn lt_f(a: __m128, b: __m128) -> __m128 {
        _mm_cmplt_ps(a, b)
    }
    #[inline(always)]
    unsafe fn gt_f(a: __m128, b: __m128) -> __m128 {
        _mm_cmpgt_ps(a, b)
    }
    #[inline(always)]
    unsafe fn eq_f(a: __m128, b: __m128) -> __m128 {
        _mm_cmpeq_ps(a, b)
    }
    #[inline(always)]
    unsafe fn and_m(a: __m128, b: __m128) -> __m128 {
        _mm_and_ps(a, b)
    }
    #[inline(always)]
    unsafe fn select_f(m: __m128, a: __m128, b: __m128) -> __m128 {
        _mm_blendv_ps(b, a, m)
    }
    #[inline(always)]
    unsafe fn select_i(m: __m128, a: __m128i, b: __m128i) -> __m128i {
        _mm_castps_si128(_mm_blendv_ps(_mm_castsi128_ps(b), _mm_castsi128_ps(a), m))
    }
    #[inline(always)]
    unsafe fn abs_f(a: __m128) -> __m128 {
        _mm_andnot_ps(_mm_set1_ps(-0.0), a)
    }
    #[inline(always)]
    unsafe fn sqrt_f(a: __m128) -> __m128 {
        _mm_sqrt_ps(a)
    }
    #[inline(always)]
    unsafe fn min_i(a: __m128i, b: __m128i) -> __m128i {
        _mm_min_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn nearest_int_f(a: __m128) -> __m128i {
        let bits = _mm_castps_si128(_mm_add_ps(a, _mm_set1_ps(12582912.0)));
        _mm_sub_epi32(
            _mm_and_si128(bits, _mm_set1_epi32(0x007f_ffff)),
            _mm_set1_epi32(0x0040_0000),
        )
    }
}

impl F32Lanes<Sse41> for f32 {
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m128 {
        _mm_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m128) {
        _mm_storeu_ps(p, v)
    }
}

impl F32Lanes<Sse41> for bf16 {
    #[inline(always)]
    unsafe fn load(p: *const bf16) -> __m128 {
        let wide = _mm_cvtepu16_epi32(_mm_loadl_epi64(p.cast()));
        _mm_castsi128_ps(_mm_slli_epi32::<16>(wide))
    }
    #[inline(always)]
    unsafe fn store(p: *mut bf16, v: __m128) {
        // Round to nearest even on the bits, as in the AVX2 kernel.
        let bits = _mm_castps_si128(v);
        let odd = _mm_and_si128(_mm_srli_epi32::<16>(bits), _mm_set1_epi32(1));
        let rounded = _mm_add_epi32(_mm_add_epi32(bits, _mm_set1_epi32(0x7fff)), odd);
        let high = _mm_srli_epi32::<16>(rounded);
        _mm_storel_epi64(p.cast(), _mm_packus_epi32(high, high))
    }
}

super::simd::simd_entry_points!(Sse41, "sse4.1", is_x86_feature_detected!("sse4.1"));

/// The nibbles of the low bytes of `b` as bytes, in code order: byte `2i`
/// is the low nibble of byte `i`, byte `2i + 1` its high nibble (SSE2
/// only, for every x86 instruction set).
#[inline(always)]
pub(super) unsafe fn nibble_bytes(b: __m128i) -> __m128i {
    let low = _mm_set1_epi8(0x0f);
    _mm_unpacklo_epi8(
        _mm_and_si128(b, low),
        _mm_and_si128(_mm_srli_epi16::<4>(b), low),
    )
}

/// 4-bit codes `0..16` in 32-bit lanes, sign-extended when `Q` is signed
/// (`(v ^ 8) - 8`).
#[inline(always)]
unsafe fn signed_nibbles<Q: crate::IntElement>(v: __m128i) -> __m128i {
    if Q::MIN < 0 {
        let eight = _mm_set1_epi32(8);
        _mm_sub_epi32(_mm_xor_si128(v, eight), eight)
    } else {
        v
    }
}
