"""The claims of SupSup, WSN and HAT, each checked on the offline streams
(the comparison of every method is the runner's: BENCHMARKS.md names the
commands).

    python benchmarks/mask_family.py --seeds 0 1 2 --out runs/mask_family   # about 25 minutes on 2 CPU cores

1. SupSup (Wortsman et al., 2020) on permuted MNIST without task labels
   (``permuted_mnist_stream``, SupSup's "GNu" streams; 16x16 images, an MLP
   256-300-300-10 that is never trained, signed constants): its accuracy
   with task labels against individual networks trained from the same
   initialisation (its claim: a random network's supermasks come close to
   trained networks), and how often its task inference finds the task among
   ``--permuted-tasks`` tasks: SupSup's one-shot score per batch of 64
   samples of one task (its setting) and per sample, against the entropy
   and the Mahalanobis score the library defaults to.
2. What each method spends of its network and whether it forgets: on the
   offline default stream (``mnist_transfer``, the small CNN pretrained on
   the source task, 5 epochs per task, as ``--config offline_default``), the
   share of the network's weights that no new task can train after each
   task (PackNet: owned; WSN: selected by some task; HAT: blocked by
   earlier tasks' attention, each weight weighed by it), the tasks that fit
   before 99 % is spent (extrapolated geometrically from the five tasks),
   and the largest change of any earlier task's logits over the stream
   (exactly 0 for a method that forgets nothing).

Every run goes through Avalanche's loop (``strategy.train(experience)``
then ``strategy.eval`` of the test experiences seen so far).
"""

import argparse
import json
import math
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from piggyback_avalanche import make_strategy
from piggyback_avalanche.app.pretrained_cache import pretrained_backbone
from piggyback_avalanche.app.report import markdown_table
from piggyback_avalanche.app.shipped import shipped_presets
from piggyback_avalanche.app.streams import STREAMS
from piggyback_avalanche.benchmarks.offline import permuted_mnist_stream
from piggyback_avalanche.task_aware.task_inference import TaskInference

EPOCHS, MB, BATCH_OF_ONE_TASK = 3, 32, 64
DEFAULT_STREAM = shipped_presets()["offline_default"]
"""The capacity part's settings: the runner's ``--config offline_default``."""
INFERENCE = [("one_shot", "batch"), ("one_shot", "sample"), ("entropy", "sample"), ("relative_mahalanobis", "sample")]
CAPACITY_METHODS = ["piggyback", "supsup", "packnet", "wsn", "hat"]


def _tensors(stream: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for experience in stream:
        samples = [experience.dataset[i] for i in range(len(experience.dataset))]
        out.append((torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples])))
    return out


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(256, 300), nn.ReLU(), nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 10)
    )


def _train(strategy: Any, benchmark: Any) -> None:
    for index, experience in enumerate(benchmark.train_stream):
        strategy.train(experience)
        strategy.eval(benchmark.test_stream[: index + 1])


@torch.no_grad()
def _accuracy_with_labels(model: Any, tests: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    model.eval()
    hits = sum(int((model(x, task).argmax(1) == y).sum()) for task, (x, y) in enumerate(tests))
    return 100 * hits / sum(len(y) for _, y in tests)


def _inference(
    model: Any, tests: Sequence[tuple[torch.Tensor, torch.Tensor]], score: str, per: str
) -> tuple[float, float]:
    """Task-inference accuracy and accuracy with the inferred tasks (%),
    in batches of 64 samples of one task."""
    inference = TaskInference(per=per, score=score)  # type: ignore[arg-type]
    model.eval()
    found = correct = total = 0
    for task, (x, y) in enumerate(tests):
        for start in range(0, len(y), BATCH_OF_ONE_TASK):
            answer = inference(model, x[start : start + BATCH_OF_ONE_TASK])
            found += int((answer.tasks == task).sum())
            correct += int((answer.logits.argmax(1) == y[start : start + BATCH_OF_ONE_TASK]).sum())
            total += len(answer.tasks)
    return 100 * found / total, 100 * correct / total


def supsup_on_permuted_mnist(tasks: int, seed: int, epochs: int = EPOCHS) -> dict[str, float]:
    """SupSup with task labels, individual networks, and every inference."""
    torch.manual_seed(seed)
    _, benchmark = permuted_mnist_stream(tasks, seed=seed)
    tests = _tensors(benchmark.test_stream)
    settings = {"train_epochs": epochs, "train_mb_size": MB, "evaluator": None}
    result: dict[str, float] = {}
    # The stream has no task labels: experience k is task k, and every score is evaluated on the one model.
    inferring = {"task_inference": "batch", "task_score": "one_shot"}
    supsup = make_strategy("supsup", _mlp(), feature_statistics=True, weight_seed=seed, **inferring, **settings)
    _train(supsup, benchmark)
    result["supsup"] = _accuracy_with_labels(supsup.model, tests)
    torch.manual_seed(seed)
    individual = make_strategy("individual", _mlp(), task_inference="sample", task_score="entropy", **settings)
    _train(individual, benchmark)
    result["individual"] = _accuracy_with_labels(individual.model, tests)
    for score, per in INFERENCE:
        found, correct = _inference(supsup.model, tests, score, per)
        result[f"{score}/{per} task"] = found
        result[f"{score}/{per} accuracy"] = correct
    return result


def capacity_and_forgetting(
    method: str, seed: int, cache: Path, epochs: int = DEFAULT_STREAM["epochs"]
) -> dict[str, Any]:
    """``method`` on the offline default stream: capacity spent after each
    task, and the largest change of an earlier task's logits."""
    source, benchmark = STREAMS[DEFAULT_STREAM["stream"]](seed=seed, data_root=None, crop_size=224)
    shape = benchmark.train_stream[0].dataset[0][0].shape
    pretraining = {"epochs": DEFAULT_STREAM["pretrain_epochs"], "lr": 1e-3, "mb_size": MB, "device": "cpu"}
    backbone = pretrained_backbone(
        DEFAULT_STREAM["backbone"],
        DEFAULT_STREAM["stream"],
        source,
        shape,
        pretrained=False,
        seed=seed,
        cache_dir=cache,
        pretraining=pretraining,
        log=lambda line: None,
    )
    torch.manual_seed(seed)
    strategy = make_strategy(method, backbone, train_epochs=epochs, train_mb_size=MB, evaluator=None)
    tests = _tensors(benchmark.test_stream)
    recorded: dict[int, torch.Tensor] = {}
    spent, largest_change = [], 0.0
    for index, experience in enumerate(benchmark.train_stream):
        strategy.train(experience)
        strategy.eval(benchmark.test_stream[: index + 1])
        model = strategy.model.eval()
        with torch.no_grad():
            for task in range(index + 1):
                logits = model(tests[task][0], task)
                before = recorded.setdefault(task, logits)
                largest_change = max(largest_change, float((logits - before).abs().max()))
        spent.append(model.capacity_used())
    free = [1 - s for s in spent]
    # Free share after n tasks, fitted as free_0 * q**n: tasks until 1 % is free.
    q = (free[-1] / free[0]) ** (1 / (len(free) - 1)) if free[0] > 0 and free[-1] > 0 else 0.0
    fit = (
        math.inf
        if q >= 1 or not spent[0]
        else len(free) + math.log(0.01 / free[-1]) / math.log(q)
        if q > 0
        else len(free)
    )
    return {"spent": spent, "tasks_until_99": fit, "largest_logit_change": largest_change}


def _mean_std(values: Sequence[float]) -> str:
    if any(math.isinf(v) for v in values):
        return "unlimited"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--permuted-tasks", type=int, nargs="+", default=[10, 25])
    parser.add_argument("--methods", nargs="+", default=CAPACITY_METHODS, help="of the capacity part")
    parser.add_argument("--capacity-seeds", type=int, nargs="+", help="of the capacity part (default: --seeds)")
    parser.add_argument(
        "--epochs", type=int, help=f"per task, both parts (default: {EPOCHS} on permuted MNIST, the preset's otherwise)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/mask_family"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["# The mask-based family's claims", ""]

    per_task = {"epochs": args.epochs} if args.epochs else {}
    supsup = {n: [supsup_on_permuted_mnist(n, seed, **per_task) for seed in args.seeds] for n in args.permuted_tasks}
    (args.out / "supsup.json").write_text(json.dumps(supsup, indent=1))  # the first part, kept if the second fails
    header = [
        "tasks",
        "SupSup, task labels",
        "individual networks",
        *(f"{s} per {p}: task found / accuracy" for s, p in INFERENCE),
    ]
    rows = []
    for n, runs in supsup.items():
        row = [str(n), _mean_std([r["supsup"] for r in runs]), _mean_std([r["individual"] for r in runs])]
        for score, per in INFERENCE:
            found = _mean_std([r[f"{score}/{per} task"] for r in runs])
            row.append(f"{found} / {_mean_std([r[f'{score}/{per} accuracy'] for r in runs])}")
        rows.append(row)
    lines += ["## SupSup on permuted MNIST without task labels", "", markdown_table(header, rows), ""]

    with tempfile.TemporaryDirectory() as cache:
        seeds = args.capacity_seeds or args.seeds
        capacity = {
            m: [capacity_and_forgetting(m, seed, Path(cache), **per_task) for seed in seeds] for m in args.methods
        }
    header = ["method", *(f"spent after task {t}" for t in range(5)), "tasks until 99 % spent", "largest logit change"]
    rows = []
    for method, runs in capacity.items():
        spent = [_mean_std([100 * r["spent"][t] for r in runs]) for t in range(5)]
        change = max(r["largest_logit_change"] for r in runs)
        rows.append(
            [method, *spent, _mean_std([r["tasks_until_99"] for r in runs]), f"{change:.1e}" if change else "0"]
        )
    lines += [
        "## Capacity spent (% of the weights) and forgetting, offline default stream",
        "",
        markdown_table(header, rows),
        "",
    ]

    (args.out / "claims.md").write_text("\n".join(lines))
    (args.out / "claims.json").write_text(json.dumps({"supsup": supsup, "capacity": capacity}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
