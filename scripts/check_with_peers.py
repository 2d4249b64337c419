#!/usr/bin/env python3
"""Check a groupq checkpoint with the peers' own Python tooling.

    python3 scripts/check_with_peers.py QUANTIZED_DIR DEQUANTIZED_DIR

QUANTIZED_DIR is the output of `groupq quantize`, DEQUANTIZED_DIR the output
of `groupq dequantize QUANTIZED_DIR`. For every quantized module the peer's
own dequantization is compared, bit for bit, with groupq's:

- compressed-tensors: `QuantizationConfig.model_validate` on the config, then
  `PackedQuantizationCompressor.decompress` per module (needs
  `pip install compressed-tensors`);
- awq: `awq.utils.packing_utils.dequantize_gemm` (needs `pip install --no-deps
  autoawq`; only its packing utilities are imported);
- gptq: AutoGPTQ's `QuantLinear` (the cuda-old layer, its torch path):
  `forward(eye(K)).T` is the dequantized weight (needs `pip install --no-deps
  auto-gptq`); without it, the v1 zero points are read back as GPTQ loaders
  do (`(nibble + 1) & 15`, `scales[g] * (q - z)` in float16) with torch
  operations.

Not run by CI (the peers need torch); the results are quoted in the issue
notes.
"""
import json
import sys
import types
import importlib.util
from pathlib import Path

import torch
from safetensors.torch import load_file


def load_dir(d):
    d = Path(d)
    tensors = {}
    for f in sorted(d.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    config = json.loads((d / "config.json").read_text())
    return tensors, config


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.int16 if a.element_size() == 2 else torch.int32), b.view(torch.int16 if b.element_size() == 2 else torch.int32))


def check_ct(q, qc, dq):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, QuantizationArgs

    QuantizationConfig.model_validate(qc)
    args = QuantizationArgs.model_validate(qc["config_groups"]["group_0"]["weights"])
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    n = 0
    for name in [k for k in q if k.endswith(".weight_packed")]:
        p = name[: -len(".weight_packed")]
        sd = {k.split(".")[-1]: v for k, v in q.items() if k.startswith(p + ".weight_")}
        out = PackedQuantizationCompressor.decompress(sd, scheme)["weight"]
        assert same(out, dq[p + ".weight"]), p
        n += 1
    return n


def import_bare(package, module):
    if package not in sys.modules:
        spec = importlib.util.find_spec(package)
        pkg = types.ModuleType(package)
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules[package] = pkg
    return importlib.import_module(module)


def check_awq(q, qc, dq):
    packing = import_bare("awq", "awq.utils.packing_utils")
    n = 0
    for name in [k for k in q if k.endswith(".qweight")]:
        p = name[: -len(".qweight")]
        out = packing.dequantize_gemm(q[p + ".qweight"], q[p + ".qzeros"], q[p + ".scales"], qc["bits"], qc["group_size"]).T.contiguous()
        assert same(out, dq[p + ".weight"]), p
        n += 1
    return n


def check_gptq(q, qc, dq):
    try:
        qlinear = import_bare("auto_gptq", "auto_gptq.nn_modules.qlinear.qlinear_cuda_old")
    except Exception as e:  # noqa: BLE001
        print(f"AutoGPTQ not importable ({e}); reading v1 zero points with torch")
        return check_gptq_torch(q, qc, dq)
    n = 0
    for name in [k for k in q if k.endswith(".qweight")]:
        p = name[: -len(".qweight")]
        K, N = q[p + ".g_idx"].shape[0], q[p + ".qweight"].shape[1]
        layer = qlinear.QuantLinear(qc["bits"], qc["group_size"], K, N, False, weight_dtype=torch.float16)
        for part in ["qweight", "qzeros", "scales", "g_idx"]:
            getattr(layer, part).copy_(q[f"{p}.{part}"])
        with torch.no_grad():
            out = layer(torch.eye(K, dtype=torch.float16)).T.contiguous()
        assert same(out, dq[p + ".weight"]), p
        n += 1
    return n


def check_gptq_torch(q, qc, dq):
    bits, n = qc["bits"], 0
    assert qc["checkpoint_format"] == "gptq" and not qc["desc_act"]
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    mask = (1 << bits) - 1
    for name in [k for k in q if k.endswith(".qweight")]:
        p = name[: -len(".qweight")]
        qweight, qzeros, scales, g_idx = q[p + ".qweight"], q[p + ".qzeros"], q[p + ".scales"], q[p + ".g_idx"]
        w = ((qweight.unsqueeze(1) >> shifts.view(1, -1, 1)) & mask).reshape(-1, qweight.shape[1])  # [K, N]
        z = ((qzeros.unsqueeze(2) >> shifts.view(1, 1, -1)) & mask).reshape(qzeros.shape[0], -1)[:, : scales.shape[1]]
        z = (z + 1) & mask  # v1
        weight = scales[g_idx.long()] * (w - z[g_idx.long()]).to(torch.int8).to(torch.float16)
        assert same(weight.T.contiguous(), dq[p + ".weight"]), p
        n += 1
    return n


def main():
    q, config = load_dir(sys.argv[1])
    dq, _ = load_dir(sys.argv[2])
    qc = config["quantization_config"]
    method = qc["quant_method"]
    n = {"compressed-tensors": check_ct, "awq": check_awq, "gptq": check_gptq}[method](q, qc, dq)
    print(f"{method}: {n} modules, the peer's dequantization equals groupq dequantize bit for bit")


if __name__ == "__main__":
    main()
