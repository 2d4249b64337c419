//! What a checkpoint's tensor names say about the model: which tensors are
//! the weights of Linear layers, where the repeated blocks are
//! (`model.layers.N`, `encoder.layer.N`, `transformer.h.N`, …), and which
//! module names exist. The formats use this to quantize exactly the layers
//! their loaders will read back as quantized.

use crate::checkpoint::{Checkpoint, TensorInfo};
use safetensors::Dtype;
use serde_json::Value;
use std::collections::BTreeSet;

/// Model types whose blocks use transformers' `Conv1D` (weight stored
/// `[in_features, out_features]`) instead of `nn.Linear`.
pub const CONV1D_MODEL_TYPES: &[&str] = &[
    "gpt2",
    "openai-gpt",
    "imagegpt",
    "decision_transformer",
    "clvp",
];

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16)
}

/// The module of a matrix weight (a rank-2 float `*.weight`): a Linear,
/// `Conv1D` or embedding layer's.
fn matrix_module(t: &TensorInfo) -> Option<&str> {
    t.name
        .strip_suffix(".weight")
        .filter(|_| t.shape.len() == 2 && is_float(t.dtype))
}

/// Whether a tensor is the weight of a Linear (or `Conv1D`) layer: a matrix
/// weight that is not an embedding or a norm.
pub fn is_linear_weight(t: &TensorInfo) -> bool {
    matrix_module(t).is_some_and(|module| {
        let lower = module.to_lowercase();
        let last = lower.rsplit('.').next().unwrap_or("");
        !["embed", "norm", "wte", "wpe", "relative_attention_bias"]
            .iter()
            .any(|s| lower.contains(s))
            && last != "shared"
    })
}

/// Whether a module is the output head (`lm_head`).
pub fn is_lm_head(module: &str) -> bool {
    module.to_lowercase().contains("lm_head")
}

/// Output heads that a checkpoint with tied word embeddings omits (their
/// weight is the embedding's), though the loaded model has them as Linear
/// layers: `lm_head`, and BERT's masked-LM decoder when its head is there.
pub fn absent_output_heads(layout: &Layout) -> Vec<&'static str> {
    let mut heads = Vec::new();
    if !layout.matrices.contains("lm_head") {
        heads.push("lm_head");
    }
    // RoBERTa-style `lm_head.decoder`, BERT's `cls.predictions.decoder`.
    for (parent, head) in [
        ("lm_head", "lm_head.decoder"),
        ("cls.predictions", "cls.predictions.decoder"),
    ] {
        if layout.modules.contains(parent)
            && !layout.matrices.contains(parent)
            && !layout.matrices.contains(head)
        {
            heads.push(head);
        }
    }
    heads
}

/// The repeated-block stack a module belongs to: the name before its first
/// numeric component (`model.layers` for `model.layers.3.mlp.up_proj`), when
/// a named module follows the index.
pub fn stack_of(module: &str) -> Option<&str> {
    let mut start = 0;
    let parts: Vec<&str> = module.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 && i + 1 < parts.len() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
            return Some(&module[..start - 1]);
        }
        start += p.len() + 1;
    }
    None
}

/// The position of a module inside its block: `mlp.up_proj` for
/// `model.layers.3.mlp.up_proj`.
pub fn name_in_block(module: &str) -> Option<&str> {
    let stack = stack_of(module)?;
    let rest = &module[stack.len() + 1..];
    rest.split_once('.').map(|(_, r)| r)
}

/// The Linear layers of a checkpoint and the modules around them.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Every module name the tensor names imply (each proper dot-prefix of
    /// a tensor name), as `model.named_modules()` would list them.
    pub modules: BTreeSet<String>,
    /// Modules whose weight is a Linear (or `Conv1D`) layer's.
    pub linears: BTreeSet<String>,
    /// Modules with a rank-2 float weight: the Linear layers and whatever
    /// else might be one to a loader (`embed_out`, embeddings). Everything
    /// here that is not quantized is declared to the loaders as float.
    pub matrices: BTreeSet<String>,
    /// The block stacks, in the order of their first Linear layer.
    pub stacks: Vec<String>,
    /// The model's blocks use `Conv1D` (GPT-2 and relatives).
    pub conv1d: bool,
    /// `config.json`'s `model_type`, if any.
    pub model_type: Option<String>,
}

impl Layout {
    pub fn of(ckpt: &Checkpoint) -> Layout {
        let infos: Vec<&TensorInfo> = ckpt.tensors().map(|(_, t)| t).collect();
        Layout::from_tensors(&infos, ckpt.config.as_ref())
    }

    pub fn from_tensors(tensors: &[&TensorInfo], config: Option<&Value>) -> Layout {
        let model_type = config
            .and_then(|c| c["model_type"].as_str())
            .map(String::from);
        let conv1d = model_type
            .as_deref()
            .is_some_and(|m| CONV1D_MODEL_TYPES.contains(&m));
        let mut layout = Layout {
            conv1d,
            model_type,
            ..Layout::default()
        };
        for t in tensors {
            let mut end = 0;
            while let Some(dot) = t.name[end..].find('.') {
                end += dot;
                layout.modules.insert(t.name[..end].to_string());
                end += 1;
            }
            if let Some(m) = matrix_module(t) {
                layout.matrices.insert(m.to_string());
            }
            if is_linear_weight(t) {
                let module = t.name.trim_end_matches(".weight").to_string();
                if let Some(stack) = stack_of(&module) {
                    if !layout.stacks.iter().any(|s| s == stack) {
                        layout.stacks.push(stack.to_string());
                    }
                }
                layout.linears.insert(module);
            }
        }
        layout
    }

    /// Whether a Linear module is a `Conv1D` (`[in, out]` weight): in a
    /// Conv1D model, every layer of the blocks is.
    pub fn is_conv1d(&self, module: &str) -> bool {
        self.conv1d && stack_of(module).is_some()
    }

    /// A Linear weight's `(out_features, in_features)`: its shape, reversed
    /// for a `Conv1D` (stored `[in, out]`).
    pub fn out_in(&self, t: &TensorInfo) -> (usize, usize) {
        let module = t.name.trim_end_matches(".weight");
        if self.is_conv1d(module) {
            (t.shape[1], t.shape[0])
        } else {
            (t.shape[0], t.shape[1])
        }
    }

    /// The Linear layers inside a block stack (`stack` itself is a prefix,
    /// as the loaders match it: `name.startswith(stack)`).
    pub fn matrices_under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.matrices.iter().filter(move |m| m.starts_with(prefix))
    }

    pub fn linears_under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.linears.iter().filter(move |m| m.starts_with(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_and_positions() {
        assert_eq!(stack_of("model.layers.3.mlp.up_proj"), Some("model.layers"));
        assert_eq!(
            stack_of("encoder.layer.11.attention.self.query"),
            Some("encoder.layer")
        );
        assert_eq!(
            stack_of("transformer.h.0.attn.c_attn"),
            Some("transformer.h")
        );
        assert_eq!(stack_of("layers.0.mlp.experts.7.w1"), Some("layers"));
        assert_eq!(stack_of("lm_head"), None);
        assert_eq!(stack_of("pooler.dense"), None);
        assert_eq!(stack_of("classifier.0"), None);
        assert_eq!(
            name_in_block("model.layers.3.mlp.up_proj"),
            Some("mlp.up_proj")
        );
        assert_eq!(name_in_block("lm_head"), None);
    }

    fn info(name: &str, shape: &[usize], dtype: Dtype) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            start: 0,
            end: 0,
        }
    }

    #[test]
    fn linear_weights() {
        let yes = [
            info("model.layers.0.mlp.up_proj.weight", &[8, 4], Dtype::BF16),
            info("lm_head.weight", &[8, 4], Dtype::F32),
            info("pooler.dense.weight", &[4, 4], Dtype::F16),
        ];
        let no = [
            info("model.embed_tokens.weight", &[8, 4], Dtype::BF16),
            info("embeddings.LayerNorm.weight", &[4], Dtype::F32),
            info("model.layers.0.mlp.up_proj.bias", &[8], Dtype::F32),
            info("transformer.wte.weight", &[8, 4], Dtype::F32),
            info("shared.weight", &[8, 4], Dtype::F32),
            info(
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                &[32, 8],
                Dtype::F32,
            ),
            info(
                "model.layers.0.mlp.up_proj.weight_packed",
                &[8, 1],
                Dtype::I32,
            ),
            info("x.weight", &[8, 4], Dtype::I8),
        ];
        assert!(yes.iter().all(is_linear_weight));
        assert!(!no.iter().any(is_linear_weight));
    }

    #[test]
    fn layout_of_a_bert() {
        let t = [
            info("embeddings.word_embeddings.weight", &[30, 4], Dtype::F32),
            info(
                "encoder.layer.0.attention.self.query.weight",
                &[4, 4],
                Dtype::F32,
            ),
            info(
                "encoder.layer.1.attention.self.query.weight",
                &[4, 4],
                Dtype::F32,
            ),
            info("pooler.dense.weight", &[4, 4], Dtype::F32),
        ];
        let refs: Vec<&TensorInfo> = t.iter().collect();
        let l = Layout::from_tensors(&refs, Some(&serde_json::json!({"model_type": "bert"})));
        assert_eq!(l.stacks, vec!["encoder.layer"]);
        assert_eq!(l.linears.len(), 3);
        assert!(l.modules.contains("encoder.layer.1.attention"));
        assert!(l.modules.contains("encoder"));
        assert!(!l.modules.contains("pooler.dense.weight"));
        assert!(!l.conv1d);
        assert_eq!(l.linears_under("encoder.layer").count(), 2);
    }
}
