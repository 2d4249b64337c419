"""groupq: group-wise integer quantization, bit for bit with the peers.

numpy arrays in and out; float32, float64, float16, and bfloat16 through
``ml_dtypes``. The kernels run in Rust with the GIL released, on every core
by default (``threads=`` chooses). Errors are :class:`groupq.Error`
subclasses carrying the library's messages.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np

from . import _native

__all__ = [
    "Error",
    "InvalidProblemError",
    "UnsupportedError",
    "BufferTooSmallError",
    "quantize_per_group",
    "dequantize_per_group",
    "quantize_dynamic",
    "presets",
    "quantize_checkpoint",
    "gguf_quantize",
    "gguf_dequantize",
    "gguf_types",
    "quantize_affine",
    "dequantize_affine",
    "fake_quantize_affine",
    "fake_quantize_affine_backward",
    "quantize_per_token_dynamic",
    "affine_formulas",
    "pack",
]


class Error(Exception):
    """Every error groupq raises."""


class InvalidProblemError(Error, ValueError):
    """A shape, group size, code range or parameter that does not fit."""


class UnsupportedError(Error, TypeError):
    """A dtype or combination the library does not implement."""


class BufferTooSmallError(Error, ValueError):
    """An array shorter than the problem needs."""


_KINDS = {
    "invalid": InvalidProblemError,
    "unsupported": UnsupportedError,
    "buffer": BufferTooSmallError,
}


def _errors(f):
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except _native.GroupqError as e:
            kind, message = e.args
            raise _KINDS.get(kind, Error)(message) from None

    return wrapper


def _bfloat16():
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - bf16 arrays need ml_dtypes
        return None
    return np.dtype(ml_dtypes.bfloat16)


_FLOATS = ("float32", "float64", "float16", "bfloat16")


def _float_kind(a: np.ndarray, name: str) -> str:
    kind = a.dtype.name
    if kind not in _FLOATS:
        raise UnsupportedError(f"{name}: dtype {kind} is not float32, float64, float16 or bfloat16")
    return kind


def _float_dtype(kind: str) -> np.dtype:
    if kind == "bfloat16":
        bf = _bfloat16()
        if bf is None:
            raise UnsupportedError("bfloat16 needs the ml_dtypes package (pip install ml_dtypes)")
        return bf
    if kind not in _FLOATS:
        raise UnsupportedError(f"dtype {kind} is not float32, float64, float16 or bfloat16")
    return np.dtype(kind)


def _flat(a: np.ndarray, kind: Optional[str] = None) -> np.ndarray:
    """A flat C-contiguous view (a copy only for a non-contiguous array);
    f16/bf16 as their uint16 bits."""
    a = np.ascontiguousarray(a).reshape(-1)
    if kind in ("float16", "bfloat16"):
        return a.view(np.uint16)
    return a


def _span(a: np.ndarray, span: int, kind: Optional[str] = None) -> np.ndarray:
    """The ``span`` elements of memory from ``a``'s first element on, as a
    read-only 1-D view (no copy; the caller computes ``span`` from ``a``'s
    own non-negative strides, so it stays inside ``a``'s buffer); f16/bf16
    as their uint16 bits."""
    flat = np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(a.itemsize,), writeable=False)
    return flat.view(np.uint16) if kind in ("float16", "bfloat16") else flat


def _per_group_params(ng: int, **params: np.ndarray) -> None:
    """Each parameter array holds one value per group."""
    for name, a in params.items():
        if a.size != ng:
            raise InvalidProblemError(f"{name} has {a.size} elements; {ng} groups need one each")


def _rows(a: np.ndarray, kind: Optional[str] = None) -> Tuple[np.ndarray, int]:
    """``a`` as rows of its last axis: ``(flat, row_stride)``, ``flat`` a
    1-D view from ``a``'s first element to its last (f16/bf16 as uint16
    bits) and ``row_stride`` in elements. Without a copy when the last axis
    is contiguous and the rows are evenly spaced in increasing order (C
    order, a slice of columns, every other row, ...); otherwise a
    C-contiguous copy."""
    k, it = a.shape[-1], a.itemsize
    outer = int(np.prod(a.shape[:-1], dtype=np.int64))
    lead = [(s, d) for s, d in zip(a.strides[:-1], a.shape[:-1]) if d > 1]
    ok = a.size > 0 and (k <= 1 or a.strides[-1] == it)
    rs = lead[-1][0] if lead else k * it
    for (s_out, _), (s_in, d_in) in zip(lead[:-1], lead[1:]):
        ok = ok and s_out == s_in * d_in
    ok = ok and rs > 0 and rs % it == 0 and rs // it >= k
    if a.flags.c_contiguous or not ok:
        return _flat(a, kind), k
    return _span(a, (outer - 1) * (rs // it) + k, kind), rs // it


def _from_bits(a: np.ndarray, kind: str) -> np.ndarray:
    if kind in ("float16", "bfloat16"):
        return a.view(_float_dtype(kind))
    return a


def _real(a, name: str) -> np.ndarray:
    """A parameter array of real numbers (integers or floats; not complex,
    bool, strings or objects)."""
    a = np.asarray(a)
    if a.dtype.kind not in "fiu" and a.dtype.name != "bfloat16":
        raise UnsupportedError(f"{name}: dtype {a.dtype.name} is not a real number type")
    return a


def _int32(a, name: str) -> np.ndarray:
    """Integer zero points as int32: an integer array, or a float one whose
    values are all integers (GPTQ's and AWQ's float zero points); values
    outside int32 or with a fraction are an error."""
    a = _real(a, name)
    if a.dtype.kind not in "iu":
        f = a.astype(np.float64)
        if not np.array_equal(f, np.rint(f)):
            raise InvalidProblemError(f"{name} has values that are not integers (or NaN)")
        a = f
    if a.size and (a.min() < -(2**31) or a.max() >= 2**31):
        raise InvalidProblemError(f"{name} has values outside int32")
    return a.astype(np.int32, copy=False)


def _dims(x: np.ndarray, group_size: int) -> Tuple[int, int, int]:
    if x.ndim == 0:
        raise InvalidProblemError("x must have at least one dimension (groups run along the last)")
    axis = x.shape[-1]
    outer = int(np.prod(x.shape[:-1], dtype=np.int64)) if x.ndim > 1 else 1
    if group_size == -1:
        group_size = axis  # one group per row (GPTQ's and torchao's -1)
    if not isinstance(group_size, (int, np.integer)) or group_size <= 0:
        raise InvalidProblemError(f"group_size must be positive (or -1 for whole rows), got {group_size}")
    if axis % group_size != 0:
        raise InvalidProblemError(
            f"group_size {group_size} does not divide the last dimension {axis} of shape {x.shape}"
        )
    return outer, axis, group_size


@_errors
def quantize_per_group(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray,
    *,
    group_size: int,
    q_min: int,
    q_max: int,
    out_dtype=None,
    formula: str = "spec",
    threads: Optional[int] = None,
) -> np.ndarray:
    """SPEC §3.1: ``q = clamp(round_half_even(x / s + z), q_min, q_max)`` per
    group of ``group_size`` consecutive elements of the last axis.
    ``formula="torch-per-channel-group"`` computes PyTorch's
    ``quantized_decomposed.quantize_per_channel_group`` instead
    (``x * (1/s)`` in f32, the zero point added before rounding).

    ``scale`` and ``zero_point`` hold one value per group (shape
    ``x.shape[:-1] + (x.shape[-1] // group_size,)``, or flat); ``scale`` is
    cast to ``x``'s dtype, ``zero_point`` to int32. ``out_dtype`` is
    ``np.int8`` or ``np.uint8`` (default: int8 when ``q_min < 0``).
    """
    x = np.asarray(x)
    kind = _float_kind(x, "x")
    outer, axis, g = _dims(x, group_size)
    ng = outer * (axis // g)
    scale = _real(scale, "scale").astype(x.dtype)
    zero_point = _int32(zero_point, "zero_point")
    _per_group_params(ng, scale=scale, zero_point=zero_point)
    if out_dtype is None:
        out_dtype = np.int8 if q_min < 0 else np.uint8
    out = np.dtype(out_dtype).name
    xs, rs = _rows(x, kind)
    q = _native.quantize_per_group(
        xs,
        kind,
        _flat(scale, kind),
        _flat(zero_point),
        (outer, axis, g, rs),
        (int(q_min), int(q_max)),
        out,
        formula,
        threads,
    )
    return q.reshape(x.shape)


@_errors
def dequantize_per_group(
    q: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray,
    *,
    group_size: int,
    out_dtype=np.float32,
    threads: Optional[int] = None,
) -> np.ndarray:
    """SPEC §3.2: ``y = (q - z) * s`` in float32 (float64 for float64
    output) per group, rounded once to ``out_dtype``. ``q`` is int8 or
    uint8; ``scale`` is cast to ``out_dtype``."""
    q = np.asarray(q)
    if q.dtype not in (np.int8, np.uint8):
        raise UnsupportedError(f"q: dtype {q.dtype.name} is not int8 or uint8")
    kind = np.dtype(out_dtype).name
    out_dt = _float_dtype(kind)
    outer, axis, g = _dims(q, group_size)
    ng = outer * (axis // g)
    scale = _real(scale, "scale").astype(out_dt, copy=False)
    zero_point = _int32(zero_point, "zero_point")
    _per_group_params(ng, scale=scale, zero_point=zero_point)
    qs, rs = _rows(q)
    y = _native.dequantize_per_group(
        qs,
        q.dtype.name,
        _flat(scale, kind),
        _flat(zero_point),
        (outer, axis, g, rs),
        kind,
        threads,
    )
    return _from_bits(y, kind).reshape(q.shape)


_FIXED_BITS = {
    "torch-per-token": 8,
    "gguf-q8_0": 8,
    "gguf-q4_0": 4,
    "gguf-q4_0-fused": 4,
    "gguf-q4_1": 4,
    "gguf-q5_0": 5,
    "gguf-q5_0-fused": 5,
    "gguf-q5_1": 5,
}


def _preset_bits(preset: str, bits: Optional[int]) -> int:
    """``bits``, or the preset's own width (4 where it has a choice)."""
    if bits is None:
        return _FIXED_BITS.get(preset, 4)
    return int(bits)


@_errors
def quantize_dynamic(
    x: np.ndarray,
    *,
    preset: str,
    group_size: int,
    bits: Optional[int] = None,
    symmetric: bool = True,
    offset: bool = False,
    q_min: Optional[int] = None,
    q_max: Optional[int] = None,
    threads: Optional[int] = None,
):
    """Chooses a scale and zero point per group as ``preset``'s peer does,
    then quantizes: returns ``(codes, scale, zero_point)`` with the peer's
    codes (int8 for signed presets, uint8 for unsigned ones), scales in the
    peer's dtype and int32 zero points, shaped ``x.shape`` and
    ``x.shape[:-1] + (groups,)``.

    ``bits`` defaults to the preset's width: 4 where the preset has a
    choice, 8 for ``torch-per-token`` and ``gguf-q8_0``, 5 for the q5 types.
    ``group_size=-1`` is one group per row.

    Presets (``presets()``): ``"torchao"`` (``choose_qparams_affine`` +
    ``quantize_affine``; symmetric int``bits`` or asymmetric uint``bits``),
    ``"compressed-tensors"`` (W4A16, 4 bits), ``"gptq"`` (RTN, f32 scales),
    ``"awq"``, ``"awq-f16"``, ``"torch-per-token"`` (int8, asymmetric),
    ``"gguf-q8_0"``, ``"gguf-q4_0"``, ``"gguf-q5_0"`` (group size 32), and
    ``"gguf-q4_1"``, ``"gguf-q5_1"``, whose groups also have a float offset
    (ggml's ``m``, ``x ≈ d·q + m``): those need ``offset=True`` and return
    ``(codes, scale, zero_point, offset)``. torchao's codes are int8 for 8
    bits, int1–int7 symmetric and uint1–uint7 asymmetric below, or the
    8-bit range ``q_min..=q_max`` given (torchao's ``quant_min``/``quant_max``;
    the other presets refuse one). ``"gguf-q4_0-fused"`` and
    ``"gguf-q5_0-fused"`` are gguf-py 0.17's form (``x * id + 8.5`` rounded
    once). Presets with one mapping ignore ``symmetric``.
    """
    x = np.asarray(x)
    kind = _float_kind(x, "x")
    outer, axis, g = _dims(x, group_size)
    xs, rs = _rows(x, kind)
    if (q_min is None) != (q_max is None):
        raise InvalidProblemError("give both q_min and q_max, or neither")
    rng = None if q_min is None else (int(q_min), int(q_max))
    q, s, z, s_kind, m = _native.quantize_dynamic(
        xs, kind, preset, (outer, axis, g, rs), _preset_bits(preset, bits), bool(symmetric), bool(offset), rng, threads
    )
    pshape = x.shape[:-1] + (axis // g,)
    out = (q.reshape(x.shape), _from_bits(s, s_kind).reshape(pshape), z.reshape(pshape))
    if m is not None:
        out += (_from_bits(m, s_kind).reshape(pshape),)
    return out


def gguf_types() -> list:
    """The ggml block types :func:`gguf_quantize` writes (llama.cpp's
    names: ``q4_0`` … ``q8_0``, ``q2_K`` … ``q6_K``, ``iq4_nl``, ``iq4_xs``)."""
    return list(_native.ggml_types())


@_errors
def gguf_quantize(
    x: np.ndarray, type: str, *, imatrix: Optional[np.ndarray] = None, threads: Optional[int] = None
) -> np.ndarray:
    """llama.cpp's ``ggml_quantize_chunk``, byte for byte: the rows of ``x``
    (its last axis a multiple of the type's block size; float16/bfloat16/
    float64 values are widened or rounded to float32 first, as llama.cpp
    converts them) to ggml blocks, ``uint8`` of shape ``x.shape[:-1] +
    (bytes_per_row,)``. ``imatrix``: llama-imatrix's importance weights for
    one row (``x.shape[-1]`` positive float32 values)."""
    x = np.asarray(x)
    _float_kind(x, "x")
    if x.ndim == 0:
        raise InvalidProblemError("x must have at least one dimension")
    n = x.shape[-1]
    rows = int(np.prod(x.shape[:-1], dtype=np.int64)) if x.ndim > 1 else 1
    block, size = _native.ggml_type_info(type)
    if n % block != 0:
        raise InvalidProblemError(f"{type}: rows of {n} values are not whole blocks of {block}")
    xs = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    im = None
    if imatrix is not None:
        im = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
        if im.size != n:
            raise InvalidProblemError(f"imatrix has {im.size} values; rows have {n}")
    out = _native.ggml_quantize(xs, rows, n, type, im, threads)
    return out.reshape(x.shape[:-1] + (n // block * size,))


@_errors
def gguf_dequantize(blocks: np.ndarray, type: str, *, threads: Optional[int] = None) -> np.ndarray:
    """The inverse of :func:`gguf_quantize`: ggml blocks (``uint8``, rows of
    ``bytes_per_row``) to float32 rows."""
    b = np.asarray(blocks)
    if b.dtype != np.uint8 or b.ndim == 0:
        raise UnsupportedError(f"blocks must be a uint8 array, got {b.dtype.name} of shape {b.shape}")
    block, size = _native.ggml_type_info(type)
    if b.shape[-1] % size != 0:
        raise InvalidProblemError(f"{type}: rows of {b.shape[-1]} bytes are not whole blocks of {size}")
    n = b.shape[-1] // size * block
    rows = int(np.prod(b.shape[:-1], dtype=np.int64)) if b.ndim > 1 else 1
    out = _native.ggml_dequantize(np.ascontiguousarray(b).reshape(-1), rows, n, type, threads)
    return out.reshape(b.shape[:-1] + (n,))


def presets() -> list:
    """The names :func:`quantize_dynamic` takes as ``preset``."""
    return list(_native.presets())


def quantize_checkpoint(
    input: str,
    output: str,
    *,
    format: str,
    bits: int = 4,
    group_size: int = 128,
    symmetric: bool = True,
    ignore: Iterable[str] = (),
    progress: bool = True,
    force: bool = False,
) -> None:
    """Quantizes a Hugging Face safetensors checkpoint folder as ``groupq
    quantize`` does (same files, bit for bit): ``format`` is
    ``"compressed-tensors"``, ``"gptq"`` or ``"awq"`` (AWQ is always
    asymmetric: ``symmetric`` is ignored for it). Raises :class:`Error` with the command's message on failure."""
    argv = [
        "groupq",
        "quantize",
        os.fspath(input),
        "--output",
        os.fspath(output),
        "--format",
        format,
        "--bits",
        str(int(bits)),
        "--group-size",
        str(int(group_size)),
    ]
    if format != "awq":
        argv.append("--sym" if symmetric else "--asym")
    for pattern in ignore:
        argv += ["--ignore", pattern]
    if not progress:
        argv.append("--quiet")
    if force:
        argv.append("--force")
    # The command runs in a child process: its signal handlers (which remove
    # a partial output) and its exit stay out of the interpreter. Its stderr
    # (progress bars, warnings, the error) is passed through as it comes,
    # and its last lines are kept for the exception.
    proc = subprocess.Popen(
        [sys.executable, "-m", "groupq._cli", *argv[1:]],
        stdout=subprocess.DEVNULL if not progress else None,
        stderr=subprocess.PIPE,
    )
    tail = b""
    try:
        while True:
            chunk = proc.stderr.read1(65536) if hasattr(proc.stderr, "read1") else proc.stderr.read(65536)
            if not chunk:
                break
            if progress:
                sys.stderr.buffer.write(chunk) if hasattr(sys.stderr, "buffer") else sys.stderr.write(
                    chunk.decode(errors="replace")
                )
                sys.stderr.flush()
            tail = (tail + chunk)[-8192:]
        rc = proc.wait()
    except BaseException:
        # Interrupted here (KeyboardInterrupt, ...): stop the command, which
        # removes its partial output, then re-raise.
        proc.terminate()
        proc.wait()
        raise
    if rc != 0:
        lines = [l for l in tail.decode(errors="replace").replace("\r", "\n").splitlines() if l.strip()]
        errors = [l for l in lines if l.startswith("error")]
        raise Error((errors or lines or [f"groupq quantize exited with {rc}"])[-1])


from . import pack  # noqa: E402  (needs _errors above)
from ._affine import (  # noqa: E402
    affine_formulas,
    dequantize_affine,
    fake_quantize_affine,
    fake_quantize_affine_backward,
    quantize_affine,
    quantize_per_token_dynamic,
)
