//! AWQ GEMM: 4-bit codes packed along the output features in AutoAWQ's
//! interleaved order, packed zero points, float16 scales, computed with
//! AutoAWQ's float16 numerics. transformers converts every `nn.Linear`
//! except `modules_to_not_convert` and its default skips (the output
//! embeddings, tied weights, the module of the last parameter).

use super::*;
use groupq::pack;
use serde_json::json;

pub struct Awq;

/// The group sizes the AWQ GEMM kernels accept.
const GROUP_SIZES: [usize; 4] = [16, 32, 64, 128];

/// transformers' `AWQ_SCALES_MAPPINGS`: for these model types the loader
/// wraps the MLP activation (`act`, a sibling of `layer_before_act`) in a
/// `ScaledActivation` whose `scales` (one per output feature of that layer)
/// the checkpoint must hold. Round to nearest has no activation scaling:
/// ones, which divide exactly.
const SCALED_ACTIVATIONS: [(&str, &str, &str); 8] = [
    ("starcoder2", "act", "c_fc"),
    ("RefinedWebModel", "act", "dense_h_to_4h"),
    ("falcon", "act", "dense_h_to_4h"),
    ("mpt", "act", "up_proj"),
    ("gptj", "act", "fc_in"),
    ("gpt_neox", "act", "dense_h_to_4h"),
    ("gpt_bigcode", "act", "c_fc"),
    ("bloom", "gelu_impl", "dense_h_to_4h"),
];

fn scaled_activation(layout: &Layout) -> Option<(&'static str, &'static str)> {
    let model_type = layout.model_type.as_deref()?;
    SCALED_ACTIVATIONS
        .iter()
        .find(|(m, _, _)| *m == model_type)
        .map(|&(_, act, before)| (act, before))
}

/// transformers' `should_convert_module` for one literal module name: the
/// key matches from the start up to a module boundary (`.` in the key is a
/// regex wildcard), or as a suffix.
fn skipped_by(key: &str, module: &str) -> bool {
    let (k, m) = (key.as_bytes(), module.as_bytes());
    let prefix = m.len() >= k.len()
        && k.iter().zip(m).all(|(a, b)| *a == b'.' || a == b)
        && (m.len() == k.len() || m[k.len()] == b'.' || k.last() == Some(&b'.'));
    prefix || module.ends_with(key)
}

impl QuantFormat for Awq {
    fn name(&self) -> &'static str {
        "awq"
    }

    fn quant_method(&self) -> &'static str {
        "awq"
    }

    fn check_spec(&self, spec: &Spec) -> Result<()> {
        if spec.bits != 4 || spec.symmetric {
            bail!("awq stores 4-bit codes with zero points only: use --bits 4 --asym");
        }
        if !GROUP_SIZES.contains(&spec.group_size) {
            bail!(
                "awq loaders (the GEMM kernels of AutoAWQ and GPTQModel) accept group sizes {GROUP_SIZES:?}, not --group-size {}",
                spec.group_size
            );
        }
        Ok(())
    }

    fn recipe(&self, spec: &Spec) -> Recipe {
        // AutoAWQ casts each layer to float16 before quantizing it.
        Recipe::awq_f16(true, spec.bits)
    }

    fn shape_problem(&self, spec: &Spec, n: usize, _k: usize) -> Option<String> {
        let pf = 32 / spec.bits as usize;
        (!n.is_multiple_of(pf)).then(|| format!("out_features {n} is not a multiple of {pf}"))
    }

    fn scope(&self, _layout: &Layout) -> Result<Scope> {
        Ok(Scope::Blocks)
    }

    fn lm_head_problem(&self) -> Option<&'static str> {
        Some("transformers' awq loader always keeps the output embeddings (lm_head) in float")
    }

    fn reads_conv1d(&self) -> bool {
        false
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
            t("qweight", Dtype::I32, vec![k, n / per_word]),
            t("qzeros", Dtype::I32, vec![g, n / per_word]),
            t("scales", Dtype::F16, vec![g, n]),
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
        let skip = float_list(layout, plan);
        Ok(json!({
            "quant_method": "awq",
            "bits": spec.bits,
            "group_size": spec.group_size,
            "zero_point": true,
            "version": "gemm",
            "modules_to_not_convert": if skip.is_empty() { Value::Null } else { json!(skip) },
            "quantized_by": "groupq",
        }))
    }

    /// transformers' `replace_with_awq_linear`: every `nn.Linear` that no
    /// key of `modules_to_not_convert` (plus the output embeddings) skips.
    fn loader_quantizes(&self, config: &Value, layout: &Layout) -> Result<BTreeSet<String>> {
        let mut keys: Vec<String> = config["modules_to_not_convert"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        keys.extend(
            layout
                .linears
                .iter()
                .filter(|m| crate::layout::is_lm_head(m))
                .cloned(),
        );
        Ok(nn_linears(layout)
            .filter(|m| !keys.iter().any(|k| skipped_by(k, m)))
            .cloned()
            .collect())
    }

    fn companions(
        &self,
        layout: &Layout,
        module: &str,
        out_features: usize,
        dtype: Dtype,
    ) -> Vec<(OutTensor, Vec<u8>)> {
        let Some((act, before)) = scaled_activation(layout) else {
            return Vec::new();
        };
        let (parent, last) = module.rsplit_once('.').unwrap_or(("", module));
        if last != before {
            return Vec::new();
        }
        let name = if parent.is_empty() {
            format!("{act}.scales")
        } else {
            format!("{parent}.{act}.scales")
        };
        let bytes = restored_bytes(&vec![1.0; out_features], dtype).unwrap_or_default();
        vec![(OutTensor::new(name, dtype, vec![out_features]), bytes)]
    }

    fn is_companion(&self, layout: &Layout, name: &str) -> bool {
        let Some((act, before)) = scaled_activation(layout) else {
            return false;
        };
        let Some(module) = name.strip_suffix(".scales") else {
            return false;
        };
        let sibling = match module.rsplit_once('.') {
            Some((parent, last)) if last == act => format!("{parent}.{before}"),
            None if module == act => before.to_string(),
            _ => return false,
        };
        layout.modules.contains(&sibling)
    }

    fn identifying_part(&self) -> &'static str {
        "qweight"
    }

    fn marker(&self) -> &'static str {
        "qweight"
    }

    fn parts(&self) -> &'static [&'static str] {
        &["qweight", "qzeros", "scales"]
    }

    fn describe(&self, _config: Option<&Value>) -> String {
        "awq (gemm)".into()
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
            dim(&qshape, 0, "qweight")?,
            dim(&qshape, 1, "qweight")? * per_word,
        );
        let (_, sshape, sbytes) = need(get, "scales")?;
        let g = dim(&sshape, 0, "scales")?;
        if !k.is_multiple_of(g) {
            bail!("scales has {g} groups, which do not divide in_features {k}");
        }
        let gs = k / g;
        let codes = pack::awq_qweight_unpack(&read_i32(&qbytes), n, k, bits)?;
        let zero = pack::awq_qzeros_unpack(&read_i32(&need(get, "qzeros")?.2), n, g, bits)?;
        f16_scaled(stream, &codes, &sbytes, &zero, n, k, gs)
    }
}

fn quantize_typed<T: Storage>(spec: &Spec, w: &[T], n: usize, k: usize) -> Result<Quantized> {
    let (shape, recipe) = ((n, k, spec.group_size), spec.recipe());
    let same = |s: f16| s;
    if spec.bits == 4 && recipe.q_min >= 0 && recipe.q_max <= U4::MAX && k.is_multiple_of(2) {
        // The plan writes the codes two per byte: a byte of eight rows
        // gives two words of `qweight`.
        let (codes, scale, zero, stats) =
            quantize_weight::<T, f16, U4, f16>(w, shape, recipe, same)?;
        let words = move || pack::awq_qweight_u4(&codes, n, k);
        return Ok(Quantized::new(
            stats,
            tensors(*spec, n, k, scale, zero, words),
        ));
    }
    let (codes, scale, zero, stats) = quantize_weight::<T, f16, u8, f16>(w, shape, recipe, same)?;
    let bits = spec.bits;
    let words = move || pack::awq_qweight(&codes, n, k, bits);
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
    scale: Vec<f16>,
    zero: Vec<i32>,
    words: impl FnOnce() -> groupq::Result<Vec<i32>> + Send + 'static,
) -> impl FnOnce() -> Result<Vec<Vec<u8>>> + Send + 'static {
    move || {
        let (g, bits) = (k / spec.group_size, spec.bits);
        Ok(vec![
            i32_bytes(&words()?),
            i32_bytes(&pack::awq_qzeros(&zero, n, g, bits)?),
            f16::write(&transpose(&scale, n, g)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::skipped_by;

    #[test]
    fn should_convert_module_rules() {
        assert!(skipped_by("lm_head", "lm_head"));
        assert!(skipped_by("model.layers.1", "model.layers.1.mlp.down_proj"));
        assert!(!skipped_by(
            "model.layers.1",
            "model.layers.11.mlp.down_proj"
        ));
        assert!(skipped_by("down_proj", "model.layers.3.mlp.down_proj"));
        assert!(!skipped_by("mlp.gate", "model.layers.0.mlp.gate_proj"));
        assert!(skipped_by(
            "model.layers.0.mlp.down_proj",
            "model.layers.0.mlp.down_proj"
        ));
        assert!(!skipped_by(
            "model.layers.1.mlp.down_proj",
            "model.layers.11.mlp.down_proj"
        ));
    }
}
