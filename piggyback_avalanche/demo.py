"""Offline demo: Piggyback against plain fine-tuning and separately fine-tuned
networks on a task stream made from scikit-learn's bundled digits.

Run ``python -m piggyback_avalanche.demo`` (or ``piggyback-demo``). Nothing is
downloaded. The first task trains the backbone (the stream has no pretrained
network); every later task is an input transformation of the digits that
Piggyback learns as a mask over that frozen backbone.
"""

import argparse
import copy
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.models import MultiTaskModule
from avalanche.models.helper_method import as_multitask
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate

from piggyback_avalanche.backbones import small_cnn
from piggyback_avalanche.model import PiggybackModel
from piggyback_avalanche.streams import digits_task_stream
from piggyback_avalanche.strategies import DEFAULT_LR, DEFAULT_MASK_LR, Piggyback

__all__ = [
    "main",
    "run_demo",
    "run_piggyback",
    "run_fine_tuning",
    "run_individual_networks",
    "format_table",
]

TASKS = ("original", "rotated90", "inverted", "flipped", "transposed")


def _evaluator() -> EvaluationPlugin:
    # The demo prints its own table; Avalanche warns about a logger-less evaluator.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(
            accuracy_metrics(experience=True),
            forgetting_metrics(experience=True),
            loggers=[],
        )


def _per_task(metrics: Dict[str, float], prefix: str, n_tasks: int) -> List[Optional[float]]:
    def value(task: int) -> Optional[float]:
        return metrics.get(f"{prefix}/eval_phase/test_stream/Task{task:03d}/Exp{task:03d}")

    return [value(task) for task in range(n_tasks)]


def _multihead_cnn() -> MultiTaskModule:
    backbone = small_cnn()
    classifier = [name for name, m in backbone.named_children() if isinstance(m, nn.Linear)][-1]
    return as_multitask(backbone, classifier)


def _train_sequentially(strategy: SupervisedTemplate, benchmark) -> Dict[str, float]:
    for i, experience in enumerate(benchmark.train_stream):
        strategy.train(experience)
        metrics = strategy.eval(benchmark.test_stream[: i + 1])
    return metrics


def _fine_tuning(
    model: MultiTaskModule, *, epochs: int, lr: float, evaluator: EvaluationPlugin
) -> Naive:
    return Naive(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=lr),
        train_mb_size=32,
        train_epochs=epochs,
        eval_mb_size=256,
        evaluator=evaluator,
    )


Result = Dict[str, List[Optional[float]]]
"""``{"accuracy": [...], "forgetting": [...], "seconds": [t]}``, one entry per
task (forgetting is ``None`` for the last task)."""


def _result(metrics: Dict[str, float], n_tasks: int, started: float) -> Result:
    return {
        "accuracy": _per_task(metrics, "Top1_Acc_Exp", n_tasks),
        "forgetting": _per_task(metrics, "ExperienceForgetting", n_tasks),
        "seconds": [time.perf_counter() - started],
    }


def run_piggyback(benchmark, *, epochs: int, mask_lr: float, lr: float, seed: int) -> Result:
    """Piggyback with the backbone trained on the first task."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    strategy = Piggyback(
        model=PiggybackModel(small_cnn()),
        mask_lr=mask_lr,
        lr=lr,
        train_epochs=epochs,
        train_backbone_on_first_experience=True,
        evaluator=_evaluator(),
    )
    metrics = _train_sequentially(strategy, benchmark)
    return _result(metrics, len(benchmark.train_stream), started)


def run_fine_tuning(benchmark, *, epochs: int, lr: float, seed: int) -> Result:
    """One network fine-tuned on every task in turn, one head per task."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    strategy = _fine_tuning(_multihead_cnn(), epochs=epochs, lr=lr, evaluator=_evaluator())
    metrics = _train_sequentially(strategy, benchmark)
    return _result(metrics, len(benchmark.train_stream), started)


def run_individual_networks(benchmark, *, epochs: int, lr: float, seed: int) -> Result:
    """A network trained on the first task, and a copy of it fine-tuned on
    each later task."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    first = _multihead_cnn()
    evaluator = _evaluator()
    metrics: Dict[str, float] = {}
    for i, experience in enumerate(benchmark.train_stream):
        model = first if i == 0 else copy.deepcopy(first)
        strategy = _fine_tuning(model, epochs=epochs, lr=lr, evaluator=evaluator)
        strategy.train(experience)
        metrics.update(strategy.eval(benchmark.test_stream[i : i + 1]))
    result = _result(metrics, len(benchmark.train_stream), started)
    # Each network is never trained again, so nothing is forgotten.
    result["forgetting"] = [0.0] * (len(benchmark.train_stream) - 1) + [None]
    return result


def run_demo(
    *,
    epochs: int = 5,
    mask_lr: float = DEFAULT_MASK_LR,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    tasks: Sequence[str] = TASKS,
    log: Callable[[str], None] = print,
) -> Dict[str, Result]:
    """Train the three methods on the digits stream; their results by name."""
    benchmark = digits_task_stream(tasks, seed=seed)
    results: Dict[str, Result] = {}
    log(f"Piggyback: the backbone trains on '{tasks[0]}', then one mask per task.")
    results["piggyback"] = run_piggyback(benchmark, epochs=epochs, mask_lr=mask_lr, lr=lr, seed=seed)
    log("Fine-tuning: one network trained on every task in turn, one head per task.")
    results["fine-tuning"] = run_fine_tuning(benchmark, epochs=epochs, lr=lr, seed=seed)
    log(f"Individual networks: a copy of the '{tasks[0]}' network fine-tuned per task.")
    results["individual networks"] = run_individual_networks(benchmark, epochs=epochs, lr=lr, seed=seed)
    return results


def format_table(results: Dict[str, Result], tasks: Sequence[str]) -> str:
    """A Markdown table of per-task accuracy, mean accuracy and mean forgetting."""

    def pct(value: Optional[float]) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    header = ["method", *tasks, "mean acc.", "mean forgetting", "time (s)"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in results.items():
        accuracy = [a for a in result["accuracy"] if a is not None]
        forgetting = [f for f in result["forgetting"] if f is not None]
        rows.append(
            "| "
            + " | ".join(
                [
                    name,
                    *(pct(a) for a in result["accuracy"]),
                    pct(sum(accuracy) / len(accuracy)),
                    pct(sum(forgetting) / len(forgetting) if forgetting else None),
                    f"{result['seconds'][0]:.0f}",
                ]
            )
            + " |"
        )
    return "\n".join(rows)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs per task (default 5)")
    parser.add_argument(
        "--mask-lr", type=float, default=DEFAULT_MASK_LR, help="Piggyback's mask learning rate"
    )
    parser.add_argument(
        "--lr", type=float, default=DEFAULT_LR, help="learning rate of heads, norms and fine-tuning"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    print(f"Offline digits stream: {len(TASKS)} tasks ({', '.join(TASKS)}), 10 classes each, "
          f"{args.epochs} epochs per task, on CPU.")
    results = run_demo(epochs=args.epochs, mask_lr=args.mask_lr, lr=args.lr, seed=args.seed)
    print()
    print("Final test accuracy per task (%) and mean forgetting (percentage points):")
    print(format_table(results, TASKS))


if __name__ == "__main__":
    main()
