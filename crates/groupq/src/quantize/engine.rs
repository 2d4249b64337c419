//! The run driver of the recipe plans (`ChooseQParamsPerGroupPlan`,
//! `QuantizeDynamicPerGroupPlan`): recipe validation, kernel selection, and
//! one pass over the rows that chooses each group's parameters and, for the
//! dynamic plan, its codes.

use super::common::{GpuRecipe, Layout, PlanCore, View};
use crate::element::{Element, ElementKind, IntElement};
use crate::error::{Error, Result};
use crate::kernels::recipe::{RecipeKernel, VectorRecipe};
use crate::kernels::{self, row_slice, Rows};
use crate::plan::{BackendKind, MathPrecision, PlanPreference, QuantizeKind};
use crate::recipe::{NonFinitePolicy, Recipe, ZeroPointRule};
use crate::stream::Stream;
use crate::tensor::{TensorMut, TensorRef};
use rayon::prelude::*;
#[cfg(feature = "wgpu")]
use {
    super::common::operand,
    crate::device_tensor::{DeviceTensorMut, DeviceTensorRef},
};

/// A recipe bound to its types, with the vector kernels of the backend
/// `select` chose (`None`: the scalar engine alone).
#[derive(Debug, Clone)]
pub(super) struct RecipeEngine<T> {
    pub kernel: RecipeKernel,
    vector: Option<VectorRecipe<T>>,
    /// The device programs of a plan selected on a device stream.
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    gpu: Option<GpuRecipe>,
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

/// Selects the recipe engine for a plan: a vector backend where it has an
/// extremes kernel for the recipe's arithmetic and input `TIn` (and, with
/// codes, the formula's codes kernel where it has one, writing two codes
/// per byte for `nibbles`), else the scalar
/// engine. The plan's precision guarantee names the recipe's arithmetic:
/// its intermediate values are held in that dtype.
#[allow(clippy::too_many_arguments)]
pub(super) fn select_engine<TIn: Element, TScale: Element>(
    plan: &'static str,
    stream: &Stream,
    op: QuantizeKind,
    aux: Option<ElementKind>,
    layout: Layout,
    recipe: Recipe,
    nibbles: bool,
    pref: PlanPreference,
) -> Result<(PlanCore, RecipeEngine<TIn>)> {
    let kernel = RecipeKernel::new(recipe, TIn::KIND, TScale::KIND);
    let with_codes = op == QuantizeKind::QuantizeDynamicPerGroup;
    if let Some(mut core) = PlanCore::for_stream::<TIn>(plan, op, aux, layout, pref, stream)? {
        let codes = with_codes.then_some(aux).flatten();
        let gpu = GpuRecipe::new(stream, plan, &recipe, TIn::KIND, TScale::KIND, codes)?;
        set_guarantee(&mut core, &kernel);
        let engine = RecipeEngine {
            kernel,
            vector: None,
            gpu: Some(gpu),
        };
        return Ok((core, engine));
    }
    let lookup = |b: BackendKind| match b {
        BackendKind::Scalar => Some(RecipeEngine {
            kernel,
            vector: None,
            gpu: None,
        }),
        _ => kernel
            .vector::<TIn>(b, with_codes, nibbles)
            .map(|v| RecipeEngine {
                kernel,
                vector: Some(v),
                gpu: None,
            }),
    };
    let (mut core, engine) = PlanCore::new::<TIn, _>(plan, op, aux, layout, pref, lookup)?;
    set_guarantee(&mut core, &kernel);
    Ok((core, engine))
}

/// The precision guarantee of a recipe plan names the recipe's arithmetic:
/// its intermediate values are held in that dtype.
fn set_guarantee(core: &mut PlanCore, kernel: &RecipeKernel) {
    let arithmetic = kernel.arithmetic_kind();
    let guarantee = &mut core.sku.precision_guarantee;
    guarantee.accumulator = arithmetic;
    guarantee.math_precision = if arithmetic == ElementKind::F64 {
        MathPrecision::F64
    } else {
        MathPrecision::F32
    };
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

/// [`check_offset`] for a device offset tensor.
#[cfg(feature = "wgpu")]
pub(super) fn check_offset_device<T>(
    plan: &str,
    recipe: &Recipe,
    offset: Option<&DeviceTensorMut<'_, T, 2>>,
    core: &PlanCore,
) -> Result<()> {
    match offset {
        None if recipe.zero_point == ZeroPointRule::FloatOffset => {
            Err(Error::InvalidProblem(format!(
                "{plan}: the recipe writes a float offset per group: call run_device_with_offset"
            )))
        }
        None => Ok(()),
        Some(t) => core.check_views(
            &[],
            &[View::of_device_mut("offset", t, core.layout.param_shape())],
        ),
    }
}

/// The first group, in row-major order, that holds a NaN or an infinity,
/// however the rows are split over threads.
fn first_non_finite<T: Element>(
    core: &PlanCore,
    stream: &Stream,
    input: &TensorRef<'_, T, 2>,
) -> Option<(usize, usize)> {
    let l = core.layout;
    let non_finite = kernels::recipe_non_finite::<T>(core.sku.backend);
    let bad = |row: usize| {
        let xs = row_slice(input, row, 0, l.axis);
        // A whole row at once; the group is looked for only on error.
        if non_finite.is_some_and(|f| !f(xs)) {
            return None;
        }
        RecipeKernel::first_non_finite(xs, l.group_size).map(|g| (row, g))
    };
    match stream.pool() {
        Some(pool) if l.outer > 1 && l.outer * l.axis >= 1 << 16 => {
            pool.install(|| (0..l.outer).into_par_iter().find_map_first(bad))
        }
        _ => (0..l.outer).find_map(bad),
    }
}

/// The rows of an output, or none.
fn rows<U>(t: Option<TensorMut<'_, U, 2>>) -> Rows<'_, U> {
    match t {
        Some(t) => Rows {
            data: t.data,
            stride: t.stride[0],
        },
        None => Rows {
            data: &mut [][..],
            stride: 0,
        },
    }
}

#[cfg(feature = "wgpu")]
impl<T: Element> RecipeEngine<T> {
    /// The device run of a plan selected on a device stream: checks the
    /// stream and every buffer's device, then enqueues the recipe's
    /// programs (waiting for the non-finite check under the Error policy,
    /// so that nothing is written on that error).
    #[allow(clippy::too_many_arguments)]
    pub fn run_device<TScale: Element, TOut: IntElement>(
        &self,
        core: &PlanCore,
        stream: &Stream,
        input: DeviceTensorRef<'_, T, 2>,
        scale: DeviceTensorMut<'_, TScale, 2>,
        zero_point: DeviceTensorMut<'_, i32, 2>,
        codes: Option<DeviceTensorMut<'_, TOut, 2>>,
        offset: Option<DeviceTensorMut<'_, TScale, 2>>,
    ) -> Result<()> {
        let gpu = self.gpu.as_ref().ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: run_device needs a plan selected on a device stream; this one was selected on a CPU stream",
                core.plan
            ))
        })?;
        let mut ids = vec![
            ("input", input.buffer.device_id()),
            ("scale", scale.buffer.device_id()),
            ("zero_point", zero_point.buffer.device_id()),
        ];
        if let Some(c) = &codes {
            ids.push(("output", c.buffer.device_id()));
        }
        if let Some(m) = &offset {
            ids.push(("offset", m.buffer.device_id()));
        }
        gpu.check(core.plan, stream, &ids)?;
        let l = core.layout;
        if l.outer == 0 || l.axis == 0 {
            return Ok(());
        }
        let gs = l.group_size;
        gpu.enqueue(
            &l,
            operand(&input, T::KIND, gs),
            operand(&scale.as_ref(), TScale::KIND, 1),
            operand(&zero_point.as_ref(), ElementKind::I32, 1),
            offset
                .as_ref()
                .map(|m| operand(&m.as_ref(), TScale::KIND, 1)),
            codes
                .as_ref()
                .map(|c| operand(&c.as_ref(), TOut::KIND, gs / TOut::PACK)),
        )
    }
}

impl<T: Element> RecipeEngine<T> {
    /// Runs the recipe over a validated problem: checks the input for
    /// non-finite values first when the recipe says so (nothing is written
    /// on that error), then per row chooses and stores every group's
    /// parameters and (when `codes` is given) quantizes the group with the
    /// stored scale and offset while it is still in L1. `offset` receives
    /// the float offsets of a `FloatOffset` recipe.
    #[allow(clippy::too_many_arguments)]
    pub fn run<TScale: Element, TOut: IntElement>(
        &self,
        core: &PlanCore,
        stream: &Stream,
        input: TensorRef<'_, T, 2>,
        scale: TensorMut<'_, TScale, 2>,
        zero_point: TensorMut<'_, i32, 2>,
        codes: Option<TensorMut<'_, TOut, 2>>,
        offset: Option<TensorMut<'_, TScale, 2>>,
    ) -> Result<()> {
        core.check_host_run(stream)?;
        let l = core.layout;
        if l.outer == 0 || l.axis == 0 {
            return Ok(());
        }
        if self.kernel.recipe.non_finite == NonFinitePolicy::Error {
            if let Some((row, group)) = first_non_finite(core, stream, &input) {
                return Err(Error::NonFiniteInput { row, group });
            }
        }
        let (with_codes, with_offset) = (codes.is_some(), offset.is_some());
        let outputs = (
            rows(Some(scale)),
            rows(Some(zero_point)),
            rows(codes),
            rows(offset),
        );
        let vector = self.vector.as_ref();
        kernels::for_each_row_block(stream, l.outer, l.axis, outputs, &|r0,
                                                                        n,
                                                                        (
            mut s,
            mut z,
            mut q,
            mut m,
        )| {
            for i in 0..n {
                let xs = row_slice(&input, r0 + i, 0, l.axis);
                let (s_row, z_row) = (s.row(i, l.num_groups), z.row(i, l.num_groups));
                let q_row = with_codes.then(|| q.row(i, l.axis / TOut::PACK));
                let m_row = with_offset.then(|| m.row(i, l.num_groups));
                let k = &self.kernel;
                k.run_row(vector, xs, l.group_size, s_row, z_row, q_row, m_row);
            }
        });
        Ok(())
    }
}
