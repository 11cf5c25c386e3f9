#!/usr/bin/env python3
"""Writes ONNX's own node conformance tests to .cache/onnx-node/ for the Rust runner.

The `onnx` package carries its node tests as Python (`collect_testcases()`: ~1900
cases, each a one-node model, or an expanded function graph, with input/output
arrays). This script writes every case as the layout ONNX's backend tests use:

    .cache/onnx-node/<name>/model.onnx
    .cache/onnx-node/<name>/test_data_set_N/input_K.pb   (TensorProto, or Sequence/
    .cache/onnx-node/<name>/test_data_set_N/output_K.pb   Optional/Map protos)
    .cache/onnx-node/<name>/meta.json                     {"rtol": .., "atol": ..}

`tests/tests/onnx_node.rs` runs the cases listed in `tests/onnx/node.txt`.

Run it from anywhere with any Python 3: it creates `.venv/` at the repository root
when missing, installs the pinned `onnx` (and `numpy`) there when absent, and
re-runs itself with that interpreter. It is idempotent: when the cache was written by
the same onnx version and the same script, it returns at once (`--force` rewrites).
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv")
VENV_PY = os.path.join(VENV, "bin", "python")
OUT = os.path.join(ROOT, ".cache", "onnx-node")
STAMP = os.path.join(OUT, ".stamp.json")
# The case list and data depend on the onnx version; numpy only computes them (seeded).
ONNX_PIN = "onnx==1.23.2"


def in_venv():
    """Running with the venv's interpreter and the pinned onnx importable?"""
    if os.path.realpath(sys.prefix) != os.path.realpath(VENV):
        return False
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return onnx.__version__ == ONNX_PIN.split("==")[1]


def ensure_venv():
    """Creates the venv and installs the pins when needed, then re-executes in it."""
    if not os.path.exists(VENV_PY):
        print(f"gen-onnx-node-tests: creating {VENV}", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    probe = "import onnx, numpy; print(onnx.__version__)"
    got = subprocess.run([VENV_PY, "-c", probe], capture_output=True, text=True)
    if got.returncode != 0 or got.stdout.strip() != ONNX_PIN.split("==")[1]:
        print(f"gen-onnx-node-tests: installing {ONNX_PIN} numpy", file=sys.stderr)
        subprocess.check_call([VENV_PY, "-m", "pip", "install", "-q", ONNX_PIN, "numpy"])
    os.execv(VENV_PY, [VENV_PY, os.path.abspath(__file__), *sys.argv[1:]])


def script_hash():
    with open(os.path.abspath(__file__), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def proto_for(value, type_proto, name):
    """The protobuf message ONNX's backend test tools write for one value."""
    from onnx import TensorProto, numpy_helper

    if type_proto.HasField("map_type"):
        return numpy_helper.from_dict(value, name)
    if type_proto.HasField("sequence_type"):
        return numpy_helper.from_list(value, name)
    if type_proto.HasField("optional_type"):
        return numpy_helper.from_optional(value, name)
    if isinstance(value, TensorProto):
        return value
    return numpy_helper.from_array(value, name)


def write_case(case, root):
    d = os.path.join(root, case.name)
    os.makedirs(d)
    g = case.model.graph
    with open(os.path.join(d, "model.onnx"), "wb") as f:
        f.write(case.model.SerializeToString())
    for i, (inputs, outputs) in enumerate(case.data_sets):
        ds = os.path.join(d, f"test_data_set_{i}")
        os.makedirs(ds)
        for kind, values, decls in (("input", inputs, g.input), ("output", outputs, g.output)):
            for j, v in enumerate(values):
                p = proto_for(v, decls[j].type, decls[j].name)
                with open(os.path.join(ds, f"{kind}_{j}.pb"), "wb") as f:
                    f.write(p.SerializeToString())
    meta = {"rtol": float(case.rtol), "atol": float(case.atol)}
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, sort_keys=True)


def main():
    if not in_venv():
        ensure_venv()
        return
    import warnings

    import onnx
    from onnx.backend.test.case.node import collect_testcases

    stamp = {"onnx": onnx.__version__, "script": script_hash()}
    force = "--force" in sys.argv[1:]
    if not force and os.path.exists(STAMP):
        with open(STAMP) as f:
            if json.load(f) == stamp:
                print(f"gen-onnx-node-tests: {OUT} is up to date", file=sys.stderr)
                return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    # Write into a fresh folder, then swap it in, so an interrupted run never leaves a
    # half-written cache that looks complete.
    tmp = OUT + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for case in cases:
        write_case(case, tmp)
    with open(os.path.join(tmp, ".stamp.json"), "w") as f:
        json.dump(stamp, f, sort_keys=True)
    shutil.rmtree(OUT, ignore_errors=True)
    os.rename(tmp, OUT)
    print(f"gen-onnx-node-tests: wrote {len(cases)} cases to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
