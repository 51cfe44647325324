"""The benchmark runner's orchestration: several registered strategies, one stream, one
backbone, several seeds; one TensorBoard run per strategy and seed, and a
results table in Markdown, CSV and JSON.

    piggyback-bench --stream digits --backbone small_cnn \\
        --strategies piggyback packnet individual naive --epochs 5 --seeds 0 1 --out runs/digits

Finished (strategy, seed) runs are saved as they end and are not recomputed
when the same command runs again.
"""

import functools
import json
import math
import re
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import SupervisedPlugin

from piggyback_avalanche.app.executors import Executor, JobFailure, SerialExecutor
from piggyback_avalanche.app.pretrained_cache import pretrained_backbone, settings_key
from piggyback_avalanche.app.protocols import EVALUATED_ON, TUNING_PROTOCOLS
from piggyback_avalanche.app.report import (
    published_comparison,
    summarize,
    write_comparison_to_tensorboard,
    write_plots,
    write_tables,
)
from piggyback_avalanche.app.streams import (
    STREAMS,
    check_scenario,
    validation_benchmark,
)
from piggyback_avalanche.app.tuning import tune_settings, tuning_benchmark
from piggyback_avalanche.evaluation.evaluator import default_evaluator
from piggyback_avalanche.evaluation.mask_sparsity import MaskSparsityPluginMetric
from piggyback_avalanche.evaluation.model_size import ModelSize
from piggyback_avalanche.files import (
    FolderBusyError,
    FolderLock,
    stale_partial_files,
    write_atomically,
)
from piggyback_avalanche.task_aware import MultiHeadModel
from piggyback_avalanche.training.checkpoints import (
    load_experience_checkpoint,
    save_experience_checkpoint,
    supports_experience_checkpoint,
)
from piggyback_avalanche.training.registry import make_strategy, registered_strategy
from piggyback_avalanche.training_defaults import DEFAULT_LR, DEFAULT_TRAIN_MB_SIZE

__all__ = [
    "RunsFailedError",
    "StreamRecipe",
    "RunJob",
    "execute_run",
    "EpochTimer",
    "parse_strategy",
    "strategy_settings",
    "train_and_evaluate",
    "run_benchmark",
    "tuning_report",
    "check_out_folder",
]


class RunsFailedError(RuntimeError):
    """Runs of the grid raised where they ran; the others finished and are
    saved, and the same command runs the failed ones again.

    :param failures: each failed run's label and traceback.
    """

    def __init__(self, failures: Sequence[JobFailure]) -> None:
        self.failures = list(failures)
        reports = "\n\n".join(f"{failure.label}:\n{failure.traceback}" for failure in self.failures)
        super().__init__(
            f"{len(self.failures)} run(s) failed: {', '.join(f.label for f in self.failures)}. The other runs "
            f"are saved; the same command runs the failed ones again.\n\n{reports}"
        )


@dataclass(frozen=True)
class StreamRecipe:
    """How to build a run's benchmark, in this process or on a Ray worker:
    the same fields build the same stream (each stream is seeded).

    :param stream: a key of :data:`STREAMS`.
    :param seed: the stream's seed.
    :param data_root: where downloaded streams keep their data (on a
        cluster: a folder every node sees).
    :param crop_size: image side of the fine-grained stream.
    :param evaluated_on: ``"test"``, or ``"validation"``: held-out data of
        the training experiences as the test stream.
    :param tuning: ``(protocol, first_tasks)`` for a tuning trial's
        benchmark (:func:`~piggyback_avalanche.app.tuning.tuning_benchmark`
        of the validation split); ``None`` for a run.
    """

    stream: str
    seed: int
    data_root: Path | None
    crop_size: int
    evaluated_on: str = "test"
    tuning: tuple[str, int] | None = None

    def build(self) -> Any:
        """The benchmark (built from the stream's data each call)."""
        _, benchmark = STREAMS[self.stream](seed=self.seed, data_root=self.data_root, crop_size=self.crop_size)
        if self.evaluated_on == "validation" or self.tuning is not None:
            benchmark = validation_benchmark(benchmark, seed=self.seed)
        if self.tuning is not None:
            protocol, first_tasks = self.tuning
            benchmark = tuning_benchmark(benchmark, protocol=protocol, first_tasks=first_tasks)
        return benchmark


@dataclass
class RunJob:
    """One run of the grid or one tuning trial, as an executor takes it:
    everything :func:`execute_run` needs, picklable.

    :param label: the run's name in logs and progress.
    :param strategy: the registered strategy.
    :param seed: the seed every random generator starts from.
    :param settings: the strategy's settings.
    :param recipe: how to build the benchmark.
    :param backbone: the network (pretrained where the stream has a source
        task); the strategy copies it.
    :param out_dir: the output folder (on a cluster: a folder every node sees).
    :param log_dir: the run's TensorBoard folder (``None``: no TensorBoard run).
    :param checkpoint: the file the run saves to after each experience and
        resumes from (``None``: none).
    :param benchmark: the benchmark, when the job runs in the process that
        built it; never sent to another process (a worker builds it from
        ``recipe``).
    """

    label: str
    strategy: str
    seed: int
    settings: dict[str, Any]
    recipe: StreamRecipe
    backbone: nn.Module
    out_dir: Path
    log_dir: Path | None = None
    checkpoint: Path | None = None
    benchmark: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "benchmark": None}


@functools.lru_cache(maxsize=4)
def _built(recipe: StreamRecipe) -> Any:
    """A worker's benchmarks, built once per process: a Ray worker runs one
    job after another, and building a stream costs seconds (the serial
    runner, likewise, builds each seed's stream once for all its runs)."""
    return recipe.build()


def execute_run(job: RunJob) -> dict[str, Any]:
    """Run ``job`` where this is called (the runner's process, or a Ray
    worker): :func:`train_and_evaluate` from every random generator seeded
    with the job's seed, so that the result does not depend on what ran in
    the process before.

    :raises FileNotFoundError: if the output folder is not visible here.
    """
    if not job.out_dir.is_dir():
        raise FileNotFoundError(
            f"The output folder {job.out_dir} is not visible on {socket.gethostname()}: runs write their "
            "TensorBoard runs and checkpoints there. Give --out a folder on a filesystem every node mounts."
        )
    benchmark = job.benchmark if job.benchmark is not None else _built(job.recipe)
    RNGManager.set_random_seeds(job.seed)
    return train_and_evaluate(
        job.strategy,
        benchmark,
        job.backbone,
        log_dir=job.log_dir,
        progress=job.label if job.log_dir is not None else None,
        checkpoint=job.checkpoint,
        **job.settings,
    )


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
    plugins = [timer, *([] if progress is None else [EpochProgress()]), *config.pop("plugins", [])]
    strategy = make_strategy(name, backbone, evaluator=evaluator, plugins=plugins, **config)
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
            stream, desc=progress, unit="task", disable=True if progress is None else None, initial=start, leave=False
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


class EpochProgress(SupervisedPlugin):
    """A progress bar over the mini-batches of each training epoch, on a
    terminal only (below the run's bar over its experiences)."""

    def __init__(self) -> None:
        super().__init__()
        self._bar: Any = None

    def before_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        try:
            total = len(strategy.dataloader)
        except TypeError:  # a loader without a length: the bar counts without one
            total = None
        experience = strategy.experience.current_experience
        description = f"experience {experience}, epoch {strategy.clock.train_exp_epochs + 1}"
        self._bar = tqdm(total=total, desc=description, unit="batch", leave=False, disable=None)

    def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.update()

    def after_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


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
    log: Callable[[str], None] = tqdm.write,
    executor: Executor | None = None,
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
    :param backbone: a key of :data:`~piggyback_avalanche.networks.backbones.BACKBONES`.
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
    :param tune_protocol: one of :data:`~piggyback_avalanche.app.protocols.TUNING_PROTOCOLS`.
    :param tune_tasks: the experiences the ``"first_tasks"`` protocol tunes on.
    :param log: where a line per run goes (which runs train, which are
        already done); by default above the progress bars, which show on a
        terminal only: the grid's runs, each run's experiences, each
        experience's mini-batches per epoch.
    :param executor: where runs and tuning trials execute
        (:mod:`~piggyback_avalanche.app.executors`); by default one after
        another in this process. With a :class:`~piggyback_avalanche.app.executors.RayExecutor`
        every run is a Ray task: a finished run is saved as it comes back,
        a run that raises does not stop the others, and runs write their
        TensorBoard runs and checkpoints into ``out_dir``, which every node
        must see.
    :return: ``{strategy: {"runs": [result per seed], "summary": {...}}}``.
    :raises ValueError: before any training: for a scenario the stream or a
        strategy cannot run, an output folder that holds runs of other
        settings, lies below a file or is in use by another runner.
    :raises DatasetUnavailableError: if the stream's data is missing and
        cannot be downloaded.
    :raises WeightsUnavailableError: likewise for pretrained weights.
    :raises RunsFailedError: after the other runs finished, if runs raised
        on a Ray executor (with each one's traceback).
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
    check_out_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with FolderLock(out_dir, what="output folder", wait_seconds=0):
            return _run_locked(
                out_dir,
                out_settings,
                strategies,
                seeds,
                data_root=data_root,
                crop_size=crop_size,
                log=log,
                executor=executor or SerialExecutor(),
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


def check_out_folder(out_dir: Path) -> None:
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
    executor: Executor,
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
        return pretrained_backbone(
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

    def recipe(seed: int, tuning: tuple[str, int] | None = None) -> StreamRecipe:
        return StreamRecipe(stream, seed, data_root, crop_size, out_settings["evaluated_on"], tuning)

    tuned: dict[str, dict[str, Any]] = {}
    if out_settings.get("tuning"):
        tuning, seed = out_settings["tuning"], seeds[0]
        trial_recipe = recipe(seed, (tuning["protocol"], tuning["first_tasks"]))
        trial_benchmark = tuning_benchmark(
            validation[seed], protocol=tuning["protocol"], first_tasks=tuning["first_tasks"]
        )

        def trial_accuracies(spec: str, network: nn.Module, candidates: list[dict[str, float]]) -> list[float]:
            name, variant = parse_strategy(spec)
            jobs = [
                RunJob(
                    label=f"{spec} trial {values}",
                    strategy=name,
                    seed=seed,
                    settings={**base_settings(name, variant, seed), **values},
                    recipe=trial_recipe,
                    backbone=network,
                    out_dir=out_dir,
                    benchmark=trial_benchmark,
                )
                for values in candidates
            ]
            accuracies: dict[int, float] = {}
            failures = executor.run(
                execute_run,
                jobs,
                count=len(jobs),
                label=lambda job: job.label,
                on_result=lambda job, result: accuracies.__setitem__(id(job), result["average_accuracy"]),
                description="trials",
            )
            if failures:
                raise RunsFailedError(failures)
            return [float(accuracies[id(job)]) for job in jobs]

        for spec in strategies:
            name, variant = parse_strategy(spec)
            space = {k: r for k, r in registered_strategy(name).search_space.items() if k not in variant}
            if not space:
                continue
            log(f"{spec}: tuning {sorted(space)} on validation data ({tuning['trials']} trials, seed {seed})")
            evaluate = functools.partial(trial_accuracies, spec, backbone_for(seed, trial_benchmark))
            chosen, accuracy = tune_settings(
                label=spec,
                space=space,
                evaluate=evaluate,
                trials=tuning["trials"],
                seed=seed,
                journal=out_dir / "tuning" / "trials.journal",
                parallel=executor.parallelism,
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
            key = settings_key(**run_settings)
            path = out_dir / "runs" / spec / f"seed{seed}.json"
            saved = _read_result(path)
            if saved and saved.get("key") != key:
                raise ValueError(
                    f"{path} holds a finished run of {spec}, seed {seed} with other settings (an earlier version "
                    "of the package, or a file from elsewhere); it is never overwritten. Delete it to run it "
                    "again, or give another --out."
                )
            planned.append((spec, name, seed, settings, run_settings, key, path, saved))
    done: dict[tuple[str, int], dict[str, Any]] = {}
    for spec, _, seed, _, _, _, path, saved in planned:
        if saved:
            log(f"{spec}, seed {seed}: already done ({path})")
            done[spec, seed] = saved["result"]
    records: dict[int, tuple[Path, dict[str, Any]]] = {}

    def jobs() -> Iterator[RunJob]:
        # Made one at a time: a serial executor pretrains each seed's backbone when its first run comes.
        for spec, name, seed, settings, run_settings, key, path, saved in planned:
            if saved:
                continue
            log(f"{spec}, seed {seed}: training")
            benchmark = built[seed][1]
            job = RunJob(
                label=f"{spec}, seed {seed}",
                strategy=name,
                seed=seed,
                settings=settings,
                recipe=recipe(seed),
                backbone=backbone_for(seed, benchmark),
                out_dir=out_dir,
                log_dir=out_dir / "tensorboard" / spec / f"seed{seed}",
                checkpoint=out_dir / "checkpoints" / spec / f"seed{seed}-{key}.ckpt",
                benchmark=benchmark,
            )
            records[id(job)] = (path, {"key": key, "settings": run_settings})
            yield job

    def save(job: RunJob, result: dict[str, Any]) -> None:
        path, record = records.pop(id(job))
        _write_json(path, {**record, "result": result})
        if job.checkpoint is not None:
            job.checkpoint.unlink(missing_ok=True)  # the result file is the record now
        spec, seed = record["settings"]["strategy"], job.seed
        done[spec, seed] = result

    failures = executor.run(
        execute_run, jobs(), count=len(planned) - len(done), label=lambda job: job.label, on_result=save
    )
    if failures:
        raise RunsFailedError(failures)
    results: dict[str, dict[str, Any]] = {spec: {"runs": [done[spec, seed] for seed in seeds]} for spec in strategies}
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
