"""Small schedule objects, one per curriculum strategy: what the pool is at curriculum time ``t``.

A schedule never draws anything and never reads the difficulty table. It answers three questions for
the engine (:class:`torch_curriculum.sampling.engine.CurriculumSampler`):

* :meth:`Schedule.pace` ``(time) -> Pace``: which score orders the data (a :class:`ScoreSpec`, or
  None for "everything, random order"), the pool's upper percentile, strict order, and what to
  report (stage, active / trainable layers, current layer);
* :meth:`Schedule.observe` ``(loss, time)``: react to one (smoothed, rank-averaged) loss value;
  only the dynamic schedules have state that moves;
* :meth:`Schedule.state_dict` / :meth:`Schedule.load_state_dict`: that state, JSON-serialisable and
  checked on load (a hand-edited ``p = NaN`` or ``p = 5`` is an error naming the field).

``time`` is a :class:`~torch_curriculum.sampling.engine.Time` (phase, progress ``u``, time since the
end of warm-up ``rel`` and the post-warm-up span, in the timeline's unit: epochs or steps).
:class:`HybridSchedule` composes a :class:`LayerWiseSchedule` (stages, active layers, score) with a
:class:`DynamicSchedule` (the loss-driven percentile, clamped into the stage's band).

Example:
    >>> from torch_curriculum.sampling.engine import Time
    >>> s = EasyToHardSchedule(stage_percentiles=(0.33, 0.66, 1.0))
    >>> s.pace(Time("curriculum", 0.5, 2.0, 4.0)).percentile
    0.665
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ..pacing import PACING_NAMES, pacing_fraction

__all__ = [
    "DynamicSchedule",
    "EasyToHardSchedule",
    "HybridSchedule",
    "LayerSpecificSchedule",
    "LayerWiseSchedule",
    "Pace",
    "RandomSchedule",
    "Schedule",
    "ScoreSpec",
]


class ScoreSpec(NamedTuple):
    """A difficulty score the engine can compute from the table: ``how`` over ``layers``.

    ``how="primary"`` (layers None) is the file's primary score (``topk_mean`` with the file's K for
    a tensor); ``"topk_mean"`` is the mean of the ``k`` largest ``d_i`` over ``layers``; ``"mean"`` the
    mean over ``layers``.
    """

    how: str = "primary"
    layers: tuple[int, ...] | None = None
    k: int = 0

    def key(self) -> str:
        """A short string naming the score (stored in sampler states)."""
        if self.how == "primary":
            return "primary"
        return f"{self.how}:{self.k}:{','.join(map(str, self.layers or ()))}"

    @classmethod
    def parse(cls, key: str) -> ScoreSpec:
        """Inverse of :meth:`key`.

        Raises:
            ValueError: not a key written by :meth:`key`.
        """
        if key == "primary":
            return cls()
        try:
            how, k, layers = key.split(":")
            spec = cls(how, tuple(int(x) for x in layers.split(",")), int(k))
        except ValueError:
            raise ValueError(f"not a score key: {key!r}") from None
        if how not in ("topk_mean", "mean"):
            raise ValueError(f"not a score key: {key!r}")
        return spec


class Pace(NamedTuple):
    """What a schedule wants right now (``score`` None: everything, in random order)."""

    phase: str
    score: ScoreSpec | None = None
    percentile: float = 1.0
    strict: bool = False
    stage: int | None = None
    active_layers: tuple[int, ...] | None = None
    current_layer: int | None = None
    trainable: tuple[int, ...] | None = None


_PRIMARY = ScoreSpec()


def _stage_of(stage_percentiles: Sequence[float], p: float) -> int:
    """Smallest 1-based s with ``p <= stage_percentiles[s-1]``."""
    return bisect.bisect_left(stage_percentiles, p) + 1


def _check_prob(name: str, v: Any, *, low_open: bool = True) -> float:
    """A finite float in (0, 1] (or [0, 1] with ``low_open=False``); the error names the parameter."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v) or not (v > 0 if low_open else v >= 0) or v > 1:
        raise ValueError(f"{name} must lie in {'(0, 1]' if low_open else '[0, 1]'}, got {v}")
    return v


class Schedule:
    """Base of the schedules: a static pool, no state. Subclasses override :meth:`pace`.

    Attributes:
        moves_within_epoch (bool): the pool changes with :meth:`observe` even under epoch pacing.
    """

    moves_within_epoch = False

    def pace(self, time: Any) -> Pace:
        """The pace at ``time`` (a :class:`~torch_curriculum.sampling.engine.Time`)."""
        return Pace(phase="random")

    def observe(self, loss: float, time: Any) -> None:
        """React to one loss value at ``time`` (the clock after this step). Default: nothing."""

    def stage_specs(self) -> list[tuple[ScoreSpec, float]] | None:
        """Per stage s (1-based, in order): the score and upper percentile of its pool, or None
        when the strategy has no stages (every sample is eligible from the start)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """The schedule's moving state (JSON-serialisable). Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: a field is missing or out of range (the message names it).
        """
        if not isinstance(state, dict):
            raise ValueError(f"sampler state field 'strategy_state' must be a mapping, got {type(state).__name__}")

    def log_state(self) -> dict[str, Any]:
        """Extra keys for ``sampler.state``."""
        return {}


class RandomSchedule(Schedule):
    """The baseline: every sample, a fresh random permutation each epoch."""


class EasyToHardSchedule(Schedule):
    """The pool is the easiest fraction by the primary score, growing with a pacing function.

    Args:
        stage_percentiles (Sequence[float]): stage bounds; the first is warm-up's pool.
        pacing_function (str): see :mod:`torch_curriculum.pacing`. Defaults to ``linear``.
        root_degree (float): degree of ``root``. Defaults to 2.0.
        strict_order (bool): draw the pool easy to hard. Defaults to False.
    """

    def __init__(self, stage_percentiles: Sequence[float], *, pacing_function: str = "linear",
                 root_degree: float = 2.0, strict_order: bool = False):
        if pacing_function not in PACING_NAMES:
            raise ValueError(f"unknown pacing_function {pacing_function!r}; expected one of {', '.join(PACING_NAMES)}")
        if isinstance(root_degree, bool) or not isinstance(root_degree, (int, float)) \
                or not math.isfinite(root_degree) or not root_degree > 0:
            raise ValueError(f"root_degree must be a finite number > 0, got {root_degree!r}")
        self.stage_percentiles = tuple(stage_percentiles)
        self.pacing_function = pacing_function
        self.root_degree = float(root_degree)
        self.strict_order = bool(strict_order)

    def pace(self, time: Any) -> Pace:
        """Primary-score pool at ``time``: the first stage's percentile in warm-up, then grown by the pacing function.

        Args:
            time (Time): the curriculum time (:class:`~torch_curriculum.sampling.engine.Time`).

        Returns:
            Pace: only the phase before/after the curriculum (everything eligible); otherwise the primary
            score, the percentile, ``strict_order`` and the stage that percentile falls in.
        """
        if time.phase in ("before", "after"):
            return Pace(phase=time.phase)
        sp = self.stage_percentiles
        p = sp[0] if time.phase == "warmup" else pacing_fraction(
            self.pacing_function, time.u, start=sp[0], stage_percentiles=sp, root_degree=self.root_degree)
        return Pace(phase=time.phase, score=_PRIMARY, percentile=p, strict=self.strict_order, stage=_stage_of(sp, p))

    def stage_specs(self) -> list[tuple[ScoreSpec, float]]:
        """One stage per bound, all ordered by the primary score.

        Returns:
            list[tuple[ScoreSpec, float]]: ``(primary score, stage_percentiles[s-1])`` per stage.
        """
        return [(_PRIMARY, p) for p in self.stage_percentiles]


class LayerWiseSchedule(Schedule):
    """Stage s activates layers ``[0, ceil(s*L/S))`` and admits the samples whose score over the active
    layers is within ``stage_percentiles[s-1]``; the stages share the post-warm-up time equally.

    Args:
        stage_percentiles (Sequence[float]): stage bounds (S = their number).
        num_layers (int): L.
        top_k (int): K of the active-layer ``topk_mean`` (``k = min(top_k, n_active)``).
        active_score (str): ``topk_mean`` (default) or ``mean``.
        strict_order (bool): draw the pool easy to hard. Defaults to False.
    """

    def __init__(self, stage_percentiles: Sequence[float], num_layers: int, top_k: int, *,
                 active_score: str = "topk_mean", strict_order: bool = False):
        if active_score not in ("topk_mean", "mean"):
            raise ValueError(f"active_score must be 'topk_mean' or 'mean', got {active_score!r}")
        self.stage_percentiles = tuple(stage_percentiles)
        self.num_stages = len(self.stage_percentiles)
        self.num_layers = int(num_layers)
        self.top_k = int(top_k)
        self.active_score = active_score
        self.strict_order = bool(strict_order)

    def n_active(self, stage: int) -> int:
        """Active layers of a 1-based stage: ``ceil(stage * L / S)``."""
        return -(-stage * self.num_layers // self.num_stages)

    def score_of(self, stage: int) -> ScoreSpec:
        """The score that orders stage ``stage``'s pool."""
        n = self.n_active(stage)
        if self.active_score == "mean":
            return ScoreSpec("mean", tuple(range(n)), 0)
        return ScoreSpec("topk_mean", tuple(range(n)), min(self.top_k, n))

    def stage_at(self, time: Any) -> int:
        """Stage at ``time``: 1 outside the curriculum proper, else ``1 + floor(rel * S / span)``."""
        if time.phase != "curriculum":
            return 1
        # rel * S / span (not u * S): exact for whole epochs
        return min(1 + int(time.rel * self.num_stages / time.span), self.num_stages)

    def stage_pace(self, time: Any, percentile: float) -> Pace:
        """The pace of the stage at ``time`` with a given pool percentile (used by :class:`HybridSchedule`).

        Args:
            time (Time): the curriculum time (:class:`~torch_curriculum.sampling.engine.Time`).
            percentile (float): the pool's upper percentile.

        Returns:
            Pace: the stage, its active-layer score, ``percentile``, and the active layers (also the
            trainable ones).
        """
        s = self.stage_at(time)
        layers = tuple(range(self.n_active(s)))
        return Pace(phase=time.phase, score=self.score_of(s), percentile=percentile, strict=self.strict_order,
                    stage=s, active_layers=layers, trainable=layers)

    def pace(self, time: Any) -> Pace:
        """The stage's pool at ``time``: its active-layer score up to its ``stage_percentiles`` bound.

        Args:
            time (Time): the curriculum time (:class:`~torch_curriculum.sampling.engine.Time`).

        Returns:
            Pace: only the phase before/after the curriculum; otherwise :meth:`stage_pace` with the
            stage's bound.
        """
        if time.phase in ("before", "after"):
            return Pace(phase=time.phase)
        return self.stage_pace(time, self.stage_percentiles[self.stage_at(time) - 1])

    def stage_specs(self) -> list[tuple[ScoreSpec, float]]:
        """Per stage: the score over its active layers and its bound.

        Returns:
            list[tuple[ScoreSpec, float]]: ``(score_of(s), stage_percentiles[s-1])`` per stage s.
        """
        return [(self.score_of(s + 1), p) for s, p in enumerate(self.stage_percentiles)]


class DynamicSchedule(Schedule):
    """The pool's percentile moves with the loss (the seed's dynamic pacing).

    ``observe(loss)`` during the curriculum proper: ``loss < threshold`` -> ``p += step_up``, else
    ``p -= step_down``, clamped to ``[min_percentile, 1]`` (warm-up: ``stage_percentiles[0]``;
    before/after the curriculum: everything). With ``adaptive_threshold`` the threshold is the mean of
    the previous ``adaptive_window`` losses (the fixed one until a loss has arrived).

    Args:
        stage_percentiles (Sequence[float]): stage bounds (reporting, warm-up pool, default floor).
        loss_threshold (float): finite. Defaults to 2.0.
        difficulty_step_up (float): in [0, 1]. Defaults to 0.05.
        difficulty_step_down (float): in [0, 1]. Defaults to 0.02.
        adaptive_threshold (bool): Defaults to False.
        adaptive_window (int): >= 1. Defaults to 50.
        min_percentile (float | None): floor in (0, 1]; None: ``stage_percentiles[0]``.
        initial_percentile (float | None): start of the curriculum proper; None: the floor.
        strict_order (bool): Defaults to False.

    Raises:
        ValueError: a parameter is NaN/inf or out of range (the message names it).
    """

    moves_within_epoch = True

    def __init__(self, stage_percentiles: Sequence[float], *, loss_threshold: float = 2.0,
                 difficulty_step_up: float = 0.05, difficulty_step_down: float = 0.02,
                 adaptive_threshold: bool = False, adaptive_window: int = 50, min_percentile: float | None = None,
                 initial_percentile: float | None = None, strict_order: bool = False):
        if isinstance(loss_threshold, bool) or not isinstance(loss_threshold, (int, float, np.floating, np.integer)) \
                or not math.isfinite(float(loss_threshold)):
            raise ValueError(f"loss_threshold must be a finite number, got {loss_threshold!r}")
        self.difficulty_step_up = _check_prob("difficulty_step_up", difficulty_step_up, low_open=False)
        self.difficulty_step_down = _check_prob("difficulty_step_down", difficulty_step_down, low_open=False)
        if isinstance(adaptive_window, bool) or not isinstance(adaptive_window, int) or adaptive_window < 1:
            raise ValueError(f"adaptive_window must be an integer >= 1, got {adaptive_window!r}")
        if min_percentile is not None:
            min_percentile = _check_prob("min_percentile", min_percentile)
        if initial_percentile is not None:
            initial_percentile = _check_prob("initial_percentile", initial_percentile)
        self.stage_percentiles = tuple(stage_percentiles)
        self.loss_threshold = float(loss_threshold)
        self.adaptive_threshold = bool(adaptive_threshold)
        self.adaptive_window = adaptive_window
        self.strict_order = bool(strict_order)
        self.min_percentile = self.stage_percentiles[0] if min_percentile is None else min_percentile
        start = self.min_percentile if initial_percentile is None else initial_percentile
        self.p = min(max(start, self.min_percentile), 1.0)
        self.losses: deque[float] = deque(maxlen=adaptive_window)
        self.threshold = self.loss_threshold

    def move(self, loss: float, lo: float, hi: float) -> None:
        """One step: ``loss < threshold`` -> up by step_up, else down by step_down, clamped to [lo, hi]."""
        p = min(max(self.p, lo), hi)
        p += self.difficulty_step_up if loss < self.threshold else -self.difficulty_step_down
        # rounding keeps 0.33 + 0.05 == 0.38 exactly, so "percentile <= p" means what it says
        self.p = min(max(round(p, 12), lo), hi)

    def record(self, loss: float) -> None:
        """Add a loss to the history (after the comparison that used the previous threshold)."""
        self.losses.append(loss)
        if self.adaptive_threshold:
            self.threshold = sum(self.losses) / len(self.losses)

    def observe(self, loss: float, time: Any) -> None:
        """Move ``p`` up or down by the loss (curriculum phase only), then record the loss.

        Args:
            loss (float): the (smoothed, rank-averaged) loss.
            time (Time): the curriculum time (:class:`~torch_curriculum.sampling.engine.Time`).
        """
        if time.phase == "curriculum":
            self.move(loss, self.min_percentile, 1.0)
        self.record(loss)

    def pace(self, time: Any) -> Pace:
        """Primary-score pool at ``time``: the first stage's percentile in warm-up, else the current ``p``.

        Args:
            time (Time): the curriculum time (:class:`~torch_curriculum.sampling.engine.Time`).

        Returns:
            Pace: only the phase before/after the curriculum; otherwise the primary score, the
            percentile, ``strict_order`` and the stage that percentile falls in.
        """
        if time.phase in ("before", "after"):
            return Pace(phase=time.phase)
        p = self.stage_percentiles[0] if time.phase == "warmup" else self.p
        return Pace(phase=time.phase, score=_PRIMARY, percentile=p, strict=self.strict_order,
                    stage=_stage_of(self.stage_percentiles, p))

    def stage_specs(self) -> list[tuple[ScoreSpec, float]]:
        """Stages for reporting, all ordered by the primary score.

        Returns:
            list[tuple[ScoreSpec, float]]: ``(primary score, stage_percentiles[s-1])`` per stage.
        """
        return [(_PRIMARY, p) for p in self.stage_percentiles]

    def state_dict(self) -> dict[str, Any]:
        """The moving state.

        Returns:
            dict[str, Any]: ``{"p", "losses" (the recent-loss window), "threshold"}``.
        """
        return {"p": self.p, "losses": list(self.losses), "threshold": self.threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` after checking every field.

        Args:
            state (dict[str, Any]): as returned by :meth:`state_dict`.

        Raises:
            ValueError: a field is missing, not finite, or ``p`` is outside ``[min_percentile, 1]``.
        """
        super().load_state_dict(state)
        for key in ("p", "losses", "threshold"):
            if key not in state:
                raise ValueError(f"sampler state is incomplete: 'strategy_state.{key}' is missing")
        p = _check_prob("sampler state field 'strategy_state.p'", state["p"])
        if not self.min_percentile <= p:
            raise ValueError(f"sampler state field 'strategy_state.p'={p} is below this sampler's "
                             f"min_percentile={self.min_percentile}")
        thr = state["threshold"]
        if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not math.isfinite(thr):
            raise ValueError(f"sampler state field 'strategy_state.threshold' must be a finite number, got {thr!r}")
        losses = state["losses"]
        if not isinstance(losses, list) or any(isinstance(x, bool) or not isinstance(x, (int, float))
                                               or not math.isfinite(x) for x in losses):
            raise ValueError("sampler state field 'strategy_state.losses' must be a list of finite numbers")
        self.p = p
        self.losses = deque((float(x) for x in losses), maxlen=self.adaptive_window)
        self.threshold = float(thr)

    def log_state(self) -> dict[str, Any]:
        """Extra keys for ``sampler.state``.

        Returns:
            dict[str, Any]: ``{"loss_threshold": the current threshold}`` (moves with ``adaptive_threshold``).
        """
        return {"loss_threshold": self.threshold}


class HybridSchedule(Schedule):
    """Layer-wise stages with dynamic pacing inside each stage's band (composition, no inheritance).

    Stage s (from ``layer_wise``) admits percentiles up to ``p`` (from ``dynamic``), clamped into the
    band ``[stage_percentiles[s-2], stage_percentiles[s-1]]`` (stage 1: ``[min_percentile,
    stage_percentiles[0]]``). Warm-up is stage 1 with its band and updates.

    Args:
        layer_wise (LayerWiseSchedule): stages, active layers and score.
        dynamic (DynamicSchedule): the loss-driven percentile (its ``min_percentile`` should not
            exceed the first stage's bound).
    """

    moves_within_epoch = True

    def __init__(self, layer_wise: LayerWiseSchedule, dynamic: DynamicSchedule):
        self.layer_wise = layer_wise
        self.dynamic = dynamic
        self.parts = (dynamic, layer_wise)  # where the sampler looks up their parameters

    def band(self, stage: int) -> tuple[float, float]:
        """``(lo, hi)`` percentile band of a 1-based stage."""
        sp = self.layer_wise.stage_percentiles
        return (self.dynamic.min_percentile if stage == 1 else sp[stage - 2]), sp[stage - 1]

    def observe(self, loss: float, time: Any) -> None:
        """Move the dynamic ``p`` within the current stage's band (warm-up and curriculum), then record the loss.

        Args:
            loss (float): the (smoothed, rank-averaged) loss.
            time (Time): the curriculum time (:class:`~torch_curriculum.sampling.engine.Time`).
        """
        if time.phase in ("warmup", "curriculum"):
            self.dynamic.move(loss, *self.band(self.layer_wise.stage_at(time)))
        self.dynamic.record(loss)

    def pace(self, time: Any) -> Pace:
        """The layer-wise stage at ``time`` with the dynamic ``p`` clamped into that stage's :meth:`band`.

        Args:
            time (Time): the curriculum time (:class:`~torch_curriculum.sampling.engine.Time`).

        Returns:
            Pace: only the phase before/after the curriculum; otherwise as
            :meth:`LayerWiseSchedule.stage_pace`.
        """
        if time.phase in ("before", "after"):
            return Pace(phase=time.phase)
        lo, hi = self.band(self.layer_wise.stage_at(time))
        return self.layer_wise.stage_pace(time, min(max(self.dynamic.p, lo), hi))

    def stage_specs(self) -> list[tuple[ScoreSpec, float]]:
        """The layer-wise stages.

        Returns:
            list[tuple[ScoreSpec, float]]: :meth:`LayerWiseSchedule.stage_specs`.
        """
        return self.layer_wise.stage_specs()

    def state_dict(self) -> dict[str, Any]:
        """The dynamic part's state.

        Returns:
            dict[str, Any]: :meth:`DynamicSchedule.state_dict`.
        """
        return self.dynamic.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into the dynamic part.

        Args:
            state (dict[str, Any]): as returned by :meth:`state_dict`.

        Raises:
            ValueError: see :meth:`DynamicSchedule.load_state_dict`.
        """
        self.dynamic.load_state_dict(state)

    def log_state(self) -> dict[str, Any]:
        """Extra keys for ``sampler.state``.

        Returns:
            dict[str, Any]: :meth:`DynamicSchedule.log_state`.
        """
        return self.dynamic.log_state()


class LayerSpecificSchedule(Schedule):
    """Phase 1 walks the layer groups (each ordered by its own score), phase 2 trains all layers.

    Args:
        stage_percentiles (Sequence[float]): stage bounds (warm-up pool, growth start).
        num_layers (int): L.
        span (float): post-warm-up curriculum length in timeline units (epochs or steps).
        phase1 (float | None): phase 1 length in timeline units; None: half of ``span``.
        layer_groups (int | Sequence[Sequence[int]] | None): groups walked in phase 1; None: one per
            layer when ``whole_units`` is False, else ``min(L, floor(phase1))`` groups.
        whole_units (bool): every group needs at least one whole unit (epoch pacing).
        phase1_order (str): ``sorted`` or ``shuffled``. Defaults to ``sorted``.
        phase1_growth (bool): grow the pool within each group's share. Defaults to False.
        phase2_order (str): ``random`` or ``easy_to_hard``. Defaults to ``random``.
        pacing_function (str): for growth and ``easy_to_hard``. Defaults to ``linear``.
        strict_order (bool): phase 2 ``easy_to_hard`` drawn in order. Defaults to False.
        unit (str): name of the timeline unit, for messages. Defaults to ``epochs``.
    """

    def __init__(self, stage_percentiles: Sequence[float], num_layers: int, span: float, *,
                 phase1: float | None = None, layer_groups: int | Sequence[Sequence[int]] | None = None,
                 whole_units: bool = True, phase1_order: str = "sorted", phase1_growth: bool = False,
                 phase2_order: str = "random", pacing_function: str = "linear", strict_order: bool = False,
                 unit: str = "epochs"):
        if phase1_order not in ("sorted", "shuffled"):
            raise ValueError(f"phase1_order must be 'sorted' or 'shuffled', got {phase1_order!r}")
        if phase2_order not in ("random", "easy_to_hard"):
            raise ValueError(f"phase2_order must be 'random' or 'easy_to_hard', got {phase2_order!r}")
        if pacing_function not in PACING_NAMES:
            raise ValueError(f"unknown pacing_function {pacing_function!r}; expected one of {', '.join(PACING_NAMES)}")
        p1 = span / 2 if phase1 is None else phase1
        if isinstance(p1, bool) or not isinstance(p1, (int, float)) or not math.isfinite(p1) or not 0 <= p1 <= span:
            raise ValueError(f"phase1_{unit}={p1} must lie in [0, {span}] (the post-warm-up curriculum {unit})")
        self.stage_percentiles = tuple(stage_percentiles)
        self.phase1 = float(p1)
        self.span = span
        big_l = int(num_layers)
        g = layer_groups
        if g is None:
            g = max(1, min(big_l, int(p1))) if whole_units else big_l
        if isinstance(g, int) and not isinstance(g, bool):
            if not 1 <= g <= big_l:
                raise ValueError(f"layer_groups={g} must lie in [1, L={big_l}]")
            groups = [list(map(int, a)) for a in np.array_split(np.arange(big_l), g)]
        else:
            groups = [[int(i) for i in grp] for grp in g]
            flat = [i for grp in groups for i in grp]
            if not groups or any(not grp for grp in groups):
                raise ValueError("layer_groups must be a non-empty list of non-empty layer lists")
            if any(not 0 <= i < big_l for i in flat):
                raise ValueError(f"layer_groups holds a layer outside [0, {big_l - 1}]: {groups}")
            if len(set(flat)) != len(flat):
                raise ValueError(f"layer_groups repeats a layer: {groups}")
        self.layer_groups = groups
        if whole_units and p1 > 0 and p1 / len(groups) < 1:
            raise ValueError(f"layer-specific phase 1 of {p1} epochs cannot give each of {len(groups)} layer "
                             "groups a whole epoch under pacing='epoch'; use pacing='step' (with "
                             "steps_per_epoch) or a step budget (curriculum_steps), fewer layer_groups or a "
                             "longer phase1_epochs")
        self.phase1_order = phase1_order
        self.phase1_growth = bool(phase1_growth)
        self.phase2_order = phase2_order
        self.pacing_function = pacing_function
        self.strict_order = bool(strict_order)

    def group_score(self, gi: int) -> ScoreSpec:
        """Group gi's score: the mean of ``d_i`` over its layers."""
        return ScoreSpec("mean", tuple(self.layer_groups[gi]), 0)

    def _group_pace(self, phase: str, gi: int, p: float) -> Pace:
        grp = tuple(self.layer_groups[gi])
        return Pace(phase=phase, score=self.group_score(gi), percentile=p, strict=self.phase1_order == "sorted",
                    current_layer=grp[0], trainable=grp)

    def pace(self, time: Any) -> Pace:
        """The pool at ``time``: warm-up on group 0, phase 1 one layer group at a time, then phase 2.

        Args:
            time (Time): the curriculum time (:class:`~torch_curriculum.sampling.engine.Time`).

        Returns:
            Pace: only the phase before/after the curriculum; in warm-up and phase 1 the current group's
            mean score, its percentile (1.0 unless ``phase1_growth``), ``current_layer`` and the group's
            layers as trainable; in phase 2 everything (``random``) or the primary score paced easy to hard.
        """
        if time.phase in ("before", "after"):
            return Pace(phase=time.phase)
        sp = self.stage_percentiles
        if time.phase == "warmup":
            return self._group_pace("warmup", 0, sp[0])
        t = time.rel
        if t < self.phase1:
            share = self.phase1 / len(self.layer_groups)
            gi = min(int(t / share), len(self.layer_groups) - 1)
            v = t / share - gi
            p = pacing_fraction(self.pacing_function, v, start=sp[0], stage_percentiles=sp) if self.phase1_growth else 1.0
            return self._group_pace("phase1", gi, p)
        if self.phase2_order == "random":
            return Pace(phase="phase2")
        v = (t - self.phase1) / max(time.span - self.phase1, 1e-12)
        p = pacing_fraction(self.pacing_function, v, start=sp[0], stage_percentiles=sp)
        return Pace(phase="phase2", score=_PRIMARY, percentile=p, strict=self.strict_order)

    def stage_specs(self) -> list[tuple[ScoreSpec, float]]:
        """Stages of the primary score, which orders phase 2 (phase 1 uses each group's own score).

        Returns:
            list[tuple[ScoreSpec, float]]: ``(primary score, stage_percentiles[s-1])`` per stage.
        """
        # phase 1 orders the whole data set by each group's score; the stages here are those of the
        # primary score, which orders phase 2 (easy_to_hard) and is what the file's stage describes
        return [(_PRIMARY, p) for p in self.stage_percentiles]
