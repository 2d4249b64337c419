//! Exact group-wise integer quantization of tensors: the INT8/INT4 weight
//! quantization behind GPTQ, AWQ and GGML checkpoints, with a plan API.
//!
//! Describe an op once (a *descriptor*), [`select`](QuantizePerGroupPlan::select)
//! a plan for it, then [`run`](QuantizePerGroupPlan::run) the plan on tensors
//! as often as needed:
//!
//! ```
//! use groupq::*;
//! use half::bf16;
//!
//! // A 2 × 8 bf16 weight, groups of 4 along the last axis, to the int4 range.
//! let (rows, cols, group) = (2, 8, 4);
//! let w: Vec<bf16> = (0..rows * cols).map(|i| bf16::from_f32(i as f32 * 0.37 - 3.0)).collect();
//!
//! // One symmetric scale per group (absmax / 7) and a zero point of 0.
//! let scale: Vec<bf16> = w
//!     .chunks(group)
//!     .map(|g| bf16::from_f32(g.iter().map(|v| v.to_f32().abs()).fold(0.0, f32::max) / 7.0))
//!     .collect();
//! let zero_point = vec![0i32; scale.len()];
//! let mut q = vec![0i8; w.len()];
//!
//! let stream = Stream::cpu();
//! let desc = QuantizePerGroupDescriptor {
//!     outer_size: rows, axis_size: cols, group_size: group, q_min: -8, q_max: 7,
//!     input_element: ElementKind::Bf16, output_element: ElementKind::S8,
//! };
//! let plan = QuantizePerGroupPlan::<bf16, i8>::select(&stream, &desc, PlanPreference::default())?;
//! plan.run(&stream, Workspace::None, QuantizePerGroupArgs {
//!     input: TensorRef::new(&w, [rows, cols])?,
//!     scale: TensorRef::new(&scale, [rows, cols / group])?,
//!     zero_point: TensorRef::new(&zero_point, [rows, cols / group])?,
//!     output: TensorMut::new(&mut q, [rows, cols])?,
//! })?;
//! assert!(q.iter().all(|&c| (-8..=7).contains(&c)));
//!
//! // And back: the inverse plan reconstructs every weight to within half a step.
//! let mut back = vec![bf16::ZERO; w.len()];
//! let inverse = DequantizePerGroupPlan::<i8, bf16>::select(
//!     &stream,
//!     &DequantizePerGroupDescriptor {
//!         outer_size: rows, axis_size: cols, group_size: group,
//!         input_element: ElementKind::S8, output_element: ElementKind::Bf16,
//!     },
//!     PlanPreference::default(),
//! )?;
//! inverse.run(&stream, Workspace::None, DequantizePerGroupArgs {
//!     input: TensorRef::new(&q, [rows, cols])?,
//!     scale: TensorRef::new(&scale, [rows, cols / group])?,
//!     zero_point: TensorRef::new(&zero_point, [rows, cols / group])?,
//!     output: TensorMut::new(&mut back, [rows, cols])?,
//! })?;
//! for (i, (a, b)) in w.iter().zip(&back).enumerate() {
//!     let step = scale[i / group].to_f32();
//!     assert!((a.to_f32() - b.to_f32()).abs() <= 0.5 * step + 0.02 * a.to_f32().abs());
//! }
//! # Ok::<(), groupq::Error>(())
//! ```
//!
//! # What is exact
//!
//! Every plan computes exactly what `SPEC.md` §3 defines, in `f32` (`f64`
//! for `f64` tensors): IEEE division, never a reciprocal multiply;
//! round-half-to-even; NaN → 0 before the clamp; saturation of infinities.
//! The output is bit-identical for every backend, thread count and
//! chunking ([`PrecisionGuarantee::bit_stable_on_same_hardware`]).
//!
//! # Errors
//!
//! Invalid descriptors and views are a typed [`enum@Error`] before any output
//! is written; no input panics. Values (NaN, infinities, zero or negative
//! scales) are not errors: the formulas say what they produce.
//!
//! # Crate layout
//!
//! - vocabulary: [`ElementKind`], [`Element`], [`IntElement`], [`TensorRef`],
//!   [`TensorMut`], [`Stream`], [`Workspace`], [`PlanPreference`],
//!   [`BackendKind`], [`KernelSku`], [`PrecisionGuarantee`], [`enum@Error`];
//! - [`quantize`]: the plans, one file each, which validate and dispatch;
//! - `kernels` (private): the arithmetic, with the scalar reference that
//!   reads like the spec.

#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod affine;
pub mod bench_support;
#[cfg(feature = "wgpu")]
mod device;
#[cfg(feature = "wgpu")]
mod device_tensor;
mod element;
mod error;
pub mod ggml;
mod kernels;
pub mod pack;
mod plan;
pub mod quantize;
pub mod recipe;
mod stream;
mod tensor;

pub use element::{DeviceElement, Element, ElementKind, IntElement, S4, U4};
pub use error::{Error, Result};
pub use plan::{
    BackendKind, KernelSku, MathPrecision, OpCategory, PlanPreference, PrecisionGuarantee,
    QuantizeKind,
};
pub use quantize::*;
pub use stream::{Stream, Workspace};
pub use tensor::{TensorMut, TensorRef};

#[cfg(feature = "wgpu")]
pub use device_tensor::{DeviceBuffer, DeviceTensorMut, DeviceTensorRef};
/// The `wgpu` crate groupq's device streams are built on (feature `wgpu`).
#[cfg(feature = "wgpu")]
pub use wgpu;

/// `half`'s `f16` and `bf16`, the half-precision element types.
pub use half;

/// The code samples of README.md, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
