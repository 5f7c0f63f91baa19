"""Plots of attention-head tables (see :mod:`codetransfer.analysis.attention`).

Every ``plot_*`` takes a tidy table (columns ``layer, head, metric, value`` and, where they apply,
``run, recipe, seed, task, rendering, step``) and an optional matplotlib ``ax``, and returns the Axes.
A grid of several recipes is averaged over the runs (seeds) of each recipe. The interactive view in
notebooks is CircuitsVis (optional); these are the static figures for reports.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from codetransfer.errors import CodetransferError, did_you_mean


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5, 3.5))
    return ax


def _select(table: pd.DataFrame, metric: str, **where) -> pd.DataFrame:
    need = {"layer", "head", "metric", "value"}
    if not need <= set(table.columns):
        raise CodetransferError(f"table: expected columns {sorted(need)}, missing {sorted(need - set(table.columns))}")
    if metric not in set(table["metric"]):
        raise CodetransferError(
            f"metric: '{metric}' is not in the table{did_you_mean(metric, set(table['metric']))}; "
            f"available: {sorted(set(table['metric']))}"
        )
    t = table[table["metric"] == metric]
    for col, val in where.items():
        if val is None:
            continue
        if col not in t.columns or val not in set(t[col]):
            have = sorted(set(t[col])) if col in t.columns else []
            raise CodetransferError(f"{col}: '{val}' has no rows for metric '{metric}'{did_you_mean(str(val), map(str, have))}; available: {have}")
        t = t[t[col] == val]
    return t


def _grid(t: pd.DataFrame) -> pd.DataFrame:
    """layer x head matrix of the mean value (over runs, tasks, renderings left in ``t``)."""
    return t.pivot_table(index="layer", columns="head", values="value", aggfunc="mean").sort_index()


def _heatmap(ax, grid: pd.DataFrame, title: str, cmap: str, center: bool):
    vals = grid.values.astype(float)
    kw = {}
    if center:
        lim = np.nanmax(np.abs(vals)) or 1.0
        kw = dict(vmin=-lim, vmax=lim)
    im = ax.imshow(vals, cmap=cmap, aspect="auto", **kw)
    ax.set_xticks(range(grid.shape[1]), [str(h) for h in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [str(layer) for layer in grid.index])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    ax.figure.colorbar(im, ax=ax)
    return ax


def plot_head_scores(
    table: pd.DataFrame, metric: str, ax=None, *, recipe: str | None = None, run: str | None = None,
    task: str | None = None, rendering: str | None = None,
):
    """Layer x head heatmap of ``metric`` (mean over the runs left after the filters)."""
    t = _select(table, metric, recipe=recipe, run=run, task=task, rendering=rendering)
    label = " ".join(str(v) for v in (recipe, run, task, rendering) if v)
    signed = bool((t["value"] < 0).any())
    return _heatmap(_axes(ax), _grid(t), f"{metric} {label}".strip(), "RdBu_r" if signed else "viridis", signed)


def plot_head_score_difference(
    table: pd.DataFrame, a: str, b: str, metric: str, ax=None, *, by: str = "recipe",
    task: str | None = None, rendering: str | None = None,
):
    """Layer x head heatmap of ``metric`` in ``a`` minus in ``b`` (``by`` = 'recipe' or 'run').

    Refuses groups of different shapes (a comparison needs one grid).
    """
    if by not in ("recipe", "run"):
        raise CodetransferError(f"by: expected 'recipe' or 'run', got '{by}'")
    ga = _grid(_select(table, metric, **{by: a}, task=task, rendering=rendering))
    gb = _grid(_select(table, metric, **{by: b}, task=task, rendering=rendering))
    if ga.shape != gb.shape:
        raise CodetransferError(
            f"{by}s '{a}' and '{b}' have {ga.shape[0]}x{ga.shape[1]} and {gb.shape[0]}x{gb.shape[1]} heads; "
            "compare runs of the same model shape"
        )
    return _heatmap(_axes(ax), ga - gb, f"{metric}: {a} - {b}", "RdBu_r", True)


def plot_score_over_training(
    table: pd.DataFrame, metric: str, ax=None, *, heads: Sequence[tuple[int, int]] | None = None, top: int = 4,
    task: str | None = None, rendering: str | None = None,
):
    """``metric`` against ``step`` for chosen heads (default: the ``top`` heads at the last step),
    with the interval as a band where the table has one."""
    if "step" not in table.columns:
        raise CodetransferError("table: no 'step' column; make it with score_checkpoints")
    t = _select(table, metric, task=task, rendering=rendering)
    t = t.groupby(["step", "layer", "head"], as_index=False)[[c for c in ("value", "ci_low", "ci_high") if c in t]].mean()
    if heads is None:
        last = t[t["step"] == t["step"].max()].nlargest(top, "value")
        heads = list(zip(last["layer"], last["head"]))
    ax = _axes(ax)
    for layer, head in heads:
        h = t[(t["layer"] == layer) & (t["head"] == head)].sort_values("step")
        if h.empty:
            raise CodetransferError(f"heads: L{layer}H{head} is not in the table; check the layer and head numbers")
        ax.plot(h["step"], h["value"], marker="o", label=f"L{layer}H{head}")
        if {"ci_low", "ci_high"} <= set(h.columns) and h["ci_low"].notna().any():
            ax.fill_between(h["step"], h["ci_low"], h["ci_high"], alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    return ax


def plot_attention_pattern(
    pattern, tokens: Sequence[str], ax=None, *, layer: int | None = None, head: int | None = None,
):
    """One head's attention pattern (query rows x key columns) with the tokens as tick labels.

    ``pattern``: a (q, k) array, or a ``[layer, head, q, k]`` / ``[layer, batch=1, head, q, k]`` tensor
    (e.g. from :func:`codetransfer.analysis.attention.attention_patterns`) with ``layer`` and ``head``.
    For one prompt: ``plot_attention_pattern(*prompt_attention(bridge, tok, prompt, layer, head))``.
    """
    p = pattern.detach().cpu().numpy() if hasattr(pattern, "detach") else np.asarray(pattern)
    if p.ndim == 5:
        if p.shape[1] != 1:
            raise CodetransferError(f"pattern: expected one sequence, got a batch of {p.shape[1]}; select one item")
        p = p[:, 0]
    if p.ndim == 4:
        if layer is None or head is None:
            raise CodetransferError("layer/head: a [layer, head, q, k] pattern needs layer= and head=")
        if not (0 <= layer < p.shape[0] and 0 <= head < p.shape[1]):
            raise CodetransferError(
                f"layer/head: expected layer 0..{p.shape[0] - 1} and head 0..{p.shape[1] - 1}, got L{layer}H{head}"
            )
        p = p[layer, head]
    if p.ndim != 2 or p.shape[0] != p.shape[1] or p.shape[0] != len(tokens):
        raise CodetransferError(
            f"pattern: expected a square ({len(tokens)}, {len(tokens)}) pattern for {len(tokens)} tokens, got {p.shape}"
        )
    ax = _axes(ax)
    ax.imshow(p, cmap="Blues", vmin=0, vmax=1)
    labels = [repr(t)[1:-1] for t in tokens]
    ax.set_xticks(range(len(tokens)), labels, rotation=90, fontsize="x-small")
    ax.set_yticks(range(len(tokens)), labels, fontsize="x-small")
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if layer is not None and head is not None:
        ax.set_title(f"L{layer}H{head}")
    return ax


def attention_heads_view(patterns, tokens: Sequence[str], *, layer: int | None = None):
    """The interactive CircuitsVis view of every head of one layer (renders offline: the JavaScript is inline).

    ``patterns``: a ``[head, q, k]`` tensor, or ``[layer, head, q, k]`` / ``[layer, batch=1, head, q, k]``
    (from :func:`codetransfer.analysis.attention.attention_patterns`) with ``layer``. ``tokens``: the
    token strings of the sequence. Returns CircuitsVis' rendered HTML object; a notebook displays its
    ``_repr_html_()``, which inlines the JavaScript (``str()`` of it loads the script from a CDN instead).
    For one prompt: ``attention_heads_view(attention_patterns(bridge, ids), str_tokens, layer=1)``.
    Needs the ``circuitsvis`` package (``pip install 'codetransfer[notebooks]'``).
    """
    try:
        import circuitsvis as cv
    except ImportError:
        raise CodetransferError(
            "attention_heads_view: the circuitsvis package is not installed; pip install 'codetransfer[notebooks]'"
        ) from None
    import torch

    p = patterns.detach().float().cpu() if hasattr(patterns, "detach") else torch.as_tensor(np.asarray(patterns))
    if p.ndim == 5:
        if p.shape[1] != 1:
            raise CodetransferError(f"patterns: expected one sequence, got a batch of {p.shape[1]}; select one item")
        p = p[:, 0]
    if p.ndim == 4:
        if layer is None or not 0 <= layer < p.shape[0]:
            raise CodetransferError(f"layer: a [layer, head, q, k] pattern needs layer= in 0..{p.shape[0] - 1}, got {layer}")
        p = p[layer]
    if p.ndim != 3 or p.shape[1] != p.shape[2] or p.shape[1] != len(tokens):
        raise CodetransferError(
            f"patterns: expected [head, {len(tokens)}, {len(tokens)}] for {len(tokens)} tokens, got {tuple(p.shape)}"
        )
    return cv.attention.attention_heads(tokens=[str(t) for t in tokens], attention=p)
