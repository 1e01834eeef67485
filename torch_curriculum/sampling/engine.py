"""The sampler engine: pool, drawing, sharding, state and resume, shared by every strategy.

A strategy is a small schedule (:mod:`torch_curriculum.sampling.schedules`) that says, at curriculum
time ``t``, which score orders the data and which upper percentile of it is eligible. This module
turns that into indices:

* :class:`Timeline`: the curriculum clock (epochs, steps inside epochs, or a step budget) and its
  phases (before, warm-up, curriculum, after);
* :class:`DifficultySource`: the difficulty table, read lazily and in row chunks, so a sampler keeps
  O(N) working arrays (one int32 order per score in use) and never materialises ``[N, L]``; it
  pickles as the file path (a tensor pickles as itself);
* :class:`CurriculumSampler`: the ``torch.utils.data.Sampler`` that draws, shards by rank, saves and
  restores its state. The public strategy classes in :mod:`torch_curriculum.samplers` are thin
  constructors over it; see that module's docstring for the drawing semantics.

The core imports neither transformers nor accelerate.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import struct
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Sampler

from ..difficulty import aggregate
from .schedules import Pace, Schedule, ScoreSpec

__all__ = ["STATE_FORMAT", "CurriculumSampler", "DifficultySource", "Time", "Timeline"]

STATE_FORMAT = "torch_curriculum.sampler/2"
_MIN_CHUNK = 256
_ROWS_PER_READ = 1 << 15
_MAX_VIEWS = 2  # score orders kept (the current one and one more); a stage change rebuilds once


class Time(NamedTuple):
    """Curriculum time: ``phase`` (before, warmup, curriculum, after), progress ``u`` in [0, 1), time
    since the end of warm-up ``rel`` and the post-warm-up ``span`` (both in the timeline's unit)."""

    phase: str
    u: float
    rel: float
    span: float


def _int_ge0(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    return int(v)


class Timeline:
    """The curriculum clock.

    Three clocks: ``pacing="epoch"`` (t = the epoch; the pool is fixed for an epoch unless the
    schedule moves with the loss), ``pacing="step"`` (t = step / steps_per_epoch, in epochs) and the
    step budget (``curriculum_steps`` set: t = the step, the curriculum runs over steps
    ``[curriculum_start_step, curriculum_start_step + curriculum_steps)``, the first
    ``warmup_steps`` of which are warm-up, whatever the epochs). ``step`` counts :meth:`update` calls.

    Args:
        curriculum_start_epoch (int): Defaults to 0.
        curriculum_end_epoch (int): Defaults to 5.
        warmup_epochs (int): Defaults to 1.
        pacing (str): ``epoch`` or ``step``. Defaults to ``epoch``.
        steps_per_epoch (int | None): required by ``pacing="step"``.
        curriculum_steps (int | None): the step budget (>= 1); None: epoch keys.
        warmup_steps (int): warm-up steps of the budget. Defaults to 0.
        curriculum_start_step (int): first step of the budget. Defaults to 0.

    Raises:
        ValueError: a value out of range or two clocks at once (the message names the keys).
    """

    def __init__(self, *, curriculum_start_epoch: int = 0, curriculum_end_epoch: int = 5, warmup_epochs: int = 1,
                 pacing: str = "epoch", steps_per_epoch: int | None = None, curriculum_steps: int | None = None,
                 warmup_steps: int = 0, curriculum_start_step: int = 0):
        for name, v in (("curriculum_start_epoch", curriculum_start_epoch), ("curriculum_end_epoch", curriculum_end_epoch),
                        ("warmup_epochs", warmup_epochs), ("warmup_steps", warmup_steps),
                        ("curriculum_start_step", curriculum_start_step)):
            _int_ge0(name, v)
        if curriculum_end_epoch < curriculum_start_epoch:
            raise ValueError(f"curriculum_end_epoch={curriculum_end_epoch} is before "
                             f"curriculum_start_epoch={curriculum_start_epoch}")
        if warmup_epochs > curriculum_end_epoch - curriculum_start_epoch:
            raise ValueError(f"warmup_epochs={warmup_epochs} exceeds the curriculum's "
                             f"{curriculum_end_epoch - curriculum_start_epoch} epochs")
        if pacing not in ("epoch", "step"):
            raise ValueError(f"pacing must be 'epoch' or 'step', got {pacing!r}")
        if curriculum_steps is None:
            if warmup_steps or curriculum_start_step:
                raise ValueError("warmup_steps / curriculum_start_step need curriculum_steps (the step budget)")
            if pacing == "step" and (steps_per_epoch is None or isinstance(steps_per_epoch, bool)
                                     or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1):
                raise ValueError(f"pacing='step' needs steps_per_epoch, an integer >= 1, got {steps_per_epoch!r}")
        else:
            if isinstance(curriculum_steps, bool) or not isinstance(curriculum_steps, int) or curriculum_steps < 1:
                raise ValueError(f"curriculum_steps must be an integer >= 1 or None, got {curriculum_steps!r}")
            if warmup_steps > curriculum_steps:
                raise ValueError(f"warmup_steps={warmup_steps} exceeds curriculum_steps={curriculum_steps}")
            if steps_per_epoch is not None:
                raise ValueError("curriculum_steps (a step budget) and steps_per_epoch (pacing='step' in epoch "
                                 "units) are two clocks; set one of them")
        if steps_per_epoch is not None and (isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int)
                                            or steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch must be None or an integer >= 1, got {steps_per_epoch!r}")
        self.curriculum_start_epoch = int(curriculum_start_epoch)
        self.curriculum_end_epoch = int(curriculum_end_epoch)
        self.warmup_epochs = int(warmup_epochs)
        self.steps_per_epoch = steps_per_epoch
        self.curriculum_steps = curriculum_steps
        self.warmup_steps = int(warmup_steps)
        self.curriculum_start_step = int(curriculum_start_step)
        self.pacing = "step" if curriculum_steps is not None else pacing
        if self.budget:
            s = self.curriculum_start_step
            self._bounds = (s, s + curriculum_steps, self.warmup_steps)
        else:
            self._bounds = (self.curriculum_start_epoch, self.curriculum_end_epoch, self.warmup_epochs)

    @property
    def budget(self) -> bool:
        """Whether the clock is the step budget."""
        return self.curriculum_steps is not None

    @property
    def by_step(self) -> bool:
        """Whether :meth:`update` moves the clock (pacing by steps, in epoch units or as a budget)."""
        return self.pacing == "step"

    @property
    def unit(self) -> str:
        """The clock's unit: ``"steps"`` for a step budget, else ``"epochs"``."""
        return "steps" if self.budget else "epochs"

    def bounds(self) -> tuple[float, float, float]:
        """``(start, end, warmup)`` in the clock's unit."""
        return self._bounds

    @property
    def span(self) -> float:
        """Post-warm-up curriculum length in the clock's unit."""
        s, e, w = self.bounds()
        return e - s - w

    def clock(self, epoch: int, step: int) -> float:
        """The clock reading at ``(epoch, step)``, in :attr:`unit`.

        Args:
            epoch (int): current epoch.
            step (int): global optimiser step.

        Returns:
            float: ``step`` for a step budget; ``step / steps_per_epoch`` (fractional epochs) under
            step pacing; else ``epoch``.
        """
        if self.budget:
            return float(step)
        if self.pacing == "step":
            return step / self.steps_per_epoch
        return float(epoch)

    def at(self, epoch: int, step: int) -> Time:
        """The curriculum time at ``(epoch, step)``."""
        # the phases of :func:`torch_curriculum.pacing.curriculum_progress`, inlined: update() runs this
        t = self.clock(epoch, step)
        s, e, w = self._bounds
        span = e - s - w
        if t < s:
            return Time("before", 0.0, t - s - w, span)
        if t >= e:
            return Time("after", 0.0, t - s - w, span)
        if t < s + w:
            return Time("warmup", 0.0, t - s - w, span)
        return Time("curriculum", min(max((t - s - w) / span, 0.0), 1.0), t - s - w, span)


# ------------------------------------------------------------------------------------------ source
def _tensor_span(path: Path, name: str) -> tuple[int, str, list[int]]:
    """(absolute byte offset, dtype, shape) of tensor ``name`` in a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
    info = header[name]
    return 8 + n + int(info["data_offsets"][0]), info["dtype"], [int(x) for x in info["shape"]]


class DifficultySource:
    """The difficulty table behind a sampler, read in row chunks (O(N) working memory).

    Args:
        difficulty: a ``MetaTokenDifficultyDataset`` (or anything with ``.layer_diffs`` ``[N, L]`` and
            ``.difficulty`` ``[N]``) or an ``[N, L]`` tensor / array (primary score: ``topk_mean`` with
            ``top_k``).
        top_k (int): K of the ``topk_mean`` primary score of a tensor.

    Raises:
        TypeError: ``difficulty`` has the wrong type.
        ValueError: wrong shape, or NaN/Inf in the primary score (the message names the sample).
    """

    def __init__(self, difficulty: Any, top_k: int):
        self.top_k = int(top_k)
        self._sha: str | None = None
        if isinstance(difficulty, (torch.Tensor, np.ndarray)):
            t = torch.as_tensor(difficulty).detach()
            self.kind, self.obj, self.what = "tensor", t, "difficulty tensor"
            shape = tuple(t.shape)
        elif hasattr(difficulty, "layer_diffs"):
            self.kind, self.obj, self.what = "dataset", difficulty, f"{type(difficulty).__name__}.layer_diffs"
            shape = tuple(difficulty.layer_diffs.shape)
        else:
            raise TypeError("difficulty must be a MetaTokenDifficultyDataset (anything with .layer_diffs [N, L] "
                            f"and .difficulty [N]) or an [N, L] tensor, got {type(difficulty).__name__}")
        if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
            raise ValueError(f"{self.what} must have shape [N, L] with N, L >= 1, got {shape}")
        self.n, self.num_layers = int(shape[0]), int(shape[1])
        if self.n >= 2**31:
            raise ValueError(f"at most 2**31 - 1 samples are supported, got {self.n}")
        if self.top_k > self.num_layers:
            raise ValueError(f"top_k={self.top_k} exceeds the number of layers L={self.num_layers}")
        if self.kind == "tensor":
            for a, _b, chunk in self._chunks():  # NaN/Inf anywhere would make every score meaningless
                bad = ~np.isfinite(chunk)
                if bad.any():
                    i, j = np.argwhere(bad)[0]
                    raise ValueError(f"{self.what} holds NaN/Inf at sample {a + int(i)}, layer {int(j)}")

    # -- pickling: a file-backed dataset travels as its path
    @property
    def path(self) -> Path | None:
        """The difficulty file, when the source is a file-backed dataset."""
        p = getattr(self.obj, "path", None) if self.kind == "dataset" else None
        return Path(p) if isinstance(p, (str, Path)) else None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.path is not None:
            state["_sha"] = self.identity()["sha256"]  # checked against the file when re-opened
            state["obj"] = None
            state["_reopen"] = (type(self.obj).__module__, type(self.obj).__qualname__, str(self.path))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        reopen = state.pop("_reopen", None)
        self.__dict__.update(state)
        if reopen is not None:
            import importlib

            mod, qual, path = reopen
            cls = getattr(importlib.import_module(mod), qual)
            self.obj = cls(path)
            if tuple(self.obj.layer_diffs.shape) != (self.n, self.num_layers):
                raise ValueError(f"{path}: the difficulty file changed since the sampler was pickled "
                                 f"(shape {tuple(self.obj.layer_diffs.shape)}, expected {(self.n, self.num_layers)})")
            x = self.primary()
            if hashlib.sha256(memoryview(x).cast("B")).hexdigest() != self._sha:
                raise ValueError(f"{path}: the difficulty file changed since the sampler was pickled "
                                 "(its primary-score bytes differ)")

    # -- reading
    def _chunks(self, rows: int = _ROWS_PER_READ) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(start, stop, float64 [stop-start, L])`` row chunks of the normalised table."""
        path = self.path
        if path is not None:
            try:
                offset, dtype, shape = _tensor_span(path, "layer_diffs")
            except (OSError, KeyError, ValueError, struct.error):
                offset = None
            if offset is not None and dtype == "F64" and shape == [self.n, self.num_layers]:
                # plain reads into one reused buffer, not the memory map: the pages of a 2.5 GB table
                # must not stay resident, and only one chunk is alive at a time
                row_bytes = 8 * self.num_layers
                buf = bytearray(min(rows, self.n) * row_bytes)
                with open(path, "rb") as f:
                    for a in range(0, self.n, rows):
                        b = min(a + rows, self.n)
                        size = (b - a) * row_bytes
                        f.seek(offset + a * row_bytes)
                        if f.readinto(memoryview(buf)[:size]) != size:
                            raise ValueError(f"{path}: truncated layer_diffs at sample {a}")
                        yield a, b, np.frombuffer(buf, dtype="<f8", count=(b - a) * self.num_layers).reshape(
                            b - a, self.num_layers)
                return
        t = self.obj if self.kind == "tensor" else torch.as_tensor(self.obj.layer_diffs)
        for a in range(0, self.n, rows):
            b = min(a + rows, self.n)
            yield a, b, t[a:b].detach().to("cpu", torch.float64).numpy()

    def view(self, key: str) -> _View:
        """The easy-to-hard view of score ``key``, shared by every sampler over the same table object
        while one of them holds it (views are read-only)."""
        entry = _SHARED_VIEWS.get(id(self.obj))
        if entry is not None and entry[0]() is self.obj:
            shared = entry[1]
        else:
            shared = weakref.WeakValueDictionary()
            try:  # keyed by identity (a tensor's == is elementwise); dropped with the object
                _SHARED_VIEWS[id(self.obj)] = (weakref.ref(self.obj), shared)
                weakref.finalize(self.obj, _SHARED_VIEWS.pop, id(self.obj), None)
            except TypeError:  # an object that cannot be weakly referenced: no sharing
                _SHARED_VIEWS.pop(id(self.obj), None)
        skey = (self.top_k, key)  # a tensor's primary score depends on top_k
        view = shared.get(skey)
        if view is None:
            view = _View(self.score(ScoreSpec.parse(key)))
            shared[skey] = view
        return view

    def primary(self) -> np.ndarray:
        """The primary score ``[N]`` float64 (the dataset's ``difficulty`` column, or ``topk_mean``)."""
        if self.kind == "dataset" and getattr(self.obj, "difficulty", None) is not None:
            col = self.obj.difficulty
            x = col.numpy() if isinstance(col, torch.Tensor) else np.asarray(col)
            x = np.ascontiguousarray(x.reshape(-1), dtype=np.float64)
            if x.shape[0] != self.n:
                raise ValueError(f"{type(self.obj).__name__}.difficulty has {x.shape[0]} entries but "
                                 f"layer_diffs has {self.n} samples")
            bad = ~np.isfinite(x)
            if bad.any():
                raise ValueError(f"{type(self.obj).__name__}.difficulty holds NaN/Inf at sample {int(np.argmax(bad))}")
            return x
        return self.score(ScoreSpec("topk_mean", tuple(range(self.num_layers)), self.top_k))

    def score(self, spec: ScoreSpec) -> np.ndarray:
        """The score ``spec`` as ``[N]`` float64, computed chunk by chunk."""
        if spec.how == "primary":
            return self.primary()
        out = np.empty(self.n, dtype=np.float64)
        cols = list(spec.layers)
        contiguous = cols == list(range(cols[0], cols[-1] + 1))
        for a, b, chunk in self._chunks():
            d = chunk[:, cols[0]:cols[-1] + 1] if contiguous else chunk[:, cols]
            bad = ~np.isfinite(d)
            if bad.any():
                i, j = np.argwhere(bad)[0]
                raise ValueError(f"{self.what} holds NaN/Inf at sample {a + int(i)}, layer {cols[int(j)]}")
            if spec.how == "mean":
                out[a:b] = d.mean(axis=1)
            else:
                out[a:b] = aggregate(torch.from_numpy(np.array(d)), "topk_mean", k=spec.k).numpy()
        return out

    def identity(self) -> dict[str, Any]:
        """``{"num_samples", "num_layers", "sha256"}``: sha256 of the bytes of the primary-score column
        (float64, little-endian) for a dataset, of the whole table for a tensor."""
        if self._sha is None:
            h = hashlib.sha256()
            if self.kind == "tensor":
                for _a, _b, chunk in self._chunks():
                    h.update(memoryview(np.ascontiguousarray(chunk, dtype="<f8")).cast("B"))
            else:
                h.update(memoryview(np.ascontiguousarray(self.primary(), dtype="<f8")).cast("B"))
            self._sha = h.hexdigest()
        return {"num_samples": self.n, "num_layers": self.num_layers, "sha256": self._sha}


_SHARED_VIEWS: dict[int, tuple[weakref.ref, weakref.WeakValueDictionary]] = {}


class _View:
    """One score's easy-to-hard order (int32) and its tie groups; 4 bytes per sample without ties.

    The percentile of position j of ``order`` is ``end(j) / N`` where ``end(j)`` is the end of j's tie
    group (as :func:`~torch_curriculum.difficulty.percentiles` defines it: the fraction of scores
    ``<=`` this one); the pool "percentile <= p" is the first ``pool(p)[1]`` positions of ``order``.
    """

    __slots__ = ("__weakref__", "ends", "min_pct", "n", "order")

    def __init__(self, score: np.ndarray):
        x = np.asarray(score, dtype=np.float64)
        if not np.isfinite(x).all():
            raise ValueError(f"difficulty scores hold NaN/Inf at sample {int(np.argmax(~np.isfinite(x)))}")
        self.n = n = len(x)
        self.order = np.argsort(x, kind="stable").astype(np.int32)  # ties keep index order
        xs = x[self.order]
        cut = np.flatnonzero(xs[1:] != xs[:-1]) + 1
        del xs
        self.ends = None if len(cut) == n - 1 else np.append(cut, n).astype(np.int64)
        self.min_pct = (1 if self.ends is None else int(self.ends[0])) / n

    def group_end(self) -> np.ndarray:
        """End of the tie group of every position (``[N]``)."""
        if self.ends is None:
            return np.arange(1, self.n + 1)
        sizes = np.diff(np.concatenate([[0], self.ends]))
        return np.repeat(self.ends, sizes)

    @property
    def sorted_pct(self) -> np.ndarray:
        """Percentile of every position of ``order`` (built on demand; tests and inspection)."""
        return self.group_end() / self.n

    def pool(self, p: float) -> tuple[float, int]:
        """Effective upper percentile (never below the easiest tie group) and pool size."""
        p_eff = max(p, self.min_pct)
        n = self.n
        e = min(int(p_eff * n), n)  # the largest e with e / n <= p_eff, in the float64 of the percentiles
        while e < n and (e + 1) / n <= p_eff:
            e += 1
        while e > 0 and e / n > p_eff:
            e -= 1
        if self.ends is None:
            return p_eff, e
        i = int(np.searchsorted(self.ends, e, side="right"))
        return p_eff, int(self.ends[i - 1]) if i else 0


@functools.lru_cache(maxsize=256)
def _kind_str(strict: bool, spec: ScoreSpec) -> str:
    return ("s|" if strict else "r|") + spec.key()


@functools.lru_cache(maxsize=256)
def _key_str(spec: ScoreSpec) -> str:
    return spec.key()


def _derive_seed(*parts: int) -> int:
    h = hashlib.blake2b(":".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def _world() -> tuple[int, int] | None:
    """``(world_size, rank)`` of an initialised default process group, else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return None


def resolve_world(num_replicas: int | None, rank: int | None) -> tuple[int, int, bool]:
    """``(num_replicas, rank, from_group)``: None reads the process group (1 / 0 when there is none)."""
    w = _world()
    from_group = num_replicas is None
    if num_replicas is None:
        num_replicas = w[0] if w else 1
    if rank is None:
        rank = w[1] if w else 0
    if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"num_replicas must be an integer >= 1, got {num_replicas!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be an integer in [0, {num_replicas - 1}], got {rank!r}")
    return num_replicas, rank, from_group


# ------------------------------------------------------------------------------------------ engine
class CurriculumSampler(Sampler[int]):
    """The engine behind every strategy: draws the schedule's pool, shards it, saves and restores.

    Build it through the strategy classes of :mod:`torch_curriculum.samplers` (or
    :func:`~torch_curriculum.samplers.build_sampler`); see that module for the drawing semantics.
    Attributes that are not the engine's (``loss_threshold``, ``layer_groups``, ``band`` ...) are read
    from the schedule.

    Args:
        source (DifficultySource): the table.
        schedule (Schedule): the strategy.
        timeline (Timeline): the clock.
        stage_percentiles (tuple[float, ...]): the stage bounds (for reporting).
        seed (int): seed of all permutations. Defaults to 0.
        num_replicas (int | None): ranks; None reads torch.distributed (1 when not initialised).
        rank (int | None): this rank; None reads torch.distributed (0 when not initialised).
        drop_last (bool): drop the uneven tail instead of padding. Defaults to False.
        samples_per_epoch (int | None): global draws per epoch; None: the pool size for static pools,
            N for pools that move within an epoch.
        chunk_size (int): largest vectorised chunk of indices per rank. Defaults to 65536.

    Raises:
        ValueError: a parameter is out of range (the message names it).
    """

    strategy = "base"

    def __init__(self, source: DifficultySource, schedule: Schedule, timeline: Timeline, *,
                 stage_percentiles: tuple[float, ...], seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None, drop_last: bool = False, samples_per_epoch: int | None = None,
                 chunk_size: int = 65536):
        self.source = source
        self.schedule = schedule
        self.timeline = timeline
        self.stage_percentiles = tuple(stage_percentiles)
        self.num_stages = len(self.stage_percentiles)
        self.top_k = source.top_k
        if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64:
            raise ValueError(f"seed must be an integer in [-2**63, 2**64), got {seed!r}")
        self.seed = seed
        self.num_replicas, self.rank, self._world_from_group = resolve_world(num_replicas, rank)
        self.drop_last = bool(drop_last)
        if samples_per_epoch is not None and (isinstance(samples_per_epoch, bool)
                                              or not isinstance(samples_per_epoch, int) or samples_per_epoch < 1):
            raise ValueError(f"samples_per_epoch must be None or an integer >= 1, got {samples_per_epoch!r}")
        self.samples_per_epoch = samples_per_epoch
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        self.chunk_size = chunk_size
        self._n = source.n
        self._moving = bool(schedule.moves_within_epoch or timeline.by_step)  # update() moves the pool
        self._init_caches()
        self.epoch = 0
        self.step = 0
        self._chunk_target = _MIN_CHUNK
        self._drop_chunk()
        self._start_epoch(0)

    def _init_caches(self) -> None:
        self._views: dict[str, _View] = {}
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    def __getattr__(self, name: str) -> Any:
        # strategy parameters (loss_threshold, layer_groups, pacing_function ...) live on the schedule,
        # the clock's keys on the timeline
        if name.startswith("_") or name in ("schedule", "timeline", "source"):
            raise AttributeError(name)
        sched = self.__dict__.get("schedule")
        for obj in (sched, *getattr(sched, "parts", ()), self.__dict__.get("timeline")):
            if obj is not None and hasattr(obj, name):
                return getattr(obj, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ----------------------------------------------------------------- pickling (DataLoader workers)
    def __getstate__(self) -> dict[str, Any]:
        walk, yielded, kind = self._position()
        state = {k: v for k, v in self.__dict__.items()
                 if k not in ("_views", "_perm_cache", "_buf", "_it", "_stale", "_gen_token", "_chunk_pos",
                              "_chunk_kinds", "_chunk_w0", "_chunk_y0")}
        state.update(_walk=walk, _yielded=yielded, _pass_kind=kind)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_caches()
        self._buf = None
        self._drop_chunk()

    # ----------------------------------------------------------------- clock and pool
    def _time(self) -> Any:
        return self.timeline.at(self.epoch, self.step)

    def _moves(self) -> bool:
        return self._moving

    def _view(self, key: str) -> _View:
        view = self._views.get(key)
        if view is None:
            view = self.source.view(key)
            while len(self._views) >= _MAX_VIEWS:  # drop the oldest-built order
                del self._views[next(iter(self._views))]
            self._views[key] = view
        return view

    def _pool_of(self, pace: Pace) -> tuple[float, int]:
        if pace.score is None or pace.percentile >= 1.0:
            return 1.0, self._n
        return self._view(_key_str(pace.score)).pool(pace.percentile)

    @staticmethod
    def _kind_of(pace: Pace) -> str | None:
        """How a pass walks: None = a random permutation of the samples; ``"r|key"`` = a random
        permutation of the positions in that score's easy-to-hard order (the pool is the positions
        below its size, so eligibility needs no gather); ``"s|key"`` = those positions in order."""
        if pace.score is None:
            return None
        return _kind_str(pace.strict, pace.score)

    def _refresh(self, time: Any = None) -> None:
        """Recompute the pace; cut the current chunk when the pool or the order changed."""
        pace = self.schedule.pace(self._time() if time is None else time)
        p_eff, k = self._pool_of(pace)
        kind = self._kind_of(pace)
        old = (self._pool_size, self._want_kind) if hasattr(self, "_want_kind") else None
        self._pace, self._p_eff, self._pool_size, self._want_kind = pace, p_eff, k, kind
        if old is not None and old != (k, kind):
            self._invalidate()

    def _length_at(self, pool_size: int) -> int:
        total = self.samples_per_epoch or (self._n if self._moves() else pool_size)
        r = self.num_replicas
        return total // r if self.drop_last else -(-total // r)

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
        self._epoch_total = self.samples_per_epoch or (self._n if self._moves() else self._pool_size)
        self._num_local = self._length_at(self._pool_size)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (new permutation; epoch pacing moves to that epoch's pool).

        Calling it with the current epoch while that epoch is partly drawn is a no-op, so that a
        state restored by :meth:`load_state_dict` survives the ``set_epoch`` a training loop (or the HF
        Trainer) calls before iterating; on a fully drawn epoch it replays the epoch.

        Raises:
            ValueError: ``epoch`` is not an integer >= 0.
        """
        epoch = _int_ge0("epoch", epoch)
        if epoch == self.epoch and not self._epoch_done():
            return
        self._start_epoch(epoch)

    def __len__(self) -> int:
        """Draws of the current epoch on this rank."""
        return self._num_local

    def planned_lengths(self, num_epochs: int) -> list[int]:
        """Indices per epoch on this rank for epochs ``0 .. num_epochs - 1``, as planned now.

        Pools fixed per epoch give their pool size (sharded); pools that move within an epoch (dynamic,
        hybrid, step pacing, step budget) give N (or ``samples_per_epoch``). Nothing about the sampler
        changes (its state and position are untouched).

        Raises:
            ValueError: ``num_epochs`` is not an integer >= 0.
        """
        num_epochs = _int_ge0("num_epochs", num_epochs)
        if self._moves():
            return [self._length_at(self._n)] * num_epochs
        out = []
        for e in range(num_epochs):
            pace = self.schedule.pace(self.timeline.at(e, self.step))
            out.append(self._length_at(self._pool_of(pace)[1]))
        return out

    def total_steps(self, num_epochs: int, batch_size: int, *, drop_last: bool = False,
                    gradient_accumulation_steps: int = 1) -> int:
        """Optimizer steps of ``num_epochs`` epochs on this rank (size LR schedules and ``max_steps``).

        Per epoch: ``batches = ceil(len / batch_size)`` (``floor`` with ``drop_last``), then
        ``ceil(batches / gradient_accumulation_steps)`` optimizer steps (an epoch's last partial
        accumulation also steps, as the HF Trainer and accelerate do).

        Raises:
            ValueError: a non-positive batch size or accumulation count.
        """
        for name, v in (("batch_size", batch_size), ("gradient_accumulation_steps", gradient_accumulation_steps)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        total = 0
        for n in self.planned_lengths(num_epochs):
            batches = n // batch_size if drop_last else -(-n // batch_size)
            total += -(-batches // gradient_accumulation_steps)
        return total

    def stage_assignments(self) -> torch.Tensor:
        """``[N]`` int64: the 1-based stage of every sample as this strategy uses it.

        Sample i's stage is the first stage whose pool holds it (layer-wise and hybrid: by the
        active-layer score of that stage, so it can differ from the file's ``stage``, which is the
        primary-score stage; those pools are not nested, so the stage-s pool holds samples of stages
        <= s but not necessarily all of them). A strategy without stages (random) puts every sample in
        stage 1.
        """
        specs = self.schedule.stage_specs()
        if specs is None:
            return torch.ones(self._n, dtype=torch.int64)
        out = np.full(self._n, len(specs), dtype=np.int64)
        for s in range(len(specs) - 1, -1, -1):
            spec, p = specs[s]
            view = self.source.view(spec.key())
            out[view.order[: view.pool(p)[1]]] = s + 1
        return torch.from_numpy(out)

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

    def _check_world(self) -> None:
        w = _world()
        if w is not None and (w[0] != self.num_replicas or w[1] != self.rank):
            how = "read from the process group" if self._world_from_group else "given"
            raise RuntimeError(
                f"{type(self).__name__} was built for num_replicas={self.num_replicas}, rank={self.rank} ({how}) "
                f"but runs in a process group of world size {w[0]} on rank {w[1]}; build the sampler after "
                "torch.distributed.init_process_group (or pass the group's num_replicas and rank), else "
                "ranks draw overlapping data")

    def __iter__(self) -> Iterator[int]:
        # never moves the curriculum: a new iterator continues a partly drawn epoch (resume) and
        # replays a fully drawn one (like DistributedSampler); call set_epoch for the next epoch
        self._check_world()
        if self._epoch_done():
            self._start_epoch(self.epoch)
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

        Dynamic and hybrid samplers move their percentile; under step pacing (or a step budget) the
        schedule advances. The change applies to the next index drawn. Feed every rank the same value
        (rank-averaged) so that every rank makes the same pacing decision.

        Raises:
            ValueError: the loss is NaN or infinite.
        """
        loss = float(loss)
        if not math.isfinite(loss):
            raise ValueError(f"loss must be finite, got {loss}")
        self.step += 1
        if self._moving:
            time = self._time()
            self.schedule.observe(loss, time)
            self._refresh(time)

    # ----------------------------------------------------------------- introspection
    @property
    def num_layers(self) -> int:
        """L, the number of layers of the difficulty table."""
        return self.source.num_layers

    @property
    def num_samples(self) -> int:
        """N, the number of samples of the difficulty table."""
        return self._n

    @property
    def layer_diffs(self) -> Any:
        """The ``[N, L]`` table as given (the tensor, or the dataset's memory-mapped ``layer_diffs``);
        no copy is made, and the sampler itself never reads it whole. Prefer :attr:`num_samples` for N."""
        src = self.source
        return src.obj if src.kind == "tensor" else src.obj.layer_diffs

    @property
    def pacing(self) -> str:
        """``epoch`` or ``step`` (``step`` also under a step budget)."""
        return self.timeline.pacing

    @property
    def trainable_layers(self) -> list[int] | None:
        """Layers that should be trainable now (None: all layers)."""
        t = self._pace.trainable
        return None if t is None else list(t)

    @property
    def active_layers(self) -> list[int] | None:
        """Layers whose score orders the pool now (layer-wise, hybrid; None otherwise)."""
        a = self._pace.active_layers
        return None if a is None else list(a)

    @property
    def current_layer(self) -> int | None:
        """The layer (group's first layer) walked now (layer-specific phase 1; None otherwise)."""
        return self._pace.current_layer

    @property
    def stage(self) -> int | None:
        """The current 1-based stage (None where the strategy has none now)."""
        return self._pace.stage

    @property
    def percentile(self) -> float:
        """Current upper percentile of the pool (1.0: everything)."""
        return self._p_eff

    @property
    def pool_size(self) -> int:
        """Samples in the current pool."""
        return self._pool_size

    @property
    def state(self) -> dict[str, Any]:
        """JSON-serialisable snapshot for logs (pacing only: drawing does not change it)."""
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
            **self.schedule.log_state(),
        }

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume at exactly the next index (JSON-serialisable).

        ``identity`` holds N, L and the sha256 of the table's bytes (see
        :meth:`DifficultySource.identity`): a state only loads on the same table in the same order.
        """
        walk, yielded, pass_kind = self._position()
        return {
            "format": STATE_FORMAT,
            "strategy": self.strategy,
            "identity": self.source.identity(),
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
            "strategy_state": self.schedule.state_dict(),
        }

    _STATE_KEYS = ("strategy", "identity", "seed", "num_replicas", "epoch", "step", "walk", "yielded",
                   "epoch_total", "num_local", "exhausted", "pass_kind", "strategy_state")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (possibly saved by another rank or process).

        Raises:
            ValueError: not a sampler state, a missing key, a value out of range (the message names
                the field), or a state from another strategy, table (other bytes or row order), seed
                or world size.
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not a sampler state (expected format {STATE_FORMAT!r}, got {got!r})")
        missing = [k for k in self._STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"sampler state is incomplete: missing key(s) {', '.join(map(repr, missing))}")
        checks = (("strategy", self.strategy), ("seed", self.seed), ("num_replicas", self.num_replicas))
        for key, mine in checks:
            if state[key] != mine:
                raise ValueError(f"sampler state {key}={state[key]!r} does not match this sampler's {mine!r}")
        mine = self.source.identity()
        if state["identity"] != mine:
            raise ValueError(f"sampler state identity={state['identity']!r} does not match this sampler's "
                             f"{mine!r}: the state was saved on another difficulty table (other values or "
                             "another row order)")
        vals = {k: state[k] for k in ("epoch", "step", "walk", "yielded", "epoch_total", "num_local")}
        for k, v in vals.items():
            _int_ge0(f"sampler state field {k!r}", v)
        if not isinstance(state["exhausted"], bool):
            raise ValueError(f"sampler state field 'exhausted' must be a bool, got {state['exhausted']!r}")
        if vals["yielded"] > vals["num_local"]:
            raise ValueError(f"sampler state field 'yielded'={vals['yielded']} exceeds num_local={vals['num_local']}")
        pk = state["pass_kind"]
        if pk is not None:
            ok = isinstance(pk, list) and len(pk) == 2 and isinstance(pk[0], int) and (pk[1] is None or (
                isinstance(pk[1], str) and pk[1][:2] in ("r|", "s|")))
            if ok and pk[1] is not None:
                try:
                    ScoreSpec.parse(pk[1][2:])
                except ValueError:
                    ok = False
            if not ok:
                raise ValueError(f"sampler state field 'pass_kind' is malformed: {pk!r}")
        self.schedule.load_state_dict(state["strategy_state"])  # validates its own fields first
        self._drop_chunk()
        if vals["epoch"] != self.epoch:
            self._perm_cache.clear()
        self.epoch, self.step = vals["epoch"], vals["step"]
        self._walk, self._yielded = vals["walk"], vals["yielded"]
        self._epoch_total, self._num_local = vals["epoch_total"], vals["num_local"]
        self._exhausted = state["exhausted"]
        self._pass_kind = None if pk is None else (int(pk[0]), pk[1])
        self._chunk_target = _MIN_CHUNK
        if hasattr(self, "_want_kind"):
            del self._want_kind  # recompute the pace without cutting anything
        self._refresh()
