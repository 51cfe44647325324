"""The results report: tables (Markdown, CSV, JSON), plots, the paper's
published figures beside ours, and the check against expected results
(the shipped ``targets.csv``, or the user's).

Results are ``{strategy: {"runs": [one result per seed], "summary": ...}}``,
as :func:`~piggyback_avalanche.app.runner.run_benchmark` returns them.
"""

import csv
import itertools
import json
import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from matplotlib.figure import Figure

from piggyback_avalanche.app.published import PAPER_TASK_NAMES, PUBLISHED_ERRORS
from piggyback_avalanche.benchmarks.datasets import FINE_GRAINED_TASKS
from piggyback_avalanche.evaluation.figures import SERIES_STYLES, accuracy_matrix_figure
from piggyback_avalanche.files import write_atomically

__all__ = [
    "markdown_table",
    "summarize",
    "format_markdown",
    "write_tables",
    "write_plots",
    "SERIES_PLOTS",
    "series_figure",
    "accuracy_vs_bytes_figure",
    "write_comparison_to_tensorboard",
    "published_comparison",
    "Target",
    "TargetCheck",
    "read_targets",
    "check_targets",
    "format_target_checks",
]

Results = dict[str, dict[str, Any]]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table: the header, its rule, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of every figure of
    :func:`~piggyback_avalanche.app.runner.train_and_evaluate`'s results, as
    ``[mean, std]`` pairs (``accuracy``: one pair per task)."""

    def mean_std(found: list[float | None]) -> list[float] | None:
        # None: a figure the strategy does not have (task inference); NaN in results saved before it was None.
        values = [v for v in found if v is not None and not math.isnan(v)]
        if len(values) < len(found):
            return None
        return [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]

    keys = ("average_accuracy", "average_forgetting", "bwt", "model_bytes", "networks", "train_seconds")
    summary: dict[str, Any] = {k: mean_std([r[k] for r in runs]) for k in keys}
    # None for strategies given task labels, and in results saved before task inference existed.
    summary["average_task_inference"] = mean_std([r.get("average_task_inference") for r in runs])
    # None for models without tasks of their own, and in results saved before it was measured.
    summary["bytes_per_task"] = mean_std([r.get("bytes_per_task") for r in runs])
    summary["accuracy"] = [mean_std(list(task)) for task in zip(*(r["accuracy"] for r in runs))]
    return summary


COLUMNS = [
    "avg accuracy (%)",
    "task inference (%)",
    "avg forgetting (points)",
    "BWT (points)",
    "size (MB)",
    "× one network",
    "bytes per task (kB)",
    "train time (s)",
]


Cell = tuple[float, float, int]
"""A table cell: mean and standard deviation over seeds (in the column's
unit), and the digits to print."""


def _cells(results: dict[str, dict[str, Any]]) -> list[tuple[str, int, dict[str, Cell]]]:
    """Per strategy: its name, its number of seeds, and its cells by column."""
    table = []
    for name, result in results.items():
        s = result["summary"]

        def cell(values: list[float] | None, scale: float = 100.0, digits: int = 1) -> Cell:
            if values is None:  # not applicable: NaN, shown as "–" and left empty in the CSV
                return math.nan, math.nan, digits
            return scale * values[0], scale * values[1], digits

        cells = {f"task {t}": cell(v) for t, v in enumerate(s["accuracy"])}
        cells.update(
            zip(
                COLUMNS,
                [
                    cell(s["average_accuracy"]),
                    cell(s["average_task_inference"]),
                    cell(s["average_forgetting"]),
                    cell(s["bwt"]),
                    cell(s["model_bytes"], 1e-6, 2),
                    cell(s["networks"], 1.0, 2),
                    cell(s.get("bytes_per_task"), 1e-3, 1),
                    cell(s["train_seconds"], 1.0, 0),
                ],
            )
        )
        table.append((name, len(result["runs"]), cells))
    return table


def format_markdown(results: dict[str, dict[str, Any]]) -> str:
    """The results table in Markdown: per-task final accuracy, averages,
    size and time, mean ± std over seeds (the mean alone for one seed). A
    column that applies to no strategy (task inference, where every task
    label is given) is left out; "–" marks a strategy it does not apply to."""
    table = _cells(results)
    columns = [c for c in table[0][2] if any(not math.isnan(cells[c][0]) for _, _, cells in table)]
    rows = []
    for name, seeds, cells in table:
        shown = [
            "–" if math.isnan(m) else f"{m:.{d}f} ± {s:.{d}f}" if seeds > 1 else f"{m:.{d}f}"
            for m, s, d in (cells[c] for c in columns)
        ]
        rows.append([name, *shown])
    return markdown_table(["strategy", *columns], rows)


def write_tables(results: dict[str, dict[str, Any]], out_dir: Path, *, extra: str = "") -> None:
    """``results.md`` (the Markdown table, then ``extra``), ``results.csv``
    and ``results.json`` in ``out_dir``. The CSV holds numbers: each column's
    mean, and its standard deviation over seeds in ``<column> std``."""
    table = _cells(results)
    write_atomically(out_dir / "results.md", lambda f: f.write(format_markdown(results) + "\n" + extra))

    def write_csv(file: IO[str]) -> None:
        writer = csv.writer(file)
        columns = list(table[0][2])
        writer.writerow(["strategy", "seeds", *(h for c in columns for h in (c, f"{c} std"))])
        for name, seeds, cells in table:
            numbers = ("" if math.isnan(v) else round(v, d) for m, s, d in cells.values() for v in (m, s))
            writer.writerow([name, seeds, *numbers])

    write_atomically(out_dir / "results.csv", write_csv)
    write_atomically(out_dir / "results.json", lambda f: json.dump(results, f, indent=1))


def write_plots(results: dict[str, dict[str, Any]], plot_dir: Path) -> list[Path]:
    """Matplotlib plots of the first seed's runs: the accuracy matrix of each
    strategy, average accuracy as tasks arrive, and model size against the
    number of tasks; and over every seed, accuracy against the bytes each
    task adds (``accuracy_vs_bytes.png``), as PNG files.

    :return: the files written.
    """
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, result in results.items():
        matrix = [[math.nan if v is None else v for v in row] for row in result["runs"][0]["accuracy_matrix"]]
        figure = accuracy_matrix_figure(matrix)
        figure.axes[0].set_title(name)
        written.append(plot_dir / f"accuracy_matrix_{name}.png")
        figure.savefig(written[-1], dpi=100)
    for filename, (ylabel, series) in SERIES_PLOTS.items():
        figure = series_figure(results, ylabel=ylabel, series=series)
        written.append(plot_dir / filename)
        figure.savefig(written[-1], dpi=100)
    try:
        figure = accuracy_vs_bytes_figure(results)
    except ValueError:  # no strategy stores anything per task
        return written
    written.append(plot_dir / "accuracy_vs_bytes.png")
    figure.savefig(written[-1], dpi=100)
    return written


RunSeries = Callable[[dict[str, Any]], list[float]]
"""One value per task trained, from one run's result."""

SERIES_PLOTS: dict[str, tuple[str, RunSeries]] = {
    "average_accuracy.png": (
        "average accuracy on tasks so far (%)",
        lambda run: [100 * statistics.fmean([v for v in row if v is not None]) for row in run["accuracy_matrix"]],
    ),
    "model_size.png": ("stored MB", lambda run: [b / 1e6 for b in run["model_bytes_per_experience"]]),
}
"""The plots of one value per task trained, by file name: the axis label and
the series (percent, as the tables give accuracy)."""


def series_figure(results: Results, *, ylabel: str, series: RunSeries) -> Figure:
    """One line per strategy (its first seed's run) against the tasks
    trained, each with its own marker and line style, so that strategies
    with the same values (two that store the same bytes) both show."""
    figure = Figure(figsize=(5.5, 3.8))
    axes = figure.subplots()
    length = 0
    for (name, result), style in zip(results.items(), itertools.cycle(SERIES_STYLES)):
        values = series(result["runs"][0])
        length = max(length, len(values))
        positions = range(1, len(values) + 1)
        axes.plot(positions, values, label=name, alpha=0.85, marker=style["marker"], linestyle=style["linestyle"])
    axes.set_xticks(range(1, length + 1))
    axes.set_xlabel("tasks trained")
    axes.set_ylabel(ylabel)
    axes.legend(fontsize=7)
    figure.tight_layout()
    return figure


def accuracy_vs_bytes_figure(results: Results) -> Figure:
    """Average accuracy against the bytes each task adds (log scale), one
    point per strategy (mean and standard deviation over seeds): what each
    method buys per byte stored. Strategies without tasks of their own
    (single-head baselines) are left out.

    :raises ValueError: if no strategy has bytes per task.
    """
    found = [
        (name, r["summary"].get("bytes_per_task"), r["summary"].get("average_accuracy")) for name, r in results.items()
    ]
    points = [(name, size, accuracy) for name, size, accuracy in found if size and accuracy and size[0] > 0]
    if not points:
        raise ValueError("No strategy in the results stores anything per task.")
    figure = Figure(figsize=(6.5, 4))
    axes = figure.subplots()
    # A legend, not labels beside the points: strategies with similar bytes and accuracy overlap.
    for (name, size, accuracy), style in zip(points, itertools.cycle(SERIES_STYLES)):
        axes.errorbar(
            size[0],
            100 * accuracy[0],
            xerr=size[1],
            yerr=100 * accuracy[1],
            marker=style["marker"],
            linestyle="none",
            capsize=3,
            label=name,
        )
    axes.set_xscale("log")
    axes.set_xlabel("bytes stored per task (log scale)")
    axes.set_ylabel("average accuracy (%)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return figure


def write_comparison_to_tensorboard(results: Results, log_dir: Path) -> None:
    """The accuracy-against-bytes figure and its numbers (one scalar pair
    per strategy, as text) in a TensorBoard run of its own; nothing if no
    strategy stores anything per task."""
    try:
        figure = accuracy_vs_bytes_figure(results)
    except ValueError:
        return
    from torch.utils.tensorboard import SummaryWriter

    rows = [
        [name, f"{r['summary']['bytes_per_task'][0]:.0f}", f"{100 * r['summary']['average_accuracy'][0]:.1f}"]
        for name, r in results.items()
        if r["summary"].get("bytes_per_task") is not None
    ]
    with SummaryWriter(str(log_dir)) as writer:
        writer.add_figure("accuracy_vs_bytes_per_task", figure)
        writer.add_text(
            "accuracy_vs_bytes_per_task", markdown_table(["strategy", "bytes per task", "avg accuracy (%)"], rows)
        )


def published_comparison(results: Results, *, backbone: str, tasks: Sequence[str] = FINE_GRAINED_TASKS) -> str:
    """A Markdown table of Piggyback's test errors on the fine-grained tasks
    beside those published in the original repository for ``backbone``
    (both backbones if it is neither ResNet-50 nor VGG-16). Where our task is
    a stand-in (FGVC-Aircraft for WikiArt, DTD for Sketch), the row says so.

    :return: the table, or ``""`` without Piggyback results.
    """
    if "piggyback" not in results:
        return ""
    published = {backbone: PUBLISHED_ERRORS[backbone]} if backbone in PUBLISHED_ERRORS else PUBLISHED_ERRORS
    keys = list(PUBLISHED_ERRORS["resnet50"])
    header = ["task", f"ours ({backbone}), error %"] + [f"published {b}, error %" for b in published]
    rows = []
    for position, (task, (mean, std)) in enumerate(zip(tasks, results["piggyback"]["summary"]["accuracy"])):
        paper_name = PAPER_TASK_NAMES[position] if position < len(keys) else "-"
        stand_in = position < len(keys) and keys[position] != task
        label = f"{task} (in place of {paper_name})" if stand_in else task
        row = [label, f"{100 * (1 - mean):.2f} ± {100 * std:.2f}"]
        row += [f"{errors[keys[position]]:.2f}" if position < len(keys) else "-" for errors in published.values()]
        rows.append(row)
    return markdown_table(header, rows) + "\n"


LOWER_IS_BETTER = ("average_forgetting", "networks", "_error")
"""Metrics (or metric suffixes) where a larger value falls short."""


@dataclass(frozen=True)
class Target:
    """One expected result: ``value`` within ``tolerance`` for ``metric`` of
    ``strategy`` on ``stream`` with ``backbone``.

    Metrics: ``average_accuracy`` and ``average_forgetting`` (percentage
    points), ``networks`` (stored size in networks), ``task<i>_accuracy`` and
    ``task<i>_error`` (%, task ``i`` after the whole stream).
    """

    stream: str
    backbone: str
    strategy: str
    metric: str
    value: float
    tolerance: float
    note: str = ""

    @property
    def lower_is_better(self) -> bool:
        return any(self.metric == m or self.metric.endswith(m) for m in LOWER_IS_BETTER)


@dataclass(frozen=True)
class TargetCheck:
    """A target and what the run measured."""

    target: Target
    measured: float

    @property
    def passed(self) -> bool:
        t = self.target
        shortfall = self.measured - t.value if t.lower_is_better else t.value - self.measured
        return shortfall <= t.tolerance


_TARGET_COLUMNS = ["stream", "backbone", "strategy", "metric", "value", "tolerance", "note"]


def read_targets(path: Path) -> list[Target]:
    """The targets of a CSV file with the columns stream, backbone,
    strategy, metric, value, tolerance and note.

    :raises ValueError: naming the file and line of a malformed row.
    """
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames != _TARGET_COLUMNS:
            raise ValueError(f"{path}: the header must be {','.join(_TARGET_COLUMNS)}, got {reader.fieldnames}.")
        targets = []
        for line, row in enumerate(reader, start=2):
            try:
                targets.append(
                    Target(
                        stream=row["stream"],
                        backbone=row["backbone"],
                        strategy=row["strategy"],
                        metric=row["metric"],
                        value=float(row["value"]),
                        tolerance=float(row["tolerance"]),
                        note=row["note"] or "",
                    )
                )
                _parse_metric(targets[-1].metric)
            except (TypeError, ValueError) as error:
                raise ValueError(f"{path}, line {line}: {error}") from error
    return targets


def _parse_metric(metric: str) -> tuple[str, int | None]:
    """``(kind, task index or None)`` of a target's metric name."""
    if metric in ("average_accuracy", "average_forgetting", "networks"):
        return metric, None
    match = re.fullmatch(r"task(\d+)_(accuracy|error)", metric)
    if match is None:
        raise ValueError(
            f"unknown metric {metric!r}; use average_accuracy, average_forgetting, networks, "
            "task<i>_accuracy or task<i>_error"
        )
    return match.group(2), int(match.group(1))


def _metric_value(summary: dict[str, Any], metric: str) -> float:
    kind, task = _parse_metric(metric)
    if task is None:
        if summary[kind] is None:
            raise ValueError(
                f"target {metric}: the strategy has no such figure (single-head baselines have no networks)"
            )
        return summary[kind][0] * (1 if kind == "networks" else 100)
    if task >= len(summary["accuracy"]):
        raise ValueError(f"target {metric} names task {task}, but the stream has {len(summary['accuracy'])} tasks")
    accuracy = 100 * summary["accuracy"][task][0]
    return accuracy if kind == "accuracy" else 100 - accuracy


def check_targets(results: Results, targets: Sequence[Target], *, stream: str, backbone: str) -> list[TargetCheck]:
    """The targets for this stream and backbone whose strategy ran, each with
    the measured mean over seeds."""
    return [
        TargetCheck(t, _metric_value(results[t.strategy]["summary"], t.metric))
        for t in targets
        if t.stream == stream and t.backbone == backbone and t.strategy in results
    ]


def format_target_checks(checks: Sequence[TargetCheck]) -> str:
    """A Markdown table of the checks, one line each, failures marked."""
    rows = []
    for check in checks:
        t = check.target
        bound = "≤" if t.lower_is_better else "≥"
        verdict = "ok" if check.passed else "FALLS SHORT"
        rows.append(
            [t.strategy, t.metric, f"{check.measured:.2f}", f"{bound} {t.value:g}", f"{t.tolerance:g}", verdict]
        )
    return markdown_table(["strategy", "metric", "measured", "target", "tolerance", "result"], rows)
