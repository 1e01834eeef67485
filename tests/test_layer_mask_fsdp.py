"""LayerMaskScheduler under FSDP2 (``fully_shard``) on 2 real gloo CPU processes.

FSDP2 keeps the sharded DTensor parameters as the module's parameters and copies their
``requires_grad`` to the gathered copy at each unshard, so per-layer freezing works: this test
freezes and unfreezes layers step by step and checks, on the gathered full tensors, that exactly the
requested layers moved (frozen ones bit-identical, under AdamW with weight decay) and that both
ranks agree. FSDP1 (``FullyShardedDataParallel``) is refused with a clear error.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _dist import exit_worker

pytestmark = pytest.mark.distributed

pytest.importorskip("transformers")
fsdp = pytest.importorskip("torch.distributed.fsdp")
if not hasattr(fsdp, "fully_shard"):
    pytest.skip("this torch has no FSDP2 (torch.distributed.fsdp.fully_shard)", allow_module_level=True)

WORLD = 2
PLAN = {0: [0], 1: [0], 2: [1, 2], 3: [1, 2], 4: [0], 5: None}  # step -> trainable layers


def _worker(rank: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous')}",
                            rank=rank, world_size=WORLD)
    try:
        from _hf_parts import tiny_llama
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        from torch_curriculum import LayerMaskScheduler

        record: dict = {"moved": [], "layers": []}
        mesh = init_device_mesh("cpu", (WORLD,))
        model = tiny_llama()
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        sched = LayerMaskScheduler(model, lambda step: PLAN[step], optimizer=opt, unfreeze="reset")
        g = torch.Generator().manual_seed(100 + rank)  # each rank its own data, as in training
        for _ in PLAN:
            before = {n: p.detach().full_tensor().clone() for n, p in model.named_parameters()}
            record["layers"].append(sched.step())
            ids = torch.randint(3, 64, (2, 8), generator=g)
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
            after = {n: p.detach().full_tensor() for n, p in model.named_parameters()}
            record["moved"].append(sorted({int(n.split("layers.")[1].split(".")[0]) for n in before
                                           if ".layers." in n and not torch.equal(before[n], after[n])}))
        record["digest"] = float(sum(p.detach().full_tensor().double().sum() for p in model.parameters()))
        record["num_resets"] = sched.num_resets

        from torch.distributed.fsdp import FullyShardedDataParallel

        try:
            wrapped = FullyShardedDataParallel(tiny_llama(), device_id=torch.device("cpu"))
        except Exception as e:  # FSDP1 could not even wrap on this build: nothing to refuse
            record["fsdp1"] = f"wrap failed: {type(e).__name__}"
        else:
            try:
                LayerMaskScheduler(wrapped, lambda step: None)
                record["fsdp1"] = "accepted"
            except NotImplementedError as e:
                record["fsdp1"] = str(e)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(record, f)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    exit_worker()


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2")
    mp.spawn(_worker, args=(str(out),), nprocs=WORLD, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def test_fsdp2_freezes_exactly_the_requested_layers(fsdp_run):
    for rec in fsdp_run:
        assert rec["layers"] == [PLAN[s] for s in PLAN]
        # a frozen layer does not move; a re-unfrozen one (layer 0 at step 4) trains again
        assert rec["moved"] == [[0], [0], [1, 2], [1, 2], [0], [0, 1, 2, 3]]
        assert rec["num_resets"] > 0  # layer 0's AdamW state was reset when it came back
    assert fsdp_run[0]["digest"] == fsdp_run[1]["digest"]  # the ranks hold one model


def test_fsdp1_is_refused_with_the_reason(fsdp_run):
    for rec in fsdp_run:
        if rec["fsdp1"].startswith("wrap failed"):
            pytest.skip(f"FSDP1 cannot wrap a CPU model here ({rec['fsdp1']})")
        assert "does not support FSDP (FullyShardedDataParallel)" in rec["fsdp1"]
