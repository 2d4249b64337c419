//! Every block-level case of `tests/golden/ggml/` (made by llama.cpp's own
//! `ggml_quantize_chunk`, see the README there) reproduced bit for bit by
//! `groupq::ggml::quantize_rows`, and the blocks decoded back by
//! `dequantize_rows` within each format's error bound.
//!
//! No case is skipped: a file this test cannot read, or whose type the
//! library does not know, fails it; so does a file missing from the
//! manifest or a manifest entry missing from the folder.

use groupq::ggml::{dequantize_rows, quantize_rows, GgmlType};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ggml")
}

fn f32s(st: &SafeTensors<'_>, name: &str) -> Option<Vec<f32>> {
    let t = st.tensor(name).ok()?;
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    Some(
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
    )
}

struct Case {
    file: String,
    ty: GgmlType,
    rows: usize,
    n: usize,
    input: Vec<f32>,
    blocks: Vec<u8>,
    imatrix: Option<Vec<f32>>,
}

fn cases() -> Vec<Case> {
    let dir = golden_dir();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("MANIFEST.json")).unwrap()).unwrap();
    let listed: BTreeMap<String, serde_json::Value> = manifest["files"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut found = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.starts_with("ggml__") && name.ends_with(".safetensors") {
            found.push(name);
        }
    }
    found.sort();
    assert_eq!(
        found,
        listed.keys().cloned().collect::<Vec<_>>(),
        "the folder and MANIFEST.json list different cases"
    );
    assert_eq!(found.len(), 96);

    let mut out = Vec::new();
    for file in found {
        let buf = std::fs::read(dir.join(&file)).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&buf).unwrap();
        let meta = meta.metadata().clone().expect("metadata");
        let st = SafeTensors::deserialize(&buf).unwrap();
        let tname = &meta["type"];
        let ty = GgmlType::from_name(tname)
            .unwrap_or_else(|| panic!("{file}: unknown ggml type {tname}"));
        assert_eq!(ty.name(), tname.as_str(), "{file}: the type's name");
        assert_eq!(ty.id().to_string(), meta["ggml_type_id"], "{file}: type id");
        assert_eq!(ty.block_size().to_string(), meta["block_size"], "{file}");
        assert_eq!(ty.type_size().to_string(), meta["type_size"], "{file}");
        let rows: usize = meta["rows"].parse().unwrap();
        let n: usize = meta["n_per_row"].parse().unwrap();
        assert_eq!(
            ty.row_bytes(n).unwrap().to_string(),
            meta["bytes_per_row"],
            "{file}"
        );
        let input = f32s(&st, "input").expect("input");
        let blocks = st.tensor("blocks").unwrap();
        assert_eq!(blocks.dtype(), Dtype::U8);
        let imatrix = f32s(&st, "imatrix");
        assert_eq!(
            imatrix.is_some(),
            file.contains("_imatrix__"),
            "{file}: imatrix tensor"
        );
        assert_eq!(
            imatrix.is_some(),
            listed[&file]["imatrix"].as_bool().unwrap()
        );
        out.push(Case {
            file,
            ty,
            rows,
            n,
            input,
            blocks: blocks.data().to_vec(),
            imatrix,
        });
    }
    out
}

/// The first byte where two buffers differ, with the block it falls in.
fn first_diff(ty: GgmlType, n: usize, a: &[u8], b: &[u8]) -> Option<String> {
    let i = a.iter().zip(b).position(|(x, y)| x != y)?;
    let rb = ty.row_bytes(n).unwrap();
    Some(format!(
        "byte {i} (row {}, block {}, offset {} in the block): ours {:#04x}, ggml {:#04x}",
        i / rb,
        (i % rb) / ty.type_size(),
        (i % rb) % ty.type_size(),
        a[i],
        b[i]
    ))
}

#[test]
fn every_public_case_bit_for_bit() {
    let cases = cases();
    let mut failures = Vec::new();
    let mut per_type = BTreeMap::<&str, usize>::new();
    for c in &cases {
        let mut ours = vec![0u8; c.blocks.len()];
        quantize_rows(c.ty, &c.input, c.n, c.imatrix.as_deref(), &mut ours).unwrap();
        if let Some(d) = first_diff(c.ty, c.n, &ours, &c.blocks) {
            failures.push(format!("{}: {d}", c.file));
        }
        *per_type.entry(c.ty.name()).or_default() += 1;
        // Rows are independent: one call per row gives the same bytes.
        let rb = c.ty.row_bytes(c.n).unwrap();
        let mut split = vec![0u8; c.blocks.len()];
        for (x, y) in c.input.chunks(c.n).zip(split.chunks_mut(rb)) {
            quantize_rows(c.ty, x, c.n, c.imatrix.as_deref(), y).unwrap();
        }
        assert_eq!(split, ours, "{}: row by row", c.file);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from ggml:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(per_type.len(), 12, "{per_type:?}");
}

/// Largest |x − x̂| allowed, as a fraction of the block's largest |x|: half
/// a step of the coarsest grid the format can use, widened for the
/// rounding of f16 scales and the 4- or 6-bit sub-block scales. With an
/// importance matrix the search trades error on the columns that matter
/// little for error on those that matter, so the worst element may be
/// further off.
fn bound(ty: GgmlType, imatrix: bool) -> f32 {
    let widen = if imatrix { 1.75 } else { 1.0 };
    widen
        * match ty {
            GgmlType::Q8_0 => 0.005,
            GgmlType::Q6K => 0.03,
            // q4_0 / q5_0 put the block's extreme at code −8 / −16: the other
            // sign clips at 7/8 / 15/16 of it.
            GgmlType::Q5_0 => 0.065,
            GgmlType::Q4_0 => 0.13,
            GgmlType::Q5_1 | GgmlType::Q5K => 0.06,
            GgmlType::Q4_1 | GgmlType::Q4K => 0.11,
            GgmlType::Iq4Nl | GgmlType::Iq4Xs => 0.16,
            GgmlType::Q3K => 0.25,
            GgmlType::Q2K => 0.5,
        }
}

#[test]
fn dequantization_round_trips() {
    for c in cases() {
        let mut back = vec![f32::NAN; c.input.len()];
        dequantize_rows(c.ty, &c.blocks, c.n, &mut back).unwrap();
        // Our dequantization of our own (bit-equal) blocks, row by row.
        let rb = c.ty.row_bytes(c.n).unwrap();
        for (r, (b, y)) in c.blocks.chunks(rb).zip(back.chunks(c.n)).enumerate() {
            let mut one = vec![0f32; c.n];
            dequantize_rows(c.ty, b, c.n, &mut one).unwrap();
            assert_eq!(
                one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{}: row {r}",
                c.file
            );
        }
        let bs = c.ty.block_size();
        let special = if c.rows >= 6 { c.rows - 5 } else { c.rows };
        for (i, (xb, yb)) in c.input.chunks(bs).zip(back.chunks(bs)).enumerate() {
            let row = i * bs / c.n;
            assert!(yb.iter().all(|v| v.is_finite()), "{}: block {i}", c.file);
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            if amax == 0.0 {
                assert!(yb.iter().all(|&v| v == 0.0), "{}: zero block {i}", c.file);
                continue;
            }
            // The × 1e-6 and × 1e-9 rows: f16 scales lose precision or
            // underflow, so the error also has an absolute part of up to a
            // code's worth of f16 subnormal steps (2^-24 each).
            let slack = if row >= special + 3 {
                128.0 * 2f32.powi(-24)
            } else {
                0.0
            };
            let err = xb
                .iter()
                .zip(yb)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                err <= bound(c.ty, c.imatrix.is_some()) * amax + slack,
                "{}: block {i} (row {row}): max error {err} over block max {amax}",
                c.file
            );
        }
    }
}
