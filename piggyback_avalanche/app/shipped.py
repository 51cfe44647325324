"""What the package ships for the runner, so that an installed
``piggyback-bench`` needs no clone: named presets (``presets/<name>.json``)
and the expected results (``targets.csv``)."""

import json
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["shipped_presets", "read_preset", "SHIPPED_TARGETS", "shipped_targets_path"]

SHIPPED_TARGETS = "shipped"
"""What ``--check-targets`` reads without a file name: the shipped targets."""


def _data() -> Any:
    return resources.files("piggyback_avalanche.app")


def shipped_presets() -> dict[str, dict[str, Any]]:
    """Every shipped preset by name, with its values."""
    files = sorted((f for f in _data().joinpath("presets").iterdir() if f.name.endswith(".json")), key=lambda f: f.name)
    return {f.name[: -len(".json")]: json.loads(f.read_text()) for f in files}


def read_preset(value: str) -> tuple[str, str]:
    """The text of a preset given as a file path or as a shipped name, with a
    label naming where it came from; a file that exists wins over a name.

    :raises ValueError: for neither, listing the shipped names.
    """
    path = Path(value)
    if path.is_file():
        return str(path), path.read_text()
    names = sorted(shipped_presets())
    if value in names:
        return f"{value} (shipped)", _data().joinpath("presets", f"{value}.json").read_text()
    raise ValueError(f"{value}: no such file, and no shipped preset of that name; shipped: {names}")


def shipped_targets_path() -> Path:
    """The shipped targets file on disk (the package is installed as files)."""
    return Path(str(_data().joinpath("targets.csv")))
