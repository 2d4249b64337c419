//! The checkpoint formats. Each is one file implementing [`QuantFormat`]:
//! which recipe it uses, which Linear layers its loaders read back as
//! quantized, the tensors a quantized Linear becomes, the
//! `quantization_config` the loaders read (checked against a model of the
//! loader before anything is written), and the way back to float weights.
//! Adding a format is a new file, a [`Format`] variant and an entry in
//! [`ALL`].

mod awq;
mod compressed_tensors;
mod gptq;

use crate::checkpoint::OutTensor;
use crate::layout::Layout;
use anyhow::{anyhow, bail, Result};
use groupq::half::{bf16, f16};
use groupq::recipe::Recipe;
use groupq::*;
use safetensors::Dtype;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

/// A checkpoint format that inference engines load (the CLI's `--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Format {
    /// compressed-tensors `pack-quantized` (vLLM, SGLang, transformers).
    CompressedTensors,
    /// GPTQ, `checkpoint_format: gptq` (v1 zero points): GPTQModel,
    /// AutoGPTQ, vLLM, exllama, transformers.
    Gptq,
    /// AWQ GEMM (transformers, AutoAWQ, vLLM): 4-bit with zero points.
    Awq,
}

/// Every format, in the order `dequantize` tries them on tensor names.
pub const ALL: [Format; 3] = [Format::CompressedTensors, Format::Gptq, Format::Awq];

impl Format {
    /// The implementation.
    pub fn imp(self) -> &'static dyn QuantFormat {
        match self {
            Format::CompressedTensors => &compressed_tensors::CompressedTensors,
            Format::Gptq => &gptq::Gptq,
            Format::Awq => &awq::Awq,
        }
    }

    pub fn name(self) -> &'static str {
        self.imp().name()
    }

    /// The format of a quantized checkpoint: from `quantization_config`'s
    /// `quant_method`, else from the tensor names.
    pub fn detect(config: Option<&Value>, names: &[&str]) -> Option<Format> {
        if let Some(method) = config.and_then(|c| c["quant_method"].as_str()) {
            if let Some(f) = ALL.into_iter().find(|f| f.imp().quant_method() == method) {
                return Some(f);
            }
        }
        ALL.into_iter().find(|f| {
            let marker = format!(".{}", f.imp().identifying_part());
            names.iter().any(|n| n.ends_with(&marker))
        })
    }
}

/// Which Linear layers a format's loaders can read back as quantized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every Linear layer (`lm_head` on request).
    AllLinear,
    /// The Linear layers of the repeated blocks (all of them when the model
    /// has no blocks).
    Blocks,
    /// The Linear layers whose name starts with this block prefix.
    Prefix(String),
}

/// Which Linear layers are quantized and which stay in float, and why.
#[derive(Debug, Clone, Default)]
pub struct ModulePlan {
    pub quantized: BTreeSet<String>,
    /// Linear modules kept in float, with the reason.
    pub float: BTreeMap<String, String>,
}

/// What to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub format: Format,
    pub bits: u32,
    pub group_size: usize,
    pub symmetric: bool,
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
        self.format.imp().check_spec(self)
    }

    /// The recipe reproducing the format's reference quantizer.
    pub fn recipe(&self) -> Recipe {
        self.format.imp().recipe(self)
    }

    /// Why a `[n, k]` weight cannot be stored in this format, if it cannot.
    pub fn shape_problem(&self, n: usize, k: usize) -> Option<String> {
        if !k.is_multiple_of(self.group_size) {
            return Some(format!(
                "in_features {k} is not a multiple of --group-size {}",
                self.group_size
            ));
        }
        self.format.imp().shape_problem(self, n, k)
    }

    /// The tensors that replace `<prefix>.weight` (`[n, k]`, dtype `dtype`).
    pub fn outputs(&self, prefix: &str, dtype: Dtype, n: usize, k: usize) -> Vec<OutTensor> {
        self.format.imp().outputs(self, prefix, dtype, n, k)
    }

    /// Quantizes a `[n, k]` weight (on every core): its statistics now,
    /// the bytes of each tensor of [`outputs`](Self::outputs), in order,
    /// when [`Quantized::pack`] is called.
    pub fn quantize(&self, w: &Weights<'_>, n: usize, k: usize) -> Result<Quantized> {
        self.format.imp().quantize(self, w, n, k)
    }
}

/// One format: how to write it and how to read it back.
pub trait QuantFormat: Sync {
    /// The `--format` name.
    fn name(&self) -> &'static str;
    /// `quantization_config.quant_method`.
    fn quant_method(&self) -> &'static str;
    /// Refuses bit widths and modes the format cannot store.
    fn check_spec(&self, spec: &Spec) -> Result<()>;
    /// The recipe of the format's reference quantizer.
    fn recipe(&self, spec: &Spec) -> Recipe;
    /// A format-specific reason a `[n, k]` weight cannot be stored.
    fn shape_problem(&self, spec: &Spec, n: usize, k: usize) -> Option<String>;
    /// Which Linear layers the loaders read as quantized.
    fn scope(&self, layout: &Layout) -> Result<Scope>;
    /// Why the loaders cannot read a quantized `lm_head`, if they cannot.
    fn lm_head_problem(&self) -> Option<&'static str>;
    /// Whether the loaders quantize `Conv1D` layers (GPT-2).
    fn reads_conv1d(&self) -> bool;
    /// The tensors that replace `<prefix>.weight`.
    fn outputs(
        &self,
        spec: &Spec,
        prefix: &str,
        dtype: Dtype,
        n: usize,
        k: usize,
    ) -> Vec<OutTensor>;
    /// The codes of a weight and its error statistics, and how to pack
    /// them into the tensors of `outputs`.
    fn quantize(&self, spec: &Spec, w: &Weights<'_>, n: usize, k: usize) -> Result<Quantized>;
    /// The `quantization_config` that makes the loaders quantize exactly
    /// `plan.quantized`.
    fn quantization_config(&self, spec: &Spec, layout: &Layout, plan: &ModulePlan)
        -> Result<Value>;
    /// The modules transformers' loader replaces with quantized layers for
    /// this config: a model of the loader, to check the config against.
    fn loader_quantizes(&self, config: &Value, layout: &Layout) -> Result<BTreeSet<String>>;
    /// Why the loaders cannot load this selection of this model, if they
    /// cannot.
    fn plan_problem(&self, _layout: &Layout, _plan: &ModulePlan) -> Option<String> {
        None
    }
    /// Tensors the loaders need beside a layer (`module`, with this many
    /// output features), quantized or not: AWQ's activation scales.
    fn companions(
        &self,
        _layout: &Layout,
        _module: &str,
        _out_features: usize,
        _dtype: Dtype,
    ) -> Vec<(OutTensor, Vec<u8>)> {
        Vec::new()
    }
    /// Whether a tensor is a companion (dropped when dequantizing).
    fn is_companion(&self, _layout: &Layout, _name: &str) -> bool {
        false
    }
    /// What the user should know about loading the result.
    fn notes(&self, _spec: &Spec) -> Vec<String> {
        Vec::new()
    }

    /// The tensor whose presence marks a quantized module (by name alone).
    fn identifying_part(&self) -> &'static str;
    /// The tensor of every quantized module, present in each.
    fn marker(&self) -> &'static str;
    /// All the tensors a quantized module may have.
    fn parts(&self) -> &'static [&'static str];
    /// A description for `inspect`.
    fn describe(&self, config: Option<&Value>) -> String;
    /// Bits and group size from the config.
    fn bits_and_group(&self, config: &Value) -> (Option<u64>, Option<u64>) {
        (config["bits"].as_u64(), config["group_size"].as_u64())
    }
    /// The float weight of one quantized module.
    fn dequantize_module(
        &self,
        config: Option<&Value>,
        get: &ModuleTensors<'_>,
        stream: &Stream,
    ) -> Result<Restored>;
}

/// A tensor as stored: dtype, shape and little-endian bytes.
pub type Stored = (Dtype, Vec<usize>, Vec<u8>);

/// One quantized module's tensors, by part name (`"qweight"`, …): `None`
/// where the module has no such part, an error where reading it failed.
pub type ModuleTensors<'a> = dyn Fn(&str) -> Result<Option<Stored>> + 'a;

/// A module's weight back from its codes: `[n, k]` values as the format's
/// loader computes them in its own dtype (`native`: the scales' dtype), held
/// exactly in f32.
#[derive(Debug, Clone)]
pub struct Restored {
    pub n: usize,
    pub k: usize,
    pub values: Vec<f32>,
    pub native: Dtype,
}

/// How well a tensor survived: signal-to-quantization-noise ratio and the
/// largest absolute error, from the values a loader dequantizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub sqnr_db: f64,
    pub max_abs_error: f64,
}

impl Stats {
    pub(crate) fn from_sums(signal: f64, noise: f64, max: f64) -> Stats {
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

/// A quantized weight: its statistics, and its tensors packed when the
/// writer asks for them (so that packing one weight overlaps quantizing the
/// next).
pub struct Quantized {
    pub stats: Stats,
    pub pack: Box<dyn FnOnce() -> Result<Vec<Vec<u8>>> + Send>,
}

impl Quantized {
    /// `stats`, and `pack` to run later.
    pub(crate) fn new(
        stats: Stats,
        pack: impl FnOnce() -> Result<Vec<Vec<u8>>> + Send + 'static,
    ) -> Quantized {
        Quantized {
            stats,
            pack: Box::new(pack),
        }
    }
}

/// A weight's codes, scales, zero points and statistics.
pub(crate) type WeightCodes<Q, S> = (Vec<Q>, Vec<S>, Vec<i32>, Stats);

/// Elements per block of [`quantize_weight`] (whole rows).
const BLOCK_ELEMENTS: usize = 1 << 16;

/// The recipe plan on a `[n, k]` weight, codes `Q` (`[n, k / PACK]`),
/// scales `S` and zero points (`[n, k / gs]`), with the statistics of the
/// values a loader restores from them (scales converted by `loader_scale`
/// to its dtype `R`).
///
/// Blocks of rows run on every core (the rayon pool), each on the calling
/// thread's own serial stream: a block is quantized, dequantized into a
/// buffer and compared with its input while both are still in cache, so
/// the weight is read from memory once and the restored weight is never
/// held whole. The sums are combined in block order: the statistics do not
/// depend on the thread count.
pub(crate) fn quantize_weight<T: Storage, S: Element, Q: IntElement, R: Storage>(
    w: &[T],
    (n, k, gs): (usize, usize, usize),
    recipe: Recipe,
    loader_scale: impl Fn(S) -> R + Sync,
) -> Result<WeightCodes<Q, S>> {
    use rayon::prelude::*;
    let (g, units) = (k / gs, k / Q::PACK);
    let (mut q, mut s, mut z) = (
        vec![Q::default(); n * units],
        vec![S::from_f64(0.0); n * g],
        vec![0i32; n * g],
    );
    if n == 0 || k == 0 {
        return Ok((q, s, z, Stats::from_sums(0.0, 0.0, 0.0)));
    }
    let rows = (BLOCK_ELEMENTS / k).max(1);
    let serial = Stream::cpu_with_threads(1)?;
    let plans = |m: usize| -> Result<_> {
        let quantize = QuantizeDynamicPerGroupDescriptor {
            outer_size: m,
            axis_size: k,
            group_size: gs,
            recipe,
            input_element: T::KIND,
            scale_element: S::KIND,
            output_element: Q::KIND,
        };
        Ok((
            QuantizeDynamicPerGroupPlan::<T, S, Q>::select(&serial, &quantize, Default::default())?,
            dequantize_plan::<Q, R>(&serial, m, k, gs)?,
        ))
    };
    // A plan pair for whole blocks, and one for the last, shorter block.
    let whole = plans(rows.min(n))?;
    let last = match n % rows {
        0 => None,
        m => Some(plans(m)?),
    };
    let partial = q
        .par_chunks_mut(rows * units)
        .zip(s.par_chunks_mut(rows * g))
        .zip(z.par_chunks_mut(rows * g))
        .zip(w.par_chunks(rows * k))
        .enumerate()
        .map_init(
            Vec::new,
            |restored: &mut Vec<R>, (b, (((qb, sb), zb), wb))| {
                let m = wb.len() / k;
                // A block's rows are rows `b · rows ..` of the weight.
                let in_weight = |e: groupq::Error| match e {
                    groupq::Error::NonFiniteInput { row, group } => groupq::Error::NonFiniteInput {
                        row: b * rows + row,
                        group,
                    },
                    e => e,
                };
                let (quantize, dequantize) = match &last {
                    Some(p) if m != rows.min(n) => p,
                    _ => &whole,
                };
                quantize
                    .run(
                        &serial,
                        Workspace::None,
                        QuantizeDynamicPerGroupArgs {
                            input: TensorRef::new(wb, [m, k])?,
                            scale: TensorMut::new(sb, [m, g])?,
                            zero_point: TensorMut::new(zb, [m, g])?,
                            output: TensorMut::new(qb, [m, units])?,
                        },
                    )
                    .map_err(in_weight)?;
                let scales: Vec<R> = sb.iter().map(|&v| loader_scale(v)).collect();
                restored.resize(m * k, R::from_f64(0.0));
                dequantize_into(dequantize, &serial, (qb, &scales, zb), restored, (m, k, gs))?;
                Ok(sums(wb, restored))
            },
        )
        .collect::<Vec<Result<_>>>()
        // The first failing block in row order (as the plan reports the
        // first offending group), whichever thread failed first.
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let (signal, noise, max) = partial.iter().fold((0.0, 0.0, 0.0f64), |(s, n, m), p| {
        (s + p.0, n + p.1, m.max(p.2))
    });
    Ok((q, s, z, Stats::from_sums(signal, noise, max)))
}

/// Values widened at a time by the sums, and the span of their f32 partial
/// sums (at most `BLOCK / LANES` terms per lane: a relative error below
/// 2^-16, ample for a report in dB), then added in f64.
const BLOCK: usize = 1024;
/// Independent partial sums: lane `i` takes the elements `i mod LANES` of a
/// block, in order (a fixed order: deterministic), so that the loop is not
/// bound by one addition's latency and vectorizes.
const LANES: usize = 8;

/// `(Σ a², Σ (a − b)², max |a − b|)`, in AVX2 registers where the CPU has
/// AVX2 and F16C. Both forms compute the same operations on the same lanes
/// in the same order (no fused multiply-add), so the sums are the same on
/// every machine.
pub(crate) fn sums<T: Storage, R: Storage>(a: &[T], b: &[R]) -> (f64, f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU has AVX2 and F16C (checked just above), the only
        // requirement of `sums_avx2`; `a` and `b` are slices.
        return unsafe { x86::sums_avx2(a, b) };
    }
    sums_any(a, b)
}

/// The lanes' partial sums of a block added to the running totals.
#[inline(always)]
fn add_lanes(
    (signal, noise, max): &mut (f64, f64, f32),
    sig: &[f32; LANES],
    noi: &[f32; LANES],
    mx: &[f32; LANES],
) {
    *signal += sig.iter().map(|&v| f64::from(v)).sum::<f64>();
    *noise += noi.iter().map(|&v| f64::from(v)).sum::<f64>();
    *max = mx.iter().fold(*max, |m, &v| m.max(v));
}

/// One element into lane `i`'s partial sums.
#[inline(always)]
fn add_one(
    i: usize,
    x: f32,
    y: f32,
    sig: &mut [f32; LANES],
    noi: &mut [f32; LANES],
    mx: &mut [f32; LANES],
) {
    let d = x - y;
    sig[i] += x * x;
    noi[i] += d * d;
    // (a compare, not f32::max: NaN leaves the maximum, as `maxps` does)
    mx[i] = if d.abs() > mx[i] { d.abs() } else { mx[i] };
}

fn sums_any<T: Storage, R: Storage>(a: &[T], b: &[R]) -> (f64, f64, f64) {
    let mut total = (0.0f64, 0.0f64, 0.0f32);
    let (mut wa, mut wb) = ([0f32; BLOCK], [0f32; BLOCK]);
    for (a, b) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let (wa, wb) = (&mut wa[..a.len()], &mut wb[..b.len()]);
        T::widen(a, wa);
        R::widen(b, wb);
        let (mut sig, mut noi, mut mx) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
        for (j, (&x, &y)) in wa.iter().zip(wb.iter()).enumerate() {
            add_one(j % LANES, x, y, &mut sig, &mut noi, &mut mx);
        }
        add_lanes(&mut total, &sig, &noi, &mx);
    }
    (total.0, total.1, f64::from(total.2))
}

/// The AVX2 form of the report's sums.
#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use super::{add_lanes, add_one, Storage, BLOCK, LANES};
    use groupq::half::{bf16, f16};
    use std::arch::x86_64::*;

    /// Eight values as f32 lanes (exact).
    pub trait Lanes: Sized {
        /// # Safety
        /// AVX2 and F16C are present and `p` is valid for 8 reads.
        unsafe fn load8(p: *const Self) -> __m256;
    }

    impl Lanes for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: the caller's contract.
            unsafe { _mm256_loadu_ps(p) }
        }
    }

    impl Lanes for bf16 {
        #[inline(always)]
        unsafe fn load8(p: *const bf16) -> __m256 {
            // SAFETY: the caller's contract; a bf16 is the top half of an f32.
            unsafe {
                let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(wide))
            }
        }
    }

    impl Lanes for f16 {
        #[inline(always)]
        unsafe fn load8(p: *const f16) -> __m256 {
            // SAFETY: the caller's contract (F16C converts exactly).
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
        }
    }

    /// [`super::sums_any`] in registers: the same lanes, the same order.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn sums_avx2<T: Storage, R: Storage>(a: &[T], b: &[R]) -> (f64, f64, f64) {
        let mut total = (0.0f64, 0.0f64, 0.0f32);
        let sign = _mm256_set1_ps(-0.0);
        for (a, b) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
            let n = a.len().min(b.len());
            let full = n - n % LANES;
            let (mut sig, mut noi, mut mx) = (
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
            );
            let mut j = 0;
            while j < full {
                // SAFETY: `j + 8 <= full <= n`, inside both slices; the
                // CPU features are this function's contract.
                let (x, y) = unsafe { (T::load8(a.as_ptr().add(j)), R::load8(b.as_ptr().add(j))) };
                let d = _mm256_sub_ps(x, y);
                sig = _mm256_add_ps(sig, _mm256_mul_ps(x, x));
                noi = _mm256_add_ps(noi, _mm256_mul_ps(d, d));
                mx = _mm256_max_ps(_mm256_andnot_ps(sign, d), mx);
                j += LANES;
            }
            let (mut s, mut e, mut m) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
            // SAFETY: each array holds 8 f32.
            unsafe {
                _mm256_storeu_ps(s.as_mut_ptr(), sig);
                _mm256_storeu_ps(e.as_mut_ptr(), noi);
                _mm256_storeu_ps(m.as_mut_ptr(), mx);
            }
            let (mut x, mut y) = ([0f32; LANES], [0f32; LANES]);
            T::widen(&a[full..n], &mut x[..n - full]);
            R::widen(&b[full..n], &mut y[..n - full]);
            for i in 0..n - full {
                add_one(i, x[i], y[i], &mut s, &mut e, &mut m);
            }
            add_lanes(&mut total, &s, &e, &m);
        }
        (total.0, total.1, f64::from(total.2))
    }
}

/// Float weight dtypes of a checkpoint.
pub trait Storage: Element + StorageLanes {
    fn read(bytes: &[u8]) -> Vec<Self>;
    fn write(values: &[Self]) -> Vec<u8>;
    fn from_f32(v: f32) -> Self;
    /// Exact widening of a slice to f32 (`dst.len() == src.len()`).
    fn widen(src: &[Self], dst: &mut [f32]);
}

/// The vector loads of [`Storage`] types where the CLI has a vector form.
#[cfg(target_arch = "x86_64")]
pub trait StorageLanes: x86::Lanes {}
#[cfg(target_arch = "x86_64")]
impl<T: x86::Lanes> StorageLanes for T {}
#[cfg(not(target_arch = "x86_64"))]
pub trait StorageLanes {}
#[cfg(not(target_arch = "x86_64"))]
impl<T> StorageLanes for T {}

macro_rules! storage {
    ($t:ty, $n:literal, $from:expr, $widen:expr) => {
        impl Storage for $t {
            fn read(bytes: &[u8]) -> Vec<Self> {
                bytes
                    .chunks_exact($n)
                    .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            }
            fn write(values: &[Self]) -> Vec<u8> {
                le_bytes(values, |v| v.to_le_bytes())
            }
            fn from_f32(v: f32) -> Self {
                $from(v)
            }
            fn widen(src: &[Self], dst: &mut [f32]) {
                $widen(src, dst)
            }
        }
    };
}
storage!(f32, 4, |v| v, |s: &[f32], d: &mut [f32]| d
    .copy_from_slice(s));
storage!(f16, 2, f16::from_f32, |s: &[f16], d: &mut [f32]| {
    groupq::half::slice::HalfFloatSliceExt::convert_to_f32_slice(s, d)
});
// bf16 is the top half of an f32: a shift the compiler vectorizes (the
// `half` slice conversion goes value by value).
storage!(bf16, 2, bf16::from_f32, |s: &[bf16], d: &mut [f32]| {
    for (d, s) in d.iter_mut().zip(s) {
        *d = f32::from_bits(u32::from(s.to_bits()) << 16);
    }
});

/// A float weight matrix in its checkpoint dtype: borrowed from the file's
/// bytes where they are aligned for the dtype (on a little-endian machine),
/// a copy otherwise.
#[derive(Debug, Clone)]
pub enum Weights<'a> {
    Bf16(Cow<'a, [bf16]>),
    F16(Cow<'a, [f16]>),
    F32(Cow<'a, [f32]>),
}

/// Runs a generic body on the typed values of a [`Weights`].
macro_rules! with_weights {
    ($w:expr, $v:ident => $body:expr) => {
        match $w {
            $crate::formats::Weights::Bf16($v) => $body,
            $crate::formats::Weights::F16($v) => $body,
            $crate::formats::Weights::F32($v) => $body,
        }
    };
}
pub(crate) use with_weights;

impl<'a> Weights<'a> {
    pub fn read(dtype: Dtype, bytes: &'a [u8]) -> Result<Weights<'a>> {
        Ok(match dtype {
            Dtype::BF16 => Weights::Bf16(borrow_or_read(bytes)),
            Dtype::F16 => Weights::F16(borrow_or_read(bytes)),
            Dtype::F32 => Weights::F32(borrow_or_read(bytes)),
            d => bail!("unsupported weight dtype {d:?}"),
        })
    }

    /// The `[cols, rows]` transpose of a `[rows, cols]` matrix.
    pub fn transposed(&self, rows: usize, cols: usize) -> Weights<'static> {
        match self {
            Weights::Bf16(v) => Weights::Bf16(transpose(v, rows, cols).into()),
            Weights::F16(v) => Weights::F16(transpose(v, rows, cols).into()),
            Weights::F32(v) => Weights::F32(transpose(v, rows, cols).into()),
        }
    }
}

/// The little-endian values of `bytes`: the bytes themselves where they are
/// aligned for `T` and the machine is little-endian (no copy), else read.
fn borrow_or_read<T: Storage + bytemuck::Pod>(bytes: &[u8]) -> Cow<'_, [T]> {
    match bytemuck::try_cast_slice(bytes) {
        Ok(v) if cfg!(target_endian = "little") => Cow::Borrowed(v),
        _ => Cow::Owned(T::read(bytes)),
    }
}

/// A dtype name as `config.json` writes it (`torch_dtype` / `dtype`).
pub fn dtype_from_config(name: &str) -> Option<Dtype> {
    match name.trim_start_matches("torch.") {
        "float16" | "half" => Some(Dtype::F16),
        "bfloat16" => Some(Dtype::BF16),
        "float32" | "float" => Some(Dtype::F32),
        _ => None,
    }
}

/// The `config.json` name of a float dtype.
pub fn dtype_config_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// Rounds restored values (once, to nearest even) to a checkpoint dtype.
pub fn restored_bytes(values: &[f32], dtype: Dtype) -> Result<Vec<u8>> {
    fn narrow<S: Storage>(values: &[f32]) -> Vec<u8> {
        S::write(&values.iter().map(|&v| S::from_f32(v)).collect::<Vec<S>>())
    }
    Ok(match dtype {
        Dtype::F32 => f32::write(values),
        Dtype::F16 => narrow::<f16>(values),
        Dtype::BF16 => narrow::<bf16>(values),
        d => bail!("cannot write float weights as {d:?}"),
    })
}

/// The little-endian bytes of a slice, `N` per value (a plain loop: an
/// iterator of arrays flattened by `collect` is several times slower).
fn le_bytes<T: Copy, const N: usize>(values: &[T], bytes: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * N);
    for &v in values {
        out.extend_from_slice(&bytes(v));
    }
    out
}

pub(crate) fn i32_bytes(v: &[i32]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        // The values' own bytes: one copy at memory speed.
        bytemuck::cast_slice(v).to_vec()
    } else {
        le_bytes(v, |x| x.to_le_bytes())
    }
}

pub(crate) fn read_i32(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The `[cols, rows]` transpose of a row-major `[rows, cols]` matrix.
pub fn transpose<T: Copy>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    (0..rows * cols)
        .map(|i| m[(i % rows) * cols + i / rows])
        .collect()
}

/// SPEC §3.2 dequantization of a `[n, k]` weight (codes `[n, k / PACK]`).
pub(crate) fn dequantize<Q: IntElement, O: Element>(
    stream: &Stream,
    codes: &[Q],
    scale: &[O],
    zero: &[i32],
    n: usize,
    k: usize,
    gs: usize,
) -> Result<Vec<O>> {
    let plan = dequantize_plan::<Q, O>(stream, n, k, gs)?;
    let mut y = vec![O::from_f64(0.0); n * k];
    dequantize_into(&plan, stream, (codes, scale, zero), &mut y, (n, k, gs))?;
    Ok(y)
}

/// The plan of [`dequantize`] for `[n, k]` weights in groups of `gs`.
fn dequantize_plan<Q: IntElement, O: Element>(
    stream: &Stream,
    n: usize,
    k: usize,
    gs: usize,
) -> Result<DequantizePerGroupPlan<Q, O>> {
    let desc = DequantizePerGroupDescriptor {
        outer_size: n,
        axis_size: k,
        group_size: gs,
        input_element: Q::KIND,
        output_element: O::KIND,
    };
    Ok(DequantizePerGroupPlan::<Q, O>::select(
        stream,
        &desc,
        Default::default(),
    )?)
}

/// Runs `plan` ([`dequantize_plan`]) into `out` (`[n, k]`).
fn dequantize_into<Q: IntElement, O: Element>(
    plan: &DequantizePerGroupPlan<Q, O>,
    stream: &Stream,
    (codes, scale, zero): (&[Q], &[O], &[i32]),
    out: &mut [O],
    (n, k, gs): (usize, usize, usize),
) -> Result<()> {
    plan.run(
        stream,
        Workspace::None,
        DequantizePerGroupArgs {
            input: TensorRef::new(codes, [n, k / Q::PACK])?,
            scale: TensorRef::new(scale, [n, k / gs])?,
            zero_point: TensorRef::new(zero, [n, k / gs])?,
            output: TensorMut::new(out, [n, k])?,
        },
    )?;
    Ok(())
}

/// GPTQ and AWQ weights back from codes and `[groups, n]` float16 scales:
/// their loaders compute `s * (q - z)` in float16.
pub(crate) fn f16_scaled<Q: IntElement>(
    stream: &Stream,
    codes: &[Q],
    scale_bytes: &[u8],
    zero: &[i32],
    n: usize,
    k: usize,
    gs: usize,
) -> Result<Restored> {
    if gs == 0 || !k.is_multiple_of(gs) || scale_bytes.len() != k / gs * n * 2 {
        bail!(
            "scales hold {} float16 values, expected [{} groups, {n}] for in_features {k} in groups of {gs}",
            scale_bytes.len() / 2,
            k / gs.max(1)
        );
    }
    let scale = transpose(&f16::read(scale_bytes), k / gs, n);
    let values = dequantize::<Q, f16>(stream, codes, &scale, zero, n, k, gs)?
        .iter()
        .map(|v| v.to_f32())
        .collect();
    Ok(Restored {
        n,
        k,
        values,
        native: Dtype::F16,
    })
}

/// A module part that must be present.
pub(crate) fn need(get: &ModuleTensors<'_>, part: &str) -> Result<Stored> {
    get(part)?.ok_or_else(|| anyhow!("missing tensor .{part}"))
}

/// A shape's dimension, or an error naming the tensor.
pub(crate) fn dim(shape: &[usize], i: usize, what: &str) -> Result<usize> {
    match shape.get(i) {
        Some(&d) if d > 0 => Ok(d),
        _ => bail!("{what} has shape {shape:?}: expected rank 2 with non-zero dimensions"),
    }
}

/// The Linear modules of `layout` that a loader converting `nn.Linear` only
/// (not `Conv1D`) sees.
pub(crate) fn nn_linears(layout: &Layout) -> impl Iterator<Item = &String> {
    layout.linears.iter().filter(|m| !layout.is_conv1d(m))
}

/// Every module that might be a Linear layer to a loader and is not
/// quantized (sorted): the Linear layers kept in float, and the other
/// matrices (embeddings, `embed_out`), declared too since a loader matching
/// `nn.Linear` may see one where the names did not say so.
pub(crate) fn float_list(layout: &Layout, plan: &ModulePlan) -> Vec<String> {
    layout
        .matrices
        .iter()
        .filter(|m| !plan.quantized.contains(*m))
        .cloned()
        .collect()
}

#[cfg(test)]
mod sums_tests {
    use super::*;

    fn values<T: Storage>(n: usize, seed: u64) -> Vec<T> {
        let specials = [f32::NAN, f32::INFINITY, -0.0, 1e-40, -65504.0, 3e38];
        let mut s = seed | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let v = if s.is_multiple_of(97) {
                    specials[i % specials.len()]
                } else {
                    ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
                };
                T::from_f32(v)
            })
            .collect()
    }

    fn same(a: (f64, f64, f64), b: (f64, f64, f64)) -> bool {
        let eq = |x: f64, y: f64| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan());
        eq(a.0, b.0) && eq(a.1, b.1) && eq(a.2, b.2)
    }

    fn check<T: Storage, R: Storage>() {
        for (n, seed) in [
            (0, 1),
            (7, 2),
            (8, 3),
            (1023, 4),
            (1024, 5),
            (3001, 6),
            (9000, 7),
        ] {
            let (a, b) = (values::<T>(n, seed), values::<R>(n, seed ^ 99));
            // Close values too (the usual case: restored weights).
            let near: Vec<R> = a
                .iter()
                .map(|v| R::from_f32(v.to_f64() as f32 * 1.01))
                .collect();
            for b in [&b, &near] {
                let plain = sums_any(&a, b);
                let chosen = sums(&a, b);
                assert!(
                    same(plain, chosen),
                    "{n} {:?} {:?}: {plain:?} {chosen:?}",
                    T::KIND,
                    R::KIND
                );
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c") {
                    // SAFETY: the features were checked just above.
                    let avx2 = unsafe { x86::sums_avx2(&a, b) };
                    assert!(
                        same(plain, avx2),
                        "{n} {:?} {:?}: {plain:?} {avx2:?}",
                        T::KIND,
                        R::KIND
                    );
                }
            }
        }
    }

    /// The AVX2 sums equal the plain ones bit for bit, tails, NaN, ±inf,
    /// ±0 and subnormals included, for every pair of storage types.
    #[test]
    fn vector_sums_equal_plain_sums() {
        check::<bf16, bf16>();
        check::<bf16, f16>();
        check::<f16, f16>();
        check::<f32, f32>();
        check::<f32, bf16>();
        check::<f16, f32>();
    }

    /// Weights are borrowed from aligned bytes and read from unaligned ones,
    /// with the same values.
    #[test]
    fn weights_borrow_aligned_bytes_and_copy_the_others() {
        let values: Vec<f32> = (0..9).map(|i| i as f32 * 0.5 - 1.0).collect();
        let mut bytes = vec![0u8];
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        bytes.push(0);
        // One of the two windows is aligned for f32, the other not.
        for start in [0usize, 1] {
            let window = &bytes[start..start + 36];
            let Weights::F32(w) = Weights::read(Dtype::F32, window).unwrap() else {
                panic!("not f32");
            };
            let aligned = window.as_ptr().align_offset(4) == 0;
            assert_eq!(matches!(w, Cow::Borrowed(_)), aligned, "start {start}");
            let expect: Vec<f32> = window
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!(&*w, &expect[..], "start {start}");
        }
    }

    /// A non-finite weight is refused naming its row in the whole weight,
    /// the first one in row order, though the rows run in blocks on
    /// several threads.
    #[test]
    fn non_finite_weights_are_refused_with_their_row() {
        let (n, k, gs) = (700, 256, 128);
        let mut w = vec![0.25f32; n * k];
        w[300 * k + 200] = f32::NAN;
        w[650 * k + 3] = f32::INFINITY;
        let recipe = Recipe::compressed_tensors_w4a16();
        let e = quantize_weight::<f32, f32, i8, f32>(&w, (n, k, gs), recipe, |s| s)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("row 300, group 1"), "{e}");
    }

    #[test]
    fn sums_are_what_they_say() {
        let a = [3.0f32, -4.0, 0.0];
        let b = [3.0f32, -2.0, 1.0];
        assert_eq!(sums(&a[..], &b[..]), (25.0, 5.0, 2.0));
    }
}
