"""What the Trainer integration's loader costs: ``CurriculumDataLoader`` against a plain DataLoader.

Over a random ``[N, L]`` table (default 200,000 x 8) and an index-only data set (so only the
loading machinery is timed, not a model or real data), measures for three curriculum epochs of an
``EasyToHardSampler``:

* ``plain_s``: ``DataLoader(ds, sampler=s, batch_size=B)`` with ``s.set_epoch(e)`` per epoch;
* ``stream_s``: the same batches through ``CurriculumDataLoader`` (what ``CurriculumTrainer`` gives
  the Trainer); ``overhead_ratio = stream_s / plain_s``, target <= 1.2;
* ``state_dict_us``: one ``CurriculumDataLoader.state_dict()`` mid-epoch (what every checkpoint
  pays), and ``state_json_bytes``, the size of its JSON.

The batches are checked identical; each timing is the fastest of ``--repeats`` alternating runs. The last line of output is one JSON object.

Usage:
    .venv/bin/python benchmarks/bench_hf_loader.py [--n 200000] [--layers 8] [--batch 32]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from torch_curriculum.integrations.hf import CurriculumDataLoader
    from torch_curriculum.samplers import EasyToHardSampler

    table = torch.rand(args.n, args.layers, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    data = range(args.n)

    def collate(batch):
        return torch.tensor(batch)

    def sampler():
        return EasyToHardSampler(table, curriculum_end_epoch=args.epochs, warmup_epochs=0, seed=1)

    def run_plain():
        s, out = sampler(), []
        for e in range(args.epochs):
            s.set_epoch(e)
            out.extend(torch.utils.data.DataLoader(data, sampler=s, batch_size=args.batch,
                                                   collate_fn=collate))
        return out

    def run_stream(count):
        loader = CurriculumDataLoader(data, sampler(), batch_size=args.batch, collate_fn=collate)
        return list(itertools.islice(iter(loader), count))

    # alternate and keep the fastest of each (a shared machine's noise only ever adds time)
    plain_s = stream_s = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        plain = run_plain()
        plain_s = min(plain_s, time.perf_counter() - t0)
        t0 = time.perf_counter()
        stream = run_stream(len(plain))
        stream_s = min(stream_s, time.perf_counter() - t0)
    same = len(stream) == len(plain) and all(torch.equal(a, b) for a, b in zip(plain, stream))

    mid = CurriculumDataLoader(data, sampler(), batch_size=args.batch, collate_fn=collate)
    it = iter(mid)
    for _ in range(len(plain) // (2 * args.epochs)):
        next(it)
    reps = 200
    t0 = time.perf_counter()
    for _ in range(reps):
        state = mid.state_dict()
    state_us = (time.perf_counter() - t0) / reps * 1e6
    out = {"bench": "hf_loader", "n": args.n, "layers": args.layers, "batch": args.batch,
           "epochs": args.epochs, "batches": len(plain), "identical_batches": same,
           "plain_s": round(plain_s, 3), "stream_s": round(stream_s, 3),
           "overhead_ratio": round(stream_s / plain_s, 3), "state_dict_us": round(state_us, 1),
           "state_json_bytes": len(json.dumps(state)),
           "ok": bool(same and stream_s / plain_s <= 1.2)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
