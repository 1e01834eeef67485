"""Seed-schema label files: round trips, provenance, and clear errors naming the sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from torch_curriculum import LabelFileError, normalize_layers, read_labels, write_labels
from torch_curriculum.labels import header_path


def _diffs(n=12, n_layers=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return normalize_layers(torch.rand(n, n_layers, generator=g) * torch.arange(1, n_layers + 1), "rank")


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_round_trip_and_schema(tmp_path, suffix):
    d = _diffs()
    ids = [f"personachat_train_{i:05d}" for i in range(12)]
    path = write_labels(tmp_path / f"labels{suffix}", ids, d, top_k=2, tau=1.5, stage_percentiles=[0.5, 1.0],
                        metadata={"cloud": "qwen", "metric": "l2"})
    records, header = read_labels(path)
    assert [r["sample_id"] for r in records] == ids
    r0 = records[0]
    assert list(r0) == ["sample_id", "meta_token_diff", "difficulty_scores", "difficulty_percentile", "curriculum_stage"]
    assert list(r0["meta_token_diff"]) == [f"layer_{j}" for j in range(6)]
    assert set(r0["difficulty_scores"]) == {"mean", "max", "top2_mean", "weighted_mean"}
    got = np.array([[r["meta_token_diff"][f"layer_{j}"] for j in range(6)] for r in records])
    np.testing.assert_array_equal(got, d.numpy())  # exact: floats round-trip
    # independent recomputation of the derived numbers
    top2 = np.sort(got, axis=1)[:, -2:].mean(1)
    np.testing.assert_allclose([r["difficulty_scores"]["top2_mean"] for r in records], top2)
    pct = np.array([(top2 <= x).mean() for x in top2])
    np.testing.assert_allclose([r["difficulty_percentile"] for r in records], pct)
    assert [r["curriculum_stage"] for r in records] == [1 if p <= 0.5 else 2 for p in pct]
    assert header["metadata"] == {"cloud": "qwen", "metric": "l2"}
    assert (header["top_k"], header["tau"], header["stage_percentiles"]) == (2, 1.5, [0.5, 1.0])
    assert header["num_samples"] == 12 and header["num_layers"] == 6 and header["library_version"]
    if suffix == ".json":
        assert isinstance(json.loads(path.read_text()), list)  # pure seed-schema array


def test_refuses_to_overwrite_and_bad_inputs(tmp_path):
    d = _diffs(n=3)
    p = write_labels(tmp_path / "l.jsonl", ["a", "b", "c"], d)
    with pytest.raises(FileExistsError):
        write_labels(p, ["a", "b", "c"], d)
    write_labels(p, ["a", "b", "c"], d, overwrite=True)
    with pytest.raises(ValueError, match="duplicate sample id 'a'"):
        write_labels(tmp_path / "x.jsonl", ["a", "b", "a"], d)
    with pytest.raises(ValueError, match="N=2"):
        write_labels(tmp_path / "x.jsonl", ["a", "b"], d)
    bad = d.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/Inf differences for sample\(s\) \['b'\]"):
        write_labels(tmp_path / "x.jsonl", ["a", "b", "c"], bad)
    with pytest.raises(ValueError, match="suffix"):
        write_labels(tmp_path / "x.csv", ["a", "b", "c"], d)
    assert not (tmp_path / "x.jsonl").exists()


def _rewrite(path, mutate):
    lines = path.read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    mutate(recs)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def _write(tmp_path, with_header=False):
    p = write_labels(tmp_path / "l.jsonl", [f"s{i}" for i in range(8)], _diffs(n=8))
    if not with_header:
        header_path(p).unlink()  # as if written by another tool
    return p


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda rs: rs[3]["difficulty_scores"].__setitem__("mean", 0.123), r"line 4 \(sample 's3'\): difficulty_scores.mean"),
        (lambda rs: rs[2]["meta_token_diff"].pop("layer_5"), r"sample 's2'.*missing \['layer_5'\]"),
        (lambda rs: rs[0]["meta_token_diff"].pop("layer_1"), r"sample 's0'.*missing \['layer_1'\]"),
        (lambda rs: rs[5].__setitem__("sample_id", "s1"), r"sample 's1'.*duplicate sample_id, first seen at line 2"),
        (lambda rs: rs[1]["meta_token_diff"].__setitem__("layer_0", "0.5"), r"sample 's1'.*layer_0' must be a finite number"),
        (lambda rs: rs[6].__setitem__("curriculum_stage", 1.5), r"sample 's6'.*curriculum_stage' must be an integer"),
        (lambda rs: rs[6].__setitem__("difficulty_percentile", 1.5), r"sample 's6'.*\(0, 1\]"),
        (lambda rs: rs[4].pop("difficulty_scores"), r"sample 's4'.*missing key\(s\) \['difficulty_scores'\]"),
    ],
)
def test_corrupted_files_name_the_sample(tmp_path, mutate, message):
    p = _write(tmp_path)
    _rewrite(p, mutate)
    with pytest.raises(LabelFileError, match=message):
        read_labels(p)


def test_header_checks_percentile_stage_and_sha(tmp_path):
    p = write_labels(tmp_path / "l.jsonl", [f"s{i}" for i in range(8)], _diffs(n=8))
    hdr = json.loads(header_path(p).read_text())
    _rewrite(p, lambda rs: rs[0].__setitem__("curriculum_stage", rs[0]["curriculum_stage"] % 3 + 1))
    with pytest.raises(LabelFileError, match="sha256"):
        read_labels(p)
    # a header that matches the edited bytes: the stage itself is now caught
    import hashlib
    hdr["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
    hdr["checksums"]["sha256"] = hashlib.sha256(json.dumps(hdr["sha256"]).encode()).hexdigest()  # forged too
    header_path(p).write_text(json.dumps(hdr))
    with pytest.raises(LabelFileError, match=r"sample 's0'.*curriculum_stage=.*falls in stage"):
        read_labels(p)


def test_reads_files_without_header_and_malformed_json(tmp_path):
    p = _write(tmp_path)
    records, header = read_labels(p)
    assert header == {} and len(records) == 8
    p.write_text(p.read_text() + "{not json\n")
    with pytest.raises(LabelFileError, match="line 9: not valid JSON"):
        read_labels(p)
    with pytest.raises(FileNotFoundError):
        read_labels(tmp_path / "missing.jsonl")
