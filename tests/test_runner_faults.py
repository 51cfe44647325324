"""kill -9 at several points of a real runner process, then the same
command again: every result present once, identical to an uninterrupted
run, and no temporary file left."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ARGS = [
    "--stream",
    "digits",
    "--backbone",
    "mlp",
    "--strategies",
    "piggyback",
    "naive",
    "--epochs",
    "1",
    "--seeds",
    "0",
    "1",
]
# Figures of a run; times and the epochs this process ran differ between a resumed run and a clean one.
COMPARED = ("accuracy", "accuracy_matrix", "average_accuracy", "average_forgetting", "bwt", "model_bytes",
            "networks", "model_bytes_per_experience")  # fmt: skip

pytestmark = pytest.mark.slow


def _run(out, *prefix):
    command = [sys.executable, *prefix] if prefix else [sys.executable, "-m", "piggyback_avalanche.app.command_line"]
    return subprocess.run([*command, *ARGS, "--out", str(out)], capture_output=True, text=True, timeout=600)


def _figures(out):
    results = json.loads((out / "results.json").read_text())
    return {name: [{k: run[k] for k in COMPARED} for run in r["runs"]] for name, r in results.items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    completed = _run(out)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return _figures(out)


@pytest.mark.parametrize(
    "point, nth",
    [
        ("train", 250),  # piggyback, seed 1, experience 1: resumes from its checkpoint
        ("checkpoint", 7),  # halfway through piggyback seed 1's second checkpoint
        # The runner's first write records the folder's settings (settings.json).
        ("result", 3),  # halfway through piggyback seed 1's result file
        ("result", 4),  # naive seed 0's result: naive is not checkpointed and starts over
    ],
)
def test_a_run_killed_at_any_point_completes_to_the_same_results(reference, tmp_path, point, nth):
    killed = _run(tmp_path, str(HERE / "kill_runner.py"), point, str(nth))
    assert killed.returncode == -9, killed.stderr[-2000:]
    again = _run(tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _figures(tmp_path) == reference
    saved = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "runs").rglob("*.json"))
    assert saved == [f"runs/{s}/seed{k}.json" for s in ("naive", "piggyback") for k in (0, 1)]
    assert not [p for p in tmp_path.rglob(".*")], "temporary files were left"
    assert not list((tmp_path / "checkpoints").rglob("*.ckpt"))
    if point in ("checkpoint", "result"):
        assert "partial file(s) that an interrupted run left" in again.stdout
