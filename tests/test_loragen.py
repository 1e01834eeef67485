"""Tests of the reference LoRA-Gen generator on tiny random llama / qwen2 models built from configs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler, Sampler
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from torch_curriculum.data import DialogueSample
from torch_curriculum.loragen import (
    CloudStateCache,
    LoRAGenCollator,
    LoRAGenConfig,
    LoRAGenConfigError,
    LoRAGenDataset,
    LoRAGenerator,
    LoRAGenExample,
    build_examples,
    cloud_text,
    encode_cloud,
    evaluate_loss,
    keep_topk_softmax,
    train_generator,
)

VOCAB = 64


@pytest.fixture(autouse=True)
def _one_thread(request):
    """The tiny models gain nothing from threads, and on a shared 2-core machine OpenMP threads
    fighting other jobs made this file 40x slower; the integration test keeps the default."""
    if request.node.get_closest_marker("integration"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)

D_CLOUD = 24
SMALL = dict(n_experts=4, top_k=2, rank=4, meta_dim=16, num_query_heads=2, router_hidden=8)


def tiny_edge(seed: int = 0, layers: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                      max_position_embeddings=128, initializer_range=0.15)
    return LlamaForCausalLM(cfg).eval()


def make_generator(seed: int = 0, b_std: float = 0.2, **overrides) -> LoRAGenerator:
    gen = LoRAGenerator(tiny_edge(seed), D_CLOUD, LoRAGenConfig(**{**SMALL, **overrides}))
    torch.manual_seed(seed + 100)
    with torch.no_grad():
        for layer in gen.layers:
            # B starts at 0 (update = 0); a non-zero B makes the update visible to the tests.
            for bank in layer.experts.values():
                bank.B.normal_(0, b_std)
            layer.router.bn.running_mean.normal_(0, 0.3)
            layer.router.bn.running_var.uniform_(0.5, 2.0)
            layer.router.bn.weight.uniform_(0.5, 1.5)
            layer.router.bn.bias.normal_(0, 0.1)
    return gen


def random_batch(bsz: int = 3, t: int = 9, t_c: int = 6, seed: int = 1, left_pad_row: int | None = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (bsz, t), generator=g)
    mask = torch.ones(bsz, t, dtype=torch.long)
    if left_pad_row is not None:
        mask[left_pad_row, :2] = 0
    labels = ids.clone()
    labels[:, :4] = -100
    labels[mask == 0] = -100
    cs = torch.randn(bsz, t_c, D_CLOUD, generator=g)
    cm = torch.ones(bsz, t_c, dtype=torch.bool)
    cm[-1, t_c - 2:] = False
    return ids, mask, labels, cs, cm


# ---------------------------------------------------------------- numpy reference of the generator

def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def reference_routing(gen: LoRAGenerator, states: torch.Tensor, mask: torch.Tensor):
    """Eval-mode routing of ONE sample in numpy: (top expert indices [L, K], gates [L, K])."""
    sd = {k: _np(v) for k, v in gen.state_dict().items()}
    cfg = gen.config
    x = _np(states)[np.asarray(mask.bool())]                        # real cloud tokens only
    x = _layer_norm(x, sd["cloud_norm.weight"], sd["cloud_norm.bias"])
    kv = x @ sd["cloud_kv.weight"].T + sd["cloud_kv.bias"]
    h, dh = cfg.num_query_heads, cfg.meta_dim // cfg.num_query_heads
    k, v = kv[:, : cfg.meta_dim], kv[:, cfg.meta_dim:]
    idx_out, gate_out = [], []
    for i in range(gen.num_layers):
        q = sd[f"layers.{i}.query"]
        att = np.zeros(cfg.meta_dim)
        for head in range(h):
            sl = slice(head * dh, (head + 1) * dh)
            s = k[:, sl] @ q[sl] / math.sqrt(dh)
            p = np.exp(s - s.max())
            p /= p.sum()
            att[sl] = p @ v[:, sl]
        t = _layer_norm(att + q, sd[f"layers.{i}.norm.weight"], sd[f"layers.{i}.norm.bias"])
        z = t @ sd[f"layers.{i}.router.f1.weight"].T + sd[f"layers.{i}.router.f1.bias"]
        z = z / (1 + np.exp(-z))
        z = z @ sd[f"layers.{i}.router.f2.weight"].T + sd[f"layers.{i}.router.f2.bias"]
        bn = f"layers.{i}.router.bn."
        z = (z - sd[bn + "running_mean"]) / np.sqrt(sd[bn + "running_var"] + 1e-5) \
            * sd[bn + "weight"] + sd[bn + "bias"]
        top = np.argsort(-z)[: cfg.top_k]
        g = np.exp(z[top] - z[top].max())
        idx_out.append(top)
        gate_out.append(g / g.sum())
    return np.array(idx_out), np.array(gate_out)


def reference_logits(gen: LoRAGenerator, ids, mask, states, cmask) -> np.ndarray:
    """Per-sample loop: materialise W + ΔW in numpy, load it into a copy of the edge, run it."""
    cfg = gen.config
    out = []
    for b in range(ids.shape[0]):
        top, gates = reference_routing(gen, states[b], cmask[b])
        edge = tiny_edge(0)
        sd = edge.state_dict()
        for i in range(gen.num_layers):
            for name in cfg.target_modules:
                a_all = _np(gen.layers[i].experts[name].A)
                b_all = _np(gen.layers[i].experts[name].B)
                delta = sum(gates[i, j] * (a_all[top[i, j]] @ b_all[top[i, j]])
                            for j in range(cfg.top_k)) * cfg.scaling
                key = f"model.layers.{i}.mlp.{name}.weight"
                sd[key] = torch.from_numpy(_np(sd[key]) + delta.T).float()
        edge.load_state_dict(sd)
        row_mask = mask[b:b + 1]
        pos = (row_mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            out.append(edge(ids[b:b + 1], attention_mask=row_mask, position_ids=pos).logits[0].numpy())
    return np.stack(out)


# ---------------------------------------------------------------- config and gating

def test_config_defaults_and_errors():
    cfg = LoRAGenConfig()
    assert (cfg.n_experts, cfg.top_k, cfg.rank, cfg.balance_coef) == (8, 2, 16, 0.01)
    assert cfg.target_modules == ("gate_proj", "up_proj", "down_proj")
    assert cfg.scaling == 2.0
    with pytest.raises(LoRAGenConfigError, match="top_k"):
        LoRAGenConfig(n_experts=2, top_k=3)
    with pytest.raises(LoRAGenConfigError, match="num_query_heads"):
        LoRAGenConfig(meta_dim=10, num_query_heads=3)
    with pytest.raises(LoRAGenConfigError, match="rank"):
        LoRAGenConfig(rank=0)
    with pytest.raises(LoRAGenConfigError, match="balance_coef"):
        LoRAGenConfig(balance_coef=-1.0)
    with pytest.raises(LoRAGenConfigError, match="bogus"):
        LoRAGenConfig.from_dict({"bogus": 1})
    assert LoRAGenConfig.from_dict(cfg.to_dict()) == cfg


def test_keep_topk_softmax_matches_numpy():
    logits = torch.randn(50, 8, generator=torch.Generator().manual_seed(3))
    dense, top_g, top_i = keep_topk_softmax(logits, 3)
    x = logits.double().numpy()
    for row in range(50):
        top = np.argsort(-x[row])[:3]
        e = np.exp(x[row, top] - x[row, top].max())
        expect = np.zeros(8)
        expect[top] = e / e.sum()
        np.testing.assert_allclose(dense[row].double().numpy(), expect, atol=1e-6)
    assert ((dense > 0).sum(-1) == 3).all()
    assert torch.equal(dense.gather(-1, top_i), top_g)
    with pytest.raises(ValueError, match="k must be"):
        keep_topk_softmax(logits, 9)


def test_routing_picks_exactly_k_experts_per_layer_and_gates_sum_to_one():
    gen = make_generator()
    _, _, _, cs, cm = random_batch(bsz=5)
    for mode in (gen.train, gen.eval):
        mode()
        r = gen.route(cs, cm)
        assert r.gates.shape == (5, gen.num_layers, gen.config.n_experts)
        assert ((r.gates > 0).sum(-1) == gen.config.top_k).all()
        torch.testing.assert_close(r.gates.sum(-1), torch.ones(5, gen.num_layers))
        assert torch.equal(r.gates.gather(-1, r.top_idx), r.top_gates)


def test_parameter_names_carry_layer_index_and_edge_is_not_registered():
    gen = make_generator()
    names = [n for n, _ in gen.named_parameters()]
    for n in names:
        assert n.startswith(("layers.", "cloud_norm.", "cloud_kv.")), n
    assert "layers.3.router.f1.weight" in names
    assert "layers.3.experts.gate_proj.A" in names
    assert "layers.3.experts.down_proj.B" in names
    assert not any("edge" in n for n in gen.state_dict())
    assert all(not p.requires_grad for p in gen.edge_model.parameters())
    with pytest.raises(ValueError, match="mlp.nope"):
        LoRAGenerator(tiny_edge(), D_CLOUD, LoRAGenConfig(**SMALL, target_modules=("nope",)))


# ---------------------------------------------------------------- correctness of the LoRA path

def test_batched_path_equals_independent_per_sample_reference():
    gen = make_generator().eval()
    ids, mask, _, cs, cm = random_batch(bsz=3)
    with torch.no_grad():
        out = gen(ids, mask, cs, cm, return_logits=True)
    for b in range(3):  # routing against the numpy reference first
        top, gates = reference_routing(gen, cs[b], cm[b])
        got_idx = out.routing.top_idx[b].numpy()
        np.testing.assert_array_equal(np.sort(got_idx, -1), np.sort(top, -1))
        got = out.routing.top_gates[b].double().numpy()
        order = np.argsort(got_idx, -1)
        np.testing.assert_allclose(np.take_along_axis(got, order, -1),
                                   np.take_along_axis(gates, np.argsort(top, -1), -1), atol=1e-5)
    ref = reference_logits(gen, ids, mask, cs, cm)
    real = mask.bool().numpy()
    np.testing.assert_allclose(out.logits.numpy()[real], ref[real], atol=2e-4, rtol=1e-4)
    # the LoRA really changes the model: without it the logits differ
    with torch.no_grad():
        plain = gen.edge_model(ids, attention_mask=mask,
                               position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    assert (plain - out.logits).abs()[mask.bool()].max() > 1e-2


def test_merged_equals_unmerged_and_unmerge_restores_bits():
    gen = make_generator().eval()
    ids, mask, _, cs, cm = random_batch(bsz=2, left_pad_row=None)
    before = {k: v.clone() for k, v in gen.edge_model.state_dict().items()}
    with torch.no_grad():
        out = gen(ids, mask, cs, cm, return_logits=True)
        for b in range(2):
            merged = gen.merge(cs[b], cm[b])                      # a copy
            assert merged is not gen.edge_model
            logits = merged(ids[b:b + 1], attention_mask=mask[b:b + 1]).logits
            torch.testing.assert_close(logits[0], out.logits[b], atol=1e-4, rtol=1e-4)
        inplace = gen.merge(cs[1], cm[1], inplace=True)
        assert inplace is gen.edge_model
        logits = inplace(ids[1:2], attention_mask=mask[1:2]).logits
        torch.testing.assert_close(logits[0], out.logits[1], atol=1e-4, rtol=1e-4)
        with pytest.raises(RuntimeError, match="unmerge"):
            gen(ids, mask, cs, cm)
        gen.unmerge()
    for k, v in gen.edge_model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="one sample"):
        gen.merge(cs, cm)


def test_left_and_right_padding_give_the_same_loss():
    gen = make_generator().eval()
    ex = [LoRAGenExample(f"s{i}", tuple(range(1, 4 + 2 * i)), (-100, -100, *range(3, 4 + 2 * i)),
                         f"cloud {i}") for i in range(3)]
    cache = CloudStateCache()
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        cache.add(f"cloud {i}", torch.randn(3 + i, D_CLOUD, generator=g))
    ds = LoRAGenDataset(ex)
    items = [ds[i] for i in range(3)]
    losses = []
    for side in ("right", "left"):
        batch = LoRAGenCollator(cache, padding_side=side)(items)
        with torch.no_grad():
            out = gen(batch["input_ids"], batch["attention_mask"], batch["cloud_states"],
                      batch["cloud_mask"], batch["labels"])
        losses.append((float(out.lm_loss), out.per_sample_loss))
    assert losses[0][0] == pytest.approx(losses[1][0], abs=1e-5)
    torch.testing.assert_close(losses[0][1], losses[1][1], atol=1e-5, rtol=1e-5)


def test_per_sample_lora_differs_between_samples():
    gen = make_generator().eval()
    _, _, _, cs, cm = random_batch(bsz=2)
    r = gen.route(cs, cm)
    d0 = gen._delta_weights(r, 0)
    d1 = gen._delta_weights(r, 1)
    diff = max(float((d0[k] - d1[k]).abs().max()) for k in d0)
    assert diff > 1e-3
    # identical cloud states give identical updates
    same = gen.route(cs[:1].repeat(2, 1, 1), cm[:1].repeat(2, 1))
    e0, e1 = gen._delta_weights(same, 0), gen._delta_weights(same, 1)
    assert all(torch.equal(e0[k], e1[k]) for k in e0)


def test_layer_update_norms_match_materialised_updates():
    gen = make_generator().eval()
    _, _, _, cs, cm = random_batch(bsz=3)
    r = gen.route(cs, cm)
    norms = gen.layer_update_norms(r)
    per_mod = gen.layer_update_norms(r, per_module=True)
    expect = np.zeros(gen.num_layers)
    expect_mod = {m: np.zeros(gen.num_layers) for m in gen.config.target_modules}
    for b in range(3):
        d = gen._delta_weights(r, b)
        for i in range(gen.num_layers):
            sq = {m: float((d[(i, m)].double() ** 2).sum()) for m in gen.config.target_modules}
            expect[i] += math.sqrt(sum(sq.values())) / 3
            for m in sq:
                expect_mod[m][i] += math.sqrt(sq[m]) / 3
    np.testing.assert_allclose(norms.numpy(), expect, rtol=1e-4)
    for m in expect_mod:
        np.testing.assert_allclose(per_mod[m].numpy(), expect_mod[m], rtol=1e-4)
    assert float(norms.min()) > 0


# ---------------------------------------------------------------- gradients and freezing

def test_gradients_reach_only_the_generator():
    gen = make_generator().train()
    ids, mask, labels, cs, cm = random_batch(bsz=4)
    out = gen(ids, mask, cs, cm, labels)
    out.loss.backward()
    assert all(p.grad is None for p in gen.edge_model.parameters())
    missing = [n for n, p in gen.named_parameters() if p.grad is None]
    assert missing == []
    # row 0 is left-padded: padded positions must not leak NaN into the gradients
    assert all(bool(torch.isfinite(p.grad).all()) for p in gen.parameters())
    assert float(gen.layer_grad_norms().min()) > 0
    assert gen.shared_grad_norm() > 0


def test_balance_loss_is_cv_squared_of_importance():
    gen = make_generator()
    gates = torch.rand(6, 4, 4)
    imp = gates.double().sum(0).numpy()
    expect = np.mean(imp.var(-1, ddof=1) / imp.mean(-1) ** 2)
    assert float(gen.balance_loss(gates)) == pytest.approx(expect, rel=1e-5)
    uniform = torch.full((6, 4, 4), 0.25)
    assert float(gen.balance_loss(uniform)) == pytest.approx(0.0, abs=1e-7)


class CountingSampler(Sampler[int]):
    """Random order over n indices, reseeded by set_epoch; records the set_epoch calls."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0
        self.epochs_set: list[int] = []
        self.updates: list[float] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_set.append(epoch)

    def update(self, loss: float) -> None:
        self.updates.append(loss)

    @property
    def state(self) -> dict:
        return {"epoch": self.epoch, "updates": len(self.updates)}

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def tiny_task(n: int = 16, seed: int = 0):
    """Token-id examples whose responses use only 4 tokens (learnable in a few steps)."""
    g = torch.Generator().manual_seed(seed)
    cache = CloudStateCache()
    exs = []
    for i in range(n):
        prompt = torch.randint(10, VOCAB, (6,), generator=g).tolist()
        resp = torch.randint(1, 5, (6,), generator=g).tolist()
        exs.append(LoRAGenExample(f"t{i}", tuple(prompt + resp), (-100,) * 6 + tuple(resp),
                                  f"persona {i % 4}"))
    for j in range(4):
        cache.add(f"persona {j}", torch.randn(4, D_CLOUD, generator=g))
    return LoRAGenDataset(exs), LoRAGenCollator(cache)


def test_training_lowers_loss_logs_and_keeps_frozen_layers_bit_identical(tmp_path):
    from torch_curriculum.callbacks import LayerMaskScheduler

    torch.manual_seed(0)
    gen = LoRAGenerator(tiny_edge(0), D_CLOUD, LoRAGenConfig(**SMALL))
    ds, collate = tiny_task()
    sampler = CountingSampler(len(ds))
    sched = LayerMaskScheduler(gen, lambda step: [0, 1], layer_pattern=r"^layers\.(\d+)\.")
    frozen_before = {k: v.clone() for k, v in gen.state_dict().items()
                     if k.startswith(("layers.2.", "layers.3."))}
    trained_before = {k: v.clone() for k, v in gen.state_dict().items()
                      if k.startswith("layers.0.experts")}
    initial = evaluate_loss(gen, ds, collate, batch_size=8)
    log = tmp_path / "log.jsonl"
    res = train_generator(gen, ds, sampler=sampler, collate_fn=collate, val_dataset=ds, steps=20,
                          batch_size=6, lr=2e-2, weight_decay=0.1, eval_every=10,
                          layer_mask_scheduler=sched, log_path=log, test_dataset=ds)
    final = evaluate_loss(gen, ds, collate, batch_size=8)
    assert final < initial - 1.0, (initial, final)
    assert res.val_curve[0]["loss"] == pytest.approx(initial, rel=1e-6)
    assert res.final_val_loss == pytest.approx(final, rel=1e-6)
    assert [p["step"] for p in res.val_curve] == [0, 10, 20]
    # frozen layers: parameters and BatchNorm statistics bit-identical; trained layer moved
    for k, v in gen.state_dict().items():
        if k in frozen_before:
            assert torch.equal(v, frozen_before[k]), k
    assert any(not torch.equal(gen.state_dict()[k], v) for k, v in trained_before.items())
    # 20 steps x 6 from 16 samples: the sampler is exhausted and set_epoch called again
    assert sampler.epochs_set[0] == 0 and len(sampler.epochs_set) >= 3
    assert len(sampler.updates) == 20                       # no pacing callback: sampler.update
    # epochs of 6 + 6 + 4 (the last batch of an epoch is partial): 6 epochs = 18 steps, then 6 + 6
    assert res.samples_seen == 6 * 16 + 12
    assert sum(len(v) for v in res.per_sample_losses.values()) == 108
    assert set(res.per_sample_losses) == set(range(16))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = [r["type"] for r in records]
    assert kinds[0] == "run" and kinds[-1] == "end" and kinds.count("train") == 20
    host = records[0]["host"]                               # where it trained: the generator's device
    assert host["device"] == "cpu" and host["gpu"] is None and host["torch_threads"] == torch.get_num_threads()
    assert host["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert kinds.count("val") == 3 and kinds.count("test") == 1
    train = [r for r in records if r["type"] == "train"]
    for r in train:
        assert len(r["layer_update_norm"]) == 4 and len(r["layer_grad_norm"]) == 4
        assert r["layer_grad_norm"][2] == 0 and r["layer_grad_norm"][3] == 0
        assert r["layer_grad_norm"][0] > 0
        assert r["trainable_layers"] == [0, 1]
        assert r["sampler_state"]["epoch"] == r["epoch"]
        assert r["loss"] == pytest.approx(r["lm_loss"] + 0.01 * r["balance_loss"], rel=1e-5)
    assert train[-1]["samples_seen"] == 108
    assert [r["epoch"] for r in train][:4] == [0, 0, 0, 1]
    assert train[-1]["layer_update_norm"][0] > 0                # B moved off zero
    mean_loss = res.per_sample_mean_loss()
    assert mean_loss[0] == pytest.approx(np.mean(res.per_sample_losses[0]))


def test_pacing_callback_is_fed_instead_of_sampler_update():
    gen = LoRAGenerator(tiny_edge(0), D_CLOUD, LoRAGenConfig(**SMALL))
    ds, collate = tiny_task(8)
    fed = []
    res = train_generator(gen, ds, sampler=RandomSampler(ds), collate_fn=collate, val_dataset=ds,
                          steps=3, batch_size=4, eval_every=100, pacing_callback=fed.append)
    assert fed == pytest.approx(res.train_losses)
    assert res.train_records[0]["sampler_state"] is None


def test_checkpoint_round_trip(tmp_path):
    gen = make_generator()
    gen.train()
    ids, mask, labels, cs, cm = random_batch()
    gen(ids, mask, cs, cm, labels)                                # moves BN running stats
    path = tmp_path / "gen.safetensors"
    cfg_path = gen.save(path, metadata={"note": "x"})
    assert json.loads(cfg_path.read_text())["config"]["n_experts"] == 4
    loaded = LoRAGenerator.load(path, tiny_edge(0))
    for k, v in gen.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    gen.eval()
    loaded.eval()
    with torch.no_grad():
        a = gen(ids, mask, cs, cm, labels)
        b = loaded(ids, mask, cs, cm, labels)
    assert float(a.lm_loss) == float(b.lm_loss)
    with pytest.raises(ValueError, match="edge layers"):
        LoRAGenerator.load(path, tiny_edge(0, layers=3))
    with pytest.raises(FileNotFoundError):
        LoRAGenerator.load(tmp_path / "missing.safetensors", tiny_edge(0))


# ---------------------------------------------------------------- text side: examples and cloud states

def word_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A tiny offline word-level tokenizer with BOS/EOS/PAD."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = sorted({w for t in texts for w in pre_tokenizers.Whitespace().pre_tokenize_str(t)
                    for w in [w[0]]})
    vocab = {"[UNK]": 0, "[PAD]": 1, "[BOS]": 2, "[EOS]": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   bos_token="[BOS]", eos_token="[EOS]")


SAMPLES = [
    DialogueSample("d_0", ("i like cats .", "i live in paris ."), ("hi there", "hello how are you ?"),
                   "fine thanks and you ?"),
    DialogueSample("d_1", (), ("what is your job ?",), "i am a baker ."),
    DialogueSample("d_2", ("i am tall .",), (), "hello !"),
]


def test_build_examples_labels_only_the_response():
    texts = [" ".join(s.persona + s.context + (s.response,)) for s in SAMPLES]
    tok = word_tokenizer([*texts, "Your persona : Dialogue You Partner Analyze the context and "
                                  "generate task embeddings Persona"])
    exs = build_examples(SAMPLES, tok, max_length=64)
    assert [e.sample_id for e in exs] == ["d_0", "d_1", "d_2"]
    for s, e in zip(SAMPLES, exs):
        resp = [t for t, lab in zip(e.input_ids, e.labels) if lab != -100]
        assert resp == tok(" " + s.response, add_special_tokens=False)["input_ids"] + [3]
        assert e.input_ids[0] == 2 and e.labels[0] == -100
        prompt = tok.decode([t for t, lab in zip(e.input_ids, e.labels) if lab == -100])
        assert s.response not in prompt and prompt.rstrip().endswith("You :")
    assert "cats" in tok.decode(exs[0].input_ids)                    # persona in the edge prompt
    assert "cats" not in tok.decode(build_examples(SAMPLES[:1], tok, include_persona=False)[0].input_ids)
    # cloud text: persona, or the context when there is no persona
    assert exs[0].cloud_text == cloud_text(SAMPLES[0])
    assert "i like cats ." in exs[0].cloud_text and "hello how" not in exs[0].cloud_text
    assert "what is your job ?" in exs[1].cloud_text
    assert "hi there" not in cloud_text(SAMPLES[0], source="context", max_context_turns=1)
    # truncation is explicit
    short = build_examples(SAMPLES, tok, max_length=10)
    assert short[0].truncated and len(short[0].input_ids) == 10 and short[0].input_ids[0] == 2
    assert any(lab != -100 for lab in short[0].labels)
    with pytest.raises(ValueError, match="d_0"):
        build_examples(SAMPLES, tok, max_length=10, truncation="error")
    with pytest.raises(ValueError, match="response"):
        build_examples([DialogueSample("bad", (), ("x",), " ")], tok)


def test_encode_cloud_and_cache(tmp_path):
    torch.manual_seed(0)
    cloud = Qwen2ForCausalLM(Qwen2Config(hidden_size=D_CLOUD, intermediate_size=48,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, vocab_size=200)).eval()
    texts = [cloud_text(s) for s in SAMPLES]
    tok = word_tokenizer(texts)
    states, mask = encode_cloud(cloud, tok, texts, batch_size=2)
    assert states.shape[0] == 3 and states.shape[-1] == D_CLOUD
    for j, text in enumerate(texts):   # padded batches equal one-by-one runs of the base decoder
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ref = cloud.model(input_ids=ids).last_hidden_state[0]
        assert int(mask[j].sum()) == ids.shape[1]
        torch.testing.assert_close(states[j, : ids.shape[1]], ref, atol=1e-5, rtol=1e-5)
    # the cache's path must not build autograd graphs (they kept every batch's activations alive)
    from torch_curriculum.loragen._cloud import _encode_list

    assert any(p.requires_grad for p in cloud.parameters())
    raw = _encode_list(cloud, tok, texts, batch_size=2, max_length=512, layer=None,
                       dtype=torch.float32, progress=False)
    assert not any(r.requires_grad or r.grad_fn is not None for r in raw)
    cache = CloudStateCache(cloud, tok, batch_size=2)
    assert cache.encode(texts + texts[:1]) == 3
    assert cache.encode(texts) == 0                                 # each text encoded once
    s2, m2 = cache.batch([texts[1], texts[0]])
    torch.testing.assert_close(s2[1][m2[1]], states[0][mask[0]])
    cache_path = tmp_path / "cloud.safetensors"
    cache.save(cache_path)
    other = CloudStateCache()
    assert other.load(cache_path) == 3
    assert torch.equal(other[texts[2]], cache[texts[2]])
    with pytest.raises(RuntimeError, match="not cached"):
        other.batch(["unknown text"])
    with pytest.raises(ValueError, match="max_length"):
        encode_cloud(cloud, tok, texts, max_length=3)
    # keep_prefix: an over-long text keeps its first tokens and its newest ones, nothing else
    ids = tok(texts[0])["input_ids"]
    cut, cmask = encode_cloud(cloud, tok, [texts[0]], max_length=5, keep_prefix=2)
    kept = torch.tensor([ids[:2] + ids[-3:]])
    with torch.no_grad():
        ref = cloud.model(input_ids=kept).last_hidden_state[0]
    assert int(cmask.sum()) == 5
    torch.testing.assert_close(cut[0], ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="keep_prefix must lie"):
        encode_cloud(cloud, tok, texts, max_length=5, keep_prefix=5)


def test_real_curriculum_sampler_pacing_and_layer_mask(tmp_path):
    """LayerWiseProgressiveSampler + PacingCallback + LayerMaskScheduler(generator, sampler)."""
    from torch_curriculum.callbacks import LayerMaskScheduler, PacingCallback
    from torch_curriculum.samplers import LayerWiseProgressiveSampler

    torch.manual_seed(0)
    gen = LoRAGenerator(tiny_edge(0), D_CLOUD, LoRAGenConfig(**SMALL))
    ds, collate = tiny_task(24)
    diffs = torch.rand(24, gen.num_layers, generator=torch.Generator().manual_seed(5))
    sampler = LayerWiseProgressiveSampler(diffs, warmup_epochs=0, curriculum_end_epoch=3, seed=1)
    pacing = PacingCallback(sampler)
    sched = LayerMaskScheduler(gen, sampler)
    res = train_generator(gen, ds, sampler=sampler, collate_fn=collate, val_dataset=ds, steps=16,
                          batch_size=4, lr=1e-2, eval_every=8, pacing_callback=pacing,
                          layer_mask_scheduler=sched, log_path=tmp_path / "log.jsonl")
    assert pacing.num_updates == 16
    seen_stages = set()
    for r in res.train_records:
        st = r["sampler_state"]
        seen_stages.add(st["stage"])
        active = st["trainable_layers"]
        expect = list(range(gen.num_layers)) if active is None else active
        assert r["trainable_layers"] == expect
        for i in range(gen.num_layers):
            assert (r["layer_grad_norm"][i] > 0) == (i in expect), (r["step"], i)
    assert len(seen_stages) >= 2                       # the curriculum advanced during the run
    # every index drawn in stage 1 lies in the easiest third by the score over layers 0-1
    from torch_curriculum.difficulty import percentiles

    pct = percentiles(diffs[:, :2].mean(dim=1))
    stage1 = [i for r in res.train_records if r["sampler_state"]["stage"] == 1 for i in r["indices"]]
    assert stage1 and all(pct[i] <= 0.33 + 1e-9 for i in stage1)
    assert sorted(i for r in res.train_records for i in r["indices"]) == sorted(
        i for i, v in res.per_sample_losses.items() for _ in v)


# ---------------------------------------------------------------- integration: bundled real models

@pytest.mark.integration
def test_bundled_models_generator_end_to_end(bundled_pair, tmp_path):
    from torch_curriculum.bundled import load_chitchat

    (cloud, ctok), (edge, etok) = bundled_pair
    samples = [s for s in load_chitchat(max_samples=60) if s.context][::7][:4]
    exs = build_examples(samples, etok, max_length=96)
    assert all(any(lab != -100 for lab in e.labels) for e in exs)
    cache = CloudStateCache(cloud, ctok)
    assert cache.encode([e.cloud_text for e in exs]) == len({e.cloud_text for e in exs})
    ds = LoRAGenDataset(exs)
    pad = etok.pad_token_id if etok.pad_token_id is not None else etok.eos_token_id
    collate = LoRAGenCollator(cache, pad)
    batch = collate([ds[i] for i in range(4)])
    weight_before = edge.model.layers[5].mlp.up_proj.weight.detach().clone()
    torch.manual_seed(0)
    gen = LoRAGenerator(edge, cloud.config.hidden_size)            # the paper's defaults
    try:
        assert gen.num_layers == 30
        gen.eval()
        keys = ("input_ids", "attention_mask", "cloud_states", "cloud_mask", "labels")
        with torch.no_grad():
            out = gen(*(batch[k] for k in keys))
            # B starts at zero: the untrained generator reproduces the edge model's loss
            ref = edge(batch["input_ids"], attention_mask=batch["attention_mask"],
                       labels=batch["labels"]).loss
        assert float(out.lm_loss) == pytest.approx(float(ref), rel=1e-4)
        with torch.no_grad():
            for layer in gen.layers:
                for bank in layer.experts.values():
                    bank.B.normal_(0, 0.02)
            out = gen(*(batch[k] for k in keys), return_logits=True)
            merged = gen.merge(batch["cloud_states"][2], batch["cloud_mask"][2])
            n = int(batch["attention_mask"][2].sum())
            logits = merged(batch["input_ids"][2:3, :n]).logits[0]
        del merged
        torch.testing.assert_close(logits, out.logits[2, :n], atol=2e-3, rtol=1e-3)
        res = train_generator(gen, ds, sampler=RandomSampler(ds), collate_fn=collate,
                              val_dataset=ds, steps=2, batch_size=2, eval_every=10,
                              log_path=tmp_path / "log.jsonl")
        assert all(math.isfinite(x) for x in res.train_losses)
        assert len(res.train_records[-1]["layer_update_norm"]) == 30
        assert torch.equal(edge.model.layers[5].mlp.up_proj.weight, weight_before)
    finally:
        gen.remove_hooks()
