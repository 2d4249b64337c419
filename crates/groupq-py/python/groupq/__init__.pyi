from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from . import pack as pack

class Error(Exception): ...
class InvalidProblemError(Error, ValueError): ...
class UnsupportedError(Error, TypeError): ...
class BufferTooSmallError(Error, ValueError): ...

def quantize_per_group(
    x: npt.ArrayLike,
    scale: npt.ArrayLike,
    zero_point: npt.ArrayLike,
    *,
    group_size: int,
    q_min: int,
    q_max: int,
    out_dtype: Optional[npt.DTypeLike] = ...,
    formula: str = ...,
    threads: Optional[int] = ...,
) -> np.ndarray: ...
def dequantize_per_group(
    q: npt.ArrayLike,
    scale: npt.ArrayLike,
    zero_point: npt.ArrayLike,
    *,
    group_size: int,
    out_dtype: npt.DTypeLike = ...,
    threads: Optional[int] = ...,
) -> np.ndarray: ...
def quantize_dynamic(
    x: npt.ArrayLike,
    *,
    preset: str,
    group_size: int,
    bits: Optional[int] = ...,
    symmetric: bool = ...,
    offset: bool = ...,
    q_min: Optional[int] = ...,
    q_max: Optional[int] = ...,
    threads: Optional[int] = ...,
) -> Tuple[np.ndarray, ...]: ...
def gguf_types() -> List[str]: ...
def gguf_quantize(
    x: npt.ArrayLike, type: str, *, imatrix: Optional[npt.ArrayLike] = ..., threads: Optional[int] = ...
) -> np.ndarray: ...
def gguf_dequantize(blocks: npt.ArrayLike, type: str, *, threads: Optional[int] = ...) -> np.ndarray: ...
def presets() -> List[str]: ...
def quantize_checkpoint(
    input: str,
    output: str,
    *,
    format: str,
    bits: int = ...,
    group_size: int = ...,
    symmetric: bool = ...,
    ignore: Iterable[str] = ...,
    progress: bool = ...,
    force: bool = ...,
) -> None: ...
def quantize_affine(
    x: npt.ArrayLike,
    scale: npt.ArrayLike,
    zero_point: Optional[npt.ArrayLike] = ...,
    *,
    granularity: str,
    q_min: int,
    q_max: int,
    axis: Optional[int] = ...,
    group_size: Optional[int] = ...,
    block_size: Optional[Sequence[int]] = ...,
    formula: str = ...,
    out_dtype: Optional[npt.DTypeLike] = ...,
    threads: Optional[int] = ...,
) -> np.ndarray: ...
def dequantize_affine(
    q: npt.ArrayLike,
    scale: npt.ArrayLike,
    zero_point: Optional[npt.ArrayLike] = ...,
    *,
    granularity: str,
    axis: Optional[int] = ...,
    group_size: Optional[int] = ...,
    block_size: Optional[Sequence[int]] = ...,
    formula: str = ...,
    out_dtype: npt.DTypeLike = ...,
    threads: Optional[int] = ...,
) -> np.ndarray: ...
def fake_quantize_affine(
    x: npt.ArrayLike,
    scale: npt.ArrayLike,
    zero_point: Optional[npt.ArrayLike] = ...,
    *,
    granularity: str,
    q_min: int,
    q_max: int,
    axis: Optional[int] = ...,
    group_size: Optional[int] = ...,
    block_size: Optional[Sequence[int]] = ...,
    formula: str = ...,
    return_mask: bool = ...,
    threads: Optional[int] = ...,
) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]: ...
def fake_quantize_affine_backward(
    grad_output: npt.ArrayLike,
    x: npt.ArrayLike,
    scale: npt.ArrayLike,
    zero_point: Optional[npt.ArrayLike] = ...,
    *,
    granularity: str,
    q_min: int,
    q_max: int,
    axis: Optional[int] = ...,
    group_size: Optional[int] = ...,
    block_size: Optional[Sequence[int]] = ...,
    formula: str = ...,
    threads: Optional[int] = ...,
) -> np.ndarray: ...
def quantize_per_token_dynamic(
    x: npt.ArrayLike, *, threads: Optional[int] = ...
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def affine_formulas() -> List[str]: ...
