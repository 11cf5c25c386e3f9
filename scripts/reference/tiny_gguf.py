#!/usr/bin/env python3
"""Tiny random GGUFs of every architecture llmc's GGUF builder imports, written with the
`gguf` package the way llama.cpp's converter lays them out, with transformers' logits
on the same weights as the reference.

For each architecture: a tiny transformers model (random init, fixed seed) is built
from a tiny config; each of its weights is laid out as the converter would (llama and
mistral: Q/K rows permuted for ggml's interleaved RoPE; Gemma: 1 added to RMSNorm
weights; GPT-2: Conv1D weights transposed; Phi-3: fused qkv and gate_up kept), stored
in a ggml type (matrices cycle through every type llmc decodes; the K-quants and
IQ4_XS need rows of 256, so they go to ffn_down, whose rows are the 256-wide MLP), and
the HF model gets the stored values back (dequantized with gguf-py, the layout undone),
so both sides compute on identical numbers. Quantized blocks are random bytes with
small f16 scales (gguf-py cannot quantize to most of these types).

Writes tests/fixtures/gguf-tiny/ARCH.gguf and ARCH.json (ids, the logits of every
position, types used). frontend/tests/gguf_tiny.rs runs each through llmc's
interpreter (prefill, then decode steps) and compares.

Usage (repo root; a venv with torch, transformers, gguf, numpy):
  python scripts/reference/tiny_gguf.py
"""

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from gguf import GGMLQuantizationType as T, GGML_QUANT_SIZES, GGUFWriter  # noqa: E402
from gguf.quants import dequantize  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "gguf-tiny"
VOCAB, HIDDEN, FFN, HEADS, KV_HEADS, HEAD_DIM, LAYERS, CTX = 96, 32, 256, 4, 2, 8, 3, 64
IDS = [1, 17, 5, 88, 42, 3, 64, 9, 23, 71, 50, 11]

# f16 scale offsets per block (as in ggml_blocks.py)
SCALES = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ4_NL: [0], T.IQ4_XS: [0],
}
SMALL = [T.Q8_0, T.Q5_0, T.Q5_1, T.Q4_0, T.Q4_1, T.IQ4_NL, T.F16, T.BF16, T.F32]
BIG = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS]


def store(rng, g, qtype):
    """Stores the GGUF-layout matrix g as qtype: (bytes or array to write, stored values)."""
    if qtype == T.F32:
        return g.astype(np.float32), g.astype(np.float32)
    if qtype == T.F16:
        h = g.astype(np.float16)
        return h, h.astype(np.float32)
    if qtype == T.BF16:
        u = (g.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        raw = u.view(np.uint8).reshape(g.shape[0], -1)
        return raw, dequantize(raw, T.BF16).reshape(g.shape).astype(np.float32)
    block_len, block_bytes = GGML_QUANT_SIZES[qtype]
    rows, cols = g.shape
    n_blocks = rows * cols // block_len
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for o in SCALES[qtype]:
        d = rng.normal(0, 0.02 if block_len == 32 else 0.004, size=n_blocks).astype(np.float16)
        raw[:, o:o + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    raw = raw.reshape(rows, -1)
    vals = dequantize(raw, qtype).reshape(rows, cols).astype(np.float32)
    return raw, vals


def permute(w, n_head):
    """llama.cpp's converter: HF rotate-half rows -> ggml interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def configs():
    c = transformers
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=CTX)
    gemma = dict(common, head_dim=HEAD_DIM, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6)
    return {
        "llama": (c.LlamaConfig(**common, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False), c.LlamaForCausalLM),
        "mistral": (c.MistralConfig(**common, rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=5, tie_word_embeddings=False), c.MistralForCausalLM),
        "qwen2": (c.Qwen2Config(**common, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True), c.Qwen2ForCausalLM),
        "qwen3": (c.Qwen3Config(**common, head_dim=HEAD_DIM, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True), c.Qwen3ForCausalLM),
        "phi3": (c.Phi3Config(**common, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, pad_token_id=0,
                              bos_token_id=1, eos_token_id=2, sliding_window=None), c.Phi3ForCausalLM),
        "gemma": (c.GemmaConfig(**gemma, rope_theta=10000.0), c.GemmaForCausalLM),
        "gemma2": (c.Gemma2Config(**gemma, rope_theta=10000.0, sliding_window=5, query_pre_attn_scalar=HEAD_DIM,
                                  attn_logit_softcapping=1.5, final_logit_softcapping=3.0), c.Gemma2ForCausalLM),
        "gemma3": (c.Gemma3TextConfig(**gemma, rope_theta=1e6, rope_local_base_freq=10000.0, sliding_window=5,
                                      query_pre_attn_scalar=HEAD_DIM,
                                      layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
                   c.Gemma3ForCausalLM),
        "gpt2": (c.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=CTX,
                              n_inner=FFN, activation_function="gelu_new"), c.GPT2LMHeadModel),
    }


LAYER = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.qkv_proj": "attn_qkv",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "mlp.gate_up_proj": "ffn_up",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
}
GPT2 = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
        "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}


def gguf_name(arch, name):
    """(GGUF name, to-GGUF layout fn, inverse) for an HF parameter name."""
    ident = (lambda w: w, lambda w: w)
    if arch == "gpt2":
        if name in ("transformer.wte.weight", "lm_head.weight"):
            return ("token_embd.weight", *ident) if name.startswith("transformer") else (None, None, None)
        if name == "transformer.wpe.weight":
            return ("position_embd.weight", *ident)
        if name.startswith("transformer.ln_f."):
            return ("output_norm." + name.rsplit(".", 1)[1], *ident)
        _, _, layer, rest = name.split(".", 3)
        mod, kind = rest.rsplit(".", 1)
        tr = kind == "weight" and mod not in ("ln_1", "ln_2")
        f = (lambda w: w.T, lambda w: w.T) if tr else ident
        return (f"blk.{layer}.{GPT2[mod]}.{kind}", *f)
    if name == "model.embed_tokens.weight":
        return ("token_embd.weight", *ident)
    if name == "lm_head.weight":
        return ("output.weight", *ident)
    gemma = arch.startswith("gemma")
    plus = (lambda w: w + np.float32(1), lambda w: w - np.float32(1)) if gemma else ident
    if name == "model.norm.weight":
        return ("output_norm.weight", *plus)
    _, _, layer, rest = name.split(".", 3)
    mod, kind = rest.rsplit(".", 1)
    if mod == "post_attention_layernorm":
        g = "post_attention_norm" if arch in ("gemma2", "gemma3") else "ffn_norm"
    else:
        g = LAYER[mod]
    f = ident
    if mod.endswith("norm"):
        f = plus
    if arch in ("llama", "mistral") and mod == "self_attn.q_proj":
        f = (lambda w: permute(w, HEADS), lambda w: unpermute(w, HEADS))
    if arch in ("llama", "mistral") and mod == "self_attn.k_proj":
        f = (lambda w: permute(w, KV_HEADS), lambda w: unpermute(w, KV_HEADS))
    return (f"blk.{layer}.{g}.{kind}", *f)


def write(arch, cfg, cls, seed):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = cls(cfg).eval()
    w = GGUFWriter(str(OUT / f"{arch}.gguf"), arch)
    w.add_name(f"tiny {arch}")
    w.add_block_count(LAYERS)
    w.add_context_length(CTX)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    if arch == "gpt2":
        w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    else:
        w.add_head_count_kv(KV_HEADS)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        rp = getattr(cfg, "rope_parameters", None) or {}
        if arch == "gemma3":
            assert rp["sliding_attention"]["rope_theta"] == 10000.0, rp
            theta = rp["full_attention"]["rope_theta"]
        else:
            theta = rp["rope_theta"] if "rope_theta" in rp else cfg.rope_theta
        w.add_rope_freq_base(float(theta))
    if arch.startswith("gemma") or arch == "qwen3":
        w.add_key_length(HEAD_DIM)
        w.add_value_length(HEAD_DIM)
    if getattr(cfg, "sliding_window", None):
        w.add_sliding_window(cfg.sliding_window)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    if arch == "gemma3":
        w.add_uint32("gemma3.attention.sliding_window_pattern", 2)
    types = {}
    k_small = k_big = seed
    sd = model.state_dict()
    with torch.no_grad():
        for name, p in model.named_parameters():
            g_name, to_g, from_g = gguf_name(arch, name)
            if g_name is None:
                continue
            x = p.detach().numpy().astype(np.float32)
            g = np.ascontiguousarray(to_g(x))
            if g.ndim == 2 and g_name != "position_embd.weight":
                if g.shape[1] % 256 == 0:
                    qt = BIG[k_big % len(BIG)]
                    k_big += 1
                else:
                    qt = SMALL[k_small % len(SMALL)]
                    k_small += 1
                if g_name == "token_embd.weight":
                    qt = T.Q8_0
                data, vals = store(rng, g, qt)
            else:
                qt, data, vals = T.F32, g.astype(np.float32), g.astype(np.float32)
            types[g_name] = qt.name
            w.add_tensor(g_name, data, raw_dtype=None if qt == T.F32 else qt)
            p.copy_(torch.from_numpy(np.ascontiguousarray(from_g(vals))).reshape(p.shape))
        logits = model(torch.tensor([IDS])).logits[0].double().numpy()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    res = {
        "arch": arch,
        "made_by": "scripts/reference/tiny_gguf.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "ids": IDS,
        "logits": logits.tolist(),
        "types": types,
    }
    (OUT / f"{arch}.json").write_text(json.dumps(res) + "\n")
    used = sorted(set(types.values()))
    print(f"{arch}: {len(types)} tensors, types {used}")
    return used


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    used = set()
    for i, (arch, (cfg, cls)) in enumerate(configs().items()):
        used |= set(write(arch, cfg, cls, 100 + i))
    print("all types:", sorted(used))


if __name__ == "__main__":
    main()
