"""What task inference costs as the number of tasks grows: one inferred
batch over T learned tasks against one plain forward pass of the same
network (the exported task), with the tasks stacked side by side (the
default) and with one pass per task.

    python benchmarks/task_inference_cost.py                      # about 2 minutes on 2 CPU cores

Tasks are frozen Piggyback tasks with random masks (the cost does not
depend on what the masks learned). Columns: the entropy score (the
network's cost alone) and relative Mahalanobis (plus the feature
statistics) with 1, 8 or 32 tasks stacked per pass, and the fallback for
networks that cannot stack (the whole model once per task); then
backbone Mahalanobis (the default), which scores every task from one pass
through the backbone alone and then computes each chosen task on its
samples: per sample (as many chosen tasks as the samples spread over) and
per batch (one). Each figure is
the inferred batch's time over one plain forward pass of the exported
task; times are medians of repeated calls after a warm-up, measured side
by side in one run.
"""

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from piggyback_avalanche import PiggybackModel
from piggyback_avalanche.app.report import markdown_table
from piggyback_avalanche.networks.backbones import mlp, small_cnn
from piggyback_avalanche.task_aware.task_inference import TaskInference

BACKBONES = {"small_cnn": small_cnn, "mlp": lambda: mlp(input_shape=(1, 16, 16))}


def _median_seconds(call: Callable[[], object], repeats: int) -> float:
    call()
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _model(backbone: torch.nn.Module, tasks: int) -> PiggybackModel:
    model = PiggybackModel(backbone, feature_statistics=True, mask_init="uniform", mask_scale=0.01)
    x = torch.randn(64, 1, 16, 16)
    for task in range(tasks):
        model.add_task(task, classes=[2 * (task % 5), 2 * (task % 5) + 1])
        model.fit_feature_statistics(task, [(x, torch.tensor([2 * (task % 5), 2 * (task % 5) + 1] * 32))])
        model.freeze_task(task)
    return model.eval()


PASSES = (1, 8, 32)
"""Tasks per pass measured (``tasks_per_pass``)."""


def _measure(name: str, build: Callable[[], torch.nn.Module], tasks: int, batch: int, repeats: int) -> list[str]:
    model = _model(build(), tasks)
    x = torch.randn(batch, 1, 16, 16)
    plain = model.export_task(0)
    with torch.no_grad():
        plain_s = _median_seconds(lambda: plain(x), repeats * 3)
    inferences = [
        TaskInference(per="sample", score=score, tasks_per_pass=per_pass)
        for score in ("entropy", "relative_mahalanobis")
        for per_pass in PASSES
    ]
    one_by_one = TaskInference(per="sample", score="entropy")
    one_by_one._stacking_works[model] = False  # the fallback: one pass per task through the whole model
    backbone = [TaskInference(per=per, score="backbone_mahalanobis") for per in ("sample", "batch")]  # type: ignore[arg-type]
    ratios = [
        _median_seconds(partial(inference, model, x), repeats) / plain_s
        for inference in [*inferences, one_by_one, *backbone]
    ]
    row = [name, str(tasks), f"{plain_s * 1e3:.2f}", *(f"{r:.1f}x" for r in ratios)]
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", type=int, default=[1, 5, 20, 100])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    rows = [
        _measure(name, build, tasks, args.batch, args.repeats)
        for name, build in BACKBONES.items()
        for tasks in args.tasks
    ]
    print(f"\nbatch {args.batch}, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n")
    header = ["backbone", "tasks", "plain forward ms"]
    header += [f"{score}, {n} per pass" for score in ("entropy", "rel. Mahalanobis") for n in PASSES]
    header += [
        "entropy, fallback (model per task)",
        "backbone Mahalanobis, per sample",
        "backbone Mahalanobis, per batch",
    ]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
