"""Which mask learning rate brings Piggyback close to separately trained
networks on short runs?

On the offline digits stream (Piggyback's backbone trains on the first task,
every later task is learned as a mask), for each seed: separately trained
networks once (each from the same untrained small CNN), then Piggyback at
each mask learning rate. Prints the mean
accuracy over the masked tasks (all but the first), mean and std over seeds.

    python benchmarks/mask_lr_study.py --epochs 3 --seeds 0 1 2
"""

import argparse
import statistics

import torch

from piggyback_avalanche.app.demo import TASKS
from piggyback_avalanche.app.runner import strategy_settings, train_and_evaluate
from piggyback_avalanche.benchmarks.offline import digits_task_stream
from piggyback_avalanche.networks.backbones import small_cnn


def _masked_tasks_mean(benchmark, name: str, seed: int, **config) -> float:
    """Mean accuracy over all tasks but the first of one run from the seed's backbone."""
    torch.manual_seed(seed)
    settings = strategy_settings(name, config, untrained_backbone=True)
    accuracy = train_and_evaluate(name, benchmark, small_cnn(), **settings)["accuracy"][1:]
    return sum(accuracy) / len(accuracy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--mask-lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    scores = {"individual networks": []}
    scores.update({f"piggyback, mask_lr={m:g}": [] for m in args.mask_lrs})
    for seed in args.seeds:
        benchmark = digits_task_stream(TASKS, seed=seed)
        config = {"train_epochs": args.epochs, "lr": args.lr}
        scores["individual networks"].append(_masked_tasks_mean(benchmark, "individual", seed, **config))
        for mask_lr in args.mask_lrs:
            mean = _masked_tasks_mean(benchmark, "piggyback", seed, mask_lr=mask_lr, **config)
            scores[f"piggyback, mask_lr={mask_lr:g}"].append(mean)
            print(
                f"seed {seed}, mask_lr {mask_lr:g}: {100 * scores[f'piggyback, mask_lr={mask_lr:g}'][-1]:.1f}",
                flush=True,
            )
    print(
        f"\nMean test accuracy (%) over tasks {', '.join(TASKS[1:])}; "
        f"{args.epochs} epochs, lr {args.lr:g}, seeds {args.seeds}"
    )
    print("| method | mean | std |\n|---|---|---|")
    for name, values in scores.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {name} | {100 * statistics.mean(values):.1f} | {100 * std:.1f} |")


if __name__ == "__main__":
    main()
