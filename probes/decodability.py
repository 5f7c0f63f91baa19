"""Decodable beyond an untrained model: trained probes against their random-init twins, seed by seed.

The method
----------
A probe that reads a label from a trained layer says little by itself: an untrained model of the same
shape carries the current token and a blur of its context, and a label that those give away (the token
itself, a value named two tokens back) is read as well from it. :func:`codetransfer.probes.grid.probe_grid`
with ``random_baseline=True`` probes, next to every trained run ``<run>``, its random-init twin
``<run>+random-init`` (recipe ``<recipe> (random init)``, seeded from the run's seed) on the same items,
rows and splits. :func:`decodability_table` takes such a probes table and returns, per recipe, task,
label family (``box@query``, ``box`` for every ``box(<key>)``), site, layer (and head):

* one row per training seed (``run`` = the trained run, ``seed`` set): ``trained`` and ``twin`` are the
  run's and its twin's ``metric`` (default ``selectivity``: accuracy minus the control task's), averaged
  over the labels of the family that both have, ``estimate`` their difference, and ``ci_low, ci_high``
  an item-level interval (``interval = "item"``): the difference -+ the root sum of squares of the two
  probes' half-widths (their cluster-bootstrap intervals over held-out entity groups), averaged over the
  family's labels;
* one row per recipe (``run = "<recipe>*"``, ``seed`` missing, the schema's aggregate convention):
  ``estimate`` is the mean of the per-seed differences and, with at least :data:`MIN_SEEDS` seeds, its
  interval is seed-level (``interval = "seed"``): the Student t interval over the per-seed differences
  (:func:`codetransfer.analysis.stats.seed_t_interval`), the seeds being the replicates, widened by the
  item-level half-width: every seed is probed on the same items and held-out split, so the noise of
  those items is common to the seeds and does not show in their spread (half-width
  ``sqrt(t_half**2 + item_half**2)``, ``item_half`` the mean of the seeds' item-level half-widths; as the
  seeds-then-items bootstrap of ``analysis.compare`` counts both); when every seed gives the same
  difference (a label every model reads perfectly) the interval keeps the items' width. With fewer seeds the interval is item-level
  only (``interval = "item"``), which says nothing about another seed.

``decodable`` is true only on a recipe row with a seed-level interval (>= :data:`MIN_SEEDS` seeds) whose
lower end is above 0: the trained models' layer carries the label beyond their untrained twins, seed
after seed. The intervals are per cell (95% each, no correction over layers, sites and families).
:func:`first_decodable_layers` reads the first such layer per recipe, task, family and site.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from codetransfer.analysis import schema
from codetransfer.analysis.stats import seed_t_interval
from codetransfer.errors import CodetransferError

TWIN_RUN_SUFFIX = "+random-init"
"""A random-init twin's run name is its trained run's name plus this."""
TWIN_RECIPE_SUFFIX = " (random init)"
"""A random-init twin's recipe is its trained run's recipe plus this."""
MIN_SEEDS = 3
"""Fewest training seeds for a seed-level interval, and so for ``decodable``."""

COLUMNS = list(schema.columns("decodability"))
"""Columns of the table (:data:`codetransfer.analysis.schema.TABLES` ``["decodability"]``)."""

_NEEDED = ("run", "recipe", "seed", "task", "site", "layer", "head", "pos", "metric", "value", "ci_low", "ci_high")
_CELL = ["task", "family", "site", "layer", "head"]


def label_family(name: str) -> str:
    """A label's family: ``box(pen)`` -> ``box`` (labels of one family are pooled), ``box@query`` -> itself."""
    return str(name).split("(", 1)[0]


def is_twin(run_names: pd.Series) -> pd.Series:
    """Which rows are random-init twins (run name ends with :data:`TWIN_RUN_SUFFIX`)."""
    return run_names.astype(str).str.endswith(TWIN_RUN_SUFFIX)


def _per_seed(probes: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Trained rows joined to their twin's rows of the same cell and label; per-seed family means."""
    missing = [c for c in _NEEDED if c not in probes.columns]
    if missing:
        raise CodetransferError(
            f"probes: expected a probing table (probes.parquet) with columns {list(_NEEDED)}; missing {missing}"
        )
    t = probes
    if "fit_on" in t.columns:  # cross-format rows (fitted on one rendering, tested on the other) are not probes here
        t = t[t["fit_on"].isna() | (t["fit_on"] == t["test_on"])]
    if "probe" in t.columns and t["probe"].nunique() > 1:
        raise CodetransferError(
            f"probes: the table holds several probe kinds {sorted(map(str, t['probe'].unique()))}; filter it to one "
            "(e.g. probes[probes.probe == 'linear'])"
        )
    t = t[t["metric"] == metric]
    if t.empty:
        have = sorted(map(str, probes["metric"].unique()))
        raise CodetransferError(f"metric: the probes table has no '{metric}' rows (it has {have}); pick one of those")
    twin = is_twin(t["run"])
    if not twin.any():
        raise CodetransferError(
            "probes: no random-init twin rows (runs named '<run>+random-init'); probe with random_baseline=True "
            "(codetransfer probe --random-baseline) so that every trained run has its twin"
        )
    t = t.assign(head=t["head"].astype("Int64").fillna(-1).astype(int))  # NA heads join as -1
    key = ["task", "site", "layer", "head", "pos"]
    trained = t[~twin.to_numpy()].assign(twin_run=lambda d: d["run"].astype(str) + TWIN_RUN_SUFFIX)
    base = t[twin.to_numpy()][["run", *key, "value", "ci_low", "ci_high"]].rename(
        columns={"run": "twin_run", "value": "twin", "ci_low": "twin_low", "ci_high": "twin_high"}
    )
    both = trained.merge(base, on=["twin_run", *key], how="inner", validate="one_to_one")
    if both.empty:
        raise CodetransferError(
            "probes: no trained run has probes of its random-init twin '<run>+random-init' at the same task, site, "
            "layer and label; probe the runs and their twins together (probe_grid(random_baseline=True))"
        )
    half = np.sqrt(((both["ci_high"] - both["ci_low"]) / 2) ** 2 + ((both["twin_high"] - both["twin_low"]) / 2) ** 2)
    both = both.assign(family=both["pos"].map(label_family), diff=both["value"] - both["twin"], half=half)
    return (
        both.groupby(["run", "recipe", "seed", *_CELL], sort=True, dropna=False)
        .agg(trained=("value", "mean"), twin=("twin", "mean"), estimate=("diff", "mean"), half=("half", "mean"))
        .reset_index()
    )


def decodability_table(
    probes: pd.DataFrame, *, metric: str = "selectivity", confidence: float = 0.95, min_seeds: int = MIN_SEEDS
) -> pd.DataFrame:
    """Trained ``metric`` minus the random-init twin's, per seed and per recipe, with ``decodable`` (module docstring).

    Args:
        probes: a probing table with trained runs and their twins (``probe_grid(..., random_baseline=True)``);
            cross-format rows are left out.
        metric: the probe metric compared (``selectivity``; ``accuracy`` works too).
        confidence: of every interval.
        min_seeds: fewest seeds for a seed-level interval (below it nothing is decodable); at least 2.

    Returns:
        the ``decodability`` table (:data:`COLUMNS`): per-seed rows, then each recipe's row, per cell.
    """
    if not isinstance(min_seeds, int) or isinstance(min_seeds, bool) or min_seeds < 2:
        raise CodetransferError(f"min_seeds: expected an integer >= 2 (a t interval needs 2 seeds), got {min_seeds!r}")
    if not 0 < confidence < 1:
        raise CodetransferError(f"confidence: expected a number between 0 and 1, got {confidence!r}")
    from scipy import stats as sps

    seeds = _per_seed(probes, metric)
    z = float(sps.norm.ppf((1 + confidence) / 2)) / float(sps.norm.ppf(0.975))  # half-widths are 95% ones
    rows = []
    for r in seeds.itertuples(index=False):
        rows.append(
            dict(
                run=r.run,
                recipe=r.recipe,
                seed=r.seed,
                **{c: getattr(r, c) for c in _CELL},
                metric=metric,
                trained=r.trained,
                twin=r.twin,
                estimate=r.estimate,
                ci_low=r.estimate - z * r.half,
                ci_high=r.estimate + z * r.half,
                n_seeds=1,
                interval="item",
                decodable=False,
            )
        )
    for (recipe, *cell), g in seeds.groupby(["recipe", *_CELL], sort=True, dropna=False):
        g = g.drop_duplicates("seed")
        k = len(g)
        diffs = g["estimate"].to_numpy(dtype=float)
        item_half = z * float(g["half"].mean())  # the items are shared by the seeds: their noise does not average out
        if k >= min_seeds:
            iv = seed_t_interval(diffs, confidence)
            half, kind = float(np.hypot((iv.high - iv.low) / 2, item_half)), "seed"
        else:
            half, kind = item_half, "item"
        low, high = diffs.mean() - half, diffs.mean() + half
        rows.append(
            dict(
                run=f"{recipe}*",
                recipe=recipe,
                seed=pd.NA,
                **dict(zip(_CELL, cell)),
                metric=metric,
                trained=float(g["trained"].mean()),
                twin=float(g["twin"].mean()),
                estimate=float(diffs.mean()),
                ci_low=float(low),
                ci_high=float(high),
                n_seeds=k,
                interval=kind,
                decodable=bool(kind == "seed" and k >= min_seeds and low > 0),
            )
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["head"] = schema.head_column(table["head"].where(table["head"] >= 0, pd.NA))
    table["seed"] = table["seed"].astype("Int64")
    table["layer"] = table["layer"].astype(int)
    table["n_seeds"] = table["n_seeds"].astype(int)
    table["decodable"] = table["decodable"].astype(bool)
    table["_agg"] = table["seed"].isna()
    table = table.sort_values(["recipe", "task", "family", "site", "layer", "head", "_agg", "seed"], kind="stable")
    return table.drop(columns="_agg").reset_index(drop=True)


def recipe_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The per-recipe rows of a decodability table (``seed`` missing)."""
    return table[table["seed"].isna()]


def first_decodable_layers(table: pd.DataFrame) -> pd.DataFrame:
    """Per recipe, task, family and site (rows without a head): the first layer called ``decodable``, with its
    estimate and interval; ``layer`` missing (``Int64`` NA) and the best layer's numbers where none is.

    Returns ``recipe, task, family, site, n_seeds, interval, layer, estimate, ci_low, ci_high``.
    """
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise CodetransferError(f"table: expected a decodability table (decodability_table); missing {missing}")
    agg = recipe_rows(table)
    agg = agg[agg["head"].isna()]
    out = []
    for (recipe, task, family, site), g in agg.groupby(["recipe", "task", "family", "site"], sort=True):
        g = g.sort_values("layer")
        hit = g[g["decodable"]]
        row = hit.iloc[0] if len(hit) else g.loc[g["estimate"].idxmax()]
        out.append(
            dict(
                recipe=recipe,
                task=task,
                family=family,
                site=site,
                n_seeds=int(g["n_seeds"].max()),
                interval=row["interval"],
                layer=int(row["layer"]) if len(hit) else pd.NA,
                estimate=row["estimate"],
                ci_low=row["ci_low"],
                ci_high=row["ci_high"],
            )
        )
    cols = ["recipe", "task", "family", "site", "n_seeds", "interval", "layer", "estimate", "ci_low", "ci_high"]
    result = pd.DataFrame(out, columns=cols)
    result["layer"] = result["layer"].astype("Int64")
    return result
