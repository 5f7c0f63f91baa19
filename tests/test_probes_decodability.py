"""Decodability against the random-init twin: a label the local token gives away is not called decodable, a
planted trained-only label is (with 3 seeds), fewer than 3 seeds never are; the seed-level t interval."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from codetransfer.analysis import schema
from codetransfer.analysis.stats import seed_t_interval
from codetransfer.errors import CodetransferError
from codetransfer.probes.decodability import (
    TWIN_RECIPE_SUFFIX,
    TWIN_RUN_SUFFIX,
    decodability_table,
    first_decodable_layers,
    recipe_rows,
)

LAYERS = (0, 1, 2)
LABELS = ("box@query", "box(pen)", "box(cup)")


def planted(seeds=(0, 1, 2), carried=(2,), trained_level=0.6, twin_level=0.1, noise=0.03, half=0.1, rng_seed=0):
    """A probes table: per seed a trained run and its twin; the trained run's selectivity is ``trained_level`` at the
    ``carried`` layers and the twin's level elsewhere, the twin's is ``twin_level`` everywhere, each plus noise."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for seed in seeds:
        for twin in (False, True):
            for layer in LAYERS:
                for pos in LABELS:
                    level = twin_level if twin or layer not in carried else trained_level
                    v = level + rng.normal(0, noise)
                    for metric, value in (("selectivity", v), ("accuracy", v + 0.3)):
                        rows.append(
                            dict(
                                run=f"code-s{seed}" + (TWIN_RUN_SUFFIX if twin else ""),
                                recipe="code" + (TWIN_RECIPE_SUFFIX if twin else ""),
                                seed=seed,
                                task="entity_tracking",
                                site="resid_post",
                                layer=layer,
                                head=schema.NO_HEAD,
                                pos=pos,
                                probe="linear",
                                metric=metric,
                                value=value,
                                ci_low=value - half,
                                ci_high=value + half,
                                fit_on="text",
                                test_on="text",
                            )
                        )
    t = pd.DataFrame(rows)
    t["head"] = schema.head_column(t["head"])
    return t


def test_planted_trained_only_layer_is_decodable_with_three_seeds():
    probes = planted()
    table = decodability_table(probes)
    schema.check(table, "decodability")
    agg = recipe_rows(table).set_index(["family", "layer"])
    for family in ("box", "box@query"):
        assert bool(agg.loc[(family, 2), "decodable"]) and agg.loc[(family, 2), "interval"] == "seed"
        assert not agg.loc[(family, 0), "decodable"] and not agg.loc[(family, 1), "decodable"]
    # the estimate is the mean over seeds of trained minus twin, each averaged over the family's labels
    sel = probes[probes.metric == "selectivity"]
    fam = sel[sel.pos.str.startswith("box(")]
    per_seed = [
        fam[(fam.run == f"code-s{s}") & (fam.layer == 2)].value.mean()
        - fam[(fam.run == f"code-s{s}{TWIN_RUN_SUFFIX}") & (fam.layer == 2)].value.mean()
        for s in (0, 1, 2)
    ]
    row = agg.loc[("box", 2)]
    assert row["estimate"] == pytest.approx(np.mean(per_seed)) and row["n_seeds"] == 3
    # its interval: the t interval over seeds widened by the items' half-width (shared by the seeds)
    lo, hi = sps.t.interval(0.95, 2, loc=np.mean(per_seed), scale=sps.sem(per_seed))
    half = np.hypot((hi - lo) / 2, np.hypot(0.1, 0.1))
    assert (row["ci_low"], row["ci_high"]) == (
        pytest.approx(row["estimate"] - half),
        pytest.approx(row["estimate"] + half),
    )
    # per-seed rows: item-level, never decodable
    seeds = table[table["seed"].notna()]
    assert (seeds["interval"] == "item").all() and not seeds["decodable"].any()
    first = first_decodable_layers(table).set_index("family")["layer"]
    assert first["box"] == 2 and first["box@query"] == 2


def test_a_label_the_twin_reads_as_well_is_not_decodable():
    # trained and twin read the label equally well (a label the local token gives away): high selectivity, no call
    table = decodability_table(planted(carried=(), twin_level=0.8, noise=0.05))
    agg = recipe_rows(table)
    assert (agg["trained"] > 0.6).all() and not agg["decodable"].any()
    assert first_decodable_layers(table)["layer"].isna().all()


@pytest.mark.parametrize("seeds", [(0,), (0, 1)])
def test_fewer_than_three_seeds_is_item_level_and_never_decodable(seeds):
    table = decodability_table(planted(seeds=seeds, trained_level=0.9, twin_level=0.0, noise=0.001, half=0.01))
    agg = recipe_rows(table)
    assert (agg["interval"] == "item").all() and (agg["n_seeds"] == len(seeds)).all()
    assert not table["decodable"].any()
    carried = agg[agg.layer == 2]
    assert (carried["ci_low"] > 0.5).all()  # the item-level interval is clear, and still no claim
    # min_seeds is a floor that cannot be lowered below 2
    with pytest.raises(CodetransferError, match="min_seeds"):
        decodability_table(planted(seeds=seeds), min_seeds=1)


def test_refusals_are_one_line():
    probes = planted()
    for bad, needle in (
        (probes[~probes.run.str.endswith(TWIN_RUN_SUFFIX)], "random-init twin"),
        (probes.drop(columns=["pos"]), "missing"),
    ):
        with pytest.raises(CodetransferError, match=needle) as e:
            decodability_table(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(CodetransferError, match="several probe kinds"):
        decodability_table(pd.concat([probes, probes.assign(probe="mlp")]))
    with pytest.raises(CodetransferError, match="mdl_bits"):
        decodability_table(probes, metric="mdl_bits")
    with pytest.raises(CodetransferError, match="2 finite"):
        seed_t_interval([0.3])


def test_seed_t_interval_matches_scipy():
    x = [0.12, 0.31, 0.2, 0.05]
    iv = seed_t_interval(x, confidence=0.9)
    lo, hi = sps.t.interval(0.9, 3, loc=np.mean(x), scale=sps.sem(x))
    assert (iv.value, iv.low, iv.high) == (pytest.approx(np.mean(x)), pytest.approx(lo), pytest.approx(hi))


# --------------------------------------------------------------------------- the token itself, from models


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    path: object
    recipe: str
    seed: int


@pytest.fixture(scope="module")
def three_models(tmp_path_factory):
    from conftest import TINY, save_tiny_model

    root = tmp_path_factory.mktemp("seeds")
    cfg = dataclasses.replace(TINY, n_ctx=256)
    return [
        Run(name=f"m-s{s}", path=save_tiny_model(root / f"s{s}", cfg=cfg, seed=s), recipe="m", seed=s) for s in range(3)
    ]


def _token_items(task, n, seed):
    """Entity-tracking items whose only label is the token itself: at each stated box letter, that letter."""
    from codetransfer.tasks import get_task
    from codetransfer.tasks.items import Label

    items = get_task(task).generate(n, seed, difficulty=0)
    out = []
    for it in items:
        ends = [it.spans[k][1] for k in sorted(it.spans) if k.endswith(".value")]
        labels = tuple(Label(e, "box@token", it.prompt[e - 1]) for e in ends)
        out.append(dataclasses.replace(it, labels=labels))
    return out


def test_the_token_itself_is_not_decodable_above_the_random_init_twin(tmp_path, three_models):
    """Three models of a recipe and their random-init twins, probed end to end for a label the probed token
    determines: every model reads it (high accuracy and selectivity), so no layer is called decodable."""
    from codetransfer.probes.grid import random_init_run, with_random_init
    from codetransfer.probes.sweep import run_probe_sweep
    from codetransfer.trained.loading import load_bridge

    def load(path):
        if hasattr(path, "seed"):  # a RandomInit: the twin
            return random_init_run(path)
        bridge, tok = load_bridge(path, device="cpu")
        return types.SimpleNamespace(bridge=bridge, tokenizer=tok)

    probes = run_probe_sweep(
        with_random_init(three_models),
        ["entity_tracking"],
        ["resid_post"],
        tmp_path / "p",
        n_items=40,
        seeds=(0,),
        probe_params={"Cs": 2, "cv": 2},
        mdl=False,
        cross_format=False,
        keep_stores=False,
        load=load,
        generate=_token_items,
    )
    assert set(probes["pos"]) == {"box@token"} and len(set(probes["run"])) == 6
    trained = probes[(probes.metric == "accuracy") & ~probes.run.str.endswith(TWIN_RUN_SUFFIX)]
    assert (trained["value"] > 0.9).all()  # a threshold on accuracy would call every layer decodable
    table = decodability_table(probes)
    agg = recipe_rows(table)
    assert len(agg) == 2 and (agg["n_seeds"] == 3).all() and (agg["interval"] == "seed").all()
    assert (agg["trained"] > 0.3).all()  # and so would a threshold on the trained selectivity alone
    assert not agg["decodable"].any()
    # every model reads it perfectly: equal differences over seeds keep the items' width, never a zero-width call
    assert (agg["ci_high"] - agg["ci_low"] > 0.1).all()


def test_report_reads_first_decodable_layer_from_the_table_rounded_to_its_interval(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from codetransfer.report import _probes, with_interval

    results = tmp_path / "results"
    results.mkdir()
    probes = planted()
    probes.to_parquet(results / "probes.parquet")
    table = decodability_table(probes)
    table.to_parquet(results / "decodability.parquet")
    section, findings = _probes(results, tmp_path)
    assert not section.missing
    assert (tmp_path / "probe_entity_tracking_resid_post_decodability.png").is_file()
    first = [b for k, b in section.blocks if k == "table"][0].markdown
    row = recipe_rows(table).set_index(["family", "layer"]).loc[("box@query", 2)]
    shown = with_interval(row["estimate"], row["ci_low"], row["ci_high"], signed=True)
    assert f"| code | box@query | 3 | seed-level (3 seeds) | 2 | {shown} |" in first
    assert len(findings) == 1 and "box@query: decodable above the random-init twin in code from layer 2" in findings[0]
    assert shown in findings[0]
    # one seed: the same planted layer is reported, never called decodable
    one = planted(seeds=(0,))
    one.to_parquet(results / "probes.parquet")
    decodability_table(one).to_parquet(results / "decodability.parquet")
    section, findings = _probes(results, tmp_path)
    first = [b for k, b in section.blocks if k == "table"][0].markdown
    assert "none above the twin" in first and "item-level (1 seed): not a claim" in first
    assert "not a claim" in findings[0] and "decodable above" not in findings[0]
