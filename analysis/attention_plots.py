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

from codetransfer.analysis import style as S
from codetransfer.errors import CodetransferError, did_you_mean


def _axes(ax, figsize=(5, 3.5)):
    return S.new_axes(figsize) if ax is None else ax


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
            raise CodetransferError(
                f"{col}: '{val}' has no rows for metric '{metric}'{did_you_mean(str(val), map(str, have))}; available: {have}"
            )
        t = t[t[col] == val]
    return t


def _grid(t: pd.DataFrame) -> pd.DataFrame:
    """layer x head matrix of the mean value (over runs, tasks, renderings left in ``t``)."""
    return t.pivot_table(index="layer", columns="head", values="value", aggfunc="mean").sort_index()


def _group_grids(table: pd.DataFrame, metric: str, **where) -> list[pd.DataFrame]:
    """The layer x head grid of every recipe (or run) of ``metric`` under ``where`` (one colour scale)."""
    t = _select(table, metric, **where)
    key = "recipe" if "recipe" in t.columns else ("run" if "run" in t.columns else None)
    if key is None:
        return [_grid(t)]
    return [_grid(g) for _, g in t.groupby(key, sort=True)]


def plot_head_scores(
    table: pd.DataFrame,
    metric: str,
    ax=None,
    *,
    recipe: str | None = None,
    run: str | None = None,
    task: str | None = None,
    rendering: str | None = None,
    limits: tuple[float, float] | None = None,
):
    """Layer x head heatmap of ``metric`` (mean over the runs left after the filters), layer 0 at the bottom.

    The colour limits are those of the metric over the *whole* table (every recipe and run under the
    same task / rendering filters), so the panels of several recipes drawn from one table share a
    scale; ``limits`` overrides them. The colour map is the metric's (:mod:`.style`), not the data's."""
    t = _select(table, metric, recipe=recipe, run=run, task=task, rendering=rendering)
    style = S.metric_style(metric, table.loc[table["metric"] == metric, "value"])
    if limits is None:
        limits = S.shared_limits(
            np.concatenate(
                [g.to_numpy(float).ravel() for g in _group_grids(table, metric, task=task, rendering=rendering)]
            ),
            style,
        )
    label = " ".join(str(v) for v in (recipe, run, task, rendering) if v)
    return S.heatmap(
        _axes(ax), _grid(t), style=style, limits=limits, title=label or style.label.split(" (")[0], xlabel="head"
    )


def plot_head_score_difference(
    table: pd.DataFrame,
    a: str,
    b: str,
    metric: str,
    ax=None,
    *,
    by: str = "recipe",
    task: str | None = None,
    rendering: str | None = None,
    limits: tuple[float, float] | None = None,
):
    """Layer x head heatmap of ``metric`` in ``a`` minus in ``b`` (``by`` = 'recipe' or 'run').

    Diverging scale symmetric around 0 whose half-range is the metric's own largest magnitude in the
    table (a difference is drawn on the scale of the scores it compares, so a small difference looks
    small). Where the table has intervals, cells whose difference lies within the two intervals'
    combined half-width (``sqrt(h_a^2 + h_b^2)``, a normal approximation) are marked with a dot.
    Refuses groups of different shapes (a comparison needs one grid).
    """
    if by not in ("recipe", "run"):
        raise CodetransferError(f"by: expected 'recipe' or 'run', got '{by}'")
    ta = _select(table, metric, **{by: a}, task=task, rendering=rendering)
    tb = _select(table, metric, **{by: b}, task=task, rendering=rendering)
    ga, gb = _grid(ta), _grid(tb)
    if ga.shape != gb.shape:
        raise CodetransferError(
            f"{by}s '{a}' and '{b}' have {ga.shape[0]}x{ga.shape[1]} and {gb.shape[0]}x{gb.shape[1]} heads; "
            "compare runs of the same model shape"
        )
    diff = ga - gb
    style = S.metric_style(metric, table.loc[table["metric"] == metric, "value"])
    signed = S.MetricStyle(style.label, True, "RdBu_r", None)
    if limits is None:
        scale = np.concatenate(
            [g.to_numpy(float).ravel() for g in _group_grids(table, metric, task=task, rendering=rendering)]
            + [diff.to_numpy(float).ravel()]
        )
        limits = S.shared_limits(scale, signed)
    mask = None
    if {"ci_low", "ci_high"} <= set(table.columns):

        def half(t):
            h = (t["ci_high"] - t["ci_low"]) / 2
            return (
                t.assign(value=h)
                .pivot_table(index="layer", columns="head", values="value", aggfunc="mean")
                .sort_index()
            )

        ha, hb = half(ta), half(tb)
        if ha.notna().to_numpy().any():
            mask = (diff.abs() <= np.sqrt(ha**2 + hb**2)).to_numpy()
    return S.heatmap(
        _axes(ax),
        diff,
        style=signed,
        limits=limits,
        title=f"{a} minus {b}",
        xlabel="head",
        colorbar_label=S.difference_label(style, a, b),
        mask=mask,
        mask_label="within the intervals",
    )


def _x_of(t: pd.DataFrame) -> tuple[str, bool]:
    """The time column of an over-training table: ``tokens`` when present (drawn in millions), else ``step``."""
    return ("tokens", True) if "tokens" in t.columns and t["tokens"].notna().all() else ("step", False)


def plot_score_over_training(
    table: pd.DataFrame,
    metric: str,
    ax=None,
    *,
    heads: Sequence[tuple[int, int]] | None = None,
    top: int = 4,
    task: str | None = None,
    rendering: str | None = None,
    phases=None,
):
    """``metric`` against training tokens (``tokens`` column, else ``step``) for chosen heads (default:
    the ``top`` heads at the last step), with the interval as a band where the table has one and the
    recipes' phase boundaries (``phases``: see :func:`.style.phase_table`)."""
    if "step" not in table.columns:
        raise CodetransferError("table: no 'step' column; make it with score_checkpoints")
    t = _select(table, metric, task=task, rendering=rendering)
    xcol, is_tokens = _x_of(t)
    keys = list(dict.fromkeys(["step", xcol, "layer", "head"]))
    t = t.groupby(keys, as_index=False)[[c for c in ("value", "ci_low", "ci_high") if c in t]].mean()
    if heads is None:
        last = t[t["step"] == t["step"].max()].nlargest(top, "value")
        heads = list(zip(last["layer"], last["head"]))
    ax = _axes(ax)
    for k, (layer, head) in enumerate(heads):
        h = t[(t["layer"] == layer) & (t["head"] == head)].sort_values(xcol)
        if h.empty:
            raise CodetransferError(f"heads: L{layer}H{head} is not in the table; check the layer and head numbers")
        S.line_with_band(
            ax,
            h[xcol],
            h["value"],
            h.get("ci_low"),
            h.get("ci_high"),
            label=f"layer {layer} head {head}",
            color=S.PALETTE[k % len(S.PALETTE)],
        )
    _time_axis(ax, is_tokens, phases, table.get("recipe"))
    ax.set_ylabel(S.metric_style(metric).label)
    S.legend_outside(ax, "head")
    return ax


def _time_axis(ax, is_tokens: bool, phases, recipes) -> None:
    if is_tokens:
        S.tokens_axis(ax)
        S.draw_phase_boundaries(ax, phases, None if recipes is None else sorted(set(recipes.dropna())))
    else:
        ax.set_xlabel("optimizer steps")


def uniform_guess_loss(vocab_size: int) -> float:
    """Cross-entropy (nats) of a uniform guess over ``vocab_size`` tokens: ``ln(vocab_size)``."""
    return float(np.log(vocab_size))


def plot_best_head_over_training(
    table: pd.DataFrame,
    metric: str,
    ax=None,
    *,
    by: str = "recipe",
    phases=None,
    vocab_size: int | None = None,
):
    """One line per recipe (``by``) against training tokens: the best head's ``metric`` score at each
    checkpoint (mean over seeds, then the largest over heads, with that head's interval), or for
    ``induction_loss`` (one value per run and checkpoint) the loss itself, with the uniform-guess level
    ``ln(vocab_size)`` marked when ``vocab_size`` is given. Phase boundaries from ``phases``."""
    if "step" not in table.columns:
        raise CodetransferError("table: no 'step' column; make it with score_checkpoints")
    t = _select(table, metric)
    if by not in t.columns:
        raise CodetransferError(f"by: '{by}' is not a column of the table (have {list(t.columns)})")
    xcol, is_tokens = _x_of(t)
    vals = [c for c in ("value", "ci_low", "ci_high") if c in t.columns]
    ax = _axes(ax)
    for name, g in t.groupby(by, sort=True):
        m = g.groupby([xcol, "layer", "head"], as_index=False)[vals].mean()
        best = m.loc[
            m.groupby(xcol)["value"].idxmin() if metric == "induction_loss" else m.groupby(xcol)["value"].idxmax()
        ]
        best = best.sort_values(xcol)
        S.line_with_band(
            ax,
            best[xcol],
            best["value"],
            best.get("ci_low"),
            best.get("ci_high"),
            label=str(name),
            color=S.recipe_color(name),
        )
    if metric == "induction_loss" and vocab_size:
        S.reference_line(
            ax,
            uniform_guess_loss(vocab_size),
            f"uniform guess over {vocab_size} tokens (ln {vocab_size} = {uniform_guess_loss(vocab_size):.2f})",
        )
    _time_axis(ax, is_tokens, phases, t[by] if by == "recipe" else None)
    style = S.metric_style(metric)
    ax.set_ylabel(style.label if metric == "induction_loss" else f"best head: {style.label}", fontsize="small")
    S.legend_outside(ax, by)
    return ax


def plot_attention_pattern(
    pattern,
    tokens: Sequence[str],
    ax=None,
    *,
    layer: int | None = None,
    head: int | None = None,
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
    im = ax.imshow(p, cmap="Blues", vmin=0, vmax=1)
    ax.figure.colorbar(im, ax=ax, label="attention weight (query row sums to 1)")
    labels = [repr(t)[1:-1] for t in tokens]
    ax.set_xticks(range(len(tokens)), labels, rotation=90, fontsize="x-small")
    ax.set_yticks(range(len(tokens)), labels, fontsize="x-small")
    ax.set_xlabel("key token (attended to)")
    ax.set_ylabel("query token (attending)")
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
            raise CodetransferError(
                f"layer: a [layer, head, q, k] pattern needs layer= in 0..{p.shape[0] - 1}, got {layer}"
            )
        p = p[layer]
    if p.ndim != 3 or p.shape[1] != p.shape[2] or p.shape[1] != len(tokens):
        raise CodetransferError(
            f"patterns: expected [head, {len(tokens)}, {len(tokens)}] for {len(tokens)} tokens, got {tuple(p.shape)}"
        )
    return cv.attention.attention_heads(tokens=[str(t) for t in tokens], attention=p)
