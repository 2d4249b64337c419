#!/usr/bin/env python3
"""groupq's Python API against torchao and compressed-tensors on their own
entry points: identical codes, scales and zero points on random weights
(several shapes and dtypes), and the time of each on an 11008 x 4096 bf16
matrix, group 128, 4-bit (median of several runs, every core for both).

Not in CI (needs torch, torchao and compressed-tensors from PyPI):
    python -m venv v && v/bin/pip install numpy ml_dtypes torch torchao compressed-tensors
    v/bin/pip install target/py-dist/groupq-*.whl   # scripts/check_python_ci.sh builds it
    v/bin/python scripts/bench_python_peers.py [--reps N]
"""

import argparse
import time
import warnings

import ml_dtypes
import numpy as np
import torch

import groupq

warnings.filterwarnings("ignore")
from compressed_tensors.quantization import preset_name_to_scheme  # noqa: E402
from compressed_tensors.quantization.lifecycle.forward import quantize as ct_quantize  # noqa: E402
from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp  # noqa: E402
from torchao.quantization.quant_primitives import (  # noqa: E402
    MappingType,
    choose_qparams_affine,
    quantize_affine,
)

NP = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: ml_dtypes.bfloat16}
BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def to_numpy(t):
    """A torch tensor as a numpy array of the same dtype, without a copy."""
    return t.view(BITS[t.dtype]).numpy().view(NP[t.dtype])


def same(a, b):
    a = np.asarray(a)
    b = to_numpy(b) if isinstance(b, torch.Tensor) and b.is_floating_point() else np.asarray(b)
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        return a.dtype.itemsize == b.dtype.itemsize and np.array_equal(
            a.view(f"u{a.dtype.itemsize}"), np.ascontiguousarray(b).view(f"u{b.dtype.itemsize}")
        )
    return np.array_equal(a.astype(np.int64), b.astype(np.int64))


def ct_peer(x, g, symmetric):
    scheme = preset_name_to_scheme("W4A16" if symmetric else "W4A16_ASYM", targets=["Linear"])
    args = scheme.weights
    args.group_size = g
    s, z = compute_dynamic_scales_and_zp(value=x, args=args, module=None)
    q = ct_quantize(x=x, scale=s, zero_point=z, args=args, dtype=torch.int8)
    return q, s, z


def ao_peer(x, g, symmetric):
    if symmetric:
        mapping, qdt, lo, hi = MappingType.SYMMETRIC, torch.int8, -8, 7
    else:
        mapping, qdt, lo, hi = MappingType.ASYMMETRIC, torch.uint8, 0, 15
    s, z = choose_qparams_affine(x, mapping, (1, g), qdt, lo, hi)
    q = quantize_affine(x, (1, g), s, z, qdt, lo, hi)
    return q, s, z


PEERS = {"compressed-tensors": ct_peer, "torchao": ao_peer}


def ours(x, preset, g, symmetric, threads=None):
    return groupq.quantize_dynamic(
        to_numpy(x), preset=preset, group_size=g, bits=4, symmetric=symmetric, threads=threads
    )


def compare(x, preset, g, symmetric):
    q, s, z = PEERS[preset](x, g, symmetric)
    mq, ms, mz = ours(x, preset, g, symmetric)
    ok_q = same(mq, q.reshape(mq.shape))
    ok_s = same(ms, s.reshape(ms.shape))
    ok_z = True if z is None else same(mz, z.reshape(mz.shape).to(torch.int64).numpy())
    return ok_q and ok_s and ok_z, (ok_q, ok_s, ok_z)


def median_seconds(f, reps):
    f()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; groupq {groupq.__name__}")
    failures = 0
    gen = torch.Generator().manual_seed(1)
    print("\n## Identical results on random weights")
    for preset in PEERS:
        for symmetric in (True, False):
            for dt in (torch.float32, torch.bfloat16, torch.float16):
                if preset == "compressed-tensors" and dt == torch.float16:
                    pass
                for (n, k, g) in [(64, 256, 32), (96, 1024, 128), (33, 640, 64)]:
                    scale = 10 ** float(torch.empty(1).uniform_(-3, 1, generator=gen))
                    x = (torch.randn(n, k, generator=gen) * scale).to(dt)
                    x[0, :3] = 0  # a partly zero group
                    x[1, :g] = 0  # an all-zero group
                    ok, parts = compare(x, preset, g, symmetric)
                    failures += not ok
                    if not ok:
                        print(f"MISMATCH {preset} sym={symmetric} {dt} {n}x{k} g{g}: q, s, z equal = {parts}")
            print(f"{preset:18} symmetric={symmetric!s:5}: f32/bf16/f16 x 3 shapes compared")
    print(f"failures: {failures}")

    print("\n## Speed: 11008 x 4096 bf16, group 128, 4-bit (median of", a.reps, "runs)")
    n, k, g = 11008, 4096, 128
    x = (torch.randn(n, k, generator=gen) * 0.02).to(torch.bfloat16)
    print("| peer | symmetric | identical | peer s | groupq s | speedup |")
    print("|---|---|---|---|---|---|")
    for preset in PEERS:
        for symmetric in (True, False):
            ok, _ = compare(x, preset, g, symmetric)
            tp = median_seconds(lambda: PEERS[preset](x, g, symmetric), a.reps)
            tg = median_seconds(lambda: ours(x, preset, g, symmetric), a.reps)
            print(f"| {preset} | {symmetric} | {ok} | {tp:.3f} | {tg:.4f} | {tp / tg:.1f}x |")
            failures += not ok
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
