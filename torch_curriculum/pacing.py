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

Example:
    >>> round(pacing_fraction("linear", 0.5, start=0.2), 6)
    0.6
    >>> pacing_fraction("step", 0.5, stage_percentiles=(0.33, 0.66, 1.0))
    0.66
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["PACING_NAMES", "curriculum_progress", "pacing_fraction"]

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
