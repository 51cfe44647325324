"""Files that are never half-written and never replace what they should
not, folders that one writer at a time changes, and reading files back
checked in full before anything is touched.

The rules follow what the most trusted storage does (SQLite, git):

- a write goes to a temporary file in the same folder, is flushed to disk,
  then renamed over its target (or linked to a name that must be new), and
  the folder is flushed too: a reader, or a process killed at any moment,
  sees the old file or the whole new one;
- temporary files carry a suffix no user would choose
  (:data:`PARTIAL_SUFFIX`); only those are ever removed, only in a folder
  whose writers hold its :class:`FolderLock`, and only by a process that
  holds it too (so none is being written);
- a file read back is a regular file, read whole, checked against its
  recorded SHA-256 or embedded checksum (:func:`with_checksum`), stored
  uncompressed (so it cannot expand beyond its size), loaded with
  ``torch.load(weights_only=True)`` (no code runs), and every tensor in it
  owns its bytes (a view cannot declare more elements than the file holds).
"""

import copy
import errno
import hashlib
import io
import os
import re
import stat
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import torch

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "PARTIAL_SUFFIX",
    "NotARegularFileError",
    "FolderLock",
    "FolderBusyError",
    "write_atomically",
    "write_temporary",
    "flush_folder",
    "stale_partial_files",
    "content_digest",
    "with_checksum",
    "check_checksum",
    "read_bytes",
    "read_saved",
    "refuse_unless_loadable",
    "PathLike",
]

PathLike = str | Path
"""A path as a user gives it: a string or a :class:`~pathlib.Path`."""

PARTIAL_SUFFIX = ".piggyback-partial"
"""The suffix of the temporary files this package writes: what a process
killed in the middle of a write leaves behind. No user names a file so,
and nothing else is ever removed as a leftover."""

_PARTIAL_NAME = re.compile(r"\..*" + re.escape(PARTIAL_SUFFIX))
# Room for the random part and the suffix within the 255 bytes of a name.
_NAME_IN_TEMPORARY = 64


class NotARegularFileError(OSError):
    """A save's target exists and is not a regular file (a folder, a device,
    a pipe or a socket): replacing it would destroy it."""


class FolderBusyError(OSError):
    """Another process (or another object of this one) holds a folder's
    :class:`FolderLock` for longer than the wait allows."""


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _target(path: Path, *, follow_symlinks: bool) -> Path:
    """Where a write to ``path`` lands: through a symbolic link to the file
    it names if ``follow_symlinks`` (as most tools do, so the link stays a
    link), else the link itself is replaced; a target that exists must be a
    regular file."""
    target = Path(os.path.realpath(path)) if follow_symlinks and path.is_symlink() else path
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return target
    if stat.S_ISREG(mode) or (stat.S_ISLNK(mode) and not follow_symlinks):
        return target
    raise NotARegularFileError(
        f"Cannot save to {path}: it is {_kind(mode)}"
        + (f" ({target}, through a symbolic link)" if target != path else "")
        + ", and a save replaces its target. Give the path of a regular file."
    )


def _new_file_mode(target: Path) -> int:
    """An existing regular file's mode, or what the user's umask gives a new file."""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        info = None
    if info is not None and stat.S_ISREG(info.st_mode):
        return stat.S_IMODE(info.st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def flush_folder(folder: PathLike) -> None:
    """Flush a folder's entries to disk (a rename or link is durable only
    then); a file system that cannot is left as it is."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def write_temporary(folder: Path, name: str, write: Callable[[IO[Any]], Any], *, binary: bool, mode: int) -> Path:
    """A new temporary file in ``folder`` (named after ``name``, ending in
    :data:`PARTIAL_SUFFIX`), written by ``write``, flushed to disk, with
    ``mode``; removed again if ``write`` fails.

    :return: its path.
    """
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name[:_NAME_IN_TEMPORARY]}.", suffix=PARTIAL_SUFFIX)
    try:
        os.fchmod(handle, mode)
        file: IO[Any] = os.fdopen(handle, "wb") if binary else os.fdopen(handle, "w", newline="")
        with file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        os.unlink(temporary)
        raise
    return Path(temporary)


def write_atomically(
    path: PathLike, write: Callable[[IO[Any]], Any], *, binary: bool = False, follow_symlinks: bool = True
) -> None:
    """Write ``path`` through a temporary file in the same folder, flushed to
    disk, then renamed over it: a reader, or a run killed at any moment,
    sees either the old file or the whole new one.

    A new file gets the mode the user's umask gives, a replaced one keeps
    its mode.

    :param path: the file to write; its folder is created if needed.
    :param write: called with the open temporary file.
    :param binary: open the file in binary mode.
    :param follow_symlinks: a symbolic link at ``path`` is written through
        (the file it names is replaced, the link stays); ``False``: the link
        itself is replaced, and what it names is left alone (for files whose
        names the package chooses, in folders it owns).
    :raises NotARegularFileError: if ``path`` (or what it links to) exists
        and is not a regular file; nothing is written.
    """
    target = _target(Path(path), follow_symlinks=follow_symlinks)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = write_temporary(target.parent, target.name, write, binary=binary, mode=_new_file_mode(target))
    try:
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise
    flush_folder(target.parent)


def stale_partial_files(folder: PathLike) -> list[Path]:
    """The temporary files directly in ``folder`` that this package's
    writers left (regular files ending in :data:`PARTIAL_SUFFIX`; never a
    link, never below a subfolder). Only a process that holds the folder's
    :class:`FolderLock`, which its writers hold while writing, may take them
    as stale and remove them."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        if _PARTIAL_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            found.append(Path(entry.path))
    return sorted(found)


class FolderLock:
    """An exclusive lock on a folder, held by one writer at a time across
    processes (an OS lock, ``flock(2)`` on the folder itself: no lock file,
    released by the OS when its process dies) and across objects of one
    process; re-entrant for the same object.

    :param folder: the folder; it must exist when the lock is taken.
    :param what: what the folder is, for messages ("task store").
    :param wait_seconds: how long to wait for another holder; ``0``: refuse
        at once.
    """

    def __init__(self, folder: PathLike, *, what: str, wait_seconds: float) -> None:
        self.folder = Path(folder)
        self.what = what
        self.wait_seconds = wait_seconds
        self._handle: int | None = None
        self._depth = 0

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._depth > 0

    def __enter__(self) -> "FolderLock":
        if self._depth == 0:
            self._handle = self._acquire()
        self._depth += 1
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._depth -= 1
        if self._depth == 0 and self._handle is not None:
            handle, self._handle = self._handle, None
            os.close(handle)  # releases the lock

    def _acquire(self) -> int:
        if fcntl is None:  # pragma: no cover - Windows
            raise OSError(f"A {self.what} needs POSIX file locks (Linux, macOS); this system has none.")
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
        handle = os.open(self.folder, flags)
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(handle)
                    raise FolderBusyError(
                        errno.EWOULDBLOCK,
                        f"Another process is writing to the {self.what} {self.folder}"
                        + (f" and did not finish within {self.wait_seconds:g} s" if self.wait_seconds else "")
                        + "; wait for it to end, or use another folder.",
                    ) from None
                time.sleep(0.05)
            except BaseException:
                os.close(handle)
                raise

    def __deepcopy__(self, memo: dict[int, Any]) -> "FolderLock":
        # A copy (a restore point's) locks the same folder, and holds nothing yet.
        return FolderLock(self.folder, what=self.what, wait_seconds=self.wait_seconds)


# --- checksums -----------------------------------------------------------------


def _feed(digest: Any, value: Any) -> None:
    """Feed ``value`` to ``digest`` unambiguously: its type, its structure
    and every byte of its tensors."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{tensor.dtype}{tuple(value.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}|".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key)
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__[0]}{len(value)}|".encode())
        for item in value:
            _feed(digest, item)
    elif value is None or isinstance(value, (bool, int, float, str)):
        text = repr(value)
        digest.update(f"{type(value).__name__}{len(text)}:{text}".encode())
    else:
        raise TypeError(f"cannot checksum a {type(value).__name__}")


def content_digest(value: Any) -> str:
    """SHA-256 of nested dicts, lists, tuples, tensors (dtype, shape and
    bytes) and plain values: the same for equal content, whatever the
    container's order or the tensors' memory layout."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


_CHECKSUM = "checksum"


def with_checksum(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with a ``"checksum"`` entry: the :func:`content_digest`
    of everything else in it."""
    return {**payload, _CHECKSUM: content_digest(payload)}


def check_checksum(payload: dict[str, Any], *, error: type[Exception], what: str, path: Any, remedy: str) -> None:
    """Refuse a payload whose content does not match its ``"checksum"``
    entry (one bit changed anywhere: a tensor, a setting, a name)."""
    recorded = payload.get(_CHECKSUM)
    content = {k: v for k, v in payload.items() if k != _CHECKSUM}
    try:
        matches = isinstance(recorded, str) and content_digest(content) == recorded
    except TypeError:
        matches = False
    if not matches:
        raise error(f"{what.capitalize()} {path} does not match its checksum: it is corrupt or was edited. {remedy}")


# --- reading -------------------------------------------------------------------


def read_bytes(path: PathLike, *, error: type[Exception], what: str, follow_symlinks: bool = True) -> bytes:
    """The bytes of the regular file at ``path``, with every way that fails
    answered by ``error`` naming the path and the cause (missing, a folder,
    a pipe or device, a link where none is followed, permission).

    :param follow_symlinks: ``False``: a symbolic link at ``path`` is
        refused, for files in folders whose names the package chooses.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    try:
        handle = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"No {what} at {path}.") from None
    except IsADirectoryError:
        raise error(f"{path} is a folder, not a {what}; give the {what}'s path.") from None
    except PermissionError:
        raise error(f"Cannot read the {what} {path}: permission denied. Give this user read access.") from None
    except OSError as cause:
        if cause.errno == errno.ELOOP:
            raise error(f"{path} is a symbolic link; a {what} there is never read through a link.") from None
        raise error(f"Cannot open the {what} {path}: {cause.strerror}.") from None
    try:
        mode = os.fstat(handle).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{path} is {_kind(mode)}, not a {what}; give the path of a regular file.")
        with os.fdopen(handle, "rb", closefd=False) as file:
            return file.read()
    except OSError as cause:
        raise error(f"Cannot read the {what} {path}: {cause.strerror or cause}.") from None
    finally:
        os.close(handle)


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _owns_its_bytes(tensor: torch.Tensor) -> bool:
    """Whether a loaded tensor declares no more elements than the storage it
    came with holds: a view with a stride of 0 (or overlapping strides) can
    declare far more than the file holds, which a later copy would
    allocate. (torch checks that every element it addresses lies in the
    storage.)"""
    return tensor.numel() * tensor.element_size() <= tensor.untyped_storage().nbytes()


def read_saved(
    path: PathLike,
    *,
    weights_only: bool,
    error: type[Exception],
    what: str,
    remedy: str,
    sha256: str | None = None,
    follow_symlinks: bool = True,
) -> Any:
    """``torch.load`` a file this package wrote, onto the CPU, checked in
    full first; every failure is ``error`` naming the file and the fix.

    :param weights_only: torch's safe loading (tensors and plain containers).
    :param what: what the file is, for the messages ("task file").
    :param remedy: what to do about a damaged file.
    :param sha256: the file's recorded SHA-256, checked before anything is
        loaded from it.
    :param follow_symlinks: see :func:`read_bytes`.
    """
    data = read_bytes(path, error=error, what=what, follow_symlinks=follow_symlinks)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise error(
            f"{what.capitalize()} {path} does not match its recorded SHA-256: it is truncated or was replaced. {remedy}"
        )
    try:
        records = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise error(f"Cannot read {what} {path}: it is truncated, corrupt or not a {what}. {remedy}") from None
    if any(record.compress_type != zipfile.ZIP_STORED for record in records):
        # torch.save never compresses: a compressed record could expand far beyond the file.
        raise error(f"{what.capitalize()} {path} holds compressed records, which torch.save never writes. {remedy}")
    try:
        loaded = torch.load(io.BytesIO(data), weights_only=weights_only, map_location="cpu")
    except Exception as exc:
        raise error(
            f"Cannot read {what} {path} ({type(exc).__name__}): it is truncated, corrupt or not a {what}. {remedy}"
        ) from exc
    if not all(_owns_its_bytes(tensor) for tensor in _tensors(loaded)):
        raise error(
            f"{what.capitalize()} {path} holds a tensor that is a view of fewer bytes than it declares; "
            f"this package never writes one. {remedy}"
        )
    return loaded


def refuse_unless_loadable(model: Any, state: dict[str, Any], *, error: type[Exception], message: str) -> None:
    """Load ``state`` into a copy of ``model`` (a module, or anything with
    ``load_state_dict`` that ``copy.deepcopy`` copies), so that a mismatch
    fails before the model itself is touched.

    :param error: raised on a mismatch, from the loading error.
    :param message: its message; ``{cause}`` is replaced by the loading error.
    """
    try:
        copy.deepcopy(model).load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as cause:
        raise error(message.format(cause=cause)) from cause
