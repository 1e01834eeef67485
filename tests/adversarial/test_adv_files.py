"""Issue 14 item 7 (and the difficulty-file parts of item 5): a difficulty file that was changed
after it was written is refused with the tensor / field named; opening stays lazy; pickles as a path."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from _adv import everything, same, small_file
from torch.utils.data import DataLoader

from torch_curriculum.data import DialogueSample
from torch_curriculum.dataset import (
    DifficultyFileError,
    MetaTokenDifficultyDataset,
    read_safetensors_header,
    write_safetensors,
)


@pytest.fixture()
def dfile(tmp_path) -> Path:
    small_file(tmp_path / "d.safetensors")
    return tmp_path / "d.safetensors"


def _flip(src: Path, dst: Path, tensor: str, index: int = 0, bit: int = 0) -> Path:
    """Flip one bit of the ``index``-th byte of a tensor's data."""
    header, start = read_safetensors_header(src)
    data = bytearray(src.read_bytes())
    data[start + header[tensor]["data_offsets"][0] + index] ^= 1 << bit
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("tensor", ["stage", "difficulty", "layer_diffs", "raw_layer_diffs", "percentile",
                                    "scores.max", "sample_ids.offsets"])
def test_flipped_byte_in_a_tensor_is_named_on_first_read(dfile, tmp_path, tensor):
    bad = _flip(dfile, tmp_path / "bad.safetensors", tensor, index=3, bit=2)
    ds = MetaTokenDifficultyDataset(bad)  # opening stays lazy: nothing read yet
    with pytest.raises(DifficultyFileError, match=rf"tensor '{tensor}' does not match its checksum"):
        everything(ds)
    with pytest.raises(DifficultyFileError, match=rf"tensor '{tensor}' does not match its checksum"):
        MetaTokenDifficultyDataset(bad).verify()


def test_stage_flip_that_stays_a_valid_stage_is_caught(dfile, tmp_path):
    ds = MetaTokenDifficultyDataset(dfile)
    i = int(torch.nonzero(ds.stage == 1)[0, 0])
    header, start = read_safetensors_header(dfile)
    data = bytearray(dfile.read_bytes())
    data[start + header["stage"]["data_offsets"][0] + 8 * i] = 3  # stage 1 -> 3: plausible, wrong
    (tmp_path / "s.safetensors").write_bytes(bytes(data))
    with pytest.raises(DifficultyFileError, match="'stage'"):
        _ = MetaTokenDifficultyDataset(tmp_path / "s.safetensors").stage


def test_duplicated_id_is_refused(tmp_path):
    small_file(tmp_path / "d.safetensors", n=4, ids=["a1", "a2", "a3", "a4"])
    data = (tmp_path / "d.safetensors").read_bytes()
    header, start = read_safetensors_header(tmp_path / "d.safetensors")
    lo = start + header["sample_ids.utf8"]["data_offsets"][0]
    assert data[lo:lo + 8] == b"a1a2a3a4"
    (tmp_path / "dup.safetensors").write_bytes(data[:lo + 3] + b"1" + data[lo + 4:])  # a2 -> a1
    with pytest.raises(DifficultyFileError, match="'sample_ids.utf8' does not match its checksum"):
        _ = MetaTokenDifficultyDataset(tmp_path / "dup.safetensors").sample_ids
    # even unchecked (verify=False), a duplicated id is an error, not a silent mapping
    with pytest.raises(DifficultyFileError, match="sample id 'a1' occurs twice"):
        _ = MetaTokenDifficultyDataset(tmp_path / "dup.safetensors", verify=False).sample_ids


def test_edited_provenance_value_is_named(dfile, tmp_path):
    data = dfile.read_bytes()
    assert data.count(b'\\"top_k\\":3') == 1  # inside the JSON-in-JSON provenance string
    (tmp_path / "k.safetensors").write_bytes(data.replace(b'\\"top_k\\":3', b'\\"top_k\\":2'))
    with pytest.raises(DifficultyFileError, match=r"metadata field 'provenance.top_k' does not match its checksum"):
        MetaTokenDifficultyDataset(tmp_path / "k.safetensors")
    (tmp_path / "n.safetensors").write_bytes(data.replace(b'"num_layers":"6"', b'"num_layers":"5"'))
    with pytest.raises(DifficultyFileError, match="metadata field 'num_layers'"):
        MetaTokenDifficultyDataset(tmp_path / "n.safetensors")


def test_renamed_tensor_or_metadata_key_is_refused(dfile, tmp_path):
    data = dfile.read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data.replace(b'"scores.max":{', b'"scores.mbx":{'))
    with pytest.raises(DifficultyFileError, match="tensor 'scores.max' is recorded in the checksums but missing"):
        MetaTokenDifficultyDataset(tmp_path / "t.safetensors")
    (tmp_path / "m.safetensors").write_bytes(data.replace(b'"fingerprint":', b'"fingerprinx":'))
    with pytest.raises(DifficultyFileError, match="metadata field 'fingerprint.?' "):
        MetaTokenDifficultyDataset(tmp_path / "m.safetensors")


def test_file_without_checksums_needs_verify_false(dfile, tmp_path, caplog):
    header, start = read_safetensors_header(dfile)
    meta = dict(header["__metadata__"])
    meta.pop("checksums")
    # rebuild the file by hand as an older writer did: same tensors, no checksums entry
    hdr = {k: v for k, v in header.items() if k != "__metadata__"}
    hdr["__metadata__"] = meta
    hb = json.dumps(hdr, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    body = dfile.read_bytes()[start:]
    (tmp_path / "old.safetensors").write_bytes(len(hb).to_bytes(8, "little") + hb + body)
    with pytest.raises(DifficultyFileError, match="records no checksums.*verify=False"):
        MetaTokenDifficultyDataset(tmp_path / "old.safetensors")
    with caplog.at_level(logging.WARNING):
        ds = MetaTokenDifficultyDataset(tmp_path / "old.safetensors", verify=False)
    assert "records no checksums" in caplog.text
    assert same(everything(ds), {**everything(MetaTokenDifficultyDataset(dfile)), "metadata": ds.metadata})
    with pytest.raises(DifficultyFileError, match="records no checksums"):
        ds.verify()


def test_verify_recomputes_scores_stages_from_the_differences(dfile, tmp_path):
    """A file whose checksums are consistent (written through write_safetensors) but whose stage does
    not follow from its differences: only verify() can see it, and it names the sample."""
    assert MetaTokenDifficultyDataset(dfile).verify() is not None
    header, _ = read_safetensors_header(dfile)
    ds = MetaTokenDifficultyDataset(dfile)
    tensors = {k: ds._get(k).clone() for k in header if k != "__metadata__"}
    tensors["stage"][5] = 3 if int(tensors["stage"][5]) != 3 else 1
    write_safetensors(tmp_path / "w.safetensors", tensors, ds.metadata)
    with pytest.raises(DifficultyFileError, match=r"stage of sample 5 \('s005'\)"):
        MetaTokenDifficultyDataset(tmp_path / "w.safetensors").verify()


def test_directory_and_missing_paths(tmp_path):
    with pytest.raises(DifficultyFileError, match="is a directory"):
        MetaTokenDifficultyDataset(tmp_path)
    with pytest.raises(DifficultyFileError, match="no such file"):
        MetaTokenDifficultyDataset(tmp_path / "nope.safetensors")


def test_header_with_duplicate_key_is_refused(dfile, tmp_path):
    data = bytearray(dfile.read_bytes())
    n = int.from_bytes(data[:8], "little")
    text = data[8:8 + n].decode()
    # "stage" twice: json.loads would silently keep the second entry
    entry = text[text.index('"stage":'):text.index("}", text.index('"stage":')) + 1]
    dup = text.replace(entry, entry + "," + entry, 1)
    hb = dup.rstrip().encode()
    hb += b" " * (-len(hb) % 8)
    (tmp_path / "dk.safetensors").write_bytes(len(hb).to_bytes(8, "little") + hb + bytes(data[8 + n:]))
    with pytest.raises(DifficultyFileError, match="duplicate key 'stage'"):
        MetaTokenDifficultyDataset(tmp_path / "dk.safetensors")


def test_pickles_as_path_and_refuses_a_changed_file(tmp_path):
    ds = small_file(tmp_path / "big.safetensors", n=20_000, layers=8)
    _ = ds.layer_diffs  # touched arrays are not pickled either
    blob = pickle.dumps(ds)
    assert len(blob) < 4096, len(blob)
    back = pickle.loads(blob)
    assert back.path == ds.path and same(everything(back), everything(ds))
    blob = pickle.dumps(MetaTokenDifficultyDataset(tmp_path / "big.safetensors"))
    small_file(tmp_path / "other.safetensors", n=20_000, layers=8, seed=1)
    (tmp_path / "other.safetensors").replace(tmp_path / "big.safetensors")  # replaced by another file
    with pytest.raises(DifficultyFileError, match="changed after this dataset was opened"):
        pickle.loads(blob)


def _as_list(batch):
    return batch


def test_dataloader_spawn_workers_reopen_the_memory_map(tmp_path):
    samples = [DialogueSample(f"s{i:03d}", ("p",), ("hi",), f"r{i}") for i in range(24)]
    small_file(tmp_path / "d.safetensors", ids=[s.sample_id for s in samples])
    ds = MetaTokenDifficultyDataset(tmp_path / "d.safetensors", samples, return_difficulty=True)
    loader = DataLoader(ds, batch_size=5, num_workers=2, multiprocessing_context=mp.get_context("spawn"),
                        collate_fn=_as_list)
    got = [x for batch in loader for x in batch]
    assert [s.sample_id for s, _ in got] == [s.sample_id for s in samples]
    np.testing.assert_array_equal([d for _, d in got], ds.difficulty.numpy())
    plain = MetaTokenDifficultyDataset(tmp_path / "d.safetensors")
    loader = DataLoader(plain, batch_size=7, num_workers=2, multiprocessing_context=mp.get_context("spawn"))
    stages = torch.cat([b["stage"] for b in loader])
    assert torch.equal(stages, plain.stage)
