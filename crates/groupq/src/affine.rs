//! The vocabulary of the affine family: quantization of an N-D tensor
//! (rank ≤ [`MAX_RANK`]) with one scale and zero point per *block*, where a
//! block is a box of `block[d]` consecutive indices along every dimension
//! `d` (torchao's `block_size`). Per-tensor, per-channel (any axis),
//! per-token and per-group along any axis are the [`Granularity`] names of
//! the common block shapes.
//!
//! ```
//! use groupq::affine::{Granularity, Shape};
//! let shape = Shape::new(&[4, 6, 8])?;
//! // One parameter per index of axis 1: params of shape [1, 6, 1].
//! let g = Granularity::PerChannel { axis: 1 };
//! assert_eq!(g.block(&shape)?.dims(), &[4, 1, 8]);
//! assert_eq!(g.param_shape(&shape)?.dims(), &[1, 6, 1]);
//! // GPTQ's [K, N] layout: groups of 32 down the columns.
//! let w = Shape::new(&[128, 64])?;
//! let g = Granularity::PerGroup { axis: 0, group_size: 32 };
//! assert_eq!(g.param_shape(&w)?.dims(), &[4, 64]);
//! # Ok::<(), groupq::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::recipe::{Arithmetic, QuantizeFormula, Rounding, ScaleApplication, ZeroPointStage};

/// The largest rank the affine plans take.
pub const MAX_RANK: usize = 8;

/// The dimensions of a tensor of rank 0 to [`MAX_RANK`], as plain data
/// (`Copy`, `Eq`, `Hash`), so that descriptors can hold it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    rank: usize,
    dims: [usize; MAX_RANK],
}

impl Shape {
    /// A shape of `dims.len()` dimensions; more than [`MAX_RANK`] is
    /// `InvalidProblem`.
    pub fn new(dims: &[usize]) -> Result<Shape> {
        if dims.len() > MAX_RANK {
            return Err(Error::InvalidProblem(format!(
                "shape {dims:?} has rank {}, more than the affine plans take ({MAX_RANK})",
                dims.len()
            )));
        }
        let mut d = [1; MAX_RANK];
        d[..dims.len()].copy_from_slice(dims);
        Ok(Shape {
            rank: dims.len(),
            dims: d,
        })
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank]
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of elements, `None` when it overflows `usize`.
    pub fn numel(&self) -> Option<usize> {
        self.dims()
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
    }
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

/// Which elements share a scale and zero point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Granularity {
    /// One scale and zero point for the whole tensor.
    PerTensor,
    /// One per index of `axis` (PyTorch's per-channel ops).
    PerChannel {
        /// The channel axis.
        axis: usize,
    },
    /// One per index of all dimensions but the last (PyTorch's per-token
    /// ops: each row of the last axis is a token).
    PerToken,
    /// Groups of `group_size` consecutive indices along `axis`, one per
    /// index of every other dimension (`axis` = last: the per-group plans'
    /// layout; `axis` = 0 on a `[K, N]` weight: GPTQ's groups down the
    /// columns).
    PerGroup {
        /// The grouped axis.
        axis: usize,
        /// Indices per group along `axis`; must divide its length.
        group_size: usize,
    },
    /// Any block shape: `block[d]` consecutive indices along dimension `d`
    /// share a parameter (torchao's `block_size`); each must divide its
    /// dimension. Only the first `rank` entries are read.
    Blocks([usize; MAX_RANK]),
}

impl Granularity {
    /// The block of elements that share one parameter, for a tensor of
    /// `shape`. An axis out of range, a zero group size, a group size that
    /// does not divide its axis, or a block that does not divide the shape
    /// is `InvalidProblem`.
    pub fn block(&self, shape: &Shape) -> Result<Shape> {
        let r = shape.rank();
        let dims = shape.dims();
        let check_axis = |axis: usize| {
            if axis >= r {
                Err(Error::InvalidProblem(format!(
                    "axis {axis} is out of range for shape {dims:?} (rank {r})"
                )))
            } else {
                Ok(())
            }
        };
        let mut b = [1usize; MAX_RANK];
        match *self {
            Granularity::PerTensor => b[..r].copy_from_slice(dims),
            Granularity::PerChannel { axis } => {
                check_axis(axis)?;
                b[..r].copy_from_slice(dims);
                b[axis] = 1;
            }
            Granularity::PerToken => {
                if r == 0 {
                    return Err(Error::InvalidProblem(
                        "PerToken needs a rank of at least 1 (the last axis is the token)".into(),
                    ));
                }
                b[r - 1] = dims[r - 1];
            }
            Granularity::PerGroup { axis, group_size } => {
                check_axis(axis)?;
                if group_size == 0 || !dims[axis].is_multiple_of(group_size) {
                    return Err(Error::InvalidProblem(format!(
                        "group_size {group_size} does not divide axis {axis} of length {} (shape {dims:?})",
                        dims[axis]
                    )));
                }
                b[axis] = group_size;
            }
            Granularity::Blocks(block) => {
                for d in 0..r {
                    if block[d] == 0 || !dims[d].is_multiple_of(block[d]) {
                        return Err(Error::InvalidProblem(format!(
                            "block {:?} does not divide shape {dims:?} (dimension {d}: {} into {})",
                            &block[..r],
                            block[d],
                            dims[d]
                        )));
                    }
                }
                b[..r].copy_from_slice(&block[..r]);
            }
        }
        Shape::new(&b[..r])
    }

    /// The shape of the scale and zero-point arrays: `shape / block` per
    /// dimension; a dimension that one parameter spans whole counts 1, even
    /// when it is empty (an empty per-channel tensor still has its
    /// channels' parameters).
    pub fn param_shape(&self, shape: &Shape) -> Result<Shape> {
        let block = self.block(shape)?;
        let p: Vec<usize> = shape
            .dims()
            .iter()
            .zip(block.dims())
            .map(|(&d, &b)| if b == d { 1 } else { d / b })
            .collect();
        Shape::new(&p)
    }
}

/// What a zero (or NaN-free but zero) scale does to the quantized value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZeroScale {
    /// SPEC §3.1: `v = 0` where `s == 0` (the code is `clamp(round(z))`).
    Zero,
    /// IEEE arithmetic: `x / 0` or `x · (1/0)` is ±inf, and `0 · inf` is NaN
    /// (PyTorch's ops, which multiply by `1/s` unconditionally).
    Ieee,
}

/// How the rounded, unclamped value `r` becomes an integer code in
/// `[q_min, q_max]`. The C++ casts PyTorch relies on are undefined
/// behaviour for NaN, infinities and out-of-range values; each variant
/// names the x86-64 result PyTorch 2.15 gives, which groupq reproduces on
/// every machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CodeConversion {
    /// SPEC §3.1: NaN → 0, then saturate into `[q_min, q_max]` (±inf and
    /// huge values to the nearer end).
    Saturate,
    /// `torch.clamp(r, q_min, q_max).to(dtype)`: values saturate, and NaN
    /// passes the clamp and casts to 0, **even where 0 is outside
    /// `[q_min, q_max]`** (PyTorch's `quantized_decomposed` quantize ops,
    /// `torch.quantize_per_channel`, the per-token ops).
    CastAfterClamp,
    /// `fmin(fmax(r, q_min), q_max)`: NaN → `q_min`, ±inf saturate
    /// (`torch.fake_quantize_per_tensor_affine`).
    NanToMin,
    /// `static_cast<int64_t>(r)` then the clamp: NaN, ±inf and `|r| ≥ 2^63`
    /// become `INT64_MIN`, so `q_min` (`torch.fake_quantize_per_channel_affine`,
    /// both zero-point branches).
    Int64Cast,
    /// FBGEMM's `Quantize` (`torch.quantize_per_tensor`): the rounded
    /// `x · (1/s)` (before the zero point) is `min`-ed with 2147483520
    /// (NaN becomes 2147483520), converted to i32 (−inf and values below
    /// −2^31 give `i32::MIN`), the zero point is added with **i32
    /// wrap-around**, then the clamp. Needs the zero point after rounding.
    Fbgemm,
    /// As `CastAfterClamp` for codes; a fake-quantize output keeps NaN
    /// (`quantized_decomposed.fake_quant_per_channel`, whose `torch.clamp`
    /// passes NaN through).
    NanPropagates,
}

/// Every numerical choice of an affine quantize: the per-group
/// [`QuantizeFormula`] (scale application, zero-point stage, rounding,
/// arithmetic) plus what a zero scale does and how a value becomes a code.
/// Presets reproduce PyTorch's ops bit for bit; [`AffineFormula::SPEC`] is
/// SPEC §3.1's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AffineFormula {
    /// Division or reciprocal, zero-point stage, rounding, arithmetic.
    pub quantize: QuantizeFormula,
    /// A zero scale.
    pub zero_scale: ZeroScale,
    /// NaN, infinities and out-of-range values.
    pub conversion: CodeConversion,
    /// The scale is rounded to the arithmetic's dtype before anything else
    /// (`1.0f / (float)scale` of a double scale); otherwise `1/s` is taken
    /// from the scale as given and then rounded (`quantized_decomposed`'s
    /// Python `1.0 / scale`).
    pub scale_to_arithmetic: bool,
    /// The dtype a fake-quantize or dequantize product `(q − z) · s` is
    /// computed in before it is stored in the output's dtype.
    pub dequantize_arithmetic: Arithmetic,
}

const TORCH: QuantizeFormula = QuantizeFormula {
    scale_application: ScaleApplication::ReciprocalMultiply,
    zero_point_stage: ZeroPointStage::AfterRounding,
    rounding: Rounding::TiesEven,
    arithmetic: Arithmetic::Math,
};

impl AffineFormula {
    /// SPEC §3.1 and §3.2: `clamp(rne(x / s + z))` in the math type (f32,
    /// f64 for f64), a zero scale gives `v = 0`, NaN → 0; `M(q − z) · s`.
    pub const SPEC: AffineFormula = AffineFormula {
        quantize: QuantizeFormula::SPEC,
        zero_scale: ZeroScale::Zero,
        conversion: CodeConversion::Saturate,
        scale_to_arithmetic: false,
        dequantize_arithmetic: Arithmetic::Math,
    };

    /// `torch.ops.quantized_decomposed.quantize_per_tensor` /
    /// `quantize_per_channel` (and their dequantize): f16/bf16 widened to
    /// f32, `clamp(rne(fl32(x · fl32(1/s))) + z)`, the zero point after
    /// rounding, a zero or subnormal scale by IEEE rules (`0 · inf` = NaN →
    /// code 0, unclamped); `torch.quantize_per_channel` computes the same
    /// codes.
    pub const TORCH_DECOMPOSED: AffineFormula = AffineFormula {
        quantize: TORCH,
        zero_scale: ZeroScale::Ieee,
        conversion: CodeConversion::CastAfterClamp,
        scale_to_arithmetic: false,
        dequantize_arithmetic: Arithmetic::Math,
    };

    /// `torch.quantize_per_tensor` (FBGEMM): as
    /// [`TORCH_DECOMPOSED`](Self::TORCH_DECOMPOSED) with FBGEMM's
    /// conversion ([`CodeConversion::Fbgemm`]: NaN acts as +inf, and the
    /// i32 zero-point add wraps).
    pub const TORCH_QUANTIZE_PER_TENSOR: AffineFormula = AffineFormula {
        quantize: TORCH,
        zero_scale: ZeroScale::Ieee,
        conversion: CodeConversion::Fbgemm,
        scale_to_arithmetic: true,
        dequantize_arithmetic: Arithmetic::Math,
    };

    /// `torch.fake_quantize_per_tensor_affine`: `z + nearbyint(x · inv)`
    /// with `inv = 1.0f / (float)s`, clamped with `fmin`/`fmax` (NaN →
    /// `q_min`), output `(q − z) · s` in f32 stored in the input's dtype.
    pub const TORCH_FAKE_QUANTIZE_PER_TENSOR: AffineFormula = AffineFormula {
        quantize: TORCH,
        zero_scale: ZeroScale::Ieee,
        conversion: CodeConversion::NanToMin,
        scale_to_arithmetic: true,
        dequantize_arithmetic: Arithmetic::Math,
    };

    /// `torch.fake_quantize_per_channel_affine` with integer zero points:
    /// as per-tensor but the rounded value is cast to int64 first (NaN,
    /// ±inf and huge values → `q_min`).
    pub const TORCH_FAKE_QUANTIZE_PER_CHANNEL: AffineFormula = AffineFormula {
        quantize: TORCH,
        zero_scale: ZeroScale::Ieee,
        conversion: CodeConversion::Int64Cast,
        scale_to_arithmetic: true,
        dequantize_arithmetic: Arithmetic::F64,
    };

    /// `torch.fake_quantize_per_channel_affine` with float zero points:
    /// `lrintf(z + x · inv)`, the product and the zero point rounded once
    /// (an FMA, as the x86-64 build computes it), output
    /// `((q − z) · s)` in f64, stored through f32.
    pub const TORCH_FAKE_QUANTIZE_PER_CHANNEL_FLOAT_ZERO_POINT: AffineFormula = AffineFormula {
        quantize: QuantizeFormula {
            scale_application: ScaleApplication::ReciprocalMultiplyFused,
            zero_point_stage: ZeroPointStage::BeforeRounding,
            rounding: Rounding::TiesEven,
            arithmetic: Arithmetic::Math,
        },
        zero_scale: ZeroScale::Ieee,
        conversion: CodeConversion::Int64Cast,
        scale_to_arithmetic: true,
        dequantize_arithmetic: Arithmetic::F64,
    };

    /// `torch.ops.quantized_decomposed.fake_quant_per_channel`:
    /// `rne(fl32(x · fl32(1/s))) + z`, clamped with NaN kept, output
    /// `fl32((q − z) · s)`.
    pub const TORCH_DECOMPOSED_FAKE_QUANT: AffineFormula = AffineFormula {
        quantize: TORCH,
        zero_scale: ZeroScale::Ieee,
        conversion: CodeConversion::NanPropagates,
        scale_to_arithmetic: false,
        dequantize_arithmetic: Arithmetic::Math,
    };

    /// `torch.ops.quantized_decomposed.quantize_per_token` /
    /// `dequantize_per_token` with the float64 scales that
    /// `choose_qparams_per_token_asymmetric` returns: `x · (1/s) + z`
    /// rounded half to even, all in f64 (type promotion), then clamped;
    /// `((q − z) · s)` in f64.
    pub const TORCH_PER_TOKEN: AffineFormula = AffineFormula {
        quantize: QuantizeFormula {
            scale_application: ScaleApplication::ReciprocalMultiply,
            zero_point_stage: ZeroPointStage::BeforeRounding,
            rounding: Rounding::TiesEven,
            arithmetic: Arithmetic::F64,
        },
        zero_scale: ZeroScale::Ieee,
        conversion: CodeConversion::CastAfterClamp,
        scale_to_arithmetic: false,
        dequantize_arithmetic: Arithmetic::F64,
    };

    /// The same ops with `scale.float()` and `zp.int()` (the
    /// documented float32 / int32 parameters): the arithmetic is f32.
    pub const TORCH_PER_TOKEN_F32: AffineFormula = AffineFormula {
        quantize: QuantizeFormula {
            scale_application: ScaleApplication::ReciprocalMultiply,
            zero_point_stage: ZeroPointStage::BeforeRounding,
            rounding: Rounding::TiesEven,
            arithmetic: Arithmetic::Math,
        },
        zero_scale: ZeroScale::Ieee,
        conversion: CodeConversion::CastAfterClamp,
        scale_to_arithmetic: false,
        dequantize_arithmetic: Arithmetic::Math,
    };

    /// A per-group [`QuantizeFormula`] with SPEC's zero-scale and
    /// conversion rules (the recipes' quantize step).
    pub const fn from_quantize(quantize: QuantizeFormula) -> AffineFormula {
        AffineFormula {
            quantize,
            zero_scale: ZeroScale::Zero,
            conversion: CodeConversion::Saturate,
            scale_to_arithmetic: false,
            dequantize_arithmetic: Arithmetic::Math,
        }
    }
}

impl Default for AffineFormula {
    fn default() -> Self {
        AffineFormula::SPEC
    }
}
