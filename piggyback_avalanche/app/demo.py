"""Offline demo: Piggyback against plain fine-tuning and separately trained
networks on a task stream made from scikit-learn's bundled digits.

Run ``python -m piggyback_avalanche.app.demo`` (or ``piggyback-demo``).
Nothing is downloaded. The stream has no pretrained network, so Piggyback
trains the backbone on the first task and learns every later task (an input
transformation of the digits) as a mask over that frozen backbone.
"""

import argparse
from collections.abc import Callable, Sequence

import torch

from piggyback_avalanche.app.report import markdown_table
from piggyback_avalanche.app.runner import strategy_settings, train_and_evaluate
from piggyback_avalanche.benchmarks.offline import DIGITS_TASKS, digits_task_stream
from piggyback_avalanche.networks.backbones import small_cnn
from piggyback_avalanche.task_aware.strategy import DEFAULT_LR, DEFAULT_TRAIN_EPOCHS

__all__ = ["main", "run_demo", "format_table", "TASKS", "METHODS"]

TASKS = DIGITS_TASKS

METHODS: dict[str, str] = {
    "piggyback": "piggyback",
    "fine-tuning": "naive",
    "individual networks": "individual",
}
"""The demo's methods and the registered strategies they are."""

_ABOUT = {
    "piggyback": "Piggyback: the backbone trains on the first task, then one mask per task.",
    "fine-tuning": "Fine-tuning: one network trained on every task in turn, one head per task.",
    "individual networks": "Individual networks: a copy of the untrained network trained per task.",
}

Result = dict[str, list[float | None]]
"""``{"accuracy": [...], "forgetting": [...], "seconds": [t]}``, one entry per
task (forgetting is ``None`` for the last task)."""


def _forgetting(matrix: list[list[float | None]]) -> list[float | None]:
    """Avalanche's experience forgetting from an accuracy matrix: each task's
    accuracy right after training it, minus its final accuracy."""
    last = len(matrix) - 1
    return [matrix[t][t] - matrix[last][t] for t in range(last)] + [None]  # type: ignore[operator]


def run_demo(
    *,
    epochs: int = DEFAULT_TRAIN_EPOCHS,
    mask_lr: float | None = None,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    tasks: Sequence[str] = TASKS,
    log: Callable[[str], None] = print,
) -> dict[str, Result]:
    """Train the three methods on the digits stream, each from the same
    untrained backbone; their results by name."""
    benchmark = digits_task_stream(tasks, seed=seed)
    config = {"train_epochs": epochs, "lr": lr, "mask_lr": mask_lr}
    results: dict[str, Result] = {}
    for label, name in METHODS.items():
        log(_ABOUT[label])
        torch.manual_seed(seed)
        backbone = small_cnn()
        run = train_and_evaluate(name, benchmark, backbone, **strategy_settings(name, config, untrained_backbone=True))
        results[label] = {
            "accuracy": list(run["accuracy"]),
            "forgetting": _forgetting(run["accuracy_matrix"]),
            "seconds": [run["train_seconds"]],
        }
    return results


def format_table(results: dict[str, Result], tasks: Sequence[str]) -> str:
    """A Markdown table of per-task accuracy, mean accuracy and mean forgetting."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    rows = []
    for name, result in results.items():
        accuracy = [a for a in result["accuracy"] if a is not None]
        forgetting = [f for f in result["forgetting"] if f is not None]
        rows.append(
            [
                name,
                *(pct(a) for a in result["accuracy"]),
                pct(sum(accuracy) / len(accuracy)),
                pct(sum(forgetting) / len(forgetting) if forgetting else None),
                f"{result['seconds'][0]:.0f}",
            ]
        )
    return markdown_table(["method", *tasks, "mean acc.", "mean forgetting", "time (s)"], rows)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=DEFAULT_TRAIN_EPOCHS, help="epochs per task")
    parser.add_argument(
        "--mask-lr", type=float, help="Piggyback's mask learning rate (default: one per experience, from its steps)"
    )
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help="learning rate of heads, norms and whole networks")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the initial backbone")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    print(
        f"Offline digits stream: {len(TASKS)} tasks ({', '.join(TASKS)}), 10 classes each, "
        f"{args.epochs} epochs per task, on CPU."
    )
    results = run_demo(epochs=args.epochs, mask_lr=args.mask_lr, lr=args.lr, seed=args.seed)
    print()
    print("Final test accuracy per task (%) and mean forgetting (percentage points):")
    print(format_table(results, TASKS))


if __name__ == "__main__":
    main()
