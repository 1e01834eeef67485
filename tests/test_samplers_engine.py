"""The sampler engine's contract beyond the pools: step budgets, planned lengths and steps, no state
change from iterating, resume identity as a hash of the table's bytes, pickling as a path, O(N)
memory over a real difficulty file, and per-strategy stages (checked against numpy references)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from torch_curriculum import CurriculumConfig, MetaTokenDifficultyDataset
from torch_curriculum.samplers import (
    DynamicPacingSampler,
    EasyToHardSampler,
    HybridSampler,
    LayerSpecificSampler,
    LayerWiseProgressiveSampler,
    RandomOrderSampler,
    build_sampler,
    strategy_labels,
)

ROOT = Path(__file__).resolve().parents[1]
ALL = [RandomOrderSampler, EasyToHardSampler, LayerWiseProgressiveSampler, DynamicPacingSampler,
       LayerSpecificSampler, HybridSampler]


def table(n: int = 60, layers: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, layers, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def np_pct(score: np.ndarray) -> np.ndarray:
    return (score[None, :] <= score[:, None]).sum(1) / len(score)


def np_topk_mean(d: np.ndarray, k: int) -> np.ndarray:
    return np.sort(d, axis=1)[:, ::-1][:, :k].mean(1)


def pool_of(score: np.ndarray, p: float) -> set[int]:
    pct = np_pct(score)
    return set(np.flatnonzero(pct <= max(p, pct.min())).tolist())


def difficulty_file(tmp_path: Path, n: int = 80, layers: int = 6, seed: int = 2, name: str = "d.safetensors"):
    raw = torch.rand(n, layers, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    raw = raw * torch.arange(1, layers + 1)
    return MetaTokenDifficultyDataset.from_distances(raw, [f"s{i}" for i in range(n)], tmp_path / name)


# ----------------------------------------------------------------------------- step budgets
@pytest.mark.parametrize("cls", [EasyToHardSampler, LayerWiseProgressiveSampler, HybridSampler, DynamicPacingSampler],
                         ids=lambda c: c.__name__)
def test_one_epoch_under_a_step_budget_walks_every_stage(cls):
    n, batch = 90, 6
    d = table(n, 6)
    dn = d.numpy()
    s = cls(d, curriculum_steps=12, warmup_steps=3, seed=0)
    assert len(s) == n and s.planned_lengths(1) == [n]  # one epoch of N draws: 15 steps
    loader = DataLoader(TensorDataset(torch.arange(n)), sampler=s, batch_size=batch)
    stages, phases = [], []
    for step, (idx,) in enumerate(loader):
        st = s.state
        stages.append(st["stage"])
        phases.append(st["phase"])
        if cls is LayerWiseProgressiveSampler:
            # step 3..5 stage 1, 6..8 stage 2, 9..11 stage 3: each batch from that stage's pool
            stage = st["stage"] or 3
            n_act = math.ceil(stage * 6 / 3)
            if st["phase"] in ("warmup", "curriculum"):
                want = pool_of(np_topk_mean(dn[:, :n_act], 3), (0.33, 0.66, 1.0)[stage - 1])
                assert set(idx.tolist()) <= want, step
        s.update(0.5 if cls in (HybridSampler, DynamicPacingSampler) else 1.0)
    assert step == n // batch - 1 and s.epoch == 0
    assert phases[:3] == ["warmup"] * 3 and phases[12:] == ["after"] * 3
    if cls in (LayerWiseProgressiveSampler, HybridSampler):  # 9 curriculum steps, 3 per stage
        assert stages[3:12] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    elif cls is EasyToHardSampler:  # linear pacing: p = 0.33 + 0.67 * (step - 3) / 9
        assert stages[3:12] == [1, 2, 2, 2, 2, 3, 3, 3, 3]
    else:  # dynamic: good losses take p up by 0.05 a step, through every stage
        assert {1, 2, 3} <= {x for x in stages if x is not None}


def test_step_budget_from_yaml_and_its_validation(tmp_path):
    from torch_curriculum import ConfigError

    cfg = CurriculumConfig.from_yaml(ROOT / "examples" / "configs" / "step_budget.yaml")
    cur = cfg.curriculum
    assert (cur.curriculum_steps, cur.warmup_steps, cur.curriculum_start_step) == (1000, 100, 0)
    d = table(50, 6)
    s = build_sampler(cfg, d)
    ref = LayerWiseProgressiveSampler(d, curriculum_steps=1000, warmup_steps=100, seed=cfg.training.seed)
    assert s.curriculum_steps == 1000 and s.pacing == "step" and list(s) == list(ref)
    for bad, key in (({"curriculum_steps": 0}, "curriculum.curriculum_steps"),
                     ({"warmup_steps": 5}, "curriculum.warmup_steps"),
                     ({"curriculum_steps": 10, "warmup_steps": 11}, "curriculum.warmup_steps"),
                     ({"curriculum_start_step": -1}, "curriculum.curriculum_start_step")):
        with pytest.raises(ConfigError) as e:
            CurriculumConfig.from_dict({"curriculum": bad})
        assert e.value.key == key
    with pytest.raises(ValueError, match="two clocks"):
        EasyToHardSampler(d, curriculum_steps=10, steps_per_epoch=5)
    with pytest.raises(ValueError, match="need curriculum_steps"):
        EasyToHardSampler(d, warmup_steps=3)


def test_layer_specific_under_a_step_budget_walks_the_layers():
    d = table(40, 4)
    s = LayerSpecificSampler(d, curriculum_steps=16, phase1_steps=8, seed=0)  # warmup 0
    seen = []
    for _ in range(16):
        seen.append((s.state["phase"], s.current_layer))
        s.update(1.0)
    assert seen[:8] == [("phase1", i // 2) for i in range(8)]
    assert seen[8:] == [("phase2", None)] * 8 and s.state["phase"] == "after"
    with pytest.raises(ValueError, match="phase1_steps"):
        LayerSpecificSampler(d, curriculum_steps=16, phase1_epochs=1)


# ----------------------------------------------------------------------------- planned lengths
@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
@pytest.mark.parametrize("replicas", [1, 3])
def test_planned_lengths_and_total_steps_match_what_a_dataloader_yields(cls, replicas):
    n = 101
    d = table(n, 6)
    kw = {"layer_groups": 2} if cls is LayerSpecificSampler else {}
    s = cls(d, num_replicas=replicas, rank=replicas - 1, seed=1, **kw)
    before = (s.state, s.state_dict())
    plan = s.planned_lengths(7)
    assert (s.state, s.state_dict()) == before  # planning changes nothing
    ds = TensorDataset(torch.arange(n))
    for drop_last in (False, True):
        for bs, gas in ((4, 1), (8, 3)):
            steps = 0
            for e in range(7):
                s.set_epoch(e)
                assert len(s) == plan[e], e
                batches = len(list(DataLoader(ds, sampler=s, batch_size=bs, drop_last=drop_last)))
                steps += math.ceil(batches / gas)
            assert s.total_steps(7, bs, drop_last=drop_last, gradient_accumulation_steps=gas) == steps
    with pytest.raises(ValueError, match="batch_size"):
        s.total_steps(3, 0)


# ----------------------------------------------------------------------------- iterating changes nothing
@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_listing_a_loader_twice_changes_nothing(cls):
    n = 64
    s = cls(table(n, 6), seed=3)
    s.set_epoch(2)
    loader = DataLoader(TensorDataset(torch.arange(n)), sampler=s, batch_size=5)
    st0 = s.state
    a = [b[0].tolist() for b in loader]
    st1 = s.state
    b = [b[0].tolist() for b in loader]
    assert st0 == st1 == s.state and a == b and len(a) == math.ceil(len(s) / 5)
    assert s.epoch == 2
    s.set_epoch(3)  # only set_epoch moves on: a new permutation
    assert [b[0].tolist() for b in loader] != a


# ----------------------------------------------------------------------------- identity = hash of bytes
def test_identity_is_the_sha256_of_the_primary_score_bytes(tmp_path):
    ds = difficulty_file(tmp_path)
    s = EasyToHardSampler(ds, seed=0)
    want = hashlib.sha256(np.ascontiguousarray(ds.difficulty.numpy(), dtype="<f8").tobytes()).hexdigest()
    assert s.state_dict()["identity"] == {"num_samples": 80, "num_layers": 6, "sha256": want}
    t = table(30, 4)
    st = EasyToHardSampler(t).state_dict()["identity"]
    assert st["sha256"] == hashlib.sha256(t.numpy().tobytes()).hexdigest()
    # a table that differs in its last bit only is another table
    t2 = t.clone()
    t2[7, 2] = np.nextafter(t2[7, 2].item(), 2.0)
    with pytest.raises(ValueError, match="identity"):
        EasyToHardSampler(t2).load_state_dict(EasyToHardSampler(t).state_dict())


# ----------------------------------------------------------------------------- pickling and memory
def test_a_sampler_over_a_file_pickles_as_its_path_and_keeps_its_position(tmp_path):
    ds = difficulty_file(tmp_path, n=4000, layers=8)
    s = HybridSampler(ds, seed=0)
    s.set_epoch(2)
    it = iter(s)
    head = [next(it) for _ in range(17)]
    s.update(0.5)
    blob = pickle.dumps(s)
    assert len(blob) < 4000  # the primary column alone is 32,000 bytes
    assert str(ds.path).encode() in blob
    c, p = copy.deepcopy(s), pickle.loads(blob)
    rest = list(s)
    assert list(p) == rest and list(c) == rest and len(head) + len(rest) == len(s)
    assert p.state == s.state


def test_a_pickled_sampler_refuses_a_changed_file(tmp_path):
    ds = difficulty_file(tmp_path, n=200)
    s = LayerWiseProgressiveSampler(ds, seed=0)  # never reads the primary column itself
    blob = pickle.dumps(s)
    assert list(pickle.loads(blob)) == list(s)
    difficulty_file(tmp_path, n=200, seed=9, name="other.safetensors").path.replace(ds.path)
    with pytest.raises(ValueError, match="changed since the sampler was pickled"):
        pickle.loads(blob)


def test_building_samplers_over_a_file_does_not_materialise_the_table(tmp_path):
    n, layers = 150_000, 32
    raw = torch.rand(n, layers, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ds = MetaTokenDifficultyDataset.from_distances(raw, [f"s{i}" for i in range(n)], tmp_path / "big.safetensors")
    del raw
    table_bytes = n * layers * 8
    for cls in (LayerWiseProgressiveSampler, HybridSampler, LayerSpecificSampler, EasyToHardSampler):
        tracemalloc.start()
        s = cls(ds, seed=0)
        s.set_epoch(3)
        first = next(iter(s))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert 0 <= first < n
        assert peak < 0.5 * table_bytes, (cls.__name__, peak, table_bytes)
        assert len(s._views) <= 2
    # samplers over the same table object share their read-only score orders
    a, b = LayerWiseProgressiveSampler(ds, seed=0), HybridSampler(ds, seed=1)
    assert a._views["topk_mean:3:0,1,2,3,4,5,6,7,8,9,10"] is b._views["topk_mean:3:0,1,2,3,4,5,6,7,8,9,10"]
    t = table(50, 4)
    e3, e2 = EasyToHardSampler(t, top_k=3), EasyToHardSampler(t, top_k=2)
    assert list(e3._views) == list(e2._views) == ["primary"] and e3._views["primary"] is not e2._views["primary"]


# ----------------------------------------------------------------------------- stages as used
def test_stage_assignments_follow_each_strategys_pools(tmp_path):
    ds = difficulty_file(tmp_path, n=120, layers=6)
    dn = ds.layer_diffs.numpy()
    sp = (0.33, 0.66, 1.0)
    lw = LayerWiseProgressiveSampler(ds, seed=0).stage_assignments().numpy()
    want = np.full(120, 3)
    for s in (2, 1):
        n_act = math.ceil(s * 6 / 3)
        k = min(ds.top_k, n_act)
        want[sorted(pool_of(np_topk_mean(dn[:, :n_act], k), sp[s - 1]))] = s
    assert np.array_equal(lw, want)
    # easy-to-hard and dynamic use the primary score: their stages are the file's stage column
    for cls in (EasyToHardSampler, DynamicPacingSampler):
        assert np.array_equal(cls(ds).stage_assignments().numpy(), ds.stage.numpy())
    assert not np.array_equal(lw, ds.stage.numpy())  # the layer-wise stage describes another pool
    assert set(RandomOrderSampler(ds).stage_assignments().tolist()) == {1}
    # the stage-1 pool is exactly stage 1; a later pool (another score) holds only stages <= s, and
    # the layer-wise pools are not nested (stage 2's score can drop a stage-1 sample)
    s = LayerWiseProgressiveSampler(ds, seed=0)
    s.set_epoch(1)
    assert set(s) == set(np.flatnonzero(lw == 1).tolist())
    s.set_epoch(3)
    assert set(lw[sorted(set(s))]) <= {1, 2} and 2 in set(lw[sorted(set(s))])

    path = strategy_labels(LayerWiseProgressiveSampler(ds), tmp_path / "stages.jsonl")
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["header"]["strategy"] == "layer_wise_progressive"
    assert [r["sample_id"] for r in lines[1:]] == ds.sample_ids
    assert [r["curriculum_stage"] for r in lines[1:]] == lw.tolist()
    assert [r["file_stage"] for r in lines[1:]] == ds.stage.tolist()
    with pytest.raises(FileExistsError):
        strategy_labels(LayerWiseProgressiveSampler(ds), path)
