"""Verdicts per instrument: a finding counts only against its control with a seed-level interval; a grid with a
planted answer is judged found / missed, and its null pair must show nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from codetransfer.analysis import verdict as V
from codetransfer.trained.presets import preset


def attention_table(best: dict[str, list[float]]) -> pd.DataFrame:
    """Induction scores on repeated random tokens: per recipe and seed, a best head and three weak ones."""
    rows = []
    for recipe, values in best.items():
        for seed, v in enumerate(values):
            for head, score in enumerate([v, 0.02, 0.01, 0.03]):
                rows.append(
                    dict(run=f"{recipe}-s{seed}", recipe=recipe, seed=seed, task="repeated_random", layer=1, head=head,
                         metric="induction", value=score)
                )  # fmt: skip
    return pd.DataFrame(rows)


def comparison_row(recipe, baseline, estimate, low, high, p_holm, n_seeds=3, pooled=True, distinguishable=None):
    return dict(
        recipe=recipe, baseline=baseline, metric="logit_diff", scale="difference", category="reasoning",
        task="pooled" if pooled else "counting", difficulty=pd.NA if pooled else 0, estimate=estimate,
        ci_low_corrected=low, ci_high_corrected=high, p_holm=p_holm, n_seeds=n_seeds, mde=0.2, pooled=pooled,
        distinguishable=(low > 0 or high < 0) and p_holm < 0.05 and n_seeds >= 3 if distinguishable is None
        else distinguishable,
    )  # fmt: skip


def circuit_table(drops: dict[str, list[float]], control: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for heads_set, by in (("chosen", drops), ("control", control)):
        for recipe, values in by.items():
            for seed, v in enumerate(values):
                rows.append(
                    dict(run=f"{recipe}-s{seed}", recipe=recipe, seed=seed, heads_set=heads_set, method="mean",
                         metric="logit_diff", value=v)
                )  # fmt: skip
    return pd.DataFrame(rows)


def test_the_control_preset_has_a_planted_answer_and_the_demo_grid_none():
    p = V.planted_answer(preset("control"))
    assert p == V.Planted("copy", ("text-only", "scrambled"), ("scrambled", "text-only"))
    assert V.planted_answer(preset("tiny")) is None and V.planted_answer(preset("emergence")) is None
    assert V.planted_answer(None) is None


def test_attention_finds_a_head_only_where_every_seed_pair_separates():
    tables = {"attention": attention_table({"copy": [0.30, 0.35, 0.27], "text-only": [0.03, 0.04, 0.03]})}
    found, words, control = V.attention(tables, "copy", "text-only")
    assert found and "0.30 / 0.35 / 0.27" in words and "text-only's heads" in control
    assert V.attention(tables, "text-only", "copy")[0] is False  # the other way round: below, not above
    # one seed against the others: no interval excludes 0
    noisy = {"attention": attention_table({"copy": [0.30, 0.02, 0.03], "text-only": [0.03, 0.04, 0.03]})}
    assert V.attention(noisy, "copy", "text-only")[0] is False
    # two seeds give an interval but never a claim
    two = {"attention": attention_table({"copy": [0.30, 0.35], "text-only": [0.03, 0.04]})}
    assert V.attention(two, "copy", "text-only")[0] is False
    assert V.attention({"attention": None}, "copy", "text-only")[0] is None


def test_a_wider_family_of_pairs_widens_the_interval():
    t = {"attention": attention_table({"copy": [0.10, 0.16, 0.12], "text-only": [0.03, 0.04, 0.03]})}
    assert V.attention(t, "copy", "text-only", confidence=0.95)[0] is True
    assert V.attention(t, "copy", "text-only", confidence=1 - 0.05 / 20)[0] is False


def test_evaluation_counts_a_distinguishable_advantage_only():
    c = pd.DataFrame(
        [
            comparison_row("copy", "text-only", 1.4, 1.1, 1.7, 0.01),
            comparison_row("scrambled", "text-only", -0.04, -0.13, 0.04, 0.4),
            comparison_row("worse", "text-only", -0.9, -1.2, -0.6, 0.01),
            comparison_row("two", "text-only", 1.4, 1.1, 1.7, 0.01, n_seeds=2),
        ]
    )
    t = {"comparison": c}
    assert V.evaluation(t, "copy", "text-only")[0] is True
    found, words, _ = V.evaluation(t, "scrambled", "text-only")
    assert found is False and "effects of 0.2 or more" in words
    assert V.evaluation(t, "worse", "text-only")[0] is False  # distinguishable, but a disadvantage
    assert V.evaluation(t, "two", "text-only")[0] is False  # two seeds: never distinguishable
    assert V.evaluation(t, "copy", "scrambled")[0] is None  # never compared


def test_evaluation_without_a_pooled_row_takes_the_strongest_level():
    c = pd.DataFrame(
        [
            comparison_row("copy", "text-only", 0.3, -0.1, 0.7, 0.5, pooled=False),
            comparison_row("copy", "text-only", 1.2, 0.8, 1.6, 0.02, pooled=False),
        ]
    )
    found, words, _ = V.evaluation({"comparison": c}, "copy", "text-only")
    assert found and "+1.20" in words and "nothing pooled" in words


def test_ablation_must_remove_more_than_the_same_ablation_in_the_reference():
    drops = {"copy": [0.40, 0.45, 0.38], "text-only": [0.01, -0.02, 0.00], "other": [0.42, 0.41, 0.39]}
    t = {"circuit": circuit_table(drops, {"copy": [0.05, 0.0, 0.02]})}
    found, words, _ = V.ablation(t, "copy", "text-only")
    assert found and "random control heads" in words
    assert V.ablation(t, "copy", "other")[0] is False  # as much in the reference: nothing specific to copy


def gap_rows(share, low, high, control=(0.1, -0.2, 0.3), withheld=False, n_seeds=3):
    base = dict(run="copy*", recipe="copy", reference="text-only", metric="logit_diff", method="mean", gap=0.7,
                gap_low=0.3, gap_high=1.1, withheld=withheld, n_seeds=n_seeds)  # fmt: skip
    return pd.DataFrame(
        [
            dict(base, heads_set="chosen", value=share, ci_low=low, ci_high=high),
            dict(base, heads_set="control", value=control[0], ci_low=control[1], ci_high=control[2]),
        ]
    )


def test_gap_share_needs_most_of_the_gap_above_the_control_heads():
    assert V.gap_share({"circuit_gap": gap_rows(0.9, 0.6, 1.1)}, "copy", "text-only")[0] is True
    assert V.gap_share({"circuit_gap": gap_rows(0.3, 0.1, 0.5)}, "copy", "text-only")[0] is False  # not most
    # the control heads' interval reaches above the chosen heads' lower end
    assert V.gap_share({"circuit_gap": gap_rows(0.9, 0.6, 1.1, (0.5, 0.0, 0.8))}, "copy", "text-only")[0] is False
    withheld = gap_rows(np.nan, np.nan, np.nan, withheld=True)
    found, words, _ = V.gap_share({"circuit_gap": withheld}, "copy", "text-only")
    assert found is False and "includes 0" in words


def test_planted_verdicts_judge_the_arm_and_the_null_pair():
    planted = V.planted_answer(preset("control"))
    tables = dict.fromkeys(V.TABLES)
    tables["attention"] = attention_table(
        {"copy": [0.30, 0.35, 0.27], "text-only": [0.03, 0.04, 0.03], "scrambled": [0.03, 0.03, 0.04]}
    )
    table = V.verdicts(tables, ["text-only", "scrambled", "copy"], "text-only", planted=planted)
    assert list(table.columns) == list(V.COLUMNS)
    att = table[(table["instrument"] == "attention") & (table["recipe"] == "copy")].set_index("reference")
    assert att.loc["text-only", "verdict"] == att.loc["scrambled", "verdict"] == "found"
    null = table[(table["recipe"] == "scrambled") & (table["instrument"] == "attention")]
    assert null["verdict"].tolist() == ["as expected: nothing"] and null["expected"].tolist() == [False]
    assert set(table.loc[table["instrument"] == "probing", "verdict"]) == {"not run"}
    words = V.verdict_words(table, planted)
    assert words.startswith("Planted answer") and "found by attention" in words and "false positive" not in words
    # a difference between the two control arms is a false positive
    tables["attention"] = attention_table(
        {"copy": [0.30, 0.35, 0.27], "text-only": [0.03, 0.04, 0.03], "scrambled": [0.30, 0.33, 0.29]}
    )
    table = V.verdicts(tables, ["text-only", "scrambled", "copy"], "text-only", planted=planted)
    words = V.verdict_words(table, planted)
    assert "false positive from attention" in words
    assert "against some control arms only by attention (1 of 2 control arms)" in words  # text-only: yes
    assert table.loc[(table["instrument"] == "attention") & (table["reference"] == "scrambled"), "verdict"].item() == (
        "missed"
    )


def test_without_a_planted_answer_every_recipe_meets_its_baseline_and_control():
    tables = dict.fromkeys(V.TABLES)
    tables["attention"] = attention_table({"a": [0.3, 0.35, 0.33], "b": [0.1, 0.1, 0.12], "base": [0.1, 0.11, 0.1]})
    table = V.verdicts(tables, ["base", "a", "b"], "base", controls={"a": "b", "b": ""})
    pairs = set(zip(table["recipe"], table["reference"]))
    assert pairs == {("a", "base"), ("a", "b"), ("b", "base")}
    assert table["expected"].isna().all()
    assert V.verdict_words(table, None).startswith("Beats its control: attention (a vs base)")
    empty = V.verdicts(dict.fromkeys(V.TABLES), ["base", "a"], "base")
    assert V.verdict_words(empty, None) == "No instrument found a difference that beats its control."


@pytest.mark.parametrize("missing", ["attention", "circuit", "circuit_gap", "cka", "decodability", "cross_model"])
def test_an_instrument_that_has_not_run_says_so(missing):
    name = {"circuit": "ablation", "circuit_gap": "gap share", "cka": "similarity", "decodability": "probing",
            "cross_model": "cross-model patching"}.get(missing, missing)  # fmt: skip
    found, words, _ = V.INSTRUMENTS[name](dict.fromkeys(V.TABLES), "copy", "text-only")
    assert found is None and words


def test_one_seed_and_damaged_tables_give_verdicts_or_one_line_errors(tmp_path):
    from codetransfer.errors import CodetransferError

    one = comparison_row("copy", "text-only", 1.4, 1.1, 1.7, float("nan"), n_seeds=1, pooled=False)
    found, words, _ = V.evaluation({"comparison": pd.DataFrame([one, dict(one, p_holm=np.nan)])}, "copy", "text-only")
    assert found is False and "1 seeds" in words  # one seed: an item-level interval, never a claim
    nan_seed = {"attention": attention_table({"copy": [0.3, np.nan, 0.35], "text-only": [0.03, 0.03, 0.03]})}
    assert V.attention(nan_seed, "copy", "text-only")[0] is False  # two finite seeds: no claim, no crash
    (tmp_path / "comparison.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(CodetransferError, match="comparison.parquet: damaged result table"):
        V.read_tables(tmp_path)
    (tmp_path / "comparison.parquet").unlink()
    (tmp_path / "aim.json").write_text("{ broken")
    with pytest.raises(CodetransferError, match="damaged aim record"):
        V.read_tables(tmp_path)


ENDS = {"erased->kept": (1.0, 3.0), "kept->erased": (3.0, 1.0)}
"""The unpatched metrics (source, target) of each direction of the aligned pair: kept 3.0, erased 1.0 logits."""


def cross_table(shares: dict[tuple[str, str], list[float]], nulls: dict | None = None) -> pd.DataFrame:
    """Cross-model rows per (label, cell) and seed (cells are ``site@layer@pos``): each tested share with its raw
    patched metric and the pair's unpatched metrics (:data:`ENDS`); each null (``nulls``) by its raw patched metric,
    with a share of its own pair's gap that divides by about 0 (it must not be read)."""
    rows = []

    def add(label, cell, seed, metric, value, source=np.nan, target=np.nan):
        site, layer, pos = cell.split("@")
        rows.append(
            dict(recipe=label, metric=metric, task="entity_tracking", seed=seed, site=site, layer=int(layer),
                 head=pd.NA, pos_label=pos, value=value, source_metric=source, target_metric=target)
        )  # fmt: skip

    for (label, cell), values in shares.items():
        source, target = ENDS[label]
        for seed, v in enumerate(values):
            add(label, cell, seed, "cross_model", v, source, target)
            add(label, cell, seed, "logit_diff", target + v * (source - target), source, target)
    for (label, cell), values in (nulls or {}).items():
        for seed, v in enumerate(values):
            add(label, cell, seed, "cross_model", 4.96, 3.0, 3.01)
            add(label, cell, seed, "logit_diff", v, 3.0, 3.01)
    return pd.DataFrame(rows)


def test_the_aligned_control_plants_the_circuit_in_kept_only():
    p = V.planted_answer(preset("control-aligned"))
    assert p == V.Planted("kept", ("erased",), None)


def test_cross_model_patching_counts_either_direction_against_the_null_on_the_tested_gap():
    """The planted arm's need for a component (the control's component patched into it) counts as much as the
    component sufficing the other way, but only above the same-recipe null read on the tested pair's gap: another
    model of the receiving recipe patched into the same run, seed by seed. A share with no null is no finding."""
    gap = comparison_row("erased", "kept", -2.0, -2.4, -1.6, 0.04, pooled=False)
    gap.update(task="entity_tracking")
    aim = pd.DataFrame([dict(difficulty=0)])
    cell = "attn_out@1@last"
    need = {
        ("kept->erased", cell): [0.1, 0.3, 0.2],  # kept's writes into erased: little
        ("erased->kept", cell): [0.93, 0.95, 1.0],  # erased's into kept: kept loses its advantage
    }
    twin = {("kept->kept", cell): [2.9, 3.1, 2.8]}  # kept's twin into kept: 0.05 / -0.05 / 0.1 of the gap
    tables = {"comparison": pd.DataFrame([gap]), "aim": aim, "cross_model": cross_table(need, twin)}
    found, words, _ = V.cross_model(tables, "kept", "erased")
    assert found is True, words
    assert "attn_out L1 @last (erased's, patched into kept)" in words and "+2.00" in words  # the gap read kept - erased
    assert "another model of kept patched there gives 0.05 / -0.05 / 0.10 of that gap" in words, words
    assert "4.96" not in words  # the null's share of its own pair's gap is never read
    # no null at all, or only into the other recipe: a share that beats no control is not a finding
    for nulls in ({}, {("erased->erased", cell): [1.0, 1.0, 1.0]}):
        found, words, _ = V.cross_model({**tables, "cross_model": cross_table(need, nulls)}, "kept", "erased")
        assert found is False and "no same-recipe null to beat in 3 seeds" in words, words
    # a twin that breaks kept as much as erased's component does: the component beats no control
    broken = {("kept->kept", cell): [1.1, 1.2, 1.0]}  # 0.95 / 0.9 / 1.0 of the gap
    found, words, _ = V.cross_model({**tables, "cross_model": cross_table(need, broken)}, "kept", "erased")
    assert found is False and "the component minus the null: " in words, words
    # nulls in two seeds only: no seed-level comparison
    two = {("kept->kept", cell): [2.9, 3.1]}
    found, words, _ = V.cross_model({**tables, "cross_model": cross_table(need, two)}, "kept", "erased")
    assert found is False and "no same-recipe null to beat in 3 seeds" in words, words
    # a table written before the unpatched metrics were stored: the null cannot be read, nothing is found
    old = tables["cross_model"].drop(columns=["source_metric", "target_metric"])
    found, words, _ = V.cross_model({**tables, "cross_model": old}, "kept", "erased")
    assert found is False and "rerun the patch stage" in words, words
    # only the sufficiency direction patched, and it carries little: missed
    tables["cross_model"] = cross_table({k: v for k, v in need.items() if k[0] == "kept->erased"}, twin)
    assert V.cross_model(tables, "kept", "erased")[0] is False
    # the verdict table keeps a pair patched in the other direction only
    only_need = cross_table({k: v for k, v in need.items() if k[0] != "kept->erased"}, twin)
    table = V.verdicts({**tables, "cross_model": only_need}, ["erased", "kept"], "erased", {}, None)
    assert "cross-model patching" in set(table.loc[table["recipe"] == "kept", "instrument"])


def test_the_null_share_is_the_largest_of_a_runs_null_models_on_the_tested_pair_s_scale():
    cell = "attn_out@1@last"
    t = cross_table({("erased->kept", cell): [0.9, 0.9, 0.9]}, {("kept->kept", cell): [2.0, 3.0, 3.0]})
    second = t[(t["recipe"] == "kept->kept") & (t["seed"] == 0)].assign(value=1.5)  # a second twin of kept-s0
    t = pd.concat([t, second], ignore_index=True)
    rows = t[(t["metric"] == "cross_model") & (t["recipe"] == "erased->kept")]
    null = V.null_shares(t, rows, "kept")
    # (patched - kept) / (erased - kept): (1.5 - 3) / (1 - 3) beats (2 - 3) / (1 - 3) in seed 0
    assert null.tolist() == pytest.approx([0.75, 0.0, 0.0])
    assert V.null_shares(t, rows, "erased").isna().all()  # no null model patched into erased


@pytest.mark.parametrize("twins", [True, False])
def test_similarity_names_the_null_it_reads(twins):
    """Below every null CKA at a layer in every seed: found, and the words say whether the null pairs were the
    baseline's data-order twins or its init seeds; a layer at the null's level is not."""
    rows = []
    for s in range(3):
        rows.append(dict(run_a=f"kept-s{s}", run_b=f"erased-s{s}", recipe_a="kept", recipe_b="erased",
                         comparison="baseline", layer=0, value=0.3))  # fmt: skip
        null = f"erased-s{s}-d1" if twins else f"erased-s{(s + 1) % 3}"
        rows.append(dict(run_a=null, run_b=f"erased-s{s}", recipe_a="erased", recipe_b="erased",
                         comparison="seed_null", layer=0, value=0.95))  # fmt: skip
    found, words, _ = V.similarity({"cka": pd.DataFrame(rows)}, "kept", "erased")
    assert found is True and ("below every data-order CKA" if twins else "below every seed-vs-seed CKA") in words
    high = pd.DataFrame(rows).assign(value=0.95)
    assert V.similarity({"cka": high}, "kept", "erased")[0] is False
