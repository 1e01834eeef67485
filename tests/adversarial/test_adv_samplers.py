"""Issue 14, sampler items: NaN/inf parameters (4), resume states from another table or hand-edited
(10), and misuse that crashed deep inside (11) — each a clear error naming the parameter or field."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from torch_curriculum import ConfigError, CurriculumConfig, MetaTokenDifficultyDataset
from torch_curriculum.samplers import (
    DynamicPacingSampler,
    EasyToHardSampler,
    HybridSampler,
    LayerSpecificSampler,
    LayerWiseProgressiveSampler,
    build_sampler,
)


def table(n: int = 50, layers: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, layers, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------- item 4: NaN / inf parameters
@pytest.mark.parametrize("cls", [DynamicPacingSampler, HybridSampler], ids=lambda c: c.__name__)
@pytest.mark.parametrize(("param", "value"), [
    ("loss_threshold", float("nan")), ("loss_threshold", float("inf")), ("loss_threshold", -float("inf")),
    ("difficulty_step_up", float("nan")), ("difficulty_step_down", float("inf")),
    ("min_percentile", float("nan")), ("initial_percentile", float("nan")),
])
def test_non_finite_dynamic_parameters_are_rejected_by_name(cls, param, value):
    with pytest.raises(ValueError, match=param):
        cls(table(), **{param: value})


def test_nan_loss_threshold_never_reaches_a_sampler_through_a_config():
    cfg = CurriculumConfig.from_dict({"curriculum": {"strategy": "dynamic"}})
    cfg.curriculum.loss_threshold = float("nan")  # set by hand, past the loader's checks
    with pytest.raises(ValueError, match="loss_threshold must be a finite number, got nan"):
        build_sampler(cfg, table())


@pytest.mark.parametrize(("cls", "kw", "param"), [
    (EasyToHardSampler, {"root_degree": float("nan")}, "root_degree"),
    (EasyToHardSampler, {"stage_percentiles": (0.33, float("nan"), 1.0)}, "stage_percentiles"),
    (LayerSpecificSampler, {"phase1_epochs": float("nan")}, "phase1_epochs"),
])
def test_other_non_finite_parameters_are_rejected_by_name(cls, kw, param):
    with pytest.raises(ValueError, match=param):
        cls(table(), **kw)


def test_dynamic_pacing_still_moves_after_the_checks():
    s = DynamicPacingSampler(table(), loss_threshold=1.0, seed=0)
    s.set_epoch(1)
    s.update(0.5)
    assert s.percentile == pytest.approx(0.38)


# ----------------------------------------------------------------------------- item 10: state on another table
def test_state_from_the_same_table_with_rows_reordered_is_refused(tmp_path):
    raw = torch.rand(60, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ids = [f"s{i}" for i in range(60)]
    ds = MetaTokenDifficultyDataset.from_distances(raw, ids, tmp_path / "a.safetensors")
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(2))
    ds2 = MetaTokenDifficultyDataset.from_distances(raw[perm], [ids[i] for i in perm], tmp_path / "b.safetensors")
    assert sorted(ds.difficulty.tolist()) == sorted(ds2.difficulty.tolist())  # same values, other order
    s = EasyToHardSampler(ds, seed=0)
    it = iter(s)
    [next(it) for _ in range(5)]
    state = json.loads(json.dumps(s.state_dict()))
    with pytest.raises(ValueError, match="another row order"):
        EasyToHardSampler(ds2, seed=0).load_state_dict(state)
    # the same file loads, and the tensor path too
    EasyToHardSampler(MetaTokenDifficultyDataset(ds.path), seed=0).load_state_dict(state)
    t_state = EasyToHardSampler(raw, seed=0).state_dict()
    with pytest.raises(ValueError, match="identity"):
        EasyToHardSampler(raw[perm], seed=0).load_state_dict(t_state)


@pytest.mark.parametrize(("edit", "field"), [
    (lambda st: st["strategy_state"].update(p=float("nan")), "strategy_state.p"),
    (lambda st: st["strategy_state"].update(p=5), "strategy_state.p"),
    (lambda st: st["strategy_state"].update(p=0.0), "strategy_state.p"),
    (lambda st: st["strategy_state"].update(p=0.01), "min_percentile"),
    (lambda st: st["strategy_state"].update(threshold=float("inf")), "strategy_state.threshold"),
    (lambda st: st["strategy_state"].update(losses=[1.0, float("nan")]), "strategy_state.losses"),
    (lambda st: st["strategy_state"].pop("p"), "strategy_state.p"),
    (lambda st: st.update(epoch=-1), "'epoch'"),
    (lambda st: st.update(step=1.5), "'step'"),
    (lambda st: st.update(yielded=10**6), "'yielded'"),
    (lambda st: st.update(exhausted="no"), "'exhausted'"),
    (lambda st: st.update(pass_kind=[0, "x|primary"]), "'pass_kind'"),
    (lambda st: st.update(num_replicas=4), "num_replicas"),
])
def test_hand_edited_states_are_refused_naming_the_field(edit, field):
    s = HybridSampler(table(), seed=0)
    it = iter(s)
    [next(it) for _ in range(7)]
    s.update(1.0)
    state = json.loads(json.dumps(s.state_dict()))
    bad = copy.deepcopy(state)
    edit(bad)
    fresh = HybridSampler(table(), seed=0)
    before = fresh.state_dict()
    with pytest.raises(ValueError, match=field.replace(".", r"\.").replace("[", r"\[")):
        fresh.load_state_dict(bad)
    assert fresh.state_dict() == before  # a refused state changes nothing
    fresh.load_state_dict(state)
    assert list(fresh) == list(s)


# ----------------------------------------------------------------------------- item 11: misuse
def test_build_sampler_accepts_a_dict_and_names_what_it_expected():
    d = table()
    s = build_sampler({"curriculum": {"strategy": "easy_to_hard"}, "training": {"seed": 4}}, d)
    assert type(s) is EasyToHardSampler and s.seed == 4
    with pytest.raises(ConfigError) as e:
        build_sampler({"curriculum": {"stratgy": "dynamic"}}, d)
    assert e.value.key == "curriculum.stratgy"
    for bad in ("examples/configs/seed.yaml", 3, None):
        with pytest.raises(TypeError, match="config must be a CurriculumConfig .* got"):
            build_sampler(bad, d)


@pytest.mark.parametrize("key", ["strategy", "identity", "walk", "strategy_state"])
def test_an_incomplete_state_names_the_missing_key(key):
    state = LayerWiseProgressiveSampler(table(), seed=0).state_dict()
    del state[key]
    with pytest.raises(ValueError, match=f"incomplete: missing key\\(s\\) '{key}'"):
        LayerWiseProgressiveSampler(table(), seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="not a sampler state"):
        LayerWiseProgressiveSampler(table(), seed=0).load_state_dict([1, 2])


def test_dynamic_only_parameters_on_a_static_strategy_are_named():
    with pytest.raises(TypeError, match="unexpected keyword argument 'loss_threshold'"):
        EasyToHardSampler(table(), loss_threshold=1.0)
    with pytest.raises(TypeError, match="'pacing_funtion'"):
        EasyToHardSampler(table(), pacing_funtion="linear")
