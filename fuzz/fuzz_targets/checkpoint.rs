//! The checkpoint readers as `groupq quantize` uses them (config.json, the
//! index, a safetensors header and the layout detected from it) on
//! arbitrary bytes: errors are values, accepted shards fit their bytes,
//! never a panic (`groupq_cli::checkpoint::fuzz_checkpoint`, which the
//! normal tests also run on the corpus and on every regression kept in
//! `fuzz/regressions/checkpoint/`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    groupq_cli::checkpoint::fuzz_checkpoint(data);
});
