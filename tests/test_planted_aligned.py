"""The known answer for cross-model patching: a reduced aligned control grid (the ``control-aligned`` preset with
300 kB per source, 200 items per family at level 0, one patching site). Both arms branch from one base whose periodic warm-up planted the lookup circuit; ``erased``
then trains on the scrambled rows, which erase it, ``kept`` does not. The arms are aligned, so patching between them
applies, and every instrument, cross-model patching included, must find the circuit in ``kept`` against ``erased``.

A few minutes on 2 cores: the six warm-ups (three periodic, three scrambled) are most of it."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from codetransfer.pipeline import JobSettings, run_job
from codetransfer.trained.config import grid_from_dict
from codetransfer.trained.gridfile import grid_to_toml
from codetransfer.trained.presets import preset

SOURCE_BYTES = 300_000


def reduced_aligned_toml() -> str:
    d = preset("control-aligned").to_dict()
    d["name"] = "aligned"
    for s in d["sources"].values():
        s["max_bytes"] = SOURCE_BYTES
    d["tokenizer"]["sample_bytes"] = SOURCE_BYTES
    d["train"].update(eval_every=10_000, save_every=10_000, snapshot_every=0, eval_tokens=2048)
    return grid_to_toml(grid_from_dict(d))


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    root = tmp_path_factory.mktemp("aligned")
    (root / "grid.toml").write_text(reduced_aligned_toml())
    settings = JobSettings(eval_items=200, eval_max_difficulty=0, attention_items=16, patch_sites=("attn_out",))
    stages = ("train", "eval", "patch", "attention", "circuit", "report")
    run_job(str(root / "grid.toml"), root / "out", settings, stages=stages, jobs=2, log=lambda *a: None)
    return root / "out"


def test_every_instrument_finds_the_kept_circuit_against_the_erased_arm(aligned):
    headline = json.loads((aligned / "report" / "headline.json").read_text())
    assert headline[0].startswith("Planted answer (kept has the copying circuit; erased does not)")
    v = pd.read_parquet(aligned / "report" / "verdicts.parquet")
    judged = v[v["expected"] == True]  # noqa: E712 (object column)
    assert set(judged["instrument"]) == {"evaluation", "attention", "ablation", "gap share", "cross-model patching"}
    assert (judged["verdict"] == "found").all(), judged[["instrument", "evidence"]].to_string()


def test_cross_model_patching_finds_the_circuit_where_kept_needs_it(aligned):
    """Kept's advantage goes when erased's attention output replaces kept's own: the component the verdict names is
    an attention write, patched from erased into kept."""
    v = pd.read_parquet(aligned / "report" / "verdicts.parquet")
    (evidence,) = v.loc[v["instrument"] == "cross-model patching", "evidence"]
    assert "attn_out" in evidence and "(erased's, patched into kept)" in evidence, evidence
    cm = pd.read_parquet(aligned / "results" / "cross_model.parquet")
    assert {"kept->erased", "erased->kept"} <= set(cm["recipe"].astype(str))


def test_the_arms_share_their_base_and_differ_in_their_heads(aligned):
    runs = [json.loads(p.read_text()) for p in sorted((aligned / "runs").glob("*/codetransfer.json"))]
    assert sum(bool(r.get("branched_from")) for r in runs) == 3  # one arm per seed branched from the other's base
    att = pd.read_parquet(aligned / "results" / "attention.parquet")
    ind = att[(att["task"] == "repeated_random") & (att["metric"] == "induction")]
    best = ind.groupby(["recipe", "seed"])["value"].max()
    assert (best["kept"] > 0.3).all() and (best["erased"] < 0.1).all(), best.to_string()
