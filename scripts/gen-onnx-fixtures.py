#!/usr/bin/env python3
"""Writes the small ONNX models under tests/fixtures/onnx/ that the CLI tests load.

    mlp.onnx   y = Relu(Gemm(x, W, b)), x: float[batch, 4], W[i][j] = (i - j) / 4,
               b[j] = 1/2 - j/4 (the tests compute the same values independently);
               the batch dim is symbolic, and y's shape goes through the
               Shape -> Gather -> Unsqueeze -> Concat -> Reshape chain exporters write.

Run it with the venv that scripts/gen-onnx-node-tests.py sets up:
    .venv/bin/python scripts/gen-onnx-fixtures.py
"""

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "onnx")


def mlp():
    w = np.array([[(i - j) / 4 for j in range(3)] for i in range(4)], dtype=np.float32)
    b = np.array([0.5 - j / 4 for j in range(3)], dtype=np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "W", "b"], ["h"], name="gemm"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="batch", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsqueeze"),
        helper.make_node("Concat", ["n1", "three"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["r", "target"], ["y"], name="reshape"),
    ]
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(b, "b"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([3], dtype=np.int64), "three"),
    ]
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="llmc-fixtures")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def main():
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "mlp.onnx")
    with open(path, "wb") as f:
        f.write(mlp().SerializeToString())
    print(f"wrote {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
