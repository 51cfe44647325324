"""A model whose tasks get their masks and heads from their labels alone,
so that any process can make (and check) any task without training: what
the concurrency tests append from several processes at once (a helper of
test_storage_safety.py, imported by its child processes too).

    python tests/labelled_tasks.py STORE FIRST COUNT

appends tasks FIRST .. FIRST + COUNT - 1 to the task store STORE.
"""

import sys

import torch
from torch import nn

from piggyback_avalanche import PiggybackModel


def backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def add_task(model: PiggybackModel, task: int) -> None:
    """Add and freeze ``task``, its masks and head drawn from its label."""
    model.add_task(task, classes=[0, 1, 2])
    generator = torch.Generator().manual_seed(task)
    with torch.no_grad():
        for layer in model.masked_layers.values():
            scores = layer.scores[str(task)]
            scores.copy_(torch.where(torch.rand(scores.shape, generator=generator) < 0.3, 0.0, 1e-2))
        for parameter in model.heads.head(str(task)).parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    model.freeze_task(task)


def with_tasks(tasks) -> PiggybackModel:
    """A model on :func:`backbone` with ``tasks``, in memory."""
    model = PiggybackModel(backbone())
    for task in tasks:
        add_task(model, task)
    return model


if __name__ == "__main__":
    store, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    model = PiggybackModel(backbone())
    model.attach_task_store(store)
    for task in range(first, first + count):
        add_task(model, task)
    print("done", flush=True)
