//! The device stream the tests share, and the plans run on it with host
//! data in and out (feature `wgpu`).
#![allow(dead_code)]

use groupq::recipe::QuantizeFormula;
use groupq::*;
use std::sync::OnceLock;

/// The shared device stream, or `None` (skip, with a message naming what to
/// install) without an adapter; with `CI=true` a missing adapter fails.
pub fn gpu() -> Option<&'static Stream> {
    static STREAM: OnceLock<Option<Stream>> = OnceLock::new();
    STREAM
        .get_or_init(|| match Stream::wgpu() {
            Ok(s) => {
                eprintln!("GPU tests on {:?}", s.device_name().unwrap_or_default());
                Some(s)
            }
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("CI needs a GPU adapter for the device tests: {e}")
            }
            Err(e) => {
                eprintln!("skipping GPU tests: {e}");
                None
            }
        })
        .as_ref()
}

/// Little-endian bytes of elements, for bit-for-bit comparisons.
pub fn bytes<T: DeviceElement>(v: &[T]) -> Vec<u8> {
    let mut out = vec![0u8; v.len() * T::BYTES];
    for (x, o) in v.iter().zip(out.chunks_exact_mut(T::BYTES)) {
        x.store_le(o);
    }
    out
}

/// What a dynamic plan wrote: scale, zero point, codes, offset.
pub type Dynamic<S, Q> = (Vec<S>, Vec<i32>, Vec<Q>, Vec<S>);

/// The dynamic plan on the device: `(scale, zero_point, codes, offset)`
/// (offsets written when `with_offset`).
pub fn dynamic<T: Element, S: Element, Q: IntElement>(
    gpu: &Stream,
    desc: &QuantizeDynamicPerGroupDescriptor,
    x: &[T],
    with_offset: bool,
) -> Result<Dynamic<S, Q>> {
    let (m, k, g) = (desc.outer_size, desc.axis_size, desc.num_groups());
    let plan = QuantizeDynamicPerGroupPlan::<T, S, Q>::select(gpu, desc, Default::default())?;
    assert_eq!(plan.sku().backend, BackendKind::Wgpu);
    let dx = DeviceBuffer::from_slice(gpu, x)?;
    let mut ds = DeviceBuffer::<S>::zeros(gpu, m * g)?;
    let mut dz = DeviceBuffer::<i32>::zeros(gpu, m * g)?;
    let mut dq = DeviceBuffer::<Q>::zeros(gpu, m * k / Q::PACK)?;
    let mut dm = DeviceBuffer::<S>::zeros(gpu, m * g)?;
    let args = QuantizeDynamicPerGroupDeviceArgs {
        input: dx.view([m, k])?,
        scale: ds.view_mut([m, g])?,
        zero_point: dz.view_mut([m, g])?,
        output: dq.view_mut([m, k / Q::PACK])?,
    };
    if with_offset {
        plan.run_device_with_offset(gpu, Workspace::None, args, dm.view_mut([m, g])?)?;
    } else {
        plan.run_device(gpu, Workspace::None, args)?;
    }
    Ok((
        ds.to_vec(gpu)?,
        dz.to_vec(gpu)?,
        dq.to_vec(gpu)?,
        dm.to_vec(gpu)?,
    ))
}

/// The dequantize plan on the device.
pub fn dequantize<Q: IntElement, O: Element>(
    gpu: &Stream,
    desc: &DequantizePerGroupDescriptor,
    q: &[Q],
    s: &[O],
    z: &[i32],
) -> Result<Vec<O>> {
    let (m, k, g) = (desc.outer_size, desc.axis_size, desc.num_groups());
    let plan = DequantizePerGroupPlan::<Q, O>::select(gpu, desc, Default::default())?;
    let (dq, ds, dz) = (
        DeviceBuffer::from_slice(gpu, q)?,
        DeviceBuffer::from_slice(gpu, s)?,
        DeviceBuffer::from_slice(gpu, z)?,
    );
    let mut dy = DeviceBuffer::<O>::zeros(gpu, m * k)?;
    plan.run_device(
        gpu,
        Workspace::None,
        DequantizePerGroupDeviceArgs {
            input: dq.view([m, k / Q::PACK])?,
            scale: ds.view([m, g])?,
            zero_point: dz.view([m, g])?,
            output: dy.view_mut([m, k])?,
        },
    )?;
    dy.to_vec(gpu)
}

/// The forward plan with `formula` on the device.
pub fn quantize<T: Element, Q: IntElement>(
    gpu: &Stream,
    desc: &QuantizePerGroupDescriptor,
    formula: QuantizeFormula,
    x: &[T],
    s: &[T],
    z: &[i32],
) -> Result<Vec<Q>> {
    let (m, k, g) = (desc.outer_size, desc.axis_size, desc.num_groups());
    let plan =
        QuantizePerGroupPlan::<T, Q>::select_with_formula(gpu, desc, formula, Default::default())?;
    let (dx, ds, dz) = (
        DeviceBuffer::from_slice(gpu, x)?,
        DeviceBuffer::from_slice(gpu, s)?,
        DeviceBuffer::from_slice(gpu, z)?,
    );
    let mut dq = DeviceBuffer::<Q>::zeros(gpu, m * k / Q::PACK)?;
    plan.run_device(
        gpu,
        Workspace::None,
        QuantizePerGroupDeviceArgs {
            input: dx.view([m, k])?,
            scale: ds.view([m, g])?,
            zero_point: dz.view([m, g])?,
            output: dq.view_mut([m, k / Q::PACK])?,
        },
    )?;
    dq.to_vec(gpu)
}
