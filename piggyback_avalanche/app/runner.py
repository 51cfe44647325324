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
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from avalanche.training.plugins import SupervisedPlugin

from piggyback_avalanche.app.backbones import BACKBONES, WeightsUnavailableError
from piggyback_avalanche.app.report import (
    check_targets,
    format_markdown,
    format_target_checks,
    published_comparison,
    read_targets,
    summarize,
    write_comparison_to_tensorboard,
    write_plots,
    write_tables,
)
from piggyback_avalanche.app.shipped import SHIPPED_TARGETS, read_preset, shipped_presets, shipped_targets_path
from piggyback_avalanche.app.tuning import TUNING_PROTOCOLS, OptunaUnavailableError, tune_settings, tuning_benchmark
from piggyback_avalanche.benchmarks.datasets import (
    CLASSIC_STREAMS,
    FINE_GRAINED_TASKS,
    DatasetUnavailableError,
    classic_task_stream,
    fine_grained_stream,
)
from piggyback_avalanche.benchmarks.offline import (
    DIGITS_TASKS,
    SourceTask,
    class_incremental_stream,
    digits_task_stream,
    mnist_transfer_stream,
)
from piggyback_avalanche.checks import check_positive
from piggyback_avalanche.evaluation.evaluator import default_evaluator
from piggyback_avalanche.evaluation.mask_sparsity import MaskSparsityPluginMetric
from piggyback_avalanche.evaluation.model_size import ModelSize
from piggyback_avalanche.files import (
    FolderBusyError,
    FolderLock,
    check_checksum,
    read_saved,
    stale_partial_files,
    with_checksum,
    write_atomically,
)
from piggyback_avalanche.task_aware import MultiHeadModel
from piggyback_avalanche.task_aware.strategy import DEFAULT_LR, DEFAULT_TRAIN_EPOCHS, DEFAULT_TRAIN_MB_SIZE
from piggyback_avalanche.training.checkpoints import (
    CheckpointError,
    load_experience_checkpoint,
    save_experience_checkpoint,
    supports_experience_checkpoint,
)
from piggyback_avalanche.training.registry import available_strategies, make_strategy, registered_strategy

__all__ = [
    "STREAMS",
    "CLASS_INCREMENTAL_STREAMS",
    "SCENARIOS",
    "BACKBONES",
    "check_scenario",
    "EpochTimer",
    "parse_strategy",
    "strategy_settings",
    "train_and_evaluate",
    "run_benchmark",
    "main",
]

StreamBuilder = Callable[..., tuple[SourceTask | None, Any]]
"""``builder(seed=, data_root=, crop_size=) -> (source task or None,
benchmark)``. With a source task the runner pretrains the backbone on it."""


def _no_data_root(build: Callable[[int], tuple[SourceTask | None, Any]]) -> StreamBuilder:
    return lambda *, seed, data_root, crop_size: build(seed)


def _classic(name: str) -> StreamBuilder:
    return lambda *, seed, data_root, crop_size: (None, classic_task_stream(name, data_root=data_root, seed=seed))


def _fine_grained(*, seed: int, data_root: Path | None, crop_size: int) -> tuple[None, Any]:
    if data_root is None:
        raise DatasetUnavailableError(
            "The fine_grained stream needs --data-root DIR: the folder that holds (or will "
            f"download) {', '.join(FINE_GRAINED_TASKS)}."
        )
    return None, fine_grained_stream(data_root=data_root, crop_size=crop_size)


STREAMS: dict[str, StreamBuilder] = {
    "mnist_transfer": _no_data_root(lambda seed: mnist_transfer_stream(seed=seed)),
    "mnist_transfer_reversed": _no_data_root(lambda seed: mnist_transfer_stream(seed=seed, reverse_tasks=True)),
    "digits": _no_data_root(lambda seed: (None, digits_task_stream(seed=seed))),
    "digits_reversed": _no_data_root(lambda seed: (None, digits_task_stream(DIGITS_TASKS[::-1], seed=seed))),
    "class_incremental_mnist": _no_data_root(lambda seed: class_incremental_stream("mnist", seed=seed)),
    "class_incremental_digits": _no_data_root(lambda seed: class_incremental_stream("digits", seed=seed)),
    **{name: _classic(name) for name in CLASSIC_STREAMS},
    "fine_grained": _fine_grained,
}
"""Stream names and their builders (see :data:`StreamBuilder`): the offline
streams (``*_reversed``: the same tasks in the reverse order, for order
effects; ``class_incremental_*``: without task labels), Avalanche's
classic benchmarks and the paper's fine-grained tasks."""

CLASS_INCREMENTAL_STREAMS = frozenset({"class_incremental_mnist", "class_incremental_digits"})
"""Streams without task labels: they run only in the class-incremental scenario."""

EVALUATED_ON = ("test", "validation")
"""``test``: the stream's test experiences; ``validation``: a fifth of each
training experience, held out (the rest trains), so that settings can be
chosen without reading the test stream."""

VALIDATION_SIZE = 0.2
"""The share of each training experience held out for validation."""


def validation_benchmark(benchmark: Any, *, seed: int) -> Any:
    """``benchmark`` with :data:`VALIDATION_SIZE` of each training experience
    held out as its test stream (Avalanche's
    ``benchmark_with_validation_stream``): nothing of the test stream is read.
    Experiences keep their task labels."""
    from types import SimpleNamespace

    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    from avalanche.benchmarks.scenarios.validation_scenario import benchmark_with_validation_stream

    split = benchmark_with_validation_stream(benchmark, validation_size=VALIDATION_SIZE, shuffle=True, seed=seed)
    if hasattr(benchmark.train_stream[0], "task_labels"):
        split = with_task_labels(split)
    return SimpleNamespace(train_stream=split.train_stream, test_stream=split.valid_stream)


SCENARIOS = ("task_incremental", "class_incremental")
"""``task_incremental``: task labels at training and test time;
``class_incremental``: none at test time (each strategy's
:attr:`~piggyback_avalanche.training.registry.RegisteredStrategy.class_incremental_settings`)."""


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
    for _ in tqdm(range(epochs), desc="pretraining", unit="epoch", leave=False, disable=None):
        for batch in torch.randperm(len(labels), generator=generator).split(mb_size):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(backbone(images[batch].to(device)), labels[batch].to(device))
            loss.backward()
            optimizer.step()
    return backbone.cpu().eval()


class _CorruptCache(ValueError):
    """A cached pretrained backbone that is not what the runner wrote."""


def _backbone(
    name: str,
    stream: str,
    source: SourceTask | None,
    input_shape: Sequence[int],
    *,
    pretrained: bool,
    seed: int,
    cache_dir: Path,
    pretraining: dict[str, Any],
    log: Callable[[str], None],
) -> nn.Module:
    """A fresh backbone: with published weights if ``pretrained``; else
    pretrained on the source task if the stream has one, from a cache under
    ``cache_dir`` after the first time.

    :param pretraining: ``epochs``, ``lr``, ``mb_size`` and ``device`` of
        the pretraining; a cached backbone is reused only for the same ones,
        and one that fails its checksum or holds non-finite values is
        pretrained again.
    """
    torch.manual_seed(seed)
    backbone = BACKBONES[name](input_shape, pretrained)
    if source is None or pretrained:
        return backbone
    # Keyed by the source task itself, so streams that share it share the
    # backbone, and by every setting that changes what pretraining makes.
    source_key = hashlib.sha256(source[0].numpy().tobytes() + source[1].numpy().tobytes()).hexdigest()[:12]
    settings = {**pretraining, "device": torch.device(pretraining["device"]).type, "seed": seed, "backbone": name}
    path = cache_dir / f"{name}-source{source_key}-seed{seed}-epochs{pretraining['epochs']}-{_run_key(**settings)}.pt"
    if path.exists():
        try:
            backbone.load_state_dict(_read_cached_backbone(path, settings))
            return backbone
        except _CorruptCache as error:
            log(f"{error}; pretraining again")
    log(f"pretraining {name} on the source task of {stream} ({pretraining['epochs']} epochs)")
    pretrain(
        backbone,
        source,
        epochs=pretraining["epochs"],
        lr=pretraining["lr"],
        mb_size=pretraining["mb_size"],
        device=pretraining["device"],
        seed=seed,
    )
    cached = with_checksum({"settings": settings, "state_dict": dict(backbone.state_dict())})
    write_atomically(path, lambda f: torch.save(cached, f), binary=True)
    return backbone


def _read_cached_backbone(path: Path, settings: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A cached backbone's weights, whole, finite and made with ``settings``.

    :raises _CorruptCache: naming what is wrong.
    """
    remedy = "The runner pretrains it again."
    cached = read_saved(path, weights_only=True, error=_CorruptCache, what="cached backbone", remedy=remedy)
    if not isinstance(cached, dict) or not isinstance(cached.get("state_dict"), dict):
        raise _CorruptCache(f"The cached backbone {path} is not one the runner wrote")
    check_checksum(cached, error=_CorruptCache, what="cached backbone", path=path, remedy=remedy)
    if cached.get("settings") != settings:
        raise _CorruptCache(f"The cached backbone {path} was pretrained with other settings")
    state = cached["state_dict"]
    if not all(isinstance(t, torch.Tensor) and bool(torch.isfinite(t).all()) for t in state.values()):
        raise _CorruptCache(f"The cached backbone {path} holds values that are not finite")
    return state


def train_and_evaluate(
    name: str,
    benchmark: Any,
    backbone: nn.Module,
    *,
    log_dir: Path | None = None,
    progress: str | None = None,
    checkpoint: Path | None = None,
    **config: Any,
) -> dict[str, Any]:
    """Train a registered strategy on every experience (``joint``: on the
    whole stream at once), evaluating the experiences seen so far after each,
    and summarise.

    :param name: a registered strategy; one that trains on the whole stream
        at once (joint training) is evaluated once, after it.
    :param log_dir: TensorBoard folder of this run.
    :param progress: label of a progress bar over the experiences; none if
        ``None``.
    :param checkpoint: a file to save to after every experience and to
        resume from, for strategies that support it
        (:func:`~piggyback_avalanche.training.checkpoints.supports_experience_checkpoint`); others
        start over. Training time then counts this process only.
    :return: per-task final accuracy, average accuracy, average forgetting
        and BWT (over all but the last task), task-inference accuracy per
        task and on average (``None`` for strategies given task labels), model
        size (bytes, exemplars included, × one network, and bytes each task
        adds), training seconds, seconds per epoch and epochs run.
    """
    timer = EpochTimer()
    evaluator = default_evaluator(tb_dir=log_dir, interactive=False)
    strategy = make_strategy(name, backbone, evaluator=evaluator, plugins=[timer, *config.pop("plugins", [])], **config)
    stream, tests = benchmark.train_stream, benchmark.test_stream
    started = time.perf_counter()
    if registered_strategy(name).trains_on_whole_stream:
        strategy.train(stream)
        strategy.eval(tests)
    else:
        resume_from = checkpoint if supports_experience_checkpoint(strategy) else None
        start = (
            0 if resume_from is None else load_experience_checkpoint(strategy, resume_from, stream_length=len(stream))
        )
        bar = tqdm(
            stream, desc=progress, unit="task", disable=True if progress is None else None, initial=start
        )  # None: only on a terminal
        for i, experience in enumerate(stream[start:], start):
            strategy.train(experience)
            strategy.eval(tests[: i + 1])
            if resume_from is not None:
                save_experience_checkpoint(strategy, resume_from, next_experience=i + 1)
            bar.update()
        bar.close()
    metrics = strategy.evaluator.get_last_metrics()
    seconds = time.perf_counter() - started
    n = len(stream)

    def per_task(prefix: str, tasks: int, missing: float | None = 0.0) -> list[Any]:
        # Experience t's value, whatever task label the stream gives it (none, or 0 for all, in class-incremental streams).
        found = {
            int(name.rsplit("/Exp", 1)[1]): value
            for name, value in metrics.items()
            if name.startswith(f"{prefix}/eval_phase/{tests.name}_stream/") and "/Exp" in name
        }
        return [found.get(t, missing) for t in range(tasks)]

    accuracy = per_task("Top1_Acc_Exp", n)
    task_inference = per_task("TaskInference_Acc_Exp", n, missing=None)
    inferred = None not in task_inference
    size = ModelSize()
    size.update(strategy)
    matrix = next(m for m in evaluator.metrics if str(m) == "AccuracyMatrix").result()
    # None, not NaN, for experiences not evaluated yet: results are saved as JSON.
    matrix = [[None if math.isnan(v) else v for v in row] for row in matrix]
    sizes = evaluator.get_all_metrics()["ModelSize_Bytes/train_phase/train_stream"][1]
    model = strategy.model
    # None for single-head baselines: no task of theirs is a network of its own to compare with.
    one_network = model.network_bytes(model.tasks[0]) if isinstance(model, MultiHeadModel) else None
    return {
        "accuracy": accuracy,
        "average_accuracy": sum(accuracy) / n,
        "average_forgetting": _mean(per_task("ExperienceForgetting", n - 1)),
        "bwt": _mean(per_task("ExperienceBWT", n - 1)),
        # Share of test samples whose inferred task is right (strategies that infer tasks; else None).
        "task_inference_accuracy": task_inference if inferred else None,
        "average_task_inference": sum(task_inference) / n if inferred else None,
        "model_bytes": size.result()["bytes"],
        "networks": None if one_network is None else size.result()["bytes"] / one_network,
        # What each task adds (None for models without tasks of their own, as single-head baselines).
        "bytes_per_task": size.result().get("bytes_per_task"),
        "train_seconds": seconds,
        "seconds_per_epoch": _mean(timer.seconds),
        "epochs": len(timer.seconds),
        "accuracy_matrix": matrix,
        "model_bytes_per_experience": sizes,
        "mask_zeros": _mask_zeros(evaluator),
    }


def _mask_zeros(evaluator: Any) -> dict[str, dict[str, float]]:
    """Per frozen task, the share of each masked layer's weights its mask
    drops (and ``overall``); empty for models without masks."""
    sparsity = next((m for m in evaluator.metrics if isinstance(m, MaskSparsityPluginMetric)), None)
    return {str(task): kinds["zeros"] for task, kinds in (sparsity.result() if sparsity else {}).items()}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


class EpochTimer(SupervisedPlugin):
    """Wall-clock seconds of every training epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._started = 0.0

    def before_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._started = time.perf_counter()

    def after_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.seconds.append(time.perf_counter() - self._started)


def _run_key(**settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_benchmark(
    *,
    stream: str,
    backbone: str,
    strategies: Sequence[str],
    seeds: Sequence[int],
    out_dir: Path,
    config: dict[str, Any],
    pretrained: bool = False,
    pretrain_epochs: int = 5,
    data_root: Path | None = None,
    crop_size: int = 224,
    scenario: str = "task_incremental",
    evaluate_on: str = "test",
    tune_trials: int = 0,
    tune_protocol: str = "validation",
    tune_tasks: int = 2,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Run every (strategy, seed), reusing runs already saved under
    ``out_dir/runs`` with the same settings, and write the results tables
    (:mod:`~piggyback_avalanche.app.report`) and plots.

    One output folder holds runs of one configuration: the settings every
    run shares are recorded in ``out_dir/settings.json`` by the first call,
    and a later call with others is refused (adding strategies or seeds is
    not another configuration). One runner at a time writes to a folder
    (an OS lock on it); a finished run is never overwritten.

    :param stream: a key of :data:`STREAMS`.
    :param backbone: a key of :data:`~piggyback_avalanche.app.backbones.BACKBONES`.
    :param config: Avalanche and strategy arguments for every strategy
        (``train_epochs``, ``train_mb_size``, ``lr``, ``mask_lr``, ``device``...);
        arguments a strategy does not take are dropped for it (``mask_lr``
        only reaches Piggyback).
    :param pretrained: start from the backbone's published weights.
    :param pretrain_epochs: epochs of pretraining on the stream's source
        task, if it has one and the backbone is not ``pretrained``. Without
        either, Piggyback trains the backbone on the first experience.
    :param data_root: where downloaded streams keep their data.
    :param crop_size: image side of the fine-grained stream.
    :param scenario: one of :data:`SCENARIOS`; streams without task labels
        (:data:`CLASS_INCREMENTAL_STREAMS`) need ``"class_incremental"``.
    :param evaluate_on: one of :data:`EVALUATED_ON`: the test stream, or
        validation data held out of the training experiences
        (:func:`validation_benchmark`), to choose settings on.
    :param tune_trials: with more than 0, each strategy's settings in its
        registered search space (those its spec does not fix) are first
        chosen in that many Optuna trials on validation data, never on the
        test stream (:mod:`~piggyback_avalanche.app.tuning`), then every
        seed runs with them; results.md and results.json record the
        protocol and the values chosen.
    :param tune_protocol: one of :data:`~piggyback_avalanche.app.tuning.TUNING_PROTOCOLS`.
    :param tune_tasks: the experiences the ``"first_tasks"`` protocol tunes on.
    :return: ``{strategy: {"runs": [result per seed], "summary": {...}}}``.
    :raises ValueError: before any training: for a scenario the stream or a
        strategy cannot run, an output folder that holds runs of other
        settings, lies below a file or is in use by another runner.
    :raises DatasetUnavailableError: if the stream's data is missing and
        cannot be downloaded.
    :raises WeightsUnavailableError: likewise for pretrained weights.
    """
    check_scenario(scenario, stream, [parse_strategy(spec)[0] for spec in strategies])
    if evaluate_on not in EVALUATED_ON:
        raise ValueError(f"Unknown evaluate_on {evaluate_on!r}; choose one of {list(EVALUATED_ON)}.")
    if tune_trials and evaluate_on == "validation":
        raise ValueError(
            "Tuning chooses settings on validation data and then evaluates them on the test stream; evaluating "
            "on the validation data it chose them on would report a tuned figure. Drop one of the two."
        )
    if tune_protocol not in TUNING_PROTOCOLS:
        raise ValueError(f"Unknown tuning protocol {tune_protocol!r}; choose one of {list(TUNING_PROTOCOLS)}.")
    out_settings = {
        "stream": stream,
        "backbone": backbone,
        "scenario": scenario,
        "evaluated_on": evaluate_on,
        # Only when on, so that untuned runs keep the keys they had.
        **(
            {"tuning": {"trials": tune_trials, "protocol": tune_protocol, "first_tasks": tune_tasks}}
            if tune_trials
            else {}
        ),
        "pretrained": pretrained,
        "pretrain_epochs": pretrain_epochs,
        "crop_size": crop_size if stream == "fine_grained" else None,
        "config": config,
    }
    _check_out_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with FolderLock(out_dir, what="output folder", wait_seconds=0):
            return _run_locked(
                out_dir, out_settings, strategies, seeds, data_root=data_root, crop_size=crop_size, log=log
            )
    except FolderBusyError as error:
        raise ValueError(f"{error.strerror} (another piggyback-bench is running on --out {out_dir})") from None


def tuning_report(tuned: dict[str, dict[str, Any]]) -> str:
    """The section of results.md that says how each tuned strategy's settings
    were chosen (empty without tuning)."""
    if not tuned:
        return ""
    lines = ["", "## Tuned settings", ""]
    for spec, record in tuned.items():
        where = "a fifth of each training experience" if record["protocol"] == "validation" else (
            f"a fifth of the first {record['first_tasks']} training experiences"
        )  # fmt: skip
        values = ", ".join(f"{k}={v:.3g}" for k, v in sorted(record["chosen"].items()))
        lines.append(
            f"- **{spec}**: {values}, chosen by {record['trials']} Optuna trials (TPE, seed {record['seed']}) on "
            f"validation data ({where}, held out; the test stream never read), validation accuracy "
            f"{100 * record['validation_accuracy']:.1f} %."
        )
    return "\n".join(lines) + "\n"


_OUT_SETTINGS = "settings.json"
"""The file in an output folder that records the settings its runs share."""

_RUNNER_FOLDERS = ("runs", "checkpoints", "pretrained", "plots")
"""The runner's own subfolders of an output folder, where its writers leave
temporary files if killed (TensorBoard's folder holds the event writer's
files, which are never temporary)."""


def _check_out_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    """Record the settings every run in ``out_dir`` shares, or refuse
    settings other than those recorded, naming each difference: one output
    folder, one configuration, never two mixed in its tables and TensorBoard
    runs."""
    path = out_dir / _OUT_SETTINGS
    current = json.loads(json.dumps(settings, default=str))  # as JSON keeps it (tuples become lists)
    if path.exists():
        try:
            recorded = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(
                f"{path} is unreadable ({error}); delete it (the runs stay) or give another --out."
            ) from None
        if recorded != current:
            flat_recorded, flat_current = _flatten(recorded), _flatten(current)
            unset = object()
            differences = ", ".join(
                f"{k}: {flat_recorded.get(k, 'unset')!r} there, {flat_current.get(k, 'unset')!r} now"
                for k in sorted(set(flat_recorded) | set(flat_current))
                if flat_recorded.get(k, unset) != flat_current.get(k, unset)
            )
            raise ValueError(
                f"--out {out_dir} holds runs of other settings ({differences}); give another --out for these "
                "settings, or run with the recorded ones."
            )
        return
    _write_json(path, current)


def _flatten(settings: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(settings, dict):
        return {prefix.rstrip("."): settings}
    return {k: v for key, value in settings.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}


def _remove_leftovers(out_dir: Path) -> int:
    """Remove the temporary files that killed writers left in the runner's
    own folders; the output folder's lock, held, proves none is being
    written.

    :return: how many were removed.
    """
    folders = [out_dir]
    for name in _RUNNER_FOLDERS:
        below = out_dir / name
        if below.is_dir() and not below.is_symlink():
            folders += [below, *(p for p in below.rglob("*") if p.is_dir() and not p.is_symlink())]
    removed = [path for folder in folders for path in stale_partial_files(folder)]
    for path in removed:
        path.unlink(missing_ok=True)
    return len(removed)


def _check_out_folder(out_dir: Path) -> None:
    """Refuse an output folder that is, or lies below, something other than
    a folder, before anything is made."""
    for path in (out_dir, *out_dir.parents):
        if path.exists():
            if not path.is_dir():
                where = "is a file" if path == out_dir else f"lies below {path}, which is a file"
                raise ValueError(f"--out {out_dir} {where}; give a folder (it is created if missing)")
            return


def _run_locked(
    out_dir: Path,
    out_settings: dict[str, Any],
    strategies: Sequence[str],
    seeds: Sequence[int],
    *,
    data_root: Path | None,
    crop_size: int,
    log: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """:func:`run_benchmark` while it holds the output folder's lock."""
    stream, pretrained = out_settings["stream"], out_settings["pretrained"]
    built = {seed: STREAMS[stream](seed=seed, data_root=data_root, crop_size=crop_size) for seed in seeds}
    validation: dict[int, Any] = {}
    if out_settings["evaluated_on"] == "validation" or out_settings.get("tuning"):
        validation = {seed: validation_benchmark(bm, seed=seed) for seed, (_, bm) in built.items()}
    if out_settings["evaluated_on"] == "validation":
        built = {seed: (source, validation[seed]) for seed, (source, _) in built.items()}
    pretrains = built[seeds[0]][0] is not None and not pretrained  # every seed's stream has a source, or none
    out_settings = {**out_settings, "pretrain_epochs": out_settings["pretrain_epochs"] if pretrains else None}
    _check_out_settings(out_dir, out_settings)
    removed = _remove_leftovers(out_dir)
    if removed:
        log(f"removed {removed} partial file(s) that an interrupted run left in {out_dir}")
    backbone, config, scenario = out_settings["backbone"], out_settings["config"], out_settings["scenario"]
    pretraining = {
        "epochs": out_settings["pretrain_epochs"],
        "lr": config.get("lr", DEFAULT_LR),
        "mb_size": config.get("train_mb_size", DEFAULT_TRAIN_MB_SIZE),
        "device": config.get("device", "cpu"),
    }

    def base_settings(name: str, variant: dict[str, Any], seed: int) -> dict[str, Any]:
        settings = strategy_settings(name, config, untrained_backbone=built[seed][0] is None and not pretrained)
        if scenario == "class_incremental":
            settings.update(registered_strategy(name).class_incremental_settings or {})
        return {**settings, **variant}

    def backbone_for(seed: int, benchmark: Any) -> nn.Module:
        return _backbone(
            backbone,
            stream,
            built[seed][0],
            benchmark.train_stream[0].dataset[0][0].shape,
            pretrained=pretrained,
            seed=seed,
            cache_dir=out_dir / "pretrained",
            pretraining=pretraining,
            log=log,
        )

    tuned: dict[str, dict[str, Any]] = {}
    if out_settings.get("tuning"):
        tuning, seed = out_settings["tuning"], seeds[0]
        trial_benchmark = tuning_benchmark(
            validation[seed], protocol=tuning["protocol"], first_tasks=tuning["first_tasks"]
        )
        for spec in strategies:
            name, variant = parse_strategy(spec)
            space = {k: r for k, r in registered_strategy(name).search_space.items() if k not in variant}
            if not space:
                continue
            log(f"{spec}: tuning {sorted(space)} on validation data ({tuning['trials']} trials, seed {seed})")

            def evaluate(values: dict[str, float], name: str = name, spec: str = spec) -> float:
                settings = {**base_settings(name, parse_strategy(spec)[1], seed), **values}
                network = backbone_for(seed, trial_benchmark)
                torch.manual_seed(seed)
                return float(train_and_evaluate(name, trial_benchmark, network, **settings)["average_accuracy"])

            chosen, accuracy = tune_settings(
                label=spec,
                space=space,
                evaluate=evaluate,
                trials=tuning["trials"],
                seed=seed,
                journal=out_dir / "tuning" / "trials.journal",
            )
            tuned[spec] = {**tuning, "seed": seed, "chosen": chosen, "validation_accuracy": accuracy}
            log(f"{spec}: chose {chosen} (validation accuracy {100 * accuracy:.1f} %)")
    # Every run's key and saved result first: a finished run of other
    # settings is refused before any work, never overwritten.
    planned = []
    for spec in strategies:
        name, variant = parse_strategy(spec)
        for seed in seeds:
            settings = {**base_settings(name, variant, seed), **tuned.get(spec, {}).get("chosen", {})}
            run_settings = {
                **{k: v for k, v in out_settings.items() if k != "config"},
                "strategy": spec,
                "seed": seed,
                # What the backbone was pretrained with, for streams with a source task.
                "pretraining": pretraining if pretrains else None,
                **settings,
            }
            key = _run_key(**run_settings)
            path = out_dir / "runs" / spec / f"seed{seed}.json"
            saved = _read_result(path)
            if saved and saved.get("key") != key:
                raise ValueError(
                    f"{path} holds a finished run of {spec}, seed {seed} with other settings (an earlier version "
                    "of the package, or a file from elsewhere); it is never overwritten. Delete it to run it "
                    "again, or give another --out."
                )
            planned.append((spec, name, seed, settings, run_settings, key, path, saved))
    results: dict[str, dict[str, Any]] = {spec: {"runs": []} for spec in strategies}
    for spec, name, seed, settings, run_settings, key, path, saved in planned:
        runs = results[spec]["runs"]
        if saved:
            log(f"{spec}, seed {seed}: already done ({path})")
            runs.append(saved["result"])
            continue
        benchmark = built[seed][1]
        log(f"{spec}, seed {seed}: training")
        network = backbone_for(seed, benchmark)
        torch.manual_seed(seed)
        checkpoint = out_dir / "checkpoints" / spec / f"seed{seed}-{key}.ckpt"
        result = train_and_evaluate(
            name,
            benchmark,
            network,
            log_dir=out_dir / "tensorboard" / spec / f"seed{seed}",
            progress=f"{spec}, seed {seed}",
            checkpoint=checkpoint,
            **settings,
        )
        _write_json(path, {"key": key, "settings": run_settings, "result": result})
        checkpoint.unlink(missing_ok=True)  # the result file is the record now
        runs.append(result)
    for spec in strategies:
        results[spec]["summary"] = summarize(results[spec]["runs"])
        if spec in tuned:
            results[spec]["tuning"] = tuned[spec]
    extra = published_comparison(results, backbone=backbone) if stream == "fine_grained" else ""
    extra += tuning_report(tuned)
    write_tables(results, out_dir, extra=extra)
    write_plots(results, out_dir / "plots")
    write_comparison_to_tensorboard(results, out_dir / "tensorboard" / "accuracy_vs_bytes")
    return results


DEVICE_TYPES = ("cpu", "cuda", "mps")
"""The device types a run can train on."""


def check_device(device: Any) -> None:
    """Refuse a device that is not one of :data:`DEVICE_TYPES` or that this
    machine does not have, naming what it has.

    :raises ValueError: naming the device and the fix.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{device!r} is not a device: {error}") from None
    if parsed.type not in DEVICE_TYPES:
        raise ValueError(f"{device}: runs train on {', '.join(DEVICE_TYPES)}, not {parsed.type}; use --device cpu")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (parsed.index or 0) >= count:
            raise ValueError(f"{device}: this machine has {count} CUDA device(s); use --device cpu")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{device}: this machine has no MPS device; use --device cpu")


def parse_strategy(spec: str) -> tuple[str, dict[str, Any]]:
    """A registered strategy, plain (``piggyback``) or with settings of its
    own (``piggyback[threshold=0.001,mask_init=uniform]``; values in JSON,
    a bare word is a string): its name and those settings.

    :raises ValueError: for a spec of another form.
    """
    match = re.fullmatch(r"([A-Za-z0-9_]+)(?:\[([^\[\]]*)\])?", spec)
    if match is None:
        raise ValueError(f"{spec!r} is not a strategy name, or name[key=value,...]")
    if re.search(r"[/\\\x00]", spec) or len(spec.encode()) > 200:
        # The spec names the run's folders under --out.
        raise ValueError(
            f"{spec!r}: a strategy's settings name its folders, so they hold no '/', '\\' or NUL and stay under 200 bytes"
        )
    settings: dict[str, Any] = {}
    for item in filter(None, (match.group(2) or "").split(",")):
        key, equals, text = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"{spec!r}: {item!r} is not key=value")
        try:
            settings[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            settings[key.strip()] = text.strip()
    return match.group(1), settings


def _read_result(path: Path) -> dict[str, Any]:
    """A finished run's saved result, ``{}`` if there is none."""
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"The saved result {path} is unreadable ({error}): it was damaged outside the runner, which "
            "writes it whole. Delete it, and the run is computed again."
        ) from error
    if not isinstance(saved, dict) or "key" not in saved or "result" not in saved:
        raise ValueError(f"{path} is not a result the runner saved; delete it, and the run is computed again.")
    return saved


def _write_json(path: Path, content: Any) -> None:
    write_atomically(path, lambda file: json.dump(content, file, indent=1))


def strategy_settings(name: str, config: dict[str, Any], *, untrained_backbone: bool) -> dict[str, Any]:
    """The entries of ``config`` that strategy ``name`` takes, and, on a
    stream without a pretrained backbone, its setting that trains the
    backbone on the first experience (if it has one)."""
    registered = registered_strategy(name)
    settings = registered.accepted(config)
    if untrained_backbone and registered.untrained_backbone_setting is not None:
        settings[registered.untrained_backbone_setting] = True
    return settings


def check_scenario(scenario: str, stream: str, strategies: Sequence[str]) -> None:
    """Refuse a scenario that the stream or one of the strategies cannot run.

    :raises ValueError: naming the problem and the fix.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"Unknown scenario {scenario!r}; choose one of {list(SCENARIOS)}.")
    if scenario == "task_incremental" and stream in CLASS_INCREMENTAL_STREAMS:
        raise ValueError(f"The {stream} stream has no task labels: run it with --scenario class_incremental.")
    if scenario == "class_incremental":
        unable = [name for name in strategies if registered_strategy(name).class_incremental_settings is None]
        if unable:
            raise ValueError(
                f"{unable} cannot learn without task labels; drop them from --strategies for "
                "--scenario class_incremental."
            )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="piggyback-bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--config",
        help="a shipped preset by name (see --list-configs) or a JSON file of preset values; flags override them",
    )
    add("--list-configs", action="store_true", help="list the shipped presets and exit")
    add("--stream", default="mnist_transfer", help=f"one of {sorted(STREAMS)}")
    add(
        "--scenario",
        default="task_incremental",
        choices=SCENARIOS,
        help="class_incremental: no task labels at test time (ours infer the task; Avalanche's baselines use one head)",
    )
    add(
        "--evaluate-on",
        default="test",
        choices=EVALUATED_ON,
        help=f"validation: train on {round(100 * (1 - VALIDATION_SIZE))}%% of each training experience and evaluate on the rest, "
        "never reading the test stream (to choose settings on)",
    )
    add(
        "--tune",
        type=int,
        default=0,
        metavar="TRIALS",
        help="first choose each strategy's settings (its registered search space) in TRIALS Optuna trials on "
        "validation data, never the test stream; needs the tune extra",
    )
    add(
        "--tune-protocol",
        default="validation",
        choices=TUNING_PROTOCOLS,
        help="what the trials learn and are judged on",
    )
    add("--tune-tasks", type=int, default=2, help="the experiences the first_tasks protocol tunes on")
    add("--data-root", type=Path, help="folder of the downloaded streams' data (default: Avalanche's)")
    add("--crop-size", type=int, default=224, help="image side of the fine_grained stream")
    add("--backbone", default="small_cnn", help=f"one of {sorted(BACKBONES)}")
    add("--pretrained", action="store_true", help="start from the torchvision backbone's ImageNet weights")
    add("--pretrain-epochs", type=int, default=5, help="on the stream's source task, if any")
    add(
        "--strategies",
        nargs="+",
        default=["piggyback", "packnet", "individual", "classifier_only", "naive"],
        help=f"registered strategies to compare, from {available_strategies()}; NAME[key=value,...] sets its own settings",
    )
    add("--epochs", type=int, default=DEFAULT_TRAIN_EPOCHS, help="training epochs per experience")
    add("--mb-size", type=int, default=DEFAULT_TRAIN_MB_SIZE, help="training mini-batch size")
    add("--lr", type=float, default=DEFAULT_LR, help="heads, normalization, and whole networks")
    add(
        "--mask-lr",
        type=float,
        help="Piggyback's mask scores (default: a rate per experience, from the optimizer steps it gives)",
    )
    add("--lr-decay-epochs", type=int, nargs="*", default=[], help="epochs after which rates drop 10x")
    add("--prune-ratio", type=float, help="PackNet: share of free weights released per task (default: PackNet's)")
    add("--post-prune-epochs", type=int, help="PackNet: retraining epochs after pruning (default: PackNet's)")
    add("--post-prune-lr", type=float, help="PackNet: learning rate after pruning (default: --lr)")
    add("--seeds", type=int, nargs="+", default=[0], help="one run per seed, each a different int")
    add("--device", default="cpu", help="where to train: cpu, cuda, cuda:1, ...")
    add("--out", type=Path, default=Path("runs/bench"), help="output folder: tables, plots, TensorBoard runs")
    add(
        "--check-targets",
        nargs="?",
        const=SHIPPED_TARGETS,
        metavar="CSV",
        help="compare the results with a targets file (without CSV: the shipped targets) and exit 1 if any falls short",
    )
    return parser


def _fits(kind: Any, value: Any) -> bool:
    """Whether a JSON value is what an argument of type ``kind`` takes."""
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int)
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, str)  # str and Path arguments


def _check_preset_types(parser: argparse.ArgumentParser, preset: dict[str, Any], path: str) -> None:
    """Refuse a preset value of the wrong type, as the flag would."""
    actions = {action.dest: action for action in parser._actions}
    for key, value in preset.items():
        action = actions[key]
        kind = getattr(action.type, "__name__", "str")
        if isinstance(action, argparse._StoreTrueAction):
            fits, expected = isinstance(value, bool), "true or false"
        elif action.nargs in ("+", "*"):
            fits = isinstance(value, list) and (bool(value) or action.nargs == "*")
            fits = fits and all(_fits(action.type, item) for item in value)
            expected = f"a {'non-empty ' if action.nargs == '+' else ''}list of {kind} values"
        else:
            fits, expected = _fits(action.type, value), f"one {kind} value"
        if not fits:
            parser.error(f"--config {path}: {key!r} must be {expected}, got {json.dumps(value)}")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list_configs:
        for name, values in shipped_presets().items():
            print(
                f"{name}: {values.get('stream')} stream, {values.get('backbone')}, strategies {values.get('strategies')}"
            )
        parser.exit(0)
    if args.config is not None:
        try:
            label, text = read_preset(args.config)
        except ValueError as error:
            parser.error(f"--config {error}")
        try:
            preset = json.loads(text)
        except json.JSONDecodeError as error:
            parser.error(f"--config {label} is not valid JSON: {error}")
        if not isinstance(preset, dict):
            parser.error(f"--config {label} must hold a JSON object of preset values")
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(preset) - known)
        if unknown:
            parser.error(
                f"--config {label} has unknown keys {unknown}; known: {sorted(known - {'help', 'config', 'list_configs'})}"
            )
        _check_preset_types(parser, preset, label)
        parser.set_defaults(**preset)
        args = parser.parse_args(argv)
    if args.stream not in STREAMS:
        parser.error(f"unknown stream {args.stream!r}; choose from {sorted(STREAMS)}")
    if args.backbone not in BACKBONES:
        parser.error(f"unknown backbone {args.backbone!r}; choose from {sorted(BACKBONES)}")
    try:
        parsed = [parse_strategy(spec) for spec in args.strategies]
    except ValueError as error:
        parser.error(f"--strategies: {error}")
    unknown = [name for name, _ in parsed if name not in available_strategies()]
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {available_strategies()}")
    try:
        check_scenario(args.scenario, args.stream, [name for name, _ in parsed])
    except ValueError as error:
        parser.error(str(error))
    for spec, (name, variant) in zip(args.strategies, parsed):
        accepted = registered_strategy(name).accepted(variant)
        if accepted != variant:
            parser.error(f"--strategies {spec}: {name} takes no setting {sorted(set(variant) - set(accepted))}")
    for flag, device in [("--device", args.device)] + [
        (f"--strategies {spec}", variant["device"])
        for spec, (_, variant) in zip(args.strategies, parsed)
        if "device" in variant
    ]:
        try:
            check_device(device)
        except ValueError as error:
            parser.error(f"{flag}: {error}")
    if min(args.epochs, args.mb_size, args.pretrain_epochs, args.crop_size) < 1:
        parser.error("--epochs, --pretrain-epochs, --mb-size and --crop-size must be at least 1")
    rates = {"--lr": args.lr, "--mask-lr": args.mask_lr, "--post-prune-lr": args.post_prune_lr}
    for flag, value in rates.items():
        if value is not None:
            try:
                check_positive(flag, value)
            except ValueError as error:
                parser.error(str(error))
    if any(e < 1 for e in args.lr_decay_epochs):
        parser.error("every --lr-decay-epochs value must be at least 1")
    # Each method's config refuses its own settings before any work: each flag's on its own (the
    # message names the flag), then each --strategies entry with its variant's on top.
    config = _config(args)
    for spec, (name, variant) in zip(args.strategies, parsed):
        for key, value in config.items():
            try:
                registered_strategy(name).check_settings({key: value})
            except (TypeError, ValueError) as error:
                parser.error(f"--{key.replace('_', '-')}: {error}")
        try:
            registered_strategy(name).check_settings({**config, **variant})
        except (TypeError, ValueError) as error:
            parser.error(f"--strategies {spec}: {error}")
    try:
        _check_out_folder(args.out)
    except ValueError as error:
        parser.error(str(error))
    if args.tune < 0 or args.tune_tasks < 1:
        parser.error("--tune must be at least 0 (trials) and --tune-tasks at least 1")
    if min(args.seeds) < 0:
        parser.error(f"--seeds {args.seeds}: a seed is a non-negative int")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {args.seeds} repeats a seed; give each seed once")
    if args.data_root is not None and not args.data_root.is_dir():
        parser.error(f"--data-root {args.data_root}: no such folder; create it (datasets download into it)")
    if args.check_targets is not None:
        if args.check_targets == SHIPPED_TARGETS:
            args.check_targets = shipped_targets_path()
        try:
            args.targets = read_targets(Path(args.check_targets))
        except (OSError, ValueError) as error:
            parser.error(f"--check-targets: {error}")
    return args


def _config(args: argparse.Namespace) -> dict[str, Any]:
    """The strategies' settings the flags give; a method's own settings only
    when given, so that each method's defaults apply otherwise."""
    config: dict[str, Any] = {
        "train_epochs": args.epochs,
        "train_mb_size": args.mb_size,
        "lr": args.lr,
        "mask_lr": args.mask_lr,
        "device": args.device,
    }
    if args.lr_decay_epochs:
        config["lr_decay_epochs"] = tuple(args.lr_decay_epochs)
    given = {"prune_ratio": args.prune_ratio, "post_prune_epochs": args.post_prune_epochs}
    given["post_prune_lr"] = args.post_prune_lr
    return config | {k: v for k, v in given.items() if v is not None}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``piggyback-bench`` or
    ``python -m piggyback_avalanche.app.runner``).

    :return: the exit status: 0, or 1 if a result falls short of its target.
    """
    args = _parse(argv)
    config = _config(args)
    try:
        results = run_benchmark(
            stream=args.stream,
            backbone=args.backbone,
            strategies=args.strategies,
            seeds=args.seeds,
            out_dir=args.out,
            config=config,
            pretrained=args.pretrained,
            pretrain_epochs=args.pretrain_epochs,
            data_root=args.data_root,
            crop_size=args.crop_size,
            scenario=args.scenario,
            evaluate_on=args.evaluate_on,
            tune_trials=args.tune,
            tune_protocol=args.tune_protocol,
            tune_tasks=args.tune_tasks,
        )
    except (
        DatasetUnavailableError,
        WeightsUnavailableError,
        OptunaUnavailableError,
        CheckpointError,
        ValueError,
    ) as error:
        _parser().exit(2, f"piggyback-bench: error: {error}\n")
    print()
    print(format_markdown(results))
    if args.stream == "fine_grained":
        print("\n" + published_comparison(results, backbone=args.backbone))
    print(f"\nTables: {args.out}/results.md, .csv, .json; plots: {args.out / 'plots'}")
    print(f"TensorBoard: tensorboard --logdir {args.out / 'tensorboard'}")
    if args.check_targets is None:
        return 0
    checks = check_targets(results, args.targets, stream=args.stream, backbone=args.backbone)
    if not checks:
        print(f"\n{args.check_targets} has no targets for {args.stream} with {args.backbone}.")
        return 0
    print(f"\nTargets ({args.check_targets}):\n{format_target_checks(checks)}")
    short = [c for c in checks if not c.passed]
    if short:
        print(f"{len(short)} of {len(checks)} results fall short of their targets.")
        return 1
    print(f"All {len(checks)} results meet their targets.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
