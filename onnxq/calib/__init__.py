"""Calibration: stream data through one ORT session and feed observers (not a pass)."""

from __future__ import annotations

from onnxq.calib.observers import (
    DEFAULT_BINS,
    ChannelMeanObserver,
    EntropyObserver,
    HistogramObserver,
    MinMaxObserver,
    MseObserver,
    Observer,
    PercentileObserver,
    make_observer,
)
from onnxq.calib.stream import CalibrationStats, calibrate

__all__ = [
    "DEFAULT_BINS",
    "Observer",
    "MinMaxObserver",
    "HistogramObserver",
    "PercentileObserver",
    "ChannelMeanObserver",
    "EntropyObserver",
    "MseObserver",
    "make_observer",
    "calibrate",
    "CalibrationStats",
]
