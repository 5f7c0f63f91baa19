"""One plotting style for every figure of the project (reports, notebooks, papers).

What it fixes, so that figures can be compared by eye:

* **Colours of recipes** (:func:`recipe_color`): a deterministic mapping. The shipped recipes have
  fixed slots of a colour-blind-safe qualitative palette (Okabe-Ito, then Tableau); any other name
  is hashed (SHA-256, not Python's salted ``hash``) into the remaining slots, so a recipe has the same
  colour in every figure, process and machine. A random-init twin ``"<recipe> (random init)"`` is
  drawn in grey (:data:`RANDOM_INIT_COLOR`).
* **Colour maps per metric** (:func:`metric_style`): each metric has one colour map and one
  label in words with its unit. Signed quantities (patching effects, differences, ablation changes)
  use a diverging map with limits symmetric around 0; unsigned ones a sequential map from 0.
  Limits come from the *whole* table of a metric (:func:`shared_limits`), never from one panel,
  so the panels of a figure share a scale.
* **Layer orientation**: layer 0 at the bottom of every layer x something heatmap
  (:func:`heatmap`, ``origin="lower"``).
* **Training time** in tokens, in millions (:func:`tokens_axis`), with the phase boundaries of
  the recipes drawn (:func:`phase_table`, :func:`draw_phase_boundaries`).
* **Reference lines** (chance, copy baseline, uniform guess) carry their name on the line
  (:func:`reference_line`); legends sit outside the data (:func:`legend_outside`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Okabe-Ito (colour-blind safe; a dark purple in place of its yellow, which lines on white hide) followed by
#: the Tableau-10 colours not too close to them.
PALETTE = (
    "#0072b2",
    "#e69f00",
    "#009e73",
    "#cc79a7",
    "#d55e00",
    "#56b4e9",
    "#6a3d9a",
    "#000000",
    "#8c564b",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#9467bd",
    "#e377c2",
    "#a6761d",
    "#393b79",
    "#b15928",
    "#66a61e",
    "#ad494a",
)

#: The shipped grids' recipes (trained/presets.py), in their fixed palette slots.
KNOWN_RECIPES = (
    "text-only",
    "text-diluted",
    "text+stdlib",
    "balanced->text",
    "text+programs",
    "balanced",
    "code->text",
    "balanced->text+cooldown-code",
    "balanced->text+cooldown-text",
    "code-25",
    "code-75",
    "code-90",
    "code-100",
    "additive-50",
    "scrambled",
    "copy",
    "code-only",
    "kept",
    "erased",
)

RANDOM_INIT_SUFFIX = " (random init)"
RANDOM_INIT_COLOR = "#999999"
REFERENCE_COLOR = "#444444"


def recipe_color(name: str) -> str:
    """The colour of a recipe (or any model group), the same in every figure.

    Known recipes take fixed slots; other names are hashed into the slots the known ones leave free
    (wrapping round the whole palette when there are more names than slots)."""
    name = str(name)
    if name.endswith(RANDOM_INIT_SUFFIX):
        return RANDOM_INIT_COLOR
    if name.endswith("*"):  # the seed-aggregated rows of a recipe
        name = name[:-1]
    if name in KNOWN_RECIPES:
        return PALETTE[KNOWN_RECIPES.index(name) % len(PALETTE)]
    h = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    free = PALETTE[len(KNOWN_RECIPES) :] or PALETTE
    return free[h % len(free)]


@dataclass(frozen=True)
class MetricStyle:
    """How one metric is drawn."""

    label: str
    """The quantity in words, with its unit (axis and colourbar label)."""
    signed: bool
    """True: values of either sign, drawn on a diverging map with limits symmetric around 0."""
    cmap: str
    """Matplotlib colour map name."""
    bounds: tuple[float, float] | None = None
    """Natural range of the metric, e.g. (0, 1) for an attention share: limits never leave it."""


_ATTN = "viridis"
_DIV = "RdBu_r"

METRICS: dict[str, MetricStyle] = {
    "induction": MetricStyle("induction score (attention share)", False, _ATTN, (0, 1)),
    "previous_token": MetricStyle("previous-token score (attention share)", False, _ATTN, (0, 1)),
    "duplicate_token": MetricStyle("duplicate-token score (attention share)", False, _ATTN, (0, 1)),
    "attn_to_answer_source": MetricStyle("attention share on answer source", False, _ATTN, (0, 1)),
    "attn_to_query": MetricStyle("attention share on the query", False, _ATTN, (0, 1)),
    "attn_to_distractors": MetricStyle("attention share on distractors", False, _ATTN, (0, 1)),
    "attn_answer_minus_distractors": MetricStyle("attention share: answer − distractors", True, _DIV, (-1, 1)),
    "bos": MetricStyle("attention share on BOS", False, _ATTN, (0, 1)),
    "entropy": MetricStyle("attention entropy (nats)", False, "magma", None),
    "induction_loss": MetricStyle("induction loss (nats/token)", False, "magma", None),
    "denoising": MetricStyle("share restored (0 corrupt, 1 clean)", True, _DIV, None),
    "noising": MetricStyle("share destroyed (0 none, 1 all)", True, _DIV, None),
    "cross_model": MetricStyle("share of the advantage carried", True, _DIV, None),
    "cross_rendering": MetricStyle("share restored from code rendering", True, _DIV, None),
    "within_rendering": MetricStyle("share restored from text rendering", True, _DIV, None),
    "logit_diff": MetricStyle("logit difference (nats)", True, _DIV, None),
    "accuracy": MetricStyle("accuracy (share correct)", False, _ATTN, (0, 1)),
    "selectivity": MetricStyle("selectivity (probe − control acc.)", True, _DIV, (-1, 1)),
    "loss": MetricStyle("loss (nats/token)", False, "magma", None),
}
"""Labels are short (they must fit beside a colourbar); the figures' captions say more."""


def metric_style(metric: str, values: Iterable[float] | None = None) -> MetricStyle:
    """The style of ``metric``. Ablation metrics (``ablation_*``: a change) and ``dla`` are signed.
    An unknown metric is labelled by its name in words; it is signed when any of ``values`` (pass the
    metric's whole table, not one panel) is negative."""
    if metric in METRICS:
        return METRICS[metric]
    words = metric.replace("_", " ")
    if metric.startswith("ablation_"):
        return MetricStyle(f"change of {words.split(' ', 2)[-1]} on ablation", True, _DIV, None)
    if metric.startswith("dla") or metric.endswith("_dla"):
        return MetricStyle("direct logit attribution (logits)", True, _DIV, None)
    arr = np.asarray(list(values) if values is not None else [], dtype=float)
    signed = bool(np.any(arr[np.isfinite(arr)] < 0)) if arr.size else False
    return MetricStyle(words, signed, _DIV if signed else _ATTN, None)


def difference_label(style: MetricStyle, a: str, b: str) -> str:
    """Colourbar label of a difference map: the quantity and the direction."""
    return f"difference in {style.label.split(' (')[0]}\n({a} minus {b})"


def shared_limits(values: Iterable[float] | np.ndarray, style: MetricStyle) -> tuple[float, float]:
    """Colour limits for every panel of a figure of one metric: symmetric ``(-m, m)`` with ``m`` the
    largest absolute finite value for a signed metric, ``(0, max)`` for an unsigned one (or
    ``(min, max)`` when values are all far from 0, e.g. a loss), clipped to the metric's bounds."""
    arr = np.asarray(values, dtype=float).ravel()
    arr = arr[np.isfinite(arr)]
    if style.signed:
        m = float(np.abs(arr).max()) if arr.size else 1.0
        m = m or 1.0
        if style.bounds is not None:
            m = min(m, max(abs(style.bounds[0]), abs(style.bounds[1])))
        return -m, m
    lo = float(arr.min()) if arr.size else 0.0
    hi = float(arr.max()) if arr.size else 1.0
    lo = 0.0 if lo >= 0 and (style.bounds is not None or lo < 0.5 * hi) else lo
    if hi <= lo:
        hi = lo + 1.0
    if style.bounds is not None:
        lo, hi = max(lo, style.bounds[0]), min(hi, style.bounds[1])
    return lo, hi


def new_axes(figsize=(5.5, 3.6)):
    """A new figure with constrained layout and its one Axes."""
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def heatmap(
    ax,
    grid: pd.DataFrame,
    *,
    style: MetricStyle,
    limits: tuple[float, float],
    title: str,
    xlabel: str,
    colorbar_label: str | None = None,
    mask: np.ndarray | None = None,
    mask_label: str | None = None,
):
    """A layer (rows, layer 0 at the bottom) x something heatmap with a labelled colourbar.

    ``mask``: cells (same shape as ``grid``) to mark with a dot, e.g. those whose interval includes
    0; ``mask_label`` says what the dot means (written under the axes)."""
    values = grid.to_numpy(dtype=float)
    im = ax.imshow(
        values, aspect="auto", cmap=style.cmap, vmin=limits[0], vmax=limits[1], origin="lower", interpolation="nearest"
    )
    ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index])
    cols = [str(c) for c in grid.columns]
    ax.set_xticks(
        range(grid.shape[1]),
        cols,
        rotation=90 if len(cols) > 8 or max(map(len, cols), default=0) > 4 else 0,
        fontsize="small" if len(cols) > 8 else None,
    )
    ax.set_ylabel("layer")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize="medium")
    cb = ax.figure.colorbar(im, ax=ax, label=colorbar_label or style.label, shrink=0.95)
    cb.ax.yaxis.label.set_fontsize("small")
    if mask is not None and np.any(mask):
        ys, xs = np.nonzero(mask)
        ax.scatter(xs, ys, marker="o", s=6, color="#666666", label=mask_label or "marked")
        if mask_label:
            ax.set_title(f"{title}\n(dots: {mask_label})", fontsize="medium")
    return ax


def tokens_axis(ax, axis: str = "x") -> None:
    """Label training tokens in millions ("training tokens (millions)")."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: f"{v / 1e6:g}")
    (ax.xaxis if axis == "x" else ax.yaxis).set_major_formatter(fmt)
    (ax.set_xlabel if axis == "x" else ax.set_ylabel)("training tokens (millions)")


def phase_table(source) -> pd.DataFrame:
    """Phase boundaries in training tokens: ``recipe, phase, start, end`` (one row per phase).

    ``source``: a grid (``GridConfig``: phases' nominal token budgets, rounded up to whole steps of
    ``batch_size x n_ctx`` as training does), a sequence of run infos / run records (their
    ``tokens_by_phase``: the tokens actually seen), or such a table already."""
    if isinstance(source, pd.DataFrame):
        need = {"recipe", "phase", "start", "end"}
        if not need <= set(source.columns):
            from codetransfer.errors import CodetransferError

            raise CodetransferError(f"phases: expected columns {sorted(need)}, got {list(source.columns)}")
        return source
    rows = []
    if hasattr(source, "recipes") and hasattr(source, "train"):
        per_step = source.train.batch_size * getattr(source.train, "grad_accum", 1) * source.model.n_ctx
        for r in source.recipes:
            x = 0
            for p in r.phases:
                n = max(1, math.ceil(p.tokens / per_step)) * per_step
                rows.append((r.name, p.name, x, x + n))
                x += n
    else:
        seen = set()
        for info in source:
            rec = info.record if hasattr(info, "record") else info
            if rec.get("recipe") in seen:
                continue
            seen.add(rec.get("recipe"))
            x = 0
            for p in rec.get("tokens_by_phase") or []:
                n = int(sum(p.get("tokens", {}).values()))
                rows.append((rec.get("recipe"), p.get("phase"), x, x + n))
                x += n
    return pd.DataFrame(rows, columns=["recipe", "phase", "start", "end"])


def draw_phase_boundaries(ax, phases, recipes: Sequence[str] | None = None) -> list[float]:
    """Vertical lines at the phase boundaries (the ends of all but the last phase) of ``recipes``.

    A boundary shared by several recipes is one grey line; one recipe's own boundary is drawn in its
    colour. Each line is named at the top ("code-init | text"). Returns the x positions drawn."""
    import matplotlib.transforms as mtransforms

    if phases is None:
        return []
    t = phase_table(phases)
    if recipes is not None:
        t = t[t["recipe"].isin([str(r).rstrip("*") for r in recipes])]
    marks: dict[float, list[tuple[str, str]]] = {}
    for recipe, g in t.groupby("recipe", sort=True):
        g = g.sort_values("start").reset_index(drop=True)
        for i in range(len(g) - 1):
            marks.setdefault(float(g.loc[i, "end"]), []).append(
                (recipe, f"{g.loc[i, 'phase']} | {g.loc[i + 1, 'phase']}")
            )
    trans = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    for x, who in sorted(marks.items()):
        color = recipe_color(who[0][0]) if len({w[0] for w in who}) == 1 else REFERENCE_COLOR
        ax.axvline(x, color=color, ls=(0, (4, 2)), lw=1, alpha=0.8, zorder=1)
        names = sorted({w[1] for w in who})
        ax.text(
            x,
            0.99,
            " " + "; ".join(names),
            transform=trans,
            rotation=90,
            va="top",
            ha="right",
            fontsize="x-small",
            color=color,
        )
    return sorted(marks)


def reference_line(ax, y: float, label: str, *, ls="--", legend: str | None = None, named: bool = True) -> None:
    """A horizontal reference line (chance, copy baseline, uniform guess) named on the line itself
    (``label``; ``named=False``: not written) and in the legend (``legend``, default ``label``)."""
    import matplotlib.transforms as mtransforms

    if y is None or not np.isfinite(y):
        return
    ax.axhline(y, color=REFERENCE_COLOR, ls=ls, lw=1, zorder=1, label=legend or label)
    if not named:
        return
    trans = mtransforms.blended_transform_factory(ax.transAxes, ax.transData)
    ax.text(0.01, y, label, transform=trans, va="bottom", ha="left", fontsize="x-small", color=REFERENCE_COLOR)


def legend_outside(ax, title: str | None = None) -> None:
    """The legend to the right of the axes (never over the data); none when nothing is labelled."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    ax.legend(
        handles,
        labels,
        title=title,
        fontsize="small",
        title_fontsize="small",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
        frameon=False,
    )


def line_with_band(ax, x, y, low=None, high=None, *, label: str, color: str, ls="-", marker="o"):
    """A line with its interval as a band (where the interval is finite)."""
    (line,) = ax.plot(x, y, marker=marker, ms=3, color=color, ls=ls, label=label)
    if low is not None and high is not None:
        lo, hi = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
            ax.fill_between(np.asarray(x)[ok], lo[ok], hi[ok], color=color, alpha=0.18, lw=0)
    return line


def significant_round(value: float, low: float | None = None, high: float | None = None) -> str:
    """``value`` rounded to the first significant digit of its interval's half-width (e.g. 0.33899
    with [0.21, 0.47] -> "0.3"); with no finite interval, three significant digits."""
    if value is None or not np.isfinite(value):
        return ""
    width = None
    if low is not None and high is not None and np.isfinite(low) and np.isfinite(high) and high > low:
        width = (high - low) / 2
    if width is None:
        return f"{value:.3g}"
    decimals = max(0, -int(math.floor(math.log10(width))))
    return f"{value:.{decimals}f}"


def decimals_for(low: float, high: float) -> int | None:
    """Decimal places that the interval ``[low, high]`` supports (first significant digit of its half-width)."""
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)) or high <= low:
        return None
    return max(0, -int(math.floor(math.log10((high - low) / 2))))
