//! Faults while `groupq quantize` writes: SIGTERM and SIGINT remove the
//! partial output and exit with 128 + signal; after a SIGKILL a rerun
//! removes what the dead run left and writes one complete output; two runs
//! to one output: one wins, the other fails clearly. After every case
//! nothing but the input and (at most) one complete output remains.
#![cfg(unix)]

mod common;

use common::scratch;
use groupq_cli::tiny::{write_model, TinyConfig};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A model big enough (about 50 MB of bf16 weights in 4 shards) that a run
/// of the debug binary lasts long enough to be signalled while it writes.
fn model(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    let c = TinyConfig {
        hidden: 512,
        intermediate: 1408,
        layers: 8,
        heads: 8,
        kv_heads: 4,
        vocab: 2048,
        shards: 4,
    };
    write_model(&m, &c).unwrap();
    m
}

fn spawn(model: &Path, out: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_groupq"))
        .args(["quantize", "--format", "gptq", "--quiet", "-o"])
        .arg(out)
        .arg(model)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

/// The names in `dir` other than `model`, sorted.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "model")
        .collect();
    v.sort();
    v
}

/// The staging folder of `out`, once it exists (and holds a shard when
/// `shard`).
fn wait_for_staging(dir: &Path, shard: bool, child: &mut Child) -> Option<PathBuf> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        let staging = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().contains(".out.groupq-tmp-"));
        if let Some(s) = staging {
            let has_shard = std::fs::read_dir(&s).is_ok_and(|mut d| {
                d.any(|e| {
                    e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
                })
            });
            if !shard || has_shard {
                return Some(s);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("no staging folder appeared in 60 s");
}

fn complete(out: &Path) {
    assert!(
        out.join("config.json").is_file(),
        "{}: config.json",
        out.display()
    );
    assert!(out.join("model.safetensors.index.json").is_file());
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    for file in index["weight_map"].as_object().unwrap().values() {
        assert!(out.join(file.as_str().unwrap()).is_file(), "{file}");
    }
}

fn code(status: ExitStatus) -> Option<i32> {
    status.code()
}

#[test]
fn sigterm_and_sigint_remove_the_partial_output() {
    let dir = scratch("faults", "signals");
    let m = model(&dir);
    let out = dir.join("out");
    let mut interrupted = 0;
    for (sig, status) in [("TERM", 143), ("INT", 130)] {
        for shard in [false, true] {
            let mut child = spawn(&m, &out);
            let staged = wait_for_staging(&dir, shard, &mut child);
            if staged.is_some() {
                signal(&child, sig);
            }
            let st = child.wait().unwrap();
            if staged.is_some() && code(st) == Some(status) {
                interrupted += 1;
                assert!(!out.exists(), "SIG{sig}: no output");
                assert_eq!(
                    leftovers(&dir),
                    Vec::<String>::new(),
                    "SIG{sig}: left behind"
                );
            } else {
                // The run finished before the signal landed: a complete output.
                assert!(st.success(), "SIG{sig}: {st:?}");
                complete(&out);
                std::fs::remove_dir_all(&out).unwrap();
            }
        }
    }
    assert!(
        interrupted >= 2,
        "only {interrupted} of 4 runs were interrupted"
    );
}

#[test]
fn a_rerun_after_sigkill_cleans_up_and_completes() {
    let dir = scratch("faults", "sigkill");
    let m = model(&dir);
    let out = dir.join("out");
    let mut child = spawn(&m, &out);
    let staged = wait_for_staging(&dir, true, &mut child);
    signal(&child, "KILL");
    let st = child.wait().unwrap();
    if staged.is_some() && !st.success() {
        let left = leftovers(&dir);
        assert!(left.iter().any(|n| n.contains("groupq-tmp-")), "{left:?}");
        assert!(left.iter().any(|n| n.contains("groupq-lock")), "{left:?}");
    }
    let _ = std::fs::remove_dir_all(&out);
    let rerun = spawn(&m, &out).wait_with_output().unwrap();
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    complete(&out);
    assert_eq!(leftovers(&dir), vec!["out".to_string()]);
}

#[test]
fn two_runs_to_one_output_one_wins() {
    let dir = scratch("faults", "concurrent");
    let m = model(&dir);
    let out = dir.join("out");
    let (a, b) = (spawn(&m, &out), spawn(&m, &out));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let wins = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert_eq!(wins, 1, "exactly one run wins");
    let loser = if a.status.success() { &b } else { &a };
    let why = String::from_utf8_lossy(&loser.stderr);
    assert!(
        why.contains("another groupq run") || why.contains("already exists"),
        "{why}"
    );
    complete(&out);
    assert_eq!(leftovers(&dir), vec!["out".to_string()]);
}

/// A small file system of its own (tmpfs, `size` bytes, `ro` for read-only),
/// unmounted on drop; `None` (the test is skipped, with a message) where
/// this process may not mount.
struct Mount(PathBuf);

impl Mount {
    fn new(dir: &Path, options: &str) -> Option<Mount> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "skipping: cannot mount a tmpfs at {} (needs root)",
                dir.display()
            );
            return None;
        }
        Some(Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn example(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    write_model(&m, &TinyConfig::EXAMPLE).unwrap();
    m
}

fn quantize(model: &Path, out: &Path, format: &str) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_groupq"));
    cmd.args(["quantize", "--quiet", "--format", format, "-o"])
        .arg(out)
        .arg(model);
    cmd.output().unwrap()
}

#[test]
fn a_full_disk_names_the_file_and_the_bytes_and_leaves_nothing() {
    let dir = scratch("faults", "full");
    let m = example(&dir);
    let Some(mount) = Mount::new(&dir.join("small"), "size=1m") else {
        return;
    };
    let out = mount.0.join("out");
    let r = quantize(&m, &out, "gptq");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains("is full") && err.contains("bytes needed"),
        "{err}"
    );
    assert!(err.contains(".out.groupq-tmp-"), "names the file: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&mount.0).unwrap().flatten().collect();
    assert!(left.is_empty(), "left on the full disk: {left:?}");
}

#[test]
fn a_read_only_output_folder_is_named_and_nothing_is_written() {
    let dir = scratch("faults", "readonly");
    let m = example(&dir);
    let Some(mount) = Mount::new(&dir.join("ro"), "size=1m,ro") else {
        return;
    };
    let r = quantize(&m, &mount.0.join("out"), "awq");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(err.contains("read-only"), "{err}");
    assert!(std::fs::read_dir(&mount.0).unwrap().next().is_none());
}

/// A model folder whose files a test then damages.
fn damaged(dir: &Path, name: &str) -> PathBuf {
    let m = dir.join(name);
    write_model(&m, &TinyConfig::EXAMPLE).unwrap();
    m
}

fn refused(model: &Path, dir: &Path, needle: &str) {
    let out = dir.join(format!(
        "out-{}",
        model.file_name().unwrap().to_string_lossy()
    ));
    let r = quantize(model, &out, "gptq");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "{}: accepted", model.display());
    assert!(err.contains(needle), "{}: {err}", model.display());
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "{}: an output was written", model.display());
}

#[test]
fn hostile_folders_are_refused_before_anything_is_read() {
    let dir = scratch("faults", "hostile");
    let index = "model.safetensors.index.json";
    let set_index = |m: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let p = m.join(index);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, v.to_string()).unwrap();
    };
    // Shard names outside the folder.
    for (k, bad) in [
        "../model-00001-of-00002.safetensors",
        "/etc/passwd",
        "a/b.safetensors",
        "..",
    ]
    .iter()
    .enumerate()
    {
        let m = damaged(&dir, &format!("traversal{k}"));
        set_index(&m, &|v| {
            v["weight_map"]["model.norm.weight"] = (*bad).into()
        });
        refused(&m, &dir, "is not a file of the model folder");
    }
    // An index naming a hundred thousand shards.
    let m = damaged(&dir, "many");
    set_index(&m, &|v| {
        let map = v["weight_map"].as_object_mut().unwrap();
        for i in 0..100_000 {
            map.insert(format!("t{i}"), format!("s{i}.safetensors").into());
        }
    });
    refused(&m, &dir, "more than groupq takes");
    // A config.json of 65 MiB (sparse), and one that is a FIFO.
    let m = damaged(&dir, "huge");
    std::fs::File::options()
        .write(true)
        .open(m.join("config.json"))
        .unwrap()
        .set_len(65 << 20)
        .unwrap();
    refused(&m, &dir, "more than a JSON file of a model can be");
    let m = damaged(&dir, "fifo");
    std::fs::remove_file(m.join("config.json")).unwrap();
    let fifo = Command::new("mkfifo").arg(m.join("config.json")).status();
    if fifo.is_ok_and(|s| s.success()) {
        refused(&m, &dir, "not a regular file");
    }
}

/// Every truncation and every single-byte corruption of a shard's header:
/// an error naming the file, never a panic.
#[test]
fn damaged_shard_headers_are_errors() {
    use groupq_cli::checkpoint::Shard;
    let dir = scratch("faults", "headers");
    let m = damaged(&dir, "model");
    let path = m.join("model-00001-of-00002.safetensors");
    let good = std::fs::read(&path).unwrap();
    let header_end = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let probe = dir.join("probe.safetensors");
    let mut accepted = 0;
    for n in 0..header_end + 16 {
        std::fs::write(&probe, &good[..n]).unwrap();
        let r = std::panic::catch_unwind(|| Shard::open(&probe).map(|_| ()));
        let r = r.unwrap_or_else(|_| panic!("truncated at {n}: panicked"));
        let err = r.expect_err("a truncated shard was accepted");
        assert!(format!("{err:#}").contains("probe.safetensors"), "{err:#}");
    }
    for i in 0..header_end {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[i] ^= flip;
            std::fs::write(&probe, &bad).unwrap();
            let r = std::panic::catch_unwind(|| Shard::open(&probe).map(|s| s.tensors.len()));
            match r.unwrap_or_else(|_| panic!("byte {i} ^ {flip:#x}: panicked")) {
                Ok(_) => accepted += 1,
                Err(e) => assert!(format!("{e:#}").contains("probe.safetensors"), "{e:#}"),
            }
        }
    }
    // Flips inside the header's JSON strings or padding can leave it valid.
    assert!(
        accepted < header_end,
        "{accepted} of {} corruptions accepted",
        3 * header_end
    );
}

/// A shard truncated, or rewritten in place, after it was opened: reading
/// it is an error naming the file and what changed (never a SIGBUS: shards
/// are read with positioned reads, not mapped), and the check made before an
/// output is committed sees a rewrite that kept the size.
#[test]
fn a_shard_changed_while_being_read_is_an_error() {
    use groupq_cli::checkpoint::{Checkpoint, Shard};
    let dir = scratch("faults", "changed");
    let m = damaged(&dir, "model");
    let path = m.join("model-00001-of-00002.safetensors");
    let good = std::fs::read(&path).unwrap();

    // Truncated to half: the last tensor lies past the new end.
    let shard = Shard::open(&path).unwrap();
    let last = shard.tensors.last().unwrap().clone();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(good.len() as u64 / 2)
        .unwrap();
    let err = format!("{:#}", shard.read(&last).unwrap_err());
    assert!(
        err.contains("changed while being read") && err.contains(&good.len().to_string()),
        "{err}"
    );
    assert!(err.contains("model-00001-of-00002.safetensors"), "{err}");
    let mut sink = Vec::new();
    assert!(shard.copy_to(&last, &mut sink).is_err());
    drop(shard);

    // Rewritten in place with the same size: one header byte changed (the
    // modification time is set back to what it was, so only the header
    // comparison can see it).
    std::fs::write(&path, &good).unwrap();
    let ckpt = Checkpoint::open(&m).unwrap();
    ckpt.check_unchanged().unwrap();
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut bad = good.clone();
    let letter = (8..bad.len())
        .find(|&i| bad[i].is_ascii_lowercase())
        .unwrap();
    bad[letter] = bad[letter].to_ascii_uppercase();
    assert_ne!(bad, good);
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    std::io::Write::write_all(&mut &f, &bad).unwrap();
    f.set_modified(before).unwrap();
    drop(f);
    let err = format!("{:#}", ckpt.check_unchanged().unwrap_err());
    assert!(err.contains("its header is not the one read"), "{err}");

    // Rewritten with a new modification time: every read sees it.
    std::fs::write(&path, &good).unwrap();
    let t = &ckpt.shards[0].tensors[0];
    let err = format!("{:#}", ckpt.shards[0].read(t).unwrap_err());
    assert!(err.contains("was modified"), "{err}");
}

/// Shards that are symbolic links to regular files (a Hugging Face cache
/// snapshot is made of them) are followed; a dangling link, a FIFO or a
/// directory named as a shard is an error naming it, without blocking.
#[test]
fn symlinked_and_special_shards() {
    use std::os::unix::fs::symlink;
    let dir = scratch("faults", "links");
    // A cache-like snapshot: every file a link into blobs/.
    let real = damaged(&dir, "real");
    let (blobs, snap) = (dir.join("blobs"), dir.join("snapshot"));
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    for e in std::fs::read_dir(&real).unwrap().flatten() {
        let blob = blobs.join(format!("blob-{}", e.file_name().to_string_lossy()));
        std::fs::rename(e.path(), &blob).unwrap();
        symlink(&blob, snap.join(e.file_name())).unwrap();
    }
    // A link back to the folder itself must not be copied without end.
    symlink(&snap, snap.join("loop")).unwrap();
    let out = dir.join("out-snapshot");
    let r = quantize(&snap, &out, "gptq");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    complete(&out);
    // The output holds files, not links back into the cache.
    for e in std::fs::read_dir(&out).unwrap().flatten() {
        assert!(!e.path().is_symlink(), "{}", e.path().display());
    }
    assert!(!out.join("loop").exists());

    let shard = "model-00002-of-00002.safetensors";
    let m = damaged(&dir, "dangling");
    std::fs::remove_file(m.join(shard)).unwrap();
    symlink(dir.join("nowhere.safetensors"), m.join(shard)).unwrap();
    refused(&m, &dir, "a symbolic link to");

    let m = damaged(&dir, "fifo-shard");
    std::fs::remove_file(m.join(shard)).unwrap();
    if Command::new("mkfifo")
        .arg(m.join(shard))
        .status()
        .is_ok_and(|s| s.success())
    {
        // Would block forever in open() if it were opened.
        refused(&m, &dir, "not a regular file (a FIFO)");
    }

    let m = damaged(&dir, "dir-shard");
    std::fs::remove_file(m.join(shard)).unwrap();
    std::fs::create_dir(m.join(shard)).unwrap();
    refused(&m, &dir, "not a regular file (a directory)");
}

/// As an unprivileged user (root reads and writes everything, so the test
/// drops to `nobody` with `setpriv`; skipped with a message where it
/// cannot): an unreadable shard and an unwritable output folder are errors
/// naming the path and the permission, and nothing is written.
#[test]
fn permission_denied_as_an_unprivileged_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("faults", "perm");
    let as_nobody = |model: &Path, out: &Path| -> Option<std::process::Output> {
        let r = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_groupq"))
            .args(["quantize", "--quiet", "--format", "gptq", "-o"])
            .arg(out)
            .arg(model)
            .output()
            .ok()?;
        let err = String::from_utf8_lossy(&r.stderr);
        // setpriv itself failed (not root, no setpriv, binary unreachable).
        (!err.starts_with("setpriv:")).then_some(r)
    };
    let open = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    open(&dir, 0o777);
    let m = damaged(&dir, "model");
    open(&m, 0o755);
    for e in std::fs::read_dir(&m).unwrap().flatten() {
        open(&e.path(), 0o644);
    }
    let Some(probe) = as_nobody(&m, &dir.join("probe")) else {
        eprintln!("skipping: cannot run groupq as nobody (setpriv needs root)");
        return;
    };
    if !probe.status.success() {
        eprintln!(
            "skipping: groupq does not run as nobody here: {}",
            String::from_utf8_lossy(&probe.stderr)
        );
        return;
    }

    // An unreadable shard.
    let shard = m.join("model-00002-of-00002.safetensors");
    open(&shard, 0o600);
    let out = dir.join("out-unreadable");
    let r = as_nobody(&m, &out).unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains("model-00002-of-00002.safetensors") && err.contains("ermission denied"),
        "{err}"
    );
    assert!(!out.exists() && !err.contains("panicked"), "{err}");
    open(&shard, 0o644);

    // An output folder the user may not write in.
    let locked = dir.join("locked");
    std::fs::create_dir(&locked).unwrap();
    open(&locked, 0o755);
    let r = as_nobody(&m, &locked.join("out")).unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains("locked") && err.contains("ermission denied"),
        "{err}"
    );
    assert!(std::fs::read_dir(&locked).unwrap().next().is_none());
}
