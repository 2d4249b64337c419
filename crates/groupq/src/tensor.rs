//! Tensor views: a slice plus a shape and strides in elements (SPEC §2).

use crate::error::{Error, Result};
use std::fmt;

/// Number of elements a view of `shape` with `stride` spans: its largest
/// offset plus one (0 for an empty view). `None` when that overflows `usize`.
pub(crate) fn span<const N: usize>(shape: &[usize; N], stride: &[usize; N]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(0);
    }
    let mut last = 0usize;
    for (&n, &s) in shape.iter().zip(stride) {
        last = last.checked_add((n - 1).checked_mul(s)?)?;
    }
    last.checked_add(1)
}

/// Dense row-major strides of `shape`, or `None` on overflow.
fn dense_strides<const N: usize>(shape: &[usize; N]) -> Option<[usize; N]> {
    let mut stride = [0usize; N];
    let mut acc = 1usize;
    for k in (0..N).rev() {
        stride[k] = acc;
        acc = acc.checked_mul(shape[k])?;
    }
    Some(stride)
}

/// Checks that a slice of `len` elements holds a view of `shape`/`stride`.
fn check_view<const N: usize>(len: usize, shape: &[usize; N], stride: &[usize; N]) -> Result<()> {
    let needed = span(shape, stride).ok_or_else(|| {
        Error::InvalidProblem(format!(
            "tensor view with shape {shape:?} and stride {stride:?} spans more than usize::MAX elements"
        ))
    })?;
    if len < needed {
        return Err(Error::BufferTooSmall { needed, got: len });
    }
    Ok(())
}

/// Checks that a buffer of `len` elements holds a view of `shape`/`stride`
/// starting at element `offset` (`BufferTooSmall` names the end it needs).
#[cfg(feature = "wgpu")]
pub(crate) fn check_view_at<const N: usize>(
    len: usize,
    offset: usize,
    shape: &[usize; N],
    stride: &[usize; N],
) -> Result<()> {
    let needed = span(shape, stride)
        .and_then(|n| if n == 0 { Some(0) } else { n.checked_add(offset) })
        .ok_or_else(|| {
            Error::InvalidProblem(format!(
                "tensor view at offset {offset} with shape {shape:?} and stride {stride:?} spans more than usize::MAX elements"
            ))
        })?;
    if len < needed {
        return Err(Error::BufferTooSmall { needed, got: len });
    }
    Ok(())
}

pub(crate) fn dense<const N: usize>(shape: &[usize; N]) -> Result<[usize; N]> {
    dense_strides(shape).ok_or_else(|| {
        Error::InvalidProblem(format!(
            "tensor shape {shape:?} has more than usize::MAX elements"
        ))
    })
}

/// A read-only view of an `N`-dimensional tensor: `data[Σ index[k]·stride[k]]`.
///
/// The fields are public so that views can be built directly; plans check
/// every view again before they read it, so a hand-built view that does not
/// fit its slice is an error, never an out-of-bounds read.
///
/// ```
/// use groupq::TensorRef;
/// let data = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
/// let dense = TensorRef::new(&data, [2, 3])?;
/// assert_eq!(dense.stride, [3, 1]);
/// // Rows of length 2 taken from a buffer with row pitch 3.
/// let strided = TensorRef::with_strides(&data, [2, 2], [3, 1])?;
/// assert_eq!(strided.shape, [2, 2]);
/// assert!(TensorRef::new(&data, [4, 2]).is_err()); // needs 8 elements
/// # Ok::<(), groupq::Error>(())
/// ```
#[derive(Clone, Copy)]
pub struct TensorRef<'a, T, const N: usize> {
    /// The elements the view reads from.
    pub data: &'a [T],
    /// Extent of each axis.
    pub shape: [usize; N],
    /// Distance in elements between neighbours along each axis.
    pub stride: [usize; N],
}

impl<'a, T, const N: usize> TensorRef<'a, T, N> {
    /// A dense row-major view. `Err(BufferTooSmall)` when `data` is shorter
    /// than the product of `shape`.
    pub fn new(data: &'a [T], shape: [usize; N]) -> Result<Self> {
        let stride = dense(&shape)?;
        Self::with_strides(data, shape, stride)
    }

    /// A strided view. `Err(BufferTooSmall)` when `data` is shorter than the
    /// largest offset of the view plus one.
    pub fn with_strides(data: &'a [T], shape: [usize; N], stride: [usize; N]) -> Result<Self> {
        check_view(data.len(), &shape, &stride)?;
        Ok(Self {
            data,
            shape,
            stride,
        })
    }

    /// Number of elements in the view (the product of `shape`).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A writable view of an `N`-dimensional tensor; see [`TensorRef`].
///
/// ```
/// use groupq::TensorMut;
/// let mut out = vec![0i8; 8];
/// let mut view = TensorMut::new(&mut out, [2, 4])?;
/// let again = view.reborrow(); // reuse one output view for several runs
/// assert_eq!(again.shape, [2, 4]);
/// # Ok::<(), groupq::Error>(())
/// ```
pub struct TensorMut<'a, T, const N: usize> {
    /// The elements the view writes to.
    pub data: &'a mut [T],
    /// Extent of each axis.
    pub shape: [usize; N],
    /// Distance in elements between neighbours along each axis.
    pub stride: [usize; N],
}

impl<'a, T, const N: usize> TensorMut<'a, T, N> {
    /// A dense row-major view. `Err(BufferTooSmall)` when `data` is shorter
    /// than the product of `shape`.
    pub fn new(data: &'a mut [T], shape: [usize; N]) -> Result<Self> {
        let stride = dense(&shape)?;
        Self::with_strides(data, shape, stride)
    }

    /// A strided view. `Err(BufferTooSmall)` when `data` is shorter than the
    /// largest offset of the view plus one.
    pub fn with_strides(data: &'a mut [T], shape: [usize; N], stride: [usize; N]) -> Result<Self> {
        check_view(data.len(), &shape, &stride)?;
        Ok(Self {
            data,
            shape,
            stride,
        })
    }

    /// Number of elements in the view (the product of `shape`).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// A shorter-lived view of the same elements, so one output view can be
    /// passed to several `run` calls.
    pub fn reborrow(&mut self) -> TensorMut<'_, T, N> {
        TensorMut {
            data: self.data,
            shape: self.shape,
            stride: self.stride,
        }
    }

    /// A read-only view of the same elements.
    pub fn as_ref(&self) -> TensorRef<'_, T, N> {
        TensorRef {
            data: self.data,
            shape: self.shape,
            stride: self.stride,
        }
    }
}

impl<T, const N: usize> fmt::Debug for TensorRef<'_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorRef")
            .field("len", &self.data.len())
            .field("shape", &self.shape)
            .field("stride", &self.stride)
            .finish()
    }
}

impl<T, const N: usize> fmt::Debug for TensorMut<'_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorMut")
            .field("len", &self.data.len())
            .field("shape", &self.shape)
            .field("stride", &self.stride)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_of_views() {
        assert_eq!(span(&[2, 3], &[3, 1]), Some(6));
        assert_eq!(span(&[2, 3], &[5, 1]), Some(8));
        assert_eq!(span(&[0, 3], &[5, 1]), Some(0));
        assert_eq!(span(&[3, 2], &[0, 1]), Some(2));
        assert_eq!(span(&[usize::MAX, 2], &[2, 1]), None);
    }

    #[test]
    fn constructors_check_lengths() {
        let data = [0u8; 9];
        assert!(TensorRef::new(&data, [3, 3]).is_ok());
        assert_eq!(
            TensorRef::new(&data, [2, 5]).unwrap_err(),
            Error::BufferTooSmall { needed: 10, got: 9 }
        );
        assert_eq!(
            TensorRef::with_strides(&data, [2, 3], [7, 1]).unwrap_err(),
            Error::BufferTooSmall { needed: 10, got: 9 }
        );
        assert!(matches!(
            TensorRef::new(&data, [usize::MAX, 3]),
            Err(Error::InvalidProblem(_))
        ));
        let mut m = [0u8; 4];
        assert!(TensorMut::new(&mut m, [2, 2]).is_ok());
        assert!(TensorMut::new(&mut m, [2, 3]).is_err());
    }
}
