#!/usr/bin/env python3
"""Tiny random-weight ONNX exports of ten architectures, each in several exporter
styles, with onnxruntime's outputs as the reference.

Users hand llmc ONNX files from whichever exporter they had: the legacy TorchScript
exporter (`torch.onnx.export(dynamo=False)`, what Optimum drives) with eager or SDPA
attention, or the dynamo exporter (`dynamo=True`, torch's default now) at its default
opset or at opset 23, where SDPA becomes the native `Attention` op and RMSNorm may
become `RMSNormalization`. Each writes a differently shaped graph for the same model
(masks via Trilu/Where/GatherND or not, IsNaN guards, RotaryEmbedding or Sin/Cos
arithmetic, ...). Real checkpoints in every style would be gigabytes; these are a few
hundred KB each (hidden 64, 2 layers, 4 heads of 16, 2 KV heads where the architecture
has GQA, vocab 256), so `llmc exec` can be checked against onnxruntime on every
(architecture, exporter style) pair without Python and without a model hub.

Writes, under $LLMC_ONNX_TINY (default .cache/onnx-tiny at the repo root), one folder
per case `<arch>-<style>` (decoders also `<arch>-<style>-past`, and the styles
`legacy-sdpa-nopos` / `dynamo-nopos`: exported without a `position_ids` input, the
model computing its positions from the cache length):

  model.onnx            the export, weights inline
  inputs/<NAME>.npy     the sample inputs, one per graph input
  ort/<NAME>.npy        onnxruntime's outputs (graph optimizations off), one per output
  torch/<NAME>.npy      PyTorch's outputs on the same inputs (a check of the export)
  case.json             arch, style, past, kind, opset, layers, input/output names,
                        max |ort - torch|, versions, sliding_window, softcap, the op
                        histogram and the number of `Attention` nodes

When the export itself fails, case.json holds "error" (one line) and there is no
model, so a reader can list what could not be exported and why; when the export
succeeds but onnxruntime cannot run it, "error" and "stage": "ort" with the model kept.

Architectures (transformers classes, random weights from a seeded generator, the
same weights and inputs in every style of one architecture): gpt2, llama (GQA),
qwen2 (q/k/v biases), mistral (sliding window 4), phi3 (fused qkv), gemma, gemma2
(attention and final logit soft-capping, sliding window 4; SDPA drops the attention
soft-capping, see "attn_softcap_in_graph"), gemma3 (text only, sliding window 4,
sliding and full layers), bert, distilbert.

Styles: legacy-eager and legacy-sdpa (dynamo=False, opset 17, the attention
implementation named), dynamo (dynamo=True at its default opset, SDPA), and
dynamo-opset23 (dynamo=True, opset 23, SDPA).

Samples: decoders without a cache take 8 tokens (input_ids, attention_mask of ones,
position_ids 0..7 -> logits); with a cache (`-past`, Optimum's naming) the last 3 of
those 8 after the first 5 cached: input_ids [1, 3], attention_mask [1, 8],
position_ids 5..7, past_key_values.N.key/value [1, kv heads, 5, 16] (what torch
computes for the 5 tokens) -> logits, present.N.key/value [1, kv heads, 8, 16]. The
cache is full-length in every layer (sliding-window layers mask, they do not drop).
So a -past case's logits equal the last 3 rows of the same style's no-cache logits.
Encoders take a batch of 2 rows of 8, the second padded after 5 (input_ids,
attention_mask, bert also token_type_ids -> last_hidden_state).

Usage (the optimum venv, with onnxscript for the dynamo exporter; scripts/onnx-exports
--tiny sets it up):
  python scripts/reference/tiny_onnx.py [--only PATTERN ...] [--force] [--list]
  python scripts/reference/tiny_onnx.py --check-llmc target/release/llmc [--engine cpu]
--only keeps the cases whose name contains any PATTERN; cases with a case.json are
skipped unless --force. The second form runs `llmc exec` on every exported case and
prints max abs / rel errors against onnxruntime.
"""

import argparse
import collections
import contextlib
import inspect
import json
import re
import os
import sys
import time
import traceback
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from onnx_exports import check_sample, run_ort, save_npys  # noqa: E402

LEGACY_OPSET = 17
HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 16
FFN = 128
VOCAB = 256
MAX_POS = 128
WINDOW = 4
SEQ = 8  # tokens of the no-cache sample
CACHED = 5  # of which cached in the -past sample; the other 3 are new

STYLES = ["legacy-eager", "legacy-sdpa", "dynamo", "dynamo-opset23"]
# Decoders also without a `position_ids` input (with and without past).
NOPOS_STYLES = ["legacy-sdpa-nopos", "dynamo-nopos"]
ENCODERS = {"bert", "distilbert"}


# --real: the same exporter styles applied to a real model (SmolLM2-135M-Instruct from
# $LLMC_MODELS/SmolLM2-135M-Instruct-hf), written to $LLMC_ONNX_EXPORTS (default
# .cache/onnx-exports) as smollm2-<style>[-past], for the end-to-end LLM tests
# (src/tests/onnx_llm.rs: the build generates the HF folder's greedy text).
REAL = {"smollm2": "SmolLM2-135M-Instruct-hf"}
REAL_STYLES = ["dynamo", "dynamo-opset23", "dynamo-nopos"]


def out_dir() -> Path:
    return Path(os.environ.get("LLMC_ONNX_TINY", ROOT / ".cache" / "onnx-tiny"))


def real_dir() -> Path:
    return Path(os.environ.get("LLMC_ONNX_EXPORTS", ROOT / ".cache" / "onnx-exports"))


def seed_of(arch: str) -> int:
    return ARCHS.index(arch) if arch in ARCHS else len(ARCHS) + list(REAL).index(arch)


def build(arch: str, attn: str):
    """The tiny model of `arch` with attention implementation `attn`, weights not yet
    randomized."""
    import transformers as tf

    dec = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POS,
        attn_implementation=attn,
    )
    if arch == "gpt2":
        cfg = tf.GPT2Config(
            vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN,
            n_positions=MAX_POS, activation_function="gelu_new", attn_implementation=attn,
        )
        return tf.GPT2LMHeadModel(cfg)
    if arch == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**dec, tie_word_embeddings=False))
    if arch == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**dec, tie_word_embeddings=True))
    if arch == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(**dec, sliding_window=WINDOW))
    if arch == "phi3":
        dec.pop("head_dim")
        # Phi3's default pad/eos ids (32000) are outside the tiny vocabulary.
        return tf.Phi3ForCausalLM(tf.Phi3Config(**dec, pad_token_id=0, eos_token_id=1, bos_token_id=2))
    if arch == "gemma":
        return tf.GemmaForCausalLM(tf.GemmaConfig(**dec))
    if arch == "gemma2":
        return tf.Gemma2ForCausalLM(
            tf.Gemma2Config(
                **dec, sliding_window=WINDOW, attn_logit_softcapping=50.0,
                final_logit_softcapping=30.0, query_pre_attn_scalar=HEAD_DIM,
            )
        )
    if arch == "gemma3":
        return tf.Gemma3ForCausalLM(
            tf.Gemma3TextConfig(
                **dec, sliding_window=WINDOW, query_pre_attn_scalar=HEAD_DIM,
                layer_types=["sliding_attention", "full_attention"],
            )
        )
    if arch == "bert":
        return tf.BertModel(
            tf.BertConfig(
                vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=MAX_POS,
                type_vocab_size=2, hidden_act="gelu", attn_implementation=attn,
            ),
            add_pooling_layer=False,
        )
    if arch == "distilbert":
        return tf.DistilBertModel(
            tf.DistilBertConfig(
                vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN,
                max_position_embeddings=MAX_POS, attn_implementation=attn,
            )
        )
    raise ValueError(arch)


ARCHS = ["gpt2", "llama", "qwen2", "mistral", "phi3", "gemma", "gemma2", "gemma3", "bert", "distilbert"]


def randomize(model, gen) -> None:
    """As tiny_models.py's: 1-D weights (norms) 1 + 0.2 N(0,1), 1-D biases 0.2 N(0,1),
    so a missing norm weight or bias shows; matrices N(0, 0.15^2) (hidden 64: scores
    and activations stay in a useful range through 2 layers)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))


def make_model(arch: str, attn: str):
    import torch

    if arch in REAL:
        import transformers as tf

        folder = Path(os.environ.get("LLMC_MODELS", ROOT / ".cache" / "models")) / REAL[arch]
        model = tf.AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attn, torch_dtype=torch.float32)
        return model.eval()
    model = build(arch, attn)
    # Per architecture seed: every style of one architecture has the same weights.
    randomize(model, torch.Generator().manual_seed(1000 + seed_of(arch)))
    return model.float().eval()


# The current case exports without `position_ids` (styles ending in `-nopos`: what
# `torch.onnx.export(model, (ids, mask))` gives; the model computes its positions).
_NOPOS = False


def takes_position_ids(model) -> bool:
    return not _NOPOS and "position_ids" in inspect.signature(model.forward).parameters


class NoPast:
    """forward(input_ids, attention_mask[, position_ids]) -> logits, no cache."""

    @staticmethod
    def make(model, with_pos: bool):
        import torch

        class W(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            if with_pos:

                def forward(self, input_ids, attention_mask, position_ids):
                    return self.m(
                        input_ids=input_ids, attention_mask=attention_mask,
                        position_ids=position_ids, use_cache=False,
                    ).logits

            else:

                def forward(self, input_ids, attention_mask):
                    return self.m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

        return W(model).eval()


def with_past(model, with_pos: bool, n_layers: int):
    """forward(input_ids, attention_mask[, position_ids], *past) -> (logits, *present),
    past/present as Optimum names them: key, value per layer. The cache is a
    DynamicCache of plain (full-length) layers: made without the config, so sliding
    window layers keep every position and the window is in the mask."""
    import torch
    from transformers import DynamicCache

    def run(m, input_ids, attention_mask, position_ids, past):
        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(n_layers)])
        kw = dict(position_ids=position_ids) if with_pos else {}
        o = m(
            input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
            use_cache=True, **kw,
        )
        present = []
        for layer in o.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (o.logits, *present)

    class W(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        if with_pos:

            def forward(self, input_ids, attention_mask, position_ids, *past):
                return run(self.m, input_ids, attention_mask, position_ids, past)

        else:

            def forward(self, input_ids, attention_mask, *past):
                return run(self.m, input_ids, attention_mask, None, past)

    return W(model).eval()


class Encoder:
    @staticmethod
    def make(model, with_types: bool):
        import torch

        class W(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            if with_types:

                def forward(self, input_ids, attention_mask, token_type_ids):
                    return self.m(
                        input_ids=input_ids, attention_mask=attention_mask,
                        token_type_ids=token_type_ids,
                    ).last_hidden_state

            else:

                def forward(self, input_ids, attention_mask):
                    return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        return W(model).eval()


# (tokens, of which cached) of the two samples; encoders: (rows, tokens, real tokens
# of the last row). The second sample has other sizes than the export's, so a graph
# specialised to the first one's shows (and its 12 tokens cross the window of 4 more).
DECODER_SAMPLES = [(SEQ, CACHED), (12, 9)]
ENCODER_SAMPLES = [(2, SEQ, 5), (3, 11, 4)]


def decoder_ids(arch: str, which: int):
    """The token ids of a decoder's sample `which`: all of them (the -past case caches
    the first `cached` and feeds the rest)."""
    import torch

    gen = torch.Generator().manual_seed(2000 + 10 * seed_of(arch) + which)
    seq, _ = DECODER_SAMPLES[which]
    return torch.randint(3, VOCAB, (1, seq), generator=gen)


def sample_inputs(arch: str, model, past: bool, which: int) -> dict:
    """Sample `which` (0 or 1) of a case, in the graph's input order: see the module
    docstring; the cache is torch's for the cached tokens."""
    import torch
    from transformers import DynamicCache

    gen = torch.Generator().manual_seed(2000 + 10 * seed_of(arch) + which)
    if arch in ENCODERS:
        rows, seq, last = ENCODER_SAMPLES[which]
        ids = torch.randint(3, VOCAB, (rows, seq), generator=gen)
        mask = torch.ones_like(ids)
        mask[-1, last:] = 0
        ids = ids * mask  # pad id 0
        inputs = {"input_ids": ids, "attention_mask": mask}
        if arch == "bert":
            types = torch.zeros_like(ids)
            types[0, seq // 2 :] = 1
            inputs["token_type_ids"] = types
        return inputs
    ids = decoder_ids(arch, which)
    seq, cached = DECODER_SAMPLES[which]
    with_pos = takes_position_ids(model)
    if not past:
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if with_pos:
            inputs["position_ids"] = torch.arange(seq)[None, :]
        return inputs
    with torch.no_grad():
        # An explicit cache without the config: full-length layers, sliding or not.
        pre = model(input_ids=ids[:, :cached], past_key_values=DynamicCache(), use_cache=True)
    inputs = {"input_ids": ids[:, cached:], "attention_mask": torch.ones((1, seq), dtype=torch.int64)}
    if with_pos:
        inputs["position_ids"] = torch.arange(cached, seq)[None, :]
    for i, layer in enumerate(pre.past_key_values.layers):
        inputs[f"past_key_values.{i}.key"] = layer.keys.clone()
        inputs[f"past_key_values.{i}.value"] = layer.values.clone()
    return inputs


def prepare(arch: str, style: str, past: bool):
    """(wrapper module, output names, legacy dynamic axes {name: {dim: label}}, model)."""
    attn = "eager" if style == "legacy-eager" else "sdpa"
    model = make_model(arch, attn)
    if arch in ENCODERS:
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if arch == "bert" else [])
        axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
        return Encoder.make(model, arch == "bert"), ["last_hidden_state"], axes, model

    with_pos = takes_position_ids(model)
    if not past:
        names = ["input_ids", "attention_mask"] + (["position_ids"] if with_pos else [])
        axes = {n: {1: "sequence"} for n in [*names, "logits"]}
        return NoPast.make(model, with_pos), ["logits"], axes, model

    n_layers = model.config.num_hidden_layers
    outputs = ["logits"]
    axes = {"input_ids": {1: "sequence"}, "attention_mask": {1: "total_sequence"}, "logits": {1: "sequence"}}
    if with_pos:
        axes["position_ids"] = {1: "sequence"}
    for i in range(n_layers):
        axes[f"past_key_values.{i}.key"] = {2: "past_sequence"}
        axes[f"past_key_values.{i}.value"] = {2: "past_sequence"}
        outputs += [f"present.{i}.key", f"present.{i}.value"]
    for n in outputs[1:]:
        axes[n] = {2: "total_sequence"}
    return with_past(model, with_pos, n_layers), outputs, axes, model


@contextlib.contextmanager
def legacy_patches():
    """What Optimum's ModelPatcher does around the TorchScript exporter for
    transformers >= 4.56 (optimum/exporters/onnx/model_patcher.py), without which
    tracing fails: the masks are built by broadcasting instead of torch.vmap (which
    TorchScript cannot trace: "IndexError: unordered_map::at"), packed-sequence
    detection (torch.diff) is off, and a cache layer's first update stores the states
    instead of concatenating them to an empty constant. The exported graphs are then
    what a user gets from optimum-cli."""
    import torch
    import transformers.masking_utils as mu
    from transformers.cache_utils import DynamicLayer

    def sdpa_mask_without_vmap(
        batch_size, cache_position, kv_length, kv_offset=0, mask_function=None,
        attention_mask=None, local_size=None, allow_is_causal_skip=True, **kwargs,
    ):
        if mask_function is None:
            mask_function = mu.causal_mask_function
        q_length = cache_position.shape[0]
        padding_mask = mu.prepare_padding_mask(attention_mask, kv_length, kv_offset, _slice=False)
        if allow_is_causal_skip and mu._ignore_causal_mask_sdpa(
            padding_mask, q_length, kv_length, kv_offset, local_size
        ):
            return None
        if padding_mask is not None:
            mask_function = mu.and_masks(mask_function, mu.padding_mask_function(padding_mask))
        dev = cache_position.device
        q = cache_position[None, None, :, None]
        h = torch.arange(1, dtype=torch.long, device=dev)[None, :, None, None]
        b = torch.arange(batch_size, dtype=torch.long, device=dev)[:, None, None, None]
        kv = torch.arange(kv_length, dtype=torch.long, device=dev)[None, None, None, :] + kv_offset
        return mask_function(b, h, q, kv).expand(batch_size, -1, q_length, kv_length)

    def eager_mask_without_vmap(*args, **kwargs):
        kwargs.pop("allow_is_causal_skip", None)
        dtype = kwargs.get("dtype", torch.float32)
        mask = sdpa_mask_without_vmap(*args, allow_is_causal_skip=False, **kwargs)
        return torch.where(mask, torch.tensor(0.0, device=mask.device, dtype=dtype), torch.finfo(dtype).min)

    def layer_update(self, key_states, value_states, cache_kwargs=None):
        if self.keys is None:
            self.keys, self.values = key_states, value_states
            self.device, self.dtype = key_states.device, key_states.dtype
            self.is_initialized = True
        else:
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
        return self.keys, self.values

    fns = mu.ALL_MASK_ATTENTION_FUNCTIONS
    saved = (fns["sdpa"], fns["eager"], mu.find_packed_sequence_indices, DynamicLayer.update)
    fns.register("sdpa", sdpa_mask_without_vmap)
    fns.register("eager", eager_mask_without_vmap)
    mu.find_packed_sequence_indices = lambda position_ids: torch.zeros_like(position_ids)
    DynamicLayer.update = layer_update
    try:
        yield
    finally:
        fns.register("sdpa", saved[0])
        fns.register("eager", saved[1])
        mu.find_packed_sequence_indices = saved[2]
        DynamicLayer.update = saved[3]


def export(wrapped, inputs: dict, outputs: list, axes: dict, style: str, path: Path) -> None:
    import torch

    args = tuple(inputs.values())
    names = list(inputs)
    if style.startswith("legacy"):
        with legacy_patches():
            torch.onnx.export(
                wrapped, args, str(path), input_names=names, output_names=outputs,
                dynamic_axes=axes, opset_version=LEGACY_OPSET, dynamo=False, do_constant_folding=True,
            )
        return
    dyn = torch.export.Dim.DYNAMIC
    # One entry per forward parameter, the *past ones as one tuple: the axes that the
    # legacy export makes dynamic.
    shapes = [{d: dyn for d in axes[n]} for n in names]
    n_past = sum(n.startswith("past_key_values.") for n in names)
    if n_past:
        shapes = [*shapes[: len(names) - n_past], tuple(shapes[len(names) - n_past :])]
    kw = {"opset_version": 23} if style == "dynamo-opset23" else {}
    torch.onnx.export(
        wrapped, args, str(path), input_names=names, output_names=outputs,
        dynamic_shapes=tuple(shapes), dynamo=True, external_data=False, **kw,
    )


def op_histogram(graph) -> collections.Counter:
    """op type (domain-qualified when not the default domain) -> count, subgraphs too."""
    h = collections.Counter()
    for node in graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        h[key] += 1
        for a in node.attribute:
            if a.g is not None and a.g.node:
                h.update(op_histogram(a.g))
            for g in a.graphs:
                h.update(op_histogram(g))
    return h


def one_line(e: BaseException) -> str:
    """The root cause's first line (torch.onnx wraps torch.export's error in its own)."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(e).__name__}: {e}").strip().splitlines()
    return (text[0] if text else type(e).__name__)[:400]


def torch_outputs(wrapped, inputs: dict, outputs: list) -> dict:
    import torch

    with torch.no_grad():
        ref = wrapped(*[t.clone() for t in inputs.values()])
    ref = ref if isinstance(ref, tuple) else (ref,)
    return {n: t.numpy() for n, t in zip(outputs, ref)}


def write_sample(folder: Path, model_path: Path, inputs: dict, torch_outs: dict, graph_inputs: list) -> dict:
    """inputs/, torch/ and ort/ under `folder`; {"inputs", "outputs", "max_abs",
    "per_output"[, "error", "shape_mismatch"]}."""
    # The exporter may drop an input the graph does not use.
    feed = {n: t.numpy() for n, t in inputs.items() if n in graph_inputs}
    save_npys(folder / "inputs", feed)
    save_npys(folder / "torch", torch_outs)
    r = {"inputs": list(feed)}
    try:
        ort_outs = run_ort(model_path, feed)
    except Exception as e:  # noqa: BLE001
        r["error"] = one_line(e)
        return r
    save_npys(folder / "ort", ort_outs)
    r["outputs"] = list(ort_outs)
    diffs = {}
    for n, o in ort_outs.items():
        if n in torch_outs and o.shape == torch_outs[n].shape:
            diffs[n] = float(np.max(np.abs(o.astype(np.float64) - torch_outs[n])))
        else:
            diffs[n] = None
            t = list(torch_outs[n].shape) if n in torch_outs else None
            r.setdefault("shape_mismatch", []).append(f"{n}: ort {list(o.shape)} torch {t}")
    good = [d for d in diffs.values() if d is not None]
    r["max_abs"] = max(good) if good else None
    r["per_output"] = diffs
    return r


def run_case(arch: str, full_style: str, past: bool, case: Path) -> dict:
    import shutil

    global _NOPOS
    _NOPOS = full_style.endswith("-nopos")
    style = full_style.removesuffix("-nopos")

    import onnx
    import onnxruntime
    import torch
    import transformers

    if case.exists():
        shutil.rmtree(case)
    case.mkdir(parents=True)
    info = {
        "arch": arch,
        "style": full_style,
        "past": past,
        "kind": "encoder" if arch in ENCODERS else "decoder",
        # The opset asked for (dynamo: its default, unknown until the file exists);
        # replaced by the file's own when the export succeeds.
        "opset": {"legacy-eager": LEGACY_OPSET, "legacy-sdpa": LEGACY_OPSET, "dynamo-opset23": 23}.get(style),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    t0 = time.time()
    try:
        wrapped, outputs, axes, model = prepare(arch, style, past)
        cfg = model.config
        info["layers"] = cfg.num_hidden_layers
        sliding = arch in ("mistral", "gemma2", "gemma3")
        info["sliding_window"] = cfg.sliding_window if sliding else None
        info["softcap"] = getattr(cfg, "attn_logit_softcapping", None)
        info["final_logit_softcap"] = getattr(cfg, "final_logit_softcapping", None)
        if info["softcap"] is not None:
            # transformers' SDPA path ignores the attention soft-capping; only eager has it.
            info["attn_softcap_in_graph"] = style == "legacy-eager"
        if arch == "gemma3":
            info["layer_types"] = list(cfg.layer_types)
        info["attn_implementation"] = cfg._attn_implementation
        samples = [sample_inputs(arch, model, past, k) for k in (0, 1)]
        refs = [torch_outputs(wrapped, x, outputs) for x in samples]
        info["inputs"], info["outputs"] = list(samples[0]), outputs
        with torch.no_grad():
            export(wrapped, samples[0], outputs, axes, style, case / "model.onnx")
    except Exception as e:  # noqa: BLE001 - recorded, the other cases go on
        traceback.print_exc(limit=3)
        shutil.rmtree(case)
        case.mkdir()
        info.update(error=one_line(e), stage="export", export_seconds=round(time.time() - t0, 1))
        return info
    info["export_seconds"] = round(time.time() - t0, 1)
    proto = onnx.load(str(case / "model.onnx"))
    info["opset"] = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    info["opset_imports"] = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    hist = op_histogram(proto.graph)
    for f in proto.functions:
        hist.update(op_histogram(f))
    info["nodes"] = len(proto.graph.node)
    info["onnx_attention_nodes"] = hist.get("Attention", 0)
    info["op_histogram"] = dict(sorted(hist.items()))
    graph_inputs = [i.name for i in proto.graph.input]
    info["graph_outputs"] = [o.name for o in proto.graph.output]
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # noqa: BLE001
        info["checker_error"] = one_line(e)
    model_path = case / "model.onnx"
    if past:
        # The cached tokens, for llmc's test that feeds the whole prompt through its
        # own cache (the past inputs hold only their keys and values).
        for k, folder in ((0, case), (1, case / "sample2")):
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / "prefix_ids.npy", decoder_ids(arch, k)[:, : DECODER_SAMPLES[k][1]].numpy())
    first = write_sample(case, model_path, samples[0], refs[0], graph_inputs)
    info["inputs"] = first["inputs"]
    if "error" in first:
        info.update(error=first["error"], stage="ort")
        return info
    info["outputs"] = first["outputs"]
    info["max_abs_ort_torch"] = first["max_abs"]
    info["max_abs_ort_torch_per_output"] = first["per_output"]
    if "shape_mismatch" in first:
        info["shape_mismatch"] = first["shape_mismatch"]
    # The second sample, of other sizes: does the graph generalise?
    second = write_sample(case / "sample2", model_path, samples[1], refs[1], graph_inputs)
    info["sample2_max_abs_ort_torch"] = second.get("max_abs")
    for k in ("error", "shape_mismatch"):
        if k in second:
            info[f"sample2_{k}"] = second[k]
    return info


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2e}"


def case_names(real: bool = False) -> list:
    if real:
        return [
            (f"{arch}-{style}{'-past' if past else ''}", arch, style, past)
            for arch in REAL
            for style in REAL_STYLES
            for past in (False, True)
        ]
    names = []
    for arch in ARCHS:
        styles = STYLES + ([] if arch in ENCODERS else NOPOS_STYLES)
        for style in styles:
            names.append((f"{arch}-{style}", arch, style, False))
            if arch not in ENCODERS:
                names.append((f"{arch}-{style}-past", arch, style, True))
    return names


def check_llmc(llmc: str, engine: str, patterns: list) -> int:
    """`llmc exec` on every exported case (onnx_exports.py's check_sample)."""
    worst = 0
    for name, *_ in case_names():
        if patterns and not any(p in name for p in patterns):
            continue
        path = out_dir() / name / "case.json"
        if not path.exists():
            continue
        info = json.loads(path.read_text())
        if "error" in info:
            print(f"{name}: not exported ({info.get('stage')}: {info['error']})")
            continue
        for sample in [out_dir() / name, out_dir() / name / "sample2"]:
            if (sample / "ort").is_dir():
                worst |= check_sample(llmc, engine, out_dir() / name, sample, info)
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=[], metavar="PATTERN", help="cases whose name contains one")
    ap.add_argument("--force", action="store_true", help="export again even if present")
    ap.add_argument("--list", action="store_true", help="print the case names and exit")
    ap.add_argument("--check-llmc", metavar="LLMC", help="run llmc exec and compare instead")
    ap.add_argument("--engine", default="interp", choices=["interp", "cpu"])
    ap.add_argument("--real", action="store_true", help="export SmolLM2-135M in the dynamo styles instead")
    a = ap.parse_args()
    selected = [c for c in case_names(a.real) if not a.only or any(p in c[0] for p in a.only)]
    where = real_dir() if a.real else out_dir()
    if a.list:
        for c in selected:
            print(c[0])
        return 0
    if a.check_llmc:
        return check_llmc(a.check_llmc, a.engine, a.only)

    import torch

    torch.manual_seed(0)
    failed = 0
    for name, arch, style, past in selected:
        case = where / name
        if (case / "case.json").exists() and not a.force:
            print(f"tiny_onnx: {name}: present, skipped (--force to redo)")
            continue
        print(f"tiny_onnx: {name}: exporting", flush=True)
        info = run_case(arch, style, past, case)
        (case / "case.json").write_text(json.dumps(info, indent=1) + "\n")
        if arch in REAL and "error" not in info:
            # The tokenizer and config beside the model, as Optimum lays them out.
            import shutil

            folder = Path(os.environ.get("LLMC_MODELS", ROOT / ".cache" / "models")) / REAL[arch]
            for f in folder.iterdir():
                if f.suffix in (".json", ".jinja", ".txt") and f.name != "model.safetensors.index.json":
                    shutil.copy(f, case / f.name)
        if "error" in info:
            failed += 1
            print(f"tiny_onnx: {name}: FAILED ({info['stage']}): {info['error']}", flush=True)
        else:
            print(
                f"tiny_onnx: {name}: opset {info['opset']}, {info['nodes']} nodes, "
                f"{info['onnx_attention_nodes']} Attention, max |ort - torch| "
                f"{fmt(info['max_abs_ort_torch'])}, sample2 {fmt(info['sample2_max_abs_ort_torch'])}"
                f"{' ' + info['sample2_error'] if 'sample2_error' in info else ''}, "
                f"{info['export_seconds']}s",
                flush=True,
            )
    print(f"tiny_onnx: {len(selected)} cases, {failed} failed now; folders under {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
