"""Files that are never half-written."""

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Union

__all__ = ["write_atomically"]


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
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"newline": ""})) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
