"""Bootstrap confidence intervals, one vocabulary for the whole project, and Holm's correction.

Every interval here is a *percentile bootstrap*: draw ``n_resamples`` resamples of the data with
replacement, compute the statistic on each, and report the ``(1 - confidence) / 2`` and
``(1 + confidence) / 2`` quantiles of the ``n_resamples`` statistics (linear interpolation, numpy's
default). The point estimate is the statistic on the data itself. Every function takes the same three
keywords: ``confidence`` (e.g. 0.95), ``n_resamples`` and ``seed`` (an int or a
:class:`numpy.random.Generator`), so the same call gives the same interval. Resampling is vectorised
(one index array of shape ``[n_resamples, n]``, one gather, one mean).

Estimators:

* :func:`bootstrap_ci` — items are the only source of variation (one model): resample items. Works
  over the last axis of an array, so many intervals are computed at once. For a 1-D sample its
  resampled means are bit for bit those of ``scipy.stats.bootstrap((x,), np.mean, method="percentile",
  n_resamples=..., rng=np.random.default_rng(seed))`` and so is its interval up to the last bit of the
  quantile interpolation (scipy >= 1.15 interpolates with ``scipy.stats.quantile``, numpy's differs by
  about 1e-16).
* :func:`cluster_bootstrap_ci` — rows come in groups (templates, entities) and possibly several split
  seeds: resample whole groups of every seed's test rows, average over seeds (probes).
* :func:`nan_bootstrap_ci` — mean over the first axis of a tensor of per-item values with NaN rows
  ignored (attention scores per head); torch's seeded generator draws the items.
* :func:`ratio_bootstrap_ci` — ``(mean(v) - mean(bottom)) / (mean(top) - mean(bottom))`` per cell with
  one item resample shared by the cells and both anchors (patching's normalised scale, faithfulness).
* :func:`hierarchical_bootstrap_ci` — a *recipe* is trained with several seeds and every seed's model
  is scored on the same items: the data is a ``[seeds, items]`` matrix. Each resample first draws
  seeds with replacement, then items with replacement, and averages the chosen cells. The design is
  *crossed* (every seed sees the same items), so by default one item resample is shared by all seeds of
  a replicate (``crossed=True``): an item's difficulty is common to all seeds and must not average out
  over them. With ``crossed=False`` the items are redrawn independently for every drawn seed (the
  textbook nested bootstrap, for seeds scored on different items). With one seed both reduce to
  :func:`bootstrap_ci` over items; with items that do not vary within a seed they reduce to
  :func:`bootstrap_ci` over the seed means.
* :func:`paired_hierarchical_bootstrap_means` — the same for two recipes paired by seed and item (seed
  ``s`` of both scored on the same items): one seed draw and one item draw serve both, so differences
  and ratios of the two means are resampled as paired statistics (:mod:`codetransfer.analysis.compare`).
* :func:`relative_change_ci` — the paper's headline numbers ("+8.2% relative") are
  ``mean(recipe) / mean(baseline) - 1``. Both recipes are resampled hierarchically; recipes are
  different models so their seeds are drawn independently, but when both were scored on the same
  items (``paired_items=True``, the default) one item resample is shared by the two, which removes the
  item-difficulty variance that is common to both from the ratio.

:func:`holm` is Holm's step-down adjustment of a family of p-values.

:func:`seed_t_interval` is the one interval here that is not a bootstrap: the Student t interval of the
mean of a handful of per-seed summaries (one number per training seed, e.g. a probe's selectivity minus
its random-init twin's). A percentile bootstrap over 3 values is ``[min, max]``, about a 75% interval
(all three draws equal the smallest with probability 1/27 > 2.5%); the t interval with ``n - 1`` degrees
of freedom has its nominal coverage when the per-seed values are roughly normal.

Percentile intervals under-cover slightly for small samples (a few percent at n ≈ 30 items, more with
very few seeds); ``tests/test_stats.py`` checks coverage on simulated Bernoulli data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from jaxtyping import Float

from codetransfer.errors import CodetransferError

if TYPE_CHECKING:
    from torch import Tensor

#: Bootstrap replicates processed at once (bounds the memory of the ``[chunk, seeds, items]`` gathers).
_CHUNK_CELLS = 4_000_000


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval (a percentile bootstrap, except :func:`seed_t_interval`'s)."""

    value: float
    """The statistic on the data itself."""
    low: float
    """Lower end of the interval (quantile ``(1 - confidence) / 2`` of the bootstrap statistics)."""
    high: float
    """Upper end of the interval (quantile ``(1 + confidence) / 2``)."""


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check(confidence: float, n_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise CodetransferError(
            f"confidence: expected a confidence level between 0 and 1 (e.g. 0.95), got {confidence}"
        )
    if n_resamples < 10:
        raise CodetransferError(f"n_resamples: expected at least 10 bootstrap resamples (e.g. 2000), got {n_resamples}")


def _as_matrix(values, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise CodetransferError(
            f"{name}: expected a non-empty [seeds, items] matrix (or a 1-D array of items), got shape {x.shape}"
        )
    if not np.isfinite(x).all():
        raise CodetransferError(f"{name}: contains NaN or infinite values; drop or fix those items first")
    return x


def bootstrap_means(
    values: Float[np.ndarray, "*batch n"], n_resamples: int = 2000, seed: int | np.random.Generator = 0
) -> Float[np.ndarray, "*batch n_resamples"]:
    """Means of ``n_resamples`` item resamples, drawn independently for every leading index."""
    x = np.asarray(values, dtype=np.float64)
    n = x.shape[-1]
    if n == 0:
        raise CodetransferError("values: expected at least one item to bootstrap, got an empty array")
    rng = _rng(seed)
    flat = x.reshape(-1, n)
    out = np.empty((flat.shape[0], n_resamples))
    chunk = max(1, _CHUNK_CELLS // max(1, n))
    for row in range(flat.shape[0]):
        for s in range(0, n_resamples, chunk):
            idx = rng.integers(0, n, size=(min(chunk, n_resamples - s), n))
            out[row, s : s + idx.shape[0]] = flat[row][idx].mean(axis=1)
    return out.reshape(*x.shape[:-1], n_resamples)


def bootstrap_ci(
    values: Float[np.ndarray, "*batch n"],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, low, high)`` over the last axis: percentile bootstrap over items.

    For a 1-D input the three are 0-d arrays (use ``float(...)``); for ``[k, n]`` they have shape ``[k]``.
    """
    _check(confidence, n_resamples)
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise CodetransferError(f"values: expected at least one item to bootstrap, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise CodetransferError("values: contains NaN or infinite values; drop or fix those items first")
    boots = bootstrap_means(x, n_resamples, seed)
    low, high = np.quantile(boots, [(1 - confidence) / 2, (1 + confidence) / 2], axis=-1)
    return x.mean(axis=-1), low, high


def hierarchical_bootstrap_means(
    values: Float[np.ndarray, "seeds items"],
    n_resamples: int = 2000,
    seed: int | np.random.Generator = 0,
    crossed: bool = True,
    item_idx: np.ndarray | None = None,
) -> Float[np.ndarray, " n_resamples"]:
    """Means of ``n_resamples`` resamples: seeds with replacement, then items with replacement.

    ``item_idx`` (``[n_resamples, items]``) fixes the item resamples (to share them with another recipe);
    it implies ``crossed=True``.
    """
    x = _as_matrix(values, "values")
    s, n = x.shape
    rng = _rng(seed)
    out = np.empty(n_resamples)
    cells = s * n
    chunk = max(1, _CHUNK_CELLS // cells)
    for a in range(0, n_resamples, chunk):
        b = min(n_resamples, a + chunk)
        seeds = rng.integers(0, s, size=(b - a, s))
        if item_idx is not None:
            items = item_idx[a:b][:, None, :]
        elif crossed:
            items = rng.integers(0, n, size=(b - a, 1, n))
        else:
            items = rng.integers(0, n, size=(b - a, s, n))
        out[a:b] = x[seeds[:, :, None], items].mean(axis=(1, 2))
    return out


def hierarchical_bootstrap_ci(
    values: Float[np.ndarray, "seeds items"],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int | np.random.Generator = 0,
    crossed: bool = True,
) -> Interval:
    """Mean over seeds and items with a seeds-then-items percentile bootstrap interval.

    ``values[i, j]`` is the score of seed ``i``'s model on item ``j``. See the module docstring for
    ``crossed``.
    """
    _check(confidence, n_resamples)
    x = _as_matrix(values, "values")
    boots = hierarchical_bootstrap_means(x, n_resamples, seed, crossed)
    low, high = np.quantile(boots, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(float(x.mean()), float(low), float(high))


def relative_change_ci(
    recipe: Float[np.ndarray, "seeds items"],
    baseline: Float[np.ndarray, "seeds2 items2"],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int | np.random.Generator = 0,
    paired_items: bool = True,
) -> Interval:
    """``mean(recipe) / mean(baseline) - 1`` with a bootstrap interval of the ratio.

    Rows are seeds, columns items. With ``paired_items`` (both scored on the same items, columns
    aligned) every replicate uses one item resample for both recipes; seeds are always drawn
    independently. A replicate whose baseline mean is 0 gives an infinite ratio (kept, so that an
    interval reaching infinity says the baseline is too close to 0 to divide by).
    """
    _check(confidence, n_resamples)
    r = _as_matrix(recipe, "recipe")
    b = _as_matrix(baseline, "baseline")
    base_mean = b.mean()
    if base_mean == 0:
        raise CodetransferError(
            "baseline: its mean is 0, so a relative change is undefined; compare differences instead"
        )
    rng = _rng(seed)
    if paired_items:
        if r.shape[1] != b.shape[1]:
            raise CodetransferError(
                f"paired_items: recipe has {r.shape[1]} items but baseline has {b.shape[1]}; score both on "
                "the same items or pass paired_items=False"
            )
        idx = rng.integers(0, r.shape[1], size=(n_resamples, r.shape[1]))
        br = hierarchical_bootstrap_means(r, n_resamples, rng, item_idx=idx)
        bb = hierarchical_bootstrap_means(b, n_resamples, rng, item_idx=idx)
    else:
        br = hierarchical_bootstrap_means(r, n_resamples, rng)
        bb = hierarchical_bootstrap_means(b, n_resamples, rng)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = br / bb - 1.0
    ratios = np.where(np.isnan(ratios), np.inf, ratios)
    low, high = np.quantile(ratios, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(float(r.mean() / base_mean - 1.0), float(low), float(high))


def cluster_bootstrap_ci(
    values: Sequence[np.ndarray] | np.ndarray,
    groups: Sequence[np.ndarray] | np.ndarray | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap interval of per-row ``values`` (e.g. 0/1 correctness), by cluster.

    ``values`` is one array, or a list of arrays (one per split seed; the statistic is the mean over
    seeds of each seed's mean). ``groups`` (same structure) makes it a cluster bootstrap: each resample
    draws whole groups with replacement and the seed's statistic is the drawn rows' mean (sum of the
    drawn groups' sums over the sum of their sizes). Without groups every row is its own group.

    Returns ``(value, ci_low, ci_high)``.
    """
    if not 0.0 < confidence < 1.0:
        raise CodetransferError(
            f"confidence: expected a confidence level between 0 and 1 (e.g. 0.95), got {confidence}"
        )
    if isinstance(values, np.ndarray) and values.ndim == 1:
        values = [values]
        groups = None if groups is None else [np.asarray(groups)]
    values = [np.asarray(v, dtype=float) for v in values]
    if len(values) == 0 or any(len(v) == 0 for v in values):
        raise CodetransferError("values: expected non-empty arrays to bootstrap")
    if groups is None:
        groups = [np.arange(len(v)) for v in values]
    if len(groups) != len(values) or any(len(g) != len(v) for g, v in zip(groups, values)):
        raise CodetransferError("groups: expected one group id per value (same structure as values)")
    rng = _rng(seed)
    stats = np.zeros(n_resamples)
    point = float(np.mean([v.mean() for v in values]))
    for v, g in zip(values, groups):
        uniq, inv = np.unique(np.asarray(g), return_inverse=True)
        sums = np.bincount(inv, weights=v, minlength=len(uniq))
        counts = np.bincount(inv, minlength=len(uniq)).astype(float)
        draws = rng.integers(0, len(uniq), size=(n_resamples, len(uniq)))
        stats += sums[draws].sum(1) / counts[draws].sum(1)
    stats /= len(values)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return point, float(lo), float(hi)


def nan_bootstrap_ci(
    values: Float[Tensor, "n ..."], *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean, low, high)`` over the first axis (float32 tensors shaped ``values.shape[1:]``), NaN rows ignored.

    A percentile bootstrap over the ``n`` items (rows), drawn by ``torch.Generator().manual_seed(seed)``;
    every trailing cell uses the same item resamples. With fewer than 2 rows or ``n_resamples < 1`` the
    interval is the point.
    """
    import torch

    if not 0.0 < confidence < 1.0:
        raise CodetransferError(
            f"confidence: expected a confidence level between 0 and 1 (e.g. 0.95), got {confidence}"
        )
    v = torch.as_tensor(values).double()
    mean = torch.nanmean(v, dim=0)
    if v.shape[0] < 2 or n_resamples < 1:
        return mean.float(), mean.float(), mean.float()
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, v.shape[0], (n_resamples, v.shape[0]), generator=gen)
    boots = torch.nanmean(v[idx], dim=1)
    alpha = 1 - confidence
    lo = torch.nanquantile(boots, alpha / 2, dim=0)
    hi = torch.nanquantile(boots, 1 - alpha / 2, dim=0)
    return mean.float(), lo.float(), hi.float()


def ratio_bootstrap_ci(
    values: Float[np.ndarray, "cell batch"],
    top: Float[np.ndarray, " batch"],
    bottom: Float[np.ndarray, " batch"],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean(values) - mean(bottom)) / (mean(top) - mean(bottom))`` per cell, with a percentile bootstrap.

    ``values[c, i]``, ``top[i]``, ``bottom[i]`` are scores on item ``i`` (numpy arrays or CPU tensors).
    Each resample draws items with replacement, the same draw for every cell and both anchors (they
    were all measured on the same items). NaN where the gap ``mean(top) - mean(bottom)`` is zero (or,
    in the interval, where every resample's gap is); with fewer than 2 items the interval is NaN.
    Returns ``(point, low, high)``, each of shape ``[cell]``.
    """
    v = np.asarray(values, dtype=np.float64)
    t, b = np.asarray(top, dtype=np.float64), np.asarray(bottom, dtype=np.float64)
    n = v.shape[1]

    def ratio(vm, tm, bm):
        gap = tm - bm
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(np.abs(gap) > 1e-12, (vm - bm) / gap, np.nan)

    point = ratio(v.mean(1), t.mean(), b.mean())
    if n < 2:
        return point, np.full_like(point, np.nan), np.full_like(point, np.nan)
    rng = _rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    counts = np.zeros((n_resamples, n))
    np.add.at(counts, (np.arange(n_resamples)[:, None], idx), 1.0)
    counts /= n
    vm = counts @ v.T  # [resample, cell]
    r = ratio(vm, (counts @ t)[:, None], (counts @ b)[:, None])
    a = (1 - confidence) / 2
    with np.errstate(all="ignore"):
        lo = np.nanquantile(r, a, axis=0) if np.isfinite(r).any() else np.full_like(point, np.nan)
        hi = np.nanquantile(r, 1 - a, axis=0) if np.isfinite(r).any() else np.full_like(point, np.nan)
    return point, lo, hi


def paired_hierarchical_bootstrap_means(
    recipe: Float[np.ndarray, "seeds items"],
    baseline: Float[np.ndarray, "seeds items"],
    n_resamples: int = 2000,
    seed: int | np.random.Generator = 0,
    crossed: bool = True,
) -> tuple[Float[np.ndarray, " n_resamples"], Float[np.ndarray, " n_resamples"]]:
    """Means of both recipes over ``n_resamples`` paired seeds-then-items resamples.

    Row ``s`` of ``recipe`` and of ``baseline`` are the models of seed ``s``, columns the same items.
    Every replicate draws seeds with replacement, then items with replacement (one item draw shared by
    the drawn seeds when ``crossed``, one per drawn seed otherwise), and applies the SAME draw to both
    recipes. ``br - bb`` is then exactly :func:`hierarchical_bootstrap_means` of ``recipe - baseline``
    under the same generator state.
    """
    r = _as_matrix(recipe, "recipe")
    b = _as_matrix(baseline, "baseline")
    if r.shape != b.shape:
        raise CodetransferError(
            f"baseline: shape {b.shape} differs from recipe's {r.shape}; pair the two by seed and item first"
        )
    s, n = r.shape
    rng = _rng(seed)
    out_r, out_b = np.empty(n_resamples), np.empty(n_resamples)
    chunk = max(1, _CHUNK_CELLS // (s * n))
    for a in range(0, n_resamples, chunk):
        e = min(n_resamples, a + chunk)
        seeds = rng.integers(0, s, size=(e - a, s))
        items = rng.integers(0, n, size=(e - a, 1 if crossed else s, n))
        out_r[a:e] = r[seeds[:, :, None], items].mean(axis=(1, 2))
        out_b[a:e] = b[seeds[:, :, None], items].mean(axis=(1, 2))
    return out_r, out_b


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control), NaN entries left out of the family.

    With the ``m`` finite p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of
    the ``k``-th is ``min(1, max_{j <= k} (m - j + 1) * p_(j))``; rejecting where it is below ``alpha``
    controls the probability of any false rejection at ``alpha`` under any dependence.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if len(ok) == 0:
        return out
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise CodetransferError("p_values: expected probabilities between 0 and 1")
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    stepped = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(stepped))
    return out


def seed_t_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Interval:
    """Mean of per-seed ``values`` with its Student t interval, ``mean -+ t_{(1+confidence)/2, n-1} * sd / sqrt(n)``
    (``sd`` with ``ddof=1``). Needs at least 2 finite values (refused otherwise); equal values give a zero-width
    interval."""
    from scipy import stats as sps

    if not 0 < confidence < 1:
        raise CodetransferError(f"confidence: expected a number between 0 and 1, got {confidence!r}")
    x = np.asarray(values, dtype=np.float64).ravel()
    if len(x) < 2 or not np.isfinite(x).all():
        raise CodetransferError(
            f"values: a seed-level interval needs at least 2 finite per-seed values, got {x.tolist()!r}"
        )
    mean = float(x.mean())
    half = float(sps.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return Interval(mean, mean - half, mean + half)
