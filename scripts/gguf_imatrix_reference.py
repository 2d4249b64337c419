#!/usr/bin/env python3
"""gguf_imatrix_reference.py - what the REAL llama-quantize writes with an importance matrix, for
crates/groupq-cli/tests/gguf_imatrix_reference.json and the imatrix files in
crates/groupq-cli/tests/imatrix/ (the file-level tests compare `groupq quantize --format gguf
--imatrix FILE` with these sha256). Not run in CI: it needs llama.cpp (see gguf_reference.py).

For each test model it writes two importance-matrix files, deterministic (seeded):
  <model>.imatrix.gguf  llama-imatrix's GGUF format: <name>.in_sum2 (F32 [ne0, 1]) and
                        <name>.counts (F32 [1, 1]) for every 2-D weight but token_embd, and the
                        imatrix.datasets / chunk_count / chunk_size metadata
  <model>.imatrix.dat   the legacy binary format, same weights
then calls llama_model_quantize as the llama-quantize tool does with --imatrix: params.imatrix
holds sums / count per weight, and params.kv_overrides the tool's four quantize.imatrix.* keys
(file = the path as given, here the bare file name). Run from anywhere:
  cargo build --release -p groupq-cli
  LLAMA_LIBDIR=... python3 scripts/gguf_imatrix_reference.py [--compare]
--compare also runs groupq (from the imatrix folder, with the bare file name) and prints
same/DIFFERENT per file.
"""
import argparse, ctypes, json, os, struct, subprocess, sys, tempfile
import numpy as np
import gguf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_reference import FTYPES, MODELS, load_llama, sha256  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMDIR = os.path.join(ROOT, 'crates', 'groupq-cli', 'tests', 'imatrix')
OUT_JSON = os.path.join(ROOT, 'crates', 'groupq-cli', 'tests', 'gguf_imatrix_reference.json')
FTYPES_IM = FTYPES[:] + [('Q2_K_S', 21)]
FTYPES_IM = [f for f in FTYPES_IM if f[0] not in ('F16', 'BF16', 'F32')]


class ImatrixEntry(ctypes.Structure):  # struct llama_model_imatrix_data
    _fields_ = [('name', ctypes.c_char_p), ('data', ctypes.c_void_p), ('size', ctypes.c_size_t)]


class KvVal(ctypes.Union):
    _fields_ = [('i64', ctypes.c_int64), ('f64', ctypes.c_double), ('b', ctypes.c_bool),
                ('s', ctypes.c_char * 128)]


class KvOverride(ctypes.Structure):  # struct llama_model_kv_override, 264 bytes
    _fields_ = [('tag', ctypes.c_int32), ('key', ctypes.c_char * 128), ('val', KvVal)]


KV_INT, KV_STR = 0, 3


def make_imatrix(model_path, seed):
    """(sums, counts) per weight, as llama-imatrix would record them."""
    r = gguf.GGUFReader(model_path)
    rng = np.random.default_rng(seed)
    out = {}
    for t in r.tensors:
        if len(t.shape) >= 2 and t.name != 'token_embd.weight':
            ne0 = int(t.shape[0])
            count = int(rng.integers(1, 60))
            sums = (np.exp(rng.standard_normal(ne0)) * count).astype(np.float32)
            out[t.name] = (sums, count)
    return out


def write_gguf(path, entries, dataset, chunks):
    w = gguf.GGUFWriter(path, 'imatrix')
    w.add_type('imatrix')
    w.add_array('imatrix.datasets', [dataset])
    w.add_uint32('imatrix.chunk_count', chunks)
    w.add_uint32('imatrix.chunk_size', 512)
    for name, (sums, count) in entries.items():
        w.add_tensor(name + '.in_sum2', sums.reshape(1, -1))
        w.add_tensor(name + '.counts', np.array([[count]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_dat(path, entries, dataset, chunks):
    b = struct.pack('<i', len(entries))
    for name, (sums, count) in entries.items():
        nb = name.encode()
        b += struct.pack('<i', len(nb)) + nb + struct.pack('<ii', count, sums.size) + sums.tobytes()
    d = dataset.encode()
    b += struct.pack('<ii', chunks, len(d)) + d
    with open(path, 'wb') as f:
        f.write(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--groupq', default=os.path.join(ROOT, 'target', 'release', 'groupq'))
    ap.add_argument('--compare', action='store_true')
    a = ap.parse_args()
    llama = load_llama()
    os.makedirs(IMDIR, exist_ok=True)
    work = tempfile.mkdtemp(prefix='gguf-imatrix-ref-')
    table, differ, total = {}, 0, 0
    for mi, m in enumerate(MODELS):
        src = os.path.join(work, f'{m}.gguf')
        subprocess.run([a.groupq, 'example-model', src, '--gguf', m, '--force'], check=True,
                       stdout=subprocess.DEVNULL)
        entries = make_imatrix(src, 4242 + mi)
        dataset, chunks = f'calibration-{m}.txt', 10 + mi
        files = {'gguf': f'{m}.imatrix.gguf', 'dat': f'{m}.imatrix.dat'}
        write_gguf(os.path.join(IMDIR, files['gguf']), entries, dataset, chunks)
        write_dat(os.path.join(IMDIR, files['dat']), entries, dataset, chunks)
        # llama-quantize's load_imatrix: sums / (float) count, in f32.
        values = {k: (s / np.float32(c)).astype(np.float32) for k, (s, c) in entries.items()}
        names = [ctypes.c_char_p(k.encode()) for k in values]
        arr = (ImatrixEntry * (len(values) + 1))()
        for i, (k, v) in enumerate(values.items()):
            arr[i].name, arr[i].data, arr[i].size = names[i].value, v.ctypes.data, v.size
        arr[len(values)].name = None
        table[m] = {'input': sha256(src), 'imatrix_gguf': sha256(os.path.join(IMDIR, files['gguf'])),
                    'imatrix_dat': sha256(os.path.join(IMDIR, files['dat']))}
        for kind, fname in files.items():
            kvs = (KvOverride * 5)()
            for i, (key, tag, val) in enumerate([
                    ('quantize.imatrix.file', KV_STR, fname),
                    ('quantize.imatrix.dataset', KV_STR, dataset),
                    ('quantize.imatrix.entries_count', KV_INT, len(values)),
                    ('quantize.imatrix.chunks_count', KV_INT, chunks)]):
                kvs[i].tag, kvs[i].key = tag, key.encode()
                if tag == KV_STR:
                    kvs[i].val.s = val.encode()
                else:
                    kvs[i].val.i64 = val
            kvs[4].key = b''
            for name, ftype in FTYPES_IM:
                dst = os.path.join(work, f'{m}-{name}-{kind}.gguf')
                p = llama.llama_model_quantize_default_params()
                p.nthread, p.ftype = 2, ftype
                p.imatrix = ctypes.addressof(arr)
                p.kv_overrides = ctypes.addressof(kvs)
                rc = llama.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
                if rc != 0:
                    sys.exit(f'llama_model_quantize failed on {m} {name} ({kind}): rc {rc}')
                table[m][f'{name}/{kind}'] = sha256(dst)
                if a.compare:
                    ours = os.path.join(work, f'{m}-{name}-{kind}.groupq.gguf')
                    subprocess.run([a.groupq, 'quantize', src, '-o', ours, '--format', 'gguf', '--type', name,
                                    '--imatrix', fname, '--quiet', '--force'], check=True, cwd=IMDIR)
                    same = sha256(ours) == table[m][f'{name}/{kind}']
                    differ += not same
                    total += 1
                    print(f'{m:12} {name:7} {kind:4} {"same" if same else "DIFFERENT"}', file=sys.stderr)
    with open(OUT_JSON, 'w') as f:
        json.dump(table, f, indent=1)
        f.write('\n')
    if a.compare:
        print(f'{differ} of {total} files differ', file=sys.stderr)


if __name__ == '__main__':
    main()
