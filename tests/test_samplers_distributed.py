"""Samplers under real torch.distributed (gloo, 2 CPU processes): world size and rank come from the
process group, ranks get disjoint slices of one sequence, and every rank makes the same pacing
decisions when fed the same (all-reduced) loss."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _dist import exit_worker

pytestmark = pytest.mark.distributed

WORLD = 2
BATCH = 4  # per rank
STEPS = 30
NAMES = ["RandomOrderSampler", "EasyToHardSampler", "LayerWiseProgressiveSampler", "DynamicPacingSampler",
         "LayerSpecificSampler", "HybridSampler"]
KWARGS = {"EasyToHardSampler": {"pacing": "step", "steps_per_epoch": 6},
          "LayerSpecificSampler": {"pacing": "step", "steps_per_epoch": 5},
          "LayerWiseProgressiveSampler": {"pacing": "step", "steps_per_epoch": 5}}


def _table() -> torch.Tensor:
    return torch.rand(53, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _local_loss(rank: int, step: int) -> float:
    # the ranks see different losses; only their mean (all_reduce) is the same on both
    return [1.0, 2.9][rank] + 0.6 * ((step * 5 + rank) % 3) - 0.5


def _run(name: str, sampler_factory, loss_of_step) -> tuple[list[list[int]], list[dict]]:
    """Draw STEPS batches across epoch boundaries, updating after every batch."""
    s = sampler_factory()
    indices, states = [], []
    it, epoch = iter(s), 0
    step = 0
    while step < STEPS:
        batch = []
        for x in it:
            batch.append(x)
            if len(batch) == s._batch:
                break
        if not batch:  # epoch ended: next epoch
            epoch += 1
            s.set_epoch(epoch)
            it = iter(s)
            continue
        indices.append(batch)
        s.update(loss_of_step(step))
        step += 1
        st = s.state
        states.append({k: st[k] for k in ("epoch", "step", "percentile", "stage", "pool_size", "active_layers",
                                          "current_layer")})
    return indices, states


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch_curriculum.samplers as S

    early = S.EasyToHardSampler(_table(), seed=8)  # built before the group exists: one replica
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        out = {}
        try:
            list(early)
            out["early_error"] = None
        except RuntimeError as e:  # every rank would draw the same data: refused
            out["early_error"] = str(e)
        for name in NAMES:
            def factory(name=name):
                s = getattr(S, name)(_table(), seed=8, **KWARGS.get(name, {}))  # world from dist
                s._batch = BATCH
                return s

            def loss_of_step(step):
                t = torch.tensor([_local_loss(rank, step)], dtype=torch.float64)
                dist.all_reduce(t)
                return float(t) / WORLD

            s = factory()
            idx, states = _run(name, factory, loss_of_step)
            out[name] = {"world": [s.num_replicas, s.rank], "indices": idx, "states": states}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()
    exit_worker()  # see its docstring: torch's gloo exit race, not ours


def test_two_gloo_ranks_share_one_sequence_and_every_decision(tmp_path):
    import torch_curriculum.samplers as S

    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    recs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for r, rec in enumerate(recs):
        assert rec["early_error"] is not None and "num_replicas=1, rank=0" in rec["early_error"]
        assert f"world size 2 on rank {r}" in rec["early_error"]
    for name in NAMES:
        a, b = recs[0][name], recs[1][name]
        assert a["world"] == [2, 0] and b["world"] == [2, 1]
        # identical pacing decisions (percentile, stage, pool, layers) after every step
        assert a["states"] == b["states"], name
        assert [len(x) for x in a["indices"]] == [len(x) for x in b["indices"]]
        if name != "RandomOrderSampler":  # the pacing state really moved during the run
            moved = {(s["percentile"], s["stage"], s["current_layer"]) for s in a["states"]}
            assert len(moved) > 2, (name, moved)

        # the ranks' slices interleave into the sequence one process draws with the same losses
        def factory(name=name):
            s = getattr(S, name)(_table(), seed=8, num_replicas=1, rank=0, **KWARGS.get(name, {}))
            s._batch = BATCH * WORLD
            return s

        mean_loss = lambda step: sum(_local_loss(r, step) for r in range(WORLD)) / WORLD  # noqa: E731
        ref_idx, ref_states = _run(name, factory, mean_loss)
        assert [s["percentile"] for s in ref_states] == pytest.approx([s["percentile"] for s in a["states"]])
        # compare epoch by epoch (a rank's epoch is ceil(pool / 2) draws; padding can differ at the end)
        for epoch in sorted({s["epoch"] for s in a["states"]}):
            ra = [i for i, s in zip(a["indices"], a["states"]) if s["epoch"] == epoch]
            rb = [i for i, s in zip(b["indices"], b["states"]) if s["epoch"] == epoch]
            rr = [i for i, s in zip(ref_idx, ref_states) if s["epoch"] == epoch]
            inter = [x for ba, bb in zip(ra, rb) for pair in zip(ba, bb) for x in pair]
            ref = [x for batch in rr for x in batch]
            n = min(len(inter), len(ref))
            assert inter[:n] == ref[:n], (name, epoch)
            if name == "RandomOrderSampler":
                # a static pool: disjoint slices that together cover the data set; 53 is odd, so
                # DistributedSampler-style padding adds one repeated sample at the end of the epoch
                flat_a, flat_b = [x for c in ra for x in c], [x for c in rb for x in c]
                if len(flat_a) == 27:  # a complete epoch
                    assert len(flat_b) == 27 and set(flat_a).isdisjoint(flat_b[:26])
                    assert set(flat_a) | set(flat_b) == set(range(53))

