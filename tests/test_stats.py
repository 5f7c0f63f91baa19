"""Known-answer checks of the bootstrap intervals in codetransfer.analysis.stats."""

import numpy as np
import pytest

from codetransfer.analysis.stats import (
    bootstrap_ci,
    bootstrap_means,
    cluster_bootstrap_ci,
    hierarchical_bootstrap_ci,
    hierarchical_bootstrap_means,
    holm,
    nan_bootstrap_ci,
    paired_hierarchical_bootstrap_means,
    ratio_bootstrap_ci,
    relative_change_ci,
)
from codetransfer.errors import CodetransferError


def _binomial_tolerance(p: float, n: int, z: float = 3.5) -> float:
    return z * np.sqrt(p * (1 - p) / n)


def test_bootstrap_coverage_on_simulated_bernoulli():
    """About 95% of the intervals from 400 simulated samples contain the true mean."""
    rng = np.random.default_rng(123)
    p, n_items, n_sims = 0.3, 100, 400
    samples = (rng.random((n_sims, n_items)) < p).astype(float)
    mean, low, high = bootstrap_ci(samples, n_resamples=1000, confidence=0.95, seed=1)
    assert mean.shape == low.shape == (n_sims,)
    covered = np.mean((low <= p) & (p <= high))
    assert abs(covered - 0.95) <= _binomial_tolerance(0.95, n_sims), covered
    # and the widths are those of a binomial proportion (±1.96 sd)
    width = np.mean(high - low)
    assert width == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / n_items), rel=0.1)
    # an 80% interval covers about 80%
    _, low80, high80 = bootstrap_ci(samples, n_resamples=1000, confidence=0.8, seed=2)
    covered80 = np.mean((low80 <= p) & (p <= high80))
    assert abs(covered80 - 0.8) <= _binomial_tolerance(0.8, n_sims), covered80


def test_bootstrap_is_seeded_and_point_is_the_mean():
    x = np.arange(20.0)
    a = bootstrap_ci(x, seed=5)
    b = bootstrap_ci(x, seed=5)
    c = bootstrap_ci(x, seed=6)
    assert [float(v) for v in a] == [float(v) for v in b]
    assert float(a[1]) != float(c[1])
    assert float(a[0]) == 9.5 and a[1] < 9.5 < a[2]


def test_hierarchical_with_one_seed_equals_item_bootstrap():
    rng = np.random.default_rng(0)
    x = (rng.random(200) < 0.6).astype(float)
    h = hierarchical_bootstrap_ci(x[None, :], n_resamples=4000, seed=0)
    m, lo, hi = bootstrap_ci(x, n_resamples=4000, seed=0)
    assert h.value == pytest.approx(float(m))
    assert h.low == pytest.approx(float(lo), abs=0.015)
    assert h.high == pytest.approx(float(hi), abs=0.015)


def test_hierarchical_reflects_seed_variance():
    """When items do not vary within a seed, the interval is that of the seed means; pooling is too narrow."""
    seed_means = np.array([0.40, 0.55, 0.62, 0.48, 0.70])
    x = np.repeat(seed_means[:, None], 300, axis=1)
    h = hierarchical_bootstrap_ci(x, n_resamples=4000, seed=0)
    m, lo, hi = bootstrap_ci(seed_means, n_resamples=4000, seed=1)
    assert h.value == pytest.approx(float(m))
    assert h.low == pytest.approx(float(lo), abs=0.02)
    assert h.high == pytest.approx(float(hi), abs=0.02)
    # crossed and nested agree here (no item variance); pooling all cells as items ignores the seeds
    nested = hierarchical_bootstrap_ci(x, n_resamples=4000, seed=0, crossed=False)
    assert nested.low == pytest.approx(h.low, abs=0.02)
    _, plo, phi = bootstrap_ci(x.ravel(), n_resamples=2000, seed=0)
    assert (phi - plo) < 0.2 * (h.high - h.low)


def test_crossed_keeps_shared_item_variance():
    """Items shared by all seeds: their variance must not shrink with the number of seeds."""
    rng = np.random.default_rng(3)
    item_effect = rng.normal(size=200)
    x = item_effect[None, :] + 0.01 * rng.normal(size=(8, 200))
    crossed = hierarchical_bootstrap_ci(x, n_resamples=2000, seed=0, crossed=True)
    nested = hierarchical_bootstrap_ci(x, n_resamples=2000, seed=0, crossed=False)
    expected = 2 * 1.96 * item_effect.std() / np.sqrt(200)
    assert crossed.high - crossed.low == pytest.approx(expected, rel=0.15)
    assert nested.high - nested.low < 0.6 * expected  # ~ 1/sqrt(8) of it: too narrow for shared items


def test_relative_change_known_answer():
    rng = np.random.default_rng(7)
    n = 2000
    base = (rng.random((3, n)) < 0.5).astype(float)
    rec = (rng.random((3, n)) < 0.6).astype(float)
    iv = relative_change_ci(rec, base, n_resamples=1000, seed=0)
    assert iv.value == pytest.approx(rec.mean() / base.mean() - 1)
    assert iv.low < 0.2 < iv.high
    assert iv.low > 0.1 and iv.high < 0.3
    # one model compared with itself: pairing the items makes the interval the point 0
    same = relative_change_ci(base[:1], base[:1], n_resamples=500, seed=0)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    assert relative_change_ci(base[:1], base[:1], n_resamples=500, paired_items=False).high > 0.02


def test_paired_items_narrow_the_ratio_interval():
    rng = np.random.default_rng(11)
    difficulty = rng.random(300)
    base = (rng.random((2, 300)) < difficulty).astype(float)
    rec = (rng.random((2, 300)) < np.clip(difficulty + 0.1, 0, 1)).astype(float)
    paired = relative_change_ci(rec, base, n_resamples=2000, seed=0, paired_items=True)
    unpaired = relative_change_ci(rec, base, n_resamples=2000, seed=0, paired_items=False)
    assert paired.high - paired.low < unpaired.high - unpaired.low


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: bootstrap_ci(np.array([])), "values"),
        (lambda: bootstrap_ci(np.array([1.0, np.nan])), "NaN"),
        (lambda: bootstrap_ci(np.ones(5), confidence=95), "confidence"),
        (lambda: hierarchical_bootstrap_ci(np.ones((2, 3, 4))), "values"),
        (lambda: relative_change_ci(np.ones((1, 5)), np.zeros((1, 5))), "baseline"),
        (lambda: relative_change_ci(np.ones((1, 5)), np.ones((1, 4))), "paired_items"),
    ],
)
def test_bad_inputs_are_refused(call, match):
    with pytest.raises(CodetransferError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("paired", [True, False])
def test_relative_change_coverage_on_simulated_items(paired):
    """About 95% of ratio intervals contain the true relative change (+20%), paired or not."""
    rng = np.random.default_rng(5 if paired else 6)
    n_sims, n_items, covered = 200, 300, 0
    for k in range(n_sims):
        q = rng.uniform(0.2, 0.8, n_items)  # item difficulty, shared by both models when paired
        q_rec = q if paired else rng.uniform(0.2, 0.8, n_items)
        base = (rng.random(n_items) < q).astype(float)
        rec = (rng.random(n_items) < q_rec + 0.1).astype(float)
        iv = relative_change_ci(rec[None], base[None], n_resamples=400, seed=k, paired_items=paired)
        covered += iv.low <= 0.2 <= iv.high
    assert abs(covered / n_sims - 0.95) <= _binomial_tolerance(0.95, n_sims), covered / n_sims


@pytest.mark.parametrize("confidence, n_resamples, seed", [(0.95, 2000, 0), (0.9, 999, 4), (0.5, 100, 7)])
def test_item_bootstrap_equals_scipy_percentile(confidence, n_resamples, seed):
    """Same generator, same draws: the resampled means are scipy.stats.bootstrap's bit for bit, the
    interval equal up to the last bit of the quantile interpolation (scipy.stats.quantile vs numpy's)."""
    from scipy.stats import bootstrap

    x = np.random.default_rng(seed + 100).random(37)
    ref = bootstrap(
        (x,),
        np.mean,
        method="percentile",
        n_resamples=n_resamples,
        confidence_level=confidence,
        rng=np.random.default_rng(seed),
    )
    assert np.array_equal(bootstrap_means(x, n_resamples, seed), ref.bootstrap_distribution)
    _, lo, hi = bootstrap_ci(x, n_resamples, confidence, seed)
    assert float(lo) == pytest.approx(ref.confidence_interval.low, rel=1e-14, abs=0)
    assert float(hi) == pytest.approx(ref.confidence_interval.high, rel=1e-14, abs=0)


def test_cluster_bootstrap_known_answers():
    """Groups of identical values resample like their group means; several split seeds average."""
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(40), 5)
    means = rng.random(40)
    v, lo, hi = cluster_bootstrap_ci(np.repeat(means, 5), g, n_resamples=2000, seed=0)
    m, mlo, mhi = bootstrap_ci(means, 2000, 0.95, 1)
    assert v == pytest.approx(float(m)) and lo == pytest.approx(float(mlo), abs=0.02)
    assert hi == pytest.approx(float(mhi), abs=0.02)
    two = cluster_bootstrap_ci([np.zeros(10), np.ones(10)], n_resamples=100)
    assert two == (0.5, 0.5, 0.5)
    with pytest.raises(CodetransferError, match="groups"):
        cluster_bootstrap_ci(np.ones(4), np.arange(3))


def test_nan_bootstrap_ignores_nan_rows_and_covers_the_mean():
    import torch

    x = torch.randn(200, 2, 3, generator=torch.Generator().manual_seed(0)) + torch.arange(6.0).reshape(2, 3)
    with_nan = torch.cat([x, torch.full((5, 2, 3), float("nan"))])
    mean, lo, hi = nan_bootstrap_ci(with_nan, n_resamples=500, seed=0)
    assert mean.shape == (2, 3) and torch.allclose(mean, x.mean(0))
    assert (lo < mean).all() and (mean < hi).all()
    assert torch.allclose(hi - lo, torch.full((2, 3), 2 * 1.96 / 200**0.5), rtol=0.25)
    same = nan_bootstrap_ci(x[:1], n_resamples=500)
    assert torch.equal(same[0], same[1]) and torch.equal(same[1], same[2])


def test_ratio_bootstrap_known_answer():
    """(v - bottom) / (top - bottom): 0.25 of the way from bottom to top; NaN where the gap is zero."""
    rng = np.random.default_rng(0)
    bottom = rng.normal(0, 0.3, 400)
    top = 4 + rng.normal(0, 0.3, 400)
    v = np.stack([bottom + 1.0 + rng.normal(0, 0.3, 400), top])
    point, lo, hi = ratio_bootstrap_ci(v, top, bottom, n_resamples=1000, seed=0)
    assert point[1] == pytest.approx(1.0) and lo[1] == pytest.approx(1.0) and hi[1] == pytest.approx(1.0)
    assert lo[0] < 0.25 < hi[0] and hi[0] - lo[0] < 0.05
    flat, flo, fhi = ratio_bootstrap_ci(v, bottom, bottom, n_resamples=100)
    assert np.isnan(flat).all() and np.isnan(flo).all() and np.isnan(fhi).all()


def test_paired_hierarchical_difference_is_hierarchical_of_the_difference():
    rng = np.random.default_rng(4)
    r, b = rng.random((4, 30)), rng.random((4, 30))
    for crossed in (True, False):
        br, bb = paired_hierarchical_bootstrap_means(r, b, 300, seed=9, crossed=crossed)
        d = hierarchical_bootstrap_means(r - b, 300, seed=9, crossed=crossed)
        assert np.allclose(br - bb, d)
    with pytest.raises(CodetransferError, match="baseline"):
        paired_hierarchical_bootstrap_means(r, b[:3])


def test_holm_equals_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(0)
    for m in (1, 2, 7, 30):
        p = rng.random(m) ** 3
        p[: m // 3] = p[0]  # ties
        assert np.allclose(holm(p), multipletests(p, method="holm")[1], rtol=0, atol=1e-15)
    assert np.isnan(holm([0.01, np.nan])[1]) and holm([0.01, np.nan])[0] == 0.01
