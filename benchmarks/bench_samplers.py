"""Speed of the curriculum samplers against ``torch.utils.data.RandomSampler``.

Measures, in one run on this machine:

* the time to draw one full epoch from every sampler over ``--n`` samples (default 10,000,000), at
  epochs inside the curriculum (large pools, and the smallest stage-1 pool as the worst case), and
  the same for ``RandomSampler``; ratio = time per drawn index / RandomSampler's (target <= 1.5);
  a curriculum epoch of a static pool draws only the pool (e.g. 33% of N), a moving pool draws N;
* the cost of one ``update(loss)`` on the dynamic and hybrid samplers while an epoch is being drawn
  (one update per batch of ``--batch`` indices; the update cuts the current chunk), target <= 20 us;
* the per-step cost of drawing a batch right after an update (the price of the cut chunk);
* over a real difficulty file of ``--file-n`` x ``--file-layers`` (default 10,000,000 x 32, written
  once into ``--workdir`` without holding the table in memory): ``pickle_bytes``, the largest pickle of
  a sampler of any strategy (target <= 1 MB: the path, not the arrays), and ``rss_growth_mb``, the
  largest growth of the resident set (VmRSS: the memory-mapped primary-score column counts) from
  opening the file to a built sampler (its first epoch's pool resolved), each strategy in a fresh
  process (target <= 2x the primary-score column, ``8 * N`` bytes). Also reported, without targets:
  the anonymous-memory growth, the peak's growth, the growth after the first index is drawn (one int32
  permutation more) and ``rss_growth_all_mb``, all six samplers alive in one process.

The last line of output is one JSON object.

Usage:
    .venv/bin/python benchmarks/bench_samplers.py [--n 10000000] [--layers 12] [--repeats 3] \
        [--file-n 10000000] [--file-layers 32] [--workdir DIR] [--skip-file]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import RandomSampler

from torch_curriculum.samplers import (
    DynamicPacingSampler,
    EasyToHardSampler,
    HybridSampler,
    LayerSpecificSampler,
    LayerWiseProgressiveSampler,
    RandomOrderSampler,
)


def drain(sampler) -> float:
    t0 = time.perf_counter()
    for _ in sampler:
        pass
    return time.perf_counter() - t0


def best_of(fn, repeats: int) -> float:
    return min(fn() for _ in range(repeats))


STRATEGIES = ("random", "easy_to_hard", "layer_wise_progressive", "dynamic", "layer_specific", "hybrid")


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1000  # kB -> MB
    raise RuntimeError(f"/proc/self/status has no {key}")


def write_big_file(path: Path, n: int, layers: int) -> None:
    """A valid difficulty file of n x layers, written through memory maps (the table is never in RAM)."""
    from torch_curriculum import MetaTokenDifficultyDataset
    from torch_curriculum.dataset import read_safetensors_header, write_safetensors
    from torch_curriculum.difficulty import aggregate

    small = MetaTokenDifficultyDataset.from_distances(
        torch.rand(64, layers, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
        [f"s{i}" for i in range(64)], path.with_name("template.safetensors"), overwrite=True)
    header, _ = read_safetensors_header(small.path)
    meta = dict(header["__metadata__"])
    meta["num_samples"] = str(n)
    score_keys = [k for k in header if k.startswith("scores.")]
    table = np.lib.format.open_memmap(path.with_name("table.npy"), mode="w+", dtype=np.float64, shape=(n, layers))
    rng = np.random.default_rng(0)
    cols = {k: np.empty(n) for k in ["difficulty", *score_keys]}
    step = 1 << 18
    for a in range(0, n, step):
        b = min(a + step, n)
        chunk = rng.random((b - a, layers))
        table[a:b] = chunk
        t = torch.from_numpy(chunk)
        cols["difficulty"][a:b] = aggregate(t, "topk_mean", k=3).numpy()
        for k in score_keys:
            name = k[len("scores."):]
            method = "topk_mean" if name.startswith("top") else name
            cols[k][a:b] = aggregate(t, method, k=3).numpy()
    table.flush()
    order = np.argsort(cols["difficulty"], kind="stable")
    pct = np.empty(n)
    pct[order] = np.arange(1, n + 1) / n  # random doubles: no ties
    stage = (np.searchsorted(np.array([0.33, 0.66, 1.0]), pct, side="left") + 1).astype(np.int64)
    del order
    digits = np.arange(n, dtype=np.int64)
    ids = np.empty((n, 9), dtype=np.uint8)
    ids[:, 0] = ord("s")
    for j in range(8):
        ids[:, 8 - j] = 48 + (digits // 10**j) % 10
    tensors = {"raw_layer_diffs": table, "layer_diffs": table, "percentile": pct, "stage": stage,
               "sample_ids.utf8": ids.reshape(-1), "sample_ids.offsets": np.arange(0, 9 * n + 1, 9, dtype=np.int64),
               **cols}
    write_safetensors(path, tensors, meta)
    del table
    path.with_name("table.npy").unlink()


def child(strategy: str, path: str, all_six: bool) -> None:
    """Run in a fresh process: RSS growth of building sampler(s) over the file; prints one JSON line."""
    from torch_curriculum import CurriculumConfig, MetaTokenDifficultyDataset
    from torch_curriculum.samplers import build_sampler

    ds = MetaTokenDifficultyDataset(path)
    names = STRATEGIES if all_six else (strategy,)
    cfgs = [CurriculumConfig.from_dict({"curriculum": {"strategy": s}}) for s in names]
    rss0, hwm0, anon0 = _status_mb("VmRSS"), _status_mb("VmHWM"), _status_mb("RssAnon")
    t0 = time.perf_counter()
    samplers = [build_sampler(c, ds) for c in cfgs]  # builds the first epoch's pool (its score order)
    build_s = time.perf_counter() - t0
    rss1, hwm1, anon1 = _status_mb("VmRSS"), _status_mb("VmHWM"), _status_mb("RssAnon")
    firsts = [next(iter(s)) for s in samplers]  # drawing adds one int32 permutation per sampler
    rss2 = _status_mb("VmRSS")
    blobs = [len(pickle.dumps(s)) for s in samplers]
    print(json.dumps({"rss_growth_mb": round(rss1 - rss0, 1), "anon_growth_mb": round(anon1 - anon0, 1),
                      "peak_growth_mb": round(max(hwm1 - hwm0, 0), 1),
                      "rss_growth_first_draw_mb": round(rss2 - rss0, 1),
                      "pickle_bytes": max(blobs), "build_s": round(build_s, 2), "first": firsts[0]}))


def file_bench(n: int, layers: int, workdir: str | None) -> dict:
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_samplers_")
        workdir = tmp.name
    path = Path(workdir) / f"difficulty_{n}x{layers}.safetensors"
    if not path.exists():
        t0 = time.perf_counter()
        write_big_file(path, n, layers)
        print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s")
    column_mb = 8 * n / 1e6
    per = {}
    for name in (*STRATEGIES, "all_six"):
        out = subprocess.run([sys.executable, __file__, "--child", name, str(path)], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        per[name] = json.loads(out.stdout.strip().splitlines()[-1])
        r = per[name]
        print(f"{name:24s} rss +{r['rss_growth_mb']:.0f} MB (anonymous +{r['anon_growth_mb']:.0f}, peak "
              f"+{r['peak_growth_mb']:.0f}, after the first draw +{r['rss_growth_first_draw_mb']:.0f}), "
              f"pickle {r['pickle_bytes']} bytes, build {r['build_s']:.1f} s")
    if tmp is not None:
        tmp.cleanup()
    singles = [per[s] for s in STRATEGIES]
    return {"file": f"{n}x{layers}", "primary_column_mb": column_mb,
            "pickle_bytes": max(r["pickle_bytes"] for r in singles),
            "rss_growth_mb": max(r["rss_growth_mb"] for r in singles),
            "rss_peak_growth_mb": max(r["peak_growth_mb"] for r in singles),
            "rss_growth_first_draw_mb": max(r["rss_growth_first_draw_mb"] for r in singles),
            "rss_growth_all_mb": per["all_six"]["rss_growth_mb"], "per_strategy": per,
            "targets": {"pickle_bytes": 1_000_000, "rss_growth_mb": 2 * column_mb}}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[2] == "all_six")
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--layers", type=int, default=12, help="L (drawing cost does not depend on it; memory does)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--updates", type=int, default=20000)
    ap.add_argument("--file-n", type=int, default=10_000_000)
    ap.add_argument("--file-layers", type=int, default=32)
    ap.add_argument("--workdir", default=None, help="where the big file is written (and kept); default: a temp dir")
    ap.add_argument("--skip-file", action="store_true", help="skip the file-based pickle / RSS measurements")
    ap.add_argument("--skip-speed", action="store_true", help="skip the speed measurements")
    args = ap.parse_args()
    files = None if args.skip_file else file_bench(args.file_n, args.file_layers, args.workdir)
    if args.skip_speed:
        print(json.dumps({"file": files}))
        return

    g = torch.Generator().manual_seed(0)
    # float64, as the samplers keep it: every sampler shares this tensor instead of copying it
    d = torch.rand(args.n, args.layers, generator=g, dtype=torch.float64)
    common = dict(seed=0, curriculum_start_epoch=0, curriculum_end_epoch=5, warmup_epochs=1)

    rs = RandomSampler(range(args.n), generator=torch.Generator().manual_seed(0))
    t_random = best_of(lambda: drain(rs), args.repeats)
    print(f"RandomSampler: {t_random:.3f} s for {args.n:,} indices")

    # (name, factory, epoch): each inside its curriculum; the *_small cases have the smallest pool
    # (stage 1, 33%): a walk scans ~3 permutation entries per drawn index there, the worst case
    setups = [
        ("layer_wise_stage1_small", lambda: LayerWiseProgressiveSampler(d, **common), 1),
        ("dynamic_at_floor_small", lambda: DynamicPacingSampler(d, **common), 1),
        ("random", lambda: RandomOrderSampler(d, **common), 0),
        ("easy_to_hard", lambda: EasyToHardSampler(d, **common), 4),
        ("easy_to_hard_strict", lambda: EasyToHardSampler(d, strict_order=True, **common), 4),
        ("layer_wise_progressive", lambda: LayerWiseProgressiveSampler(d, **common), 3),
        ("dynamic", lambda: DynamicPacingSampler(d, initial_percentile=0.66, **common), 2),
        ("layer_specific", lambda: LayerSpecificSampler(d, **common), 1),
        ("hybrid", lambda: HybridSampler(d, **common), 4),
        ("after_curriculum", lambda: LayerWiseProgressiveSampler(d, **common), 5),
    ]
    results = {}
    for name, factory, epoch in setups:
        t0 = time.perf_counter()
        s = factory()
        s.set_epoch(epoch)
        len(s)
        build = time.perf_counter() - t0

        def run(s=s, epoch=epoch):
            s.set_epoch(epoch + 1000)  # fresh epoch number (same phase is not needed for timing)
            s.set_epoch(epoch)
            return drain(s)

        drain(s)  # warm the score views / caches
        t = best_of(run, args.repeats)
        per_index = t / max(len(s), 1)
        # compare per drawn index: a curriculum epoch can be shorter than N
        ratio = per_index / (t_random / args.n)
        results[name] = {"epoch_s": round(t, 4), "indices": len(s), "ratio_vs_random_sampler": round(ratio, 3),
                         "setup_s": round(build, 2), "pool_size": s.state["pool_size"]}
        print(f"{name:24s} epoch={epoch} {len(s):>10,} indices {t:.3f} s  ratio {ratio:.2f}  (setup {build:.1f} s)")

    upd = {}
    for name, cls in (("dynamic", DynamicPacingSampler), ("hybrid", HybridSampler)):
        s = cls(d, **common)
        s.set_epoch(2)
        it = iter(s)
        total_update, total_draw = 0.0, 0.0
        pc = time.perf_counter
        for i in range(args.updates):
            t0 = pc()
            for _ in range(args.batch):
                try:
                    next(it)
                except StopIteration:  # a small --n: the epoch ends; go on as a training loop would
                    it = iter(s)
                    next(it)
            t1 = pc()
            s.update(1.0 if i % 3 else 3.0)  # mostly improving, sometimes not: the pool moves every time
            t2 = pc()
            total_draw += t1 - t0
            total_update += t2 - t1
        upd[name] = {"update_us": round(total_update / args.updates * 1e6, 2),
                     "draw_batch_after_update_us": round(total_draw / args.updates * 1e6, 2),
                     "final_percentile": s.state["percentile"]}
        print(f"{name}: update() {upd[name]['update_us']:.2f} us, drawing a batch of {args.batch} after it "
              f"{upd[name]['draw_batch_after_update_us']:.1f} us")

    worst = max(r["ratio_vs_random_sampler"] for r in results.values())
    update_us = max(u["update_us"] for u in upd.values())
    out = {"n": args.n, "layers": args.layers, "random_sampler_s": round(t_random, 4),
           "worst_ratio_vs_random_sampler": worst, "update_us": update_us,
           "samplers": results, "update": upd, "targets": {"ratio": 1.5, "update_us": 20}}
    if files is not None:
        out.update(pickle_bytes=files["pickle_bytes"], rss_growth_mb=files["rss_growth_mb"],
                   rss_growth_all_mb=files["rss_growth_all_mb"], file=files)
        out["targets"].update(files["targets"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
