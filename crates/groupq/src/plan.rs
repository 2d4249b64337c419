//! The plan vocabulary shared by every op: preferences, backends, kernel
//! identity and precision guarantees (SPEC §2).

use crate::element::ElementKind;
use std::fmt;

/// What the caller asks of `select`.
///
/// ```
/// use groupq::{BackendKind, PlanPreference};
/// let best = PlanPreference::default();
/// assert_eq!(best.prefer_backend, None);
/// let reference = PlanPreference { prefer_backend: Some(BackendKind::Scalar), ..Default::default() };
/// assert_eq!(reference.max_workspace_bytes, usize::MAX);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlanPreference {
    /// Largest workspace the caller is willing to provide, in bytes.
    pub max_workspace_bytes: usize,
    /// A backend to use instead of the best available one. One that this
    /// machine or op lacks makes `select` fail with `Unsupported`.
    pub prefer_backend: Option<BackendKind>,
}

impl Default for PlanPreference {
    fn default() -> Self {
        PlanPreference {
            max_workspace_bytes: usize::MAX,
            prefer_backend: None,
        }
    }
}

/// Which kernel family a plan uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum BackendKind {
    /// Portable scalar Rust: the reference every other backend is tested against.
    Scalar,
    /// x86-64 SSE4.1 (x86-64-v2); f16 needs F16C and stays scalar here.
    Sse41,
    /// x86-64 AVX2 with F16C (no FMA: the arithmetic is never fused).
    Avx2,
    /// x86-64 AVX-512 (F, BW, VL).
    Avx512,
    /// aarch64 NEON.
    Neon,
    /// A GPU through wgpu (Vulkan, Metal, DX12): plans selected on a
    /// device stream (feature `wgpu`).
    Wgpu,
}

impl BackendKind {
    /// Lower-case name (`"scalar"`, `"avx2"`, …).
    pub const fn name(self) -> &'static str {
        match self {
            BackendKind::Scalar => "scalar",
            BackendKind::Sse41 => "sse4.1",
            BackendKind::Avx2 => "avx2",
            BackendKind::Avx512 => "avx512",
            BackendKind::Neon => "neon",
            BackendKind::Wgpu => "wgpu",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Broad family of an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpCategory {
    /// Quantization and its inverse and gradients.
    Quantization,
}

/// Which quantization op a plan performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QuantizeKind {
    /// Float → integer codes, one scale and zero point per group (SPEC §3.1).
    QuantizePerGroup,
    /// Integer codes → float (SPEC §3.2).
    DequantizePerGroup,
    /// Straight-through gradient of the forward (SPEC §3.3).
    QuantizePerGroupBackward,
    /// Gradient of the dequantization (SPEC §3.4).
    DequantizePerGroupBackward,
    /// Scales and zero points from the data, by a recipe.
    ChooseQParamsPerGroup,
    /// Scales, zero points and codes in one pass, by a recipe.
    QuantizeDynamicPerGroup,
    /// `f32` rows to ggml's block formats (llama.cpp's quantizers).
    QuantizeGgmlBlocks,
    /// ggml blocks back to `f32`.
    DequantizeGgmlBlocks,
    /// Float → integer codes, one scale and zero point per block of an N-D
    /// tensor (per-tensor, per-channel, per-token, per-group on any axis).
    QuantizeAffine,
    /// Integer codes → float, per block.
    DequantizeAffine,
    /// Quantize then dequantize in one pass, with the straight-through mask.
    FakeQuantizeAffine,
    /// The fake-quantize's gradient: `dy` where the mask holds, else `dy · 0`.
    FakeQuantizeAffineBackward,
    /// Parameters chosen per block by a recipe, and the codes, in one call.
    QuantizeDynamicAffine,
    /// SPEC §3.3's straight-through gradient, per block.
    QuantizeAffineBackward,
    /// SPEC §3.4's gradient, per block.
    DequantizeAffineBackward,
}

/// The floating-point type a plan computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MathPrecision {
    /// IEEE binary32 (for f32, f16 and bf16 tensors).
    F32,
    /// IEEE binary64 (for f64 tensors).
    F64,
}

/// What a plan promises about its numerics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrecisionGuarantee {
    /// The type every operation is carried out in.
    pub math_precision: MathPrecision,
    /// The element kind intermediate values are held in.
    pub accumulator: ElementKind,
    /// Bit-identical output on every backend, thread count and chunking.
    pub bit_stable_on_same_hardware: bool,
    /// The same input always gives the same output.
    pub deterministic: bool,
}

/// Identity of a selected kernel.
///
/// `element` is the floating-point element of the op (input of a quantize,
/// output of a dequantize) and `aux_element` the integer code element where
/// the op has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelSku {
    /// Op family.
    pub category: OpCategory,
    /// The op.
    pub op: QuantizeKind,
    /// The floating-point element type.
    pub element: ElementKind,
    /// The integer code type, where the op has one.
    pub aux_element: Option<ElementKind>,
    /// The kernel family chosen by `select`.
    pub backend: BackendKind,
    /// The numerics the kernel guarantees.
    pub precision_guarantee: PrecisionGuarantee,
}

/// Which rounded values pass the gradient through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SteBoundary {
    /// Only `q_min < r < q_max` (baracuda-kernels' per-group rule).
    Exclusive,
    /// `q_min <= r <= q_max` (PyTorch's fake-quantize rule).
    Inclusive,
}
