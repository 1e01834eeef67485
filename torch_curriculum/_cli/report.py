"""``torch-curriculum report DIR``: results.json, report.md and plots from an experiment directory.

Merges every finished run in ``DIR`` (from one or several ``--shard`` processes) into
``results.json`` (needs no model), then renders ``report.md`` and ``plots/``. With
``--render-only`` it only re-renders an existing ``results.json``. With ``--status`` it writes
nothing and lists which runs have finished, are under way (or were cut off) and wait, with the
``--shard i/n`` that trains each (``--shards n``). The last line printed is one JSON object
(``results``, ``report``; with ``--status``: ``planned``, ``finished``, ``partial``, ``missing``).
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
    p.add_argument("--status", action="store_true",
                   help="write nothing; list finished, partial (under way or cut off) and waiting runs")
    p.add_argument("--shards", type=int, default=1, metavar="N",
                   help="with --status: name the --shard i/N that trains each unfinished run (default 1)")
    return p


def _print_status(st: dict) -> dict:
    """Human-readable progress on stdout; returns the JSON summary."""
    import sys

    totals = {"planned": st["planned"], "finished": st["finished"], "partial": 0, "missing": 0,
              "left_s": st["left_s"]}
    sys.stdout.write(f"{st['dir']} (preset {st['preset']}): {st['finished']} of {st['planned']} runs finished\n")
    if st["finished"] < st["planned"]:
        per = ", ".join(f"--shard {k} {v / 3600:.1f} h" for k, v in st["left_s"].items())
        unknown = f"; {st['left_unknown_runs']} run(s) without an estimate yet" if st["left_unknown_runs"] else ""
        sys.stdout.write(f"  training left, estimated from the finished runs: {per}{unknown}\n")
    for b in st["budgets"]:
        totals["partial"] += b["partial"]
        totals["missing"] += b["missing"]
        label = f"budget {b['budget']}" if b["budget"] else "runs"
        sys.stdout.write(f"  {label}: {b['finished']} of {b['planned']} finished, {b['partial']} partial, "
                         f"{b['missing']} not started\n")
        for r in b["runs"]:
            if r["state"] == "finished":
                continue
            where = (f"partial: step {r['step'] if r['step'] is not None else 0}/{r['steps']}, log written "
                     f"{r['idle_s']:.0f} s ago" if r["state"] == "partial" else "not started")
            if r["state"] == "partial" and r["step"] == r["steps"]:
                where += " (trained; its H1 evaluations are not written yet)"
            if r.get("eta_s") is not None and r["state"] == "partial":
                where += f", ~{r['eta_s'] / 60:.0f} min left at its pace"
            h = r.get("holder")
            if h and h.get("alive") is not False:
                where += f", training in pid {h.get('pid')} on {h.get('host')} since {h.get('since')}"
            elif r["state"] == "partial" and h:
                where += ", cut off (its process is gone)"
            shard = f" (--shard {r['shard']})" if st["shards"] > 1 else ""
            sys.stdout.write(f"    [{r['index']}/{b['planned']}] {r['strategy']} seed {r['seed']}: {where}{shard}\n")
    return totals


def run(args: argparse.Namespace) -> int:
    """Run the sub-command; returns the exit code."""
    import json
    import sys
    from pathlib import Path

    from ..cli import CLIError
    from ..experiments.report import build_report
    from ..experiments.results import ResultsError
    from ..experiments.runner import PresetError, collect_results, experiment_status

    d = Path(args.dir)
    if not d.is_dir():
        raise CLIError(f"{d} is not a directory")
    if args.shards != 1 and not args.status:
        raise CLIError("--shards goes with --status")
    if args.status and args.render_only:
        raise CLIError("--status and --render-only exclude each other")
    try:
        if args.status:
            summary = _print_status(experiment_status(d, shards=args.shards))
        elif args.render_only or not (d / "config.json").is_file():
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
