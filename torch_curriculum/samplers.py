"""Drop-in ``torch.utils.data.Sampler`` subclasses, one per curriculum strategy of the seed.

All samplers share one engine (:class:`_CurriculumSampler`); a strategy only decides, at every
moment, which *view* (a difficulty score over some layers) orders the data and which upper
percentile ``p`` of it is eligible. "Within percentile p" means: the sample's percentile
(:func:`torch_curriculum.difficulty.percentiles`, ties share the highest value) is ``<= p``; the pool
never drops below the easiest tie group.

Time. The curriculum clock ``t`` is the epoch (``pacing="epoch"``, the default: the pool is fixed for
a whole epoch) or ``step / steps_per_epoch`` (``pacing="step"``: every :meth:`update` call is one
optimisation step and the pool moves between steps). With ``S = curriculum_start_epoch``,
``E = curriculum_end_epoch`` and ``W = warmup_epochs``: ``t < S`` and ``t >= E`` are exactly a random
sampler over the whole data set; ``S <= t < S + W`` uses the first stage's pool; the curriculum proper
has progress ``u = (t - S - W) / (E - S - W)`` in [0, 1) (see :mod:`torch_curriculum.pacing`). Stages
``1..num_stages`` share the curriculum time equally: ``stage = 1 + floor(u * num_stages)`` (so with the
seed's defaults epoch 0 is warm-up, epochs 1-2 stage 1, epoch 3 stage 2, epoch 4 stage 3, epoch 5 on
random).

Drawing. An epoch is a fixed number of draws (``len(sampler)`` per rank, fixed when the epoch starts:
the pool size for static pools, ``len(dataset)`` for pools that move inside the epoch (dynamic, hybrid,
step pacing), or ``samples_per_epoch``). The pool is always a prefix of the current score's
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

Distributed. ``num_replicas``/``rank`` (default: from ``torch.distributed`` when initialised). The
walk is consumed in groups of ``num_replicas`` eligible samples and rank r takes the r-th of each
group, so ranks get disjoint slices of the same sequence. Each rank draws
``ceil(total / num_replicas)`` (``drop_last=False``; the missing tail is taken from the next pass, like
``DistributedSampler``'s padding, and may repeat samples) or ``floor(total / num_replicas)``
(``drop_last=True``). Pacing decisions depend only on the ``update()`` sequence (feed every rank the
same, rank-averaged loss), so all ranks stay in lockstep. A state saved on any rank can be loaded on
every rank.

Resume. :meth:`state_dict` is JSON-serialisable and holds the epoch, the walk position, the number of
indices handed out, the pacing state and the loss history; the permutations are derived from
``(seed, epoch, pass)``, so no RNG state needs saving and the next index after
:meth:`load_state_dict` in a new process is exactly the one the old process would have drawn. Note: a
``DataLoader`` with workers prefetches indices, so "handed out" can be ahead of "trained on".

Example:
    >>> import torch
    >>> d = torch.rand(100, 6)
    >>> s = LayerWiseProgressiveSampler(d, seed=1)
    >>> s.set_epoch(1)
    >>> s.state["stage"], s.state["active_layers"], len(s)
    (1, [0, 1], 33)
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Sampler

from .config import CurriculumConfig, canonical_strategy
from .difficulty import _check_stage_percentiles, aggregate
from .pacing import PACING_NAMES, curriculum_progress, pacing_fraction

__all__ = [
    "DynamicPacingSampler",
    "EasyToHardSampler",
    "HybridSampler",
    "LayerSpecificSampler",
    "LayerWiseProgressiveSampler",
    "RandomOrderSampler",
    "build_sampler",
]

logger = logging.getLogger(__name__)

_STATE_FORMAT = "torch_curriculum.sampler/1"
_MIN_CHUNK = 256


class _View:
    """One difficulty score: its easy-to-hard order and the percentiles along that order.

    ``sorted_pct[j]`` is the percentile (as :func:`~torch_curriculum.difficulty.percentiles` defines
    it: the fraction of scores ``<=`` this one) of the sample at position j of ``order``; one stable
    argsort gives both, and the pool "percentile <= p" is the first ``searchsorted(sorted_pct, p)``
    positions of ``order``.
    """

    __slots__ = ("min_pct", "order", "sorted_pct")

    def __init__(self, score: torch.Tensor):
        x = score.numpy()
        if not np.isfinite(x).all():
            raise ValueError("difficulty scores hold NaN/Inf")
        self.order = np.argsort(x, kind="stable").astype(np.int32)  # ties keep index order
        xs = x[self.order]
        self.sorted_pct = np.searchsorted(xs, xs, side="right") / len(xs)
        self.min_pct = float(self.sorted_pct[0])

    def pool(self, p: float) -> tuple[float, int]:
        """Effective upper percentile (never below the easiest tie group) and pool size."""
        p_eff = max(p, self.min_pct)
        return p_eff, int(np.searchsorted(self.sorted_pct, p_eff, side="right"))


class _Pace(NamedTuple):
    """What a strategy wants right now: ``vid`` names the score (None: everything, random)."""

    phase: str
    vid: str | None = None
    percentile: float = 1.0
    strict: bool = False
    stage: int | None = None
    active_layers: tuple[int, ...] | None = None
    current_layer: int | None = None
    trainable: tuple[int, ...] | None = None


def _derive_seed(*parts: int) -> int:
    h = hashlib.blake2b(":".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def _resolve_top_k(difficulty: Any, top_k: int | None) -> int:
    """``top_k`` checked against the difficulty file's own K (None: the file's K, else 3)."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    file_k = None
    if not isinstance(difficulty, (torch.Tensor, np.ndarray)):
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


def _as_difficulty(difficulty: Any, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(layer_diffs [N, L] float64, primary score [N] float64)`` from a dataset or a tensor."""
    if isinstance(difficulty, (torch.Tensor, np.ndarray)):
        ld = torch.as_tensor(difficulty)
        primary = None
        what = "difficulty tensor"
    elif hasattr(difficulty, "layer_diffs"):
        ld = torch.as_tensor(difficulty.layer_diffs)
        primary = getattr(difficulty, "difficulty", None)
        what = f"{type(difficulty).__name__}.layer_diffs"
    else:
        raise TypeError("difficulty must be a MetaTokenDifficultyDataset (anything with .layer_diffs "
                        f"[N, L] and .difficulty [N]) or an [N, L] tensor, got {type(difficulty).__name__}")
    if ld.dim() != 2 or ld.shape[0] == 0 or ld.shape[1] == 0:
        raise ValueError(f"{what} must have shape [N, L] with N, L >= 1, got {tuple(ld.shape)}")
    ld = ld.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(ld).all()):
        bad = (~torch.isfinite(ld)).nonzero()[0].tolist()
        raise ValueError(f"{what} holds NaN/Inf at sample {bad[0]}, layer {bad[1]}")
    if top_k > ld.shape[1]:
        raise ValueError(f"top_k={top_k} exceeds the number of layers L={ld.shape[1]}")
    if primary is None:
        primary = aggregate(ld, "topk_mean", k=top_k)
    else:
        primary = torch.as_tensor(primary).detach().to("cpu", torch.float64).reshape(-1)
        if primary.shape[0] != ld.shape[0]:
            raise ValueError(f"{type(difficulty).__name__}.difficulty has {primary.shape[0]} entries but "
                             f"layer_diffs has {ld.shape[0]} samples")
        if not bool(torch.isfinite(primary).all()):
            i = int((~torch.isfinite(primary)).nonzero()[0])
            raise ValueError(f"{type(difficulty).__name__}.difficulty holds NaN/Inf at sample {i}")
    return ld.contiguous(), primary.contiguous()


def _dist_world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    if num_replicas is None or rank is None:
        import torch.distributed as dist

        initialised = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialised else 1
        if rank is None:
            rank = dist.get_rank() if initialised else 0
    if not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"num_replicas must be an integer >= 1, got {num_replicas!r}")
    if not isinstance(rank, int) or not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be an integer in [0, {num_replicas - 1}], got {rank!r}")
    return num_replicas, rank


class _CurriculumSampler(Sampler[int]):
    """Shared engine; see the module docstring. Subclasses implement :meth:`_compute_pace`.

    Args:
        difficulty: a ``MetaTokenDifficultyDataset`` (``.layer_diffs`` [N, L], ``.difficulty`` [N]) or
            an ``[N, L]`` tensor of normalised per-layer differences (primary score:
            ``aggregate(d, "topk_mean", k=top_k)``).
        num_stages (int): stages S. Defaults to 3. With a non-default value and the default
            ``stage_percentiles``, evenly spaced percentiles ``s/S`` are used.
        stage_percentiles (Sequence[float]): upper percentile of each stage, strictly increasing,
            ending with 1.0. Defaults to (0.33, 0.66, 1.0).
        top_k (int | None): K of the ``topk_mean`` score (the primary score of a tensor input, and
            the active-layer score of ``LayerSpecificSampler``). Defaults to None: the difficulty
            file's own K for a ``MetaTokenDifficultyDataset``, 3 for a tensor. An explicit value
            that differs from the file's K is an error (the file's primary score used its K).
        loss_threshold (float): dynamic pacing threshold. Defaults to 2.0.
        difficulty_step_up (float): dynamic pacing step up. Defaults to 0.05.
        difficulty_step_down (float): dynamic pacing step down. Defaults to 0.02.
        curriculum_start_epoch (int): Defaults to 0.
        curriculum_end_epoch (int): from this epoch on: random order over all. Defaults to 5.
        warmup_epochs (int): first curriculum epochs on the first stage's pool. Defaults to 1.
        seed (int): seed of all permutations. Defaults to 0.
        num_replicas (int | None): ranks; None reads torch.distributed (1 when not initialised).
        rank (int | None): this rank; None reads torch.distributed (0 when not initialised).
        drop_last (bool): drop the tail that does not divide evenly over the ranks instead of padding.
            Defaults to False.
        pacing (str): ``"epoch"`` (default) or ``"step"`` (clock = update() calls / steps_per_epoch).
        steps_per_epoch (int | None): required with ``pacing="step"``.
        samples_per_epoch (int | None): global draws per epoch; None means the pool size at the
            epoch start for static pools and N for pools that move within an epoch.
        strict_order (bool): yield the pool easy-to-hard instead of shuffled during the curriculum.
            Defaults to False.
        chunk_size (int): largest vectorised chunk of indices per rank. Defaults to 65536.

    Raises:
        TypeError: ``difficulty`` has the wrong type.
        ValueError: a parameter is out of range (the message names it).
    """

    strategy = "base"
    _moves_within_epoch = False  # True: the pool changes with update() even under epoch pacing

    def __init__(
        self,
        difficulty: Any,
        *,
        num_stages: int = 3,
        stage_percentiles: Sequence[float] = (0.33, 0.66, 1.0),
        top_k: int | None = None,
        loss_threshold: float = 2.0,
        difficulty_step_up: float = 0.05,
        difficulty_step_down: float = 0.02,
        curriculum_start_epoch: int = 0,
        curriculum_end_epoch: int = 5,
        warmup_epochs: int = 1,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
        pacing: str = "epoch",
        steps_per_epoch: int | None = None,
        samples_per_epoch: int | None = None,
        strict_order: bool = False,
        chunk_size: int = 65536,
    ):
        top_k = _resolve_top_k(difficulty, top_k)
        self.layer_diffs, self.scores = _as_difficulty(difficulty, top_k)
        self.top_k = top_k
        sp = [float(x) for x in stage_percentiles]
        if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
            raise ValueError(f"num_stages must be an integer >= 1, got {num_stages!r}")
        if num_stages != len(sp):
            if tuple(sp) == (0.33, 0.66, 1.0):
                sp = [round((s + 1) / num_stages, 6) for s in range(num_stages)]
            else:
                raise ValueError(f"num_stages={num_stages} conflicts with {len(sp)} stage_percentiles {sp}")
        _check_stage_percentiles(sp)
        self.num_stages = num_stages
        self.stage_percentiles = tuple(sp)
        self.loss_threshold = float(loss_threshold)
        for name, v in (("difficulty_step_up", difficulty_step_up), ("difficulty_step_down", difficulty_step_down)):
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {v}")
        self.difficulty_step_up = float(difficulty_step_up)
        self.difficulty_step_down = float(difficulty_step_down)
        for name, v in (("curriculum_start_epoch", curriculum_start_epoch), ("curriculum_end_epoch", curriculum_end_epoch),
                        ("warmup_epochs", warmup_epochs)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if curriculum_end_epoch < curriculum_start_epoch:
            raise ValueError(f"curriculum_end_epoch={curriculum_end_epoch} is before "
                             f"curriculum_start_epoch={curriculum_start_epoch}")
        if warmup_epochs > curriculum_end_epoch - curriculum_start_epoch:
            raise ValueError(f"warmup_epochs={warmup_epochs} exceeds the curriculum's "
                             f"{curriculum_end_epoch - curriculum_start_epoch} epochs")
        self.curriculum_start_epoch = curriculum_start_epoch
        self.curriculum_end_epoch = curriculum_end_epoch
        self.warmup_epochs = warmup_epochs
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        self.num_replicas, self.rank = _dist_world(num_replicas, rank)
        self.drop_last = bool(drop_last)
        if pacing not in ("epoch", "step"):
            raise ValueError(f"pacing must be 'epoch' or 'step', got {pacing!r}")
        self.pacing = pacing
        if pacing == "step" and (steps_per_epoch is None or isinstance(steps_per_epoch, bool)
                                 or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1):
            raise ValueError(f"pacing='step' needs steps_per_epoch, an integer >= 1, got {steps_per_epoch!r}")
        self.steps_per_epoch = steps_per_epoch
        if samples_per_epoch is not None and (isinstance(samples_per_epoch, bool)
                                              or not isinstance(samples_per_epoch, int) or samples_per_epoch < 1):
            raise ValueError(f"samples_per_epoch must be None or an integer >= 1, got {samples_per_epoch!r}")
        self.samples_per_epoch = samples_per_epoch
        self.strict_order = bool(strict_order)
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        self.chunk_size = chunk_size
        self._n = int(self.layer_diffs.shape[0])
        if self._n >= 2**31:
            raise ValueError(f"at most 2**31 - 1 samples are supported, got {self._n}")
        # 9 significant digits: a sum's last bits depend on the thread count of the reduction
        self._fingerprint = [self._n, int(self.layer_diffs.shape[1]),
                             float(f"{float(self.layer_diffs.sum()):.9g}"), float(f"{float(self.scores.sum()):.9g}")]
        self._views: dict[str, _View] = {}
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}
        # pacing state
        self.epoch = 0
        self.step = 0
        self._init_pacing_state()
        self._chunk_target = _MIN_CHUNK
        self._drop_chunk()
        self._start_epoch(0)

    # ----------------------------------------------------------------- strategy hooks
    def _init_pacing_state(self) -> None:
        """Set strategy state (dynamic percentile, loss history); called once."""

    def _compute_pace(self, phase: str, u: float) -> _Pace:
        raise NotImplementedError

    def _score_for(self, vid: str) -> torch.Tensor:
        if vid == "primary":
            return self.scores
        raise KeyError(vid)

    def _observe(self, loss: float, phase: str, u: float) -> None:
        """Strategy reaction to one loss value (dynamic pacing), at the clock after this step."""

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # ----------------------------------------------------------------- clock and pool
    def _clock(self) -> float:
        if self.pacing == "step":
            return self.step / self.steps_per_epoch
        return float(self.epoch)

    def _phase(self) -> tuple[str, float]:
        return curriculum_progress(self._clock(), curriculum_start_epoch=self.curriculum_start_epoch,
                                   curriculum_end_epoch=self.curriculum_end_epoch,
                                   warmup_epochs=self.warmup_epochs)

    def _rel_time(self) -> tuple[float, float]:
        """(time since the end of warm-up, post-warm-up curriculum span), both in epochs."""
        span = self.curriculum_end_epoch - self.curriculum_start_epoch - self.warmup_epochs
        return self._clock() - self.curriculum_start_epoch - self.warmup_epochs, span

    def _stage_at(self, phase: str, u: float) -> int:
        if phase != "curriculum":
            return 1
        t, span = self._rel_time()
        # integer arithmetic first: (t * S) / span is exact for whole epochs, unlike u * S
        return min(1 + int(t * self.num_stages / span), self.num_stages)

    def _view(self, vid: str) -> _View:
        view = self._views.get(vid)
        if view is None:
            view = self._views[vid] = _View(self._score_for(vid))
        return view

    def _pool_of(self, pace: _Pace) -> tuple[float, int]:
        if pace.vid is None or pace.percentile >= 1.0:
            return 1.0, self._n
        return self._view(pace.vid).pool(pace.percentile)

    @staticmethod
    def _kind_of(pace: _Pace) -> str | None:
        """How a pass walks: None = a random permutation of the samples; ``"r|vid"`` = a random
        permutation of the positions in view vid's easy-to-hard order (the pool is the positions
        below its size, so eligibility needs no gather); ``"s|vid"`` = those positions in order."""
        if pace.vid is None:
            return None
        return ("s|" if pace.strict else "r|") + pace.vid

    def _refresh(self, phase_u: tuple[str, float] | None = None) -> None:
        """Recompute the pace; cut the current chunk when the pool or the order changed."""
        phase, u = self._phase() if phase_u is None else phase_u
        pace = self._compute_pace(phase, u)
        p_eff, k = self._pool_of(pace)
        kind = self._kind_of(pace)
        old = (self._pool_size, self._want_kind) if hasattr(self, "_want_kind") else None
        self._pace = pace
        self._p_eff = p_eff
        self._pool_size = k
        self._want_kind = kind
        if old is not None and old != (k, kind):
            self._invalidate()

    # ----------------------------------------------------------------- epochs
    def _drop_chunk(self) -> None:
        if getattr(self, "_buf", None) is not None:
            self._buf.clear()  # a still-running older iterator must not yield stale indices
        self._buf: list[int] | None = None
        self._it = None
        self._chunk_pos: int | np.ndarray = 0
        self._stale = None
        self._gen_token = object()  # any running iterator stops at its next chunk

    def _start_epoch(self, epoch: int) -> None:
        self._drop_chunk()
        if epoch != self.epoch:
            self._perm_cache.clear()  # permutations are per epoch; keep memory at O(N)
        self.epoch = epoch
        self._walk = 0
        self._yielded = 0
        self._pass_kind: tuple[int, str | None] | None = None
        self._exhausted = False
        self._refresh()
        lazy = self._moves_within_epoch or self.pacing == "step"
        total = self.samples_per_epoch or (self._n if lazy else self._pool_size)
        self._epoch_total = total
        r = self.num_replicas
        self._num_local = total // r if self.drop_last else -(-total // r)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (new permutation, epoch pacing).

        Calling it with the current epoch while that epoch is partly drawn is a no-op, so that a
        state restored by :meth:`load_state_dict` survives the ``set_epoch`` a training loop (or the HF
        Trainer) calls before iterating; on a fully drawn epoch it replays the epoch.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}")
        if epoch == self.epoch and not self._epoch_done():
            return
        self._start_epoch(epoch)

    def __len__(self) -> int:
        return self._num_local

    # ----------------------------------------------------------------- drawing
    def _perm(self, q: int) -> np.ndarray:
        """Random permutation of pass q of this epoch, derived from (seed, epoch, q)."""
        key = (self.epoch, q)
        perm = self._perm_cache.get(key)
        if perm is None:
            g = torch.Generator().manual_seed(_derive_seed(self.seed, self.epoch, q))
            # int32 halves the memory traffic of the permutation (N < 2**31 is checked at init)
            perm = torch.randperm(self._n, generator=g, dtype=torch.int32).numpy()
            if len(self._perm_cache) >= 2:
                self._perm_cache.pop(next(iter(self._perm_cache)))
            self._perm_cache[key] = perm
        return perm

    def _consumed(self) -> int:
        return len(self._buf) - self._it.__length_hint__()

    def _position(self) -> tuple[int, int, tuple[int, str | None] | None]:
        """(walk, yielded, committed pass kind) counting what the live chunk has handed out."""
        if self._buf is None:
            return self._walk, self._yielded, self._pass_kind
        c = self._consumed()
        if c == 0:
            return self._chunk_w0, self._chunk_y0, self._pass_kind
        last = c * self.num_replicas - 1  # the last element of the c-th group of ranks
        cp = self._chunk_pos
        walk = (cp + last if isinstance(cp, int) else int(cp[last])) + 1
        q = walk // self._n
        kind = (q, self._chunk_kinds[q]) if q in self._chunk_kinds else None
        return walk, self._chunk_y0 + c, kind

    def _commit(self) -> None:
        if self._buf is not None:
            self._walk, self._yielded, self._pass_kind = self._position()

    def _invalidate(self) -> None:
        """The pool changed: commit what was handed out, cut the rest of the chunk."""
        if self._buf is not None:
            c = self._consumed()
            self._commit()
            # keep the cut ints alive in _stale so that update() does not pay for freeing them
            self._stale = self._buf[c:]
            del self._buf[c:]  # the generator's list iterator stops here
            self._buf = None
            self._chunk_target = _MIN_CHUNK
        # a pass permutes the positions of one score's order: a new score (or strictness) needs a new pass
        q, c = divmod(self._walk, self._n)
        pk = self._pass_kind
        if pk is not None and pk[0] == q and pk[1] != self._want_kind:
            if c:
                self._walk = (q + 1) * self._n
            self._pass_kind = None

    def _build_chunk(self) -> bool:
        # numpy, not torch: these small single-threaded ops must not wait on OpenMP threads
        rem = self._num_local - self._yielded
        if rem <= 0:
            return False
        r_n, r = self.num_replicas, self.rank
        nloc = min(rem, self._chunk_target, self.chunk_size)
        need = nloc * r_n
        n, k = self._n, self._pool_size
        w = self._walk
        kinds: dict[int, str | None] = {}
        els, poss = [], []
        got = 0
        while got < need:
            q, c = divmod(w, n)
            if q not in kinds:
                pk = self._pass_kind
                kinds[q] = pk[1] if pk is not None and pk[0] == q else self._want_kind
            kind = kinds[q]
            if kind is not None and kind[0] == "s":
                # strict: positions 0..k-1 of the order are the pool, in order
                if c >= k:
                    w = (q + 1) * n
                    continue
                end = min(c + need - got, k)
                pos = None  # contiguous
                e = self._view(kind[2:]).order[c:end]
            else:
                seg_len = need - got if k >= n else int((need - got) * n / k * 1.1) + 64
                end = min(c + seg_len, n)
                seg = self._perm(q)[c:end]
                if k >= n:
                    pos = None  # contiguous
                else:
                    hit = np.flatnonzero(seg < k)
                    seg = seg[hit]
                    pos = hit + c
                e = seg if kind is None else self._view(kind[2:]).order[seg]
            els.append(e)
            # walk positions of the drawn elements, kept for resuming: (start, None) = contiguous
            poss.append((q * n + c, None) if pos is None else (0, pos + q * n))
            got += e.size
            w = q * n + end
        g = np.concatenate(els)[:need] if len(els) > 1 else els[0][:need]
        if len(poss) == 1 and poss[0][1] is None:
            self._chunk_pos = poss[0][0]
        else:
            self._chunk_pos = np.concatenate([np.arange(a, a + e.size) if p is None else p
                                              for (a, p), e in zip(poss, els)])[:need]
        self._chunk_w0, self._chunk_y0 = self._walk, self._yielded
        self._chunk_kinds = kinds
        self._buf = g[r::r_n].tolist()
        self._it = iter(self._buf)
        self._stale = None
        if self._chunk_target < self.chunk_size:
            self._chunk_target *= 2
        return True

    def _epoch_done(self) -> bool:
        return self._exhausted or (self._num_local > 0 and self._position()[1] >= self._num_local)

    def __iter__(self) -> Iterator[int]:
        # a new iterator continues a partly drawn epoch (resume) and starts the next epoch after a
        # fully drawn one, so loops that never call set_epoch still get fresh permutations
        if self._epoch_done():
            self._start_epoch(self.epoch + 1)
        return self._generate()

    def _generate(self) -> Iterator[int]:
        self._commit()  # an abandoned iterator's hand-outs count; continue after them
        self._drop_chunk()
        token = self._gen_token
        while token is self._gen_token:
            if not self._build_chunk():
                self._exhausted = True
                return
            yield from self._it
            if token is self._gen_token and self._buf is not None:
                self._commit()
                self._buf = None

    # ----------------------------------------------------------------- pacing input
    def update(self, loss: float) -> None:
        """Feed one loss value (already smoothed / rank-averaged); counts one optimisation step.

        Dynamic and hybrid samplers move their percentile; with ``pacing="step"`` the schedule
        advances. The change applies to the next index drawn.

        Raises:
            ValueError: the loss is NaN or infinite.
        """
        loss = float(loss)
        if not math.isfinite(loss):
            raise ValueError(f"loss must be finite, got {loss}")
        self.step += 1
        if self._moves_within_epoch or self.pacing == "step":
            phase_u = self._phase()
            self._observe(loss, *phase_u)
            self._refresh(phase_u)

    # ----------------------------------------------------------------- introspection
    @property
    def num_layers(self) -> int:
        """L, the number of layers of the difficulty table."""
        return int(self.layer_diffs.shape[1])

    @property
    def trainable_layers(self) -> list[int] | None:
        """Layers that should be trainable now (None: all layers)."""
        t = self._pace.trainable
        return None if t is None else list(t)

    @property
    def active_layers(self) -> list[int] | None:
        """Layers whose differences rank samples now (None: all layers)."""
        a = self._pace.active_layers
        return None if a is None else list(a)

    @property
    def current_layer(self) -> int | None:
        """The layer (group start) walked in layer-specific phase 1; None otherwise."""
        return self._pace.current_layer

    @property
    def stage(self) -> int | None:
        """Current 1-based stage (None for strategies without stages, or outside the curriculum)."""
        return self._pace.stage

    @property
    def percentile(self) -> float:
        """Current upper percentile of the pool (1.0: everything)."""
        return self._p_eff

    @property
    def pool_size(self) -> int:
        """Number of samples eligible now."""
        return self._pool_size

    @property
    def state(self) -> dict[str, Any]:
        """JSON-serialisable snapshot for logs."""
        _, yielded, _ = self._position()
        return {
            "strategy": self.strategy,
            "epoch": self.epoch,
            "step": self.step,
            "phase": self._pace.phase,
            "percentile": float(self._p_eff),
            "stage": self._pace.stage,
            "pool_size": int(self._pool_size),
            "active_layers": self.active_layers,
            "current_layer": self._pace.current_layer,
            "trainable_layers": self.trainable_layers,
            "num_samples": self._num_local,
            "position": yielded,
            **self._extra_state_for_log(),
        }

    def _extra_state_for_log(self) -> dict[str, Any]:
        return {}

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume at exactly the next index (JSON-serialisable)."""
        walk, yielded, pass_kind = self._position()
        return {
            "format": _STATE_FORMAT,
            "strategy": self.strategy,
            "fingerprint": list(self._fingerprint),
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "epoch": self.epoch,
            "step": self.step,
            "walk": walk,
            "yielded": yielded,
            "epoch_total": self._epoch_total,
            "num_local": self._num_local,
            "exhausted": self._exhausted,
            "pass_kind": None if pass_kind is None else [pass_kind[0], pass_kind[1]],
            "strategy_state": self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (possibly saved by another rank or process).

        Raises:
            ValueError: the state is from another strategy, data set, seed or world size.
        """
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise ValueError(f"not a sampler state (expected format {_STATE_FORMAT!r})")
        checks = (("strategy", self.strategy), ("fingerprint", list(self._fingerprint)), ("seed", self.seed),
                  ("num_replicas", self.num_replicas))
        for key, mine in checks:
            if state[key] != mine:
                raise ValueError(f"sampler state {key}={state[key]!r} does not match this sampler's {mine!r}")
        self._drop_chunk()
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self._load_extra_state(state["strategy_state"])
        self._walk = int(state["walk"])
        self._yielded = int(state["yielded"])
        self._epoch_total = int(state["epoch_total"])
        self._num_local = int(state["num_local"])
        self._exhausted = bool(state["exhausted"])
        pk = state["pass_kind"]
        self._pass_kind = None if pk is None else (int(pk[0]), pk[1])
        self._chunk_target = _MIN_CHUNK
        if hasattr(self, "_want_kind"):
            del self._want_kind  # recompute the pace without cutting anything
        self._refresh()


class RandomOrderSampler(_CurriculumSampler):
    """The baseline: a fresh random permutation of all samples every epoch (same interface).

    The curriculum parameters are accepted (and validated) but ignored.

    Example:
        >>> s = RandomOrderSampler(torch.rand(10, 4), seed=3)
        >>> sorted(s) == list(range(10))
        True
    """

    strategy = "random"

    def _compute_pace(self, phase: str, u: float) -> _Pace:
        return _Pace(phase="random")


class EasyToHardSampler(_CurriculumSampler):
    """Strategy 1: the pool is the easiest fraction by the primary score, growing with a pacing function.

    Warm-up uses ``stage_percentiles[0]``; then the pool's upper percentile is
    ``pacing_fraction(pacing_function, u, start=stage_percentiles[0])`` (see
    :mod:`torch_curriculum.pacing`). ``strict_order=True`` yields the pool sorted easy to hard (the
    seed's "train x_1 -> x_2 -> ... -> x_N").

    Args:
        pacing_function (str): ``linear`` (default), ``root``, ``step``/``discrete``, ``exponential``,
            ``competence``.
        root_degree (float): degree of ``root``. Defaults to 2.0.
        **kwargs: the common parameters of every sampler.
    """

    strategy = "easy_to_hard"

    def __init__(self, difficulty: Any, *, pacing_function: str = "linear", root_degree: float = 2.0, **kwargs: Any):
        if pacing_function not in PACING_NAMES:
            raise ValueError(f"unknown pacing_function {pacing_function!r}; expected one of {', '.join(PACING_NAMES)}")
        if not root_degree > 0:
            raise ValueError(f"root_degree must be > 0, got {root_degree}")
        self.pacing_function = pacing_function
        self.root_degree = float(root_degree)
        super().__init__(difficulty, **kwargs)

    def _stage_of(self, p: float) -> int:
        return bisect.bisect_left(self.stage_percentiles, p) + 1  # smallest s with p <= sp[s-1]

    def _compute_pace(self, phase: str, u: float) -> _Pace:
        if phase in ("before", "after"):
            return _Pace(phase=phase)
        sp = self.stage_percentiles
        p = sp[0] if phase == "warmup" else pacing_fraction(
            self.pacing_function, u, start=sp[0], stage_percentiles=sp, root_degree=self.root_degree)
        return _Pace(phase=phase, vid="primary", percentile=p, strict=self.strict_order, stage=self._stage_of(p))


class LayerWiseProgressiveSampler(_CurriculumSampler):
    """Strategy 2: stage s activates layers ``[0, ceil(s*L/S))`` and admits samples whose score over the
    active layers has percentile ``<= stage_percentiles[s-1]``.

    The active-layer score is ``topk_mean`` with ``k = min(top_k, n_active)`` (default) or the
    ``mean`` over the active layers (``active_score="mean"``). Stages share the post-warm-up curriculum
    time equally; warm-up is stage 1. ``trainable_layers`` = the active layers during the curriculum,
    None (all) outside it.

    Args:
        active_score (str): ``topk_mean`` (default) or ``mean``.
        **kwargs: the common parameters of every sampler.
    """

    strategy = "layer_wise_progressive"

    def __init__(self, difficulty: Any, *, active_score: str = "topk_mean", **kwargs: Any):
        if active_score not in ("topk_mean", "mean"):
            raise ValueError(f"active_score must be 'topk_mean' or 'mean', got {active_score!r}")
        self.active_score = active_score
        super().__init__(difficulty, **kwargs)

    def n_active(self, stage: int) -> int:
        """Active layers of a 1-based stage: ``ceil(stage * L / S)``."""
        return -(-stage * self.num_layers // self.num_stages)

    def _score_for(self, vid: str) -> torch.Tensor:
        if vid.startswith("active:"):
            n = int(vid.split(":")[1])
            d = self.layer_diffs[:, :n]
            if self.active_score == "mean":
                return d.mean(dim=1)
            return aggregate(d, "topk_mean", k=min(self.top_k, n))
        return super()._score_for(vid)

    def _stage_pace(self, phase: str, u: float) -> tuple[int, int, tuple[int, ...]]:
        s = self._stage_at(phase, u)
        n = self.n_active(s)
        return s, n, tuple(range(n))

    def _compute_pace(self, phase: str, u: float) -> _Pace:
        if phase in ("before", "after"):
            return _Pace(phase=phase)
        s, n, layers = self._stage_pace(phase, u)
        return _Pace(phase=phase, vid=f"active:{n}", percentile=self.stage_percentiles[s - 1],
                     strict=self.strict_order, stage=s, active_layers=layers, trainable=layers)


class _DynamicMixin:
    """Loss-driven percentile (shared by the dynamic and hybrid samplers)."""

    def _setup_dynamic(self, adaptive_threshold: bool, adaptive_window: int, min_percentile: float | None,
                       initial_percentile: float | None) -> None:
        if not isinstance(adaptive_window, int) or adaptive_window < 1:
            raise ValueError(f"adaptive_window must be an integer >= 1, got {adaptive_window!r}")
        for name, v in (("min_percentile", min_percentile), ("initial_percentile", initial_percentile)):
            if v is not None and not 0 < v <= 1:
                raise ValueError(f"{name} must lie in (0, 1], got {v}")
        self.adaptive_threshold = bool(adaptive_threshold)
        self.adaptive_window = adaptive_window
        self._min_percentile_arg = min_percentile
        self._initial_percentile_arg = initial_percentile

    def _init_dyn(self, start: float) -> None:
        self._p = start
        self._losses: deque[float] = deque(maxlen=self.adaptive_window)
        self._threshold = self.loss_threshold

    def _move(self, loss: float, lo: float, hi: float) -> None:
        """One dynamic-pacing step: ``loss < threshold`` -> up by step_up, else down by step_down, clamped."""
        p = min(max(self._p, lo), hi)
        if loss < self._threshold:
            p += self.difficulty_step_up
        else:
            p -= self.difficulty_step_down
        # rounding keeps 0.33 + 0.05 == 0.38 exactly, so "percentile <= p" means what it says
        self._p = min(max(round(p, 12), lo), hi)

    def _record(self, loss: float) -> None:
        self._losses.append(loss)
        if self.adaptive_threshold:
            # "below threshold" = better than the running mean of the last W losses (improving)
            self._threshold = sum(self._losses) / len(self._losses)

    def _extra_state(self) -> dict[str, Any]:
        return {"p": self._p, "losses": list(self._losses), "threshold": self._threshold}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._p = float(state["p"])
        self._losses = deque((float(x) for x in state["losses"]), maxlen=self.adaptive_window)
        self._threshold = float(state["threshold"])

    def _extra_state_for_log(self) -> dict[str, Any]:
        return {"loss_threshold": self._threshold}


class DynamicPacingSampler(_DynamicMixin, _CurriculumSampler):
    """Strategy 3: the pool's percentile moves with the loss.

    ``update(loss)``: ``loss < threshold`` -> percentile ``+= difficulty_step_up``, otherwise
    ``-= difficulty_step_down``, clamped to ``[min_percentile, 1]``; only during the curriculum proper
    (warm-up uses ``stage_percentiles[0]``; before/after the curriculum: random over everything). With
    ``adaptive_threshold=True`` the threshold is the mean of the previous ``adaptive_window`` losses
    (the fixed ``loss_threshold`` until the first loss has arrived), so
    "below threshold" means "better than recently". The pool moves within the epoch, so an epoch is
    ``N`` draws (or ``samples_per_epoch``) from the pool current at each draw.

    Args:
        adaptive_threshold (bool): Defaults to False.
        adaptive_window (int): W of the adaptive threshold. Defaults to 50.
        min_percentile (float | None): floor; None means ``stage_percentiles[0]``.
        initial_percentile (float | None): percentile when the curriculum proper starts; None means
            ``min_percentile``.
        **kwargs: the common parameters of every sampler.
    """

    strategy = "dynamic"
    _moves_within_epoch = True

    def __init__(self, difficulty: Any, *, adaptive_threshold: bool = False, adaptive_window: int = 50,
                 min_percentile: float | None = None, initial_percentile: float | None = None, **kwargs: Any):
        self._setup_dynamic(adaptive_threshold, adaptive_window, min_percentile, initial_percentile)
        super().__init__(difficulty, **kwargs)

    def _init_pacing_state(self) -> None:
        self.min_percentile = (self.stage_percentiles[0] if self._min_percentile_arg is None
                               else float(self._min_percentile_arg))
        start = self.min_percentile if self._initial_percentile_arg is None else float(self._initial_percentile_arg)
        self._init_dyn(min(max(start, self.min_percentile), 1.0))

    def _observe(self, loss: float, phase: str, u: float) -> None:
        # the comparison uses the threshold before this loss joins the history
        if phase == "curriculum":
            self._move(loss, self.min_percentile, 1.0)
        self._record(loss)

    def _stage_of(self, p: float) -> int:
        return bisect.bisect_left(self.stage_percentiles, p) + 1  # smallest s with p <= sp[s-1]

    def _compute_pace(self, phase: str, u: float) -> _Pace:
        if phase in ("before", "after"):
            return _Pace(phase=phase)
        p = self.stage_percentiles[0] if phase == "warmup" else self._p
        return _Pace(phase=phase, vid="primary", percentile=p, strict=self.strict_order, stage=self._stage_of(p))


class HybridSampler(_DynamicMixin, LayerWiseProgressiveSampler):
    """Hybrid: layer-wise stages, dynamic pacing inside each stage's band.

    Stage s (as in :class:`LayerWiseProgressiveSampler`: active layers ``[0, ceil(s*L/S))``, score over
    them) admits percentiles up to ``p``, where ``p`` moves by :meth:`update` like
    :class:`DynamicPacingSampler` but stays inside the band ``[stage_percentiles[s-2],
    stage_percentiles[s-1]]`` (stage 1: ``[min_percentile, stage_percentiles[0]]``, min_percentile
    defaulting to ``stage_percentiles[0]``). Entering a stage clamps ``p`` into its band, so a stage
    starts at its lower bound (where the previous stage could reach) and good losses take it to the
    stage's bound. Warm-up is stage 1 (its band, with updates).

    Args:
        adaptive_threshold (bool): as in :class:`DynamicPacingSampler`. Defaults to False.
        adaptive_window (int): as in :class:`DynamicPacingSampler`. Defaults to 50.
        min_percentile (float | None): as in :class:`DynamicPacingSampler`.
        initial_percentile (float | None): as in :class:`DynamicPacingSampler`.
        active_score (str): as in :class:`LayerWiseProgressiveSampler`.
        **kwargs: the common parameters of every sampler.
    """

    strategy = "hybrid"
    _moves_within_epoch = True

    def __init__(self, difficulty: Any, *, adaptive_threshold: bool = False, adaptive_window: int = 50,
                 min_percentile: float | None = None, initial_percentile: float | None = None,
                 active_score: str = "topk_mean", **kwargs: Any):
        self._setup_dynamic(adaptive_threshold, adaptive_window, min_percentile, initial_percentile)
        super().__init__(difficulty, active_score=active_score, **kwargs)

    def _init_pacing_state(self) -> None:
        sp0 = self.stage_percentiles[0]
        self.min_percentile = sp0 if self._min_percentile_arg is None else min(float(self._min_percentile_arg), sp0)
        start = self.min_percentile if self._initial_percentile_arg is None else float(self._initial_percentile_arg)
        self._init_dyn(start)

    def band(self, stage: int) -> tuple[float, float]:
        """``(lo, hi)`` percentile band of a 1-based stage."""
        sp = self.stage_percentiles
        return (self.min_percentile if stage == 1 else sp[stage - 2]), sp[stage - 1]

    def _observe(self, loss: float, phase: str, u: float) -> None:
        if phase in ("warmup", "curriculum"):
            self._move(loss, *self.band(self._stage_at(phase, u)))
        self._record(loss)

    def _compute_pace(self, phase: str, u: float) -> _Pace:
        if phase in ("before", "after"):
            return _Pace(phase=phase)
        s, n, layers = self._stage_pace(phase, u)
        lo, hi = self.band(s)
        p = min(max(self._p, lo), hi)
        return _Pace(phase=phase, vid=f"active:{n}", percentile=p, strict=self.strict_order, stage=s,
                     active_layers=layers, trainable=layers)


class LayerSpecificSampler(_CurriculumSampler):
    """Strategy 4 (hierarchical): phase 1 walks the layers (or layer groups), phase 2 trains jointly.

    Timeline (clock in epochs, fractional under step pacing): warm-up = group 0 with the easiest
    ``stage_percentiles[0]`` by that group's score; phase 1 lasts ``phase1_epochs`` (default: half of
    the post-warm-up curriculum) and gives each group an equal share, in which the samples are
    ordered by the group's score (the mean of ``d_i`` over the group's layers; one layer: its
    ``d_i``), easy to hard (``phase1_order="sorted"``, default) or shuffled (``"shuffled"``), over the
    whole data set or, with ``phase1_growth=True``, a pool growing with ``pacing_function`` within the
    group's share. Phase 2 (until ``curriculum_end_epoch``) trains all layers jointly, in random order
    (``phase2_order="random"``, default) or easy-to-hard by the primary score with ``pacing_function``
    (``"easy_to_hard"``). ``current_layer`` is the group's first layer; ``trainable_layers`` the group.

    Args:
        layer_groups (int | Sequence[Sequence[int]] | None): groups of layers walked in phase 1: a list
            of layer lists, or a number of contiguous groups; None means one group per layer under step
            pacing and ``min(L, floor(phase1_epochs))`` contiguous groups under epoch pacing (every
            group needs at least one epoch).
        phase1_epochs (float | None): length of phase 1 in epochs; None = half the post-warm-up span.
        phase1_order (str): ``sorted`` or ``shuffled``. Defaults to ``sorted``.
        phase1_growth (bool): grow the pool within each group's share. Defaults to False.
        phase2_order (str): ``random`` or ``easy_to_hard``. Defaults to ``random``.
        pacing_function (str): used by phase1_growth and ``phase2_order="easy_to_hard"``. Defaults to ``linear``.
        **kwargs: the common parameters of every sampler.

    Raises:
        ValueError: bad groups (empty, out of range, repeated layer), phase 1 longer than the
            curriculum, or epoch pacing that would give a group less than one epoch.
    """

    strategy = "layer_specific"

    def __init__(self, difficulty: Any, *, layer_groups: int | Sequence[Sequence[int]] | None = None,
                 phase1_epochs: float | None = None, phase1_order: str = "sorted", phase1_growth: bool = False,
                 phase2_order: str = "random", pacing_function: str = "linear", **kwargs: Any):
        if phase1_order not in ("sorted", "shuffled"):
            raise ValueError(f"phase1_order must be 'sorted' or 'shuffled', got {phase1_order!r}")
        if phase2_order not in ("random", "easy_to_hard"):
            raise ValueError(f"phase2_order must be 'random' or 'easy_to_hard', got {phase2_order!r}")
        if pacing_function not in PACING_NAMES:
            raise ValueError(f"unknown pacing_function {pacing_function!r}; expected one of {', '.join(PACING_NAMES)}")
        self.phase1_order = phase1_order
        self.phase1_growth = bool(phase1_growth)
        self.phase2_order = phase2_order
        self.pacing_function = pacing_function
        self._groups_arg = layer_groups
        self._phase1_arg = phase1_epochs
        super().__init__(difficulty, **kwargs)

    def _init_pacing_state(self) -> None:
        span = self.curriculum_end_epoch - self.curriculum_start_epoch - self.warmup_epochs
        p1 = span / 2 if self._phase1_arg is None else float(self._phase1_arg)
        if not 0 <= p1 <= span:
            raise ValueError(f"phase1_epochs={p1} must lie in [0, {span}] (the post-warm-up curriculum epochs)")
        self.phase1_epochs = p1
        big_l = self.num_layers
        g = self._groups_arg
        if g is None:
            g = big_l if self.pacing == "step" else max(1, min(big_l, int(p1)))
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
        if self.pacing == "epoch" and p1 > 0 and p1 / len(groups) < 1:
            raise ValueError(f"layer-specific phase 1 of {p1} epochs cannot give each of {len(groups)} layer "
                             "groups a whole epoch under pacing='epoch'; use pacing='step' (with "
                             "steps_per_epoch), fewer layer_groups or a longer phase1_epochs")

    def _score_for(self, vid: str) -> torch.Tensor:
        if vid.startswith("group:"):
            grp = self.layer_groups[int(vid.split(":")[1])]
            return self.layer_diffs[:, grp].mean(dim=1)
        return super()._score_for(vid)

    def _group_pace(self, phase: str, gi: int, p: float) -> _Pace:
        grp = tuple(self.layer_groups[gi])
        return _Pace(phase=phase, vid=f"group:{gi}", percentile=p, strict=self.phase1_order == "sorted",
                     current_layer=grp[0], trainable=grp)

    def _compute_pace(self, phase: str, u: float) -> _Pace:
        if phase in ("before", "after"):
            return _Pace(phase=phase)
        sp = self.stage_percentiles
        if phase == "warmup":
            return self._group_pace("warmup", 0, sp[0])
        t, span = self._rel_time()
        if t < self.phase1_epochs:
            share = self.phase1_epochs / len(self.layer_groups)
            gi = min(int(t / share), len(self.layer_groups) - 1)
            v = t / share - gi
            p = pacing_fraction(self.pacing_function, v, start=sp[0], stage_percentiles=sp) if self.phase1_growth else 1.0
            return self._group_pace("phase1", gi, p)
        if self.phase2_order == "random":
            return _Pace(phase="phase2")
        v = (t - self.phase1_epochs) / max(span - self.phase1_epochs, 1e-12)
        p = pacing_fraction(self.pacing_function, v, start=sp[0], stage_percentiles=sp)
        return _Pace(phase="phase2", vid="primary", percentile=p, strict=self.strict_order)


_CLASSES = {
    "random": RandomOrderSampler,
    "easy_to_hard": EasyToHardSampler,
    "layer_wise_progressive": LayerWiseProgressiveSampler,
    "dynamic": DynamicPacingSampler,
    "layer_specific": LayerSpecificSampler,
    "hybrid": HybridSampler,
}


def build_sampler(config: CurriculumConfig, difficulty: Any, *, num_replicas: int | None = None,
                  rank: int | None = None, **overrides: Any) -> _CurriculumSampler:
    """Build the sampler of ``config.curriculum.strategy`` with the config's parameters.

    Args:
        config (CurriculumConfig): the config (``curriculum``, ``training`` and ``meta_token.top_k``).
        difficulty: a ``MetaTokenDifficultyDataset`` or an ``[N, L]`` tensor.
        num_replicas (int | None): see the samplers. Defaults to torch.distributed / 1.
        rank (int | None): see the samplers.
        **overrides: keyword arguments passed to the sampler, overriding the config's values (e.g.
            ``pacing="step", steps_per_epoch=100``, ``layer_groups=...``).

    Returns:
        The sampler.

    Raises:
        ValueError: unknown strategy (the message lists the valid ones) or a bad parameter.

    Example:
        >>> cfg = CurriculumConfig.from_dict({"curriculum": {"strategy": "easy_to_hard"}})
        >>> type(build_sampler(cfg, torch.rand(20, 4))).__name__
        'EasyToHardSampler'
    """
    cur, tr = config.curriculum, config.training
    name = canonical_strategy(cur.strategy)
    kwargs: dict[str, Any] = dict(
        num_stages=cur.num_stages, stage_percentiles=tuple(cur.stage_percentiles), top_k=config.meta_token.top_k,
        loss_threshold=cur.loss_threshold, difficulty_step_up=cur.difficulty_step_up,
        difficulty_step_down=cur.difficulty_step_down, curriculum_start_epoch=tr.curriculum_start_epoch,
        curriculum_end_epoch=tr.curriculum_end_epoch, warmup_epochs=tr.warmup_epochs, seed=tr.seed,
        num_replicas=num_replicas, rank=rank, strict_order=cur.strict_order,
    )
    for extra in ("pacing", "steps_per_epoch", "samples_per_epoch"):
        for section in (cur, tr):
            if hasattr(section, extra):
                kwargs[extra] = getattr(section, extra)
    if name in ("easy_to_hard", "layer_specific"):
        kwargs["pacing_function"] = cur.pacing_function
    if name in ("dynamic", "hybrid"):
        kwargs.update(adaptive_threshold=cur.adaptive_threshold, min_percentile=cur.min_percentile)
        if hasattr(cur, "adaptive_window"):
            kwargs["adaptive_window"] = cur.adaptive_window
    if name == "layer_specific":
        for extra in ("layer_groups", "phase1_epochs", "phase1_order", "phase2_order"):
            if getattr(cur, extra, None) is not None:
                kwargs[extra] = getattr(cur, extra)
    kwargs.update(overrides)
    return _CLASSES[name](difficulty, **kwargs)
