#!/usr/bin/env python3
"""bench_gguf_job.py BIG.gguf - `groupq quantize --format gguf` against the real llama-quantize
(`llama_model_quantize`, 2 threads) and `cp` of the same file, in the same run, page cache warm.
Checks that both quantizers wrote the same bytes. Not run in CI: it needs llama.cpp.

Setup as in gguf_reference.py (LLAMA_LIBDIR = the npm package's bins/linux-x64); the timing model
is the golden folder's `make_gguf.py --big PATH` (~0.98 GB F16: hidden 2048, ffn 5632, 8 layers,
vocab 32000). Run:
  cargo build --release -p groupq-cli
  python3 scripts/bench_gguf_job.py BIG.gguf [--types Q4_0,Q8_0,Q4_K_M] [--reps 3]
Prints a markdown table (median seconds of --reps runs each; every output, the copy's too, is
removed and the disk synced before each run, untimed).
"""
import argparse, ctypes, hashlib, os, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_reference import FTYPES, load_llama, sha256  # noqa: E402


def timed(f, reps, out):
    """Median seconds of `reps` runs of f; `out` (the file f writes) is removed before each run
    (untimed), so that no run pays for unlinking the previous one's output."""
    ts = []
    for _ in range(reps):
        if os.path.exists(out):
            os.remove(out)
        subprocess.run(['sync'], check=False)
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('big')
    ap.add_argument('--groupq', default='target/release/groupq')
    ap.add_argument('--types', default='Q4_0,Q8_0,Q4_K_M')
    ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--llama-reps', type=int, default=1)
    a = ap.parse_args()
    llama = load_llama()
    size = os.path.getsize(a.big)
    out = tempfile.mkdtemp(prefix='gguf-bench-', dir=os.path.dirname(os.path.abspath(a.big)))
    subprocess.run(['cat', a.big], check=True, stdout=subprocess.DEVNULL)  # warm the page cache
    cp_dst = os.path.join(out, 'copy.gguf')
    cp_s = timed(lambda: subprocess.run(['cp', a.big, cp_dst], check=True), a.reps, cp_dst)
    os.remove(cp_dst)
    print(f'{a.big}: {size / 1e9:.3f} GB, cp {cp_s:.2f} s, 2 threads, page cache warm, '
          f'median of {a.reps} (groupq, cp) / {a.llama_reps} (llama-quantize) runs\n')
    print('| type | llama-quantize s | groupq s | speed-up | groupq / cp | same bytes |')
    print('|---|---|---|---|---|---|')
    ids = dict(FTYPES)
    bad = 0
    for name in a.types.split(','):
        ref = os.path.join(out, f'llama-{name}.gguf')
        ours = os.path.join(out, f'groupq-{name}.gguf')

        def run_llama():
            p = llama.llama_model_quantize_default_params()
            p.nthread, p.ftype = 2, ids[name]
            with open(os.devnull, 'w') as devnull:
                saved = os.dup(2)
                os.dup2(devnull.fileno(), 2)
                try:
                    rc = llama.llama_model_quantize(a.big.encode(), ref.encode(), ctypes.byref(p))
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)
            if rc != 0:
                sys.exit(f'llama_model_quantize {name}: rc {rc}')

        def run_groupq():
            subprocess.run([a.groupq, 'quantize', a.big, '-o', ours, '--format', 'gguf', '--type', name,
                            '--quiet', '--force'], check=True)

        t_llama = timed(run_llama, a.llama_reps, ref)
        t_ours = timed(run_groupq, a.reps, ours)
        same = sha256(ref) == sha256(ours)
        bad += not same
        print(f'| {name} | {t_llama:.2f} | {t_ours:.2f} | {t_llama / t_ours:.1f}x | {t_ours / cp_s:.2f} | '
              f'{"yes" if same else "NO"} |', flush=True)
        os.remove(ref)
        os.remove(ours)
    os.rmdir(out)
    sys.exit(1 if bad else 0)


if __name__ == '__main__':
    main()
