//! The error type shared by every plan (SPEC §2, §5).

/// Everything that can go wrong when selecting or running a plan.
///
/// Every invalid descriptor or view is reported as one of these before any
/// byte of output is written; values such as NaN, infinities or zero scales
/// are never errors (SPEC §5). The `String` payloads are complete sentences
/// that name the plan, the field and the offending values, for example
/// `"QuantizePerGroupPlan: axis_size 100 is not a multiple of group_size 128"`.
///
/// ```
/// use groupq::{ElementKind, Error, PlanPreference, QuantizePerGroupDescriptor,
///              QuantizePerGroupPlan, Stream};
///
/// let desc = QuantizePerGroupDescriptor {
///     outer_size: 4, axis_size: 100, group_size: 128, q_min: -8, q_max: 7,
///     input_element: ElementKind::F32, output_element: ElementKind::S8,
/// };
/// let err = QuantizePerGroupPlan::<f32, i8>::select(&Stream::cpu(), &desc, PlanPreference::default())
///     .unwrap_err();
/// assert!(matches!(err, Error::InvalidProblem(_)));
/// assert!(err.to_string().contains("axis_size 100 is not a multiple of group_size 128"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is well formed but this plan, type pair or machine cannot
    /// serve it (element kinds that differ from the type parameters, a
    /// preferred backend this CPU or op lacks).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The descriptor or a tensor view is inconsistent (group size, shapes,
    /// strides, integer range).
    #[error("invalid problem: {0}")]
    InvalidProblem(String),
    /// A tensor's `data` slice is shorter than its view requires.
    #[error("buffer too small: the view needs {needed} elements, the slice has {got}")]
    BufferTooSmall {
        /// Elements the view needs (its largest offset plus one).
        needed: usize,
        /// Elements the slice holds.
        got: usize,
    },
    /// An operand is not aligned as a backend requires (never raised by the
    /// CPU backends, which accept any alignment).
    #[error("misaligned operand")]
    MisalignedOperand,
    /// The workspace passed to `run` is smaller than `workspace_size()`.
    #[error("workspace too small: needed {needed} bytes, got {got}")]
    WorkspaceTooSmall {
        /// Bytes the plan needs.
        needed: usize,
        /// Bytes the caller passed.
        got: usize,
    },
    /// The input holds NaN or an infinity where the recipe's
    /// `NonFinitePolicy::Error` forbids it: the first such group, in
    /// row-major order. Nothing was written.
    #[error("non-finite input: row {row}, group {group} holds NaN or an infinity (the recipe's non_finite policy is Error)")]
    NonFiniteInput {
        /// Row of the first offending group.
        row: usize,
        /// Group index within that row.
        group: usize,
    },
    /// The execution backend failed (for CPU streams: the thread pool could
    /// not be built).
    #[error("backend error: {0}")]
    Backend(String),
}

/// `std::result::Result` with groupq's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;
