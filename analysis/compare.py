"""Seed-paired comparison of recipes: effect, hierarchical interval, two-level test, Holm, MDE.

**The unit.** Every recipe is trained with several seeds and every model is scored on the same items
(:func:`codetransfer.analysis.evaluate.score_runs`: one row per run x item with ``recipe, seed, task,
index, category, difficulty, chance, logit_diff, correct, ...``). A recipe ``R`` is compared with the
``baseline`` seed by seed: seed ``s`` of ``R`` and seed ``s`` of the baseline are paired, and so are
their scores on item ``j``, ``d[s, j] = R[s, j] - B[s, j]``. The unit of replication is the *seed*:
the per-seed difference of means ``mean_j d[s, j]``; the estimate is their mean (equal to the mean of
all ``d``, every seed having the same items). Items are identified by ``(task, rendering, difficulty, index)``
(``rendering`` and ``difficulty`` where the table has them); only seeds present in both recipes and items scored by every
one of those seeds' models enter a row.

**Metric.** ``metric="logit_diff"``: the summed log-probability of the answer minus that of the best
other candidate (``scores.logit_diff``; > 0 iff correct), a graded score; ``metric="correct"`` (alias
``"accuracy"``): 0/1 correctness. ``relative=True`` reports ``100 * (mean R - mean B) / |mean B|``
(percent; positive means the recipe scores higher) instead of the difference.

**Interval.** Hierarchical percentile bootstrap
(:func:`codetransfer.analysis.stats.paired_hierarchical_bootstrap_means`): each resample draws seeds
with replacement, then items with replacement, and applies the same draw to ``R`` and ``B`` (paired).
Items are shared by all seeds, so by default one item draw serves every drawn seed (``crossed=True``;
an item's recipe effect recurs in every seed and must not average out over seeds). With one seed the
seed draw is trivial and the interval is the item-level bootstrap. The relative change is the ratio of
the same resampled means.

**Test.** ``p_value`` is a two-level test: a linear mixed model (statsmodels ``MixedLM``, REML, whose
solution for these balanced tables is computed in closed form: :func:`mixedlm_pvalue`) of the per-item paired differences, ``d[s, j] = mu + u_s + e[s, j]``
with a random intercept ``u_s`` per seed; the Wald statistic ``mu_hat / se(mu_hat)`` is referred to a
t distribution with ``n_seeds - 1`` degrees of freedom (the seeds are the replicates; a normal
reference would be far too liberal with 3 seeds). In a balanced table this is the t-test of the
per-seed differences whenever the between-seed mean square exceeds the within-seed one; when the seed
variance is estimated as 0 the pooled standard error is larger, so the test is conservative: with 3
seeds, 12 items, a seed variance of 0.32 and an item variance of 2 (null data) it rejected 0.5% of
rows at the 5% level (Satterthwaite's ``k * n - 1`` degrees of freedom at that boundary would reject
3-7%, too many). Without any variance the row falls back to the one-sample t-test of the per-seed
differences, and ``test`` says so. With 6 seeds or more ``p_signflip`` adds the exact sign-flip
permutation test over seeds (all ``2^n_seeds`` sign patterns of the per-seed differences up to 12
seeds, else ``n_resamples`` random ones; two-sided on ``|mean|``), which assumes only symmetry. The
relative change has the same null (``mean R = mean B``), so the same p-values. With one seed the
p-value is the paired t-test over items, which says nothing about another seed; ``test`` names it.

**Multiplicity.** ``p_holm`` is Holm's adjustment (:func:`codetransfer.analysis.stats.holm`) over all
rows of the returned table (recipes x levels of ``by``), and ``ci_low_corrected, ci_high_corrected``
is the bootstrap interval at the Bonferroni level ``1 - (1 - confidence) / m`` (``m`` rows with a
p-value), an interval that holds for all rows at once. ``distinguishable`` is true only where that
corrected interval excludes 0 AND ``p_holm < 1 - confidence`` AND ``n_seeds >= 3``; one seed is never
distinguishable.

**MDE.** With ``k >= 2`` seeds whose per-seed differences have standard deviation ``sd`` (``ddof=1``),
``mde = (t_{1 - alpha/2, k-1} + t_{power, k-1}) * sd / sqrt(k)`` with ``alpha = (1 - confidence) / m``
(``m`` the rows with a p-value, the Bonferroni level of the corrected interval) and ``power = 0.8``: the
true difference that a two-sided one-sample t-test over seeds at the corrected level detects with
probability about ``power`` when the seeds vary as observed. A row is distinguishable only where its
corrected interval excludes 0, so an effect below the uncorrected MDE (``m = 1``) could pass unnoticed
even when it is above it. With one seed it is the item-level analogue
``(z_{1 - alpha/2} + z_{power}) * sd_items(d) / sqrt(n_items)``. In relative mode it is divided by
``|mean B|`` and given in percent.

:func:`above_chance_levels` gives, per level (task x difficulty), the baseline's accuracy with its
hierarchical interval and whether the interval's lower end is above ``chance``;
:func:`headline_comparison` pools the levels above chance per category and compares there, the pooled
columns labelled ``"pooled"``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from codetransfer.analysis.stats import hierarchical_bootstrap_ci, holm, paired_hierarchical_bootstrap_means
from codetransfer.errors import CodetransferError, did_you_mean

METRIC_ALIASES = {"logit_diff": "logit_diff", "correct": "correct", "accuracy": "correct"}
#: per-row columns besides the ``by`` columns (which come right after ``metric``)
RESULT_COLUMNS = (
    "estimate", "ci_low", "ci_high", "ci_low_corrected", "ci_high_corrected", "recipe_value", "baseline_value",
    "n_seeds", "n_items", "p_value", "p_holm", "p_signflip", "test", "mde", "distinguishable",
)  # fmt: skip
#: fewest seeds for the sign-flip test and for a row to be called distinguishable
MIN_SEEDS_SIGNFLIP = 6
MIN_SEEDS_DISTINGUISHABLE = 3
_EXACT_SIGNFLIP_MAX = 12


def _item_key(scores: pd.DataFrame) -> list[str]:
    """The columns that identify an item: an index is unique within a task, rendering and level."""
    return [c for c in ("task", "rendering", "difficulty", "index") if c in scores.columns]


def _check_scores(scores: pd.DataFrame, baseline: str, metric: str, by: Sequence[str]) -> str:
    if metric not in METRIC_ALIASES:
        raise CodetransferError(
            f"metric: expected one of {', '.join(METRIC_ALIASES)}, got '{metric}'{did_you_mean(metric, METRIC_ALIASES)}"
        )
    col = METRIC_ALIASES[metric]
    need = ["recipe", "seed", "task", "index", col, *by]
    missing = [c for c in need if c not in scores.columns]
    if missing:
        raise CodetransferError(
            f"scores: missing column(s) {', '.join(missing)}; pass the per-item scores of score_runs (scores.parquet)"
        )
    if len(scores) == 0:
        raise CodetransferError("scores: the table is empty; score some runs first")
    recipes = sorted(map(str, scores["recipe"].unique()))
    if baseline not in recipes:
        raise CodetransferError(
            f"baseline: recipe '{baseline}' is not among the scored recipes{did_you_mean(baseline, recipes)} "
            f"({', '.join(recipes)})"
        )
    if not np.isfinite(scores[col].to_numpy(dtype=float)).all():
        raise CodetransferError(f"scores: column '{col}' has NaN or infinite values; drop or fix those items first")
    dup = scores.duplicated(["recipe", "seed", *_item_key(scores)])
    if dup.any():
        row = scores[dup].iloc[0]
        raise CodetransferError(
            f"scores: recipe '{row['recipe']}' seed {row['seed']} scores item {tuple(row[_item_key(scores)])} "
            "twice; one row per (recipe, seed, item) expected (two runs with the same recipe and seed?)"
        )
    return col


def paired_matrices(wide: pd.DataFrame, recipe: str, baseline: str):
    """``(recipe, baseline, seeds)``: ``[seeds, items]`` score matrices paired by seed and item.

    ``wide``: scores with rows ``(recipe, seed)`` and one column per item. Seeds scored by both
    recipes, items scored by all of those seeds' models of both recipes.
    """
    if recipe not in wide.index.get_level_values(0) or baseline not in wide.index.get_level_values(0):
        return np.empty((0, 0)), np.empty((0, 0)), []
    r, b = wide.loc[recipe], wide.loc[baseline]
    seeds = r.index.intersection(b.index)
    r, b = r.loc[seeds], b.loc[seeds]
    ok = (r.notna().all(axis=0) & b.notna().all(axis=0)).to_numpy()
    return r.to_numpy(float)[:, ok], b.to_numpy(float)[:, ok], list(seeds)


def mixedlm_pvalue(diffs: np.ndarray) -> tuple[float, str]:
    """Two-sided p-value of ``mean = 0`` for ``[seeds, items]`` paired differences (see module docstring).

    The table is balanced (every seed has every item), where the REML fit of the random-intercept model has a
    closed form (the ANOVA estimates, clipped at the variance boundary): with ``MSB = n var(seed means)``
    and ``MSW`` the pooled within-seed variance, ``se^2 = MSB / (k n)`` when ``MSB > MSW`` (the t-test of the
    seed means), else ``se^2 = s^2 / (k n)`` with ``s^2`` the variance of all ``k n`` differences (the seed
    variance estimated as 0). It equals statsmodels' ``MixedLM(...).fit(reml=True)`` (tests) without its
    iterative optimiser, which took a third of the grid's comparison table."""
    k, n = diffs.shape
    name = f"MixedLM seed intercept (balanced REML), Wald t df={k - 1}"
    if np.allclose(diffs, diffs.flat[0]):
        return (1.0 if diffs.flat[0] == 0 else 0.0), name
    seed_means = diffs.mean(axis=1)
    msb = float(n * seed_means.var(ddof=1))
    msw = float(diffs.var(axis=1, ddof=1).mean()) if n > 1 else 0.0
    if msb > msw:
        se2 = msb / (k * n)
    else:
        se2 = float(diffs.var(ddof=1)) / (k * n)
    if not (np.isfinite(se2) and se2 > 0):
        if np.std(seed_means) == 0:
            return (1.0 if seed_means[0] == 0 else 0.0), "t-test over seed means (no variance)"
        return float(sps.ttest_1samp(seed_means, 0.0).pvalue), "t-test over seed means (no variance)"
    return float(2 * sps.t.sf(abs(diffs.mean()) / np.sqrt(se2), df=k - 1)), name


def signflip_pvalue(seed_diffs: np.ndarray, n_resamples: int = 10_000, seed: int | np.random.Generator = 0) -> float:
    """Two-sided sign-flip permutation p-value of ``mean(seed_diffs) = 0``.

    Under the null each seed's difference is as likely positive as negative; the p-value is the share
    of sign patterns whose ``|mean|`` is at least the observed one (all ``2^k`` patterns when
    ``k <= 12``, else ``n_resamples`` random patterns plus the observed one).
    """
    x = np.asarray(seed_diffs, dtype=float)
    k = len(x)
    obs = abs(x.mean())
    if k <= _EXACT_SIGNFLIP_MAX:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=k)))
        return float(np.mean(np.abs(signs @ x / k) >= obs - 1e-12 * max(1.0, obs)))
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(n_resamples, k))
    hits = np.sum(np.abs(signs @ x / k) >= obs - 1e-12 * max(1.0, obs))
    return float((1 + hits) / (1 + n_resamples))


def minimum_detectable_effect(diffs: np.ndarray, confidence: float = 0.95, power: float = 0.8, m: int = 1) -> float:
    """MDE of a difference from ``[seeds, items]`` paired differences, tested at level ``(1 - confidence) / m``
    (``m`` comparisons, Bonferroni; definition in the module docstring)."""
    k, n = diffs.shape
    alpha = (1 - confidence) / max(1, m)
    if k >= 2:
        sd = diffs.mean(axis=1).std(ddof=1)
        return float((sps.t.ppf(1 - alpha / 2, k - 1) + sps.t.ppf(power, k - 1)) * sd / np.sqrt(k))
    if n < 2:
        return float("nan")
    return float((sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) * diffs[0].std(ddof=1) / np.sqrt(n))


def _levels(df: pd.DataFrame, by: Sequence[str]):
    if not by:
        yield (), df
        return
    for key, g in df.groupby(list(by), sort=True, observed=True):
        yield (key if isinstance(key, tuple) else (key,)), g


def compare_recipes(
    scores: pd.DataFrame,
    baseline: str = "text-only",
    metric: str = "logit_diff",
    by: Sequence[str] = ("category", "task", "difficulty"),
    *,
    recipes: Sequence[str] | None = None,
    relative: bool = False,
    confidence: float = 0.95,
    power: float = 0.8,
    n_resamples: int = 2000,
    seed: int | np.random.Generator = 0,
    crossed: bool = True,
) -> pd.DataFrame:
    """Every recipe vs ``baseline``, paired by seed and item, per level of ``by`` (see module docstring).

    ``scores``: per-item rows of :func:`codetransfer.analysis.evaluate.score_runs`. ``by``: the columns
    whose level combinations are the rows (``()`` pools everything). ``recipes``: those to compare
    (default: all but the baseline). Returns one row per recipe x level with columns ``recipe,
    baseline, metric, scale`` (``"difference"`` or ``"relative_%"``), the ``by`` columns, then
    :data:`RESULT_COLUMNS`. ``recipe_value, baseline_value`` are the paired cells' means. A level where
    the recipe and the baseline share no seed or no item is left out.
    """
    col = _check_scores(scores, baseline, metric, by)
    if not 0.0 < confidence < 1.0:
        raise CodetransferError(f"confidence: expected a level between 0 and 1 (e.g. 0.95), got {confidence}")
    if not 0.0 < power < 1.0:
        raise CodetransferError(f"power: expected a probability between 0 and 1 (e.g. 0.8), got {power}")
    if n_resamples < 10:
        raise CodetransferError(f"n_resamples: expected at least 10 bootstrap resamples (e.g. 2000), got {n_resamples}")
    all_recipes = sorted(map(str, scores["recipe"].unique()))
    if recipes is None:
        recipes = [r for r in all_recipes if r != baseline]
    unknown = [r for r in recipes if r not in all_recipes]
    if unknown:
        raise CodetransferError(
            f"recipes: '{unknown[0]}' is not among the scored recipes{did_you_mean(unknown[0], all_recipes)}"
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    df = scores.assign(recipe=scores["recipe"].astype(str))
    records, boots, diffs, mde_scales = [], [], [], []
    for key, g in _levels(df, by):
        wide = g.pivot(index=["recipe", "seed"], columns=_item_key(g), values=col)
        for recipe in recipes:
            r, b, seeds = paired_matrices(wide, recipe, baseline)
            if r.size == 0:
                continue
            k, n = r.shape
            br, bb = paired_hierarchical_bootstrap_means(r, b, n_resamples, rng, crossed)
            d = r - b
            rv, bv = float(r.mean()), float(b.mean())
            mde_scale = 1.0  # the MDE itself waits for the number of rows (its level is the corrected one)
            if relative:
                with np.errstate(divide="ignore", invalid="ignore"):
                    stat = 100 * (br - bb) / np.abs(bb)
                    est = 100 * (rv - bv) / abs(bv) if bv != 0 else float("nan")
                    mde_scale = 100 / abs(bv) if bv != 0 else float("nan")
            else:
                stat, est = br - bb, rv - bv
            if k == 1 and n == 1:
                p, test = float("nan"), "none (1 seed, 1 item: nothing to test)"
            elif k == 1:
                if np.allclose(d, d.flat[0]):
                    p = 1.0 if d.flat[0] == 0 else 0.0
                else:
                    p = float(sps.ttest_1samp(d[0], 0.0).pvalue)
                test = "paired t over items (1 seed: item-level only, seeds not tested)"
            else:
                p, test = mixedlm_pvalue(d)
            p_flip = signflip_pvalue(d.mean(axis=1), n_resamples, rng) if k >= MIN_SEEDS_SIGNFLIP else float("nan")
            lo, hi = np.nanquantile(stat, [(1 - confidence) / 2, (1 + confidence) / 2])
            records.append(dict(
                recipe=recipe, baseline=baseline, metric=metric, scale="relative_%" if relative else "difference",
                **dict(zip(by, key)), estimate=float(est), ci_low=float(lo), ci_high=float(hi),
                recipe_value=rv, baseline_value=bv, n_seeds=k, n_items=n, p_value=p, p_signflip=p_flip,
                test=test,
            ))  # fmt: skip
            boots.append(stat)
            diffs.append(d)
            mde_scales.append(mde_scale)
    cols = ["recipe", "baseline", "metric", "scale", *by, *RESULT_COLUMNS]
    if not records:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame.from_records(records)
    out["p_holm"] = holm(out["p_value"].to_numpy(float))
    m = int(np.isfinite(out["p_value"].to_numpy(float)).sum())
    level = 1 - (1 - confidence) / max(1, m)
    out["mde"] = [minimum_detectable_effect(d, confidence, power, m) * f for d, f in zip(diffs, mde_scales)]
    corrected = np.array([np.nanquantile(s, [(1 - level) / 2, (1 + level) / 2]) for s in boots])
    out["ci_low_corrected"], out["ci_high_corrected"] = corrected[:, 0], corrected[:, 1]
    excludes_zero = (out["ci_low_corrected"] > 0) | (out["ci_high_corrected"] < 0)
    out["distinguishable"] = (
        excludes_zero & (out["p_holm"] < 1 - confidence) & (out["n_seeds"] >= MIN_SEEDS_DISTINGUISHABLE)
    ).astype(bool)
    out["n_seeds"] = out["n_seeds"].astype(int)
    out["n_items"] = out["n_items"].astype(int)
    return out[cols]


def above_chance_levels(
    scores: pd.DataFrame,
    baseline: str = "text-only",
    levels: Sequence[str] = ("category", "task", "difficulty"),
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | np.random.Generator = 0,
) -> pd.DataFrame:
    """Per level of ``levels``: the baseline's accuracy, its seeds-then-items interval, and ``chance``.

    Columns: the ``levels`` columns, ``accuracy, ci_low, ci_high, chance, n_seeds, n_items`` and
    ``above_chance`` (``ci_low > chance``; ``chance`` is the mean of the items' uniform-guess accuracy).
    """
    _check_scores(scores, baseline, "correct", levels)
    if "chance" not in scores.columns:
        raise CodetransferError("scores: missing column 'chance'; pass the per-item scores of score_runs")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    base = scores[scores["recipe"].astype(str) == baseline]
    recs = []
    for key, g in _levels(base, levels):
        m = g.pivot(index="seed", columns=_item_key(g), values="correct").dropna(axis=1)
        if m.shape[1] == 0:
            continue
        iv = hierarchical_bootstrap_ci(m.to_numpy(float), n_resamples, confidence, rng, crossed=True)
        chance = float(g["chance"].mean())
        recs.append(
            dict(
                **dict(zip(levels, key)),
                accuracy=iv.value,
                ci_low=iv.low,
                ci_high=iv.high,
                chance=chance,
                n_seeds=m.shape[0],
                n_items=m.shape[1],
                above_chance=bool(iv.low > chance),
            )
        )
    return pd.DataFrame.from_records(
        recs, columns=[*levels, "accuracy", "ci_low", "ci_high", "chance", "n_seeds", "n_items", "above_chance"]
    )


def headline_comparison(
    scores: pd.DataFrame,
    baseline: str = "text-only",
    metric: str = "logit_diff",
    by: Sequence[str] = ("category",),
    levels: Sequence[str] = ("task", "difficulty"),
    **kwargs,
) -> pd.DataFrame:
    """:func:`compare_recipes` per ``by`` on the items of the levels where the baseline is above chance.

    A level is a combination of ``by`` and ``levels`` (e.g. category x task x difficulty); it is kept
    when :func:`above_chance_levels` finds the baseline's accuracy interval above ``chance``. The kept
    items are pooled per ``by`` group and compared; the ``levels`` columns say ``"pooled"``, ``pooled``
    is true and ``pooled_levels`` lists the kept levels (``task/difficulty; ...``). Groups with no level
    above chance have no row. ``kwargs`` go to :func:`compare_recipes` (and ``confidence``,
    ``n_resamples``, ``seed`` also to :func:`above_chance_levels`).
    """
    both = [*by, *[c for c in levels if c not in by]]
    lv_kwargs = {k: kwargs[k] for k in ("confidence", "n_resamples", "seed") if k in kwargs}
    lv = above_chance_levels(scores, baseline, both, **lv_kwargs)
    kept = lv[lv["above_chance"]]
    cols = ["recipe", "baseline", "metric", "scale", *both, *RESULT_COLUMNS, "pooled", "pooled_levels"]
    if kept.empty:
        return pd.DataFrame(columns=cols)
    sel = scores.merge(kept[both], on=both, how="inner")
    out = compare_recipes(sel, baseline, metric, by, **kwargs)
    names = kept.groupby(list(by), sort=True) if by else [((), kept)]
    labels = {}
    for key, g in names:
        key = key if isinstance(key, tuple) else (key,)
        labels[key] = "; ".join("/".join(str(v) for v in row) for row in g[list(levels)].itertuples(index=False))
    out["pooled_levels"] = (
        [labels.get(tuple(row), "") for row in out[list(by)].itertuples(index=False)] if by else labels.get((), "")
    )
    for c in levels:
        if c not in by:
            out[c] = "pooled"
    out["pooled"] = True
    return out[cols]


def data_order_label(recipe: str, data_seed: int) -> str:
    """The ``recipe`` column of a data-order null row of ``comparison_table``: the runs of ``recipe`` with data
    seed ``data_seed``, compared with the runs of ``recipe`` in their init seed's own order. The parentheses and
    spaces keep it apart from every recipe name."""
    return f"{recipe} (data order {data_seed})"


def is_data_order_label(recipe) -> bool:
    """Whether a comparison row's ``recipe`` is a :func:`data_order_label` (a data-order null row)."""
    return re.search(r" \(data order [1-9][0-9]*\)$", str(recipe)) is not None


def has_gap(row) -> bool:
    """Whether a comparison row (``comparison_table``) is a gap an instrument may be aimed at and split into
    shares: ``distinguishable`` — its multiplicity-corrected seed-level interval excludes 0, its Holm p is below
    0.05, over at least :data:`MIN_SEEDS_DISTINGUISHABLE` seeds. A table without the column (older results) is
    read by its corrected interval and seed count alone."""
    if row is None:
        return False
    n_seeds = row.get("n_seeds")
    if n_seeds is None or pd.isna(n_seeds) or int(n_seeds) < MIN_SEEDS_DISTINGUISHABLE:
        return False
    if "distinguishable" in row and not pd.isna(row["distinguishable"]):
        return bool(row["distinguishable"])
    lo, hi = row.get("ci_low_corrected"), row.get("ci_high_corrected")
    return lo is not None and hi is not None and (float(lo) > 0 or float(hi) < 0)


GAP_PREFERENCES = ("advantage", "any")


def gap_target(
    comparison: pd.DataFrame | None, categories: Sequence[str] = ("reasoning",), *, prefer: str = "advantage"
) -> pd.Series | None:
    """The comparison an analysis should explain: among the per-level (not pooled) logit-difference rows of
    tasks in ``categories`` that :func:`has_gap`, the one with the smallest Holm p (ties: the largest
    ``|estimate| / mde``). None when no row has a gap: there is nothing for a cross-model share to split, and
    only within-model maps mean anything.

    ``prefer="advantage"`` (the default) looks first among the rows where the recipe is ahead of its baseline
    (``estimate > 0``): the question is why code exposure *improves* reasoning, so a distinguishable advantage
    is what the instruments should explain; a disadvantage is taken only when no advantage is distinguishable.
    ``prefer="any"`` ignores the sign."""
    if prefer not in GAP_PREFERENCES:
        raise CodetransferError(f"gap_target: prefer must be one of {', '.join(GAP_PREFERENCES)}, not {prefer!r}")
    c = _gap_rows(comparison, categories, pooled=False)
    if c is None:
        return None
    strength = (c["estimate"].abs() / c["mde"].where(c["mde"] > 0)).fillna(np.inf)
    keys = [-strength.to_numpy(float), c["p_holm"].to_numpy(float)]
    if prefer == "advantage":  # the last key sorts first: advantages (0) before the rest (1)
        keys.append(~(pd.to_numeric(c["estimate"], errors="coerce").to_numpy(float) > 0))
    order = np.lexsort(tuple(keys))
    return c.iloc[order[0]]


def pooled_gap(comparison: pd.DataFrame | None, categories: Sequence[str] = ("reasoning",)) -> pd.Series | None:
    """The pooled (levels of a category together) logit-difference row of ``categories`` that :func:`has_gap`, with
    the smallest Holm p; None when there is none. A gap the analyses cannot aim at (patching needs one task and
    level), reported where :func:`gap_target` finds no per-level gap."""
    c = _gap_rows(comparison, categories, pooled=True)
    return None if c is None else c.iloc[int(np.argmin(c["p_holm"].to_numpy(float)))]


def _gap_rows(comparison: pd.DataFrame | None, categories: Sequence[str], pooled: bool) -> pd.DataFrame | None:
    """The logit-difference rows (per level, or pooled) of ``categories`` that :func:`has_gap`, data-order nulls
    left out; None when there are none."""
    if comparison is None or comparison.empty:
        return None
    c = comparison[comparison["metric"].astype(str) == "logit_diff"]
    if "scale" in c:
        c = c[c["scale"].astype(str) == "difference"]
    if "pooled" in c:
        c = c[c["pooled"].astype(bool) == pooled]
    elif pooled:
        return None
    c = c[c["category"].astype(str).isin(list(categories))]
    if "recipe" in c:  # a data-order null row is the noise a gap is read against, never a gap to explain
        c = c[~c["recipe"].map(is_data_order_label).astype(bool)]
    c = c[[has_gap(r) for _, r in c.iterrows()]]
    return None if c.empty else c


def recipe_gap(comparison: pd.DataFrame | None, recipe: str, other: str, task: str, difficulty=None):
    """The seed-paired comparison row (``results/comparison.parquet``, logit difference) of ``recipe``
    against ``other`` for the patched items: the level of ``task`` at ``difficulty``, else (no
    difficulty, or no such row) the pooled row of the task's category; None when there is none.
    Where the table compares them the other way round (``other`` against ``recipe``, e.g. cross-model patching
    from the baseline into a recipe), that row is returned read as ``recipe - other``: the estimate and interval
    negated, the two values swapped (p-values and the detectable effect are the same)."""
    row = _recipe_gap(comparison, recipe, other, task, difficulty)
    if row is not None:
        return row
    row = _recipe_gap(comparison, other, recipe, task, difficulty)
    if row is None:
        return None
    row = row.copy()
    row["estimate"] = -row["estimate"]
    for lo, hi in (("ci_low", "ci_high"), ("ci_low_corrected", "ci_high_corrected")):
        if lo in row and hi in row:
            row[lo], row[hi] = -row[hi], -row[lo]
    if "recipe_value" in row and "baseline_value" in row:
        row["recipe_value"], row["baseline_value"] = row["baseline_value"], row["recipe_value"]
    row["recipe"], row["baseline"] = recipe, other
    return row


def _recipe_gap(comparison: pd.DataFrame | None, recipe: str, other: str, task: str, difficulty=None):
    if comparison is None or comparison.empty:
        return None
    c = comparison[
        (comparison["recipe"].astype(str) == recipe)
        & (comparison["baseline"].astype(str) == other)
        & (comparison["metric"] == "logit_diff")
    ]
    if "scale" in c:
        c = c[c["scale"].astype(str) == "difference"]
    pooled = c["pooled"].astype(bool) if "pooled" in c else pd.Series(False, index=c.index)
    level = c[~pooled & (c["task"].astype(str) == str(task))]
    if difficulty is not None and not level.empty:
        at = level[pd.to_numeric(level["difficulty"], errors="coerce") == float(difficulty)]
        if len(at) == 1:
            return at.iloc[0]
    elif len(level) == 1:
        return level.iloc[0]
    categories = set(comparison.loc[comparison["task"].astype(str) == str(task), "category"].astype(str))
    pooled_rows = c[pooled & c["category"].astype(str).isin(categories)]
    return pooled_rows.iloc[0] if len(pooled_rows) == 1 else None
