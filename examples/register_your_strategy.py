"""Add your own strategy to the registry, then compare it like the others.

A registered builder receives the backbone (never to be changed: copy or
wrap it) and the caller's arguments, and returns any Avalanche strategy.
Here: Piggyback with one batch norm shared by all tasks (the paper's
fixed-BN ablation) and Piggyback trained with SGD instead of Adam.

    python examples/register_your_strategy.py --epochs 3

A registration can say what the runner needs to know: which settings the
builder takes (by default any, since these take **config) and which of them
trains the backbone on the first experience when the stream has no pretrained
network (here Piggyback's own).
"""

import argparse
from functools import partial
from pathlib import Path

import torch

from piggyback_avalanche import Piggyback, PiggybackModel, register_strategy
from piggyback_avalanche.app.report import format_markdown
from piggyback_avalanche.app.runner import run_benchmark


@register_strategy("piggyback_shared_bn", untrained_backbone_setting="train_backbone_on_first_experience")
def piggyback_shared_bn(backbone: torch.nn.Module, **config) -> Piggyback:
    """Piggyback whose tasks share the batch norm of the first one."""
    return Piggyback(model=PiggybackModel(backbone, task_batchnorm=False), **config)


@register_strategy("piggyback_sgd", untrained_backbone_setting="train_backbone_on_first_experience")
def piggyback_sgd(backbone: torch.nn.Module, **config) -> Piggyback:
    """Piggyback with SGD and momentum; the learning rates are per parameter group."""
    config.setdefault("mask_lr", 0.1)
    config.setdefault("lr", 0.01)
    optimizer = partial(torch.optim.SGD, momentum=0.9)
    return Piggyback(model=PiggybackModel(backbone), optimizer_factory=optimizer, **config)


parser = argparse.ArgumentParser(description="Register two Piggyback variants and compare them")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--pretrain-epochs", type=int, default=5)
parser.add_argument("--out", type=Path, default=Path("runs/registry_example"))
args = parser.parse_args()

results = run_benchmark(
    stream="mnist_transfer",  # a backbone pretrained on MNIST, five new tasks
    backbone="small_cnn",
    strategies=["piggyback", "piggyback_shared_bn", "piggyback_sgd"],
    seeds=[0],
    out_dir=args.out,
    config={"train_epochs": args.epochs},
    pretrain_epochs=args.pretrain_epochs,
)
print(format_markdown(results))
