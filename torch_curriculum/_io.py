"""Atomic file writes: a temp file in the target's folder, fsync, then ``os.replace``.

A reader (or a resumed run, or a second ``--shard`` process writing the same file) sees either the
old file or the complete new one, never a torn write; a failure removes the temp file. Temp names
are unique per call (``.<name>.<random>.tmp``), so concurrent writers never share one. The file
gets the permissions a plain ``open(path, "w")`` would (0666 less the umask), not ``mkstemp``'s
owner-only 0600, so collaborators can read what a run wrote.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_path", "atomic_write", "atomic_write_text"]


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new, exclusive temp file in ``path``'s folder: (fd open for writing, its name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            # mode 0o666: the OS applies the umask, as for any new file
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name beside {path}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path (same folder) to write by name; it replaces ``path`` when the block ends.

    For writers that take a file name, not a file object (``safetensors.torch.save_file``,
    ``np.savez`` without its suffix added, ``fig.savefig``). The file is fsynced before the rename.

    Example:
        >>> with atomic_path("model.safetensors") as tmp:  # doctest: +SKIP
        ...     save_file(tensors, str(tmp))
    """
    path = Path(path)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Open a binary temp file that replaces ``path`` when the ``with`` block ends without error.

    Example:
        >>> with atomic_write("out.bin") as f:  # doctest: +SKIP
        ...     f.write(b"data")
    """
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path`` as a Path.

    Example:
        >>> atomic_write_text("config.json", "{}")  # doctest: +SKIP
    """
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))
    return Path(path)
