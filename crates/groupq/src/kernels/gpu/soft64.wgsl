// IEEE binary64 arithmetic on the bits, in 64-bit integer operations
// (SHADER_INT64): the f64 half of soft32.wgsl, same rules.

const F64_INF: u64 = 0x7ff0000000000000lu;
const F64_NAN: u64 = 0x7ff8000000000000lu;
const SIGN64: u64 = 0x8000000000000000lu;
const MAG64: u64 = 0x7ffffffffffffffflu;
const FRAC64: u64 = 0x000ffffffffffffflu;

fn clz64(x: u64) -> u32 {
    let hi = u32(x >> 32u);
    if (hi != 0u) {
        return countLeadingZeros(hi);
    }
    return 32u + countLeadingZeros(u32(x & 0xfffffffflu));
}

fn f64_is_nan(a: u64) -> bool {
    return (a & MAG64) > F64_INF;
}

fn f64_is_zero(a: u64) -> bool {
    return (a & MAG64) == 0lu;
}

// A finite non-zero magnitude as m * 2^e with m in [2^52, 2^53).
struct Unpacked64 {
    m: u64,
    e: i32,
}

fn f64_unpack(a: u64) -> Unpacked64 {
    let ex = i32((a >> 52u) & 0x7fflu);
    let fr = a & FRAC64;
    if (ex == 0) {
        let sh = clz64(fr) - 11u;
        return Unpacked64(fr << sh, -1074 - i32(sh));
    }
    return Unpacked64(fr | 0x0010000000000000lu, ex - 1075);
}

// (m + d) * 2^e rounded to binary64, as round_bits; m != 0, m < 2^64.
fn f64_round(sign: u64, m: u64, e: i32, sticky: bool) -> u64 {
    let p = 63 - i32(clz64(m));
    let big_e = e + p;
    if (big_e > 1023) {
        return sign | F64_INF;
    }
    let lsb = max(big_e - 52, -1074);
    let shift = lsb - e;
    var q = 0lu;
    if (shift <= 0) {
        q = m << u32(-shift);
    } else if (shift < 64) {
        q = m >> u32(shift);
        let rem = m & ((1lu << u32(shift)) - 1lu);
        let half = 1lu << u32(shift - 1);
        if (rem > half || (rem == half && (sticky || (q & 1lu) == 1lu))) {
            q = q + 1lu;
        }
    } else if (shift == 64) {
        if (m > SIGN64 || (m == SIGN64 && sticky)) {
            q = 1lu;
        }
    }
    return sign | ((u64(u32(lsb + 1074)) << 52u) + q);
}

fn f64_div(a: u64, b: u64) -> u64 {
    let sign = (a ^ b) & SIGN64;
    let aa = a & MAG64;
    let bb = b & MAG64;
    if (aa > F64_INF || bb > F64_INF) {
        return F64_NAN;
    }
    if (aa == F64_INF) {
        if (bb == F64_INF) {
            return F64_NAN;
        }
        return sign | F64_INF;
    }
    if (bb == F64_INF) {
        return sign;
    }
    if (bb == 0lu) {
        if (aa == 0lu) {
            return F64_NAN;
        }
        return sign | F64_INF;
    }
    if (aa == 0lu) {
        return sign;
    }
    let ua = f64_unpack(aa);
    let ub = f64_unpack(bb);
    var r = ua.m;
    var e = ua.e - ub.e;
    if (r < ub.m) {
        r = r << 1u;
        e = e - 1;
    }
    var q = 0lu;
    for (var i = 0u; i < 55u; i = i + 1u) {
        q = q << 1u;
        if (r >= ub.m) {
            r = r - ub.m;
            q = q | 1lu;
        }
        r = r << 1u;
    }
    return f64_round(sign, q, e - 54, r != 0lu);
}

fn f64_mul(a: u64, b: u64) -> u64 {
    let sign = (a ^ b) & SIGN64;
    let aa = a & MAG64;
    let bb = b & MAG64;
    if (aa > F64_INF || bb > F64_INF) {
        return F64_NAN;
    }
    if (aa == F64_INF || bb == F64_INF) {
        if (aa == 0lu || bb == 0lu) {
            return F64_NAN;
        }
        return sign | F64_INF;
    }
    if (aa == 0lu || bb == 0lu) {
        return sign;
    }
    let ua = f64_unpack(aa);
    let ub = f64_unpack(bb);
    // 53 x 53 bits in 32-bit halves: p = hi * 2^64 + lo.
    let a0 = ua.m & 0xfffffffflu;
    let a1 = ua.m >> 32u;
    let b0 = ub.m & 0xfffffffflu;
    let b1 = ub.m >> 32u;
    let p00 = a0 * b0;
    let mid = (p00 >> 32u) + a0 * b1 + a1 * b0;
    let lo = (p00 & 0xfffffffflu) | (mid << 32u);
    let hi = a1 * b1 + (mid >> 32u);
    // The product has 105 or 106 bits: keep the top 62, the rest sticky.
    let m = (hi << 20u) | (lo >> 44u);
    return f64_round(sign, m, ua.e + ub.e + 44, (lo & 0xffffffffffflu) != 0lu);
}

fn f64_add(a: u64, b: u64) -> u64 {
    let aa = a & MAG64;
    let bb = b & MAG64;
    if (aa > F64_INF || bb > F64_INF) {
        return F64_NAN;
    }
    if (aa == F64_INF) {
        if (bb == F64_INF && ((a ^ b) & SIGN64) != 0lu) {
            return F64_NAN;
        }
        return a;
    }
    if (bb == F64_INF) {
        return b;
    }
    if (aa == 0lu) {
        if (bb == 0lu) {
            return a & b;
        }
        return b;
    }
    if (bb == 0lu) {
        return a;
    }
    var x = a;
    var y = b;
    if (bb > aa) {
        x = b;
        y = a;
    }
    let ux = f64_unpack(x & MAG64);
    let uy = f64_unpack(y & MAG64);
    let d = u32(ux.e - uy.e);
    let mx = ux.m << 9u;
    var my = 1lu;
    if (d < 63u) {
        let full = uy.m << 9u;
        my = full >> d;
        if ((my << d) != full) {
            my = my | 1lu;
        }
    }
    let sx = x & SIGN64;
    if (((x ^ y) & SIGN64) == 0lu) {
        return f64_round(sx, mx + my, ux.e - 9, false);
    }
    let m = mx - my;
    if (m == 0lu) {
        return 0lu;
    }
    return f64_round(sx, m, ux.e - 9, false);
}

fn f64_from_mag(sign: u32, mag: u32) -> u64 {
    if (mag == 0u) {
        return 0lu;
    }
    return f64_round(u64(sign) << 32u, u64(mag), 0, false);
}

fn f64_from_i32(z: i32) -> u64 {
    if (z < 0) {
        return f64_from_mag(0x80000000u, u32(-(z + 1)) + 1u);
    }
    return f64_from_mag(0u, u32(z));
}

fn f64_rne_i32(t: u64) -> i32 {
    let a = t & MAG64;
    if (a > F64_INF) {
        return 0;
    }
    let neg = (t & SIGN64) != 0lu;
    let ex = i32(a >> 52u);
    if (ex >= 1054) {
        if (neg) {
            return -2147483647 - 1;
        }
        return 2147483647;
    }
    if (ex < 1022) {
        return 0;
    }
    let m = (a & FRAC64) | 0x0010000000000000lu;
    // ex <= 1053: value < 2^31, so the shift is at least 22.
    let shift = u32(1075 - ex);
    var q = m >> shift;
    let rem = m & ((1lu << shift) - 1lu);
    let half = 1lu << (shift - 1u);
    if (rem > half || (rem == half && (q & 1lu) == 1lu)) {
        q = q + 1lu;
    }
    // |t| < 2^31 rounds to at most 2^31, which saturates.
    if (neg) {
        if (q >= 0x80000000lu) {
            return -2147483647 - 1;
        }
        return -i32(u32(q));
    }
    if (q >= 0x80000000lu) {
        return 2147483647;
    }
    return i32(u32(q));
}

fn f64_canonical(f: u64) -> u64 {
    if (f64_is_nan(f)) {
        return F64_NAN;
    }
    return f;
}

fn f64_lt(a: u64, b: u64) -> bool {
    if (f64_is_nan(a) || f64_is_nan(b) || ((a | b) & MAG64) == 0lu) {
        return false;
    }
    let sa = (a & SIGN64) != 0lu;
    let sb = (b & SIGN64) != 0lu;
    if (sa != sb) {
        return sa;
    }
    if (sa) {
        return a > b;
    }
    return a < b;
}

fn f64_min(a: u64, b: u64) -> u64 {
    if (f64_is_nan(a) || f64_lt(b, a)) {
        return b;
    }
    return a;
}

fn f64_max(a: u64, b: u64) -> u64 {
    if (f64_is_nan(a) || f64_lt(a, b)) {
        return b;
    }
    return a;
}

fn f64_round_int(t: u64, mode: u32) -> u64 {
    let a = t & MAG64;
    if (a >= 0x4330000000000000lu) {
        return t;
    }
    let sign = t & SIGN64;
    if (a < 0x3fe0000000000000lu) {
        return sign;
    }
    let m = (a & FRAC64) | 0x0010000000000000lu;
    let shift = u32(1075lu - (a >> 52u));
    var q = m >> shift;
    let rem = m & ((1lu << shift) - 1lu);
    let half = 1lu << (shift - 1u);
    if (mode == 0u && (rem > half || (rem == half && (q & 1lu) == 1lu))) {
        q = q + 1lu;
    } else if (mode == 1u && rem >= half) {
        q = q + 1lu;
    }
    if (q == 0lu) {
        return sign;
    }
    return f64_round(sign, q, 0, false);
}

fn f64_int_to_i32(t: u64) -> i32 {
    return f64_rne_i32(t);
}

// binary32 bits -> binary64 bits (exact; NaN canonical).
fn f32_to_f64(f: u32) -> u64 {
    let sign = u64(f & SIGN) << 32u;
    let a = f & 0x7fffffffu;
    if (a > F32_INF) {
        return F64_NAN;
    }
    if (a == F32_INF) {
        return sign | F64_INF;
    }
    if (a == 0u) {
        return sign;
    }
    let u = f32_unpack(a);
    return f64_round(sign, u64(u.m), u.e, false);
}

// binary64 -> binary32, nearest-even, subnormals kept; NaN canonical.
fn f64_to_f32(d: u64) -> u32 {
    let sign = u32(d >> 32u) & SIGN;
    let a = d & MAG64;
    if (a > F64_INF) {
        return F32_NAN;
    }
    if (a == F64_INF) {
        return sign | F32_INF;
    }
    if (a == 0lu) {
        return sign;
    }
    let u = f64_unpack(a);
    // 53 bits: keep the top 31 in a u32, the rest sticky.
    let m = u32(u.m >> 22u);
    let sticky = (u.m & 0x3ffffflu) != 0lu;
    return f32_round(sign, m, u.e + 22, sticky);
}
