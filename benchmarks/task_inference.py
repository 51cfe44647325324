"""Class-incremental streams without task labels: Piggyback with task
inference (every score, per sample and per batch) next to Avalanche's
class-incremental baselines on the same pretrained backbone.

    python benchmarks/task_inference.py --seeds 0 1 2 --out runs/task_inference   # about 10 minutes on 2 CPU cores

    python benchmarks/task_inference.py --permuted-tasks 10 50 100 --seeds 0 1 2 --out runs/permuted

Streams: the bundled MNIST and digits, split into 5 experiences of 2
classes with no task labels (``class_incremental_stream``); a small CNN
pretrained on the source task; 2 epochs per experience, batch 32, Adam.
With ``--permuted-tasks``: permuted MNIST with that many tasks and no task
labels (``permuted_mnist_stream``), an MLP pretrained on unpermuted MNIST,
Piggyback only (SupSup's claim: the task is inferred among many).
Piggyback is trained once per seed with feature statistics; every score
and mode is then evaluated on that model (per batch: test batches of 64
samples of one experience, SupSup's "GNu" assumption). Stored bytes count
the model and, for replay and GDumb, the exemplars.
"""

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avalanche.training import EWC, GDumb, JointTraining, LwF, Naive
from avalanche.training.plugins import ReplayPlugin

from piggyback_avalanche import Piggyback, PiggybackModel
from piggyback_avalanche.app.report import markdown_table
from piggyback_avalanche.benchmarks.offline import class_incremental_stream, permuted_mnist_stream
from piggyback_avalanche.networks.backbones import mlp, small_cnn
from piggyback_avalanche.networks.pretraining import pretrain
from piggyback_avalanche.task_aware.task_inference import TaskInference
from piggyback_avalanche.task_aware.task_scores import TASK_SCORES

MB, LR, BATCH_OF_ONE_TASK = 32, 1e-3, 64
SCORES = [
    *TASK_SCORES,
    "mahalanobis",
    "relative_mahalanobis",
    "backbone_mahalanobis",
    "backbone_and_relative_mahalanobis",
]


def _tensors(stream: Any) -> list[Any]:
    out = []
    for experience in stream:
        samples = [experience.dataset[i] for i in range(len(experience.dataset))]
        out.append((torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples])))
    return out


def _accuracy(predict: Callable[[torch.Tensor, int], torch.Tensor], test: list[Any], batch: int) -> float:
    right = total = 0
    for k, (x, y) in enumerate(test):
        for rows in torch.arange(len(y)).split(batch):
            right += int((predict(x[rows], k) == y[rows]).sum())
            total += len(rows)
    return right / total


def _inferred_accuracy(model: nn.Module, inference: TaskInference, test: list[Any], batch: int) -> tuple[float, float]:
    """Accuracy, and the share of samples whose inferred task is right."""
    right_task = seen = 0

    def predict(x: torch.Tensor, k: int) -> torch.Tensor:
        nonlocal right_task, seen
        inferred = inference(model, x)  # type: ignore[arg-type]
        right_task += int((inferred.tasks == k).sum())
        seen += len(x)
        return inferred.logits.argmax(1)

    accuracy = _accuracy(predict, test, batch)
    return accuracy, right_task / seen


def _single_head_accuracy(model: nn.Module, test: list[Any]) -> float:
    with torch.no_grad():
        return _accuracy(lambda x, k: model(x).argmax(1), test, 256)


def _piggyback(
    backbone: nn.Module, benchmark: Any, test: list[Any], epochs: int, scores: Sequence[str] = SCORES
) -> dict[str, dict[str, float]]:
    model = PiggybackModel(backbone, feature_statistics=True)
    strategy = Piggyback(model=model, task_inference="sample", train_epochs=epochs, train_mb_size=MB, evaluator=None)
    started = time.perf_counter()
    for experience in benchmark.train_stream:
        strategy.train(experience)
    seconds_per_task = (time.perf_counter() - started) / len(benchmark.train_stream)
    model.eval()
    assert model.feature_statistics is not None and model.backbone_feature_statistics is not None
    # Each score's row counts only the statistics it reads.
    own = sum(t.nbytes for t in model.feature_statistics.state_dict().values())
    shared = sum(t.nbytes for t in model.backbone_feature_statistics.state_dict().values())
    network = model.stored_bytes() - own - shared
    reads = {"mahalanobis": own, "relative_mahalanobis": own, "backbone_mahalanobis": shared,
             "backbone_and_relative_mahalanobis": own + shared}  # fmt: skip
    rows = {"piggyback, task labels given": {"accuracy": _accuracy(lambda x, k: model(x, k).argmax(1), test, 256),
                                             "task inference": 1.0, "bytes": network,
                                             "seconds per task": seconds_per_task}}  # fmt: skip
    for score in scores:
        for per, batch in (("sample", 256), ("batch", BATCH_OF_ONE_TASK)):
            inference = TaskInference(per=per, score=score)  # type: ignore[arg-type]
            accuracy, task_accuracy = _inferred_accuracy(model, inference, test, batch)
            rows[f"piggyback, {score}, per {per}"] = {
                "accuracy": accuracy, "task inference": task_accuracy, "bytes": network + reads.get(score, 0),
                "seconds per task": seconds_per_task,
            }  # fmt: skip
    return rows


def _baselines(backbone: nn.Module, benchmark: Any, test: list[Any], epochs: int) -> dict[str, dict[str, float]]:
    def build(kind: str) -> Any:
        model = copy.deepcopy(backbone)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        common = dict(
            criterion=nn.CrossEntropyLoss(), train_mb_size=MB, train_epochs=epochs, eval_mb_size=256, evaluator=None
        )
        if kind == "naive":
            return Naive(model=model, optimizer=optimizer, **common)
        if kind == "ewc":
            return EWC(model=model, optimizer=optimizer, ewc_lambda=1000.0, **common)
        if kind == "lwf":
            return LwF(model=model, optimizer=optimizer, alpha=1.0, temperature=2.0, **common)
        if kind.startswith("replay"):
            memory = int(kind.split("-")[1])
            return Naive(model=model, optimizer=optimizer, plugins=[ReplayPlugin(mem_size=memory)], **common)
        if kind == "gdumb-500":
            return GDumb(model=model, optimizer=optimizer, mem_size=500, **common)
        return JointTraining(model=model, optimizer=optimizer, **common)

    rows = {}
    exemplar_bytes = test[0][0][0].nbytes + 8  # an image and its int64 label
    for kind in ("naive", "ewc", "lwf", "replay-200", "replay-500", "gdumb-500", "joint"):
        strategy = build(kind)
        if kind == "joint":
            strategy.train(benchmark.train_stream)
        else:
            for experience in benchmark.train_stream:
                strategy.train(experience)
        model = strategy.model.eval()
        accuracy = _single_head_accuracy(model, test)
        exemplars = int(kind.split("-")[1]) if "-" in kind else 0
        model_bytes = sum(t.nbytes for t in model.state_dict().values())
        rows[kind] = {
            "accuracy": accuracy,
            "task inference": float("nan"),
            "bytes": model_bytes + exemplars * exemplar_bytes,
        }
    return rows


def _table(title: str, runs: dict[str, list[dict[str, float]]]) -> str:
    def cell(name: str, key: str, scale: float = 100.0) -> str:
        values = [run[key] * scale for run in runs[name]]
        if any(v != v for v in values):
            return "-"
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} ± {spread:.1f}"

    rows = [[name, cell(name, "accuracy"), cell(name, "task inference"), f"{runs[name][0]['bytes'] / 1024:.0f}"]
            for name in runs]  # fmt: skip
    return f"\n### {title}\n\n" + markdown_table(["method", "accuracy %", "task inference %", "stored KiB"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "digits"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per experience")
    parser.add_argument("--permuted-tasks", nargs="+", type=int, help="permuted MNIST with these task counts instead")
    parser.add_argument("--out", type=Path, default=Path("runs/task_inference"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    if args.permuted_tasks:
        for n_tasks in args.permuted_tasks:
            runs: dict[str, list[dict[str, float]]] = {}
            for seed in args.seeds:
                source, benchmark = permuted_mnist_stream(n_tasks, seed=seed)
                torch.manual_seed(seed)
                backbone = pretrain(mlp(input_shape=(1, 16, 16)), source, epochs=5, lr=LR, mb_size=64, device="cpu",
                                    seed=seed)  # fmt: skip
                test = _tensors(benchmark.test_stream)
                scores = ("entropy", "relative_mahalanobis", "backbone_mahalanobis")
                for name, row in _piggyback(backbone, benchmark, test, args.epochs, scores).items():
                    runs.setdefault(name, []).append(row)
                print(f"permuted {n_tasks} seed {seed} done", flush=True)
            (args.out / f"permuted{n_tasks}.json").write_text(json.dumps(runs, indent=1))
            seconds = statistics.mean(run["seconds per task"] for run in runs["piggyback, task labels given"])
            print(_table(f"Permuted MNIST, {n_tasks} tasks (seeds {args.seeds}, {seconds:.2f} s per task)", runs))
        return
    for dataset in args.datasets:
        runs = {}
        for seed in args.seeds:
            source, benchmark = class_incremental_stream(dataset, seed=seed)
            torch.manual_seed(seed)
            backbone = pretrain(small_cnn(), source, epochs=5, lr=LR, mb_size=64, device="cpu", seed=seed)
            test = _tensors(benchmark.test_stream)
            found = {
                **_piggyback(backbone, benchmark, test, args.epochs),
                **_baselines(backbone, benchmark, test, args.epochs),
            }
            for name, row in found.items():
                runs.setdefault(name, []).append(row)
            print(f"{dataset} seed {seed} done", flush=True)
        (args.out / f"{dataset}.json").write_text(json.dumps(runs, indent=1))
        print(_table(f"Class-incremental {dataset} (5 x 2 classes, {args.epochs} epochs, seeds {args.seeds})", runs))


if __name__ == "__main__":
    main()
