"""Recipes: frozen, versioned, validated descriptions of what to quantize and how.

Dispatch happens on the recipe's type (``functools.singledispatch`` in ``onnxq.api``),
never on a string. ``load_recipe`` reads TOML and rejects unknown keys.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Mapping

from onnxq.errors import RecipeError

__all__ = [
    "Recipe",
    "NodeSelection",
    "DynamicInt8",
    "StaticInt8",
    "WeightOnlyInt4",
    "RECIPE_NAMES",
    "recipe_class",
    "load_recipe",
    "recipe_from_mapping",
]


@dataclasses.dataclass(frozen=True)
class NodeSelection:
    """Which nodes a recipe may touch: op types, then excludes (names or regexes).

    ``exclude`` entries match a node's name exactly, or as a full regex when they contain
    regex metacharacters; ``include`` (if given) restricts to matching names."""

    op_types: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for field in ("op_types", "exclude", "include"):
            value = getattr(self, field)
            if isinstance(value, str):
                raise RecipeError(f"{field} must be a list of strings, got the string {value!r}")
            object.__setattr__(self, field, tuple(value))
        for pattern in (*self.exclude, *self.include):
            try:
                re.compile(pattern)
            except re.error as e:
                raise RecipeError(f"bad name pattern {pattern!r}: {e}") from None


def _tuple_fields(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, str):
            raise RecipeError(f"{name} must be a list, got the string {value!r}")
        object.__setattr__(obj, name, tuple(value))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Base of every recipe. ``name`` is the CLI spelling, ``version`` the schema version."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    op_types: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _tuple_fields(self, "op_types", "exclude", "include")
        for f in dataclasses.fields(self):  # values from a TOML recipe: the type of the default
            value, default = getattr(self, f.name), f.default
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise RecipeError(f"{f.name} must be true or false, not {value!r}")
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise RecipeError(f"{f.name} must be a whole number, not {value!r}")
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise RecipeError(f"{f.name} must be a finite number, not {value!r}")
            elif isinstance(default, str) and not isinstance(value, str):
                raise RecipeError(f"{f.name} must be a string, not {value!r}")
        for name in ("op_types", "exclude", "include"):
            bad = [v for v in getattr(self, name) if not isinstance(v, str)]
            if bad:
                raise RecipeError(f"{name} must be a list of strings (names or regular expressions), not {bad[0]!r}")
        NodeSelection(self.op_types, self.exclude, self.include)  # validates patterns

    @property
    def selection(self) -> NodeSelection:
        return NodeSelection(self.op_types, self.exclude, self.include)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"recipe": self.name, "version": self.version}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


@dataclasses.dataclass(frozen=True)
class DynamicInt8(Recipe):
    """Weights int8 offline (per output channel), activations quantized at run time;
    embedding tables (Gather) int8 with one scale per row.

    ``fused``: emit ORT's ``com.microsoft.DynamicQuantizeMatMul`` instead of the standard
    DynamicQuantizeLinear + MatMulInteger chain. ``reduce_range``: 7-bit weights, only for
    CPUs whose u8s8 dot product saturates (no VNNI). ``sum_rewrites``: see StaticInt8."""

    name: ClassVar[str] = "int8-dynamic"
    # Conv is opt-in: ORT CPU runs ConvInteger several times slower than a float Conv
    # LSTM: ORT's com.microsoft.DynamicQuantizeLSTM (no standard-op form exists)
    op_types: tuple[str, ...] = ("MatMul", "Gemm", "Gather", "LSTM")
    per_channel: bool = True
    reduce_range: bool = False
    fused: bool = False
    min_weight_elements: int = 1024
    sum_rewrites: bool = True
    # one activation scale per row (token) instead of per tensor: "products" for a MatMul/Gemm
    # whose input is a product of two separately computed activations (a gated MLP's down
    # projection, SiLU(gate) * up), "all" for every one, "none" for none (ORT's quantize_dynamic);
    # not with fused (its op takes one scale per tensor). SmolLM2-135M perplexity (fp32 4.31):
    # none 8.21, products 4.70 at +10 % time, all 4.47 at +24 % (128 tokens, 1 thread;
    # bench/bench_dynamic_smollm2.py)
    token_scales: str = "products"

    _TOKEN_SCALES: ClassVar[tuple[str, ...]] = ("none", "products", "all")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.token_scales not in self._TOKEN_SCALES:
            raise RecipeError(f"token_scales must be one of {', '.join(self._TOKEN_SCALES)}, got {self.token_scales!r}")
        unsupported = set(self.op_types) - {"MatMul", "Gemm", "Conv", "Gather", "LSTM"}
        if unsupported:
            raise RecipeError(
                f"int8-dynamic cannot quantize {sorted(unsupported)}; choose from MatMul, Gemm, Conv, Gather, LSTM"
            )
        if self.min_weight_elements < 0:
            raise RecipeError("min_weight_elements must be >= 0")


@dataclasses.dataclass(frozen=True)
class StaticInt8(Recipe):
    """QDQ int8 with activation ranges calibrated on representative data.

    ``calibration``: how each activation range is chosen. ``mse``: the range with the least
    expected squared quantization error of the tensor; ``percentile``; ``entropy`` (KL);
    ``minmax``: the exact [min, max]. The default, ``auto``, computes mse, percentile and
    minmax ranges from one calibration pass and keeps the set whose model follows the float
    model's outputs best on (up to 32 of) the calibration samples: no one method wins on
    every model (held-out output SQNR, mse / percentile / minmax: MobileNetV2 18.1 / 18.3 /
    13.5 dB, auto 18.1; openWakeWord's embedding model 17.8 / 18.1 / 26.8, auto 26.4; a
    CNN+LSTM OCR model 20.0 / 24.6 / 20.9, auto 24.6). Models over 512 MB of weights get mse.

    ``weight_rounding``: ``nearest`` (default) rounds each weight to nearest; ``gptq`` picks
    the int8 codes of per-channel Conv/Gemm weights by Hessian-guided rounding
    (``onnxq.calib.gptq8``; same scales, one more pass over the calibration data).

    ``refine_biases``: after the QDQ model is written, shift each int8 Conv/Gemm bias, in
    graph order, by the mean difference between the float and the quantized model's output
    of that layer on the calibration data, keeping a shift only where the model's outputs
    get closer to the float model's on that data (``onnxq.calib.refine``; about one pass
    over at most 64 samples per layer). MobileNetV2, 60 photos: output SQNR on the held-out
    photos 18.1 -> 20.4 dB, at ~30 s; but open_nsfw (ResNet-50) 28.7 -> 27.8 dB on the same
    photos: it fits the calibration data, check it on held-out data.

    ``quantize_islands``: also quantize Add/Mul/Concat/pools/Resize that are not linked
    to a quantized Conv/MatMul/Gemm (off: they stay float, see ``passes.insert_qdq``).

    ``Gather`` in ``op_types``: constant float tables read by Gather (embeddings) are stored
    int8 with one scale per row, as int8-dynamic stores them (``Gather`` of the int8 rows and
    their scales, ``Cast``, ``Mul``: only the rows looked up are dequantized; no QDQ).

    ``sum_rewrites``: float Adds that ONNX Runtime CPU would fuse into slower kernels are
    written as ``Sum`` (same result): a residual Add feeding a LayerNormalization (fused into
    SkipLayerNormalization, measured 8x slower than the two ops) and the Add right after an
    int8 MatMul whose result stays float (folded with the MatMul into a float Gemm); targets
    other than ONNX Runtime turn it off (``--target``)."""

    name: ClassVar[str] = "int8-static"
    op_types: tuple[str, ...] = (
        "Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul", "Concat",
        "MaxPool", "AveragePool", "GlobalAveragePool", "Resize", "Gather", "LSTM",
    )
    calibration: str = "auto"  # auto | minmax | percentile | entropy | mse
    percentile: float = 99.999
    activation_type: str = "uint8"  # uint8 | int8 | uint16 | int16
    weight_type: str = "int8"
    per_channel: bool = True
    symmetric_activations: bool = False
    max_samples: int = 0  # 0: all
    batch_size: int = 1
    # per tensor name: activation_type, symmetric, calibration, percentile, range = [lo, hi]
    tensor_overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    # shift Conv/Gemm biases by the mean error that weight rounding causes (needs the
    # per-channel input means, gathered during calibration at almost no cost)
    bias_correction: bool = True
    # scale the channels of a Relu/Clip output that feeds depthwise convolutions so that
    # every channel uses the whole uint8 range (the factor moves, exactly, into the
    # per-channel weight scales on both sides)
    channel_equalization: bool = True
    # integer values of the per-channel int8 Conv/Gemm weights: "nearest" (round to
    # nearest) or "gptq" (Hessian-guided rounding that minimises each layer's output error
    # on the calibration data, same scales; onnxq.calib.gptq8). MobileNetV2: +0.4 dB output
    # SQNR on held-out photos (5 splits), at one more pass over the data (~4x an fp32 pass)
    # and one float64 K x K matrix per layer held during it (K = Cin*kh*kw: 170 MB for a
    # 3x3 conv of 512 channels) -- hence opt-in. One-pass iterables (a generator) cannot
    # be read twice: they get round to nearest, with a warning.
    weight_rounding: str = "nearest"
    # after the QDQ model is written: shift each int8 Conv/Gemm bias, in graph order, by the
    # mean difference between the float and the quantized model's output of that layer on
    # the calibration data, kept only where the model outputs' error on that data drops
    # (onnxq.calib.refine). MobileNetV2: +1.7 dB output SQNR on held-out photos, at about
    # one pass over (at most 64 of) the samples per layer -- hence opt-in
    refine_biases: bool = False
    # also quantize Add/Mul/Concat/pool/Resize nodes that no quantized Conv/MatMul/Gemm
    # feeds or reads (through reshapes and Relu/Clip): off by default, since alone they run
    # no faster in int8 and only add rounding error; runtimes that run quantized graphs only
    # (the qnn target) turn it on
    quantize_islands: bool = False
    # a MatMul/Gemm (constant weight) result that only float ops read -- a transformer's
    # attention-output and FFN-down projections into the float residual stream -- is not
    # rounded to 8 bits: ORT CPU runs int8 inputs with a float result (MatMulIntegerToFloat,
    # QGemm). all-MiniLM-L6-v2: embedding cosine 0.952 -> 0.992. Off for runtimes whose
    # quantized node units need a Q on the output (the ort-mobile and qnn targets)
    float_matmul_results: bool = True
    # the same for a Conv/ConvTranspose result (through a folded Relu/Clip) that only float
    # ops read. Off by default: ORT CPU fuses a Conv into QLinearConv only with a Q on its
    # result. On for the openvino target (its Conv runs int8 from quantized data and weights)
    float_conv_results: bool = False
    sum_rewrites: bool = True

    _CALIBRATIONS: ClassVar[tuple[str, ...]] = ("minmax", "percentile", "entropy", "mse", "auto")
    _OVERRIDE_KEYS: ClassVar[tuple[str, ...]] = ("activation_type", "symmetric", "calibration", "percentile", "range")
    _OP_TYPES: ClassVar[frozenset[str]] = frozenset(
        {"Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul", "Concat", "MaxPool", "AveragePool",
         "GlobalAveragePool", "Resize", "Gather", "LSTM"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.calibration not in self._CALIBRATIONS:
            raise RecipeError(
                f"unknown calibration method {self.calibration!r}; choose one of {', '.join(self._CALIBRATIONS)}"
            )
        if self.activation_type not in ("uint8", "int8", "uint16", "int16"):
            raise RecipeError(f"activation_type must be uint8, int8, uint16 or int16, not {self.activation_type!r}")
        if self.weight_type not in ("int8", "uint8"):
            raise RecipeError(f"weight_type must be int8 or uint8, not {self.weight_type!r}")
        if not 0 < self.percentile <= 100:
            raise RecipeError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.weight_rounding not in ("nearest", "gptq"):
            raise RecipeError(f"weight_rounding must be nearest or gptq, not {self.weight_rounding!r}")
        if self.batch_size < 1:
            raise RecipeError(f"batch_size must be >= 1, not {self.batch_size}")
        if self.max_samples < 0:
            raise RecipeError(f"max_samples (--max-samples) must be >= 0 (0: all samples), not {self.max_samples}")
        unsupported = set(self.op_types) - self._OP_TYPES
        if unsupported:
            raise RecipeError(
                f"int8-static cannot quantize {sorted(unsupported)}; choose from {', '.join(sorted(self._OP_TYPES))}"
            )
        overrides = {}
        if not isinstance(self.tensor_overrides, Mapping):
            raise RecipeError("tensor_overrides must be a table: tensor name -> its settings")
        for tensor, entry in dict(self.tensor_overrides).items():
            if not isinstance(entry, Mapping):
                raise RecipeError(f"tensor_overrides[{tensor!r}] must be a table of settings")
            unknown = sorted(set(entry) - set(self._OVERRIDE_KEYS))
            if unknown:
                raise RecipeError(
                    f"tensor_overrides[{tensor!r}]: unknown key(s) {', '.join(unknown)}; known: {', '.join(self._OVERRIDE_KEYS)}"
                )
            entry = dict(entry)
            if "activation_type" in entry and entry["activation_type"] not in ("uint8", "int8", "uint16", "int16"):
                raise RecipeError(f"tensor_overrides[{tensor!r}]: bad activation_type {entry['activation_type']!r}")
            if "calibration" in entry and entry["calibration"] not in self._CALIBRATIONS:
                raise RecipeError(f"tensor_overrides[{tensor!r}]: bad calibration {entry['calibration']!r}")
            if "percentile" in entry and not 0 < float(entry["percentile"]) <= 100:
                raise RecipeError(f"tensor_overrides[{tensor!r}]: percentile must be in (0, 100]")
            if "range" in entry:
                r = entry["range"]
                ok = (not isinstance(r, (str, Mapping)) and hasattr(r, "__len__") and len(r) == 2
                      and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in r))
                if not ok or not float(r[0]) <= float(r[1]):
                    raise RecipeError(f"tensor_overrides[{tensor!r}]: range must be [lo, hi], finite numbers with lo <= hi")
                entry["range"] = (float(r[0]), float(r[1]))
            overrides[tensor] = entry
        object.__setattr__(self, "tensor_overrides", overrides)


@dataclasses.dataclass(frozen=True)
class WeightOnlyInt4(Recipe):
    """Block-int4 weight-only quantization of MatMul weights.

    ``algorithm``: ``rtn`` (min/max round to nearest), ``hqq`` (half-quadratic scale/zero
    optimisation, no data), ``gptq`` (Hessian-guided rounding, needs calibration data),
    ``awq`` (activation-aware channel scaling + activation-weighted clip search, needs data),
    or ``awq+gptq`` / ``awq+hqq`` (AWQ scaling, then that algorithm). ``scale_search``: pick
    each block's scale by a clip search (rtn/gptq; GPTQ weights it by the Hessian diagonal;
    default on for GPTQ, off for RTN). GPTQ: ``act_order`` (rows by decreasing Hessian
    diagonal), ``percdamp`` (dampening, a fraction of the mean Hessian diagonal; the classic
    0.01: on SmolLM2-135M with act-order and the scale search, 0.01-0.03 beat 0.001 and 0.1),
    ``refit_scales`` (after GPTQ, re-fit each column's block scales by least squares on the
    layer's output error for the chosen codes; about two more ``K x K x N`` products).
    ``keep_8bit``/``keep_float``: node-name
    patterns (e.g. ``/lm_head/MatMul``) kept in int8 (per-channel DequantizeLinear) or float.
    ``calib_samples`` windows of ``calib_seq_len`` tokens feed GPTQ/AWQ from calibration text;
    ``first_token_weight``: how many times each window's first position (a causal LM's
    attention sink) counts in the Hessian (``onnxq.int4.calibrate``).
    ``calib_memory_mb``: the float64 ``K x K`` Hessians held in memory at once while
    calibrating; layers beyond it are calibrated in further passes over the same samples and
    their Hessians kept on disk until used (``onnxq.int4.calibrate``).
    ``float_heads``: leave small output heads in float -- the layers on pooled (rank-2)
    features whose results reach a model output with at most 5 % of the selected weights
    from them on (a BERT pooler and classifier, a ViT/Swin head; not an LLM's lm_head, which
    reads every position): in int4 they cost the output most of its accuracy (small BERTs:
    27 -> 19 dB) and save almost nothing.
    ``accuracy_tolerance``: largest relative output error vs the reference that
    ``accuracy_level`` 4 (int8 activations; MatMulNBits and MatMulBlockInt4) may add on a layer before level 1 (fp32) is used.
    ``sum_rewrites`` (qdq format): the Add right after an int4 MatMul is written as ``Sum``:
    ONNX Runtime CPU folds ``MatMul -> Add (-> Relu)`` into a float (Fused)Gemm before it turns
    the blocked DequantizeLinear + MatMul into MatMulNBits, and then dequantizes the weight on
    every run (openWakeWord's 3-layer MLP: 168 µs instead of 9.4); targets other than ONNX
    Runtime turn it off.
    """

    name: ClassVar[str] = "int4-weight-only"
    op_types: tuple[str, ...] = ("MatMul", "Gemm")
    block_size: int = 128
    symmetric: bool = True
    algorithm: str = "rtn"  # rtn | hqq | gptq | awq | awq+gptq | awq+hqq
    format: str = "qdq"  # qdq | matmulnbits | onnxq
    accuracy_level: int | None = None  # matmulnbits/onnxq formats; None: chosen by measured parity
    keep_8bit: tuple[str, ...] = ()  # node-name patterns quantized to int8 instead
    keep_float: tuple[str, ...] = ()  # node-name patterns left in float
    scale_search: bool | None = None  # None: on for GPTQ (Hessian-weighted), off for RTN
    act_order: bool = True
    percdamp: float = 0.01
    refit_scales: bool = False  # GPTQ: least-squares block scales for the chosen codes
    hqq_iters: int = 20
    awq_grid: int = 20
    awq_activation_mul: bool = True
    calib_samples: int = 16
    calib_seq_len: int = 512
    first_token_weight: float = 1.0  # GPTQ/AWQ: weight of each sample's first position in H
    calib_memory_mb: int = 4096  # GPTQ/AWQ: Hessians held in RAM at once (more: extra passes, spilled to disk); 0: no bound
    accuracy_tolerance: float = 0.01
    sum_rewrites: bool = True
    float_heads: bool = True  # small output heads on pooled features (classifiers, poolers) stay float
    # a weight whose K is not a multiple of block_size: "int4" (a shorter last block, as ORT runs it)
    # or "int8" (per channel: for runtimes that refuse a ragged blocked DequantizeLinear, OpenVINO)
    ragged_k: str = "int4"
    # symmetric blocks: a positive extreme weight maps to +7 with a positive scale instead of to -8
    # with a negative one (TensorRT takes positive scales only); rtn, gptq and awq
    positive_scales: bool = False

    _ALGORITHMS: ClassVar[tuple[str, ...]] = ("rtn", "hqq", "gptq", "awq", "awq+gptq", "awq+hqq")
    _FORMATS: ClassVar[tuple[str, ...]] = ("qdq", "matmulnbits", "onnxq")

    @property
    def needs_calibration(self) -> bool:
        return "gptq" in self.algorithm or "awq" in self.algorithm

    def __post_init__(self) -> None:
        super().__post_init__()
        _tuple_fields(self, "keep_8bit", "keep_float")
        from onnxq.formats import SUPPORTED_BLOCK_SIZES

        if self.block_size not in SUPPORTED_BLOCK_SIZES:
            raise RecipeError(f"block_size {self.block_size} is not supported; use one of {SUPPORTED_BLOCK_SIZES}")
        if self.algorithm not in self._ALGORITHMS:
            raise RecipeError(f"unknown algorithm {self.algorithm!r}; choose one of {', '.join(self._ALGORITHMS)}")
        if self.format not in self._FORMATS:
            raise RecipeError(f"unknown format {self.format!r}; choose one of {', '.join(self._FORMATS)}")
        if self.accuracy_level is not None and self.accuracy_level not in (0, 1, 2, 3, 4):
            raise RecipeError("accuracy_level must be 0..4")
        if not 0 <= self.percdamp < 1:
            raise RecipeError(f"percdamp must be in [0, 1), got {self.percdamp}")
        if self.hqq_iters < 0 or self.awq_grid < 1:
            raise RecipeError("hqq_iters must be >= 0 and awq_grid >= 1")
        if not self.first_token_weight >= 0:
            raise RecipeError(f"first_token_weight must be >= 0, got {self.first_token_weight}")
        if self.calib_memory_mb < 0:
            raise RecipeError(f"calib_memory_mb must be >= 0 (0: no bound), got {self.calib_memory_mb}")
        if self.calib_samples < 1 or self.calib_seq_len < 2:
            raise RecipeError("calib_samples must be >= 1 and calib_seq_len >= 2")
        if not self.accuracy_tolerance > 0:
            raise RecipeError("accuracy_tolerance must be > 0")
        if self.ragged_k not in ("int4", "int8"):
            raise RecipeError(f"ragged_k must be int4 or int8, got {self.ragged_k!r}")
        if self.positive_scales and "hqq" in self.algorithm and self.symmetric:
            raise RecipeError("positive_scales is not available with symmetric hqq (it fits the scale freely); "
                              "use rtn, gptq or awq")


_RECIPES: dict[str, type[Recipe]] = {cls.name: cls for cls in (DynamicInt8, StaticInt8, WeightOnlyInt4)}
RECIPE_NAMES = tuple(_RECIPES)


def recipe_class(name: str) -> type[Recipe]:
    try:
        return _RECIPES[name]
    except KeyError:
        raise RecipeError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPE_NAMES)}") from None


def recipe_from_mapping(data: Mapping[str, Any], *, default_name: str | None = None) -> Recipe:
    """Build a recipe from a mapping (e.g. parsed TOML); unknown keys are an error."""
    data = dict(data)
    name = data.pop("recipe", default_name)
    if name is None:
        raise RecipeError("the recipe file must say which recipe it is: recipe = \"int8-dynamic\" (or int8-static, int4-weight-only)")
    cls = recipe_class(name)
    version = data.pop("version", cls.version)
    if version != cls.version:
        raise RecipeError(f"recipe {name!r} version {version} is not supported (this onnxq reads version {cls.version})")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RecipeError(f"unknown key(s) {', '.join(unknown)} for recipe {name!r}; known: {', '.join(sorted(known))}")
    try:
        return cls(**data)
    except TypeError as e:
        raise RecipeError(f"bad value in recipe {name!r}: {e}") from None


def load_recipe(path: str | Path, *, default_name: str | None = None) -> Recipe:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe file {path} does not exist") from None
    except UnicodeDecodeError:
        raise RecipeError(f"recipe file {path} is not UTF-8 text (TOML files are UTF-8)") from None
    except IsADirectoryError:
        raise RecipeError(f"recipe file {path} is a folder; give a .toml file") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"recipe file {path} is not valid TOML: {e}") from None
    return recipe_from_mapping(data, default_name=default_name)
