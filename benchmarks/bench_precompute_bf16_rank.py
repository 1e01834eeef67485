"""How much bf16 moves the difficulty ranking: fp32 vs bf16 precompute on the bundled models.

Runs :func:`torch_curriculum.precompute.precompute` twice over the same ``--n`` real dialogues
(Synthetic-Persona-Chat CSV when present, else chitchat) with the bundled SmolLM2-135M edge and
Qwen2.5-0.5B cloud, once in fp32 and once with bf16 autocast, and compares the primary scores
(Spearman rank correlation), the per-layer raw distances (median relative difference) and the
stages (fraction of samples whose stage changes). The last line of output is one JSON object.

Usage:
    .venv/bin/python benchmarks/bench_precompute_bf16_rank.py [--n 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from torch_curriculum.config import CurriculumConfig
from torch_curriculum.precompute import precompute

SPC_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "synthetic-persona-chat" / \
    "Synthetic-Persona-Chat_valid.csv"


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho with average ranks for ties (as scipy.stats.spearmanr)."""
    def rank(x):
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(1, len(x) + 1)
        for v in np.unique(x):  # average ranks of ties
            m = x == v
            if m.sum() > 1:
                r[m] = r[m].mean()
        return r

    ra, rb = rank(a), rank(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    warnings.simplefilter("ignore", UserWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    from torch_curriculum.bundled import load_bundled
    from torch_curriculum.data import read_dialogues

    if SPC_CSV.is_file():
        samples = read_dialogues(SPC_CSV, max_samples=args.n)
    else:
        from torch_curriculum.bundled import load_chitchat

        samples = load_chitchat(max_samples=args.n)
    cloud, edge = load_bundled("cloud"), load_bundled("edge")
    cfg = CurriculumConfig.from_dict({"meta_token": {"batch_size": args.batch_size, "max_length": 256,
                                                     "num_anchors": min(32, len(samples))}})
    out, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            t0 = time.perf_counter()
            ds = precompute(samples, cloud, edge, Path(tmp) / f"{name}.safetensors", cfg, progress=False, dtype=dtype)
            seconds[name] = round(time.perf_counter() - t0, 2)
            out[name] = {"difficulty": ds.difficulty.numpy().copy(), "raw": ds.raw_layer_diffs.numpy().copy(),
                         "stage": ds.stage.numpy().copy()}
    a, b = out["fp32"], out["bf16"]
    rel = np.abs(a["raw"] - b["raw"]) / np.maximum(np.abs(a["raw"]), 1e-12)
    per_layer = [spearman(a["raw"][:, j], b["raw"][:, j]) for j in range(a["raw"].shape[1])]
    result = {"n_samples": len(samples), "torch_threads": torch.get_num_threads(), "seconds": seconds,
              "spearman_primary_score_fp32_vs_bf16": round(spearman(a["difficulty"], b["difficulty"]), 4),
              "spearman_raw_per_layer_min": round(min(per_layer), 4),
              "spearman_raw_per_layer_median": round(float(np.median(per_layer)), 4),
              "raw_relative_difference_median": float(f"{np.median(rel):.3g}"),
              "stage_changed_fraction": round(float((a["stage"] != b["stage"]).mean()), 4)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
