#!/usr/bin/env python3
"""check_gguf_with_ggufpy.py QUANTIZED.gguf DEQUANTIZED_F32.gguf - reads a GGUF file groupq wrote
with gguf-py's own reader (GGUFReader, the library llama.cpp's Python tools use) and checks it:
every tensor has a type and shape gguf-py understands, its data fills exactly its bytes, the
metadata reads back, and where gguf-py can dequantize a type (gguf.quants.dequantize), its values
equal what `groupq dequantize --dtype float32` wrote for the same tensor, bit for bit.

Needs: pip install gguf numpy. Exit status 1 on any difference. CI runs it (.ci/run).
"""
import sys
import numpy as np
import gguf
from gguf.quants import dequantize


def main():
    quantized, restored = sys.argv[1], sys.argv[2]
    q = gguf.GGUFReader(quantized)
    r = gguf.GGUFReader(restored)
    restored_by_name = {t.name: t for t in r.tensors}
    fails, compared, skipped = 0, 0, []
    ft = q.fields.get('general.file_type')
    print(f'{quantized}: {len(q.tensors)} tensors, {len(q.fields)} fields, '
          f'file_type {int(ft.parts[ft.data[0]][0]) if ft else None}')
    for t in q.tensors:
        block, size = gguf.GGML_QUANT_SIZES[t.tensor_type]
        expected = int(np.prod(t.shape)) // block * size
        if t.n_bytes != expected or t.data.nbytes != expected:
            print(f'FAIL {t.name}: {t.n_bytes} bytes, expected {expected}')
            fails += 1
            continue
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                             gguf.GGMLQuantizationType.BF16):
            continue
        try:
            ours = dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            skipped.append(t.tensor_type.name)
            continue
        back = restored_by_name[t.name].data.reshape(ours.shape)
        if not np.array_equal(ours.view(np.uint32), back.astype(np.float32).view(np.uint32)):
            diff = np.count_nonzero(ours.view(np.uint32) != back.view(np.uint32))
            print(f'FAIL {t.name} ({t.tensor_type.name}): {diff} values differ from gguf-py')
            fails += 1
        compared += 1
    print(f'{compared} quantized tensors equal gguf-py dequantization bit for bit; '
          f'not dequantizable by gguf-py: {sorted(set(skipped)) or "none"}; {fails} failures')
    sys.exit(1 if fails else 0)


if __name__ == '__main__':
    main()
