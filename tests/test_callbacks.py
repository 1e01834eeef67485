"""PacingCallback, CurriculumTrainer / attach_curriculum and LayerMaskScheduler on real parts:
a real ``transformers.Trainer`` on a tiny random llama, a real PEFT LoRA model, real AdamW."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from _hf_parts import tiny_llama  # noqa: E402  (same VOCAB / N_LAYERS as here)
from transformers import TrainerCallback, TrainingArguments  # noqa: E402

from torch_curriculum.callbacks import (  # noqa: E402
    DEFAULT_LAYER_PATTERN,
    CurriculumTrainer,
    LayerMaskScheduler,
    PacingCallback,
    attach_curriculum,
    reduce_loss_across_ranks,
)
from torch_curriculum.difficulty import aggregate, percentiles  # noqa: E402
from torch_curriculum.samplers import (  # noqa: E402
    DynamicPacingSampler,
    LayerSpecificSampler,
    LayerWiseProgressiveSampler,
)

VOCAB = 64
N_SAMPLES = 48
N_LAYERS = 4


# ---------------------------------------------------------------------------------------------
# helpers (real models and data, small)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads; on a shared 2-core box they only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TokenDataset(torch.utils.data.Dataset):
    """Random token sequences; remembers which indices the DataLoader fetched, in order."""

    def __init__(self, n: int = N_SAMPLES, seq: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, VOCAB, (n, seq), generator=g)
        self.fetched: list[int] = []

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        self.fetched.append(int(i))
        return {"input_ids": self.ids[i], "labels": self.ids[i].clone()}


def difficulty_table(n: int = N_SAMPLES, layers: int = N_LAYERS, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, layers, generator=g, dtype=torch.float64)


def training_args(tmp_path, **kw) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=1e-3,
                logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
                dataloader_num_workers=0, disable_tqdm=True, seed=0)
    base.update(kw)
    return TrainingArguments(**base)


class EpochRecorder(TrainerCallback):
    """Remembers where each epoch starts in the dataset's fetch log and the global steps."""

    def __init__(self, dataset: TokenDataset):
        self.dataset = dataset
        self.starts: list[int] = []
        self.steps_at_epoch_end: list[int] = []

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.starts.append(len(self.dataset.fetched))

    def on_epoch_end(self, args, state, control, **kwargs):
        self.steps_at_epoch_end.append(state.global_step)


# ---------------------------------------------------------------------------------------------
# PacingCallback as a plain callable
# ---------------------------------------------------------------------------------------------


class RecordingSampler(DynamicPacingSampler):
    """The real dynamic sampler, also remembering every value given to update()."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fed: list[float] = []
        self.yielded: list[int] = []

    def update(self, loss: float) -> None:
        self.fed.append(loss)
        super().update(loss)

    def __iter__(self):
        for i in super().__iter__():
            self.yielded.append(int(i))
            yield i


def test_ema_matches_numpy_reference():
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.5, 4.0, size=50)
    sampler = RecordingSampler(difficulty_table())
    pacing = PacingCallback(sampler, smoothing=0.8)
    for x in losses:
        pacing(float(x))
    ref = np.empty_like(losses)
    ref[0] = losses[0]
    for i in range(1, len(losses)):
        ref[i] = 0.8 * ref[i - 1] + 0.2 * losses[i]
    np.testing.assert_allclose(sampler.fed, ref, rtol=1e-12)
    assert pacing.num_updates == 50
    assert pacing.smoothed_loss == pytest.approx(ref[-1])


def test_window_mean_and_tensor_inputs():
    rng = np.random.default_rng(1)
    losses = rng.uniform(0.5, 4.0, size=20)
    sampler = RecordingSampler(difficulty_table())
    pacing = PacingCallback(sampler, window=4)
    for i, x in enumerate(losses):
        # alternate float, 0-d tensor and one-element tensor with grad
        if i % 3 == 0:
            pacing(float(x))
        elif i % 3 == 1:
            pacing(torch.tensor(x, dtype=torch.float64))
        else:
            pacing(torch.tensor([x], dtype=torch.float64, requires_grad=True) * 1.0)
    ref = [losses[max(0, i - 3): i + 1].mean() for i in range(len(losses))]
    np.testing.assert_allclose(sampler.fed, ref, rtol=1e-12)


def test_raw_loss_moves_dynamic_percentile_by_the_configured_steps():
    sampler = DynamicPacingSampler(difficulty_table(), loss_threshold=2.0, difficulty_step_up=0.05,
                                   difficulty_step_down=0.02, warmup_epochs=0)
    pacing = PacingCallback(sampler, smoothing=0.0)
    p0 = sampler.state["percentile"]
    pacing(1.0)                              # below the threshold: harder samples come in
    assert sampler.state["percentile"] == pytest.approx(min(1.0, p0 + 0.05))
    p1 = sampler.state["percentile"]
    pacing(torch.tensor(3.0))                # above: review easier ones
    assert sampler.state["percentile"] == pytest.approx(p1 - 0.02)
    st = pacing.state
    assert st["curriculum/percentile"] == sampler.state["percentile"]
    assert st["curriculum/num_updates"] == 2


def test_non_finite_loss_is_skipped_and_counted(caplog):
    sampler = RecordingSampler(difficulty_table())
    pacing = PacingCallback(sampler, smoothing=0.5)
    pacing(1.0)
    with caplog.at_level("WARNING"):
        assert pacing(float("nan")) is None
        assert pacing(torch.tensor(float("inf"))) is None
    assert "non-finite loss" in caplog.text
    assert sampler.fed == [1.0]
    assert pacing.num_skipped == 2
    assert pacing(3.0) == pytest.approx(2.0)  # the EMA was not poisoned


def test_bad_arguments_are_errors():
    sampler = DynamicPacingSampler(difficulty_table())
    with pytest.raises(ValueError, match="smoothing"):
        PacingCallback(sampler, smoothing=1.0)
    with pytest.raises(ValueError, match="window"):
        PacingCallback(sampler, window=0)
    with pytest.raises(ValueError, match="either smoothing"):
        PacingCallback(sampler, smoothing=0.5, window=3)
    with pytest.raises(ValueError, match="reduce"):
        PacingCallback(sampler, reduce="sum")
    with pytest.raises(TypeError, match="update"):
        PacingCallback(object())
    pacing = PacingCallback(sampler)
    with pytest.raises(ValueError, match="shape"):
        pacing(torch.ones(2))
    with pytest.raises(TypeError, match="number"):
        pacing("1.0x")


def test_state_dict_round_trip_resumes_the_smoothing():
    losses = [2.0, 1.0, 3.0, 0.5, 1.5]
    a = PacingCallback(RecordingSampler(difficulty_table()), smoothing=0.7)
    for x in losses[:3]:
        a(x)
    b = PacingCallback(RecordingSampler(difficulty_table()), smoothing=0.7)
    b.load_state_dict(a.state_dict())
    for x in losses[3:]:
        assert b(x) == a(x)
    with pytest.raises(KeyError, match="missing"):
        b.load_state_dict({"buffer": []})


def test_reduce_is_identity_without_distributed():
    assert not torch.distributed.is_initialized()
    assert reduce_loss_across_ranks(2.25) == 2.25


# ---------------------------------------------------------------------------------------------
# the real Trainer
# ---------------------------------------------------------------------------------------------


def test_trainer_dynamic_pacing_state_changes_and_indices_come_from_the_sampler(tmp_path):
    ds = TokenDataset()
    # losses of a random 64-token LM are ~ln(64) = 4.2: a threshold of 10 makes every step "easy",
    # so the percentile must climb by 0.05 per optimiser step.
    sampler = RecordingSampler(difficulty_table(), loss_threshold=10.0, difficulty_step_up=0.05,
                               difficulty_step_down=0.02, warmup_epochs=0, seed=3)
    trainer = CurriculumTrainer(model=tiny_llama(), args=training_args(tmp_path, max_steps=12),
                                train_dataset=ds, curriculum_sampler=sampler,
                                pacing={"smoothing": 0.0})
    # the curriculum sampler is the loader's sampler, not replaced or wrapped by accelerate
    dl = trainer.get_train_dataloader()
    assert dl.sampler is sampler
    ds.fetched.clear()
    percentile0 = sampler.state["percentile"]
    trainer.train()

    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 12
    pct = [h["curriculum/percentile"] for h in logs]
    assert all(b > a for a, b in itertools.pairwise(pct)), pct
    assert pct[0] == pytest.approx(min(1.0, percentile0 + 0.05))
    assert pct[-1] == pytest.approx(min(1.0, percentile0 + 12 * 0.05))
    assert [h["curriculum/step"] for h in logs] == list(range(1, 13))
    assert trainer.state.global_step == 12
    # the loader fetched exactly what the sampler yielded, in order, and nothing ahead
    assert len(ds.fetched) == 12 * 4
    assert ds.fetched == sampler.yielded
    # the first batch (drawn before any update) comes from the initial easiest pool
    pct_of_sample = percentiles(aggregate(difficulty_table(), "topk_mean", k=3))
    assert all(pct_of_sample[i] <= percentile0 + 1e-9 for i in ds.fetched[:4])


@pytest.mark.parametrize("accumulation", [1, 3])
def test_trainer_epoch_lengths_follow_the_sampler_and_indices_match(tmp_path, accumulation):
    """Stage-paced epochs of different lengths: each curriculum epoch is exactly the sampler's epoch.

    The stock Trainer would size every epoch like the first (16 samples), cutting the later, larger
    pools short. The step budget is the sampler's plan: ceil(all batches / accumulation).
    """
    ds = TokenDataset()
    kw = dict(num_stages=3, curriculum_start_epoch=0, curriculum_end_epoch=3, warmup_epochs=0, seed=5)
    sampler = LayerWiseProgressiveSampler(difficulty_table(), **kw)
    trainer = CurriculumTrainer(model=tiny_llama(),
                                args=training_args(tmp_path, num_train_epochs=4,
                                                   gradient_accumulation_steps=accumulation),
                                train_dataset=ds, curriculum_sampler=sampler, pacing=True)
    trainer.train()

    reference = LayerWiseProgressiveSampler(difficulty_table(), **kw)
    expected, batches = [], []
    for e in range(4):
        reference.set_epoch(e)
        expected.append(list(reference))
        batches.append(math.ceil(len(expected[-1]) / 4))
    assert len({len(x) for x in expected}) > 1, "the test needs epochs of different lengths"
    steps = math.ceil(sum(batches) / accumulation)
    assert trainer.state.max_steps == trainer.state.global_step == steps  # LR schedule = real run
    flat = [i for x in expected for i in x]
    assert ds.fetched[:len(flat)] == flat
    # the last step may take (accumulation - 1) batches of the epoch after the plan, no more
    assert len(ds.fetched) - len(flat) < 4 * accumulation
    logs = [h for h in trainer.state.log_history if "loss" in h]
    if accumulation == 1:
        ends = list(np.cumsum(batches))
        stages = [h.get("curriculum/stage") for h in logs]
        per_epoch = [stages[a:b] for a, b in zip([0, *ends[:-1]], ends)]
        # epochs 0-2 are stages 1-3; epoch 3 is after the curriculum (random, no stage: not logged)
        assert [set(x) for x in per_epoch] == [{1}, {2}, {3}, {None}]
        # the logged epoch is the curriculum epoch: whole numbers exactly at the epoch ends
        assert [logs[i - 1]["epoch"] for i in ends] == [1.0, 2.0, 3.0, 4.0]


def test_attach_curriculum_on_a_plain_trainer(tmp_path):
    ds = TokenDataset()
    sampler = DynamicPacingSampler(difficulty_table(), loss_threshold=0.1, warmup_epochs=0,
                                   initial_percentile=0.6, seed=1)
    trainer = transformers.Trainer(model=tiny_llama(), args=training_args(tmp_path, max_steps=5),
                                   train_dataset=ds)
    attach_curriculum(trainer, sampler, pacing={"smoothing": 0.0})
    assert trainer.pacing_callback in trainer.callback_handler.callbacks[:3]
    assert type(trainer).__name__ == "CurriculumTrainer" and isinstance(trainer, transformers.Trainer)
    assert trainer.get_train_dataloader().sampler is sampler
    p0 = sampler.state["percentile"]
    trainer.train()
    pct = [h["curriculum/percentile"] for h in trainer.state.log_history if "loss" in h]
    # loss ~4 > threshold 0.1: the percentile falls by 0.02 per step
    assert p0 == pytest.approx(0.6)
    assert pct == pytest.approx([0.58, 0.56, 0.54, 0.52, 0.50])


def test_pacing_in_a_trainer_that_does_not_use_the_sampler_warns(tmp_path, caplog):
    ds = TokenDataset()
    sampler = DynamicPacingSampler(difficulty_table())
    trainer = transformers.Trainer(model=tiny_llama(), args=training_args(tmp_path, max_steps=1),
                                   train_dataset=ds, callbacks=[PacingCallback(sampler)])
    with caplog.at_level("WARNING", logger="torch_curriculum.callbacks"):
        trainer.train()
    assert "does not draw from this sampler" in caplog.text


def test_trainer_rejects_conflicting_settings(tmp_path):
    ds = TokenDataset()
    sampler = DynamicPacingSampler(difficulty_table())
    # transformers >= 5 spells it train_sampling_strategy, 4.x group_by_length
    grouped = ({"train_sampling_strategy": "group_by_length"}
               if "train_sampling_strategy" in TrainingArguments.__dataclass_fields__
               else {"group_by_length": True})
    trainer = CurriculumTrainer(model=tiny_llama(),
                                args=training_args(tmp_path, max_steps=2, **grouped),
                                train_dataset=ds, curriculum_sampler=sampler)
    with pytest.raises(ValueError, match="group_by_length"):
        trainer.get_train_dataloader()
    trainer = CurriculumTrainer(model=tiny_llama(), args=training_args(tmp_path, max_steps=2,
                                                                       logging_strategy="no"),
                                train_dataset=ds, curriculum_sampler=sampler, pacing=True)
    with pytest.raises(ValueError, match="logging_strategy"):
        trainer.train()
    with pytest.raises(ValueError, match="different sampler"):
        CurriculumTrainer(model=tiny_llama(), args=training_args(tmp_path), train_dataset=ds,
                          curriculum_sampler=sampler,
                          pacing=PacingCallback(DynamicPacingSampler(difficulty_table())))


# ---------------------------------------------------------------------------------------------
# LayerMaskScheduler
# ---------------------------------------------------------------------------------------------


def lora_model(seed: int = 0):
    model = tiny_llama(seed)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"],
                          lora_dropout=0.0, init_lora_weights=True)
    return peft.get_peft_model(model, cfg)


def lora_by_layer(model) -> dict[int, dict[str, torch.Tensor]]:
    out: dict[int, dict[str, torch.Tensor]] = {}
    for name, p in model.named_parameters():
        if "lora_" in name:
            layer = int(re.search(r"layers\.(\d+)\.", name).group(1))
            out.setdefault(layer, {})[name] = p.detach().clone()
    return out


def changed_layers(before, after) -> set[int]:
    return {i for i in before if any(not torch.equal(before[i][n], after[i][n]) for n in before[i])}


def train_steps(model, opt, batch, steps: int, scheduler=None, set_to_none: bool = False):
    for _ in range(steps):
        if scheduler is not None:
            scheduler.step()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        # set_to_none=False keeps zero grad tensors on frozen params: the hard case for AdamW
        opt.zero_grad(set_to_none=set_to_none)


def test_default_pattern_finds_the_layer_in_common_names():
    names = {
        "base_model.model.model.layers.7.mlp.gate_proj.lora_A.default.weight": 7,
        "model.layers.12.self_attn.q_proj.weight": 12,
        "transformer.h.3.attn.c_attn.weight": 3,
        "gpt_neox.layers.5.mlp.dense_h_to_4h.weight": 5,
        "model.decoder.layers.0.fc1.weight": 0,
        "generator.layers.29.router.f1.weight": 29,
        "bert.encoder.layer.11.output.dense.weight": 11,
    }
    pattern = re.compile(DEFAULT_LAYER_PATTERN)
    assert {n: int(pattern.search(n).group(1)) for n in names} == names
    for outside in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                    "generator.meta_queries", "shared.weight"):
        assert pattern.search(outside) is None


def test_lora_layers_freeze_and_unfreeze_with_the_layerwise_sampler_and_frozen_stay_bit_identical():
    model = lora_model()
    sampler = LayerWiseProgressiveSampler(difficulty_table(), num_stages=3, curriculum_start_epoch=0,
                                          curriculum_end_epoch=3, warmup_epochs=0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                            weight_decay=0.1)
    sched = LayerMaskScheduler(model, sampler, optimizer=opt)
    base_frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    batch = {"input_ids": torch.randint(3, VOCAB, (4, 8), generator=torch.Generator().manual_seed(0))}
    batch["labels"] = batch["input_ids"].clone()

    # all layers first, so every LoRA weight has non-zero Adam moments
    sampler.set_epoch(3)
    assert sched.apply() is None  # after the curriculum: all layers
    before = lora_by_layer(model)
    train_steps(model, opt, batch, 3, sched)
    assert changed_layers(before, lora_by_layer(model)) == {0, 1, 2, 3}
    assert all(s["exp_avg"].abs().sum() > 0 for s in opt.state.values())

    for epoch in range(3):  # stage 1, 2, 3
        sampler.set_epoch(epoch)
        active = sampler.trainable_layers
        expected = list(range(math.ceil((epoch + 1) * N_LAYERS / 3)))
        assert active == expected
        before = lora_by_layer(model)
        train_steps(model, opt, batch, 4, sched)
        assert changed_layers(before, lora_by_layer(model)) == set(expected)
        assert sched.state["trainable_layers"] == expected
        assert sched.state["frozen_layers"] == [i for i in range(N_LAYERS) if i not in expected]
        for name, p in model.named_parameters():  # names carry the layer index, one per LoRA weight
            if "lora_" in name:
                layer = int(re.search(r"layers\.(\d+)\.", name).group(1))
                assert p.requires_grad == (layer in expected), name
    # the PEFT base weights were never unfrozen and never moved
    for name, p in model.named_parameters():
        if name in base_frozen:
            assert not p.requires_grad and torch.equal(p, base_frozen[name]), name


def test_without_the_guard_adamw_would_move_frozen_weights():
    """The failure the pre-step hook prevents, shown on the same model: zero grads + decay move."""
    model = lora_model()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                            weight_decay=0.1)
    batch = {"input_ids": torch.randint(3, VOCAB, (4, 8), generator=torch.Generator().manual_seed(0))}
    batch["labels"] = batch["input_ids"].clone()
    train_steps(model, opt, batch, 2)
    sched = LayerMaskScheduler(model, lambda step: [0])
    sched.apply()
    before = lora_by_layer(model)
    for p in model.parameters():  # what zero_grad(set_to_none=False) leaves behind
        if p.grad is None and any(p is q for g in opt.param_groups for q in g["params"]):
            p.grad = torch.zeros_like(p)
    train_steps(model, opt, batch, 2)
    assert changed_layers(before, lora_by_layer(model)) == {0, 1, 2, 3}
    # with the guard, the same situation leaves layers 1..3 untouched
    sched.attach_optimizer(opt)
    before = lora_by_layer(model)
    for p in model.parameters():
        if any(p is q for g in opt.param_groups for q in g["params"]) and p.grad is None:
            p.grad = torch.zeros_like(p)
    train_steps(model, opt, batch, 2)
    assert changed_layers(before, lora_by_layer(model)) == {0}


def test_callable_source_and_outside_policies():
    class Generator(nn.Module):  # the naming the reference LoRA-Gen generator uses
        def __init__(self):
            super().__init__()
            self.meta_queries = nn.Parameter(torch.randn(4, 8))
            self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.generator = Generator()

    model = Wrapper()
    schedule = {0: [0], 1: [0, 1], 2: None}
    for policy, outside_at in (("trainable", [True, True, True]), ("frozen", [False, False, True]),
                               ("always_frozen", [False, False, False])):
        for p in model.parameters():
            p.requires_grad_(True)
        sched = LayerMaskScheduler(model, lambda step: schedule[min(step, 2)], outside_policy=policy)
        for step in range(3):
            layers = sched.step()
            assert layers == schedule[step]
            trainable = {int(n.split(".")[2]) for n, p in model.named_parameters()
                         if p.requires_grad and ".layers." in n}
            assert trainable == (set(range(4)) if layers is None else set(layers))
            assert model.generator.meta_queries.requires_grad is outside_at[step], (policy, step)
        assert sched.state["step"] == 3


def test_layer_mask_errors():
    model = lora_model()
    with pytest.raises(ValueError, match=r"nomatch.*matches none.*lora_A"):
        LayerMaskScheduler(model, lambda s: None, layer_pattern=r"nomatch\.(\d+)\.")
    with pytest.raises(ValueError, match="group"):
        LayerMaskScheduler(model, lambda s: None, layer_pattern=r"layers\.\d+\.")
    with pytest.raises(ValueError, match="outside_policy"):
        LayerMaskScheduler(model, lambda s: None, outside_policy="maybe")
    with pytest.raises(TypeError, match="trainable_layers"):
        LayerMaskScheduler(model, 3)
    sched = LayerMaskScheduler(model, lambda s: [0, 9])
    with pytest.raises(ValueError, match=r"\[9\].*layers \[0, 1, 2, 3\]"):
        sched.apply()
    frozen = tiny_llama()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=True"):
        LayerMaskScheduler(frozen, lambda s: None)
    other = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="none of the parameters"):
        LayerMaskScheduler(model, lambda s: None, optimizer=other)


def test_layer_mask_in_the_trainer_with_peft(tmp_path):
    """Epoch e is stage e+1: LoRA layers outside the stage's active set do not move in that epoch."""
    ds = TokenDataset()
    model = lora_model()
    kw = dict(num_stages=3, curriculum_start_epoch=0, curriculum_end_epoch=3, warmup_epochs=0, seed=2)
    sampler = LayerWiseProgressiveSampler(difficulty_table(), **kw)
    sched = LayerMaskScheduler(model, sampler)
    snapshots = []

    class Snap(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            snapshots.append(lora_by_layer(model))

        def on_step_end(self, args, state, control, **kwargs):
            if state.epoch == int(state.epoch):  # a curriculum epoch just ended
                snapshots.append(lora_by_layer(model))

    trainer = CurriculumTrainer(model=model, args=training_args(tmp_path, num_train_epochs=3,
                                                                learning_rate=1e-2, weight_decay=0.1),
                                train_dataset=ds, curriculum_sampler=sampler, pacing=True,
                                layer_mask=sched, callbacks=[Snap()])
    trainer.train()
    # the guard sits on the torch optimizer inside accelerate's wrapper
    assert list(sched._hooked) == [id(trainer.optimizer.optimizer)]
    assert len(snapshots) == 4
    for epoch in range(3):
        expected = set(range(math.ceil((epoch + 1) * N_LAYERS / 3)))
        assert changed_layers(snapshots[epoch], snapshots[epoch + 1]) == expected, epoch
    logged = [h["curriculum/num_trainable_layers"] for h in trainer.state.log_history if "loss" in h]
    assert logged[0] == 2 and logged[-1] == 4


def test_layer_specific_walk_in_the_trainer_trains_one_lora_layer_per_step(tmp_path):
    """Step pacing: phase 1 gives each layer one optimiser step, phase 2 trains all layers jointly."""
    ds = TokenDataset()
    model = lora_model()
    sampler = LayerSpecificSampler(difficulty_table(), pacing="step", steps_per_epoch=4,
                                   curriculum_start_epoch=0, curriculum_end_epoch=2, warmup_epochs=0)
    sched = LayerMaskScheduler(model, sampler)
    snapshots, planned = [], []

    class Snap(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            planned.append(sampler.trainable_layers)
            snapshots.append(lora_by_layer(model))

        def on_train_end(self, args, state, control, **kwargs):
            snapshots.append(lora_by_layer(model))

    trainer = CurriculumTrainer(model=model, args=training_args(tmp_path, max_steps=8, learning_rate=1e-2,
                                                                weight_decay=0.1),
                                train_dataset=ds, curriculum_sampler=sampler,
                                pacing={"smoothing": 0.0}, callbacks=[sched, Snap()])  # old style
    trainer.train()
    assert planned == [[0], [1], [2], [3], None, None, None, None]
    moved = [changed_layers(a, b) for a, b in itertools.pairwise(snapshots)]
    assert moved == [{0}, {1}, {2}, {3}] + [{0, 1, 2, 3}] * 4
    logged = [h["curriculum/current_layer"] for h in trainer.state.log_history
              if "curriculum/current_layer" in h]
    assert logged == [1, 2, 3]  # the state after each of the first updates (phase 2 has no layer)


def test_default_pattern_on_the_reference_loragen_generator():
    """The generator's per-layer parameters (``layers.<i>.``) are found; its shared ones are outside."""
    from torch_curriculum.loragen import LoRAGenerator

    gen = LoRAGenerator(tiny_llama(), cloud_hidden_size=16)
    sampler = LayerWiseProgressiveSampler(difficulty_table(), curriculum_end_epoch=3, warmup_epochs=0)
    sched = LayerMaskScheduler(gen, sampler, outside_policy="trainable")
    assert sched.layers == list(range(N_LAYERS))
    for i in range(N_LAYERS):  # the generator's own notion of a layer's parameters
        assert [n for n, _ in sched.layer_params[i]] == [n for n, _ in gen.layer_parameters(i)]
    assert {n for n, _ in sched.outside_params} == {n for n, p in gen.named_parameters()
                                                    if not n.startswith("layers.")}
    for epoch, expected in ((0, [0, 1]), (1, [0, 1, 2]), (2, [0, 1, 2, 3]), (3, [0, 1, 2, 3])):
        sampler.set_epoch(epoch)
        sched.apply()
        assert gen.trainable_layers() == expected
        assert gen.cloud_kv.weight.requires_grad


def test_fractional_epochs_plan_the_last_epoch_by_its_own_length(tmp_path):
    sampler = LayerWiseProgressiveSampler(difficulty_table(), curriculum_end_epoch=3, warmup_epochs=0)
    lengths = []
    for e in range(2):
        probe = LayerWiseProgressiveSampler(difficulty_table(), curriculum_end_epoch=3, warmup_epochs=0)
        probe.set_epoch(e)
        lengths.append(math.ceil(len(probe) / 4))
    trainer = CurriculumTrainer(model=tiny_llama(), args=training_args(tmp_path, num_train_epochs=1.5),
                                train_dataset=TokenDataset(), curriculum_sampler=sampler)
    trainer.train()
    assert lengths[0] != lengths[1]
    assert trainer.state.max_steps == trainer.state.global_step == lengths[0] + math.ceil(0.5 * lengths[1])
