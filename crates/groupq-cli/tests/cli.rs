//! End-to-end tests of the `groupq` command on generated LLaMA-shaped
//! models: every format re-reads into exactly the codes, scales and zero
//! points the library computes, the config has what loaders need,
//! everything else is copied bit for bit, `dequantize` round-trips, and bad
//! input is an error that writes nothing.

use groupq::half::{bf16, f16};
use groupq::pack::{self, GptqZeros};
use groupq::recipe::Recipe;
use groupq::*;
use groupq_cli::checkpoint::{Checkpoint, Shard};
use groupq_cli::formats::{Format, Spec};
use groupq_cli::tiny::{write_model, TinyConfig};
use safetensors::Dtype;
use serde_json::Value;
use std::path::{Path, PathBuf};

const SMALL: TinyConfig = TinyConfig {
    hidden: 64,
    intermediate: 128,
    layers: 2,
    heads: 2,
    kv_heads: 1,
    vocab: 96,
    shards: 2,
};

mod common;
use common::groupq;

fn scratch(name: &str) -> PathBuf {
    common::scratch("cli", name)
}

fn model(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    write_model(&m, &SMALL).unwrap();
    std::fs::write(m.join("tokenizer.json"), "{\"version\": \"1.0\"}").unwrap();
    m
}

fn read<T: Copy>(bytes: &[u8], f: impl Fn(&[u8]) -> T, n: usize) -> Vec<T> {
    bytes.chunks_exact(n).map(f).collect()
}
fn i32s(b: &[u8]) -> Vec<i32> {
    read(b, |c| i32::from_le_bytes(c.try_into().unwrap()), 4)
}
fn bf16s(b: &[u8]) -> Vec<bf16> {
    read(b, |c| bf16::from_le_bytes(c.try_into().unwrap()), 2)
}
fn f16s(b: &[u8]) -> Vec<f16> {
    read(b, |c| f16::from_le_bytes(c.try_into().unwrap()), 2)
}

/// The library's own codes, scales and zero points for a weight.
fn library<S: Element, Q: IntElement>(
    w: &[bf16],
    n: usize,
    k: usize,
    gs: usize,
    recipe: Recipe,
) -> (Vec<Q>, Vec<S>, Vec<i32>) {
    let stream = Stream::cpu();
    let g = k / gs;
    let desc = QuantizeDynamicPerGroupDescriptor {
        outer_size: n,
        axis_size: k,
        group_size: gs,
        recipe,
        input_element: ElementKind::Bf16,
        scale_element: S::KIND,
        output_element: Q::KIND,
    };
    let plan =
        QuantizeDynamicPerGroupPlan::<bf16, S, Q>::select(&stream, &desc, Default::default())
            .unwrap();
    let (mut q, mut s, mut z) = (
        vec![Q::default(); n * k],
        vec![S::from_f64(0.0); n * g],
        vec![0; n * g],
    );
    plan.run(
        &stream,
        Workspace::None,
        QuantizeDynamicPerGroupArgs {
            input: TensorRef::new(w, [n, k]).unwrap(),
            scale: TensorMut::new(&mut s, [n, g]).unwrap(),
            zero_point: TensorMut::new(&mut z, [n, g]).unwrap(),
            output: TensorMut::new(&mut q, [n, k]).unwrap(),
        },
    )
    .unwrap();
    (q, s, z)
}

fn transpose<T: Copy>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    (0..rows * cols)
        .map(|i| m[(i % rows) * cols + i / rows])
        .collect()
}

fn find<'a>(
    ckpt: &'a Checkpoint,
    name: &str,
) -> (&'a Shard, &'a groupq_cli::checkpoint::TensorInfo) {
    ckpt.tensors()
        .find(|(_, t)| t.name == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
}

fn check_format(format: &str, sym: bool) {
    let dir = scratch(&format!("{format}-{sym}"));
    let input = model(&dir);
    let output = dir.join("out");
    let report = dir.join("report.json");
    let mode = if sym { "--sym" } else { "--asym" };
    let (ok, stdout, stderr) = groupq(&[
        "quantize",
        input.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
        "--format",
        format,
        mode,
        "--group-size",
        "32",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("SQNR dB"), "{stdout}");
    let spec = Spec {
        format: match format {
            "gptq" => Format::Gptq,
            "awq" => Format::Awq,
            _ => Format::CompressedTensors,
        },
        bits: 4,
        group_size: 32,
        symmetric: sym,
    };
    let src = Checkpoint::open(&input).unwrap();
    let out = Checkpoint::open(&output).unwrap();

    // Every other file copied, the config extended.
    assert_eq!(
        std::fs::read(input.join("tokenizer.json")).unwrap(),
        std::fs::read(output.join("tokenizer.json")).unwrap()
    );
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["model_type"], "llama");
    let q = &config["quantization_config"];
    match spec.format {
        Format::Gptq => {
            assert_eq!(
                (
                    q["quant_method"].as_str(),
                    q["bits"].as_u64(),
                    q["group_size"].as_u64()
                ),
                (Some("gptq"), Some(4), Some(32))
            );
            assert_eq!(
                (q["sym"].as_bool(), q["desc_act"].as_bool()),
                (Some(sym), Some(false))
            );
            assert_eq!(q["checkpoint_format"], "gptq");
        }
        Format::Awq => {
            assert_eq!(
                (
                    q["quant_method"].as_str(),
                    q["bits"].as_u64(),
                    q["version"].as_str()
                ),
                (Some("awq"), Some(4), Some("gemm"))
            );
            assert_eq!(
                (q["zero_point"].as_bool(), q["group_size"].as_u64()),
                (Some(true), Some(32))
            );
        }
        Format::CompressedTensors => {
            assert_eq!(
                (q["quant_method"].as_str(), q["format"].as_str()),
                (Some("compressed-tensors"), Some("pack-quantized"))
            );
            let w = &q["config_groups"]["group_0"]["weights"];
            assert_eq!(
                (
                    w["num_bits"].as_u64(),
                    w["symmetric"].as_bool(),
                    w["strategy"].as_str()
                ),
                (Some(4), Some(sym), Some("group"))
            );
            assert_eq!(w["group_size"].as_u64(), Some(32));
            assert_eq!(q["config_groups"]["group_0"]["targets"][0], "Linear");
            assert!(q["ignore"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v == "lm_head"));
        }
    }
    // The index maps every tensor to the shard that holds it.
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(output.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    for (shard, t) in out.tensors() {
        assert_eq!(
            index["weight_map"][&t.name],
            shard.file_name.as_str(),
            "{}",
            t.name
        );
    }

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let reported = report["tensors"].as_array().unwrap();
    assert_eq!(reported.len(), 7 * SMALL.layers);
    let mut checked = 0;
    for (shard, t) in src.tensors() {
        let linear = t.name.contains("_proj.");
        if !linear {
            // Copied bit for bit.
            let (s2, t2) = find(&out, &t.name);
            assert_eq!(
                &shard.read(t).unwrap(),
                &s2.read(t2).unwrap(),
                "{} copied",
                t.name
            );
            continue;
        }
        let (n, k, gs) = (t.shape[0], t.shape[1], 32);
        let g = k / gs;
        let w = bf16s(&shard.read(t).unwrap());
        let p = t.name.trim_end_matches(".weight");
        let part = |s: &str| {
            let (sh, tt) = find(&out, &format!("{p}.{s}"));
            sh.read(tt).unwrap()
        };
        assert!(
            out.tensors().all(|(_, x)| x.name != t.name),
            "{} replaced",
            t.name
        );
        match spec.format {
            Format::Gptq => {
                let (codes, scale, zero) = library::<f32, u8>(&w, n, k, gs, spec.recipe());
                assert_eq!(
                    pack::gptq_qweight_unpack(&i32s(&part("qweight")), n, k, 4).unwrap(),
                    codes
                );
                assert_eq!(
                    pack::gptq_qzeros_unpack(&i32s(&part("qzeros")), n, g, 4, GptqZeros::V1)
                        .unwrap(),
                    zero
                );
                let s16: Vec<f16> = scale.iter().map(|&v| f16::from_f32(v)).collect();
                assert_eq!(f16s(&part("scales")), transpose(&s16, n, g));
                assert_eq!(
                    i32s(&part("g_idx")),
                    (0..k).map(|i| (i / gs) as i32).collect::<Vec<_>>()
                );
            }
            Format::Awq => {
                let (codes, scale, zero) = library::<f16, u8>(&w, n, k, gs, spec.recipe());
                assert_eq!(
                    pack::awq_qweight_unpack(&i32s(&part("qweight")), n, k, 4).unwrap(),
                    codes
                );
                assert_eq!(
                    pack::awq_qzeros_unpack(&i32s(&part("qzeros")), n, g, 4).unwrap(),
                    zero
                );
                assert_eq!(f16s(&part("scales")), transpose(&scale, n, g));
            }
            Format::CompressedTensors => {
                let (codes, scale, zero) = library::<bf16, i8>(&w, n, k, gs, spec.recipe());
                assert_eq!(
                    pack::compressed_tensors_weight_unpack(&i32s(&part("weight_packed")), n, k, 4)
                        .unwrap(),
                    codes
                );
                assert_eq!(bf16s(&part("weight_scale")), scale);
                let shape: Vec<i64> = read(
                    &part("weight_shape"),
                    |c| i64::from_le_bytes(c.try_into().unwrap()),
                    8,
                );
                assert_eq!(shape, vec![n as i64, k as i64]);
                if sym {
                    assert!(out
                        .tensors()
                        .all(|(_, x)| x.name != format!("{p}.weight_zero_point")));
                } else {
                    let zp = pack::compressed_tensors_zero_point_unpack(
                        &i32s(&part("weight_zero_point")),
                        n,
                        g,
                        4,
                    )
                    .unwrap();
                    assert_eq!(zp, zero);
                }
            }
        }
        let r = reported
            .iter()
            .find(|r| r["name"] == t.name.as_str())
            .unwrap();
        assert!(r["sqnr_db"].as_f64().unwrap() > 10.0, "{r}");
        checked += 1;
    }
    assert_eq!(checked, 7 * SMALL.layers);

    // dequantize: back to float weights, equal to the library's dequantization.
    let back = dir.join("back");
    let (ok, _, stderr) = groupq(&[
        "dequantize",
        output.to_str().unwrap(),
        "-o",
        back.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let back_ckpt = Checkpoint::open(&back).unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(back.join("config.json")).unwrap()).unwrap();
    assert!(config.get("quantization_config").is_none());
    assert_eq!(back_ckpt.tensors().count(), src.tensors().count());
    for (shard, t) in src.tensors() {
        let (s2, t2) = find(&back_ckpt, &t.name);
        assert_eq!(t.shape, t2.shape, "{}", t.name);
        if !t.name.contains("_proj.") {
            assert_eq!(&shard.read(t).unwrap(), &s2.read(t2).unwrap());
        }
    }
    let (ok, stdout, _) = groupq(&["inspect", back.to_str().unwrap()]);
    assert!(ok && stdout.contains("none (float checkpoint)"), "{stdout}");
    let (ok, stdout, _) = groupq(&["inspect", output.to_str().unwrap()]);
    assert!(
        ok && stdout.contains(&format!("({} quantized modules)", 7 * SMALL.layers)),
        "{stdout}"
    );
}

#[test]
fn gptq_symmetric() {
    check_format("gptq", true);
}

#[test]
fn gptq_asymmetric() {
    check_format("gptq", false);
}

#[test]
fn awq() {
    check_format("awq", false);
}

#[test]
fn compressed_tensors_symmetric() {
    check_format("compressed-tensors", true);
}

#[test]
fn compressed_tensors_asymmetric() {
    check_format("compressed-tensors", false);
}

fn fingerprint(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// A bad-input case: `groupq` fails, says `expect`, and writes nothing.
fn refused(input: &Path, output: &Path, extra: &[&str], expect: &str) {
    let before = input.is_dir().then(|| fingerprint(input));
    let existing = output.is_dir().then(|| fingerprint(output));
    let mut args = vec![
        "quantize",
        input.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
        "--format",
        "gptq",
    ];
    args.extend_from_slice(extra);
    let (ok, _, stderr) = groupq(&args);
    assert!(!ok, "{args:?} succeeded");
    assert!(stderr.contains(expect), "expected '{expect}' in: {stderr}");
    match existing {
        Some(before) => assert_eq!(
            fingerprint(output),
            before,
            "{} was modified",
            output.display()
        ),
        None => assert!(!output.exists(), "{} was written", output.display()),
    }
    let parent = output.parent().unwrap();
    assert!(
        std::fs::read_dir(parent).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("groupq-tmp")),
        "a temporary directory was left behind"
    );
    if let Some(before) = before {
        assert_eq!(fingerprint(input), before, "the input was modified");
    }
}

#[test]
fn bad_input_is_an_error_that_writes_nothing() {
    let dir = scratch("bad");
    let input = model(&dir);
    let out = dir.join("out");
    let shard = input.join("model-00002-of-00002.safetensors");
    let good = std::fs::read(&shard).unwrap();

    // Truncated data.
    std::fs::write(&shard, &good[..good.len() - 100]).unwrap();
    refused(&input, &out, &[], "model-00002-of-00002.safetensors");
    // A corrupt header.
    let mut corrupt = good.clone();
    corrupt[8..20].copy_from_slice(b"not json!!!!");
    std::fs::write(&shard, &corrupt).unwrap();
    refused(&input, &out, &[], "model-00002-of-00002.safetensors");
    // A header length beyond the file.
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&shard, &huge).unwrap();
    refused(&input, &out, &[], "model-00002-of-00002.safetensors");
    // An unknown dtype.
    let text = String::from_utf8_lossy(&good[..200]).into_owned();
    let at = text.find("\"BF16\"").unwrap();
    let mut unknown = good.clone();
    unknown[at..at + 6].copy_from_slice(b"\"BX16\"");
    std::fs::write(&shard, &unknown).unwrap();
    refused(&input, &out, &[], "model-00002-of-00002.safetensors");
    std::fs::write(&shard, &good).unwrap();

    // Shapes the group size does not divide: named, or kept with --skip-indivisible.
    refused(
        &input,
        &out,
        &["--group-size", "128"],
        "q_proj.weight [64, 64]",
    );
    // Group sizes the gptq loaders cannot load are refused up front.
    refused(&input, &out, &["--group-size", "48"], "--group-size 48");
    // down_proj has in_features 128, not a multiple of 256 either: with
    // every weight kept in float there is nothing to quantize.
    refused(
        &input,
        &out,
        &["--group-size", "256", "--skip-indivisible"],
        "nothing to quantize",
    );
    let (ok, _, stderr) = groupq(&[
        "quantize",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--format",
        "gptq",
        "--group-size",
        "128",
        "--skip-indivisible",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("q_proj.weight [64, 64] kept in"),
        "{stderr}"
    );
    let ckpt = Checkpoint::open(&out).unwrap();
    assert!(ckpt
        .tensors()
        .all(|(_, t)| !t.name.ends_with("q_proj.qweight")));
    assert!(ckpt
        .tensors()
        .any(|(_, t)| t.name.ends_with("down_proj.qweight")));
    // The loader is told: only down_proj is quantized in the blocks.
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["quantization_config"]["modules_in_block_to_quantize"],
        serde_json::json!([["mlp.down_proj"]])
    );

    // An existing output without --force; the input as output.
    refused(&input, &out, &[], "already exists");
    refused(&input, &input, &[], "is the input");
    // --force replaces it.
    let (ok, _, stderr) = groupq(&[
        "quantize",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--format",
        "gptq",
        "--force",
        "-q",
        "--group-size",
        "32",
    ]);
    assert!(ok, "{stderr}");
    assert!(Checkpoint::open(&out)
        .unwrap()
        .tensors()
        .any(|(_, t)| t.name.ends_with(".qweight")));
    // A quantized input is refused.
    refused(&out, &dir.join("twice"), &[], "already quantized");
    // A missing input.
    refused(&dir.join("nope"), &dir.join("out2"), &[], "no such file");
}

#[test]
fn single_file_input_and_ignore_patterns() {
    let dir = scratch("single");
    let input = model(&dir);
    let file = input.join("model-00001-of-00002.safetensors");
    let out = dir.join("out");
    let report = dir.join("r.json");
    let (ok, _, stderr) = groupq(&[
        "quantize",
        file.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--format",
        "compressed-tensors",
        "--group-size",
        "32",
        "--ignore",
        "*.mlp.down_proj",
        "-q",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let ckpt = Checkpoint::open(&out).unwrap();
    assert!(ckpt
        .tensors()
        .any(|(_, t)| t.name == "model.layers.0.mlp.down_proj.weight"));
    assert!(ckpt
        .tensors()
        .any(|(_, t)| t.name == "model.layers.0.mlp.up_proj.weight_packed"));
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let ignore = config["quantization_config"]["ignore"].as_array().unwrap();
    assert!(
        ignore.iter().any(|v| v == "model.layers.0.mlp.down_proj"),
        "{ignore:?}"
    );
}

#[test]
fn a_null_quantization_config_is_no_quantization() {
    let dir = scratch("null-config");
    let input = model(&dir);
    let config_path = input.join("config.json");
    let text = std::fs::read_to_string(&config_path).unwrap();
    let mut config: Value = serde_json::from_str(&text).unwrap();
    config["quantization_config"] = Value::Null;
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
    let out = dir.join("out");
    let (ok, _, stderr) = groupq(&[
        "quantize",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--format",
        "awq",
        "--group-size",
        "32",
        "-q",
    ]);
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(out.join("config.json")).unwrap();
    let config: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config["quantization_config"]["quant_method"], "awq");
}

#[test]
fn help_for_every_subcommand() {
    for sub in ["quantize", "dequantize", "inspect", "example-model"] {
        let (ok, stdout, _) = groupq(&[sub, "--help"]);
        assert!(ok && stdout.contains("Usage"), "{sub}: {stdout}");
    }
}

/// The model the README's main job quantizes is exactly what
/// `groupq example-model` writes.
#[test]
fn shipped_example_model_is_reproducible() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-llama");
    let dir = scratch("example");
    let fresh = dir.join("tiny-llama");
    let (ok, _, stderr) = groupq(&["example-model", fresh.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert_eq!(fingerprint(&fresh), fingerprint(&shipped));
}

/// Writes a one-shard checkpoint with these tensors (deterministic values)
/// and this config.
fn write_checkpoint(dir: &Path, config: Value, tensors: &[(&str, &[usize])], dtype: Dtype) {
    use groupq_cli::checkpoint::{write_safetensors, OutTensor};
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let outs: Vec<OutTensor> = tensors
        .iter()
        .map(|(n, s)| OutTensor::new(*n, dtype, s.to_vec()))
        .collect();
    let mut seed = 1u32;
    write_safetensors(
        &dir.join("model.safetensors"),
        &outs,
        None,
        |j, w: &mut dyn std::io::Write| {
            let n: usize = outs[j].shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect();
            let bytes: Vec<u8> = match dtype {
                Dtype::BF16 => values
                    .iter()
                    .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                    .collect(),
                _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            w.write_all(&bytes)?;
            Ok(())
        },
    )
    .unwrap();
}

fn quantize_to(input: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "quantize",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--force",
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = groupq(&args);
    (ok, stdout + &stderr)
}

fn quantization_config(out: &Path) -> Value {
    let c: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    c["quantization_config"].clone()
}

fn names(dir: &Path) -> Vec<String> {
    Checkpoint::open(dir)
        .unwrap()
        .tensors()
        .map(|(_, t)| t.name.clone())
        .collect()
}

/// A BERT encoder (`encoder.layer.N`, a pooler outside the blocks, no
/// `model.layers`), with a sentence-transformers sub-folder.
fn bert(dir: &Path) -> PathBuf {
    let m = dir.join("bert");
    let mut tensors: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.word_embeddings.weight".into(), vec![64, 32]),
        ("embeddings.LayerNorm.weight".into(), vec![32]),
        ("pooler.dense.weight".into(), vec![32, 32]),
        ("pooler.dense.bias".into(), vec![32]),
    ];
    for l in 0..2 {
        for (name, shape) in [
            ("attention.self.query.weight", vec![32, 32]),
            ("attention.self.key.weight", vec![32, 32]),
            ("attention.output.dense.weight", vec![32, 32]),
            ("intermediate.dense.weight", vec![64, 32]),
            ("output.dense.weight", vec![32, 64]),
            ("output.LayerNorm.weight", vec![32]),
        ] {
            tensors.push((format!("encoder.layer.{l}.{name}"), shape));
        }
    }
    let refs: Vec<(&str, &[usize])> = tensors
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    write_checkpoint(
        &m,
        serde_json::json!({"architectures": ["BertModel"], "model_type": "bert"}),
        &refs,
        Dtype::F32,
    );
    std::fs::create_dir_all(m.join("1_Pooling")).unwrap();
    std::fs::write(
        m.join("1_Pooling/config.json"),
        "{\"word_embedding_dimension\": 32}",
    )
    .unwrap();
    std::fs::write(m.join("modules.json"), "[]").unwrap();
    m
}

#[test]
fn gptq_names_the_blocks_of_a_bert_and_keeps_the_pooler_in_float() {
    let dir = scratch("bert-gptq");
    let input = bert(&dir);
    let out = dir.join("out");
    let (ok, text) = quantize_to(&input, &out, &["--format", "gptq", "--group-size", "32"]);
    assert!(ok, "{text}");
    let q = quantization_config(&out);
    // optimum's block patterns do not match BERT: the prefix is written.
    assert_eq!(q["block_name_to_quantize"], "encoder.layer");
    assert_eq!(q["modules_in_block_to_quantize"], Value::Null);
    assert_eq!(q["lm_head"], false);
    let n = names(&out);
    assert!(n.contains(&"pooler.dense.weight".to_string()), "{n:?}");
    assert!(n.contains(&"encoder.layer.1.output.dense.qweight".to_string()));
    assert_eq!(n.iter().filter(|t| t.ends_with(".qweight")).count(), 10);
    // The sub-folder travels, bit for bit.
    assert_eq!(
        std::fs::read(out.join("1_Pooling/config.json")).unwrap(),
        std::fs::read(input.join("1_Pooling/config.json")).unwrap()
    );

    // awq: the pooler stays in float too, and the loader is told.
    let (ok, text) = quantize_to(&input, &out, &["--format", "awq", "--group-size", "32"]);
    assert!(ok, "{text}");
    let q = quantization_config(&out);
    // (Embeddings are declared too: harmless, and safe where a name misleads.)
    assert_eq!(
        q["modules_to_not_convert"],
        serde_json::json!(["embeddings.word_embeddings", "pooler.dense"])
    );
    // compressed-tensors quantizes every Linear (as llm-compressor does).
    let (ok, text) = quantize_to(
        &input,
        &out,
        &["--format", "compressed-tensors", "--group-size", "32"],
    );
    assert!(ok, "{text}");
    assert!(names(&out).contains(&"pooler.dense.weight_packed".to_string()));
    // A LLaMA keeps the default block pattern: nothing written.
    let llama = model(&dir);
    let (ok, text) = quantize_to(&llama, &out, &["--format", "gptq", "--group-size", "32"]);
    assert!(ok, "{text}");
    assert_eq!(
        quantization_config(&out)["block_name_to_quantize"],
        Value::Null
    );
}

#[test]
fn ignored_layers_are_declared_to_every_loader() {
    let dir = scratch("ignore-loaders");
    let input = model(&dir);
    let out = dir.join("out");
    let gs = ["--group-size", "32"];
    // The same layer in every block: named inside the block.
    let (ok, text) = quantize_to(
        &input,
        &out,
        &[&["--format", "gptq", "--ignore", "*down_proj*"][..], &gs].concat(),
    );
    assert!(ok, "{text}");
    let q = quantization_config(&out);
    assert_eq!(
        q["modules_in_block_to_quantize"],
        serde_json::json!([[
            "mlp.gate_proj",
            "mlp.up_proj",
            "self_attn.k_proj",
            "self_attn.o_proj",
            "self_attn.q_proj",
            "self_attn.v_proj"
        ]])
    );
    assert!(q["dynamic"]
        .as_object()
        .unwrap()
        .contains_key(r"-:^model\.layers\.1\.mlp\.down_proj$"));
    // Only some blocks: full names.
    let (ok, text) = quantize_to(
        &input,
        &out,
        &[
            &["--format", "gptq", "--ignore", "model.layers.0.*"][..],
            &gs,
        ]
        .concat(),
    );
    assert!(ok, "{text}");
    let list = quantization_config(&out)["modules_in_block_to_quantize"][0].clone();
    let list: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(list.len(), 7);
    assert!(
        list.iter().all(|m| m.starts_with("model.layers.1.")),
        "{list:?}"
    );
    // awq and compressed-tensors list every Linear kept in float.
    for (format, key) in [
        ("awq", "modules_to_not_convert"),
        ("compressed-tensors", "ignore"),
    ] {
        let (ok, text) = quantize_to(
            &input,
            &out,
            &[&["--format", format, "--ignore", "*.1.mlp.*"][..], &gs].concat(),
        );
        assert!(ok, "{text}");
        assert_eq!(
            quantization_config(&out)[key],
            serde_json::json!([
                "lm_head",
                "model.embed_tokens",
                "model.layers.1.mlp.down_proj",
                "model.layers.1.mlp.gate_proj",
                "model.layers.1.mlp.up_proj"
            ]),
            "{format}"
        );
    }
    // A pattern matching nothing is worth a warning.
    let (ok, text) = quantize_to(
        &input,
        &out,
        &[&["--format", "awq", "--ignore", "nothing.here"][..], &gs].concat(),
    );
    assert!(
        ok && text.contains("--ignore nothing.here matches no Linear layer"),
        "{text}"
    );
}

#[test]
fn lm_head_is_quantized_only_where_the_loaders_read_it() {
    let dir = scratch("lm-head");
    let input = model(&dir);
    let out = dir.join("out");
    for format in ["gptq", "awq"] {
        let extra = [
            "--format",
            format,
            "--quantize-lm-head",
            "--group-size",
            "32",
        ];
        refused(
            &input,
            &out,
            &extra[2..],
            "--quantize-lm-head cannot be used",
        );
    }
    let (ok, text) = quantize_to(
        &input,
        &out,
        &[
            "--format",
            "compressed-tensors",
            "--quantize-lm-head",
            "--group-size",
            "32",
        ],
    );
    assert!(ok, "{text}");
    assert!(names(&out).contains(&"lm_head.weight_packed".to_string()));
    assert_eq!(
        quantization_config(&out)["ignore"],
        serde_json::json!(["model.embed_tokens"])
    );
}

#[test]
fn tied_output_heads_are_never_targeted() {
    let dir = scratch("tied");
    let m = dir.join("tied");
    write_checkpoint(
        &m,
        serde_json::json!({"architectures": ["MistralForCausalLM"], "model_type": "mistral", "tie_word_embeddings": true}),
        &[
            ("model.embed_tokens.weight", &[64, 32]),
            ("model.layers.0.mlp.up_proj.weight", &[64, 32]),
            ("model.layers.0.mlp.down_proj.weight", &[32, 64]),
        ],
        Dtype::BF16,
    );
    let out = dir.join("out");
    let (ok, text) = quantize_to(
        &m,
        &out,
        &[
            "--format",
            "compressed-tensors",
            "--group-size",
            "32",
            "--quantize-lm-head",
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains("no lm_head weight"), "{text}");
    assert_eq!(
        quantization_config(&out)["ignore"],
        serde_json::json!(["lm_head", "model.embed_tokens"])
    );
}

#[test]
fn gpt2_conv1d_layers() {
    let dir = scratch("gpt2");
    let m = dir.join("gpt2");
    write_checkpoint(
        &m,
        serde_json::json!({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}),
        &[
            ("transformer.wte.weight", &[64, 32]),
            ("transformer.h.0.attn.c_attn.weight", &[32, 96]),
            ("transformer.h.0.attn.c_proj.weight", &[32, 32]),
            ("transformer.h.0.mlp.c_fc.weight", &[32, 128]),
            ("transformer.h.0.mlp.c_proj.weight", &[128, 32]),
        ],
        Dtype::BF16,
    );
    let out = dir.join("out");
    let gs = ["--group-size", "32"];
    // Conv1D is not nn.Linear: nothing for compressed-tensors or awq.
    for format in ["compressed-tensors", "awq"] {
        let (ok, text) = quantize_to(&m, &out, &[&["--format", format][..], &gs].concat());
        assert!(
            !ok && text.contains("nothing to quantize") && text.contains("Conv1D"),
            "{text}"
        );
    }
    // gptq: transformers' GPT-2 init reads c_proj.weight.
    let (ok, text) = quantize_to(&m, &out, &[&["--format", "gptq"][..], &gs].concat());
    assert!(!ok && text.contains("--ignore '*.c_proj'"), "{text}");
    let (ok, text) = quantize_to(
        &m,
        &out,
        &[&["--format", "gptq", "--ignore", "*.c_proj"][..], &gs].concat(),
    );
    assert!(ok, "{text}");
    // The [in, out] weight is quantized as the [out, in] Linear it computes.
    let ckpt = Checkpoint::open(&out).unwrap();
    let (_, t) = find(&ckpt, "transformer.h.0.attn.c_attn.qweight");
    assert_eq!(t.shape, vec![32 / 8, 96]);
    let src = Checkpoint::open(&m).unwrap();
    let (s, t) = find(&src, "transformer.h.0.attn.c_attn.weight");
    let w = transpose(&bf16s(&s.read(t).unwrap()), 32, 96);
    let (codes, _, _) = library::<f32, u8>(&w, 96, 32, 32, Recipe::gptq(true, 4));
    let (s, t) = find(&ckpt, "transformer.h.0.attn.c_attn.qweight");
    assert_eq!(
        pack::gptq_qweight_unpack(&i32s(&s.read(t).unwrap()), 96, 32, 4).unwrap(),
        codes
    );
    // dequantize restores the Conv1D layout.
    let back = dir.join("back");
    let (ok, _, stderr) = groupq(&[
        "dequantize",
        out.to_str().unwrap(),
        "-o",
        back.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let ckpt = Checkpoint::open(&back).unwrap();
    assert_eq!(
        find(&ckpt, "transformer.h.0.attn.c_attn.weight").1.shape,
        vec![32, 96]
    );
}

#[test]
fn dequantize_writes_the_dtype_the_config_names() {
    let dir = scratch("dq-dtype");
    let input = model(&dir);
    let out = dir.join("out");
    let (ok, text) = quantize_to(&input, &out, &["--format", "gptq", "--group-size", "32"]);
    assert!(ok, "{text}");
    let q = Checkpoint::open(&out).unwrap();
    let p = "model.layers.0.mlp.up_proj";
    let part = |s: &str| {
        let (sh, t) = find(&q, &format!("{p}.{s}"));
        sh.read(t).unwrap()
    };
    let (n, k) = (SMALL.intermediate, SMALL.hidden);
    let codes = pack::gptq_qweight_unpack(&i32s(&part("qweight")), n, k, 4).unwrap();
    let zero =
        pack::gptq_qzeros_unpack(&i32s(&part("qzeros")), n, k / 32, 4, GptqZeros::V1).unwrap();
    let scale = transpose(&f16s(&part("scales")), k / 32, n);
    // What GPTQ loaders compute: s * (q - z) in float16.
    let loader: Vec<f16> = (0..n * k)
        .map(|i| {
            let (r, c) = (i / k, i % k);
            let g = r * (k / 32) + c / 32;
            f16::from_f32(scale[g].to_f32() * (codes[i] as i32 - zero[g]) as f32)
        })
        .collect();
    for (dtype, expect, name) in [
        (None, Dtype::BF16, "bfloat16"),
        (Some("float16"), Dtype::F16, "float16"),
        (Some("float32"), Dtype::F32, "float32"),
    ] {
        let back = dir.join(format!("back-{name}"));
        let mut args = vec![
            "dequantize",
            out.to_str().unwrap(),
            "-o",
            back.to_str().unwrap(),
        ];
        if let Some(d) = dtype {
            args.extend(["--dtype", d]);
        }
        let (ok, _, stderr) = groupq(&args);
        assert!(ok, "{stderr}");
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(back.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["torch_dtype"], name);
        let ckpt = Checkpoint::open(&back).unwrap();
        let (s, t) = find(&ckpt, &format!("{p}.weight"));
        assert_eq!(t.dtype, expect);
        let got: Vec<f32> = match expect {
            Dtype::BF16 => bf16s(&s.read(t).unwrap())
                .iter()
                .map(|v| v.to_f32())
                .collect(),
            Dtype::F16 => f16s(&s.read(t).unwrap())
                .iter()
                .map(|v| v.to_f32())
                .collect(),
            _ => read(
                &s.read(t).unwrap(),
                |c| f32::from_le_bytes(c.try_into().unwrap()),
                4,
            ),
        };
        let want: Vec<f32> = loader
            .iter()
            .map(|v| match expect {
                Dtype::BF16 => bf16::from_f32(v.to_f32()).to_f32(),
                _ => v.to_f32(),
            })
            .collect();
        assert_eq!(got, want, "{name}");
        // Unquantized tensors are copied as they are.
        let (s2, t2) = find(&ckpt, "model.norm.weight");
        assert_eq!(t2.dtype, Dtype::BF16);
        let src = Checkpoint::open(&input).unwrap();
        let (s1, t1) = find(&src, "model.norm.weight");
        assert_eq!(&s1.read(t1).unwrap(), &s2.read(t2).unwrap());
    }
}

#[test]
fn sub_folders_and_links_are_copied_and_asym_compressed_tensors_says_how_to_load() {
    let dir = scratch("subfolders");
    let input = model(&dir);
    std::fs::create_dir_all(input.join("2_Dense/deeper")).unwrap();
    std::fs::write(input.join("2_Dense/deeper/notes.txt"), "hello").unwrap();
    std::fs::create_dir_all(input.join(".git")).unwrap();
    std::fs::write(input.join(".git/HEAD"), "ref").unwrap();
    let target = dir.join("elsewhere.json");
    std::fs::write(&target, "{\"linked\": true}").unwrap();
    std::os::unix::fs::symlink(&target, input.join("special_tokens_map.json")).unwrap();
    // OUT inside IN: copied once, not into itself.
    let out = input.join("quantized");
    let (ok, text) = quantize_to(
        &input,
        &out,
        &[
            "--format",
            "compressed-tensors",
            "--asym",
            "--group-size",
            "32",
        ],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("CompressedTensorsConfig(dequantize=True)"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("2_Dense/deeper/notes.txt")).unwrap(),
        "hello"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("special_tokens_map.json")).unwrap(),
        "{\"linked\": true}"
    );
    assert!(!out.join(".git").exists());
    assert!(!out.join("quantized").exists());
    // Again with --force: the old OUT is not copied into the new one.
    let (ok, text) = quantize_to(
        &input,
        &out,
        &["--format", "gptq", "--group-size", "32", "-q"],
    );
    assert!(ok, "{text}");
    assert!(!out.join("quantized").exists());
    assert_eq!(
        std::fs::read_to_string(out.join("2_Dense/deeper/notes.txt")).unwrap(),
        "hello"
    );
}

#[test]
fn awq_writes_the_activation_scales_its_loader_expects() {
    let dir = scratch("awq-act");
    let m = dir.join("neox");
    write_checkpoint(
        &m,
        serde_json::json!({"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox"}),
        &[
            ("gpt_neox.embed_in.weight", &[64, 32]),
            ("gpt_neox.layers.0.mlp.dense_h_to_4h.weight", &[64, 32]),
            ("gpt_neox.layers.0.mlp.dense_4h_to_h.weight", &[32, 64]),
            ("embed_out.weight", &[64, 32]),
        ],
        Dtype::BF16,
    );
    let out = dir.join("out");
    let (ok, text) = quantize_to(&m, &out, &["--format", "awq", "--group-size", "32"]);
    assert!(ok, "{text}");
    let ckpt = Checkpoint::open(&out).unwrap();
    let (s, t) = find(&ckpt, "gpt_neox.layers.0.mlp.act.scales");
    assert_eq!((t.dtype, t.shape.clone()), (Dtype::BF16, vec![64]));
    assert!(bf16s(&s.read(t).unwrap()).iter().all(|v| *v == bf16::ONE));
    // `embed_out` (GPT-NeoX's head) is declared float to every loader.
    assert!(quantization_config(&out)["modules_to_not_convert"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v == "embed_out"));
    // Not a weight of the float model: dequantize drops it.
    let back = dir.join("back");
    let (ok, _, stderr) = groupq(&[
        "dequantize",
        out.to_str().unwrap(),
        "-o",
        back.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let mut got = names(&back);
    got.sort();
    let mut want = names(&m);
    want.sort();
    assert_eq!(got, want);
    // Other formats need no such tensor.
    let (ok, text) = quantize_to(&m, &out, &["--format", "gptq", "--group-size", "32"]);
    assert!(ok, "{text}");
    assert!(!names(&out).iter().any(|n| n.ends_with("act.scales")));
}

#[test]
fn missing_parents_of_the_output_are_created() {
    let dir = scratch("parents");
    let input = model(&dir);
    let out = dir.join("a/b/c");
    let (ok, text) = quantize_to(
        &input,
        &out,
        &["--format", "awq", "--group-size", "32", "-q"],
    );
    assert!(ok, "{text}");
    assert!(Checkpoint::open(&out).is_ok());
    // Still refused: an output inside which the input lies.
    let (ok, text) = quantize_to(&input, &dir, &["--format", "awq", "--group-size", "32"]);
    assert!(!ok && text.contains("contains the input"), "{text}");
    assert!(input.join("config.json").is_file());
}
