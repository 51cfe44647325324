import re
import subprocess
import sys
from pathlib import Path

from piggyback_avalanche.demo import format_table, run_demo

ROOT = Path(__file__).resolve().parents[1]


def test_readme_quickstart_is_the_example_file():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart.*?```python\n(.*?)```", readme, re.S).group(1)
    example = (ROOT / "examples" / "quickstart.py").read_text()
    code = example.split('"""', 2)[2].lstrip("\n")
    assert block == code


def test_quickstart_runs_offline_and_learns_every_task():
    completed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    accuracies = [float(a) for a in re.findall(r"task \d: accuracy ([0-9.]+)", completed.stdout)]
    assert len(accuracies) == 3 and min(accuracies) > 0.8, completed.stdout
    assert "frozen tasks: [0, 1, 2]" in completed.stdout


def test_demo_reports_zero_forgetting_for_piggyback_only():
    logged = []
    results = run_demo(epochs=2, tasks=("original", "rotated90"), log=logged.append)
    assert list(results) == ["piggyback", "fine-tuning", "individual networks"]
    assert results["piggyback"]["forgetting"] == [0.0, None]
    assert results["individual networks"]["forgetting"] == [0.0, None]
    assert results["fine-tuning"]["forgetting"][0] > 0.0
    for name in ("piggyback", "individual networks"):
        assert all(0.8 < a <= 1.0 for a in results[name]["accuracy"])
    assert results["fine-tuning"]["accuracy"][1] > 0.8
    table = format_table(results, ("original", "rotated90"))
    assert table.splitlines()[2].startswith("| piggyback | ")
    assert "| 0.0 |" in table.splitlines()[2]
    assert len(logged) == 3


def test_tensorboard_example_writes_one_run_per_strategy(tmp_path):
    import json

    completed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "compare_in_tensorboard.py"),
         "--log-dir", str(tmp_path), "--epochs", "1"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert f"tensorboard --logdir {tmp_path}" in completed.stdout
    for name in ("piggyback", "packnet", "naive"):
        assert list((tmp_path / name).glob("events.out.tfevents.*")), name
        rows = json.loads((tmp_path / f"{name}.json").read_text())
        forgetting = [r["value"] for r in rows if r["name"] == "StreamForgetting/eval_phase/test_stream"]
        assert len(forgetting) == 5
        if name != "naive":
            assert forgetting[-1] == 0.0
