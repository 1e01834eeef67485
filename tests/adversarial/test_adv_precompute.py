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


def test_item5_empty_prompt_error_names_the_global_sample(tmp_path, setup):
    _texts, cloud, edge, cfg = setup
    prompts = make_texts(16, seed=4)
    system = prompts[0][1]
    prompts[13] = (system + "   ", system)  # whitespace-only content at global index 13 (shard 3 of size 4)
    with pytest.raises(ValueError, match=r"sample 13 \('sample_00000013'\) has no tokens after"):
        MetaTokenDifficultyDataset.precompute(prompts, cloud, edge, tmp_path / "w.safetensors", cfg, shard_size=4,
                                              progress=False, anchors=[0, 1, 2, 3])


def test_item11_token_ids_beyond_the_vocabulary(tmp_path, setup):
    texts, cloud, (_edge_model, tok), cfg = setup
    small = make_model("llama", 32, 4, 40, seed=0)  # 40 rows; the tokenizer has ~150 ids
    with pytest.raises(ValueError, match=r"token id \d+, outside the model's vocabulary \[0, 40\)"):
        MetaTokenDifficultyDataset.precompute(texts, cloud, (small, tok), tmp_path / "v.safetensors", cfg,
                                              progress=False)


def test_item11_chat_template_missing_and_huge_seed_fail_before_any_model_runs(tmp_path, setup):
    from torch_curriculum.data import DialogueSample

    texts, cloud, edge, cfg = setup
    samples = [DialogueSample(f"d{i}", ("i like tea",), ("hello there",), "hi") for i in range(6)]
    with pytest.raises(ValueError, match="cloud tokenizer has no chat template"):
        MetaTokenDifficultyDataset.precompute(samples, cloud, edge, tmp_path / "c.safetensors", cfg,
                                              use_chat_template=True, progress=False)
    with pytest.raises(ValueError, match=r"training.seed"):  # the config refuses it first ...
        CurriculumConfig.from_dict({"meta_token": {"num_anchors": 4}, "training": {"seed": 2**70}})
    big = CurriculumConfig.from_dict({"meta_token": {"num_anchors": 4}})
    big.training.seed = 2**70  # ... and precompute too, for a config edited after validation
    with pytest.raises(ValueError, match=r"training.seed must be an integer in \[0, 2\*\*63 - 1\)"):
        MetaTokenDifficultyDataset.precompute(texts, cloud, edge, tmp_path / "s.safetensors", big, progress=False)
    assert not list(tmp_path.iterdir())  # refused before any work dir or model pass


def test_item12_two_samples_is_an_error_few_samples_a_warning(tmp_path, setup):
    texts, cloud, edge, cfg = setup
    with pytest.raises(ValueError, match=r"at least 4 samples, got N=2"):
        MetaTokenDifficultyDataset.precompute(texts[:2], cloud, edge, tmp_path / "two.safetensors", cfg,
                                              progress=False)
    with pytest.warns(UserWarning, match=r"N=6 < 30 samples"):
        MetaTokenDifficultyDataset.precompute(texts[:6], cloud, edge, tmp_path / "six.safetensors", cfg,
                                              progress=False)


def test_item12_weights_digest_covers_every_weight(setup):
    import torch

    from torch_curriculum.precompute import _weights_digest

    _, (model, _tok), _, _ = setup
    before = _weights_digest(model)
    assert before.startswith("sha256:")  # small model: hashed in full, not sampled
    w = model.model.layers[1].mlp.up_proj.weight
    with torch.no_grad():
        old = w[7, 5].item()  # not among the sampled positions of the old digest (first 256, stride)
        w[7, 5] = old + 1e-3
        try:
            assert _weights_digest(model) != before
        finally:
            w[7, 5] = old
    assert _weights_digest(model) == before


def test_item9_temp_files_of_a_killed_run_are_removed(tmp_path, setup):
    texts, cloud, edge, cfg = setup
    out, labels = tmp_path / "d.safetensors", tmp_path / "l.jsonl"
    stale = [tmp_path / ".d.safetensors.k1l2e3d4.tmp", tmp_path / ".l.jsonl.abcd1234.tmp"]
    for p in stale:
        p.write_bytes(b"partial write of a killed run")
    (tmp_path / ".other.safetensors.abcd1234.tmp").write_bytes(b"not ours")
    MetaTokenDifficultyDataset.precompute(texts, cloud, edge, out, cfg, labels_path=labels, progress=False)
    assert not any(p.exists() for p in stale)
    assert (tmp_path / ".other.safetensors.abcd1234.tmp").exists()
    assert not (tmp_path / "d.safetensors.work").exists()
