//! `DequantizePerGroupBackwardPlan`: the gradient of the dequantization
//! (SPEC §3.4).

use super::common::{GpuOp, GpuPlan, Layout, PlanCore, View};
use crate::element::{Element, ElementKind, IntElement};
use crate::error::Result;
use crate::kernels::{row_slice, DequantizeBackwardKernel};
use crate::plan::{PlanPreference, QuantizeKind};
use crate::stream::{Stream, Workspace};
use crate::tensor::{TensorMut, TensorRef};
use std::marker::PhantomData;
#[cfg(feature = "wgpu")]
use {
    super::common::DevArg,
    crate::device_tensor::{DeviceTensorMut, DeviceTensorRef},
};

const PLAN: &str = "DequantizePerGroupBackwardPlan";

/// Describes the backward of a per-group dequantization. The element types
/// are the plan's type parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DequantizePerGroupBackwardDescriptor {
    /// Number of rows.
    pub outer_size: usize,
    /// Length of the quantized (last) axis.
    pub axis_size: usize,
    /// Elements per group; must divide `axis_size`.
    pub group_size: usize,
}

impl DequantizePerGroupBackwardDescriptor {
    /// `axis_size / group_size` (0 when `group_size` is 0).
    pub fn num_groups(&self) -> usize {
        self.axis_size.checked_div(self.group_size).unwrap_or(0)
    }
}

/// The tensors of one dequantize-backward call.
#[derive(Debug)]
pub struct DequantizePerGroupBackwardArgs<'a, TOut> {
    /// `[outer_size, axis_size]` gradient with respect to the dequantized values.
    pub grad_output: TensorRef<'a, TOut, 2>,
    /// `[outer_size, num_groups]` scales.
    pub scale: TensorRef<'a, TOut, 2>,
    /// `[outer_size, axis_size]` gradient taken straight through to the float domain, written.
    pub grad_input: TensorMut<'a, TOut, 2>,
}

/// The device tensors of one dequantize-backward call on a device stream
/// (feature `wgpu`): as [`DequantizePerGroupBackwardArgs`], in device memory.
#[cfg(feature = "wgpu")]
#[derive(Debug)]
pub struct DequantizePerGroupBackwardDeviceArgs<'a, TOut> {
    /// `[outer_size, axis_size]` gradient with respect to the dequantized values.
    pub grad_output: DeviceTensorRef<'a, TOut, 2>,
    /// `[outer_size, num_groups]` scales.
    pub scale: DeviceTensorRef<'a, TOut, 2>,
    /// `[outer_size, axis_size]` gradient written.
    pub grad_input: DeviceTensorMut<'a, TOut, 2>,
}

/// Gradient of [`DequantizePerGroupPlan`](crate::DequantizePerGroupPlan):
/// `grad_input = M(dy) * s`, stored as `TOut` (SPEC §3.4).
///
/// ```
/// use groupq::*;
///
/// let dy = [1.0f64, -2.0, 0.5, 4.0];
/// let s = [0.25f64, 3.0];
/// let mut dx = [0.0f64; 4];
/// let desc = DequantizePerGroupBackwardDescriptor { outer_size: 1, axis_size: 4, group_size: 2 };
/// let stream = Stream::cpu();
/// let plan = DequantizePerGroupBackwardPlan::<u8, f64>::select(&stream, &desc, PlanPreference::default())?;
/// plan.run(&stream, Workspace::None, DequantizePerGroupBackwardArgs {
///     grad_output: TensorRef::new(&dy, [1, 4])?,
///     scale: TensorRef::new(&s, [1, 2])?,
///     grad_input: TensorMut::new(&mut dx, [1, 4])?,
/// })?;
/// assert_eq!(dx, [0.25, -0.5, 1.5, 12.0]);
/// # Ok::<(), groupq::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DequantizePerGroupBackwardPlan<TQ: IntElement, TOut: Element> {
    core: PlanCore,
    kernel: DequantizeBackwardKernel<TOut>,
    codes: PhantomData<fn() -> TQ>,
    /// The device half, for plans selected on a device stream.
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    gpu: Option<GpuPlan>,
}

impl<TQ: IntElement, TOut: Element> DequantizePerGroupBackwardPlan<TQ, TOut> {
    /// Validates `desc` and chooses a kernel. Errors: `group_size == 0` or
    /// `axis_size` not a multiple of it → `InvalidProblem`; a preferred
    /// backend this machine lacks → `Unsupported`.
    pub fn select(
        stream: &Stream,
        desc: &DequantizePerGroupBackwardDescriptor,
        pref: PlanPreference,
    ) -> Result<Self> {
        let layout = Layout::new(PLAN, desc.outer_size, desc.axis_size, desc.group_size)?;
        let op = QuantizeKind::DequantizePerGroupBackward;
        let (core, kernel, gpu) = PlanCore::select_on::<TOut, _>(
            PLAN,
            op,
            Some(TQ::KIND),
            layout,
            pref,
            stream,
            crate::kernels::dequantize_backward::<TOut>,
            Ok((GpuOp::DequantizeBackward, TOut::KIND, ElementKind::S8)),
        )?;
        Ok(DequantizePerGroupBackwardPlan {
            core,
            kernel,
            codes: PhantomData,
            gpu,
        })
    }

    /// Checks `args` against the descriptor: shapes (`InvalidProblem`), slice
    /// lengths (`BufferTooSmall`), last-axis strides of 1 and non-overlapping
    /// `grad_input` rows (`InvalidProblem`).
    pub fn can_implement(&self, args: &DequantizePerGroupBackwardArgs<'_, TOut>) -> Result<()> {
        let l = &self.core.layout;
        self.core.check_views(
            &[
                View::of("grad_output", &args.grad_output, l.data_shape()),
                View::of("scale", &args.scale, l.param_shape()),
            ],
            &[View::of_mut("grad_input", &args.grad_input, l.data_shape())],
        )
    }

    plan_info_methods!();

    /// [`can_implement`](Self::can_implement) for device tensors.
    #[cfg(feature = "wgpu")]
    pub fn can_implement_device(
        &self,
        args: &DequantizePerGroupBackwardDeviceArgs<'_, TOut>,
    ) -> Result<()> {
        self.core.check_device_args(&self.device_args(args))
    }

    /// The device tensors of a call: views, devices and bindings.
    #[cfg(feature = "wgpu")]
    fn device_args<'a>(
        &self,
        args: &'a DequantizePerGroupBackwardDeviceArgs<'_, TOut>,
    ) -> [DevArg<'a>; 3] {
        let l = &self.core.layout;
        let gs = l.group_size;
        [
            DevArg::input(
                "grad_output",
                &args.grad_output,
                l.data_shape(),
                (TOut::KIND, gs),
                2,
            ),
            DevArg::input("scale", &args.scale, l.param_shape(), (TOut::KIND, 1), 3),
            DevArg::output(
                "grad_input",
                &args.grad_input,
                l.data_shape(),
                (TOut::KIND, gs),
            ),
        ]
    }

    /// Enqueues the gradient of device tensors on the device stream the
    /// plan was selected on (feature `wgpu`), bit-identical to the CPU
    /// backends; errors as
    /// [`QuantizePerGroupPlan::run_device`](crate::QuantizePerGroupPlan::run_device).
    #[cfg(feature = "wgpu")]
    pub fn run_device(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: DequantizePerGroupBackwardDeviceArgs<'_, TOut>,
    ) -> Result<()> {
        let q_range = (0, 0);
        let dev_args = self.device_args(&args);
        (self.core).run_device(self.gpu.as_ref(), stream, &workspace, q_range, &dev_args)
    }

    /// Writes the gradient into `args.grad_input`. Calls `can_implement`
    /// first; on error nothing is written.
    pub fn run(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: DequantizePerGroupBackwardArgs<'_, TOut>,
    ) -> Result<()> {
        self.can_implement(&args)?;
        let DequantizePerGroupBackwardArgs {
            grad_output,
            scale,
            grad_input,
        } = args;
        let (gs, kernel) = (self.core.layout.group_size, self.kernel);
        self.core
            .run(stream, &workspace, grad_input, 1, |row, g0, g1, out| {
                kernel(
                    row_slice(&grad_output, row, g0 * gs, g1 * gs),
                    row_slice(&scale, row, g0, g1),
                    out,
                    gs,
                )
            })
    }
}
