//! `QuantizeGgmlBlocksPlan` and `DequantizeGgmlBlocksPlan`: rows of `f32`
//! weights to and from ggml's block formats ([`crate::ggml`]), exactly as
//! llama.cpp's `ggml_quantize_chunk` and `dequantize_row_*`.

use super::common::refuse_device;
use super::common::{PlanCore, View};
use crate::error::{Error, Result};
use crate::ggml::{self, GgmlType};
use crate::plan::{BackendKind, PlanPreference, QuantizeKind};
use crate::stream::{Stream, Workspace};
use crate::tensor::{TensorMut, TensorRef};
use crate::ElementKind;

const QPLAN: &str = "QuantizeGgmlBlocksPlan";
const DPLAN: &str = "DequantizeGgmlBlocksPlan";

/// Describes the quantization of `rows` rows of `n_per_row` `f32` weights
/// to ggml blocks of `ggml_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantizeGgmlBlocksDescriptor {
    /// Number of rows.
    pub rows: usize,
    /// Weights per row; a multiple of `ggml_type.block_size()`.
    pub n_per_row: usize,
    /// The block format.
    pub ggml_type: GgmlType,
    /// Whether `run` gets an importance matrix (ggml's `quant_weights`).
    pub imatrix: bool,
}

/// The tensors of one quantization.
#[derive(Debug)]
pub struct QuantizeGgmlBlocksArgs<'a> {
    /// `[rows, n_per_row]` weights.
    pub input: TensorRef<'a, f32, 2>,
    /// `n_per_row` importance weights (one per column, shared by every
    /// row), exactly when the descriptor says `imatrix: true`.
    pub imatrix: Option<&'a [f32]>,
    /// `[rows, ggml_type.row_bytes(n_per_row)]` bytes, written.
    pub output: TensorMut<'a, u8, 2>,
}

/// Validates a descriptor: the shape's layout in bytes and the block size.
fn byte_layout(plan: &'static str, rows: usize, n: usize, ty: GgmlType) -> Result<usize> {
    let bs = ty.block_size();
    if !n.is_multiple_of(bs) {
        return Err(Error::InvalidProblem(format!(
            "{plan}: n_per_row {n} is not a multiple of the {ty} block size {bs}"
        )));
    }
    let row_bytes = (n / bs) * ty.type_size();
    if rows.checked_mul(n).is_none() || rows.checked_mul(row_bytes).is_none() {
        return Err(Error::InvalidProblem(format!(
            "{plan}: rows {rows} × n_per_row {n} overflows usize"
        )));
    }
    Ok(row_bytes)
}

/// Quantizes rows of `f32` weights to ggml blocks, bit-exact with
/// llama.cpp's `ggml_quantize_chunk` (and so with `llama-quantize`).
///
/// Rows run in parallel on the stream's threads. The K-quants and iq4
/// types without an importance matrix, and q4_K / q5_K with one, search
/// their sub-block scales on the vector backend (one sub-block per lane,
/// each lane doing ggml's scalar operations in ggml's order); every other
/// case runs ggml's scalar code. Every backend and thread count gives the
/// same bytes.
///
/// ```
/// use groupq::*;
/// use groupq::ggml::GgmlType;
///
/// let (rows, n) = (4, 512);
/// let w: Vec<f32> = (0..rows * n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-4).collect();
/// let ty = GgmlType::Q4K;
/// let desc = QuantizeGgmlBlocksDescriptor { rows, n_per_row: n, ggml_type: ty, imatrix: false };
/// let stream = Stream::cpu();
/// let plan = QuantizeGgmlBlocksPlan::select(&stream, &desc, Default::default())?;
/// let row_bytes = ty.row_bytes(n)?; // 2 super-blocks of 144 bytes
/// let mut blocks = vec![0u8; rows * row_bytes];
/// plan.run(&stream, Workspace::None, QuantizeGgmlBlocksArgs {
///     input: TensorRef::new(&w, [rows, n])?,
///     imatrix: None,
///     output: TensorMut::new(&mut blocks, [rows, row_bytes])?,
/// })?;
///
/// // And back.
/// let back_desc = DequantizeGgmlBlocksDescriptor { rows, n_per_row: n, ggml_type: ty };
/// let back = DequantizeGgmlBlocksPlan::select(&stream, &back_desc, Default::default())?;
/// let mut y = vec![0f32; rows * n];
/// back.run(&stream, Workspace::None, DequantizeGgmlBlocksArgs {
///     input: TensorRef::new(&blocks, [rows, row_bytes])?,
///     output: TensorMut::new(&mut y, [rows, n])?,
/// })?;
/// assert!(w.iter().zip(&y).all(|(a, b)| (a - b).abs() < 4e-3));
/// # Ok::<(), groupq::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct QuantizeGgmlBlocksPlan {
    core: PlanCore,
    desc: QuantizeGgmlBlocksDescriptor,
    row_bytes: usize,
}

impl QuantizeGgmlBlocksPlan {
    /// Validates `desc` and chooses the backend. `n_per_row` not a multiple
    /// of the block size, or a problem larger than memory can address, is
    /// `InvalidProblem`; a preferred backend this CPU lacks, or one with no
    /// kernel for the type (the legacy types and most importance-matrix
    /// searches have none), is `Unsupported`.
    pub fn select(
        stream: &Stream,
        desc: &QuantizeGgmlBlocksDescriptor,
        pref: PlanPreference,
    ) -> Result<Self> {
        refuse_device(QPLAN, stream)?;
        let ty = desc.ggml_type;
        let row_bytes = byte_layout(QPLAN, desc.rows, desc.n_per_row, ty)?;
        let vector = ggml::has_vector_search(ty, desc.imatrix);
        let layout = super::common::Layout::new(QPLAN, desc.rows, row_bytes, row_bytes.max(1))?;
        let (core, ()) = PlanCore::new::<f32, ()>(
            QPLAN,
            QuantizeKind::QuantizeGgmlBlocks,
            Some(ElementKind::U8),
            layout,
            pref,
            |b| (b == BackendKind::Scalar || vector).then_some(()),
        )?;
        Ok(QuantizeGgmlBlocksPlan {
            core,
            desc: *desc,
            row_bytes,
        })
    }

    /// Checks `args` against the descriptor: shapes and the importance
    /// matrix (`InvalidProblem`), slice lengths (`BufferTooSmall`),
    /// last-axis strides of 1 and non-overlapping output rows
    /// (`InvalidProblem`).
    pub fn can_implement(&self, args: &QuantizeGgmlBlocksArgs<'_>) -> Result<()> {
        let d = &self.desc;
        match (d.imatrix, args.imatrix) {
            (true, None) => {
                return Err(Error::InvalidProblem(format!(
                    "{QPLAN}: imatrix is None, the descriptor says imatrix: true"
                )))
            }
            (false, Some(_)) => {
                return Err(Error::InvalidProblem(format!(
                    "{QPLAN}: imatrix is given, the descriptor says imatrix: false"
                )))
            }
            (true, Some(qw)) if qw.len() != d.n_per_row => {
                return Err(Error::InvalidProblem(format!(
                    "{QPLAN}: imatrix holds {} values, n_per_row is {}",
                    qw.len(),
                    d.n_per_row
                )))
            }
            _ => {}
        }
        self.core.check_views(
            &[View::of("input", &args.input, [d.rows, d.n_per_row])],
            &[View::of_mut(
                "output",
                &args.output,
                [d.rows, self.row_bytes],
            )],
        )
    }

    plan_info_methods!();

    /// Writes the blocks. Calls `can_implement` first; on any error nothing
    /// is written.
    pub fn run(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: QuantizeGgmlBlocksArgs<'_>,
    ) -> Result<()> {
        self.core.check_host_run(stream)?;
        self.can_implement(&args)?;
        if self.desc.n_per_row == 0 {
            return Ok(());
        }
        let (b, ty, n) = (
            self.core.sku.backend,
            self.desc.ggml_type,
            self.desc.n_per_row,
        );
        let input = args.input;
        let qw = args.imatrix;
        let rb = self.row_bytes;
        self.core
            .run(stream, &workspace, args.output, 1, |row, _, _, out| {
                let x = &input.data[row * input.stride[0]..][..n];
                ggml::quantize_row(b, ty, x, qw, &mut out[..rb]);
            })
    }
}

/// Describes the dequantization of `rows` rows of ggml blocks of
/// `ggml_type` to `n_per_row` `f32` values each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DequantizeGgmlBlocksDescriptor {
    /// Number of rows.
    pub rows: usize,
    /// Values per row; a multiple of `ggml_type.block_size()`.
    pub n_per_row: usize,
    /// The block format.
    pub ggml_type: GgmlType,
}

/// The tensors of one dequantization.
#[derive(Debug)]
pub struct DequantizeGgmlBlocksArgs<'a> {
    /// `[rows, ggml_type.row_bytes(n_per_row)]` bytes.
    pub input: TensorRef<'a, u8, 2>,
    /// `[rows, n_per_row]` values, written.
    pub output: TensorMut<'a, f32, 2>,
}

/// ggml blocks back to `f32`, exactly as ggml's `dequantize_row_*` (see
/// [`QuantizeGgmlBlocksPlan`] for an example). Every byte pattern is
/// accepted: f16 scales that are infinite or NaN give infinite or NaN
/// values, as in ggml.
#[derive(Debug, Clone)]
pub struct DequantizeGgmlBlocksPlan {
    core: PlanCore,
    desc: DequantizeGgmlBlocksDescriptor,
    row_bytes: usize,
}

impl DequantizeGgmlBlocksPlan {
    /// Validates `desc` (as [`QuantizeGgmlBlocksPlan::select`]); the
    /// dequantizers are scalar code, so only the scalar backend serves.
    pub fn select(
        stream: &Stream,
        desc: &DequantizeGgmlBlocksDescriptor,
        pref: PlanPreference,
    ) -> Result<Self> {
        refuse_device(DPLAN, stream)?;
        let row_bytes = byte_layout(DPLAN, desc.rows, desc.n_per_row, desc.ggml_type)?;
        let n = desc.n_per_row;
        let layout = super::common::Layout::new(DPLAN, desc.rows, n, n.max(1))?;
        let (core, ()) = PlanCore::new::<f32, ()>(
            DPLAN,
            QuantizeKind::DequantizeGgmlBlocks,
            Some(ElementKind::U8),
            layout,
            pref,
            |b| (b == BackendKind::Scalar).then_some(()),
        )?;
        Ok(DequantizeGgmlBlocksPlan {
            core,
            desc: *desc,
            row_bytes,
        })
    }

    /// Checks `args` against the descriptor: shapes (`InvalidProblem`),
    /// slice lengths (`BufferTooSmall`), last-axis strides of 1 and
    /// non-overlapping output rows (`InvalidProblem`).
    pub fn can_implement(&self, args: &DequantizeGgmlBlocksArgs<'_>) -> Result<()> {
        let d = &self.desc;
        self.core.check_views(
            &[View::of("input", &args.input, [d.rows, self.row_bytes])],
            &[View::of_mut("output", &args.output, [d.rows, d.n_per_row])],
        )
    }

    plan_info_methods!();

    /// Writes the values. Calls `can_implement` first; on any error nothing
    /// is written.
    pub fn run(
        &self,
        stream: &Stream,
        workspace: Workspace<'_>,
        args: DequantizeGgmlBlocksArgs<'_>,
    ) -> Result<()> {
        self.can_implement(&args)?;
        let (ty, n, rb) = (self.desc.ggml_type, self.desc.n_per_row, self.row_bytes);
        let input = args.input;
        let (bs, ts) = (ty.block_size(), ty.type_size());
        self.core
            .run(stream, &workspace, args.output, 1, |row, _, _, out| {
                let bytes = &input.data[row * input.stride[0]..][..rb];
                for (b, y) in bytes.chunks_exact(ts).zip(out[..n].chunks_exact_mut(bs)) {
                    ggml::dequantize_block(ty, b, y);
                }
            })
    }
}
