#!/usr/bin/env python3
"""Greedy-generation reference for the Gemma 3 270M GGUF (Q4_K_M), made with
transformers on the same weights.

1. Dequantizes every tensor of the GGUF with gguf-py (`gguf.quants.dequantize`) into
   an HF folder ($LLMC_MODELS/gemma-3-270m-hf: config.json for Gemma3ForCausalLM,
   model.safetensors in f32). llama.cpp's converter stores Gemma's RMSNorm weights as
   1 + w (HF computes with 1 + w from w), so 1 is subtracted from every `*norm.weight`.
   Gemma keeps HF's rotate-half RoPE layout in GGUF (no Q/K permutation to undo).
2. Tokenizes the prompt with the GGUF's own vocabulary through transformers' GGUF
   tokenizer loader (BOS added, as `tokenizer.ggml.add_bos_token` says).
3. Runs 32 plain argmax steps with the KV cache (not stopping at EOS), cross-checked
   with `generate`, and records tests/fixtures/gemma3/greedy.json.

CI does not run this (torch + transformers, ~3 GB). The Rust test reads the fixture.

Usage (repo root; a venv with torch, transformers, gguf, safetensors, sentencepiece):
  python scripts/reference/gemma3_reference.py [GGUF]
GGUF defaults to $LLMC_MODELS/gemma-3-270m-Q4_K_M.gguf.
"""

import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from gguf import GGUFReader  # noqa: E402
from gguf.quants import dequantize  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

PROMPT = "The capital of France is"
NEW_TOKENS = 32
TOP = 20
ROOT = Path(__file__).resolve().parents[2]

LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def field(r, key):
    f = r.fields.get(key)
    return None if f is None else f.contents()


def hf_name(name):
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    blk, layer, part, kind = name.split(".")
    assert blk == "blk", name
    return f"model.layers.{layer}.{LAYER_NAMES[part]}.{kind}"


def to_hf(gguf_path, out):
    r = GGUFReader(str(gguf_path))
    assert field(r, "general.architecture") == "gemma3"
    a = "gemma3"
    n_layers = int(field(r, f"{a}.block_count"))
    pattern = int(field(r, f"{a}.attention.sliding_window_pattern") or 6)
    tensors = {}
    for t in r.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])
        name = hf_name(t.name)
        if name.endswith("norm.weight"):
            w = w - np.float32(1.0)
        tensors[name] = np.ascontiguousarray(w)
    heads = int(field(r, f"{a}.attention.head_count"))
    head_dim = int(field(r, f"{a}.attention.key_length"))
    cfg = {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": int(tensors["model.embed_tokens.weight"].shape[0]),
        "hidden_size": int(field(r, f"{a}.embedding_length")),
        "intermediate_size": int(field(r, f"{a}.feed_forward_length")),
        "num_hidden_layers": n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(field(r, f"{a}.attention.head_count_kv")),
        "head_dim": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": int(field(r, f"{a}.context_length")),
        "rms_norm_eps": float(field(r, f"{a}.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(field(r, f"{a}.rope.freq_base")),
        "rope_local_base_freq": 10000.0,
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": float(field(r, f"{a}.rope.freq_base"))},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        "rope_scaling": None,
        "sliding_window": int(field(r, f"{a}.attention.sliding_window")),
        "layer_types": [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)
        ],
        "query_pre_attn_scalar": head_dim,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_bidirectional_attention": False,
        "bos_token_id": int(field(r, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field(r, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": int(field(r, "tokenizer.ggml.padding_token_id")),
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "torch_dtype": "float32",
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    return cfg


def main() -> None:
    models = Path(os.environ.get("LLMC_MODELS", ROOT / ".cache" / "models"))
    gguf_path = Path(sys.argv[1]) if len(sys.argv) > 1 else models / "gemma-3-270m-Q4_K_M.gguf"
    hf = models / "gemma-3-270m-hf"
    if not (hf / "model.safetensors").is_file():
        to_hf(gguf_path, hf)
        print(f"wrote {hf}")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits[0, -1].double()
        top = torch.topk(logits, TOP)
        out = model(ids, use_cache=True)
        past = out.past_key_values
        gen = [int(out.logits[0, -1].argmax())]
        while len(gen) < NEW_TOKENS:
            out = model(torch.tensor([[gen[-1]]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            gen.append(int(out.logits[0, -1].argmax()))
        ref = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            num_beams=1,
            pad_token_id=tok.pad_token_id,
        )[0, ids.shape[1]:].tolist()
        assert gen[: len(ref)] == ref, (gen, ref)
    res = {
        "model": "Gemma 3 270M (Q4_K_M GGUF dequantized to f32 by gemma3_reference.py)",
        "made_by": "scripts/reference/gemma3_reference.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "prompt": PROMPT,
        "chat_template": False,
        "prompt_ids": ids[0].tolist(),
        "generated_ids": gen,
        "eos_ids": [int(model.config.eos_token_id)],
        "generated_text": tok.decode(gen),
        "prefill_top_ids": top.indices.tolist(),
        "prefill_top_logits": [float(v) for v in top.values],
    }
    path = ROOT / "tests" / "fixtures" / "gemma3" / "greedy.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    print(repr(PROMPT + res["generated_text"]))


if __name__ == "__main__":
    main()
