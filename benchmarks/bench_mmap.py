"""Opening a 1,000,000 x 32 difficulty file: time and RSS growth (it must be memory-mapped, not read).

Writes the file once with ``MetaTokenDifficultyDataset.from_distances`` (random distances), then, in
a fresh Python process (so the writer's memory does not blur the numbers), measures

* ``open_ms``: ``MetaTokenDifficultyDataset(path)`` (header parsed, metadata checked against its
  checksums, no tensor data read); target < 50 ms;
* ``unverified_map_ms``: with ``verify=False``, opening plus fetching the ``layer_diffs``,
  ``raw_layer_diffs``, ``difficulty`` and ``stage`` tensors (mapped, not touched); target < 50 ms;
* ``first_access_ms``: the same fetch with the default ``verify=True``: each tensor's checksum is
  verified on first access (one pass over its bytes with ``pread``, several threads for large
  tensors), so this grows with the file; ``verify_mb_per_s`` is the resulting throughput;
* ``rss_growth_mb``: resident memory after the verified fetch minus before; target < 20 MB;
* for scale: the time and RSS growth of touching one row, and of a full pass over ``difficulty``.

The last line of output is one JSON object.

Usage:
    .venv/bin/python benchmarks/bench_mmap.py [--n 1000000] [--layers 32] [--path FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEASURE = r"""
import json, os, sys, time
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
from torch_curriculum.dataset import MetaTokenDifficultyDataset
import torch  # imported before the baseline so that only the open is measured
r0 = rss()
tu = time.perf_counter()
unverified = MetaTokenDifficultyDataset(sys.argv[1], verify=False)
_ = (unverified.layer_diffs, unverified.raw_layer_diffs, unverified.difficulty, unverified.stage)
tu = time.perf_counter() - tu
del unverified, _
t0 = time.perf_counter()
ds = MetaTokenDifficultyDataset(sys.argv[1])
t_open = time.perf_counter()
tensors = (ds.layer_diffs, ds.raw_layer_diffs, ds.difficulty, ds.stage)
t1 = time.perf_counter()
r1 = rss()
verified_mb = sum(t.numel() * t.element_size() for t in tensors) / 2**20
row = ds.layer_diffs[123456 % len(ds)].clone()
t2 = time.perf_counter()
r2 = rss()
mean = float(ds.difficulty.mean())
t3 = time.perf_counter()
r3 = rss()
print(json.dumps({"open_ms": (t_open - t0) * 1e3, "unverified_map_ms": tu * 1e3,
                  "first_access_ms": (t1 - t_open) * 1e3, "verify_mb_per_s": verified_mb / max(t1 - t_open, 1e-9),
                  "rss_growth_mb": r1 - r0, "row_ms": (t2 - t1) * 1e3,
                  "rss_after_row_mb": r2 - r0, "full_difficulty_pass_ms": (t3 - t2) * 1e3,
                  "rss_after_difficulty_pass_mb": r3 - r0, "shape": list(tensors[0].shape)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--path", type=Path, default=None, help="reuse/keep the file here (default: a temp dir)")
    args = ap.parse_args()

    import torch

    from torch_curriculum.dataset import MetaTokenDifficultyDataset

    with tempfile.TemporaryDirectory() as tmp:
        path = args.path or Path(tmp) / "mmap_bench.safetensors"
        t0 = time.perf_counter()
        if not path.exists():
            g = torch.Generator().manual_seed(0)
            raw = torch.rand(args.n, args.layers, generator=g, dtype=torch.float64)
            MetaTokenDifficultyDataset.from_distances(raw, [f"s{i:07d}" for i in range(args.n)], path)
            del raw
        write_s = time.perf_counter() - t0
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        out = subprocess.run([sys.executable, "-c", MEASURE, str(path)], env=env, capture_output=True,
                             text=True, check=True)
        m = json.loads(out.stdout.strip().splitlines()[-1])
        result = {
            "n": args.n,
            "layers": args.layers,
            "file_mb": round(path.stat().st_size / 2**20, 1),
            "write_s": round(write_s, 2),
            **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in m.items()},
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
