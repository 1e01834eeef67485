"""Issue 14 regressions in precompute: what bad input and misuse do, kept fixed.

Item 1: precompute deletes only what it created (never the output, never unrelated files) and
refuses a non-empty foreign folder as its work dir.
"""

from __future__ import annotations

import pytest
from _tiny_lm import make_model, make_texts, make_tokenizer

from torch_curriculum.config import CurriculumConfig
from torch_curriculum.dataset import DifficultyFileError, MetaTokenDifficultyDataset


@pytest.fixture(scope="module")
def setup():
    tok = make_tokenizer()
    cloud, edge = make_model("qwen2", 48, 6, len(tok), seed=1), make_model("llama", 32, 4, len(tok), seed=0)
    cfg = CurriculumConfig.from_dict({"meta_token": {"num_anchors": 4, "batch_size": 4}})
    return make_texts(10, seed=3), (cloud, tok), (edge, tok), cfg


def test_item1_work_dir_holding_the_output_keeps_the_output(tmp_path, setup):
    texts, cloud, edge, cfg = setup
    run = tmp_path / "runs" / "x"
    out, labels = run / "d.safetensors", run / "labels.jsonl"
    MetaTokenDifficultyDataset.precompute(texts, cloud, edge, out, cfg, work_dir=run, labels_path=labels,
                                          shard_size=4, progress=False)
    # the output and labels survive; the shards and manifest are gone
    assert {"d.safetensors", "labels.jsonl"} <= {p.name for p in run.iterdir()}
    assert not list(run.glob("shard_*")) and not (run / "manifest.json").exists()
    assert len(MetaTokenDifficultyDataset(out)) == 10


def test_item1_foreign_non_empty_work_dir_is_refused_and_untouched(tmp_path, setup):
    texts, cloud, edge, cfg = setup
    runs = tmp_path / "runs"
    (runs / "old").mkdir(parents=True)
    (runs / "old" / "d.safetensors").write_bytes(b"earlier results")
    (runs / "notes.txt").write_text("mine")
    with pytest.raises(DifficultyFileError, match=r"not empty and was not created by precompute.*notes\.txt"):
        MetaTokenDifficultyDataset.precompute(texts, cloud, edge, tmp_path / "new.safetensors", cfg, work_dir=runs,
                                              shard_size=4, progress=False)
    assert (runs / "notes.txt").read_text() == "mine"
    assert (runs / "old" / "d.safetensors").read_bytes() == b"earlier results"
    assert not (tmp_path / "new.safetensors").exists()


def test_item1_existing_empty_work_dir_is_kept_created_one_is_removed(tmp_path, setup):
    texts, cloud, edge, cfg = setup
    empty = tmp_path / "empty"
    empty.mkdir()
    MetaTokenDifficultyDataset.precompute(texts, cloud, edge, tmp_path / "a.safetensors", cfg, work_dir=empty,
                                          shard_size=4, progress=False)
    assert empty.is_dir() and not list(empty.iterdir())  # not ours: emptied of our files, not removed
    MetaTokenDifficultyDataset.precompute(texts, cloud, edge, tmp_path / "b.safetensors", cfg,
                                          shard_size=4, progress=False)
    assert not (tmp_path / "b.safetensors.work").exists()  # ours: removed
