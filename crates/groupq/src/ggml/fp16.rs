//! ggml's f32 ⇄ f16 conversions (`ggml_compute_fp32_to_fp16` and
//! `ggml_compute_fp16_to_fp32` of ggml-impl.h, the portable code a build
//! without F16C uses), computed with the same float operations.

/// `f32` → IEEE binary16 bits, as ggml's `GGML_FP32_TO_FP16`: round to
/// nearest even, subnormal results, overflow to ±∞, and every NaN to the
/// quiet NaN `0x7E00` with the input's sign.
#[inline]
pub fn fp32_to_fp16(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 2^112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 2^-110
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;

    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let bias = (shl1_w & 0xFF00_0000).max(0x7100_0000);

    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    let magnitude = if shl1_w > 0xFF00_0000 {
        0x7E00
    } else {
        nonsign
    };
    ((sign >> 16) | magnitude) as u16
}

/// IEEE binary16 bits → `f32`, exactly (ggml's `GGML_FP16_TO_FP32`).
#[inline]
pub fn fp16_to_fp32(h: u16) -> f32 {
    let w = u32::from(h) << 16;
    let sign = w & 0x8000_0000;
    let two_w = w.wrapping_add(w);

    let exp_offset = 0xE0u32 << 23;
    let exp_scale = f32::from_bits(0x0780_0000); // 2^-112
    let normalized = f32::from_bits((two_w >> 4) + exp_offset) * exp_scale;

    let magic_mask = 126u32 << 23;
    let denormalized = f32::from_bits((two_w >> 17) | magic_mask) - 0.5;

    let denormalized_cutoff = 1u32 << 27;
    let bits = if two_w < denormalized_cutoff {
        denormalized.to_bits()
    } else {
        normalized.to_bits()
    };
    f32::from_bits(sign | bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn widening_is_exact_for_every_half() {
        for h in 0..=u16::MAX {
            let ours = fp16_to_fp32(h);
            let theirs = f16::from_bits(h).to_f32();
            if theirs.is_nan() {
                assert!(ours.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{h:#06x}");
            }
            // Round trip of every half value.
            if !theirs.is_nan() {
                assert_eq!(fp32_to_fp16(ours), h, "{h:#06x}");
            }
        }
    }

    #[test]
    fn narrowing_rounds_to_nearest_even() {
        // Every f32 exponent, several mantissas incl. ties and near-ties.
        let mantissas = [
            0u32, 1, 0xFFF, 0x1000, 0x1001, 0x2000, 0x3000, 0x7FFFFF, 0x400000, 0x5FF000, 0x7FE000,
        ];
        for e in 0..=255u32 {
            for &m in &mantissas {
                for s in [0u32, 1] {
                    let f = f32::from_bits((s << 31) | (e << 23) | m);
                    let ours = fp32_to_fp16(f);
                    if f.is_nan() {
                        assert_eq!(ours & 0x7FFF, 0x7E00);
                        assert_eq!(ours >> 15, s as u16);
                    } else {
                        assert_eq!(
                            ours,
                            f16::from_f32(f).to_bits(),
                            "{f:e} ({:#010x})",
                            f.to_bits()
                        );
                    }
                }
            }
        }
        assert_eq!(fp32_to_fp16(65520.0), 0x7C00); // rounds up to infinity
        assert_eq!(fp32_to_fp16(65519.0), 0x7BFF);
        assert_eq!(fp32_to_fp16(-0.0), 0x8000);
        assert_eq!(fp32_to_fp16(2.0f32.powi(-25)), 0); // tie to even: zero
        assert_eq!(fp32_to_fp16(1.5 * 2.0f32.powi(-25)), 1);
    }
}
