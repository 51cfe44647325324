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
    assert HEADLINE.quoted_block("readme") == HEADLINE.readme_block(QUOTED)
    assert set(QUOTED["strategies"]) == set(HEADLINE.NAMES)
    assert all(set(runs) == {"0", "1", "2"} for runs in QUOTED["strategies"].values())
    assert QUOTED["commit"] and QUOTED["versions"]["torch"]


def test_the_benchmarks_verdicts_are_those_regenerate_writes():
    block = HEADLINE.quoted_block("verdicts")
    assert block == HEADLINE.verdict_block(QUOTED)
    assert "93.5 ± 0.6 % against 91.1 ± 2.6 (+2.4 points)" in block  # the JSON's seeds, as the table shows them


def test_the_benchmarks_table_and_the_shipped_targets_hold_the_same_means():
    table = HEADLINE.quoted_block("table").splitlines()
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
    _, start, end = HEADLINE.BLOCKS["readme"]
    readme.write_text(f"before\n{start}\nold figures\n{end}\nafter\n")
    monkeypatch.setitem(HEADLINE.BLOCKS, "readme", (readme, start, end))
    HEADLINE._replace_between("readme", "new figures")
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


def _sections(markdown: str) -> list[tuple[str, str]]:
    """The ``##`` and ``###`` sections of ``markdown``: heading, body (code
    blocks included, so a ``#`` comment in one is not a heading)."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    in_code = False
    for line in markdown.splitlines():
        in_code ^= line.startswith("```")
        if not in_code and re.match(r"#{2,3} ", line):
            sections.append((line, []))
        else:
            sections[-1][1].append(line)
    return [(heading, "\n".join(body)) for heading, body in sections]


def test_every_benchmarks_section_with_figures_names_the_commit_they_were_recorded_at():
    import subprocess

    missing, unknown = [], []
    for heading, body in _sections((ROOT / "BENCHMARKS.md").read_text()):
        if not re.search(r"^\| .*\d.* \|$", body, re.M):
            continue  # no table of figures
        commits = re.findall(r"\bcommits? ((?:[0-9a-f]{7,40}(?:, | and )?)+)", body)
        if not commits:
            missing.append(heading)
        for commit in re.findall(r"[0-9a-f]{7,40}", " ".join(commits)):
            known = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True)
            if known.returncode != 0:
                unknown.append((heading, commit))
    assert missing == [], f"sections whose figures name no commit: {missing}"
    assert unknown == [], f"commits not in this repository's history: {unknown}"
