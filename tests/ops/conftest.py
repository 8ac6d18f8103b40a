from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ops_lib() -> str:
    from onnxq.runtime import library_path

    return str(library_path("cpu"))  # fails (not skips) when the library was not built
