//! Writing an output so that nothing half-written is ever left behind: the
//! output is written under a temporary name beside it and renamed into
//! place when complete, a lock file keeps two runs from writing the same
//! output, an interrupted run (SIGINT, SIGTERM, SIGHUP) removes what it had
//! written before it exits, and a later run removes what a killed one
//! (SIGKILL, power loss) left.
//!
//! Names beside `OUT` (all hidden, all carrying the writer's PID):
//! `.OUT.groupq-tmp-PID` (the output being written), `.OUT.groupq-old-PID`
//! (the replaced output during `--force`'s swap) and `.OUT.groupq-lock`
//! (holds the writer's PID).

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// What the signal handler undoes: a path this process is writing
/// (`to: None`, removed), or an old output set aside during `--force`'s
/// swap (moved back to `to` if nothing took its place, else removed).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Undo {
    path: PathBuf,
    to: Option<PathBuf>,
}

fn registry() -> &'static Mutex<Vec<Undo>> {
    static PATHS: OnceLock<Mutex<Vec<Undo>>> = OnceLock::new();
    PATHS.get_or_init(|| Mutex::new(Vec::new()))
}

fn register(path: &Path, to: Option<&Path>) {
    let mut undo = registry().lock().unwrap_or_else(|e| e.into_inner());
    undo.push(Undo {
        path: path.to_path_buf(),
        to: to.map(Path::to_path_buf),
    });
}

fn unregister(path: &Path) {
    let mut undo = registry().lock().unwrap_or_else(|e| e.into_inner());
    undo.retain(|u| u.path != path);
}

/// Undoes one registered step (see [`Undo`]).
fn undo(u: &Undo) {
    match &u.to {
        Some(to) if std::fs::symlink_metadata(to).is_err() => {
            let _ = std::fs::rename(&u.path, to);
        }
        _ => {
            let _ = remove(&u.path);
        }
    }
}

/// Removes a file or a directory tree, whichever `path` is.
fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Installs the handler of SIGINT, SIGTERM and SIGHUP: it removes every
/// registered staging path and lock, then exits with the conventional
/// status `128 + signal` (130 for Ctrl-C, 143 for `kill`). Call once, at
/// start-up; a second call does nothing.
pub fn install_signal_cleanup() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        #[cfg(unix)]
        {
            use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
            use signal_hook::iterator::Signals;
            let Ok(mut signals) = Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
                return;
            };
            std::thread::spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    let steps = registry().lock().unwrap_or_else(|e| e.into_inner());
                    // The newest first: the partial output goes, the old
                    // output of a `--force` swap goes back into place, and
                    // only then the lock.
                    for u in steps.iter().rev() {
                        undo(u);
                    }
                    eprintln!("\ninterrupted: removed the partial output");
                    std::process::exit(128 + signal);
                }
            });
        }
    });
}

/// Whether process `pid` is alive, where the system says (`/proc`);
/// `None` where it cannot tell.
fn alive(pid: u32) -> Option<bool> {
    let proc = Path::new("/proc");
    if !proc.is_dir() {
        return None;
    }
    Some(proc.join(pid.to_string()).exists())
}

/// The lock file of `output`: created exclusively with this process's PID
/// in it; removed on drop. A lock whose writer is dead is taken over.
struct Lock {
    path: PathBuf,
}

impl Lock {
    fn acquire(output: &Path, name: &str) -> Result<Lock> {
        let path = output.with_file_name(format!(".{name}.groupq-lock"));
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    let _ = write!(f, "{}", std::process::id());
                    register(&path, None);
                    return Ok(Lock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    match holder.map(|pid| (pid, alive(pid))) {
                        Some((pid, Some(false))) => {
                            // A killed run's lock: take it over.
                            let _ = pid;
                            let _ = std::fs::remove_file(&path);
                        }
                        Some((pid, _)) => bail!(
                            "another groupq run (pid {pid}) is writing {}: wait for it, or remove {} if it is gone",
                            output.display(),
                            path.display()
                        ),
                        None => bail!(
                            "another groupq run is writing {} (lock {} unreadable): wait for it, or remove the lock if it is gone",
                            output.display(),
                            path.display()
                        ),
                    }
                }
                Err(e) => return Err(write_failed(e, &path, None)),
            }
        }
        bail!(
            "cannot take the lock {} for {}",
            path.display(),
            output.display()
        )
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        unregister(&self.path);
    }
}

/// A temporary directory or file beside `output`, renamed to it by
/// `commit`, removed when dropped uncommitted or when the process is
/// interrupted: nothing is left half-written at `output`.
pub(crate) struct Staging {
    pub tmp: PathBuf,
    output: PathBuf,
    name: String,
    file: bool,
    done: bool,
    _lock: Lock,
}

impl Staging {
    /// Takes the lock of `output`, removes what killed runs left beside it,
    /// and names the temporary path.
    fn prepare(output: &Path, what: &str) -> Result<(String, PathBuf, Lock)> {
        let name = output
            .file_name()
            .ok_or_else(|| anyhow!("{}: not a {what} name", output.display()))?
            .to_string_lossy()
            .into_owned();
        if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| write_failed(e, parent, None))?;
        }
        let lock = Lock::acquire(output, &name)?;
        remove_stale(output, &name);
        let tmp = output.with_file_name(format!(".{name}.groupq-tmp-{}", std::process::id()));
        remove(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
        register(&tmp, None);
        Ok((name, tmp, lock))
    }

    /// A temporary directory for a checkpoint written to `output`.
    pub(crate) fn dir(output: &Path) -> Result<Staging> {
        let (name, tmp, lock) = Self::prepare(output, "directory")?;
        let staging = Staging {
            tmp,
            output: output.to_path_buf(),
            name,
            file: false,
            done: false,
            _lock: lock,
        };
        std::fs::create_dir_all(&staging.tmp)
            .with_context(|| format!("cannot create {}", staging.tmp.display()))?;
        Ok(staging)
    }

    /// A temporary file for a single-file output (GGUF), its parent
    /// folders created.
    pub(crate) fn file(output: &Path) -> Result<Staging> {
        let (name, tmp, lock) = Self::prepare(output, "file")?;
        Ok(Staging {
            tmp,
            output: output.to_path_buf(),
            name,
            file: true,
            done: false,
            _lock: lock,
        })
    }

    /// Moves the finished output into place. A replaced output is renamed
    /// aside first and removed last, so that at every moment either the
    /// old or the new output is at `output`; a file output never replaces
    /// a directory.
    pub(crate) fn commit(mut self) -> Result<()> {
        let out = self.output.clone();
        if self.file && out.is_dir() {
            bail!(
                "{} is a directory: choose a file name for the output",
                out.display()
            );
        }
        let exists = std::fs::symlink_metadata(&out).is_ok();
        if self.file || !exists {
            // rename(2) replaces a file atomically.
            std::fs::rename(&self.tmp, &out).with_context(|| {
                format!("cannot rename {} to {}", self.tmp.display(), out.display())
            })?;
        } else {
            let old =
                out.with_file_name(format!(".{}.groupq-old-{}", self.name, std::process::id()));
            remove(&old).with_context(|| format!("cannot remove {}", old.display()))?;
            std::fs::rename(&out, &old).with_context(|| {
                format!(
                    "cannot move the old {} aside to {}",
                    out.display(),
                    old.display()
                )
            })?;
            register(&old, Some(&out));
            if let Err(e) = std::fs::rename(&self.tmp, &out) {
                // Put the old output back: the run failed, the old output stays.
                let _ = std::fs::rename(&old, &out);
                unregister(&old);
                return Err(e).with_context(|| {
                    format!("cannot rename {} to {}", self.tmp.display(), out.display())
                });
            }
            unregister(&old);
            let _ = remove(&old);
        }
        unregister(&self.tmp);
        self.done = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = remove(&self.tmp);
            unregister(&self.tmp);
        }
    }
}

/// Removes the temporary and set-aside outputs of dead runs beside `output`
/// (never those of a live process, nor where liveness cannot be told).
fn remove_stale(output: &Path, name: &str) {
    let dir = match output.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let prefixes = [
        format!(".{name}.groupq-tmp-"),
        format!(".{name}.groupq-old-"),
    ];
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        let pid = prefixes
            .iter()
            .find_map(|p| file_name.strip_prefix(p.as_str()))
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && alive(pid) == Some(false) {
                // A run killed inside `--force`'s swap left the old output
                // aside and none in place: it goes back.
                let old = file_name.starts_with(prefixes[1].as_str());
                let to = old.then_some(output);
                undo(&Undo {
                    path: entry.path(),
                    to: to.map(Path::to_path_buf),
                });
            }
        }
    }
}

/// A failed write of `path` (of `needed` bytes in all, where known), with
/// what to do about it: a full disk names the bytes the file needs, a
/// read-only or forbidden folder names the folder.
pub(crate) fn write_failed(
    e: impl Into<anyhow::Error>,
    path: &Path,
    needed: Option<u64>,
) -> anyhow::Error {
    let e: anyhow::Error = e.into();
    let io = e.chain().find_map(|c| c.downcast_ref::<std::io::Error>());
    let dir = path.parent().unwrap_or(Path::new("."));
    let hint = match io.map(|io| (io.kind(), io.raw_os_error())) {
        Some((std::io::ErrorKind::StorageFull, _)) | Some((_, Some(28))) => match needed {
            Some(n) => format!(
                ": the disk holding {} is full ({n} bytes needed for this file); free space or choose another -o",
                dir.display()
            ),
            None => format!(
                ": the disk holding {} is full; free space or choose another -o",
                dir.display()
            ),
        },
        Some((std::io::ErrorKind::ReadOnlyFilesystem, _)) | Some((_, Some(30))) => format!(
            ": {} is on a read-only file system; choose another -o",
            dir.display()
        ),
        Some((std::io::ErrorKind::PermissionDenied, _)) => format!(
            ": no permission to write in {}; choose another -o",
            dir.display()
        ),
        _ => String::new(),
    };
    e.context(format!("cannot write {}{hint}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("groupq-staging-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_second_writer_is_refused_and_a_dead_ones_leftovers_are_removed() {
        let d = scratch("lock");
        let out = d.join("model");
        let first = Staging::dir(&out).unwrap();
        let err = Staging::dir(&out).err().unwrap().to_string();
        assert!(err.contains("another groupq run"), "{err}");
        drop(first);
        assert!(!out.with_file_name(".model.groupq-lock").exists());
        // A dead process's leftovers (pid 0 is never a user process, and
        // /proc/0 does not exist): removed; a live one's are kept.
        let dead = d.join(".model.groupq-tmp-0");
        let live = d.join(format!(".model.groupq-tmp-{}", std::process::id()));
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(d.join(".model.groupq-lock"), "0").unwrap();
        let s = Staging::dir(&out).unwrap();
        if alive(0) == Some(false) {
            assert!(!dead.exists());
        }
        assert!(live.exists(), "our own staging");
        drop(s);
        assert!(!live.exists());
    }

    #[test]
    fn force_swaps_without_a_gap_and_keeps_the_old_output_on_failure() {
        let d = scratch("force");
        let out = d.join("model");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("old.txt"), "old").unwrap();
        let s = Staging::dir(&out).unwrap();
        std::fs::write(s.tmp.join("new.txt"), "new").unwrap();
        s.commit().unwrap();
        assert!(out.join("new.txt").exists() && !out.join("old.txt").exists());
        let left: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("model")],
            "nothing else left"
        );
    }
}
