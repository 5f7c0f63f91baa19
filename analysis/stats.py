"""Bootstrap confidence intervals for evaluation results: over items, over seeds and items, and of ratios.

Every interval here is a *percentile bootstrap*: draw ``n_boot`` resamples of the data with
replacement, compute the statistic (a mean) on each, and report the ``(1 - ci) / 2`` and
``(1 + ci) / 2`` quantiles of the ``n_boot`` statistics. The point estimate is the statistic on the
data itself. All resampling is vectorised (one index array of shape ``[n_boot, n]``, one gather, one
mean) and driven by an explicit, seeded :class:`numpy.random.Generator`, so the same call gives the
same interval.

Three estimators:

* :func:`bootstrap_ci` — items are the only source of variation (one model): resample items.
  Works over the last axis of an array, so many intervals are computed at once.
* :func:`hierarchical_bootstrap_ci` — a *recipe* is trained with several seeds and every seed's model
  is scored on the same items: the data is a ``[seeds, items]`` matrix. Each resample first draws
  seeds with replacement, then items with replacement, and averages the chosen cells. The design is
  *crossed* (every seed sees the same items), so by default one item resample is shared by all seeds of
  a replicate (``crossed=True``): an item's difficulty is common to all seeds and must not average out
  over them. With ``crossed=False`` the items are redrawn independently for every drawn seed (the
  textbook nested bootstrap, for seeds scored on different items). With one seed both reduce to
  :func:`bootstrap_ci` over items; with items that do not vary within a seed they reduce to
  :func:`bootstrap_ci` over the seed means.
* :func:`relative_change_ci` — the paper's headline numbers ("+8.2% relative") are
  ``mean(recipe) / mean(baseline) - 1``. Both recipes are resampled hierarchically; recipes are
  different models so their seeds are drawn independently, but when both were scored on the same
  items (``paired_items=True``, the default) one item resample is shared by the two, which removes the
  item-difficulty variance that is common to both from the ratio.

Percentile intervals under-cover slightly for small samples (a few percent at n ≈ 30 items, more with
very few seeds); ``tests/test_stats.py`` checks coverage on simulated Bernoulli data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Float

from codetransfer.errors import CodetransferError

#: Bootstrap replicates processed at once (bounds the memory of the ``[chunk, seeds, items]`` gathers).
_CHUNK_CELLS = 4_000_000


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile-bootstrap confidence interval."""

    value: float
    """The statistic on the data itself."""
    low: float
    """Lower end of the interval (quantile ``(1 - ci) / 2`` of the bootstrap statistics)."""
    high: float
    """Upper end of the interval (quantile ``(1 + ci) / 2``)."""


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check(ci: float, n_boot: int) -> None:
    if not 0.0 < ci < 1.0:
        raise CodetransferError(f"ci: expected a confidence level between 0 and 1 (e.g. 0.95), got {ci}")
    if n_boot < 10:
        raise CodetransferError(f"n_boot: expected at least 10 bootstrap resamples (e.g. 2000), got {n_boot}")


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
    values: Float[np.ndarray, "*batch n"], n_boot: int = 2000, seed: int | np.random.Generator = 0
) -> Float[np.ndarray, "*batch n_boot"]:
    """Means of ``n_boot`` item resamples, drawn independently for every leading index."""
    x = np.asarray(values, dtype=np.float64)
    n = x.shape[-1]
    if n == 0:
        raise CodetransferError("values: expected at least one item to bootstrap, got an empty array")
    rng = _rng(seed)
    flat = x.reshape(-1, n)
    out = np.empty((flat.shape[0], n_boot))
    chunk = max(1, _CHUNK_CELLS // max(1, n))
    for row in range(flat.shape[0]):
        for s in range(0, n_boot, chunk):
            idx = rng.integers(0, n, size=(min(chunk, n_boot - s), n))
            out[row, s : s + idx.shape[0]] = flat[row][idx].mean(axis=1)
    return out.reshape(*x.shape[:-1], n_boot)


def bootstrap_ci(
    values: Float[np.ndarray, "*batch n"],
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, low, high)`` over the last axis: percentile bootstrap over items.

    For a 1-D input the three are 0-d arrays (use ``float(...)``); for ``[k, n]`` they have shape ``[k]``.
    """
    _check(ci, n_boot)
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise CodetransferError(f"values: expected at least one item to bootstrap, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise CodetransferError("values: contains NaN or infinite values; drop or fix those items first")
    boots = bootstrap_means(x, n_boot, seed)
    low, high = np.quantile(boots, [(1 - ci) / 2, (1 + ci) / 2], axis=-1)
    return x.mean(axis=-1), low, high


def hierarchical_bootstrap_means(
    values: Float[np.ndarray, "seeds items"],
    n_boot: int = 2000,
    seed: int | np.random.Generator = 0,
    crossed: bool = True,
    item_idx: np.ndarray | None = None,
) -> Float[np.ndarray, " n_boot"]:
    """Means of ``n_boot`` resamples: seeds with replacement, then items with replacement.

    ``item_idx`` (``[n_boot, items]``) fixes the item resamples (to share them with another recipe);
    it implies ``crossed=True``.
    """
    x = _as_matrix(values, "values")
    s, n = x.shape
    rng = _rng(seed)
    out = np.empty(n_boot)
    cells = s * n
    chunk = max(1, _CHUNK_CELLS // cells)
    for a in range(0, n_boot, chunk):
        b = min(n_boot, a + chunk)
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
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int | np.random.Generator = 0,
    crossed: bool = True,
) -> Interval:
    """Mean over seeds and items with a seeds-then-items percentile bootstrap interval.

    ``values[i, j]`` is the score of seed ``i``'s model on item ``j``. See the module docstring for
    ``crossed``.
    """
    _check(ci, n_boot)
    x = _as_matrix(values, "values")
    boots = hierarchical_bootstrap_means(x, n_boot, seed, crossed)
    low, high = np.quantile(boots, [(1 - ci) / 2, (1 + ci) / 2])
    return Interval(float(x.mean()), float(low), float(high))


def relative_change_ci(
    recipe: Float[np.ndarray, "seeds items"],
    baseline: Float[np.ndarray, "seeds2 items2"],
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int | np.random.Generator = 0,
    paired_items: bool = True,
) -> Interval:
    """``mean(recipe) / mean(baseline) - 1`` with a bootstrap interval of the ratio.

    Rows are seeds, columns items. With ``paired_items`` (both scored on the same items, columns
    aligned) every replicate uses one item resample for both recipes; seeds are always drawn
    independently. A replicate whose baseline mean is 0 gives an infinite ratio (kept, so that an
    interval reaching infinity says the baseline is too close to 0 to divide by).
    """
    _check(ci, n_boot)
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
        idx = rng.integers(0, r.shape[1], size=(n_boot, r.shape[1]))
        br = hierarchical_bootstrap_means(r, n_boot, rng, item_idx=idx)
        bb = hierarchical_bootstrap_means(b, n_boot, rng, item_idx=idx)
    else:
        br = hierarchical_bootstrap_means(r, n_boot, rng)
        bb = hierarchical_bootstrap_means(b, n_boot, rng)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = br / bb - 1.0
    ratios = np.where(np.isnan(ratios), np.inf, ratios)
    low, high = np.quantile(ratios, [(1 - ci) / 2, (1 + ci) / 2])
    return Interval(float(r.mean() / base_mean - 1.0), float(low), float(high))
