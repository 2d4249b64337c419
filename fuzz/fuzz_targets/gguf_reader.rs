//! The GGUF reader on arbitrary bytes: it returns a typed error or a file
//! whose tensors lie inside the bytes, and what it read writes back to
//! bytes that read the same.
#![no_main]

use groupq_cli::gguf::{Gguf, GgufWriter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::parse(data) else { return };
    let mut w = GgufWriter::new();
    w.alignment = g.alignment;
    for (k, v) in &g.metadata {
        w.push_kv(k, v.clone());
    }
    for t in &g.tensors {
        w.push_tensor(&t.name, &t.dims, t.dtype).expect("a tensor the reader accepted");
    }
    let mut out = Vec::new();
    w.write_header(&mut out).expect("writing to memory");
    for t in &g.tensors {
        let d = g.tensor_data(t);
        assert_eq!(d.len() as u64, t.size);
        w.write_tensor_data(&mut out, d).expect("writing to memory");
    }
    let again = Gguf::parse(&out).expect("what the writer wrote reads back");
    assert_eq!(again.metadata.len(), g.metadata.len());
    assert_eq!(again.tensors, w.tensors);
    for (a, b) in again.metadata.iter().zip(&g.metadata) {
        assert_eq!(a.0, b.0);
        // NaN floats compare unequal: compare the serialized forms instead.
        assert_eq!(format!("{:?}", a.1), format!("{:?}", b.1));
    }
});
