"""The circuit analysis's bookkeeping without a model (analysis/circuit.py): which heads may be control heads,
which runs are paired (and which pair is the null where the grid has data seeds), and the heads over training
with a seed-level interval.

Known answers: a 2 layers x 4 heads score table shaped like the planted-transfer control grid's ``copy`` arm
(an induction circuit over the layer-1 heads, a layer-0 previous-token partner): the control draw never
takes a circuit candidate, whatever the seed; too few non-candidates are filled up with the lowest scores.
"""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from codetransfer.analysis import schema  # noqa: E402
from codetransfer.analysis.attention import RANDOM_TASK  # noqa: E402
from codetransfer.analysis.circuit import (  # noqa: E402
    PARTNER_SCORE,
    _over_training_table,
    choose_heads,
    circuit_pairs,
    partner_scores_of,
)
from codetransfer.analysis.circuit_plots import plot_heads_over_training  # noqa: E402

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
        # the same pairs as the job's cross-model patching, which also patches a null into the control's runs
        cross = cross_model_pairs(runs, "text-only", controls)
        assert sorted((a, b) for a, b, _ in _names(pairs)) == sorted(
            (a.name, b.name) for a, b in cross if a.recipe != b.recipe or a.recipe == "text-only"
        )
        assert [(a.name, b.name) for a, b in cross if a.recipe == b.recipe == "text-diluted"] == [
            ("text-diluted-s1", "text-diluted-s0"), ("text-diluted-s0", "text-diluted-s1"),
        ]  # fmt: skip
        # the job patches each pair of two recipes both ways, once each, and the nulls one way
        both = [(a.name, b.name) for a, b in cross_model_pairs(runs, "text-only", controls, both_ways=True)]
        across = [(a.name, b.name) for a, b in cross if a.recipe != b.recipe]
        nulls = {(a, b) for a, b in both if a.split("-s")[0] == b.split("-s")[0]}
        assert sorted(set(both) - nulls) == sorted(across + [(b, a) for a, b in across]) and len(set(both)) == len(both)
        assert {b for _, b in nulls} == {b for _, b in set(both) - nulls}  # every receiving run has a null
    mutual = [_run(r, 0, 0) for r in ("a", "b", "text-only")]
    pairs = cross_model_pairs(mutual, "text-only", {"a": "b", "b": "a"}, both_ways=True)
    names = [(x.name, y.name) for x, y in pairs]
    assert len(names) == len(set(names)) == 6  # a<->text-only, a<->b, b<->text-only: each direction once
    # no data-order run of the baseline: the init-seed null, as before (runs without a data_seed attribute)
    plain = [_run(r, s) for r in ("code", "text-only") for s in (0, 1, 2)] + [_run("code", 1, 3)]
    assert _names(circuit_pairs(plain, "text-only", {})) == [
        ("code-s0", "text-only-s0", "baseline"),
        ("code-s1", "text-only-s1", "baseline"),
        ("code-s2", "text-only-s2", "baseline"),
        ("text-only-s1", "text-only-s0", "seed_null"),
        ("text-only-s2", "text-only-s0", "seed_null"),
    ]


def _over_training(recipes: dict[str, int]):
    """Heads (two chosen, two control per run) and an attention_over_training table: per run, step and head an
    induction score, a previous-token score (not tracked) and a retrieval-task row (not tracked)."""
    heads, over = [], []
    rng = np.random.default_rng(0)
    for recipe, n_seeds in recipes.items():
        for seed in range(n_seeds):
            run = f"{recipe}-s{seed}"
            for heads_set, group in (("chosen", [(1, 0), (1, 2)]), ("control", [(0, 0), (0, 1)])):
                for rank, (layer, head) in enumerate(group):
                    heads.append(dict(run=run, recipe=recipe, seed=seed, heads_set=heads_set, rank=rank,
                                      layer=layer, head=head))  # fmt: skip
            for step in (100, 200):
                for layer, head in HEADS:
                    v = float(rng.uniform(0, 1))
                    common = dict(run=run, recipe=recipe, seed=seed, step=step, layer=layer, head=head,
                                  ci_low=v - 0.1, ci_high=v + 0.1)  # fmt: skip
                    over.append(dict(common, task=RANDOM_TASK, rendering="", metric="induction", value=v))
                    over.append(dict(common, task=RANDOM_TASK, rendering="", metric="previous_token", value=9.0))
                    over.append(dict(common, task="entity_tracking", rendering="text", metric="induction", value=9.0))
    return pd.DataFrame(heads), pd.DataFrame(over)[list(schema.columns("attention_over_training"))]


def test_heads_over_training_track_induction_with_a_seed_interval_per_recipe():
    heads, over = _over_training({"code": 3, "text-only": 2})
    t = _over_training_table(heads, over)
    schema.check(t, "circuit_over_training")
    assert set(t["metric"]) == {"induction"} and set(t["task"]) == {RANDOM_TASK}
    per_head = t[~t["run"].str.endswith("*")]
    assert len(per_head) == 5 * 2 * 4 and (per_head["interval"] == "item").all() and (per_head["n_seeds"] == 1).all()
    pooled = t[t["run"].str.endswith("*")]
    assert set(pooled["run"]) == {"code*"}  # text-only has 2 seeds: no seed-level interval
    assert len(pooled) == 2 * 2 and (pooled["interval"] == "seed").all() and (pooled["n_seeds"] == 3).all()
    assert pooled["seed"].isna().all() and pooled["head"].isna().all() and pooled["layer"].isna().all()
    ind = over[(over["metric"] == "induction") & (over["task"] == RANDOM_TASK)]
    for r in pooled.itertuples():
        group = [(1, 0), (1, 2)] if r.heads_set == "chosen" else [(0, 0), (0, 1)]
        per_seed = [
            ind[(ind["run"] == f"code-s{s}") & (ind["step"] == r.step)
                & ind[["layer", "head"]].apply(tuple, axis=1).isin(group)]["value"].mean()
            for s in range(3)
        ]  # fmt: skip
        assert r.value == pytest.approx(np.mean(per_seed), abs=1e-12)
        assert r.ci_low < r.value < r.ci_high
        half = r.ci_high - r.value
        assert half == pytest.approx(4.302652729 * np.std(per_seed, ddof=1) / np.sqrt(3), rel=1e-6)

    ax = plot_heads_over_training(t)
    lines = {line.get_label(): line for line in ax.get_lines()}
    chosen = pooled[pooled["heads_set"] == "chosen"].sort_values("step")
    assert np.allclose(lines["code"].get_ydata(), chosen["value"])  # the pooled mean, not a mix with head rows
    two = per_head[(per_head["recipe"] == "text-only") & (per_head["heads_set"] == "chosen")]
    assert np.allclose(lines["text-only"].get_ydata(), two.groupby("step")["value"].mean())
    assert len(ax.collections) == 2  # bands: code's chosen and control heads, none for two seeds
    plt.close(ax.figure)


def test_no_checkpoints_give_an_empty_table_with_the_schema():
    heads, _ = _over_training({"code": 1})
    t = _over_training_table(heads, None)
    assert t.empty and list(t.columns) == list(schema.columns("circuit_over_training"))


def test_data_order_twins_keep_their_rows_and_stay_out_of_the_pools_over_seeds():
    from codetransfer.analysis.circuit import _drop_table

    heads, over = _over_training({"code": 3})
    twin_heads = heads[heads["run"] == "code-s0"].assign(run="code-s0-d1")
    twin_over = over[over["run"] == "code-s0"].assign(run="code-s0-d1", value=lambda t: t["value"] + 5.0)
    t = _over_training_table(pd.concat([heads, twin_heads]), pd.concat([over, twin_over]))
    plain = _over_training_table(heads, over)
    pooled = t[t["run"] == "code*"].reset_index(drop=True)
    assert (pooled["n_seeds"] == 3).all() and pooled.equals(plain[plain["run"] == "code*"].reset_index(drop=True))
    assert (t["run"] == "code-s0-d1").sum() == (t["run"] == "code-s0").sum() > 0  # its own rows are kept

    rng = np.random.default_rng(0)
    rows = []
    for run, seed in (("code-s0", 0), ("code-s1", 1), ("code-s2", 2), ("code-s0-d1", 0)):
        for method in ("clean", "mean"):
            for i in range(20):
                rows.append(dict(run=run, recipe="code", seed=seed, heads_of=run, task="counting",
                                 heads_set="" if method == "clean" else "chosen", heads="L1H0", method=method,
                                 index=i, correct=float(rng.random() < (0.9 if method == "clean" else 0.3)),
                                 logit_diff=float(rng.normal(2.0 if method == "clean" else 0.0))))  # fmt: skip
    drops = _drop_table(pd.DataFrame(rows), n_boot=200, seed=0)
    assert set(drops["run"]) == {"code-s0", "code-s1", "code-s2", "code-s0-d1", "code*"}
    assert (drops.loc[drops["run"] == "code*", "n_seeds"] == 3).all()
    own = drops[drops["run"].isin(["code-s0", "code-s1", "code-s2"]) & (drops["metric"] == "logit_diff")]
    pool = drops[(drops["run"] == "code*") & (drops["metric"] == "logit_diff")]
    assert pool["value"].iloc[0] == pytest.approx(own["value"].mean(), abs=0.05)  # hierarchical mean of 3 seeds
