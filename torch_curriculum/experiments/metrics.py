"""Evaluation metrics and statistics for curriculum experiments (the seed's H1-H3).

Plain functions: numpy arrays / torch tensors / lists in, plain Python floats, dicts and numpy
arrays out. Nothing here trains anything; ``benchmarks/convergence.py`` collects raw numbers and
``benchmarks/_results.py`` turns them into the sections of ``results.json`` with these functions.

Definitions (also in the README):

* **Steps / wall time / samples to target** (:func:`steps_to_target`, :func:`wall_time_to_target`,
  :func:`samples_to_target`): the first *evaluated* point whose validation loss is ``<= target``.
  With ``interpolate=True`` the crossing is placed by linear interpolation between that evaluation
  and the previous one (the loss is assumed to fall linearly between evaluations); without it the
  value is the evaluated step itself, which overstates the true step by at most one evaluation
  interval. A run that never reaches the target gives ``None``. Non-finite losses (a diverged run)
  never count as reaching the target.
* **% fewer steps** (:func:`pct_fewer_steps`): ``100 * (random - strategy) / random``; positive
  means the strategy needed fewer steps than the random baseline.
* **Confidence intervals**: :func:`bootstrap_ci` (percentile or BCa bootstrap, numpy, seeded) for
  per-sample statistics; :func:`t_ci` (Student t) for means over a handful of seeds, where bootstrap
  intervals are known to be too narrow.
* **Paired test** (:func:`paired_test`): paired t-test (the reported ``p_value``) and, when
  ``n >= 6``, the Wilcoxon signed-rank test alongside.
* **Rank correlation** (:func:`rank_correlation`): Spearman's rho and Kendall's tau-b with
  percentile-bootstrap CIs, (x, y) pairs resampled together.
* **Comparing two signals** (:func:`compare_correlations`): paired-bootstrap CI of
  ``|rho(a, y)| - |rho(b, y)|`` on the same resamples.
* **Layer stabilisation** (:func:`layer_stabilisation_step`): the first logged step from which a
  layer's LoRA update norm stays within ``+-rel_tol`` (relative) of its final value.
* **Strategy ranking** (:func:`rank_strategies`, :func:`ranking_verdict`): means with CIs, ranks, and
  Holm-corrected paired tests between adjacent ranks and against the best.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .._optional import require

__all__ = [
    "area_under_curve",
    "auroc",
    "auroc_ci",
    "bootstrap_ci",
    "compare_to_baseline",
    "mde_paired",
    "compare_correlations",
    "holm",
    "layer_stabilisation_step",
    "paired_test",
    "pct_fewer_steps",
    "per_sample_mean_loss",
    "rank_correlation",
    "rank_strategies",
    "ranking_verdict",
    "samples_to_target",
    "spearman_rows",
    "steps_to_target",
    "t_ci",
    "wall_time_to_target",
]

# Resample in blocks of at most this many drawn indices so memory stays bounded (~32 MiB of int64).
_BLOCK = 1 << 22
# Below this n the exact two-sided Wilcoxon test cannot give p < 0.05 (n=6 -> 0.03125).
_WILCOXON_MIN_N = 6


def _stats():
    """scipy.stats, imported lazily: scipy is an optional dependency (the ``examples`` extra)."""
    return require("scipy.stats", "examples", "the statistics of torch_curriculum.metrics")


def _special():
    return require("scipy.special", "examples", "the statistics of torch_curriculum.metrics")


def _as_1d(x: Any, name: str, *, allow_nonfinite: bool = False) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not allow_nonfinite and not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{name} holds a NaN/Inf value at index {bad}")
    return arr


# ---------------------------------------------------------------------------------------------
# Convergence speed and sample efficiency
# ---------------------------------------------------------------------------------------------


def _first_crossing(x: Any, val_losses: Any, target: float, *, interpolate: bool,
                    x_name: str, strictly_increasing: bool) -> float | None:
    xs = _as_1d(x, x_name)
    losses = _as_1d(val_losses, "val_losses", allow_nonfinite=True)
    if xs.shape != losses.shape:
        raise ValueError(f"{x_name} ({xs.size}) and val_losses ({losses.size}) differ in length")
    diffs = np.diff(xs)
    if strictly_increasing and np.any(diffs <= 0):
        i = int(np.flatnonzero(diffs <= 0)[0]) + 1
        raise ValueError(f"{x_name} must be strictly increasing; index {i} ({xs[i]}) follows "
                         f"{xs[i - 1]}")
    if not strictly_increasing and np.any(diffs < 0):
        i = int(np.flatnonzero(diffs < 0)[0]) + 1
        raise ValueError(f"{x_name} must be non-decreasing; index {i} ({xs[i]}) follows "
                         f"{xs[i - 1]}")
    target = float(target)
    if not math.isfinite(target):
        raise ValueError(f"target must be a finite number, got {target}")
    # NaN compares False, so a diverged evaluation never counts as reaching the target.
    hit = np.flatnonzero(losses <= target)
    if hit.size == 0:
        return None
    i = int(hit[0])
    if not interpolate or i == 0 or not np.isfinite(losses[i - 1]):
        return float(xs[i])
    l0, l1 = losses[i - 1], losses[i]
    # l0 > target >= l1 here, so the fraction is in (0, 1].
    frac = (l0 - target) / (l0 - l1)
    return float(xs[i - 1] + frac * (xs[i] - xs[i - 1]))


def steps_to_target(steps: Sequence[float], val_losses: Sequence[float], target: float, *,
                    interpolate: bool = False) -> float | None:
    """Optimizer steps until the validation loss first reaches ``target`` (``loss <= target``).

    Args:
        steps (Sequence[float]): the steps at which validation ran, strictly increasing.
        val_losses (Sequence[float]): validation loss at each of those steps; NaN/Inf (a diverged
            run) never counts as reaching the target.
        target (float): the target validation loss.
        interpolate (bool): if True, place the crossing by linear interpolation between the first
            evaluation at or below the target and the evaluation before it; if False (default),
            return the evaluated step itself. If the very first evaluation is already at or below
            the target, its step is returned either way.

    Returns:
        float | None: the step (a float, fractional when interpolated), or None if never reached.

    Raises:
        ValueError: empty or non-1-D inputs, different lengths, steps not strictly increasing, NaN
            steps, or a non-finite target.

    Example:
        >>> steps_to_target([10, 20, 30], [3.0, 2.0, 1.0], 1.5)
        30.0
        >>> steps_to_target([10, 20, 30], [3.0, 2.0, 1.0], 1.5, interpolate=True)
        25.0
    """
    return _first_crossing(steps, val_losses, target, interpolate=interpolate, x_name="steps",
                           strictly_increasing=True)


def wall_time_to_target(wall_times: Sequence[float], val_losses: Sequence[float], target: float,
                        *, interpolate: bool = False) -> float | None:
    """Wall-clock seconds until the validation loss first reaches ``target``.

    Same rule as :func:`steps_to_target`, on the wall time (seconds since the run started, measured
    when each evaluation ran; non-decreasing) instead of the step. Include or exclude evaluation
    time consistently across the runs you compare.

    Args:
        wall_times (Sequence[float]): wall time at each evaluation, non-decreasing.
        val_losses (Sequence[float]): validation loss at each evaluation.
        target (float): the target validation loss.
        interpolate (bool): linear interpolation between evaluations. Default False.

    Returns:
        float | None: seconds, or None if never reached.

    Raises:
        ValueError: as :func:`steps_to_target` (wall times must be non-decreasing).

    Example:
        >>> wall_time_to_target([1.5, 3.0], [2.0, 1.0], 1.0)
        3.0
    """
    return _first_crossing(wall_times, val_losses, target, interpolate=interpolate,
                           x_name="wall_times", strictly_increasing=False)


def samples_to_target(samples_seen: Sequence[float], val_losses: Sequence[float], target: float,
                      *, interpolate: bool = False) -> float | None:
    """Training samples seen until the validation loss first reaches ``target`` (sample efficiency).

    Same rule as :func:`steps_to_target`, on the cumulative number of training samples drawn before
    each evaluation (non-decreasing; with a fixed batch size it is ``step * batch_size``, but a
    curriculum with a changing pool or a partial last batch makes it differ).

    Args:
        samples_seen (Sequence[float]): samples seen at each evaluation, non-decreasing.
        val_losses (Sequence[float]): validation loss at each evaluation.
        target (float): the target validation loss.
        interpolate (bool): linear interpolation between evaluations. Default False.

    Returns:
        float | None: number of samples (fractional when interpolated), or None if never reached.

    Raises:
        ValueError: as :func:`steps_to_target` (counts must be non-decreasing).

    Example:
        >>> samples_to_target([64, 128, 192], [2.5, 2.1, 1.9], 2.0)
        192.0
    """
    return _first_crossing(samples_seen, val_losses, target, interpolate=interpolate,
                           x_name="samples_seen", strictly_increasing=False)


def pct_fewer_steps(strategy_steps: Any, random_steps: Any) -> Any:
    """Percent fewer steps than the random baseline: ``100 * (random - strategy) / random``.

    Args:
        strategy_steps (float | array-like): steps to target of the strategy.
        random_steps (float | array-like): steps to target of the random baseline (> 0), same shape
            (paired, e.g. by seed).

    Returns:
        float | np.ndarray: a float for scalar inputs, else an array. Positive = faster than random.

    Raises:
        ValueError: a non-positive or non-finite baseline, non-finite strategy steps, or shapes that
            differ.

    Example:
        >>> pct_fewer_steps(75, 100)
        25.0
    """
    s = np.asarray(strategy_steps, dtype=np.float64)
    r = np.asarray(random_steps, dtype=np.float64)
    if s.shape != r.shape:
        raise ValueError(f"strategy_steps {s.shape} and random_steps {r.shape} differ in shape")
    if not np.all(np.isfinite(s)):
        raise ValueError("strategy_steps holds NaN/Inf (a run that never reached the target must "
                         "be censored or excluded explicitly first)")
    if not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise ValueError(f"random_steps must be finite and > 0, got {r.tolist()}")
    out = 100.0 * (r - s) / r
    return float(out) if out.ndim == 0 else out


def per_sample_mean_loss(sample_indices: Any, losses: Any, n_samples: int) -> np.ndarray:
    """Average per-sample training loss over every time each sample was seen (H1's target).

    Args:
        sample_indices (array-like of int): data-set index of every (sample, step) loss record.
        losses (array-like of float): the loss of that sample at that step, same length.
        n_samples (int): data-set size N.

    Returns:
        np.ndarray: float64 ``[N]``; NaN for samples never seen (callers must drop them explicitly).

    Raises:
        ValueError: lengths differ, an index outside ``[0, N)``, or a non-finite loss.

    Example:
        >>> per_sample_mean_loss([0, 1, 0], [1.0, 3.0, 2.0], 3).tolist()
        [1.5, 3.0, nan]
    """
    idx = np.asarray(sample_indices)
    vals = _as_1d(losses, "losses")
    if idx.ndim != 1 or idx.shape != vals.shape:
        raise ValueError(f"sample_indices {idx.shape} and losses {vals.shape} must be 1-D and "
                         "of equal length")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"sample_indices must be integers, got dtype {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= n_samples):
        bad = int(idx[(idx < 0) | (idx >= n_samples)][0])
        raise ValueError(f"sample index {bad} is outside [0, {n_samples})")
    total = np.bincount(idx, weights=vals, minlength=n_samples)
    count = np.bincount(idx, minlength=n_samples)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


# ---------------------------------------------------------------------------------------------
# Confidence intervals and tests
# ---------------------------------------------------------------------------------------------


def _apply_rows(statistic: Callable, samples: np.ndarray) -> np.ndarray:
    """statistic over each row of ``samples``, vectorised with ``axis=-1`` when it supports it."""
    try:
        out = np.asarray(statistic(samples, axis=-1), dtype=np.float64)
        if out.shape == samples.shape[:-1]:
            return out
    except TypeError:
        pass
    return np.array([float(statistic(row)) for row in samples], dtype=np.float64)


def bootstrap_ci(values: Any, statistic: Callable = np.mean, *, n_resamples: int = 10000,
                 confidence: float = 0.95, seed: int = 0,
                 method: str = "percentile") -> tuple[float, float]:
    """Bootstrap confidence interval of ``statistic(values)`` (one sample, resampled with replacement).

    ``percentile``: the ``(1-c)/2`` and ``(1+c)/2`` quantiles of the bootstrap distribution.
    ``bca``: bias-corrected and accelerated (Efron 1987): the quantile levels are shifted by the
    bias ``z0 = Phi^-1(share of resamples below the estimate, ties counted half)`` and the jackknife
    acceleration ``a``. Both use linear interpolation between order statistics (numpy's default),
    as :func:`scipy.stats.bootstrap` does.

    Args:
        values (array-like): 1-D sample, at least 2 finite values.
        statistic (Callable): statistic of a 1-D array; if it accepts ``axis=-1`` it is called on
            all resamples at once. Default :func:`numpy.mean`.
        n_resamples (int): bootstrap resamples. Default 10000.
        confidence (float): confidence level in (0, 1). Default 0.95.
        seed (int): seed of the ``numpy.random.default_rng`` that draws the resamples. Default 0.
        method (str): ``"percentile"`` (default) or ``"bca"``.

    Returns:
        tuple[float, float]: ``(low, high)``. A sample whose bootstrap distribution is a single
        value (all values equal) gives ``(v, v)``.

    Raises:
        ValueError: fewer than 2 values, NaN/Inf, bad confidence, n_resamples < 1, unknown method.

    Example:
        >>> lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0], n_resamples=2000)
        >>> lo < 3.0 < hi
        True
    """
    special = _special()
    x = _as_1d(values, "values")
    if x.size < 2:
        raise ValueError(f"bootstrap_ci needs at least 2 values, got {x.size}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if method not in ("percentile", "bca"):
        raise ValueError(f"method must be 'percentile' or 'bca', got {method!r}")
    n = x.size
    rng = np.random.default_rng(seed)
    per_block = max(1, _BLOCK // n)
    theta_b = np.empty(int(n_resamples), dtype=np.float64)
    for start in range(0, int(n_resamples), per_block):
        stop = min(int(n_resamples), start + per_block)
        idx = rng.integers(0, n, size=(stop - start, n))
        theta_b[start:stop] = _apply_rows(statistic, x[idx])
    alpha = (1.0 - confidence) / 2.0
    if np.ptp(theta_b) == 0.0:
        v = float(theta_b[0])
        return v, v
    if method == "percentile":
        lo, hi = np.percentile(theta_b, [100 * alpha, 100 * (1 - alpha)])
        return float(lo), float(hi)
    theta_hat = float(statistic(x))
    share = (np.sum(theta_b < theta_hat) + np.sum(theta_b <= theta_hat)) / (2.0 * theta_b.size)
    z0 = special.ndtri(share)
    # Jackknife: row i of ``jack`` is x without element i.
    theta_j = np.empty(n, dtype=np.float64)
    rows = max(1, _BLOCK // n)
    for start in range(0, n, rows):
        i = np.arange(start, min(n, start + rows))
        keep = np.arange(n)[None, :] != i[:, None]
        jack = np.broadcast_to(x, keep.shape)[keep].reshape(i.size, n - 1)
        theta_j[start:start + i.size] = _apply_rows(statistic, jack)
    dev = theta_j.mean() - theta_j
    denom = 6.0 * np.sum(dev ** 2) ** 1.5
    a = float(np.sum(dev ** 3) / denom) if denom > 0 else 0.0
    levels = []
    for q in (alpha, 1 - alpha):
        zq = special.ndtri(q)
        levels.append(special.ndtr(z0 + (z0 + zq) / (1 - a * (z0 + zq))))
    lo, hi = np.percentile(theta_b, [100 * levels[0], 100 * levels[1]])
    return float(lo), float(hi)


def t_ci(values: Any, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean: ``mean +- t_{n-1} * sd / sqrt(n)``.

    Used for means over seeds (3-10 values), where a bootstrap interval under-covers badly.

    Args:
        values (array-like): 1-D sample, at least 2 finite values.
        confidence (float): confidence level in (0, 1). Default 0.95.

    Returns:
        tuple[float, float]: ``(low, high)``.

    Raises:
        ValueError: fewer than 2 values, NaN/Inf, or a bad confidence.

    Example:
        >>> t_ci([1.0, 2.0, 3.0])  # doctest: +ELLIPSIS
        (-0.484..., 4.484...)
    """
    stats = _stats()
    x = _as_1d(values, "values")
    if x.size < 2:
        raise ValueError(f"t_ci needs at least 2 values, got {x.size}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    half = stats.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def paired_test(a: Any, b: Any) -> dict[str, Any]:
    """Paired comparison of two matched samples (e.g. two strategies, matched by seed).

    The reported ``p_value`` is the two-sided paired t-test (:func:`scipy.stats.ttest_rel`) on
    ``a - b``. The Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`, two-sided, exact for
    small n) is added when ``n >= 6``: below that its smallest possible p-value is >= 0.0625, so it
    could never flag a difference and is left out (``wilcoxon_p`` is None). If every difference is
    exactly zero both p-values are 1.0 (scipy would give NaN); if every difference is the same
    non-zero number the t-test gives p = 0.0 (zero variance), which is reported as is.

    Args:
        a (array-like): first sample, 1-D, finite.
        b (array-like): second sample, same length (``a[i]`` matched with ``b[i]``), at least 2.

    Returns:
        dict: ``n``, ``mean_diff`` (mean of a - b), ``t_stat``, ``t_p``, ``wilcoxon_stat``,
        ``wilcoxon_p`` (None when n < 6), ``p_value`` (= ``t_p``) and ``test`` (its name).

    Raises:
        ValueError: different lengths, fewer than 2 pairs, or NaN/Inf.

    Example:
        >>> round(paired_test([1.0, 2.0, 3.5], [0.5, 1.0, 2.0])["p_value"], 4)
        0.0742
    """
    stats = _stats()
    x = _as_1d(a, "a")
    y = _as_1d(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a ({x.size}) and b ({y.size}) must have the same length (paired)")
    if x.size < 2:
        raise ValueError(f"paired_test needs at least 2 pairs, got {x.size}")
    d = x - y
    out: dict[str, Any] = {"n": int(x.size), "mean_diff": float(d.mean()),
                           "test": "paired t-test (two-sided)"}
    if np.all(d == 0):
        out.update(t_stat=0.0, t_p=1.0, wilcoxon_stat=None,
                   wilcoxon_p=1.0 if x.size >= _WILCOXON_MIN_N else None, p_value=1.0)
        return out
    if np.ptp(d) == 0.0:
        # Every difference is the same non-zero number: zero variance, t is infinite (scipy gets
        # there too, with a precision warning).
        out["t_stat"] = math.copysign(math.inf, float(d[0]))
        out["t_p"] = 0.0
    else:
        t = stats.ttest_rel(x, y)
        out["t_stat"] = float(t.statistic)
        out["t_p"] = float(t.pvalue)
    if x.size >= _WILCOXON_MIN_N:
        w = stats.wilcoxon(x, y)
        out["wilcoxon_stat"] = float(w.statistic)
        out["wilcoxon_p"] = float(w.pvalue)
    else:
        out["wilcoxon_stat"] = None
        out["wilcoxon_p"] = None
    out["p_value"] = out["t_p"]
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down), in the input order.

    ``adj_(i) = max_{j <= i} min(1, (m - j + 1) * p_(j))`` over the ascending order ``p_(1..m)``.
    A hypothesis is rejected at level alpha when its adjusted p-value is ``<= alpha``.

    Args:
        p_values (Sequence[float]): raw p-values in [0, 1].

    Returns:
        list[float]: adjusted p-values.

    Raises:
        ValueError: a p-value outside [0, 1] or NaN.

    Example:
        >>> holm([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return []
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"p-values must be in [0, 1], got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adj_sorted = np.maximum.accumulate(scaled)
    adj = np.empty(m)
    adj[order] = adj_sorted
    return [round(float(v), 15) for v in adj]


# ---------------------------------------------------------------------------------------------
# Rank correlation (H1)
# ---------------------------------------------------------------------------------------------


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of every row pair of two ``[B, N]`` arrays (average ranks for ties).

    Rows where either side is constant give NaN.

    Args:
        x (np.ndarray): ``[B, N]`` or ``[N]``.
        y (np.ndarray): same shape.

    Returns:
        np.ndarray: ``[B]`` (or a 0-d array for 1-D input).

    Example:
        >>> float(spearman_rows(np.array([1., 2., 3.]), np.array([3., 5., 4.])))
        0.5
    """
    stats = _stats()
    return _pearson_rows(stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1))


def _codes(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense rank codes 0..K-1 of x (equal values share a code) and K."""
    uniq, inv = np.unique(x, return_inverse=True)
    return inv.ravel(), uniq.size


def _resampled_ranks(codes: np.ndarray, k: int, idx: np.ndarray) -> np.ndarray:
    """Average ranks (as scipy.stats.rankdata) of every resample ``x[idx[b]]``, by counting.

    The rank of a value in a resample is (#drawn values below it) + (#drawn equal to it + 1) / 2;
    counting the drawn codes per row gives it in O(B (n + K)) without sorting each resample.
    """
    b = idx.shape[0]
    drawn = codes[idx]
    flat = (np.arange(b)[:, None] * k + drawn).ravel()
    counts = np.bincount(flat, minlength=b * k).reshape(b, k).astype(np.float64)
    below = np.cumsum(counts, axis=1) - counts
    table = below + (counts + 1.0) / 2.0
    return np.take_along_axis(table, drawn, axis=1)


def _pearson_rows(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    num = np.sum(rx * ry, axis=-1)
    den = np.sqrt(np.sum(rx * rx, axis=-1) * np.sum(ry * ry, axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _spearman_boot(cx: tuple[np.ndarray, int], cy: tuple[np.ndarray, int],
                   idx: np.ndarray) -> np.ndarray:
    """Spearman rho of every resample idx[b] (rows), in memory-bounded blocks."""
    n = idx.shape[1]
    per_block = max(1, _BLOCK // max(n, cx[1], cy[1]))
    return np.concatenate([
        _pearson_rows(_resampled_ranks(*cx, idx[s:s + per_block]),
                      _resampled_ranks(*cy, idx[s:s + per_block]))
        for s in range(0, idx.shape[0], per_block)]) if idx.shape[0] else np.empty(0)


def rank_correlation(x: Any, y: Any, *, n_boot: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> dict[str, Any]:
    """Spearman and Kendall (tau-b) correlation with percentile-bootstrap confidence intervals.

    The point estimates and p-values are those of :func:`scipy.stats.spearmanr` (t approximation)
    and :func:`scipy.stats.kendalltau` (tau-b, two-sided). The intervals resample the N (x, y)
    pairs together ``n_boot`` times (seeded) and take the percentile interval; resamples in which
    one side is constant (undefined correlation) are skipped and counted in ``n_boot_undefined``.

    Args:
        x (array-like): 1-D signal (e.g. a difficulty score per sample), finite.
        y (array-like): 1-D target (e.g. per-sample training loss), same length, finite.
        n_boot (int): bootstrap resamples. Default 1000 (Kendall is resampled in a loop).
        confidence (float): CI level. Default 0.95.
        seed (int): seed of the resampling. Default 0.

    Returns:
        dict: ``spearman``, ``spearman_p``, ``kendall``, ``kendall_p``, ``spearman_ci95``,
        ``kendall_ci95`` (``[low, high]`` lists, at level ``confidence``), ``n``,
        ``n_boot_undefined``.

    Raises:
        ValueError: lengths differ, fewer than 3 pairs, NaN/Inf, or a constant x or y.

    Example:
        >>> r = rank_correlation([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], n_boot=200)
        >>> round(r["spearman"], 2), round(r["kendall"], 2)
        (0.8, 0.6)
    """
    stats = _stats()
    xs = _as_1d(x, "x")
    ys = _as_1d(y, "y")
    if xs.shape != ys.shape:
        raise ValueError(f"x ({xs.size}) and y ({ys.size}) must have the same length")
    n = xs.size
    if n < 3:
        raise ValueError(f"rank_correlation needs at least 3 pairs, got {n}")
    for arr, name in ((xs, "x"), (ys, "y")):
        if np.ptp(arr) == 0:
            raise ValueError(f"{name} is constant; a rank correlation is undefined")
    rho = float(spearman_rows(xs, ys))
    # The t approximation scipy.stats.spearmanr uses for its p-value.
    if abs(rho) >= 1.0:
        rho_p = 0.0
    else:
        t = rho * math.sqrt((n - 2) / ((1.0 - rho) * (1.0 + rho)))
        rho_p = float(2 * stats.t.sf(abs(t), n - 2))
    kt = stats.kendalltau(xs, ys)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(int(n_boot), n))
    rho_b = _spearman_boot(_codes(xs), _codes(ys), idx)
    tau_b = np.array([stats.kendalltau(xs[i], ys[i]).statistic for i in idx], dtype=np.float64)
    alpha = (1 - confidence) / 2
    undefined = int(np.sum(~np.isfinite(rho_b)))

    def _pct(v: np.ndarray) -> list[float]:
        v = v[np.isfinite(v)]
        if v.size == 0:
            return [float("nan"), float("nan")]
        lo, hi = np.percentile(v, [100 * alpha, 100 * (1 - alpha)])
        return [float(lo), float(hi)]

    return {"spearman": rho, "spearman_p": rho_p, "kendall": float(kt.statistic),
            "kendall_p": float(kt.pvalue), "spearman_ci95": _pct(rho_b),
            "kendall_ci95": _pct(tau_b), "n": int(n), "n_boot_undefined": undefined}


def compare_correlations(a: Any, b: Any, y: Any, *, n_boot: int = 1000,
                         confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Is signal ``a`` a better rank predictor of ``y`` than signal ``b``? (paired bootstrap)

    The statistic is ``|rho(a, y)| - |rho(b, y)|`` (Spearman). Both correlations are computed on
    the SAME resampled samples, so the interval accounts for their dependence -- unlike comparing
    two separate CIs for overlap.

    Args:
        a (array-like): first signal ``[N]``, finite.
        b (array-like): second signal ``[N]``, finite.
        y (array-like): target ``[N]``, finite.
        n_boot (int): bootstrap resamples. Default 1000.
        confidence (float): CI level. Default 0.95.
        seed (int): resampling seed. Default 0.

    Returns:
        dict: ``diff_abs_spearman`` (point estimate), ``ci95`` (``[low, high]`` percentile
        interval at level ``confidence``), ``n``, ``a_better`` / ``b_better`` (True when the
        interval lies entirely above / below 0).

    Raises:
        ValueError: lengths differ, fewer than 3 samples, NaN/Inf, or a constant input.

    Example:
        >>> y = np.arange(20.0)
        >>> r = compare_correlations(y, np.sin(y), y, n_boot=200)
        >>> r["a_better"]
        True
    """
    xa, xb, ys = _as_1d(a, "a"), _as_1d(b, "b"), _as_1d(y, "y")
    if not xa.size == xb.size == ys.size:
        raise ValueError(f"a ({xa.size}), b ({xb.size}) and y ({ys.size}) must have equal length")
    if ys.size < 3:
        raise ValueError(f"compare_correlations needs at least 3 samples, got {ys.size}")
    for arr, name in ((xa, "a"), (xb, "b"), (ys, "y")):
        if np.ptp(arr) == 0:
            raise ValueError(f"{name} is constant; a rank correlation is undefined")
    n = ys.size
    point = float(abs(spearman_rows(xa, ys)) - abs(spearman_rows(xb, ys)))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(int(n_boot), n))
    cy = _codes(ys)
    d = np.abs(_spearman_boot(_codes(xa), cy, idx)) - np.abs(_spearman_boot(_codes(xb), cy, idx))
    d = d[np.isfinite(d)]
    alpha = (1 - confidence) / 2
    lo, hi = (np.percentile(d, [100 * alpha, 100 * (1 - alpha)]) if d.size
              else (math.nan, math.nan))
    return {"diff_abs_spearman": point, "ci95": [float(lo), float(hi)], "n": int(n),
            "a_better": bool(lo > 0), "b_better": bool(hi < 0)}


# ---------------------------------------------------------------------------------------------
# Per-layer analysis
# ---------------------------------------------------------------------------------------------


def layer_stabilisation_step(steps: Any, norms: Any, *, rel_tol: float = 0.05,
                             window: int = 1) -> np.ndarray:
    """Step at which each layer's LoRA update norm stabilises (per-layer convergence speed).

    Rule: the final value of layer l is ``f_l`` = mean of its last ``window`` logged norms. The
    layer has stabilised at the first logged step ``steps[t]`` such that for every ``t' >= t``,
    ``|norms[t', l] - f_l| <= rel_tol * |f_l|``. With ``window=1`` the last point always qualifies,
    so every layer gets a step (the last one at worst); with ``window > 1`` a layer whose last
    ``window`` norms spread more than ``rel_tol`` around their mean never stabilises (NaN). A layer
    frozen the whole run (norm 0 throughout) stabilises at the first step.

    Args:
        steps (array-like): ``[T]`` logged steps, strictly increasing.
        norms (array-like): ``[T]`` or ``[T, L]`` update norms (``||delta W||_F`` of the layer's
            generated LoRA, or any per-layer quantity), finite.
        rel_tol (float): relative tolerance band around the final value. Default 0.05.
        window (int): how many final points define the final value, 1 <= window <= T. Default 1.

    Returns:
        np.ndarray: float64 ``[L]`` steps (a 0-d array for 1-D ``norms``); NaN where never stable.

    Raises:
        ValueError: shape mismatch, steps not strictly increasing, NaN/Inf norms, rel_tol < 0, or a
            bad window.

    Example:
        >>> layer_stabilisation_step([1, 2, 3, 4], [[0.0, 1.0], [0.5, 1.0], [0.98, 1.0], [1.0, 1.0]])
        array([3., 1.])
    """
    s = _as_1d(steps, "steps")
    if np.any(np.diff(s) <= 0):
        raise ValueError("steps must be strictly increasing")
    if hasattr(norms, "detach"):
        norms = norms.detach().cpu().numpy()
    v = np.asarray(norms, dtype=np.float64)
    squeeze = v.ndim == 1
    if squeeze:
        v = v[:, None]
    if v.ndim != 2 or v.shape[0] != s.size:
        raise ValueError(f"norms must have shape [T] or [T, L] with T = len(steps) = {s.size}, "
                         f"got {np.asarray(norms).shape}")
    if not np.all(np.isfinite(v)):
        t, layer = np.argwhere(~np.isfinite(v))[0]
        raise ValueError(f"norms holds NaN/Inf at step index {t}, layer {layer}")
    if rel_tol < 0:
        raise ValueError(f"rel_tol must be >= 0, got {rel_tol}")
    if not 1 <= int(window) <= s.size:
        raise ValueError(f"window must be in [1, {s.size}], got {window}")
    final = v[-int(window):].mean(axis=0)
    inside = np.abs(v - final) <= rel_tol * np.abs(final)
    # stays[t, l]: inside at t and at every later step (reverse cumulative AND).
    stays = np.logical_and.accumulate(inside[::-1], axis=0)[::-1]
    first = np.argmax(stays, axis=0)
    out = np.where(stays.any(axis=0), s[first], np.nan)
    return out[0] if squeeze else out


# ---------------------------------------------------------------------------------------------
# Ranking strategies (H3)
# ---------------------------------------------------------------------------------------------


def rank_strategies(per_strategy_values: Mapping[str, Sequence[float]], *,
                    lower_is_better: bool = True, seed: int = 0, confidence: float = 0.95,
                    alpha: float = 0.05, ci_method: str = "t") -> list[dict[str, Any]]:
    """Rank strategies by their mean over seeds, with CIs and Holm-corrected paired tests.

    ``per_strategy_values[s][i]`` is strategy s's value on seed i (the same seed order for every
    strategy: the tests are paired by position). Strategies are sorted by mean (ascending when
    ``lower_is_better``); rank 1 is the best. Two families of paired t-tests (see
    :func:`paired_test`), each Holm-corrected over its k-1 comparisons: each strategy against the
    next one in the ranking (``*_vs_next``) and each against the best (``*_vs_best``).

    Args:
        per_strategy_values (Mapping[str, Sequence[float]]): values per strategy, equal lengths
            >= 2, finite.
        lower_is_better (bool): True for losses/steps. Default True.
        seed (int): seed of the bootstrap when ``ci_method="bootstrap"``. Default 0.
        confidence (float): CI level. Default 0.95.
        alpha (float): significance level for the Holm-adjusted p-values. Default 0.05.
        ci_method (str): ``"t"`` (Student t over seeds, default) or ``"bootstrap"`` (percentile).

    Returns:
        list[dict]: one dict per strategy, best first: ``strategy``, ``rank``, ``mean``, ``std``,
        ``ci95`` (``[low, high]``), ``n``, ``values``, ``p_vs_next``, ``p_holm_vs_next``,
        ``significant_vs_next``, ``p_vs_best``, ``p_holm_vs_best``, ``significant_vs_best`` (the
        last strategy has no "next" and the best no "best": those fields are None).

    Raises:
        ValueError: no strategies, unequal lengths, fewer than 2 values, NaN/Inf, bad ci_method.

    Example:
        >>> r = rank_strategies({"a": [1.0, 2.0, 3.0], "b": [2.0, 3.1, 4.0]})
        >>> [row["strategy"] for row in r]
        ['a', 'b']
    """
    if not per_strategy_values:
        raise ValueError("per_strategy_values is empty")
    if ci_method not in ("t", "bootstrap"):
        raise ValueError(f"ci_method must be 't' or 'bootstrap', got {ci_method!r}")
    vals = {name: _as_1d(v, f"per_strategy_values[{name!r}]")
            for name, v in per_strategy_values.items()}
    lengths = {name: v.size for name, v in vals.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"every strategy needs the same number of seeds (paired), got {lengths}")
    n = next(iter(lengths.values()))
    if n < 2:
        raise ValueError(f"rank_strategies needs at least 2 values per strategy, got {n}")
    sign = 1.0 if lower_is_better else -1.0
    order = sorted(vals, key=lambda k: (sign * vals[k].mean(), k))
    rows: list[dict[str, Any]] = []
    for rank, name in enumerate(order, start=1):
        v = vals[name]
        ci = (t_ci(v, confidence) if ci_method == "t"
              else bootstrap_ci(v, n_resamples=10000, confidence=confidence, seed=seed))
        rows.append({"strategy": name, "rank": rank, "mean": float(v.mean()),
                     "std": float(v.std(ddof=1)), "ci95": [ci[0], ci[1]], "n": int(n),
                     "values": v.tolist(), "p_vs_next": None, "p_holm_vs_next": None,
                     "significant_vs_next": None, "p_vs_best": None, "p_holm_vs_best": None,
                     "significant_vs_best": None})
    k = len(order)
    if k > 1:
        p_next = [paired_test(vals[order[i]], vals[order[i + 1]])["p_value"] for i in range(k - 1)]
        p_best = [paired_test(vals[order[0]], vals[order[i]])["p_value"] for i in range(1, k)]
        for i, (p, ph) in enumerate(zip(p_next, holm(p_next))):
            rows[i].update(p_vs_next=p, p_holm_vs_next=ph, significant_vs_next=bool(ph <= alpha))
        for i, (p, ph) in enumerate(zip(p_best, holm(p_best)), start=1):
            rows[i].update(p_vs_best=p, p_holm_vs_best=ph, significant_vs_best=bool(ph <= alpha))
    return rows


def compare_to_baseline(per_strategy_by_seed: Mapping[str, Mapping[int, float]], baseline: str, *,
                        confidence: float = 0.95, alpha: float = 0.05, power: float = 0.8,
                        judged_alone: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Each strategy against one baseline on a metric, paired by seed, Holm-corrected over strategies.

    Unlike :func:`rank_strategies`, which needs the seeds every strategy has, each comparison uses
    every seed that strategy shares with the baseline (an unfinished benchmark loses no pairs). The
    difference is ``strategy - baseline`` (negative = lower than the baseline); its mean gets a
    Student-t CI (:func:`t_ci`) and a two-sided paired t-test (:func:`paired_test`). The p-values of
    the strategies with >= 2 pairs, less those ``judged_alone`` (e.g. a positive control, which
    calibrates the instrument rather than competes), form one Holm family.

    Args:
        per_strategy_by_seed (Mapping[str, Mapping[int, float]]): value per strategy per seed;
            the baseline must be one of the strategies. Values must be finite.
        baseline (str): the strategy every other one is compared with.
        confidence (float): CI level. Default 0.95.
        alpha (float): significance level of the Holm-adjusted (or, judged alone, the raw)
            p-value. Default 0.05.
        power (float): power of the minimum detectable difference ``mde`` (:func:`mde_paired`, in
            the metric's units, before Holm). Default 0.8.
        judged_alone (Sequence[str]): strategies left out of the Holm family; their ``p_holm`` is
            their raw p-value. Default none.

    Returns:
        dict: per strategy other than the baseline, ``{"seeds", "n", "mean_diff", "ci95", "p_value",
        "p_holm", "significant", "direction", "mde", "values", "baseline_values"}``; ``direction`` is
        ``"lower"``/``"higher"`` when significant (Holm-adjusted p <= alpha and the CI excludes 0),
        else None. A strategy with fewer than 2 seeds shared with the baseline gets ``n`` and None
        for the statistics.

    Raises:
        ValueError: the baseline has no values, a value is NaN/Inf, or a bad ``confidence``.

    Example:
        >>> r = compare_to_baseline({"random": {0: 4.0, 1: 4.1, 2: 3.9},
        ...                          "a": {0: 3.8, 1: 3.95, 2: 3.7}}, "random")
        >>> round(r["a"]["mean_diff"], 3), r["a"]["direction"]
        (-0.183, 'lower')
    """
    if baseline not in per_strategy_by_seed or not per_strategy_by_seed[baseline]:
        raise ValueError(f"the baseline {baseline!r} has no values; strategies: {sorted(per_strategy_by_seed)}")
    base = per_strategy_by_seed[baseline]
    out: dict[str, dict[str, Any]] = {}
    for name, by_seed in per_strategy_by_seed.items():
        if name == baseline:
            continue
        seeds = sorted(set(by_seed) & set(base))
        a = _as_1d([by_seed[k] for k in seeds], f"{name!r} values") if seeds else np.empty(0)
        b = _as_1d([base[k] for k in seeds], f"{baseline!r} values") if seeds else np.empty(0)
        row: dict[str, Any] = {"seeds": seeds, "n": len(seeds), "mean_diff": None, "ci95": None,
                               "p_value": None, "p_holm": None, "significant": None, "direction": None,
                               "mde": None, "values": a.tolist(), "baseline_values": b.tolist()}
        if len(seeds) >= 2:
            lo, hi = t_ci(a - b, confidence)
            row.update(mean_diff=float((a - b).mean()), ci95=[lo, hi], p_value=paired_test(a, b)["p_value"],
                       mde=mde_paired(a - b, alpha=alpha, power=power))
        out[name] = row
    family = [k for k, r in out.items() if r["p_value"] is not None and k not in judged_alone]
    for k, ph in zip(family, holm([out[k]["p_value"] for k in family])):
        out[k]["p_holm"] = ph
    for k, r in out.items():
        if r["p_value"] is None:
            continue
        if k not in family:
            r["p_holm"] = r["p_value"]
        lo, hi = r["ci95"]
        r["significant"] = bool(r["p_holm"] <= alpha and (lo > 0 or hi < 0))
        r["direction"] = ("lower" if hi < 0 else "higher") if r["significant"] else None
    return out


def ranking_verdict(ranking: Sequence[Mapping[str, Any]], *, metric: str = "the metric",
                    alpha: float = 0.05) -> str:
    """One plain-language paragraph about a :func:`rank_strategies` result.

    It names the best strategy by mean, says which strategies it is *not* significantly better
    than (Holm-adjusted paired t-test), lists the significant adjacent steps, and says outright
    when no difference is significant.

    Args:
        ranking (Sequence[Mapping]): output of :func:`rank_strategies`.
        metric (str): what was ranked, for the sentence (e.g. ``"steps to target"``).
        alpha (float): significance level used for the ``significant_*`` flags. Default 0.05.

    Returns:
        str: the verdict.

    Raises:
        ValueError: an empty ranking.

    Example:
        >>> ranking_verdict(rank_strategies({"a": [1.0, 2.0, 3.0], "b": [1.1, 2.0, 2.9]}))[:28]
        'No difference in the metric '
    """
    if not ranking:
        raise ValueError("ranking is empty")
    n = ranking[0]["n"]
    best = ranking[0]["strategy"]
    if len(ranking) == 1:
        return f"Only one strategy ({best}) was run; nothing to rank."
    tied = [r["strategy"] for r in ranking[1:] if not r["significant_vs_best"]]
    adjacent = [f"{r['strategy']} ahead of {nxt['strategy']}"
                for r, nxt in itertools.pairwise(ranking) if r["significant_vs_next"]]
    test = f"paired t-test over {n} seeds, Holm-corrected, alpha={alpha}"
    if not adjacent and len(tied) == len(ranking) - 1:
        return (f"No difference in {metric} between the strategies is significant ({test}); "
                f"{best} has the best mean, but the ranking may be noise.")
    if not tied:
        head = f"{best} is best on {metric} and significantly better than every other strategy"
    else:
        head = (f"{best} has the best mean {metric}, but it is not significantly better than "
                f"{', '.join(tied)}")
    tail = (f"; significant adjacent steps: {'; '.join(adjacent)}" if adjacent
            else "; no adjacent step in the ranking is significant")
    return f"{head} ({test}){tail}."


# ---------------------------------------------------------------------------------------------
# Budget-free convergence, detection of injected noise, power
# ---------------------------------------------------------------------------------------------


def area_under_curve(steps: Sequence[float], val_losses: Sequence[float]) -> float:
    """Mean validation loss over training: the trapezoid area under the curve / the step span.

    A budget-free convergence measure (no target needed): lower means the run was lower on
    average over the whole budget. Curves of runs compared with it must share their first and last
    evaluation step.

    Args:
        steps (Sequence[float]): evaluation steps, strictly increasing, at least 2.
        val_losses (Sequence[float]): validation loss at each step, finite.

    Returns:
        float: ``trapezoid(val_losses, steps) / (steps[-1] - steps[0])``.

    Raises:
        ValueError: lengths differ, fewer than 2 points, non-increasing steps, NaN/Inf.

    Example:
        >>> area_under_curve([0, 10, 20], [3.0, 2.0, 2.0])
        2.25
    """
    x = _as_1d(steps, "steps")
    y = _as_1d(val_losses, "val_losses")
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"steps ({x.size}) and val_losses ({y.size}) must have the same length >= 2")
    if np.any(np.diff(x) <= 0):
        raise ValueError("steps must be strictly increasing")
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0 / (x[-1] - x[0]))


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve of ``scores`` at flagging ``labels == 1`` (Mann-Whitney U / n1 n0).

    Ties between a positive and a negative count one half. 0.5 = chance, 1 = every positive scores
    above every negative, 0 = every positive below (the signal flags them in the other direction).

    Args:
        scores (array-like): 1-D finite scores.
        labels (array-like): 1-D 0/1 labels, same length, both classes present.

    Returns:
        float: the AUROC.

    Raises:
        ValueError: lengths differ, NaN/Inf, labels not 0/1, or one class missing.

    Example:
        >>> auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        0.75
    """
    stats = _stats()
    x = _as_1d(scores, "scores")
    y = _as_1d(labels, "labels")
    if x.shape != y.shape:
        raise ValueError(f"scores ({x.size}) and labels ({y.size}) must have the same length")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        raise ValueError(f"auroc needs both classes, got {n1} positive(s) and {n0} negative(s)")
    r = stats.rankdata(x)
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def auroc_ci(scores: Any, labels: Any, *, n_boot: int = 1000, confidence: float = 0.95,
             seed: int = 0) -> dict[str, Any]:
    """AUROC with a stratified percentile-bootstrap CI (positives and negatives resampled apart).

    Args:
        scores (array-like): 1-D finite scores.
        labels (array-like): 0/1 labels.
        n_boot (int): resamples. Default 1000.
        confidence (float): CI level. Default 0.95.
        seed (int): resampling seed. Default 0.

    Returns:
        dict: ``auroc``, ``ci95`` ([low, high]), ``n``, ``n_positive``.

    Raises:
        ValueError: as :func:`auroc`; n_boot < 10.

    Example:
        >>> r = auroc_ci([0.1, 0.4, 0.35, 0.8, 0.9, 0.2], [0, 0, 1, 1, 1, 0], n_boot=200)
        >>> r["ci95"][0] <= r["auroc"] <= r["ci95"][1]
        True
    """
    if n_boot < 10:
        raise ValueError(f"n_boot must be >= 10, got {n_boot}")
    stats = _stats()
    est = auroc(scores, labels)
    x = _as_1d(scores, "scores")
    y = _as_1d(labels, "labels")
    pos, neg = x[y == 1], x[y == 0]
    rng = np.random.default_rng(seed)
    vals = np.empty(n_boot)
    for b in range(n_boot):
        p = pos[rng.integers(0, pos.size, pos.size)]
        q = neg[rng.integers(0, neg.size, neg.size)]
        r = stats.rankdata(np.concatenate([p, q]))
        vals[b] = (r[:p.size].sum() - p.size * (p.size + 1) / 2.0) / (p.size * q.size)
    a = (1 - confidence) / 2
    return {"auroc": est, "ci95": [float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))],
            "n": int(x.size), "n_positive": int(pos.size)}


def mde_paired(differences: Any, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable effect of a two-sided paired (one-sample) t-test at ``power``.

    The smallest true mean difference ``delta`` that a t-test on ``n`` paired differences with the
    observed standard deviation ``sd`` would reject at ``alpha`` with probability ``power``. Solved
    exactly with the noncentral t distribution: ``P(|T| > t_{1-alpha/2, n-1}) = power`` where
    ``T ~ nct(n - 1, delta * sqrt(n) / sd)`` (both tails counted). In the units of
    ``differences`` (e.g. % fewer steps per seed).

    Args:
        differences (array-like): per-seed paired differences (or per-seed % changes), n >= 2.
        alpha (float): two-sided significance level. Default 0.05.
        power (float): target power in (alpha, 1). Default 0.8.

    Returns:
        float: the MDE (>= 0); 0.0 when every difference is equal (zero variance).

    Raises:
        ValueError: fewer than 2 values, NaN/Inf, alpha/power out of range.

    Example:
        >>> round(mde_paired([10.0, -5.0, 20.0, 0.0, 5.0]), 1)
        16.2
    """
    stats = _stats()
    d = _as_1d(differences, "differences")
    if d.size < 2:
        raise ValueError(f"mde_paired needs at least 2 differences, got {d.size}")
    if not 0 < alpha < 1 or not alpha < power < 1:
        raise ValueError(f"need 0 < alpha < power < 1, got alpha={alpha}, power={power}")
    n = d.size
    sd = float(np.std(d, ddof=1))
    if sd == 0.0:
        return 0.0
    df = n - 1
    crit = float(stats.t.ppf(1 - alpha / 2, df))

    def pw(delta: float) -> float:
        nc = delta * math.sqrt(n) / sd
        v = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
        # scipy's noncentral t can return NaN far in the tail (df = 1, huge nc): power is ~1 there
        return v if math.isfinite(v) else 1.0

    lo, hi = 0.0, sd
    while pw(hi) < power:
        lo, hi = hi, hi * 2.0
    for _ in range(200):  # bisection: power is increasing in delta
        mid = (lo + hi) / 2.0
        if pw(mid) < power:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-10 * sd:
            break
    return float((lo + hi) / 2.0)
