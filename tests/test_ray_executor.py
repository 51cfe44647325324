"""The runner's grid on a real Ray cluster on this machine: a local
instance, and a head node plus a second node joined by address (``ray
start``); results equal to the serial runner's, a run that raises reported
while the others finish, a worker killed with -9 retried by Ray and resumed
from its last experience checkpoint."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra: pip install 'piggyback-avalanche[ray]'")

pytestmark = [pytest.mark.slow, pytest.mark.ray]

RAY = str(Path(sys.executable).with_name("ray"))
GRID = ["--stream", "digits", "--backbone", "mlp", "--strategies", "piggyback", "naive", "--seeds", "0", "1"]
# A run's figures; times and the epochs a process ran differ between runs that are equal otherwise.
COMPARED = ("accuracy", "accuracy_matrix", "average_accuracy", "average_forgetting", "bwt", "model_bytes",
            "networks", "model_bytes_per_experience", "mask_zeros")  # fmt: skip


def _bench(*args, env=None):
    """A real piggyback-bench process: its exit status and what it printed (stdout and stderr)."""
    command = [sys.executable, "-m", "piggyback_avalanche.app.command_line", *args]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    return completed.returncode, completed.stdout + completed.stderr


def _figures(out):
    results = json.loads((out / "results.json").read_text())
    return {name: [{k: run[k] for k in COMPARED} for run in r["runs"]] for name, r in results.items()}


def _files(out):
    return sorted(
        str(p.relative_to(out).parent if "tfevents" in p.name else p.relative_to(out))
        for p in out.rglob("*")
        if p.is_file()
    )


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The grid run serially, one torch thread (what each Ray task gets)."""
    out = tmp_path_factory.mktemp("serial")
    status, printed = _bench(*GRID, "--epochs", "1", "--out", str(out), env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert status == 0, printed[-3000:]
    return out


def test_a_local_ray_instance_reports_a_failing_run_then_resumes_to_the_serial_results_and_files(serial, tmp_path):
    out = tmp_path / "ray"
    out.mkdir()
    # A file where naive's TensorBoard folder must go: naive's runs fail on the worker, piggyback's do not.
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "naive").write_text("not a folder")
    status, printed = _bench(*GRID, "--epochs", "1", "--out", str(out), "--executor", "ray")
    assert status == 1, printed[-3000:]
    assert re.search(r"Ray: a local instance, 1 node\(s\), \d+ CPUs, 0 GPUs; \d+ job\(s\) at a time", printed)
    assert "2 run(s) failed: naive, seed 0, naive, seed 1" in printed
    # Each failure's traceback, from the worker where it ran, without Ray's terminal colours.
    assert printed.count("NotADirectoryError: [Errno 20] Not a directory") == 2
    assert "in execute_run\n    return train_and_evaluate(" in printed and "\x1b[" not in printed
    assert sorted(p.name for p in (out / "runs" / "piggyback").iterdir()) == ["seed0.json", "seed1.json"]
    assert not (out / "runs" / "naive").exists() and not (out / "results.md").exists()
    # Fixed, the same command runs the failed runs and reuses the others.
    (out / "tensorboard" / "naive").unlink()
    status, printed = _bench(*GRID, "--epochs", "1", "--out", str(out), "--executor", "ray")
    assert status == 0, printed[-3000:]
    assert printed.count("already done") == 2  # piggyback's runs, not trained again
    assert _figures(out) == _figures(serial)  # bit-exact: the same floats
    assert _files(out) == _files(serial)  # results.md/.csv/.json, plots, TensorBoard runs, run files
    for path in (serial / "runs").rglob("*.json"):
        record, serial_record = (json.loads(p.read_text()) for p in (out / path.relative_to(serial), path))
        assert (record["key"], record["settings"]) == (serial_record["key"], serial_record["settings"])
    assert not list(out.glob("checkpoints/**/*.ckpt"))  # each run's result is its record


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Ray's token authentication, as a cluster started with `ray start` has it: every process that joins
# (a node, a driver) must say so and read the token (~/.ray/auth_token, which the head writes).
TOKEN_AUTH = {**os.environ, "RAY_AUTH_MODE": "token"}


@pytest.fixture
def two_node_cluster(tmp_path):
    """A head node on 127.0.0.1 and a second node joined by its address, one
    CPU each, as `ray start` makes them on any cluster."""
    address = f"127.0.0.1:{_free_port()}"
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    head = [RAY, "start", "--head", "--port", address.split(":")[1], "--include-dashboard", "false", *common]
    start = dict(check=True, capture_output=True, timeout=120, env=TOKEN_AUTH)
    try:
        subprocess.run(head, **start)
        subprocess.run([RAY, "start", "--address", address, *common], **start)
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


def _worker_pids():
    """The processes running a runner's Ray task (Ray titles them by the task's name)."""
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in listing.splitlines() if "ray::runs" in line]


def test_a_worker_killed_mid_run_on_a_two_node_cluster_is_retried_and_resumes(two_node_cluster, tmp_path):
    grid = ["--stream", "digits", "--backbone", "mlp", "--strategies", "piggyback", "--seeds", "0", "1"]
    settings = [*grid, "--epochs", "3"]
    reference = tmp_path / "serial"
    status, printed = _bench(*settings, "--out", str(reference), env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert status == 0, printed[-3000:]
    out = tmp_path / "ray"
    command = [sys.executable, "-m", "piggyback_avalanche.app.command_line", *settings, "--out", str(out)]
    driver = subprocess.Popen(
        [*command, "--executor", "ray", "--ray-address", two_node_cluster],
        env=TOKEN_AUTH,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Once seed 0's run has saved its first experience, kill -9 the worker running it.
    deadline = time.monotonic() + 300
    while not list(out.glob("checkpoints/piggyback/seed0-*.ckpt")) and time.monotonic() < deadline:
        assert driver.poll() is None, driver.communicate()[0][-3000:]
        time.sleep(0.05)
    assert list(out.glob("checkpoints/piggyback/seed0-*.ckpt")), "no checkpoint was written"
    killed = _worker_pids()
    assert len(killed) == 2  # both runs at once, one per node
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    printed, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, printed[-3000:]
    assert f"Ray: {two_node_cluster}, 2 node(s), 2 CPUs, 0 GPUs; 2 job(s) at a time" in printed
    assert _figures(out) == _figures(reference)  # nothing lost, nothing counted twice
    runs = {seed: json.loads((out / "runs" / "piggyback" / f"seed{seed}.json").read_text()) for seed in (0, 1)}
    # Seed 0 resumed after its first experience: its retry trained fewer than the 5 x 3 epochs.
    assert runs[0]["result"]["epochs"] < 15
    assert not set(_worker_pids()) & set(killed)


def test_tuning_runs_its_trials_on_ray_and_chooses_what_the_serial_runner_chooses(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    grid = ["--stream", "digits", "--backbone", "mlp", "--strategies", "classifier_only", "--epochs", "1"]
    tuning = ["--tune", "2", "--seeds", "0"]
    chosen = {}
    for executor, env in [("serial", {**os.environ, "OMP_NUM_THREADS": "1"}), ("ray", None)]:
        out = tmp_path / executor
        status, printed = _bench(*grid, *tuning, "--out", str(out), "--executor", executor, env=env)
        assert status == 0, printed[-3000:]
        assert ("Ray: a local instance" in printed) == (executor == "ray")
        chosen[executor] = json.loads((out / "results.json").read_text())["classifier_only"]["tuning"]
        storage = JournalStorage(JournalFileBackend(str(out / "tuning" / "trials.journal")))
        trials = optuna.load_study(study_name="classifier_only", storage=storage).trials
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    # The first trials are the sampler's seeded start-up draws, asked for two at a time on Ray: the same
    # settings, trained to the same accuracies, so the same choice.
    assert chosen["ray"] == chosen["serial"] and set(chosen["ray"]["chosen"]) == {"lr"}
