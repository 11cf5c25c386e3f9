"""MiniLM latency: llmc's executables against onnxruntime, same inputs, same run.

`scripts/bench-encoder` calls this with the executables it built: one from the torch
ONNX export (`scripts/onnx-exports`, inputs input_ids / attention_mask /
token_type_ids, output last_hidden_state) and one from the HF folder (inputs ids /
mask / pos, output the pooled embedding). For each batch x sequence shape it makes one
set of random token ids (no padding), runs each executable's `run` command once with
--repeat + 1 groups (`--then`: the first is a warm-up; each group prints its own
time, the graph call alone), runs onnxruntime on the export (intra-op threads as given,
ORT_ENABLE_ALL, one warm-up) and prints medians and ratios, plus the largest
difference between llmc's and onnxruntime's last_hidden_state as a sanity check.
"""

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def llmc_times(exe: str, inputs: dict, repeat: int, threads: int, outdir: Path) -> list:
    """Milliseconds of `repeat` timed runs (after one warm-up) of `exe run`."""
    args = [exe, "run"]
    for g in range(repeat + 1):
        if g:
            args.append("--then")
        for name, path in inputs.items():
            args += ["--input", f"{name}={path}"]
        args += ["--output-dir", str(outdir)]
    env = {**os.environ, "LLMC_NUM_THREADS": str(threads)}
    r = subprocess.run(args, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{exe} run failed:\n{r.stderr}")
    ms = [float(m) for m in re.findall(r"^run \d+: ([0-9.]+) ms", r.stderr, re.M)]
    if len(ms) != repeat + 1:
        raise SystemExit(f"{exe}: expected {repeat + 1} run times, got:\n{r.stderr}")
    return ms[1:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", required=True, help="the MiniLM ONNX export")
    ap.add_argument("--llmc-onnx", required=True, help="llmc executable built from it")
    ap.add_argument("--llmc-hf", help="llmc executable built from the HF folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--shapes", default="1x128,8x128")
    ap.add_argument("--llmc-int8", help="llmc executable built from the export with --quantize q8_0; "
                    "also times onnxruntime's dynamic int8 quantization of the export")
    ap.add_argument("--llmc-int8-act8", help="llmc executable built from the export with --quantize "
                    "q8_0 --act-quant int8 (int8 activation blocks)")
    a = ap.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(a.onnx, so, providers=["CPUExecutionProvider"])
    sess8 = None
    if a.llmc_int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        q8 = Path(tempfile.mkdtemp()) / "model.int8.onnx"
        quantize_dynamic(a.onnx, str(q8), weight_type=QuantType.QInt8)
        sess8 = ort.InferenceSession(str(q8), so, providers=["CPUExecutionProvider"])
    int8_rows = []

    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        for shape in a.shapes.split(","):
            b, s = (int(x) for x in shape.split("x"))
            ids = rng.integers(1000, 29000, size=(b, s), dtype=np.int64)
            ids[:, 0], ids[:, -1] = 101, 102
            mask = np.ones((b, s), np.int64)
            types = np.zeros((b, s), np.int64)
            pos = np.tile(np.arange(s, dtype=np.int64), (b, 1))
            files = {}
            for name, v in [("ids", ids), ("mask", mask), ("types", types), ("pos", pos)]:
                files[name] = td / f"{name}_{shape}.npy"
                np.save(files[name], v)
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            sess.run(None, feed)
            ort_ms = []
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                (want,) = sess.run(None, feed)
                ort_ms.append((time.perf_counter() - t0) * 1e3)
            out = td / f"out_{shape}"
            export_inputs = {
                "input_ids": files["ids"],
                "attention_mask": files["mask"],
                "token_type_ids": files["types"],
            }
            onnx_ms = llmc_times(
                a.llmc_onnx,
                export_inputs,
                a.repeat,
                a.threads,
                out,
            )
            got = np.load(out / "last_hidden_state.npy")
            diff = float(np.abs(got - want).max())
            hf_ms = None
            if a.llmc_hf:
                hf_ms = llmc_times(
                    a.llmc_hf,
                    {"ids": files["ids"], "mask": files["mask"], "pos": files["pos"]},
                    a.repeat,
                    a.threads,
                    td / f"hf_{shape}",
                )
            rows.append((shape, onnx_ms, hf_ms, ort_ms, diff))
            if sess8 is not None:
                (want8,) = sess8.run(None, feed)
                ort8_ms = []
                for _ in range(a.repeat):
                    t0 = time.perf_counter()
                    sess8.run(None, feed)
                    ort8_ms.append((time.perf_counter() - t0) * 1e3)
                out8 = td / f"int8_{shape}"
                llmc8_ms = llmc_times(a.llmc_int8, export_inputs, a.repeat, a.threads, out8)
                got8 = np.load(out8 / "last_hidden_state.npy")

                def cos_min(x):
                    p, q = x.mean(1), want.mean(1)
                    return float(((p * q).sum(1) / np.linalg.norm(p, axis=1) / np.linalg.norm(q, axis=1)).min())

                a8_ms, a8_cos = [float("nan")], float("nan")
                if a.llmc_int8_act8:
                    outa = td / f"int8a8_{shape}"
                    a8_ms = llmc_times(a.llmc_int8_act8, export_inputs, a.repeat, a.threads, outa)
                    a8_cos = cos_min(np.load(outa / "last_hidden_state.npy"))
                int8_rows.append((shape, llmc8_ms, ort8_ms, onnx_ms, cos_min(got8), cos_min(want8),
                                  a8_ms, a8_cos))

    med = statistics.median
    print(f"threads: {a.threads}, repeat: {a.repeat} (medians, ms; ratio = onnxruntime / llmc)")
    print("| shape | llmc (ONNX export) | llmc (HF folder) | onnxruntime | ratio (export) | ratio (HF) | max abs diff vs ORT |")
    print("|---|---|---|---|---|---|---|")
    for shape, onnx_ms, hf_ms, ort_ms, diff in rows:
        o, r = med(onnx_ms), med(ort_ms)
        h = med(hf_ms) if hf_ms else float("nan")
        print(
            f"| b{shape.replace('x', ' x s')} | {o:.2f} | {h:.2f} | {r:.2f} | "
            f"{r / o:.2f} | {r / h:.2f} | {diff:.2e} |"
        )
    if int8_rows:
        print()
        print("int8: llmc --quantize q8_0 (int16 activations per block; a8: --act-quant int8, "
              "int8 activations per block) against onnxruntime's quantize_dynamic (QInt8 "
              "weights, uint8 activations per tensor); cosine of mean-pooled embeddings to "
              "onnxruntime f32, lowest over the batch")
        print("| shape | llmc q8_0 | llmc q8_0 a8 | onnxruntime int8 | ratio (q8_0) | ratio (a8) | "
              "llmc f32 | a8 / f32 speed-up | cosine llmc q8_0 | cosine llmc a8 | cosine ORT int8 |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for shape, l8, o8, l32, c8, co, a8, ca in int8_rows:
            l8, o8, l32, a8 = med(l8), med(o8), med(l32), med(a8)
            print(
                f"| b{shape.replace('x', ' x s')} | {l8:.2f} | {a8:.2f} | {o8:.2f} | {o8 / l8:.2f} | "
                f"{o8 / a8:.2f} | {l32:.2f} | {l32 / a8:.2f} | {c8:.6f} | {ca:.6f} | {co:.6f} |"
            )


if __name__ == "__main__":
    main()
