"""Save after every experience and resume after a crash.

Run it, interrupt it (Ctrl-C, or kill the process) while it trains, and run
the same command again: it continues from the last completed experience and
ends with the same accuracies as a run that was never interrupted.

    python examples/save_and_resume.py --checkpoint runs/resume/run.ckpt

Each finished task can also be exported on its own, as a small mask file
that anyone with the same backbone can load.
"""

import argparse
import json
from pathlib import Path

import torch

from piggyback_avalanche import Piggyback, PiggybackModel
from piggyback_avalanche.benchmarks.offline import digits_task_stream
from piggyback_avalanche.evaluation import default_evaluator
from piggyback_avalanche.networks.backbones import small_cnn
from piggyback_avalanche.training.checkpoints import load_experience_checkpoint, save_experience_checkpoint

parser = argparse.ArgumentParser(description="Piggyback with a checkpoint after every experience")
parser.add_argument("--checkpoint", type=Path, default=Path("runs/resume/run.ckpt"))
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--results", type=Path, help="write the final accuracy matrix here (JSON)")
args = parser.parse_args()

torch.manual_seed(0)  # the same backbone every time: the checkpoint is for it
benchmark = digits_task_stream(["original", "rotated90", "inverted", "flipped"])
evaluator = default_evaluator(interactive=False)
strategy = Piggyback(
    model=PiggybackModel(small_cnn()),
    train_epochs=args.epochs,
    train_backbone_on_first_experience=True,
    evaluator=evaluator,
)

start = load_experience_checkpoint(strategy, args.checkpoint)  # 0 if there is none yet
if start:
    print(f"resuming after experience {start - 1} from {args.checkpoint}", flush=True)
for i, experience in enumerate(benchmark.train_stream[start:], start):
    print(f"training experience {i}", flush=True)
    strategy.train(experience)
    strategy.eval(benchmark.test_stream[: i + 1])
    save_experience_checkpoint(strategy, args.checkpoint, next_experience=i + 1)

matrix = next(m for m in evaluator.metrics if str(m) == "AccuracyMatrix").result()
print("accuracy matrix (row: after training task i):")
for row in matrix:
    print("  ".join("  -  " if v != v else f"{v:.3f}" for v in row))
if args.results:
    args.results.write_text(json.dumps(matrix.tolist() if hasattr(matrix, "tolist") else matrix))
