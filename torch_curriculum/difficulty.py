"""Difficulty math: per-layer distances, normalisation across layers, aggregation, percentiles, stages.

Every function is a plain function on torch tensors, vectorised over samples and layers. The
meaning of every number is fixed by ``DESIGN.md`` ("Meanings that are fixed"):

* ``layer_distances(cloud, edge, metric)``: ``[N, L, d]`` x2 -> ``[N, L]``.
* ``normalize_layers(d, method)``: per layer (column), across samples; ``rank`` is the default.
* ``aggregate(d, method)``: ``[N, L]`` -> ``[N]`` (``mean``, ``weighted_mean``, ``max``, ``topk_mean``).
* ``percentiles(scores)``: fraction of samples whose score is <= the sample's own, in (0, 1].
* ``assign_stages(percentiles, stage_percentiles)``: smallest 1-based s with p <= stage_percentiles[s-1].

Distances and everything derived from them are returned in float64: they are small (``[N, L]``) and
percentile ranks, ties and stage boundaries must not depend on float32 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "AGGREGATES",
    "METRICS",
    "NORMALIZATIONS",
    "aggregate",
    "assign_stages",
    "default_tau",
    "layer_distances",
    "ledoit_wolf_covariance",
    "normalize_layers",
    "percentiles",
    "score_all",
    "score_name",
]

METRICS = ("l2", "cosine", "coord_softmax_kl", "mahalanobis")

# ``kl`` was a softmax over the coordinates of aligned vectors (cosines to anchors, or an arbitrary hidden
# basis): not a distribution over anything. It is kept only under a name that says what it computes.
_REMOVED_METRICS = {
    "kl": "metric 'kl' was removed: it was a softmax over the coordinates of aligned meta-token vectors "
          "(not a distribution over anything); use 'coord_softmax_kl' for that number, or the vocabulary-space "
          "signals of torch_curriculum.crossmodel ('vocab_kl', 'uld'), which compare the two models' "
          "next-token distributions",
}
NORMALIZATIONS = ("rank", "zscore", "robust", "none")
AGGREGATES = ("mean", "weighted_mean", "max", "topk_mean")


def _check_finite(x: torch.Tensor, name: str) -> None:
    """Raise a ValueError naming the first sample (and layer) that holds a NaN/Inf."""
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return
    bad = (~finite).nonzero()[0].tolist()
    where = f"sample {bad[0]}" + (f", layer {bad[1]}" if len(bad) > 1 else "")
    n_bad = int((~finite).reshape(x.shape[0], -1).any(dim=1).sum())
    raise ValueError(f"{name} holds NaN/Inf values at {where} ({n_bad} sample(s) affected); "
                     "distances of non-finite meta tokens are meaningless")


def _check_2d(d: torch.Tensor, name: str = "d") -> torch.Tensor:
    if not isinstance(d, torch.Tensor):
        d = torch.as_tensor(d)
    if d.dim() != 2:
        raise ValueError(f"{name} must have shape [N, L] (samples x layers), got {tuple(d.shape)}")
    if d.shape[0] == 0 or d.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one sample and one layer, got {tuple(d.shape)}")
    if not (d.is_floating_point() or d.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must be a real-valued tensor, got dtype {d.dtype}")
    _check_finite(d, name)
    return d.to(torch.float64)


def ledoit_wolf_covariance(x: torch.Tensor) -> torch.Tensor:
    """Ledoit-Wolf shrunk covariance of the rows of ``x`` (float64).

    The estimator of Ledoit & Wolf (2004), as in ``sklearn.covariance.ledoit_wolf`` (rows are
    centred; the maximum-likelihood covariance is shrunk towards ``mu * I`` with the optimal
    intensity). Used for the Mahalanobis distance, where N can be close to or below d.

    Args:
        x (torch.Tensor): ``[N, d]`` observations, or ``[L, N, d]`` for one covariance per layer.

    Returns:
        torch.Tensor: ``[d, d]`` (or ``[L, d, d]``) float64 covariance.

    Raises:
        ValueError: if fewer than two observations are given.

    Example:
        >>> cov = ledoit_wolf_covariance(torch.randn(50, 4))
        >>> cov.shape
        torch.Size([4, 4])
    """
    x = x.to(torch.float64)
    squeeze = x.dim() == 2
    if squeeze:
        x = x.unsqueeze(0)
    n = x.shape[1]
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got N={n}")
    d = x.shape[2]
    xc = x - x.mean(dim=1, keepdim=True)
    emp = xc.transpose(1, 2) @ xc / n  # [L, d, d], maximum-likelihood (sklearn's convention)
    mu = torch.diagonal(emp, dim1=1, dim2=2).sum(-1) / d  # [L]
    x2 = xc**2
    # beta: how noisy the empirical covariance is; delta: its distance to mu * I.
    beta_ = ((x2.transpose(1, 2) @ x2) / n - emp**2).sum(dim=(1, 2)) / n
    eye = torch.eye(d, dtype=torch.float64)
    delta_ = ((emp - mu[:, None, None] * eye) ** 2).sum(dim=(1, 2))
    beta = torch.minimum(beta_, delta_)
    shrinkage = torch.where(delta_ > 0, beta / delta_.clamp_min(1e-300), torch.zeros_like(delta_))
    cov = (1 - shrinkage)[:, None, None] * emp + (shrinkage * mu)[:, None, None] * eye
    return cov[0] if squeeze else cov


def _per_layer_matrix(m: torch.Tensor, n_layers: int, dim: int, name: str) -> torch.Tensor:
    m = torch.as_tensor(m).to(torch.float64)
    if m.dim() == 2 and m.shape == (dim, dim):
        m = m.expand(n_layers, dim, dim)
    if m.shape != (n_layers, dim, dim):
        raise ValueError(f"{name} must have shape [d, d] or [L, d, d] = [{n_layers}, {dim}, {dim}], "
                         f"got {tuple(m.shape)}")
    _check_finite(m, name)
    return m


def layer_distances(
    cloud: torch.Tensor,
    edge: torch.Tensor,
    metric: str = "l2",
    *,
    covariance: torch.Tensor | None = None,
    precision: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-sample, per-layer distance between cloud and edge meta tokens.

    Metrics (``a`` = cloud, ``b`` = edge, one layer of one sample):

    * ``l2``: ``||a - b||_2``.
    * ``cosine``: ``1 - cos(a, b)`` (a zero vector has cosine 0 to everything, so distance 1).
    * ``coord_softmax_kl``: ``KL(softmax(a / T) || softmax(b / T))`` over the *coordinates* of the aligned
      vectors, the cloud as the reference. This is not a divergence between next-token distributions
      (those are :mod:`torch_curriculum.crossmodel`'s ``vocab_kl`` / ``uld``): under ``relative``
      alignment the coordinates are cosines in [-1, 1] that soften to a near-uniform distribution. It was
      called ``kl`` before; that name is an error now.
    * ``mahalanobis``: ``sqrt(D^T S^-1 D)`` with ``D = a - b`` and ``S`` the per-layer covariance of
      ``D`` over the N samples, Ledoit-Wolf shrunk, in float64; or the ``covariance`` /
      ``precision`` (inverse covariance) the caller passes, ``[d, d]`` shared or ``[L, d, d]``.

    Args:
        cloud (torch.Tensor): ``[N, L, d]`` cloud meta tokens (already aligned to the edge space).
        edge (torch.Tensor): ``[N, L, d]`` edge meta tokens.
        metric (str): one of ``l2``, ``cosine``, ``coord_softmax_kl``, ``mahalanobis``. Defaults to ``"l2"``.
        covariance (torch.Tensor | None): Mahalanobis only; overrides the estimated covariance.
        precision (torch.Tensor | None): Mahalanobis only; the inverse covariance, used as is.
        temperature (float): ``coord_softmax_kl`` only; softmax temperature T > 0. Defaults to 1.0.

    Returns:
        torch.Tensor: ``[N, L]`` float64 distances.

    Raises:
        ValueError: unknown metric, shapes that differ or are not 3-D, NaN/Inf inputs (the sample is
            named), a non-positive temperature, covariance arguments for another metric, both
            covariance and precision, or N < 2 when a covariance must be estimated.

    Example:
        >>> a, b = torch.randn(8, 4, 16), torch.randn(8, 4, 16)
        >>> layer_distances(a, b, "cosine").shape
        torch.Size([8, 4])
    """
    if metric in _REMOVED_METRICS:
        raise ValueError(_REMOVED_METRICS[metric])
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    cloud, edge = torch.as_tensor(cloud), torch.as_tensor(edge)
    if cloud.dim() != 3 or edge.dim() != 3:
        raise ValueError(f"cloud and edge must have shape [N, L, d]; got {tuple(cloud.shape)} and "
                         f"{tuple(edge.shape)}")
    if cloud.shape != edge.shape:
        raise ValueError(f"cloud and edge shapes differ: {tuple(cloud.shape)} vs {tuple(edge.shape)}; "
                         "map layers and align the spaces first (layer map / alignment)")
    if cloud.shape[0] == 0:
        raise ValueError("cloud and edge hold no samples (N=0)")
    if (covariance is not None or precision is not None) and metric != "mahalanobis":
        raise ValueError(f"covariance/precision only apply to metric='mahalanobis', not {metric!r}")
    if covariance is not None and precision is not None:
        raise ValueError("pass either covariance or precision, not both")
    _check_finite(cloud, "cloud")
    _check_finite(edge, "edge")
    a = cloud.to(torch.float64)
    b = edge.to(torch.float64)
    n, n_layers, dim = a.shape

    if metric == "l2":
        return torch.linalg.vector_norm(a - b, dim=-1)
    if metric == "cosine":
        num = (a * b).sum(-1)
        den = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
        cos = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))
        return (1.0 - cos).clamp_min(0.0)
    if metric == "coord_softmax_kl":
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        log_p = torch.log_softmax(a / temperature, dim=-1)
        log_q = torch.log_softmax(b / temperature, dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)

    # Mahalanobis: one covariance per layer, one layer at a time to bound memory to [d, d].
    delta = a - b  # [N, L, d]
    if precision is not None:
        prec = _per_layer_matrix(precision, n_layers, dim, "precision")
    else:
        if covariance is not None:
            cov = _per_layer_matrix(covariance, n_layers, dim, "covariance")
        else:
            if n < 2:
                raise ValueError(f"mahalanobis needs N >= 2 samples to estimate a covariance, got N={n}; "
                                 "pass covariance= or precision= for fewer samples")
            cov = torch.stack([ledoit_wolf_covariance(delta[:, i]) for i in range(n_layers)])
        prec = torch.linalg.pinv(cov, hermitian=True)
    quad = torch.einsum("nld,lde,nle->nl", delta, prec, delta)
    return quad.clamp_min(0.0).sqrt()


def _rank01(d: torch.Tensor) -> torch.Tensor:
    """Fraction of entries in each column that are <= the entry (ties share), in (0, 1]."""
    n = d.shape[0]
    sorted_cols, _ = torch.sort(d, dim=0)
    # searchsorted works on the last dimension: put samples last.
    counts = torch.searchsorted(sorted_cols.T.contiguous(), d.T.contiguous(), right=True)
    return (counts.T.to(torch.float64)) / n


def normalize_layers(d: torch.Tensor, method: str = "rank") -> torch.Tensor:
    """Normalise raw per-layer distances so that layers are comparable.

    Raw distances grow with depth (hidden-state norms go from ~20 to ~600 over a real model), so an
    unnormalised top-K would always pick the deepest layers. Each layer (column) is normalised
    across the N samples:

    * ``rank`` (default): fraction of samples whose distance at that layer is <= this one, in
      (0, 1]; ties share a value (same rule as :func:`percentiles`).
    * ``zscore``: ``(x - mean) / std`` (population std); a constant layer becomes 0.
    * ``robust``: ``(x - median) / IQR``; a layer with zero IQR is only centred (scale 1).
    * ``none``: the raw values, as float64.

    Args:
        d (torch.Tensor): ``[N, L]`` raw distances.
        method (str): ``rank``, ``zscore``, ``robust`` or ``none``. Defaults to ``"rank"``.

    Returns:
        torch.Tensor: ``[N, L]`` float64.

    Raises:
        ValueError: unknown method, not ``[N, L]``, or NaN/Inf values.

    Example:
        >>> normalize_layers(torch.tensor([[1.0, 10.0], [2.0, 30.0]]))
        tensor([[0.5000, 0.5000],
                [1.0000, 1.0000]], dtype=torch.float64)
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {method!r}; expected one of {', '.join(NORMALIZATIONS)}")
    x = _check_2d(d)
    if method == "none":
        return x.clone()
    if method == "rank":
        return _rank01(x)
    if method == "zscore":
        mean = x.mean(dim=0, keepdim=True)
        std = x.std(dim=0, unbiased=False, keepdim=True)
        return torch.where(std > 0, (x - mean) / std.clamp_min(1e-300), torch.zeros_like(x))
    q = torch.quantile(x, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), dim=0)
    iqr = q[2] - q[0]
    scale = torch.where(iqr > 0, iqr, torch.ones_like(iqr))
    return (x - q[1]) / scale


def default_tau(n_layers: int) -> float:
    """The default tau of ``weighted_mean``: ``L / 3``, so the deepest layer weighs ~e^-3 of the first.

    The seed leaves tau open; tying it to depth keeps the emphasis on the lower third of the model
    for any L. Every artefact records the tau actually used.
    """
    return n_layers / 3.0


def score_name(method: str, k: int = 3) -> str:
    """Key of an aggregate in label files and datasets: ``topk_mean`` becomes ``top{K}_mean``."""
    if method not in AGGREGATES:
        raise ValueError(f"unknown aggregate {method!r}; expected one of {', '.join(AGGREGATES)}")
    return f"top{k}_mean" if method == "topk_mean" else method


def aggregate(d: torch.Tensor, method: str = "topk_mean", *, k: int = 3, tau: float | None = None) -> torch.Tensor:
    """Aggregate per-layer (normalised) differences into one difficulty score per sample.

    * ``mean``: ``(1/L) sum_i d_i``.
    * ``weighted_mean``: ``sum_i w_i d_i`` with ``w_i = exp(-i / tau) / Z`` (i 0-based; lower layers weigh more).
    * ``max``: ``max_i d_i``.
    * ``topk_mean``: mean of the K largest ``d_i`` (the seed's recommendation, K=3).

    Args:
        d (torch.Tensor): ``[N, L]`` per-layer differences (normally from :func:`normalize_layers`).
        method (str): ``mean``, ``weighted_mean``, ``max`` or ``topk_mean``. Defaults to ``"topk_mean"``.
        k (int): K of ``topk_mean``; 1 <= K <= L. Defaults to 3.
        tau (float | None): tau of ``weighted_mean``, > 0; None means :func:`default_tau` (L/3).

    Returns:
        torch.Tensor: ``[N]`` float64 scores.

    Raises:
        ValueError: unknown method, K < 1 or K > L, tau <= 0, bad shape or NaN/Inf values.

    Example:
        >>> aggregate(torch.tensor([[0.1, 0.9, 0.5, 0.3]]), "topk_mean", k=2)
        tensor([0.7000], dtype=torch.float64)
    """
    if method not in AGGREGATES:
        raise ValueError(f"unknown aggregate {method!r}; expected one of {', '.join(AGGREGATES)}")
    x = _check_2d(d)
    n_layers = x.shape[1]
    if method == "mean":
        return x.mean(dim=1)
    if method == "max":
        return x.max(dim=1).values
    if method == "topk_mean":
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k (top_k) must be an integer >= 1, got {k!r}")
        if k > n_layers:
            raise ValueError(f"k (top_k)={k} is larger than the number of layers L={n_layers}")
        return torch.topk(x, k, dim=1).values.mean(dim=1)
    tau = default_tau(n_layers) if tau is None else float(tau)
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a finite number > 0, got {tau}")
    w = torch.exp(-torch.arange(n_layers, dtype=torch.float64) / tau)
    return x @ (w / w.sum())


def score_all(d: torch.Tensor, *, k: int = 3, tau: float | None = None) -> dict[str, torch.Tensor]:
    """Every aggregate of :func:`aggregate`, keyed as in the label files.

    Returns:
        dict[str, torch.Tensor]: ``{"mean", "max", "top{K}_mean", "weighted_mean"}`` -> ``[N]`` float64.

    Example:
        >>> sorted(score_all(torch.rand(5, 6)))
        ['max', 'mean', 'top3_mean', 'weighted_mean']
    """
    return {score_name(m, k): aggregate(d, m, k=k, tau=tau) for m in ("mean", "max", "topk_mean", "weighted_mean")}


def percentiles(scores: torch.Tensor) -> torch.Tensor:
    """Percentile of each sample: the fraction of samples whose score is <= its own.

    Ties share the same (highest) value, so the result lies in (0, 1] and the hardest sample has 1.

    Args:
        scores (torch.Tensor): ``[N]`` scores.

    Returns:
        torch.Tensor: ``[N]`` float64 percentiles.

    Raises:
        ValueError: not 1-D, empty, or NaN/Inf values.

    Example:
        >>> percentiles(torch.tensor([0.3, 0.1, 0.3, 0.9]))
        tensor([0.7500, 0.2500, 0.7500, 1.0000], dtype=torch.float64)
    """
    s = torch.as_tensor(scores)
    if s.dim() != 1:
        raise ValueError(f"scores must have shape [N], got {tuple(s.shape)}")
    return _rank01(_check_2d(s[:, None], "scores"))[:, 0]


def _check_stage_percentiles(stage_percentiles: Sequence[float]) -> torch.Tensor:
    sp = torch.as_tensor(list(stage_percentiles), dtype=torch.float64)
    if sp.dim() != 1 or sp.numel() == 0:
        raise ValueError("stage_percentiles must be a non-empty list of numbers")
    if not bool(((sp > 0) & (sp <= 1)).all()):
        raise ValueError(f"stage_percentiles must lie in (0, 1], got {sp.tolist()}")
    if sp.numel() > 1 and not bool((sp[1:] > sp[:-1]).all()):
        raise ValueError(f"stage_percentiles must be strictly increasing, got {sp.tolist()}")
    if sp[-1] != 1.0:
        raise ValueError(f"the last stage percentile must be 1.0 so every sample has a stage, got {sp.tolist()}")
    return sp


def assign_stages(percentiles: torch.Tensor, stage_percentiles: Sequence[float] = (0.33, 0.66, 1.0)) -> torch.Tensor:
    """Curriculum stage of each sample: the smallest 1-based s with ``p <= stage_percentiles[s-1]``.

    Args:
        percentiles (torch.Tensor): ``[N]`` percentiles in (0, 1] (from :func:`percentiles`).
        stage_percentiles (Sequence[float]): strictly increasing upper bounds ending with 1.0.
            Defaults to ``(0.33, 0.66, 1.0)``.

    Returns:
        torch.Tensor: ``[N]`` int64 stages in ``1..S``.

    Note:
        Comparison is exact in float64; pass float64 percentiles (float32 0.33 is 0.33000001).

    Raises:
        ValueError: bad stage_percentiles, or percentiles outside (0, 1].

    Example:
        >>> assign_stages(torch.tensor([0.33, 0.34, 1.0], dtype=torch.float64))
        tensor([1, 2, 3])
    """
    sp = _check_stage_percentiles(stage_percentiles)
    p = torch.as_tensor(percentiles).to(torch.float64)
    if p.dim() != 1:
        raise ValueError(f"percentiles must have shape [N], got {tuple(p.shape)}")
    if p.numel() and not bool(((p > 0) & (p <= 1)).all()):
        raise ValueError("percentiles must lie in (0, 1]")
    return torch.searchsorted(sp, p, right=False) + 1
