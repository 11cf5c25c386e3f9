#!/usr/bin/env python3
"""Tiny random models of each Hugging Face architecture llmc imports, with
transformers' outputs, for the HF frontend's end-to-end tests.

For each case, writes tests/fixtures/hf-tiny/<case>/: config.json, model.safetensors
(a few KB of random weights, as `save_pretrained` writes them: GPT-2 keeps its Conv1D
[in, out] layout and fused c_attn, tied heads are not stored), and expected.json with a
prompt, its last-position logits (prefill), and a few greedy decode steps, each with
its logits. The cases cover: Llama with GQA and bf16 weights, Llama with linear RoPE
scaling and an untied head, Mistral, Qwen2 (q/k/v biases), GPT-2 (learned positions,
LayerNorm, gelu_new, Conv1D).

Encoders (BERT) get expected.json with a padded batch of ids, its attention mask and
the pooled embeddings: `bert_mlm_mean` is a BertForMaskedLM checkpoint (`bert.`
prefix, extra MLM head tensors) without sentence-transformers files (mean pooling,
not normalized); `bert_f16_cls` is an f16 BertModel with a sentence-transformers
CLS-pooling + Normalize head.

Usage: .venv/bin/python scripts/reference/tiny_models.py
"""

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForMaskedLM,
    BertModel,
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


def bert_config() -> BertConfig:
    return BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        max_position_embeddings=32,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
    )


def encoders(gen: torch.Generator) -> None:
    ids = torch.randint(1, 40, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    ids = ids * mask  # pad id 0
    for name, cls, dtype, head in [
        ("bert_mlm_mean", BertForMaskedLM, torch.float32, None),
        ("bert_f16_cls", BertModel, torch.float16, "cls"),
    ]:
        model = cls(bert_config())
        randomize(model, gen)
        model = model.to(dtype).eval()
        d = OUT / name
        d.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(d), safe_serialization=True)
        if head == "cls":
            (d / "modules.json").write_text(json.dumps([
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ]))
            (d / "1_Pooling").mkdir(exist_ok=True)
            (d / "1_Pooling" / "config.json").write_text(json.dumps({
                "word_embedding_dimension": 16, "pooling_mode_cls_token": True,
                "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
            }))
        model = cls.from_pretrained(str(d), dtype=torch.float32).eval()
        bert = model.bert if hasattr(model, "bert") else model
        with torch.no_grad():
            h = bert(input_ids=ids, attention_mask=mask).last_hidden_state
            if head == "cls":
                e = torch.nn.functional.normalize(h[:, 0], p=2, dim=1)
            else:
                m = mask.unsqueeze(-1).float()
                e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        exp = {
            "made_by": "scripts/reference/tiny_models.py",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "architecture": cls.__name__,
            "ids": ids.tolist(),
            "mask": mask.tolist(),
            "embeddings": [[float(x) for x in r] for r in e],
        }
        (d / "expected.json").write_text(json.dumps(exp) + "\n")
        print(f"{name}: {cls.__name__}")


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
        # Reference in f32 from the stored (possibly bf16) weights, reloaded from the
        # folder: `.to(bf16).float()` would also have rounded RoPE's inv_freq buffer.
        model = type(model).from_pretrained(str(d), dtype=torch.float32).eval()
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
            "made_by": "scripts/reference/tiny_models.py",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "architecture": model.config.architectures[0],
            "prompt_ids": prompt,
            "prefill_logits": [float(x) for x in prefill],
            "decode": steps,
        }
        (d / "expected.json").write_text(json.dumps(exp) + "\n")
        size = sum(f.stat().st_size for f in d.iterdir())
        print(f"{name}: {exp['architecture']}, {size} bytes")
    encoders(gen)


if __name__ == "__main__":
    main()
