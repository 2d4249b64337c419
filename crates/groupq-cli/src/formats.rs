//! The three output formats: which recipe each uses, the tensors a
//! quantized Linear becomes, the `quantization_config` loaders read, and the
//! way back to float weights.

use crate::checkpoint::OutTensor;
use anyhow::{anyhow, bail, Result};
use groupq::half::{bf16, f16};
use groupq::pack::{self, GptqZeros};
use groupq::recipe::Recipe;
use groupq::*;
use safetensors::Dtype;
use serde_json::{json, Value};

/// A checkpoint format that inference engines load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Format {
    /// compressed-tensors `pack-quantized` (vLLM, SGLang, transformers).
    CompressedTensors,
    /// GPTQ, `checkpoint_format: gptq` (v1 zero points): AutoGPTQ,
    /// GPTQModel, vLLM, exllama, transformers.
    Gptq,
    /// AWQ GEMM (AutoAWQ, vLLM, transformers): 4-bit with zero points.
    Awq,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::CompressedTensors => "compressed-tensors",
            Format::Gptq => "gptq",
            Format::Awq => "awq",
        }
    }
}

/// What to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub format: Format,
    pub bits: u32,
    pub group_size: usize,
    pub symmetric: bool,
}

/// How well a tensor survived: signal-to-quantization-noise ratio and the
/// largest absolute error, from the values a loader dequantizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub sqnr_db: f64,
    pub max_abs_error: f64,
}

impl Stats {
    fn of(original: impl Iterator<Item = f64>, restored: impl Iterator<Item = f64>) -> Stats {
        let (mut signal, mut noise, mut max) = (0.0f64, 0.0f64, 0.0f64);
        for (a, b) in original.zip(restored) {
            signal += a * a;
            noise += (a - b) * (a - b);
            max = max.max((a - b).abs());
        }
        let sqnr_db = if noise == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (signal / noise).log10()
        };
        Stats {
            sqnr_db,
            max_abs_error: max,
        }
    }
}

/// Float weight dtypes of a checkpoint.
pub trait Storage: Element {
    const DTYPE: Dtype;
    fn read(bytes: &[u8]) -> Vec<Self>;
    fn write(values: &[Self]) -> Vec<u8>;
}

macro_rules! storage {
    ($t:ty, $d:expr, $n:literal) => {
        impl Storage for $t {
            const DTYPE: Dtype = $d;
            fn read(bytes: &[u8]) -> Vec<Self> {
                bytes
                    .chunks_exact($n)
                    .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            }
            fn write(values: &[Self]) -> Vec<u8> {
                values.iter().flat_map(|v| v.to_le_bytes()).collect()
            }
        }
    };
}
storage!(f32, Dtype::F32, 4);
storage!(f16, Dtype::F16, 2);
storage!(bf16, Dtype::BF16, 2);

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn read_i32(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn transpose<T: Copy>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    (0..rows * cols)
        .map(|i| m[(i % rows) * cols + i / rows])
        .collect()
}

impl Spec {
    /// Refuses combinations the format cannot store.
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.bits, 4 | 8) {
            bail!("--bits {} is not supported: use 4 or 8", self.bits);
        }
        if self.group_size == 0 {
            bail!("--group-size must be at least 1");
        }
        if self.format == Format::Awq && (self.bits != 4 || self.symmetric) {
            bail!("awq stores 4-bit codes with zero points only: use --bits 4 --asym");
        }
        Ok(())
    }

    /// The recipe reproducing the format's reference quantizer.
    pub fn recipe(&self) -> Recipe {
        let half = 1i32 << (self.bits - 1);
        match self.format {
            Format::CompressedTensors => {
                let mut r = if self.symmetric {
                    Recipe::compressed_tensors_w4a16()
                } else {
                    Recipe::compressed_tensors_w4a16_asym()
                };
                (r.q_min, r.q_max) = (-half, half - 1);
                r
            }
            Format::Gptq => Recipe::gptq(self.symmetric, self.bits),
            // AutoAWQ casts each layer to float16 before quantizing it.
            Format::Awq => Recipe::awq_f16(true, self.bits),
        }
    }

    /// Why a `[n, k]` weight cannot be stored in this format, if it cannot.
    pub fn shape_problem(&self, n: usize, k: usize) -> Option<String> {
        let pf = 32 / self.bits as usize;
        if !k.is_multiple_of(self.group_size) {
            return Some(format!(
                "in_features {k} is not a multiple of --group-size {}",
                self.group_size
            ));
        }
        match self.format {
            Format::Gptq if !k.is_multiple_of(pf) => {
                Some(format!("in_features {k} is not a multiple of {pf}"))
            }
            Format::Awq if !n.is_multiple_of(pf) => {
                Some(format!("out_features {n} is not a multiple of {pf}"))
            }
            Format::CompressedTensors if !self.group_size.is_multiple_of(2) => {
                Some("--group-size must be even".into())
            }
            _ => None,
        }
    }

    /// The tensors that replace `<prefix>.weight` (`[n, k]`, dtype `dtype`).
    pub fn outputs(&self, prefix: &str, dtype: Dtype, n: usize, k: usize) -> Vec<OutTensor> {
        let (g, per_word) = (k / self.group_size, 32 / self.bits as usize);
        let t =
            |suffix: &str, dtype, shape| OutTensor::new(format!("{prefix}.{suffix}"), dtype, shape);
        match self.format {
            Format::CompressedTensors => {
                let mut v = vec![
                    t("weight_packed", Dtype::I32, vec![n, k.div_ceil(per_word)]),
                    t("weight_scale", dtype, vec![n, g]),
                    t("weight_shape", Dtype::I64, vec![2]),
                ];
                if !self.symmetric {
                    v.push(t(
                        "weight_zero_point",
                        Dtype::I32,
                        vec![n.div_ceil(per_word), g],
                    ));
                }
                v
            }
            Format::Gptq => vec![
                t("qweight", Dtype::I32, vec![k / per_word, n]),
                t("qzeros", Dtype::I32, vec![g, n.div_ceil(per_word)]),
                t("scales", Dtype::F16, vec![g, n]),
                t("g_idx", Dtype::I32, vec![k]),
            ],
            Format::Awq => vec![
                t("qweight", Dtype::I32, vec![k, n / per_word]),
                t("qzeros", Dtype::I32, vec![g, n / per_word]),
                t("scales", Dtype::F16, vec![g, n]),
            ],
        }
    }

    /// Quantizes a `[n, k]` weight: the bytes of each tensor of
    /// [`outputs`](Self::outputs), in order, and how much was lost.
    pub fn quantize<T: Storage>(
        &self,
        stream: &Stream,
        w: &[T],
        n: usize,
        k: usize,
    ) -> Result<(Vec<Vec<u8>>, Stats)> {
        let (gs, g, bits) = (self.group_size, k / self.group_size, self.bits);
        let recipe = self.recipe();
        let original = || w.iter().map(|v| v.to_f64());
        match self.format {
            Format::CompressedTensors => {
                let (codes, scale, zero) = dynamic::<T, T, i8>(stream, w, n, k, gs, recipe)?;
                let restored = dequantize::<i8, T>(stream, &codes, &scale, &zero, n, k, gs)?;
                let mut out = vec![
                    i32_bytes(&pack::compressed_tensors_weight(&codes, n, k, bits)?),
                    T::write(&scale),
                    [n as i64, k as i64]
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                ];
                if !self.symmetric {
                    out.push(i32_bytes(&pack::compressed_tensors_zero_point(
                        &zero, n, g, bits,
                    )?));
                }
                Ok((
                    out,
                    Stats::of(original(), restored.iter().map(|v| v.to_f64())),
                ))
            }
            Format::Gptq => {
                let (codes, scale, zero) = dynamic::<T, f32, u8>(stream, w, n, k, gs, recipe)?;
                // Loaders read float16 scales.
                let scale16: Vec<f16> = scale.iter().map(|&s| f16::from_f32(s)).collect();
                let restored = dequantize::<u8, f16>(stream, &codes, &scale16, &zero, n, k, gs)?;
                let g_idx: Vec<i32> = (0..k).map(|i| (i / gs) as i32).collect();
                let out = vec![
                    i32_bytes(&pack::gptq_qweight(&codes, n, k, bits)?),
                    i32_bytes(&pack::gptq_qzeros(&zero, n, g, bits, GptqZeros::V1)?),
                    f16::write(&transpose(&scale16, n, g)),
                    i32_bytes(&g_idx),
                ];
                Ok((
                    out,
                    Stats::of(original(), restored.iter().map(|v| v.to_f64())),
                ))
            }
            Format::Awq => {
                let (codes, scale, zero) = dynamic::<T, f16, u8>(stream, w, n, k, gs, recipe)?;
                let restored = dequantize::<u8, f16>(stream, &codes, &scale, &zero, n, k, gs)?;
                let out = vec![
                    i32_bytes(&pack::awq_qweight(&codes, n, k, bits)?),
                    i32_bytes(&pack::awq_qzeros(&zero, n, g, bits)?),
                    f16::write(&transpose(&scale, n, g)),
                ];
                Ok((
                    out,
                    Stats::of(original(), restored.iter().map(|v| v.to_f64())),
                ))
            }
        }
    }

    /// The `quantization_config` of `config.json`, with the fields each
    /// loader requires. `ignore` lists the Linear modules left in float.
    pub fn quantization_config(&self, ignore: &[String]) -> Value {
        match self.format {
            Format::CompressedTensors => json!({
                "quant_method": "compressed-tensors",
                "format": "pack-quantized",
                "quantization_status": "compressed",
                "config_groups": {
                    "group_0": {
                        "targets": ["Linear"],
                        "weights": {
                            "num_bits": self.bits,
                            "type": "int",
                            "symmetric": self.symmetric,
                            "strategy": "group",
                            "group_size": self.group_size,
                            "dynamic": false,
                            "actorder": null,
                            "observer": "minmax",
                            "observer_kwargs": {},
                        },
                        "input_activations": null,
                        "output_activations": null,
                    }
                },
                "ignore": ignore,
                "kv_cache_scheme": null,
                "global_compression_ratio": null,
                "quantized_by": "groupq",
            }),
            Format::Gptq => json!({
                "quant_method": "gptq",
                "bits": self.bits,
                "group_size": self.group_size,
                "desc_act": false,
                "sym": self.symmetric,
                "static_groups": false,
                "true_sequential": true,
                "damp_percent": 0.01,
                "checkpoint_format": "gptq",
                "modules_in_block_to_quantize": null,
                "quantized_by": "groupq",
            }),
            Format::Awq => json!({
                "quant_method": "awq",
                "bits": self.bits,
                "group_size": self.group_size,
                "zero_point": true,
                "version": "gemm",
                "modules_to_not_convert": if ignore.is_empty() { Value::Null } else { json!(ignore) },
                "quantized_by": "groupq",
            }),
        }
    }
}

/// The fused recipe plan on one weight: codes, scales and zero points.
fn dynamic<T: Element, S: Element, Q: IntElement>(
    stream: &Stream,
    w: &[T],
    n: usize,
    k: usize,
    gs: usize,
    recipe: Recipe,
) -> Result<(Vec<Q>, Vec<S>, Vec<i32>)> {
    let g = k / gs;
    let desc = QuantizeDynamicPerGroupDescriptor {
        outer_size: n,
        axis_size: k,
        group_size: gs,
        recipe,
        input_element: T::KIND,
        scale_element: S::KIND,
        output_element: Q::KIND,
    };
    let plan = QuantizeDynamicPerGroupPlan::<T, S, Q>::select(stream, &desc, Default::default())?;
    let (mut q, mut s, mut z) = (
        vec![Q::default(); n * k],
        vec![S::from_f64(0.0); n * g],
        vec![0i32; n * g],
    );
    plan.run(
        stream,
        Workspace::None,
        QuantizeDynamicPerGroupArgs {
            input: TensorRef::new(w, [n, k])?,
            scale: TensorMut::new(&mut s, [n, g])?,
            zero_point: TensorMut::new(&mut z, [n, g])?,
            output: TensorMut::new(&mut q, [n, k])?,
        },
    )?;
    Ok((q, s, z))
}

/// SPEC §3.2 dequantization of a `[n, k]` weight.
fn dequantize<Q: IntElement, O: Element>(
    stream: &Stream,
    codes: &[Q],
    scale: &[O],
    zero: &[i32],
    n: usize,
    k: usize,
    gs: usize,
) -> Result<Vec<O>> {
    let desc = DequantizePerGroupDescriptor {
        outer_size: n,
        axis_size: k,
        group_size: gs,
        input_element: Q::KIND,
        output_element: O::KIND,
    };
    let plan = DequantizePerGroupPlan::<Q, O>::select(stream, &desc, Default::default())?;
    let mut y = vec![O::from_f64(0.0); n * k];
    plan.run(
        stream,
        Workspace::None,
        DequantizePerGroupArgs {
            input: TensorRef::new(codes, [n, k])?,
            scale: TensorRef::new(scale, [n, k / gs])?,
            zero_point: TensorRef::new(zero, [n, k / gs])?,
            output: TensorMut::new(&mut y, [n, k])?,
        },
    )?;
    Ok(y)
}

/// A quantized module found in a checkpoint, by format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    CompressedTensors,
    Gptq { v2: bool },
    Awq,
}

impl Detected {
    pub fn name(self) -> &'static str {
        match self {
            Detected::CompressedTensors => "compressed-tensors (pack-quantized)",
            Detected::Gptq { v2: false } => "gptq (v1 zero points)",
            Detected::Gptq { v2: true } => "gptq_v2",
            Detected::Awq => "awq (gemm)",
        }
    }

    /// From `quantization_config`, else from the tensor names.
    pub fn detect(config: Option<&Value>, names: &[&str]) -> Option<Detected> {
        if let Some(c) = config {
            match c["quant_method"].as_str() {
                Some("compressed-tensors") => return Some(Detected::CompressedTensors),
                Some("gptq") => {
                    let v2 = c["checkpoint_format"].as_str() == Some("gptq_v2");
                    return Some(Detected::Gptq { v2 });
                }
                Some("awq") => return Some(Detected::Awq),
                _ => {}
            }
        }
        if names.iter().any(|n| n.ends_with(".weight_packed")) {
            Some(Detected::CompressedTensors)
        } else if names.iter().any(|n| n.ends_with(".g_idx")) {
            Some(Detected::Gptq { v2: false })
        } else if names.iter().any(|n| n.ends_with(".qweight")) {
            Some(Detected::Awq)
        } else {
            None
        }
    }

    /// The tensor whose presence marks a quantized module, and the module's
    /// other tensors.
    pub fn marker(self) -> &'static str {
        match self {
            Detected::CompressedTensors => "weight_packed",
            _ => "qweight",
        }
    }

    pub fn parts(self) -> &'static [&'static str] {
        match self {
            Detected::CompressedTensors => &[
                "weight_packed",
                "weight_scale",
                "weight_shape",
                "weight_zero_point",
            ],
            Detected::Gptq { .. } => &["qweight", "qzeros", "scales", "g_idx"],
            Detected::Awq => &["qweight", "qzeros", "scales"],
        }
    }
}

/// A tensor as stored: dtype, shape and little-endian bytes.
pub type Stored<'a> = (Dtype, Vec<usize>, &'a [u8]);

/// One quantized module's tensors, by part name (`"qweight"`, …).
pub type ModuleTensors<'a> = dyn Fn(&str) -> Option<Stored<'a>> + 'a;

/// Float weights back from a quantized module: `(dtype, [n, k], bytes)`.
pub fn dequantize_module(
    detected: Detected,
    bits: u32,
    group_size: Option<usize>,
    get: &ModuleTensors<'_>,
    stream: &Stream,
) -> Result<(Dtype, Vec<usize>, Vec<u8>)> {
    let need = |part: &str| get(part).ok_or_else(|| anyhow!("missing tensor .{part}"));
    match detected {
        Detected::CompressedTensors => {
            let (_, _, shape) = need("weight_shape")?;
            let shape: Vec<i64> = shape
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let (n, k) = (shape[0] as usize, shape[1] as usize);
            let (sdtype, sshape, sbytes) = need("weight_scale")?;
            let g = sshape[1];
            let gs = k / g;
            let codes = pack::compressed_tensors_weight_unpack(
                &read_i32(need("weight_packed")?.2),
                n,
                k,
                bits,
            )?;
            let zero = match get("weight_zero_point") {
                Some((_, _, b)) => {
                    pack::compressed_tensors_zero_point_unpack(&read_i32(b), n, g, bits)?
                }
                None => vec![0; n * g],
            };
            let bytes = match sdtype {
                Dtype::BF16 => bf16::write(&dequantize::<i8, bf16>(
                    stream,
                    &codes,
                    &bf16::read(sbytes),
                    &zero,
                    n,
                    k,
                    gs,
                )?),
                Dtype::F16 => f16::write(&dequantize::<i8, f16>(
                    stream,
                    &codes,
                    &f16::read(sbytes),
                    &zero,
                    n,
                    k,
                    gs,
                )?),
                Dtype::F32 => f32::write(&dequantize::<i8, f32>(
                    stream,
                    &codes,
                    &f32::read(sbytes),
                    &zero,
                    n,
                    k,
                    gs,
                )?),
                d => bail!("weight_scale has unsupported dtype {d:?}"),
            };
            Ok((sdtype, vec![n, k], bytes))
        }
        Detected::Gptq { v2 } => {
            let (_, qshape, qbytes) = need("qweight")?;
            let per_word = 32 / bits as usize;
            let (k, n) = (qshape[0] * per_word, qshape[1]);
            let (_, sshape, sbytes) = need("scales")?;
            let g = sshape[0];
            let gs = group_size.unwrap_or(k / g);
            if let Some((_, _, gb)) = get("g_idx") {
                let g_idx = read_i32(gb);
                if g_idx.iter().enumerate().any(|(i, &v)| v as usize != i / gs) {
                    bail!("g_idx is not k / group_size (act-order checkpoints are not supported)");
                }
            }
            let codes = pack::gptq_qweight_unpack(&read_i32(qbytes), n, k, bits)?;
            let enc = if v2 { GptqZeros::V2 } else { GptqZeros::V1 };
            let zero = pack::gptq_qzeros_unpack(&read_i32(need("qzeros")?.2), n, g, bits, enc)?;
            let scale = transpose(&f16::read(sbytes), g, n);
            let y = dequantize::<u8, f16>(stream, &codes, &scale, &zero, n, k, gs)?;
            Ok((Dtype::F16, vec![n, k], f16::write(&y)))
        }
        Detected::Awq => {
            let (_, qshape, qbytes) = need("qweight")?;
            let per_word = 32 / bits as usize;
            let (k, n) = (qshape[0], qshape[1] * per_word);
            let (_, sshape, sbytes) = need("scales")?;
            let g = sshape[0];
            let gs = k / g;
            let codes = pack::awq_qweight_unpack(&read_i32(qbytes), n, k, bits)?;
            let zero = pack::awq_qzeros_unpack(&read_i32(need("qzeros")?.2), n, g, bits)?;
            let scale = transpose(&f16::read(sbytes), g, n);
            let y = dequantize::<u8, f16>(stream, &codes, &scale, &zero, n, k, gs)?;
            Ok((Dtype::F16, vec![n, k], f16::write(&y)))
        }
    }
}
