"""Files that are never half-written, and reading them back without
touching anything until they are known to fit."""

import copy
import hashlib
import io
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional, Type, Union

import torch
from torch import nn

__all__ = [
    "write_atomically",
    "PARTIAL_SUFFIX",
    "remove_partial_files",
    "NotARegularFileError",
    "read_saved",
    "refuse_unless_loadable",
]


PARTIAL_SUFFIX = ".partial"
"""The suffix of the temporary files :func:`write_atomically` writes: what a
process killed in the middle of a write leaves behind."""


def remove_partial_files(folder: Union[str, Path]) -> List[Path]:
    """Delete the temporary files that writers killed mid-write left below
    ``folder`` (never a finished file: those have been renamed).

    :return: the files removed.
    """
    found = sorted(Path(folder).rglob(f".*{PARTIAL_SUFFIX}")) if Path(folder).is_dir() else []
    for path in found:
        path.unlink(missing_ok=True)
    return found


class NotARegularFileError(OSError):
    """A save's target exists and is not a regular file (a folder, a device,
    a pipe or a socket): replacing it would destroy it."""


def _kind(path: Path) -> str:
    mode = path.stat().st_mode
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _target(path: Path) -> Path:
    """Where a write to ``path`` lands: through a symbolic link to the file
    it names (as most tools do, so the link stays a link); a target that
    exists must be a regular file."""
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if target.exists() and not target.is_file():
        raise NotARegularFileError(
            f"Cannot save to {path}: it is {_kind(target)}"
            + (f" ({target}, through a symbolic link)" if target != path else "")
            + ", and a save replaces its target. Give the path of a regular file."
        )
    return target


def _new_file_mode(target: Path) -> int:
    """An existing file's mode, or what the user's umask gives a new file."""
    if target.exists():
        return stat.S_IMODE(target.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: Union[str, Path], write: Callable[[IO[Any]], Any], *, binary: bool = False) -> None:
    """Write ``path`` through a temporary file in the same folder, flushed to
    disk, then renamed over it: a reader, or a run killed at any moment,
    sees either the old file or the whole new one.

    A symbolic link is written through (the file it names is replaced, the
    link stays); a new file gets the mode the user's umask gives, a replaced
    one keeps its mode.

    :param path: the file to write; its folder is created if needed.
    :param write: called with the open temporary file.
    :param binary: open the file in binary mode.
    :raises NotARegularFileError: if ``path`` (or what it links to) exists
        and is not a regular file; nothing is written.
    """
    target = _target(Path(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = _new_file_mode(target)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX)
    try:
        os.fchmod(handle, mode)
        file: IO[Any] = os.fdopen(handle, "wb") if binary else os.fdopen(handle, "w", newline="")
        with file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise


def read_saved(
    path: Union[str, Path],
    *,
    weights_only: bool,
    error: Type[Exception],
    what: str,
    remedy: str,
    sha256: Optional[str] = None,
) -> Any:
    """``torch.load`` a file this package wrote, onto the CPU, answering a
    missing or unreadable file with ``error`` naming it.

    :param weights_only: torch's safe loading (tensors and plain containers).
    :param what: what the file is, for the messages ("task file").
    :param remedy: what to do about an unreadable file.
    :param sha256: the file's recorded SHA-256, checked before anything is
        loaded from it.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise error(f"No {what} at {path}.") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise error(
            f"{what.capitalize()} {path} does not match its recorded SHA-256: it is truncated or was replaced. {remedy}"
        )
    try:
        return torch.load(io.BytesIO(data), weights_only=weights_only, map_location="cpu")
    except Exception as exc:
        raise error(
            f"Cannot read {what} {path} ({type(exc).__name__}): it is truncated, corrupt or not a {what}. {remedy}"
        ) from exc


def refuse_unless_loadable(model: nn.Module, state: Dict[str, Any], *, error: Type[Exception], message: str) -> None:
    """Load ``state`` into a copy of ``model``, so that a mismatch fails
    before the model itself is touched.

    :param error: raised on a mismatch, from the loading error.
    :param message: its message; ``{cause}`` is replaced by the loading error.
    """
    try:
        copy.deepcopy(model).load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as cause:
        raise error(message.format(cause=cause)) from cause
