//! compressed-tensors `pack-quantized`: int codes packed eight (4-bit) or
//! four (8-bit) to an int32 along the input features, scales in the
//! weight's dtype, zero points packed along the output features. Its
//! loaders (transformers, vLLM) quantize every `nn.Linear` not named in
//! `ignore`.

use super::*;
use crate::layout::absent_output_heads;
use groupq::pack;

pub struct CompressedTensors;

impl QuantFormat for CompressedTensors {
    fn name(&self) -> &'static str {
        "compressed-tensors"
    }

    fn quant_method(&self) -> &'static str {
        "compressed-tensors"
    }

    fn check_spec(&self, _spec: &Spec) -> Result<()> {
        Ok(())
    }

    fn recipe(&self, spec: &Spec) -> Recipe {
        let half = 1i32 << (spec.bits - 1);
        let mut r = if spec.symmetric {
            Recipe::compressed_tensors_w4a16()
        } else {
            Recipe::compressed_tensors_w4a16_asym()
        };
        (r.q_min, r.q_max) = (-half, half - 1);
        r
    }

    fn shape_problem(&self, spec: &Spec, _n: usize, _k: usize) -> Option<String> {
        (!spec.group_size.is_multiple_of(2)).then(|| "--group-size must be even".into())
    }

    fn scope(&self, _layout: &Layout) -> Result<Scope> {
        Ok(Scope::AllLinear)
    }

    fn lm_head_problem(&self) -> Option<&'static str> {
        None
    }

    fn reads_conv1d(&self) -> bool {
        false
    }

    fn outputs(
        &self,
        spec: &Spec,
        prefix: &str,
        dtype: Dtype,
        n: usize,
        k: usize,
    ) -> Vec<OutTensor> {
        let (g, per_word) = (k / spec.group_size, 32 / spec.bits as usize);
        let t =
            |suffix: &str, dtype, shape| OutTensor::new(format!("{prefix}.{suffix}"), dtype, shape);
        let mut v = vec![
            t("weight_packed", Dtype::I32, vec![n, k.div_ceil(per_word)]),
            t("weight_scale", dtype, vec![n, g]),
            t("weight_shape", Dtype::I64, vec![2]),
        ];
        if !spec.symmetric {
            v.push(t(
                "weight_zero_point",
                Dtype::I32,
                vec![n.div_ceil(per_word), g],
            ));
        }
        v
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
        // A tied output head is a Linear of the loaded model with no tensor
        // of its own in the checkpoint: it must not be targeted.
        let mut ignored = float_list(layout, plan);
        ignored.extend(absent_output_heads(layout).into_iter().map(String::from));
        ignored.sort();
        ignored.dedup();
        Ok(serde_json::json!({
            "quant_method": "compressed-tensors",
            "format": "pack-quantized",
            "quantization_status": "compressed",
            "config_groups": {
                "group_0": {
                    "targets": ["Linear"],
                    "weights": {
                        "num_bits": spec.bits,
                        "type": "int",
                        "symmetric": spec.symmetric,
                        "strategy": "group",
                        "group_size": spec.group_size,
                        "dynamic": false,
                        "actorder": null,
                        "observer": "minmax",
                        "observer_kwargs": {},
                    },
                    "input_activations": null,
                    "output_activations": null,
                }
            },
            "ignore": ignored,
            "kv_cache_scheme": null,
            "global_compression_ratio": null,
            "quantized_by": "groupq",
        }))
    }

    /// compressed-tensors' `match_named_modules`: the `Linear` target
    /// matches every `nn.Linear`; an `ignore` entry matches a module by its
    /// exact name, or by regex after `re:`.
    fn loader_quantizes(&self, config: &Value, layout: &Layout) -> Result<BTreeSet<String>> {
        let ignore: Vec<&str> = config["ignore"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if let Some(re) = ignore.iter().find(|i| i.starts_with("re:")) {
            bail!("internal error: regex ignore entry {re} cannot be checked");
        }
        Ok(nn_linears(layout)
            .filter(|m| !ignore.contains(&m.as_str()))
            .cloned()
            .collect())
    }

    fn notes(&self, spec: &Spec) -> Vec<String> {
        if spec.symmetric {
            return Vec::new();
        }
        vec![
            "compressed-tensors with zero points (--asym) loads in vLLM, but transformers' compressed \
             loading path does not: compressed-tensors expects weight_zero_point unpacked ([out, groups]) \
             while its own compressor writes it packed (an upstream bug; the package's pipeline writes the \
             same bytes). Load it in transformers dequantized: \
             from_pretrained(OUT, quantization_config=CompressedTensorsConfig(dequantize=True))"
                .into(),
        ]
    }

    fn identifying_part(&self) -> &'static str {
        "weight_packed"
    }

    fn marker(&self) -> &'static str {
        "weight_packed"
    }

    fn parts(&self) -> &'static [&'static str] {
        &[
            "weight_packed",
            "weight_scale",
            "weight_shape",
            "weight_zero_point",
        ]
    }

    fn describe(&self, _config: Option<&Value>) -> String {
        "compressed-tensors (pack-quantized)".into()
    }

    fn bits_and_group(&self, config: &Value) -> (Option<u64>, Option<u64>) {
        let w = &config["config_groups"]["group_0"]["weights"];
        (w["num_bits"].as_u64(), w["group_size"].as_u64())
    }

    fn dequantize_module(
        &self,
        config: Option<&Value>,
        get: &ModuleTensors<'_>,
        stream: &Stream,
    ) -> Result<Restored> {
        let bits = config.and_then(|c| self.bits_and_group(c).0).unwrap_or(4) as u32;
        let (_, _, shape) = need(get, "weight_shape")?;
        let shape: Vec<i64> = shape
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let &[n, k] = shape.as_slice() else {
            bail!("weight_shape {shape:?} is not [out_features, in_features]");
        };
        let (n, k) = (usize::try_from(n)?, usize::try_from(k)?);
        let (sdtype, sshape, sbytes) = need(get, "weight_scale")?;
        let g = dim(&sshape, 1, "weight_scale")?;
        if !k.is_multiple_of(g) {
            bail!("weight_scale has {g} groups, which do not divide in_features {k}");
        }
        let gs = k / g;
        let codes = pack::compressed_tensors_weight_unpack(
            &read_i32(&need(get, "weight_packed")?.2),
            n,
            k,
            bits,
        )?;
        let zero = match get("weight_zero_point")? {
            Some((_, _, b)) => {
                pack::compressed_tensors_zero_point_unpack(&read_i32(&b), n, g, bits)?
            }
            None => vec![0; n * g],
        };
        // compressed-tensors computes `(q - z) * s` in the scale's dtype.
        let values: Vec<f32> = match sdtype {
            Dtype::BF16 => {
                dequantize::<i8, bf16>(stream, &codes, &bf16::read(&sbytes), &zero, n, k, gs)?
                    .iter()
                    .map(|v| v.to_f32())
                    .collect()
            }
            Dtype::F16 => {
                dequantize::<i8, f16>(stream, &codes, &f16::read(&sbytes), &zero, n, k, gs)?
                    .iter()
                    .map(|v| v.to_f32())
                    .collect()
            }
            Dtype::F32 => {
                dequantize::<i8, f32>(stream, &codes, &f32::read(&sbytes), &zero, n, k, gs)?
            }
            d => bail!("weight_scale has unsupported dtype {d:?}"),
        };
        Ok(Restored {
            n,
            k,
            values,
            native: sdtype,
        })
    }
}

fn quantize_typed<T: Storage>(spec: &Spec, w: &[T], n: usize, k: usize) -> Result<Quantized> {
    let (shape, recipe) = ((n, k, spec.group_size), spec.recipe());
    let fits_s4 = recipe.q_min >= S4::MIN && recipe.q_max <= S4::MAX;
    let same = |s: T| s;
    if spec.bits == 4 && fits_s4 && k.is_multiple_of(8) {
        // The plan writes the codes two per byte: the words are those bytes
        // with the format's offset.
        let (codes, scale, zero, stats) = quantize_weight::<T, T, S4, T>(w, shape, recipe, same)?;
        let words = move || pack::compressed_tensors_weight_s4(&codes, n, k);
        return Ok(Quantized::new(
            stats,
            tensors(*spec, n, k, scale, zero, words),
        ));
    }
    let (codes, scale, zero, stats) = quantize_weight::<T, T, i8, T>(w, shape, recipe, same)?;
    let bits = spec.bits;
    let words = move || pack::compressed_tensors_weight(&codes, n, k, bits);
    Ok(Quantized::new(
        stats,
        tensors(*spec, n, k, scale, zero, words),
    ))
}

/// The tensors of one weight, `words` giving `weight_packed`.
fn tensors<T: Storage>(
    spec: Spec,
    n: usize,
    k: usize,
    scale: Vec<T>,
    zero: Vec<i32>,
    words: impl FnOnce() -> groupq::Result<Vec<i32>> + Send + 'static,
) -> impl FnOnce() -> Result<Vec<Vec<u8>>> + Send + 'static {
    move || {
        let (g, bits) = (k / spec.group_size, spec.bits);
        let mut out = vec![
            i32_bytes(&words()?),
            T::write(&scale),
            [n as i64, k as i64]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ];
        if !spec.symmetric {
            out.push(i32_bytes(&pack::compressed_tensors_zero_point(
                &zero, n, g, bits,
            )?));
        }
        Ok(out)
    }
}
