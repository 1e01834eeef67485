"""torch_curriculum.experiments.results (results.json sections) and .report (Markdown + plots)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from torch_curriculum.experiments import metrics, report
from torch_curriculum.experiments import results as _results
from torch_curriculum.experiments.metrics import mde_paired

ROOT = Path(__file__).resolve().parents[1]

STRATEGIES = {"random": 40.0, "easy_to_hard": 30.0, "layer_wise_progressive": 20.0}
SEEDS = (0, 1, 2)
L = 4
EVAL_EVERY = 5
STEPS = 100


def val_curve(tau: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Exponential decay; the time constant jitters by seed and strategy so seeds differ."""
    steps = np.arange(0, STEPS + 1, EVAL_EVERY, dtype=float)
    jitter = np.random.default_rng([int(tau), seed]).uniform(-0.12, 0.12)
    return steps, 2.0 + 3.0 * np.exp(-steps / (tau * (1 + jitter))) + 0.01 * seed


def write_log(path: Path, strategy: str, seed: int, tau: float, *, never_reach: bool = False,
              batch: int = 8) -> None:
    """A JSONL log in the format of torch_curriculum.loragen.train_generator."""
    _, val = val_curve(tau, seed)
    if never_reach:
        val = val + 1.0
    recs = [{"type": "run", "steps": STEPS, "batch_size": batch, "seed": seed,
             "sampler": strategy, "num_layers": L}]
    vi = 0
    draw = np.random.default_rng([seed, int(tau)])
    for step in range(0, STEPS + 1):
        if step > 0:
            upd = [float(1 - math.exp(-step / (5.0 * (j + 1)))) for j in range(L)]
            recs.append({"type": "train", "step": step, "epoch": step // 25,
                         "loss": float(val[min(vi, len(val) - 1)] + 0.3),
                         "lm_loss": float(val[min(vi, len(val) - 1)] + 0.29),
                         "balance_loss": 0.1, "samples_seen": step * batch, "tokens": 100,
                         "wall_time": 0.05 * step, "lr": 1e-3, "sampler_state": {"stage": 1},
                         "trainable_layers": list(range(L)),
                         "layer_grad_norm": [0.1 * (j + 1) for j in range(L)],
                         "shared_grad_norm": 0.2,
                         "indices": draw.integers(0, 120, batch).tolist(),
                         **({"layer_update_norm": upd} if step % 2 == 0 else {})})
        if step % EVAL_EVERY == 0:
            recs.append({"type": "val", "step": step, "samples_seen": step * batch,
                         "wall_time": 0.05 * step + 0.01, "loss": float(val[vi])})
            vi += 1
    recs.append({"type": "test", "step": STEPS, "loss": float(val[-1] + 0.05)})
    recs.append({"type": "end", "steps": STEPS, "samples_seen": STEPS * batch,
                 "wall_time": 0.05 * STEPS, "final_val_loss": float(val[-1]),
                 "test_loss": float(val[-1] + 0.05)})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")


def h1_inputs(n: int = 120):
    rng = np.random.default_rng(0)
    hard = rng.normal(size=n)
    signals = {"meta_l2_top3_mean": hard + rng.normal(scale=0.5, size=n),
               "meta_cosine_mean": hard + rng.normal(scale=2.0, size=n),
               "response_length": rng.normal(size=n),
               "edge_loss_before": -hard + rng.normal(scale=0.3, size=n)}
    train_loss = 2 + hard + rng.normal(scale=0.5, size=n)
    train_loss[5] = np.nan  # never drawn in the random run
    targets = {"train_loss_mean": train_loss, "loss_after": 2 + hard + rng.normal(size=n)}
    return signals, targets


def make_results_dir(root: Path, *, never_reach: str | None = None) -> tuple[Path, dict]:
    records = []
    for s, tau in STRATEGIES.items():
        for seed in SEEDS:
            log = root / "runs" / s / f"seed{seed}.jsonl"
            write_log(log, s, seed, tau, never_reach=(s == never_reach))
            records.append(_results.run_record_from_log(log, s, seed, results_dir=root))
    signals, targets = h1_inputs()
    rng = np.random.default_rng(1)
    raw = np.abs(rng.normal(size=(120, L))) * np.arange(1, L + 1)
    arrays = _results.save_arrays(root, layer_diffs=stats.rankdata(raw, axis=0) / 120,
                                  layer_diffs_raw=raw, h1_samples={**signals, **targets})
    doc = _results.build_results(
        records, signals=signals, targets=targets,
        signal_info={"edge_loss_before": {"kind": "control", "description": "bare edge loss"}},
        target_descriptions={"train_loss_mean": "per-sample training loss, random-order run"},
        provenance={"config": {"steps": STEPS}, "seed": 0, "data_fingerprint": "sha256:abc"},
        arrays=arrays, preset="fixture", n_boot=300)
    _results.write_results(root, doc)
    return root, doc


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    return make_results_dir(tmp_path_factory.mktemp("cpu"))

# ------------------------------------------------------------------ run logs


def test_read_run_log_parses_every_record_type(tmp_path):
    log = tmp_path / "r.jsonl"
    write_log(log, "random", 0, 40.0)
    with open(log, "a") as fh:
        fh.write(json.dumps({"type": "checkpoint", "path": "x"}) + "\n")
    out = _results.read_run_log(log)
    steps, val = val_curve(40.0, 0)
    np.testing.assert_array_equal(out["val"]["step"], steps)
    np.testing.assert_allclose(out["val"]["loss"], val)
    assert out["train"]["step"].size == STEPS
    assert out["layer_update_norm"]["norms"].shape == (STEPS // 2, L)
    assert out["layer_grad_norm"]["norms"].shape == (STEPS, L)
    assert out["test_loss"] == pytest.approx(val[-1] + 0.05)
    assert out["other"] == [{"type": "checkpoint", "path": "x"}]  # kept, not dropped
    rec = _results.run_record_from_log(log, "random", 0, results_dir=tmp_path)
    assert rec["log"] == "r.jsonl" and rec["final_val_loss"] == pytest.approx(val[-1])


@pytest.mark.parametrize("line,match", [
    ("{not json", r"r\.jsonl:2: not valid JSON"),
    ('{"step": 1}', r"r\.jsonl:2: expected a JSON object with a 'type'"),
    ('{"type": "val", "step": 1, "samples_seen": 8, "wall_time": 1.0}', "lacks 'loss'"),
    ('{"type": "val", "step": 1, "samples_seen": 8, "wall_time": 1.0, "loss": "x"}', "number"),
])
def test_read_run_log_errors_name_file_and_line(tmp_path, line, match):
    log = tmp_path / "r.jsonl"
    log.write_text('{"type": "run"}\n' + line + "\n")
    with pytest.raises(_results.ResultsError, match=match):
        _results.read_run_log(log)


def test_read_run_log_collects_per_sample_losses_when_logged(tmp_path):
    log = tmp_path / "r.jsonl"
    base = {"type": "train", "epoch": 0, "loss": 1.0, "samples_seen": 2, "wall_time": 1.0}
    log.write_text(json.dumps({**base, "step": 1, "indices": [3, 0], "per_sample_loss": [2.0, 1.0]})
                   + "\n" + json.dumps({**base, "step": 2, "indices": [3, 1],
                                        "per_sample_loss": [4.0, 0.5]}) + "\n")
    out = _results.read_run_log(log)["per_sample"]
    assert out["indices"].tolist() == [3, 0, 3, 1]
    mean = metrics.per_sample_mean_loss(out["indices"], out["losses"], 5)
    np.testing.assert_allclose(mean, [1.0, 0.5, np.nan, 3.0, np.nan])


def test_drawn_difficulty_by_hand(tmp_path):
    log = tmp_path / "r.jsonl"
    base = {"type": "train", "epoch": 0, "loss": 1.0, "samples_seen": 2, "wall_time": 1.0}
    batches = [[0], [0, 1], [2], [2, 2]]
    log.write_text("".join(json.dumps({**base, "step": i + 1, "indices": ix}) + "\n"
                           for i, ix in enumerate(batches)))
    parsed = _results.read_run_log(log)
    assert parsed["batches"]["indices"] == batches
    d = np.array([[0.0, 1.0], [10.0, 11.0], [20.0, 21.0]])
    edges, mean = report._drawn_difficulty({"s": [parsed]}, d)["s"]
    np.testing.assert_allclose(edges, [1, 2, 3, 4, 5])
    np.testing.assert_allclose(mean, [[0, 1], [5, 6], [20, 21], [20, 21]])
    with pytest.raises(_results.ResultsError, match="outside the 2 rows"):
        report._drawn_difficulty({"s": [parsed]}, d[:2])


def test_read_run_log_rejects_changing_layer_count(tmp_path):
    log = tmp_path / "r.jsonl"
    base = {"type": "train", "epoch": 0, "loss": 1.0, "samples_seen": 8, "wall_time": 1.0}
    log.write_text(json.dumps({**base, "step": 1, "layer_update_norm": [1.0, 2.0]}) + "\n"
                   + json.dumps({**base, "step": 2, "layer_update_norm": [1.0]}) + "\n")
    with pytest.raises(_results.ResultsError, match="has 1 layers, line 1 had 2"):
        _results.read_run_log(log)
    with pytest.raises(_results.ResultsError, match="does not exist"):
        _results.read_run_log(tmp_path / "missing.jsonl")

# ------------------------------------------------------------------ build_results


def test_runs_section_uses_the_metric_definitions(results_dir):
    _, doc = results_dir
    for s, tau in STRATEGIES.items():
        for seed in SEEDS:
            run = doc["runs"][s][str(seed)]
            target = val_curve(40.0, seed)[1][-1]  # random's final val loss on this seed
            steps, val = val_curve(tau, seed)
            assert run["target_loss"] == pytest.approx(target)
            assert run["steps_to_target"] == metrics.steps_to_target(steps, val, target)
            assert run["samples_to_target"] == run["steps_to_target"] * 8
            assert run["wall_time_to_target"] == pytest.approx(0.05 * run["steps_to_target"] + 0.01)
            assert run["final_val_loss"] == pytest.approx(val[-1])
            assert run["best_val_loss"] == pytest.approx(min(val))
            assert run["best_val_step"] == steps[int(np.argmin(val))]
            assert run["test_loss"] == pytest.approx(val[-1] + 0.05)
            assert run["log"] == f"runs/{s}/seed{seed}.jsonl"
            assert len(run["layer_stabilisation_step"]) == L
    # the baseline reaches its own per-seed final loss, at the end of the run at the latest
    assert all(doc["runs"]["random"][str(k)]["reached"] for k in SEEDS)
    # a faster-decaying curve reaches the same target sooner
    assert (doc["runs"]["layer_wise_progressive"]["0"]["steps_to_target"]
            < doc["runs"]["random"]["0"]["steps_to_target"])


def test_h2_matches_hand_computation_and_scipy(results_dir):
    _, doc = results_dir
    h2 = doc["h2"]["strategies"]
    assert set(h2) == {"easy_to_hard", "layer_wise_progressive"}
    for s in h2:
        strat = [doc["runs"][s][str(k)]["steps_to_target"] for k in SEEDS]
        rand = [doc["runs"]["random"][str(k)]["steps_to_target"] for k in SEEDS]
        pct = [100 * (r - x) / r for x, r in zip(strat, rand)]
        assert h2[s]["per_seed"] == pytest.approx(pct)
        assert h2[s]["pct_fewer_steps_vs_random"] == pytest.approx(np.mean(pct))
        ref_ci = stats.t.interval(0.95, 2, loc=np.mean(pct), scale=stats.sem(pct))
        assert h2[s]["ci95"] == pytest.approx(list(ref_ci))
        t = stats.ttest_rel(strat, rand)
        if np.isfinite(t.pvalue):
            assert h2[s]["p_value"] == pytest.approx(t.pvalue)
        assert h2[s]["n_pairs"] == 3 and h2[s]["n_censored"] == 0


def test_h1_correlations_match_scipy_and_best_is_max_abs_spearman(results_dir):
    _, doc = results_dir
    h1 = doc["h1"]
    signals, targets = h1_inputs()
    keep = np.isfinite(targets["train_loss_mean"])
    for name, x in signals.items():
        row = h1["signals"][name]
        assert row["spearman"] == pytest.approx(
            stats.spearmanr(x[keep], targets["train_loss_mean"][keep]).statistic)
        assert row["kendall"] == pytest.approx(
            stats.kendalltau(x[keep], targets["train_loss_mean"][keep]).statistic)
        assert row["n"] == 119 and row["n_dropped"] == 1
        assert row["by_target"]["loss_after"]["n"] == 120
        assert row["ci95"]["spearman"][0] <= row["spearman"] <= row["ci95"]["spearman"][1]
    ranking = h1["ranking"]
    abs_rho = [abs(h1["signals"][s]["spearman"]) for s in ranking]
    assert abs_rho == sorted(abs_rho, reverse=True)
    assert h1["best"] == ranking[0]
    # edge_loss_before is strongly (negatively) correlated: |rho| ranks it, not the sign
    assert h1["best"] == "edge_loss_before"
    assert h1["signals"]["edge_loss_before"]["kind"] == "control"
    assert h1["signals"]["meta_l2_top3_mean"]["kind"] == "meta_token"
    # best meta-token vs best cheap signal, compared on the same resamples
    cmp = h1["comparison"]["train_loss_mean"]
    assert cmp["meta_token"] == "meta_l2_top3_mean" and cmp["control"] == "edge_loss_before"
    assert cmp["diff_abs_spearman"] == pytest.approx(
        abs(h1["signals"]["meta_l2_top3_mean"]["spearman"])
        - abs(h1["signals"]["edge_loss_before"]["spearman"]))


def test_h1_constant_signal_is_an_undefined_row_not_an_error(tmp_path):
    """A signal that saturates on these samples (constant) must not abort the whole results step."""
    signals, targets = h1_inputs()
    signals["xm_uld_max"] = np.full(120, 3.5)  # constant everywhere
    # constant on the finite pairs of train_loss_mean only: defined on loss_after
    part = np.full(120, 1.0)
    part[5] = 2.0  # sample 5 has no finite train_loss_mean
    signals["meta_saturated_mean"] = part
    root = tmp_path
    log = root / "runs" / "random" / "seed0.jsonl"
    write_log(log, "random", 0, 40.0)
    rec = _results.run_record_from_log(log, "random", 0, results_dir=root)
    doc = _results.build_results(
        [rec], signals=signals, targets=targets, primary_target="train_loss_mean",
        provenance={"config": {}, "seed": 0, "data_fingerprint": "sha256:abc"}, preset="t", n_boot=200)
    h1 = doc["h1"]
    row = h1["signals"]["xm_uld_max"]
    assert row["spearman"] is None and row["kendall"] is None and row["spearman_p"] is None
    assert "the signal is constant" in row["undefined"] and row["n"] == 119
    sat = h1["signals"]["meta_saturated_mean"]
    assert sat["spearman"] is None and "constant" in sat["undefined"]
    ref = stats.spearmanr(part, targets["loss_after"]).statistic
    assert sat["by_target"]["loss_after"]["spearman"] == pytest.approx(ref)
    # undefined rows go last in the ranking and are never best or compared
    assert set(h1["ranking"][-2:]) == {"xm_uld_max", "meta_saturated_mean"}
    assert h1["best"] == "edge_loss_before"
    assert h1["best_by_target"]["train_loss_mean"] == "edge_loss_before"
    assert h1["comparison"]["train_loss_mean"]["meta_token"] == "meta_l2_top3_mean"
    # the JSON is strict (no NaN) and the report says why the row is empty
    text = json.dumps(_results.jsonable(doc), allow_nan=False)
    assert "xm_uld_max" in text
    md = report.render_markdown(doc)
    line = next(ln for ln in md.splitlines() if "`xm_uld_max`" in ln)
    assert "undefined: the signal is constant" in line


def test_h1_with_every_signal_constant_has_no_best(tmp_path):
    n = 30
    log = tmp_path / "runs" / "random" / "seed0.jsonl"
    write_log(log, "random", 0, 40.0)
    rec = _results.run_record_from_log(log, "random", 0, results_dir=tmp_path)
    doc = _results.build_results(
        [rec], signals={"meta_a": np.zeros(n), "edge_loss_before": np.ones(n)},
        targets={"loss": np.arange(n, dtype=float)},
        signal_info={"edge_loss_before": {"kind": "control"}},
        provenance={"config": {}, "seed": 0, "data_fingerprint": "sha256:abc"}, preset="t", n_boot=50)
    assert doc["h1"]["best"] is None and doc["h1"]["best_by_target"] == {"loss": None}
    assert doc["h1"]["comparison"] == {}
    md = report.render_markdown(doc)
    assert "no signal has a defined rank correlation" in md
    assert "No signal has a defined rank correlation with `loss`" in md


def test_h3_ranks_every_strategy_with_verdicts(results_dir):
    _, doc = results_dir
    h3 = doc["h3"]
    assert set(h3["rankings"]) == {"steps_to_target", "val_auc", "best_val_loss", "final_val_loss", "test_loss"}
    steps = h3["rankings"]["steps_to_target"]
    assert steps["ranking"][0]["strategy"] == "layer_wise_progressive"
    assert steps["ranking"][-1]["strategy"] == "random"
    assert isinstance(steps["verdict"], str) and steps["verdict"]
    per = doc["per_layer"]["strategies"]["random"]
    assert per["n_seeds"] == 3 and doc["per_layer"]["rel_tol"] == 0.05
    # layer j's update norm 1 - exp(-t/(5(j+1))) settles later for deeper j: by hand, the first
    # even step t with exp(-t/(5(j+1))) <= 0.05 * final (final = 1 - exp(-100/(5(j+1))))
    want = []
    for j in range(L):
        final = 1 - math.exp(-100 / (5 * (j + 1)))
        want.append(next(t for t in range(2, 101, 2)
                         if all(abs(1 - math.exp(-u / (5 * (j + 1))) - final) <= 0.05 * final
                                for u in range(t, 101, 2))))
    assert per["stabilisation_step_mean"] == pytest.approx(want)
    assert per["grad_norm_mean"] == pytest.approx([0.1 * (j + 1) for j in range(L)])
    assert per["final_update_norm_mean"] == pytest.approx(
        [1 - math.exp(-100 / (5 * (j + 1))) for j in range(L)], abs=1e-9)


def test_h3_compares_every_strategy_with_the_baseline_on_each_loss(results_dir):
    _, doc = results_dir
    vs = doc["h3"]["vs_baseline"]
    assert vs["baseline"] == "random"
    assert set(vs["metrics"]) == {"val_auc", "best_val_loss", "final_val_loss", "test_loss"}
    rows = vs["metrics"]["test_loss"]
    assert set(rows) == set(STRATEGIES) - {"random"}
    for s, r in rows.items():
        a = [doc["runs"][s][str(k)]["test_loss"] for k in SEEDS]
        b = [doc["runs"]["random"][str(k)]["test_loss"] for k in SEEDS]
        assert r["mean_diff"] == pytest.approx(float(np.mean(np.subtract(a, b))))
        assert r["p_value"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
        assert r["mde"] == pytest.approx(mde_paired(np.subtract(a, b)))
    md = report.render_markdown(doc)
    assert ("| strategy | seeds shared with `random` | mean − `random` | 95% CI | p | Holm p | MDE (80% power) "
            "| verdict |") in md
    assert "- **Against `random`** (mean difference [95% CI], paired by seed, Holm over the strategies): " \
        "best val loss: " in md


def test_results_json_is_strict_json_and_round_trips(results_dir):
    root, doc = results_dir
    text = (root / "results.json").read_text()
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert loaded == doc
    assert loaded["provenance"]["versions"]["numpy"] == np.__version__
    assert loaded["provenance"]["seeds"] == list(SEEDS)
    assert _results.load_results(root) == doc


def test_never_reaching_strategy_is_censored_at_its_budget(tmp_path):
    _, doc = make_results_dir(tmp_path, never_reach="easy_to_hard")
    for k in SEEDS:
        run = doc["runs"]["easy_to_hard"][str(k)]
        assert run["steps_to_target"] is None and run["reached"] is False
        assert run["samples_to_target"] is None
    h2 = doc["h2"]["strategies"]["easy_to_hard"]
    assert h2["n_censored"] == 3
    rand = [doc["runs"]["random"][str(k)]["steps_to_target"] for k in SEEDS]
    # censored at the next evaluation after the budget: 100 + 5
    assert h2["per_seed"] == pytest.approx([100 * (r - STEPS - EVAL_EVERY) / r for r in rand])
    ranking = doc["h3"]["rankings"]["steps_to_target"]["ranking"]
    assert ranking[-1]["strategy"] == "easy_to_hard"


def _rec(strategy, seed, losses=(3.0, 2.0)):
    return {"strategy": strategy, "seed": seed, "val_steps": [0, 10][:len(losses)],
            "val_losses": list(losses)}


PROV = {"config": {}, "seed": 0, "data_fingerprint": "x"}


@pytest.mark.parametrize("records,kwargs,match", [
    ([_rec("random", 0), _rec("random", 0)], {}, "duplicate run"),
    ([_rec("dynamic", 0)], {}, "baseline strategy 'random' has no run"),
    ([_rec("random", 0), _rec("dynamic", 1)], {}, r"no run for seed\(s\) \[1\]"),
    ([_rec("random", 0)], {"target_rule": "median"}, "target_rule"),
    ([_rec("random", 0)], {"target_rule": "fixed"}, "finite target_loss"),
    ([{"strategy": "random", "seed": 0, "val_steps": [0]}], {}, "lacks 'val_losses'"),
    ([{**_rec("random", 0), "val_samples": [1]}], {}, "val_samples has 1 entries"),
    ([_rec("random", 0)], {"signals": {"a": [1, 2, 3]}}, "signals were given without targets"),
    ([_rec("random", 0)], {"signals": {"a": [1, 2, 3]}, "targets": {"t": [1, 2]}}, "has 3 values"),
])
def test_build_results_errors(records, kwargs, match):
    with pytest.raises(_results.ResultsError, match=match):
        _results.build_results(records, provenance=PROV, **kwargs)


def test_build_results_needs_provenance_and_handles_one_seed():
    with pytest.raises(_results.ResultsError, match="provenance lacks"):
        _results.build_results([_rec("random", 0)], provenance={"seed": 0})
    doc = _results.build_results([_rec("random", 0), _rec("dynamic", 0, (3.0, 1.0))],
                                 provenance=PROV)
    assert doc["h3"]["rankings"] == {} and "needs >= 2 seeds" in doc["h3"]["note"]
    assert doc["h2"]["strategies"]["dynamic"]["ci95"] is None
    assert doc["h2"]["strategies"]["dynamic"]["pct_fewer_steps_vs_random"] == 0.0
    one = doc["h3"]["vs_baseline"]["metrics"]["final_val_loss"]["dynamic"]
    assert one["n"] == 1 and one["p_value"] is None and one["direction"] is None
    md = report.render_markdown(_results.jsonable(doc))
    assert "No ranking: ranking needs >= 2 seeds" in md and "| `dynamic` | 0 | — |" in md
    assert "too few seeds" in md
    fixed = _results.build_results([_rec("random", 0), _rec("dynamic", 0, (3.0, 1.0))],
                                   provenance=PROV, target_rule="fixed", target_loss=1.5,
                                   interpolate=True)
    # 3.0 at 0, 1.0 at 10: 1.5 is reached at 7.5 by interpolation
    assert fixed["runs"]["dynamic"]["0"]["steps_to_target"] == pytest.approx(7.5)
    assert fixed["runs"]["random"]["0"]["steps_to_target"] is None

def test_unfinished_benchmark_ranks_common_seeds_and_says_so():
    recs = [_rec("random", k, (3.0, 2.0 + 0.1 * k, 1.9 + 0.1 * k)) for k in range(3)]
    recs += [_rec("dynamic", k, (3.0, 1.5 + 0.2 * k, 1.4)) for k in range(2)]
    for r in recs:
        r["val_steps"] = [0, 10, 20]
    doc = _results.build_results(recs, provenance=PROV)
    assert doc["h3"]["seeds"] == [0, 1]
    assert "{'random': [2]}" in doc["h3"]["note"]
    assert doc["h3"]["rankings"]["steps_to_target"]["ranking"][0]["n"] == 2
    assert doc["h2"]["strategies"]["dynamic"]["n_pairs"] == 2


def test_constant_signal_row_names_why_it_is_undefined():
    recs = [_rec("random", 0)]
    doc = _results.build_results(recs, provenance=PROV, signals={"flat": [1.0] * 5},
                                 targets={"t": [1.0, 2.0, 3.0, 4.0, 5.0]})
    assert doc["h1"]["signals"]["flat"]["undefined"] == (
        "the signal is constant; a rank correlation is undefined (5 finite pairs)")
    assert doc["h1"]["best"] is None


def test_data_fingerprint_and_save_arrays(tmp_path):
    import hashlib

    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"hello ")
    b.write_bytes(b"world")
    assert _results.data_fingerprint(a, b) == "sha256:" + hashlib.sha256(b"hello world").hexdigest()
    assert _results.data_fingerprint(b, a) != _results.data_fingerprint(a, b)
    with pytest.raises(_results.ResultsError, match="not a file"):
        _results.data_fingerprint(tmp_path / "missing")
    d = np.arange(12.0).reshape(4, 3)
    out = _results.save_arrays(tmp_path, layer_diffs=d, h1_samples={"s": [1, 2], "t": [3, 4]})
    assert out == {"layer_diffs": "arrays/layer_diffs.npy", "h1_samples": "arrays/h1_samples.npz"}
    np.testing.assert_array_equal(np.load(tmp_path / out["layer_diffs"]), d)
    with pytest.raises(_results.ResultsError, match=r"\[N, L\]"):
        _results.save_arrays(tmp_path, layer_diffs_raw=np.ones(3))
    with pytest.raises(_results.ResultsError, match="differ in length"):
        _results.save_arrays(tmp_path, h1_samples={"s": [1, 2], "t": [3]})

# ------------------------------------------------------------------ report


def _is_png(path: Path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_with_plots(results_dir):
    pytest.importorskip("matplotlib")
    root, doc = results_dir
    path = report.build_report(root)
    text = path.read_text()
    for name in ("learning_curves", "difficulty_hist_per_layer", "heatmap_layer_diffs",
                 "heatmap_update_norm", "heatmap_drawn_difficulty", "h1_scatter"):
        png = root / "plots" / f"{name}.png"
        assert png.is_file() and _is_png(png), name
        assert f"](plots/{name}.png)" in text
    # H1 table: best signal first and marked; the plain sentence names it
    h1_rows = [ln for ln in text.splitlines() if ln.startswith("| 1 | `")]
    assert h1_rows[0].startswith(f"| 1 | `{doc['h1']['best']}` **best**")
    assert f"**Best predictor of `train_loss_mean`: `{doc['h1']['best']}`**" in text
    assert "the cheap signal predicts significantly better" in text
    assert "### Convergence step per layer" in text
    # H2 and H3 carry their numbers and verdicts
    lwp = doc["h2"]["strategies"]["layer_wise_progressive"]
    assert f"{lwp['pct_fewer_steps_vs_random']:.1f}%" in text
    assert doc["h3"]["rankings"]["steps_to_target"]["verdict"] in text
    assert "runs/random/seed0.jsonl" in text
    assert "sha256:abc" in text


def test_headline_states_each_hypothesis(results_dir):
    root, doc = results_dir
    text = report.build_report(root, plots=False).read_text()
    head = text.split("## Headline", 1)[1].split("## H1", 1)[0]
    assert "supports H1" in head  # meta_l2_top3_mean: rho ~ 0.77, CI above 0
    assert f"best predictor of `train_loss_mean` is `{doc['h1']['best']}`" in head
    assert "**H2**" in head and "`layer_wise_progressive` " in head
    assert "1. `layer_wise_progressive`, 2. `easy_to_hard`, 3. `random`" in head


@pytest.mark.parametrize("ci,word", [([-0.5, -0.1], "contradicts H1"),
                                     ([-0.1, 0.2], "no evidence either way"),
                                     ([0.1, 0.3], "supports H1")])
def test_h1_verdict_follows_the_ci(ci, word):
    h1 = {"primary_target": "t", "ranking": ["len", "meta"],
          "signals": {"len": {"kind": "control", "spearman": 0.9, "ci95": {"spearman": [0.8, 1]}},
                      "meta": {"kind": "meta_token", "spearman": float(np.mean(ci)),
                               "ci95": {"spearman": ci}}}}
    verdict = report._h1_verdict(h1)
    assert word in verdict and "`meta`" in verdict


def test_report_without_matplotlib_is_markdown_only(results_dir, tmp_path, monkeypatch):
    root, _ = make_results_dir(tmp_path)
    # None in sys.modules makes `import matplotlib` raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    path = report.build_report(root)
    text = path.read_text()
    assert "No figures (matplotlib is not installed" in text
    assert not list((root / "plots").glob("*.png")) if (root / "plots").exists() else True
    assert "## H1" in text and "## H2" in text and "## H3" in text


def test_report_is_regenerated_identically_and_from_files_only(results_dir, tmp_path):
    root, _ = make_results_dir(tmp_path)
    first = report.build_report(root, plots=False).read_text()
    second = report.build_report(root, plots=False).read_text()
    assert first == second
    # the report reads the logs: a deleted log is an error that names it
    (root / "runs" / "random" / "seed1.jsonl").unlink()
    with pytest.raises(_results.ResultsError, match="runs/random/seed1.jsonl"):
        report.build_report(root, plots=False)


def test_cli_regenerates_the_report(results_dir, tmp_path, capsys):
    root, _ = make_results_dir(tmp_path)
    # the installed command (a results dir without config.json is re-rendered from results.json),
    # and the old script path, which is a wrapper around it
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), str(root),
                           "--no-plots"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["report"] == str(root / "report.md")
    assert (root / "report.md").read_text().startswith("# Curriculum benchmark report: fixture")
    # the error paths in-process (a second interpreter start costs seconds)
    from torch_curriculum.cli import main
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "neither config.json" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "empty"), "--status"]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert main(["report", str(root), "--shards", "2"]) == 2
    assert "--shards goes with --status" in capsys.readouterr().err
    assert main(["report", str(root), "--status", "--render-only"]) == 2
    assert "exclude each other" in capsys.readouterr().err


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.pop("h2"), "'h2' is missing"),
    (lambda d: d["runs"]["random"]["0"].pop("steps_to_target"),
     "'runs.random.0.steps_to_target' is missing"),
    (lambda d: d["provenance"].pop("data_fingerprint"), "'provenance.data_fingerprint'"),
    (lambda d: d.update(schema_version=99), "schema_version 99"),
    (lambda d: d["arrays"].update(layer_diffs="arrays/gone.npy"), "arrays.layer_diffs"),
    (lambda d: d["h2"]["strategies"]["easy_to_hard"].pop("p_value"),
     "h2.strategies.easy_to_hard.p_value"),
])
def test_invalid_results_file_names_the_field(results_dir, tmp_path, mutate, match):
    root, doc = results_dir
    bad = json.loads(json.dumps(doc))
    mutate(bad)
    with pytest.raises(_results.ResultsError, match=match):
        _results.validate_results(bad, root)


def test_real_train_generator_log_feeds_build_results(tmp_path):
    """The log format of the reference training loop is what read_run_log reads."""
    loragen = pytest.importorskip("torch_curriculum.loragen")
    import torch
    from torch.utils.data import RandomSampler
    from transformers import LlamaConfig, LlamaForCausalLM

    d_cloud, vocab = 24, 64
    small = dict(n_experts=4, top_k=2, rank=4, meta_dim=16, num_query_heads=2, router_hidden=8)

    def tiny_edge():
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=64)).eval()

    def tiny_task(n):
        # responses use 4 token ids only, so a few steps already lower the loss
        g = torch.Generator().manual_seed(0)
        cache = loragen.CloudStateCache()
        exs = []
        for i in range(n):
            prompt = torch.randint(10, vocab, (6,), generator=g).tolist()
            resp = torch.randint(1, 5, (6,), generator=g).tolist()
            exs.append(loragen.LoRAGenExample(f"t{i}", tuple(prompt + resp),
                                              (-100,) * 6 + tuple(resp), f"persona {i % 2}"))
        for j in range(2):
            cache.add(f"persona {j}", torch.randn(4, d_cloud, generator=g))
        return loragen.LoRAGenDataset(exs), loragen.LoRAGenCollator(cache)

    records = []
    for seed in (0,):
        for strategy, lr in (("random", 1e-2), ("fast", 3e-2)):
            torch.manual_seed(seed)
            gen = loragen.LoRAGenerator(tiny_edge(), d_cloud, loragen.LoRAGenConfig(**small))
            ds, collate = tiny_task(8)
            log = tmp_path / "runs" / strategy / f"seed{seed}.jsonl"
            res = loragen.train_generator(
                gen, ds, sampler=RandomSampler(ds, generator=torch.Generator().manual_seed(seed)),
                collate_fn=collate, val_dataset=ds, test_dataset=ds, steps=4, batch_size=4,
                lr=lr, eval_every=2, log_path=log, seed=seed)
            rec = _results.run_record_from_log(log, strategy, seed, results_dir=tmp_path)
            assert rec["val_steps"] == [p["step"] for p in res.val_curve]
            assert rec["val_losses"] == pytest.approx([p["loss"] for p in res.val_curve])
            assert rec["test_loss"] == pytest.approx(res.test_loss)
            assert rec["final_val_loss"] == pytest.approx(res.final_val_loss)
            assert np.asarray(rec["update_norms"]).shape == (4, 4)
            records.append(rec)
    doc = _results.build_results(records, provenance=PROV, preset="tiny")
    # the baseline reaches its own final loss; one seed is too few to rank, and the file says so
    assert doc["runs"]["random"]["0"]["steps_to_target"] is not None
    assert "needs >= 2 seeds" in doc["h3"]["note"]
    _results.write_results(tmp_path, doc)
    text = report.build_report(tmp_path, plots=False).read_text()
    assert "`fast`" in text


@pytest.mark.parametrize("ci, p, verdict", [
    ((5.0, 30.0), 0.01, "significantly faster"),
    ((-60.0, -5.0), 0.02, "significantly slower"),
    # the paired test on steps and the t-CI of the per-seed % can disagree with 3 seeds (the cpu
    # preset's ctrl_edge_loss: p = 0.035, CI [-131.6, 9.3]); then nothing is called significant
    ((-131.6, 9.3), 0.035, "not significant (p = 0.035 on the steps, but the CI of the % includes 0)"),
    ((-10.0, 12.0), 0.6, "not significantly different from random"),
    (None, None, "too few seeds for a CI/test"),
])
def test_h2_verdict_needs_both_tests_to_agree(ci, p, verdict):
    assert report._h2_verdict(ci, p) == verdict


def test_results_page_links_nothing_outside_the_docs(tmp_path):
    """docs/results.md must pass `mkdocs build --strict`: plots copied into the docs, report.md as code paths."""
    import re

    src = ROOT / "benchmarks/results/cpu_v1"
    docs = tmp_path / "docs"
    stale = docs / "assets/results/cpu_v1/noise_auroc.png"  # left by an earlier page whose results had it
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    page = report.results_page([("old", src), ("missing", ROOT / "benchmarks/results/nope")], page_dir=docs,
                               assets_dir=docs / "assets/results", results_root=ROOT / "benchmarks/results",
                               repo_root=ROOT)
    links = re.findall(r"\]\(([^)]+)\)", page)
    assert links == ["guides/experiments.md", "assets/results/cpu_v1/learning_curves.png"]
    copied = docs / links[1]
    assert copied.read_bytes() == (src / "plots/learning_curves.png").read_bytes()
    assert not stale.exists()
    assert "Full report: `benchmarks/results/cpu_v1/report.md`" in page
    assert "Not run yet: there is no `benchmarks/results/nope/results.json`" in page
    with pytest.raises(ValueError, match="share the assets folder"):
        report.results_page([("a", src), ("b", src)], page_dir=docs, assets_dir=docs / "assets")
    # without an assets folder nothing is copied or linked: the plots are named as code paths
    plain = report.results_page([("old", src)], repo_root=ROOT)
    assert re.findall(r"\]\(([^)]+)\)", plain) == ["guides/experiments.md"]
    assert "`benchmarks/results/cpu_v1/plots/learning_curves.png`" in plain


def test_committed_results_page_is_current(tmp_path):
    """docs/results.md and its copied plots are what benchmarks/results_page.py writes from the committed results."""
    docs = tmp_path / "docs"
    page = report.results_page(_results_page_entries(), page_dir=docs, assets_dir=docs / "assets/results",
                               results_root=ROOT / "benchmarks/results", repo_root=ROOT)
    assert (ROOT / "docs/results.md").read_text(encoding="utf-8") == page
    copied = sorted(f.relative_to(docs) for f in docs.rglob("*.png"))
    assert copied, "the page shows no plot"
    for rel in copied:
        assert (ROOT / "docs" / rel).read_bytes() == (docs / rel).read_bytes(), f"docs/{rel} is stale"
    committed = sorted(f.relative_to(ROOT / "docs") for f in (ROOT / "docs/assets/results").rglob("*.png"))
    assert committed == copied, "docs/assets/results holds plots the page no longer shows"


def _results_page_entries():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_results_page_script", ROOT / "benchmarks/results_page.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ENTRIES


def test_report_of_an_unfinished_plan_says_it_is_interim(results_dir):
    _, doc = results_dir
    assert "Interim report" not in report.render_markdown(doc)
    missing = [f"dynamic/seed{s}" for s in range(10)]
    partial = {**doc, "provenance": {**doc["provenance"], "runs_complete": 9, "runs_missing": missing,
                                     "seeds_compared": [0, 1, 2]}}
    md = report.render_markdown(partial)
    banner = next(ln for ln in md.splitlines() if "Interim report" in ln)
    assert "9 of 19 planned runs have finished" in banner
    assert "`dynamic/seed7`" in banner and "`dynamic/seed8`" not in banner and "2 more" in banner
    # it comes before the headline, so nobody reads the verdicts without it
    assert md.index("Interim report") < md.index("## Headline")


def test_h2_headline_says_what_survives_holm():
    # p = 0.03 and 0.04 each pass alone; Holm over two: 0.06 and 0.06 -> neither survives; 0.001 survives
    h2 = {"baseline": "random", "strategies": {
        "a": {"pct_fewer_steps_vs_random": -20.0, "ci95": [-35.0, -3.0], "p_value": 0.03},
        "b": {"pct_fewer_steps_vs_random": -30.0, "ci95": [-60.0, -1.0], "p_value": 0.04}}}
    head = " ".join(report._headline({"h2": h2}))
    assert "significantly slower: `a`, `b` (each test alone)" in head
    assert "With Holm's correction over the 2 comparisons: faster: none; slower: none." in head
    h2["strategies"]["c"] = {"pct_fewer_steps_vs_random": 40.0, "ci95": [20.0, 60.0], "p_value": 0.001}
    head = " ".join(report._headline({"h2": h2}))
    assert "Holm's correction over the 3 comparisons: faster: `c`; slower: none." in head
    # the H2 section and the results page mark a verdict that does not survive the correction
    h2["strategies"]["a"].update(mde_pct=25.0, per_seed=[-20.0] * 5)
    r = h2["strategies"]["a"]
    assert report._h2_verdict_qualified("a", r, report._h2_holm_verdicts(h2)) == \
        "significantly slower (not after Holm over 3)"
    assert "`a`: significantly slower (not after Holm over 3)" in "\n".join(report._h2_section(h2))
    assert report._h2_verdict_qualified("c", h2["strategies"]["c"], report._h2_holm_verdicts(h2)) == \
        "significantly faster"
    # the positive control (named by the results' noise block) is its own pre-specified test, outside the family
    h2["strategies"]["oracle"] = {"pct_fewer_steps_vs_random": 25.0, "ci95": [9.0, 40.0], "p_value": 0.03}
    held = report._h2_holm_verdicts(h2, report._positive_control({"noise": {"oracle": "oracle"}}))
    assert "oracle" not in held and len(held) == 3
    assert report._h2_verdict_qualified("oracle", h2["strategies"]["oracle"], held) == "significantly faster"


def test_best_val_loss_of_an_overfitting_run_is_its_minimum_not_its_end():
    # a U-shaped curve (validation loss rising after the first epoch): early stopping keeps step 20
    steps, losses = [0, 10, 20, 30, 40], [4.7, 4.1, 4.0, 4.2, 4.5]
    rec = {"strategy": "random", "seed": 0, "val_steps": steps, "val_losses": losses, "final_val_loss": 4.5}
    out = _results._summarise_run(rec, 4.3, True, 0.0)
    assert (out["best_val_loss"], out["best_val_step"], out["final_val_loss"]) == (4.0, 20.0, 4.5)
    assert out["steps_to_target"] == pytest.approx(10 * (4.7 - 4.3) / (4.7 - 4.1))  # first crossing, interpolated
