"""benchmarks/convergence.py end to end on tiny random llama/qwen2 models, its preset loader, and the
cheap H1 signals of torch_curriculum.signals against naive per-sample references."""

from __future__ import annotations

import copy
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _tiny_lm import WORDS, make_model, make_tokenizer

from torch_curriculum import signals

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _results  # noqa: E402
import convergence  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(" ".join(rng.choice(WORDS) for _ in range(rng.randint(0 if i == 0 else 1, 20))),
             " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))) for i in range(n)]


def _naive_loss(model, tok, prompt: str, response: str, with_prompt: bool = True) -> float:
    """One sample at a time, full logits, no padding: the reference for response_losses."""
    p = tok(prompt if with_prompt else "", add_special_tokens=True)["input_ids"]
    r = tok(" " + response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    start = max(len(p), 1)  # the first scored token needs a predecessor
    pos = torch.arange(start, ids.shape[1])
    return float(F.cross_entropy(logits[pos - 1], ids[0, pos]))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_response_losses_and_ifd_match_a_naive_per_sample_reference(arch):
    model, tok = make_model(arch, hidden=32, layers=3, seed=3), make_tokenizer()
    pairs = _pairs(13)
    got = signals.response_losses(model, tok, pairs, batch_size=4)
    alone = signals.response_losses(model, tok, pairs, with_prompt=False, batch_size=5)
    want = np.array([_naive_loss(model, tok, p, r) for p, r in pairs])
    want_alone = np.array([_naive_loss(model, tok, p, r, with_prompt=False) for p, r in pairs])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(alone, want_alone, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(signals.ifd_scores(model, tok, pairs, batch_size=3), want / want_alone, rtol=1e-4)
    # the prompt changes the loss (the test would pass vacuously if it were ignored)
    assert not np.allclose(got[1:], alone[1:])


def test_response_lengths_truncation_and_errors():
    tok = make_tokenizer()
    pairs = [("hello there", "i like cats"), ("hi", "we love music and play guitar every day")]
    np.testing.assert_array_equal(signals.response_lengths(tok, pairs), [4, 9])  # words + EOS
    long = [("hello there i like dogs and cats and music", "we love music and play guitar every day")]
    (ids, n_prompt), = signals.tokenize_pairs(tok, long, max_length=12)
    assert len(ids) == 12 and n_prompt == 8 and ids[0] == tok.bos_token_id  # BOS kept, prompt cut from the left
    assert ids[1:n_prompt] == tok("i like dogs and cats and music", add_special_tokens=False)["input_ids"]
    assert ids[n_prompt:] == tok(" we love music and", add_special_tokens=False)["input_ids"]  # tail cut
    with pytest.raises(ValueError, match="sample 1: the response is empty"):
        signals.response_losses(make_model(), tok, [("a", "b"), ("a", "  ")])
    with pytest.raises(ValueError, match="sample 0: expected a"):
        signals.response_lengths(tok, ["just a string"])


# ------------------------------------------------------------------------------------ the runner


def _write_dialogues(path: Path, n: int = 120) -> Path:
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            ctx = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(rng.randint(1, 3))]
            resp = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 15)))
            f.write(json.dumps({"context": ctx, "response": resp}) + "\n")
    return path


def _preset(data: Path) -> dict:
    cfg = convergence.load_preset(ROOT / "benchmarks" / "configs" / "smoke.yaml")
    cfg = copy.deepcopy(cfg)
    cfg["data"]["source"] = str(data)
    cfg["data"].update(train_samples=20, val_samples=4, test_samples=4, max_length=24)  # some are truncated
    cfg["strategies"] = ["random", "easy_to_hard"]
    cfg["controls"] = ["ctrl_length", "anti_curriculum"]
    cfg["training"]["steps"] = 4
    cfg["curriculum"]["training"].update(steps_per_epoch=1, curriculum_end_epoch=3)
    return convergence.validate_preset(cfg)


def test_runner_end_to_end_then_resume(tmp_path):
    cfg = _preset(_write_dialogues(tmp_path / "d.jsonl"))
    out = tmp_path / "res"
    summary = convergence.run_preset(cfg, out, plots=False)
    assert summary["runs_trained"] == 8 and summary["runs_skipped"] == 0

    doc = json.loads((out / "results.json").read_text())
    _results.validate_results(doc, out)
    assert set(doc["runs"]) == {"random", "easy_to_hard", "ctrl_length", "anti_curriculum"}
    assert all(set(by_seed) == {"0", "1"} for by_seed in doc["runs"].values())
    assert set(doc["h2"]["strategies"]) == {"easy_to_hard", "ctrl_length", "anti_curriculum"}
    # H1: every metric x pooling x aggregate side by side with the cheap signals, on both targets
    names = set(doc["h1"]["signals"])
    for metric in ("l2", "cosine", "coord_softmax_kl", "mahalanobis"):
        for pooling in ("mean", "last"):
            for agg in ("mean", "weighted_mean", "max", "topk_mean"):
                assert f"meta_{metric}_{pooling}_{agg}" in names
    assert {"response_length", "edge_loss_before", "cloud_minus_edge_loss", "ifd"} <= names
    assert doc["h1"]["primary_target"] == "train_loss_mean"
    assert set(doc["h1"]["targets"]) == {"train_loss_mean", "loss_after_training"}
    assert doc["provenance"]["seeds"] == [0, 1] and doc["provenance"]["data_fingerprint"].startswith("sha256:")
    assert (out / "report.md").read_text().startswith("# Curriculum benchmark report: smoke")

    # one extraction per pooling: the shards are shared by the four metric files
    assert sorted(p.name for p in (out / "difficulty").glob("work_*")) == ["work_last", "work_mean"]
    assert len(list((out / "difficulty" / "work_mean").glob("shard_*.safetensors"))) == 1

    # the control really orders by response length: its first (warm-up) batch is among the shortest
    length = np.load(out / "arrays" / "h1_samples.npz")["response_length"]
    lines = (out / "runs" / "ctrl_length" / "seed0.jsonl").read_text().splitlines()
    first = next(json.loads(line) for line in lines if json.loads(line)["type"] == "train")
    cutoff = np.sort(length)[int(np.ceil(0.33 * len(length)))]
    assert all(length[i] <= cutoff for i in first["indices"]), (first["indices"], cutoff)
    # ... and the anti-curriculum starts with the samples of the highest primary meta-token score
    score = np.load(out / "arrays" / "h1_samples.npz")["meta_l2_mean_topk_mean"]
    lines = (out / "runs" / "anti_curriculum" / "seed0.jsonl").read_text().splitlines()
    first = next(json.loads(line) for line in lines if json.loads(line)["type"] == "train")
    floor = np.sort(score)[::-1][int(np.ceil(0.33 * len(score)))]
    assert all(score[i] >= floor for i in first["indices"]), (first["indices"], floor)
    # the random runs hold H1's targets: per-sample training losses and the after-training evaluation
    recs = [json.loads(line) for line in (out / "runs" / "random" / "seed1.jsonl").read_text().splitlines()]
    assert all(len(r["per_sample_loss"]) == len(r["indices"]) for r in recs if r["type"] == "train")
    assert len(next(r for r in recs if r["type"] == "per_sample_eval")["loss"]) == 20
    # the bare edge loss is the zero-initialised generator's loss on the same tokens (same prompt
    # layout and truncation): compare with the per-sample losses of the first training step
    edge_loss = np.load(out / "arrays" / "h1_samples.npz")["edge_loss_before"]
    step1 = next(r for r in recs if r["type"] == "train" and r["step"] == 1)
    np.testing.assert_allclose(edge_loss[step1["indices"]], step1["per_sample_loss"], rtol=1e-4)

    # resume: nothing is retrained, the logs are untouched
    logs = sorted((out / "runs").rglob("*.jsonl"))
    mtimes = [p.stat().st_mtime_ns for p in logs]
    again = convergence.run_preset(cfg, out, report=False)
    assert again["runs_trained"] == 0 and again["runs_skipped"] == 8
    assert [p.stat().st_mtime_ns for p in logs] == mtimes
    # a run cut off before its end is redone, and only that one
    cut = out / "runs" / "easy_to_hard" / "seed1.jsonl"
    cut.write_text("".join(cut.read_text().splitlines(keepends=True)[:3]))
    third = convergence.run_preset(cfg, out, report=False)
    assert third["runs_trained"] == 1
    assert '"type": "test"' in cut.read_text()
    # finished runs of other settings are neither reused nor silently overwritten
    other = copy.deepcopy(cfg)
    other["training"]["lr"] = 0.01
    with pytest.raises(convergence.PresetError, match="finished run with another 'lr'"):
        convergence.run_preset(other, out, report=False)


def test_preset_loader_names_bad_keys(tmp_path):
    base = (ROOT / "benchmarks" / "configs" / "smoke.yaml").read_text()
    cases = [(base.replace("  steps: 6", "  stepz: 6"), r"training.stepz: unknown key; did you mean 'steps'"),
             (base.replace("pacing: step,", "pacing: stepwise,"), r"curriculum.curriculum.pacing"),
             (base.replace("rank: 4,", "rnak: 4,"), r"training.generator.rnak"),
             (base.replace("controls: [ctrl_length", "controls: [ctrl_len"), r"controls: unknown control"),
             (base.replace("seeds: [0, 1]", "seeds: []"), r"seeds: must be a non-empty list"),
             (base.replace("  eval_every: 2\n", ""), r"training.eval_every: required key is missing")]
    for text, pattern in cases:
        p = tmp_path / "p.yaml"
        p.write_text(text)
        with pytest.raises(convergence.PresetError, match=pattern):
            convergence.load_preset(p)
    for name in ("cpu", "gpu", "smoke"):
        cfg = convergence.load_preset(ROOT / "benchmarks" / "configs" / f"{name}.yaml")
        assert cfg["preset"] == name and cfg["strategies"][0] == "random"


def test_cli_reports_a_bad_preset(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("preset: x\nseeds: [0]\nbogus: 1\n")
    assert convergence.main(["--config", str(p)]) == 2
    assert "bogus: unknown key" in capsys.readouterr().err


@pytest.mark.integration
def test_runner_on_the_bundled_models(tmp_path):
    # the cpu preset shrunk to seconds of training: real SmolLM2 / Qwen2.5 tokenizers and chitchat
    pytest.importorskip("gguf")
    cfg = copy.deepcopy(convergence.load_preset(ROOT / "benchmarks" / "configs" / "cpu.yaml"))
    cfg.update(seeds=[0], strategies=["random"], controls=["ctrl_edge_loss"], threads=None)
    cfg["data"].update(train_samples=8, val_samples=2, test_samples=2)
    cfg["training"].update(steps=2, eval_every=1)
    cfg["h1"].update(metrics=["l2"], poolings=["mean"], n_boot=20)
    cfg["curriculum"]["meta_token"]["num_anchors"] = 4
    cfg["curriculum"]["training"].update(steps_per_epoch=1, curriculum_end_epoch=2)
    out = tmp_path / "cpu"
    summary = convergence.run_preset(convergence.validate_preset(cfg), out, plots=False)
    assert summary["runs_trained"] == 2
    doc = _results.load_results(out)
    assert doc["provenance"]["models"]["edge"]["layers"] == 30
    assert doc["provenance"]["models"]["cloud"]["layers"] == 24
    # bare edge loss == the zero-initialised generator's first-step loss on real tokenizers
    edge_loss = np.load(out / "arrays" / "h1_samples.npz")["edge_loss_before"]
    recs = [json.loads(line) for line in (out / "runs" / "random" / "seed0.jsonl").read_text().splitlines()]
    step1 = next(r for r in recs if r["type"] == "train" and r["step"] == 1)
    np.testing.assert_allclose(edge_loss[step1["indices"]], step1["per_sample_loss"], rtol=1e-3)
