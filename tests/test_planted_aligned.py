"""The known answer for cross-model patching: a reduced aligned control grid (the ``control-aligned`` preset with
300 kB per source, 200 items per family at level 0, one patching site). Both arms branch from one base whose
periodic warm-up planted the lookup circuit; ``erased`` then trains on the scrambled rows, which erase it, ``kept``
does not; every run also has a data-order twin (the preset's ``data_seeds``). Evaluation, attention and ablation
must find the circuit in ``kept`` against ``erased``; cross-model patching must locate it (erased's layer-1
attention output takes kept's advantage away) and count it against the null: kept's data-order twin patched into
kept, read on the tested pair's gap.

A few minutes on 2 cores: the nine warm-ups (three periodic, six scrambled) are most of it."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from codetransfer.pipeline import JobSettings, run_job
from test_planted import reduced_toml


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    root = tmp_path_factory.mktemp("aligned")
    (root / "grid.toml").write_text(reduced_toml("control-aligned", "aligned"))
    settings = JobSettings(eval_items=200, eval_max_difficulty=0, attention_items=16, patch_sites=("attn_out",))
    stages = ("train", "eval", "patch", "attention", "circuit", "report")
    run_job(str(root / "grid.toml"), root / "out", settings, stages=stages, jobs=2, log=lambda *a: None)
    return root / "out"


def test_evaluation_attention_and_ablation_find_the_kept_circuit_against_the_erased_arm(aligned):
    headline = json.loads((aligned / "report" / "headline.json").read_text())
    assert headline[0].startswith("Planted answer (kept has the copying circuit; erased does not)")
    v = pd.read_parquet(aligned / "report" / "verdicts.parquet")
    judged = v[v["expected"] == True].set_index("instrument")  # noqa: E712 (object column)
    assert set(judged.index) == {"evaluation", "attention", "ablation", "gap share", "cross-model patching"}
    assert (judged["verdict"] == "found").all(), judged["evidence"].to_string()


def test_cross_model_patching_localises_the_circuit_where_kept_needs_it(aligned):
    """Kept's advantage goes when erased's layer-1 attention output at the query replaces kept's own (in every
    seed); kept's output patched into erased gives erased less of it; kept's data-order twin patched into kept
    moves it by little of that gap (the null the verdict counts the share against)."""
    from codetransfer.analysis.verdict import null_shares

    cm = pd.read_parquet(aligned / "results" / "cross_model.parquet")
    cell = cm[(cm["metric"] == "cross_model") & (cm["site"] == "attn_out") & (cm["layer"] == 1)]
    cell = cell[cell["pos_label"] == "last"]
    need, suffice = (cell[cell["recipe"] == r].sort_values("seed") for r in ("erased->kept", "kept->erased"))
    assert len(need) == 3 and (need["value"] > 0.5).all() and need["value"].mean() > suffice["value"].mean()
    assert set(cm.loc[cm["recipe"] == "kept->kept", "run"]) == {f"kept-s{s}-d1->kept-s{s}" for s in range(3)}
    null = null_shares(cm, need, "kept")
    assert null.notna().all() and (null.abs() < 0.3).all() and (need["value"] - null > 0.5).all(), null.tolist()
    v = pd.read_parquet(aligned / "report" / "verdicts.parquet")
    (row,) = v[v["instrument"] == "cross-model patching"].itertuples()
    assert "(erased's, patched into kept)" in row.evidence and "another model of kept" in row.evidence, row.evidence


def test_the_arms_share_their_base_and_differ_in_their_heads(aligned):
    runs = [json.loads(p.read_text()) for p in sorted((aligned / "runs").glob("*/codetransfer.json"))]
    # per seed, the base is trained once (with the first arm) and the other three runs branch from it
    assert sum(bool(r.get("branched_from")) for r in runs) == 9
    att = pd.read_parquet(aligned / "results" / "attention.parquet")
    ind = att[(att["task"] == "repeated_random") & (att["metric"] == "induction")]
    best = ind.groupby(["recipe", "seed"])["value"].max()
    assert (best["kept"] > 0.3).all() and (best["erased"] < 0.1).all(), best.to_string()
