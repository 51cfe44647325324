"""Piggyback against PackNet and the baselines on one stream, as a table.

Uses the benchmark runner's Python API on the offline digits stream with a
small MLP: the same as `piggyback-bench --stream digits --backbone mlp ...`.
Finished runs are saved under --out and not recomputed.

    python examples/compare_strategies.py --epochs 3 --out runs/compare
"""

import argparse
from pathlib import Path

from piggyback_avalanche.app.report import format_markdown
from piggyback_avalanche.app.runner import run_benchmark
from piggyback_avalanche.evaluation import tensorboard_command

parser = argparse.ArgumentParser(description="Piggyback, PackNet and baselines on the digits stream")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--seeds", type=int, nargs="+", default=[0])
parser.add_argument("--out", type=Path, default=Path("runs/compare"))
args = parser.parse_args()

results = run_benchmark(
    stream="digits",
    backbone="mlp",
    strategies=["piggyback", "packnet", "individual", "naive", "ewc", "lwf"],
    seeds=args.seeds,
    out_dir=args.out,
    config={"train_epochs": args.epochs, "train_mb_size": 32, "lr": 1e-3},
)
print(format_markdown(results))
print(f"Plots in {args.out / 'plots'}; TensorBoard: {tensorboard_command(args.out / 'tensorboard')}")
