"""Atomic file writes: a reader (``--resume``, a report, a crash) sees the old file or the new one, never half.

:func:`atomic_write` is the one way kudos replaces a file it owns (``config.yaml``, checkpoints,
label exports, reports): it writes a unique temp file in the same directory (so the rename
stays on one filesystem and concurrent writers never share a temp name), flushes and fsyncs it,
renames it over ``path`` and fsyncs the directory, so the rename survives a power cut too. On
any error the temp file is removed and ``path`` keeps its old content.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# mkstemp creates 0600 files; give the result the mode a plain open() would (0666 less the umask).
# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike[str], data: str | bytes | Callable[[BinaryIO], object]) -> Path:
    """Replace ``path`` with ``data`` atomically; returns ``path`` as a :class:`~pathlib.Path`.

    ``data`` is text (written as UTF-8), bytes, or a callback that writes into the open binary
    temp file (e.g. ``lambda f: torch.save(state, f)``, or a loop writing JSONL lines). Missing
    parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            if isinstance(data, str):
                f.write(data.encode("utf-8"))
            elif isinstance(data, bytes):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path
