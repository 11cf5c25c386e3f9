#!/usr/bin/env python3
"""The real `openai` Python client against `./smollm serve` (SmolLM2-135M, built by
scripts/test-serve): completions, streams with usage, chat, echo + logprobs the way
lm-evaluation-harness scores, n = 2, seed reproducibility, stop strings split across
tokens, every error status as the client raises it, batch invariance through HTTP,
and an idle engine afterwards (0 running, 0 KV blocks). Loopback only.

usage: openai_client.py EXECUTABLE
"""
import concurrent.futures as cf
import json
import sys
import time
import urllib.request

import openai
import served
from served import raises

KEY = "test-key-123"
MAX_BODY = 200_000


def start(exe):
    p, base = served.start(
        [exe, "serve", "--port", "0", "--api-key", KEY, "--model-name", "smollm",
         "--max-seqs", "8", "--max-waiting", "24", "--kv-cache-mb", "256",
         "--max-body-bytes", str(MAX_BODY)],
        "KV cache")
    return p, base


def metrics(base):
    req = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "_bucket" not in line:
            name, value = line.rsplit(" ", 1)
            out[name.split("{")[0] + ("{" + name.split("{", 1)[1] if "finished_reason" in name else "")] = float(value)
    return out


def wait_idle(base):
    t0 = time.time()
    while True:
        m = metrics(base)
        if m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0 and m["llmc:kv_blocks_used"] == 0:
            return m
        assert time.time() - t0 < 30, f"not idle: {m}"
        time.sleep(0.1)


def main(exe):
    proc, base = start(exe)
    try:
        run(base)
    finally:
        served.stop(proc)
    print("openai client tests passed")


def run(base):
    c = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=300)
    models = c.models.list()
    assert [m.id for m in models.data] == ["smollm"], models

    # Completion.
    r = c.completions.create(model="smollm", prompt="The capital of France is", max_tokens=12, temperature=0)
    full = r.choices[0].text
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length", r
    assert len(full) > 10 and r.usage.completion_tokens == 12 and r.usage.prompt_tokens > 3, r
    print(f"completion: {full!r}")

    # Streamed completion with usage: same text.
    chunks = list(c.completions.create(model="smollm", prompt="The capital of France is", max_tokens=12,
                                       temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12, chunks[-1]
    assert "".join(ch.choices[0].text for ch in chunks[:-1]) == full

    # Chat and streamed chat.
    msgs = [{"role": "user", "content": "What is 2+2? Answer briefly."}]
    r = c.chat.completions.create(model="smollm", messages=msgs, max_tokens=20, temperature=0)
    answer = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant" and answer, r
    print(f"chat: {answer!r}")
    chunks = list(c.chat.completions.create(model="smollm", messages=msgs, max_tokens=20, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == answer

    # echo + logprobs (lm-evaluation-harness local-completions).
    for max_tokens in (0, 1):
        r = c.completions.create(model="smollm", prompt="The capital of France is Paris", max_tokens=max_tokens,
                                 temperature=0, echo=True, logprobs=1)
        lp = r.choices[0].logprobs
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        assert r.choices[0].text.startswith("The capital of France is Paris")
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
        assert all(x <= 0 for x in lp.token_logprobs[1:])
        assert "".join(lp.tokens).startswith("The capital")
        if max_tokens == 1:
            # The greedy token's logprob is the max of its top_logprobs, bit for bit.
            assert lp.token_logprobs[-1] == max(lp.top_logprobs[-1].values()), lp
    # n = 2 and seeds.
    kw = dict(model="smollm", prompt="Once upon a time", max_tokens=16, temperature=1.0, seed=1234)
    # (Seeds reproduce a sequence alone; with n = 2 the two choices' steps may be
    # batched differently from run to run, and sampling at temperature 1 amplifies
    # any last-bit difference in the logits.)
    a1 = c.completions.create(n=1, **kw)
    b1 = c.completions.create(n=1, **kw)
    assert a1.choices[0].text == b1.choices[0].text, (a1, b1)
    a = c.completions.create(n=2, **kw)
    assert [x.index for x in a.choices] == [0, 1]
    assert a.choices[0].text != a.choices[1].text, a

    # Stop strings across tokens: a piece of the greedy text that starts inside one
    # token and ends inside the next.
    ids = json.loads(urllib.request.urlopen(urllib.request.Request(
        base + "/tokenize", data=json.dumps({"prompt": full, "add_special_tokens": False}).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})).read())["tokens"]
    assert len(ids) >= 4
    stop = full[len(full) // 2 - 2: len(full) // 2 + 2]
    at = full.find(stop)
    for stream in (False, True):
        r = c.completions.create(model="smollm", prompt="The capital of France is", max_tokens=12, temperature=0,
                                 stop=[stop], stream=stream)
        if stream:
            pieces = list(r)
            text = "".join(p.choices[0].text for p in pieces)
            finish = pieces[-1].choices[0].finish_reason
        else:
            text, finish = r.choices[0].text, r.choices[0].finish_reason
        assert text == full[:at] and finish == "stop", (stop, text, finish)

    # Errors, as the client raises them.
    raises(openai.BadRequestError, lambda: c.completions.create(model="smollm", prompt="x", temperature=-1), "temperature")
    raises(openai.BadRequestError, lambda: c.completions.create(model="smollm", prompt="x", max_tokens=-5), "max_tokens")
    e = raises(openai.BadRequestError, lambda: c.completions.create(model="smollm", prompt="hello", max_tokens=10**6),
               "max_tokens is 1000000", "context length")
    assert e.code == "context_length_exceeded", e
    raises(openai.BadRequestError, lambda: c.completions.create(model="smollm", prompt="x", stop=[f"s{i}" for i in range(10_000)]), "stop")
    raises(openai.NotFoundError, lambda: c.completions.create(model="gpt-4", prompt="x"), "gpt-4")
    bad = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
    raises(openai.AuthenticationError, lambda: bad.models.list(), "API key")
    e = raises(openai.APIStatusError, lambda: c.completions.create(model="smollm", prompt="x" * (MAX_BODY + 10)), "max-body-bytes")
    assert e.status_code == 413, e

    # Queue full: more requests than may run and wait at once.
    def slow(i):
        try:
            c.completions.create(model="smollm", prompt=f"Story {i}:", max_tokens=48, temperature=0, extra_body={"ignore_eos": True})
            return 200
        except openai.RateLimitError as e:
            assert "queue is full" in str(e) and e.response.headers.get("retry-after"), e
            return 429
    with cf.ThreadPoolExecutor(64) as ex:
        codes = list(ex.map(slow, range(64)))
    assert 429 in codes and 200 in codes, codes
    wait_idle(base)

    # Batch invariance: the same greedy text alone and among 16 others.
    prompt = "The three primary colors are"
    alone = c.completions.create(model="smollm", prompt=prompt, max_tokens=24, temperature=0).choices[0].text
    def gen(i):
        p = prompt if i == 8 else f"Write about topic number {i} in one line:"
        return c.completions.create(model="smollm", prompt=p, max_tokens=24, temperature=0).choices[0].text
    with cf.ThreadPoolExecutor(17) as ex:
        texts = list(ex.map(gen, range(17)))
    assert texts[8] == alone, (alone, texts[8])

    m = wait_idle(base)
    assert m["vllm:generation_tokens_total"] > 0
    print("metrics after:", {k: v for k, v in m.items() if "requests" in k or "kv" in k})


if __name__ == "__main__":
    main(sys.argv[1])
