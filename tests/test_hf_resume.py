"""Exact resume of a curriculum run in a real ``transformers.Trainer`` from its own checkpoint.

A run interrupted at step k and resumed with ``trainer.train(resume_from_checkpoint=...)`` must
train on the same batches, leave the sampler, the loss pacing and the layer mask in the same state
and end with the same parameters as the uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

pytest.importorskip("transformers")

import itertools

from _hf_parts import BatchRecorder, TokenDataset, difficulty_table, tiny_llama, training_args

from torch_curriculum import CurriculumTrainer, LayerMaskScheduler
from torch_curriculum.integrations.hf import CHECKPOINT_FILE
from torch_curriculum.samplers import (
    DynamicPacingSampler,
    EasyToHardSampler,
    LayerWiseProgressiveSampler,
)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sampler(strategy: str):
    table = difficulty_table()
    if strategy == "easy_to_hard":
        return EasyToHardSampler(table, curriculum_end_epoch=3, warmup_epochs=0, seed=1)
    if strategy == "layer_wise_progressive":
        return LayerWiseProgressiveSampler(table, curriculum_end_epoch=3, warmup_epochs=0, seed=1)
    # losses of this tiny LM hover around 4.1: the percentile moves up and down
    return DynamicPacingSampler(table, loss_threshold=4.12, difficulty_step_up=0.1,
                                difficulty_step_down=0.05, warmup_epochs=0, seed=1)


def _run(strategy: str, out_dir, *, resume=None, accumulation: int = 1, epochs: int = 3, workers: int = 0):
    ds = TokenDataset()
    model = tiny_llama()
    sampler = _sampler(strategy)
    mask = LayerMaskScheduler(model, sampler) if strategy == "layer_wise_progressive" else None
    recorder = BatchRecorder(model, ds)
    args = training_args(out_dir, num_train_epochs=epochs, save_strategy="steps", save_steps=2,
                         gradient_accumulation_steps=accumulation, weight_decay=0.1,
                         dataloader_num_workers=workers)
    trainer = CurriculumTrainer(model=model, args=args, train_dataset=ds, curriculum_sampler=sampler,
                                pacing={"smoothing": 0.5}, layer_mask=mask, callbacks=[recorder])
    trainer.train(resume_from_checkpoint=resume)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return trainer, recorder.rows, params


def _same_params(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("strategy,accumulation", [
    ("easy_to_hard", 1), ("layer_wise_progressive", 1), ("dynamic", 1), ("dynamic", 2)])
def test_resume_equals_the_uninterrupted_run(tmp_path, strategy, accumulation):
    full, rows, params = _run(strategy, tmp_path / "full", accumulation=accumulation)
    steps = full.state.global_step
    assert steps > 8
    loader = full.curriculum_dataloader
    def saved(k):
        return json.loads((tmp_path / "full" / f"checkpoint-{k}" / CHECKPOINT_FILE).read_text())

    assert saved(6)["loader"]["sampler"]["format"]  # the sampler's own JSON state, not a pickle
    if strategy != "dynamic" and accumulation == 1:
        # epoch 0 has 4 batches: checkpoint-4 sits at an epoch end, checkpoint-6 inside epoch 1
        assert (saved(4)["loader"]["in_epoch"], saved(4)["loader"]["epoch"]) == (False, 1)
        assert (saved(6)["loader"]["in_epoch"], saved(6)["loader"]["epoch"]) == (True, 1)
    for k in (4, 6):
        resumed_dir = tmp_path / f"resumed{k}"
        shutil.copytree(tmp_path / "full" / f"checkpoint-{k}", resumed_dir / f"checkpoint-{k}")
        again, rows2, params2 = _run(strategy, resumed_dir, resume=str(resumed_dir / f"checkpoint-{k}"),
                                     accumulation=accumulation)
        assert again.state.global_step == steps
        assert sorted(rows2) == list(range(k + 1, steps + 1))
        assert {s: rows[s] for s in rows2} == rows2  # the same batches, step by step
        _same_params(params, params2)
        assert again.curriculum_sampler.state_dict() == full.curriculum_sampler.state_dict()
        assert again.pacing_callback.state_dict() == full.pacing_callback.state_dict()
        assert again.curriculum_dataloader.epoch == loader.epoch
        if strategy == "layer_wise_progressive":
            assert again.layer_mask.state_dict() == full.layer_mask.state_dict()
        logs = [h for h in full.state.log_history if "loss" in h]
        logs2 = [h for h in again.state.log_history if "loss" in h]
        assert logs2 == logs  # the resumed history is the full one (loss, lr, epoch, curriculum/*)


def test_the_curriculum_moves_in_the_runs_above(tmp_path):
    """Guards the test above against a vacuous pass: the strategies do change pool and mask."""
    full, _rows, _ = _run("layer_wise_progressive", tmp_path / "lw")
    stages = [h["curriculum/stage"] for h in full.state.log_history if "curriculum/stage" in h]
    assert stages[0] == 1 and stages[-1] == 3
    layers = [h["curriculum/num_trainable_layers"] for h in full.state.log_history if "loss" in h]
    assert layers[0] == 2 and layers[-1] == 4
    dyn, _, _ = _run("dynamic", tmp_path / "dyn")
    pct = [h["curriculum/percentile"] for h in dyn.state.log_history if "loss" in h]
    assert max(pct) > pct[0] and any(b < a for a, b in itertools.pairwise(pct))


def test_resume_from_a_foreign_checkpoint_is_a_clear_error(tmp_path):
    ds = TokenDataset()
    model = tiny_llama()
    from transformers import Trainer

    plain = Trainer(model=model, args=training_args(tmp_path / "plain", max_steps=2, save_strategy="steps",
                                                     save_steps=2), train_dataset=ds)
    plain.train()
    trainer = CurriculumTrainer(model=tiny_llama(), args=training_args(tmp_path / "c", max_steps=4),
                                train_dataset=ds, curriculum_sampler=_sampler("easy_to_hard"))
    with pytest.raises(ValueError, match=r"checkpoint-2.*no curriculum_state.json"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "plain" / "checkpoint-2"))


def test_resume_with_other_pacing_settings_is_an_error(tmp_path):
    _full, _, _ = _run("dynamic", tmp_path / "full", epochs=1)
    trainer = CurriculumTrainer(model=tiny_llama(), args=training_args(tmp_path / "x", num_train_epochs=1),
                                train_dataset=TokenDataset(), curriculum_sampler=_sampler("dynamic"))
    with pytest.raises(ValueError, match="with loss pacing"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))


def test_resume_true_takes_the_last_checkpoint(tmp_path):
    full, _rows, params = _run("easy_to_hard", tmp_path / "full", epochs=1)
    last = full.state.global_step
    # keep only an early checkpoint, then resume=True must pick it
    for ck in (tmp_path / "full").glob("checkpoint-*"):
        if ck.name != "checkpoint-2":
            shutil.rmtree(ck)
    _again, rows2, params2 = _run("easy_to_hard", tmp_path / "full", resume=True, epochs=1)
    assert sorted(rows2) == list(range(3, last + 1))
    _same_params(params, params2)


def test_resume_with_a_worker_process_replays_the_prefetched_batches(tmp_path):
    """With dataloader_num_workers=1 the worker draws batches ahead of training; the checkpoint must
    count only what the Trainer took and keep what was prefetched, to hand it out again."""
    def run(out, resume=None):
        ds = TokenDataset()
        model = tiny_llama()
        recorder = BatchRecorder(model, ds)
        args = training_args(out, num_train_epochs=2, save_strategy="steps", save_steps=3,
                             dataloader_num_workers=1)
        trainer = CurriculumTrainer(model=model, args=args, train_dataset=ds,
                                    curriculum_sampler=_sampler("easy_to_hard"), callbacks=[recorder])
        trainer.train(resume_from_checkpoint=resume)
        return trainer, recorder.rows, {n: p.detach().clone() for n, p in model.named_parameters()}

    _full, rows, params = run(tmp_path / "full")
    saved = json.loads((tmp_path / "full" / "checkpoint-6" / CHECKPOINT_FILE).read_text())
    # 6 batches consumed: epoch 0 had 4, so 2 into epoch 1, whatever the worker had drawn
    assert (saved["loader"]["epoch"], saved["loader"]["batches_in_epoch"]) == (1, 2)
    # one worker x prefetch_factor 2: two batches drawn ahead, kept; the sampler is past them
    assert len(saved["loader"]["pending"]) == 2
    assert saved["loader"]["sampler"]["yielded"] == (2 + 2) * 4
    shutil.copytree(tmp_path / "full" / "checkpoint-6", tmp_path / "again" / "checkpoint-6")
    _, rows2, params2 = run(tmp_path / "again", resume=str(tmp_path / "again" / "checkpoint-6"))
    assert {s: rows[s] for s in rows2} == rows2 and min(rows2) == 7 and max(rows2) == max(rows)
    _same_params(params, params2)


@pytest.mark.parametrize("strategy", ["dynamic", "layer_wise_progressive"])
def test_resume_with_worker_processes_replays_what_they_had_drawn(tmp_path, strategy, caplog):
    """Two workers prefetch 4 batches; the loss pacing moves the sampler between those draws. The
    checkpoint keeps the drawn-but-untrained batches and the live sampler state, so a resumed run
    trains the same batches, step by step, as the uninterrupted one (loss pacing included)."""
    full, rows, params = _run(strategy, tmp_path / "full", workers=2)
    steps = full.state.global_step
    saved = json.loads((tmp_path / "full" / "checkpoint-6" / CHECKPOINT_FILE).read_text())
    pending = saved["loader"]["pending"]
    assert len(pending) == 4 and all(len(b) == 4 for b in pending)  # 2 workers x prefetch_factor 2
    assert saved["loader"]["lookahead"] == 4
    assert all(isinstance(i, int) for b in pending for i in b)
    for k in (4, 6, 10):
        resumed_dir = tmp_path / f"resumed{k}"
        shutil.copytree(tmp_path / "full" / f"checkpoint-{k}", resumed_dir / f"checkpoint-{k}")
        again, rows2, params2 = _run(strategy, resumed_dir, resume=str(resumed_dir / f"checkpoint-{k}"),
                                     workers=2)
        assert again.state.global_step == steps
        assert {s: rows[s] for s in rows2} == rows2 and sorted(rows2) == list(range(k + 1, steps + 1))
        _same_params(params, params2)
        assert again.curriculum_sampler.state_dict() == full.curriculum_sampler.state_dict()
        assert again.pacing_callback.state_dict() == full.pacing_callback.state_dict()
    # resumed without workers: the 4 pending batches replay exactly, and a warning says the draws
    # after them are paced with another lag than the run that wrote the checkpoint
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "full" / "checkpoint-6", other / "checkpoint-6")
    with caplog.at_level(logging.WARNING, logger="torch_curriculum"):
        _, rows3, _ = _run(strategy, other, resume=str(other / "checkpoint-6"))
    assert {s: rows3[s] for s in range(7, 11)} == {s: rows[s] for s in range(7, 11)}
    assert any("4 batches ahead" in r.getMessage() and "this one is 0 ahead" in r.getMessage()
               for r in caplog.records)
    # without loss pacing the workers change nothing: the same batches as with the loader in the
    # main process; with it, the workers' draws see the loss 4 batches late (documented), so they
    # differ -- which also shows that the resumes above had late loss updates to get right
    _, rows0, params0 = _run(strategy, tmp_path / "inline")
    if strategy == "dynamic":
        assert rows0 != rows
    else:
        assert rows0 == rows
        _same_params(params, params0)


def test_save_strategy_epoch_saves_at_curriculum_epoch_ends(tmp_path):
    ds = TokenDataset()
    sampler = _sampler("layer_wise_progressive")
    trainer = CurriculumTrainer(model=tiny_llama(),
                                args=training_args(tmp_path, num_train_epochs=3, save_strategy="epoch"),
                                train_dataset=ds, curriculum_sampler=sampler)
    trainer.train()
    # epochs of 4, 7 and 10 batches (13, 26, 40 samples): checkpoints where each one ends
    saved = sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoint-*"))
    assert saved == [4, 11, 21]
    for step, epoch in zip(saved, (1, 2, 3)):
        state = json.loads((tmp_path / f"checkpoint-{step}" / CHECKPOINT_FILE).read_text())
        assert (state["loader"]["epoch"], state["loader"]["in_epoch"]) == (epoch, False)
