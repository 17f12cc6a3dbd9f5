"""Scalars of a run, read back from its TensorBoard event files.

``kudos train`` writes every figure of its live display to ``<run>/tensorboard`` with the env step
as the TensorBoard step. Reports and comparisons read them here, never by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kudos.errors import KudosError

TENSORBOARD_DIR = "tensorboard"


@dataclass(frozen=True)
class Series:
    """One scalar over a run: ``steps`` (N,) int64 env steps, ``values`` (N,) float64, ``wall`` (N,) s."""

    steps: np.ndarray
    values: np.ndarray
    wall: np.ndarray

    def __len__(self) -> int:
        return len(self.steps)


def read_scalars(run_dir: str | Path, tags: list[str] | None = None) -> dict[str, Series]:
    """Every scalar (or only ``tags``) logged under ``run_dir/tensorboard``, sorted by step.

    Several event files (a resumed run writes a new one) are merged; where a step was logged more
    than once (a run killed after logging, then resumed from an earlier checkpoint), the value
    written last wins, so a resumed run reads as one continuous curve.

    Raises:
        KudosError: ``run_dir`` has no TensorBoard event file.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    directory = Path(run_dir) / TENSORBOARD_DIR
    files = sorted(directory.glob("events.out.tfevents.*")) if directory.is_dir() else []
    if not files:
        raise KudosError(f"{run_dir} has no TensorBoard events under {directory} (is it a `kudos train` output directory?)")
    wanted = None if tags is None else set(tags)
    raw: dict[str, dict[int, tuple[float, float]]] = {}
    # Files sort by their creation time (in the name), so later writes overwrite earlier ones.
    for path in files:
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if wanted is not None and value.tag not in wanted:
                    continue
                if value.HasField("simple_value"):
                    scalar = float(value.simple_value)
                elif value.HasField("tensor") and value.tensor.float_val:
                    scalar = float(value.tensor.float_val[0])
                else:
                    continue
                raw.setdefault(value.tag, {})[int(event.step)] = (scalar, float(event.wall_time))
    out = {}
    for tag, by_step in raw.items():
        steps = np.array(sorted(by_step), dtype=np.int64)
        values = np.array([by_step[s][0] for s in steps], dtype=np.float64)
        wall = np.array([by_step[s][1] for s in steps], dtype=np.float64)
        out[tag] = Series(steps, values, wall)
    return out
