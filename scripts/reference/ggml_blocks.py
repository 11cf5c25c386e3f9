#!/usr/bin/env python3
"""Writes random GGUF blocks of every ggml type llmc decodes, with gguf-py's
`gguf.quants.dequantize` of them as the expected values, to
tests/fixtures/ggml-blocks/TYPE.{blocks,f32} (raw block bytes; little-endian f32).
ir/tests/ggml_blocks.rs decodes the blocks with llmc's `quant::dequantize` and wants
0 differences. Block bytes are random except the f16 scales, which are drawn as
finite values of a model's magnitude (random bits would often be inf/NaN).

Usage: .venv/bin/python scripts/reference/ggml_blocks.py [OUT_DIR]
"""
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T, GGML_QUANT_SIZES
from gguf.quants import dequantize

# type -> byte offsets of f16 scales inside one block
SCALES = {
    T.F16: [],
    T.BF16: [],
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
    T.IQ4_NL: [0],
    T.IQ4_XS: [0],
}


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "tests/fixtures/ggml-blocks"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(13)
    for t, offs in SCALES.items():
        block_len, block_bytes = GGML_QUANT_SIZES[t]
        n_blocks = 2048 // block_len if block_len > 1 else 512
        raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
        if t == T.F16:
            raw = rng.normal(0, 2, size=n_blocks).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
        elif t == T.BF16:
            f = rng.normal(0, 2, size=n_blocks).astype(np.float32).view(np.uint32)
            raw = (f >> 16).astype(np.uint16).view(np.uint8).reshape(n_blocks, 2)
        for o in offs:
            d = (rng.normal(0, 0.05, size=n_blocks)).astype(np.float16)
            raw[:, o:o + 2] = d.view(np.uint8).reshape(n_blocks, 2)
        want = dequantize(raw.reshape(-1), t).astype(np.float32).reshape(-1)
        assert want.size == n_blocks * block_len, (t.name, want.shape)
        assert np.isfinite(want).all(), t.name
        name = t.name.lower()
        (out / f"{name}.blocks").write_bytes(raw.tobytes())
        (out / f"{name}.f32").write_bytes(want.astype("<f4").tobytes())
        print(f"{name}: {n_blocks} blocks, {want.size} values")


if __name__ == "__main__":
    main()
