# Writes a copy of a GGUF with every tensor dequantized to F32 (metadata copied as is), so that llama.cpp
# multiplies F32 weights by F32 activations instead of quantizing activations to Q8 for its Q4_1 kernels.
# The weights are the exact values the quantized file stands for. Needs gguf-py and numpy:
#   python3 -m venv /tmp/gguf-venv && /tmp/gguf-venv/bin/pip install gguf numpy
#   /tmp/gguf-venv/bin/python dequant_to_f32.py IN.gguf OUT.gguf
import sys, numpy as np, gguf
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType, GGUFValueType
src, dst = sys.argv[1], sys.argv[2]
r = GGUFReader(src)
arch = r.fields['general.architecture'].contents()
w = GGUFWriter(dst, arch)
for name, f in r.fields.items():
    if name.startswith('GGUF.') or name == 'general.architecture': continue
    vt = f.types[0]
    sub = f.types[-1] if vt == GGUFValueType.ARRAY else None
    w.add_key_value(name, f.contents(), vt, sub_type=sub)
for t in r.tensors:
    a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    shape = list(reversed([int(x) for x in t.shape]))
    w.add_tensor(t.name, a.reshape(shape), raw_dtype=GGMLQuantizationType.F32)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print('ok')
