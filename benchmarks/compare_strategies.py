"""Every registered strategy on one offline stream and one backbone.

The stream is the demo's five digits tasks; the backbone an MLP (Avalanche's
PackNet, kept as a cross-check, takes no batch norm). Piggyback trains the
backbone on the first task, as there is no pretrained network. Prints the
final average accuracy and forgetting (Avalanche's metrics), and the training
time per epoch relative to naive fine-tuning, timed by a plugin around every
training epoch.

    python benchmarks/compare_strategies.py --epochs 5 --seed 0
"""

import argparse
import time
from typing import Dict, List

import torch
from torch import nn

from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.training.plugins import EvaluationPlugin, SupervisedPlugin

from piggyback_avalanche import available_strategies, make_strategy
from piggyback_avalanche.demo import TASKS
from piggyback_avalanche.streams import digits_task_stream


class EpochTimer(SupervisedPlugin):
    """Wall-clock seconds of every training epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: List[float] = []

    def before_training_epoch(self, strategy, **kwargs):
        self._started = time.perf_counter()

    def after_training_epoch(self, strategy, **kwargs):
        self.seconds.append(time.perf_counter() - self._started)


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def run(name: str, benchmark, *, epochs: int, seed: int) -> Dict[str, float]:
    torch.manual_seed(seed)
    timer = EpochTimer()
    extra = {"train_backbone_on_first_experience": True} if name.startswith("piggyback") else {}
    if name == "packnet_avalanche":
        # Its train_epochs include the post-pruning ones; ours add them.
        extra = {"train_epochs": epochs + 1}
    strategy = make_strategy(
        name,
        mlp(),
        **{"train_epochs": epochs, **extra},
        plugins=[timer],
        evaluator=EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True), forgetting_metrics(experience=True), loggers=[]
        ),
    )
    stream, tests = benchmark.train_stream, benchmark.test_stream
    if name == "joint":
        strategy.train(stream)
        metrics = strategy.eval(tests)
    else:
        for i, experience in enumerate(stream):
            strategy.train(experience)
            metrics = strategy.eval(tests[: i + 1])
    n = len(stream)
    accuracy = [metrics[f"Top1_Acc_Exp/eval_phase/test_stream/Task{t:03d}/Exp{t:03d}"] for t in range(n)]
    forgetting = [
        metrics.get(f"ExperienceForgetting/eval_phase/test_stream/Task{t:03d}/Exp{t:03d}", 0.0)
        for t in range(n - 1)
    ]
    return {
        "accuracy": sum(accuracy) / n,
        "forgetting": sum(forgetting) / len(forgetting),
        "epoch_seconds": sum(timer.seconds) / len(timer.seconds),
        "epochs": len(timer.seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategies", nargs="+", default=available_strategies())
    args = parser.parse_args()
    benchmark = digits_task_stream(TASKS, seed=args.seed)
    results = {}
    for name in args.strategies:
        results[name] = run(name, benchmark, epochs=args.epochs, seed=args.seed)
        print(f"{name}: {results[name]}", flush=True)
    naive = results.get("naive", {}).get("epoch_seconds")
    print(f"\nDigits stream, {len(TASKS)} tasks, MLP 64-256-256-10, {args.epochs} epochs, seed {args.seed}")
    print("| strategy | avg accuracy (%) | avg forgetting (points) | epochs run | s / epoch | × naive |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        ratio = f"{r['epoch_seconds'] / naive:.2f}" if naive else "-"
        print(
            f"| {name} | {100 * r['accuracy']:.1f} | {100 * r['forgetting']:.1f} | {r['epochs']} "
            f"| {r['epoch_seconds']:.3f} | {ratio} |"
        )


if __name__ == "__main__":
    main()
