"""The grid-level circuit analysis (analysis/circuit.py): a planted head carries its planted gap through
:func:`circuit_grid`, CKA of identical models is 1 against the seed null, and bad input is refused.

Known answer (as in tests/test_ablation.py): two models identical but for one head, zeroed in the baseline
twin. In a grid of three runs (the baseline at seeds 0 and 1, both the twin without the head, and a recipe at
seed 0, the model with it) the recipe's gap over the baseline is that head's: ablating it in both removes the
gap (share ~1), ablating another head does not (share ~0), and the two baseline seeds are the same model (CKA
1 at every layer, a zero gap whose share is withheld).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from codetransfer.analysis import schema
from codetransfer.analysis.circuit import choose_heads, circuit_grid, head_scores_of
from codetransfer.errors import CodetransferError
from codetransfer.trained.tokenizer import train_tokenizer
from conftest import TOKENIZER_TEXTS
from test_ablation import planted  # noqa: F401  (the module-scoped fixture: twins with and without a head)

RUNS = [
    SimpleNamespace(name="code-s0", recipe="code", seed=0),
    SimpleNamespace(name="text-only-s0", recipe="text-only", seed=0),
    SimpleNamespace(name="text-only-s1", recipe="text-only", seed=1),
]


@pytest.fixture(scope="module")
def grid(planted):  # noqa: F811
    a, b, head, other, _, _ = planted
    tok = train_tokenizer(TOKENIZER_TEXTS, vocab_size=400, min_frequency=1)
    bridges = {"code-s0": b, "text-only-s0": a, "text-only-s1": a}

    def load(info, device="cpu"):
        return SimpleNamespace(bridge=bridges[info.name], tokenizer=tok, info=info)

    def run(heads, **kw):
        return circuit_grid(
            RUNS, "entity_tracking", heads=heads, max_difficulty=0, n_items=48, n_boot=500, load=load, k=1, **kw
        )

    return SimpleNamespace(run=run, head=head, other=other, load=load)


def _share(table: pd.DataFrame, method: str, comparison: str = "baseline", pooled: bool = False) -> pd.Series:
    t = table[
        (table["comparison"] == comparison)
        & (table["heads_set"] == "chosen")
        & (table["method"] == method)
        & (table["metric"] == "logit_diff")
        & (table["run"].str.endswith("*") == pooled)
    ]
    assert len(t) == 1, t
    return t.iloc[0]


@pytest.mark.parametrize("method", ["mean", "resample"])
def test_planted_head_carries_its_gap_and_another_head_does_not(grid, method):
    every = lambda h: {r.name: [h] for r in RUNS}  # noqa: E731
    tables = grid.run(every(grid.head))
    for name, t in tables.items():
        schema.check(t, name.removesuffix(".parquet"))
    gap = tables["circuit_gap.parquet"]
    row = _share(gap, method)
    assert row["gap_low"] > 0, row  # the head gives the recipe its advantage
    # mean ablation removes the head's gap and no more; resample ablation writes another item's output of the
    # head (here: another prompt's previous tokens), which can mislead the copying beyond removing it
    high = 1.25 if method == "mean" else 2.0
    assert not row["withheld"] and 0.75 < row["value"] < high, row
    pooled = _share(gap, method, pooled=True)  # one seed: the share of the mean gap is the seed's share
    assert pooled["value"] == pytest.approx(row["value"], abs=1e-9)
    assert pooled["interval"] == "item" and pooled["n_seeds"] == 1  # fewer than 3 seeds: not a claim
    null = _share(gap, method, comparison="seed_null")  # the same model twice: no gap, no share
    assert null["gap"] == pytest.approx(0.0, abs=1e-9) and null["withheld"] and np.isnan(null["value"])
    # the drop in the run that has the head, none in its twin without it (its output there is already zero)
    drop = tables["circuit.parquet"]
    drop = drop[(drop["heads_set"] == "chosen") & (drop["method"] == method) & (drop["metric"] == "logit_diff")]
    by_run = drop.set_index("run")["value"]
    assert by_run["code-s0"] > 0.5 * row["gap"]
    assert abs(by_run["text-only-s0"]) < 1e-4

    decoy = _share(grid.run(every(grid.other))["circuit_gap.parquet"], method)
    assert not decoy["withheld"] and abs(decoy["value"]) < 0.25, decoy


def test_cka_is_one_for_identical_models_and_says_where_patching_is_meaningful(grid):
    tables = grid.run({r.name: [grid.head] for r in RUNS}, methods=("mean",))
    cka = tables["cka.parquet"]
    null = cka[cka["comparison"] == "seed_null"]
    assert len(null) == 2 and np.allclose(null["value"], 1.0, atol=1e-6)  # one row per layer, same model
    cross = cka[cka["comparison"] == "baseline"]
    assert len(cross) == 2 and (cross["value"] < 1 - 1e-6).all()  # the twins differ by one head
    assert np.allclose(cross["seed_null"], 1.0, atol=1e-6)
    assert list(cross["within_seed_null"]) == list(cross["value"] >= cross["seed_null"])
    assert null["within_seed_null"].isna().all()


def test_heads_are_chosen_by_the_named_score_with_random_controls():
    info = SimpleNamespace(name="r-s0", recipe="r", seed=0)
    att = pd.DataFrame(
        {
            "run": "r-s0",
            "task": ["entity_tracking"] * 6 + ["repeated_random"] * 6,
            "rendering": ["text"] * 6 + [""] * 6,
            "layer": [0, 0, 0, 1, 1, 1] * 2,
            "head": [0, 1, 2] * 4,
            "metric": ["attn_answer_minus_distractors"] * 6 + ["induction"] * 6,
            "value": [0.1, 0.9, 0.0, 0.5, 0.2, 0.3, 0.0, 0.1, 0.2, 0.3, 0.8, 0.7],
        }
    )
    heads = choose_heads(info, head_scores_of(info, att, "retrieval", "entity_tracking"), k=2, task="entity_tracking")
    chosen = heads[heads["heads_set"] == "chosen"]
    assert list(zip(chosen["layer"], chosen["head"])) == [(0, 1), (1, 0)]
    control = heads[heads["heads_set"] == "control"]
    assert len(control) == 2 and not set(zip(control["layer"], control["head"])) & {(0, 1), (1, 0)}
    by_induction = choose_heads(info, head_scores_of(info, att, "induction", "entity_tracking"), k=2)
    chosen = by_induction[by_induction["heads_set"] == "chosen"]
    assert list(zip(chosen["layer"], chosen["head"])) == [(1, 1), (1, 2)]


def test_bad_input_is_refused_in_one_line(grid):
    def refused(match, **kw):
        with pytest.raises(CodetransferError, match=match) as e:
            grid.run(**kw)
        assert "\n" not in str(e.value)

    every = lambda h: {r.name: [h] for r in RUNS}  # noqa: E731
    refused("is not a \\(layer, head\\) of the model", heads=every((7, 0)))
    with pytest.raises(CodetransferError, match="at least 8 items"):
        circuit_grid(RUNS, "entity_tracking", heads=every(grid.head), n_items=4, load=grid.load)
    refused("is not a run of the grid", heads={"code-s9": [grid.head]})
    refused("no 'attn_answer_minus_distractors' scores", heads={"code-s0": [grid.head]})
    with pytest.raises(CodetransferError, match="did you mean 'retrieval'"):
        head_scores_of(RUNS[0], pd.DataFrame(), "retreival", "entity_tracking")
