#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time: scripts/fuzz.sh [SECONDS per target, default 60].
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The seed corpora in
# fuzz/corpus/ are copied to a scratch folder, so the repository's stay small; a crash leaves its
# input in fuzz/artifacts/TARGET/ — turn it into a regression test in the normal suite.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
for target in $(cargo +nightly fuzz list); do
    work="$(mktemp -d)"
    cp -r "corpus/$target/." "$work/"
    echo "== $target: $seconds s"
    cargo +nightly fuzz run "$target" "$work" -- -max_total_time="$seconds" -max_len=65536 2>&1 \
        | grep -E "DONE|^Done [0-9]+ runs|ERROR|panicked|SUMMARY" || true
    rm -rf "$work"
done
