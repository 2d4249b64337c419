//! `FakeQuantizeAffinePlan` and its backward: quantize then dequantize in
//! one pass (quantization-aware training), with the straight-through mask.

use super::affine_common::{store, strides, walk, AffineCore, NdLayout, Out, ZeroPoints};
use super::common::{check_code_order, check_kind};
use crate::affine::{AffineFormula, CodeConversion, Granularity, Shape, MAX_RANK};
use crate::element::{Element, ElementKind};
use crate::error::{Error, Result};
use crate::kernels::affine::AffineKernel;
use crate::plan::{PlanPreference, QuantizeKind};
use crate::stream::{Stream, Workspace};
use crate::tensor::{TensorMut, TensorRef};

const PLAN: &str = "FakeQuantizeAffinePlan";
const BACKWARD: &str = "FakeQuantizeAffineBackwardPlan";

/// Describes a fake quantization of a tensor of `shape` (for the forward
/// and the backward plan): codes `q_min..=q_max` (any i32 range), one scale
/// and zero point per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FakeQuantizeAffineDescriptor {
    /// The tensor's dimensions.
    pub shape: Shape,
    /// Which elements share a parameter.
    pub granularity: Granularity,
    /// Smallest code.
    pub q_min: i32,
    /// Largest code.
    pub q_max: i32,
    /// The arithmetic (a PyTorch fake-quantize preset, or any other).
    pub formula: AffineFormula,
    /// Must be `T::KIND`.
    pub element: ElementKind,
    /// Must be `TScale::KIND`.
    pub scale_element: ElementKind,
}

/// The tensors of one forward call.
#[derive(Debug)]
pub struct FakeQuantizeAffineArgs<'a, T, TScale, const R: usize> {
    /// The values, any strides.
    pub input: TensorRef<'a, T, R>,
    /// One scale per block.
    pub scale: &'a [TScale],
    /// One zero point per block (integer or float), or none.
    pub zero_point: ZeroPoints<'a>,
    /// The fake-quantized values, any non-overlapping strides.
    pub output: TensorMut<'a, T, R>,
    /// Where the rounded value lies inside `[q_min, q_max]` (PyTorch's
    /// `_cachemask` output), when wanted.
    pub mask: Option<TensorMut<'a, bool, R>>,
}

/// The tensors of one backward call.
#[derive(Debug)]
pub struct FakeQuantizeAffineBackwardArgs<'a, T, TScale, const R: usize> {
    /// The gradient of the forward's output.
    pub grad_output: TensorRef<'a, T, R>,
    /// The forward's input (the mask is computed from it again).
    pub input: TensorRef<'a, T, R>,
    /// One scale per block.
    pub scale: &'a [TScale],
    /// One zero point per block, or none.
    pub zero_point: ZeroPoints<'a>,
    /// The gradient of the input.
    pub grad_input: TensorMut<'a, T, R>,
}

/// Fake quantization: `y = D(convert(r) − z) · s` with `r` the formula's
/// rounded value, stored as `T`; `mask = q_min ≤ r ≤ q_max` (inclusive, on
/// the rounded value, as PyTorch; NaN is outside). With
/// [`AffineFormula::TORCH_FAKE_QUANTIZE_PER_TENSOR`],
/// [`TORCH_FAKE_QUANTIZE_PER_CHANNEL`](AffineFormula::TORCH_FAKE_QUANTIZE_PER_CHANNEL)
/// (and its float-zero-point form) and
/// [`TORCH_DECOMPOSED_FAKE_QUANT`](AffineFormula::TORCH_DECOMPOSED_FAKE_QUANT)
/// it is PyTorch's `fake_quantize_per_tensor_affine`,
/// `fake_quantize_per_channel_affine` and `quantized_decomposed.fake_quant_per_channel`
/// bit for bit.
///
/// ```
/// use groupq::*;
/// use groupq::affine::{AffineFormula, Granularity, Shape};
///
/// let x = [0.26f32, -3.0, 100.0, f32::NAN];
/// let desc = FakeQuantizeAffineDescriptor {
///     shape: Shape::new(&[4])?,
///     granularity: Granularity::PerTensor,
///     q_min: -8, q_max: 7,
///     formula: AffineFormula::TORCH_FAKE_QUANTIZE_PER_TENSOR,
///     element: ElementKind::F32, scale_element: ElementKind::F32,
/// };
/// let stream = Stream::cpu();
/// let plan = FakeQuantizeAffinePlan::<f32, f32>::select(&stream, &desc, Default::default())?;
/// let (mut y, mut mask) = ([0f32; 4], [false; 4]);
/// plan.run(&stream, Workspace::None, FakeQuantizeAffineArgs {
///     input: TensorRef::new(&x, [4])?,
///     scale: &[0.5f32],
///     zero_point: ZeroPoints::Int(&[1]),
///     output: TensorMut::new(&mut y, [4])?,
///     mask: Some(TensorMut::new(&mut mask, [4])?),
/// })?;
/// // 0.26 / 0.5 rounds to 1; 100 clips to 7; NaN goes to q_min (fmax drops it).
/// assert_eq!(y, [0.5, -3.0, 3.0, -4.5]);
/// assert_eq!(mask, [true, true, false, false]);
/// # Ok::<(), groupq::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FakeQuantizeAffinePlan<T: Element, TScale: Element> {
    core: AffineCore,
    desc: FakeQuantizeAffineDescriptor,
    kernel: AffineKernel,
    _types: std::marker::PhantomData<fn() -> (T, TScale)>,
}

/// The gradient of [`FakeQuantizeAffinePlan`] with respect to its input:
/// `dx = mask ? dy : dy · 0` (PyTorch's `dY * mask`: the product keeps the
/// sign of a zero and turns NaN and ±inf into NaN), the mask computed from
/// the input again.
#[derive(Debug, Clone)]
pub struct FakeQuantizeAffineBackwardPlan<T: Element, TScale: Element> {
    core: AffineCore,
    desc: FakeQuantizeAffineDescriptor,
    kernel: AffineKernel,
    _types: std::marker::PhantomData<fn() -> (T, TScale)>,
}

/// Validation shared by the forward and the backward.
fn select_core<T: Element, TScale: Element>(
    plan: &'static str,
    op: QuantizeKind,
    stream: &Stream,
    desc: &FakeQuantizeAffineDescriptor,
    pref: PlanPreference,
) -> Result<(AffineCore, AffineKernel)> {
    check_kind(plan, "element", desc.element, "T", T::KIND)?;
    check_kind(
        plan,
        "scale_element",
        desc.scale_element,
        "TScale",
        TScale::KIND,
    )?;
    if desc.formula.conversion == CodeConversion::Fbgemm {
        return Err(Error::Unsupported(format!(
            "{plan}: FBGEMM's conversion (torch.quantize_per_tensor) has no fake-quantize form"
        )));
    }
    let layout = NdLayout::new(plan, desc.shape, desc.granularity)?;
    check_code_order(plan, desc.q_min, desc.q_max)?;
    let core = AffineCore::new::<T>(plan, op, Some(TScale::KIND), layout, pref, stream)?;
    Ok((core, AffineKernel::new(desc.formula, T::KIND)))
}

impl<T: Element, TScale: Element> FakeQuantizeAffinePlan<T, TScale> {
    /// Validates `desc`: element kinds the type parameters' (else
    /// `Unsupported`), FBGEMM's conversion `Unsupported`, the layout as
    /// [`QuantizeAffinePlan::select`](crate::QuantizeAffinePlan::select),
    /// `q_max < q_min` → `InvalidProblem`.
    pub fn select(
        stream: &Stream,
        desc: &FakeQuantizeAffineDescriptor,
        pref: PlanPreference,
    ) -> Result<Self> {
        let (core, kernel) =
            select_core::<T, TScale>(PLAN, QuantizeKind::FakeQuantizeAffine, stream, desc, pref)?;
        Ok(FakeQuantizeAffinePlan {
            core,
            desc: *desc,
            kernel,
            _types: std::marker::PhantomData,
        })
    }

    /// Checks a call's tensors (the mask, when given, as an output).
    pub fn can_implement<const R: usize>(
        &self,
        args: &FakeQuantizeAffineArgs<'_, T, TScale, R>,
    ) -> Result<()> {
        let l = &self.core.layout;
        let i = &args.input;
        l.check_view("input", &i.shape, &i.stride, i.data.len(), false)?;
        let o = &args.output;
        l.check_view("output", &o.shape, &o.stride, o.data.len(), true)?;
        if let Some(m) = &args.mask {
            l.check_view("mask", &m.shape, &m.stride, m.data.len(), true)?;
        }
        self.core
            .check_params(&self.desc.formula, args.scale, &args.zero_point)
    }

    /// Writes every fake-quantized value (and the mask).
    pub fn run<const R: usize>(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: FakeQuantizeAffineArgs<'_, T, TScale, R>,
    ) -> Result<()> {
        self.core.check_run(stream, &workspace)?;
        self.can_implement(&args)?;
        let (k, lo, hi) = (&self.kernel, self.desc.q_min, self.desc.q_max);
        let (x, s, zp) = (args.input.data, args.scale, args.zero_point);
        let mask = args.mask.map(|m| Out {
            stride: strides(&m.stride),
            data: m.data,
        });
        walk::<T, bool>(
            stream,
            &self.core.layout,
            [strides(&args.input.stride), [0; MAX_RANK]],
            Out {
                data: args.output.data,
                stride: strides(&args.output.stride),
            },
            mask,
            |at, y, m| {
                let (z, zf) = zp.at(at.param, k);
                let (v, r) = k.fake(x[at.input[0]].to_f64(), s[at.param].to_f64(), z, zf, lo, hi);
                *y = store(v);
                *m = AffineKernel::inside(r, lo, hi, true);
            },
        );
        Ok(())
    }

    /// The descriptor the plan was selected for.
    pub fn descriptor(&self) -> &FakeQuantizeAffineDescriptor {
        &self.desc
    }

    plan_info_methods!();
}

impl<T: Element, TScale: Element> FakeQuantizeAffineBackwardPlan<T, TScale> {
    /// Validates `desc` as [`FakeQuantizeAffinePlan::select`].
    pub fn select(
        stream: &Stream,
        desc: &FakeQuantizeAffineDescriptor,
        pref: PlanPreference,
    ) -> Result<Self> {
        let (core, kernel) = select_core::<T, TScale>(
            BACKWARD,
            QuantizeKind::FakeQuantizeAffineBackward,
            stream,
            desc,
            pref,
        )?;
        Ok(FakeQuantizeAffineBackwardPlan {
            core,
            desc: *desc,
            kernel,
            _types: std::marker::PhantomData,
        })
    }

    /// Checks a call's tensors.
    pub fn can_implement<const R: usize>(
        &self,
        args: &FakeQuantizeAffineBackwardArgs<'_, T, TScale, R>,
    ) -> Result<()> {
        let l = &self.core.layout;
        let (d, i) = (&args.grad_output, &args.input);
        l.check_view("grad_output", &d.shape, &d.stride, d.data.len(), false)?;
        l.check_view("input", &i.shape, &i.stride, i.data.len(), false)?;
        let o = &args.grad_input;
        l.check_view("grad_input", &o.shape, &o.stride, o.data.len(), true)?;
        self.core
            .check_params(&self.desc.formula, args.scale, &args.zero_point)
    }

    /// Writes every gradient.
    pub fn run<const R: usize>(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: FakeQuantizeAffineBackwardArgs<'_, T, TScale, R>,
    ) -> Result<()> {
        self.core.check_run(stream, &workspace)?;
        self.can_implement(&args)?;
        let (k, lo, hi) = (&self.kernel, self.desc.q_min, self.desc.q_max);
        let (dy, x, s, zp) = (
            args.grad_output.data,
            args.input.data,
            args.scale,
            args.zero_point,
        );
        walk::<T, bool>(
            stream,
            &self.core.layout,
            [
                strides(&args.input.stride),
                strides(&args.grad_output.stride),
            ],
            Out {
                data: args.grad_input.data,
                stride: strides(&args.grad_input.stride),
            },
            None,
            |at, g, _| {
                let (_, zf) = zp.at(at.param, k);
                let r = k.rounded(x[at.input[0]].to_f64(), s[at.param].to_f64(), zf, 0.0);
                let d = dy[at.input[1]].to_f64();
                let inside = AffineKernel::inside(r, lo, hi, true);
                *g = store(if inside { d } else { d * 0.0 });
            },
        );
        Ok(())
    }

    /// The descriptor the plan was selected for.
    pub fn descriptor(&self) -> &FakeQuantizeAffineDescriptor {
        &self.desc
    }

    plan_info_methods!();
}
