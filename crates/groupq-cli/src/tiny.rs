//! A small, deterministic, LLaMA-shaped model: for the README's main job,
//! the tests, and anyone trying groupq out without downloading weights.

use crate::checkpoint::{write_safetensors, OutTensor, INDEX};
use anyhow::{bail, Result};
use groupq::half::bf16;
use safetensors::Dtype;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// A byte-level BPE tokenizer of 1024 tokens (`<unk>`, `<s>`, `</s>`, the
/// 256 bytes, merges learned from the README by `scripts/make_tokenizer.py`):
/// it encodes any text into the model's vocabulary.
pub const TOKENIZER: &str = include_str!("tiny_tokenizer.json");

/// The model's dimensions.
#[derive(Debug, Clone, Copy)]
pub struct TinyConfig {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    /// Number of safetensors shards (layers are split evenly).
    pub shards: usize,
}

impl TinyConfig {
    /// About 7 MB in bf16: 4 layers, hidden 256, MLP 768, 4 heads (2 KV).
    pub const EXAMPLE: TinyConfig = TinyConfig {
        hidden: 256,
        intermediate: 768,
        layers: 4,
        heads: 4,
        kv_heads: 2,
        vocab: 1024,
        shards: 2,
    };
}

/// splitmix64 → approximately normal values (sum of uniforms), with a few
/// outliers as in trained weights.
struct Values(u64);
impl Values {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn weight(&mut self) -> bf16 {
        let normal = (0..4).map(|_| self.uniform()).sum::<f64>() - 2.0; // variance 1/3
        let outlier = if self.uniform() < 0.002 { 8.0 } else { 1.0 };
        bf16::from_f64(normal * 0.035 * outlier)
    }
}

/// The tensors of the model, shard by shard: `(name, shape, is_norm)`.
fn layout(c: &TinyConfig) -> Vec<Vec<(String, Vec<usize>, bool)>> {
    let head_dim = c.hidden / c.heads;
    let kv = c.kv_heads * head_dim;
    let mut shards = vec![Vec::new(); c.shards.max(1)];
    shards[0].push((
        "model.embed_tokens.weight".into(),
        vec![c.vocab, c.hidden],
        false,
    ));
    for l in 0..c.layers {
        let shard = l * shards.len() / c.layers.max(1);
        let p = format!("model.layers.{l}");
        for (name, shape, norm) in [
            ("input_layernorm.weight", vec![c.hidden], true),
            ("self_attn.q_proj.weight", vec![c.hidden, c.hidden], false),
            ("self_attn.k_proj.weight", vec![kv, c.hidden], false),
            ("self_attn.v_proj.weight", vec![kv, c.hidden], false),
            ("self_attn.o_proj.weight", vec![c.hidden, c.hidden], false),
            ("post_attention_layernorm.weight", vec![c.hidden], true),
            (
                "mlp.gate_proj.weight",
                vec![c.intermediate, c.hidden],
                false,
            ),
            ("mlp.up_proj.weight", vec![c.intermediate, c.hidden], false),
            (
                "mlp.down_proj.weight",
                vec![c.hidden, c.intermediate],
                false,
            ),
        ] {
            shards[shard].push((format!("{p}.{name}"), shape, norm));
        }
    }
    let last = shards.len() - 1;
    shards[last].push(("model.norm.weight".into(), vec![c.hidden], true));
    shards[last].push(("lm_head.weight".into(), vec![c.vocab, c.hidden], false));
    shards
}

/// Writes the model to `dir`: `config.json`, `generation_config.json`, the
/// tokenizer, the shards and `model.safetensors.index.json`.
pub fn write_model(dir: &Path, c: &TinyConfig) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.hidden,
        "intermediate_size": c.intermediate,
        "num_hidden_layers": c.layers,
        "num_attention_heads": c.heads,
        "num_key_value_heads": c.kv_heads,
        "vocab_size": c.vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)? + "\n",
    )?;
    std::fs::write(
        dir.join("generation_config.json"),
        serde_json::to_string_pretty(&json!({"bos_token_id": 1, "eos_token_id": 2}))? + "\n",
    )?;
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 2048,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<unk>",
            "clean_up_tokenization_spaces": false,
        }))? + "\n",
    )?;
    std::fs::write(dir.join("tokenizer.json"), TOKENIZER)?;
    let mut values = Values(0x6772_6f75_7071);
    let shards = layout(c);
    let count = shards.len();
    let (mut weight_map, mut total) = (BTreeMap::new(), 0usize);
    for (i, tensors) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        let outs: Vec<OutTensor> = tensors
            .iter()
            .map(|(n, s, _)| OutTensor::new(n.clone(), Dtype::BF16, s.clone()))
            .collect();
        for o in &outs {
            weight_map.insert(o.name.clone(), file.clone());
            total += o.bytes();
        }
        let metadata: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        write_safetensors(
            &dir.join(&file),
            &outs,
            Some(&metadata),
            |j, w: &mut dyn Write| {
                let (_, shape, norm) = &tensors[j];
                let n: usize = shape.iter().product();
                let bytes: Vec<u8> = (0..n)
                    .flat_map(|_| if *norm { bf16::ONE } else { values.weight() }.to_le_bytes())
                    .collect();
                w.write_all(&bytes)?;
                Ok(())
            },
        )?;
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(
        dir.join(INDEX),
        serde_json::to_string_pretty(&index)? + "\n",
    )?;
    Ok(())
}

/// `groupq example-model`: [`TinyConfig::EXAMPLE`] into `dir`.
pub fn write_example_model(dir: &Path, force: bool) -> Result<()> {
    if dir.exists() {
        if !force {
            bail!(
                "{} already exists (use --force to replace it)",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir)?;
    }
    write_model(dir, &TinyConfig::EXAMPLE)
}
