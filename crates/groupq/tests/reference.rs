//! Property tests: every plan, every dtype pair, thread counts 1–3, against
//! a small reference written here from SPEC §3 alone.
//!
//! The reference shares no code with the kernels. It rounds half to even
//! from `floor`, saturates by comparing against ±2^31, clamps by hand, and
//! narrows f32 to f16/bf16 with its own round-to-nearest-even (checked
//! exhaustively below). Outputs are compared bit for bit; a NaN result must
//! be the canonical positive quiet NaN of its type. The gaps between strided
//! output rows must stay untouched.

use groupq::half::{bf16, f16};
use groupq::*;
use proptest::prelude::*;
use std::fmt::Debug;
use std::ops::{Add, Div, Mul, Sub};

// ---------------------------------------------------------------------------
// Reference arithmetic.

trait RefMath:
    Copy
    + Debug
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
{
    const ZERO: Self;
    const HALF: Self;
    const ONE: Self;
    fn from_i64(v: i64) -> Self;
    fn floor(self) -> Self;
    fn to_f64(self) -> f64;
    fn is_nan(self) -> bool {
        self.to_f64().is_nan()
    }
}

impl RefMath for f32 {
    const ZERO: Self = 0.0;
    const HALF: Self = 0.5;
    const ONE: Self = 1.0;
    fn from_i64(v: i64) -> Self {
        v as f32
    }
    fn floor(self) -> Self {
        f32::floor(self)
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl RefMath for f64 {
    const ZERO: Self = 0.0;
    const HALF: Self = 0.5;
    const ONE: Self = 1.0;
    fn from_i64(v: i64) -> Self {
        v as f64
    }
    fn floor(self) -> Self {
        f64::floor(self)
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// Round half to even, from `floor`.
fn rne<M: RefMath>(t: M) -> M {
    if t.is_nan() || t.to_f64().is_infinite() {
        return t;
    }
    let f = t.floor();
    let d = t - f;
    if d < M::HALF {
        f
    } else if d > M::HALF {
        f + M::ONE
    } else if (f.to_f64() as i64) % 2 == 0 {
        f
    } else {
        f + M::ONE
    }
}

/// NaN → 0; beyond i32 → i32::MIN / i32::MAX.
fn saturate<M: RefMath>(r: M) -> i32 {
    if r.is_nan() {
        return 0;
    }
    let v = r.to_f64();
    if v >= 2147483648.0 {
        i32::MAX
    } else if v < -2147483648.0 {
        i32::MIN
    } else {
        v as i64 as i32
    }
}

/// Non-NaN f32 → a 16-bit float with `man` mantissa bits and exponent
/// `bias`, round to nearest even.
fn narrow(x: f32, man: u32, bias: i32) -> u16 {
    assert!(!x.is_nan());
    let sign = ((x.to_bits() >> 31) as u16) << 15;
    let inf = ((1u16 << (15 - man)) - 1) << man;
    if x.is_infinite() {
        return sign | inf;
    }
    let a = f64::from(x.abs());
    let emin = 1 - bias;
    let e = if a == 0.0 {
        emin
    } else {
        (((a.to_bits() >> 52) as i32) - 1023).max(emin)
    };
    let n = rne(a * 2f64.powi(man as i32 - e)) as u32;
    let bits = (((e + bias - 1) as u32) << man) + n;
    sign | bits.min(u32::from(inf)) as u16
}

// ---------------------------------------------------------------------------
// Element types as the reference sees them.

trait RefElem: Element {
    type M: RefMath;
    fn to_m(self) -> Self::M;
    fn from_m(m: Self::M) -> Self;
    fn bits(self) -> u64;
    fn specials() -> Vec<Self>;
}

impl RefElem for f32 {
    type M = f32;
    fn to_m(self) -> f32 {
        self
    }
    fn from_m(m: f32) -> Self {
        if m.is_nan() {
            f32::from_bits(0x7fc0_0000)
        } else {
            m
        }
    }
    fn bits(self) -> u64 {
        self.to_bits().into()
    }
    fn specials() -> Vec<Self> {
        vec![
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            f32::from_bits(1),
            -f32::from_bits(0x7f_ffff),
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
            16777217.0,
        ]
    }
}

impl RefElem for f64 {
    type M = f64;
    fn to_m(self) -> f64 {
        self
    }
    fn from_m(m: f64) -> Self {
        if m.is_nan() {
            f64::from_bits(0x7ff8_0000_0000_0000)
        } else {
            m
        }
    }
    fn bits(self) -> u64 {
        self.to_bits()
    }
    fn specials() -> Vec<Self> {
        vec![
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            f64::from_bits(1),
            -f64::from_bits(0xf_ffff_ffff_ffff),
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            4503599627370497.5,
        ]
    }
}

impl RefElem for f16 {
    type M = f32;
    fn to_m(self) -> f32 {
        self.to_f32()
    }
    fn from_m(m: f32) -> Self {
        f16::from_bits(if m.is_nan() {
            0x7e00
        } else {
            narrow(m, 10, 15)
        })
    }
    fn bits(self) -> u64 {
        self.to_bits().into()
    }
    fn specials() -> Vec<Self> {
        vec![
            f16::NAN,
            -f16::NAN,
            f16::INFINITY,
            f16::NEG_INFINITY,
            f16::ZERO,
            f16::NEG_ZERO,
            f16::from_bits(1),
            f16::from_bits(0x83ff),
            f16::MIN_POSITIVE,
            f16::MAX,
            f16::MIN,
        ]
    }
}

impl RefElem for bf16 {
    type M = f32;
    fn to_m(self) -> f32 {
        self.to_f32()
    }
    fn from_m(m: f32) -> Self {
        bf16::from_bits(if m.is_nan() {
            0x7fc0
        } else {
            narrow(m, 7, 127)
        })
    }
    fn bits(self) -> u64 {
        self.to_bits().into()
    }
    fn specials() -> Vec<Self> {
        vec![
            bf16::NAN,
            -bf16::NAN,
            bf16::INFINITY,
            bf16::NEG_INFINITY,
            bf16::ZERO,
            bf16::NEG_ZERO,
            bf16::from_bits(1),
            bf16::from_bits(0x807f),
            bf16::MIN_POSITIVE,
            bf16::MAX,
            bf16::MIN,
        ]
    }
}

trait RefInt: IntElement {
    fn from_code(v: i32) -> Self;
    fn code(self) -> i32;
}
impl RefInt for i8 {
    fn from_code(v: i32) -> Self {
        i8::try_from(v).expect("code in range")
    }
    fn code(self) -> i32 {
        self.into()
    }
}
impl RefInt for u8 {
    fn from_code(v: i32) -> Self {
        u8::try_from(v).expect("code in range")
    }
    fn code(self) -> i32 {
        self.into()
    }
}

// The reference formulas of SPEC §3.

fn ref_t<M: RefMath>(x: M, s: M, z: i32) -> M {
    let v = if s != M::ZERO { x / s } else { M::ZERO };
    v + M::from_i64(z.into())
}

fn ref_quantize<M: RefMath>(x: M, s: M, z: i32, q_min: i32, q_max: i32) -> i32 {
    let r = saturate(rne(ref_t(x, s, z)));
    if r < q_min {
        q_min
    } else if r > q_max {
        q_max
    } else {
        r
    }
}

fn ref_dequantize<M: RefMath>(q: i32, z: i32, s: M) -> M {
    M::from_i64(i64::from(q) - i64::from(z)) * s
}

fn ref_ste<M: RefMath>(dy: M, x: M, s: M, z: i32, q_min: i32, q_max: i32, b: SteBoundary) -> M {
    let t = ref_t(x, s, z);
    let r = saturate(rne(t));
    let inside = !t.is_nan()
        && match b {
            SteBoundary::Exclusive => q_min < r && r < q_max,
            SteBoundary::Inclusive => q_min <= r && r <= q_max,
        };
    if inside && s != M::ZERO {
        dy / s
    } else {
        M::ZERO
    }
}

// ---------------------------------------------------------------------------
// Test data.

/// splitmix64: a tiny deterministic generator driven by a proptest seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

/// A row-major matrix with a row stride of `cols + pad`.
struct Mat<T> {
    data: Vec<T>,
    rows: usize,
    cols: usize,
    stride: usize,
}

impl<T: Copy> Mat<T> {
    fn new(rows: usize, cols: usize, pad: usize, fill: T) -> Self {
        let stride = cols + pad;
        let len = if rows == 0 {
            0
        } else {
            (rows - 1) * stride + cols
        };
        Mat {
            data: vec![fill; len],
            rows,
            cols,
            stride,
        }
    }
    fn at(&self, i: usize, j: usize) -> T {
        self.data[i * self.stride + j]
    }
    fn set(&mut self, i: usize, j: usize, v: T) {
        self.data[i * self.stride + j] = v;
    }
    fn view(&self) -> TensorRef<'_, T, 2> {
        TensorRef::with_strides(&self.data, [self.rows, self.cols], [self.stride, 1]).unwrap()
    }
    fn view_mut(&mut self) -> TensorMut<'_, T, 2> {
        let shape = [self.rows, self.cols];
        TensorMut::with_strides(&mut self.data, shape, [self.stride, 1]).unwrap()
    }
}

#[derive(Debug, Clone, Copy)]
struct Case {
    outer: usize,
    num_groups: usize,
    group_size: usize,
    pad: usize,
    seed: u64,
}

impl Case {
    fn axis(&self) -> usize {
        self.num_groups * self.group_size
    }
}

/// `[q_min, q_max]` inside `Q`'s range: full, int4-like, a single code, random.
fn code_range<Q: IntElement>(rng: &mut Rng) -> (i32, i32) {
    match rng.below(4) {
        0 => (Q::MIN, Q::MAX),
        1 if Q::MIN < 0 => (-8, 7),
        1 => (0, 15),
        2 => {
            let v = rng.range(Q::MIN.into(), Q::MAX.into()) as i32;
            (v, v)
        }
        _ => {
            let a = rng.range(Q::MIN.into(), Q::MAX.into()) as i32;
            let b = rng.range(Q::MIN.into(), Q::MAX.into()) as i32;
            (a.min(b), a.max(b))
        }
    }
}

/// Zero points: mostly near the code range, sometimes extreme.
fn zero_point(rng: &mut Rng, q_min: i32, q_max: i32) -> i32 {
    match rng.below(8) {
        0 => rng.pick(&[i32::MIN, i32::MAX, (1 << 24) + 1, -(1 << 24) - 3, 0]),
        1 => rng.next() as i32,
        _ => rng.range(i64::from(q_min) - 3, i64::from(q_max) + 3) as i32,
    }
}

/// A group's scale: powers of two (so that ties are exact), random,
/// negative, zero, ±0, NaN, infinite, subnormal, huge.
fn scale<T: RefElem>(rng: &mut Rng) -> T {
    match rng.below(10) {
        0..=3 => T::from_f64(2f64.powi(rng.range(-6, 4) as i32) * rng.pick(&[1.0, -1.0])),
        4..=6 => T::from_f64((rng.unit() * 4.0 + 1e-3) * rng.pick(&[1.0, 1.0, -1.0])),
        _ => rng.pick(&T::specials()),
    }
}

/// An element of a group with scale `s` and zero point `z`: typical values,
/// exact ties `(k + 0.5)·s`, specials, huge and tiny values, and values
/// whose `x / s` cancels the zero point (where a zero point beyond 2^24 must
/// be rounded to M before it is added, as SPEC's `M(z)`).
fn value<T: RefElem>(rng: &mut Rng, s: T, z: i32) -> T {
    let s = s.to_m().to_f64();
    let s = if s.is_finite() && s != 0.0 { s } else { 1.0 };
    match rng.below(11) {
        10 => T::from_f64((rng.range(-20, 20) as f64 - f64::from(z)) * s),
        0..=3 => T::from_f64((rng.unit() - 0.5) * 300.0 * s),
        4..=5 => T::from_f64((rng.range(-150, 150) as f64 + 0.5) * s),
        6 => T::from_f64(rng.range(-150, 150) as f64 * s),
        7 => rng.pick(&T::specials()),
        8 => T::from_f64((rng.unit() - 0.5) * 1e-6 * s),
        _ => T::from_f64((rng.unit() - 0.5) * 1e30),
    }
}

/// Scales and zero points for every group, then values for each element.
fn params<T: RefElem>(c: &Case, rng: &mut Rng, q_min: i32, q_max: i32) -> (Mat<T>, Mat<i32>) {
    let mut s = Mat::new(c.outer, c.num_groups, c.pad, T::from_f64(0.0));
    let mut z = Mat::new(c.outer, c.num_groups, c.pad, 0);
    for i in 0..c.outer {
        for g in 0..c.num_groups {
            s.set(i, g, scale::<T>(rng));
            z.set(i, g, zero_point(rng, q_min, q_max));
        }
    }
    (s, z)
}

fn values<T: RefElem>(c: &Case, rng: &mut Rng, s: &Mat<T>, z: Option<&Mat<i32>>) -> Mat<T> {
    let mut x = Mat::new(c.outer, c.axis(), c.pad * 2, T::from_f64(0.0));
    for i in 0..c.outer {
        for j in 0..c.axis() {
            let g = j / c.group_size;
            x.set(i, j, value(rng, s.at(i, g), z.map_or(0, |z| z.at(i, g))));
        }
    }
    x
}

fn streams() -> Vec<Stream> {
    (1..=3)
        .map(|n| Stream::cpu_with_threads(n).unwrap())
        .collect()
}

/// The backend a plan runs on.
trait Backend {
    fn backend(&self) -> BackendKind;
}
impl<T: Element, Q: IntElement> Backend for QuantizePerGroupPlan<T, Q> {
    fn backend(&self) -> BackendKind {
        self.sku().backend
    }
}
impl<Q: IntElement, T: Element> Backend for DequantizePerGroupPlan<Q, T> {
    fn backend(&self) -> BackendKind {
        self.sku().backend
    }
}
impl<T: Element> Backend for QuantizePerGroupBackwardPlan<T> {
    fn backend(&self) -> BackendKind {
        self.sku().backend
    }
}
impl<Q: IntElement, T: Element> Backend for DequantizePerGroupBackwardPlan<Q, T> {
    fn backend(&self) -> BackendKind {
        self.sku().backend
    }
}

/// Every backend groupq has. Those this CPU (or op and type) lacks are
/// skipped with a note on stderr, once each; `detected_backends_are_used`
/// checks that a backend the CPU has is never skipped.
const BACKENDS: [BackendKind; 5] = [
    BackendKind::Scalar,
    BackendKind::Sse41,
    BackendKind::Avx2,
    BackendKind::Avx512,
    BackendKind::Neon,
];

fn note_skip(what: &str, e: &Error) {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let key = format!("{what}: {e}");
    let mut seen = SEEN.lock().unwrap();
    if seen.get_or_insert_with(HashSet::new).insert(key.clone()) {
        eprintln!("skipped (not tested on this machine): {key}");
    }
}

/// For every backend and every stream, runs `run` on a fresh strided output
/// and compares each element (and the untouched gaps) with `expect`.
#[allow(clippy::too_many_arguments)]
fn check_output<P: Backend, T: Copy, E: Fn(usize, usize) -> T>(
    what: &str,
    c: &Case,
    fill: T,
    bits: impl Fn(T) -> u64,
    expect: E,
    select: impl Fn(PlanPreference) -> Result<P>,
    run: impl Fn(&P, &Stream, TensorMut<'_, T, 2>),
) {
    for backend in BACKENDS {
        let pref = PlanPreference {
            prefer_backend: Some(backend),
            ..Default::default()
        };
        let plan = match select(pref) {
            Ok(plan) => plan,
            Err(e @ Error::Unsupported(_)) => {
                note_skip(what, &e);
                continue;
            }
            Err(e) => panic!("{what}: select failed: {e}"),
        };
        assert_eq!(
            plan.backend(),
            backend,
            "{what}: preferred backend not honoured"
        );
        for stream in streams() {
            let mut out = Mat::new(c.outer, c.axis(), c.pad, fill);
            run(&plan, &stream, out.view_mut());
            for (k, &v) in out.data.iter().enumerate() {
                let (i, j) = (k / out.stride, k % out.stride);
                let want = if j < c.axis() { expect(i, j) } else { fill };
                assert_eq!(
                    bits(v),
                    bits(want),
                    "{what}: element ({i}, {j}) on {backend} with {} threads, case {c:?}",
                    stream.threads()
                );
            }
        }
    }
}

fn check_quantize<T: RefElem, Q: RefInt>(c: &Case) {
    let mut rng = Rng(c.seed);
    let (q_min, q_max) = code_range::<Q>(&mut rng);
    let (s, z) = params::<T>(c, &mut rng, q_min, q_max);
    let x = values::<T>(c, &mut rng, &s, Some(&z));
    let desc = QuantizePerGroupDescriptor {
        outer_size: c.outer,
        axis_size: c.axis(),
        group_size: c.group_size,
        q_min,
        q_max,
        input_element: T::KIND,
        output_element: Q::KIND,
    };
    let select = |pref| QuantizePerGroupPlan::<T, Q>::select(&Stream::cpu(), &desc, pref);
    let g = c.group_size;
    let what = format!("quantize {:?} -> {:?}", T::KIND, Q::KIND);
    let fill = Q::from_code(Q::MAX);
    let expect = |i: usize, j: usize| {
        let (sv, zv) = (s.at(i, j / g).to_m(), z.at(i, j / g));
        Q::from_code(ref_quantize(x.at(i, j).to_m(), sv, zv, q_min, q_max))
    };
    check_output(
        &what,
        c,
        fill,
        |v| v.code() as u64,
        expect,
        select,
        |plan, st, out| {
            let args = QuantizePerGroupArgs {
                input: x.view(),
                scale: s.view(),
                zero_point: z.view(),
                output: out,
            };
            plan.run(st, Workspace::None, args).unwrap();
        },
    );
}

fn check_dequantize<Q: RefInt, T: RefElem>(c: &Case) {
    let mut rng = Rng(c.seed ^ 1);
    let (s, z) = params::<T>(c, &mut rng, Q::MIN, Q::MAX);
    let mut q = Mat::new(c.outer, c.axis(), c.pad, Q::from_code(Q::MIN));
    for i in 0..c.outer {
        for j in 0..c.axis() {
            q.set(
                i,
                j,
                Q::from_code(rng.range(Q::MIN.into(), Q::MAX.into()) as i32),
            );
        }
    }
    let desc = DequantizePerGroupDescriptor {
        outer_size: c.outer,
        axis_size: c.axis(),
        group_size: c.group_size,
        input_element: Q::KIND,
        output_element: T::KIND,
    };
    let select = |pref| DequantizePerGroupPlan::<Q, T>::select(&Stream::cpu(), &desc, pref);
    let g = c.group_size;
    let what = format!("dequantize {:?} -> {:?}", Q::KIND, T::KIND);
    let expect = |i: usize, j: usize| {
        let sv = s.at(i, j / g).to_m();
        T::from_m(ref_dequantize(q.at(i, j).code(), z.at(i, j / g), sv))
    };
    check_output(
        &what,
        c,
        T::from_f64(-7.0),
        T::bits,
        expect,
        select,
        |plan, st, out| {
            let args = DequantizePerGroupArgs {
                input: q.view(),
                scale: s.view(),
                zero_point: z.view(),
                output: out,
            };
            plan.run(st, Workspace::None, args).unwrap();
        },
    );
}

fn check_quantize_backward<T: RefElem>(c: &Case) {
    let mut rng = Rng(c.seed ^ 2);
    let (q_min, q_max) = match rng.below(3) {
        0 => code_range::<i8>(&mut rng),
        1 => code_range::<u8>(&mut rng),
        _ => {
            let a = rng.next() as i32;
            let b = rng.next() as i32;
            (a.min(b), a.max(b))
        }
    };
    let (s, z) = params::<T>(c, &mut rng, q_min, q_max);
    let x = values::<T>(c, &mut rng, &s, Some(&z));
    let dy = values::<T>(c, &mut rng, &s, None);
    for boundary in [SteBoundary::Exclusive, SteBoundary::Inclusive] {
        let desc = QuantizePerGroupBackwardDescriptor {
            outer_size: c.outer,
            axis_size: c.axis(),
            group_size: c.group_size,
            q_min,
            q_max,
            input_element: T::KIND,
            boundary,
        };
        let select = |pref| QuantizePerGroupBackwardPlan::<T>::select(&Stream::cpu(), &desc, pref);
        let g = c.group_size;
        let what = format!("quantize backward {:?} {boundary:?}", T::KIND);
        let expect = |i: usize, j: usize| {
            let (sv, zv) = (s.at(i, j / g).to_m(), z.at(i, j / g));
            let (d, xv) = (dy.at(i, j).to_m(), x.at(i, j).to_m());
            T::from_m(ref_ste(d, xv, sv, zv, q_min, q_max, boundary))
        };
        check_output(
            &what,
            c,
            T::from_f64(-7.0),
            T::bits,
            expect,
            select,
            |plan, st, out| {
                let args = QuantizePerGroupBackwardArgs {
                    grad_output: dy.view(),
                    input: x.view(),
                    scale: s.view(),
                    zero_point: z.view(),
                    grad_input: out,
                };
                plan.run(st, Workspace::None, args).unwrap();
            },
        );
    }
}

fn check_dequantize_backward<Q: RefInt, T: RefElem>(c: &Case) {
    let mut rng = Rng(c.seed ^ 3);
    let (s, _) = params::<T>(c, &mut rng, 0, 0);
    let dy = values::<T>(c, &mut rng, &s, None);
    let desc = DequantizePerGroupBackwardDescriptor {
        outer_size: c.outer,
        axis_size: c.axis(),
        group_size: c.group_size,
    };
    let select = |pref| DequantizePerGroupBackwardPlan::<Q, T>::select(&Stream::cpu(), &desc, pref);
    let g = c.group_size;
    let what = format!("dequantize backward {:?} {:?}", Q::KIND, T::KIND);
    let expect = |i: usize, j: usize| T::from_m(dy.at(i, j).to_m() * s.at(i, j / g).to_m());
    check_output(
        &what,
        c,
        T::from_f64(-7.0),
        T::bits,
        expect,
        select,
        |plan, st, out| {
            let args = DequantizePerGroupBackwardArgs {
                grad_output: dy.view(),
                scale: s.view(),
                grad_input: out,
            };
            plan.run(st, Workspace::None, args).unwrap();
        },
    );
}

fn check_float<T: RefElem>(c: &Case) {
    check_quantize::<T, i8>(c);
    check_quantize::<T, u8>(c);
    check_dequantize::<i8, T>(c);
    check_dequantize::<u8, T>(c);
    check_quantize_backward::<T>(c);
    check_dequantize_backward::<i8, T>(c);
    check_dequantize_backward::<u8, T>(c);
}

fn check_all(c: &Case) {
    check_float::<f32>(c);
    check_float::<f64>(c);
    check_float::<f16>(c);
    check_float::<bf16>(c);
}

/// The SPEC's sizes, vector widths and their neighbours (tails), and a range.
fn group_sizes() -> impl Strategy<Value = usize> {
    prop_oneof![
        prop::sample::select(vec![1usize, 3, 7, 8, 16, 17, 32, 33, 64, 128]),
        1usize..=40,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    /// Small shapes: odd axis lengths, group sizes 1, 3, 7, 32, 128, strided rows.
    #[test]
    fn small_problems_match_the_reference(
        outer in 0usize..6,
        num_groups in 0usize..6,
        group_size in group_sizes(),
        pad in 0usize..3,
        seed in any::<u64>(),
    ) {
        check_all(&Case { outer, num_groups, group_size, pad, seed });
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    /// Problems large enough to be split over the pool (≥ 2^16 elements).
    #[test]
    fn large_problems_match_the_reference_at_every_thread_count(
        outer in 1usize..300,
        group_size in prop::sample::select(vec![1usize, 3, 7, 16, 32, 33, 128]),
        pad in 0usize..2,
        seed in any::<u64>(),
    ) {
        let num_groups = (70_000 / (outer * group_size)).max(1) + 1;
        check_all(&Case { outer, num_groups, group_size, pad, seed });
    }
}

/// The reference narrowing agrees with exact decoding on every 16-bit
/// pattern, and rounds every midpoint between neighbours to the even one.
#[test]
fn reference_narrowing_is_round_to_nearest_even() {
    for bits in 0..=u16::MAX {
        for (man, bias, wide) in [
            (10, 15, f16::from_bits(bits).to_f32()),
            (7, 127, bf16::from_bits(bits).to_f32()),
        ] {
            if wide.is_nan() {
                continue;
            }
            assert_eq!(narrow(wide, man, bias), bits, "round trip of {bits:#06x}");
            let next_bits = bits.wrapping_add(1);
            let next = if man == 10 {
                f16::from_bits(next_bits).to_f32()
            } else {
                bf16::from_bits(next_bits).to_f32()
            };
            if !next.is_finite() || !wide.is_finite() || (bits & 0x7fff) == 0x7fff {
                continue;
            }
            // The midpoint is exact in f32 (at most 12 significant bits).
            let mid = (f64::from(wide) + f64::from(next)) / 2.0;
            let mid = mid as f32;
            if f64::from(mid) != (f64::from(wide) + f64::from(next)) / 2.0 {
                continue;
            }
            let even = if bits & 1 == 0 { bits } else { next_bits };
            assert_eq!(narrow(mid, man, bias), even, "midpoint above {bits:#06x}");
        }
    }
}

/// Hand-checked values of the reference itself.
#[test]
fn reference_rounding_and_saturation() {
    assert_eq!(rne(2.5f32), 2.0);
    assert_eq!(rne(-2.5f64), -2.0);
    assert_eq!(rne(3.5f32), 4.0);
    assert_eq!(rne(-0.4f32), 0.0);
    assert_eq!(saturate(f32::INFINITY), i32::MAX);
    assert_eq!(saturate(-3e9f64), i32::MIN);
    assert_eq!(saturate(2147483520.0f32), 2147483520);
    assert_eq!(ref_quantize(f32::NAN, 1.0, 5, -8, 7), 0);
    assert_eq!(ref_quantize(1.0f32, 0.0, 5, -8, 7), 5);
}

/// A backend that std's feature detection reports must be selectable (and
/// so tested above), never skipped.
#[test]
fn detected_backends_are_used() {
    let mut expected = vec![BackendKind::Scalar];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.1") {
            expected.push(BackendKind::Sse41);
        }
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            expected.push(BackendKind::Avx2);
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            expected.push(BackendKind::Avx512);
        }
    }
    let desc = QuantizePerGroupDescriptor {
        outer_size: 1,
        axis_size: 32,
        group_size: 32,
        q_min: -8,
        q_max: 7,
        input_element: ElementKind::F32,
        output_element: ElementKind::S8,
    };
    for backend in expected.iter().copied() {
        let pref = PlanPreference {
            prefer_backend: Some(backend),
            ..Default::default()
        };
        let plan = QuantizePerGroupPlan::<f32, i8>::select(&Stream::cpu(), &desc, pref)
            .unwrap_or_else(|e| panic!("{backend} is detected but not selectable: {e}"));
        assert_eq!(plan.sku().backend, backend);
    }
    let best =
        QuantizePerGroupPlan::<f32, i8>::select(&Stream::cpu(), &desc, Default::default()).unwrap();
    assert_eq!(
        best.sku().backend,
        *expected.last().unwrap(),
        "the default is the widest backend"
    );
    eprintln!("backends tested on this machine: {expected:?}");
}
