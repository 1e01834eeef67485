"""Drop-in ``torch.utils.data.Sampler`` subclasses, one per curriculum strategy of the seed.

All samplers are thin constructors over one engine
(:class:`torch_curriculum.sampling.engine.CurriculumSampler`) and one small schedule per strategy
(:mod:`torch_curriculum.sampling.schedules`); the schedule decides, at every moment, which score
(the primary score, or a score over some layers) orders the data and which upper percentile ``p`` of
it is eligible. "Within percentile p" means: the sample's percentile
(:func:`torch_curriculum.difficulty.percentiles`, ties share the highest value) is ``<= p``; the pool
never drops below the easiest tie group.

Time. The curriculum clock ``t`` is the epoch (``pacing="epoch"``, the default: the pool is fixed for
a whole epoch), ``step / steps_per_epoch`` (``pacing="step"``: every :meth:`update` call is one
optimisation step and the pool moves between steps) or, with a step budget (``curriculum_steps``,
``warmup_steps``, ``curriculum_start_step``: DeepSpeed's ``total_curriculum_step``), the step itself:
the same phases over steps ``[start, start + curriculum_steps)``, whatever the epochs, so a one-epoch
fine-tune walks every stage. With ``S = curriculum_start_epoch``,
``E = curriculum_end_epoch`` and ``W = warmup_epochs`` (under a step budget: ``S =
curriculum_start_step``, ``E = S + curriculum_steps``, ``W = warmup_steps``): ``t < S`` and ``t >= E`` are exactly a random
sampler over the whole data set; ``S <= t < S + W`` uses the first stage's pool; the curriculum proper
has progress ``u = (t - S - W) / (E - S - W)`` in [0, 1) (see :mod:`torch_curriculum.pacing`). Stages
``1..num_stages`` share the curriculum time equally: ``stage = 1 + floor(u * num_stages)`` (so with the
seed's defaults epoch 0 is warm-up, epochs 1-2 stage 1, epoch 3 stage 2, epoch 4 stage 3, epoch 5 on
random).

Drawing. An epoch is a fixed number of draws (``len(sampler)`` per rank, fixed when the epoch starts:
the pool size for static pools, ``len(dataset)`` for pools that move inside the epoch (dynamic, hybrid,
step pacing), or ``samples_per_epoch``); :meth:`planned_lengths` and :meth:`total_steps` give the plan for sizing
LR schedules and ``max_steps``. The pool is always a prefix of the current score's
easy-to-hard order (its first ``pool_size`` positions). Draws walk a random permutation of those N
positions (seeded by ``seed``, the epoch and a pass counter) and yield the samples whose position is
inside the pool *at the moment they are drawn*; if a walk ends before the epoch has its draws, the next
pass (a fresh permutation) starts, and a change of score (a new layer-wise stage, a new layer group)
also starts a new pass. A static pool is therefore drawn exactly once per epoch, shuffled, with no
duplicates; a pool that grows admits its new samples into the rest of the current pass. With
``strict_order=True`` the walk goes through the positions in order (easy to hard). Outside the
curriculum the walk is a plain random permutation of the samples. Indices are produced in vectorised
numpy chunks; an :meth:`update` that changes the pool cuts the current chunk, so the change applies
to the very next index drawn. Cost: one permutation of N per pass, so a pool that is a fraction f of
the data and moves within the epoch costs about 1/f permutations per epoch.

Iterating never moves the curriculum: only :meth:`set_epoch`, :meth:`update` and
:meth:`load_state_dict` do. A new iterator continues a partly drawn epoch (an abandoned iterator, a
resumed state) and replays a fully drawn one, so ``list(loader)`` twice gives the same indices and
leaves ``sampler.state`` unchanged; a training loop calls ``set_epoch(e)`` for every epoch (like
``DistributedSampler``).

Distributed. ``num_replicas``/``rank`` (default: from ``torch.distributed`` when initialised). A
sampler iterated under an initialised process group whose world size or rank differs from the one it
was built for raises (so a sampler built before ``init_process_group`` cannot silently give every
rank the same data). The
walk is consumed in groups of ``num_replicas`` eligible samples and rank r takes the r-th of each
group, so ranks get disjoint slices of the same sequence. Each rank draws
``ceil(total / num_replicas)`` (``drop_last=False``; the missing tail is taken from the next pass, like
``DistributedSampler``'s padding, and may repeat samples) or ``floor(total / num_replicas)``
(``drop_last=True``). Pacing decisions depend only on the ``update()`` sequence (feed every rank the
same, rank-averaged loss), so all ranks stay in lockstep. A state saved on any rank can be loaded on
every rank.

Resume. :meth:`state_dict` is JSON-serialisable and holds the epoch, the walk position, the number of
indices handed out, the pacing state and the loss history, and the table's identity (N, L and the
sha256 of the primary-score column's bytes; of the whole table for a tensor), so a state saved on
another table, or on the same table with its rows reordered, is refused; a hand-edited or incomplete
state is refused with the field named; the permutations are derived from
``(seed, epoch, pass)``, so no RNG state needs saving and the next index after
:meth:`load_state_dict` in a new process is exactly the one the old process would have drawn. Note: a
``DataLoader`` with workers prefetches indices, so "handed out" can be ahead of "trained on"; the
Trainer integration's loader (:class:`torch_curriculum.integrations.hf.CurriculumDataLoader`) keeps
the batches in between in its checkpoints and hands them out again on resume.

Memory and workers. A sampler keeps O(N) working arrays: an int32 easy-to-hard order per score in use
(at most two, shared by the samplers over the same table object) and one int32 permutation per pass. It reads the primary-score column, and computes a
layer-range score (layer-wise, hybrid, layer-specific) from the ``[N, L]`` table in row chunks, once
per stage. Pickled (DataLoader workers, ``copy.deepcopy``), a sampler over a difficulty file carries
the file path and its position, not the arrays (and the primary column's sha256: a file changed in
between is refused when the sampler is unpickled); over a tensor it carries the tensor.

Stages. :meth:`stage_assignments` gives the 1-based stage of every sample as the strategy uses it (the
layer-wise stage s pool is by the score over stage s's active layers, so it differs from the file's
``stage`` column, the primary-score stage); :func:`strategy_labels` writes them as a label file.

Example:
    >>> import torch
    >>> d = torch.rand(100, 6)
    >>> s = LayerWiseProgressiveSampler(d, seed=1)
    >>> s.set_epoch(1)
    >>> s.state["stage"], s.state["active_layers"], len(s)
    (1, [0, 1], 33)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .config import CurriculumConfig, canonical_strategy
from .difficulty import _check_stage_percentiles
from .sampling.engine import CurriculumSampler, DifficultySource, Timeline
from .sampling.schedules import (
    DynamicSchedule,
    EasyToHardSchedule,
    HybridSchedule,
    LayerSpecificSchedule,
    LayerWiseSchedule,
    RandomSchedule,
)

__all__ = [
    "CurriculumSampler",
    "DynamicPacingSampler",
    "EasyToHardSampler",
    "HybridSampler",
    "LayerSpecificSampler",
    "LayerWiseProgressiveSampler",
    "RandomOrderSampler",
    "build_sampler",
    "strategy_labels",
]

_COMMON = ("num_stages", "stage_percentiles", "top_k", "curriculum_start_epoch", "curriculum_end_epoch",
           "warmup_epochs", "curriculum_steps", "warmup_steps", "curriculum_start_step", "seed", "num_replicas",
           "rank", "drop_last", "pacing", "steps_per_epoch", "samples_per_epoch", "strict_order", "chunk_size")
_DYNAMIC = ("loss_threshold", "difficulty_step_up", "difficulty_step_down", "adaptive_threshold", "adaptive_window",
            "min_percentile", "initial_percentile")


def _resolve_top_k(difficulty: Any, top_k: int | None) -> int:
    """``top_k`` checked against the difficulty file's own K (None: the file's K, else 3)."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    file_k = None
    if not isinstance(difficulty, (torch.Tensor,)) and not hasattr(difficulty, "__array_interface__"):
        try:
            k = getattr(difficulty, "top_k", None)
        except (KeyError, TypeError):  # a dataset-like object without that provenance
            k = None
        if isinstance(k, int) and not isinstance(k, bool):
            file_k = k
    if top_k is None:
        return file_k if file_k is not None else 3
    if file_k is not None and top_k != file_k:
        raise ValueError(f"top_k={top_k} conflicts with the difficulty file's top_k={file_k} (its primary "
                         "score was computed with that K); leave top_k unset or recompute the file")
    return top_k


class _Common:
    """The parameters every sampler takes, checked once (documented on :class:`EasyToHardSampler`)."""

    def __init__(self, difficulty: Any, *, num_stages: int = 3, stage_percentiles: Sequence[float] = (0.33, 0.66, 1.0),
                 top_k: int | None = None, curriculum_start_epoch: int = 0, curriculum_end_epoch: int = 5,
                 warmup_epochs: int = 1, curriculum_steps: int | None = None, warmup_steps: int = 0,
                 curriculum_start_step: int = 0, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None, drop_last: bool = False, pacing: str = "epoch",
                 steps_per_epoch: int | None = None, samples_per_epoch: int | None = None,
                 strict_order: bool = False, chunk_size: int = 65536):
        top_k = _resolve_top_k(difficulty, top_k)
        self.source = DifficultySource(difficulty, top_k)
        sp = [float(x) for x in stage_percentiles]
        if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
            raise ValueError(f"num_stages must be an integer >= 1, got {num_stages!r}")
        if num_stages != len(sp):
            if tuple(sp) == (0.33, 0.66, 1.0):
                sp = [round((s + 1) / num_stages, 6) for s in range(num_stages)]
            else:
                raise ValueError(f"num_stages={num_stages} conflicts with {len(sp)} stage_percentiles {sp}")
        _check_stage_percentiles(sp)
        self.sp = tuple(sp)
        self.timeline = Timeline(
            curriculum_start_epoch=curriculum_start_epoch, curriculum_end_epoch=curriculum_end_epoch,
            warmup_epochs=warmup_epochs, pacing=pacing, steps_per_epoch=steps_per_epoch,
            curriculum_steps=curriculum_steps, warmup_steps=warmup_steps, curriculum_start_step=curriculum_start_step)
        self.strict = bool(strict_order)
        self.engine = dict(stage_percentiles=self.sp, seed=seed, num_replicas=num_replicas, rank=rank,
                           drop_last=drop_last, samples_per_epoch=samples_per_epoch, chunk_size=chunk_size)


def _pick(names: tuple[str, ...], values: dict[str, Any]) -> dict[str, Any]:
    return {k: values[k] for k in names}


class RandomOrderSampler(CurriculumSampler):
    """The baseline: a fresh random permutation of all samples every epoch (same interface).

    The common keyword arguments of :class:`EasyToHardSampler` are accepted (and validated) but change
    nothing.

    Example:
        >>> s = RandomOrderSampler(torch.rand(10, 4), seed=3)
        >>> sorted(s) == list(range(10))
        True
    """

    strategy = "random"

    def __init__(self, difficulty: Any, *, num_stages: int = 3, stage_percentiles: Sequence[float] = (0.33, 0.66, 1.0),
                 top_k: int | None = None, curriculum_start_epoch: int = 0, curriculum_end_epoch: int = 5,
                 warmup_epochs: int = 1, curriculum_steps: int | None = None, warmup_steps: int = 0,
                 curriculum_start_step: int = 0, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None, drop_last: bool = False, pacing: str = "epoch",
                 steps_per_epoch: int | None = None, samples_per_epoch: int | None = None,
                 strict_order: bool = False, chunk_size: int = 65536):
        c = _Common(difficulty, **_pick(_COMMON, locals()))
        super().__init__(c.source, RandomSchedule(), c.timeline, **c.engine)


class EasyToHardSampler(CurriculumSampler):
    """Strategy 1: the pool is the easiest fraction by the primary score, growing with a pacing function.

    Warm-up uses ``stage_percentiles[0]``; then the pool's upper percentile is
    ``pacing_fraction(pacing_function, u, start=stage_percentiles[0])`` (see
    :mod:`torch_curriculum.pacing`). ``strict_order=True`` yields the pool sorted easy to hard (the
    seed's "train x_1 -> x_2 -> ... -> x_N").

    Args:
        difficulty: a ``MetaTokenDifficultyDataset`` (its ``difficulty`` column is the primary score,
            ``layer_diffs`` the per-layer table) or an ``[N, L]`` tensor of normalised per-layer
            differences (primary score: ``topk_mean`` with ``top_k``).
        pacing_function (str): ``linear`` (default), ``root``, ``step``/``discrete``, ``exponential``,
            ``competence``.
        root_degree (float): degree of ``root``. Defaults to 2.0.
        num_stages (int): stages S. Defaults to 3 (with the default ``stage_percentiles``, a
            different S gives evenly spaced percentiles ``s/S``).
        stage_percentiles (Sequence[float]): upper percentile of each stage, strictly increasing,
            ending with 1.0. Defaults to (0.33, 0.66, 1.0).
        top_k (int | None): K of ``topk_mean``; None: the file's K (3 for a tensor). A K that differs
            from the file's is an error.
        curriculum_start_epoch (int): Defaults to 0.
        curriculum_end_epoch (int): from this epoch on: random over everything. Defaults to 5.
        warmup_epochs (int): first curriculum epochs on the first stage's pool. Defaults to 1.
        curriculum_steps (int | None): a step budget instead of the epoch keys: the curriculum runs
            over ``update()`` steps ``[curriculum_start_step, curriculum_start_step + curriculum_steps)``.
            Defaults to None.
        warmup_steps (int): warm-up steps of the budget. Defaults to 0.
        curriculum_start_step (int): first step of the budget. Defaults to 0.
        seed (int): seed of all permutations. Defaults to 0.
        num_replicas (int | None): ranks; None reads torch.distributed (1 when not initialised).
        rank (int | None): this rank; None reads torch.distributed (0 when not initialised).
        drop_last (bool): drop the tail that does not divide over the ranks. Defaults to False.
        pacing (str): ``epoch`` (default) or ``step`` (clock = update() calls / steps_per_epoch).
        steps_per_epoch (int | None): required with ``pacing="step"``.
        samples_per_epoch (int | None): global draws per epoch; None: the pool size at the epoch
            start for static pools, N for pools that move within an epoch.
        strict_order (bool): yield the pool easy to hard instead of shuffled. Defaults to False.
        chunk_size (int): largest vectorised chunk of indices per rank. Defaults to 65536.

    Raises:
        TypeError: ``difficulty`` has the wrong type, or an unknown keyword argument.
        ValueError: a parameter is out of range (the message names it).

    Example:
        >>> s = EasyToHardSampler(torch.rand(100, 6), curriculum_steps=30, warmup_steps=5)
        >>> s.percentile, len(s)
        (0.33, 100)
    """

    strategy = "easy_to_hard"

    def __init__(self, difficulty: Any, *, pacing_function: str = "linear", root_degree: float = 2.0,
                 num_stages: int = 3, stage_percentiles: Sequence[float] = (0.33, 0.66, 1.0),
                 top_k: int | None = None, curriculum_start_epoch: int = 0, curriculum_end_epoch: int = 5,
                 warmup_epochs: int = 1, curriculum_steps: int | None = None, warmup_steps: int = 0,
                 curriculum_start_step: int = 0, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None, drop_last: bool = False, pacing: str = "epoch",
                 steps_per_epoch: int | None = None, samples_per_epoch: int | None = None,
                 strict_order: bool = False, chunk_size: int = 65536):
        c = _Common(difficulty, **_pick(_COMMON, locals()))
        sched = EasyToHardSchedule(c.sp, pacing_function=pacing_function, root_degree=root_degree,
                                   strict_order=c.strict)
        super().__init__(c.source, sched, c.timeline, **c.engine)


class LayerWiseProgressiveSampler(CurriculumSampler):
    """Strategy 2: stage s activates layers ``[0, ceil(s*L/S))`` and admits samples whose score over the
    active layers has percentile ``<= stage_percentiles[s-1]``.

    The active-layer score is ``topk_mean`` with ``k = min(top_k, n_active)`` (default) or the
    ``mean`` over the active layers (``active_score="mean"``). Stages share the post-warm-up curriculum
    time equally; warm-up is stage 1. ``trainable_layers`` = the active layers during the curriculum,
    None (all) outside it. The score of a stage is computed once when the stage starts.

    The common keyword arguments (stages, epoch keys or step budget, seed, ranks, pacing, ...) are
    those of :class:`EasyToHardSampler`.

    Args:
        difficulty: as in :class:`EasyToHardSampler`.
        active_score (str): ``topk_mean`` (default) or ``mean``.
    """

    strategy = "layer_wise_progressive"

    def __init__(self, difficulty: Any, *, active_score: str = "topk_mean", num_stages: int = 3, stage_percentiles: Sequence[float] = (0.33, 0.66, 1.0),
                 top_k: int | None = None, curriculum_start_epoch: int = 0, curriculum_end_epoch: int = 5,
                 warmup_epochs: int = 1, curriculum_steps: int | None = None, warmup_steps: int = 0,
                 curriculum_start_step: int = 0, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None, drop_last: bool = False, pacing: str = "epoch",
                 steps_per_epoch: int | None = None, samples_per_epoch: int | None = None,
                 strict_order: bool = False, chunk_size: int = 65536):
        c = _Common(difficulty, **_pick(_COMMON, locals()))
        sched = LayerWiseSchedule(c.sp, c.source.num_layers, c.source.top_k, active_score=active_score,
                                  strict_order=c.strict)
        super().__init__(c.source, sched, c.timeline, **c.engine)


class DynamicPacingSampler(CurriculumSampler):
    """Strategy 3: the pool's percentile moves with the loss.

    ``update(loss)``: ``loss < threshold`` -> percentile ``+= difficulty_step_up``, otherwise
    ``-= difficulty_step_down``, clamped to ``[min_percentile, 1]``; only during the curriculum proper
    (warm-up uses ``stage_percentiles[0]``; before/after the curriculum: random over everything). With
    ``adaptive_threshold=True`` the threshold is the mean of the previous ``adaptive_window`` losses
    (the fixed ``loss_threshold`` until the first loss has arrived), so "below threshold" means
    "better than recently". The pool moves within the epoch, so an epoch is ``N`` draws (or
    ``samples_per_epoch``) from the pool current at each draw.

    The common keyword arguments (stages, epoch keys or step budget, seed, ranks, pacing, ...) are
    those of :class:`EasyToHardSampler`.

    Args:
        difficulty: as in :class:`EasyToHardSampler`.
        loss_threshold (float): finite. Defaults to 2.0.
        difficulty_step_up (float): in [0, 1]. Defaults to 0.05.
        difficulty_step_down (float): in [0, 1]. Defaults to 0.02.
        adaptive_threshold (bool): Defaults to False.
        adaptive_window (int): W of the adaptive threshold. Defaults to 50.
        min_percentile (float | None): floor; None means ``stage_percentiles[0]``.
        initial_percentile (float | None): percentile when the curriculum proper starts; None means
            ``min_percentile``.

    Raises:
        ValueError: e.g. ``loss_threshold=float("nan")`` (the message names the parameter).
    """

    strategy = "dynamic"

    def __init__(self, difficulty: Any, *, loss_threshold: float = 2.0, difficulty_step_up: float = 0.05,
                 difficulty_step_down: float = 0.02, adaptive_threshold: bool = False, adaptive_window: int = 50,
                 min_percentile: float | None = None, initial_percentile: float | None = None,
                 num_stages: int = 3, stage_percentiles: Sequence[float] = (0.33, 0.66, 1.0),
                 top_k: int | None = None, curriculum_start_epoch: int = 0, curriculum_end_epoch: int = 5,
                 warmup_epochs: int = 1, curriculum_steps: int | None = None, warmup_steps: int = 0,
                 curriculum_start_step: int = 0, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None, drop_last: bool = False, pacing: str = "epoch",
                 steps_per_epoch: int | None = None, samples_per_epoch: int | None = None,
                 strict_order: bool = False, chunk_size: int = 65536):
        dyn = _pick(_DYNAMIC, locals())
        c = _Common(difficulty, **_pick(_COMMON, locals()))
        super().__init__(c.source, DynamicSchedule(c.sp, strict_order=c.strict, **dyn), c.timeline, **c.engine)


class HybridSampler(CurriculumSampler):
    """Hybrid: layer-wise stages, dynamic pacing inside each stage's band.

    Stage s (as in :class:`LayerWiseProgressiveSampler`: active layers ``[0, ceil(s*L/S))``, score over
    them) admits percentiles up to ``p``, where ``p`` moves by :meth:`update` like
    :class:`DynamicPacingSampler` but stays inside the band ``[stage_percentiles[s-2],
    stage_percentiles[s-1]]`` (stage 1: ``[min_percentile, stage_percentiles[0]]``, min_percentile
    defaulting to ``stage_percentiles[0]``). Entering a stage clamps ``p`` into its band, so a stage
    starts at its lower bound (where the previous stage could reach) and good losses take it to the
    stage's bound. Warm-up is stage 1 (its band, with updates). The schedule composes the layer-wise
    and the dynamic schedules.

    The common keyword arguments (stages, epoch keys or step budget, seed, ranks, pacing, ...) are
    those of :class:`EasyToHardSampler`.

    Args:
        difficulty: as in :class:`EasyToHardSampler`.
        loss_threshold (float): as in :class:`DynamicPacingSampler`. Defaults to 2.0.
        difficulty_step_up (float): as in :class:`DynamicPacingSampler`. Defaults to 0.05.
        difficulty_step_down (float): as in :class:`DynamicPacingSampler`. Defaults to 0.02.
        adaptive_threshold (bool): as in :class:`DynamicPacingSampler`. Defaults to False.
        adaptive_window (int): as in :class:`DynamicPacingSampler`. Defaults to 50.
        min_percentile (float | None): as in :class:`DynamicPacingSampler`; capped at
            ``stage_percentiles[0]``.
        initial_percentile (float | None): as in :class:`DynamicPacingSampler`.
        active_score (str): as in :class:`LayerWiseProgressiveSampler`.
    """

    strategy = "hybrid"

    def __init__(self, difficulty: Any, *, active_score: str = "topk_mean", loss_threshold: float = 2.0, difficulty_step_up: float = 0.05,
                 difficulty_step_down: float = 0.02, adaptive_threshold: bool = False, adaptive_window: int = 50,
                 min_percentile: float | None = None, initial_percentile: float | None = None,
                 num_stages: int = 3, stage_percentiles: Sequence[float] = (0.33, 0.66, 1.0),
                 top_k: int | None = None, curriculum_start_epoch: int = 0, curriculum_end_epoch: int = 5,
                 warmup_epochs: int = 1, curriculum_steps: int | None = None, warmup_steps: int = 0,
                 curriculum_start_step: int = 0, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None, drop_last: bool = False, pacing: str = "epoch",
                 steps_per_epoch: int | None = None, samples_per_epoch: int | None = None,
                 strict_order: bool = False, chunk_size: int = 65536):
        dyn = _pick(_DYNAMIC, locals())
        c = _Common(difficulty, **_pick(_COMMON, locals()))
        lw = LayerWiseSchedule(c.sp, c.source.num_layers, c.source.top_k, active_score=active_score,
                               strict_order=c.strict)
        mp = dyn.get("min_percentile")
        if mp is not None and not isinstance(mp, bool) and isinstance(mp, (int, float)) and mp > c.sp[0]:
            dyn["min_percentile"] = c.sp[0]  # the floor cannot lie above the first stage's band
        dyn_sched = DynamicSchedule(c.sp, strict_order=c.strict, **dyn)
        super().__init__(c.source, HybridSchedule(lw, dyn_sched), c.timeline, **c.engine)


class LayerSpecificSampler(CurriculumSampler):
    """Strategy 4 (hierarchical): phase 1 walks the layers (or layer groups), phase 2 trains jointly.

    Timeline (clock in epochs, fractional under step pacing; in steps under a step budget): warm-up =
    group 0 with the easiest ``stage_percentiles[0]`` by that group's score; phase 1 lasts
    ``phase1_epochs`` (``phase1_steps`` under a step budget; default: half of the post-warm-up
    curriculum) and gives each group an equal share, in which the samples are ordered by the group's
    score (the mean of ``d_i`` over the group's layers; one layer: its ``d_i``), easy to hard
    (``phase1_order="sorted"``, default) or shuffled (``"shuffled"``), over the whole data set or, with
    ``phase1_growth=True``, a pool growing with ``pacing_function`` within the group's share. Phase 2
    (until the curriculum's end) trains all layers jointly, in random order (``phase2_order="random"``,
    default) or easy-to-hard by the primary score with ``pacing_function`` (``"easy_to_hard"``).
    ``current_layer`` is the group's first layer; ``trainable_layers`` the group.

    The common keyword arguments (stages, epoch keys or step budget, seed, ranks, pacing, ...) are
    those of :class:`EasyToHardSampler`.

    Args:
        difficulty: as in :class:`EasyToHardSampler`.
        layer_groups (int | Sequence[Sequence[int]] | None): groups of layers walked in phase 1: a list
            of layer lists, or a number of contiguous groups; None means one group per layer under step
            pacing and ``min(L, floor(phase1_epochs))`` contiguous groups under epoch pacing (every
            group needs at least one epoch).
        phase1_epochs (float | None): length of phase 1 in epochs; None = half the post-warm-up span.
        phase1_steps (int | None): length of phase 1 in steps under a step budget; None = half.
        phase1_order (str): ``sorted`` or ``shuffled``. Defaults to ``sorted``.
        phase1_growth (bool): grow the pool within each group's share. Defaults to False.
        phase2_order (str): ``random`` or ``easy_to_hard``. Defaults to ``random``.
        pacing_function (str): used by phase1_growth and ``phase2_order="easy_to_hard"``. Defaults to ``linear``.

    Raises:
        ValueError: bad groups (empty, out of range, repeated layer), phase 1 longer than the
            curriculum, epoch pacing that would give a group less than one epoch, or a phase 1
            length in the other clock's unit.
    """

    strategy = "layer_specific"

    def __init__(self, difficulty: Any, *, layer_groups: int | Sequence[Sequence[int]] | None = None,
                 phase1_epochs: float | None = None, phase1_steps: int | None = None, phase1_order: str = "sorted",
                 phase1_growth: bool = False, phase2_order: str = "random", pacing_function: str = "linear",
                 num_stages: int = 3, stage_percentiles: Sequence[float] = (0.33, 0.66, 1.0),
                 top_k: int | None = None, curriculum_start_epoch: int = 0, curriculum_end_epoch: int = 5,
                 warmup_epochs: int = 1, curriculum_steps: int | None = None, warmup_steps: int = 0,
                 curriculum_start_step: int = 0, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None, drop_last: bool = False, pacing: str = "epoch",
                 steps_per_epoch: int | None = None, samples_per_epoch: int | None = None,
                 strict_order: bool = False, chunk_size: int = 65536):
        c = _Common(difficulty, **_pick(_COMMON, locals()))
        tl = c.timeline
        if tl.budget and phase1_epochs is not None:
            raise ValueError("phase1_epochs is in epochs but the curriculum runs on a step budget "
                             "(curriculum_steps); give phase1_steps")
        if not tl.budget and phase1_steps is not None:
            raise ValueError("phase1_steps needs a step budget (curriculum_steps); give phase1_epochs")
        sched = LayerSpecificSchedule(
            c.sp, c.source.num_layers, tl.span, phase1=phase1_steps if tl.budget else phase1_epochs,
            layer_groups=layer_groups, whole_units=not tl.by_step, phase1_order=phase1_order,
            phase1_growth=phase1_growth, phase2_order=phase2_order, pacing_function=pacing_function,
            strict_order=c.strict, unit=tl.unit)
        super().__init__(c.source, sched, c.timeline, **c.engine)

    @property
    def phase1_epochs(self) -> float:
        """Length of phase 1 in the clock's unit (epochs; steps under a step budget)."""
        return self.schedule.phase1


_CLASSES = {
    "random": RandomOrderSampler,
    "easy_to_hard": EasyToHardSampler,
    "layer_wise_progressive": LayerWiseProgressiveSampler,
    "dynamic": DynamicPacingSampler,
    "layer_specific": LayerSpecificSampler,
    "hybrid": HybridSampler,
}


def build_sampler(config: CurriculumConfig | dict, difficulty: Any, *, num_replicas: int | None = None,
                  rank: int | None = None, **overrides: Any) -> CurriculumSampler:
    """Build the sampler of ``config.curriculum.strategy`` with the config's parameters.

    Args:
        config (CurriculumConfig | dict): the config (``curriculum``, ``training`` and
            ``meta_token.top_k``); a dict is read with :meth:`CurriculumConfig.from_dict`.
        difficulty: a ``MetaTokenDifficultyDataset`` or an ``[N, L]`` tensor.
        num_replicas (int | None): see the samplers. Defaults to torch.distributed / 1.
        rank (int | None): see the samplers.
        **overrides: keyword arguments passed to the sampler, overriding the config's values (e.g.
            ``pacing="step", steps_per_epoch=100``, ``layer_groups=...``).

    Returns:
        The sampler.

    Raises:
        TypeError: ``config`` is neither a ``CurriculumConfig`` nor a dict.
        ConfigError: a dict config with a bad key or value (the message names it).
        ValueError: unknown strategy (the message lists the valid ones) or a bad parameter.

    Example:
        >>> cfg = CurriculumConfig.from_dict({"curriculum": {"strategy": "easy_to_hard"}})
        >>> type(build_sampler(cfg, torch.rand(20, 4))).__name__
        'EasyToHardSampler'
    """
    if isinstance(config, dict):
        config = CurriculumConfig.from_dict(config)
    if not isinstance(config, CurriculumConfig):
        raise TypeError("build_sampler: config must be a CurriculumConfig (CurriculumConfig.from_yaml / from_dict) "
                        f"or a dict in its layout, got {type(config).__name__}")
    cur, tr = config.curriculum, config.training
    name = canonical_strategy(cur.strategy)
    kwargs: dict[str, Any] = dict(
        num_stages=cur.num_stages, stage_percentiles=tuple(cur.stage_percentiles), top_k=config.meta_token.top_k,
        curriculum_start_epoch=tr.curriculum_start_epoch, curriculum_end_epoch=tr.curriculum_end_epoch,
        warmup_epochs=tr.warmup_epochs, seed=tr.seed, num_replicas=num_replicas, rank=rank,
        strict_order=cur.strict_order, pacing=cur.pacing, steps_per_epoch=tr.steps_per_epoch,
        samples_per_epoch=tr.samples_per_epoch,
    )
    for key in ("curriculum_steps", "warmup_steps", "curriculum_start_step"):
        value = getattr(cur, key, None)
        if value is not None:
            kwargs[key] = value
    if name in ("easy_to_hard", "layer_specific"):
        kwargs["pacing_function"] = cur.pacing_function
    if name in ("dynamic", "hybrid"):
        kwargs.update(loss_threshold=cur.loss_threshold, difficulty_step_up=cur.difficulty_step_up,
                      difficulty_step_down=cur.difficulty_step_down, adaptive_threshold=cur.adaptive_threshold,
                      min_percentile=cur.min_percentile, adaptive_window=cur.adaptive_window)
    if name == "layer_specific":
        for extra in ("layer_groups", "phase1_epochs", "phase1_order", "phase2_order"):
            if getattr(cur, extra, None) is not None:
                kwargs[extra] = getattr(cur, extra)
    kwargs.update(overrides)
    return _CLASSES[name](difficulty, **kwargs)


def strategy_labels(sampler: CurriculumSampler, path: str | Path, *, sample_ids: Sequence[str] | None = None,
                    overwrite: bool = False) -> Path:
    """Write the stage of every sample as ``sampler``'s strategy uses it (JSONL, one object a line).

    Each line holds ``sample_id``, ``curriculum_stage`` (from :meth:`CurriculumSampler.stage_assignments`)
    and ``file_stage`` (the difficulty file's primary-score stage, when the sampler reads a file).
    A first line ``{"header": {...}}`` names the strategy and its parameters, so the file says which
    stage it describes. ``read_labels`` does not read this file: it is a report, not a difficulty
    table.

    Args:
        sampler (CurriculumSampler): the sampler.
        path (str | Path): the ``.jsonl`` file to write.
        sample_ids (Sequence[str] | None): ids in table order; None: the file's ids (a file-backed
            sampler) or ``"0" .. "N-1"``.
        overwrite (bool): replace an existing file. Defaults to False.

    Returns:
        Path: the file written.

    Raises:
        FileExistsError: the file exists and ``overwrite`` is False.
        ValueError: ``sample_ids`` of the wrong length.

    Example:
        >>> s = LayerWiseProgressiveSampler(torch.rand(10, 6))
        >>> strategy_labels(s, "stages.jsonl")  # doctest: +SKIP
    """
    from ._io import atomic_write

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"label file {path} exists; pass overwrite=True to replace it")
    src = sampler.source
    stages = sampler.stage_assignments().tolist()
    file_stage = None
    if src.kind == "dataset":
        if sample_ids is None and hasattr(src.obj, "sample_ids"):
            sample_ids = src.obj.sample_ids
        st = getattr(src.obj, "stage", None)
        file_stage = None if st is None else torch.as_tensor(st).tolist()
    ids = [str(i) for i in range(src.n)] if sample_ids is None else list(sample_ids)
    if len(ids) != src.n:
        raise ValueError(f"sample_ids has {len(ids)} entries but the sampler covers {src.n} samples")
    header = {"header": {"schema": "torch_curriculum.strategy_stages", "strategy": sampler.strategy,
                         "stage_percentiles": list(sampler.stage_percentiles), "num_samples": src.n,
                         "num_layers": src.num_layers, "top_k": sampler.top_k,
                         "difficulty_file": None if src.path is None else src.path.name}}
    lines = [json.dumps(header, ensure_ascii=False)]
    for i, sid in enumerate(ids):
        rec: dict[str, Any] = {"sample_id": sid, "curriculum_stage": stages[i]}
        if file_stage is not None:
            rec["file_stage"] = file_stage[i]
        lines.append(json.dumps(rec, ensure_ascii=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.write(("\n".join(lines) + "\n").encode("utf-8"))
    return path
