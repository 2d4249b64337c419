//! `FakeQuantizeAffinePlan` and its backward: quantize then dequantize in
//! one pass (quantization-aware training), with the straight-through mask.

use super::affine_common::{
    by_runs, for_each_run, last_stride, run_backend, store, strides, walk, walk_rows, AffineCore,
    NdLayout, Out, ZeroPoints,
};
use super::common::{check_code_order, check_kind};
use crate::affine::{AffineFormula, CodeConversion, Granularity, Shape, MAX_RANK};
use crate::element::{Element, ElementKind, IntElement};
use crate::error::{Error, Result};
use crate::kernels::affine::{fake_run, AffineKernel, AffineVector, FakeVector};
use crate::kernels::recipe::CHUNK;
use crate::kernels::run_kernels;
use crate::plan::{BackendKind, PlanPreference, QuantizeKind};
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
    vector: Option<FakeKernels<T>>,
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
    vector: Option<FakeKernels<T>>,
    _types: std::marker::PhantomData<fn() -> (T, TScale)>,
}

/// The vector kernels of a fake-quantize plan, by the 8-bit type its code
/// range fits.
#[derive(Debug, Clone, Copy)]
enum FakeKernels<T> {
    I8(FakeVector<i8, T>),
    U8(FakeVector<u8, T>),
}

/// The vector kernels of backend `b` with codes `Q`: the recipe engine's
/// codes, and the per-group inverse where the dequantize arithmetic is its
/// own.
fn fake_vector<Q: IntElement, T: Element>(
    k: &AffineKernel,
    b: BackendKind,
) -> Option<FakeVector<Q, T>> {
    let codes = AffineVector::<T>::new::<Q>(k, T::KIND, b)?;
    let dequantize = k
        .dequantize_is_math(T::KIND)
        .then(|| run_kernels::<Q, T>(b))
        .flatten()
        .map(|r| r.dequantize);
    Some(FakeVector { codes, dequantize })
}

/// The forward (values and mask; `dy` `None`) or the backward (`dy ·
/// mask` into `out`) of a problem whose views are contiguous along the last
/// dimension, by runs of at most [`CHUNK`] values sharing a parameter
/// through [`fake_run`].
#[allow(clippy::too_many_arguments)]
fn fake_rows<Q: IntElement, T: Element, TScale: Element>(
    stream: &Stream,
    layout: &NdLayout,
    (k, v): (&AffineKernel, &FakeVector<Q, T>),
    (x, dy): (&[T], Option<&[T]>),
    inputs: [[usize; MAX_RANK]; 2],
    (s, zp): (&[TScale], &ZeroPoints<'_>),
    out: Out<'_, T>,
    mask: Option<Out<'_, bool>>,
    range: (i32, i32),
) {
    walk_rows(stream, layout, inputs, out, mask, |row, ys, mut ms| {
        let mut bytes = [0u8; CHUNK];
        let mut scratch = [false; CHUNK];
        for_each_run(&row, ys.len(), CHUNK, |p, r| {
            let (z, zf) = zp.run_at(p, k);
            let xs = &x[row.input[0] + r.start..row.input[0] + r.end];
            let params = (s[p].to_f64(), z, zf);
            match dy {
                // The forward: values and mask.
                None => {
                    let m = ms.as_deref_mut().map(|m| &mut m[r.clone()]);
                    fake_run(
                        k,
                        Some(v),
                        xs,
                        params,
                        Some(&mut ys[r]),
                        m,
                        range,
                        &mut bytes,
                    );
                }
                // The backward: `dy · mask`.
                Some(dy) => {
                    let m = &mut scratch[..r.len()];
                    fake_run(
                        k,
                        Some(v),
                        xs,
                        params,
                        None,
                        Some(&mut *m),
                        range,
                        &mut bytes,
                    );
                    let dys = &dy[row.input[1] + r.start..row.input[1] + r.end];
                    for ((g, d), &m) in ys[r].iter_mut().zip(dys).zip(m.iter()) {
                        *g = masked(*d, m);
                    }
                }
            }
        });
    });
}

/// `dy · mask` as PyTorch computes it: a masked value times zero keeps the
/// sign of a zero and turns ±inf and NaN into NaN (canonical, as every
/// NaN the plans write). `store(inside ? d : d · 0)`, without the rounding
/// (`dy` is a value of `T`).
#[inline(always)]
fn masked<T: Element>(dy: T, inside: bool) -> T {
    let d = dy.to_f64();
    if d.is_nan() || (!inside && d.is_infinite()) {
        T::from_f64(f64::NAN)
    } else if inside {
        dy
    } else {
        T::from_f64(if d.is_sign_negative() { -0.0 } else { 0.0 })
    }
}

impl<T: Element> FakeKernels<T> {
    /// [`fake_rows`] with the plan's code type.
    #[allow(clippy::too_many_arguments)]
    fn rows<TScale: Element>(
        &self,
        stream: &Stream,
        layout: &NdLayout,
        k: &AffineKernel,
        xs: (&[T], Option<&[T]>),
        inputs: [[usize; MAX_RANK]; 2],
        params: (&[TScale], &ZeroPoints<'_>),
        (out, mask): (Out<'_, T>, Option<Out<'_, bool>>),
        range: (i32, i32),
    ) {
        match self {
            FakeKernels::I8(v) => {
                fake_rows(stream, layout, (k, v), xs, inputs, params, out, mask, range)
            }
            FakeKernels::U8(v) => {
                fake_rows(stream, layout, (k, v), xs, inputs, params, out, mask, range)
            }
        }
    }
}

/// Validation shared by the forward and the backward.
fn select_core<T: Element, TScale: Element>(
    plan: &'static str,
    op: QuantizeKind,
    stream: &Stream,
    desc: &FakeQuantizeAffineDescriptor,
    pref: PlanPreference,
) -> Result<(AffineCore, AffineKernel, Option<FakeKernels<T>>)> {
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
    let kernel = AffineKernel::new(desc.formula, T::KIND);
    let (lo, hi) = (desc.q_min, desc.q_max);
    let (backend, vector) = run_backend(plan, pref, |b| {
        if -128 <= lo && hi <= 127 {
            fake_vector::<i8, T>(&kernel, b).map(FakeKernels::I8)
        } else if 0 <= lo && hi <= 255 {
            fake_vector::<u8, T>(&kernel, b).map(FakeKernels::U8)
        } else {
            None
        }
    })?;
    let core =
        AffineCore::with_backend::<T>(plan, op, Some(TScale::KIND), layout, backend, stream)?;
    Ok((core, kernel, vector))
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
        let (core, kernel, vector) =
            select_core::<T, TScale>(PLAN, QuantizeKind::FakeQuantizeAffine, stream, desc, pref)?;
        Ok(FakeQuantizeAffinePlan {
            core,
            desc: *desc,
            kernel,
            vector,
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
        let mask_last = args.mask.as_ref().map_or(1, |m| last_stride(&m.stride));
        let out_last = last_stride(&args.output.stride);
        let mask = args.mask.map(|m| Out {
            stride: strides(&m.stride),
            data: m.data,
        });
        let inputs = [strides(&args.input.stride), [0; MAX_RANK]];
        let out = Out {
            data: args.output.data,
            stride: strides(&args.output.stride),
        };
        let layout = &self.core.layout;
        let lasts = [last_stride(&args.input.stride), out_last, mask_last];
        if let (Some(v), true) = (&self.vector, by_runs(layout, &lasts)) {
            let p = (s, &zp);
            v.rows(
                stream,
                layout,
                k,
                (x, None),
                inputs,
                p,
                (out, mask),
                (lo, hi),
            );
            return Ok(());
        }
        walk::<T, bool>(stream, layout, inputs, out, mask, |at, y, m| {
            let (z, zf) = zp.at(at.param, k);
            let (v, r) = k.fake(x[at.input[0]].to_f64(), s[at.param].to_f64(), z, zf, lo, hi);
            *y = store(v);
            *m = AffineKernel::inside(r, lo, hi, true);
        });
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
        let (core, kernel, vector) = select_core::<T, TScale>(
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
            vector,
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
        if let (Some(v), true) = (&self.vector, by_runs(layout, &lasts)) {
            let p = (s, &zp);
            v.rows(
                stream,
                layout,
                k,
                (x, Some(dy)),
                inputs,
                p,
                (out, None),
                (lo, hi),
            );
            return Ok(());
        }
        walk::<T, bool>(stream, layout, inputs, out, None, |at, g, _| {
            let (_, zf) = zp.at(at.param, k);
            let r = k.rounded(x[at.input[0]].to_f64(), s[at.param].to_f64(), zf, 0.0);
            *g = masked(dy[at.input[1]], AffineKernel::inside(r, lo, hi, true));
        });
        Ok(())
    }

    /// The descriptor the plan was selected for.
    pub fn descriptor(&self) -> &FakeQuantizeAffineDescriptor {
        &self.desc
    }

    plan_info_methods!();
}
