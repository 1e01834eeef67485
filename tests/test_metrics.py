"""torch_curriculum.experiments.metrics against hand-made learning curves and scipy references."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from scipy import stats

from torch_curriculum.experiments.metrics import (
    bootstrap_ci,
    compare_correlations,
    compare_to_baseline,
    holm,
    layer_stabilisation_step,
    mde_paired,
    paired_test,
    pct_fewer_steps,
    per_sample_mean_loss,
    rank_correlation,
    rank_strategies,
    ranking_verdict,
    samples_to_target,
    spearman_rows,
    steps_to_target,
    t_ci,
    wall_time_to_target,
)

# ------------------------------------------------------------------ steps / samples / wall time

STEPS = [100, 200, 300, 400, 500]
CURVE = [3.0, 2.6, 2.2, 1.9, 1.8]


def test_steps_to_target_first_evaluation_at_or_below():
    assert steps_to_target(STEPS, CURVE, 2.2) == 300.0  # equality counts as reached
    assert steps_to_target(STEPS, CURVE, 2.0) == 400.0
    assert steps_to_target(STEPS, CURVE, 5.0) == 100.0


def test_steps_to_target_interpolates_linearly_between_evaluations():
    # 2.2 at 300, 1.9 at 400: 2.0 is 2/3 of the way -> 366.67
    assert steps_to_target(STEPS, CURVE, 2.0, interpolate=True) == pytest.approx(300 + 100 * 2 / 3)
    # exactly on an evaluation: no shift
    assert steps_to_target(STEPS, CURVE, 2.2, interpolate=True) == pytest.approx(300.0)
    # already below at the first evaluation: that step, nothing before it to interpolate from
    assert steps_to_target(STEPS, CURVE, 3.5, interpolate=True) == 100.0


def test_steps_to_target_never_reached_is_none():
    assert steps_to_target(STEPS, CURVE, 1.0) is None
    assert steps_to_target(STEPS, CURVE, 1.0, interpolate=True) is None


def test_non_monotone_curve_uses_first_crossing():
    curve = [3.0, 1.9, 2.5, 1.5]
    assert steps_to_target([1, 2, 3, 4], curve, 2.0) == 2.0


def test_diverged_evaluations_never_count():
    curve = [3.0, float("nan"), float("inf"), 1.5]
    assert steps_to_target([1, 2, 3, 4], curve, 2.0) == 4.0
    # the previous evaluation is non-finite: no interpolation from it
    assert steps_to_target([1, 2, 3, 4], curve, 2.0, interpolate=True) == 4.0
    assert steps_to_target([1, 2], [float("nan")] * 2, 2.0) is None


def test_samples_and_wall_time_to_target():
    samples = [64, 128, 160, 224, 288]  # a partial batch makes it differ from step * bs
    wall = [1.0, 2.5, 2.5, 4.0, 6.0]  # non-decreasing is allowed
    assert samples_to_target(samples, CURVE, 2.0) == 224.0
    assert samples_to_target(samples, CURVE, 2.0, interpolate=True) == pytest.approx(160 + 64 * 2 / 3)
    assert wall_time_to_target(wall, CURVE, 2.6) == 2.5
    assert wall_time_to_target(wall, CURVE, 2.0, interpolate=True) == pytest.approx(2.5 + 1.5 * 2 / 3)
    assert samples_to_target(samples, CURVE, 0.5) is None
    # torch tensors are accepted too
    assert samples_to_target(torch.tensor(samples), torch.tensor(CURVE), 2.0) == 224.0


@pytest.mark.parametrize("fn,xs,match", [
    (steps_to_target, [1, 1, 2, 3, 4], "strictly increasing"),
    (samples_to_target, [1, 3, 2, 4, 5], "non-decreasing"),
    (steps_to_target, [1, 2, 3], "differ in length"),
    (steps_to_target, [], "empty"),
])
def test_curve_input_errors(fn, xs, match):
    with pytest.raises(ValueError, match=match):
        fn(xs, CURVE, 2.0)


def test_non_finite_target_is_an_error():
    with pytest.raises(ValueError, match="target"):
        steps_to_target(STEPS, CURVE, float("nan"))


def test_pct_fewer_steps():
    assert pct_fewer_steps(75, 100) == 25.0
    assert pct_fewer_steps(120, 100) == pytest.approx(-20.0)
    out = pct_fewer_steps([50, 90], [100, 60])
    np.testing.assert_allclose(out, [50.0, -50.0])
    with pytest.raises(ValueError, match="random_steps"):
        pct_fewer_steps(10, 0)
    with pytest.raises(ValueError, match="shape"):
        pct_fewer_steps([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="never reached"):
        pct_fewer_steps(float("nan"), 10)


def test_per_sample_mean_loss_matches_a_loop():
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 20, size=300)
    idx[idx == 7] = 8  # sample 7 never seen
    losses = rng.normal(2, 1, size=300)
    got = per_sample_mean_loss(idx, losses, 20)
    for i in range(20):
        seen = losses[idx == i]
        if seen.size:
            assert got[i] == pytest.approx(seen.mean())
        else:
            assert math.isnan(got[i])
    with pytest.raises(ValueError, match="outside"):
        per_sample_mean_loss([0, 20], [1.0, 1.0], 20)
    with pytest.raises(ValueError, match="integers"):
        per_sample_mean_loss([0.0, 1.0], [1.0, 1.0], 20)

# ------------------------------------------------------------------ confidence intervals


@pytest.mark.parametrize("method", ["percentile", "bca"])
@pytest.mark.parametrize("dist", ["normal", "lognormal"])
def test_bootstrap_ci_agrees_with_scipy(method, dist):
    rng = np.random.default_rng(123)
    x = rng.normal(1.0, 2.0, 60) if dist == "normal" else rng.lognormal(0.0, 1.0, 60)
    ours = bootstrap_ci(x, np.mean, n_resamples=20000, seed=5, method=method)
    ref = stats.bootstrap((x,), np.mean, n_resamples=20000, method=method.upper() if method == "bca"
                          else "percentile", rng=np.random.default_rng(99)).confidence_interval
    se = x.std(ddof=1) / math.sqrt(x.size)
    # Two independent Monte Carlo estimates of the same interval: agree to a few % of the SE.
    assert ours[0] == pytest.approx(ref.low, abs=0.06 * se)
    assert ours[1] == pytest.approx(ref.high, abs=0.06 * se)
    assert ours[0] < x.mean() < ours[1]


def test_bca_differs_from_percentile_on_skewed_data():
    x = np.random.default_rng(0).lognormal(0.0, 1.2, 40)
    pct = bootstrap_ci(x, n_resamples=20000, method="percentile")
    bca = bootstrap_ci(x, n_resamples=20000, method="bca")
    # BCa moves the interval to the right for a right-skewed mean.
    assert bca[1] > pct[1] and bca[0] > pct[0]


def test_bootstrap_ci_with_a_non_vectorised_statistic_matches_scipy():
    rng = np.random.default_rng(7)
    x = rng.normal(size=41)

    def trimmed(v):  # no axis argument: called row by row
        return float(stats.trim_mean(v, 0.1))

    ours = bootstrap_ci(x, trimmed, n_resamples=3000, seed=1)
    ref = stats.bootstrap((x,), lambda v, axis=-1: stats.trim_mean(v, 0.1, axis=axis),
                          n_resamples=20000, method="percentile",
                          rng=np.random.default_rng(2)).confidence_interval
    assert ours[0] == pytest.approx(ref.low, abs=0.04)
    assert ours[1] == pytest.approx(ref.high, abs=0.04)


def test_bootstrap_ci_is_seeded_and_degenerate_data_gives_a_point():
    x = np.random.default_rng(0).normal(size=25)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    assert bootstrap_ci(x, seed=3) != bootstrap_ci(x, seed=4)
    assert bootstrap_ci([2.0, 2.0, 2.0], method="bca") == (2.0, 2.0)
    lo90, hi90 = bootstrap_ci(x, confidence=0.90)
    lo99, hi99 = bootstrap_ci(x, confidence=0.99)
    assert lo99 < lo90 and hi90 < hi99


@pytest.mark.parametrize("kwargs,match", [
    ({"values": [1.0]}, "at least 2"),
    ({"values": [1.0, float("nan")]}, "NaN"),
    ({"values": [1.0, 2.0], "confidence": 1.0}, "confidence"),
    ({"values": [1.0, 2.0], "method": "basic"}, "method"),
])
def test_bootstrap_ci_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(**kwargs)


def test_t_ci_matches_scipy_t_interval():
    x = np.random.default_rng(4).normal(10, 3, 5)
    ref = stats.t.interval(0.95, x.size - 1, loc=x.mean(), scale=stats.sem(x))
    np.testing.assert_allclose(t_ci(x), ref, rtol=1e-12)

# ------------------------------------------------------------------ paired tests, Holm


def test_paired_test_matches_scipy():
    rng = np.random.default_rng(11)
    a = rng.normal(0, 1, 8)
    b = a + rng.normal(0.5, 0.5, 8)
    out = paired_test(a, b)
    t = stats.ttest_rel(a, b)
    w = stats.wilcoxon(a, b)
    assert out["t_stat"] == pytest.approx(t.statistic)
    assert out["t_p"] == pytest.approx(t.pvalue)
    assert out["p_value"] == out["t_p"]
    assert out["wilcoxon_p"] == pytest.approx(w.pvalue)
    assert out["mean_diff"] == pytest.approx(np.mean(a - b))
    assert out["n"] == 8


def test_paired_test_small_n_and_degenerate():
    out = paired_test([1.0, 2.0, 3.0], [1.5, 2.2, 3.9])
    assert out["wilcoxon_p"] is None
    assert out["p_value"] == pytest.approx(stats.ttest_rel([1.0, 2.0, 3.0], [1.5, 2.2, 3.9]).pvalue)
    same = paired_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same["p_value"] == 1.0 and same["mean_diff"] == 0.0
    shifted = paired_test([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    assert shifted["p_value"] == 0.0 and shifted["t_stat"] == math.inf
    with pytest.raises(ValueError, match="same length"):
        paired_test([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least 2"):
        paired_test([1.0], [2.0])


def test_holm_by_hand():
    # sorted: 0.01 (x3) = 0.03, 0.03 (x2) = 0.06, 0.04 (x1) = 0.04 -> monotone max -> 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([0.001]) == pytest.approx([0.001])
    assert holm([]) == []
    with pytest.raises(ValueError):
        holm([1.5])

# ------------------------------------------------------------------ rank correlation


def test_rank_correlation_point_estimates_match_scipy_with_ties():
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=200), 1)  # ties on both sides
    y = np.round(x + rng.normal(scale=1.5, size=200), 1)
    out = rank_correlation(x, y, n_boot=300, seed=0)
    sp = stats.spearmanr(x, y)
    kt = stats.kendalltau(x, y)
    assert out["spearman"] == pytest.approx(sp.statistic, abs=1e-12)
    assert out["spearman_p"] == pytest.approx(sp.pvalue, rel=1e-9)
    assert out["kendall"] == pytest.approx(kt.statistic, abs=1e-12)
    assert out["kendall_p"] == pytest.approx(kt.pvalue, rel=1e-9)
    assert out["n"] == 200
    for key, point in (("spearman_ci95", out["spearman"]), ("kendall_ci95", out["kendall"])):
        lo, hi = out[key]
        assert lo < point < hi


def test_rank_correlation_ci_agrees_with_scipy_paired_bootstrap():
    rng = np.random.default_rng(8)
    x = rng.normal(size=80)
    y = 0.5 * x + rng.normal(size=80)
    out = rank_correlation(x, y, n_boot=4000, seed=2)

    def rho(a, b, axis=-1):
        return spearman_rows(np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1))

    ref = stats.bootstrap((x, y), rho, paired=True, vectorized=True, n_resamples=4000,
                          method="percentile", rng=np.random.default_rng(5)).confidence_interval
    assert out["spearman_ci95"][0] == pytest.approx(ref.low, abs=0.02)
    assert out["spearman_ci95"][1] == pytest.approx(ref.high, abs=0.02)

    def tau(a, b):
        return stats.kendalltau(a, b).statistic

    ref_tau = stats.bootstrap((x, y), tau, paired=True, vectorized=False, n_resamples=1000,
                              method="percentile", rng=np.random.default_rng(6)).confidence_interval
    assert out["kendall_ci95"][0] == pytest.approx(ref_tau.low, abs=0.03)
    assert out["kendall_ci95"][1] == pytest.approx(ref_tau.high, abs=0.03)


def test_rank_correlation_pairs_resampled_together():
    # A perfect monotone relation stays perfect in every paired resample (ties from repeats
    # are ties on both sides): the CI collapses to 1. Resampling x and y independently would not.
    x = np.arange(30.0)
    out = rank_correlation(x, x ** 2, n_boot=200)
    assert out["spearman_ci95"] == pytest.approx([1.0, 1.0])
    assert out["kendall_ci95"] == pytest.approx([1.0, 1.0])


def test_spearman_rows_vectorised_matches_scipy_per_row():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 30))
    y = x + rng.normal(size=(5, 30))
    got = spearman_rows(x, y)
    for i in range(5):
        assert got[i] == pytest.approx(stats.spearmanr(x[i], y[i]).statistic)


def test_compare_correlations_matches_scipy_paired_bootstrap():
    rng = np.random.default_rng(12)
    y = rng.normal(size=150)
    a = y + rng.normal(scale=0.7, size=150)
    b = y + rng.normal(scale=1.5, size=150)
    out = compare_correlations(a, b, y, n_boot=4000, seed=3)
    assert out["diff_abs_spearman"] == pytest.approx(
        abs(stats.spearmanr(a, y).statistic) - abs(stats.spearmanr(b, y).statistic))

    def diff(xa, xb, yy, axis=-1):
        xa, xb, yy = (np.moveaxis(v, axis, -1) for v in (xa, xb, yy))
        return np.abs(spearman_rows(xa, yy)) - np.abs(spearman_rows(xb, yy))

    ref = stats.bootstrap((a, b, y), diff, paired=True, vectorized=True, n_resamples=4000,
                          method="percentile", rng=np.random.default_rng(4)).confidence_interval
    assert out["ci95"][0] == pytest.approx(ref.low, abs=0.015)
    assert out["ci95"][1] == pytest.approx(ref.high, abs=0.015)
    assert out["a_better"] and not out["b_better"]
    # the same signal twice: the difference is exactly 0 in every resample
    same = compare_correlations(a, a, y, n_boot=100)
    assert same["ci95"] == [0.0, 0.0] and not same["a_better"] and not same["b_better"]
    with pytest.raises(ValueError, match="equal length"):
        compare_correlations(a, b[:-1], y)


def test_resampled_ranks_by_counting_equal_rankdata():
    from torch_curriculum.experiments.metrics import _codes, _resampled_ranks, _spearman_boot

    rng = np.random.default_rng(5)
    x = np.round(rng.normal(size=300), 1)  # many ties
    y = rng.normal(size=300)
    idx = rng.integers(0, 300, size=(7, 300))
    np.testing.assert_allclose(_resampled_ranks(*_codes(x), idx), stats.rankdata(x[idx], axis=-1))
    np.testing.assert_allclose(_spearman_boot(_codes(x), _codes(y), idx),
                               spearman_rows(x[idx], y[idx]), atol=1e-12)


def test_rank_correlation_errors():
    with pytest.raises(ValueError, match="constant"):
        rank_correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="same length"):
        rank_correlation([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        rank_correlation([1.0, 2.0, float("nan")], [1.0, 2.0, 3.0])

# ------------------------------------------------------------------ layer stabilisation


def test_layer_stabilisation_on_hand_made_curves():
    steps = [10, 20, 30, 40, 50]
    norms = np.array([
        # layer 0 grows then settles at 1.0: inside +-5% from step 30 (0.96) on
        # layer 1 overshoots: 1.2 at 30 is outside, 1.04 at 40 inside -> 40
        # layer 2 frozen the whole run -> first step
        # layer 3 flat from the start -> first step
        [0.1, 0.2, 0.0, 2.0],
        [0.5, 0.9, 0.0, 2.0],
        [0.96, 1.2, 0.0, 2.0],
        [0.99, 1.04, 0.0, 2.0],
        [1.0, 1.0, 0.0, 2.0],
    ])
    got = layer_stabilisation_step(steps, norms, rel_tol=0.05)
    np.testing.assert_array_equal(got, [30.0, 40.0, 10.0, 10.0])
    # a tighter band moves layer 0 later (0.96 is 4% off, 0.99 is 1% off)
    assert layer_stabilisation_step(steps, norms, rel_tol=0.02)[0] == 40.0
    # leaving the band again resets: 0.96 ok, 0.5 out, then back -> stabilises at the return
    dip = layer_stabilisation_step(steps, [1.0, 0.96, 0.5, 1.0, 1.0])
    assert float(dip) == 40.0


def test_layer_stabilisation_vectorised_equals_a_loop_and_window():
    rng = np.random.default_rng(2)
    steps = np.arange(1, 41) * 5
    norms = np.abs(np.cumsum(rng.normal(size=(40, 6)), axis=0)) + 1.0
    got = layer_stabilisation_step(steps, norms, rel_tol=0.1, window=3)
    for layer in range(6):
        col = norms[:, layer]
        final = col[-3:].mean()
        want = math.nan
        for t in range(40):
            if np.all(np.abs(col[t:] - final) <= 0.1 * abs(final)):
                want = float(steps[t])
                break
        if math.isnan(want):
            assert math.isnan(got[layer])
        else:
            assert got[layer] == want
    # a final window that itself spreads beyond the band never stabilises
    never = layer_stabilisation_step([1, 2, 3], [1.0, 2.0, 1.0], window=2)
    assert math.isnan(float(never))


def test_layer_stabilisation_errors():
    with pytest.raises(ValueError, match="shape"):
        layer_stabilisation_step([1, 2], np.ones((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        layer_stabilisation_step([1, 2], [[1.0], [float("nan")]])
    with pytest.raises(ValueError, match="window"):
        layer_stabilisation_step([1, 2], [1.0, 1.0], window=3)
    with pytest.raises(ValueError, match="strictly"):
        layer_stabilisation_step([2, 1], [1.0, 1.0])

# ------------------------------------------------------------------ ranking (H3)


def test_rank_strategies_clear_differences_are_significant():
    vals = {
        "random": [1000.0, 1010.0, 990.0, 1005.0],
        "easy_to_hard": [800.0, 812.0, 795.0, 801.0],
        "layer_wise_progressive": [600.0, 605.0, 598.0, 610.0],
    }
    rows = rank_strategies(vals)
    assert [r["strategy"] for r in rows] == ["layer_wise_progressive", "easy_to_hard", "random"]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    for r in rows:
        v = np.array(vals[r["strategy"]])
        assert r["mean"] == pytest.approx(v.mean())
        np.testing.assert_allclose(r["ci95"], stats.t.interval(0.95, 3, v.mean(), stats.sem(v)))
    p1 = stats.ttest_rel(vals["layer_wise_progressive"], vals["easy_to_hard"]).pvalue
    p2 = stats.ttest_rel(vals["easy_to_hard"], vals["random"]).pvalue
    assert rows[0]["p_vs_next"] == pytest.approx(p1)
    assert rows[0]["p_holm_vs_next"] == pytest.approx(holm([p1, p2])[0])
    assert rows[0]["significant_vs_next"] and rows[1]["significant_vs_next"]
    assert rows[2]["p_vs_next"] is None and rows[0]["p_vs_best"] is None
    assert rows[2]["significant_vs_best"]
    verdict = ranking_verdict(rows, metric="steps to target")
    assert verdict.startswith("layer_wise_progressive is best on steps to target")
    assert "significantly better than every other" in verdict


def test_rank_strategies_noise_is_called_not_significant():
    rng = np.random.default_rng(0)
    vals = {s: (1000 + rng.normal(0, 50, 3)).tolist() for s in ("random", "dynamic", "hybrid")}
    rows = rank_strategies(vals)
    assert not any(r["significant_vs_next"] for r in rows[:-1])
    verdict = ranking_verdict(rows, metric="test loss")
    assert verdict.startswith("No difference in test loss")
    assert "may be noise" in verdict


def test_rank_strategies_partial_significance_and_higher_is_better():
    vals = {"a": [0.9, 0.95, 0.91], "b": [0.5, 0.7, 0.88], "c": [0.1, 0.13, 0.12]}
    rows = rank_strategies(vals, lower_is_better=False)
    assert [r["strategy"] for r in rows] == ["a", "b", "c"]
    verdict = ranking_verdict(rows)
    assert "not significantly better than b (" in verdict
    boot = rank_strategies(vals, ci_method="bootstrap", seed=1)
    lo, hi = boot[0]["ci95"]
    assert lo <= boot[0]["mean"] <= hi


def test_rank_strategies_errors():
    with pytest.raises(ValueError, match="same number of seeds"):
        rank_strategies({"a": [1.0, 2.0], "b": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="at least 2"):
        rank_strategies({"a": [1.0], "b": [2.0]})
    with pytest.raises(ValueError, match="empty"):
        rank_strategies({})
    with pytest.raises(ValueError, match="'b'"):
        rank_strategies({"a": [1.0, 2.0], "b": [1.0, float("nan")]})
    assert "Only one strategy" in ranking_verdict(rank_strategies({"a": [1.0, 2.0]}))


def test_compare_to_baseline_matches_scipy_over_the_seeds_each_pair_shares():
    rng = np.random.default_rng(3)
    base = {k: 4.0 + rng.normal(0, 0.05) for k in range(5)}
    vals = {"random": base,
            "lower": {k: v - 0.2 + rng.normal(0, 0.01) for k, v in base.items()},
            "noise": {k: v + rng.normal(0, 0.05) for k, v in base.items()},
            # an unfinished strategy: seeds 0, 2, 4 only
            "partial": {k: base[k] + 0.3 + rng.normal(0, 0.02) for k in (0, 2, 4)},
            "one_seed": {1: 3.0},
            "control": {k: v - 0.1 + rng.normal(0, 0.01) for k, v in base.items()}}
    out = compare_to_baseline(vals, "random", judged_alone=("control",))
    assert set(out) == {"lower", "noise", "partial", "one_seed", "control"}
    raw = {}
    for name in ("lower", "noise", "partial", "control"):
        seeds = sorted(vals[name])
        a = np.array([vals[name][k] for k in seeds])
        b = np.array([base[k] for k in seeds])
        r = out[name]
        assert r["seeds"] == seeds and r["n"] == len(seeds)
        assert r["mean_diff"] == pytest.approx((a - b).mean())
        np.testing.assert_allclose(r["ci95"], stats.t.interval(0.95, len(a) - 1, (a - b).mean(), stats.sem(a - b)))
        raw[name] = stats.ttest_rel(a, b).pvalue
        assert r["p_value"] == pytest.approx(raw[name])
        assert r["mde"] == pytest.approx(mde_paired(a - b))
    # Holm over the three competing strategies, by hand; the control keeps its own p-value
    fam = ["lower", "noise", "partial"]
    order = sorted(fam, key=raw.get)
    adj, running = {}, 0.0
    for i, name in enumerate(order):
        running = max(running, min(1.0, (len(fam) - i) * raw[name]))
        adj[name] = running
    for name in fam:
        assert out[name]["p_holm"] == pytest.approx(adj[name])
    assert out["control"]["p_holm"] == pytest.approx(raw["control"])
    assert out["lower"]["direction"] == "lower" and out["partial"]["direction"] == "higher"
    assert out["control"]["direction"] == "lower"
    assert out["noise"]["significant"] is False and out["noise"]["direction"] is None
    assert out["one_seed"]["n"] == 1 and out["one_seed"]["p_value"] is None
    assert out["one_seed"]["significant"] is None


def test_compare_to_baseline_needs_both_the_test_and_the_ci():
    # four seeds, differences -0.1 each plus one tiny wobble: p tiny, CI excludes 0 -> lower;
    # in the Holm family with a second, null comparison the adjusted p still passes
    vals = {"random": {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0},
            "a": {0: 0.9, 1: 1.9, 2: 2.9, 3: 3.91},
            "b": {0: 1.2, 1: 1.8, 2: 3.1, 3: 3.9}}
    out = compare_to_baseline(vals, "random")
    assert out["a"]["direction"] == "lower" and out["b"]["direction"] is None
    with pytest.raises(ValueError, match="baseline 'x' has no values"):
        compare_to_baseline(vals, "x")
    with pytest.raises(ValueError, match="'a'"):
        compare_to_baseline({"random": {0: 1.0, 1: 2.0}, "a": {0: float("nan"), 1: 1.0}}, "random")


def test_missing_scipy_is_a_clear_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    # curve metrics need only numpy
    assert steps_to_target([1, 2], [3.0, 1.0], 2.0) == 2.0
    with pytest.raises(ImportError, match=r"torch_curriculum\[examples\]"):
        t_ci([1.0, 2.0, 3.0])


# ------------------------------------------------------------------ AUC, AUROC and power (issue 13)


def test_area_under_curve_is_the_trapezoid_mean_loss():
    from torch_curriculum.experiments.metrics import area_under_curve

    steps = np.array([0.0, 4.0, 8.0, 20.0])
    loss = np.array([5.0, 4.0, 3.5, 3.0])
    want = np.trapezoid(loss, steps) / 20.0 if hasattr(np, "trapezoid") else np.trapz(loss, steps) / 20.0
    assert area_under_curve(steps, loss) == pytest.approx(want)
    # a constant curve's mean is its level, whatever the grid
    assert area_under_curve([0, 3, 10], [2.0, 2.0, 2.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        area_under_curve([0, 2, 2], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="same length >= 2"):
        area_under_curve([0], [1.0])


def test_auroc_matches_a_brute_force_pair_count():
    from torch_curriculum.experiments.metrics import auroc, auroc_ci

    rng = np.random.default_rng(3)
    y = (rng.random(60) < 0.35).astype(int)
    x = np.round(rng.normal(size=60) + 1.5 * y, 1)  # rounding makes ties
    pos, neg = x[y == 1], x[y == 0]
    brute = np.mean([1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg])
    assert auroc(x, y) == pytest.approx(brute)
    assert auroc(-x, y) == pytest.approx(1 - brute)
    r = auroc_ci(x, y, n_boot=400, seed=1)
    assert r["ci95"][0] < r["auroc"] < r["ci95"][1] and r["n_positive"] == int(y.sum())
    assert r["ci95"][0] > 0.5  # a 1.5-SD shift is real and 60 samples see it
    with pytest.raises(ValueError, match="both classes"):
        auroc([1.0, 2.0], [1, 1])
    with pytest.raises(ValueError, match="0 or 1"):
        auroc([1.0, 2.0], [0, 2])


@pytest.mark.parametrize("n,sd", [(3, 12.0), (5, 20.0), (8, 7.5)])
def test_mde_matches_a_simulated_paired_t_test_power(n, sd):
    """At the MDE, a simulated paired t-test on synthetic per-seed data rejects 80% of the time."""
    from torch_curriculum.experiments.metrics import mde_paired

    rng = np.random.default_rng(n)
    observed = rng.normal(0.0, 1.0, size=n)
    observed = (observed - observed.mean()) / observed.std(ddof=1) * sd  # sample SD exactly sd
    mde = mde_paired(observed, alpha=0.05, power=0.8)
    sims = rng.normal(mde, sd, size=(40000, n))
    p = stats.ttest_1samp(sims, 0.0, axis=1).pvalue
    assert np.mean(p < 0.05) == pytest.approx(0.8, abs=0.01)
    # half the effect has clearly less power; the MDE scales with the spread
    p_half = stats.ttest_1samp(rng.normal(mde / 2, sd, size=(20000, n)), 0.0, axis=1).pvalue
    assert np.mean(p_half < 0.05) < 0.5
    assert mde_paired(observed * 2) == pytest.approx(2 * mde, rel=1e-6)
    # the normal-approximation formula is a lower bound (the t distribution has heavier tails)
    assert mde > (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * sd / math.sqrt(n)


def test_mde_edge_cases():
    from torch_curriculum.experiments.metrics import mde_paired

    assert mde_paired([3.0, 3.0, 3.0]) == 0.0
    assert math.isfinite(mde_paired([10.0, -40.0]))  # df = 1: scipy's nct tail is NaN there
    with pytest.raises(ValueError, match="at least 2"):
        mde_paired([1.0])
    with pytest.raises(ValueError, match="alpha < power"):
        mde_paired([1.0, 2.0], power=0.01)
