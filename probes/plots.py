"""Plots of probing tables (the tidy output of ``probes.sweep``).

Every function takes a table and an optional matplotlib ``ax`` and returns the Axes. Compute once
(``probe_layers`` / ``run_probe_sweep``), plot many times.

* :func:`plot_probe_curves` — a metric against layer, one line per recipe with its 95% band. Runs of
  one recipe (training seeds) are averaged: the line is the mean of their values and the band the
  mean of their interval ends (a summary, not a new interval).
* :func:`first_decodable_layer` / :func:`plot_first_decodable_layer` — for each run, the first layer
  whose metric reaches ``threshold`` (the earliest point where the property is decodable); plotted
  per recipe, one dot per run (training seed), with the recipe mean as a bar. Runs that never reach
  it are drawn above the top layer, marked "never". A threshold on a raw metric says nothing about an
  untrained model of the same shape; the report uses :func:`plot_decodability` instead.
* :func:`plot_decodability` — a decodability table (``probes.decodability.decodability_table``): per
  recipe, trained minus random-init twin against layer with its interval (seed-level with >= 3 seeds),
  the twin as the 0 line; filled dots where the layer is called decodable.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from codetransfer.errors import CodetransferError


def _single(table: pd.DataFrame, columns=("site", "pos", "probe", "task", "head")) -> None:
    for col in columns:
        if col in table.columns and table[col].nunique(dropna=False) > 1:
            raise CodetransferError(
                f"table: column '{col}' has several values {sorted(map(str, table[col].unique()))[:6]}; "
                f"filter the table to one {col} before plotting"
            )


def _select(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    if "metric" not in table.columns or "layer" not in table.columns:
        raise CodetransferError(
            f"table: expected a probing table with 'metric' and 'layer' columns, got {list(table.columns)}"
        )
    sub = table[table["metric"] == metric]
    if sub.empty:
        raise CodetransferError(
            f"metric: no rows with metric '{metric}'; the table has {sorted(table['metric'].unique())}"
        )
    _single(sub)
    return sub


def plot_probe_curves(table: pd.DataFrame, metric: str = "accuracy", ax=None):
    """Metric (y) against layer (x), one line per recipe (its fixed colour) with a CI band.

    Random-init twins (recipes ``"<recipe> (random init)"``: untrained models of the same shape) are
    pooled into one grey dashed line, the mean of their values (their band: the lowest and highest
    interval end among them), since they are the same baseline for every recipe. The majority-class
    accuracy is a labelled reference line; the legend sits beside the axes."""
    from codetransfer.analysis import style as S

    sub = _select(table, metric)
    ax = S.new_axes((6.5, 3.8)) if ax is None else ax
    key = "recipe" if "recipe" in sub.columns and sub["recipe"].notna().any() else "run"
    names = sub[key].astype(str)
    rand = names.str.endswith(S.RANDOM_INIT_SUFFIX)
    for name, grp in sub[~rand].groupby(key, sort=True):
        agg = grp.groupby("layer")[["value", "ci_low", "ci_high"]].mean().sort_index()
        S.line_with_band(
            ax, agg.index, agg["value"], agg["ci_low"], agg["ci_high"], label=str(name), color=S.recipe_color(name)
        )
    if rand.any():
        r = sub[rand]
        per = r.groupby("layer").agg(value=("value", "mean"), ci_low=("ci_low", "min"), ci_high=("ci_high", "max"))
        n = r[key].nunique()
        S.line_with_band(
            ax,
            per.index,
            per["value"],
            per["ci_low"],
            per["ci_high"],
            label="random init" + (f" (mean of {n})" if n > 1 else ""),
            color=S.RANDOM_INIT_COLOR,
            ls="--",
            marker="s",
        )
    if "majority" in set(table["metric"]) and metric == "accuracy":
        maj = table[table["metric"] == "majority"]["value"].mean()
        S.reference_line(ax, maj, "majority class", ls=":")
    ax.set_xlabel("layer (residual stream after the block)")
    ax.set_ylabel(S.metric_style(metric).label)
    layers = sorted(sub["layer"].unique())
    ax.set_xticks(layers)
    S.legend_outside(ax, key)
    return ax


def first_decodable_layer(table: pd.DataFrame, threshold: float, metric: str = "accuracy") -> pd.DataFrame:
    """Per run, the first layer whose ``metric`` is at least ``threshold`` (NaN if none).

    Returns a table with ``run, recipe, seed, metric, threshold, layer``.
    """
    sub = _select(table, metric)
    rows = []
    keys = [c for c in ("run", "recipe", "seed") if c in sub.columns]
    for k, grp in sub.groupby(keys, sort=True, dropna=False):
        agg = grp.groupby("layer")["value"].mean().sort_index()
        hit = agg[agg >= threshold]
        rows.append(
            {
                **dict(zip(keys, k if isinstance(k, tuple) else (k,))),
                "metric": metric,
                "threshold": threshold,
                "layer": float(hit.index[0]) if len(hit) else np.nan,
            }
        )
    return pd.DataFrame(rows)


def plot_first_decodable_layer(table: pd.DataFrame, threshold: float, ax=None, metric: str = "accuracy"):
    """First layer reaching ``threshold`` per run, grouped by recipe (dots: runs; bar: recipe mean)."""
    from codetransfer.analysis import style as S

    first = first_decodable_layer(table, threshold, metric)
    n_layers = int(table["layer"].max()) + 1
    if ax is None:
        ax = S.new_axes((6, 4))
    key = "recipe" if "recipe" in first.columns and first["recipe"].notna().any() else "run"
    names = sorted(first[key].astype(str).unique())
    for x, name in enumerate(names):
        layers = first[first[key].astype(str) == name]["layer"].to_numpy(dtype=float)
        shown = np.where(np.isnan(layers), n_layers, layers)
        color = S.recipe_color(name)
        ax.bar(x, np.mean(shown), color=color, alpha=0.3)
        jitter = np.linspace(-0.15, 0.15, len(shown)) if len(shown) > 1 else np.zeros(1)
        ax.scatter(x + jitter, shown, color=color, zorder=3)
    ax.axhline(n_layers, color="grey", ls=":", lw=1)
    ax.text(len(names) - 0.5, n_layers, "never", va="bottom", ha="right", fontsize="small", color="grey")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20)
    ax.set_ylim(-0.5, n_layers + 0.7)
    ax.set_ylabel(f"first layer with {metric} ≥ {threshold:g}")
    ax.set_xlabel(key)
    ax.text(
        0.0,
        -0.3,
        "bar: mean over training seeds; dots: one seed each",
        transform=ax.transAxes,
        fontsize="x-small",
        color="#444444",
    )
    return ax


def plot_decodability(table: pd.DataFrame, ax=None):
    """Trained minus random-init twin (``estimate``) against layer, one line per recipe with its interval band.

    ``table``: the per-recipe rows of a decodability table for one task, label family and site (rows
    without a head). The random-init twin is the 0 line; a filled dot marks a layer called ``decodable``
    (the seed-level interval above 0), a hollow one a layer that is not."""
    from codetransfer.analysis import style as S

    need = ("recipe", "layer", "estimate", "ci_low", "ci_high", "decodable")
    if any(c not in table.columns for c in need):
        raise CodetransferError(
            f"table: expected a decodability table with {list(need)}, got {list(table.columns)}; "
            "make it with probes.decodability.decodability_table"
        )
    sub = table[table["seed"].isna()] if "seed" in table.columns else table
    if "head" in sub.columns:
        sub = sub[sub["head"].isna()]
    if sub.empty:
        raise CodetransferError("table: no per-recipe rows without a head to plot")
    _single(sub, ("site", "family", "task", "metric"))
    ax = S.new_axes((6.5, 3.8)) if ax is None else ax
    for name, grp in sub.groupby("recipe", sort=True):
        grp = grp.sort_values("layer")
        color = S.recipe_color(str(name))
        S.line_with_band(ax, grp["layer"], grp["estimate"], grp["ci_low"], grp["ci_high"], label=str(name), color=color)
        hollow = grp[~grp["decodable"].astype(bool)]
        ax.scatter(hollow["layer"], hollow["estimate"], s=28, facecolors="white", edgecolors=color, zorder=3)
        filled = grp[grp["decodable"].astype(bool)]
        ax.scatter(filled["layer"], filled["estimate"], s=28, color=color, zorder=3)
    S.reference_line(ax, 0.0, "random-init twin", ls="--")
    ax.set_xlabel("layer (residual stream after the block)")
    metric = str(sub["metric"].iloc[0]) if "metric" in sub.columns else "metric"
    ax.set_ylabel(f"{metric}: trained − random init")
    ax.set_xticks(sorted(sub["layer"].unique()))
    S.legend_outside(ax, "recipe")
    return ax
