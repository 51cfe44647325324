import csv
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import synthetic_tasks, tiny_conv_net
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from piggyback_avalanche import PackNetModel, PiggybackModel, make_strategy
from piggyback_avalanche.benchmarks.streams import tensor_task_stream
from piggyback_avalanche.evaluation import default_evaluator
from piggyback_avalanche.evaluation.mask_sparsity import MaskSparsity
from piggyback_avalanche.evaluation.model_size import ModelSize
from piggyback_avalanche.methods.piggyback.masks import unpack_mask

TWO_TASKS = [[0, 1], [0, 1, 2]]


def _mlp():
    # Hand-countable: layer 0 has 12 weights + 3 biases (60 bytes); the
    # classifier becomes heads of 2 and 3 outputs on 3 features.
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def _sizes(name, **config):
    stream = tensor_task_stream(synthetic_tasks(TWO_TASKS, shape=(4,)))
    strategy = make_strategy(name, _mlp(), train_epochs=1, evaluator=None, **config)
    metric, sizes = ModelSize(), []
    for experience in stream.train_stream:
        strategy.train(experience)
        metric.update(strategy)
        sizes.append(metric.result())
    return sizes


# Heads: task 0 = 2x3 weights + 2 biases + 2 bool units = 34 bytes;
#        task 1 = 3x3 weights + 3 biases + 3 bool units = 51 bytes.
# One network per task (for the ratio): 60 + head weights and biases (32, 48).
@pytest.mark.parametrize(
    "name, config, expected_bytes, bits",
    [
        # backbone once (60) + per task a 2-byte packed mask (12 bits) and its head
        ("piggyback", {}, [60 + 2 + 34, 60 + 2 + 34 + 2 + 51], [16 / 12, 16 / 12]),
        # ternary: 24 bits = 3 bytes per task
        ("piggyback_ternary", {}, [60 + 3 + 34, 60 + 3 + 34 + 3 + 51], [24 / 12, 24 / 12]),
        # weights once (60) + owners packed at 1 then 2 bits (2, 3 bytes) + int64 task order
        ("packnet", {}, [60 + 2 + 8 + 34, 60 + 3 + 16 + 34 + 51], [16 / 12, 24 / 12 / 2]),
        # one full copy of layer 0 per task, no template
        ("individual", {}, [60 + 34, 60 + 34 + 60 + 51], [32.0, 32.0]),
        # one network and its heads
        ("naive", {}, [60 + 34, 60 + 34 + 51], None),
    ],
)
def test_model_size_in_bytes_by_hand(name, config, expected_bytes, bits):
    sizes = _sizes(name, **config)
    assert [s["bytes"] for s in sizes] == expected_bytes
    individual = [60 + 32, 60 + 32 + 60 + 48]
    assert [s["individual_networks_ratio"] for s in sizes] == [
        pytest.approx(b / i) for b, i in zip(expected_bytes, individual)
    ]
    if bits is None:
        assert all("bits_per_weight_per_task" not in s for s in sizes)
    else:
        assert [s["bits_per_weight_per_task"] for s in sizes] == [pytest.approx(b) for b in bits]


def test_replay_buffer_counts_in_the_size():
    sizes = _sizes("replay", mem_size=10)
    # 10 stored samples of 4 float32 inputs, an int64 label and an int64 task
    # label, and the reservoir's 10 float32 sampling weights.
    assert sizes[0]["bytes"] == 60 + 34 + 10 * (16 + 8 + 8) + 10 * 4


def test_piggyback_grows_by_exactly_its_per_task_cost():
    stream = tensor_task_stream(synthetic_tasks([[0, 1, 2]] * 3))
    strategy = make_strategy("piggyback", tiny_conv_net(3), train_epochs=1, evaluator=None)
    metric, sizes = ModelSize(), []
    for experience in stream.train_stream:
        strategy.train(experience)
        metric.update(strategy)
        sizes.append(metric.result()["bytes"])
    model = strategy.model
    state = model.state_dict()
    per_task = sum(t.nbytes for k, t in state.items() if ".packed_masks.1" in k or ".tasks.1." in k or ".heads.1." in k)
    assert sizes[2] - sizes[1] == sizes[1] - sizes[0] == per_task


def test_sparsity_equals_the_stored_masks():
    model = PiggybackModel(tiny_conv_net(), threshold_fn="ternarizer", mask_init="uniform")
    for task in (0, 1):
        model.add_task(task, classes=[0, 1])
        model.freeze_task(task)
    metric = MaskSparsity()
    metric.update(model)
    result = metric.result()
    zeros = negatives = total = 0
    for name, layer in model.masked_layers.items():
        mask = unpack_mask(model.state_dict()[f"backbone.{name}.packed_masks.1"], shape=layer.weight.shape, bits=2)
        label = f"{name}:{'Linear' if isinstance(layer, nn.Linear) else 'Conv2d'}"  # path and type
        assert result[1]["zeros"][label] == (mask == 0).sum().item() / mask.numel()
        assert result[1]["negatives"][label] == (mask == -1).sum().item() / mask.numel()
        zeros, negatives, total = (
            zeros + (mask == 0).sum().item(),
            negatives + (mask == -1).sum().item(),
            total + mask.numel(),
        )
    assert result[1]["zeros"]["overall"] == zeros / total and 0 < zeros / total < 1
    assert result[1]["negatives"]["overall"] == negatives / total
    assert model.mask_sparsity(1) == result[1]  # the metric asks the model, the model asks its layers
    # A model whose tasks keep no mask over the shared weights has nothing to report.
    packnet = PackNetModel(tiny_conv_net())
    packnet.add_task(0, classes=[0, 1])
    assert packnet.mask_sparsity(0) is None
    metric.reset()
    metric.update(packnet, [0])
    assert metric.result() == {}


def _run_with_tensorboard(log_dir, files_dir):
    stream = tensor_task_stream(synthetic_tasks(TWO_TASKS))
    evaluator = default_evaluator(
        tb_dir=log_dir, csv_path=files_dir / "metrics.csv", json_path=files_dir / "metrics.json", interactive=False
    )
    strategy = make_strategy("piggyback", tiny_conv_net(), train_epochs=2, evaluator=evaluator, mask_lr=1e-2)
    for i, experience in enumerate(stream.train_stream):
        strategy.train(experience)
        strategy.eval(stream.test_stream[: i + 1])
    for logger in evaluator.loggers:
        if hasattr(logger, "writer"):
            logger.writer.flush()
    return evaluator


EXPECTED_SCALARS = [
    "Top1_Acc_Stream/eval_phase/test_stream/Task000",
    "Top1_Acc_Exp/eval_phase/test_stream/Task001/Exp001",
    "StreamForgetting/eval_phase/test_stream",
    "StreamBWT/eval_phase/test_stream",
    "ModelSize_Bytes/train_phase/train_stream",
    "ModelSize_IndividualNetworksRatio/train_phase/train_stream",
    "ModelSize_BitsPerWeightPerTask/train_phase/train_stream",
    "MaskZeros/train_phase/train_stream/Task001/overall",
    "MaskZeros/train_phase/train_stream/Task001/0:Conv2d",
    "Time_Epoch/train_phase/train_stream/Task001",
]


def test_tensorboard_events_files_and_values(tmp_path):
    evaluator = _run_with_tensorboard(tmp_path / "tb", tmp_path / "files")
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    last = evaluator.get_last_metrics()
    for tag in EXPECTED_SCALARS:
        assert tag in tags["scalars"], tag
        assert events.Scalars(tag)[-1].value == pytest.approx(last[tag], rel=1e-6), tag
    assert "AccuracyMatrix/eval_phase/test_stream" in tags["images"]
    assert "MaskSparsityChart/train_phase/train_stream/Task001" in tags["images"]
    assert "MaskScores/train_phase/train_stream/Task001/0:Conv2d" in tags["histograms"]
    # The matrix holds both rows; the second row has both tasks.
    matrix = next(m for m in evaluator.metrics if str(m) == "AccuracyMatrix").result()
    assert len(matrix) == 2 and matrix[1][0] == last["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"]
    # The CSV and JSON exports hold every numeric value; the last of each
    # name is what get_all_metrics holds last.
    rows = list(csv.DictReader(open(tmp_path / "files" / "metrics.csv")))
    exported = json.loads((tmp_path / "files" / "metrics.json").read_text())
    assert len(rows) == len(exported)
    final = {r["name"]: float(r["value"]) for r in rows}
    for name, (_, values) in evaluator.get_all_metrics().items():
        if isinstance(values[-1], (int, float)):
            assert final[name] == pytest.approx(values[-1]), name


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_real_tensorboard_server_shows_the_scalars(tmp_path):
    _run_with_tensorboard(tmp_path / "tb", tmp_path / "files")
    port = _free_port()
    tensorboard = Path(sys.executable).with_name("tensorboard")
    server = subprocess.Popen(
        [str(tensorboard), "--logdir", str(tmp_path / "tb"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, tags = time.monotonic() + 90, {}
        while time.monotonic() < deadline and not tags:
            time.sleep(1)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as reply:
                    tags = json.loads(reply.read())
            except OSError:
                continue
        assert tags, "TensorBoard served no scalar tags within 90 s"
        served = {tag for run in tags.values() for tag in run}
        assert set(EXPECTED_SCALARS) <= served
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_ewc_state_counts_in_the_size():
    sizes = _sizes("ewc")
    # After the first task EWC keeps, for each of the network's parameters
    # (60 bytes of layer 0, 32 of the head's weight and bias), its old value
    # and its importance.
    assert sizes[0]["bytes"] == 60 + 34 + 2 * (60 + 32)


@pytest.mark.parametrize("name", ["piggyback", "naive", "fecam"])
def test_asking_for_no_logger_shows_no_warning_about_it(name):
    import warnings

    from piggyback_avalanche import make_strategy
    from piggyback_avalanche.evaluation import default_evaluator

    config = {"single_head": True} if name == "fecam" else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_strategy(name, nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), evaluator=None, **config)
        default_evaluator(interactive=False)
    assert not [w for w in caught if "No loggers specified" in str(w.message)]
    # Only that warning: a plugin built with no logger outside these calls still says so.
    with pytest.warns(UserWarning, match="No loggers specified"):
        from avalanche.training.plugins import EvaluationPlugin

        EvaluationPlugin()


def test_the_tensorboard_command_works_without_activating_the_environment(tmp_path):
    import shlex
    import sys
    from pathlib import Path

    from piggyback_avalanche.evaluation import tensorboard_command

    program, flag, folder = shlex.split(tensorboard_command(tmp_path / "my runs"))
    assert program == str(Path(sys.executable).parent / "tensorboard") and Path(program).is_file()
    assert (flag, folder) == ("--logdir", str(tmp_path / "my runs"))  # a space survives the shell
