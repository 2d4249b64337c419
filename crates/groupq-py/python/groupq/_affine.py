"""The affine plans: per tensor, per channel (any axis), per token, per
group (any axis) and block granularities for arrays of any rank up to 8 and
any positive strides, with PyTorch's quantize / dequantize / fake-quantize
formulas bit for bit (README "The affine family")."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from . import (
    InvalidProblemError,
    UnsupportedError,
    _errors,
    _float_dtype,
    _float_kind,
    _native,
    _real,
    _span,
)

__all__ = [
    "quantize_affine",
    "dequantize_affine",
    "fake_quantize_affine",
    "fake_quantize_affine_backward",
    "quantize_per_token_dynamic",
    "affine_formulas",
]


def _strided(a: np.ndarray, kind: Optional[str] = None):
    """``(flat, shape, strides)``: a 1-D view from ``a``'s first element to
    its last and ``a``'s strides in elements, without a copy when every
    stride is a non-negative multiple of the item size (any permutation,
    slice or padding); a C-contiguous copy otherwise. f16/bf16 as uint16."""
    it = a.itemsize
    strides = [0 if d == 1 else s for d, s in zip(a.shape, a.strides)]
    if a.size == 0 or any(s < 0 or s % it for s in strides):
        a = np.ascontiguousarray(a)
        strides = [0 if d == 1 else s for d, s in zip(a.shape, a.strides)]
    el = [s // it for s in strides]
    span = 1 + sum((d - 1) * s for d, s in zip(a.shape, el)) if a.size else 0
    return _span(a, span, kind), list(a.shape), el


def _gran(ndim, granularity, axis, group_size, block_size):
    if granularity not in ("per_tensor", "per_channel", "per_token", "per_group", "blocks"):
        raise InvalidProblemError(
            f"granularity {granularity!r} is not per_tensor, per_channel, per_token, per_group or blocks"
        )
    if axis is not None:
        if not -max(ndim, 1) <= axis < max(ndim, 1):
            raise InvalidProblemError(f"axis {axis} is out of range for a rank-{ndim} array")
        axis %= max(ndim, 1)
    block = None if block_size is None else [int(b) for b in block_size]
    return (granularity, axis, None if group_size is None else int(group_size), block)


def _scale(scale) -> np.ndarray:
    s = _real(scale, "scale")
    if s.dtype != np.float64:
        s = s.astype(np.float32)  # exact for f16/bf16 scales
    return np.ascontiguousarray(s).reshape(-1)


def _zero_point(zero_point) -> Optional[np.ndarray]:
    if zero_point is None:
        return None
    z = _real(zero_point, "zero_point")
    if z.dtype.kind == "f" or z.dtype.name == "bfloat16":
        return np.ascontiguousarray(z, dtype=np.float32).reshape(-1)
    if z.dtype.kind not in "iu":
        raise UnsupportedError(f"zero_point: dtype {z.dtype.name} is neither integer nor float")
    zi = z.astype(np.int64)
    if zi.size and (zi.min() < -(2**31) or zi.max() >= 2**31):
        raise InvalidProblemError("zero_point has values outside int32")
    return np.ascontiguousarray(zi, dtype=np.int32).reshape(-1)


@_errors
def quantize_affine(
    x,
    scale,
    zero_point=None,
    *,
    granularity: str,
    q_min: int,
    q_max: int,
    axis: Optional[int] = None,
    group_size: Optional[int] = None,
    block_size: Optional[Sequence[int]] = None,
    formula: str = "spec",
    out_dtype=None,
    threads: Optional[int] = None,
) -> np.ndarray:
    """Codes of ``x`` with one scale and zero point per block of
    ``granularity``: ``"per_tensor"``, ``"per_channel"`` (``axis``),
    ``"per_token"`` (every index but the last), ``"per_group"`` (``axis``,
    ``group_size``), ``"blocks"`` (torchao's ``block_size``). ``scale`` and
    ``zero_point`` hold one value per block in row-major order of the
    parameter shape (float64 scales are kept, others read as float32;
    integer or float zero points, or none). ``formula``: one of
    :func:`affine_formulas` (``"torch-decomposed"`` is
    ``quantized_decomposed.quantize_per_tensor``/``_per_channel``,
    ``"torch-quantize-per-tensor"`` is ``torch.quantize_per_tensor``, ...)."""
    x = np.asarray(x)
    kind = _float_kind(x, "x")
    flat, shape, st = _strided(x, kind)
    if out_dtype is None:
        out_dtype = np.int8 if q_min < 0 else np.uint8
    q = _native.affine_quantize(
        flat, kind, shape, st, _scale(scale), _zero_point(zero_point),
        _gran(x.ndim, granularity, axis, group_size, block_size),
        (int(q_min), int(q_max)), formula, np.dtype(out_dtype).name, threads,
    )
    return q.reshape(x.shape)


@_errors
def dequantize_affine(
    q,
    scale,
    zero_point=None,
    *,
    granularity: str,
    axis: Optional[int] = None,
    group_size: Optional[int] = None,
    block_size: Optional[Sequence[int]] = None,
    formula: str = "spec",
    out_dtype=np.float32,
    threads: Optional[int] = None,
) -> np.ndarray:
    """``y = (q - z) * s`` in the formula's dequantize arithmetic (float32,
    float64 for the per-token and fake-quantize-per-channel formulas),
    stored as ``out_dtype``; arguments as :func:`quantize_affine`."""
    q = np.asarray(q)
    if q.dtype not in (np.int8, np.uint8):
        raise UnsupportedError(f"q: dtype {q.dtype.name} is not int8 or uint8")
    kind = np.dtype(out_dtype).name
    _float_dtype(kind)
    flat, shape, st = _strided(q)
    y = _native.affine_dequantize(
        flat, q.dtype.name, shape, st, _scale(scale), _zero_point(zero_point),
        _gran(q.ndim, granularity, axis, group_size, block_size), formula, kind, threads,
    )
    if kind in ("float16", "bfloat16"):
        y = y.view(_float_dtype(kind))
    return y.reshape(q.shape)


@_errors
def fake_quantize_affine(
    x,
    scale,
    zero_point=None,
    *,
    granularity: str,
    q_min: int,
    q_max: int,
    axis: Optional[int] = None,
    group_size: Optional[int] = None,
    block_size: Optional[Sequence[int]] = None,
    formula: str = "torch-fake-quantize-per-tensor",
    return_mask: bool = False,
    threads: Optional[int] = None,
):
    """Quantize then dequantize in one pass, as PyTorch's
    ``fake_quantize_per_tensor_affine`` / ``fake_quantize_per_channel_affine``
    (formulas ``"torch-fake-quantize-per-tensor"``,
    ``"torch-fake-quantize-per-channel"``, and
    ``"torch-fake-quantize-per-channel-float-zero-point"`` for float zero
    points) or ``quantized_decomposed.fake_quant_per_channel``
    (``"torch-decomposed-fake-quant"``). With ``return_mask`` also the
    straight-through mask (``q_min <= r <= q_max`` on the rounded value)."""
    x = np.asarray(x)
    kind = _float_kind(x, "x")
    flat, shape, st = _strided(x, kind)
    y, m = _native.affine_fake_quantize(
        flat, kind, shape, st, _scale(scale), _zero_point(zero_point),
        _gran(x.ndim, granularity, axis, group_size, block_size),
        (int(q_min), int(q_max)), formula, bool(return_mask), None, None, threads,
    )
    y = y.view(_float_dtype(kind)).reshape(x.shape) if kind in ("float16", "bfloat16") else y.reshape(x.shape)
    return (y, m.reshape(x.shape)) if return_mask else y


@_errors
def fake_quantize_affine_backward(
    grad_output,
    x,
    scale,
    zero_point=None,
    *,
    granularity: str,
    q_min: int,
    q_max: int,
    axis: Optional[int] = None,
    group_size: Optional[int] = None,
    block_size: Optional[Sequence[int]] = None,
    formula: str = "torch-fake-quantize-per-tensor",
    threads: Optional[int] = None,
) -> np.ndarray:
    """The gradient of :func:`fake_quantize_affine` with respect to ``x``:
    ``grad_output * mask`` (PyTorch's: a masked value times zero keeps the
    sign of a zero, and ±inf or NaN become NaN)."""
    x = np.asarray(x)
    kind = _float_kind(x, "x")
    dy = np.asarray(grad_output)
    if dy.dtype != x.dtype or dy.shape != x.shape:
        raise InvalidProblemError(
            f"grad_output ({dy.dtype.name} {dy.shape}) must match x ({x.dtype.name} {x.shape})"
        )
    flat, shape, st = _strided(x, kind)
    dflat, _, dst = _strided(dy, kind)
    g, _ = _native.affine_fake_quantize(
        flat, kind, shape, st, _scale(scale), _zero_point(zero_point),
        _gran(x.ndim, granularity, axis, group_size, block_size),
        (int(q_min), int(q_max)), formula, False, dflat, dst, threads,
    )
    return g.view(_float_dtype(kind)).reshape(x.shape) if kind in ("float16", "bfloat16") else g.reshape(x.shape)


@_errors
def quantize_per_token_dynamic(x, *, threads: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's ``choose_qparams_per_token_asymmetric`` (in ``x``'s dtype)
    then ``quantize_per_token`` (in float64), bit for bit: ``(codes int8,
    scale float64, zero_point int32)``, the parameters shaped
    ``x.shape[:-1] + (1,)``. A token holding NaN or ±inf gets a NaN scale
    and the zero point ``-2**31`` (PyTorch's is ``INT64_MIN``)."""
    x = np.asarray(x)
    kind = _float_kind(x, "x")
    flat, shape, st = _strided(x, kind)
    q, s, z = _native.affine_per_token_dynamic(flat, kind, shape, st, threads)
    pshape = x.shape[:-1] + (1,)
    return q.reshape(x.shape), s.reshape(pshape), z.reshape(pshape)


def affine_formulas() -> list:
    """The names ``formula=`` takes."""
    return list(_native.affine_formulas())
