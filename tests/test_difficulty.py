"""Difficulty math against independent numpy/scipy references on random data, plus properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats
from scipy.spatial import distance

from torch_curriculum import (
    aggregate,
    assign_stages,
    layer_distances,
    normalize_layers,
    percentiles,
)
from torch_curriculum.difficulty import default_tau, ledoit_wolf_covariance, score_all

RNG = np.random.default_rng(1234)


def _pair(n=13, n_layers=5, d=7, scale=1.0):
    a = RNG.normal(size=(n, n_layers, d)) * scale
    b = RNG.normal(size=(n, n_layers, d)) * scale
    return a, b


def test_l2_matches_scipy_euclidean():
    a, b = _pair()
    got = layer_distances(torch.tensor(a), torch.tensor(b), "l2").numpy()
    ref = np.array([[distance.euclidean(a[i, j], b[i, j]) for j in range(a.shape[1])] for i in range(a.shape[0])])
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_cosine_matches_scipy_cosine():
    a, b = _pair()
    got = layer_distances(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32), "cosine")
    assert got.dtype == torch.float64
    ref = np.array([[distance.cosine(a[i, j], b[i, j]) for j in range(a.shape[1])] for i in range(a.shape[0])])
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_coord_softmax_kl_matches_scipy_entropy_cloud_is_reference(temperature):
    a, b = _pair(scale=2.0)
    got = layer_distances(torch.tensor(a), torch.tensor(b), "coord_softmax_kl", temperature=temperature).numpy()
    p = special.softmax(a / temperature, axis=-1)
    q = special.softmax(b / temperature, axis=-1)
    ref = stats.entropy(p, q, axis=-1)  # KL(p || q), p = cloud
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    # not symmetric: swapping the roles changes the value
    swapped = layer_distances(torch.tensor(b), torch.tensor(a), "coord_softmax_kl", temperature=temperature).numpy()
    assert not np.allclose(got, swapped)


def _sklearn_style_ledoit_wolf(x: np.ndarray) -> np.ndarray:
    """Independent Ledoit-Wolf (sklearn.covariance.ledoit_wolf's formulas, written out in numpy)."""
    n, d = x.shape
    x = x - x.mean(0)
    emp = x.T @ x / n
    mu = np.trace(emp) / d
    x2 = x**2
    beta_ = (x2.T @ x2 / n - emp**2).sum() / n
    delta_ = ((emp - mu * np.eye(d)) ** 2).sum()
    beta = min(beta_, delta_)
    s = 0.0 if delta_ == 0 else beta / delta_
    return (1 - s) * emp + s * mu * np.eye(d)


@pytest.mark.parametrize("n", [6, 40])  # fewer and more samples than dimensions
def test_ledoit_wolf_matches_reference(n):
    x = RNG.normal(size=(n, 9)) @ RNG.normal(size=(9, 9))
    got = ledoit_wolf_covariance(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, _sklearn_style_ledoit_wolf(x), rtol=1e-10, atol=1e-12)
    batched = ledoit_wolf_covariance(torch.tensor(np.stack([x, 2 * x])))
    np.testing.assert_allclose(batched[1].numpy(), _sklearn_style_ledoit_wolf(2 * x), rtol=1e-10)


def test_mahalanobis_matches_scipy_with_estimated_covariance():
    a, b = _pair(n=30)
    got = layer_distances(torch.tensor(a), torch.tensor(b), "mahalanobis").numpy()
    for j in range(a.shape[1]):
        vi = np.linalg.inv(_sklearn_style_ledoit_wolf(a[:, j] - b[:, j]))
        ref = [distance.mahalanobis(a[i, j], b[i, j], vi) for i in range(a.shape[0])]
        np.testing.assert_allclose(got[:, j], ref, rtol=1e-9)


def test_mahalanobis_with_given_covariance_and_precision():
    a, b = _pair(n=4)
    m = RNG.normal(size=(7, 7))
    cov = m @ m.T + 7 * np.eye(7)
    vi = np.linalg.inv(cov)
    ref = np.array([[distance.mahalanobis(a[i, j], b[i, j], vi) for j in range(5)] for i in range(4)])
    got_cov = layer_distances(torch.tensor(a), torch.tensor(b), "mahalanobis", covariance=torch.tensor(cov))
    got_prec = layer_distances(torch.tensor(a), torch.tensor(b), "mahalanobis", precision=torch.tensor(vi))
    np.testing.assert_allclose(got_cov.numpy(), ref, rtol=1e-9)
    np.testing.assert_allclose(got_prec.numpy(), ref, rtol=1e-9)
    # one covariance per layer
    per_layer = torch.tensor(np.stack([cov * (j + 1) for j in range(5)]))
    got = layer_distances(torch.tensor(a), torch.tensor(b), "mahalanobis", covariance=per_layer).numpy()
    np.testing.assert_allclose(got[:, 2], ref[:, 2] / np.sqrt(3), rtol=1e-9)


def test_distance_errors_are_clear():
    a = torch.randn(3, 2, 4)
    with pytest.raises(ValueError, match="shapes differ"):
        layer_distances(a, torch.randn(3, 2, 5))
    with pytest.raises(ValueError, match=r"\[N, L, d\]"):
        layer_distances(a[0], a[0])
    with pytest.raises(ValueError, match="unknown metric 'manhattan'"):
        layer_distances(a, a, "manhattan")
    bad = a.clone()
    bad[2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="edge holds NaN/Inf values at sample 2, layer 1"):
        layer_distances(a, bad)
    with pytest.raises(ValueError, match="N >= 2"):
        layer_distances(a[:1], a[:1] + 1, "mahalanobis")
    with pytest.raises(ValueError, match="only apply to metric='mahalanobis'"):
        layer_distances(a, a, "l2", covariance=torch.eye(4))
    with pytest.raises(ValueError, match=r"\[L, d, d\]"):
        layer_distances(a, a + 1, "mahalanobis", covariance=torch.eye(3))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        layer_distances(a, a, "coord_softmax_kl", temperature=0.0)


def test_identical_inputs_give_zero_distance():
    a = torch.randn(5, 3, 8)
    for metric in ("l2", "cosine", "coord_softmax_kl"):
        assert torch.allclose(layer_distances(a, a.clone(), metric), torch.zeros(5, 3, dtype=torch.float64), atol=1e-7)


def _ref_rank(col: np.ndarray) -> np.ndarray:
    # scipy's "max" rank: ties get the highest rank = count of values <= x
    return stats.rankdata(col, method="max") / len(col)


def test_normalize_rank_matches_scipy_rankdata_with_ties():
    d = RNG.integers(0, 4, size=(25, 6)).astype(float)  # many ties
    got = normalize_layers(torch.tensor(d), "rank").numpy()
    ref = np.stack([_ref_rank(d[:, j]) for j in range(6)], axis=1)
    np.testing.assert_allclose(got, ref)
    assert got.min() > 0 and got.max() == 1.0


def test_normalize_zscore_and_robust_match_numpy():
    d = RNG.gamma(2.0, size=(50, 4)) * np.array([1, 10, 100, 1000])
    z = normalize_layers(torch.tensor(d), "zscore").numpy()
    np.testing.assert_allclose(z, stats.zscore(d, axis=0), rtol=1e-10)
    r = normalize_layers(torch.tensor(d), "robust").numpy()
    q1, med, q3 = np.percentile(d, [25, 50, 75], axis=0)
    np.testing.assert_allclose(r, (d - med) / (q3 - q1), rtol=1e-10)
    np.testing.assert_allclose(normalize_layers(torch.tensor(d), "none").numpy(), d)
    # the point of normalising: per-layer scales no longer decide the top-K
    assert np.allclose(z.std(axis=0), 1.0)


def test_normalize_constant_layer_and_errors():
    d = torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    assert torch.equal(normalize_layers(d, "zscore")[:, 1], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(normalize_layers(d, "robust")[:, 1], torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown normalisation 'minmax'"):
        normalize_layers(d, "minmax")
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        normalize_layers(torch.ones(3), "rank")


@pytest.mark.parametrize("k", [1, 3, 6])
def test_aggregates_match_numpy(k):
    d = RNG.random(size=(20, 6))
    t = torch.tensor(d)
    np.testing.assert_allclose(aggregate(t, "mean").numpy(), d.mean(1))
    np.testing.assert_allclose(aggregate(t, "max").numpy(), d.max(1))
    np.testing.assert_allclose(aggregate(t, "topk_mean", k=k).numpy(), np.sort(d, axis=1)[:, -k:].mean(1))
    for tau in (0.5, 2.0, None):
        tau_v = default_tau(6) if tau is None else tau
        w = np.exp(-np.arange(6) / tau_v)
        ref = (d * (w / w.sum())).sum(1)
        np.testing.assert_allclose(aggregate(t, "weighted_mean", tau=tau).numpy(), ref, rtol=1e-12)


def test_aggregate_hand_computed_and_errors():
    d = torch.tensor([[0.1, 0.9, 0.5, 0.3]])
    assert aggregate(d, "topk_mean", k=2).item() == pytest.approx(0.7)
    assert aggregate(d, "mean").item() == pytest.approx(0.45)
    w = torch.exp(-torch.arange(4.0, dtype=torch.float64))
    assert aggregate(d, "weighted_mean", tau=1.0).item() == pytest.approx(float((d[0].double() * w).sum() / w.sum()))
    with pytest.raises(ValueError, match="larger than the number of layers L=4"):
        aggregate(d, "topk_mean", k=5)
    with pytest.raises(ValueError, match=">= 1"):
        aggregate(d, "topk_mean", k=0)
    with pytest.raises(ValueError, match="tau must be"):
        aggregate(d, "weighted_mean", tau=-1.0)
    with pytest.raises(ValueError, match="unknown aggregate"):
        aggregate(d, "median")
    assert set(score_all(d, k=2)) == {"mean", "max", "top2_mean", "weighted_mean"}


def test_percentiles_hand_computed_and_match_scipy():
    p = percentiles(torch.tensor([0.3, 0.1, 0.3, 0.9]))
    assert p.tolist() == [0.75, 0.25, 0.75, 1.0]
    s = RNG.integers(0, 10, size=200).astype(float)
    np.testing.assert_allclose(percentiles(torch.tensor(s)).numpy(), _ref_rank(s))
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        percentiles(torch.ones(2, 2))
    with pytest.raises(ValueError, match="NaN/Inf"):
        percentiles(torch.tensor([1.0, float("inf")]))


def test_assign_stages_boundaries():
    p = torch.tensor([0.01, 0.33, 0.3300001, 0.66, 0.67, 1.0], dtype=torch.float64)
    assert assign_stages(p).tolist() == [1, 1, 2, 2, 3, 3]
    assert assign_stages(p, [1.0]).tolist() == [1] * 6
    for bad, msg in [([0.5, 0.4, 1.0], "strictly increasing"), ([0.3, 0.9], "must be 1.0"), ([0.0, 1.0], r"\(0, 1\]")]:
        with pytest.raises(ValueError, match=msg):
            assign_stages(p, bad)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        assign_stages(torch.tensor([0.0], dtype=torch.float64))


scores_st = st.lists(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=1, max_size=60)
bounds_st = st.lists(st.floats(0.01, 0.99), min_size=0, max_size=5).map(lambda xs: [*sorted({round(x, 3) for x in xs}), 1.0])


@settings(max_examples=150, deadline=None)
@given(scores=scores_st, bounds=bounds_st)
def test_percentiles_and_stages_properties(scores, bounds):
    s = torch.tensor(scores, dtype=torch.float64)
    p = percentiles(s)
    n = len(scores)
    assert bool(((p > 0) & (p <= 1)).all()) and p.max().item() == 1.0
    # monotone in score; ties share a percentile
    order = torch.argsort(s)
    assert bool((p[order][1:] >= p[order][:-1]).all())
    for i in range(n):
        assert p[i].item() == pytest.approx(sum(x <= scores[i] for x in scores) / n)
    stages = assign_stages(p, bounds)
    assert bool((stages[order][1:] >= stages[order][:-1]).all())
    assert stages.min() >= 1 and stages.max() <= len(bounds)
    # stage counts match the percentile bands: stage s holds exactly the samples with
    # bounds[s-2] < p <= bounds[s-1]
    lower = [0.0, *bounds[:-1]]
    for s_idx, (lo, hi) in enumerate(zip(lower, bounds), start=1):
        in_band = int(((p > lo) & (p <= hi)).sum())
        assert int((stages == s_idx).sum()) == in_band


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_rank_normalisation_properties(n, n_layers, seed):
    g = torch.Generator().manual_seed(seed)
    d = torch.rand(n, n_layers, generator=g) * torch.logspace(0, 3, n_layers)
    r = normalize_layers(d, "rank")
    assert bool(((r > 0) & (r <= 1)).all())
    assert torch.allclose(r.max(dim=0).values, torch.ones(n_layers, dtype=torch.float64))
    # rank is invariant to any increasing transform of a layer
    assert torch.equal(normalize_layers(d.double() ** 3 + 5, "rank"), r)


def test_old_kl_metric_name_is_an_error_pointing_to_its_replacements():
    a = torch.randn(3, 2, 4)
    with pytest.raises(ValueError, match="'kl' was removed.*coord_softmax_kl.*vocab_kl"):
        layer_distances(a, a + 1, "kl")
