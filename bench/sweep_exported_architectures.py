"""Sweep small randomly initialised exports of common architectures through onnxq, next to
ONNX Runtime's own quantizers on the same model and data.

Every model is built from a config (transformers) or a few lines of torch (no hub, no
weights download), seeded, and exported with the TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``; opset 17, DistilBERT at 13, Llama at 21) into
``.cache/sweep-archs``; ``*_dynamo`` models use the dynamo exporter (opset 18, static
shapes), ``bert_nofold`` is exported without constant folding, ``*_fp16`` are converted
to float16 (weights, inputs, outputs) with onnxruntime's float16 tool. Random init is made less
benign: BatchNorm gets statistics measured on random inputs, and query projections are
scaled so that attention is peaked as in a trained model (near-uniform attention hides
damage to the attention scores). For each model:

- onnxq: ``DynamicInt8()``, ``StaticInt8()`` (default calibration), ``StaticInt8(calibration="minmax")``,
  ``StaticInt8(quantize_islands=True)`` (as the qnn target), ``WeightOnlyInt4`` rtn as ``qdq`` and
  ``matmulnbits``, hqq as ``qdq``, rtn on MatMul only (ORT's scope), and the CLI
  (``onnxq quantize --recipe int8-static --calib-data samples.npz``);
- ORT: ``quantize_dynamic`` (QInt8, per-tensor), ``quantize_static`` (QDQ, per-channel,
  uint8 activations, MinMax) and ``MatMulNBitsQuantizer`` (symmetric RTN), same block size.

Each output is checked with ``onnx.checker`` (full check), loaded and run in ORT CPU (1
thread) on held-out samples, and compared with the float model: output SQNR in dB (with
ORT's default graph optimizations, and with them off: a gap means an ORT fused kernel
computes something else than the QDQ graph says) and, where the output is logits, argmax
agreement. The quantized graph is scanned for activation scales > 1e6 and for MatMul/Gemm
left float whose weight is a constant behind a Transpose. onnxq is also run a second time
on the float model (deterministic?) and on its own output (it should refuse, with a
message). Each model runs in a child process so that a crash in native code is recorded,
not fatal. The JSON records the onnxq commit and which library files were modified.

    .venv/bin/python -m bench.sweep_exported_architectures [--only bert,vit] [--quick] [--out JSON]

All 25 models take ~5 minutes on 2 cores; ``--quick`` runs one per family. The ``*_dynamo``
models need onnxscript, kept out of the venv: ``.venv/bin/pip install --no-deps --target
.cache/sweep-archs/pylib onnxscript`` (without it they are recorded as export failures).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.common import REPO, RESULTS, markdown_table, write_results

log = logging.getLogger("sweep_archs")

CACHE = REPO / ".cache" / "sweep-archs"
N_CALIB = 24
N_EVAL = 12
WORSE_DB = 1.0
EXPORT_VERSION = "v3"  # bump to re-export every model


# -- models ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Arch:
    name: str
    build: Callable[[], Any]  # -> torch module whose forward takes the inputs in order, returns one tensor
    inputs: list[tuple[str, str, tuple]]  # (name, kind: image|ids|mask|audio, shape of one sample incl. batch 1)
    dynamic_axes: dict[str, dict[int, str]]
    opset: int = 17
    argmax_axis: int | None = -1  # logits: top-1 agreement along this axis; None: features
    vocab: int = 0
    block: int = 32
    quick: bool = True
    note: str = ""
    exporter: str = "torchscript"  # torchscript (dynamo=False) | dynamo (needs onnxscript; static shapes)
    constant_folding: bool = True
    # converted after export with onnxruntime's float16 tool (float16 weights, inputs and outputs)
    float16: bool = False


def _hf(cls_name: str, cfg_name: str, out_attr: str, **cfg):
    def build():
        import torch
        import transformers

        config = getattr(transformers, cfg_name)(**cfg)
        try:
            config._attn_implementation = "eager"
        except Exception:  # noqa: BLE001 - older configs
            pass
        model = getattr(transformers, cls_name)(config)
        if cls_name == "WhisperModel":
            model = model.get_encoder()
        model.eval()
        if "pixel_values" in str(model.forward.__code__.co_varnames):
            model.example_shape = (1, 3, cfg.get("image_size", 64), cfg.get("image_size", 64))
            _randomise_bn(model)

        class Wrap(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, *args):
                if cls_name in ("BertForSequenceClassification", "DistilBertForSequenceClassification",
                                "GPT2LMHeadModel", "LlamaForCausalLM", "T5EncoderModel", "BartModel_encoder"):
                    kw = {"input_ids": args[0], "attention_mask": args[1]}
                    if cls_name in ("GPT2LMHeadModel", "LlamaForCausalLM"):
                        kw["use_cache"] = False
                    out = self.m(**kw)
                elif cls_name == "WhisperModel":
                    out = self.m(input_features=args[0])
                else:
                    out = self.m(pixel_values=args[0])
                return getattr(out, out_attr)

        _sharpen_attention(model)
        return Wrap(model).eval()

    return build


Q_NAMES = ("query.weight", "q_proj.weight", ".q.weight", "q_lin.weight")


def _sharpen_attention(model, factor: float = 6.0) -> int:
    """Random init gives near-uniform attention, which hides any damage to the attention
    scores (a quantized mask Add, say). Scale the query projections so that the softmax is
    peaked, as in a trained model. GPT-2's fused ``c_attn`` (Conv1D, [in, 3*out]): its query third."""
    import torch

    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(Q_NAMES):
                p.mul_(factor)
                n += 1
            elif name.endswith("attn.c_attn.weight"):
                p[:, : p.shape[1] // 3].mul_(factor)
                n += 1
    return n


def _bart_encoder(**cfg):
    def build():
        import torch
        import transformers

        config = transformers.BartConfig(**cfg)
        config._attn_implementation = "eager"
        enc = transformers.BartModel(config).get_encoder().eval()
        _sharpen_attention(enc)

        class Wrap(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, ids, mask):
                return self.m(input_ids=ids, attention_mask=mask).last_hidden_state

        return Wrap(enc).eval()

    return build


def _plain_cnn():
    from torch import nn

    def block(i, o, s):
        return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    m = nn.Sequential(block(3, 32, 1), block(32, 64, 2), block(64, 128, 2), block(128, 128, 2),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10))
    m.example_shape = (1, 3, 32, 32)
    return _randomise_bn(m)


def _randomise_bn(m):
    """Fresh BatchNorm has mean 0 / var 1 / gamma 1 / beta 0, so with small random weights the
    activations vanish (HF MobileNetV2 logits ~1e-24). Give it trained-looking statistics:
    gamma/beta drawn around 1/0, running statistics measured on random inputs (train-mode
    forward passes with a cumulative average), then eval mode. Needs ``m.example_shape``."""
    import torch

    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return m
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in bns:
            n = mod.num_features
            mod.weight.copy_(torch.rand(n, generator=g) * 0.8 + 0.6)
            mod.bias.copy_(torch.randn(n, generator=g) * 0.2)
            mod.reset_running_stats()
            mod.momentum = None
        m.train()
        for _ in range(4):
            m(torch.randn(8, *m.example_shape[1:], generator=g))  # pixel_values is the first argument
    for mod in bns:
        mod.momentum = 0.1
    return m.eval()


def _mbv3_like():
    """MobileNetV3-style: Hardswish, depthwise convs, SE with Hardsigmoid, residuals."""
    import torch
    from torch import nn

    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(c, c // 4, 1)
            self.fc2 = nn.Conv2d(c // 4, c, 1)

        def forward(self, x):
            s = self.fc2(torch.relu(self.fc1(self.pool(x))))
            return x * nn.functional.hardsigmoid(s)

    class IR(nn.Module):
        def __init__(self, i, e, o, s, se):
            super().__init__()
            layers = [nn.Conv2d(i, e, 1, bias=False), nn.BatchNorm2d(e), nn.Hardswish(),
                      nn.Conv2d(e, e, 3, s, 1, groups=e, bias=False), nn.BatchNorm2d(e), nn.Hardswish()]
            if se:
                layers.append(SE(e))
            layers += [nn.Conv2d(e, o, 1, bias=False), nn.BatchNorm2d(o)]
            self.body = nn.Sequential(*layers)
            self.res = s == 1 and i == o

        def forward(self, x):
            y = self.body(x)
            return x + y if self.res else y

    m = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
        IR(16, 64, 24, 2, False), IR(24, 72, 24, 1, False), IR(24, 96, 40, 2, True), IR(40, 120, 40, 1, True),
        IR(40, 240, 80, 2, True), nn.Conv2d(80, 256, 1), nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 512), nn.Hardswish(), nn.Linear(512, 10),
    )
    m.example_shape = (1, 3, 64, 64)
    return _randomise_bn(m)


def _unet():
    """Small UNet: Conv/BN/ReLU encoder, MaxPool, ConvTranspose and bilinear Resize decoder, skip Concat."""
    import torch
    from torch import nn

    def cbr(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(),
                             nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.e1, self.e2, self.e3 = cbr(3, 16), cbr(16, 32), cbr(32, 64)
            self.up2 = nn.ConvTranspose2d(64, 32, 2, 2)
            self.d2 = cbr(64, 32)
            self.d1 = cbr(32 + 16, 16)
            self.head = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            a = self.e1(x)
            b = self.e2(nn.functional.max_pool2d(a, 2))
            c = self.e3(nn.functional.max_pool2d(b, 2))
            d = self.d2(torch.cat([self.up2(c), b], 1))
            d = nn.functional.interpolate(d, scale_factor=2.0, mode="bilinear", align_corners=False)
            return self.head(self.d1(torch.cat([d, a], 1)))

    m = UNet()
    m.example_shape = (1, 3, 64, 64)
    return _randomise_bn(m)


def _oddball():
    """Graph patterns that real exports contain and the zoo above does not: the weight as
    MatMul's first input, a 3-D per-head constant weight (einsum), one weight shared by two
    MatMuls, Linear without bias, a GRU, dilated/grouped Conv1d with reflect padding, grouped
    ConvTranspose1d, a K that is not a multiple of any block size (100), LayerNorm."""
    import torch
    from torch import nn

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(3)
            self.conv = nn.Conv1d(40, 100, 5, padding=4, dilation=2, padding_mode="reflect")
            self.gconv = nn.Conv1d(100, 100, 3, padding=1, groups=4)
            self.up = nn.ConvTranspose1d(100, 100, 4, stride=2, padding=1, groups=2)
            self.ln = nn.LayerNorm(100)
            self.left = nn.Parameter(torch.randn(64, 64, generator=g) / 8)  # left @ x
            self.heads = nn.Parameter(torch.randn(4, 25, 16, generator=g) / 5)  # einsum per head
            self.shared = nn.Linear(64, 64, bias=False)
            self.gru = nn.GRU(64, 48, batch_first=True)
            self.out = nn.Linear(48, 12)

        def forward(self, x):  # x: [B, 40, T]
            h = torch.relu(self.conv(x))
            h = torch.relu(self.gconv(h)) + h
            h = self.up(h)[:, :, :64]  # [B, 100, 64]
            h = self.ln(h.transpose(1, 2))  # [B, 64, 100]
            h = torch.matmul(self.left, h)  # constant weight as MatMul input A
            e = torch.einsum("bthd,hde->bthe", h.reshape(h.shape[0], 64, 4, 25), self.heads)
            e = e.reshape(e.shape[0], 64, 64)
            e = self.shared(torch.tanh(self.shared(e)))  # one weight, two MatMuls
            y, _ = self.gru(e)
            return self.out(y)  # [B, 64, 12]

    return Odd().eval()


IMG = ("pixel_values", "image", (1, 3, 64, 64))
DYN_IMG = {"pixel_values": {0: "batch"}}


def _text(seq: int):
    return [("input_ids", "ids", (1, seq)), ("attention_mask", "mask", (1, seq))]


DYN_TEXT = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}

ARCHS: list[Arch] = [
    Arch("bert", _hf("BertForSequenceClassification", "BertConfig", "logits", vocab_size=2000, hidden_size=256,
                     num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024, max_position_embeddings=64,
                     num_labels=5),
         _text(32), DYN_TEXT, vocab=2000, block=128),
    Arch("distilbert_op13", _hf("DistilBertForSequenceClassification", "DistilBertConfig", "logits", vocab_size=2000,
                                dim=256, n_layers=2, n_heads=4, hidden_dim=1024, max_position_embeddings=64, num_labels=5),
         _text(32), DYN_TEXT, opset=13, vocab=2000, block=128),
    Arch("gpt2", _hf("GPT2LMHeadModel", "GPT2Config", "logits", vocab_size=2000, n_embd=256, n_layer=2, n_head=4,
                     n_positions=64, bos_token_id=0, eos_token_id=0),
         _text(32), DYN_TEXT, vocab=2000, block=32),
    Arch("llama_op21", _hf("LlamaForCausalLM", "LlamaConfig", "logits", vocab_size=2000, hidden_size=256,
                           intermediate_size=688, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=64, tie_word_embeddings=False),
         _text(32), DYN_TEXT, opset=21, vocab=2000, block=32, note="GQA, RMSNorm, SwiGLU, K=688 not a multiple of 32"),
    Arch("t5_encoder", _hf("T5EncoderModel", "T5Config", "last_hidden_state", vocab_size=2000, d_model=256, d_ff=512,
                           d_kv=32, num_layers=2, num_heads=8, feed_forward_proj="gated-gelu"),
         _text(32), DYN_TEXT, argmax_axis=None, vocab=2000, block=128),
    Arch("bart_encoder", _bart_encoder(vocab_size=2000, d_model=256, encoder_layers=2, decoder_layers=1,
                                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=512,
                                        decoder_ffn_dim=512, max_position_embeddings=64),
         _text(32), DYN_TEXT, argmax_axis=None, vocab=2000, block=128, quick=False),
    Arch("vit", _hf("ViTForImageClassification", "ViTConfig", "logits", image_size=64, patch_size=8, hidden_size=192,
                    num_hidden_layers=3, num_attention_heads=3, intermediate_size=768, num_labels=10),
         [IMG], DYN_IMG, block=32, note="hidden 192"),
    Arch("swin", _hf("SwinForImageClassification", "SwinConfig", "logits", image_size=64, patch_size=4, embed_dim=48,
                     depths=[2, 2], num_heads=[3, 6], window_size=4, num_labels=10),
         [IMG], DYN_IMG, block=32),
    Arch("convnext", _hf("ConvNextForImageClassification", "ConvNextConfig", "logits", image_size=64,
                         hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1], num_labels=10),
         [IMG], DYN_IMG, block=32, quick=False),
    Arch("resnet", _hf("ResNetForImageClassification", "ResNetConfig", "logits", embedding_size=32,
                       hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], layer_type="basic", num_labels=10),
         [IMG], DYN_IMG, block=32),
    Arch("mobilenet_v2", _hf("MobileNetV2ForImageClassification", "MobileNetV2Config", "logits", image_size=64,
                             depth_multiplier=0.5, num_labels=10),
         [IMG], DYN_IMG, block=32, quick=False),
    Arch("efficientnet", _hf("EfficientNetForImageClassification", "EfficientNetConfig", "logits", image_size=64,
                             width_coefficient=0.5, depth_coefficient=0.5, hidden_dim=640, num_labels=10),
         [IMG], DYN_IMG, block=32, note="SE blocks, SiLU"),
    Arch("mbv3_like", _mbv3_like, [("input", "image", (1, 3, 64, 64))], {"input": {0: "batch"}}, block=32,
         note="Hardswish/Hardsigmoid SE, depthwise", quick=False),
    Arch("whisper_encoder", _hf("WhisperModel", "WhisperConfig", "last_hidden_state", num_mel_bins=80, d_model=128,
                                encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=512, decoder_layers=1,
                                decoder_attention_heads=4, decoder_ffn_dim=512, max_source_positions=50, vocab_size=1000,
                                pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1),
         [("input_features", "audio", (1, 80, 100))], {"input_features": {0: "batch"}}, argmax_axis=None, block=32),
    Arch("segformer", _hf("SegformerForSemanticSegmentation", "SegformerConfig", "logits", num_encoder_blocks=4,
                          depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128], decoder_hidden_size=64,
                          num_attention_heads=[1, 2, 4, 8], num_labels=5, image_size=64),
         [IMG], DYN_IMG, argmax_axis=1, block=32),
    Arch("unet", _unet, [("input", "image", (1, 3, 64, 64))], {"input": {0: "batch"}}, argmax_axis=1, block=32,
         note="ConvTranspose, bilinear Resize, skip Concat"),
    Arch("oddball", _oddball, [("features", "audio", (1, 40, 64))], {"features": {0: "batch"}}, block=32,
         note="weight-first MatMul, einsum, shared weight, GRU, grouped/dilated Conv1d, ConvTranspose1d, K=100"),
    Arch("bert_nofold", _hf("BertForSequenceClassification", "BertConfig", "logits", vocab_size=2000, hidden_size=256,
                            num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024,
                            max_position_embeddings=64, num_labels=5),
         _text(32), DYN_TEXT, vocab=2000, block=128, constant_folding=False, quick=False,
         note="exported with do_constant_folding=False (weights behind Transpose)"),
    Arch("gpt2_dynamo", _hf("GPT2LMHeadModel", "GPT2Config", "logits", vocab_size=2000, n_embd=256, n_layer=2,
                            n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0),
         _text(32), {}, opset=18, vocab=2000, block=32, exporter="dynamo", note="tied lm_head"),
    Arch("llama_dynamo", _hf("LlamaForCausalLM", "LlamaConfig", "logits", vocab_size=2000, hidden_size=256,
                             intermediate_size=688, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=64, tie_word_embeddings=True),
         _text(32), {}, opset=18, vocab=2000, block=32, exporter="dynamo", note="tied lm_head"),
    Arch("vit_dynamo", _hf("ViTForImageClassification", "ViTConfig", "logits", image_size=64, patch_size=8,
                           hidden_size=192, num_hidden_layers=3, num_attention_heads=3, intermediate_size=768,
                           num_labels=10),
         [IMG], {}, opset=18, block=32, exporter="dynamo", quick=False),
    Arch("efficientnet_dynamo", _hf("EfficientNetForImageClassification", "EfficientNetConfig", "logits",
                                    image_size=64, width_coefficient=0.5, depth_coefficient=0.5, hidden_dim=640,
                                    num_labels=10),
         [IMG], {}, opset=18, block=32, exporter="dynamo", quick=False),
    Arch("bert_fp16", _hf("BertForSequenceClassification", "BertConfig", "logits", vocab_size=2000, hidden_size=256,
                          num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024,
                          max_position_embeddings=64, num_labels=5),
         _text(32), DYN_TEXT, vocab=2000, block=128, float16=True, quick=False,
         note="float16 model (onnxruntime.transformers.float16)"),
    Arch("resnet_fp16", _hf("ResNetForImageClassification", "ResNetConfig", "logits", embedding_size=32,
                            hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], layer_type="basic", num_labels=10),
         [IMG], DYN_IMG, block=32, float16=True, note="float16 model, float16 input and output"),
    Arch("plain_cnn", _plain_cnn, [("input", "image", (1, 3, 32, 32))], {"input": {0: "batch"}}, block=32,
         note="Conv-BN(eval)-ReLU"),
]
BY_NAME = {a.name: a for a in ARCHS}


PYLIB = CACHE / "pylib"  # pip install --no-deps --target .cache/sweep-archs/pylib onnxscript


def _need_onnxscript() -> None:
    """torch's dynamo exporter needs onnxscript, which the venv does not carry: take it from
    PYLIB if it is there (kept out of the shared venv on purpose)."""
    import importlib.util

    if importlib.util.find_spec("onnxscript") is not None:
        return
    if PYLIB.is_dir() and str(PYLIB) not in sys.path:
        sys.path.append(str(PYLIB))
    if importlib.util.find_spec("onnxscript") is None:
        raise RuntimeError(f"the dynamo exporter needs onnxscript: .venv/bin/pip install --no-deps --target {PYLIB} "
                           "onnxscript")


def _cfg_digest(arch: Arch) -> str:
    return hashlib.sha1(f"{EXPORT_VERSION}|{arch.opset}|{arch.inputs}|{arch.dynamic_axes}|{arch.exporter}|"
                        f"{arch.constant_folding}|{arch.float16}".encode()).hexdigest()[:8]


def model_path(arch: Arch) -> Path:
    return CACHE / f"{arch.name}.onnx"


def export(arch: Arch) -> tuple[Path, float | None]:
    """The cached export, made on first use; with the output SQNR of ORT vs torch on one
    sample when it was just exported (None from the cache)."""
    import torch

    path = model_path(arch)
    stamp = path.with_suffix(".stamp")
    if path.exists() and stamp.exists() and stamp.read_text() == _cfg_digest(arch):
        return path, None
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    module = arch.build()
    example = tuple(torch.from_numpy(v.astype(np.float32) if v.dtype == np.float16 else v)
                    for v in make_feeds(arch, np.random.default_rng(123), 1)[0].values())
    with torch.no_grad():
        ref = module(*example).numpy()
    t0 = time.perf_counter()
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if arch.exporter == "dynamo":
            _need_onnxscript()
            torch.onnx.export(module, example, str(path), dynamo=True, opset_version=arch.opset,
                              input_names=[n for n, _, _ in arch.inputs], output_names=["output"],
                              external_data=False, verbose=False)
        else:
            torch.onnx.export(module, example, str(path), dynamo=False, opset_version=arch.opset,
                              input_names=[n for n, _, _ in arch.inputs], output_names=["output"],
                              dynamic_axes=arch.dynamic_axes, do_constant_folding=arch.constant_folding)
    if arch.float16:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(path))), str(path))
    stamp.write_text(_cfg_digest(arch))
    log.info("exported %s (opset %d) in %.1f s, %.1f MB", arch.name, arch.opset, time.perf_counter() - t0,
             path.stat().st_size / 1e6)
    feed = make_feeds(arch, np.random.default_rng(123), 1)[0]
    got = session(path).run(None, feed)[0]
    return path, sqnr_db(ref.astype(np.float64), got.astype(np.float64))


# -- data ------------------------------------------------------------------------------------


def make_feeds(arch: Arch, rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
    feeds = []
    for _ in range(n):
        feed = {}
        for name, kind, shape in arch.inputs:
            if kind == "image":
                feed[name] = rng.standard_normal(shape).astype(np.float32)
            elif kind == "audio":  # log-mel-like: smooth in time, roughly in [-1, 1]
                x = rng.standard_normal(shape).astype(np.float32)
                x = (x + np.roll(x, 1, -1) + np.roll(x, 2, -1)) / 3
                feed[name] = np.clip(x * 0.6 - 0.2, -1.5, 1.5).astype(np.float32)
            elif kind == "ids":
                feed[name] = rng.integers(3, arch.vocab, shape).astype(np.int64)
            elif kind == "mask":
                m = np.ones(shape, np.int64)
                valid = int(rng.integers(shape[-1] // 2, shape[-1] + 1))
                m[..., valid:] = 0
                feed[name] = m
        if arch.float16:
            feed = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in feed.items()}
        feeds.append(feed)
    return feeds


def calib_eval(arch: Arch) -> tuple[list[dict], list[dict]]:
    return make_feeds(arch, np.random.default_rng(1), N_CALIB), make_feeds(arch, np.random.default_rng(2), N_EVAL)


# -- running and scoring ---------------------------------------------------------------------


def session(path, optimize: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimize:  # the graph as written: no QDQ fusion into QLinear*/MatMulNBits kernels
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_all(path, feeds, optimize: bool = True) -> np.ndarray:
    s = session(path, optimize)
    return np.stack([s.run(None, f)[0] for f in feeds]).astype(np.float64)


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    if not np.all(np.isfinite(out)):
        return float("nan")
    return float(10 * np.log10((ref ** 2).sum() / max(((out - ref) ** 2).sum(), 1e-30)))


def agreement(arch: Arch, ref: np.ndarray, out: np.ndarray) -> float | None:
    if arch.argmax_axis is None:
        return None
    ax = arch.argmax_axis if arch.argmax_axis < 0 else arch.argmax_axis + 1  # stacked samples in front
    return float((ref.argmax(ax) == out.argmax(ax)).mean())


def _exc(e: BaseException) -> dict:
    frames = traceback.extract_tb(e.__traceback__)
    tail = [f"{Path(f.filename).relative_to(REPO) if f.filename.startswith(str(REPO)) else Path(f.filename).name}"
            f":{f.lineno}:{f.name}" for f in frames[-5:]]
    from onnxq.errors import OnnxqError

    return {"type": type(e).__name__, "onnxq_error": isinstance(e, OnnxqError), "message": str(e)[:800],
            "frames": tail}


def check_file(path: Path) -> str | None:
    """None if the checker (full check) accepts the file, else its complaint."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    return None


def onnxq_recipes(arch: Arch) -> dict[str, Callable[[], Any]]:
    import onnxq

    b = arch.block
    return {
        "int8-dynamic": lambda: onnxq.DynamicInt8(),
        "int8-static": lambda: onnxq.StaticInt8(),
        "int8-static-minmax": lambda: onnxq.StaticInt8(calibration="minmax"),
        # what the qnn target turns on: Add/Mul/... quantized even between float ops
        "int8-static-islands": lambda: onnxq.StaticInt8(quantize_islands=True),
        f"int4-rtn-qdq-b{b}": lambda: onnxq.WeightOnlyInt4(algorithm="rtn", format="qdq", block_size=b),
        f"int4-rtn-nbits-b{b}": lambda: onnxq.WeightOnlyInt4(algorithm="rtn", format="matmulnbits", block_size=b),
        f"int4-hqq-qdq-b{b}": lambda: onnxq.WeightOnlyInt4(algorithm="hqq", format="qdq", block_size=b),
        # the layers ORT's MatMulNBitsQuantizer takes (MatMul only, not Gemm): like for like
        f"int4-rtn-nbits-b{b}-matmul-only": lambda: onnxq.WeightOnlyInt4(
            algorithm="rtn", format="matmulnbits", block_size=b, op_types=("MatMul",)),
    }


def yardstick(recipe: str, arch: Arch) -> str:
    if recipe.startswith("int8-dynamic"):
        return "ort-dynamic"
    if recipe.startswith("int8-static") or recipe == "cli-int8-static":
        return "ort-static"
    return f"ort-int4-b{arch.block}"


def ort_quantize(kind: str, src: Path, dst: Path, calib: list[dict], block: int) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    if kind == "ort-dynamic":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    elif kind == "ort-static":
        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(calib)

            def get_next(self):
                return next(self.it, None)

        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    else:
        import onnx
        from onnxruntime.quantization import matmul_nbits_quantizer as mnq

        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
        q = mnq.MatMulNBitsQuantizer(onnx.load(str(src)), block_size=block, is_symmetric=True,
                                     algo_config=mnq.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True))
        q.process()
        q.model.save_model_to_file(str(dst), use_external_data_format=False)


def _score(row: dict, arch: Arch, path: Path, eval_feeds, ref) -> np.ndarray | None:
    row["checker"] = check_file(path)
    try:
        out = run_all(path, eval_feeds)
    except Exception as e:  # noqa: BLE001
        row["ort_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:400]}"
        return None
    row["sqnr_db"] = sqnr_db(ref, out)
    row["agreement"] = agreement(arch, ref, out)
    try:  # the same file with ORT's graph optimizations off: what the QDQ graph says
        row["sqnr_unfused_db"] = sqnr_db(ref, run_all(path, eval_feeds, optimize=False))
    except Exception as e:  # noqa: BLE001
        row["unfused_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    row["size_ratio"] = path.stat().st_size / model_path(arch).stat().st_size
    ops = _op_counts(path)
    row["quant_ops"] = {k: v for k, v in ops.items() if k in QUANT_OPS}
    row.update(_graph_smells(path))
    return out


def _graph_smells(path: Path) -> dict:
    """Things in a quantized graph that are almost surely wrong whatever the data:
    ``huge_scales``: QuantizeLinear scales > 1e6 (a range that takes in an attention mask's
    -3.4e38 or an inf: every real value then lands in one or two int8 levels);
    ``float_foldable_matmuls``: MatMul/Gemm left in float whose weight is a constant behind a
    Transpose/Cast/Reshape (constant folding would have made it quantizable)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    consts = {i.name: i for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t
    prod = {o: n for n in m.graph.node for o in n.output}
    huge = []
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and len(n.input) > 1 and n.input[1] in consts:
            sc = numpy_helper.to_array(consts[n.input[1]])
            if sc.size and (not np.all(np.isfinite(sc)) or float(np.max(np.abs(sc))) > 1e6):
                huge.append([n.input[0], float(np.max(np.abs(sc)))])
    foldable = []
    for n in m.graph.node:
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1:
            p = prod.get(n.input[1])
            if p is not None and p.op_type in ("Transpose", "Cast", "Reshape", "Identity") and p.input[0] in consts:
                foldable.append(n.name)
    out = {}
    if huge:
        out["huge_scales"] = huge
    if foldable:
        out["float_foldable_matmuls"] = foldable
    return out


QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
             "MatMulNBits", "DynamicQuantizeMatMul", "QLinearMatMul", "QLinearConv", "MatMulBlockInt4", "GatherBlockQuantized"}


def child(name: str, progress: Path) -> None:
    """Run one model; append a JSON line per case to ``progress`` (a "start" line first, so
    that the parent knows which case was running if this process dies)."""
    import onnxruntime

    import torch

    torch.set_num_threads(1)
    onnxruntime.set_default_logger_severity(3)
    import onnxq

    arch = BY_NAME[name]

    def emit(obj):
        with progress.open("a") as f:
            f.write(json.dumps(obj, default=float) + "\n")

    emit({"start": "export"})
    try:
        src, vs_torch = export(arch)
        if vs_torch is not None:  # freshly exported: ORT vs torch on the example
            emit({"export_check_sqnr_db": vs_torch})
    except Exception as e:  # noqa: BLE001
        emit({"model": name, "recipe": "export", "tool": "torch", "exception": _exc(e)})
        return
    calib, eval_feeds = calib_eval(arch)
    ref = run_all(src, eval_feeds)
    emit({"model": name, "recipe": "float", "tool": "-", "size_mb": src.stat().st_size / 1e6,
          "ops": _op_counts(src)})
    out_dir = CACHE / "out" / name
    out_dir.mkdir(parents=True, exist_ok=True)

    # ORT yardsticks first
    for kind in ("ort-dynamic", "ort-static", f"ort-int4-b{arch.block}"):
        emit({"start": kind})
        row = {"model": name, "recipe": kind, "tool": "ort"}
        dst = out_dir / f"{kind}.onnx"
        t0 = time.perf_counter()
        try:
            ort_quantize(kind, src, dst, calib, arch.block)
            row["quantize_s"] = time.perf_counter() - t0
            _score(row, arch, dst, eval_feeds, ref)
        except Exception as e:  # noqa: BLE001
            row["exception"] = _exc(e)
        emit(row)

    for label, make in onnxq_recipes(arch).items():
        emit({"start": label})
        row = {"model": name, "recipe": label, "tool": "onnxq"}
        dst = out_dir / f"{label}.onnx"
        data = calib if label.startswith("int8-static") else None
        t0 = time.perf_counter()
        try:
            model, report = onnxq.quantize_with_report(str(src), make(), data=data)
            onnxq.save(model, dst)
            row["quantize_s"] = time.perf_counter() - t0
            row["quantized_nodes"] = len(report.quantized)
            row["notes"] = [str(n)[:300] for n in report.notes]
        except Exception as e:  # noqa: BLE001
            row["exception"] = _exc(e)
            emit(row)
            continue
        out = _score(row, arch, dst, eval_feeds, ref)
        # determinism: the same recipe on the same float model again
        try:
            again = out_dir / f"{label}.again.onnx"
            onnxq.save(onnxq.quantize(str(src), make(), data=data), again)
            if again.read_bytes() == dst.read_bytes():
                row["deterministic"] = True
            elif out is not None:
                row["deterministic"] = bool(np.array_equal(run_all(again, eval_feeds), out))
            again.unlink()
        except Exception as e:  # noqa: BLE001
            row["deterministic"] = f"second run failed: {_exc(e)}"
        # its own output again: a clean refusal is expected
        try:
            onnxq.quantize(str(dst), make(), data=data)
            row["requantize"] = "accepted (quantized an already quantized model)"
        except Exception as e:  # noqa: BLE001
            x = _exc(e)
            row["requantize"] = ("refused: " if x["onnxq_error"] else "CRASH: ") + f"{x['type']}: {x['message'][:200]}"
            if not x["onnxq_error"]:
                row["requantize_frames"] = x["frames"]
        emit(row)

    # the CLI with an .npz of calibration samples (key = input name, one sample per index)
    emit({"start": "cli-int8-static"})
    row = {"model": name, "recipe": "cli-int8-static", "tool": "onnxq"}
    npz = out_dir / "calib.npz"
    np.savez(npz, **{k: np.stack([f[k] for f in calib]) for k in calib[0]})
    dst = out_dir / "cli-int8-static.onnx"
    cmd = [str(REPO / ".venv" / "bin" / "onnxq"), "quantize", str(src), "-o", str(dst), "--recipe", "int8-static",
           "--calib-data", str(npz)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    row["quantize_s"] = time.perf_counter() - t0
    row["cli"] = " ".join(cmd)
    if proc.returncode != 0:
        err = proc.stderr.strip().splitlines()
        tb = "Traceback" in proc.stderr
        row["exception"] = {"type": "CLI exit %d" % proc.returncode, "onnxq_error": not tb,
                            "message": (err[-1] if err else "")[:800], "frames": err[-6:] if tb else []}
    else:
        _score(row, arch, dst, eval_feeds, ref)
    emit(row)
    emit({"done": True})


def _op_counts(path: Path) -> dict:
    import collections

    import onnx

    m = onnx.load(str(path), load_external_data=False)
    c = collections.Counter(n.op_type for n in m.graph.node)
    return dict(c.most_common())


# -- parent ----------------------------------------------------------------------------------


def run_model(name: str, timeout: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        progress = Path(tmp) / "progress.jsonl"
        progress.touch()
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   PYTHONWARNINGS="ignore")
        cmd = [sys.executable, "-m", "bench.sweep_exported_architectures", "--child", name, str(progress)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
            rc, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as e:
            rc, err = "timeout", (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        lines = [json.loads(x) for x in progress.read_text().splitlines() if x.strip()]
    rows, running, export_check = [], None, None
    for obj in lines:
        if "start" in obj:
            running = obj["start"]
        elif "export_check_sqnr_db" in obj:
            export_check = obj["export_check_sqnr_db"]
        elif "done" in obj:
            running = None
        else:
            rows.append(obj)
            running = None
    if running is not None:  # the child died (or timed out) in the middle of this case
        what = f"child process {'timed out' if rc == 'timeout' else f'exited with {rc}'} during {running}"
        rows.append({"model": name, "recipe": running, "tool": "ort" if running.startswith("ort") else "onnxq",
                     "exception": {"type": "ProcessDied", "onnxq_error": False, "message": what,
                                   "frames": err.strip().splitlines()[-6:]}})
    for r in rows:
        if r["recipe"] == "float" and export_check is not None:
            r["export_vs_torch_sqnr_db"] = export_check
    log.info("%s: %d cases in %.0f s", name, len(rows), time.perf_counter() - t0)
    return rows


def classify(rows: list[dict]) -> list[dict]:
    """One table row per onnxq case with its ORT yardstick and a status."""
    by = {(r["model"], r["recipe"]): r for r in rows}
    table = []
    for r in rows:
        if r["tool"] != "onnxq" and r["recipe"] != "export":
            continue
        arch = BY_NAME[r["model"]]
        ys = by.get((r["model"], yardstick(r["recipe"], arch)), {}) if r["recipe"] != "export" else {}
        ort_sqnr = ys.get("sqnr_db")
        t = {"model": r["model"], "recipe": r["recipe"], "onnxq_sqnr_db": r.get("sqnr_db"),
             "onnxq_unfused_db": r.get("sqnr_unfused_db"),
             "ort_sqnr_db": ort_sqnr if ort_sqnr is not None else _short_fail(ys),
             "onnxq_agree": r.get("agreement"), "ort_agree": ys.get("agreement")}
        if "exception" in r:
            x = r["exception"]
            if x["type"] == "NothingToQuantizeError":
                t["status"] = "n/a (refused, clear message): " + x["message"][:100]
            else:
                t["status"] = ("error: " if x["onnxq_error"] else "CRASH: ") + f"{x['type']}: {x['message'][:160]}"
        elif r.get("ort_error"):
            t["status"] = "NOT LOADABLE: " + r["ort_error"][:160]
        elif r.get("checker"):
            t["status"] = "checker: " + r["checker"][:160]
        elif r.get("sqnr_db") is None or not np.isfinite(r["sqnr_db"]):
            t["status"] = "non-finite output"
        elif ort_sqnr is not None and np.isfinite(ort_sqnr) and r["sqnr_db"] < ort_sqnr - WORSE_DB:
            t["status"] = f"worse than ORT by {ort_sqnr - r['sqnr_db']:.1f} dB"
            ort_n = ys.get("quant_ops", {}).get("MatMulNBits", 0)
            if r["recipe"].startswith("int4") and ort_n == 0:
                t["status"] = "not comparable: ORT's MatMulNBitsQuantizer quantized no layer (Gemm only)"
            elif r["recipe"].startswith("int4") and ort_n != r.get("quantized_nodes"):
                # not like for like: ORT's MatMulNBitsQuantizer leaves Gemm in float
                t["status"] = (f"lower than ORT by {ort_sqnr - r['sqnr_db']:.1f} dB, but onnxq quantizes "
                               f"{r.get('quantized_nodes')} layers, ORT {ort_n} (see the matmul-only row)")
        else:
            t["status"] = "ok"
        extra = []
        fused, unfused = r.get("sqnr_db"), r.get("sqnr_unfused_db")
        if fused is not None and unfused is not None and np.isfinite(unfused) and (
                not np.isfinite(fused) or fused < unfused - 3):
            t["status"] = t["status"].replace("ok", "ORT FUSION LOSS", 1) if t["status"] == "ok" else t["status"]
            extra.append(f"ORT's fused kernels lose {unfused - fused:.1f} dB vs the unfused graph ({unfused:.1f} dB)")
        if r.get("huge_scales"):
            hs = r["huge_scales"]
            extra.append(f"{len(hs)} activation scale(s) > 1e6 (e.g. {hs[0][0]}: {hs[0][1]:.3g}; an attention mask in the range?)")
        if r.get("float_foldable_matmuls") and r["recipe"].startswith(("int8-dynamic", "int4")):
            extra.append(f"{len(r['float_foldable_matmuls'])} MatMul/Gemm with a constant weight behind Transpose/Cast "
                         "left float (not constant-folded)")
        if r.get("unfused_error"):
            extra.append("unfused graph fails in ORT: " + r["unfused_error"][:120])
        if r.get("deterministic") not in (None, True):
            extra.append(f"not deterministic ({r['deterministic']})")
        if isinstance(r.get("requantize"), str) and not r["requantize"].startswith("refused"):
            extra.append(f"requantize: {r['requantize'][:120]}")
        if extra:
            t["status"] += "; " + "; ".join(extra)
        table.append(t)
    return table


def _short_fail(ys: dict) -> str:
    if not ys:
        return ""
    if "exception" in ys:
        return f"failed: {ys['exception']['type']}"
    if ys.get("ort_error"):
        return "not loadable"
    return ""


def _tree_state() -> dict:
    """The commit and the uncommitted changes under onnxq/ and passes/ the results came from
    (the library is edited while sweeps run)."""
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    diff = git("diff", "--", "onnxq", "passes")
    return {"head": git("rev-parse", "HEAD"), "dirty_files": git("diff", "--name-only", "--", "onnxq", "passes").split(),
            "diff_sha1": hashlib.sha1(diff.encode()).hexdigest() if diff else None}


def _status_kind(status: str) -> str:
    if status == "ok":
        return "ok"
    if status.startswith("ok;"):
        return "ok with warnings"
    for prefix in ("n/a", "not comparable", "lower than ORT", "worse than ORT", "CRASH", "error", "NOT LOADABLE",
                   "checker", "ORT FUSION LOSS", "non-finite"):
        if status.startswith(prefix):
            return prefix
    return "other"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma-separated model names: " + ", ".join(BY_NAME))
    ap.add_argument("--quick", action="store_true", help="one model per family (default: all, ~4 minutes on 2 cores)")
    ap.add_argument("--out", default=str(RESULTS / "sweep_exported_architectures.json"))
    ap.add_argument("--timeout", type=int, default=420, help="seconds per model")
    ap.add_argument("--child", nargs=2, metavar=("NAME", "PROGRESS"), help=argparse.SUPPRESS)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose or not args.child else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if args.child:
        logging.getLogger("onnxq").setLevel(logging.ERROR)
        child(args.child[0], Path(args.child[1]))
        return 0
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            ap.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    else:
        names = [a.name for a in ARCHS if a.quick or not args.quick]
    t0 = time.perf_counter()
    rows = []
    for name in names:
        rows.extend(run_model(name, args.timeout))
    table = classify(rows)
    columns = ["model", "recipe", "onnxq_sqnr_db", "onnxq_unfused_db", "ort_sqnr_db", "onnxq_agree", "ort_agree", "status"]
    print(markdown_table(table, columns))
    kinds = collections.Counter(_status_kind(t["status"]) for t in table)
    print(f"\n{len(names)} models, {len(table)} onnxq cases in {time.perf_counter() - t0:.0f} s: "
          + ", ".join(f"{k} {v}" for k, v in kinds.most_common()))
    payload = {"onnxq_tree": _tree_state(), "title": "onnxq vs ORT quantizers on small random exports of common architectures",
               "command": "python -m bench.sweep_exported_architectures" + (" --quick" if args.quick else ""),
               "columns": columns, "rows": table, "cases": rows}
    out = Path(args.out)
    if out.resolve().parent == RESULTS.resolve():
        write_results(out.stem, payload)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2, default=float))
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
