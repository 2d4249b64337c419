//! `ChooseQParamsPerGroupPlan`: scales and zero points from the data, by a
//! [`Recipe`]; and the engine it shares with the fused dynamic plan.

use super::common::{check_kind, Layout, PlanCore, View};
use crate::element::{Element, ElementKind, IntElement};
use crate::error::{Error, Result};
use crate::kernels::recipe::{f32_scale, RecipeKernel};
use crate::kernels::{self, row_slice, RecipeExtremesKernel, RecipeQuantizeKernel, Rows};
use crate::plan::{BackendKind, PlanPreference, QuantizeKind};
use crate::recipe::{NonFinitePolicy, Recipe, ZeroPointRule};
use crate::stream::{Stream, Workspace};
use crate::tensor::{TensorMut, TensorRef};
use rayon::prelude::*;
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
    kernel: RecipeKernel,
    types: PhantomData<fn() -> (TIn, TScale)>,
}

/// Validates a recipe's code range: `q_min < q_max` (a scale divides by the
/// number of steps) and, where codes are written, inside `Q`'s range.
pub(super) fn check_recipe(
    plan: &str,
    recipe: &Recipe,
    codes: Option<(ElementKind, i32, i32)>,
) -> Result<()> {
    let (lo, hi) = (recipe.q_min, recipe.q_max);
    if hi <= lo {
        return Err(Error::InvalidProblem(format!(
            "{plan}: recipe q_max {hi} must be greater than q_min {lo}"
        )));
    }
    if let Some((kind, min, max)) = codes {
        if lo < min || hi > max {
            return Err(Error::InvalidProblem(format!(
                "{plan}: recipe [q_min, q_max] = [{lo}, {hi}] is not inside the range of {kind} [{min}, {max}]"
            )));
        }
    }
    Ok(())
}

/// Selects the recipe engine for a plan: a vector backend where it has a
/// kernel for the recipe's extremes or formula (with codes `TOut`), else
/// the scalar engine.
pub(super) fn select_engine<TIn: Element, TScale: Element, TOut: IntElement>(
    plan: &'static str,
    op: QuantizeKind,
    aux: Option<ElementKind>,
    layout: Layout,
    recipe: Recipe,
    pref: PlanPreference,
) -> Result<(PlanCore, RecipeKernel)> {
    let kernel = RecipeKernel::new(recipe, TIn::KIND, TScale::KIND);
    let with_codes = op == QuantizeKind::QuantizeDynamicPerGroup;
    let lookup = |b: BackendKind| {
        let (extremes, quantize) = vector_kernels::<TIn, TOut>(&kernel, b, with_codes);
        (b == BackendKind::Scalar || extremes.is_some() || quantize.is_some()).then_some(kernel)
    };
    PlanCore::new::<TIn, _>(plan, op, aux, layout, pref, lookup)
}

/// The vector kernels backend `b` has for this recipe and element types.
#[allow(clippy::type_complexity)]
fn vector_kernels<TIn: Element, TOut: IntElement>(
    kernel: &RecipeKernel,
    b: BackendKind,
    with_codes: bool,
) -> (
    Option<RecipeExtremesKernel<TIn>>,
    Option<RecipeQuantizeKernel<TIn, TOut>>,
) {
    let extremes = kernel
        .vector_extremes()
        .then(|| TIn::recipe_extremes(b, kernel.choose_kind()))
        .flatten();
    let quantize = kernel
        .vector_formula()
        .filter(|_| with_codes)
        .and_then(|(round, divide, before)| TIn::recipe_quantize::<TOut>(b, round, divide, before));
    (extremes, quantize)
}

/// Runs a recipe over a validated problem: checks the input for non-finite
/// values first when the recipe says so, then per group computes the
/// parameters, stores them, and (when `codes` is given) quantizes the group
/// with the stored scale and offset. Each group is read once by the second
/// pass. `offset` receives the float offsets of a `FloatOffset` recipe.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_engine<TIn: Element, TScale: Element, TOut: IntElement>(
    core: &PlanCore,
    kernel: &RecipeKernel,
    stream: &Stream,
    input: TensorRef<'_, TIn, 2>,
    scale: TensorMut<'_, TScale, 2>,
    zero_point: TensorMut<'_, i32, 2>,
    codes: Option<TensorMut<'_, TOut, 2>>,
    offset: Option<TensorMut<'_, TScale, 2>>,
) -> Result<()> {
    let l = core.layout;
    if l.outer == 0 || l.axis == 0 {
        return Ok(());
    }
    let gs = l.group_size;
    if kernel.recipe.non_finite == NonFinitePolicy::Error {
        // A vector pass where the backend has one.
        let non_finite = TIn::recipe_non_finite(core.sku.backend);
        let bad = |row: usize| {
            let xs = row_slice(&input, row, 0, l.axis);
            // A whole row at once; the group is looked for only on error.
            if non_finite.is_some_and(|f| !f(xs)) {
                return None;
            }
            RecipeKernel::first_non_finite(xs, gs).map(|g| (row, g))
        };
        // The first offending group in row-major order, however the rows
        // are split over threads.
        let first = match stream.pool() {
            Some(pool) if l.outer > 1 && l.outer * l.axis >= 1 << 16 => {
                pool.install(|| (0..l.outer).into_par_iter().find_map_first(bad))
            }
            _ => (0..l.outer).find_map(bad),
        };
        if let Some((row, group)) = first {
            return Err(Error::NonFiniteInput { row, group });
        }
    }
    let (with_codes, with_offset) = (codes.is_some(), offset.is_some());
    let (code_data, code_stride) = match codes {
        Some(t) => (t.data, t.stride[0]),
        None => (&mut [][..], 0),
    };
    let (offset_data, offset_stride) = match offset {
        Some(t) => (t.data, t.stride[0]),
        None => (&mut [][..], 0),
    };
    let outputs = (
        Rows {
            data: scale.data,
            stride: scale.stride[0],
        },
        Rows {
            data: zero_point.data,
            stride: zero_point.stride[0],
        },
        Rows {
            data: code_data,
            stride: code_stride,
        },
        Rows {
            data: offset_data,
            stride: offset_stride,
        },
    );
    let units = gs / TOut::PACK;
    let (extremes, vector_quantize) =
        vector_kernels::<TIn, TOut>(kernel, core.sku.backend, with_codes);
    let (q_lo, q_hi) = (kernel.recipe.q_min, kernel.recipe.q_max);
    kernels::for_each_row_block(stream, l.outer, l.axis, outputs, &|r0,
                                                                    rows,
                                                                    (
        mut s,
        mut z,
        mut q,
        mut m,
    )| {
        for i in 0..rows {
            let xs = row_slice(&input, r0 + i, 0, l.axis);
            let (s_row, z_row) = (s.row(i, l.num_groups), z.row(i, l.num_groups));
            let mut q_row = with_codes.then(|| q.row(i, l.axis / TOut::PACK));
            let mut m_row = with_offset.then(|| m.row(i, l.num_groups));
            for (g, group) in xs.chunks_exact(gs).enumerate() {
                let (sv, zv, mv) = match extremes.and_then(|f| f(group)) {
                    Some((min, max)) => kernel.params_from(min, max),
                    None => kernel.params(group),
                };
                let (stored, stored_m) = (TScale::from_f64(sv), TScale::from_f64(mv));
                s_row[g] = stored;
                z_row[g] = zv;
                if let Some(m_row) = m_row.as_deref_mut() {
                    m_row[g] = stored_m;
                }
                if let Some(q_row) = q_row.as_deref_mut() {
                    let out = &mut q_row[g * units..(g + 1) * units];
                    let (s64, m64) = (stored.to_f64(), stored_m.to_f64());
                    // The vector formula takes what the scalar f32 path
                    // takes, with a non-zero scale.
                    match (vector_quantize, f32_scale(s64, zv, m64)) {
                        (Some(f), Some(s32)) if s32 != 0.0 => f(group, s32, zv, out, q_lo, q_hi),
                        _ => kernel.quantize_group(group, (s64, zv, m64), out),
                    }
                }
            }
        }
    });
    Ok(())
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
        let _ = stream;
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
        let (core, kernel) = select_engine::<TIn, TScale, u8>(
            PLAN,
            op,
            Some(TScale::KIND),
            layout,
            desc.recipe,
            pref,
        )?;
        Ok(ChooseQParamsPerGroupPlan {
            core,
            kernel,
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
        check_offset::<TScale>(PLAN, &self.kernel.recipe, None, &self.core)?;
        let ChooseQParamsPerGroupArgs {
            input,
            scale,
            zero_point,
        } = args;
        let (core, kernel) = (&self.core, &self.kernel);
        run_engine::<TIn, TScale, u8>(core, kernel, stream, input, scale, zero_point, None, None)
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
        check_offset(PLAN, &self.kernel.recipe, Some(&offset), &self.core)?;
        let ChooseQParamsPerGroupArgs {
            input,
            scale,
            zero_point,
        } = args;
        let (core, kernel, m) = (&self.core, &self.kernel, Some(offset));
        run_engine::<TIn, TScale, u8>(core, kernel, stream, input, scale, zero_point, None, m)
    }
}

/// A `FloatOffset` recipe needs an offset tensor (`InvalidProblem`
/// otherwise), and a given one must fit `[outer_size, num_groups]`.
pub(super) fn check_offset<T>(
    plan: &str,
    recipe: &Recipe,
    offset: Option<&TensorMut<'_, T, 2>>,
    core: &PlanCore,
) -> Result<()> {
    match offset {
        None if recipe.zero_point == ZeroPointRule::FloatOffset => Err(Error::InvalidProblem(
            format!("{plan}: the recipe writes a float offset per group: call run_with_offset"),
        )),
        None => Ok(()),
        Some(t) => core.check_views(&[], &[View::of_mut("offset", t, core.layout.param_shape())]),
    }
}
