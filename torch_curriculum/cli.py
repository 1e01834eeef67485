"""``torch-curriculum``: the command line, a thin layer over the public API.

Each sub-command lives in its own module under :mod:`torch_curriculum._cli` and exposes
``register(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int``. Those modules import
only :mod:`argparse` at module level, so ``torch-curriculum --help`` starts without torch or
transformers; the heavy imports happen inside ``run``.

User errors (a bad argument, an unreadable file, an unknown model id or column) are one line on
stderr and exit code 2, never a traceback: ``run`` raises :class:`CLIError` (or one of the library's
own input errors, listed in :data:`USER_ERRORS`), and :func:`main` prints it.

Example:
    >>> from torch_curriculum.cli import main
    >>> main(["--version"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from ._version import __version__

__all__ = ["COMMANDS", "CLIError", "build_parser", "main"]

#: sub-command name -> module under ``torch_curriculum._cli`` that implements it
COMMANDS: dict[str, str] = {
    "score": "score",
    "inspect": "inspect_file",
    "labels": "labels",
    "experiment": "experiment",
    "report": "report",
}


class CLIError(Exception):
    """A user error on the command line: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``prog: error: message``) and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _user_errors() -> tuple[type[BaseException], ...]:
    """The library's input errors, reported as one line (imported lazily: they may pull in torch)."""
    errors: list[type[BaseException]] = [CLIError, FileNotFoundError, IsADirectoryError,
                                         NotADirectoryError, PermissionError, FileExistsError]
    for module, name in (("torch_curriculum.config", "ConfigError"),
                         ("torch_curriculum.data", "DialogueFormatError"),
                         ("torch_curriculum.labels", "LabelFileError"),
                         ("torch_curriculum.dataset", "DifficultyFileError"),
                         ("torch_curriculum.data", "SampleError")):
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, name):
            errors.append(getattr(mod, name))
    return tuple(errors)


def build_parser() -> argparse.ArgumentParser:
    """The ``torch-curriculum`` parser with every sub-command registered.

    Returns:
        argparse.ArgumentParser: the top-level parser.
    """
    parser = _Parser(
        prog="torch-curriculum",
        description="Curricula from layer-wise cloud/edge meta-token differences. "
                    "Run `torch-curriculum COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in COMMANDS.values():
        try:
            mod = importlib.import_module(f"torch_curriculum._cli.{module}")
        except ModuleNotFoundError as e:  # a command still being written in this checkout
            if e.name != f"torch_curriculum._cli.{module}":
                raise
            continue
        p = mod.register(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv (Sequence[str] | None): arguments without the program name; None = ``sys.argv[1:]``.

    Returns:
        int: the exit code (0 success, 2 user error).
    """
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write(f"torch-curriculum {args.command}: interrupted\n")
        return 130
    except BrokenPipeError:
        # stdout piped into a reader that stopped early (`| head`): no traceback; silence the
        # interpreter's own flush of stdout at exit, which would raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except _user_errors() as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.stderr.write(f"torch-curriculum {args.command}: error: {msg}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
