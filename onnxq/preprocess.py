"""Images → model inputs for calibrating image models (Pillow).

``ImagePreprocess`` describes the classic pipeline: resize the shorter side (bilinear,
antialiased, as torchvision does on PIL images), centre-crop, scale pixel values, subtract a
mean and divide by a std per channel, order channels RGB or BGR, and lay the result out
NCHW or NHWC with a batch axis of 1.

``parse_preprocess("resize=256 crop=224 mean=0.485,0.456,0.406 ...")`` reads the command
line spelling; the preset ``imagenet`` is torchvision's ImageNet pipeline.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from onnxq.data import BFLOAT16
from onnxq.errors import CalibrationDataError

logger = logging.getLogger(__name__)


class UnreadableImageError(CalibrationDataError):
    """An image file Pillow cannot open or decode (truncated, not an image)."""

__all__ = [
    "ImagePreprocess",
    "IMAGENET",
    "IMAGE_SUFFIXES",
    "parse_preprocess",
    "image_files",
    "load_image",
    "from_images",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
    """resize: shorter side in pixels (aspect ratio kept), or (height, width) to stretch
    to exactly that size (text-line and detector inputs), 0: no resize; crop: centre crop
    size (0: none), an int or (height, width); scale multiplies raw 0..255 pixels first;
    then ``(x - mean) / std`` per channel in the output channel order. ``channel_order``
    GRAY gives one luminance channel (a 1-channel model input picks it by itself)."""

    resize: int | tuple[int, int] = 256
    crop: int | tuple[int, int] = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    scale: float = 1 / 255
    layout: str = "NCHW"
    channel_order: str = "RGB"
    dtype: str = "float32"  # left at this, it follows a float16/float64 model input

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if isinstance(self.crop, (list, tuple)):
            object.__setattr__(self, "crop", tuple(int(c) for c in self.crop))
        if isinstance(self.resize, (list, tuple)):
            if len(self.resize) != 2 or min(int(r) for r in self.resize) <= 0:
                raise CalibrationDataError(f"resize as height x width needs two positive sizes, got {self.resize}")
            object.__setattr__(self, "resize", tuple(int(r) for r in self.resize))
        if self.layout not in ("NCHW", "NHWC"):
            raise CalibrationDataError(f"layout must be NCHW or NHWC, not {self.layout!r}")
        if self.channel_order not in ("RGB", "BGR", "GRAY"):
            raise CalibrationDataError(f"channel order must be RGB, BGR or GRAY, not {self.channel_order!r}")
        for name in ("mean", "std"):
            if len(getattr(self, name)) not in (1, 3):
                raise CalibrationDataError(f"{name} needs 1 or 3 values, got {getattr(self, name)}")
            if self.channel_order == "GRAY" and len(set(getattr(self, name))) != 1:
                raise CalibrationDataError(
                    f"one-channel (GRAY) images take one {name} value, not {getattr(self, name)}: e.g. mean=0.5 std=0.5")
        if any(s == 0 for s in self.std):
            raise CalibrationDataError("std values must be non-zero")
        if isinstance(self.resize, int) and self.resize < 0:
            raise CalibrationDataError("resize must be >= 0")
        try:
            np.dtype(self.dtype)
        except TypeError:
            raise CalibrationDataError(f"dtype {self.dtype!r} is not a numpy type (float32, float16, uint8, ...)") from None

    @property
    def output_hw(self) -> tuple[int, int] | None:
        """Height and width of every image after the pipeline: the crop, or an exact resize."""
        if self.crop_hw:
            return self.crop_hw
        return self.resize if isinstance(self.resize, tuple) else None

    @property
    def crop_hw(self) -> tuple[int, int] | None:
        if not self.crop:
            return None
        if isinstance(self.crop, tuple):
            return self.crop  # type: ignore[return-value]
        return (int(self.crop), int(self.crop))


IMAGENET = ImagePreprocess()

_PRESETS = {"imagenet": IMAGENET}
_KEYS = {"resize", "crop", "mean", "std", "scale", "layout", "order", "channel_order", "dtype"}


def _number(text: str) -> float:
    text = text.strip()
    if "/" in text:
        a, b = text.split("/", 1)
        return float(a) / float(b)
    return float(text)


def parse_preprocess(spec: str | Sequence[str] | None, base: ImagePreprocess = IMAGENET) -> ImagePreprocess:
    """Read ``"imagenet crop=256 layout=NHWC order=BGR mean=104,117,123 std=1 scale=1"``:
    an optional preset name then ``key=value`` words (space- or semicolon-separated)."""
    if spec is None:
        return base
    words: list[str] = []
    for part in [spec] if isinstance(spec, str) else list(spec):
        words.extend(w for w in part.replace(";", " ").split() if w)
    fields: dict = {}
    current = base
    for w in words:
        if "=" not in w:
            if w.lower() in _PRESETS:
                current = _PRESETS[w.lower()]
                continue
            raise CalibrationDataError(
                f"--preprocess: {w!r} is neither a preset ({', '.join(_PRESETS)}) nor key=value; keys: {', '.join(sorted(_KEYS))}"
            )
        key, value = (s.strip() for s in w.split("=", 1))
        key = key.lower().replace("-", "_")
        if key not in _KEYS:
            raise CalibrationDataError(f"--preprocess: unknown key {key!r}; keys: {', '.join(sorted(_KEYS))}")
        try:
            if key in ("resize", "crop"):
                parts = [int(v) for v in value.replace("x", ",").split(",") if v]
                if len(parts) not in (1, 2):
                    raise ValueError(value)
                fields[key] = parts[0] if len(parts) == 1 else tuple(parts)
            elif key in ("mean", "std"):
                fields[key] = tuple(_number(v) for v in value.split(",") if v.strip())
            elif key == "scale":
                fields["scale"] = _number(value)
            elif key == "layout":
                fields["layout"] = value.upper()
            elif key in ("order", "channel_order"):
                fields["channel_order"] = value.upper()
            elif key == "dtype":
                fields["dtype"] = value
        except (ValueError, ZeroDivisionError):
            raise CalibrationDataError(f"--preprocess: bad value for {key}: {value!r}") from None
    return dataclasses.replace(current, **fields)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder``, recursively, sorted by path."""
    folder = Path(folder)
    if folder.is_file():
        raise CalibrationDataError(f"{folder} is a file; give the folder that holds the images")
    if not folder.is_dir():
        raise CalibrationDataError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationDataError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _pil():
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        raise CalibrationDataError("reading images needs Pillow: pip install pillow") from None
    return Image


def load_image(path: str | os.PathLike, pp: ImagePreprocess = IMAGENET) -> np.ndarray:
    """One image as a ``[1, C, H, W]`` (or ``[1, H, W, C]``) array."""
    Image = _pil()
    try:
        with Image.open(path) as im:
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grey: scale, do not saturate
                wide = np.asarray(im, dtype=np.float64)
                wide = wide / 257.0 if wide.max(initial=0) > 255 else wide  # 65535 -> 255
                im = Image.fromarray(np.clip(np.round(wide), 0, 255).astype(np.uint8))
            im = im.convert("L" if pp.channel_order == "GRAY" else "RGB")
            if isinstance(pp.resize, tuple):
                if im.size != (pp.resize[1], pp.resize[0]):
                    im = im.resize((pp.resize[1], pp.resize[0]), Image.BILINEAR)
            elif pp.resize:
                w, h = im.size
                if w <= h:
                    size = (pp.resize, int(pp.resize * h / w))
                else:
                    size = (int(pp.resize * w / h), pp.resize)
                if size != (w, h):
                    im = im.resize(size, Image.BILINEAR)
            if pp.crop_hw:
                ch, cw = pp.crop_hw
                w, h = im.size
                if ch > h or cw > w:
                    raise CalibrationDataError(
                        f"{path}: image {h}x{w} (HxW) is smaller than the crop {ch}x{cw}; raise resize=, lower crop=, or "
                        f"stretch every image to the input size with resize={ch}x{cw} crop=0"
                    )
                top = int(round((h - ch) / 2.0))
                left = int(round((w - cw) / 2.0))
                im = im.crop((left, top, left + cw, top + ch))
            a = np.asarray(im, dtype=np.float32)  # H, W, 3 RGB (or H, W grey)
            if a.ndim == 2:
                a = a[:, :, None]
    except CalibrationDataError:
        raise
    except Exception as e:
        raise UnreadableImageError(f"cannot read image {path} ({type(e).__name__}: {str(e)[:120]})") from None
    if pp.channel_order == "BGR":
        a = a[:, :, ::-1]
    a = a * np.float32(pp.scale)
    channels = a.shape[2]
    a = (a - np.asarray(pp.mean[:channels], np.float32)) / np.asarray(pp.std[:channels], np.float32)
    if pp.layout == "NCHW":
        a = a.transpose(2, 0, 1)
    out = np.dtype(pp.dtype)
    if out.kind in "ui":  # integer pixels: round and keep in range instead of wrapping around
        info = np.iinfo(out)
        a = np.clip(np.rint(a), info.min, info.max)
    return np.ascontiguousarray(a[None], dtype=out)


def _fit_to_input(pp: ImagePreprocess, spec) -> ImagePreprocess:
    """Check (and where the user left it open, adapt) the pipeline to the model input."""
    if spec.rank is not None and spec.rank != 4:
        raise CalibrationDataError(
            f"--calib-images needs a model whose input is an image batch of rank 4; input {spec.describe()} is not"
        )
    if (spec.dtype is not None and spec.dtype != np.dtype(pp.dtype) and (spec.dtype.kind == "f" or spec.dtype == BFLOAT16)
            and pp.dtype == ImagePreprocess.dtype):  # a float16 (or float64, bfloat16) model: same pixels, its type
        pp = dataclasses.replace(pp, dtype=str(spec.dtype))
    if (spec.dtype == np.uint8 and pp.dtype in (ImagePreprocess.dtype, "uint8") and pp.scale == IMAGENET.scale
            and pp.mean == IMAGENET.mean and pp.std == IMAGENET.std):  # normalised floats mean nothing as uint8
        pp = dataclasses.replace(pp, dtype="uint8", scale=1.0, mean=(0.0,), std=(1.0,))
    if spec.dtype is not None and spec.dtype != np.dtype(pp.dtype):
        raw = " scale=1 mean=0 std=1" if spec.dtype.kind in "ui" else ""
        raise CalibrationDataError(
            f"input {spec.describe()} is {spec.dtype}; add dtype={spec.dtype}{raw} to --preprocess if that is right"
        )
    if spec.shape is not None:
        c_axis = 1 if pp.layout == "NCHW" else 3
        if spec.shape[c_axis] == 1 and pp.channel_order != "GRAY":  # a greyscale model (text lines, OCR)
            if len(set(pp.mean)) != 1 or len(set(pp.std)) != 1:
                raise CalibrationDataError(
                    f"input {spec.describe()} takes 1-channel (grey) images: give one mean= and std= value in "
                    f"--preprocess (e.g. mean=0.5 std=0.5, or mean=0 std=1), not {pp.mean} / {pp.std}")
            pp = dataclasses.replace(pp, channel_order="GRAY")
        if pp.channel_order == "GRAY" and spec.shape[c_axis] not in (None, 1):
            raise CalibrationDataError(f"order=GRAY makes 1-channel images but input {spec.describe()} has "
                                       f"{spec.shape[c_axis]} channels at axis {c_axis}; drop order=GRAY")
        if pp.channel_order != "GRAY" and spec.shape[c_axis] not in (None, 3):
            other, o_axis = ("NHWC", 3) if pp.layout == "NCHW" else ("NCHW", 1)
            if spec.shape[o_axis] in (None, 3):
                raise CalibrationDataError(
                    f"input {spec.describe()} does not have 3 channels at axis {c_axis} ({pp.layout}); try layout={other}"
                )
            raise CalibrationDataError(
                f"input {spec.describe()} has no 3-channel axis: --calib-images makes RGB/BGR images; give the "
                "samples with --calib-data instead"
            )
        hw = (spec.shape[2], spec.shape[3]) if pp.layout == "NCHW" else (spec.shape[1], spec.shape[2])
        if all(isinstance(d, int) for d in hw) and pp.output_hw != hw:
            size = f"{hw[0]}" + ("" if hw[0] == hw[1] else f"x{hw[1]}")
            got = "x".join(str(d) for d in pp.output_hw) if pp.output_hw else "of varying size"
            raise CalibrationDataError(
                f"input {spec.describe()} needs {hw[0]}x{hw[1]} (HxW) images but the preprocessing makes them {got}; "
                + (f"set crop={size}" if pp.crop_hw else f"set resize={hw[0]}x{hw[1]} crop=0, or crop={size}")
            )
    return pp


def from_images(folder: str | os.PathLike, pp: ImagePreprocess = IMAGENET, *, input_name: str | None = None):
    """Calibration data from every image under ``folder`` (one feed per image)."""
    from onnxq.data import CalibrationData

    files = image_files(folder)

    def pick(specs):
        if input_name is not None:
            found = [s for s in specs if s.name == input_name]
            if not found:
                raise CalibrationDataError(f"the model has no input {input_name!r}")
            if len(specs) > 1:
                raise CalibrationDataError("--calib-images feeds single-input models only")
            return found[0]
        if len(specs) != 1:
            raise CalibrationDataError(
                "--calib-images feeds single-input models only; this one has " + ", ".join(s.name for s in specs)
            )
        return specs[0]

    def precheck(specs) -> None:
        _fit_to_input(pp, pick(specs))

    unreadable: set[Path] = set()  # warned about once, however many passes the calibration makes

    def factory(specs) -> Iterator[tuple[str, dict]]:
        spec = pick(specs)
        fitted = _fit_to_input(pp, spec)
        for p in files:
            try:
                x = load_image(p, fitted)
            except UnreadableImageError as e:  # one broken file in a folder of photos: skip it, say so
                if p not in unreadable:
                    unreadable.add(p)
                    logger.warning("skipping it: %s", e)
                if len(unreadable) == len(files):
                    raise CalibrationDataError(f"none of the {len(files)} images under {folder} can be read; "
                                               f"the first: {e}") from None
                continue
            yield str(p), {spec.name: x}

    return CalibrationData(factory, description=f"images in {folder}", length=len(files), precheck=precheck)
