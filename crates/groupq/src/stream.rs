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
        Stream::cpu_with_threads(n).unwrap_or(Stream {
            threads: 1,
            pool: None,
        })
    }

    /// A CPU stream with exactly `n` threads (`n ≥ 1`; the calling thread
    /// does the work when `n == 1`).
    pub fn cpu_with_threads(n: usize) -> Result<Stream> {
        match n {
            0 => Err(Error::InvalidProblem(
                "Stream::cpu_with_threads: n 0 must be at least 1".into(),
            )),
            1 => Ok(Stream {
                threads: 1,
                pool: None,
            }),
            _ => Ok(Stream {
                threads: n,
                pool: Some(shared_pool(n)?),
            }),
        }
    }

    /// Number of threads `run` uses on this stream.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Waits for all queued work. CPU streams finish their work inside
    /// `run`, so this returns `Ok(())` at once.
    pub fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// The pool to run parallel work on, if any.
    pub(crate) fn pool(&self) -> Option<&ThreadPool> {
        self.pool.as_deref()
    }
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
