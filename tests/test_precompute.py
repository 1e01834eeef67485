"""precompute.py: calibration pass, shard format, anchors that never score themselves, cross-fitting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny_lm import make_model, make_texts, make_tokenizer

from torch_curriculum.config import CurriculumConfig
from torch_curriculum.dataset import read_safetensors_header
from torch_curriculum.extraction import MetaTokenExtractor
from torch_curriculum.precompute import (
    DELTA,
    Calibration,
    meta_token_signals,
    precompute,
    signal_name,
)

N = 24
LM = [1, 2, 3, 5]  # default_layer_map(4, 6)


@pytest.fixture(scope="module")
def models():
    tok = make_tokenizer()
    return (make_model("qwen2", 48, 6, len(tok), seed=1), tok), (make_model("llama", 32, 4, len(tok), seed=0), tok)


@pytest.fixture(scope="module")
def texts():
    return make_texts(N, seed=5)


def _cfg(**mt):
    return CurriculumConfig.from_dict({"meta_token": {"num_anchors": 8, "batch_size": 4, **mt}})


def test_sample_distance_does_not_depend_on_being_an_anchor(tmp_path, models, texts):
    cloud, edge = models
    base = [1, 4, 7, 10, 13, 16]
    x = 20
    out = {}
    for name, anchors in (("drawn", sorted([*base, x])), ("not_drawn", base)):
        ds = precompute(texts, cloud, edge, tmp_path / f"{name}.safetensors", _cfg(), anchors=anchors,
                        shard_size=6, progress=False)
        out[name] = ds.raw_layer_diffs.clone()
        assert ds.provenance["alignment"]["anchors"] == anchors
    # sample x scores the same whether or not it was drawn (the anchors' batches differ: float noise only)
    torch.testing.assert_close(out["drawn"][x], out["not_drawn"][x], rtol=1e-6, atol=1e-9)
    # and the rule matters: scored in a space that contains itself, x would be far closer
    c = MetaTokenExtractor(*cloud).extract(texts).double()
    e = MetaTokenExtractor(*edge).extract(texts).double()
    a = torch.tensor(sorted([*base, x]))

    def rel(v):
        mu = v[a].mean(0)
        u = torch.nn.functional.normalize(v - mu, dim=-1)
        return u @ u[a].T

    self_scored = torch.stack([torch.linalg.vector_norm(rel(c[:, m]) - rel(e[:, j]), dim=1)[x]
                               for j, m in enumerate(LM)])
    assert (self_scored - out["drawn"][x]).abs().max() > 1e-3


def test_mahalanobis_and_ridge_cross_fitted_against_numpy(tmp_path, models, texts):
    """ridge + l2: sample i of fold f is scored by a map fitted on the other folds' calibration samples."""
    cloud, edge = models
    ds = precompute(texts, cloud, edge, tmp_path / "r.safetensors", _cfg(alignment="ridge"), shard_size=7,
                    progress=False, calibration_size=16)
    al = ds.provenance["alignment"]
    assert al["calibration_size"] == 16 and al["folds"] == 5
    from torch_curriculum.alignment import ridge_folds

    fold = ridge_folds(N, 5, 0).numpy()
    g = torch.Generator().manual_seed(1)
    fit = torch.randperm(N, generator=g)[:16].sort().values.numpy()
    c = MetaTokenExtractor(*cloud).extract(texts).double().numpy()[:, LM]
    e = MetaTokenExtractor(*edge).extract(texts).double().numpy()
    ref = np.empty((N, 4))
    for i in range(N):
        tr = fit[fold[fit] != fold[i]]
        for j in range(4):
            ct, et = c[tr, j], e[tr, j]
            mu_c, sd_c = ct.mean(0), np.where(ct.std(0) > 1e-12, ct.std(0), 1)
            mu_e, sd_e = et.mean(0), np.where(et.std(0) > 1e-12, et.std(0), 1)
            ze, zc = (et - mu_e) / sd_e, (ct - mu_c) / sd_c
            w = np.linalg.solve(ze.T @ ze + np.eye(32), ze.T @ zc) if len(tr) >= 32 else \
                ze.T @ np.linalg.solve(ze @ ze.T + np.eye(len(tr)), zc)
            ref[i, j] = np.linalg.norm((c[i, j] - mu_c) / sd_c - ((e[i, j] - mu_e) / sd_e) @ w)
    np.testing.assert_allclose(ds.raw_layer_diffs.numpy(), ref, rtol=1e-4, atol=1e-6)


def test_mahalanobis_relative_is_nearly_independent_of_anchor_draw(tmp_path, models, texts):
    cloud, edge = models
    base, x = [0, 3, 6, 9, 12], 15
    got = [precompute(texts, cloud, edge, tmp_path / f"m{k}.safetensors", _cfg(distance_metric="mahalanobis"),
                      anchors=a, progress=False, calibration_size=N).raw_layer_diffs[x].clone()
           for k, a in enumerate((base, sorted([*base, x])))]
    assert bool(torch.isfinite(got[0]).all()) and bool((got[0] > 0).all())
    # the anchor's covariance is fitted in its K-1 coordinates of the K-anchor space (centre shift ~1/K):
    # close to, not bit-equal with, the not-drawn value (see the precompute module docstring)
    torch.testing.assert_close(got[0], got[1], rtol=0.15, atol=0)


def test_shards_hold_named_per_sample_signals_only(tmp_path, models, texts):
    cloud, edge = models
    out = tmp_path / "s.safetensors"
    ds = precompute(texts, cloud, edge, out, _cfg(), shard_size=10, progress=False, keep_work_dir=True)
    work = tmp_path / "s.safetensors.work"
    shards = sorted(work.glob("shard_*.safetensors"))
    assert len(shards) == 3
    rows = 0
    for p in shards:
        h, _ = read_safetensors_header(p)
        names = sorted(k for k in h if k != "__metadata__")
        assert names == ["sample_ids.offsets", "sample_ids.utf8", f"signals.{DELTA}",
                         *(f"signals.{signal_name(m)}" for m in ("coord_softmax_kl", "cosine", "l2"))]
        n = h[f"signals.{signal_name('l2')}"]["shape"][0]
        assert h[f"signals.{signal_name('coord_softmax_kl')}"]["shape"] == [n, 4] and h[f"signals.{signal_name('l2')}"]["dtype"] == "F64"
        assert h[f"signals.{DELTA}"]["shape"] == [n, 4, 8] and h[f"signals.{DELTA}"]["dtype"] == "F32"
        rows += n
        assert p.stat().st_size < 4096 + n * (3 * 4 * 8 + 4 * 8 * 4 + 40)  # no [L, d] vectors
    assert rows == N
    cal, _ = read_safetensors_header(work / "calibration.safetensors")
    assert cal["cloud"]["shape"] == [8, 4, 48] and cal["edge"]["shape"] == [8, 4, 32]
    assert len(ds) == N


def test_meta_token_signals_is_a_plain_function(models, texts):
    cloud, edge = models
    c = MetaTokenExtractor(*cloud).extract(texts)[:, LM]
    e = MetaTokenExtractor(*edge).extract(texts)
    anchors = torch.tensor([2, 5, 8, 11])
    calib = Calibration(anchors, c[anchors], e[anchors], alignment="relative", metric="cosine", anchors=anchors)
    sig = meta_token_signals(c[:6], e[:6], torch.arange(6), calib)
    assert set(sig) == {signal_name(m) for m in ("l2", "cosine", "coord_softmax_kl")} | {DELTA}
    d = sig[signal_name("cosine")]
    assert d.shape == (6, 4) and d.dtype == torch.float64 and sig[DELTA].shape == (6, 4, 4)
    # a non-anchor row against a hand computation
    def rel(v, a):
        mu = v[a].double().mean(0)
        u = torch.nn.functional.normalize(v.double() - mu, dim=-1)
        return u @ u[a].T
    j = 1
    ca, ea = rel(c[:, j], anchors)[0], rel(e[:, j], anchors)[0]
    expect = 1 - torch.dot(ca, ea) / (ca.norm() * ea.norm())
    torch.testing.assert_close(d[0, j], expect)
    torch.testing.assert_close(sig[DELTA][0, j], (ca - ea).float())
    # row 2 is anchor 0: its own coordinate is left out (0 in the delta)
    assert float(sig[DELTA][2, j, 0]) == 0.0 and bool((sig[DELTA][2, j, 1:] != 0).all())
    with pytest.raises(ValueError, match=r"must be \[n, L, d_cloud\]"):
        meta_token_signals(c[:6], e[:5], torch.arange(6), calib)


def test_one_extraction_serves_every_metric(tmp_path, models, texts):
    """The experiment harness scores l2, cosine, kl and mahalanobis from one shared work dir."""
    cloud, edge = models
    work = tmp_path / "work_mean"
    files = {}
    for metric in ("l2", "cosine", "coord_softmax_kl", "mahalanobis"):
        ran: list[int] = []
        files[metric] = precompute(texts, cloud, edge, tmp_path / f"{metric}.safetensors",
                                   _cfg(distance_metric=metric), shard_size=10, progress=False, work_dir=work,
                                   keep_work_dir=True, calibration_size=N, _after_shard=ran.append)
        assert ran == ([0, 1, 2] if metric == "l2" else [])  # the shards of the first run are reused
        assert files[metric].provenance["metric"] == metric
    # against a direct computation in the anchor space (non-anchor rows, all K coordinates)
    c = MetaTokenExtractor(*cloud).extract(texts).double()[:, LM]
    e = MetaTokenExtractor(*edge).extract(texts).double()
    anchors = torch.tensor(files["l2"].provenance["alignment"]["anchors"])

    def rel(v):
        mu = v[anchors].mean(0)
        u = torch.nn.functional.normalize(v - mu, dim=-1)
        return u @ u[anchors].T

    j = 2
    ca, ea = rel(c[:, j]), rel(e[:, j])
    free = [i for i in range(N) if i not in anchors.tolist()]
    cos = 1 - torch.nn.functional.cosine_similarity(ca, ea, dim=-1)
    torch.testing.assert_close(files["cosine"].raw_layer_diffs[free, j], cos[free], rtol=1e-4, atol=1e-6)
    pc, pe = torch.log_softmax(ca, -1), torch.log_softmax(ea, -1)
    kl = (pc.exp() * (pc - pe)).sum(-1)
    torch.testing.assert_close(files["coord_softmax_kl"].raw_layer_diffs[free, j], kl[free], rtol=1e-4, atol=1e-6)
    # mahalanobis: Ledoit-Wolf (Ledoit & Wolf 2004, as sklearn) of the deltas of non-anchor samples of other folds
    from torch_curriculum.alignment import ridge_folds

    def ledoit_wolf(x):
        x = x - x.mean(0)
        n, d = x.shape
        s = x.T @ x / n
        mu = np.trace(s) / d
        dist = ((s - mu * np.eye(d)) ** 2).sum() / d
        beta = min(sum(((np.outer(r, r) - s) ** 2).sum() for r in x) / d / n**2, dist)
        return (beta / dist) * mu * np.eye(d) + (1 - beta / dist) * s

    fold = ridge_folds(N, 5, 0)
    delta = (ca - ea).numpy()
    i = free[0]
    train = [t for t in free if fold[t] != fold[i]]
    prec = np.linalg.pinv(ledoit_wolf(delta[train]))
    ref = float(np.sqrt(delta[i] @ prec @ delta[i]))
    assert files["mahalanobis"].raw_layer_diffs[i, j].item() == pytest.approx(ref, rel=1e-3)


def _count_forwards(model):
    calls = [0]  # the extractor runs the decoder stack, not the LM head
    handle = model.get_decoder().register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls, handle


@pytest.mark.parametrize("alignment", ["relative", "ridge"])
def test_one_pass_writes_every_metric_byte_identical_to_separate_runs(tmp_path, models, texts, alignment):
    cloud, edge = models
    kw = dict(shard_size=10, progress=False, calibration_size=N)
    metrics = ("l2", "cosine", "mahalanobis")
    sep_calls = []
    for m in metrics:
        calls, h = _count_forwards(cloud[0])
        precompute(texts, cloud, edge, tmp_path / f"sep_{m}.safetensors", _cfg(distance_metric=m, alignment=alignment),
                   **kw)
        h.remove()
        sep_calls.append(calls[0])
    calls, h = _count_forwards(cloud[0])
    ecalls, eh = _count_forwards(edge[0])
    ds = precompute(texts, cloud, edge, tmp_path / "one_l2.safetensors", _cfg(alignment=alignment),
                    outputs={"cosine": tmp_path / "one_cosine.safetensors",
                             "mahalanobis": tmp_path / "one_mahalanobis.safetensors"}, **kw)
    h.remove()
    eh.remove()
    # the models ran once over the samples: as many batches as one single-metric run
    assert calls[0] == sep_calls[0] == ecalls[0] > 0
    assert ds.provenance["signal"] == signal_name("l2")
    for m in metrics:
        a, b = tmp_path / f"sep_{m}.safetensors", tmp_path / f"one_{m}.safetensors"
        if alignment == "relative":  # the shards do not depend on the set of metrics: same run, same bytes
            assert a.read_bytes() == b.read_bytes(), m
        from safetensors.torch import load_file

        ta, tb = load_file(a), load_file(b)
        assert sorted(ta) == sorted(tb)
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (m, k)
        from torch_curriculum.dataset import MetaTokenDifficultyDataset

        pa, pb = MetaTokenDifficultyDataset(a).provenance, MetaTokenDifficultyDataset(b).provenance
        assert pb["metric"] == m and pb["signal"] == signal_name(m)
        assert {k: v for k, v in pa.items() if k != "run_key"} == {k: v for k, v in pb.items() if k != "run_key"}
    # a second call with the same inputs opens the files without running the models
    calls, h = _count_forwards(cloud[0])
    precompute(texts, cloud, edge, tmp_path / "one_l2.safetensors", _cfg(alignment=alignment),
               outputs={"cosine": tmp_path / "one_cosine.safetensors"}, **kw) if alignment == "relative" else None
    h.remove()
    assert calls[0] == 0


def test_outputs_killed_and_resumed_are_byte_identical(tmp_path, models, texts):
    cloud, edge = models
    outs = {"coord_softmax_kl": tmp_path / "a_kl.safetensors", "mahalanobis": tmp_path / "a_m.safetensors"}
    precompute(texts, cloud, edge, tmp_path / "a.safetensors", _cfg(), outputs=outs, shard_size=7, progress=False)

    def boom(i):
        if i == 1:
            raise KeyboardInterrupt

    outs_b = {"coord_softmax_kl": tmp_path / "b_kl.safetensors", "mahalanobis": tmp_path / "b_m.safetensors"}
    with pytest.raises(KeyboardInterrupt):
        precompute(texts, cloud, edge, tmp_path / "b.safetensors", _cfg(), outputs=outs_b, shard_size=7,
                   progress=False, _after_shard=boom)
    ran: list[int] = []
    precompute(texts, cloud, edge, tmp_path / "b.safetensors", _cfg(), outputs=outs_b, shard_size=7, progress=False,
               _after_shard=ran.append)
    assert ran == [2, 3]  # shards 0 and 1 were reused
    for x, y in [("a", "b"), ("a_kl", "b_kl"), ("a_m", "b_m")]:
        assert (tmp_path / f"{x}.safetensors").read_bytes() == (tmp_path / f"{y}.safetensors").read_bytes()


def test_outputs_bad_input_is_named(tmp_path, models, texts):
    cloud, edge = models
    with pytest.raises(ValueError, match=r"outputs: unknown signal 'kl'"):
        precompute(texts, cloud, edge, tmp_path / "x.safetensors", _cfg(), outputs={"kl": tmp_path / "k"},
                   progress=False)
    with pytest.raises(ValueError, match=r"outputs\['cosine'\].*primary path"):
        precompute(texts, cloud, edge, tmp_path / "x.safetensors", _cfg(),
                   outputs={"cosine": tmp_path / "x.safetensors"}, progress=False)
