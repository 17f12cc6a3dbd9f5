"""Compare training runs: group them by configuration, average over seeds, bootstrap intervals.

Runs are grouped by every config value that differs between them, except those that differ by
construction (:data:`IGNORED`: the seed, output directory, label store and recorded commit), so
``classification`` at c_ext 0.1 and at 0 are two groups and their seeds are pooled. Each run's
curve of each metric is interpolated onto a step grid common to the task's runs (from the
latest first log to the earliest last one), so every mean is over runs at equal env steps.

Intervals are 95% percentile-bootstrap intervals over seeds: resample the group's runs with
replacement ``resamples`` times, take the mean of each resample, report the 2.5th and 97.5th
percentiles. The bootstrap generator is seeded, so a comparison is reproducible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kudos.config import canonical_key
from kudos.errors import KudosError
from kudos.eval.plots import panel_chart
from kudos.eval.scalars import read_scalars
from kudos.rl.experiment import ALIASES, CONFIG_NAME

log = logging.getLogger(__name__)

#: TensorBoard tag -> how the table and plots name it.
METRICS: dict[str, str] = {
    "episode/return": "extrinsic return",
    "episode/success_rate": "success rate",
    "episode/score": "in-game score",
    "episode/depth": "depth",
}
#: Config keys that differ between runs by construction, not by method.
IGNORED: frozenset[str] = frozenset({"env.seed", "run.output_dir", "llm.store", "run.commit", "run.dirty"})
#: Annotator counters (``llm/<kind>/<name>``) whose last value goes into the labels table.
LABEL_COUNTERS = ("labels", "queue_depth", "dropped")
#: Gaps between two logs longer than this are interruptions (a killed run resumed later), not run time.
_MAX_LOG_GAP_S = 60.0
FINAL_FRACTION = 0.1  # the final figure is the mean over this last fraction of the step grid
CONFIDENCE = 0.95


@dataclass
class Run:
    """One run directory: its flattened config (``{"env.task": "Score", ...}``) and metric curves."""

    path: Path
    config: dict[str, Any]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # tag -> (steps, values)
    # Last value of each annotator counter, summed over annotators (classify, rank): labels,
    # queue_depth, dropped; and labels_per_s, labels over the run's logged time. Empty without an LLM.
    annotator: dict[str, float] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return str(self.config.get("env.task"))

    @property
    def seed(self) -> Any:
        return self.config.get("env.seed")


@dataclass
class Group:
    """Runs of one task that share every compared config value; ``label`` names the values."""

    task: str
    label: str
    runs: list[Run] = field(default_factory=list)


@dataclass(frozen=True)
class Curve:
    """A group's mean curve on the step grid ``x`` (N,), with its 95% band ``low``..``high``."""

    x: np.ndarray
    y: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds and its bootstrap interval."""

    mean: float
    low: float
    high: float
    seeds: int


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories among ``paths``: each path is a run (has ``config.yaml``) or a folder whose
    subfolders are runs."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / CONFIG_NAME).is_file():
            found.append(path)
        elif path.is_dir() and (children := sorted(p.parent for p in path.glob(f"*/{CONFIG_NAME}"))):
            found.extend(children)
        else:
            raise KudosError(f"{path} is not a `kudos train` output directory (no {CONFIG_NAME}) nor a folder of them")
    return found


def load_run(path: str | Path) -> Run:
    path = Path(path)
    try:
        config = yaml.safe_load((path / CONFIG_NAME).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise KudosError(f"cannot read {path / CONFIG_NAME}: {exc}") from None
    scalars = read_scalars(path)
    curves = {tag: (s.steps.astype(np.float64), s.values) for tag, s in scalars.items() if tag in METRICS and len(s)}
    annotator: dict[str, float] = {}
    for tag, series in scalars.items():
        parts = tag.split("/")
        if len(parts) == 3 and parts[0] == "llm" and parts[2] in LABEL_COUNTERS and len(series):
            annotator[parts[2]] = annotator.get(parts[2], 0.0) + float(series.values[-1])
            if parts[2] == "labels":
                gaps = np.diff(series.wall)
                seconds = float(gaps[gaps < _MAX_LOG_GAP_S].sum())
                rate = float(series.values[-1]) / seconds if seconds > 0 else 0.0
                annotator["labels_per_s"] = annotator.get("labels_per_s", 0.0) + rate
    # Runs written before a key moved compare under its new name.
    flat = {canonical_key(key, ALIASES): value for key, value in _flatten(config).items()}
    return Run(path, flat, curves, annotator)


def group_runs(runs: list[Run]) -> list[Group]:
    """Groups of runs per task, by every config value that differs between ``runs`` except
    :data:`IGNORED` and the task itself; ordered by task, then by first appearance."""
    keys = sorted({k for run in runs for k in run.config} - IGNORED - {"env.task"})
    differing = [k for k in keys if len({repr(run.config.get(k)) for run in runs}) > 1]
    groups: dict[tuple[str, str], Group] = {}
    for run in runs:
        label = ", ".join(f"{k}={run.config.get(k)}" for k in differing) or "all runs"
        groups.setdefault((run.task, label), Group(run.task, label)).runs.append(run)
    return sorted(groups.values(), key=lambda g: g.task)


def step_grid(runs: list[Run], tag: str, points: int) -> np.ndarray | None:
    """``points`` env steps from the latest first log to the earliest last log of ``tag`` over
    ``runs`` (None if no run logged it, or their ranges do not overlap). Ranges that meet in one
    step (a short run logs its episodes only in its final report) give that step, repeated."""
    curves = [run.curves[tag] for run in runs if tag in run.curves]
    if not curves:
        return None
    start, stop = max(c[0][0] for c in curves), min(c[0][-1] for c in curves)
    if stop < start:
        return None
    return np.linspace(start, stop, points)


def bootstrap(values: np.ndarray, *, resamples: int = 10_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over axis 0 (seeds) of ``values`` (S, ...) and its 95% percentile-bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(values), size=(resamples, len(values)))
    means = values[picks].mean(axis=1)  # (resamples, ...)
    tail = (1 - CONFIDENCE) / 2 * 100
    return values.mean(axis=0), np.percentile(means, tail, axis=0), np.percentile(means, 100 - tail, axis=0)


@dataclass
class Comparison:
    """Everything :func:`compare` computed: per (task, group label, metric) the grid, the mean
    curve with its band, and the final estimate."""

    groups: list[Group]
    curves: dict[tuple[str, str, str], Curve] = field(default_factory=dict)
    finals: dict[tuple[str, str, str], Estimate] = field(default_factory=dict)

    def tasks(self) -> list[str]:
        return list(dict.fromkeys(g.task for g in self.groups))

    def table(self) -> str:
        """Markdown table of final figures: mean [95% interval] over seeds, per task and group."""
        header = "| task | group | seeds | " + " | ".join(METRICS.values()) + " |"
        lines = [header, "|" + "---|" * (3 + len(METRICS))]
        for group in self.groups:
            cells = []
            seeds = 0
            for tag in METRICS:
                estimate = self.finals.get((group.task, group.label, tag))
                if estimate is None:
                    cells.append("-")
                    continue
                seeds = max(seeds, estimate.seeds)
                cells.append(f"{estimate.mean:.3g} [{estimate.low:.3g}, {estimate.high:.3g}]")
            lines.append(f"| {group.task} | {group.label} | {seeds} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def labels_table(self) -> str:
        """Markdown table of each LLM run's labelling at its end: labels the LLM produced, labels/s
        over the run's logged time, captions still queued and dropped (backlog full; a dropped
        caption is submitted again when seen again), and the share of distinct captions submitted
        that were labelled, labels / (labels + queued) (an upper bound where captions were
        dropped and never seen again). Empty if no run used the LLM."""
        rows = []
        for group in self.groups:
            for run in sorted(group.runs, key=lambda r: str(r.seed)):
                a = run.annotator
                if not a:
                    continue
                seen = a.get("labels", 0) + a.get("queue_depth", 0)
                share = f"{a.get('labels', 0) / seen:.1%}" if seen else "-"
                rows.append(
                    f"| {group.task} | {group.label} | {run.seed} | {a.get('labels', 0):,.0f} | "
                    f"{a.get('labels_per_s', 0):.2f} | {a.get('queue_depth', 0):,.0f} | {a.get('dropped', 0):,.0f} | {share} |"
                )
        if not rows:
            return ""
        header = "| task | group | seed | labels | labels/s | queued at end | dropped | share of distinct captions labelled |"
        return "\n".join([header, "|" + "---|" * 8, *rows])

    def plot(self, out_dir: str | Path) -> list[Path]:
        """One PNG per task (``<out_dir>/<task>.png``): a panel per metric, a line and band per group."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for task in self.tasks():
            panels = {}
            for tag, name in METRICS.items():
                curves = {label: c for (t, label, m), c in self.curves.items() if t == task and m == tag}
                if curves:
                    lines = {label: (c.x, c.y) for label, c in curves.items()}
                    panels[name] = (lines, {label: (c.low, c.high) for label, c in curves.items()})
            if not panels:
                continue
            path = out_dir / f"{task}.png"
            panel_chart(panels, title=f"{task}: mean over seeds, 95% bootstrap band", path=path)
            written.append(path)
        return written


def compare(
    runs: list[Run], *, points: int = 200, resamples: int = 10_000, seed: int = 0
) -> Comparison:
    """Group ``runs``, align each metric on a common step grid per task, and estimate means and
    95% bootstrap intervals over seeds, of the curves and of the final figures (mean of each run
    over the last :data:`FINAL_FRACTION` of the grid)."""
    if not runs:
        raise KudosError("no runs to compare")
    groups = group_runs(runs)
    result = Comparison(groups)
    for task in result.tasks():
        task_groups = [g for g in groups if g.task == task]
        for tag in METRICS:
            task_runs = [r for g in task_groups for r in g.runs]
            grid = step_grid(task_runs, tag, points)
            if grid is None:
                if any(tag in r.curves for r in task_runs):
                    log.warning("%s: the runs' %s curves share no env steps; left out", task, tag)
                continue
            last = grid >= grid[0] + (1 - FINAL_FRACTION) * (grid[-1] - grid[0])
            for group in task_groups:
                with_tag = [r for r in group.runs if tag in r.curves]
                if not with_tag:
                    continue
                values = np.stack([np.interp(grid, *r.curves[tag]) for r in with_tag])  # (S, points)
                mean, low, high = bootstrap(values, resamples=resamples, seed=seed)
                result.curves[(task, group.label, tag)] = Curve(grid, mean, low, high)
                finals = values[:, last].mean(axis=1)
                f_mean, f_low, f_high = bootstrap(finals, resamples=resamples, seed=seed)
                result.finals[(task, group.label, tag)] = Estimate(
                    float(f_mean), float(f_low), float(f_high), len(with_tag)
                )
    return result
