"""The mask learning rate, chosen on validation data: Piggyback's default
(a rate per experience, from the optimizer steps it gives:
``Piggyback(mask_cross_within=...)``) against fixed rates, on every offline
stream the runner ships, each as its shipped preset runs it, judged on a fifth of
each training experience held out (the runner's ``--evaluate-on
validation``: the test stream is never read).

    python benchmarks/mask_rate.py --out runs/mask_rate            # 3 seeds; about an hour on 2 CPU cores
    python benchmarks/mask_rate.py --streams class_incremental_digits --seeds 0

For each stream it prints the validation accuracy of every fixed rate and
every ``mask_cross_within``, the best of the fixed grid, and how far the
default falls short of it (the goal: within 1 point).
"""

import argparse
import statistics
from pathlib import Path

from piggyback_avalanche.app.report import markdown_table
from piggyback_avalanche.app.runner import run_benchmark
from piggyback_avalanche.app.shipped import shipped_presets
from piggyback_avalanche.methods.piggyback import DEFAULT_MASK_CROSS_WITHIN

STREAMS = {
    # grid row: (shipped preset, the stream it runs, when not the preset's own)
    "mnist_transfer": ("offline_default", None),
    "digits": ("offline_default", "digits"),
    "class_incremental_mnist": ("offline_class_incremental", None),
    "class_incremental_digits": ("offline_class_incremental", "class_incremental_digits"),
    "mnist_transfer_vit": ("offline_transformer", None),
}
FIXED = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
CROSS_WITHIN = [0.0125, 0.025, 0.05, 0.1, 0.2, 0.4]


def _spec(setting: str, value: float) -> str:
    return f"piggyback[{setting}={value}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/mask_rate"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--streams", nargs="+", default=list(STREAMS), choices=list(STREAMS))
    args = parser.parse_args()
    fixed = {value: _spec("mask_lr", value) for value in FIXED}
    rules = {value: _spec("mask_cross_within", value) for value in CROSS_WITHIN}
    rows: list[list[str]] = []
    gaps: dict[str, float] = {}
    for name in args.streams:
        preset_name, stream = STREAMS[name]
        preset = shipped_presets()[preset_name]
        results = run_benchmark(
            stream=stream or preset["stream"],
            backbone=preset["backbone"],
            strategies=[*fixed.values(), *rules.values()],
            seeds=args.seeds,
            out_dir=args.out / name,
            config={"train_epochs": preset["epochs"], "train_mb_size": preset["mb_size"]},
            **{key: preset[key] for key in ("pretrain_epochs", "scenario") if key in preset},
            evaluate_on="validation",
            log=lambda line: None,
        )

        def accuracy(spec: str, results: dict[str, dict] = results) -> float:
            return 100 * statistics.mean(r["average_accuracy"] for r in results[spec]["runs"])

        best = max(fixed, key=lambda value: accuracy(fixed[value]))
        default = accuracy(rules[DEFAULT_MASK_CROSS_WITHIN])
        gaps[name] = accuracy(fixed[best]) - default
        rows.append(
            [name, *(f"{accuracy(s):.1f}" for s in fixed.values()), *(f"{accuracy(s):.1f}" for s in rules.values()),
             f"{best:g}", f"{gaps[name]:+.1f}"]
        )  # fmt: skip
    print(f"Validation accuracy (%), mean of seeds {args.seeds}; default mask_cross_within={DEFAULT_MASK_CROSS_WITHIN}")
    print(
        markdown_table(
            [
                "stream",
                *(f"lr {v:g}" for v in FIXED),
                *(f"within {v:g}" for v in CROSS_WITHIN),
                "best lr",
                "best − default",
            ],
            rows,
        )
    )
    print(f"Largest shortfall of the default: {max(gaps.values()):.1f} points (goal: at most 1).")


if __name__ == "__main__":
    main()
