"""The whole toolkit's known answer: a reduced planted-transfer control grid (the ``control`` preset's three arms,
4 seeds, a shorter text phase) is trained, evaluated, its heads scored and ablated, and the report's verdicts
must find the planted copying circuit in ``copy`` and nothing between ``scrambled`` and ``text-only``.

Four seeds, not the preset's three: with three, text-only is at chance at every reasoning level, so the evaluation
verdict falls back to the strongest single level, Holm-corrected over 12 rows on a t with 2 degrees of freedom.
How consistent the seeds are then decides it: trained on one machine copy - text-only was found (possession level
0, +5.03, Holm p 0.02), on another (other float rounding, other weights) missed (+5.06, Holm p 0.064). With
four seeds text-only's interval is above chance at some levels, the levels are pooled, and copy - text-only is
+1.99 [+1.67, +2.31], Holm p 0.002.

A few minutes on 2 cores: the eight warm-ups (copy and scrambled rows, 4 seeds) are most of it."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from codetransfer.pipeline import JobSettings, run_job
from codetransfer.trained import runs_table
from codetransfer.trained.config import grid_from_dict
from codetransfer.trained.gridfile import grid_to_toml
from codetransfer.trained.presets import preset

TEXT_TOKENS = 200_000
"""Tokens of the reduced grid's text phase (the preset's: 1M)."""
SOURCE_BYTES = 300_000
SEEDS = 4
"""Init seeds of the reduced grid (the preset's: 3; the module docstring says why)."""


def reduced_toml(name: str, grid_name: str, text_tokens: int | None = None, seeds: int | None = None) -> str:
    """Preset ``name`` as grid file ``grid_name`` with SOURCE_BYTES per source (and tokenizer sample), rare
    validation and saves, no snapshots, every phase at ``text_tokens`` and init seeds ``0 .. seeds-1`` where given."""
    d = preset(name).to_dict()
    d["name"] = grid_name
    if seeds is not None:
        d["seeds"] = list(range(seeds))
    if text_tokens is not None:
        for r in d["recipes"]:
            for p in r["phases"]:
                p["tokens"] = text_tokens
    for s in d["sources"].values():
        s["max_bytes"] = SOURCE_BYTES
    d["tokenizer"]["sample_bytes"] = SOURCE_BYTES
    d["train"].update(eval_every=10_000, save_every=10_000, snapshot_every=0, eval_tokens=2048)
    return grid_to_toml(grid_from_dict(d))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    (root / "grid.toml").write_text(reduced_toml("control", "planted", TEXT_TOKENS, SEEDS))
    settings = JobSettings(eval_items=200, eval_max_difficulty=0, attention_items=16)
    stages = ("train", "eval", "attention", "circuit", "report")
    run_job(str(root / "grid.toml"), root / "out", settings, stages=stages, jobs=2, log=lambda *a: None)
    return root / "out"


def test_the_report_opens_with_the_planted_verdicts(planted):
    headline = json.loads((planted / "report" / "headline.json").read_text())
    assert headline[0].startswith("Planted answer (copy has the copying circuit")
    page = (planted / "report" / "index.html").read_text()
    assert page.index("Did each instrument find the planted answer?") < page.index("The grid")


def test_evaluation_and_attention_find_the_planted_circuit_in_copy_only(planted):
    v = pd.read_parquet(planted / "report" / "verdicts.parquet")
    arm = v[(v["recipe"] == "copy") & v["instrument"].isin(["evaluation", "attention"])]
    assert set(arm["reference"]) == {"text-only", "scrambled"}
    assert (arm["verdict"] == "found").all(), arm[["instrument", "reference", "evidence"]].to_string()
    null = v[v["recipe"] == "scrambled"]
    assert set(null["instrument"]) == {"evaluation", "attention", "ablation"}
    assert (null["verdict"] == "as expected: nothing").all(), null[["instrument", "evidence"]].to_string()


def test_ablating_the_lookup_heads_costs_copy_and_not_the_controls(planted):
    v = pd.read_parquet(planted / "report" / "verdicts.parquet")
    row = v[(v["instrument"] == "ablation") & (v["recipe"] == "copy") & (v["reference"] == "text-only")]
    assert row["verdict"].tolist() == ["found"], row["evidence"].tolist()
    drop = pd.read_parquet(planted / "results" / "circuit.parquet")
    pooled = drop[drop["run"].str.endswith("*") & (drop["metric"] == "logit_diff") & (drop["method"] == "mean")]
    chosen = pooled[pooled["heads_set"] == "chosen"].set_index("recipe")
    assert chosen.loc["copy", "ci_low"] > 0
    assert chosen.loc["text-only", "ci_low"] < 0.1 and chosen.loc["scrambled", "ci_low"] < 0.1


def test_the_planted_head_is_an_induction_head_in_every_copy_seed(planted):
    att = pd.read_parquet(planted / "results" / "attention.parquet")
    ind = att[(att["task"] == "repeated_random") & (att["metric"] == "induction")]
    best = ind.groupby(["recipe", "seed"])["value"].max()
    assert (best["copy"] > 0.2).all(), best.to_string()
    assert (best["text-only"] < 0.1).all() and (best["scrambled"] < 0.1).all(), best.to_string()


def test_the_periodic_warmup_learns_to_copy_and_the_scrambled_one_does_not(planted):
    """The warm-ups themselves (1,000 steps of the tiny shape): the periodic rows end with a copy loss far below
    guessing (ln 509 = 6.2 nats) in every seed, the scrambled rows, which hold nothing to copy, near it."""
    last = {}
    for path in sorted((planted / "runs").glob("*/metrics.jsonl")):
        warm = [json.loads(ln) for ln in path.read_text().splitlines() if "warmup_step" in ln]
        if warm:
            last[path.parent.name] = warm[-1]
    copy = [r["copy_loss"] for n, r in last.items() if n.startswith("copy-")]
    scrambled = [r["copy_loss"] for n, r in last.items() if n.startswith("scrambled-")]
    assert len(copy) == len(scrambled) == SEEDS and not any(n.startswith("text-only") for n in last), last
    assert all(x < 1.0 for x in copy) and all(x > 4.0 for x in scrambled), (copy, scrambled)
    # `codetransfer runs` and the report's grid table show each run's warm-up as its metrics logged it
    table = runs_table(planted).set_index("run")
    for name, r in last.items():
        assert table.loc[name, "warmup"] == name.split("-")[0].replace("copy", "periodic")
        assert table.loc[name, "warmup_copy_loss"] == r["copy_loss"], name
    assert (table.loc[table["recipe"] == "text-only", "warmup"] == "").all()
    grid_table = (planted / "report" / "summary.md").read_text().split("## The grid")[1]
    assert "warm-up's last copy loss (nats; planted below 1)" in grid_table and "| none |" in grid_table
