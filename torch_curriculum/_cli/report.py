"""``torch-curriculum report DIR``: results.json, report.md and plots from an experiment directory.

Merges every finished run in ``DIR`` (from one or several ``--shard`` processes) into
``results.json`` (needs no model), then renders ``report.md`` and ``plots/``. With
``--render-only`` it only re-renders an existing ``results.json``. The last line printed is one
JSON object (``results``, ``report``).
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``report`` sub-command.

    Args:
        subparsers: the top-level parser's sub-parsers.

    Returns:
        argparse.ArgumentParser: the sub-command's parser.
    """
    p = subparsers.add_parser("report", help="build results.json + report.md from an experiment directory",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("dir", metavar="DIR", help="the --out directory of `torch-curriculum experiment`")
    p.add_argument("--no-plots", action="store_true", help="Markdown report without PNGs")
    p.add_argument("--render-only", action="store_true",
                   help="re-render report.md from the existing results.json (no re-analysis)")
    return p


def run(args: argparse.Namespace) -> int:
    """Run the sub-command; returns the exit code."""
    import json
    import sys
    from pathlib import Path

    from ..cli import CLIError
    from ..experiments.report import build_report
    from ..experiments.results import ResultsError
    from ..experiments.runner import PresetError, collect_results

    d = Path(args.dir)
    if not d.is_dir():
        raise CLIError(f"{d} is not a directory")
    try:
        if args.render_only or not (d / "config.json").is_file():
            if not (d / "results.json").is_file():
                raise CLIError(f"{d} has neither config.json (an experiment directory) nor results.json")
            rep = build_report(d, plots=not args.no_plots)
            summary = {"results": str(d / "results.json"), "report": str(rep)}
        else:
            summary = collect_results(d, plots=not args.no_plots)
    except (PresetError, ResultsError) as e:
        raise CLIError(str(e)) from None
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0
