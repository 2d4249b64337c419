#!/usr/bin/env python3
"""Write the 1.08 GB LLaMA-shaped bf16 checkpoint of BENCHMARKS.md's
`groupq quantize` rows (hidden 2048, ffn 5632, 8 layers, vocab 32000).

    python3 scripts/make_bench_model.py OUT_DIR

Random weights (seed 0), saved by transformers' `save_pretrained` in shards of
at most 500 MB. Needs torch and transformers.
"""
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

torch.manual_seed(0)
config = LlamaConfig(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=8,
    num_attention_heads=16,
    num_key_value_heads=16,
    vocab_size=32000,
    tie_word_embeddings=False,
)
with torch.device("cpu"):
    model = LlamaForCausalLM(config).to(torch.bfloat16)
model.save_pretrained(sys.argv[1], max_shard_size="500MB")
print("wrote", sys.argv[1])
