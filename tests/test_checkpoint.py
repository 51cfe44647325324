"""Checkpoint and resume: a real process killed with SIGKILL mid-experience,
and every way a checkpoint can fail to fit."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import resealed, stacked_inputs, tiny_conv_net

from piggyback_avalanche import PackNet, Piggyback, PiggybackModel
from piggyback_avalanche.evaluation import default_evaluator
from piggyback_avalanche.methods.hat import HAT, HATModel
from piggyback_avalanche.methods.packnet import PackNetModel
from piggyback_avalanche.methods.supsup import SupSup, SupSupModel
from piggyback_avalanche.methods.wsn import WSN, WSNModel
from piggyback_avalanche.task_aware.entropy_coding import decode_codes, is_coded
from piggyback_avalanche.training.checkpoints import (
    CheckpointError,
    load_experience_checkpoint,
    save_experience_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "save_and_resume.py"


def _run(checkpoint, results, *, kill_during=None):
    """Run the example; with ``kill_during``, SIGKILL it as soon as it
    starts training that experience. Returns its output lines."""
    command = [
        sys.executable,
        str(EXAMPLE),
        "--checkpoint",
        str(checkpoint),
        "--epochs",
        "1",
        "--results",
        str(results),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    lines = []
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if kill_during is not None and line.startswith(f"training experience {kill_during}"):
            os.kill(process.pid, signal.SIGKILL)
            break
    assert process.wait(timeout=300) == (-signal.SIGKILL if kill_during is not None else 0), lines
    return lines


@pytest.mark.slow
def test_a_run_killed_during_experience_3_resumes_to_the_same_accuracy_matrix(tmp_path):
    uninterrupted = _run(tmp_path / "a.ckpt", tmp_path / "a.json")
    assert [line for line in uninterrupted if line.startswith("training")] == [
        f"training experience {i}" for i in range(4)
    ]

    killed = _run(tmp_path / "b.ckpt", tmp_path / "b.json", kill_during=2)
    assert killed[-1] == "training experience 2" and not (tmp_path / "b.json").exists()
    assert (tmp_path / "b.ckpt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.ckpt")]  # no temporary left
    resumed = _run(tmp_path / "b.ckpt", tmp_path / "b.json")
    print("\n".join(["--- killed run ---", *killed, "--- resumed run ---", *resumed]))
    assert resumed[0] == f"resuming after experience 1 from {tmp_path / 'b.ckpt'}"
    # Experiences 0 and 1 are not retrained.
    assert [line for line in resumed if line.startswith("training")] == [
        "training experience 2",
        "training experience 3",
    ]
    assert json.loads((tmp_path / "b.json").read_text()) == json.loads((tmp_path / "a.json").read_text())


def _strategy(strategy_class=Piggyback, model_class=PiggybackModel, **kwargs):
    torch.manual_seed(0)
    return strategy_class(
        model=model_class(tiny_conv_net()),
        train_epochs=1,
        train_mb_size=16,
        evaluator=default_evaluator(interactive=False),
        **kwargs,
    )


@pytest.mark.parametrize(
    "strategy_class, model_class",
    [(Piggyback, PiggybackModel), (PackNet, PackNetModel), (SupSup, SupSupModel), (WSN, WSNModel), (HAT, HATModel)],
)
def test_resume_in_process_gives_the_same_metrics_and_logits(three_task_stream, tmp_path, strategy_class, model_class):
    train, test = three_task_stream.train_stream, three_task_stream.test_stream

    def run(strategy, experiences, checkpoint=None):
        for i in experiences:
            strategy.train(train[i])
            metrics = strategy.eval(test[: i + 1])
            if checkpoint:
                save_experience_checkpoint(strategy, checkpoint, next_experience=i + 1)
        return metrics

    reference = _strategy(strategy_class, model_class)
    expected = run(reference, range(3))
    first = _strategy(strategy_class, model_class)
    run(first, range(2), tmp_path / "run.ckpt")
    torch.manual_seed(123)  # the RNG state comes from the checkpoint, not from here
    second = _strategy(strategy_class, model_class)
    assert load_experience_checkpoint(second, tmp_path / "run.ckpt") == 2

    def comparable(metrics):  # timings differ between runs; histograms are tensors
        return {k: v for k, v in metrics.items() if isinstance(v, float) and not k.startswith("Time")}

    resumed = comparable(run(second, [2]))
    assert len(resumed) >= 15 and resumed == comparable(expected)
    assert "StreamForgetting/eval_phase/test_stream" in resumed
    from matplotlib import pyplot

    assert pyplot.get_fignums() == []  # the metrics' charts were rendered and closed
    second.model.eval(), reference.model.eval()
    with torch.no_grad():
        for task in range(3):
            x = stacked_inputs(test[task])
            assert torch.equal(second.model(x, task), reference.model(x, task))


def test_no_checkpoint_means_start_at_zero(tmp_path):
    assert load_experience_checkpoint(_strategy(), tmp_path / "none.ckpt") == 0


def test_bad_checkpoints_are_refused_and_leave_the_strategy_unchanged(three_task_stream, tmp_path):
    strategy = _strategy()
    strategy.train(three_task_stream.train_stream[0])
    path = tmp_path / "run.ckpt"
    save_experience_checkpoint(strategy, path, next_experience=1)
    target = _strategy()
    before = {k: v.clone() for k, v in target.model.state_dict().items()}

    def unchanged():
        after = target.model.state_dict()
        return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a checkpoint"):
        load_experience_checkpoint(target, truncated)
    assert unchanged()

    state = torch.load(path, weights_only=False)
    for change, message in (
        ({"format": 99}, "has format 99; this version reads format 3"),
        ({"strategy": "PackNet"}, "is of a PackNet, not of this Piggyback"),
    ):
        torch.save(resealed({**state, **change}), tmp_path / "changed.ckpt")
        with pytest.raises(CheckpointError, match=message):
            load_experience_checkpoint(target, tmp_path / "changed.ckpt")
        assert unchanged()

    # The masks are stored entropy-coded, and a stream that does not decode is refused.
    coded = state["model_state"]["backbone.3.packed_masks.0"]
    assert is_coded(coded) and torch.equal(
        decode_codes(coded), strategy.model.state_dict()["backbone.3.packed_masks.0"]
    )
    flipped = {**coded, "crc32": coded["crc32"] + 1}
    torch.save(
        resealed({**state, "model_state": {**state["model_state"], "backbone.3.packed_masks.0": flipped}}),
        tmp_path / "c.ckpt",
    )
    with pytest.raises(CheckpointError, match=r"holds masks that do not decode \(backbone.3.packed_masks.0: .*corrupt"):
        load_experience_checkpoint(target, tmp_path / "c.ckpt")
    assert unchanged()

    state["model_state"]["backbone.0.weight"] = torch.zeros(3, 1, 3, 3)  # a weight of another shape
    torch.save(resealed(state), tmp_path / "changed.ckpt")
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_experience_checkpoint(target, tmp_path / "changed.ckpt")
    assert unchanged()


def test_checkpoints_of_other_strategies_or_mid_task_are_refused(three_task_stream, tmp_path):
    from piggyback_avalanche import make_strategy

    naive = make_strategy("naive", tiny_conv_net(), evaluator=None)
    with pytest.raises(CheckpointError, match=r"not Naive.*Rerun it from the start"):
        save_experience_checkpoint(naive, tmp_path / "x.ckpt", next_experience=0)
    strategy = _strategy()
    strategy.model.add_task(0, classes=[0, 1])
    with pytest.raises(CheckpointError, match="still being learned"):
        save_experience_checkpoint(strategy, tmp_path / "x.ckpt", next_experience=0)
    assert not (tmp_path / "x.ckpt").exists()


class _Payload:
    """Pickled, it would run ``touch <marker>`` when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _saved_state(three_task_stream, tmp_path):
    strategy = _strategy()
    strategy.train(three_task_stream.train_stream[0])
    path = tmp_path / "run.ckpt"
    save_experience_checkpoint(strategy, path, next_experience=1)
    return path, torch.load(path, weights_only=True)


def _unchanged(strategy):
    before = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    clock = dict(vars(strategy.clock))
    return lambda: (
        strategy.model.state_dict().keys() == before.keys()
        and all(torch.equal(strategy.model.state_dict()[k], before[k]) for k in before)
        and dict(vars(strategy.clock)) == clock
    )


@pytest.mark.parametrize("where", ["metrics", "metric_results", "rng", "model_state"])
def test_a_checkpoint_with_a_code_payload_runs_nothing_and_changes_nothing(three_task_stream, tmp_path, where):
    _path, state = _saved_state(three_task_stream, tmp_path)
    marker = tmp_path / "pwned"
    if where == "model_state":
        state[where]["backbone.0.weight"] = _Payload(marker)
    else:
        state[where] = _Payload(marker)
    torch.save(state, tmp_path / "evil.ckpt")  # a real pickle that would create the marker file
    target = _strategy()
    unchanged = _unchanged(target)
    with pytest.raises(CheckpointError, match=r"evil.ckpt.*never loaded"):
        load_experience_checkpoint(target, tmp_path / "evil.ckpt")
    assert not marker.exists() and unchanged()


def test_a_code_payload_in_the_runners_checkpoint_folder_runs_nothing(tmp_path):
    from piggyback_avalanche.app.runner import train_and_evaluate
    from piggyback_avalanche.benchmarks.offline import digits_task_stream
    from piggyback_avalanche.networks.backbones import BACKBONES

    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "checkpoints" / "piggyback" / "seed0-key.ckpt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"format": 2, "metrics": _Payload(marker)}, checkpoint)
    with pytest.raises(CheckpointError, match=r"seed0-key.ckpt.*never loaded.*Delete it"):
        train_and_evaluate("piggyback", digits_task_stream(), BACKBONES["mlp"]((1, 8, 8), False), checkpoint=checkpoint)
    assert not marker.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("clock"), "incomplete or malformed \\(KeyError\\('clock'\\)\\)"),
        (lambda s: s["clock"].update(items=[]), "another training clock"),
        (lambda s: s["rng"].pop("numpy"), "numpy's generator state is malformed \\(KeyError"),
        (
            lambda s: s["metrics"].__setitem__(0, {"__plain__": "object", "class": "subprocess:Popen", "state": {}}),
            "subprocess:Popen is not a class of Avalanche or piggyback_avalanche",
        ),
        (lambda s: s.update(next_experience=-1), "no valid next experience"),
    ],
)
def test_an_internally_wrong_checkpoint_is_refused_before_anything_changes(
    three_task_stream, tmp_path, change, message
):
    _path, state = _saved_state(three_task_stream, tmp_path)
    change(state)
    torch.save(resealed(state), tmp_path / "wrong.ckpt")
    target = _strategy()
    unchanged = _unchanged(target)
    with pytest.raises(CheckpointError, match=message):
        load_experience_checkpoint(target, tmp_path / "wrong.ckpt")
    assert unchanged()


@pytest.mark.parametrize(
    "build, message",
    [
        (dict(strategy=dict(train_mb_size=8)), "strategy settings \\(train_mb_size: checkpoint 16, now 8\\)"),
        (dict(strategy=dict(mask_lr=1e-2)), "learning_rates: checkpoint"),
        (dict(model=dict(threshold=1e-3)), "model settings \\(threshold: checkpoint 0.005, now 0.001\\)"),
        (dict(model=dict(mask_scale=2e-2)), "model settings \\(mask_scale"),
        (dict(model=dict(mask_init="uniform")), "model settings \\(mask_init: checkpoint '1s', now 'uniform'\\)"),
    ],
)
def test_resuming_with_other_settings_names_the_setting(three_task_stream, tmp_path, build, message):
    path, _ = _saved_state(three_task_stream, tmp_path)
    torch.manual_seed(0)
    target = Piggyback(
        model=PiggybackModel(tiny_conv_net(), **build.get("model", {})),
        evaluator=default_evaluator(interactive=False),
        **{"train_epochs": 1, "train_mb_size": 16, **build.get("strategy", {})},
    )
    with pytest.raises(CheckpointError, match=message + ".*accept_changed_settings"):
        load_experience_checkpoint(target, path)


def test_resuming_past_the_end_of_the_stream_says_so(three_task_stream, tmp_path):
    path, _ = _saved_state(three_task_stream, tmp_path)
    with pytest.raises(CheckpointError, match="continues at experience 1, but the stream has 0 experiences"):
        load_experience_checkpoint(_strategy(), path, stream_length=0)
    assert load_experience_checkpoint(_strategy(), path, stream_length=1) == 1


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64", "int32", "float16", "float64", "bool"])
def test_plain_state_keeps_numpy_arrays_of_every_dtype_bit_exact_through_a_weights_only_file(tmp_path, dtype):
    import numpy as np

    from piggyback_avalanche.training.plain_state import from_plain, to_plain

    array = (np.arange(24, dtype=np.float64).reshape(2, 3, 4) * 1e4 + 3).astype(dtype)[:, ::2]  # not contiguous
    torch.save(to_plain({"a": array}), tmp_path / "state.pt")
    back = from_plain(torch.load(tmp_path / "state.pt", weights_only=True))["a"]
    assert back.dtype == array.dtype and back.shape == (2, 2, 4) and back.tobytes() == array.tobytes()
    # The form written before arrays were stored as bytes still reads.
    assert np.array_equal(from_plain({"__plain__": "ndarray", "data": torch.arange(3)}), np.arange(3))


def test_plain_state_refuses_arrays_of_python_objects_both_ways():
    import numpy as np

    from piggyback_avalanche.training.plain_state import PlainStateError, from_plain, to_plain

    with pytest.raises(PlainStateError, match="numpy array of Python objects"):
        to_plain(np.array([object()]))
    stored = to_plain(np.arange(2))
    with pytest.raises(PlainStateError, match="Python objects"):
        from_plain({**stored, "dtype": "|O"})
    with pytest.raises(PlainStateError, match="malformed array"):
        from_plain({**stored, "shape": [5]})
