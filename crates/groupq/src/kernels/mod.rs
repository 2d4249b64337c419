//! The arithmetic and how it is spread over threads.
//!
//! [`scalar`] is the reference, written to read like SPEC §3; `simd` holds
//! the vector kernels written once over an instruction set, instantiated by
//! one file per instruction set (`sse41`, `avx2`, `avx512`). A plan picks its
//! kernel once, at `select` time, with [`choose`] and runtime CPU feature
//! detection. The plans in
//! [`crate::quantize`] validate their arguments and then hand a closure over
//! one *segment* (a run of whole groups of one row) to [`for_each_segment`],
//! which splits the problem over the stream's threads. Splitting only ever
//! happens at group boundaries and every element is computed by the same pure
//! function, so the output cannot depend on the thread count or chunking.

pub(crate) mod affine;
#[allow(unsafe_code)]
pub(crate) mod ggml;
#[cfg(feature = "wgpu")]
pub(crate) mod gpu;
pub(crate) mod recipe;
pub(crate) mod scalar;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(crate) mod simd;

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod sse41;

use crate::element::{Element, ElementKind, IntElement};
use crate::plan::BackendKind;
use crate::plan::SteBoundary;
use crate::stream::Stream;
use crate::tensor::TensorRef;

/// ggml's K-quant scale search for every sub-block of `x` on backend `b`
/// (see [`ggml`]); `false`, with nothing written, where `b` has no vector
/// form on this CPU: the caller then runs its scalar search, which gives
/// the same results.
#[cfg(target_arch = "x86_64")]
pub(crate) fn ggml_search_on(
    b: BackendKind,
    kind: ggml::Search,
    x: &[f32],
    out: &mut ggml::SearchOut<'_>,
) -> bool {
    match b {
        BackendKind::Avx512 => avx512::ggml_search(kind, x, out),
        BackendKind::Avx2 => avx2::ggml_search(kind, x, out),
        BackendKind::Sse41 => sse41::ggml_search(kind, x, out),
        _ => false,
    }
}

/// Problems with fewer elements than this run on the calling thread: waking
/// the pool costs more than the work.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;
/// Smallest parallel task, in elements.
const TASK_ELEMENTS: usize = 1 << 15;
/// Parallel tasks per thread: enough for work stealing to even out a busy
/// core, few enough that scheduling costs nothing.
const TASKS_PER_THREAD: usize = 8;

/// Backends in order of preference.
const PREFERENCE: [BackendKind; 4] = [
    BackendKind::Avx512,
    BackendKind::Avx2,
    BackendKind::Sse41,
    BackendKind::Scalar,
];

/// Whether this CPU can run `backend` (runtime detection, cached by std).
pub(crate) fn cpu_has(backend: BackendKind) -> bool {
    match backend {
        BackendKind::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        BackendKind::Sse41 => sse41::available(),
        #[cfg(target_arch = "x86_64")]
        BackendKind::Avx2 => avx2::available(),
        #[cfg(target_arch = "x86_64")]
        BackendKind::Avx512 => avx512::available(),
        _ => false,
    }
}

/// The kernel for one op: `prefer` if this CPU has it and `lookup` knows a
/// kernel for it, else (without a preference) the best that does. The error
/// says why a preferred backend cannot be used.
pub(crate) fn choose<K>(
    prefer: Option<BackendKind>,
    lookup: impl Fn(BackendKind) -> Option<K>,
) -> std::result::Result<(BackendKind, K), String> {
    let usable = |b: BackendKind| if cpu_has(b) { lookup(b) } else { None };
    match prefer {
        Some(b) => usable(b).map(|k| (b, k)).ok_or_else(|| {
            let why = if b == BackendKind::Wgpu {
                "needs a device stream (Stream::wgpu, feature `wgpu`)"
            } else if cpu_has(b) {
                "has no kernel for this op and element type"
            } else {
                "is not available on this CPU"
            };
            let here: Vec<&str> = PREFERENCE
                .iter()
                .filter(|&&b| usable(b).is_some())
                .map(|b| b.name())
                .collect();
            format!(
                "prefer_backend {b} {why} (usable here: {})",
                here.join(", ")
            )
        }),
        None => Ok(PREFERENCE
            .iter()
            .find_map(|&b| usable(b).map(|k| (b, k)))
            .expect("the scalar backend serves every op")),
    }
}

/// Kernel lookup by element type: `None` where a backend has no kernel for
/// an op and type. Implemented for the four float types; plans reach it
/// through the functions below, which choose by `T::KIND`, so that
/// [`crate::Element`] needs no kernel bound.
pub(crate) trait FloatKernels: Sized + 'static {
    /// Forward kernel to codes `Q`.
    fn quantize<Q: IntElement>(b: BackendKind) -> Option<QuantizeKernel<Self, Q>>;
    /// Inverse kernel from codes `Q`.
    fn dequantize<Q: IntElement>(b: BackendKind) -> Option<DequantizeKernel<Q, Self>>;
    /// Straight-through backward kernel.
    fn quantize_backward(b: BackendKind) -> Option<QuantizeBackwardKernel<Self>>;
    /// Dequantize-backward kernel.
    fn dequantize_backward(b: BackendKind) -> Option<DequantizeBackwardKernel<Self>>;
    /// The three run kernels (one scale, a value of the math type, for a
    /// whole slice): inverse, straight-through backward, dequantize
    /// backward.
    fn run_kernels<Q: IntElement>(b: BackendKind) -> Option<RunKernels<Q, Self>>;
    /// Whether a group holds a NaN or an infinity.
    fn recipe_non_finite(b: BackendKind) -> Option<RecipeCheckKernel<Self>> {
        let _ = b;
        None
    }
    /// A recipe's extremes kernel: the extremes of values rounded to the
    /// arithmetic of kind `round` (`abs`: with the first largest magnitude).
    fn recipe_extremes(
        b: BackendKind,
        round: ElementKind,
        abs: bool,
    ) -> Option<RecipeExtremesKernel<Self>> {
        let _ = (b, round, abs);
        None
    }
    /// A recipe's codes kernel (see [`recipe_codes`]).
    fn recipe_codes(
        b: BackendKind,
        round: ElementKind,
        divide: bool,
        fin: u8,
        nibbles: bool,
    ) -> Option<RecipeCodesKernel<Self>> {
        let _ = (b, round, divide, fin, nibbles);
        None
    }
}

/// Implements [`FloatKernels`] for a type: the scalar kernels, and the
/// entry points of each listed instruction-set module.
macro_rules! float_kernels {
    ($t:ty, [$($backend:ident => $module:ident),*] $(, recipe [$($rb:ident => $rm:ident),*])?) => {
        impl FloatKernels for $t {
            $(
            fn recipe_non_finite(b: BackendKind) -> Option<RecipeCheckKernel<Self>> {
                match b {
                    $(BackendKind::$rb => Some($rm::recipe_non_finite::<Self>),)*
                    _ => None,
                }
            }
            fn recipe_extremes(b: BackendKind, round: ElementKind, abs: bool) -> Option<RecipeExtremesKernel<Self>> {
                match b {
                    $(BackendKind::$rb => $rm::recipe_extremes_for::<Self>(round, abs),)*
                    _ => None,
                }
            }
            fn recipe_codes(
                b: BackendKind,
                round: ElementKind,
                divide: bool,
                fin: u8,
                nibbles: bool,
            ) -> Option<RecipeCodesKernel<Self>> {
                match b {
                    $(BackendKind::$rb => $rm::recipe_codes_for::<Self>(round, divide, fin, nibbles),)*
                    _ => None,
                }
            }
            )?
            fn quantize<Q: IntElement>(b: BackendKind) -> Option<QuantizeKernel<Self, Q>> {
                Some(match b {
                    BackendKind::Scalar => scalar::quantize_groups::<Self, Q>,
                    $(BackendKind::$backend if Q::PACK == 1 => $module::quantize::<Self, Q>,)*
                    _ => return None,
                })
            }
            fn dequantize<Q: IntElement>(b: BackendKind) -> Option<DequantizeKernel<Q, Self>> {
                Some(match b {
                    BackendKind::Scalar => scalar::dequantize_groups::<Q, Self>,
                    $(BackendKind::$backend => $module::dequantize::<Q, Self>,)*
                    _ => return None,
                })
            }
            fn quantize_backward(b: BackendKind) -> Option<QuantizeBackwardKernel<Self>> {
                Some(match b {
                    BackendKind::Scalar => scalar::quantize_backward_groups::<Self>,
                    $(BackendKind::$backend => $module::quantize_backward::<Self>,)*
                    _ => return None,
                })
            }
            fn dequantize_backward(b: BackendKind) -> Option<DequantizeBackwardKernel<Self>> {
                Some(match b {
                    BackendKind::Scalar => scalar::dequantize_backward_groups::<Self>,
                    $(BackendKind::$backend => $module::dequantize_backward::<Self>,)*
                    _ => return None,
                })
            }
            fn run_kernels<Q: IntElement>(b: BackendKind) -> Option<RunKernels<Q, Self>> {
                Some(match b {
                    BackendKind::Scalar => RunKernels {
                        dequantize: scalar::dequantize_run::<Q, Self>,
                        quantize_backward: scalar::quantize_backward_run::<Self>,
                        dequantize_backward: scalar::dequantize_backward_run::<Self>,
                    },
                    $(BackendKind::$backend if Q::PACK == 1 => RunKernels {
                        dequantize: $module::dequantize_run::<Q, Self>,
                        quantize_backward: $module::quantize_backward_run::<Self>,
                        dequantize_backward: $module::dequantize_backward_run::<Self>,
                    },)*
                    _ => return None,
                })
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod x86_tables {
    use super::*;
    use half::{bf16, f16};

    float_kernels!(
        f32,
        [Avx512 => avx512, Avx2 => avx2, Sse41 => sse41],
        recipe [Avx512 => avx512, Avx2 => avx2, Sse41 => sse41]
    );
    float_kernels!(f64, [Avx512 => avx512, Avx2 => avx2, Sse41 => sse41]);
    float_kernels!(
        bf16,
        [Avx512 => avx512, Avx2 => avx2, Sse41 => sse41],
        recipe [Avx512 => avx512, Avx2 => avx2, Sse41 => sse41]
    );
    // f16 needs F16C, which SSE4.1-only CPUs lack.
    float_kernels!(
        f16,
        [Avx512 => avx512, Avx2 => avx2],
        recipe [Avx512 => avx512, Avx2 => avx2]
    );
}

#[cfg(not(target_arch = "x86_64"))]
mod portable_tables {
    use super::*;
    use half::{bf16, f16};

    float_kernels!(f32, []);
    float_kernels!(f64, []);
    float_kernels!(bf16, []);
    float_kernels!(f16, []);
}

/// `a` as `Option<B>`: `A` is `B` (the callers match on the element kind
/// first), so the cast always succeeds; the check is `Any`'s type id.
fn same<A: 'static, B: 'static>(a: Option<A>) -> Option<B> {
    let mut a = a;
    (&mut a as &mut dyn std::any::Any)
        .downcast_mut::<Option<B>>()?
        .take()
}

/// `$e` evaluated with `$u` the concrete float type of kind `T::KIND`, cast
/// back to the caller's `T`.
macro_rules! by_type {
    ($t:ty, $u:ident => $e:expr) => {
        match <$t as crate::element::Element>::KIND {
            ElementKind::F32 => {
                type $u = f32;
                same($e)
            }
            ElementKind::F64 => {
                type $u = f64;
                same($e)
            }
            ElementKind::F16 => {
                type $u = half::f16;
                same($e)
            }
            ElementKind::Bf16 => {
                type $u = half::bf16;
                same($e)
            }
            _ => None,
        }
    };
}

/// The forward kernel of backend `b` for `T` → `Q`.
pub(crate) fn quantize<T: Element, Q: IntElement>(b: BackendKind) -> Option<QuantizeKernel<T, Q>> {
    by_type!(T, U => U::quantize::<Q>(b))
}
/// The inverse kernel of backend `b` for `Q` → `T`.
pub(crate) fn dequantize<Q: IntElement, T: Element>(
    b: BackendKind,
) -> Option<DequantizeKernel<Q, T>> {
    by_type!(T, U => U::dequantize::<Q>(b))
}
/// The straight-through backward kernel of backend `b` for `T`.
pub(crate) fn quantize_backward<T: Element>(b: BackendKind) -> Option<QuantizeBackwardKernel<T>> {
    by_type!(T, U => U::quantize_backward(b))
}
/// The dequantize-backward kernel of backend `b` for `T`.
pub(crate) fn dequantize_backward<T: Element>(
    b: BackendKind,
) -> Option<DequantizeBackwardKernel<T>> {
    by_type!(T, U => U::dequantize_backward(b))
}
/// The run kernels of backend `b` for codes `Q` and floats `T`.
pub(crate) fn run_kernels<Q: IntElement, T: Element>(b: BackendKind) -> Option<RunKernels<Q, T>> {
    by_type!(T, U => U::run_kernels::<Q>(b))
}
/// The non-finite check of backend `b` for `T`.
pub(crate) fn recipe_non_finite<T: Element>(b: BackendKind) -> Option<RecipeCheckKernel<T>> {
    by_type!(T, U => U::recipe_non_finite(b))
}
/// A recipe's extremes kernel of backend `b` for `T` (see
/// [`FloatKernels::recipe_extremes`]).
pub(crate) fn recipe_extremes<T: Element>(
    b: BackendKind,
    round: ElementKind,
    abs: bool,
) -> Option<RecipeExtremesKernel<T>> {
    by_type!(T, U => U::recipe_extremes(b, round, abs))
}

/// The codes kernel backend `b` has for inputs `T` and a formula in the
/// arithmetic of kind `round` (`divide`, else multiply by the reciprocal;
/// finishing steps `fin`, see [`finish`]; `nibbles`: two codes per byte).
pub(crate) fn recipe_codes<T: Element>(
    b: BackendKind,
    round: ElementKind,
    divide: bool,
    fin: u8,
    nibbles: bool,
) -> Option<RecipeCodesKernel<T>> {
    by_type!(T, U => U::recipe_codes(b, round, divide, fin, nibbles))
}

/// A forward kernel over whole groups of one row:
/// `(input, scale, zero_point, output, group_size, q_min, q_max)`.
pub(crate) type QuantizeKernel<TIn, TOut> =
    fn(&[TIn], &[TIn], &[i32], &mut [TOut], usize, i32, i32);
/// An inverse kernel: `(codes, scale, zero_point, output, group_size)`.
pub(crate) type DequantizeKernel<TQ, TOut> = fn(&[TQ], &[TOut], &[i32], &mut [TOut], usize);
/// A straight-through backward kernel: `(grad_output, input, scale,
/// zero_point, grad_input, group_size, q_min, q_max, boundary)`.
pub(crate) type QuantizeBackwardKernel<T> =
    fn(&[T], &[T], &[T], &[i32], &mut [T], usize, i32, i32, SteBoundary);
/// Whether a group holds a NaN or an infinity.
pub(crate) type RecipeCheckKernel<T> = fn(&[T]) -> bool;
/// A group's extremes after rounding to a recipe's arithmetic: `min`,
/// `max` (which zero a `±0` extreme carries is left open) and the first
/// value of largest magnitude (0 unless asked for).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GroupExtremes {
    pub min: f32,
    pub max: f32,
    pub signed_absmax: f32,
}

/// One group's values for a vector recipe formula: scale `s` (finite, non-zero),
/// `inv` (finite): `rd(1 / s)` in the arithmetic for a reciprocal formula,
/// the f32 `RN(1 / s)` for a division (the seed of its FMA correction, which
/// a bf16/f16 reciprocal would leave an ulp off), the constant `c` added (the zero point, or
/// the zero point plus one half for ggml's half-up), the float `offset`
/// subtracted first (0: none), and the code range `[lo, hi]`.
///
/// `fast_divide`: a division may be computed with fused multiply-adds
/// (Markstein's correction of `x * inv`), which gives the correctly rounded
/// quotient when nothing overflows or underflows. The caller sets it when
/// `2^-96 <= |s| <= 2^96` and every `|x| < |s| 2^120`: then `inv` and every
/// product are normal, and the residual `x - q s` is exact whenever
/// `|x / s| >= 2^-2`. Smaller quotients may be off by an ulp, but every
/// finishing step maps all values in `(-1/4, 1/4)` to one code (each code
/// boundary lies at `|v| >= 1/2`), so the codes are the divider's.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FormulaParams {
    pub s: f32,
    pub inv: f32,
    pub c: f32,
    pub offset: f32,
    pub lo: f32,
    pub hi: f32,
    pub fast_divide: bool,
}

/// A recipe's extremes kernel: the extremes of `xs` rounded to the
/// arithmetic, into the second argument; `false` for a NaN or infinite
/// value, or one that rounds to an infinity (the scalar engine takes the
/// group). Results travel through plain `f32` fields, not a returned
/// struct, so that the caller's reads of them are forwarded from the
/// kernel's stores.
pub(crate) type RecipeExtremesKernel<T> = fn(&[T], &mut GroupExtremes) -> bool;
/// The finishing steps of a recipe formula: how `v = x ⊘ s` becomes an
/// integral value, as a const parameter of the vector codes kernels.
pub(crate) mod finish {
    /// `round_even(rd(v + z))`.
    pub const EVEN_BEFORE: u8 = 0;
    /// `rd(round_even(v) + z)`.
    pub const EVEN_AFTER: u8 = 1;
    /// `round_away(rd(v + z))`.
    pub const AWAY_BEFORE: u8 = 2;
    /// `trunc(rd(v + (z + 0.5)))`: ggml's half-up.
    pub const HALF_UP_BEFORE: u8 = 3;
    /// `EVEN_BEFORE` with `z == 0` (chosen by the kernel per group).
    pub const EVEN_BEFORE_ZERO: u8 = 4;
    /// `AWAY_BEFORE` with `z == 0` (chosen by the kernel per group).
    pub const AWAY_BEFORE_ZERO: u8 = 5;
}

/// A recipe's codes kernel: the codes of finite values, the low byte of
/// each code per byte of the output, or two codes per byte (the first in
/// the low nibble) for a kernel chosen with `nibbles`.
pub(crate) type RecipeCodesKernel<T> = fn(&[T], &FormulaParams, &mut [u8]);

/// A dequantize-backward kernel: `(grad_output, scale, grad_input, group_size)`.
pub(crate) type DequantizeBackwardKernel<T> = fn(&[T], &[T], &mut [T], usize);

/// The inverse of one run: `(codes, s, z, out)`, SPEC §3.2.
pub(crate) type DequantizeRun<Q, T> = fn(&[Q], f64, i32, &mut [T]);
/// The straight-through gradient of one run: `(dy, x, s, z, out, q_min,
/// q_max, boundary)`, SPEC §3.3.
pub(crate) type QuantizeBackwardRun<T> = fn(&[T], &[T], f64, i32, &mut [T], i32, i32, SteBoundary);
/// The dequantize gradient of one run: `(dy, s, out)`, SPEC §3.4.
pub(crate) type DequantizeBackwardRun<T> = fn(&[T], f64, &mut [T]);

/// The kernels of one run of values sharing one scale `s` (an f64 holding
/// a value of the math type: f32 below f64) and zero point `z`: the
/// per-group kernels' arithmetic on one group of any length.
#[derive(Debug)]
pub(crate) struct RunKernels<Q, T> {
    pub dequantize: DequantizeRun<Q, T>,
    pub quantize_backward: QuantizeBackwardRun<T>,
    pub dequantize_backward: DequantizeBackwardRun<T>,
}

impl<Q, T> Clone for RunKernels<Q, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<Q, T> Copy for RunKernels<Q, T> {}

/// `outer` rows of `num_groups` groups of `group_size` elements.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupGrid {
    pub outer: usize,
    pub num_groups: usize,
    pub group_size: usize,
}

impl GroupGrid {
    fn units(&self) -> usize {
        self.outer * self.num_groups
    }

    /// Element offset in the output of group-unit `u` (row `u / num_groups`).
    fn offset(&self, u: usize, row_stride: usize) -> usize {
        (u / self.num_groups) * row_stride + (u % self.num_groups) * self.group_size
    }
}

/// Elements `a..b` of row `row` of a validated rank-2 view.
#[inline]
pub(crate) fn row_slice<'a, T>(
    view: &TensorRef<'a, T, 2>,
    row: usize,
    a: usize,
    b: usize,
) -> &'a [T] {
    let start = row * view.stride[0];
    &view.data[start + a..start + b]
}

/// Calls `f(row, g0, g1, segment)` once for every maximal run of groups
/// `g0..g1` of one row inside each task, where `segment` is the output's
/// elements of those groups. Together the calls cover every group exactly
/// once.
///
/// `out` is the output view's slice and `row_stride` its row stride; the
/// caller has validated that the view fits the slice and that rows do not
/// overlap (`row_stride >= num_groups * group_size` when `outer > 1`).
/// The grid must be non-empty.
pub(crate) fn for_each_segment<T, F>(
    stream: &Stream,
    grid: GroupGrid,
    out: &mut [T],
    row_stride: usize,
    f: &F,
) where
    T: Send,
    F: Fn(usize, usize, usize, &mut [T]) + Sync,
{
    let units = grid.units();
    let elements = units * grid.group_size;
    match stream.pool() {
        Some(pool) if elements >= PARALLEL_MIN_ELEMENTS => {
            let per_thread = units / (pool.current_num_threads() * TASKS_PER_THREAD);
            let task_units = (TASK_ELEMENTS / grid.group_size).max(per_thread).max(1);
            pool.install(|| split(grid, row_stride, 0, units, out, task_units, f));
        }
        _ => serial(grid, row_stride, 0, units, out, f),
    }
}

/// Halves `u0..u1` until a task is at most `task_units` groups. `out` starts
/// at the offset of unit `u0`.
fn split<T, F>(
    grid: GroupGrid,
    row_stride: usize,
    u0: usize,
    u1: usize,
    out: &mut [T],
    task_units: usize,
    f: &F,
) where
    T: Send,
    F: Fn(usize, usize, usize, &mut [T]) + Sync,
{
    if u1 - u0 <= task_units {
        return serial(grid, row_stride, u0, u1, out, f);
    }
    let mid = u0 + (u1 - u0) / 2;
    let at = grid.offset(mid, row_stride) - grid.offset(u0, row_stride);
    let (left, right) = out.split_at_mut(at);
    rayon::join(
        || split(grid, row_stride, u0, mid, left, task_units, f),
        || split(grid, row_stride, mid, u1, right, task_units, f),
    );
}

/// Runs units `u0..u1` on this thread, one call per row touched.
fn serial<T, F>(grid: GroupGrid, row_stride: usize, u0: usize, u1: usize, out: &mut [T], f: &F)
where
    F: Fn(usize, usize, usize, &mut [T]),
{
    let base = grid.offset(u0, row_stride);
    let mut u = u0;
    while u < u1 {
        let row = u / grid.num_groups;
        let g0 = u % grid.num_groups;
        let g1 = grid.num_groups.min(g0 + (u1 - u));
        let start = grid.offset(u, row_stride) - base;
        let len = (g1 - g0) * grid.group_size;
        f(row, g0, g1, &mut out[start..start + len]);
        u += g1 - g0;
    }
}

/// A block of rows of one output: `data` starts at the block's first row.
pub(crate) struct Rows<'a, T> {
    pub data: &'a mut [T],
    pub stride: usize,
}

impl<'a, T> Rows<'a, T> {
    /// The elements of row `i` of the block, `len` long.
    pub fn row(&mut self, i: usize, len: usize) -> &mut [T] {
        &mut self.data[i * self.stride..i * self.stride + len]
    }

    fn split(self, rows: usize) -> (Rows<'a, T>, Rows<'a, T>) {
        let at = (rows * self.stride).min(self.data.len());
        let (a, b) = self.data.split_at_mut(at);
        let stride = self.stride;
        (Rows { data: a, stride }, Rows { data: b, stride })
    }
}

/// Four blocks of rows, split together.
pub(crate) type RowOutputs<'a, A, B, C, D> = (Rows<'a, A>, Rows<'a, B>, Rows<'a, C>, Rows<'a, D>);

/// Calls `f(first_row, rows, outputs)` for disjoint blocks of whole rows
/// covering `0..outer`, over the stream's threads when the problem is large
/// (`row_elements` elements of work per row). The four outputs are split at
/// the same rows; the caller has validated that their rows fit and do not
/// overlap.
pub(crate) fn for_each_row_block<A, B, C, D, F>(
    stream: &Stream,
    outer: usize,
    row_elements: usize,
    outputs: RowOutputs<'_, A, B, C, D>,
    f: &F,
) where
    A: Send,
    B: Send,
    C: Send,
    D: Send,
    F: Fn(usize, usize, RowOutputs<'_, A, B, C, D>) + Sync,
{
    let elements = outer * row_elements.max(1);
    match stream.pool() {
        Some(pool) if elements >= PARALLEL_MIN_ELEMENTS && outer > 1 => {
            let per_thread = outer / (pool.current_num_threads() * TASKS_PER_THREAD);
            let task_rows = (TASK_ELEMENTS / row_elements.max(1)).max(per_thread).max(1);
            pool.install(|| split_rows(0, outer, task_rows, outputs, f));
        }
        _ => f(0, outer, outputs),
    }
}

fn split_rows<A, B, C, D, F>(
    r0: usize,
    rows: usize,
    task_rows: usize,
    (a, b, c, d): RowOutputs<'_, A, B, C, D>,
    f: &F,
) where
    A: Send,
    B: Send,
    C: Send,
    D: Send,
    F: Fn(usize, usize, RowOutputs<'_, A, B, C, D>) + Sync,
{
    if rows <= task_rows {
        return f(r0, rows, (a, b, c, d));
    }
    let half = rows / 2;
    let ((a0, a1), (b0, b1)) = (a.split(half), b.split(half));
    let ((c0, c1), (d0, d1)) = (c.split(half), d.split(half));
    rayon::join(
        || split_rows(r0, half, task_rows, (a0, b0, c0, d0), f),
        || split_rows(r0 + half, rows - half, task_rows, (a1, b1, c1, d1), f),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Every group is visited exactly once with the right output window,
    /// whatever the thread count, and the gaps between strided rows are
    /// never touched.
    #[test]
    fn segments_cover_each_group_once() {
        for threads in 1..=3 {
            let stream = Stream::cpu_with_threads(threads).unwrap();
            for &(outer, num_groups, group_size, row_stride) in &[
                (1, 1, 1, 1),
                (3, 5, 7, 40),
                (700, 3, 64, 200),
                (1, 4096, 32, 0),
                (5000, 1, 13, 13),
            ] {
                let grid = GroupGrid {
                    outer,
                    num_groups,
                    group_size,
                };
                let len = (outer - 1) * row_stride + num_groups * group_size;
                let mut out = vec![u32::MAX; len];
                let calls = Mutex::new(0usize);
                for_each_segment(&stream, grid, &mut out, row_stride, &|row, g0, g1, seg| {
                    assert!(g0 < g1 && g1 <= num_groups);
                    assert_eq!(seg.len(), (g1 - g0) * group_size);
                    for (k, v) in seg.iter_mut().enumerate() {
                        assert_eq!(*v, u32::MAX, "element written twice");
                        *v = (row * num_groups * group_size + g0 * group_size + k) as u32;
                    }
                    *calls.lock().unwrap() += 1;
                });
                for row in 0..outer {
                    for j in 0..num_groups * group_size {
                        assert_eq!(
                            out[row * row_stride + j],
                            (row * num_groups * group_size + j) as u32
                        );
                    }
                    if row + 1 < outer {
                        let gap = &out
                            [row * row_stride + num_groups * group_size..(row + 1) * row_stride];
                        assert!(gap.iter().all(|&v| v == u32::MAX), "gap written");
                    }
                }
                assert!(*calls.lock().unwrap() >= 1);
            }
        }
    }

    /// Small problems stay on the calling thread (the pool is not woken);
    /// large ones are spread over the pool's threads.
    #[test]
    fn small_problems_do_not_wake_the_pool() {
        let stream = Stream::cpu_with_threads(2).unwrap();
        let on_workers = |outer: usize| {
            let grid = GroupGrid {
                outer,
                num_groups: 32,
                group_size: 128,
            };
            let mut out = vec![0u8; outer * 4096];
            let workers = Mutex::new(Vec::new());
            for_each_segment(&stream, grid, &mut out, 4096, &|_, _, _, _| {
                workers.lock().unwrap().push(rayon::current_thread_index());
            });
            workers.into_inner().unwrap()
        };
        assert!(
            on_workers(1).iter().all(Option::is_none),
            "1 × 4096 woke the pool"
        );
        assert!(
            on_workers(15).iter().all(Option::is_none),
            "15 × 4096 woke the pool"
        );
        let big = on_workers(1024);
        assert!(
            big.iter().all(Option::is_some),
            "large problems run on the pool"
        );
        assert!(
            big.len() >= 2 * TASKS_PER_THREAD,
            "split into {} tasks",
            big.len()
        );
    }
}
