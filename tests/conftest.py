from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # models/ and bench/ are importable from the repo root
    sys.path.insert(0, str(REPO))

CORPUS = REPO.parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus is not present")
    return CORPUS


@pytest.fixture(scope="session")
def mobilenet_path(corpus: Path) -> Path:
    p = corpus / "models" / "mobilenet_v2_tv_imagenet.onnx"
    if not p.exists():
        pytest.skip("MobileNetV2 is not in the corpus")
    return p
