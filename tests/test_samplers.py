"""Curriculum samplers: pools against the seed's semantics (checked with independent numpy code),
dynamic pacing steps, resume in a new process, sharding, property tests, DataLoader, build_sampler."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from torch_curriculum import ConfigError, CurriculumConfig
from torch_curriculum.pacing import curriculum_progress, pacing_fraction
from torch_curriculum.samplers import (
    DynamicPacingSampler,
    EasyToHardSampler,
    HybridSampler,
    LayerSpecificSampler,
    LayerWiseProgressiveSampler,
    RandomOrderSampler,
    build_sampler,
)

ROOT = Path(__file__).resolve().parents[1]
ALL = [RandomOrderSampler, EasyToHardSampler, LayerWiseProgressiveSampler, DynamicPacingSampler,
       LayerSpecificSampler, HybridSampler]


# ----------------------------------------------------------------------------- numpy references
def np_pct(score: np.ndarray) -> np.ndarray:
    """Independent percentile: fraction of samples with score <= own (O(N^2), fine for tests)."""
    return (score[None, :] <= score[:, None]).sum(1) / len(score)


def np_topk_mean(d: np.ndarray, k: int) -> np.ndarray:
    return np.sort(d, axis=1)[:, ::-1][:, :k].mean(1)


def pool_of(score: np.ndarray, p: float) -> set[int]:
    pct = np_pct(score)
    p = max(p, pct.min())
    return set(np.flatnonzero(pct <= p).tolist())


def table(n: int = 60, layers: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, layers, generator=g, dtype=torch.float64)


def epoch_indices(s, epoch: int) -> list[int]:
    s.set_epoch(epoch)
    return list(s)


# ----------------------------------------------------------------------------- pacing functions
def test_pacing_functions_match_their_formulas():
    a = 0.2
    for t in np.linspace(0, 1, 11):
        assert pacing_fraction("linear", t, start=a) == pytest.approx(a + (1 - a) * t)
        assert pacing_fraction("root", t, start=a) == pytest.approx(a + (1 - a) * math.sqrt(t))
        assert pacing_fraction("root", t, start=a, root_degree=3) == pytest.approx(a + (1 - a) * t ** (1 / 3))
        assert pacing_fraction("exponential", t, start=a) == pytest.approx(a * (1 / a) ** t)
        assert pacing_fraction("competence", t, start=a) == pytest.approx(math.sqrt(t * (1 - a * a) + a * a))
    sp = (0.33, 0.66, 1.0)
    assert [pacing_fraction("step", t, stage_percentiles=sp) for t in (0, 0.32, 0.34, 0.67, 1.0)] == [0.33, 0.33, 0.66, 1.0, 1.0]
    assert pacing_fraction("discrete", 0.5, stage_percentiles=sp) == 0.66
    for name in ("linear", "root", "exponential", "competence"):
        vals = [pacing_fraction(name, t, start=0.33) for t in np.linspace(0, 1, 50)]
        assert vals[0] == pytest.approx(0.33) and vals[-1] == 1.0
        assert all(b >= a for a, b in itertools.pairwise(vals))
    with pytest.raises(ValueError, match="unknown pacing function 'cubic'"):
        pacing_fraction("cubic", 0.5)
    with pytest.raises(ValueError, match="start"):
        pacing_fraction("linear", 0.5, start=0)


def test_curriculum_progress_phases():
    kw = dict(curriculum_start_epoch=1, curriculum_end_epoch=6, warmup_epochs=1)
    assert [curriculum_progress(t, **kw) for t in range(8)] == [
        ("before", 0.0), ("warmup", 0.0), ("curriculum", 0.0), ("curriculum", 0.25), ("curriculum", 0.5),
        ("curriculum", 0.75), ("after", 0.0), ("after", 0.0)]


# ----------------------------------------------------------------------------- hand-made tables
def test_layer_wise_stage1_on_a_hand_made_table():
    # 10 samples, 3 layers, 3 stages: stage 1 activates layer 0 only (ceil(1*3/3) = 1), so the pool is
    # the 3 samples (percentile <= 0.33) with the smallest d_0, although their overall score is high.
    d0 = [0.05, 0.9, 0.8, 0.01, 0.7, 0.6, 0.5, 0.03, 0.4, 0.3]
    rest = [0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.9, 0.1, 0.1]
    d = torch.tensor([[a, b, b] for a, b in zip(d0, rest)])
    s = LayerWiseProgressiveSampler(d, top_k=2, seed=3)
    for epoch in (0, 1, 2):  # warm-up and stage 1
        got = epoch_indices(s, epoch)
        assert sorted(got) == [0, 3, 7], epoch
        assert s.stage == 1 and s.active_layers == [0] and s.trainable_layers == [0]
    # the overall top-2 score would have picked the opposite samples
    assert {0, 3, 7}.isdisjoint(pool_of(np_topk_mean(d.numpy(), 2), 0.33))
    assert s.state["percentile"] == 0.33 and s.state["pool_size"] == 3


def test_layer_wise_every_stage_matches_the_active_layer_score():
    d = table(90, 7)
    s = LayerWiseProgressiveSampler(d, seed=1)  # defaults: S=3, start 0, end 5, warm-up 1
    dn = d.numpy()
    expect_stage = {0: 1, 1: 1, 2: 1, 3: 2, 4: 3}
    for epoch, stage in expect_stage.items():
        got = epoch_indices(s, epoch)
        n_active = math.ceil(stage * 7 / 3)
        want = pool_of(np_topk_mean(dn[:, :n_active], min(3, n_active)), (0.33, 0.66, 1.0)[stage - 1])
        assert s.stage == stage and s.active_layers == list(range(n_active))
        assert len(got) == len(set(got)) == len(s) == len(want)
        assert set(got) == want
    for epoch in (5, 6):
        assert sorted(epoch_indices(s, epoch)) == list(range(90)) and s.trainable_layers is None


def test_layer_wise_mean_active_score():
    d = table(50, 4)
    s = LayerWiseProgressiveSampler(d, active_score="mean", num_stages=2, stage_percentiles=(0.5, 1.0),
                                    warmup_epochs=0, curriculum_end_epoch=2, seed=0)
    assert set(epoch_indices(s, 0)) == pool_of(d.numpy()[:, :2].mean(1), 0.5)


def test_easy_to_hard_follows_the_pacing_function_and_primary_score():
    d = table(80, 5)
    dn = d.numpy()
    for fn in ("linear", "root", "step", "exponential", "competence"):
        s = EasyToHardSampler(d, pacing_function=fn, seed=2)
        for epoch in range(7):
            got = epoch_indices(s, epoch)
            if epoch == 0:
                p = 0.33
            elif epoch < 5:
                p = pacing_fraction(fn, (epoch - 1) / 4, start=0.33)
            else:
                p = 1.0
            assert set(got) == pool_of(np_topk_mean(dn, 3), p), (fn, epoch)
            assert len(got) == len(set(got))


def test_dataset_primary_score_is_used():
    class DS:  # duck-typed MetaTokenDifficultyDataset
        def __init__(self, d, score):
            self.layer_diffs, self.difficulty = d, score

    d = table(40, 4)
    score = -torch.arange(40, dtype=torch.float64)  # reversed: the last samples are the easiest
    s = EasyToHardSampler(DS(d, score), seed=0)
    assert sorted(epoch_indices(s, 0)) == list(range(27, 40))  # percentile <= 0.33: 13 samples
    with pytest.raises(ValueError, match="difficulty has 3 entries"):
        EasyToHardSampler(DS(d, score[:3]))
    with pytest.raises(TypeError, match="layer_diffs"):
        EasyToHardSampler([1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        EasyToHardSampler(torch.tensor([[0.1, float("nan"), 0.2]]), top_k=1)
    with pytest.raises(ValueError, match="top_k=3 exceeds"):
        EasyToHardSampler(torch.rand(5, 2))


def test_strict_order_yields_sorted_pool():
    d = table(50, 4)
    s = EasyToHardSampler(d, strict_order=True, seed=0)
    score = np_topk_mean(d.numpy(), 3)
    got = epoch_indices(s, 2)
    assert got == sorted(got, key=lambda i: (score[i], i))
    assert set(got) == pool_of(score, pacing_fraction("linear", 0.25, start=0.33))
    # after the curriculum: random again
    last = epoch_indices(s, 5)
    assert sorted(last) == list(range(50)) and last != sorted(last, key=lambda i: score[i])


def test_ties_share_a_percentile_and_pool_never_empty():
    d = torch.tensor([[0.5], [0.5], [0.5], [0.9]])
    s = EasyToHardSampler(d, top_k=1, seed=0)
    assert sorted(epoch_indices(s, 0)) == [0, 1, 2]  # p=0.33 < 0.75, the easiest tie group stays whole


def test_before_and_after_curriculum_are_random_permutations():
    d = table(64, 4)
    s = LayerWiseProgressiveSampler(d, curriculum_start_epoch=2, curriculum_end_epoch=4, warmup_epochs=1, seed=5)
    orders = [epoch_indices(s, e) for e in (0, 1, 4, 5)]
    for o in orders:
        assert sorted(o) == list(range(64))
    assert len({tuple(o) for o in orders}) == 4  # a new permutation every epoch
    s2 = LayerWiseProgressiveSampler(d, curriculum_start_epoch=2, curriculum_end_epoch=4, warmup_epochs=1, seed=5)
    assert epoch_indices(s2, 5) == orders[3]  # deterministic from seed + epoch
    s3 = LayerWiseProgressiveSampler(d, curriculum_start_epoch=2, curriculum_end_epoch=4, warmup_epochs=1, seed=6)
    assert epoch_indices(s3, 5) != orders[3]


def test_random_baseline_is_a_permutation_every_epoch():
    s = RandomOrderSampler(table(30, 3), seed=0)
    a, b = epoch_indices(s, 0), epoch_indices(s, 1)
    assert sorted(a) == sorted(b) == list(range(30)) and a != b
    assert s.state["percentile"] == 1.0 and s.trainable_layers is None and s.num_layers == 3


# ----------------------------------------------------------------------------- dynamic pacing
def test_dynamic_moves_up_5_down_2_and_clamps():
    d = table(400, 4)
    score = np_topk_mean(d.numpy(), 3)
    s = DynamicPacingSampler(d, seed=0)
    s.set_epoch(1)  # curriculum proper (epoch 0 is warm-up)
    assert s.percentile == 0.33
    expected = 0.33
    it = iter(s)
    for i, loss in enumerate([1.0] * 5 + [2.5] * 3 + [2.0] + [0.5] * 20 + [9.0] * 60):
        s.update(loss)
        # decimal steps: 0.33 + 0.05 is 0.38, not 0.38000000000000006 (pool = percentile <= p)
        expected = min(1.0, max(0.33, round(expected + (0.05 if loss < 2.0 else -0.02), 10)))
        assert s.percentile == pytest.approx(expected, abs=1e-12), i
        nxt = [next(it) for _ in range(3)]
        # the very next indices come from the new pool
        assert set(nxt) <= pool_of(score, expected), i
    assert s.percentile == 0.33 and s.state["pool_size"] == len(pool_of(score, 0.33))


def test_dynamic_exact_values_and_custom_steps():
    s = DynamicPacingSampler(table(100, 3), difficulty_step_up=0.1, difficulty_step_down=0.04,
                             loss_threshold=1.0, min_percentile=0.2, seed=0)
    s.set_epoch(1)
    assert s.percentile == 0.2
    seen = []
    for loss in (0.5, 0.5, 1.5, 0.9, 1.0):
        s.update(loss)
        seen.append(s.percentile)
    assert seen == [0.3, 0.4, 0.36, 0.46, 0.42]


def test_dynamic_does_not_move_during_warmup_or_outside_the_curriculum():
    s = DynamicPacingSampler(table(100, 3), seed=0)
    for _ in range(5):
        s.update(0.1)
    assert s.percentile == 0.33  # epoch 0 = warm-up: first stage's pool
    s.set_epoch(7)
    s.update(0.1)
    assert s.percentile == 1.0 and s.state["phase"] == "after"


def test_adaptive_threshold_is_the_running_mean_of_previous_losses():
    s = DynamicPacingSampler(table(100, 3), adaptive_threshold=True, adaptive_window=3, seed=0)
    s.set_epoch(1)
    losses = [5.0, 4.0, 3.0, 3.5, 3.6, 3.4]
    p, hist, thr = 0.33, [], 2.0
    for loss in losses:
        s.update(loss)
        p = min(1.0, max(0.33, p + (0.05 if loss < thr else -0.02)))
        hist = [*hist, loss][-3:]
        thr = sum(hist) / len(hist)
        assert s.percentile == pytest.approx(p, abs=1e-12)
        assert s.state["loss_threshold"] == pytest.approx(thr)
    # 5 >= 2 (fixed until there is history): down, clamped; 4 < 5: up; 3 < 4.5: up; 3.5 < 4: up;
    # 3.6 >= mean(4, 3, 3.5) = 3.5: down; 3.4 >= mean(3, 3.5, 3.6) = 3.37: down
    assert s.percentile == pytest.approx(0.33 + 0.05 * 3 - 0.02 * 2)


def test_update_rejects_non_finite_loss():
    s = DynamicPacingSampler(table(10, 3))
    with pytest.raises(ValueError, match="finite"):
        s.update(float("nan"))


# ----------------------------------------------------------------------------- hybrid
def test_hybrid_percentile_stays_in_the_stage_band_and_uses_active_layers():
    d = table(300, 6)
    dn = d.numpy()
    s = HybridSampler(d, seed=0)
    s.set_epoch(3)  # stage 2: band [0.33, 0.66], layers [0, 4)
    assert s.stage == 2 and s.active_layers == [0, 1, 2, 3] and s.percentile == 0.33
    it = iter(s)
    for i in range(12):
        s.update(0.1)
        assert 0.33 <= s.percentile <= 0.66
        assert set(next(it) for _ in range(4)) <= pool_of(np_topk_mean(dn[:, :4], 3), s.percentile), i
    assert s.percentile == 0.66
    for _ in range(30):
        s.update(5.0)
    assert s.percentile == 0.33
    s.set_epoch(4)  # stage 3 starts at its lower bound 0.66
    assert s.stage == 3 and s.percentile == 0.66 and s.trainable_layers == list(range(6))
    s.update(0.0)
    assert s.percentile == pytest.approx(0.71)


def test_hybrid_stage1_band_with_min_percentile():
    s = HybridSampler(table(200, 6), min_percentile=0.1, seed=0)
    assert s.percentile == 0.1 and s.stage == 1
    for _ in range(20):
        s.update(0.0)  # warm-up is stage 1 with its band
    assert s.percentile == 0.33


# ----------------------------------------------------------------------------- layer-specific
def test_layer_specific_walks_layers_in_step_pacing():
    d = table(40, 4)
    dn = d.numpy()
    # start 0, end 3, warm-up 0: phase 1 = 1.5 epochs (half), 4 layers -> 0.375 epochs = 15 steps each
    s = LayerSpecificSampler(d, pacing="step", steps_per_epoch=40, curriculum_end_epoch=3, warmup_epochs=0,
                             seed=0, samples_per_epoch=40)
    seen_layers = []
    batches: dict[tuple[int, int], list[int]] = {}
    it = iter(s)
    for _ in range(60):
        layer = s.current_layer
        assert s.trainable_layers == [layer]
        seen_layers.append(layer)
        batches.setdefault((layer, s.epoch), []).append(next(it))
        s.update(1.0)
        if len(seen_layers) % 40 == 0:
            s.set_epoch(s.epoch + 1)  # iterating never advances the epoch by itself
            it = iter(s)
    assert [seen_layers.index(i) for i in range(4)] == [0, 15, 30, 45]
    assert len(batches) == 5  # layer 2 spans the epoch boundary at step 40
    for (layer, epoch), got in batches.items():
        # each layer's draws follow its own d_i, easy to hard, from the easiest on (a new pass starts
        # at the layer change and at the epoch change)
        assert got == sorted(range(40), key=lambda i: (dn[i, layer], i))[: len(got)], (layer, epoch)
    while s.state["phase"] == "phase1":
        s.update(1.0)
    assert s.state["phase"] == "phase2" and s.current_layer is None and s.trainable_layers is None


def test_layer_specific_epoch_pacing_groups_and_errors():
    d = table(30, 6)
    s = LayerSpecificSampler(d, seed=0)  # phase 1 = 2 epochs -> 2 groups of 3 layers
    assert s.layer_groups == [[0, 1, 2], [3, 4, 5]]
    assert s.current_layer == 0 and s.trainable_layers == [0, 1, 2]
    got = epoch_indices(s, 0)  # warm-up: group 0's easiest 33%
    assert set(got) == pool_of(d.numpy()[:, :3].mean(1), 0.33)
    got = epoch_indices(s, 2)
    score = d.numpy()[:, 3:].mean(1)
    assert got == sorted(range(30), key=lambda i: (score[i], i)) and s.trainable_layers == [3, 4, 5]
    assert sorted(epoch_indices(s, 3)) == list(range(30)) and s.trainable_layers is None
    with pytest.raises(ValueError, match="pacing='step'"):
        LayerSpecificSampler(d, layer_groups=6)
    with pytest.raises(ValueError, match="repeats a layer"):
        LayerSpecificSampler(d, layer_groups=[[0, 1], [1]])
    with pytest.raises(ValueError, match="phase1_epochs"):
        LayerSpecificSampler(d, phase1_epochs=9)
    s = LayerSpecificSampler(d, layer_groups=[[5], [0]], phase1_order="shuffled", phase2_order="easy_to_hard")
    assert s.current_layer == 5
    s.set_epoch(4)
    assert set(list(s)) == pool_of(np_topk_mean(d.numpy(), 3), pacing_fraction("linear", 0.5, start=0.33))


# ----------------------------------------------------------------------------- step pacing
def test_step_pacing_grows_the_pool_with_updates():
    d = table(200, 4)
    score = np_topk_mean(d.numpy(), 3)
    s = EasyToHardSampler(d, pacing="step", steps_per_epoch=10, seed=0)
    assert len(s) == 200  # the pool moves within the epoch: N draws
    it = iter(s)
    for step in range(60):
        phase, u = curriculum_progress(step / 10, curriculum_start_epoch=0, curriculum_end_epoch=5, warmup_epochs=1)
        p = {"warmup": 0.33, "curriculum": pacing_fraction("linear", u, start=0.33)}.get(phase, 1.0)
        assert s.percentile == pytest.approx(max(p, 0.005)), step
        assert set(next(it) for _ in range(3)) <= pool_of(score, p)
        s.update(1.0)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        EasyToHardSampler(d, pacing="step")


# ----------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_get_disjoint_slices_of_one_sequence(cls, drop_last):
    d = table(101, 6)
    kw = dict(seed=4, drop_last=drop_last, samples_per_epoch=None)
    for epoch in (1, 3, 6):
        single = cls(d, **kw)
        single.set_epoch(epoch)
        seq = list(single)
        outs = []
        for r in range(3):
            s = cls(d, num_replicas=3, rank=r, **kw)
            s.set_epoch(epoch)
            outs.append(list(s))
        assert len({len(o) for o in outs}) == 1 and len(outs[0]) == len(s)
        m = len(outs[0])
        interleaved = [outs[r][i] for i in range(m) for r in range(3)]
        total = len(seq)
        if drop_last:
            assert m == total // 3 and interleaved == seq[: 3 * m]
        else:
            assert m == math.ceil(total / 3) and interleaved[:total] == seq
        if cls not in (DynamicPacingSampler, HybridSampler):  # one pass: disjoint
            assert len(set(interleaved[:total])) == min(total, len(interleaved))


def test_invalid_world_arguments():
    with pytest.raises(ValueError, match="rank"):
        RandomOrderSampler(table(5, 3), num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas"):
        RandomOrderSampler(table(5, 3), num_replicas=0, rank=0)


# ----------------------------------------------------------------------------- resume
LOSS = "lambda i: 1.0 if (i * 7) % 5 else 3.0"
KWARGS = {
    "RandomOrderSampler": {},
    "EasyToHardSampler": {"pacing": "step", "steps_per_epoch": 7, "strict_order": True},
    "LayerWiseProgressiveSampler": {"pacing": "step", "steps_per_epoch": 9},
    "DynamicPacingSampler": {"adaptive_threshold": True, "adaptive_window": 4},
    "LayerSpecificSampler": {"pacing": "step", "steps_per_epoch": 11, "curriculum_end_epoch": 6},
    "HybridSampler": {"num_replicas": 2, "rank": 1},
}

RESUME_SCRIPT = f"""
import json, sys, torch
import torch_curriculum.samplers as S
cls, state_path, n_after, i = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[5])
kw = json.loads(sys.argv[4])
loss = {LOSS}
d = torch.rand(97, 5, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
s = getattr(S, cls)(d, seed=9, **kw)
state = json.load(open(state_path))
s.load_state_dict(state)
s.set_epoch(state["epoch"])  # what a training loop does: must not lose the position
out = []
while len(out) < n_after:
    for x in s:
        out.append(x)
        i += 1
        if i % 4 == 0:
            s.update(loss(i // 4))
        if len(out) == n_after:
            break
    else:
        s.set_epoch(s.epoch + 1)
print(json.dumps(out))
"""


@pytest.mark.parametrize("name", list(KWARGS))
def test_resume_in_a_new_process_gives_the_same_remaining_indices(name, tmp_path):
    import torch_curriculum.samplers as S

    loss = eval(LOSS)
    d = torch.rand(97, 5, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    s = getattr(S, name)(d, seed=9, **KWARGS[name])
    k, n_after = 150, 260
    seen, i, state = [], 0, None
    while len(seen) < k + n_after:
        for x in s:  # several epochs; iterating never advances the epoch, the loop does
            seen.append(x)
            i += 1
            if i % 4 == 0:
                s.update(loss(i // 4))
            if len(seen) == k:
                state = json.loads(json.dumps(s.state_dict()))
            if len(seen) == k + n_after:
                break
        else:
            s.set_epoch(s.epoch + 1)
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state))
    out = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, name, str(path), str(n_after),
                          json.dumps(KWARGS[name]), str(k)], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(out.stdout) == seen[k:]


def test_load_state_dict_rejects_other_samplers():
    d = table(20, 3)
    state = EasyToHardSampler(d, seed=1).state_dict()
    with pytest.raises(ValueError, match="strategy"):
        DynamicPacingSampler(d, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        EasyToHardSampler(d, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="identity"):
        EasyToHardSampler(table(20, 3, seed=5), seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="not a sampler state"):
        EasyToHardSampler(d).load_state_dict({"epoch": 1})


def test_abandoned_iterator_continues_where_it_stopped():
    s = EasyToHardSampler(table(60, 4), seed=0)
    full = EasyToHardSampler(table(60, 4), seed=0)
    ref = list(full)
    it = iter(s)
    head = [next(it) for _ in range(7)]
    rest = list(s)  # a new iterator continues the epoch
    assert head + rest == ref


# ----------------------------------------------------------------------------- properties
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 40), layers=st.integers(1, 6), cls_i=st.integers(0, 5), epoch=st.integers(0, 7),
       replicas=st.integers(1, 3), seed=st.integers(0, 2**31), updates=st.lists(st.floats(0, 4), max_size=6))
def test_properties(n, layers, cls_i, epoch, replicas, seed, updates):
    cls = ALL[cls_i]
    d = torch.rand(n, layers, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    top_k = min(3, layers)
    kw = dict(top_k=top_k, seed=seed, num_replicas=replicas)
    if cls is LayerSpecificSampler:
        kw["layer_groups"] = 2 if layers >= 2 else 1
        kw["phase1_epochs"] = 2 * kw["layer_groups"] // 2 if layers >= 2 else 1
    ranks = [cls(d, rank=r, **kw) for r in range(replicas)]
    outs = []
    for s in ranks:
        s.set_epoch(epoch)
        out, it = [], iter(s)
        for j, x in enumerate(it):
            out.append(x)
            if j < len(updates):
                s.update(updates[j])
        outs.append(out)
    assert all(0 <= x < n for o in outs for x in o)
    assert all(len(o) == len(ranks[0]) for o in outs)
    static = cls not in (DynamicPacingSampler, HybridSampler)
    if static:
        union = [x for o in outs for x in o]
        total = ranks[0].state["pool_size"]
        assert len(set(union)) == total  # each pool sample once (padding may repeat a few)
        if replicas == 1:
            assert len(union) == len(set(union))
    if epoch >= 5:  # after the curriculum: all ranks together hold a permutation of all indices
        union = [o[i] for i in range(len(outs[0])) for o in outs][:n]
        assert sorted(union) == list(range(n))


# ----------------------------------------------------------------------------- integration points
def test_dataloader_with_updates():
    n = 64
    ds = TensorDataset(torch.arange(n), torch.randn(n, 3))
    s = DynamicPacingSampler(table(n, 4), seed=0)
    s.set_epoch(1)
    loader = DataLoader(ds, sampler=s, batch_size=8)
    seen, percent = [], []
    for idx, _x in loader:
        seen.extend(idx.tolist())
        s.update(0.5)
        percent.append(s.percentile)
    assert len(seen) == len(s) == n and percent == sorted(percent) and percent[-1] > 0.33
    pool_final = pool_of(np_topk_mean(table(n, 4).numpy(), 3), percent[-2])
    assert set(seen[-8:]) <= pool_final


def test_build_sampler_from_the_seed_yaml():
    cfg = CurriculumConfig.from_yaml(ROOT / "examples" / "configs" / "seed.yaml")
    d = table(50, 6)
    s = build_sampler(cfg, d)
    assert isinstance(s, LayerWiseProgressiveSampler)
    assert (s.num_stages, s.stage_percentiles, s.top_k) == (3, (0.33, 0.66, 1.0), 3)
    assert (s.curriculum_start_epoch, s.curriculum_end_epoch, s.warmup_epochs) == (0, 5, 1)
    ref = LayerWiseProgressiveSampler(d)
    assert epoch_indices(s, 3) == epoch_indices(ref, 3)
    names = {"random": RandomOrderSampler, "easy_to_hard": EasyToHardSampler, "layer_wise": LayerWiseProgressiveSampler,
             "dynamic": DynamicPacingSampler, "layer_specific": LayerSpecificSampler, "hybrid": HybridSampler}
    for name, cls in names.items():
        c = CurriculumConfig.from_dict({"curriculum": {"strategy": name, "loss_threshold": 1.5, "pacing": "step"},
                                        "training": {"steps_per_epoch": 10, "seed": 3}})
        s = build_sampler(c, d, num_replicas=2, rank=1)
        assert type(s) is cls and s.seed == 3 and s.pacing == "step" and s.num_replicas == 2
        if name in ("dynamic", "hybrid"):  # dynamic-only parameters exist only on those two
            assert s.loss_threshold == 1.5
        else:
            assert not hasattr(s, "loss_threshold")
    cfg.curriculum.strategy = "zigzag"
    with pytest.raises(ValueError, match="valid strategies: random, easy_to_hard"):
        build_sampler(cfg, d)
    c = CurriculumConfig.from_dict({"curriculum": {"strategy": "dynamic", "pacing": "step"}})
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_sampler(c, d)
    s = build_sampler(CurriculumConfig.from_dict({"curriculum": {"strategy": "dynamic"}}), d, loss_threshold=0.7)
    assert s.loss_threshold == 0.7


@pytest.mark.parametrize(("section", "data", "key"), [
    ("curriculum", {"pacing": "hourly"}, "curriculum.pacing"),
    ("curriculum", {"adaptive_window": 0}, "curriculum.adaptive_window"),
    ("curriculum", {"layer_groups": 0}, "curriculum.layer_groups"),
    ("curriculum", {"layer_groups": [[0], [0]]}, "curriculum.layer_groups"),
    ("curriculum", {"phase1_epochs": -1}, "curriculum.phase1_epochs"),
    ("curriculum", {"phase1_order": "up"}, "curriculum.phase1_order"),
    ("curriculum", {"phase2_order": "up"}, "curriculum.phase2_order"),
    ("training", {"steps_per_epoch": 0}, "training.steps_per_epoch"),
    ("training", {"samples_per_epoch": 0}, "training.samples_per_epoch"),
])
def test_new_config_fields_are_validated(section, data, key):
    with pytest.raises(ConfigError) as e:
        CurriculumConfig.from_dict({section: data})
    assert e.value.key == key


def test_state_is_json_and_complete():
    s = HybridSampler(table(40, 6), seed=0)
    st_ = s.state
    json.dumps(st_)
    for key in ("epoch", "step", "percentile", "stage", "pool_size", "active_layers", "current_layer"):
        assert key in st_
    json.dumps(s.state_dict())


def test_parameter_errors_name_the_parameter():
    d = table(10, 3)
    with pytest.raises(ValueError, match="num_stages=2 conflicts"):
        EasyToHardSampler(d, num_stages=2, stage_percentiles=(0.3, 0.6, 1.0))
    assert EasyToHardSampler(d, num_stages=4).stage_percentiles == (0.25, 0.5, 0.75, 1.0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        EasyToHardSampler(d, warmup_epochs=6)
    with pytest.raises(ValueError, match="difficulty_step_up"):
        DynamicPacingSampler(d, difficulty_step_up=2)
    with pytest.raises(ValueError, match="pacing must be"):
        EasyToHardSampler(d, pacing="hourly")


def test_layer_specific_phase1_growth_and_samples_per_epoch():
    d = table(100, 2)
    dn = d.numpy()
    # phase 1: 2 epochs, 2 groups, one epoch each; the pool grows within the group's share
    s = LayerSpecificSampler(d, pacing="step", steps_per_epoch=10, curriculum_end_epoch=4, warmup_epochs=0,
                             phase1_epochs=2, phase1_growth=True, phase1_order="shuffled", samples_per_epoch=30, top_k=2)
    assert len(s) == 30
    it = iter(s)
    for step in range(20):
        layer = step // 10
        p = pacing_fraction("linear", (step % 10) / 10, start=0.33)
        assert s.current_layer == layer and s.percentile == pytest.approx(p)
        assert next(it) in pool_of(dn[:, layer], p)
        s.update(1.0)


def test_dynamic_initial_percentile_and_strict_order():
    d = table(100, 3)
    score = np_topk_mean(d.numpy(), 3)
    s = DynamicPacingSampler(d, initial_percentile=0.5, strict_order=True, seed=0)
    s.set_epoch(1)
    assert s.percentile == 0.5
    it = iter(s)
    first = [next(it) for _ in range(10)]
    assert first == sorted(range(100), key=lambda i: (score[i], i))[:10]
    for _ in range(10):
        s.update(9.0)  # down to the floor 0.33
    assert s.percentile == 0.33
    rest = [next(it) for _ in range(60)]
    assert set(rest) <= pool_of(score, 0.33)


def test_copy_and_pickle_keep_the_position():
    import copy
    import pickle

    s = HybridSampler(table(50, 6), seed=0)
    it = iter(s)
    head = [next(it) for _ in range(5)]
    c, p = copy.deepcopy(s), pickle.loads(pickle.dumps(s))
    rest = list(s)
    assert list(c) == list(p) == rest and len(head + rest) == len(s)


def test_view_percentiles_equal_difficulty_percentiles():
    from torch_curriculum.difficulty import percentiles
    from torch_curriculum.sampling.engine import _View

    g = torch.Generator().manual_seed(1)
    score = torch.randint(0, 7, (200,), generator=g).to(torch.float64)  # many ties
    v = _View(score)
    pct = percentiles(score).numpy()
    assert np.array_equal(v.sorted_pct, np.sort(pct))
    assert np.array_equal(pct[v.order], v.sorted_pct)  # the order lists samples by rising percentile
    assert np.array_equal(v.order, np.lexsort((np.arange(200), score.numpy())))


def test_real_difficulty_dataset_file(tmp_path):
    from torch_curriculum import MetaTokenDifficultyDataset

    raw = torch.rand(60, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * torch.arange(1, 7)
    ds = MetaTokenDifficultyDataset.from_distances(raw, [f"s{i}" for i in range(60)], tmp_path / "d.safetensors")
    s = EasyToHardSampler(ds, seed=0)  # the file's primary score
    assert set(epoch_indices(s, 0)) == pool_of(ds.difficulty.numpy(), 0.33)
    lw = LayerWiseProgressiveSampler(ds, seed=0)  # the file's normalised per-layer differences
    assert set(epoch_indices(lw, 0)) == pool_of(np_topk_mean(ds.layer_diffs.numpy()[:, :2], 2), 0.33)
    loader = DataLoader(ds, sampler=lw, batch_size=5, collate_fn=list)
    assert sum(len(b) for b in loader) == len(lw)


def test_top_k_defaults_to_the_files_k_and_a_conflicting_k_is_an_error(tmp_path):
    from torch_curriculum import CurriculumConfig, MetaTokenDifficultyDataset

    raw = torch.rand(60, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    cfg = CurriculumConfig.from_dict({"meta_token": {"top_k": 2}})
    ds = MetaTokenDifficultyDataset.from_distances(raw, [f"s{i}" for i in range(60)], tmp_path / "d.safetensors", cfg)
    assert ds.top_k == 2
    hs = LayerSpecificSampler(ds, seed=0)
    assert hs.top_k == 2  # not the default 3: the file's own K
    assert EasyToHardSampler(ds, top_k=2).top_k == 2
    with pytest.raises(ValueError, match="top_k=3 conflicts with the difficulty file's top_k=2"):
        LayerWiseProgressiveSampler(ds, top_k=3)
    with pytest.raises(ValueError, match="top_k must be an integer >= 1 or None"):
        EasyToHardSampler(ds, top_k=0)
    assert EasyToHardSampler(ds.layer_diffs).top_k == 3  # a bare tensor: the documented default
