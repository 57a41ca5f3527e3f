"""The report's plots: matplotlib (Agg) figures rendered to PNG and inlined as base64.

Input: the values to draw (bars per label, lines of (x, y), 2-D points with a group each) and a
caption. Output: a ``<figure class="plot" data-plot=NAME data-points=N>`` with the PNG as a
``data:`` URI, N being the number of data points drawn; without data, a ``<p class="empty">``
note instead. No external files, no JavaScript, no network.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.ticker import MaxNLocator

matplotlib.use("Agg")  # no display; must precede the pyplot import
import matplotlib.pyplot as plt

from embedding.quality.report_html import as_number, empty_note, esc

FIGSIZE_IN = (6.0, 3.5)
DPI = 90


def new_figure(figsize: tuple[float, float] = FIGSIZE_IN) -> tuple[plt.Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=figsize)
    ax.grid(True, alpha=0.3)
    return fig, ax


def figure_html(
    name: str, fig: plt.Figure, n_points: int, caption: str, series: Sequence[str] = ()
) -> str:
    """Render ``fig`` to an inline PNG inside a ``<figure>``, and close it; ``series`` (the
    labels of the lines drawn) goes to a ``data-series`` attribute, comma-separated."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    payload = base64.b64encode(buffer.getvalue()).decode("ascii")
    series_attr = f' data-series="{esc(",".join(series))}"' if series else ""
    return (
        f'<figure class="plot" data-plot="{esc(name)}" data-points="{n_points}"{series_attr}>\n'
        f'<img alt="{esc(name)}" src="data:image/png;base64,{payload}">\n'
        f"<figcaption>{esc(caption)}</figcaption>\n</figure>"
    )


def bar_chart(
    name: str, labels: Sequence[str], series: Mapping[str, Sequence[float | None]], caption: str
) -> str:
    """Grouped bars, one group per label and one bar per series; missing values are not drawn."""
    n_points = sum(as_number(v) is not None for values in series.values() for v in values)
    if n_points == 0:
        return empty_note(f"{name}: no values to plot")
    fig, ax = new_figure()
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(labels))
    for j, (series_name, values) in enumerate(series.items()):
        heights = [as_number(v) or 0.0 for v in values]
        ax.bar(x + (j - (len(series) - 1) / 2) * width, heights, width, label=series_name)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.legend(fontsize=8)
    return figure_html(name, fig, n_points, caption)


def line_chart(
    name: str,
    lines: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    caption: str,
) -> str:
    """One line per entry of ``lines`` (x values, y values); empty lines are left out."""
    lines = {label: xy for label, xy in lines.items() if len(xy[0])}
    n_points = sum(len(xs) for xs, _ in lines.values())
    if n_points == 0:
        return empty_note(f"{name}: no values to plot")
    fig, ax = new_figure()
    for label, (xs, ys) in lines.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and positions
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(lines) > 1:
        ax.legend(fontsize=8)
    return figure_html(name, fig, n_points, caption, series=list(lines))


def group_scatter(
    name: str,
    coords: np.ndarray,
    labels: Sequence[object],
    top: Sequence[object],
    xlabel: str,
    ylabel: str,
    caption: str,
) -> str:
    """A scatter of ``coords`` (n, 2), one colour per group of ``top`` (in order, tab10) and the
    points whose label is not in ``top`` grey, as "other"."""
    is_other = np.array([m not in top for m in labels], dtype=bool)
    fig, ax = new_figure((6.0, 4.0))
    if is_other.any():
        ax.scatter(*coords[is_other].T, s=4, c="#bbbbbb", alpha=0.6, label="other")
    colours = plt.get_cmap("tab10")
    for j, market in enumerate(top):
        mask = np.array([m == market for m in labels], dtype=bool)
        ax.scatter(*coords[mask].T, s=4, color=colours(j), alpha=0.8, label=str(market))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return figure_html(name, fig, len(coords), caption)
