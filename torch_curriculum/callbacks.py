"""Loss-driven pacing and layer freezing for the curriculum samplers, in ``transformers.Trainer`` or a plain loop.

Three parts:

* :class:`PacingCallback` smooths the training loss, averages it over ranks under DDP and feeds
  ``sampler.update(loss)``; it is a ``transformers.TrainerCallback`` and a plain ``callback(loss)``.
* :class:`CurriculumTrainer` / :func:`attach_curriculum` put a curriculum sampler into
  ``transformers.Trainer`` (whose train sampler is otherwise fixed), keep accelerate from sharding it
  a second time, and size every epoch by the sampler's own length.
* :class:`LayerMaskScheduler` sets ``requires_grad`` layer by layer from the sampler's
  ``trainable_layers`` (or any ``step -> layers`` function) and guarantees frozen parameters do not
  move in the optimizer step.

Where the Trainer's loss comes from (granularity): ``Trainer`` hands the loss to callbacks only in
``on_log`` (``logs["loss"]``: the mean over the optimiser steps since the previous log, over the
gradient-accumulation micro-batches and, under DDP, already gathered over ranks). ``PacingCallback``
therefore makes one pacing update per *logged* loss: with ``logging_steps=1`` that is one update per
optimiser step (the sampler's step counter then counts optimiser steps); with ``logging_steps=k`` one
update per k steps (a warning says so). This is the only public, version-stable hook that sees the
loss; it costs one ``.item()`` per log.
"""

from __future__ import annotations

import logging
import math
import re
import types
from collections import deque
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import Trainer, TrainerCallback

__all__ = [
    "DEFAULT_LAYER_PATTERN",
    "OUTSIDE_POLICIES",
    "CurriculumTrainer",
    "LayerMaskScheduler",
    "PacingCallback",
    "attach_curriculum",
    "reduce_loss_across_ranks",
]

logger = logging.getLogger(__name__)

#: Matches the layer index in ``...layers.<N>.`` style parameter names: HF decoders
#: (``model.layers.N.``, ``gpt_neox.layers.N.``, ``decoder.layers.N.``), GPT-2 (``transformer.h.N.``),
#: BERT (``encoder.layer.N.``), T5 (``block.N.``), PEFT LoRA
#: (``base_model.model.model.layers.N.mlp.gate_proj.lora_A.default.weight``) and the reference
#: LoRA-Gen generator (``layers.N.router.f1.weight`` at its root, ``generator.layers.N.`` when it is
#: a submodule). The first (outermost) match in a name wins.
DEFAULT_LAYER_PATTERN = r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\."

#: What happens to managed parameters that are in no layer (embeddings, final norm, meta-token
#: queries, shared heads): ``trainable`` always trainable; ``frozen`` frozen while only some layers
#: are trainable and trainable when all are; ``always_frozen`` never trainable.
OUTSIDE_POLICIES = ("trainable", "frozen", "always_frozen")

_REDUCTIONS = ("mean", "none")


# --------------------------------------------------------------------------------------------
# loss handling
# --------------------------------------------------------------------------------------------


def _loss_to_float(loss: Any) -> float:
    """A Python float from a float, int, numpy scalar or one-element tensor; anything else is an error."""
    if isinstance(loss, bool):
        raise TypeError("loss must be a number or a one-element tensor, got a bool")
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ValueError(f"loss must be a 0-d (or one-element) tensor, got shape {tuple(loss.shape)}")
        return float(loss.detach().reshape(()).item())
    try:
        return float(loss)
    except (TypeError, ValueError) as e:
        raise TypeError(f"loss must be a number or a one-element tensor, got {type(loss).__name__}") from e


def _collective_device(device: torch.device | str | None) -> torch.device:
    """The device a one-element all_reduce must use for the current process group's backend."""
    if device is not None:
        return torch.device(device)
    backend = dist.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_loss_across_ranks(loss: float, *, device: torch.device | str | None = None) -> float:
    """Mean of ``loss`` over all ranks when torch.distributed is initialised, else ``loss`` itself.

    Every rank receives the same float (all_reduce returns identical bits on all ranks), so pacing
    decisions taken from it are identical. Must be called by every rank (it is a collective).

    Args:
        loss (float): this rank's loss.
        device (torch.device | str | None): device of the one-element tensor that is reduced;
            default: ``cuda:current`` for NCCL, CPU otherwise.

    Returns:
        float: the mean over ranks.

    Example:
        >>> reduce_loss_across_ranks(2.5)  # not distributed: unchanged
        2.5
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return float(loss)
    t = torch.tensor([float(loss)], dtype=torch.float64, device=_collective_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


class PacingCallback(TrainerCallback):
    """Feeds a curriculum sampler the smoothed (and rank-averaged) training loss.

    Use it in ``transformers.Trainer`` (``callbacks=[PacingCallback(sampler)]``, or through
    :class:`CurriculumTrainer` / :func:`attach_curriculum`, which put it first so that every reporter
    sees the curriculum keys) or call it in a hand-written loop: ``pacing(loss)`` after each
    optimiser step.

    Each call: the loss (float or one-element tensor) is averaged over ranks when
    torch.distributed is initialised (``reduce="mean"``, an all_reduce: every rank must call it),
    non-finite values are skipped with a warning (all ranks skip together, since they share the
    mean), the rest is smoothed (EMA: ``s = smoothing * s + (1 - smoothing) * loss``, started at the
    first loss; or the mean of the last ``window`` losses) and passed to ``sampler.update``.

    In the Trainer the loss comes from ``on_log`` (see the module docstring): use
    ``logging_steps=1`` for one update per optimiser step. After each update the sampler's state is
    written into the logs as ``curriculum/<key>`` (numbers only: ``None`` entries and strings such as
    the strategy and phase names are left out, lists are logged as ``curriculum/<key>_count``; the
    full state is in :attr:`state`), including into
    ``trainer.state.log_history`` (hence ``trainer_state.json``). ``sampler.set_epoch`` is called at
    each epoch begin.

    Dynamic samplers change the pool for the *next indices drawn*; a DataLoader prefetches
    (accelerate one batch, workers ``num_workers * prefetch_factor`` batches), so an update reaches
    the batches that many steps later.

    Args:
        sampler: a curriculum sampler (has ``update(loss)``, ``state``, ``set_epoch``).
        smoothing (float | None): EMA factor in [0, 1); 0 or None feeds the raw loss. Default 0.9.
        window (int | None): if given, a moving average over the last ``window`` losses instead of
            the EMA (then ``smoothing`` must be left at its default or None). Default None.
        loss_key (str): key of the training loss in the Trainer's logs. Default ``"loss"``.
        log_state (bool): write the sampler state into the Trainer's logs. Default True.
        reduce (str): ``"mean"`` (average over ranks under DDP) or ``"none"`` (use the loss as
            given, e.g. when the caller already reduced it). Default ``"mean"``.
        prefix (str): prefix of the logged keys. Default ``"curriculum/"``.

    Raises:
        TypeError: ``sampler`` has no callable ``update``.
        ValueError: a bad ``smoothing``, ``window`` or ``reduce``.

    Example:
        >>> pacing = PacingCallback(sampler)                    # doctest: +SKIP
        >>> for batch in loader:                                # doctest: +SKIP
        ...     loss = model(**batch).loss; loss.backward(); opt.step(); opt.zero_grad()
        ...     pacing(loss)
    """

    def __init__(self, sampler: Any, *, smoothing: float | None = 0.9, window: int | None = None,
                 loss_key: str = "loss", log_state: bool = True, reduce: str = "mean",
                 prefix: str = "curriculum/") -> None:
        if not callable(getattr(sampler, "update", None)):
            raise TypeError(f"sampler must have an update(loss) method, got {type(sampler).__name__}")
        if window is not None:
            if isinstance(window, bool) or not isinstance(window, int) or window < 1:
                raise ValueError(f"window must be an int >= 1 or None, got {window!r}")
            if smoothing not in (None, 0.9):
                raise ValueError("pass either smoothing (EMA) or window (moving average), not both; "
                                 f"got smoothing={smoothing!r}, window={window!r}")
            smoothing = None
        if smoothing is not None and not (isinstance(smoothing, (int, float))
                                          and not isinstance(smoothing, bool)
                                          and 0.0 <= smoothing < 1.0):
            raise ValueError(f"smoothing must be a float in [0, 1) or None, got {smoothing!r}")
        if reduce not in _REDUCTIONS:
            raise ValueError(f"reduce must be one of {_REDUCTIONS}, got {reduce!r}")
        self.sampler = sampler
        self.smoothing = float(smoothing) if smoothing is not None else 0.0
        self.window = window
        self.loss_key = loss_key
        self.log_state = log_state
        self.reduce = reduce
        self.prefix = prefix
        self._buffer: deque[float] = deque(maxlen=window) if window is not None else deque()
        self.smoothed_loss: float | None = None
        self.last_loss: float | None = None
        self.num_updates = 0
        self.num_skipped = 0
        self._epoch_base = 0
        self._epochs_begun = 0

    # -- the plain callable --------------------------------------------------------------

    def __call__(self, loss: Any) -> float | None:
        """Feed one loss (float or one-element tensor); returns the value given to the sampler.

        Returns None when the (rank-averaged) loss is not finite and was skipped.
        """
        device = loss.device if isinstance(loss, torch.Tensor) else None
        return self.feed(loss, device=device)

    def feed(self, loss: Any, *, device: torch.device | str | None = None) -> float | None:
        """Like ``__call__``, with the device of the DDP all_reduce given explicitly."""
        value = _loss_to_float(loss)
        if self.reduce == "mean":
            value = reduce_loss_across_ranks(value, device=device)
        self.last_loss = value
        if not math.isfinite(value):
            self.num_skipped += 1
            logger.warning("PacingCallback: non-finite loss %r skipped (%d skipped so far); the "
                           "sampler was not updated", value, self.num_skipped)
            return None
        if self.window is not None:
            self._buffer.append(value)
            smoothed = math.fsum(self._buffer) / len(self._buffer)
        elif self.smoothed_loss is None or self.smoothing == 0.0:
            smoothed = value
        else:
            smoothed = self.smoothing * self.smoothed_loss + (1.0 - self.smoothing) * value
        self.smoothed_loss = smoothed
        self.sampler.update(smoothed)
        self.num_updates += 1
        return smoothed

    @property
    def state(self) -> dict[str, Any]:
        """The sampler's state plus the smoothing state, keys prefixed (JSON-serialisable)."""
        out = {f"{self.prefix}{k}": v for k, v in dict(self.sampler.state).items()}
        out[f"{self.prefix}smoothed_loss"] = self.smoothed_loss
        out[f"{self.prefix}num_updates"] = self.num_updates
        out[f"{self.prefix}num_skipped"] = self.num_skipped
        return out

    def log_entries(self) -> dict[str, float]:
        """:attr:`state` reduced to numbers for the Trainer's logs (None and strings left out, lists as counts)."""
        out: dict[str, float] = {}
        for key, value in self.state.items():
            if isinstance(value, (list, tuple)):
                out[f"{key}_count"] = len(value)
            elif isinstance(value, (bool, int, float)):
                out[key] = value
            # None (not applicable) and strings (strategy, phase names) are not numbers a logger
            # can plot; they stay in `state`
        return out

    def state_dict(self) -> dict[str, Any]:
        """Smoothing state, to resume a hand-written loop exactly (the sampler saves its own)."""
        return {"smoothed_loss": self.smoothed_loss, "buffer": list(self._buffer),
                "num_updates": self.num_updates, "num_skipped": self.num_skipped,
                "last_loss": self.last_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        missing = {"smoothed_loss", "buffer", "num_updates", "num_skipped"} - set(state)
        if missing:
            raise KeyError(f"PacingCallback state is missing {sorted(missing)}")
        self.smoothed_loss = state["smoothed_loss"]
        self._buffer.clear()
        self._buffer.extend(float(x) for x in state["buffer"])
        self.num_updates = int(state["num_updates"])
        self.num_skipped = int(state["num_skipped"])
        self.last_loss = state.get("last_loss")

    # -- TrainerCallback events ----------------------------------------------------------

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
        self._epoch_base = math.floor((state.epoch or 0.0) + 1e-9)
        self._epochs_begun = 0

    def on_epoch_begin(self, args, state, control, **kwargs):
        # Counted here rather than read from state.epoch: with curriculum epochs of varying length in
        # a plain Trainer, state.epoch (steps / first epoch's length) is not the epoch index.
        epoch = self._epoch_base + self._epochs_begun
        self._epochs_begun += 1
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or self.loss_key not in logs:
            return
        self.feed(logs[self.loss_key], device=args.device)
        if not self.log_state:
            return
        _add_to_logs(state, logs, self.log_entries(), self.loss_key)


def _draws_from(dataloader: Any, sampler: Any) -> bool:
    """Whether ``sampler`` is inside ``dataloader`` (plain, or wrapped by accelerate)."""
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


# --------------------------------------------------------------------------------------------
# Trainer integration
# --------------------------------------------------------------------------------------------


def _check_sampler(sampler: Any) -> None:
    for name in ("__iter__", "__len__", "set_epoch"):
        if not callable(getattr(sampler, name, None)):
            raise TypeError(f"curriculum sampler must have {name}(), got {type(sampler).__name__}")


def _train_sampler(trainer: Trainer, train_dataset: Any = None) -> Any:
    """The curriculum sampler, after checking it fits the data set and the Trainer's settings."""
    sampler = trainer.curriculum_sampler
    strategy = str(getattr(trainer.args, "train_sampling_strategy", "random"))
    if strategy != "random":
        raise ValueError(f"train_sampling_strategy={strategy!r} conflicts with the curriculum sampler "
                         "(which decides the order); leave it at 'random'")
    dataset = train_dataset if train_dataset is not None else trainer.train_dataset
    table = getattr(sampler, "layer_diffs", None)
    n = int(table.shape[0]) if table is not None else None
    if n is not None and dataset is not None and hasattr(dataset, "__len__") and len(dataset) != n:
        raise ValueError(f"the curriculum sampler covers {n} samples but train_dataset has "
                         f"{len(dataset)}; build the sampler from this data set's difficulty table")
    replicas = getattr(sampler, "num_replicas", None)
    world = trainer.args.world_size
    if isinstance(replicas, int) and replicas != world:
        raise ValueError(f"the curriculum sampler shards over num_replicas={replicas} but the Trainer "
                         f"runs {world} process(es); build the sampler after "
                         "torch.distributed is initialised or pass num_replicas/rank")
    return sampler


def _unshard(trainer: Trainer, dataloader: Any) -> Any:
    """Stop accelerate from sharding batches of a sampler that already shards by rank.

    Under DDP ``accelerator.prepare`` wraps the batch sampler in ``BatchSamplerShard``, which would
    give rank r every r-th batch of *its own* shard (double sharding: each rank would see 1/world of
    its slice). Turning the wrapper into a pass-through (one process, no batch padding) keeps the
    sampler's slice exactly; this mirrors what the Trainer does for its own rank-aware sampler.
    ``dispatch_batches=True`` (rank 0 reads every batch and scatters) cannot work with a per-rank
    sampler and is an error.
    """
    from accelerate.data_loader import BatchSamplerShard, DataLoaderDispatcher

    if isinstance(dataloader, DataLoaderDispatcher) and trainer.args.world_size > 1:
        raise ValueError("accelerator_config dispatch_batches=True makes rank 0 draw all batches, "
                         "but the curriculum sampler already gives each rank its own slice; set "
                         "accelerator_config={'dispatch_batches': False}")
    wrapper = getattr(dataloader, "batch_sampler", None)
    if isinstance(wrapper, BatchSamplerShard):
        if wrapper.split_batches:
            raise ValueError("accelerator_config split_batches=True splits each batch over ranks, "
                             "but the curriculum sampler already shards by rank; set "
                             "split_batches=False")
        wrapper.num_processes = 1
        wrapper.process_index = 0
        wrapper.even_batches = False
    return dataloader


def _sized_epoch_kwargs(trainer: Trainer, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Size the coming epoch by the sampler's length for that epoch (curriculum pools vary)."""
    dataloader = kwargs.get("train_dataloader")
    epoch = kwargs.get("epoch")
    if dataloader is None or epoch is None or not hasattr(dataloader, "__len__"):
        return kwargs
    if callable(getattr(dataloader, "set_epoch", None)):
        dataloader.set_epoch(epoch)
    else:
        trainer.curriculum_sampler.set_epoch(epoch)
    steps = len(dataloader)
    ga = trainer.args.gradient_accumulation_steps
    kwargs = dict(kwargs)
    kwargs["steps_in_epoch"] = steps
    kwargs["num_update_steps_per_epoch"] = max(steps // ga + int(steps % ga > 0), 1)
    return kwargs


def _planned_updates(trainer: Trainer, dataloader: Any, epochs: int) -> list[int]:
    """Optimiser steps of each epoch as the sampler plans them now (its state is restored after)."""
    sampler = trainer.curriculum_sampler
    ga = trainer.args.gradient_accumulation_steps
    saved = sampler.state_dict()
    try:
        out = []
        for e in range(epochs):
            sampler.set_epoch(e)
            n = len(dataloader)
            out.append(max(n // ga + int(n % ga > 0), 1))
    finally:
        sampler.load_state_dict(saved)
    return out


def _initial_values(trainer: Trainer, values: tuple, args: Any, dataloader: Any) -> tuple:
    """Fix the Trainer's totals, which it derives from the first epoch's length only."""
    (num_train_epochs, updates_per_epoch, num_examples, num_train_samples, total_batch,
     steps_in_epoch, max_steps) = values
    if args.max_steps > 0:
        # Step-based run: the step budget decides; every epoch has at least one update, so
        # max_steps epochs always suffice even when later pools are smaller than the first.
        num_train_epochs = max(num_train_epochs, args.max_steps)
    elif hasattr(dataloader, "__len__") and callable(getattr(trainer.curriculum_sampler, "state_dict", None)):
        planned = _planned_updates(trainer, dataloader, num_train_epochs)
        whole = math.floor(args.num_train_epochs)
        if whole < len(planned):  # a fractional last epoch (num_train_epochs=2.5)
            planned[whole] = math.ceil((args.num_train_epochs - whole) * planned[whole])
        max_steps = sum(planned)
        logger.info("CurriculumTrainer: optimiser steps per epoch as planned by the sampler: %s "
                    "(total %d)", planned, max_steps)
    return (num_train_epochs, updates_per_epoch, num_examples, num_train_samples, total_batch,
            steps_in_epoch, max_steps)


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


class CurriculumTrainer(Trainer):
    """``transformers.Trainer`` that trains with a curriculum sampler.

    What it changes, and why:

    * ``_get_train_sampler`` returns ``curriculum_sampler`` (the stock Trainer builds its own
      RandomSampler and has no argument for a custom one).
    * Under DDP accelerate's ``BatchSamplerShard`` is made a pass-through: the sampler already
      gives each rank a disjoint slice, so sharding again would drop samples.
      ``dispatch_batches`` / ``split_batches`` are errors.
    * Every epoch is sized by the sampler's length for that epoch (the stock Trainer fixes the
      number of steps per epoch from the first epoch, which would cut later, larger pools short),
      and for epoch-based runs ``max_steps`` (so the LR schedule) is the sum of the epoch lengths the
      sampler plans. For samplers whose length depends on the loss that plan is a forecast; prefer
      ``max_steps`` there.
    * ``set_epoch(epoch)`` is called on the sampler before each epoch (also done by accelerate's
      DataLoader wrapper; calling it twice with the same epoch is harmless by the sampler contract).
    * With ``pacing`` a :class:`PacingCallback` is added first in the callback list (so every
      reporter logs the ``curriculum/*`` keys).

    Not exact: resuming from a Trainer checkpoint (the Trainer skips ``global_step % steps of the
    first epoch`` batches); save ``sampler.state_dict()`` yourself for exact resumes.

    Args:
        *args: passed to ``transformers.Trainer``.
        curriculum_sampler: the sampler (one of ``torch_curriculum.samplers``).
        pacing (bool | dict | PacingCallback | None): add a PacingCallback (True: defaults; dict:
            its options; or a ready one built on the same sampler). Default None.
        **kwargs: passed to ``transformers.Trainer``.

    Example:
        >>> trainer = CurriculumTrainer(model=model, args=args, train_dataset=ds,       # doctest: +SKIP
        ...                             curriculum_sampler=sampler, pacing=True)
    """

    def __init__(self, *args: Any, curriculum_sampler: Any, pacing: Any = None, **kwargs: Any) -> None:
        _check_sampler(curriculum_sampler)
        self.curriculum_sampler = curriculum_sampler
        super().__init__(*args, **kwargs)
        self.pacing_callback = _make_pacing(curriculum_sampler, pacing)
        if self.pacing_callback is not None:
            _put_first(self, self.pacing_callback)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        return _train_sampler(self, train_dataset)

    def get_train_dataloader(self):
        return _unshard(self, super().get_train_dataloader())

    def set_initial_training_values(self, args, dataloader):
        return _initial_values(self, super().set_initial_training_values(args, dataloader), args,
                               dataloader)

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        return super()._run_epoch(*args, **_sized_epoch_kwargs(self, kwargs))


def attach_curriculum(trainer: Trainer, sampler: Any, *, pacing: Any = None) -> Trainer:
    """Give an existing ``Trainer`` (any subclass, e.g. TRL's) the behaviour of :class:`CurriculumTrainer`.

    Binds the same four overrides on this instance only (the class is untouched), so that trainers
    one cannot subclass can use a curriculum too.

    Args:
        trainer (transformers.Trainer): the trainer, before ``train()``.
        sampler: the curriculum sampler.
        pacing (bool | dict | PacingCallback | None): as in :class:`CurriculumTrainer`.

    Returns:
        transformers.Trainer: the same trainer.

    Raises:
        TypeError: not a Trainer, or not a sampler.

    Example:
        >>> attach_curriculum(trainer, sampler, pacing={"smoothing": 0.8})  # doctest: +SKIP
    """
    if not isinstance(trainer, Trainer):
        raise TypeError(f"trainer must be a transformers.Trainer, got {type(trainer).__name__}")
    _check_sampler(sampler)
    trainer.curriculum_sampler = sampler
    if not isinstance(trainer, CurriculumTrainer) and not getattr(trainer, "_curriculum_attached", False):
        get_dl = trainer.get_train_dataloader
        initial = trainer.set_initial_training_values
        run_epoch = trainer._run_epoch

        def _get_train_sampler(self, train_dataset=None):
            return _train_sampler(self, train_dataset)

        def get_train_dataloader(self):
            return _unshard(self, get_dl())

        def set_initial_training_values(self, args, dataloader):
            return _initial_values(self, initial(args, dataloader), args, dataloader)

        def _run_epoch(self, *args, **kwargs):
            return run_epoch(*args, **_sized_epoch_kwargs(self, kwargs))

        for fn in (_get_train_sampler, get_train_dataloader, set_initial_training_values, _run_epoch):
            setattr(trainer, fn.__name__, types.MethodType(fn, trainer))
        trainer._curriculum_attached = True
    callback = _make_pacing(sampler, pacing)
    trainer.pacing_callback = callback
    if callback is not None:
        _put_first(trainer, callback)
    return trainer


# --------------------------------------------------------------------------------------------
# layer masks
# --------------------------------------------------------------------------------------------


def _innermost_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """Unwrap accelerate's AcceleratedOptimizer (and similar) to the torch optimizer that steps."""
    seen = 0
    while not isinstance(optimizer, torch.optim.Optimizer) or (
            hasattr(optimizer, "optimizer") and isinstance(optimizer.optimizer, torch.optim.Optimizer)):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or seen > 8:
            break
        optimizer, seen = inner, seen + 1
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer (or wrap one in .optimizer), got "
                        f"{type(optimizer).__name__}")
    return optimizer


class LayerMaskScheduler(TrainerCallback):
    """Freezes and unfreezes a model's layers following a curriculum (``requires_grad`` per layer).

    Which parameters: only those with ``requires_grad=True`` when the scheduler is built are managed
    (for a PEFT model: the LoRA weights; the frozen base model stays frozen). A parameter belongs to
    layer N when ``layer_pattern`` finds N in its name (first match); the default
    :data:`DEFAULT_LAYER_PATTERN` reads ``...layers.<N>.`` (also ``h.<N>.``, ``layer.<N>.``,
    ``block(s).<N>.``), which covers PEFT LoRA names, common decoders and the reference LoRA-Gen
    generator (``layers.<N>.`` / ``generator.layers.<N>.``). A model of your own should name its
    per-layer parameters ``...layers.<N>.`` or pass ``layer_pattern``. Managed parameters in no
    layer follow ``outside_policy`` (:data:`OUTSIDE_POLICIES`).

    Where the layers come from: ``source.trainable_layers`` (sampler contract: a list of layer
    indices, or None for all layers), or ``source(step)`` for any callable ``step -> list[int] |
    None``; ``step`` is the Trainer's ``global_step`` or, by hand, the number of :meth:`step` calls.

    Frozen parameters do not move: freezing sets ``p.grad = None`` and a step pre-hook on the
    optimizer sets ``p.grad = None`` again for every frozen managed parameter right before each
    step. torch's Adam/AdamW/SGD skip parameters whose grad is None, so neither weight decay nor
    stale Adam moments touch them (a zero grad tensor, e.g. after ``zero_grad(set_to_none=False)``,
    would let AdamW move them). The hook goes on the optimizer given here or, in the Trainer, on the
    Trainer's optimizer at ``on_train_begin``. Build the optimizer over all managed parameters
    *before* the first freeze (the Trainer does; it only takes parameters that require grad).

    Under DDP parameters that stop requiring grad need ``find_unused_parameters=True`` (the Trainer's
    default for most models; ``ddp_find_unused_parameters=False`` is an error here).

    Args:
        model (nn.Module): the model (PEFT model, generator, any module).
        source: a sampler with ``trainable_layers``, or a callable ``step -> list[int] | None``.
        layer_pattern (str | re.Pattern | None): regex whose group 1 (or group ``layer``) is the
            layer index. Default :data:`DEFAULT_LAYER_PATTERN`.
        outside_policy (str): ``"trainable"`` (default), ``"frozen"`` or ``"always_frozen"``.
        optimizer (torch.optim.Optimizer | None): optimizer to guard with the pre-step hook.

    Raises:
        ValueError: no managed parameter matches the pattern (the message shows the pattern and
            sample names), a bad pattern or policy, or the model has nothing trainable.
        TypeError: ``source`` is neither a sampler nor a callable.

    Example:
        >>> sched = LayerMaskScheduler(peft_model, sampler, optimizer=opt)   # doctest: +SKIP
        >>> for batch in loader:                                            # doctest: +SKIP
        ...     sched.step(); loss = peft_model(**batch).loss; loss.backward(); opt.step()
    """

    def __init__(self, model: nn.Module, source: Any, *, layer_pattern: str | re.Pattern | None = None,
                 outside_policy: str = "trainable", optimizer: torch.optim.Optimizer | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not (hasattr(source, "trainable_layers") or callable(source)):
            raise TypeError("source must have a trainable_layers attribute (a curriculum sampler) or "
                            f"be a callable step -> list[int] | None, got {type(source).__name__}")
        if outside_policy not in OUTSIDE_POLICIES:
            raise ValueError(f"outside_policy must be one of {OUTSIDE_POLICIES}, got {outside_policy!r}")
        pattern = re.compile(layer_pattern if layer_pattern is not None else DEFAULT_LAYER_PATTERN)
        if "layer" not in pattern.groupindex and pattern.groups < 1:
            raise ValueError(f"layer_pattern {pattern.pattern!r} must capture the layer index in group "
                             "1 or in a group named 'layer', e.g. r'layers\\.(\\d+)\\.'")
        group: int | str = "layer" if "layer" in pattern.groupindex else 1
        self.model = model
        self.source = source
        self.pattern = pattern
        self.outside_policy = outside_policy
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no parameter with requires_grad=True; LayerMaskScheduler "
                             "manages the parameters that are trainable when it is built")
        self.layer_params: dict[int, list[tuple[str, nn.Parameter]]] = {}
        self.outside_params: list[tuple[str, nn.Parameter]] = []
        for name, p in named:
            m = pattern.search(name)
            if m is None:
                self.outside_params.append((name, p))
                continue
            try:
                idx = int(m.group(group))
            except (TypeError, ValueError) as e:
                raise ValueError(f"layer_pattern {pattern.pattern!r} matched {name!r} but its group "
                                 f"{group!r} is {m.group(group)!r}, not an integer layer index") from e
            self.layer_params.setdefault(idx, []).append((name, p))
        if not self.layer_params:
            sample = ", ".join(n for n, _ in named[:8])
            raise ValueError(f"layer_pattern {pattern.pattern!r} matches none of the model's "
                             f"{len(named)} trainable parameters (e.g. {sample}); pass a layer_pattern "
                             "whose group 1 is the layer index, e.g. r'(?:^|\\.)layers\\.(\\d+)\\.'")
        self.layers = sorted(self.layer_params)
        expected = getattr(source, "num_layers", None)
        if isinstance(expected, int) and expected != len(self.layers):
            logger.warning("LayerMaskScheduler: the source has num_layers=%d but the model's trainable "
                           "parameters fall into %d layers %s", expected, len(self.layers), self.layers)
        self.num_steps = 0
        self.current_layers: list[int] | None = None
        self._applied: tuple[int, ...] | bool | None = False  # False: nothing applied yet
        self._hooked: dict[int, Any] = {}
        if optimizer is not None:
            self.attach_optimizer(optimizer)

    # -- core ----------------------------------------------------------------------------

    def _requested_layers(self, step: int) -> list[int] | None:
        if hasattr(self.source, "trainable_layers"):
            layers = self.source.trainable_layers
        else:
            layers = self.source(step)
        if layers is None:
            return None
        layers = sorted({int(i) for i in layers})
        unknown = [i for i in layers if i not in self.layer_params]
        if unknown:
            raise ValueError(f"trainable layers {unknown} requested, but the model's trainable "
                             f"parameters matching {self.pattern.pattern!r} are in layers "
                             f"{self.layers}")
        return layers

    def apply(self, step: int | None = None) -> list[int] | None:
        """Set ``requires_grad`` from the source now; returns the trainable layers (None: all).

        Args:
            step (int | None): step passed to a callable source; default: the number of
                :meth:`step` calls so far.
        """
        layers = self._requested_layers(self.num_steps if step is None else step)
        key = None if layers is None else tuple(layers)
        self.current_layers = layers
        if key == self._applied:
            return layers
        active = set(self.layers) if layers is None else set(layers)
        for idx, params in self.layer_params.items():
            self._set(params, idx in active)
        if self.outside_policy == "trainable":
            outside = True
        elif self.outside_policy == "frozen":
            outside = layers is None
        else:
            outside = False
        self._set(self.outside_params, outside)
        self._applied = key
        logger.debug("LayerMaskScheduler: trainable layers %s", layers if layers is not None else "all")
        return layers

    def step(self) -> list[int] | None:
        """Apply the mask for the current step, then count one step (call once per optimiser step)."""
        layers = self.apply(self.num_steps)
        self.num_steps += 1
        return layers

    @staticmethod
    def _set(params: Iterable[tuple[str, nn.Parameter]], trainable: bool) -> None:
        for _, p in params:
            p.requires_grad_(trainable)
            if not trainable:
                p.grad = None

    def frozen_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Managed parameters that are frozen right now."""
        every = [x for ps in self.layer_params.values() for x in ps] + self.outside_params
        return [(n, p) for n, p in every if not p.requires_grad]

    def attach_optimizer(self, optimizer: Any) -> None:
        """Guard ``optimizer`` (once): before each step, frozen managed parameters get ``grad = None``."""
        opt = _innermost_optimizer(optimizer)
        if id(opt) in self._hooked:
            return
        managed = {id(p) for ps in self.layer_params.values() for _, p in ps}
        managed |= {id(p) for _, p in self.outside_params}
        in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
        if not managed & in_opt:
            raise ValueError("the optimizer holds none of the parameters this LayerMaskScheduler "
                             "manages; build it over the model's trainable parameters")

        def _drop_frozen_grads(_opt, _args, _kwargs):
            for _, p in self.frozen_parameters():
                p.grad = None

        self._hooked[id(opt)] = opt.register_step_pre_hook(_drop_frozen_grads)

    def remove_hooks(self) -> None:
        """Remove the optimizer hooks this scheduler registered."""
        for handle in self._hooked.values():
            handle.remove()
        self._hooked.clear()

    @property
    def state(self) -> dict[str, Any]:
        """Which layers are trainable (JSON-serialisable, for logs)."""
        layers = self.current_layers
        trainable = self.layers if layers is None else layers
        return {"trainable_layers": None if layers is None else list(layers),
                "frozen_layers": [i for i in self.layers if i not in set(trainable)],
                "num_trainable_params": sum(p.numel() for _, p in
                                            ([x for ps in self.layer_params.values() for x in ps]
                                             + self.outside_params) if p.requires_grad),
                "step": self.num_steps}

    # -- TrainerCallback events ----------------------------------------------------------

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if args.world_size > 1 and args.ddp_find_unused_parameters is False:
            raise ValueError("LayerMaskScheduler freezes parameters during training, which DDP only "
                             "allows with find_unused_parameters; set ddp_find_unused_parameters=True")
        if optimizer is not None:
            self.attach_optimizer(optimizer)
        elif not self._hooked:
            logger.warning("LayerMaskScheduler: no optimizer to guard; frozen parameters rely on "
                           "their grads being None")
        self.num_steps = state.global_step
        self.apply(state.global_step)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.apply(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self.num_steps = state.global_step
        self.apply(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs:
            st = self.state
            layers = st["trainable_layers"]
            _add_to_logs(state, logs, {
                "curriculum/num_trainable_params": st["num_trainable_params"],
                "curriculum/num_trainable_layers": len(self.layers) if layers is None else len(layers),
            }, "loss")

