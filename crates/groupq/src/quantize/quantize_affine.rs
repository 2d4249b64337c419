//! `QuantizeAffinePlan`: float → integer codes with one scale and zero
//! point per block of an N-D tensor (per-tensor, per-channel on any axis,
//! per-token, per-group along any axis).

use super::affine_common::{vector_backend, write_codes, AffineCore, NdLayout, Types3, ZeroPoints};
use super::common::{check_code_range, check_kind};
use crate::affine::{AffineFormula, Granularity, Shape};
use crate::element::{Element, ElementKind, IntElement};
use crate::error::{Error, Result};
use crate::kernels::affine::{AffineKernel, AffineVector};
use crate::plan::{PlanPreference, QuantizeKind};
use crate::stream::{Stream, Workspace};
use crate::tensor::{TensorMut, TensorRef};

const PLAN: &str = "QuantizeAffinePlan";

/// Describes an affine quantization of a tensor of `shape`: the elements
/// of each block of `granularity` share a scale and a zero point, codes are
/// clamped to `q_min..=q_max`, every value is computed by `formula`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantizeAffineDescriptor {
    /// The tensor's dimensions (rank ≤ [`MAX_RANK`](crate::affine::MAX_RANK)).
    pub shape: Shape,
    /// Which elements share a parameter.
    pub granularity: Granularity,
    /// Smallest code written; inside the output type's range.
    pub q_min: i32,
    /// Largest code written; inside the output type's range.
    pub q_max: i32,
    /// The arithmetic ([`AffineFormula::SPEC`] or a PyTorch preset).
    pub formula: AffineFormula,
    /// Must be `TIn::KIND`.
    pub input_element: ElementKind,
    /// Must be `TScale::KIND`.
    pub scale_element: ElementKind,
    /// Must be `TOut::KIND`.
    pub output_element: ElementKind,
}

/// The tensors of one call. `scale` and the zero points are dense arrays
/// over the parameter shape ([`Granularity::param_shape`]): one value for
/// per-tensor, one per channel, …
#[derive(Debug)]
pub struct QuantizeAffineArgs<'a, TIn, TScale, TOut, const R: usize> {
    /// The values, any strides.
    pub input: TensorRef<'a, TIn, R>,
    /// One scale per block.
    pub scale: &'a [TScale],
    /// One zero point per block, or none.
    pub zero_point: ZeroPoints<'a>,
    /// The codes written, any non-overlapping strides.
    pub output: TensorMut<'a, TOut, R>,
}

/// Quantizes a tensor of any rank with one scale and zero point per block:
/// `q = convert(round(apply(x, s) ⊕ z))` as the descriptor's
/// [`AffineFormula`] says (SPEC §3.1's by default; PyTorch's
/// `quantized_decomposed`, `quantize_per_tensor` / `_per_channel` and
/// per-token ops bit for bit with its presets).
///
/// ```
/// use groupq::*;
/// use groupq::affine::{AffineFormula, Granularity, Shape};
///
/// // torch.ops.quantized_decomposed.quantize_per_channel on axis 1 of a
/// // [2, 3, 2] tensor, f32 scales and int zero points.
/// let x = [0.5f32, -1.0, 2.5, 8.0, 0.1, -0.2, 1.0, 2.0, -3.0, 0.0, 0.3, 0.6];
/// let (s, z) = ([0.5f32, 1.0, 0.1], [0i32, 1, -2]);
/// let desc = QuantizeAffineDescriptor {
///     shape: Shape::new(&[2, 3, 2])?,
///     granularity: Granularity::PerChannel { axis: 1 },
///     q_min: -128, q_max: 127,
///     formula: AffineFormula::TORCH_DECOMPOSED,
///     input_element: ElementKind::F32, scale_element: ElementKind::F32,
///     output_element: ElementKind::S8,
/// };
/// let stream = Stream::cpu();
/// let plan = QuantizeAffinePlan::<f32, f32, i8>::select(&stream, &desc, Default::default())?;
/// let mut q = [0i8; 12];
/// plan.run(&stream, Workspace::None, QuantizeAffineArgs {
///     input: TensorRef::new(&x, [2, 3, 2])?,
///     scale: &s,
///     zero_point: ZeroPoints::Int(&z),
///     output: TensorMut::new(&mut q, [2, 3, 2])?,
/// })?;
/// // The zero point is added after rounding: 2.5 → 2, + 1 = 3.
/// assert_eq!(q, [1, -2, 3, 9, -1, -4, 2, 4, -2, 1, 1, 4]);
/// # Ok::<(), groupq::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct QuantizeAffinePlan<TIn: Element, TScale: Element, TOut: IntElement> {
    core: AffineCore,
    desc: QuantizeAffineDescriptor,
    kernel: AffineKernel,
    /// The recipe engine's vector codes, where the formula has them.
    vector: Option<AffineVector<TIn>>,
    _types: Types3<TIn, TScale, TOut>,
}

impl<TIn: Element, TScale: Element, TOut: IntElement> QuantizeAffinePlan<TIn, TScale, TOut> {
    /// Validates `desc`. Errors, first failure wins: element kinds other
    /// than the type parameters' → `Unsupported`; packed codes (`S4`/`U4`:
    /// the per-group plans pack them) → `Unsupported`; an axis out of range,
    /// a group or block that does not divide its dimension, `q_max < q_min`
    /// or a code range outside `TOut`'s → `InvalidProblem`; a device stream
    /// or a preferred backend other than `Scalar` → `Unsupported`.
    pub fn select(
        stream: &Stream,
        desc: &QuantizeAffineDescriptor,
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
        if TOut::PACK != 1 {
            return Err(Error::Unsupported(format!(
                "{PLAN}: packed codes ({:?}) are written by the per-group plans; use i8 or u8 here",
                TOut::KIND
            )));
        }
        let layout = NdLayout::new(PLAN, desc.shape, desc.granularity)?;
        check_code_range::<TOut>(PLAN, desc.q_min, desc.q_max)?;
        let kernel = AffineKernel::new(desc.formula, TIn::KIND);
        let (backend, vector) = vector_backend::<TIn, TOut>(PLAN, &kernel, pref)?;
        let core = AffineCore::with_backend::<TIn>(
            PLAN,
            QuantizeKind::QuantizeAffine,
            Some(TOut::KIND),
            layout,
            backend,
            stream,
        )?;
        Ok(QuantizeAffinePlan {
            core,
            desc: *desc,
            kernel,
            vector,
            _types: std::marker::PhantomData,
        })
    }

    /// Checks a call's tensors: rank and shapes the descriptor's, slices
    /// long enough for their views, parameter arrays of the parameter
    /// shape's length, an output whose elements do not overlap.
    pub fn can_implement<const R: usize>(
        &self,
        args: &QuantizeAffineArgs<'_, TIn, TScale, TOut, R>,
    ) -> Result<()> {
        let l = &self.core.layout;
        l.check_view(
            "input",
            &args.input.shape,
            &args.input.stride,
            args.input.data.len(),
            false,
        )?;
        let o = &args.output;
        l.check_view("output", &o.shape, &o.stride, o.data.len(), true)?;
        self.core
            .check_params(&self.desc.formula, args.scale, &args.zero_point)
    }

    /// Writes the codes of every element. `Ok` without touching anything for
    /// an empty tensor.
    pub fn run<const R: usize>(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: QuantizeAffineArgs<'_, TIn, TScale, TOut, R>,
    ) -> Result<()> {
        self.core.check_run(stream, &workspace)?;
        self.can_implement(&args)?;
        let range = (self.desc.q_min, self.desc.q_max);
        let kernels = (&self.kernel, self.vector.as_ref());
        let params = (args.scale, &args.zero_point);
        let layout = &self.core.layout;
        write_codes(
            stream,
            layout,
            kernels,
            &args.input,
            params,
            args.output,
            range,
        );
        Ok(())
    }

    /// The descriptor the plan was selected for.
    pub fn descriptor(&self) -> &QuantizeAffineDescriptor {
        &self.desc
    }

    plan_info_methods!();
}
