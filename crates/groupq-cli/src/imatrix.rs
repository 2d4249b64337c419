//! llama.cpp's importance-matrix files (what `llama-imatrix` writes), read
//! as `llama-quantize --imatrix FILE` reads them: the GGUF format
//! (`<tensor>.in_sum2` and `<tensor>.counts` per weight, `imatrix.*`
//! metadata) and the older binary `.dat` format. Each weight's importance is
//! its sums divided by its count, per matrix (expert).

use crate::gguf::{Array, Gguf, Value};
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// An importance matrix, ready for the quantizers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Imatrix {
    /// Per weight name: one value per column (per matrix of a 3-D weight).
    pub values: BTreeMap<String, Vec<f32>>,
    /// The calibration datasets the file names.
    pub datasets: Vec<String>,
    /// Chunks of calibration text the file was computed on (0: unknown).
    pub chunk_count: i32,
}

/// What a file holds before the division: sums and counts per weight.
struct Entry {
    sums: Vec<f32>,
    counts: Vec<i64>,
}

impl Imatrix {
    /// Reads `path` (GGUF when it starts with the GGUF magic, else the
    /// legacy format).
    pub fn load(path: &Path) -> Result<Imatrix> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the importance matrix {}", path.display()))?;
        let context = || {
            format!(
                "{}: not an importance matrix llama.cpp can read",
                path.display()
            )
        };
        let (entries, datasets, chunk_count, legacy) = if bytes.starts_with(b"GGUF") {
            read_gguf(&bytes).with_context(context)?
        } else {
            read_legacy(&bytes).with_context(context)?
        };
        let mut values = BTreeMap::new();
        for (name, e) in entries {
            if e.counts.is_empty() || e.sums.is_empty() {
                continue;
            }
            let ncounts = e.counts.len();
            let ne0 = e.sums.len() / ncounts;
            let mut v = vec![0f32; e.sums.len()];
            if legacy {
                // sums / ncall, or the sums themselves when ncall is 0.
                let ncall = e.counts[0];
                for (o, s) in v.iter_mut().zip(&e.sums) {
                    *o = if ncall > 0 { s / ncall as f32 } else { *s };
                }
            } else {
                // Per matrix: sums / count, or 1 where it saw no input.
                for (j, &count) in e.counts.iter().enumerate() {
                    let count = count as f32;
                    for i in 0..ne0 {
                        v[j * ne0 + i] = if count > 0.0 {
                            e.sums[j * ne0 + i] / count
                        } else {
                            1.0
                        };
                    }
                }
            }
            if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                bail!(
                    "{}: the importance of {name} contains the non-finite value {bad}",
                    path.display()
                );
            }
            values.insert(name, v);
        }
        Ok(Imatrix {
            values,
            datasets,
            chunk_count,
        })
    }
}

type Parsed = (BTreeMap<String, Entry>, Vec<String>, i32, bool);

/// The GGUF format: `<name>.in_sum2` (F32 sums) and `<name>.counts` (F32
/// counts, one per matrix), with `imatrix.datasets`, `imatrix.chunk_count`
/// and `imatrix.chunk_size`, which llama-quantize requires.
fn read_gguf(bytes: &[u8]) -> Result<Parsed> {
    let g = Gguf::parse(bytes)?;
    ensure!(!g.tensors.is_empty(), "no data in the file");
    let find = |k: &str| g.metadata.iter().find(|(n, _)| n == k).map(|(_, v)| v);
    let (datasets, count, size) = (
        find("imatrix.datasets"),
        find("imatrix.chunk_count"),
        find("imatrix.chunk_size"),
    );
    ensure!(
        datasets.is_some() && count.is_some() && size.is_some(),
        "missing imatrix metadata (imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size)"
    );
    let mut names = Vec::new();
    if let Some(Value::Array(Array::Strings(items))) = datasets {
        for v in items {
            // C strings: up to the first NUL.
            let s = String::from_utf8_lossy(v);
            names.push(s.split('\0').next().unwrap_or_default().to_string());
        }
    }
    let chunk_count = match count {
        Some(Value::U32(n)) => *n as i32,
        Some(other) => bail!("imatrix.chunk_count is {other:?}, not a UINT32"),
        None => 0,
    };
    let mut sums: BTreeMap<String, Option<&crate::gguf::TensorInfo>> = BTreeMap::new();
    let mut counts: BTreeMap<String, Option<&crate::gguf::TensorInfo>> = BTreeMap::new();
    for t in &g.tensors {
        if let Some(n) = t.name.strip_suffix(".in_sum2") {
            sums.insert(n.to_string(), Some(t));
            counts.entry(n.to_string()).or_insert(None);
        } else if let Some(n) = t.name.strip_suffix(".counts") {
            counts.insert(n.to_string(), Some(t));
            sums.entry(n.to_string()).or_insert(None);
        }
    }
    let mut entries = BTreeMap::new();
    for (name, s) in sums {
        let (Some(s), Some(c)) = (s, counts[&name]) else {
            bail!("mismatched sums and counts for {name}");
        };
        let f32s = |t: &crate::gguf::TensorInfo| -> Result<Vec<f32>> {
            ensure!(
                t.dtype.id() == 0,
                "sums and counts for {name} must be F32, {} is {}",
                t.name,
                t.dtype
            );
            Ok(g.tensor_data(t)
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect())
        };
        let sums = f32s(s)?;
        // std::lround: half away from zero.
        let counts = f32s(c)?.iter().map(|v| v.round() as i64).collect();
        entries.insert(name, Entry { sums, counts });
    }
    Ok((entries, names, chunk_count, false))
}

/// The legacy format: `i32 n_entries`, then per entry `i32 len, name,
/// i32 ncall, i32 nval, f32 values[nval]`, then optionally `i32
/// chunk_count, i32 len, dataset`.
fn read_legacy(bytes: &[u8]) -> Result<Parsed> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        ensure!(
            bytes.len() - at >= n,
            "the file ends at byte {} inside a record of {n} bytes at {at}",
            bytes.len()
        );
        at += n;
        Ok(&bytes[at - n..at])
    };
    let i32_at = |b: &[u8]| i32::from_le_bytes(b.try_into().expect("4 bytes"));
    let n_entries = i32_at(take(4)?);
    ensure!(
        n_entries >= 1,
        "no data in the file (n_entries {n_entries})"
    );
    let mut entries = BTreeMap::new();
    for i in 0..n_entries {
        let len = i32_at(take(4)?);
        ensure!(len >= 0, "entry {i}: name length {len}");
        let name = String::from_utf8_lossy(take(len as usize)?).into_owned();
        // C reads the name up to its first NUL.
        let name = name.split('\0').next().unwrap_or_default().to_string();
        let ncall = i32_at(take(4)?);
        let nval = i32_at(take(4)?);
        ensure!(nval >= 1, "entry {i} ({name}): {nval} values");
        let raw = take(4 * nval as usize)?;
        let sums = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        entries.insert(
            name,
            Entry {
                sums,
                counts: vec![i64::from(ncall)],
            },
        );
    }
    let (mut chunk_count, mut datasets) = (0, Vec::new());
    // The optional tail: the chunk count, then the dataset's name.
    if bytes.len() - at >= 4 {
        chunk_count = i32_at(&bytes[at..at + 4]);
        at += 4;
        if bytes.len() - at >= 4 {
            let len = i32_at(&bytes[at..at + 4]);
            at += 4;
            if len > 0 && bytes.len() - at >= len as usize {
                let d = String::from_utf8_lossy(&bytes[at..at + len as usize]);
                datasets.push(d.split('\0').next().unwrap_or_default().to_string());
            }
        }
    }
    Ok((entries, datasets, chunk_count, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgmlDtype, GgufWriter};

    fn legacy(entries: &[(&str, i32, &[f32])], tail: Option<(i32, &str)>) -> Vec<u8> {
        let mut b = (entries.len() as i32).to_le_bytes().to_vec();
        for (name, ncall, v) in entries {
            b.extend((name.len() as i32).to_le_bytes());
            b.extend(name.as_bytes());
            b.extend(ncall.to_le_bytes());
            b.extend((v.len() as i32).to_le_bytes());
            for x in *v {
                b.extend(x.to_le_bytes());
            }
        }
        if let Some((chunks, dataset)) = tail {
            b.extend(chunks.to_le_bytes());
            b.extend((dataset.len() as i32).to_le_bytes());
            b.extend(dataset.as_bytes());
        }
        b
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn legacy_files_divide_by_ncall() {
        let dir = tempdir();
        let b = legacy(
            &[("a.weight", 4, &[2.0, 6.0]), ("b.weight", 0, &[3.0])],
            Some((7, "wiki.txt")),
        );
        let m = Imatrix::load(&write(&dir, "i.dat", &b)).unwrap();
        assert_eq!(m.values["a.weight"], vec![0.5, 1.5]);
        assert_eq!(m.values["b.weight"], vec![3.0]);
        assert_eq!(
            (m.chunk_count, m.datasets.clone()),
            (7, vec!["wiki.txt".to_string()])
        );
        // No tail: no chunk count, no dataset.
        let m = Imatrix::load(&write(&dir, "j.dat", &legacy(&[("a", 1, &[1.0])], None))).unwrap();
        assert_eq!((m.chunk_count, m.datasets.len()), (0, 0));
        // Truncated and empty files are errors naming the file.
        for bad in [&b[..b.len() - 20], &b[..10], &0i32.to_le_bytes()[..]] {
            let e = Imatrix::load(&write(&dir, "bad.dat", bad)).unwrap_err();
            assert!(format!("{e:#}").contains("bad.dat"), "{e:#}");
        }
    }

    #[test]
    fn gguf_files_divide_each_matrix_by_its_count() {
        let dir = tempdir();
        let mut w = GgufWriter::new();
        w.push_kv("general.type", Value::String(b"imatrix".to_vec()));
        w.push_kv(
            "imatrix.datasets",
            Value::Array(Array::Strings(vec![b"c4.txt".to_vec()])),
        );
        w.push_kv("imatrix.chunk_count", Value::U32(12));
        w.push_kv("imatrix.chunk_size", Value::U32(512));
        let f32t = GgmlDtype::from_name("F32").unwrap();
        w.push_tensor("x.weight.in_sum2", &[2, 2], f32t).unwrap();
        w.push_tensor("x.weight.counts", &[1, 2], f32t).unwrap();
        let mut out = Vec::new();
        w.write_header(&mut out).unwrap();
        let data = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        w.write_tensor_data(&mut out, &data(&[4.0, 8.0, 5.0, 7.0]))
            .unwrap();
        w.write_tensor_data(&mut out, &data(&[2.0, 0.0])).unwrap();
        let m = Imatrix::load(&write(&dir, "i.gguf", &out)).unwrap();
        assert_eq!(m.values["x.weight"], vec![2.0, 4.0, 1.0, 1.0]);
        assert_eq!(
            (m.chunk_count, m.datasets.clone()),
            (12, vec!["c4.txt".to_string()])
        );
    }

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "groupq-imatrix-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
