"""The headline figures quoted in the README, BENCHMARKS.md and the shipped
targets are those of ``benchmarks/headline.json``, which
``benchmarks/headline.py regenerate`` writes (CI's ``check`` reruns seed 0
against it)."""

import importlib.util
import json
import re
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _headline_module():
    spec = importlib.util.spec_from_file_location("headline", ROOT / "benchmarks" / "headline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HEADLINE = _headline_module()
QUOTED = json.loads((ROOT / "benchmarks" / "headline.json").read_text())


def test_the_readme_quotes_the_headline_figures_as_regenerate_writes_them():
    assert HEADLINE.quoted_block(ROOT / "README.md") == HEADLINE.readme_block(QUOTED)
    assert set(QUOTED["strategies"]) == set(HEADLINE.NAMES)
    assert all(set(runs) == {"0", "1", "2"} for runs in QUOTED["strategies"].values())
    assert QUOTED["commit"] and QUOTED["versions"]["torch"]


def test_the_benchmarks_table_and_the_shipped_targets_hold_the_same_means():
    table = HEADLINE.quoted_block(ROOT / "BENCHMARKS.md").splitlines()
    column = [c.strip() for c in table[0].split("|")].index("avg accuracy (%)")
    shown = {row.split("|")[1].strip(): row.split("|")[column].strip() for row in table[2:] if row.startswith("| ")}
    for name, runs in QUOTED["strategies"].items():
        mean = 100 * statistics.mean(seed["average_accuracy"] for seed in runs.values())
        assert shown[name].startswith(f"{mean:.1f} ± "), (name, shown[name])
    targets = {}
    for line in (ROOT / "piggyback_avalanche" / "app" / "targets.csv").read_text().splitlines():
        stream, backbone, strategy, metric, value = line.split(",")[:5]
        if (stream, backbone, metric) == ("mnist_transfer", "small_cnn", "average_accuracy") and strategy in shown:
            targets[strategy] = float(value)
    assert targets == HEADLINE.target_rows(QUOTED)


def test_regenerate_rewrites_only_what_lies_between_the_markers(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    start, end = HEADLINE._MARKERS[HEADLINE.README]
    readme.write_text(f"before\n{start}\nold figures\n{end}\nafter\n")
    monkeypatch.setitem(HEADLINE._MARKERS, readme, (start, end))
    HEADLINE._replace_between(readme, "new figures")
    assert readme.read_text() == f"before\n{start}\nnew figures\n{end}\nafter\n"
    assert re.search("old", readme.read_text()) is None


def test_check_names_each_figure_that_moved_beyond_its_tolerance():
    fresh = {name: {"0": dict(runs["0"])} for name, runs in QUOTED["strategies"].items()}
    assert HEADLINE.moved_figures(fresh, QUOTED) == []
    fresh["piggyback"]["0"]["average_accuracy"] += 0.0005  # 0.05 points: within
    assert HEADLINE.moved_figures(fresh, QUOTED) == []
    fresh["naive"]["0"]["accuracy"] = [a + 0.002 * (t == 3) for t, a in enumerate(fresh["naive"]["0"]["accuracy"])]
    fresh["packnet"]["0"]["networks"] += 0.01
    moved = HEADLINE.moved_figures(fresh, QUOTED)
    assert [line.split(":")[0] for line in moved] == ["packnet networks", "naive accuracy"]
