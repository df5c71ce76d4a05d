"""The report's figures as PNG bytes: curves with error bars, scatter plots, heatmaps.

Each function takes plain numbers and returns the image; nothing is written here. Figures
use matplotlib's object API with the Agg canvas (never pyplot), so no global state and no
display are involved and figures are safe to draw from any thread."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DPI = 100
MAX_ANNOTATED = 12


@dataclass(frozen=True)
class Series:
    """One line (or group of points): y against x, with optional symmetric error bars."""

    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    err: tuple[float, ...] | None = None
    color: str | None = None


@dataclass(frozen=True)
class Panel:
    title: str
    series: tuple[Series, ...]


def color(index: int) -> str:
    """The default matplotlib color cycle, by position (one color per optimizer)."""
    return f"C{index % 10}"


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _finite(values: Sequence[float] | None) -> list[float] | None:
    if values is None or all(math.isnan(v) for v in values):
        return None
    return [0.0 if math.isnan(v) else v for v in values]


def curves(
    *, panels: Sequence[Panel], xlabel: str, ylabel: str, title: str, markers: bool = True
) -> bytes:
    """Side-by-side panels of lines with error bars (bars hidden where all are NaN)."""
    figure = _figure(4.2 * max(1, len(panels)) + 1.0, 3.8)
    axes = figure.subplots(1, max(1, len(panels)), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=False):
        for series in panel.series:
            ax.errorbar(
                series.x,
                series.y,
                yerr=_finite(series.err),
                marker="o" if markers else None,
                markersize=3,
                capsize=3,
                color=series.color,
                label=series.label,
            )
        ax.set_title(panel.title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if panel.series:
            ax.legend(fontsize="small", loc="best")
    axes[0].set_ylabel(ylabel)
    figure.suptitle(title)
    return _png(figure)


def scatter(
    *,
    groups: Sequence[Series],
    xlabel: str,
    ylabel: str,
    title: str,
    diagonal: bool = False,
    note: str | None = None,
) -> bytes:
    """Points per group (error bars on y when given); `diagonal` draws y = x for
    comparing two measures of the same quantity; `note` goes under the title."""
    figure = _figure(7.0, 4.4)
    ax = figure.add_subplot()
    for group in groups:
        ax.errorbar(
            group.x,
            group.y,
            yerr=_finite(group.err),
            fmt="o",
            markersize=5,
            capsize=3,
            color=group.color,
            label=group.label,
        )
    if diagonal:
        values = [v for g in groups for v in (*g.x, *g.y) if math.isfinite(v)]
        if values:
            low, high = min(values), max(values)
            ax.plot([low, high], [low, high], color="grey", linestyle="--", label="y = x")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    # The note goes above the axes and the legend beside them: inside, either could hide
    # points, and the extreme points are the ones that decide a correlation.
    figure.suptitle(title)
    if note:
        ax.set_title(note, fontsize="small")
    ax.margins(0.08)
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _png(figure)


def heatmap(
    *, matrix: Sequence[Sequence[float]], labels: Sequence[str], title: str, colorbar: str
) -> bytes:
    """A square matrix with NaN cells left blank; values written in the cells when the
    matrix is small enough to read them."""
    import numpy as np

    data = np.ma.masked_invalid(np.asarray(matrix, dtype=float).reshape(len(labels), -1))
    size = 2.5 + 0.45 * len(labels)
    figure = _figure(size + 1.2, size)
    ax = figure.add_subplot()
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="white")
    image = ax.imshow(data, cmap=cmap, interpolation="nearest")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize="small")
    ax.set_yticks(range(len(labels)), labels, fontsize="small")
    if len(labels) <= MAX_ANNOTATED and data.count():
        middle = (float(data.min()) + float(data.max())) / 2
        for (i, j), value in np.ndenumerate(data.filled(np.nan)):
            if math.isfinite(value):
                shade = "black" if value > middle else "white"
                ax.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=7, color=shade)
    figure.colorbar(image, ax=ax, label=colorbar, shrink=0.8)
    ax.set_title(title)
    return _png(figure)


PANEL_COLUMNS = 4


def scatter_panels(*, panels: Sequence[Panel], xlabel: str, ylabel: str, title: str) -> bytes:
    """A grid of scatter plots (PANEL_COLUMNS per row), one per panel, each with its own x
    axis; groups are told apart by color and marker (circles, then crosses, ...)."""
    count = max(1, len(panels))
    columns = min(PANEL_COLUMNS, count)
    rows = math.ceil(count / columns)
    figure = _figure(3.4 * columns + 0.6, 3.0 * rows + 0.6)
    axes = figure.subplots(rows, columns, squeeze=False)
    markers = ("o", "x", "s", "^")
    for index, ax in enumerate(axes.flat):
        if index >= len(panels):
            ax.set_visible(False)
            continue
        panel = panels[index]
        for k, series in enumerate(panel.series):
            ax.plot(
                series.x,
                series.y,
                linestyle="none",
                marker=markers[k % len(markers)],
                markersize=5,
                color=series.color,
                label=series.label,
            )
        ax.set_title(panel.title, fontsize="small")
        ax.set_xlabel(xlabel, fontsize="small")
        ax.margins(0.08)
        ax.grid(alpha=0.3)
        if index % columns == 0:
            ax.set_ylabel(ylabel)
        if index == 0 and panel.series:
            ax.legend(fontsize="x-small", loc="best")
    figure.suptitle(title)
    return _png(figure)
