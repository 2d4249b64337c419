//! What the plans of the per-group family share: descriptor validation,
//! view validation (SPEC §3.1, §5), backend choice and the run driver.

use crate::element::{Element, ElementKind, IntElement};
use crate::error::{Error, Result};
use crate::kernels::{self, GroupGrid};
use crate::plan::{
    BackendKind, KernelSku, MathPrecision, OpCategory, PlanPreference, PrecisionGuarantee,
    QuantizeKind,
};
use crate::stream::{Stream, Workspace};
use crate::tensor::{span, TensorMut, TensorRef};

/// A validated `[outer_size, axis_size]` problem cut into groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Layout {
    pub outer: usize,
    pub axis: usize,
    pub group_size: usize,
    pub num_groups: usize,
}

impl Layout {
    /// `group_size == 0` and `axis_size % group_size != 0` are
    /// `InvalidProblem`, as is a problem with more than `usize::MAX` elements.
    pub fn new(plan: &str, outer: usize, axis: usize, group_size: usize) -> Result<Layout> {
        if group_size == 0 {
            return Err(invalid(plan, "group_size 0 must be at least 1".into()));
        }
        if !axis.is_multiple_of(group_size) {
            return Err(invalid(
                plan,
                format!("axis_size {axis} is not a multiple of group_size {group_size}"),
            ));
        }
        if outer.checked_mul(axis).is_none() {
            return Err(invalid(
                plan,
                format!("outer_size {outer} × axis_size {axis} overflows usize"),
            ));
        }
        Ok(Layout {
            outer,
            axis,
            group_size,
            num_groups: axis / group_size,
        })
    }

    /// Shape of the data tensors: `[outer_size, axis_size]`.
    pub fn data_shape(&self) -> [usize; 2] {
        [self.outer, self.axis]
    }

    /// Shape of a code tensor in storage units: `[outer_size, axis_size / pack]`.
    pub fn codes_shape(&self, pack: usize) -> [usize; 2] {
        [self.outer, self.axis / pack]
    }

    /// Packed codes (`pack` per storage unit) must not split a unit between
    /// groups: `group_size` a multiple of `pack` (`InvalidProblem`).
    pub fn check_pack(&self, plan: &str, codes: ElementKind, pack: usize) -> Result<()> {
        if !self.group_size.is_multiple_of(pack) {
            return Err(invalid(
                plan,
                format!(
                    "group_size {} must be a multiple of {pack} for {codes} codes ({pack} per byte)",
                    self.group_size
                ),
            ));
        }
        Ok(())
    }

    /// Shape of `scale` and `zero_point`: `[outer_size, num_groups]`.
    pub fn param_shape(&self) -> [usize; 2] {
        [self.outer, self.num_groups]
    }

    fn grid(&self) -> GroupGrid {
        GroupGrid {
            outer: self.outer,
            num_groups: self.num_groups,
            group_size: self.group_size,
        }
    }

    fn is_empty(&self) -> bool {
        self.outer == 0 || self.axis == 0
    }
}

fn invalid(plan: &str, what: String) -> Error {
    Error::InvalidProblem(format!("{plan}: {what}"))
}

/// A descriptor's element kind must be the type parameter's (`Unsupported`).
pub(crate) fn check_kind(
    plan: &str,
    field: &str,
    described: ElementKind,
    param: &str,
    actual: ElementKind,
) -> Result<()> {
    if described == actual {
        return Ok(());
    }
    Err(Error::Unsupported(format!(
        "{plan}: {field} {described} does not match the type parameter {param} = {actual}"
    )))
}

/// `q_min <= q_max` (`InvalidProblem`).
pub(crate) fn check_code_order(plan: &str, q_min: i32, q_max: i32) -> Result<()> {
    if q_max < q_min {
        return Err(invalid(
            plan,
            format!("q_max {q_max} is less than q_min {q_min}"),
        ));
    }
    Ok(())
}

/// `q_min <= q_max`, both inside the range of `Q` (`InvalidProblem`).
pub(crate) fn check_code_range<Q: IntElement>(plan: &str, q_min: i32, q_max: i32) -> Result<()> {
    check_code_order(plan, q_min, q_max)?;
    if q_min < Q::MIN || q_max > Q::MAX {
        return Err(invalid(
            plan,
            format!(
                "[q_min, q_max] = [{q_min}, {q_max}] is not inside the range of {} [{}, {}]",
                Q::KIND,
                Q::MIN,
                Q::MAX
            ),
        ));
    }
    Ok(())
}

/// The identity and state every plan of the family keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PlanCore {
    pub plan: &'static str,
    pub layout: Layout,
    pub sku: KernelSku,
}

impl PlanCore {
    /// Chooses the backend and kernel (honouring `pref`) for a plan whose
    /// float element is `T`; `lookup` gives the op's kernel on a backend.
    pub fn new<T: Element, K>(
        plan: &'static str,
        op: QuantizeKind,
        aux_element: Option<ElementKind>,
        layout: Layout,
        pref: PlanPreference,
        lookup: impl Fn(BackendKind) -> Option<K>,
    ) -> Result<(PlanCore, K)> {
        let (backend, kernel) = kernels::choose(pref.prefer_backend, lookup)
            .map_err(|why| Error::Unsupported(format!("{plan}: {why}")))?;
        let math_precision = if T::KIND == ElementKind::F64 {
            MathPrecision::F64
        } else {
            MathPrecision::F32
        };
        let accumulator = match math_precision {
            MathPrecision::F64 => ElementKind::F64,
            MathPrecision::F32 => ElementKind::F32,
        };
        let core = PlanCore {
            plan,
            layout,
            sku: KernelSku {
                category: OpCategory::Quantization,
                op,
                element: T::KIND,
                aux_element,
                backend,
                precision_guarantee: PrecisionGuarantee {
                    math_precision,
                    accumulator,
                    bit_stable_on_same_hardware: true,
                    deterministic: true,
                },
            },
        };
        Ok((core, kernel))
    }

    /// Scratch bytes `run` needs: none for this family.
    pub fn workspace_size(&self) -> usize {
        0
    }

    /// Validates the tensors of one call: all shapes, then all slice lengths,
    /// then the last-axis strides, then that output rows do not overlap.
    /// `views` lists the inputs, `outputs` the tensors written.
    pub fn check_views(&self, views: &[View], outputs: &[View]) -> Result<()> {
        let all = || views.iter().chain(outputs);
        for v in all() {
            if v.shape != v.expected {
                return Err(invalid(
                    self.plan,
                    format!(
                        "{} shape {:?} does not match the descriptor's {:?}",
                        v.name, v.shape, v.expected
                    ),
                ));
            }
        }
        for v in all() {
            let needed = span(&v.shape, &v.stride).ok_or_else(|| {
                invalid(
                    self.plan,
                    format!(
                        "{} view with shape {:?} and stride {:?} spans more than usize::MAX elements",
                        v.name, v.shape, v.stride
                    ),
                )
            })?;
            if v.len < needed {
                return Err(Error::BufferTooSmall { needed, got: v.len });
            }
        }
        for v in all() {
            if v.stride[1] != 1 {
                return Err(invalid(
                    self.plan,
                    format!("{} last-axis stride {} must be 1", v.name, v.stride[1]),
                ));
            }
        }
        for output in outputs {
            if output.shape[0] > 1 && output.stride[0] < output.shape[1] {
                return Err(invalid(
                    self.plan,
                    format!(
                        "{} row stride {} is less than its row length {}: rows would overlap",
                        output.name, output.stride[0], output.shape[1]
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Runs `segment(row, g0, g1, out)` over every group of a validated
    /// problem on the stream's threads; an empty problem touches nothing.
    /// `pack` is the output's codes per storage unit (1 for floats).
    pub fn run<T, F>(
        &self,
        stream: &Stream,
        workspace: &Workspace<'_>,
        output: TensorMut<'_, T, 2>,
        pack: usize,
        segment: F,
    ) -> Result<()>
    where
        T: Send,
        F: Fn(usize, usize, usize, &mut [T]) + Sync,
    {
        let needed = self.workspace_size();
        if workspace.len() < needed {
            return Err(Error::WorkspaceTooSmall {
                needed,
                got: workspace.len(),
            });
        }
        if !self.layout.is_empty() {
            let mut grid = self.layout.grid();
            grid.group_size /= pack;
            kernels::for_each_segment(stream, grid, output.data, output.stride[0], &segment);
        }
        Ok(())
    }
}

/// One tensor of a call, as `check_views` sees it.
pub(crate) struct View {
    pub name: &'static str,
    pub shape: [usize; 2],
    pub stride: [usize; 2],
    pub len: usize,
    pub expected: [usize; 2],
}

impl View {
    pub fn of<T>(name: &'static str, t: &TensorRef<'_, T, 2>, expected: [usize; 2]) -> View {
        View {
            name,
            shape: t.shape,
            stride: t.stride,
            len: t.data.len(),
            expected,
        }
    }

    pub fn of_mut<T>(name: &'static str, t: &TensorMut<'_, T, 2>, expected: [usize; 2]) -> View {
        View::of(name, &t.as_ref(), expected)
    }
}
