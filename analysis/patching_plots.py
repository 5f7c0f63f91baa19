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

from codetransfer.analysis import style as S
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


def _xlabel(grid: pd.DataFrame) -> str:
    name = str(grid.columns.name or "")
    return {"pos_label": "position (token index or prompt span)", "head": "head"}.get(name, name.replace("_", " "))


def _heat(
    grid: pd.DataFrame, ax, title: str, metric: str, limits=None, label: str | None = None, mask=None, mask_label=None
):
    if ax is None:
        ax = S.new_axes((max(4.5, 0.35 * grid.shape[1] + 2.5), max(2.8, 0.4 * grid.shape[0] + 1.8)))
    style = S.metric_style(metric)
    style = S.MetricStyle(style.label, True, "RdBu_r", style.bounds)  # patching effects are signed
    if limits is None:
        limits = S.shared_limits(grid.to_numpy(dtype=float), style)
    return S.heatmap(
        ax,
        grid,
        style=style,
        limits=limits,
        title=title,
        xlabel=_xlabel(grid),
        colorbar_label=label,
        mask=mask,
        mask_label=mask_label,
    )


def _metric(table, site, metric) -> str:
    return _select(table, site, metric, {})["metric"].iloc[0]


def _metric_limits(table, kind, site, metric, pos_label, filters, by: str | None = None) -> tuple[float, float]:
    """Symmetric limits of ``metric`` at ``site`` over every group of the table (recipes, runs): the scale
    that the maps and differences of one figure share."""
    key = by if by is not None else ("recipe" if "recipe" in table.columns else None)
    groups = [None] if key is None else list(dict.fromkeys(table[key].dropna()))
    vals = []
    for v in groups:
        f = dict(filters) if v is None else {**filters, key: v}
        try:
            vals.append(_grid(table, kind, site, metric, pos_label, f).to_numpy(dtype=float).ravel())
        except CodetransferError:
            continue
    style = S.MetricStyle("", True, "RdBu_r", None)
    return S.shared_limits(np.concatenate(vals) if vals else np.zeros(1), style)


def plot_layer_pos(table: pd.DataFrame, site: str | None = None, metric: str | None = None, ax=None, **filters):
    """Layer x position heatmap of one site (heads summed for head sites), layer 0 at the bottom, on the
    symmetric scale of the metric over the whole table (every recipe). Returns the Axes."""
    grid = layer_pos_grid(table, site, metric, **filters)
    m = _metric(table, site, metric)
    lim = _metric_limits(table, "layer_pos", site, metric, None, {k: v for k, v in filters.items() if k != "recipe"})
    return _heat(grid, ax, f"{site or table['site'].iloc[0]}: layer x position", m, lim)


def plot_layer_head(
    table: pd.DataFrame,
    site: str = "head_out",
    metric: str | None = None,
    pos_label: str | None = "all",
    ax=None,
    **filters,
):
    """Layer x head heatmap of a head site at one position label ('all', an index or a span key)."""
    grid = layer_head_grid(table, site, metric, pos_label, **filters)
    m = _metric(table, site, metric)
    lim = _metric_limits(
        table, "layer_head", site, metric, pos_label, {k: v for k, v in filters.items() if k != "recipe"}
    )
    return _heat(grid, ax, f"{site} at {pos_label}: layer x head", m, lim)


def _grid(table, kind, site, metric, pos_label, filters):
    if kind == "layer_pos":
        return layer_pos_grid(table, site, metric, **filters)
    if kind == "layer_head":
        return layer_head_grid(table, site or "head_out", metric, pos_label, **filters)
    raise CodetransferError(f"kind: expected 'layer_pos' or 'layer_head', got {kind!r}")


def _half_width_grid(table, kind, site, metric, pos_label, filters) -> pd.DataFrame | None:
    if not {"ci_low", "ci_high"} <= set(table.columns) or table["ci_low"].isna().all():
        return None
    t = table.assign(value=(table["ci_high"] - table["ci_low"]) / 2)
    try:
        return _grid(t, kind, site, metric, pos_label, filters)
    except CodetransferError:
        return None


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
    """One heatmap per value of column ``by`` (e.g. per recipe) on one symmetric colour scale.

    ``ax`` is a sequence of Axes (one per value) or None. Returns the array of Axes.
    """
    import matplotlib.pyplot as plt

    if by not in table.columns:
        raise CodetransferError(f"by: {by!r} is not a column of the table (have {list(table.columns)})")
    values = list(dict.fromkeys(table[by].dropna())) if values is None else list(values)
    if not values:
        raise CodetransferError(f"by: column {by!r} holds no values to split on")
    grids = [_grid(table, kind, site, metric, pos_label, {**filters, by: v}) for v in values]
    lim = _metric_limits(table, kind, site, metric, pos_label, filters, by=by)
    if ax is None:
        _, ax = plt.subplots(1, len(values), figsize=(4.6 * len(values), 3.6), squeeze=False, layout="constrained")
        ax = ax[0]
    if len(ax) != len(values):
        raise CodetransferError(f"ax: expected {len(values)} Axes (one per {by}), got {len(ax)}")
    m = _metric(table, site, metric)
    for a, v, g in zip(ax, values, grids):
        _heat(g, a, f"{v}", m, lim)
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
    """Heatmap of ``map(by == a) - map(by == b)`` (cells present in both). Returns the Axes.

    Drawn on the scale of the maps it compares (the metric's symmetric limits over every group of
    the table), so a difference of 0.02 on a 0..1 effect looks small. Where the table has intervals,
    cells whose difference lies within the combined half-width of the two maps' intervals
    (``sqrt(h_a^2 + h_b^2)``) are marked with a dot: not distinguishable from 0.
    """
    if by not in table.columns:
        raise CodetransferError(f"by: {by!r} is not a column of the table (have {list(table.columns)})")
    ga = _grid(table, kind, site, metric, pos_label, {**filters, by: a})
    gb = _grid(table, kind, site, metric, pos_label, {**filters, by: b})
    diff = ga.sub(gb).dropna(how="all").dropna(axis=1, how="all")
    if diff.empty:
        raise CodetransferError(f"{by}: maps for {a!r} and {b!r} share no cells")
    lim = _metric_limits(table, kind, site, metric, pos_label, filters, by=by)
    m = max(abs(lim[0]), float(np.nanmax(np.abs(diff.to_numpy(dtype=float)))))
    ha = _half_width_grid(table, kind, site, metric, pos_label, {**filters, by: a})
    hb = _half_width_grid(table, kind, site, metric, pos_label, {**filters, by: b})
    mask = None
    if ha is not None and hb is not None:
        h = np.sqrt(ha.reindex_like(diff) ** 2 + hb.reindex_like(diff) ** 2)
        mask = (diff.abs() <= h).to_numpy()
    metric_name = _metric(table, site, metric)
    style = S.metric_style(metric_name)
    return _heat(
        diff,
        ax,
        f"{a} minus {b}",
        metric_name,
        (-m, m),
        label=S.difference_label(style, a, b),
        mask=mask,
        mask_label="within the intervals",
    )


def strongest_cell_over_training(
    table: pd.DataFrame, site: str = "head_out", metric: str = "denoising", pos_label: str = "all"
) -> pd.DataFrame:
    """Per run and step of a ``patching_over_training`` table: the cell (layer, head) with the largest
    ``metric`` value at ``site`` and ``pos_label``, with its interval. One row per (run, step): ``run, recipe,
    seed, step, layer, head, value, ci_low, ci_high``."""
    need = {"run", "recipe", "seed", "step", "site", "layer", "head", "pos_label", "metric", "value"}
    if not need <= set(table.columns):
        raise CodetransferError(
            f"table: expected a patching_over_training table, missing columns {sorted(need - set(table.columns))}"
        )
    t = table[(table["site"] == site) & (table["metric"] == metric) & (table["pos_label"].astype(str) == pos_label)]
    if t.empty:
        raise CodetransferError(f"table: no {metric!r} rows at site {site!r}, position {pos_label!r}")
    best = t.loc[t.groupby(["run", "step"])["value"].idxmax()]
    return best[["run", "recipe", "seed", "step", "layer", "head", "value", "ci_low", "ci_high"]].reset_index(drop=True)


def plot_strongest_cell_over_training(
    table: pd.DataFrame, site: str = "head_out", metric: str = "denoising", pos_label: str = "all", ax=None
):
    """The strongest cell's ``metric`` against the training step, one line per recipe (mean over its seeds;
    the band spans the seeds' values): does the component that carries the lookup appear, hold or fade?"""
    best = strongest_cell_over_training(table, site, metric, pos_label)
    ax = ax if ax is not None else S.new_axes()
    for recipe, g in best.groupby("recipe", sort=True):
        by_step = g.groupby("step")["value"]
        x = np.asarray(sorted(g["step"].unique()))
        S.line_with_band(
            ax, x, by_step.mean().loc[x], by_step.min().loc[x], by_step.max().loc[x], label=str(recipe),
            color=S.recipe_color(str(recipe)),
        )  # fmt: skip
    ax.set_xlabel("training step")
    ax.set_ylabel(f"strongest {site} cell: {metric}")
    S.legend_outside(ax, "recipe")
    return ax
