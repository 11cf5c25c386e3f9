#!/usr/bin/env python3
"""Writes two tiny llama GGUF files (f32, and q8_0 matrices) with a byte-level BPE
tokenizer into fuzz/corpus/gguf_reader/, as seeds that reach the llama config, the
tokenizer metadata and the graph builder. Needs the `gguf` and `numpy` packages:
    python3 -m venv .venv && .venv/bin/pip install gguf numpy
    .venv/bin/python fuzz/make_seeds.py
"""

import os

import gguf
import numpy as np
from gguf import GGUFWriter

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "gguf_reader")


def make(path, layers=1, h=32, heads=4, kv=2, ffn=32, vocab=8, quant=False):
    w = GGUFWriter(path, "llama")
    w.add_block_count(layers)
    w.add_context_length(16)
    w.add_embedding_length(h)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    toks = ["<s>", "a", "b", "ab", "c", "abc", "\u0120", "\u0120a"][:vocab]
    w.add_token_list(toks)
    w.add_token_types([3] + [1] * (vocab - 1))
    w.add_token_merges(["a b", "ab c", "\u0120 a"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_chat_template("{{ messages }}")
    rng = np.random.default_rng(0)

    def tensor(name, shape):
        a = rng.standard_normal(shape).astype(np.float32)
        if quant and len(shape) == 2:
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, a)

    d = h // heads
    tensor("token_embd.weight", (vocab, h))
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", (h,))
        tensor(f"blk.{i}.attn_q.weight", (heads * d, h))
        tensor(f"blk.{i}.attn_k.weight", (kv * d, h))
        tensor(f"blk.{i}.attn_v.weight", (kv * d, h))
        tensor(f"blk.{i}.attn_output.weight", (h, heads * d))
        tensor(f"blk.{i}.ffn_norm.weight", (h,))
        tensor(f"blk.{i}.ffn_gate.weight", (ffn, h))
        tensor(f"blk.{i}.ffn_up.weight", (ffn, h))
        tensor(f"blk.{i}.ffn_down.weight", (h, ffn))
    tensor("output_norm.weight", (h,))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    make(os.path.join(OUT, "tiny_f32.gguf"), h=8, heads=2, kv=1, ffn=8)
    make(os.path.join(OUT, "tiny_q8.gguf"), quant=True)
