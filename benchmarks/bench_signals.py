"""Cost of each cross-model signal (issue 11) relative to the bare forward passes of both models.

On the bundled pair (cloud Qwen2.5-Coder-0.5B-Instruct, edge SmolLM2-135M-Instruct, float32) and the
first ``--n`` chitchat training samples of the cpu preset, prompt = ``format_prompts(max_context_turns=2)``
+ the response (teacher-forced), this times, best of ``--repeats`` rounds:

* ``bare``: the decoder forward passes of both models (no hooks, no LM head) over exactly the padded
  batches :class:`torch_curriculum.crossmodel.CrossModelSignals` builds;
* each signal alone (``response``, ``edge_bpb``, ``logit_lens_gap``, ``vocab_kl``, ``uld``,
  ``knn_agreement`` against a reference of the same samples) and ``all`` of them in one call.

Reported per signal: seconds per sample and the ratio to ``bare`` (1.0 = free beyond the forward
passes). The shared vocabulary is built once before timing (its one-off cost is reported apart).
The last line of output is one JSON object.

Usage:
    flock /tmp/heavy.lock .venv/bin/python benchmarks/bench_signals.py [--n 16] [--batch-size 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from torch_curriculum.crossmodel import SIGNALS, CrossModelSignals  # noqa: E402
from torch_curriculum.data import format_prompts  # noqa: E402


def _bare(sig: CrossModelSignals, pairs: list) -> float:
    toks = {s: sig.tokenize(s, pairs) for s in ("cloud", "edge")}
    n = len(pairs)
    order = sorted(range(n), key=lambda i: (-len(toks["edge"][i].ids), i))
    t0 = time.perf_counter()
    for start in range(0, n, sig.batch_size):
        rows = order[start:start + sig.batch_size]
        for s in ("cloud", "edge"):
            sig._forward(s, toks[s], rows, lens_layers=set(), last_layers=set(), pool_layers=set())
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from torch_curriculum.bundled import load_bundled
    from torch_curriculum.experiments.runner import load_splits, resolve_preset

    cfg, _ = resolve_preset("cpu")
    train = load_splits(cfg["data"])[0][:args.n]
    prompts = format_prompts(train, max_context_turns=cfg["curriculum"]["meta_token"]["max_context_turns"])
    pairs = [(p, s.response) for p, s in zip(prompts, train)]
    ids = [s.sample_id for s in train]
    cloud, ctok = load_bundled("cloud")
    edge, etok = load_bundled("edge")
    sig = CrossModelSignals(cloud, ctok, edge, etok, max_length=512, truncation="left", batch_size=args.batch_size,
                            knn_k=min(10, args.n - 2))
    t0 = time.perf_counter()
    n_shared = len(sig.shared_vocabulary.texts)
    t_vocab = time.perf_counter() - t0
    ref = sig.reference(pairs, ids)            # also the warm-up
    best: dict[str, float] = {}
    parts: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        t = _bare(sig, pairs)
        best["bare"] = min(best.get("bare", float("inf")), t)
        for name in (*SIGNALS, "all"):
            names = list(SIGNALS) if name == "all" else [name]
            t0 = time.perf_counter()
            sig.compute(pairs, names, reference=ref, sample_ids=ids)
            t = time.perf_counter() - t0
            if t < best.get(name, float("inf")):
                best[name] = t
                parts[name] = {k: round(v, 3) for k, v in sig.last_timings.items()}
    n = len(pairs)
    rows = {name: {"s_per_sample": round(t / n, 4), "relative_to_bare": round(t / best["bare"], 2),
                   "parts_s": parts.get(name)} for name, t in best.items()}
    resp_tokens = sum(t.n_prompt and (len(t.ids) - t.n_prompt) for t in sig.tokenize("edge", pairs))
    all_tokens = sum(len(t.ids) for t in sig.tokenize("edge", pairs))
    lines = ["| signal | s / sample | x bare forward (both models) |", "|---|---|---|"]
    lines += [f"| {k} | {v['s_per_sample']:.3f} | {v['relative_to_bare']:.2f} |" for k, v in rows.items()]
    print("\n".join(lines))
    print(json.dumps({"n": n, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                      "edge_tokens_per_sample": round(all_tokens / n, 1),
                      "edge_response_tokens_per_sample": round(resp_tokens / n, 1),
                      "shared_vocabulary": {"texts": n_shared, "build_s": round(t_vocab, 2)}, "signals": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
