"""TRL ``SFTTrainer`` + PEFT LoRA + ``LayerWiseProgressiveSampler`` + ``LayerMaskScheduler``.

A real SFTTrainer (pre-tokenised data set, its own collator) on a tiny random llama with a real
PEFT LoRA, given a curriculum with :func:`attach_curriculum`: every curriculum epoch trains exactly
the sampler's epoch, LoRA layers outside the stage's active set stay bit-identical, and the pacing
state moves (stage 1 -> 3, one update per optimiser step).
"""

from __future__ import annotations

import math

import pytest
import torch

trl = pytest.importorskip("trl")
peft = pytest.importorskip("peft")
datasets = pytest.importorskip("datasets")

from _tiny_lm import make_model, make_texts, make_tokenizer  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from torch_curriculum import LayerMaskScheduler, attach_curriculum  # noqa: E402
from torch_curriculum.samplers import LayerWiseProgressiveSampler  # noqa: E402

N, LAYERS = 36, 4


def _lora_by_layer(model) -> dict[int, dict[str, torch.Tensor]]:
    out: dict[int, dict[str, torch.Tensor]] = {}
    for name, p in model.named_parameters():
        if "lora_" in name:
            out.setdefault(int(name.split("layers.")[1].split(".")[0]), {})[name] = p.detach().clone()
    return out


def _moved(a, b) -> set[int]:
    return {i for i in a if any(not torch.equal(a[i][n], b[i][n]) for n in a[i])}


def test_sft_trainer_with_lora_and_a_layer_wise_curriculum(tmp_path):
    torch.set_num_threads(1)
    tok = make_tokenizer()
    texts = [t for t, _ in make_texts(N, seed=3, min_words=3, max_words=10)]
    data = datasets.Dataset.from_dict({"input_ids": [tok(t)["input_ids"] for t in texts]})
    model = make_model("llama", layers=LAYERS, seed=0)
    model.train()
    table = torch.rand(N, LAYERS, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sampler = LayerWiseProgressiveSampler(table, curriculum_end_epoch=3, warmup_epochs=0, seed=2)
    config = trl.SFTConfig(output_dir=str(tmp_path / "sft"), per_device_train_batch_size=4,
                           num_train_epochs=3, learning_rate=1e-2, weight_decay=0.1, logging_steps=1,
                           report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
                           max_length=32, packing=False, seed=0, dataloader_num_workers=0)
    trainer = trl.SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tok,
                             peft_config=peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                         target_modules=["gate_proj", "up_proj", "down_proj"]))
    assert isinstance(trainer.model, peft.PeftModel)
    snapshots = [_lora_by_layer(trainer.model)]

    class EpochEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.epoch == int(state.epoch):  # a curriculum epoch just ended
                snapshots.append(_lora_by_layer(trainer.model))

    trainer.add_callback(EpochEnds())
    mask = LayerMaskScheduler(trainer.model, sampler)
    attach_curriculum(trainer, sampler, pacing=True, layer_mask=mask)
    assert isinstance(trainer, trl.SFTTrainer) and type(trainer).__name__ == "CurriculumSFTTrainer"
    trainer.train()

    # the whole LoRA trained in the end; the base model never did
    assert all(not p.requires_grad for n, p in trainer.model.named_parameters() if "lora_" not in n)
    assert len(snapshots) == 4
    for epoch in range(3):  # stage e+1 trains LoRA layers [0, ceil((e+1)*L/3)); the rest is bit-identical
        assert _moved(snapshots[epoch], snapshots[epoch + 1]) == set(range(math.ceil((epoch + 1) * LAYERS / 3)))
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == trainer.state.global_step
    stages = [h["curriculum/stage"] for h in logs if "curriculum/stage" in h]
    assert stages[0] == 1 and stages[-1] == 3 and stages == sorted(stages)
    assert trainer.pacing_callback.num_updates == trainer.state.global_step
    assert next(h["curriculum/num_trainable_layers"] for h in logs) == 2
