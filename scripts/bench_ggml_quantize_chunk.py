#!/usr/bin/env python3
"""bench_ggml_quantize_chunk.py - groupq's ggml block quantizers against llama.cpp's own
`ggml_quantize_chunk`, on the same f32 data, the same number of threads, in the same run.
Not run in CI: it needs llama.cpp.

Setup (once; llama.cpp commit 0ad4a86 as an npm package, loaded with ctypes):
  npm pack @node-llama-cpp/linux-x64@3.22.1 && tar xzf node-llama-cpp-linux-x64-3.22.1.tgz
  export LLAMA_LIBDIR=$PWD/package/bins/linux-x64
  python3 -m venv venv && venv/bin/pip install numpy
Run:
  cargo build --release -p groupq --example ggml_bench
  venv/bin/python scripts/bench_ggml_quantize_chunk.py [--rows 1024 --cols 4096 --threads 2]

It runs the ggml_bench example (which saves its input and output), then times ggml_quantize_chunk
on the same input with THREADS Python threads over row ranges (ctypes releases the GIL, so the
threads run in parallel, as llama-quantize's workers do), checks that both wrote the same bytes,
and prints a markdown table: seconds per run of each, groupq's speed-up over ggml, and groupq's
fraction of a same-run copy (from the example).
"""
import argparse, ctypes, json, os, subprocess, sys, tempfile, threading, time
import numpy as np

GGML_IDS = {'q4_0': 2, 'q4_1': 3, 'q5_0': 6, 'q5_1': 7, 'q8_0': 8, 'q2_K': 10, 'q3_K': 11,
            'q4_K': 12, 'q5_K': 13, 'q6_K': 14, 'iq4_nl': 20, 'iq4_xs': 23}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rows', type=int, default=1024)
    ap.add_argument('--cols', type=int, default=4096)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--types', default=','.join(GGML_IDS))
    ap.add_argument('--example', default='target/release/examples/ggml_bench')
    ap.add_argument('--imatrix', action='store_true',
                    help='both quantize with the importance matrix 1 + (column % 7)')
    a = ap.parse_args()
    libdir = os.environ.get('LLAMA_LIBDIR', 'package/bins/linux-x64')
    base = ctypes.CDLL(os.path.join(libdir, 'libggml-base.so'), mode=ctypes.RTLD_GLOBAL)
    chunk = base.ggml_quantize_chunk
    chunk.restype = ctypes.c_size_t
    chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                      ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    base.ggml_row_size.restype = ctypes.c_size_t
    base.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]

    with tempfile.TemporaryDirectory() as tmp:
        inp = os.path.join(tmp, 'input.f32')
        res = subprocess.run([a.example, '--rows', str(a.rows), '--cols', str(a.cols),
                              '--threads', str(a.threads), '--reps', str(a.reps),
                              '--types', a.types, '--save-input', inp,
                              '--save-output', os.path.join(tmp, 'out'), '--json']
                             + (['--imatrix'] if a.imatrix else []),
                             check=True, capture_output=True, text=True)
        ours = {j['type']: j for j in map(json.loads, res.stdout.split('\n')[:-1])}
        x = np.fromfile(inp, dtype=np.float32).reshape(a.rows, a.cols)
        qw = (1.0 + (np.arange(a.cols) % 7)).astype(np.float32) if a.imatrix else None
        qw_ptr = qw.ctypes.data if qw is not None else None
        print(f'ggml_quantize_chunk (llama.cpp 0ad4a86, libggml-base: baseline x86-64) vs '
              f'groupq, f32 [{a.rows} x {a.cols}], {a.threads} threads, same data'
              f'{", importance matrix 1 + column % 7" if a.imatrix else ""}\n')
        print('| type | ggml s | groupq s | groupq backend | speed-up | groupq fraction of copy | same bytes |')
        print('|---|---|---|---|---|---|---|')
        for name in a.types.split(','):
            ty = GGML_IDS[name]
            rb = base.ggml_row_size(ty, a.cols)
            out = np.zeros((a.rows, rb), dtype=np.uint8)
            per = (a.rows + a.threads - 1) // a.threads

            def work(r0):
                r1 = min(a.rows, r0 + per)
                if r1 > r0:
                    chunk(ty, x[r0:r1].ctypes.data, out[r0:r1].ctypes.data, 0, r1 - r0, a.cols, qw_ptr)

            def once():
                ts = [threading.Thread(target=work, args=(r0,)) for r0 in range(0, a.rows, per)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()

            once()
            times = []
            for _ in range(a.reps):
                t0 = time.perf_counter()
                once()
                times.append(time.perf_counter() - t0)
            ggml_s = sorted(times)[len(times) // 2]
            mine = ours[name]
            same = np.array_equal(np.fromfile(os.path.join(tmp, f'out.{name}.bin'), dtype=np.uint8),
                                  out.reshape(-1))
            print(f"| {name} | {ggml_s:.4f} | {mine['seconds']:.4f} | {mine['backend']} | "
                  f"{ggml_s / mine['seconds']:.1f}x | {mine['copy_seconds'] / mine['seconds']:.2f} | "
                  f"{'yes' if same else 'NO'} |")
            if not same:
                sys.exit(1)


if __name__ == '__main__':
    main()
