"""The report's patching section prints no artifact as a finding: a cross-model share only where the two
recipes' seed-paired gap excludes 0 (and never an unstable one as the headline), a cross-rendering
effect only where it exceeds its token-matched control (codetransfer/report.py, hand-built tables)."""

from __future__ import annotations

import pandas as pd
import pytest

from codetransfer.analysis import schema
from codetransfer.report import _patching, cross_rendering_reading

TASK = "entity_tracking"


def _patch_rows(run, recipe, seed, cells, metric):
    """Rows of a patching-like table: ``cells`` = {(site, layer, head, pos_label): (value, low, high)}."""
    rows = [
        dict(run=run, recipe=recipe, seed=seed, task=TASK, site=site, layer=layer, head=head, pos=None,
             pos_label=pos, metric=metric, value=v, ci_low=lo, ci_high=hi)
        for (site, layer, head, pos), (v, lo, hi) in cells.items()
    ]  # fmt: skip
    t = pd.DataFrame(rows)
    return t.astype({"seed": "Int64", "layer": "Int64", "head": "Int64", "pos": "Int64"})


def _comparison(recipe, lo, hi, n_seeds=3, baseline="text-only", estimate=None, difficulty=0):
    est = (lo + hi) / 2 if estimate is None else estimate
    row = dict(
        recipe=recipe, baseline=baseline, metric="logit_diff", scale="difference", category="reasoning", task=TASK,
        difficulty=difficulty, estimate=est, ci_low=lo, ci_high=hi, ci_low_corrected=lo, ci_high_corrected=hi,
        recipe_value=1.0, baseline_value=1.0 - est, n_seeds=n_seeds, n_items=48, p_value=0.01, p_holm=0.01,
        p_signflip=float("nan"), test="mixedlm", mde=0.2, distinguishable=n_seeds >= 3 and (lo > 0 or hi < 0),
        pooled=False, pooled_levels="",
    )  # fmt: skip
    t = pd.DataFrame([row])
    t["difficulty"] = t["difficulty"].astype("Int64")
    return schema.check(t, "comparison")


SHARES = {
    ("mlp_out", 1, None, "last"): (0.6234, 0.41, 0.83),
    ("resid_pre", 1, None, "query"): (0.21, 0.02, 0.39),
    ("attn_out", 0, None, "last"): (3.2, 1.0, 5.0),  # a share of a small gap: unstable
}


def _section(tmp_path, *, cross_model=None, comparison=None, cross_rendering=None, recipes=()):
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    for name, t in (("cross_model", cross_model), ("comparison", comparison), ("cross_rendering", cross_rendering)):
        if t is not None:
            t.to_parquet(results / f"{name}.parquet")
    s, findings = _patching(results, tmp_path, "text-only", difficulty=0, recipes=recipes)
    text = "\n".join(str(b) for kind, b in s.blocks if kind == "text")
    tables = "\n".join(b.markdown for kind, b in s.blocks if kind == "table")
    return text, tables, findings


def _cross_model(recipe="code25", shares=SHARES, seed=0):
    return _patch_rows(f"{recipe}-s{seed}->text-only-s{seed}", f"{recipe}->text-only", seed, shares, "cross_model")


def test_share_withheld_when_the_gap_interval_includes_zero(tmp_path):
    text, tables, findings = _section(tmp_path, cross_model=_cross_model(), comparison=_comparison("code25", -0.1, 0.7))
    assert "no gap to explain" in text and "only the within-model maps above" in text
    assert findings == [
        "Cross-model patching: no gap to explain between code25 and text-only (code25 - text-only = +0.3 "
        "[-0.1, +0.7] in logit difference (entity_tracking level 0) over 3 seed(s) (corrected 95% interval)), so no "
        "share of it is reported."
    ]
    assert "share of the gap" not in tables and "0.6" not in tables  # no share is printed anywhere
    # one seed: an interval that excludes 0 is item-level, not seed-level: still no gap to explain
    _, tables, findings = _section(tmp_path, cross_model=_cross_model(), comparison=_comparison("code25", 0.2, 0.9, 1))
    assert "no gap to explain" in findings[0] and "over 1 seed(s)" in findings[0] and tables == ""
    # no comparison table at all: no gap to explain either
    (tmp_path / "results" / "comparison.parquet").unlink()
    text, _, findings = _section(tmp_path, cross_model=_cross_model())
    assert "no seed-paired comparison of code25 with text-only" in findings[0]


def test_share_shown_when_the_gap_interval_excludes_zero_and_unstable_ones_flagged(tmp_path):
    text, tables, findings = _section(tmp_path, cross_model=_cross_model(), comparison=_comparison("code25", 0.2, 0.9))
    assert findings == [
        "Cross-model patching: of the gap code25 - text-only = +0.6 [+0.2, +0.9] in logit difference "
        "(entity_tracking level 0) over 3 seed(s) (corrected 95% interval), the component carrying most is mlp_out L1 @last in code25-s0->text-only-s0 "
        "(0.6 [0.4, 0.8] of it; interval excludes 0)."
    ]
    lines = {line.split(" | ")[1]: line for line in tables.splitlines() if line.startswith("| code25")}
    assert "0.6 [0.4, 0.8]" in lines["mlp_out L1 @last"] and "interval excludes 0" in lines["mlp_out L1 @last"]
    assert "unstable: outside [-0.5, 1.5]" in lines["attn_out L0 @last"]  # flagged, in the table only
    assert "attn_out" not in findings[0] and "3.2" not in findings[0]
    # every share out of range: the table flags them and nothing is headlined
    wild = {k: (v * 10, lo * 10, hi * 10) for k, (v, lo, hi) in SHARES.items()}
    text, tables, findings = _section(
        tmp_path, cross_model=_cross_model(shares=wild), comparison=_comparison("code25", 0.2, 0.9)
    )
    assert findings == [] and "unstable, none is reported" in text and tables.count("unstable") == 3


def with_null(run: str, patched: float) -> pd.DataFrame:
    """:func:`_cross_model` with its pair's unpatched metrics (code25 2.0, text-only 1.0 logits), and the null pair
    ``run`` into text-only-s0 whose raw patched metric at mlp_out L1 @last is ``patched``; the null's share of its
    own pair's gap (4.9) divides by about 0 and must not be shown."""
    cm = _cross_model().assign(source_metric=2.0, target_metric=1.0)
    cell = {("mlp_out", 1, None, "last"): (4.9, -30.0, 40.0)}
    null = _patch_rows(run, "text-only->text-only", 0, cell, "cross_model")
    raw = _patch_rows(run, "text-only->text-only", 0, {k: (patched, None, None) for k in cell}, "logit_diff")
    return pd.concat([cm, null, raw], ignore_index=True).assign(source_metric=2.0, target_metric=1.0)


def test_same_recipe_null_is_shown_on_the_tested_pair_s_gap(tmp_path):
    cm = with_null("text-only-s1->text-only-s0", 1.1)  # text-only's seed 1 moves text-only-s0 by 0.1 of the gap
    text, tables, findings = _section(tmp_path, cross_model=cm, comparison=_comparison("code25", 0.2, 0.9))
    assert "as a share of the tested pair's gap: the recipe's run of another seed" in text
    assert findings[0].endswith(
        "(0.6 [0.4, 0.8] of it; interval excludes 0; another model of text-only (seed null) gives 0.10 of the gap "
        "there)."
    ), findings[0]
    assert "null: same recipe, other seed (share of this gap)" in tables and "text-only-s1" not in tables
    assert "4.9" not in tables and "no null pair" in tables  # the other cells have none
    # a table without the unpatched metrics: the null cannot be read on this gap
    old = cm.drop(columns=["source_metric", "target_metric"])
    _, tables, findings = _section(tmp_path, cross_model=old, comparison=_comparison("code25", 0.2, 0.9))
    assert "rerun the patch stage to read it" in tables and "gives" not in findings[0]
    # without a null pair the section says so
    text, _, _ = _section(tmp_path, cross_model=_cross_model(), comparison=_comparison("code25", 0.2, 0.9))
    assert "no same-recipe (seed-vs-seed) pair was patched" in text


def test_recipe_names_holding_arrows_find_their_gap(tmp_path):
    cm = _cross_model(recipe="code->text")
    assert cm["recipe"].iloc[0] == "code->text->text-only"
    _, _, findings = _section(
        tmp_path, cross_model=cm, comparison=_comparison("code->text", 0.2, 0.9), recipes=["code->text", "text-only"]
    )
    assert findings[0].startswith("Cross-model patching: of the gap code->text - text-only = +0.6")


# ------------------------------------------------------------------------------------------------
# cross-rendering


def _rendering(cells_by_metric, run="text-only-s0", recipe="text-only"):
    return pd.concat(
        [_patch_rows(run, recipe, 0, cells, metric) for metric, cells in cells_by_metric.items()], ignore_index=True
    )


IDENTITY = ("resid_pre", 0, None, "answer_source")
LATER = ("resid_pre", 1, None, "last")


def test_cross_rendering_at_a_token_identity_site_is_reported_as_identity(tmp_path):
    t = _rendering({
        "cross_rendering": {IDENTITY: (1.0, 1.0, 1.0), LATER: (0.31, 0.12, 0.52)},
        "cross_rendering_control": {IDENTITY: (1.0, 1.0, 1.0), LATER: (0.05, -0.2, 0.3)},
        "cross_rendering_excess": {IDENTITY: (0.0, 0.0, 0.0), LATER: (0.26, -0.02, 0.5)},
        "within_rendering": {IDENTITY: (1.0, 1.0, 1.0), LATER: (0.5, 0.3, 0.7)},
    })  # fmt: skip
    text, tables, findings = _section(tmp_path, cross_rendering=t)
    assert findings == []  # nothing for the headline
    assert (
        "text-only (seed 0): the largest code→text effect, 1.000 [1.000, 1.000] at resid_pre L0 @answer_source, "
        "is matched by its control (1.000 [1.000, 1.000]): token identity, not a shared representation."
    ) in text
    assert "no representation shared by the two renderings is shown beyond token identity" in text
    # the later cell: its control lies below the score's interval, but the excess's interval includes 0
    assert (
        "| text-only | 0 | resid_pre L1 @last | 0.3 [0.1, 0.5] | 0.1 [-0.2, 0.3] | 0.3 [0.0, 0.5] | 0.5 [0.3, 0.7] | "
        "not distinguishable from its control: not a finding |"
    ) in tables


def test_cross_rendering_finding_only_where_the_excess_interval_lies_above_zero(tmp_path):
    t = _rendering({
        "cross_rendering": {IDENTITY: (1.0, 1.0, 1.0), LATER: (0.8137, 0.03, 1.35)},
        "cross_rendering_control": {IDENTITY: (1.0, 1.0, 1.0), LATER: (0.47, -0.3, 0.98)},
        "cross_rendering_excess": {IDENTITY: (0.0, 0.0, 0.0), LATER: (0.344, 0.328, 0.371)},
    })  # fmt: skip
    text, tables, findings = _section(tmp_path, cross_rendering=t)
    assert findings == [
        "Shared representation: in text-only (seed 0) the code rendering's resid_pre L1 @last restores 0.8 [0.0, 1.4] "
        "of the text answer against 0.5 [-0.3, 1.0] for its token-matched control (excess +0.34 [+0.33, +0.37])."
    ]
    assert "token identity, not a shared representation" in text  # the largest effect is still identity
    assert "exceeds its control: a shared representation" in tables


def test_cross_rendering_without_control_rows_is_not_a_finding(tmp_path):
    t = _rendering({"cross_rendering": {IDENTITY: (1.0, 1.0, 1.0)}, "within_rendering": {IDENTITY: (1.0, 1.0, 1.0)}})
    _, tables, findings = _section(tmp_path, cross_rendering=t)
    assert findings == [] and "no control measured: not a finding" in tables


def test_cross_rendering_readings():
    assert cross_rendering_reading(1.0, 1.0, 1.0, 1.0, 0.0).startswith("token identity")
    assert cross_rendering_reading(0.9, 0.7, 1.1, 1.2, -0.5).startswith("token identity")  # control above the score
    assert cross_rendering_reading(0.9, 0.7, 1.1, 0.2, 0.3).startswith("exceeds its control")
    assert cross_rendering_reading(0.9, 0.7, 1.1, 0.5, -0.01).startswith("not distinguishable")
    assert cross_rendering_reading(0.1, -0.2, 0.4, 0.0, -0.1).startswith("no effect")
    # a paired excess above 0 is not enough when the score itself is not distinguishable from 0
    assert cross_rendering_reading(1.0, -1.0, 5.0, 0.6, 0.4).endswith("the score's interval includes 0: not a finding")
    assert cross_rendering_reading(0.9, 0.7, 1.1, float("nan"), float("nan")).startswith("no control")
    # a small clean-vs-counterfactual gap: large scores with a tight excess are not a finding
    assert cross_rendering_reading(24.0, -16.0, 93.0, 23.0, 0.3) == "unstable: outside [-0.5, 1.5], not a finding"
    assert cross_rendering_reading(0.9, 0.7, 1.1, -0.7, 1.2).startswith("unstable")


def test_unstable_cross_rendering_cells_are_left_out(tmp_path):
    t = _rendering({
        "cross_rendering": {IDENTITY: (1.0, 1.0, 1.0), LATER: (24.0, -16.0, 93.0)},
        "cross_rendering_control": {IDENTITY: (1.0, 1.0, 1.0), LATER: (23.0, -16.0, 91.0)},
        "cross_rendering_excess": {IDENTITY: (0.0, 0.0, 0.0), LATER: (0.6, 0.3, 1.2)},
    })  # fmt: skip
    text, tables, findings = _section(tmp_path, cross_rendering=t)
    assert findings == [] and "1 cell(s) whose score or control lies outside [-0.5, 1.5]" in text
    assert "L1" not in tables and "at resid_pre L0 @answer_source, is matched by its control" in text


def test_known_answer_models_through_the_report(tmp_path, tiny_model_dir, tiny_tokenizer):
    """The bag-of-tokens model of tests/test_patching_cross.py: its layer-0 cell is reported as token identity;
    the shared direction after layer 0 is the one finding."""
    from test_patching_cross import _hand_items, _load, bag_of_tokens_model

    from codetransfer.analysis import patching as P

    bridge, _ = _load(bag_of_tokens_model(tmp_path / "bag", tiny_model_dir))
    batch = P.rendering_batch(_hand_items(), tiny_tokenizer)
    meta = dict(run="bag-s0", recipe="bag", seed=0, task=TASK)
    sweeps = P.cross_rendering_patching(bridge, batch, "resid_pre", layers=[0])
    only_identity = pd.concat([sw.table(meta, n_boot=500) for sw in sweeps], ignore_index=True)
    text, _, findings = _section(tmp_path, cross_rendering=schema.check(only_identity, "cross_rendering"))
    assert findings == [] and "at resid_pre L0 @e0.value, is matched by its control" in text
    sweeps = P.cross_rendering_patching(bridge, batch, "resid_pre")
    both = pd.concat([sw.table(meta, n_boot=500) for sw in sweeps], ignore_index=True)
    text, _, findings = _section(tmp_path, cross_rendering=both)
    assert "token identity, not a shared representation" in text
    assert len(findings) == 1 and findings[0].startswith("Shared representation: in bag (seed 0) the code rendering's "
                                                         "resid_pre L1 @last restores")  # fmt: skip


@pytest.mark.parametrize("label, recipes, expected", [
    ("a->b", set(), ("a", "b")),
    ("code->text->text-only", {"code->text", "text-only"}, ("code->text", "text-only")),
    ("text-only->code->text", {"code->text", "text-only"}, ("text-only", "code->text")),
])  # fmt: skip
def test_pair_labels_split_at_known_recipes(label, recipes, expected):
    from codetransfer.report import _split_pair

    assert _split_pair(label, recipes) == expected


def test_recipe_gap_takes_the_patched_level_else_the_pooled_row():
    from codetransfer.report import recipe_gap

    level1 = _comparison("code25", 0.2, 0.9, difficulty=1)
    pooled = _comparison("code25", 0.1, 0.5).assign(task="pooled", pooled=True, pooled_levels="entity_tracking/1")
    pooled["difficulty"] = pd.array([pd.NA], dtype="Int64")
    table = pd.concat([level1, pooled], ignore_index=True)
    assert recipe_gap(table, "code25", "text-only", TASK, 1)["ci_low"] == 0.2
    assert bool(recipe_gap(table, "code25", "text-only", TASK, 0)["pooled"])  # no row at level 0
    assert recipe_gap(table, "code50", "text-only", TASK, 1) is None
    assert recipe_gap(None, "code25", "text-only", TASK, 1) is None
