"""Task stores and the frozen-weight cache: tasks kept on disk give the
logits of tasks kept in memory, a damaged or foreign store is refused with
the model unchanged, an interrupted append loses at most the task being
added, and resident memory stays within the cache's budget."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import packnet_mlp_with_tasks, resealed, same_state, stacked_inputs, state_copy, tiny_conv_net

from piggyback_avalanche import Piggyback, PiggybackModel
from piggyback_avalanche.evaluation import default_evaluator
from piggyback_avalanche.task_aware.frozen_weight_cache import DEFAULT_BUDGET_BYTES, FrozenWeightCache
from piggyback_avalanche.task_aware.task_store import TaskStore, TaskStoreError
from piggyback_avalanche.training.checkpoints import CheckpointError, save_experience_checkpoint


def _logits(model, stream):
    with torch.no_grad():
        return [model.eval()(stacked_inputs(stream.test_stream[t]), t) for t in range(len(stream.test_stream))]


def test_tasks_from_a_store_give_the_logits_of_tasks_in_memory(trained_piggyback, three_task_stream, tmp_path):
    backbone, _, model = trained_piggyback
    expected = _logits(model, three_task_stream)
    in_memory = model.stored_bytes()
    assert model.attach_task_store(tmp_path / "store") == []
    assert not [k for k in model.state_dict() if ".packed_masks." in k]  # the masks left memory
    assert model.stored_bytes() == in_memory  # and still count, bit-packed
    assert [torch.equal(a, b) for a, b in zip(_logits(model, three_task_stream), expected)] == [True] * 3

    fresh = PiggybackModel(backbone)
    assert fresh.attach_task_store(tmp_path / "store") == [0, 1, 2]
    assert fresh.frozen_tasks == [0, 1, 2] and fresh.stored_bytes() == in_memory
    assert [torch.equal(a, b) for a, b in zip(_logits(fresh, three_task_stream), expected)] == [True] * 3
    exported = fresh.export_task(1)
    with torch.no_grad():
        assert torch.equal(exported(stacked_inputs(three_task_stream.test_stream[1])), expected[1])
    fresh.save_tasks(tmp_path / "all.tasks")  # a task file from stored tasks holds their masks
    again = PiggybackModel(backbone)
    again.load_tasks(tmp_path / "all.tasks")
    assert [torch.equal(a, b) for a, b in zip(_logits(again, three_task_stream), expected)] == [True] * 3


def test_avalanches_loop_gives_the_same_metrics_with_the_masks_on_disk(three_task_stream, tmp_path):
    """for exp in train_stream: train(exp); eval(test_stream), with periodic
    evaluation, and the whole-stream evaluation's rows for tasks not learned
    yet: the same metrics with a store (and a cache of one task) as without."""

    def run(store):
        torch.manual_seed(0)
        model = PiggybackModel(tiny_conv_net())
        if store:
            model.attach_task_store(tmp_path / "store", cache_budget_bytes=0)
        strategy = Piggyback(
            model=model,
            lr=1e-2,
            train_epochs=4,
            train_mb_size=16,
            eval_every=1,
            evaluator=default_evaluator(interactive=False),
        )
        metrics = []
        for experience in three_task_stream.train_stream:
            strategy.train(experience, eval_streams=[three_task_stream.test_stream])
            metrics.append(strategy.eval(three_task_stream.test_stream))
        return [
            {k: v for k, v in m.items() if isinstance(v, float) and "Time" not in k and "MB" not in k} for m in metrics
        ]

    stored, in_memory = run(True), run(False)
    assert TaskStore(tmp_path / "store").tasks == [0, 1, 2]
    accuracies = [v for k, v in stored[-1].items() if k.startswith("Top1_Acc_Exp/eval_phase/test_stream/")]
    # Tasks of 2, 3 and 4 classes (24 test samples each): each learned past chance.
    assert len(accuracies) == 3 and all(a > 1 / n for a, n in zip(accuracies, (2, 3, 4)))
    assert stored == in_memory


def test_tasks_frozen_after_attaching_are_appended(three_task_stream, tmp_path):
    torch.manual_seed(0)
    backbone = tiny_conv_net()
    model = PiggybackModel(backbone)
    model.attach_task_store(tmp_path / "store")
    strategy = Piggyback(model=model, mask_lr=1e-2, lr=1e-2, train_mb_size=16, train_epochs=2, evaluator=None)
    for experience in three_task_stream.train_stream:
        strategy.train(experience)
    store = TaskStore(tmp_path / "store")
    assert store.tasks == [0, 1, 2] and all(store.file_bytes(t) > 0 for t in range(3))
    expected = _logits(model, three_task_stream)
    fresh = PiggybackModel(backbone)
    fresh.attach_task_store(tmp_path / "store")
    assert [torch.equal(a, b) for a, b in zip(_logits(fresh, three_task_stream), expected)] == [True] * 3
    with pytest.raises(CheckpointError, match="keep their masks in a task store"):
        save_experience_checkpoint(strategy, tmp_path / "run.ckpt", next_experience=3)
    assert not (tmp_path / "run.ckpt").exists()


def _store_file(folder, task):
    """The path of ``task``'s file, as the store's manifest names it."""
    return folder / json.loads((folder / "store.json").read_text())["tasks"][str(task)]["file"]


def test_a_damaged_or_foreign_store_is_refused_and_the_model_is_unchanged(trained_piggyback, tmp_path):
    backbone, _, model = trained_piggyback
    model.attach_task_store(tmp_path / "store")
    store = tmp_path / "store"
    manifest = json.loads((store / "store.json").read_text())

    def refused(message, prepare):
        folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        for path in store.iterdir():
            (folder / path.name).write_bytes(path.read_bytes())
        prepare(folder)
        files = {p.name: p.read_bytes() for p in folder.iterdir()}
        target = PiggybackModel(backbone)
        target.add_task(7, classes=[0, 1])
        target.freeze_task(7)
        before = state_copy(target)
        with pytest.raises(TaskStoreError, match=message):
            target.attach_task_store(folder)
        assert same_state(target, before) and target.tasks == [7] and target.task_store is None
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == files  # the store is as it was

    refused(
        "does not match its recorded SHA-256",
        lambda f: _store_file(f, 1).write_bytes(_store_file(f, 1).read_bytes()[:-50]),
    )
    refused(
        "does not match its recorded SHA-256",
        lambda f: _store_file(f, 1).write_bytes(_store_file(f, 2).read_bytes()),
    )
    refused("No task file at", lambda f: _store_file(f, 2).unlink())
    refused("Cannot read task store", lambda f: (f / "store.json").write_text("{not json"))
    refused("is not a piggyback-avalanche task store", lambda f: (f / "store.json").write_text("[]"))
    refused("of version 9", lambda f: (f / "store.json").write_text(json.dumps({**manifest, "version": 9})))
    refused(
        "is malformed",
        lambda f: (f / "store.json").write_text(json.dumps({**manifest, "tasks": {"0": {"file": "../x"}}})),
    )
    refused(
        "learned on another backbone",
        lambda f: (f / "store.json").write_text(json.dumps({**manifest, "backbone_fingerprint": "0" * 64})),
    )

    def rewritten(folder, change):
        # The file's bytes and the manifest agree (and so does the file's own
        # checksum), but what it holds was changed: a crafted store.
        path = _store_file(folder, 1)
        payload = torch.load(path, weights_only=True)
        change(payload["tasks"][1])
        torch.save(resealed(payload), path)
        data = path.read_bytes()
        listed = json.loads((folder / "store.json").read_text())
        listed["tasks"]["1"].update(sha256=hashlib.sha256(data).hexdigest(), file_bytes=len(data))
        (folder / "store.json").write_text(json.dumps(listed))

    def corrupt_stream(entries):
        key = next(k for k, v in entries.items() if isinstance(v, dict) and v["stream"].numel())
        entries[key] = {**entries[key], "crc32": entries[key]["crc32"] + 1}

    refused("Task 1 in .* does not decode .*CRC-32 does not match", lambda f: rewritten(f, corrupt_stream))
    refused(
        "backbone.10.heads.1.weight: shape \\(3, 17\\), not \\(classes, 16\\)",
        lambda f: rewritten(f, lambda e: e.update({"backbone.10.heads.1.weight": torch.zeros(3, 17)})),
    )

    other = tiny_conv_net()  # another backbone: its fingerprint differs
    target = PiggybackModel(other)
    with pytest.raises(TaskStoreError, match="learned on another backbone"):
        target.attach_task_store(store)
    assert target.tasks == []
    clash = PiggybackModel(backbone)
    clash.add_task(1, classes=[0, 1])
    clash.freeze_task(1)
    with pytest.raises(TaskStoreError, match="Task label\\(s\\) \\[1\\] are in the model and in the task store"):
        clash.attach_task_store(store)
    with pytest.raises(TaskStoreError, match="is not a folder"):
        PiggybackModel(backbone).attach_task_store(store / "store.json")


KILLED_APPEND = """
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
from conftest import tiny_conv_net
from piggyback_avalanche import PiggybackModel
from piggyback_avalanche.task_aware.task_store import TaskStore
torch.manual_seed(0)
model = PiggybackModel(tiny_conv_net())
model.attach_task_store({store!r})
link = TaskStore._link_under_new_name
def link_and_die(self, temporary, task):
    if task == 3 and not {linked}:
        os.kill(os.getpid(), signal.SIGKILL)
    made = link(self, temporary, task)
    if task == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return made
TaskStore._link_under_new_name = link_and_die
for task in range(5):
    model.add_task(task, classes=[0, 1])
    model.freeze_task(task)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "linked",
    [
        True,  # task 3's file is written and linked under its name, the manifest not written yet
        False,  # task 3's temporary file is written, not linked yet
    ],
)
def test_a_process_killed_while_appending_loses_only_the_task_being_added(tmp_path, linked):
    store = tmp_path / "store"
    script = KILLED_APPEND.format(tests=os.path.dirname(__file__), store=str(store), linked=linked)
    user_file = store / ".notes.partial"
    store.mkdir()
    user_file.write_text("mine")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr
    assert TaskStore(store).tasks == [0, 1, 2]
    leftovers = sorted(p.name for p in store.iterdir() if p.name.endswith(".piggyback-partial"))
    assert len(leftovers) == 1  # task 3's temporary file
    torch.manual_seed(0)
    model = PiggybackModel(tiny_conv_net())
    assert model.attach_task_store(store) == [0, 1, 2]
    model.add_task(3, classes=[0, 1])  # the label is free again
    model.freeze_task(3)  # the append, under the store's lock, removes what the killed one left
    assert TaskStore(store).tasks == [0, 1, 2, 3]
    listed = {_store_file(store, t).name for t in range(4)}
    assert sorted(p.name for p in store.iterdir()) == sorted([*listed, "store.json", ".notes.partial"])
    assert user_file.read_text() == "mine"


def test_task_inference_over_stored_tasks_equals_it_in_memory(trained_piggyback, three_task_stream, tmp_path):
    backbone, _, model = trained_piggyback
    x = torch.cat([stacked_inputs(e) for e in three_task_stream.test_stream])
    expected = {stacked: model.task_outputs(x, [0, 1, 2], stacked=stacked) for stacked in (True, False)}
    model.attach_task_store(tmp_path / "store")
    fresh = PiggybackModel(backbone).eval()
    assert fresh.attach_task_store(tmp_path / "store", cache_budget_bytes=0) == [0, 1, 2]
    for stacked in (True, False):
        logits, features = fresh.task_outputs(x, [0, 1, 2], stacked=stacked)
        assert torch.equal(logits, expected[stacked][0]) and torch.equal(features, expected[stacked][1])


def test_stacked_groups_count_in_the_budget_and_overlapping_groups_are_dropped(trained_piggyback, three_task_stream):
    _, _, model = trained_piggyback
    cache = model.frozen_weight_cache
    x = stacked_inputs(three_task_stream.test_stream[0])
    layer = model.masked_layers["3"]
    model.task_outputs(x, [0, 1])
    stacked = cache.value("tasks:0,1", layer)
    assert stacked is not None and torch.equal(stacked[0][:8], layer.mask("0") * layer.weight)
    model.task_outputs(x, [0, 1])
    assert cache.value("tasks:0,1", layer) is stacked  # reused
    model.task_outputs(x, [1, 2])  # another grouping: the overlapping group goes
    assert cache.value("tasks:0,1", layer) is None and "tasks:1,2" in cache.tasks()
    cache.budget_bytes = 0
    assert cache.tasks() == ["tasks:1,2"] and cache.nbytes() == sum(
        sum(t.nbytes for t in cache.value("tasks:1,2", m) if t is not None) for m in model.masked_layers.values()
    )


def test_the_cache_keeps_recent_tasks_within_its_budget_and_never_recomputes_them(trained_piggyback, three_task_stream):
    _, _, model = trained_piggyback
    cache = model.frozen_weight_cache
    layer = model.masked_layers["3"]
    per_task = sum(m.weight.nbytes for m in model.masked_layers.values())
    inputs = [stacked_inputs(three_task_stream.test_stream[t]) for t in range(3)]
    with torch.no_grad():
        cache.budget_bytes = 0  # the last task only
        for task in (0, 1, 2):
            model(inputs[task], task)
        assert cache.tasks() == ["2"] and cache.nbytes() == per_task
        cache.budget_bytes = 2 * per_task
        for task in (0, 1, 0, 1):
            model(inputs[task], task)
        assert cache.tasks() == ["0", "1"] and cache.nbytes() == 2 * per_task
        weight = cache.value("0", layer)
        for task in (1, 0, 1, 0):  # alternating between cached tasks reuses their weights
            model(inputs[task], task)
        assert cache.value("0", layer) is weight
        model(inputs[2], 2)  # the least recently used task (1) makes room
        assert cache.tasks() == ["0", "2"] and cache.value("1", layer) is None
        mixed = torch.cat(inputs[:2])
        labels = torch.tensor([0] * len(inputs[0]) + [1] * len(inputs[1]))
        out = model(mixed, labels)
    assert torch.equal(out[: len(inputs[0]), :2], model(inputs[0], 0))
    with pytest.raises(ValueError, match="non-negative number of bytes"):
        cache.budget_bytes = -1
    assert FrozenWeightCache().budget_bytes == DEFAULT_BUDGET_BYTES == 256 * 2**20
    copy_ = __import__("copy").deepcopy(cache)
    assert isinstance(copy_, FrozenWeightCache) and copy_.tasks() == [] and copy_.budget_bytes == cache.budget_bytes


MEMORY_PROBE = """
import sys, torch
from torch import nn
from piggyback_avalanche import PiggybackModel
torch.manual_seed(0)
width, tasks, budget_tasks, stored = 1024, 24, 3, {stored}
backbone = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))
model = PiggybackModel(backbone).eval()
per_task = sum(layer.weight.nbytes for layer in model.masked_layers.values())
model.frozen_weight_cache.budget_bytes = budget_tasks * per_task if stored else 10**12
if stored:
    model.attach_task_store({store!r})
x = torch.randn(8, width)


def memory(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))


# Imports and the model itself take a varying amount of memory (shared
# libraries' pages among it): only what the tasks add is compared.
before = memory("VmRSS")
with torch.no_grad():
    for task in range(tasks):
        model.add_task(task, classes=[0, 1])
        for layer in model.masked_layers.values():  # a mask that is not all ones
            layer.scores[str(task)].uniform_(0, 1e-2)
        model.freeze_task(task)
        model(x, task)
    for task in range(tasks):
        model(x, task)
# The peak of this process's own memory (VmHWM; getrusage's ru_maxrss would
# also count the parent's memory at the fork that started it), above where it stood.
print(per_task, model.frozen_weight_cache.nbytes(), memory("VmHWM") - before)
"""


@pytest.mark.slow
def test_resident_memory_is_bounded_by_the_budget_with_a_store_and_grows_without(tmp_path):
    # glibc raises its mmap threshold as large blocks are freed, after which
    # freed weights stay in its heap: the peak then measured the allocator's
    # fragmentation (hundreds of MB, varying by machine), not what the tasks
    # hold. A fixed threshold gives every weight-sized block back when freed.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}

    def probe(stored):
        result = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE.format(stored=stored, store=str(tmp_path / "store"))],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        return [int(v) for v in result.stdout.split()]

    per_task, cached, bounded_growth = probe(True)
    assert cached == 3 * per_task  # the budget: three tasks' effective weights
    # The budget plus the task being added and its working tensors.
    assert bounded_growth < 10 * per_task, bounded_growth
    _, cached_all, unbounded_growth = probe(False)
    assert cached_all == 24 * per_task
    # Without a store and with an unbounded cache, memory holds every task's
    # weights; with the store it holds the budget's (3 of 24): at least 15
    # tasks' fewer, leaving room for the allocator's noise (a few MB).
    assert unbounded_growth - bounded_growth > 15 * per_task, (bounded_growth, unbounded_growth)


def _random_masks(model, task, zero_fraction=0.25):
    """Give ``task``'s scores a random mask, as if learned."""
    with torch.no_grad():
        for layer in model.masked_layers.values():
            scores = layer.scores[str(task)]
            scores.copy_(torch.where(torch.rand_like(scores) < zero_fraction, 0.0, 1e-2))


def test_a_torchvision_resnet_and_many_tasks_come_back_from_a_store(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    backbone = torchvision.models.resnet18(num_classes=4)
    model = PiggybackModel(backbone)
    model.attach_task_store(tmp_path / "resnet")
    x = torch.randn(2, 3, 32, 32)
    for task in range(2):
        model.add_task(task, classes=[0, 1, 2])
        _random_masks(model, task)
        model.train()(x, task)  # batch-norm statistics of its own
        model.freeze_task(task)
    model.eval()
    with torch.no_grad():
        expected = [model(x, task) for task in range(2)]
        fresh = PiggybackModel(backbone).eval()
        assert fresh.attach_task_store(tmp_path / "resnet") == [0, 1]
        assert [torch.equal(fresh(x, task), expected[task]) for task in range(2)] == [True, True]
        assert not torch.equal(expected[0], expected[1])

    # More tasks than one load takes: every one comes back.
    small = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    many = PiggybackModel(small)
    many.attach_task_store(tmp_path / "many", cache_budget_bytes=0)
    inputs = torch.randn(3, 6)
    for task in range(70):
        many.add_task(task, classes=[0, 1])
        _random_masks(many, task, zero_fraction=0.5)
        many.freeze_task(task)
    with torch.no_grad():
        expected = [many(inputs, task) for task in range(70)]
        again = PiggybackModel(small)
        assert again.attach_task_store(tmp_path / "many") == list(range(70))
        assert all(torch.equal(again(inputs, task), expected[task]) for task in range(70))
    assert again.stored_bytes() == many.stored_bytes()


def test_packnet_switches_between_cached_tasks_too():
    model = packnet_mlp_with_tasks(2).eval()
    layer = next(iter(model.packnet_layers.values()))
    x = torch.randn(3, 6)
    with torch.no_grad():
        first = [model(x, task) for task in range(2)]
        cached = model.frozen_weight_cache.value("0", layer)
        assert model.frozen_weight_cache.tasks() == ["0", "1"] and cached is not None
        again = [model(x, task) for task in (0, 1)]
    assert model.frozen_weight_cache.value("0", layer) is cached  # not recomputed on the way back
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and not torch.equal(first[0], first[1])
