"""bf16 autocast of the generator's training step (issue 13): it tracks fp32 and really runs in bf16."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from torch_curriculum.experiments.runner import cpu_has_bf16_matmul, resolve_autocast
from torch_curriculum.loragen import LoRAGenConfig, LoRAGenerator, train_generator
from torch_curriculum.loragen._cloud import CloudStateCache
from torch_curriculum.loragen._data import LoRAGenCollator, LoRAGenDataset, LoRAGenExample

VOCAB, D_CLOUD = 64, 24
SMALL = dict(n_experts=4, top_k=2, rank=4, meta_dim=16, num_query_heads=2, router_hidden=8)
# Stated tolerance: over 20 AdamW steps every bf16 training loss is within 3% of the fp32 loss of the
# same step (same init, same batches), and the final validation losses within 2%. bf16 keeps 8
# mantissa bits (relative rounding ~0.4%) in the matmuls; parameters, grads and AdamW stay fp32.
STEP_RTOL, FINAL_RTOL = 0.03, 0.02


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _task(n: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cache = CloudStateCache()
    exs = []
    for i in range(n):
        prompt = torch.randint(10, VOCAB, (8,), generator=g).tolist()
        resp = torch.randint(1, 6, (6,), generator=g).tolist()
        exs.append(LoRAGenExample(f"t{i}", tuple(prompt + resp), (-100,) * 8 + tuple(resp), f"persona {i % 4}"))
    for j in range(4):
        cache.add(f"persona {j}", torch.randn(5, D_CLOUD, generator=g))
    return LoRAGenDataset(exs), LoRAGenCollator(cache)


def _generator() -> LoRAGenerator:
    torch.manual_seed(0)
    edge = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                        max_position_embeddings=64)).eval()
    for p in edge.parameters():
        p.requires_grad_(False)
    torch.manual_seed(1)
    return LoRAGenerator(edge, D_CLOUD, LoRAGenConfig(**SMALL))


class _Fixed(torch.utils.data.Sampler):
    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(5)).tolist())

    def __len__(self):
        return self.n


def _train(dtype):
    gen = _generator()
    ds, collate = _task()
    seen: list[torch.dtype] = []
    hook = gen.edge_model.model.layers[0].self_attn.q_proj.register_forward_hook(
        lambda m, i, o: seen.append(o.dtype) if torch.is_grad_enabled() else None)
    try:
        res = train_generator(gen, ds, sampler=_Fixed(len(ds)), collate_fn=collate, val_dataset=ds, steps=20,
                              batch_size=6, lr=1e-2, eval_every=10, autocast_dtype=dtype)
    finally:
        hook.remove()
    losses = np.array([r["lm_loss"] for r in res.train_records])
    params = {k: v.dtype for k, v in gen.named_parameters()}
    return losses, res.final_val_loss, seen, params


def test_bf16_autocast_tracks_fp32_losses_for_20_steps():
    fp32, fp32_val, seen32, _ = _train(None)
    bf16, bf16_val, seen16, params = _train(torch.bfloat16)
    assert fp32[-1] < fp32[0] - 0.3  # the task is learned, so the comparison is not between two flat lines
    np.testing.assert_allclose(bf16, fp32, rtol=STEP_RTOL)
    assert bf16_val == pytest.approx(fp32_val, rel=FINAL_RTOL)
    assert not np.array_equal(bf16, fp32)  # bf16 really changed the arithmetic
    # the edge model's matmuls (q_proj: no LoRA on it) ran in bf16 in training steps, fp32 without autocast
    assert seen16 and set(seen16) == {torch.bfloat16}
    assert seen32 and set(seen32) == {torch.float32}
    assert set(params.values()) == {torch.float32}  # master weights stay fp32


def test_resolve_autocast_modes():
    assert resolve_autocast("none", "cpu") is None
    assert resolve_autocast("bf16", "cpu") is torch.bfloat16
    assert resolve_autocast("auto", "cuda") is torch.bfloat16
    assert resolve_autocast("auto", "cpu") is (torch.bfloat16 if cpu_has_bf16_matmul() else None)
    with pytest.raises(ValueError, match="autocast_dtype must be a torch.dtype"):
        train_generator(_generator(), *_task()[:1], sampler=_Fixed(24), collate_fn=_task()[1],
                        val_dataset=_task()[0], steps=1, autocast_dtype="bf16")
