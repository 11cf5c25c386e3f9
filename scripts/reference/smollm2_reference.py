#!/usr/bin/env python3
"""Greedy-generation reference for SmolLM2-135M-Instruct, made with transformers.

Runs the HF folder written by smollm2_to_hf.py (the GGUF's weights, dequantized to
f32) and records, in tests/fixtures/smollm2/greedy.json: the prompt, the prompt ids
exactly as the folder's tokenizer makes them (no chat template; SmolLM2's tokenizer
adds no BOS), 32 greedily generated ids (argmax at every step, not stopping at EOS;
checked against `generate`, which stops there) and their text, and the top-20 logits
of the last prompt position (the prefill). CI does not run this; the Rust tests read it.

Usage (repo root, venv with torch + transformers):
  .venv/bin/python scripts/reference/smollm2_reference.py [HF_DIR]
HF_DIR defaults to $LLMC_MODELS/SmolLM2-135M-Instruct-hf.
"""

import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

PROMPT = "The capital of France is"
NEW_TOKENS = 32
TOP = 20
ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    models = Path(os.environ.get("LLMC_MODELS", ROOT / ".cache" / "models"))
    d = Path(sys.argv[1]) if len(sys.argv) > 1 else models / "SmolLM2-135M-Instruct-hf"
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(d))
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits[0, -1].double()
        top = torch.topk(logits, TOP)
        # Plain argmax for NEW_TOKENS steps with the KV cache, not stopping at EOS:
        # `generate(min_new_tokens=...)` would mask EOS, changing the argmax.
        out = model(ids, use_cache=True)
        past = out.past_key_values
        gen = [int(out.logits[0, -1].argmax())]
        while len(gen) < NEW_TOKENS:
            out = model(torch.tensor([[gen[-1]]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            gen.append(int(out.logits[0, -1].argmax()))
        # Cross-check with generate(), which stops at the first EOS.
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
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to f32 by smollm2_to_hf.py)",
        "made_by": "scripts/reference/smollm2_reference.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "prompt": PROMPT,
        "chat_template": False,
        "prompt_ids": ids[0].tolist(),
        "generated_ids": gen,
        "eos_ids": sorted({tok.eos_token_id, model.generation_config.eos_token_id} - {None}),
        "generated_text": tok.decode(gen),
        "prefill_top_ids": top.indices.tolist(),
        "prefill_top_logits": [float(v) for v in top.values],
    }
    path = ROOT / "tests" / "fixtures" / "smollm2" / "greedy.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    print(repr(PROMPT + res["generated_text"]))


if __name__ == "__main__":
    main()
