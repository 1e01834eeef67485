"""Lazy imports of optional dependencies, failing with a message that names the pip extra."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, extra: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise an ImportError that says which extra installs it.

    Args:
        module (str): importable module name, e.g. ``"gguf"``.
        extra (str): the extra of torch_curriculum that provides it, e.g. ``"examples"``.
        purpose (str): what it is needed for, shown in the message.

    Raises:
        ImportError: the module is not installed.

    Example:
        >>> np = require("numpy", "core")
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        why = f" (needed for {purpose})" if purpose else ""
        raise ImportError(f"{module!r} is not installed{why}; install it with "
                          f"`pip install 'torch_curriculum[{extra}]'`") from e
