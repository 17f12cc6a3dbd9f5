"""Where kudos keeps per-user files (the embedded model, the shared label store)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_ENV = "KUDOS_CACHE_DIR"


def cache_dir() -> Path:
    """kudos's per-user cache: ``$KUDOS_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/kudos`` (the
    XDG base-directory rule), else ``~/.cache/kudos``. Not created here."""
    if root := os.environ.get(CACHE_DIR_ENV):
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says a relative $XDG_CACHE_HOME is invalid and must be ignored.
    return (Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache") / "kudos"
