"""The job aims its instruments at a gap that exists: ``analysis.compare.gap_target`` picks the distinguishable
seed-paired comparison, ``pipeline.aim`` turns it into the patch/probe/attention task and level (else keeps the
configured ones and says why), and the patch stage and the report follow it."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from codetransfer.analysis import schema
from codetransfer.analysis.compare import gap_target, has_gap
from codetransfer.errors import CodetransferError
from codetransfer.pipeline import JobSettings, aim, run_job


def _row(recipe="code", task="counting", difficulty=0, est=0.4, lo=0.1, hi=0.7, p_holm=0.01, n_seeds=3, **kw):
    row = dict(
        recipe=recipe, baseline=kw.pop("baseline", "text-only"), metric="logit_diff", scale="difference",
        category=kw.pop("category", "reasoning"), task=task, difficulty=difficulty, estimate=est, ci_low=lo,
        ci_high=hi, ci_low_corrected=lo, ci_high_corrected=hi, recipe_value=1.0, baseline_value=1.0 - est,
        n_seeds=n_seeds, n_items=300, p_value=p_holm / 4, p_holm=p_holm, p_signflip=float("nan"), test="mixedlm",
        mde=kw.pop("mde", 0.2), distinguishable=n_seeds >= 3 and (lo > 0 or hi < 0) and p_holm < 0.05,
        pooled=kw.pop("pooled", False), pooled_levels="",
    )  # fmt: skip
    assert not kw, kw
    return row


def _table(*rows) -> pd.DataFrame:
    t = pd.DataFrame(list(rows))
    t["difficulty"] = t["difficulty"].astype("Int64")
    return schema.check(t, "comparison")


def test_gap_target_takes_the_distinguishable_reasoning_level_with_the_smallest_p():
    t = _table(
        _row(task="entity_tracking", p_holm=0.03),
        _row(task="counting", difficulty=1, p_holm=0.004),
        _row(task="code_state", category="code", est=2.0, lo=1.5, hi=2.5, p_holm=0.0001),  # not reasoning
        _row(task="possession", est=0.9, lo=0.5, hi=1.3, p_holm=0.001, pooled=True),  # pooled levels
        _row(task="variable_binding", lo=-0.1, hi=0.9, p_holm=0.0001),  # interval includes 0
        _row(task="variable_binding", difficulty=1, p_holm=0.0001, n_seeds=2),  # too few seeds
        _row(task="possession", difficulty=1, lo=0.1, hi=0.7, p_holm=0.2),  # interval only: Holm p too large
    )
    row = gap_target(t)
    assert (row["task"], int(row["difficulty"])) == ("counting", 1)
    assert gap_target(t, categories=("code",))["task"] == "code_state"
    # a tie on p goes to the larger effect in units of its minimum detectable effect
    tie = _table(_row(task="entity_tracking", p_holm=0.01, mde=0.4), _row(task="counting", p_holm=0.01, mde=0.1))
    assert gap_target(tie)["task"] == "counting"


def test_no_gap_when_no_row_is_distinguishable():
    t = _table(_row(lo=-0.1, hi=0.9), _row(task="entity_tracking", n_seeds=1), _row(task="possession", p_holm=0.3))
    assert gap_target(t) is None and gap_target(None) is None and gap_target(t.iloc[:0]) is None
    assert not any(has_gap(r) for _, r in t.iterrows())
    # an older table without the distinguishable column is read by its corrected interval and seeds
    old = t.drop(columns="distinguishable")
    assert [has_gap(r) for _, r in old.iterrows()] == [False, False, True]


def test_gap_target_prefers_an_advantage_over_a_smaller_p_disadvantage():
    # the planted-transfer control grid: level 1 is a distinguishable disadvantage with the smaller Holm p,
    # level 0 the planted advantage, distinguishable too
    worse = _row(recipe="copy", baseline="scrambled", difficulty=1, est=-1.13, lo=-1.6, hi=-0.6, p_holm=0.004)
    better = _row(recipe="copy", baseline="scrambled", difficulty=0, est=1.29, lo=0.3, hi=2.3, p_holm=0.031)
    weaker = _row(recipe="copy", baseline="scrambled", task="possession", est=0.5, lo=0.1, hi=0.9, p_holm=0.04)
    t = _table(worse, weaker, better)
    row = gap_target(t)
    assert (row["task"], int(row["difficulty"]), row["estimate"]) == ("counting", 0, 1.29)
    assert gap_target(t, prefer="advantage")["estimate"] == 1.29
    row = gap_target(t, prefer="any")  # the old order: the smallest Holm p whatever its sign
    assert (row["task"], int(row["difficulty"]), row["estimate"]) == ("counting", 1, -1.13)
    # without a distinguishable advantage the disadvantage is still a gap to explain
    only = _table(worse, _row(task="possession", est=0.5, lo=-0.1, hi=1.1, p_holm=0.001))
    assert gap_target(only)["estimate"] == -1.13 and gap_target(only, prefer="any")["estimate"] == -1.13
    # within the disadvantages the order is the usual one: smallest p, then largest |estimate| / mde
    two = _table(worse, _row(task="entity_tracking", est=-0.9, lo=-1.3, hi=-0.5, p_holm=0.001))
    assert gap_target(two)["task"] == "entity_tracking"


@pytest.mark.parametrize("prefer", ["Advantage", "positive", "", None])
def test_gap_target_refuses_an_unknown_preference(prefer):
    with pytest.raises(CodetransferError, match="prefer must be one of advantage, any") as e:
        gap_target(_table(_row()), prefer=prefer)
    assert "\n" not in str(e.value)
    with pytest.raises(CodetransferError, match="advantage, any"):
        gap_target(None, prefer=prefer)  # refused before the table is looked at


def test_aim_says_whether_the_gap_is_an_advantage_or_a_disadvantage(tmp_path):
    from codetransfer.report import aim_words

    quiet = dict(log=lambda *a: None)
    worse = _row(recipe="copy", baseline="scrambled", difficulty=1, est=-1.13, lo=-1.6, hi=-0.6, p_holm=0.004)
    better = _row(recipe="copy", baseline="scrambled", difficulty=0, est=1.29, lo=0.3, hi=2.3, p_holm=0.031)
    _table(worse, better).to_parquet(tmp_path / "comparison.parquet")
    aimed, record = aim(tmp_path, JobSettings(), **quiet)
    assert (aimed.patch_task, aimed.patch_difficulty) == ("counting", 0)
    assert record["direction"] == "advantage" and record["estimate"] == 1.29
    assert record["reason"] == "the distinguishable seed-paired advantage with the smallest Holm p"
    (tmp_path / "aim.json").write_text(json.dumps(record))
    words = aim_words(tmp_path)
    assert "an advantage of copy over scrambled" in words and "disadvantage" not in words

    _table(worse).to_parquet(tmp_path / "comparison.parquet")
    aimed, record = aim(tmp_path, JobSettings(), **quiet)
    assert (aimed.patch_task, aimed.patch_difficulty) == ("counting", 1)
    assert record["direction"] == "disadvantage" and record["estimate"] == -1.13
    assert record["reason"] == "no advantage is distinguishable; the disadvantage with the smallest Holm p"
    (tmp_path / "aim.json").write_text(json.dumps(record))
    words = aim_words(tmp_path)
    assert "a disadvantage of copy (it scores below scrambled)" in words
    assert "no advantage is distinguishable" in words

    # an aim.json written before the record had a direction: read it off the estimate's sign
    for est, said in ((-1.13, "a disadvantage of copy"), (1.29, "an advantage of copy over scrambled")):
        old = {k: v for k, v in record.items() if k != "direction"}
        old.update(estimate=est, reason="the distinguishable seed-paired gap with the smallest Holm p")
        (tmp_path / "aim.json").write_text(json.dumps(old))
        words = aim_words(tmp_path)
        assert said in words and "the distinguishable seed-paired gap with the smallest p" in words


def test_aim_replaces_the_instruments_task_and_level_with_the_gap(tmp_path):
    settings = JobSettings(patch_task="entity_tracking", patch_difficulty=0, probe_tasks=("entity_tracking",))
    aimed, record = aim(tmp_path, settings, log=lambda *a: None)
    assert aimed == settings and not record["found"] and "eval stage" in record["reason"]
    _table(_row(task="entity_tracking", lo=-0.2, hi=0.5)).to_parquet(tmp_path / "comparison.parquet")
    aimed, record = aim(tmp_path, settings, log=lambda *a: None)
    assert aimed == settings and record["reason"] == "no gap to explain"
    _table(_row(recipe="text+programs", baseline="text+stdlib", task="counting", difficulty=1)).to_parquet(
        tmp_path / "comparison.parquet"
    )
    aimed, record = aim(tmp_path, settings, log=lambda *a: None)
    assert (aimed.patch_task, aimed.patch_difficulty) == ("counting", 1)
    assert aimed.probe_tasks == ("counting",) and aimed.attention_tasks == ("counting",)
    assert record["found"] and (record["recipe"], record["against"]) == ("text+programs", "text+stdlib")
    json.dumps(record)  # the job writes it as results/aim.json
    fixed, record = aim(tmp_path, JobSettings(aim="fixed"), log=lambda *a: None)
    assert fixed == JobSettings(aim="fixed") and not record["found"]


@pytest.mark.parametrize("found", [True, False])
def test_the_patch_stage_and_the_report_follow_the_aim(found, tmp_path):
    from test_pipeline import GRID, SETTINGS

    (tmp_path / "grid.toml").write_text(GRID)
    out = tmp_path / "out"
    run_job(str(tmp_path / "grid.toml"), out, SETTINGS, stages=("train", "eval"), log=lambda *a: None)
    lo, hi = (0.1, 0.7) if found else (-0.1, 0.7)
    row = _row(recipe="balanced", task="counting", difficulty=0, lo=lo, hi=hi)
    _table(row).to_parquet(out / "results" / "comparison.parquet")  # as if the eval had found this gap
    run_job(str(tmp_path / "grid.toml"), out, SETTINGS, stages=("patch", "report"), log=lambda *a: None)
    record = json.loads((out / "results" / "aim.json").read_text())
    patched = set(pd.read_parquet(out / "results" / "patching.parquet")["task"].astype(str))
    page = (out / "report" / "index.html").read_text()
    if found:
        assert record["found"] and patched == {"counting"}
        assert "The instruments look at counting level 0, where the evaluation found a gap" in page
        assert "patched task: counting" in page
    else:
        assert not record["found"] and patched == {SETTINGS.patch_task}
        assert f"{SETTINGS.patch_task} level 0, the configured task and level (no gap to explain)" in page


def test_a_gap_seen_only_pooled_is_named_but_not_aimed_at(tmp_path):
    """Patching needs one task and level: a gap distinguishable only with the levels pooled leaves the configured
    task, and the record says that gap exists instead of "no gap"."""
    from codetransfer.analysis.compare import pooled_gap

    levels = [_row(task=t, lo=-0.2, hi=0.9, p_holm=0.3) for t in ("counting", "possession")]
    pooled = _row(recipe="code-only", task="reasoning", est=-3.65, lo=-4.16, hi=-3.21, p_holm=0.013, pooled=True)
    t = _table(*levels, pooled)
    assert gap_target(t) is None
    assert pooled_gap(t)["estimate"] == -3.65 and pooled_gap(_table(*levels)) is None
    t.to_parquet(tmp_path / "comparison.parquet")
    said = []
    settings = JobSettings(patch_task="entity_tracking", patch_difficulty=0)
    aimed, record = aim(tmp_path, settings, log=said.append)
    assert aimed == settings and not record["found"]
    assert record["reason"].startswith("no single task level has a distinguishable gap, only the pooled reasoning")
    assert "code-only - text-only = -3.65" in record["reason"] and "code-only - text-only = -3.65" in said[0]


def test_recipe_gap_reads_a_comparison_the_other_way_round():
    from codetransfer.analysis.compare import recipe_gap

    t = _table(_row(recipe="erased", baseline="kept", task="entity_tracking", est=-2.0, lo=-2.4, hi=-1.6))
    same = recipe_gap(t, "erased", "kept", "entity_tracking", 0)
    back = recipe_gap(t, "kept", "erased", "entity_tracking", 0)
    assert (back["recipe"], back["baseline"]) == ("kept", "erased")
    assert back["estimate"] == 2.0 and (back["ci_low_corrected"], back["ci_high_corrected"]) == (1.6, 2.4)
    assert (back["recipe_value"], back["baseline_value"]) == (same["baseline_value"], same["recipe_value"])
    assert back["p_holm"] == same["p_holm"] and has_gap(back) == has_gap(same)
    assert recipe_gap(t, "kept", "other", "entity_tracking", 0) is None


def test_a_grid_without_text_only_takes_its_first_recipe_as_baseline_and_a_wrong_one_is_refused(tmp_path):
    from codetransfer.pipeline import grid_baseline
    from codetransfer.trained.presets import preset

    grid = preset("control-aligned")
    assert grid_baseline(grid, "text-only") == "erased" and grid_baseline(grid, "kept") == "kept"
    assert grid_baseline(preset("control"), "text-only") == "text-only"
    with pytest.raises(CodetransferError, match=r"--baseline: 'kep' is not a recipe of grid 'control-aligned'.*kept"):
        grid_baseline(grid, "kep")
    # refused before anything is trained or written
    with pytest.raises(CodetransferError, match="is not a recipe"):
        run_job("control-aligned", tmp_path / "out", JobSettings(baseline="kep"), log=lambda *a: None)
    assert not (tmp_path / "out").exists()
