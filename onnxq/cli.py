"""`onnxq` command line: thin commands over the Python API (imports deferred)."""

from __future__ import annotations

import logging
import os
import sys

import click

from onnxq import __version__

# exit status of `onnxq quantize` when --target-sqnr / --max-drop was not reached: the
# closest model found is written, but a build script must not take it for a success
TARGET_MISSED_EXIT = 3


class _Group(click.Group):
    """Turns onnxq errors into one-line messages and other failures into a short notice."""

    def invoke(self, ctx: click.Context):
        from onnxq.errors import OnnxqError

        try:
            return super().invoke(ctx)
        except OnnxqError as e:
            raise click.ClickException(str(e)) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as e:  # a bug, not bad input: short notice, traceback with --debug
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise click.ClickException(
                f"internal error ({type(e).__name__}: {str(e)[:200]}); rerun with --debug and report it"
            ) from None


def _console():
    """A rich console for the command's report: no markup (names from the model may hold
    '[...]'), and, when the output is not a terminal (a log, a pipe), 160 columns instead of
    rich's 80, so that table cells (node names, fix commands) are not cut to '…'."""
    from rich.console import Console

    console = Console(markup=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(markup=False, width=160)
    return console


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="onnxq")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.pass_context
def main(ctx: click.Context, verbose: int, debug: bool) -> None:
    """onnxq: quantize ONNX models (int8 static/dynamic, block-int4 weight-only)."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    _exit_cleanly_on_sigterm()
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    from rich.logging import RichHandler

    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(show_path=False)])


def _exit_cleanly_on_sigterm() -> None:
    """SIGTERM (``kill``, ``timeout``) ends the command through SystemExit, so that temp
    files are removed as on Ctrl-C instead of the process dying where it stands."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    try:
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # an embedding program's own handler stays
            signal.signal(signal.SIGTERM, stop)
    except (ValueError, OSError):  # pragma: no cover
        pass


def _split_csv(values: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return tuple(out)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=str), help="Output .onnx path.")
@click.option("--recipe", "recipe_name", default=None, help="int8-dynamic, int8-static or int4-weight-only (default: int4-weight-only when an int4 option is given, int8-static with --calib-data/--calib-images, else int8-dynamic).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=str), help="Recipe TOML file.")
@click.option("--exclude", multiple=True, help="Node names or regexes to leave in float (repeatable, comma-separated).")
@click.option("--include", multiple=True, help="Only quantize nodes with these names or regexes.")
@click.option("--op-types", multiple=True, help="Op types to quantize, e.g. MatMul,Gemm.")
@click.option("--fused", is_flag=True, default=None, help="int8-dynamic: emit ORT's fused com.microsoft op.")
@click.option("--token-scales", type=click.Choice(["none", "products", "all"]), default=None,
              help="int8-dynamic: one activation scale per token for MatMuls whose input is a product of two "
                   "activation branches (gated MLP down projections; default), for all, or for none (one per "
                   "tensor, as ORT).")
@click.option("--no-verify", is_flag=True, help="Skip the checker + ORT load check of the output.")
@click.option("--calib-data", type=click.Path(path_type=str), help="int8-static, and int4 gptq/awq for models without text input: calibration samples, an .npz (key = input name, first axis = samples) or a folder of .npy/.npz files.")
@click.option("--calib-images", type=click.Path(path_type=str), help="int8-static, int4 gptq/awq: a folder of images (searched recursively) for an image model.")
@click.option("--preprocess", multiple=True, help="With --calib-images: 'imagenet' (the default) and/or key=value words: resize=256 crop=224 mean=0.485,0.456,0.406 std=0.229,0.224,0.225 scale=1/255 layout=NCHW|NHWC order=RGB|BGR|GRAY (a 1-channel input gets GRAY); resize=HxW crop=0 stretches to an exact size.")
@click.option("--calibration", type=click.Choice(["minmax", "percentile", "entropy", "mse", "auto"]), default=None, help="int8-static: how activation ranges are chosen (auto: mse, percentile and minmax from one calibration pass, the one whose outputs follow the float model best on the calibration data).")
@click.option("--weight-rounding", type=click.Choice(["nearest", "gptq"]), default=None, help="int8-static: integer weight values by round to nearest (default) or GPTQ on the calibration data (lower layer error; one more pass over the data).")
@click.option("--refine-biases", is_flag=True, default=None, help="int8-static: after calibration, shift each int8 Conv/Gemm bias by its layer's mean error on the calibration data, kept where the outputs' error drops (about one pass over up to 64 samples per layer).")
@click.option("--max-samples", type=int, default=None, help="int8-static: calibrate on at most this many samples.")
@click.option("--target-sqnr", type=float, default=None, help="int8-static: keep the nodes that add the most error in float until every output's SQNR on the calibration data is at least DB (not reached: the closest model is written, exit 3).")
@click.option("--max-drop", type=float, default=None, help="int8-static: keep the nodes that add the most error in float until at most PCT % of the calibration samples change their top-1 class (not reached: exit 3).")
@click.option("--float-budget", type=float, default=None, help="With --target-sqnr/--max-drop: at most PCT % of the Conv/Gemm/MatMul multiply-adds and of their weights kept in float (default: 15 % of the multiply-adds, 2 % of the weights).")
@click.option("--target", default=None, help="Runtime to quantize for: ort-cpu (default), ort-mobile, openvino, tensorrt, qnn (README: Targets).")
@click.option("--block-size", type=int, default=None, help="int4-weight-only: block length along K (16, 32, 64, 128, 256).")
@click.option("--algo", type=click.Choice(["rtn", "hqq", "gptq", "awq", "awq+gptq", "awq+hqq"]), default=None, help="int4-weight-only: algorithm (gptq/awq need --calib-text, or --calib-data/--calib-images).")
@click.option("--format", "int4_format", type=click.Choice(["qdq", "matmulnbits", "onnxq"]), default=None, help="int4-weight-only: opset-21 DequantizeLinear, ORT MatMulNBits, or com.onnxq.MatMulBlockInt4.")
@click.option("--calib-text", type=click.Path(dir_okay=False, path_type=str), help="int8-static, int4-weight-only (gptq/awq): calibration text for a language model or text encoder: token ids (.npy) or a text file (tokenised with --tokenizer).")
@click.option("--tokenizer", type=click.Path(dir_okay=False, path_type=str), help="With a text --calib-text: a tokenizer.json (default: tokenizer.json beside MODEL).")
@click.option("--calib-seq-len", type=int, default=None, help="With --calib-text: tokens per sample at most (int8-static, default 128: lower it for a model with fewer positions) or per window (int4, default 512).")
@click.option("--symmetric/--asymmetric", default=None, help="int4-weight-only: symmetric blocks (no zero points) or uint4 zero points.")
@click.option("--accuracy-level", type=click.IntRange(0, 4), default=None, help="int4-weight-only, --format matmulnbits/onnxq: fixed accuracy_level (default: chosen per layer by measured parity).")
@click.option("--keep-float", multiple=True, help="int4-weight-only: node names/regexes left in float (e.g. /lm_head/MatMul).")
@click.option("--keep-8bit", multiple=True, help="int4-weight-only: node names/regexes quantized to int8 per channel instead.")
def quantize(model, output, recipe_name, config_path, exclude, include, op_types, fused, token_scales, no_verify,
             calib_data, calib_images, preprocess, calibration, refine_biases, max_samples, weight_rounding=None, target_sqnr=None, max_drop=None,
             float_budget=None, target=None,
             block_size=None, algo=None, int4_format=None, calib_text=None, tokenizer=None, calib_seq_len=None, symmetric=None,
             accuracy_level=None, keep_float=(), keep_8bit=()):
    """Quantize MODEL and write the result to OUTPUT."""
    import dataclasses
    import math
    import time
    from pathlib import Path

    from onnxq import api, modelio, recipes
    from onnxq.errors import RecipeError
    from onnxq.verify import VerificationError, check_model_file

    if config_path:
        recipe = recipes.load_recipe(config_path, default_name=recipe_name)
        if recipe_name and recipe.name != recipe_name:
            raise RecipeError(f"--recipe {recipe_name} disagrees with {config_path}, which is a {recipe.name} recipe")
    else:
        int4_given = any(v for v in (block_size, algo, int4_format, calib_text, keep_float, keep_8bit)) or (
            symmetric is not None or accuracy_level is not None
        )
        default = "int4-weight-only" if int4_given else "int8-static" if (calib_data or calib_images) else "int8-dynamic"
        recipe = recipes.recipe_class(recipe_name or default)()
    overrides: dict = {}
    if exclude:
        overrides["exclude"] = tuple(recipe.exclude) + _split_csv(exclude)
    if include:
        overrides["include"] = _split_csv(include)
    if op_types:
        overrides["op_types"] = _split_csv(op_types)
    if fused is not None:
        if not isinstance(recipe, recipes.DynamicInt8):
            raise RecipeError("--fused applies to the int8-dynamic recipe only")
        overrides["fused"] = fused
    if token_scales is not None:
        if not isinstance(recipe, recipes.DynamicInt8):
            raise RecipeError("--token-scales applies to the int8-dynamic recipe only")
        overrides["token_scales"] = token_scales
    static_options = {"calibration": calibration, "max_samples": max_samples, "weight_rounding": weight_rounding,
                      "refine_biases": refine_biases}
    for key, value in static_options.items():
        if value is not None:
            if not isinstance(recipe, recipes.StaticInt8):
                raise RecipeError(f"--{key.replace('_', '-')} applies to the int8-static recipe only")
            overrides[key] = value
    data = None
    if calib_data or calib_images or preprocess:
        if not isinstance(recipe, (recipes.StaticInt8, recipes.WeightOnlyInt4)):
            raise RecipeError("--calib-data/--calib-images/--preprocess apply to the int8-static and int4-weight-only recipes")
        from onnxq.data import open_calibration_source

        data = open_calibration_source(calib_data, calib_images, preprocess)
    int4_options = {
        "block_size": block_size, "algorithm": algo, "format": int4_format, "symmetric": symmetric,
        "accuracy_level": accuracy_level, "keep_float": _split_csv(keep_float) or None,
        "keep_8bit": _split_csv(keep_8bit) or None,
    }
    for key, value in int4_options.items():
        if value is not None:
            if not isinstance(recipe, recipes.WeightOnlyInt4):
                raise RecipeError(f"--{key.replace('_', '-')} applies to the int4-weight-only recipe only")
            overrides[key] = value
    if overrides:
        try:
            recipe = dataclasses.replace(recipe, **overrides)
        except TypeError as e:
            raise RecipeError(str(e)) from None
    int4_data = None
    if calib_seq_len is not None:
        if not calib_text:
            raise RecipeError("--calib-seq-len applies with --calib-text")
        if calib_seq_len < 2:
            raise RecipeError("--calib-seq-len must be at least 2")
        if isinstance(recipe, recipes.WeightOnlyInt4):
            recipe = dataclasses.replace(recipe, calib_seq_len=calib_seq_len)
    if calib_text or tokenizer:
        if not isinstance(recipe, (recipes.WeightOnlyInt4, recipes.StaticInt8)):
            raise RecipeError("--calib-text/--tokenizer apply to the int8-static and int4-weight-only recipes")
        if data is not None:
            raise RecipeError("give either --calib-text or --calib-data/--calib-images, not both")
        if isinstance(recipe, recipes.StaticInt8):
            data = _text_calibration(model, calib_text, tokenizer, recipe, calib_seq_len)
        else:
            int4_data = _text_calibration(model, calib_text, tokenizer, recipe)
    if isinstance(recipe, recipes.WeightOnlyInt4) and data is not None:
        if not recipe.needs_calibration:
            raise RecipeError(
                f"--algo {recipe.algorithm} uses no calibration data; --calib-data/--calib-images feed gptq and awq"
            )
        int4_data, data = data, None

    target_notes: tuple[str, ...] = ()
    if target is not None:
        from onnxq.targets import apply_target, get_target

        profile = get_target(target)
        if int4_format is not None and int4_format not in profile.int4_formats:  # an explicit choice is not overridden
            raise RecipeError(f"target {profile.name} does not run int4 --format {int4_format}; it runs "
                              f"{', '.join(profile.int4_formats)}")
        recipe, target_notes = apply_target(recipe, target)
    if accuracy_level is not None and getattr(recipe, "format", None) == "qdq":
        raise RecipeError("--accuracy-level applies to --format matmulnbits or onnxq; the qdq format has none "
                          "(ONNX Runtime picks its own kernel for DequantizeLinear + MatMul)")
    modelio.check_output_path(output, protect=(model,))
    accuracy_target = None
    if float_budget is not None and target_sqnr is None and max_drop is None:
        raise RecipeError("--float-budget applies with --target-sqnr or --max-drop")
    if target_sqnr is not None or max_drop is not None:
        if not isinstance(recipe, recipes.StaticInt8):
            raise RecipeError("--target-sqnr/--max-drop apply to the int8-static recipe only")
        if data is None:
            raise RecipeError("--target-sqnr/--max-drop are measured on the calibration data: give --calib-data or --calib-images")
        if target_sqnr is not None and not (math.isfinite(target_sqnr) and target_sqnr > 0):
            raise RecipeError(f"--target-sqnr is an output SQNR in dB above 0 (e.g. 25), not {target_sqnr}")
        if max_drop is not None and not 0 <= max_drop <= 100:
            raise RecipeError("--max-drop is a percentage between 0 and 100")
        if float_budget is not None and not 0 <= float_budget <= 100:
            raise RecipeError("--float-budget is a percentage between 0 and 100")
        from onnxq.sensitivity import AccuracyTarget

        accuracy_target = AccuracyTarget(min_sqnr_db=target_sqnr, max_top1_drop=None if max_drop is None else max_drop / 100)
    t0 = time.perf_counter()
    target_missed = False
    if accuracy_target is not None:
        from onnxq.sensitivity import quantize_static_to_target

        share = {} if float_budget is None else {"max_float_share": float_budget / 100, "max_float_weight_share": float_budget / 100}
        qmodel, report, sensitivity = quantize_static_to_target(model, recipe, data, accuracy_target, **share)
        target_missed = sensitivity is not None and not sensitivity.target_met
    else:
        with _calibration_progress(data if int4_data is None else int4_data) as feeds:
            qmodel, report = api.quantize_with_report(model, recipe, feeds)
    elapsed = time.perf_counter() - t0
    if target is not None:
        from onnxq.targets import finalize_for_target

        target_notes += finalize_for_target(qmodel, target)
        report = dataclasses.replace(report, notes=tuple(report.notes) + tuple(target_notes))
    modelio.save(qmodel, output, protect=(model,))
    agreement = None
    if not no_verify:
        try:
            check_model_file(output)
        except VerificationError as e:  # an invalid model is not left where a deployment would pick it up
            _remove_written(output)
            raise VerificationError(f"{e}; {output} was removed (--no-verify writes it unchecked)") from None
        except BaseException:  # Ctrl-C, SIGTERM (SystemExit), out of memory mid-check: nor is an unchecked one
            _remove_written(output)
            raise
        source = data if data is not None else int4_data
        if source is not None:
            from onnxq.verify import AGREEMENT_SAMPLES, AgreementSkipped, agreement_with_float

            try:
                limit = getattr(recipe, "max_samples", 0) or getattr(recipe, "calib_samples", 0)
                agreement = agreement_with_float(model, output, source,
                                                 **({"samples": min(AGREEMENT_SAMPLES, limit)} if limit else {}))
            except Exception as e:  # the model is written and loads: a skipped or failed comparison is only a note
                why = str(e) if isinstance(e, AgreementSkipped) else f"{type(e).__name__}: {str(e)[:160]}"
                report = dataclasses.replace(report, notes=tuple(report.notes) + (
                    f"no output check against the float model ({why}); run onnxq compare {model} {output} --data DATA",))
    if target is not None:
        from onnxq.targets import export_for_target

        report = dataclasses.replace(report, notes=tuple(report.notes) + export_for_target(output, target))
    _print_summary(report, model, output, modelio.source_bytes(qmodel), elapsed)
    if agreement:
        _print_agreement(agreement, model, output, recipe.name, held_out="--text HELD_OUT.txt" if calib_text else "--data HELD_OUT")
    if target_missed:  # the model is written (the closest the search got); a build script still has to notice
        if sensitivity.over_budget:
            advice = (("the candidates within the float budget did not help and others were over it"
                       if sensitivity.no_gain else "every candidate was over the float budget")
                      + ": raise --float-budget (the note above says how far)")
        elif sensitivity.no_gain:
            advice = ("no node kept in float helped, so a larger --float-budget will not either: try --weight-rounding "
                      "gptq or another --calibration, --exclude nodes `onnxq compare` names, or lower the target")
        else:
            advice = "raise --float-budget, try --weight-rounding gptq, or lower the target"
        click.echo(f"error: accuracy target {accuracy_target.describe()} not met on the calibration data; {output} holds "
                   f"the closest model found; {advice} (exit {TARGET_MISSED_EXIT})", err=True)
        raise SystemExit(TARGET_MISSED_EXIT)


def _remove_written(output: str) -> None:
    """Remove a just-written model (and its external data) that did not pass the check."""
    from pathlib import Path

    for leftover in (Path(output), Path(str(output) + ".data")):
        leftover.unlink(missing_ok=True)


def _median_note(sqnr_db: float | None, median_db: float | None) -> str:
    """", per-sample median SQNR X dB" where the pooled SQNR is more than 6 dB above the median
    sample's (a few large samples make the pooled figure), else ""."""
    if sqnr_db is None or median_db is None or median_db >= sqnr_db - 6:
        return ""
    return f", per-sample median SQNR {median_db:.1f} dB"


def _print_agreement(comparison, model: str, output: str, recipe_name: str = "int8-static",
                     held_out: str = "--data HELD_OUT") -> None:
    """One line per model output: how closely the written model follows the float one."""

    from onnxq.verify import LOW_SQNR_DB

    console = _console()
    for o in comparison.outputs:
        line = (f"check: {o.name!r} vs the float model, {comparison.samples} calibration samples: "
                f"SQNR {o.sqnr_db:.1f} dB, cosine {o.cosine:.4f}")
        median = o.median_sample_sqnr_db
        line += _median_note(o.sqnr_db, median)
        if o.top1_agreement is not None:
            line += f", top-1 agreement {o.top1_agreement:.0%}"
        console.print(line, soft_wrap=True)
        worst = min(o.sqnr_db, o.sqnr_db if median is None else median)
        if o.dominated(comparison.samples):
            console.print(
                f"warning: calibration sample {o.dominant_sample} holds {o.dominant_share:.0%} of output {o.name!r}'s "
                f"energy over {comparison.samples} samples, so the SQNR above is mostly that sample's"
                + (f" (the median sample's: {median:.1f} dB)" if median is not None else "")
                + ". An input far larger than the others also sets the int8 ranges for every input: if it is not "
                "what the model sees in use, leave it out of the calibration data", soft_wrap=True,
            )
        if worst < LOW_SQNR_DB:  # (not on top-1 agreement alone: an embedding's argmax means little)
            what = f"{worst:.1f} dB" + ("" if median is None or median >= o.sqnr_db else " for the median sample")
            console.print(
                f"warning: output {o.name!r} is far from the float model ({what}): "
                f"`onnxq compare {model} {output} --data DATA` names the layers that lose the most; "
                + ("keep them in float with --keep-float NAME or at 8 bits with --keep-8bit NAME"
                   if recipe_name == "int4-weight-only" else
                   "--exclude them, or let --target-sqnr DB choose" if recipe_name == "int8-static" else
                   "--exclude them"), soft_wrap=True,
            )
    console.print(f"(measured on data the model was calibrated on; `onnxq compare {model} {output} {held_out}` "
                  "measures inputs it has not seen)", soft_wrap=True)


def _text_calibration(model: str, calib_text: str | None, tokenizer: str | None, recipe, seq_len: int | None = None):
    """Calibration windows from ``--calib-text`` (token ids .npy, or text + tokenizer): the
    int4 recipe's window fields, or for int8-static one sample per line (at most STATIC_SEQ_LEN
    tokens; inputs like the ones the model will see, not long windows: an encoder calibrated on
    128-token windows of running text and run on sentences lost MiniLM's cosine 0.99 -> 0.88),
    ``max_samples`` (default STATIC_SAMPLES) of them."""
    import os

    from onnxq import recipes
    from onnxq.calib_text import STATIC_SAMPLES, STATIC_SEQ_LEN, TextCalibration
    from onnxq.errors import RecipeError

    if not calib_text:
        raise RecipeError("--tokenizer needs --calib-text")
    if tokenizer is not None and calib_text.endswith(".npy"):
        raise RecipeError(f"--calib-text {calib_text} holds token ids already (.npy): drop --tokenizer, which applies "
                          "to a text file")
    if tokenizer is None and not calib_text.endswith(".npy"):
        beside = os.path.join(os.path.dirname(os.path.abspath(model)), "tokenizer.json")
        tokenizer = beside if os.path.isfile(beside) else None
    if isinstance(recipe, recipes.StaticInt8):
        return TextCalibration(calib_text, tokenizer, seq_len=seq_len or STATIC_SEQ_LEN,
                               n_samples=recipe.max_samples or STATIC_SAMPLES, lines=True)
    return TextCalibration(calib_text, tokenizer, seq_len=recipe.calib_seq_len, n_samples=recipe.calib_samples)


class _calibration_progress:
    """A rich progress bar fed by the calibration data's per-sample callback."""

    def __init__(self, data) -> None:
        self.data = data
        self.progress = None

    def __enter__(self):
        from onnxq.data import CalibrationData

        if not isinstance(self.data, CalibrationData):
            return self.data
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("calibrating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
        )
        task = self.progress.add_task("calibrating", total=self.data.length)
        self.progress.start()

        def advance(done: int, total: int | None) -> None:
            self.progress.update(task, completed=done, total=total)

        return self.data.with_progress(advance)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


def _print_summary(report, model: str, output: str, in_bytes: int | None, elapsed: float) -> None:
    import collections
    import os

    from rich.table import Table

    console = _console()
    out_bytes = os.path.getsize(output)
    data = output + ".data"
    if os.path.exists(data):
        out_bytes += os.path.getsize(data)
    table = Table(title=f"onnxq {report.recipe.name}: {os.path.basename(model)} → {os.path.basename(output)}")
    table.add_column("op type")
    table.add_column("quantized", justify="right")
    table.add_column("skipped", justify="right")
    table.add_column("why skipped")
    by_op: dict[str, list] = collections.defaultdict(list)
    shape_math = 0  # integer tensors (shape arithmetic of exporters): never quantized, not worth a row
    for d in report.decisions:
        if not d.selected and _integer_only(d.node):
            shape_math += 1
            continue
        by_op[d.node.op_type].append(d)
    for op, ds in sorted(by_op.items()):
        reasons = collections.Counter(d.reason for d in ds if not d.selected)
        why = "; ".join(f"{r} ({n})" for r, n in reasons.most_common(3))
        table.add_row(op, str(sum(d.selected for d in ds)), str(sum(not d.selected for d in ds)), why)
    console.print(table)
    if shape_math:
        console.print(f"({shape_math} node(s) on integer tensors, shape arithmetic, not listed)")
    if in_bytes:
        console.print(
            f"size {in_bytes / 1e6:.2f} MB → {out_bytes / 1e6:.2f} MB ({out_bytes / in_bytes:.1%}), {elapsed:.1f} s"
        )
    for note in report.notes:
        console.print(f"note: {note}")
    if in_bytes and out_bytes > in_bytes * 1.02:
        from onnxq import modelio

        w_in, w_out = (modelio.model_weight_bytes(modelio.load(p)) for p in (model, output))
        if w_out < 0.9 * w_in:  # the weights did shrink: the graph grew more than they saved
            console.print(
                f"warning: the output is {out_bytes / in_bytes:.0%} of the input's size although its weights went from "
                f"{w_in / 1e3:.0f} to {w_out / 1e3:.0f} KB: this model is small, and the Quantize/DequantizeLinear "
                "nodes with their scales take more bytes than int8 saves (and a small model may run no faster in int8; "
                "compare the latency with onnxq verify --float)", soft_wrap=True,
            )
        else:
            others = [r for r in ("int8-static", "int8-dynamic", "int4-weight-only") if r != report.recipe.name]
            console.print(
                f"warning: the output is {out_bytes / in_bytes:.0%} of the input's size: the recipe quantized little of "
                "this model's weights and the rest stays float; the table above says which nodes stayed float and "
                f"why — another recipe ({', '.join(others)}) or --op-types may suit this model better", soft_wrap=True,
            )


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def inspect(model, as_json):
    """Show opsets, op histogram, quantizable and already-quantized nodes, size."""
    import json

    from onnxq import modelio
    from onnxq.inspect import summarize

    summary = summarize(modelio.load(model), model)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
        return
    from rich.table import Table
    from rich.text import Text

    console = _console()
    console.print(Text(str(model), style="bold"), f" ir_version {summary.ir_version}  opsets {summary.opsets}")
    console.print(
        f"file {summary.file_bytes / 1e6:.2f} MB, weights {summary.weight_bytes / 1e6:.2f} MB, "
        f"{summary.subgraphs} subgraph(s)"
    )
    for title, values in (("inputs", summary.inputs), ("outputs", summary.outputs)):
        console.print(f"{title}: " + ", ".join(f"{v['name']} {v['dtype']} {v['shape']}" for v in values))
    table = Table(title="ops")
    table.add_column("op")
    table.add_column("count", justify="right")
    table.add_column("with constant weight", justify="right")
    for op, n in summary.op_histogram.items():
        table.add_row(op, str(n), str(summary.quantizable.get(op, "")))
    console.print(table)
    if summary.is_quantized:
        console.print(f"already quantized: {summary.quantized}")
    else:
        console.print("not quantized")


@main.command()
@click.argument("float_model", type=click.Path(dir_okay=False, path_type=str))
@click.argument("quant_model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--data", "data_path", type=click.Path(path_type=str), help="Samples: an .npz or a folder of .npy/.npz.")
@click.option("--images", "images_dir", type=click.Path(file_okay=False, path_type=str), help="A folder of images.")
@click.option("--preprocess", default=None, help='With --images: e.g. "imagenet" or "resize=256 crop=224 layout=NHWC".')
@click.option("--text", "text_path", type=click.Path(dir_okay=False, path_type=str), help="A text model: one sample per line of this file (or token ids in a .npy).")
@click.option("--tokenizer", default=None, type=click.Path(dir_okay=False, path_type=str), help="With --text: a tokenizer.json (default: the one beside FLOAT_MODEL).")
@click.option("--max-samples", type=int, default=None, help="Compare on at most this many samples.")
@click.option("--no-layers", is_flag=True, help="Only the outputs, not the per-layer table.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=str), help="Write an HTML report.")
def compare(float_model, quant_model, data_path, images_dir, preprocess, text_path, tokenizer, max_samples, no_layers,
            as_json, html_path):
    """Measure how far QUANT_MODEL is from FLOAT_MODEL: per output and per layer."""
    import json
    import math
    from pathlib import Path

    from onnxq import data as data_mod
    from onnxq import modelio
    from onnxq.compare import compare_models
    from onnxq.errors import OnnxqError

    if sum(v is not None for v in (data_path, images_dir, text_path)) > 1:
        raise OnnxqError("give one of --data, --images and --text")
    if data_path is None and images_dir is None and text_path is None:
        raise OnnxqError("give the samples to compare on: --data FILE_OR_FOLDER, --images FOLDER or --text FILE")
    if tokenizer is not None and text_path is None:
        raise OnnxqError("--tokenizer applies with --text")
    if text_path is not None:
        from onnxq.recipes import StaticInt8

        # one sample per line, framed and cut as int8-static's --calib-text makes them
        source = _text_calibration(float_model, text_path, tokenizer,
                                   StaticInt8(max_samples=max_samples or 0)).as_calibration_data()
    elif images_dir is not None:
        from onnxq.preprocess import from_images, parse_preprocess

        source = from_images(images_dir, parse_preprocess(preprocess))
    else:
        source = data_mod.as_calibration_data(data_path)
    specs = data_mod.input_specs(modelio.load(float_model))
    source.precheck(specs)
    comparison = compare_models(
        float_model, quant_model, source.feeds(specs), per_layer=not no_layers, max_samples=max_samples
    )
    if html_path:
        from onnxq.modelio import atomic_write_text
        from onnxq.report import render_html

        atomic_write_text(html_path, render_html(comparison, float_name=Path(float_model).name, quant_name=Path(quant_model).name))
    if as_json:
        click.echo(json.dumps(comparison.to_dict(), indent=2, default=lambda v: None if isinstance(v, float) and math.isinf(v) else v))
        return
    from rich.table import Table

    console = _console()
    table = Table(title=f"{Path(quant_model).name} vs {Path(float_model).name}, {comparison.samples} samples")
    for col in ("output", "cosine", "SQNR dB", "max abs error", "top-1 agreement"):
        table.add_column(col, justify="right" if col != "output" else "left")
    for o in comparison.outputs:
        top1 = "" if o.top1_agreement is None else f"{o.top1_agreement:.1%}"
        table.add_row(o.name, f"{o.cosine:.6f}", f"{o.sqnr_db:.1f}", f"{o.max_abs_error:.4g}", top1)
    console.print(table)
    for o in comparison.outputs:
        if o.dominated(comparison.samples):
            console.print(f"warning: sample {o.dominant_sample} holds {o.dominant_share:.0%} of output {o.name!r}'s "
                          f"energy: the SQNR above is mostly that sample's (per-sample median "
                          f"{o.median_sample_sqnr_db:.1f} dB)", soft_wrap=True)
    worst = comparison.worst_layers(5)
    if worst:
        console.print("worst layers (most SQNR lost between their inputs and output; keep one in float with --exclude NODE):")
        from onnxq.deploy.graph import WEIGHTED_OPS

        readers = _weighted_readers(float_model, {t.name for t in worst if t.op_type not in WEIGHTED_OPS})
        for t in worst:
            line = f"  loses {t.added_db:5.1f} dB (output {t.sqnr_db:5.1f} dB)  node {t.node or '?'} ({t.op_type}) → {t.name}"
            if readers.get(t.name):  # a float op: its result loses accuracy where it is quantized for these
                line += f"; quantized for {', '.join(readers[t.name][:3])}: --exclude that to keep it float"
            console.print(line)
    if html_path:
        console.print(f"report written to {html_path}")


@main.command("verify")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--target", default="ort-cpu", show_default=True, help="ort-cpu, ort-mobile, openvino (run here); tensorrt, qnn (rule checks).")
@click.option("--data", "data_path", type=click.Path(path_type=str), help="Inputs: an .npz, a folder of .npy/.npz, or a folder of images (random inputs when absent).")
@click.option("--float", "float_model", type=click.Path(dir_okay=False, path_type=str), help="The float model: output error and speed against it.")
@click.option("--preprocess", default=None, help='With an image folder: "imagenet" (default) or "resize=256 crop=224 layout=NHWC ...".')
@click.option("--max-samples", type=int, default=16, show_default=True, help="Run at most this many samples.")
@click.option("--threads", type=int, default=1, show_default=True, help="Inference threads (both models).")
@click.option("--no-latency", is_flag=True, help="Skip the timing runs.")
@click.option("--keep", "keep_dir", type=click.Path(file_okay=False, path_type=str), help="ort-mobile: keep the .ort file and its reduced-ops config in this folder.")
@click.option("--strict", is_flag=True, help="Exit non-zero when nodes fall back to float, too.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def verify_cmd(model, target, data_path, float_model, preprocess, max_samples, threads, no_latency, keep_dir, strict, as_json):
    """Check MODEL in the TARGET runtime (or against its QDQ rules): does it load, which
    nodes fall back to float or are unsupported, the error against --float."""
    import json
    import os

    from onnxq.deploy import verify
    from onnxq.errors import OnnxqError

    if max_samples < 1 or threads < 1:
        raise OnnxqError("--max-samples and --threads must be >= 1")
    if keep_dir is not None:
        os.makedirs(keep_dir, exist_ok=True)
    report = verify(
        model, target, data=data_path, float_model=float_model, max_samples=max_samples, threads=threads,
        latency=not no_latency, preprocess=preprocess, workdir=keep_dir,
    )
    failed = not report.ok or (strict and report.fallbacks)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        _print_verify(report)
    if failed:
        raise click.exceptions.Exit(1)


def _integer_only(node) -> bool:
    """Whether every typed tensor a node reads and writes is an integer one (int64 shape math)."""
    import onnx_ir as ir

    ints = (ir.DataType.INT64, ir.DataType.INT32, ir.DataType.INT16, ir.DataType.INT8, ir.DataType.UINT8,
            ir.DataType.BOOL)
    values = [v for v in (*node.inputs, *node.outputs) if v is not None and v.dtype is not None]
    return bool(values) and all(v.dtype in ints for v in values)


def _weighted_readers(model_path: str, tensors: set[str]) -> dict[str, list[str]]:
    """For each tensor, the named Conv/MatMul/Gemm nodes of the model that read it (through
    reshapes and Relu/Clip): where a float op's result is quantized."""
    from onnxq import modelio
    from onnxq.compare import readers_through
    from onnxq.deploy.graph import WEIGHTED_OPS

    return readers_through(modelio.load(model_path), tensors, lambda n: n.op_type in WEIGHTED_OPS and bool(n.name),
                           depth=6)


def _print_verify(report) -> None:
    import collections

    from rich.table import Table
    from rich.text import Text

    console = _console()
    status = Text("OK", style="green") if report.ok else Text("FAILED", style="red")
    console.print(Text(str(report.model), style="bold"), f"on {report.runtime}:", status,
                  f"({'rules checked, not run' if report.structural else 'loaded: ' + ('yes' if report.loaded else 'no')}, "
                  f"{len(report.errors)} errors, {len(report.fallbacks)} float fallbacks)")
    if report.findings:
        table = Table(title="findings")
        for col in ("rule", "severity", "count", "nodes", "what"):
            table.add_column(col)
        groups: dict = collections.defaultdict(list)
        for f in report.findings:
            groups[(f.rule, f.severity, f.message)].append(f.node)
        for (rule, sev, msg), nodes in sorted(groups.items()):
            shown = ", ".join(n for n in nodes[:3] if n) + (f", ... (+{len(nodes) - 3})" if len(nodes) > 3 else "")
            table.add_row(rule, sev, str(len(nodes)), shown, msg)
        console.print(table)
    m = report.metrics
    for name, e in (m.get("error_vs_float") or {}).items():
        top1 = "" if e.get("top1_agreement") is None else f", top-1 agreement {e['top1_agreement']:.1%}"
        sqnr = "inf" if e.get("sqnr_db") is None else f"{e['sqnr_db']:.1f}"
        spread = _median_note(e.get("sqnr_db"), e.get("median_sample_sqnr_db"))
        console.print(f"vs float, output {name}: cosine {e['cosine']:.5f}, SQNR {sqnr} dB{spread}, max abs error "
                      f"{e['max_abs_error']:.4g}{top1}")
        if e.get("dominant_sample") is not None:
            console.print(f"warning: sample {e['dominant_sample']} holds {e['dominant_share']:.0%} of output {name!r}'s "
                          "energy: the SQNR above is mostly that sample's", soft_wrap=True)
    for name, e in (m.get("ort_vs_onnx") or {}).items():
        console.print(f".ort vs .onnx, output {name}: cosine {e['cosine']:.6f}, max abs error {e['max_abs_error']:.3g}")
    for key in ("int8_compute_layers", "compute_layers", "ort_file", "reduced_ops_config"):
        if key in m:
            console.print(f"{key.replace('_', ' ')}: {m[key]}")
    if "latency_ms" in m:
        lat = ", ".join(f"{k} {v:.2f} ms" for k, v in m["latency_ms"].items())
        ratio = f" (speed-up vs float x{m['speedup_vs_float']:.2f})" if "speedup_vs_float" in m else ""
        console.print(f"latency, median, same process: {lat}{ratio}")
    for note in report.notes:
        console.print(f"note: {note}")


@main.group()
def ops() -> None:
    """The onnxq custom-op library (com.onnxq ops for ONNX Runtime)."""


@ops.command("path")
@click.option("--cuda", is_flag=True, help="The CUDA library instead of the CPU one.")
def ops_path(cuda: bool) -> None:
    """Print the path of the custom-op library (exit 1 with the fix when it is not built)."""
    from onnxq.runtime import library_path

    click.echo(str(library_path("cuda" if cuda else "cpu")))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
