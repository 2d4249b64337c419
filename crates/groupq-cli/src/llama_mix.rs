//! llama-quantize's file types (`Q4_K_M`, …) and the per-tensor type each
//! gives a model: which tensors are quantized, to which ggml type, and in
//! which order they are written. Reproduces `llama_model_quantize` of
//! llama.cpp (its `llama_tensor_get_type`) for the file types groupq writes.

use crate::gguf::{GgmlDtype, Gguf, Value};
use anyhow::{bail, Result};
use std::cmp::Ordering;

/// A llama-quantize file type: its name, its `general.file_type` number and
/// its base tensor type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ftype {
    pub name: &'static str,
    pub id: u32,
    pub base: GgmlDtype,
}

const fn t(id: u32) -> GgmlDtype {
    GgmlDtype::const_from_id(id)
}

/// Every file type groupq writes, as llama-quantize names them.
pub const FTYPES: &[Ftype] = &[
    Ftype {
        name: "Q4_0",
        id: 2,
        base: t(2),
    },
    Ftype {
        name: "Q4_1",
        id: 3,
        base: t(3),
    },
    Ftype {
        name: "Q5_0",
        id: 8,
        base: t(6),
    },
    Ftype {
        name: "Q5_1",
        id: 9,
        base: t(7),
    },
    Ftype {
        name: "Q8_0",
        id: 7,
        base: t(8),
    },
    Ftype {
        name: "Q2_K",
        id: 10,
        base: t(10),
    },
    Ftype {
        name: "Q2_K_S",
        id: 21,
        base: t(10),
    },
    Ftype {
        name: "Q3_K_S",
        id: 11,
        base: t(11),
    },
    Ftype {
        name: "Q3_K_M",
        id: 12,
        base: t(11),
    },
    Ftype {
        name: "Q3_K_L",
        id: 13,
        base: t(11),
    },
    Ftype {
        name: "Q4_K_S",
        id: 14,
        base: t(12),
    },
    Ftype {
        name: "Q4_K_M",
        id: 15,
        base: t(12),
    },
    Ftype {
        name: "Q5_K_S",
        id: 16,
        base: t(13),
    },
    Ftype {
        name: "Q5_K_M",
        id: 17,
        base: t(13),
    },
    Ftype {
        name: "Q6_K",
        id: 18,
        base: t(14),
    },
    Ftype {
        name: "IQ4_NL",
        id: 25,
        base: t(20),
    },
    Ftype {
        name: "IQ4_XS",
        id: 30,
        base: t(23),
    },
    Ftype {
        name: "F16",
        id: 1,
        base: t(1),
    },
    Ftype {
        name: "BF16",
        id: 32,
        base: t(30),
    },
    Ftype {
        name: "F32",
        id: 0,
        base: t(0),
    },
];

impl Ftype {
    /// The file type named `name` (case-insensitive).
    pub fn from_name(name: &str) -> Result<Ftype> {
        match FTYPES.iter().find(|f| f.name.eq_ignore_ascii_case(name)) {
            Some(f) => Ok(*f),
            None => bail!(
                "unknown GGUF type {name:?}: choose one of {}",
                FTYPES.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    fn is(&self, name: &str) -> bool {
        self.name == name
    }

    /// Whether the base type is a block-quantized one (the mixture rules
    /// apply only then).
    fn quantized(&self) -> bool {
        self.base.block_size() > 1
    }
}

/// ggml's tensor order in llama.cpp (`weight_name_comparer`): tensors of
/// `blk.N.` by layer number, the others (layer -1) first, then by name.
pub fn tensor_order(a: &str, b: &str) -> Ordering {
    (layer_of(a), a).cmp(&(layer_of(b), b))
}

/// `sscanf(name, "blk.%d.", &layer)`, -1 where it does not match.
fn layer_of(name: &str) -> i64 {
    let Some(rest) = name.strip_prefix("blk.") else {
        return -1;
    };
    let rest = rest.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, digits) = match rest.as_bytes().first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    let end = digits.bytes().take_while(u8::is_ascii_digit).count();
    if end == 0 {
        return -1;
    }
    let v: i64 = digits[..end].parse().unwrap_or(i64::from(i32::MAX));
    let v = v.min(i64::from(i32::MAX));
    if neg {
        -v
    } else {
        v
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttnQ,
    AttnV,
    AttnK,
    AttnQkv,
    AttnKvB,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

fn category(name: &str) -> Category {
    use Category::*;
    if name == "output.weight" {
        return Output;
    }
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        return TokenEmbd;
    }
    for (part, c) in [
        ("attn_qkv.weight", AttnQkv),
        ("attn_kv_b.weight", AttnKvB),
        ("attn_v.weight", AttnV),
        ("attn_k.weight", AttnK),
        ("attn_q.weight", AttnQ),
        ("attn_output.weight", AttnOutput),
        ("ffn_up", FfnUp),
        ("ffn_gate", FfnGate),
        ("ffn_down", FfnDown),
    ] {
        if name.contains(part) {
            return c;
        }
    }
    Other
}

/// Whether llama-quantize quantizes a tensor at all
/// (`tensor_allows_quantization`): 2-D or larger weights, not norms, not
/// the small special tensors of some architectures.
pub fn allows_quantization(name: &str, n_dims: usize) -> bool {
    if n_dims < 2 || !name.ends_with("weight") {
        return false;
    }
    const NEVER: &[&str] = &[
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ];
    !NEVER.iter().any(|p| name.contains(p))
        && name != "position_embd.weight"
        && name != "token_types.weight"
}

/// The model facts the mixture depends on (from the metadata).
#[derive(Debug, Clone, Default)]
pub struct Hparams {
    pub arch: String,
    pub n_layer: i64,
    pub n_head: i64,
    pub n_head_kv: i64,
    pub n_expert: i64,
}

impl Hparams {
    /// `{arch}.block_count`, `{arch}.attention.head_count(_kv)` (the first
    /// layer's where they are per-layer arrays) and `{arch}.expert_count`.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Hparams> {
        let Some(arch) = g.get_str("general.architecture") else {
            bail!("the GGUF file has no general.architecture string: not a llama.cpp model");
        };
        let int = |key: &str| -> Option<i64> {
            match g.get(&format!("{arch}.{key}"))? {
                Value::Array(crate::gguf::Array::Fixed { ty, bytes, .. }) => {
                    let size = ty.fixed_size()?;
                    let first = bytes.get(..size)?;
                    let mut b = [0u8; 8];
                    b[..size].copy_from_slice(first);
                    Some(i64::from_le_bytes(b))
                }
                v => v.as_u64().map(|v| v as i64),
            }
        };
        let Some(n_layer) = int("block_count") else {
            bail!("the GGUF file has no {arch}.block_count");
        };
        let n_head = int("attention.head_count").unwrap_or(0);
        Ok(Hparams {
            arch: arch.to_string(),
            n_layer,
            n_head,
            n_head_kv: int("attention.head_count_kv").unwrap_or(n_head),
            n_expert: int("expert_count").unwrap_or(0),
        })
    }

    fn n_gqa(&self) -> i64 {
        if self.n_head_kv == 0 {
            0
        } else {
            self.n_head / self.n_head_kv
        }
    }

    fn falcon(&self) -> bool {
        self.arch == "falcon"
    }

    fn is_70b(&self) -> bool {
        self.arch == "llama" && self.n_layer == 80 && self.n_head != self.n_head_kv
    }
}

/// One tensor as the mixture sees it.
pub struct MixTensor<'a> {
    pub name: &'a str,
    /// ggml order.
    pub dims: &'a [u64],
    pub dtype: GgmlDtype,
}

/// The ggml type of every tensor (in the order given, which must be
/// [`tensor_order`]'s) under `ftype`, as llama-quantize chooses them.
/// Counters run in that order, as in llama.cpp.
///
/// `has_imatrix` is whether an importance matrix is given (llama.cpp's
/// `qs.has_imatrix`, which a few rules read). Q2_K_S needs one for its
/// Q2_K tensors, as llama-quantize does.
pub fn choose_types(
    hp: &Hparams,
    ftype: Ftype,
    tensors: &[MixTensor<'_>],
    has_imatrix: bool,
) -> Result<Vec<GgmlDtype>> {
    let mut s = State {
        has_imatrix,
        n_attention_wv: tensors
            .iter()
            .filter(|t| {
                matches!(
                    category(t.name),
                    Category::AttnV | Category::AttnQkv | Category::AttnKvB
                )
            })
            .count() as i64,
        tied: !tensors.iter().any(|t| category(t.name) == Category::Output),
        n_ffn: hp.n_layer,
        ..State::default()
    };
    tensors
        .iter()
        .map(|t| {
            if !allows_quantization(t.name, t.dims.len()) {
                return Ok(t.dtype);
            }
            let mut new = ftype.base;
            if ftype.quantized() {
                new = s.impl_type(hp, ftype, t)?;
                new = fallback(t, new)?;
            }
            if !has_imatrix && requires_imatrix(t.name, new, ftype) {
                bail!(
                    "{}: this quantization ({}) requires an importance matrix (--imatrix FILE): \
                     {} would be {new}",
                    t.name,
                    ftype.name,
                    t.name
                );
            }
            Ok(new)
        })
        .collect()
}

/// Whether `name` is a token embedding (`tensor_name_match_token_embd`).
pub fn is_token_embd(name: &str) -> bool {
    category(name) == Category::TokenEmbd
}

/// llama.cpp's `tensor_requires_imatrix` for the types groupq writes: the
/// Q2_K tensors of a Q2_K_S file, but the token embedding and the output.
pub fn requires_imatrix(name: &str, to: GgmlDtype, ftype: Ftype) -> bool {
    !matches!(category(name), Category::TokenEmbd | Category::Output)
        && to.name() == "Q2_K"
        && ftype.is("Q2_K_S")
}

#[derive(Default)]
struct State {
    has_imatrix: bool,
    n_attention_wv: i64,
    i_attention_wv: i64,
    n_ffn: i64,
    i_ffn_down: i64,
    i_ffn_gate: i64,
    i_ffn_up: i64,
    tied: bool,
}

fn use_more_bits(i: i64, n: i64) -> bool {
    // C integer division and remainder truncate toward zero, as Rust's do.
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

impl State {
    /// `llama_tensor_get_type_impl` for the file types of [`FTYPES`].
    // The branches follow llama.cpp's, some of which pick the same type.
    #[allow(clippy::if_same_then_else)]
    fn impl_type(&mut self, hp: &Hparams, f: Ftype, t: &MixTensor<'_>) -> Result<GgmlDtype> {
        use Category::*;
        let q = |n: &str| GgmlDtype::from_name(n).expect("a known type");
        let cat = category(t.name);
        let mut new = f.base;
        let layer = |i: i64, n: i64| -> Result<(i64, i64)> {
            if hp.n_expert > 1 {
                let l = layer_of(t.name);
                if l < 0 || l >= n {
                    bail!("bad layer {l} for tensor {}: must be in [0, {n})", t.name);
                }
                return Ok((l, n));
            }
            Ok((i, n))
        };
        if cat == Output || (self.tied && cat == TokenEmbd) {
            let nx = t.dims.first().copied().unwrap_or(1);
            if hp.falcon() || nx % new.block_size() != 0 {
                new = q("Q8_0");
            } else if new != q("Q8_0") {
                new = q("Q6_K");
            }
        } else if cat == TokenEmbd {
            // No rule for the file types groupq writes.
        } else if matches!(cat, AttnV | AttnQkv | AttnKvB) {
            let gqa4 = hp.n_gqa() >= 4;
            if f.is("Q2_K") {
                new = q(if gqa4 { "Q4_K" } else { "Q3_K" });
            } else if f.is("Q2_K_S") && gqa4 {
                new = q("Q4_K");
            } else if f.is("Q3_K_M") {
                new = q(if self.i_attention_wv < 2 {
                    "Q5_K"
                } else {
                    "Q4_K"
                });
            } else if f.is("Q3_K_L") {
                new = q("Q5_K");
            } else if (f.is("IQ4_NL") || f.is("IQ4_XS")) && gqa4 {
                new = q("Q5_K");
            } else if (f.is("Q4_K_M") || f.is("Q5_K_M"))
                && use_more_bits(self.i_attention_wv, self.n_attention_wv)
            {
                new = q("Q6_K");
            } else if f.is("Q4_K_S") && self.i_attention_wv < 4 {
                new = q("Q5_K");
            }
            if hp.is_70b() && (new == q("Q3_K") || new == q("Q4_K")) {
                new = q("Q5_K");
            }
            if hp.n_expert == 8 {
                new = q("Q8_0");
            }
            self.i_attention_wv += 1;
        } else if cat == AttnK {
            if hp.n_expert == 8 {
                new = q("Q8_0");
            }
        } else if cat == AttnQ {
            // No rule for the file types groupq writes.
        } else if cat == FfnDown {
            let (i, n) = layer(self.i_ffn_down, self.n_ffn)?;
            if f.is("Q2_K") {
                new = q("Q3_K");
            } else if f.is("Q2_K_S") {
                if i < n / 8 {
                    new = q("Q4_K");
                }
            } else if f.is("Q3_K_M") {
                new = q(if i < n / 16 {
                    "Q5_K"
                } else if !hp.falcon() || use_more_bits(i, n) {
                    "Q4_K"
                } else {
                    "Q3_K"
                });
            } else if f.is("Q3_K_L") {
                new = q(if hp.falcon() { "Q4_K" } else { "Q5_K" });
            } else if f.is("Q4_K_M") {
                if hp.falcon() {
                    new = q(if i < n / 16 {
                        "Q6_K"
                    } else if use_more_bits(i, n) {
                        "Q5_K"
                    } else {
                        "Q4_K"
                    });
                } else if use_more_bits(i, n) {
                    new = q("Q6_K");
                }
            } else if i < n / 8 && (f.is("IQ4_NL") || f.is("IQ4_XS")) && !self.has_imatrix {
                new = q("Q5_K");
            } else if f.is("Q5_K_M") && use_more_bits(i, n) {
                new = q("Q6_K");
            } else if f.is("Q4_K_S") && !hp.falcon() && i < n / 8 {
                new = q("Q5_K");
            } else if (f.is("Q4_0") || f.is("Q5_0")) && self.has_imatrix && i < n / 8 {
                // llama.cpp guards the first ffn_down layers of Q4_0/Q5_0
                // files made with an importance matrix.
                new = q(if f.is("Q4_0") { "Q4_1" } else { "Q5_1" });
            }
            self.i_ffn_down += 1;
        } else if cat == AttnOutput {
            if !hp.falcon() {
                if hp.n_expert == 8 {
                    if [
                        "Q2_K", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ4_XS",
                    ]
                    .iter()
                    .any(|n| f.is(n))
                    {
                        new = q("Q5_K");
                    }
                } else if f.is("Q2_K") {
                    new = q("Q3_K");
                } else if f.is("Q3_K_M") {
                    new = q("Q4_K");
                } else if f.is("Q3_K_L") {
                    new = q("Q5_K");
                }
            } else if f.is("Q3_K_L") {
                new = q("Q4_K");
            }
        } else if cat == FfnGate {
            layer(self.i_ffn_gate, self.n_ffn)?;
            self.i_ffn_gate += 1;
        } else if cat == FfnUp {
            layer(self.i_ffn_up, self.n_ffn)?;
            self.i_ffn_up += 1;
        }
        Ok(new)
    }
}

/// `tensor_type_fallback`: a type whose blocks do not divide the rows.
fn fallback(t: &MixTensor<'_>, new: GgmlDtype) -> Result<GgmlDtype> {
    let ncols = t.dims.first().copied().unwrap_or(1);
    if ncols % new.block_size() == 0 {
        return Ok(new);
    }
    let to = match new.name() {
        "IQ4_XS" => "IQ4_NL",
        "Q2_K" | "Q3_K" => "Q4_0",
        "Q4_K" => "Q5_0",
        "Q5_K" => "Q5_1",
        "Q6_K" => "Q8_0",
        other => bail!(
            "no tensor type fallback is defined for type {other} ({})",
            t.name
        ),
    };
    let to = GgmlDtype::from_name(to).expect("a known type");
    Ok(if ncols % to.block_size() != 0 {
        GgmlDtype::F16
    } else {
        to
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_llama_cpps() {
        let mut names = vec![
            "blk.10.attn_k.weight",
            "output.weight",
            "blk.9.ffn_up.weight",
            "blk.9.attn_k.weight",
            "token_embd.weight",
            "output_norm.weight",
        ];
        names.sort_by(|a, b| tensor_order(a, b));
        assert_eq!(
            names,
            [
                "output.weight",
                "output_norm.weight",
                "token_embd.weight",
                "blk.9.attn_k.weight",
                "blk.9.ffn_up.weight",
                "blk.10.attn_k.weight"
            ]
        );
    }

    #[test]
    fn more_bits_layers() {
        // 8 layers: 0, 7 and (i - 1) % 3 == 2, i.e. 3 and 6.
        let picked: Vec<i64> = (0..8).filter(|&i| use_more_bits(i, 8)).collect();
        assert_eq!(picked, [0, 3, 6, 7]);
    }
}
