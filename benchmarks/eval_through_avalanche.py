"""What evaluating a frozen Piggyback task costs through Avalanche's own
loop, against plain inference through the same loop.

Avalanche moves the model to its device before every ``eval()``; the masked
weights of a frozen task are cached and that move must not drop them. Three
strategies evaluate the same test experience, in turns, in one process:
``naive`` (plain layers: the reference), ``piggyback`` with its cache as it
is, and ``piggyback`` with the cache dropped before each ``eval()`` (what
happened before the cache survived the move). Prints the median seconds per
``eval()`` and the ratios to ``naive``.

    python benchmarks/eval_through_avalanche.py --repeats 7
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

from piggyback_avalanche import make_strategy
from piggyback_avalanche.benchmarks.streams import tensor_task_stream


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed eval() calls per strategy")
    parser.add_argument("--samples", type=int, default=320, help="test samples (batches of --batch)")
    parser.add_argument("--batch", type=int, default=32, help="evaluation mini-batch size")
    parser.add_argument("--size", type=int, default=32, help="image side")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.samples, 3, args.size, args.size)
    y = torch.arange(args.samples) % 10
    stream = tensor_task_stream([(x[:64], y[:64], x, y)])
    backbone = torchvision.models.resnet18(num_classes=10)
    strategies = {}
    for name in ("naive", "piggyback"):
        strategy = make_strategy(
            name, backbone, train_epochs=1, train_mb_size=32, eval_mb_size=args.batch, evaluator=None
        )
        strategy.train(stream.train_stream[0])
        strategies[name] = strategy
    piggyback = strategies["piggyback"]

    def dropping_the_cache() -> None:
        piggyback.model.frozen_weight_cache.clear()
        piggyback.eval(stream.test_stream)

    runs: dict[str, Callable[[], None]] = {
        "naive": lambda: strategies["naive"].eval(stream.test_stream),
        "piggyback, cache kept": lambda: piggyback.eval(stream.test_stream),
        "piggyback, cache dropped per eval()": dropping_the_cache,
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up
    for _ in range(args.repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    reference = statistics.median(times["naive"])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; ResNet-18 at {args.size} px, "
        f"{args.samples} samples, batch {args.batch}, median of {args.repeats}"
    )
    print("| strategy | s per eval() | × naive |\n|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {median / reference:.2f} |")


if __name__ == "__main__":
    main()
