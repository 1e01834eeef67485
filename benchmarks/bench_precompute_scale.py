"""Memory and work-dir size of precompute at the seed's shapes, with a synthetic extractor.

The extractor returns seeded random per-layer vectors of the seed's models (cloud LLaMA-3-8B:
32 layers x 4096, edge Qwen2.5-1.5B: 28 layers x 1536) instead of running them, so the benchmark
measures what the pipeline itself holds and writes: calibration pass, shards, streaming merge,
final file. Each ``N`` runs in a fresh subprocess (peak RSS = that process's ``ru_maxrss``), and the
largest work-dir size seen during the run is sampled after every shard.

Targets (issue 9): peak RSS at N = 16,384 <= 1.25 x peak RSS at N = 4,096; work dir <= 2 KB per edge
layer per sample (the old shards held both models' raw vectors: ~25 KB per layer per sample).
The last line of output is one JSON object with ``rss_ratio_16k_over_4k``,
``workdir_bytes_per_sample`` and ``peak_rss_mb``.

Usage:
    .venv/bin/python benchmarks/bench_precompute_scale.py [--sizes 4096 16384] [--shard-size 256]
    .venv/bin/python benchmarks/bench_precompute_scale.py --tiny      # seconds: small shapes, for tests
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEED_SHAPES = {"cloud": (32, 4096), "edge": (28, 1536)}
TINY_SHAPES = {"cloud": (6, 64), "edge": (4, 32)}


def _one_run(n: int, shard_size: int, shapes: dict, anchors: int) -> dict:
    """Run precompute once in this process over n synthetic samples; returns sizes and peak RSS."""
    import hashlib

    import torch
    from torch import nn

    from torch_curriculum.config import CurriculumConfig
    from torch_curriculum.extraction import MetaTokenExtractor
    from torch_curriculum.precompute import precompute

    class SyntheticExtractor(MetaTokenExtractor):
        """Seeded random ``[B, L, d]`` per prompt: the seed's shapes without running a model."""

        def __init__(self, name: str, layers: int, width: int):
            self.model = nn.Linear(1, 1)
            with torch.no_grad():
                self.model.weight.fill_(hash(name) % 97)
                self.model.bias.fill_(layers)
            self.decoder, self.tokenizer, self.pooling = self.model, name, "mean"
            self.batch_size, self.max_length, self.truncation = 64, 512, "error"
            self.device, self.dtype, self.padding_side = torch.device("cpu"), None, "right"
            self.hidden_size, self.num_model_layers, self.meta_embeddings = width, layers, None
            self.last_truncated: list[int] = []
            self.name = name

        def extract(self, prompts, *, progress=None):
            out = torch.empty(len(prompts), self.num_model_layers, self.hidden_size)
            for i, p in enumerate(prompts):
                seed = int.from_bytes(hashlib.sha256(f"{self.name}:{p}".encode()).digest()[:8], "little") >> 1
                g = torch.Generator().manual_seed(seed)
                out[i] = torch.randn(self.num_model_layers, self.hidden_size, generator=g)
            if progress is not None:
                progress(len(prompts))
            return out

    work_peak = [0]
    calib = [0]
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    out = tmp / "d.safetensors"
    work = tmp / "d.safetensors.work"

    def after_shard(_i: int) -> None:
        size = sum(p.stat().st_size for p in work.iterdir() if p.is_file())
        work_peak[0] = max(work_peak[0], size)
        cal = work / "calibration.safetensors"
        calib[0] = cal.stat().st_size if cal.exists() else calib[0]

    cfg = CurriculumConfig.from_dict({"meta_token": {"num_anchors": anchors}})
    prompts = [f"synthetic dialogue {i}" for i in range(n)]
    t0 = time.perf_counter()
    ds = precompute(prompts, SyntheticExtractor("cloud", *shapes["cloud"]), SyntheticExtractor("edge", *shapes["edge"]),
                    out, cfg, shard_size=shard_size, progress=False, _after_shard=after_shard)
    seconds = time.perf_counter() - t0
    layers = ds.num_layers
    assert len(ds) == n and bool(torch.isfinite(ds.raw_layer_diffs).all())
    result = {"n": n, "layers": layers, "seconds": round(seconds, 2), "file_bytes": out.stat().st_size,
              "workdir_peak_bytes": work_peak[0], "calibration_bytes": calib[0],
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    for p in tmp.rglob("*"):
        if p.is_file():
            p.unlink()
    for p in sorted(tmp.rglob("*"), reverse=True):
        p.rmdir()
    tmp.rmdir()
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[4096, 16384], metavar=("SMALL", "LARGE"))
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--anchors", type=int, default=64)
    ap.add_argument("--tiny", action="store_true", help="small shapes and N (a few seconds), for the tests")
    ap.add_argument("--_child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shapes = TINY_SHAPES if args.tiny else SEED_SHAPES
    if args.tiny and args.sizes == [4096, 16384]:
        args.sizes = [64, 256]
        args.shard_size = 32
        args.anchors = 16
    if args._child is not None:
        print(json.dumps(_one_run(args._child, args.shard_size, shapes, args.anchors)))
        return 0
    runs = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--_child", str(n), "--shard-size", str(args.shard_size),
               "--anchors", str(args.anchors)] + (["--tiny"] if args.tiny else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            return proc.returncode or 1
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]))
    small, large = runs
    # the work dir = the fixed-size calibration file (K anchors' vectors, independent of N) + the shards;
    # the per-sample figure counts everything at the smaller N (the worst case) and the shards alone
    per_sample = max(r["workdir_peak_bytes"] / r["n"] for r in runs)
    shards_per_sample = max((r["workdir_peak_bytes"] - r["calibration_bytes"]) / r["n"] for r in runs)
    edge_layers = large["layers"]
    result = {
        "shapes": shapes, "sizes": args.sizes, "shard_size": args.shard_size, "num_anchors": args.anchors,
        "peak_rss_mb": [small["peak_rss_mb"], large["peak_rss_mb"]],
        "rss_ratio_16k_over_4k": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "workdir_bytes_per_sample": round(per_sample, 1),
        "workdir_bytes_per_edge_layer_per_sample": round(per_sample / edge_layers, 1),
        "shard_bytes_per_sample": round(shards_per_sample, 1),
        "calibration_file_mb": round(large["calibration_bytes"] / 2**20, 2),
        "seconds": [small["seconds"], large["seconds"]],
        "targets": {"rss_ratio_max": 1.25, "workdir_bytes_per_edge_layer_per_sample_max": 2048},
    }
    result["pass"] = (result["rss_ratio_16k_over_4k"] <= 1.25
                      and result["workdir_bytes_per_edge_layer_per_sample"] <= 2048)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
