//! Measuring kernels against the machine: a same-process streaming copy
//! (the bandwidth probe) and a robust timer.
//!
//! groupq's kernels are memory-bound, so a bare time says little on a shared
//! machine. The benchmarks report each kernel's bytes moved per second as a
//! fraction of what a plain copy of the same number of bytes achieves on the
//! same threads in the same run ([`copy_bandwidth`]).
//!
//! ```
//! use groupq::bench_support::{copy_bandwidth, median_seconds};
//! use groupq::Stream;
//!
//! let stream = Stream::cpu_with_threads(1)?;
//! let copy = copy_bandwidth(&stream, 1 << 20, 3);
//! assert_eq!(copy.bytes, 1 << 20);
//! assert!(copy.bytes_per_second > 0.0);
//! let t = median_seconds(3, || { std::hint::black_box(0u64); });
//! assert!(t >= 0.0);
//! # Ok::<(), groupq::Error>(())
//! ```

use crate::element::Element;
use crate::stream::Stream;
use rayon::prelude::*;
use std::time::Instant;

/// The result of [`copy_bandwidth`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CopyBandwidth {
    /// Bytes read plus bytes written per second (the median run).
    pub bytes_per_second: f64,
    /// Bytes copied per run (read once, written once).
    pub bytes: usize,
}

/// How many back-to-back runs of an operation moving `bytes` bytes make one
/// timed sample: enough for about 4 MiB, so that small problems are not
/// lost in the timer's resolution.
pub fn batch_size(bytes: usize) -> usize {
    ((4 << 20) / bytes.max(1)).max(1)
}

/// Runs `f` once untimed (which also faults fresh pages in), then times
/// `reps` samples of `batch_size(bytes)` back-to-back runs and returns the
/// median seconds per run.
pub fn seconds_per_run(bytes: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let batch = batch_size(bytes);
    median_seconds(reps, || (0..batch).for_each(|_| f())) / batch as f64
}

/// Two buffers of the same size and a parallel copy between them: the
/// bandwidth probe. A kernel that reads `R` and writes `W` bytes is compared
/// with a copy of `(R + W) / 2` bytes, which moves the same `R + W`.
pub struct Copier<'s> {
    stream: &'s Stream,
    src: Vec<u8>,
    dst: Vec<u8>,
}

impl<'s> Copier<'s> {
    /// Buffers of `bytes` bytes (at least 1), both written once so that
    /// their pages are faulted in before anything is timed.
    pub fn new(stream: &'s Stream, bytes: usize) -> Self {
        let bytes = bytes.max(1);
        Copier {
            stream,
            src: (0..bytes).map(|i| i as u8).collect(),
            dst: vec![1u8; bytes],
        }
    }

    /// Bytes copied per run.
    pub fn bytes(&self) -> usize {
        self.src.len()
    }

    /// One copy, split into contiguous chunks over the stream's threads
    /// (on the calling thread when the buffer is under 128 KiB).
    pub fn run(&mut self) {
        let bytes = self.src.len();
        let chunk = bytes.div_ceil(self.stream.threads() * 4).max(1 << 16);
        let (src, dst) = (&self.src, &mut self.dst);
        match self.stream.pool() {
            Some(pool) if bytes > chunk => pool.install(|| {
                dst.par_chunks_mut(chunk)
                    .zip(src.par_chunks(chunk))
                    .for_each(|(d, s)| d.copy_from_slice(s))
            }),
            _ => dst.copy_from_slice(src),
        }
        std::hint::black_box(&self.dst);
    }
}

/// The copy rate of `bytes` bytes on the stream's threads (bytes read plus
/// written per second), timed as [`seconds_per_run`] does.
pub fn copy_bandwidth(stream: &Stream, bytes: usize, reps: usize) -> CopyBandwidth {
    let mut copier = Copier::new(stream, bytes);
    let seconds = seconds_per_run(2 * copier.bytes(), reps, || copier.run());
    CopyBandwidth {
        bytes_per_second: 2.0 * copier.bytes() as f64 / seconds,
        bytes: copier.bytes(),
    }
}

/// Times `kernel` (moving `bytes` bytes per run) and a copy of the same
/// bytes on `stream`, sample by sample in alternation so that both see the
/// same machine, and returns the median seconds per run of each:
/// `(kernel, copy)`.
pub fn kernel_and_copy_seconds(
    stream: &Stream,
    bytes: usize,
    reps: usize,
    mut kernel: impl FnMut(),
) -> (f64, f64) {
    let mut copier = Copier::new(stream, bytes / 2);
    let batch = batch_size(bytes);
    kernel();
    copier.run();
    let (mut k, mut c) = (Vec::new(), Vec::new());
    for _ in 0..reps.max(1) {
        k.push(median_seconds(1, || (0..batch).for_each(|_| kernel())) / batch as f64);
        c.push(median_seconds(1, || (0..batch).for_each(|_| copier.run())) / batch as f64);
    }
    (median(&mut k), median(&mut c))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `f` `reps` times and returns the median wall time in seconds.
pub fn median_seconds(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    median(&mut times)
}

/// `n` deterministic weight-like values, uniform in about ±0.06 (the range of
/// an LLM projection matrix), different for each `salt`.
pub fn synthetic_weights<T: Element>(n: usize, salt: u32) -> Vec<T> {
    (0..n)
        .map(|i| {
            let h = (i as u32 ^ salt)
                .wrapping_mul(0x9e37_79b9)
                .rotate_left(13)
                .wrapping_mul(0x85eb_ca6b);
            T::from_f64(f64::from(h >> 8) / f64::from(1u32 << 24) * 0.12 - 0.06)
        })
        .collect()
}
