//! `QuantizePerGroupBackwardPlan`: the straight-through estimator of the
//! forward (SPEC §3.3).

use super::common::{check_code_order, check_kind, GpuOp, GpuPlan, Layout, PlanCore, View};
use crate::element::{Element, ElementKind};
use crate::error::Result;
use crate::kernels::{row_slice, QuantizeBackwardKernel};
pub use crate::plan::SteBoundary;
use crate::plan::{PlanPreference, QuantizeKind};
use crate::stream::{Stream, Workspace};
use crate::tensor::{TensorMut, TensorRef};
#[cfg(feature = "wgpu")]
use {
    super::common::DevArg,
    crate::device_tensor::{DeviceTensorMut, DeviceTensorRef},
};

const PLAN: &str = "QuantizePerGroupBackwardPlan";

/// Describes the backward of a per-group quantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantizePerGroupBackwardDescriptor {
    /// Number of rows.
    pub outer_size: usize,
    /// Length of the quantized (last) axis.
    pub axis_size: usize,
    /// Elements per group; must divide `axis_size`.
    pub group_size: usize,
    /// The forward's `q_min` (any `i32`, at most `q_max`).
    pub q_min: i32,
    /// The forward's `q_max`.
    pub q_max: i32,
    /// Must be `TIn::KIND`.
    pub input_element: ElementKind,
    /// Whether the range ends pass the gradient.
    pub boundary: SteBoundary,
}

impl QuantizePerGroupBackwardDescriptor {
    /// `axis_size / group_size` (0 when `group_size` is 0).
    pub fn num_groups(&self) -> usize {
        self.axis_size.checked_div(self.group_size).unwrap_or(0)
    }
}

/// The tensors of one backward call.
#[derive(Debug)]
pub struct QuantizePerGroupBackwardArgs<'a, TIn> {
    /// `[outer_size, axis_size]` gradient of the loss with respect to the codes.
    pub grad_output: TensorRef<'a, TIn, 2>,
    /// `[outer_size, axis_size]` the forward's input.
    pub input: TensorRef<'a, TIn, 2>,
    /// `[outer_size, num_groups]` scales.
    pub scale: TensorRef<'a, TIn, 2>,
    /// `[outer_size, num_groups]` zero points.
    pub zero_point: TensorRef<'a, i32, 2>,
    /// `[outer_size, axis_size]` gradient with respect to the input, written.
    pub grad_input: TensorMut<'a, TIn, 2>,
}

/// The device tensors of one straight-through backward on a device stream
/// (feature `wgpu`): as [`QuantizePerGroupBackwardArgs`], in device memory.
#[cfg(feature = "wgpu")]
#[derive(Debug)]
pub struct QuantizePerGroupBackwardDeviceArgs<'a, TIn> {
    /// `[outer_size, axis_size]` gradient of the loss with respect to the output.
    pub grad_output: DeviceTensorRef<'a, TIn, 2>,
    /// `[outer_size, axis_size]` forward input.
    pub input: DeviceTensorRef<'a, TIn, 2>,
    /// `[outer_size, num_groups]` scales.
    pub scale: DeviceTensorRef<'a, TIn, 2>,
    /// `[outer_size, num_groups]` zero points.
    pub zero_point: DeviceTensorRef<'a, i32, 2>,
    /// `[outer_size, axis_size]` gradient written.
    pub grad_input: DeviceTensorMut<'a, TIn, 2>,
}

/// Straight-through gradient of [`QuantizePerGroupPlan`](crate::QuantizePerGroupPlan):
/// `grad_input = (inside && s != 0) ? M(dy) / s : 0`, where `inside` tests the
/// forward's unclamped rounded value `r` against `[q_min, q_max]` as the
/// descriptor's [`SteBoundary`] says; a NaN `t` is never inside (SPEC §3.3).
///
/// ```
/// use groupq::*;
///
/// let dy = [1.0f32, 1.0, 1.0, 1.0];
/// let x = [0.5f32, 7.0, 9.0, f32::NAN];
/// let s = [0.5f32];
/// let z = [0i32];
/// let mut dx = [f32::NAN; 4];
/// let desc = QuantizePerGroupBackwardDescriptor {
///     outer_size: 1, axis_size: 4, group_size: 4, q_min: -16, q_max: 15,
///     input_element: ElementKind::F32, boundary: SteBoundary::Inclusive,
/// };
/// let stream = Stream::cpu();
/// let plan = QuantizePerGroupBackwardPlan::<f32>::select(&stream, &desc, PlanPreference::default())?;
/// plan.run(&stream, Workspace::None, QuantizePerGroupBackwardArgs {
///     grad_output: TensorRef::new(&dy, [1, 4])?,
///     input: TensorRef::new(&x, [1, 4])?,
///     scale: TensorRef::new(&s, [1, 1])?,
///     zero_point: TensorRef::new(&z, [1, 1])?,
///     grad_input: TensorMut::new(&mut dx, [1, 4])?,
/// })?;
/// // r = 1 and r = 14 are inside, r = 18 and NaN are not.
/// assert_eq!(dx, [2.0, 2.0, 0.0, 0.0]);
/// # Ok::<(), groupq::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct QuantizePerGroupBackwardPlan<TIn: Element> {
    core: PlanCore,
    q_min: i32,
    q_max: i32,
    boundary: SteBoundary,
    kernel: QuantizeBackwardKernel<TIn>,
    /// The device half, for plans selected on a device stream.
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    gpu: Option<GpuPlan>,
}

impl<TIn: Element> QuantizePerGroupBackwardPlan<TIn> {
    /// Validates `desc` and chooses a kernel. Errors: `input_element` other
    /// than `TIn::KIND` → `Unsupported`; `group_size == 0`, `axis_size` not a
    /// multiple of `group_size`, `q_max < q_min` → `InvalidProblem`; a
    /// preferred backend this machine lacks → `Unsupported`.
    pub fn select(
        stream: &Stream,
        desc: &QuantizePerGroupBackwardDescriptor,
        pref: PlanPreference,
    ) -> Result<Self> {
        check_kind(PLAN, "input_element", desc.input_element, "TIn", TIn::KIND)?;
        let layout = Layout::new(PLAN, desc.outer_size, desc.axis_size, desc.group_size)?;
        check_code_order(PLAN, desc.q_min, desc.q_max)?;
        let op = QuantizeKind::QuantizePerGroupBackward;
        let (core, kernel, gpu) = PlanCore::select_on::<TIn, _>(
            PLAN,
            op,
            None,
            layout,
            pref,
            stream,
            crate::kernels::quantize_backward::<TIn>,
            Ok((
                GpuOp::QuantizeBackward(desc.boundary),
                TIn::KIND,
                ElementKind::S8,
            )),
        )?;
        Ok(QuantizePerGroupBackwardPlan {
            core,
            q_min: desc.q_min,
            q_max: desc.q_max,
            boundary: desc.boundary,
            kernel,
            gpu,
        })
    }

    /// Checks `args` against the descriptor: shapes (`InvalidProblem`), slice
    /// lengths (`BufferTooSmall`), last-axis strides of 1 and non-overlapping
    /// `grad_input` rows (`InvalidProblem`).
    pub fn can_implement(&self, args: &QuantizePerGroupBackwardArgs<'_, TIn>) -> Result<()> {
        let l = &self.core.layout;
        self.core.check_views(
            &[
                View::of("grad_output", &args.grad_output, l.data_shape()),
                View::of("input", &args.input, l.data_shape()),
                View::of("scale", &args.scale, l.param_shape()),
                View::of("zero_point", &args.zero_point, l.param_shape()),
            ],
            &[View::of_mut("grad_input", &args.grad_input, l.data_shape())],
        )
    }

    plan_info_methods!();

    /// [`can_implement`](Self::can_implement) for device tensors.
    #[cfg(feature = "wgpu")]
    pub fn can_implement_device(
        &self,
        args: &QuantizePerGroupBackwardDeviceArgs<'_, TIn>,
    ) -> Result<()> {
        self.core.check_device_args(&self.device_args(args))
    }

    /// The device tensors of a call: views, devices and bindings.
    #[cfg(feature = "wgpu")]
    fn device_args<'a>(
        &self,
        args: &'a QuantizePerGroupBackwardDeviceArgs<'_, TIn>,
    ) -> [DevArg<'a>; 5] {
        let l = &self.core.layout;
        let gs = l.group_size;
        let i32_ = ElementKind::I32;
        [
            DevArg::input(
                "grad_output",
                &args.grad_output,
                l.data_shape(),
                (TIn::KIND, gs),
                2,
            ),
            DevArg::input("input", &args.input, l.data_shape(), (TIn::KIND, gs), 5),
            DevArg::input("scale", &args.scale, l.param_shape(), (TIn::KIND, 1), 3),
            DevArg::input(
                "zero_point",
                &args.zero_point,
                l.param_shape(),
                (i32_, 1),
                4,
            ),
            DevArg::output(
                "grad_input",
                &args.grad_input,
                l.data_shape(),
                (TIn::KIND, gs),
            ),
        ]
    }

    /// Enqueues the straight-through gradient of device tensors on the
    /// device stream the plan was selected on (feature `wgpu`),
    /// bit-identical to the CPU backends; errors as
    /// [`QuantizePerGroupPlan::run_device`](crate::QuantizePerGroupPlan::run_device).
    #[cfg(feature = "wgpu")]
    pub fn run_device(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: QuantizePerGroupBackwardDeviceArgs<'_, TIn>,
    ) -> Result<()> {
        let q_range = (self.q_min, self.q_max);
        let dev_args = self.device_args(&args);
        (self.core).run_device(self.gpu.as_ref(), stream, &workspace, q_range, &dev_args)
    }

    /// Writes the straight-through gradient into `args.grad_input`. Calls
    /// `can_implement` first; on error nothing is written.
    pub fn run(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: QuantizePerGroupBackwardArgs<'_, TIn>,
    ) -> Result<()> {
        self.can_implement(&args)?;
        let QuantizePerGroupBackwardArgs {
            grad_output,
            input,
            scale,
            zero_point,
            grad_input,
        } = args;
        let gs = self.core.layout.group_size;
        let (q_min, q_max, boundary, kernel) = (self.q_min, self.q_max, self.boundary, self.kernel);
        self.core
            .run(stream, &workspace, grad_input, 1, |row, g0, g1, out| {
                kernel(
                    row_slice(&grad_output, row, g0 * gs, g1 * gs),
                    row_slice(&input, row, g0 * gs, g1 * gs),
                    row_slice(&scale, row, g0, g1),
                    row_slice(&zero_point, row, g0, g1),
                    out,
                    gs,
                    q_min,
                    q_max,
                    boundary,
                )
            })
    }
}
