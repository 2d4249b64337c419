"""The checkpoint packers of ``groupq::pack``: codes and zero points to the
int32 words (and ggml block bytes) that GPTQ, AWQ, compressed-tensors and
GGUF checkpoints store, and back. Shapes follow the checkpoints: codes are
``[n, k]`` (``n`` output features), zero points ``[n, g]``."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from . import InvalidProblemError, UnsupportedError, _errors, _native

__all__ = [
    "gptq_qweight",
    "gptq_qweight_unpack",
    "gptq_qzeros",
    "gptq_qzeros_unpack",
    "awq_qweight",
    "awq_qweight_unpack",
    "awq_qzeros",
    "awq_qzeros_unpack",
    "compressed_tensors_weight",
    "compressed_tensors_weight_unpack",
    "compressed_tensors_zero_point",
    "compressed_tensors_zero_point_unpack",
    "gguf_blocks",
    "gguf_blocks_unpack",
]


def _2d(a, dtype, name):
    """An integer array as a C-contiguous 2-D array of ``dtype``; values
    outside ``dtype`` are an error, not a wrap."""
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise UnsupportedError(f"{name}: dtype {a.dtype.name} is not an integer type")
    if a.ndim != 2:
        raise InvalidProblemError(f"{name} must be 2-D, got shape {a.shape}")
    info = np.iinfo(dtype)
    if a.size and (a.min() < info.min or a.max() > info.max):
        raise InvalidProblemError(f"{name} has values outside {np.dtype(dtype).name}")
    return np.ascontiguousarray(a, dtype=dtype)


def _check_bits(bits):
    if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise InvalidProblemError(f"bits must be 1 to 8, got {bits}")
    return int(bits)


def _words(name, data, dtype, n, k, bits, encoding="v2"):
    return _native.pack_words(name, data.reshape(-1).astype(dtype, copy=False), n, k, bits, encoding)


@_errors
def gptq_qweight(codes, bits: int = 4) -> np.ndarray:
    """GPTQ ``qweight``: uint8 codes ``[n, k]`` to int32 ``[k*bits/32, n]``."""
    bits = _check_bits(bits)
    c = _2d(codes, np.uint8, "codes")
    n, k = c.shape
    return _words("gptq_qweight", c, np.uint8, n, k, bits).reshape(k * bits // 32, n)


@_errors
def gptq_qweight_unpack(qweight, bits: int = 4) -> np.ndarray:
    """The inverse of :func:`gptq_qweight`: uint8 codes ``[n, k]``."""
    bits = _check_bits(bits)
    w = _2d(qweight, np.int32, "qweight")
    k, n = w.shape[0] * 32 // bits, w.shape[1]
    return _words("gptq_qweight_unpack", w, np.int32, n, k, bits).reshape(n, k)


@_errors
def gptq_qzeros(zeros, bits: int = 4, encoding: str = "v2") -> np.ndarray:
    """GPTQ ``qzeros``: zero points ``[n, g]`` to int32 ``[g, ceil(n*bits/32)]``
    in ``encoding``: ``"v2"`` (GPTQModel), ``"v1"`` (per-nibble readers),
    ``"v1-whole-word"`` (as GPTQModel writes v1), ``"v1-autogptq"``."""
    bits = _check_bits(bits)
    z = _2d(zeros, np.int32, "zeros")
    n, g = z.shape
    out = _words("gptq_qzeros", z, np.int32, n, g, bits, encoding)
    return out.reshape(g, -1)


@_errors
def gptq_qzeros_unpack(qzeros, n: int, bits: int = 4, encoding: str = "v2") -> np.ndarray:
    """The inverse of :func:`gptq_qzeros`: zero points ``[n, g]``."""
    bits = _check_bits(bits)
    w = _2d(qzeros, np.int32, "qzeros")
    g = w.shape[0]
    return _words("gptq_qzeros_unpack", w, np.int32, n, g, bits, encoding).reshape(n, g)


@_errors
def awq_qweight(codes, bits: int = 4) -> np.ndarray:
    """AWQ GEMM ``qweight``: uint8 codes ``[n, k]`` to int32 ``[k, n*bits/32]``."""
    bits = _check_bits(bits)
    c = _2d(codes, np.uint8, "codes")
    n, k = c.shape
    return _words("awq_qweight", c, np.uint8, n, k, bits).reshape(k, n * bits // 32)


@_errors
def awq_qweight_unpack(qweight, bits: int = 4) -> np.ndarray:
    """The inverse of :func:`awq_qweight`: uint8 codes ``[n, k]``."""
    bits = _check_bits(bits)
    w = _2d(qweight, np.int32, "qweight")
    k, n = w.shape[0], w.shape[1] * 32 // bits
    return _words("awq_qweight_unpack", w, np.int32, n, k, bits).reshape(n, k)


@_errors
def awq_qzeros(zeros, bits: int = 4) -> np.ndarray:
    """AWQ ``qzeros``: zero points ``[n, g]`` to int32 ``[g, n*bits/32]``."""
    bits = _check_bits(bits)
    z = _2d(zeros, np.int32, "zeros")
    n, g = z.shape
    return _words("awq_qzeros", z, np.int32, n, g, bits).reshape(g, n * bits // 32)


@_errors
def awq_qzeros_unpack(qzeros, bits: int = 4) -> np.ndarray:
    """The inverse of :func:`awq_qzeros`: zero points ``[n, g]``."""
    bits = _check_bits(bits)
    w = _2d(qzeros, np.int32, "qzeros")
    g, n = w.shape[0], w.shape[1] * 32 // bits
    return _words("awq_qzeros_unpack", w, np.int32, n, g, bits).reshape(n, g)


@_errors
def compressed_tensors_weight(codes, bits: int = 4) -> np.ndarray:
    """compressed-tensors ``weight_packed``: int8 codes ``[n, k]`` to int32
    ``[n, ceil(k*bits/32)]``."""
    bits = _check_bits(bits)
    c = _2d(codes, np.int8, "codes")
    n, k = c.shape
    return _words("compressed_tensors_weight", c, np.int8, n, k, bits).reshape(n, -1)


@_errors
def compressed_tensors_weight_unpack(weight_packed, k: int, bits: int = 4) -> np.ndarray:
    """The inverse of :func:`compressed_tensors_weight`: int8 codes ``[n, k]``."""
    bits = _check_bits(bits)
    w = _2d(weight_packed, np.int32, "weight_packed")
    n = w.shape[0]
    return _words("compressed_tensors_weight_unpack", w, np.int32, n, k, bits).reshape(n, k)


@_errors
def compressed_tensors_zero_point(zeros, bits: int = 4) -> np.ndarray:
    """compressed-tensors ``weight_zero_point``: zero points ``[n, g]`` to
    int32 ``[ceil(n*bits/32), g]``."""
    bits = _check_bits(bits)
    z = _2d(zeros, np.int32, "zeros")
    n, g = z.shape
    return _words("compressed_tensors_zero_point", z, np.int32, n, g, bits).reshape(-1, g)


@_errors
def compressed_tensors_zero_point_unpack(packed, n: int, bits: int = 4) -> np.ndarray:
    """The inverse of :func:`compressed_tensors_zero_point`: ``[n, g]``."""
    bits = _check_bits(bits)
    w = _2d(packed, np.int32, "packed")
    g = w.shape[1]
    return _words("compressed_tensors_zero_point_unpack", w, np.int32, n, g, bits).reshape(n, g)


def _f16_bits(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
        raise UnsupportedError(f"block scales: dtype {a.dtype.name} is not a float type")
    return np.ascontiguousarray(a.astype(np.float16).reshape(-1)).view(np.uint16)


@_errors
def gguf_blocks(kind: str, codes, d, m=None) -> np.ndarray:
    """ggml blocks (``"q8_0"``, ``"q4_0"``, ``"q4_1"``, ``"q5_0"``, ``"q5_1"``):
    codes in element order (a multiple of 32), one float16 ``d`` (and ``m``
    for q4_1/q5_1) per block of 32, to the bytes gguf stores (uint8)."""
    c = np.asarray(codes)
    if c.dtype.kind not in "iu":
        raise UnsupportedError(f"codes: dtype {c.dtype.name} is not an integer type")
    c = np.ascontiguousarray(c.reshape(-1), dtype=np.int32)
    mb = None if m is None else _f16_bits(m)
    return _native.gguf_blocks(kind, c, _f16_bits(d), mb)


@_errors
def gguf_blocks_unpack(kind: str, data) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """The inverse of :func:`gguf_blocks`: ``(codes, d, m)`` (``m`` None for
    the types without one), ``d`` and ``m`` float16."""
    b = np.ascontiguousarray(np.asarray(data).reshape(-1).view(np.uint8))
    q, d, m = _native.gguf_blocks_unpack(kind, b)
    return q, d.view(np.float16), None if m is None else m.view(np.float16)
