#!/usr/bin/env python3
"""Reference embeddings of all-MiniLM-L6-v2 for llmc's tests.

Runs the model folder with sentence-transformers (offline) and writes, under
tests/fixtures/minilm/:
  reference.json  sentences, HF token ids and attention masks, the embeddings (f32
                  values as JSON numbers), and the versions used.

Usage (from the repo root, in the venv that has torch + sentence-transformers):
  .venv/bin/python scripts/reference/minilm_reference.py [MODEL_DIR]
MODEL_DIR defaults to $LLMC_MODELS/all-MiniLM-L6-v2 ($LLMC_MODELS defaults to
.cache/models). CI does not run this; the Rust tests read what it recorded.
"""

import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import sentence_transformers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "llmc compiles neural networks ahead of time!",
    "Wait... what?! (Punctuation; quotes \"here\" & there: 42%)",
    "Café déjà vu — naïve façade, 東京 and Zürich.",
    "A short one",
]

ROOT = Path(__file__).resolve().parents[2]


def compact_json(obj: dict) -> str:
    """One key per line, list-of-lists one row per line: small and diffable."""
    lines = []
    for k, v in obj.items():
        if isinstance(v, list) and v and isinstance(v[0], list):
            rows = ",\n  ".join(json.dumps(r, ensure_ascii=False) for r in v)
            lines.append(f" {json.dumps(k)}: [\n  {rows}\n ]")
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main() -> None:
    models = Path(os.environ.get("LLMC_MODELS", ROOT / ".cache" / "models"))
    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else models / "all-MiniLM-L6-v2"
    out_dir = ROOT / "tests" / "fixtures" / "minilm"
    out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.eval()
    emb = model.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False, batch_size=len(SENTENCES))
    emb = np.asarray(emb, dtype=np.float32)

    tok = model.tokenizer
    ids = [tok(s)["input_ids"] for s in SENTENCES]

    # Cross-check: the same embedding from transformers + the model card's mean
    # pooling + L2 normalization, one sentence at a time (no padding).
    hf = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        for i, s in enumerate(SENTENCES):
            enc = tok(s, return_tensors="pt")
            h = hf(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            v = torch.nn.functional.normalize(v, p=2, dim=1)[0].numpy()
            cos = float(np.dot(v, emb[i]) / (np.linalg.norm(v) * np.linalg.norm(emb[i])))
            assert cos > 0.99999, (i, cos)

    out = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "made_by": "scripts/reference/minilm_reference.py",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
        },
        "sentences": SENTENCES,
        "token_ids": ids,
        "embedding_size": int(emb.shape[1]),
        "embeddings": [[float(x) for x in row] for row in emb],
    }
    path = out_dir / "reference.json"
    path.write_text(compact_json(out), encoding="utf-8")
    print(f"wrote {path}: {len(SENTENCES)} sentences, dim {emb.shape[1]}")
    for s, i in zip(SENTENCES, ids):
        print(len(i), s)


if __name__ == "__main__":
    main()
