//! `QuantizeDynamicAffinePlan`: scales and zero points chosen from the data
//! per block by a recipe, then the codes, in one call (PyTorch's dynamic
//! per-token and per-tensor quantization).

use super::affine_common::{
    strides, vector_backend, write_codes, AffineCore, NdLayout, Types3, ZeroPoints,
};
use super::common::{check_code_range, check_kind};
use crate::affine::{AffineFormula, Granularity, Shape, MAX_RANK};
use crate::element::{Element, ElementKind, IntElement};
use crate::error::{Error, Result};
use crate::kernels::affine::{AffineKernel, AffineVector};
use crate::kernels::recipe::{Extremes, RecipeKernel};
use crate::plan::{PlanPreference, QuantizeKind};
use crate::recipe::{NonFinitePolicy, Recipe};
use crate::stream::{Stream, Workspace};
use crate::tensor::{TensorMut, TensorRef};

const PLAN: &str = "QuantizeDynamicAffinePlan";

/// Describes a dynamic affine quantization: per block of `granularity`,
/// `recipe` chooses the scale and zero point from the block's values (its
/// mapping, eps, zero-point rule, choose arithmetic and non-finite policy),
/// then `formula` computes the codes in `recipe.q_min..=recipe.q_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantizeDynamicAffineDescriptor {
    /// The tensor's dimensions.
    pub shape: Shape,
    /// Which elements share a parameter.
    pub granularity: Granularity,
    /// How the parameters are chosen (and the code range).
    pub recipe: Recipe,
    /// How the codes are computed from them.
    pub formula: AffineFormula,
    /// Must be `TIn::KIND`.
    pub input_element: ElementKind,
    /// Must be `TScale::KIND`.
    pub scale_element: ElementKind,
    /// Must be `TOut::KIND`.
    pub output_element: ElementKind,
}

impl QuantizeDynamicAffineDescriptor {
    /// PyTorch's dynamic per-token int8 quantization of a tensor of `dims`
    /// (`choose_qparams_per_token_asymmetric`, computed in the input's
    /// dtype, then `quantize_per_token` with the float64 scales it returns):
    /// use with `TScale = f64` and `TOut = i8`.
    pub fn torch_per_token(dims: &[usize], input_element: ElementKind) -> Result<Self> {
        let mut recipe = Recipe::torch_per_token_asymmetric_int8();
        recipe.choose_arithmetic = crate::recipe::Arithmetic::Input;
        recipe.non_finite = NonFinitePolicy::Propagate;
        Ok(QuantizeDynamicAffineDescriptor {
            shape: Shape::new(dims)?,
            granularity: Granularity::PerToken,
            recipe,
            formula: AffineFormula::TORCH_PER_TOKEN,
            input_element,
            scale_element: ElementKind::F64,
            output_element: ElementKind::S8,
        })
    }
}

/// The tensors of one call.
#[derive(Debug)]
pub struct QuantizeDynamicAffineArgs<'a, TIn, TScale, TOut, const R: usize> {
    /// The values, any strides.
    pub input: TensorRef<'a, TIn, R>,
    /// One scale per block, written (dense over the parameter shape).
    pub scale: &'a mut [TScale],
    /// One zero point per block, written.
    pub zero_point: &'a mut [i32],
    /// The codes, written, any non-overlapping strides.
    pub output: TensorMut<'a, TOut, R>,
}

/// Chooses each block's scale and zero point from its values, then
/// quantizes: [`QuantizeDynamicAffineDescriptor::torch_per_token`] is
/// PyTorch's dynamic per-token quantization bit for bit; any recipe preset
/// works per tensor, per channel or per block.
///
/// ```
/// use groupq::*;
///
/// let x = [0.5f32, -1.0, 2.0, 3.0, 0.0, 0.25, -0.75, 1.0];
/// let desc = QuantizeDynamicAffineDescriptor::torch_per_token(&[2, 4], ElementKind::F32)?;
/// let stream = Stream::cpu();
/// let plan = QuantizeDynamicAffinePlan::<f32, f64, i8>::select(&stream, &desc, Default::default())?;
/// let (mut s, mut z, mut q) = ([0f64; 2], [0i32; 2], [0i8; 8]);
/// plan.run(&stream, Workspace::None, QuantizeDynamicAffineArgs {
///     input: TensorRef::new(&x, [2, 4])?,
///     scale: &mut s,
///     zero_point: &mut z,
///     output: TensorMut::new(&mut q, [2, 4])?,
/// })?;
/// // Row 0 spans [-1, 3]: s = 4 / 255; its extremes map to the code range's ends.
/// assert_eq!((s[0] as f32, q[1], q[3]), (4.0 / 255.0, -128, 127));
/// # Ok::<(), groupq::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct QuantizeDynamicAffinePlan<TIn: Element, TScale: Element, TOut: IntElement> {
    core: AffineCore,
    desc: QuantizeDynamicAffineDescriptor,
    recipe: RecipeKernel,
    kernel: AffineKernel,
    /// The recipe engine's vector codes, where the formula has them.
    vector: Option<AffineVector<TIn>>,
    _types: Types3<TIn, TScale, TOut>,
}

impl<TIn: Element, TScale: Element, TOut: IntElement> QuantizeDynamicAffinePlan<TIn, TScale, TOut> {
    /// Validates `desc` as [`QuantizeAffinePlan::select`](crate::QuantizeAffinePlan::select),
    /// with the recipe's code range.
    pub fn select(
        stream: &Stream,
        desc: &QuantizeDynamicAffineDescriptor,
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
        check_code_range::<TOut>(PLAN, desc.recipe.q_min, desc.recipe.q_max)?;
        if desc.recipe.zero_point == crate::recipe::ZeroPointRule::FloatOffset {
            return Err(Error::Unsupported(format!(
                "{PLAN}: recipes with a float offset (gguf Q4_1/Q5_1) run on the per-group plans"
            )));
        }
        let kernel = AffineKernel::new(desc.formula, TIn::KIND);
        let (backend, vector) = vector_backend::<TIn, TOut>(PLAN, &kernel, pref)?;
        let core = AffineCore::with_backend::<TIn>(
            PLAN,
            QuantizeKind::QuantizeDynamicAffine,
            Some(TOut::KIND),
            layout,
            backend,
            stream,
        )?;
        Ok(QuantizeDynamicAffinePlan {
            core,
            desc: *desc,
            recipe: RecipeKernel::new(desc.recipe, TIn::KIND, TScale::KIND),
            kernel,
            vector,
            _types: std::marker::PhantomData,
        })
    }

    /// Checks a call's tensors: views as the descriptor says, parameter
    /// outputs of the parameter shape's length.
    pub fn can_implement<const R: usize>(
        &self,
        args: &QuantizeDynamicAffineArgs<'_, TIn, TScale, TOut, R>,
    ) -> Result<()> {
        let l = &self.core.layout;
        let i = &args.input;
        l.check_view("input", &i.shape, &i.stride, i.data.len(), false)?;
        let o = &args.output;
        l.check_view("output", &o.shape, &o.stride, o.data.len(), true)?;
        l.check_params("scale", args.scale.len())?;
        l.check_params("zero_point", args.zero_point.len())
    }

    /// Chooses every block's parameters (in the blocks' element order),
    /// then writes the codes. Under `NonFinitePolicy::Error` a NaN or
    /// infinite input is `NonFiniteInput` (`row`, `group`: the first
    /// offending parameter's index over the parameter shape, split at its
    /// last dimension) with nothing written.
    pub fn run<const R: usize>(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: QuantizeDynamicAffineArgs<'_, TIn, TScale, TOut, R>,
    ) -> Result<()> {
        self.core.check_run(stream, &workspace)?;
        self.can_implement(&args)?;
        let l = &self.core.layout;
        let x = args.input.data;
        let in_stride = strides(&args.input.stride);
        // The extremes of every block, in element order (one thread: the
        // order fixes which of equal extremes is kept).
        let a = self.recipe.choose_arith();
        let mut ext = vec![Extremes::EMPTY; l.nparams];
        let mut bad: Option<usize> = None;
        let check = self.desc.recipe.non_finite == NonFinitePolicy::Error;
        for_each_in_order(l, &in_stride, |off, p| {
            let v = x[off].to_f64();
            if check && !v.is_finite() && bad.is_none_or(|b| p < b) {
                bad = Some(p);
            }
            ext[p].add(a.r(v));
        });
        if let Some(p) = bad {
            let last = l.params.dims().last().copied().unwrap_or(1).max(1);
            return Err(Error::NonFiniteInput {
                row: p / last,
                group: p % last,
            });
        }
        let mut zs = vec![0i32; l.nparams];
        let mut ss = vec![0f64; l.nparams];
        for (p, e) in ext.iter().enumerate() {
            let (s, z, _) = self.recipe.choose_from(*e);
            // The scale as stored is the one the codes use.
            let stored = TScale::from_f64(if s.is_nan() { f64::NAN } else { s });
            args.scale[p] = stored;
            ss[p] = stored.to_f64();
            zs[p] = z;
        }
        args.zero_point.copy_from_slice(&zs);
        let range = (self.desc.recipe.q_min, self.desc.recipe.q_max);
        let kernels = (&self.kernel, self.vector.as_ref());
        let zp = ZeroPoints::Int(&zs);
        write_codes(
            stream,
            l,
            kernels,
            &args.input,
            (&ss, &zp),
            args.output,
            range,
        );
        Ok(())
    }

    /// The descriptor the plan was selected for.
    pub fn descriptor(&self) -> &QuantizeDynamicAffineDescriptor {
        &self.desc
    }

    plan_info_methods!();
}

/// Calls `f(input offset, parameter index)` for every element in row-major
/// order of the layout's shape.
fn for_each_in_order(l: &NdLayout, stride: &[usize; MAX_RANK], mut f: impl FnMut(usize, usize)) {
    if l.numel == 0 {
        return;
    }
    let (r, dims, block, pstride) = l.index_arithmetic();
    let mut idx = [0usize; MAX_RANK];
    loop {
        let off: usize = (0..r).map(|d| idx[d] * stride[d]).sum();
        let p: usize = (0..r).map(|d| idx[d] / block[d] * pstride[d]).sum();
        f(off, p);
        let mut d = r;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}
