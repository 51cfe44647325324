"""What masking costs: Piggyback against plain fine-tuning and plain
inference of the same torchvision network, measured side by side in one run.

For every setting it prints, as ratios to the plain network:

- the training step (forward, backward, Adam step; Piggyback trains one
  task's scores, batch norm and head, fine-tuning every weight);
- evaluation of a frozen task with its masked weights cached, and uncached
  (masks unpacked and applied on every forward);
- peak memory of training (CUDA: allocator peak; CPU: peak resident memory of
  a child process that runs only that training);
- one epoch of ``strategy.train(experience)`` through Avalanche's loop
  (``--avalanche-loop``): Piggyback (its batch-norm pass included) against
  Avalanche's ``Naive`` fine-tuning the same network, each experience a new
  task of ``--experience-size`` samples;

and, for the network, the bytes one task adds, the masks of 100 tasks at one
bit per weight, and the time a task switch takes (unpacking every mask of a
task). Timings are medians over interleaved repetitions, so both sides see
the same machine state.

    python benchmarks/speed.py                      # CPU: ResNet-18 at 32 px / batch 32 and 64 px / batch 64
    python benchmarks/speed.py --device cuda        # ResNet-50 and DenseNet-121, 224 px, batch 64, bf16
    python benchmarks/speed.py --network vit_b_16:224:8 swin_t:224:8 --repeats 5   # transformers
    python benchmarks/speed.py --avalanche-loop --network resnet18:32:32 --repeats 5 # train() through Avalanche
"""

import argparse
import copy
import multiprocessing
import resource
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from piggyback_avalanche import PiggybackModel
from piggyback_avalanche.evaluation.model_size import stored_bytes
from piggyback_avalanche.task_aware.bit_packing import packed_code_bytes

SETTINGS = {
    "cpu": [("resnet18", 32, 32, None), ("resnet18", 64, 64, None)],
    "cuda": [
        ("resnet50", 224, 64, torch.bfloat16),
        ("densenet121", 224, 64, torch.bfloat16),
        ("resnet18", 224, 32, None),
        ("vit_b_16", 224, 64, torch.bfloat16),
    ],
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _piggyback(backbone: nn.Module, frozen_tasks: int) -> PiggybackModel:
    """A Piggyback model with ``frozen_tasks`` finished tasks and one learning."""
    model = PiggybackModel(backbone)
    for task in range(frozen_tasks):
        model.add_task(task, classes=list(range(10)))
        model.freeze_task(task)
    model.add_task(frozen_tasks, classes=list(range(10)))
    return model


def _train_step(model: nn.Module, params: list[nn.Parameter], device: torch.device, dtype, task: int | None = None):
    optimizer = torch.optim.Adam(params, lr=1e-4, **({"fused": True} if device.type in ("cuda", "cpu") else {}))

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(x) if task is None else model(x, task)
            loss = nn.functional.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _time_interleaved(functions: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each function, run in turns after a warm-up."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for function in functions.values():
        for _ in range(3):
            function()
    for _ in range(repeats):
        for name, function in functions.items():
            _sync(device)
            start = time.perf_counter()
            function()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _models(network: str, device: torch.device, channels_last: bool) -> tuple[nn.Module, PiggybackModel]:
    torch.manual_seed(0)
    plain = torchvision.models.get_model(network, weights=None, num_classes=10)
    piggyback = _piggyback(copy.deepcopy(plain), frozen_tasks=1)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return plain.to(device, memory_format=memory_format), piggyback.to(device, memory_format=memory_format)


def _peak_rss_child(network: str, size: int, batch: int, which: str, steps: int, queue) -> None:
    device = torch.device("cpu")
    torch.manual_seed(0)
    backbone = torchvision.models.get_model(network, weights=None, num_classes=10)
    # Both sides hold one transient copy of the network, as PiggybackModel copies its backbone.
    if which == "plain":
        model, task = copy.deepcopy(backbone), None
        params = list(model.parameters())
    else:
        model, task = _piggyback(backbone, frozen_tasks=1), 1
        params = [p for group in model.trainable_parameters().values() for p in group]
    del backbone
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    step = _train_step(model.train(), params, device, None, task=task)
    for _ in range(steps):
        step(x, y)
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _cpu_peak_memory(network: str, size: int, batch: int) -> dict[str, float]:
    """Peak resident memory (KiB) of training, each side in a fresh process."""
    context = multiprocessing.get_context("spawn")
    peaks = {}
    for which in ("plain", "piggyback"):
        queue = context.Queue()
        child = context.Process(target=_peak_rss_child, args=(network, size, batch, which, 3, queue))
        child.start()
        peaks[which] = queue.get()
        child.join()
    return peaks


def measure(network: str, size: int, batch: int, dtype, device: torch.device, repeats: int) -> dict[str, float]:
    channels_last = device.type == "cuda"
    plain, piggyback = _models(network, device, channels_last)
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    params = [p for group in piggyback.trainable_parameters().values() for p in group]
    train = _time_interleaved(
        {
            "fine-tuning": lambda step=_train_step(plain.train(), list(plain.parameters()), device, dtype): step(x, y),
            "piggyback": lambda step=_train_step(piggyback.train(), params, device, dtype, task=1): step(x, y),
        },
        repeats,
        device,
    )
    plain.eval(), piggyback.eval()
    masked_layers = list(piggyback.masked_layers.values())

    def uncached() -> None:
        piggyback.frozen_weight_cache.clear()
        piggyback(x, 0)

    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        cached_logits, uncached_logits = piggyback(x, 0), (uncached(), piggyback(x, 0))[1]
        assert torch.equal(cached_logits, uncached_logits)
        infer = _time_interleaved(
            {"plain": lambda: plain(x), "cached": lambda: piggyback(x, 0), "uncached": uncached}, repeats, device
        )
        switch = _time_interleaved({"switch": lambda: [layer.mask("0") for layer in masked_layers]}, repeats, device)[
            "switch"
        ]
    result = {
        "train_ratio": train["piggyback"] / train["fine-tuning"],
        "train_ms_fine_tuning": 1e3 * train["fine-tuning"],
        "train_ms_piggyback": 1e3 * train["piggyback"],
        "eval_cached_ratio": infer["cached"] / infer["plain"],
        "eval_uncached_ratio": infer["uncached"] / infer["plain"],
        "task_switch_ms": 1e3 * switch,
    }
    if device.type == "cuda":
        peaks = {}
        for name, model, trainable, task in (
            ("plain", plain, list(plain.parameters()), None),
            ("piggyback", piggyback, params, 1),
        ):
            model.train()
            torch.cuda.reset_peak_memory_stats(device)
            step = _train_step(model, trainable, device, dtype, task)
            for _ in range(3):
                step(x, y)
            _sync(device)
            peaks[name] = torch.cuda.max_memory_allocated(device)
    else:
        peaks = _cpu_peak_memory(network, size, batch)
    result["peak_memory_ratio"] = peaks["piggyback"] / peaks["plain"]
    return result


def avalanche_loop(
    network: str, size: int, batch: int, device: torch.device, repeats: int, experience_size: int
) -> dict[str, float]:
    """Seconds of one-epoch ``train(experience)`` through Avalanche's loop:
    Piggyback (defaults: batch-norm pass included) and Avalanche's Naive
    fine-tuning the plain network with Adam, interleaved; every call a new
    experience (for Piggyback a new task) of the same size."""
    from avalanche.training import Naive

    from piggyback_avalanche import Piggyback
    from piggyback_avalanche.benchmarks.streams import tensor_task_stream

    torch.manual_seed(0)
    experiences = repeats + 2  # two warm-ups each
    data = [
        (torch.randn(experience_size, 3, size, size), torch.randint(0, 10, (experience_size,)))
        for _ in range(experiences)
    ]
    stream = tensor_task_stream([(x, y, x[:batch], y[:batch]) for x, y in data]).train_stream
    plain = torchvision.models.get_model(network, weights=None, num_classes=10)
    settings = dict(train_mb_size=batch, train_epochs=1, device=device, evaluator=None)
    network_copy = copy.deepcopy(plain)
    optimizer = torch.optim.Adam(network_copy.parameters(), lr=1e-3, fused=device.type in ("cpu", "cuda"))
    fine_tuning = Naive(model=network_copy, optimizer=optimizer, **settings)
    piggyback = Piggyback(model=PiggybackModel(plain), **settings)
    turn = iter(range(experiences * 2))
    seconds = _time_interleaved(
        {
            "fine-tuning": lambda: fine_tuning.train(stream[next(turn) % experiences]),
            "piggyback": lambda: piggyback.train(stream[piggyback.clock.train_exp_counter]),
        },
        repeats - 1,
        device,
    )
    return {
        "loop_ratio": seconds["piggyback"] / seconds["fine-tuning"],
        "loop_s_fine_tuning": seconds["fine-tuning"],
        "loop_s_piggyback": seconds["piggyback"],
    }


def task_inference_cost(
    network: str, size: int, batch: int, dtype, device: torch.device, repeats: int, counts: list[int]
) -> dict[int, float]:
    """Seconds of one pass that computes ``T`` frozen tasks side by side
    (task inference's stacked pass, ``model.task_outputs``) over one plain
    forward pass of the network, for each ``T`` of ``counts``."""
    torch.manual_seed(0)
    plain = torchvision.models.get_model(network, weights=None, num_classes=10).to(device).eval()
    model = PiggybackModel(copy.deepcopy(plain), mask_init="uniform").to(device)
    for task in range(max(counts)):
        model.add_task(task, classes=list(range(10)))
        model.freeze_task(task)
    model.eval()
    x = torch.randn(batch, 3, size, size, device=device)
    ratios = {}
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for count in counts:
            tasks = list(range(count))
            seconds = _time_interleaved(
                {"plain": lambda: plain(x), "stacked": lambda tasks=tasks: model.task_outputs(x, tasks)},
                repeats,
                device,
            )
            ratios[count] = seconds["stacked"] / seconds["plain"]
            model.frozen_weight_cache.clear()
    return ratios


def mask_storage(network: str, tasks: int = 100) -> dict[str, float]:
    """Bytes of one task and of ``tasks`` tasks' masks, at 1 bit, 1 byte
    and 4 bytes per weight."""
    backbone = torchvision.models.get_model(network, weights=None)
    model = PiggybackModel(backbone)
    base = stored_bytes(model)
    model.add_task(0, classes=list(range(10)))
    model.freeze_task(0)
    weights = sum(layer.weight.numel() for layer in model.masked_layers.values())
    masks = sum(packed_code_bytes(layer.weight.numel(), 1) for layer in model.masked_layers.values())
    return {
        "masked_weights": weights,
        "bytes_per_task": stored_bytes(model) - base,
        "mask_bytes_per_task": masks,
        f"{tasks}_tasks_packed_MB": tasks * masks / 1e6,
        f"{tasks}_tasks_bytes_MB": tasks * weights / 1e6,
        f"{tasks}_tasks_float_MB": tasks * weights * 4 / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--avalanche-loop", action="store_true", help="only one-epoch train() through Avalanche's loop, per network"
    )
    parser.add_argument("--experience-size", type=int, default=2048, help="samples per experience of --avalanche-loop")
    parser.add_argument(
        "--task-inference",
        type=int,
        nargs="+",
        metavar="TASKS",
        help="only the stacked pass over TASKS frozen tasks, per network, against one plain forward pass",
    )
    parser.add_argument(
        "--network",
        nargs="+",
        metavar="NAME:SIZE:BATCH[:bf16]",
        help="measure these torchvision networks instead of the device's defaults, e.g. vit_b_16:224:8:bf16",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, device {device}"
        + (
            f" ({torch.cuda.get_device_name(device)})"
            if device.type == "cuda"
            else f", {torch.get_num_threads()} threads"
        )
    )
    settings = SETTINGS[device.type]
    if args.network:
        settings = [
            (n, int(size), int(batch), torch.bfloat16 if rest == ["bf16"] else None)
            for n, size, batch, *rest in (spec.split(":") for spec in args.network)
        ]
    if args.task_inference:
        print(
            "| network | input | batch | dtype | "
            + " | ".join(f"{t} tasks stacked ×" for t in args.task_inference)
            + " |"
        )
        print("|---|---|---|---|" + "---|" * len(args.task_inference))
        for network, size, batch, dtype in settings:
            ratios = task_inference_cost(network, size, batch, dtype, device, args.repeats, args.task_inference)
            name = str(dtype).replace("torch.", "") if dtype else "float32"
            print(
                f"| {network} | {size} px | {batch} | {name} | "
                + " | ".join(f"{r:.1f}" for r in ratios.values())
                + " |"
            )
        return
    if args.avalanche_loop:
        print("| network | input | batch | experience | train() × | fine-tuning s | piggyback s |")
        print("|---|---|---|---|---|---|---|")
        for network, size, batch, _ in settings:
            r = avalanche_loop(network, size, batch, device, args.repeats, args.experience_size)
            print(
                f"| {network} | {size} px | {batch} | {args.experience_size} | {r['loop_ratio']:.2f} "
                f"| {r['loop_s_fine_tuning']:.2f} | {r['loop_s_piggyback']:.2f} |",
                flush=True,
            )
        return
    print(
        "| network | input | batch | dtype | train step × | fine-tuning ms | piggyback ms | eval cached × "
        "| eval uncached × | peak memory × | task switch ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for network, size, batch, dtype in settings:
        r = measure(network, size, batch, dtype, device, args.repeats)
        print(
            f"| {network} | {size} px | {batch} | {str(dtype).replace('torch.', '') if dtype else 'float32'} "
            f"| {r['train_ratio']:.2f} | {r['train_ms_fine_tuning']:.1f} | {r['train_ms_piggyback']:.1f} "
            f"| {r['eval_cached_ratio']:.3f} | {r['eval_uncached_ratio']:.2f} | {r['peak_memory_ratio']:.2f} "
            f"| {r['task_switch_ms']:.1f} |",
            flush=True,
        )
    for network in ("resnet18", "resnet50"):
        s = mask_storage(network)
        print(
            f"{network}: {s['masked_weights']:,} masked weights; one task adds {s['bytes_per_task']:,} bytes "
            f"({s['mask_bytes_per_task']:,} of masks); 100 tasks' masks: {s['100_tasks_packed_MB']:.0f} MB at 1 bit, "
            f"{s['100_tasks_bytes_MB']:.0f} MB as bytes, {s['100_tasks_float_MB']:.0f} MB as floats"
        )


if __name__ == "__main__":
    main()
