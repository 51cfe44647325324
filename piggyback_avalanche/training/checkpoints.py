"""Experience checkpoints: saving and resuming this package's strategies
between experiences.

Avalanche's ``avalanche.training.checkpoint.save_checkpoint`` pickles the whole strategy with dill, which
fails on optimizers with current torch. Our strategies build a fresh optimizer
for every experience, so between experiences their whole state is small:
the model's state dict, the evaluator's metric state (what forgetting and the
accuracy matrix remember), the training clock, file loggers' rows and the
random number generators. A checkpoint holds exactly that, written
atomically, so a run killed at any moment resumes from the last completed
experience and ends with the same metrics as an uninterrupted run.

    strategy = Piggyback(model=PiggybackModel(backbone), evaluator=evaluator)
    start = load_experience_checkpoint(strategy, "run.ckpt")      # 0 without a file
    for i, experience in enumerate(stream[start:], start):
        strategy.train(experience)
        strategy.eval(test_stream[: i + 1])
        save_experience_checkpoint(strategy, "run.ckpt", next_experience=i + 1)
"""

import pickle
import random
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np
import torch

from piggyback_avalanche.files import read_saved, refuse_unless_loadable, write_atomically
from piggyback_avalanche.task_aware.strategy import TaskAwareStrategy

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "supports_experience_checkpoint",
    "save_experience_checkpoint",
    "load_experience_checkpoint",
]

CHECKPOINT_FORMAT = 1
"""Version of the checkpoint layout; loading refuses other versions."""

PathLike = Union[str, Path]


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
            f"Experience checkpoints support this package's strategies (Piggyback, PackNet, IndividualNetworks, "
            f"ClassifierOnly), not {type(strategy).__name__}: its optimizer and plugins carry state across "
            "experiences that a checkpoint would have to pickle. Rerun it from the start instead."
        )


def _rng_state() -> Dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _stateful_loggers(strategy: Any) -> list:
    return [logger for logger in strategy.evaluator.loggers if hasattr(logger, "state_dict")]


def save_experience_checkpoint(strategy: Any, path: PathLike, *, next_experience: int) -> None:
    """Save ``strategy``'s state between two experiences, atomically: the
    file is either the previous checkpoint or the complete new one.

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
    state = {
        "format": CHECKPOINT_FORMAT,
        "strategy": type(strategy).__name__,
        "model": type(strategy.model).__name__,
        "next_experience": int(next_experience),
        "model_state": strategy.model.state_dict(),
        "clock": dict(vars(strategy.clock)),
        # Metric objects are plain Python state (dicts of floats); the
        # loggers are rebuilt by the caller and get their rows back.
        "metrics": pickle.dumps(strategy.evaluator.metrics),
        "metric_results": pickle.dumps(
            (dict(strategy.evaluator.all_metric_results), dict(strategy.evaluator.last_metric_results))
        ),
        "loggers": [logger.state_dict() for logger in _stateful_loggers(strategy)],
        "rng": _rng_state(),
    }
    write_atomically(path, lambda file: torch.save(state, file), binary=True)


def load_experience_checkpoint(strategy: Any, path: PathLike) -> int:
    """Restore a checkpoint into a freshly built ``strategy`` (same class,
    same kind of model on the same backbone, same metrics and loggers).

    Everything is read and checked before anything is changed: on error the
    strategy is as it was.

    :return: the index of the first experience still to train; ``0`` if
        ``path`` does not exist.
    :raises CheckpointError: if the file is unreadable, of another format,
        or from another strategy, model or metric set.
    """
    _check_supported(strategy)
    path = Path(path)
    if not path.exists():
        return 0
    # Not weights_only: the metrics' state is pickled Python objects. Load
    # only checkpoints you wrote.
    state = read_saved(
        path, weights_only=False, error=CheckpointError, what="checkpoint", remedy="Delete it to start over."
    )
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"Checkpoint {path} has format {found!r}; this version reads format {CHECKPOINT_FORMAT}.")
    for key, expected in (("strategy", type(strategy).__name__), ("model", type(strategy.model).__name__)):
        if state[key] != expected:
            raise CheckpointError(f"Checkpoint {path} is of a {state[key]}, not of this {expected}.")
    metrics = pickle.loads(state["metrics"])
    ours = strategy.evaluator.metrics
    if [type(m).__name__ for m in metrics] != [type(m).__name__ for m in ours]:
        raise CheckpointError(
            f"Checkpoint {path} was saved with other metrics ({[str(m) for m in metrics]}); build the "
            "evaluator with the same metrics as the interrupted run."
        )
    loggers = _stateful_loggers(strategy)
    if len(loggers) != len(state["loggers"]):
        raise CheckpointError(
            f"Checkpoint {path} holds {len(state['loggers'])} file loggers' rows, the evaluator has "
            f"{len(loggers)}; build it with the same loggers as the interrupted run."
        )
    refuse_unless_loadable(
        strategy.model,
        state["model_state"],
        error=CheckpointError,
        message=f"Checkpoint {path} does not fit this model ({{cause}}); build the strategy on the same "
        "backbone and model settings as the interrupted run.",
    )
    strategy.model.load_state_dict(state["model_state"])
    for metric, saved in zip(ours, metrics):
        metric.__dict__.update(saved.__dict__)
    all_results, last_results = pickle.loads(state["metric_results"])
    strategy.evaluator.all_metric_results.clear()
    strategy.evaluator.all_metric_results.update(all_results)
    strategy.evaluator.last_metric_results = last_results
    for logger, rows in zip(loggers, state["loggers"]):
        logger.load_state_dict(rows)
    vars(strategy.clock).update(state["clock"])
    _set_rng_state(state["rng"])
    return state["next_experience"]
