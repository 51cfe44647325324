"""Task stores, task files, checkpoints and the runner's folders lose
nothing under concurrent or careless use: concurrent writers (real
processes), attaches during appends, folders holding the user's own files,
damaged or crafted files of every kind, small files that declare huge
tensors, writes that fail on a full disk, planted symbolic links, and odd
values, each refused with a clear error and nothing changed."""

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import QUICK_RUN, resealed, same_state, state_copy, tiny_conv_net
from labelled_tasks import add_task, backbone, with_tasks

from piggyback_avalanche import PiggybackModel
from piggyback_avalanche.app.command_line import main
from piggyback_avalanche.app.runner import run_benchmark
from piggyback_avalanche.task_aware.entropy_coding import encode_codes
from piggyback_avalanche.task_aware.task_files import TaskFileError
from piggyback_avalanche.task_aware.task_store import TaskStore, TaskStoreError
from piggyback_avalanche.training.checkpoints import CheckpointError, load_experience_checkpoint

HERE = os.path.dirname(__file__)


def _expected_logits(tasks, x):
    model = with_tasks(tasks).eval()
    with torch.no_grad():
        return {task: model(x, task) for task in tasks}


def _attached(path, **kwargs):
    model = PiggybackModel(backbone())
    added = model.attach_task_store(path, **kwargs)
    return model.eval(), added


def _appender(store, first, count):
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "labelled_tasks.py"), str(store), str(first), str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- 1. concurrent appends -----------------------------------------------------


@pytest.mark.slow
def test_two_processes_appending_to_one_store_lose_no_task(tmp_path):
    store = tmp_path / "store"
    writers = [_appender(store, 0, 15), _appender(store, 100, 15)]
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0 and out == "done\n", err
    tasks = [*range(15), *range(100, 115)]
    assert TaskStore(store).tasks == tasks
    model, added = _attached(store, cache_budget_bytes=0)
    assert added == tasks
    x = torch.randn(4, 6)
    expected = _expected_logits(tasks, x)
    with torch.no_grad():
        assert all(torch.equal(model(x, t), expected[t]) for t in tasks)
    listed = {entry["file"] for entry in json.loads((store / "store.json").read_text())["tasks"].values()}
    assert sorted(p.name for p in store.iterdir()) == sorted([*listed, "store.json"])  # nothing else, nothing lost


def test_two_models_of_one_process_appending_in_turn_keep_both_sets(tmp_path):
    store = tmp_path / "store"
    first, second = PiggybackModel(backbone()), PiggybackModel(backbone())
    first.attach_task_store(store)
    second.attach_task_store(store)
    for task in range(5):
        add_task(first, task)
        add_task(second, 50 + task)
    tasks = [*range(5), *range(50, 55)]
    assert TaskStore(store).tasks == tasks
    x = torch.randn(4, 6)
    expected = _expected_logits(tasks, x)
    with torch.no_grad():  # both writers still read their own tasks
        assert all(torch.equal(first.eval()(x, t), expected[t]) for t in range(5))
        assert all(torch.equal(second.eval()(x, t), expected[t]) for t in range(50, 55))
    _model, added = _attached(store)
    assert added == tasks
    with pytest.raises(TaskStoreError, match="already holds task\\(s\\) \\[3\\]; a stored task never changes"):
        third = PiggybackModel(backbone())
        third.attach_task_store(tmp_path / "elsewhere")
        add_task(third, 3)
        TaskStore(store).append(third, 3)
    assert TaskStore(store).tasks == tasks


# --- 2. attaching while another process appends --------------------------------------


@pytest.mark.slow
def test_attaching_while_another_process_appends_sees_whole_tasks_and_harms_none(tmp_path):
    store = tmp_path / "store"
    x = torch.randn(4, 6)
    expected = _expected_logits(range(60), x)
    writer = _appender(store, 0, 60)
    seen = []
    while writer.poll() is None:
        if (store / "store.json").exists():
            model, added = _attached(store, cache_budget_bytes=0)
            with torch.no_grad():
                assert all(torch.equal(model(x, t), expected[t]) for t in added)
            assert added == list(range(len(added)))
            seen.append(len(added))
    out, err = writer.communicate()
    assert writer.returncode == 0 and out == "done\n", err
    assert len(seen) >= 2 and seen == sorted(seen)  # attached several times, midway
    model, added = _attached(store)
    assert added == list(range(60))


# --- 3. the user's own files ------------------------------------------------------


def test_a_store_in_a_folder_of_the_users_files_leaves_them_alone(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    source = PiggybackModel(backbone())
    for task in range(2):
        add_task(source, task)
        source.save_task(folder / f"task-{task}.tasks", task)  # the natural names
    (folder / ".notes.partial").write_text("notes")
    (folder / ".task.abc.piggyback-partial.txt").write_text("also mine")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    model = PiggybackModel(backbone())
    assert model.attach_task_store(folder) == []
    for task in range(2):
        add_task(model, task)  # the same labels as the user's files
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert {k: after[k] for k in before} == before  # every file of the user's, byte for byte
    assert TaskStore(folder).tasks == [0, 1]

    # An entry removed from the manifest by hand: the next attach reads the
    # rest and deletes nothing.
    manifest = json.loads((folder / "store.json").read_text())
    dropped = manifest["tasks"].pop("1")["file"]
    (folder / "store.json").write_text(json.dumps(manifest))
    _again, added = _attached(folder)
    assert added == [0] and (folder / dropped).exists()
    # The model attached before the edit refuses to write over it.
    with pytest.raises(TaskStoreError, match="no longer lists task\\(s\\) \\[1\\] as they were: it was edited"):
        add_task(model, 2)
    assert json.loads((folder / "store.json").read_text()) == manifest


def test_the_runner_removes_only_its_own_leftovers_in_its_own_folders(tmp_path, capsys):
    (tmp_path / "sub").mkdir()
    video = tmp_path / "sub" / ".video.mkv.partial"
    video.write_text("a user's download")
    own = tmp_path / "runs" / "classifier_only" / ".seed0.json.abcd1234.piggyback-partial"
    own.parent.mkdir(parents=True)
    own.write_text('{"key": ')
    assert main([*QUICK_RUN, "--out", str(tmp_path)]) == 0
    assert video.read_text() == "a user's download" and not own.exists()
    assert "removed 1 partial file(s)" in capsys.readouterr().out


# --- 4. integrity of every tensor ---------------------------------------------------


@pytest.fixture
def task_file(tmp_path):
    model = PiggybackModel(backbone())
    for task in range(2):
        add_task(model, task)
    path = tmp_path / "two.tasks"
    model.save_tasks(path)
    return path


def _flip_bit(data, position):
    data = bytearray(data)
    data[position // 8] ^= 1 << (position % 8)
    return bytes(data)


def test_every_single_bit_flip_of_a_task_file_is_refused_or_changes_nothing(task_file, tmp_path):
    x = torch.randn(5, 6)
    expected = _expected_logits([0, 1], x)
    data = task_file.read_bytes()
    flips = random.Random(0).sample(range(len(data) * 8), 300)
    refused = 0
    for position in flips:
        damaged = tmp_path / "damaged.tasks"
        damaged.write_bytes(_flip_bit(data, position))
        model = PiggybackModel(backbone())
        try:
            model.load_tasks(damaged)
        except TaskFileError:
            refused += 1
            assert model.tasks == []
            continue
        with torch.no_grad():
            assert all(torch.equal(model.eval()(x, t), expected[t]) for t in (0, 1)), position
    # About half of a small file is the zip format's headers and alignment padding, where a flip changes no content.
    assert refused > 100


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("backbone.2.heads.1.weight", float("nan"), "heads.1.weight: values that are not finite"),
        ("backbone.2.heads.1.bias", float("inf"), "heads.1.bias: values that are not finite"),
    ],
)
def test_crafted_non_finite_tensors_are_refused(task_file, tmp_path, key, value, message):
    payload = torch.load(task_file, weights_only=True)
    payload["tasks"][1][key] = torch.full_like(payload["tasks"][1][key], value)
    torch.save(payload, tmp_path / "edited.tasks")
    with pytest.raises(TaskFileError, match="does not match its checksum: it is corrupt or was edited"):
        PiggybackModel(backbone()).load_tasks(tmp_path / "edited.tasks")
    torch.save(resealed(payload), tmp_path / "crafted.tasks")
    model = PiggybackModel(backbone())
    with pytest.raises(TaskFileError, match=message):
        model.load_tasks(tmp_path / "crafted.tasks")
    assert model.tasks == []


def test_a_negative_running_variance_is_refused(tmp_path):
    torch.manual_seed(0)
    network = tiny_conv_net()
    model = PiggybackModel(network)
    model.add_task(0, classes=[0, 1])
    model.freeze_task(0)
    model.save_task(tmp_path / "one.tasks", 0)
    payload = torch.load(tmp_path / "one.tasks", weights_only=True)
    payload["tasks"][0]["backbone.1.tasks.0.running_var"][2] = -1.0
    torch.save(resealed(payload), tmp_path / "crafted.tasks")
    fresh = PiggybackModel(network)
    with pytest.raises(TaskFileError, match=r"backbone.1.tasks.0.running_var: negative values"):
        fresh.load_tasks(tmp_path / "crafted.tasks")


def test_a_task_that_diverged_is_never_written(tmp_path):
    model = PiggybackModel(backbone())
    add_task(model, 0)
    with torch.no_grad():
        model.heads.head("0").weight[0, 0] = float("nan")
    with pytest.raises(TaskFileError, match=r"Task 0 of this model holds .*heads.0.weight: values that are not finite"):
        model.save_task(tmp_path / "one.tasks", 0)
    assert not (tmp_path / "one.tasks").exists()


def _checkpointed(tmp_path):
    from conftest import synthetic_tasks

    from piggyback_avalanche import Piggyback
    from piggyback_avalanche.benchmarks.streams import tensor_task_stream
    from piggyback_avalanche.evaluation import default_evaluator
    from piggyback_avalanche.training.checkpoints import save_experience_checkpoint

    def strategy():
        torch.manual_seed(0)
        return Piggyback(
            model=PiggybackModel(tiny_conv_net()),
            train_epochs=1,
            train_mb_size=16,
            evaluator=default_evaluator(interactive=False),
        )

    trained = strategy()
    trained.train(tensor_task_stream(synthetic_tasks([[0, 1]])).train_stream[0])
    path = tmp_path / "run.ckpt"
    save_experience_checkpoint(trained, path, next_experience=1)
    return path, strategy


def test_bit_flips_in_a_checkpoint_are_refused_or_change_nothing_and_bad_generators_change_nothing(tmp_path):
    path, strategy = _checkpointed(tmp_path)
    reference = strategy()
    assert load_experience_checkpoint(reference, path) == 1
    expected = state_copy(reference.model)
    data = path.read_bytes()
    refused = 0
    for position in random.Random(1).sample(range(len(data) * 8), 60):
        (tmp_path / "flipped.ckpt").write_bytes(_flip_bit(data, position))
        target = strategy()
        try:
            load_experience_checkpoint(target, tmp_path / "flipped.ckpt")
        except CheckpointError:
            refused += 1
            continue
        assert same_state(target.model, expected), position
    assert refused > 45

    state = torch.load(path, weights_only=True)
    state["rng"]["numpy"][1] = "not keys"  # a malformed generator state (checksum made anew)
    torch.save(resealed(state), tmp_path / "rng.ckpt")
    target = strategy()
    before, generator = state_copy(target.model), torch.get_rng_state()
    with pytest.raises(CheckpointError, match="numpy's generator state is malformed"):
        load_experience_checkpoint(target, tmp_path / "rng.ckpt")
    assert same_state(target.model, before) and torch.equal(torch.get_rng_state(), generator)

    state = torch.load(path, weights_only=True)
    key = next(k for k, v in state["model_state"].items() if isinstance(v, torch.Tensor) and v.is_floating_point())
    state["model_state"][key] = torch.full_like(state["model_state"][key], float("nan"))
    torch.save(resealed(state), tmp_path / "nan.ckpt")
    with pytest.raises(CheckpointError, match="holds values that are not finite"):
        load_experience_checkpoint(strategy(), tmp_path / "nan.ckpt")


@pytest.mark.slow
def test_a_damaged_pretrained_cache_is_pretrained_again_and_settings_key_it(tmp_path):
    from piggyback_avalanche.app.pretrained_cache import pretrained_backbone
    from piggyback_avalanche.benchmarks.offline import mnist_transfer_stream

    source, _ = mnist_transfer_stream(seed=0)
    logged = []
    pretraining = {"epochs": 1, "lr": 1e-3, "mb_size": 128, "device": "cpu"}

    def backbone_with(**changes):
        return pretrained_backbone(
            "mlp",
            "mnist_transfer",
            source,
            (1, 16, 16),
            pretrained=False,
            seed=0,
            cache_dir=tmp_path,
            pretraining={**pretraining, **changes},
            log=logged.append,
        ).state_dict()

    first = backbone_with()
    (cached,) = tmp_path.glob("*.pt")
    assert all(torch.equal(v, backbone_with()[k]) for k, v in first.items())  # from the cache
    assert len(logged) == 1
    other_rate, other_batch = backbone_with(lr=3e-3), backbone_with(mb_size=64)
    assert len(list(tmp_path.glob("*.pt"))) == 3 and len(logged) == 3  # each pretrained for its settings
    assert not torch.equal(other_rate["1.weight"], first["1.weight"])
    assert not torch.equal(other_batch["1.weight"], first["1.weight"])

    payload = torch.load(cached, weights_only=True)
    payload["state_dict"]["1.weight"] = torch.full_like(payload["state_dict"]["1.weight"], float("nan"))
    for damaged, reason in ((payload, "does not match its checksum"), (resealed(payload), "not finite")):
        torch.save(damaged, cached)
        logged.clear()
        again = backbone_with()
        assert reason in logged[0] and logged[0].endswith("pretraining again") and len(logged) == 2
        assert all(torch.equal(v, again[k]) for k, v in first.items())  # what pretraining makes


# --- 6. small files that declare huge tensors -------------------------------------------

HUGE_DECLARATIONS = """
import resource, sys, torch
sys.path.insert(0, {tests!r})
from conftest import tiny_conv_net
from piggyback_avalanche import PiggybackModel
from piggyback_avalanche.task_aware.task_files import TaskFileError
torch.manual_seed(0)
model = PiggybackModel(tiny_conv_net())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    model.load_tasks({path!r})
except TaskFileError as error:
    print(str(error))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.fixture
def tiny_task_file(tmp_path):
    torch.manual_seed(0)
    model = PiggybackModel(tiny_conv_net())
    model.add_task(0, classes=[0, 1])
    model.freeze_task(0)
    model.save_task(tmp_path / "one.tasks", 0)
    return torch.load(tmp_path / "one.tasks", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    "craft, message",
    [
        (
            # A coded mask that declares 67 M weights (268 MB as floats), with valid counts and CRC.
            lambda entries: entries.update(
                {
                    "backbone.0.packed_masks.0": encode_codes(
                        torch.zeros(2**26 // 8, dtype=torch.uint8), _layout(2**26, 2**12)
                    )
                }
            ),
            "backbone.0.packed_masks.0: coded codes laid out as CodeLayout\\(numel=67108864",
        ),
        (
            # A head saved as a view with stride 0: 10 KB on disk, 20 M classes when copied.
            lambda entries: entries.update({"backbone.10.heads.0.weight": torch.zeros(1, 16).expand(20_000_000, 16)}),
            "holds a tensor that is a view of fewer bytes than it declares",
        ),
        (
            # A mask coded per row, with 4 M rows to decode one by one.
            lambda entries: entries.update(
                {
                    "backbone.0.packed_masks.0": encode_codes(
                        torch.zeros(2**22 // 8, dtype=torch.uint8), _layout(2**22, 2**22)
                    )
                }
            ),
            "laid out as CodeLayout\\(numel=4194304, bits=1, rows=4194304\\)",
        ),
    ],
)
def test_small_files_that_declare_huge_tensors_are_refused_before_allocating(tiny_task_file, tmp_path, craft, message):
    craft(tiny_task_file["tasks"][0])
    path = tmp_path / "crafted.tasks"
    torch.save(resealed(tiny_task_file), path)
    assert path.stat().st_size < 2_000_000
    script = HUGE_DECLARATIONS.format(tests=HERE, path=str(path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    refusal, grown_mb = result.stdout.strip().rsplit("\n", 1)
    assert __import__("re").search(message, refusal), refusal
    assert int(grown_mb) < 32, grown_mb  # megabytes: less than the 64 MB one unpacked byte per weight takes


def _layout(numel, rows):
    from piggyback_avalanche.task_aware.entropy_coding import CodeLayout

    return CodeLayout(numel=numel, bits=1, rows=rows)


def test_a_checkpoint_declaring_more_codes_than_the_model_holds_is_refused(tmp_path):
    path, strategy = _checkpointed(tmp_path)
    state = torch.load(path, weights_only=True)
    state["model_state"]["backbone.0.packed_masks.0"] = encode_codes(
        torch.zeros(2**24 // 8, dtype=torch.uint8), _layout(2**24, 2**12)
    )
    torch.save(resealed(state), tmp_path / "crafted.ckpt")
    with pytest.raises(CheckpointError, match="declares 16777216 codes in 4096 rows, more than the model's largest"):
        load_experience_checkpoint(strategy(), tmp_path / "crafted.ckpt")


# --- 7. nothing half-changed ------------------------------------------------------

ATTACH_ON_A_FULL_DISK = (
    f"import sys; sys.path.insert(0, {HERE!r})"
    + """
import json, torch
from labelled_tasks import add_task, backbone
from piggyback_avalanche import PiggybackModel
from piggyback_avalanche.task_aware.task_store import TaskStoreError
model = PiggybackModel(backbone())
add_task(model, 7)
state = {k: v.clone() for k, v in model.state_dict().items()}
try:
    model.attach_task_store(sys.argv[1])
    print(json.dumps({"error": None}))
except TaskStoreError as error:
    now = model.state_dict()
    unchanged = now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)
    print(json.dumps({"error": str(error), "tasks": model.tasks, "attached": model.task_store is not None,
                      "unchanged": unchanged}))
"""
)


def _file_size_limit(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_attaching_on_a_full_disk_changes_neither_the_model_nor_the_store(tmp_path):
    store = tmp_path / "store"
    writer = _appender(store, 0, 3)
    assert writer.communicate(timeout=300)[0] == "done\n"
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    result = subprocess.run(
        [sys.executable, "-c", ATTACH_ON_A_FULL_DISK, str(store)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_file_size_limit(1000),  # smaller than one task file
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert "Cannot append task(s) [7]" in outcome["error"] and "the store is as it was" in outcome["error"]
    assert outcome["tasks"] == [7] and not outcome["attached"] and outcome["unchanged"]
    assert {p.name: p.read_bytes() for p in store.iterdir()} == before


def test_a_store_removed_while_attached_is_not_made_again(tmp_path):
    import shutil

    store = tmp_path / "store"
    model = PiggybackModel(backbone())
    model.attach_task_store(store)
    add_task(model, 0)
    shutil.rmtree(store)
    with pytest.raises(TaskStoreError, match=r"is gone .*it is not made again"):
        add_task(model, 1)
    assert not store.exists()
    assert model.frozen_tasks == [0, 1]  # the task stays whole in memory
    model.save_task(tmp_path / "kept.tasks", 1)
    assert PiggybackModel(backbone()).load_tasks(tmp_path / "kept.tasks") == [1]


# --- 9. symbolic links planted in the store --------------------------------------------


def test_links_planted_in_a_store_are_never_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    store = tmp_path / "store"
    store.mkdir()
    (store / "task-0.tasks").symlink_to(victim)  # the name older stores gave task 0
    model = PiggybackModel(backbone())
    model.attach_task_store(store)
    add_task(model, 0)
    assert victim.read_text() == "precious" and (store / "task-0.tasks").is_symlink()
    assert TaskStore(store).tasks == [0]

    (store / "store.json").unlink()
    (store / "store.json").symlink_to(victim)
    with pytest.raises(
        TaskStoreError, match=r"store.json is a symbolic link; a task store manifest there is never read"
    ):
        PiggybackModel(backbone()).attach_task_store(store)
    assert victim.read_text() == "precious"


# --- 10. errors of the documented types ----------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p.update(tasks=[1, 2]), "holds no tasks"),
        (lambda p: p.update(tasks={"1": {}}), "holds a task labelled '1'"),
        (lambda p: p.update(tasks={1: [torch.zeros(1)]}), "holds task 1 as something other than tensors by key"),
        (lambda p: p.update(tasks={1: {"x": "not a tensor"}}), "holds task 1 as something other than tensors"),
        (lambda p: p.pop("settings"), "holds no settings"),
        (lambda p: p.update(backbone_fingerprint=None), "holds no backbone fingerprint"),
        (lambda p: p.update(version=True), "of version True"),
    ],
)
def test_malformed_payloads_are_refused_as_task_file_errors(task_file, tmp_path, change, message):
    payload = torch.load(task_file, weights_only=True)
    change(payload)
    torch.save(resealed(payload), tmp_path / "malformed.tasks")
    with pytest.raises(TaskFileError, match=message):
        PiggybackModel(backbone()).load_tasks(tmp_path / "malformed.tasks")


def test_paths_that_are_no_task_file_are_refused_by_name(task_file, tmp_path):
    model = PiggybackModel(backbone())
    with pytest.raises(TaskFileError, match="is a folder, not a task file"):
        model.load_tasks(tmp_path)
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(TaskFileError, match="is a named pipe, not a task file"):
        model.load_tasks(tmp_path / "pipe")
    long_name = tmp_path / ("t" * 249 + ".tasks")  # the temporary file's name must still fit
    source = PiggybackModel(backbone())
    add_task(source, 0)
    source.save_task(long_name, 0)
    assert model.load_tasks(long_name) == [0]


def test_an_unreadable_file_is_refused_by_name(task_file, tmp_path):
    # Root reads anything: the read happens in a child process that gave up root.
    os.chmod(task_file, 0o600)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read)
        try:
            if os.geteuid() == 0:
                os.setuid(65534)
            try:
                from piggyback_avalanche.files import read_bytes

                read_bytes(task_file, error=TaskFileError, what="task file")
                message = "read"
            except TaskFileError as error:
                message = str(error)
            os.write(write, message.encode())
        finally:
            os._exit(0)
    os.close(write)
    message = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        chunk = os.read(read, 4096)
        if not chunk:
            break
        message += chunk
    os.waitpid(child, 0)
    assert f"Cannot read the task file {task_file}: permission denied" in message.decode()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "-1"], "--seeds \\[-1\\]: a seed is a non-negative int"),
        (["--device", "meta"], "--device: meta: runs train on cpu, cuda, mps, not meta; use --device cpu"),
        (
            ["--strategies", "piggyback[device=cuda:7]"],
            "--strategies piggyback\\[device=cuda:7\\]: cuda:7: this machine has \\d+ CUDA device",
        ),
        (
            ["--strategies", "piggyback[mask_init=/../../x]"],
            "a strategy's settings name its folders, so they hold no '/'",
        ),
    ],
)
def test_odd_runner_values_are_refused_before_any_work(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_an_out_folder_below_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main([*QUICK_RUN, "--out", str(tmp_path / "file.txt" / "sub")])
    assert "lies below" in capsys.readouterr().err and (tmp_path / "file.txt").read_text() == "mine"


# --- 8. one configuration per output folder, one runner at a time ------------------------------


def test_reusing_out_with_other_settings_is_refused_and_a_second_runner_waits_for_none(tmp_path, capsys):
    assert main([*QUICK_RUN, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        main([*QUICK_RUN, "--mb-size", "16", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "holds runs of other settings (config.train_mb_size: 32 there, 16 now)" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert main([*QUICK_RUN, "--seeds", "0", "1", "--out", str(tmp_path)]) == 0  # more seeds: the same settings

    from piggyback_avalanche.files import FolderLock

    with FolderLock(tmp_path, what="output folder", wait_seconds=0):  # as another runner would hold it
        with pytest.raises(ValueError, match="Another process is writing to the output folder"):
            run_benchmark(
                stream="digits",
                backbone="mlp",
                strategies=["classifier_only"],
                seeds=[0],
                out_dir=tmp_path,
                config={"train_epochs": 1, "train_mb_size": 64},
            )
