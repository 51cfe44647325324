"""Task files: finished Piggyback tasks exported on their own, to share one
backbone plus small mask files, as the paper's authors distributed theirs.

A task file holds, per task, exactly what the task adds to the backbone: its
masks (entropy-coded since version 2, below one bit per weight for masks that
are mostly ones; see :mod:`~piggyback_avalanche.task_aware.entropy_coding`),
its normalization layers and its head; plus the mask
settings, a format version and a fingerprint of the backbone tensors the
masks were learned on. Loading checks all of it against the model before
changing anything, and writing is atomic.
"""

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Union

import torch

from piggyback_avalanche.files import read_saved, refuse_unless_loadable, write_atomically
from piggyback_avalanche.task_aware.entropy_coding import CodingError, decode_state, encode_state
from piggyback_avalanche.task_aware.models import MultiHeadModel
from piggyback_avalanche.task_aware.task_state import task_key

if TYPE_CHECKING:  # the model module imports this one
    from piggyback_avalanche.methods.piggyback.model import PiggybackModel

__all__ = [
    "TASK_FILE_FORMAT",
    "TASK_FILE_VERSION",
    "TaskFileError",
    "backbone_fingerprint",
    "save_tasks",
    "load_tasks",
    "task_file_payload",
    "read_task_file",
    "check_learned_on",
    "task_entries",
    "settings_of",
]

TASK_FILE_FORMAT = "piggyback-avalanche task file"
TASK_FILE_VERSION = 2
_READABLE_VERSIONS = (1, 2)  # version 1 stored the masks bit-packed, not coded

PathLike = Union[str, Path]


class TaskFileError(ValueError):
    """A task file cannot be written, read, or applied to this model."""


def backbone_fingerprint(model: MultiHeadModel) -> str:
    """SHA-256 of the model's shared tensors (the backbone's weights, biases
    and normalization layers: everything that is no task's own), by name,
    dtype, shape and bytes."""
    digest = hashlib.sha256()
    state = model.shared_state()
    for name in sorted(state):
        tensor = state[name]
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def settings_of(model: "PiggybackModel") -> Dict[str, Any]:
    """The settings that decide what a mask means, recorded with saved tasks."""
    return {
        "model": type(model).__name__,
        "threshold_fn": model.threshold_fn,
        "threshold": model.threshold,
        "task_batchnorm": model.task_batchnorm,
        # Files written before the dtype was recorded lack it, and are not checked for it.
        "dtype": str(next(model.parameters()).dtype),
    }


def _labels(value: Any, what: str, *, unique: bool = True) -> List[int]:
    """Task labels given as an iterable of ints, checked, in order."""
    if isinstance(value, (int, str)) or not isinstance(value, Iterable):
        raise TaskFileError(
            f"{what} must be a list of task labels, got {value!r}; for one task use load_task(path, task)."
        )
    labels = []
    for item in value:
        try:
            labels.append(int(task_key(item)))
        except ValueError as error:
            raise TaskFileError(f"{what}: {error}") from None
    repeated = sorted({t for t in labels if labels.count(t) > 1})
    if repeated and unique:
        raise TaskFileError(f"{what} lists task(s) {repeated} more than once; give each task once.")
    return labels


def save_tasks(model: "PiggybackModel", path: PathLike, tasks: Optional[Iterable[int]] = None) -> None:
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
    payload = task_file_payload(model, tasks)
    write_atomically(path, lambda file: torch.save(payload, file), binary=True)


def task_file_payload(
    model: "PiggybackModel", tasks: List[int], *, fingerprint: Optional[str] = None
) -> Dict[str, Any]:
    """What a task file of the frozen ``tasks`` holds (masks coded), also
    for a task whose masks live in the model's task store.

    :param fingerprint: the model's :func:`backbone_fingerprint`, if known.
    """
    entries = {}
    for task in tasks:
        resident = {k: v.detach().cpu() for k, v in model.task_tensors(task).items()}
        parts = {**resident, **model.stored_task_parts(task)}
        entries[task] = encode_state(parts, model.frozen_code_layouts(task))
    return {
        "format": TASK_FILE_FORMAT,
        "version": TASK_FILE_VERSION,
        "backbone_fingerprint": fingerprint or backbone_fingerprint(model),
        "settings": settings_of(model),
        "tasks": entries,
    }


def check_learned_on(
    model: "PiggybackModel", payload: Dict[str, Any], path: Any, *, fingerprint: Optional[str] = None
) -> None:
    """Refuse tasks saved with other mask settings or on another backbone.

    :param payload: a task file's (or task store's) ``settings`` and
        ``backbone_fingerprint``.
    :param path: the file or store, for the messages.
    :param fingerprint: the model's :func:`backbone_fingerprint`, if known.
    """
    fingerprint = fingerprint or backbone_fingerprint(model)
    ours = settings_of(model)
    different = {k: (v, ours.get(k)) for k, v in payload["settings"].items() if ours.get(k) != v}
    if different:
        details = ", ".join(f"{k}: file {a!r}, model {b!r}" for k, (a, b) in different.items())
        hint = " (model.to(dtype) converts the model)" if "dtype" in different else ""
        raise TaskFileError(f"{path} was saved with other settings ({details}); build the model with the file's{hint}.")
    if payload["backbone_fingerprint"] != fingerprint:
        raise TaskFileError(
            f"The tasks in {path} were learned on another backbone (fingerprint "
            f"{payload['backbone_fingerprint'][:12]}…, this model's is {fingerprint[:12]}…): "
            "their masks would select the wrong weights. Build the model on the same pretrained "
            "backbone (same weights, same first task if it trained the backbone)."
        )


def task_entries(model: "PiggybackModel", payload: Dict[str, Any], path: Any, task: int, label: int) -> Dict[str, Any]:
    """Task ``task`` of a task file's payload, decoded and checked against
    what a frozen task of ``model`` holds, under the model's keys for task
    ``label``.

    :raises TaskFileError: for a task that does not decode or does not
        hold what a frozen task holds, at the right dtypes.
    """
    entries = payload["tasks"][task]
    if isinstance(entries, dict):
        try:
            entries = decode_state(entries)
        except CodingError as error:
            raise TaskFileError(
                f"Task {task} in {path} does not decode ({error}). Copy it again from its source."
            ) from None
    expected = model.frozen_task_state_schema(task)
    if not isinstance(entries, dict):
        raise TaskFileError(
            f"Task {task} in {path} holds a {type(entries).__name__}, not tensors by key; it is corrupt."
        )
    missing, unexpected = set(expected) - set(entries), set(entries) - set(expected)
    if unexpected or missing not in (set(), set(model.optional_task_state_keys(task))):
        raise TaskFileError(
            f"Task {task} in {path} does not hold what a frozen task of this model holds (missing: "
            f"{sorted(missing)}; unexpected: {sorted(unexpected)}); it is corrupt, from another backbone "
            "architecture or classifier, or written by a model with other settings (feature_statistics)."
        )
    wrong = {
        k: entries[k]
        for k, dtype in expected.items()
        if k in entries and (not isinstance(entries[k], torch.Tensor) or entries[k].dtype != dtype)
    }
    if wrong:
        details = ", ".join(
            f"{k}: {getattr(v, 'dtype', type(v).__name__)}, not {expected[k]}" for k, v in wrong.items()
        )
        raise TaskFileError(f"Task {task} in {path} holds tensors of the wrong type ({details}); it is corrupt.")
    # The model lists a task's keys in the same order for every label.
    return {new: entries[old] for old, new in zip(expected, model.frozen_task_state_schema(label)) if old in entries}


def read_task_file(
    path: Path, *, sha256: Optional[str] = None, remedy: str = "Copy it again from its source."
) -> Dict[str, Any]:
    """A task file's payload, of a readable format and version.

    :param sha256: the file's recorded SHA-256 (a task store records it).
    :param remedy: what to do about a file that cannot be read.
    """
    payload = read_saved(path, weights_only=True, error=TaskFileError, what="task file", remedy=remedy, sha256=sha256)
    if not isinstance(payload, dict) or payload.get("format") != TASK_FILE_FORMAT:
        raise TaskFileError(f"{path} is not a {TASK_FILE_FORMAT}.")
    if payload.get("version") not in _READABLE_VERSIONS:
        raise TaskFileError(
            f"{path} is a task file of version {payload.get('version')!r}; this version of "
            f"piggyback-avalanche reads versions {', '.join(map(str, _READABLE_VERSIONS))}. Upgrade the package, or re-export the tasks."
        )
    return payload


def load_tasks(
    model: "PiggybackModel",
    path: PathLike,
    tasks: Optional[Iterable[int]] = None,
    *,
    rename: Optional[Dict[int, int]] = None,
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
    tasks = None if tasks is None else sorted(_labels(tasks, "tasks"))
    if rename is not None and not isinstance(rename, dict):
        raise TaskFileError(f"rename must be a dict {{task in the file: new label}}, got {rename!r}.")
    renamed = dict(
        zip(
            _labels(list((rename or {}).keys()), "rename"),
            _labels(list((rename or {}).values()), "rename", unique=False),
        )
    )
    payload = read_task_file(path)
    available = sorted(payload["tasks"])
    tasks = available if tasks is None else tasks
    missing = [t for t in tasks if t not in payload["tasks"]]
    if missing:
        raise TaskFileError(f"{path} has no task(s) {missing}; it holds tasks {available}.")
    check_learned_on(model, payload, path)
    label = {t: renamed.get(t, t) for t in tasks}
    targets = [label[t] for t in tasks]
    clashing = sorted({t for t in targets if targets.count(t) > 1})
    if clashing:
        raise TaskFileError(f"rename gives several tasks the label(s) {clashing}; give each task its own label.")
    taken = [t for t in targets if t in model.tasks]
    if taken:
        raise TaskFileError(
            f"Task label(s) {taken} already exist in the model (tasks {model.tasks}); pass "
            "rename={task in the file: new label} to load them under free labels."
        )
    state = model.state_dict()
    for task in tasks:
        state.update(task_entries(model, payload, path, task, label[task]))
    refuse_unless_loadable(
        model,
        state,
        error=TaskFileError,
        message=f"The tasks in {path} do not fit this model's layers ({{cause}}); build the model from the "
        "same backbone architecture and classifier as the one that saved them.",
    )
    model.load_state_dict(state)
    return targets
