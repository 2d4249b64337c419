//! What the affine plans share: the N-D layout of a descriptor (shape,
//! blocks, parameter shape), the validation of strided views of any rank,
//! and the walk over every element on the stream's threads.

use super::common::invalid;
use crate::affine::{AffineFormula, CodeConversion, Granularity, Shape, MAX_RANK};
use crate::element::{Element, ElementKind, IntElement};
use crate::error::{Error, Result};
pub(crate) use crate::kernels::affine::store;
use crate::kernels::affine::{quantize_run, AffineKernel, AffineVector};
use crate::kernels::recipe::CHUNK;
use crate::plan::{BackendKind, KernelSku, PlanPreference, QuantizeKind};
use crate::stream::{Stream, Workspace};
use crate::tensor::{span, TensorMut, TensorRef};

/// A validated affine problem: the tensor's shape, the block of elements
/// sharing a parameter, and the parameters' shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct NdLayout {
    pub plan: &'static str,
    pub shape: Shape,
    pub block: Shape,
    pub params: Shape,
    pub numel: usize,
    pub nparams: usize,
}

impl NdLayout {
    /// Validates `shape` under `granularity` (axis in range, blocks dividing
    /// the shape, sizes without overflow), naming `plan` in errors.
    pub fn new(plan: &'static str, shape: Shape, granularity: Granularity) -> Result<NdLayout> {
        let named = |e: Error| match e {
            Error::InvalidProblem(m) => invalid(plan, m),
            e => e,
        };
        let block = granularity.block(&shape).map_err(named)?;
        let params = granularity.param_shape(&shape).map_err(named)?;
        let numel = shape.numel().ok_or_else(|| {
            invalid(
                plan,
                format!("shape {shape:?} has more than usize::MAX elements"),
            )
        })?;
        let nparams = params.numel().unwrap_or(0);
        Ok(NdLayout {
            plan,
            shape,
            block,
            params,
            numel,
            nparams,
        })
    }

    /// The index arithmetic of a non-empty problem: the rank (a rank-0
    /// tensor counts as `[1]`), the dimensions and block lengths padded with
    /// 1, and the row-major strides of the parameter array, so that an
    /// element's parameter is `Σ idx[d] / block[d] · pstride[d]`.
    pub fn index_arithmetic(
        &self,
    ) -> (
        usize,
        [usize; MAX_RANK],
        [usize; MAX_RANK],
        [usize; MAX_RANK],
    ) {
        let rank = self.shape.rank().max(1);
        let mut dims = [1usize; MAX_RANK];
        dims[..self.shape.rank()].copy_from_slice(self.shape.dims());
        let mut block = [1usize; MAX_RANK];
        block[..self.block.rank()].copy_from_slice(self.block.dims());
        let mut pstride = [0usize; MAX_RANK];
        let mut acc = 1;
        for d in (0..rank).rev() {
            pstride[d] = acc;
            acc *= dims[d] / block[d];
        }
        (rank, dims, block, pstride)
    }

    /// Checks a parameter array (scale, zero point) of `len` elements: it
    /// must hold exactly the parameter shape's count, dense and row-major.
    pub fn check_params(&self, name: &str, len: usize) -> Result<()> {
        if len < self.nparams {
            return Err(Error::BufferTooSmall {
                needed: self.nparams,
                got: len,
            });
        }
        if len > self.nparams {
            return Err(invalid(
                self.plan,
                format!(
                    "{name} has {len} elements; the parameter shape {:?} holds {}",
                    self.params, self.nparams
                ),
            ));
        }
        Ok(())
    }

    /// Checks one strided view of rank `R`: rank and shape the descriptor's,
    /// the buffer long enough, and for an output no two elements at one
    /// place.
    pub fn check_view<const R: usize>(
        &self,
        name: &str,
        shape: &[usize; R],
        stride: &[usize; R],
        len: usize,
        output: bool,
    ) -> Result<()> {
        if R != self.shape.rank() || shape[..] != *self.shape.dims() {
            return Err(invalid(
                self.plan,
                format!(
                    "{name} shape {shape:?} does not match the descriptor's {:?}",
                    self.shape
                ),
            ));
        }
        let needed = span(shape, stride).ok_or_else(|| {
            invalid(
                self.plan,
                format!(
                    "{name} view with shape {shape:?} and stride {stride:?} spans more than usize::MAX elements"
                ),
            )
        })?;
        if len < needed {
            return Err(Error::BufferTooSmall { needed, got: len });
        }
        if output && overlaps(shape, stride) {
            return Err(invalid(
                self.plan,
                format!(
                    "{name} shape {shape:?} with stride {stride:?} puts two elements at one place"
                ),
            ));
        }
        Ok(())
    }
}

/// Whether two indices of a view share an offset: sorted by stride, each
/// dimension (of extent > 1) must step past everything the smaller ones
/// span.
fn overlaps(shape: &[usize], stride: &[usize]) -> bool {
    if shape.contains(&0) {
        return false;
    }
    let mut dims: Vec<(usize, usize)> = shape
        .iter()
        .zip(stride)
        .filter(|(&d, _)| d > 1)
        .map(|(&d, &s)| (s, d))
        .collect();
    dims.sort_unstable();
    let mut reach = 1usize;
    for (s, d) in dims {
        if s < reach {
            return true;
        }
        reach = s.saturating_mul(d - 1).saturating_add(reach);
    }
    false
}

/// The type parameters a plan carries (it owns none of their values).
pub(crate) type Types3<A, B, C> = std::marker::PhantomData<fn() -> (A, B, C)>;

/// Strides padded to [`MAX_RANK`].
pub(crate) fn strides<const R: usize>(s: &[usize; R]) -> [usize; MAX_RANK] {
    let mut out = [0; MAX_RANK];
    out[..R].copy_from_slice(s);
    out
}

/// One output of a walk: its elements and strides.
pub(crate) struct Out<'a, T> {
    pub data: &'a mut [T],
    pub stride: [usize; MAX_RANK],
}

/// The offsets of one element: in each of two inputs, its parameter, and in
/// each of two outputs (relative to the task's output slices).
#[derive(Debug, Clone, Copy)]
pub(crate) struct At {
    pub input: [usize; 2],
    pub param: usize,
    pub out: [usize; 2],
}

/// Elements per task, about: enough to amortize a task, small enough to
/// balance.
const TASK: usize = 1 << 15;

/// Calls `f(at, a, b)` once for every element of a validated problem, with
/// `a` and `b` the element's places in the two outputs (`b` is a dummy when
/// `out_b` is `None`). Elements are split over the stream's threads along
/// the first dimension of extent > 1 when every output is laid out so that
/// its indices along that dimension own disjoint ranges (any row-major
/// layout, padded or not); otherwise one thread walks them all. Each
/// element is computed alone, so the split cannot change a result.
pub(crate) fn walk<A: Send, B: Send + Default>(
    stream: &Stream,
    layout: &NdLayout,
    inputs: [[usize; MAX_RANK]; 2],
    out_a: Out<'_, A>,
    out_b: Option<Out<'_, B>>,
    f: impl Fn(At, &mut A, &mut B) + Sync,
) {
    traverse(stream, layout, inputs, out_a, out_b, &Elements(f));
}

/// A row of the last dimension, or the part of it a task owns: the first
/// index `j0` (the output slices given with it start there), the offsets
/// of that index in the two inputs, the parameter index of the row's first
/// block and the block length along the row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    pub input: [usize; 2],
    pub j0: usize,
    pub param: usize,
    pub block: usize,
}

/// Calls `f(row, a, b)` for every row of the last dimension (split over
/// the threads as [`walk`]), `a` and `b` the row's contiguous elements of
/// the two outputs (`b` when given). The caller guarantees output strides
/// of 1 along the last dimension.
pub(crate) fn walk_rows<A: Send, B: Send + Default>(
    stream: &Stream,
    layout: &NdLayout,
    inputs: [[usize; MAX_RANK]; 2],
    out_a: Out<'_, A>,
    out_b: Option<Out<'_, B>>,
    f: impl Fn(Row, &mut [A], Option<&mut [B]>) + Sync,
) {
    let last = layout.shape.rank().max(1) - 1;
    debug_assert!(layout.numel == 0 || out_a.stride[last] == 1);
    debug_assert!(layout.numel == 0 || out_b.as_ref().is_none_or(|b| b.stride[last] == 1));
    traverse::<A, B>(stream, layout, inputs, out_a, out_b, &Rows(f));
}

/// Calls `f(param, range)` for each run of a row's elements sharing a
/// parameter: `range` is relative to the row's output slices (of `len`
/// elements) and holds at most `max` elements.
#[inline]
pub(crate) fn for_each_run(
    row: &Row,
    len: usize,
    max: usize,
    mut f: impl FnMut(usize, std::ops::Range<usize>),
) {
    let end = row.j0 + len;
    let mut j = row.j0;
    while j < end {
        let next = ((j / row.block + 1) * row.block)
            .min(end)
            .min(j.saturating_add(max));
        f(row.param + j / row.block, j - row.j0..next - row.j0);
        j = next;
    }
}

/// The stride of a view's last dimension (0 for a rank-0 view, which
/// never walks by runs).
pub(crate) fn last_stride<const R: usize>(stride: &[usize; R]) -> usize {
    stride.last().copied().unwrap_or(0)
}

/// Whether a problem walks by rows of runs: rank ≥ 1, every view (inputs
/// and outputs, by their last stride) contiguous along the last dimension,
/// and the blocks along it at least [`MIN_RUN`] long.
pub(crate) fn by_runs(layout: &NdLayout, last_strides: &[usize]) -> bool {
    let rank = layout.shape.rank();
    rank > 0 && last_strides.iter().all(|&s| s == 1) && layout.block.dims()[rank - 1] >= MIN_RUN
}

/// What a traversal does: per element, or per row.
trait Visit<A, B>: Sync {
    const ROWS: bool;
    fn element(&self, _at: At, _a: &mut A, _b: &mut B) {}
    fn row(&self, _row: Row, _a: &mut [A], _b: Option<&mut [B]>) {}
}

struct Elements<F>(F);
impl<A, B, F: Fn(At, &mut A, &mut B) + Sync> Visit<A, B> for Elements<F> {
    const ROWS: bool = false;
    #[inline(always)]
    fn element(&self, at: At, a: &mut A, b: &mut B) {
        (self.0)(at, a, b)
    }
}

struct Rows<F>(F);
impl<A, B, F: Fn(Row, &mut [A], Option<&mut [B]>) + Sync> Visit<A, B> for Rows<F> {
    const ROWS: bool = true;
    #[inline(always)]
    fn row(&self, row: Row, a: &mut [A], b: Option<&mut [B]>) {
        (self.0)(row, a, b)
    }
}

fn traverse<A: Send, B: Send + Default>(
    stream: &Stream,
    layout: &NdLayout,
    inputs: [[usize; MAX_RANK]; 2],
    out_a: Out<'_, A>,
    out_b: Option<Out<'_, B>>,
    f: &impl Visit<A, B>,
) {
    if layout.numel == 0 {
        return;
    }
    let (rank, dims, block, pstride) = layout.index_arithmetic();
    let o = (0..rank).find(|&d| dims[d] > 1).unwrap_or(rank - 1);
    let rest =
        |st: &[usize; MAX_RANK]| 1 + (o + 1..rank).map(|d| (dims[d] - 1) * st[d]).sum::<usize>();
    let splittable = |st: &[usize; MAX_RANK]| st[o] >= rest(st);
    let parallel = splittable(&out_a.stride)
        && out_b.as_ref().is_none_or(|b| splittable(&b.stride))
        && stream.threads() > 1
        && layout.numel > TASK;
    let per_index = layout.numel / dims[o];
    let step = if parallel {
        TASK.div_ceil(per_index).max(1)
    } else {
        dims[o]
    };
    let geometry = Geometry {
        rank,
        o,
        dims,
        block,
        pstride,
        inputs,
        out: [
            out_a.stride,
            out_b.as_ref().map_or([0; MAX_RANK], |b| b.stride),
        ],
    };
    // Carve the outputs into the tasks' disjoint slices: task `k0..k1`
    // owns offsets `k0·stride[o]` up to `k1·stride[o]` (the rest of the
    // buffer for the last task).
    let mut tasks = Vec::new();
    let mut a = Carver::new(out_a.data);
    let mut b = out_b.map(|b| Carver::new(b.data));
    let mut k0 = 0;
    while k0 < dims[o] {
        let k1 = (k0 + step).min(dims[o]);
        let last = k1 == dims[o];
        let mine_a = a.take(k0 * geometry.out[0][o], k1 * geometry.out[0][o], last);
        let mine_b = b
            .as_mut()
            .map(|b| b.take(k0 * geometry.out[1][o], k1 * geometry.out[1][o], last));
        tasks.push((k0, k1, mine_a, mine_b));
        k0 = k1;
    }
    let run = |(k0, k1, a, b): (usize, usize, &mut [A], Option<&mut [B]>)| {
        geometry.task(k0, k1, a, b, f);
    };
    match stream.pool() {
        Some(pool) if parallel => pool.install(|| {
            use rayon::prelude::*;
            tasks.into_par_iter().for_each(run);
        }),
        _ => tasks.into_iter().for_each(run),
    }
}

/// Cuts consecutive disjoint ranges off a mutable slice.
struct Carver<'a, T> {
    rest: &'a mut [T],
    /// The offset where `rest` starts.
    pos: usize,
}

impl<'a, T> Carver<'a, T> {
    fn new(data: &'a mut [T]) -> Self {
        Carver { rest: data, pos: 0 }
    }

    /// Offsets `start..end` (`start..` the end when `to_end`), `start` at
    /// or after the previous range's end.
    fn take(&mut self, start: usize, end: usize, to_end: bool) -> &'a mut [T] {
        let rest = std::mem::take(&mut self.rest);
        let (_, tail) = rest.split_at_mut((start - self.pos).min(rest.len()));
        let n = if to_end {
            tail.len()
        } else {
            (end - start).min(tail.len())
        };
        let (mine, rest) = tail.split_at_mut(n);
        self.rest = rest;
        self.pos = start + n;
        mine
    }
}

/// The index arithmetic of a walk.
struct Geometry {
    rank: usize,
    /// The split dimension.
    o: usize,
    dims: [usize; MAX_RANK],
    block: [usize; MAX_RANK],
    pstride: [usize; MAX_RANK],
    inputs: [[usize; MAX_RANK]; 2],
    out: [[usize; MAX_RANK]; 2],
}

impl Geometry {
    /// Every element whose index along `o` is in `k0..k1`; the output
    /// slices start at index `k0` along `o`.
    fn task<A, B: Default, V: Visit<A, B>>(
        &self,
        k0: usize,
        k1: usize,
        a: &mut [A],
        mut b: Option<&mut [B]>,
        f: &V,
    ) {
        let (rank, o) = (self.rank, self.o);
        let last = rank - 1;
        let mut idx = [0usize; MAX_RANK];
        idx[o] = k0;
        // The task's output slices start at index k0 along `o`.
        let base = [k0 * self.out[0][o], k0 * self.out[1][o]];
        let mut dummy = B::default();
        loop {
            // One row: every index of the last dimension (or, when the split
            // dimension is the last, the task's part of it).
            let (j0, j1) = if o == last {
                (k0, k1)
            } else {
                (0, self.dims[last])
            };
            let off = |st: &[usize; MAX_RANK]| (0..last).map(|d| idx[d] * st[d]).sum::<usize>();
            let row_in = [off(&self.inputs[0]), off(&self.inputs[1])];
            let row_out = [off(&self.out[0]), off(&self.out[1])];
            let prow: usize = (0..last)
                .map(|d| idx[d] / self.block[d] * self.pstride[d])
                .sum();
            if V::ROWS {
                let start = |k: usize| row_out[k] + j0 * self.out[k][last] - base[k];
                let row = Row {
                    input: [
                        row_in[0] + j0 * self.inputs[0][last],
                        row_in[1] + j0 * self.inputs[1][last],
                    ],
                    j0,
                    param: prow,
                    block: self.block[last],
                };
                let (sa, sb) = (start(0), start(1));
                let rb = b.as_deref_mut().map(|b| &mut b[sb..sb + (j1 - j0)]);
                f.row(row, &mut a[sa..sa + (j1 - j0)], rb);
            }
            for j in (j0..j1).filter(|_| !V::ROWS) {
                let at = At {
                    input: [
                        row_in[0] + j * self.inputs[0][last],
                        row_in[1] + j * self.inputs[1][last],
                    ],
                    param: prow + j / self.block[last] * self.pstride[last],
                    out: [
                        row_out[0] + j * self.out[0][last] - base[0],
                        row_out[1] + j * self.out[1][last] - base[1],
                    ],
                };
                let ea = &mut a[at.out[0]];
                let eb = match &mut b {
                    Some(bd) => &mut bd[at.out[1]],
                    None => &mut dummy,
                };
                f.element(at, ea, eb);
            }
            // The next row: an odometer over the dimensions before the last,
            // the split one bounded by the task.
            let mut d = last;
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                let end = if d == o { k1 } else { self.dims[d] };
                idx[d] += 1;
                if idx[d] < end {
                    break;
                }
                if d <= o {
                    return;
                }
                idx[d] = 0;
            }
        }
    }
}

/// The identity of an affine plan: its layout and kernel SKU (the backend
/// of its vector runs; the scalar element core ([`AffineKernel`]) takes
/// every other element).
///
/// [`AffineKernel`]: crate::kernels::affine::AffineKernel
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct AffineCore {
    pub layout: NdLayout,
    pub sku: KernelSku,
}

impl AffineCore {
    /// A plan on CPU `backend` (chosen by the caller), refusing device
    /// streams.
    pub fn with_backend<T: Element>(
        plan: &'static str,
        op: QuantizeKind,
        aux_element: Option<ElementKind>,
        layout: NdLayout,
        backend: BackendKind,
        stream: &Stream,
    ) -> Result<AffineCore> {
        if stream.is_device() {
            return Err(Error::Unsupported(format!(
                "{plan}: runs on CPU streams only (the per-group plans run on devices)"
            )));
        }
        // The family's SKU and precision guarantee; the per-group layout
        // it carries is unused here.
        let no_layout = super::common::Layout {
            outer: 0,
            axis: 0,
            group_size: 1,
            num_groups: 0,
        };
        let core =
            super::common::PlanCore::with_backend::<T>(plan, op, aux_element, no_layout, backend);
        Ok(AffineCore {
            layout,
            sku: core.sku,
        })
    }

    /// Scratch bytes `run` needs: none.
    pub fn workspace_size(&self) -> usize {
        0
    }

    /// A host run on a CPU stream, with a large enough workspace.
    pub fn check_run(&self, stream: &Stream, workspace: &Workspace<'_>) -> Result<()> {
        if stream.is_device() {
            return Err(Error::Unsupported(format!(
                "{}: run takes host slices on a CPU stream",
                self.layout.plan
            )));
        }
        let _ = workspace;
        Ok(())
    }

    /// Checks the scale and zero-point arrays: their lengths, and a float
    /// zero point only where the formula can add one.
    pub fn check_params<S>(
        &self,
        formula: &AffineFormula,
        scale: &[S],
        zero_point: &ZeroPoints<'_>,
    ) -> Result<()> {
        self.layout.check_params("scale", scale.len())?;
        match zero_point {
            ZeroPoints::None => Ok(()),
            ZeroPoints::Int(z) => self.layout.check_params("zero_point", z.len()),
            ZeroPoints::Float(z) => {
                if formula.conversion == CodeConversion::Fbgemm {
                    return Err(invalid(
                        self.layout.plan,
                        "a float zero_point cannot be added by FBGEMM's integer conversion".into(),
                    ));
                }
                self.layout.check_params("zero_point", z.len())
            }
        }
    }
}

/// The zero points of an affine call, one per parameter (dense, row-major
/// over the parameter shape).
#[derive(Debug, Clone, Copy)]
pub enum ZeroPoints<'a> {
    /// No zero points: `z = 0` everywhere (symmetric quantization).
    None,
    /// Integer zero points, added as `M(z)`.
    Int(&'a [i32]),
    /// Float zero points (`torch.fake_quantize_per_channel_affine` with a
    /// float `zero_point`), added as given.
    Float(&'a [f32]),
}

impl ZeroPoints<'_> {
    /// The zero point of parameter `p` as `(integer, value the formula
    /// adds)`; the integer of a float zero point is unused.
    #[inline(always)]
    pub(crate) fn at(&self, p: usize, k: &AffineKernel) -> (i32, f64) {
        match self {
            ZeroPoints::None => (0, 0.0),
            ZeroPoints::Int(z) => (z[p], k.zero_point(z[p])),
            ZeroPoints::Float(z) => (0, f64::from(z[p])),
        }
    }

    /// [`at`](Self::at) for the run kernels: the integer zero point as
    /// `Some` (none is 0), `None` for a float one, which they cannot add.
    #[inline(always)]
    pub(crate) fn run_at(&self, p: usize, k: &AffineKernel) -> (Option<i32>, f64) {
        let (z, zf) = self.at(p, k);
        ((!matches!(self, ZeroPoints::Float(_))).then_some(z), zf)
    }
}

/// The shortest run of values sharing a parameter along the last dimension
/// worth a vector kernel call; shorter runs take the element core.
pub(crate) const MIN_RUN: usize = 16;

/// The backend of a plan whose runs have kernels `K`: the preferred one,
/// or the best `lookup` has kernels for, or the scalar core (`None`: every
/// element through [`AffineKernel`]).
pub(crate) fn run_backend<K>(
    plan: &str,
    pref: PlanPreference,
    lookup: impl Fn(BackendKind) -> Option<K>,
) -> Result<(BackendKind, Option<K>)> {
    let lookup = |b: BackendKind| match b {
        BackendKind::Scalar => Some(None),
        _ => lookup(b).map(Some),
    };
    crate::kernels::choose(pref.prefer_backend, lookup)
        .map_err(|why| Error::Unsupported(format!("{plan}: {why}")))
}

/// The backend of a quantize plan: the best with the recipe engine's
/// vector codes for its formula (see [`run_backend`]).
pub(crate) fn vector_backend<T: Element, Q: IntElement>(
    plan: &str,
    kernel: &AffineKernel,
    pref: PlanPreference,
) -> Result<(BackendKind, Option<AffineVector<T>>)> {
    run_backend(plan, pref, |b| {
        AffineVector::<T>::new::<Q>(kernel, T::KIND, b)
    })
}

/// Writes the codes of every element of a validated problem: row by row
/// through [`quantize_rows`] (the vector kernels on long runs) where the
/// input and output are contiguous along the last dimension and the zero
/// points are integers, element by element through the core otherwise.
pub(crate) fn write_codes<T: Element, TScale: Element, Q: IntElement, const R: usize>(
    stream: &Stream,
    layout: &NdLayout,
    (k, vector): (&AffineKernel, Option<&AffineVector<T>>),
    input: &TensorRef<'_, T, R>,
    (s, zp): (&[TScale], &ZeroPoints<'_>),
    output: TensorMut<'_, Q, R>,
    (lo, hi): (i32, i32),
) {
    let x = input.data;
    let rows = by_runs(
        layout,
        &[last_stride(&input.stride), last_stride(&output.stride)],
    ) && !matches!(zp, ZeroPoints::Float(_));
    let out = Out {
        data: output.data,
        stride: strides(&output.stride),
    };
    if let (Some(v), true) = (vector, rows) {
        let x = (x, strides(&input.stride));
        return quantize_rows(stream, layout, (k, Some(v)), x, (s, zp), out, (lo, hi));
    }
    let inputs = [strides(&input.stride), [0; MAX_RANK]];
    walk::<Q, bool>(stream, layout, inputs, out, None, |at, q, _| {
        let (x, s) = (x[at.input[0]].to_f64(), s[at.param].to_f64());
        *q = Q::from_i32_in_range(k.code_of(x, s, zp.at(at.param, k), lo, hi));
    });
}

/// Writes the codes of a problem whose input and output are contiguous
/// along the last dimension, row by row on the stream's threads: each run
/// of values sharing a parameter through [`quantize_run`].
#[allow(clippy::too_many_arguments)]
fn quantize_rows<T: Element, TScale: Element, Q: IntElement>(
    stream: &Stream,
    layout: &NdLayout,
    (k, vector): (&AffineKernel, Option<&AffineVector<T>>),
    (x, in_stride): (&[T], [usize; MAX_RANK]),
    (s, zp): (&[TScale], &ZeroPoints<'_>),
    out: Out<'_, Q>,
    range_codes: (i32, i32),
) {
    let inputs = [in_stride, [0; MAX_RANK]];
    walk_rows::<Q, bool>(stream, layout, inputs, out, None, |row, out, _| {
        let mut bytes = [0u8; CHUNK];
        for_each_run(&row, out.len(), usize::MAX, |p, r| {
            let (z, zf) = zp.at(p, k);
            let xs = &x[row.input[0] + r.start..row.input[0] + r.end];
            let range = (s[p].to_f64(), z, zf);
            quantize_run(k, vector, xs, range, &mut out[r], range_codes, &mut bytes);
        });
    });
}
