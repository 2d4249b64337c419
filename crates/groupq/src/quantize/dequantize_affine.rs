//! `DequantizeAffinePlan`: integer codes → float, one scale and zero point
//! per block of an N-D tensor.

use super::affine_common::{
    by_runs, for_each_run, last_stride, run_backend, store, strides, walk, walk_rows, AffineCore,
    NdLayout, Out, Types3, ZeroPoints,
};
use super::common::check_kind;
use crate::affine::{AffineFormula, Granularity, Shape, MAX_RANK};
use crate::element::{Element, ElementKind, IntElement};
use crate::error::{Error, Result};
use crate::kernels::affine::{dequantize_run, AffineKernel};
use crate::kernels::DequantizeRun;
use crate::plan::{PlanPreference, QuantizeKind};
use crate::stream::{Stream, Workspace};
use crate::tensor::{TensorMut, TensorRef};

const PLAN: &str = "DequantizeAffinePlan";

/// Describes an affine dequantization of a tensor of `shape`; the
/// formula's [`dequantize_arithmetic`](AffineFormula::dequantize_arithmetic)
/// is the dtype of `(q − z) · s`, stored as `TOut`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DequantizeAffineDescriptor {
    /// The tensor's dimensions.
    pub shape: Shape,
    /// Which elements share a parameter.
    pub granularity: Granularity,
    /// The arithmetic.
    pub formula: AffineFormula,
    /// Must be `TQ::KIND`.
    pub input_element: ElementKind,
    /// Must be `TScale::KIND`.
    pub scale_element: ElementKind,
    /// Must be `TOut::KIND`.
    pub output_element: ElementKind,
}

/// The tensors of one call.
#[derive(Debug)]
pub struct DequantizeAffineArgs<'a, TQ, TScale, TOut, const R: usize> {
    /// The codes, any strides.
    pub input: TensorRef<'a, TQ, R>,
    /// One scale per block.
    pub scale: &'a [TScale],
    /// One zero point per block, or none.
    pub zero_point: ZeroPoints<'a>,
    /// The values written, any non-overlapping strides.
    pub output: TensorMut<'a, TOut, R>,
}

/// Dequantizes a tensor of any rank: `y = D(q − z) · s` in the formula's
/// dequantize arithmetic `D` (f32 below f64 for SPEC §3.2 and PyTorch's
/// per-tensor and per-channel ops; f64 for the per-token ones), stored as
/// `TOut` (through f32 for f16/bf16, as PyTorch's casts), NaN canonical.
///
/// ```
/// use groupq::*;
/// use groupq::affine::{AffineFormula, Granularity, Shape};
///
/// let q = [3i8, -2, 0, 7];
/// let desc = DequantizeAffineDescriptor {
///     shape: Shape::new(&[2, 2])?,
///     granularity: Granularity::PerChannel { axis: 0 },
///     formula: AffineFormula::TORCH_DECOMPOSED,
///     input_element: ElementKind::S8, scale_element: ElementKind::F32,
///     output_element: ElementKind::F32,
/// };
/// let stream = Stream::cpu();
/// let plan = DequantizeAffinePlan::<i8, f32, f32>::select(&stream, &desc, Default::default())?;
/// let mut y = [0f32; 4];
/// plan.run(&stream, Workspace::None, DequantizeAffineArgs {
///     input: TensorRef::new(&q, [2, 2])?,
///     scale: &[0.5f32, 0.25],
///     zero_point: ZeroPoints::Int(&[1, -1]),
///     output: TensorMut::new(&mut y, [2, 2])?,
/// })?;
/// assert_eq!(y, [1.0, -1.5, 0.25, 2.0]);
/// # Ok::<(), groupq::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DequantizeAffinePlan<TQ: IntElement, TScale: Element, TOut: Element> {
    core: AffineCore,
    desc: DequantizeAffineDescriptor,
    kernel: AffineKernel,
    /// The per-group inverse on runs, where the arithmetic is its own.
    run: Option<DequantizeRun<TQ, TOut>>,
    _types: Types3<TQ, TScale, TOut>,
}

impl<TQ: IntElement, TScale: Element, TOut: Element> DequantizeAffinePlan<TQ, TScale, TOut> {
    /// Validates `desc`: element kinds the type parameters' (else
    /// `Unsupported`), packed codes `Unsupported`, the layout as
    /// [`QuantizeAffinePlan::select`](crate::QuantizeAffinePlan::select).
    pub fn select(
        stream: &Stream,
        desc: &DequantizeAffineDescriptor,
        pref: PlanPreference,
    ) -> Result<Self> {
        check_kind(PLAN, "input_element", desc.input_element, "TQ", TQ::KIND)?;
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
        if TQ::PACK != 1 {
            return Err(Error::Unsupported(format!(
                "{PLAN}: packed codes ({:?}) are read by the per-group plans; use i8 or u8 here",
                TQ::KIND
            )));
        }
        let layout = NdLayout::new(PLAN, desc.shape, desc.granularity)?;
        let kernel = AffineKernel::new(desc.formula, TOut::KIND);
        let (backend, run) = run_backend(PLAN, pref, |b| {
            let math = kernel.dequantize_is_math(TOut::KIND);
            math.then(|| crate::kernels::run_kernels::<TQ, TOut>(b))
                .flatten()
                .map(|k| k.dequantize)
        })?;
        let core = AffineCore::with_backend::<TOut>(
            PLAN,
            QuantizeKind::DequantizeAffine,
            Some(TQ::KIND),
            layout,
            backend,
            stream,
        )?;
        Ok(DequantizeAffinePlan {
            core,
            desc: *desc,
            kernel,
            run,
            _types: std::marker::PhantomData,
        })
    }

    /// Checks a call's tensors (as [`QuantizeAffinePlan::can_implement`](crate::QuantizeAffinePlan::can_implement)).
    pub fn can_implement<const R: usize>(
        &self,
        args: &DequantizeAffineArgs<'_, TQ, TScale, TOut, R>,
    ) -> Result<()> {
        let l = &self.core.layout;
        let i = &args.input;
        l.check_view("input", &i.shape, &i.stride, i.data.len(), false)?;
        let o = &args.output;
        l.check_view("output", &o.shape, &o.stride, o.data.len(), true)?;
        self.core
            .check_params(&self.desc.formula, args.scale, &args.zero_point)
    }

    /// Writes every value.
    pub fn run<const R: usize>(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: DequantizeAffineArgs<'_, TQ, TScale, TOut, R>,
    ) -> Result<()> {
        self.core.check_run(stream, &workspace)?;
        self.can_implement(&args)?;
        let k = &self.kernel;
        let (q, s, zp) = (args.input.data, args.scale, args.zero_point);
        let inputs = [strides(&args.input.stride), [0; MAX_RANK]];
        let out = Out {
            data: args.output.data,
            stride: strides(&args.output.stride),
        };
        let layout = &self.core.layout;
        if self.run.is_some()
            && by_runs(
                layout,
                &[
                    last_stride(&args.input.stride),
                    last_stride(&args.output.stride),
                ],
            )
        {
            walk_rows::<TOut, bool>(stream, layout, inputs, out, None, |row, ys, _| {
                for_each_run(&row, ys.len(), usize::MAX, |p, r| {
                    let (z, zf) = zp.run_at(p, k);
                    let qs = &q[row.input[0] + r.start..row.input[0] + r.end];
                    dequantize_run(k, self.run, qs, (s[p].to_f64(), z, zf), &mut ys[r]);
                });
            });
            return Ok(());
        }
        walk::<TOut, bool>(stream, layout, inputs, out, None, |at, y, _| {
            let (_, zf) = zp.at(at.param, k);
            let v = k.dequantized(q[at.input[0]].to_i32(), zf, s[at.param].to_f64());
            *y = store(v);
        });
        Ok(())
    }

    /// The descriptor the plan was selected for.
    pub fn descriptor(&self) -> &DequantizeAffineDescriptor {
        &self.desc
    }

    plan_info_methods!();
}
