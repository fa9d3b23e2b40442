"""Writing a file so that a crash never leaves half of one: a temporary file, then a rename.

Every result, cache entry, checkpoint and device state fededge writes goes
through :func:`atomic_write`: the content goes to a temporary file in the
target's folder, which then replaces the target in one :func:`os.replace`, so
a reader (or a resumed run) sees the old file or the new one, never a part.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]


def atomic_write(path: Path, write: Callable[[BinaryIO], object], *, mode: int = 0o644) -> None:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, then move it there.

    The file gets permissions ``mode`` (a temporary file's own 0600 would hide
    a shared cache from other users); on any failure the temporary file is
    removed and ``path`` is left as it was.

    Raises
    ------
    FileNotFoundError
        If ``path``'s folder does not exist.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode())
