"""Smoke tests of the examples on the real bundled models (SmolLM2-135M edge, Qwen2.5-0.5B cloud), tiny sizes.

The quickstart runs once per module; the Trainer example trains on the quickstart's difficulty file
(the documented hand-off), and the torchrun precompute is compared byte for byte with one process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torch_curriculum import MetaTokenDifficultyDataset, read_labels

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _example(name: str):
    """Import an example script as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_main(name: str, argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = _example(name).main(argv)
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def bundled_models():
    from torch_curriculum.bundled import chitchat_path, qwen_gguf, smollm2_gguf

    try:
        smollm2_gguf(), qwen_gguf(), chitchat_path()
    except ImportError as e:  # the model/data packages are an optional install
        pytest.skip(f"bundled models or data not installed: {e}")


@pytest.fixture(scope="module")
def quickstart(bundled_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    rc, stdout = _run_main("quickstart", [
        "--max-samples", "16", "--eval-samples", "8", "--steps", "3", "--eval-every", "3",
        "--strategies", "random,layer_wise_progressive", "--max-length", "96", "--out", str(out)])
    assert rc == 0
    return out, stdout


def test_quickstart_writes_valid_artefacts_and_the_comparison_table(quickstart):
    out, stdout = quickstart
    diff = MetaTokenDifficultyDataset(out / "difficulty.safetensors")
    assert len(diff) == 16 and diff.num_layers == 30  # SmolLM2-135M has 30 decoder layers
    assert bool(torch.isfinite(diff.raw_layer_diffs).all())
    assert set(diff.stage.tolist()) <= {1, 2, 3} and len(set(diff.stage.tolist())) > 1

    records, header = read_labels(out / "labels.jsonl")  # recomputes and checks every score
    assert [r["sample_id"] for r in records] == diff.sample_ids
    assert len(records[0]["meta_token_diff"]) == 30 and header

    for strategy in ("random", "layer_wise_progressive"):
        lines = [json.loads(x) for x in (out / f"run_{strategy}.jsonl").read_text().splitlines() if x.strip()]
        kinds = {rec["type"] for rec in lines}
        assert {"train", "val", "test"} <= kinds, (strategy, kinds)
        train = [rec for rec in lines if rec["type"] == "train"]
        assert len(train) == 3 and all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in train)

    summary = json.loads((out / "summary.json").read_text())
    rows = {r["strategy"]: r for r in summary["rows"]}
    assert set(rows) == {"random", "layer_wise_progressive"}
    # the pooled target: mean of every run's validation curve at half the budget, from the run logs
    curves = {}
    for strategy in rows:
        recs = [json.loads(x) for x in (out / f"run_{strategy}.jsonl").read_text().splitlines() if x.strip()]
        curves[strategy] = [(r["step"], r["loss"]) for r in recs if r["type"] == "val"]
    steps = [s for s, _ in curves["random"]]
    mean = [sum(c[i][1] for c in curves.values()) / len(curves) for i in range(len(steps))]
    half = steps[-1] / 2
    j = next(i for i, s in enumerate(steps) if s >= half)
    w = (half - steps[j - 1]) / (steps[j] - steps[j - 1])
    assert summary["target_val_loss"] == pytest.approx(mean[j - 1] + w * (mean[j] - mean[j - 1]))
    for s, c in curves.items():
        losses = [v for _, v in c]
        reached = rows[s]["steps_to_target"]
        if min(losses) > summary["target_val_loss"]:
            assert reached is None
        else:
            assert 0 <= reached <= steps[-1]
    for r in rows.values():
        assert r["final_val_loss"] > 0 and r["test_loss"] > 0
    assert "| strategy | final val loss |" in stdout and "What was compared" in stdout
    assert all(f"| {s} |" in stdout for s in rows)
    assert str(out / "difficulty.safetensors") in stdout


def test_hf_trainer_example_on_the_quickstart_difficulty_file(quickstart, tmp_path):
    qs_out, _ = quickstart
    # a curriculum "epoch" longer than the run: all 3 steps are in stage 1, so layers [0, 10) train
    # and the LoRA of layers 10..29 must stay bit-identical
    rc, stdout = _run_main("hf_trainer_curriculum", [
        "--difficulty", str(qs_out / "difficulty.safetensors"), "--max-steps", "3", "--batch-size", "4",
        "--curriculum-fraction", "5", "--max-length", "96", "--out", str(tmp_path)])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["samples"] == 16
    assert summary["layers_trained"] == list(range(10))
    assert summary["layers_frozen_throughout"] == list(range(10, 30))
    moved = {int(k): v for k, v in summary["max_abs_change_per_layer"].items()}
    assert all(moved[i] == 0.0 for i in range(10, 30)) and summary["frozen_layers_that_moved"] == {}
    assert all(moved[i] > 0.0 for i in range(10))  # the trained layers did move
    # the Trainer's log history carries the curriculum state of every logged step
    log = summary["curriculum_log"]
    assert [rec["step"] for rec in log] == [1, 2, 3]
    for rec in log:
        assert rec["curriculum/stage"] == 1 and rec["curriculum/num_trainable_layers"] == 10
        assert 0 < rec["curriculum/pool_size"] < 16 and rec["curriculum/num_updates"] == rec["step"]
    assert "curriculum/smoothed_loss" in log[-1] and "| step | loss |" in stdout


@pytest.mark.distributed
def test_torchrun_precompute_equals_one_process(bundled_models, tmp_path):
    env = {**os.environ, "NPROC": "2", "THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    dist = subprocess.run(["bash", str(EXAMPLES / "distributed_precompute.sh"), "--max-samples", "8",
                           "--out", str(tmp_path / "dist")], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert dist.returncode == 0, dist.stderr[-3000:]
    report = json.loads(dist.stdout.strip().splitlines()[-1])  # rank 0 reports, once
    assert report["world_size"] == 2 and report["samples"] == 8 and report["layers"] == 30
    assert dist.stdout.count('"world_size"') == 1

    one = subprocess.run([sys.executable, str(EXAMPLES / "precompute.py"), "--threads", "1", "--max-samples",
                          "8", "--out", str(tmp_path / "one")], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    assert json.loads(one.stdout.strip().splitlines()[-1])["world_size"] == 1

    for name in ("difficulty.safetensors", "labels.jsonl"):
        assert (tmp_path / "dist" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    ds = MetaTokenDifficultyDataset(tmp_path / "one" / "difficulty.safetensors")
    from torch_curriculum.bundled import load_chitchat

    assert ds.sample_ids == [s.sample_id for s in load_chitchat(split="train")[:8]]
    assert not (tmp_path / "dist" / "difficulty.safetensors.work").exists()  # shards merged and removed


def test_hf_trainer_example_scores_its_own_samples_when_no_file_is_given(bundled_models, tmp_path):
    from torch_curriculum.bundled import load_chitchat

    rc, _ = _run_main("hf_trainer_curriculum", [
        "--max-samples", "8", "--strategy", "random", "--max-steps", "2", "--batch-size", "4",
        "--max-length", "96", "--out", str(tmp_path)])
    assert rc == 0
    diff = MetaTokenDifficultyDataset(tmp_path / "difficulty.safetensors")
    assert diff.sample_ids == [s.sample_id for s in load_chitchat(split="train")[:8]]
    read_labels(tmp_path / "labels.jsonl")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["strategy"] == "random" and summary["layers_trained"] == list(range(30))
    assert [rec["curriculum/pool_size"] for rec in summary["curriculum_log"]] == [8, 8]


def test_hf_trainer_example_rejects_a_file_of_other_samples(bundled_models, tmp_path):
    from torch_curriculum.bundled import load_chitchat
    from torch_curriculum.dataset import DifficultyFileError

    main = _example("hf_trainer_curriculum").main
    ids = [s.sample_id for s in load_chitchat(split="train")[:6]]
    raw = torch.rand(6, 30, generator=torch.Generator().manual_seed(0))
    unknown = MetaTokenDifficultyDataset.from_distances(raw, [f"other_{i}" for i in range(6)], tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match=r"a\.safetensors: 6 of its 6 sample ids are not in"):
        main(["--difficulty", str(unknown.path), "--out", str(tmp_path / "o1")])
    # right ids, but the file was computed from other texts (its fingerprint is not these samples')
    other = MetaTokenDifficultyDataset.from_distances(raw, ids, tmp_path / "b.safetensors")
    with pytest.raises(DifficultyFileError, match="fingerprint"):
        main(["--difficulty", str(other.path), "--out", str(tmp_path / "o2")])
