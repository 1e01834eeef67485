"""End to end on the real bundled models: SmolLM2-135M (edge, llama, 30 x 576) and
Qwen2.5-Coder-0.5B (cloud, qwen2, 24 x 896) over 32 real dialogues."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torch_curriculum import read_labels
from torch_curriculum.config import CurriculumConfig
from torch_curriculum.dataset import MetaTokenDifficultyDataset

pytestmark = pytest.mark.integration

SPC_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "synthetic-persona-chat" / \
    "Synthetic-Persona-Chat_valid.csv"


@pytest.fixture(scope="module")
def dialogues():
    from torch_curriculum.data import read_dialogues

    if SPC_CSV.is_file():
        samples = read_dialogues(SPC_CSV)
    else:
        from torch_curriculum.bundled import load_chitchat

        samples = load_chitchat(max_samples=200)
    # every 5th response turn: 32 samples from several conversations
    return samples[::5][:32]


def test_precompute_bundled_models_end_to_end(tmp_path, bundled_pair, dialogues):
    (cloud, ctok), (edge, etok) = bundled_pair
    assert len(dialogues) == 32
    cfg = CurriculumConfig.from_dict({"meta_token": {"batch_size": 8, "max_length": 256, "max_context_turns": 2}})
    out = tmp_path / "difficulty.safetensors"
    ds = MetaTokenDifficultyDataset.precompute(dialogues, (cloud, ctok), (edge, etok), out, cfg,
                                               labels_path=tmp_path / "labels.jsonl", shard_size=16,
                                               progress=False)
    assert ds.layer_diffs.shape == (32, 30) and ds.raw_layer_diffs.shape == (32, 30)
    assert bool(torch.isfinite(ds.raw_layer_diffs).all()) and bool((ds.raw_layer_diffs > 0).all())
    # rank normalisation: every layer column is a permutation-like set of ranks in (0, 1]
    assert float(ds.layer_diffs.min()) > 0 and float(ds.layer_diffs.max()) == 1.0
    assert set(ds.stage.tolist()) == {1, 2, 3}
    assert ds.sample_ids == [s.sample_id for s in dialogues]
    # samples really differ in difficulty (not a constant score)
    assert float(ds.difficulty.std()) > 0.01
    p = ds.provenance
    assert p["models"]["edge"]["model_type"] == "llama" and p["models"]["edge"]["num_model_layers"] == 30
    assert p["models"]["cloud"]["model_type"] == "qwen2" and p["models"]["cloud"]["hidden_size"] == 896
    assert p["models"]["cloud"]["source"]["sha256"] == \
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert p["layer_map"][-1] == 23 and len(p["layer_map"]) == 30
    assert p["alignment"]["method"] == "relative" and p["alignment"]["num_anchors"] == 32  # K capped at N
    assert p["inputs"]["system_prompt"] == "Analyze the dialogue context and generate task embeddings."
    from torch_curriculum.data import data_fingerprint

    assert ds.metadata["fingerprint"] == data_fingerprint(dialogues)
    records, header = read_labels(tmp_path / "labels.jsonl")
    assert len(records) == 32 and set(records[0]["meta_token_diff"]) == {f"layer_{j}" for j in range(30)}
    assert [r["curriculum_stage"] for r in records] == ds.stage.tolist()
    assert header["metadata"]["models"]["edge"]["hidden_size"] == 576
