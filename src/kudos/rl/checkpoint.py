"""Atomic checkpoints of a whole training run.

A checkpoint is one ``torch.save`` file holding a dict of state dicts (policy, optimiser, reward
model, shaping statistics, counters, RNG states, ...). It is written to a temporary file in the
same directory, flushed to disk and renamed over the previous one, so a run killed at any moment
leaves either the old checkpoint or the new one, never a torn file.

Every part is tensors or plain data (dicts, lists, tuples, str, int, float, bool, None), and it is
read with ``torch.load(weights_only=True)``: resuming a run directory someone else wrote cannot run
code, and a checkpoint that holds any other pickled object is refused.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kudos.errors import KudosError
from kudos.fsutil import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 2  # 2: RNG states as plain data, loaded with weights_only=True


class CheckpointError(KudosError):
    """A checkpoint that is missing, unreadable or from an incompatible version."""


def save_checkpoint(directory: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` atomically to ``directory/checkpoint.pt``; returns the path."""
    return atomic_write(Path(directory) / CHECKPOINT_NAME,
                        lambda f: torch.save({"format_version": FORMAT_VERSION, **state}, f))


def load_checkpoint(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``directory/checkpoint.pt``; raises :class:`CheckpointError` in one line otherwise."""
    path = Path(directory) / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: is this the output directory of a `kudos train` run?")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):  # torch's weights-only unpickler met a class or function
            raise CheckpointError(f"checkpoint {path} holds pickled Python objects, which kudos does not load (they "
                                  "could run code): it was written by another program or by kudos before checkpoint "
                                  f"format {FORMAT_VERSION}; start a new run") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}); "
                              "restore it from a backup or start a new run") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}); "
                              "restore it from a backup or start a new run") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else None
        raise CheckpointError(f"checkpoint {path} has format version {found!r}; this kudos reads version {FORMAT_VERSION}")
    return state


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's global and torch's random generators, as plain data and a
    tensor (so a checkpoint holding them loads with ``weights_only=True``)."""
    version, internal, gauss_next = random.getstate()
    numpy = np.random.get_state(legacy=False)
    return {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": numpy["bit_generator"],
            "key": numpy["state"]["key"].tolist(),
            "pos": int(numpy["state"]["pos"]),
            "has_gauss": int(numpy["has_gauss"]),
            "gauss": float(numpy["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    python, numpy = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    np.random.set_state((numpy["bit_generator"], np.asarray(numpy["key"], dtype=np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(state["torch"])
