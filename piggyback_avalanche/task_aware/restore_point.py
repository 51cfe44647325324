"""The state a strategy returns to when an experience fails: the model as
it was before the experience, the random generators and the training clock.

A failed experience (a NaN loss, running out of memory, an interrupt) may
have added a task, pruned weights or moved batch-norm statistics; putting
all of it back makes a retry in the same process train exactly what a clean
run trains, and keeps the last checkpoint loadable into the strategy.
"""

import copy
import random
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["RestorePoint", "capture_rng", "restore_rng"]


def capture_rng() -> dict[str, Any]:
    """The state of every random generator a training run draws from."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Put the random generators back as :func:`capture_rng` found them."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


class RestorePoint:
    """A copy of ``model``, the random generators and ``clock`` as they are
    now.

    :param model: the model, restored in place (the object stays the same,
        so references to it remain valid; its submodules are the copies).
    :param clock: Avalanche's training clock.
    :param unchanging: tensors and modules that nothing may change (frozen
        tasks'), shared by the copy instead of copied, so that a restore
        point costs what the tasks still changing hold, not what every task
        holds.
    """

    def __init__(self, model: nn.Module, clock: Any, *, unchanging: Iterable[Tensor | nn.Module] = ()) -> None:
        self.model = model
        self._unchanging = {id(t): t for t in unchanging}
        self._model_state = copy.deepcopy(model.__dict__, dict(self._unchanging))
        self._rng = capture_rng()
        self._clock = dict(vars(clock))
        self._clock_object = clock

    def restore(self) -> None:
        """Put everything back as it was when the point was made."""
        self.model.__dict__.clear()
        self.model.__dict__.update(copy.deepcopy(self._model_state, dict(self._unchanging)))
        restore_rng(self._rng)
        vars(self._clock_object).clear()
        vars(self._clock_object).update(self._clock)
