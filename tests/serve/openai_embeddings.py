#!/usr/bin/env python3
"""The real `openai` Python client against `./minilm serve` (all-MiniLM-L6-v2 built by
scripts/test-serve): `/v1/embeddings` with one string, a list of strings and token ids,
in the client's default base64 encoding and as floats; every vector equal bit for bit
to what `./minilm embed` prints for the same text; the errors a client can cause (a
wrong model, an empty input, too many tokens, a completion on an embedding model).
Loopback only.

usage: openai_embeddings.py EXECUTABLE
"""
import json
import struct
import subprocess
import sys
import urllib.request

import openai
import served
from served import raises

TEXTS = ["The capital of France is Paris.", "A sentence about cats and dogs.", "naïve café ☕"]


def f32(values):
    """Python floats rounded to f32 bits, for exact comparison."""
    return [struct.unpack("<f", struct.pack("<f", v))[0] for v in values]


def run(exe, base):
    want = []
    for t in TEXTS:
        out = subprocess.run([exe, "embed", "--text", t], check=True, capture_output=True,
                             text=True, timeout=120).stdout
        want.append(f32(json.loads(out)))
    c = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=120)
    assert [m.id for m in c.models.list().data] == ["minilm"]

    # The client's default: base64 of little-endian f32.
    r = c.embeddings.create(model="minilm", input=TEXTS)
    assert r.object == "list" and r.model == "minilm" and len(r.data) == 3, r
    for i, d in enumerate(r.data):
        assert d.index == i and d.object == "embedding"
        assert f32(d.embedding) == want[i], f"input {i} differs from ./minilm embed"
    assert r.usage.prompt_tokens > 10 and r.usage.total_tokens == r.usage.prompt_tokens
    # Floats, one string.
    r = c.embeddings.create(model="minilm", input=TEXTS[0], encoding_format="float")
    assert len(r.data) == 1 and f32(r.data[0].embedding) == want[0]
    # Token ids as given (the tokenizer's own ids for the first text).
    req = urllib.request.Request(base + "/tokenize", data=json.dumps({"prompt": TEXTS[0]}).encode(),
                                 headers={"Content-Type": "application/json"})
    toks = json.loads(urllib.request.urlopen(req, timeout=30).read())["tokens"]
    r = c.embeddings.create(model="minilm", input=[toks], encoding_format="float")
    assert f32(r.data[0].embedding) == want[0]
    print(f"embeddings: {len(want[0])} dimensions, equal to ./minilm embed for {len(TEXTS)} texts")

    raises(openai.NotFoundError, lambda: c.embeddings.create(model="nope", input="x"), "nope")
    raises(openai.BadRequestError, lambda: c.embeddings.create(model="minilm", input=[]), "input")
    raises(openai.BadRequestError,
           lambda: c.embeddings.create(model="minilm", input="word " * 1000), "at most")
    raises(openai.BadRequestError,
           lambda: c.embeddings.create(model="minilm", input="x", dimensions=7), "dimensions")
    raises(openai.BadRequestError,
           lambda: c.completions.create(model="minilm", prompt="x", max_tokens=2),
           "sentence-embedding")


def main(exe):
    proc, base = served.start([exe, "serve", "--port", "0", "--model-name", "minilm"],
                              "embedding model")
    try:
        run(exe, base)
    finally:
        served.stop(proc)
    print("openai embeddings tests passed")


if __name__ == "__main__":
    main(sys.argv[1])
