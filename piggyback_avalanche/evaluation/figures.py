"""Figures the metrics and the report draw, built on
``matplotlib.figure.Figure`` so that no global plotting state (backend,
pyplot's open figures) of the user's session is touched."""

import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

__all__ = ["rendered", "accuracy_matrix_figure", "bar_chart"]


def rendered(figure: Figure) -> Image.Image:
    """The figure as an RGB PIL image, drawn off screen."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")


def accuracy_matrix_figure(matrix: list[list[float]]) -> Figure:
    """A heatmap of an accuracy matrix (rows: trained up to experience;
    columns: evaluated experience; NaN cells left blank)."""
    size = len(matrix[0])
    figure = Figure(figsize=(1 + 0.6 * size, 1 + 0.6 * len(matrix)))
    axes = figure.subplots()
    image = axes.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    for r, row in enumerate(matrix):
        for c, value in enumerate(row):
            if not math.isnan(value):
                color = "black" if value > 0.6 else "white"  # readable on viridis
                axes.text(c, r, f"{100 * value:.0f}", ha="center", va="center", fontsize=7, color=color)
    axes.set_xlabel("evaluated experience")
    axes.set_ylabel("trained up to experience")
    axes.set_xticks(range(size))
    axes.set_yticks(range(len(matrix)))
    figure.colorbar(image)
    figure.tight_layout()
    return figure


def bar_chart(fractions: dict[str, dict[str, float]]) -> Figure:
    """Bars per layer for each kind of fraction (``{"zeros": {layer: value,
    ..., "overall": value}, ...}``; ``overall`` is left out)."""
    layers = [name for name in fractions["zeros"] if name != "overall"]
    figure = Figure(figsize=(max(4, 0.35 * len(layers) + 2), 3))
    axes = figure.subplots()
    for offset, (kind, values) in enumerate(fractions.items()):
        positions = [i + 0.4 * offset for i in range(len(layers))]
        axes.bar(positions, [values[n] for n in layers], width=0.4, label=kind)
    axes.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
    axes.set_ylabel("fraction of weights")
    axes.set_ylim(0, 1)
    axes.legend()
    figure.tight_layout()
    return figure
