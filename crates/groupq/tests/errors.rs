//! Every error path of SPEC §3.1 / §5 for the four per-group plans, and the
//! valid edge cases next to them (strided views, empty problems, workspaces).
//!
//! Each plan is driven through a small [`Harness`] that builds its tensors
//! from one [`ViewSpec`] per tensor (shape, stride and slice length, put
//! together with struct literals so that views the constructors would refuse
//! reach `can_implement` and `run`). The generic checks are written once over
//! `Harness` and instantiated for every type pair by the macros at the end.

use groupq::half::{bf16, f16};
use groupq::*;
use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::panic::{RefUnwindSafe, UnwindSafe};

// ---------------------------------------------------------------------------
// Element helpers
// ---------------------------------------------------------------------------

/// The float element types, with what the tests need to make and compare them.
trait Float: Element {
    fn bits(self) -> u64;
    /// A NaN with a payload: no plan produces it from the test data.
    fn sentinel() -> Self;
}

impl Float for f32 {
    fn bits(self) -> u64 {
        self.to_bits().into()
    }
    fn sentinel() -> Self {
        f32::from_bits(0x7fc0_5a5a)
    }
}

impl Float for f64 {
    fn bits(self) -> u64 {
        self.to_bits()
    }
    fn sentinel() -> Self {
        f64::from_bits(0x7ff8_0000_5a5a_5a5a)
    }
}

impl Float for f16 {
    fn bits(self) -> u64 {
        self.to_bits().into()
    }
    fn sentinel() -> Self {
        f16::from_bits(0x7e5a)
    }
}

impl Float for bf16 {
    fn bits(self) -> u64 {
        self.to_bits().into()
    }
    fn sentinel() -> Self {
        bf16::from_bits(0x7fda)
    }
}

/// The integer code types.
trait Code: IntElement {
    fn from_i32(v: i32) -> Self;
    fn bits(self) -> u64;
    /// A code the forward never writes for the test data (it writes codes
    /// within ±10 of the middle of the range).
    fn sentinel() -> Self;
}

impl Code for i8 {
    fn from_i32(v: i32) -> Self {
        i8::try_from(v).unwrap()
    }
    fn bits(self) -> u64 {
        u64::from(self as u8)
    }
    fn sentinel() -> Self {
        0x5a
    }
}

impl Code for u8 {
    fn from_i32(v: i32) -> Self {
        u8::try_from(v).unwrap()
    }
    fn bits(self) -> u64 {
        u64::from(self)
    }
    fn sentinel() -> Self {
        0xa5
    }
}

const ALL_KINDS: [ElementKind; 7] = [
    ElementKind::F32,
    ElementKind::F64,
    ElementKind::F16,
    ElementKind::Bf16,
    ElementKind::S8,
    ElementKind::U8,
    ElementKind::I32,
];

const ALL_BACKENDS: [BackendKind; 4] = [
    BackendKind::Scalar,
    BackendKind::Avx2,
    BackendKind::Avx512,
    BackendKind::Neon,
];

/// The middle of `Q`'s range: 0 for i8, 128 for u8.
fn mid<Q: IntElement>() -> i32 {
    (Q::MIN + Q::MAX + 1) / 2
}

// Test data by logical (row-major) index: small values, so that every code
// stays well inside the range and no output is NaN. Gaps of strided views
// hold values that would change the result if a plan read them.
fn data<F: Float>(k: usize) -> F {
    F::from_f64(((k % 17) as f64 - 8.0) * 0.25)
}
fn scale<F: Float>(k: usize) -> F {
    F::from_f64(0.25 * (1 + k % 4) as f64)
}
fn grad<F: Float>(k: usize) -> F {
    F::from_f64(((k % 7) as f64 - 3.0) * 0.5)
}
fn zero_point<Q: IntElement>(k: usize) -> i32 {
    mid::<Q>() + (k % 5) as i32 - 2
}
fn code<Q: Code>(k: usize) -> Q {
    Q::from_i32(mid::<Q>() + (k % 16) as i32 - 8)
}
fn data_gap<F: Float>() -> F {
    F::from_f64(30000.0)
}
fn scale_gap<F: Float>() -> F {
    F::from_f64(1.0 / 1024.0)
}
const ZERO_POINT_GAP: i32 = i32::MIN;

// ---------------------------------------------------------------------------
// Views
// ---------------------------------------------------------------------------

/// One tensor of a call: its view and the length of the slice behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ViewSpec {
    shape: [usize; 2],
    stride: [usize; 2],
    len: usize,
}

/// Largest offset plus one (0 for an empty view); `None` on overflow.
fn span(shape: [usize; 2], stride: [usize; 2]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(0);
    }
    let last = (shape[0] - 1)
        .checked_mul(stride[0])?
        .checked_add((shape[1] - 1).checked_mul(stride[1])?)?;
    last.checked_add(1)
}

impl ViewSpec {
    fn dense(shape: [usize; 2]) -> Self {
        Self::strided(shape, shape[1])
    }
    /// Rows `row_stride` elements apart, the slice exactly as long as the view.
    fn strided(shape: [usize; 2], row_stride: usize) -> Self {
        Self::with(shape, [row_stride, 1])
    }
    fn with(shape: [usize; 2], stride: [usize; 2]) -> Self {
        let len = span(shape, stride).expect("test views do not overflow");
        ViewSpec { shape, stride, len }
    }
    fn len(self, len: usize) -> Self {
        ViewSpec { len, ..self }
    }
    fn needed(self) -> usize {
        span(self.shape, self.stride).unwrap()
    }
    /// Slice offsets of the view's elements, in logical order; offsets that
    /// overflow or fall outside the slice are left out.
    ///
    /// Only the first `len + 1` rows and columns are visited, so that views
    /// of absurd shapes over short slices stay cheap.
    fn offsets(self) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        let [rows, cols] = self.shape.map(|n| n.min(self.len + 1));
        for i in 0..rows {
            for j in 0..cols {
                let off = i
                    .checked_mul(self.stride[0])
                    .zip(j.checked_mul(self.stride[1]))
                    .and_then(|(a, b)| a.checked_add(b));
                if let Some(off) = off.filter(|&o| o < self.len) {
                    v.push((i * self.shape[1] + j, off));
                }
            }
        }
        v
    }
}

/// A slice of `v.len` elements: element `k` of the view (row-major) is
/// `value(k)`, everything else is `gap`.
fn fill<T: Copy>(v: ViewSpec, value: impl Fn(usize) -> T, gap: T) -> Vec<T> {
    let mut buf = vec![gap; v.len];
    for (k, off) in v.offsets() {
        buf[off] = value(k);
    }
    buf
}

fn view<T>(data: &[T], v: ViewSpec) -> TensorRef<'_, T, 2> {
    TensorRef {
        data,
        shape: v.shape,
        stride: v.stride,
    }
}

fn view_mut<T>(data: &mut [T], v: ViewSpec) -> TensorMut<'_, T, 2> {
    TensorMut {
        data,
        shape: v.shape,
        stride: v.stride,
    }
}

// ---------------------------------------------------------------------------
// The harness: one implementation per plan
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Dims {
    outer: usize,
    axis: usize,
    group: usize,
}

/// The problem most checks use: 3 rows of 8, groups of 4 (2 groups a row).
const DIMS: Dims = Dims {
    outer: 3,
    axis: 8,
    group: 4,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// `[outer_size, axis_size]`
    Data,
    /// `[outer_size, num_groups]`
    Param,
}

fn shape_of(d: Dims, role: Role) -> [usize; 2] {
    match role {
        Role::Data => [d.outer, d.axis],
        Role::Param => [d.outer, d.axis / d.group],
    }
}

/// What one call did: `can_implement`'s answer, `run`'s answer, and the bits
/// of every element of the written tensor's slice afterwards.
struct Outcome {
    checked: Result<()>,
    ran: Result<()>,
    out: Vec<u64>,
}

trait Harness: Sized {
    const PLAN: &'static str;
    const OP: QuantizeKind;
    /// The tensors of the args struct in order; the last one is written.
    const TENSORS: &'static [(&'static str, Role)];
    fn select(stream: &Stream, d: Dims, pref: PlanPreference) -> Result<Self>;
    fn workspace_size(&self) -> usize;
    fn sku(&self) -> KernelSku;
    fn precision_guarantee(&self) -> PrecisionGuarantee;
    /// Bits of the value the written tensor's slice is filled with first.
    fn sentinel() -> u64;
    /// Builds the tensors from `views` (one per entry of `TENSORS`), calls
    /// `can_implement` and then `run` on them.
    fn exercise(&self, stream: &Stream, ws: Workspace<'_>, views: &[ViewSpec]) -> Outcome;
}

struct Fwd<F: Float, Q: Code>(QuantizePerGroupPlan<F, Q>);

impl<F: Float, Q: Code> Harness for Fwd<F, Q> {
    const PLAN: &'static str = "QuantizePerGroupPlan";
    const OP: QuantizeKind = QuantizeKind::QuantizePerGroup;
    const TENSORS: &'static [(&'static str, Role)] = &[
        ("input", Role::Data),
        ("scale", Role::Param),
        ("zero_point", Role::Param),
        ("output", Role::Data),
    ];
    fn select(stream: &Stream, d: Dims, pref: PlanPreference) -> Result<Self> {
        let desc = QuantizePerGroupDescriptor {
            outer_size: d.outer,
            axis_size: d.axis,
            group_size: d.group,
            q_min: Q::MIN,
            q_max: Q::MAX,
            input_element: F::KIND,
            output_element: Q::KIND,
        };
        QuantizePerGroupPlan::select(stream, &desc, pref).map(Self)
    }
    fn workspace_size(&self) -> usize {
        self.0.workspace_size()
    }
    fn sku(&self) -> KernelSku {
        self.0.sku()
    }
    fn precision_guarantee(&self) -> PrecisionGuarantee {
        self.0.precision_guarantee()
    }
    fn sentinel() -> u64 {
        Q::sentinel().bits()
    }
    fn exercise(&self, stream: &Stream, ws: Workspace<'_>, v: &[ViewSpec]) -> Outcome {
        let input = fill(v[0], data::<F>, data_gap());
        let scale = fill(v[1], scale::<F>, scale_gap());
        let zp = fill(v[2], zero_point::<Q>, ZERO_POINT_GAP);
        let mut out = vec![Q::sentinel(); v[3].len];
        let args = QuantizePerGroupArgs {
            input: view(&input, v[0]),
            scale: view(&scale, v[1]),
            zero_point: view(&zp, v[2]),
            output: view_mut(&mut out, v[3]),
        };
        let checked = self.0.can_implement(&args);
        let ran = self.0.run(stream, ws, args);
        let out = out.iter().map(|x| x.bits()).collect();
        Outcome { checked, ran, out }
    }
}

struct Deq<Q: Code, F: Float>(DequantizePerGroupPlan<Q, F>);

impl<Q: Code, F: Float> Harness for Deq<Q, F> {
    const PLAN: &'static str = "DequantizePerGroupPlan";
    const OP: QuantizeKind = QuantizeKind::DequantizePerGroup;
    const TENSORS: &'static [(&'static str, Role)] = &[
        ("input", Role::Data),
        ("scale", Role::Param),
        ("zero_point", Role::Param),
        ("output", Role::Data),
    ];
    fn select(stream: &Stream, d: Dims, pref: PlanPreference) -> Result<Self> {
        let desc = DequantizePerGroupDescriptor {
            outer_size: d.outer,
            axis_size: d.axis,
            group_size: d.group,
            input_element: Q::KIND,
            output_element: F::KIND,
        };
        DequantizePerGroupPlan::select(stream, &desc, pref).map(Self)
    }
    fn workspace_size(&self) -> usize {
        self.0.workspace_size()
    }
    fn sku(&self) -> KernelSku {
        self.0.sku()
    }
    fn precision_guarantee(&self) -> PrecisionGuarantee {
        self.0.precision_guarantee()
    }
    fn sentinel() -> u64 {
        F::sentinel().bits()
    }
    fn exercise(&self, stream: &Stream, ws: Workspace<'_>, v: &[ViewSpec]) -> Outcome {
        let input = fill(v[0], code::<Q>, Q::from_i32(Q::MAX));
        let scale = fill(v[1], scale::<F>, scale_gap());
        let zp = fill(v[2], zero_point::<Q>, ZERO_POINT_GAP);
        let mut out = vec![F::sentinel(); v[3].len];
        let args = DequantizePerGroupArgs {
            input: view(&input, v[0]),
            scale: view(&scale, v[1]),
            zero_point: view(&zp, v[2]),
            output: view_mut(&mut out, v[3]),
        };
        let checked = self.0.can_implement(&args);
        let ran = self.0.run(stream, ws, args);
        let out = out.iter().map(|x| x.bits()).collect();
        Outcome { checked, ran, out }
    }
}

struct QBwd<F: Float>(QuantizePerGroupBackwardPlan<F>);

impl<F: Float> Harness for QBwd<F> {
    const PLAN: &'static str = "QuantizePerGroupBackwardPlan";
    const OP: QuantizeKind = QuantizeKind::QuantizePerGroupBackward;
    const TENSORS: &'static [(&'static str, Role)] = &[
        ("grad_output", Role::Data),
        ("input", Role::Data),
        ("scale", Role::Param),
        ("zero_point", Role::Param),
        ("grad_input", Role::Data),
    ];
    fn select(stream: &Stream, d: Dims, pref: PlanPreference) -> Result<Self> {
        let desc = QuantizePerGroupBackwardDescriptor {
            outer_size: d.outer,
            axis_size: d.axis,
            group_size: d.group,
            q_min: -4,
            q_max: 4,
            input_element: F::KIND,
            boundary: SteBoundary::Inclusive,
        };
        QuantizePerGroupBackwardPlan::select(stream, &desc, pref).map(Self)
    }
    fn workspace_size(&self) -> usize {
        self.0.workspace_size()
    }
    fn sku(&self) -> KernelSku {
        self.0.sku()
    }
    fn precision_guarantee(&self) -> PrecisionGuarantee {
        self.0.precision_guarantee()
    }
    fn sentinel() -> u64 {
        F::sentinel().bits()
    }
    fn exercise(&self, stream: &Stream, ws: Workspace<'_>, v: &[ViewSpec]) -> Outcome {
        let dy = fill(v[0], grad::<F>, data_gap());
        let input = fill(v[1], data::<F>, data_gap());
        let scale = fill(v[2], scale::<F>, scale_gap());
        let zp = fill(v[3], zero_point::<i8>, ZERO_POINT_GAP);
        let mut out = vec![F::sentinel(); v[4].len];
        let args = QuantizePerGroupBackwardArgs {
            grad_output: view(&dy, v[0]),
            input: view(&input, v[1]),
            scale: view(&scale, v[2]),
            zero_point: view(&zp, v[3]),
            grad_input: view_mut(&mut out, v[4]),
        };
        let checked = self.0.can_implement(&args);
        let ran = self.0.run(stream, ws, args);
        let out = out.iter().map(|x| x.bits()).collect();
        Outcome { checked, ran, out }
    }
}

struct DBwd<Q: Code, F: Float>(DequantizePerGroupBackwardPlan<Q, F>);

impl<Q: Code, F: Float> Harness for DBwd<Q, F> {
    const PLAN: &'static str = "DequantizePerGroupBackwardPlan";
    const OP: QuantizeKind = QuantizeKind::DequantizePerGroupBackward;
    const TENSORS: &'static [(&'static str, Role)] = &[
        ("grad_output", Role::Data),
        ("scale", Role::Param),
        ("grad_input", Role::Data),
    ];
    fn select(stream: &Stream, d: Dims, pref: PlanPreference) -> Result<Self> {
        let desc = DequantizePerGroupBackwardDescriptor {
            outer_size: d.outer,
            axis_size: d.axis,
            group_size: d.group,
        };
        DequantizePerGroupBackwardPlan::select(stream, &desc, pref).map(Self)
    }
    fn workspace_size(&self) -> usize {
        self.0.workspace_size()
    }
    fn sku(&self) -> KernelSku {
        self.0.sku()
    }
    fn precision_guarantee(&self) -> PrecisionGuarantee {
        self.0.precision_guarantee()
    }
    fn sentinel() -> u64 {
        F::sentinel().bits()
    }
    fn exercise(&self, stream: &Stream, ws: Workspace<'_>, v: &[ViewSpec]) -> Outcome {
        let dy = fill(v[0], grad::<F>, data_gap());
        let scale = fill(v[1], scale::<F>, scale_gap());
        let mut out = vec![F::sentinel(); v[2].len];
        let args = DequantizePerGroupBackwardArgs {
            grad_output: view(&dy, v[0]),
            scale: view(&scale, v[1]),
            grad_input: view_mut(&mut out, v[2]),
        };
        let checked = self.0.can_implement(&args);
        let ran = self.0.run(stream, ws, args);
        let out = out.iter().map(|x| x.bits()).collect();
        Outcome { checked, ran, out }
    }
}

// ---------------------------------------------------------------------------
// Generic checks
// ---------------------------------------------------------------------------

fn stream() -> Stream {
    Stream::cpu_with_threads(2).unwrap()
}

fn plan<H: Harness>(d: Dims) -> H {
    H::select(&stream(), d, PlanPreference::default())
        .unwrap_or_else(|e| panic!("{}: select({d:?}) failed: {e}", H::PLAN))
}

fn dense_views<H: Harness>(d: Dims) -> Vec<ViewSpec> {
    H::TENSORS
        .iter()
        .map(|&(_, role)| ViewSpec::dense(shape_of(d, role)))
        .collect()
}

/// `views` with tensor `i` replaced by `v`.
fn replaced(views: &[ViewSpec], i: usize, v: ViewSpec) -> Vec<ViewSpec> {
    let mut views = views.to_vec();
    views[i] = v;
    views
}

fn output_index<H: Harness>() -> usize {
    H::TENSORS.len() - 1
}

/// Asserts that `can_implement` and `run` both fail with the same error and
/// that `run` left every byte of the written slice as it was.
fn expect_failure<H: Harness>(h: &H, views: &[ViewSpec], what: &str) -> Error {
    let o = h.exercise(&stream(), Workspace::None, views);
    let err = match o.checked {
        Err(e) => e,
        Ok(()) => panic!("{}: {what}: can_implement accepted {views:?}", H::PLAN),
    };
    assert_eq!(
        o.ran.as_ref().err().map(|e| format!("{e:?}")),
        Some(format!("{err:?}")),
        "{}: {what}: run must fail as can_implement does",
        H::PLAN
    );
    assert_untouched::<H>(&o.out, what);
    err
}

fn assert_untouched<H: Harness>(out: &[u64], what: &str) {
    if let Some(k) = out.iter().position(|&b| b != H::sentinel()) {
        panic!("{}: {what}: element {k} of the output was written", H::PLAN);
    }
}

/// Runs `views` and asserts success; returns the written slice's bits.
fn expect_success<H: Harness>(
    h: &H,
    s: &Stream,
    ws: Workspace<'_>,
    views: &[ViewSpec],
) -> Vec<u64> {
    let o = h.exercise(s, ws, views);
    if let Err(e) = o.checked {
        panic!("{}: can_implement refused {views:?}: {e}", H::PLAN);
    }
    if let Err(e) = o.ran {
        panic!("{}: run refused {views:?}: {e}", H::PLAN);
    }
    o.out
}

/// The output's elements in logical order, asserting that every one was
/// written and every slice element outside the view was not.
fn written<H: Harness>(out: &[u64], v: ViewSpec) -> Vec<u64> {
    let offsets = v.offsets();
    assert_eq!(offsets.len(), v.shape[0] * v.shape[1]);
    let mut inside = vec![false; out.len()];
    for &(_, off) in &offsets {
        inside[off] = true;
    }
    for (k, (&b, &inside)) in out.iter().zip(&inside).enumerate() {
        if inside {
            assert_ne!(b, H::sentinel(), "{}: element at {k} not written", H::PLAN);
        } else {
            assert_eq!(b, H::sentinel(), "{}: gap element {k} was written", H::PLAN);
        }
    }
    offsets.iter().map(|&(_, off)| out[off]).collect()
}

fn invalid_message(e: Error, what: &str) -> String {
    match e {
        Error::InvalidProblem(msg) => msg,
        other => panic!("{what}: expected InvalidProblem, got {other:?}"),
    }
}

fn unsupported_message(e: Error, what: &str) -> String {
    match e {
        Error::Unsupported(msg) => msg,
        other => panic!("{what}: expected Unsupported, got {other:?}"),
    }
}

fn too_small(e: Error, what: &str) -> (usize, usize) {
    match e {
        Error::BufferTooSmall { needed, got } => {
            let text = e.to_string();
            assert!(
                text.contains(&needed.to_string()) && text.contains(&got.to_string()),
                "{what}: message {text:?} does not give the numbers"
            );
            (needed, got)
        }
        other => panic!("{what}: expected BufferTooSmall, got {other:?}"),
    }
}

fn assert_mentions(msg: &str, parts: &[&str], what: &str) {
    for p in parts {
        assert!(
            msg.contains(p),
            "{what}: message {msg:?} does not mention {p:?}"
        );
    }
}

/// Errors `select` shares between the plans: group size, divisibility, huge
/// problems, backend preferences; and what a selected plan reports.
fn select_common<H: Harness>() {
    let s = stream();
    let pref = PlanPreference::default();

    let h = plan::<H>(DIMS);
    assert_eq!(h.workspace_size(), 0);
    assert_eq!(h.sku().op, H::OP);
    assert_eq!(h.sku().category, OpCategory::Quantization);
    assert_eq!(h.precision_guarantee(), h.sku().precision_guarantee);
    assert!(h.precision_guarantee().deterministic);
    assert!(h.precision_guarantee().bit_stable_on_same_hardware);

    // A caller offering no workspace at all still gets a plan.
    let none = PlanPreference {
        max_workspace_bytes: 0,
        ..Default::default()
    };
    assert_eq!(H::select(&s, DIMS, none).unwrap().workspace_size(), 0);

    for d in [
        Dims { group: 0, ..DIMS },
        Dims {
            outer: 0,
            axis: 0,
            group: 0,
        },
    ] {
        let e = H::select(&s, d, pref)
            .map(drop)
            .expect_err("group_size 0 accepted");
        let msg = invalid_message(e, "group_size 0");
        assert_mentions(&msg, &[H::PLAN, "group_size 0"], "group_size 0");
    }

    for (axis, group) in [(100, 128), (8, 3), (1, 2), (7, 14)] {
        let d = Dims {
            outer: 2,
            axis,
            group,
        };
        let e = H::select(&s, d, pref)
            .map(drop)
            .expect_err("indivisible axis accepted");
        let msg = invalid_message(e, "divisibility");
        let expected = format!("axis_size {axis} is not a multiple of group_size {group}");
        assert_mentions(&msg, &[H::PLAN, &expected], "divisibility");
    }
    // Groups as long as the row, and of a single element, are fine.
    H::select(&s, Dims { group: 8, ..DIMS }, pref).unwrap();
    H::select(&s, Dims { group: 1, ..DIMS }, pref).unwrap();

    // Problems too large for memory: never a panic; a plan that accepts the
    // descriptor must refuse every slice that could exist.
    for d in [
        Dims {
            outer: usize::MAX,
            axis: 2,
            group: 1,
        },
        Dims {
            outer: usize::MAX / 2,
            axis: 4,
            group: 2,
        },
        Dims {
            outer: usize::MAX,
            axis: 1,
            group: 1,
        },
    ] {
        if let Ok(h) = H::select(&s, d, pref) {
            let views: Vec<_> = dense_views::<H>(Dims { outer: 1, ..d })
                .into_iter()
                .map(|mut v| {
                    v.shape[0] = d.outer;
                    v.len(16)
                })
                .collect();
            let o = h.exercise(&s, Workspace::None, &views);
            assert!(o.checked.is_err() && o.ran.is_err(), "{d:?} ran");
            assert_untouched::<H>(&o.out, "huge problem");
        }
    }
}

/// A preferred backend is honoured exactly or refused with `Unsupported`,
/// and every backend this machine has gives the same bits as the scalar one.
fn backends<H: Harness>() {
    let s = stream();
    let views = dense_views::<H>(DIMS);
    let best = plan::<H>(DIMS).sku().backend;
    let reference = {
        let pref = PlanPreference {
            prefer_backend: Some(BackendKind::Scalar),
            ..Default::default()
        };
        let h = H::select(&s, DIMS, pref).expect("the scalar backend always exists");
        assert_eq!(h.sku().backend, BackendKind::Scalar);
        expect_success(&h, &s, Workspace::None, &views)
    };
    let mut available = Vec::new();
    for b in ALL_BACKENDS {
        let pref = PlanPreference {
            prefer_backend: Some(b),
            ..Default::default()
        };
        match H::select(&s, DIMS, pref) {
            Ok(h) => {
                assert_eq!(
                    h.sku().backend,
                    b,
                    "{}: preferred {b} was replaced",
                    H::PLAN
                );
                let out = expect_success(&h, &s, Workspace::None, &views);
                assert_eq!(out, reference, "{}: {b} differs from scalar", H::PLAN);
                available.push(b);
            }
            Err(e) => {
                let msg = unsupported_message(e, "unavailable backend");
                assert_mentions(&msg, &[H::PLAN, "prefer_backend", b.name()], "backend");
            }
        }
    }
    assert!(
        available.contains(&best),
        "the default backend {best} cannot be preferred"
    );
    if cfg!(target_arch = "x86_64") {
        assert!(!available.contains(&BackendKind::Neon));
    } else {
        assert!(!available.contains(&BackendKind::Avx2));
        assert!(!available.contains(&BackendKind::Avx512));
    }
}

/// Shapes, slice lengths, last-axis strides and overlapping output rows.
fn view_checks<H: Harness>() {
    let h = plan::<H>(DIMS);
    let dense = dense_views::<H>(DIMS);
    let s = stream();
    let out_i = output_index::<H>();

    // The baseline works, and writes every output element.
    let out = expect_success(&h, &s, Workspace::None, &dense);
    written::<H>(&out, dense[out_i]);

    for (i, &(name, role)) in H::TENSORS.iter().enumerate() {
        let [rows, cols] = shape_of(DIMS, role);

        // Wrong shapes.
        let wrong = [
            [rows + 1, cols],
            [rows - 1, cols],
            [rows, cols + 1],
            [rows, cols - 1],
            [cols, rows],
            [0, cols],
            [rows, 0],
        ];
        for bad in wrong {
            let what = format!("{name} shape {bad:?}");
            let e = expect_failure(&h, &replaced(&dense, i, ViewSpec::dense(bad)), &what);
            let msg = invalid_message(e, &what);
            assert_mentions(&msg, &[H::PLAN, name, &format!("{bad:?}")], &what);
        }

        // Dense slices one element short, and empty.
        let full = dense[i];
        for got in [full.len - 1, 0] {
            let what = format!("{name} of {got} elements");
            let e = expect_failure(&h, &replaced(&dense, i, full.len(got)), &what);
            assert_eq!(too_small(e, &what), (full.len, got), "{what}");
        }

        // A strided view needs its span (not its element count): a slice
        // as long as the dense tensor is still too short.
        let strided = ViewSpec::strided([rows, cols], cols + 3);
        let needed = (rows - 1) * (cols + 3) + cols;
        assert_eq!(strided.needed(), needed);
        for got in [needed - 1, rows * cols] {
            let what = format!("strided {name} of {got} elements");
            let e = expect_failure(&h, &replaced(&dense, i, strided.len(got)), &what);
            assert_eq!(too_small(e, &what), (needed, got), "{what}");
        }

        // Last-axis strides other than 1, with slices long enough for them.
        for stride in [[2 * cols, 2], [cols, 0], [3 * cols, 3]] {
            let what = format!("{name} stride {stride:?}");
            let v = ViewSpec::with([rows, cols], stride);
            let e = expect_failure(&h, &replaced(&dense, i, v), &what);
            let msg = invalid_message(e, &what);
            assert_mentions(&msg, &[H::PLAN, name, &stride[1].to_string()], &what);
        }

        // A view whose span overflows usize is an error, not a panic.
        let what = format!("{name} with an overflowing span");
        let v = ViewSpec {
            shape: [rows, cols],
            stride: [usize::MAX / 2 + 1, 1],
            len: 64,
        };
        match expect_failure(&h, &replaced(&dense, i, v), &what) {
            Error::InvalidProblem(_) | Error::BufferTooSmall { .. } => {}
            other => panic!("{what}: unexpected {other:?}"),
        }
    }

    // Output rows that overlap: row stride below the row length, or 0.
    let (name, _) = H::TENSORS[out_i];
    for row_stride in [DIMS.axis - 1, 1, 0] {
        let what = format!("{name} row stride {row_stride}");
        let v = ViewSpec::strided([DIMS.outer, DIMS.axis], row_stride);
        let e = expect_failure(&h, &replaced(&dense, out_i, v), &what);
        let msg = invalid_message(e, &what);
        assert_mentions(&msg, &[H::PLAN, name, &row_stride.to_string()], &what);
    }

    // Several faults at once: still an error, still nothing written.
    let mut many = dense.clone();
    many[0] = many[0].len(1);
    many[out_i] = ViewSpec::strided([DIMS.outer, DIMS.axis], 2);
    expect_failure(&h, &many, "several faults");
    let mut many = dense.clone();
    many[1].shape = [9, 9];
    many[out_i] = many[out_i].len(3);
    expect_failure(&h, &many, "several faults");

    // A failed run leaves the plan usable.
    let again = expect_success(&h, &s, Workspace::None, &dense);
    assert_eq!(again, out);
}

/// Strided views with a row stride larger than the row (and longer slices
/// than needed) give the same result as the dense tensors; gaps between the
/// output's rows are never written.
fn strided_views<H: Harness>() {
    let one = Stream::cpu_with_threads(1).unwrap();
    for (d, streams) in [
        (DIMS, vec![one.clone(), stream()]),
        // Large enough to be split over threads.
        (
            Dims {
                outer: 300,
                axis: 256,
                group: 32,
            },
            vec![stream(), Stream::cpu_with_threads(3).unwrap()],
        ),
    ] {
        let h = plan::<H>(d);
        let dense = dense_views::<H>(d);
        let out_i = output_index::<H>();
        let reference = written::<H>(
            &expect_success(&h, &one, Workspace::None, &dense),
            dense[out_i],
        );
        let pad = |v: ViewSpec, extra: usize| ViewSpec::strided(v.shape, v.shape[1] + extra);

        let mut cases: Vec<Vec<ViewSpec>> = vec![dense.iter().map(|&v| pad(v, 5)).collect()];
        if d.outer * d.axis < 100 {
            for i in 0..H::TENSORS.len() {
                cases.push(replaced(&dense, i, pad(dense[i], 3)));
                // A longer slice than the view needs is fine too.
                cases.push(replaced(&dense, i, dense[i].len(dense[i].len + 7)));
            }
            cases.push(
                dense
                    .iter()
                    .map(|&v| pad(v, 1).len(v.len * 2 + 9))
                    .collect(),
            );
        }

        for views in &cases {
            for s in &streams {
                let out = expect_success(&h, s, Workspace::None, views);
                let got = written::<H>(&out, views[out_i]);
                assert!(
                    got == reference,
                    "{}: strided views {views:?} on {s:?} differ from dense",
                    H::PLAN
                );
            }
        }
    }

    // Inputs may repeat rows (row stride 0): only the output must not overlap.
    let h = plan::<H>(DIMS);
    let dense = dense_views::<H>(DIMS);
    for i in 0..output_index::<H>() {
        let v = ViewSpec::strided(dense[i].shape, 0);
        let out = expect_success(&h, &stream(), Workspace::None, &replaced(&dense, i, v));
        written::<H>(&out, dense[output_index::<H>()]);
    }
}

/// Empty problems run and touch nothing; any workspace is accepted.
fn empty_and_workspace<H: Harness>() {
    let s = stream();
    let out_i = output_index::<H>();

    for d in [
        Dims {
            outer: 0,
            axis: 8,
            group: 4,
        },
        Dims {
            outer: 3,
            axis: 0,
            group: 4,
        },
        Dims {
            outer: 0,
            axis: 0,
            group: 1,
        },
        Dims {
            outer: 1000,
            axis: 0,
            group: 128,
        },
    ] {
        let h = plan::<H>(d);
        let dense = dense_views::<H>(d);
        assert!(dense.iter().all(|v| v.len == 0));
        // Empty slices, and slices with elements the run must not touch.
        let o = expect_success(&h, &s, Workspace::None, &dense);
        assert!(o.is_empty());
        let padded: Vec<_> = dense.iter().map(|v| v.len(5)).collect();
        let o = expect_success(&h, &s, Workspace::None, &padded);
        assert_untouched::<H>(&o, "empty problem");
        // Shapes are still checked.
        let mut bad = dense.clone();
        bad[out_i] = ViewSpec::dense([d.outer + 1, d.axis + 1]);
        let e = expect_failure(&h, &bad, "empty problem, wrong output shape");
        invalid_message(e, "empty problem, wrong output shape");
        // So are last-axis strides.
        let mut bad = padded.clone();
        bad[0].stride[1] = 2;
        let e = expect_failure(&h, &bad, "empty problem, last-axis stride 2");
        invalid_message(e, "empty problem, last-axis stride 2");
    }

    let h = plan::<H>(DIMS);
    assert_eq!(h.workspace_size(), 0);
    let dense = dense_views::<H>(DIMS);
    let reference = expect_success(&h, &s, Workspace::None, &dense);
    let mut big = vec![0xabu8; 4096];
    let mut one = [0u8; 1];
    for ws in [
        Workspace::Borrowed(&mut []),
        Workspace::Borrowed(&mut one),
        Workspace::Borrowed(&mut big),
        Workspace::None,
    ] {
        let out = expect_success(&h, &s, ws, &dense);
        assert_eq!(out, reference);
    }
    // A failing run with a workspace still writes nothing.
    let mut ws = vec![0u8; 64];
    let bad = replaced(&dense, 0, dense[0].len(1));
    let o = h.exercise(&s, Workspace::Borrowed(&mut ws), &bad);
    assert!(o.ran.is_err());
    assert_untouched::<H>(&o.out, "failing run with a workspace");
}

// ---------------------------------------------------------------------------
// Plan-specific `select` checks: element kinds and code ranges
// ---------------------------------------------------------------------------

fn forward_desc<F: Float, Q: Code>() -> QuantizePerGroupDescriptor {
    QuantizePerGroupDescriptor {
        outer_size: 3,
        axis_size: 8,
        group_size: 4,
        q_min: Q::MIN,
        q_max: Q::MAX,
        input_element: F::KIND,
        output_element: Q::KIND,
    }
}

fn forward_select<F: Float, Q: Code>() {
    const PLAN: &str = "QuantizePerGroupPlan";
    let s = stream();
    let sel = |d: QuantizePerGroupDescriptor| {
        QuantizePerGroupPlan::<F, Q>::select(&s, &d, PlanPreference::default())
    };
    let good = forward_desc::<F, Q>();
    let p = sel(good).unwrap();
    assert_eq!(p.sku().element, F::KIND);
    assert_eq!(p.sku().aux_element, Some(Q::KIND));
    let math = if F::KIND == ElementKind::F64 {
        MathPrecision::F64
    } else {
        MathPrecision::F32
    };
    assert_eq!(p.precision_guarantee().math_precision, math);

    // Element kinds that differ from the type parameters.
    for k in ALL_KINDS.into_iter().filter(|&k| k != F::KIND) {
        let e = sel(QuantizePerGroupDescriptor {
            input_element: k,
            ..good
        })
        .map(drop)
        .expect_err("wrong input kind accepted");
        let msg = unsupported_message(e, "input_element");
        assert_mentions(&msg, &[PLAN, "input_element", k.name()], "input_element");
    }
    for k in ALL_KINDS.into_iter().filter(|&k| k != Q::KIND) {
        let e = sel(QuantizePerGroupDescriptor {
            output_element: k,
            ..good
        })
        .map(drop)
        .expect_err("wrong output kind accepted");
        let msg = unsupported_message(e, "output_element");
        assert_mentions(&msg, &[PLAN, "output_element", k.name()], "output_element");
    }

    // Code ranges: any non-empty range inside Q's is fine ...
    for (lo, hi) in [
        (Q::MIN, Q::MAX),
        (Q::MIN, Q::MIN),
        (Q::MAX, Q::MAX),
        (0, 15),
    ] {
        let p = sel(QuantizePerGroupDescriptor {
            q_min: lo,
            q_max: hi,
            ..good
        });
        assert!(p.is_ok(), "[{lo}, {hi}] refused: {:?}", p.err());
    }
    // ... an empty one is not ...
    for (lo, hi) in [(5, 4), (Q::MAX, Q::MIN), (1, 0)] {
        let e = sel(QuantizePerGroupDescriptor {
            q_min: lo,
            q_max: hi,
            ..good
        })
        .map(drop)
        .expect_err("q_max < q_min accepted");
        let msg = invalid_message(e, "q_max < q_min");
        let values = [PLAN, "q_min", "q_max", &lo.to_string(), &hi.to_string()];
        assert_mentions(&msg, &values, "q_max < q_min");
    }
    // ... nor one reaching outside Q, at either end.
    for (lo, hi) in [
        (Q::MIN - 1, Q::MAX),
        (Q::MIN, Q::MAX + 1),
        (Q::MIN - 1, Q::MIN),
        (Q::MAX, Q::MAX + 1),
        (i32::MIN, i32::MAX),
        (Q::MIN - 8, Q::MIN - 1),
        (Q::MAX + 1, Q::MAX + 8),
    ] {
        let e = sel(QuantizePerGroupDescriptor {
            q_min: lo,
            q_max: hi,
            ..good
        })
        .map(drop)
        .expect_err("a code range outside the output type accepted");
        let msg = invalid_message(e, "code range");
        let values = [PLAN, &lo.to_string(), &hi.to_string()];
        assert_mentions(&msg, &values, "code range");
    }

    // Extreme values and zero points are not errors: every code is written.
    let extreme = [
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        1e300,
        -1e300,
        0.0,
        1.0,
        -1.0,
    ];
    let x = extreme.map(F::from_f64);
    let sc = [F::from_f64(1e-300), F::from_f64(0.5)];
    for zp in [[i32::MAX, i32::MIN], [i32::MIN, i32::MAX]] {
        let p = sel(QuantizePerGroupDescriptor {
            outer_size: 1,
            ..good
        })
        .unwrap();
        let mut q = [Q::sentinel(); 8];
        let args = QuantizePerGroupArgs {
            input: TensorRef::new(&x, [1, 8]).unwrap(),
            scale: TensorRef::new(&sc, [1, 2]).unwrap(),
            zero_point: TensorRef::new(&zp, [1, 2]).unwrap(),
            output: TensorMut::new(&mut q, [1, 8]).unwrap(),
        };
        p.run(&s, Workspace::None, args).unwrap();
        assert!(q.iter().all(|&c| c != Q::sentinel()), "{q:?}");
    }

    // First failure wins: kinds before everything else ...
    let wrong_in = ALL_KINDS.into_iter().find(|&k| k != F::KIND).unwrap();
    let wrong_out = ALL_KINDS.into_iter().find(|&k| k != Q::KIND).unwrap();
    for bad in [
        QuantizePerGroupDescriptor {
            group_size: 0,
            ..good
        },
        QuantizePerGroupDescriptor {
            axis_size: 100,
            group_size: 128,
            ..good
        },
        QuantizePerGroupDescriptor {
            q_min: 7,
            q_max: -8,
            ..good
        },
        QuantizePerGroupDescriptor {
            q_min: i32::MIN,
            ..good
        },
    ] {
        let e = sel(QuantizePerGroupDescriptor {
            input_element: wrong_in,
            ..bad
        })
        .map(drop)
        .unwrap_err();
        assert_mentions(
            &unsupported_message(e, "order"),
            &["input_element"],
            "order",
        );
        let e = sel(QuantizePerGroupDescriptor {
            output_element: wrong_out,
            ..bad
        })
        .map(drop)
        .unwrap_err();
        assert_mentions(
            &unsupported_message(e, "order"),
            &["output_element"],
            "order",
        );
    }
    // ... then group_size, divisibility, and only then the code range.
    let e = sel(QuantizePerGroupDescriptor {
        group_size: 0,
        q_min: 1,
        q_max: 0,
        ..good
    })
    .map(drop)
    .unwrap_err();
    assert_mentions(&invalid_message(e, "order"), &["group_size 0"], "order");
    let e = sel(QuantizePerGroupDescriptor {
        axis_size: 100,
        group_size: 128,
        q_min: i32::MIN,
        ..good
    })
    .map(drop)
    .unwrap_err();
    let expected = "axis_size 100 is not a multiple of group_size 128";
    assert_mentions(&invalid_message(e, "order"), &[expected], "order");
}

fn dequantize_select<Q: Code, F: Float>() {
    const PLAN: &str = "DequantizePerGroupPlan";
    let s = stream();
    let sel = |d: DequantizePerGroupDescriptor| {
        DequantizePerGroupPlan::<Q, F>::select(&s, &d, PlanPreference::default())
    };
    let good = DequantizePerGroupDescriptor {
        outer_size: 3,
        axis_size: 8,
        group_size: 4,
        input_element: Q::KIND,
        output_element: F::KIND,
    };
    let p = sel(good).unwrap();
    assert_eq!(p.sku().element, F::KIND);
    assert_eq!(p.sku().aux_element, Some(Q::KIND));

    for k in ALL_KINDS.into_iter().filter(|&k| k != Q::KIND) {
        let e = sel(DequantizePerGroupDescriptor {
            input_element: k,
            ..good
        })
        .map(drop)
        .expect_err("wrong input kind accepted");
        let msg = unsupported_message(e, "input_element");
        assert_mentions(&msg, &[PLAN, "input_element", k.name()], "input_element");
    }
    for k in ALL_KINDS.into_iter().filter(|&k| k != F::KIND) {
        let e = sel(DequantizePerGroupDescriptor {
            output_element: k,
            ..good
        })
        .map(drop)
        .expect_err("wrong output kind accepted");
        let msg = unsupported_message(e, "output_element");
        assert_mentions(&msg, &[PLAN, "output_element", k.name()], "output_element");
    }
    // First failure wins: the kind, not the group size.
    for bad in [
        DequantizePerGroupDescriptor {
            group_size: 0,
            ..good
        },
        DequantizePerGroupDescriptor {
            axis_size: 7,
            ..good
        },
    ] {
        let e = sel(DequantizePerGroupDescriptor {
            input_element: F::KIND,
            ..bad
        })
        .map(drop)
        .unwrap_err();
        assert_mentions(
            &unsupported_message(e, "order"),
            &["input_element"],
            "order",
        );
        let e = sel(DequantizePerGroupDescriptor {
            output_element: Q::KIND,
            ..bad
        })
        .map(drop)
        .unwrap_err();
        assert_mentions(
            &unsupported_message(e, "order"),
            &["output_element"],
            "order",
        );
    }
}

fn quantize_backward_select<F: Float>() {
    const PLAN: &str = "QuantizePerGroupBackwardPlan";
    let s = stream();
    let sel = |d: QuantizePerGroupBackwardDescriptor| {
        QuantizePerGroupBackwardPlan::<F>::select(&s, &d, PlanPreference::default())
    };
    let good = QuantizePerGroupBackwardDescriptor {
        outer_size: 3,
        axis_size: 8,
        group_size: 4,
        q_min: -8,
        q_max: 7,
        input_element: F::KIND,
        boundary: SteBoundary::Exclusive,
    };
    let p = sel(good).unwrap();
    assert_eq!(p.sku().element, F::KIND);
    assert_eq!(p.sku().aux_element, None);

    // No integer type: any non-empty i32 range, with either boundary; such
    // plans run on extreme values without panicking and write every element.
    let extreme = [
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        1e300,
        -1e300,
        0.0,
        1.0,
        -1.0,
    ];
    let x = extreme.map(F::from_f64);
    let dy = [F::from_f64(1.0); 8];
    let sc = [F::from_f64(1e-300), F::from_f64(0.5)];
    let zp = [i32::MAX, i32::MIN];
    for (lo, hi) in [
        (i32::MIN, i32::MAX),
        (i32::MIN, i32::MIN),
        (i32::MAX, i32::MAX),
        (-1000, 1000),
        (0, 0),
    ] {
        for boundary in [SteBoundary::Exclusive, SteBoundary::Inclusive] {
            let d = QuantizePerGroupBackwardDescriptor {
                q_min: lo,
                q_max: hi,
                boundary,
                ..good
            };
            let p = sel(QuantizePerGroupBackwardDescriptor { outer_size: 1, ..d })
                .unwrap_or_else(|e| panic!("[{lo}, {hi}] refused: {e}"));
            let mut dx = [F::sentinel(); 8];
            let args = QuantizePerGroupBackwardArgs {
                grad_output: TensorRef::new(&dy, [1, 8]).unwrap(),
                input: TensorRef::new(&x, [1, 8]).unwrap(),
                scale: TensorRef::new(&sc, [1, 2]).unwrap(),
                zero_point: TensorRef::new(&zp, [1, 2]).unwrap(),
                grad_input: TensorMut::new(&mut dx, [1, 8]).unwrap(),
            };
            p.run(&s, Workspace::None, args).unwrap();
            assert!(dx.iter().all(|v| v.bits() != F::sentinel().bits()));
        }
    }
    for (lo, hi) in [(1, 0), (i32::MAX, i32::MIN), (0, -1)] {
        let e = sel(QuantizePerGroupBackwardDescriptor {
            q_min: lo,
            q_max: hi,
            ..good
        })
        .map(drop)
        .expect_err("q_max < q_min accepted");
        let msg = invalid_message(e, "q_max < q_min");
        let values = [PLAN, "q_min", "q_max", &lo.to_string(), &hi.to_string()];
        assert_mentions(&msg, &values, "q_max < q_min");
    }

    for k in ALL_KINDS.into_iter().filter(|&k| k != F::KIND) {
        let e = sel(QuantizePerGroupBackwardDescriptor {
            input_element: k,
            ..good
        })
        .map(drop)
        .expect_err("wrong input kind accepted");
        let msg = unsupported_message(e, "input_element");
        assert_mentions(&msg, &[PLAN, "input_element", k.name()], "input_element");
        // First failure wins.
        for bad in [
            QuantizePerGroupBackwardDescriptor {
                group_size: 0,
                ..good
            },
            QuantizePerGroupBackwardDescriptor {
                q_min: 1,
                q_max: 0,
                ..good
            },
        ] {
            let e = sel(QuantizePerGroupBackwardDescriptor {
                input_element: k,
                ..bad
            })
            .map(drop)
            .unwrap_err();
            assert_mentions(
                &unsupported_message(e, "order"),
                &["input_element"],
                "order",
            );
        }
    }
    let e = sel(QuantizePerGroupBackwardDescriptor {
        group_size: 0,
        q_min: 1,
        q_max: 0,
        ..good
    })
    .map(drop)
    .unwrap_err();
    assert_mentions(&invalid_message(e, "order"), &["group_size 0"], "order");
}

// ---------------------------------------------------------------------------
// Vocabulary: auto traits, descriptors, views, streams
// ---------------------------------------------------------------------------

fn assert_plan_traits<T: Send + Sync + Unpin + UnwindSafe + RefUnwindSafe>() {}
fn assert_plain_data<T: Copy + Clone + Debug + PartialEq + Eq + Hash + Send + Sync>() {}

#[test]
fn plans_are_thread_safe_and_unwind_safe() {
    macro_rules! plans {
        ($($f:ty, $q:ty;)*) => {$(
            assert_plan_traits::<QuantizePerGroupPlan<$f, $q>>();
            assert_plan_traits::<DequantizePerGroupPlan<$q, $f>>();
            assert_plan_traits::<QuantizePerGroupBackwardPlan<$f>>();
            assert_plan_traits::<DequantizePerGroupBackwardPlan<$q, $f>>();
        )*};
    }
    plans! {
        f32, i8; f32, u8; f64, i8; f64, u8; f16, i8; f16, u8; bf16, i8; bf16, u8;
    }
    fn is_error<E: std::error::Error + Send + Sync + 'static>() {}
    is_error::<Error>();
}

#[test]
fn descriptors_are_plain_data() {
    assert_plain_data::<QuantizePerGroupDescriptor>();
    assert_plain_data::<DequantizePerGroupDescriptor>();
    assert_plain_data::<QuantizePerGroupBackwardDescriptor>();
    assert_plain_data::<DequantizePerGroupBackwardDescriptor>();
    assert_plain_data::<PlanPreference>();
    assert_plain_data::<KernelSku>();
    assert_plain_data::<PrecisionGuarantee>();

    // Hash and Eq agree: a descriptor copied into a set is found again.
    let d = forward_desc::<f32, i8>();
    let set: HashSet<_> = [d, d, QuantizePerGroupDescriptor { q_max: 0, ..d }].into();
    assert_eq!(set.len(), 2);
    assert!(set.contains(&d));
    assert!(format!("{d:?}").contains("group_size"));
    // num_groups never divides by zero.
    assert_eq!(d.num_groups(), 2);
    assert_eq!(
        QuantizePerGroupDescriptor { group_size: 0, ..d }.num_groups(),
        0
    );
}

#[test]
fn tensor_constructors_check_lengths() {
    let data = [0.5f32; 12];
    let e = TensorRef::new(&data[..11], [3, 4]).unwrap_err();
    assert_eq!(too_small(e, "TensorRef::new"), (12, 11));
    let e = TensorRef::new(&data[..0], [1, 1]).unwrap_err();
    assert_eq!(too_small(e, "TensorRef::new"), (1, 0));
    let v = TensorRef::new(&data, [2, 4]).unwrap();
    assert_eq!((v.shape, v.stride, v.data.len()), ([2, 4], [4, 1], 12));
    assert!(TensorRef::new(&data[..0], [0, 4]).is_ok());
    assert!(TensorRef::new(&data[..0], [4, 0]).is_ok());

    let e = TensorRef::with_strides(&data[..9], [2, 4], [6, 1]).unwrap_err();
    assert_eq!(too_small(e, "TensorRef::with_strides"), (10, 9));
    let v = TensorRef::with_strides(&data[..10], [2, 4], [6, 1]).unwrap();
    assert_eq!(v.stride, [6, 1]);
    assert!(TensorRef::with_strides(&data, [2, 4], [6, 1]).is_ok());
    assert!(TensorRef::<f32, 2>::new(&[], [usize::MAX, 3]).is_err());
    assert!(TensorRef::<f32, 2>::with_strides(&[], [3, 3], [usize::MAX, 1]).is_err());

    let mut out = [0i8; 12];
    let e = TensorMut::new(&mut out[..11], [3, 4]).unwrap_err();
    assert_eq!(too_small(e, "TensorMut::new"), (12, 11));
    assert!(TensorMut::new(&mut out, [2, 5]).is_ok());
    let e = TensorMut::with_strides(&mut out[..9], [2, 4], [6, 1]).unwrap_err();
    assert_eq!(too_small(e, "TensorMut::with_strides"), (10, 9));
    let v = TensorMut::with_strides(&mut out, [2, 4], [8, 1]).unwrap();
    assert_eq!((v.shape, v.stride, v.data.len()), ([2, 4], [8, 1], 12));
    assert!(TensorMut::<i8, 2>::new(&mut [], [0, 0]).is_ok());
}

#[test]
fn streams_need_a_thread() {
    assert!(Stream::cpu_with_threads(0).is_err());
    assert_eq!(Stream::cpu_with_threads(1).unwrap().threads(), 1);
    assert_eq!(Stream::cpu_with_threads(2).unwrap().threads(), 2);
    assert!(Stream::cpu().threads() >= 1);
    Stream::cpu().synchronize().unwrap();
}

#[test]
fn spec_example_message() {
    // The example sentence of SPEC §2, through the error's Display.
    let desc = QuantizePerGroupDescriptor {
        outer_size: 4,
        axis_size: 100,
        group_size: 128,
        q_min: -8,
        q_max: 7,
        input_element: ElementKind::F32,
        output_element: ElementKind::S8,
    };
    let e =
        QuantizePerGroupPlan::<f32, i8>::select(&Stream::cpu(), &desc, PlanPreference::default())
            .unwrap_err();
    assert!(matches!(e, Error::InvalidProblem(_)));
    let text = e.to_string();
    assert!(text.contains("QuantizePerGroupPlan"), "{text}");
    assert!(
        text.contains("axis_size 100 is not a multiple of group_size 128"),
        "{text}"
    );

    // Explicit i8 and u8 range ends.
    let sel8 = |lo, hi| {
        QuantizePerGroupPlan::<f32, i8>::select(
            &Stream::cpu(),
            &QuantizePerGroupDescriptor {
                axis_size: 128,
                q_min: lo,
                q_max: hi,
                ..desc
            },
            PlanPreference::default(),
        )
        .map(|_| ())
    };
    assert!(sel8(-128, 127).is_ok());
    assert!(matches!(sel8(-129, 127), Err(Error::InvalidProblem(_))));
    assert!(matches!(sel8(-128, 128), Err(Error::InvalidProblem(_))));
    let selu8 = |lo, hi| {
        QuantizePerGroupPlan::<f32, u8>::select(
            &Stream::cpu(),
            &QuantizePerGroupDescriptor {
                axis_size: 128,
                q_min: lo,
                q_max: hi,
                output_element: ElementKind::U8,
                ..desc
            },
            PlanPreference::default(),
        )
        .map(|_| ())
    };
    assert!(selu8(0, 255).is_ok());
    assert!(matches!(selu8(-1, 255), Err(Error::InvalidProblem(_))));
    assert!(matches!(selu8(0, 256), Err(Error::InvalidProblem(_))));
    // The signed int4 range does not fit u8.
    assert!(matches!(selu8(-8, 7), Err(Error::InvalidProblem(_))));
}

// ---------------------------------------------------------------------------
// Instantiation for every type pair
// ---------------------------------------------------------------------------

/// The generic checks for one plan type, as a module of tests.
macro_rules! plan_suite {
    ($m:ident, $h:ty) => {
        mod $m {
            use super::*;
            #[test]
            fn select_errors() {
                select_common::<$h>();
            }
            #[test]
            fn preferred_backends() {
                backends::<$h>();
            }
            #[test]
            fn view_errors() {
                view_checks::<$h>();
            }
            #[test]
            fn strided() {
                strided_views::<$h>();
            }
            #[test]
            fn empty_and_workspaces() {
                empty_and_workspace::<$h>();
            }
        }
    };
}

/// Everything that depends on a (float, integer) pair.
macro_rules! pair_tests {
    ($($m:ident: $f:ty, $q:ty;)*) => {$(
        mod $m {
            use super::*;
            plan_suite!(quantize, Fwd<$f, $q>);
            plan_suite!(dequantize, Deq<$q, $f>);
            plan_suite!(dequantize_backward, DBwd<$q, $f>);
            #[test]
            fn quantize_kinds_and_ranges() {
                forward_select::<$f, $q>();
            }
            #[test]
            fn dequantize_kinds() {
                dequantize_select::<$q, $f>();
            }
        }
    )*};
}

/// Everything that depends on the float type alone.
macro_rules! float_tests {
    ($($m:ident: $f:ty;)*) => {$(
        mod $m {
            use super::*;
            plan_suite!(quantize_backward, QBwd<$f>);
            #[test]
            fn quantize_backward_kinds_and_ranges() {
                quantize_backward_select::<$f>();
            }
        }
    )*};
}

pair_tests! {
    f32_i8: f32, i8;
    f32_u8: f32, u8;
    f64_i8: f64, i8;
    f64_u8: f64, u8;
    f16_i8: f16, i8;
    f16_u8: f16, u8;
    bf16_i8: bf16, i8;
    bf16_u8: bf16, u8;
}

float_tests! {
    f32_only: f32;
    f64_only: f64;
    f16_only: f16;
    bf16_only: bf16;
}
