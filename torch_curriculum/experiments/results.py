"""``results.json`` of a benchmark preset: reading run logs, building the H1/H2/H3 sections, checking.

The runner (:mod:`torch_curriculum.experiments.runner`) only collects raw numbers: one run record per
(strategy, seed) -- most easily :func:`run_record_from_log` on the run's JSONL log -- plus per-sample
difficulty signals and targets for H1. :func:`build_results` turns them into the sections below,
:func:`write_results` writes the file, and :mod:`torch_curriculum.experiments.report` renders it. The schema is
documented in full in ``torch_curriculum/experiments/RESULTS_SCHEMA.md``; in short (``schema_version`` 1)::

    {
      "schema_version": 1,
      "preset": "cpu",
      "provenance": {"config": {...}, "versions": {...}, "seed": 0, "seeds": [0, 1, 2],
                     "data_fingerprint": "sha256:...", ...},
      "target": {"rule": "baseline_final_per_seed", "baseline": "random", "interpolate": false,
                 "per_seed": {"0": 2.31, ...}},
      "runs": {"<strategy>": {"<seed>": {"seed", "reached", "target_loss", "steps_to_target",
               "wall_time_to_target", "samples_to_target", "final_val_loss", "test_loss",
               "steps", "samples_seen", "wall_time", "log", "layer_stabilisation_step"}}},
      "h1": {"primary_target", "targets", "best", "ranking", "comparison", "n_boot", "confidence",
             "signals": {"<signal>": {"spearman", "spearman_p", "kendall", "kendall_p",
                         "ci95": {"spearman": [lo, hi], "kendall": [lo, hi]}, "n", "n_dropped",
                         "kind", "description", "by_target": {"<target>": {...}}}}},
      "h2": {"baseline", "metric", "ci_method", "censoring",
             "strategies": {"<strategy>": {"pct_fewer_steps_vs_random", "ci95", "p_value", ...}}},
      "h3": {"primary_metric", "alpha", "rankings": {"<metric>": {"lower_is_better", "ranking",
             "verdict"}}, "vs_baseline": {"baseline", "metrics": {"<metric>": {"<strategy>": {
             "mean_diff", "ci95", "p_value", "p_holm", "direction", ...}}}}},
      "per_layer": {"rule", "rel_tol", "strategies": {"<strategy>": {"stabilisation_step_mean",
                    "final_update_norm_mean", "grad_norm_mean", "n_seeds", "n_never_stable"}}},
      "arrays": {"layer_diffs": "arrays/layer_diffs.npy", "layer_diffs_raw": ...,
                 "h1_samples": "arrays/h1_samples.npz"}
    }

Paths (``runs.*.*.log``, ``arrays.*``) are relative to the results directory. JSON has no NaN: an
undefined number is ``null``.

Run logs are the JSONL files of :func:`torch_curriculum.loragen.train_generator`: records with
``"type"`` ``run`` | ``train`` | ``val`` | ``test`` | ``end`` (see :func:`read_run_log`).

Example (what a runner does once its runs are done)::

    root = Path("benchmarks/results/cpu")
    records = [run_record_from_log(root / f"runs/{s}/seed{k}.jsonl", s, k, results_dir=root)
               for s in strategies for k in seeds]
    # H1 targets from the random-order run: metrics.per_sample_mean_loss(indices, losses, N)
    arrays = save_arrays(root, layer_diffs=d_hat, layer_diffs_raw=d_raw,
                         h1_samples={**signals, **targets})
    doc = build_results(records, signals=signals, targets=targets,
                        primary_target="train_loss_mean", provenance={"config": cfg, "seed": 0,
                        "data_fingerprint": data_fingerprint(data_file, diff_file)},
                        arrays=arrays, preset="cpu")
    write_results(root, doc)   # then: torch-curriculum report benchmarks/results/cpu --render-only
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import platform
import warnings as _warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write, atomic_write_text
from . import metrics

__all__ = [
    "H2_METRICS",
    "RANKING_METRICS",
    "SCHEMA_VERSION",
    "TARGET_RULES",
    "ResultsError",
    "build_results",
    "data_fingerprint",
    "jsonable",
    "load_results",
    "read_run_log",
    "run_record_from_log",
    "save_arrays",
    "validate_results",
    "write_results",
]

SCHEMA_VERSION = 1
TARGET_RULES = ("baseline_final_per_seed", "baseline_final_mean", "baseline_final_max", "fixed")
# best_val_loss is what early stopping would keep; it and final_val_loss part ways when a run overfits
RANKING_METRICS = ("steps_to_target", "val_auc", "best_val_loss", "final_val_loss", "test_loss")
H2_METRICS = ("steps", "samples", "wall_time")
_RUN_FIELDS = ("strategy", "seed", "val_steps", "val_losses")


class ResultsError(ValueError):
    """A results file, run record or run log is malformed; the message names the field/file."""


# ---------------------------------------------------------------------------------------------
# Run logs
# ---------------------------------------------------------------------------------------------


def read_run_log(path: str | os.PathLike) -> dict[str, Any]:
    """Parse the JSONL log of one training run (the format of ``train_generator``).

    Records (one JSON object per line, ``"type"`` required):
    ``run`` (run info, first), ``train`` (``step``, ``epoch``, ``loss``, ``lm_loss``,
    ``samples_seen``, ``wall_time``, ``layer_grad_norm`` [L], optional ``layer_update_norm`` [L],
    ``sampler_state``, ...), ``val`` (``step``, ``samples_seen``, ``wall_time``, ``loss``),
    ``test`` (``step``, ``loss``), ``end`` (summary). Records of any other type are kept under
    ``other`` (not dropped).

    Args:
        path (str | os.PathLike): the ``.jsonl`` file.

    Returns:
        dict: ``run`` (dict), ``end`` (dict or None), ``test_loss`` (float or None), ``other``
        (list); ``val`` and ``train``: dicts of equal-length numpy arrays (``step``, ``loss``,
        ``samples_seen``, ``wall_time``; train also ``lm_loss``, ``epoch``);
        ``layer_update_norm`` / ``layer_grad_norm``: ``{"step": [T], "norms": [T, L]}`` over the
        train records that carry them (None if none do); ``per_sample``: ``{"indices",
        "losses"}`` flattened over the train records that carry both ``indices`` and
        ``per_sample_loss`` (None if none do; feed it to
        :func:`torch_curriculum.metrics.per_sample_mean_loss`); ``batches``: ``{"step": [T],
        "indices": list of per-step index lists}`` from the train records' ``indices`` (None if
        not logged).

    Raises:
        ResultsError: missing file, a line that is not a JSON object, a record without ``type``,
            a train/val record without a required field, or per-layer lists of different lengths;
            the message names the file and line.

    Example:
        >>> log = read_run_log("benchmarks/results/cpu/runs/random/seed0.jsonl")  # doctest: +SKIP
        >>> log["val"]["loss"][-1]  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"run log {path} does not exist")
    out: dict[str, Any] = {"run": {}, "end": None, "test_loss": None, "other": []}
    train: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    sample_idx: list[int] = []
    sample_loss: list[float] = []
    batch_steps: list[float] = []
    batch_indices: list[list[int]] = []
    per_layer: dict[str, tuple[list[float], list[list[float]], list[int]]] = {
        "layer_update_norm": ([], [], []), "layer_grad_norm": ([], [], [])}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ResultsError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or "type" not in rec:
                raise ResultsError(f"{where}: expected a JSON object with a 'type' field")
            kind = rec["type"]
            if kind == "run":
                out["run"] = rec
            elif kind == "end":
                out["end"] = rec
            elif kind == "test":
                out["test_loss"] = _num(rec, "loss", where)
            elif kind in ("train", "val"):
                keys = ("step", "loss", "samples_seen", "wall_time")
                row = {k: _num(rec, k, where) for k in keys}
                if kind == "val":
                    val.append(row)
                    continue
                row["lm_loss"] = _num(rec, "lm_loss", where) if "lm_loss" in rec else row["loss"]
                row["epoch"] = _num(rec, "epoch", where) if "epoch" in rec else math.nan
                train.append(row)
                if rec.get("indices") is not None:
                    if not isinstance(rec["indices"], list) or not all(
                            isinstance(i, int) and not isinstance(i, bool) for i in rec["indices"]):
                        raise ResultsError(f"{where}: 'indices' must be a list of ints")
                    batch_steps.append(row["step"])
                    batch_indices.append(rec["indices"])
                if rec.get("indices") is not None and rec.get("per_sample_loss") is not None:
                    if len(rec["indices"]) != len(rec["per_sample_loss"]):
                        raise ResultsError(f"{where}: 'indices' and 'per_sample_loss' differ in "
                                           "length")
                    sample_idx.extend(int(i) for i in rec["indices"])
                    sample_loss.extend(float(v) for v in rec["per_sample_loss"])
                for key, (steps, norms, lines) in per_layer.items():
                    if rec.get(key) is not None:
                        vec = rec[key]
                        if not isinstance(vec, list) or not all(
                                isinstance(v, (int, float)) for v in vec):
                            raise ResultsError(f"{where}: '{key}' must be a list of numbers")
                        if norms and len(vec) != len(norms[0]):
                            raise ResultsError(
                                f"{where}: '{key}' has {len(vec)} layers, line {lines[0]} had "
                                f"{len(norms[0])}")
                        steps.append(row["step"])
                        norms.append(vec)
                        lines.append(lineno)
            else:
                out["other"].append(rec)
    for name, rows in (("train", train), ("val", val)):
        keys = rows[0].keys() if rows else ("step", "loss", "samples_seen", "wall_time")
        out[name] = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in keys}
    for key, (steps, norms, _) in per_layer.items():
        out[key] = ({"step": np.array(steps, dtype=np.float64),
                     "norms": np.array(norms, dtype=np.float64)} if steps else None)
    out["batches"] = ({"step": np.array(batch_steps, dtype=np.float64), "indices": batch_indices}
                      if batch_steps else None)
    out["per_sample"] = ({"indices": np.array(sample_idx, dtype=np.int64),
                          "losses": np.array(sample_loss, dtype=np.float64)}
                         if sample_idx else None)
    return out


def _num(rec: Mapping[str, Any], key: str, where: str) -> float:
    if key not in rec:
        raise ResultsError(f"{where}: {rec.get('type')} record lacks '{key}'")
    value = rec[key]
    if value is None:  # JSON has no NaN; writers put null for a non-finite number
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ResultsError(f"{where}: '{key}' must be a number, got {value!r}")
    return float(value)


def run_record_from_log(path: str | os.PathLike, strategy: str, seed: int, *,
                        results_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The run record :func:`build_results` wants, read from one run's JSONL log.

    Args:
        path (str | os.PathLike): the run's log.
        strategy (str): strategy name (e.g. ``"easy_to_hard"``, or a control like
            ``"easy_to_hard_by_length"``).
        seed (int): the run's seed.
        results_dir (str | os.PathLike | None): if given, the ``log`` field is stored relative to
            it (as ``results.json`` wants). Default None (stored as given).

    Returns:
        dict: ``strategy``, ``seed``, ``val_steps``, ``val_losses``, ``val_samples``,
        ``val_wall_times``, ``final_val_loss``, ``test_loss``, ``log``, ``update_norm_steps``,
        ``update_norms`` ([T, L] list or None), ``grad_norm_mean`` ([L] mean over the logged
        steps of each layer's gradient norm, or None), ``host`` (where the run trained, from its
        ``run`` record; None in logs written before it was recorded).

    Raises:
        ResultsError: see :func:`read_run_log`; also a log without validation records.
    """
    log = read_run_log(path)
    if log["val"]["step"].size == 0:
        raise ResultsError(f"run log {path} has no 'val' record; cannot measure convergence")
    rel = Path(path)
    if results_dir is not None:
        rel = Path(os.path.relpath(Path(path).resolve(), Path(results_dir).resolve()))
    upd = log["layer_update_norm"]
    grad = log["layer_grad_norm"]
    end = log["end"] or {}
    final = end.get("final_val_loss")
    return {
        "strategy": strategy, "seed": int(seed),
        "val_steps": log["val"]["step"].tolist(), "val_losses": log["val"]["loss"].tolist(),
        "val_samples": log["val"]["samples_seen"].tolist(),
        "val_wall_times": log["val"]["wall_time"].tolist(),
        "final_val_loss": float(final) if final is not None else float(log["val"]["loss"][-1]),
        "test_loss": log["test_loss"], "log": rel.as_posix(),
        "update_norm_steps": upd["step"].tolist() if upd else None,
        "update_norms": upd["norms"].tolist() if upd else None,
        "grad_norm_mean": grad["norms"].mean(axis=0).tolist() if grad else None,
        "host": log["run"].get("host"),
    }


# ---------------------------------------------------------------------------------------------
# Building the sections
# ---------------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """Recursively turn numpy scalars/arrays into Python and NaN/Inf into None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _check_run(i: int, rec: Mapping[str, Any]) -> None:
    for key in _RUN_FIELDS:
        if key not in rec:
            raise ResultsError(f"run_records[{i}] lacks '{key}'")
    n = len(rec["val_steps"])
    if n == 0 or len(rec["val_losses"]) != n:
        raise ResultsError(f"run_records[{i}] ({rec['strategy']}, seed {rec['seed']}): val_steps "
                           f"and val_losses must be non-empty and of equal length")
    for key in ("val_samples", "val_wall_times"):
        if rec.get(key) is not None and len(rec[key]) != n:
            raise ResultsError(f"run_records[{i}] ({rec['strategy']}, seed {rec['seed']}): "
                               f"{key} has {len(rec[key])} entries, val_steps {n}")


def _targets(by_strategy: dict[str, dict[int, dict]], baseline: str, rule: str,
             fixed: float | None) -> dict[int, float]:
    seeds = sorted({s for runs in by_strategy.values() for s in runs})
    if rule == "fixed":
        if fixed is None or not math.isfinite(float(fixed)):
            raise ResultsError("target rule 'fixed' needs a finite target_loss")
        return dict.fromkeys(seeds, float(fixed))
    if baseline not in by_strategy:
        raise ResultsError(f"the baseline strategy {baseline!r} has no run; strategies: "
                           f"{sorted(by_strategy)}")
    finals = {s: float(r["final_val_loss"]) for s, r in by_strategy[baseline].items()}
    if not all(math.isfinite(v) for v in finals.values()):
        raise ResultsError(f"baseline {baseline!r} has a non-finite final validation loss: {finals}")
    if rule == "baseline_final_per_seed":
        missing = [s for s in seeds if s not in finals]
        if missing:
            raise ResultsError(f"target rule {rule!r}: the baseline {baseline!r} has no run for "
                               f"seed(s) {missing}")
        return {s: finals[s] for s in seeds}
    value = (float(np.mean(list(finals.values()))) if rule == "baseline_final_mean"
             else float(max(finals.values())))
    return dict.fromkeys(seeds, value)


def _summarise_run(rec: Mapping[str, Any], target: float, interpolate: bool,
                   rel_tol: float) -> dict[str, Any]:
    steps, losses = rec["val_steps"], rec["val_losses"]
    out: dict[str, Any] = {"seed": int(rec["seed"]), "target_loss": target}
    out["steps_to_target"] = metrics.steps_to_target(steps, losses, target,
                                                     interpolate=interpolate)
    out["reached"] = out["steps_to_target"] is not None
    for key, src, fn in (("samples_to_target", "val_samples", metrics.samples_to_target),
                         ("wall_time_to_target", "val_wall_times", metrics.wall_time_to_target)):
        xs = rec.get(src)
        out[key] = fn(xs, losses, target, interpolate=interpolate) if xs is not None else None
    out["final_val_loss"] = float(rec["final_val_loss"])
    best = int(np.argmin(losses))
    out["best_val_loss"], out["best_val_step"] = float(losses[best]), float(steps[best])
    # budget-free: mean validation loss over the run (trapezoid area / step span)
    out["val_auc"] = (metrics.area_under_curve(steps, losses) if len(steps) >= 2 else None)
    out["test_loss"] = None if rec.get("test_loss") is None else float(rec["test_loss"])
    out["steps"] = float(steps[-1])
    out["samples_seen"] = float(rec["val_samples"][-1]) if rec.get("val_samples") else None
    out["wall_time"] = float(rec["val_wall_times"][-1]) if rec.get("val_wall_times") else None
    out["log"] = rec.get("log")
    # Right-censoring value of a run that never reached its target: the next evaluation after
    # the budget, the earliest point at which it could have been seen to reach it. It is strictly
    # worse than reaching the target at the last evaluation, and still a lower bound on the cost.
    out["censor_at"] = {}
    for key, src in (("steps_to_target", steps), ("samples_to_target", rec.get("val_samples")),
                     ("wall_time_to_target", rec.get("val_wall_times"))):
        if not src:
            out["censor_at"][key] = None
            continue
        last = float(src[-1])
        out["censor_at"][key] = last + (last - float(src[-2]) if len(src) > 1 else 0.0)
    if rec.get("update_norms") is not None:
        out["layer_stabilisation_step"] = metrics.layer_stabilisation_step(
            rec["update_norm_steps"], rec["update_norms"], rel_tol=rel_tol).tolist()
        out["final_layer_update_norm"] = [float(v) for v in rec["update_norms"][-1]]
    else:
        out["layer_stabilisation_step"] = None
        out["final_layer_update_norm"] = None
    out["mean_layer_grad_norm"] = (None if rec.get("grad_norm_mean") is None
                                   else [float(v) for v in rec["grad_norm_mean"]])
    return out


def _censored(run: Mapping[str, Any], key: str) -> float | None:
    """The value to target, or its censoring value when the run never got there."""
    return run[key] if run[key] is not None else run["censor_at"][key]


def _h1_row(x: np.ndarray, y: np.ndarray, *, n_dropped: int, n_boot: int, confidence: float,
            seed: int) -> dict[str, Any]:
    """One signal vs one target; a correlation that is undefined is a row of nulls saying why.

    A signal that is constant on these samples (e.g. a distance that saturates) or a target with
    fewer than 3 finite pairs has no rank correlation. That is a finding about this signal, not a
    reason to lose the rest of the results, so the row says ``undefined`` instead of raising.
    """
    try:
        r = metrics.rank_correlation(x, y, n_boot=n_boot, confidence=confidence, seed=seed)
    except ValueError as e:
        return {"spearman": None, "spearman_p": None, "kendall": None, "kendall_p": None,
                "ci95": {"spearman": [None, None], "kendall": [None, None]}, "n": int(x.size),
                "n_dropped": n_dropped,
                "undefined": f"{str(e).replace('x is', 'the signal is').replace('y is', 'the target is')} "
                             f"({x.size} finite pairs)"}
    return {"spearman": r["spearman"], "spearman_p": r["spearman_p"],
            "kendall": r["kendall"], "kendall_p": r["kendall_p"],
            "ci95": {"spearman": r["spearman_ci95"], "kendall": r["kendall_ci95"]},
            "n": r["n"], "n_dropped": n_dropped}


def _by_abs_rho(row: Mapping[str, Any], name: str) -> tuple[float, str]:
    """Sort key: largest |Spearman| first, undefined rows last, ties by name."""
    rho = row["spearman"]
    return (1.0 if rho is None else -abs(rho), name)


def _h1(signals: Mapping[str, Any], targets: Mapping[str, Any], primary: str | None,
        signal_info: Mapping[str, Mapping[str, str]] | None, n_boot: int, confidence: float,
        seed: int) -> dict[str, Any]:
    if not targets:
        raise ResultsError("h1: signals were given without targets")
    tgt = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in targets.items()}
    primary = primary or next(iter(tgt))
    if primary not in tgt:
        raise ResultsError(f"h1: primary_target {primary!r} is not among targets {sorted(tgt)}")
    n = next(iter(tgt.values())).size
    out_signals: dict[str, Any] = {}
    for name, values in signals.items():
        x = np.asarray(values, dtype=np.float64).ravel()
        if x.size != n:
            raise ResultsError(f"h1: signal {name!r} has {x.size} values, targets have {n}")
        by_target = {}
        for tname, y in tgt.items():
            if y.size != n:
                raise ResultsError(f"h1: target {tname!r} has {y.size} values, expected {n}")
            # Samples a target could not be measured for (never drawn in the random run) are
            # dropped explicitly and counted.
            keep = np.isfinite(x) & np.isfinite(y)
            by_target[tname] = _h1_row(x[keep], y[keep], n_dropped=int(n - keep.sum()),
                                       n_boot=n_boot, confidence=confidence, seed=seed)
        info = (signal_info or {}).get(name, {})
        out_signals[name] = {**by_target[primary], "target": primary,
                             "kind": info.get("kind", "meta_token" if name.startswith("meta")
                                              else "control"),
                             "description": info.get("description", ""), "by_target": by_target}
    ranking = sorted(out_signals, key=lambda s: _by_abs_rho(out_signals[s], s))
    comparison, best_by_target = {}, {}
    for tname, y in tgt.items():
        order = [s for s in sorted(out_signals, key=lambda s, t=tname: _by_abs_rho(
            out_signals[s]["by_target"][t], s)) if out_signals[s]["by_target"][tname]["spearman"] is not None]
        best_by_target[tname] = order[0] if order else None
        meta = [s for s in order if out_signals[s]["kind"] == "meta_token"]
        ctrl = [s for s in order if out_signals[s]["kind"] == "control"]
        if not meta or not ctrl:
            continue
        a = np.asarray(signals[meta[0]], dtype=np.float64).ravel()
        b = np.asarray(signals[ctrl[0]], dtype=np.float64).ravel()
        keep = np.isfinite(a) & np.isfinite(b) & np.isfinite(y)
        comparison[tname] = {"meta_token": meta[0], "control": ctrl[0],
                             **metrics.compare_correlations(a[keep], b[keep], y[keep],
                                                            n_boot=n_boot,
                                                            confidence=confidence, seed=seed)}
    best = ranking[0] if ranking and out_signals[ranking[0]]["spearman"] is not None else None
    return {"primary_target": primary, "targets": {t: "" for t in tgt},
            "signals": out_signals, "ranking": ranking, "best": best,
            "best_by_target": best_by_target, "comparison": comparison,
            "n_boot": int(n_boot), "confidence": confidence,
            "method": "Spearman rho and Kendall tau-b; percentile bootstrap over samples (pairs "
                      "resampled together)"}


def _h2(runs: dict[str, dict[int, dict]], baseline: str, confidence: float, alpha: float = 0.05,
        power: float = 0.8) -> dict[str, Any]:
    base = runs[baseline]
    out: dict[str, Any] = {}
    for strategy, by_seed in runs.items():
        if strategy == baseline:
            continue
        seeds = sorted(by_seed)
        missing = [s for s in seeds if s not in base]
        if missing:
            raise ResultsError(f"h2: strategy {strategy!r} has seed(s) {missing} that the baseline "
                               f"{baseline!r} lacks; runs are paired by seed")
        row: dict[str, Any] = {"seeds": seeds, "n_pairs": len(seeds),
                               "n_censored": sum(not by_seed[s]["reached"] for s in seeds),
                               "n_censored_baseline": sum(not base[s]["reached"] for s in seeds)}
        for metric_name, key in (("steps", "steps_to_target"), ("samples", "samples_to_target"),
                                 ("wall_time", "wall_time_to_target")):
            strat = [_censored(by_seed[s], key) for s in seeds]
            rand = [_censored(base[s], key) for s in seeds]
            label = ("pct_fewer_steps_vs_random" if metric_name == "steps" else
                     f"pct_fewer_{metric_name}_vs_random")
            ci_key = "ci95" if metric_name == "steps" else f"{label}_ci95"
            if any(v is None for v in strat + rand):
                row[label], row[ci_key] = None, None
                continue
            pct = np.atleast_1d(metrics.pct_fewer_steps(strat, rand))
            row[label] = float(pct.mean())
            row[ci_key] = list(metrics.t_ci(pct, confidence)) if pct.size >= 2 else None
            if metric_name == "steps":
                row["per_seed"] = pct.tolist()
                row["mde_pct"] = (metrics.mde_paired(pct, alpha=alpha, power=power)
                                  if pct.size >= 2 else None)
                if pct.size >= 2:
                    test = metrics.paired_test(strat, rand)
                    row["p_value"] = test["p_value"]
                    row["test"] = "paired t-test of steps to target (strategy vs random, by seed)"
                    row["wilcoxon_p"] = test["wilcoxon_p"]
                    row["p_value_pct"] = metrics.paired_test(pct, np.zeros_like(pct))["p_value"]
                else:
                    row.update(p_value=None, test=None, wilcoxon_p=None, p_value_pct=None)
        # budget-free: % lower area under the validation curve than the baseline, by seed
        strat = [by_seed[s]["val_auc"] for s in seeds]
        rand = [base[s]["val_auc"] for s in seeds]
        if all(v is not None for v in strat + rand):
            pct = np.atleast_1d(metrics.pct_fewer_steps(strat, rand))
            row["pct_lower_auc_vs_random"] = float(pct.mean())
            row["auc_per_seed"] = pct.tolist()
            if pct.size >= 2:
                row["auc_ci95"] = list(metrics.t_ci(pct, confidence))
                row["auc_p_value"] = metrics.paired_test(strat, rand)["p_value"]
                row["auc_mde_pct"] = metrics.mde_paired(pct, alpha=alpha, power=power)
            else:
                row.update(auc_ci95=None, auc_p_value=None, auc_mde_pct=None)
        out[strategy] = row
    return out


def _noise(signals: Mapping[str, Any], flags: Any, signal_info: Mapping[str, Mapping[str, str]] | None,
           h2: Mapping[str, Any] | None, oracle: str, n_boot: int, confidence: float, alpha: float,
           seed: int) -> dict[str, Any]:
    """The positive control: each signal's AUROC at flagging the injected noise, and oracle vs baseline."""
    y = np.asarray(flags, dtype=np.float64).ravel()
    table = {}
    for name, values in signals.items():
        x = np.asarray(values, dtype=np.float64).ravel()
        if x.size != y.size:
            raise ResultsError(f"noise: signal {name!r} has {x.size} values, the noise flags {y.size}")
        keep = np.isfinite(x)
        if keep.sum() < 4 or len(set(y[keep].tolist())) < 2:
            continue
        r = metrics.auroc_ci(x[keep], y[keep], n_boot=n_boot, confidence=confidence, seed=seed)
        info = (signal_info or {}).get(name, {})
        table[name] = {**r, "n_dropped": int(y.size - keep.sum()), "kind": info.get("kind", ""),
                       "description": info.get("description", "")}
    out: dict[str, Any] = {"n": int(y.size), "n_noisy": int(y.sum()), "fraction": float(y.mean()),
                           "auroc": dict(sorted(table.items(), key=lambda kv: -abs(kv[1]["auroc"] - 0.5))),
                           "oracle": oracle, "calibrated": None, "oracle_vs_baseline": None}
    row = (h2 or {}).get("strategies", {}).get(oracle) if h2 else None
    if row is not None:
        ci, p = row.get("ci95"), row.get("p_value")
        ok = bool(ci is not None and p is not None and p < alpha and ci[0] > 0)
        out["oracle_vs_baseline"] = {k: row.get(k) for k in (
            "pct_fewer_steps_vs_random", "ci95", "p_value", "mde_pct", "n_pairs", "n_censored",
            "pct_lower_auc_vs_random", "auc_ci95", "auc_p_value")}
        out["calibrated"] = ok
        out["rule"] = (f"calibrated when {oracle} needs fewer steps than the baseline with p < {alpha} and a "
                       f"{int(confidence * 100)}% CI excluding 0")
    return out


def build_results(run_records: Sequence[Mapping[str, Any]], *,
                  signals: Mapping[str, Any] | None = None,
                  targets: Mapping[str, Any] | None = None, primary_target: str | None = None,
                  signal_info: Mapping[str, Mapping[str, str]] | None = None,
                  target_descriptions: Mapping[str, str] | None = None,
                  baseline: str = "random", target_rule: str = "baseline_final_per_seed",
                  target_loss: float | None = None, interpolate: bool = False,
                  provenance: Mapping[str, Any] | None = None,
                  arrays: Mapping[str, str] | None = None, preset: str = "",
                  n_boot: int = 1000, confidence: float = 0.95, alpha: float = 0.05,
                  seed: int = 0, stabilisation_rel_tol: float = 0.05, power: float = 0.8,
                  target_description: str | None = None, noise_flags: Any = None,
                  oracle: str = "oracle", extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Turn raw per-run numbers and per-sample signals into the sections of ``results.json``.

    Target validation loss (``target_rule``): ``baseline_final_per_seed`` (default; seed s's
    target is the baseline's final validation loss on seed s, so the baseline always reaches it and
    comparisons are paired by seed), ``baseline_final_mean`` (mean over the baseline's seeds),
    ``baseline_final_max`` (the worst baseline seed, reached by every baseline run) or ``fixed``
    (``target_loss``). A run that never reaches its target has ``steps_to_target = None`` in
    ``runs``; for H2/H3 it is right-censored at the next evaluation after its budget (last
    evaluated step / samples / wall time plus one evaluation interval, ``runs.*.*.censor_at``):
    worse than any run that reached the target, yet still an optimistic bound on its true cost --
    the counts ``n_censored`` say how often it happened.

    H2 per strategy (paired by seed with the baseline): mean % fewer steps, its Student-t CI, the
    paired t-test of the steps (``p_value``), the one-sample test of the per-seed % against 0
    (``p_value_pct``, consistent with the CI) and the same % for samples and wall time. H3: for each
    of steps to target, final validation loss and test loss (when every run has one),
    :func:`torch_curriculum.metrics.rank_strategies` over every strategy, baseline included, and a
    verdict; and, for each loss metric, every strategy against the baseline over the seeds it
    shares with it (:func:`torch_curriculum.experiments.metrics.compare_to_baseline`, Holm over the
    strategies; the ``oracle``, when run, is the positive control and judged alone). H1: :func:`torch_curriculum.metrics.rank_correlation` of every signal with every
    target, ranked by ``|spearman|`` on the primary target.

    Args:
        run_records (Sequence[Mapping]): one per (strategy, seed), each with ``strategy``,
            ``seed``, ``val_steps``, ``val_losses`` and optionally ``val_samples``,
            ``val_wall_times``, ``final_val_loss`` (default: last validation loss), ``test_loss``,
            ``log`` (path relative to the results dir), ``update_norm_steps`` + ``update_norms``
            ([T, L]). :func:`run_record_from_log` builds one from a JSONL log.
        signals (Mapping[str, array] | None): per-sample difficulty signals ``[N]`` for H1 (meta-
            token scores per metric/aggregate/pooling, response length, bare edge loss, ...).
        targets (Mapping[str, array] | None): per-sample "what hard means" ``[N]`` (NaN where not
            measured, e.g. a sample never drawn); required with ``signals``.
        primary_target (str | None): target the H1 ranking uses. Default: the first target.
        signal_info (Mapping | None): per signal ``{"kind": "meta_token" | "crossmodel" | "control",
            "description": str}``. Default: kind from the name (``meta*`` = meta_token).
        target_descriptions (Mapping[str, str] | None): what each target is, for the report.
        baseline (str): the baseline strategy. Default ``"random"``.
        target_rule (str): one of :data:`TARGET_RULES`. Default ``"baseline_final_per_seed"``.
        target_loss (float | None): the target for ``target_rule="fixed"``.
        interpolate (bool): interpolate crossings between evaluations. Default False.
        provenance (Mapping | None): must hold ``config``, ``seed`` and ``data_fingerprint``;
            ``versions`` is filled in (python, numpy, scipy, torch, transformers,
            torch_curriculum) and merged with what is given.
        arrays (Mapping[str, str] | None): relative paths of per-layer / per-sample arrays
            (:func:`save_arrays`).
        preset (str): preset name. Default "".
        n_boot (int): bootstrap resamples for H1 CIs. Default 1000.
        confidence (float): CI level everywhere. Default 0.95.
        alpha (float): significance level of the H3 flags. Default 0.05.
        seed (int): seed of every bootstrap. Default 0.
        stabilisation_rel_tol (float): ``rel_tol`` of the layer stabilisation rule. Default 0.05.
        power (float): power of the minimum detectable effect (``mde_pct``) beside every H2
            verdict (:func:`torch_curriculum.experiments.metrics.mde_paired`). Default 0.8.
        target_description (str | None): how the target was chosen, for the report. Default None.
        noise_flags (array | None): ``[N]`` 0/1 injected-noise flags of the training samples (the
            positive control): adds the ``noise`` section (each signal's AUROC at flagging them,
            and ``oracle`` vs the baseline). Default None.
        oracle (str): the strategy that orders by the flag. Default ``"oracle"``.
        extra (Mapping | None): more top-level sections, stored as given (e.g. ``h1_heldout``,
            ``h1_layers``). Default None.

    Returns:
        dict: the results document (JSON-ready after :func:`jsonable`).

    Raises:
        ResultsError: a malformed run record, duplicate (strategy, seed), missing baseline or
            baseline seed, seeds that cannot be paired, unknown target rule, provenance lacking a
            required key, signals without targets or of the wrong length.
    """
    if target_rule not in TARGET_RULES:
        raise ResultsError(f"target_rule must be one of {TARGET_RULES}, got {target_rule!r}")
    if not run_records:
        raise ResultsError("run_records is empty")
    prov = dict(provenance or {})
    missing = [k for k in ("config", "seed", "data_fingerprint") if k not in prov]
    if missing:
        raise ResultsError(f"provenance lacks {missing}")
    prov["versions"] = {**_versions(), **dict(prov.get("versions") or {})}
    by_strategy: dict[str, dict[int, Mapping[str, Any]]] = {}
    for i, rec in enumerate(run_records):
        _check_run(i, rec)
        rec = dict(rec)
        if rec.get("final_val_loss") is None:
            rec["final_val_loss"] = float(rec["val_losses"][-1])
        slot = by_strategy.setdefault(str(rec["strategy"]), {})
        if int(rec["seed"]) in slot:
            raise ResultsError(f"run_records[{i}]: duplicate run ({rec['strategy']}, seed "
                               f"{rec['seed']})")
        slot[int(rec["seed"])] = rec
    per_seed_target = _targets(by_strategy, baseline, target_rule, target_loss)
    runs = {s: {seed_: _summarise_run(r, per_seed_target[seed_], interpolate,
                                      stabilisation_rel_tol)
                for seed_, r in sorted(by_seed.items())}
            for s, by_seed in by_strategy.items()}
    prov.setdefault("seeds", sorted(per_seed_target))
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "preset": preset, "provenance": prov,
        "target": {"rule": target_rule, "baseline": baseline, "interpolate": bool(interpolate),
                   "description": target_description,
                   "per_seed": {str(k): v for k, v in per_seed_target.items()}},
        "runs": {s: {str(k): v for k, v in by_seed.items()} for s, by_seed in runs.items()},
    }
    if signals:
        h1 = _h1(signals, targets or {}, primary_target, signal_info, n_boot, confidence, seed)
        for t, text in (target_descriptions or {}).items():
            if t in h1["targets"]:
                h1["targets"][t] = text
        results["h1"] = h1
    else:
        results["h1"] = None
    if baseline in runs:
        results["h2"] = {"baseline": baseline, "metric": "steps_to_target", "ci_method": "t",
                         "confidence": confidence,
                         "censoring": "a run that never reached its target counts as reaching "
                                      "it at the next evaluation after its budget (last step + "
                                      "one evaluation interval), an optimistic bound",
                         "power": power, "alpha": alpha,
                         "mde": f"mde_pct: the smallest true mean % speed-up a two-sided paired t-test "
                                f"over these seeds detects with {power:.0%} power at alpha {alpha}, "
                                "from the observed seed-to-seed SD of the per-seed %",
                         "strategies": _h2(runs, baseline, confidence, alpha, power)}
    else:
        results["h2"] = None
    results["h3"] = _h3(runs, confidence, alpha, seed, baseline, power,
                        judged_alone=(oracle,))  # the positive control calibrates, it does not compete
    results["noise"] = (_noise(signals or {}, noise_flags, signal_info, results["h2"], oracle, n_boot,
                               confidence, alpha, seed) if noise_flags is not None else None)
    for key, value in (extra or {}).items():
        results[key] = value
    results["per_layer"] = _per_layer(runs, stabilisation_rel_tol)
    results["arrays"] = dict(arrays or {})
    return jsonable(results)


def _h3(runs: dict[str, dict[int, dict]], confidence: float, alpha: float,
        seed: int, baseline: str | None = None, power: float = 0.8,
        judged_alone: Sequence[str] = ()) -> dict[str, Any]:
    seed_sets = {s: sorted(by_seed) for s, by_seed in runs.items()}
    common = sorted(set.intersection(*(set(v) for v in seed_sets.values())))
    rankings: dict[str, Any] = {}
    notes = []
    # Paired tests need the same seeds everywhere: runs on a seed that some strategy lacks (an
    # unfinished benchmark) are left out of the ranking, and the note lists them.
    excluded = {s: [k for k in v if k not in common] for s, v in seed_sets.items()}
    excluded = {s: v for s, v in excluded.items() if v}
    if excluded:
        notes.append(f"runs left out of the ranking because not every strategy has their seed: "
                     f"{excluded}")
    if len(common) < 2:
        notes.append(f"ranking needs >= 2 seeds per strategy, got {len(common)}")
    else:
        for metric_name in RANKING_METRICS:
            values = {}
            for s, by_seed in runs.items():
                vals = [(_censored(by_seed[k], metric_name) if metric_name == "steps_to_target"
                         else by_seed[k][metric_name]) for k in common]
                values[s] = vals
            if any(v is None for vals in values.values() for v in vals):
                continue  # e.g. no test set: this metric is not ranked
            rows = metrics.rank_strategies(values, lower_is_better=True, seed=seed,
                                           confidence=confidence, alpha=alpha)
            label = metric_name.replace("_", " ")
            rankings[metric_name] = {"lower_is_better": True, "ranking": rows,
                                     "verdict": metrics.ranking_verdict(rows, metric=label,
                                                                        alpha=alpha)}
    return {"primary_metric": "steps_to_target", "alpha": alpha, "seeds": common,
            "test": "paired t-test by seed, Holm-corrected", "ci_method": "t",
            "rankings": rankings, "note": "; ".join(notes) or None,
            "vs_baseline": _vs_baseline(runs, baseline, confidence, alpha, power, judged_alone)}


def _vs_baseline(runs: dict[str, dict[int, dict]], baseline: str | None, confidence: float,
                 alpha: float, power: float, judged_alone: Sequence[str]) -> dict[str, Any] | None:
    """Every strategy against the baseline on each loss metric, over the seeds it shares with it.

    Steps to target are H2's (as a %), so they are left out here. Unlike the ranking, which keeps
    only the seeds every strategy has, each pair uses all its seeds: an interim benchmark loses none.
    """
    if baseline is None or baseline not in runs or len(runs) < 2:
        return None
    judged_alone = [s for s in judged_alone if s in runs]
    by_metric = {}
    for metric_name in RANKING_METRICS:
        if metric_name == "steps_to_target":
            continue
        values = {s: {k: r[metric_name] for k, r in by_seed.items()} for s, by_seed in runs.items()}
        if any(v is None for by_seed in values.values() for v in by_seed.values()):
            continue  # e.g. no test set
        by_metric[metric_name] = metrics.compare_to_baseline(values, baseline, confidence=confidence,
                                                             alpha=alpha, power=power,
                                                             judged_alone=judged_alone)
    return {"baseline": baseline, "difference": "strategy − baseline, negative = lower",
            "test": "paired t-test by seed over the seeds shared with the baseline, Holm-corrected "
                    "over the strategies" + (f" ({', '.join(judged_alone)}, the positive control, judged alone)" if judged_alone else ""),
            "alpha": alpha, "confidence": confidence, "power": power, "metrics": by_metric}


def _per_layer(runs: dict[str, dict[int, dict]], rel_tol: float) -> dict[str, Any]:
    out = {}
    for s, by_seed in runs.items():
        stab = [r["layer_stabilisation_step"] for r in by_seed.values()
                if r["layer_stabilisation_step"] is not None]
        if not stab:
            continue
        if len({len(v) for v in stab}) != 1:
            raise ResultsError(f"per_layer: the runs of {s!r} logged different numbers of layers")
        arr = np.array([[math.nan if v is None else v for v in row] for row in stab],
                       dtype=np.float64)
        # A layer that never stabilised in some seed is left out of that layer's mean (counted
        # in n_never_stable); a layer that never stabilised in any seed stays NaN (null).
        with np.errstate(invalid="ignore"), _warnings.catch_warnings():
            _warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(arr, axis=0)
        row: dict[str, Any] = {"stabilisation_step_mean": mean.tolist(), "n_seeds": len(stab),
                               "n_never_stable": int(np.sum(~np.isfinite(arr)))}
        for key, src in (("final_update_norm_mean", "final_layer_update_norm"),
                         ("grad_norm_mean", "mean_layer_grad_norm")):
            vals = [r[src] for r in by_seed.values() if r.get(src) is not None]
            row[key] = np.mean(np.array(vals), axis=0).tolist() if vals else None
        out[s] = row
    return {"rule": "first logged step after which the layer's LoRA update norm stays within "
                    "+-rel_tol of its final value (torch_curriculum.metrics."
                    "layer_stabilisation_step); mean over seeds",
            "rel_tol": rel_tol, "strategies": out}


def _versions() -> dict[str, str]:
    from torch_curriculum._version import __version__
    out = {"python": platform.python_version(), "numpy": np.__version__,
           "torch_curriculum": __version__}
    # Package metadata, not imports: importing transformers would cost seconds.
    for dist in ("scipy", "torch", "transformers", "peft", "safetensors", "matplotlib"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def data_fingerprint(*paths: str | os.PathLike) -> str:
    """``sha256:<hex>`` over the bytes of the given files, in order (names not included).

    Raises:
        ResultsError: a path that is not a file.
    """
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise ResultsError(f"data_fingerprint: {p} is not a file")
        with open(p, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()


def save_arrays(results_dir: str | os.PathLike, *, layer_diffs: Any = None,
                layer_diffs_raw: Any = None,
                h1_samples: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Write the per-layer / per-sample arrays the report plots; return the ``arrays`` section.

    Args:
        results_dir (str | os.PathLike): the preset's results directory.
        layer_diffs (array | None): normalised d-hat ``[N, L]`` -> ``arrays/layer_diffs.npy``.
        layer_diffs_raw (array | None): raw distances ``[N, L]`` -> ``arrays/layer_diffs_raw.npy``.
        h1_samples (Mapping[str, array] | None): per-sample signals and targets ``[N]`` (the H1
            inputs) -> ``arrays/h1_samples.npz``.

    Returns:
        dict[str, str]: paths relative to ``results_dir``.

    Raises:
        ResultsError: a layer array that is not 2-D, or h1 arrays of different lengths.
    """
    root = Path(results_dir)
    (root / "arrays").mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    for key, arr in (("layer_diffs", layer_diffs), ("layer_diffs_raw", layer_diffs_raw)):
        if arr is None:
            continue
        if hasattr(arr, "detach"):
            arr = arr.detach().cpu().numpy()
        arr = np.asarray(arr, dtype=np.float64)
        if arr.ndim != 2:
            raise ResultsError(f"{key} must be [N, L], got shape {arr.shape}")
        with atomic_write(root / "arrays" / f"{key}.npy") as f:
            np.save(f, arr)
        out[key] = f"arrays/{key}.npy"
    if h1_samples:
        cols = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in h1_samples.items()}
        if len({v.size for v in cols.values()}) != 1:
            raise ResultsError(f"h1_samples arrays differ in length: "
                               f"{ {k: v.size for k, v in cols.items()} }")
        with atomic_write(root / "arrays" / "h1_samples.npz") as f:
            np.savez(f, **cols)
        out["h1_samples"] = "arrays/h1_samples.npz"
    return out


def write_results(results_dir: str | os.PathLike, results: Mapping[str, Any]) -> Path:
    """Validate and write ``<results_dir>/results.json`` atomically (temp file + rename).

    Raises:
        ResultsError: see :func:`validate_results`.
    """
    doc = jsonable(results)
    validate_results(doc, results_dir)
    root = Path(results_dir)
    root.mkdir(parents=True, exist_ok=True)
    # unique temp name: two --shard processes that finish together may both write it
    return atomic_write_text(root / "results.json", json.dumps(doc, indent=2, allow_nan=False) + "\n")


def load_results(results_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``<results_dir>/results.json``.

    Raises:
        ResultsError: missing or invalid file (the message names the field).
    """
    path = Path(results_dir) / "results.json"
    if not path.is_file():
        raise ResultsError(f"{path} does not exist")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e})") from None
    validate_results(doc, results_dir)
    return doc


def _need(doc: Mapping[str, Any], key: str, kind: type | tuple, where: str) -> Any:
    if not isinstance(doc, Mapping) or key not in doc:
        raise ResultsError(f"results.json: '{where}{key}' is missing")
    value = doc[key]
    if not isinstance(value, kind):
        raise ResultsError(f"results.json: '{where}{key}' must be {kind}, got "
                           f"{type(value).__name__}")
    return value


def validate_results(doc: Mapping[str, Any], results_dir: str | os.PathLike | None = None) -> None:
    """Check a results document against the schema; with ``results_dir``, check referenced files.

    Raises:
        ResultsError: naming the first missing/ill-typed field or missing file.
    """
    version = _need(doc, "schema_version", int, "")
    if version != SCHEMA_VERSION:
        raise ResultsError(f"results.json: schema_version {version} is not supported "
                           f"(expected {SCHEMA_VERSION})")
    prov = _need(doc, "provenance", dict, "")
    for key in ("config", "versions", "seed", "data_fingerprint"):
        _need(prov, key, object, "provenance.")
    _need(doc, "target", dict, "")
    runs = _need(doc, "runs", dict, "")
    if not runs:
        raise ResultsError("results.json: 'runs' is empty")
    num = (int, float, type(None))
    for strategy, by_seed in runs.items():
        if not isinstance(by_seed, dict) or not by_seed:
            raise ResultsError(f"results.json: 'runs.{strategy}' must be a non-empty object")
        for seed, run in by_seed.items():
            where = f"runs.{strategy}.{seed}."
            for key in ("steps_to_target", "samples_to_target", "final_val_loss", "test_loss"):
                _need(run, key, num, where)
            log = run.get("log")
            if log is not None and results_dir is not None and not (Path(results_dir) / log).is_file():
                raise ResultsError(f"results.json: '{where}log' points to {log}, which does not "
                                   f"exist under {results_dir}")
    for section in ("h1", "h2", "h3"):
        _need(doc, section, (dict, type(None)), "")
    if doc["h1"] is not None:
        for name, sig in _need(doc["h1"], "signals", dict, "h1.").items():
            for key in ("spearman", "kendall", "ci95"):
                _need(sig, key, (int, float, dict, type(None)), f"h1.signals.{name}.")
    if doc["h2"] is not None:
        for name, row in _need(doc["h2"], "strategies", dict, "h2.").items():
            for key in ("pct_fewer_steps_vs_random", "ci95", "p_value"):
                _need(row, key, (int, float, list, type(None)), f"h2.strategies.{name}.")
    if doc["h3"] is not None:
        _need(doc["h3"], "rankings", dict, "h3.")
    arrays = doc.get("arrays") or {}
    if results_dir is not None:
        for key, rel in arrays.items():
            if not (Path(results_dir) / rel).is_file():
                raise ResultsError(f"results.json: 'arrays.{key}' points to {rel}, which does not "
                                   f"exist under {results_dir}")
