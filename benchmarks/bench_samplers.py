"""Speed of the curriculum samplers against ``torch.utils.data.RandomSampler``.

Measures, in one run on this machine:

* the time to draw one full epoch from every sampler over ``--n`` samples (default 10,000,000), at
  epochs inside the curriculum (large pools, and the smallest stage-1 pool as the worst case), and
  the same for ``RandomSampler``; ratio = time per drawn index / RandomSampler's (target <= 1.5);
  a curriculum epoch of a static pool draws only the pool (e.g. 33% of N), a moving pool draws N;
* the cost of one ``update(loss)`` on the dynamic and hybrid samplers while an epoch is being drawn
  (one update per batch of ``--batch`` indices; the update cuts the current chunk), target <= 20 us;
* the per-step cost of drawing a batch right after an update (the price of the cut chunk).

The last line of output is one JSON object.

Usage:
    .venv/bin/python benchmarks/bench_samplers.py [--n 10000000] [--layers 12] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--layers", type=int, default=12, help="L (drawing cost does not depend on it; memory does)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--updates", type=int, default=20000)
    args = ap.parse_args()

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
    print(json.dumps({"n": args.n, "layers": args.layers, "random_sampler_s": round(t_random, 4),
                      "worst_ratio_vs_random_sampler": worst, "update_us": update_us,
                      "samplers": results, "update": upd, "targets": {"ratio": 1.5, "update_us": 20}}))


if __name__ == "__main__":
    main()
