//! `QuantizeDynamicPerGroupPlan`: scales, zero points and codes in one pass,
//! by a [`Recipe`].

use super::common::{check_kind, Layout, PlanCore, View};
#[cfg(feature = "wgpu")]
use super::engine::check_offset_device;
use super::engine::{check_offset, check_recipe, select_engine, RecipeEngine};
#[cfg(feature = "wgpu")]
use crate::device_tensor::{DeviceTensorMut, DeviceTensorRef};
use crate::element::{Element, ElementKind, IntElement};
use crate::error::Result;
use crate::plan::{PlanPreference, QuantizeKind};
use crate::recipe::Recipe;
use crate::stream::{Stream, Workspace};
use crate::tensor::{TensorMut, TensorRef};
use std::marker::PhantomData;

const PLAN: &str = "QuantizeDynamicPerGroupPlan";

/// The plan's element types, without owning any (so the plan is always
/// `Send`, `Sync` and unwind-safe).
type Types<TIn, TScale, TOut> = PhantomData<fn() -> (TIn, TScale, TOut)>;

/// Describes a dynamic (data-driven) per-group quantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantizeDynamicPerGroupDescriptor {
    /// Number of rows.
    pub outer_size: usize,
    /// Length of the quantized (last) axis.
    pub axis_size: usize,
    /// Elements per group; must divide `axis_size`.
    pub group_size: usize,
    /// Every numerical choice; its `[q_min, q_max]` must fit `TOut`.
    pub recipe: Recipe,
    /// Must be `TIn::KIND`.
    pub input_element: ElementKind,
    /// Must be `TScale::KIND`.
    pub scale_element: ElementKind,
    /// Must be `TOut::KIND`.
    pub output_element: ElementKind,
}

impl QuantizeDynamicPerGroupDescriptor {
    /// `axis_size / group_size` (0 when `group_size` is 0).
    pub fn num_groups(&self) -> usize {
        self.axis_size.checked_div(self.group_size).unwrap_or(0)
    }
}

/// The tensors of one dynamic quantization.
#[derive(Debug)]
pub struct QuantizeDynamicPerGroupArgs<'a, TIn, TScale, TOut> {
    /// `[outer_size, axis_size]` values.
    pub input: TensorRef<'a, TIn, 2>,
    /// `[outer_size, num_groups]` scales, written.
    pub scale: TensorMut<'a, TScale, 2>,
    /// `[outer_size, num_groups]` zero points, written.
    pub zero_point: TensorMut<'a, i32, 2>,
    /// `[outer_size, axis_size]` codes, written.
    pub output: TensorMut<'a, TOut, 2>,
}

/// The device tensors of one dynamic quantization on a device stream
/// (feature `wgpu`): as [`QuantizeDynamicPerGroupArgs`], in device memory.
#[cfg(feature = "wgpu")]
#[derive(Debug)]
pub struct QuantizeDynamicPerGroupDeviceArgs<'a, TIn, TScale, TOut> {
    /// `[outer_size, axis_size]` values.
    pub input: DeviceTensorRef<'a, TIn, 2>,
    /// `[outer_size, num_groups]` scales, written.
    pub scale: DeviceTensorMut<'a, TScale, 2>,
    /// `[outer_size, num_groups]` zero points, written.
    pub zero_point: DeviceTensorMut<'a, i32, 2>,
    /// `[outer_size, axis_size / PACK]` codes, written.
    pub output: DeviceTensorMut<'a, TOut, 2>,
}

/// Chooses each group's scale and zero point and quantizes it, reading the
/// group once: exactly [`ChooseQParamsPerGroupPlan`](crate::ChooseQParamsPerGroupPlan)
/// followed by the recipe's quantize formula with the stored scale.
///
/// ```
/// use groupq::*;
/// use groupq::half::bf16;
/// use groupq::recipe::Recipe;
///
/// // GPTQ, symmetric 4-bit: f32 scales for bf16 weights, unsigned codes.
/// let w: Vec<bf16> = [0.1f32, -0.4, 0.3, 0.2].iter().map(|&v| bf16::from_f32(v)).collect();
/// let (mut s, mut z, mut q) = ([0f32; 1], [0i32; 1], [0u8; 4]);
/// let desc = QuantizeDynamicPerGroupDescriptor {
///     outer_size: 1, axis_size: 4, group_size: 4, recipe: Recipe::gptq(true, 4),
///     input_element: ElementKind::Bf16, scale_element: ElementKind::F32,
///     output_element: ElementKind::U8,
/// };
/// let stream = Stream::cpu();
/// let plan = QuantizeDynamicPerGroupPlan::<bf16, f32, u8>::select(&stream, &desc, Default::default())?;
/// plan.run(&stream, Workspace::None, QuantizeDynamicPerGroupArgs {
///     input: TensorRef::new(&w, [1, 4])?,
///     scale: TensorMut::new(&mut s, [1, 1])?,
///     zero_point: TensorMut::new(&mut z, [1, 1])?,
///     output: TensorMut::new(&mut q, [1, 4])?,
/// })?;
/// assert_eq!(z, [8]);
/// assert_eq!(q[1], 0); // -0.4 is -amax: code 8 - 7.5 rounded to even, clamped to 0
/// # Ok::<(), groupq::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct QuantizeDynamicPerGroupPlan<TIn: Element, TScale: Element, TOut: IntElement> {
    core: PlanCore,
    engine: RecipeEngine<TIn>,
    types: Types<TIn, TScale, TOut>,
}

impl<TIn: Element, TScale: Element, TOut: IntElement>
    QuantizeDynamicPerGroupPlan<TIn, TScale, TOut>
{
    /// Validates `desc` and chooses a kernel. Errors as
    /// [`ChooseQParamsPerGroupPlan::select`](crate::ChooseQParamsPerGroupPlan::select),
    /// plus `output_element` (`Unsupported`) and a recipe range outside
    /// `TOut` (`InvalidProblem`).
    pub fn select(
        stream: &Stream,
        desc: &QuantizeDynamicPerGroupDescriptor,
        pref: PlanPreference,
    ) -> Result<Self> {
        check_kind(PLAN, "input_element", desc.input_element, "TIn", TIn::KIND)?;
        check_kind(
            PLAN,
            "scale_element",
            desc.scale_element,
            "TScale",
            TScale::KIND,
        )?;
        check_kind(
            PLAN,
            "output_element",
            desc.output_element,
            "TOut",
            TOut::KIND,
        )?;
        let layout = Layout::new(PLAN, desc.outer_size, desc.axis_size, desc.group_size)?;
        check_recipe(PLAN, &desc.recipe, Some((TOut::KIND, TOut::MIN, TOut::MAX)))?;
        layout.check_pack(PLAN, TOut::KIND, TOut::PACK)?;
        let op = QuantizeKind::QuantizeDynamicPerGroup;
        let (core, engine) = select_engine::<TIn, TScale>(
            PLAN,
            stream,
            op,
            Some(TOut::KIND),
            layout,
            desc.recipe,
            TOut::PACK == 2,
            pref,
        )?;
        Ok(QuantizeDynamicPerGroupPlan {
            core,
            engine,
            types: PhantomData,
        })
    }

    /// Checks `args` against the descriptor: shapes (`InvalidProblem`), slice
    /// lengths (`BufferTooSmall`), last-axis strides of 1 and non-overlapping
    /// output rows (`InvalidProblem`).
    pub fn can_implement(
        &self,
        args: &QuantizeDynamicPerGroupArgs<'_, TIn, TScale, TOut>,
    ) -> Result<()> {
        let l = &self.core.layout;
        self.core.check_views(
            &[View::of("input", &args.input, l.data_shape())],
            &[
                View::of_mut("scale", &args.scale, l.param_shape()),
                View::of_mut("zero_point", &args.zero_point, l.param_shape()),
                View::of_mut("output", &args.output, l.codes_shape(TOut::PACK)),
            ],
        )
    }

    plan_info_methods!();

    /// [`can_implement`](Self::can_implement) for device tensors.
    #[cfg(feature = "wgpu")]
    pub fn can_implement_device(
        &self,
        args: &QuantizeDynamicPerGroupDeviceArgs<'_, TIn, TScale, TOut>,
    ) -> Result<()> {
        let l = &self.core.layout;
        self.core.check_views(
            &[View::of_device("input", &args.input, l.data_shape())],
            &[
                View::of_device_mut("scale", &args.scale, l.param_shape()),
                View::of_device_mut("zero_point", &args.zero_point, l.param_shape()),
                View::of_device_mut("output", &args.output, l.codes_shape(TOut::PACK)),
            ],
        )
    }

    /// Writes scales, zero points and codes of device tensors on the device
    /// stream the plan was selected on (feature `wgpu`), bit-identical to
    /// the CPU backends; waits only for the non-finite check under the
    /// recipe's Error policy (see
    /// [`ChooseQParamsPerGroupPlan::run_device`](crate::ChooseQParamsPerGroupPlan::run_device)).
    #[cfg(feature = "wgpu")]
    pub fn run_device(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: QuantizeDynamicPerGroupDeviceArgs<'_, TIn, TScale, TOut>,
    ) -> Result<()> {
        self.run_device_inner(stream, workspace, args, None)
    }

    /// [`run_device`](Self::run_device) that also writes each group's float offset.
    #[cfg(feature = "wgpu")]
    pub fn run_device_with_offset(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: QuantizeDynamicPerGroupDeviceArgs<'_, TIn, TScale, TOut>,
        offset: DeviceTensorMut<'_, TScale, 2>,
    ) -> Result<()> {
        self.run_device_inner(stream, workspace, args, Some(offset))
    }

    #[cfg(feature = "wgpu")]
    fn run_device_inner(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: QuantizeDynamicPerGroupDeviceArgs<'_, TIn, TScale, TOut>,
        offset: Option<DeviceTensorMut<'_, TScale, 2>>,
    ) -> Result<()> {
        self.can_implement_device(&args)?;
        let recipe = &self.engine.kernel.recipe;
        check_offset_device(PLAN, recipe, offset.as_ref(), &self.core)?;
        self.core.check_workspace(&workspace)?;
        let QuantizeDynamicPerGroupDeviceArgs {
            input,
            scale,
            zero_point,
            output,
        } = args;
        let core = &self.core;
        (self.engine).run_device(core, stream, input, scale, zero_point, Some(output), offset)
    }

    /// Writes scales, zero points and codes. Calls `can_implement` first; on
    /// any error (including `NonFiniteInput`) nothing is written. A recipe
    /// with a float offset needs [`run_with_offset`](Self::run_with_offset).
    pub fn run(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: QuantizeDynamicPerGroupArgs<'_, TIn, TScale, TOut>,
    ) -> Result<()> {
        self.run_inner(stream, workspace, args, None)
    }

    /// [`run`](Self::run) that also writes each group's float offset
    /// (`[outer_size, num_groups]`; zeros for recipes without one), for
    /// recipes such as [`Recipe::gguf_q4_1`] where `x ≈ q·s + m`.
    pub fn run_with_offset(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: QuantizeDynamicPerGroupArgs<'_, TIn, TScale, TOut>,
        offset: TensorMut<'_, TScale, 2>,
    ) -> Result<()> {
        self.run_inner(stream, workspace, args, Some(offset))
    }

    fn run_inner(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: QuantizeDynamicPerGroupArgs<'_, TIn, TScale, TOut>,
        offset: Option<TensorMut<'_, TScale, 2>>,
    ) -> Result<()> {
        let _ = workspace;
        self.can_implement(&args)?;
        check_offset(
            PLAN,
            &self.engine.kernel.recipe,
            offset.as_ref(),
            &self.core,
        )?;
        let QuantizeDynamicPerGroupArgs {
            input,
            scale,
            zero_point,
            output,
        } = args;
        let core = &self.core;
        (self.engine).run(core, stream, input, scale, zero_point, Some(output), offset)
    }
}
