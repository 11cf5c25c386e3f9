#!/usr/bin/env python3
"""Real ONNX exports of llmc's test models, with onnxruntime's outputs as the reference.

Users hand llmc ONNX files that torch.onnx.export (or Optimum, which drives it) wrote;
this script makes such files from the models under $LLMC_MODELS, runs them with
onnxruntime on fixed sample inputs and records inputs and outputs as .npy, so that
`tests/tests/onnx_exports.rs` can check `llmc exec` against onnxruntime without Python.

Writes, under $LLMC_ONNX_EXPORTS (default .cache/onnx-exports at the repo root), one
folder per export:

  <case>/model.onnx          the export (weights inline when under 2 GB)
  <case>/inputs/<NAME>.npy   the sample inputs, one per graph input
  <case>/ort/<NAME>.npy      onnxruntime's outputs, one per graph output
  <case>/torch/<NAME>.npy    PyTorch's outputs on the same inputs (a sanity check of
                             the export itself; the Rust test compares with ort/)
  <case>/case.json           versions, opset, input/output names, max |ort - torch|
  <case>/sample2/{inputs,ort}/  a second input set of other sizes and ORT's outputs

Cases:
  minilm           all-MiniLM-L6-v2 as BertModel: input_ids, attention_mask,
                   token_type_ids -> last_hidden_state (batch 2, one row padded)
  smollm2-prefill  SmolLM2-135M LlamaForCausalLM without cache: input_ids,
                   attention_mask, position_ids -> logits (batch 2, left padded)
  smollm2-past     the same with a KV cache, Optimum's naming: input_ids,
                   attention_mask, position_ids, past_key_values.N.key/value ->
                   logits, present.N.key/value (2 new tokens after 5 cached)
  smollm2-optimum  (only with --only smollm2-optimum; needs optimum-onnx) Optimum's
                   own export, `optimum-cli export onnx --task
                   text-generation-with-past`, tokenizer and config files beside it;
                   same sample as smollm2-past, the cache from onnxruntime
  smollm2-optimum-nopast  (only with --only smollm2-optimum-nopast; needs
                   optimum-onnx) Optimum's export without a cache, `optimum-cli export
                   onnx --task text-generation`: input_ids, attention_mask,
                   position_ids -> logits (the 7 tokens of the smollm2-past sample)

Usage (the torch venv with onnx + onnxruntime; scripts/onnx-exports sets it up):
  python scripts/reference/onnx_exports.py [--only CASE ...] [--force]
  python scripts/reference/onnx_exports.py --check-llmc target/release/llmc [--engine cpu]
The second form runs `llmc exec` on every export and prints max abs / rel errors.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OPSET = 17


def exports_dir() -> Path:
    return Path(os.environ.get("LLMC_ONNX_EXPORTS", ROOT / ".cache" / "onnx-exports"))


def models_dir() -> Path:
    return Path(os.environ.get("LLMC_MODELS", ROOT / ".cache" / "models"))


def save_npys(folder: Path, named: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in named.items():
        np.save(folder / f"{name}.npy", np.ascontiguousarray(arr))


def run_ort(model: Path, inputs: dict) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # The reference is the graph as written: no ORT fusions that change rounding.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, inputs)
    return dict(zip(names, outs))


def finish_case(case_dir: Path, inputs: dict, torch_outs: dict, extra: dict) -> None:
    import onnx
    import onnxruntime
    import torch
    import transformers

    model = case_dir / "model.onnx"
    onnx.checker.check_model(str(model))
    proto = onnx.load(str(model), load_external_data=False)
    ort_outs = run_ort(model, inputs)
    save_npys(case_dir / "inputs", inputs)
    save_npys(case_dir / "ort", ort_outs)
    save_npys(case_dir / "torch", torch_outs)
    diffs = {}
    for name, ref in ort_outs.items():
        if name in torch_outs:
            diffs[name] = float(np.max(np.abs(ref.astype(np.float64) - torch_outs[name])))
    info = {
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "opset": [{"domain": o.domain, "version": o.version} for o in proto.opset_import],
        "inputs": list(inputs),
        "outputs": list(ort_outs),
        "max_abs_ort_vs_torch": diffs,
        "nodes": len(proto.graph.node),
        **extra,
    }
    (case_dir / "case.json").write_text(json.dumps(info, indent=1) + "\n")
    worst = max(diffs.values(), default=0.0)
    print(
        f"onnx_exports: {case_dir.name}: {len(proto.graph.node)} nodes, {len(ort_outs)} outputs, "
        f"max |ort - torch| {worst:.3e}"
    )


def export_minilm(out: Path) -> None:
    import torch
    import transformers

    src = models_dir() / "all-MiniLM-L6-v2"
    tok = transformers.AutoTokenizer.from_pretrained(str(src))
    model = transformers.BertModel.from_pretrained(str(src), attn_implementation="eager").eval()
    enc = tok(
        ["The quick brown fox jumps over the lazy dog.", "A short one"],
        padding=True,
        return_tensors="pt",
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    types = enc.get("token_type_ids", torch.zeros_like(ids))

    class Bert(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    wrapped = Bert(model).eval()
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            (ids, mask, types),
            str(out / "model.onnx"),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "token_type_ids": {0: "batch", 1: "sequence"},
                "last_hidden_state": {0: "batch", 1: "sequence"},
            },
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
        ref = wrapped(ids, mask, types).numpy()
    inputs = {
        "input_ids": ids.numpy().astype(np.int64),
        "attention_mask": mask.numpy().astype(np.int64),
        "token_type_ids": types.numpy().astype(np.int64),
    }
    finish_case(out, inputs, {"last_hidden_state": ref}, {"model": "all-MiniLM-L6-v2"})


def load_smollm2():
    import transformers

    src = models_dir() / "SmolLM2-135M-Instruct-hf"
    model = transformers.LlamaForCausalLM.from_pretrained(
        str(src), attn_implementation="eager", torch_dtype="float32"
    ).eval()
    return model


# Token ids of "The capital of France is" and a shorter prompt (SmolLM2's tokenizer; ids
# fixed here so the script needs no tokenizer).
PROMPT_A = [504, 3575, 282, 4649, 314]
PROMPT_B = [1780, 314, 253]


def export_smollm2_prefill(out: Path) -> None:
    import torch

    model = load_smollm2()
    pad = 0
    # Left padding, as batched generation does; position ids count real tokens only.
    ids = torch.tensor([PROMPT_A, [pad, pad] + PROMPT_B], dtype=torch.int64)
    mask = torch.tensor([[1] * 5, [0, 0, 1, 1, 1]], dtype=torch.int64)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)

    class Prefill(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, position_ids):
            return self.m(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            ).logits

    wrapped = Prefill(model).eval()
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            (ids, mask, pos),
            str(out / "model.onnx"),
            input_names=["input_ids", "attention_mask", "position_ids"],
            output_names=["logits"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "position_ids": {0: "batch", 1: "sequence"},
                "logits": {0: "batch", 1: "sequence"},
            },
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
        ref = wrapped(ids, mask, pos).numpy()
    inputs = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": pos.numpy()}
    finish_case(out, inputs, {"logits": ref}, {"model": "SmolLM2-135M-Instruct", "cache": False})


def export_smollm2_past(out: Path) -> None:
    import torch
    from transformers import DynamicCache

    model = load_smollm2()
    cfg = model.config
    n_layers = cfg.num_hidden_layers

    class WithPast(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(
                ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(n_layers)],
                config=cfg,
            )
            o = self.m(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            pk = o.past_key_values
            present = []
            for i in range(n_layers):
                layer = pk.layers[i]
                present += [layer.keys, layer.values]
            return (o.logits, *present)

    # The cache: what the model itself computes for the 5 prompt tokens (batch 1; one
    # decode step of 2 tokens after it).
    prompt = torch.tensor([PROMPT_A], dtype=torch.int64)
    with torch.no_grad():
        pre = model(input_ids=prompt, use_cache=True)
    past = []
    for i in range(n_layers):
        layer = pre.past_key_values.layers[i]
        past += [layer.keys.clone(), layer.values.clone()]
    new_ids = torch.tensor([[12, 2389]], dtype=torch.int64)
    mask = torch.ones((1, 7), dtype=torch.int64)
    pos = torch.tensor([[5, 6]], dtype=torch.int64)

    past_names = []
    present_names = []
    for i in range(n_layers):
        past_names += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        present_names += [f"present.{i}.key", f"present.{i}.value"]
    dyn = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "position_ids": {0: "batch", 1: "sequence"},
        "logits": {0: "batch", 1: "sequence"},
    }
    for n in past_names:
        dyn[n] = {0: "batch", 2: "past_sequence"}
    for n in present_names:
        dyn[n] = {0: "batch", 2: "total_sequence"}

    wrapped = WithPast(model).eval()
    out.mkdir(parents=True, exist_ok=True)
    args = (new_ids, mask, pos, *past)
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            args,
            str(out / "model.onnx"),
            input_names=["input_ids", "attention_mask", "position_ids", *past_names],
            output_names=["logits", *present_names],
            dynamic_axes=dyn,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
        ref = wrapped(*[a.clone() for a in args])
    inputs = {"input_ids": new_ids.numpy(), "attention_mask": mask.numpy(), "position_ids": pos.numpy()}
    for n, t in zip(past_names, past):
        inputs[n] = t.numpy()
    torch_outs = {"logits": ref[0].numpy()}
    for n, t in zip(present_names, ref[1:]):
        torch_outs[n] = t.numpy()
    finish_case(out, inputs, torch_outs, {"model": "SmolLM2-135M-Instruct", "cache": True})


def export_smollm2_optimum(out: Path) -> None:
    """What a user gets from Optimum: `optimum-cli export onnx --task
    text-generation-with-past --model <HF folder> OUT` (needs the `optimum-onnx`
    package, which pins transformers < 4.58; see scripts/onnx-exports --optimum).
    Optimum writes model.onnx with the tokenizer and config files beside it. The
    sample: 2 new tokens after 5 cached, the cache being onnxruntime's own `present`
    outputs for the 5 prompt tokens (past length 0)."""
    import shutil

    src = models_dir() / "SmolLM2-135M-Instruct-hf"
    cli = Path(sys.executable).parent / "optimum-cli"
    if not cli.exists():
        raise SystemExit(f"{cli} not found: install optimum-onnx (scripts/onnx-exports --optimum)")
    if out.exists():
        shutil.rmtree(out)
    cmd = [str(cli), "export", "onnx", "--task", "text-generation-with-past", "--model", str(src), str(out)]
    print("onnx_exports: " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    inputs = optimum_inputs(out / "model.onnx", PROMPT_A, [12, 2389])
    model = load_smollm2()
    import torch

    with torch.no_grad():
        full = torch.tensor([PROMPT_A + [12, 2389]], dtype=torch.int64)
        logits = model(input_ids=full).logits[:, -2:, :].numpy()
    finish_case(
        out,
        inputs,
        {"logits": logits},
        {"model": "SmolLM2-135M-Instruct", "cache": True, "exporter": "optimum-cli"},
    )


def export_smollm2_optimum_nopast(out: Path) -> None:
    """Optimum's export without a KV cache, as a user makes one: `optimum-cli export
    onnx --task text-generation --model <HF folder> OUT`. The sample: the 7 tokens of
    the smollm2-optimum sample in one sequence (llmc derives the cached step)."""
    import shutil

    import torch

    src = models_dir() / "SmolLM2-135M-Instruct-hf"
    cli = Path(sys.executable).parent / "optimum-cli"
    if not cli.exists():
        raise SystemExit(f"{cli} not found: install optimum-onnx (scripts/onnx-exports --optimum)")
    if out.exists():
        shutil.rmtree(out)
    cmd = [str(cli), "export", "onnx", "--task", "text-generation", "--model", str(src), str(out)]
    print("onnx_exports: " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    inputs = nopast_inputs(PROMPT_A + [12, 2389])
    model = load_smollm2()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(inputs["input_ids"])).logits.numpy()
    finish_case(
        out,
        inputs,
        {"logits": logits},
        {"model": "SmolLM2-135M-Instruct", "cache": False, "exporter": "optimum-cli"},
    )


def nopast_inputs(ids: list) -> dict:
    """Inputs of an export without a cache: one unpadded sequence."""
    return {
        "input_ids": np.array([ids], dtype=np.int64),
        "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
        "position_ids": np.arange(len(ids), dtype=np.int64)[None, :],
    }


def optimum_inputs(model: Path, cached: list, new: list) -> dict:
    """Inputs of an Optimum with-past export: `new` tokens after `cached` ones, the
    cache computed by onnxruntime from an empty one."""
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    names = [i.name for i in proto.graph.input]
    past = [n for n in names if n.startswith("past_key_values.")]
    # [batch, kv heads, 0, head dim] from the declared input type.
    t = next(i for i in proto.graph.input if i.name == past[0]).type.tensor_type
    heads, dim = t.shape.dim[1].dim_value, t.shape.dim[3].dim_value

    def feed(ids: list, past_len: int, cache: dict) -> dict:
        total = past_len + len(ids)
        f = {
            "input_ids": np.array([ids], dtype=np.int64),
            "attention_mask": np.ones((1, total), dtype=np.int64),
        }
        if "position_ids" in names:
            f["position_ids"] = np.arange(past_len, total, dtype=np.int64)[None, :]
        for n in past:
            f[n] = cache.get(n, np.zeros((1, heads, 0, dim), dtype=np.float32))
        return f

    pre = run_ort(model, feed(cached, 0, {}))
    cache = {n: pre[n.replace("past_key_values.", "present.")] for n in past}
    return feed(new, len(cached), cache)


CASES = {
    "minilm": export_minilm,
    "smollm2-prefill": export_smollm2_prefill,
    "smollm2-past": export_smollm2_past,
    "smollm2-optimum": export_smollm2_optimum,
    "smollm2-optimum-nopast": export_smollm2_optimum_nopast,
}
# Cases made only when asked for (--only CASE): they need packages the others do not.
OPTIONAL = {"smollm2-optimum", "smollm2-optimum-nopast"}


def second_inputs(name: str) -> dict:
    """Inputs of other sizes than the export's (the graph must not be specialised to
    them): one unpadded row of another length; for the cache, one decode step after 3
    cached tokens."""
    if name == "minilm":
        ids = np.array([[101, 7592, 2088, 999, 102, 2023, 102]], dtype=np.int64)
        return {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
        }
    if name == "smollm2-optimum":
        return optimum_inputs(exports_dir() / name / "model.onnx", PROMPT_B, [4649])
    if name == "smollm2-optimum-nopast":
        return nopast_inputs(PROMPT_B + [4649])
    if name == "smollm2-prefill":
        ids = np.array([PROMPT_A + [12, 2389]], dtype=np.int64)
        return {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None, :],
        }
    import torch

    model = load_smollm2()
    with torch.no_grad():
        pre = model(input_ids=torch.tensor([PROMPT_B], dtype=torch.int64), use_cache=True)
    inputs = {
        "input_ids": np.array([[4649]], dtype=np.int64),
        "attention_mask": np.ones((1, 4), dtype=np.int64),
        "position_ids": np.array([[3]], dtype=np.int64),
    }
    for i in range(model.config.num_hidden_layers):
        layer = pre.past_key_values.layers[i]
        inputs[f"past_key_values.{i}.key"] = layer.keys.numpy()
        inputs[f"past_key_values.{i}.value"] = layer.values.numpy()
    return inputs


def write_second_sample(case: Path) -> None:
    """`<case>/sample2/{inputs,ort}/`: onnxruntime on [`second_inputs`]."""
    inputs = second_inputs(case.name)
    outs = run_ort(case / "model.onnx", inputs)
    save_npys(case / "sample2" / "inputs", inputs)
    save_npys(case / "sample2" / "ort", outs)
    print(f"onnx_exports: {case.name}: second sample written")


def check_llmc(llmc: str, engine: str, only: list) -> int:
    """Runs `llmc exec` on every export present and prints the errors against ORT."""
    worst = 0
    for name in only or CASES:
        case = exports_dir() / name
        if name in OPTIONAL and not (case / "case.json").exists() and not only:
            continue
        info_path = case / "case.json"
        if not info_path.exists():
            print(f"{name}: not exported (run without --check-llmc first)")
            continue
        info = json.loads(info_path.read_text())
        for sample in [case, case / "sample2"]:
            if (sample / "ort").is_dir():
                worst |= check_sample(llmc, engine, case, sample, info)
    return worst


def check_sample(llmc: str, engine: str, case: Path, sample: Path, info: dict) -> int:
    """`llmc exec` on one sample's inputs; prints each output's errors against ORT."""
    worst = 0
    name = case.name if sample == case else f"{case.name}/{sample.name}"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [llmc, "exec", str(case / "model.onnx"), "--engine", engine, "--output-dir", tmp]
        for i in info["inputs"]:
            cmd += ["--input", f"{i}={sample / 'inputs' / (i + '.npy')}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{name}: llmc exec failed:\n{r.stderr}")
            return 1
        for o in info["outputs"]:
            ref = np.load(sample / "ort" / f"{o}.npy").astype(np.float64)
            got = np.load(Path(tmp) / f"{o}.npy").astype(np.float64)
            if ref.shape != got.shape:
                print(f"{name}/{o}: shape {got.shape}, ORT has {ref.shape}")
                worst = 1
                continue
            err = np.abs(got - ref)
            # Relative error where it means something: elements with |ref| >= 0.01.
            big = np.abs(ref) >= 1e-2
            rel = float(np.max(err[big] / np.abs(ref[big]))) if big.any() else 0.0
            scale = float(np.max(np.abs(ref)))
            print(
                f"{name}/{o} [{engine}]: max abs {float(err.max()):.3e}, "
                f"max rel {rel:.3e} (|ref| >= 0.01), max |ref| {scale:.3e}"
            )
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=list(CASES), default=[])
    ap.add_argument("--force", action="store_true", help="export again even if present")
    ap.add_argument("--check-llmc", metavar="LLMC", help="run llmc exec and compare instead")
    ap.add_argument("--engine", default="interp", choices=["interp", "cpu"])
    a = ap.parse_args()
    if a.check_llmc:
        return check_llmc(a.check_llmc, a.engine, a.only)

    import torch

    torch.manual_seed(0)
    for name in a.only or [c for c in CASES if c not in OPTIONAL]:
        case = exports_dir() / name
        if (case / "case.json").exists() and not a.force:
            print(f"onnx_exports: {name}: present, skipped (--force to redo)")
        else:
            CASES[name](case)
        if a.force or not (case / "sample2" / "ort").is_dir():
            write_second_sample(case)
    return 0


if __name__ == "__main__":
    sys.exit(main())
