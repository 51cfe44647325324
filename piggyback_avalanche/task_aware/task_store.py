"""Task stores: a task-aware model's frozen tasks kept on disk, their large
parts (Piggyback's masks: what its modules call ``offloadable``) read on demand, so that one backbone serves thousands of tasks in bounded
memory.

A task store is a folder:

- ``store.json``, the manifest: format, version, the backbone's fingerprint,
  the model's task-file settings, and per task its file, the file's SHA-256 and size;
- one task file per task (``task-<label>-<random>.tasks``, the format of
  :mod:`~piggyback_avalanche.task_aware.task_files`, masks
  entropy-coded).

Several processes (and several models of one process) may append to one
store; nothing they write is lost, and nothing of anyone else's is ever
removed or replaced:

- **One writer at a time.** An append takes the folder's OS lock
  (:class:`~piggyback_avalanche.files.FolderLock`), reads the manifest as
  it is now, and adds its tasks to it; it never rewrites the manifest from
  an older copy. Readers need no lock: the manifest is replaced
  atomically, and a file it lists is never changed or removed.
- **New names only.** A task file is written to a temporary file, flushed,
  then hard-linked to a name that must not exist yet (a random part makes
  it one no user would choose); then the manifest lists it; then the
  temporary name goes. A link never replaces anything, a symbolic link
  planted in the folder included, and the manifest replaces a planted link
  rather than writing through it.
- **All or nothing.** Tasks appended together (a model's own tasks when it
  attaches) enter the manifest in one write; if any file fails (a full
  disk, a read-only folder), the files this append made are removed and the
  store is as it was.
- **Only provably own leftovers are removed**, and only under the lock: the
  temporary files a killed append left (:data:`~piggyback_avalanche.files.PARTIAL_SUFFIX`),
  and a task file it linked but never listed, recognised as the same file
  (same inode) as such a temporary file. A file the user put in the folder,
  or an unlisted task file of unknown origin, stays.
- **A store never shrinks.** A manifest that lost tasks this object saw,
  or a folder removed while attached, is refused, never written over.

Reading a task checks its file against the manifest's SHA-256, and the
file's own checksum, before anything is loaded from it. The manifest is
JSON, so opening a store runs no code.

A model attached to a store (:meth:`~piggyback_avalanche.task_aware.models.TaskAwareModel.attach_task_store`) keeps
in memory only the backbone, every task's normalization and head, and the
effective weights of the tasks used most recently, within its
:class:`~piggyback_avalanche.task_aware.frozen_weight_cache.FrozenWeightCache`
budget.
"""

import copy
import hashlib
import io
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from piggyback_avalanche.files import (
    FolderBusyError,
    FolderLock,
    flush_folder,
    read_bytes,
    stale_partial_files,
    write_atomically,
    write_temporary,
)
from piggyback_avalanche.task_aware.entropy_coding import CodingError, decode_state
from piggyback_avalanche.task_aware.task_files import (
    TaskFileError,
    TaskFileModel,
    backbone_fingerprint,
    check_learned_on,
    read_task_file,
    task_entries,
    task_file_payload,
)

__all__ = ["TASK_STORE_FORMAT", "TASK_STORE_VERSION", "TaskStoreError", "TaskStore"]

TASK_STORE_FORMAT = "piggyback-avalanche task store"
TASK_STORE_VERSION = 1
MANIFEST_NAME = "store.json"
# Stores written before the random part (task-<label>.tasks) still open.
_TASK_FILE = re.compile(r"task-(\d+)(?:-[0-9a-f]{12})?\.tasks")
_REMEDY = "Restore the folder from a copy, or give a new folder."


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


def _writer(data: bytes) -> Callable[[IO[Any]], Any]:
    """What writes ``data`` to an open file."""
    return lambda file: file.write(data)


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class TaskStore:
    """A folder of frozen tasks, one task file each, listed in a manifest.

    Opening a folder without a manifest makes an empty store there (the
    folder and the manifest are written with the first task).

    :param path: the store's folder.
    :raises TaskStoreError: for a manifest that is unreadable, of another
        format or version, or malformed; or a path that is not a folder.
    """

    lock_wait_seconds: float = 120.0
    """How long an append waits for another writer before it gives up."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise TaskStoreError(f"{self.path} is not a folder; a task store is a folder. Give a folder's path.")
        self._lock = FolderLock(self.path, what="task store", wait_seconds=self.lock_wait_seconds)
        # The manifest as this object last read or wrote it. Entries never
        # change once listed, so a task's entry here stays right.
        self._manifest: dict[str, Any] | None = self._read_manifest()
        # The decoded parts of the task read last: a model reads one task's
        # parts layer by layer.
        self._last_read: tuple[str, dict[str, Tensor]] | None = None

    # --- the manifest ------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    def _read_manifest(self) -> dict[str, Any] | None:
        if not os.path.lexists(self.manifest_path):
            return None
        text = read_bytes(self.manifest_path, error=TaskStoreError, what="task store manifest", follow_symlinks=False)
        try:
            manifest = json.loads(text)
        except ValueError as error:
            raise TaskStoreError(f"Cannot read task store {self.path} ({error}): {_REMEDY}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != TASK_STORE_FORMAT:
            raise TaskStoreError(f"{self.path} is not a {TASK_STORE_FORMAT}. {_REMEDY}")
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
                and _TASK_FILE.fullmatch(entry["file"]).group(1) == label  # type: ignore[union-attr]
                for label, entry in tasks.items()
            )
            or len({entry["file"] for entry in tasks.values()}) != len(tasks)
        ):
            raise TaskStoreError(f"The manifest of task store {self.path} is malformed. {_REMEDY}")
        return manifest

    def _reread_manifest(self) -> dict[str, Any] | None:
        """The manifest as it is on disk now, refused if it lost or changed a
        task this object has seen (the store was edited, replaced or
        removed): a store never shrinks."""
        seen = (self._manifest or {}).get("tasks", {})
        if seen and not self.path.is_dir():
            raise self._gone()
        current = self._read_manifest()
        listed = (current or {}).get("tasks", {})
        lost = sorted((int(t) for t, entry in seen.items() if listed.get(t) != entry), key=int)
        if lost:
            raise TaskStoreError(
                f"The manifest of task store {self.path} no longer lists task(s) {lost} as they were: it was edited "
                f"or replaced outside this package. {_REMEDY}"
            )
        return current

    @property
    def tasks(self) -> list[int]:
        """The task labels the store holds, as its manifest lists them now
        (other processes may have appended since this object was made)."""
        if os.path.lexists(self.manifest_path) or (self._manifest or {}).get("tasks"):
            self._manifest = self._reread_manifest()
        return sorted(int(t) for t in (self._manifest or {}).get("tasks", {}))

    def file_bytes(self, task: int) -> int:
        """Bytes of ``task``'s file on disk (masks coded)."""
        return int(self._entry(task)["file_bytes"])

    def _entry(self, task: int) -> dict[str, Any]:
        entry = (self._manifest or {}).get("tasks", {}).get(str(task))
        if entry is None:
            raise TaskStoreError(f"Task store {self.path} has no task {task}; it holds tasks {self.tasks}.")
        return entry

    # --- reading -------------------------------------------------------------

    def check_model(self, model: "TaskFileModel", *, fingerprint: str | None = None) -> None:
        """Refuse a model whose task-file settings or backbone differ from the
        store's (an empty store takes any).

        :param fingerprint: the model's backbone fingerprint, if known.
        """
        if self._manifest is not None and self._manifest["tasks"]:
            with _as_store_error():
                check_learned_on(model, self._manifest, self.path, fingerprint=fingerprint)

    def read(self, task: int) -> dict[str, Any]:
        """``task``'s file, checked against the manifest, as a task file
        payload."""
        entry = self._entry(task)
        with _as_store_error():
            payload = read_task_file(
                self.path / entry["file"],
                sha256=entry["sha256"],
                remedy="The task store is damaged: restore it from a copy.",
                follow_symlinks=False,
            )
        fingerprint = (self._manifest or {}).get("backbone_fingerprint")
        if list(payload["tasks"]) != [task] or payload["backbone_fingerprint"] != fingerprint:
            raise TaskStoreError(f"{self.path / entry['file']} holds other tasks than the manifest says.")
        return payload

    def entries(self, model: "TaskFileModel", task: int) -> dict[str, Any]:
        """``task``'s state, checked against ``model`` and decoded, under the
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

    def __deepcopy__(self, memo: dict[int, Any]) -> "TaskStore":
        # A copy (a restore point's) reads the same folder, and drops what it read last.
        copied = TaskStore.__new__(TaskStore)
        copied.path = self.path
        copied._lock = copy.deepcopy(self._lock, memo)
        copied._manifest = copy.deepcopy(self._manifest, memo)
        copied._last_read = None
        return copied

    # --- appending -------------------------------------------------------------

    def append(self, model: "TaskFileModel", task: int) -> None:
        """Write the frozen ``task`` of ``model`` to the store (see
        :meth:`append_tasks`)."""
        self.append_tasks(model, [task])

    def append_tasks(self, model: "TaskFileModel", tasks: Sequence[int]) -> None:
        """Write the frozen ``tasks`` of ``model`` to the store, all or none:
        their files, then one manifest that adds them to what the store
        holds now (whoever else appended meanwhile).

        :raises TaskStoreError: for a task the store already holds, a model
            on another backbone or with other settings than the store's
            tasks, a store that lost tasks or was removed, another writer
            that holds the store for too long, or a write that fails (a full
            disk, a read-only folder); the store is then as it was.
        """
        fingerprint = backbone_fingerprint(model)
        # The files' bytes are made before the lock is taken: writers wait only for each other's writes.
        encoded = {}
        for task in tasks:
            buffer = io.BytesIO()
            torch.save(task_file_payload(model, [task], fingerprint=fingerprint), buffer)
            encoded[task] = buffer.getvalue()
        if not (self._manifest or {}).get("tasks"):
            # A store not written yet: its folder is made. A store this object
            # has seen tasks in is never made again (_reread_manifest).
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise TaskStoreError(f"Cannot make the task store's folder {self.path}: {error.strerror}.") from None
        try:
            with self._lock:
                self._append_locked(model, encoded, fingerprint)
        except FolderBusyError as error:
            raise TaskStoreError(str(error.strerror)) from None
        except FileNotFoundError:  # the folder went before the lock was taken
            raise self._gone() from None

    def _gone(self) -> TaskStoreError:
        return TaskStoreError(
            f"The task store {self.path} is gone (its folder was removed or moved); the tasks it held can no "
            "longer be read, and it is not made again. Restore the folder, or attach a new store."
        )

    def _append_locked(self, model: "TaskFileModel", encoded: dict[int, bytes], fingerprint: str) -> None:
        manifest = self._reread_manifest()
        self._remove_leftovers(manifest)
        held = sorted(set(encoded) & {int(t) for t in (manifest or {}).get("tasks", {})})
        if held:
            raise TaskStoreError(
                f"Task store {self.path} already holds task(s) {held}; a stored task never changes. Give the "
                "new task another label, or attach the store to read it."
            )
        self._manifest = manifest
        self.check_model(model, fingerprint=fingerprint)
        manifest = manifest if manifest is not None and manifest["tasks"] else None
        manifest = manifest or {
            "format": TASK_STORE_FORMAT,
            "version": TASK_STORE_VERSION,
            "backbone_fingerprint": fingerprint,
            "settings": model.task_file_settings(),
            "tasks": {},
        }
        written: list[tuple[Path, Path]] = []  # (temporary file, its link under the task's name)
        mode = _umask_mode()
        try:
            entries = {}
            for task, data in encoded.items():
                temporary = write_temporary(self.path, "task", _writer(data), binary=True, mode=mode)
                written.append((temporary, temporary))
                final = self._link_under_new_name(temporary, task)
                written[-1] = (temporary, final)
                entries[str(task)] = {
                    "file": final.name,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "file_bytes": len(data),
                }
            updated = {**manifest, "tasks": {**manifest["tasks"], **entries}}
            write_atomically(self.manifest_path, lambda file: json.dump(updated, file, indent=1), follow_symlinks=False)
        except OSError as error:
            for temporary, final in written:  # only what this append made
                final.unlink(missing_ok=True)
                temporary.unlink(missing_ok=True)
            raise TaskStoreError(
                f"Cannot append task(s) {sorted(encoded)} to the task store {self.path} ({error.strerror or error}); "
                "the store is as it was. Free space or give a writable folder."
            ) from None
        for temporary, _ in written:
            temporary.unlink()
        flush_folder(self.path)
        self._manifest = updated

    def _link_under_new_name(self, temporary: Path, task: int) -> Path:
        """Link ``temporary`` to a task-file name that does not exist yet
        (``link(2)`` refuses any existing name, a symbolic link included)."""
        while True:
            final = self.path / f"task-{task}-{secrets.token_hex(6)}.tasks"
            try:
                os.link(temporary, final)
                return final
            except FileExistsError:
                continue

    def _remove_leftovers(self, manifest: dict[str, Any] | None) -> None:
        """Remove what appends killed midway left, and only that: their
        temporary files (none is being written while the lock is held), and
        task files linked to one of them but never listed."""
        partials = stale_partial_files(self.path)
        if not partials:
            return
        ours = set()
        for partial in partials:
            info = os.lstat(partial)
            ours.add((info.st_dev, info.st_ino))
        listed = {entry["file"] for entry in (manifest or {}).get("tasks", {}).values()}
        for entry in os.scandir(self.path):
            if entry.name in listed or not _TASK_FILE.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            info = entry.stat(follow_symlinks=False)
            if (info.st_dev, info.st_ino) in ours:
                os.unlink(entry.path)
        for partial in partials:
            partial.unlink(missing_ok=True)
