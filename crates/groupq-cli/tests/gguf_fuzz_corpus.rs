//! The GGUF reader's fuzz property (`groupq_cli::gguf::fuzz_round_trip`) on
//! the fuzz target's seed corpus, every prefix and single-byte change of it,
//! and every crash kept in `fuzz/regressions/`, so that they run on each CI
//! run without the nightly toolchain.

use groupq_cli::gguf::fuzz_round_trip;
use std::path::PathBuf;

fn files(dir: &str) -> Vec<(String, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(dir);
    let mut out = Vec::new();
    for e in std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display())) {
        let p = e.unwrap().path();
        let hidden = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if p.is_file() && !hidden && p.extension().is_none_or(|e| e != "md") {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn the_seed_corpus_reads_and_round_trips() {
    let seeds = files("corpus/gguf_reader");
    assert!(seeds.len() >= 3);
    for (name, data) in &seeds {
        assert!(fuzz_round_trip(data), "{name} is a GGUF file");
    }
}

#[test]
fn every_prefix_and_byte_flip_of_the_seeds_is_handled() {
    for (_, data) in files("corpus/gguf_reader") {
        for end in 0..data.len() {
            fuzz_round_trip(&data[..end]);
        }
        for i in 0..data.len().min(4096) {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut d = data.clone();
                d[i] ^= flip;
                fuzz_round_trip(&d);
            }
        }
    }
}

#[test]
fn every_kept_regression_is_handled() {
    for (_, data) in files("regressions/gguf_reader") {
        fuzz_round_trip(&data);
    }
}
