"""First load (GGUF de-quantisation + caching) vs cached load of a bundled model, and reading the data.

Measures, in one run and in a fresh temporary cache: ``load_bundled(which)`` the first time (joins the
Qwen parts for ``cloud``, de-quantises the GGUF with transformers, writes the safetensors folder) and
the second time (reads the cached folder), plus reading the chitchat data set and the
Synthetic-Persona-Chat CSV (when present) and formatting their prompts.

Run: ``.venv/bin/python benchmarks/bench_bundled_cache.py [--which edge|cloud]``.
The last line of output is one JSON object: ``first_load_s``, ``cached_load_s``, ``speedup``, ...
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from torch_curriculum.bundled import chitchat_path, load_bundled
from torch_curriculum.data import format_prompts, read_dialogues

SPC = Path(__file__).resolve().parents[2] / "shared" / "data" / "synthetic-persona-chat" / "Synthetic-Persona-Chat_valid.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", choices=("edge", "cloud"), default="edge")
    args = parser.parse_args()
    out: dict = {"which": args.which}
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        model, _ = load_bundled(args.which, cache_dir=cache)
        out["first_load_s"] = round(time.perf_counter() - t0, 3)
        del model
        t0 = time.perf_counter()
        model, tok = load_bundled(args.which, cache_dir=cache)
        out["cached_load_s"] = round(time.perf_counter() - t0, 3)
        out["speedup"] = round(out["first_load_s"] / out["cached_load_s"], 1)
        out["num_parameters"] = sum(p.numel() for p in model.parameters())
        t0 = time.perf_counter()
        load_bundled(args.which, cache_dir=cache, dtype=torch.bfloat16)
        out["cached_load_bf16_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    chat = read_dialogues(chitchat_path())
    out["chitchat_samples"] = len(chat)
    out["chitchat_read_s"] = round(time.perf_counter() - t0, 3)
    if SPC.is_file():
        t0 = time.perf_counter()
        spc = read_dialogues(SPC)
        out["spc_samples"] = len(spc)
        out["spc_read_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        format_prompts(spc, tokenizer=tok, max_length=512)
        out["spc_format_prompts_max_length_s"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
