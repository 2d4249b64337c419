//! The `checkpoint` fuzz property (`groupq_cli::checkpoint::fuzz_checkpoint`)
//! on its seed corpus, every prefix and byte flip of the seeds, random
//! inputs, and every regression kept in `fuzz/regressions/checkpoint/`.

use std::path::Path;

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(name);
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name() != ".gitkeep")
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn seeds_prefixes_and_flips() {
    let seeds = corpus("corpus/checkpoint");
    assert!(!seeds.is_empty(), "the seed corpus is missing");
    for seed in &seeds {
        for n in (0..=seed.len()).step_by(3) {
            groupq_cli::checkpoint::fuzz_checkpoint(&seed[..n]);
        }
        for i in 0..seed.len() {
            let mut bad = seed.clone();
            bad[i] ^= 0x5a;
            groupq_cli::checkpoint::fuzz_checkpoint(&bad);
        }
    }
}

#[test]
fn random_inputs_and_kept_regressions() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..2000 {
        let data: Vec<u8> = (0..300)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        groupq_cli::checkpoint::fuzz_checkpoint(&data);
    }
    for data in corpus("regressions/checkpoint") {
        groupq_cli::checkpoint::fuzz_checkpoint(&data);
    }
}
