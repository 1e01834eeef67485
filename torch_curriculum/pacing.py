"""Pacing functions: how large the eligible pool is as the curriculum progresses.

Every function maps curriculum progress ``t`` in [0, 1] (0 = the first curriculum epoch/step after
warm-up, 1 = ``curriculum_end_epoch``) to the fraction of the data set (the upper percentile of the
pool) in ``[start, 1]``. ``start`` is the first stage's percentile (``stage_percentiles[0]``, seed
0.33), so every function starts where warm-up left off and reaches the full data set at ``t = 1``.

* ``linear``: ``start + (1 - start) * t`` (DeepSpeed ``fixed_linear``).
* ``root``: ``start + (1 - start) * t ** (1 / degree)``, degree 2 by default (DeepSpeed
  ``fixed_root``): fast growth early, slow late.
* ``step`` (alias ``discrete``): the stage bounds ``stage_percentiles[floor(t * S)]`` (DeepSpeed
  ``fixed_discrete``; the S stages share the curriculum time equally).
* ``exponential``: ``start ** (1 - t)``, i.e. ``start * (1/start) ** t`` (the smooth form of the
  exponential pacing of Hacohen & Weinshall, ICML 2019: the pool grows by a constant factor per unit
  of time).
* ``competence``: ``sqrt(t * (1 - start**2) + start**2)`` (Platanios et al., NAACL 2019, "sqrt"
  competence with ``c0 = start``).

The plain loss feeder :class:`LossFeeder` (smoothing, skipping non-finite losses, averaging over
ranks, feeding ``sampler.update``) lives here too, so a hand-written loop needs neither transformers
nor accelerate; ``torch_curriculum.PacingCallback`` is the same feeder with a ``transformers``
``TrainerCallback`` face (``torch_curriculum.integrations.hf``).

Example:
    >>> round(pacing_fraction("linear", 0.5, start=0.2), 6)
    0.6
    >>> pacing_fraction("step", 0.5, stage_percentiles=(0.33, 0.66, 1.0))
    0.66
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["PACING_NAMES", "LossFeeder", "curriculum_progress", "pacing_fraction",
           "reduce_loss_across_ranks"]

logger = logging.getLogger(__name__)

_REDUCTIONS = ("mean", "none")

PACING_NAMES = ("linear", "root", "step", "discrete", "exponential", "competence")


def pacing_fraction(
    name: str,
    t: float,
    *,
    start: float = 0.33,
    stage_percentiles: Sequence[float] = (0.33, 0.66, 1.0),
    root_degree: float = 2.0,
) -> float:
    """Fraction of the data set (upper percentile of the easy-first pool) at progress ``t``.

    Args:
        name (str): ``linear``, ``root``, ``step``/``discrete``, ``exponential`` or ``competence``.
        t (float): curriculum progress in [0, 1]; values outside are clipped.
        start (float): fraction at ``t = 0``, in (0, 1]. Defaults to 0.33 (the seed's first stage).
        stage_percentiles (Sequence[float]): stage bounds used by ``step``. Defaults to (0.33, 0.66, 1.0).
        root_degree (float): degree of ``root`` (> 0). Defaults to 2.0.

    Returns:
        float: the fraction in ``[start, 1]`` (``step``: one of ``stage_percentiles``).

    Raises:
        ValueError: unknown name, ``start`` outside (0, 1], NaN ``t``, ``root_degree <= 0`` or empty
            ``stage_percentiles``.

    Example:
        >>> pacing_fraction("competence", 1.0, start=0.1)
        1.0
    """
    if name not in PACING_NAMES:
        raise ValueError(f"unknown pacing function {name!r}; expected one of {', '.join(PACING_NAMES)}")
    if not 0 < start <= 1:
        raise ValueError(f"start must lie in (0, 1], got {start}")
    if math.isnan(t):
        raise ValueError("progress t is NaN")
    t = min(max(float(t), 0.0), 1.0)
    if name == "linear":
        f = start + (1.0 - start) * t
    elif name == "root":
        if not root_degree > 0:
            raise ValueError(f"root_degree must be > 0, got {root_degree}")
        f = start + (1.0 - start) * t ** (1.0 / root_degree)
    elif name in ("step", "discrete"):
        sp = list(stage_percentiles)
        if not sp:
            raise ValueError("stage_percentiles must not be empty")
        return float(sp[min(int(t * len(sp)), len(sp) - 1)])
    elif name == "exponential":
        f = start ** (1.0 - t)
    else:  # competence
        f = math.sqrt(t * (1.0 - start * start) + start * start)
    # round so that e.g. linear(0.5) is exactly the decimal a user expects (pool = percentile <= f)
    return min(1.0, round(f, 12))


def curriculum_progress(
    t: float, *, curriculum_start_epoch: float, curriculum_end_epoch: float, warmup_epochs: float
) -> tuple[str, float]:
    """Phase and progress of the curriculum at clock ``t`` (in epochs, fractional under step pacing).

    Phases: ``"before"`` (``t < curriculum_start_epoch``: random order over everything),
    ``"warmup"`` (the first ``warmup_epochs`` curriculum epochs: first stage's pool), ``"curriculum"``
    (progress ``u = (t - start - warmup) / (end - start - warmup)`` in [0, 1)) and ``"after"``
    (``t >= curriculum_end_epoch``: random order over everything).

    Args:
        t (float): clock in epochs.
        curriculum_start_epoch (float): first curriculum epoch.
        curriculum_end_epoch (float): first epoch after the curriculum.
        warmup_epochs (float): warm-up epochs at the start of the curriculum.

    Returns:
        tuple[str, float]: ``(phase, u)``; ``u`` is 0 outside the ``"curriculum"`` phase.

    Example:
        >>> curriculum_progress(3, curriculum_start_epoch=0, curriculum_end_epoch=5, warmup_epochs=1)
        ('curriculum', 0.5)
    """
    if t < curriculum_start_epoch:
        return "before", 0.0
    if t >= curriculum_end_epoch:
        return "after", 0.0
    if t < curriculum_start_epoch + warmup_epochs:
        return "warmup", 0.0
    span = curriculum_end_epoch - curriculum_start_epoch - warmup_epochs
    return "curriculum", min(max((t - curriculum_start_epoch - warmup_epochs) / span, 0.0), 1.0)


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


class LossFeeder:
    """Feeds a curriculum sampler the smoothed (and rank-averaged) training loss (no transformers needed).

    Call it in a hand-written loop: ``pacing(loss)`` after each optimiser step. In
    ``transformers.Trainer`` use :class:`torch_curriculum.PacingCallback` (this feeder with a
    ``TrainerCallback`` face, fed from the Trainer's logs).

    Each call: the loss (float or one-element tensor) is averaged over ranks when
    torch.distributed is initialised (``reduce="mean"``, an all_reduce: every rank must call it),
    non-finite values are skipped with a warning (all ranks skip together, since they share the
    mean), the rest is smoothed (EMA: ``s = smoothing * s + (1 - smoothing) * loss``, started at the
    first loss; or the mean of the last ``window`` losses) and passed to ``sampler.update``.

    Dynamic samplers change the pool for the *next indices drawn*; a DataLoader prefetches
    (accelerate one batch, workers ``num_workers * prefetch_factor`` batches), so an update reaches
    the batches that many steps later.

    Args:
        sampler: a curriculum sampler (has ``update(loss)``, ``state``, ``set_epoch``).
        smoothing (float | None): EMA factor in [0, 1); 0 or None feeds the raw loss. Default 0.9.
        window (int | None): if given, a moving average over the last ``window`` losses instead of
            the EMA (then ``smoothing`` must be left at its default or None). Default None.
        loss_key (str): key of the training loss in the Trainer's logs. Default ``"loss"``.
        log_state (bool): write the sampler state into the Trainer's logs (Trainer face only).
            Default True.
        reduce (str): ``"mean"`` (average over ranks under DDP) or ``"none"`` (use the loss as
            given, e.g. when the caller already reduced it). Default ``"mean"``.
        prefix (str): prefix of the logged keys. Default ``"curriculum/"``.

    Raises:
        TypeError: ``sampler`` has no callable ``update``.
        ValueError: a bad ``smoothing``, ``window`` or ``reduce``.

    Example:
        >>> pacing = LossFeeder(sampler)                        # doctest: +SKIP
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
            logger.warning("LossFeeder: non-finite loss %r skipped (%d skipped so far); the "
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
            raise KeyError(f"LossFeeder state is missing {sorted(missing)}")
        self.smoothed_loss = state["smoothed_loss"]
        self._buffer.clear()
        self._buffer.extend(float(x) for x in state["buffer"])
        self.num_updates = int(state["num_updates"])
        self.num_skipped = int(state["num_skipped"])
        self.last_loss = state.get("last_loss")
