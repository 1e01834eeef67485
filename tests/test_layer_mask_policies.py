"""LayerMaskScheduler's optimizer-state policy on re-unfreezing, and its refusals (DeepSpeed, FSDP1),
on a real tiny llama with real AdamW and the real LayerSpecificSampler."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from _hf_parts import TokenDataset, difficulty_table, tiny_llama

from torch_curriculum import LayerMaskScheduler
from torch_curriculum.samplers import LayerSpecificSampler

LR, WD, EPS = 1e-2, 0.1, 1e-8


def _layer_of(name: str) -> int | None:
    return int(name.split("layers.")[1].split(".")[0]) if ".layers." in name else None


def _walk(unfreeze: str):
    """Hand loop: LayerSpecificSampler (step pacing) walks layers 0-3, then trains all jointly."""
    torch.manual_seed(0)
    model = tiny_llama()
    ds = TokenDataset()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD, eps=EPS)
    sampler = LayerSpecificSampler(difficulty_table(), pacing="step", steps_per_epoch=4,
                                   curriculum_start_epoch=0, curriculum_end_epoch=2, warmup_epochs=0)
    sched = LayerMaskScheduler(model, sampler, optimizer=opt, unfreeze=unfreeze)
    it = iter(sampler)
    record = []
    for _ in range(5):
        layers = sched.step()
        idx = [next(it) for _ in range(4)]
        batch = torch.stack([ds[i]["input_ids"] for i in idx])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        grads = {n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        opt.zero_grad()
        sampler.update(loss.item())
        record.append((layers, before, grads))
    return model, opt, sched, record


@pytest.mark.parametrize("unfreeze", ["reset", "keep"])
def test_stale_adam_moments_of_a_re_unfrozen_layer_follow_the_policy(unfreeze):
    model, opt, sched, record = _walk(unfreeze)
    assert [r[0] for r in record] == [[0], [1], [2], [3], None]  # the walk, then phase 2
    _layers, before, grads = record[4]
    for name, p in model.named_parameters():
        layer = _layer_of(name)
        if layer is None:
            continue
        steps = int(opt.state[p]["step"])
        if layer == 3:  # trainable at steps 3 and 4 without a pause: never reset
            assert steps == 2, name
        elif unfreeze == "reset":
            # layers 0-2 trained once, were frozen, and came back: Adam starts them afresh, so the
            # update is exactly a first AdamW step (m_hat = g, v_hat = g^2)
            assert steps == 1, name
            g, w0 = grads[name], before[name]
            expected = w0 * (1 - LR * WD) - LR * g / (g.abs() + EPS)
            torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7, msg=name)
        else:
            assert steps == 2, name  # the moments from their one earlier step carried over
    if unfreeze == "reset":
        assert sched.num_resets == sum(1 for n, _ in model.named_parameters() if _layer_of(n) in (0, 1, 2))
    else:
        assert sched.num_resets == 0


def test_the_reset_policy_is_checkpointed():
    _, _, sched, _ = _walk("reset")
    state = sched.state_dict()
    import json

    state = json.loads(json.dumps(state))  # JSON-serialisable
    model2 = tiny_llama()
    fresh = LayerMaskScheduler(model2, lambda s: [0])
    fresh.load_state_dict(state)
    assert fresh.num_steps == 5 and fresh.num_resets == sched.num_resets
    assert fresh._trained == sched._trained and fresh._last_trainable == sched._last_trainable
    with pytest.raises(ValueError, match="unfreeze must be one of"):
        LayerMaskScheduler(model2, lambda s: None, unfreeze="forget")


def test_deepspeed_optimizers_are_refused_with_the_reason():
    model = tiny_llama()

    class ZeroOptimizerStandIn(torch.optim.AdamW):
        """Stands for deepspeed's ZeRO optimizer (deepspeed is not installed here); only the
        defining module matters to the check."""

    ZeroOptimizerStandIn.__module__ = "deepspeed.runtime.zero.stage_1_and_2"
    opt = ZeroOptimizerStandIn(model.parameters())
    with pytest.raises(NotImplementedError, match="DeepSpeed.*fp32 partitions"):
        LayerMaskScheduler(model, lambda s: None, optimizer=opt)


def test_layer_mask_callback_in_a_plain_trainer(tmp_path):
    """LayerMaskCallback on a stock Trainer (no curriculum sampler): a callable source trains layer
    ``step % 4`` at each optimiser step, and only that layer moves."""
    from _hf_parts import training_args
    from transformers import Trainer, TrainerCallback

    from torch_curriculum import LayerMaskCallback

    model = tiny_llama()
    sched = LayerMaskScheduler(model, lambda step: [step % 4], outside_policy="always_frozen")
    moved = []

    class Moves(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

        def on_step_end(self, args, state, control, **kwargs):
            moved.append(sorted({_layer_of(n) for n, p in model.named_parameters()
                                 if not torch.equal(self.before[n], p.detach())}, key=str))

    trainer = Trainer(model=model, args=training_args(tmp_path, max_steps=5, weight_decay=0.1),
                      train_dataset=TokenDataset(), callbacks=[LayerMaskCallback(sched), Moves()])
    trainer.train()
    assert moved == [[0], [1], [2], [3], [0]]
    with pytest.raises(TypeError, match="LayerMaskScheduler"):
        LayerMaskCallback(object())


def test_the_core_modules_do_not_import_transformers_or_accelerate():
    import subprocess
    import sys

    code = ("import sys, torch_curriculum as tc\n"
            "from torch_curriculum import LayerMaskScheduler, LossFeeder\n"
            "import torch_curriculum.pacing, torch_curriculum.layer_mask, torch_curriculum.samplers\n"
            "bad = [m for m in ('transformers', 'accelerate') if m in sys.modules]\n"
            "assert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
