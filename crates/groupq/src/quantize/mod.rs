//! The per-group quantization family (SPEC §3): one `(scale, zero_point)`
//! per contiguous group of the last axis of a `[outer_size, axis_size]`
//! tensor.
//!
//! | plan | computes |
//! |---|---|
//! | [`QuantizePerGroupPlan`] | `q = clamp(round_half_to_even((s != 0 ? x / s : 0) + z), q_min, q_max)` |
//! | [`DequantizePerGroupPlan`] | `y = M(q - z) * s` |
//! | [`QuantizePerGroupBackwardPlan`] | `dx = inside(r) && s != 0 ? dy / s : 0` |
//! | [`DequantizePerGroupBackwardPlan`] | `dx = dy * s` |
//! | [`ChooseQParamsPerGroupPlan`] | `(s, z)` per group from the data, by a [`Recipe`](crate::recipe::Recipe) |
//! | [`QuantizeDynamicPerGroupPlan`] | `(s, z)` and the codes in one pass, by a recipe |
//!
//! Element `(i, j)` uses `scale[i, j / group_size]` and
//! `zero_point[i, j / group_size]`; `M` is `f64` for `f64` tensors and `f32`
//! otherwise.

/// The three informational methods every plan has (SPEC §2), read from its
/// `core: PlanCore`.
macro_rules! plan_info_methods {
    () => {
        /// Scratch bytes `run` needs (always 0: `Workspace::None` will do).
        pub fn workspace_size(&self) -> usize {
            self.core.workspace_size()
        }

        /// Identity of the selected kernel: op, element types, backend.
        pub fn sku(&self) -> crate::plan::KernelSku {
            self.core.sku
        }

        /// Numerics of the selected kernel: the math type (`f64` for `f64`
        /// tensors, else `f32`), deterministic and bit-stable.
        pub fn precision_guarantee(&self) -> crate::plan::PrecisionGuarantee {
            self.core.sku.precision_guarantee
        }
    };
}

mod affine_common;
mod choose_qparams_per_group;
mod common;
mod dequantize_affine;
mod dequantize_per_group;
mod dequantize_per_group_backward;
mod engine;
mod fake_quantize_affine;
mod ggml_blocks;
mod quantize_affine;
mod quantize_affine_backward;
mod quantize_dynamic_affine;
mod quantize_dynamic_per_group;
mod quantize_per_group;
mod quantize_per_group_backward;

pub use affine_common::ZeroPoints;
#[cfg(feature = "wgpu")]
pub use choose_qparams_per_group::ChooseQParamsPerGroupDeviceArgs;
pub use choose_qparams_per_group::{
    ChooseQParamsPerGroupArgs, ChooseQParamsPerGroupDescriptor, ChooseQParamsPerGroupPlan,
};
pub use dequantize_affine::{
    DequantizeAffineArgs, DequantizeAffineDescriptor, DequantizeAffinePlan,
};
#[cfg(feature = "wgpu")]
pub use dequantize_per_group::DequantizePerGroupDeviceArgs;
pub use dequantize_per_group::{
    DequantizePerGroupArgs, DequantizePerGroupDescriptor, DequantizePerGroupPlan,
};
#[cfg(feature = "wgpu")]
pub use dequantize_per_group_backward::DequantizePerGroupBackwardDeviceArgs;
pub use dequantize_per_group_backward::{
    DequantizePerGroupBackwardArgs, DequantizePerGroupBackwardDescriptor,
    DequantizePerGroupBackwardPlan,
};
pub use fake_quantize_affine::{
    FakeQuantizeAffineArgs, FakeQuantizeAffineBackwardArgs, FakeQuantizeAffineBackwardPlan,
    FakeQuantizeAffineDescriptor, FakeQuantizeAffinePlan,
};
pub use ggml_blocks::{
    DequantizeGgmlBlocksArgs, DequantizeGgmlBlocksDescriptor, DequantizeGgmlBlocksPlan,
    QuantizeGgmlBlocksArgs, QuantizeGgmlBlocksDescriptor, QuantizeGgmlBlocksPlan,
};
pub use quantize_affine::{QuantizeAffineArgs, QuantizeAffineDescriptor, QuantizeAffinePlan};
pub use quantize_affine_backward::{
    DequantizeAffineBackwardArgs, DequantizeAffineBackwardDescriptor, DequantizeAffineBackwardPlan,
    QuantizeAffineBackwardArgs, QuantizeAffineBackwardDescriptor, QuantizeAffineBackwardPlan,
};
pub use quantize_dynamic_affine::{
    QuantizeDynamicAffineArgs, QuantizeDynamicAffineDescriptor, QuantizeDynamicAffinePlan,
};
#[cfg(feature = "wgpu")]
pub use quantize_dynamic_per_group::QuantizeDynamicPerGroupDeviceArgs;
pub use quantize_dynamic_per_group::{
    QuantizeDynamicPerGroupArgs, QuantizeDynamicPerGroupDescriptor, QuantizeDynamicPerGroupPlan,
};
#[cfg(feature = "wgpu")]
pub use quantize_per_group::QuantizePerGroupDeviceArgs;
pub use quantize_per_group::{
    QuantizePerGroupArgs, QuantizePerGroupDescriptor, QuantizePerGroupPlan,
};
#[cfg(feature = "wgpu")]
pub use quantize_per_group_backward::QuantizePerGroupBackwardDeviceArgs;
pub use quantize_per_group_backward::{
    QuantizePerGroupBackwardArgs, QuantizePerGroupBackwardDescriptor, QuantizePerGroupBackwardPlan,
    SteBoundary,
};
