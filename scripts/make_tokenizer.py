#!/usr/bin/env python3
"""Train the example model's tokenizer (byte-level BPE, at most 1024 tokens).

    python3 scripts/make_tokenizer.py OUT.json TEXT_FILE...

`groupq example-model` embeds the result (crates/groupq-cli/src/tiny_tokenizer.json),
so models/tiny-llama ships a tokenizer that encodes any text: ids 0, 1, 2 are
<unk>, <s>, </s> (the model config's bos/eos), every byte has a token, and
the merges were learned from the given files (the repository's README.md
when it was made). Needs `pip install tokenizers`.
"""
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

out, files = sys.argv[1], sys.argv[2:]
tok = Tokenizer(models.BPE(unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(
    vocab_size=1024,
    min_frequency=2,
    special_tokens=["<unk>", "<s>", "</s>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
)
tok.train(files, trainer)
tok.post_processor = processors.TemplateProcessing(
    single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
)
assert tok.token_to_id("<s>") == 1 and tok.token_to_id("</s>") == 2
assert tok.get_vocab_size() <= 1024
tok.save(out, pretty=False)
print(f"{out}: {tok.get_vocab_size()} tokens; 'hello world' ->", tok.encode("hello world").ids)
