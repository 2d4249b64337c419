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

/// One fuzz input; whether the plan ran (rather than returned an error).
pub fn run(data: &[u8]) -> bool {
    let mut b = Bytes(data);
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
