"""Precompute: run the cloud and edge models once over the samples and write a difficulty file.

The pipeline has three passes, and memory and work-dir size grow with the shard, not with N:

1. **Calibration** (rank 0): everything that needs many samples is fixed first, from a seeded
   calibration set: the anchors of the ``relative`` alignment (``meta_token.num_anchors`` samples),
   and for ``ridge`` alignment or the ``mahalanobis`` metric ``calibration_size`` samples
   (default 1024) from which the ridge maps and per-layer covariances are fitted. Both models' pooled
   vectors of these samples (mapped cloud layers only) go to ``calibration.safetensors`` in the work
   dir; every rank loads it. These samples are not run again in their shards.
2. **Shards** (every rank, shards ``i`` with ``i % world == rank``): both models run over
   ``shard_size`` samples; :func:`meta_token_signals` turns one batch of model outputs into named
   per-sample, per-layer arrays ``[n, L]`` using the calibration only, and the shard file holds just
   those arrays, not the ``[L, d]`` vectors: the ``l2``, ``cosine`` and ``coord_softmax_kl`` distances (all three,
   so runs that differ only in the metric share one work dir and one extraction), and under
   ``relative`` alignment the ``[n, L, K]`` anchor-coordinate deltas (float32, 4 K bytes per layer
   and sample) from which the merge computes Mahalanobis distances.
3. **Merge** (rank 0): :func:`merge_signal` streams the named signal of the configured metric out of
   every shard into the ``[N, L]`` raw distances (Mahalanobis under ``relative``: two streaming passes
   over the deltas, see :func:`_merge_relative_mahalanobis`); then ``normalize_layers``, every
   aggregate, percentiles and stages (:func:`torch_curriculum.dataset._finalise`).

**Nothing scores itself.** A sample's distance never depends on whether it was drawn into the
calibration set:

* ``relative``: a sample that is anchor ``a`` is described in the space of the *other* anchors
  (their mean as centre, cosines to them: K-1 coordinates), exactly as it would be had it not been
  drawn; every other sample uses all K anchors.
* ``ridge`` / covariances: samples are dealt into ``folds`` seeded folds (all N samples, so the fold
  of a sample does not depend on the calibration draw); a sample of fold f is scored with the map and
  standardisation fitted on the calibration samples of the *other* folds, and with a covariance of
  out-of-fold residuals of calibration samples outside fold f (nested cross-fitting for ridge).
  Mahalanobis under ``relative`` uses covariances of the deltas of non-anchor calibration samples of
  the other folds; for an anchor, fitted on the same K-1 coordinates it is described by (those
  samples' coordinates keep the K-anchor centre, a shift of order 1/K from the K-1-anchor one: the
  one place where being drawn can move a distance, slightly).

Resume and distribution: every file in the work dir is written atomically (temp file +
``os.replace``); a killed run, restarted with the same inputs, reuses the calibration and the
finished shards, and since every pass is a pure function of its inputs the final file is
byte-identical to an uninterrupted run, and a ``torchrun`` run to a single-process one.

The work dir holds only files precompute wrote; a non-empty folder it did not create is refused,
and the cleanup removes only its own files (and the folder, when it created it).

Shard schema (``shard_{i:06d}.safetensors``, metadata ``format`` = ``torch_curriculum.difficulty_shard``,
``shard_key``, ``shard``, ``start``, ``stop``, ``signals`` = JSON list of the signal names):

=============================  ==========  ===============================================
tensor                         dtype       meaning
=============================  ==========  ===============================================
``signals.<name>``             F64 [n, L]  one named per-sample, per-edge-layer signal:
                                           ``meta_token_distance.{l2,cosine,coord_softmax_kl}``
                                           (and ``.mahalanobis`` outside ``relative``)
``signals.meta_token_delta``   F32         ``relative`` only: ``[n, L, K]`` anchor-coordinate
                                           differences (an anchor's own coordinate is 0)
``sample_ids.utf8`` /          U8 / I64    the shard's ids (utf-8 bytes, n+1 offsets);
``sample_ids.offsets``                     checked against the run's ids at the merge
=============================  ==========  ===============================================

Calibration schema (``calibration.safetensors``): ``index`` I64 [M] (global sample indices,
sorted), ``cloud`` F32 [M, L, d_cloud] (mapped cloud layers), ``edge`` F32 [M, L, d_edge];
metadata ``calibration_key`` and ``layer_map``.

Several files, several signals: ``outputs={name: path}`` writes more difficulty files from the same
shards (a metric, or a cross-model signal). ``meta_token.signal`` picks the primary signal: ``meta``
(the prompt-only meta tokens above), ``response`` (response-conditioned meta tokens from
:class:`torch_curriculum.crossmodel.CrossModelSignals`, through the same calibration, alignment and
metrics; stored as ``response_meta_token_distance.<metric>`` / ``response_meta_token_delta``), or a
cross-model array ``logit_lens_gap``, ``edge_bpb``, ``vocab_kl``, ``uld`` (stored under its name; from
the response vectors' forward pass when the family is ``response``, else one prompt+response pass per
shard) or ``knn_agreement`` (from the response vectors, with the
calibration samples as the reference set; a calibration sample is scored against the others). The
shard key includes the set of signals of the run (only when a cross-model signal is present, so the
keys of prompt-only runs are unchanged); each output file has its own run key.

To add a signal: compute it per batch next to :func:`meta_token_signals` (same rows, ``[n, L]``) and
add it to the shard's dict; :func:`merge_signal` reads any name.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import logging
import math
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._io import atomic_write
from ._version import __version__
from .alignment import ALIGNMENTS, resolve_layer_map, ridge_folds, select_anchors
from .config import CurriculumConfig
from .data import _same_kind
from .dataset import (
    DifficultyFileError,
    MetaTokenDifficultyDataset,
    _check_ids,
    _encode_ids,
    _finalise,
    _json,
    _memmap,
    _scoring_settings,
    read_safetensors_header,
    write_safetensors,
)
from .difficulty import layer_distances, ledoit_wolf_covariance

__all__ = ["DELTA", "MIN_SAMPLES", "SIGNAL", "Calibration", "exit_after_gloo_run", "merge_signal",
           "meta_token_signals", "precompute", "signal_name"]

logger = logging.getLogger(__name__)

_SHARD_SCHEMA = "torch_curriculum.difficulty_shard"
_CALIB_SCHEMA = "torch_curriculum.calibration"
_CALIB_FILE = "calibration.safetensors"
#: the design's signal: per-layer distance between aligned cloud and edge meta tokens, one per metric
#: (``meta_token_distance.l2`` ...; see :func:`signal_name`)
SIGNAL = "meta_token_distance"
#: ``relative`` alignment: the per-layer difference of the K-dim anchor coordinates, ``[n, L, K]`` float32
#: (an anchor's own coordinate is 0), from which the merge computes Mahalanobis distances
DELTA = "meta_token_delta"
_CHEAP_METRICS = ("l2", "cosine", "coord_softmax_kl")


def signal_name(metric: str, family: str = "meta") -> str:
    """The shard signal holding the ``metric`` distances, e.g. ``meta_token_distance.l2``
    (``response_meta_token_distance.l2`` for the response-conditioned family)."""
    return f"{SIGNAL}.{metric}" if family == "meta" else f"{family}_{SIGNAL}.{metric}"


def _delta_name(family: str) -> str:
    return DELTA if family == "meta" else f"{family}_{DELTA}"


#: cross-model signals stored per shard as one ``[n, L]`` array each (``knn_agreement`` is computed
#: from the response vectors and the calibration samples as the reference set)
_XM_SCALARS = ("logit_lens_gap", "edge_bpb", "vocab_kl", "uld")
#: fewest samples precompute accepts. With ``relative`` alignment an anchor is described by the other
#: anchors (K-1 of them); with fewer than 3 the centred space collapses to a line (2 samples gave
#: distances ~1e-16 and one stage for everything), and percentiles / 3 stages over < 4 samples mean
#: nothing. Below 30 samples a warning says the stages are coarse.
MIN_SAMPLES = 4
_FEW_SAMPLES = 30
#: models up to this many bytes of weights are hashed in full; larger ones by a sampled digest
_FULL_HASH_BYTES = 4 * 1024**3
_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# ------------------------------------------------------------------------------------------ inputs
def _sample_ids_and_fingerprint(samples: Sequence[Any], sample_ids: Sequence[str] | None) -> tuple[list[str], str]:
    """Ids (from ``.sample_id``, ``sample_ids=`` or the index) and a fingerprint of the inputs."""
    n = len(samples)
    if sample_ids is None:
        ids = [getattr(s, "sample_id", None) for s in samples]
        if any(i is None for i in ids):
            ids = [f"sample_{i:08d}" for i in range(n)]
    else:
        ids = list(sample_ids)
    ids = _check_ids(ids, n)
    if all(hasattr(s, "persona") and hasattr(s, "context") and hasattr(s, "response") for s in samples):
        from .data import data_fingerprint  # the dialogue-sample fingerprint users also compute
        return ids, data_fingerprint(samples)
    from .extraction import prompt_parts

    h = hashlib.sha256(b"torch_curriculum.prompts.v1\n")
    for sid, s in zip(ids, samples):
        text, system = prompt_parts(s)
        h.update(_json([sid, text, system]).encode("ascii") + b"\n")
    return ids, h.hexdigest()


def _weights_digest(model: Any) -> str:
    """sha256 of every weight (names, shapes, dtypes and all bytes) when the model holds at most
    4 GiB of weights (a few seconds); above that a sampled digest (names, shapes, dtypes and 512
    values per tensor), marked ``sampled-sha256:`` because a change elsewhere in a tensor is not seen."""
    state = sorted(model.state_dict().items())
    # unchanged tensors (same storage, same in-place version counter) keep their digest: a second
    # precompute with the same model objects does not hash gigabytes again
    key = tuple((n, p.data_ptr(), p._version, tuple(p.shape), str(p.dtype)) for n, p in state)
    with contextlib.suppress(TypeError):
        cached = _DIGESTS.get(model)
        if cached is not None and cached[0] == key:
            return cached[1]
    total = sum(p.numel() * p.element_size() for _, p in state)
    full = total <= _FULL_HASH_BYTES
    h = hashlib.sha256()
    for name, p in state:
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}\n".encode())
        flat = p.detach().reshape(-1)
        if not full:
            flat = torch.cat([flat[:256], flat[:: max(1, flat.numel() // 256)][:256]])
        flat = flat.cpu().contiguous()
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    digest = ("sha256:" if full else "sampled-sha256:") + h.hexdigest()
    with contextlib.suppress(TypeError):  # a model that cannot be weakly referenced is simply not cached
        _DIGESTS[model] = (key, digest)
    return digest


def _model_info(model: Any, tokenizer: Any) -> dict[str, Any]:
    """Name, revision, architecture and a weights digest (see :func:`_weights_digest`)."""
    cfg = getattr(model, "config", None)
    name = str(getattr(cfg, "_name_or_path", "") or "")
    source = None
    record = Path(name) / "torch_curriculum_source.json" if name else None
    if record is not None and record.is_file():
        # a model converted from a GGUF by torch_curriculum.bundled: the GGUF's sha256 is the revision
        with contextlib.suppress(OSError, json.JSONDecodeError):
            source = json.loads(record.read_text(encoding="utf-8"))
    return {
        "name_or_path": name,
        "source": source,
        "revision": getattr(cfg, "_commit_hash", None),
        "model_type": getattr(cfg, "model_type", type(model).__name__),
        "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "dtype": str(next(model.parameters()).dtype),
        "weights_digest": _weights_digest(model),
        "tokenizer": str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
        "tokenizer_vocab_size": len(tokenizer) if hasattr(tokenizer, "__len__") else None,
    }


def _as_extractor(side: str, obj: Any, mt: Any, dtype: torch.dtype | None = None):
    from .extraction import MetaTokenExtractor

    if isinstance(obj, MetaTokenExtractor):
        if isinstance(obj.pooling, str) and obj.pooling != mt.pooling:
            raise ValueError(f"the {side} extractor pools with {obj.pooling!r} but config meta_token.pooling "
                             f"is {mt.pooling!r}; make them agree")
        return obj
    if isinstance(obj, tuple) and len(obj) == 2:
        if mt.pooling == "meta":
            raise ValueError(f"pooling='meta' needs meta-token embeddings: pass a MetaTokenExtractor(..., "
                             f"pooling='meta', meta_embeddings=...) as {side}")
        return MetaTokenExtractor(obj[0], obj[1], mt.pooling, batch_size=mt.batch_size, max_length=mt.max_length,
                                  dtype=dtype)
    raise TypeError(f"{side} must be a (model, tokenizer) pair or a MetaTokenExtractor, got {type(obj).__name__}")


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def exit_after_gloo_run(code: int = 0) -> None:
    """End a finished multi-process run now, skipping the interpreter's teardown.

    torch 2.13's gloo can abort at interpreter exit after a model ran (SIGABRT, "terminate called
    without an active exception"; pytorch/pytorch#190489), which ``torchrun`` would report as a failed
    rank although every file is written and closed. Call this only after success, on every rank: it
    flushes logging and the standard streams, then ``os._exit(code)`` skips the C++ static destructors.

    Args:
        code (int): the exit status. Defaults to 0.

    Example:
        >>> if world > 1:  # doctest: +SKIP
        ...     exit_after_gloo_run()
    """
    import os
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _sync_errors(err: BaseException | None, where: str) -> None:
    """Collective: every rank learns whether any rank failed (so none waits forever at a barrier)."""
    _rank, world = _dist()
    if world == 1:
        if err is not None:
            raise err
        return
    msgs: list[Any] = [None] * world
    torch.distributed.all_gather_object(msgs, None if err is None else f"{type(err).__name__}: {err}")
    if err is not None:
        raise err
    failed = [(r, m) for r, m in enumerate(msgs) if m is not None]
    if failed:
        raise RuntimeError(f"{where} failed on rank(s) {[r for r, _ in failed]}: {failed[0][1]}")



# ------------------------------------------------------------------------------------------ calibration
def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)


def _relative(x: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """``[n, d]`` vectors -> ``[n, K]`` cosines to the K anchors ``[K, d]``, all centred by the anchors' mean."""
    mu = anchors.mean(0)
    return _unit(x - mu) @ _unit(anchors - mu).T


def _precision(delta: torch.Tensor, what: str) -> torch.Tensor:
    if delta.shape[0] < 2:
        raise ValueError(f"mahalanobis: {what} has {delta.shape[0]} calibration sample(s); at least 2 are needed "
                         "to estimate a covariance (more samples or a larger calibration_size)")
    return torch.linalg.pinv(ledoit_wolf_covariance(delta), hermitian=True)


def _ridge_fit(ze: torch.Tensor, zc: torch.Tensor, alpha: float) -> torch.Tensor:
    n_tr, de = ze.shape
    if alpha == 0:
        return torch.linalg.pinv(ze) @ zc
    if n_tr < de:  # dual form: invert an [n, n] instead of a [de, de] matrix
        return ze.T @ torch.linalg.solve(ze @ ze.T + alpha * torch.eye(n_tr, dtype=ze.dtype), zc)
    return torch.linalg.solve(ze.T @ ze + alpha * torch.eye(de, dtype=ze.dtype), ze.T @ zc)


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu, sd = x.mean(0), x.std(0, unbiased=False)
    return mu, torch.where(sd > 1e-12, sd, torch.ones_like(sd))


class Calibration:
    """What the shards need from many samples, fixed before any shard runs.

    Args:
        index (torch.Tensor): ``[M]`` sorted global indices of the calibration samples.
        cloud (torch.Tensor): ``[M, L, d_cloud]`` their cloud vectors (mapped cloud layers).
        edge (torch.Tensor): ``[M, L, d_edge]`` their edge vectors.
        alignment (str): ``relative``, ``ridge`` or ``identity``.
        metric (str): distance metric of :func:`torch_curriculum.difficulty.layer_distances`.
        anchors (torch.Tensor | None): ``[K]`` global anchor indices (``relative``), a subset of index.
        folds (torch.Tensor | None): ``[N]`` fold of every sample (``ridge`` or ``mahalanobis``).
        fit (torch.Tensor | None): global indices of the samples the maps and covariances are fitted on
            (a subset of ``index``).
        alpha (float): ridge penalty. Defaults to 1.0.
        kl_temperature (float): KL softmax temperature. Defaults to 1.0.
        metrics (Sequence[str] | None): metrics the shards hold; None = l2, cosine and coord_softmax_kl, plus
            mahalanobis when it is the metric and the alignment is not ``relative``.

    Per-layer maps and covariances are computed on first use and kept (memory: for ``ridge``
    ``folds * L * d_edge * d_cloud`` floats; for ``mahalanobis`` ``folds * L * D^2`` with D = K or
    d_cloud; independent of N).
    """

    def __init__(self, index: torch.Tensor, cloud: torch.Tensor, edge: torch.Tensor, *, alignment: str, metric: str,
                 anchors: torch.Tensor | None = None, folds: torch.Tensor | None = None,
                 fit: torch.Tensor | None = None, alpha: float = 1.0, kl_temperature: float = 1.0,
                 metrics: Sequence[str] | None = None):
        if alignment not in ALIGNMENTS:
            raise ValueError(f"unknown alignment {alignment!r}; expected one of {', '.join(ALIGNMENTS)}")
        self.index = index.long()
        self.cloud, self.edge = cloud, edge
        self.alignment, self.metric = alignment, metric
        self.alpha, self.kl_temperature = float(alpha), float(kl_temperature)
        #: metrics computed in the shards: the cheap ones always (one extraction serves every metric),
        #: Mahalanobis here only outside ``relative`` (there the merge computes it from the deltas)
        self.metrics = list(metrics) if metrics is not None else list(_CHEAP_METRICS) + (
            ["mahalanobis"] if metric == "mahalanobis" and alignment != "relative" else [])
        self.num_layers = int(edge.shape[1])
        self._row = {int(g): r for r, g in enumerate(self.index.tolist())}
        self.anchors = anchors.long() if anchors is not None else None
        self.folds = folds
        self.fit = fit.long() if fit is not None else torch.empty(0, dtype=torch.long)
        self.num_folds = int(folds.max()) + 1 if folds is not None else 0
        self._anchor_pos = {} if self.anchors is None else {int(a): p for p, a in enumerate(self.anchors.tolist())}
        self._cache: dict[Any, Any] = {}
        if alignment == "identity" and cloud.shape[2] != edge.shape[2]:
            raise ValueError(f"alignment='identity' needs equal widths, but the cloud is {cloud.shape[2]} wide "
                             f"and the edge {edge.shape[2]}; use alignment='relative' or 'ridge'")

    def _rows(self, g: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self._row[int(i)] for i in g.tolist()], dtype=torch.long)

    def _vec(self, side: str, j: int, g: torch.Tensor) -> torch.Tensor:
        x = self.cloud if side == "cloud" else self.edge
        return x[self._rows(g), j].to(torch.float64)

    def _fit_rows(self, exclude_folds: Sequence[int], exclude: Sequence[int] = ()) -> torch.Tensor:
        g = self.fit
        if self.folds is not None and exclude_folds:
            keep = torch.ones(len(g), dtype=torch.bool)
            for f in exclude_folds:
                keep &= self.folds[g] != f
            g = g[keep]
        if len(exclude):
            g = g[~torch.isin(g, torch.as_tensor(list(exclude), dtype=torch.long))]
        return g

    # -- relative
    def _anchor_set(self, drop: int | None) -> torch.Tensor:
        a = self.anchors
        return a if drop is None else a[a != drop]

    def _relative_pair(self, c: torch.Tensor, e: torch.Tensor, j: int, drop: int | None):
        a = self._anchor_set(drop)
        return _relative(c, self._vec("cloud", j, a)), _relative(e, self._vec("edge", j, a))

    # -- ridge
    def _ridge(self, j: int, f: int, inner: int | None = None):
        """Standardisation and map of layer j fitted on calibration samples outside fold f (and outside
        fold ``inner`` for the nested fit whose residuals estimate fold f's covariance)."""
        key = ("ridge", j, f, inner)
        if key not in self._cache:
            g_std = self._fit_rows([f])
            if len(g_std) < 2:
                raise ValueError(f"ridge alignment: only {len(g_std)} calibration sample(s) outside fold {f}; "
                                 "use more samples or a larger calibration_size")
            c, e = self._vec("cloud", j, g_std), self._vec("edge", j, g_std)
            mu_e, sd_e = _stats(e)
            mu_c, sd_c = _stats(c)
            g = g_std if inner is None else self._fit_rows([f, inner])
            if len(g) < 1:
                raise ValueError(f"ridge alignment with mahalanobis: no calibration sample outside folds {f} and "
                                 f"{inner}; use more samples or a larger calibration_size")
            w = _ridge_fit((self._vec("edge", j, g) - mu_e) / sd_e, (self._vec("cloud", j, g) - mu_c) / sd_c,
                           self.alpha)
            self._cache[key] = (mu_e, sd_e, mu_c, sd_c, w)
        return self._cache[key]

    def _ridge_pair(self, c: torch.Tensor, e: torch.Tensor, j: int, f: int, inner: int | None = None):
        mu_e, sd_e, mu_c, sd_c, w = self._ridge(j, f, inner)
        return (c - mu_c) / sd_c, ((e - mu_e) / sd_e) @ w

    # -- covariances
    def _prec(self, j: int, f: int, drop: int | None) -> torch.Tensor:
        key = ("prec", j, f, drop)
        if key in self._cache:
            return self._cache[key]
        if self.alignment == "relative":
            g = self._fit_rows([f], exclude=self.anchors.tolist())
            ca, ea = self._relative_pair(self._vec("cloud", j, g), self._vec("edge", j, g), j, drop)
            delta = ca - ea
        elif self.alignment == "ridge":
            parts = []
            for inner in range(self.num_folds):
                if inner == f:
                    continue
                g = self._fit_rows([], exclude=[])
                g = g[self.folds[g] == inner]
                if len(g):
                    ca, ea = self._ridge_pair(self._vec("cloud", j, g), self._vec("edge", j, g), j, f, inner)
                    parts.append(ca - ea)
            delta = torch.cat(parts) if parts else torch.empty(0, self.cloud.shape[2], dtype=torch.float64)
        else:
            g = self._fit_rows([f])
            delta = self._vec("cloud", j, g) - self._vec("edge", j, g)
        prec = _precision(delta, f"layer {j}, fold {f}")
        if drop is None:  # one per anchor would be K times the memory; those are used once each
            self._cache[key] = prec
        return prec

    def centres(self) -> dict[str, torch.Tensor]:
        """``relative`` only: the anchors' mean per layer, ``{"cloud": [L, dc], "edge": [L, de]}`` (float64)."""
        a = self._rows(self.anchors)
        return {"cloud": self.cloud[a].to(torch.float64).mean(0), "edge": self.edge[a].to(torch.float64).mean(0)}


def meta_token_signals(cloud: torch.Tensor, edge: torch.Tensor, index: torch.Tensor,
                       calibration: Calibration) -> dict[str, torch.Tensor]:
    """Named per-sample, per-layer signals of one batch of model outputs.

    Args:
        cloud (torch.Tensor): ``[n, L, d_cloud]`` pooled cloud vectors at the mapped cloud layers.
        edge (torch.Tensor): ``[n, L, d_edge]`` pooled edge vectors.
        index (torch.Tensor): ``[n]`` global sample indices of the rows (they decide the leave-one-out
            anchor set and the fold).
        calibration (Calibration): anchors, maps and covariances from the calibration pass.

    Returns:
        dict[str, torch.Tensor]: ``{signal_name(metric): [n, L] float64}`` for each metric of the
        calibration, and for ``relative`` alignment ``{DELTA: [n, L, K] float32}``.

    Raises:
        ValueError: shapes that do not match, or NaN/Inf vectors (the row is named).

    Example:
        >>> signals = meta_token_signals(c, e, torch.arange(lo, hi), calib)  # doctest: +SKIP
        >>> signals["meta_token_distance.l2"].shape                         # doctest: +SKIP
    """
    if cloud.dim() != 3 or edge.dim() != 3 or cloud.shape[:2] != edge.shape[:2] or len(index) != cloud.shape[0]:
        raise ValueError(f"cloud {tuple(cloud.shape)}, edge {tuple(edge.shape)} and index [{len(index)}] must be "
                         "[n, L, d_cloud], [n, L, d_edge] and [n]")
    n, n_layers = cloud.shape[:2]
    if n_layers != calibration.num_layers:
        raise ValueError(f"the batch has {n_layers} layers, the calibration {calibration.num_layers}")
    cal = calibration
    out = {m: torch.empty(n, n_layers, dtype=torch.float64) for m in cal.metrics}
    rel = cal.alignment == "relative"
    delta = torch.zeros(n, n_layers, len(cal.anchors), dtype=torch.float32) if rel else None
    idx = index.long().tolist()
    drop = [g if g in cal._anchor_pos else None for g in idx]
    fold = [int(cal.folds[g]) if cal.folds is not None else 0 for g in idx]
    groups: dict[tuple[int | None, int], list[int]] = {}
    for r in range(n):
        groups.setdefault((drop[r], fold[r]), []).append(r)
    for j in range(n_layers):
        c = cloud[:, j].to(torch.float64)
        e = edge[:, j].to(torch.float64)
        for (a, f), rows in sorted(groups.items(), key=lambda kv: kv[1][0]):
            r = torch.tensor(rows)
            if rel:
                ca, ea = cal._relative_pair(c[r], e[r], j, a)
                keep = torch.arange(len(cal.anchors)) if a is None else \
                    torch.tensor([p for p in range(len(cal.anchors)) if p != cal._anchor_pos[a]])
                delta[r.unsqueeze(1), j, keep.unsqueeze(0)] = (ca - ea).float()
            elif cal.alignment == "ridge":
                ca, ea = cal._ridge_pair(c[r], e[r], j, f)
            else:
                ca, ea = c[r], e[r]
            for m in cal.metrics:
                prec = cal._prec(j, f, a)[None] if m == "mahalanobis" else None
                out[m][r, j] = layer_distances(ca[:, None], ea[:, None], m, precision=prec,
                                               temperature=cal.kl_temperature)[:, 0]
    signals: dict[str, torch.Tensor] = {signal_name(m): v for m, v in out.items()}
    if rel:
        signals[DELTA] = delta
    return signals


def merge_signal(work: str | Path, num_shards: int, name: str, ids: Sequence[str]) -> torch.Tensor:
    """Stream one named signal out of every shard of a work dir into one ``[N, L]`` float64 tensor.

    Shards are read one at a time (memory-mapped); each shard's ids must be the run's ids at its rows.

    Raises:
        DifficultyFileError: a missing or unreadable shard, a shard without the signal, ids that do not
            match, or shards that do not tile the N samples.
    """
    work = Path(work)
    out: torch.Tensor | None = None
    pos = 0
    for i in range(num_shards):
        p = work / f"shard_{i:06d}.safetensors"
        header, start = read_safetensors_header(p)
        key = f"signals.{name}"
        if key not in header:
            raise DifficultyFileError(f"{p}: no signal {name!r} (holds {sorted(k for k in header if k != '__metadata__')})")
        arr = _memmap(p, header, start, key)
        blob = _memmap(p, header, start, "sample_ids.utf8").tobytes()
        off = _memmap(p, header, start, "sample_ids.offsets").tolist()
        got = [blob[a:b].decode("utf-8") for a, b in itertools.pairwise(off)]
        if got != list(ids[pos:pos + len(got)]) or len(got) != arr.shape[0]:
            raise DifficultyFileError(f"{p}: its sample ids do not match rows {pos}..{pos + len(got)} of this run")
        if out is None:
            out = torch.empty(len(ids), arr.shape[1], dtype=torch.float64)
        out[pos:pos + arr.shape[0]] = torch.from_numpy(np.asarray(arr))
        pos += arr.shape[0]
        del arr
    if out is None or pos != len(ids):
        raise DifficultyFileError(f"work dir {work}: shards hold {pos} samples, expected {len(ids)}")
    return out


def _plan(n: int, cfg: CurriculumConfig, calibration_size: int, anchors: Sequence[int] | None,
          metrics: Sequence[str] | None = None) -> dict[str, Any]:
    """Which samples the calibration pass runs on (seeded; a pure function of N and the settings).
    ``metrics``: every metric of the run (the primary's and the extra outputs'); default the config's."""
    mt = cfg.meta_token
    maha = "mahalanobis" in (metrics if metrics is not None else [mt.distance_metric])
    seed = cfg.training.seed
    plan: dict[str, Any] = {"anchors": None, "fit": None, "folds": None, "num_folds": 0}
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63 - 1:
        raise ValueError(f"training.seed must be an integer in [0, 2**63 - 1) (it seeds the anchor and fold "
                         f"draws), got {seed!r}")
    if n < MIN_SAMPLES:
        raise ValueError(f"precompute needs at least {MIN_SAMPLES} samples, got N={n}: with fewer, the anchor "
                         "space (each anchor described by the others) collapses and percentiles/stages are "
                         "meaningless (2 samples gave distances ~1e-16 and one stage for all)")
    if n < _FEW_SAMPLES:
        warnings.warn(f"precompute over N={n} < {_FEW_SAMPLES} samples: percentiles and stages are coarse and the "
                      "alignment rests on few samples", UserWarning, stacklevel=3)
    if anchors is not None and mt.alignment != "relative":
        raise ValueError(f"anchors= only applies to alignment='relative', not {mt.alignment!r}")
    if mt.alignment == "relative":
        if anchors is not None:
            a = torch.as_tensor(list(anchors), dtype=torch.long).unique()
            if len(a) != len(list(anchors)) or a.min() < 0 or a.max() >= n:
                raise ValueError(f"anchor indices must be distinct and in [0, {n}), got {list(anchors)[:10]}")
        else:
            k = min(mt.num_anchors, n)
            if k < mt.num_anchors:
                logger.warning("num_anchors=%d > N=%d samples: using K=%d anchors (recorded in the file)",
                               mt.num_anchors, n, k)
            a = select_anchors(n, k, seed=seed)
        if len(a) < MIN_SAMPLES:
            raise ValueError(f"alignment='relative' needs at least {MIN_SAMPLES} anchors (meta_token.num_anchors), "
                             f"got {len(a)}: an anchor is described by the other anchors, and fewer than 3 span "
                             "no useful space")
        plan["anchors"] = a
    if calibration_size < 2:
        raise ValueError(f"calibration_size must be >= 2, got {calibration_size}")
    if mt.alignment == "relative":
        # Mahalanobis under relative alignment: fitted at the merge on the stored deltas of up to
        # calibration_size non-anchor samples (no extra forward passes), cross-fitted over folds
        g = torch.Generator().manual_seed(int(seed) + 1)
        fit = torch.randperm(n, generator=g)[:min(n, int(calibration_size))].sort().values
        plan["delta_fit"] = fit[~torch.isin(fit, plan["anchors"])]
        plan["delta_num_folds"] = min(5, n)
        plan["delta_folds"] = ridge_folds(n, plan["delta_num_folds"], seed)
        if maha:  # fail before any model runs, naming the numbers (the merge would fail after all passes)
            fit_folds = plan["delta_folds"][plan["delta_fit"]]
            for f in range(plan["delta_num_folds"]):
                have = int((fit_folds != f).sum())
                if have < 2:
                    raise ValueError(
                        f"mahalanobis with alignment='relative': the covariance of fold {f} is fitted on the "
                        f"non-anchor calibration samples of the other folds, and there are {have} (N={n} samples, "
                        f"K={len(plan['anchors'])} anchors (meta_token.num_anchors={mt.num_anchors}), "
                        f"calibration_size={calibration_size}); at least 2 are needed: use more samples than "
                        "num_anchors (a few times more), fewer anchors, or a larger calibration_size")
    if mt.alignment == "ridge" or (maha and mt.alignment != "relative"):
        if calibration_size < 2:
            raise ValueError(f"calibration_size must be >= 2, got {calibration_size}")
        m = min(n, int(calibration_size))
        g = torch.Generator().manual_seed(int(seed) + 1)
        plan["fit"] = torch.randperm(n, generator=g)[:m].sort().values
        k = min(5, n)
        need = 3 if (mt.alignment == "ridge" and maha) else 2
        if k < need:
            raise ValueError(f"cross-fitting needs at least {need} folds, got N={n}")
        plan["folds"] = ridge_folds(n, k, seed)
        plan["num_folds"] = k
    parts = [t for t in (plan["anchors"], plan["fit"]) if t is not None]
    plan["index"] = torch.cat(parts).unique() if parts else torch.empty(0, dtype=torch.long)
    return plan


def precompute(
    samples: Sequence[Any],
    cloud: Any,
    edge: Any,
    path: str | Path,
    config: CurriculumConfig | None = None,
    *,
    labels_path: str | Path | None = None,
    shard_size: int = 256,
    work_dir: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    keep_work_dir: bool = False,
    sample_ids: Sequence[str] | None = None,
    use_chat_template: bool = False,
    model_info: Mapping[str, Mapping[str, Any]] | None = None,
    calibration_size: int = 1024,
    dtype: torch.dtype | None = None,
    anchors: Sequence[int] | None = None,
    outputs: Mapping[str, str | Path] | None = None,
    _after_shard: Callable[[int], None] | None = None,
) -> MetaTokenDifficultyDataset:
    """Run both models once over ``samples`` and write the difficulty file (and labels).

    See the module docstring for the three passes, the leave-one-out rule and the file layouts.

    Args:
        samples (Sequence): ``DialogueSample``s (formatted per model with
            :func:`torch_curriculum.data.format_prompts`: same system prompt, ``max_context_turns``,
            ``max_length`` from ``config.meta_token``; truncation is logged there), or ready prompts
            (``Prompt`` objects, ``(text, system_text)`` pairs or strings). At least 4.
        cloud: the cloud model as ``(model, tokenizer)`` or a ``MetaTokenExtractor``.
        edge: the edge model, likewise. L (compared layers) = the edge extractor's layers.
        path (str | Path): output ``.safetensors`` file.
        config (CurriculumConfig | None): settings (``meta_token``: pooling, alignment,
            num_anchors, ridge_alpha, metric, normalisation, K, tau, layer map ...;
            ``curriculum.stage_percentiles``; ``training.seed`` seeds anchors/folds). None = defaults.
        labels_path (str | Path | None): also write the seed-schema labels (``.jsonl``/``.json``).
        shard_size (int): samples per shard (the unit of resume, distribution and memory). Defaults to 256.
        work_dir (str | Path | None): shard folder; None = ``<path>.work``. Must be shared by all ranks,
            and new, empty, or the work dir of this same run (anything else is refused).
        progress (bool): tqdm bar with samples/s (rank 0). Defaults to True.
        overwrite (bool): replace an existing output of another run. Defaults to False (an
            existing output of the *same* run is simply opened).
        keep_work_dir (bool): keep the shards after the merge. Defaults to False.
        sample_ids (Sequence[str] | None): ids when the samples carry none (default: ``sample_{i:08d}``).
        use_chat_template (bool): format DialogueSamples with each tokenizer's chat template.
        model_info (Mapping | None): extra provenance per side, ``{"cloud": {...}, "edge": {...}}``
            (e.g. the GGUF file's sha256).
        calibration_size (int): samples the ridge maps / Mahalanobis covariances are fitted on
            (seeded draw; capped at N). Defaults to 1024.
        dtype (torch.dtype | None): compute dtype of the forward passes for ``(model, tokenizer)``
            pairs (``torch.bfloat16`` autocasts, also on CPU); None = CUDA bf16, CPU the model's own.
        anchors (Sequence[int] | None): explicit anchor indices for ``relative`` (default: a seeded draw
            of ``num_anchors``).
        outputs (Mapping[str, str | Path] | None): extra difficulty files from the *same* model passes,
            ``{metric: path}`` with a metric of :data:`torch_curriculum.difficulty.METRICS` (``l2``,
            ``cosine``, ``coord_softmax_kl``, ``mahalanobis``) under the configured pooling and
            alignment. Each is a complete difficulty file (as if ``distance_metric`` were that metric;
            its provenance names the metric), resumed and skipped like ``path``. Defaults to None.

    Returns:
        MetaTokenDifficultyDataset: the opened file (on every rank).

    Raises:
        ValueError: fewer than 4 samples or anchors, bad inputs, pooling/config conflicts, K > L,
            layer map errors, NaN/Inf meta tokens or distances (the sample ids are named).
        DifficultyFileError: the work dir holds another run's files or files precompute did not write.
        FileExistsError: the output exists, belongs to another run, and ``overwrite`` is False.

    Example:
        >>> ds = precompute(samples, (cloud, tok_c), (edge, tok_e), "difficulty.safetensors")  # doctest: +SKIP
        >>> ds = precompute(samples, cloud, edge, "l2.safetensors",                             # doctest: +SKIP
        ...                 outputs={"mahalanobis": "maha.safetensors"})  # one pass, two files
    """
    cfg = config or CurriculumConfig()
    mt = cfg.meta_token
    samples = list(samples)
    if not samples:
        raise ValueError("no samples to precompute")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    cloud_ex = _as_extractor("cloud", cloud, mt, dtype)
    edge_ex = _as_extractor("edge", edge, mt, dtype)
    ids, fingerprint = _sample_ids_and_fingerprint(samples, sample_ids)
    n = len(samples)
    n_edge, n_cloud = edge_ex.num_layers, cloud_ex.num_layers
    if mt.pooling == "meta" and n_edge != n_cloud:
        raise ValueError(f"pooling='meta': the cloud has {n_cloud} meta tokens and the edge {n_edge}; "
                         "both must hold one meta token per compared layer")
    if n_edge is not None and n_cloud is not None:
        resolve_layer_map(mt.layer_map, n_edge, n_cloud)  # fail before any model runs
        if mt.top_k > n_edge:
            raise ValueError(f"meta_token.top_k={mt.top_k} exceeds the {n_edge} compared (edge) layers")
    if mt.alignment == "identity" and not callable(cloud_ex.pooling) and cloud_ex.hidden_size != edge_ex.hidden_size:
        raise ValueError(f"alignment='identity' needs equal widths, but the cloud is {cloud_ex.hidden_size} wide "
                         f"and the edge {edge_ex.hidden_size}; use alignment='relative' or 'ridge'")
    if use_chat_template and dialogue_input(samples):
        for side, ex in (("cloud", cloud_ex), ("edge", edge_ex)):
            if not getattr(ex.tokenizer, "chat_template", None):
                raise ValueError(f"use_chat_template=True but the {side} tokenizer has no chat template; "
                                 "pass use_chat_template=False or a tokenizer with one")
    path = Path(path)
    targets = _targets(path, cfg, outputs)  # [(path, config of that file)], the primary first
    kinds = [_kind(c.meta_token.signal) for _, c in targets]
    family = "meta" if mt.signal == "meta" else "response"
    run_metrics = sorted({c.meta_token.distance_metric for (_, c), k in zip(targets, kinds) if k == "vec"})
    xm_names = sorted({c.meta_token.signal for (_, c), k in zip(targets, kinds) if k != "vec"})
    needs_vectors = any(k in ("vec", "knn") for k in kinds)
    xm = None
    if family != "meta" or xm_names:
        if not dialogue_input(samples):
            raise ValueError(f"meta_token.signal={mt.signal!r} (or a cross-model output) reads the response: pass "
                             "DialogueSamples (persona, context, response), not prompts")
        if use_chat_template:
            raise ValueError(f"meta_token.signal={mt.signal!r}: cross-model signals use the plain prompt layout; "
                             "pass use_chat_template=False")
        from .crossmodel import CrossModelSignals

        xm = CrossModelSignals(cloud_ex.model, cloud_ex.tokenizer, edge_ex.model, edge_ex.tokenizer,
                               layer_map=mt.layer_map, pooling="mean" if mt.pooling == "meta" else mt.pooling,
                               max_length=mt.max_length, truncation="left", batch_size=mt.batch_size,
                               knn_k=mt.knn_k)
    plan = _plan(n, cfg, calibration_size, anchors, run_metrics)
    if not needs_vectors:
        plan["index"] = torch.empty(0, dtype=torch.long)
    elif "knn_agreement" in xm_names and len(plan["index"]) - 1 < mt.knn_k:
        raise ValueError(f"meta_token.knn_k={mt.knn_k}: the k-NN reference set is the {len(plan['index'])} calibration "
                         "samples (anchors / fit set) and a reference sample is scored against the others; use a "
                         "smaller knn_k or more anchors")
    work = Path(work_dir) if work_dir is not None else path.with_name(path.name + ".work")
    dialogue = dialogue_input(samples)
    info = {"cloud": {**_model_info(cloud_ex.model, cloud_ex.tokenizer), **cloud_ex.describe()},
            "edge": {**_model_info(edge_ex.model, edge_ex.tokenizer), **edge_ex.describe()}}
    for side in ("cloud", "edge"):
        info[side].update((model_info or {}).get(side, {}))
    inputs = {"kind": "dialogue_samples" if dialogue else "prompts", "system_prompt": mt.system_prompt,
              "max_context_turns": mt.max_context_turns, "use_chat_template": bool(use_chat_template),
              "num_samples": n, "fingerprint": fingerprint}
    # what the shards depend on: not the metric (l2, cosine and kl are all stored, and Mahalanobis under
    # relative alignment is computed at the merge), so runs that differ only in metric share the shards
    shard_metrics = (list(_CHEAP_METRICS) + (["mahalanobis"] if "mahalanobis" in run_metrics
                                             and mt.alignment != "relative" else [])) if run_metrics else []
    signal = {"metrics": shard_metrics, "kl_temperature": mt.kl_temperature, "alignment": mt.alignment,
              "layer_map": mt.layer_map, "ridge_alpha": mt.ridge_alpha, "seed": cfg.training.seed,
              "anchors": None if plan["anchors"] is None else plan["anchors"].tolist(),
              "fit_size": None if plan["fit"] is None else len(plan["fit"]), "folds": plan["num_folds"]}
    crossmodel_info = None
    if xm is not None:  # only then, so that the keys of prompt-only runs stay what they were
        crossmodel_info = {**xm.describe(), "vector_family": family, "signals": xm_names,
                           "prompt_layout": "format_prompts, plain (no chat template)"}
        signal.update(family=family, crossmodel=crossmodel_info, knn_k=mt.knn_k)
    calib_key = hashlib.sha256(_json({"models": info, "inputs": inputs, "signal": signal,
                                      "library_version": __version__}).encode()).hexdigest()
    shard_key = hashlib.sha256(_json({"calibration_key": calib_key, "shard_size": shard_size}).encode()).hexdigest()
    # one run key per output file: the shards (which hold the run's signals) and that file's scoring
    run_keys = [hashlib.sha256(_json({"shard_key": shard_key, "scoring": _scoring_settings(c),
                                      "calibration_size": int(calibration_size)}).encode()).hexdigest()
                for _, c in targets]
    rank, world = _dist()

    done = [False] * len(targets)
    for t, ((p, _c), key) in enumerate(zip(targets, run_keys)):
        if p.exists() and not overwrite:
            try:
                existing = MetaTokenDifficultyDataset(p)
            except DifficultyFileError:
                existing = None
            if existing is None or existing.metadata.get("run_key") != key:
                raise FileExistsError(f"{p} exists and holds the results of another run; pass overwrite=True "
                                      "or choose another path")
            done[t] = True
    if all(done):
        existing = MetaTokenDifficultyDataset(path)
        logger.info("%s already holds this run's results; opening it", path)
        err = None
        if rank == 0 and labels_path is not None and not Path(labels_path).exists():
            try:  # a run killed between the two writes
                existing.write_labels(labels_path)
            except BaseException as e:
                err = e
        _sync_errors(err, "writing labels")
        return existing
    if labels_path is not None and Path(labels_path).exists() and not overwrite:
        raise FileExistsError(f"label file {labels_path} exists; pass overwrite=True or choose another path")

    n_shards = math.ceil(n / shard_size)
    err: BaseException | None = None
    try:
        if rank == 0:
            _prepare_work_dir(work, {"shard_key": shard_key, "calibration_key": calib_key, "num_shards": n_shards,
                                     "models": info, "inputs": inputs, "signal": signal, "shard_size": shard_size})
    except BaseException as e:  # re-raised by _sync_errors on every rank
        err = e
    _sync_errors(err, "preparing the work dir")

    # -- calibration (rank 0 computes and writes; every rank reads)
    err = None
    try:
        if needs_vectors and rank == 0 and not _calibration_ok(work / _CALIB_FILE, calib_key):
            _write_calibration(work / _CALIB_FILE, calib_key, plan["index"], samples, cloud_ex, edge_ex, mt,
                               dialogue, use_chat_template, ids, xm=xm if family != "meta" else None)
    except BaseException as e:
        err = e
    _sync_errors(err, "the calibration pass")
    reference = None
    if needs_vectors:
        calib, layer_map = _load_calibration(work / _CALIB_FILE, plan, mt, shard_metrics)
        n_layers = calib.num_layers
        if "knn_agreement" in xm_names:
            from .crossmodel import KnnReference

            reference = KnnReference(calib.cloud.numpy(), calib.edge.numpy(),
                                     tuple(ids[g] for g in calib.index.tolist()))
    else:
        calib, layer_map, n_layers = None, list(xm.layer_map), xm.num_layers
    if mt.top_k > n_layers:
        raise ValueError(f"meta_token.top_k={mt.top_k} exceeds the {n_layers} compared (edge) layers")

    # -- shards
    mine = [i for i in range(n_shards) if i % world == rank]
    todo = [i for i in mine if not _shard_ok(work / f"shard_{i:06d}.safetensors", shard_key, i)]
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(min(shard_size, n - i * shard_size) for i in mine), unit="sample",
                   desc="precompute meta tokens", dynamic_ncols=True)
        bar.update(sum(min(shard_size, n - i * shard_size) for i in mine if i not in todo))
    err = None
    try:
        for i in todo:
            lo, hi = i * shard_size, min(n, (i + 1) * shard_size)
            # each model's pass is half of a sample's work, so the bar (and its samples/s)
            # moves during the cloud pass too; whole samples only, the shard ends exact
            half = _half_progress(bar) if bar is not None else None
            signals = _shard_signals(samples, lo, hi, calib, cloud_ex, edge_ex, mt, dialogue, use_chat_template,
                                     ids, layer_map, half, xm, family, shard_metrics, xm_names, reference)
            utf8, offsets = _encode_ids(ids[lo:hi])
            write_safetensors(work / f"shard_{i:06d}.safetensors",
                              {**{f"signals.{k}": v for k, v in signals.items()},
                               "sample_ids.utf8": utf8, "sample_ids.offsets": offsets},
                              {"format": _SHARD_SCHEMA, "shard_key": shard_key, "shard": str(i),
                               "start": str(lo), "stop": str(hi), "signals": _json(sorted(signals))})
            if _after_shard is not None:
                _after_shard(i)
    except BaseException as e:
        err = e
    finally:
        if bar is not None:
            bar.close()
    _sync_errors(err, "computing shards")

    # -- merge (rank 0): every output file from the same shards
    err = None
    if rank == 0:
        try:
            for (out_path, ocfg), key, skip in zip(targets, run_keys, done):
                if skip:
                    continue
                tensors, meta = _merge_file(work, n_shards, ids, plan, calib, ocfg, info, inputs, layer_map,
                                            shard_size, fingerprint, key, family, crossmodel_info)
                _remove_stale_temps(out_path)
                write_safetensors(out_path, tensors, meta)
            if labels_path is not None and (not done[0] or not Path(labels_path).exists()):
                _remove_stale_temps(Path(labels_path))
                MetaTokenDifficultyDataset(path).write_labels(labels_path, overwrite=overwrite or done[0])
            if not keep_work_dir:
                _remove_work_dir(work)
        except BaseException as e:
            err = e
    _sync_errors(err, "merging shards")
    return MetaTokenDifficultyDataset(path)


def _targets(path: Path, cfg: CurriculumConfig, outputs: Mapping[str, str | Path] | None
             ) -> list[tuple[Path, CurriculumConfig]]:
    """The output files of one run and the config each is finalised with (the primary first)."""
    from .difficulty import METRICS

    targets = [(path, cfg)]
    primary = cfg.meta_token.signal
    if outputs is None:
        return targets
    if not isinstance(outputs, Mapping):
        raise TypeError(f"outputs must be a mapping {{metric: path}}, got {type(outputs).__name__}")
    seen = {path.resolve(): "the primary path"}
    for metric, p in outputs.items():
        xm_ok = [x for x in _XM_SCALARS] + (["knn_agreement"] if primary != "meta" else [])
        if metric not in METRICS and metric not in xm_ok:
            raise ValueError(f"outputs: unknown signal {metric!r}; expected a distance metric of the configured "
                             f"pooling and alignment ({', '.join(METRICS)}) or a cross-model signal "
                             f"({', '.join(xm_ok)}; 'knn_agreement' needs a response-conditioned "
                             "meta_token.signal, whose metrics are the metric keys)")
        p = Path(p)
        if p.resolve() in seen:
            raise ValueError(f"outputs[{metric!r}]: {p} is also {seen[p.resolve()]}; every output needs its own file")
        seen[p.resolve()] = f"outputs[{metric!r}]"
        ocfg = copy.deepcopy(cfg)
        if metric in METRICS:
            ocfg.meta_token.distance_metric = metric
            if _kind(primary) != "vec":  # the metrics of a cross-model run compare response vectors
                ocfg.meta_token.signal = "response"
        else:
            ocfg.meta_token.signal = metric
        targets.append((p, ocfg))
    return targets


def _kind(signal: str) -> str:
    """``vec`` (meta-token distances of a metric), ``knn`` or ``scalar`` (a cross-model array)."""
    return "vec" if signal in ("meta", "response") else "knn" if signal == "knn_agreement" else "scalar"


def _merge_file(work: Path, n_shards: int, ids: list[str], plan: dict[str, Any], calib: Calibration,
                cfg: CurriculumConfig, info: dict[str, Any], inputs: dict[str, Any], layer_map: Sequence[int],
                shard_size: int, fingerprint: str, run_key: str, family: str = "meta",
                crossmodel: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors and metadata of one difficulty file (``cfg``'s metric or signal) from the shards."""
    mt = cfg.meta_token
    kind = _kind(mt.signal)
    if kind != "vec":
        raw = merge_signal(work, n_shards, mt.signal, ids)
        provenance = {"models": info, "inputs": inputs, "layer_map": layer_map, "signal": mt.signal,
                      "crossmodel": crossmodel, "shard_size": shard_size}
        if kind == "knn":
            provenance["knn_reference"] = {"sample_index": plan["index"].tolist(), "k": mt.knn_k,
                                           "self_scoring": "a reference sample is scored against the others"}
        return _finalise(raw, ids, cfg, provenance, fingerprint, run_key=run_key)
    rel_maha = mt.distance_metric == "mahalanobis" and mt.alignment == "relative"
    if rel_maha:
        raw = _merge_relative_mahalanobis(work, n_shards, ids, plan, family)
    else:
        raw = merge_signal(work, n_shards, signal_name(mt.distance_metric, family), ids)
    align_info: dict[str, Any] = {"method": mt.alignment}
    extra: dict[str, Any] = {}
    if plan["anchors"] is not None:
        a = plan["anchors"]
        align_info.update(num_anchors=len(a), anchors=a.tolist(), anchor_ids=[ids[x] for x in a.tolist()],
                          centring="anchor mean per model and layer", seed=cfg.training.seed,
                          self_scoring="leave-one-out: an anchor is described by the other K-1 anchors")
        centres = calib.centres()
        extra.update({"alignment.anchors": a, "alignment.cloud_centre": centres["cloud"],
                      "alignment.edge_centre": centres["edge"]})
    if plan["fit"] is not None:
        align_info.update(calibration_size=len(plan["fit"]), folds=plan["num_folds"], seed=cfg.training.seed,
                          cross_fitting="a sample of fold f is scored by maps/covariances fitted on "
                                        "calibration samples of the other folds")
        extra["calibration.fit_index"] = plan["fit"]
    if rel_maha:
        align_info.update(covariance_fit_size=len(plan["delta_fit"]), folds=plan["delta_num_folds"],
                          covariance="Ledoit-Wolf of anchor-coordinate deltas of non-anchor calibration "
                                     "samples of the other folds; an anchor uses its K-1 coordinates")
        extra["calibration.fit_index"] = plan["delta_fit"]
    if mt.alignment == "ridge":
        align_info.update(alpha=mt.ridge_alpha, space="standardised cloud space, cross-fitted")
    provenance = {"models": info, "inputs": inputs, "layer_map": layer_map, "alignment": align_info,
                  "pooling": {"cloud": info["cloud"]["pooling"], "edge": info["edge"]["pooling"]},
                  "signal": signal_name(mt.distance_metric, family), "shard_size": shard_size}
    if crossmodel is not None:
        provenance["crossmodel"] = crossmodel
    tensors, meta = _finalise(raw, ids, cfg, provenance, fingerprint, run_key=run_key)
    tensors.update(extra)
    return tensors, meta


# ------------------------------------------------------------------------------------------ helpers
def _shard_files(work: Path, n_shards: int):
    for i in range(n_shards):
        p = work / f"shard_{i:06d}.safetensors"
        header, start = read_safetensors_header(p)
        meta = header.get("__metadata__") or {}
        yield p, header, start, int(meta["start"]), int(meta["stop"])


def _merge_relative_mahalanobis(work: Path, n_shards: int, ids: Sequence[str], plan: dict[str, Any],
                                family: str = "meta") -> torch.Tensor:
    """Mahalanobis distances from the shards' anchor-coordinate deltas, streamed twice: first the
    deltas of the calibration samples (at most ``calibration_size`` x L x K), from which one Ledoit-Wolf
    precision per fold and layer is fitted on the other folds' samples; then every shard's distances.
    An anchor's delta has K-1 coordinates (its own is left out), and its covariance is fitted on the
    same K-1 coordinates."""
    merge_signal(work, n_shards, signal_name("l2", family), ids)  # checks every shard's ids and that they tile N
    delta_name = _delta_name(family)
    fit, folds, anchors = plan["delta_fit"], plan["delta_folds"], plan["anchors"]
    anchor_pos = {int(a): p for p, a in enumerate(anchors.tolist())}
    want = set(fit.tolist())
    rows: dict[int, torch.Tensor] = {}
    for p, header, start, lo, hi in _shard_files(work, n_shards):
        if f"signals.{delta_name}" not in header:
            raise DifficultyFileError(f"{p}: no signal {delta_name!r} (needed for mahalanobis)")
        d = _memmap(p, header, start, f"signals.{delta_name}")
        for g in range(lo, hi):
            if g in want:
                rows[g] = torch.from_numpy(np.array(d[g - lo])).double()
        del d
    fit_idx = sorted(rows)
    if not fit_idx:
        raise ValueError("mahalanobis: no calibration sample outside the anchors; use more samples than "
                         "num_anchors or a larger calibration_size")
    fd = torch.stack([rows[g] for g in fit_idx])  # [M, L, K]
    ff = folds[torch.tensor(fit_idx)]
    n_layers, k = fd.shape[1], fd.shape[2]
    cache: dict[tuple[int, int], torch.Tensor] = {}

    def precision(f: int, j: int, keep: torch.Tensor | None) -> torch.Tensor:
        x = fd[ff != f, j]
        if keep is not None:
            x = x[:, keep]
        return _precision(x, f"layer {j}, fold {f}")

    out = torch.empty(len(ids), n_layers, dtype=torch.float64)
    for p, header, start, lo, hi in _shard_files(work, n_shards):
        d = torch.from_numpy(np.array(_memmap(p, header, start, f"signals.{delta_name}"))).double()
        for g in range(lo, hi):
            f = int(folds[g])
            pos = anchor_pos.get(g)
            keep = None if pos is None else torch.tensor([q for q in range(k) if q != pos])
            for j in range(n_layers):
                if keep is None:
                    if (f, j) not in cache:
                        cache[(f, j)] = precision(f, j, None)
                    prec, x = cache[(f, j)], d[g - lo, j]
                else:
                    prec, x = precision(f, j, keep), d[g - lo, j, keep]
                out[g, j] = math.sqrt(max(float(x @ prec @ x), 0.0))
        del d
    return out


def _extract_pair(chunk: Sequence[Any], rows: Sequence[int], cloud_ex: Any, edge_ex: Any, mt: Any, dialogue: bool,
                  use_chat_template: bool, ids: Sequence[str], layer_map: Sequence[int] | None,
                  progress: Callable[[int], None] | None = None, xm: Any = None,
                  extra: dict[str, np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' pooled vectors of one chunk (``rows``: the chunk's global indices); the cloud's at
    the mapped layers (all when None). Errors name global sample indices and ids, not chunk rows.
    With ``xm`` (a :class:`~torch_curriculum.crossmodel.CrossModelSignals`): the response-conditioned
    vectors, cloud already mapped by ``xm.layer_map``; the cross-model arrays named by the keys of
    ``extra`` come from the same pass and are stored into it (rows of the chunk)."""
    if xm is not None:
        try:
            out = xm.compute(_pairs(chunk, xm, mt), ["response", *(extra or {})])
        except ValueError as e:
            raise _same_kind(e)(_globalise(str(e).replace("sample ", "prompt "), rows, ids)) from e
        if progress is not None:
            progress(2 * len(chunk))
        for name in extra or {}:
            extra[name] = out[name]
        return (torch.from_numpy(out["response_cloud"]).float(), torch.from_numpy(out["response_edge"]).float())
    out = []
    for side, ex in (("cloud", cloud_ex), ("edge", edge_ex)):
        try:
            v = ex.extract(_prompts_for(chunk, ex, mt, dialogue, use_chat_template), progress=progress)
        except ValueError as e:
            raise _same_kind(e)(f"{side} model: {_globalise(str(e), rows, ids)}") from e
        bad = (~torch.isfinite(v)).flatten(1).any(dim=1)
        if bool(bad.any()):
            local = bad.nonzero()[:, 0].tolist()
            named = [ids[rows[r]] for r in local[:10]]
            raise ValueError(f"{side} meta tokens are NaN/Inf for sample(s) {named} ({len(local)} in all)")
        out.append(v)
    c, e = out
    if layer_map is not None:
        c = c[:, list(layer_map)]
    return c, e


def _shard_vectors(samples: Sequence[Any], lo: int, hi: int, calib: Calibration, cloud_ex: Any, edge_ex: Any,
                   mt: Any, dialogue: bool, use_chat_template: bool, ids: Sequence[str], layer_map: Sequence[int],
                   progress: Callable[[int], None] | None = None, xm: Any = None,
                   extra: dict[str, np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectors of samples ``lo..hi-1``: calibration samples' from the calibration pass (they are not run
    twice), the others from both models (``extra``: see :func:`_extract_pair`, rows of the others)."""
    need = [g for g in range(lo, hi) if g not in calib._row]
    c = torch.empty(hi - lo, calib.num_layers, calib.cloud.shape[2], dtype=torch.float32)
    e = torch.empty(hi - lo, calib.num_layers, calib.edge.shape[2], dtype=torch.float32)
    have = [g for g in range(lo, hi) if g in calib._row]
    if have:
        rows = calib._rows(torch.tensor(have))
        local = torch.tensor(have) - lo
        c[local], e[local] = calib.cloud[rows], calib.edge[rows]
        if progress is not None:
            progress(2 * len(have))
    if need:
        cn, en = _extract_pair([samples[g] for g in need], need, cloud_ex, edge_ex, mt, dialogue, use_chat_template,
                               ids, layer_map, progress=progress, xm=xm, extra=extra)
        if cn.shape[1:] != c.shape[1:] or en.shape[1:] != e.shape[1:]:
            raise ValueError(f"samples {lo}..{hi - 1}: the models returned [{cn.shape[1]}, {cn.shape[2]}] (cloud) and "
                             f"[{en.shape[1]}, {en.shape[2]}] (edge) per sample, the calibration pass "
                             f"[{c.shape[1]}, {c.shape[2]}] and [{e.shape[1]}, {e.shape[2]}]")
        local = torch.tensor(need) - lo
        c[local], e[local] = cn, en
    return c, e


def _pairs(chunk: Sequence[Any], xm: Any, mt: Any) -> list[tuple[Any, str]]:
    """``(prompt, response)`` pairs of dialogue samples for the cross-model signals (plain prompt
    layout, ``max_context_turns`` and the system prompt of the config)."""
    from .data import format_prompts

    prompts = format_prompts(chunk, system_prompt=mt.system_prompt, max_context_turns=mt.max_context_turns,
                             tokenizer=xm.tokenizers["edge"], use_chat_template=False, max_length=mt.max_length)
    return [(p, s.response) for p, s in zip(prompts, chunk)]


def _shard_signals(samples: Sequence[Any], lo: int, hi: int, calib: Calibration | None, cloud_ex: Any, edge_ex: Any,
                   mt: Any, dialogue: bool, use_chat_template: bool, ids: Sequence[str], layer_map: Sequence[int],
                   progress: Callable[[int], None] | None, xm: Any, family: str, shard_metrics: Sequence[str],
                   xm_names: Sequence[str], reference: Any) -> dict[str, torch.Tensor]:
    """Every named ``[n, L]`` signal of samples ``lo..hi-1`` (and the relative deltas)."""
    signals: dict[str, torch.Tensor] = {}
    scalars = [x for x in xm_names if x in _XM_SCALARS]
    fused: dict[str, Any] | None = None  # response family: the arrays come from the vectors' pass
    if calib is not None:
        fused = {x: None for x in scalars} if family != "meta" and scalars else None
        c_vec, e_vec = _shard_vectors(samples, lo, hi, calib, cloud_ex, edge_ex, mt, dialogue, use_chat_template,
                                      ids, layer_map, progress=progress, xm=xm if family != "meta" else None,
                                      extra=fused)
        if shard_metrics:
            for k, v in meta_token_signals(c_vec, e_vec, torch.arange(lo, hi), calib).items():
                base = k[len(SIGNAL) + 1:] if k.startswith(SIGNAL + ".") else None
                signals[_delta_name(family) if k == DELTA else signal_name(base, family)] = v
        if "knn_agreement" in xm_names:
            from .crossmodel import knn_agreement

            signals["knn_agreement"] = torch.from_numpy(knn_agreement(
                c_vec.double().numpy(), e_vec.double().numpy(), reference, k=mt.knn_k,
                self_index=reference.self_index(ids[lo:hi])))
        del c_vec, e_vec
    if scalars:
        # prompt-only family: one more prompt+response pass over the shard; response family: only the
        # calibration samples of the shard (their vectors were reused, not run) run now
        rows = list(range(lo, hi)) if fused is None else [g for g in range(lo, hi) if g in calib._row]
        out: dict[str, np.ndarray] = {}
        if rows:
            try:
                out = xm.compute(_pairs([samples[g] for g in rows], xm, mt), scalars)
            except ValueError as e:
                raise _same_kind(e)(_globalise(str(e).replace("sample ", "prompt "), rows, ids)) from e
        for x in scalars:
            if fused is None:
                arr = out[x]
            else:
                arr = np.empty((hi - lo, xm.num_layers), dtype=np.float64)
                need = [g - lo for g in range(lo, hi) if g not in calib._row]
                if need:
                    arr[need] = fused[x]
                if rows:
                    arr[[g - lo for g in rows]] = out[x]
            v = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
            if not bool(torch.isfinite(v).all()):
                bad = (~torch.isfinite(v)).any(1).nonzero()[:, 0].tolist()
                raise ValueError(f"{x} is NaN/Inf for sample(s) {[ids[lo + r] for r in bad[:10]]}")
            signals[x] = v
    return signals


def _globalise(msg: str, rows: Sequence[int], ids: Sequence[str]) -> str:
    """Rewrite the extractor's chunk-local ``prompt i`` / ``batch rows [..]`` / ``prompt indices of this
    batch: [..]`` into global sample indices (with the sample id for a single prompt)."""
    import re

    def one(m: re.Match) -> str:
        g = rows[int(m.group(1))]
        return f"sample {g} ({ids[g]!r})"

    def many(m: re.Match) -> str:
        return f"{m.group(1)}[{', '.join(str(rows[int(x)]) for x in re.findall(r'[0-9]+', m.group(2)))}]"

    msg = re.sub(r"\bprompt ([0-9]+)", one, msg)
    msg = re.sub(r"(prompt indices of this batch: )\[([0-9, ]*)\]", many, msg)
    msg = msg.replace("prompt indices of this batch", "global sample indices of this batch")
    return msg


def _calibration_ok(p: Path, key: str) -> bool:
    if not p.exists():
        return False
    try:
        header, _ = read_safetensors_header(p)
    except DifficultyFileError:
        logger.warning("calibration file %s is unreadable; recomputing it", p)
        return False
    return (header.get("__metadata__") or {}).get("calibration_key") == key


def _write_calibration(p: Path, key: str, index: torch.Tensor, samples: Sequence[Any], cloud_ex: Any, edge_ex: Any,
                       mt: Any, dialogue: bool, use_chat_template: bool, ids: Sequence[str], xm: Any = None) -> None:
    """Run both models on the calibration samples (chunks of ``batch_size`` at a time, so memory is
    bounded by the calibration set's vectors) and write them with the resolved layer map."""
    idx = index.tolist()
    probe = idx[:1] if idx else [0]
    c0, e0 = _extract_pair([samples[i] for i in probe], probe, cloud_ex, edge_ex, mt, dialogue,
                           use_chat_template, ids, None, xm=xm)
    layer_map = list(xm.layer_map) if xm is not None else resolve_layer_map(mt.layer_map, e0.shape[1], c0.shape[1])
    if mt.pooling == "meta" and e0.shape[1] != c0.shape[1]:
        raise ValueError(f"pooling='meta': the cloud returned {c0.shape[1]} meta tokens and the edge {e0.shape[1]}")
    cloud = torch.empty(len(idx), len(layer_map), c0.shape[2], dtype=torch.float32)
    edge = torch.empty(len(idx), e0.shape[1], e0.shape[2], dtype=torch.float32)
    step = max(1, 4 * max(cloud_ex.batch_size, edge_ex.batch_size))
    for s in range(0, len(idx), step):
        rows = idx[s:s + step]
        try:
            c, e = _extract_pair([samples[i] for i in rows], rows, cloud_ex, edge_ex, mt, dialogue,
                                 use_chat_template, ids, layer_map, xm=xm)
        except ValueError as err:
            raise ValueError(f"calibration pass: {err}") from err
        cloud[s:s + len(rows)] = c
        edge[s:s + len(rows)] = e
    write_safetensors(p, {"index": index.long(), "cloud": cloud, "edge": edge},
                      {"format": _CALIB_SCHEMA, "calibration_key": key, "layer_map": _json(layer_map)})


def _load_calibration(p: Path, plan: dict[str, Any], mt: Any,
                      metrics: Sequence[str] | None = None) -> tuple[Calibration, list[int]]:
    header, start = read_safetensors_header(p)
    meta = header.get("__metadata__") or {}
    layer_map = json.loads(meta["layer_map"])
    index = torch.from_numpy(np.array(_memmap(p, header, start, "index")))
    if not torch.equal(index, plan["index"].long()):
        raise DifficultyFileError(f"{p}: calibration samples differ from this run's; delete the work dir")
    cloud = torch.from_numpy(np.array(_memmap(p, header, start, "cloud")))
    edge = torch.from_numpy(np.array(_memmap(p, header, start, "edge")))
    calib = Calibration(index, cloud, edge, alignment=mt.alignment, metric=mt.distance_metric,
                        anchors=plan["anchors"], folds=plan["folds"], fit=plan["fit"], alpha=mt.ridge_alpha,
                        kl_temperature=mt.kl_temperature, metrics=metrics)
    return calib, layer_map


def _half_progress(bar: Any) -> Callable[[int], None]:
    """A progress callback that advances ``bar`` by half a sample per sample of one model's pass."""
    halves = [0]

    def update(k: int) -> None:
        before = halves[0] // 2
        halves[0] += k
        bar.update(halves[0] // 2 - before)

    return update


def dialogue_input(samples: Sequence[Any]) -> bool:
    """True when every sample is dialogue-shaped (``persona``, ``context``, ``response``)."""
    return all(hasattr(s, "persona") and hasattr(s, "context") and hasattr(s, "response") for s in samples)


def _prompts_for(chunk: Sequence[Any], ex: Any, mt: Any, dialogue: bool, use_chat_template: bool) -> list[Any]:
    if not dialogue:
        return list(chunk)
    from .data import format_prompts

    return format_prompts(chunk, system_prompt=mt.system_prompt, max_context_turns=mt.max_context_turns,
                          tokenizer=ex.tokenizer, use_chat_template=use_chat_template, max_length=ex.max_length)


_WORK_MANIFEST = "manifest.json"


def _is_work_file(name: str) -> bool:
    """A name precompute writes in its work dir (the manifest, shards, and their atomic-write temps)."""
    if name in (_WORK_MANIFEST, _CALIB_FILE) or (name.startswith("shard_") and name.endswith(".safetensors")):
        return True
    # atomic_write temp files: ".<name>.<random>.tmp"
    return name.endswith(".tmp") and (name.startswith((f".{_WORK_MANIFEST}.", f".{_CALIB_FILE}.", ".shard_")))


def _prepare_work_dir(work: Path, manifest: dict[str, Any]) -> None:
    """Create (or re-enter) the work dir; refuse a folder holding anything precompute did not write.

    The manifest records whether this run created the folder, so the cleanup removes the folder
    itself only then (and only when nothing else landed in it).
    """
    if work.exists() and not work.is_dir():
        raise DifficultyFileError(f"work dir {work} exists and is not a folder; pass another work_dir")
    mpath = work / _WORK_MANIFEST
    if mpath.exists():
        try:
            old = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = None
        if not isinstance(old, dict) or old.get("shard_key") != manifest["shard_key"]:
            raise DifficultyFileError(f"work dir {work} holds shards of another run (other models, data, settings "
                                      "or shard size); delete it or pass another work_dir")
        return
    created = not work.exists()
    if not created:
        foreign = sorted(p.name for p in work.iterdir() if not _is_work_file(p.name))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise DifficultyFileError(f"work dir {work} is not empty and was not created by precompute (it holds "
                                      f"{shown}); the work dir is deleted after the merge, so pass a new or empty "
                                      "folder as work_dir")
    work.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**manifest, "created_dir": created}, sort_keys=True, indent=1, default=str) + "\n"
    with atomic_write(mpath) as f:
        f.write(text.encode("utf-8"))


def _remove_stale_temps(target: Path) -> None:
    """Remove temp files a killed atomic write of ``target`` left (``.<name>.<random>.tmp`` next to it:
    only :func:`torch_curriculum._io.atomic_write` makes such names for this target)."""
    import glob

    if target.parent.is_dir():
        for p in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()


def _remove_work_dir(work: Path) -> None:
    """Delete what precompute wrote in ``work``; the folder itself only if precompute created it and it
    is empty then. Nothing else is ever deleted (the output or other files may live there)."""
    created = False
    with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
        created = bool(json.loads((work / _WORK_MANIFEST).read_text(encoding="utf-8")).get("created_dir"))
    if not work.is_dir():
        return
    for p in work.iterdir():
        if p.is_file() and _is_work_file(p.name) and p.name != _WORK_MANIFEST:
            p.unlink(missing_ok=True)
    (work / _WORK_MANIFEST).unlink(missing_ok=True)  # last: it marks the folder as ours until the end
    if created:
        with contextlib.suppress(OSError):
            work.rmdir()  # fails (and is left) when anything else is in it


def _shard_ok(p: Path, shard_key: str, i: int) -> bool:
    if not p.exists():
        return False
    try:
        header, _ = read_safetensors_header(p)
    except DifficultyFileError:
        logger.warning("shard %s is unreadable; recomputing it", p)
        return False
    meta = header.get("__metadata__") or {}
    return meta.get("shard_key") == shard_key and meta.get("shard") == str(i)
