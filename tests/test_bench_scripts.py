"""Every benchmark script's small path runs and ends with its one JSON line.

Two of them had broken silently (a module they imported was restructured; one drained a sampler
past its epoch), because nothing ran them between measurement sessions. The bundled-model scripts
are behind the ``integration`` marker (CI still runs them). Measured numbers are the scripts' job,
not these tests': they check that the scripts work and report the fields the README quotes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _last_json(script: str, *args: str, timeout: int = 900) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bench_samplers_small_n_outlasts_an_epoch():
    # 40 updates x batch 32 draw more than the 500 samples of an epoch
    res = _last_json("bench_samplers.py", "--n", "500", "--layers", "4", "--repeats", "1", "--skip-file",
                     "--updates", "40", "--batch", "32")
    assert res["n"] == 500 and res["worst_ratio_vs_random_sampler"] > 0 and res["update_us"] > 0
    assert set(res["update"]) == {"dynamic", "hybrid"}


def test_bench_hf_loader_small():
    res = _last_json("bench_hf_loader.py", "--n", "64", "--layers", "4", "--batch", "8", "--epochs", "1",
                     "--repeats", "1")
    assert res["identical_batches"] is True and res["ok"] is True and res["batches"] > 0


def test_bench_mmap_small():
    res = _last_json("bench_mmap.py", "--n", "1000", "--layers", "4")
    assert res["shape"] == [1000, 4] and res["open_ms"] > 0


def test_bench_loragen_step_random_weights_small():
    res = _last_json("bench_loragen_step.py", "--random-weights", "--batch", "1", "--seq", "16", "--response",
                     "4", "--cloud-len", "8", "--steps", "2", "--no-bf16")
    assert res["benchmark"] == "loragen_train_step" and res["train_step_s"] > 0 and res["batch"] == 1


@pytest.mark.integration
def test_bench_signals_bundled_small():
    pytest.importorskip("gguf")
    res = _last_json("bench_signals.py", "--n", "4", "--batch-size", "4", "--repeats", "1")
    assert res["n"] == 4 and res["signals"]["bare"]["relative_to_bare"] == 1.0
    assert {"logit_lens_gap", "uld", "all"} <= set(res["signals"])


@pytest.mark.integration
def test_signals_pilot_bundled_small(tmp_path):
    pytest.importorskip("gguf")
    res = _last_json("signals_pilot.py", "--out", str(tmp_path), "--limit", "8", "--batch-size", "4")
    assert res["n"] == 8 and "logit_lens_gap" in res["top3_rho"]
    assert (tmp_path / "results.json").is_file() and (tmp_path / "report.md").is_file()
