"""``torch-curriculum experiment``: every curriculum strategy vs. random over seeds (H1-H3).

Runs are independent and resumable (a finished run is never redone); ``--shard i/n`` lets n
processes or machines split the runs of one results directory, and ``torch-curriculum report DIR``
merges what they wrote. The last line printed is one JSON object (``results``, ``report``,
``runs_trained``, ``runs_skipped``, ``runs_busy``, ``wall_s``). Each run is locked while it trains
(``runs/<strategy>/seed<k>.jsonl.lock``): a second process reaching a run another one is training
leaves it to that process and goes on.
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]

_EPILOG = """\
presets shipped with the package: cpu (clean chitchat, bundled models), noisy (the positive control),
smoke (tiny random models, seconds), gpu (LLaMA-3-8B / Qwen2.5-1.5B). A user config is a YAML file
with the same keys; models are `bundled`, an HF id or a local folder; data is any file read_dialogues
accepts. Example:
  torch-curriculum experiment --config noisy --out results/noisy --shard 1/2   # and 2/2 elsewhere
  torch-curriculum report results/noisy
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``experiment`` sub-command.

    Args:
        subparsers: the top-level parser's sub-parsers.

    Returns:
        argparse.ArgumentParser: the sub-command's parser.
    """
    p = subparsers.add_parser("experiment", help="run (or resume) the curriculum-vs-random experiments of a preset",
                              description=__doc__.split("\n\n")[0], epilog=_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, metavar="PRESET|FILE.yaml",
                   help="a shipped preset name (cpu, noisy, smoke, gpu) or a preset YAML file")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="results directory (default ./experiment-results/<preset>)")
    p.add_argument("--shard", default=None, metavar="i/n",
                   help="train only runs i, i+n, i+2n, ... of the plan (1-based); default all")
    p.add_argument("--data", default=None, metavar="FILE", help="dialogue file overriding data.source")
    p.add_argument("--seeds", default=None, metavar="S,S,...", help="seeds overriding the preset's")
    p.add_argument("--threads", type=int, default=None, help="torch threads (overrides the preset)")
    p.add_argument("--no-report", action="store_true", help="write results.json only")
    p.add_argument("--no-plots", action="store_true", help="Markdown report without PNGs")
    p.add_argument("--quiet", action="store_true", help="no progress log on stderr")
    return p


def run(args: argparse.Namespace) -> int:
    """Run the sub-command; returns the exit code."""
    import json
    import logging
    import sys
    from pathlib import Path

    from ..cli import CLIError
    from ..experiments.runner import PresetError, parse_shard, resolve_preset, run_preset

    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        cfg, path = resolve_preset(args.config, data=args.data, seeds=args.seeds, threads=args.threads)
        shard = parse_shard(args.shard)
    except PresetError as e:
        raise CLIError(str(e)) from None
    out = Path(args.out) if args.out else Path("experiment-results") / cfg["preset"]
    try:
        summary = run_preset(cfg, out, report=not args.no_report, plots=not args.no_plots, config_path=str(path),
                             shard=shard)
    except PresetError as e:
        raise CLIError(str(e)) from None
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0
