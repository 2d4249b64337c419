#!/usr/bin/env bash
# GGUF files groupq writes, read back by gguf-py (the reader llama.cpp's own
# Python tools use): every type's blocks dequantize in gguf-py to the same
# floats, bit for bit, as `groupq dequantize` gives. Used by .ci/run; needs
# python3 with venv and the PyPI registry.
#   bash scripts/check_gguf_ci.sh [GROUPQ_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
G=${1:-target/debug/groupq}
dir=target/ci-gguf
venv=target/ci-venv
mkdir -p "$dir"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import gguf, numpy" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "gguf==0.19.0" numpy
fi
"$G" example-model "$dir/f16.gguf" --gguf f16-gqa4 --force >/dev/null
for t in Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K_M Q4_K_M Q5_K_S Q6_K IQ4_NL IQ4_XS; do
    "$G" quantize "$dir/f16.gguf" -o "$dir/$t.gguf" --format gguf --type "$t" --force --quiet >/dev/null
    "$G" dequantize "$dir/$t.gguf" -o "$dir/$t.f32.gguf" --dtype float32 --force --quiet >/dev/null
    printf '%-7s ' "$t"
    "$venv/bin/python" scripts/check_gguf_with_ggufpy.py "$dir/$t.gguf" "$dir/$t.f32.gguf" | tail -1
done
