"""What importing the package costs: seconds and modules loaded, each in a
fresh interpreter, for this checkout and, side by side in the same run, any
other checkouts given (an earlier commit, to measure a change).

    python benchmarks/import_time.py --repeats 5
    git worktree add /tmp/before <commit> && python benchmarks/import_time.py --trees . /tmp/before

Each statement runs ``--repeats`` times; the table gives the median. The
last column divides by the same tree's ``import torch``, which no import of
ours can avoid for training but a light one (the package, its checks) should
not need.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

STATEMENTS = {
    "import torch": "import torch",
    "import piggyback_avalanche": "import piggyback_avalanche",
    "import piggyback_avalanche.checks": "import piggyback_avalanche.checks",
    "from piggyback_avalanche import Piggyback": "from piggyback_avalanche import Piggyback",
    **{
        f"piggyback-bench {flags}": f"from piggyback_avalanche.app.command_line import main; main({flags.split()!r})"
        for flags in ("--help", "--epochs 0", "--stream nope")
    },
}
"""Each statement by the name the table shows. The command lines: its help,
a bad number and a bad name, each answered before any work."""

_PROBE = """
import contextlib, io, json, sys, time
start = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        exec({statement!r})
    except SystemExit:  # the command line's answer
        pass
print(json.dumps([time.perf_counter() - start, len(sys.modules)]))
"""


def measure(tree: Path, statement: str) -> tuple[float, int]:
    """Seconds and modules loaded by ``statement`` in a fresh interpreter
    that imports the package from ``tree``."""
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE.format(statement=statement)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tree,  # the tree's package comes first on sys.path
        timeout=600,
    )
    seconds, modules = json.loads(completed.stdout.strip().splitlines()[-1])
    return float(seconds), int(modules)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--trees", type=Path, nargs="+", default=[Path(".")], help="checkouts to measure")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows: list[str] = []
    trees = [tree.resolve() for tree in args.trees]
    timings: dict[tuple[Path, str], list[float]] = {(t, n): [] for t in trees for n in STATEMENTS}
    modules: dict[tuple[Path, str], int] = {}
    for _ in range(args.repeats):  # interleaved, so that load on the machine falls on every tree and statement alike
        for tree in trees:
            for name, statement in STATEMENTS.items():
                seconds, modules[tree, name] = measure(tree, statement)
                timings[tree, name].append(seconds)
    for tree, shown in zip(trees, args.trees):
        torch_seconds = statistics.median(timings[tree, "import torch"])
        for name in STATEMENTS:
            median = statistics.median(timings[tree, name])
            rows.append(
                f"| {shown} | `{name}` | {median:.2f} | {modules[tree, name]:,} | {median / torch_seconds:.2f}× |"
            )
    print("| tree | statement | seconds (median) | modules loaded | ÷ import torch |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
