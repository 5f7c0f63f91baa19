"""Every plot_* drawn on small synthetic tables, checked for the style's invariants: shared colour
limits across panels, symmetric limits for signed metrics, axis and colourbar labels in words (not
column names), one colour per recipe across figures, layer 0 at the bottom, phase boundaries and
tokens in millions on over-training plots, infinite intervals not drawn as finite bars."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from codetransfer.analysis import attention_plots as AP
from codetransfer.analysis import patching_plots as PP
from codetransfer.analysis import style as S
from codetransfer.analysis.evaluate import plot_accuracy_vs_difficulty, plot_relative_change
from codetransfer.analysis.learning import plot_learning_curves
from codetransfer.probes.plots import plot_first_decodable_layer, plot_probe_curves

RAW = {"value", "pos_label", "induction_loss", "metric", "layer_pos", "step", "tokens", "ci_low", "ci_high", ""}
RECIPES = ("text-only", "balanced", "my new recipe")


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def heads_table():
    rows = []
    for k, recipe in enumerate(RECIPES):
        for layer in range(3):
            for head in range(2):
                for metric, v in (
                    ("induction", 0.1 * (k + 1) + 0.02 * layer),
                    ("ablation_mean_logit_diff", 0.05 * (k - 1)),
                ):
                    rows.append(
                        dict(
                            run=f"{recipe}-s0",
                            recipe=recipe,
                            seed=0,
                            task="t",
                            rendering="",
                            layer=layer,
                            head=head,
                            metric=metric,
                            value=v + 0.001 * head,
                            ci_low=v - 0.01,
                            ci_high=v + 0.01,
                        )
                    )
    return pd.DataFrame(rows)


def over_training_table():
    rows = []
    for k, recipe in enumerate(RECIPES[:2]):
        for step in (10, 20, 30):
            for layer in range(2):
                for head in range(2):
                    for metric, v in (("induction", 0.01 * step * (k + 1)), ("induction_loss", 7.0 - 0.01 * step)):
                        rows.append(
                            dict(
                                run=f"{recipe}-s0",
                                recipe=recipe,
                                seed=0,
                                step=step,
                                tokens=step * 1_000_000,
                                task="random",
                                rendering="",
                                layer=layer,
                                head=head,
                                metric=metric,
                                value=v + 0.001 * head,
                                ci_low=v - 0.01,
                                ci_high=v + 0.01,
                            )
                        )
    return pd.DataFrame(rows)


PHASES = pd.DataFrame(
    [
        ("text-only", "main", 0, 30_000_000),
        ("balanced", "code-init", 0, 15_000_000),
        ("balanced", "text", 15_000_000, 30_000_000),
    ],
    columns=["recipe", "phase", "start", "end"],
)


def patch_table():
    rows = []
    for k, recipe in enumerate(RECIPES[:2]):
        for layer in range(3):
            for pos in ("query", "last"):
                v = (0.5 + 0.3 * k) * (layer + 1) / 3 - (0.2 if pos == "query" else 0.0)
                rows.append(
                    dict(
                        run=f"{recipe}-s0",
                        recipe=recipe,
                        seed=0,
                        task="t",
                        site="resid_pre",
                        layer=layer,
                        head=None,
                        pos=None,
                        pos_label=pos,
                        metric="denoising",
                        value=v,
                        ci_low=v - 0.3,
                        ci_high=v + 0.3,
                    )
                )
            for head in range(2):
                v = 0.1 * (k + 1) * (head - 0.5)
                rows.append(
                    dict(
                        run=f"{recipe}-s0",
                        recipe=recipe,
                        seed=0,
                        task="t",
                        site="head_out",
                        layer=layer,
                        head=head,
                        pos=None,
                        pos_label="all",
                        metric="denoising",
                        value=v,
                        ci_low=v - 0.01,
                        ci_high=v + 0.01,
                    )
                )
    return pd.DataFrame(rows)


def learning_table():
    rows = []
    for recipe in RECIPES[:2]:
        for step in (10, 20, 30):
            v = 0.2 + 0.01 * step
            rows.append(
                dict(
                    run=f"{recipe}*",
                    recipe=recipe,
                    seed=-1,
                    step=step,
                    tokens=step * 1_000_000,
                    task="t",
                    category="reasoning",
                    difficulty="0",
                    metric="accuracy",
                    value=v,
                    ci_low=v - 0.05,
                    ci_high=v + 0.05,
                    chance=0.25,
                    copy_chance=0.4,
                    n_items=50,
                )
            )
    return pd.DataFrame(rows)


def eval_table():
    rows = []
    for recipe in RECIPES[:2]:
        for d in range(3):
            v = 0.8 - 0.2 * d
            rows.append(
                dict(
                    run=f"{recipe}*",
                    recipe=recipe,
                    seed=-1,
                    task="t",
                    category="reasoning",
                    difficulty=str(d),
                    metric="accuracy",
                    value=v,
                    ci_low=v - 0.1,
                    ci_high=v + 0.1,
                    chance=0.25,
                    copy_chance=0.4,
                    n_items=30,
                )
            )
    return pd.DataFrame(rows)


def probe_table():
    rows = []
    for recipe in (*RECIPES[:2], "text-only (random init)", "balanced (random init)"):
        for layer in range(3):
            v = 0.3 if "random" in recipe else 0.5 + 0.1 * layer
            for metric in ("accuracy", "majority"):
                rows.append(
                    dict(
                        run=f"{recipe}-s0",
                        recipe=recipe,
                        seed=0,
                        task="t",
                        site="resid_post",
                        pos="p",
                        probe="logistic",
                        head=-1,
                        layer=layer,
                        metric=metric,
                        value=v if metric == "accuracy" else 0.25,
                        ci_low=v - 0.05,
                        ci_high=v + 0.05,
                    )
                )
    return pd.DataFrame(rows)


def summary_table(inf_high: bool):
    return pd.DataFrame(
        [
            dict(
                recipe="balanced",
                baseline="text-only",
                category="reasoning",
                metric="relative_change",
                of="accuracy",
                value=0.5,
                ci_low=0.1,
                ci_high=np.inf if inf_high else 0.9,
                recipe_value=0.3,
                baseline_value=0.2,
                n_seeds=1,
                n_items=30,
            ),
            dict(
                recipe="balanced",
                baseline="text-only",
                category="code",
                metric="relative_change",
                of="accuracy",
                value=0.2,
                ci_low=-0.1,
                ci_high=0.4,
                recipe_value=0.6,
                baseline_value=0.5,
                n_seeds=1,
                n_items=30,
            ),
        ]
    )


# ------------------------------------------------------------------------------------------------


def colorbar_label(ax) -> str:
    im = ax.images[0]
    assert im.colorbar is not None, "heatmap without colourbar"
    return im.colorbar.ax.get_ylabel()


def assert_words(*labels: str) -> None:
    for label in labels:
        assert label.strip() and label.strip() not in RAW, f"label {label!r} is empty or a raw column name"


def layer0_at_bottom(ax) -> bool:
    """The y tick labelled '0' is drawn below every other layer tick (display coordinates)."""
    ticks = {t.get_text(): ax.transData.transform((0, y))[1] for t, y in zip(ax.get_yticklabels(), ax.get_yticks())}
    return ticks["0"] == min(ticks.values())


def test_head_score_panels_share_limits_and_label_in_words():
    t = heads_table()
    fig, axes = plt.subplots(1, 3)
    for ax, r in zip(axes, RECIPES):
        AP.plot_head_scores(t, "induction", ax=ax, recipe=r)
    lims = {ax.images[0].get_clim() for ax in axes}
    assert len(lims) == 1, f"panels have different colour limits {lims}"
    lo, hi = lims.pop()
    assert lo == 0 and hi == pytest.approx(t[t.metric == "induction"]["value"].max())
    assert {ax.images[0].get_cmap().name for ax in axes} == {"viridis"}
    for ax in axes:
        assert_words(ax.get_xlabel(), ax.get_ylabel(), colorbar_label(ax))
        assert layer0_at_bottom(ax)


def test_signed_metric_gets_symmetric_limits_and_a_diverging_map_whatever_the_panel_holds():
    t = heads_table()
    # text-only's ablation values are all negative, my new recipe's all positive: same map, same symmetric limits
    a = AP.plot_head_scores(t, "ablation_mean_logit_diff", recipe="text-only")
    b = AP.plot_head_scores(t, "ablation_mean_logit_diff", recipe="my new recipe")
    for ax in (a, b):
        lo, hi = ax.images[0].get_clim()
        assert lo == -hi and hi > 0
        assert ax.images[0].get_cmap().name == "RdBu_r"
    assert a.images[0].get_clim() == b.images[0].get_clim()


def test_head_difference_is_symmetric_on_the_scores_scale_and_marks_noise():
    t = heads_table()
    ax = AP.plot_head_score_difference(t, "balanced", "text-only", "induction")
    lo, hi = ax.images[0].get_clim()
    assert lo == -hi and hi >= t[t.metric == "induction"]["value"].max() - 1e-12
    assert layer0_at_bottom(ax)
    assert_words(colorbar_label(ax))
    # differences of 0.1 with half-widths 0.01: none is marked as noise
    assert not ax.collections
    t2 = t.assign(ci_low=t["value"] - 1.0, ci_high=t["value"] + 1.0)
    ax2 = AP.plot_head_score_difference(t2, "balanced", "text-only", "induction")
    assert len(ax2.collections[0].get_offsets()) == 6  # every cell within the (wide) intervals


def test_patching_maps_share_symmetric_limits_and_differences_use_that_scale():
    t = patch_table()
    axes = PP.plot_side_by_side(t, by="recipe", kind="layer_pos", site="resid_pre", metric="denoising")
    lims = {a.images[0].get_clim() for a in axes}
    assert len(lims) == 1
    lo, hi = lims.pop()
    assert lo == -hi and hi == pytest.approx(t[t.site == "resid_pre"]["value"].abs().max())
    for a in axes:
        assert layer0_at_bottom(a)
        assert_words(a.get_xlabel(), colorbar_label(a))
    d = PP.plot_difference(t, "balanced", "text-only", kind="layer_pos", site="resid_pre", metric="denoising")
    assert d.images[0].get_clim() == (lo, hi), "the difference is drawn on the maps' scale, not its own"
    assert len(d.collections[0].get_offsets()) == 6  # |diff| <= 0.3 * (layer+1)/3 < sqrt(2) * 0.3: all marked
    single = PP.plot_layer_pos(t, site="resid_pre", recipe="text-only")
    assert single.images[0].get_clim() == (lo, hi)
    heads = PP.plot_layer_head(t, recipe="balanced")
    assert layer0_at_bottom(heads) and heads.images[0].get_clim()[0] == -heads.images[0].get_clim()[1]


def test_recipe_colour_is_the_same_in_every_figure():
    ax1 = plot_learning_curves(learning_table(), task="t", difficulty="0", ax=S.new_axes(), phases=PHASES)
    ax2 = plot_accuracy_vs_difficulty(eval_table(), task="t", ax=S.new_axes())
    ax3 = plot_probe_curves(probe_table(), ax=S.new_axes())
    ax4 = plot_relative_change(summary_table(False), ax=S.new_axes())
    colours = {}
    for ax in (ax1, ax2, ax3):
        for line in ax.get_lines():
            if line.get_label() in RECIPES:
                colours.setdefault(line.get_label(), set()).add(matplotlib.colors.to_hex(line.get_color()))
    bars = [p for p in ax4.patches if p.get_label() == "balanced"] or ax4.containers[0].patches
    colours.setdefault("balanced", set()).add(matplotlib.colors.to_hex(bars[0].get_facecolor()))
    assert colours["balanced"] == {S.recipe_color("balanced")} and colours["text-only"] == {S.recipe_color("text-only")}
    assert S.recipe_color("balanced") != S.recipe_color("text-only")
    assert S.recipe_color("my new recipe") == S.recipe_color("my new recipe") in S.PALETTE
    assert S.recipe_color("balanced (random init)") == S.RANDOM_INIT_COLOR


def test_over_training_plots_use_tokens_in_millions_and_phase_boundaries():
    lt = plot_learning_curves(learning_table(), task="t", difficulty="0", phases=PHASES)
    over = AP.plot_best_head_over_training(over_training_table(), "induction", phases=PHASES)
    heads = AP.plot_score_over_training(over_training_table(), "induction", phases=PHASES)
    for ax in (lt, over, heads):
        assert ax.get_xlabel() == "training tokens (millions)"
        fmt = ax.xaxis.get_major_formatter()
        assert fmt(15_000_000, 0) == "15"
        vlines = [
            ln for ln in ax.get_lines() if np.allclose(ln.get_xdata(), 15_000_000) and len(set(ln.get_xdata())) == 1
        ]
        assert vlines, "the code-init | text boundary at 15M tokens is not drawn"
        assert any("code-init | text" in t.get_text() for t in ax.texts)
        assert_words(ax.get_ylabel())
        legend = ax.get_legend()
        assert legend is not None
        assert legend.get_bbox_to_anchor().x0 >= ax.get_window_extent().x1 - 1, "the legend covers the data"


def test_induction_loss_marks_the_uniform_guess():
    ax = AP.plot_best_head_over_training(over_training_table(), "induction_loss", vocab_size=512, phases=PHASES)
    ys = [ln.get_ydata()[0] for ln in ax.get_lines() if len(set(ln.get_ydata())) == 1 and len(ln.get_ydata()) == 2]
    assert any(np.isclose(y, np.log(512)) for y in ys)
    assert any("uniform guess" in t.get_text() for t in ax.texts)
    assert "induction_loss" not in ax.get_ylabel() and "nats" in ax.get_ylabel()


def test_learning_and_eval_reference_lines_are_labelled():
    ax = plot_learning_curves(learning_table(), task="t", difficulty="0")
    texts = {t.get_text() for t in ax.texts}
    assert {"chance", "copy baseline"} <= texts
    ax2 = plot_accuracy_vs_difficulty(eval_table(), task="t")
    assert {"chance", "copy baseline"} <= {ln.get_label() for ln in ax2.get_lines()}
    assert_words(ax2.get_xlabel(), ax2.get_ylabel())


def test_probe_curves_pool_random_init_twins_into_one_line():
    ax = plot_probe_curves(probe_table())
    labels = [ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    assert sum("random init" in lab for lab in labels) == 1
    assert {"text-only", "balanced"} <= set(labels)
    assert any(t.get_text() == "majority class" for t in ax.texts)
    assert_words(ax.get_xlabel(), ax.get_ylabel())
    ax2 = plot_first_decodable_layer(probe_table(), threshold=0.55)
    assert ax2.get_ylabel().startswith("first layer")


def _bar_tops(ax) -> list[float]:
    """Upper ends of the error bars drawn (segments of the LineCollections)."""
    tops = []
    for coll in ax.collections:
        for seg in getattr(coll, "get_segments", lambda: [])():
            tops.append(float(np.max(np.asarray(seg)[:, 1])))
    return tops


def test_infinite_interval_is_not_drawn_as_a_finite_bar():
    ax = plot_relative_change(summary_table(inf_high=True))
    top = ax.get_ylim()[1]
    # the reasoning bar (x = 1 after sorting: code, reasoning) runs to the top of the axes and says so
    assert any(np.isclose(t, top, rtol=0.1) for t in _bar_tops(ax)) or any(t >= top * 0.9 for t in _bar_tops(ax))
    assert any(t.get_text() == "unbounded" for t in ax.texts)
    finite = plot_relative_change(summary_table(inf_high=False))
    assert not any(t.get_text() == "unbounded" for t in finite.texts)
    assert max(_bar_tops(finite)) == pytest.approx(90.0)
    assert_words(ax.get_ylabel(), ax.get_xlabel())


def test_phase_table_from_a_grid_rounds_up_to_whole_steps():
    from codetransfer.trained.presets import preset

    grid = preset("tiny")
    t = S.phase_table(grid)
    per_step = grid.train.batch_size * grid.model.n_ctx
    assert set(t["recipe"]) == {r.name for r in grid.recipes}
    assert (t["end"] % per_step == 0).all() and (t["end"] > t["start"]).all()
    two = t[t["recipe"] == "text+stdlib"]
    assert list(two["phase"]) == ["base", "arm"] and two["start"].iloc[1] == two["end"].iloc[0]


def test_shared_limits():
    signed = S.metric_style("denoising")
    assert S.shared_limits([0.1, -0.4, np.nan], signed) == (-0.4, 0.4)
    unsigned = S.metric_style("induction")
    assert S.shared_limits([0.2, 0.3], unsigned) == (0.0, 0.3)
    assert S.shared_limits([5.9, 6.3], S.metric_style("induction_loss")) == (5.9, 6.3)


# ------------------------------------------------------------------------------------------------
# the report's tables (codetransfer/report.py)


def test_numbers_are_rounded_to_what_their_interval_supports():
    from codetransfer.report import decimals, with_interval

    assert with_interval(0.33899998664855957, 0.21, 0.47) == "0.3 [0.2, 0.5]"
    assert with_interval(0.339, 0.335, 0.343) == "0.339 [0.335, 0.343]"
    assert with_interval(1.2345, 0.5, np.inf, scale=100, signed=True, unit="%") == "+123% [+50, unbounded]"
    assert with_interval(np.nan, 0, 1, missing="undefined: the baseline scores 0") == "undefined: the baseline scores 0"
    assert decimals(0.1, 0.1) == 3 and decimals(-2.0, 6.0) == 0
    # an end that rounds to zero is 0, never -0.0
    assert with_interval(0.07, -0.004, 0.15) == "0.07 [0.00, 0.15]"
    assert with_interval(-0.04, -0.3, 0.2, signed=True) == "+0.0 [-0.3, +0.2]"


def test_tables_state_reasons_use_integer_counts_drop_duplicates_and_escape_names():
    from codetransfer.report import format_table, md_escape, names, render_table

    df = pd.DataFrame(
        {
            "recipe": ["a<b>|c", "a<b>|c", "text-only"],
            "tokens": [375168.0, 375168.0, np.nan],
            "value": [0.33899998664855957, 0.33899998664855957, np.nan],
            "lo": [0.21, 0.21, np.nan],
            "hi": [0.47, 0.47, np.nan],
        }
    )
    t = format_table(
        df,
        intervals={"value": ("lo", "hi")},
        counts=("tokens",),
        reasons={"value": "not scored at this step", "tokens": "not trained"},
    )
    assert len(t) == 2 and list(t.columns) == ["recipe", "tokens", "value"]
    assert t.loc[0, "tokens"] == "375,168" and t.loc[0, "value"] == "0.3 [0.2, 0.5]"
    assert t.loc[1, "value"] == "not scored at this step" and t.loc[1, "tokens"] == "not trained"
    assert not t.apply(lambda c: c.str.contains("nan")).any().any()
    r = render_table(t)
    assert "a&lt;b&gt;|c" in r.html and "<b>" not in r.html and "<style" not in r.html
    assert "a&lt;b&gt;\\|c" in r.markdown and md_escape("x|y") == "x\\|y"
    assert names("a, b") == ("a", "b") == names(("a", "b")) and names(None) == ()


def test_every_shipped_recipe_has_its_own_colour():
    from codetransfer.trained.presets import PRESETS

    names = sorted({r.name for build in PRESETS.values() for r in build().recipes})
    assert set(names) <= set(S.KNOWN_RECIPES)
    assert len({S.recipe_color(n) for n in names}) == len(names)
