"""Placeholder replaced in the next commit (seed-schema label files)."""

from __future__ import annotations

__all__ = ["LabelFileError", "read_labels", "write_labels"]


class LabelFileError(ValueError):
    """A label file is malformed; the message names the file and the sample."""


def write_labels(*args, **kwargs):  # pragma: no cover - replaced
    raise NotImplementedError


def read_labels(*args, **kwargs):  # pragma: no cover - replaced
    raise NotImplementedError
