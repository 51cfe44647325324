"""What the figures show, read back from the figure objects: the units the
tables use, series that stay visible on top of each other, labels that do
not overlap, layers named by path and type."""

import math

from conftest import tiny_conv_net

from piggyback_avalanche import PiggybackModel
from piggyback_avalanche.app.report import SERIES_PLOTS, accuracy_vs_bytes_figure, series_figure
from piggyback_avalanche.evaluation.figures import accuracy_matrix_figure, bar_chart


def test_the_accuracy_matrix_is_in_percent_cells_and_colour_bar_alike():
    figure = accuracy_matrix_figure([[0.5, math.nan], [0.25, 1.0]])
    axes, colour_bar = figure.axes
    assert axes.images[0].get_clim() == (0, 100)
    assert [t.get_text() for t in axes.texts] == ["50", "25", "100"]  # the NaN cell left blank
    assert colour_bar.get_ylabel() == "accuracy (%)"


def _result(matrix, model_bytes):
    return {"runs": [{"accuracy_matrix": matrix, "model_bytes_per_experience": model_bytes}]}


def test_series_are_in_percent_and_stay_visible_when_equal():
    results = {
        "naive": _result([[0.5, None], [0.25, 0.75]], [1_000_000, 1_000_000]),
        "classifier_only": _result([[0.5, None], [0.25, 0.75]], [1_000_000, 1_000_000]),
    }
    ylabel, series = SERIES_PLOTS["average_accuracy.png"]
    lines = series_figure(results, ylabel=ylabel, series=series).axes[0].lines
    assert [list(line.get_ydata()) for line in lines] == [[50.0, 50.0], [50.0, 50.0]]
    assert "(%)" in ylabel
    styles = {(line.get_marker(), line.get_linestyle()) for line in lines}
    assert len(styles) == 2  # the second line does not hide the first
    ylabel, series = SERIES_PLOTS["model_size.png"]
    axes = series_figure(results, ylabel=ylabel, series=series).axes[0]
    assert [list(line.get_ydata()) for line in axes.lines] == [[1.0, 1.0], [1.0, 1.0]]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["naive", "classifier_only"]


def test_accuracy_against_bytes_names_strategies_in_a_legend_not_beside_points():
    summary = {"bytes_per_task": [1000.0, 0.0], "average_accuracy": [0.9, 0.01]}
    results = {name: {"summary": summary} for name in ("piggyback", "packnet")}
    axes = accuracy_vs_bytes_figure(results).axes[0]
    assert len(axes.texts) == 0  # labels beside equal points would overlap
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["piggyback", "packnet"]


def test_the_mask_sparsity_chart_names_layers_by_path_and_type_with_readable_ticks():
    model = PiggybackModel(tiny_conv_net())
    labels = list(model.labelled_task_layers)
    assert labels and all(label.split(":")[1] in ("Conv2d", "Linear") for label in labels)
    assert labels[0] == f"{next(iter(model.task_layers))}:Conv2d"
    fractions = {"zeros": {**dict.fromkeys(labels, 0.25), "overall": 0.25}}
    axes = bar_chart(fractions).axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == labels
    assert axes.get_xlabel() == "layer (module path: type)"
    assert min(t.get_fontsize() for t in axes.get_xticklabels()) >= 8


def test_the_table_leaves_out_a_column_that_applies_to_no_strategy():
    from piggyback_avalanche.app.report import format_markdown

    def result(task_inference):
        summary = {
            "accuracy": [[0.9, 0.0]],
            "average_accuracy": [0.9, 0.0],
            "average_task_inference": task_inference,
            "average_forgetting": [0.0, 0.0],
            "bwt": [0.0, 0.0],
            "model_bytes": [1e6, 0.0],
            "networks": [1.0, 0.0],
            "bytes_per_task": None,
            "train_seconds": [3.0, 0.0],
        }
        return {"runs": [{}], "summary": summary}

    given = format_markdown({"piggyback": result(None), "naive": result(None)}).splitlines()
    assert "task inference" not in given[0] and "bytes per task" not in given[0]
    assert given[2] == "| piggyback | 90.0 | 90.0 | 0.0 | 0.0 | 1.00 | 1.00 | 3 |"
    inferred = format_markdown({"piggyback": result([0.97, 0.0]), "naive": result(None)}).splitlines()
    assert "task inference (%)" in inferred[0] and inferred[3].split(" | ")[3] == "–"
