//! `groupq quantize --format gguf` against the real llama-quantize: the
//! small GGUF models of `groupq_cli::tiny_gguf`, re-quantized to every type,
//! must give the files llama.cpp wrote for them byte for byte
//! (`tests/gguf_reference.json`: their sha256, produced by
//! `scripts/gguf_reference.py` through `llama_model_quantize` of llama.cpp
//! 0ad4a86). Also: inspect, dequantize, and the errors of the GGUF path.

use groupq_cli::gguf::{GgmlDtype, Gguf, Value};
use groupq_cli::gguf_job::{quantize_gguf, GgufOptions};
use groupq_cli::llama_mix::Ftype;
use groupq_cli::tiny_gguf::{model, MODELS};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::groupq;

fn scratch(name: &str) -> PathBuf {
    common::scratch("gguf", name)
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn reference() -> serde_json::Value {
    let text = include_str!("gguf_reference.json");
    serde_json::from_str(text).unwrap()
}

fn options(input: &Path, output: &Path, ftype: &str) -> GgufOptions {
    GgufOptions {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        ftype: Ftype::from_name(ftype).unwrap(),
        force: true,
        quiet: true,
        report: None,
        imatrix: None,
    }
}

/// Every model and every type: the same bytes as llama-quantize.
#[test]
fn every_type_matches_llama_quantize_byte_for_byte() {
    let refs = reference();
    let dir = scratch("ref");
    let mut checked = 0;
    let mut differ = Vec::new();
    for m in MODELS {
        let table = refs[m.name].as_object().unwrap();
        let input = dir.join(format!("{}.gguf", m.name));
        m.write(&input).unwrap();
        assert_eq!(
            sha256(&input),
            table["input"].as_str().unwrap(),
            "{}: the generated model is not the one llama-quantize was run on",
            m.name
        );
        for (ftype, expected) in table.iter().filter(|(k, _)| *k != "input") {
            let out = dir.join(format!("{}-{ftype}.gguf", m.name));
            quantize_gguf(&options(&input, &out, ftype)).unwrap();
            if sha256(&out) != expected.as_str().unwrap() {
                differ.push(format!("{} {ftype}", m.name));
            }
            std::fs::remove_file(&out).unwrap();
            checked += 1;
        }
    }
    assert_eq!(checked, MODELS.len() * 19);
    assert!(differ.is_empty(), "differ from llama-quantize: {differ:?}");
}

/// With llama-imatrix's importance matrix (GGUF and legacy formats, in
/// `tests/imatrix/`): the same bytes as llama-quantize with `--imatrix`
/// (`tests/gguf_imatrix_reference.json`, made by
/// `scripts/gguf_imatrix_reference.py`: the importance reaches the block
/// quantizers, the mixture's imatrix rules, Q2_K_S, and the four
/// `quantize.imatrix.*` keys the tool records). The binary runs in the
/// imatrix folder with the bare file name, which the output records.
#[test]
fn with_an_importance_matrix_every_type_matches_llama_quantize() {
    let refs: serde_json::Value =
        serde_json::from_str(include_str!("gguf_imatrix_reference.json")).unwrap();
    let imdir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/imatrix");
    let dir = scratch("imatrix");
    let (mut checked, mut differ) = (0, Vec::new());
    for m in MODELS {
        let table = refs[m.name].as_object().unwrap();
        let input = dir.join(format!("{}.gguf", m.name));
        m.write(&input).unwrap();
        assert_eq!(sha256(&input), table["input"].as_str().unwrap());
        for kind in ["gguf", "dat"] {
            let file = format!("{}.imatrix.{kind}", m.name);
            assert_eq!(
                sha256(&imdir.join(&file)),
                table[&format!("imatrix_{kind}")].as_str().unwrap()
            );
            for (key, expected) in table.iter() {
                let Some(ftype) = key.strip_suffix(&format!("/{kind}")) else {
                    continue;
                };
                // Every type with the GGUF file; a few with the legacy one.
                if kind == "dat" && !["Q4_0", "Q4_K_M", "IQ4_XS", "Q2_K_S"].contains(&ftype) {
                    continue;
                }
                let out = dir.join(format!("{}-{ftype}-{kind}.gguf", m.name));
                let status = Command::new(env!("CARGO_BIN_EXE_groupq"))
                    .current_dir(&imdir)
                    .args([
                        "quantize",
                        input.to_str().unwrap(),
                        "-o",
                        out.to_str().unwrap(),
                    ])
                    .args(["--format", "gguf", "--type", ftype, "--imatrix", &file])
                    .args(["--quiet", "--force"])
                    .status()
                    .unwrap();
                assert!(status.success(), "{} {ftype} {kind}", m.name);
                if sha256(&out) != expected.as_str().unwrap() {
                    differ.push(format!("{} {ftype} {kind}", m.name));
                }
                std::fs::remove_file(&out).unwrap();
                checked += 1;
            }
        }
    }
    assert_eq!(checked, MODELS.len() * (17 + 4));
    assert!(differ.is_empty(), "differ from llama-quantize: {differ:?}");
}

/// Q2_K_S without an importance matrix, a matrix of the wrong size and a
/// matrix that is not one are refused, naming the problem; `--imatrix`
/// with another format too.
#[test]
fn importance_matrix_errors() {
    let dir = scratch("imatrix-errors");
    let input = dir.join("in.gguf");
    model("f16-gqa4").unwrap().write(&input).unwrap();
    let out = dir.join("out.gguf");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "quantize",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        groupq(&args)
    };
    let (ok, _, err) = run(&["--format", "gguf", "--type", "Q2_K_S"]);
    assert!(
        !ok && err.contains("requires an importance matrix"),
        "{err}"
    );
    // Another model's matrix: the widths differ.
    let other =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/imatrix/f32-narrow.imatrix.gguf");
    let (ok, _, err) = run(&[
        "--format",
        "gguf",
        "--type",
        "Q4_K_M",
        "--imatrix",
        other.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("the importance matrix holds"), "{err}");
    let junk = dir.join("junk.dat");
    std::fs::write(&junk, b"not an imatrix").unwrap();
    let (ok, _, err) = run(&[
        "--format",
        "gguf",
        "--type",
        "Q4_0",
        "--imatrix",
        junk.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("not an importance matrix"), "{err}");
    let (ok, _, err) = run(&["--format", "gptq", "--imatrix", junk.to_str().unwrap()]);
    assert!(
        !ok && err.contains("--imatrix is for --format gguf"),
        "{err}"
    );
    assert!(!out.exists());
}

/// The binary's GGUF path: routing, the summary, the report, inspect and
/// dequantize.
#[test]
fn the_command_quantizes_inspects_and_dequantizes_gguf() {
    let dir = scratch("cmd");
    let input = dir.join("in.gguf");
    model("f16-gqa4").unwrap().write(&input).unwrap();
    let out = dir.join("sub/out.gguf");
    let report = dir.join("report.json");
    let (ok, stdout, stderr) = groupq(&[
        "quantize",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--format",
        "gguf",
        "--type",
        "q4_k_m",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("quantized to GGUF Q4_K_M"), "{stdout}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let tensors = r["tensors"].as_array().unwrap();
    // 4 layers × 7 matrices + token_embd + output.
    assert_eq!(tensors.len(), 30);
    for t in tensors {
        let sqnr = t["sqnr_db"].as_f64().unwrap();
        assert!(sqnr > 15.0 && sqnr < 60.0, "{t}");
    }
    let bytes = std::fs::read(&out).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.get("general.file_type"), Some(&Value::U32(15)));
    assert_eq!(g.metadata.last().unwrap().0, "general.file_type");
    let types: Vec<&str> = g.tensors.iter().map(|t| t.dtype.name()).collect();
    assert!(types.contains(&"Q4_K") && types.contains(&"Q6_K") && types.contains(&"F32"));

    let (ok, stdout, stderr) = groupq(&["inspect", out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("file type: 15 (Q4_K_M)"), "{stdout}");
    assert!(stdout.contains("blk.0.attn_q.weight"), "{stdout}");

    // Dequantized back to F32: every tensor within the quantization error.
    let back = dir.join("back.gguf");
    let (ok, _, stderr) = groupq(&[
        "dequantize",
        out.to_str().unwrap(),
        "-o",
        back.to_str().unwrap(),
        "--dtype",
        "float32",
    ]);
    assert!(ok, "{stderr}");
    let orig_bytes = std::fs::read(&input).unwrap();
    let orig = Gguf::parse(&orig_bytes).unwrap();
    let back_bytes = std::fs::read(&back).unwrap();
    let b = Gguf::parse(&back_bytes).unwrap();
    assert_eq!(b.get("general.file_type"), Some(&Value::U32(0)));
    for t in &b.tensors {
        let o = orig.tensor(&t.name).unwrap();
        assert_eq!(t.dims, o.dims);
        if o.dtype != GgmlDtype::F16 {
            continue;
        }
        assert_eq!(t.dtype, GgmlDtype::F32, "{}", t.name);
        let x: Vec<f32> = orig
            .tensor_data(o)
            .chunks_exact(2)
            .map(|c| groupq::half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        let y: Vec<f32> = b
            .tensor_data(t)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let (mut sig, mut err) = (0f64, 0f64);
        for (a, b) in x.iter().zip(&y) {
            sig += f64::from(*a) * f64::from(*a);
            err += f64::from(a - b) * f64::from(a - b);
        }
        let sqnr = 10.0 * (sig / err).log10();
        assert!(sqnr > 15.0, "{}: {sqnr} dB", t.name);
    }
}

#[test]
fn gguf_errors_are_clear_and_write_nothing() {
    let dir = scratch("err");
    let input = dir.join("in.gguf");
    model("f32-narrow").unwrap().write(&input).unwrap();
    let out = dir.join("out.gguf");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--format".into(), "gguf".into()],
            "--format gguf needs --type",
        ),
        (
            vec![
                "--format".into(),
                "gguf".into(),
                "--type".into(),
                "Q9_K".into(),
            ],
            "unknown GGUF type \"Q9_K\"",
        ),
        (vec!["--format".into(), "gptq".into()], "is a GGUF file"),
    ];
    for (extra, want) in cases {
        let mut args = vec!["quantize".to_string(), s(&input), "-o".into(), s(&out)];
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, stderr) = groupq(&args);
        assert!(!ok && stderr.contains(want), "{args:?}: {stderr}");
        assert!(!out.exists());
    }
    // A safetensors model with --format gguf says how to get a GGUF.
    let st = dir.join("model");
    groupq_cli::tiny::write_example_model(&st, true).unwrap();
    let (ok, _, stderr) = groupq(&[
        "quantize",
        &s(&st),
        "-o",
        &s(&out),
        "--format",
        "gguf",
        "--type",
        "Q4_0",
    ]);
    assert!(!ok && stderr.contains("convert_hf_to_gguf.py"), "{stderr}");
    // One part of a split model is refused: the other parts' tensors
    // would be missing.
    let bytes = std::fs::read(&input).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let mut w = groupq_cli::gguf::GgufWriter::new();
    for (k, v) in &g.metadata {
        w.push_kv(k, v.clone());
    }
    w.push_kv("split.count", Value::U16(2));
    for t in &g.tensors {
        w.push_tensor(&t.name, &t.dims, t.dtype).unwrap();
    }
    let mut split = Vec::new();
    w.write_header(&mut split).unwrap();
    for t in &g.tensors {
        w.write_tensor_data(&mut split, g.tensor_data(t)).unwrap();
    }
    let part = dir.join("part-00001-of-00002.gguf");
    std::fs::write(&part, split).unwrap();
    let e = quantize_gguf(&options(&part, &out, "Q4_0")).unwrap_err();
    assert!(format!("{e:#}").contains("split GGUF model"), "{e:#}");
    assert!(!out.exists());
    // Re-quantizing a quantized file is refused, as llama-quantize does.
    let q = dir.join("q.gguf");
    quantize_gguf(&options(&input, &q, "Q8_0")).unwrap();
    let e = quantize_gguf(&options(&q, &out, "Q4_0")).unwrap_err();
    assert!(
        format!("{e:#}").contains("requantizing from type Q8_0 is disabled"),
        "{e:#}"
    );
    assert!(!out.exists());
    // A truncated file is an error naming the file.
    let bytes = std::fs::read(&input).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = quantize_gguf(&options(&cut, &out, "Q4_0")).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("cut.gguf") && msg.contains("past the end"),
        "{msg}"
    );
    assert!(!out.exists());
    // Nothing left behind in the folder but what the test wrote.
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("groupq-tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
