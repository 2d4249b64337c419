//! Where plans run: [`Stream`] and the scratch memory a plan may borrow,
//! [`Workspace`] (SPEC §2).

use crate::error::{Error, Result};
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// Where a plan runs. CPU streams execute `run` on a thread pool of a fixed
/// size and return when the work is done.
///
/// Streams are cheap to clone (the pool is shared). Pools of the same size
/// are shared between streams too, so creating many streams does not create
/// many threads.
///
/// ```
/// use groupq::Stream;
/// let all = Stream::cpu();
/// assert!(all.threads() >= 1);
/// let two = Stream::cpu_with_threads(2)?;
/// assert_eq!(two.threads(), 2);
/// two.synchronize()?;
/// assert!(Stream::cpu_with_threads(0).is_err());
/// # Ok::<(), groupq::Error>(())
/// ```
#[derive(Clone)]
pub struct Stream {
    threads: usize,
    /// `None` for a single-threaded stream: work runs on the calling thread.
    pool: Option<Arc<ThreadPool>>,
    /// The device of a device stream.
    #[cfg(feature = "wgpu")]
    device: Option<Arc<crate::device::WgpuDevice>>,
}

/// Live pools by thread count, so that streams of one size share one pool.
fn shared_pool(threads: usize) -> Result<Arc<ThreadPool>> {
    type Pools = Mutex<Vec<(usize, Weak<ThreadPool>)>>;
    static POOLS: OnceLock<Pools> = OnceLock::new();
    let pools = POOLS.get_or_init(|| Mutex::new(Vec::new()));
    // A poisoned lock only means another thread panicked while holding it;
    // the list of weak pointers is still valid.
    let mut pools = pools.lock().unwrap_or_else(|e| e.into_inner());
    pools.retain(|(_, weak)| weak.strong_count() > 0);
    if let Some(pool) = pools
        .iter()
        .find(|(n, _)| *n == threads)
        .and_then(|(_, weak)| weak.upgrade())
    {
        return Ok(pool);
    }
    let pool = ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("groupq-{i}"))
        .build()
        .map_err(|e| {
            Error::Backend(format!(
                "Stream::cpu_with_threads: could not start {threads} threads: {e}"
            ))
        })?;
    let pool = Arc::new(pool);
    pools.push((threads, Arc::downgrade(&pool)));
    Ok(pool)
}

impl Stream {
    /// A CPU stream using every core (`std::thread::available_parallelism`).
    /// Should the operating system refuse to start threads, the stream runs
    /// on the calling thread alone.
    pub fn cpu() -> Stream {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        Stream::cpu_with_threads(n).unwrap_or(Stream::with_pool(1, None))
    }

    /// A CPU stream with exactly `n` threads (`n ≥ 1`; the calling thread
    /// does the work when `n == 1`).
    pub fn cpu_with_threads(n: usize) -> Result<Stream> {
        match n {
            0 => Err(Error::InvalidProblem(
                "Stream::cpu_with_threads: n 0 must be at least 1".into(),
            )),
            1 => Ok(Stream::with_pool(1, None)),
            _ => Ok(Stream::with_pool(n, Some(shared_pool(n)?))),
        }
    }

    fn with_pool(threads: usize, pool: Option<Arc<ThreadPool>>) -> Stream {
        Stream {
            threads,
            pool,
            #[cfg(feature = "wgpu")]
            device: None,
        }
    }

    /// Number of CPU threads `run` uses on this stream (1 on a device
    /// stream, whose work runs on the device).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Whether this is a device stream (plans selected on it run on the GPU).
    pub fn is_device(&self) -> bool {
        #[cfg(feature = "wgpu")]
        if self.device.is_some() {
            return true;
        }
        false
    }

    /// Waits for all queued work. CPU streams finish their work inside
    /// `run`, so this returns `Ok(())` at once; a device stream waits until
    /// the device has finished everything enqueued so far.
    pub fn synchronize(&self) -> Result<()> {
        #[cfg(feature = "wgpu")]
        if let Some(d) = &self.device {
            return d.wait();
        }
        Ok(())
    }

    /// The pool to run parallel work on, if any.
    pub(crate) fn pool(&self) -> Option<&ThreadPool> {
        self.pool.as_deref()
    }
}

#[cfg(feature = "wgpu")]
impl Stream {
    /// A device stream on the default GPU adapter (a high-performance one
    /// where there are several; `WGPU_BACKEND` and `WGPU_ADAPTER_NAME` are
    /// honoured). `Error::Backend` saying what to install when the machine
    /// has no adapter. Plans selected on it run on the device: `run_device`
    /// enqueues, [`synchronize`](Self::synchronize) waits.
    ///
    /// ```no_run
    /// let stream = groupq::Stream::wgpu()?;
    /// assert!(stream.is_device());
    /// println!("{}", stream.device_name().unwrap_or_default());
    /// # Ok::<(), groupq::Error>(())
    /// ```
    pub fn wgpu() -> Result<Stream> {
        let device = crate::device::open_default()?;
        Ok(Stream {
            device: Some(Arc::new(device)),
            ..Stream::with_pool(1, None)
        })
    }

    /// A device stream on an existing device and queue (interop with other
    /// wgpu code: groupq's work goes into the same queue, in order). f64
    /// plans need the device to have been created with `SHADER_INT64`.
    pub fn from_wgpu(device: wgpu::Device, queue: wgpu::Queue) -> Stream {
        let device = crate::device::WgpuDevice::new(device, queue);
        Stream {
            device: Some(Arc::new(device)),
            ..Stream::with_pool(1, None)
        }
    }

    /// The wgpu device of a device stream.
    pub fn wgpu_device(&self) -> Option<&wgpu::Device> {
        self.device.as_ref().map(|d| &d.device)
    }

    /// The wgpu queue of a device stream.
    pub fn wgpu_queue(&self) -> Option<&wgpu::Queue> {
        self.device.as_ref().map(|d| &d.queue)
    }

    /// The adapter's name (for example `"llvmpipe (LLVM 15.0.6, 256 bits)"`).
    pub fn device_name(&self) -> Option<String> {
        self.device.as_ref().map(|d| d.info.name.clone())
    }

    pub(crate) fn device(&self) -> Option<&Arc<crate::device::WgpuDevice>> {
        self.device.as_ref()
    }
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        #[cfg(feature = "wgpu")]
        if let Some(d) = &self.device {
            return f
                .debug_struct("Stream")
                .field("device", &d.info.name)
                .field("backend", &d.info.backend)
                .finish();
        }
        f.debug_struct("Stream")
            .field("device", &"cpu")
            .field("threads", &self.threads)
            .finish()
    }
}

/// Scratch memory for a plan's `run`. Ask the plan for `workspace_size()`
/// bytes; the per-group plans need none and accept either variant.
#[derive(Debug, Default)]
pub enum Workspace<'a> {
    /// No scratch memory.
    #[default]
    None,
    /// Caller-owned scratch memory.
    Borrowed(&'a mut [u8]),
}

impl Workspace<'_> {
    /// Size of the borrowed memory in bytes (0 for `None`).
    pub fn len(&self) -> usize {
        match self {
            Workspace::None => 0,
            Workspace::Borrowed(b) => b.len(),
        }
    }

    /// Whether the workspace holds no memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_shared_by_size() {
        let a = Stream::cpu_with_threads(3).unwrap();
        let b = Stream::cpu_with_threads(3).unwrap();
        assert!(std::ptr::eq(a.pool().unwrap(), b.pool().unwrap()));
        assert_eq!(a.pool().unwrap().current_num_threads(), 3);
        assert!(Stream::cpu_with_threads(1).unwrap().pool().is_none());
    }
}
