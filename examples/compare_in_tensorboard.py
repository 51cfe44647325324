"""Compare Piggyback, PackNet and fine-tuning in TensorBoard.

Trains each on the offline digits stream with this package's evaluator,
one TensorBoard run per strategy under one log directory, then tells how to
open TensorBoard.

    python examples/compare_in_tensorboard.py --log-dir runs/digits
    tensorboard --logdir runs/digits
"""

import argparse
from pathlib import Path

import torch

from piggyback_avalanche import make_strategy
from piggyback_avalanche.benchmarks.offline import digits_task_stream
from piggyback_avalanche.evaluation import default_evaluator, tensorboard_command
from piggyback_avalanche.networks.backbones import small_cnn

parser = argparse.ArgumentParser(description="Piggyback, PackNet and fine-tuning in TensorBoard")
parser.add_argument("--log-dir", type=Path, default=Path("runs/digits"))
parser.add_argument("--epochs", type=int, default=3)
args = parser.parse_args()

benchmark = digits_task_stream()
settings = {
    "piggyback": {"train_backbone_on_first_experience": True},
    "packnet": {},
    "naive": {},
}
for name, extra in settings.items():
    torch.manual_seed(0)
    evaluator = default_evaluator(tb_dir=args.log_dir / name, json_path=args.log_dir / f"{name}.json")
    strategy = make_strategy(name, small_cnn(), train_epochs=args.epochs, evaluator=evaluator, **extra)
    for i, experience in enumerate(benchmark.train_stream):
        strategy.train(experience)
        strategy.eval(benchmark.test_stream[: i + 1])

print(f"Open TensorBoard: {tensorboard_command(args.log_dir)}")
