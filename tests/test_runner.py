import itertools
import json
import statistics
import subprocess
import sys

import pytest
import torch
from conftest import QUICK_RUN

from piggyback_avalanche.app.command_line import main
from piggyback_avalanche.app.runner import run_benchmark
from piggyback_avalanche.networks.backbones import BACKBONES


def test_runner_writes_tables_and_skips_finished_runs(tmp_path):
    config = {"train_epochs": 1, "train_mb_size": 64, "lr": 1e-3, "mask_lr": 3e-4}
    logged = []
    kwargs = dict(stream="digits", backbone="mlp", seeds=[0, 1], out_dir=tmp_path, config=config, log=logged.append)
    first = run_benchmark(strategies=["piggyback", "naive"], **kwargs)
    assert logged == [f"{s}, seed {k}: training" for s in ("piggyback", "naive") for k in (0, 1)]
    table = (tmp_path / "results.md").read_text().splitlines()
    assert table[0].startswith("| strategy | task 0 | task 1 | task 2 | task 3 | task 4 | avg accuracy (%)")
    assert table[2].startswith("| piggyback |") and "| 0.0 ± 0.0 |" in table[2]
    assert list(tmp_path.glob("tensorboard/piggyback/seed1/events.out.tfevents.*"))
    plots = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert plots == [
        "accuracy_matrix_naive.png",
        "accuracy_matrix_piggyback.png",
        "accuracy_vs_bytes.png",
        "average_accuracy.png",
        "model_size.png",
    ]
    # Accuracy against bytes per task, in TensorBoard too: a figure and its numbers.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard" / "accuracy_vs_bytes")).Reload()
    assert events.Tags()["images"] == ["accuracy_vs_bytes_per_task"]
    text = events.Tensors("accuracy_vs_bytes_per_task/text_summary")[0].tensor_proto.string_val[0].decode()
    piggyback_bytes = statistics.mean(r["bytes_per_task"] for r in first["piggyback"]["runs"])
    assert f"| piggyback | {piggyback_bytes:.0f} |" in text and "naive" in text
    piggyback_run = first["piggyback"]["runs"][0]
    # Zero forgetting: every column of the accuracy matrix is constant.
    matrix = piggyback_run["accuracy_matrix"]
    assert len(matrix) == 5 and all(matrix[r][c] == matrix[c][c] for r in range(5) for c in range(r + 1))
    assert matrix[0][1:] == [None] * 4
    sizes = piggyback_run["model_bytes_per_experience"]
    assert len(sizes) == 5 and len({b - a for a, b in itertools.pairwise(sizes)}) == 1
    summary = json.loads((tmp_path / "results.json").read_text())["naive"]["summary"]
    assert summary["average_forgetting"][0] > 0.05  # fine-tuning forgets
    runs = first["piggyback"]["runs"]
    assert summary and len(runs) == 2 and runs[0]["accuracy"] != runs[1]["accuracy"]

    logged.clear()
    again = run_benchmark(strategies=["piggyback", "naive", "classifier_only"], **kwargs)
    assert logged[:4] == [
        f"{s}, seed {k}: already done ({tmp_path}/runs/{s}/seed{k}.json)"
        for s in ("piggyback", "naive")
        for k in (0, 1)
    ]
    assert logged[4:] == ["classifier_only, seed 0: training", "classifier_only, seed 1: training"]
    assert again["piggyback"]["runs"] == runs

    # Other settings in the same folder: refused before any work, naming the
    # setting; the folder's runs, tables and TensorBoard runs stay as they were.
    logged.clear()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"holds runs of other settings \(config.lr: 0.001 there, 0.002 now\)"):
        run_benchmark(strategies=["naive"], **{**kwargs, "config": {**config, "lr": 2e-3}})
    assert logged == [] and {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    saved = json.loads((tmp_path / "runs" / "naive" / "seed0.json").read_text())
    assert saved["settings"]["lr"] == 1e-3 and saved["settings"]["seed"] == 0  # what the run was made with


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--stream", "cifar"],
            "unknown stream 'cifar'; choose from \\['class_incremental_digits', 'class_incremental_mnist', 'digits', "
            "'digits_reversed', 'fine_grained', 'mnist_transfer', "
            "'mnist_transfer_reversed', 'permuted_mnist', 'split_cifar100', 'split_cub200', 'split_mnist', "
            "'split_tiny_imagenet'\\]",
        ),
        (
            ["--backbone", "vgg"],
            "unknown backbone 'vgg'; choose from \\['densenet121', 'maxvit_t', 'mlp', 'resnet18', 'resnet50', "
            "'small_cnn', 'small_resnet', 'small_vit', 'swin_t', 'vgg16', 'vgg16_bn', 'vit_b_16'\\]",
        ),
        (["--data-root", "/nonexistent"], "--data-root /nonexistent: no such folder"),
        (["--crop-size", "0"], "--crop-size must be at least 1"),
        (["--check-targets", "missing.csv"], "--check-targets: .*No such file"),
        (["--strategies", "piggyback", "pnn"], "unknown strategies \\['pnn'\\]; choose from \\['agem'"),
        # No machine has 100 GPUs, so this holds with or without CUDA.
        (["--device", "cuda:99"], "--device: cuda:99: this machine has \\d+ CUDA device\\(s\\); use --device cpu"),
        (["--device", "toaster"], "is not a device"),
        (["--epochs", "0"], "--epochs, --pretrain-epochs, --mb-size and --crop-size must be at least 1"),
        (["--config", "missing.json"], "missing.json: no such file, and no shipped preset"),
    ],
)
def test_bad_arguments_name_the_valid_choices(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)


def test_config_file_presets_and_flags_override_them(tmp_path, capsys):
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"strategies": ["classifier_only"], "epochs": 1, "backbone": "mlp", "seeds": [3]}))
    main(["--config", str(preset), "--out", str(tmp_path / "out"), "--mb-size", "128"])
    out = capsys.readouterr().out
    assert "| classifier_only |" in out and f"tensorboard --logdir {tmp_path / 'out' / 'tensorboard'}" in out
    assert (tmp_path / "out" / "runs" / "classifier_only" / "seed3.json").exists()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epoch": 1}))
    with pytest.raises(SystemExit):
        main(["--config", str(bad)])
    assert "unknown keys ['epoch']" in capsys.readouterr().err


def test_streams_with_a_source_task_get_a_pretrained_cached_backbone(tmp_path):
    from piggyback_avalanche.benchmarks.offline import mnist_transfer_stream

    (source_x, source_y), benchmark = mnist_transfer_stream(seed=0)
    assert source_x.shape == (2500, 1, 16, 16) and source_y.bincount().tolist() == [250] * 10
    assert [len(e.dataset) for e in benchmark.train_stream] == [1750] * 4 + [1257]
    config = {"train_epochs": 1, "train_mb_size": 128, "lr": 1e-3}
    logged = []
    kwargs = dict(
        stream="mnist_transfer",
        backbone="mlp",
        seeds=[0],
        out_dir=tmp_path,
        config=config,
        pretrain_epochs=1,
        log=logged.append,
    )
    first = run_benchmark(strategies=["classifier_only"], **kwargs)
    assert logged == [
        "classifier_only, seed 0: training",
        "pretraining mlp on the source task of mnist_transfer (1 epochs)",
    ]
    (cached_file,) = (tmp_path / "pretrained").glob("mlp-source*-seed0-epochs1-*.pt")
    cached = torch.load(cached_file, weights_only=True)["state_dict"]
    torch.manual_seed(0)
    untrained = BACKBONES["mlp"]((1, 16, 16), False).state_dict()
    assert cached.keys() == untrained.keys()
    assert not torch.equal(cached["1.weight"], untrained["1.weight"])  # it was trained
    assert len(first["classifier_only"]["runs"][0]["accuracy"]) == 5
    logged.clear()
    run_benchmark(strategies=["naive"], **kwargs)
    assert logged == ["naive, seed 0: training"]  # the cached backbone is reused


def test_an_interrupted_strategy_resumes_from_its_last_finished_experience(tmp_path):
    from avalanche.training.plugins import SupervisedPlugin

    from piggyback_avalanche.app.runner import train_and_evaluate
    from piggyback_avalanche.benchmarks.offline import digits_task_stream

    class Trained(SupervisedPlugin):
        """Records the experiences trained; interrupts one like Ctrl-C."""

        def __init__(self, interrupt_at=None):
            super().__init__()
            self.experiences, self.interrupt_at = [], interrupt_at

        def before_training_exp(self, strategy, **kwargs):
            self.experiences.append(strategy.experience.current_experience)
            if strategy.experience.current_experience == self.interrupt_at:
                raise KeyboardInterrupt

    benchmark = digits_task_stream(seed=0)
    backbone = BACKBONES["mlp"]((1, 8, 8), False)
    settings = dict(train_epochs=1, train_mb_size=64, train_backbone_on_first_experience=True)
    checkpoint = tmp_path / "run.ckpt"

    def run(plugin, **kwargs):
        torch.manual_seed(0)
        return train_and_evaluate("piggyback", benchmark, backbone, plugins=[plugin], **settings, **kwargs)

    reference = run(Trained())
    interrupted = Trained(interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        run(interrupted, checkpoint=checkpoint)
    assert interrupted.experiences == [0, 1, 2]
    resumed_plugin = Trained()
    resumed = run(resumed_plugin, checkpoint=checkpoint)
    assert resumed_plugin.experiences == [2, 3, 4]
    for key in ("accuracy", "accuracy_matrix", "model_bytes_per_experience", "average_forgetting", "bwt"):
        assert resumed[key] == reference[key], key


def _write_targets(path, rows):
    header = "stream,backbone,strategy,metric,value,tolerance,note\n"
    path.write_text(header + "".join(row + "\n" for row in rows))
    return path


def test_check_targets_exits_non_zero_when_a_result_falls_short(tmp_path, capsys):
    argv = [*QUICK_RUN, "--out", str(tmp_path / "out")]
    reachable = _write_targets(
        tmp_path / "ok.csv",
        [
            "digits,mlp,classifier_only,average_accuracy,20,1,",
            "digits,mlp,classifier_only,average_forgetting,0,0,",
            "digits,mlp,classifier_only,task0_error,80,0,",
            "digits,small_cnn,classifier_only,average_accuracy,100,0,other backbone: not checked",
        ],
    )
    assert main([*argv, "--check-targets", str(reachable)]) == 0
    out = capsys.readouterr().out
    assert "All 3 results meet their targets." in out
    measured = json.loads((tmp_path / "out" / "results.json").read_text())["classifier_only"]["summary"]
    accuracy = 100 * measured["average_accuracy"][0]
    just_out_of_reach = _write_targets(
        tmp_path / "short.csv",
        [
            f"digits,mlp,classifier_only,average_accuracy,{accuracy + 1.01},1,",
            f"digits,mlp,classifier_only,average_accuracy,{accuracy + 0.99},1,",
        ],
    )
    assert main([*argv, "--check-targets", str(just_out_of_reach)]) == 1
    out = capsys.readouterr().out
    assert "1 of 2 results fall short of their targets." in out
    assert out.count("FALLS SHORT") == 1 and out.count("| ok |") == 1


@pytest.mark.parametrize(
    "row, message",
    [
        ("digits,mlp,naive,top5,1,1,", "line 2: unknown metric 'top5'"),
        ("digits,mlp,naive,average_accuracy,high,1,", "line 2: could not convert string to float: 'high'"),
    ],
)
def test_malformed_targets_name_the_line(tmp_path, row, message, capsys):
    path = _write_targets(tmp_path / "bad.csv", [row])
    with pytest.raises(SystemExit):
        main(["--check-targets", str(path)])
    assert message in capsys.readouterr().err


def test_the_shipped_targets_and_presets_are_valid_and_selectable_by_name(tmp_path, capsys):
    from piggyback_avalanche.app.command_line import _parse
    from piggyback_avalanche.app.report import read_targets
    from piggyback_avalanche.app.shipped import shipped_presets, shipped_targets_path

    targets = read_targets(shipped_targets_path())
    offline = {(t.strategy, t.metric) for t in targets if t.stream == "mnist_transfer"}
    for strategy in ("piggyback", "packnet", "individual", "classifier_only"):
        assert (strategy, "average_accuracy") in offline and (strategy, "average_forgetting") in offline
    paper = {(t.backbone, t.metric): t.value for t in targets if t.stream == "fine_grained"}
    assert paper[("resnet50", "task0_error")] == 18.23 and paper[("vgg16", "task2_error")] == 6.93
    assert sorted(shipped_presets()) == [
        "offline_class_incremental",
        "offline_default",
        "offline_transformer",
        "paper_resnet50",
        "paper_vgg16",
        "split_cifar100",
    ]
    for name in shipped_presets():
        args = _parse(["--config", name])
        assert args.stream == shipped_presets()[name]["stream"] and args.strategies, name
    assert _parse(["--config", "paper_resnet50"]).lr_decay_epochs == [15]
    class_incremental = _parse(["--config", "offline_class_incremental"])
    # No offline preset sets the mask rate: the default follows each experience's steps.
    assert (class_incremental.scenario, class_incremental.mask_lr) == ("class_incremental", None)
    assert "fecam" in class_incremental.strategies  # the training-free bar task inference must clear
    assert all("mask_lr" not in shipped_presets()[name] for name in shipped_presets() if not name.startswith("paper"))
    # A flag overrides the stream and keeps the preset's scenario.
    assert _parse(["--config", "offline_class_incremental", "--stream", "class_incremental_digits"]).scenario == (
        "class_incremental"
    )
    assert _parse(["--config", "offline_default", "--check-targets"]).targets == targets
    # A file of the user's still works, and wins over a shipped name.
    own = tmp_path / "offline_default"
    own.write_text(json.dumps({"stream": "digits", "seeds": [4]}))
    assert _parse(["--config", str(own)]).seeds == [4]
    with pytest.raises(SystemExit):
        _parse(["--config", "nonexistent_preset"])
    assert (
        "no shipped preset of that name; shipped: ['offline_class_incremental', 'offline_default'"
        in capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["--list-configs"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in listed] == sorted(shipped_presets())


@pytest.mark.parametrize("content", ["", '{"key": "abc", "res'])
def test_a_damaged_result_file_is_named_with_the_fix(tmp_path, content, capsys):
    argv = QUICK_RUN
    damaged = tmp_path / "runs" / "classifier_only" / "seed0.json"
    damaged.parent.mkdir(parents=True)
    damaged.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"The saved result {damaged} is unreadable" in capsys.readouterr().err
    assert damaged.read_text() == content  # left for the user to look at


def test_out_must_be_a_folder(tmp_path, capsys):
    file = tmp_path / "results.txt"
    file.write_text("mine")
    with pytest.raises(SystemExit):
        main(["--out", str(file)])
    assert f"--out {file} is a file; give a folder" in capsys.readouterr().err and file.read_text() == "mine"


def test_strategy_variants_carry_their_own_settings(tmp_path, capsys):
    from piggyback_avalanche.app.runner import parse_strategy

    assert parse_strategy("piggyback") == ("piggyback", {})
    assert parse_strategy("piggyback[threshold=0.001,mask_init=uniform,recalibrate_norm_statistics=false]") == (
        "piggyback",
        {"threshold": 0.001, "mask_init": "uniform", "recalibrate_norm_statistics": False},
    )
    # A fixed mask rate: the default rate follows the distance from the
    # initial score to the threshold, so a threshold alone changes no mask.
    specs = ["piggyback[mask_lr=0.001]", "piggyback[mask_lr=0.001,threshold=0.001]"]
    results = run_benchmark(
        stream="digits", backbone="mlp", strategies=specs, seeds=[0], out_dir=tmp_path, config={"train_epochs": 1}
    )
    default, low = (results[s]["runs"][0] for s in specs)
    assert default["accuracy"] != low["accuracy"]  # another threshold, another run
    zeros = {s: statistics.mean(z["overall"] for z in results[s]["runs"][0]["mask_zeros"].values()) for s in specs}
    assert 0 < zeros[specs[1]] < zeros[specs[0]]  # a lower threshold drops fewer weights
    assert (tmp_path / "runs" / "piggyback[mask_lr=0.001,threshold=0.001]" / "seed0.json").exists()
    for argv, message in (
        (["--strategies", "piggyback[prune_ratio=0.5]"], "piggyback takes no setting \\['prune_ratio'\\]"),
        (["--strategies", "piggyback[threshold]"], "'threshold' is not key=value"),
        (["--strategies", "pigyback[threshold=0.1]"], "unknown strategies \\['pigyback'\\]"),
    ):
        with pytest.raises(SystemExit):
            main(argv)
        assert __import__("re").search(message, capsys.readouterr().err), argv


def test_reversed_streams_hold_the_same_tasks_in_the_reverse_order():
    from piggyback_avalanche.app.streams import STREAMS

    for name in ("digits", "mnist_transfer"):
        source, forward = STREAMS[name](seed=0, data_root=None, crop_size=224)
        reversed_source, backward = STREAMS[f"{name}_reversed"](seed=0, data_root=None, crop_size=224)
        assert (source is None) == (reversed_source is None)
        assert len(forward.train_stream) == len(backward.train_stream) == 5
        for i in range(5):
            a, b = forward.test_stream[i].dataset, backward.test_stream[4 - i].dataset
            assert torch.equal(a[0][0], b[0][0]) and a[0][1] == b[0][1]
            assert backward.test_stream[4 - i].task_labels == [4 - i]  # task labels follow the new order


def test_the_residual_backbone_keeps_every_task_bit_exact(three_task_stream):
    from conftest import train_checking_earlier_tasks

    from piggyback_avalanche import Piggyback, PiggybackModel
    from piggyback_avalanche.networks.backbones import small_resnet

    model = PiggybackModel(small_resnet(width=4, blocks=1, num_classes=8))
    assert model._classifier_name == "8" and len(model.task_layers) == 9  # 7 convolutions, 2 shortcuts
    strategy = Piggyback(model=model, mask_lr=1e-2, lr=1e-2, train_epochs=1, train_mb_size=16, evaluator=None)
    assert len(train_checking_earlier_tasks(strategy, three_task_stream)) == 3


def test_runner_compares_lora_ranks_and_prompts_on_a_vision_transformer_by_bytes_per_task(tmp_path):
    from piggyback_avalanche.methods.lora import LoRAModel

    config = {"train_epochs": 1, "train_mb_size": 64, "lr": 1e-3}
    results = run_benchmark(
        stream="digits",
        backbone="small_vit",
        strategies=["prompt", "lora[rank=1]", "lora[rank=2]"],
        seeds=[0],
        out_dir=tmp_path,
        config=config,
        log=lambda line: None,
    )
    per_task = {name: r["runs"][0]["bytes_per_task"] for name, r in results.items()}
    # One more rank costs every adapted layer (out + fan_in) float32 values per task.
    layers = LoRAModel(BACKBONES["small_vit"]((1, 8, 8), False)).task_layers.values()
    one_rank = sum(4 * (layer.weight.shape[0] + layer.weight[0].numel()) for layer in layers)
    assert per_task["lora[rank=2]"] - per_task["lora[rank=1]"] == one_rank
    assert per_task["prompt"] < per_task["lora[rank=1]"]
    assert (tmp_path / "plots" / "accuracy_vs_bytes.png").stat().st_size > 10_000
    assert "| bytes per task (kB) |" in (tmp_path / "results.md").read_text().splitlines()[0] + " |"


_LOADED_AFTER = """
import contextlib, io, sys
from piggyback_avalanche.app.command_line import main
output = io.StringIO()
with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
    try:
        main({argv!r})
    except SystemExit as exit:
        code = exit.code
heavy = sorted(set(m.split(".")[0] for m in sys.modules) & set(("torch", "avalanche", "numpy", "matplotlib")))
print(code, heavy, output.getvalue().count("\\n") > 0)
"""


@pytest.mark.parametrize(
    "argv, code",
    [
        (["--help"], 0),
        (["--list-configs"], 0),
        (["--epochs", "0"], 2),
        (["--bogus-flag"], 2),
        (["--scenario", "online"], 2),
        (["--seeds", "1", "1"], 2),
        (["--config", "offline_default", "--lr", "-1"], 2),
    ],
)
def test_the_command_line_answers_help_and_bad_flags_before_loading_torch(argv, code):
    completed = subprocess.run(
        [sys.executable, "-c", _LOADED_AFTER.format(argv=argv)], capture_output=True, text=True, timeout=120
    )
    assert completed.stdout.split() == [str(code), "[]", "True"], completed.stderr


def test_the_list_flags_name_what_the_library_has(capsys):
    from piggyback_avalanche.app.streams import STREAMS
    from piggyback_avalanche.training.registry import available_strategies

    for flag, names in [
        ("--list-strategies", available_strategies()),
        ("--list-streams", sorted(STREAMS)),
        ("--list-backbones", sorted(BACKBONES)),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main([flag])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.splitlines() == names
    assert "piggyback" in available_strategies() and "digits" in STREAMS


def test_on_a_terminal_the_runner_shows_bars_for_runs_experiences_and_epochs(tmp_path):
    import fcntl
    import os
    import pty
    import struct
    import termios

    main_side, terminal = pty.openpty()  # tqdm draws only on a terminal, and one with columns
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    command = [sys.executable, "-m", "piggyback_avalanche.app.command_line", *QUICK_RUN, "--out", str(tmp_path)]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(main_side, 65536)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=120) == 0
    text = output.decode(errors="replace")
    assert "runs: 100%" in text and "1/1" in text  # the grid
    assert "classifier_only, seed 0:" in text and "5/5 [" in text  # the run's five experiences
    assert "experience 4, epoch 1:" in text and "batch/s" in text  # the last experience's mini-batches
    # Without a terminal (pytest captures), the same run writes no bar.
    completed = subprocess.run([*command[:-1], str(tmp_path / "again")], capture_output=True, text=True, timeout=120)
    assert "runs:" not in completed.stdout + completed.stderr and "batch/s" not in completed.stderr


def test_a_run_job_leaves_its_built_benchmark_behind_when_sent_and_refuses_an_out_folder_it_cannot_see(tmp_path):
    import pickle

    from piggyback_avalanche.app.runner import RunJob, StreamRecipe, execute_run

    recipe = StreamRecipe("digits", 0, None, 224)
    benchmark = recipe.build()
    job = RunJob(
        label="naive, seed 0",
        strategy="naive",
        seed=0,
        settings={"train_epochs": 1},
        recipe=recipe,
        backbone=BACKBONES["mlp"]((1, 8, 8), False),
        out_dir=tmp_path / "elsewhere",
        benchmark=benchmark,
    )
    sent = pickle.loads(pickle.dumps(job))
    assert job.benchmark is benchmark and sent.benchmark is None  # a worker builds it from the recipe
    rebuilt = sent.recipe.build()
    for mine, theirs in zip(benchmark.train_stream, rebuilt.train_stream, strict=True):
        x, y = zip(*[(s[0], s[1]) for s in (mine.dataset[i] for i in range(len(mine.dataset)))], strict=True)
        x2, y2 = zip(*[(s[0], s[1]) for s in (theirs.dataset[i] for i in range(len(theirs.dataset)))], strict=True)
        assert torch.equal(torch.stack(x), torch.stack(x2)) and y == y2
    with pytest.raises(FileNotFoundError, match=r"is not visible on .*Give --out a folder on a filesystem every node"):
        execute_run(sent)


def test_ray_flags_are_refused_without_the_ray_executor_before_any_work(tmp_path, capsys):
    import socket

    with socket.socket() as unused:  # a port where nothing listens
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    for argv, message in [
        (["--ray-address", "127.0.0.1:6379"], "--ray-address apply to --executor ray only"),
        (["--cpus-per-run", "2"], "--cpus-per-run apply to --executor ray only"),
        (["--executor", "ray", "--cpus-per-run", "0"], "--cpus-per-run 0: a run needs at least 1 CPU"),
        (["--executor", "ray", "--memory-per-run", "-1"], "--memory-per-run -1.0: give a positive number"),
        (["--executor", "ray", "--device", "cuda:1"], "--device cuda:1 with --executor ray: give cpu or cuda"),
        (["--executor", "dask"], "invalid choice: 'dask'"),
        (["--executor", "ray", "--ray-address", f"127.0.0.1:{port}"], "nothing answers there"),
        (["--executor", "ray", "--ray-address", "head-node"], "give HOST:PORT, as `ray start --head` prints it"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--out", str(tmp_path / "out")])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
