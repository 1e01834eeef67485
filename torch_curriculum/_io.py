"""Atomic file writes: a temp file in the target's folder, fsync, then ``os.replace``.

A reader (or a resumed run) sees either the old file or the complete new one, never a torn write;
a failure removes the temp file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write"]


@contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Open a binary temp file that replaces ``path`` when the ``with`` block ends without error.

    Example:
        >>> with atomic_write("out.bin") as f:  # doctest: +SKIP
        ...     f.write(b"data")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
