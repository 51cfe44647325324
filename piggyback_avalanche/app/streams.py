"""The runner's streams by name, its scenarios, and the validation data it
holds out of the training experiences."""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from piggyback_avalanche.app.protocols import SCENARIOS, VALIDATION_SIZE
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
from piggyback_avalanche.training.registry import registered_strategy

__all__ = [
    "STREAMS",
    "CLASS_INCREMENTAL_STREAMS",
    "StreamBuilder",
    "validation_benchmark",
    "check_scenario",
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


def check_scenario(scenario: str, stream: str, strategies: Sequence[str]) -> None:
    """Refuse a scenario that the stream or one of the strategies cannot run.

    :raises ValueError: naming the problem and the fix.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"Unknown scenario {scenario!r}; choose one of {list(SCENARIOS)}.")
    if scenario == "task_incremental" and stream in CLASS_INCREMENTAL_STREAMS:
        raise ValueError(f"The {stream} stream has no task labels: run it with --scenario class_incremental.")
    if scenario == "task_incremental":
        unable = [name for name in strategies if not registered_strategy(name).task_incremental]
        if unable:
            raise ValueError(
                f"{unable} classify only among every class seen, without task labels; run them with "
                "--scenario class_incremental, or drop them from --strategies."
            )
    if scenario == "class_incremental":
        unable = [name for name in strategies if registered_strategy(name).class_incremental_settings is None]
        if unable:
            raise ValueError(
                f"{unable} cannot learn without task labels; drop them from --strategies for "
                "--scenario class_incremental."
            )
