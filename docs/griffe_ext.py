"""Griffe extension for the docs build: the library's docstring dialect, read as Markdown.

* ``Example:`` (singular) becomes the Google-style ``Examples:`` section; otherwise the Google parser
  renders it as a plain admonition, so ``>>>`` lines would be Markdown text (and ``x["key"]`` a
  broken reference link).
* Sphinx roles (``:class:`X```, ``:func:`~a.b```, ``:meth:``, ``:attr:``, ``:mod:``, ``:data:``,
  ``:exc:``) become inline code ```X```: Markdown has no roles, and the raw text would show.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^([ \t]*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj):`(?P<tilde>~?)\.?(?P<name>[^`]+)`")


def _role(m: re.Match) -> str:
    name = m.group("name")
    return f"`{name.rsplit('.', 1)[-1] if m.group('tilde') else name}`"  # ~a.b.C shows C, as in Sphinx


def markdown_docstring(text: str) -> str:
    """The docstring with ``Example:`` read as ``Examples:`` and Sphinx roles as inline code.

    Example:
        >>> markdown_docstring("See :class:`~torch_curriculum.samplers.HybridSampler`.")
        'See `HybridSampler`.'
    """
    return _ROLE.sub(_role, _EXAMPLE.sub(r"\1Examples:", text))


class MarkdownDocstrings(griffe.Extension):
    """Rewrite each docstring with :func:`markdown_docstring` before it is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of every object as it is created (docstrings are parsed later)."""
        if obj.docstring is not None:
            obj.docstring.value = markdown_docstring(obj.docstring.value)
