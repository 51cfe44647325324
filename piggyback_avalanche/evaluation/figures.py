"""Figures the metrics and the report draw, built on
``matplotlib.figure.Figure`` so that no global plotting state (backend,
pyplot's open figures) of the user's session is touched."""

import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

__all__ = ["rendered", "accuracy_matrix_figure", "bar_chart", "SERIES_STYLES"]

SERIES_STYLES: tuple[dict[str, str], ...] = tuple(
    {"marker": marker, "linestyle": linestyle}
    for marker, linestyle in zip("osD^vPX*<>", ["-", "--", ":", "-.", "-", "--", ":", "-.", "-", "--"])
)
"""A marker and line style per series, so that series drawn on top of each
other (two strategies that store the same bytes) stay visible."""


def rendered(figure: Figure) -> Image.Image:
    """The figure as an RGB PIL image, drawn off screen."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")


def accuracy_matrix_figure(matrix: list[list[float]]) -> Figure:
    """A heatmap of an accuracy matrix of fractions (rows: trained up to
    experience; columns: evaluated experience; NaN cells left blank), drawn
    in percent: the cells and the colour bar alike."""
    size = len(matrix[0])
    percent = [[100 * value for value in row] for row in matrix]
    figure = Figure(figsize=(1.5 + 0.6 * size, 1 + 0.6 * len(matrix)))
    axes = figure.subplots()
    image = axes.imshow(percent, vmin=0, vmax=100, cmap="viridis")
    for r, row in enumerate(percent):
        for c, value in enumerate(row):
            if not math.isnan(value):
                color = "black" if value > 60 else "white"  # readable on viridis
                axes.text(c, r, f"{value:.0f}", ha="center", va="center", fontsize=7, color=color)
    axes.set_xlabel("evaluated experience")
    axes.set_ylabel("trained up to experience")
    axes.set_xticks(range(size))
    axes.set_yticks(range(len(matrix)))
    figure.colorbar(image, label="accuracy (%)")
    figure.tight_layout()
    return figure


def bar_chart(fractions: dict[str, dict[str, float]]) -> Figure:
    """Bars per layer for each kind of fraction (``{"zeros": {layer: value,
    ..., "overall": value}, ...}``; ``overall`` is left out), the layers by
    their labels (module path and type), in network order."""
    layers = [name for name in fractions["zeros"] if name != "overall"]
    width = 0.8 / len(fractions)
    figure = Figure(figsize=(max(4.5, 0.5 * len(layers) + 2), 3.8))
    axes = figure.subplots()
    for offset, (kind, values) in enumerate(fractions.items()):
        positions = [i + width * (offset - (len(fractions) - 1) / 2) for i in range(len(layers))]
        axes.bar(positions, [values[n] for n in layers], width=width, label=kind)
    axes.set_xticks(range(len(layers)), layers, rotation=40, ha="right", fontsize=8)
    axes.set_xlabel("layer (module path: type)")
    axes.set_ylabel("fraction of weights")
    axes.set_ylim(0, 1)
    axes.legend()
    figure.tight_layout()
    return figure
