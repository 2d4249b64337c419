//! The per-group plans on a wgpu device: WGSL compute shaders generated at
//! `select` from one template, with the op and the element types fixed in
//! the source, and a dispatcher that cuts a problem into chunks that fit
//! the device's storage bindings.
//!
//! Every float operation runs on the bits in integer arithmetic
//! (`soft32.wgsl`, `soft64.wgsl`): IEEE division, multiplication and
//! addition correctly rounded to nearest-even with subnormals kept, the
//! roundings to integers and the f16/bf16 conversions, NaN read from the
//! bits. A GPU may flush subnormals, fuse a multiply-add, divide within 2.5
//! ulp or assume no NaN in float code; none of that can touch integer code,
//! so the device gives the scalar reference's bits.

use crate::device::WgpuDevice;
use crate::element::ElementKind;
use crate::error::{Error, Result};
use crate::plan::SteBoundary;
use std::fmt::Write as _;
use std::sync::Arc;

pub(crate) mod recipe;

const SOFT32: &str = include_str!("soft32.wgsl");
const SOFT64: &str = include_str!("soft64.wgsl");
/// The uniform block every program reads (see `Program::enqueue_with`).
pub(crate) const PARAMS: &str = "struct Params {
    n: u32, rows: u32, out_base: u32, out_stride: u32, out_cols: u32,
    a_base: u32, a_stride: u32, b_base: u32, b_stride: u32,
    c_base: u32, c_stride: u32, d_base: u32, d_stride: u32,
    group: u32, q_min: i32, q_max: i32, wg_x: u32,
    r0: u32, g0: u32, groups: u32, chunk_groups: u32,
}
@group(0) @binding(0) var<uniform> P: Params;
";

/// Invocations per workgroup.
const WORKGROUP: u32 = 256;

/// Which SPEC §3 op a program computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    /// §3.1: `a` input, `b` scale, `c` zero point → codes.
    Quantize,
    /// §3.2: `a` codes, `b` scale, `c` zero point → floats.
    Dequantize,
    /// §3.3: `a` grad_output, `d` input, `b` scale, `c` zero point → floats.
    QuantizeBackward(SteBoundary),
    /// §3.4: `a` grad_output, `b` scale → floats.
    DequantizeBackward,
    /// A recipe's quantize formula on caller-given parameters (bindings as
    /// `Quantize`).
    Formula(crate::recipe::QuantizeFormula),
}

/// One operand of a dispatch: a 2-D view of a device buffer, in storage
/// units of `kind`, with `per_group` units per group along its rows (the
/// group size for data, `group_size / 2` for packed codes, 1 for
/// parameters).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub geo: Geometry,
}

/// Where an operand's elements are: storage kind, first unit, row stride
/// (units), units per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub kind: ElementKind,
    pub offset: usize,
    pub stride: usize,
    pub per_group: usize,
}

/// A compiled per-group program: the pipeline and what it binds.
#[derive(Clone)]
pub(crate) struct Program {
    pipeline: Arc<wgpu::ComputePipeline>,
    /// The output's storage kind.
    out: ElementKind,
    /// One invocation per group (the recipe's choose pass) instead of one
    /// per output word.
    per_group: bool,
    label: &'static str,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("label", &self.label)
            .field("out", &self.out)
            .field("per_group", &self.per_group)
            .finish()
    }
}

fn unit_bytes(kind: ElementKind) -> usize {
    kind.size_bytes()
}

/// WGSL that loads unit `i` of binding `name` (an `array<u32>`) as the
/// math value of a float of `kind` (`u32` bits of an f32, `u64` of an f64).
fn float_loader(out: &mut String, name: &str, kind: ElementKind) {
    let body = match kind {
        ElementKind::F32 => format!("return {name}_buf[i];"),
        ElementKind::F16 => {
            format!("return f16_to_f32(({name}_buf[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu);")
        }
        ElementKind::Bf16 => {
            format!("return bf16_to_f32(({name}_buf[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu);")
        }
        _ => format!("return u64({name}_buf[2u * i]) | (u64({name}_buf[2u * i + 1u]) << 32u);"),
    };
    let _ = writeln!(out, "fn ld_{name}(i: u32) -> MT {{ {body} }}");
}

/// WGSL that loads code `j` of a row starting at unit `u0` of binding `name`.
fn code_loader(out: &mut String, name: &str, kind: ElementKind) {
    let body = match kind {
        ElementKind::S8 => {
            "let u = u0 + j; return (i32(a_buf[u >> 2u] >> ((u & 3u) * 8u)) << 24u) >> 24u;"
        }
        ElementKind::U8 => "let u = u0 + j; return i32((a_buf[u >> 2u] >> ((u & 3u) * 8u)) & 0xffu);",
        ElementKind::S4 => {
            "let u = u0 + (j >> 1u); let b = a_buf[u >> 2u] >> ((u & 3u) * 8u + (j & 1u) * 4u); return (i32(b) << 28u) >> 28u;"
        }
        _ => "let u = u0 + (j >> 1u); let b = a_buf[u >> 2u] >> ((u & 3u) * 8u + (j & 1u) * 4u); return i32(b & 15u);",
    };
    let body = body.replace("a_buf", &format!("{name}_buf"));
    let _ = writeln!(out, "fn code_{name}(u0: u32, j: u32) -> i32 {{ {body} }}");
}

/// WGSL that turns a math value into the bits of one output unit.
fn float_storer(kind: ElementKind) -> &'static str {
    match kind {
        ElementKind::F32 => "fn st(v: MT) -> u32 { return f32_canonical(v); }",
        ElementKind::F16 => "fn st(v: MT) -> u32 { return f32_to_f16(v); }",
        ElementKind::Bf16 => "fn st(v: MT) -> u32 { return f32_to_bf16(v); }",
        _ => "fn st(v: MT) -> u64 { return f64_canonical(v); }",
    }
}

/// The shader source of `op` for floats of `float` and codes of `code`.
fn source(op: Op, float: ElementKind, code: ElementKind) -> String {
    let f64 = float == ElementKind::F64;
    let mut s = String::new();
    s.push_str(SOFT32);
    if f64 {
        s.push_str(SOFT64);
    }
    let m = if f64 { "f64" } else { "f32" };
    let mt = if f64 { "u64" } else { "u32" };
    let _ = writeln!(
        s,
        "alias MT = {mt};
fn mdiv(a: MT, b: MT) -> MT {{ return {m}_div(a, b); }}
fn mmul(a: MT, b: MT) -> MT {{ return {m}_mul(a, b); }}
fn madd(a: MT, b: MT) -> MT {{ return {m}_add(a, b); }}
fn mzero(a: MT) -> bool {{ return {m}_is_zero(a); }}
fn mnan(a: MT) -> bool {{ return {m}_is_nan(a); }}
fn mrne(a: MT) -> i32 {{ return {m}_rne_i32(a); }}
fn mfrom_i32(z: i32) -> MT {{ return {m}_from_i32(z); }}
fn mfrom_mag(sign: u32, mag: u32) -> MT {{ return {m}_from_mag(sign, mag); }}"
    );
    s.push_str(PARAMS);
    s.push_str(
        "@group(0) @binding(1) var<storage, read_write> out_buf: array<u32>;
@group(0) @binding(2) var<storage, read> a_buf: array<u32>;
@group(0) @binding(3) var<storage, read> b_buf: array<u32>;
",
    );
    let uses_c = !matches!(op, Op::DequantizeBackward);
    if uses_c {
        s.push_str("@group(0) @binding(4) var<storage, read> c_buf: array<u32>;\n");
        s.push_str("fn ld_c(i: u32) -> i32 { return bitcast<i32>(c_buf[i]); }\n");
    }
    if matches!(op, Op::QuantizeBackward(_)) {
        s.push_str("@group(0) @binding(5) var<storage, read> d_buf: array<u32>;\n");
        float_loader(&mut s, "d", float);
    }
    float_loader(&mut s, "b", float);
    // The forward's t = (s != 0 ? x / s : 0) + M(z).
    s.push_str(
        "fn shifted(x: MT, s: MT, z: i32) -> MT {
    var v = MT(0);
    if (!mzero(s)) { v = mdiv(x, s); }
    return madd(v, mfrom_i32(z));
}
",
    );
    // `value(row, col)`: the bits of output unit `col` of chunk row `row`.
    let (out_kind, value) = match op {
        Op::Quantize | Op::Formula(_) => {
            float_loader(&mut s, "a", float);
            let pack = if matches!(code, ElementKind::S4 | ElementKind::U4) {
                2
            } else {
                1
            };
            let per = if pack == 2 {
                "(q & 15u) << (4u * n)"
            } else {
                "q & 0xffu"
            };
            (
                code,
                format!(
                    "fn value(row: u32, col: u32) -> u32 {{
    var bits = 0u;
    for (var n = 0u; n < {pack}u; n = n + 1u) {{
        let j = col * {pack}u + n;
        let g = j / P.group;
        let x = ld_a(P.a_base + row * P.a_stride + j);
        let s = ld_b(P.b_base + row * P.b_stride + g);
        let z = ld_c(P.c_base + row * P.c_stride + g);
        let q = u32(clamp(mrne(shifted(x, s, z)), P.q_min, P.q_max));
        bits = bits | ({per});
    }}
    return bits;
}}"
                ),
            )
        }
        Op::Dequantize => {
            code_loader(&mut s, "a", code);
            (
                float,
                "fn value(row: u32, col: u32) -> UT {
    let g = col / P.group;
    let q = code_a(P.a_base + row * P.a_stride, col);
    let s = ld_b(P.b_base + row * P.b_stride + g);
    let z = ld_c(P.c_base + row * P.c_stride + g);
    // q - z exactly: a sign and a magnitude below 2^32.
    var d = mfrom_mag(0u, u32(q) - u32(z));
    if (q < z) { d = mfrom_mag(0x80000000u, u32(z) - u32(q)); }
    return st(mmul(d, s));
}"
                .to_string(),
            )
        }
        Op::QuantizeBackward(boundary) => {
            float_loader(&mut s, "a", float);
            let inside = match boundary {
                SteBoundary::Exclusive => "P.q_min < r && r < P.q_max",
                SteBoundary::Inclusive => "P.q_min <= r && r <= P.q_max",
            };
            (
                float,
                format!(
                    "fn value(row: u32, col: u32) -> UT {{
    let g = col / P.group;
    let dy = ld_a(P.a_base + row * P.a_stride + col);
    let x = ld_d(P.d_base + row * P.d_stride + col);
    let s = ld_b(P.b_base + row * P.b_stride + g);
    let z = ld_c(P.c_base + row * P.c_stride + g);
    let t = shifted(x, s, z);
    let r = mrne(t);
    var v = MT(0);
    if (!mnan(t) && {inside} && !mzero(s)) {{ v = mdiv(dy, s); }}
    return st(v);
}}"
                ),
            )
        }
        Op::DequantizeBackward => {
            float_loader(&mut s, "a", float);
            (
                float,
                "fn value(row: u32, col: u32) -> UT {
    let g = col / P.group;
    let dy = ld_a(P.a_base + row * P.a_stride + col);
    let s = ld_b(P.b_base + row * P.b_stride + g);
    return st(mmul(dy, s));
}"
                .to_string(),
            )
        }
    };
    if out_kind.is_float() {
        s.push_str(float_storer(out_kind));
        s.push('\n');
    }
    let ut = if out_kind == ElementKind::F64 {
        "u64"
    } else {
        "u32"
    };
    let _ = writeln!(s, "alias UT = {ut};\n{value}");
    s.push_str(&word_main(out_kind));
    s
}

/// The `main` of a per-word program over `value(row, col)`: invocation `w`
/// owns output word `w` of the window (two words for an f64 unit) and
/// writes the units of it that belong to the chunk, keeping the other
/// bits: no two invocations share a word.
pub(crate) fn word_main(out_kind: ElementKind) -> String {
    let mut s = String::new();
    let ub = unit_bytes(out_kind);
    if ub == 8 {
        s.push_str(
            "@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let w = (wid.y * P.wg_x + wid.x) * 256u + lid;
    if (w >= P.n || w < P.out_base) { return; }
    let rel = w - P.out_base;
    let row = rel / P.out_stride;
    let col = rel % P.out_stride;
    if (row >= P.rows || col >= P.out_cols) { return; }
    let v = value(row, col);
    out_buf[2u * w] = u32(v & 0xfffffffflu);
    out_buf[2u * w + 1u] = u32(v >> 32u);
}
",
        );
    } else {
        let per = 4 / ub;
        let unit_mask = if ub == 4 {
            "0xffffffffu".to_string()
        } else {
            format!("{}u", (1u64 << (8 * ub)) - 1)
        };
        let _ = write!(
            s,
            "@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {{
    let w = (wid.y * P.wg_x + wid.x) * 256u + lid;
    if (w >= P.n) {{ return; }}
    var word = 0u;
    var mask = 0u;
    for (var k = 0u; k < {per}u; k = k + 1u) {{
        let u = w * {per}u + k;
        if (u < P.out_base) {{ continue; }}
        let rel = u - P.out_base;
        let row = rel / P.out_stride;
        let col = rel % P.out_stride;
        if (row >= P.rows || col >= P.out_cols) {{ continue; }}
        let sh = k * {bits}u;
        word = word | (value(row, col) << sh);
        mask = mask | ({unit_mask} << sh);
    }}
    if (mask == 0u) {{ return; }}
    if (mask != 0xffffffffu) {{ word = word | (out_buf[w] & ~mask); }}
    out_buf[w] = word;
}}
",
            bits = 8 * ub
        );
    }
    s
}

/// `Unsupported` naming SHADER_INT64 (and why SHADER_F64 is not enough)
/// when `needed` and the device lacks it; `what` names what needs it.
pub(crate) fn require_int64(dev: &WgpuDevice, label: &str, needed: bool, what: &str) -> Result<()> {
    if needed && !dev.has_int64() {
        return Err(Error::Unsupported(format!(
            "{label}: {what} on the device need the wgpu feature SHADER_INT64 (f64 arithmetic is \
             done exactly on the bits in 64-bit integers; SHADER_F64 alone is not enough), which \
             device {:?} lacks",
            dev.info.name
        )));
    }
    Ok(())
}

impl Program {
    /// Compiles (or finds in the device's cache) the program of `op` for
    /// floats of `float` and codes of `code` (`S8` where the op has none).
    /// f64 needs the device's `SHADER_INT64`: `Unsupported` naming it.
    pub fn new(
        dev: &WgpuDevice,
        label: &'static str,
        op: Op,
        float: ElementKind,
        code: ElementKind,
    ) -> Result<Program> {
        let formula = matches!(op, Op::Formula(_));
        require_int64(
            dev,
            label,
            float == ElementKind::F64 || formula,
            "f64, and quantize formulas other than SPEC §3.1's,",
        )?;
        let (out, src) = match op {
            Op::Formula(f) => (code, recipe::formula_source(&f, float, code)),
            Op::Quantize => (code, source(op, float, code)),
            _ => (float, source(op, float, code)),
        };
        Program::compile(dev, label, src, out, false)
    }

    /// A program from WGSL `source` writing units of `out` (per word, or
    /// `per_group`: one invocation per group).
    pub fn compile(
        dev: &WgpuDevice,
        label: &'static str,
        source: String,
        out: ElementKind,
        per_group: bool,
    ) -> Result<Program> {
        Ok(Program {
            pipeline: dev.pipeline(source)?,
            out,
            per_group,
            label,
        })
    }

    /// Enqueues the program over `rows × groups` groups of `group_size`.
    /// `operands` are, in binding order, the output, `a`, `b`, and where the
    /// op has them `c` and `d`. Nothing is enqueued on error.
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue(
        &self,
        dev: &WgpuDevice,
        rows: usize,
        groups: usize,
        group_size: usize,
        q_min: i32,
        q_max: i32,
        operands: &[Operand<'_>],
    ) -> Result<()> {
        self.enqueue_with(
            dev,
            rows,
            groups,
            group_size,
            (q_min, q_max),
            operands,
            None,
        )
    }

    /// [`enqueue`](Self::enqueue) with a whole buffer bound at binding 7.
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue_with(
        &self,
        dev: &WgpuDevice,
        rows: usize,
        groups: usize,
        group_size: usize,
        (q_min, q_max): (i32, i32),
        operands: &[Operand<'_>],
        extra: Option<&wgpu::Buffer>,
    ) -> Result<()> {
        if rows == 0 || groups == 0 {
            return Ok(());
        }
        let limits = dev.device.limits();
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let align = u64::from(limits.min_storage_buffer_offset_alignment).max(8);
        let geos: Vec<Geometry> = operands.iter().map(|o| o.geo).collect();
        let chunks = plan_chunks(self.label, rows, groups, &geos, max_binding, align)?;
        let max_wg = u64::from(limits.max_compute_workgroups_per_dimension).max(1);
        // Bind groups and uniforms for every chunk first: a validation
        // error leaves the queue untouched.
        let layout = self.pipeline.get_bind_group_layout(0);
        let out_ub = unit_bytes(self.out) as u64;
        let (bind_groups, dispatches) = dev.scoped(self.label, || {
            let mut groups_out = Vec::with_capacity(chunks.len());
            let mut dispatches = Vec::with_capacity(chunks.len());
            for c in &chunks {
                let windows: Vec<Window> =
                    operands.iter().map(|o| window(&o.geo, c, align)).collect();
                let out = &windows[0];
                let n_inv = if self.per_group {
                    (c.rows * c.groups) as u64
                } else if out_ub == 8 {
                    (out.end - out.start) / 8
                } else {
                    (out.end - out.start) / 4
                };
                let n_wg = n_inv.div_ceil(u64::from(WORKGROUP));
                let wg_x = n_wg.min(max_wg);
                let wg_y = n_wg.div_ceil(wg_x);
                let mut p = [0u32; 21];
                p[0] = n_inv as u32;
                p[1] = c.rows as u32;
                p[2] = out.base as u32;
                p[3] = out.stride as u32;
                p[4] = out.cols as u32;
                for (k, w) in windows.iter().enumerate().skip(1) {
                    p[3 + 2 * k] = w.base as u32;
                    p[4 + 2 * k] = w.stride as u32;
                }
                p[13] = group_size as u32;
                p[14] = q_min as u32;
                p[15] = q_max as u32;
                p[16] = wg_x as u32;
                p[17] = c.r0 as u32;
                p[18] = c.g0 as u32;
                p[19] = groups as u32;
                p[20] = c.groups as u32;
                let bytes: Vec<u8> = p.iter().flat_map(|v| v.to_le_bytes()).collect();
                let uniform = wgpu::util::DeviceExt::create_buffer_init(
                    &dev.device,
                    &wgpu::util::BufferInitDescriptor {
                        label: Some("groupq params"),
                        contents: &bytes,
                        usage: wgpu::BufferUsages::UNIFORM,
                    },
                );
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: uniform.as_entire_binding(),
                }];
                for (k, (o, w)) in operands.iter().zip(&windows).enumerate() {
                    entries.push(wgpu::BindGroupEntry {
                        binding: k as u32 + 1,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: o.buffer,
                            offset: w.start,
                            size: wgpu::BufferSize::new(w.end - w.start),
                        }),
                    });
                }
                if let Some(b) = extra {
                    entries.push(wgpu::BindGroupEntry {
                        binding: 7,
                        resource: b.as_entire_binding(),
                    });
                }
                groups_out.push(dev.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("groupq"),
                    layout: &layout,
                    entries: &entries,
                }));
                dispatches.push((wg_x as u32, wg_y as u32));
            }
            (groups_out, dispatches)
        })?;
        dev.scoped(self.label, || {
            let mut enc = dev
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("groupq"),
                });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("groupq"),
                    timestamp_writes: None,
                });
                pass.set_pipeline(&self.pipeline);
                for (bg, &(x, y)) in bind_groups.iter().zip(&dispatches) {
                    pass.set_bind_group(0, bg, &[]);
                    pass.dispatch_workgroups(x, y, 1);
                }
            }
            dev.queue.submit([enc.finish()]);
        })
    }
}

/// The first word of `buffer` (`COPY_SRC`), after all queued work.
pub(crate) fn read_u32(dev: &WgpuDevice, buffer: &wgpu::Buffer) -> Result<u32> {
    let b = dev.read(buffer, 0, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// A chunk of the problem: rows `[r0, r0 + rows)`, groups `[g0, g0 + groups)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chunk {
    r0: usize,
    rows: usize,
    g0: usize,
    groups: usize,
}

/// The bound byte range `[start, end)` of one operand for a chunk, and the
/// chunk's first unit, row stride and row length inside it (in units).
#[derive(Debug, Clone, Copy)]
struct Window {
    start: u64,
    end: u64,
    base: u64,
    stride: u64,
    cols: u64,
}

fn window(o: &Geometry, c: &Chunk, align: u64) -> Window {
    let ub = unit_bytes(o.kind) as u64;
    let cols = (c.groups * o.per_group) as u64;
    let first = (o.offset + c.r0 * o.stride + c.g0 * o.per_group) as u64;
    let last = first + (c.rows as u64 - 1) * o.stride as u64 + cols - 1;
    let start = first * ub / align * align;
    let end = ((last + 1) * ub).div_ceil(4) * 4;
    Window {
        start,
        end,
        base: (first * ub - start) / ub,
        stride: if c.rows > 1 { o.stride as u64 } else { cols },
        cols,
    }
}

/// Cuts `rows × groups` into chunks whose every operand window fits one
/// storage binding: as many whole rows as fit, or, when one row does not,
/// runs of groups of one row. `Unsupported` when a single group does not fit.
fn plan_chunks(
    label: &str,
    rows: usize,
    groups: usize,
    operands: &[Geometry],
    max_binding: u64,
    align: u64,
) -> Result<Vec<Chunk>> {
    // Slack for the aligned start and the rounded end of a window, and for
    // 32-bit indices in the shader.
    let limit = max_binding.min(1 << 31).saturating_sub(align + 8);
    let row_bytes = |o: &Geometry, g: usize| (g * o.per_group * unit_bytes(o.kind)) as u64;
    let mut out = Vec::new();
    let fits_row = operands.iter().all(|o| row_bytes(o, groups) <= limit);
    if fits_row {
        let per_chunk = operands
            .iter()
            .map(|o| {
                let pitch = (o.stride * unit_bytes(o.kind)) as u64;
                (limit - row_bytes(o, groups))
                    .checked_div(pitch)
                    .map_or(rows as u64, |n| n + 1)
            })
            .min()
            .unwrap_or(rows as u64)
            .clamp(1, rows as u64) as usize;
        let mut r0 = 0;
        while r0 < rows {
            let n = per_chunk.min(rows - r0);
            out.push(Chunk {
                r0,
                rows: n,
                g0: 0,
                groups,
            });
            r0 += n;
        }
        return Ok(out);
    }
    let per_chunk = operands
        .iter()
        .map(|o| limit / row_bytes(o, 1).max(1))
        .min()
        .unwrap_or(0) as usize;
    if per_chunk == 0 {
        return Err(Error::Unsupported(format!(
            "{label}: one group is larger than the device's largest storage binding ({max_binding} bytes)"
        )));
    }
    let _ = align;
    for r0 in 0..rows {
        let mut g0 = 0;
        while g0 < groups {
            let n = per_chunk.min(groups - g0);
            out.push(Chunk {
                r0,
                rows: 1,
                g0,
                groups: n,
            });
            g0 += n;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(kind: ElementKind, offset: usize, stride: usize, per_group: usize) -> Geometry {
        Geometry {
            kind,
            offset,
            stride,
            per_group,
        }
    }

    /// Chunks cover every group once, in order, and every window fits.
    #[test]
    fn chunks_cover_the_problem_and_fit_the_binding() {
        let cases = [
            (5usize, 4usize, 32usize, 1000u64),
            (7, 3, 16, 300),
            (1, 64, 8, 200),
            (3, 10, 128, 5000),
            (9, 1, 4, 64),
        ];
        for (rows, groups, gs, max_binding) in cases {
            let ops = [
                geo(ElementKind::S8, 3, groups * gs + 5, gs),
                geo(ElementKind::F32, 1, groups * gs, gs),
                geo(ElementKind::F32, 0, groups, 1),
                geo(ElementKind::I32, 2, groups + 1, 1),
            ];
            let align = 8;
            let chunks = plan_chunks("t", rows, groups, &ops, max_binding, align).unwrap();
            let mut seen = vec![0u8; rows * groups];
            for c in &chunks {
                for r in c.r0..c.r0 + c.rows {
                    for g in c.g0..c.g0 + c.groups {
                        seen[r * groups + g] += 1;
                    }
                }
                for o in &ops {
                    let w = window(o, c, align);
                    assert!(w.end - w.start <= max_binding, "{c:?} {o:?} {w:?}");
                    assert_eq!(w.start % align, 0);
                    assert_eq!(w.end % 4, 0);
                }
            }
            assert!(
                seen.iter().all(|&n| n == 1),
                "{rows} {groups} {gs}: {seen:?}"
            );
        }
        let ops = [geo(ElementKind::F32, 0, 64, 64)];
        assert!(matches!(
            plan_chunks("t", 1, 1, &ops, 100, 8),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn sources_are_generated_for_every_op_and_type() {
        for float in [
            ElementKind::F32,
            ElementKind::F16,
            ElementKind::Bf16,
            ElementKind::F64,
        ] {
            for code in [
                ElementKind::S8,
                ElementKind::U8,
                ElementKind::S4,
                ElementKind::U4,
            ] {
                for op in [
                    Op::Quantize,
                    Op::Dequantize,
                    Op::QuantizeBackward(SteBoundary::Exclusive),
                    Op::DequantizeBackward,
                ] {
                    let s = source(op, float, code);
                    assert!(s.contains("fn main"), "{op:?} {float} {code}");
                }
            }
        }
    }
}

/// The soft-float operations alone, against the CPU's IEEE operations on
/// random and special bit patterns (f32 and f64).
#[cfg(test)]
mod soft_tests {
    use super::*;

    /// Runs `expr` (over `a`, `b`: u32 words) for every pair; returns the words.
    fn run(dev: &WgpuDevice, f64: bool, expr: &str, a: &[u32], b: &[u32]) -> Vec<u32> {
        let mut s = String::from(SOFT32);
        if f64 {
            s.push_str(SOFT64);
        }
        let _ = write!(
            s,
            "@group(0) @binding(0) var<storage, read_write> o: array<u32>;
@group(0) @binding(1) var<storage, read> a: array<u32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {{
    let i = id.x;
    _ = b[0];
    if (i >= arrayLength(&o)) {{ return; }}
    o[i] = {expr};
}}"
        );
        let pipeline = dev.pipeline(s).unwrap();
        let make = |data: &[u32], usage| {
            let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            wgpu::util::DeviceExt::create_buffer_init(
                &dev.device,
                &wgpu::util::BufferInitDescriptor {
                    label: None,
                    contents: &bytes,
                    usage,
                },
            )
        };
        let st = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let n = if f64 { a.len() / 2 } else { a.len() };
        let (ba, bb, bo) = (
            make(a, st),
            make(b, st),
            make(&vec![0u32; n * (1 + f64 as usize)], st),
        );
        let bg = dev.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: bo.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: ba.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: bb.as_entire_binding(),
                },
            ],
        });
        let mut enc = dev.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups((bo.size() as u32 / 4).div_ceil(64), 1, 1);
        }
        dev.queue.submit([enc.finish()]);
        let v = dev.read(&bo, 0, bo.size()).unwrap();
        v.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn device() -> Option<WgpuDevice> {
        match crate::device::open_default() {
            Ok(d) => Some(d),
            Err(e) => {
                assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{e}");
                eprintln!("skipping: {e}");
                None
            }
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn canon32(v: f32) -> u32 {
        if v.is_nan() {
            0x7fc0_0000
        } else {
            v.to_bits()
        }
    }
    fn canon64(v: f64) -> u64 {
        if v.is_nan() {
            0x7ff8_0000_0000_0000
        } else {
            v.to_bits()
        }
    }

    /// Bit patterns that decide the arithmetic: raw, near 1, subnormal,
    /// huge, specials.
    fn pattern32(r: u64) -> u32 {
        let specials = [
            0u32,
            0x8000_0000,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0001,
            1,
            0x807f_ffff,
            0x7f7f_ffff,
            0x0080_0000,
        ];
        match r % 6 {
            0 => specials[(r >> 8) as usize % specials.len()],
            1 => (r >> 12) as u32 & 0x807f_ffff,
            2 => ((r >> 12) as u32 & 0x80ff_ffff) | 0x3f00_0000,
            _ => (r >> 16) as u32,
        }
    }
    fn pattern64(r: u64, r2: u64) -> u64 {
        let specials = [
            0u64,
            1 << 63,
            0x7ff0 << 48,
            0xfff0 << 48,
            (0x7ff8 << 48) | 5,
            1,
            0x000f_ffff_ffff_ffff,
            0x7fef_ffff_ffff_ffff,
        ];
        match r % 6 {
            0 => specials[(r >> 8) as usize % specials.len()],
            1 => r2 & 0x800f_ffff_ffff_ffff,
            2 => (r2 & 0x80ff_ffff_ffff_ffff) | (0x3fe << 52),
            _ => r2,
        }
    }

    #[test]
    fn soft_f32_equals_ieee() {
        let Some(dev) = device() else { return };
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let n = 1 << 16;
        let a: Vec<u32> = (0..n).map(|_| pattern32(rng.next())).collect();
        let b: Vec<u32> = (0..n).map(|_| pattern32(rng.next())).collect();
        let fa = |i: usize| f32::from_bits(a[i]);
        let fb = |i: usize| f32::from_bits(b[i]);
        type Cpu<'a> = Box<dyn Fn(usize) -> u32 + 'a>;
        let cases: [(&str, Cpu); 7] = [
            ("f32_div(a[i], b[i])", Box::new(|i| canon32(fa(i) / fb(i)))),
            ("f32_mul(a[i], b[i])", Box::new(|i| canon32(fa(i) * fb(i)))),
            ("f32_add(a[i], b[i])", Box::new(|i| canon32(fa(i) + fb(i)))),
            (
                "u32(f32_rne_i32(a[i]))",
                Box::new(|i| fa(i).round_ties_even() as i32 as u32),
            ),
            (
                "f32_from_i32(bitcast<i32>(a[i]))",
                Box::new(|i| (a[i] as i32 as f32).to_bits()),
            ),
            (
                "f32_to_f16(a[i])",
                Box::new(|i| {
                    let h = half::f16::from_f32(fa(i));
                    if h.is_nan() {
                        0x7e00
                    } else {
                        u32::from(h.to_bits())
                    }
                }),
            ),
            (
                "f32_to_bf16(a[i])",
                Box::new(|i| {
                    let h = half::bf16::from_f32(fa(i));
                    if h.is_nan() {
                        0x7fc0
                    } else {
                        u32::from(h.to_bits())
                    }
                }),
            ),
        ];
        for (expr, cpu) in &cases {
            let got = run(&dev, false, expr, &a, &b);
            let bad: Vec<String> = (0..n)
                .filter(|&i| got[i] != cpu(i))
                .map(|i| {
                    format!(
                        "a {:#x} b {:#x}: {:#x} != {:#x}",
                        a[i],
                        b[i],
                        got[i],
                        cpu(i)
                    )
                })
                .collect();
            assert!(
                bad.is_empty(),
                "{expr}: {} of {n} differ: {:?}",
                bad.len(),
                &bad[..bad.len().min(4)]
            );
        }
        let h: Vec<u32> = (0..=0xffffu32).collect();
        let got = run(&dev, false, "f16_to_f32(a[i])", &h, &h);
        for (&x, &g) in h.iter().zip(&got) {
            assert_eq!(
                g,
                canon32(half::f16::from_bits(x as u16).to_f32()),
                "{x:#x}"
            );
        }
    }

    #[test]
    fn soft_f64_equals_ieee() {
        let Some(dev) = device() else { return };
        if !dev.has_int64() {
            eprintln!("skipping: no SHADER_INT64");
            return;
        }
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let n = 1 << 14;
        let a: Vec<u64> = (0..n).map(|_| pattern64(rng.next(), rng.next())).collect();
        let b: Vec<u64> = (0..n).map(|_| pattern64(rng.next(), rng.next())).collect();
        let words = |v: &[u64]| -> Vec<u32> {
            v.iter()
                .flat_map(|x| [*x as u32, (*x >> 32) as u32])
                .collect()
        };
        let (wa, wb) = (words(&a), words(&b));
        let fa = |i: usize| f64::from_bits(a[i]);
        let fb = |i: usize| f64::from_bits(b[i]);
        type Cpu<'a> = Box<dyn Fn(usize) -> u64 + 'a>;
        let ld = "(u64(a[2u * (i / 2u)]) | (u64(a[2u * (i / 2u) + 1u]) << 32u))";
        let ldb = "(u64(b[2u * (i / 2u)]) | (u64(b[2u * (i / 2u) + 1u]) << 32u))";
        let cases: [(String, Cpu); 4] = [
            (
                format!("f64_div({ld}, {ldb})"),
                Box::new(|i| canon64(fa(i) / fb(i))),
            ),
            (
                format!("f64_mul({ld}, {ldb})"),
                Box::new(|i| canon64(fa(i) * fb(i))),
            ),
            (
                format!("f64_add({ld}, {ldb})"),
                Box::new(|i| canon64(fa(i) + fb(i))),
            ),
            (
                format!("u64(bitcast<u32>(f64_rne_i32({ld})))"),
                Box::new(|i| u64::from(fa(i).round_ties_even() as i32 as u32)),
            ),
        ];
        let mut failures = Vec::new();
        for (expr, cpu) in &cases {
            // Each invocation writes one word: the low word for even i, the
            // high word for odd i.
            let e =
                format!("select(u32({expr} >> 32u), u32({expr} & 0xfffffffflu), (i & 1u) == 0u)");
            let got = run(&dev, true, &e, &wa, &wb);
            let bad: Vec<String> = (0..n)
                .filter_map(|i| {
                    let g = u64::from(got[2 * i]) | (u64::from(got[2 * i + 1]) << 32);
                    (g != cpu(i))
                        .then(|| format!("a {:#x} b {:#x}: {g:#x} != {:#x}", a[i], b[i], cpu(i)))
                })
                .collect();
            if !bad.is_empty() {
                failures.push(format!(
                    "{expr}: {} of {n} differ: {:?}",
                    bad.len(),
                    &bad[..bad.len().min(4)]
                ));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }
}
