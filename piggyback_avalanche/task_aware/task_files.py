"""Task files: finished tasks of a task-aware model exported on their own,
to share one backbone plus small files per task, as Piggyback's authors
distributed their masks.

A task file holds, per task, exactly what the task adds to the backbone (what
its modules list in ``frozen_task_tensor_schema``): Piggyback's masks
(entropy-coded since version 2, below one bit per weight for masks that are
mostly ones; see :mod:`~piggyback_avalanche.task_aware.entropy_coding`), a
method's other per-task tensors, the task's normalization layers and its
head; plus the settings that decide what those tensors mean
(:meth:`~piggyback_avalanche.task_aware.models.TaskAwareModel.task_file_settings`), a format version and a
fingerprint of the backbone tensors the task was learned on. Loading checks
all of it against the model before changing anything, and writing is atomic.
"""

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from piggyback_avalanche.files import (
    PathLike,
    check_checksum,
    read_saved,
    refuse_unless_loadable,
    with_checksum,
    write_atomically,
)
from piggyback_avalanche.task_aware.entropy_coding import (
    CodeLayout,
    CodingError,
    coded_layout,
    decode_state,
    encode_state,
    is_coded,
)
from piggyback_avalanche.task_aware.task_module import TensorSpec
from piggyback_avalanche.task_aware.task_state import task_key

__all__ = [
    "TASK_FILE_FORMAT",
    "TASK_FILE_VERSION",
    "TaskFileError",
    "TaskFileModel",
    "backbone_fingerprint",
    "save_tasks",
    "load_tasks",
    "task_file_payload",
    "read_task_file",
    "check_learned_on",
    "task_entries",
    "check_task_tensors",
]

TASK_FILE_FORMAT = "piggyback-avalanche task file"
TASK_FILE_VERSION = 3
# Version 1 stored the masks bit-packed, not coded; version 3 added a checksum over everything.
_READABLE_VERSIONS = (1, 2, 3)


class TaskFileError(ValueError):
    """A task file cannot be written, read, or applied to this model."""


class TaskFileModel(Protocol):
    """What a model answers to have its frozen tasks written to and read
    from task files and task stores (every
    :class:`~piggyback_avalanche.task_aware.models.TaskAwareModel` does): its
    tasks, each frozen task's tensors and what they must be, the settings
    that decide what they mean, and the shared tensors they were learned on.
    """

    @property
    def tasks(self) -> list[int]: ...

    @property
    def frozen_tasks(self) -> list[int]: ...

    @property
    def learning_tasks(self) -> list[int]: ...

    def task_tensors(self, task: int) -> dict[str, Tensor]: ...

    def stored_task_parts(self, task: int) -> dict[str, Tensor]: ...

    def frozen_task_tensor_schema(self, task: int) -> dict[str, TensorSpec]: ...

    def optional_task_tensor_keys(self, task: int) -> list[str]: ...

    def frozen_code_layouts(self, task: int) -> dict[str, CodeLayout]: ...

    def task_file_settings(self) -> dict[str, Any]: ...

    def shared_state(self) -> dict[str, Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = ..., assign: bool = ...) -> Any: ...


def backbone_fingerprint(model: "TaskFileModel") -> str:
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


def _labels(value: Any, what: str, *, unique: bool = True) -> list[int]:
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


def save_tasks(model: "TaskFileModel", path: PathLike, tasks: Iterable[int] | None = None) -> None:
    """Write ``tasks`` (all frozen tasks by default) of a task-aware model to
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


def task_file_payload(model: "TaskFileModel", tasks: list[int], *, fingerprint: str | None = None) -> dict[str, Any]:
    """What a task file of the frozen ``tasks`` holds (masks coded), also
    for a task whose masks live in the model's task store.

    :param fingerprint: the model's :func:`backbone_fingerprint`, if known.
    """
    entries = {}
    for task in tasks:
        resident = {k: v.detach().cpu() for k, v in model.task_tensors(task).items()}
        parts = {**resident, **model.stored_task_parts(task)}
        # What could not be loaded back is never written (a task whose training diverged).
        check_task_tensors(model, task, parts, f"Task {task} of this model")
        entries[task] = encode_state(parts, model.frozen_code_layouts(task))
    return with_checksum(
        {
            "format": TASK_FILE_FORMAT,
            "version": TASK_FILE_VERSION,
            "backbone_fingerprint": fingerprint or backbone_fingerprint(model),
            "settings": model.task_file_settings(),
            "tasks": entries,
        }
    )


def check_learned_on(
    model: "TaskFileModel", payload: dict[str, Any], path: Any, *, fingerprint: str | None = None
) -> None:
    """Refuse tasks saved with other settings (those that decide what a
    task's tensors mean) or on another backbone.

    :param payload: a task file's (or task store's) ``settings`` and
        ``backbone_fingerprint``.
    :param path: the file or store, for the messages.
    :param fingerprint: the model's :func:`backbone_fingerprint`, if known.
    """
    fingerprint = fingerprint or backbone_fingerprint(model)
    ours = model.task_file_settings()
    different = {k: (v, ours.get(k)) for k, v in payload["settings"].items() if ours.get(k) != v}
    if different:
        details = ", ".join(f"{k}: file {a!r}, model {b!r}" for k, (a, b) in different.items())
        hint = " (model.to(dtype) converts the model)" if "dtype" in different else ""
        raise TaskFileError(f"{path} was saved with other settings ({details}); build the model with the file's{hint}.")
    if payload["backbone_fingerprint"] != fingerprint:
        raise TaskFileError(
            f"The tasks in {path} were learned on another backbone (fingerprint "
            f"{payload['backbone_fingerprint'][:12]}…, this model's is {fingerprint[:12]}…): "
            "their tensors (masks, updates) would apply to the wrong weights. Build the model on the same pretrained "
            "backbone (same weights, same first task if it trained the backbone)."
        )


def _check_structure(payload: dict[str, Any], path: Any) -> None:
    """Refuse a payload whose parts are not what a task file holds, before
    any of them is used."""
    tasks = payload.get("tasks")
    problem = None
    if not isinstance(payload.get("backbone_fingerprint"), str):
        problem = "no backbone fingerprint"
    elif not isinstance(payload.get("settings"), dict) or not all(isinstance(k, str) for k in payload["settings"]):
        problem = "no settings"
    elif not isinstance(tasks, dict) or not tasks:
        problem = "no tasks"
    else:
        for task, entries in tasks.items():
            if isinstance(task, bool) or not isinstance(task, int) or task < 0:
                problem = f"a task labelled {task!r}"
            elif not isinstance(entries, dict) or not all(
                isinstance(k, str) and (isinstance(v, torch.Tensor) or is_coded(v)) for k, v in entries.items()
            ):
                problem = f"task {task} as something other than tensors by key"
            if problem:
                break
    if problem:
        raise TaskFileError(f"{path} holds {problem}; it is corrupt or not a {TASK_FILE_FORMAT}. Copy it again.")


def check_task_tensors(model: "TaskFileModel", task: int, entries: dict[str, Any], what: str) -> None:
    """Refuse ``entries`` (a frozen ``task``'s tensors by the model's keys,
    masks still coded or packed) that are not what the model's frozen task
    holds: keys, coded layouts (checked before anything is decoded), dtypes,
    shapes (a head's classes agreeing across its tensors), finite values and
    non-negative variances.

    :param what: where the task comes from, for the message ("Task 1 in x.tasks").
    :raises TaskFileError: naming each tensor that does not fit.
    """
    expected = model.frozen_task_tensor_schema(task)
    missing, unexpected = set(expected) - set(entries), set(entries) - set(expected)
    if unexpected or missing not in (set(), set(model.optional_task_tensor_keys(task))):
        raise TaskFileError(
            f"{what} does not hold what a frozen task of this model holds (missing: "
            f"{sorted(missing)}; unexpected: {sorted(unexpected)}); it is corrupt, from another backbone "
            "architecture or classifier, or written by a model with other settings (feature_statistics)."
        )
    layouts = model.frozen_code_layouts(task)
    problems: dict[str, str] = {}
    for key, value in entries.items():
        if is_coded(value):
            try:
                declared: Any = coded_layout(value)
            except CodingError as error:
                declared = error
            if key not in layouts:
                problems[key] = "coded codes where the model keeps plain values"
            elif declared != layouts[key]:
                problems[key] = f"coded codes laid out as {declared}, not {layouts[key]}"
    sizes: dict[str, int] = {}
    for key, spec in expected.items():
        value = entries.get(key)
        if value is not None and key not in problems and not is_coded(value):
            problem = spec.problem(value, sizes)
            if problem is not None:
                problems[key] = problem
    if problems:
        details = "; ".join(f"{k}: {v}" for k, v in problems.items())
        raise TaskFileError(
            f"{what} holds tensors that do not fit this model ({details}); it is corrupt, from another backbone "
            "architecture or classifier, or of another dtype (model.to(dtype) converts the model)."
        )


def task_entries(model: "TaskFileModel", payload: dict[str, Any], path: Any, task: int, label: int) -> dict[str, Any]:
    """Task ``task`` of a task file's payload, checked against what a frozen
    task of ``model`` holds (:func:`check_task_tensors`) and decoded, under
    the model's keys for task ``label``.

    :raises TaskFileError: for a task that does not fit or does not decode.
    """
    entries = payload["tasks"][task]
    what = f"Task {task} in {path}"
    check_task_tensors(model, task, entries, what)
    try:  # a coded tensor decodes to the packed size of the layout just checked
        entries = decode_state(entries)
    except CodingError as error:
        raise TaskFileError(f"{what} does not decode ({error}). Copy it again from its source.") from None
    # The model lists a task's keys in the same order for every label.
    expected = model.frozen_task_tensor_schema(task)
    return {new: entries[old] for old, new in zip(expected, model.frozen_task_tensor_schema(label)) if old in entries}


def read_task_file(
    path: Path, *, sha256: str | None = None, remedy: str = "Copy it again from its source.", **read: Any
) -> dict[str, Any]:
    """A task file's payload, of a readable format and version, whole
    (its checksum, from version 3 on) and of the right structure.

    :param sha256: the file's recorded SHA-256 (a task store records it).
    :param remedy: what to do about a file that cannot be read.
    :param read: passed to :func:`~piggyback_avalanche.files.read_saved`.
    """
    payload = read_saved(
        path, weights_only=True, error=TaskFileError, what="task file", remedy=remedy, sha256=sha256, **read
    )
    if not isinstance(payload, dict) or payload.get("format") != TASK_FILE_FORMAT:
        raise TaskFileError(f"{path} is not a {TASK_FILE_FORMAT}.")
    version = payload.get("version")
    if isinstance(version, bool) or version not in _READABLE_VERSIONS:
        raise TaskFileError(
            f"{path} is a task file of version {version!r}; this version of "
            f"piggyback-avalanche reads versions {', '.join(map(str, _READABLE_VERSIONS))}. Upgrade the package, or re-export the tasks."
        )
    if version >= 3:
        check_checksum(payload, error=TaskFileError, what="task file", path=path, remedy=remedy)
    _check_structure(payload, path)
    return payload


def load_tasks(
    model: "TaskFileModel",
    path: PathLike,
    tasks: Iterable[int] | None = None,
    *,
    rename: dict[int, int] | None = None,
) -> list[int]:
    """Add tasks from a task file to a task-aware model, as frozen tasks.

    Everything is checked first (file integrity and version, backbone
    fingerprint, task-file settings, free task labels, tensor shapes); on any
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
