"""PacingCallback and CurriculumTrainer under real torch.distributed (gloo, 2 CPU processes)."""

from __future__ import annotations

import itertools
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _dist import exit_worker

pytestmark = pytest.mark.distributed

WORLD = 2
N_SAMPLES = 40
N_LAYERS = 4
# rank 0 sees easy batches, rank 1 hard ones; their mean crosses the threshold (2.0) differently
# from either rank alone, so only the all_reduce can make the two ranks agree with the reference
LOSSES = {0: [1.0, 1.2, 0.8, 1.9, 1.0, 3.5, 0.7, 1.1],
          1: [2.6, 2.9, 3.4, 2.2, 2.4, 3.9, 2.5, 2.7]}


def _table() -> torch.Tensor:
    return torch.rand(N_SAMPLES, N_LAYERS, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def _pacing_part(rank: int, out_dir: str) -> None:
    from torch_curriculum.callbacks import PacingCallback
    from torch_curriculum.samplers import DynamicPacingSampler

    sampler = DynamicPacingSampler(_table(), warmup_epochs=0, seed=4)  # rank/replicas from dist
    pacing = PacingCallback(sampler, smoothing=0.5)
    record = {"num_replicas": sampler.num_replicas, "rank": sampler.rank, "fed": [],
              "percentile": [], "indices": []}
    it = iter(sampler)
    for loss in LOSSES[rank]:
        record["indices"].append(next(it))
        # a 0-d tensor, as a training loop has it
        record["fed"].append(pacing(torch.tensor(loss)))
        record["percentile"].append(sampler.state["percentile"])
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    """One process group for both checks (process start-up and imports dominate the run time)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)  # two processes on a 2-core box
    # a file rendezvous: no TCP port to race for with other tests running at the same time
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous')}",
                            rank=rank, world_size=WORLD)
    try:
        _pacing_part(rank, out_dir)
        _trainer_part(rank, out_dir)  # accelerate reuses the initialised process group
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    exit_worker()  # see its docstring: torch's gloo exit race, not ours


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out


def test_loss_is_averaged_over_ranks_so_every_rank_paces_the_same(ddp_run):
    recs = [json.loads((ddp_run / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [(r["num_replicas"], r["rank"]) for r in recs] == [(2, 0), (2, 1)]
    # identical decisions on both ranks although each saw different losses
    assert recs[0]["fed"] == recs[1]["fed"]
    assert recs[0]["percentile"] == recs[1]["percentile"]

    from torch_curriculum.callbacks import PacingCallback
    from torch_curriculum.samplers import DynamicPacingSampler

    def single(losses):
        s = DynamicPacingSampler(_table(), warmup_epochs=0, seed=4, num_replicas=1, rank=0)
        cb = PacingCallback(s, smoothing=0.5)
        out = []
        for x in losses:
            cb(x)
            out.append(s.state["percentile"])
        return out

    means = [(a + b) / 2 for a, b in zip(LOSSES[0], LOSSES[1])]
    assert recs[0]["percentile"] == pytest.approx(single(means), abs=1e-12)
    # the test can fail: rank 1 alone would have paced differently
    assert single(LOSSES[1]) != pytest.approx(recs[1]["percentile"])
    # every index either rank drew lies within the percentile in force when it was drawn (the
    # initial one, then the one set by the previous update): the shared decisions drove both ranks
    from torch_curriculum.difficulty import aggregate, percentiles

    pct = percentiles(aggregate(_table(), "topk_mean", k=3))
    in_force = [DynamicPacingSampler(_table(), warmup_epochs=0).state["percentile"],
                *recs[0]["percentile"][:-1]]
    for rec in recs:
        assert all(pct[i] <= p + 1e-12 for i, p in zip(rec["indices"], in_force)), rec["indices"]
    assert max(in_force) > in_force[0]  # the pool did move


def _trainer_run(rank: int, out_dir: str, run: str, resume: str | None = None,
                 strategy: str = "layer_wise_progressive") -> dict:
    """One CurriculumTrainer run of a PEFT LoRA llama under DDP (accelerate, gloo)."""
    import hashlib

    import peft
    from _hf_parts import BatchRecorder, TokenDataset, tiny_llama
    from safetensors.torch import save_file
    from transformers import TrainerCallback, TrainingArguments

    from torch_curriculum import CurriculumTrainer, LayerMaskScheduler
    from torch_curriculum.samplers import (
        DynamicPacingSampler,
        EasyToHardSampler,
        LayerWiseProgressiveSampler,
    )

    def lora_digest(model) -> dict[int, str]:
        out: dict[int, hashlib._Hash] = {}
        for name, p in model.named_parameters():
            if "lora_" in name:
                layer = int(name.split("layers.")[1].split(".")[0])
                out.setdefault(layer, hashlib.sha256()).update(p.detach().numpy().tobytes())
        return {k: h.hexdigest() for k, h in sorted(out.items())}

    class EpochEnds(TrainerCallback):
        """LoRA digests at the start and at every curriculum epoch end (state.epoch whole)."""

        def __init__(self, model):
            self.model, self.digests, self.steps = model, [lora_digest(model)], []

        def on_step_end(self, args, state, control, **kwargs):
            if state.epoch == int(state.epoch):
                self.digests.append(lora_digest(self.model))
                self.steps.append(state.global_step)

    args = TrainingArguments(output_dir=os.path.join(out_dir, run), per_device_train_batch_size=2,
                             num_train_epochs=3, logging_steps=1, report_to=[], use_cpu=True,
                             ddp_backend="gloo", save_strategy="steps", save_steps=3,
                             disable_tqdm=True, dataloader_num_workers=0, seed=0, weight_decay=0.1,
                             learning_rate=1e-2)
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["gate_proj", "up_proj", "down_proj"]))
    ds = TokenDataset(N_SAMPLES)
    kw = dict(curriculum_start_epoch=0, curriculum_end_epoch=3, warmup_epochs=0, seed=9)
    # built after init: they read rank/world from dist
    if strategy == "layer_wise_progressive":
        sampler = LayerWiseProgressiveSampler(_table(), **kw)
    elif strategy == "easy_to_hard":
        sampler = EasyToHardSampler(_table(), **kw)
    else:  # the rank-averaged loss (~4.1) sits near the threshold: the pool moves both ways
        sampler = DynamicPacingSampler(_table(), loss_threshold=4.12, difficulty_step_up=0.1,
                                       difficulty_step_down=0.05, warmup_epochs=0, seed=9)
    mask = LayerMaskScheduler(model, sampler) if strategy == "layer_wise_progressive" else None
    recorder = BatchRecorder(model, ds)
    ends = EpochEnds(model)
    trainer = CurriculumTrainer(model=model, args=args, train_dataset=ds, curriculum_sampler=sampler,
                                pacing={"smoothing": 0.5}, layer_mask=mask, callbacks=[recorder, ends])
    trainer.train(resume_from_checkpoint=resume)
    logs = [{k: v for k, v in h.items() if k.startswith("curriculum/")}
            for h in trainer.state.log_history if "loss" in h]
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters()},
              os.path.join(out_dir, f"{run}_params{rank}.safetensors"))
    pct = [h.get("curriculum/percentile") for h in trainer.state.log_history if "loss" in h]
    return {"rows": {str(k): v for k, v in recorder.rows.items()}, "logs": logs,
            "world": dist.get_world_size(), "replicas": sampler.num_replicas,
            "global_step": trainer.state.global_step, "digests": ends.digests, "ends": ends.steps,
            "sampler": sampler.state_dict(), "percentiles": pct,
            "mask": None if mask is None else mask.state_dict()}


RESUME_AT = 6  # inside epoch 1 (epoch 0 has 4 steps per rank)


def _trainer_part(rank: int, out_dir: str) -> None:
    import shutil

    record = {}
    for strategy in ("layer_wise_progressive", "easy_to_hard", "dynamic"):
        full = _trainer_run(rank, out_dir, f"{strategy}_full", strategy=strategy)
        dist.barrier()
        src = os.path.join(out_dir, f"{strategy}_full", f"checkpoint-{RESUME_AT}")
        dst = os.path.join(out_dir, f"{strategy}_resumed", f"checkpoint-{RESUME_AT}")
        if rank == 0:
            shutil.copytree(src, dst)
        dist.barrier()
        resumed = _trainer_run(rank, out_dir, f"{strategy}_resumed", resume=dst, strategy=strategy)
        record[strategy] = {"full": full, "resumed": resumed, "files": sorted(os.listdir(src))}
    with open(os.path.join(out_dir, f"trainer{rank}.json"), "w") as f:
        json.dump(record, f)


def test_curriculum_trainer_under_ddp_keeps_the_samplers_rank_slices(ddp_run):
    """PEFT LoRA model in DDP: each rank trains on its own slice; LayerMaskScheduler freezes the
    same layers on both ranks, frozen LoRA layers do not move and the replicas stay identical."""
    recs = [json.loads((ddp_run / f"trainer{r}.json").read_text())["layer_wise_progressive"]["full"]
            for r in range(WORLD)]
    assert all(r["world"] == 2 and r["replicas"] == 2 for r in recs)
    assert recs[0]["logs"] == recs[1]["logs"]  # same pacing state on both ranks
    assert recs[0]["global_step"] == recs[1]["global_step"]
    assert recs[0]["digests"] == recs[1]["digests"]  # DDP kept the replicas bit-identical
    digests = recs[0]["digests"]
    assert len(digests) == 4
    for epoch in range(3):  # stage e+1 trains LoRA layers [0, ceil((e+1)*4/3))
        moved = {int(k) for k in digests[epoch] if digests[epoch][k] != digests[epoch + 1][k]}
        assert moved == set(range(-(-(epoch + 1) * N_LAYERS // 3))), epoch

    from torch_curriculum.samplers import LayerWiseProgressiveSampler

    kw = dict(curriculum_start_epoch=0, curriculum_end_epoch=3, warmup_epochs=0, seed=9)
    ends = [0, *recs[0]["ends"]]
    for e in range(3):
        per_rank = []
        for rank in range(WORLD):
            ref = LayerWiseProgressiveSampler(_table(), num_replicas=WORLD, rank=rank, **kw)
            ref.set_epoch(e)
            expected = list(ref)
            rows = recs[rank]["rows"]
            got = [i for s in range(ends[e] + 1, ends[e + 1] + 1) for i in rows[str(s)]]
            # each rank trains on exactly its own slice: accelerate did not shard it again
            assert got == expected, (e, rank)
            per_rank.append(expected)
        global_ref = LayerWiseProgressiveSampler(_table(), num_replicas=1, rank=0, **kw)
        global_ref.set_epoch(e)
        whole = list(global_ref)
        assert sorted(per_rank[0] + per_rank[1]) == sorted(whole) or len(whole) % WORLD
        if len(whole) % WORLD == 0:
            assert not set(per_rank[0]) & set(per_rank[1])


@pytest.mark.parametrize("strategy", ["layer_wise_progressive", "easy_to_hard", "dynamic"])
def test_resume_under_ddp_equals_the_uninterrupted_run(ddp_run, strategy):
    """Interrupted at step 6 and resumed on 2 gloo processes: every rank trains on the same batches
    and ends with the same parameters, sampler (and layer-mask) state as without the interruption."""
    from safetensors.torch import load_file

    for rank in range(WORLD):
        rec = json.loads((ddp_run / f"trainer{rank}.json").read_text())[strategy]
        assert f"curriculum_state_rank{rank}.json" in rec["files"]
        full, resumed = rec["full"], rec["resumed"]
        assert resumed["global_step"] == full["global_step"] > RESUME_AT
        assert sorted(map(int, resumed["rows"])) == list(range(RESUME_AT + 1, full["global_step"] + 1))
        assert {s: full["rows"][s] for s in resumed["rows"]} == resumed["rows"]
        assert resumed["sampler"] == full["sampler"]
        assert resumed["mask"] == full["mask"]
        assert resumed["logs"] == full["logs"]
        if strategy == "dynamic":  # the rank-averaged loss did move the pool, both ways
            pct = full["percentiles"]
            assert max(pct) > pct[0] and any(b < a for a, b in itertools.pairwise(pct))
        a = load_file(str(ddp_run / f"{strategy}_full_params{rank}.safetensors"))
        b = load_file(str(ddp_run / f"{strategy}_resumed_params{rank}.safetensors"))
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
