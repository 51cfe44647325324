"""Experience checkpoints: saving and resuming this package's strategies
between experiences.

Avalanche's ``avalanche.training.checkpoint.save_checkpoint`` pickles the whole strategy with dill, which
fails on optimizers with current torch. Our strategies build a fresh optimizer
for every experience, so between experiences their whole state is small:
the model's state dict, the evaluator's metric state (what forgetting and the
accuracy matrix remember), the training clock, file loggers' rows and the
random number generators. A checkpoint holds exactly that, written
atomically, so a run killed at any moment resumes from the last completed
experience and ends with the same metrics as an uninterrupted run::

    strategy = Piggyback(model=PiggybackModel(backbone), evaluator=evaluator)
    start = load_experience_checkpoint(strategy, "run.ckpt")      # 0 without a file
    for i, experience in enumerate(stream[start:], start):
        strategy.train(experience)
        strategy.eval(test_stream[: i + 1])
        save_experience_checkpoint(strategy, "run.ckpt", next_experience=i + 1)
"""

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from piggyback_avalanche.files import (
    PathLike,
    check_checksum,
    read_saved,
    refuse_unless_loadable,
    with_checksum,
    write_atomically,
)
from piggyback_avalanche.task_aware.entropy_coding import CodeLayout, CodingError, decode_state, encode_state
from piggyback_avalanche.task_aware.restore_point import capture_rng, restore_rng
from piggyback_avalanche.task_aware.strategy import TaskAwareStrategy
from piggyback_avalanche.training.plain_state import PlainStateError, from_plain, to_plain

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "supports_experience_checkpoint",
    "save_experience_checkpoint",
    "load_experience_checkpoint",
]

CHECKPOINT_FORMAT = 3
"""Version of the checkpoint layout; loading refuses other versions (1:
pickled metric state; 2: no checksum; neither is read any more)."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written for this strategy, or cannot be
    restored into it."""


def supports_experience_checkpoint(strategy: Any) -> bool:
    """Whether :func:`save_experience_checkpoint` can save ``strategy``: this
    package's strategies, whose only state across experiences is the model."""
    return isinstance(strategy, TaskAwareStrategy)


def _check_supported(strategy: Any) -> None:
    if not supports_experience_checkpoint(strategy):
        raise CheckpointError(
            "Experience checkpoints support this package's task-aware strategies (every TaskAwareStrategy: "
            f"{', '.join(_task_aware_strategies())}), not {type(strategy).__name__}: its optimizer and plugins "
            "carry state across experiences that a checkpoint would have to pickle. Rerun it from the start instead."
        )


def _task_aware_strategies() -> list:
    """The names of the task-aware strategies defined so far, each for a
    model of its own (not the bases that others build on)."""
    found, pending = [], list(TaskAwareStrategy.__subclasses__())
    while pending:
        cls = pending.pop(0)
        if "model_type" in vars(cls):
            found.append(cls.__name__)
        pending.extend(cls.__subclasses__())
    return sorted(set(found))


def _rng_state() -> dict[str, Any]:
    state = capture_rng()
    name, keys, position, has_gauss, gauss = state["numpy"]  # the legacy tuple form
    # int64, not numpy's uint32: torch before 2.6 cannot save a uint32 tensor.
    numpy_state = [str(name), torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)]
    return {**state, "numpy": numpy_state, "python": to_plain(state["python"])}


def _decode_rng_state(state: Any, path: Path) -> dict[str, Any]:
    """A checkpoint's generator states, as :func:`restore_rng` takes them,
    each tried on a generator of its own first: a malformed one is refused
    before anything changes.

    :raises CheckpointError: naming the generator whose state is malformed.
    """

    def malformed(what: str, error: Any = None) -> CheckpointError:
        cause = f" ({type(error).__name__}: {error})" if error is not None else ""
        return CheckpointError(f"Checkpoint {path}: {what} is malformed{cause}; delete it to start over.")

    if not isinstance(state, dict):
        raise malformed("the random generators' state")
    try:
        torch.Generator().set_state(state["torch"])
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        raise malformed("torch's generator state", error) from None
    cuda = state.get("cuda")
    if not isinstance(cuda, list) or not all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in cuda):
        raise malformed("the CUDA generators' state")
    try:
        name, keys, position, has_gauss, gauss = state["numpy"]
        numpy_state = (name, keys.numpy().astype(np.uint32), position, has_gauss, gauss)
        np.random.RandomState().set_state(numpy_state)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise malformed("numpy's generator state", error) from None
    try:
        python_state = from_plain(state["python"])
        random.Random().setstate(python_state)
    except (KeyError, TypeError, ValueError, PlainStateError) as error:
        raise malformed("Python's generator state", error) from None
    return {"torch": state["torch"], "cuda": cuda, "numpy": numpy_state, "python": python_state}


def _non_finite(state: dict[str, Any]) -> list:
    """The keys of ``state``'s floating-point tensors that hold NaN or infinite values."""
    return [
        key
        for key, value in state.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def _largest_layout(model: nn.Module) -> CodeLayout:
    """The most codes (and rows) any tensor of ``model`` could be coded in:
    a mask or owner code per weight of its largest tensor."""
    tensors = [t for t in model.state_dict().values() if t.dim()]
    return CodeLayout(
        numel=max((t.numel() for t in tensors), default=0), bits=1, rows=max((t.shape[0] for t in tensors), default=1)
    )


def _stateful_loggers(strategy: Any) -> list:
    return [logger for logger in strategy.evaluator.loggers if hasattr(logger, "state_dict")]


def save_experience_checkpoint(strategy: Any, path: PathLike, *, next_experience: int) -> None:
    """Save ``strategy``'s state between two experiences, atomically: the
    file is either the previous checkpoint or the complete new one.

    Everything is stored as tensors, numbers and strings (see
    :mod:`~piggyback_avalanche.training.plain_state`), so loading it runs no
    code of the file's choosing.

    :param strategy: one of this package's strategies, not inside
        ``train`` or ``eval``.
    :param path: the checkpoint file.
    :param next_experience: the index of the first experience still to
        train, returned by :func:`load_experience_checkpoint` on resume.
    :raises CheckpointError: for other strategies, or while a task is still
        being learned.
    """
    _check_supported(strategy)
    if strategy.model.learning_tasks:
        raise CheckpointError(
            f"Tasks {strategy.model.learning_tasks} are still being learned; save a checkpoint "
            "between experiences, after train() has returned."
        )
    non_finite = _non_finite(strategy.model.state_dict())
    if non_finite:
        raise CheckpointError(
            f"The model holds values that are not finite (NaN or infinite) in {non_finite[:5]}: its training "
            "diverged, and a checkpoint of it could not be resumed. Nothing was written."
        )
    stored = sorted(int(t) for t in strategy.model.task_state.stored_tasks)
    if stored:
        raise CheckpointError(
            f"Tasks {stored} keep their masks in a task store, which a checkpoint does not hold; the store "
            "already keeps every frozen task safe on disk. Checkpoint a model without a task store, or "
            "resume by attaching the store to a new model (model.attach_task_store(path))."
        )
    evaluator = strategy.evaluator
    try:
        plain = {
            "metrics": [to_plain(vars(metric)) for metric in evaluator.metrics],
            "metric_results": to_plain((dict(evaluator.all_metric_results), dict(evaluator.last_metric_results))),
            "loggers": [to_plain(logger.state_dict()) for logger in _stateful_loggers(strategy)],
            "clock": to_plain(dict(vars(strategy.clock))),
        }
    except PlainStateError as error:
        raise CheckpointError(f"Cannot checkpoint this evaluator's state: {error}.") from error
    state = with_checksum(
        {
            "format": CHECKPOINT_FORMAT,
            "strategy": type(strategy).__name__,
            "model": type(strategy.model).__name__,
            "settings": {"strategy": strategy.settings(), "model": strategy.model.settings()},
            "metric_names": [type(m).__name__ for m in evaluator.metrics],
            "next_experience": int(next_experience),
            # Masks and owners entropy-coded, as in task files.
            "model_state": encode_state(strategy.model.state_dict(), strategy.model.code_layouts()),
            **plain,
            "rng": _rng_state(),
        }
    )
    write_atomically(path, lambda file: torch.save(state, file), binary=True)


def load_experience_checkpoint(
    strategy: Any,
    path: PathLike,
    *,
    stream_length: int | None = None,
    accept_changed_settings: Iterable[str] = (),
) -> int:
    """Restore a checkpoint into a freshly built ``strategy`` (same class,
    same settings, same kind of model on the same backbone, same metrics and
    loggers).

    The file is read with ``torch.load(weights_only=True)``: it may hold
    tensors, numbers and strings only, and objects are rebuilt only from
    Avalanche's and this package's classes. Everything is read and checked
    before anything is changed: on error the strategy is as it was.

    :param stream_length: the number of experiences of the stream to resume;
        a checkpoint that continues beyond it is refused.
    :param accept_changed_settings: settings allowed to differ from the
        checkpoint's, such as ``{"train_mb_size"}`` after running out of
        memory; any other difference is refused, naming the setting.
    :return: the index of the first experience still to train; ``0`` if
        ``path`` does not exist.
    :raises CheckpointError: if the file is unreadable, holds anything but
        plain data, is of another format, or from another strategy, model,
        setting or metric set, or continues beyond the stream.
    """
    _check_supported(strategy)
    path = Path(path)
    if not path.exists():
        return 0
    state = read_saved(
        path,
        weights_only=True,
        error=CheckpointError,
        what="checkpoint",
        remedy="It may also hold objects other than tensors, numbers and strings, which are never loaded. "
        "Delete it to start over.",
    )
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"Checkpoint {path} has format {found!r}; this version reads format {CHECKPOINT_FORMAT}. "
            "Delete it to start over."
        )
    check_checksum(state, error=CheckpointError, what="checkpoint", path=path, remedy="Delete it to start over.")
    try:
        restored = _decode(strategy, state, path, set(accept_changed_settings))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        raise CheckpointError(
            f"Checkpoint {path} is incomplete or malformed ({error!r}); delete it to start over."
        ) from error
    if stream_length is not None and restored["next_experience"] > stream_length:
        raise CheckpointError(
            f"Checkpoint {path} continues at experience {restored['next_experience']}, but the stream has "
            f"{stream_length} experiences: it is from a longer stream. Delete it, or resume on that stream."
        )
    # Everything fits: only now is the strategy touched.
    strategy.model.load_state_dict(restored["model_state"])
    for metric, saved in zip(strategy.evaluator.metrics, restored["metrics"]):
        metric.__dict__.update(saved)
    all_results, last_results = restored["metric_results"]
    strategy.evaluator.all_metric_results.clear()
    strategy.evaluator.all_metric_results.update(all_results)
    strategy.evaluator.last_metric_results = last_results
    for logger, rows in zip(_stateful_loggers(strategy), restored["loggers"]):
        logger.load_state_dict(rows)
    vars(strategy.clock).update(restored["clock"])
    restore_rng(restored["rng"])
    return restored["next_experience"]


def _decode(strategy: Any, state: dict[str, Any], path: Path, accepted: set[str]) -> dict[str, Any]:
    """Everything a checkpoint restores, decoded and checked against
    ``strategy``; raises before anything is changed."""
    for key, expected in (("strategy", type(strategy).__name__), ("model", type(strategy.model).__name__)):
        if state[key] != expected:
            raise CheckpointError(f"Checkpoint {path} is of a {state[key]}, not of this {expected}.")
    ours = {"strategy": strategy.settings(), "model": strategy.model.settings()}
    for part in ("strategy", "model"):
        saved = state["settings"][part]
        keys = (set(saved) | set(ours[part])) - accepted
        different = sorted(k for k in keys if saved.get(k) != ours[part].get(k))
        if different:
            details = ", ".join(f"{k}: checkpoint {saved.get(k)!r}, now {ours[part].get(k)!r}" for k in different)
            raise CheckpointError(
                f"Checkpoint {path} was saved with other {part} settings ({details}); build the {part} with "
                "the interrupted run's settings, pass accept_changed_settings={...} for a deliberate change, "
                "or delete the checkpoint to start over."
            )
    metrics = strategy.evaluator.metrics
    if state["metric_names"] != [type(m).__name__ for m in metrics]:
        raise CheckpointError(
            f"Checkpoint {path} was saved with other metrics ({state['metric_names']}); build the "
            "evaluator with the same metrics as the interrupted run."
        )
    loggers = _stateful_loggers(strategy)
    if len(loggers) != len(state["loggers"]):
        raise CheckpointError(
            f"Checkpoint {path} holds {len(state['loggers'])} file loggers' rows, the evaluator has "
            f"{len(loggers)}; build it with the same loggers as the interrupted run."
        )
    try:
        decoded = {
            "metrics": [from_plain(m) for m in state["metrics"]],
            "metric_results": from_plain(state["metric_results"]),
            "loggers": [from_plain(rows) for rows in state["loggers"]],
            "clock": from_plain(state["clock"]),
        }
    except PlainStateError as error:
        raise CheckpointError(f"Checkpoint {path} holds state this package does not rebuild: {error}.") from error
    if set(decoded["clock"]) != set(vars(strategy.clock)):
        raise CheckpointError(f"Checkpoint {path} holds another training clock ({sorted(decoded['clock'])}).")
    if not all(isinstance(m, dict) for m in decoded["metrics"]) or len(decoded["metric_results"]) != 2:
        raise CheckpointError(f"Checkpoint {path} holds malformed metric state.")
    if not isinstance(state["next_experience"], int) or state["next_experience"] < 0:
        raise CheckpointError(f"Checkpoint {path} names no valid next experience.")
    rng = _decode_rng_state(state["rng"], path)
    if not isinstance(state["model_state"], dict):
        raise CheckpointError(f"Checkpoint {path} holds no model state.")
    try:
        model_state = decode_state(state["model_state"], largest=_largest_layout(strategy.model))
    except CodingError as error:
        raise CheckpointError(f"Checkpoint {path} holds masks that do not decode ({error}); it is corrupt.") from None
    non_finite = _non_finite(model_state)
    if non_finite:
        raise CheckpointError(
            f"Checkpoint {path} holds values that are not finite in {non_finite[:5]}; it is corrupt. Delete it "
            "to start over."
        )
    refuse_unless_loadable(
        strategy.model,
        model_state,
        error=CheckpointError,
        message=f"Checkpoint {path} does not fit this model ({{cause}}); build the strategy on the same "
        "backbone and model settings as the interrupted run.",
    )
    return {**decoded, "model_state": model_state, "next_experience": state["next_experience"], "rng": rng}
