"""Seconds per LoRA-Gen training step on the bundled edge model (SmolLM2-135M), for sizing demos.

Measures, on this machine, with the default ``LoRAGenConfig`` (8 experts, top-2, rank 16, gate/up/down):
one training step (generator forward with the per-sample LoRA hooks, response-only LM head,
backward, AdamW step, per-layer update/grad norms) for batch ``--batch`` x ``--seq`` tokens, one
inference-mode validation batch, and the plain edge model's forward on the same batch (no LoRA) as
the reference the ratios are taken against. Cloud states are random ``[B, --cloud-len, 896]``
tensors: the cloud model is never run during training (its states are cached), so its cost is not
part of a step.

Run: ``.venv/bin/python benchmarks/bench_loragen_step.py [--batch 8 --seq 128 --steps 5]``.
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--response", type=int, default=32, help="labelled tokens per sample")
    ap.add_argument("--cloud-len", type=int, default=48)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from torch_curriculum.bundled import load_bundled
    from torch_curriculum.loragen import LoRAGenConfig, LoRAGenerator

    t = time.perf_counter()
    edge, _tok = load_bundled("edge")
    load_s = time.perf_counter() - t
    torch.manual_seed(0)
    gen = LoRAGenerator(edge, 896, LoRAGenConfig())
    counts = gen.num_parameters()
    vocab = edge.config.vocab_size
    b, s = args.batch, args.seq
    ids = torch.randint(0, vocab, (b, s))
    mask = torch.ones(b, s, dtype=torch.long)
    labels = torch.full((b, s), -100)
    labels[:, s - args.response:] = ids[:, s - args.response:]
    cs = torch.randn(b, args.cloud_len, 896)
    cm = torch.ones(b, args.cloud_len, dtype=torch.bool)
    opt = torch.optim.AdamW(gen.parameters(), lr=1e-3)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        out = gen(ids, mask, cs, cm, labels)
        out.loss.backward()
        gen.layer_grad_norms()
        torch.nn.utils.clip_grad_norm_(gen.parameters(), 1.0)
        opt.step()
        gen.layer_update_norms()

    cpu: dict[str, float] = {}

    def timed(fn, n: int, name: str) -> float:
        fn()  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            fn()
        cpu[name] = (time.process_time() - c0) / n
        return (time.perf_counter() - t0) / n

    gen.train()
    step_s = timed(train_step, args.steps, "train")
    gen.eval()
    with torch.inference_mode():
        eval_s = timed(lambda: gen(ids, mask, cs, cm, labels), args.steps, "eval")
        plain_s = timed(lambda: edge(ids, attention_mask=mask), args.steps, "plain")
    t0 = time.perf_counter()
    gen.layer_update_norms()
    norms_s = time.perf_counter() - t0
    result = {
        "benchmark": "loragen_train_step", "edge": "SmolLM2-135M-Instruct (bundled, float32)",
        "batch": b, "seq": s, "response_tokens": args.response, "threads": torch.get_num_threads(),
        "train_step_s": round(step_s, 3), "eval_batch_s": round(eval_s, 3),
        "plain_edge_forward_s": round(plain_s, 3), "update_norms_s": round(norms_s, 4),
        "train_step_over_plain_forward": round(step_s / plain_s, 2),
        "eval_over_plain_forward": round(eval_s / plain_s, 2),
        "steps_in_15_min": int(900 // step_s),
        # CPU seconds of this process per call: on a machine shared with other jobs, wall time
        # inflates while CPU time does not; cpu / threads estimates the wall time on idle cores.
        "train_step_cpu_s": round(cpu["train"], 3), "eval_batch_cpu_s": round(cpu["eval"], 3),
        "plain_edge_forward_cpu_s": round(cpu["plain"], 3),
        "train_step_idle_estimate_s": round(cpu["train"] / torch.get_num_threads(), 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "generator_params": counts, "edge_load_s": round(load_s, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
