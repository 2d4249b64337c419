//! Tensors in device memory (feature `wgpu`): [`DeviceBuffer`], a typed
//! buffer on a device stream's device, and the views plans read and write,
//! [`DeviceTensorRef`] and [`DeviceTensorMut`] (shape and strides in
//! elements, like [`TensorRef`](crate::TensorRef)).

use crate::device::WgpuDevice;
use crate::element::DeviceElement;
use crate::error::{Error, Result};
use crate::stream::Stream;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// A typed buffer of `len` elements in a device stream's memory.
///
/// Created from a host slice ([`from_slice`](Self::from_slice)) or zeroed
/// ([`zeros`](Self::zeros)), read back with [`to_vec`](Self::to_vec) (which
/// waits for the stream's queued work), and viewed as a tensor with
/// [`view`](Self::view) / [`view_mut`](Self::view_mut). The wgpu buffer is
/// [`as_wgpu`](Self::as_wgpu), for interop with other wgpu code; it is
/// allocated in whole 4-byte words.
///
/// ```no_run
/// use groupq::{DeviceBuffer, Stream};
/// let stream = Stream::wgpu()?;
/// let x = DeviceBuffer::from_slice(&stream, &[1.0f32, 2.0, 3.0, 4.0])?;
/// let view = x.view([2, 2])?;
/// assert_eq!(view.shape, [2, 2]);
/// assert_eq!(x.to_vec(&stream)?, [1.0, 2.0, 3.0, 4.0]);
/// # Ok::<(), groupq::Error>(())
/// ```
pub struct DeviceBuffer<T> {
    pub(crate) dev: Arc<WgpuDevice>,
    pub(crate) buffer: wgpu::Buffer,
    len: usize,
    types: PhantomData<fn() -> T>,
}

fn device_of(stream: &Stream, what: &str) -> Result<Arc<WgpuDevice>> {
    stream.device().cloned().ok_or_else(|| {
        Error::Unsupported(format!(
            "{what}: the stream is a CPU stream; device buffers need a wgpu stream (Stream::wgpu)"
        ))
    })
}

impl<T: DeviceElement> DeviceBuffer<T> {
    /// An uninitialised-free buffer of `len` zero elements on the stream's device.
    /// `Unsupported` when the bytes exceed the device's `max_buffer_size`.
    pub fn zeros(stream: &Stream, len: usize) -> Result<Self> {
        let dev = device_of(stream, "DeviceBuffer::zeros")?;
        Self::allocate(dev, len)
    }

    /// A buffer holding a copy of `data` (queued on the stream: it is in
    /// place before any work enqueued after this call).
    pub fn from_slice(stream: &Stream, data: &[T]) -> Result<Self> {
        let dev = device_of(stream, "DeviceBuffer::from_slice")?;
        let buf = Self::allocate(dev, data.len())?;
        buf.upload(0, data)?;
        Ok(buf)
    }

    fn allocate(dev: Arc<WgpuDevice>, len: usize) -> Result<Self> {
        let bytes = len
            .checked_mul(T::BYTES)
            .and_then(|b| b.checked_add(3))
            .map(|b| (b / 4 * 4).max(4) as u64)
            .ok_or_else(|| {
                Error::InvalidProblem(format!(
                    "DeviceBuffer: {len} elements of {} overflow usize",
                    T::DEVICE_KIND
                ))
            })?;
        let max = dev.device.limits().max_buffer_size;
        if bytes > max {
            return Err(Error::Unsupported(format!(
                "DeviceBuffer: {len} elements of {} need {bytes} bytes, more than the device's max_buffer_size {max}",
                T::DEVICE_KIND
            )));
        }
        let buffer = dev.scoped("DeviceBuffer: allocating", || {
            dev.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("groupq tensor"),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        Ok(DeviceBuffer {
            dev,
            buffer,
            len,
            types: PhantomData,
        })
    }

    /// Wraps an existing wgpu buffer of `stream`'s device holding `len`
    /// elements. It needs `STORAGE`, `COPY_SRC` and `COPY_DST` usage and
    /// at least `len` elements rounded up to whole 4-byte words.
    pub fn from_wgpu(stream: &Stream, buffer: wgpu::Buffer, len: usize) -> Result<Self> {
        let dev = device_of(stream, "DeviceBuffer::from_wgpu")?;
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        if !buffer.usage().contains(usage) {
            return Err(Error::InvalidProblem(format!(
                "DeviceBuffer::from_wgpu: the buffer's usage {:?} lacks STORAGE | COPY_SRC | COPY_DST",
                buffer.usage()
            )));
        }
        let needed = len
            .checked_mul(T::BYTES)
            .and_then(|b| b.checked_add(3))
            .map(|b| b / 4 * 4)
            .unwrap_or(usize::MAX) as u64;
        if buffer.size() < needed {
            return Err(Error::InvalidProblem(format!(
                "DeviceBuffer::from_wgpu: {len} elements of {} need {needed} bytes, the buffer has {}",
                T::DEVICE_KIND,
                buffer.size()
            )));
        }
        Ok(DeviceBuffer {
            dev,
            buffer,
            len,
            types: PhantomData,
        })
    }

    /// Replaces the elements from `offset` on with `data` (queued on the
    /// stream, like any work). `BufferTooSmall` when they do not fit.
    pub fn write(&mut self, stream: &Stream, offset: usize, data: &[T]) -> Result<()> {
        self.check_stream(stream, "DeviceBuffer::write")?;
        self.upload(offset, data)
    }

    fn upload(&self, offset: usize, data: &[T]) -> Result<()> {
        let end = offset.saturating_add(data.len());
        if end > self.len {
            return Err(Error::BufferTooSmall {
                needed: end,
                got: self.len,
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        // wgpu writes whole words: widen the range to them, keeping the
        // neighbouring bytes of a 1- or 2-byte element type.
        let (b0, b1) = (offset * T::BYTES, end * T::BYTES);
        let (w0, w1) = (b0 / 4 * 4, b1.div_ceil(4) * 4);
        let mut bytes = vec![0u8; w1 - w0];
        if (w0, w1) != (b0, b1) {
            let old = self.read_bytes(w0, w1)?;
            bytes.copy_from_slice(&old);
        }
        for (v, out) in data.iter().zip(bytes[b0 - w0..].chunks_exact_mut(T::BYTES)) {
            v.store_le(out);
        }
        self.dev.scoped("DeviceBuffer: writing", || {
            self.dev.queue.write_buffer(&self.buffer, w0 as u64, &bytes)
        })
    }

    /// The bytes `[b0, b1)` (whole words) of the buffer, after all queued work.
    fn read_bytes(&self, b0: usize, b1: usize) -> Result<Vec<u8>> {
        self.dev.read(&self.buffer, b0 as u64, b1 as u64)
    }

    /// The elements, after all work queued on the stream so far.
    pub fn to_vec(&self, stream: &Stream) -> Result<Vec<T>> {
        self.check_stream(stream, "DeviceBuffer::to_vec")?;
        if self.len == 0 {
            return Ok(Vec::new());
        }
        let b1 = (self.len * T::BYTES).div_ceil(4) * 4;
        let bytes = self.read_bytes(0, b1)?;
        Ok(bytes
            .chunks_exact(T::BYTES)
            .take(self.len)
            .map(T::load_le)
            .collect())
    }
}

impl<T> DeviceBuffer<T> {
    /// Number of elements (storage units for the packed code types).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The identity of the buffer's device.
    pub(crate) fn device_id(&self) -> u64 {
        self.dev.id
    }

    /// The underlying wgpu buffer.
    pub fn as_wgpu(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    pub(crate) fn check_stream(&self, stream: &Stream, what: &str) -> Result<()> {
        match stream.device() {
            Some(d) if d.id == self.dev.id => Ok(()),
            Some(_) => Err(Error::InvalidProblem(format!(
                "{what}: the buffer belongs to another device than the stream's"
            ))),
            None => Err(Error::Unsupported(format!(
                "{what}: the stream is a CPU stream; device buffers need their wgpu stream"
            ))),
        }
    }

    /// A dense row-major view of the first elements. `BufferTooSmall` when
    /// the buffer is shorter than the product of `shape`.
    pub fn view<const N: usize>(&self, shape: [usize; N]) -> Result<DeviceTensorRef<'_, T, N>> {
        let stride = crate::tensor::dense(&shape)?;
        self.view_strided(0, shape, stride)
    }

    /// A strided view starting at element `offset`.
    pub fn view_strided<const N: usize>(
        &self,
        offset: usize,
        shape: [usize; N],
        stride: [usize; N],
    ) -> Result<DeviceTensorRef<'_, T, N>> {
        crate::tensor::check_view_at(self.len, offset, &shape, &stride)?;
        Ok(DeviceTensorRef {
            buffer: self,
            offset,
            shape,
            stride,
        })
    }

    /// A dense writable view of the first elements.
    pub fn view_mut<const N: usize>(
        &mut self,
        shape: [usize; N],
    ) -> Result<DeviceTensorMut<'_, T, N>> {
        let stride = crate::tensor::dense(&shape)?;
        self.view_strided_mut(0, shape, stride)
    }

    /// A strided writable view starting at element `offset`.
    pub fn view_strided_mut<const N: usize>(
        &mut self,
        offset: usize,
        shape: [usize; N],
        stride: [usize; N],
    ) -> Result<DeviceTensorMut<'_, T, N>> {
        crate::tensor::check_view_at(self.len, offset, &shape, &stride)?;
        Ok(DeviceTensorMut {
            buffer: self,
            offset,
            shape,
            stride,
        })
    }
}

impl<T> fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("len", &self.len)
            .field("device", &self.dev.info.name)
            .finish()
    }
}

/// A read-only view of a [`DeviceBuffer`]: element `index` is at
/// `offset + Σ index[k]·stride[k]`. Plans check every view again before
/// they bind it.
pub struct DeviceTensorRef<'a, T, const N: usize> {
    /// The buffer the view reads from.
    pub buffer: &'a DeviceBuffer<T>,
    /// Element of the buffer where the view starts.
    pub offset: usize,
    /// Extent of each axis.
    pub shape: [usize; N],
    /// Distance in elements between neighbours along each axis.
    pub stride: [usize; N],
}

/// A writable view of a [`DeviceBuffer`]; see [`DeviceTensorRef`].
pub struct DeviceTensorMut<'a, T, const N: usize> {
    /// The buffer the view writes to.
    pub buffer: &'a mut DeviceBuffer<T>,
    /// Element of the buffer where the view starts.
    pub offset: usize,
    /// Extent of each axis.
    pub shape: [usize; N],
    /// Distance in elements between neighbours along each axis.
    pub stride: [usize; N],
}

impl<T, const N: usize> Clone for DeviceTensorRef<'_, T, N> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T, const N: usize> Copy for DeviceTensorRef<'_, T, N> {}

impl<'a, T, const N: usize> DeviceTensorMut<'a, T, N> {
    /// A shorter-lived view of the same elements.
    pub fn reborrow(&mut self) -> DeviceTensorMut<'_, T, N> {
        DeviceTensorMut {
            buffer: self.buffer,
            offset: self.offset,
            shape: self.shape,
            stride: self.stride,
        }
    }

    /// A read-only view of the same elements.
    pub fn as_ref(&self) -> DeviceTensorRef<'_, T, N> {
        DeviceTensorRef {
            buffer: self.buffer,
            offset: self.offset,
            shape: self.shape,
            stride: self.stride,
        }
    }
}

impl<T, const N: usize> fmt::Debug for DeviceTensorRef<'_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceTensorRef")
            .field("len", &self.buffer.len)
            .field("offset", &self.offset)
            .field("shape", &self.shape)
            .field("stride", &self.stride)
            .finish()
    }
}

impl<T, const N: usize> fmt::Debug for DeviceTensorMut<'_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_ref().fmt(f)
    }
}
