//! Every block-level case of `tests/golden/ggml/` (made by llama.cpp's own
//! `ggml_quantize_chunk`, see the README there) reproduced bit for bit by
//! `groupq::ggml::quantize_rows`, and the blocks decoded back by
//! `dequantize_rows` within each format's error bound.
//!
//! No case is skipped: a file this test cannot read, or whose type the
//! library does not know, fails it; so does a file missing from the
//! manifest or a manifest entry missing from the folder.

use groupq::ggml::{dequantize_rows, quantize_rows, GgmlType};
use groupq::*;
use proptest::prelude::*;
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

/// Every backend this CPU has that serves the type (the K-quant searches
/// have vector kernels; the rest run on the scalar backend alone).
fn backends_for(ty: GgmlType, imatrix: bool) -> Vec<BackendKind> {
    let all = [
        BackendKind::Scalar,
        BackendKind::Sse41,
        BackendKind::Avx2,
        BackendKind::Avx512,
    ];
    let stream = Stream::cpu_with_threads(1).unwrap();
    let desc = QuantizeGgmlBlocksDescriptor {
        rows: 1,
        n_per_row: ty.block_size(),
        ggml_type: ty,
        imatrix,
    };
    all.into_iter()
        .filter(|&b| {
            let pref = PlanPreference {
                prefer_backend: Some(b),
                ..Default::default()
            };
            QuantizeGgmlBlocksPlan::select(&stream, &desc, pref).is_ok()
        })
        .collect()
}

/// The plan on `backend` with `threads` threads.
fn plan_quantize(
    ty: GgmlType,
    x: &[f32],
    n: usize,
    qw: Option<&[f32]>,
    backend: BackendKind,
    threads: usize,
) -> Vec<u8> {
    let rows = x.len() / n;
    let rb = ty.row_bytes(n).unwrap();
    let stream = Stream::cpu_with_threads(threads).unwrap();
    let desc = QuantizeGgmlBlocksDescriptor {
        rows,
        n_per_row: n,
        ggml_type: ty,
        imatrix: qw.is_some(),
    };
    let pref = PlanPreference {
        prefer_backend: Some(backend),
        ..Default::default()
    };
    let plan = QuantizeGgmlBlocksPlan::select(&stream, &desc, pref).unwrap();
    assert_eq!(plan.sku().backend, backend);
    let mut out = vec![0u8; rows * rb];
    plan.run(
        &stream,
        Workspace::None,
        QuantizeGgmlBlocksArgs {
            input: TensorRef::new(x, [rows, n]).unwrap(),
            imatrix: qw,
            output: TensorMut::new(&mut out, [rows, rb]).unwrap(),
        },
    )
    .unwrap();
    out
}

#[test]
fn every_public_case_through_the_plan_on_every_backend_and_thread_count() {
    let mut vector = 0;
    for c in cases() {
        let backends = backends_for(c.ty, c.imatrix.is_some());
        vector += backends.len() - 1;
        for b in backends {
            for threads in [1, 3] {
                let got = plan_quantize(c.ty, &c.input, c.n, c.imatrix.as_deref(), b, threads);
                if let Some(d) = first_diff(c.ty, c.n, &got, &c.blocks) {
                    panic!("{} on {b} with {threads} threads: {d}", c.file);
                }
            }
        }
        // The dequantize plan equals the free function.
        let stream = Stream::cpu_with_threads(2).unwrap();
        let desc = DequantizeGgmlBlocksDescriptor {
            rows: c.rows,
            n_per_row: c.n,
            ggml_type: c.ty,
        };
        let plan = DequantizeGgmlBlocksPlan::select(&stream, &desc, Default::default()).unwrap();
        let rb = c.ty.row_bytes(c.n).unwrap();
        let mut a = vec![0f32; c.rows * c.n];
        plan.run(
            &stream,
            Workspace::None,
            DequantizeGgmlBlocksArgs {
                input: TensorRef::new(&c.blocks, [c.rows, rb]).unwrap(),
                output: TensorMut::new(&mut a, [c.rows, c.n]).unwrap(),
            },
        )
        .unwrap();
        let mut b = vec![0f32; c.rows * c.n];
        dequantize_rows(c.ty, &c.blocks, c.n, &mut b).unwrap();
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.1") {
        assert!(vector > 0, "no vector backend was tested");
    }
}

/// Finite values a block may hold: ordinary ones, values at many scales,
/// exact ties of the code grids, ±0, the extremes of f32 and subnormals.
fn finite() -> impl Strategy<Value = f32> {
    prop_oneof![
        12 => -1.0f32..1.0,
        2 => (-1.0f32..1.0, -40i32..40).prop_map(|(m, e)| m * 2f32.powi(e)),
        1 => (-64i32..64).prop_map(|k| k as f32 * 0.5),
        1 => prop::sample::select(vec![
            0.0f32, -0.0, f32::MAX, -f32::MAX, f32::MIN_POSITIVE, -f32::MIN_POSITIVE,
            1e-40, -1e-40, f32::from_bits(1), 1e-15, 65504.0, 65520.0, 1e-7,
        ]),
    ]
}

/// A super-block: ordinary values (most often), a scaled copy of them, a
/// constant, all zero but one value, or ordinary values with ±inf and NaN
/// sprinkled in.
fn row_values(n: usize) -> impl Strategy<Value = Vec<f32>> {
    // Peaked around zero with rare outliers, as weights are.
    let weight = (-1.0f32..1.0, -1.0f32..1.0, 0u32..64).prop_map(|(a, b, k)| {
        let v = a * b.abs();
        if k == 0 {
            v * 20.0
        } else {
            v
        }
    });
    let normal = prop::collection::vec(weight, n);
    prop_oneof![
        6 => normal.clone(),
        2 => prop::collection::vec(finite(), n),
        1 => finite().prop_map(move |v| vec![v; n]),
        1 => (finite(), 0..n).prop_map(move |(v, i)| {
            let mut x = vec![0.0; n];
            x[i] = v;
            x
        }),
        1 => (normal, prop::collection::vec((0..n, prop::sample::select(vec![
            f32::INFINITY, f32::NEG_INFINITY, f32::NAN,
        ])), 1..4)).prop_map(|(mut x, specials)| {
            for (i, v) in specials {
                x[i] = v;
            }
            x
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Every vector search equals the scalar one, byte for byte, on random
    /// rows (several super-blocks, so the lanes hold different sub-blocks),
    /// special values included; any thread count too.
    #[test]
    fn every_backend_equals_the_scalar_code(
        ty in prop::sample::select(vec![
            GgmlType::Q2K, GgmlType::Q3K, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K,
            GgmlType::Iq4Nl, GgmlType::Iq4Xs, GgmlType::Q4_0, GgmlType::Q5_0,
            GgmlType::Q4_1, GgmlType::Q5_1,
        ]),
        supers in 1usize..12,
        rows in 1usize..4,
        seed_rows in prop::collection::vec(row_values(256), 1..8),
        with_imatrix in prop::bool::ANY,
        imatrix_seed in prop::collection::vec(0.01f32..20.0, 256),
    ) {
        let n = 256 * supers;
        // An importance matrix (positive weights; some zero) for the
        // types whose weighted search is vectorized too.
        let imatrix: Option<Vec<f32>> = (with_imatrix && backends_for(ty, true).len() > 1).then(|| {
            (0..n).map(|j| if j % 97 == 5 { 0.0 } else { imatrix_seed[j % 256] }).collect()
        });
        let qw = imatrix.as_deref();
        let x: Vec<f32> = (0..rows * supers)
            .flat_map(|i| seed_rows[i % seed_rows.len()].iter().map(move |v| {
                // Vary the copies so that lanes differ.
                if i % 3 == 1 { v * 0.75 } else { *v }
            }))
            .collect();
        let reference = plan_quantize(ty, &x, n, qw, BackendKind::Scalar, 1);
        for b in backends_for(ty, qw.is_some()) {
            for threads in [1, 2] {
                let got = plan_quantize(ty, &x, n, qw, b, threads);
                prop_assert!(
                    got == reference,
                    "{ty} on {b}, {threads} threads: {:?}",
                    first_diff(ty, n, &got, &reference)
                );
            }
        }
    }
}

#[test]
fn plan_errors_name_the_field_and_write_nothing() {
    let stream = Stream::cpu_with_threads(2).unwrap();
    let ty = GgmlType::Q4K;
    let bad = QuantizeGgmlBlocksDescriptor {
        rows: 2,
        n_per_row: 300,
        ggml_type: ty,
        imatrix: false,
    };
    let e = QuantizeGgmlBlocksPlan::select(&stream, &bad, Default::default()).unwrap_err();
    assert!(e.to_string().contains("n_per_row 300"), "{e}");
    let e = DequantizeGgmlBlocksPlan::select(
        &stream,
        &DequantizeGgmlBlocksDescriptor {
            rows: 2,
            n_per_row: 300,
            ggml_type: ty,
        },
        Default::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("n_per_row 300"), "{e}");
    // No machine here has NEON.
    let pref = PlanPreference {
        prefer_backend: Some(BackendKind::Neon),
        ..Default::default()
    };
    let desc = QuantizeGgmlBlocksDescriptor {
        rows: 2,
        n_per_row: 256,
        ggml_type: ty,
        imatrix: true,
    };
    assert!(matches!(
        QuantizeGgmlBlocksPlan::select(&stream, &desc, pref),
        Err(Error::Unsupported(_))
    ));

    let plan = QuantizeGgmlBlocksPlan::select(&stream, &desc, Default::default()).unwrap();
    let x = vec![0.5f32; 512];
    let qw = vec![1.0f32; 256];
    let mut out = vec![0xAAu8; 2 * 144];
    let run = |imatrix: Option<&[f32]>, out: &mut [u8], shape: [usize; 2]| {
        plan.run(
            &stream,
            Workspace::None,
            QuantizeGgmlBlocksArgs {
                input: TensorRef::new(&x, [2, 256]).unwrap(),
                imatrix,
                output: TensorMut::new(out, shape).unwrap(),
            },
        )
    };
    let e = run(None, &mut out, [2, 144]).unwrap_err();
    assert!(e.to_string().contains("imatrix is None"), "{e}");
    let e = run(Some(&qw[..255]), &mut out, [2, 144]).unwrap_err();
    assert!(e.to_string().contains("imatrix holds 255"), "{e}");
    let e = run(Some(&qw), &mut out, [2, 143]).unwrap_err();
    assert!(e.to_string().contains("output shape [2, 143]"), "{e}");
    assert!(out.iter().all(|&b| b == 0xAA));
    run(Some(&qw), &mut out, [2, 144]).unwrap();
    assert!(out.iter().any(|&b| b != 0xAA));
}
