//! Element types: the float inputs ([`Element`]) and the integer codes
//! ([`IntElement`]) of SPEC §2.

use half::{bf16, f16};
use std::fmt;

/// The data types groupq knows about.
///
/// ```
/// use groupq::ElementKind;
/// assert_eq!(ElementKind::Bf16.size_bytes(), 2);
/// assert!(ElementKind::F16.is_float());
/// assert_eq!(ElementKind::S8.to_string(), "s8");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ElementKind {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary64.
    F64,
    /// IEEE 754 binary16 ([`half::f16`]).
    F16,
    /// bfloat16 ([`half::bf16`]).
    Bf16,
    /// Signed 8-bit integer.
    S8,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 32-bit integer (zero points).
    I32,
    /// Signed 4-bit codes, two per byte ([`S4`]).
    S4,
    /// Unsigned 4-bit codes, two per byte ([`U4`]).
    U4,
}

impl ElementKind {
    /// Size of one storage unit in bytes: one element, or for [`S4`] and
    /// [`U4`] one byte holding two codes.
    pub const fn size_bytes(self) -> usize {
        match self {
            ElementKind::F64 => 8,
            ElementKind::F32 | ElementKind::I32 => 4,
            ElementKind::F16 | ElementKind::Bf16 => 2,
            ElementKind::S8 | ElementKind::U8 | ElementKind::S4 | ElementKind::U4 => 1,
        }
    }

    /// Bits per value (4 for the packed code types).
    pub const fn bits(self) -> usize {
        match self {
            ElementKind::S4 | ElementKind::U4 => 4,
            k => k.size_bytes() * 8,
        }
    }

    /// Whether this is a floating-point kind.
    pub const fn is_float(self) -> bool {
        matches!(
            self,
            ElementKind::F32 | ElementKind::F64 | ElementKind::F16 | ElementKind::Bf16
        )
    }

    /// The lower-case name used in messages and file formats (`"bf16"`, `"s8"`).
    pub const fn name(self) -> &'static str {
        match self {
            ElementKind::F32 => "f32",
            ElementKind::F64 => "f64",
            ElementKind::F16 => "f16",
            ElementKind::Bf16 => "bf16",
            ElementKind::S8 => "s8",
            ElementKind::U8 => "u8",
            ElementKind::I32 => "i32",
            ElementKind::S4 => "s4",
            ElementKind::U4 => "u4",
        }
    }
}

impl fmt::Display for ElementKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

pub(crate) use sealed::MathFloat;

macro_rules! math_float {
    ($t:ty) => {
        impl MathFloat for $t {
            const ZERO: Self = 0.0;
            #[inline(always)]
            fn from_i32(v: i32) -> Self {
                v as $t
            }
            #[inline(always)]
            fn from_i64(v: i64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn round_ties_even(self) -> Self {
                <$t>::round_ties_even(self)
            }
            #[inline(always)]
            fn to_i32_saturating(self) -> i32 {
                // Rust's float → int `as` saturates and maps NaN to 0 (SPEC §3.1).
                self as i32
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}
math_float!(f32);
math_float!(f64);

pub(crate) mod sealed {
    /// The arithmetic type M of SPEC §3: `f64` for `f64` tensors, `f32` for all
    /// the others. Internal: kernels compute in it.
    pub trait MathFloat:
        Copy
        + PartialEq
        + PartialOrd
        + std::ops::Add<Output = Self>
        + std::ops::Mul<Output = Self>
        + std::ops::Div<Output = Self>
        + Send
        + Sync
        + 'static
    {
        const ZERO: Self;
        /// `M(z)`: round-to-nearest-even conversion of an `i32`.
        fn from_i32(v: i32) -> Self;
        /// `M(d)`: round-to-nearest-even conversion of an `i64`.
        fn from_i64(v: i64) -> Self;
        /// Round-to-nearest-even conversion of an `f64` (exact for the
        /// values of `M` the run kernels are given).
        fn from_f64(v: f64) -> Self;
        fn round_ties_even(self) -> Self;
        /// Saturating conversion of an integral value: NaN → 0, out of range → `i32::MIN/MAX`.
        fn to_i32_saturating(self) -> i32;
        fn is_nan(self) -> bool;
    }

    /// Seals [`crate::Element`] and carries the conversions to the math type.
    pub trait FloatSealed: Copy {
        /// The math type M of SPEC §3.
        type Math: MathFloat;
        /// Exact widening conversion into M.
        fn to_math(self) -> Self::Math;
        /// Conversion from M with round-to-nearest-even; every NaN becomes
        /// the type's canonical quiet NaN (positive, payload zero), because
        /// neither IEEE 754 nor the compiler fixes the sign and payload of a
        /// NaN that arithmetic produces.
        fn from_math(m: Self::Math) -> Self;
    }

    /// Seals [`crate::IntElement`].
    pub trait IntSealed: Copy {
        /// `v` is already inside the type's range (one-code types only).
        fn from_i32_in_range(v: i32) -> Self;
        /// Widening conversion (one-code types only).
        fn to_i32(self) -> i32;
        /// Fills `out` with the codes `code(0), code(1), …`, `PACK` per unit.
        fn write_codes(out: &mut [Self], code: impl FnMut(usize) -> i32);
        /// Code `i` of a run of units.
        fn read_code(units: &[Self], i: usize) -> i32;
        /// The storage unit whose byte is `b` (two's complement for `i8`).
        fn from_unit_byte(b: u8) -> Self;
    }
}

mod storage_sealed {
    pub trait Sealed {}
}

/// Every element type's storage as little-endian bytes: the float
/// elements, the code types and `i32` (zero points). Device buffers (feature
/// `wgpu`) hold these; sealed, and a supertrait of [`Element`] and
/// [`IntElement`], so code generic over those can move tensors to a device.
pub trait DeviceElement: storage_sealed::Sealed + Copy + Send + Sync + 'static {
    /// The element's kind.
    const DEVICE_KIND: ElementKind;
    /// Bytes of one storage unit.
    const BYTES: usize;
    /// Writes the element's bytes (`BYTES` of them).
    #[doc(hidden)]
    fn store_le(self, out: &mut [u8]);
    /// Reads an element from its bytes.
    #[doc(hidden)]
    fn load_le(bytes: &[u8]) -> Self;
}

macro_rules! device_element {
    ($t:ty, $kind:expr, $n:expr, |$v:ident| $to:expr, |$b:ident| $from:expr) => {
        impl storage_sealed::Sealed for $t {}
        impl DeviceElement for $t {
            const DEVICE_KIND: ElementKind = $kind;
            const BYTES: usize = $n;
            #[inline]
            fn store_le(self, out: &mut [u8]) {
                let $v = self;
                out.copy_from_slice(&$to);
            }
            #[inline]
            fn load_le(bytes: &[u8]) -> Self {
                let mut $b = [0u8; $n];
                $b.copy_from_slice(bytes);
                $from
            }
        }
    };
}

device_element!(f32, ElementKind::F32, 4, |v| v.to_le_bytes(), |b| {
    f32::from_le_bytes(b)
});
device_element!(f64, ElementKind::F64, 8, |v| v.to_le_bytes(), |b| {
    f64::from_le_bytes(b)
});
device_element!(
    f16,
    ElementKind::F16,
    2,
    |v| v.to_bits().to_le_bytes(),
    |b| f16::from_bits(u16::from_le_bytes(b))
);
device_element!(
    bf16,
    ElementKind::Bf16,
    2,
    |v| v.to_bits().to_le_bytes(),
    |b| bf16::from_bits(u16::from_le_bytes(b))
);
device_element!(i8, ElementKind::S8, 1, |v| v.to_le_bytes(), |b| {
    i8::from_le_bytes(b)
});
device_element!(u8, ElementKind::U8, 1, |v| [v], |b| b[0]);
device_element!(i32, ElementKind::I32, 4, |v| v.to_le_bytes(), |b| {
    i32::from_le_bytes(b)
});
device_element!(S4, ElementKind::S4, 1, |v| [v.0], |b| S4(b[0]));
device_element!(U4, ElementKind::U4, 1, |v| [v.0], |b| U4(b[0]));

/// A floating-point element type: `f32`, `f64`, [`half::f16`], [`half::bf16`].
///
/// Sealed: the set of types is fixed by SPEC §2. Plans are generic over it:
///
/// ```
/// use groupq::{Element, ElementKind};
/// fn kind_of<T: Element>() -> ElementKind { T::KIND }
/// assert_eq!(kind_of::<half::bf16>(), ElementKind::Bf16);
/// ```
pub trait Element:
    sealed::FloatSealed
    + DeviceElement
    + Copy
    + Send
    + Sync
    + fmt::Debug
    + PartialEq
    + PartialOrd
    + Default
    + 'static
{
    /// The kind tag of this type.
    const KIND: ElementKind;

    /// The nearest value of this type (round to nearest even; NaN stays NaN).
    ///
    /// ```
    /// use groupq::Element;
    /// use groupq::half::bf16;
    /// assert_eq!(bf16::from_f64(1.0 + 1.0 / 256.0), bf16::ONE); // a tie, to even
    /// assert_eq!(<f32 as Element>::from_f64(0.1), 0.1f32);
    /// ```
    fn from_f64(v: f64) -> Self;

    /// The exact value as `f64`.
    fn to_f64(self) -> f64;
}

/// An integer code type: `i8` ([`ElementKind::S8`]) or `u8` ([`ElementKind::U8`]).
///
/// ```
/// use groupq::IntElement;
/// assert_eq!((<i8 as IntElement>::MIN, <i8 as IntElement>::MAX), (-128, 127));
/// assert_eq!((<u8 as IntElement>::MIN, <u8 as IntElement>::MAX), (0, 255));
/// ```
pub trait IntElement:
    sealed::IntSealed + DeviceElement + Copy + Send + Sync + fmt::Debug + Eq + Ord + Default + 'static
{
    /// The kind tag of this type.
    const KIND: ElementKind;
    /// Smallest representable code.
    const MIN: i32;
    /// Largest representable code.
    const MAX: i32;
    /// Codes per storage unit: 1, or 2 for [`S4`] and [`U4`]. Tensors of
    /// codes have shape `[outer_size, axis_size / PACK]` in storage units.
    const PACK: usize = 1;
}

impl sealed::FloatSealed for f32 {
    type Math = f32;
    #[inline(always)]
    fn to_math(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_math(m: f32) -> Self {
        if m.is_nan() {
            f32::NAN
        } else {
            m
        }
    }
}
impl Element for f32 {
    const KIND: ElementKind = ElementKind::F32;
    #[inline]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self.into()
    }
}

impl sealed::FloatSealed for f64 {
    type Math = f64;
    #[inline(always)]
    fn to_math(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_math(m: f64) -> Self {
        if m.is_nan() {
            f64::NAN
        } else {
            m
        }
    }
}
impl Element for f64 {
    const KIND: ElementKind = ElementKind::F64;
    #[inline]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
}

/// An f16 as an f32 (exact), inline: what `f16::to_f32` gives (F16C or
/// not), without its call and feature check per value.
#[inline(always)]
pub(crate) fn f16_to_f32(h: f16) -> f32 {
    let h = u32::from(h.to_bits());
    let (sign, exp, man) = ((h & 0x8000) << 16, (h >> 10) & 0x1f, h & 0x3ff);
    match exp {
        // Zero and subnormals: `man · 2^-24`, exact.
        0 => f32::from_bits(sign | (man as f32 * (1.0 / 16_777_216.0)).to_bits()),
        // Infinities; NaN made quiet, its payload kept.
        0x1f if man == 0 => f32::from_bits(sign | 0x7f80_0000),
        0x1f => f32::from_bits(sign | 0x7fc0_0000 | (man << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
    }
}

/// `v` rounded to the nearest f16, ties to even, as an f32: what
/// `f16::from_f32(v).to_f32()` gives, inline (no call per value).
#[inline(always)]
pub(crate) fn round_to_f16(v: f32) -> f32 {
    let a = v.abs();
    if a.is_nan() {
        return f16::from_f32(v).to_f32();
    }
    if a >= 65520.0 {
        // At or past the midpoint of f16::MAX and 2^16: infinite.
        return f32::INFINITY.copysign(v);
    }
    if a < 6.103_515_6e-5 {
        // Below 2^-14 the f16 spacing is 2^-24: `a · 2^24` (exact, below
        // 2^10) rounded to an integer by the 2^23 addition (ties to even).
        let n = (a * 16_777_216.0 + 8_388_608.0) - 8_388_608.0;
        return (n * (1.0 / 16_777_216.0)).copysign(v);
    }
    // Normal: the significand to 10 fraction bits, ties to even (a carry
    // into the exponent is the right result).
    let b = v.to_bits();
    f32::from_bits((b + 0x0fff + ((b >> 13) & 1)) & !0x1fff)
}

/// `v` rounded to the nearest bf16, ties to even, as an f32: what
/// `bf16::from_f32(v).to_f32()` gives, inline.
#[inline(always)]
pub(crate) fn round_to_bf16(v: f32) -> f32 {
    if v.is_nan() {
        return bf16::from_f32(v).to_f32();
    }
    // The top 16 bits, ties to even (a carry into the exponent, up to
    // infinity, is the right result).
    let b = v.to_bits();
    f32::from_bits((b + 0x7fff + ((b >> 16) & 1)) & 0xffff_0000)
}

impl sealed::FloatSealed for f16 {
    type Math = f32;
    #[inline(always)]
    fn to_math(self) -> f32 {
        f16_to_f32(self)
    }
    #[inline(always)]
    fn from_math(m: f32) -> Self {
        if m.is_nan() {
            f16::NAN
        } else {
            f16::from_f32(m)
        }
    }
}
impl Element for f16 {
    const KIND: ElementKind = ElementKind::F16;
    #[inline]
    fn from_f64(v: f64) -> Self {
        f16::from_f64(v)
    }
    #[inline]
    fn to_f64(self) -> f64 {
        f64::from(f16_to_f32(self))
    }
}

impl sealed::FloatSealed for bf16 {
    type Math = f32;
    #[inline(always)]
    fn to_math(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn from_math(m: f32) -> Self {
        if m.is_nan() {
            bf16::NAN
        } else {
            bf16::from_f32(m)
        }
    }
}
impl Element for bf16 {
    const KIND: ElementKind = ElementKind::Bf16;
    #[inline]
    fn from_f64(v: f64) -> Self {
        bf16::from_f64(v)
    }
    #[inline]
    fn to_f64(self) -> f64 {
        // Exact: a bf16 is the high half of an f32.
        f64::from(f32::from_bits(u32::from(self.to_bits()) << 16))
    }
}

macro_rules! int_element {
    ($t:ty, $kind:expr) => {
        impl sealed::IntSealed for $t {
            #[inline(always)]
            fn from_i32_in_range(v: i32) -> Self {
                v as $t
            }
            #[inline(always)]
            fn from_unit_byte(b: u8) -> Self {
                b as $t
            }
            #[inline(always)]
            fn to_i32(self) -> i32 {
                self as i32
            }
            #[inline(always)]
            fn write_codes(out: &mut [Self], mut code: impl FnMut(usize) -> i32) {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = code(i) as $t;
                }
            }
            #[inline(always)]
            fn read_code(units: &[Self], i: usize) -> i32 {
                units[i] as i32
            }
        }
        impl IntElement for $t {
            const KIND: ElementKind = $kind;
            const MIN: i32 = <$t>::MIN as i32;
            const MAX: i32 = <$t>::MAX as i32;
        }
    };
}
int_element!(i8, ElementKind::S8);
int_element!(u8, ElementKind::U8);

/// Two signed 4-bit codes in one byte: code `2i` in the low nibble, `2i + 1`
/// in the high nibble, two's complement (the layout of
/// [`pack::nibbles`](crate::pack::nibbles)).
///
/// ```
/// use groupq::S4;
/// let b = S4::from_codes(-3, 7);
/// assert_eq!(b.0, 0x7d);
/// assert_eq!(b.codes(), (-3, 7));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct S4(pub u8);

/// Two unsigned 4-bit codes in one byte, code `2i` in the low nibble.
///
/// ```
/// use groupq::U4;
/// assert_eq!(U4::from_codes(15, 1).0, 0x1f);
/// assert_eq!(U4(0x1f).codes(), (15, 1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct U4(pub u8);

macro_rules! nibble_element {
    ($t:ident, $kind:expr, $min:expr, $max:expr, $signed:expr) => {
        impl $t {
            /// The byte holding `low` (the even index) and `high`; each
            /// must be inside the type's range.
            pub const fn from_codes(low: i32, high: i32) -> $t {
                $t(((low & 0xf) | ((high & 0xf) << 4)) as u8)
            }
            /// The two codes `(low, high)`.
            pub const fn codes(self) -> (i32, i32) {
                (Self::nibble(self.0 & 0xf), Self::nibble(self.0 >> 4))
            }
            const fn nibble(n: u8) -> i32 {
                let n = n as i32;
                if $signed && n >= 8 {
                    n - 16
                } else {
                    n
                }
            }
        }
        impl sealed::IntSealed for $t {
            fn from_i32_in_range(v: i32) -> Self {
                $t::from_codes(v, 0)
            }
            #[inline(always)]
            fn from_unit_byte(b: u8) -> Self {
                $t(b)
            }
            fn to_i32(self) -> i32 {
                self.codes().0
            }
            #[inline(always)]
            fn write_codes(out: &mut [Self], mut code: impl FnMut(usize) -> i32) {
                for (i, o) in out.iter_mut().enumerate() {
                    let low = code(2 * i);
                    *o = $t::from_codes(low, code(2 * i + 1));
                }
            }
            #[inline(always)]
            fn read_code(units: &[Self], i: usize) -> i32 {
                let (low, high) = units[i / 2].codes();
                if i % 2 == 0 {
                    low
                } else {
                    high
                }
            }
        }
        impl IntElement for $t {
            const KIND: ElementKind = $kind;
            const MIN: i32 = $min;
            const MAX: i32 = $max;
            const PACK: usize = 2;
        }
    };
}
nibble_element!(S4, ElementKind::S4, -8, 7, true);
nibble_element!(U4, ElementKind::U4, 0, 15, false);

#[cfg(test)]
mod tests {

    /// The inline f16 conversions equal `half`'s bit for bit: every f16,
    /// every midpoint between neighbouring f16 values and its neighbours
    /// (ties and near-ties), and a sweep of all f32 exponents.
    #[test]
    fn inline_f16_conversions_equal_half() {
        use super::{f16_to_f32, round_to_f16};
        let same = |v: f32| {
            let (ours, theirs) = (round_to_f16(v), f16::from_f32(v).to_f32());
            assert_eq!(
                ours.to_bits(),
                theirs.to_bits(),
                "{v:e} ({:#x})",
                v.to_bits()
            );
        };
        for h in 0..=u16::MAX {
            let x = f16::from_bits(h);
            assert_eq!(f16_to_f32(x).to_bits(), x.to_f32().to_bits(), "{h:#x}");
            let v = x.to_f32();
            same(v);
            if h & 0x7fff < 0x7c00 {
                // The midpoint to the next f16 away from zero (exact in f32)
                // and the f32 values beside it.
                let next = f16::from_bits(h + 1).to_f32();
                let mid = (v + next) / 2.0;
                for m in [
                    mid,
                    f32::from_bits(mid.to_bits() - 1),
                    f32::from_bits(mid.to_bits() + 1),
                ] {
                    same(m);
                }
            }
        }
        for b in (0..=u32::MAX).step_by(4093).chain([
            0x7f7f_ffff,
            0x7f7f_8000,
            0xff7f_8000,
            0x3f80_8000,
            0x3f81_8000,
            1,
        ]) {
            let v = f32::from_bits(b);
            let (ours, theirs) = (super::round_to_bf16(v), bf16::from_f32(v).to_f32());
            assert_eq!(ours.to_bits(), theirs.to_bits(), "bf16 {v:e} ({b:#x})");
        }
        let edges = [
            65519.996f32,
            65520.0,
            65535.0,
            65536.0,
            6.103_515_6e-5,
            2.980_232_2e-8,
            5.960_464_5e-8,
            8.940_697e-8,
        ];
        for e in edges {
            for v in [
                e,
                -e,
                f32::from_bits(e.to_bits() - 1),
                f32::from_bits(e.to_bits() + 1),
            ] {
                same(v);
            }
        }
        let mut b = 0u32;
        while let Some(next) = b.checked_add(4093) {
            same(f32::from_bits(b));
            b = next;
        }
    }

    use super::sealed::FloatSealed;
    use super::*;

    #[test]
    fn kinds_and_sizes_agree() {
        assert_eq!(f32::KIND.size_bytes(), std::mem::size_of::<f32>());
        assert_eq!(f64::KIND.size_bytes(), std::mem::size_of::<f64>());
        assert_eq!(f16::KIND.size_bytes(), std::mem::size_of::<f16>());
        assert_eq!(bf16::KIND.size_bytes(), std::mem::size_of::<bf16>());
        assert_eq!(<i8 as IntElement>::KIND.size_bytes(), 1);
        assert!(!ElementKind::I32.is_float());
    }

    #[test]
    fn half_conversions_round_to_nearest_even() {
        // 1 + 2^-11 lies exactly between f16 1.0 and its successor: ties to even (1.0).
        assert_eq!(f16::from_math(1.0 + 2f32.powi(-11)).to_bits(), 0x3c00);
        // 1 + 3·2^-11 lies between 1+2^-10 (odd) and 1+2^-9 (even): rounds up.
        assert_eq!(f16::from_math(1.0 + 3.0 * 2f32.powi(-11)).to_bits(), 0x3c02);
        assert_eq!(bf16::from_math(1.0 + 2f32.powi(-8)).to_bits(), 0x3f80);
        assert_eq!(bf16::from_math(1.0 + 3.0 * 2f32.powi(-8)).to_bits(), 0x3f82);
    }

    #[test]
    fn nan_results_are_canonical() {
        let neg_nan = f32::from_bits(0xffc0_0001);
        assert_eq!(f32::from_math(neg_nan).to_bits(), 0x7fc0_0000);
        assert_eq!(f64::from_math(-f64::NAN).to_bits(), 0x7ff8_0000_0000_0000);
        assert_eq!(f16::from_math(neg_nan).to_bits(), 0x7e00);
        assert_eq!(bf16::from_math(neg_nan).to_bits(), 0x7fc0);
    }

    #[test]
    fn saturating_conversion() {
        assert_eq!(f32::NAN.to_i32_saturating(), 0);
        assert_eq!(f32::INFINITY.to_i32_saturating(), i32::MAX);
        assert_eq!(f64::NEG_INFINITY.to_i32_saturating(), i32::MIN);
        assert_eq!(3e9f64.to_i32_saturating(), i32::MAX);
    }
}
