"""Issue 14 items 5 (labels), 8 (the library reads its own output) and 9 (no kill point leaves a
label file without its header)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _adv import small_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torch_curriculum.dataset import MetaTokenDifficultyDataset
from torch_curriculum.labels import LabelFileError, header_path, read_labels, write_labels

ROOT = Path(__file__).resolve().parents[2]
SEPARATORS = ["\u2028", "\u2029", "\x85", "\x1c", "\x1d", "\x1e", "\x0b", "\x0c", "\r", "\r\n", "\n"]


@pytest.mark.parametrize("suffix", ["jsonl", "json"])
def test_ids_with_line_separators_round_trip(tmp_path, suffix):
    ids = [f"turn{i}{sep}x" for i, sep in enumerate(SEPARATORS)]
    d = torch.rand(len(ids), 5, dtype=torch.float64)
    p = write_labels(tmp_path / f"l.{suffix}", ids, d)
    records, header = read_labels(p)
    assert [r["sample_id"] for r in records] == ids and header["num_samples"] == len(ids)
    # the escaped separators also keep every other line reader (str.splitlines) on one record per line
    if suffix == "jsonl":
        assert len(p.read_text(encoding="utf-8").splitlines()) == len(ids)


def test_precompute_style_round_trip_through_a_difficulty_file(tmp_path):
    ids = [f"dlg\u2028{i}" if i % 2 else f"dlg\x85{i}" for i in range(12)]
    ds = small_file(tmp_path / "d.safetensors", n=12, ids=ids)
    ds.write_labels(tmp_path / "labels.jsonl")
    records, _ = read_labels(tmp_path / "labels.jsonl")
    assert [r["sample_id"] for r in records] == ids
    assert [r["curriculum_stage"] for r in records] == ds.stage.tolist()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12),
                    min_size=1, max_size=6, unique=True))
def test_any_unicode_ids_round_trip(tmp_path_factory, ids):
    p = tmp_path_factory.mktemp("ids") / "l.jsonl"
    write_labels(p, ids, torch.rand(len(ids), 3, dtype=torch.float64))
    assert [r["sample_id"] for r in read_labels(p)[0]] == ids


def test_lone_surrogate_id_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"sample id at index 1 .*lone surrogate"):
        write_labels(tmp_path / "l.jsonl", ["ok", "bad\ud800"], torch.rand(2, 3))
    with pytest.raises(ValueError, match=r"sample id at index 1 .*lone surrogate"):
        MetaTokenDifficultyDataset.from_distances(torch.rand(2, 3), ["ok", "bad\ud800"], tmp_path / "d.safetensors")
    assert not list(tmp_path.iterdir())


def _labels(tmp_path, n=6, layers=4, header=True):
    p = write_labels(tmp_path / "l.jsonl", [f"s{i}" for i in range(n)], torch.rand(n, layers, dtype=torch.float64))
    if not header:
        header_path(p).unlink()
    return p


@pytest.mark.parametrize("header", [True, False])
def test_missing_last_layer_on_line_1_is_blamed_on_line_1(tmp_path, header):
    p = _labels(tmp_path, header=header)
    lines = p.read_text().split("\n")
    rec = json.loads(lines[0])
    del rec["meta_token_diff"]["layer_3"]
    lines[0] = json.dumps(rec)
    data = "\n".join(lines)
    p.write_text(data)
    if header:  # keep the header matching, so the layer check (not the sha256) is what speaks
        h = json.loads(header_path(p).read_text())
        import hashlib
        h["sha256"] = hashlib.sha256(data.encode()).hexdigest()
        h["checksums"]["sha256"] = hashlib.sha256(json.dumps(h["sha256"]).encode()).hexdigest()
        header_path(p).write_text(json.dumps(h))
    with pytest.raises(LabelFileError, match=r"line 1 \(sample 's0'\): 'meta_token_diff' must hold "
                                             r"layer_0..layer_3 .*missing \['layer_3'\]"):
        read_labels(p)


def test_invalid_utf8_names_file_line_and_byte(tmp_path):
    p = _labels(tmp_path, header=False)
    data = p.read_bytes().split(b"\n")
    data[2] = data[2].replace(b'"s2"', b'"s\xff"')
    p.write_bytes(b"\n".join(data))
    with pytest.raises(LabelFileError, match=r"l.jsonl, line 3: not UTF-8 text \(byte offset \d+: b'\\xff'\)"):
        read_labels(p)
    p2 = _labels(tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path)
    header_path(p2).write_bytes(b'{"sha256": "\xfe"}')
    with pytest.raises(LabelFileError, match=r"header.json, line 1: not UTF-8 text"):
        read_labels(p2)


def test_bom_is_dropped_and_duplicate_keys_and_directories_are_errors(tmp_path):
    p = _labels(tmp_path, header=False)
    ref = read_labels(p)[0]
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    assert read_labels(p)[0] == ref
    lines = p.read_text(encoding="utf-8-sig").split("\n")
    lines[1] = lines[1][:-1] + ', "curriculum_stage": 3}'
    p.write_text("\n".join(lines))
    with pytest.raises(LabelFileError, match=r"line 2: key 'curriculum_stage' occurs twice"):
        read_labels(p)
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_labels(tmp_path / "dir.jsonl")


def test_headerless_file_says_stage_is_unverified(tmp_path, caplog):
    p = _labels(tmp_path, header=False)
    lines = p.read_text().split("\n")
    rec = json.loads(lines[0])
    rec["curriculum_stage"] = 9
    lines[0] = json.dumps(rec)
    p.write_text("\n".join(lines))
    with caplog.at_level(logging.WARNING):
        _, header = read_labels(p)
    assert header == {} and "cannot be verified" in caplog.text and "curriculum_stage" in caplog.text
    # with its header, the same edit is refused
    q = _labels(tmp_path / "h" if (tmp_path / "h").mkdir() is None else tmp_path)
    lines = q.read_text().split("\n")
    rec = json.loads(lines[0])
    rec["curriculum_stage"] = 9
    lines[0] = json.dumps(rec)
    q.write_text("\n".join(lines))
    with pytest.raises(LabelFileError, match="sha256"):
        read_labels(q)


_KILLER = r"""
import os, signal, sys
import torch
from torch_curriculum.labels import write_labels
k, when, out, seed = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
real = os.replace
count = [0]
def replace(a, b):
    count[0] += 1
    if count[0] == k and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real(a, b)
    if count[0] == k and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
g = torch.Generator().manual_seed(seed)
write_labels(out, [f"s{i}" for i in range(8)], torch.rand(8, 5, generator=g, dtype=torch.float64), overwrite=True,
             metadata={"run": seed})
"""


def _run_killer(k: int, when: str, out: Path, seed: int) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", _KILLER, str(k), when, str(out), str(seed)], env=env,
                          timeout=120).returncode


@pytest.mark.parametrize("previous", [False, True])
@pytest.mark.parametrize(("k", "when"), [(1, "before"), (1, "after"), (2, "before"), (2, "after")])
def test_sigkill_at_every_write_point_never_leaves_unvouched_labels(tmp_path, previous, k, when):
    """SIGKILL before/after each of the two atomic replaces (header, labels), on a fresh path and over a
    previous run's files: the reader gets an error, the previous run's complete result or the new
    complete result; whenever it returns records, the header is there and vouched for them."""
    out = tmp_path / "labels.jsonl"
    results = {}
    for seed in (1, 2):  # the complete results, written in-process with the same inputs
        g = torch.Generator().manual_seed(seed)
        ref = write_labels(tmp_path / f"ref{seed}" / "labels.jsonl", [f"s{i}" for i in range(8)],
                           torch.rand(8, 5, generator=g, dtype=torch.float64), metadata={"run": seed})
        results[seed] = read_labels(ref)
    if previous:
        (tmp_path / "ref1" / "labels.jsonl").replace(out)
        header_path(tmp_path / "ref1" / "labels.jsonl").replace(header_path(out))
    rc = _run_killer(k, when, out, 2)
    assert rc == -signal.SIGKILL
    try:
        got = read_labels(out)
    except (LabelFileError, FileNotFoundError) as e:
        assert str(out.name) in str(e)
        return
    assert got[1], "records returned without a header"
    allowed = [results[2]] + ([results[1]] if previous else [])
    assert any(got[0] == r[0] and got[1]["metadata"] == r[1]["metadata"] for r in allowed)


def test_edited_header_field_is_named(tmp_path):
    p = write_labels(tmp_path / "l.jsonl", ["a", "b", "c"], torch.rand(3, 4, dtype=torch.float64),
                     metadata={"cloud": "qwen", "top_k": 3})
    text = header_path(p).read_text()
    for old, new, field in [('"cloud": "qwen"', '"cloud": "llama"', "metadata"),
                            ('"primary_score": "topk_mean"', '"primary_score": "mean"', "primary_score"),
                            ('"checksums"', '"checksumz"', None)]:
        assert old in text
        header_path(p).write_text(text.replace(old, new))
        match = f"header field '{field}' does not match its checksum" if field else r"unknown header field\(s\)"
        with pytest.raises(LabelFileError, match=match):
            read_labels(p)
    header_path(p).write_text(text)
    assert read_labels(p)[1]["metadata"] == {"cloud": "qwen", "top_k": 3}
