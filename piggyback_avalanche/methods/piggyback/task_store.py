"""Task stores: a Piggyback model's frozen tasks kept on disk, their masks
read on demand, so that one backbone serves thousands of tasks in bounded
memory.

A task store is a folder:

- ``store.json``, the manifest: format, version, the backbone's fingerprint,
  the mask settings, and per task its file, the file's SHA-256 and sizes;
- one task file per task (``task-<label>.tasks``, the format of
  :mod:`~piggyback_avalanche.methods.piggyback.task_files`, masks
  entropy-coded).

Appending a task writes its file atomically, then the manifest atomically:
a crash at any moment leaves the store as it was, or with the new task
whole; a task file the manifest does not list is ignored and replaced by
the next append of that label. Reading a task checks its file against the
manifest's SHA-256 before anything is loaded from it. The manifest is JSON,
so opening a store runs no code.

A model attached to a store (:meth:`PiggybackModel.attach_task_store`) keeps
in memory only the backbone, every task's normalization and head, and the
effective weights of the tasks used most recently, within its
:class:`~piggyback_avalanche.task_aware.frozen_weight_cache.FrozenWeightCache`
budget.
"""

import copy
import hashlib
import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor

from piggyback_avalanche.files import remove_partial_files, write_atomically
from piggyback_avalanche.methods.piggyback.task_files import (
    TaskFileError,
    backbone_fingerprint,
    check_learned_on,
    read_task_file,
    settings_of,
    task_entries,
    task_file_payload,
)
from piggyback_avalanche.task_aware.entropy_coding import CodingError, decode_state

if TYPE_CHECKING:  # the model module imports this one
    from piggyback_avalanche.methods.piggyback.model import PiggybackModel

__all__ = ["TASK_STORE_FORMAT", "TASK_STORE_VERSION", "TaskStoreError", "TaskStore"]

TASK_STORE_FORMAT = "piggyback-avalanche task store"
TASK_STORE_VERSION = 1
MANIFEST_NAME = "store.json"
_TASK_FILE = re.compile(r"task-(\d+)\.tasks")


class TaskStoreError(TaskFileError):
    """A task store cannot be opened, read, appended to, or attached to
    this model."""


@contextmanager
def _as_store_error() -> Iterator[None]:
    """A task file's refusal, raised as the store's."""
    try:
        yield
    except TaskStoreError:
        raise
    except TaskFileError as error:
        raise TaskStoreError(str(error)) from None


class TaskStore:
    """A folder of frozen tasks, one task file each, listed in a manifest.

    Opening a folder without a manifest makes an empty store there (the
    manifest is written with the first task).

    :param path: the store's folder.
    :raises TaskStoreError: for a manifest that is unreadable, of another
        format or version, or malformed; or a path that is not a folder.
    """

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise TaskStoreError(f"{self.path} is not a folder; a task store is a folder. Give a folder's path.")
        self._manifest: Optional[Dict[str, Any]] = self._read_manifest()
        # The decoded parts of the task read last: a model reads one task's
        # parts layer by layer.
        self._last_read: Optional[Tuple[str, Dict[str, Tensor]]] = None

    # --- the manifest ------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    def _read_manifest(self) -> Optional[Dict[str, Any]]:
        if not self.manifest_path.exists():
            return None
        remedy = "Restore the folder from a copy, or give a new folder."
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as error:
            raise TaskStoreError(f"Cannot read task store {self.path} ({error}): {remedy}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != TASK_STORE_FORMAT:
            raise TaskStoreError(f"{self.path} is not a {TASK_STORE_FORMAT}. {remedy}")
        if manifest.get("version") != TASK_STORE_VERSION:
            raise TaskStoreError(
                f"{self.path} is a task store of version {manifest.get('version')!r}; this version of "
                f"piggyback-avalanche reads version {TASK_STORE_VERSION}. Upgrade the package."
            )
        tasks = manifest.get("tasks")
        fields = {"file": str, "sha256": str, "file_bytes": int}
        if (
            not isinstance(tasks, dict)
            or not isinstance(manifest.get("backbone_fingerprint"), str)
            or not isinstance(manifest.get("settings"), dict)
            or not all(
                re.fullmatch(r"\d+", label)
                and isinstance(entry, dict)
                and all(isinstance(entry.get(k), t) for k, t in fields.items())
                and _TASK_FILE.fullmatch(entry["file"])
                for label, entry in tasks.items()
            )
        ):
            raise TaskStoreError(f"The manifest of task store {self.path} is malformed. {remedy}")
        return manifest

    @property
    def tasks(self) -> List[int]:
        """The task labels the store holds."""
        return sorted(int(t) for t in (self._manifest or {}).get("tasks", {}))

    def file_bytes(self, task: int) -> int:
        """Bytes of ``task``'s file on disk (masks coded)."""
        return int(self._entry(task)["file_bytes"])

    def _entry(self, task: int) -> Dict[str, Any]:
        entry = (self._manifest or {}).get("tasks", {}).get(str(task))
        if entry is None:
            raise TaskStoreError(f"Task store {self.path} has no task {task}; it holds tasks {self.tasks}.")
        return entry

    # --- reading -------------------------------------------------------------

    def check_model(self, model: "PiggybackModel", *, fingerprint: Optional[str] = None) -> None:
        """Refuse a model whose mask settings or backbone differ from the
        store's (an empty store takes any).

        :param fingerprint: the model's backbone fingerprint, if known.
        """
        if self._manifest is not None and self._manifest["tasks"]:
            with _as_store_error():
                check_learned_on(model, self._manifest, self.path, fingerprint=fingerprint)

    def read(self, task: int) -> Dict[str, Any]:
        """``task``'s file, checked against the manifest, as a task file
        payload."""
        entry = self._entry(task)
        with _as_store_error():
            payload = read_task_file(
                self.path / entry["file"],
                sha256=entry["sha256"],
                remedy="The task store is damaged: restore it from a copy.",
            )
        fingerprint = (self._manifest or {}).get("backbone_fingerprint")
        if list(payload["tasks"]) != [task] or payload["backbone_fingerprint"] != fingerprint:
            raise TaskStoreError(f"{self.path / entry['file']} holds other tasks than the manifest says.")
        return payload

    def entries(self, model: "PiggybackModel", task: int) -> Dict[str, Any]:
        """``task``'s state, decoded and checked against ``model``, under the
        model's keys."""
        payload = self.read(task)
        with _as_store_error():
            return task_entries(model, payload, self.path / self._entry(task)["file"], task, task)

    def read_part(self, task: str, key: str) -> Tensor:
        """The tensor of ``task`` under the model's state-dict ``key``
        (:class:`~piggyback_avalanche.task_aware.task_state.StoredParts`),
        read and decoded once for all of the task's layers."""
        if self._last_read is None or self._last_read[0] != task:
            self._last_read = None  # never a half-read task
            label = int(task)
            entries = self.read(label)["tasks"][label]
            try:
                self._last_read = (task, decode_state(entries))
            except CodingError as error:
                raise TaskStoreError(
                    f"Task {task} in {self.path} does not decode ({error}); restore the store."
                ) from None
        return self._last_read[1][key]

    def __deepcopy__(self, memo: Dict[int, Any]) -> "TaskStore":
        # A copy (a restore point's) reads the same folder, and drops what it read last.
        copied = TaskStore.__new__(TaskStore)
        copied.path = self.path
        copied._manifest = copy.deepcopy(self._manifest, memo)
        copied._last_read = None
        return copied

    # --- appending -------------------------------------------------------------

    def append(self, model: "PiggybackModel", task: int) -> None:
        """Write the frozen ``task`` of ``model`` to the store: its file,
        then the manifest, each atomically.

        :raises TaskStoreError: for a task the store already holds, or a
            model on another backbone or with other settings than the
            store's tasks.
        """
        if task in self.tasks:
            raise TaskStoreError(f"Task store {self.path} already holds task {task}; a stored task never changes.")
        fingerprint = backbone_fingerprint(model)
        self.check_model(model, fingerprint=fingerprint)
        payload = task_file_payload(model, [task], fingerprint=fingerprint)
        name = f"task-{task}.tasks"
        write_atomically(self.path / name, lambda file: torch.save(payload, file), binary=True)
        data = (self.path / name).read_bytes()
        manifest = self._manifest if self._manifest is not None and self._manifest["tasks"] else None
        manifest = manifest or {
            "format": TASK_STORE_FORMAT,
            "version": TASK_STORE_VERSION,
            "backbone_fingerprint": fingerprint,
            "settings": settings_of(model),
            "tasks": {},
        }
        entry = {
            "file": name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "file_bytes": len(data),
        }
        updated = {**manifest, "tasks": {**manifest["tasks"], str(task): entry}}
        write_atomically(self.manifest_path, lambda file: json.dump(updated, file, indent=1))
        self._manifest = updated

    def remove_unlisted_files(self) -> List[Path]:
        """Delete what interrupted appends left: partial files, and task
        files the manifest does not list.

        :return: the files removed.
        """
        removed = remove_partial_files(self.path)
        listed = {entry["file"] for entry in (self._manifest or {}).get("tasks", {}).values()}
        if self.path.is_dir():
            for path in sorted(self.path.iterdir()):
                if _TASK_FILE.fullmatch(path.name) and path.name not in listed:
                    path.unlink()
                    removed.append(path)
        return removed
