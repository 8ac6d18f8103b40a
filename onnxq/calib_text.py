"""Calibration samples for language models from text: token windows as model feeds.

Two ways in:

- tokenizer-free: a ``.npy`` file of token ids (int, 1-D: one long stream, cut into
  windows; 2-D: one sample per row);
- text (any other file, UTF-8): tokenised with a ``tokenizer.json`` (the ``tokenizers``
  package, installed with ``pip install tokenizers``); by default the ``tokenizer.json``
  beside the model.

Each sample is one window of ``seq_len`` consecutive tokens (non-overlapping, from the
start of the stream, at most ``n_samples``); a tokenised text's windows are framed by the
special tokens its tokenizer adds to every sequence (BERT ``[CLS] ... [SEP]``, Llama ``<s> ...``),
and the tokenizer's own truncation and padding are turned off. Feeds are built from the model's own inputs:
``input_ids`` gets the window, ``attention_mask`` ones, ``position_ids`` ``0..seq_len-1``,
``token_type_ids`` zeros; any other input is an error that names it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from onnxq.errors import CalibrationDataError

__all__ = ["TextCalibration", "TokenText", "load_token_ids", "load_token_text", "token_windows", "lm_feeds"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TokenText:
    """Token ids of a calibration text and the special tokens its tokenizer puts around one
    sequence (BERT: ``[CLS] ... [SEP]``; Llama: ``<s> ...``; GPT-2 style and ``.npy`` ids: none)."""

    ids: np.ndarray
    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()
    lines: tuple[np.ndarray, ...] | None = None  # load_token_text(lines=...): one array per line


def _special_frame(tok) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Where the tokenizer's post-processor puts its special tokens around a sequence."""
    bare = tok.encode("a", add_special_tokens=False).ids
    full = tok.encode("a").ids
    for i in range(len(full) - len(bare) + 1):
        if bare and full[i:i + len(bare)] == bare:
            return tuple(full[:i]), tuple(full[i + len(bare):])
    return (), ()


def load_token_ids(path: str | Path, tokenizer: str | Path | None = None) -> np.ndarray:
    """The token ids of a ``.npy`` file or of a text file tokenised with ``tokenizer``."""
    return load_token_text(path, tokenizer).ids


def load_token_text(
    path: str | Path, tokenizer: str | Path | None = None, lines: tuple[int, int] | None = None
) -> TokenText:
    """A ``.npy`` of token ids, or a text tokenised with ``tokenizer``: one stream, or with
    ``lines=(n, offset)`` the non-empty lines ``offset .. offset + n`` each on its own. A
    ``.npy`` holds int64 ids, 1-D (a stream) or 2-D (one sample per row)."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationDataError(f"calibration text {path} does not exist")
    if path.suffix == ".npy":
        try:
            ids = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise CalibrationDataError(f"{path} is not a readable .npy file: {e}") from None
        if ids.ndim not in (1, 2) or not np.issubdtype(ids.dtype, np.integer):
            raise CalibrationDataError(
                f"{path} must hold integer token ids, 1-D or 2-D; it holds {ids.dtype} {ids.shape}"
            )
        if ids.size and ids.min() < 0:
            raise CalibrationDataError(f"{path} holds negative token ids")
        return TokenText(ids.astype(np.int64))
    if tokenizer is None:
        raise CalibrationDataError(
            f"{path} is text: give a tokenizer.json (--tokenizer), or token ids in a .npy file"
        )
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise CalibrationDataError(
            "tokenising text needs the tokenizers package (pip install tokenizers); or pass token ids as .npy"
        ) from None
    tok_path = Path(tokenizer)
    if not tok_path.is_file():
        raise CalibrationDataError(f"tokenizer file {tok_path} does not exist")
    try:
        tok = Tokenizer.from_file(str(tok_path))
    except Exception as e:  # tokenizers raises its own exception type
        raise CalibrationDataError(f"{tok_path} is not a tokenizers tokenizer.json: {str(e)[:200]}") from None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CalibrationDataError(f"{path} is not UTF-8 text") from None
    tok.no_truncation()  # a tokenizer.json saved for inference often truncates to the model's length
    tok.no_padding()
    prefix, suffix = _special_frame(tok)
    if lines is not None:
        n, offset = lines
        chosen = [ln for ln in (ln.strip() for ln in text.splitlines()) if ln][offset:offset + n]
        rows = [np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch(chosen, add_special_tokens=False)]
        logger.info("tokenised %d lines of %s (framed by %s ... %s)", len(rows), path.name, prefix, suffix)
        return TokenText(np.zeros(0, np.int64), prefix, suffix, tuple(r for r in rows if r.size))
    ids = np.asarray(tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)
    logger.info("tokenised %s: %d tokens (each window framed by %s ... %s)", path.name, ids.size, prefix, suffix)
    return TokenText(ids, prefix, suffix)


def token_windows(ids: np.ndarray, seq_len: int, n_samples: int, offset: int = 0) -> np.ndarray:
    """``[n, seq_len]`` windows: rows of a 2-D array, or consecutive cuts of a 1-D stream
    starting at ``offset``."""
    if seq_len < 1 or n_samples < 1:
        raise CalibrationDataError("seq_len and n_samples must be >= 1")
    if ids.ndim == 2:
        rows = ids[:n_samples, :seq_len]
        if rows.shape[0] == 0:
            raise CalibrationDataError("the token-id array has no rows")
        return rows
    stream = ids[offset:]
    n = min(n_samples, stream.size // seq_len)
    if n == 0:
        if stream.size < 2:
            raise CalibrationDataError(f"the calibration text has only {stream.size} tokens")
        return stream[None, :]
    if n < n_samples:
        logger.warning("calibration text gives %d windows of %d tokens, fewer than the %d asked", n, seq_len, n_samples)
    return stream[: n * seq_len].reshape(n, seq_len)


def lm_feeds(input_names: Mapping[str, object] | list[str], windows: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
    """One feed per window for a causal LM whose inputs are named like Hugging Face's."""
    names = list(input_names)
    if "input_ids" not in names:
        raise CalibrationDataError(f"text calibration needs a model input named input_ids; the model has {names}")
    unknown = [n for n in names if n not in ("input_ids", "attention_mask", "position_ids", "token_type_ids")]
    if unknown:
        raise CalibrationDataError(
            f"text calibration cannot fill the model input(s) {unknown}; give calibration feeds instead"
        )
    for row in windows:
        ids = np.asarray(row, dtype=np.int64)[None, :]
        feed = {"input_ids": ids}
        if "attention_mask" in names:
            feed["attention_mask"] = np.ones_like(ids)
        if "position_ids" in names:
            feed["position_ids"] = np.arange(ids.shape[1], dtype=np.int64)[None, :]
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(ids)
        yield feed


# int8-static on token text (the recipe has no window fields): windows of this many tokens (within
# every BERT-style encoder's positions), and this many of them unless --max-samples says otherwise
STATIC_SEQ_LEN = 128
STATIC_SAMPLES = 64


@dataclasses.dataclass(frozen=True)
class TextCalibration:
    """Calibration text for the int4 and int8-static recipes: a ``.npy`` of token ids or a
    text file with a tokenizer; ``n_samples`` windows of ``seq_len`` tokens from ``offset`` on."""

    path: str | Path
    tokenizer: str | Path | None = None
    seq_len: int = 512
    n_samples: int = 16
    offset: int = 0
    lines: bool = False  # each non-empty line of a text is one sample (at most seq_len tokens)

    def windows(self) -> np.ndarray | list[np.ndarray]:
        """``[n, seq_len]`` token ids (``lines``: a list of rows, one per line, ``offset`` counting
        lines); a text's samples are framed by its tokenizer's special tokens, as the model sees
        every input."""
        if self.lines and Path(self.path).suffix != ".npy":
            text = load_token_text(self.path, self.tokenizer, lines=(self.n_samples, self.offset))
            frame = len(text.prefix) + len(text.suffix)
            if self.seq_len <= frame:
                raise CalibrationDataError(f"seq_len {self.seq_len} leaves no room inside the {frame} special tokens")
            if not text.lines:
                raise CalibrationDataError(f"{self.path} has no non-empty line from line {self.offset} on")
            return [np.asarray([*text.prefix, *row[: self.seq_len - frame], *text.suffix], np.int64) for row in text.lines]
        text = load_token_text(self.path, self.tokenizer)
        frame = len(text.prefix) + len(text.suffix)
        if frame and self.seq_len <= frame:
            raise CalibrationDataError(f"seq_len {self.seq_len} leaves no room inside the {frame} special tokens")
        rows = token_windows(text.ids, self.seq_len - frame, self.n_samples, self.offset)
        if not frame:
            return rows
        n = rows.shape[0]
        return np.concatenate([np.tile(np.asarray(text.prefix, np.int64), (n, 1)), rows,
                               np.tile(np.asarray(text.suffix, np.int64), (n, 1))], axis=1)

    def feeds(self, input_names: list[str]) -> Iterator[dict[str, np.ndarray]]:
        return lm_feeds(input_names, self.windows())

    def as_calibration_data(self):
        """The windows as int8-static's re-iterable :class:`~onnxq.data.CalibrationData` (the
        text is tokenised once, on first use). A model whose ``input_ids`` has a fixed length
        gets windows of exactly that length (not lines), ``n_samples`` of them, grouped by a
        fixed batch size."""
        from onnxq.data import CalibrationData

        cache: list[np.ndarray | list[np.ndarray]] = []

        def factory(specs):
            spec = next((s for s in specs if s.name == "input_ids"), None)
            shape = spec.shape if spec is not None and spec.shape is not None and len(spec.shape) == 2 else (None, None)
            batch, length = shape[0] or 1, shape[1]
            if not cache:
                fixed = dataclasses.replace(self, lines=False, seq_len=length, n_samples=self.n_samples * batch)
                cache.append(fixed.windows() if length else self.windows())
            rows = cache[0]
            if length and (len(rows[0]) != length or len(rows) < batch):
                raise CalibrationDataError(
                    f"the model takes input_ids of {batch} x {length} tokens; {self.path} gives fewer"
                )
            feeds = list(lm_feeds([s.name for s in specs], rows[: len(rows) // batch * batch]))
            for i in range(0, len(feeds), batch):
                group = feeds[i:i + batch]
                yield f"calibration text window {i}", {k: np.concatenate([f[k] for f in group]) for k in group[0]}

        return CalibrationData(factory, description=f"calibration text {Path(self.path).name}",
                               length=None if not cache else len(cache[0]))
