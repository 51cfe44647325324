"""The benchmark runner: several registered strategies, one stream, one
backbone, several seeds; one TensorBoard run per strategy and seed, and a
results table in Markdown, CSV and JSON.

    piggyback-bench --stream digits --backbone small_cnn \\
        --strategies piggyback packnet individual naive --epochs 5 --seeds 0 1 --out runs/digits

Finished (strategy, seed) runs are saved as they end and are not recomputed
when the same command runs again.
"""

import argparse
import hashlib
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from avalanche.training.plugins import SupervisedPlugin

from piggyback_avalanche.backbones import small_cnn
from piggyback_avalanche.evaluation import _write_atomically, default_evaluator
from piggyback_avalanche.metrics import ModelSize, accuracy_matrix_figure, network_bytes
from piggyback_avalanche.registry import available_strategies, make_strategy
from piggyback_avalanche.streams import SourceTask, digits_task_stream, mnist_transfer_stream

__all__ = ["STREAMS", "BACKBONES", "EpochTimer", "train_and_evaluate", "run_benchmark", "main"]

STREAMS: Dict[str, Callable[[int], Tuple[Optional[SourceTask], Any]]] = {
    "mnist_transfer": lambda seed: mnist_transfer_stream(seed=seed),
    "digits": lambda seed: (None, digits_task_stream(seed=seed)),
}
"""Stream names and their builders: ``builder(seed) -> (source task or None,
benchmark)``. With a source task the runner pretrains the backbone on it."""


def _mlp(input_shape: Sequence[int]) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


BACKBONES: Dict[str, Callable[[Sequence[int]], nn.Module]] = {
    "small_cnn": lambda input_shape: small_cnn(in_channels=input_shape[0]),
    "mlp": _mlp,
}
"""Backbone names and their builders (``builder(input_shape) -> network``)."""


def pretrain(
    backbone: nn.Module, source: SourceTask, *, epochs: int, lr: float, mb_size: int, device: str, seed: int
) -> nn.Module:
    """Train ``backbone`` on the source task with Adam, in place.

    :return: the backbone, in eval mode.
    """
    images, labels = source
    generator = torch.Generator().manual_seed(seed)
    backbone.to(device).train()
    optimizer = torch.optim.Adam(backbone.parameters(), lr=lr)
    for _ in tqdm(range(epochs), desc="pretraining", unit="epoch", leave=False):
        for batch in torch.randperm(len(labels), generator=generator).split(mb_size):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(backbone(images[batch].to(device)), labels[batch].to(device))
            loss.backward()
            optimizer.step()
    return backbone.cpu().eval()


def _backbone(
    name: str, stream: str, source: Optional[SourceTask], input_shape: Sequence[int], *,
    seed: int, cache_dir: Path, pretrain_epochs: int, lr: float, mb_size: int, device: str,
    log: Callable[[str], None],
) -> nn.Module:
    """A fresh backbone; pretrained on the source task if the stream has one,
    from a cache under ``cache_dir`` after the first time."""
    torch.manual_seed(seed)
    backbone = BACKBONES[name](input_shape)
    if source is None:
        return backbone
    path = cache_dir / f"{stream}-{name}-seed{seed}-epochs{pretrain_epochs}.pt"
    if path.exists():
        backbone.load_state_dict(torch.load(path, weights_only=True))
        return backbone
    log(f"pretraining {name} on the source task of {stream} ({pretrain_epochs} epochs)")
    pretrain(backbone, source, epochs=pretrain_epochs, lr=lr, mb_size=mb_size, device=device, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(backbone.state_dict(), temporary)
    temporary.replace(path)
    return backbone


def train_and_evaluate(
    name: str, benchmark: Any, backbone: nn.Module, *, log_dir: Optional[Path] = None, **config: Any
) -> Dict[str, Any]:
    """Train a registered strategy on every experience (``joint``: on the
    whole stream at once), evaluating the experiences seen so far after each,
    and summarise.

    :return: per-task final accuracy, average accuracy, average forgetting
        and BWT (over all but the last task), model size (bytes and × one
        network), training seconds, seconds per epoch and epochs run.
    """
    timer = EpochTimer()
    evaluator = default_evaluator(tb_dir=log_dir, interactive=False)
    strategy = make_strategy(
        name, backbone, evaluator=evaluator, plugins=[timer, *config.pop("plugins", [])], **config
    )
    stream, tests = benchmark.train_stream, benchmark.test_stream
    started = time.perf_counter()
    if name == "joint":
        strategy.train(stream)
        metrics = strategy.eval(tests)
    else:
        for i, experience in enumerate(stream):
            strategy.train(experience)
            metrics = strategy.eval(tests[: i + 1])
    seconds = time.perf_counter() - started
    n = len(stream)

    def per_task(prefix: str, tasks: int) -> List[float]:
        return [
            metrics.get(f"{prefix}/eval_phase/test_stream/Task{t:03d}/Exp{t:03d}", 0.0) for t in range(tasks)
        ]

    accuracy = per_task("Top1_Acc_Exp", n)
    size = ModelSize()
    size.update(strategy)
    matrix = next(m for m in evaluator.metrics if str(m) == "AccuracyMatrix").result()
    # None, not NaN, for experiences not evaluated yet: results are saved as JSON.
    matrix = [[None if math.isnan(v) else v for v in row] for row in matrix]
    sizes = evaluator.get_all_metrics()["ModelSize_Bytes/train_phase/train_stream"][1]
    model = strategy.model
    one_network = network_bytes(model, model.tasks[0]) if hasattr(model, "heads") else math.nan
    return {
        "accuracy": accuracy,
        "average_accuracy": sum(accuracy) / n,
        "average_forgetting": _mean(per_task("ExperienceForgetting", n - 1)),
        "bwt": _mean(per_task("ExperienceBWT", n - 1)),
        "model_bytes": size.result()["bytes"],
        "networks": size.result()["bytes"] / one_network,
        "train_seconds": seconds,
        "seconds_per_epoch": _mean(timer.seconds),
        "epochs": len(timer.seconds),
        "accuracy_matrix": matrix,
        "model_bytes_per_experience": sizes,
    }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


class EpochTimer(SupervisedPlugin):
    """Wall-clock seconds of every training epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: List[float] = []
        self._started = 0.0

    def before_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._started = time.perf_counter()

    def after_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.seconds.append(time.perf_counter() - self._started)


PIGGYBACK_STRATEGIES = ("piggyback", "piggyback_ternary")


def _run_key(**settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_benchmark(
    *,
    stream: str,
    backbone: str,
    strategies: Sequence[str],
    seeds: Sequence[int],
    out_dir: Path,
    config: Dict[str, Any],
    pretrain_epochs: int = 5,
    log: Callable[[str], None] = print,
) -> Dict[str, Dict[str, Any]]:
    """Run every (strategy, seed), reusing runs already saved under
    ``out_dir/runs`` with the same settings, and write the results table.

    :param config: Avalanche and strategy arguments for every strategy
        (``train_epochs``, ``train_mb_size``, ``lr``, ``mask_lr``, ``device``...);
        arguments a strategy does not take are dropped for it (``mask_lr``
        only reaches Piggyback).
    :param pretrain_epochs: epochs of pretraining on the stream's source
        task; streams without one have no pretrained backbone, so Piggyback
        trains the backbone on the first experience instead.
    :return: ``{strategy: {"runs": [result per seed], "summary": {...}}}``.
    """
    results: Dict[str, Dict[str, Any]] = {}
    built: Dict[int, Tuple[Optional[SourceTask], Any]] = {}
    for name in strategies:
        runs = []
        for seed in seeds:
            if seed not in built:
                built[seed] = STREAMS[stream](seed)
            source, benchmark = built[seed]
            settings = _strategy_settings(name, config, train_backbone_first=source is None)
            key = _run_key(
                stream=stream, backbone=backbone, strategy=name, seed=seed,
                pretrain_epochs=pretrain_epochs if source is not None else 0, **settings,
            )
            path = out_dir / "runs" / name / f"seed{seed}.json"
            saved = json.loads(path.read_text()) if path.exists() else {}
            if saved.get("key") == key:
                log(f"{name}, seed {seed}: already done ({path})")
                runs.append(saved["result"])
                continue
            log(f"{name}, seed {seed}: training")
            network = _backbone(
                backbone, stream, source, benchmark.train_stream[0].dataset[0][0].shape,
                seed=seed, cache_dir=out_dir / "pretrained", pretrain_epochs=pretrain_epochs,
                lr=config.get("lr", 1e-3), mb_size=config.get("train_mb_size", 32),
                device=config.get("device", "cpu"), log=log,
            )
            torch.manual_seed(seed)
            result = train_and_evaluate(
                name, benchmark, network, log_dir=out_dir / "tensorboard" / name / f"seed{seed}", **settings
            )
            _write_atomically(path, lambda f: json.dump({"key": key, "result": result}, f, indent=1))
            runs.append(result)
        results[name] = {"runs": runs, "summary": _summary(runs)}
    _write_tables(results, out_dir)
    write_plots(results, out_dir / "plots")
    return results


_STRATEGY_ONLY = {
    "mask_lr": PIGGYBACK_STRATEGIES,
    "prune_ratio": ("packnet", "packnet_avalanche"),
    "post_prune_epochs": ("packnet", "packnet_avalanche"),
}


def _strategy_settings(name: str, config: Dict[str, Any], train_backbone_first: bool) -> Dict[str, Any]:
    settings = {k: v for k, v in config.items() if name in _STRATEGY_ONLY.get(k, (name,))}
    if name in PIGGYBACK_STRATEGIES and train_backbone_first:
        settings["train_backbone_on_first_experience"] = True
    return settings


def _summary(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    def mean_std(values: List[float]) -> List[float]:
        return [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]

    keys = ("average_accuracy", "average_forgetting", "bwt", "model_bytes", "networks", "train_seconds")
    summary = {k: mean_std([r[k] for r in runs]) for k in keys}
    summary["accuracy"] = [mean_std(list(task)) for task in zip(*(r["accuracy"] for r in runs))]
    return summary


COLUMNS = ["avg accuracy (%)", "avg forgetting (points)", "BWT (points)", "size (MB)", "× one network", "train time (s)"]


def _rows(results: Dict[str, Dict[str, Any]]) -> List[Dict[str, str]]:
    def pm(values: List[float], scale: float = 100.0, digits: int = 1) -> str:
        mean, std = values
        return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"

    rows = []
    for name, result in results.items():
        s = result["summary"]
        row = {"strategy": name}
        row.update({f"task {t}": pm(v) for t, v in enumerate(s["accuracy"])})
        row.update(
            zip(
                COLUMNS,
                [
                    pm(s["average_accuracy"]),
                    pm(s["average_forgetting"]),
                    pm(s["bwt"]),
                    pm(s["model_bytes"], 1e-6, 2),
                    pm(s["networks"], 1.0, 2),
                    pm(s["train_seconds"], 1.0, 0),
                ],
            )
        )
        rows.append(row)
    return rows


def format_markdown(results: Dict[str, Dict[str, Any]]) -> str:
    """The results table in Markdown: per-task final accuracy, averages,
    size and time, mean ± std over seeds."""
    rows = _rows(results)
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row[h] for h in header) + " |" for row in rows]
    return "\n".join(lines)


def _write_tables(results: Dict[str, Dict[str, Any]], out_dir: Path) -> None:
    import csv

    rows = _rows(results)
    _write_atomically(out_dir / "results.md", lambda f: f.write(format_markdown(results) + "\n"))

    def write_csv(file):
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    _write_atomically(out_dir / "results.csv", write_csv)
    _write_atomically(out_dir / "results.json", lambda f: json.dump(results, f, indent=1))


def write_plots(results: Dict[str, Dict[str, Any]], plot_dir: Path) -> List[Path]:
    """Matplotlib plots of the first seed's runs: the accuracy matrix of each
    strategy, average accuracy as tasks arrive, and model size against the
    number of tasks, as PNG files.

    :return: the files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, result in results.items():
        matrix = [[math.nan if v is None else v for v in row] for row in result["runs"][0]["accuracy_matrix"]]
        figure = accuracy_matrix_figure(matrix)
        figure.axes[0].set_title(name)
        written.append(plot_dir / f"accuracy_matrix_{name}.png")
        figure.savefig(written[-1], dpi=100)
        plt.close(figure)
    for filename, ylabel, series in (
        ("average_accuracy.png", "average accuracy on tasks so far",
         lambda r: [_mean([v for v in row if v is not None]) for row in r["accuracy_matrix"]]),
        ("model_size.png", "stored MB", lambda r: [b / 1e6 for b in r["model_bytes_per_experience"]]),
    ):
        figure, axes = plt.subplots(figsize=(5, 3.5))
        for name, result in results.items():
            values = series(result["runs"][0])
            axes.plot(range(1, len(values) + 1), values, marker="o", label=name)
        axes.set_xticks(range(1, len(values) + 1))
        axes.set_xlabel("tasks trained")
        axes.set_ylabel(ylabel)
        axes.legend(fontsize=7)
        figure.tight_layout()
        written.append(plot_dir / filename)
        figure.savefig(written[-1], dpi=100)
        plt.close(figure)
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="piggyback-bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="a JSON file of preset values; flags override them")
    parser.add_argument("--stream", default="mnist_transfer", help=f"one of {sorted(STREAMS)}")
    parser.add_argument("--backbone", default="small_cnn", help=f"one of {sorted(BACKBONES)}")
    parser.add_argument("--strategies", nargs="+", default=["piggyback", "packnet", "individual", "classifier_only", "naive"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--pretrain-epochs", type=int, default=5, help="on the stream's source task, if any")
    parser.add_argument("--mb-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--mask-lr", type=float, default=3e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    return parser


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.config is not None:
        if not args.config.is_file():
            parser.error(f"--config {args.config}: no such file")
        try:
            preset = json.loads(args.config.read_text())
        except json.JSONDecodeError as error:
            parser.error(f"--config {args.config} is not valid JSON: {error}")
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(preset) - known)
        if unknown:
            parser.error(f"--config {args.config} has unknown keys {unknown}; known: {sorted(known - {'help', 'config'})}")
        parser.set_defaults(**preset)
        args = parser.parse_args(argv)
    if args.stream not in STREAMS:
        parser.error(f"unknown stream {args.stream!r}; choose from {sorted(STREAMS)}")
    if args.backbone not in BACKBONES:
        parser.error(f"unknown backbone {args.backbone!r}; choose from {sorted(BACKBONES)}")
    unknown = [s for s in args.strategies if s not in available_strategies()]
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {available_strategies()}")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device {args.device!r} is not a device: {error}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available here; use --device cpu")
    if args.epochs < 1 or args.mb_size < 1 or args.pretrain_epochs < 1:
        parser.error("--epochs, --pretrain-epochs and --mb-size must be at least 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command-line entry point (``piggyback-bench`` or
    ``python -m piggyback_avalanche.runner``)."""
    args = _parse(argv)
    config = {
        "train_epochs": args.epochs,
        "train_mb_size": args.mb_size,
        "lr": args.lr,
        "mask_lr": args.mask_lr,
        "device": args.device,
    }
    results = run_benchmark(
        stream=args.stream,
        backbone=args.backbone,
        strategies=args.strategies,
        seeds=args.seeds,
        out_dir=args.out,
        config=config,
        pretrain_epochs=args.pretrain_epochs,
    )
    print()
    print(format_markdown(results))
    print(f"\nTables: {args.out}/results.md, .csv, .json; plots: {args.out / 'plots'}")
    print(f"TensorBoard: tensorboard --logdir {args.out / 'tensorboard'}")


if __name__ == "__main__":
    main()
