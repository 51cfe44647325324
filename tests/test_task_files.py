"""Task files: export and import of finished tasks, and every way a file can
fail to fit the model."""

import copy

import pytest
import torch
from conftest import resealed, same_state, stacked_inputs, state_copy, synthetic_tasks, tiny_conv_net
from torch import nn

from piggyback_avalanche import Piggyback, PiggybackModel
from piggyback_avalanche.benchmarks.streams import tensor_task_stream
from piggyback_avalanche.task_aware.entropy_coding import CodeLayout, coded_layout, decode_codes, is_coded
from piggyback_avalanche.task_aware.task_files import TaskFileError, backbone_fingerprint


@pytest.fixture
def trained(trained_piggyback):
    """A backbone, and a model on it with three frozen tasks."""
    backbone, _, model = trained_piggyback
    return backbone, model


def _logits(model, stream, task, as_task=None):
    with torch.no_grad():
        return model.eval()(stacked_inputs(stream.test_stream[task]), task if as_task is None else as_task)


def test_round_trip_gives_bit_identical_logits(trained, three_task_stream, tmp_path):
    backbone, model = trained
    model.save_tasks(tmp_path / "all.tasks")
    model.save_task(tmp_path / "one.tasks", 2)
    fresh = PiggybackModel(backbone)
    assert fresh.load_tasks(tmp_path / "all.tasks") == [0, 1, 2]
    assert fresh.frozen_tasks == [0, 1, 2] and fresh.learning_tasks == []
    for task in range(3):
        assert torch.equal(_logits(fresh, three_task_stream, task), _logits(model, three_task_stream, task))
    other = PiggybackModel(backbone)
    assert other.load_task(tmp_path / "one.tasks", 2, as_task=7) == 7
    assert other.tasks == [7]
    assert torch.equal(_logits(other, three_task_stream, 2, as_task=7), _logits(model, three_task_stream, 2))


def test_a_task_file_holds_coded_masks_norms_and_head_only(trained, tmp_path):
    _, model = trained
    model.save_task(tmp_path / "one.tasks", 1)
    payload = torch.load(tmp_path / "one.tasks", weights_only=True)
    assert payload["version"] == 3 and payload["settings"]["threshold_fn"] == "binarizer"
    entries = payload["tasks"][1]
    coded = {k: v for k, v in entries.items() if ".packed_masks." in k}
    assert all(is_coded(v) for v in coded.values())
    assert {k: coded_layout(v) for k, v in coded.items()} == {
        "backbone.0.packed_masks.1": CodeLayout(numel=54, bits=1, rows=6),
        "backbone.3.packed_masks.1": CodeLayout(numel=432, bits=1, rows=8),
        "backbone.8.packed_masks.1": CodeLayout(numel=512, bits=1, rows=16),
    }
    masks = {k: decode_codes(v) for k, v in coded.items()}
    assert all(torch.equal(masks[k], model.state_dict()[k]) for k in masks)
    # One bit per weight: 6*1*3*3, 8*6*3*3 and 16*32 weights.
    assert {k: v.numel() for k, v in masks.items()} == {
        "backbone.0.packed_masks.1": 7,
        "backbone.3.packed_masks.1": 54,
        "backbone.8.packed_masks.1": 64,
    }
    assert all(v.dtype == torch.uint8 for v in masks.values())
    assert not [k for k in entries if not any(f".{c}.1" in k for c in ("packed_masks", "tasks", "heads"))]
    weights = sum(
        v.numel()
        for k, v in model.state_dict().items()
        if k.endswith(".weight") and ".tasks." not in k and ".heads." not in k and ".base." not in k
    )
    assert sum(v.numel() * v.element_size() for v in masks.values()) == sum((n + 7) // 8 for n in (54, 432, 512))
    assert weights == 54 + 432 + 512


def _flipped_stream(payload, task):
    """The last layer's coded mask of ``task`` with one bit of its stream flipped."""
    coded = dict(payload["tasks"][task]["backbone.8.packed_masks." + str(task)])
    stream = coded["stream"].clone()
    stream[0] ^= 1 << 20
    return {**coded, "stream": stream}


def test_version_1_files_with_bit_packed_masks_still_load(trained, three_task_stream, tmp_path):
    backbone, model = trained
    model.save_tasks(tmp_path / "all.tasks")
    payload = torch.load(tmp_path / "all.tasks", weights_only=True)
    raw = {task: {k: model.state_dict()[k] for k in model.task_tensor_keys(task)} for task in payload["tasks"]}
    v1 = {k: v for k, v in payload.items() if k != "checksum"}
    torch.save({**v1, "version": 1, "tasks": raw}, tmp_path / "v1.tasks")
    fresh = PiggybackModel(backbone)
    assert fresh.load_tasks(tmp_path / "v1.tasks") == [0, 1, 2]
    for task in range(3):
        assert torch.equal(_logits(fresh, three_task_stream, task), _logits(model, three_task_stream, task))


def test_loading_checks_everything_first_and_leaves_the_model_unchanged(trained, tmp_path):
    backbone, model = trained
    path = tmp_path / "all.tasks"
    model.save_tasks(path)
    target = PiggybackModel(backbone)
    target.add_task(5, classes=[0, 1])
    before = state_copy(target)

    cases = []
    truncated = tmp_path / "truncated.tasks"
    truncated.write_bytes(path.read_bytes()[:-100])
    cases.append((truncated, {}, "truncated, corrupt or not a task file"))
    garbage = tmp_path / "garbage.tasks"
    garbage.write_bytes(b"\x00" * 1000)
    cases.append((garbage, {}, "truncated, corrupt or not a task file"))
    payload = torch.load(path, weights_only=True)
    for name, change, message in (
        ("version", {"version": 4}, "of version 4; this version of piggyback-avalanche reads versions 1, 2, 3"),
        (
            "ternary",
            {"settings": {**payload["settings"], "threshold_fn": "ternarizer"}},
            "other settings \\(threshold_fn: file 'ternarizer', model 'binarizer'\\)",
        ),
        (
            "shape",
            {"tasks": {0: {**payload["tasks"][0], "backbone.3.packed_masks.0": torch.zeros(3, dtype=torch.uint8)}}},
            "backbone.3.packed_masks.0: shape \\(3,\\), not \\(54,\\)",
        ),
        (
            "flipped",
            {"tasks": {0: {**payload["tasks"][0], "backbone.8.packed_masks.0": _flipped_stream(payload, 0)}}},
            "Task 0 in .* does not decode \\(backbone.8.packed_masks.0: .*the stream is corrupt\\)",
        ),
    ):
        torch.save(resealed({**payload, **change}), tmp_path / f"{name}.tasks")
        cases.append((tmp_path / f"{name}.tasks", {}, message))
    cases.append((tmp_path / "missing.tasks", {}, "No task file at"))
    cases.append((path, {"tasks": [4]}, "has no task\\(s\\) \\[4\\]; it holds tasks \\[0, 1, 2\\]"))
    for file, kwargs, message in cases:
        with pytest.raises(TaskFileError, match=message):
            target.load_tasks(file, **kwargs)
        assert same_state(target, before), file

    other_backbone = copy.deepcopy(backbone)
    with torch.no_grad():
        other_backbone[0].weight[0, 0, 0, 0] += 1e-6  # one weight, barely changed
    elsewhere = PiggybackModel(other_backbone)
    with pytest.raises(TaskFileError, match="learned on another backbone"):
        elsewhere.load_tasks(path)
    assert elsewhere.tasks == []
    target.load_task(path, 0, as_task=3)
    before = state_copy(target)
    with pytest.raises(TaskFileError, match=r"Task label\(s\) \[3\] already exist.*rename="):
        target.load_task(path, 1, as_task=3)
    assert same_state(target, before)


def test_only_frozen_tasks_are_saved_and_writes_are_atomic(trained, tmp_path):
    _backbone, model = trained
    path = tmp_path / "all.tasks"
    model.save_tasks(path)
    original = path.read_bytes()
    model.add_task(9, classes=[0, 1])
    with pytest.raises(TaskFileError, match="\\[9\\] still being learned"):
        model.save_task(path, 9)
    with pytest.raises(TaskFileError, match="\\[4\\] unknown"):
        model.save_task(path, 4)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["all.tasks"]


def test_a_write_cut_off_midway_leaves_the_old_file_whole(trained, tmp_path):
    """A real interrupted write: a process whose file-size limit stops
    torch.save halfway through the new file (EFBIG), over an existing one."""
    import resource  # noqa: F401  (POSIX only, like the limit the child sets)
    import subprocess
    import sys
    from pathlib import Path

    backbone, model = trained
    inputs, target = tmp_path / "inputs", tmp_path / "target"
    inputs.mkdir()
    target.mkdir()
    torch.save(backbone.state_dict(), inputs / "backbone.pt")
    model.save_tasks(inputs / "all.tasks")
    model.save_task(inputs / "one.tasks", 0)
    path = target / "tasks.file"
    model.save_tasks(path)
    original = path.read_bytes()
    limit = (inputs / "one.tasks").stat().st_size // 2  # the new file is cut off at half its size
    script = f"""
import resource, signal, sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import tiny_conv_net
from piggyback_avalanche import PiggybackModel
backbone = tiny_conv_net()
backbone.load_state_dict(torch.load(sys.argv[1], weights_only=True))
model = PiggybackModel(backbone)
model.load_tasks(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
model.save_task(sys.argv[3], 0)
"""
    completed = subprocess.run(
        [sys.executable, "-c", script, str(inputs / "backbone.pt"), str(inputs / "all.tasks"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode != 0 and "File too large" in completed.stderr, completed.stderr[-2000:]
    assert path.read_bytes() == original
    assert [p.name for p in target.iterdir()] == ["tasks.file"]  # no temporary file left behind


def test_fingerprint_covers_shared_tensors_only(trained):
    backbone, model = trained
    fingerprint = backbone_fingerprint(model)
    assert fingerprint == backbone_fingerprint(PiggybackModel(backbone))  # tasks do not count
    with torch.no_grad():
        model.backbone[1].base.running_var[0] += 1
    assert backbone_fingerprint(model) != fingerprint


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, p: m.load_tasks(p, [2], rename={2: -1}), "rename: A task label must be a non-negative int, got -1"),
        (lambda m, p: m.load_task(p, 2, as_task=True), "A task label must be a non-negative int, got True"),
        (lambda m, p: m.load_tasks(p, 0), "tasks must be a list of task labels, got 0; for one task use load_task"),
        (lambda m, p: m.load_tasks(p, [0, 0]), "tasks lists task\\(s\\) \\[0\\] more than once"),
        (
            lambda m, p: m.load_tasks(p, [0, 1], rename={0: 5, 1: 5}),
            "rename gives several tasks the label\\(s\\) \\[5\\]",
        ),
    ],
)
def test_bad_labels_are_named_before_the_file_is_read(trained, tmp_path, call, message):
    backbone, model = trained
    model.save_tasks(tmp_path / "all.tasks")
    fresh = PiggybackModel(backbone)
    state = state_copy(fresh)
    with pytest.raises(TaskFileError, match=message):
        call(fresh, tmp_path / "all.tasks")
    assert same_state(fresh, state) and fresh.tasks == []


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda t: t.pop("backbone.10.heads.1.weight"), "does not hold what a frozen task of this model holds"),
        (lambda t: t.pop("backbone.0.packed_masks.1"), "does not hold what a frozen task"),
        (lambda t: t.pop("backbone.1.tasks.1.running_var"), "does not hold what a frozen task"),
        (
            lambda t: t.update({"backbone.0.packed_masks.1": torch.ones(7)}),
            "do not fit this model \\(backbone.0.packed_masks.1: torch.float32, not torch.uint8\\)",
        ),
        (
            lambda t: t.update({"backbone.10.heads.1.inactive_units": t["backbone.10.heads.1.inactive_units"].int()}),
            "backbone.10.heads.1.inactive_units: torch.int32, not torch.bool",
        ),
    ],
)
def test_a_task_with_a_part_missing_or_of_the_wrong_type_is_refused(trained, tmp_path, damage, message):
    backbone, model = trained
    model.save_task(tmp_path / "one.tasks", 1)
    payload = torch.load(tmp_path / "one.tasks", weights_only=True)
    damage(payload["tasks"][1])
    torch.save(resealed(payload), tmp_path / "damaged.tasks")
    fresh = PiggybackModel(backbone)
    state = state_copy(fresh)
    with pytest.raises(TaskFileError, match=message):
        fresh.load_tasks(tmp_path / "damaged.tasks")
    assert same_state(fresh, state) and fresh.tasks == []


def test_a_float64_file_into_a_float32_model_names_the_dtype(trained, tmp_path):
    backbone, model = trained
    copy.deepcopy(model).double().save_tasks(tmp_path / "double.tasks")
    with pytest.raises(
        TaskFileError, match=r"other settings \(dtype: file 'torch.float64', model 'torch.float32'\).*model.to"
    ):
        PiggybackModel(backbone).load_tasks(tmp_path / "double.tasks")


class _WithHeads(nn.Module):
    """A backbone with a submodule named ``heads`` of its own (as detection
    and multi-task code has), used in forward before the classifier."""

    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleDict({"a": nn.Linear(64, 16)})
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.heads["a"](x.flatten(1))))


def test_a_backbone_with_its_own_heads_is_fingerprinted_and_loaded_by_what_is_shared(three_task_stream, tmp_path):
    torch.manual_seed(0)
    backbone, other = _WithHeads(), _WithHeads()
    other.load_state_dict(backbone.state_dict())
    with torch.no_grad():
        other.heads["a"].weight.add_(1)  # differs only inside the submodule named heads
    model = PiggybackModel(backbone)
    strategy = Piggyback(model=model, mask_lr=1e-2, lr=1e-2, train_epochs=1, evaluator=None)
    strategy.train(three_task_stream.train_stream[0])
    assert "backbone.heads.a.weight" in model.shared_state_keys()
    assert backbone_fingerprint(PiggybackModel(other)) != backbone_fingerprint(model)
    model.save_tasks(tmp_path / "t.tasks")
    with pytest.raises(TaskFileError, match="another backbone"):
        PiggybackModel(other).load_tasks(tmp_path / "t.tasks")
    same = PiggybackModel(backbone)
    shared = {k: same.state_dict()[k].clone() for k in same.shared_state_keys()}
    assert same.load_task(tmp_path / "t.tasks", 0, as_task=3) == 3
    assert all(torch.equal(same.state_dict()[k], v) for k, v in shared.items())  # no shared tensor written
    x = stacked_inputs(three_task_stream.test_stream[0])
    with torch.no_grad():
        assert torch.equal(same.eval()(x, 3), model.eval()(x, 0))


def test_evaluating_labels_outside_a_tasks_head_names_them(three_task_stream):
    model = PiggybackModel(tiny_conv_net())
    strategy = Piggyback(model=model, train_epochs=1, evaluator=None)
    strategy.train(three_task_stream.train_stream[0])  # task 0: classes 0, 1
    task_one_as_zero = tensor_task_stream(synthetic_tasks([[0, 1, 2]]))  # task 0 again, with class 2
    with pytest.raises(
        ValueError, match="task 0 has samples labelled \\[2\\], but the task was learned with classes \\[0, 1\\]"
    ):
        strategy.eval(task_one_as_zero.test_stream)
