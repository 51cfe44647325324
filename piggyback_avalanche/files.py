"""Files that are never half-written, and reading them back without
touching anything until they are known to fit."""

import copy
import io
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Dict, Type, Union

import torch
from torch import nn

__all__ = ["write_atomically", "read_saved", "refuse_unless_loadable"]


def write_atomically(path: Union[str, Path], write: Callable[[IO[Any]], Any], *, binary: bool = False) -> None:
    """Write ``path`` through a temporary file in the same folder, flushed to
    disk, then renamed over it: a reader, or a run killed at any moment,
    sees either the old file or the whole new one.

    :param path: the file to write; its folder is created if needed.
    :param write: called with the open temporary file.
    :param binary: open the file in binary mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        file: IO[Any] = os.fdopen(handle, "wb") if binary else os.fdopen(handle, "w", newline="")
        with file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def read_saved(path: Union[str, Path], *, weights_only: bool, error: Type[Exception], what: str, remedy: str) -> Any:
    """``torch.load`` a file this package wrote, onto the CPU, answering a
    missing or unreadable file with ``error`` naming it.

    :param weights_only: torch's safe loading (tensors and plain containers).
    :param what: what the file is, for the messages ("task file").
    :param remedy: what to do about an unreadable file.
    """
    try:
        return torch.load(io.BytesIO(Path(path).read_bytes()), weights_only=weights_only, map_location="cpu")
    except FileNotFoundError:
        raise error(f"No {what} at {path}.") from None
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
