"""Errors a user can act on. The CLI prints their message on one line and exits non-zero."""

from __future__ import annotations


class OnnxqError(Exception):
    """Bad input or an impossible request: the message says what is wrong and what to do."""


class ModelLoadError(OnnxqError):
    pass


class RecipeError(OnnxqError, ValueError):
    pass


class CalibrationDataError(OnnxqError):
    pass


class NothingToQuantizeError(OnnxqError):
    pass
