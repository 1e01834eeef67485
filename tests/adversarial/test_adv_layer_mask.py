"""Issue 14 item 6: LayerMaskScheduler must not merge layer stacks or leave layers frozen for good.

Reproductions on real tiny HF models (random weights from configs):
* an encoder-decoder's ``encoder.layers.N`` and ``decoder.layers.N`` used to become one index N;
* a difficulty table with fewer layers than the model used to warn only, and the extra layers stayed
  frozen for the whole curriculum.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from torch_curriculum import LayerMaskScheduler  # noqa: E402
from torch_curriculum.samplers import LayerWiseProgressiveSampler  # noqa: E402


def _bart():
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    cfg = BartConfig(vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=3,
                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                     decoder_ffn_dim=32, max_position_embeddings=32)
    return BartForConditionalGeneration(cfg)


def _llama(layers: int = 4):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                                        num_attention_heads=2, num_key_value_heads=1, vocab_size=64))


def _table(layers: int, n: int = 30) -> torch.Tensor:
    return torch.rand(n, layers, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_encoder_and_decoder_layers_are_not_merged_into_one_index():
    model = _bart()
    with pytest.raises(ValueError, match=r"2 different layer stacks.*'model\.decoder\.layers'.*"
                                         r"'model\.encoder\.layers'.*layer_pattern"):
        LayerMaskScheduler(model, lambda step: None)


def test_a_layer_pattern_selects_one_stack_and_the_other_follows_outside_policy():
    model = _bart()
    sched = LayerMaskScheduler(model, lambda step: [0], layer_pattern=r"(?:^|\.)decoder\.layers\.(\d+)\.",
                               outside_policy="always_frozen")
    assert sched.layers == [0, 1, 2]  # the decoder's three layers, not max(enc, dec)
    assert all(".decoder.layers." in n for i in sched.layers for n, _ in sched.layer_params[i])
    assert any(".encoder.layers.1." in n for n, _ in sched.outside_params)
    sched.apply()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.decoder.layers.0.") for n in trainable)


def test_a_table_with_fewer_layers_than_the_model_is_an_error():
    model = _llama(layers=4)
    sampler = LayerWiseProgressiveSampler(_table(2), curriculum_end_epoch=3, warmup_epochs=0, top_k=1)
    with pytest.raises(ValueError, match=r"2 layers \(0\.\.1\).*layers \[0, 1, 2, 3\].*stay frozen"):
        LayerMaskScheduler(model, sampler)


def test_a_table_with_more_layers_than_the_model_is_an_error():
    model = _llama(layers=2)
    sampler = LayerWiseProgressiveSampler(_table(4), curriculum_end_epoch=3, warmup_epochs=0)
    with pytest.raises(ValueError, match=r"4 layers .*layers \[0, 1\]"):
        LayerMaskScheduler(model, sampler)


def test_lora_on_a_subset_of_layers_must_match_the_table():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_llama(layers=4), peft.LoraConfig(
        r=2, target_modules=["up_proj"], layers_to_transform=[2, 3]))
    sampler = LayerWiseProgressiveSampler(_table(2), curriculum_end_epoch=3, warmup_epochs=0, top_k=1)
    # two LoRA layers and a two-layer table, but numbered 2, 3 vs 0, 1: not silently misaligned
    with pytest.raises(ValueError, match=r"layers \[2, 3\]"):
        LayerMaskScheduler(model, sampler)


def test_an_explicit_callable_maps_a_short_table_onto_the_model():
    """The documented way to drive a model whose layers differ from the table: say how, explicitly."""
    model = _llama(layers=4)
    sampler = LayerWiseProgressiveSampler(_table(2), curriculum_end_epoch=2, warmup_epochs=0, num_stages=2,
                                          top_k=1)

    def table_to_model(step):  # table layer j covers model layers 2j, 2j+1
        layers = sampler.trainable_layers
        return None if layers is None else [m for j in layers for m in (2 * j, 2 * j + 1)]

    sched = LayerMaskScheduler(model, table_to_model)
    sampler.set_epoch(0)
    assert sched.apply() == [0, 1]
    sampler.set_epoch(1)
    assert sched.apply() in ([0, 1, 2, 3], None)
    sampler.set_epoch(2)
    assert sched.apply() is None
    assert all(p.requires_grad for p in model.parameters())  # every model layer trains in the end
