import warnings

import pytest
import torch
from torch import nn

from piggyback_avalanche import Piggyback, PiggybackModel
from piggyback_avalanche.benchmarks.streams import tensor_task_stream

warnings.filterwarnings("ignore", message=".*QP solver.*")


QUICK_RUN = ["--stream", "digits", "--backbone", "mlp", "--strategies", "classifier_only", "--epochs", "1"]
"""Runner arguments of a run that takes seconds."""


def tiny_conv_net(num_classes: int = 4) -> nn.Sequential:
    """A small convolutional network with batch norm, for 1x8x8 inputs."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 16),
        nn.ReLU(),
        nn.Linear(16, num_classes),
    )


def synthetic_tasks(classes_per_task, *, n_train=48, n_test=24, shape=(1, 8, 8), seed=0):
    """Learnable random tasks: each class is a fixed random pattern plus noise."""
    generator = torch.Generator().manual_seed(seed)
    tasks = []
    for classes in classes_per_task:
        prototypes = torch.randn(len(classes), *shape, generator=generator)
        split = []
        for n in (n_train, n_test):
            which = torch.arange(n) % len(classes)
            x = prototypes[which] + 0.5 * torch.randn(n, *shape, generator=generator)
            split += [x, torch.tensor(classes)[which]]
        tasks.append(tuple(split))
    return tasks


@pytest.fixture
def three_task_stream():
    """Three tasks with 2, 3 and 4 classes; the last one with labels 4..7."""
    return tensor_task_stream(synthetic_tasks([[0, 1], [0, 1, 2], [4, 5, 6, 7]]))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def stacked_inputs(experience):
    """All inputs of an experience, stacked."""
    return torch.stack([experience.dataset[i][0] for i in range(len(experience.dataset))])


def train_checking_earlier_tasks(strategy, benchmark, after_each=None):
    """Train ``strategy`` on every experience; after each, the logits of every
    task trained so far must be bit-identical to those recorded right after
    that task was trained (within rounding, with the same predictions, for a
    strategy that says it does not forget exactly nothing). Returns the
    recorded logits."""
    model, recorded = strategy.model, {}
    for task, experience in enumerate(benchmark.train_stream):
        strategy.train(experience)
        model.eval()
        with torch.no_grad():
            for seen in range(task + 1):
                logits = model(stacked_inputs(benchmark.test_stream[seen]), seen)
                before = recorded.setdefault(seen, logits)
                if strategy.forgets_nothing:
                    assert torch.equal(logits, before), f"task {seen} changed"
                else:  # HAT: within rounding, every prediction the same
                    assert torch.allclose(logits, before, atol=1e-4), f"task {seen} changed"
                    assert torch.equal(logits.argmax(1), before.argmax(1)), f"task {seen} changed its predictions"
        if after_each is not None:
            after_each(task)
    return recorded


def state_copy(model):
    """A copy of ``model``'s state dict, to compare with later."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model, state):
    """Whether ``model``'s state dict equals ``state`` exactly (keys and values)."""
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


@pytest.fixture
def trained_piggyback(three_task_stream):
    """A backbone, a Piggyback strategy and its model (in eval mode) with the
    three tasks of ``three_task_stream`` learned and frozen."""
    torch.manual_seed(0)
    backbone = tiny_conv_net()
    model = PiggybackModel(backbone)
    strategy = Piggyback(model=model, mask_lr=1e-2, lr=1e-2, train_mb_size=16, train_epochs=2, evaluator=None)
    for experience in three_task_stream.train_stream:
        strategy.train(experience)
    return backbone, strategy, model.eval()


def packnet_mlp_with_tasks(tasks):
    """A PackNet model on a small MLP with ``tasks`` two-class tasks, each
    pruned by half and frozen."""
    from piggyback_avalanche.methods.packnet import PackNetModel

    model = PackNetModel(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)))
    for task in range(tasks):
        model.add_task(task, classes=[0, 1])
        model.prune(0.5)
        model.freeze_task(task)
    return model


def resealed(payload):
    """A saved payload (task file, checkpoint) edited by hand, with its
    checksum made anew: what a crafted file looks like, so that the checks
    behind the checksum are reached."""
    from piggyback_avalanche.files import with_checksum

    return with_checksum({k: v for k, v in payload.items() if k != "checksum"})
