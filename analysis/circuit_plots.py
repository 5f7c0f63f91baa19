"""Plots of the circuit tables (see :mod:`codetransfer.analysis.circuit`).

Every ``plot_*`` takes one table (``circuit.parquet``, ``circuit_gap.parquet``, ``cka.parquet`` or
``circuit_over_training.parquet``) and an optional matplotlib ``ax``, and returns the Axes. Recipes keep their
fixed colours (:func:`codetransfer.analysis.style.recipe_color`); control heads and the seed null are grey.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from codetransfer.analysis import style as S
from codetransfer.errors import CodetransferError, did_you_mean


def _axes(ax, figsize=(5.5, 3.4)):
    return S.new_axes(figsize) if ax is None else ax


def _need(table: pd.DataFrame, columns: set[str], what: str) -> None:
    if table is None or not columns <= set(table.columns):
        have = set() if table is None else set(table.columns)
        raise CodetransferError(
            f"table: expected the {what} columns {sorted(columns)}, missing {sorted(columns - have)}"
        )


def _pick(table: pd.DataFrame, **where) -> pd.DataFrame:
    t = table
    for col, val in where.items():
        if val not in set(t[col]):
            raise CodetransferError(
                f"{col}: '{val}' is not in the table{did_you_mean(str(val), map(str, set(t[col])))}; "
                f"available: {sorted(map(str, set(t[col])))}"
            )
        t = t[t[col] == val]
    return t


def _pooled(table: pd.DataFrame) -> pd.DataFrame:
    """The rows over seeds (``run = '<recipe>*'``)."""
    return table[table["run"].astype(str).str.endswith("*")]


def _bars(ax, labels, chosen, control, ylabel: str) -> None:
    """Chosen heads (recipe colour) and control heads (grey) side by side, with intervals."""
    x = np.arange(len(labels))
    for off, rows, name in ((-0.18, chosen, "chosen heads"), (0.18, control, "control heads")):
        for i, r in enumerate(rows):
            if r is None:
                continue
            color = S.recipe_color(r["recipe"]) if name == "chosen heads" else S.RANDOM_INIT_COLOR
            if not np.isfinite(r["value"]):
                ax.text(x[i] + off, 0, "withheld", rotation=90, ha="center", va="bottom", fontsize="x-small")
                continue
            err = [[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]] if np.isfinite(r["ci_low"]) else None
            ax.bar(x[i] + off, r["value"], width=0.34, color=color, label=name if i == 0 else None)
            ax.errorbar(x[i] + off, r["value"], yerr=err, color="black", lw=1, capsize=2)
    ax.axhline(0, color=S.REFERENCE_COLOR, lw=0.8)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize="small")
    ax.set_ylabel(ylabel)


def plot_ablation_drop(table: pd.DataFrame, ax=None, *, method: str = "mean", metric: str = "accuracy"):
    """Per recipe (over its seeds): the drop of ``metric`` when its chosen heads are ablated by ``method``,
    next to the drop for as many random control heads (``circuit.parquet``)."""
    _need(table, {"run", "recipe", "heads_set", "method", "metric", "value", "ci_low", "ci_high"}, "circuit")
    t = _pooled(_pick(table, method=method, metric=metric))
    if t.empty:
        raise CodetransferError("table: no rows over seeds (run '<recipe>*'); make it with circuit_tables")
    ax = _axes(ax)
    recipes = sorted(t["recipe"].unique())
    rows = {(r.recipe, r.heads_set): r._asdict() for r in t.itertuples(index=False)}
    _bars(
        ax,
        recipes,
        [rows.get((r, "chosen")) for r in recipes],
        [rows.get((r, "control")) for r in recipes],
        f"{metric} drop ({method} ablation)",
    )
    ax.set_title(f"Ablating the lookup heads: {metric} drop", fontsize="medium")
    S.legend_outside(ax)
    return ax


def plot_gap_share(table: pd.DataFrame, ax=None, *, method: str = "mean", metric: str = "logit_diff"):
    """Per recipe and reference (over seeds): the share of the gap that ablating the recipe's chosen heads
    removes, next to the share for control heads; a withheld share (the gap's interval includes 0) is written
    as such (``circuit_gap.parquet``)."""
    _need(table, {"run", "recipe", "reference", "comparison", "heads_set", "method", "metric", "value"}, "circuit_gap")
    t = _pooled(_pick(table, method=method, metric=metric))
    if t.empty:
        raise CodetransferError("table: no rows over seeds (run '<recipe>*'); make it with circuit_tables")
    ax = _axes(ax, (6.0, 3.4))
    pairs = sorted({(r.recipe, r.reference, r.comparison) for r in t.itertuples(index=False)}, key=lambda p: (p[2], p))
    rows = {(r.recipe, r.reference, r.comparison, r.heads_set): r._asdict() for r in t.itertuples(index=False)}
    _bars(
        ax,
        [f"{a} vs {b}" if c != "seed_null" else f"{a} seeds (null)" for a, b, c in pairs],
        [rows.get((*p, "chosen")) for p in pairs],
        [rows.get((*p, "control")) for p in pairs],
        f"share of the gap removed ({method})",
    )
    S.reference_line(ax, 1.0, "whole gap", ls=":")
    lo, hi = ax.get_ylim()
    ax.set_ylim(min(lo, -0.1), max(hi, 1.25))  # room for the 'whole gap' line and the 'withheld' notes
    ax.set_title(f"Share of the recipe gap ({metric}) the heads carry", fontsize="medium")
    S.legend_outside(ax)
    return ax


def plot_cka(table: pd.DataFrame, ax=None):
    """Linear CKA per layer: each recipe against the baseline (mean over seeds, recipe colour) and the
    seed-vs-seed null (grey, dashed) (``cka.parquet``)."""
    _need(table, {"recipe_a", "comparison", "layer", "value"}, "cka")
    if table.empty:
        raise CodetransferError("table: no CKA rows")
    ax = _axes(ax)
    cross = table[table["comparison"] == "baseline"]
    for recipe, g in cross.groupby("recipe_a", sort=True):
        m = g.groupby("layer")["value"].agg(["mean", "min", "max"])
        S.line_with_band(ax, m.index, m["mean"], m["min"], m["max"], label=recipe, color=S.recipe_color(recipe))
    null = table[table["comparison"] == "seed_null"]
    if not null.empty:
        m = null.groupby("layer")["value"].agg(["mean", "min", "max"])
        S.line_with_band(
            ax, m.index, m["mean"], m["min"], m["max"], label="seed vs seed (null)", color=S.REFERENCE_COLOR, ls="--"
        )
    ax.set_xlabel("layer (residual stream after the block)")
    ax.set_ylabel("linear CKA")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(sorted(table["layer"].unique()))
    ax.set_title("Representation similarity to the baseline", fontsize="medium")
    S.legend_outside(ax)
    return ax


def plot_heads_over_training(table: pd.DataFrame, ax=None, *, metric: str = "induction"):
    """The ``metric`` of the heads chosen at the end of training at every saved checkpoint, per recipe (recipe
    colour) for its chosen heads and, dotted, its control heads (``circuit_over_training.parquet``). A recipe
    with rows over seeds (``run = '<recipe>*'``, 3 or more seeds) is drawn from them: the mean over seeds with
    the seed-level interval as a band; else the mean over its runs' heads, without a band."""
    _need(table, {"run", "recipe", "step", "heads_set", "metric", "value"}, "circuit_over_training")
    t = _pick(table, metric=metric)
    pooled = t["run"].astype(str).str.endswith("*")
    ax = _axes(ax)
    for (recipe, heads_set), g in t.groupby(["recipe", "heads_set"], sort=True):
        over_seeds = g[pooled.loc[g.index]]
        label = f"{recipe}" if heads_set == "chosen" else f"{recipe} (control heads)"
        style = dict(label=label, color=S.recipe_color(recipe), ls="-" if heads_set == "chosen" else ":")
        if not over_seeds.empty:
            m = over_seeds.sort_values("step")
            low = m["ci_low"] if "ci_low" in m.columns else None
            high = m["ci_high"] if "ci_high" in m.columns else None
            S.line_with_band(ax, m["step"], m["value"], low, high, **style)
            continue
        m = g[~pooled.loc[g.index]].groupby("step")["value"].mean()
        S.line_with_band(ax, m.index, m.values, **style)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{metric} score")
    ax.set_title("The final lookup heads over training", fontsize="medium")
    S.legend_outside(ax)
    return ax
