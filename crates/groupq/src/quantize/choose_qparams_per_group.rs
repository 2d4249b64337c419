//! `ChooseQParamsPerGroupPlan`: scales and zero points from the data, by a
//! [`Recipe`].

use super::common::{check_kind, Layout, PlanCore, View};
#[cfg(feature = "wgpu")]
use super::engine::check_offset_device;
use super::engine::{check_offset, check_recipe, select_engine, RecipeEngine};
#[cfg(feature = "wgpu")]
use crate::device_tensor::{DeviceTensorMut, DeviceTensorRef};
use crate::element::{Element, ElementKind};
use crate::error::Result;
use crate::plan::{PlanPreference, QuantizeKind};
use crate::recipe::Recipe;
use crate::stream::{Stream, Workspace};
use crate::tensor::{TensorMut, TensorRef};
use std::marker::PhantomData;

const PLAN: &str = "ChooseQParamsPerGroupPlan";

/// Describes choosing one `(scale, zero_point)` per group of a
/// `[outer_size, axis_size]` tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChooseQParamsPerGroupDescriptor {
    /// Number of rows.
    pub outer_size: usize,
    /// Length of the quantized (last) axis.
    pub axis_size: usize,
    /// Elements per group; must divide `axis_size`.
    pub group_size: usize,
    /// Every numerical choice.
    pub recipe: Recipe,
    /// Must be `TIn::KIND`.
    pub input_element: ElementKind,
    /// Must be `TScale::KIND`.
    pub scale_element: ElementKind,
}

impl ChooseQParamsPerGroupDescriptor {
    /// `axis_size / group_size` (0 when `group_size` is 0).
    pub fn num_groups(&self) -> usize {
        self.axis_size.checked_div(self.group_size).unwrap_or(0)
    }
}

/// The tensors of one choose call.
#[derive(Debug)]
pub struct ChooseQParamsPerGroupArgs<'a, TIn, TScale> {
    /// `[outer_size, axis_size]` values.
    pub input: TensorRef<'a, TIn, 2>,
    /// `[outer_size, num_groups]` scales, written.
    pub scale: TensorMut<'a, TScale, 2>,
    /// `[outer_size, num_groups]` zero points, written.
    pub zero_point: TensorMut<'a, i32, 2>,
}

/// The device tensors of one choose call on a device stream (feature
/// `wgpu`): as [`ChooseQParamsPerGroupArgs`], in device memory.
#[cfg(feature = "wgpu")]
#[derive(Debug)]
pub struct ChooseQParamsPerGroupDeviceArgs<'a, TIn, TScale> {
    /// `[outer_size, axis_size]` values.
    pub input: DeviceTensorRef<'a, TIn, 2>,
    /// `[outer_size, num_groups]` scales, written.
    pub scale: DeviceTensorMut<'a, TScale, 2>,
    /// `[outer_size, num_groups]` zero points, written.
    pub zero_point: DeviceTensorMut<'a, i32, 2>,
}

/// Chooses each group's scale and zero point from its values, exactly as the
/// descriptor's [`Recipe`] says (see [`crate::recipe`] for the presets and
/// the peers they reproduce).
///
/// Deterministic: each group's parameters depend on that group's values
/// alone, whatever the thread count. `-0.0` and `+0.0` are equal in the
/// min/max reductions, and no result depends on which of them is seen.
///
/// ```
/// use groupq::*;
/// use groupq::recipe::{Recipe, TorchaoMapping};
///
/// let x = [0.5f32, -1.0, 0.25, 2.0];
/// let (mut s, mut z) = ([0f32; 2], [0i32; 2]);
/// let desc = ChooseQParamsPerGroupDescriptor {
///     outer_size: 1, axis_size: 4, group_size: 2,
///     recipe: Recipe::torchao(TorchaoMapping::Symmetric, -8, 7),
///     input_element: ElementKind::F32, scale_element: ElementKind::F32,
/// };
/// let stream = Stream::cpu();
/// let plan = ChooseQParamsPerGroupPlan::<f32, f32>::select(&stream, &desc, Default::default())?;
/// plan.run(&stream, Workspace::None, ChooseQParamsPerGroupArgs {
///     input: TensorRef::new(&x, [1, 4])?,
///     scale: TensorMut::new(&mut s, [1, 2])?,
///     zero_point: TensorMut::new(&mut z, [1, 2])?,
/// })?;
/// assert_eq!(s, [1.0 / 7.5, 2.0 / 7.5]); // absmax / 7.5
/// assert_eq!(z, [0, 0]);
/// # Ok::<(), groupq::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ChooseQParamsPerGroupPlan<TIn: Element, TScale: Element> {
    core: PlanCore,
    engine: RecipeEngine<TIn>,
    types: PhantomData<fn() -> (TIn, TScale)>,
}

impl<TIn: Element, TScale: Element> ChooseQParamsPerGroupPlan<TIn, TScale> {
    /// Validates `desc` and chooses a kernel. Errors: element kinds other
    /// than the type parameters → `Unsupported`; `group_size == 0`,
    /// `axis_size` not a multiple of it, or a recipe with `q_max <= q_min`
    /// → `InvalidProblem`; a preferred backend this CPU lacks, or that has
    /// no vector kernel for the recipe and types → `Unsupported`. The vector
    /// backends give bit-identical results to the scalar engine.
    pub fn select(
        stream: &Stream,
        desc: &ChooseQParamsPerGroupDescriptor,
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
        let layout = Layout::new(PLAN, desc.outer_size, desc.axis_size, desc.group_size)?;
        check_recipe(PLAN, &desc.recipe, None)?;
        let op = QuantizeKind::ChooseQParamsPerGroup;
        let (core, engine) = select_engine::<TIn, TScale>(
            PLAN,
            stream,
            op,
            Some(TScale::KIND),
            layout,
            desc.recipe,
            false,
            pref,
        )?;
        Ok(ChooseQParamsPerGroupPlan {
            core,
            engine,
            types: PhantomData,
        })
    }

    /// Checks `args` against the descriptor: shapes (`InvalidProblem`), slice
    /// lengths (`BufferTooSmall`), last-axis strides of 1 and non-overlapping
    /// output rows (`InvalidProblem`).
    pub fn can_implement(&self, args: &ChooseQParamsPerGroupArgs<'_, TIn, TScale>) -> Result<()> {
        let l = &self.core.layout;
        self.core.check_views(
            &[View::of("input", &args.input, l.data_shape())],
            &[
                View::of_mut("scale", &args.scale, l.param_shape()),
                View::of_mut("zero_point", &args.zero_point, l.param_shape()),
            ],
        )
    }

    plan_info_methods!();

    /// [`can_implement`](Self::can_implement) for device tensors.
    #[cfg(feature = "wgpu")]
    pub fn can_implement_device(
        &self,
        args: &ChooseQParamsPerGroupDeviceArgs<'_, TIn, TScale>,
    ) -> Result<()> {
        let l = &self.core.layout;
        self.core.check_views(
            &[View::of_device("input", &args.input, l.data_shape())],
            &[
                View::of_device_mut("scale", &args.scale, l.param_shape()),
                View::of_device_mut("zero_point", &args.zero_point, l.param_shape()),
            ],
        )
    }

    /// Chooses the parameters of device tensors on the device stream the
    /// plan was selected on (feature `wgpu`), bit-identical to the CPU
    /// backends. Under the recipe's `NonFinitePolicy::Error` this waits for
    /// the device's check of the input and returns `NonFiniteInput` with
    /// nothing written; otherwise it only enqueues. A recipe with a float
    /// offset needs [`run_device_with_offset`](Self::run_device_with_offset).
    #[cfg(feature = "wgpu")]
    pub fn run_device(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: ChooseQParamsPerGroupDeviceArgs<'_, TIn, TScale>,
    ) -> Result<()> {
        self.run_device_inner(stream, workspace, args, None)
    }

    /// [`run_device`](Self::run_device) that also writes each group's float offset.
    #[cfg(feature = "wgpu")]
    pub fn run_device_with_offset(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: ChooseQParamsPerGroupDeviceArgs<'_, TIn, TScale>,
        offset: DeviceTensorMut<'_, TScale, 2>,
    ) -> Result<()> {
        self.run_device_inner(stream, workspace, args, Some(offset))
    }

    #[cfg(feature = "wgpu")]
    fn run_device_inner(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: ChooseQParamsPerGroupDeviceArgs<'_, TIn, TScale>,
        offset: Option<DeviceTensorMut<'_, TScale, 2>>,
    ) -> Result<()> {
        self.can_implement_device(&args)?;
        let recipe = &self.engine.kernel.recipe;
        check_offset_device(PLAN, recipe, offset.as_ref(), &self.core)?;
        self.core.check_workspace(&workspace)?;
        let ChooseQParamsPerGroupDeviceArgs {
            input,
            scale,
            zero_point,
        } = args;
        let none = None::<DeviceTensorMut<'_, u8, 2>>;
        (self.engine).run_device(&self.core, stream, input, scale, zero_point, none, offset)
    }

    /// Writes every group's scale and zero point. Calls `can_implement`
    /// first; on any error (including `NonFiniteInput`) nothing is written.
    /// A recipe with a float offset needs [`run_with_offset`](Self::run_with_offset).
    pub fn run(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: ChooseQParamsPerGroupArgs<'_, TIn, TScale>,
    ) -> Result<()> {
        let _ = workspace;
        self.can_implement(&args)?;
        check_offset::<TScale>(PLAN, &self.engine.kernel.recipe, None, &self.core)?;
        let ChooseQParamsPerGroupArgs {
            input,
            scale,
            zero_point,
        } = args;
        let (core, none) = (&self.core, None::<crate::tensor::TensorMut<'_, u8, 2>>);
        (self.engine).run(core, stream, input, scale, zero_point, none, None)
    }

    /// [`run`](Self::run) that also writes each group's float offset
    /// (`[outer_size, num_groups]`; zeros for recipes without one).
    pub fn run_with_offset(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: ChooseQParamsPerGroupArgs<'_, TIn, TScale>,
        offset: TensorMut<'_, TScale, 2>,
    ) -> Result<()> {
        let _ = workspace;
        self.can_implement(&args)?;
        check_offset(PLAN, &self.engine.kernel.recipe, Some(&offset), &self.core)?;
        let ChooseQParamsPerGroupArgs {
            input,
            scale,
            zero_point,
        } = args;
        let (core, none) = (&self.core, None::<crate::tensor::TensorMut<'_, u8, 2>>);
        (self.engine).run(core, stream, input, scale, zero_point, none, Some(offset))
    }
}
