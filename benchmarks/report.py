"""Kept for old commands: ``python benchmarks/report.py DIR`` = ``torch-curriculum report DIR``."""
import sys

from torch_curriculum.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
