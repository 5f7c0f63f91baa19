"""Seed-paired recipe comparison (codetransfer.analysis.compare) on synthetic score tables of known truth."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from codetransfer.analysis.compare import (
    above_chance_levels,
    compare_recipes,
    headline_comparison,
    minimum_detectable_effect,
    mixedlm_pvalue,
    signflip_pvalue,
)
from codetransfer.errors import CodetransferError


def score_table(
    effects,
    n_seeds=3,
    n_items=20,
    categories=("reasoning",),
    seed_sd=0.3,
    item_sd=1.0,
    rng=0,
    baseline="text-only",
    item_recipe_sd=0.0,
):
    """Per-item rows like score_runs': ``logit_diff = item + effect + u_seed + noise``, ``correct = logit_diff > 0``.

    ``effects``: recipe -> planted difference of mean logit_diff vs the baseline. Every (recipe, seed) model
    has its own seed effect ``u ~ N(0, seed_sd)``, so identical recipes still differ seed by seed.
    """
    rng = np.random.default_rng(rng)
    frames = []
    for cat in categories:
        task = f"{cat}_task"
        item = rng.normal(size=n_items)
        for recipe, eff in {baseline: 0.0, **effects}.items():
            per_item = eff + rng.normal(0, item_recipe_sd, n_items) if item_recipe_sd else eff
            for s in range(n_seeds):
                ld = item + per_item + rng.normal(0, seed_sd) + rng.normal(0, item_sd, n_items)
                frames.append(pd.DataFrame({
                    "run": f"{recipe}-s{s}", "recipe": recipe, "seed": s, "task": task, "index": np.arange(n_items),
                    "category": cat, "difficulty": np.arange(n_items) % 2, "chance": 0.5, "logit_diff": ld,
                    "correct": (ld > 0).astype(float),
                }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def test_planted_effect_is_recovered_inside_its_interval():
    df = score_table(
        {"code": 0.6, "same": 0.0}, n_seeds=5, n_items=60, categories=("reasoning", "knowledge"), seed_sd=0.15, rng=1
    )
    out = compare_recipes(df, "text-only", "logit_diff", by=("category",), n_resamples=1000)
    assert len(out) == 4 and set(out["n_seeds"]) == {5} and set(out["n_items"]) == {60}
    code = out[out["recipe"] == "code"]
    assert ((code["ci_low"] < 0.6) & (0.6 < code["ci_high"])).all()
    assert (code["ci_low_corrected"] <= code["ci_low"]).all() and (code["ci_high"] <= code["ci_high_corrected"]).all()
    assert code["distinguishable"].all() and (code["p_holm"] < 0.05).all()
    same = out[out["recipe"] == "same"]
    assert ((same["ci_low"] < 0) & (0 < same["ci_high"])).all() and not same["distinguishable"].any()
    # estimate = mean over seeds of the per-seed difference of means
    g = df[df["category"] == "reasoning"]
    per_seed = (
        g[g.recipe == "code"].groupby("seed")["logit_diff"].mean()
        - g[g.recipe == "text-only"].groupby("seed")["logit_diff"].mean()
    )
    row = code.set_index("category").loc["reasoning"]
    assert row["estimate"] == pytest.approx(per_seed.mean())
    assert row["test"].startswith("MixedLM")


def test_relative_change_of_accuracy_recovers_a_planted_ratio():
    """Accuracy 0.5 -> 0.6 on every item of every seed: +20%, in percent."""
    rng = np.random.default_rng(3)
    frames = []
    for recipe, p in (("text-only", 0.5), ("code", 0.6)):
        for s in range(4):
            c = (rng.random(400) < p).astype(float)
            frames.append(
                pd.DataFrame(
                    {
                        "recipe": recipe,
                        "seed": s,
                        "task": "t",
                        "index": np.arange(400),
                        "category": "reasoning",
                        "correct": c,
                        "logit_diff": c - 0.5,
                    }
                )
            )
    out = compare_recipes(
        pd.concat(frames), "text-only", "accuracy", by=("category",), relative=True, n_resamples=1000
    ).iloc[0]
    assert out["scale"] == "relative_%"
    assert out["estimate"] == pytest.approx(100 * (out["recipe_value"] / out["baseline_value"] - 1))
    assert out["ci_low"] < 20 < out["ci_high"] and 5 < out["ci_low"] and out["ci_high"] < 40
    diff = compare_recipes(pd.concat(frames), "text-only", "correct", by=("category",), n_resamples=1000).iloc[0]
    assert out["p_value"] == diff["p_value"]  # same null hypothesis
    assert out["mde"] == pytest.approx(100 * diff["mde"] / diff["baseline_value"])


def test_identical_recipes_are_rarely_called_distinguishable():
    """200 tables of identical recipes (own seed effects, 3 seeds, 2 categories): <= 5% call any row."""
    hits = 0
    for k in range(200):
        df = score_table(
            {"code": 0.0}, n_seeds=3, n_items=12, categories=("reasoning", "knowledge"), seed_sd=0.4, rng=1000 + k
        )
        out = compare_recipes(df, "text-only", "logit_diff", by=("category",), n_resamples=200, seed=k)
        hits += bool(out["distinguishable"].any())
    assert hits <= 10, hits


def test_one_seed_is_never_distinguishable():
    df = score_table({"code": 3.0}, n_seeds=1, n_items=80, seed_sd=0.0, rng=2)
    out = compare_recipes(df, "text-only", "logit_diff", by=("category",), n_resamples=500).iloc[0]
    assert out["n_seeds"] == 1 and "1 seed" in out["test"] and "item" in out["test"]
    assert out["ci_low"] > 2 and out["p_value"] < 1e-10 and out["p_holm"] < 1e-10
    assert not out["distinguishable"]
    # its interval is the item-level bootstrap of the paired differences
    r = df[df.recipe == "code"].sort_values("index")["logit_diff"].to_numpy()
    b = df[df.recipe == "text-only"].sort_values("index")["logit_diff"].to_numpy()
    from codetransfer.analysis.stats import bootstrap_ci

    _, lo, hi = bootstrap_ci(r - b, 4000, 0.95, 0)
    assert out["ci_low"] == pytest.approx(float(lo), abs=0.1) and out["ci_high"] == pytest.approx(float(hi), abs=0.1)


def test_mde_shrinks_with_seeds_and_has_its_power():
    """Mean MDE falls as seeds increase; at the MDE a t-test over seeds rejects about 80% of the time."""
    rng = np.random.default_rng(0)
    mean_mde = []
    for k in (3, 6, 12):
        mean_mde.append(
            np.mean(
                [minimum_detectable_effect(rng.normal(0, 1, (k, 10)) + rng.normal(0, 1, (k, 1))) for _ in range(200)]
            )
        )
    assert mean_mde[0] > mean_mde[1] > mean_mde[2], mean_mde
    # power: seed differences ~ N(delta, 1), delta = the MDE for sd = 1
    k = 6
    delta = sps.t.ppf(0.975, k - 1) + sps.t.ppf(0.8, k - 1)
    delta /= np.sqrt(k)
    x = rng.normal(delta, 1.0, (2000, k))
    power = np.mean(sps.ttest_1samp(x, 0.0, axis=1).pvalue < 0.05)
    assert 0.74 < power < 0.86, power
    # and in the table, from the seeds' spread
    df = score_table({"code": 0.0}, n_seeds=8, n_items=30, seed_sd=0.5, rng=4)
    out = compare_recipes(df, "text-only", by=("category",), n_resamples=200).iloc[0]
    g = df.pivot_table(index="seed", columns="recipe", values="logit_diff", aggfunc="mean")
    sd = (g["code"] - g["text-only"]).std(ddof=1)
    assert out["mde"] == pytest.approx((sps.t.ppf(0.975, 7) + sps.t.ppf(0.8, 7)) * sd / np.sqrt(8))


def test_the_mde_is_at_the_corrected_level_of_the_rows_it_is_compared_with():
    """With m rows the MDE is that of a t-test at level 0.05 / m (a row counts only where its Bonferroni-corrected
    interval excludes 0): an effect above the uncorrected MDE may still not be distinguishable, never one above
    this."""
    df = score_table({"code": 0.0, "stdlib": 0.0}, n_seeds=4, categories=("reasoning", "knowledge"), rng=5)
    out = compare_recipes(df, "text-only", by=("category",), n_resamples=200)
    assert len(out) == 4
    for r in out.itertuples():
        rows = df[df["category"] == r.category]
        g = rows.pivot_table(index="seed", columns="recipe", values="logit_diff", aggfunc="mean")
        sd = (g[r.recipe] - g["text-only"]).std(ddof=1)
        assert r.mde == pytest.approx((sps.t.ppf(1 - 0.05 / 8, 3) + sps.t.ppf(0.8, 3)) * sd / np.sqrt(4))
    one = compare_recipes(df[df["recipe"] != "stdlib"], "text-only", by=("category",), n_resamples=200)
    assert (one["mde"].to_numpy() < out.loc[out["recipe"] == "code", "mde"].to_numpy()).all()  # fewer rows


def test_holm_column_equals_statsmodels_multipletests():
    from statsmodels.stats.multitest import multipletests

    df = score_table(
        {"code": 0.3, "mixed": 0.1, "same": 0.0},
        n_seeds=4,
        n_items=25,
        categories=("reasoning", "knowledge", "code"),
        rng=5,
    )
    out = compare_recipes(df, "text-only", by=("category",), n_resamples=200)
    assert len(out) == 9
    expected = multipletests(out["p_value"].to_numpy(), method="holm")[1]
    assert np.allclose(out["p_holm"].to_numpy(), expected, rtol=0, atol=1e-15)


def test_mixedlm_equals_t_test_over_seed_means_in_a_balanced_table():
    """Balanced random intercept, REML: the intercept's SE is sd(seed means)/sqrt(k), so p is the t-test's."""
    rng = np.random.default_rng(8)
    d = rng.normal(0.2, 1.0, (5, 40)) + rng.normal(0, 0.6, (5, 1))
    p, name = mixedlm_pvalue(d)
    assert "MixedLM" in name and "df=4" in name
    assert p == pytest.approx(sps.ttest_1samp(d.mean(1), 0.0).pvalue, rel=1e-3)


def test_signflip_from_six_seeds_with_known_answers():
    assert signflip_pvalue(np.arange(1.0, 7.0)) == pytest.approx(2 / 64)  # all positive: 2 of 64 patterns
    assert signflip_pvalue(np.array([1.0, -1.0, 2.0, -2.0, 3.0, -3.0])) == 1.0
    big = signflip_pvalue(np.ones(20), n_resamples=2000)
    assert big == pytest.approx(1 / 2001, abs=2e-3)
    few = compare_recipes(score_table({"code": 0.5}, n_seeds=5, rng=6), "text-only", by=(), n_resamples=100)
    many = compare_recipes(score_table({"code": 0.5}, n_seeds=6, rng=6), "text-only", by=(), n_resamples=100)
    assert np.isnan(few["p_signflip"].iloc[0]) and 0 < many["p_signflip"].iloc[0] <= 1


def test_rows_by_task_and_difficulty_pair_only_common_seeds_and_items():
    df = score_table({"code": 0.2}, n_seeds=4, n_items=20, rng=7)
    drop = (df.recipe == "code") & (df.seed == 3) | (df.recipe == "text-only") & (df["index"] == 0)
    out = compare_recipes(df[~drop], "text-only", "logit_diff", n_resamples=100)
    assert list(out.columns[:7]) == ["recipe", "baseline", "metric", "scale", "category", "task", "difficulty"]
    assert sorted(out["difficulty"]) == [0, 1]
    assert set(out["n_seeds"]) == {3} and sorted(out["n_items"]) == [9, 10]


def test_headline_pools_levels_where_the_baseline_is_above_chance():
    """Difficulty 0 is easy for the baseline (above chance), difficulty 1 at chance: only level 0 is pooled."""
    rng = np.random.default_rng(9)
    frames = []
    for recipe, shift in (("text-only", 0.0), ("code", 0.5)):
        for s in range(3):
            for level, p in ((0, 0.9), (1, 0.5)):
                c = (rng.random(60) < min(1.0, p + 0.05 * shift)).astype(float)
                frames.append(pd.DataFrame({
                    "recipe": recipe, "seed": s, "task": "t", "index": np.arange(60) + 100 * level,
                    "category": "reasoning", "difficulty": level, "chance": 0.5, "correct": c,
                    "logit_diff": c + shift + rng.normal(0, 1, 60),
                }))  # fmt: skip
    df = pd.concat(frames, ignore_index=True)
    lv = above_chance_levels(df, "text-only", n_resamples=500)
    assert lv.set_index("difficulty")["above_chance"].to_dict() == {0: True, 1: False}
    head = headline_comparison(df, "text-only", "logit_diff", n_resamples=500)
    assert len(head) == 1
    row = head.iloc[0]
    assert row["pooled"] and row["task"] == "pooled" and row["difficulty"] == "pooled"
    assert row["pooled_levels"] == "t/0" and row["n_items"] == 60
    direct = compare_recipes(df[df.difficulty == 0], "text-only", "logit_diff", by=("category",), n_resamples=500)
    assert row["estimate"] == pytest.approx(direct["estimate"].iloc[0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(baseline="text-onyl"), "baseline"),
        (dict(metric="logit"), "metric"),
        (dict(by=("family",)), "family"),
        (dict(recipes=["nope"]), "recipes"),
        (dict(confidence=95), "confidence"),
        (dict(n_resamples=3), "n_resamples"),
    ],
)
def test_bad_inputs_are_refused(kwargs, match):
    df = score_table({"code": 0.1}, n_seeds=2, n_items=5)
    args = dict(baseline="text-only") | kwargs
    with pytest.raises(CodetransferError, match=match) as e:
        compare_recipes(df, **args)
    assert "\n" not in str(e.value)


def test_duplicate_rows_and_missing_columns_are_refused():
    df = score_table({"code": 0.1}, n_seeds=2, n_items=5)
    with pytest.raises(CodetransferError, match="twice"):
        compare_recipes(pd.concat([df, df.iloc[:1]]), "text-only")
    with pytest.raises(CodetransferError, match="logit_diff"):
        compare_recipes(df.drop(columns="logit_diff"), "text-only")
    with pytest.raises(CodetransferError, match="NaN"):
        compare_recipes(df.assign(logit_diff=np.nan), "text-only")


def test_mixedlm_matches_the_balanced_reml_closed_form_also_at_the_boundary():
    """No seed variance to speak of (between-seed mean square below the within): SE is the pooled one."""
    rng = np.random.default_rng(10)
    k, n = 3, 30
    d = rng.normal(0.1, 1.0, (k, n))
    d -= d.mean(1, keepdims=True) - d.mean()  # identical seed means: seed variance estimate 0
    p, _ = mixedlm_pvalue(d)
    se = np.sqrt(d.var(ddof=1) / (k * n))
    assert p == pytest.approx(2 * sps.t.sf(abs(d.mean()) / se, k - 1), rel=1e-3)


def test_one_seed_and_one_item_has_no_p_value():
    """One paired difference tests nothing: no p-value (not 0), never distinguishable, and the other rows'
    Holm correction ignores it."""
    df = score_table({"code": 3.0}, n_seeds=1, n_items=1, seed_sd=0.0, rng=2)
    out = compare_recipes(df, "text-only", "logit_diff", by=("category",), n_resamples=500).iloc[0]
    assert np.isnan(out["p_value"]) and np.isnan(out["p_holm"]) and "nothing to test" in out["test"]
    assert not out["distinguishable"]


def test_comparison_table_compares_each_recipe_with_its_control_too():
    from codetransfer.analysis.grid import comparison_table

    df = score_table({"diluted": -0.5, "code": 0.5}, n_seeds=3, n_items=40, seed_sd=0.05, rng=5)
    plain = comparison_table(df, "text-only", 200, 0)
    table = comparison_table(df, "text-only", 200, 0, controls={"code": "diluted", "diluted": "text-only"})
    # the baseline's rows are unchanged; the control's rows are the same call with the control as baseline
    pd.testing.assert_frame_equal(table[table.baseline == "text-only"].reset_index(drop=True), plain)
    vs = table[(table.baseline == "diluted") & (table.metric == "logit_diff") & ~table.pooled.astype(bool)]
    assert set(vs.recipe) == {"code"}
    assert vs.estimate.mean() == pytest.approx(1.0, abs=0.3)  # planted: code - diluted = 0.5 - (-0.5)
    direct = compare_recipes(df, "diluted", "logit_diff", ("category", "task", "difficulty"), recipes=["code"],
                             n_resamples=200, seed=0)  # fmt: skip
    assert np.allclose(vs.estimate.to_numpy(), direct.estimate.to_numpy())


@pytest.mark.parametrize("seed_sd", [0.0, 0.05, 0.5, 2.0])
@pytest.mark.parametrize("k, n", [(3, 12), (5, 40), (2, 7)])
def test_mixedlm_pvalue_equals_statsmodels_reml_fit(seed_sd, k, n):
    """The closed form equals statsmodels' iterative REML fit of the random-intercept model (peer parity),
    inside the variance boundary and at it."""
    import warnings

    from statsmodels.regression.mixed_linear_model import MixedLM, MixedLMParams

    rng = np.random.default_rng(int(100 * seed_sd) + 7 * k + n)
    d = 0.3 + rng.normal(0, seed_sd, (k, 1)) + rng.normal(0, 1.0, (k, n))
    p, name = mixedlm_pvalue(d)
    # statsmodels' optimiser stops early or fails on 2-5 groups depending on where it starts: take its best REML
    # fit (highest restricted likelihood) over starts that do not use the closed form
    fits = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ratio in (1e-4, 0.1, 1.0):
            start = MixedLMParams.from_components(fe_params=np.array([d.mean()]), cov_re=np.array([[ratio]]))
            model = MixedLM(d.ravel(), np.ones((d.size, 1)), np.repeat(np.arange(k), n))
            fits.append(model.fit(reml=True, start_params=start))
    fit = max((f for f in fits if np.isfinite(f.llf)), key=lambda f: f.llf)
    theirs = 2 * sps.t.sf(abs(fit.fe_params[0] / fit.bse_fe[0]), df=k - 1)
    assert p == pytest.approx(theirs, rel=2e-3, abs=1e-6) and "MixedLM" in name
