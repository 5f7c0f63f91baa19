"""Plots of probing tables (the tidy output of ``probes.sweep``).

Every function takes a table and an optional matplotlib ``ax`` and returns the Axes. Compute once
(``probe_layers`` / ``run_probe_sweep``), plot many times.

* :func:`plot_probe_curves` — a metric against layer, one line per recipe with its 95% band. Runs of
  one recipe (training seeds) are averaged: the line is the mean of their values and the band the
  mean of their interval ends (a summary, not a new interval).
* :func:`first_decodable_layer` / :func:`plot_first_decodable_layer` — for each run, the first layer
  whose metric reaches ``threshold`` (the earliest point where the property is decodable); plotted
  per recipe, one dot per run (training seed), with the recipe mean as a bar. Runs that never reach
  it are drawn above the top layer, marked "never".
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
        raise CodetransferError(f"table: expected a probing table with 'metric' and 'layer' columns, got {list(table.columns)}")
    sub = table[table["metric"] == metric]
    if sub.empty:
        raise CodetransferError(
            f"metric: no rows with metric '{metric}'; the table has {sorted(table['metric'].unique())}"
        )
    _single(sub)
    return sub


def plot_probe_curves(table: pd.DataFrame, metric: str = "accuracy", ax=None):
    """Metric (y) against layer (x), one line per recipe with a CI band."""
    import matplotlib.pyplot as plt

    sub = _select(table, metric)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    key = "recipe" if "recipe" in sub.columns and sub["recipe"].notna().any() else "run"
    for name, grp in sub.groupby(key, sort=True):
        agg = grp.groupby("layer")[["value", "ci_low", "ci_high"]].mean().sort_index()
        line = ax.plot(agg.index, agg["value"], marker="o", label=str(name))[0]
        if agg["ci_low"].notna().any():
            ax.fill_between(agg.index, agg["ci_low"], agg["ci_high"], color=line.get_color(), alpha=0.2)
    if "majority" in set(table["metric"]) and metric == "accuracy":
        maj = table[table["metric"] == "majority"]["value"].mean()
        ax.axhline(maj, color="grey", ls=":", lw=1, label="majority")
    ax.set_xlabel("layer")
    ax.set_ylabel(metric)
    layers = sorted(sub["layer"].unique())
    ax.set_xticks(layers)
    ax.legend(title=key, fontsize="small")
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
        rows.append({**dict(zip(keys, k if isinstance(k, tuple) else (k,))), "metric": metric,
                     "threshold": threshold, "layer": float(hit.index[0]) if len(hit) else np.nan})
    return pd.DataFrame(rows)


def plot_first_decodable_layer(table: pd.DataFrame, threshold: float, ax=None, metric: str = "accuracy"):
    """First layer reaching ``threshold`` per run, grouped by recipe (dots: runs; bar: recipe mean)."""
    import matplotlib.pyplot as plt

    first = first_decodable_layer(table, threshold, metric)
    n_layers = int(table["layer"].max()) + 1
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    key = "recipe" if "recipe" in first.columns and first["recipe"].notna().any() else "run"
    names = sorted(first[key].astype(str).unique())
    for x, name in enumerate(names):
        layers = first[first[key].astype(str) == name]["layer"].to_numpy(dtype=float)
        shown = np.where(np.isnan(layers), n_layers, layers)
        ax.bar(x, np.mean(shown), color="C0", alpha=0.3)
        jitter = np.linspace(-0.15, 0.15, len(shown)) if len(shown) > 1 else np.zeros(1)
        ax.scatter(x + jitter, shown, color="C0", zorder=3)
    ax.axhline(n_layers, color="grey", ls=":", lw=1)
    ax.text(len(names) - 0.5, n_layers, "never", va="bottom", ha="right", fontsize="small", color="grey")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20)
    ax.set_ylim(-0.5, n_layers + 0.7)
    ax.set_ylabel(f"first layer with {metric} ≥ {threshold:g}")
    ax.set_xlabel(key)
    return ax
