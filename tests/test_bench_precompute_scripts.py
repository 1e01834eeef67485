"""The precompute benchmarks' small paths run, so the scripts are known to work where they cannot be run
at full size (the GPU benchmark needs CUDA; the scale benchmark takes minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True, timeout=timeout)


def test_scale_benchmark_tiny_reports_bounded_memory_and_small_work_dir():
    proc = _run(str(ROOT / "benchmarks" / "bench_precompute_scale.py"), "--tiny")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(res) >= {"rss_ratio_16k_over_4k", "workdir_bytes_per_sample", "peak_rss_mb"}
    # the shards hold three [n, L] float64 distances, the [n, L, K=16] float32 deltas and ids, not the
    # [L, d] vectors of both models (those would be (6*64 + 4*32) * 4 = 2048 bytes a sample)
    assert res["shard_bytes_per_sample"] < 3 * 4 * 8 + 4 * 16 * 4 + 128  # + id, offset, share of the header
    assert res["rss_ratio_16k_over_4k"] < 1.25 and res["pass"] is True


def test_gpu_benchmark_tiny_runs_on_cpu_and_full_size_needs_cuda():
    script = str(ROOT / "benchmarks" / "bench_precompute_gpu.py")
    proc = _run(script, "--tiny", "--n", "24")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["n_samples"] == 24 and res["samples_per_s"] > 0 and res["tokens_per_sample_mean"] > 100
    if not torch.cuda.is_available():
        proc = _run(script)
        assert proc.returncode == 2 and "no CUDA device" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_resolve_dtype_auto_on_cpu_follows_cpu_flags():
    from torch_curriculum.extraction import cpu_has_bf16, resolve_dtype

    assert resolve_dtype("auto", "cpu", cpuinfo="flags : sse2 avx2") == torch.float32
    assert resolve_dtype("auto", "cpu", cpuinfo="flags : avx512f amx_bf16 amx_tile") == (
        torch.bfloat16 if torch.backends.mkldnn.is_available() else torch.float32)
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("fp32", "cuda") == torch.float32 and resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert cpu_has_bf16("flags : avx512_bf16") == torch.backends.mkldnn.is_available()
    with pytest.raises(ValueError, match="dtype must be one of auto, fp32, bf16"):
        resolve_dtype("fp16")
