"""Throughput of the runner on Ray against the serial runner (issue 29):
the ablation grid's main runs (every Piggyback variant and reference of
``benchmarks/ablations.py``, small CNN, offline default stream) on a local
Ray instance with one-thread workers, and serially with one thread, side by
side in one session.

    python benchmarks/ray_throughput.py --epochs 2            # 2 seeds: about 16 minutes on 2 cores
    python benchmarks/ray_throughput.py                       # 1 epoch per task: about 10 minutes
    python benchmarks/ray_throughput.py --seeds 0 1 2 --epochs 5   # the ablations' own settings

Both are real ``piggyback-bench`` processes on the same grid; the source
task's pretrained backbones are made once beforehand and copied into both
output folders, so that each measures its runs. Prints each one's wall time,
the ratio, and whether every run's figures are equal.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ablations import DEFAULT, INIT, MASK_LR, MASKS, NORM, REFERENCES, SCALE, TAU, _unique

# A run's figures; times differ between runs that are equal otherwise.
COMPARED = ("accuracy", "accuracy_matrix", "average_accuracy", "average_forgetting", "model_bytes", "mask_zeros")


def _bench(*args: str, threads: int | None = None) -> float:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    command = [sys.executable, "-m", "piggyback_avalanche.app.command_line", *args]
    started = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{(completed.stdout + completed.stderr)[-3000:]}")
    return time.perf_counter() - started


def _figures(out: Path) -> dict[str, list[dict[str, object]]]:
    results = json.loads((out / "results.json").read_text())
    return {name: [{k: run[k] for k in COMPARED} for run in r["runs"]] for name, r in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    specs = _unique([DEFAULT, *INIT, *SCALE, *TAU.values(), *NORM.values(), *MASKS, *REFERENCES])
    grid = ["--stream", "mnist_transfer", "--backbone", "small_cnn", "--epochs", str(args.epochs)]
    grid += ["--mask-lr", str(MASK_LR), "--seeds", *map(str, args.seeds)]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        _bench(*grid, "--strategies", "classifier_only", "--epochs", "1", "--out", str(root / "warm"))
        for name in ("serial", "ray"):
            shutil.copytree(root / "warm" / "pretrained", root / name / "pretrained")
        serial = _bench(*grid, "--strategies", *specs, "--out", str(root / "serial"), threads=1)
        ray = _bench(
            *grid, "--strategies", *specs, "--out", str(root / "ray"), "--executor", "ray", "--cpus-per-run", "1"
        )
        equal = _figures(root / "serial") == _figures(root / "ray")
    runs = len(specs) * len(args.seeds)
    print(f"{runs} runs ({len(specs)} strategies and variants x {len(args.seeds)} seeds), {args.epochs} epoch(s)")
    print(f"{os.cpu_count()} CPU cores; Ray: a local instance, one-thread runs; serial: one thread")
    print("| runner | wall time (s) | runs per minute | × serial |")
    print("|---|---|---|---|")
    for name, seconds in (("serial, 1 thread", serial), ("ray, 1-thread runs", ray)):
        print(f"| {name} | {seconds:.1f} | {60 * runs / seconds:.2f} | {serial / seconds:.2f} |")
    print(f"every run's figures equal: {equal}")


if __name__ == "__main__":
    main()
