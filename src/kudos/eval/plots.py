"""Line charts for reports: several series against one x axis, each with an optional band.

matplotlib with the non-interactive Agg backend (no display needed); the result is PNG bytes, or
a file when ``path`` is given.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Line:
    """One series: ``x``, ``y`` (N,) and, optionally, the band ``low``..``high`` (N,) around it."""

    label: str
    x: np.ndarray
    y: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None


def line_chart(
    panels: dict[str, list[Line]],
    *,
    title: str = "",
    xlabel: str = "",
    path: str | Path | None = None,
    columns: int = 2,
) -> bytes:
    """Draw one panel per entry of ``panels`` (panel title -> its lines) in a grid of ``columns``;
    lines with the same label share a colour across panels. Returns the PNG bytes (and writes
    them to ``path`` if given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 3.6 * rows), squeeze=False)
    colours: dict[str, str] = {}
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, lines) in zip(axes.flat, panels.items()):
        for line in lines:
            colour = colours.setdefault(line.label, palette[len(colours) % len(palette)])
            ax.plot(line.x, line.y, label=line.label, color=colour, linewidth=1.5)
            if line.low is not None and line.high is not None:
                ax.fill_between(line.x, line.low, line.high, color=colour, alpha=0.2, linewidth=0)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 0.96))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    png = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(png)
    return png
