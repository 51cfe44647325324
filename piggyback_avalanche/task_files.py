"""Task files: finished Piggyback tasks exported on their own, to share one
backbone plus small mask files, as the paper's authors distributed theirs.

A task file holds, per task, exactly what the task adds to the backbone: its
bit-packed masks, its normalization layers and its head; plus the mask
settings, a format version and a fingerprint of the backbone tensors the
masks were learned on. Loading checks all of it against the model before
changing anything, and writing is atomic.
"""

import copy
import hashlib
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

import torch
from torch import Tensor, nn

from piggyback_avalanche.files import read_saved, write_atomically

__all__ = ["TASK_FILE_FORMAT", "TASK_FILE_VERSION", "TaskFileError", "backbone_fingerprint", "save_tasks", "load_tasks"]

TASK_FILE_FORMAT = "piggyback-avalanche task file"
TASK_FILE_VERSION = 1

PathLike = Union[str, Path]

# State-dict entries that belong to one task: "<module>.<container>.<task>[.<name>]".
_PER_TASK = re.compile(r"^(?P<module>.*)\.(?P<container>packed_masks|scores|tasks|heads)\.(?P<task>\d+)(?P<rest>(\..+)?)$")


class TaskFileError(ValueError):
    """A task file cannot be written, read, or applied to this model."""


def backbone_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's shared tensors (the backbone's weights, biases
    and normalization layers, everything that is not one task's), by name,
    dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if _PER_TASK.match(name):
            continue
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def _settings(model: Any) -> Dict[str, Any]:
    return {
        "model": type(model).__name__,
        "threshold_fn": model.threshold_fn,
        "threshold": model.threshold,
        "task_batchnorm": model.task_batchnorm,
    }


def _task_entries(state: Dict[str, Tensor], task: int) -> Dict[str, Tensor]:
    return {k: v for k, v in state.items() if (m := _PER_TASK.match(k)) and m["task"] == str(task)}


def save_tasks(model: Any, path: PathLike, tasks: Optional[Iterable[int]] = None) -> None:
    """Write ``tasks`` (all frozen tasks by default) of a Piggyback model to
    ``path``, atomically.

    :raises TaskFileError: for a task the model does not have, or one still
        being learned.
    """
    tasks = model.frozen_tasks if tasks is None else sorted(int(t) for t in tasks)
    unknown = [t for t in tasks if t not in model.tasks]
    learning = [t for t in tasks if t in model.learning_tasks]
    if unknown or learning or not tasks:
        raise TaskFileError(
            f"Cannot save tasks {list(tasks)}: "
            + (f"{unknown} unknown (the model has {model.tasks})" if unknown else "")
            + (f"{learning} still being learned; train() freezes a task when its experience ends" if learning else "")
            + ("no frozen task to save" if not tasks else "")
            + "."
        )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": TASK_FILE_FORMAT,
        "version": TASK_FILE_VERSION,
        "backbone_fingerprint": backbone_fingerprint(model),
        "settings": _settings(model),
        "tasks": {task: _task_entries(state, task) for task in tasks},
    }
    write_atomically(path, lambda file: torch.save(payload, file), binary=True)


def _read(path: Path) -> Dict[str, Any]:
    payload = read_saved(path, weights_only=True, error=TaskFileError, what="task file",
                         remedy="Copy it again from its source.")
    if not isinstance(payload, dict) or payload.get("format") != TASK_FILE_FORMAT:
        raise TaskFileError(f"{path} is not a {TASK_FILE_FORMAT}.")
    if payload.get("version") != TASK_FILE_VERSION:
        raise TaskFileError(
            f"{path} is a task file of version {payload.get('version')!r}; this version of "
            f"piggyback-avalanche reads version {TASK_FILE_VERSION}. Upgrade the package, or re-export the tasks."
        )
    return payload


def load_tasks(
    model: Any, path: PathLike, tasks: Optional[Iterable[int]] = None, *, rename: Optional[Dict[int, int]] = None
) -> List[int]:
    """Add tasks from a task file to a Piggyback model, as frozen tasks.

    Everything is checked first (file integrity and version, backbone
    fingerprint, mask settings, free task labels, tensor shapes); on any
    error the model is unchanged.

    :param tasks: the file's tasks to load; all by default.
    :param rename: ``{task in the file: task label in the model}``.
    :return: the task labels added to the model.
    :raises TaskFileError: naming what does not match and what to do.
    """
    path = Path(path)
    payload = _read(path)
    available = sorted(payload["tasks"])
    tasks = available if tasks is None else sorted(int(t) for t in tasks)
    missing = [t for t in tasks if t not in payload["tasks"]]
    if missing:
        raise TaskFileError(f"{path} has no task(s) {missing}; it holds tasks {available}.")
    if payload["backbone_fingerprint"] != backbone_fingerprint(model):
        raise TaskFileError(
            f"The tasks in {path} were learned on another backbone (fingerprint "
            f"{payload['backbone_fingerprint'][:12]}…, this model's is {backbone_fingerprint(model)[:12]}…): "
            "their masks would select the wrong weights. Build the model on the same pretrained "
            "backbone (same weights, same first task if it trained the backbone)."
        )
    ours = _settings(model)
    different = {k: (v, ours[k]) for k, v in payload["settings"].items() if ours.get(k) != v}
    if different:
        details = ", ".join(f"{k}: file {a!r}, model {b!r}" for k, (a, b) in different.items())
        raise TaskFileError(f"{path} was saved with other settings ({details}); build the model with the file's.")
    rename = {t: t for t in tasks} | {int(k): int(v) for k, v in (rename or {}).items() if int(k) in tasks}
    targets = [rename[t] for t in tasks]
    taken = [t for t in targets if t in model.tasks]
    if taken or len(set(targets)) != len(targets):
        raise TaskFileError(
            f"Task label(s) {taken or targets} already exist in the model (tasks {model.tasks}); pass "
            "rename={task in the file: new label} to load them under free labels."
        )
    state = model.state_dict()
    for task in tasks:
        for name, tensor in payload["tasks"][task].items():
            match = _PER_TASK.match(name)
            if match is None or match["container"] == "scores":
                raise TaskFileError(f"{path} holds an unexpected entry {name!r}; it is corrupt.")
            state[f"{match['module']}.{match['container']}.{rename[task]}{match['rest']}"] = tensor
    trial = copy.deepcopy(model)
    try:
        trial.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as error:
        raise TaskFileError(
            f"The tasks in {path} do not fit this model's layers ({error}); build the model from the "
            "same backbone architecture and classifier as the one that saved them."
        ) from error
    model.load_state_dict(state)
    return targets
