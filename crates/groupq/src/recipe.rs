//! Recipes: every numerical choice that turns raw weights into scales, zero
//! points and codes, named explicitly, with presets that reproduce the
//! peers bit for bit.
//!
//! Toolchains disagree on almost every detail: the symmetric divisor (7.5,
//! 7, or a range over 15), whether zero is forced into the range, how a
//! degenerate group is patched, whether the zero point is added before or
//! after rounding, division or reciprocal multiply, and whether arithmetic
//! is done in f32 or rounded to the weight's own dtype after every
//! operation. A [`Recipe`] states each choice; [`ChooseQParamsPerGroupPlan`]
//! and [`QuantizeDynamicPerGroupPlan`] apply it.
//!
//! | preset | reproduces |
//! |---|---|
//! | [`Recipe::torch_per_token_asymmetric_int8`] | PyTorch `choose_qparams_per_token_asymmetric` + `quantize_per_channel_group` |
//! | [`Recipe::torch_per_channel_group`] | PyTorch `quantize_per_channel_group` with given scales (its quantize formula only) |
//! | [`Recipe::torchao`] | torchao `choose_qparams_affine` + `quantize_affine` (SYMMETRIC / ASYMMETRIC; int4, uint4, int8) |
//! | [`Recipe::compressed_tensors_w4a16`], [`Recipe::compressed_tensors_w4a16_asym`] | compressed-tensors `W4A16` / `W4A16_ASYM` |
//! | [`Recipe::gptq`] | AutoGPTQ / GPTQModel `Quantizer.find_params` + `quantize` (RTN) |
//! | [`Recipe::awq`], [`Recipe::awq_f16`] | AutoAWQ `pseudo_quantize_tensor` (zero point and symmetric) |
//! | [`Recipe::gguf_q8_0`], [`Recipe::gguf_q4_0`], [`Recipe::gguf_q5_0`], [`Recipe::gguf_q4_1`], [`Recipe::gguf_q5_1`] | gguf-py 0.19 `quantize` (codes, `d` and `m` of each 32-element block); [`Recipe::fused`] for gguf-py 0.17's Q4_0/Q5_0 |
//!
//! [`ChooseQParamsPerGroupPlan`]: crate::ChooseQParamsPerGroupPlan
//! [`QuantizeDynamicPerGroupPlan`]: crate::QuantizeDynamicPerGroupPlan
//!
//! ```
//! use groupq::recipe::{Recipe, TorchaoMapping};
//! let r = Recipe::torchao(TorchaoMapping::Asymmetric, -8, 7);
//! assert_eq!((r.q_min, r.q_max), (-8, 7));
//! assert_ne!(r, Recipe::gptq(false, 4));
//! ```

use crate::element::ElementKind;
use std::hash::{Hash, Hasher};

/// How the group's range becomes a scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mapping {
    /// `s = amax / divisor` with `amax = max(-min(min, 0), max(max, 0))`.
    Symmetric(SymmetricDivisor),
    /// `s = (max(max, 0) - min(min, 0)) / (q_max - q_min)`: zero kept in range.
    AsymmetricWithZero,
    /// `s = (max - min) / (q_max - q_min)` over the raw range (AWQ).
    Asymmetric,
    /// ggml's Q4_0/Q5_0 rule: `s = m / divisor`, where `m` is the signed
    /// value of the first element with the largest magnitude and the divisor
    /// is negative (−8, −16), so that `m` maps to the lowest code.
    SignedAbsMax(Constant),
    /// GPTQ's symmetric rule: `xmin = min(min, 0)`, `xmax = max(|xmin|,
    /// max(max, 0))`, and `xmin = -xmax` **only where `xmin < 0`**, then
    /// `s = (xmax - xmin) / (q_max - q_min)`. An all-non-negative group keeps
    /// `xmin = 0` and gets half the resolution (AutoGPTQ#293).
    GptqSymmetric,
}

/// The divisor of a symmetric scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SymmetricDivisor {
    /// `(q_max - q_min) / 2`: 7.5 for int4, 127.5 for int8 (torchao, compressed-tensors).
    HalfRange,
    /// `q_max`: 7 for int4 (AWQ).
    QMax,
}

/// A floating-point constant held by its bits, so that recipes are `Eq` and `Hash`.
#[derive(Debug, Clone, Copy)]
pub struct Constant(pub f64);

impl PartialEq for Constant {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Constant {}
impl Hash for Constant {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}

/// A lower bound, fixed or taken from a dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Eps {
    /// A fixed value (rounded to the arithmetic dtype where it is used).
    Value(Constant),
    /// The smallest positive normal of the input dtype (`torch.finfo(dtype).tiny`).
    SmallestNormal,
    /// The machine epsilon of the scale's dtype (`torch.finfo(dtype).eps`).
    Epsilon,
}

/// What happens to degenerate groups (a zero range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EpsPolicy {
    /// Nothing: a zero range gives a zero scale (SPEC §3.1 then maps the
    /// group to `clamp(z)`).
    None,
    /// `s = max(s, eps)` (torchao, PyTorch per-token).
    ClampScale(Eps),
    /// `s = eps` where `s == 0` (compressed-tensors; a replacement, not a clamp).
    ReplaceZeroScale(Eps),
    /// The range (or `amax`) is clamped below by `eps` before the division (AWQ).
    ClampRange(Eps),
    /// A group with `xmin == xmax == 0` gets `xmin = -1, xmax = 1` (GPTQ).
    UnitRangeForZeroGroup,
}

/// How the zero point is computed (in the arithmetic dtype, then stored as `i32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ZeroPointRule {
    /// `z = trunc((q_max + q_min + 1) / 2)`: 0 for signed codes, 8 for uint4.
    Midpoint,
    /// `z = clamp(q_min - round(min / s), q_min, q_max)` (torchao, AWQ; `min`
    /// is the mapping's minimum, zero-inclusive or raw).
    QMinMinusRoundedMin,
    /// `z = round(clamp(q_min - min / s, q_min, q_max))` (compressed-tensors).
    RoundedClampedQMinMinusMin,
    /// `z = round(-min / s)` with no clamp (GPTQ).
    RoundedNegatedMin,
    /// No integer zero point (`z = 0`) but a float offset per group, the
    /// mapping's minimum, subtracted before scaling: `q = round((x − m) / s)`,
    /// `x ≈ q·s + m` (gguf's Q4_1/Q5_1). The plans write `m` with
    /// `run_with_offset`.
    FloatOffset,
    /// PyTorch's per-token asymmetric rule (after XNNPACK): `z = q_min - min/s`
    /// or `q_max - max/s`, whichever side has the smaller error, clamped, then rounded.
    PerTokenAsymmetric,
}

/// How the scale is applied to `x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScaleApplication {
    /// `x / s` (IEEE division).
    Divide,
    /// `x * (1 / s)`, the reciprocal rounded first.
    ReciprocalMultiply,
    /// `x * (1 / s) + c` with the product and the added constant (zero
    /// point, and the half of `HalfUp`) rounded once, as an FMA computes it
    /// (ggml built with FMA contraction; gguf-py up to 0.17).
    ReciprocalMultiplyFused,
}

/// When the zero point is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZeroPointStage {
    /// `round(v + z)` (SPEC §3.1, PyTorch, compressed-tensors).
    BeforeRounding,
    /// `round(v) + z` (torchao, GPTQ, AWQ).
    AfterRounding,
}

/// How a value is rounded to an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rounding {
    /// Round half to even (`torch.round`, `round_ties_even`).
    TiesEven,
    /// Round half away from zero (C `roundf`).
    TiesAway,
    /// `trunc(v + 0.5)` (ggml's reference quantizers). With the zero point
    /// added before rounding, `z + 0.5` is one constant: `trunc(v + (z + 0.5))`,
    /// as ggml's `x * id + 8.5`.
    HalfUp,
}

/// The dtype every operation is rounded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arithmetic {
    /// SPEC §3's math type: f32, or f64 for f64 input.
    Math,
    /// The input's own dtype, rounded after every operation (PyTorch on
    /// bf16/f16 tensors).
    Input,
    /// float16: the input is converted to f16 first (AutoAWQ casts the layer
    /// with `.half()`).
    F16,
    /// float64 whatever the input (PyTorch's per-token ops, promoted by the
    /// float64 scales their `choose_qparams` returns).
    F64,
}

/// The quantize step of a recipe: `q = clamp(round(apply(x, s) ⊕ z))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantizeFormula {
    /// Division or reciprocal multiply.
    pub scale_application: ScaleApplication,
    /// Zero point before or after rounding.
    pub zero_point_stage: ZeroPointStage,
    /// The rounding rule.
    pub rounding: Rounding,
    /// The dtype of every operation.
    pub arithmetic: Arithmetic,
}

impl QuantizeFormula {
    /// SPEC §3.1: division, zero point before rounding, ties to even, in the math type.
    pub const SPEC: QuantizeFormula = QuantizeFormula {
        scale_application: ScaleApplication::Divide,
        zero_point_stage: ZeroPointStage::BeforeRounding,
        rounding: Rounding::TiesEven,
        arithmetic: Arithmetic::Math,
    };
}

/// What a plan does with NaN or infinite input values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NonFinitePolicy {
    /// `Error::NonFiniteInput` naming the first row and group that holds
    /// one, before anything is written (the input is checked in a first pass).
    Error,
    /// IEEE arithmetic, as SPEC §3 defines it for the forward: NaN extremes
    /// propagate into the scale and every code of the group becomes
    /// `clamp(0)` or `clamp(z)`. No check pass.
    Propagate,
}

/// Every numerical choice of choosing quantization parameters and quantizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Recipe {
    /// Smallest code.
    pub q_min: i32,
    /// Largest code.
    pub q_max: i32,
    /// Range to scale.
    pub mapping: Mapping,
    /// Degenerate groups.
    pub eps: EpsPolicy,
    /// Zero-point formula.
    pub zero_point: ZeroPointRule,
    /// The dtype of the scale and zero-point arithmetic.
    pub choose_arithmetic: Arithmetic,
    /// The quantize step.
    pub quantize: QuantizeFormula,
    /// NaN and infinities in the input.
    pub non_finite: NonFinitePolicy,
}

/// The two mappings of torchao's `choose_qparams_affine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TorchaoMapping {
    /// `MappingType.SYMMETRIC`.
    Symmetric,
    /// `MappingType.ASYMMETRIC`.
    Asymmetric,
}

impl Recipe {
    /// PyTorch `torch.ops.quantized_decomposed`: scales and zero points from
    /// `choose_qparams_per_token_asymmetric` (each group one token, int8,
    /// f32 eps floor), codes from `quantize_per_channel_group` (reciprocal
    /// multiply, zero point before rounding), all in f32.
    pub const fn torch_per_token_asymmetric_int8() -> Recipe {
        Recipe {
            q_min: -128,
            q_max: 127,
            mapping: Mapping::AsymmetricWithZero,
            eps: EpsPolicy::ClampScale(Eps::Value(Constant(f32::EPSILON as f64))),
            zero_point: ZeroPointRule::PerTokenAsymmetric,
            choose_arithmetic: Arithmetic::Math,
            quantize: QuantizeFormula {
                scale_application: ScaleApplication::ReciprocalMultiply,
                zero_point_stage: ZeroPointStage::BeforeRounding,
                rounding: Rounding::TiesEven,
                arithmetic: Arithmetic::Math,
            },
            non_finite: NonFinitePolicy::Error,
        }
    }

    /// PyTorch `quantize_per_channel_group` with caller-chosen scales: only
    /// [`Recipe::quantize`] is used (the choose part is the per-token rule).
    pub const fn torch_per_channel_group(q_min: i32, q_max: i32) -> Recipe {
        let mut r = Recipe::torch_per_token_asymmetric_int8();
        r.q_min = q_min;
        r.q_max = q_max;
        r
    }

    /// torchao `choose_qparams_affine` + `quantize_affine` with the default
    /// `eps` (smallest normal of the input dtype), scale in the input dtype,
    /// every operation rounded to the input dtype: int4 is `(-8, 7)`, uint4
    /// `(0, 15)`, int8 `(-128, 127)`.
    pub const fn torchao(mapping: TorchaoMapping, q_min: i32, q_max: i32) -> Recipe {
        let (mapping, zero_point) = match mapping {
            TorchaoMapping::Symmetric => (
                Mapping::Symmetric(SymmetricDivisor::HalfRange),
                ZeroPointRule::Midpoint,
            ),
            TorchaoMapping::Asymmetric => (
                Mapping::AsymmetricWithZero,
                ZeroPointRule::QMinMinusRoundedMin,
            ),
        };
        Recipe {
            q_min,
            q_max,
            mapping,
            eps: EpsPolicy::ClampScale(Eps::SmallestNormal),
            zero_point,
            choose_arithmetic: Arithmetic::Input,
            quantize: QuantizeFormula {
                scale_application: ScaleApplication::ReciprocalMultiply,
                zero_point_stage: ZeroPointStage::AfterRounding,
                rounding: Rounding::TiesEven,
                arithmetic: Arithmetic::Input,
            },
            non_finite: NonFinitePolicy::Error,
        }
    }

    /// compressed-tensors `W4A16` (symmetric int4, `absmax / 7.5`, a zero
    /// scale replaced by the dtype's epsilon, true division, all in the
    /// weight dtype). The preset's group size is 128.
    pub const fn compressed_tensors_w4a16() -> Recipe {
        Recipe {
            q_min: -8,
            q_max: 7,
            mapping: Mapping::Symmetric(SymmetricDivisor::HalfRange),
            eps: EpsPolicy::ReplaceZeroScale(Eps::Epsilon),
            zero_point: ZeroPointRule::Midpoint,
            choose_arithmetic: Arithmetic::Input,
            quantize: QuantizeFormula {
                scale_application: ScaleApplication::Divide,
                zero_point_stage: ZeroPointStage::BeforeRounding,
                rounding: Rounding::TiesEven,
                arithmetic: Arithmetic::Input,
            },
            non_finite: NonFinitePolicy::Error,
        }
    }

    /// compressed-tensors `W4A16_ASYM`: range over 15 with zero kept in
    /// range, `z = round(clamp(-8 - min / s))`.
    pub const fn compressed_tensors_w4a16_asym() -> Recipe {
        let mut r = Recipe::compressed_tensors_w4a16();
        r.mapping = Mapping::AsymmetricWithZero;
        r.zero_point = ZeroPointRule::RoundedClampedQMinMinusMin;
        r
    }

    /// GPTQ's quantizer (AutoGPTQ and GPTQModel, RTN without calibration):
    /// unsigned codes `0..2^bits - 1`, all in f32, true division, zero point
    /// added after rounding. Symmetric uses `z = 2^(bits-1)` and GPTQ's
    /// all-non-negative-group rule; an all-zero group gets the range `[-1, 1]`.
    pub const fn gptq(symmetric: bool, bits: u32) -> Recipe {
        let q_max = (1 << bits) - 1;
        Recipe {
            q_min: 0,
            q_max,
            mapping: if symmetric {
                Mapping::GptqSymmetric
            } else {
                Mapping::AsymmetricWithZero
            },
            eps: EpsPolicy::UnitRangeForZeroGroup,
            zero_point: if symmetric {
                ZeroPointRule::Midpoint
            } else {
                ZeroPointRule::RoundedNegatedMin
            },
            choose_arithmetic: Arithmetic::Math,
            quantize: QuantizeFormula {
                scale_application: ScaleApplication::Divide,
                zero_point_stage: ZeroPointStage::AfterRounding,
                rounding: Rounding::TiesEven,
                arithmetic: Arithmetic::Math,
            },
            non_finite: NonFinitePolicy::Error,
        }
    }

    /// AutoAWQ `pseudo_quantize_tensor`, every operation in the input dtype.
    /// With a zero point: unsigned codes over the raw `[min, max]` range
    /// (`clamp(max - min, 1e-5) / 15`, `z = clamp(-round(min / s))`); without:
    /// signed codes, `s = clamp(absmax, 1e-5) / 7` (divisor 7, not 7.5).
    pub const fn awq(zero_point: bool, bits: u32) -> Recipe {
        let eps = EpsPolicy::ClampRange(Eps::Value(Constant(1e-5)));
        let quantize = QuantizeFormula {
            scale_application: ScaleApplication::Divide,
            zero_point_stage: ZeroPointStage::AfterRounding,
            rounding: Rounding::TiesEven,
            arithmetic: Arithmetic::Input,
        };
        if zero_point {
            Recipe {
                q_min: 0,
                q_max: (1 << bits) - 1,
                mapping: Mapping::Asymmetric,
                eps,
                zero_point: ZeroPointRule::QMinMinusRoundedMin,
                choose_arithmetic: Arithmetic::Input,
                quantize,
                non_finite: NonFinitePolicy::Error,
            }
        } else {
            Recipe {
                q_min: -(1 << (bits - 1)),
                q_max: (1 << (bits - 1)) - 1,
                mapping: Mapping::Symmetric(SymmetricDivisor::QMax),
                eps,
                zero_point: ZeroPointRule::Midpoint,
                choose_arithmetic: Arithmetic::Input,
                quantize,
                non_finite: NonFinitePolicy::Error,
            }
        }
    }

    /// [`Recipe::awq`] as AutoAWQ's pipeline runs it (`_apply_quant`): the
    /// layer is cast to float16 first, so a bf16 or f32 model gets float16
    /// numerics.
    pub const fn awq_f16(zero_point: bool, bits: u32) -> Recipe {
        let mut r = Recipe::awq(zero_point, bits);
        r.choose_arithmetic = Arithmetic::F16;
        r.quantize.arithmetic = Arithmetic::F16;
        r
    }

    /// gguf-py's Q8_0 (blocks of 32): `d = amax / 127`, codes
    /// `round_half_away(x * (1 / d))`, in f32. Store `d` as f16, as the
    /// format does; the codes use the f32 `d`, so choose with f32 scales.
    pub const fn gguf_q8_0() -> Recipe {
        Recipe {
            q_min: -127,
            q_max: 127,
            mapping: Mapping::Symmetric(SymmetricDivisor::QMax),
            eps: EpsPolicy::None,
            zero_point: ZeroPointRule::Midpoint,
            choose_arithmetic: Arithmetic::Math,
            quantize: QuantizeFormula {
                scale_application: ScaleApplication::ReciprocalMultiply,
                zero_point_stage: ZeroPointStage::BeforeRounding,
                rounding: Rounding::TiesAway,
                arithmetic: Arithmetic::Math,
            },
            non_finite: NonFinitePolicy::Error,
        }
    }

    /// gguf-py 0.19's Q4_0: `d = m / −8` (`m` the signed value of the
    /// largest magnitude), codes `min(15, trunc(x * (1 / d) + 8.5))` as two
    /// f32 operations (unfused), unsigned with zero point 8.
    pub const fn gguf_q4_0() -> Recipe {
        Recipe {
            q_min: 0,
            q_max: 15,
            mapping: Mapping::SignedAbsMax(Constant(-8.0)),
            eps: EpsPolicy::None,
            zero_point: ZeroPointRule::Midpoint,
            choose_arithmetic: Arithmetic::Math,
            quantize: QuantizeFormula {
                scale_application: ScaleApplication::ReciprocalMultiply,
                zero_point_stage: ZeroPointStage::BeforeRounding,
                rounding: Rounding::HalfUp,
                arithmetic: Arithmetic::Math,
            },
            non_finite: NonFinitePolicy::Error,
        }
    }

    /// gguf-py 0.19's Q5_0: as Q4_0 with `d = m / −16` and codes `0..=31`
    /// around 16.
    pub const fn gguf_q5_0() -> Recipe {
        let mut r = Recipe::gguf_q4_0();
        r.q_max = 31;
        r.mapping = Mapping::SignedAbsMax(Constant(-16.0));
        r
    }

    /// gguf-py's Q4_1: `d = (max − min) / 15` over the raw block range, a
    /// float offset `m = min`, codes `min(15, trunc((x − m) * (1 / d) + 0.5))`
    /// in f32; `x ≈ q·d + m`.
    pub const fn gguf_q4_1() -> Recipe {
        Recipe {
            q_min: 0,
            q_max: 15,
            mapping: Mapping::Asymmetric,
            eps: EpsPolicy::None,
            zero_point: ZeroPointRule::FloatOffset,
            choose_arithmetic: Arithmetic::Math,
            quantize: QuantizeFormula {
                scale_application: ScaleApplication::ReciprocalMultiply,
                zero_point_stage: ZeroPointStage::BeforeRounding,
                rounding: Rounding::HalfUp,
                arithmetic: Arithmetic::Math,
            },
            non_finite: NonFinitePolicy::Error,
        }
    }

    /// gguf-py's Q5_1: as Q4_1 with codes `0..=31`.
    pub const fn gguf_q5_1() -> Recipe {
        let mut r = Recipe::gguf_q4_1();
        r.q_max = 31;
        r
    }

    /// The recipe with its multiply-add fused (one rounding): Q4_0/Q5_0 as
    /// gguf-py 0.17 and FMA-contracting ggml builds compute them.
    pub const fn fused(mut self) -> Recipe {
        self.quantize.scale_application = ScaleApplication::ReciprocalMultiplyFused;
        self
    }

    /// The same recipe with another NaN/infinity policy.
    pub const fn with_non_finite(mut self, policy: NonFinitePolicy) -> Recipe {
        self.non_finite = policy;
        self
    }

    /// The dtype the arithmetic `a` rounds to for an input of kind `input`.
    pub(crate) fn arithmetic_kind(a: Arithmetic, input: ElementKind) -> ElementKind {
        match (a, input) {
            (Arithmetic::F16, _) => ElementKind::F16,
            (Arithmetic::F64, _) => ElementKind::F64,
            (Arithmetic::Input, k) => k,
            (Arithmetic::Math, ElementKind::F64) => ElementKind::F64,
            (Arithmetic::Math, _) => ElementKind::F32,
        }
    }
}
