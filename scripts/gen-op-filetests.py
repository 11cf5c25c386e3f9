#!/usr/bin/env python3
"""Writes one run filetest per op of the IR's op table into tests/filetests/run/<op>.llmc.

The expected outputs come from numpy (f64 math on the f32 inputs, rounded to the result
dtype), written independently of the Rust reference interpreter; attention, rope, the
norms and the KV cache have their reference written out explicitly below. The module
text is in canonical printed form (docs/ir-text.md): 2-space indent, attributes sorted
by name, float attributes printed like Rust's `{:?}` of an f64, dense float elements
like Rust's `{:?}` of the f32 value.

Run it from the repository root in a venv with numpy:
    python3 -m venv .venv && .venv/bin/pip install numpy
    .venv/bin/python scripts/gen-op-filetests.py
It rewrites every file it owns and checks that every op of ir/src/ops/mod.rs is covered.
"""

import math
import os
import re
import sys
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "filetests", "run")
I64_MAX = 2**63 - 1
I64_MIN = -(2**63)

# Tolerances, as printed in `; expect:` lines.
TOL = "atol=1e-6 rtol=1e-6"  # float math: one f32 rounding apart at most
TOL_LOOSE = "atol=1e-5 rtol=1e-5"  # longer f64 sums (matmul, attention, norms)
TOL_EXACT_F = "atol=0.0 rtol=0.0"  # floats moved, not computed


# ----- printing -----


def fmt_float(v, bits):
    """Rust's `{:?}` of an f32 (bits=32) or f64 (bits=64) value."""
    x = np.float32(v) if bits == 32 else np.float64(v)
    if np.isnan(x):
        raise ValueError("NaN is not used in these tests")
    if np.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "-0.0" if np.signbit(x) else "0.0"
    s = np.format_float_scientific(x, unique=True, trim="-")
    mant, exp = s.split("e")
    exp = int(exp)
    neg = mant.startswith("-")
    digits = mant.lstrip("-").replace(".", "")
    a = abs(x)
    if a < x.dtype.type(1e-4) or a >= x.dtype.type(1e16):
        m = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        out = f"{m}e{exp}"
    else:
        point = exp + 1  # digits before the decimal point
        if point <= 0:
            out = "0." + "0" * (-point) + digits
        elif point >= len(digits):
            out = digits + "0" * (point - len(digits)) + ".0"
        else:
            out = digits[:point] + "." + digits[point:]
    return ("-" if neg else "") + out


NP = {"f32": np.float32, "f16": np.float16, "f64": np.float64, "i64": np.int64, "i32": np.int32, "bool": np.bool_}


def dims_str(shape):
    return "[" + ", ".join(str(d) for d in shape) + "]"


def ty(dtype, shape):
    return f"{dtype}{dims_str(shape)}"


def elems(dtype, arr):
    flat = np.asarray(arr).reshape(-1)
    if dtype in ("f32", "f16", "bf16"):
        return [fmt_float(np.float32(v), 32) for v in flat]
    if dtype == "f64":
        return [fmt_float(v, 64) for v in flat]
    if dtype == "bool":
        return ["1" if v else "0" for v in flat]
    return [str(int(v)) for v in flat]


def dense(dtype, arr):
    arr = np.asarray(arr)
    return f"dense<{ty(dtype, arr.shape)}: [{', '.join(elems(dtype, arr))}]>"


class Shape:
    """An attribute the op table declares as a shape."""

    def __init__(self, dims):
        self.dims = dims


class DType:
    def __init__(self, name):
        self.name = name


class Dense:
    def __init__(self, dtype, arr):
        self.dtype, self.arr = dtype, np.asarray(arr)


def attr_str(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return fmt_float(v, 64)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, Shape):
        return dims_str(v.dims)
    if isinstance(v, DType):
        return v.name
    if isinstance(v, Dense):
        return dense(v.dtype, v.arr)
    if isinstance(v, list):
        return "[" + ", ".join(attr_str(x) for x in v) + "]"
    raise TypeError(v)


def node(results, op, operands, attrs, types):
    """One node line. `results`/`operands` are names without `%`; `types` (dtype, shape)."""
    res = ", ".join("%" + r for r in results)
    ops = ", ".join(("%" + o) if not o.startswith("@") else o for o in operands)
    a = ""
    if attrs:
        a = " {" + ", ".join(f"{k} = {attr_str(attrs[k])}" for k in sorted(attrs)) + "}"
    t = ", ".join(ty(d, s) for d, s in types)
    return f"{res} = {op}({ops}){a} : {t}"


class FileTest:
    """A module with one graph, and the runs that check it."""

    def __init__(self, op):
        self.op = op
        self.inputs = []  # (name, dtype, shape)
        self.nodes = []
        self.outputs = []  # (name, dtype, shape)
        self.runs = []  # (bindings [(name, dtype, arr)], expects [(name, dtype, arr, tol)])

    def input(self, name, dtype, shape):
        self.inputs.append((name, dtype, shape))

    def add(self, results, op, operands, attrs, types, output=True):
        self.nodes.append(node(results, op, operands, attrs, types))
        if output:
            for r, (d, s) in zip(results, types):
                self.outputs.append((r, d, s))

    def run(self, bindings, expects):
        names = [n for n, _, _ in self.inputs]
        assert [b[0] for b in bindings] == names, (self.op, names)
        outs = [n for n, _, _ in self.outputs]
        assert [e[0] for e in expects] == outs, (self.op, outs)
        for (n, d, arr), (_, d2, _) in zip(bindings, self.inputs):
            assert d == d2, (self.op, n)
        self.runs.append((bindings, expects))

    def text(self):
        lines = ["; test run"]
        for bindings, expects in self.runs:
            lines.append("; run: " + ", ".join(f"%{n} = {dense(d, a)}" for n, d, a in bindings))
            for n, d, a, tol in expects:
                line = f"; expect: %{n} = {dense(d, a)}"
                if tol:
                    line += " " + tol
                lines.append(line)
        sig_in = ", ".join(f"%{n}: {ty(d, s)}" for n, d, s in self.inputs)
        sig_out = ", ".join(f"%{n}: {ty(d, s)}" for n, d, s in self.outputs)
        lines.append(f"module @{self.op} {{")
        lines.append(f"  graph @main({sig_in}) -> ({sig_out}) {{")
        for n in self.nodes:
            lines.append("    " + n)
        lines.append("    return " + ", ".join("%" + n for n, _, _ in self.outputs))
        lines.append("  }")
        lines.append("}")
        return "\n".join(lines) + "\n"


def f32(a):
    return np.asarray(a, dtype=np.float64).astype(np.float32)


def rnd(rng, shape, lo=-2.0, hi=2.0):
    """Random f32 values with two decimals (short literals)."""
    return f32(np.round(rng.uniform(lo, hi, size=shape), 2))


def d64(a):
    return np.asarray(a, dtype=np.float64)


CASES = {}


def case(op):
    def deco(fn):
        CASES[op] = fn
        return fn

    return deco


# ----- elementwise unary -----


def erf(x):
    return np.vectorize(math.erf)(x)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


UNARY_FLOAT = {
    "neg": (lambda x: -x, (-3, 3)),
    "abs": (np.abs, (-3, 3)),
    "exp": (np.exp, (-3, 3)),
    "log": (np.log, (0.05, 5)),
    "sqrt": (np.sqrt, (0.0, 5)),
    "rsqrt": (lambda x: 1.0 / np.sqrt(x), (0.05, 5)),
    "reciprocal": (lambda x: 1.0 / x, (0.1, 4)),
    "tanh": (np.tanh, (-3, 3)),
    "sigmoid": (sigmoid, (-6, 6)),
    "relu": (lambda x: np.maximum(x, 0.0), (-3, 3)),
    "silu": (lambda x: x * sigmoid(x), (-6, 6)),
    "erf": (erf, (-3.5, 3.5)),
    "sin": (np.sin, (-4, 4)),
    "cos": (np.cos, (-4, 4)),
    "floor": (np.floor, (-3, 3)),
    "ceil": (np.ceil, (-3, 3)),
}


def make_unary(op, fn, lo, hi):
    def build():
        rng = np.random.default_rng(zlib.crc32(op.encode()))
        t = FileTest(op)
        # A symbolic batch dim: the rule keeps it, the run binds it.
        t.input("x", "f32", ["batch", 3])
        t.add(["out"], op, ["x"], {}, [("f32", ["batch", 3])])
        for b in (2, 1):
            x = rnd(rng, (b, 3), lo, hi)
            t.run([("x", "f32", x)], [("out", "f32", f32(fn(d64(x))), TOL)])
        return t

    return build


for _op, (_fn, (_lo, _hi)) in UNARY_FLOAT.items():
    CASES[_op] = make_unary(_op, _fn, _lo, _hi)


@case("round")
def _():
    t = FileTest("round")
    t.input("x", "f32", [2, 4])
    t.add(["out"], "round", ["x"], {}, [("f32", [2, 4])])
    x = f32([[0.5, 1.5, 2.5, -0.5], [-1.5, 2.4, -2.6, 3.0]])
    t.run([("x", "f32", x)], [("out", "f32", f32(np.round(d64(x))), TOL_EXACT_F)])
    return t


@case("sign")
def _():
    t = FileTest("sign")
    t.input("x", "f32", [5])
    t.input("n", "i64", [4])
    t.add(["out"], "sign", ["x"], {}, [("f32", [5])])
    t.add(["iout"], "sign", ["n"], {}, [("i64", [4])])
    x = f32([-2.5, 0.0, 3.0, -0.1, 7.0])
    n = np.array([-5, 0, 9, -1], dtype=np.int64)
    t.run(
        [("x", "f32", x), ("n", "i64", n)],
        [("out", "f32", f32(np.sign(d64(x))), TOL_EXACT_F), ("iout", "i64", np.sign(n), None)],
    )
    return t


@case("gelu")
def _():
    rng = np.random.default_rng(11)
    t = FileTest("gelu")
    t.input("x", "f32", [2, 5])
    t.add(["erf_form"], "gelu", ["x"], {}, [("f32", [2, 5])])
    t.add(["tanh_form"], "gelu", ["x"], {"approximate": "tanh"}, [("f32", [2, 5])])
    x = rnd(rng, (2, 5), -4, 4)
    xd = d64(x)
    g = 0.5 * xd * (1.0 + erf(xd / math.sqrt(2.0)))
    c = math.sqrt(2.0 / math.pi)
    gt = 0.5 * xd * (1.0 + np.tanh(c * (xd + 0.044715 * xd**3)))
    t.run([("x", "f32", x)], [("erf_form", "f32", f32(g), TOL), ("tanh_form", "f32", f32(gt), TOL)])
    return t


@case("not")
def _():
    t = FileTest("not")
    t.input("x", "bool", [2, 2])
    t.add(["out"], "not", ["x"], {}, [("bool", [2, 2])])
    x = np.array([[True, False], [False, True]])
    t.run([("x", "bool", x)], [("out", "bool", ~x, None)])
    return t


@case("clip")
def _():
    rng = np.random.default_rng(12)
    t = FileTest("clip")
    t.input("x", "f32", [3, 4])
    t.input("n", "i64", [5])
    t.add(["both"], "clip", ["x"], {"max": 1.25, "min": -0.5}, [("f32", [3, 4])])
    t.add(["lower"], "clip", ["x"], {"min": 0.0}, [("f32", [3, 4])])
    t.add(["upper"], "clip", ["x"], {"max": -1.0}, [("f32", [3, 4])])
    t.add(["ints"], "clip", ["n"], {"max": 4.5, "min": -2.0}, [("i64", [5])])
    x = rnd(rng, (3, 4), -3, 3)
    xd = d64(x)
    n = np.array([-7, -2, 0, 4, 9], dtype=np.int64)
    t.run(
        [("x", "f32", x), ("n", "i64", n)],
        [
            ("both", "f32", f32(np.minimum(np.maximum(xd, -0.5), 1.25)), TOL_EXACT_F),
            ("lower", "f32", f32(np.maximum(xd, 0.0)), TOL_EXACT_F),
            ("upper", "f32", f32(np.minimum(xd, -1.0)), TOL_EXACT_F),
            ("ints", "i64", np.clip(n, -2, 4), None),
        ],
    )
    return t


@case("cast")
def _():
    t = FileTest("cast")
    t.input("x", "f32", [6])
    t.input("n", "i64", [3])
    t.add(["to_i64"], "cast", ["x"], {"to": DType("i64")}, [("i64", [6])])
    t.add(["to_bool"], "cast", ["x"], {"to": DType("bool")}, [("bool", [6])])
    t.add(["to_f16"], "cast", ["x"], {"to": DType("f16")}, [("f16", [6])])
    t.add(["to_f32"], "cast", ["n"], {"to": DType("f32")}, [("f32", [3])])
    x = f32([-2.7, -0.5, 0.0, 0.1, 1.9, 1000.3])
    n = np.array([-3, 0, 123456], dtype=np.int64)
    t.run(
        [("x", "f32", x), ("n", "i64", n)],
        [
            ("to_i64", "i64", np.trunc(d64(x)).astype(np.int64), None),
            ("to_bool", "bool", x != 0, None),
            ("to_f16", "f16", x.astype(np.float16).astype(np.float32), TOL_EXACT_F),
            ("to_f32", "f32", n.astype(np.float32), TOL_EXACT_F),
        ],
    )
    return t


# ----- elementwise binary -----

BINARY_FLOAT = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "max": np.maximum,
    "min": np.minimum,
}


def make_binary(op, fn):
    def build():
        rng = np.random.default_rng(zlib.crc32(op.encode()))
        t = FileTest(op)
        # [batch, 1, 4] with [3, 1]: both operands broadcast, batch symbolic.
        t.input("a", "f32", ["batch", 1, 4])
        t.input("b", "f32", [3, 1])
        t.input("m", "i64", [2, 3])
        t.input("n", "i64", [3])
        t.add(["out"], op, ["a", "b"], {}, [("f32", ["batch", 3, 4])])
        t.add(["iout"], op, ["m", "n"], {}, [("i64", [2, 3])])
        for bsz in (2, 1):
            a, b = rnd(rng, (bsz, 1, 4)), rnd(rng, (3, 1))
            m = rng.integers(-9, 10, size=(2, 3)).astype(np.int64)
            n = rng.integers(-9, 10, size=(3,)).astype(np.int64)
            t.run(
                [("a", "f32", a), ("b", "f32", b), ("m", "i64", m), ("n", "i64", n)],
                [("out", "f32", f32(fn(d64(a), d64(b))), TOL), ("iout", "i64", fn(m, n), None)],
            )
        return t

    return build


for _op, _fn in BINARY_FLOAT.items():
    CASES[_op] = make_binary(_op, _fn)


@case("div")
def _():
    rng = np.random.default_rng(21)
    t = FileTest("div")
    t.input("a", "f32", [2, 3])
    t.input("b", "f32", [3])
    t.input("m", "i64", [6])
    t.input("n", "i64", [6])
    t.add(["out"], "div", ["a", "b"], {}, [("f32", [2, 3])])
    t.add(["iout"], "div", ["m", "n"], {}, [("i64", [6])])
    a = rnd(rng, (2, 3))
    b = f32([0.5, -1.25, 3.0])
    m = np.array([7, -7, 7, -7, 0, 5], dtype=np.int64)
    n = np.array([2, 2, -2, -2, 3, 5], dtype=np.int64)
    trunc = (np.abs(m) // np.abs(n)) * np.sign(m) * np.sign(n)
    t.run(
        [("a", "f32", a), ("b", "f32", b), ("m", "i64", m), ("n", "i64", n)],
        [("out", "f32", f32(d64(a) / d64(b)), TOL), ("iout", "i64", trunc, None)],
    )
    return t


@case("pow")
def _():
    rng = np.random.default_rng(22)
    t = FileTest("pow")
    t.input("a", "f32", [2, 3])
    t.input("b", "f32", [2, 1])
    t.input("m", "i64", [4])
    t.input("n", "i64", [4])
    t.add(["out"], "pow", ["a", "b"], {}, [("f32", [2, 3])])
    t.add(["iout"], "pow", ["m", "n"], {}, [("i64", [4])])
    a = rnd(rng, (2, 3), 0.1, 3)
    b = f32([[0.5], [-1.5]])
    m = np.array([2, -3, 5, 1], dtype=np.int64)
    n = np.array([10, 3, 0, 7], dtype=np.int64)
    t.run(
        [("a", "f32", a), ("b", "f32", b), ("m", "i64", m), ("n", "i64", n)],
        [("out", "f32", f32(np.power(d64(a), d64(b))), TOL), ("iout", "i64", m**n, None)],
    )
    return t


@case("mod")
def _():
    rng = np.random.default_rng(23)
    t = FileTest("mod")
    t.input("a", "f32", [2, 3])
    t.input("b", "f32", [3])
    t.input("m", "i64", [6])
    t.input("n", "i64", [6])
    t.add(["floor"], "mod", ["a", "b"], {}, [("f32", [2, 3])])
    t.add(["trunc"], "mod", ["a", "b"], {"fmod": True}, [("f32", [2, 3])])
    t.add(["ifloor"], "mod", ["m", "n"], {}, [("i64", [6])])
    t.add(["itrunc"], "mod", ["m", "n"], {"fmod": True}, [("i64", [6])])
    for _ in range(2):
        a = rnd(rng, (2, 3), -5, 5)
        b = f32([1.5, -0.75, 2.0])
        m = rng.integers(-20, 20, size=6).astype(np.int64)
        n = np.array([3, -3, 7, -7, 1, 5], dtype=np.int64)
        t.run(
            [("a", "f32", a), ("b", "f32", b), ("m", "i64", m), ("n", "i64", n)],
            [
                ("floor", "f32", f32(np.mod(d64(a), d64(b))), TOL),
                ("trunc", "f32", f32(np.fmod(d64(a), d64(b))), TOL),
                ("ifloor", "i64", np.mod(m, n), None),
                ("itrunc", "i64", np.fmod(m, n), None),
            ],
        )
    return t


COMPARE = {
    "equal": np.equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
}


def make_compare(op, fn):
    def build():
        t = FileTest(op)
        t.input("a", "f32", [2, 3])
        t.input("b", "f32", [3])
        t.input("m", "i64", [4])
        t.input("n", "i64", [1])
        t.add(["out"], op, ["a", "b"], {}, [("bool", [2, 3])])
        t.add(["iout"], op, ["m", "n"], {}, [("bool", [4])])
        a = f32([[1.0, 2.5, -3.0], [0.5, 2.0, 7.25]])
        b = f32([1.0, 2.0, 7.25])
        m = np.array([-1, 3, 4, 5], dtype=np.int64)
        n = np.array([4], dtype=np.int64)
        t.run(
            [("a", "f32", a), ("b", "f32", b), ("m", "i64", m), ("n", "i64", n)],
            [("out", "bool", fn(a, b), None), ("iout", "bool", fn(m, n), None)],
        )
        return t

    return build


for _op, _fn in COMPARE.items():
    CASES[_op] = make_compare(_op, _fn)

LOGICAL = {"and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor}


def make_logical(op, fn):
    def build():
        t = FileTest(op)
        t.input("a", "bool", [2, 2])
        t.input("b", "bool", [2, 1])
        t.add(["out"], op, ["a", "b"], {}, [("bool", [2, 2])])
        a = np.array([[True, False], [True, False]])
        b = np.array([[True], [False]])
        t.run([("a", "bool", a), ("b", "bool", b)], [("out", "bool", fn(a, b), None)])
        return t

    return build


for _op, _fn in LOGICAL.items():
    CASES[_op] = make_logical(_op, _fn)


@case("where")
def _():
    rng = np.random.default_rng(31)
    t = FileTest("where")
    t.input("c", "bool", [2, 1, 3])
    t.input("a", "f32", [4, 3])
    t.input("b", "f32", [1])
    t.add(["out"], "where", ["c", "a", "b"], {}, [("f32", [2, 4, 3])])
    c = np.array([[[True, False, True]], [[False, False, True]]])
    a, b = rnd(rng, (4, 3)), f32([-9.5])
    t.run([("c", "bool", c), ("a", "f32", a), ("b", "f32", b)], [("out", "f32", np.where(c, a, b), TOL_EXACT_F)])
    return t


# ----- reductions -----

REDUCE = {
    "reduce_sum": np.sum,
    "reduce_mean": np.mean,
    "reduce_max": np.max,
    "reduce_min": np.min,
    "reduce_prod": np.prod,
}


def make_reduce(op, fn):
    def build():
        rng = np.random.default_rng(zlib.crc32(op.encode()))
        t = FileTest(op)
        t.input("x", "f32", ["seq", 3, 4])
        t.input("n", "i64", [2, 3])
        t.add(["last"], op, ["x"], {"axes": [-1]}, [("f32", ["seq", 3, 1])])
        t.add(["two"], op, ["x"], {"axes": [0, 2], "keepdims": False}, [("f32", [3])])
        t.add(["every"], op, ["x"], {}, [("f32", [1, 1, 1])])
        t.add(["empty_axes"], op, ["x"], {"axes": [], "keepdims": False}, [("f32", [])])
        t.add(["ints"], op, ["n"], {"axes": [1]}, [("i64", [2, 1])])
        for s in (2, 3):
            x = rnd(rng, (s, 3, 4), 0.5, 1.5) if op == "reduce_prod" else rnd(rng, (s, 3, 4))
            n = rng.integers(-5, 6, size=(2, 3)).astype(np.int64)
            xd = d64(x)
            ni = fn(n, axis=1, keepdims=True)
            if op == "reduce_mean":
                ni = (np.sum(n, axis=1, keepdims=True) / 3).astype(np.int64)  # truncates
            t.run(
                [("x", "f32", x), ("n", "i64", n)],
                [
                    ("last", "f32", f32(fn(xd, axis=-1, keepdims=True)), TOL),
                    ("two", "f32", f32(fn(xd, axis=(0, 2))), TOL),
                    ("every", "f32", f32(fn(xd, keepdims=True)), TOL),
                    ("empty_axes", "f32", f32(fn(xd)), TOL),
                    ("ints", "i64", ni.astype(np.int64), None),
                ],
            )
        return t

    return build


for _op, _fn in REDUCE.items():
    CASES[_op] = make_reduce(_op, _fn)


def make_arg(op, fn):
    def build():
        t = FileTest(op)
        t.input("x", "f32", [2, 3, 4])
        t.input("n", "i64", [5])
        t.add(["mid"], op, ["x"], {"axis": 1}, [("i64", [2, 1, 4])])
        t.add(["last"], op, ["x"], {"axis": -1, "keepdims": False}, [("i64", [2, 3])])
        t.add(["ints"], op, ["n"], {"axis": 0, "keepdims": False}, [("i64", [])])
        # Ties everywhere: the first index must win.
        x = f32(
            [
                [[1, 3, 3, 0], [2, 3, 1, 0], [2, 0, 3, 5]],
                [[0, 0, 0, 0], [-1, 4, 4, -1], [4, -2, 4, 4]],
            ]
        )
        n = np.array([3, -1, 7, 7, -1], dtype=np.int64)
        t.run(
            [("x", "f32", x), ("n", "i64", n)],
            [
                ("mid", "i64", fn(x, axis=1, keepdims=True), None),
                ("last", "i64", fn(x, axis=-1), None),
                ("ints", "i64", np.array(fn(n)), None),
            ],
        )
        return t

    return build


CASES["argmax"] = make_arg("argmax", np.argmax)
CASES["argmin"] = make_arg("argmin", np.argmin)


def np_softmax(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def np_log_softmax(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


def make_softmax(op, fn):
    def build():
        rng = np.random.default_rng(zlib.crc32(op.encode()))
        t = FileTest(op)
        t.input("x", "f32", ["seq", 5])
        t.input("y", "f32", [3, 2, 4])
        t.add(["last"], op, ["x"], {"axis": -1}, [("f32", ["seq", 5])])
        t.add(["mid"], op, ["y"], {"axis": 1}, [("f32", [3, 2, 4])])
        for s in (3, 1):
            x = rnd(rng, (s, 5), -4, 4)
            # Large values: only a max-subtracting softmax stays finite.
            y = f32(d64(rnd(rng, (3, 2, 4), -3, 3)) + 500.0)
            t.run(
                [("x", "f32", x), ("y", "f32", y)],
                [("last", "f32", f32(fn(d64(x), -1)), TOL), ("mid", "f32", f32(fn(d64(y), 1)), TOL)],
            )
        return t

    return build


CASES["softmax"] = make_softmax("softmax", np_softmax)
CASES["log_softmax"] = make_softmax("log_softmax", np_log_softmax)


@case("cumsum")
def _():
    rng = np.random.default_rng(41)
    t = FileTest("cumsum")
    t.input("x", "f32", [2, 5])
    t.input("n", "i64", [2, 3])
    t.add(["plain"], "cumsum", ["x"], {"axis": 1}, [("f32", [2, 5])])
    t.add(["excl"], "cumsum", ["x"], {"axis": -1, "exclusive": True}, [("f32", [2, 5])])
    t.add(["rev"], "cumsum", ["x"], {"axis": 1, "reverse": True}, [("f32", [2, 5])])
    t.add(["both"], "cumsum", ["x"], {"axis": 1, "exclusive": True, "reverse": True}, [("f32", [2, 5])])
    t.add(["ints"], "cumsum", ["n"], {"axis": 0}, [("i64", [2, 3])])
    x = rnd(rng, (2, 5))
    xd = d64(x)
    n = rng.integers(-9, 10, size=(2, 3)).astype(np.int64)
    plain = np.cumsum(xd, axis=1)
    excl = plain - xd
    rev = np.flip(np.cumsum(np.flip(xd, 1), axis=1), 1)
    both = rev - xd
    t.run(
        [("x", "f32", x), ("n", "i64", n)],
        [
            ("plain", "f32", f32(plain), TOL),
            ("excl", "f32", f32(excl), TOL),
            ("rev", "f32", f32(rev), TOL),
            ("both", "f32", f32(both), TOL),
            ("ints", "i64", np.cumsum(n, axis=0), None),
        ],
    )
    return t


# ----- linear algebra -----


@case("matmul")
def _():
    rng = np.random.default_rng(51)
    t = FileTest("matmul")
    t.input("a", "f32", [2, 1, 2, 3])
    t.input("b", "f32", [3, 3, 4])
    t.input("v", "f32", [3])
    t.input("s", "f32", ["seq", 3])
    t.input("m", "i64", [2, 3])
    t.input("n", "i64", [3, 2])
    t.add(["batched"], "matmul", ["a", "b"], {}, [("f32", [2, 3, 2, 4])])
    t.add(["vec_mat"], "matmul", ["v", "b"], {}, [("f32", [3, 4])])
    t.add(["mat_vec"], "matmul", ["a", "v"], {}, [("f32", [2, 1, 2])])
    t.add(["sym"], "matmul", ["s", "b"], {}, [("f32", [3, "seq", 4])])
    t.add(["ints"], "matmul", ["m", "n"], {}, [("i64", [2, 2])])
    for s in (2, 5):
        a, b, v, sm = rnd(rng, (2, 1, 2, 3)), rnd(rng, (3, 3, 4)), rnd(rng, (3,)), rnd(rng, (s, 3))
        m = rng.integers(-5, 6, size=(2, 3)).astype(np.int64)
        n = rng.integers(-5, 6, size=(3, 2)).astype(np.int64)
        t.run(
            [("a", "f32", a), ("b", "f32", b), ("v", "f32", v), ("s", "f32", sm), ("m", "i64", m), ("n", "i64", n)],
            [
                ("batched", "f32", f32(np.matmul(d64(a), d64(b))), TOL),
                ("vec_mat", "f32", f32(np.matmul(d64(v), d64(b))), TOL),
                ("mat_vec", "f32", f32(np.matmul(d64(a), d64(v))), TOL),
                ("sym", "f32", f32(np.matmul(d64(sm), d64(b))), TOL),
                ("ints", "i64", m @ n, None),
            ],
        )
    return t


@case("linear")
def _():
    rng = np.random.default_rng(52)
    t = FileTest("linear")
    t.input("x", "f32", ["batch", 3, 4])
    t.input("w", "f32", [5, 4])
    t.input("b", "f32", [5])
    t.add(["biased"], "linear", ["x", "w", "b"], {}, [("f32", ["batch", 3, 5])])
    t.add(["plain"], "linear", ["x", "w"], {}, [("f32", ["batch", 3, 5])])
    for bs in (2, 1):
        x, w, b = rnd(rng, (bs, 3, 4)), rnd(rng, (5, 4)), rnd(rng, (5,))
        y = d64(x) @ d64(w).T
        t.run(
            [("x", "f32", x), ("w", "f32", w), ("b", "f32", b)],
            [("biased", "f32", f32(y + d64(b)), TOL), ("plain", "f32", f32(y), TOL)],
        )
    return t


# ----- tensor layout and indexing -----


@case("constant")
def _():
    t = FileTest("constant")
    c = f32([[1.5, -2.0, 0.25], [3.0, 1e-5, 100.0]])
    ci = np.array([7, -1, 0], dtype=np.int64)
    t.input("x", "f32", [2, 3])
    t.add(["c"], "constant", [], {"value": Dense("f32", c)}, [("f32", [2, 3])])
    t.add(["ci"], "constant", [], {"value": Dense("i64", ci)}, [("i64", [3])])
    t.add(["sum"], "add", ["x", "c"], {}, [("f32", [2, 3])])
    x = f32([[1, 2, 3], [4, 5, 6]])
    t.run(
        [("x", "f32", x)],
        [("c", "f32", c, TOL_EXACT_F), ("ci", "i64", ci, None), ("sum", "f32", f32(d64(x) + d64(c)), TOL)],
    )
    return t


@case("reshape")
def _():
    rng = np.random.default_rng(61)
    t = FileTest("reshape")
    t.input("x", "f32", ["batch", "seq", 6])
    t.input("n", "i64", [2, 3, 2])
    t.add(["heads"], "reshape", ["x"], {"shape": Shape(["batch", "seq", 2, 3])}, [("f32", ["batch", "seq", 2, 3])])
    t.add(["flat"], "reshape", ["x"], {"shape": Shape(["6*batch*seq"])}, [("f32", ["6*batch*seq"])])
    t.add(["ints"], "reshape", ["n"], {"shape": Shape([3, 4])}, [("i64", [3, 4])])
    for b, s in ((1, 3), (2, 2)):
        x = rnd(rng, (b, s, 6))
        n = np.arange(12, dtype=np.int64).reshape(2, 3, 2) - 5
        t.run(
            [("x", "f32", x), ("n", "i64", n)],
            [
                ("heads", "f32", x.reshape(b, s, 2, 3), TOL_EXACT_F),
                ("flat", "f32", x.reshape(-1), TOL_EXACT_F),
                ("ints", "i64", n.reshape(3, 4), None),
            ],
        )
    return t


@case("transpose")
def _():
    rng = np.random.default_rng(62)
    t = FileTest("transpose")
    t.input("x", "f32", [2, "seq", 4])
    t.add(["rot"], "transpose", ["x"], {"perm": [2, 0, 1]}, [("f32", [4, 2, "seq"])])
    t.add(["swap"], "transpose", ["x"], {"perm": [0, 2, 1]}, [("f32", [2, 4, "seq"])])
    for s in (3, 1):
        x = rnd(rng, (2, s, 4))
        t.run(
            [("x", "f32", x)],
            [("rot", "f32", np.transpose(x, (2, 0, 1)), TOL_EXACT_F), ("swap", "f32", np.transpose(x, (0, 2, 1)), TOL_EXACT_F)],
        )
    return t


@case("concat")
def _():
    rng = np.random.default_rng(63)
    t = FileTest("concat")
    t.input("a", "f32", [2, "seq"])
    t.input("b", "f32", [2, 3])
    t.input("c", "f32", [2, 1])
    t.input("m", "i64", [1, 2])
    t.input("n", "i64", [2, 2])
    t.add(["out"], "concat", ["a", "b", "c"], {"axis": -1}, [("f32", [2, "seq + 4"])])
    t.add(["ints"], "concat", ["m", "n"], {"axis": 0}, [("i64", [3, 2])])
    for s in (2, 4):
        a, b, c = rnd(rng, (2, s)), rnd(rng, (2, 3)), rnd(rng, (2, 1))
        m = np.array([[1, 2]], dtype=np.int64)
        n = np.array([[3, 4], [5, 6]], dtype=np.int64)
        t.run(
            [("a", "f32", a), ("b", "f32", b), ("c", "f32", c), ("m", "i64", m), ("n", "i64", n)],
            [("out", "f32", np.concatenate([a, b, c], axis=-1), TOL_EXACT_F), ("ints", "i64", np.concatenate([m, n], 0), None)],
        )
    return t


@case("split")
def _():
    rng = np.random.default_rng(64)
    t = FileTest("split")
    t.input("x", "f32", ["batch", 6])
    t.add(["p0", "p1", "p2"], "split", ["x"], {"axis": -1, "sizes": [1, 2, 3]}, [("f32", ["batch", 1]), ("f32", ["batch", 2]), ("f32", ["batch", 3])])
    for b in (2, 3):
        x = rnd(rng, (b, 6))
        t.run([("x", "f32", x)], [("p0", "f32", x[:, :1], TOL_EXACT_F), ("p1", "f32", x[:, 1:3], TOL_EXACT_F), ("p2", "f32", x[:, 3:], TOL_EXACT_F)])
    return t


@case("slice")
def _():
    rng = np.random.default_rng(65)
    t = FileTest("slice")
    t.input("x", "f32", [4, 6])
    t.input("s", "f32", ["seq", 3])
    specs = [
        # name, starts, ends, axes, steps
        ("rev", [-1], [I64_MIN], [1], [-1]),
        ("step2", [1, 0], [I64_MAX, 100], [0, -1], [2, 3]),
        ("neg_step2", [10, -2], [0, -100], [1, 0], [-2, -1]),
        ("clamped", [-100], [3], None, None),
        ("empty", [3], [1], [1], None),
    ]
    for name, st, en, ax, sp in specs:
        attrs = {"starts": st, "ends": en}
        if ax is not None:
            attrs["axes"] = ax
        if sp is not None:
            attrs["steps"] = sp
        # Shape from numpy on a dummy of the same shape.
        shape = list(np_slice(np.zeros((4, 6)), st, en, ax, sp).shape)
        t.add([name], "slice", ["x"], attrs, [("f32", shape)])
    t.add(["tail"], "slice", ["s"], {"axes": [0], "ends": [I64_MAX], "starts": [1]}, [("f32", ["seq - 1", 3])])
    t.add(["last2"], "slice", ["s"], {"axes": [0], "ends": [I64_MAX], "starts": [-2]}, [("f32", [2, 3])])
    t.add(["cols"], "slice", ["s"], {"axes": [1], "ends": [3], "starts": [1]}, [("f32", ["seq", 2])])
    for n in (3, 5):
        x, s = rnd(rng, (4, 6)), rnd(rng, (n, 3))
        exp = [(name, "f32", np_slice(x, st, en, ax, sp), TOL_EXACT_F) for name, st, en, ax, sp in specs]
        exp += [("tail", "f32", s[1:], TOL_EXACT_F), ("last2", "f32", s[-2:], TOL_EXACT_F), ("cols", "f32", s[:, 1:3], TOL_EXACT_F)]
        t.run([("x", "f32", x), ("s", "f32", s)], exp)
    return t


def np_slice(x, starts, ends, axes, steps):
    """ONNX Slice via Python slices (whose clamping rules are the ones ONNX adopted)."""
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    idx = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        idx[a % x.ndim] = slice(s, e, st)
    return x[tuple(idx)]


@case("gather")
def _():
    rng = np.random.default_rng(66)
    t = FileTest("gather")
    t.input("table", "f32", [5, 3])
    t.input("ids", "i64", ["batch", 2])
    t.input("cols", "i64", [2])
    t.input("itab", "i64", [4])
    t.add(["rows"], "gather", ["table", "ids"], {"axis": 0}, [("f32", ["batch", 2, 3])])
    t.add(["picked"], "gather", ["table", "cols"], {"axis": -1}, [("f32", [5, 2])])
    t.add(["ints"], "gather", ["itab", "cols"], {}, [("i64", [2])])
    table = rnd(rng, (5, 3))
    itab = np.array([10, 20, 30, 40], dtype=np.int64)
    for ids in (np.array([[0, 4], [-1, 2]]), np.array([[3, -5]])):
        cols = np.array([2, -3], dtype=np.int64)
        t.run(
            [("table", "f32", table), ("ids", "i64", ids), ("cols", "i64", cols), ("itab", "i64", itab)],
            [
                ("rows", "f32", np.take(table, ids % 5, axis=0), TOL_EXACT_F),
                ("picked", "f32", np.take(table, cols % 3, axis=1), TOL_EXACT_F),
                ("ints", "i64", np.take(itab, cols % 4), None),
            ],
        )
    return t


@case("gather_elements")
def _():
    rng = np.random.default_rng(67)
    t = FileTest("gather_elements")
    t.input("x", "f32", [3, 4])
    t.input("ix", "i64", [2, 4])
    t.input("jx", "i64", [3, 2])
    t.add(["rows"], "gather_elements", ["x", "ix"], {"axis": 0}, [("f32", [2, 4])])
    t.add(["cols"], "gather_elements", ["x", "jx"], {"axis": -1}, [("f32", [3, 2])])
    x = rnd(rng, (3, 4))
    ix = np.array([[0, 2, -1, 1], [2, -3, 0, 0]], dtype=np.int64)
    jx = np.array([[3, 0], [-1, 1], [2, 2]], dtype=np.int64)
    t.run(
        [("x", "f32", x), ("ix", "i64", ix), ("jx", "i64", jx)],
        [
            ("rows", "f32", ge(x, ix, 0), TOL_EXACT_F),
            ("cols", "f32", ge(x, jx, 1), TOL_EXACT_F),
        ],
    )
    return t


def ge(x, idx, axis):
    """GatherElements written out: out[i][j] = x[idx[i][j]][j] (axis 0) or x[i][idx[i][j]]."""
    out = np.zeros(idx.shape, dtype=x.dtype)
    for i in range(idx.shape[0]):
        for j in range(idx.shape[1]):
            k = idx[i, j] % x.shape[axis]
            out[i, j] = x[k, j] if axis == 0 else x[i, k]
    return out


@case("expand")
def _():
    rng = np.random.default_rng(68)
    t = FileTest("expand")
    t.input("x", "f32", [3, 1])
    t.input("y", "f32", ["batch", 3, 2])
    t.add(["both_ways"], "expand", ["x"], {"shape": Shape([2, 1, 4])}, [("f32", [2, 3, 4])])
    t.add(["sym"], "expand", ["x"], {"shape": Shape(["batch", 1, 2])}, [("f32", ["batch", 3, 2])])
    t.add(["out"], "add", ["sym", "y"], {}, [("f32", ["batch", 3, 2])])
    for b in (2, 1):
        x, y = rnd(rng, (3, 1)), rnd(rng, (b, 3, 2))
        sym = np.broadcast_to(x, (b, 3, 2))
        t.run(
            [("x", "f32", x), ("y", "f32", y)],
            [
                ("both_ways", "f32", np.broadcast_to(x, (2, 3, 4)), TOL_EXACT_F),
                ("sym", "f32", sym, TOL_EXACT_F),
                ("out", "f32", f32(d64(sym) + d64(y)), TOL),
            ],
        )
    return t


@case("squeeze")
def _():
    rng = np.random.default_rng(69)
    t = FileTest("squeeze")
    t.input("x", "f32", [1, "seq", 1, 2])
    t.add(["some"], "squeeze", ["x"], {"axes": [0, -2]}, [("f32", ["seq", 2])])
    t.add(["first"], "squeeze", ["x"], {"axes": [0]}, [("f32", ["seq", 1, 2])])
    for s in (3, 2):
        x = rnd(rng, (1, s, 1, 2))
        t.run([("x", "f32", x)], [("some", "f32", np.squeeze(x, (0, 2)), TOL_EXACT_F), ("first", "f32", np.squeeze(x, 0), TOL_EXACT_F)])
    return t


@case("unsqueeze")
def _():
    rng = np.random.default_rng(70)
    t = FileTest("unsqueeze")
    t.input("x", "f32", [3, "seq"])
    t.add(["ends"], "unsqueeze", ["x"], {"axes": [0, -1]}, [("f32", [1, 3, "seq", 1])])
    t.add(["mid"], "unsqueeze", ["x"], {"axes": [1]}, [("f32", [3, 1, "seq"])])
    for s in (2, 1):
        x = rnd(rng, (3, s))
        t.run([("x", "f32", x)], [("ends", "f32", np.expand_dims(x, (0, -1)), TOL_EXACT_F), ("mid", "f32", np.expand_dims(x, 1), TOL_EXACT_F)])
    return t


@case("tile")
def _():
    rng = np.random.default_rng(71)
    t = FileTest("tile")
    t.input("x", "f32", [2, "seq"])
    t.input("n", "i64", [3])
    t.add(["out"], "tile", ["x"], {"repeats": [2, 3]}, [("f32", [4, "3*seq"])])
    t.add(["ints"], "tile", ["n"], {"repeats": [2]}, [("i64", [6])])
    for s in (2, 3):
        x = rnd(rng, (2, s))
        n = np.array([1, -2, 3], dtype=np.int64)
        t.run([("x", "f32", x), ("n", "i64", n)], [("out", "f32", np.tile(x, (2, 3)), TOL_EXACT_F), ("ints", "i64", np.tile(n, 2), None)])
    return t


@case("trilu")
def _():
    rng = np.random.default_rng(72)
    t = FileTest("trilu")
    t.input("x", "f32", [2, 3, 4])
    t.input("b", "bool", [3, 3])
    t.add(["upper1"], "trilu", ["x"], {"k": 1, "upper": True}, [("f32", [2, 3, 4])])
    t.add(["lower"], "trilu", ["x"], {"upper": False}, [("f32", [2, 3, 4])])
    t.add(["lower_m1"], "trilu", ["x"], {"k": -1, "upper": False}, [("f32", [2, 3, 4])])
    t.add(["mask"], "trilu", ["b"], {"upper": False}, [("bool", [3, 3])])
    x = rnd(rng, (2, 3, 4))
    b = np.ones((3, 3), dtype=bool)
    t.run(
        [("x", "f32", x), ("b", "bool", b)],
        [
            ("upper1", "f32", np.triu(x, 1), TOL_EXACT_F),
            ("lower", "f32", np.tril(x, 0), TOL_EXACT_F),
            ("lower_m1", "f32", np.tril(x, -1), TOL_EXACT_F),
            ("mask", "bool", np.tril(b), None),
        ],
    )
    return t


@case("pad")
def _():
    rng = np.random.default_rng(73)
    t = FileTest("pad")
    t.input("x", "f32", [2, 3])
    t.input("s", "f32", ["seq", 2])
    t.input("n", "i64", [3])
    t.add(["mixed"], "pad", ["x"], {"pads": [1, -1, 0, 2], "value": 1.5}, [("f32", [3, 4])])
    t.add(["zeros"], "pad", ["s"], {"pads": [0, 1, 2, 0]}, [("f32", ["seq + 2", 3])])
    t.add(["ints"], "pad", ["n"], {"pads": [2, -1], "value": 9.0}, [("i64", [4])])
    for q in (1, 3):
        x, s = rnd(rng, (2, 3)), rnd(rng, (q, 2))
        n = np.array([4, 5, 6], dtype=np.int64)
        mixed = np.pad(x[:, 1:], ((1, 0), (0, 2)), constant_values=1.5)
        t.run(
            [("x", "f32", x), ("s", "f32", s), ("n", "i64", n)],
            [
                ("mixed", "f32", mixed, TOL_EXACT_F),
                ("zeros", "f32", np.pad(s, ((0, 2), (1, 0))), TOL_EXACT_F),
                ("ints", "i64", np.pad(n[:2], (2, 0), constant_values=9), None),
            ],
        )
    return t


# ----- neural-network blocks -----


def ref_rms_norm(x, w, eps):
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(ms + eps) * w


def ref_layer_norm(x, w, b, eps):
    mean = np.mean(x, axis=-1, keepdims=True)
    var = np.mean((x - mean) ** 2, axis=-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps) * w
    return y if b is None else y + b


@case("rms_norm")
def _():
    rng = np.random.default_rng(81)
    t = FileTest("rms_norm")
    t.input("x", "f32", ["seq", 8])
    t.input("w", "f32", [8])
    t.add(["out"], "rms_norm", ["x", "w"], {"eps": 1e-5}, [("f32", ["seq", 8])])
    for s in (3, 1):
        x, w = rnd(rng, (s, 8)), rnd(rng, (8,), 0.5, 1.5)
        t.run([("x", "f32", x), ("w", "f32", w)], [("out", "f32", f32(ref_rms_norm(d64(x), d64(w), 1e-5)), TOL_LOOSE)])
    return t


@case("layer_norm")
def _():
    rng = np.random.default_rng(82)
    t = FileTest("layer_norm")
    t.input("x", "f32", [2, "seq", 6])
    t.input("w", "f32", [6])
    t.input("b", "f32", [6])
    t.add(["biased"], "layer_norm", ["x", "w", "b"], {"eps": 1e-12}, [("f32", [2, "seq", 6])])
    t.add(["plain"], "layer_norm", ["x", "w"], {"eps": 0.001}, [("f32", [2, "seq", 6])])
    for s in (2, 3):
        x, w, b = rnd(rng, (2, s, 6), -3, 3), rnd(rng, (6,), 0.5, 1.5), rnd(rng, (6,))
        t.run(
            [("x", "f32", x), ("w", "f32", w), ("b", "f32", b)],
            [
                ("biased", "f32", f32(ref_layer_norm(d64(x), d64(w), d64(b), 1e-12)), TOL_LOOSE),
                ("plain", "f32", f32(ref_layer_norm(d64(x), d64(w), None, 0.001)), TOL_LOOSE),
            ],
        )
    return t


def ref_rope(x, pos, theta, style="neox", dims=None, scale=1.0):
    """Rotary embedding written out element by element."""
    b, h, s, d = x.shape
    dims = d if dims is None else dims
    half = dims // 2
    out = x.copy()
    for bi in range(b):
        for si in range(s):
            p = pos[bi if pos.shape[0] > 1 else 0, si] / scale
            for i in range(half):
                ang = p * theta ** (-2.0 * i / dims)
                c, sn = math.cos(ang), math.sin(ang)
                ia, ib = (i, i + half) if style == "neox" else (2 * i, 2 * i + 1)
                for hi in range(h):
                    a, bb = x[bi, hi, si, ia], x[bi, hi, si, ib]
                    out[bi, hi, si, ia] = a * c - bb * sn
                    out[bi, hi, si, ib] = a * sn + bb * c
    return out


@case("rope")
def _():
    rng = np.random.default_rng(83)
    t = FileTest("rope")
    t.input("x", "f32", [2, 2, "seq", 8])
    t.input("pos", "i64", [2, "seq"])
    t.input("pos1", "i64", [1, "seq"])
    sh = [("f32", [2, 2, "seq", 8])]
    t.add(["neox"], "rope", ["x", "pos"], {"theta": 10000.0}, sh)
    t.add(["inter"], "rope", ["x", "pos"], {"style": "interleaved", "theta": 500.0}, sh)
    t.add(["partial"], "rope", ["x", "pos"], {"dims": 4, "style": "neox", "theta": 10000.0}, sh)
    t.add(["scaled"], "rope", ["x", "pos1"], {"dims": 6, "scale": 4.0, "style": "interleaved", "theta": 100.0}, sh)
    for s in (3, 1):
        x = rnd(rng, (2, 2, s, 8))
        pos = rng.integers(0, 40, size=(2, s)).astype(np.int64)
        pos1 = rng.integers(0, 40, size=(1, s)).astype(np.int64)
        xd = d64(x)
        t.run(
            [("x", "f32", x), ("pos", "i64", pos), ("pos1", "i64", pos1)],
            [
                ("neox", "f32", f32(ref_rope(xd, pos, 10000.0)), TOL_LOOSE),
                ("inter", "f32", f32(ref_rope(xd, pos, 500.0, "interleaved")), TOL_LOOSE),
                ("partial", "f32", f32(ref_rope(xd, pos, 10000.0, "neox", 4)), TOL_LOOSE),
                ("scaled", "f32", f32(ref_rope(xd, pos1, 100.0, "interleaved", 6, 4.0)), TOL_LOOSE),
            ],
        )
    return t


def ref_attention(q, k, v, scale, causal=False, mask=None, window=0, softcap=None):
    """softmax(q kᵀ scale + mask) v with GQA, written with explicit loops per head.
    Query i sits at position p = i + t - s; `window` w > 0 hides keys j <= p - w;
    `softcap` c turns a score into c·tanh(score / c) before the mask is added."""
    b, h, s, _ = q.shape
    _, kvh, t, _ = k.shape
    dv = v.shape[3]
    group = h // kvh
    out = np.zeros((b, h, s, dv))
    full_mask = None if mask is None else np.broadcast_to(mask, (b, h, s, t))
    for bi in range(b):
        for hi in range(h):
            kv = hi // group
            for i in range(s):
                scores = []
                for j in range(t):
                    if causal and j > i + (t - s):
                        scores.append(-math.inf)
                        continue
                    if window and j <= i + (t - s) - window:
                        scores.append(-math.inf)
                        continue
                    sc = float(np.dot(q[bi, hi, i], k[bi, kv, j])) * scale
                    if softcap is not None:
                        sc = softcap * math.tanh(sc / softcap)
                    if full_mask is not None:
                        sc += float(full_mask[bi, hi, i, j])
                    scores.append(sc)
                m = max(scores) if scores else -math.inf
                if m == -math.inf:
                    continue
                e = [math.exp(x - m) for x in scores]
                tot = sum(e)
                for j in range(t):
                    out[bi, hi, i] += (e[j] / tot) * v[bi, kv, j]
    return out


@case("attention")
def _():
    rng = np.random.default_rng(84)
    t = FileTest("attention")
    # GQA: 4 query heads over 2 kv heads; 2 queries against 5 keys (causal offset 3).
    t.input("q", "f32", [1, 4, 2, 4])
    t.input("k", "f32", [1, 2, 5, 4])
    t.input("v", "f32", [1, 2, 5, 3])
    t.input("mask", "f32", [2, 5])
    t.input("q6", "f32", [1, 2, 6, 4])
    t.add(["causal"], "attention", ["q", "k", "v"], {"causal": True, "scale": 0.5}, [("f32", [1, 4, 2, 3])])
    t.add(["masked"], "attention", ["q", "k", "v", "mask"], {"scale": 0.5}, [("f32", [1, 4, 2, 3])])
    t.add(["both"], "attention", ["q", "k", "v", "mask"], {"causal": True, "scale": 0.25}, [("f32", [1, 4, 2, 3])])
    # More queries than keys: the first row sees no key and must be zeros.
    t.add(["more_q"], "attention", ["q6", "k", "v"], {"causal": True, "scale": 0.5}, [("f32", [1, 2, 6, 3])])
    # Sliding window (Mistral, Gemma 2/3 local layers) and logit soft-capping (Gemma 2).
    t.add(["window"], "attention", ["q6", "k", "v"], {"causal": True, "scale": 0.5, "window": 2}, [("f32", [1, 2, 6, 3])])
    t.add(["capped"], "attention", ["q", "k", "v", "mask"], {"causal": True, "scale": 0.5, "softcap": 0.7}, [("f32", [1, 4, 2, 3])])
    q, k, v = rnd(rng, (1, 4, 2, 4)), rnd(rng, (1, 2, 5, 4)), rnd(rng, (1, 2, 5, 3))
    mask = f32([[0.0, -10000.0, 0.0, -1.5, 0.0], [-10000.0, 0.0, -10000.0, 0.0, 2.0]])
    q6 = rnd(rng, (1, 2, 6, 4))
    qd, kd, vd, md = d64(q), d64(k), d64(v), d64(mask)
    t.run(
        [("q", "f32", q), ("k", "f32", k), ("v", "f32", v), ("mask", "f32", mask), ("q6", "f32", q6)],
        [
            ("causal", "f32", f32(ref_attention(qd, kd, vd, 0.5, causal=True)), TOL_LOOSE),
            ("masked", "f32", f32(ref_attention(qd, kd, vd, 0.5, mask=md)), TOL_LOOSE),
            ("both", "f32", f32(ref_attention(qd, kd, vd, 0.25, causal=True, mask=md)), TOL_LOOSE),
            ("more_q", "f32", f32(ref_attention(d64(q6), kd, vd, 0.5, causal=True)), TOL_LOOSE),
            ("window", "f32", f32(ref_attention(d64(q6), kd, vd, 0.5, causal=True, window=2)), TOL_LOOSE),
            ("capped", "f32", f32(ref_attention(qd, kd, vd, 0.5, causal=True, mask=md, softcap=0.7)), TOL_LOOSE),
        ],
    )
    return t


@case("flash_attention")
def _():
    rng = np.random.default_rng(86)
    t = FileTest("flash_attention")
    # GQA: 6 query heads over 2 kv heads; 3 queries against 11 keys, in key tiles of 4
    # (two full tiles and a partial one) and of 64 (one partial tile).
    t.input("q", "f32", [2, 6, 3, 8])
    t.input("k", "f32", [2, 2, 11, 8])
    t.input("v", "f32", [2, 2, 11, 5])
    t.input("mask", "f32", [3, 11])
    t.input("q13", "f32", [2, 2, 13, 8])
    t.add(["causal"], "flash_attention", ["q", "k", "v"], {"block_k": 4, "causal": True, "scale": 0.35}, [("f32", [2, 6, 3, 5])])
    t.add(["masked"], "flash_attention", ["q", "k", "v", "mask"], {"block_k": 4, "scale": 0.35}, [("f32", [2, 6, 3, 5])])
    t.add(["both"], "flash_attention", ["q", "k", "v", "mask"], {"block_k": 64, "causal": True, "scale": 0.25}, [("f32", [2, 6, 3, 5])])
    # More queries than keys: the first two rows see no key and must be zeros.
    t.add(["more_q"], "flash_attention", ["q13", "k", "v"], {"block_k": 3, "causal": True, "scale": 0.5}, [("f32", [2, 2, 13, 5])])
    # Sliding windows that start inside a tile, span tiles and hide every key of a
    # row (q13's early rows), with and without soft-capping and a mask.
    t.add(["window"], "flash_attention", ["q", "k", "v"], {"block_k": 4, "causal": True, "scale": 0.35, "window": 6}, [("f32", [2, 6, 3, 5])])
    t.add(["window_capped"], "flash_attention", ["q", "k", "v", "mask"], {"block_k": 3, "causal": True, "scale": 0.35, "softcap": 0.5, "window": 4}, [("f32", [2, 6, 3, 5])])
    t.add(["window_more_q"], "flash_attention", ["q13", "k", "v"], {"block_k": 2, "causal": True, "scale": 0.5, "window": 3}, [("f32", [2, 2, 13, 5])])
    t.add(["capped"], "flash_attention", ["q", "k", "v"], {"block_k": 64, "scale": 0.35, "softcap": 1.5}, [("f32", [2, 6, 3, 5])])
    q, k, v = rnd(rng, (2, 6, 3, 8)), rnd(rng, (2, 2, 11, 8)), rnd(rng, (2, 2, 11, 5))
    mask = np.zeros((3, 11), dtype=np.float32)
    mask[0, 1] = mask[1, 0] = mask[1, 6] = mask[2, 9] = -np.inf
    mask[0, 4:8] = -np.inf  # one whole tile of 4 masked for the first query
    mask[2, 3] = -1.5
    mask[1, 10] = 2.0
    q13 = rnd(rng, (2, 2, 13, 8))
    qd, kd, vd, md = d64(q), d64(k), d64(v), d64(mask)
    t.run(
        [("q", "f32", q), ("k", "f32", k), ("v", "f32", v), ("mask", "f32", f32(mask)), ("q13", "f32", q13)],
        [
            ("causal", "f32", f32(ref_attention(qd, kd, vd, 0.35, causal=True)), TOL_LOOSE),
            ("masked", "f32", f32(ref_attention(qd, kd, vd, 0.35, mask=md)), TOL_LOOSE),
            ("both", "f32", f32(ref_attention(qd, kd, vd, 0.25, causal=True, mask=md)), TOL_LOOSE),
            ("more_q", "f32", f32(ref_attention(d64(q13), kd, vd, 0.5, causal=True)), TOL_LOOSE),
            ("window", "f32", f32(ref_attention(qd, kd, vd, 0.35, causal=True, window=6)), TOL_LOOSE),
            ("window_capped", "f32", f32(ref_attention(qd, kd, vd, 0.35, causal=True, mask=md, window=4, softcap=0.5)), TOL_LOOSE),
            ("window_more_q", "f32", f32(ref_attention(d64(q13), kd, vd, 0.5, causal=True, window=3)), TOL_LOOSE),
            ("capped", "f32", f32(ref_attention(qd, kd, vd, 0.35, softcap=1.5)), TOL_LOOSE),
        ],
    )
    return t


@case("kv_append")
def _():
    rng = np.random.default_rng(85)
    t = FileTest("kv_append")
    t.input("k", "f32", [1, 2, "seq", 3])
    t.input("v", "f32", [1, 2, "seq", 3])
    t.input("q", "f32", [1, 4, "seq", 3])
    cache = [("f32", [1, 2, "past + seq", 3]), ("f32", [1, 2, "past + seq", 3])]
    t.add(["kc", "vc"], "kv_append", ["k", "v"], {"layer": 0}, cache)
    # A second layer with its own cache, fed the negated values.
    t.add(["nk"], "neg", ["k"], {}, [("f32", [1, 2, "seq", 3])], output=False)
    t.add(["kc1", "vc1"], "kv_append", ["nk", "v"], {"layer": 1}, cache)
    # The decode-style use: new queries against the whole cache, causally aligned.
    t.add(["att"], "attention", ["q", "kc", "vc"], {"causal": True, "scale": 0.5}, [("f32", [1, 4, "seq", 3])])
    ks, vs = [], []
    for s in (3, 1, 2):
        k, v, q = rnd(rng, (1, 2, s, 3)), rnd(rng, (1, 2, s, 3)), rnd(rng, (1, 4, s, 3))
        ks.append(k)
        vs.append(v)
        kc, vc = np.concatenate(ks, axis=2), np.concatenate(vs, axis=2)
        t.run(
            [("k", "f32", k), ("v", "f32", v), ("q", "f32", q)],
            [
                ("kc", "f32", kc, TOL_EXACT_F),
                ("vc", "f32", vc, TOL_EXACT_F),
                ("kc1", "f32", -kc, TOL_EXACT_F),
                ("vc1", "f32", vc, TOL_EXACT_F),
                ("att", "f32", f32(ref_attention(d64(q), d64(kc), d64(vc), 0.5, causal=True)), TOL_LOOSE),
            ],
        )
    return t


# ----- main -----


# ----- convolution, pooling, resize (written as plain loops over numpy arrays) -----


def ref_conv(x, w, b, strides, pads, dil, group):
    n, c = x.shape[:2]
    m, cg = w.shape[:2]
    ks = w.shape[2:]
    nsp = len(ks)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[d], pads[nsp + d]) for d in range(nsp)])
    eff = [(ks[d] - 1) * dil[d] + 1 for d in range(nsp)]
    out = [(xp.shape[2 + d] - eff[d]) // strides[d] + 1 for d in range(nsp)]
    y = np.zeros([n, m] + out)
    mg = m // group
    for idx in np.ndindex(*([n, m] + out)):
        bi, mi, o = idx[0], idx[1], idx[2:]
        g = mi // mg
        sl = tuple(slice(o[d] * strides[d], o[d] * strides[d] + eff[d], dil[d]) for d in range(nsp))
        patch = xp[(bi, slice(g * cg, (g + 1) * cg)) + sl]
        y[idx] = np.sum(patch * w[mi]) + (b[mi] if b is not None else 0.0)
    return y


def ref_conv_transpose(x, w, b, strides, pads, output_padding, group):
    n, c = x.shape[:2]
    cg = c // group
    mg = w.shape[1]
    ks = w.shape[2:]
    nsp = len(ks)
    full = [strides[d] * (x.shape[2 + d] - 1) + output_padding[d] + ks[d] for d in range(nsp)]
    y = np.zeros([n, mg * group] + full)
    for idx in np.ndindex(*x.shape):
        bi, ci, ip = idx[0], idx[1], idx[2:]
        g = ci // cg
        for mo in range(mg):
            for k in np.ndindex(*ks):
                o = tuple(ip[d] * strides[d] + k[d] for d in range(nsp))
                y[(bi, g * mg + mo) + o] += x[idx] * w[(ci, mo) + k]
    sl = tuple(slice(pads[d], full[d] - pads[nsp + d]) for d in range(nsp))
    y = y[(slice(None), slice(None)) + sl]
    if b is not None:
        y = y + b.reshape([1, -1] + [1] * nsp)
    return y


def ref_pool(x, kernel, strides, pads, kind, include_pad=False):
    nsp = len(kernel)
    out = [(x.shape[2 + d] + pads[d] + pads[nsp + d] - kernel[d]) // strides[d] + 1 for d in range(nsp)]
    y = np.zeros(list(x.shape[:2]) + out)
    for idx in np.ndindex(*y.shape):
        o = idx[2:]
        vals, npad = [], 0
        for k in np.ndindex(*kernel):
            p = [o[d] * strides[d] + k[d] - pads[d] for d in range(nsp)]
            if all(0 <= p[d] < x.shape[2 + d] for d in range(nsp)):
                vals.append(x[idx[:2] + tuple(p)])
            else:
                npad += 1
        if kind == "max":
            y[idx] = max(vals)
        else:
            y[idx] = sum(vals) / (len(vals) + (npad if include_pad else 0))
    return y


def ref_resize_linear_half_pixel(x, sizes):
    """Separable linear interpolation, half-pixel centres, edge-clamped."""
    y = x.astype(np.float64)
    for axis, out in enumerate(sizes):
        inw = y.shape[axis]
        if out == inw:
            continue
        scale = out / inw
        src = (np.arange(out) + 0.5) / scale - 0.5
        lo = np.floor(src).astype(int)
        frac = src - lo
        a = np.take(y, np.clip(lo, 0, inw - 1), axis=axis)
        b = np.take(y, np.clip(lo + 1, 0, inw - 1), axis=axis)
        shape = [1] * y.ndim
        shape[axis] = out
        frac = frac.reshape(shape)
        y = a * (1 - frac) + b * frac
    return y


def ref_resize_nearest_asymmetric_floor(x, scales):
    y = x
    for axis, s in enumerate(scales):
        out = int(y.shape[axis] * s)
        idx = np.minimum(np.floor(np.arange(out) / s).astype(int), y.shape[axis] - 1)
        y = np.take(y, idx, axis=axis)
    return y


@case("conv")
def _():
    rng = np.random.default_rng(81)
    t = FileTest("conv")
    t.input("x", "f32", ["n", 4, 5, 5])
    t.input("w", "f32", [6, 2, 3, 3])
    t.input("b", "f32", [6])
    t.input("v", "f32", [1, 2, 7])
    t.input("k", "f32", [3, 2, 2])
    a = {"group": 2, "strides": [2, 1], "pads": [1, 0, 1, 2]}
    t.add(["grouped"], "conv", ["x", "w", "b"], a, [("f32", ["n", 6, 3, 5])])
    t.add(["dilated"], "conv", ["v", "k"], {"dilations": [3]}, [("f32", [1, 3, 4])])
    for n in (1, 2):
        x, w, b = rnd(rng, (n, 4, 5, 5)), rnd(rng, (6, 2, 3, 3)), rnd(rng, (6,))
        v, k = rnd(rng, (1, 2, 7)), rnd(rng, (3, 2, 2))
        t.run(
            [("x", "f32", x), ("w", "f32", w), ("b", "f32", b), ("v", "f32", v), ("k", "f32", k)],
            [
                ("grouped", "f32", f32(ref_conv(d64(x), d64(w), d64(b), [2, 1], [1, 0, 1, 2], [1, 1], 2)), TOL_LOOSE),
                ("dilated", "f32", f32(ref_conv(d64(v), d64(k), None, [1], [0, 0], [3], 1)), TOL_LOOSE),
            ],
        )
    return t


@case("conv_transpose")
def _():
    rng = np.random.default_rng(82)
    t = FileTest("conv_transpose")
    t.input("x", "f32", [1, 4, 3, 3])
    t.input("w", "f32", [4, 1, 2, 3])
    t.input("b", "f32", [2])
    a = {"group": 2, "strides": [2, 1], "pads": [1, 0, 0, 1], "output_padding": [1, 0]}
    t.add(["y"], "conv_transpose", ["x", "w", "b"], a, [("f32", [1, 2, 6, 4])])
    t.add(["plain"], "conv_transpose", ["x", "w"], {"group": 2}, [("f32", [1, 2, 4, 5])])
    for _ in range(2):
        x, w, b = rnd(rng, (1, 4, 3, 3)), rnd(rng, (4, 1, 2, 3)), rnd(rng, (2,))
        t.run(
            [("x", "f32", x), ("w", "f32", w), ("b", "f32", b)],
            [
                ("y", "f32", f32(ref_conv_transpose(d64(x), d64(w), d64(b), [2, 1], [1, 0, 0, 1], [1, 0], 2)), TOL_LOOSE),
                ("plain", "f32", f32(ref_conv_transpose(d64(x), d64(w), None, [1, 1], [0, 0, 0, 0], [0, 0], 2)), TOL_LOOSE),
            ],
        )
    return t


@case("max_pool")
def _():
    rng = np.random.default_rng(83)
    t = FileTest("max_pool")
    t.input("x", "f32", ["n", 2, 5, 4])
    t.input("i", "i64", [1, 1, 6])
    a = {"kernel": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1]}
    t.add(["y"], "max_pool", ["x"], a, [("f32", ["n", 2, 3, 2])])
    t.add(["iy"], "max_pool", ["i"], {"kernel": [2], "strides": [2]}, [("i64", [1, 1, 3])])
    for n in (1, 2):
        x = rnd(rng, (n, 2, 5, 4))
        i = rng.integers(-50, 50, size=(1, 1, 6)).astype(np.int64)
        t.run(
            [("x", "f32", x), ("i", "i64", i)],
            [
                ("y", "f32", f32(ref_pool(d64(x), [3, 2], [2, 2], [1, 0, 1, 1], "max")), TOL_EXACT_F),
                ("iy", "i64", ref_pool(i, [2], [2], [0, 0], "max").astype(np.int64), None),
            ],
        )
    return t


@case("avg_pool")
def _():
    rng = np.random.default_rng(84)
    t = FileTest("avg_pool")
    t.input("x", "f32", [1, 2, 5, 4])
    a = {"kernel": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1]}
    t.add(["excl"], "avg_pool", ["x"], a, [("f32", [1, 2, 3, 2])])
    t.add(["incl"], "avg_pool", ["x"], dict(a, count_include_pad=True), [("f32", [1, 2, 3, 2])])
    for _ in range(2):
        x = rnd(rng, (1, 2, 5, 4))
        t.run(
            [("x", "f32", x)],
            [
                ("excl", "f32", f32(ref_pool(d64(x), [3, 2], [2, 2], [1, 0, 1, 1], "avg")), TOL),
                ("incl", "f32", f32(ref_pool(d64(x), [3, 2], [2, 2], [1, 0, 1, 1], "avg", True)), TOL),
            ],
        )
    return t


@case("resize")
def _():
    rng = np.random.default_rng(85)
    t = FileTest("resize")
    t.input("x", "f32", [1, 1, 3, 4])
    t.input("s", "f32", ["n", 2, 3])
    lin = {"sizes": Shape([1, 1, 5, 2]), "scales": [1.0, 1.0, 5 / 3, 0.5], "mode": "linear"}
    t.add(["linear"], "resize", ["x"], lin, [("f32", [1, 1, 5, 2])])
    near = {
        "sizes": Shape(["n", 2, 7]),
        "scales": [1.0, 1.0, 2.5],
        "coordinate_transformation_mode": "asymmetric",
        "nearest_mode": "floor",
    }
    t.add(["nearest"], "resize", ["s"], near, [("f32", ["n", 2, 7])])
    for n in (1, 3):
        x, sv = rnd(rng, (1, 1, 3, 4)), rnd(rng, (n, 2, 3))
        t.run(
            [("x", "f32", x), ("s", "f32", sv)],
            [
                ("linear", "f32", f32(ref_resize_linear_half_pixel(d64(x), [1, 1, 5, 2])), TOL),
                ("nearest", "f32", ref_resize_nearest_asymmetric_floor(sv, [1, 1, 2.5]), TOL_EXACT_F),
            ],
        )
    return t


@case("dims")
def _():
    rng = np.random.default_rng(86)
    t = FileTest("dims")
    t.input("x", "f32", ["batch", "seq"])
    t.add(["d"], "dims", [], {"value": Shape(["batch", "seq", "2*seq + 1", "batch*seq", 7])}, [("i64", [5])])
    for b, q in ((1, 3), (2, 5)):
        x = rnd(rng, (b, q))
        t.run([("x", "f32", x)], [("d", "i64", np.array([b, q, 2 * q + 1, b * q, 7], dtype=np.int64), None)])
    return t


CASES["atan"] = make_unary("atan", np.arctan, -4.0, 4.0)


def make_bitwise(op, fn):
    def build():
        rng = np.random.default_rng(zlib.crc32(op.encode()))
        t = FileTest(op)
        t.input("a", "i64", [2, 3])
        t.input("b", "i64", [3])
        t.input("p", "u8", [4])
        t.input("q", "u8", [4])
        t.add(["out"], op, ["a", "b"], {}, [("i64", [2, 3])])
        t.add(["bytes"], op, ["p", "q"], {}, [("u8", [4])])
        for _ in range(2):
            a = rng.integers(-1000, 1000, size=(2, 3)).astype(np.int64)
            b = rng.integers(-1000, 1000, size=3).astype(np.int64)
            p = rng.integers(0, 256, size=4).astype(np.uint8)
            q = rng.integers(0, 256, size=4).astype(np.uint8)
            t.run(
                [("a", "i64", a), ("b", "i64", b), ("p", "u8", p), ("q", "u8", q)],
                [("out", "i64", fn(a, b), None), ("bytes", "u8", fn(p, q), None)],
            )
        return t

    return build


CASES["bitwise_and"] = make_bitwise("bitwise_and", np.bitwise_and)
CASES["bitwise_or"] = make_bitwise("bitwise_or", np.bitwise_or)
CASES["bitwise_xor"] = make_bitwise("bitwise_xor", np.bitwise_xor)


@case("bitwise_not")
def _():
    rng = np.random.default_rng(91)
    t = FileTest("bitwise_not")
    t.input("a", "i64", [5])
    t.input("p", "u8", [5])
    t.add(["out"], "bitwise_not", ["a"], {}, [("i64", [5])])
    t.add(["bytes"], "bitwise_not", ["p"], {}, [("u8", [5])])
    for _ in range(2):
        a = rng.integers(-1000, 1000, size=5).astype(np.int64)
        p = rng.integers(0, 256, size=5).astype(np.uint8)
        t.run([("a", "i64", a), ("p", "u8", p)], [("out", "i64", np.invert(a), None), ("bytes", "u8", np.invert(p), None)])
    return t


@case("bit_shift")
def _():
    rng = np.random.default_rng(92)
    t = FileTest("bit_shift")
    t.input("p", "u8", [5])
    t.input("s", "u8", [5])
    t.input("a", "i64", [4])
    t.input("n", "i64", [4])
    t.add(["left"], "bit_shift", ["p", "s"], {"direction": "left"}, [("u8", [5])])
    t.add(["right"], "bit_shift", ["p", "s"], {"direction": "right"}, [("u8", [5])])
    t.add(["arith"], "bit_shift", ["a", "n"], {"direction": "right"}, [("i64", [4])])
    for _ in range(2):
        p = rng.integers(0, 256, size=5).astype(np.uint8)
        sh = rng.integers(0, 8, size=5).astype(np.uint8)
        a = rng.integers(-5000, 5000, size=4).astype(np.int64)
        n = rng.integers(0, 12, size=4).astype(np.int64)
        t.run(
            [("p", "u8", p), ("s", "u8", sh), ("a", "i64", a), ("n", "i64", n)],
            [
                ("left", "u8", np.left_shift(p, sh), None),
                ("right", "u8", np.right_shift(p, sh), None),
                ("arith", "i64", np.right_shift(a, n), None),
            ],
        )
    return t


@case("cumprod")
def _():
    rng = np.random.default_rng(93)
    t = FileTest("cumprod")
    t.input("x", "f32", [2, 4])
    t.input("n", "i64", [3, 2])
    t.add(["plain"], "cumprod", ["x"], {"axis": 1}, [("f32", [2, 4])])
    t.add(["both"], "cumprod", ["x"], {"axis": -1, "exclusive": True, "reverse": True}, [("f32", [2, 4])])
    t.add(["ints"], "cumprod", ["n"], {"axis": 0}, [("i64", [3, 2])])
    for _ in range(2):
        x = rnd(rng, (2, 4))
        n = rng.integers(-5, 6, size=(3, 2)).astype(np.int64)
        xd = d64(x)
        rev = np.flip(np.cumprod(np.flip(xd, 1), axis=1), 1)
        both = np.concatenate([rev[:, 1:], np.ones((2, 1))], axis=1)
        t.run(
            [("x", "f32", x), ("n", "i64", n)],
            [("plain", "f32", f32(np.cumprod(xd, axis=1)), TOL), ("both", "f32", f32(both), TOL), ("ints", "i64", np.cumprod(n, axis=0), None)],
        )
    return t


@case("scatter_elements")
def _():
    rng = np.random.default_rng(94)
    t = FileTest("scatter_elements")
    t.input("d", "f32", [3, 4])
    t.input("i", "i64", [2, 4])
    t.input("u", "f32", [2, 4])
    t.add(["set"], "scatter_elements", ["d", "i", "u"], {"axis": 0}, [("f32", [3, 4])])
    t.add(["add"], "scatter_elements", ["d", "i", "u"], {"axis": 0, "reduction": "add"}, [("f32", [3, 4])])
    for _ in range(2):
        d, u = rnd(rng, (3, 4)), rnd(rng, (2, 4))
        # Distinct rows per column for "set" (its order on duplicates is unspecified).
        i = np.stack([rng.permutation(3)[:2] for _ in range(4)], axis=1).astype(np.int64)
        i[1, 0] -= 3  # a negative index
        setv, addv = d64(d).copy(), d64(d).copy()
        for r in range(2):
            for c in range(4):
                setv[i[r, c], c] = u[r, c]
                addv[i[r, c], c] += u[r, c]
        t.run([("d", "f32", d), ("i", "i64", i), ("u", "f32", u)], [("set", "f32", f32(setv), TOL), ("add", "f32", f32(addv), TOL)])
    return t


@case("scatter_nd")
def _():
    rng = np.random.default_rng(95)
    t = FileTest("scatter_nd")
    t.input("d", "f32", [4, 3])
    t.input("i", "i64", [2, 1])
    t.input("u", "f32", [2, 3])
    t.input("e", "i64", [3, 2])
    t.input("v", "f32", [3])
    t.add(["rows"], "scatter_nd", ["d", "i", "u"], {"reduction": "mul"}, [("f32", [4, 3])])
    t.add(["elems"], "scatter_nd", ["d", "e", "v"], {}, [("f32", [4, 3])])
    for _ in range(2):
        d, u, v = rnd(rng, (4, 3)), rnd(rng, (2, 3)), rnd(rng, (3,))
        i = rng.permutation(4)[:2].reshape(2, 1).astype(np.int64)
        cells = rng.permutation(12)[:3]
        e = np.stack([cells // 3, cells % 3], axis=1).astype(np.int64)
        rows, elems = d64(d).copy(), d64(d).copy()
        for k in range(2):
            rows[i[k, 0]] *= u[k]
        for k in range(3):
            elems[e[k, 0], e[k, 1]] = v[k]
        t.run(
            [("d", "f32", d), ("i", "i64", i), ("u", "f32", u), ("e", "i64", e), ("v", "f32", v)],
            [("rows", "f32", f32(rows), TOL), ("elems", "f32", f32(elems), TOL_EXACT_F)],
        )
    return t


@case("gather_nd")
def _():
    rng = np.random.default_rng(96)
    t = FileTest("gather_nd")
    t.input("d", "f32", [2, 3, 4])
    t.input("i", "i64", [5, 2])
    t.input("b", "i64", [2, 1])
    t.add(["pairs"], "gather_nd", ["d", "i"], {}, [("f32", [5, 4])])
    t.add(["batched"], "gather_nd", ["d", "b"], {"batch_dims": 1}, [("f32", [2, 4])])
    for _ in range(2):
        d = rnd(rng, (2, 3, 4))
        i = np.stack([rng.integers(-2, 2, size=5), rng.integers(-3, 3, size=5)], axis=1).astype(np.int64)
        b = rng.integers(0, 3, size=(2, 1)).astype(np.int64)
        pairs = np.stack([d[i[k, 0], i[k, 1]] for k in range(5)])
        batched = np.stack([d[n, b[n, 0]] for n in range(2)])
        t.run([("d", "f32", d), ("i", "i64", i), ("b", "i64", b)], [("pairs", "f32", pairs, TOL_EXACT_F), ("batched", "f32", batched, TOL_EXACT_F)])
    return t


@case("top_k")
def _():
    rng = np.random.default_rng(97)
    t = FileTest("top_k")
    t.input("x", "f32", [3, 5])
    t.add(["v", "i"], "top_k", ["x"], {"k": 2}, [("f32", [3, 2]), ("i64", [3, 2])])
    t.add(["sv", "si"], "top_k", ["x"], {"k": 3, "axis": 0, "largest": False}, [("f32", [3, 5]), ("i64", [3, 5])])
    for _ in range(2):
        x = f32(rng.integers(-3, 4, size=(3, 5)))  # small integers: ties
        # Stable sorts: ties keep the lower index first.
        big = np.argsort(-x, axis=1, kind="stable")[:, :2]
        small = np.argsort(x, axis=0, kind="stable")[:3, :]
        t.run(
            [("x", "f32", x)],
            [
                ("v", "f32", np.take_along_axis(x, big, 1), TOL_EXACT_F),
                ("i", "i64", big.astype(np.int64), None),
                ("sv", "f32", np.take_along_axis(x, small, 0), TOL_EXACT_F),
                ("si", "i64", small.astype(np.int64), None),
            ],
        )
    return t


def table_ops():
    src = open(os.path.join(ROOT, "ir", "src", "ops", "mod.rs")).read()
    return re.findall(r'^\s+[A-Z]\w* = "([a-z_0-9]+)",', src, flags=re.M)


def main():
    ops = table_ops()
    missing = [o for o in ops if o not in CASES]
    extra = [o for o in CASES if o not in ops]
    if missing or extra:
        sys.exit(f"op coverage mismatch: missing {missing}, not in the table {extra}")
    os.makedirs(OUT_DIR, exist_ok=True)
    for op in ops:
        t = CASES[op]()
        with open(os.path.join(OUT_DIR, f"{op}.llmc"), "w") as f:
            f.write(t.text())
    print(f"wrote {len(ops)} files to {os.path.relpath(OUT_DIR, ROOT)}")


if __name__ == "__main__":
    main()
