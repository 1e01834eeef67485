"""Markdown report and PNG plots of one benchmark preset, built ONLY from its results directory.

Usage::

    torch-curriculum report <results dir> [--no-plots] [--render-only]

Reads ``<dir>/results.json`` (schema: ``torch_curriculum/experiments/RESULTS_SCHEMA.md`` and the docstring of
``torch_curriculum.experiments.results``), the per-run JSONL logs it references (``runs.<strategy>.<seed>.log``)
and the arrays under ``arrays`` (``layer_diffs``, ``layer_diffs_raw``: ``.npy`` ``[N, L]``;
``h1_samples``: ``.npz`` of per-sample signals and targets), all relative to ``<dir>``. Writes
``<dir>/report.md`` and, when matplotlib is importable, ``<dir>/plots/*.png``:

* ``learning_curves.png``: validation loss per strategy (mean over seeds, min-max band) and the
  smoothed training LM loss;
* ``difficulty_hist_per_layer.png``: histogram of d_i per layer (raw distances when present);
* ``heatmap_layer_diffs.png``: normalised d_i, samples (sorted by mean difficulty) x layers;
* ``heatmap_update_norm.png``: per strategy, the LoRA update norm of every layer over training
  (mean over seeds);
* ``heatmap_drawn_difficulty.png``: per strategy, the mean normalised d_i (per layer) of the
  samples drawn over training (from the logged batch ``indices``): the curriculum at work;
* ``h1_scatter.png``: the best H1 signals against the primary H1 target.

Nothing is recomputed from models: re-running this script on the same directory gives the same
report. The last line printed is one JSON object (``report``, ``plots``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write, atomic_write_text
from .metrics import holm
from .results import ResultsError, _by_abs_rho, load_results, read_run_log

__all__ = ["build_report", "make_plots", "render_markdown", "results_page"]

logger = logging.getLogger(__name__)

_MAX_HEATMAP_ROWS = 2000
_MAX_SCATTER = 6


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def _f(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    ax = abs(float(x))
    if ax != 0 and (ax < 10 ** -nd or ax >= 1e6):
        return f"{x:.{nd}g}" if ax >= 1e6 else f"{x:.2e}"
    return f"{x:.{nd}f}"


def _p(p: Any) -> str:
    if p is None:
        return "—"
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def _ci(ci: Sequence[float] | None, nd: int = 3) -> str:
    if not ci or any(v is None for v in ci):
        return "—"
    return f"[{_f(ci[0], nd)}, {_f(ci[1], nd)}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def _h1_section(h1: Mapping[str, Any] | None) -> list[str]:
    lines = ["## H1 — do large meta-token differences mark hard samples?", ""]
    if not h1:
        return [*lines, "No H1 data in this results file.", ""]
    primary = h1["primary_target"]
    sigs = h1["signals"]
    conf = round(100 * h1.get("confidence", 0.95))
    lines += [f"Rank correlation of each difficulty signal with each target, {h1.get('method', '')}"
              f" ({h1.get('n_boot', '?')} resamples, {conf}% CIs). Sorted by |Spearman ρ| on the "
              f"primary target; the best predictor is marked **best**.", ""]
    targets = [primary] + [t for t in h1["targets"] if t != primary]
    for t in targets:
        desc = h1["targets"].get(t) or ""
        lines += [f"### Target: `{t}`" + (" (primary)" if t == primary else ""), ""]
        if desc:
            lines += [desc, ""]
        order = sorted(sigs, key=lambda s, t=t: _by_abs_rho(sigs[s]["by_target"][t], s))
        rows = []
        for rank, s in enumerate(order, start=1):
            r = sigs[s]["by_target"][t]
            mark = " **best**" if rank == 1 and r["spearman"] is not None else ""
            rho = (f"{_f(r['spearman'])} {_ci(r['ci95']['spearman'])}" if r["spearman"] is not None
                   else f"undefined: {r.get('undefined', '')}")
            rows.append([rank, f"`{s}`{mark}", sigs[s].get("kind", ""), rho, _p(r["spearman_p"]),
                         f"{_f(r['kendall'])} {_ci(r['ci95']['kendall'])}", _p(r["kendall_p"]),
                         r["n"], r.get("n_dropped", 0)])
        lines += _table(["#", "signal", "kind", "Spearman ρ [CI]", "p(ρ)", "Kendall τ [CI]",
                         "p(τ)", "n", "dropped"], rows)
        best = order[0]
        rb = sigs[best]["by_target"][t]
        if rb["spearman"] is None:
            lines += ["", f"No signal has a defined rank correlation with `{t}`."]
        else:
            lines += ["", f"**Best predictor of `{t}`: `{best}`** (ρ = {_f(rb['spearman'])}, "
                          f"{conf}% CI {_ci(rb['ci95']['spearman'])})."]
        cmp = (h1.get("comparison") or {}).get(t)
        if cmp:
            m = sigs[cmp["meta_token"]]["by_target"][t]
            c = sigs[cmp["control"]]["by_target"][t]
            if cmp["a_better"]:
                verdict = "the meta-token signal predicts significantly better"
            elif cmp["b_better"]:
                verdict = "the cheap signal predicts significantly better"
            else:
                verdict = "the difference is not significant: this data cannot tell them apart"
            lines += [f"Best meta-token signal `{cmp['meta_token']}` (ρ = {_f(m['spearman'])}) vs "
                      f"best cheap signal `{cmp['control']}` (ρ = {_f(c['spearman'])}): "
                      f"|ρ| difference {_f(cmp['diff_abs_spearman'])}, {conf}% paired-bootstrap "
                      f"CI {_ci(cmp['ci95'])} — {verdict}."]
        lines.append("")
    verdict = _h1_verdict(h1)
    if verdict:
        lines += [f"H1 on the primary target: {verdict}", ""]
    return lines


def _h1_verdict(h1: Mapping[str, Any]) -> str | None:
    """H1 in one sentence: does the best meta-token signal rank samples by the primary target?"""
    t = h1["primary_target"]
    meta = [s for s in h1["ranking"] if h1["signals"][s].get("kind") == "meta_token"]
    if not meta:
        return None
    r = h1["signals"][meta[0]]
    lo, hi = r["ci95"]["spearman"]
    if lo is None or hi is None:
        return None
    head = (f"best meta-token signal `{meta[0]}`: ρ = {_f(r['spearman'])} "
            f"{_ci(r['ci95']['spearman'])} with `{t}`")
    if lo > 0:
        return f"{head} — supports H1 (a larger difference goes with a harder sample)."
    if hi < 0:
        return f"{head} — contradicts H1 (a larger difference goes with an EASIER sample)."
    return f"{head} — no evidence either way (the CI includes 0)."


def _headline(doc: Mapping[str, Any]) -> list[str]:
    lines = ["## Headline", ""]
    h1, h2, h3 = doc.get("h1"), doc.get("h2"), doc.get("h3")
    if h1 and h1.get("best") is None:
        lines.append(f"- **H1**: no signal has a defined rank correlation with `{h1['primary_target']}`.")
    elif h1:
        verdict = _h1_verdict(h1)
        best = h1["signals"][h1["best"]]
        lines.append(f"- **H1**: best predictor of `{h1['primary_target']}` is `{h1['best']}` "
                     f"(ρ = {_f(best['spearman'])} {_ci(best['ci95']['spearman'])})"
                     + (f"; {verdict}" if verdict else "."))
    if h2 and h2.get("strategies"):
        parts = [f"`{s}` {_f(r['pct_fewer_steps_vs_random'], 1)}% {_ci(r['ci95'], 1)}, "
                 f"p = {_p(r['p_value'])}" for s, r in sorted(
                     h2["strategies"].items(),
                     key=lambda kv: -(kv[1]["pct_fewer_steps_vs_random"] or -math.inf))]
        verdicts = {s: _h2_verdict(r["ci95"], r["p_value"]) for s, r in h2["strategies"].items()}
        plain = (f"Significantly faster than `{h2['baseline']}`: {_named(verdicts, 'significantly faster')}; "
                 f"significantly slower: {_named(verdicts, 'significantly slower')} (each test alone).")
        control = _positive_control(doc)
        held = _h2_holm_verdicts(h2, control)
        if len(held) > 1:  # several strategies against one baseline: say what survives the multiplicity
            plain += (f" With Holm's correction over the {len(held)} comparisons"
                      + (f" (the positive control `{control}` is judged alone)" if control in h2["strategies"] else "")
                      + f": faster: {_named(held, 'significantly faster')}; "
                      f"slower: {_named(held, 'significantly slower')}.")
        lines.append(f"- **H2** (% fewer steps to target than `{h2['baseline']}`, mean "
                     f"[95% CI]): " + "; ".join(parts) + ". " + plain)
    block = ((h3 or {}).get("rankings") or {}).get((h3 or {}).get("primary_metric", ""))
    if block:
        order = ", ".join(f"{r['rank']}. `{r['strategy']}`" for r in block["ranking"])
        lines.append(f"- **H3** (by {h3['primary_metric'].replace('_', ' ')}, best first): "
                     f"{order}. {block['verdict']}")
    elif h3 is not None:
        lines.append(f"- **H3**: no ranking ({h3.get('note') or 'no data'}).")
    vs_line = _vs_baseline_headline(h3)
    if vs_line:
        lines.append(vs_line)
    return [*lines, ""]


def _h2_section(h2: Mapping[str, Any] | None, control: str | None = None) -> list[str]:
    lines = ["## H2 — does the curriculum converge faster than random?", ""]
    if not h2:
        return [*lines, "No H2 data (no baseline runs).", ""]
    conf = round(100 * h2.get("confidence", 0.95))
    lines += [f"% fewer optimizer steps to the target validation loss than `{h2['baseline']}`, "
              f"per seed then averaged (positive = faster); {conf}% Student-t CI over seeds; "
              f"p = paired t-test of steps to target by seed. Censoring: {h2.get('censoring', '')}."
              " The seed expected 20–30% fewer steps. **MDE**: the smallest true speed-up this design "
              f"(these seeds, this seed-to-seed spread) detects with {h2.get('power', 0.8):.0%} power; a "
              "non-significant result with an MDE above 30% says nothing about a 20–30% effect. **val AUC**: the "
              "area under the validation curve / its step span (the mean validation loss over the run), a "
              "budget-free measure that needs no target; % lower than the baseline, paired by seed.", ""]
    rows = []
    summary = []
    strategies = h2["strategies"]
    held = _h2_holm_verdicts(h2, control)
    for s in sorted(strategies, key=lambda k: -(strategies[k]["pct_fewer_steps_vs_random"]
                                                 if strategies[k]["pct_fewer_steps_vs_random"]
                                                 is not None else -math.inf)):
        r = strategies[s]
        per_seed = ", ".join(_f(v, 1) for v in r.get("per_seed") or [])
        rows.append([f"`{s}`", f"{_f(r['pct_fewer_steps_vs_random'], 1)}%",
                     _ci(r["ci95"], 1), _p(r["p_value"]), f"≥ {_f(r.get('mde_pct'), 1)}%", per_seed,
                     f"{r.get('n_censored', 0)}/{r.get('n_pairs', '?')}",
                     f"{_f(r.get('pct_lower_auc_vs_random'), 2)}% {_ci(r.get('auc_ci95'), 2)}",
                     _p(r.get("auc_p_value")), f"≥ {_f(r.get('auc_mde_pct'), 2)}%",
                     _f(r.get("pct_fewer_samples_vs_random"), 1),
                     _f(r.get("pct_fewer_wall_time_vs_random"), 1)])
        verdict = _h2_verdict_qualified(s, r, held)
        if verdict.startswith("not") and r.get("mde_pct") is not None:
            verdict += f"; could have detected ≥ {_f(r['mde_pct'], 1)}%"
        summary.append(f"`{s}`: {verdict}")
    lines += _table(["strategy", "% fewer steps", f"{conf}% CI", "p", "MDE (80% power)", "per seed (%)",
                     "censored", "% lower val AUC [CI]", "p (AUC)", "MDE (AUC)", "% fewer samples",
                     "% less wall time"], rows)
    lines += ["", "Plainly: " + "; ".join(summary) + ". Significant here means both the paired test "
              f"(p ≤ 0.05 for that comparison alone) and the CI of the % agree; \"not after Holm\" marks a "
              f"verdict that does not survive Holm's correction over the {len(held)} comparisons.", ""]
    return lines


def _named(verdicts: Mapping[str, str], verdict: str) -> str:
    """The strategies with this verdict, as a comma-separated list of code spans ("none" if none)."""
    return ", ".join(f"`{s}`" for s, v in verdicts.items() if v == verdict) or "none"


def _positive_control(doc: Mapping[str, Any]) -> str | None:
    """The name of the run that orders by the injected noise (``noise.oracle``), None without noise."""
    return (doc.get("noise") or {}).get("oracle")


def _h2_holm_verdicts(h2: Mapping[str, Any], control: str | None = None) -> dict[str, str]:
    """Each tested strategy's H2 verdict with its p Holm-corrected over all comparisons with the baseline.

    The positive control (``control``, see :func:`_positive_control`) stays outside the family: it is
    the instrument's calibration, one test with its own rule decided before the runs, not one of the
    curricula under question.
    """
    tested = {s: r for s, r in h2["strategies"].items()
              if s != control and r["p_value"] is not None and r["ci95"] is not None}
    return {s: _h2_verdict(r["ci95"], p) for (s, r), p in
            zip(tested.items(), holm([r["p_value"] for r in tested.values()]))}


def _h2_verdict_qualified(s: str, r: Mapping[str, Any], held: Mapping[str, str]) -> str:
    """The per-comparison verdict, marked where it does not survive Holm's correction."""
    verdict = _h2_verdict(r["ci95"], r["p_value"])
    if verdict.startswith("significantly") and s in held and len(held) > 1 and held[s] != verdict:
        verdict += f" (not after Holm over {len(held)})"
    return verdict


def _h2_verdict(ci: Sequence[float] | None, p: float | None, alpha: float = 0.05) -> str:
    """One strategy's H2 verdict in words; the two tests must agree before anything is called significant.

    ``p`` tests the steps themselves, the CI the per-seed % change; with three seeds they can disagree.
    """
    if ci is None or p is None:
        return "too few seeds for a CI/test"
    if p <= alpha and ci[0] > 0:
        return "significantly faster"
    if p <= alpha and ci[1] < 0:
        return "significantly slower"
    if p <= alpha:
        return f"not significant (p = {_p(p)} on the steps, but the CI of the % includes 0)"
    return "not significantly different from random"


def _h3_section(h3: Mapping[str, Any] | None) -> list[str]:
    lines = ["## H3 — ranking of strategies", ""]
    vs = (h3 or {}).get("vs_baseline") or {}
    if not h3 or not h3.get("rankings"):
        note = (h3 or {}).get("note") or "no ranking in this results file"
        lines += [f"No ranking: {note}.", ""]
        for metric_name in (vs.get("metrics") or {}):
            lines += [f"### {metric_name.replace('_', ' ').capitalize()}", "", *_vs_baseline_table(vs, metric_name)]
        return lines
    lines += [f"Mean over seeds {h3.get('seeds')} with Student-t CIs; tests: "
              f"{h3.get('test', '')} (alpha = {h3.get('alpha')}). Lower is better.", ""]
    if vs.get("metrics"):
        lines += [f"Under each ranking, every strategy against `{vs['baseline']}` alone: the difference ("
                  f"{vs['difference']}), mean over the seeds it shares with `{vs['baseline']}` (so an interim "
                  f"benchmark loses no pairs) with a Student-t CI; {vs['test']}; a difference counts when "
                  f"the adjusted p <= {vs['alpha']} and the CI excludes 0. MDE: the smallest true difference "
                  f"(either sign) a paired t-test over those seeds detects with {vs['power']:.0%} power "
                  "from the observed spread, before the correction.", ""]
    if h3.get("note"):
        lines += [f"Note: {h3['note']}.", ""]
    for metric_name, block in h3["rankings"].items():
        lines += [f"### By {metric_name.replace('_', ' ')}"
                  + (" (primary)" if metric_name == h3.get("primary_metric") else ""), ""]
        rows = [[r["rank"], f"`{r['strategy']}`", _f(r["mean"]), _ci(r["ci95"]),
                 _p(r["p_holm_vs_next"]), _f(r["significant_vs_next"]),
                 _p(r["p_holm_vs_best"]), _f(r["significant_vs_best"])]
                for r in block["ranking"]]
        lines += _table(["rank", "strategy", "mean", "CI", "Holm p vs next", "sig. vs next",
                         "Holm p vs best", "sig. vs best"], rows)
        lines += ["", f"> {block['verdict']}", ""]
        lines += _vs_baseline_table(vs, metric_name)
    return lines


def _vs_baseline_table(vs: Mapping[str, Any], metric_name: str) -> list[str]:
    rows_in = (vs.get("metrics") or {}).get(metric_name)
    if not rows_in:
        return []
    base = vs["baseline"]
    rows = [[f"`{s}`", ", ".join(str(k) for k in r["seeds"]) or "—",
             _f(r["mean_diff"], 4), _ci(r["ci95"], 4), _p(r["p_value"]), _p(r["p_holm"]),
             "—" if r.get("mde") is None else f"≥ {_f(r['mde'], 4)}",
             {"lower": f"lower than `{base}`", "higher": f"higher than `{base}`"}.get(
                 r["direction"], "too few seeds" if r["p_value"] is None else "no significant difference")]
            for s, r in sorted(rows_in.items(), key=lambda kv: (kv[1]["mean_diff"] is None,
                                                                kv[1]["mean_diff"] or 0.0))]
    return [*_table(["strategy", f"seeds shared with `{base}`", f"mean − `{base}`", "95% CI", "p",
                     "Holm p", f"MDE ({vs['power']:.0%} power)", "verdict"], rows), ""]


def _vs_baseline_headline(h3: Mapping[str, Any] | None) -> str | None:
    vs = (h3 or {}).get("vs_baseline") or {}
    parts = []
    for metric_name, rows in (vs.get("metrics") or {}).items():
        if metric_name not in ("best_val_loss", "test_loss"):
            continue
        lower = [f"`{s}` {_f(r['mean_diff'], 3)} {_ci(r['ci95'], 3)}" for s, r in rows.items()
                 if r["direction"] == "lower"]
        higher = [f"`{s}` +{_f(r['mean_diff'], 3)} {_ci(r['ci95'], 3)}" for s, r in rows.items()
                  if r["direction"] == "higher"]
        parts.append(f"{metric_name.replace('_', ' ')}: lower: {', '.join(lower) or 'none'}; "
                     f"higher: {', '.join(higher) or 'none'}")
    if not parts:
        return None
    return (f"- **Against `{vs['baseline']}`** (mean difference [95% CI], paired by seed, Holm over the "
            f"strategies): " + "; ".join(parts) + ".")


def _runs_section(doc: Mapping[str, Any]) -> list[str]:
    lines = ["## Runs", ""]
    target = doc["target"]
    if target.get("description"):
        lines += [f"Target: {target['description']}.", ""]
    lines += [f"Target validation loss: rule `{target.get('rule')}` (baseline "
              f"`{target.get('baseline')}`, interpolation "
              f"{'on' if target.get('interpolate') else 'off'}); per seed: "
              + ", ".join(f"seed {k}: {_f(v, 4)}" for k, v in
                          (target.get("per_seed") or {}).items()) + ".", ""]
    rows = []
    for s, by_seed in doc["runs"].items():
        for seed, r in by_seed.items():
            log = f"[log]({r['log']})" if r.get("log") else "—"
            rows.append([f"`{s}`", seed, _f(r["steps_to_target"], 1),
                         _f(r["samples_to_target"], 0), _f(r.get("wall_time_to_target"), 1),
                         _f(r.get("best_val_loss"), 4)
                         + (f" @ {r['best_val_step']:.0f}" if r.get("best_val_step") is not None else ""),
                         _f(r["final_val_loss"], 4), _f(r["test_loss"], 4), log])
    lines += _table(["strategy", "seed", "steps to target", "samples to target",
                     "wall time to target (s)", "best val loss @ step", "final val loss", "test loss", "log"], rows)
    lines += ["", "— = never reached (or not measured).", ""]
    return lines


def _layer_table(per: Mapping[str, Any], key: str, nd: int) -> list[str]:
    strategies = [s for s in per if per[s].get(key) is not None]
    if not strategies:
        return ["(not logged)", ""]
    n_layers = max(len(per[s][key]) for s in strategies)
    rows = []
    for layer in range(n_layers):
        row: list[Any] = [layer]
        for s in strategies:
            vals = per[s][key]
            row.append(_f(vals[layer], nd) if layer < len(vals) else "—")
        rows.append(row)
    return [*_table(["layer", *[f"`{s}`" for s in strategies]], rows), ""]


def _per_layer_section(per_layer: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Per-layer analysis", ""]
    per = (per_layer or {}).get("strategies") or {}
    if not per:
        return [*lines, "No per-layer LoRA update norms were logged.", ""]
    tol = per_layer.get("rel_tol", 0.05)
    never = {s: v["n_never_stable"] for s, v in per.items() if v.get("n_never_stable")}
    lines += ["### Convergence step per layer", "",
              f"Step at which each layer's LoRA update norm stabilises: the first logged step "
              f"after which it stays within ±{100 * tol:g}% of its final value, mean over seeds. "
              "Earlier = that layer converged sooner."
              + (f" Never stable (left out of the mean): {never}." if never else ""), ""]
    lines += _layer_table(per, "stabilisation_step_mean", 0)
    lines += ["### Final LoRA update norm per layer (mean over seeds)", ""]
    lines += _layer_table(per, "final_update_norm_mean", 4)
    lines += ["### Mean gradient norm per layer over training (mean over seeds)", ""]
    lines += _layer_table(per, "grad_norm_mean", 4)
    return lines


def _noise_section(noise: Mapping[str, Any] | None) -> list[str]:
    if not noise:
        return []
    lines = ["## Positive control — injected noise", "",
             f"{noise['n_noisy']} of {noise['n']} training responses ({100 * noise['fraction']:.0f}%) were replaced "
             "by the response of another conversation (validation and test are clean). The control "
             f"`{noise['oracle']}` trains clean samples first, by the stored flag.", ""]
    ov = noise.get("oracle_vs_baseline")
    if ov:
        verdict = ("**calibrated**: the instrument detects a curriculum effect that certainly exists"
                   if noise.get("calibrated") else
                   "**NOT calibrated** at these settings: the oracle's advantage is not significant, so a null result "
                   "for the real curricula says little (more seeds, validation samples or a finer evaluation grid "
                   "are needed)")
        lines += [f"`{noise['oracle']}` vs random: {_f(ov.get('pct_fewer_steps_vs_random'), 1)}% fewer steps to "
                  f"target, 95% CI {_ci(ov.get('ci95'), 1)}, p = {_p(ov.get('p_value'))}, MDE "
                  f"{_f(ov.get('mde_pct'), 1)}% ({ov.get('n_pairs')} seeds); val AUC "
                  f"{_f(ov.get('pct_lower_auc_vs_random'), 2)}% lower {_ci(ov.get('auc_ci95'), 2)}, "
                  f"p = {_p(ov.get('auc_p_value'))}. Rule: {noise.get('rule', '')}. Verdict: {verdict}.", ""]
    else:
        lines += ["The oracle has no finished run paired with the baseline yet.", ""]
    lines += ["### AUROC of each signal at flagging the noisy samples", "",
              "0.5 = chance; above 0.5 the signal is larger on noisy samples, below 0.5 smaller. 95% CI: stratified "
              "percentile bootstrap. `target:*` rows are measured after training (not available before it).", ""]
    rows = [[f"`{k}`", v.get("kind", ""), _f(v["auroc"]), _ci(v["ci95"]), v["n"]]
            for k, v in noise["auroc"].items()]
    lines += _table(["signal", "kind", "AUROC", "95% CI", "n"], rows)
    return [*lines, ""]


def _h1_extra_sections(doc: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    ho = doc.get("h1_heldout")
    if ho:
        lines += ["## H1 (a) — held-out samples", "", ho["targets"].get("heldout_loss", ""), ""]
        sigs = ho["signals"]
        rows = [[i, f"`{s}`", sigs[s].get("kind", ""),
                 f"{_f(sigs[s]['spearman'])} {_ci(sigs[s]['ci95']['spearman'])}", _p(sigs[s]["spearman_p"]),
                 sigs[s]["n"]] for i, s in enumerate(ho["ranking"], start=1)]
        lines += _table(["#", "signal", "kind", "Spearman ρ [CI]", "p", "n"], rows)
        lines.append("")
    hl = doc.get("h1_layers")
    if hl:
        lines += ["## H1 (d) — per layer: does d_j mark what layer j's LoRA must learn?", "", hl["description"]
                  + f" ({hl['n_samples']} samples, {hl['n_seeds']} seeds).", ""]
        rows = []
        for j in range(hl["layers"]):
            row: list[Any] = [j]
            for when in ("init", "end"):
                r = hl[when][j]
                row.append(f"{_f(r['spearman'])} {_ci(r['ci95'])}" if r["spearman"] is not None else "—")
            rows.append(row)
        lines += _table(["layer j", "ρ at initialisation [CI]", "ρ after training [CI]"], rows)
        sig = [j for j in range(hl["layers"]) if hl["init"][j]["ci95"] and hl["init"][j]["ci95"][0] > 0]
        lines += ["", f"Layers whose CI at initialisation lies above 0: {sig or 'none'} of {hl['layers']}.", ""]
    return lines


def _interim_banner(prov: Mapping[str, Any]) -> list[str]:
    """A warning at the top of a report built while some planned runs have not finished."""
    missing = prov.get("runs_missing") or []
    if not missing:
        return []
    done = prov.get("runs_complete")
    total = (done + len(missing)) if isinstance(done, int) else None
    shown = ", ".join(f"`{m}`" for m in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    return [f"> **Interim report: {done} of {total} planned runs have finished** (seeds compared: "
            f"{prov.get('seeds_compared')}; missing: {shown}). Comparisons are paired by seed over the finished "
            "runs, and a pooled target moves as runs finish. The pre-specified analysis is the one on the complete "
            "plan: looking at interim results repeatedly and stopping when one is significant inflates false "
            "positives.", ""]


def render_markdown(doc: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """The Markdown report of a results document.

    Args:
        doc (Mapping): a validated results document.
        plots (Sequence[str]): plot paths relative to the results directory, embedded in order.

    Returns:
        str: the report.
    """
    prov = doc["provenance"]
    lines = [f"# Curriculum benchmark report{': ' + doc['preset'] if doc.get('preset') else ''}",
             "", "Generated from `results.json` (schema v"
             f"{doc['schema_version']}) and the run logs it references by "
             "`torch-curriculum report`; re-render with "
             "`torch-curriculum report <this directory> --render-only`.", ""]
    lines += _interim_banner(prov)
    lines += _headline(doc)
    lines += _noise_section(doc.get("noise"))
    lines += _h1_section(doc.get("h1"))
    lines += _h1_extra_sections(doc)
    lines += _h2_section(doc.get("h2"), _positive_control(doc))
    lines += _h3_section(doc.get("h3"))
    lines += _runs_section(doc)
    lines += _per_layer_section(doc.get("per_layer"))
    lines += ["## Figures", ""]
    if plots:
        lines += [f"![{Path(p).stem}]({p})" for p in plots]
    else:
        lines.append("No figures (matplotlib is not installed, or plots were disabled; "
                     "`pip install 'torch_curriculum[examples]'` adds it).")
    lines += ["", "## Provenance", ""]
    lines += _table(["field", "value"],
                    [["seed", prov.get("seed")], ["seeds", prov.get("seeds")],
                     ["data fingerprint", f"`{prov.get('data_fingerprint')}`"],
                     *[[f"version: {k}", v] for k, v in (prov.get("versions") or {}).items()],
                     *[[k, f"`{json.dumps(v)}`"] for k, v in prov.items()
                       if k not in ("seed", "seeds", "data_fingerprint", "versions", "config")]])
    lines += ["", "<details><summary>config</summary>", "", "```json",
              json.dumps(prov.get("config"), indent=2, sort_keys=True), "```", "", "</details>", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: the report has no figures "
                       "(pip install 'torch_curriculum[examples]')")
        return None
    return plt


def _logs(doc: Mapping[str, Any], root: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for s, by_seed in doc["runs"].items():
        for r in by_seed.values():
            if r.get("log"):
                out.setdefault(s, []).append(read_run_log(root / r["log"]))
    return out


def _on_grid(xs: list[np.ndarray], ys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every (x, y) curve on the union of x values, NaN outside each curve's own range."""
    grid = np.unique(np.concatenate(xs))
    rows = [np.where((grid >= x[0]) & (grid <= x[-1]), np.interp(grid, x, y), np.nan)
            for x, y in zip(xs, ys)]
    return grid, np.vstack(rows)


def _smooth(y: np.ndarray) -> np.ndarray:
    w = max(1, y.size // 50)
    if w == 1:
        return y
    return np.convolve(y, np.ones(w) / w, mode="valid")


def _panel_grid(plt: Any, n: int, max_cols: int, cell: tuple[float, float]) -> tuple[Any, list[Any]]:
    """A figure with ``n`` panels in rows of at most ``max_cols``; the unused cells are hidden."""
    ncols = min(max_cols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell[0] * ncols, cell[1] * nrows), squeeze=False)
    cells = [ax for row in axes for ax in row]
    for ax in cells[n:]:
        ax.axis("off")
    return fig, cells[:n]


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)


def _learning_curves(plt: Any, logs: Mapping[str, list[dict]], doc: Mapping[str, Any],
                     path: Path) -> bool:
    if not logs:
        return False
    fig, (ax_val, ax_tr) = plt.subplots(1, 2, figsize=(13, 4.5))
    for s, runs in logs.items():
        vals = [(r["val"]["step"], r["val"]["loss"]) for r in runs if r["val"]["step"].size]
        if vals:
            grid, ys = _on_grid([v[0] for v in vals], [v[1] for v in vals])
            with np.errstate(invalid="ignore"), _quiet():
                mean = np.nanmean(ys, axis=0)
                lo, hi = np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)
            (line,) = ax_val.plot(grid, mean, label=f"{s} (n={len(vals)})")
            ax_val.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.2)
        trs = [(r["train"]["step"], r["train"]["lm_loss"]) for r in runs if r["train"]["step"].size]
        if trs:
            grid, ys = _on_grid([t[0] for t in trs], [t[1] for t in trs])
            with _quiet():
                mean = np.nanmean(ys, axis=0)
            sm = _smooth(mean)
            ax_tr.plot(grid[grid.size - sm.size:], sm, label=s)
    targets = [v for v in (doc["target"].get("per_seed") or {}).values() if v is not None]
    if targets:
        ax_val.axhline(float(np.mean(targets)), color="k", ls="--", lw=1, label="target (mean)")
    ax_val.set(title="Validation loss (mean over seeds, band = min–max)", xlabel="step",
               ylabel="loss")
    ax_tr.set(title="Training LM loss (mean over seeds, moving average)", xlabel="step",
              ylabel="loss")
    ax_val.legend(fontsize=7)
    ax_tr.legend(fontsize=7)
    _save(plt, fig, path)
    return True


class _quiet:
    """Silence numpy's 'mean of empty slice' warnings where all-NaN columns are expected."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def _hist_per_layer(plt: Any, d: np.ndarray, raw: bool, path: Path) -> None:
    fig, axes = _panel_grid(plt, d.shape[1], 6, (2.4, 1.9))
    for layer, ax in enumerate(axes):
        ax.hist(d[:, layer], bins=30, color="tab:blue")
        ax.set_title(f"layer {layer}", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"Difficulty d_i per layer ({'raw distance' if raw else 'normalised'}), "
                 f"N = {d.shape[0]}")
    _save(plt, fig, path)


def _heatmap_diffs(plt: Any, d: np.ndarray, path: Path) -> None:
    order = np.argsort(d.mean(axis=1), kind="stable")
    if order.size > _MAX_HEATMAP_ROWS:  # display only: evenly spaced rows of the sorted order
        order = order[np.linspace(0, order.size - 1, _MAX_HEATMAP_ROWS).astype(int)]
    fig, ax = plt.subplots(figsize=(8, 5))
    im = ax.imshow(d[order], aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set(title="Per-layer difficulty d_i (samples sorted by mean d, easy at top)",
           xlabel="layer", ylabel="sample (sorted)")
    fig.colorbar(im, ax=ax)
    _save(plt, fig, path)


def _heatmap_update_norms(plt: Any, logs: Mapping[str, list[dict]], path: Path) -> bool:
    panels = {}
    for s, runs in logs.items():
        upd = [r["layer_update_norm"] for r in runs if r["layer_update_norm"] is not None]
        if not upd:
            continue
        steps = upd[0]["step"]
        # Seeds may log at different steps: interpolate each onto the first seed's steps.
        stack = [np.stack([np.interp(steps, u["step"], u["norms"][:, j])
                           for j in range(u["norms"].shape[1])], axis=1) for u in upd
                 if u["norms"].shape[1] == upd[0]["norms"].shape[1]]
        panels[s] = (steps, np.mean(stack, axis=0))
    if not panels:
        return False
    fig, axes = _panel_grid(plt, len(panels), 3, (5, 3.6))
    for ax, (s, (steps, norms)) in zip(axes, panels.items()):
        im = ax.imshow(norms.T, aspect="auto", origin="lower", interpolation="nearest",
                       extent=(steps[0], steps[-1], -0.5, norms.shape[1] - 0.5), cmap="magma")
        ax.set(title=f"{s}: LoRA update norm", xlabel="step", ylabel="layer")
        ax.yaxis.get_major_locator().set_params(integer=True)
        fig.colorbar(im, ax=ax)
    _save(plt, fig, path)
    return True


def _drawn_difficulty(logs: Mapping[str, list[dict]], d: np.ndarray,
                      n_bins: int = 60) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per strategy: mean d_i (per layer) of the samples drawn, in step bins, averaged over seeds."""
    out = {}
    for s, runs in logs.items():
        per_seed = []
        edges = None
        for r in runs:
            b = r.get("batches")
            if b is None:
                continue
            steps = b["step"]
            if edges is None:
                edges = np.linspace(steps.min(), steps.max() + 1, min(n_bins, steps.size) + 1)
            lens = np.array([len(ix) for ix in b["indices"]])
            flat = np.concatenate([np.asarray(ix, dtype=np.int64) for ix in b["indices"]])
            if flat.size and (flat.min() < 0 or flat.max() >= d.shape[0]):
                raise ResultsError(f"strategy {s!r}: a logged sample index is outside the "
                                   f"{d.shape[0]} rows of layer_diffs")
            which = np.clip(np.searchsorted(edges, np.repeat(steps, lens), side="right") - 1,
                            0, edges.size - 2)
            sums = np.zeros((edges.size - 1, d.shape[1]))
            np.add.at(sums, which, d[flat])
            counts = np.bincount(which, minlength=edges.size - 1)[:, None]
            with np.errstate(invalid="ignore", divide="ignore"):
                per_seed.append(np.where(counts > 0, sums / np.maximum(counts, 1), np.nan))
        if per_seed:
            with _quiet():
                out[s] = (edges, np.nanmean(np.stack(per_seed), axis=0))
    return out


def _heatmap_drawn(plt: Any, panels: Mapping[str, tuple[np.ndarray, np.ndarray]],
                   path: Path) -> None:
    fig, axes = _panel_grid(plt, len(panels), 3, (5, 3.6))
    vmin = min(float(np.nanmin(v)) for _, v in panels.values())
    vmax = max(float(np.nanmax(v)) for _, v in panels.values())
    for ax, (s, (edges, m)) in zip(axes, panels.items()):
        im = ax.imshow(m.T, aspect="auto", origin="lower", interpolation="nearest",
                       extent=(edges[0], edges[-1], -0.5, m.shape[1] - 0.5), cmap="viridis",
                       vmin=vmin, vmax=vmax)
        ax.set(title=f"{s}: mean d_i of drawn samples", xlabel="step", ylabel="layer")
        ax.yaxis.get_major_locator().set_params(integer=True)
        fig.colorbar(im, ax=ax)
    _save(plt, fig, path)


def _h1_scatter(plt: Any, h1: Mapping[str, Any], samples: Mapping[str, np.ndarray],
                path: Path) -> bool:
    primary = h1["primary_target"]
    if primary not in samples:
        logger.warning("h1_samples has no column %r: no H1 scatter", primary)
        return False
    names = [s for s in h1["ranking"] if s in samples][:_MAX_SCATTER]
    if not names:
        return False
    fig, axes = _panel_grid(plt, len(names), 3, (4.2, 3.6))
    y = samples[primary]
    for ax, s in zip(axes, names):
        r = h1["signals"][s]
        ax.scatter(samples[s], y, s=4, alpha=0.35)
        ax.set_title(f"{s}\nρ = {_f(r['spearman'])} {_ci(r['ci95']['spearman'])}", fontsize=8)
        ax.set_xlabel(s, fontsize=7)
        ax.set_ylabel(primary, fontsize=7)
    fig.suptitle(f"H1: signals vs {primary} (best {len(names)} by |ρ|)")
    _save(plt, fig, path)
    return True


def _heatmap_h1_layers(plt: Any, hl: Mapping[str, Any], path: Path) -> None:
    """Spearman(grad norm of layer j, d_j) per layer, at initialisation and after training."""
    rows = [[np.nan if r["spearman"] is None else r["spearman"] for r in hl[w]] for w in ("init", "end")]
    m = np.asarray(rows, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * m.shape[1] + 2), 2.4))
    im = ax.imshow(m, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_yticks([0, 1], ["at init", "after training"])
    ax.set_xlabel("generator layer j")
    ax.set_title("H1 (d): Spearman ρ(per-sample grad norm of layer j, d_j)")
    fig.colorbar(im, ax=ax, fraction=0.03)
    _save(plt, fig, path)


def _noise_auroc(plt: Any, noise: Mapping[str, Any], path: Path) -> None:
    items = list(noise["auroc"].items())[:20]
    fig, ax = plt.subplots(figsize=(7.0, 0.3 * len(items) + 1.2))
    y = np.arange(len(items))
    est = [v["auroc"] for _, v in items]
    lo = [v["auroc"] - v["ci95"][0] for _, v in items]
    hi = [v["ci95"][1] - v["auroc"] for _, v in items]
    ax.errorbar(est, y, xerr=[lo, hi], fmt="o", capsize=3)
    ax.axvline(0.5, color="grey", lw=1, ls="--")
    ax.set_yticks(y, [k for k, _ in items], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("AUROC at flagging the injected noise (95% CI)")
    _save(plt, fig, path)


def make_plots(doc: Mapping[str, Any], results_dir: str | Path, plt: Any) -> list[str]:
    """Write every plot the results directory has data for; return their relative paths.

    Args:
        doc (Mapping): the validated results document.
        results_dir (str | Path): the directory holding it (logs and arrays are read from here).
        plt: ``matplotlib.pyplot``.

    Returns:
        list[str]: ``plots/<name>.png`` for each plot written.
    """
    root = Path(results_dir)
    out_dir = root / "plots"
    out_dir.mkdir(exist_ok=True)
    written: list[str] = []
    logs = _logs(doc, root)
    if _learning_curves(plt, logs, doc, out_dir / "learning_curves.png"):
        written.append("plots/learning_curves.png")
    arrays = doc.get("arrays") or {}
    hist_src = arrays.get("layer_diffs_raw") or arrays.get("layer_diffs")
    if hist_src:
        _hist_per_layer(plt, np.load(root / hist_src), "layer_diffs_raw" in arrays,
                        out_dir / "difficulty_hist_per_layer.png")
        written.append("plots/difficulty_hist_per_layer.png")
    if arrays.get("layer_diffs"):
        _heatmap_diffs(plt, np.load(root / arrays["layer_diffs"]),
                       out_dir / "heatmap_layer_diffs.png")
        written.append("plots/heatmap_layer_diffs.png")
    if _heatmap_update_norms(plt, logs, out_dir / "heatmap_update_norm.png"):
        written.append("plots/heatmap_update_norm.png")
    if arrays.get("layer_diffs"):
        panels = _drawn_difficulty(logs, np.load(root / arrays["layer_diffs"]))
        if panels:
            _heatmap_drawn(plt, panels, out_dir / "heatmap_drawn_difficulty.png")
            written.append("plots/heatmap_drawn_difficulty.png")
    if doc.get("h1") and arrays.get("h1_samples"):
        with np.load(root / arrays["h1_samples"]) as npz:
            samples = {k: npz[k] for k in npz.files}
        if _h1_scatter(plt, doc["h1"], samples, out_dir / "h1_scatter.png"):
            written.append("plots/h1_scatter.png")
    if doc.get("h1_layers"):
        _heatmap_h1_layers(plt, doc["h1_layers"], out_dir / "h1_per_layer_heatmap.png")
        written.append("plots/h1_per_layer_heatmap.png")
    if (doc.get("noise") or {}).get("auroc"):
        _noise_auroc(plt, doc["noise"], out_dir / "noise_auroc.png")
        written.append("plots/noise_auroc.png")
    return written


def build_report(results_dir: str | Path, *, plots: bool = True) -> Path:
    """Write ``<results_dir>/report.md`` (and ``plots/*.png`` when matplotlib is installed).

    Args:
        results_dir (str | Path): a preset's results directory holding ``results.json``.
        plots (bool): draw figures if matplotlib is importable. Default True.

    Returns:
        Path: the report file.

    Raises:
        ResultsError: missing/invalid ``results.json``, or a log/array it references is missing or
            malformed (the message names it).
    """
    root = Path(results_dir)
    doc = load_results(root)
    plt = _pyplot() if plots else None
    written = make_plots(doc, root, plt) if plt is not None else []
    path = root / "report.md"
    atomic_write_text(path, render_markdown(doc, written))
    return path


def results_page(entries: Sequence[tuple[str, str | Path]], *, page_dir: str | Path = ".",
                 assets_dir: str | Path | None = None, results_root: str | Path | None = None,
                 repo_root: str | Path | None = None) -> str:
    """A Markdown page of the measured verdicts of several results directories (``docs/results.md``).

    Built only from each directory's ``results.json`` (plots are copied, not redrawn). A directory
    without ``results.json`` is listed as not run yet. The page links nothing outside ``page_dir``'s
    site: ``report.md`` files and results paths are written as code paths, and the plots it shows are
    copied into ``assets_dir`` and linked there, so a strict MkDocs build accepts it.

    Args:
        entries (Sequence[tuple[str, str | Path]]): ``(title, results_dir)`` in page order.
        page_dir (str | Path): folder the page is written to (image links are made relative to it).
            Default ``"."``.
        assets_dir (str | Path | None): folder (inside the docs) to copy the shown plots into, under
            ``<assets_dir>/<results_dir relative to results_root>/``; existing copies are overwritten and
            PNGs there whose plot no longer exists are deleted.
            None: no images, the plots are listed as code paths. Default None.
        results_root (str | Path | None): folder the per-directory asset sub-folders are named
            relative to; None: each results directory's own name. Default None.
        repo_root (str | Path | None): paths in the text are written relative to it; None: as given.
            Default None.

    Returns:
        str: the page.

    Raises:
        ValueError: two entries would copy their plots into the same assets sub-folder.

    Example:
        >>> "Not run yet" in results_page([("cpu", "/nonexistent")])
        True
    """
    import os
    import shutil

    def shown(path: Path) -> str:
        return Path(os.path.relpath(path, repo_root)).as_posix() if repo_root is not None else path.as_posix()

    lines = ["# Measured results", "",
             "Generated by `python benchmarks/results_page.py` from the committed `results.json` files; every number "
             "below is in them. How to read each metric: [the experiments guide](guides/experiments.md).", ""]
    slugs: dict[str, str] = {}
    for title, d in entries:
        d = Path(d)
        rel = shown(d)
        lines += [f"## {title}", ""]
        if not (d / "results.json").is_file():
            lines += [f"Not run yet: there is no `{rel}/results.json` (no committed run of this setting).", ""]
            continue
        doc = load_results(d)
        prov = doc["provenance"]
        missing = len(prov.get("runs_missing") or [])
        interim = (f"**Interim: {prov.get('runs_complete')} of {prov.get('runs_complete', 0) + missing} planned runs "
                   "finished** (not the pre-specified analysis). " if missing else "")
        lines += [f"{interim}Full report: `{rel}/report.md`. Seeds compared: "
                  f"{prov.get('seeds_compared', prov.get('seeds'))}; splits {prov.get('splits')}; runs missing: "
                  f"{missing}.", ""]
        if doc["target"].get("description"):
            lines += [f"Target: {doc['target']['description']}.", ""]
        noise = doc.get("noise")
        if noise and noise.get("oracle_vs_baseline"):
            ov = noise["oracle_vs_baseline"]
            lines += [f"**Positive control** — oracle vs random: {_f(ov['pct_fewer_steps_vs_random'], 1)}% fewer steps, "
                      f"95% CI {_ci(ov['ci95'], 1)}, p = {_p(ov['p_value'])}, MDE {_f(ov['mde_pct'], 1)}%: "
                      + ("**calibrated**." if noise.get("calibrated") else "**not calibrated** at these settings."), ""]
            top = list(noise["auroc"].items())[:6]
            lines += _table(["signal", "AUROC at flagging noise", "95% CI"],
                            [[f"`{k}`", _f(v["auroc"]), _ci(v["ci95"])] for k, v in top])
            lines.append("")
        h2 = doc.get("h2")
        if h2 and h2.get("strategies"):
            rows = []
            held = _h2_holm_verdicts(h2, _positive_control(doc))
            for st, r in h2["strategies"].items():
                mde = r.get("mde_pct")
                if mde is None and len(r.get("per_seed") or []) >= 2:  # results written before MDEs existed
                    from .metrics import mde_paired

                    mde = mde_paired(r["per_seed"])
                rows.append([f"`{st}`", f"{_f(r['pct_fewer_steps_vs_random'], 1)}%", _ci(r["ci95"], 1), _p(r["p_value"]),
                             f"≥ {_f(mde, 1)}%", _h2_verdict_qualified(st, r, held),
                             f"{_f(r.get('pct_lower_auc_vs_random'), 2)}% {_ci(r.get('auc_ci95'), 2)}"])
            lines += ["**H2** (% fewer steps to the target than random; MDE = smallest effect detectable at 80% power):",
                      ""]
            lines += _table(["strategy", "% fewer steps", "95% CI", "p", "MDE", "verdict", "% lower val AUC [CI]"],
                            rows)
            lines.append("")
        h3 = doc.get("h3") or {}
        block = (h3.get("rankings") or {}).get(h3.get("primary_metric", ""))
        if block:
            lines += [f"**H3**: {block['verdict']}", ""]
        h1 = doc.get("h1")
        if h1:
            v = _h1_verdict(h1)
            if v:
                lines += [f"**H1** (`{h1['primary_target']}`): {v}", ""]
        plots = [n for n in ("learning_curves.png", "noise_auroc.png", "h1_per_layer_heatmap.png")
                 if (d / "plots" / n).is_file()]
        if plots and assets_dir is None:
            lines.append("Plots: " + ", ".join(f"`{rel}/plots/{n}`" for n in plots) + ".")
        elif plots:
            slug = Path(os.path.relpath(d, results_root)).as_posix() if results_root is not None else d.name
            if slug in slugs:
                raise ValueError(f"results directories {slugs[slug]} and {d} would share the assets folder "
                                 f"{slug!r}; pass results_root")
            slugs[slug] = str(d)
            dest = Path(assets_dir) / slug
            dest.mkdir(parents=True, exist_ok=True)
            for stale in dest.glob("*.png"):  # a copy whose plot is gone would otherwise linger in the docs
                if stale.name not in plots:
                    stale.unlink()
            for n in plots:
                shutil.copyfile(d / "plots" / n, dest / n)
                link = Path(os.path.relpath(dest / n, page_dir)).as_posix()
                lines.append(f"![{n[:-4]}]({link})")
        lines.append("")
    return "\n".join(lines)
