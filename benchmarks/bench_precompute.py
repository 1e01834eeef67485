"""Throughput of ``MetaTokenDifficultyDataset.precompute`` on the bundled models.

Measures, in one run on this machine, over the same ``--n`` real dialogues (Synthetic-Persona-Chat
CSV when present, else chitchat), edge = SmolLM2-135M, cloud = Qwen2.5-Coder-0.5B:

* ``precompute``: the whole call (prompt formatting, tokenization, length-bucketed batches, both
  models, pooling, shard files, alignment, distances, scores and the final file);
* ``bare``: only the decoder forward passes of both models (no LM head, no pooling) on exactly the
  batches the extractor builds, prepared beforehand, in the same compute dtype (``--dtype``);
  target ``precompute / bare >= 0.9`` (samples/s ratio, i.e. <= 10% overhead);
* ``naive``: one sample at a time, ``model(**inputs, output_hidden_states=True)`` with the LM head,
  then a masked mean per layer, always fp32 (what a user writes first); target precompute >= 3x faster.
  ``naive_over_bare_forward`` is the ceiling of that speed-up for anything that still runs both
  decoders' forward passes in the same dtype: in fp32 (CPUs without bf16 matrix units) it is the LM
  head plus batch-1 overhead, about 1.5x on the bundled models, so 3x needs bf16 (or a GPU).

``--dtype auto`` (default) is bf16 on CPUs with bf16 matrix units (avx512_bf16 / amx_bf16) and on
CUDA, fp32 elsewhere; the chosen dtype is in the JSON (``dtype``).

Best of ``--repeats`` rounds; each round times bare, precompute and (in the first
``--naive-repeats`` rounds) naive one after the other, so load changes on a shared machine hit all.
On a busy machine ``--threads 1`` avoids OpenMP spin-wait stalls that blur the comparison.
The last line of output is one JSON object.

Usage:
    .venv/bin/python benchmarks/bench_precompute.py [--n 32] [--batch-size 8] [--repeats 2] [--dtype auto]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from torch_curriculum.config import CurriculumConfig
from torch_curriculum.data import format_prompts, read_dialogues
from torch_curriculum.extraction import MetaTokenExtractor, resolve_dtype
from torch_curriculum.precompute import precompute

SPC_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "synthetic-persona-chat" / \
    "Synthetic-Persona-Chat_valid.csv"


def load_samples(n: int):
    if SPC_CSV.is_file():
        return read_dialogues(SPC_CSV)[::3][:n]
    from torch_curriculum.bundled import load_chitchat

    return load_chitchat(max_samples=5 * n)[::5][:n]


def bare_forward(batches) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for ex, batch_list in batches:
            for b in batch_list:
                with ex._autocast():  # the extractor's compute dtype
                    ex.decoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"].long(),
                               position_ids=b["position_ids"], use_cache=False)
    return time.perf_counter() - t0


def naive(models, prompts) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for (model, tok), ps in zip(models, prompts):
            for p in ps:
                enc = tok(p.text, return_tensors="pt")
                out = model(**enc, output_hidden_states=True)
                n_sys = len(tok(p.system_text)["input_ids"])
                _ = torch.stack([h[0, max(1, n_sys):].mean(0) for h in out.hidden_states[1:]])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="dialogue samples")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-context-turns", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--naive-repeats", type=int, default=1, help="rounds that also time the naive loop")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                    help="compute dtype of precompute and the bare forward (the naive loop stays fp32)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)

    from torch_curriculum.bundled import load_bundled

    cloud, edge = load_bundled("cloud"), load_bundled("edge")
    samples = load_samples(args.n)
    cfg = CurriculumConfig.from_dict({"meta_token": {"batch_size": args.batch_size, "max_length": args.max_length,
                                                     "max_context_turns": args.max_context_turns,
                                                     "num_anchors": min(64, len(samples))}})
    mt = cfg.meta_token
    dtype = resolve_dtype(args.dtype, "cpu")
    prompts, batches = [], []
    for model, tok in (cloud, edge):
        ex = MetaTokenExtractor(model, tok, "mean", batch_size=mt.batch_size, max_length=mt.max_length, dtype=dtype)
        ps = format_prompts(samples, system_prompt=mt.system_prompt, max_context_turns=mt.max_context_turns,
                            tokenizer=tok, max_length=mt.max_length)
        toks = ex.tokenize(ps)
        prompts.append(ps)
        batches.append((ex, [ex._collate(toks, idx) for idx in ex.buckets(toks)]))
    n_tokens = [sum(int(b["attention_mask"].sum()) for b in bl) for _, bl in batches]

    # warm-up: first calls pay lazy imports and allocator growth
    bare_forward([(ex, bl[:1]) for ex, bl in batches])

    t_bare, t_pre, t_naive = float("inf"), float("inf"), float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            t_bare = min(t_bare, bare_forward(batches))
            out = Path(tmp) / f"bench{r}.safetensors"
            t0 = time.perf_counter()
            precompute(samples, cloud, edge, out, cfg, progress=False, dtype=dtype)
            t_pre = min(t_pre, time.perf_counter() - t0)
            if r < args.naive_repeats:
                t_naive = min(t_naive, naive((cloud, edge), prompts))

    n = len(samples)
    result = {
        "n_samples": n,
        "batch_size": args.batch_size,
        "tokens_cloud": n_tokens[0],
        "tokens_edge": n_tokens[1],
        "torch_threads": torch.get_num_threads(),
        "dtype": str(dtype).replace("torch.", ""),
        "seconds_precompute": round(t_pre, 3),
        "seconds_bare": round(t_bare, 3),
        "seconds_naive": round(t_naive, 3),
        "samples_per_s_precompute": round(n / t_pre, 3),
        "samples_per_s_bare": round(n / t_bare, 3),
        "samples_per_s_naive": round(n / t_naive, 3),
        "throughput_ratio_vs_bare_forward": round(t_bare / t_pre, 3),
        "speedup_vs_naive": round(t_naive / t_pre, 3),
        # the ceiling of speedup_vs_naive for any precompute that runs the same decoder forward in
        # the same dtype: the naive loop's extra cost is only its LM head and batch-1 overhead
        "naive_over_bare_forward": round(t_naive / t_bare, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
