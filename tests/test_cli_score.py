"""``torch-curriculum score | inspect | labels`` end to end on tiny random models saved to folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny_lm import make_model, make_tokenizer

from torch_curriculum import read_labels
from torch_curriculum.cli import main
from torch_curriculum.data import DialogueSample, data_fingerprint
from torch_curriculum.dataset import DifficultyFileError, MetaTokenDifficultyDataset

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
N = 20
WORDS = ["i like tea", "we play guitar every day", "my favourite colour is blue", "hello there",
         "what do you like", "i have two kids", "we live in a small town", "i cook pasta"]


def _rows(n: int = N) -> list[dict]:
    return [{"id": f"conv{i:03d}", "persona": [WORDS[i % 8], WORDS[(i + 3) % 8]],
             "context": [WORDS[(i + k) % 8] for k in range(1 + i % 3)], "response": WORDS[(i + 5) % 8]}
            for i in range(n)]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tok = make_tokenizer()
    for name, model in (("cloud", make_model("qwen2", 48, 6, len(tok), seed=1)),
                        ("edge", make_model("llama", 32, 4, len(tok), seed=0))):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    (root / "data.jsonl").write_text("".join(json.dumps({"sample_id": r["id"], "persona": r["persona"],
                                                         "context": r["context"], "response": r["response"]}) + "\n"
                                             for r in _rows()))
    import datasets

    ds = datasets.Dataset.from_list([{"uid": r["id"], "who": r["persona"], "turns": r["context"],
                                      "answer": r["response"]} for r in _rows()])
    ds.save_to_disk(str(root / "hf"))
    ds.to_parquet(str(root / "rows.parquet"))
    (root / "cfg.yaml").write_text("meta_token:\n  num_anchors: 6\n  batch_size: 4\n  max_length: 128\n")
    return root


def _score(env, out, *extra):
    return ["score", "--cloud", str(env / "cloud"), "--edge", str(env / "edge"), "--config", str(env / "cfg.yaml"),
            "--out", str(out), "--no-progress", "--shard-size", "6", *extra]


def test_score_inspect_labels(env, tmp_path, capsys):
    out, labels = tmp_path / "d.safetensors", tmp_path / "l.jsonl"
    assert main(_score(env, out, "--data", str(env / "data.jsonl"), "--labels", str(labels),
                       "--dtype", "fp32")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["samples"] == N and summary["layers"] == 4 and sum(summary["samples_per_stage"]) == N
    ds = MetaTokenDifficultyDataset(out)
    assert ds.sample_ids == [r["id"] for r in _rows()]
    assert ds.provenance["models"]["edge"]["compute_dtype"] == "float32"
    assert [r["sample_id"] for r in read_labels(labels)[0]] == ds.sample_ids
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{N} samples x 4 layers" in text and "alignment relative (K=6 anchors" in text
    assert "samples per stage" in text and len([ln for ln in text.splitlines() if "|" in ln]) == 5
    assert main(["inspect", str(out), "--json", "--verify"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["num_samples"] == N and js["samples_per_stage"] == torch.bincount(ds.stage)[1:].tolist()
    assert js["layers"][2]["cloud_layer"] == ds.provenance["layer_map"][2]
    assert js["layers"][0]["raw"][2] == pytest.approx(float(ds.raw_layer_diffs[:, 0].median()), rel=0.2)
    plot = tmp_path / "p.png"
    assert main(["inspect", str(out), "--plot", str(plot)]) == 0 and plot.stat().st_size > 1000
    capsys.readouterr()
    l2 = tmp_path / "again.jsonl"
    assert main(["labels", str(out), "--out", str(l2)]) == 0
    assert read_labels(l2)[0] == read_labels(labels)[0]


def test_hf_dataset_folder_and_parquet_with_column_mapping(env, tmp_path, capsys):
    cols = ["--persona-column", "who", "--context-column", "turns", "--response-column", "answer"]
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert main(_score(env, a, "--data", str(env / "hf"), *cols, "--id-column", "uid")) == 0
    assert main(_score(env, b, "--data", str(env / "rows.parquet"), *cols, "--id-column", "uid")) == 0
    capsys.readouterr()
    da, db = MetaTokenDifficultyDataset(a), MetaTokenDifficultyDataset(b)
    assert da.sample_ids == [r["id"] for r in _rows()]
    torch.testing.assert_close(da.raw_layer_diffs, db.raw_layer_diffs, rtol=0, atol=0)
    # the same rows read as dialogue samples give the same fingerprint
    samples = [DialogueSample(r["id"], tuple(r["persona"]), tuple(r["context"]), r["response"]) for r in _rows()]
    assert da.metadata["fingerprint"] == data_fingerprint(samples)


def test_hf_dataset_as_base_dataset_rejects_a_shuffled_one(env, tmp_path, capsys):
    import datasets

    from torch_curriculum.hf_data import HFDialogueDataset

    out = tmp_path / "h.safetensors"
    cols = ["--persona-column", "who", "--context-column", "turns", "--response-column", "answer",
            "--id-column", "uid"]
    assert main(_score(env, out, "--data", str(env / "hf"), *cols)) == 0
    capsys.readouterr()
    hf = datasets.load_from_disk(str(env / "hf"))
    kw = {"persona_column": "who", "context_column": "turns", "response_column": "answer", "id_column": "uid"}
    ds = MetaTokenDifficultyDataset(out, base_dataset=HFDialogueDataset(hf, **kw))
    assert ds[3]["uid"] == "conv003"
    # the ids are compared first: a shuffled dataset is refused naming the first misplaced row
    with pytest.raises(DifficultyFileError, match=r"base dataset item 0 has sample_id 'conv\d+' but the file "
                                                 r"scores 'conv000'.*not in the file's order"):
        MetaTokenDifficultyDataset(out, base_dataset=HFDialogueDataset(hf.shuffle(seed=1), **kw))
    # and a bare datasets.Dataset (no HFDialogueDataset wrapper) through its id column
    with pytest.raises(DifficultyFileError, match="not in the file's order"):
        MetaTokenDifficultyDataset(out, base_dataset=hf.shuffle(seed=1), id_column="uid")


def test_score_signal_then_inspect(env, tmp_path, capsys):
    # edge_bpb needs no cloud pass (this fixture's saved cloud tokenizer reloads as a Qwen2Tokenizer that
    # encodes the word-level vocabulary to nothing, which the cross-model signals refuse, naming the sample)
    out = tmp_path / "b.safetensors"
    assert main(_score(env, out, "--data", str(env / "data.jsonl"), "--signal", "edge_bpb", "--dtype", "fp32")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["signal"] == "edge_bpb" and summary["also"] == {} and summary["samples"] == N
    ds = MetaTokenDifficultyDataset(out)
    assert ds.provenance["meta_signal"] == "edge_bpb" and bool((ds.raw_layer_diffs > 0).all())
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "signal edge_bpb" in text and "metric None" in text
    assert main(["inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["signal"] == "edge_bpb"
    assert main(_score(env, tmp_path / "u.safetensors", "--data", str(env / "data.jsonl"), "--signal", "uld")) == 2
    assert "sample 6 ('conv006'): the response has no tokens under the cloud tokenizer" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--data", "{env}/data.jsonl", "--signal", "bpb"], "--signal bpb: meta_token.signal: must be one of"),
    (["--data", "{env}/data.jsonl", "--also", "uld"], "--also 'uld': expected NAME=FILE"),
    (["--data", "{env}/data.jsonl", "--also", "kl=x.safetensors"], "outputs: unknown signal 'kl'"),
    (["--data", "{env}/missing.csv"], "--data {env}/missing.csv: no such file"),
    (["--data", "{env}/hf", "--persona-column", "nope"], "no column 'nope' (--persona-column)"),
    (["--data", "{env}/hf", "--persona-column", "who", "--context-column", "turns", "--response-column", "answer",
      "--id-column", "missing_id"], "no column 'missing_id' (--id-column)"),
    (["--data", "{env}/empty_response.jsonl", "--format", "hf"], "row 1: column 'response' is empty"),
    (["--data", "{env}/data.jsonl", "--max-samples", "-3"], "--max-samples must be >= 0"),
    (["--data", "{env}/data.jsonl", "--max-samples", "2"], "needs at least 4 samples, got N=2"),
    (["--data", "{env}/data.jsonl", "--device", "tpu:0"], "--device 'tpu:0'"),
    (["--data", "{env}/data.jsonl", "--shard-size", "0"], "--shard-size must be >= 1"),
])
def test_bad_inputs_exit_2_with_one_line(env, tmp_path, capsys, args, message):
    (env / "empty_response.jsonl").write_text(json.dumps({"persona": ["a"], "context": ["b"], "response": "ok"})
                                              + "\n" + json.dumps({"persona": ["a"], "context": ["b"], "response": ""})
                                              + "\n")
    args = [a.format(env=env) for a in args]
    assert main(_score(env, tmp_path / "x.safetensors", *args)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(env=env) in err, err
    assert not (tmp_path / "x.safetensors").exists()


def test_bad_model_config_and_files_exit_2(env, tmp_path, capsys):
    cases = [
        (["score", "--cloud", str(tmp_path / "no_model"), "--edge", str(env / "edge"), "--data", str(env / "data.jsonl"),
          "--out", str(tmp_path / "x.safetensors")], "--cloud"),
        (["score", "--cloud", str(env / "cloud"), "--edge", "no-such-org/no-such-model-xyz", "--data",
          str(env / "data.jsonl"), "--out", str(tmp_path / "x.safetensors")], "--edge 'no-such-org/no-such-model-xyz'"),
        (["score", "--cloud", str(env / "cloud"), "--edge", str(env / "edge"), "--data", str(env / "data.jsonl"),
          "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "x.safetensors")], "--config"),
        (["inspect", str(tmp_path / "none.safetensors")], "none.safetensors: no such file"),
        (["labels", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "l.txt")], "must end in .jsonl"),
        (["score", "--cloud", "x"], "the following arguments are required"),
    ]
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        for argv, message in cases:
            with pytest.raises(SystemExit) if argv[-1] == "x" else _nothing():
                assert main(argv) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and message in err and "Traceback" not in err, (argv, err)
    finally:
        os.environ.pop("HF_HUB_OFFLINE", None)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.distributed
def test_torchrun_two_ranks_equals_one_process(env, tmp_path):
    run_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    def also(tag):  # extra outputs of the same pass: the merge-time Mahalanobis and a cross-model array
        return ["--also", f"mahalanobis={tmp_path / (tag + '_m.safetensors')}",
                "--also", f"edge_bpb={tmp_path / (tag + '_b.safetensors')}"]

    base = ["-m", "torch_curriculum", *_score(env, one, "--data", str(env / "data.jsonl"), "--threads", "1",
                                              *also("one"))]
    proc = subprocess.run([sys.executable, *base], env=run_env, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29731",
           "-m", "torch_curriculum", *_score(env, two, "--data", str(env / "data.jsonl"), "--threads", "1",
                                             *also("two"))]
    proc = subprocess.run(cmd, env=run_env, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert json.loads(proc.stdout.decode().strip().splitlines()[-1])["world_size"] == 2
    assert two.read_bytes() == one.read_bytes()
    for suffix in ("_m", "_b"):
        assert (tmp_path / f"two{suffix}.safetensors").read_bytes() == (tmp_path / f"one{suffix}.safetensors").read_bytes()
