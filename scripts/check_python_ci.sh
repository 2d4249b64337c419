#!/usr/bin/env bash
# The Python package as a user gets it: the abi3 wheel built by maturin,
# installed into a fresh venv (numpy, ml_dtypes and pytest from PyPI), then
# its pytest suite, run from outside the source tree so that the installed
# package is the one imported. Used by .ci/run; needs python3 with venv and
# the PyPI registry.
#   bash scripts/check_python_ci.sh [GROUPQ_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=target/py-build-venv
venv=target/py-venv
dist=target/py-dist
if [ ! -x "$build/bin/maturin" ]; then
    python3 -m venv "$build"
    "$build/bin/pip" install --quiet --disable-pip-version-check "maturin>=1.7,<2"
fi
rm -rf "$dist" "$venv"
CARGO_TARGET_DIR="$root/target/python" "$build/bin/maturin" build --release \
    -m crates/groupq-py/Cargo.toml -o "$dist" --quiet
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "$dist"/groupq-*.whl ml_dtypes pytest
"$venv/bin/groupq" --version
export GROUPQ_BIN="$root/${1:-target/debug/groupq}"
export GROUPQ_MODELS="$root/models"
cd "$(mktemp -d)"
"$root/$venv/bin/python" -m pytest -q "$root/crates/groupq-py/tests"
