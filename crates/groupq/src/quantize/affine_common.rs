//! What the affine plans share: the N-D layout of a descriptor (shape,
//! blocks, parameter shape), the validation of strided views of any rank,
//! and the walk over every element on the stream's threads.

use super::common::invalid;
use crate::affine::{AffineFormula, CodeConversion, Granularity, Shape, MAX_RANK};
use crate::element::{Element, ElementKind};
use crate::error::{Error, Result};
use crate::kernels::affine::AffineKernel;
use crate::kernels::recipe::Arith;
use crate::plan::{BackendKind, KernelSku, PlanPreference, QuantizeKind};
use crate::stream::{Stream, Workspace};

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

/// Elements a view spans: 1 + the largest offset (0 for an empty view).
fn span(shape: &[usize], stride: &[usize]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(0);
    }
    shape
        .iter()
        .zip(stride)
        .try_fold(1usize, |n, (&d, &s)| n.checked_add((d - 1).checked_mul(s)?))
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
    if layout.numel == 0 {
        return;
    }
    let rank = layout.shape.rank().max(1);
    let mut dims = [1usize; MAX_RANK];
    dims[..layout.shape.rank()].copy_from_slice(layout.shape.dims());
    let mut block = [1usize; MAX_RANK];
    block[..layout.block.rank()].copy_from_slice(layout.block.dims());
    // Row-major strides of the parameter array.
    let mut pstride = [0usize; MAX_RANK];
    let mut acc = 1;
    for d in (0..rank).rev() {
        pstride[d] = acc;
        acc *= dims[d] / block[d];
    }
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
        geometry.task(k0, k1, a, b, &f);
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
    fn task<A, B: Default>(
        &self,
        k0: usize,
        k1: usize,
        a: &mut [A],
        mut b: Option<&mut [B]>,
        f: &impl Fn(At, &mut A, &mut B),
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
            for j in j0..j1 {
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
                f(at, ea, eb);
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

/// The identity of an affine plan: its layout and kernel SKU. The affine
/// plans run the scalar element core ([`AffineKernel`]) on every thread of
/// a CPU stream.
///
/// [`AffineKernel`]: crate::kernels::affine::AffineKernel
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct AffineCore {
    pub layout: NdLayout,
    pub sku: KernelSku,
}

impl AffineCore {
    /// Validates the stream and preference: CPU streams, the scalar
    /// backend (the default); a device stream or another preferred backend
    /// is `Unsupported`.
    pub fn new<T: Element>(
        plan: &'static str,
        op: QuantizeKind,
        aux_element: Option<ElementKind>,
        layout: NdLayout,
        pref: PlanPreference,
        stream: &Stream,
    ) -> Result<AffineCore> {
        if stream.is_device() {
            return Err(Error::Unsupported(format!(
                "{plan}: runs on CPU streams only (the per-group plans run on devices)"
            )));
        }
        match pref.prefer_backend {
            None | Some(BackendKind::Scalar) => {}
            Some(b) => {
                return Err(Error::Unsupported(format!(
                    "{plan}: prefer_backend {b} is not available: the affine plans run the scalar core on every thread"
                )))
            }
        }
        let core = super::common::PlanCore::with_backend::<T>(
            plan,
            op,
            aux_element,
            super::common::Layout {
                outer: 0,
                axis: 0,
                group_size: 1,
                num_groups: 0,
            },
            BackendKind::Scalar,
        );
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
}

/// `v` (a value of the output's dtype or wider) stored as `T`, rounded as
/// the dtype rounds it (through f32 for f16/bf16, as PyTorch), NaN
/// canonical.
#[inline(always)]
pub(crate) fn store<T: Element>(v: f64) -> T {
    if v.is_nan() {
        T::from_f64(f64::NAN)
    } else {
        T::from_f64(Arith(T::KIND).r(v))
    }
}
