"""``torch-curriculum labels``: export a difficulty file's seed-schema label file."""

from __future__ import annotations

import argparse

HELP = "export the seed-schema labels (JSONL or JSON) of a difficulty file"


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("labels", help=HELP, description=HELP + ".\n\n  torch-curriculum labels "
                              "difficulty.safetensors --out labels.jsonl",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="a difficulty file written by `torch-curriculum score`")
    p.add_argument("--out", required=True, metavar="FILE", help="label file to write (.jsonl or .json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing label file")
    return p


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from ..cli import CLIError
    from ..dataset import MetaTokenDifficultyDataset

    out = Path(args.out)
    if out.suffix.lower() not in (".jsonl", ".json"):
        raise CLIError(f"--out {args.out}: the label file must end in .jsonl or .json")
    if out.exists() and not args.overwrite:
        raise CLIError(f"--out {args.out}: exists; pass --overwrite to replace it")
    ds = MetaTokenDifficultyDataset(args.file)
    path = ds.write_labels(out, overwrite=args.overwrite)
    sys.stdout.write(f"wrote {len(ds)} labels to {path}\n")
    return 0
