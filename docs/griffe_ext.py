"""Griffe extension for the docs build: read ``Example:`` as the Google-style ``Examples:`` section.

The library's docstrings say ``Example:`` (singular), which the Google parser would render as a plain
admonition, so ``>>>`` lines would be Markdown text (and ``x["key"]`` a broken reference link).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename a docstring's ``Example:`` section header to ``Examples:`` before it is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the header on every object as it is created (docstrings are parsed later)."""
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
