//! The plans on arbitrary descriptors, views and values, decoded from
//! bytes: every call returns a typed error or a result, never a panic; the
//! best backend and the scalar oracle agree on both, bit for bit, and an
//! error leaves the output untouched. Shared by the `plans` cargo-fuzz
//! target and the normal test suite (`tests/fuzz_plans.rs`).

use groupq::half::{bf16, f16};
use groupq::recipe::{NonFinitePolicy, Recipe, TorchaoMapping};
use groupq::*;

/// Bytes read in order; zeros once they run out.
pub struct Bytes<'a>(pub &'a [u8]);

impl Bytes<'_> {
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u64(&mut self) -> u64 {
        (0..8).fold(0, |a, i| a | (u64::from(self.u8()) << (8 * i)))
    }
    fn i32(&mut self) -> i32 {
        match self.u8() % 4 {
            0 => i32::MIN,
            1 => i32::MAX,
            _ => i32::from(self.u16() as i16) / 64,
        }
    }
}

/// A view's geometry, decoded: row stride (dense, padded, 0, or
/// overlapping), last-axis stride (mostly 1) and a slice length that may
/// fall short.
struct Geometry {
    stride: [usize; 2],
    len: usize,
}

fn geometry(b: &mut Bytes<'_>, shape: [usize; 2]) -> Geometry {
    let row = match b.u8() % 16 {
        0 => 0,
        1 => shape[1].saturating_sub(1),
        2..=5 => shape[1] + usize::from(b.u8() % 5),
        _ => shape[1],
    };
    let col = if b.u8().is_multiple_of(32) {
        usize::from(b.u8() % 3)
    } else {
        1
    };
    let span = if shape[0] == 0 || shape[1] == 0 {
        0
    } else {
        (shape[0] - 1) * row + (shape[1] - 1) * col + 1
    };
    let len = match b.u8() % 32 {
        0 => span.saturating_sub(1 + usize::from(b.u8() % 3)),
        _ => span + usize::from(b.u8() % 3),
    };
    Geometry {
        stride: [row, col],
        len,
    }
}

fn tref<'a, T>(d: &'a [T], g: &Geometry, shape: [usize; 2]) -> TensorRef<'a, T, 2> {
    TensorRef {
        data: d,
        shape,
        stride: g.stride,
    }
}

fn values<T: DeviceElement>(b: &mut Bytes<'_>, n: usize) -> Vec<T> {
    let pool: Vec<u64> = (0..8).map(|_| b.u64()).collect();
    (0..n)
        .map(|i| {
            let bits = pool[i % 8].rotate_left((i / 8) as u32 * 7);
            T::load_le(&bits.to_le_bytes()[..T::BYTES])
        })
        .collect()
}

/// Floats: mostly finite values of every magnitude, some raw bit patterns
/// (NaN payloads, infinities, subnormals).
fn floats<T: Element>(b: &mut Bytes<'_>, n: usize) -> Vec<T> {
    let pool: Vec<u64> = (0..8).map(|_| b.u64()).collect();
    (0..n)
        .map(|i| {
            let bits = pool[i % 8].rotate_left((i / 8) as u32 * 7);
            if bits.is_multiple_of(8) {
                T::load_le(&bits.to_le_bytes()[..T::BYTES])
            } else {
                let m = f64::from((bits >> 16) as i32) / 1024.0;
                T::from_f64(m * 2f64.powi((bits % 32) as i32 - 16))
            }
        })
        .collect()
}

fn presets() -> [Recipe; 8] {
    [
        Recipe::torch_per_token_asymmetric_int8(),
        Recipe::torchao(TorchaoMapping::Asymmetric, 0, 15),
        Recipe::compressed_tensors_w4a16(),
        Recipe::gptq(false, 4),
        Recipe::awq(true, 4),
        Recipe::awq_f16(false, 4),
        Recipe::gguf_q4_0(),
        Recipe::gguf_q4_1(),
    ]
}

/// The outcome of one run: the output's bytes, or the error.
type Outcome = std::result::Result<Vec<u8>, Error>;

fn bytes_of<T: DeviceElement>(v: &[T]) -> Vec<u8> {
    let mut out = vec![0u8; v.len() * T::BYTES];
    for (x, o) in v.iter().zip(out.chunks_exact_mut(T::BYTES)) {
        x.store_le(o);
    }
    out
}

fn on<T: Element, Q: IntElement>(b: &mut Bytes<'_>) -> bool {
    let op = b.u8() % 6;
    let outer = usize::from(b.u8() % 7);
    let gs = match b.u8() % 8 {
        0 => 0,
        1 => usize::from(b.u8()),
        _ => [1, 2, 4, 8, 32, 64][usize::from(b.u8() % 6)],
    };
    // Mostly whole groups, sometimes any length.
    let axis = match b.u8() % 4 {
        0 => usize::from(b.u16() % 300),
        _ => gs.max(1) * usize::from(b.u8() % 6),
    };
    let (q_min, q_max) = if b.u8().is_multiple_of(4) {
        (b.i32(), b.i32())
    } else {
        (Q::MIN, Q::MAX)
    };
    let groups = axis.checked_div(gs).unwrap_or(0);
    let data_shape = [outer, axis];
    let param_shape = [outer, groups];
    let code_shape = [outer, axis / Q::PACK];
    let geos: Vec<Geometry> = [data_shape, data_shape, param_shape, param_shape, code_shape]
        .iter()
        .map(|&s| geometry(b, s))
        .collect();
    let x: Vec<T> = floats(b, geos[0].len);
    let dy: Vec<T> = floats(b, geos[1].len);
    let s: Vec<T> = floats(b, geos[2].len);
    let z: Vec<i32> = values(b, geos[3].len);
    let codes: Vec<Q> = values(b, geos[4].len);
    let recipe = {
        let r = presets()[usize::from(b.u8() % 8)];
        if b.u8().is_multiple_of(2) {
            r.with_non_finite(NonFinitePolicy::Propagate)
        } else {
            r
        }
    };
    let boundary = if b.u8().is_multiple_of(2) {
        SteBoundary::Exclusive
    } else {
        SteBoundary::Inclusive
    };
    let run = |pref: PlanPreference| -> Outcome {
        // One pool for every run (a pool per run costs more than the run).
        static STREAM: std::sync::OnceLock<Stream> = std::sync::OnceLock::new();
        let stream = STREAM
            .get_or_init(|| Stream::cpu_with_threads(2).unwrap())
            .clone();
        match op {
            0 => {
                let desc = QuantizePerGroupDescriptor {
                    outer_size: outer,
                    axis_size: axis,
                    group_size: gs,
                    q_min,
                    q_max,
                    input_element: T::KIND,
                    output_element: Q::KIND,
                };
                let plan = QuantizePerGroupPlan::<T, Q>::select(&stream, &desc, pref)?;
                let (shape, stride) = (code_shape, geos[4].stride);
                let mut out: Vec<Q> = values(&mut Bytes(&[7; 64]), geos[4].len);
                let before = bytes_of(&out);
                let res = plan.run(
                    &stream,
                    Workspace::None,
                    QuantizePerGroupArgs {
                        input: tref(&x, &geos[0], data_shape),
                        scale: tref(&s, &geos[2], param_shape),
                        zero_point: TensorRef {
                            data: &z,
                            shape: param_shape,
                            stride: geos[3].stride,
                        },
                        output: TensorMut {
                            data: &mut out,
                            shape,
                            stride,
                        },
                    },
                );
                after(res, before, bytes_of(&out))
            }
            1 => {
                let desc = DequantizePerGroupDescriptor {
                    outer_size: outer,
                    axis_size: axis,
                    group_size: gs,
                    input_element: Q::KIND,
                    output_element: T::KIND,
                };
                let plan = DequantizePerGroupPlan::<Q, T>::select(&stream, &desc, pref)?;
                let mut out: Vec<T> = values(&mut Bytes(&[7; 64]), geos[1].len);
                let before = bytes_of(&out);
                let res = plan.run(
                    &stream,
                    Workspace::None,
                    DequantizePerGroupArgs {
                        input: TensorRef {
                            data: &codes,
                            shape: code_shape,
                            stride: geos[4].stride,
                        },
                        scale: tref(&s, &geos[2], param_shape),
                        zero_point: TensorRef {
                            data: &z,
                            shape: param_shape,
                            stride: geos[3].stride,
                        },
                        output: TensorMut {
                            data: &mut out,
                            shape: data_shape,
                            stride: geos[1].stride,
                        },
                    },
                );
                after(res, before, bytes_of(&out))
            }
            2 => {
                let desc = QuantizePerGroupBackwardDescriptor {
                    outer_size: outer,
                    axis_size: axis,
                    group_size: gs,
                    q_min,
                    q_max,
                    input_element: T::KIND,
                    boundary,
                };
                let plan = QuantizePerGroupBackwardPlan::<T>::select(&stream, &desc, pref)?;
                let mut out: Vec<T> = values(&mut Bytes(&[7; 64]), geos[1].len);
                let before = bytes_of(&out);
                let res = plan.run(
                    &stream,
                    Workspace::None,
                    QuantizePerGroupBackwardArgs {
                        grad_output: tref(&dy, &geos[1], data_shape),
                        input: tref(&x, &geos[0], data_shape),
                        scale: tref(&s, &geos[2], param_shape),
                        zero_point: TensorRef {
                            data: &z,
                            shape: param_shape,
                            stride: geos[3].stride,
                        },
                        grad_input: TensorMut {
                            data: &mut out,
                            shape: data_shape,
                            stride: geos[1].stride,
                        },
                    },
                );
                after(res, before, bytes_of(&out))
            }
            3 => {
                let desc = DequantizePerGroupBackwardDescriptor {
                    outer_size: outer,
                    axis_size: axis,
                    group_size: gs,
                };
                let plan = DequantizePerGroupBackwardPlan::<Q, T>::select(&stream, &desc, pref)?;
                let mut out: Vec<T> = values(&mut Bytes(&[7; 64]), geos[0].len);
                let before = bytes_of(&out);
                let res = plan.run(
                    &stream,
                    Workspace::None,
                    DequantizePerGroupBackwardArgs {
                        grad_output: tref(&dy, &geos[1], data_shape),
                        scale: tref(&s, &geos[2], param_shape),
                        grad_input: TensorMut {
                            data: &mut out,
                            shape: data_shape,
                            stride: geos[0].stride,
                        },
                    },
                );
                after(res, before, bytes_of(&out))
            }
            _ => {
                let desc = QuantizeDynamicPerGroupDescriptor {
                    outer_size: outer,
                    axis_size: axis,
                    group_size: gs,
                    recipe,
                    input_element: T::KIND,
                    scale_element: T::KIND,
                    output_element: Q::KIND,
                };
                let plan = QuantizeDynamicPerGroupPlan::<T, T, Q>::select(&stream, &desc, pref)?;
                let mut sc: Vec<T> = values(&mut Bytes(&[7; 64]), geos[2].len);
                let mut zp: Vec<i32> = values(&mut Bytes(&[7; 64]), geos[3].len);
                let mut q: Vec<Q> = values(&mut Bytes(&[7; 64]), geos[4].len);
                let mut m: Vec<T> = values(&mut Bytes(&[7; 64]), geos[2].len);
                let before = [bytes_of(&sc), bytes_of(&zp), bytes_of(&q), bytes_of(&m)].concat();
                let args = QuantizeDynamicPerGroupArgs {
                    input: tref(&x, &geos[0], data_shape),
                    scale: TensorMut {
                        data: &mut sc,
                        shape: param_shape,
                        stride: geos[2].stride,
                    },
                    zero_point: TensorMut {
                        data: &mut zp,
                        shape: param_shape,
                        stride: geos[3].stride,
                    },
                    output: TensorMut {
                        data: &mut q,
                        shape: code_shape,
                        stride: geos[4].stride,
                    },
                };
                let res = if op == 4 {
                    plan.run(&stream, Workspace::None, args)
                } else {
                    let offset = TensorMut {
                        data: &mut m,
                        shape: param_shape,
                        stride: geos[2].stride,
                    };
                    plan.run_with_offset(&stream, Workspace::None, args, offset)
                };
                after(
                    res,
                    before,
                    [bytes_of(&sc), bytes_of(&zp), bytes_of(&q), bytes_of(&m)].concat(),
                )
            }
        }
    };
    let scalar = run(PlanPreference {
        prefer_backend: Some(BackendKind::Scalar),
        ..Default::default()
    });
    let best = run(PlanPreference::default());
    assert_eq!(
        best,
        scalar,
        "op {op} {}→{} {outer}×{axis}/{gs}",
        T::KIND,
        Q::KIND
    );
    best.is_ok()
}

/// An error must leave the output as it was.
fn after(res: Result<()>, before: Vec<u8>, now: Vec<u8>) -> Outcome {
    match res {
        Ok(()) => Ok(now),
        Err(e) => {
            assert_eq!(before, now, "{e}: the output was written");
            Err(e)
        }
    }
}

/// The affine plans (f32 values and scales, i8 codes) on an arbitrary
/// rank-`R` problem: every call a typed error (nothing written) or a
/// result; one and two threads agree; SPEC's formula per group of the last
/// axis of a dense matrix equals `QuantizePerGroupPlan`.
fn affine_on<const R: usize>(b: &mut Bytes<'_>) -> bool {
    use groupq::affine::{AffineFormula, Granularity, Shape};
    let mut dims: [usize; R] = std::array::from_fn(|_| usize::from(b.u8() % 6));
    // A long last axis now and then, so that runs sharing a parameter reach
    // the vector kernels.
    if R > 0 && b.u8().is_multiple_of(3) {
        dims[R - 1] = 16 + usize::from(b.u8() % 48);
    }
    let pick_axis = |b: &mut Bytes<'_>| usize::from(b.u8()) % (R + 1);
    let granularity = match b.u8() % 5 {
        0 => Granularity::PerTensor,
        1 => Granularity::PerChannel { axis: pick_axis(b) },
        2 => Granularity::PerToken,
        3 => Granularity::PerGroup {
            axis: pick_axis(b),
            group_size: usize::from(b.u8() % 5),
        },
        _ => {
            let mut blk = [1; groupq::affine::MAX_RANK];
            for v in blk.iter_mut().take(R) {
                *v = usize::from(b.u8() % 4);
            }
            Granularity::Blocks(blk)
        }
    };
    let formula = [
        AffineFormula::SPEC,
        AffineFormula::TORCH_DECOMPOSED,
        AffineFormula::TORCH_QUANTIZE_PER_TENSOR,
        AffineFormula::TORCH_FAKE_QUANTIZE_PER_TENSOR,
        AffineFormula::TORCH_FAKE_QUANTIZE_PER_CHANNEL,
        AffineFormula::TORCH_FAKE_QUANTIZE_PER_CHANNEL_FLOAT_ZERO_POINT,
        AffineFormula::TORCH_DECOMPOSED_FAKE_QUANT,
        AffineFormula::TORCH_PER_TOKEN,
        AffineFormula::TORCH_PER_TOKEN_F32,
    ][usize::from(b.u8() % 9)];
    let (q_min, q_max) = if b.u8().is_multiple_of(4) {
        (b.i32(), b.i32())
    } else {
        (-128, 127)
    };
    // Strides: dense, padded, zero or arbitrary; lengths that may fall short.
    let view = |b: &mut Bytes<'_>| -> ([usize; R], usize) {
        let mut stride = [0usize; R];
        let mut acc = 1usize;
        for d in (0..R).rev() {
            stride[d] = match b.u8() % 8 {
                0 => 0,
                1 => usize::from(b.u8() % 7),
                _ => acc,
            };
            acc = acc.saturating_mul(dims[d].max(1)) + usize::from(b.u8() % 2);
        }
        let span = if dims.contains(&0) {
            0
        } else {
            1 + (0..R).map(|d| (dims[d] - 1) * stride[d]).sum::<usize>()
        };
        let len = match b.u8() % 8 {
            0 => span.saturating_sub(1),
            _ => span,
        };
        (stride, len.min(4096))
    };
    let (in_stride, in_len) = view(b);
    let (out_stride, out_len) = view(b);
    let shape = match Shape::new(&dims) {
        Ok(s) => s,
        Err(_) => return false,
    };
    let nparams = granularity
        .param_shape(&shape)
        .ok()
        .and_then(|p| p.numel())
        .unwrap_or(0);
    let plen = match b.u8() % 8 {
        0 => nparams + 1,
        1 => nparams.saturating_sub(1),
        _ => nparams,
    }
    .min(4096);
    let x: Vec<f32> = floats(b, in_len);
    let dy: Vec<f32> = floats(b, in_len);
    let s: Vec<f32> = floats(b, plen);
    let zi: Vec<i32> = (0..plen).map(|_| b.i32()).collect();
    let zf: Vec<f32> = floats(b, plen);
    let codes: Vec<i8> = values(b, in_len);
    let zp_kind = b.u8() % 3;
    let op = b.u8() % 4;
    let zp = || match zp_kind {
        0 => ZeroPoints::None,
        1 => ZeroPoints::Int(&zi),
        _ => ZeroPoints::Float(&zf),
    };
    let run = |threads: usize, pref: PlanPreference| -> (Result<()>, Vec<u8>, Vec<u8>) {
        let stream = Stream::cpu_with_threads(threads).unwrap();
        let mut out = vec![0x5au8; out_len * 4];
        let mut mask = vec![false; out_len];
        let before = out.clone();
        let res = (|| -> Result<()> {
            let ov = |o: &mut Vec<u8>| -> Vec<f32> {
                o.chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            };
            match op {
                0 => {
                    let desc = QuantizeAffineDescriptor {
                        shape,
                        granularity,
                        q_min,
                        q_max,
                        formula,
                        input_element: ElementKind::F32,
                        scale_element: ElementKind::F32,
                        output_element: ElementKind::S8,
                    };
                    let plan = QuantizeAffinePlan::<f32, f32, i8>::select(&stream, &desc, pref)?;
                    let mut q = vec![0x5ai8; out_len];
                    let r = plan.run(
                        &stream,
                        Workspace::None,
                        QuantizeAffineArgs {
                            input: TensorRef {
                                data: &x,
                                shape: dims,
                                stride: in_stride,
                            },
                            scale: &s,
                            zero_point: zp(),
                            output: TensorMut {
                                data: &mut q,
                                shape: dims,
                                stride: out_stride,
                            },
                        },
                    );
                    out = q.iter().map(|&c| c as u8).collect();
                    if r.is_err() {
                        assert!(q.iter().all(|&c| c == 0x5a), "written on error");
                    }
                    r
                }
                1 => {
                    let desc = DequantizeAffineDescriptor {
                        shape,
                        granularity,
                        formula,
                        input_element: ElementKind::S8,
                        scale_element: ElementKind::F32,
                        output_element: ElementKind::F32,
                    };
                    let plan = DequantizeAffinePlan::<i8, f32, f32>::select(&stream, &desc, pref)?;
                    let mut y = ov(&mut out);
                    let r = plan.run(
                        &stream,
                        Workspace::None,
                        DequantizeAffineArgs {
                            input: TensorRef {
                                data: &codes,
                                shape: dims,
                                stride: in_stride,
                            },
                            scale: &s,
                            zero_point: zp(),
                            output: TensorMut {
                                data: &mut y,
                                shape: dims,
                                stride: out_stride,
                            },
                        },
                    );
                    out = y.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
                    r
                }
                _ => {
                    let desc = FakeQuantizeAffineDescriptor {
                        shape,
                        granularity,
                        q_min,
                        q_max,
                        formula,
                        element: ElementKind::F32,
                        scale_element: ElementKind::F32,
                    };
                    let mut y = ov(&mut out);
                    let r = if op == 2 {
                        let plan =
                            FakeQuantizeAffinePlan::<f32, f32>::select(&stream, &desc, pref)?;
                        plan.run(
                            &stream,
                            Workspace::None,
                            FakeQuantizeAffineArgs {
                                input: TensorRef {
                                    data: &x,
                                    shape: dims,
                                    stride: in_stride,
                                },
                                scale: &s,
                                zero_point: zp(),
                                output: TensorMut {
                                    data: &mut y,
                                    shape: dims,
                                    stride: out_stride,
                                },
                                mask: Some(TensorMut {
                                    data: &mut mask,
                                    shape: dims,
                                    stride: out_stride,
                                }),
                            },
                        )
                    } else {
                        let plan = FakeQuantizeAffineBackwardPlan::<f32, f32>::select(
                            &stream, &desc, pref,
                        )?;
                        plan.run(
                            &stream,
                            Workspace::None,
                            FakeQuantizeAffineBackwardArgs {
                                grad_output: TensorRef {
                                    data: &dy,
                                    shape: dims,
                                    stride: in_stride,
                                },
                                input: TensorRef {
                                    data: &x,
                                    shape: dims,
                                    stride: in_stride,
                                },
                                scale: &s,
                                zero_point: zp(),
                                grad_input: TensorMut {
                                    data: &mut y,
                                    shape: dims,
                                    stride: out_stride,
                                },
                            },
                        )
                    };
                    out = y.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
                    r
                }
            }
        })();
        if let Err(e) = &res {
            if op != 0 {
                assert_eq!(before, out, "{e}: the output was written");
            }
            assert!(mask.iter().all(|&m| !m), "{e}: the mask was written");
        }
        let m: Vec<u8> = mask.iter().map(|&v| u8::from(v)).collect();
        (res, out, m)
    };
    let (r1, o1, m1) = run(1, PlanPreference::default());
    let (r2, o2, m2) = run(2, PlanPreference::default());
    assert_eq!(r1.is_ok(), r2.is_ok(), "{r1:?} vs {r2:?}");
    if r1.is_ok() {
        assert_eq!(o1, o2, "one and two threads differ");
        assert_eq!(m1, m2, "masks differ");
        // The scalar element core alone gives the best backend's bits.
        let scalar = PlanPreference {
            prefer_backend: Some(BackendKind::Scalar),
            ..Default::default()
        };
        let (r3, o3, m3) = run(2, scalar);
        assert!(r3.is_ok(), "{r3:?}");
        assert_eq!(o1, o3, "the scalar core and the vector backend differ");
        assert_eq!(m1, m3, "masks differ from the scalar core's");
    }
    // SPEC per group of the last axis of a dense matrix: the per-group plan.
    if let (
        Ok(()),
        0,
        2,
        AffineFormula::SPEC,
        Granularity::PerGroup {
            axis: 1,
            group_size,
        },
        1,
    ) = (&r1, op, R, formula, granularity, zp_kind)
    {
        if in_stride[..] == [dims[1], 1] && out_stride == in_stride && q_min >= -128 && q_max <= 127
        {
            let stream = Stream::cpu_with_threads(1).unwrap();
            let desc = QuantizePerGroupDescriptor {
                outer_size: dims[0],
                axis_size: dims[1],
                group_size,
                q_min,
                q_max,
                input_element: ElementKind::F32,
                output_element: ElementKind::S8,
            };
            let plan = QuantizePerGroupPlan::<f32, i8>::select(&stream, &desc, Default::default())
                .unwrap();
            let mut q = vec![0i8; dims[0] * dims[1]];
            let groups = dims[1] / group_size;
            plan.run(
                &stream,
                Workspace::None,
                QuantizePerGroupArgs {
                    input: TensorRef::new(&x[..dims[0] * dims[1]], [dims[0], dims[1]]).unwrap(),
                    scale: TensorRef::new(&s[..dims[0] * groups], [dims[0], groups]).unwrap(),
                    zero_point: TensorRef::new(&zi[..dims[0] * groups], [dims[0], groups]).unwrap(),
                    output: TensorMut::new(&mut q, [dims[0], dims[1]]).unwrap(),
                },
            )
            .unwrap();
            let per_group: Vec<u8> = q.iter().map(|&c| c as u8).collect();
            assert_eq!(
                per_group,
                o1[..per_group.len()],
                "the affine SPEC path and QuantizePerGroupPlan differ"
            );
        }
    }
    r1.is_ok()
}

/// One fuzz input; whether the plan ran (rather than returned an error).
pub fn run(data: &[u8]) -> bool {
    let mut b = Bytes(data);
    if data.first().is_some_and(|&f| f >= 0xf0) {
        b.u8();
        return match b.u8() % 3 {
            0 => affine_on::<1>(&mut b),
            1 => affine_on::<2>(&mut b),
            _ => affine_on::<3>(&mut b),
        };
    }
    match b.u8() % 16 {
        0 => on::<f32, i8>(&mut b),
        1 => on::<f32, u8>(&mut b),
        2 => on::<f32, S4>(&mut b),
        3 => on::<f32, U4>(&mut b),
        4 => on::<f64, i8>(&mut b),
        5 => on::<f64, u8>(&mut b),
        6 => on::<f64, S4>(&mut b),
        7 => on::<f64, U4>(&mut b),
        8 => on::<f16, i8>(&mut b),
        9 => on::<f16, u8>(&mut b),
        10 => on::<f16, S4>(&mut b),
        11 => on::<f16, U4>(&mut b),
        12 => on::<bf16, i8>(&mut b),
        13 => on::<bf16, u8>(&mut b),
        14 => on::<bf16, S4>(&mut b),
        _ => on::<bf16, U4>(&mut b),
    }
}
