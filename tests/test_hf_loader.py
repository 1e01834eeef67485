"""CurriculumDataLoader on its own: epochs in order, set_epoch only at epoch starts, state at the
consumed batch (with workers: plus the batches drawn ahead), no length (epochs differ in length)."""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("transformers")

from torch_curriculum.integrations.hf import CurriculumDataLoader, planned_optimizer_steps
from torch_curriculum.samplers import EasyToHardSampler

N = 30


def _sampler():
    table = torch.rand(N, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return EasyToHardSampler(table, curriculum_end_epoch=2, warmup_epochs=0, seed=3)


def _reference(epochs: int, batch: int) -> list[list[int]]:
    ref = _sampler()
    out = []
    for e in range(epochs):
        ref.set_epoch(e)
        idx = list(ref)
        out += [idx[i:i + batch] for i in range(0, len(idx), batch)]
    return out


def test_the_stream_is_the_samplers_epochs_one_after_another():
    loader = CurriculumDataLoader(list(range(N)), _sampler(), batch_size=4)
    with pytest.raises(TypeError):
        len(loader)  # epochs differ in length: the Trainer must not size epochs by it
    got = [b.tolist() for b in itertools.islice(iter(loader), 20)]
    assert got == _reference(4, 4)[:20]
    lengths, steps = planned_optimizer_steps(_sampler(), 3, 4, gradient_accumulation_steps=2)
    assert lengths == [len(x) // 4 + (len(x) % 4 > 0) for x in _epoch_lists(3)]
    assert steps == -(-sum(lengths) // 2)


def _epoch_lists(epochs):
    ref = _sampler()
    out = []
    for e in range(epochs):
        ref.set_epoch(e)
        out.append(list(ref))
    return out


def test_state_dict_resumes_at_the_next_batch_and_at_epoch_ends():
    batches = _reference(4, 4)
    first_epoch = len(_epoch_lists(1)[0]) // 4 + 1  # 10 samples -> 3 batches
    for cut in (2, first_epoch, first_epoch + 1):
        loader = CurriculumDataLoader(list(range(N)), _sampler(), batch_size=4)
        it = iter(loader)
        for _ in range(cut):
            next(it)
        state = loader.state_dict()
        fresh = CurriculumDataLoader(list(range(N)), _sampler(), batch_size=4)
        fresh.load_state_dict(state)
        rest = [b.tolist() for b in itertools.islice(iter(fresh), 6)]
        assert rest == batches[cut:cut + 6], cut
    with pytest.raises(ValueError, match="missing"):
        fresh.load_state_dict({"epoch": 0})


def test_with_workers_the_state_keeps_the_prefetched_batches_and_resumes_exactly():
    batches = _reference(5, 4)
    first_epoch = len(_epoch_lists(1)[0]) // 4 + 1  # 3 batches: 2 workers x 2 draw it all at once
    for cut in (1, 2, first_epoch, first_epoch + 1, first_epoch + 3, 22):  # 22: 6 into epoch 3 (8 batches)
        loader = CurriculumDataLoader(list(range(N)), _sampler(), batch_size=4, num_workers=2)
        it = iter(loader)
        for _ in range(cut):
            next(it)
            # bounded by the lookahead, not the epoch: 4 ahead, +1 drawn while the batch in hand is uncounted
            assert len(loader._ahead) <= 4 + 1
        state = loader.state_dict()
        # what was drawn and not taken: the next batches, in order (at most 2 workers x 2 ahead)
        assert 0 < len(state["pending"]) <= 4 or not state["in_epoch"]
        assert state["pending"] == batches[cut:cut + len(state["pending"])], cut
        del it  # shut the workers down before the next loader
        fresh = CurriculumDataLoader(list(range(N)), _sampler(), batch_size=4, num_workers=2)
        fresh.load_state_dict(state)
        rest = [b.tolist() for b in itertools.islice(iter(fresh), 8)]
        assert rest == batches[cut:cut + 8], cut
        assert fresh.state_dict()["epoch"] >= state["epoch"]
        assert state["lookahead"] == fresh.lookahead == fresh.resumed_lookahead == 4
    inline = CurriculumDataLoader(list(range(N)), _sampler(), batch_size=4)
    assert inline.lookahead == 0
    inline.load_state_dict(state)  # another lookahead loads (the Trainer warns under loss pacing)
    assert inline.resumed_lookahead == 4
    with pytest.raises(ValueError, match="'lookahead' must be an int"):
        inline.load_state_dict({**state, "lookahead": -1})
    with pytest.raises(ValueError, match="'pending' must be a list"):
        inline.load_state_dict({**state, "in_epoch": True, "pending": [[1, -2]]})
    with pytest.raises(ValueError, match="inside an epoch"):
        inline.load_state_dict({**state, "in_epoch": False, "pending": [[1, 2]]})


def test_bad_inputs_are_errors():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(range(3))

    with pytest.raises(TypeError, match="map-style"):
        CurriculumDataLoader(Stream(), _sampler(), batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        CurriculumDataLoader(list(range(N)), _sampler(), batch_size=0)
    with pytest.raises(TypeError, match="set_epoch"):
        CurriculumDataLoader(list(range(N)), torch.utils.data.SequentialSampler(range(N)), batch_size=2)


def test_a_sampler_yielding_more_than_its_length_is_an_error():
    class Overlong(EasyToHardSampler):
        """A broken sampler: its length promises fewer indices than it yields."""

        def __len__(self):
            return max(super().__len__() - 8, 1)

    table = torch.rand(N, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loader = CurriculumDataLoader(list(range(N)), Overlong(table, warmup_epochs=0), batch_size=4)
    with pytest.raises(RuntimeError, match="more than the .* batches"):
        list(itertools.islice(iter(loader), 50))
