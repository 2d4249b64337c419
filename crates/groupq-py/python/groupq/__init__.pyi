from typing import Iterable, List, Optional, Tuple

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
    bits: int = ...,
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
