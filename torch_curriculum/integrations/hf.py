"""Curriculum samplers, loss pacing and layer freezing in ``transformers.Trainer`` (and TRL's trainers).

The only module of the library that imports transformers or accelerate. It uses the Trainer's public,
documented surface only: :meth:`transformers.Trainer.get_train_dataloader` and
:meth:`transformers.Trainer.train` are overridden (as the Trainer's documentation invites), the rest
happens in ``TrainerCallback`` events; ``TrainingArguments.ignore_data_skip`` is set while training.

How the Trainer sees a curriculum. A curriculum epoch's length changes with the pool (and, under
dynamic pacing, with the loss), while the Trainer fixes one length for every epoch. So the Trainer
gets one stream of batches (:class:`CurriculumDataLoader`: epoch 0's batches, ``set_epoch(1)``, epoch 1's
batches, ...) without a length, and a step budget: ``args.max_steps`` when set, otherwise the number
of optimiser steps the sampler plans for ``ceil(args.num_train_epochs)`` epochs (the plan is kept in
the checkpoint, so a resumed run uses the same budget and LR schedule). ``state.epoch`` (what the
logs show as ``epoch``) is the curriculum epoch plus the fraction of it drawn; ``save_strategy``,
``eval_strategy`` and ``logging_strategy`` ``"epoch"`` act at curriculum epoch ends. The Trainer's own
``on_epoch_begin`` / ``on_epoch_end`` events fire once per ``train()`` call, not per curriculum epoch.
A gradient-accumulation group may span the end of a curriculum epoch, and the last optimiser step of
an epoch-based run may take up to ``gradient_accumulation_steps - 1`` batches of the next epoch.

Checkpoints. ``on_save`` writes ``curriculum_state.json`` (``curriculum_state_rank{r}.json`` per rank
under DDP) into the checkpoint folder: the sampler's ``state_dict`` at the next batch the Trainer
will take, the loader's epoch, the loss feeder's smoothing state, the layer mask's state and the step
plan. ``trainer.train(resume_from_checkpoint=...)`` restores them before the first batch, and the
Trainer does not skip batches (the sampler itself continues at the next index), so a resumed run
draws the same batches as the uninterrupted one. With worker processes the loader draws
``num_workers * prefetch_factor`` batches ahead of training: the checkpoint keeps those drawn but
untrained batches (``pending``) beside the sampler's live state, and a resumed loader hands them
out first, then draws when the uninterrupted one did, so resumes are exact for every strategy,
loss-driven ones included, when the resumed run uses the same ``dataloader_num_workers`` and
``dataloader_prefetch_factor`` (the checkpoint records their product; a resume with another one
warns). The price of prefetching: a loss-driven sampler (dynamic, hybrid)
sees each loss that many batches late (a warning says so).

Where the loss comes from (granularity): ``Trainer`` hands the loss to callbacks only in ``on_log``
(``logs["loss"]``: the mean over the optimiser steps since the previous log, over the
gradient-accumulation micro-batches and, under DDP, already gathered over ranks).
:class:`PacingCallback` therefore makes one pacing update per *logged* loss: with
``logging_steps=1`` that is one update per optimiser step.

Example:
    >>> trainer = CurriculumTrainer(model=model, args=args, train_dataset=ds,   # doctest: +SKIP
    ...                             curriculum_sampler=sampler, pacing=True,
    ...                             layer_mask=LayerMaskScheduler(model, sampler))
    >>> trainer.train()                                                       # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from collections import deque
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, IterableDataset
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, IntervalStrategy, get_last_checkpoint

from .._io import atomic_write_text
from ..layer_mask import LayerMaskScheduler, check_supported_model
from ..pacing import LossFeeder

__all__ = [
    "CHECKPOINT_FILE",
    "CurriculumDataLoader",
    "CurriculumTrainer",
    "CurriculumTrainerMixin",
    "LayerMaskCallback",
    "PacingCallback",
    "attach_curriculum",
]

logger = logging.getLogger(__name__)

#: File name of the curriculum state inside a Trainer checkpoint folder (one process).
CHECKPOINT_FILE = "curriculum_state.json"
_FORMAT = "torch_curriculum.hf_checkpoint/1"


def _checkpoint_file(rank: int, world_size: int) -> str:
    return CHECKPOINT_FILE if world_size <= 1 else f"curriculum_state_rank{rank}.json"


# --------------------------------------------------------------------------------------------
# callbacks
# --------------------------------------------------------------------------------------------


def _draws_from(dataloader: Any, sampler: Any) -> bool:
    """Whether ``sampler`` is inside ``dataloader`` (plain, ours, or wrapped by accelerate)."""
    seen, todo = set(), [dataloader]
    while todo:
        obj = todo.pop()
        if obj is sampler:
            return True
        if obj is None or id(obj) in seen or len(seen) > 16:
            continue
        seen.add(id(obj))
        todo.extend(getattr(obj, a, None) for a in ("sampler", "batch_sampler", "base_dataloader"))
    return False


def _add_to_logs(state: Any, logs: dict[str, Any], entries: dict[str, Any], loss_key: str) -> None:
    """Add entries to the logs the callbacks see and to the copy the Trainer keeps in log_history."""
    logs.update(entries)
    # The Trainer appended a copy of these logs to log_history just before calling on_log.
    if state.log_history and state.log_history[-1].get(loss_key) == logs.get(loss_key):
        state.log_history[-1].update(entries)


class PacingCallback(LossFeeder, TrainerCallback):
    """:class:`torch_curriculum.pacing.LossFeeder` as a ``transformers.TrainerCallback``.

    Feeds the sampler the smoothed, rank-averaged training loss from the Trainer's logs
    (``on_log``; use ``logging_steps=1`` for one update per optimiser step). After each update the
    sampler's state is written into the logs as ``curriculum/<key>`` (numbers only: ``None`` entries
    and strings are left out, lists are logged as ``curriculum/<key>_count``; the full state is in
    :attr:`state`), including ``trainer.state.log_history``. Epochs are the loader's business
    (:class:`CurriculumDataLoader`); this callback does not call ``set_epoch``. In a hand-written
    loop it is still a plain callable: ``pacing(loss)``. The arguments are those of
    :class:`~torch_curriculum.pacing.LossFeeder`.

    Args:
        sampler (Any): a curriculum sampler (has ``update(loss)``, ``state``, ``set_epoch``).
        smoothing (float | None): EMA factor in [0, 1); 0 or None feeds the raw loss. Default 0.9.
        window (int | None): moving average over the last ``window`` losses instead of the EMA.
            Default None.
        loss_key (str): key of the training loss in the Trainer's logs. Default ``"loss"``.
        log_state (bool): write the sampler state into the Trainer's logs. Default True.
        reduce (str): ``"mean"`` (average over ranks) or ``"none"``. Default ``"mean"``.
        prefix (str): prefix of the logged keys. Default ``"curriculum/"``.

    Raises:
        TypeError: ``sampler`` has no callable ``update``.
        ValueError: bad options; at train begin, ``logging_strategy="no"``.

    Example:
        >>> trainer = CurriculumTrainer(..., curriculum_sampler=s, pacing=PacingCallback(s))  # doctest: +SKIP
    """

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if train_dataloader is not None and not _draws_from(train_dataloader, self.sampler):
            logger.warning("PacingCallback: the Trainer's train DataLoader does not draw from this "
                           "sampler, so pacing changes nothing; use CurriculumTrainer or "
                           "attach_curriculum(trainer, sampler)")
        strategy = str(getattr(args.logging_strategy, "value", args.logging_strategy))
        if strategy == "no":
            raise ValueError("PacingCallback reads the loss from the Trainer's logs, but "
                             "logging_strategy='no'; set logging_strategy='steps' and logging_steps=1")
        if strategy == "steps" and args.logging_steps != 1:
            logger.warning("PacingCallback: logging_steps=%s, so the sampler is updated once per %s "
                           "optimiser steps with their mean loss; use logging_steps=1 for per-step "
                           "pacing", args.logging_steps, args.logging_steps)
        elif strategy == "epoch":
            logger.warning("PacingCallback: logging_strategy='epoch', so the sampler is updated once "
                           "per epoch; use logging_strategy='steps', logging_steps=1 for per-step pacing")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or self.loss_key not in logs:
            return
        self.feed(logs[self.loss_key], device=args.device)
        if self.log_state:
            _add_to_logs(state, logs, self.log_entries(), self.loss_key)


def _reject_unsupported_args(args: Any) -> None:
    if getattr(args, "deepspeed", None):
        raise NotImplementedError("LayerMaskScheduler does not support DeepSpeed (TrainingArguments"
                                  ".deepspeed is set): ZeRO copies the trainable parameters into its "
                                  "own partitions when the engine is built, so later requires_grad "
                                  "changes neither freeze nor unfreeze; use DDP")


class LayerMaskCallback(TrainerCallback):
    """The ``TrainerCallback`` face of a :class:`torch_curriculum.LayerMaskScheduler`.

    At train begin it checks the setup (DDP needs ``ddp_find_unused_parameters`` not False; FSDP1 and
    DeepSpeed are errors), guards the Trainer's optimizer and applies the mask; before every
    optimiser step it applies the mask for ``state.global_step`` (the batches of that step are
    already drawn, so a layer-wise sampler's stage is that of the step's data). It adds
    ``curriculum/num_trainable_params`` and ``curriculum/num_trainable_layers`` to the logs.
    :class:`CurriculumTrainer` (``layer_mask=``) adds it for you and saves the scheduler's state in
    checkpoints.

    Args:
        scheduler (LayerMaskScheduler): the scheduler.

    Raises:
        TypeError: not a LayerMaskScheduler.

    Example:
        >>> trainer = Trainer(..., callbacks=[LayerMaskCallback(sched)])  # doctest: +SKIP
    """

    def __init__(self, scheduler: LayerMaskScheduler) -> None:
        if not isinstance(scheduler, LayerMaskScheduler):
            raise TypeError(f"scheduler must be a LayerMaskScheduler, got {type(scheduler).__name__}")
        self.scheduler = scheduler

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        _reject_unsupported_args(args)
        if model is not None:
            check_supported_model(model)
        if args.world_size > 1 and args.ddp_find_unused_parameters is False:
            raise ValueError("LayerMaskScheduler freezes parameters during training, which DDP only "
                             "allows with find_unused_parameters; set ddp_find_unused_parameters=True")
        if optimizer is not None:
            self.scheduler.attach_optimizer(optimizer)
        elif not self.scheduler._hooked:
            logger.warning("LayerMaskScheduler: no optimizer to guard; frozen parameters rely on "
                           "their grads being None")
        self.scheduler.num_steps = state.global_step
        self.scheduler.apply(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self.scheduler.num_steps = state.global_step
        self.scheduler.apply(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs:
            st = self.scheduler.state
            layers = st["trainable_layers"]
            _add_to_logs(state, logs, {
                "curriculum/num_trainable_params": st["num_trainable_params"],
                "curriculum/num_trainable_layers": (len(self.scheduler.layers) if layers is None
                                                    else len(layers)),
            }, "loss")


# --------------------------------------------------------------------------------------------
# the data stream
# --------------------------------------------------------------------------------------------


class _Batches:
    """Batch sampler over the curriculum sampler: first the batches a checkpoint had drawn but not
    trained (replayed as drawn), then the sampler's next ones; it counts draws and, with workers,
    keeps the batches drawn ahead of the consumer."""

    def __init__(self, owner: CurriculumDataLoader) -> None:
        self.owner = owner

    def __iter__(self) -> Iterator[list[int]]:
        owner = self.owner
        while owner._replay:
            batch = owner._replay.popleft()
            owner._drew(batch)
            yield batch
        if owner._drawn >= owner.epoch_batches > 0:
            return  # the checkpoint's workers had drawn the whole epoch: the sampler has no more
            # (iterating it again would replay the finished epoch)
        # only now: a sampler that reads its (loss-paced) state when iterated must see the state
        # the uninterrupted run had when it drew this batch
        bs, it = owner.batch_size, iter(owner.sampler)
        while True:
            batch = list(itertools.islice(it, bs))
            if not batch or (len(batch) < bs and owner.drop_last):
                return
            owner._drew(batch)
            yield batch


class CurriculumDataLoader:
    """Batches from a curriculum sampler, epoch after epoch, as one stream (what the Trainer iterates).

    Each curriculum epoch is a ``torch.utils.data.DataLoader`` pass over the sampler after
    ``sampler.set_epoch(epoch)``; the stream continues with the next epoch (it never ends: the
    Trainer stops at its step budget). It has no ``len`` on purpose (epochs differ in length).
    :meth:`state_dict` gives the sampler state *at the next batch the consumer will take* (not at
    what worker processes prefetched) and the epoch; :meth:`load_state_dict` restores both.

    Args:
        dataset: a map-style data set (``__getitem__`` by index).
        sampler: a curriculum sampler (``set_epoch``, ``__len__``, ``state_dict``, ``load_state_dict``).
        batch_size (int): batch size per process.
        collate_fn: as in DataLoader. Default None (torch's default collation).
        drop_last (bool): drop each epoch's last incomplete batch. Default False.
        **loader_kwargs: ``num_workers``, ``pin_memory``, ``worker_init_fn``, ``prefetch_factor``,
            ``persistent_workers``, ``timeout``, ``multiprocessing_context``, passed to each
            epoch's DataLoader.

    Raises:
        TypeError: an IterableDataset, or a sampler lacking the curriculum methods.
        ValueError: ``batch_size`` < 1.

    Example:
        >>> loader = CurriculumDataLoader(ds, sampler, batch_size=8)   # doctest: +SKIP
        >>> batch = next(iter(loader))                                # doctest: +SKIP
    """

    def __init__(self, dataset: Any, sampler: Any, *, batch_size: int, collate_fn: Any = None,
                 drop_last: bool = False, **loader_kwargs: Any) -> None:
        if isinstance(dataset, IterableDataset):
            raise TypeError("a curriculum needs a map-style train_dataset (indexed by sample), got an "
                            f"IterableDataset ({type(dataset).__name__})")
        _check_sampler(sampler)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.dataset = dataset
        self.sampler = sampler
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.drop_last = bool(drop_last)
        self.loader_kwargs = {k: v for k, v in loader_kwargs.items() if v is not None}
        self.num_workers = int(self.loader_kwargs.get("num_workers", 0))
        self.epoch = 0
        self.in_epoch = False
        self.batches_in_epoch = 0  # delivered to the consumer in this epoch
        self.epoch_batches = 0  # planned batches of this epoch (from len(sampler) at its start)
        self.epochs_completed = 0
        self._drawn = 0  # batches whose indices were drawn in this epoch (>= delivered with workers)
        self._ahead: deque[list[int]] = deque()  # with workers: the batches drawn, not yet delivered
        self._replay: deque[list[int]] = deque()  # a checkpoint's drawn-but-undelivered batches
        self.resumed_lookahead: int | None = None  # the lookahead of the checkpoint loaded, if any

    @property
    def lookahead(self) -> int:
        """Batches the worker processes draw ahead of the consumer: ``num_workers * prefetch_factor``
        (torch's default factor 2), 0 without workers. A loss-driven sampler sees each loss this many
        batches late, so an exact resume needs the same value as the run that wrote the checkpoint."""
        if self.num_workers <= 0:
            return 0
        return self.num_workers * int(self.loader_kwargs.get("prefetch_factor") or 2)

    def _batches_of(self, n: int) -> int:
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _drew(self, batch: list[int]) -> None:
        self._drawn += 1
        if self.num_workers > 0:
            self._ahead.append([int(i) for i in batch])
            self._trim_ahead()  # bounded by the workers' lookahead, not by the epoch

    def _trim_ahead(self) -> None:
        """Keep the newest ``drawn - delivered`` batches: those drawn but not yet handed out."""
        delivered = self.batches_in_epoch if self.in_epoch else self._drawn
        while len(self._ahead) > self._drawn - delivered:
            self._ahead.popleft()

    def _begin_epoch(self) -> None:
        self.sampler.set_epoch(self.epoch)
        self.in_epoch = True
        self.batches_in_epoch = 0
        self._drawn = 0
        self._ahead.clear()
        self.epoch_batches = self._batches_of(len(self.sampler))

    def _end_epoch(self) -> None:
        self.in_epoch = False
        self.epoch += 1
        self.epochs_completed += 1

    def __iter__(self) -> Iterator[Any]:
        empty = 0
        while True:
            if not self.in_epoch:
                self._begin_epoch()
            loader = DataLoader(self.dataset, batch_sampler=_Batches(self), collate_fn=self.collate_fn,
                                **self.loader_kwargs)
            got = 0
            for batch in loader:
                if not self.in_epoch:  # more batches than len(sampler) promised at the epoch start
                    raise RuntimeError(
                        f"the curriculum sampler yielded more than the {self.epoch_batches} batches "
                        f"its length ({len(self.sampler)}) promised for epoch {self.epoch - 1}; "
                        "epoch ends (and checkpoints) would be misplaced")
                got += 1
                self.batches_in_epoch += 1
                if self.batches_in_epoch >= self.epoch_batches:
                    self._end_epoch()  # before handing out the epoch's last batch: a checkpoint
                    # taken after it must resume at the next epoch
                yield batch
            if self.in_epoch:  # the pass ended before the planned number of batches
                self._end_epoch()
            empty = 0 if got else empty + 1
            if empty >= 2:
                raise RuntimeError(f"the curriculum sampler yielded no index in epochs "
                                   f"{self.epoch - 2} and {self.epoch - 1}; its pool is empty")

    def state_dict(self) -> dict[str, Any]:
        """The loader's epoch, the sampler's live state and the batches drawn but not yet taken (JSON).

        With worker processes the loader draws ``num_workers * prefetch_factor`` batches ahead of
        the consumer; ``pending`` holds them (index lists, oldest first) and ``sampler`` is the
        state after them, with every loss update so far. A resumed loader hands out ``pending``
        first, then draws from the sampler when the uninterrupted one did.

        Returns:
            dict[str, Any]: restore it with :meth:`load_state_dict`.

        Raises:
            RuntimeError: the loader lost track of a batch it drew (a bug, not a user error).
        """
        self._trim_ahead()  # batches delivered since the last draw (e.g. at an epoch's end)
        delivered = self.batches_in_epoch if self.in_epoch else self._drawn
        if self._drawn - delivered != len(self._ahead):
            raise RuntimeError(f"the curriculum loader drew {self._drawn} batches of epoch {self.epoch}, "
                               f"delivered {delivered} and holds {len(self._ahead)}")
        pending = [list(b) for b in self._ahead] + [list(b) for b in self._replay]
        return {"epoch": self.epoch, "in_epoch": self.in_epoch,
                "batches_in_epoch": self.batches_in_epoch, "epoch_batches": self.epoch_batches,
                "epochs_completed": self.epochs_completed, "sampler": self.sampler.state_dict(),
                "pending": pending, "lookahead": self.lookahead}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (before iterating).

        Args:
            state (dict): what :meth:`state_dict` returned.

        Raises:
            ValueError: a state without the loader's keys, or the sampler rejects its part.
        """
        missing = {"epoch", "in_epoch", "batches_in_epoch", "epoch_batches", "sampler"} - set(state)
        if missing:
            raise ValueError(f"curriculum loader state is missing {sorted(missing)}")
        self.sampler.load_state_dict(state["sampler"])
        self.epoch = int(state["epoch"])
        self.in_epoch = bool(state["in_epoch"])
        self.batches_in_epoch = int(state["batches_in_epoch"])
        self.epoch_batches = int(state["epoch_batches"])
        self.epochs_completed = int(state.get("epochs_completed", self.epoch))
        self._drawn = self.batches_in_epoch
        self._ahead.clear()
        # absent in checkpoints written before the replay existed: their sampler state was at the taken batch
        pending = state.get("pending") or []
        if (not isinstance(pending, list) or (pending and not self.in_epoch)
                or not all(isinstance(b, list) and b and all(isinstance(i, int) and not isinstance(i, bool)
                                                             and i >= 0 for i in b) for b in pending)):
            raise ValueError("curriculum loader state: 'pending' must be a list of non-empty lists of "
                             f"sample indices, inside an epoch; got {str(pending)[:120]}")
        self._replay = deque(list(b) for b in pending)
        lookahead = state.get("lookahead")  # absent in checkpoints written before it was recorded
        if lookahead is not None and (isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 0):
            raise ValueError(f"curriculum loader state: 'lookahead' must be an int >= 0, got {lookahead!r}")
        self.resumed_lookahead = lookahead

    @property
    def progress(self) -> float:
        """Curriculum epochs done, fractional (``epoch + delivered / planned`` in the current epoch)."""
        if not self.in_epoch or self.epoch_batches <= 0:
            return float(self.epoch)
        return self.epoch + self.batches_in_epoch / self.epoch_batches


def _check_sampler(sampler: Any) -> None:
    for name in ("__iter__", "__len__", "set_epoch", "state_dict", "load_state_dict"):
        if not callable(getattr(sampler, name, None)):
            raise TypeError(f"curriculum sampler must have {name}(), got {type(sampler).__name__}")


def planned_optimizer_steps(sampler: Any, num_epochs: int, batch_size: int, *, drop_last: bool = False,
                            gradient_accumulation_steps: int = 1) -> tuple[list[int], int]:
    """Batches per epoch as the sampler plans them, and the optimiser steps of the whole stream.

    The stream groups ``gradient_accumulation_steps`` consecutive batches into one step across
    epoch ends, so the step count is ``ceil(sum(batches) / gradient_accumulation_steps)``. The
    sampler's state is left unchanged.

    Args:
        sampler: the curriculum sampler (``planned_lengths(num_epochs)`` when it has it, else
            ``set_epoch(e)`` + ``len`` with its state restored afterwards).
        num_epochs (int): curriculum epochs.
        batch_size (int): batch size per process.
        drop_last (bool): whether each epoch drops its last incomplete batch. Default False.
        gradient_accumulation_steps (int): micro-batches per optimiser step. Default 1.

    Returns:
        tuple[list[int], int]: ``(batches per epoch, optimiser steps)``.

    Example:
        >>> planned_optimizer_steps(sampler, 3, 8)  # doctest: +SKIP
        ([2, 4, 5], 11)
    """
    if callable(getattr(sampler, "planned_lengths", None)):
        lengths = [int(n) for n in sampler.planned_lengths(num_epochs)]
    else:
        saved = sampler.state_dict()
        try:
            lengths = []
            for e in range(num_epochs):
                sampler.set_epoch(e)
                lengths.append(len(sampler))
        finally:
            sampler.load_state_dict(saved)
    batches = [n // batch_size if drop_last else -(-n // batch_size) for n in lengths]
    ga = max(int(gradient_accumulation_steps), 1)
    return batches, max(-(-sum(batches) // ga), 1)


class _CurriculumStateCallback(TrainerCallback):
    """Saves the curriculum into checkpoints, restores it at train begin, keeps ``state.epoch`` honest."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self._last_epochs_completed = 0

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self.trainer
        pending = getattr(trainer, "_curriculum_pending", None)
        if pending is not None and trainer.layer_mask is not None and pending.get("layer_mask"):
            # after the optimizer was built and loaded: only the bookkeeping, the mask is applied next
            trainer.layer_mask.load_state_dict(pending["layer_mask"])
        trainer._curriculum_pending = None
        loader = trainer.curriculum_dataloader
        self._last_epochs_completed = loader.epochs_completed if loader is not None else 0
        if (loader is not None and trainer.pacing_callback is not None and loader.resumed_lookahead is not None
                and loader.resumed_lookahead != loader.lookahead):
            # the pending batches replay exactly; the draws after them see the losses with another lag
            logger.warning("CurriculumTrainer: the checkpoint was written by a loader %d batches ahead of "
                           "training (dataloader_num_workers x dataloader_prefetch_factor), this one is %d "
                           "ahead: with loss pacing the batches after the %d replayed ones differ from the "
                           "uninterrupted run's; resume with the same two settings for an exact continuation",
                           loader.resumed_lookahead, loader.lookahead, len(loader._replay))
        if (loader is not None and loader.num_workers > 0 and trainer.pacing_callback is not None):
            ahead = loader.lookahead
            logger.warning("CurriculumTrainer: with dataloader_num_workers=%d the loader draws %d batches "
                           "ahead of training, so the loss pacing acts on the sampler %d batches late "
                           "(resumes stay exact); dataloader_num_workers=0 paces without the lag",
                           loader.num_workers, ahead, ahead)

    def on_step_end(self, args, state, control, **kwargs):
        loader = self.trainer.curriculum_dataloader
        if loader is None:
            return
        state.epoch = loader.progress
        if loader.epochs_completed > self._last_epochs_completed:
            self._last_epochs_completed = loader.epochs_completed
            if args.logging_strategy == IntervalStrategy.EPOCH:
                control.should_log = True
            if getattr(args, "eval_strategy", None) == IntervalStrategy.EPOCH and (getattr(args, "eval_delay", 0) or 0) <= state.epoch:
                control.should_evaluate = True
            if args.save_strategy == IntervalStrategy.EPOCH:
                control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, _checkpoint_file(args.process_index, args.world_size))
        atomic_write_text(path, json.dumps(self.trainer.curriculum_state_dict()))


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------


def _put_first(trainer: Trainer, callback: TrainerCallback) -> None:
    """Insert right after DefaultFlowCallback, so reporters and printers see the curriculum keys."""
    callbacks = trainer.callback_handler.callbacks
    if callback in callbacks:
        callbacks.remove(callback)
    callbacks.insert(min(1, len(callbacks)), callback)


def _make_pacing(sampler: Any, pacing: Any) -> PacingCallback | None:
    if pacing is None or pacing is False:
        return None
    if pacing is True:
        return PacingCallback(sampler)
    if isinstance(pacing, dict):
        return PacingCallback(sampler, **pacing)
    if isinstance(pacing, PacingCallback):
        if pacing.sampler is not sampler:
            raise ValueError("the PacingCallback feeds a different sampler than the curriculum sampler")
        return pacing
    raise TypeError(f"pacing must be None, True, a dict of PacingCallback options or a "
                    f"PacingCallback, got {type(pacing).__name__}")


def _num_samples(sampler: Any) -> int | None:
    n = getattr(sampler, "num_samples", None)
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    table = getattr(sampler, "layer_diffs", None)
    return int(table.shape[0]) if table is not None and hasattr(table, "shape") else None


class CurriculumTrainerMixin:
    """What makes a ``transformers.Trainer`` (or a subclass, e.g. TRL's ``SFTTrainer``) train with a curriculum.

    Put it first: ``class MyTrainer(CurriculumTrainerMixin, SFTTrainer)``; or use
    :class:`CurriculumTrainer` / :func:`attach_curriculum`. It overrides two public methods:

    * ``get_train_dataloader()`` returns a :class:`CurriculumDataLoader` over the curriculum sampler,
      with the data set and collator the Trainer prepared (columns removed, its collator, workers);
      the loader already gives each rank its slice, so accelerate does not wrap it.
    * ``train(resume_from_checkpoint=None, ...)`` sizes the run (``args.max_steps``: given, or the
      sampler's plan for ``ceil(num_train_epochs)`` epochs), sets ``ignore_data_skip`` (the sampler
      resumes at the exact next index itself) and restores the curriculum state of the checkpoint.

    Keyword args (``__init__``): ``curriculum_sampler`` (required), ``pacing`` (None, True, a dict
    of PacingCallback options, or a PacingCallback on the same sampler), ``layer_mask`` (None or a
    :class:`torch_curriculum.LayerMaskScheduler`; one found in ``callbacks`` is taken as
    ``layer_mask``); the rest goes to the Trainer.

    Raises:
        TypeError: a sampler without the curriculum methods, or bad ``pacing`` / ``layer_mask``.
        ValueError: at train time, a data set of another length than the sampler's table, a sampler
            sharded over another world size, ``train_sampling_strategy`` other than random,
            ``auto_find_batch_size``, or a checkpoint without the curriculum state.
    """

    curriculum_sampler: Any = None
    curriculum_dataloader: CurriculumDataLoader | None = None
    pacing_callback: PacingCallback | None = None
    layer_mask: LayerMaskScheduler | None = None

    def __init__(self, *args: Any, curriculum_sampler: Any, pacing: Any = None,
                 layer_mask: LayerMaskScheduler | None = None, **kwargs: Any) -> None:
        _check_sampler(curriculum_sampler)
        callbacks = kwargs.get("callbacks")
        masks = [cb for cb in callbacks or () if isinstance(cb, LayerMaskScheduler)]
        if masks:  # LayerMaskScheduler used to be a TrainerCallback itself: accept it there too
            if layer_mask is not None or len(masks) > 1:
                raise ValueError("pass one LayerMaskScheduler, as layer_mask= (not also in callbacks)")
            layer_mask = masks[0]
            kwargs["callbacks"] = [cb for cb in callbacks if cb is not layer_mask]
        super().__init__(*args, **kwargs)
        _setup(self, curriculum_sampler, pacing, layer_mask)

    # -- public Trainer API -----------------------------------------------------------------

    def get_train_dataloader(self) -> CurriculumDataLoader:
        """A :class:`CurriculumDataLoader` over the curriculum sampler (see the class docstring)."""
        args = self.args
        if getattr(args, "auto_find_batch_size", False):
            raise ValueError("auto_find_batch_size is not supported with a curriculum sampler; set "
                             "per_device_train_batch_size")
        strategy = str(getattr(args, "train_sampling_strategy", "random"))
        if strategy != "random" or getattr(args, "group_by_length", False):
            raise ValueError(f"train_sampling_strategy={strategy!r} / group_by_length conflicts with "
                             "the curriculum sampler (which decides the order); leave them at their "
                             "defaults")
        base = super().get_train_dataloader()  # the Trainer's data set (columns removed) and collator
        dataset = getattr(base, "dataset", None)
        if dataset is None:
            raise ValueError("the Trainer's train DataLoader has no dataset")
        sampler = self.curriculum_sampler
        n = _num_samples(sampler)
        if n is not None and hasattr(dataset, "__len__") and len(dataset) != n:
            raise ValueError(f"the curriculum sampler covers {n} samples but train_dataset has "
                             f"{len(dataset)}; build the sampler from this data set's difficulty table")
        replicas = getattr(sampler, "num_replicas", None)
        if isinstance(replicas, int) and replicas != args.world_size:
            raise ValueError(f"the curriculum sampler shards over num_replicas={replicas} but the "
                             f"Trainer runs {args.world_size} process(es); build the sampler after "
                             "torch.distributed is initialised or pass num_replicas/rank")
        workers = int(args.dataloader_num_workers)
        loader = CurriculumDataLoader(
            dataset, sampler, batch_size=args.train_batch_size, collate_fn=base.collate_fn,
            drop_last=args.dataloader_drop_last, num_workers=workers,
            pin_memory=bool(getattr(base, "pin_memory", False)),
            worker_init_fn=getattr(base, "worker_init_fn", None),
            prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None,
            persistent_workers=args.dataloader_persistent_workers if workers > 0 else None)
        pending = getattr(self, "_curriculum_pending", None)
        if pending is not None:
            loader.load_state_dict(pending["loader"])
        self.curriculum_dataloader = loader
        return loader

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train`` with the curriculum's step budget and checkpoint state (see the class)."""
        targs = self.args
        if isinstance(resume_from_checkpoint, bool):
            if resume_from_checkpoint:
                resume_from_checkpoint = get_last_checkpoint(targs.output_dir)
                if resume_from_checkpoint is None:
                    raise ValueError(f"No valid checkpoint found in output directory ({targs.output_dir})")
            else:
                resume_from_checkpoint = None
        saved = None
        if resume_from_checkpoint is not None:
            saved = self._read_curriculum_checkpoint(str(resume_from_checkpoint))
        if targs.max_steps is None or targs.max_steps <= 0:
            if saved is not None:
                steps = int(saved["max_steps"])
            else:
                epochs = math.ceil(targs.num_train_epochs)
                batches, steps = planned_optimizer_steps(
                    self.curriculum_sampler, epochs, targs.train_batch_size,
                    drop_last=targs.dataloader_drop_last,
                    gradient_accumulation_steps=targs.gradient_accumulation_steps)
                frac = targs.num_train_epochs - math.floor(targs.num_train_epochs)
                if frac > 0:  # a fractional last epoch counts by its own length
                    part = sum(batches[:-1]) + math.ceil(frac * batches[-1])
                    steps = max(-(-part // targs.gradient_accumulation_steps), 1)
                logger.info("CurriculumTrainer: batches per epoch as planned by the sampler %s -> "
                            "%d optimiser steps", batches, steps)
            self._curriculum_max_steps = steps
            user_max_steps = targs.max_steps
            targs.max_steps = steps
        else:
            self._curriculum_max_steps = int(targs.max_steps)
            user_max_steps = None
        user_skip = targs.ignore_data_skip
        targs.ignore_data_skip = True  # the sampler resumes at its next index; skipping would drop data
        if saved is not None:
            self._curriculum_pending = saved
            if self.pacing_callback is not None and saved.get("pacing") is not None:
                self.pacing_callback.load_state_dict(saved["pacing"])
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self._curriculum_pending = None
            targs.ignore_data_skip = user_skip
            if user_max_steps is not None:
                targs.max_steps = user_max_steps

    # -- curriculum state -----------------------------------------------------------------

    def curriculum_state_dict(self) -> dict[str, Any]:
        """Everything a resume needs, JSON-serialisable (what ``on_save`` writes to the checkpoint).

        Returns:
            dict[str, Any]: loader + sampler state, pacing state, layer-mask state, step plan.
        """
        if self.curriculum_dataloader is None:
            raise RuntimeError("no curriculum loader yet: call train() first")
        return {"format": _FORMAT, "world_size": self.args.world_size, "rank": self.args.process_index,
                "max_steps": self._curriculum_max_steps,
                "loader": self.curriculum_dataloader.state_dict(),
                "pacing": None if self.pacing_callback is None else self.pacing_callback.state_dict(),
                "layer_mask": None if self.layer_mask is None else self.layer_mask.state_dict()}

    def _read_curriculum_checkpoint(self, folder: str) -> dict[str, Any]:
        name = _checkpoint_file(self.args.process_index, self.args.world_size)
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            present = sorted(f for f in os.listdir(folder) if f.startswith("curriculum_state")) \
                if os.path.isdir(folder) else []
            raise ValueError(f"checkpoint {folder!r} has no {name} (found {present or 'none'}); it was "
                             "not saved by a curriculum trainer, or with another number of processes "
                             f"(this run has {self.args.world_size})")
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read the curriculum state {path}: {e}") from e
        if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a curriculum checkpoint state (expected format {_FORMAT!r})")
        if int(saved.get("world_size", 1)) != self.args.world_size:
            raise ValueError(f"{path} was saved by {saved.get('world_size')} process(es), this run "
                             f"has {self.args.world_size}")
        if (self.pacing_callback is None) != (saved.get("pacing") is None):
            raise ValueError(f"{path} was saved {'without' if saved.get('pacing') is None else 'with'} "
                             "loss pacing; resume with the same pacing setting")
        if (self.layer_mask is None) != (saved.get("layer_mask") is None):
            raise ValueError(f"{path} was saved {'without' if saved.get('layer_mask') is None else 'with'} "
                             "a layer mask; resume with the same layer_mask setting")
        return saved


def _setup(trainer: Any, sampler: Any, pacing: Any, layer_mask: Any) -> None:
    _check_sampler(sampler)
    if layer_mask is not None and not isinstance(layer_mask, LayerMaskScheduler):
        raise TypeError(f"layer_mask must be a LayerMaskScheduler or None, got {type(layer_mask).__name__}")
    if layer_mask is not None:
        _reject_unsupported_args(trainer.args)
    trainer.curriculum_sampler = sampler
    trainer.curriculum_dataloader = None
    trainer._curriculum_pending = None
    trainer._curriculum_max_steps = None
    trainer.pacing_callback = _make_pacing(sampler, pacing)
    trainer.layer_mask = layer_mask
    handler = trainer.callback_handler
    for cb in list(handler.callbacks):  # a re-attach replaces what an earlier one added
        if isinstance(cb, (_CurriculumStateCallback, LayerMaskCallback, PacingCallback)):
            handler.remove_callback(cb)
    if layer_mask is not None:
        _put_first(trainer, LayerMaskCallback(layer_mask))
    if trainer.pacing_callback is not None:
        _put_first(trainer, trainer.pacing_callback)
    _put_first(trainer, _CurriculumStateCallback(trainer))


class CurriculumTrainer(CurriculumTrainerMixin, Trainer):
    """``transformers.Trainer`` that trains with a curriculum sampler (see :class:`CurriculumTrainerMixin`).

    Args:
        *args: passed to ``transformers.Trainer``.
        curriculum_sampler: the sampler (one of ``torch_curriculum.samplers``).
        pacing (bool | dict | PacingCallback | None): add a PacingCallback (True: defaults; dict:
            its options; or a ready one built on the same sampler). Default None.
        layer_mask (LayerMaskScheduler | None): freeze layers with this scheduler. Default None.
        **kwargs: passed to ``transformers.Trainer``.

    Example:
        >>> trainer = CurriculumTrainer(model=model, args=args, train_dataset=ds,       # doctest: +SKIP
        ...                             curriculum_sampler=sampler, pacing=True)
        >>> trainer.train()                                                            # doctest: +SKIP
        >>> trainer.train(resume_from_checkpoint=True)     # exact resume              # doctest: +SKIP
    """


_CLASSES: dict[type, type] = {}


def attach_curriculum(trainer: Trainer, sampler: Any, *, pacing: Any = None,
                      layer_mask: LayerMaskScheduler | None = None) -> Trainer:
    """Give an existing ``Trainer`` (any subclass, e.g. TRL's ``SFTTrainer``) the behaviour of :class:`CurriculumTrainer`.

    The instance's class becomes ``Curriculum<ItsClass>``, a subclass with
    :class:`CurriculumTrainerMixin` first (the original class is untouched); equivalent to having
    built it from ``class Curriculum<ItsClass>(CurriculumTrainerMixin, ItsClass)``.

    Args:
        trainer (transformers.Trainer): the trainer, before ``train()``.
        sampler: the curriculum sampler.
        pacing (bool | dict | PacingCallback | None): as in :class:`CurriculumTrainer`.
        layer_mask (LayerMaskScheduler | None): as in :class:`CurriculumTrainer`.

    Returns:
        transformers.Trainer: the same trainer.

    Raises:
        TypeError: not a Trainer, or not a sampler.

    Example:
        >>> attach_curriculum(sft_trainer, sampler, pacing={"smoothing": 0.8})  # doctest: +SKIP
    """
    if not isinstance(trainer, Trainer):
        raise TypeError(f"trainer must be a transformers.Trainer, got {type(trainer).__name__}")
    _check_sampler(sampler)
    cls = type(trainer)
    if not isinstance(trainer, CurriculumTrainerMixin):
        new = _CLASSES.get(cls)
        if new is None:
            new = type(f"Curriculum{cls.__name__}", (CurriculumTrainerMixin, cls),
                       {"__module__": cls.__module__, "__doc__": cls.__doc__})
            _CLASSES[cls] = new
        trainer.__class__ = new
    _setup(trainer, sampler, pacing, layer_mask)
    return trainer

