"""Pilot (issue 11): do the response-conditioned cross-model signals carry information?

On the bundled pair (cloud Qwen2.5-Coder-0.5B-Instruct, edge SmolLM2-135M-Instruct) and the 160
chitchat training samples of the first ``cpu`` preset (its configuration as recorded in
``benchmarks/results/cpu_v1/results.json``, splits drawn by ``torch-curriculum experiment``'s
``load_splits``), every signal of :mod:`torch_curriculum.crossmodel` is computed in
one pass per model per batch, and its Spearman rho with a 95% percentile-bootstrap CI
(:func:`torch_curriculum.metrics.rank_correlation`) is taken against two targets from the committed
cpu experiment (``benchmarks/results/cpu_v1/arrays/h1_samples.npz``, same sample order):

* (a) ``edge_loss_before``: the bare edge model's per-sample response loss (nats/token, the
  generator's prompt layout, 64-token examples);
* (b) ``loss_drop``: ``edge_loss_before - loss_after_training`` (the latter: the trained random-order
  generator's per-sample loss, mean over the 3 seeds of 40 steps).

Each signal is reported as the top-3 mean of its rank-normalised per-layer profile (the library's
default aggregate), and per layer. Failures (CIs through 0) are reported like successes.

Run (loads the bundled models; wrap in the heavy lock on shared machines)::

    flock /tmp/heavy.lock python benchmarks/signals_pilot.py

Writes ``benchmarks/results/signals_pilot/results.json`` and ``report.md``; the last line of stdout
is one JSON object (summary).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
#: the committed experiment the targets come from (the ``cpu`` preset before its redesign)
EXPERIMENT = ROOT / "results" / "cpu_v1"

from torch_curriculum import crossmodel  # noqa: E402
from torch_curriculum.alignment import align_layer, default_layer_map, select_anchors  # noqa: E402
from torch_curriculum.crossmodel import KnnReference, knn_agreement  # noqa: E402
from torch_curriculum.data import format_prompts  # noqa: E402
from torch_curriculum.difficulty import aggregate, layer_distances, normalize_layers  # noqa: E402
from torch_curriculum.metrics import rank_correlation, spearman_rows  # noqa: E402

N_BOOT = 1000


def _profile_score(d: np.ndarray, k: int = 3) -> np.ndarray:
    return aggregate(normalize_layers(torch.as_tensor(d), "rank"), "topk_mean", k=k).numpy()


def _meta_distance(cloud: np.ndarray, edge: np.ndarray, anchors: torch.Tensor, metric: str) -> np.ndarray:
    """Response meta tokens through the library's relative alignment + layer distance, per layer."""
    out = np.empty(cloud.shape[:2])
    for j in range(cloud.shape[1]):
        c, e, _ = align_layer(torch.as_tensor(cloud[:, j]), torch.as_tensor(edge[:, j]), "relative", anchors=anchors)
        out[:, j] = layer_distances(c[:, None], e[:, None], metric)[:, 0].numpy()
    return out


def _partial_spearman(x: np.ndarray, y: np.ndarray, control: np.ndarray) -> dict:
    """Spearman partial correlation of x and y given control (ranks, linear residuals, Pearson)."""
    from scipy import stats

    rx, ry, rc = (stats.rankdata(v) for v in (x, y, control))
    def resid(u):
        return u - np.polyval(np.polyfit(rc, u, 1), rc)
    r, p = stats.pearsonr(resid(rx), resid(ry))
    return {"partial_spearman": float(r), "p": float(p)}


def _corr(x: np.ndarray, y: np.ndarray) -> dict:
    ok = np.isfinite(x) & np.isfinite(y)
    try:
        r = rank_correlation(x[ok], y[ok], n_boot=N_BOOT, seed=0)
    except ValueError as e:       # a constant signal: reported, not hidden
        return {"spearman": None, "spearman_ci95": None, "n": int(ok.sum()), "error": str(e)}
    return {"spearman": r["spearman"], "spearman_ci95": r["spearman_ci95"], "spearman_p": r["spearman_p"],
            "n": r["n"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "signals_pilot"))
    ap.add_argument("--limit", type=int, default=None, help="first N samples only (smoke runs)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reuse", action="store_true", help="reuse raw_signals.npz of an earlier run (analysis only)")
    args = ap.parse_args(argv)
    from torch_curriculum.bundled import load_bundled
    from torch_curriculum.experiments.runner import load_splits

    # the experiment whose targets this pilot reads: the first cpu preset (160 samples), as it ran
    cfg = json.loads((EXPERIMENT / "results.json").read_text(encoding="utf-8"))["provenance"]["config"]
    train, _, _, desc, _ = load_splits(cfg["data"])
    h1 = np.load(EXPERIMENT / "arrays" / "h1_samples.npz")
    targets = {"edge_loss_before": h1["edge_loss_before"],
               "loss_drop": h1["edge_loss_before"] - h1["loss_after_training"]}
    h1_lengths = h1["response_length"]
    if args.limit:
        train = train[:args.limit]
        targets = {k: v[:args.limit] for k, v in targets.items()}
        h1_lengths = h1_lengths[:args.limit]
    n = len(train)
    mt = cfg["curriculum"]["meta_token"]
    prompts = format_prompts(train, max_context_turns=mt["max_context_turns"])
    pairs = [(p, s.response) for p, s in zip(prompts, train)]
    ids = [s.sample_id for s in train]

    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    raw_path = outdir / "raw_signals.npz"      # the expensive part, kept so the analysis can be re-run
    if args.reuse and raw_path.is_file():
        # analysis only: no model is loaded (the tokenizer of the edge model is read for the order check)
        from transformers import AutoTokenizer

        with np.load(raw_path) as z:
            out = {k: z[k] for k in z.files if k not in ("sample_ids", "timings", "t_signals", "meta")}
            timings = json.loads(str(z["timings"]))
            t_signals = float(z["t_signals"])
            meta = json.loads(str(z["meta"])) if "meta" in z.files else None
            if list(z["sample_ids"]) != ids:
                raise SystemExit(f"{raw_path} holds other samples; run without --reuse")
        from torch_curriculum.bundled import _cached_gguf_folder, qwen_gguf, smollm2_gguf

        etok = AutoTokenizer.from_pretrained(_cached_gguf_folder(smollm2_gguf(), None))
        ctok = AutoTokenizer.from_pretrained(_cached_gguf_folder(qwen_gguf(), None))
        t_load = float("nan")
        if meta is None:    # the first run saved no settings: they are the ones below, by construction
            meta = {"settings": {"pooling": "mean", "layer_map": default_layer_map(30, 24), "turn_prefix": None,
                                 "max_length": 512, "truncation": "left", "vocab_chunk": 16384, "knn_k": 10,
                                 "batch_size": args.batch_size},
                    "shared_vocabulary_size": len(crossmodel.SharedVocabulary.build(ctok, etok).texts)}
    else:
        t0 = time.perf_counter()
        cloud, ctok = load_bundled("cloud")
        edge, etok = load_bundled("edge")
        t_load = time.perf_counter() - t0
        sig = crossmodel.CrossModelSignals(cloud, ctok, edge, etok, pooling="mean", max_length=512,
                                           truncation="left", batch_size=args.batch_size, knn_k=10)
        t0 = time.perf_counter()
        out = sig.compute(pairs, ["logit_lens_gap", "vocab_kl", "uld", "response"])
        t_signals = time.perf_counter() - t0
        timings = dict(sig.last_timings)
        meta = {"settings": {**sig.describe(), "batch_size": args.batch_size},
                "shared_vocabulary_size": len(sig.shared_vocabulary.texts)}
        np.savez(raw_path, sample_ids=np.array(ids), timings=np.array(json.dumps(timings)),
                 t_signals=np.array(t_signals), meta=np.array(json.dumps(meta)), **out)

    # sanity: the last layer's edge bpb is the bare edge response loss in another unit and layout
    edge_bpb_last = out["edge_bpb"][:, -1]

    # k-NN agreement: (1) every training sample as the reference set, the scored one left out;
    # (2) 32 seeded anchors (the preset's num_anchors) as the reference set
    full_ref = KnnReference(out["response_cloud"], out["response_edge"], ids)
    anchors = select_anchors(n, min(32, n - 1), seed=0)
    anc_ref = KnnReference(out["response_cloud"][anchors.numpy()], out["response_edge"][anchors.numpy()],
                           [ids[i] for i in anchors.tolist()])
    knn_all = knn_agreement(out["response_cloud"], out["response_edge"], full_ref, k=min(10, n - 2),
                            self_index=full_ref.self_index(ids))
    knn_anc = knn_agreement(out["response_cloud"], out["response_edge"], anc_ref, k=min(5, len(anchors) - 2),
                            self_index=anc_ref.self_index(ids))

    per_layer = {
        "logit_lens_gap": out["logit_lens_gap"],
        "edge_bpb": out["edge_bpb"],
        "cloud_bpb": out["cloud_bpb"],
        "vocab_kl": out["vocab_kl"],
        "uld": out["uld"],
        "knn_agreement_all_k10": knn_all,
        "knn_agreement_anchors32_k5": knn_anc,
        "response_meta_l2_relative": _meta_distance(out["response_cloud"], out["response_edge"], anchors, "l2"),
        "response_meta_cosine_relative": _meta_distance(out["response_cloud"], out["response_edge"], anchors,
                                                        "cosine"),
    }
    results: dict = {"signals": {}, "targets": {}, "sanity": {}}
    for tname, y in targets.items():
        results["targets"][tname] = {"mean": float(np.nanmean(y)), "std": float(np.nanstd(y))}
    for name, d in per_layer.items():
        entry = {"top3_mean": {}, "per_layer": {}, "last_layer": {}}
        score = _profile_score(d)
        for tname, y in targets.items():
            entry["top3_mean"][tname] = _corr(score, y)
            entry["last_layer"][tname] = _corr(d[:, -1], y)
            # per layer: the point estimate only (30 bootstraps per signal and target would be noise-mining)
            ok = np.isfinite(y)
            rho = spearman_rows(np.ascontiguousarray(d[ok].T), np.broadcast_to(y[ok], (d.shape[1], ok.sum())))
            entry["per_layer"][tname] = [None if not np.isfinite(r) else round(float(r), 4) for r in rho]
        # does the signal say more about the loss drop than the bare edge loss already does?
        entry["top3_mean_vs_loss_drop_given_edge_loss"] = _partial_spearman(score, targets["loss_drop"],
                                                                           targets["edge_loss_before"])
        entry["mean_per_layer"] = np.nanmean(d, axis=0).round(6).tolist()
        results["signals"][name] = entry
    # h1_samples.npz holds no ids: check the order by the response lengths it stores (edge tokens + EOS)
    lengths = np.array([len(etok(" " + s.response.strip(), add_special_tokens=False)["input_ids"]) + 1 for s in train])
    results["sanity"]["h1_order_check_response_length_match"] = float(np.mean(lengths == h1_lengths))
    results["sanity"]["edge_loss_before_vs_loss_drop"] = _corr(targets["edge_loss_before"], targets["loss_drop"])
    results["sanity"]["edge_bpb_last_vs_edge_loss_before"] = _corr(edge_bpb_last, targets["edge_loss_before"])
    results["sanity"]["vocab_shared_mass_cloud_mean"] = float(np.nanmean(out["vocab_shared_mass_cloud"]))
    results["sanity"]["vocab_shared_mass_edge_mean"] = float(np.nanmean(out["vocab_shared_mass_edge"]))
    results["sanity"]["shared_vocabulary_size"] = meta["shared_vocabulary_size"]
    results["provenance"] = {
        "models": {"cloud": "bundled Qwen2.5-Coder-0.5B-Instruct (float32)", "edge": "bundled SmolLM2-135M-Instruct"},
        "data": f"{desc}; first cpu preset train split, {n} samples (config from benchmarks/results/cpu_v1)",
        "prompt": f"format_prompts(max_context_turns={mt['max_context_turns']}) + '\\nYou:' + ' ' + response",
        "targets": "benchmarks/results/cpu_v1/arrays/h1_samples.npz (edge_loss_before, loss_after_training)",
        "settings": meta["settings"], "n_boot": N_BOOT, "aggregate": "top3_mean of rank-normalised layers",
        "seconds": {"load": round(t_load, 1), "signals": round(t_signals, 1),
                    **{k: round(v, 1) for k, v in timings.items()}},
        "torch_threads": torch.get_num_threads(),
    }
    (outdir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (outdir / "report.md").write_text(render(results))
    np.savez_compressed(outdir / "per_layer_signals.npz", sample_ids=np.array(ids), **per_layer,
                        **{k: v for k, v in targets.items()})
    summary = {name: {t: e["top3_mean"][t]["spearman"] for t in targets} for name, e in results["signals"].items()}
    print(json.dumps({"n": n, "seconds_signals": round(t_signals, 1), "top3_rho": summary}))
    return 0


def _fmt(c: dict) -> str:
    if c.get("spearman") is None:
        return "undefined"
    lo, hi = c["spearman_ci95"]
    star = "" if lo <= 0 <= hi else " *"
    return f"{c['spearman']:+.3f} [{lo:+.3f}, {hi:+.3f}]{star}"


def render(results: dict) -> str:
    """The Markdown table of results.json."""
    lines = ["# Signals pilot (issue 11): Spearman rho [95% bootstrap CI] against per-sample targets", "",
             f"Data: {results['provenance']['data']}. Models: {results['provenance']['models']['cloud']} (cloud), "
             f"{results['provenance']['models']['edge']} (edge). `*` = CI excludes 0.", "",
             "Targets: (a) `edge_loss_before` = bare edge response loss; (b) `loss_drop` = edge_loss_before - "
             "loss after the 40-step random-order generator runs (3 seeds).", "",
             "| signal | top-3 mean vs (a) | top-3 mean vs (b) | top-3 vs (b) given (a): partial rho (p) | "
             "last layer vs (a) | last layer vs (b) | best layer vs (a) | best layer vs (b) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, e in results["signals"].items():
        best = []
        for t in ("edge_loss_before", "loss_drop"):
            rhos = [r if r is not None else 0.0 for r in e["per_layer"][t]]
            j = int(np.argmax(np.abs(rhos)))
            best.append(f"{rhos[j]:+.3f} (layer {j})")
        pc = e["top3_mean_vs_loss_drop_given_edge_loss"]
        lines.append(f"| {name} | {_fmt(e['top3_mean']['edge_loss_before'])} | {_fmt(e['top3_mean']['loss_drop'])} "
                     f"| {pc['partial_spearman']:+.3f} ({pc['p']:.3f}) "
                     f"| {_fmt(e['last_layer']['edge_loss_before'])} | {_fmt(e['last_layer']['loss_drop'])} "
                     f"| {best[0]} | {best[1]} |")
    s = results["sanity"]
    lines += ["", "Best-layer rho is the largest |rho| of 30 layers: a selected maximum, not a finding by itself.", "",
              f"The bare edge loss (a) itself vs the loss drop (b): {_fmt(s['edge_loss_before_vs_loss_drop'])}; the "
              "partial column asks whether a signal says more about (b) than (a) already does.", "",
              f"Sanity: edge bpb at the last layer vs (a): {_fmt(s['edge_bpb_last_vs_edge_loss_before'])} (the same "
              "loss in bits/byte under the meta-token prompt layout). Shared vocabulary: "
              f"{s['shared_vocabulary_size']} token texts, holding on average {s['vocab_shared_mass_cloud_mean']:.2f} "
              f"(cloud) / {s['vocab_shared_mass_edge_mean']:.2f} (edge) of the first-response-token probability.", "",
              f"Order check: {s['h1_order_check_response_length_match']:.3f} of the samples have the response "
              "length stored in h1_samples.npz.", "",
              f"Seconds: {results['provenance']['seconds']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
