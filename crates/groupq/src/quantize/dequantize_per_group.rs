//! `DequantizePerGroupPlan`: integer codes → float (SPEC §3.2).

use super::common::{check_kind, GpuOp, GpuPlan, Layout, PlanCore, View};
use crate::element::{Element, ElementKind, IntElement};
use crate::error::Result;
use crate::kernels::{row_slice, DequantizeKernel};
use crate::plan::{PlanPreference, QuantizeKind};
use crate::stream::{Stream, Workspace};
use crate::tensor::{TensorMut, TensorRef};
#[cfg(feature = "wgpu")]
use {
    super::common::DevArg,
    crate::device_tensor::{DeviceTensorMut, DeviceTensorRef},
};

const PLAN: &str = "DequantizePerGroupPlan";

/// Describes a per-group dequantization of `[outer_size, axis_size]` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DequantizePerGroupDescriptor {
    /// Number of rows.
    pub outer_size: usize,
    /// Length of the quantized (last) axis.
    pub axis_size: usize,
    /// Elements per group; must divide `axis_size`.
    pub group_size: usize,
    /// Must be `TQ::KIND`.
    pub input_element: ElementKind,
    /// Must be `TOut::KIND`.
    pub output_element: ElementKind,
}

impl DequantizePerGroupDescriptor {
    /// `axis_size / group_size` (0 when `group_size` is 0).
    pub fn num_groups(&self) -> usize {
        self.axis_size.checked_div(self.group_size).unwrap_or(0)
    }
}

/// The tensors of one dequantize call. `scale` has the output's type. With
/// packed codes ([`S4`](crate::S4), [`U4`](crate::U4)) `input` is
/// `[outer_size, axis_size / 2]` bytes.
#[derive(Debug)]
pub struct DequantizePerGroupArgs<'a, TQ, TOut> {
    /// `[outer_size, axis_size]` codes.
    pub input: TensorRef<'a, TQ, 2>,
    /// `[outer_size, num_groups]` scales.
    pub scale: TensorRef<'a, TOut, 2>,
    /// `[outer_size, num_groups]` zero points.
    pub zero_point: TensorRef<'a, i32, 2>,
    /// `[outer_size, axis_size]` values written.
    pub output: TensorMut<'a, TOut, 2>,
}

/// The device tensors of one dequantization on a device stream (feature
/// `wgpu`): as [`DequantizePerGroupArgs`], in device memory.
#[cfg(feature = "wgpu")]
#[derive(Debug)]
pub struct DequantizePerGroupDeviceArgs<'a, TQ, TOut> {
    /// `[outer_size, axis_size / PACK]` codes.
    pub input: DeviceTensorRef<'a, TQ, 2>,
    /// `[outer_size, num_groups]` scales.
    pub scale: DeviceTensorRef<'a, TOut, 2>,
    /// `[outer_size, num_groups]` zero points.
    pub zero_point: DeviceTensorRef<'a, i32, 2>,
    /// `[outer_size, axis_size]` values written.
    pub output: DeviceTensorMut<'a, TOut, 2>,
}

/// Dequantizes each group: `y = M(q - z) * s`, the difference exact in
/// integers, the product in `f32` (`f64` for `f64` output) and the result
/// rounded to nearest-even into `TOut` (SPEC §3.2).
///
/// ```
/// use groupq::*;
/// use half::bf16;
///
/// let q = [3i8, -8, 7, 0];
/// let s = [bf16::from_f32(0.5), bf16::from_f32(2.0)];
/// let z = [1i32, -1];
/// let mut y = [bf16::ZERO; 4];
/// let desc = DequantizePerGroupDescriptor {
///     outer_size: 1, axis_size: 4, group_size: 2,
///     input_element: ElementKind::S8, output_element: ElementKind::Bf16,
/// };
/// let stream = Stream::cpu();
/// let plan = DequantizePerGroupPlan::<i8, bf16>::select(&stream, &desc, PlanPreference::default())?;
/// plan.run(&stream, Workspace::None, DequantizePerGroupArgs {
///     input: TensorRef::new(&q, [1, 4])?,
///     scale: TensorRef::new(&s, [1, 2])?,
///     zero_point: TensorRef::new(&z, [1, 2])?,
///     output: TensorMut::new(&mut y, [1, 4])?,
/// })?;
/// assert_eq!(y.map(f32::from), [1.0, -4.5, 16.0, 2.0]);
/// # Ok::<(), groupq::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DequantizePerGroupPlan<TQ: IntElement, TOut: Element> {
    core: PlanCore,
    kernel: DequantizeKernel<TQ, TOut>,
    /// The device half, for plans selected on a device stream.
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    gpu: Option<GpuPlan>,
}

impl<TQ: IntElement, TOut: Element> DequantizePerGroupPlan<TQ, TOut> {
    /// Validates `desc` and chooses a kernel. Errors as
    /// [`QuantizePerGroupPlan::select`](crate::QuantizePerGroupPlan::select)
    /// where they apply (element kinds, `group_size`, divisibility, backend).
    pub fn select(
        stream: &Stream,
        desc: &DequantizePerGroupDescriptor,
        pref: PlanPreference,
    ) -> Result<Self> {
        check_kind(PLAN, "input_element", desc.input_element, "TQ", TQ::KIND)?;
        check_kind(
            PLAN,
            "output_element",
            desc.output_element,
            "TOut",
            TOut::KIND,
        )?;
        let layout = Layout::new(PLAN, desc.outer_size, desc.axis_size, desc.group_size)?;
        layout.check_pack(PLAN, TQ::KIND, TQ::PACK)?;
        let op = QuantizeKind::DequantizePerGroup;
        let (core, kernel, gpu) = PlanCore::select_on::<TOut, _>(
            PLAN,
            op,
            Some(TQ::KIND),
            layout,
            pref,
            stream,
            crate::kernels::dequantize::<TQ, TOut>,
            Ok((GpuOp::Dequantize, TOut::KIND, TQ::KIND)),
        )?;
        Ok(DequantizePerGroupPlan { core, kernel, gpu })
    }

    /// Checks `args` against the descriptor: shapes (`InvalidProblem`), slice
    /// lengths (`BufferTooSmall`), last-axis strides of 1 and non-overlapping
    /// output rows (`InvalidProblem`).
    pub fn can_implement(&self, args: &DequantizePerGroupArgs<'_, TQ, TOut>) -> Result<()> {
        let l = &self.core.layout;
        self.core.check_views(
            &[
                View::of("input", &args.input, l.codes_shape(TQ::PACK)),
                View::of("scale", &args.scale, l.param_shape()),
                View::of("zero_point", &args.zero_point, l.param_shape()),
            ],
            &[View::of_mut("output", &args.output, l.data_shape())],
        )
    }

    plan_info_methods!();

    /// [`can_implement`](Self::can_implement) for device tensors.
    #[cfg(feature = "wgpu")]
    pub fn can_implement_device(
        &self,
        args: &DequantizePerGroupDeviceArgs<'_, TQ, TOut>,
    ) -> Result<()> {
        self.core.check_device_args(&self.device_args(args))
    }

    /// The device tensors of a call: views, devices and bindings.
    #[cfg(feature = "wgpu")]
    fn device_args<'a>(
        &self,
        args: &'a DequantizePerGroupDeviceArgs<'_, TQ, TOut>,
    ) -> [DevArg<'a>; 4] {
        let l = &self.core.layout;
        let gs = l.group_size;
        let i32_ = ElementKind::I32;
        [
            DevArg::input(
                "input",
                &args.input,
                l.codes_shape(TQ::PACK),
                (TQ::KIND, gs / TQ::PACK),
                2,
            ),
            DevArg::input("scale", &args.scale, l.param_shape(), (TOut::KIND, 1), 3),
            DevArg::input(
                "zero_point",
                &args.zero_point,
                l.param_shape(),
                (i32_, 1),
                4,
            ),
            DevArg::output("output", &args.output, l.data_shape(), (TOut::KIND, gs)),
        ]
    }

    /// Enqueues the dequantization of device tensors on the device stream
    /// the plan was selected on (feature `wgpu`), bit-identical to the CPU
    /// backends; errors as [`QuantizePerGroupPlan::run_device`](crate::QuantizePerGroupPlan::run_device).
    #[cfg(feature = "wgpu")]
    pub fn run_device(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: DequantizePerGroupDeviceArgs<'_, TQ, TOut>,
    ) -> Result<()> {
        let q_range = (0, 0);
        let dev_args = self.device_args(&args);
        (self.core).run_device(self.gpu.as_ref(), stream, &workspace, q_range, &dev_args)
    }

    /// Dequantizes `args.input` into `args.output`. Calls `can_implement`
    /// first; on error nothing is written.
    pub fn run(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: DequantizePerGroupArgs<'_, TQ, TOut>,
    ) -> Result<()> {
        self.can_implement(&args)?;
        let DequantizePerGroupArgs {
            input,
            scale,
            zero_point,
            output,
        } = args;
        let (gs, kernel) = (self.core.layout.group_size, self.kernel);
        self.core
            .run(stream, &workspace, output, 1, |row, g0, g1, out| {
                kernel(
                    row_slice(&input, row, g0 * gs / TQ::PACK, g1 * gs / TQ::PACK),
                    row_slice(&scale, row, g0, g1),
                    row_slice(&zero_point, row, g0, g1),
                    out,
                    gs,
                )
            })
    }
}
