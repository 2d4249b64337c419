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

    pub fn is_empty(&self) -> bool {
        self.outer == 0 || self.axis == 0
    }
}

pub(crate) fn invalid(plan: &str, what: String) -> Error {
    Error::InvalidProblem(format!("{plan}: {what}"))
}

/// Plans with no device form refuse device streams at `select`
/// (`Unsupported`), rather than run on the CPU behind the caller's back.
pub(crate) fn refuse_device(plan: &str, stream: &Stream) -> Result<()> {
    if stream.is_device() {
        return Err(Error::Unsupported(format!(
            "{plan}: runs on CPU streams only (it has no device form yet)"
        )));
    }
    Ok(())
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
    /// The core of a plan selected on a device stream (`backend` Wgpu), or
    /// `None` on a CPU stream. A preferred CPU backend on a device stream,
    /// or the Wgpu backend on a CPU stream, is `Unsupported`.
    pub fn for_stream<T: Element>(
        plan: &'static str,
        op: QuantizeKind,
        aux_element: Option<ElementKind>,
        layout: Layout,
        pref: PlanPreference,
        stream: &Stream,
    ) -> Result<Option<PlanCore>> {
        let device = stream.is_device();
        match (device, pref.prefer_backend) {
            (true, Some(b)) if b != BackendKind::Wgpu => Err(Error::Unsupported(format!(
                "{plan}: prefer_backend {b} cannot run on a device stream (only wgpu can)"
            ))),
            (false, Some(BackendKind::Wgpu)) => Err(Error::Unsupported(format!(
                "{plan}: prefer_backend wgpu needs a device stream (Stream::wgpu, feature `wgpu`)"
            ))),
            (false, _) => Ok(None),
            (true, _) => Ok(Some(PlanCore::with_backend::<T>(
                plan,
                op,
                aux_element,
                layout,
                BackendKind::Wgpu,
            ))),
        }
    }

    /// The core of a plan on `backend`, with the family's precision
    /// guarantee for float element `T`.
    pub fn with_backend<T: Element>(
        plan: &'static str,
        op: QuantizeKind,
        aux_element: Option<ElementKind>,
        layout: Layout,
        backend: BackendKind,
    ) -> PlanCore {
        let math_precision = if T::KIND == ElementKind::F64 {
            MathPrecision::F64
        } else {
            MathPrecision::F32
        };
        let accumulator = match math_precision {
            MathPrecision::F64 => ElementKind::F64,
            MathPrecision::F32 => ElementKind::F32,
        };
        PlanCore {
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
        }
    }

    /// [`new`](Self::new) for a plan that also runs on device streams: on
    /// a device stream the core names the wgpu backend and the device half
    /// is compiled from `device` (`Err(reason)`: the op has no exact device
    /// form, `Unsupported`); the CPU kernel is then the scalar one (a host
    /// `run` refuses device plans before it gets there).
    #[allow(clippy::too_many_arguments)]
    pub fn select_on<T: Element, K>(
        plan: &'static str,
        op: QuantizeKind,
        aux_element: Option<ElementKind>,
        layout: Layout,
        pref: PlanPreference,
        stream: &Stream,
        lookup: impl Fn(BackendKind) -> Option<K>,
        device: std::result::Result<(GpuOp, ElementKind, ElementKind), String>,
    ) -> Result<(PlanCore, K, Option<GpuPlan>)> {
        let on_device = PlanCore::for_stream::<T>(plan, op, aux_element, layout, pref, stream)?;
        let cpu_pref = match on_device {
            Some(_) => PlanPreference {
                prefer_backend: Some(BackendKind::Scalar),
                ..pref
            },
            None => pref,
        };
        let (core, kernel) =
            PlanCore::new::<T, K>(plan, op, aux_element, layout, cpu_pref, lookup)?;
        match on_device {
            None => Ok((core, kernel, None)),
            Some(device_core) => {
                let (gop, float, code) = device.map_err(|why| {
                    Error::Unsupported(format!("{plan}: not available on a device stream: {why}"))
                })?;
                let gpu = GpuPlan::new(stream, plan, gop, float, code)?;
                Ok((device_core, kernel, Some(gpu)))
            }
        }
    }

    /// The device half of a plan, for `run_device` (`Unsupported` for a
    /// plan selected on a CPU stream).
    #[cfg(feature = "wgpu")]
    pub fn device_half<'p>(&self, gpu: Option<&'p GpuPlan>) -> Result<&'p GpuPlan> {
        gpu.ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: run_device needs a plan selected on a device stream; this one was selected on a CPU stream",
                self.plan
            ))
        })
    }

    /// Fails with `WorkspaceTooSmall` when `workspace` is smaller than the plan needs.
    pub fn check_workspace(&self, workspace: &Workspace<'_>) -> Result<()> {
        let needed = self.workspace_size();
        if workspace.len() < needed {
            return Err(Error::WorkspaceTooSmall {
                needed,
                got: workspace.len(),
            });
        }
        Ok(())
    }

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
        let core = PlanCore::with_backend::<T>(plan, op, aux_element, layout, backend);
        Ok((core, kernel))
    }

    /// A host-slice `run` needs a CPU plan on a CPU stream: device data is
    /// never copied behind the caller's back (`Unsupported` naming
    /// `run_device`).
    pub fn check_host_run(&self, stream: &Stream) -> Result<()> {
        if self.sku.backend == BackendKind::Wgpu || stream.is_device() {
            return Err(Error::Unsupported(format!(
                "{}: run takes host slices on a CPU stream; on a device stream pass device tensors to \
                 run_device (groupq never copies host data to the device behind your back)",
                self.plan
            )));
        }
        Ok(())
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
            let needed = span(&v.shape, &v.stride).and_then(|n| {
                if n == 0 {
                    Some(0)
                } else {
                    n.checked_add(v.offset)
                }
            });
            let needed = needed.ok_or_else(|| {
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
        self.check_host_run(stream)?;
        self.check_workspace(workspace)?;
        if !self.layout.is_empty() {
            let mut grid = self.layout.grid();
            grid.group_size /= pack;
            kernels::for_each_segment(stream, grid, output.data, output.stride[0], &segment);
        }
        Ok(())
    }
}

/// One tensor of a call, as `check_views` sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    pub name: &'static str,
    pub shape: [usize; 2],
    pub stride: [usize; 2],
    pub len: usize,
    /// First element of the view in its buffer (0 for host slices).
    pub offset: usize,
    pub expected: [usize; 2],
}

impl View {
    pub fn of<T>(name: &'static str, t: &TensorRef<'_, T, 2>, expected: [usize; 2]) -> View {
        View {
            name,
            shape: t.shape,
            stride: t.stride,
            len: t.data.len(),
            offset: 0,
            expected,
        }
    }

    #[cfg(feature = "wgpu")]
    pub fn of_device<T>(
        name: &'static str,
        t: &crate::device_tensor::DeviceTensorRef<'_, T, 2>,
        expected: [usize; 2],
    ) -> View {
        View {
            name,
            shape: t.shape,
            stride: t.stride,
            len: t.buffer.len(),
            offset: t.offset,
            expected,
        }
    }

    #[cfg(feature = "wgpu")]
    pub fn of_device_mut<T>(
        name: &'static str,
        t: &crate::device_tensor::DeviceTensorMut<'_, T, 2>,
        expected: [usize; 2],
    ) -> View {
        View::of_device(name, &t.as_ref(), expected)
    }

    pub fn of_mut<T>(name: &'static str, t: &TensorMut<'_, T, 2>, expected: [usize; 2]) -> View {
        View::of(name, &t.as_ref(), expected)
    }
}

/// The device half of a plan selected on a device stream: the device and
/// the compiled program (feature `wgpu`; uninhabited without it).
#[cfg(feature = "wgpu")]
#[derive(Clone)]
pub(crate) struct GpuPlan {
    dev: std::sync::Arc<crate::device::WgpuDevice>,
    program: crate::kernels::gpu::Program,
}

/// Uninhabited without the `wgpu` feature.
#[cfg(not(feature = "wgpu"))]
#[derive(Clone, Debug)]
pub(crate) enum GpuPlan {}

// A plan's device half holds handles to immutable wgpu objects (a pipeline,
// a device); a panic elsewhere cannot leave them half-updated.
#[cfg(feature = "wgpu")]
impl std::panic::UnwindSafe for GpuPlan {}
#[cfg(feature = "wgpu")]
impl std::panic::RefUnwindSafe for GpuPlan {}

#[cfg(feature = "wgpu")]
impl std::fmt::Debug for GpuPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuPlan")
            .field("device", &self.dev.info.name)
            .field("program", &self.program)
            .finish()
    }
}

#[cfg(feature = "wgpu")]
pub(crate) use crate::kernels::gpu::Op as GpuOp;

/// The device half of a recipe plan (feature `wgpu`; uninhabited without it).
#[cfg(feature = "wgpu")]
#[derive(Clone, Debug)]
pub(crate) struct GpuRecipe {
    dev: std::sync::Arc<crate::device::WgpuDevice>,
    programs: crate::kernels::gpu::recipe::RecipePrograms,
}

/// Uninhabited without the `wgpu` feature.
#[cfg(not(feature = "wgpu"))]
#[derive(Clone, Debug)]
pub(crate) enum GpuRecipe {}

#[cfg(feature = "wgpu")]
impl std::panic::UnwindSafe for GpuRecipe {}
#[cfg(feature = "wgpu")]
impl std::panic::RefUnwindSafe for GpuRecipe {}

impl GpuRecipe {
    /// The programs of `recipe` on the stream's device (`codes`: the code
    /// type of a dynamic plan).
    pub fn new(
        stream: &Stream,
        plan: &'static str,
        recipe: &crate::recipe::Recipe,
        input: ElementKind,
        scale: ElementKind,
        codes: Option<ElementKind>,
    ) -> Result<GpuRecipe> {
        #[cfg(feature = "wgpu")]
        if let Some(dev) = stream.device() {
            use crate::kernels::gpu::recipe::RecipePrograms;
            let programs = RecipePrograms::new(dev, plan, recipe, input, scale, codes)?;
            return Ok(GpuRecipe {
                dev: dev.clone(),
                programs,
            });
        }
        let _ = (stream, recipe, input, scale, codes);
        Err(Error::Unsupported(format!(
            "{plan}: device plans need a device stream (feature `wgpu`)"
        )))
    }
}

#[cfg(feature = "wgpu")]
impl GpuRecipe {
    /// As [`GpuPlan::check`].
    pub fn check(&self, plan: &str, stream: &Stream, buffers: &[(&str, u64)]) -> Result<()> {
        check_device(&self.dev, plan, stream, buffers)
    }

    /// Enqueues the recipe (see `RecipePrograms::enqueue`).
    pub fn enqueue(
        &self,
        l: &Layout,
        input: crate::kernels::gpu::Operand<'_>,
        scale: crate::kernels::gpu::Operand<'_>,
        zero_point: crate::kernels::gpu::Operand<'_>,
        offset: Option<crate::kernels::gpu::Operand<'_>>,
        codes: Option<crate::kernels::gpu::Operand<'_>>,
    ) -> Result<()> {
        self.programs.enqueue(
            &self.dev,
            l.outer,
            l.num_groups,
            l.group_size,
            input,
            scale,
            zero_point,
            offset,
            codes,
        )
    }
}

/// Without the `wgpu` feature the ops are only names.
#[cfg(not(feature = "wgpu"))]
#[allow(dead_code)]
#[derive(Debug, Clone, Copy)]
pub(crate) enum GpuOp {
    Quantize,
    Dequantize,
    QuantizeBackward(crate::plan::SteBoundary),
    DequantizeBackward,
    Formula(crate::recipe::QuantizeFormula),
}

impl GpuPlan {
    /// The program of `op` for floats `float` and codes `code` on the
    /// stream's device.
    pub fn new(
        stream: &Stream,
        plan: &'static str,
        op: GpuOp,
        float: ElementKind,
        code: ElementKind,
    ) -> Result<GpuPlan> {
        #[cfg(feature = "wgpu")]
        if let Some(dev) = stream.device() {
            let program = crate::kernels::gpu::Program::new(dev, plan, op, float, code)?;
            return Ok(GpuPlan {
                dev: dev.clone(),
                program,
            });
        }
        let _ = (stream, op, float, code);
        Err(Error::Unsupported(format!(
            "{plan}: device plans need a device stream (feature `wgpu`)"
        )))
    }
}

#[cfg(feature = "wgpu")]
impl GpuPlan {
    /// The device of a `run_device` call: the plan's, which must be the
    /// stream's and every buffer's (`ids`).
    pub fn check(&self, plan: &str, stream: &Stream, buffers: &[(&str, u64)]) -> Result<()> {
        check_device(&self.dev, plan, stream, buffers)
    }
}

/// The device of a `run_device` call must be `dev`: the stream's and every
/// buffer's (`buffers`: names and device ids).
#[cfg(feature = "wgpu")]
fn check_device(
    dev: &crate::device::WgpuDevice,
    plan: &str,
    stream: &Stream,
    buffers: &[(&str, u64)],
) -> Result<()> {
    {
        match stream.device() {
            Some(d) if d.id == dev.id => {}
            Some(_) => {
                return Err(Error::InvalidProblem(format!(
                    "{plan}: the stream's device is not the one the plan was selected on"
                )))
            }
            None => {
                return Err(Error::Unsupported(format!(
                    "{plan}: run_device needs the device stream the plan was selected on, not a CPU stream"
                )))
            }
        }
        for &(name, id) in buffers {
            if id != dev.id {
                return Err(Error::InvalidProblem(format!(
                    "{plan}: {name} lives on another device than the plan's"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(feature = "wgpu")]
impl GpuPlan {
    /// Enqueues the program (see `kernels::gpu::Program::enqueue`).
    pub fn enqueue(
        &self,
        layout: &Layout,
        q_range: (i32, i32),
        operands: &[crate::kernels::gpu::Operand<'_>],
    ) -> Result<()> {
        let l = layout;
        self.program.enqueue(
            &self.dev,
            l.outer,
            l.num_groups,
            l.group_size,
            q_range.0,
            q_range.1,
            operands,
        )
    }
}

/// A device view as a dispatch operand: storage `kind`, `per_group` units
/// per group.
#[cfg(feature = "wgpu")]
pub(crate) fn operand<'a, T>(
    v: &crate::device_tensor::DeviceTensorRef<'a, T, 2>,
    kind: ElementKind,
    per_group: usize,
) -> crate::kernels::gpu::Operand<'a> {
    crate::kernels::gpu::Operand {
        buffer: &v.buffer.buffer,
        geo: crate::kernels::gpu::Geometry {
            kind,
            offset: v.offset,
            stride: v.stride[0],
            per_group,
        },
    }
}

/// One device tensor of a `run_device` call: its view (for the same checks
/// as the host's), its device, and the operand it binds at `binding`.
#[cfg(feature = "wgpu")]
pub(crate) struct DevArg<'a> {
    view: View,
    output: bool,
    id: u64,
    binding: u32,
    operand: crate::kernels::gpu::Operand<'a>,
}

#[cfg(feature = "wgpu")]
impl<'a> DevArg<'a> {
    /// A tensor read, of shape `expected`, bound at `binding` as units of
    /// `kind`, `per_group` of them per group.
    pub fn input<T>(
        name: &'static str,
        t: &'a crate::device_tensor::DeviceTensorRef<'_, T, 2>,
        expected: [usize; 2],
        (kind, per_group): (ElementKind, usize),
        binding: u32,
    ) -> DevArg<'a> {
        let t: crate::device_tensor::DeviceTensorRef<'a, T, 2> =
            crate::device_tensor::DeviceTensorRef {
                buffer: t.buffer,
                offset: t.offset,
                shape: t.shape,
                stride: t.stride,
            };
        DevArg {
            view: View::of_device(name, &t, expected),
            output: false,
            id: t.buffer.device_id(),
            binding,
            operand: operand(&t, kind, per_group),
        }
    }

    /// The tensor written (binding 1).
    pub fn output<T>(
        name: &'static str,
        t: &'a crate::device_tensor::DeviceTensorMut<'_, T, 2>,
        expected: [usize; 2],
        (kind, per_group): (ElementKind, usize),
    ) -> DevArg<'a> {
        let r = t.as_ref();
        DevArg {
            view: View::of_device(name, &r, expected),
            output: true,
            id: t.buffer.device_id(),
            binding: 1,
            operand: operand(&r, kind, per_group),
        }
    }
}

#[cfg(feature = "wgpu")]
impl PlanCore {
    /// `can_implement` for device tensors: the host's checks, in the order
    /// `args` lists them.
    pub fn check_device_args(&self, args: &[DevArg<'_>]) -> Result<()> {
        let pick = |out: bool| -> Vec<View> {
            args.iter()
                .filter(|a| a.output == out)
                .map(|a| a.view)
                .collect()
        };
        self.check_views(&pick(false), &pick(true))
    }

    /// `run_device` of a SPEC plan: the plan's device half, the stream's
    /// and every buffer's device, the views, the workspace; then the
    /// program is enqueued over the operands in binding order.
    pub fn run_device(
        &self,
        gpu: Option<&GpuPlan>,
        stream: &Stream,
        workspace: &Workspace<'_>,
        q_range: (i32, i32),
        args: &[DevArg<'_>],
    ) -> Result<()> {
        let gpu = self.device_half(gpu)?;
        let ids: Vec<(&str, u64)> = args.iter().map(|a| (a.view.name, a.id)).collect();
        gpu.check(self.plan, stream, &ids)?;
        self.check_device_args(args)?;
        self.check_workspace(workspace)?;
        if self.layout.is_empty() {
            return Ok(());
        }
        let mut bound: Vec<&DevArg<'_>> = args.iter().collect();
        bound.sort_by_key(|a| a.binding);
        let operands: Vec<_> = bound.iter().map(|a| a.operand).collect();
        gpu.enqueue(&self.layout, q_range, &operands)
    }
}
