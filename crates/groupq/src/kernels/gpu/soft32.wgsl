// IEEE binary32 arithmetic on the bits, in integer operations only.
//
// WGSL lets a GPU flush subnormals, contract a multiply and an add into an
// FMA, assume no NaN and divide within 2.5 ulp; integer operations are exact
// everywhere. So every float operation of the per-group plans is done here,
// correctly rounded to nearest-even with subnormals kept, on `u32` bit
// patterns, and gives what the CPU's IEEE operation gives, bit for bit. A
// NaN result is the canonical quiet NaN.

const F32_INF: u32 = 0x7f800000u;
const F32_NAN: u32 = 0x7fc00000u;
const SIGN: u32 = 0x80000000u;

fn f32_is_nan(a: u32) -> bool {
    return (a & 0x7fffffffu) > F32_INF;
}

fn f32_is_zero(a: u32) -> bool {
    return (a & 0x7fffffffu) == 0u;
}

// A finite non-zero magnitude as m * 2^e with m in [2^23, 2^24).
struct Unpacked32 {
    m: u32,
    e: i32,
}

fn f32_unpack(a: u32) -> Unpacked32 {
    let ex = i32((a >> 23u) & 0xffu);
    let fr = a & 0x7fffffu;
    if (ex == 0) {
        let sh = countLeadingZeros(fr) - 8u;
        return Unpacked32(fr << sh, -149 - i32(sh));
    }
    return Unpacked32(fr | 0x800000u, ex - 150);
}

// Rounds (m + d) * 2^e, 0 <= d < 1, to a float with `prec` significand bits,
// least exponent `lsb_min` (of the smallest subnormal) and largest exponent
// `e_max`; `sticky` says d > 0. m != 0. Callers that may set `sticky` give m
// at least two bits below the result's last bit. Returns the magnitude bits
// (to be or'ed with a sign): the exponent field counts from the subnormals,
// and a carry out of the significand moves into it, up to infinity.
fn round_bits(m: u32, e: i32, sticky: bool, prec: i32, lsb_min: i32, e_max: i32) -> u32 {
    let p = 31 - i32(countLeadingZeros(m));
    let big_e = e + p;
    if (big_e > e_max) {
        return u32(2 * e_max + 1) << u32(prec - 1);
    }
    let lsb = max(big_e - (prec - 1), lsb_min);
    let shift = lsb - e;
    var q = 0u;
    if (shift <= 0) {
        q = m << u32(-shift);
    } else if (shift < 32) {
        q = m >> u32(shift);
        let rem = m & ((1u << u32(shift)) - 1u);
        let half = 1u << u32(shift - 1);
        if (rem > half || (rem == half && (sticky || (q & 1u) == 1u))) {
            q = q + 1u;
        }
    } else if (shift == 32) {
        if (m > 0x80000000u || (m == 0x80000000u && sticky)) {
            q = 1u;
        }
    }
    return (u32(lsb - lsb_min) << u32(prec - 1)) + q;
}

fn f32_round(sign: u32, m: u32, e: i32, sticky: bool) -> u32 {
    return sign | round_bits(m, e, sticky, 24, -149, 127);
}

// 32 x 32 -> 64-bit product as (high, low).
fn mul_wide(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let lo = (p00 & 0xffffu) | (mid << 16u);
    let hi = p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, lo);
}

fn f32_div(a: u32, b: u32) -> u32 {
    let sign = (a ^ b) & SIGN;
    let aa = a & 0x7fffffffu;
    let bb = b & 0x7fffffffu;
    if (aa > F32_INF || bb > F32_INF) {
        return F32_NAN;
    }
    if (aa == F32_INF) {
        if (bb == F32_INF) {
            return F32_NAN;
        }
        return sign | F32_INF;
    }
    if (bb == F32_INF) {
        return sign;
    }
    if (bb == 0u) {
        if (aa == 0u) {
            return F32_NAN;
        }
        return sign | F32_INF;
    }
    if (aa == 0u) {
        return sign;
    }
    let ua = f32_unpack(aa);
    let ub = f32_unpack(bb);
    var r = ua.m;
    var e = ua.e - ub.e;
    if (r < ub.m) {
        r = r << 1u;
        e = e - 1;
    }
    // Long division: 26 quotient bits of r / m_b in [1, 2), the rest sticky.
    var q = 0u;
    for (var i = 0u; i < 26u; i = i + 1u) {
        q = q << 1u;
        if (r >= ub.m) {
            r = r - ub.m;
            q = q | 1u;
        }
        r = r << 1u;
    }
    return f32_round(sign, q, e - 25, r != 0u);
}

fn f32_mul(a: u32, b: u32) -> u32 {
    let sign = (a ^ b) & SIGN;
    let aa = a & 0x7fffffffu;
    let bb = b & 0x7fffffffu;
    if (aa > F32_INF || bb > F32_INF) {
        return F32_NAN;
    }
    if (aa == F32_INF || bb == F32_INF) {
        if (aa == 0u || bb == 0u) {
            return F32_NAN;
        }
        return sign | F32_INF;
    }
    if (aa == 0u || bb == 0u) {
        return sign;
    }
    let ua = f32_unpack(aa);
    let ub = f32_unpack(bb);
    let p = mul_wide(ua.m, ub.m);
    // The product has 47 or 48 bits: keep the top 31, the rest sticky.
    let m = (p.x << 15u) | (p.y >> 17u);
    return f32_round(sign, m, ua.e + ub.e + 17, (p.y & 0x1ffffu) != 0u);
}

fn f32_add(a: u32, b: u32) -> u32 {
    let aa = a & 0x7fffffffu;
    let bb = b & 0x7fffffffu;
    if (aa > F32_INF || bb > F32_INF) {
        return F32_NAN;
    }
    if (aa == F32_INF) {
        if (bb == F32_INF && ((a ^ b) & SIGN) != 0u) {
            return F32_NAN;
        }
        return a;
    }
    if (bb == F32_INF) {
        return b;
    }
    if (aa == 0u) {
        if (bb == 0u) {
            return a & b;
        }
        return b;
    }
    if (bb == 0u) {
        return a;
    }
    var x = a;
    var y = b;
    if (bb > aa) {
        x = b;
        y = a;
    }
    let ux = f32_unpack(x & 0x7fffffffu);
    let uy = f32_unpack(y & 0x7fffffffu);
    let d = u32(ux.e - uy.e);
    let mx = ux.m << 6u;
    // The smaller addend aligned, its lost bits jammed into the last bit.
    var my = 1u;
    if (d < 31u) {
        let full = uy.m << 6u;
        my = full >> d;
        if ((my << d) != full) {
            my = my | 1u;
        }
    }
    let sx = x & SIGN;
    if (((x ^ y) & SIGN) == 0u) {
        return f32_round(sx, mx + my, ux.e - 6, false);
    }
    let m = mx - my;
    if (m == 0u) {
        return 0u;
    }
    return f32_round(sx, m, ux.e - 6, false);
}

// The integer sign * mag as f32, rounded to nearest-even (+0 for 0).
fn f32_from_mag(sign: u32, mag: u32) -> u32 {
    if (mag == 0u) {
        return 0u;
    }
    return f32_round(sign, mag, 0, false);
}

fn f32_from_i32(z: i32) -> u32 {
    if (z < 0) {
        return f32_from_mag(SIGN, u32(-(z + 1)) + 1u);
    }
    return f32_from_mag(0u, u32(z));
}

// round_half_to_even(t) as i32: NaN -> 0, beyond i32 saturates.
fn f32_rne_i32(t: u32) -> i32 {
    let a = t & 0x7fffffffu;
    if (a > F32_INF) {
        return 0;
    }
    let neg = (t & SIGN) != 0u;
    let ex = i32(a >> 23u);
    if (ex >= 158) {
        if (neg) {
            return -2147483647 - 1;
        }
        return 2147483647;
    }
    if (ex < 126) {
        return 0;
    }
    let m = (a & 0x7fffffu) | 0x800000u;
    let shift = 150 - ex;
    var q = 0u;
    if (shift <= 0) {
        q = m << u32(-shift);
    } else {
        q = m >> u32(shift);
        let rem = m & ((1u << u32(shift)) - 1u);
        let half = 1u << u32(shift - 1);
        if (rem > half || (rem == half && (q & 1u) == 1u)) {
            q = q + 1u;
        }
    }
    if (neg) {
        return -i32(q);
    }
    return i32(q);
}

// ---- the half-precision storage types ----

fn f16_to_f32(h: u32) -> u32 {
    let sign = (h & 0x8000u) << 16u;
    let ex = (h >> 10u) & 0x1fu;
    let fr = h & 0x3ffu;
    if (ex == 31u) {
        if (fr == 0u) {
            return sign | F32_INF;
        }
        return F32_NAN;
    }
    if (ex == 0u) {
        if (fr == 0u) {
            return sign;
        }
        return f32_round(sign, fr, -24, false);
    }
    return sign | ((ex + 112u) << 23u) | (fr << 13u);
}

// f32 -> f16, nearest-even, subnormals kept; NaN -> 0x7e00.
fn f32_to_f16(f: u32) -> u32 {
    let sign = (f >> 16u) & 0x8000u;
    let a = f & 0x7fffffffu;
    if (a > F32_INF) {
        return 0x7e00u;
    }
    if (a == F32_INF) {
        return sign | 0x7c00u;
    }
    if (a == 0u) {
        return sign;
    }
    let u = f32_unpack(a);
    return sign | round_bits(u.m, u.e, false, 11, -24, 15);
}

fn bf16_to_f32(h: u32) -> u32 {
    if ((h & 0x7fffu) > 0x7f80u) {
        return F32_NAN;
    }
    return h << 16u;
}

// f32 -> bf16, nearest-even; NaN -> 0x7fc0.
fn f32_to_bf16(f: u32) -> u32 {
    if (f32_is_nan(f)) {
        return 0x7fc0u;
    }
    return (f + 0x7fffu + ((f >> 16u) & 1u)) >> 16u;
}

fn f32_canonical(f: u32) -> u32 {
    if (f32_is_nan(f)) {
        return F32_NAN;
    }
    return f;
}

// ---- comparisons and roundings to integral values (the recipe plans) ----

// IEEE a < b (false with a NaN; -0 == +0).
fn f32_lt(a: u32, b: u32) -> bool {
    if (f32_is_nan(a) || f32_is_nan(b) || ((a | b) & 0x7fffffffu) == 0u) {
        return false;
    }
    let sa = (a & SIGN) != 0u;
    let sb = (b & SIGN) != 0u;
    if (sa != sb) {
        return sa;
    }
    if (sa) {
        return a > b;
    }
    return a < b;
}

// Rust's min/max: a NaN operand gives the other one, and of two equal
// values (+0 and -0) the first.
fn f32_min(a: u32, b: u32) -> u32 {
    if (f32_is_nan(a) || f32_lt(b, a)) {
        return b;
    }
    return a;
}

fn f32_max(a: u32, b: u32) -> u32 {
    if (f32_is_nan(a) || f32_lt(a, b)) {
        return b;
    }
    return a;
}

// t rounded to an integral value: mode 0 half to even, 1 half away from
// zero, 2 toward zero. NaN and infinities pass; the sign of a zero result
// is t's.
fn f32_round_int(t: u32, mode: u32) -> u32 {
    let a = t & 0x7fffffffu;
    if (a >= 0x4b000000u) {
        return t;
    }
    let sign = t & SIGN;
    if (a < 0x3f000000u) {
        return sign;
    }
    let m = (a & 0x7fffffu) | 0x800000u;
    let shift = 150u - (a >> 23u);
    var q = m >> shift;
    let rem = m & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    if (mode == 0u && (rem > half || (rem == half && (q & 1u) == 1u))) {
        q = q + 1u;
    } else if (mode == 1u && rem >= half) {
        q = q + 1u;
    }
    return sign | f32_from_mag(0u, q);
}

// An integral value (or infinity) to i32, saturating; NaN -> 0.
fn f32_int_to_i32(t: u32) -> i32 {
    return f32_rne_i32(t);
}
