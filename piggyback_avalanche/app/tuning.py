"""Honest tuning: a strategy's settings chosen on validation data held out
of the training experiences, never on the test stream, with Optuna.

Continual-learning papers are often faulted for tuning on the test stream.
Here every trial trains on most of each training experience and is judged
on the rest (:func:`~piggyback_avalanche.app.streams.validation_benchmark`):

- ``"validation"``: the whole stream, a fifth of each training experience
  held out;
- ``"first_tasks"``: the first few experiences only, as Chaudhry et al.
  (ICLR 2019) tune on the first tasks (here with their validation split;
  the chosen settings then learn the whole stream).

The search space of each strategy is declared next to its registration
(:attr:`~piggyback_avalanche.training.registry.RegisteredStrategy.search_space`).
Trials are kept in an Optuna journal file, so a tuning interrupted at any
point goes on where it stopped when the same command runs again.
"""

from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from piggyback_avalanche.app.protocols import TUNING_PROTOCOLS
from piggyback_avalanche.training.registry import SearchRange

__all__ = ["OptunaUnavailableError", "tuning_benchmark", "tune_settings"]


class OptunaUnavailableError(ImportError):
    """Tuning needs Optuna, an optional extra."""


def tuning_benchmark(validation: Any, *, protocol: str, first_tasks: int) -> Any:
    """What trials learn and are judged on: a benchmark with held-out
    validation data as its test stream (``validation``), whole or cut to its
    first ``first_tasks`` experiences.

    :raises ValueError: for an unknown protocol, or more first tasks than the stream has.
    """
    if protocol not in TUNING_PROTOCOLS:
        raise ValueError(f"Unknown tuning protocol {protocol!r}; choose one of {list(TUNING_PROTOCOLS)}.")
    if protocol == "validation":
        return validation
    if not 1 <= first_tasks <= len(validation.train_stream):
        raise ValueError(
            f"The first_tasks protocol tunes on the first {first_tasks} experiences, but the stream has "
            f"{len(validation.train_stream)}; give --tune-tasks from 1 to that."
        )
    return SimpleNamespace(
        train_stream=validation.train_stream[:first_tasks], test_stream=validation.test_stream[:first_tasks]
    )


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise OptunaUnavailableError(
            "Tuning needs Optuna: pip install 'piggyback-avalanche[tune]' (or pip install optuna)."
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def tune_settings(
    *,
    label: str,
    space: Mapping[str, SearchRange],
    evaluate: Callable[[list[dict[str, float]]], list[float]],
    trials: int,
    seed: int,
    journal: Path,
    parallel: int = 1,
) -> tuple[dict[str, float], float]:
    """Search ``space`` with Optuna's TPE sampler for the settings that
    maximise a validation accuracy.

    :param label: the study's name in the journal (one per strategy spec).
    :param evaluate: the validation accuracy of each of a list of settings
        (trials the caller may run at once, on an executor).
    :param trials: how many trials the study holds when done; completed
        trials already in ``journal`` count.
    :param seed: the sampler's seed.
    :param journal: the Optuna journal file that keeps the trials.
    :param parallel: how many trials to ask for at once (1: each trial
        sees every earlier one; more: a batch is sampled before its results
        are told, as in any parallel TPE).
    :return: the best settings and their validation accuracy.
    """
    optuna = _optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=label,
        storage=JournalStorage(JournalFileBackend(str(journal))),
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        load_if_exists=True,
    )
    remaining = trials - sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    while remaining > 0:
        batch = [study.ask() for _ in range(min(parallel, remaining))]
        candidates = [
            {name: trial.suggest_float(name, r.low, r.high, log=r.log) for name, r in space.items()} for trial in batch
        ]
        try:
            values = evaluate(candidates)
        except BaseException:
            for trial in batch:  # not left running in the journal
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        for trial, value in zip(batch, values, strict=True):
            study.tell(trial, value)
        remaining -= len(batch)
    return dict(study.best_params), float(study.best_value)
