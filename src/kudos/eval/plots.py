"""Small, generic matplotlib charts rendered to PNG bytes (for self-contained HTML reports)."""

from __future__ import annotations

import io
from typing import Mapping

import numpy as np

Line = tuple[np.ndarray, np.ndarray]  # (x (N,), y (N,))


def _short_number(value: float, _position: object = None) -> str:
    """Tick labels like 250k and 1.5M instead of a shared 1e6 offset."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def line_chart(
    lines: Mapping[str, Line],
    *,
    title: str,
    xlabel: str = "env steps",
    ylabel: str = "",
    band: Mapping[str, Line] | None = None,
    size: tuple[float, float] = (5.2, 2.6),
    dpi: int = 80,
) -> bytes:
    """A line chart of one or more named series as PNG bytes.

    Args:
        lines: label -> (x, y); a single unlabeled series may use the label ``""``.
        band: label -> (lower, upper) y arrays on the same x as ``lines[label]``: a shaded spread.
        size: inches; with ``dpi`` the pixel size (default 416 x 208).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    figure = Figure(figsize=size, dpi=dpi)
    # Fixed margins: a constrained layout draws every chart twice (about twice the build time).
    figure.subplots_adjust(left=0.15, right=0.97, top=0.88, bottom=0.2)
    ax = figure.add_subplot()
    for label, (x, y) in lines.items():
        (line,) = ax.plot(x, y, label=label or None, linewidth=1.2)
        if band is not None and label in band:
            lower, upper = band[label]
            ax.fill_between(x, lower, upper, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_formatter(FuncFormatter(_short_number))
    ax.yaxis.set_major_formatter(FuncFormatter(_short_number))
    ax.grid(alpha=0.3)
    if any(lines):
        ax.legend(fontsize=7, frameon=False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
