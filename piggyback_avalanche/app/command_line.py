"""``piggyback-bench``: the benchmark runner's command line (flags,
presets, their checks before any work), which hands a checked configuration
to :func:`~piggyback_avalanche.app.runner.run_benchmark`.

    piggyback-bench --stream digits --backbone small_cnn \\
        --strategies piggyback packnet individual naive --epochs 5 --seeds 0 1 --out runs/digits
"""

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Only light modules here: --help, the list flags and bad flags are answered
# before torch and Avalanche load (seconds); the rest is imported where used.
from piggyback_avalanche.app.protocols import EVALUATED_ON, EXECUTORS, SCENARIOS, TUNING_PROTOCOLS, VALIDATION_SIZE
from piggyback_avalanche.app.shipped import SHIPPED_TARGETS, read_preset, shipped_presets, shipped_targets_path
from piggyback_avalanche.checks import check_positive
from piggyback_avalanche.training_defaults import DEFAULT_LR, DEFAULT_TRAIN_EPOCHS, DEFAULT_TRAIN_MB_SIZE

__all__ = ["main", "add_executor_arguments", "check_executor_arguments", "executor_from_arguments"]

DEVICE_TYPES = ("cpu", "cuda", "mps")
"""The device types a run can train on."""


def check_device(device: Any) -> None:
    """Refuse a device that is not one of :data:`DEVICE_TYPES` or that this
    machine does not have, naming what it has.

    :raises ValueError: naming the device and the fix.
    """
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{device!r} is not a device: {error}") from None
    if parsed.type not in DEVICE_TYPES:
        raise ValueError(f"{device}: runs train on {', '.join(DEVICE_TYPES)}, not {parsed.type}; use --device cpu")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (parsed.index or 0) >= count:
            raise ValueError(f"{device}: this machine has {count} CUDA device(s); use --device cpu")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{device}: this machine has no MPS device; use --device cpu")


def _strategy_names() -> list[str]:
    from piggyback_avalanche.training.registry import available_strategies

    return available_strategies()


def _stream_names() -> list[str]:
    from piggyback_avalanche.app.streams import STREAMS

    return sorted(STREAMS)


def _backbone_names() -> list[str]:
    from piggyback_avalanche.networks.backbones import BACKBONES

    return sorted(BACKBONES)


_LISTS: dict[str, Callable[[], list[str]]] = {
    "strategies": _strategy_names,
    "streams": _stream_names,
    "backbones": _backbone_names,
}
"""What ``--list-<name>`` prints, one name a line (the library loads only then)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="piggyback-bench",
        description="Compare continual-learning strategies on a stream: each strategy and seed learns the "
        "stream through Avalanche's loop; tables, plots and TensorBoard runs go to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--config",
        help="a shipped preset by name (see --list-configs) or a JSON file of preset values; flags override them",
    )
    add("--list-configs", action="store_true", help="list the shipped presets and exit")
    for listed in _LISTS:
        add(f"--list-{listed}", action="store_true", help=f"list the {listed} by name and exit")
    add("--stream", default="mnist_transfer", help="the stream to learn, by name (--list-streams names them)")
    add(
        "--scenario",
        default="task_incremental",
        choices=SCENARIOS,
        help="class_incremental: no task labels at test time (ours infer the task; Avalanche's baselines use one head)",
    )
    add(
        "--evaluate-on",
        default="test",
        choices=EVALUATED_ON,
        help=f"validation: train on {round(100 * (1 - VALIDATION_SIZE))}%% of each training experience and evaluate on the rest, "
        "never reading the test stream (to choose settings on)",
    )
    add(
        "--tune",
        type=int,
        default=0,
        metavar="TRIALS",
        help="first choose each strategy's settings (its registered search space) in TRIALS Optuna trials on "
        "validation data, never the test stream; needs the tune extra",
    )
    add(
        "--tune-protocol",
        default="validation",
        choices=TUNING_PROTOCOLS,
        help="what the trials learn and are judged on",
    )
    add("--tune-tasks", type=int, default=2, help="the experiences the first_tasks protocol tunes on")
    add("--data-root", type=Path, help="folder of the downloaded streams' data (default: Avalanche's)")
    add("--crop-size", type=int, default=224, help="image side of the fine_grained stream")
    add("--backbone", default="small_cnn", help="the network, by name (--list-backbones names them)")
    add("--pretrained", action="store_true", help="start from the torchvision backbone's ImageNet weights")
    add("--pretrain-epochs", type=int, default=5, help="on the stream's source task, if any")
    add(
        "--strategies",
        nargs="+",
        default=["piggyback", "packnet", "individual", "classifier_only", "naive"],
        help="registered strategies to compare (--list-strategies names them); NAME[key=value,...] sets its own settings",
    )
    add("--epochs", type=int, default=DEFAULT_TRAIN_EPOCHS, help="training epochs per experience")
    add("--mb-size", type=int, default=DEFAULT_TRAIN_MB_SIZE, help="training mini-batch size")
    add(
        "--lr",
        type=float,
        help=f"heads, normalization, and whole networks (default: each strategy's own; {DEFAULT_LR} for most)",
    )
    add(
        "--mask-lr",
        type=float,
        help="Piggyback's mask scores (default: a rate per experience, from the optimizer steps it gives)",
    )
    add("--lr-decay-epochs", type=int, nargs="*", default=[], help="epochs after which rates drop 10x")
    add("--prune-ratio", type=float, help="PackNet: share of free weights released per task (default: PackNet's)")
    add("--post-prune-epochs", type=int, help="PackNet: retraining epochs after pruning (default: PackNet's)")
    add("--post-prune-lr", type=float, help="PackNet: learning rate after pruning (default: --lr)")
    add("--seeds", type=int, nargs="+", default=[0], help="one run per seed, each a different int")
    add("--device", default="cpu", help="where to train: cpu, cuda, cuda:1, ...")
    add("--out", type=Path, default=Path("runs/bench"), help="output folder: tables, plots, TensorBoard runs")
    add_executor_arguments(parser)
    add(
        "--check-targets",
        nargs="?",
        const=SHIPPED_TARGETS,
        metavar="CSV",
        help="compare the results with a targets file (without CSV: the shipped targets) and exit 1 if any falls short",
    )
    return parser


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say where runs execute (``piggyback-bench`` and the
    benchmark scripts that run grids)."""
    add = parser.add_argument
    add(
        "--executor",
        default="serial",
        choices=EXECUTORS,
        help="serial: runs in turn in this process; ray: each run a Ray task (the ray extra; --out on a "
        "filesystem every node sees)",
    )
    add(
        "--ray-address",
        metavar="ADDRESS",
        help="a running Ray cluster (ray start --head prints it; auto: this node's); default: a local Ray instance",
    )
    add("--cpus-per-run", type=int, help="Ray: CPUs (and torch threads) each run holds (default: 1)")
    add("--memory-per-run", type=float, metavar="GIB", help="Ray: memory each run reserves, in GiB (default: none)")


def check_executor_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, *, device: str) -> None:
    """Refuse executor flags that do not go together, before any work (and
    before torch loads)."""
    ray_flags = {"--ray-address": args.ray_address, "--cpus-per-run": args.cpus_per_run}
    ray_flags["--memory-per-run"] = args.memory_per_run
    given = [flag for flag, value in ray_flags.items() if value is not None]
    if args.executor != "ray" and given:
        parser.error(f"{', '.join(given)} apply to --executor ray only; add it, or drop them")
    if args.cpus_per_run is not None and args.cpus_per_run < 1:
        parser.error(f"--cpus-per-run {args.cpus_per_run}: a run needs at least 1 CPU")
    if args.memory_per_run is not None and not args.memory_per_run > 0:
        parser.error(f"--memory-per-run {args.memory_per_run}: give a positive number of GiB")
    if args.executor == "ray" and device not in ("cpu", "cuda"):
        parser.error(f"--device {device} with --executor ray: give cpu or cuda (Ray gives each run its GPU)")
    if args.executor == "ray" and importlib.util.find_spec("ray") is None:
        parser.error("--executor ray needs Ray: pip install 'piggyback-avalanche[ray]' (or pip install ray)")


def executor_from_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, *, device: str) -> Any:
    """The :class:`~piggyback_avalanche.app.executors.Executor` the flags
    ask for (a Ray one connects, or starts a local instance); a cluster it
    cannot reach exits with the parser's error."""
    from piggyback_avalanche.app.executors import make_executor

    try:
        return make_executor(
            args.executor,
            address=args.ray_address,
            cpus_per_job=args.cpus_per_run or 1,
            gpus_per_job=1 if device == "cuda" and args.executor == "ray" else 0,
            memory_per_job=None if args.memory_per_run is None else int(args.memory_per_run * 2**30),
        )
    except ValueError as error:
        parser.error(str(error))


def _fits(kind: Any, value: Any) -> bool:
    """Whether a JSON value is what an argument of type ``kind`` takes."""
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int)
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, str)  # str and Path arguments


def _check_preset_types(parser: argparse.ArgumentParser, preset: dict[str, Any], path: str) -> None:
    """Refuse a preset value of the wrong type, as the flag would."""
    actions = {action.dest: action for action in parser._actions}
    for key, value in preset.items():
        action = actions[key]
        kind = getattr(action.type, "__name__", "str")
        if isinstance(action, argparse._StoreTrueAction):
            fits, expected = isinstance(value, bool), "true or false"
        elif action.nargs in ("+", "*"):
            fits = isinstance(value, list) and (bool(value) or action.nargs == "*")
            fits = fits and all(_fits(action.type, item) for item in value)
            expected = f"a {'non-empty ' if action.nargs == '+' else ''}list of {kind} values"
        else:
            fits, expected = _fits(action.type, value), f"one {kind} value"
        if not fits:
            parser.error(f"--config {path}: {key!r} must be {expected}, got {json.dumps(value)}")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list_configs:
        for name, values in shipped_presets().items():
            print(
                f"{name}: {values.get('stream')} stream, {values.get('backbone')}, strategies {values.get('strategies')}"
            )
        parser.exit(0)
    for listed, names in _LISTS.items():
        if getattr(args, f"list_{listed}"):
            print("\n".join(names()))
            parser.exit(0)
    if args.config is not None:
        try:
            label, text = read_preset(args.config)
        except ValueError as error:
            parser.error(f"--config {error}")
        try:
            preset = json.loads(text)
        except json.JSONDecodeError as error:
            parser.error(f"--config {label} is not valid JSON: {error}")
        if not isinstance(preset, dict):
            parser.error(f"--config {label} must hold a JSON object of preset values")
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(preset) - known)
        if unknown:
            listing = {"help", "config", "list_configs", *(f"list_{listed}" for listed in _LISTS)}
            parser.error(f"--config {label} has unknown keys {unknown}; known: {sorted(known - listing)}")
        _check_preset_types(parser, preset, label)
        parser.set_defaults(**preset)
        args = parser.parse_args(argv)
    _check_numbers(parser, args)
    _check_with_the_library(parser, args)
    return args


def _check_numbers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The checks that need nothing but the flags' values."""
    if min(args.epochs, args.mb_size, args.pretrain_epochs, args.crop_size) < 1:
        parser.error("--epochs, --pretrain-epochs, --mb-size and --crop-size must be at least 1")
    rates = {"--lr": args.lr, "--mask-lr": args.mask_lr, "--post-prune-lr": args.post_prune_lr}
    for flag, value in rates.items():
        if value is not None:
            try:
                check_positive(flag, value)
            except ValueError as error:
                parser.error(str(error))
    if any(e < 1 for e in args.lr_decay_epochs):
        parser.error("every --lr-decay-epochs value must be at least 1")
    if args.tune < 0 or args.tune_tasks < 1:
        parser.error("--tune must be at least 0 (trials) and --tune-tasks at least 1")
    if min(args.seeds) < 0:
        parser.error(f"--seeds {args.seeds}: a seed is a non-negative int")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {args.seeds} repeats a seed; give each seed once")
    check_executor_arguments(parser, args, device=args.device)
    if args.data_root is not None and not args.data_root.is_dir():
        parser.error(f"--data-root {args.data_root}: no such folder; create it (datasets download into it)")


def _check_with_the_library(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The checks that ask the library (names, each method's settings,
    devices, the out folder, the targets), still before any work."""
    from piggyback_avalanche.app.report import read_targets
    from piggyback_avalanche.app.runner import check_out_folder, parse_strategy
    from piggyback_avalanche.app.streams import STREAMS, check_scenario
    from piggyback_avalanche.networks.backbones import BACKBONES
    from piggyback_avalanche.training.registry import available_strategies, registered_strategy

    if args.stream not in STREAMS:
        parser.error(f"unknown stream {args.stream!r}; choose from {sorted(STREAMS)}")
    if args.backbone not in BACKBONES:
        parser.error(f"unknown backbone {args.backbone!r}; choose from {sorted(BACKBONES)}")
    try:
        parsed = [parse_strategy(spec) for spec in args.strategies]
    except ValueError as error:
        parser.error(f"--strategies: {error}")
    unknown = [name for name, _ in parsed if name not in available_strategies()]
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {available_strategies()}")
    try:
        check_scenario(args.scenario, args.stream, [name for name, _ in parsed])
    except ValueError as error:
        parser.error(str(error))
    for spec, (name, variant) in zip(args.strategies, parsed):
        accepted = registered_strategy(name).accepted(variant)
        if accepted != variant:
            parser.error(f"--strategies {spec}: {name} takes no setting {sorted(set(variant) - set(accepted))}")
    for flag, device in [("--device", args.device)] + [
        (f"--strategies {spec}", variant["device"])
        for spec, (_, variant) in zip(args.strategies, parsed)
        if "device" in variant
    ]:
        try:
            check_device(device)
        except ValueError as error:
            parser.error(f"{flag}: {error}")
    # Each method's config refuses its own settings before any work: each flag's on its own (the
    # message names the flag), then each --strategies entry with its variant's on top.
    config = _config(args)
    for spec, (name, variant) in zip(args.strategies, parsed):
        for key, value in config.items():
            try:
                registered_strategy(name).check_settings({key: value})
            except (TypeError, ValueError) as error:
                parser.error(f"--{key.replace('_', '-')}: {error}")
        try:
            registered_strategy(name).check_settings({**config, **variant})
        except (TypeError, ValueError) as error:
            parser.error(f"--strategies {spec}: {error}")
    try:
        check_out_folder(args.out)
    except ValueError as error:
        parser.error(str(error))
    if args.check_targets is not None:
        if args.check_targets == SHIPPED_TARGETS:
            args.check_targets = shipped_targets_path()
        try:
            args.targets = read_targets(Path(args.check_targets))
        except (OSError, ValueError) as error:
            parser.error(f"--check-targets: {error}")


def _config(args: argparse.Namespace) -> dict[str, Any]:
    """The strategies' settings the flags give; a method's own settings only
    when given, so that each method's defaults apply otherwise."""
    config: dict[str, Any] = {
        "train_epochs": args.epochs,
        "train_mb_size": args.mb_size,
        "mask_lr": args.mask_lr,
        "device": args.device,
    }
    if args.lr_decay_epochs:
        config["lr_decay_epochs"] = tuple(args.lr_decay_epochs)
    given = {"lr": args.lr, "prune_ratio": args.prune_ratio, "post_prune_epochs": args.post_prune_epochs}
    given["post_prune_lr"] = args.post_prune_lr
    return config | {k: v for k, v in given.items() if v is not None}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``piggyback-bench`` or
    ``python -m piggyback_avalanche.app.command_line``).

    :return: the exit status: 0, or 1 if a result falls short of its target.
    """
    args = _parse(argv)
    config = _config(args)
    from piggyback_avalanche.app.report import (
        check_targets,
        format_markdown,
        format_target_checks,
        published_comparison,
    )
    from piggyback_avalanche.app.runner import RunsFailedError, run_benchmark
    from piggyback_avalanche.app.tuning import OptunaUnavailableError
    from piggyback_avalanche.benchmarks.datasets import DatasetUnavailableError
    from piggyback_avalanche.evaluation import tensorboard_command
    from piggyback_avalanche.networks.backbones import WeightsUnavailableError
    from piggyback_avalanche.training.checkpoints import CheckpointError

    executor = executor_from_arguments(_parser(), args, device=args.device)
    try:
        results = run_benchmark(
            stream=args.stream,
            backbone=args.backbone,
            strategies=args.strategies,
            seeds=args.seeds,
            out_dir=args.out,
            config=config,
            pretrained=args.pretrained,
            pretrain_epochs=args.pretrain_epochs,
            data_root=args.data_root,
            crop_size=args.crop_size,
            scenario=args.scenario,
            evaluate_on=args.evaluate_on,
            tune_trials=args.tune,
            tune_protocol=args.tune_protocol,
            tune_tasks=args.tune_tasks,
            executor=executor,
        )
    except RunsFailedError as error:
        print(f"\npiggyback-bench: {error}", file=sys.stderr)
        return 1
    except (
        DatasetUnavailableError,
        WeightsUnavailableError,
        OptunaUnavailableError,
        CheckpointError,
        ValueError,
    ) as error:
        _parser().exit(2, f"piggyback-bench: error: {error}\n")
    finally:
        executor.close()
    print()
    print(format_markdown(results))
    if args.stream == "fine_grained":
        print("\n" + published_comparison(results, backbone=args.backbone))
    print(f"\nTables: {args.out}/results.md, .csv, .json; plots: {args.out / 'plots'}")
    print(f"TensorBoard: {tensorboard_command(args.out / 'tensorboard')}")
    if args.check_targets is None:
        return 0
    checks = check_targets(results, args.targets, stream=args.stream, backbone=args.backbone)
    if not checks:
        print(f"\n{args.check_targets} has no targets for {args.stream} with {args.backbone}.")
        return 0
    print(f"\nTargets ({args.check_targets}):\n{format_target_checks(checks)}")
    short = [c for c in checks if not c.passed]
    if short:
        print(f"{len(short)} of {len(checks)} results fall short of their targets.")
        return 1
    print(f"All {len(checks)} results meet their targets.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
