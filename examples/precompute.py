"""Precompute the difficulty file (per-sample, per-layer meta-token differences), in one process or under torchrun.

Run:
    python examples/precompute.py --max-samples 64 --out runs/precompute            # one process
    torchrun --nproc_per_node 2 examples/precompute.py --max-samples 64 --out runs/precompute
    bash examples/distributed_precompute.sh                                          # the same, wrapped

Under ``torchrun`` every rank computes its shards of the samples (shard i goes to rank
``i % world_size``) into the shared work folder ``<out>/difficulty.safetensors.work`` and rank 0 merges
them into ``<out>/difficulty.safetensors`` and ``<out>/labels.jsonl``. The merged file does not
depend on the number of processes (same shards, same numbers) as long as every process runs with the
same number of torch threads (``--threads``; torchrun sets ``OMP_NUM_THREADS=1`` by default).
Backend: ``nccl`` when CUDA is available (each rank then uses GPU ``LOCAL_RANK``), ``gloo`` on CPU.

Models: the bundled SmolLM2-135M (edge) and Qwen2.5-0.5B (cloud) by default; ``--cloud`` / ``--edge``
take any Hugging Face model id or local folder (e.g. ``Qwen/Qwen2.5-1.5B-Instruct`` and
``meta-llama/Meta-Llama-3-8B-Instruct`` on GPUs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from torch_curriculum import CurriculumConfig, MetaTokenDifficultyDataset
from torch_curriculum.bundled import load_bundled, load_chitchat, load_model
from torch_curriculum.data import read_dialogues
from torch_curriculum.precompute import exit_after_gloo_run

ROOT = Path(__file__).resolve().parent
log = logging.getLogger("precompute")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="dialogue file (PersonaChat, Synthetic-Persona-Chat CSV, chitchat JSON, JSONL); "
                        "default: the bundled chitchat-dataset, training split")
    p.add_argument("--max-samples", type=int, default=64, help="the first N samples (default 64; 0 = all)")
    p.add_argument("--out", type=Path, default=Path("runs/precompute"), help="output folder")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "precompute.yaml", help="CurriculumConfig YAML")
    p.add_argument("--cloud", default=None, help="cloud model: HF id or folder (default: bundled Qwen2.5-0.5B)")
    p.add_argument("--edge", default=None, help="edge model: HF id or folder (default: bundled SmolLM2-135M)")
    p.add_argument("--shard-size", type=int, default=None,
                   help="samples per shard, the unit of distribution and resume "
                        "(default: ceil(N / 8), at most 256; independent of the number of processes, "
                        "so the output file is too)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="model dtype (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's choice)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of another run in --out")
    return p.parse_args(argv)


def init_distributed() -> tuple[int, int, torch.device]:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1); returns rank, world, device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    device = torch.device("cpu")
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, device


def load_samples(data: Path | None, max_samples: int) -> list:
    samples = load_chitchat(split="train") if data is None else read_dialogues(data)
    if max_samples < 0:
        raise ValueError(f"--max-samples must be >= 0, got {max_samples}")
    return samples[:max_samples] if max_samples else samples


def main(argv=None) -> int:
    args = parse_args(argv)
    rank, world, device = init_distributed()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        t0 = time.time()
        cfg = CurriculumConfig.from_yaml(args.config)
        samples = load_samples(args.data, args.max_samples)
        n = len(samples)
        shard_size = args.shard_size or max(1, min(256, -(-n // 8)))
        dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
        edge = load_model(args.edge, dtype=dtype, device=device) if args.edge else load_bundled("edge", dtype=dtype, device=device)
        cloud = load_model(args.cloud, dtype=dtype, device=device) if args.cloud else load_bundled("cloud", dtype=dtype, device=device)
        out = args.out
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        if world > 1:
            dist.barrier()
        ds = MetaTokenDifficultyDataset.precompute(samples, cloud, edge, out / "difficulty.safetensors", cfg,
                                                   labels_path=out / "labels.jsonl", shard_size=shard_size,
                                                   overwrite=args.overwrite, progress=rank == 0)
        if rank == 0:
            stages = torch.bincount(ds.stage.long(), minlength=cfg.curriculum.num_stages + 1)[1:].tolist()
            report = {"samples": len(ds), "layers": ds.num_layers, "world_size": world, "shard_size": shard_size,
                      "samples_per_stage": stages, "difficulty_file": str(out / "difficulty.safetensors"),
                      "labels": str(out / "labels.jsonl"), "seconds": round(time.time() - t0, 1)}
            print(json.dumps(report))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if world > 1:  # gloo can abort at interpreter exit after a model ran: see exit_after_gloo_run
        exit_after_gloo_run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
