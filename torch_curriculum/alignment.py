"""Layer map and space alignment between cloud and edge meta tokens of different depth and width.

* :func:`default_layer_map` / :func:`resolve_layer_map`: edge layer j (0-based) is compared with
  cloud layer ``round((j+1) * Lc / Le) - 1`` (relative depth; the last edge layer meets the last
  cloud layer), or with an explicit, validated list.
* Alignment, one layer at a time (``[N, d_cloud]`` and ``[N, d_edge]`` -> two ``[N, k]`` arrays in one
  space, so that :func:`torch_curriculum.difficulty.layer_distances` applies):

  - ``relative`` (Moschella et al., ICLR 2023): K anchor samples drawn with a seeded generator
    (:func:`select_anchors`); per model and layer, every vector is centred by the anchors' mean,
    L2-normalised, and described by its cosine similarity to each (centred, normalised) anchor.
    Both models land in the same K-dim space. Centring removes the common offset that anisotropic
    LLM states (and massive activations) put on every vector, which would make all cosines ~1.
  - ``ridge``: per layer a ridge regression edge -> cloud on standardised features, cross-fitted
    over ``folds`` seeded folds: the map that scores fold f is fitted on the other folds only (a
    calibration subset disjoint from the scored samples), and the mean/std used to standardise
    come from those folds too. Both sides are returned in standardised cloud space.
  - ``identity``: the vectors as they are; only for equal widths.

All arithmetic is float64; results are float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "ALIGNMENTS",
    "align_identity",
    "align_layer",
    "align_relative",
    "align_ridge",
    "default_layer_map",
    "relative_projection",
    "resolve_layer_map",
    "ridge_folds",
    "select_anchors",
]

ALIGNMENTS = ("relative", "ridge", "identity")


def default_layer_map(n_edge: int, n_cloud: int) -> list[int]:
    """Relative-depth layer map: edge layer j -> cloud layer ``round((j+1) * n_cloud / n_edge) - 1``.

    Python's ``round`` (half to even) is used, exactly as written.

    Args:
        n_edge (int): edge layers Le >= 1.
        n_cloud (int): cloud layers Lc >= 1.

    Returns:
        list[int]: Le cloud layer indices in ``[0, Lc)``, non-decreasing, last = Lc - 1.

    Raises:
        ValueError: a count < 1.

    Example:
        >>> default_layer_map(4, 8)
        [1, 3, 5, 7]
    """
    if n_edge < 1 or n_cloud < 1:
        raise ValueError(f"layer counts must be >= 1, got n_edge={n_edge}, n_cloud={n_cloud}")
    return [max(0, round((j + 1) * n_cloud / n_edge) - 1) for j in range(n_edge)]


def resolve_layer_map(layer_map: Sequence[int] | None, n_edge: int, n_cloud: int) -> list[int]:
    """The default map for None, else the explicit list after validation.

    Raises:
        ValueError: wrong length (must be n_edge), a non-integer, or an index outside ``[0, n_cloud)``.
    """
    if layer_map is None:
        return default_layer_map(n_edge, n_cloud)
    lm = list(layer_map)
    if len(lm) != n_edge:
        raise ValueError(f"layer_map has {len(lm)} entries but the edge model has {n_edge} layers "
                         "(one cloud layer per edge layer)")
    for j, m in enumerate(lm):
        if isinstance(m, bool) or not isinstance(m, int):
            raise ValueError(f"layer_map[{j}] must be an int, got {m!r}")
        if not 0 <= m < n_cloud:
            raise ValueError(f"layer_map[{j}]={m} is outside the cloud's layers [0, {n_cloud})")
    return lm


def select_anchors(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """K distinct anchor indices out of n, drawn with a seeded generator, sorted.

    Raises:
        ValueError: k < 1 or k > n.
    """
    if k < 1 or k > n:
        raise ValueError(f"need 1 <= num_anchors <= N, got num_anchors={k}, N={n}")
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=g)[:k].sort().values


def _unit(x: torch.Tensor) -> torch.Tensor:
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x / norm.clamp_min(1e-12)


def relative_projection(x: torch.Tensor, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative representation of one model's vectors of one layer.

    Args:
        x (torch.Tensor): ``[N, d]`` vectors.
        anchors (torch.Tensor): ``[K]`` anchor indices into x.

    Returns:
        tuple[torch.Tensor, torch.Tensor]: ``[N, K]`` cosines of the centred vectors to the centred
        anchors (float64), and the centre ``[d]`` (the anchors' mean).

    Example:
        >>> r, c = relative_projection(torch.randn(10, 6), torch.tensor([0, 3, 5]))
        >>> r.shape, c.shape
        (torch.Size([10, 3]), torch.Size([6]))
    """
    x = x.to(torch.float64)
    centre = x[anchors].mean(0)
    xu = _unit(x - centre)
    return xu @ xu[anchors].T, centre


def align_relative(cloud: torch.Tensor, edge: torch.Tensor, anchors: torch.Tensor):
    """Both models' vectors of one layer in the shared K-dim anchor space.

    Returns:
        tuple: ``(cloud_rel [N, K], edge_rel [N, K], {"cloud_centre": [dc], "edge_centre": [de]})``.
    """
    c, cc = relative_projection(cloud, anchors)
    e, ec = relative_projection(edge, anchors)
    return c, e, {"cloud_centre": cc, "edge_centre": ec}


def ridge_folds(n: int, folds: int, seed: int = 0) -> torch.Tensor:
    """Fold id in ``[0, folds)`` of each of n samples: a seeded permutation dealt round-robin.

    Raises:
        ValueError: folds < 2 or n < folds.
    """
    if folds < 2 or n < folds:
        raise ValueError(f"cross-fitted ridge needs 2 <= folds <= N, got folds={folds}, N={n}")
    g = torch.Generator().manual_seed(int(seed))
    fold = torch.empty(n, dtype=torch.long)
    fold[torch.randperm(n, generator=g)] = torch.arange(n) % folds
    return fold


def _standardise_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu = x.mean(0)
    sd = x.std(0, unbiased=False)
    # a constant feature carries no information; scale 1 keeps it at 0 instead of dividing by 0
    return mu, torch.where(sd > 1e-12, sd, torch.ones_like(sd))


def align_ridge(cloud: torch.Tensor, edge: torch.Tensor, *, alpha: float = 1.0, folds: int = 5,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-fitted ridge map edge -> cloud for one layer, in standardised cloud space.

    For each fold f with calibration set C (all other folds): standardise edge and cloud with C's
    per-feature mean/std, fit ``W = argmin ||Z_e[C] W - Z_c[C]||^2 + alpha ||W||^2`` and score f:
    cloud side ``Z_c[f]``, edge side ``Z_e[f] W``.

    Args:
        cloud (torch.Tensor): ``[N, dc]``.
        edge (torch.Tensor): ``[N, de]``.
        alpha (float): ridge penalty >= 0 (0 = minimum-norm least squares). Defaults to 1.0.
        folds (int): cross-fitting folds, 2 <= folds <= N. Defaults to 5.
        seed (int): fold assignment seed. Defaults to 0.

    Returns:
        tuple[torch.Tensor, torch.Tensor]: ``(cloud_std [N, dc], edge_pred [N, dc])`` float64.

    Raises:
        ValueError: alpha < 0, bad folds, or N mismatch.
    """
    if alpha < 0:
        raise ValueError(f"ridge alpha must be >= 0, got {alpha}")
    if cloud.shape[0] != edge.shape[0]:
        raise ValueError(f"cloud and edge sample counts differ: {cloud.shape[0]} vs {edge.shape[0]}")
    c = cloud.to(torch.float64)
    e = edge.to(torch.float64)
    fold = ridge_folds(c.shape[0], folds, seed)
    out_c = torch.empty_like(c)
    out_e = torch.empty(e.shape[0], c.shape[1], dtype=torch.float64)
    for f in range(folds):
        test = fold == f
        train = ~test
        mu_e, sd_e = _standardise_stats(e[train])
        mu_c, sd_c = _standardise_stats(c[train])
        ze = (e[train] - mu_e) / sd_e
        zc = (c[train] - mu_c) / sd_c
        n_tr, de = ze.shape
        if alpha == 0:
            w = torch.linalg.pinv(ze) @ zc
        elif n_tr < de:  # dual form: invert an [n, n] instead of a [de, de] matrix
            w = ze.T @ torch.linalg.solve(ze @ ze.T + alpha * torch.eye(n_tr, dtype=ze.dtype), zc)
        else:
            w = torch.linalg.solve(ze.T @ ze + alpha * torch.eye(de, dtype=ze.dtype), ze.T @ zc)
        out_c[test] = (c[test] - mu_c) / sd_c
        out_e[test] = ((e[test] - mu_e) / sd_e) @ w
    return out_c, out_e


def align_identity(cloud: torch.Tensor, edge: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The vectors as they are (float64).

    Raises:
        ValueError: the widths differ (use ``relative`` or ``ridge``).
    """
    if cloud.shape[-1] != edge.shape[-1]:
        raise ValueError(f"alignment='identity' needs equal widths, but the cloud is {cloud.shape[-1]} wide "
                         f"and the edge {edge.shape[-1]}; use alignment='relative' or 'ridge'")
    return cloud.to(torch.float64), edge.to(torch.float64)


def align_layer(cloud: torch.Tensor, edge: torch.Tensor, method: str, *, anchors: torch.Tensor | None = None,
                alpha: float = 1.0, folds: int = 5, seed: int = 0):
    """Align one layer with ``method``; returns ``(cloud_aligned, edge_aligned, extra_dict)``.

    Raises:
        ValueError: unknown method, missing anchors for ``relative``, or the method's own errors.
    """
    if method == "relative":
        if anchors is None:
            raise ValueError("alignment='relative' needs anchor indices (select_anchors)")
        return align_relative(cloud, edge, anchors)
    if method == "ridge":
        c, e = align_ridge(cloud, edge, alpha=alpha, folds=folds, seed=seed)
        return c, e, {}
    if method == "identity":
        c, e = align_identity(cloud, edge)
        return c, e, {}
    raise ValueError(f"unknown alignment {method!r}; expected one of {', '.join(ALIGNMENTS)}")
