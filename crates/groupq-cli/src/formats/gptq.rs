//! GPTQ, `checkpoint_format: gptq`: codes packed along the input features
//! (`qweight [k / 8, n]`), v1 zero points (stored minus one), float16
//! scales, a trivial `g_idx`. transformers loads it through optimum, which
//! quantizes only the Linear (and `Conv1D`) layers whose name starts with
//! `block_name_to_quantize` (else the first of a fixed list of block
//! patterns that matches), filtered by `modules_in_block_to_quantize`.

use super::*;
use crate::layout::{name_in_block, Layout};
use groupq::pack::{self, GptqZeros};
use serde_json::json;

pub struct Gptq;

/// The group sizes GPTQModel's torch kernel (the one every device has)
/// accepts.
const GROUP_SIZES: [usize; 7] = [16, 32, 64, 128, 256, 512, 1024];

/// optimum's `BLOCK_PATTERNS`, tried in order on every module name.
const BLOCK_PATTERNS: [&str; 8] = [
    "transformer.h",
    "model.decoder.layers",
    "gpt_neox.layers",
    "model.layers",
    "model.language_model.layers",
    "h",
    "decoder.layers",
    "layers",
];

/// optimum's `get_block_name_with_pattern`: the first pattern some module
/// name starts with.
fn default_block(layout: &Layout) -> Option<&'static str> {
    BLOCK_PATTERNS
        .into_iter()
        .find(|p| layout.modules.iter().any(|m| m.starts_with(p)))
}

/// The block stack to quantize: the one optimum finds by itself, else the
/// one holding the most Linear layers.
fn chosen_block(layout: &Layout) -> Option<String> {
    if let Some(d) = default_block(layout) {
        if layout.stacks.iter().any(|s| s == d) {
            return Some(d.to_string());
        }
    }
    let count = |s: &String| layout.linears_under(s).count();
    let mut best: Option<&String> = None;
    for s in &layout.stacks {
        if best.is_none_or(|b| count(s) > count(b)) {
            best = Some(s);
        }
    }
    best.cloned()
}

/// optimum's filter: a layer is kept when its name ends with an entry.
fn kept_by(list: &[String], module: &str) -> bool {
    list.iter().any(|l| module.ends_with(l.as_str()))
}

impl QuantFormat for Gptq {
    fn name(&self) -> &'static str {
        "gptq"
    }

    fn quant_method(&self) -> &'static str {
        "gptq"
    }

    fn check_spec(&self, spec: &Spec) -> Result<()> {
        if !GROUP_SIZES.contains(&spec.group_size) {
            bail!(
                "gptq loaders (GPTQModel's kernels, behind transformers) accept group sizes {GROUP_SIZES:?}, not --group-size {}",
                spec.group_size
            );
        }
        Ok(())
    }

    fn recipe(&self, spec: &Spec) -> Recipe {
        Recipe::gptq(spec.symmetric, spec.bits)
    }

    fn shape_problem(&self, spec: &Spec, _n: usize, k: usize) -> Option<String> {
        let pf = 32 / spec.bits as usize;
        (!k.is_multiple_of(pf)).then(|| format!("in_features {k} is not a multiple of {pf}"))
    }

    fn scope(&self, layout: &Layout) -> Result<Scope> {
        match chosen_block(layout) {
            Some(b) => Ok(Scope::Prefix(b)),
            None => bail!(
                "gptq: no repeated blocks (NAME.0.…, NAME.1.…) among the Linear layers; gptq loaders \
                 quantize only the Linear layers of the repeated blocks. Use --format compressed-tensors"
            ),
        }
    }

    fn lm_head_problem(&self) -> Option<&'static str> {
        Some(
            "transformers' gptq loader (optimum) quantizes only the Linear layers of the repeated \
             blocks, so a quantized lm_head would load as random weights",
        )
    }

    fn reads_conv1d(&self) -> bool {
        true
    }

    fn outputs(
        &self,
        spec: &Spec,
        prefix: &str,
        _dtype: Dtype,
        n: usize,
        k: usize,
    ) -> Vec<OutTensor> {
        let (g, per_word) = (k / spec.group_size, 32 / spec.bits as usize);
        let t =
            |suffix: &str, dtype, shape| OutTensor::new(format!("{prefix}.{suffix}"), dtype, shape);
        vec![
            t("qweight", Dtype::I32, vec![k / per_word, n]),
            t("qzeros", Dtype::I32, vec![g, n.div_ceil(per_word)]),
            t("scales", Dtype::F16, vec![g, n]),
            t("g_idx", Dtype::I32, vec![k]),
        ]
    }

    fn quantize(&self, spec: &Spec, w: &Weights<'_>, n: usize, k: usize) -> Result<Quantized> {
        with_weights!(w, w => quantize_typed(spec, w, n, k))
    }

    fn quantization_config(
        &self,
        spec: &Spec,
        layout: &Layout,
        plan: &ModulePlan,
    ) -> Result<Value> {
        let Scope::Prefix(block) = self.scope(layout)? else {
            bail!("internal error: gptq without a block prefix");
        };
        // Every matrix under the prefix, in case a loader sees a Linear
        // where the names did not say so.
        let in_block: Vec<&String> = layout.matrices_under(&block).collect();
        let quantized = |m: &str| plan.quantized.contains(m);
        // Which layers of the blocks: all (null), the same ones in every
        // block (names inside the block), or an explicit list.
        let modules = if in_block.iter().all(|m| quantized(m)) {
            Value::Null
        } else {
            let relative: BTreeSet<String> = in_block
                .iter()
                .filter(|m| quantized(m))
                .filter_map(|m| name_in_block(m).map(String::from))
                .collect();
            let relative: Vec<String> = relative.into_iter().collect();
            let full: Vec<String> = plan.quantized.iter().cloned().collect();
            let exact = |list: &[String]| in_block.iter().all(|m| kept_by(list, m) == quantized(m));
            if exact(&relative) {
                json!([relative])
            } else if exact(&full) {
                json!([full])
            } else {
                bail!(
                    "gptq: modules_in_block_to_quantize cannot select exactly the quantized layers"
                )
            }
        };
        // GPTQModel and vLLM skip modules through `dynamic` negative matches.
        let dynamic: serde_json::Map<String, Value> = in_block
            .iter()
            .filter(|m| !quantized(m))
            .map(|m| (format!("-:^{}$", m.replace('.', r"\.")), json!({})))
            .collect();
        Ok(json!({
            "quant_method": "gptq",
            "bits": spec.bits,
            "group_size": spec.group_size,
            "desc_act": false,
            "sym": spec.symmetric,
            "static_groups": false,
            "true_sequential": true,
            "damp_percent": 0.01,
            "checkpoint_format": "gptq",
            "lm_head": false,
            "block_name_to_quantize": if default_block(layout) == Some(block.as_str()) { Value::Null } else { json!(block) },
            "modules_in_block_to_quantize": modules,
            "dynamic": if dynamic.is_empty() { Value::Null } else { Value::Object(dynamic) },
            "quantized_by": "groupq",
        }))
    }

    /// optimum's `convert_model`: the layers under the block prefix, kept
    /// when their name ends with an entry of `modules_in_block_to_quantize`.
    fn loader_quantizes(&self, config: &Value, layout: &Layout) -> Result<BTreeSet<String>> {
        let prefix = match config["block_name_to_quantize"].as_str() {
            Some(p) => p,
            None => default_block(layout).ok_or_else(|| {
                anyhow!("the gptq loader would fail: no module matches its block patterns")
            })?,
        };
        let list: Option<Vec<String>> =
            config["modules_in_block_to_quantize"]
                .as_array()
                .map(|groups| {
                    groups
                        .iter()
                        .filter_map(|g| g.as_array())
                        .flatten()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                });
        Ok(layout
            .linears_under(prefix)
            .filter(|m| list.as_ref().is_none_or(|l| kept_by(l, m)))
            .cloned()
            .collect())
    }

    /// transformers' GPT-2 weight init (run on every load) reads
    /// `c_proj.weight`, which a quantized layer does not have.
    fn plan_problem(&self, layout: &Layout, plan: &ModulePlan) -> Option<String> {
        let gpt2 = matches!(layout.model_type.as_deref(), Some("gpt2" | "clvp"));
        let c_proj = plan.quantized.iter().find(|m| m.ends_with(".c_proj"))?;
        gpt2.then(|| {
            format!(
                "transformers cannot load a {} GPTQ checkpoint whose c_proj layers are quantized \
                 (its weight init reads {c_proj}.weight); add --ignore '*.c_proj' to keep them in float",
                layout.model_type.as_deref().unwrap_or_default()
            )
        })
    }

    fn identifying_part(&self) -> &'static str {
        "g_idx"
    }

    fn marker(&self) -> &'static str {
        "qweight"
    }

    fn parts(&self) -> &'static [&'static str] {
        &["qweight", "qzeros", "scales", "g_idx"]
    }

    fn describe(&self, config: Option<&Value>) -> String {
        if is_v2(config) {
            "gptq_v2".into()
        } else {
            "gptq (v1 zero points)".into()
        }
    }

    fn dequantize_module(
        &self,
        config: Option<&Value>,
        get: &ModuleTensors<'_>,
        stream: &Stream,
    ) -> Result<Restored> {
        let bits = config.and_then(|c| c["bits"].as_u64()).unwrap_or(4) as u32;
        let (_, qshape, qbytes) = need(get, "qweight")?;
        let per_word = 32 / bits as usize;
        let (k, n) = (
            dim(&qshape, 0, "qweight")? * per_word,
            dim(&qshape, 1, "qweight")?,
        );
        let (_, sshape, sbytes) = need(get, "scales")?;
        let g = dim(&sshape, 0, "scales")?;
        let gs = match config.and_then(|c| c["group_size"].as_i64()) {
            Some(gs) if gs > 0 => gs as usize,
            _ => k / g,
        };
        if gs == 0 || g.checked_mul(gs) != Some(k) {
            bail!("scales has {g} groups, which do not cover in_features {k} in groups of {gs}");
        }
        if let Some((_, _, gb)) = get("g_idx")? {
            let g_idx = read_i32(&gb);
            if g_idx.iter().enumerate().any(|(i, &v)| v as usize != i / gs) {
                bail!("g_idx is not k / group_size (act-order checkpoints are not supported)");
            }
        }
        let codes = pack::gptq_qweight_unpack(&read_i32(&qbytes), n, k, bits)?;
        let enc = if is_v2(config) {
            GptqZeros::V2
        } else {
            GptqZeros::V1
        };
        let zero = pack::gptq_qzeros_unpack(&read_i32(&need(get, "qzeros")?.2), n, g, bits, enc)?;
        f16_scaled(stream, &codes, &sbytes, &zero, n, k, gs)
    }
}

fn is_v2(config: Option<&Value>) -> bool {
    config.is_some_and(|c| {
        c["checkpoint_format"].as_str() == Some("gptq_v2")
            || c["format"].as_str() == Some("gptq_v2")
    })
}

fn quantize_typed<T: Storage>(spec: &Spec, w: &[T], n: usize, k: usize) -> Result<Quantized> {
    let (shape, recipe) = ((n, k, spec.group_size), spec.recipe());
    // Loaders read float16 scales: the statistics are of what they restore.
    let to_f16 = f16::from_f32;
    if spec.bits == 4 && recipe.q_min >= 0 && recipe.q_max <= U4::MAX && k.is_multiple_of(8) {
        // The plan writes the codes two per byte: each word of `qweight` is
        // four bytes of a row.
        let (codes, scale, zero, stats) =
            quantize_weight::<T, f32, U4, f16>(w, shape, recipe, to_f16)?;
        let words = move || pack::gptq_qweight_u4(&codes, n, k);
        return Ok(Quantized::new(
            stats,
            tensors(*spec, n, k, scale, zero, words),
        ));
    }
    let (codes, scale, zero, stats) = quantize_weight::<T, f32, u8, f16>(w, shape, recipe, to_f16)?;
    let bits = spec.bits;
    let words = move || pack::gptq_qweight(&codes, n, k, bits);
    Ok(Quantized::new(
        stats,
        tensors(*spec, n, k, scale, zero, words),
    ))
}

/// The tensors of one weight, `words` giving `qweight`.
fn tensors(
    spec: Spec,
    n: usize,
    k: usize,
    scale: Vec<f32>,
    zero: Vec<i32>,
    words: impl FnOnce() -> groupq::Result<Vec<i32>> + Send + 'static,
) -> impl FnOnce() -> Result<Vec<Vec<u8>>> + Send + 'static {
    move || {
        let (gs, bits) = (spec.group_size, spec.bits);
        let g = k / gs;
        let scale16: Vec<f16> = scale.iter().map(|&s| f16::from_f32(s)).collect();
        let g_idx: Vec<i32> = (0..k).map(|i| (i / gs) as i32).collect();
        Ok(vec![
            i32_bytes(&words()?),
            i32_bytes(&pack::gptq_qzeros(&zero, n, g, bits, GptqZeros::V1)?),
            f16::write(&transpose(&scale16, n, g)),
            i32_bytes(&g_idx),
        ])
    }
}
