"""MetaTokenExtractor on tiny real llama / qwen2 / gemma3 models; layer map and space alignment.

Pooling is checked against a hand computation from ``output_hidden_states`` (one prompt at a time,
no padding), with the final norm swapped for an identity so that HF's last hidden state is the raw
output of the last block (the extractor's definition of every layer).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from _tiny_lm import make_model, make_texts, make_tokenizer
from torch import nn

from torch_curriculum.alignment import (
    align_identity,
    align_layer,
    align_relative,
    align_ridge,
    default_layer_map,
    relative_projection,
    resolve_layer_map,
    ridge_folds,
    select_anchors,
)
from torch_curriculum.extraction import MetaTokenExtractor, find_decoder, prompt_parts

SYSTEM = "analyze the dialogue context and generate task embeddings ."


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def models(tok):
    return {"llama": make_model("llama", 32, 4, len(tok), seed=0),
            "qwen2": make_model("qwen2", 48, 6, len(tok), seed=1),
            "gemma3": make_model("gemma3", 32, 3, len(tok), seed=2)}


def _hand_states(model, tok, text):
    """Raw block outputs [L, T, d] of one unpadded prompt, via output_hidden_states."""
    dec = find_decoder(model)
    norm = dec.norm
    dec.norm = nn.Identity()
    try:
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
    finally:
        dec.norm = norm
    hs = out.hidden_states
    assert len(hs) == len(dec.layers) + 1
    return torch.stack([h[0] for h in hs[1:]]).double(), ids[0]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_pooling_matches_hand_computation(arch, pooling, tok, models):
    model = models[arch]
    prompts = make_texts(7, seed=3)
    got = MetaTokenExtractor(model, tok, pooling, batch_size=3).extract(prompts)
    n_sys = len(tok(SYSTEM)["input_ids"])  # BOS + system words (word-level: exact boundary)
    assert got.shape == (7, len(find_decoder(model).layers), model.config.hidden_size)
    assert got.dtype == torch.float32
    for i, (text, _system) in enumerate(prompts):
        states, ids = _hand_states(model, tok, text)
        if pooling == "mean":
            # content tokens: after the first token and after the system prompt
            ref = states[:, n_sys:, :].mean(1)
            assert n_sys >= 1 and ids.shape[0] > n_sys
        else:
            ref = states[:, -1, :]
        np.testing.assert_allclose(got[i].double().numpy(), ref.numpy(), rtol=2e-4, atol=2e-5 * ref.abs().max().item())


def test_mean_excludes_first_token_without_system(tok, models):
    model = models["llama"]
    text = "hello there my friends"
    got = MetaTokenExtractor(model, tok, "mean").extract([text])[0].double()
    states, _ = _hand_states(model, tok, text)
    np.testing.assert_allclose(got.numpy(), states[:, 1:, :].mean(1).numpy(), rtol=2e-4, atol=1e-6)
    assert not torch.allclose(got, states.mean(1), rtol=1e-3, atol=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_padding_side_and_batch_size_invariance(arch, pooling, tok, models):
    model = models[arch]
    prompts = make_texts(11, seed=5)
    right = MetaTokenExtractor(model, tok, pooling, batch_size=4, padding_side="right").extract(prompts)
    left = MetaTokenExtractor(model, tok, pooling, batch_size=4, padding_side="left").extract(prompts)
    single = MetaTokenExtractor(model, tok, pooling, batch_size=1).extract(prompts)
    scale = single.abs().max().item()
    torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(single, right, rtol=1e-4, atol=1e-5 * scale)
    # the samples really differ (so the check above is not vacuous)
    assert (right[0] - right[1]).abs().max() > 1e-3 * scale


def test_lm_head_never_runs(tok, models):
    model = models["qwen2"]
    calls = []
    handle = model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    try:
        for pooling in ("mean", "last"):
            MetaTokenExtractor(model, tok, pooling, batch_size=2).extract(make_texts(5))
        meta = torch.randn(3, model.config.hidden_size)
        MetaTokenExtractor(model, tok, "meta", meta_embeddings=meta).extract(make_texts(3))
        assert calls == []
        # the hook itself works: a normal forward calls the head
        with torch.no_grad():
            model(input_ids=torch.tensor([[2, 5, 6]]))
        assert calls == [1]
    finally:
        handle.remove()


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_meta_pooling_matches_hand_computation(padding_side, tok, models):
    model = models["llama"]
    dec = find_decoder(model)
    g = torch.Generator().manual_seed(0)
    meta = torch.randn(4, model.config.hidden_size, generator=g) * 0.05
    prompts = make_texts(5, seed=9)
    got = MetaTokenExtractor(model, tok, "meta", meta_embeddings=meta, batch_size=3,
                             padding_side=padding_side).extract(prompts)
    assert got.shape == (5, 4, model.config.hidden_size)
    norm = dec.norm
    dec.norm = nn.Identity()
    try:
        for i, (text, _) in enumerate(prompts):
            ids = tok(text, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                emb = dec.get_input_embeddings()(ids)
                out = dec(inputs_embeds=torch.cat([emb, meta[None]], 1), output_hidden_states=True)
            ref = out.hidden_states[-1][0, -4:]
            torch.testing.assert_close(got[i], ref, rtol=1e-4, atol=1e-5)
    finally:
        dec.norm = norm


def test_callable_pooling(tok, models):
    model = models["qwen2"]

    def max_pool(hidden_states, attention_mask, info):
        assert len(hidden_states) == 6 and attention_mask.dtype == torch.bool
        m = info["content_mask"][:, :, None]
        return torch.stack([h.masked_fill(~m, -1e9).amax(1) for h in hidden_states], 1)

    prompts = make_texts(4, seed=2)
    got = MetaTokenExtractor(model, tok, max_pool, batch_size=2, padding_side="left").extract(prompts)
    n_sys = len(tok(SYSTEM)["input_ids"])
    for i, (text, _) in enumerate(prompts):
        states, _ = _hand_states(model, tok, text)
        torch.testing.assert_close(got[i].double(), states[:, n_sys:].amax(1), rtol=1e-4, atol=1e-5)

    bad = MetaTokenExtractor(model, tok, lambda h, m, info: h[0], batch_size=2)
    with pytest.raises(ValueError, match="with a fixed L and d"):
        bad.extract(prompts)
    worse = MetaTokenExtractor(model, tok, lambda h, m, info: h[0][:, 0], batch_size=2)
    with pytest.raises(ValueError, match=r"\[B=2, L, d\]"):
        worse.extract(prompts)


def test_accepts_prompt_objects_and_restores_training_mode(tok, models):
    from torch_curriculum.data import Prompt

    model = models["llama"]
    text, system = make_texts(1, seed=4)[0]
    ex = MetaTokenExtractor(model, tok, "mean")
    model.train()
    try:
        a = ex.extract([Prompt("s0", text, system)])
        assert model.training
    finally:
        model.eval()
    b = ex.extract([(text, system)])
    torch.testing.assert_close(a, b)
    # without the system part more tokens are averaged: a different vector
    c = ex.extract([text])
    assert not torch.allclose(a, c)


def test_errors(tok, models):
    model = models["llama"]
    with pytest.raises(ValueError, match="pooling must be one of"):
        MetaTokenExtractor(model, tok, "median")
    with pytest.raises(ValueError, match="needs meta_embeddings"):
        MetaTokenExtractor(model, tok, "meta")
    with pytest.raises(ValueError, match=r"shape \[M, 32\]"):
        MetaTokenExtractor(model, tok, "meta", meta_embeddings=torch.zeros(3, 31))
    with pytest.raises(ValueError, match="only used with pooling='meta'"):
        MetaTokenExtractor(model, tok, "mean", meta_embeddings=torch.zeros(3, 32))
    with pytest.raises(TypeError, match="decoder stack"):
        MetaTokenExtractor(nn.Linear(3, 3), tok)
    with pytest.raises(TypeError, match="prefix"):
        prompt_parts(("hello there", "goodbye"))
    long = (SYSTEM + " persona : " + "hello " * 40, SYSTEM)
    with pytest.raises(ValueError, match=r"prompt 1 has \d+ tokens > max_length=20"):
        MetaTokenExtractor(model, tok, max_length=20).extract([(SYSTEM + " hi", SYSTEM), long])
    # only the system prompt: nothing to average
    with pytest.raises(ValueError, match="no tokens after the first token and the system prompt"):
        MetaTokenExtractor(model, tok, "mean").extract([(SYSTEM, SYSTEM)])


def test_left_truncation_keeps_system_and_latest_tokens(tok, models):
    model = models["llama"]
    prompt = (SYSTEM + " persona : " + "hello " * 30 + "cats dogs", SYSTEM)
    ex = MetaTokenExtractor(model, tok, "last", max_length=20, truncation="left")
    toks = ex.tokenize([prompt])
    full = tok(prompt[0])["input_ids"]
    assert len(toks[0].ids) == 20 and toks[0].truncated == len(full) - 20
    n_sys = toks[0].system_tokens
    assert toks[0].ids[:n_sys] == full[:n_sys] and toks[0].ids[n_sys:] == full[-(20 - n_sys):]
    assert ex.last_truncated == [0]
    assert ex.extract([prompt]).shape == (1, 4, 32)


# ---------------------------------------------------------------------------------------- layer map
def test_default_layer_map_formula():
    for le, lc in [(30, 24), (24, 30), (4, 6), (4, 8), (3, 3), (1, 5), (30, 30)]:
        lm = default_layer_map(le, lc)
        assert lm == [round((j + 1) * lc / le) - 1 if round((j + 1) * lc / le) >= 1 else 0 for j in range(le)]
        assert lm[-1] == lc - 1 and all(0 <= m < lc for m in lm)
        assert all(b >= a for a, b in itertools.pairwise(lm))
    assert default_layer_map(30, 24)[:5] == [0, 1, 1, 2, 3]
    assert default_layer_map(3, 3) == [0, 1, 2]


def test_explicit_layer_map_validation():
    assert resolve_layer_map([0, 0, 5, 5], 4, 6) == [0, 0, 5, 5]
    assert resolve_layer_map(None, 4, 8) == [1, 3, 5, 7]
    with pytest.raises(ValueError, match="has 3 entries but the edge model has 4"):
        resolve_layer_map([0, 1, 2], 4, 6)
    with pytest.raises(ValueError, match=r"layer_map\[2\]=6 is outside"):
        resolve_layer_map([0, 1, 6, 2], 4, 6)
    with pytest.raises(ValueError, match="must be an int"):
        resolve_layer_map([0, 1, 2.0, 3], 4, 6)
    with pytest.raises(ValueError):
        default_layer_map(0, 3)


# ---------------------------------------------------------------------------------------- alignment
def test_relative_projection_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 7)) + 5.0  # a common offset, as in anisotropic LLM states
    anchors = select_anchors(20, 6, seed=3)
    got, centre = relative_projection(torch.from_numpy(x), anchors)
    a = anchors.numpy()
    mu = x[a].mean(0)
    xc = (x - mu) / np.linalg.norm(x - mu, axis=1, keepdims=True)
    np.testing.assert_allclose(got.numpy(), xc @ xc[a].T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(centre.numpy(), mu)
    assert got.shape == (20, 6) and np.allclose(got.numpy()[a, np.arange(6)], 1.0)


def test_relative_alignment_is_invariant_to_rotation_scale_and_shift():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(30, 8, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    other = 3.0 * base @ q + 7.0  # another model's space: rotated, scaled, shifted
    anchors = select_anchors(30, 10, seed=0)
    c, e, info = align_relative(base, other, anchors)
    torch.testing.assert_close(c, e)
    assert set(info) == {"cloud_centre", "edge_centre"}
    assert select_anchors(30, 10, seed=0).tolist() == anchors.tolist()
    assert select_anchors(30, 10, seed=1).tolist() != anchors.tolist()
    with pytest.raises(ValueError, match="num_anchors"):
        select_anchors(5, 6)


def test_ridge_is_cross_fitted_and_matches_closed_form():
    rng = np.random.default_rng(0)
    n, de, dc = 40, 5, 7
    e = rng.normal(size=(n, de))
    c = e @ rng.normal(size=(de, dc)) + 0.1 * rng.normal(size=(n, dc))
    cs, ep = align_ridge(torch.from_numpy(c), torch.from_numpy(e), alpha=0.5, folds=4, seed=2)
    fold = ridge_folds(n, 4, seed=2).numpy()
    assert sorted(np.bincount(fold).tolist()) == [10, 10, 10, 10]
    for f in range(4):
        tr, te = fold != f, fold == f
        me, se = e[tr].mean(0), e[tr].std(0)
        mc, sc = c[tr].mean(0), c[tr].std(0)
        ze, zc = (e[tr] - me) / se, (c[tr] - mc) / sc
        w = np.linalg.solve(ze.T @ ze + 0.5 * np.eye(de), ze.T @ zc)
        np.testing.assert_allclose(ep.numpy()[te], ((e[te] - me) / se) @ w, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(cs.numpy()[te], (c[te] - mc) / sc, rtol=1e-9, atol=1e-9)
    # disjointness: changing the cloud vectors of fold 0 does not change fold 0's predictions
    c2 = c.copy()
    c2[fold == 0] += 100.0
    _, ep2 = align_ridge(torch.from_numpy(c2), torch.from_numpy(e), alpha=0.5, folds=4, seed=2)
    np.testing.assert_allclose(ep2.numpy()[fold == 0], ep.numpy()[fold == 0], rtol=1e-9, atol=1e-9)
    assert not np.allclose(ep2.numpy()[fold == 1], ep.numpy()[fold == 1])
    # a near-linear relation is recovered: small residual in standardised space
    assert float(((cs - ep) ** 2).mean()) < 0.1
    # the dual form (n_train < d_edge) agrees with the primal one
    e_wide = rng.normal(size=(12, 30))
    c_wide = rng.normal(size=(12, 4))
    _, ep_w = align_ridge(torch.from_numpy(c_wide), torch.from_numpy(e_wide), alpha=2.0, folds=3)
    fold = ridge_folds(12, 3).numpy()
    tr, te = fold != 0, fold == 0
    me, se = e_wide[tr].mean(0), e_wide[tr].std(0)
    mc, sc = c_wide[tr].mean(0), c_wide[tr].std(0)
    ze, zc = (e_wide[tr] - me) / se, (c_wide[tr] - mc) / sc
    w = np.linalg.solve(ze.T @ ze + 2.0 * np.eye(30), ze.T @ zc)
    np.testing.assert_allclose(ep_w.numpy()[te], ((e_wide[te] - me) / se) @ w, rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match="folds"):
        align_ridge(torch.from_numpy(c[:3]), torch.from_numpy(e[:3]), folds=5)
    with pytest.raises(ValueError, match="alpha"):
        align_ridge(torch.from_numpy(c), torch.from_numpy(e), alpha=-1)


def test_identity_alignment():
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    ca, eb = align_identity(a, b)
    assert ca.dtype == torch.float64 and torch.equal(ca, a.double()) and torch.equal(eb, b.double())
    with pytest.raises(ValueError, match="needs equal widths, but the cloud is 8 wide and the edge 6"):
        align_identity(torch.randn(4, 8), b)
    with pytest.raises(ValueError, match="unknown alignment"):
        align_layer(a, b, "procrustes")
    with pytest.raises(ValueError, match="needs anchor indices"):
        align_layer(a, b, "relative")
