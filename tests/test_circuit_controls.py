"""The circuit analysis's bookkeeping without a model (analysis/circuit.py): which heads may be control heads,
and which runs are paired (and which pair is the null where the grid has data seeds).

Known answers: a 2 layers x 4 heads score table shaped like the planted-transfer control grid's ``copy`` arm
(an induction circuit over the layer-1 heads, a layer-0 previous-token partner): the control draw never
takes a circuit candidate, whatever the seed; too few non-candidates are filled up with the lowest scores.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from codetransfer.analysis import schema
from codetransfer.analysis.attention import RANDOM_TASK
from codetransfer.analysis.circuit import (
    PARTNER_SCORE,
    choose_heads,
    circuit_pairs,
    partner_scores_of,
)

HEADS = [(layer, head) for layer in range(2) for head in range(4)]


def _scores(values: dict) -> pd.DataFrame:
    return pd.DataFrame({"layer": [h[0] for h in HEADS], "head": [h[1] for h in HEADS],
                         "value": [values.get(h, 0.0) for h in HEADS]})  # fmt: skip


def _pairs(heads: pd.DataFrame, heads_set: str) -> set:
    t = heads[heads["heads_set"] == heads_set]
    return set(zip(t["layer"].astype(int), t["head"].astype(int)))


# the copy arm: retrieval spread over every layer-1 head, a previous-token partner at L0H3
COPY = {(1, 0): 0.31, (1, 2): 0.30, (1, 1): 0.28, (1, 3): 0.16, (0, 0): 0.02, (0, 1): 0.05, (0, 2): 0.01, (0, 3): 0.04}
PARTNERS = _scores({(0, 3): 0.40, (0, 1): 0.19, (1, 1): 0.05})  # L0H1 just below the partner bar


def test_control_heads_are_never_circuit_candidates_whatever_the_seed():
    candidates = {(1, 1), (1, 3), (0, 3)}  # a score >= half the lowest chosen (0.30), or a partner (0.40)
    drawn, drawn_without_partners = set(), set()
    for seed in range(200):
        info = SimpleNamespace(name=f"copy-s{seed}", recipe="copy", seed=seed)
        heads = choose_heads(info, _scores(COPY), k=2, task="entity_tracking", seed=seed, partners=PARTNERS)
        schema.check(heads, "circuit_heads")
        assert _pairs(heads, "chosen") == {(1, 0), (1, 2)}
        control = _pairs(heads, "control")
        assert len(control) == 2 and not control & (candidates | {(1, 0), (1, 2)}), (seed, control)
        assert heads["eligible"].all()  # three non-candidates: no fill-up
        drawn |= control
        no_partners = choose_heads(info, _scores(COPY), k=2, seed=seed)
        drawn_without_partners |= _pairs(no_partners, "control")
    assert drawn == {(0, 0), (0, 1), (0, 2)}  # random among the non-candidates, L0H1 (0.19 < 0.2) among them
    # without previous-token scores the partner is a possible control head; the high scorers never are
    assert (0, 3) in drawn_without_partners and not drawn_without_partners & {(1, 1), (1, 3)}
    assert PARTNER_SCORE == 0.2


def test_too_few_non_candidates_are_filled_up_with_the_lowest_scores():
    scores = _scores({(1, 0): 0.9, (1, 1): 0.8, (1, 2): 0.7, (1, 3): 0.5, (0, 0): 0.1, (0, 1): 0.05, (0, 2): 0.02,
                      (0, 3): 0.2})  # fmt: skip
    partners = _scores({(0, 1): 0.6, (0, 2): 0.3})
    for seed in range(20):
        info = SimpleNamespace(name="r-s0", recipe="r", seed=seed)
        heads = choose_heads(info, scores, k=3, seed=seed, partners=partners)
        schema.check(heads, "circuit_heads")
        control = heads[heads["heads_set"] == "control"]
        assert len(control) == 3
        eligible = dict(zip(zip(control["layer"], control["head"]), control["eligible"]))
        # two non-candidates (L1H3 scores 0.5 >= 0.35, L0H1 and L0H2 are partners), then the lowest score: L0H2
        assert eligible == {(0, 0): True, (0, 3): True, (0, 2): False}
        assert heads.loc[heads["heads_set"] == "chosen", "eligible"].all()
        assert control["eligible"].dtype == bool


def test_given_heads_without_scores_and_unchanged_draws_without_candidates():
    info = SimpleNamespace(name="r-s0", recipe="r", seed=0)
    nan = _scores({}).assign(value=np.nan)  # circuit_grid's table when heads are given: no score bar
    heads = choose_heads(info, nan, k=2, heads=[(1, 0)], partners=_scores({(0, 0): 0.9}))
    control = _pairs(heads, "control")
    assert len(control) == 1 and (0, 0) not in control and (1, 0) not in control and heads["eligible"].all()
    # every other head scores below half the lowest chosen: the draw is the plain draw from all the others
    flat = _scores({(1, 0): 1.0, (1, 1): 0.9})
    a = choose_heads(info, flat, k=2, seed=3)
    b = choose_heads(info, flat, k=2, seed=3, partners=_scores({}))
    pd.testing.assert_frame_equal(a, b)
    others = [h for h in HEADS if h not in {(1, 0), (1, 1)}]
    rng = np.random.default_rng([3, 0])  # the draw as it was before candidates were left out
    assert _pairs(a, "control") == {others[i] for i in rng.choice(len(others), size=2, replace=False)}


def test_partner_scores_are_the_runs_previous_token_scores_on_repeated_random_tokens():
    info = SimpleNamespace(name="r-s0", recipe="r", seed=0)
    rows = []
    for run in ("r-s0", "r-s1"):
        for task, metric in ((RANDOM_TASK, "previous_token"), (RANDOM_TASK, "induction"), ("x", "previous_token")):
            for layer, head in HEADS:
                value = {"r-s0": 1.0, "r-s1": 2.0}[run] * (layer * 4 + head) / 10 + (metric == "induction")
                rows.append(dict(run=run, task=task, rendering="", layer=layer, head=head, metric=metric,
                                 value=value + (task == "x")))  # fmt: skip
    att = pd.DataFrame(rows)
    got = partner_scores_of(info, att)
    assert len(got) == 8 and np.allclose(got["value"], [(layer * 4 + head) / 10 for layer, head in HEADS])
    assert partner_scores_of(info, att[att["metric"] != "previous_token"]) is None
    assert partner_scores_of(info, None) is None


def _run(recipe: str, seed: int, data_seed: int | None = None):
    name = f"{recipe}-s{seed}" + (f"-d{data_seed}" if data_seed else "")
    info = SimpleNamespace(name=name, recipe=recipe, seed=seed)
    if data_seed is not None:
        info.data_seed = data_seed
    return info


def _names(pairs):
    return [(a.name, b.name, c) for a, b, c in pairs]


def test_circuit_pairs_take_the_data_order_null_and_pair_only_the_own_orders_across_recipes():
    from codetransfer.pipeline import cross_model_pairs

    own = [_run(r, s, 0) for r in ("code", "text-diluted", "text-only") for s in (0, 1)]
    orders = [_run("text-only", 0, 1), _run("text-only", 0, 2), _run("text-only", 1, 1), _run("code", 0, 1)]
    controls = {"code": "text-diluted"}
    for runs in (orders + own, own + orders):  # a -d<k> run listed after its own order or before it
        pairs = circuit_pairs(runs, "text-only", controls)
        assert _names(pairs) == [
            ("code-s0", "text-only-s0", "baseline"),
            ("code-s0", "text-diluted-s0", "control"),
            ("code-s1", "text-only-s1", "baseline"),
            ("code-s1", "text-diluted-s1", "control"),
            ("text-diluted-s0", "text-only-s0", "baseline"),
            ("text-diluted-s1", "text-only-s1", "baseline"),
            ("text-only-s0-d1", "text-only-s0", "seed_null"),  # each order against its own init seed's run
            ("text-only-s0-d2", "text-only-s0", "seed_null"),
            ("text-only-s1-d1", "text-only-s1", "seed_null"),
        ]
        # the same pairs as the job's cross-model patching
        assert sorted((a, b) for a, b, _ in _names(pairs)) == sorted(
            (a.name, b.name) for a, b in cross_model_pairs(runs, "text-only", controls)
        )
    # no data-order run of the baseline: the init-seed null, as before (runs without a data_seed attribute)
    plain = [_run(r, s) for r in ("code", "text-only") for s in (0, 1, 2)] + [_run("code", 1, 3)]
    assert _names(circuit_pairs(plain, "text-only", {})) == [
        ("code-s0", "text-only-s0", "baseline"),
        ("code-s1", "text-only-s1", "baseline"),
        ("code-s2", "text-only-s2", "baseline"),
        ("text-only-s1", "text-only-s0", "seed_null"),
        ("text-only-s2", "text-only-s0", "seed_null"),
    ]
