"""onnxruntime's decode and prefill speed on a decoder export with a KV cache.

The baseline `scripts/bench --onnxruntime` prints next to llmc's own numbers: the
SmolLM2 export with past (`scripts/onnx-exports`, Optimum-style names
`past_key_values.N.key/value` in, `logits` + `present.N.key/value` out) runs a prompt of
--prompt-tokens ids, then --gen-tokens greedy steps, each feeding the previous step's
present tensors back as the past. Prints `key: value` lines like the executable's bench.
"""

import argparse
import time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    ins = {i.name: i for i in sess.get_inputs()}
    past_names = [n for n in ins if n.startswith("past_key_values.")]
    if not past_names or "input_ids" not in ins:
        raise SystemExit(f"{a.model}: not a decoder export with past (inputs: {list(ins)})")
    outs = [o.name for o in sess.get_outputs()]
    present = {n: n.replace("past_key_values.", "present.") for n in past_names}
    for n, p in present.items():
        if p not in outs:
            raise SystemExit(f"{a.model}: output {p} (the present of {n}) not found")

    def cache_shape(name, length):
        dims = ins[name].shape  # [batch, kv_heads, past, head_dim]
        return (1, int(dims[1]), length, int(dims[3]))

    rng = np.random.default_rng(0)
    prompt = rng.integers(10, 1000, size=(1, a.prompt_tokens), dtype=np.int64)

    def run_once():
        past = {n: np.zeros(cache_shape(n, 0), np.float32) for n in past_names}
        t0 = time.perf_counter()
        feed = dict(past)
        feed["input_ids"] = prompt
        feed["attention_mask"] = np.ones((1, a.prompt_tokens), np.int64)
        if "position_ids" in ins:
            feed["position_ids"] = np.arange(a.prompt_tokens, dtype=np.int64)[None]
        r = dict(zip(outs, sess.run(outs, feed)))
        t1 = time.perf_counter()
        n = a.prompt_tokens
        tok = int(r["logits"][0, -1].argmax())
        for _ in range(a.gen_tokens):
            feed = {k: r[present[k]] for k in past_names}
            feed["input_ids"] = np.array([[tok]], np.int64)
            feed["attention_mask"] = np.ones((1, n + 1), np.int64)
            if "position_ids" in ins:
                feed["position_ids"] = np.array([[n]], np.int64)
            r = dict(zip(outs, sess.run(outs, feed)))
            tok = int(r["logits"][0, -1].argmax())
            n += 1
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    runs = [run_once() for _ in range(a.repeat)]
    pre = min(p for p, _ in runs)
    dec = min(d for _, d in runs)
    print(f"onnxruntime version: {ort.__version__}")
    print(f"onnxruntime threads: {a.threads}")
    print(f"onnxruntime prefill tok/s: {a.prompt_tokens / pre:.1f}")
    print(f"onnxruntime decode tok/s: {a.gen_tokens / dec:.1f}")


if __name__ == "__main__":
    main()
