#!/usr/bin/env python3
"""Tiny random causal LMs of each Hugging Face architecture llmc imports, with
transformers' logits, for the HF frontend's end-to-end tests.

For each case, writes tests/fixtures/hf-tiny/<case>/: config.json, model.safetensors
(a few KB of random weights, as `save_pretrained` writes them: GPT-2 keeps its Conv1D
[in, out] layout and fused c_attn, tied heads are not stored), and expected.json with a
prompt, its last-position logits (prefill), and a few greedy decode steps, each with
its logits. The cases cover: Llama with GQA and bf16 weights, Llama with linear RoPE
scaling and an untied head, Mistral, Qwen2 (q/k/v biases), GPT-2 (learned positions,
LayerNorm, gelu_new, Conv1D).

Usage: .venv/bin/python scripts/reference/tiny_decoders.py
"""

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "hf-tiny"
DECODE_STEPS = 4

COMMON = dict(
    vocab_size=48,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
)


def cases():
    yield "llama_gqa_bf16", LlamaForCausalLM(
        LlamaConfig(**COMMON, rope_theta=10000.0, tie_word_embeddings=True)
    ), torch.bfloat16
    yield "llama_rope_linear", LlamaForCausalLM(
        LlamaConfig(
            **COMMON,
            rope_theta=500000.0,
            rope_scaling={"rope_type": "linear", "factor": 4.0},
            tie_word_embeddings=False,
        )
    ), torch.float32
    yield "mistral", MistralForCausalLM(
        MistralConfig(**COMMON, rope_theta=1000000.0, sliding_window=64, tie_word_embeddings=False)
    ), torch.float32
    yield "qwen2", Qwen2ForCausalLM(
        Qwen2Config(**COMMON, rope_theta=1000000.0, tie_word_embeddings=True)
    ), torch.float32
    yield "gpt2", GPT2LMHeadModel(
        GPT2Config(
            vocab_size=48,
            n_embd=16,
            n_layer=2,
            n_head=4,
            n_positions=64,
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
        )
    ), torch.float32


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Weights large enough that every part matters (default init is ~0.02), and
    norm weights/biases away from 1/0 so a missing one shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def main() -> None:
    gen = torch.Generator().manual_seed(1234)
    for name, model, dtype in cases():
        randomize(model, gen)
        model = model.to(dtype).eval()
        d = OUT / name
        d.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(d), safe_serialization=True)
        for extra in d.iterdir():
            if extra.name not in ("config.json", "model.safetensors"):
                extra.unlink()
        # Reference in f32 from the stored (possibly bf16) weights.
        model = model.float()
        prompt = torch.randint(0, 48, (7,), generator=gen).tolist()
        with torch.no_grad():
            out = model(torch.tensor([prompt]), use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1]
            steps = []
            for _ in range(DECODE_STEPS):
                nxt = int(logits.argmax())
                out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1]
                steps.append({"id": nxt, "logits": [float(x) for x in logits]})
            prefill = model(torch.tensor([prompt])).logits[0, -1]
        exp = {
            "made_by": "scripts/reference/tiny_decoders.py",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "architecture": model.config.architectures[0],
            "prompt_ids": prompt,
            "prefill_logits": [float(x) for x in prefill],
            "decode": steps,
        }
        (d / "expected.json").write_text(json.dumps(exp) + "\n")
        size = sum(f.stat().st_size for f in d.iterdir())
        print(f"{name}: {exp['architecture']}, {size} bytes")


if __name__ == "__main__":
    main()
