"""How small the masks Piggyback learns get at rest, and how fast they load
(issue 15): the coder the task files use against the masks' empirical
entropy and against general-purpose compressors.

    pip install zstandard                      # optional: the zstd column
    python benchmarks/mask_coding.py           # about 3 minutes on 2 CPU cores

Piggyback (the registry's, with its defaults: batch 32, lr 1e-3, the mask
rate's default rule) learns the five tasks of the offline default stream (``mnist_transfer``:
the small CNN pretrained on half of MNIST, 5 epochs per task) for each seed; every frozen mask is then coded
four ways, bits per weight summed over layers and averaged over tasks:

- the i.i.d. bound: each layer's empirical entropy (one distribution per layer);
- the task files' coder with one distribution per layer only;
- the task files' coder as shipped (per layer or per output unit, whichever
  is smaller, counts included);
- zlib (level 9) and zstd (level 19) on the bit-packed bytes.

It also times decoding (packed MB and weights per second) and a task file's
whole load.
"""

import argparse
import math
import statistics
import tempfile
import time
import zlib
from pathlib import Path

import torch

from piggyback_avalanche import PiggybackModel, make_strategy
from piggyback_avalanche.app.report import markdown_table
from piggyback_avalanche.benchmarks.offline import mnist_transfer_stream
from piggyback_avalanche.networks.backbones import small_cnn
from piggyback_avalanche.networks.pretraining import pretrain
from piggyback_avalanche.task_aware.bit_packing import unpack_codes
from piggyback_avalanche.task_aware.entropy_coding import CodeLayout, coded_nbytes, decode_codes, encode_codes

try:
    import zstandard
except ImportError:  # the column is left out
    zstandard = None


def _entropy_bits(codes: torch.Tensor) -> float:
    counts = torch.bincount(codes.long()).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum()) * codes.numel()


def _measure(model: PiggybackModel) -> list[dict[str, float]]:
    rows = []
    for task in model.frozen_tasks:
        sums = dict.fromkeys(("weights", "bound", "per layer", "shipped", "zlib", "zstd", "packed", "decode s"), 0.0)
        for layer in model.masked_layers.values():
            packed = layer.packed_masks[str(task)]
            numel, bits = layer.weight.numel(), layer.mask_kind.bits
            codes = unpack_codes(packed, numel=numel, bits=bits)
            coded = encode_codes(packed, CodeLayout(numel=numel, bits=bits, rows=layer.weight.shape[0]))
            started = time.perf_counter()
            assert torch.equal(decode_codes(coded), packed)
            sums["decode s"] += time.perf_counter() - started
            whole = encode_codes(packed, CodeLayout(numel=numel, bits=bits, rows=1))
            data = packed.numpy().tobytes()
            sums["weights"] += numel
            sums["packed"] += len(data)
            sums["bound"] += _entropy_bits(codes)
            sums["per layer"] += 8 * coded_nbytes(whole)
            sums["shipped"] += 8 * coded_nbytes(coded)
            sums["zlib"] += 8 * len(zlib.compress(data, 9))
            sums["zstd"] += 8 * len(zstandard.ZstdCompressor(level=19).compress(data)) if zstandard else math.nan
        rows.append(sums)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows: list[dict[str, float]] = []
    loads = []
    for seed in args.seeds:
        source, benchmark = mnist_transfer_stream(seed=seed)
        torch.manual_seed(seed)
        backbone = pretrain(small_cnn(), source, epochs=5, lr=1e-3, mb_size=64, device="cpu", seed=seed)
        strategy = make_strategy("piggyback", backbone, train_epochs=args.epochs, evaluator=None)
        for experience in benchmark.train_stream:
            strategy.train(experience)
        model = strategy.model
        rows += _measure(model)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "all.tasks"
            model.save_tasks(path)
            fresh = PiggybackModel(backbone)
            started = time.perf_counter()
            fresh.load_tasks(path)
            loads.append((time.perf_counter() - started, path.stat().st_size, len(model.frozen_tasks)))
        print(f"seed {seed} done", flush=True)

    def per_weight(key: str) -> str:
        values = [row[key] / row["weights"] for row in rows]
        if any(math.isnan(v) for v in values):
            return "– (pip install zstandard)"
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}"

    print(f"\n{len(rows)} learned tasks, seeds {args.seeds}; bits per weight, all masked layers of a task\n")
    columns = [
        "i.i.d. entropy per layer",
        "coder, one distribution per layer",
        "coder as shipped",
        "zlib -9",
        "zstd -19",
    ]
    keys = ["bound", "per layer", "shipped", "zlib", "zstd"]
    print(markdown_table(columns, [[per_weight(k) for k in keys]]))
    decode = sum(row["packed"] for row in rows) / sum(row["decode s"] for row in rows) / 1e6
    weights = sum(row["weights"] for row in rows) / sum(row["decode s"] for row in rows) / 1e6
    seconds, size, tasks = (statistics.mean(x) for x in zip(*loads))
    print(
        f"\ndecoding: {decode:.1f} MB/s of bit-packed masks ({weights:.0f} M weights/s); "
        f"a task file of {tasks:.0f} tasks ({size / 1024:.1f} KiB) loads in {seconds * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
