"""precompute with ``meta_token.signal``: cross-model signals through the shard/merge pipeline."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from _tiny_lm import WORDS, make_model, make_tokenizer

from torch_curriculum.config import SIGNALS, ConfigError, CurriculumConfig
from torch_curriculum.crossmodel import SIGNALS as XM_SIGNALS
from torch_curriculum.crossmodel import CrossModelSignals
from torch_curriculum.data import DialogueSample, format_prompts
from torch_curriculum.precompute import precompute

N = 24


@pytest.fixture(scope="module")
def models():
    tok = make_tokenizer()
    return (make_model("qwen2", 48, 6, len(tok), seed=1), tok), (make_model("llama", 32, 4, len(tok), seed=0), tok)


@pytest.fixture(scope="module")
def dialogues():
    rng = random.Random(3)

    def words(a, b):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(a, b)))

    return [DialogueSample(f"d{i:03d}", (words(3, 6),), tuple(words(2, 8) for _ in range(rng.randint(1, 3))),
                           words(2, 10)) for i in range(N)]


def _cfg(**mt):
    return CurriculumConfig.from_dict({"meta_token": {"num_anchors": 8, "batch_size": 4, "max_length": 128,
                                                      "knn_k": 3, **mt}})


def test_config_signal_names_and_validation():
    assert ("meta", *XM_SIGNALS) == SIGNALS
    with pytest.raises(ConfigError, match=r"meta_token.pooling: signal='uld' .* got pooling='meta'"):
        CurriculumConfig.from_dict({"meta_token": {"signal": "uld", "pooling": "meta"}})
    with pytest.raises(ConfigError, match=r"meta_token.signal: must be one of"):
        CurriculumConfig.from_dict({"meta_token": {"signal": "bpb"}})
    with pytest.raises(ConfigError, match=r"meta_token.knn_k"):
        CurriculumConfig.from_dict({"meta_token": {"knn_k": 0}})


def test_logit_lens_gap_equals_crossmodel_compute(tmp_path, models, dialogues):
    cloud, edge = models
    ds = precompute(dialogues, cloud, edge, tmp_path / "g.safetensors", _cfg(signal="logit_lens_gap"),
                    shard_size=10, progress=False,
                    outputs={"uld": tmp_path / "u.safetensors", "edge_bpb": tmp_path / "e.safetensors"})
    xm = CrossModelSignals(cloud[0], cloud[1], edge[0], edge[1], batch_size=4, max_length=128, truncation="left")
    mt = _cfg().meta_token
    prompts = format_prompts(dialogues, system_prompt=mt.system_prompt, max_context_turns=mt.max_context_turns,
                             tokenizer=edge[1], use_chat_template=False, max_length=128)
    ref = xm.compute([(p, s.response) for p, s in zip(prompts, dialogues)], ["logit_lens_gap", "uld"])
    np.testing.assert_allclose(ds.raw_layer_diffs.numpy(), ref["logit_lens_gap"], rtol=1e-5, atol=1e-6)
    from torch_curriculum.dataset import MetaTokenDifficultyDataset

    u = MetaTokenDifficultyDataset(tmp_path / "u.safetensors")
    np.testing.assert_allclose(u.raw_layer_diffs.numpy(), ref["uld"], rtol=1e-5, atol=1e-6)
    e = MetaTokenDifficultyDataset(tmp_path / "e.safetensors")
    np.testing.assert_allclose(e.raw_layer_diffs.numpy(), ref["edge_bpb"], rtol=1e-5, atol=1e-6)
    assert ds.provenance["signal"] == "logit_lens_gap" and ds.provenance["meta_signal"] == "logit_lens_gap"
    assert u.provenance["signal"] == "uld" and ds.provenance["crossmodel"]["signals"] == ["edge_bpb",
                                                                                         "logit_lens_gap", "uld"]
    assert len(ds) == N


def test_response_signal_differs_from_meta_and_knn_never_scores_itself(tmp_path, models, dialogues):
    cloud, edge = models
    meta = precompute(dialogues, cloud, edge, tmp_path / "m.safetensors", _cfg(), shard_size=10, progress=False)
    resp = precompute(dialogues, cloud, edge, tmp_path / "r.safetensors", _cfg(signal="response"), shard_size=10,
                      progress=False, outputs={"knn_agreement": tmp_path / "k.safetensors",
                                               "mahalanobis": tmp_path / "rm.safetensors"})
    assert resp.provenance["signal"] == "response_meta_token_distance.l2"
    assert meta.provenance["signal"] == "meta_token_distance.l2" and "meta_signal" not in meta.provenance
    assert not torch.allclose(resp.raw_layer_diffs, meta.raw_layer_diffs)
    # the response vectors, against crossmodel directly, in the anchor space of the calibration
    xm = CrossModelSignals(cloud[0], cloud[1], edge[0], edge[1], batch_size=4, max_length=128, truncation="left")
    mt = _cfg().meta_token
    prompts = format_prompts(dialogues, system_prompt=mt.system_prompt, max_context_turns=mt.max_context_turns,
                             tokenizer=edge[1], use_chat_template=False, max_length=128)
    out = xm.compute([(p, s.response) for p, s in zip(prompts, dialogues)], ["response"])
    rc, re_ = torch.from_numpy(out["response_cloud"]), torch.from_numpy(out["response_edge"])
    anchors = torch.tensor(resp.provenance["alignment"]["anchors"])

    def rel(v):
        mu = v[anchors].mean(0)
        u = torch.nn.functional.normalize(v - mu, dim=-1)
        return u @ u[anchors].T

    free = [i for i in range(N) if i not in anchors.tolist()]
    for j in range(4):
        d = torch.linalg.vector_norm(rel(rc[:, j]) - rel(re_[:, j]), dim=-1)
        torch.testing.assert_close(resp.raw_layer_diffs[free, j], d[free], rtol=1e-4, atol=1e-5)
    from torch_curriculum.crossmodel import KnnReference, knn_agreement
    from torch_curriculum.dataset import MetaTokenDifficultyDataset

    k = MetaTokenDifficultyDataset(tmp_path / "k.safetensors")
    ids = [s.sample_id for s in dialogues]
    ref = KnnReference(rc[anchors].numpy(), re_[anchors].numpy(), tuple(ids[a] for a in anchors.tolist()))
    want = knn_agreement(rc.numpy(), re_.numpy(), ref, k=3, self_index=ref.self_index(ids))
    np.testing.assert_allclose(k.raw_layer_diffs.numpy(), want, atol=1e-12)
    assert k.provenance["knn_reference"]["sample_index"] == anchors.tolist()
    assert MetaTokenDifficultyDataset(tmp_path / "rm.safetensors").provenance["metric"] == "mahalanobis"


def test_signal_input_errors(tmp_path, models, dialogues):
    cloud, edge = models
    with pytest.raises(ValueError, match=r"reads the response: pass DialogueSamples"):
        precompute([format_prompts([d], tokenizer=edge[1])[0] for d in dialogues], cloud, edge,
                   tmp_path / "x.safetensors", _cfg(signal="uld"), progress=False)
    with pytest.raises(ValueError, match=r"outputs: unknown signal 'knn_agreement'"):
        precompute(dialogues, cloud, edge, tmp_path / "x.safetensors", _cfg(),
                   outputs={"knn_agreement": tmp_path / "k.safetensors"}, progress=False)
    with pytest.raises(ValueError, match=r"meta_token.knn_k=10: the k-NN reference set is the 8 calibration"):
        precompute(dialogues, cloud, edge, tmp_path / "x.safetensors", _cfg(signal="knn_agreement", knn_k=10),
                   progress=False)


def test_response_family_computes_the_arrays_in_the_vectors_pass(tmp_path, models, dialogues):
    cloud, edge = models
    calls = [0]
    h = cloud[0].get_decoder().register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        counts = {}
        for name, cfg, outs in (("resp", _cfg(signal="response"), None), ("uld", _cfg(signal="uld"), None),
                                ("both", _cfg(signal="response"), {"uld": tmp_path / "both_uld.safetensors"})):
            calls[0] = 0
            precompute(dialogues, cloud, edge, tmp_path / f"{name}.safetensors", cfg, shard_size=10, progress=False,
                       outputs=outs)
            counts[name] = calls[0]
    finally:
        h.remove()
    from torch_curriculum.dataset import MetaTokenDifficultyDataset

    fused = MetaTokenDifficultyDataset(tmp_path / "both_uld.safetensors").raw_layer_diffs
    alone = MetaTokenDifficultyDataset(tmp_path / "uld.safetensors").raw_layer_diffs
    torch.testing.assert_close(fused, alone, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(MetaTokenDifficultyDataset(tmp_path / "both.safetensors").raw_layer_diffs,
                               MetaTokenDifficultyDataset(tmp_path / "resp.safetensors").raw_layer_diffs)
    # only the calibration samples of each shard (reused vectors) run again for the arrays
    assert counts["resp"] < counts["both"] < counts["resp"] + counts["uld"], counts
