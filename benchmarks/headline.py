"""The headline figures, from one command: the README's table, the first table
of BENCHMARKS.md, the README's plots and the shipped targets all come from
``benchmarks/headline.json``, which ``regenerate`` writes with the commit,
versions and machine it ran on; ``check`` reruns seed 0 and fails when the
code no longer produces what is quoted (CI runs it).

    python benchmarks/headline.py regenerate   # seeds 0-2 of the offline default (~10 min on 2 cores)
    python benchmarks/headline.py check        # seed 0 again (~3 min); exit 1 if a quoted figure moved

Both run ``piggyback-bench --config offline_default``, the README's main job.
"""

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = ROOT / "benchmarks" / "headline.json"
README = ROOT / "README.md"
BENCHMARKS = ROOT / "BENCHMARKS.md"
TARGETS = ROOT / "piggyback_avalanche" / "app" / "targets.csv"
PLOTS = ROOT / "docs" / "images" / "bench"
PRESET = "offline_default"
SEEDS = (0, 1, 2)
FIGURES = ("average_accuracy", "average_forgetting", "networks", "accuracy")
"""What is quoted of each run: the averages, the size and each task's accuracy."""

TOLERANCE = {"average_accuracy": 0.001, "average_forgetting": 0.001, "networks": 0.005, "accuracy": 0.001}
"""How far ``check`` lets a figure move (fractions; 0.001 is 0.1 points): a
rerun on the same machine kind and versions gives the same numbers; a
change of code or versions that moves one further fails."""

NAMES = {
    "piggyback": "piggyback",
    "packnet": "packnet",
    "individual": "individual networks",
    "classifier_only": "classifier only",
    "naive": "naive fine-tuning",
}
"""The strategies of the preset and the names the README's table gives them."""

BLOCKS = {
    "readme": (
        README,
        "<!-- headline figures: benchmarks/headline.py regenerate -->",
        "<!-- end of headline figures -->",
    ),
    "table": (
        BENCHMARKS,
        "<!-- headline table: benchmarks/headline.py regenerate -->",
        "<!-- end of headline table -->",
    ),
    "verdicts": (
        BENCHMARKS,
        "<!-- headline verdicts: benchmarks/headline.py regenerate -->",
        "<!-- end of headline verdicts -->",
    ),
}
"""Each generated block: the file it lies in, between its two markers."""


def run(seeds: tuple[int, ...], out: Path) -> dict[str, Any]:
    """Run the preset for ``seeds`` into ``out`` (a real ``piggyback-bench``
    process); its ``results.json``."""
    command = [sys.executable, "-m", "piggyback_avalanche.app.command_line", "--config", PRESET, "--out", str(out)]
    subprocess.run([*command, "--seeds", *map(str, seeds)], check=True, cwd=ROOT)
    return json.loads((out / "results.json").read_text())


def _provenance() -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=ROOT
    )
    return {
        "command": f"piggyback-bench --config {PRESET} --seeds {' '.join(map(str, SEEDS))}",
        "commit": commit.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else ""),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU",
        "versions": {p: version(p) for p in ("torch", "avalanche-lib", "numpy", "scikit-learn")}
        | {"python": platform.python_version()},
    }


def _per_seed(results: dict[str, Any], seeds: tuple[int, ...]) -> dict[str, dict[str, dict[str, Any]]]:
    return {
        name: {str(seed): {f: run[f] for f in FIGURES} for seed, run in zip(seeds, results[name]["runs"])}
        for name in NAMES
    }


def _mean_std(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def readme_block(headline: dict[str, Any]) -> str:
    """The README's headline paragraph and table, from ``headline``."""
    runs = headline["strategies"]

    def figure(name: str, key: str) -> list[float]:
        return [seed[key] for seed in runs[name].values()]

    def accuracy(name: str) -> str:
        return _mean_std(figure(name, "average_accuracy"))

    rows = [
        f"| {shown} | {accuracy(name)} | {_mean_std(figure(name, 'average_forgetting'))} | "
        f"{statistics.mean(figure(name, 'networks')):.2f} |"
        for name, shown in NAMES.items()
    ]
    return "\n".join(
        [
            f"On that stream ({len(SEEDS)} seeds), Piggyback learns five new tasks over a frozen pretrained "
            f"CNN with **{accuracy('piggyback')} %** average accuracy, against {accuracy('packnet')} for PackNet, "
            f"{accuracy('individual')} for five separately fine-tuned networks and {accuracy('classifier_only')} "
            "for training only the classifiers; it forgets exactly nothing (fine-tuning one network forgets "
            f"{_mean_std(figure('naive', 'average_forgetting'))} points) and stores "
            f"**{statistics.mean(figure('piggyback', 'networks')):.2f} networks** for all five tasks "
            f"(individual networks: {statistics.mean(figure('individual', 'networks')):.2f}).",
            "",
            "| strategy | avg accuracy (%) | avg forgetting (points) | size (× one network) |",
            "|---|---|---|---|",
            *rows,
            "",
            f"Made by `python benchmarks/headline.py regenerate` (`{headline['command']}`) at commit "
            f"{headline['commit']} on {headline['date']}: {headline['machine']}, "
            + ", ".join(f"{p} {v}" for p, v in headline["versions"].items())
            + "; [BENCHMARKS.md](BENCHMARKS.md) has every column. CI reruns seed 0 and fails if a figure moves.",
        ]
    )


def verdict_block(headline: dict[str, Any]) -> str:
    """BENCHMARKS.md's verdicts on the first issue's expectations, from ``headline``."""
    runs = headline["strategies"]

    def mean(name: str, key: str) -> float:
        return 100 * statistics.mean(seed[key] for seed in runs[name].values())

    def shown(name: str, key: str = "average_accuracy") -> str:
        return _mean_std([seed[key] for seed in runs[name].values()])

    def task_mean(name: str, task: int) -> float:
        return 100 * statistics.mean(seed["accuracy"][task] for seed in runs[name].values())

    piggyback, individual = mean("piggyback", "average_accuracy"), mean("individual", "average_accuracy")
    above = [other for other in ("classifier_only", "packnet") if piggyback > mean(other, "average_accuracy")]
    tasks = len(next(iter(runs["piggyback"].values()))["accuracy"])
    gaps = ", ".join(f"{task_mean('piggyback', t) - task_mean('packnet', t):+.1f}" for t in range(tasks))
    forgetting_zero = [name for name in runs if all(seed["average_forgetting"] == 0 for seed in runs[name].values())]
    within = "met" if piggyback >= individual - 1.5 else "not met"
    return "\n".join(
        [
            f"- **Piggyback within 1.5 points of individual networks** ({within}): {shown('piggyback')} % against "
            f"{shown('individual')} ({piggyback - individual:+.1f} points).",
            f"- **Piggyback above classifier-only and PackNet** "
            f"({'met' if len(above) == 2 else 'not met'}): classifier only {shown('classifier_only')}, "
            f"PackNet {shown('packnet')}.",
            f"- **Piggyback's lead over PackNet, task by task** (points, mean of the seeds): {gaps}. PackNet gives "
            "each task half of the weights still free, so its later tasks train fewer weights.",
            f"- **Forgetting exactly 0.0 on every seed**: {', '.join(forgetting_zero)}; fine-tuning (`naive`) "
            f"forgets {shown('naive', 'average_forgetting')} points.",
        ]
    )


def _replace_between(block: str, content: str) -> None:
    path, start, end = BLOCKS[block]
    text = path.read_text()
    pattern = re.compile(re.escape(start) + r"\n.*?\n" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path} lacks the markers {start!r} ... {end!r}")
    path.write_text(pattern.sub(lambda _: f"{start}\n{content}\n{end}", text))


def quoted_block(block: str) -> str:
    """What the file of ``block`` holds between its markers."""
    path, start, end = BLOCKS[block]
    return re.search(re.escape(start) + r"\n(.*?)\n" + re.escape(end), path.read_text(), re.S).group(1)


def target_rows(headline: dict[str, Any]) -> dict[str, float]:
    """The shipped targets' value of each strategy's average accuracy (%),
    one decimal, by strategy."""
    return {
        name: round(100 * statistics.mean(seed["average_accuracy"] for seed in runs.values()), 1)
        for name, runs in headline["strategies"].items()
    }


def _write_targets(headline: dict[str, Any]) -> None:
    values = target_rows(headline)
    with TARGETS.open(newline="") as file:  # as written: the ablations' rows end in \r\n
        lines = file.read().splitlines(keepends=True)
    for i, line in enumerate(lines):
        fields = line.split(",")
        if fields[:2] == ["mnist_transfer", "small_cnn"] and fields[2] in values and fields[3] == "average_accuracy":
            fields[4] = f"{values[fields[2]]:.1f}"
            lines[i] = ",".join(fields)
    with TARGETS.open("w", newline="") as file:
        file.write("".join(lines))


def regenerate() -> None:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        results = run(SEEDS, out)
        headline = _provenance() | {"strategies": _per_seed(results, SEEDS)}
        HEADLINE.write_text(json.dumps(headline, indent=1) + "\n")
        table = (out / "results.md").read_text().strip()
        _replace_between("readme", readme_block(headline))
        _replace_between("verdicts", verdict_block(headline))
        _replace_between(
            "table",
            f"{table}\n\nMade by `python benchmarks/headline.py regenerate` at commit {headline['commit']} on "
            f"{headline['date']} ({headline['machine']}); train times are of that run.",
        )
        _write_targets(headline)
        for plot in (
            "average_accuracy.png",
            "model_size.png",
            "accuracy_matrix_piggyback.png",
            "accuracy_matrix_naive.png",
        ):
            shutil.copyfile(out / "plots" / plot, PLOTS / plot)
    print(f"Wrote {HEADLINE.name}, the README's and BENCHMARKS.md's tables, the targets and the plots.")


def moved_figures(fresh: dict[str, dict[str, dict[str, Any]]], headline: dict[str, Any]) -> list[str]:
    """Each figure of the fresh seed-0 runs that moved beyond
    :data:`TOLERANCE` from what ``headline`` quotes, as a line naming it."""
    moved = []
    for name, seeds in fresh.items():
        for key, value in seeds["0"].items():
            quoted = headline["strategies"][name]["0"][key]
            pairs = zip(value, quoted) if isinstance(value, list) else [(value, quoted)]
            if any(abs(v - q) > TOLERANCE[key] for v, q in pairs):
                moved.append(f"{name} {key}: quoted {quoted}, now {value}")
    return moved


def check() -> int:
    """Rerun seed 0 and compare it with what ``headline.json`` quotes.

    :return: the exit status: 1 if a figure moved beyond :data:`TOLERANCE`.
    """
    headline = json.loads(HEADLINE.read_text())
    with tempfile.TemporaryDirectory() as folder:
        fresh = _per_seed(run((0,), Path(folder)), (0,))
    moved = moved_figures(fresh, headline)
    now = _provenance()["versions"]
    if moved:
        print("The code no longer produces the quoted headline figures (seed 0):\n  " + "\n  ".join(moved))
        if now != headline["versions"]:
            print(f"Versions differ: quoted with {headline['versions']}, now {now}.")
        print("If the change is meant, run `python benchmarks/headline.py regenerate` and commit what it writes.")
        return 1
    print(f"Seed 0 reproduces every quoted headline figure ({len(fresh)} strategies).")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("action", choices=["regenerate", "check"])
    args = parser.parse_args()
    if args.action == "regenerate":
        regenerate()
    else:
        raise SystemExit(check())


if __name__ == "__main__":
    main()
