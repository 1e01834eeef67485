"""Kept for old commands: ``python benchmarks/convergence.py ARGS`` = ``torch-curriculum experiment ARGS``."""
import sys

from torch_curriculum.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", *sys.argv[1:]]))
