//! The plans on arbitrary descriptors, views and values: a typed error or
//! the scalar oracle's bits from the best backend, nothing written on
//! error, no panic (`crates/groupq/tests/fuzz_harness/plans.rs`, which the
//! normal test suite also runs on random inputs and on every regression
//! kept in `fuzz/regressions/plans/`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/groupq/tests/fuzz_harness/plans.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::run(data);
});
