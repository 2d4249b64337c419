//! The GGUF reader on arbitrary bytes: it returns a typed error or a file
//! whose tensors lie inside the bytes, and what it read writes back to
//! bytes that read the same (`groupq_cli::gguf::fuzz_round_trip`, which the
//! normal test suite also runs on the corpus and on every regression kept
//! in `fuzz/regressions/`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    groupq_cli::gguf::fuzz_round_trip(data);
});
