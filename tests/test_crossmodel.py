"""Cross-model signals (torch_curriculum.crossmodel) on tiny random llama / qwen2 / gemma3 models of
different widths, depths and vocabularies, each checked against an independent computation:
``labels=`` losses, ``output_hidden_states`` + the model's own norm and head, numpy / hand references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _tiny_lm import WORDS, make_model, make_texts, make_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import PreTrainedTokenizerFast

from torch_curriculum.crossmodel import (
    SIGNALS,
    CrossModelSignals,
    KnnReference,
    LogitLens,
    SharedVocabulary,
    compute_signals,
    knn_agreement,
    shared_vocab_kl,
    token_texts,
    uld_distance,
)
from torch_curriculum.data import SampleError
from torch_curriculum.extraction import find_decoder


def _bpe_tokenizer(vocab_size: int, seed: int) -> PreTrainedTokenizerFast:
    """A real byte-level BPE tokenizer (GPT-2 style), trained offline on the tiny corpus."""
    corpus = [t for t, _ in make_texts(300, seed=seed)]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|pad|>", "<|end|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|pad|>", eos_token="<|end|>")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls on a shared, loaded machine: one intra-op thread is several times faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pair():
    """cloud: qwen2, 48 wide, 6 layers, BPE vocab 320; edge: llama, 32 wide, 4 layers, BPE vocab 280."""
    ctok, etok = _bpe_tokenizer(320, seed=11), _bpe_tokenizer(280, seed=12)
    cloud = make_model("qwen2", hidden=48, layers=6, vocab=len(ctok), seed=1)
    edge = make_model("llama", hidden=32, layers=4, vocab=len(etok), seed=2)
    return cloud, ctok, edge, etok


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(0)
    out = []
    for i, (text, system) in enumerate(make_texts(11, seed=3)):
        resp = " ".join(rng.choice(WORDS, size=2 + (i * 3) % 9))
        out.append(((text, system), resp))
    return out


def _raw_states(model, ids: list[int]) -> torch.Tensor:
    """Raw block outputs [L, T, d] of one unpadded sequence via output_hidden_states (norm disabled
    so the last entry is the raw block output too)."""
    dec = find_decoder(model)
    norm = dec.norm
    dec.norm = nn.Identity()
    try:
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    finally:
        dec.norm = norm
    return torch.stack([h[0] for h in hs[1:]]).double()


def _lens_logprobs(model, h: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary float64 log-probs of the model's own norm + head on raw states [..., d]."""
    dec = find_decoder(model)
    with torch.no_grad():
        logits = model.get_output_embeddings()(dec.norm(h.float())).double()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.log_softmax(logits, -1)


# ------------------------------------------------------------------------------------------ bpb


@pytest.mark.parametrize("edge_arch", ["llama", "qwen2", "gemma3"])
def test_last_layer_bpb_equals_the_models_own_labels_loss_per_byte(edge_arch, pair, samples):
    cloud, ctok, _, etok = pair
    if edge_arch == "gemma3":       # also a word-level tokenizer of a third kind and size on the edge
        etok = make_tokenizer()
    edge = make_model(edge_arch, hidden=32, layers=3, vocab=len(etok), seed=4)
    sig = CrossModelSignals(cloud, ctok, edge, etok, batch_size=4, vocab_chunk=37)   # chunks cut the vocab
    out = sig.compute(samples, ["logit_lens_gap"])
    for side, model, bpb in (("edge", edge, out["edge_bpb"][:, -1]), ("cloud", cloud, out["cloud_bpb"][:, -1])):
        for i, ((text, _), resp) in enumerate(samples):
            tok = sig.tokenizers[side]
            p_ids = tok(text + "\nYou:")["input_ids"]
            r_ids = tok(" " + resp, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([p_ids + r_ids])
            labels = ids.clone()
            labels[0, :len(p_ids)] = -100
            with torch.no_grad():
                loss = float(model(input_ids=ids, labels=labels).loss)     # mean nats per response token
            ref = loss * len(r_ids) / (len((" " + resp).encode()) * math.log(2))
            assert bpb[i] == pytest.approx(ref, rel=1e-5), (side, i)
    np.testing.assert_allclose(out["logit_lens_gap"], out["edge_bpb"] - out["cloud_bpb"], rtol=1e-12)


def test_every_layer_bpb_matches_output_hidden_states_lens_and_layer_map(pair, samples):
    cloud, ctok, edge, etok = pair
    layer_map = [0, 2, 2, 5]
    sig = CrossModelSignals(cloud, ctok, edge, etok, layer_map=layer_map, batch_size=3, vocab_chunk=64)
    out = sig.compute(samples, ["logit_lens_gap"])
    for i, ((text, _), resp) in enumerate(samples[:5]):
        nbytes = len((" " + resp).encode())
        for side, model, tok, layers, got in (("edge", edge, etok, range(4), out["edge_bpb"]),
                                              ("cloud", cloud, ctok, layer_map, out["cloud_bpb"])):
            p_ids = tok(text + "\nYou:")["input_ids"]
            r_ids = tok(" " + resp, add_special_tokens=False)["input_ids"]
            hs = _raw_states(model, p_ids + r_ids)
            for j, layer in enumerate(layers):
                lp = _lens_logprobs(model, hs[layer, len(p_ids) - 1:-1])
                ce = -lp[torch.arange(len(r_ids)), torch.tensor(r_ids)].sum().item()
                assert got[i, j] == pytest.approx(ce / nbytes / math.log(2), rel=1e-5), (side, i, j)


def test_batch_composition_and_order_do_not_change_a_sample(pair, samples):
    cloud, ctok, edge, etok = pair
    names = ["logit_lens_gap", "vocab_kl", "uld", "response"]
    full = CrossModelSignals(cloud, ctok, edge, etok, batch_size=4).compute(samples, names)
    alone = CrossModelSignals(cloud, ctok, edge, etok, batch_size=1).compute(samples[::-1], names)
    for k in ("logit_lens_gap", "vocab_kl", "uld", "response_edge", "response_cloud"):
        np.testing.assert_allclose(full[k], alone[k][::-1], rtol=1e-4, atol=1e-6, err_msg=k)


def test_edge_bpb_alone_runs_no_cloud_pass(pair, samples):
    cloud, ctok, edge, etok = pair
    sig = CrossModelSignals(cloud, ctok, edge, etok)
    calls = []
    handle = find_decoder(cloud).register_forward_hook(lambda *a: calls.append(1))
    try:
        out = sig.compute(samples, "edge_bpb")
    finally:
        handle.remove()
    assert calls == [] and set(out) == {"edge_bpb", "response_bytes"}
    both = sig.compute(samples, ["logit_lens_gap", "uld", "vocab_kl", "response"])
    np.testing.assert_allclose(out["edge_bpb"], both["edge_bpb"], rtol=1e-12)


def test_one_forward_pass_per_model_per_batch_feeds_every_signal(pair, samples):
    cloud, ctok, edge, etok = pair
    sig = CrossModelSignals(cloud, ctok, edge, etok, batch_size=4, knn_k=3)
    ref = sig.reference(samples[:8], [f"s{i}" for i in range(8)])
    counts = {"cloud": 0, "edge": 0}
    hooks = [find_decoder(m).register_forward_hook(lambda *a, s=s: counts.__setitem__(s, counts[s] + 1))
             for s, m in (("cloud", cloud), ("edge", edge))]
    try:
        out = sig.compute(samples, list(SIGNALS), reference=ref, sample_ids=[f"s{i}" for i in range(len(samples))])
    finally:
        for h in hooks:
            h.remove()
    assert counts == {"cloud": 3, "edge": 3}            # 11 samples / batch 4
    for k in ("logit_lens_gap", "edge_bpb", "cloud_bpb", "vocab_kl", "uld", "knn_agreement"):
        assert out[k].shape == (len(samples), 4) and np.isfinite(out[k]).all(), k
    assert out["response_cloud"].shape == (len(samples), 4, 48) and out["response_edge"].shape == (len(samples), 4, 32)


# ------------------------------------------------------------------------------------------ pooling


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_response_pooling_matches_output_hidden_states(pooling, pair, samples):
    cloud, ctok, edge, etok = pair
    sig = CrossModelSignals(cloud, ctok, edge, etok, pooling=pooling, batch_size=4)
    out = sig.compute(samples, "response")
    for i, ((text, _), resp) in enumerate(samples):
        for model, tok, got, layers in ((edge, etok, out["response_edge"], range(4)),
                                        (cloud, ctok, out["response_cloud"], sig.layer_map)):
            p_ids = tok(text + "\nYou:")["input_ids"]
            r_ids = tok(" " + resp, add_special_tokens=False)["input_ids"]
            hs = _raw_states(model, p_ids + r_ids)[list(layers)]          # [L, T, d]
            resp_h = hs[:, len(p_ids):]
            ref = resp_h.mean(1) if pooling == "mean" else resp_h[:, -1]
            np.testing.assert_allclose(got[i], ref.numpy(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ vocabulary


def test_shared_vocab_kl_and_uld_against_numpy_on_hand_made_distributions():
    p = np.array([[0.7, 0.2, 0.1, 0.0], [0.25, 0.25, 0.25, 0.25]])
    q = np.array([[0.5, 0.3, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4]])
    ref = np.array([sum(a * math.log(a / b) for a, b in zip(pr, qr) if a > 0) for pr, qr in zip(p, q)])
    np.testing.assert_allclose(shared_vocab_kl(torch.tensor(p), torch.tensor(q)).numpy(), ref, rtol=1e-12)
    # ULD by hand: [0.5, 0.3, 0.2] vs [0.6, 0.4] sorted and zero-padded -> |.1| + |.1| + |.2| = 0.4
    got = uld_distance(torch.tensor([[0.3, 0.5, 0.2]], dtype=torch.float64), torch.tensor([[0.4, 0.6]], dtype=torch.float64))
    assert float(got[0]) == pytest.approx(0.4, abs=1e-12)
    # permutation-invariant: ULD sees the shape of a distribution, not which token is likely
    assert float(uld_distance(torch.tensor([[0.9, 0.1]]), torch.tensor([[0.1, 0.9]]))[0]) == 0.0
    assert float(uld_distance(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.5, 0.5]]))[0]) == pytest.approx(1.0)


def _word_tokenizer(words):
    vocab = {"[PAD]": 0, "[UNK]": 1, "<s>": 2, "</s>": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="[UNK]",
                                   pad_token="[PAD]")


def test_shared_vocabulary_projection_by_hand():
    ctok = _word_tokenizer(["a", "b", "c", "d"])           # ids 4..7
    etok = _word_tokenizer(["c", "x", "a"])                # ids 4..6
    sv = SharedVocabulary.build(ctok, etok)
    assert sv.texts == ["a", "c"]                          # specials ([PAD], [UNK], <s>, </s>) excluded
    pc = torch.tensor([[0.0, 0.1, 0.0, 0.0, 0.4, 0.2, 0.2, 0.1]], dtype=torch.float64)
    pe = torch.tensor([[0.05, 0.05, 0.0, 0.0, 0.3, 0.4, 0.2]], dtype=torch.float64)
    qc, mc = sv.project(pc, "cloud")
    qe, me = sv.project(pe, "edge")
    np.testing.assert_allclose(qc.numpy(), [[0.4 / 0.6, 0.2 / 0.6]])
    np.testing.assert_allclose(qe.numpy(), [[0.2 / 0.5, 0.3 / 0.5]])
    assert float(mc[0]) == pytest.approx(0.6) and float(me[0]) == pytest.approx(0.5)


def test_token_texts_byte_level_and_sentencepiece_conventions():
    tok = _bpe_tokenizer(300, seed=1)
    texts = token_texts(tok)
    for word in ("hello", "dogs"):
        ids = tok(" " + word, add_special_tokens=False)["input_ids"]
        assert "".join(texts[i] for i in ids) == " " + word
    assert texts[tok.convert_tokens_to_ids("<|pad|>")] is None
    vocab = {"<unk>": 0, "▁hello": 1, "world": 2, "<0x41>": 3, "<0xE2>": 4}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.decoder = decoders.Metaspace()
    sp = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")
    assert token_texts(sp) == [None, " hello", "world", "A", None]


def test_vocab_kl_and_uld_signals_match_full_logits_reference(pair, samples):
    cloud, ctok, edge, etok = pair
    sig = CrossModelSignals(cloud, ctok, edge, etok, batch_size=5)
    out = sig.compute(samples, ["vocab_kl", "uld"])
    ct, et = token_texts(ctok), token_texts(etok)
    shared = sorted({t for t in ct if t} & {t for t in et if t})
    assert len(shared) > 50
    for i, ((text, _), _resp) in enumerate(samples[:4]):
        probs = {}
        for side, model, tok in (("cloud", cloud, ctok), ("edge", edge, etok)):
            p_ids = tok(text + "\nYou:")["input_ids"]
            hs = _raw_states(model, p_ids)
            probs[side] = _lens_logprobs(model, hs[:, -1]).exp().numpy()      # [L, V]
        for j, m in enumerate(sig.layer_map):
            pc, pe = probs["cloud"][m], probs["edge"][j]
            uld = np.abs(np.sort(pc)[::-1] - np.pad(np.sort(pe)[::-1], (0, len(pc) - len(pe)))).sum()
            assert out["uld"][i, j] == pytest.approx(uld, rel=1e-6)
            a = np.array([sum(pc[k] for k, t in enumerate(ct) if t == s) for s in shared])
            b = np.array([sum(pe[k] for k, t in enumerate(et) if t == s) for s in shared])
            a, b = a / a.sum(), b / b.sum()
            assert out["vocab_kl"][i, j] == pytest.approx(float(np.sum(a * np.log(a / b))), rel=1e-6)


# ------------------------------------------------------------------------------------------ k-NN


def _brute_knn(q_c, q_e, ref_c, ref_e, k, self_idx):
    """Mutual k-NN overlap by explicit loops: centred cosine distance, stable tie-break by index."""
    n, L = q_c.shape[:2]
    out = np.zeros((n, L))
    for j in range(L):
        for i in range(n):
            sets = []
            for q, ref in ((q_c[i, j], ref_c[:, j]), (q_e[i, j], ref_e[:, j])):
                keep = [r for r in range(len(ref)) if r != self_idx[i]]
                mu = ref[keep].mean(0)
                u = (q - mu) / np.linalg.norm(q - mu)
                cand = []
                for r in range(len(ref)):
                    if r == self_idx[i]:
                        continue
                    v = (ref[r] - mu) / np.linalg.norm(ref[r] - mu)
                    cand.append((-float(u @ v), r))
                sets.append({r for _, r in sorted(cand)[:k]})
            out[i, j] = 1 - len(sets[0] & sets[1]) / k
    return out


def test_knn_agreement_matches_brute_force_and_never_counts_the_sample_itself():
    rng = np.random.default_rng(0)
    R, L = 25, 3
    ref = KnnReference(rng.normal(size=(R, L, 7)) + 5.0, rng.normal(size=(R, L, 4)) - 3.0,
                       [f"r{i}" for i in range(R)])
    q_c = np.concatenate([ref.cloud[[3, 17]], rng.normal(size=(4, L, 7)) + 5.0])
    q_e = np.concatenate([ref.edge[[3, 17]], rng.normal(size=(4, L, 4)) - 3.0])
    ids = ["r3", "r17", "a", "b", "c", "d"]
    self_idx = ref.self_index(ids)
    assert self_idx.tolist() == [3, 17, -1, -1, -1, -1]
    got = knn_agreement(q_c, q_e, ref, k=5, self_index=self_idx)
    np.testing.assert_allclose(got, _brute_knn(q_c, q_e, ref.cloud, ref.edge, 5, self_idx))
    # a reference row queried as itself: without self-exclusion it is its own nearest neighbour in
    # both spaces (trivial agreement, d = 0); with it, it is scored among the other R-1 references
    as_ref = knn_agreement(ref.cloud, ref.edge, ref, k=1, self_index=np.arange(R))
    counted_itself = knn_agreement(ref.cloud, ref.edge, ref, k=1)
    assert (counted_itself == 0).all() and as_ref.mean() > 0.5
    np.testing.assert_allclose(as_ref, _brute_knn(ref.cloud, ref.edge, ref.cloud, ref.edge, 1, np.arange(R)))
    # drawn or not drawn, the same score: reference 3 scored as a member of the set equals the same
    # vectors scored as an outsider against the set without it
    for r in (3, 17):
        rest = np.delete(np.arange(R), r)
        outsider = knn_agreement(ref.cloud[[r]], ref.edge[[r]],
                                 KnnReference(ref.cloud[rest], ref.edge[rest], [ref.sample_ids[i] for i in rest]), k=5)
        np.testing.assert_allclose(got[[0 if r == 3 else 1]], outsider)


def test_knn_signal_excludes_self_in_the_pipeline(pair, samples):
    cloud, ctok, edge, etok = pair
    sig = CrossModelSignals(cloud, ctok, edge, etok, knn_k=3)
    ids = [f"s{i}" for i in range(len(samples))]
    ref = sig.reference(samples[:9], ids[:9])
    out = sig.compute(samples, ["knn_agreement", "response"], reference=ref, sample_ids=ids)
    np.testing.assert_allclose(out["knn_agreement"],
                               _brute_knn(out["response_cloud"], out["response_edge"], ref.cloud, ref.edge, 3,
                                          ref.self_index(ids)))


# ------------------------------------------------------------------------------------------ errors


def test_clear_errors(pair, samples):
    cloud, ctok, edge, etok = pair
    with pytest.raises(TypeError, match="linear LM head on LlamaModel"):
        LogitLens(edge.model)
    headless = make_model("llama", hidden=32, layers=2, vocab=len(etok), seed=5)
    del headless.model.norm
    headless.model.norm = None
    with pytest.raises(TypeError, match="final norm of LlamaForCausalLM"):
        CrossModelSignals(cloud, ctok, headless, etok)
    sig = CrossModelSignals(cloud, ctok, edge, etok, max_length=16)
    with pytest.raises(ValueError, match="unknown signal"):
        sig.compute(samples, ["kl"])
    with pytest.raises(ValueError, match="needs reference="):
        sig.compute(samples, ["knn_agreement"])
    with pytest.raises(SampleError, match=r"sample 0: \d+ cloud tokens .* max_length=16"):
        sig.compute(samples, ["logit_lens_gap"])
    tight = CrossModelSignals(cloud, ctok, edge, etok, max_length=4, truncation="left")
    with pytest.raises(SampleError, match="the response alone is .* raise max_length"):
        tight.compute(samples, ["logit_lens_gap"])
    with pytest.raises(ValueError, match="sample 1: the response is empty"):
        compute_signals((cloud, ctok), (edge, etok), [samples[0], ("hi", "  ")])
    with pytest.raises(ValueError, match="pooling must be one of mean, last"):
        CrossModelSignals(cloud, ctok, edge, etok, pooling="meta")
    ref = KnnReference(np.zeros((3, 4, 48)), np.zeros((3, 4, 32)), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"k must be an int in \[1, R-1\] = \[1, 2\]"):
        knn_agreement(np.zeros((1, 4, 48)), np.zeros((1, 4, 32)), ref, k=3)
    with pytest.raises(ValueError, match="unique"):
        KnnReference(np.zeros((2, 1, 2)), np.zeros((2, 1, 2)), ["a", "a"])


def test_left_truncation_keeps_the_response_whole(pair, samples):
    cloud, ctok, edge, etok = pair
    long_sig = CrossModelSignals(cloud, ctok, edge, etok, max_length=48, truncation="left")
    toks = long_sig.tokenize("edge", samples)
    for t, (_, resp) in zip(toks, samples):
        r_ids = etok(" " + resp, add_special_tokens=False)["input_ids"]
        assert len(t.ids) <= 48 and t.ids[-len(r_ids):] == r_ids
    assert any(t.truncated for t in toks)


def test_prompt_objects_and_chat_template_layout(pair):
    from torch_curriculum.data import Prompt

    cloud, ctok, edge, etok = pair
    sig = CrossModelSignals(cloud, ctok, edge, etok)
    plain = Prompt("x0", "analyze .\npersona : i like tea", "analyze .\n")
    chat = Prompt("x1", "<s>analyze . persona : i like tea assistant\n", "<s>analyze .", add_special_tokens=False)
    assert sig.scored_text(plain, "hello there") == " hello there"
    assert sig.scored_text(chat, "hello there") == "hello there"
    toks = sig.tokenize("edge", [(plain, "hello there"), (chat, "hello there")])
    assert toks[0].ids[:toks[0].n_prompt] == etok(plain.text + "\nYou:")["input_ids"]
    assert toks[1].ids[:toks[1].n_prompt] == etok(chat.text, add_special_tokens=False)["input_ids"]
    assert [t.n_bytes for t in toks] == [12, 11]
    custom = CrossModelSignals(cloud, ctok, edge, etok, turn_prefix="\nAssistant: ")
    assert custom.scored_text(plain, "ok") == "ok"
