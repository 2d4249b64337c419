//! `QuantizePerGroupPlan`: float → integer codes (SPEC §3.1).

use super::common::{check_code_range, check_kind, GpuOp, GpuPlan, Layout, PlanCore, View};
use crate::element::{Element, ElementKind, IntElement};
use crate::error::Result;
use crate::kernels::recipe::{FormulaKernel, VectorRecipe};
use crate::kernels::{row_slice, QuantizeKernel};
use crate::plan::BackendKind;
use crate::plan::{PlanPreference, QuantizeKind};
use crate::recipe::QuantizeFormula;
use crate::stream::{Stream, Workspace};
use crate::tensor::{TensorMut, TensorRef};
#[cfg(feature = "wgpu")]
use {
    super::common::DevArg,
    crate::device_tensor::{DeviceTensorMut, DeviceTensorRef},
};

const PLAN: &str = "QuantizePerGroupPlan";

/// Describes a per-group quantization: `[outer_size, axis_size]` floats,
/// `axis_size / group_size` groups per row, codes clamped to `q_min..=q_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantizePerGroupDescriptor {
    /// Number of rows.
    pub outer_size: usize,
    /// Length of the quantized (last) axis.
    pub axis_size: usize,
    /// Elements per group; must divide `axis_size`.
    pub group_size: usize,
    /// Smallest code written; inside the output type's range.
    pub q_min: i32,
    /// Largest code written; inside the output type's range.
    pub q_max: i32,
    /// Must be `TIn::KIND`.
    pub input_element: ElementKind,
    /// Must be `TOut::KIND`.
    pub output_element: ElementKind,
}

impl QuantizePerGroupDescriptor {
    /// `axis_size / group_size` (0 when `group_size` is 0).
    pub fn num_groups(&self) -> usize {
        self.axis_size.checked_div(self.group_size).unwrap_or(0)
    }
}

/// The tensors of one forward call. `scale` has the input's type,
/// `zero_point` is `i32`; both are `[outer_size, num_groups]`.
#[derive(Debug)]
pub struct QuantizePerGroupArgs<'a, TIn, TOut> {
    /// `[outer_size, axis_size]` values to quantize.
    pub input: TensorRef<'a, TIn, 2>,
    /// `[outer_size, num_groups]` scales.
    pub scale: TensorRef<'a, TIn, 2>,
    /// `[outer_size, num_groups]` zero points.
    pub zero_point: TensorRef<'a, i32, 2>,
    /// `[outer_size, axis_size]` codes written.
    pub output: TensorMut<'a, TOut, 2>,
}

/// The device tensors of one forward call on a device stream (feature
/// `wgpu`): as [`QuantizePerGroupArgs`], in device memory.
#[cfg(feature = "wgpu")]
#[derive(Debug)]
pub struct QuantizePerGroupDeviceArgs<'a, TIn, TOut> {
    /// `[outer_size, axis_size]` values to quantize.
    pub input: DeviceTensorRef<'a, TIn, 2>,
    /// `[outer_size, num_groups]` scales.
    pub scale: DeviceTensorRef<'a, TIn, 2>,
    /// `[outer_size, num_groups]` zero points.
    pub zero_point: DeviceTensorRef<'a, i32, 2>,
    /// `[outer_size, axis_size / PACK]` codes written.
    pub output: DeviceTensorMut<'a, TOut, 2>,
}

/// Quantizes each group of the last axis with its own scale and zero point:
/// `q = clamp(round_half_to_even((s != 0 ? x / s : 0) + z), q_min, q_max)`
/// computed in `f32` (`f64` for `f64` input), exactly as SPEC §3.1 defines.
///
/// ```
/// use groupq::*;
///
/// // Two rows of four values, groups of two, to the int4 range.
/// let x = [0.5f32, -1.0, 2.5, 8.0, f32::NAN, 0.25, -3.0, 1.5];
/// let s = [0.5f32, 1.0, 0.25, 0.5];
/// let z = [0i32, 1, 0, -2];
/// let mut q = [0i8; 8];
///
/// let desc = QuantizePerGroupDescriptor {
///     outer_size: 2, axis_size: 4, group_size: 2, q_min: -8, q_max: 7,
///     input_element: ElementKind::F32, output_element: ElementKind::S8,
/// };
/// let stream = Stream::cpu();
/// let plan = QuantizePerGroupPlan::<f32, i8>::select(&stream, &desc, PlanPreference::default())?;
/// plan.run(&stream, Workspace::None, QuantizePerGroupArgs {
///     input: TensorRef::new(&x, [2, 4])?,
///     scale: TensorRef::new(&s, [2, 2])?,
///     zero_point: TensorRef::new(&z, [2, 2])?,
///     output: TensorMut::new(&mut q, [2, 4])?,
/// })?;
/// // 2.5 / 1 + 1 = 3.5 rounds to even 4; 8 / 1 + 1 = 9 clamps to 7; NaN gives 0.
/// assert_eq!(q, [1, -2, 4, 7, 0, 1, -8, 1]);
/// # Ok::<(), groupq::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct QuantizePerGroupPlan<TIn: Element, TOut: IntElement> {
    core: PlanCore,
    q_min: i32,
    q_max: i32,
    kernel: Forward<TIn, TOut>,
    /// The device half, for plans selected on a device stream.
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    gpu: Option<GpuPlan>,
}

/// The forward's arithmetic: SPEC §3.1's kernel (one code per byte on a
/// vector backend, any codes on the scalar one), a formula on the recipe
/// engine's vector kernels (other formulas, and packed codes), or a formula
/// on the scalar engine.
#[derive(Debug, Clone, Copy)]
enum Forward<TIn, TOut> {
    Spec(QuantizeKernel<TIn, TOut>),
    Vector(FormulaKernel, VectorRecipe<TIn>),
    Formula(FormulaKernel),
}

impl<TIn: Element, TOut: IntElement> QuantizePerGroupPlan<TIn, TOut> {
    /// Validates `desc` and chooses a kernel.
    ///
    /// Errors, first failure wins: element kinds other than `TIn::KIND` /
    /// `TOut::KIND` → `Unsupported`; `group_size == 0`, `axis_size` not a
    /// multiple of `group_size`, `q_max < q_min`, or `[q_min, q_max]` not
    /// inside `TOut`'s range → `InvalidProblem`; a `pref.prefer_backend`
    /// that this machine lacks → `Unsupported`.
    pub fn select(
        stream: &Stream,
        desc: &QuantizePerGroupDescriptor,
        pref: PlanPreference,
    ) -> Result<Self> {
        Self::select_with_formula(stream, desc, QuantizeFormula::SPEC, pref)
    }

    /// [`select`](Self::select) for another quantize formula than SPEC
    /// §3.1's: a recipe's [`Recipe::quantize`](crate::recipe::Recipe) (for
    /// example PyTorch's reciprocal multiply, or torchao's zero point after
    /// rounding in the input dtype), applied to caller-given scales and zero
    /// points. A formula runs on a vector backend where the recipe engine
    /// has its vector form (every preset's, except the fused
    /// reciprocal-add), with results bit-identical to the scalar engine,
    /// and on the scalar backend otherwise (another preferred backend is
    /// then `Unsupported`). Packed `S4`/`U4` codes take the same path. On a
    /// device stream every formula runs on the device, bit-identical too
    /// (formulas other than SPEC's need the device feature `SHADER_INT64`,
    /// as the generated shaders hold a caller's scale in f64). The zero
    /// point is added as SPEC's `M(z)` (rounded to f32 below f64) by every
    /// formula.
    ///
    /// ```
    /// use groupq::*;
    /// use groupq::recipe::{QuantizeFormula, Recipe};
    ///
    /// let desc = QuantizePerGroupDescriptor {
    ///     outer_size: 1, axis_size: 2, group_size: 2, q_min: -128, q_max: 127,
    ///     input_element: ElementKind::F32, output_element: ElementKind::S8,
    /// };
    /// // PyTorch multiplies by the reciprocal of the scale; SPEC §3.1
    /// // divides. With s = 0.02, 2.45 × (1/s) is 122.5 (a tie, to even)
    /// // where 2.45 / s is 122.500008, and -2.35 × (1/s) is -117.49999
    /// // where -2.35 / s is -117.5.
    /// let (x, s, z) = ([2.45f32, -2.35], [0.02f32], [0i32]);
    /// let codes = |formula| -> Result<[i8; 2]> {
    ///     let plan = QuantizePerGroupPlan::<f32, i8>::select_with_formula(
    ///         &Stream::cpu(), &desc, formula, Default::default())?;
    ///     let mut q = [0i8; 2];
    ///     plan.run(&Stream::cpu(), Workspace::None, QuantizePerGroupArgs {
    ///         input: TensorRef::new(&x, [1, 2])?,
    ///         scale: TensorRef::new(&s, [1, 1])?,
    ///         zero_point: TensorRef::new(&z, [1, 1])?,
    ///         output: TensorMut::new(&mut q, [1, 2])?,
    ///     })?;
    ///     Ok(q)
    /// };
    /// let torch = Recipe::torch_per_channel_group(-128, 127).quantize;
    /// assert_eq!(codes(torch)?, [122, -117]);
    /// assert_eq!(codes(QuantizeFormula::SPEC)?, [123, -118]);
    /// # Ok::<(), groupq::Error>(())
    /// ```
    pub fn select_with_formula(
        stream: &Stream,
        desc: &QuantizePerGroupDescriptor,
        formula: QuantizeFormula,
        pref: PlanPreference,
    ) -> Result<Self> {
        check_kind(PLAN, "input_element", desc.input_element, "TIn", TIn::KIND)?;
        check_kind(
            PLAN,
            "output_element",
            desc.output_element,
            "TOut",
            TOut::KIND,
        )?;
        let layout = Layout::new(PLAN, desc.outer_size, desc.axis_size, desc.group_size)?;
        check_code_range::<TOut>(PLAN, desc.q_min, desc.q_max)?;
        layout.check_pack(PLAN, TOut::KIND, TOut::PACK)?;
        let op = QuantizeKind::QuantizePerGroup;
        let formula_kernel = FormulaKernel::new(formula, TIn::KIND);
        let spec = formula == QuantizeFormula::SPEC;
        let lookup = |b: BackendKind| match b {
            BackendKind::Scalar if spec => {
                crate::kernels::quantize::<TIn, TOut>(b).map(Forward::Spec)
            }
            BackendKind::Scalar => Some(Forward::Formula(formula_kernel)),
            _ if spec && TOut::PACK == 1 => {
                crate::kernels::quantize::<TIn, TOut>(b).map(Forward::Spec)
            }
            _ => formula_kernel
                .vector::<TIn, TOut>(b)
                .map(|v| Forward::Vector(formula_kernel, v)),
        };
        let aux = Some(TOut::KIND);
        let gop = if spec {
            GpuOp::Quantize
        } else {
            GpuOp::Formula(formula)
        };
        let device = Ok((gop, TIn::KIND, TOut::KIND));
        let (core, kernel, gpu) =
            PlanCore::select_on::<TIn, _>(PLAN, op, aux, layout, pref, stream, lookup, device)?;
        Ok(QuantizePerGroupPlan {
            core,
            q_min: desc.q_min,
            q_max: desc.q_max,
            kernel,
            gpu,
        })
    }

    /// Checks `args` against the descriptor: shapes (`InvalidProblem`), slice
    /// lengths (`BufferTooSmall`), last-axis strides of 1 and non-overlapping
    /// output rows (`InvalidProblem`).
    pub fn can_implement(&self, args: &QuantizePerGroupArgs<'_, TIn, TOut>) -> Result<()> {
        let l = &self.core.layout;
        self.core.check_views(
            &[
                View::of("input", &args.input, l.data_shape()),
                View::of("scale", &args.scale, l.param_shape()),
                View::of("zero_point", &args.zero_point, l.param_shape()),
            ],
            &[View::of_mut(
                "output",
                &args.output,
                l.codes_shape(TOut::PACK),
            )],
        )
    }

    plan_info_methods!();

    /// [`can_implement`](Self::can_implement) for device tensors: the same
    /// checks, with each view's `offset` counted in its buffer's length.
    #[cfg(feature = "wgpu")]
    pub fn can_implement_device(
        &self,
        args: &QuantizePerGroupDeviceArgs<'_, TIn, TOut>,
    ) -> Result<()> {
        self.core.check_device_args(&self.device_args(args))
    }

    /// The device tensors of a call: views, devices and bindings.
    #[cfg(feature = "wgpu")]
    fn device_args<'a>(
        &self,
        args: &'a QuantizePerGroupDeviceArgs<'_, TIn, TOut>,
    ) -> [DevArg<'a>; 4] {
        let l = &self.core.layout;
        let gs = l.group_size;
        let i32_ = ElementKind::I32;
        [
            DevArg::input("input", &args.input, l.data_shape(), (TIn::KIND, gs), 2),
            DevArg::input("scale", &args.scale, l.param_shape(), (TIn::KIND, 1), 3),
            DevArg::input(
                "zero_point",
                &args.zero_point,
                l.param_shape(),
                (i32_, 1),
                4,
            ),
            DevArg::output(
                "output",
                &args.output,
                l.codes_shape(TOut::PACK),
                (TOut::KIND, gs / TOut::PACK),
            ),
        ]
    }

    /// Enqueues the quantization of device tensors on the device stream the
    /// plan was selected on (feature `wgpu`); `stream.synchronize()` or a
    /// download waits for it. The codes are bit-identical to the CPU
    /// backends'. Errors as [`run`](Self::run), before anything is
    /// enqueued; a plan selected on a CPU stream, another stream or a
    /// buffer of another device is an error too.
    #[cfg(feature = "wgpu")]
    pub fn run_device(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: QuantizePerGroupDeviceArgs<'_, TIn, TOut>,
    ) -> Result<()> {
        let q_range = (self.q_min, self.q_max);
        let dev_args = self.device_args(&args);
        (self.core).run_device(self.gpu.as_ref(), stream, &workspace, q_range, &dev_args)
    }

    /// Quantizes `args.input` into `args.output`. Calls `can_implement`
    /// first; on error nothing is written.
    pub fn run(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: QuantizePerGroupArgs<'_, TIn, TOut>,
    ) -> Result<()> {
        self.can_implement(&args)?;
        let QuantizePerGroupArgs {
            input,
            scale,
            zero_point,
            output,
        } = args;
        let (gs, q_min, q_max, kernel) = (
            self.core.layout.group_size,
            self.q_min,
            self.q_max,
            self.kernel,
        );
        self.core.run(
            stream,
            &workspace,
            output,
            TOut::PACK,
            |row, g0, g1, out| {
                let x = row_slice(&input, row, g0 * gs, g1 * gs);
                let (s, z) = (
                    row_slice(&scale, row, g0, g1),
                    row_slice(&zero_point, row, g0, g1),
                );
                match kernel {
                    Forward::Spec(k) => k(x, s, z, out, gs, q_min, q_max),
                    Forward::Vector(f, v) => {
                        f.quantize_groups_vector(&v, x, s, z, out, gs, (q_min, q_max))
                    }
                    Forward::Formula(f) => {
                        // At most `TASK_ELEMENTS / gs` groups: widen the scales
                        // of one group at a time.
                        for (g, (&s, &z)) in s.iter().zip(z).enumerate() {
                            let units = gs / TOut::PACK;
                            let (xs, os) = (&x[g * gs..][..gs], &mut out[g * units..][..units]);
                            f.quantize_groups(xs, &[s.to_f64()], &[z], os, gs, q_min, q_max);
                        }
                    }
                }
            },
        )
    }
}
