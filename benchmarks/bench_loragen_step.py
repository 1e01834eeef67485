"""Seconds per LoRA-Gen training step on the bundled edge model (SmolLM2-135M), for sizing demos.

Measures, on this machine, with the default ``LoRAGenConfig`` (8 experts, top-2, rank 16, gate/up/down):
one training step (generator forward with the per-sample LoRA hooks, response-only LM head,
backward, AdamW step, per-layer update/grad norms) for batch ``--batch`` x ``--seq`` tokens, one
inference-mode validation batch, and the plain edge model's forward on the same batch (no LoRA) as
the reference the ratios are taken against. Cloud states are random ``[B, --cloud-len, 896]``
tensors: the cloud model is never run during training (its states are cached), so its cost is not
part of a step.

bf16: the same training step under ``torch.autocast(bfloat16)`` (what ``training.autocast`` of the
experiment presets turns on) is timed in the same run, alternating fp32 and bf16 steps so that load
changes on a shared machine hit both alike; ``bf16_over_fp32_step_time`` is the ratio of the
medians (target <= 0.6 on CPUs with bf16 matrix units; on AVX2-only CPUs bf16 is emulated and slower,
which is why ``training.autocast: auto`` leaves it off there). ``cpu_bf16_matmul`` says which.

``--device cuda`` builds the design's edge model instead: the Qwen2.5-1.5B config with random bf16
weights (throughput does not depend on the weights), the generator fed by cloud states of the
design's cloud width (LLaMA-3-8B: 4096), and reports the step time and the model FLOP utilisation
(``mfu``: 4 x edge parameters x tokens per step -- forward plus the input-gradient backward of the
frozen edge model -- plus 6 x generator parameters x tokens, over ``--peak-tflops``). Without CUDA
it exits with code 2 and says so.

Run: ``.venv/bin/python benchmarks/bench_loragen_step.py [--batch 8 --seq 128 --steps 5]``.
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
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
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--no-bf16", action="store_true", help="skip the alternating fp32/bf16 comparison")
    ap.add_argument("--random-weights", action="store_true",
                    help="build SmolLM2-135M from its config with random weights instead of loading the bundled "
                         "GGUF (same shapes, same step cost; no model download or conversion)")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="dense bf16 peak of the GPU for the MFU (H100/H200 SXM: 989)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        sys.exit(cuda_main(args))

    from torch_curriculum.bundled import load_bundled
    from torch_curriculum.loragen import LoRAGenConfig, LoRAGenerator

    t = time.perf_counter()
    if args.random_weights:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        edge = LlamaForCausalLM(LlamaConfig(  # SmolLM2-135M's shapes
            hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True)).eval()
        for p in edge.parameters():
            p.requires_grad_(False)
    else:
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

    def train_step(autocast_dtype: torch.dtype | None = None) -> None:
        # the runner's step: only the forward runs under autocast, backward and optimizer outside it
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = gen(ids, mask, cs, cm, labels)
        out.loss.backward()
        gen.layer_grad_norms()
        torch.nn.utils.clip_grad_norm_(gen.parameters(), 1.0)
        opt.step()
        gen.layer_update_norms()

    from torch_curriculum.experiments.runner import cpu_has_bf16_matmul

    def bf16_step() -> None:
        train_step(torch.bfloat16)

    bf16: dict[str, float] = {}
    if not args.no_bf16:
        gen.train()
        train_step()
        bf16_step()  # warm-up of both paths
        t32, t16 = [], []
        for _ in range(args.steps):  # alternating: load changes hit both alike
            t0 = time.perf_counter()
            train_step()
            t32.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            bf16_step()
            t16.append(time.perf_counter() - t0)
        bf16 = {"fp32_step_median_s": round(statistics.median(t32), 3),
                "bf16_step_median_s": round(statistics.median(t16), 3),
                "bf16_over_fp32_step_time": round(statistics.median(t16) / statistics.median(t32), 3),
                "bf16_target": 0.6, "cpu_bf16_matmul": cpu_has_bf16_matmul(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability()}

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
        "benchmark": "loragen_train_step",
        "edge": ("SmolLM2-135M shapes, random weights (float32)" if args.random_weights
                 else "SmolLM2-135M-Instruct (bundled, float32)"),
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
        "generator_params": counts, "edge_load_s": round(load_s, 1), **bf16,
    }
    print(json.dumps(result))


def cuda_main(args: argparse.Namespace) -> int:
    """The design's edge model on one GPU: step time and model FLOP utilisation."""
    if not torch.cuda.is_available():
        print("bench_loragen_step.py --device cuda: CUDA is not available on this machine "
              "(torch.cuda.is_available() is False); run it on a GPU host", file=sys.stderr)
        return 2
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from torch_curriculum.loragen import LoRAGenConfig, LoRAGenerator

    dev = torch.device("cuda")
    conf = Qwen2Config(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                       tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device(dev):
        edge = Qwen2ForCausalLM(conf).to(torch.bfloat16).eval()
    for p in edge.parameters():
        p.requires_grad_(False)
    cloud_width = 4096  # LLaMA-3-8B
    gen = LoRAGenerator(edge, cloud_width, LoRAGenConfig()).to(dev)
    b, s = args.batch, args.seq
    ids = torch.randint(0, conf.vocab_size, (b, s), device=dev)
    mask = torch.ones(b, s, dtype=torch.long, device=dev)
    labels = torch.full((b, s), -100, device=dev)
    labels[:, s - args.response:] = ids[:, s - args.response:]
    cs = torch.randn(b, args.cloud_len, cloud_width, device=dev)
    cm = torch.ones(b, args.cloud_len, dtype=torch.bool, device=dev)
    opt = torch.optim.AdamW(gen.parameters(), lr=1e-3)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            opt.zero_grad(set_to_none=True)
            out = gen(ids, mask, cs, cm, labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(gen.parameters(), 1.0)
        opt.step()

    step()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    st = statistics.median(times)
    n_edge = sum(p.numel() for p in edge.parameters())
    n_gen = gen.num_parameters()["total"]
    flops = (4 * n_edge + 6 * n_gen) * b * s
    print(json.dumps({"benchmark": "loragen_train_step_cuda", "edge": "Qwen2.5-1.5B config, random bf16 weights",
                      "cloud_width": cloud_width, "device": torch.cuda.get_device_name(0), "batch": b, "seq": s,
                      "step_s": round(st, 4), "tokens_per_s": round(b * s / st, 1),
                      "model_tflops_per_step": round(flops / 1e12, 3),
                      "mfu": round(flops / st / (args.peak_tflops * 1e12), 4), "peak_tflops": args.peak_tflops,
                      "edge_params": n_edge, "generator_params": n_gen,
                      "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}))
    return 0


if __name__ == "__main__":
    main()
