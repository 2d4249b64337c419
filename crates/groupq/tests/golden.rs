//! The golden cases of `tests/golden/` (produced by the peers themselves:
//! PyTorch, torchao, compressed-tensors, AutoGPTQ, GPTQModel, AutoAWQ; see
//! the README there) reproduced bit for bit by the recipe presets: scales,
//! zero points, codes and dequantized values. With the `wgpu` feature
//! every plan also runs on the device stream and must give the CPU's bits.

use groupq::half::{bf16, f16};
use groupq::recipe::{Recipe, TorchaoMapping};
use groupq::*;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::PathBuf;

#[cfg(feature = "wgpu")]
mod device_common;

/// One golden file.
struct Case {
    name: String,
    peer: String,
    variant: String,
    dtype: String,
    rows: usize,
    cols: usize,
    group: usize,
    meta: HashMap<String, String>,
    buf: Vec<u8>,
}

/// A tensor as f64 values (exact for every dtype in the files) and raw bits.
struct Tensor {
    dtype: Dtype,
    values: Vec<f64>,
    bits: Vec<u64>,
}

fn le<const N: usize>(b: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    b.chunks_exact(N).map(|c| c.try_into().unwrap())
}

impl Case {
    fn tensor(&self, name: &str) -> Option<Tensor> {
        let st = SafeTensors::deserialize(&self.buf).unwrap();
        let t = st.tensor(name).ok()?;
        let d = t.data();
        let (values, bits): (Vec<f64>, Vec<u64>) = match t.dtype() {
            Dtype::F32 => le::<4>(d)
                .map(|b| {
                    (
                        f64::from(f32::from_le_bytes(b)),
                        u64::from(u32::from_le_bytes(b)),
                    )
                })
                .unzip(),
            Dtype::F64 => le::<8>(d)
                .map(|b| (f64::from_le_bytes(b), u64::from_le_bytes(b)))
                .unzip(),
            Dtype::F16 => le::<2>(d)
                .map(|b| {
                    (
                        f64::from(f16::from_le_bytes(b)),
                        u64::from(u16::from_le_bytes(b)),
                    )
                })
                .unzip(),
            Dtype::BF16 => le::<2>(d)
                .map(|b| {
                    (
                        f64::from(bf16::from_le_bytes(b)),
                        u64::from(u16::from_le_bytes(b)),
                    )
                })
                .unzip(),
            Dtype::I32 => le::<4>(d)
                .map(|b| {
                    (
                        f64::from(i32::from_le_bytes(b)),
                        u64::from(u32::from_le_bytes(b)),
                    )
                })
                .unzip(),
            Dtype::I64 => le::<8>(d)
                .map(|b| (i64::from_le_bytes(b) as f64, u64::from_le_bytes(b)))
                .unzip(),
            Dtype::I8 => d
                .iter()
                .map(|&b| (f64::from(b as i8), u64::from(b)))
                .unzip(),
            Dtype::U8 => d.iter().map(|&b| (f64::from(b), u64::from(b))).unzip(),
            other => panic!("{}: unexpected dtype {other:?} for {name}", self.name),
        };
        Some(Tensor {
            dtype: t.dtype(),
            values,
            bits,
        })
    }

    fn must(&self, name: &str) -> Tensor {
        self.tensor(name)
            .unwrap_or_else(|| panic!("{}: no tensor {name}", self.name))
    }
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn cases(prefix: &str) -> Vec<Case> {
    let mut out: Vec<Case> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .map(|p| {
            let buf = std::fs::read(&p).unwrap();
            let (_, header) = SafeTensors::read_metadata(&buf).unwrap();
            let meta = header.metadata().clone().unwrap_or_default();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            let parts: Vec<&str> = name.trim_end_matches(".safetensors").split("__").collect();
            let shape: Vec<usize> = serde_json::from_str(&meta["shape"]).unwrap();
            Case {
                peer: parts[0].into(),
                variant: parts[1].into(),
                dtype: parts[2].into(),
                rows: shape[0],
                cols: shape[1],
                // gguf files name a block size instead.
                group: meta
                    .get("group_size")
                    .and_then(|g| g.parse().ok())
                    .unwrap_or(32),
                name,
                meta,
                buf,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(!out.is_empty(), "no golden files start with {prefix}");
    out
}

/// Element types with a safetensors dtype.
trait Golden: Element {
    const DTYPE: Dtype;
    fn bits(self) -> u64;
}
impl Golden for f32 {
    const DTYPE: Dtype = Dtype::F32;
    fn bits(self) -> u64 {
        self.to_bits().into()
    }
}
impl Golden for f16 {
    const DTYPE: Dtype = Dtype::F16;
    fn bits(self) -> u64 {
        self.to_bits().into()
    }
}
impl Golden for bf16 {
    const DTYPE: Dtype = Dtype::BF16;
    fn bits(self) -> u64 {
        self.to_bits().into()
    }
}

/// Where `ours` and the golden tensor differ: (count, first index).
fn compare_bits(what: &str, case: &Case, ours: &[u64], golden: &Tensor) {
    assert_eq!(
        ours.len(),
        golden.bits.len(),
        "{}: {what} length",
        case.name
    );
    let diffs: Vec<usize> = (0..ours.len())
        .filter(|&i| ours[i] != golden.bits[i])
        .collect();
    assert!(
        diffs.is_empty(),
        "{}: {what}: {} of {} differ, first at {} (ours {:#x}, golden {:#x})",
        case.name,
        diffs.len(),
        ours.len(),
        diffs[0],
        ours[diffs[0]],
        golden.bits[diffs[0]],
    );
}

fn compare_values(what: &str, case: &Case, ours: &[f64], golden: &Tensor) {
    assert_eq!(
        ours.len(),
        golden.values.len(),
        "{}: {what} length",
        case.name
    );
    let diffs: Vec<usize> = (0..ours.len())
        .filter(|&i| ours[i] != golden.values[i])
        .collect();
    assert!(
        diffs.is_empty(),
        "{}: {what}: {} of {} differ, first at {} (ours {}, golden {})",
        case.name,
        diffs.len(),
        ours.len(),
        diffs[0],
        ours[diffs[0]],
        golden.values[diffs[0]],
    );
}

/// What a dynamic quantization produced.
struct Quantized<S> {
    scale: Vec<S>,
    zero_point: Vec<i32>,
    codes: Vec<i32>,
}

/// Runs the fused plan for `recipe` on the case's input, on 1 and 2
/// threads (which must agree), and checks scale, zero point and codes.
fn quantize_case<T: Golden, S: Golden, Q: IntElement + Into<i32>>(
    case: &Case,
    recipe: Recipe,
) -> Quantized<S> {
    let input = case.must("input");
    assert_eq!(input.dtype, T::DTYPE, "{}: input dtype", case.name);
    let x: Vec<T> = input.values.iter().map(|&v| T::from_f64(v)).collect();
    let (m, k, g) = (case.rows, case.cols, case.group);
    let desc = QuantizeDynamicPerGroupDescriptor {
        outer_size: m,
        axis_size: k,
        group_size: g,
        recipe,
        input_element: T::KIND,
        scale_element: S::KIND,
        output_element: Q::KIND,
    };
    let mut results = Vec::new();
    for threads in [1, 2] {
        let stream = Stream::cpu_with_threads(threads).unwrap();
        let plan =
            QuantizeDynamicPerGroupPlan::<T, S, Q>::select(&stream, &desc, Default::default())
                .unwrap();
        let (mut s, mut z, mut q) = (
            vec![S::from_f64(0.0); m * k / g],
            vec![0i32; m * k / g],
            vec![Q::default(); m * k],
        );
        let args = QuantizeDynamicPerGroupArgs {
            input: TensorRef::new(&x, [m, k]).unwrap(),
            scale: TensorMut::new(&mut s, [m, k / g]).unwrap(),
            zero_point: TensorMut::new(&mut z, [m, k / g]).unwrap(),
            output: TensorMut::new(&mut q, [m, k]).unwrap(),
        };
        plan.run(&stream, Workspace::None, args).unwrap();
        results.push((s, z, q));
    }
    let (s, z, q) = results.pop().unwrap();
    let (s1, z1, q1) = results.pop().unwrap();
    assert!(
        s.iter().zip(&s1).all(|(a, b)| a.bits() == b.bits()) && z == z1 && q == q1,
        "{}: thread counts disagree",
        case.name
    );
    #[cfg(feature = "wgpu")]
    if let Some(gpu) = device_common::gpu() {
        let (ds, dz, dq, _) = device_common::dynamic::<T, S, Q>(gpu, &desc, &x, false).unwrap();
        use device_common::bytes as b;
        assert!(
            b(&ds) == b(&s) && dz == z && b(&dq) == b(&q),
            "{}: the device disagrees with the CPU",
            case.name
        );
    }

    let scale = case.must("scale");
    assert_eq!(scale.dtype, S::DTYPE, "{}: scale dtype", case.name);
    compare_bits(
        "scale",
        case,
        &s.iter().map(|v| v.bits()).collect::<Vec<_>>(),
        &scale,
    );
    if let Some(zp) = case.tensor("zero_point") {
        compare_values(
            "zero_point",
            case,
            &z.iter().map(|&v| v.into()).collect::<Vec<_>>(),
            &zp,
        );
    } else {
        let midpoint = (recipe.q_max + recipe.q_min + 1) / 2;
        assert!(
            z.iter().all(|&v| v == midpoint),
            "{}: symmetric zero points",
            case.name
        );
    }
    let codes: Vec<i32> = q.iter().map(|&c| c.into()).collect();
    compare_values(
        "q",
        case,
        &codes.iter().map(|&c| c.into()).collect::<Vec<_>>(),
        &case.must("q"),
    );
    Quantized {
        scale: s,
        zero_point: z,
        codes,
    }
}

/// SPEC §3.2 dequantization of `codes` with `scale` (as `O`) and
/// `zero_point`, compared bit for bit with the golden tensor `name`.
fn check_dequant<Q: IntElement + TryFrom<i32>, O: Golden>(
    case: &Case,
    name: &str,
    codes: &[i32],
    scale: &[f64],
    zero_point: &[i32],
    ignore_negative_zero: bool,
) where
    <Q as TryFrom<i32>>::Error: std::fmt::Debug,
{
    let (m, k, g) = (case.rows, case.cols, case.group);
    let q: Vec<Q> = codes.iter().map(|&c| Q::try_from(c).unwrap()).collect();
    let s: Vec<O> = scale.iter().map(|&v| O::from_f64(v)).collect();
    let mut y = vec![O::from_f64(0.0); m * k];
    let desc = DequantizePerGroupDescriptor {
        outer_size: m,
        axis_size: k,
        group_size: g,
        input_element: Q::KIND,
        output_element: O::KIND,
    };
    let stream = Stream::cpu();
    let plan = DequantizePerGroupPlan::<Q, O>::select(&stream, &desc, Default::default()).unwrap();
    let args = DequantizePerGroupArgs {
        input: TensorRef::new(&q, [m, k]).unwrap(),
        scale: TensorRef::new(&s, [m, k / g]).unwrap(),
        zero_point: TensorRef::new(zero_point, [m, k / g]).unwrap(),
        output: TensorMut::new(&mut y, [m, k]).unwrap(),
    };
    plan.run(&stream, Workspace::None, args).unwrap();
    #[cfg(feature = "wgpu")]
    if let Some(gpu) = device_common::gpu() {
        let dy = device_common::dequantize::<Q, O>(gpu, &desc, &q, &s, zero_point).unwrap();
        let b = device_common::bytes;
        assert!(
            b(&dy) == b(&y),
            "{}: {name}: the device disagrees with the CPU",
            case.name
        );
    }
    let golden = case.must(name);
    assert_eq!(golden.dtype, O::DTYPE, "{}: {name} dtype", case.name);
    let mut ours: Vec<u64> = y.iter().map(|v| v.bits()).collect();
    if ignore_negative_zero {
        // The peer's fake-quant multiplies a -0.0 code by s; SPEC's integer
        // difference gives +0.0 (the README's `dequant_negative_zeros`).
        let neg_zero = O::from_f64(-0.0).bits();
        for (o, &gb) in ours.iter_mut().zip(&golden.bits) {
            if gb == neg_zero && *o == O::from_f64(0.0).bits() {
                *o = neg_zero;
            }
        }
    }
    compare_bits(name, case, &ours, &golden);
}

fn f64s<S: Element>(v: &[S]) -> Vec<f64> {
    v.iter().map(|s| s.to_f64()).collect()
}

macro_rules! by_dtype {
    ($case:expr, $f:ident, $($arg:expr),*) => {
        match $case.dtype.as_str() {
            "f32" => $f::<f32>($case, $($arg),*),
            "bf16" => $f::<bf16>($case, $($arg),*),
            "f16" => $f::<f16>($case, $($arg),*),
            other => panic!("{}: dtype {other}", $case.name),
        }
    };
}

fn torchao_case<T: Golden>(case: &Case, mapping: TorchaoMapping, lo: i32, hi: i32) {
    let recipe = Recipe::torchao(mapping, lo, hi);
    if lo < 0 {
        let r = quantize_case::<T, T, i8>(case, recipe);
        check_dequant::<i8, T>(
            case,
            "dequant",
            &r.codes,
            &f64s(&r.scale),
            &r.zero_point,
            false,
        );
        if T::KIND != ElementKind::F32 {
            check_dequant::<i8, f32>(
                case,
                "dequant_f32",
                &r.codes,
                &f64s(&r.scale),
                &r.zero_point,
                false,
            );
        }
    } else {
        let r = quantize_case::<T, T, u8>(case, recipe);
        check_dequant::<u8, T>(
            case,
            "dequant",
            &r.codes,
            &f64s(&r.scale),
            &r.zero_point,
            false,
        );
        if T::KIND != ElementKind::F32 {
            check_dequant::<u8, f32>(
                case,
                "dequant_f32",
                &r.codes,
                &f64s(&r.scale),
                &r.zero_point,
                false,
            );
        }
    }
}

#[test]
fn torchao_choose_quantize_dequantize() {
    for case in cases("torchao__") {
        let mapping = if case.variant.starts_with("sym") {
            TorchaoMapping::Symmetric
        } else {
            TorchaoMapping::Asymmetric
        };
        let (lo, hi) = match case.variant.split('_').nth(1).unwrap() {
            "int4" => (-8, 7),
            "uint4" => (0, 15),
            "int8" => (-128, 127),
            other => panic!("{other}"),
        };
        by_dtype!(&case, torchao_case, mapping, lo, hi);
    }
}

#[test]
fn torch_per_token_asymmetric() {
    for case in cases("torchcore__per_token_asym_int8") {
        let r = quantize_case::<f32, f32, i8>(&case, Recipe::torch_per_token_asymmetric_int8());
        check_dequant::<i8, f32>(
            &case,
            "dequant",
            &r.codes,
            &f64s(&r.scale),
            &r.zero_point,
            false,
        );
    }
}

fn ct_case<T: Golden>(case: &Case, recipe: Recipe) {
    let r = quantize_case::<T, T, i8>(case, recipe);
    check_dequant::<i8, T>(
        case,
        "dequant",
        &r.codes,
        &f64s(&r.scale),
        &r.zero_point,
        false,
    );
    let (n, k, g) = (case.rows, case.cols, case.cols / case.group);
    let codes: Vec<i8> = r.codes.iter().map(|&c| c as i8).collect();
    let packed = pack::compressed_tensors_weight(&codes, n, k, 4).unwrap();
    compare_bits("packed", case, &words(&packed), &case.must("packed"));
    assert_eq!(
        pack::compressed_tensors_weight_unpack(&packed, n, k, 4).unwrap(),
        codes
    );
    if let Some(golden) = case.tensor("packed_zero_point") {
        let zp = pack::compressed_tensors_zero_point(&r.zero_point, n, g, 4).unwrap();
        compare_bits("packed_zero_point", case, &words(&zp), &golden);
        assert_eq!(
            pack::compressed_tensors_zero_point_unpack(&zp, n, g, 4).unwrap(),
            r.zero_point
        );
    }
}

/// Packed words as the golden files' `i32` bit patterns.
fn words(w: &[i32]) -> Vec<u64> {
    w.iter().map(|&v| u64::from(v as u32)).collect()
}

/// A `[rows, cols]` matrix transposed.
fn transpose<T: Copy>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    (0..rows * cols)
        .map(|i| m[(i % rows) * cols + i / rows])
        .collect()
}

/// Scales as stored in a checkpoint: `[G, N]` in dtype `O`.
fn stored_scales<O: Golden>(scale: &[f64], n: usize, g: usize) -> Vec<u64> {
    transpose(scale, n, g)
        .iter()
        .map(|&v| O::from_f64(v).bits())
        .collect()
}

#[test]
fn compressed_tensors_w4a16() {
    for case in cases("ct__") {
        let recipe = match case.variant.as_str() {
            "w4a16" => Recipe::compressed_tensors_w4a16(),
            "w4a16_asym" => Recipe::compressed_tensors_w4a16_asym(),
            other => panic!("{other}"),
        };
        by_dtype!(&case, ct_case, recipe);
    }
}

fn gptq_case<T: Golden>(case: &Case, symmetric: bool) {
    let r = quantize_case::<T, f32, u8>(case, Recipe::gptq(symmetric, 4));
    let (n, k, g) = (case.rows, case.cols, case.cols / case.group);
    let codes: Vec<u8> = r.codes.iter().map(|&c| c as u8).collect();
    let qweight = pack::gptq_qweight(&codes, n, k, 4).unwrap();
    compare_bits(
        "packed_qweight",
        case,
        &words(&qweight),
        &case.must("packed_qweight"),
    );
    assert_eq!(pack::gptq_qweight_unpack(&qweight, n, k, 4).unwrap(), codes);
    let g_idx: Vec<i32> = (0..k).map(|i| (i / case.group) as i32).collect();
    compare_bits(
        "packed_g_idx",
        case,
        &words(&g_idx),
        &case.must("packed_g_idx"),
    );
    let scale = f64s(&r.scale);
    if case.peer == "gptqmodel" {
        // v1 by whole-word subtraction, v2 raw; float16 scales.
        for (name, enc) in [
            ("packed_qzeros", pack::GptqZeros::V1WholeWord),
            ("packed_qzeros_v2", pack::GptqZeros::V2),
        ] {
            let qz = pack::gptq_qzeros(&r.zero_point, n, g, 4, enc).unwrap();
            compare_bits(name, case, &words(&qz), &case.must(name));
            assert_eq!(
                pack::gptq_qzeros_unpack(&qz, n, g, 4, enc).unwrap(),
                r.zero_point
            );
        }
        let stored = stored_scales::<f16>(&scale, n, g);
        compare_bits("packed_scales", case, &stored, &case.must("packed_scales"));
        // dequantize_weight: float16 scales times (q - z).
        check_dequant::<u8, f16>(case, "dequant", &r.codes, &scale, &r.zero_point, false);
    } else {
        // AutoGPTQ: the unmasked v1 zero points, scales in the weight dtype,
        // and its forward reading the zero points back per nibble.
        let enc = pack::GptqZeros::V1AutoGptq;
        let qz = pack::gptq_qzeros(&r.zero_point, n, g, 4, enc).unwrap();
        compare_bits(
            "packed_qzeros",
            case,
            &words(&qz),
            &case.must("packed_qzeros"),
        );
        let stored = stored_scales::<T>(&scale, n, g);
        compare_bits("packed_scales", case, &stored, &case.must("packed_scales"));
        let z_read = pack::gptq_qzeros_unpack(&qz, n, g, 4, enc).unwrap();
        let in_dtype: Vec<f64> = scale.iter().map(|&v| T::from_f64(v).to_f64()).collect();
        check_dequant::<u8, T>(case, "dequant", &r.codes, &in_dtype, &z_read, false);
    }
}

#[test]
fn gptq_rtn() {
    for prefix in ["autogptq__", "gptqmodel__"] {
        for case in cases(prefix) {
            let symmetric = case.variant == "rtn_sym";
            by_dtype!(&case, gptq_case, symmetric);
        }
    }
}

fn awq_case<T: Golden>(case: &Case, variant: &str) {
    match variant {
        "asym_gemm" | "asym_gemm_apply_quant" => {
            let r = if variant == "asym_gemm" {
                let r = quantize_case::<T, T, u8>(case, Recipe::awq(true, 4));
                (r.codes, f64s(&r.scale), r.zero_point)
            } else {
                let r = quantize_case::<T, f16, u8>(case, Recipe::awq_f16(true, 4));
                (r.codes, f64s(&r.scale), r.zero_point)
            };
            // dequantize_gemm: float16 scales times (q - z).
            check_dequant::<u8, f16>(case, "dequant", &r.0, &r.1, &r.2, false);
            awq_packing(case, &r.0, &r.1, &r.2);
        }
        "sym_pseudo" => {
            let r = quantize_case::<T, T, i8>(case, Recipe::awq(false, 4));
            check_dequant::<i8, T>(
                case,
                "dequant",
                &r.codes,
                &f64s(&r.scale),
                &r.zero_point,
                true,
            );
        }
        other => panic!("{other}"),
    }
}

/// AWQ GEMM checkpoint tensors: interleaved qweight and qzeros, f16 scales.
fn awq_packing(case: &Case, codes: &[i32], scale: &[f64], zero_point: &[i32]) {
    let (n, k, g) = (case.rows, case.cols, case.cols / case.group);
    let codes: Vec<u8> = codes.iter().map(|&c| c as u8).collect();
    let qweight = pack::awq_qweight(&codes, n, k, 4).unwrap();
    compare_bits(
        "packed_qweight",
        case,
        &words(&qweight),
        &case.must("packed_qweight"),
    );
    assert_eq!(pack::awq_qweight_unpack(&qweight, n, k, 4).unwrap(), codes);
    let qzeros = pack::awq_qzeros(zero_point, n, g, 4).unwrap();
    compare_bits(
        "packed_qzeros",
        case,
        &words(&qzeros),
        &case.must("packed_qzeros"),
    );
    assert_eq!(
        pack::awq_qzeros_unpack(&qzeros, n, g, 4).unwrap(),
        zero_point
    );
    compare_bits(
        "packed_scales",
        case,
        &stored_scales::<f16>(scale, n, g),
        &case.must("packed_scales"),
    );
}

#[test]
fn awq_rtn() {
    for case in cases("autoawq__") {
        let variant = case.variant.clone();
        by_dtype!(&case, awq_case, &variant);
    }
}

#[test]
fn golden_files_are_the_peers() {
    // The files carry the peer versions they were made with.
    for case in cases("") {
        assert!(
            case.meta.contains_key("peer_version") || case.meta.contains_key("peer_versions"),
            "{}",
            case.name
        );
    }
}

#[test]
fn torch_quantize_per_channel_group_with_given_parameters() {
    for case in cases("torchcore__explicit_") {
        let (q_min, q_max): (i32, i32) = (
            case.meta["qmin"].parse().unwrap(),
            case.meta["qmax"].parse().unwrap(),
        );
        let (m, k, g) = (case.rows, case.cols, case.group);
        let x: Vec<f32> = case
            .must("input")
            .values
            .iter()
            .map(|&v| v as f32)
            .collect();
        let s: Vec<f32> = case
            .must("scale")
            .values
            .iter()
            .map(|&v| v as f32)
            .collect();
        let z: Vec<i32> = case
            .must("zero_point")
            .values
            .iter()
            .map(|&v| v as i32)
            .collect();
        let desc = QuantizePerGroupDescriptor {
            outer_size: m,
            axis_size: k,
            group_size: g,
            q_min,
            q_max,
            input_element: ElementKind::F32,
            output_element: ElementKind::S8,
        };
        let formula = Recipe::torch_per_channel_group(q_min, q_max).quantize;
        let stream = Stream::cpu();
        let plan = QuantizePerGroupPlan::<f32, i8>::select_with_formula(
            &stream,
            &desc,
            formula,
            Default::default(),
        )
        .unwrap();
        let mut q = vec![0i8; m * k];
        let args = QuantizePerGroupArgs {
            input: TensorRef::new(&x, [m, k]).unwrap(),
            scale: TensorRef::new(&s, [m, k / g]).unwrap(),
            zero_point: TensorRef::new(&z, [m, k / g]).unwrap(),
            output: TensorMut::new(&mut q, [m, k]).unwrap(),
        };
        plan.run(&stream, Workspace::None, args).unwrap();
        #[cfg(feature = "wgpu")]
        if let Some(gpu) = device_common::gpu() {
            let dq = device_common::quantize::<f32, i8>(gpu, &desc, formula, &x, &s, &z).unwrap();
            assert_eq!(dq, q, "{}: the device disagrees with the CPU", case.name);
        }
        let codes: Vec<i32> = q.iter().map(|&c| c.into()).collect();
        compare_values(
            "q",
            &case,
            &codes.iter().map(|&c| c.into()).collect::<Vec<_>>(),
            &case.must("q"),
        );
        check_dequant::<i8, f32>(&case, "dequant", &codes, &f64s(&s), &z, false);
    }
}

/// gguf-py's block formats: Q8_0, Q4_0, Q5_0, Q4_1 and Q5_1 (0.19,
/// unfused), and Q4_0/Q5_0 as gguf-py 0.17 computes them (fused): codes,
/// block scales `d` and minimums `m` (stored as f16; the codes use the f32
/// values) and the dequantized values.
#[test]
fn gguf_block_formats() {
    for case in cases("gguf") {
        let (m, k, g) = (case.rows, case.cols, case.group);
        let ng = m * k / g;
        let x: Vec<f32> = case
            .must("input")
            .values
            .iter()
            .map(|&v| v as f32)
            .collect();
        let legacy = case.peer == "gguf0171";
        let recipe = match case.variant.as_str() {
            "q8_0" => Recipe::gguf_q8_0(),
            "q4_0" if legacy => Recipe::gguf_q4_0().fused(),
            "q5_0" if legacy => Recipe::gguf_q5_0().fused(),
            "q4_0" => Recipe::gguf_q4_0(),
            "q5_0" => Recipe::gguf_q5_0(),
            "q4_1" => Recipe::gguf_q4_1(),
            "q5_1" => Recipe::gguf_q5_1(),
            other => panic!("{}: gguf {other} is not supported", case.name),
        };
        let stream = Stream::cpu();
        let (mut s, mut z, mut off) = (vec![0f32; ng], vec![0i32; ng], vec![0f32; ng]);
        let codes: Vec<i32> = if case.variant == "q8_0" {
            let mut q = vec![0i8; m * k];
            dynamic_with_offset::<i8>(
                &stream,
                &x,
                (m, k, g),
                recipe,
                (&mut s, &mut z, &mut q, &mut off),
            );
            q.iter().map(|&c| c.into()).collect()
        } else {
            let mut q = vec![0u8; m * k];
            dynamic_with_offset::<u8>(
                &stream,
                &x,
                (m, k, g),
                recipe,
                (&mut s, &mut z, &mut q, &mut off),
            );
            q.iter().map(|&c| c.into()).collect()
        };
        compare_values(
            "q",
            &case,
            &codes.iter().map(|&c| c.into()).collect::<Vec<_>>(),
            &case.must("q"),
        );
        let d16: Vec<f16> = s.iter().map(|&v| f16::from_f32(v)).collect();
        let bits16 = |v: &[f16]| v.iter().map(|h| u64::from(h.to_bits())).collect::<Vec<_>>();
        compare_bits("scale", &case, &bits16(&d16), &case.must("scale"));
        // The raw ggml blocks, and back.
        let kind = match case.variant.as_str() {
            "q8_0" => pack::GgufBlock::Q8_0,
            "q4_0" => pack::GgufBlock::Q4_0,
            "q5_0" => pack::GgufBlock::Q5_0,
            "q4_1" => pack::GgufBlock::Q4_1,
            _ => pack::GgufBlock::Q5_1,
        };
        let d_bits: Vec<u16> = d16.iter().map(|h| h.to_bits()).collect();
        let m_bits: Option<Vec<u16>> = case
            .tensor("min")
            .map(|_| off.iter().map(|&v| f16::from_f32(v).to_bits()).collect());
        let blocks = pack::gguf_blocks(kind, &codes, &d_bits, m_bits.as_deref()).unwrap();
        compare_bits(
            "packed",
            &case,
            &blocks.iter().map(|&b| u64::from(b)).collect::<Vec<_>>(),
            &case.must("packed"),
        );
        assert_eq!(
            pack::gguf_blocks_unpack(kind, &blocks).unwrap(),
            (codes.clone(), d_bits, m_bits)
        );
        if let Some(golden_min) = case.tensor("min") {
            let m16: Vec<f16> = off.iter().map(|&v| f16::from_f32(v)).collect();
            compare_bits("min", &case, &bits16(&m16), &golden_min);
            // gguf's dequantize: d * q + m in f32.
            let y: Vec<u64> = codes
                .iter()
                .enumerate()
                .map(|(i, &q)| {
                    let (d, mm) = (d16[i / g].to_f32(), m16[i / g].to_f32());
                    u64::from((d * q as f32 + mm).to_bits())
                })
                .collect();
            compare_bits("dequant", &case, &y, &case.must("dequant"));
        } else {
            assert!(off.iter().all(|&v| v == 0.0));
            let stored: Vec<f64> = d16.iter().map(|&v| f64::from(v)).collect();
            if case.variant == "q8_0" {
                check_dequant::<i8, f32>(&case, "dequant", &codes, &stored, &z, false);
            } else {
                check_dequant::<u8, f32>(&case, "dequant", &codes, &stored, &z, false);
            }
        }
    }
}

/// The fused plan with f32 scales, writing the float offsets too.
fn dynamic_with_offset<Q: IntElement>(
    stream: &Stream,
    x: &[f32],
    (m, k, g): (usize, usize, usize),
    recipe: Recipe,
    (s, z, q, off): (&mut [f32], &mut [i32], &mut [Q], &mut [f32]),
) {
    let desc = QuantizeDynamicPerGroupDescriptor {
        outer_size: m,
        axis_size: k,
        group_size: g,
        recipe,
        input_element: ElementKind::F32,
        scale_element: ElementKind::F32,
        output_element: Q::KIND,
    };
    let plan =
        QuantizeDynamicPerGroupPlan::<f32, f32, Q>::select(stream, &desc, Default::default())
            .unwrap();
    let args = QuantizeDynamicPerGroupArgs {
        input: TensorRef::new(x, [m, k]).unwrap(),
        scale: TensorMut::new(s, [m, k / g]).unwrap(),
        zero_point: TensorMut::new(z, [m, k / g]).unwrap(),
        output: TensorMut::new(q, [m, k]).unwrap(),
    };
    plan.run_with_offset(
        stream,
        Workspace::None,
        args,
        TensorMut::new(off, [m, k / g]).unwrap(),
    )
    .unwrap();
    #[cfg(feature = "wgpu")]
    if let Some(gpu) = device_common::gpu() {
        let (ds, dz, dq, dm) = device_common::dynamic::<f32, f32, Q>(gpu, &desc, x, true).unwrap();
        use device_common::bytes as b;
        assert!(
            b(&ds) == b(s) && dz == z && b(&dq) == b(q) && b(&dm) == b(off),
            "gguf {recipe:?}: the device disagrees with the CPU"
        );
    }
}
