"""Plots of patching tables (the tidy tables of :mod:`codetransfer.analysis.patching`).

Every function takes a table, selects rows (``site``, ``metric`` and any column filters), averages
the ``value`` over what is left (e.g. seeds of a recipe), and draws a heatmap:

* :func:`plot_layer_pos`: layer x position (absolute index or span key) for one site;
* :func:`plot_layer_head`: layer x head for a head site (one position label, default 'all');
* :func:`plot_side_by_side`: one heatmap per value of a column (e.g. per recipe), shared colour scale;
* :func:`plot_difference`: the difference of two such maps (e.g. recipe A minus recipe B).

Normalised patching values are drawn on a diverging scale centred on 0 (0 = corrupted run,
1 = clean run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from codetransfer.errors import CodetransferError

_DEFAULT_METRICS = ("denoising", "noising", "cross_model", "cross_rendering", "within_rendering")


def _select(table: pd.DataFrame, site: str | None, metric: str | None, filters: Mapping) -> pd.DataFrame:
    if table.empty:
        raise CodetransferError("table: is empty; nothing to plot")
    df = table
    if site is None:
        sites = df["site"].unique()
        if len(sites) != 1:
            raise CodetransferError(f"site: the table holds several sites {sorted(sites)}; pass site=")
        site = sites[0]
    if site not in set(df["site"]):
        raise CodetransferError(f"site: {site!r} is not in the table (have {sorted(df['site'].unique())})")
    df = df[df["site"] == site]
    if metric is None:
        found = [m for m in _DEFAULT_METRICS if m in set(df["metric"])]
        if not found:
            raise CodetransferError(f"metric: pass one of {sorted(df['metric'].unique())}")
        metric = found[0]
    if metric not in set(df["metric"]):
        raise CodetransferError(f"metric: {metric!r} is not in the table (have {sorted(df['metric'].unique())})")
    df = df[df["metric"] == metric]
    for col, val in filters.items():
        if col not in df.columns:
            raise CodetransferError(f"{col}: not a column of the table (have {list(df.columns)})")
        df = df[df[col] == val]
    if df.empty:
        raise CodetransferError(f"table: no rows left for site={site!r}, metric={metric!r}, {dict(filters)}")
    return df


def _pos_order(df: pd.DataFrame) -> list[str]:
    labels = list(dict.fromkeys(df["pos_label"]))
    if all(str(x).lstrip("-").isdigit() for x in labels):
        return sorted(labels, key=int)
    return labels


def layer_pos_grid(table, site=None, metric=None, **filters) -> pd.DataFrame:
    """Mean value per (layer, position label): rows = layers, columns = positions."""
    df = _select(table, site, metric, filters)
    order = _pos_order(df)
    if "head" in df and df["head"].notna().any():
        keys = [c for c in ("run", "recipe", "seed", "task", "layer", "pos_label") if c in df.columns]
        df = df.groupby(keys, as_index=False, dropna=False)["value"].sum()  # a layer's heads add up
    g = df.pivot_table(index="layer", columns="pos_label", values="value", aggfunc="mean")
    return g[[c for c in order if c in g.columns]]


def layer_head_grid(table, site="head_out", metric=None, pos_label="all", **filters) -> pd.DataFrame:
    """Mean value per (layer, head) at one position label: rows = layers, columns = heads."""
    df = _select(table, site, metric, filters)
    if pos_label is not None:
        df = df[df["pos_label"] == pos_label]
        if df.empty:
            raise CodetransferError(f"pos_label: {pos_label!r} not in the table for site {site!r}")
    if df["head"].isna().all():
        raise CodetransferError(f"site: {site!r} has no heads; use plot_layer_pos")
    return df.pivot_table(index="layer", columns="head", values="value", aggfunc="mean")


def _heat(grid: pd.DataFrame, ax, title: str, vmax: float | None = None, cmap="RdBu_r", label="value"):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(
            figsize=(max(4, 0.35 * grid.shape[1] + 2), max(2.5, 0.4 * grid.shape[0] + 1.5)), layout="constrained"
        )
    values = grid.to_numpy(dtype=float)
    if vmax is None:
        finite = values[np.isfinite(values)]
        vmax = float(np.abs(finite).max()) if finite.size else 1.0
        vmax = vmax or 1.0
    im = ax.imshow(values, aspect="auto", cmap=cmap, vmin=-vmax, vmax=vmax, origin="lower")
    ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index])
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], rotation=90 if grid.shape[1] > 8 else 0)
    ax.set_ylabel("layer")
    ax.set_xlabel(str(grid.columns.name or ""))
    ax.set_title(title)
    ax.figure.colorbar(im, ax=ax, label=label)
    return ax


def plot_layer_pos(table: pd.DataFrame, site: str | None = None, metric: str | None = None, ax=None, **filters):
    """Layer x position heatmap of one site (heads summed for head sites). Returns the Axes."""
    grid = layer_pos_grid(table, site, metric, **filters)
    return _heat(grid, ax, f"{site or table['site'].iloc[0]}: layer x position")


def plot_layer_head(
    table: pd.DataFrame, site: str = "head_out", metric: str | None = None, pos_label: str | None = "all", ax=None, **filters
):
    """Layer x head heatmap of a head site at one position label ('all', an index or a span key)."""
    grid = layer_head_grid(table, site, metric, pos_label, **filters)
    return _heat(grid, ax, f"{site} at {pos_label}: layer x head")


def _grid(table, kind, site, metric, pos_label, filters):
    if kind == "layer_pos":
        return layer_pos_grid(table, site, metric, **filters)
    if kind == "layer_head":
        return layer_head_grid(table, site or "head_out", metric, pos_label, **filters)
    raise CodetransferError(f"kind: expected 'layer_pos' or 'layer_head', got {kind!r}")


def plot_side_by_side(
    table: pd.DataFrame,
    by: str = "recipe",
    kind: str = "layer_pos",
    site: str | None = None,
    metric: str | None = None,
    pos_label: str | None = "all",
    values: Sequence | None = None,
    ax=None,
    **filters,
):
    """One heatmap per value of column ``by`` (e.g. per recipe) on one colour scale.

    ``ax`` is a sequence of Axes (one per value) or None. Returns the array of Axes.
    """
    import matplotlib.pyplot as plt

    if by not in table.columns:
        raise CodetransferError(f"by: {by!r} is not a column of the table (have {list(table.columns)})")
    values = list(dict.fromkeys(table[by].dropna())) if values is None else list(values)
    if not values:
        raise CodetransferError(f"by: column {by!r} holds no values to split on")
    grids = [_grid(table, kind, site, metric, pos_label, {**filters, by: v}) for v in values]
    vmax = max(float(np.nanmax(np.abs(g.to_numpy(dtype=float)))) for g in grids) or 1.0
    if ax is None:
        _, ax = plt.subplots(1, len(values), figsize=(4.5 * len(values), 3.5), squeeze=False, layout="constrained")
        ax = ax[0]
    if len(ax) != len(values):
        raise CodetransferError(f"ax: expected {len(values)} Axes (one per {by}), got {len(ax)}")
    for a, v, g in zip(ax, values, grids):
        _heat(g, a, f"{by}={v}", vmax=vmax)
    return np.asarray(ax)


def plot_difference(
    table: pd.DataFrame,
    a,
    b,
    by: str = "recipe",
    kind: str = "layer_pos",
    site: str | None = None,
    metric: str | None = None,
    pos_label: str | None = "all",
    ax=None,
    **filters,
):
    """Heatmap of ``map(by == a) - map(by == b)`` (cells present in both). Returns the Axes."""
    if by not in table.columns:
        raise CodetransferError(f"by: {by!r} is not a column of the table (have {list(table.columns)})")
    ga = _grid(table, kind, site, metric, pos_label, {**filters, by: a})
    gb = _grid(table, kind, site, metric, pos_label, {**filters, by: b})
    diff = ga.sub(gb).dropna(how="all").dropna(axis=1, how="all")
    if diff.empty:
        raise CodetransferError(f"{by}: maps for {a!r} and {b!r} share no cells")
    return _heat(diff, ax, f"{a} - {b}", label="difference")
