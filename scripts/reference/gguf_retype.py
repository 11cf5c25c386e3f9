#!/usr/bin/env python3
"""Re-encodes a GGUF file's tensors in another ggml type (F32, F16, BF16, Q8_0, Q4_0),
keeping every metadata key (tokenizer, chat template, hyperparameters) as it was.

The F16/F32/BF16 variants of SmolLM2 that the CPU-kernel benchmarks compare against
llama.cpp are made from the published Q4_1 GGUF this way (dequantized with gguf-py,
then stored as the new type), so every format runs the same numbers. 1-D tensors
(norms) stay F32, as llama.cpp's converter keeps them.

Usage (a venv with gguf and numpy; scripts/test's .venv has both):
  python scripts/reference/gguf_retype.py IN.gguf OUT.gguf f16
"""

import sys

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quantize

TYPES = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}


def field_value(f):
    """A reader field's value as the writer takes it."""
    t = f.types[0]
    if t == GGUFValueType.ARRAY:
        sub = f.types[-1]
        if sub == GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if t == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]].tolist()[0]


def main():
    if len(sys.argv) != 4 or sys.argv[3] not in TYPES:
        sys.exit(f"usage: {sys.argv[0]} IN.gguf OUT.gguf {{{','.join(TYPES)}}}")
    src, dst, want = sys.argv[1], sys.argv[2], TYPES[sys.argv[3]]
    r = GGUFReader(src)
    arch = field_value(r.fields["general.architecture"])
    w = GGUFWriter(dst, arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        t = f.types[0]
        sub = f.types[-1] if t == GGUFValueType.ARRAY else None
        w.add_key_value(name, field_value(f), t, sub_type=sub)
    for t in r.tensors:
        shape = [int(x) for x in reversed(t.shape.tolist())]  # numpy order
        x = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        qt = want if x.ndim >= 2 else T.F32
        if qt == T.F32:
            w.add_tensor(t.name, x)
        elif qt == T.F16:
            w.add_tensor(t.name, x.astype(np.float16))
        else:
            w.add_tensor(t.name, quantize(x, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{dst}: {len(r.tensors)} tensors as {sys.argv[3]}")


if __name__ == "__main__":
    main()
