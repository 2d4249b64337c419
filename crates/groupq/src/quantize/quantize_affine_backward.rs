//! The gradients of the affine quantize and dequantize (SPEC §3.3 and §3.4
//! per block): `QuantizeAffineBackwardPlan` and
//! `DequantizeAffineBackwardPlan`.

use super::affine_common::{
    by_runs, for_each_run, last_stride, run_backend, store, strides, walk, walk_rows, AffineCore,
    NdLayout, Out, ZeroPoints,
};
use super::common::{check_code_order, check_kind};
use crate::affine::{AffineFormula, Granularity, Shape, MAX_RANK};
use crate::element::{Element, ElementKind};
use crate::error::Result;
use crate::kernels::affine::{dequantize_backward_run, quantize_backward_run, AffineKernel};
use crate::kernels::{run_kernels, DequantizeBackwardRun, QuantizeBackwardRun};
use crate::plan::{PlanPreference, QuantizeKind, SteBoundary};
use crate::stream::{Stream, Workspace};
use crate::tensor::{TensorMut, TensorRef};

const PLAN: &str = "QuantizeAffineBackwardPlan";

const DEQUANTIZE: &str = "DequantizeAffineBackwardPlan";

/// Describes the straight-through gradient of an affine quantize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantizeAffineBackwardDescriptor {
    /// The tensor's dimensions.
    pub shape: Shape,
    /// Which elements share a parameter.
    pub granularity: Granularity,
    /// The forward's smallest code (any i32).
    pub q_min: i32,
    /// The forward's largest code.
    pub q_max: i32,
    /// The forward's formula: the mask is taken on its rounded value.
    pub formula: AffineFormula,
    /// `Exclusive` (`q_min < r < q_max`) or `Inclusive` (`q_min ≤ r ≤ q_max`).
    pub boundary: SteBoundary,
    /// Must be `T::KIND`.
    pub element: ElementKind,
    /// Must be `TScale::KIND`.
    pub scale_element: ElementKind,
}

/// The tensors of one quantize-backward call.
#[derive(Debug)]
pub struct QuantizeAffineBackwardArgs<'a, T, TScale, const R: usize> {
    /// The gradient with respect to the codes.
    pub grad_output: TensorRef<'a, T, R>,
    /// The forward's input.
    pub input: TensorRef<'a, T, R>,
    /// One scale per block.
    pub scale: &'a [TScale],
    /// One zero point per block, or none.
    pub zero_point: ZeroPoints<'a>,
    /// The gradient with respect to the input, written.
    pub grad_input: TensorMut<'a, T, R>,
}

/// SPEC §3.3 per block: `dx = (inside(r) && s != 0) ? M(dy) / s : 0`, with
/// `r` the forward's rounded, unclamped value under the same formula (NaN
/// is never inside), stored as `T`.
#[derive(Debug, Clone)]
pub struct QuantizeAffineBackwardPlan<T: Element, TScale: Element> {
    core: AffineCore,
    desc: QuantizeAffineBackwardDescriptor,
    kernel: AffineKernel,
    /// The per-group straight-through kernel on runs, for SPEC's formula.
    run: Option<QuantizeBackwardRun<T>>,
    _types: std::marker::PhantomData<fn() -> (T, TScale)>,
}

impl<T: Element, TScale: Element> QuantizeAffineBackwardPlan<T, TScale> {
    /// Validates `desc` (kinds, layout, `q_min <= q_max`).
    pub fn select(
        stream: &Stream,
        desc: &QuantizeAffineBackwardDescriptor,
        pref: PlanPreference,
    ) -> Result<Self> {
        check_kind(PLAN, "element", desc.element, "T", T::KIND)?;
        check_kind(
            PLAN,
            "scale_element",
            desc.scale_element,
            "TScale",
            TScale::KIND,
        )?;
        let layout = NdLayout::new(PLAN, desc.shape, desc.granularity)?;
        check_code_order(PLAN, desc.q_min, desc.q_max)?;
        let kernel = AffineKernel::new(desc.formula, T::KIND);
        let (backend, run) = run_backend(PLAN, pref, |b| {
            let spec = kernel.quantize_is_spec(T::KIND);
            spec.then(|| run_kernels::<i8, T>(b))
                .flatten()
                .map(|k| k.quantize_backward)
        })?;
        let core = AffineCore::with_backend::<T>(
            PLAN,
            QuantizeKind::QuantizeAffineBackward,
            Some(TScale::KIND),
            layout,
            backend,
            stream,
        )?;
        Ok(QuantizeAffineBackwardPlan {
            core,
            desc: *desc,
            kernel,
            run,
            _types: std::marker::PhantomData,
        })
    }

    /// Checks a call's tensors.
    pub fn can_implement<const R: usize>(
        &self,
        args: &QuantizeAffineBackwardArgs<'_, T, TScale, R>,
    ) -> Result<()> {
        let l = &self.core.layout;
        let (d, i, o) = (&args.grad_output, &args.input, &args.grad_input);
        l.check_view("grad_output", &d.shape, &d.stride, d.data.len(), false)?;
        l.check_view("input", &i.shape, &i.stride, i.data.len(), false)?;
        l.check_view("grad_input", &o.shape, &o.stride, o.data.len(), true)?;
        self.core
            .check_params(&self.desc.formula, args.scale, &args.zero_point)
    }

    /// Writes every gradient.
    pub fn run<const R: usize>(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: QuantizeAffineBackwardArgs<'_, T, TScale, R>,
    ) -> Result<()> {
        self.core.check_run(stream, &workspace)?;
        self.can_implement(&args)?;
        let (k, lo, hi) = (&self.kernel, self.desc.q_min, self.desc.q_max);
        let inclusive = self.desc.boundary == SteBoundary::Inclusive;
        let (dy, x, s, zp) = (
            args.grad_output.data,
            args.input.data,
            args.scale,
            args.zero_point,
        );
        let inputs = [
            strides(&args.input.stride),
            strides(&args.grad_output.stride),
        ];
        let out_last = last_stride(&args.grad_input.stride);
        let out = Out {
            data: args.grad_input.data,
            stride: strides(&args.grad_input.stride),
        };
        let layout = &self.core.layout;
        let lasts = [
            last_stride(&args.input.stride),
            last_stride(&args.grad_output.stride),
            out_last,
        ];
        if self.run.is_some() && by_runs(layout, &lasts) {
            walk_rows::<T, bool>(stream, layout, inputs, out, None, |row, gs, _| {
                for_each_run(&row, gs.len(), usize::MAX, |p, r| {
                    let (z, zf) = zp.run_at(p, k);
                    let xs = &x[row.input[0] + r.start..row.input[0] + r.end];
                    let dys = &dy[row.input[1] + r.start..row.input[1] + r.end];
                    let params = (s[p].to_f64(), z, zf);
                    let b = self.desc.boundary;
                    quantize_backward_run(k, self.run, (dys, xs), params, &mut gs[r], (lo, hi), b);
                });
            });
            return Ok(());
        }
        walk::<T, bool>(stream, layout, inputs, out, None, |at, g, _| {
            let (_, zf) = zp.at(at.param, k);
            let (sv, d) = (s[at.param].to_f64(), dy[at.input[1]].to_f64());
            *g = store(k.ste_grad(d, x[at.input[0]].to_f64(), sv, zf, lo, hi, inclusive));
        });
        Ok(())
    }

    /// The descriptor the plan was selected for.
    pub fn descriptor(&self) -> &QuantizeAffineBackwardDescriptor {
        &self.desc
    }

    plan_info_methods!();
}

/// Describes the gradient of an affine dequantize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DequantizeAffineBackwardDescriptor {
    /// The tensor's dimensions.
    pub shape: Shape,
    /// Which elements share a parameter.
    pub granularity: Granularity,
    /// The dequantize's formula (its dequantize arithmetic is used).
    pub formula: AffineFormula,
    /// Must be `T::KIND`.
    pub element: ElementKind,
    /// Must be `TScale::KIND`.
    pub scale_element: ElementKind,
}

/// The tensors of one dequantize-backward call.
#[derive(Debug)]
pub struct DequantizeAffineBackwardArgs<'a, T, TScale, const R: usize> {
    /// The gradient with respect to the dequantized values.
    pub grad_output: TensorRef<'a, T, R>,
    /// One scale per block.
    pub scale: &'a [TScale],
    /// The gradient taken straight through to the float domain, written.
    pub grad_input: TensorMut<'a, T, R>,
}

/// SPEC §3.4 per block: `dx = D(dy) · s` in the formula's dequantize
/// arithmetic, stored as `T`.
#[derive(Debug, Clone)]
pub struct DequantizeAffineBackwardPlan<T: Element, TScale: Element> {
    core: AffineCore,
    desc: DequantizeAffineBackwardDescriptor,
    kernel: AffineKernel,
    /// The per-group dequantize-backward kernel on runs, where the
    /// arithmetic is its own.
    run: Option<DequantizeBackwardRun<T>>,
    _types: std::marker::PhantomData<fn() -> (T, TScale)>,
}

impl<T: Element, TScale: Element> DequantizeAffineBackwardPlan<T, TScale> {
    /// Validates `desc` (kinds, layout).
    pub fn select(
        stream: &Stream,
        desc: &DequantizeAffineBackwardDescriptor,
        pref: PlanPreference,
    ) -> Result<Self> {
        check_kind(DEQUANTIZE, "element", desc.element, "T", T::KIND)?;
        check_kind(
            DEQUANTIZE,
            "scale_element",
            desc.scale_element,
            "TScale",
            TScale::KIND,
        )?;
        let layout = NdLayout::new(DEQUANTIZE, desc.shape, desc.granularity)?;
        let kernel = AffineKernel::new(desc.formula, T::KIND);
        let (backend, run) = run_backend(DEQUANTIZE, pref, |b| {
            let math = kernel.dequantize_is_math(T::KIND);
            math.then(|| run_kernels::<i8, T>(b))
                .flatten()
                .map(|k| k.dequantize_backward)
        })?;
        let core = AffineCore::with_backend::<T>(
            DEQUANTIZE,
            QuantizeKind::DequantizeAffineBackward,
            Some(TScale::KIND),
            layout,
            backend,
            stream,
        )?;
        Ok(DequantizeAffineBackwardPlan {
            core,
            desc: *desc,
            kernel,
            run,
            _types: std::marker::PhantomData,
        })
    }

    /// Checks a call's tensors.
    pub fn can_implement<const R: usize>(
        &self,
        args: &DequantizeAffineBackwardArgs<'_, T, TScale, R>,
    ) -> Result<()> {
        let l = &self.core.layout;
        let (d, o) = (&args.grad_output, &args.grad_input);
        l.check_view("grad_output", &d.shape, &d.stride, d.data.len(), false)?;
        l.check_view("grad_input", &o.shape, &o.stride, o.data.len(), true)?;
        l.check_params("scale", args.scale.len())
    }

    /// Writes every gradient.
    pub fn run<const R: usize>(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: DequantizeAffineBackwardArgs<'_, T, TScale, R>,
    ) -> Result<()> {
        self.core.check_run(stream, &workspace)?;
        self.can_implement(&args)?;
        let k = &self.kernel;
        let (dy, s) = (args.grad_output.data, args.scale);
        let inputs = [strides(&args.grad_output.stride), [0; MAX_RANK]];
        let out_last = last_stride(&args.grad_input.stride);
        let out = Out {
            data: args.grad_input.data,
            stride: strides(&args.grad_input.stride),
        };
        let layout = &self.core.layout;
        if self.run.is_some() && by_runs(layout, &[last_stride(&args.grad_output.stride), out_last])
        {
            walk_rows::<T, bool>(stream, layout, inputs, out, None, |row, gs, _| {
                for_each_run(&row, gs.len(), usize::MAX, |p, r| {
                    let dys = &dy[row.input[0] + r.start..row.input[0] + r.end];
                    dequantize_backward_run(k, self.run, dys, s[p].to_f64(), &mut gs[r]);
                });
            });
            return Ok(());
        }
        walk::<T, bool>(stream, layout, inputs, out, None, |at, g, _| {
            *g = store(k.dequantize_grad(dy[at.input[0]].to_f64(), s[at.param].to_f64()));
        });
        Ok(())
    }

    /// The descriptor the plan was selected for.
    pub fn descriptor(&self) -> &DequantizeAffineBackwardDescriptor {
        &self.desc
    }

    plan_info_methods!();
}
