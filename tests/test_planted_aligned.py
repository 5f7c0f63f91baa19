"""The known answer for cross-model patching: a reduced aligned control grid (the ``control-aligned`` preset with
300 kB per source, 200 items per family at level 0, one patching site). Both arms branch from one base whose
periodic warm-up planted the lookup circuit; ``erased`` then trains on the scrambled rows, which erase it, ``kept`` does not. Evaluation, attention and ablation must find
the circuit in ``kept`` against ``erased``; cross-model patching must locate it (erased's layer-1 attention output
takes kept's advantage away) and counts it only against a same-recipe null that has a gap to split.

A few minutes on 2 cores: the six warm-ups (three periodic, three scrambled) are most of it."""

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
    found = judged.loc[["evaluation", "attention", "ablation", "gap share"]]
    assert (found["verdict"] == "found").all(), found["evidence"].to_string()


def test_cross_model_patching_localises_the_circuit_where_kept_needs_it(aligned):
    """Kept's advantage goes when erased's layer-1 attention output at the query replaces kept's own (in every
    seed); kept's output patched into erased gives erased less of it. With no same-recipe pair that has a gap to
    split there, the verdict counts neither as found (nothing tells it from what any foreign activation does)."""
    cm = pd.read_parquet(aligned / "results" / "cross_model.parquet")
    cell = cm[(cm["metric"] == "cross_model") & (cm["site"] == "attn_out") & (cm["layer"] == 1)]
    cell = cell[cell["pos_label"] == "last"].groupby("recipe")["value"]
    need, suffice = cell.get_group("erased->kept"), cell.get_group("kept->erased")
    assert len(need) == 3 and (need > 0.5).all() and need.mean() > suffice.mean(), (need.tolist(), suffice.tolist())
    v = pd.read_parquet(aligned / "report" / "verdicts.parquet")
    (row,) = v[v["instrument"] == "cross-model patching"].itertuples()
    assert "(erased's, patched into kept)" in row.evidence, row.evidence
    assert row.verdict == "found" or "no same-recipe null to beat" in row.evidence, row.evidence


def test_the_arms_share_their_base_and_differ_in_their_heads(aligned):
    runs = [json.loads(p.read_text()) for p in sorted((aligned / "runs").glob("*/codetransfer.json"))]
    assert sum(bool(r.get("branched_from")) for r in runs) == 3  # one arm per seed branched from the other's base
    att = pd.read_parquet(aligned / "results" / "attention.parquet")
    ind = att[(att["task"] == "repeated_random") & (att["metric"] == "induction")]
    best = ind.groupby(["recipe", "seed"])["value"].max()
    assert (best["kept"] > 0.3).all() and (best["erased"] < 0.1).all(), best.to_string()
