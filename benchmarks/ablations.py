"""The paper's claims, checked: every ablation of Piggyback (Mallya et al.,
ECCV 2018) on the offline default stream and on the digits stream, with a
table per claim, the plots behind each verdict, and the shipped targets.

    python benchmarks/ablations.py --out runs/ablations          # 3 seeds; about 30 minutes on 2 CPU cores

Every run goes through the benchmark runner (finished runs are reused), with
the offline default preset's settings: 5 epochs per task, batch 32, Adam, lr
1e-3, mask lr 3e-4. Variants are runner strategy specs such as
``piggyback[threshold=0.001]``, so ``piggyback-bench --strategies ...
--check-targets`` checks any of them alone.
"""

import argparse
import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from piggyback_avalanche.app.command_line import (
    add_executor_arguments,
    check_executor_arguments,
    executor_from_arguments,
)
from piggyback_avalanche.app.report import Target, check_targets, format_target_checks, markdown_table, read_targets
from piggyback_avalanche.app.runner import run_benchmark
from piggyback_avalanche.app.shipped import shipped_presets, shipped_targets_path

STREAMS = {
    "mnist_transfer": "offline default (small CNN pretrained on MNIST)",
    "digits": "digits (backbone trained on task 0)",
}
DEFAULT = "piggyback"
INIT = ["piggyback", "piggyback[mask_init=uniform]"]
SCALE = ["piggyback[mask_scale=0.006]", "piggyback", "piggyback[mask_scale=0.02]", "piggyback[mask_scale=0.05]"]
TAU = {0.001: "piggyback[threshold=0.001]", 0.0025: "piggyback[threshold=0.0025]", 0.005: "piggyback",
       0.0075: "piggyback[threshold=0.0075]"}  # fmt: skip
NORM = {
    "task batch norm, re-estimated (ours, default)": "piggyback",
    "task batch norm, running averages (the paper's)": "piggyback[recalibrate_norm_statistics=false]",
    "backbone's batch norm, frozen, re-estimated": "piggyback[task_batchnorm=false]",
    "backbone's batch norm, frozen": "piggyback[task_batchnorm=false,recalibrate_norm_statistics=false]",
}
MASKS = ["piggyback", "piggyback_ternary"]
REFERENCES = ["packnet", "individual", "classifier_only"]
ORDER = ["piggyback", "packnet"]
DEPTH = {"mlp": "MLP 256-256", "small_cnn": "small CNN (4 conv)", "small_resnet": "small ResNet (13 conv)"}
DEPTH_STRATEGIES = ["piggyback", "individual"]
DEPTH_BACKBONES = ["mlp", "small_resnet"]
MASK_LR = 3e-4
"""A fixed mask learning rate for every run: the default rate follows the
distance from the initial score to the threshold, which would make the
masks the same at every threshold and scale, where the paper's claims are
about a fixed rate. 3e-4: the rate the table and the recorded targets were
measured with (the earlier default); on validation data it is 0.5 points
below the best fixed rate on mnist_transfer (93.0 against 93.5 at 3e-3)
and 0.3 on digits (benchmarks/mask_rate.py, BENCHMARKS.md)."""

Results = dict[str, dict[str, Any]]


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _std(values: Sequence[float]) -> float:
    """The standard deviation over seeds; 0 for one seed."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _mean_std(values: Sequence[float], scale: float = 100.0) -> str:
    values = [scale * v for v in values]
    return f"{statistics.mean(values):.1f} ± {_std(values):.1f}"


def _runs(results: Results, spec: str) -> list[dict[str, Any]]:
    return results[spec]["runs"]


def _average(results: Results, spec: str) -> str:
    return _mean_std([r["average_accuracy"] for r in _runs(results, spec)])


def _zeros(results: Results, spec: str) -> str:
    return _mean_std([statistics.mean(z["overall"] for z in r["mask_zeros"].values()) for r in _runs(results, spec)])


def _networks(results: Results, spec: str) -> str:
    return f"{statistics.mean(r['networks'] for r in _runs(results, spec)):.3f}"


def _gaps(forward: Results, reversed_: Results) -> dict[str, list[tuple[float, float]]]:
    """Piggyback minus PackNet, average accuracy on the tasks seen so far,
    after each task (mean, std over seeds), for both orders."""
    curves = {}
    for label, results in (("tasks in order", forward), ("tasks reversed", reversed_)):
        per_seed = []
        for pig, pack in zip(_runs(results, "piggyback"), _runs(results, "packnet")):
            gaps = []
            for k, (row_pig, row_pack) in enumerate(zip(pig["accuracy_matrix"], pack["accuracy_matrix"])):
                gaps.append(100 * (statistics.mean(row_pig[: k + 1]) - statistics.mean(row_pack[: k + 1])))
            per_seed.append(gaps)
        curves[label] = [(statistics.mean(v), _std(v)) for v in zip(*per_seed)]
    return curves


def _plots(out: Path, stream: str, main: Results, forward: Results, reversed_: Results) -> list[Path]:
    written = []
    # Zeros per layer and task: the mean over seeds of the default Piggyback.
    runs = _runs(main, DEFAULT)
    tasks = sorted(runs[0]["mask_zeros"], key=int)
    layers = [name for name in runs[0]["mask_zeros"][tasks[0]] if name != "overall"]
    matrix = [[100 * statistics.mean(r["mask_zeros"][t][layer] for r in runs) for layer in layers] for t in tasks]
    figure = Figure(figsize=(1.5 + 0.7 * len(layers), 1.2 + 0.5 * len(tasks)))
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="magma", aspect="auto")
    for r, row in enumerate(matrix):
        for c, value in enumerate(row):
            axes.text(
                c,
                r,
                f"{value:.1f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if value < max(map(max, matrix)) / 2 else "black",
            )
    axes.set_xticks(range(len(layers)), [f"layer {name}" for name in layers], rotation=45, ha="right", fontsize=7)
    axes.set_yticks(range(len(tasks)), [f"task {t}" for t in tasks])
    axes.set_title(f"{stream}: % of weights each mask drops")
    figure.colorbar(image)
    figure.tight_layout()
    written.append(out / f"zeros_per_layer_{stream}.png")
    figure.savefig(written[-1], dpi=100)
    # Accuracy and zeros against the threshold.
    figure = Figure(figsize=(5, 3.5))
    axes = figure.subplots()
    taus = list(TAU)
    accuracy = [[100 * r["average_accuracy"] for r in _runs(main, TAU[t])] for t in taus]
    axes.errorbar(taus, [statistics.mean(a) for a in accuracy], yerr=[_std(a) for a in accuracy], marker="o")
    axes.set_xscale("log")
    axes.set_xlabel("threshold τ")
    axes.set_ylabel("average accuracy (%)")
    twin = axes.twinx()
    zeros = [
        statistics.mean(
            100 * statistics.mean(z["overall"] for z in r["mask_zeros"].values()) for r in _runs(main, TAU[t])
        )
        for t in taus
    ]
    twin.plot(taus, zeros, marker="s", color="tab:red")
    twin.set_ylabel("zeros in the masks (%)", color="tab:red")
    axes.set_title(f"{stream}: accuracy and zeros against τ")
    figure.tight_layout()
    written.append(out / f"threshold_{stream}.png")
    figure.savefig(written[-1], dpi=100)
    # The gap to PackNet as tasks accumulate, in both orders.
    figure = Figure(figsize=(5, 3.5))
    axes = figure.subplots()
    for label, curve in _gaps(forward, reversed_).items():
        axes.errorbar(
            range(1, len(curve) + 1), [m for m, _ in curve], yerr=[s for _, s in curve], marker="o", label=label
        )
    axes.set_xticks(range(1, len(curve) + 1))
    axes.axhline(0, color="grey", linewidth=0.8)
    axes.set_xlabel("tasks trained")
    axes.set_ylabel("Piggyback − PackNet (points)")
    axes.set_title(f"{stream}: average accuracy on the tasks so far")
    axes.legend()
    figure.tight_layout()
    written.append(out / f"packnet_gap_{stream}.png")
    figure.savefig(written[-1], dpi=100)
    return written


def _tables(stream: str, main: Results, forward: Results, reversed_: Results, depth: dict[str, Results]) -> str:
    sections = [f"## {STREAMS[stream]}"]
    sections.append("### 1. Mask initialisation and mask scale\n\n" + markdown_table(
        ["variant", "avg accuracy (%)", "zeros (%)"],
        [[spec, _average(main, spec), _zeros(main, spec)] for spec in _unique(INIT + SCALE)],
    ))  # fmt: skip
    sections.append("### 2. The threshold τ\n\n" + markdown_table(
        ["τ", "avg accuracy (%)", "zeros (%)"],
        [[f"{t:g}", _average(main, spec), _zeros(main, spec)] for t, spec in TAU.items()],
    ))  # fmt: skip
    runs = _runs(main, DEFAULT)
    tasks = sorted(runs[0]["mask_zeros"], key=int)
    layers = [name for name in runs[0]["mask_zeros"][tasks[0]] if name != "overall"]
    first, last = layers[0], layers[-1]
    rows = []
    for t in tasks:
        per_layer = [statistics.mean(r["mask_zeros"][t][name] for r in runs) for name in layers]
        rows.append([
            f"task {t}",
            _mean_std([r["accuracy"][int(t)] for r in runs]),
            _mean_std([r["mask_zeros"][t]["overall"] for r in runs]),
            f"{100 * statistics.mean(r['mask_zeros'][t][first] for r in runs):.1f}",
            f"{100 * statistics.mean(r['mask_zeros'][t][last] for r in runs):.1f}",
            f"{100 * _slope(per_layer):+.2f}",
        ])  # fmt: skip
    sections.append("### 3. Zeros in the masks (default Piggyback)\n\n" + markdown_table(
        ["task", "accuracy (%)", "zeros overall (%)", f"zeros, first layer {first} (%)", f"zeros, last layer {last} (%)",
         "slope over depth (points per layer)"],
        rows,
    ))  # fmt: skip
    sections.append("### 4. Batch normalisation\n\n" + markdown_table(
        ["batch norm", "avg accuracy (%)"], [[label, _average(main, spec)] for label, spec in NORM.items()],
    ))  # fmt: skip
    sections.append("### 5. Binary against ternary masks\n\n" + markdown_table(
        ["masks", "avg accuracy (%)", "× one network (5 tasks)"],
        [[spec, _average(main, spec), _networks(main, spec)] for spec in MASKS],
    ))  # fmt: skip
    gaps = _gaps(forward, reversed_)
    sections.append("### 6. Piggyback against PackNet as tasks accumulate (points of average accuracy so far)\n\n" + markdown_table(
        ["order", *(f"after {k}" for k in range(1, len(gaps["tasks in order"]) + 1))],
        [[label, *(f"{m:+.1f} ± {s:.1f}" for m, s in curve)] for label, curve in gaps.items()],
    ))  # fmt: skip
    sections.append("### 7. Backbone depth\n\n" + markdown_table(
        ["backbone", "piggyback (%)", "individual networks (%)", "difference (points)"],
        [[DEPTH[b], _average(r, "piggyback"), _average(r, "individual"),
          f"{100 * (statistics.mean(x['average_accuracy'] for x in _runs(r, 'piggyback')) - statistics.mean(x['average_accuracy'] for x in _runs(r, 'individual'))):+.1f}"]
         for b, r in depth.items()],
    ))  # fmt: skip
    sections.append("### 8. Piggyback against individual networks and the references\n\n" + markdown_table(
        ["strategy", "avg accuracy (%)", "× one network (5 tasks)"],
        [[spec, _average(main, spec), _networks(main, spec)] for spec in [DEFAULT, *REFERENCES]],
    ))  # fmt: skip
    return "\n\n".join(sections)


def _record_targets(results: Results, targets: list[Target], *, stream: str, backbone: str) -> int:
    """Append an average-accuracy target for each run without one: the
    measured mean, with a tolerance of three standard deviations over seeds
    (two points at least). Returns how many were added to ``targets``."""
    known = {(t.stream, t.backbone, t.strategy, t.metric) for t in targets}
    added = []
    for spec, result in results.items():
        if (stream, backbone, spec, "average_accuracy") in known:
            continue
        mean, std = (100 * v for v in result["summary"]["average_accuracy"])
        added.append(
            Target(stream, backbone, spec, "average_accuracy", round(mean, 1), round(max(2.0, 3 * std), 1),
                   "the paper's claims: benchmarks/ablations.py")
        )  # fmt: skip
    if added:
        with open(shipped_targets_path(), "a", newline="") as file:
            writer = csv.writer(file)
            for t in added:
                writer.writerow([t.stream, t.backbone, t.strategy, t.metric, t.value, t.tolerance, t.note])
        targets.extend(added)
    return len(added)


def _slope(values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against their index."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, statistics.mean(values)
    covariance = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    return covariance / sum((i - mean_x) ** 2 for i in range(n)) if n > 1 else math.nan


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ablations"), help="output folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of every run")
    parser.add_argument("--streams", nargs="+", default=list(STREAMS), choices=list(STREAMS), help="streams to run")
    parser.add_argument(
        "--epochs", type=int, help="epochs per task (default: the offline default preset's); targets hold for those"
    )
    parser.add_argument(
        "--depth-backbones",
        nargs="+",
        default=DEPTH_BACKBONES,
        choices=DEPTH_BACKBONES,
        help="the backbones the depth claim compares with the small CNN",
    )
    parser.add_argument(
        "--record-targets",
        action="store_true",
        help="append to the shipped targets a target for every run that has none (in a clone: the repository's file)",
    )
    add_executor_arguments(parser)
    args = parser.parse_args()
    check_executor_arguments(parser, args, device="cpu")
    preset = shipped_presets()["offline_default"]
    epochs = preset["epochs"] if args.epochs is None else args.epochs
    if args.record_targets and epochs != preset["epochs"]:
        parser.error(f"--record-targets records targets for the preset's {preset['epochs']} epochs; drop --epochs")
    config = {
        "train_epochs": epochs,
        "train_mb_size": preset["mb_size"],
        "mask_lr": MASK_LR,
    }
    common = dict(seeds=args.seeds, config=config, pretrain_epochs=preset["pretrain_epochs"])
    targets = read_targets(shipped_targets_path())
    checks = []
    recorded = 0
    report = [
        "# The paper's claims: ablations",
        f"Seeds {args.seeds}; {config['train_epochs']} epochs per task; mean ± std over seeds.",
    ]
    with executor_from_arguments(parser, args, device="cpu") as executor:
        for stream in args.streams:
            out = args.out / stream
            specs = _unique([DEFAULT, *INIT, *SCALE, *TAU.values(), *NORM.values(), *MASKS, *REFERENCES])
            runs = {}
            runs["main"] = run_benchmark(
                stream=stream,
                backbone="small_cnn",
                strategies=specs,
                out_dir=out / "small_cnn",
                executor=executor,
                **common,
            )
            runs["reversed"] = run_benchmark(
                stream=f"{stream}_reversed",
                backbone="small_cnn",
                strategies=ORDER,
                out_dir=out / "reversed",
                executor=executor,
                **common,
            )
            depth = {"small_cnn": runs["main"]}
            for backbone in args.depth_backbones:
                depth[backbone] = run_benchmark(
                    stream=stream,
                    backbone=backbone,
                    strategies=DEPTH_STRATEGIES,
                    out_dir=out / backbone,
                    executor=executor,
                    **common,
                )
            for name, backbone, results in [
                (stream, "small_cnn", runs["main"]),
                (f"{stream}_reversed", "small_cnn", runs["reversed"]),
                *((stream, backbone, depth[backbone]) for backbone in args.depth_backbones),
            ]:
                if args.record_targets:
                    recorded += _record_targets(results, targets, stream=name, backbone=backbone)
                if epochs == preset["epochs"]:  # the shipped targets hold for the preset's epochs
                    checks += check_targets(results, targets, stream=name, backbone=backbone)
            report.append(_tables(stream, runs["main"], runs["main"], runs["reversed"], depth))
            plots = _plots(args.out, stream, runs["main"], runs["main"], runs["reversed"])
            report.append("Plots: " + ", ".join(str(p) for p in plots))
    text = "\n\n".join(report) + "\n"
    (args.out / "claims.md").write_text(text)
    print(text)
    if checks:
        print(f"Targets:\n{format_target_checks(checks)}")
    if recorded:
        print(f"Recorded {recorded} new targets in {shipped_targets_path()}.")
    short = [c for c in checks if not c.passed]
    if epochs == preset["epochs"]:
        print(f"{len(checks) - len(short)} of {len(checks)} targets met.")
    else:
        print(f"Targets not checked: they hold for {preset['epochs']} epochs per task, these runs had {epochs}.")
    return 1 if short else 0


if __name__ == "__main__":
    raise SystemExit(main())
