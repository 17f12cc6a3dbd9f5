"""Small, generic matplotlib charts rendered to PNG bytes (for self-contained HTML reports and
`kudos compare`): one chart (:func:`line_chart`) or a grid of them (:func:`panel_chart`)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kudos.fsutil import atomic_write

Line = tuple[np.ndarray, np.ndarray]  # (x (N,), y (N,))


def _short_number(value: float, _position: object = None) -> str:
    """Tick labels like 250k and 1.5M instead of a shared 1e6 offset."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _draw(
    ax: Any,
    lines: Mapping[str, Line],
    band: Mapping[str, Line] | None,
    title: str,
    xlabel: str,
    ylabel: str,
    colours: Mapping[str, str] | None = None,
) -> None:
    """Plot ``lines`` (and their bands) on one matplotlib axes."""
    from matplotlib.ticker import FuncFormatter

    for label, (x, y) in lines.items():
        colour = colours.get(label) if colours else None
        (line,) = ax.plot(x, y, label=label or None, linewidth=1.2, color=colour)
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


def _png(figure: Any, path: str | Path | None = None) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    png = buffer.getvalue()
    if path is not None:
        atomic_write(path, png)
    return png


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

    figure = Figure(figsize=size, dpi=dpi)
    # Fixed margins: a constrained layout draws every chart twice (about twice the build time).
    figure.subplots_adjust(left=0.15, right=0.97, top=0.88, bottom=0.2)
    ax = figure.add_subplot()
    _draw(ax, lines, band, title, xlabel, ylabel)
    if any(lines):
        ax.legend(fontsize=7, frameon=False)
    return _png(figure)


def panel_chart(
    panels: Mapping[str, tuple[Mapping[str, Line], Mapping[str, Line] | None]],
    *,
    title: str,
    xlabel: str = "env steps",
    columns: int = 2,
    panel_size: tuple[float, float] = (5.2, 2.9),
    dpi: int = 80,
    path: str | Path | None = None,
) -> bytes:
    """Several line charts in a grid of ``columns``, one shared legend, as PNG bytes (also written
    to ``path`` if given).

    Args:
        panels: panel title -> (lines, band) as in :func:`line_chart`. A label keeps its colour in
            every panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = max(1, -(-len(panels) // columns))
    figure = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows + 0.6), dpi=dpi)
    figure.subplots_adjust(left=0.08, right=0.98, top=1 - 0.8 / figure.get_figheight(),
                           bottom=0.55 / figure.get_figheight() + 0.06, hspace=0.55, wspace=0.2)
    palette = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = list(dict.fromkeys(label for lines, _ in panels.values() for label in lines))
    colours = {label: palette[i % len(palette)] for i, label in enumerate(labels)}
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax, (name, (lines, band)) in zip(axes.flat, panels.items()):
        _draw(ax, lines, band, name, xlabel, "", colours)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles = [matplotlib.lines.Line2D([], [], color=colours[label]) for label in labels]
    if any(labels):
        figure.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=11)
    return _png(figure, path)
