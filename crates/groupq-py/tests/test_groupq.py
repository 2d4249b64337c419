"""The Python API against the peers' golden files (the ones the Rust tests
read) and against a numpy oracle of SPEC §3.1/§3.2."""

import json
import os
import pathlib
import struct
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import groupq

GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "groupq" / "tests" / "golden"
DTYPES = {
    "F32": np.float32,
    "F64": np.float64,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I8": np.int8,
    "U8": np.uint8,
    "I32": np.int32,
    "I64": np.int64,
    "BOOL": np.bool_,
}


def read(path):
    """A safetensors file as {name: array} (a reader of the format's
    header: 8-byte length, JSON, raw little-endian tensors)."""
    b = path.read_bytes()
    (n,) = struct.unpack("<Q", b[:8])
    header = json.loads(b[8 : 8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        lo, hi = t["data_offsets"]
        a = np.frombuffer(b[8 + n + lo : 8 + n + hi], dtype=DTYPES[t["dtype"]])
        out[name] = a.reshape(t["shape"])
    return out


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype.itemsize == b.dtype.itemsize
    u = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    return np.array_equal(a.view(u), b.view(u))


TORCHAO = {
    "sym_int4": (4, True, None),
    "sym_int8": (8, True, None),
    "asym_uint4": (4, False, None),
    "asym_int8": (8, False, None),
    "sym_uint4": (4, True, (0, 15)),
    "asym_int4": (4, False, (-8, 7)),
}


@pytest.mark.parametrize(
    "path",
    sorted(GOLDEN.glob("torchao__*.safetensors")),
    ids=lambda p: p.stem,
)
@pytest.mark.parametrize("threads", [1, 2])
def test_torchao_golden(path, threads):
    t = read(path)
    bits, sym, rng = TORCHAO[path.name.split("__")[1]]
    g = int(path.stem.split("__g")[-1])
    lo, hi = rng or (None, None)
    q, s, z = groupq.quantize_dynamic(
        t["input"], preset="torchao", group_size=g, bits=bits, symmetric=sym, q_min=lo, q_max=hi, threads=threads
    )
    assert np.array_equal(q.astype(np.int32), t["q"].astype(np.int32))
    assert same_bits(s, t["scale"])
    assert np.array_equal(z, t["zero_point"])


def spec_quantize(x, s, z, g, lo, hi):
    """SPEC §3.1 in numpy: f32 math below f64, division, zero point before
    rounding, ties to even, NaN → clamp(0)."""
    m = np.float64 if x.dtype == np.float64 else np.float32
    xs = x.astype(m).reshape(x.shape[0], -1, g)
    sm = s.astype(m)[..., None]
    with np.errstate(all="ignore"):
        v = np.where(sm != 0, xs / np.where(sm != 0, sm, 1), 0).astype(m)
        t = np.rint(v + z.astype(m)[..., None])
    t = np.where(np.isnan(t), 0, t)
    return np.clip(t, lo, hi).reshape(x.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
def test_spec_round_trip(dtype):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((8, 96)) * 3).astype(dtype)
    x[0, :4] = [np.nan, np.inf, -np.inf, 0.5]
    s = rng.uniform(0.05, 0.5, (8, 3)).astype(dtype)
    s[1, 0] = 0
    z = rng.integers(-3, 4, (8, 3)).astype(np.int32)
    q = groupq.quantize_per_group(x, s, z, group_size=32, q_min=-8, q_max=7)
    assert q.dtype == np.int8
    assert np.array_equal(q, spec_quantize(x, s, z, 32, -8, 7))
    y = groupq.dequantize_per_group(q, s, z, group_size=32, out_dtype=dtype)
    m = np.float64 if dtype == np.float64 else np.float32
    want = ((q.reshape(8, 3, 32).astype(m) - z[..., None].astype(m)) * s.astype(m)[..., None]).astype(dtype)
    assert same_bits(y, want.reshape(8, 96))


def test_threads_and_layouts_agree():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 256)).astype(ml_dtypes.bfloat16)
    ref = groupq.quantize_dynamic(x, preset="gptq", group_size=128, threads=1)
    for threads in (2, 3, None):
        got = groupq.quantize_dynamic(x, preset="gptq", group_size=128, threads=threads)
        assert all(same_bits(a, b) for a, b in zip(got, ref))
    # A non-contiguous view gives the same results as its copy; N-D shapes
    # group along the last axis.
    big = rng.standard_normal((64, 512)).astype(np.float32)
    view = big[:, ::2]
    a = groupq.quantize_dynamic(view, preset="torchao", group_size=64)
    b = groupq.quantize_dynamic(np.ascontiguousarray(view), preset="torchao", group_size=64)
    assert all(same_bits(u, v) for u, v in zip(a, b))
    views = [
        big[:, :256],  # a slice of columns: rows 512 apart
        big[::3],  # every third row
        big.reshape(4, 16, 512)[:, 2:9, 64:192],  # 3-D, evenly spaced rows
        big.reshape(4, 16, 512)[:, ::2, :128],
        big.T[:128],  # not contiguous along the last axis: copied
        big[::-1],  # rows in decreasing order: copied
    ]
    for v in views:
        for preset in ("torchao", "gptq"):
            a = groupq.quantize_dynamic(v, preset=preset, group_size=64)
            b = groupq.quantize_dynamic(np.ascontiguousarray(v), preset=preset, group_size=64)
            assert all(same_bits(u, w) for u, w in zip(a, b)), (v.shape, v.strides)
        s = np.ones(v.shape[:-1] + (v.shape[-1] // 64,), np.float32) * 0.1
        z = np.zeros(s.shape, np.int32)
        q = groupq.quantize_per_group(v, s, z, group_size=64, q_min=-128, q_max=127)
        assert np.array_equal(q, groupq.quantize_per_group(np.ascontiguousarray(v), s, z, group_size=64, q_min=-128, q_max=127))
        # Codes read through a view (the left half of wider rows) dequantize
        # as their contiguous copy does.
        wide = np.zeros(q.shape[:-1] + (q.shape[-1] * 2,), np.int8)
        wide[..., : q.shape[-1]] = q
        y = groupq.dequantize_per_group(wide[..., : q.shape[-1]], s, z, group_size=64)
        assert same_bits(y, groupq.dequantize_per_group(q, s, z, group_size=64))
    q3, s3, _ = groupq.quantize_dynamic(big.reshape(4, 16, 512), preset="torchao", group_size=64)
    q2, s2, _ = groupq.quantize_dynamic(big, preset="torchao", group_size=64)
    assert q3.shape == (4, 16, 512) and s3.shape == (4, 16, 8)
    assert np.array_equal(q3.reshape(64, 512), q2)


def test_errors_are_typed():
    x = np.zeros((4, 64), np.float32)
    with pytest.raises(groupq.InvalidProblemError, match="does not divide"):
        groupq.quantize_dynamic(x, preset="torchao", group_size=48)
    with pytest.raises(ValueError, match="unknown preset"):
        groupq.quantize_dynamic(x, preset="nope", group_size=32)
    with pytest.raises(groupq.UnsupportedError):
        groupq.quantize_dynamic(x.astype(np.int32), preset="torchao", group_size=32)
    with pytest.raises(TypeError):
        groupq.dequantize_per_group(np.zeros((4, 64), np.int16), np.ones(8), np.zeros(8), group_size=32)
    with pytest.raises(groupq.InvalidProblemError, match="range"):
        groupq.quantize_per_group(x, np.ones(8), np.zeros(8), group_size=32, q_min=-8, q_max=700)
    with pytest.raises(groupq.InvalidProblemError, match="groups need one each"):
        groupq.quantize_per_group(x, np.ones(7), np.zeros(8), group_size=32, q_min=-8, q_max=7)
    with pytest.raises(groupq.Error):
        groupq.quantize_dynamic(x, preset="compressed-tensors", group_size=32, bits=8)
    with pytest.raises(groupq.InvalidProblemError, match="offset=True"):
        groupq.quantize_dynamic(x, preset="gguf-q4_1", group_size=32, bits=4)
    with pytest.raises(groupq.InvalidProblemError, match="no offset"):
        groupq.quantize_dynamic(x, preset="gguf-q4_0", group_size=32, bits=4, offset=True)
    assert "gptq" in groupq.presets() and "torchao" in groupq.presets()
    # A preset's own width without bits=; -1 is one group per row.
    q, s, _ = groupq.quantize_dynamic(np.ones((2, 64), np.float32), preset="gguf-q8_0", group_size=32)
    assert q.dtype == np.int8 and s.shape == (2, 2)
    q, s, _ = groupq.quantize_dynamic(np.ones((2, 64), np.float32), preset="gptq", group_size=-1)
    assert s.shape == (2, 1)


def cases(prefix):
    return sorted(GOLDEN.glob(prefix + "*.safetensors"))


def group_of(path):
    return int(path.stem.rsplit("__", 1)[1][1:])


@pytest.mark.parametrize("path", cases("ct__"), ids=lambda p: p.stem)
def test_compressed_tensors_golden(path):
    t = read(path)
    sym = path.name.split("__")[1] == "w4a16"
    q, s, z = groupq.quantize_dynamic(
        t["input"], preset="compressed-tensors", group_size=group_of(path), bits=4, symmetric=sym
    )
    assert np.array_equal(q, t["q"])
    assert same_bits(s, t["scale"])
    if "zero_point" in t:
        assert np.array_equal(z, t["zero_point"].astype(np.int32))
    packed = groupq.pack.compressed_tensors_weight(q, bits=4)
    assert np.array_equal(packed, t["packed"])
    assert np.array_equal(groupq.pack.compressed_tensors_weight_unpack(packed, q.shape[1]), q)


@pytest.mark.parametrize("path", cases("gptqmodel__") + cases("autogptq__"), ids=lambda p: p.stem)
def test_gptq_golden(path):
    t = read(path)
    sym = path.name.split("__")[1] == "rtn_sym"
    q, s, z = groupq.quantize_dynamic(
        t["input"], preset="gptq", group_size=group_of(path), bits=4, symmetric=sym
    )
    assert np.array_equal(q, t["q"])
    assert same_bits(s, t["scale"])
    assert np.array_equal(z, t["zero_point"].astype(np.int32))
    qweight = groupq.pack.gptq_qweight(q)
    assert np.array_equal(qweight, t["packed_qweight"])
    assert np.array_equal(groupq.pack.gptq_qweight_unpack(qweight), q)
    if path.name.startswith("gptqmodel"):
        pairs = [("packed_qzeros", "v1-whole-word"), ("packed_qzeros_v2", "v2")]
    else:
        pairs = [("packed_qzeros", "v1-autogptq")]
    for name, encoding in pairs:
        qz = groupq.pack.gptq_qzeros(z, encoding=encoding)
        assert np.array_equal(qz, t[name]), name


@pytest.mark.parametrize("path", cases("autoawq__asym_gemm"), ids=lambda p: p.stem)
def test_awq_golden(path):
    t = read(path)
    preset = "awq-f16" if "apply_quant" in path.name else "awq"
    q, s, z = groupq.quantize_dynamic(
        t["input"], preset=preset, group_size=group_of(path), bits=4, symmetric=False
    )
    assert np.array_equal(q, t["q"])
    assert np.array_equal(s.astype(np.float64), t["scale"].astype(np.float64))
    assert np.array_equal(z, t["zero_point"].astype(np.int32))
    qweight = groupq.pack.awq_qweight(q)
    assert np.array_equal(qweight, t["packed_qweight"])
    assert np.array_equal(groupq.pack.awq_qweight_unpack(qweight), q)
    qz = groupq.pack.awq_qzeros(z)
    assert np.array_equal(qz, t["packed_qzeros"])
    assert np.array_equal(groupq.pack.awq_qzeros_unpack(qz), z)


@pytest.mark.parametrize("path", cases("gguf__"), ids=lambda p: p.stem)
def test_gguf_golden(path):
    t = read(path)
    kind = path.name.split("__")[1]
    bits = {"q8_0": 8, "q4_0": 4, "q5_0": 5, "q4_1": 4, "q5_1": 5}[kind]
    with_m = kind in ("q4_1", "q5_1")
    r = groupq.quantize_dynamic(t["input"], preset="gguf-" + kind, group_size=32, bits=bits, offset=with_m)
    q, s = r[0], r[1]
    m = r[3].astype(np.float16) if with_m else None
    assert np.array_equal(q.astype(np.int32), t["q"].astype(np.int32))
    assert np.array_equal(s.astype(np.float16), t["scale"])
    if with_m:
        # ggml stores the offset as f16 (rounded from the f32 it computes).
        assert same_bits(m, t["min"])
    blocks = groupq.pack.gguf_blocks(kind, q.astype(np.int32), s.astype(np.float16), m)
    assert np.array_equal(blocks, t["packed"].reshape(-1))
    codes, d, m2 = groupq.pack.gguf_blocks_unpack(kind, blocks)
    assert np.array_equal(codes, q.reshape(-1).astype(np.int32))
    assert same_bits(d, s.astype(np.float16).reshape(-1))
    assert (m2 is None) == (not with_m)


@pytest.mark.parametrize("path", cases("torchcore__per_token_asym_int8"), ids=lambda p: p.stem)
def test_torch_per_token_golden(path):
    t = read(path)
    g = group_of(path)
    q, s, z = groupq.quantize_dynamic(t["input"], preset="torch-per-token", group_size=g, bits=8)
    assert np.array_equal(q, t["q"])
    assert same_bits(s, t["scale"])
    assert np.array_equal(z, t["zero_point"])


@pytest.mark.skipif(
    not (os.environ.get("GROUPQ_BIN") and os.environ.get("GROUPQ_MODELS")),
    reason="GROUPQ_BIN (the groupq binary) and GROUPQ_MODELS (the models folder) not set",
)
@pytest.mark.parametrize("fmt", ["gptq", "compressed-tensors", "awq"])
def test_quantize_checkpoint_is_the_command(tmp_path, fmt):
    """quantize_checkpoint and the console script write the files the Rust
    binary writes, byte for byte."""
    model = pathlib.Path(os.environ["GROUPQ_MODELS"]) / "tiny-llama"
    ours, theirs, script = tmp_path / "py", tmp_path / "bin", tmp_path / "script"
    groupq.quantize_checkpoint(str(model), str(ours), format=fmt, group_size=64, progress=False)
    sym = [] if fmt == "awq" else ["--sym"]
    args = ["quantize", str(model), "-o", "{}", "--format", fmt, "--group-size", "64", *sym, "--quiet"]
    subprocess.run([os.environ["GROUPQ_BIN"], *[a.format(theirs) for a in args]], check=True)
    console = pathlib.Path(sys.executable).parent / "groupq"
    subprocess.run([str(console), *[a.format(script) for a in args]], check=True)
    files = sorted(p.relative_to(theirs) for p in theirs.rglob("*") if p.is_file())
    assert files
    for rel in files:
        assert (ours / rel).read_bytes() == (theirs / rel).read_bytes(), rel
        assert (script / rel).read_bytes() == (theirs / rel).read_bytes(), rel
    with pytest.raises(groupq.Error, match="exists|already"):
        groupq.quantize_checkpoint(str(model), str(ours), format=fmt, progress=False)


def test_views_are_not_copied():
    """A slice of columns of a large bf16 array is read in place: the call
    allocates its outputs (1 byte a value) and no copy of its input (2)."""
    import tracemalloc

    x = np.zeros((2048, 8192), ml_dtypes.bfloat16)
    view = x[:, :4096]
    tracemalloc.start()
    groupq.quantize_dynamic(view, preset="gptq", group_size=128)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < view.size * 1.5, peak
    tracemalloc.start()
    groupq.quantize_dynamic(np.asfortranarray(view), preset="gptq", group_size=128)
    _, peak_copy = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak_copy > view.size * 2, peak_copy  # the check can fail: a copy shows


@pytest.mark.parametrize("path", cases("gguf0171__"), ids=lambda p: p.stem)
def test_gguf_py_017_golden(path):
    t = read(path)
    kind = path.name.split("__")[1]
    bits = {"q4_0": 4, "q5_0": 5}[kind]
    q, s, _ = groupq.quantize_dynamic(t["input"], preset=f"gguf-{kind}-fused", group_size=32, bits=bits)
    assert np.array_equal(q.astype(np.int32), t["q"].astype(np.int32))
    assert np.array_equal(s.astype(np.float16), t["scale"])
    blocks = groupq.pack.gguf_blocks(kind, q.astype(np.int32), s.astype(np.float16))
    assert np.array_equal(blocks, t["packed"].reshape(-1))


@pytest.mark.parametrize("path", cases("autoawq__sym_pseudo"), ids=lambda p: p.stem)
def test_awq_symmetric_golden(path):
    t = read(path)
    q, s, z = groupq.quantize_dynamic(t["input"], preset="awq", group_size=group_of(path), bits=4, symmetric=True)
    assert np.array_equal(q, t["q"])
    assert same_bits(s, t["scale"])
    assert not z.any()
    y = groupq.dequantize_per_group(q, s, z, group_size=group_of(path), out_dtype=t["dequant"].dtype)
    # AWQ's pseudo-quantization multiplies the rounded float (-0.0 for a
    # small negative value); integer codes have no -0, so zeros are compared
    # by value.
    assert np.array_equal(y.astype(np.float64), t["dequant"].astype(np.float64))


@pytest.mark.parametrize("path", cases("torchcore__explicit"), ids=lambda p: p.stem)
def test_torch_per_channel_group_golden(path):
    t = read(path)
    bits = 4 if "int4" in path.name else 8
    h = 1 << (bits - 1)
    q = groupq.quantize_per_group(
        t["input"], t["scale"], t["zero_point"], group_size=group_of(path), q_min=-h, q_max=h - 1,
        formula="torch-per-channel-group",
    )
    assert np.array_equal(q, t["q"])


@pytest.mark.parametrize("path", sorted((GOLDEN / "ggml").glob("ggml__*.safetensors")), ids=lambda p: p.stem)
def test_llama_cpp_blocks_golden(path):
    t = read(path)
    kind = path.name.split("__")[1].replace("_imatrix", "")
    kind = next(k for k in groupq.gguf_types() if k.lower() == kind.lower())
    blocks = groupq.gguf_quantize(t["input"], kind, imatrix=t.get("imatrix"))
    assert np.array_equal(blocks, t["blocks"])
    y = groupq.gguf_dequantize(blocks, kind)
    assert y.shape == t["input"].shape and np.isfinite(y).all()


def read_meta(path):
    b = path.read_bytes()
    (n,) = struct.unpack("<Q", b[:8])
    return json.loads(b[8 : 8 + n]).get("__metadata__", {})


def same_floats(a, b):
    """Bits equal, any NaN matching any NaN (PyTorch's NaN signs and payloads
    are not defined; groupq's are canonical)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype.itemsize == b.dtype.itemsize, (a.dtype, b.dtype)
    u = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    nan = np.isnan(a.astype(np.float64)) & np.isnan(b.astype(np.float64))
    return bool(np.all((a.view(u) == b.view(u)) | nan))


TORCHGRAN = GOLDEN / "torchgran"
FORMULA = {
    "qd_per_tensor": "torch-decomposed",
    "qd_per_channel": "torch-decomposed",
    "tq_per_channel": "torch-decomposed",
    "tq_per_tensor": "torch-quantize-per-tensor",
    "fq_per_tensor": "torch-fake-quantize-per-tensor",
    "fq_per_channel": "torch-fake-quantize-per-channel",
    "fq_per_channel_fzp": "torch-fake-quantize-per-channel-float-zero-point",
    "qd_fake_quant_per_channel": "torch-decomposed-fake-quant",
}


@pytest.mark.parametrize("path", sorted(TORCHGRAN.glob("torchgran__*.safetensors")), ids=lambda p: p.stem)
def test_torch_granularities_golden(path):
    """Every public torchgran case (PyTorch 2.15's quantize / dequantize /
    fake-quantize ops per tensor, per channel, per token) through the
    Python API."""
    t, meta = read(path), read_meta(path)
    op = meta["op"]
    lo, hi = int(meta["qmin"]), int(meta["qmax"])
    gran = {"granularity": meta["granularity"]}
    if meta["granularity"] == "per_channel":
        gran["axis"] = int(meta["axis"])
    x = t["input"]
    if op == "qd_per_token":
        q, s, z = groupq.quantize_per_token_dynamic(x)
        assert np.array_equal(q, t["q"])
        assert same_floats(s, t["scale"])
        zg = t["zero_point"]
        nan_token = zg == np.iinfo(np.int64).min
        assert np.array_equal(np.where(nan_token, np.iinfo(np.int32).min, zg), z)
        for formula, scale, codes, deq in [
            ("torch-per-token", t["scale"], "q", "dequant"),
            ("torch-per-token-f32", t["scale"].astype(np.float32), "q_f32_qparams", "dequant_f32_qparams"),
        ]:
            zp = np.where(nan_token, 0 if formula.endswith("f32") else np.iinfo(np.int32).min, zg)
            ours = groupq.quantize_affine(x, scale, zp, granularity="per_token", q_min=lo, q_max=hi, formula=formula)
            assert np.array_equal(ours, t[codes]), formula
            y = groupq.dequantize_affine(t[codes], scale, zp, granularity="per_token", formula=formula)
            keep = ~np.broadcast_to(nan_token, x.shape)  # PyTorch's q - INT64_MIN overflows there
            assert same_floats(y[keep], t[deq][keep]), formula
        return
    formula = FORMULA[op]
    zp = t["zero_point"]
    if op in ("fq_per_tensor", "fq_per_channel", "fq_per_channel_fzp", "qd_fake_quant_per_channel"):
        y, m = groupq.fake_quantize_affine(
            x, t["scale"], zp, q_min=lo, q_max=hi, formula=formula, return_mask=True, **gran
        )
        assert same_floats(y, t["fake_quant"])
        if "mask" in t:
            assert np.array_equal(m, t["mask"])
        g = groupq.fake_quantize_affine_backward(
            t["grad_output"], x, t["scale"], zp, q_min=lo, q_max=hi, formula=formula, **gran
        )
        assert same_floats(g, t["grad_input"])
        return
    q = groupq.quantize_affine(x, t["scale"], zp, q_min=lo, q_max=hi, formula=formula, out_dtype=t["q"].dtype, **gran)
    assert np.array_equal(q, t["q"])
    y = groupq.dequantize_affine(t["q"], t["scale"], zp, formula=formula, **gran)
    assert same_floats(y, t["dequant"])
    for name in ("dequant_out_f16", "dequant_out_bf16"):
        if name in t:
            y = groupq.dequantize_affine(t["q"], t["scale"], zp, formula=formula, out_dtype=t[name].dtype, **gran)
            assert same_floats(y, t[name]), name


def test_affine_views_and_ranks():
    """Permuted, sliced and padded views give what their contiguous copies
    give; every rank from 0 to 8; errors name the problem."""
    rng = np.random.default_rng(5)
    base = (rng.standard_normal((6, 40, 34)) * 2).astype(ml_dtypes.bfloat16)
    views = [base, base.transpose(2, 0, 1), base[:, 3:35, ::2], base[::2, :, 1:33]]
    for v in views:
        for axis in range(3):
            s = rng.uniform(0.05, 0.5, v.shape[axis]).astype(np.float32)
            z = rng.integers(-4, 4, v.shape[axis]).astype(np.int32)
            kw = dict(granularity="per_channel", axis=axis, q_min=-8, q_max=7, formula="torch-decomposed")
            a = groupq.quantize_affine(v, s, z, **kw)
            b = groupq.quantize_affine(np.ascontiguousarray(v), s, z, **kw)
            assert np.array_equal(a, b)
            fa = groupq.fake_quantize_affine(v, s, z, **{**kw, "formula": "torch-fake-quantize-per-channel"})
            fb = groupq.fake_quantize_affine(
                np.ascontiguousarray(v), s, z, **{**kw, "formula": "torch-fake-quantize-per-channel"}
            )
            assert same_bits(fa, fb)
            ya = groupq.dequantize_affine(a.transpose(), s, z, granularity="per_channel", axis=2 - axis,
                                          formula="torch-decomposed", out_dtype=ml_dtypes.bfloat16)
            yb = groupq.dequantize_affine(np.ascontiguousarray(a.transpose()), s, z, granularity="per_channel",
                                          axis=2 - axis, formula="torch-decomposed", out_dtype=ml_dtypes.bfloat16)
            assert same_bits(ya, yb)
    for rank in range(0, 9):
        shape = tuple([2] * rank)
        x = rng.standard_normal(shape).astype(np.float32)
        q = groupq.quantize_affine(x, [0.25], [1], granularity="per_tensor", q_min=-128, q_max=127)
        want = np.clip(np.rint(np.asarray(x, np.float32) / np.float32(0.25)) + 1, -128, 127)
        assert q.shape == shape and np.array_equal(q, want)
    with pytest.raises(groupq.InvalidProblemError, match="rank 9"):
        groupq.quantize_affine(np.zeros([1] * 9, np.float32), [1.0], granularity="per_tensor", q_min=-8, q_max=7)
    with pytest.raises(groupq.InvalidProblemError, match="axis 3"):
        groupq.quantize_affine(np.zeros((2, 2, 2), np.float32), [1.0, 1.0], granularity="per_channel", axis=3,
                               q_min=-8, q_max=7)
    with pytest.raises(groupq.Error):
        groupq.quantize_affine(np.zeros((2, 4), np.float32), [1.0], granularity="per_channel", axis=1,
                               q_min=-8, q_max=7)
    with pytest.raises(groupq.InvalidProblemError, match="formula"):
        groupq.quantize_affine(np.zeros(4, np.float32), [1.0], granularity="per_tensor", q_min=-8, q_max=7,
                               formula="nope")
    assert "torch-decomposed" in groupq.affine_formulas()


def test_the_gil_is_released():
    """Another Python thread runs while a kernel does (one kernel thread,
    so a core is free)."""
    import threading

    x = np.random.default_rng(1).standard_normal((4096, 4096)).astype(np.float32)
    state = {"in_call": False, "done": False, "count": 0}

    def work():
        state["in_call"] = True
        for _ in range(3):
            groupq.quantize_dynamic(x, preset="gptq", group_size=128, threads=1)
        state["done"] = True

    t = threading.Thread(target=work)
    t.start()
    while not state["done"]:
        if state["in_call"]:
            state["count"] += 1
    t.join()
    # Held, the GIL would let this loop run only between switch intervals
    # (5 ms each); released, it runs the whole time.
    assert state["count"] > 200_000, state["count"]


def test_bad_input_raises_and_never_crashes():
    """Random junk through every entry point: a Python exception (groupq's,
    or TypeError/ValueError from numpy's conversions), never a crash."""
    rng = np.random.default_rng(11)
    arrays = [
        np.zeros((4, 64), np.float32),
        np.zeros((0, 64), np.float32),
        np.zeros(()),
        np.zeros((4, 64), np.int16),
        np.zeros((4, 64), np.complex64),
        np.array(["a", "b"]),
        np.zeros((4, 63), ml_dtypes.bfloat16),
        np.full((4, 64), np.nan, np.float16),
        np.zeros((4, 64), np.uint8),
        np.zeros((4, 64), np.int8)[:, ::2],
        None,
        3,
        [[1.0, 2.0]],
    ]
    ints = [-1, 0, 1, 3, 32, 64, 2**40, None]
    calls = [
        lambda a, b, c, i: groupq.quantize_per_group(a, b, c, group_size=i, q_min=-8, q_max=7),
        lambda a, b, c, i: groupq.dequantize_per_group(a, b, c, group_size=i),
        lambda a, b, c, i: groupq.quantize_dynamic(a, preset=rng.choice(groupq.presets()), group_size=i),
        lambda a, b, c, i: groupq.quantize_affine(a, b, c, granularity="per_channel", axis=i, q_min=-8, q_max=7),
        lambda a, b, c, i: groupq.dequantize_affine(a, b, c, granularity="per_group", axis=0, group_size=i),
        lambda a, b, c, i: groupq.fake_quantize_affine(a, b, c, granularity="per_token", q_min=i, q_max=7),
        lambda a, b, c, i: groupq.gguf_quantize(a, "q4_K", imatrix=b),
        lambda a, b, c, i: groupq.gguf_dequantize(a, "q6_K"),
        lambda a, b, c, i: groupq.pack.gptq_qweight(a, bits=i),
        lambda a, b, c, i: groupq.pack.awq_qzeros_unpack(a, bits=i),
        lambda a, b, c, i: groupq.pack.gguf_blocks("q4_1", a, b, c),
    ]
    ok = 0
    for _ in range(3000):
        f = calls[rng.integers(len(calls))]
        a, b, c = (arrays[rng.integers(len(arrays))] for _ in range(3))
        try:
            f(a, b, c, ints[rng.integers(len(ints))])
            ok += 1
        except (groupq.Error, TypeError, ValueError, OverflowError):
            pass
    assert ok < 3000
