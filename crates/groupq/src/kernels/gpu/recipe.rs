//! The recipe plans on a wgpu device: WGSL generated from a [`Recipe`] at
//! `select`, every choice fixed in the source, computing what the scalar
//! recipe engine (`kernels::recipe`) computes, operation for operation, on
//! the bits.
//!
//! A run is up to five dispatches: `choose` (one invocation per group: the
//! extremes, the non-finite check, the scale, zero point and offset, stored
//! as the output dtypes round them, into a scratch buffer of six words per
//! group), then one per output tensor (scale, zero point, offset, codes),
//! each invocation owning whole 32-bit words of its output, as the SPEC
//! programs do. With `NonFinitePolicy::Error` the host reads the first bad
//! group back between `choose` and the writes, so nothing is written on
//! that error.

use super::{Operand, Program, WORKGROUP};
use crate::device::WgpuDevice;
use crate::element::ElementKind;
use crate::error::{Error, Result};
use crate::kernels::recipe::{eps_value, Arith};
use crate::recipe::{
    EpsPolicy, Mapping, NonFinitePolicy, QuantizeFormula, Recipe, Rounding, ScaleApplication,
    SymmetricDivisor, ZeroPointRule, ZeroPointStage,
};
use std::fmt::Write as _;

/// Words of scratch per group: scale (2), zero point, offset (2), spare.
pub(crate) const SCRATCH_WORDS: usize = 6;

/// The WGSL of one arithmetic dtype under prefix `p`: its container type
/// (`u32` f32 bits for f32, f16 and bf16; `u64` for f64), rounding `p_r`
/// after every operation, and the operations the recipe engine uses.
fn arith(p: &str, kind: ElementKind) -> String {
    let (t, m) = if kind == ElementKind::F64 {
        ("u64", "f64")
    } else {
        ("u32", "f32")
    };
    let r = match kind {
        ElementKind::F16 => "return f16_to_f32(f32_to_f16(x));",
        ElementKind::Bf16 => "return bf16_to_f32(f32_to_bf16(x));",
        _ => "return x;",
    };
    let neg = if m == "f64" { "SIGN64" } else { "SIGN" };
    format!(
        "alias {p}T = {t};
fn {p}_r(x: {t}) -> {t} {{ {r} }}
fn {p}_add(a: {t}, b: {t}) -> {t} {{ return {p}_r({m}_add(a, b)); }}
fn {p}_sub(a: {t}, b: {t}) -> {t} {{ return {p}_r({m}_add(a, b ^ {neg})); }}
fn {p}_mul(a: {t}, b: {t}) -> {t} {{ return {p}_r({m}_mul(a, b)); }}
fn {p}_div(a: {t}, b: {t}) -> {t} {{ return {p}_r({m}_div(a, b)); }}
fn {p}_neg(a: {t}) -> {t} {{ return a ^ {neg}; }}
fn {p}_abs(a: {t}) -> {t} {{ return a & ~{neg}; }}
fn {p}_nan(a: {t}) -> bool {{ return {m}_is_nan(a); }}
fn {p}_zero(a: {t}) -> bool {{ return {m}_is_zero(a); }}
fn {p}_lt(a: {t}, b: {t}) -> bool {{ return {m}_lt(a, b); }}
fn {p}_min(a: {t}, b: {t}) -> {t} {{ return {m}_min(a, b); }}
fn {p}_max(a: {t}, b: {t}) -> {t} {{ return {m}_max(a, b); }}
fn {p}_round(a: {t}, mode: u32) -> {t} {{ return {m}_round_int(a, mode); }}
fn {p}_code(v: {t}, lo: i32, hi: i32) -> i32 {{ return clamp({m}_int_to_i32(v), lo, hi); }}
fn {p}_from_i32(z: i32) -> {t} {{ return {m}_from_i32(z); }}
"
    )
}

/// A constant of the container of `kind` as a WGSL literal, when it is
/// exactly representable there.
fn lit(kind: ElementKind, v: f64) -> Option<String> {
    if kind == ElementKind::F64 {
        return Some(format!("{:#x}lu", v.to_bits()));
    }
    let f = v as f32;
    (f64::from(f) == v || v.is_nan()).then(|| format!("{:#x}u", f.to_bits()))
}

/// The smallest f32 at least `v` (for comparing f32 values with an f64 eps).
fn ceil_f32(v: f64) -> f32 {
    let f = v as f32;
    if f64::from(f) >= v {
        f
    } else {
        f32::from_bits(if f >= 0.0 {
            f.to_bits() + 1
        } else {
            f.to_bits() - 1
        })
    }
}

/// WGSL loading input unit `i` of binding `name` (elements of `input`) as a
/// value of the container of `arith` (rounded to the arithmetic by the caller).
fn load_input(name: &str, input: ElementKind, arith: ElementKind) -> String {
    let raw = match input {
        ElementKind::F32 => format!("{name}_buf[i]"),
        ElementKind::F16 => {
            format!("f16_to_f32(({name}_buf[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu)")
        }
        ElementKind::Bf16 => {
            format!("bf16_to_f32(({name}_buf[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu)")
        }
        _ => format!("(u64({name}_buf[2u * i]) | (u64({name}_buf[2u * i + 1u]) << 32u))"),
    };
    let wide = arith == ElementKind::F64;
    let conv = match (input == ElementKind::F64, wide) {
        (true, false) => format!("f64_to_f32({raw})"),
        (false, true) => format!("f32_to_f64({raw})"),
        _ => raw,
    };
    conv
}

/// Whether input unit `i` of binding `name` is finite (on its own bits).
fn finite_input(name: &str, input: ElementKind) -> String {
    match input {
        ElementKind::F32 => format!("({name}_buf[i] & 0x7fffffffu) < 0x7f800000u"),
        ElementKind::F16 | ElementKind::Bf16 => {
            let inf = if input == ElementKind::F16 {
                "0x7c00u"
            } else {
                "0x7f80u"
            };
            format!("((({name}_buf[i >> 1u] >> ((i & 1u) * 16u)) & 0x7fffu) < {inf})")
        }
        _ => format!("(({name}_buf[2u * i + 1u] & 0x7fffffffu) < 0x7ff00000u)"),
    }
}

/// WGSL turning a value of the container of `arith` into the bits of a
/// stored `scale` element (as `TScale::from_f64` rounds, NaN canonical):
/// `(expression, 64-bit)`.
fn store_scale(v: &str, arith: ElementKind, scale: ElementKind) -> Option<(String, bool)> {
    let wide = arith == ElementKind::F64;
    Some(match (wide, scale) {
        (false, ElementKind::F32) => (format!("f32_canonical({v})"), false),
        (false, ElementKind::F16) => (format!("f32_to_f16({v})"), false),
        (false, ElementKind::Bf16) => (format!("f32_to_bf16({v})"), false),
        (false, _) => (format!("f32_to_f64({v})"), true),
        (true, ElementKind::F64) => (format!("f64_canonical({v})"), true),
        (true, ElementKind::F32) => (format!("f64_to_f32({v})"), false),
        // f64 values rounded straight to a half type: not ported.
        (true, _) => return None,
    })
}

/// WGSL reading a stored scale element's bits (`lo`, `hi` words) as a value
/// of the container of `arith` (exact: stored values widen).
fn load_scale(lo: &str, hi: &str, arith: ElementKind, scale: ElementKind) -> String {
    let wide = arith == ElementKind::F64;
    let v = match scale {
        ElementKind::F32 => lo.to_string(),
        ElementKind::F16 => format!("f16_to_f32({lo})"),
        ElementKind::Bf16 => format!("bf16_to_f32({lo})"),
        _ => format!("(u64({lo}) | (u64({hi}) << 32u))"),
    };
    match (scale == ElementKind::F64, wide) {
        (false, true) => format!("f32_to_f64({v})"),
        (true, false) => format!("f64_to_f32({v})"),
        _ => v,
    }
}

fn unsupported(label: &str, why: String) -> Error {
    Error::Unsupported(format!("{label}: not available on a device stream: {why}"))
}

/// The WGSL body of `choose(mn, mx, sam) -> Chosen` for `recipe` in the
/// choose arithmetic `a` (prefix `c`), as `kernels::recipe::choose`.
fn choose_body(label: &str, recipe: &Recipe, a: ElementKind, eps: f64) -> Result<String> {
    let k = |v: f64| {
        lit(a, v).ok_or_else(|| {
            unsupported(
                label,
                format!("the recipe constant {v} is not exact in the arithmetic"),
            )
        })
    };
    let (qmin, qmax) = (f64::from(recipe.q_min), f64::from(recipe.q_max));
    let levels = qmax - qmin;
    let (qmin_l, qmax_l, levels_l, zero) = (k(qmin)?, k(qmax)?, k(levels)?, k(0.0)?);
    // max(v, eps) rounded: eps when v is NaN or below it (v is a value of
    // the arithmetic, so comparing with the least f32 >= eps is exact).
    let (eps_ceil, eps_r) = if a == ElementKind::F64 {
        (k(eps)?, k(eps)?)
    } else {
        let r = Arith(a).r(eps);
        (
            format!("{:#x}u", ceil_f32(eps).to_bits()),
            format!("{:#x}u", (r as f32).to_bits()),
        )
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "fn max_eps(v: cT) -> cT {{ if (c_nan(v) || c_lt(v, {eps_ceil})) {{ return {eps_r}; }} return v; }}"
    );
    let clamp_range = |v: &str| match recipe.eps {
        EpsPolicy::ClampRange(_) => format!("max_eps({v})"),
        _ => v.to_string(),
    };
    s.push_str("fn choose(mn: cT, mx: cT, sam: cT) -> Chosen {\n");
    // A group holding NaN, as `kernels::recipe::choose`.
    let nan = lit(a, f64::NAN).unwrap_or_default();
    let nan_offset = if recipe.zero_point == ZeroPointRule::FloatOffset {
        nan.clone()
    } else {
        zero.clone()
    };
    let _ = writeln!(
        s,
        "    if (c_nan(mn) || c_nan(mx)) {{ return Chosen({nan}, {}, {nan_offset}); }}",
        match crate::kernels::recipe::nan_zero_point(recipe) {
            i32::MIN => "-2147483647 - 1".to_string(),
            z => z.to_string(),
        }
    );
    let _ = writeln!(
        s,
        // `c_add(_, +0)` makes a zero +0, as the engine's `+ 0.0`.
        "    var lo = c_add(c_min(mn, {zero}), {zero});\n    var hi = c_add(c_max(mx, {zero}), {zero});\n    var scale = {zero};"
    );
    match recipe.mapping {
        Mapping::Symmetric(divisor) => {
            let d = match divisor {
                SymmetricDivisor::HalfRange => k(levels / 2.0)?,
                SymmetricDivisor::QMax => qmax_l.clone(),
            };
            let amax = clamp_range(&format!("c_add(c_max(c_neg(lo), hi), {zero})"));
            let _ = writeln!(s, "    scale = c_div({amax}, {d});");
        }
        Mapping::AsymmetricWithZero | Mapping::GptqSymmetric => {
            if recipe.mapping == Mapping::GptqSymmetric {
                let _ = writeln!(s, "    hi = c_add(c_max(hi, c_neg(lo)), {zero});\n    if (c_lt(lo, {zero})) {{ lo = c_neg(hi); }}");
            }
            if recipe.eps == EpsPolicy::UnitRangeForZeroGroup {
                let (m1, p1) = (k(-1.0)?, k(1.0)?);
                let _ = writeln!(
                    s,
                    "    if (c_zero(lo) && c_zero(hi)) {{ lo = {m1}; hi = {p1}; }}"
                );
            }
            let range = clamp_range("c_sub(hi, lo)");
            let _ = writeln!(s, "    scale = c_div({range}, {levels_l});");
        }
        Mapping::Asymmetric => {
            let range = clamp_range("c_sub(mx, mn)");
            let _ = writeln!(
                s,
                "    lo = mn;\n    hi = mx;\n    scale = c_div({range}, {levels_l});"
            );
        }
        Mapping::SignedAbsMax(d) => {
            let _ = writeln!(s, "    scale = c_div(sam, {});", k(d.0)?);
        }
    }
    if let EpsPolicy::ClampScale(_) = recipe.eps {
        s.push_str("    scale = max_eps(scale);\n");
    }
    let (lo_i, hi_i) = (recipe.q_min, recipe.q_max);
    let zp = match recipe.zero_point {
        ZeroPointRule::Midpoint => format!("{}", (recipe.q_max + recipe.q_min + 1) / 2),
        ZeroPointRule::QMinMinusRoundedMin => {
            format!("c_code(c_sub({qmin_l}, c_round(c_div(lo, scale), 0u)), {lo_i}, {hi_i})")
        }
        ZeroPointRule::RoundedClampedQMinMinusMin => {
            s.push_str(&format!(
                "    var zc = c_sub({qmin_l}, c_div(lo, scale));\n    if (!c_nan(zc)) {{ zc = c_min(c_max(zc, {qmin_l}), {qmax_l}); }}\n"
            ));
            "c_code(c_round(zc, 0u), -2147483647 - 1, 2147483647)".to_string()
        }
        ZeroPointRule::RoundedNegatedMin => {
            "c_code(c_round(c_div(c_neg(lo), scale), 0u), -2147483647 - 1, 2147483647)".to_string()
        }
        ZeroPointRule::FloatOffset => "0".to_string(),
        ZeroPointRule::PerTokenAsymmetric => {
            s.push_str(&format!(
                "    let dmin = c_div(lo, scale);
    let dmax = c_div(hi, scale);
    let err = c_add(c_add({qmin_l}, dmin), c_add({qmax_l}, dmax));
    var zc = c_sub({qmax_l}, dmax);
    if (c_lt({zero}, err)) {{ zc = c_sub({qmin_l}, dmin); }}
    if (!c_nan(zc)) {{ zc = c_min(c_max(zc, {qmin_l}), {qmax_l}); }}
"
            ));
            // NaN → i32::MIN, as the engine (PyTorch's INT64_MIN).
            "select(c_code(c_round(zc, 0u), -2147483647 - 1, 2147483647), -2147483647 - 1, c_nan(zc))"
                .to_string()
        }
    };
    let _ = writeln!(s, "    let zp = {zp};");
    if let EpsPolicy::ReplaceZeroScale(_) = recipe.eps {
        let _ = writeln!(s, "    if (c_zero(scale)) {{ scale = {eps_r}; }}");
    }
    let offset = if recipe.zero_point == ZeroPointRule::FloatOffset {
        "lo".to_string()
    } else {
        zero
    };
    let _ = writeln!(s, "    return Chosen(scale, zp, {offset});\n}}");
    Ok(s)
}

/// WGSL of `code(x, s, z, m) -> i32` for the recipe's quantize formula in
/// arithmetic `q` (prefix `q`), as `kernels::recipe::quantize`.
/// WGSL of `code(x, s, z, m) -> i32` for quantize formula `f` in arithmetic
/// `q` (prefix `q`), codes clamped to `[lo, hi]` (WGSL expressions), as
/// `kernels::recipe::quantize`: the zero point is added as `M(z)`, in f32
/// below f64 (rounded there when beyond 2^24), as the engine does.
/// `wide_s`: the scale is an f64 (`u64` bits) while the arithmetic is
/// narrower, so the operations with it are done in f64 and rounded, as the
/// engine does with a caller's f64 scale.
fn code_body(f: &QuantizeFormula, (lo, hi): (&str, &str), q: ElementKind, wide_s: bool) -> String {
    let (zero, one, half) = (
        lit(q, 0.0).unwrap_or_default(),
        lit(q, 1.0).unwrap_or_default(),
        lit(q, 0.5).unwrap_or_default(),
    );
    let mode = match f.rounding {
        Rounding::TiesEven => 0,
        Rounding::TiesAway => 1,
        Rounding::HalfUp => 2,
    };
    let round = |v: &str| match f.rounding {
        Rounding::HalfUp => format!("q_round(q_add({v}, {half}), 2u)"),
        _ => format!("q_round({v}, {mode}u)"),
    };
    let half_up =
        f.rounding == Rounding::HalfUp && f.zero_point_stage == ZeroPointStage::BeforeRounding;
    let v = match f.scale_application {
        ScaleApplication::Divide => "x_div_s(x, s)",
        _ => "q_mul(x, inv_s(s))",
    }
    .replace("{one}", &one);
    // v + z (+ 0.5 for ggml's `x * id + 8.5`, where z + 0.5 is one constant).
    let add_z = if q == ElementKind::F64 {
        "fn add_z(v: qT, z: i32, half: bool) -> qT {
    var c = f64_from_i32(z);
    if (half) { c = f64_add(c, 0x3fe0000000000000lu); }
    return q_add(v, c);
}
"
    } else {
        "fn add_z(v: qT, z: i32, half: bool) -> qT {
    var c = f32_from_i32(z);
    if (half) { c = f32_add(c, 0x3f000000u); }
    return q_add(v, c);
}
"
    };
    let r = match f.zero_point_stage {
        ZeroPointStage::BeforeRounding if half_up => "q_round(add_z(v, z, true), 2u)".to_string(),
        ZeroPointStage::BeforeRounding => round("add_z(v, z, false)"),
        ZeroPointStage::AfterRounding => format!("add_z({}, z, false)", round("v")),
    };
    // The fused reciprocal-add: x * rd(1 / s) + c rounded once in f64 (the
    // product of two f32 values is exact there), then to the arithmetic, as
    // the engine computes it.
    let fused = if f.scale_application == ScaleApplication::ReciprocalMultiplyFused {
        let wide = |v: &str| {
            if q == ElementKind::F64 {
                v.to_string()
            } else {
                format!("f32_to_f64({v})")
            }
        };
        let c = match (half_up, q == ElementKind::F64) {
            (true, true) => "f64_add(f64_from_i32(z), 0x3fe0000000000000lu)",
            (false, true) => "f64_from_i32(z)",
            (true, false) => "f32_to_f64(f32_add(f32_from_i32(z), 0x3f000000u))",
            (false, false) => "f32_to_f64(f32_from_i32(z))",
        };
        let t64 = format!("f64_add(f64_mul({}, {}), {c})", wide("x"), wide("inv_s(s)"));
        let t = if q == ElementKind::F64 {
            t64
        } else {
            format!("q_r(f64_to_f32({t64}))")
        };
        let r = if half_up {
            "q_round(t, 2u)".to_string()
        } else {
            round("t")
        };
        format!(
            "    if (!s_zero(s)) {{\n        let t = {t};\n        return q_code({r}, {lo}, {hi});\n    }}\n"
        )
    } else {
        String::new()
    };
    let scale_ops = if wide_s {
        "alias sT = u64;
fn s_zero(s: u64) -> bool { return f64_is_zero(s); }
fn x_div_s(x: qT, s: u64) -> qT { return q_r(f64_to_f32(f64_div(f32_to_f64(x), s))); }
fn inv_s(s: u64) -> qT { return q_r(f64_to_f32(f64_div(0x3ff0000000000000lu, s))); }
"
        .to_string()
    } else {
        format!(
            "alias sT = qT;
fn s_zero(s: qT) -> bool {{ return q_zero(s); }}
fn x_div_s(x: qT, s: qT) -> qT {{ return q_div(x, s); }}
fn inv_s(s: qT) -> qT {{ return q_div({one}, s); }}
"
        )
    };
    format!(
        "{add_z}{scale_ops}fn code(x0: qT, s: sT, z: i32, m: qT) -> i32 {{
    var x = q_r(x0);
    if (!q_zero(m)) {{ x = q_sub(x, m); }}
{fused}    var v = {zero};
    if (!s_zero(s)) {{ v = {v}; }}
    return q_code({r}, {lo}, {hi});
}}
",
    )
}

/// The WGSL of `QuantizePerGroupPlan::select_with_formula`'s formula `f` on
/// caller-given scales (of the input's dtype) and zero points: one output
/// word per invocation, bindings as the SPEC forward's (out, input, scale,
/// zero point), the code range from the uniforms. Needs SHADER_INT64 (the
/// scale is held in f64); the zero point is added as `M(z)`.
pub(crate) fn formula_source(f: &QuantizeFormula, input: ElementKind, code: ElementKind) -> String {
    let q = Recipe::arithmetic_kind(f.arithmetic, input);
    let mut s = String::new();
    s.push_str(super::SOFT32);
    s.push_str(super::SOFT64);
    s.push_str(super::PARAMS);
    s.push_str(&arith("q", q));
    // A caller's f64 scale meets a narrower arithmetic unrounded.
    let wide_s = input == ElementKind::F64 && q != ElementKind::F64;
    s.push_str(&code_body(f, ("P.q_min", "P.q_max"), q, wide_s));
    let pack = if matches!(code, ElementKind::S4 | ElementKind::U4) {
        2
    } else {
        1
    };
    let per = if pack == 2 {
        "(u32(qv) & 15u) << (4u * n)"
    } else {
        "u32(qv) & 0xffu"
    };
    let zero = lit(q, 0.0).unwrap_or_default();
    let _ = write!(
        s,
        "@group(0) @binding(1) var<storage, read_write> out_buf: array<u32>;
@group(0) @binding(2) var<storage, read> a_buf: array<u32>;
@group(0) @binding(3) var<storage, read> b_buf: array<u32>;
@group(0) @binding(4) var<storage, read> c_buf: array<u32>;
fn ld_x(i: u32) -> qT {{ return {load}; }}
fn ld_s(i: u32) -> sT {{ return {ls}; }}
alias UT = u32;
fn value(row: u32, col: u32) -> u32 {{
    var bits = 0u;
    for (var n = 0u; n < {pack}u; n = n + 1u) {{
        let j = col * {pack}u + n;
        let g = j / P.group;
        let s = ld_s(P.b_base + row * P.b_stride + g);
        let z = bitcast<i32>(c_buf[P.c_base + row * P.c_stride + g]);
        let qv = code(ld_x(P.a_base + row * P.a_stride + j), s, z, {zero});
        bits = bits | ({per});
    }}
    return bits;
}}
",
        load = load_input("a", input, q),
        ls = if wide_s {
            load_input("b", input, ElementKind::F64)
        } else {
            load_input("b", input, q)
        },
    );
    s.push_str(&super::word_main(code));
    s
}

/// The compiled programs of one recipe plan.
#[derive(Clone, Debug)]
pub(crate) struct RecipePrograms {
    choose: Program,
    scale: Program,
    zero_point: Program,
    offset: Option<Program>,
    codes: Option<Program>,
    check: bool,
    label: &'static str,
}

impl RecipePrograms {
    /// Compiles the programs of `recipe` for inputs `input`, scales `scale`,
    /// codes `codes` (none for the choose plan) and a float offset output.
    /// `Unsupported`, with the reason, where a part has no exact device form.
    pub fn new(
        dev: &WgpuDevice,
        label: &'static str,
        recipe: &Recipe,
        input: ElementKind,
        scale: ElementKind,
        codes: Option<ElementKind>,
    ) -> Result<RecipePrograms> {
        let a = Recipe::arithmetic_kind(recipe.choose_arithmetic, input);
        let q = Recipe::arithmetic_kind(recipe.quantize.arithmetic, input);
        let fused = recipe.quantize.scale_application == ScaleApplication::ReciprocalMultiplyFused;
        let needs64 = [input, scale, a, q].contains(&ElementKind::F64) || fused;
        super::require_int64(dev, label, needs64, "f64, and the fused reciprocal-add,")?;
        if (a == ElementKind::F64) != (q == ElementKind::F64) {
            return Err(unsupported(
                label,
                "a recipe mixing f64 and narrower arithmetics".into(),
            ));
        }
        let prelude = |s: &mut String| {
            s.push_str(super::SOFT32);
            if needs64 {
                s.push_str(super::SOFT64);
            }
            s.push_str(super::PARAMS);
        };
        let eps = match recipe.eps {
            EpsPolicy::ClampScale(e)
            | EpsPolicy::ReplaceZeroScale(e)
            | EpsPolicy::ClampRange(e) => eps_value(e, input, scale),
            _ => 0.0,
        };
        let (store, wide) = store_scale("v", a, scale)
            .ok_or_else(|| unsupported(label, format!("f64 scales stored as {scale}")))?;

        // choose: one invocation per group.
        let mut s = String::new();
        prelude(&mut s);
        s.push_str(&arith("c", a));
        let ct = if a == ElementKind::F64 { "u64" } else { "u32" };
        let _ = writeln!(s, "struct Chosen {{ scale: {ct}, zp: i32, offset: {ct} }}");
        s.push_str(&choose_body(label, recipe, a, eps)?);
        let (hi_expr, lo_expr) = if wide {
            ("u32(st >> 32u)", "u32(st & 0xfffffffflu)")
        } else {
            ("0u", "st")
        };
        let _ = write!(
            s,
            "@group(0) @binding(1) var<storage, read_write> out_buf: array<u32>;
@group(0) @binding(2) var<storage, read> a_buf: array<u32>;
@group(0) @binding(7) var<storage, read_write> flag: array<atomic<u32>>;
fn ld_x(i: u32) -> cT {{ return {load}; }}
fn finite(i: u32) -> bool {{ return {finite}; }}
fn stored(v: cT) -> vec2<u32> {{ let st = {store}; return vec2<u32>({lo_expr}, {hi_expr}); }}
@compute @workgroup_size({WORKGROUP})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {{
    let w = (wid.y * P.wg_x + wid.x) * {WORKGROUP}u + lid;
    if (w >= P.n) {{ return; }}
    let row = w / P.chunk_groups;
    let g = w % P.chunk_groups;
    let base = P.a_base + row * P.a_stride + g * P.group;
    var mn = {inf};
    var mx = {ninf};
    var sam = {zero};
    var nan = false;
    var bad = false;
    for (var i = 0u; i < P.group; i = i + 1u) {{
        bad = bad || !finite(base + i);
        if (nan) {{ continue; }}
        let v = c_r(ld_x(base + i));
        if (c_nan(v)) {{
            mn = v;
            mx = v;
            sam = v;
            nan = true;
        }} else {{
            if (c_lt(v, mn)) {{ mn = v; }}
            if (c_lt(mx, v)) {{ mx = v; }}
            if (c_lt(c_abs(sam), c_abs(v))) {{ sam = v; }}
        }}
    }}
    if (bad) {{ atomicMin(&flag[0], (P.r0 + row) * P.groups + P.g0 + g); }}
    let c = choose(mn, mx, sam);
    let o = P.out_base + row * P.out_stride + g * {words}u;
    let sc = stored(c.scale);
    let off = stored(c.offset);
    out_buf[o] = sc.x;
    out_buf[o + 1u] = sc.y;
    out_buf[o + 2u] = bitcast<u32>(c.zp);
    out_buf[o + 3u] = off.x;
    out_buf[o + 4u] = off.y;
    out_buf[o + 5u] = 0u;
}}
",
            load = load_input("a", input, a),
            finite = finite_input("a", input),
            store = store,
            inf = lit(a, f64::INFINITY).unwrap_or_default(),
            ninf = lit(a, f64::NEG_INFINITY).unwrap_or_default(),
            zero = lit(a, 0.0).unwrap_or_default(),
            words = SCRATCH_WORDS,
        );
        let choose = Program::compile(dev, label, s, ElementKind::I32, true)?;

        // The scatter programs: one output tensor from the scratch.
        let scatter = |out: ElementKind, field: &str| -> Result<Program> {
            let mut s = String::new();
            prelude(&mut s);
            let _ = write!(
                s,
                "@group(0) @binding(1) var<storage, read_write> out_buf: array<u32>;
@group(0) @binding(2) var<storage, read> a_buf: array<u32>;
alias UT = {ut};
fn value(row: u32, col: u32) -> UT {{
    let o = P.a_base + row * P.a_stride + col * {words}u;
    {field}
}}
",
                ut = if out == ElementKind::F64 {
                    "u64"
                } else {
                    "u32"
                },
                words = SCRATCH_WORDS,
            );
            s.push_str(&super::word_main(out));
            Program::compile(dev, label, s, out, false)
        };
        let pick = |k: usize| {
            if scale == ElementKind::F64 {
                format!(
                    "return u64(a_buf[o + {k}u]) | (u64(a_buf[o + {}u]) << 32u);",
                    k + 1
                )
            } else {
                format!("return a_buf[o + {k}u];")
            }
        };
        let scale_p = scatter(scale, &pick(0))?;
        let zp_p = scatter(ElementKind::I32, "return a_buf[o + 2u];")?;
        let offset = if recipe.zero_point == ZeroPointRule::FloatOffset {
            Some(scatter(scale, &pick(3))?)
        } else {
            None
        };

        // The codes: one output word per invocation, from the input and the
        // group's stored parameters.
        let codes = match codes {
            None => None,
            Some(code_kind) => {
                let mut s = String::new();
                prelude(&mut s);
                s.push_str(&arith("q", q));
                let (lo, hi) = (recipe.q_min.to_string(), recipe.q_max.to_string());
                s.push_str(&code_body(&recipe.quantize, (&lo, &hi), q, false));
                let pack = if matches!(code_kind, ElementKind::S4 | ElementKind::U4) {
                    2
                } else {
                    1
                };
                let per = if pack == 2 {
                    "(u32(qv) & 15u) << (4u * n)"
                } else {
                    "u32(qv) & 0xffu"
                };
                let _ = write!(
                    s,
                    "@group(0) @binding(1) var<storage, read_write> out_buf: array<u32>;
@group(0) @binding(2) var<storage, read> a_buf: array<u32>;
@group(0) @binding(3) var<storage, read> b_buf: array<u32>;
fn ld_x(i: u32) -> qT {{ return {load}; }}
alias UT = u32;
fn value(row: u32, col: u32) -> u32 {{
    var bits = 0u;
    for (var n = 0u; n < {pack}u; n = n + 1u) {{
        let j = col * {pack}u + n;
        let g = j / P.group;
        let o = P.b_base + row * P.b_stride + g * {words}u;
        let s = {ls};
        let m = {lm};
        let qv = code(ld_x(P.a_base + row * P.a_stride + j), s, bitcast<i32>(b_buf[o + 2u]), m);
        bits = bits | ({per});
    }}
    return bits;
}}
",
                    load = load_input("a", input, q),
                    ls = load_scale("b_buf[o]", "b_buf[o + 1u]", q, scale),
                    lm = load_scale("b_buf[o + 3u]", "b_buf[o + 4u]", q, scale),
                    words = SCRATCH_WORDS,
                );
                s.push_str(&super::word_main(code_kind));
                Some(Program::compile(dev, label, s, code_kind, false)?)
            }
        };
        Ok(RecipePrograms {
            choose,
            scale: scale_p,
            zero_point: zp_p,
            offset,
            codes,
            check: recipe.non_finite == NonFinitePolicy::Error,
            label,
        })
    }

    /// Enqueues the recipe over `rows × groups` groups of `gs`: `input`
    /// (per group `gs` units), the outputs `scale`, `zero_point`, `offset`
    /// (per group 1) and `codes` (per group `gs / PACK`). With the Error
    /// policy this waits for the check and returns `NonFiniteInput` before
    /// writing anything.
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue(
        &self,
        dev: &WgpuDevice,
        rows: usize,
        groups: usize,
        gs: usize,
        input: Operand<'_>,
        scale: Operand<'_>,
        zero_point: Operand<'_>,
        offset: Option<Operand<'_>>,
        codes: Option<Operand<'_>>,
    ) -> Result<()> {
        if rows == 0 || groups == 0 {
            return Ok(());
        }
        let total = rows
            .checked_mul(groups)
            .filter(|&n| n < u32::MAX as usize)
            .ok_or_else(|| {
                Error::Unsupported(format!(
                    "{}: {rows} × {groups} groups are more than a device run takes (2^32 - 1)",
                    self.label
                ))
            })?;
        let bytes = (total * SCRATCH_WORDS * 4) as u64;
        if bytes > dev.device.limits().max_buffer_size {
            return Err(Error::Unsupported(format!(
                "{}: the {bytes}-byte parameter scratch exceeds the device's max_buffer_size",
                self.label
            )));
        }
        let (scratch, flag) = dev.scoped(self.label, || {
            let scratch = dev.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("groupq recipe scratch"),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            let flag = wgpu::util::DeviceExt::create_buffer_init(
                &dev.device,
                &wgpu::util::BufferInitDescriptor {
                    label: Some("groupq non-finite flag"),
                    contents: &u32::MAX.to_le_bytes(),
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                },
            );
            (scratch, flag)
        })?;
        let geo = |per_group| super::Geometry {
            kind: ElementKind::I32,
            offset: 0,
            stride: groups * SCRATCH_WORDS,
            per_group,
        };
        let sc = |per_group| Operand {
            buffer: &scratch,
            geo: geo(per_group),
        };
        let q = (0, 0);
        self.choose.enqueue_with(
            dev,
            rows,
            groups,
            gs,
            q,
            &[sc(SCRATCH_WORDS), input],
            Some(&flag),
        )?;
        if self.check {
            let first = super::read_u32(dev, &flag)?;
            if first != u32::MAX {
                let first = first as usize;
                return Err(Error::NonFiniteInput {
                    row: first / groups,
                    group: first % groups,
                });
            }
        }
        self.scale
            .enqueue_with(dev, rows, groups, gs, q, &[scale, sc(SCRATCH_WORDS)], None)?;
        self.zero_point.enqueue_with(
            dev,
            rows,
            groups,
            gs,
            q,
            &[zero_point, sc(SCRATCH_WORDS)],
            None,
        )?;
        if let (Some(p), Some(o)) = (&self.offset, offset) {
            p.enqueue_with(dev, rows, groups, gs, q, &[o, sc(SCRATCH_WORDS)], None)?;
        }
        if let (Some(p), Some(c)) = (&self.codes, codes) {
            p.enqueue_with(
                dev,
                rows,
                groups,
                gs,
                q,
                &[c, input, sc(SCRATCH_WORDS)],
                None,
            )?;
        }
        Ok(())
    }
}
