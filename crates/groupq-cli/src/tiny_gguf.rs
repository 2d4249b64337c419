//! Small LLaMA-architecture GGUF models (F32, F16 or BF16 weights, an SPM
//! tokenizer with byte tokens, every hyper-parameter llama.cpp needs to load
//! them): `groupq example-model OUT.gguf --gguf NAME` writes them, the tests
//! quantize them, and `scripts/gguf_reference.py` runs the real
//! llama-quantize on them. Deterministic: the same name gives the same bytes.

use crate::gguf::{Array, GgmlDtype, GgufWriter, Value, ValueType};
use anyhow::{bail, Context, Result};
use groupq::half::f16;
use std::io::{BufWriter, Write};
use std::path::Path;

/// The shape of one test model.
#[derive(Debug, Clone, Copy)]
pub struct TinyGguf {
    pub name: &'static str,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_vocab: usize,
    pub dtype: GgmlDtype,
    pub tied: bool,
    pub seed: u64,
}

/// The models of the file-level tests, chosen to meet llama-quantize's
/// rules: grouped-query attention (n_gqa 4 and 1), tied embeddings, rows
/// that are not whole 256-blocks (the K-quant fallbacks), every input
/// dtype, and more than ten layers (blk.9 before blk.10).
pub const MODELS: &[TinyGguf] = &[
    TinyGguf {
        name: "f16-gqa4",
        n_layer: 4,
        n_embd: 256,
        n_ff: 512,
        n_head: 8,
        n_head_kv: 2,
        n_vocab: 320,
        dtype: GgmlDtype::F16,
        tied: false,
        seed: 1,
    },
    TinyGguf {
        name: "bf16-tied",
        n_layer: 3,
        n_embd: 256,
        n_ff: 352,
        n_head: 4,
        n_head_kv: 4,
        n_vocab: 288,
        dtype: GgmlDtype::BF16,
        tied: true,
        seed: 2,
    },
    TinyGguf {
        name: "f32-narrow",
        n_layer: 11,
        n_embd: 128,
        n_ff: 256,
        n_head: 4,
        n_head_kv: 1,
        n_vocab: 272,
        dtype: GgmlDtype::F32,
        tied: false,
        seed: 3,
    },
];

/// A model of [`MODELS`] by name.
pub fn model(name: &str) -> Result<TinyGguf> {
    match MODELS.iter().find(|m| m.name == name) {
        Some(m) => Ok(*m),
        None => bail!(
            "no example GGUF model {name:?}: choose one of {}",
            MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// xorshift64* and a Box–Muller normal: the same numbers on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

fn strings(v: &[String]) -> Value {
    Value::Array(Array::Strings(
        v.iter().map(|s| s.as_bytes().to_vec()).collect(),
    ))
}

fn fixed<T: Copy, const N: usize>(ty: ValueType, v: &[T], bytes: impl Fn(T) -> [u8; N]) -> Value {
    Value::Array(Array::Fixed {
        ty,
        len: v.len() as u64,
        bytes: v.iter().flat_map(|&x| bytes(x)).collect(),
    })
}

impl TinyGguf {
    /// The tokenizer: `<unk>`, `<s>`, `</s>`, 256 byte tokens, then pieces.
    fn vocab(&self) -> (Vec<String>, Vec<f32>, Vec<i32>) {
        let mut toks: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
        let mut scores = vec![0.0f32; 3];
        let mut types = vec![2i32, 3, 3];
        for b in 0..256 {
            toks.push(format!("<0x{b:02X}>"));
            scores.push(0.0);
            types.push(6);
        }
        let letters: Vec<char> = ('a'..='z').collect();
        let mut pieces = vec!["\u{2581}".to_string()];
        pieces.extend(letters.iter().map(|c| c.to_string()));
        pieces.extend(letters.iter().map(|c| format!("\u{2581}{c}")));
        for a in &letters {
            for b in &letters {
                pieces.push(format!("{a}{b}"));
            }
        }
        for (i, p) in pieces.into_iter().enumerate() {
            if toks.len() >= self.n_vocab {
                break;
            }
            toks.push(p);
            scores.push(-(i as f32 + 1.0));
            types.push(1);
        }
        (toks, scores, types)
    }

    /// `(name, dims in ggml order, is a weight matrix)` in file order.
    fn tensors(&self) -> Vec<(String, Vec<u64>, bool)> {
        let (e, ff, v) = (self.n_embd as u64, self.n_ff as u64, self.n_vocab as u64);
        let kv = (self.n_head_kv * (self.n_embd / self.n_head)) as u64;
        let mut t = vec![("token_embd.weight".to_string(), vec![e, v], true)];
        for i in 0..self.n_layer {
            let b = |n: &str| format!("blk.{i}.{n}.weight");
            t.push((b("attn_norm"), vec![e], false));
            t.push((b("attn_q"), vec![e, e], true));
            t.push((b("attn_k"), vec![e, kv], true));
            t.push((b("attn_v"), vec![e, kv], true));
            t.push((b("attn_output"), vec![e, e], true));
            t.push((b("ffn_norm"), vec![e], false));
            t.push((b("ffn_gate"), vec![e, ff], true));
            t.push((b("ffn_up"), vec![e, ff], true));
            t.push((b("ffn_down"), vec![ff, e], true));
        }
        t.push(("output_norm.weight".to_string(), vec![e], false));
        if !self.tied {
            t.push(("output.weight".to_string(), vec![e, v], true));
        }
        t
    }

    /// Writes the model to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut w = GgufWriter::new();
        let s = |v: &str| Value::String(v.as_bytes().to_vec());
        let u = |v: usize| Value::U32(v as u32);
        w.push_kv("general.architecture", s("llama"));
        w.push_kv("general.name", s(self.name));
        w.push_kv("llama.context_length", u(2048));
        w.push_kv("llama.embedding_length", u(self.n_embd));
        w.push_kv("llama.block_count", u(self.n_layer));
        w.push_kv("llama.feed_forward_length", u(self.n_ff));
        w.push_kv("llama.attention.head_count", u(self.n_head));
        w.push_kv("llama.attention.head_count_kv", u(self.n_head_kv));
        w.push_kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
        w.push_kv("llama.rope.dimension_count", u(self.n_embd / self.n_head));
        w.push_kv("llama.rope.freq_base", Value::F32(10000.0));
        w.push_kv("llama.vocab_size", u(self.n_vocab));
        let file_type = match self.dtype.id() {
            0 => 0,
            1 => 1,
            _ => 32,
        };
        w.push_kv("general.file_type", Value::U32(file_type));
        let (toks, scores, types) = self.vocab();
        w.push_kv("tokenizer.ggml.model", s("llama"));
        w.push_kv("tokenizer.ggml.tokens", strings(&toks));
        w.push_kv(
            "tokenizer.ggml.scores",
            fixed(ValueType::F32, &scores, f32::to_le_bytes),
        );
        w.push_kv(
            "tokenizer.ggml.token_type",
            fixed(ValueType::I32, &types, i32::to_le_bytes),
        );
        w.push_kv("tokenizer.ggml.bos_token_id", Value::U32(1));
        w.push_kv("tokenizer.ggml.eos_token_id", Value::U32(2));
        w.push_kv("tokenizer.ggml.unknown_token_id", Value::U32(0));
        w.push_kv("tokenizer.ggml.add_bos_token", Value::Bool(1));
        w.push_kv("tokenizer.ggml.add_eos_token", Value::Bool(0));
        let tensors = self.tensors();
        for (name, dims, matrix) in &tensors {
            w.push_tensor(
                name,
                dims,
                if *matrix { self.dtype } else { GgmlDtype::F32 },
            )?;
        }
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = BufWriter::new(file);
        w.write_header(&mut out)?;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ self.seed.wrapping_mul(0x1000_0000_01b3));
        for (_, dims, matrix) in &tensors {
            let n: u64 = dims.iter().product();
            let data: Vec<u8> = if *matrix {
                let values = (0..n).map(|_| {
                    let x = rng.normal() * 0.02;
                    // About 0.1 % outliers, twenty times larger.
                    if rng.next().is_multiple_of(1000) {
                        x * 20.0
                    } else {
                        x
                    }
                });
                match self.dtype.id() {
                    0 => values.flat_map(f32::to_le_bytes).collect(),
                    1 => values
                        .flat_map(|x| f16::from_f32(x).to_le_bytes())
                        .collect(),
                    // bf16 by truncation: any bf16 is a valid weight.
                    _ => values
                        .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
                        .collect(),
                }
            } else {
                (0..n)
                    .flat_map(|_| (1.0 + 0.1 * rng.normal()).to_le_bytes())
                    .collect()
            };
            w.write_tensor_data(&mut out, &data)?;
        }
        out.flush()?;
        Ok(())
    }
}
