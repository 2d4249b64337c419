#!/usr/bin/env python3
"""gguf_reference.py - the sha256 of what the REAL llama-quantize writes for groupq's small GGUF
test models, for crates/groupq-cli/tests/gguf_reference.json (the file-level tests compare
`groupq quantize --format gguf` with these). Not run in CI: it needs llama.cpp.

Setup (once; llama.cpp commit 0ad4a86 as an npm package, loaded with ctypes):
  npm pack @node-llama-cpp/linux-x64@3.22.1 && tar xzf node-llama-cpp-linux-x64-3.22.1.tgz
  export LLAMA_LIBDIR=$PWD/package/bins/linux-x64
Run:
  cargo build --release -p groupq-cli
  python3 scripts/gguf_reference.py [--groupq target/release/groupq] [--out DIR] [--compare]
--compare also runs `groupq quantize --format gguf` on every model and type and prints
same/DIFFERENT per file (the reference check through llama.cpp's own entry point).
"""
import argparse, ctypes, hashlib, json, os, subprocess, sys, tempfile

MODELS = ['f16-gqa4', 'bf16-tied', 'f32-narrow']
FTYPES = [('Q4_0', 2), ('Q4_1', 3), ('Q5_0', 8), ('Q5_1', 9), ('Q8_0', 7),
          ('Q2_K', 10), ('Q3_K_S', 11), ('Q3_K_M', 12), ('Q3_K_L', 13), ('Q4_K_S', 14), ('Q4_K_M', 15),
          ('Q5_K_S', 16), ('Q5_K_M', 17), ('Q6_K', 18), ('IQ4_NL', 25), ('IQ4_XS', 30),
          ('F16', 1), ('BF16', 32), ('F32', 0)]


class QParams(ctypes.Structure):  # llama_model_quantize_params, 64 bytes in llama.cpp 0ad4a86
    _fields_ = [('nthread', ctypes.c_int32), ('ftype', ctypes.c_int32),
                ('output_tensor_type', ctypes.c_int32), ('token_embedding_type', ctypes.c_int32),
                ('allow_requantize', ctypes.c_bool), ('quantize_output_tensor', ctypes.c_bool),
                ('only_copy', ctypes.c_bool), ('pure', ctypes.c_bool), ('keep_split', ctypes.c_bool),
                ('dry_run', ctypes.c_bool),
                ('imatrix', ctypes.c_void_p), ('kv_overrides', ctypes.c_void_p),
                ('tt_overrides', ctypes.c_void_p), ('prune_layers', ctypes.c_void_p),
                ('max_buf_size', ctypes.c_uint64)]


def load_llama():
    """llama.cpp's libllama from $LLAMA_LIBDIR, with llama_model_quantize declared and the
    backend initialized."""
    libdir = os.environ.get('LLAMA_LIBDIR', 'package/bins/linux-x64')
    for lib in ['libggml-base.so', 'libggml.v0.5.0.so']:
        ctypes.CDLL(os.path.join(libdir, lib), mode=ctypes.RTLD_GLOBAL)
    llama = ctypes.CDLL(os.path.join(libdir, 'libllama.v0.5.0.so'), mode=ctypes.RTLD_GLOBAL)
    llama.llama_model_quantize_default_params.restype = QParams
    llama.llama_model_quantize.restype = ctypes.c_uint32
    llama.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(QParams)]
    llama.llama_backend_init()
    return llama


def sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--groupq', default='target/release/groupq')
    ap.add_argument('--out', default=None)
    ap.add_argument('--compare', action='store_true')
    a = ap.parse_args()
    llama = load_llama()
    out = a.out or tempfile.mkdtemp(prefix='gguf-ref-')
    os.makedirs(out, exist_ok=True)
    table, differ = {}, 0
    for m in MODELS:
        src = os.path.join(out, f'{m}.gguf')
        subprocess.run([a.groupq, 'example-model', src, '--gguf', m, '--force'], check=True,
                       stdout=subprocess.DEVNULL)
        table[m] = {'input': sha256(src)}
        for name, ftype in FTYPES:
            dst = os.path.join(out, f'{m}-{name}.gguf')
            p = llama.llama_model_quantize_default_params()
            p.nthread, p.ftype = 2, ftype
            rc = llama.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
            if rc != 0:
                sys.exit(f'llama_model_quantize failed on {m} {name}: rc {rc}')
            table[m][name] = sha256(dst)
            if a.compare:
                ours = os.path.join(out, f'{m}-{name}.groupq.gguf')
                subprocess.run([a.groupq, 'quantize', src, '-o', ours, '--format', 'gguf', '--type', name,
                                '--quiet', '--force'], check=True)
                same = sha256(ours) == table[m][name]
                differ += not same
                print(f'{m:12} {name:7} {"same" if same else "DIFFERENT"}', file=sys.stderr)
    print(json.dumps(table, indent=1))
    if a.compare:
        print(f'{differ} of {len(MODELS) * len(FTYPES)} files differ', file=sys.stderr)


if __name__ == '__main__':
    main()
