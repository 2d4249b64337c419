//! The `plans` fuzz target's property on random inputs and on every
//! regression kept in `fuzz/regressions/plans/`: a typed error or equal
//! bits from the best backend and the scalar oracle, nothing written on
//! error, no panic.

#[path = "fuzz_harness/plans.rs"]
mod harness;

#[test]
fn random_inputs() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut ran = 0;
    for _ in 0..3000 {
        let data: Vec<u8> = (0..160)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        ran += usize::from(harness::run(&data));
    }
    // The decoder must reach the kernels, not only the validation.
    assert!(ran > 300, "only {ran} of 3000 inputs ran a plan");
}

/// The affine branch (inputs starting with 0xF0..=0xFF).
#[test]
fn affine_random_inputs() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut ran = 0;
    for _ in 0..3000 {
        let mut data: Vec<u8> = (0..200)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        data[0] |= 0xf0;
        ran += usize::from(harness::run(&data));
    }
    assert!(ran > 300, "only {ran} of 3000 affine inputs ran a plan");
}

#[test]
fn kept_regressions() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/plans");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let data = std::fs::read(entry.path()).unwrap();
        harness::run(&data);
    }
}
