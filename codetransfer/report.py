"""The report of a main job: ``DIR/report/index.html`` (static, offline) and ``DIR/report/summary.md``.

Built from the result tables only (compute once, plot after): the grid, the paper-style table,
evaluation curves, learning curves (when the grid kept checkpoints), probing curves, patching maps,
head tables, and the headline findings — each claim with its interval, null results stated as such.

A patching number is a finding only next to its control. A cross-model share (the part of run A's
advantage over run B that one component carries) is shown only where the two recipes' seed-paired
gap (``comparison.parquet``, logit difference) is distinguishable (:func:`~codetransfer.analysis.compare.has_gap`:
the corrected interval excludes 0 and the Holm p is below 0.05, over at least 3 seeds) — otherwise the
section says "no gap to explain" — and a share outside :data:`STABLE_SHARE` is
flagged as unstable and never headlined; same-recipe (seed-vs-seed) pairs are shown as its null. A
cross-rendering effect is shown next to its token-matched control
(:mod:`codetransfer.analysis.patching`): where the control lies within the score's interval it is
token identity, not a shared representation; only an excess over the control whose interval lies
above 0 is a finding.
A figure that cannot be drawn (its table is missing or holds no such rows) is listed with the reason
instead of silently left out.

Both files are rendered from Jinja2 templates (``codetransfer/templates``); tables go through
pandas (``Styler.to_html``) after :func:`format_table`: a value with an interval is rounded to the
first significant digit of the interval's half-width, counts are integers, an empty cell states why
it is empty, and identical rows are dropped. Every name that comes from the grid or the tables
(recipe, source, task) is escaped, in HTML and in markdown (where ``|`` is escaped too). Figures
follow one style (:mod:`codetransfer.analysis.style`). Where ``circuitsvis`` is installed, the heads
the report names get an interactive attention view each (a separate page, at most
:data:`VIEW_MAX_BYTES`).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from markupsafe import Markup
from matplotlib.colors import Normalize

from codetransfer.analysis import style as S
from codetransfer.analysis.attention import (
    attention_patterns,
    best_heads,
    ordinary_token_ids,
    repeated_random_tokens,
)
from codetransfer.analysis.attention_plots import (
    attention_heads_view,
    plot_best_head_over_training,
    plot_head_score_difference,
    plot_head_scores,
)
from codetransfer.analysis.circuit_plots import plot_ablation_drop, plot_cka, plot_gap_share, plot_heads_over_training
from codetransfer.analysis.compare import MIN_SEEDS_DISTINGUISHABLE, has_gap, is_data_order_label, recipe_gap
from codetransfer.analysis.evaluate import plot_accuracy_vs_difficulty, plot_relative_change
from codetransfer.analysis.learning import (
    INDUCTION_EMERGED,
    emergence_summary,
    emergence_table,
    first_above_chance,
    plot_learning_curves,
    tokens_per_step,
)
from codetransfer.analysis.patching_plots import plot_difference, plot_side_by_side, plot_strongest_cell_over_training
from codetransfer.analysis.style import phase_table
from codetransfer.analysis.verdict import (
    NULL_ENDPOINTS,
    STABLE_SHARE,
    null_shares,
    patched_cell,
    planted_answer,
    read_tables,
    verdict_words,
    verdicts,
)
from codetransfer.probes.decodability import MIN_SEEDS, decodability_table, first_decodable_layers, label_family
from codetransfer.probes.plots import plot_decodability, plot_probe_curves
from codetransfer.trained import find_runs, load_run, runs_table
from codetransfer.trained.checks import is_data_order_pair, read_table
from codetransfer.trained.data import data_hash
from codetransfer.trained.warmup import PLANTED_COPY_LOSS

from codetransfer.errors import CodetransferError

VIEW_MAX_BYTES = 300_000
"""Largest interactive head view embedded in the report (bytes of its HTML page)."""


@dataclass
class Table:
    """A formatted table: its HTML (pandas Styler) and markdown renderings."""

    html: str
    markdown: str


@dataclass
class Section:
    """A titled part of the report: paragraphs, tables and figures in reading order."""

    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def add_text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def add_table(self, df: pd.DataFrame, **fmt) -> None:
        self.blocks.append(("table", render_table(format_table(df, **fmt))))

    def add_figure(self, file: str, caption: str) -> None:
        self.blocks.append(("figure", (file, caption)))

    def add_view(self, snippet, caption: str) -> None:
        self.blocks.append(("view", (snippet, caption)))


# --------------------------------------------------------------------------------------------------
# numbers and tables


def names(value) -> tuple[str, ...]:
    """A settings field that names several things: a comma string (``"a,b"``) or a sequence (``("a", "b")``)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v) for v in value)


def _finite(x) -> bool:
    try:
        return x is not None and not pd.isna(x) and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def decimals(low, high, default: int = 3) -> int:
    """Decimal places an interval supports: those of the first significant digit of its half-width
    (``[0.21, 0.47]`` -> 1: half-width 0.13). ``default`` when the interval is missing or empty."""
    if not (_finite(low) and _finite(high)) or float(high) <= float(low):
        return default
    return max(0, -math.floor(math.log10((float(high) - float(low)) / 2)))


def with_interval(
    value, low, high, *, scale: float = 1.0, signed: bool = False, unit: str = "", missing: str = "not measured"
) -> str:
    """``value [low, high]`` rounded to what the interval supports (see :func:`decimals`); an interval
    end that is not finite is written ``unbounded``; a value that is not finite gives ``missing``."""
    if not _finite(value):
        return missing
    v = float(value) * scale
    lo = float(low) * scale if _finite(low) else None
    hi = float(high) * scale if _finite(high) else None
    if lo is not None and hi is not None:
        d = decimals(lo, hi)
    else:  # one end unbounded: the finite end's distance, else two significant digits of the value
        near = lo if lo is not None else hi
        d = decimals(min(near, 2 * v - near), max(near, 2 * v - near), default=-1) if near is not None else -1
        if d < 0:
            d = max(0, 1 - math.floor(math.log10(abs(v)))) if v else 0
    spec = f"{{:{'+' if signed else ''}.{d}f}}"

    def f(x: float) -> str:  # a number that rounds to 0 is written 0 (never -0.0), +0.0 when signed
        text = spec.format(x)
        return spec.format(0.0) if float(text) == 0 else text

    lo_s = f(lo) if lo is not None else "unbounded"
    hi_s = f(hi) if hi is not None else "unbounded"
    return f"{f(v)}{unit} [{lo_s}, {hi_s}]"


def format_table(
    df: pd.DataFrame,
    *,
    intervals: dict[str, tuple[str, str]] | None = None,
    counts: tuple[str, ...] = (),
    reasons: dict[str, str] | None = None,
    decimals_of: dict[str, int] | None = None,
    rename: dict[str, str] | None = None,
) -> pd.DataFrame:
    """A table of display strings.

    ``intervals``: ``{value column: (low column, high column)}``, merged into one ``value [low, high]``
    column rounded by :func:`decimals` (the low/high columns are dropped). ``counts``: integer columns.
    ``reasons``: ``{column: why a cell is empty}`` (default: "not measured"). Other floats keep 3
    significant digits (or ``decimals_of[col]`` places). Duplicate rows are dropped. ``rename`` maps
    column names to words."""
    intervals, reasons, decimals_of = intervals or {}, reasons or {}, decimals_of or {}
    out = pd.DataFrame(index=df.index)
    dropped = {c for lo_hi in intervals.values() for c in lo_hi}
    for c in df.columns:
        if c in dropped:
            continue
        why = reasons.get(c, "not measured")
        col = df[c]
        if c in intervals:
            lo, hi = intervals[c]
            out[c] = [with_interval(v, a, b, missing=why) for v, a, b in zip(col, df[lo], df[hi])]
        elif c in counts:
            out[c] = [f"{int(round(float(v))):,}" if _finite(v) else why for v in col]
        elif pd.api.types.is_float_dtype(col):
            d = decimals_of.get(c)
            out[c] = [(f"{float(v):.{d}f}" if d is not None else f"{float(v):.3g}") if _finite(v) else why for v in col]
        else:
            out[c] = [
                why if (v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA) else str(v) for v in col
            ]
    out = out.drop_duplicates().reset_index(drop=True)
    return out.rename(columns=rename or {})


def md_escape(text) -> str:
    """Text for a markdown cell or paragraph: HTML escaped, ``|`` escaped."""
    return html.escape(str(text), quote=False).replace("|", "\\|")


def render_table(df: pd.DataFrame) -> Table:
    """HTML (pandas Styler, names escaped) and markdown of a table of display strings."""
    styler = df.style.hide(axis="index").format(escape="html").format_index(escape="html", axis=1)
    numeric = [c for c in df.columns if df[c].map(lambda s: bool(s) and (s[0].isdigit() or s[0] in "+-")).all()]
    if numeric:
        styler = styler.set_td_classes(
            pd.DataFrame({c: ["num" if c in numeric else "" for _ in df.index] for c in df.columns}, index=df.index)
        )
    # the page's stylesheet styles tables: drop Styler's (empty) <style> element, which would also come
    # between a paragraph and its table
    body = re.sub(r"^\s*<style[^>]*>.*?</style>\s*", "", styler.to_html(), flags=re.S)
    cols = [md_escape(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(md_escape(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return Table(body, "\n".join(lines))


def _read(path: Path) -> pd.DataFrame | None:

    if path.exists():  # a damaged table is refused naming the file (delete it and rerun its stage)
        return read_table(path, "result table", fix="delete it and rerun the stage that writes it")
    return None


def _figure(section: Section, folder: Path, name: str, caption: str, draw) -> None:
    """Draw with ``draw()`` (which returns a matplotlib Figure) into folder/name.png, or note why not."""

    try:
        fig = draw()
    except (CodetransferError, KeyError, ValueError, IndexError) as e:
        section.missing.append(f"{caption}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}")
        plt.close("all")
        return
    fig.savefig(folder / name, dpi=110)
    plt.close(fig)
    section.add_figure(name, caption)


def _file(name: str) -> str:
    """A file name from a user-controlled name (recipe, task): only safe characters."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name.replace("->", "-"))


# --------------------------------------------------------------------------------------------------


def _data_provenance(out: Path) -> str:
    """One sentence naming the training data: its manifest hash (which runs must share to be compared) and
    what each source was read from (the standard library depends on the interpreter that prepared it)."""

    manifest = out / "data" / "manifest.json"
    if not manifest.is_file():
        return "Training data: no data manifest in this output folder."
    sources = json.loads(manifest.read_text()).get("sources", {})
    parts = []
    for name, src in sources.items():
        prov = src.get("provenance", {})
        if isinstance(prov, dict):
            origin = ", ".join(
                f"{k} {prov[k]}" for k in ("package", "version", "python_version", "generator") if k in prov
            )
        else:
            origin = ""
        parts.append(f"{name} ({origin or src.get('kind', '')})")
    return (
        f"Training data: manifest sha256 {data_hash(out / 'data')[:16]} (runs trained on other data are not "
        "compared with these); sources: " + "; ".join(parts) + "."
    )


def _grid_section(out: Path, grid, folder: Path) -> Section:

    s = Section("The grid")
    s.add_text(
        f"Grid **{grid.name}**: {grid.model.n_layers} layers, d_model {grid.model.d_model}, "
        f"{grid.model.n_heads} heads, context {grid.model.n_ctx}, vocabulary {grid.tokenizer.vocab_size}; "
        f"seeds {list(grid.seeds)}. Sources: " + ", ".join(f"{k} ({v.kind})" for k, v in grid.sources.items()) + "."
    )
    s.add_text(_data_provenance(out))
    described = [r for r in grid.recipes if r.description]
    if described:
        s.add_table(
            pd.DataFrame({"recipe": [r.name for r in described], "what it answers": [r.description for r in described]})
        )
    code_sources = {
        k for k, v in grid.sources.items() if v.kind in ("stdlib", "synthetic_program") or v.category == "code"
    }
    prefixes: dict[str, set[str]] = {}
    for r in grid.recipes:
        for k in range(1, len(r.phases) + 1):
            key = json.dumps([[p.name, p.mixture, p.tokens] for p in r.phases[:k]], sort_keys=True)
            prefixes.setdefault(key, set()).add(r.name)

    def draw():
        fig, ax = plt.subplots(figsize=(9.5, 0.6 * len(grid.recipes) + 1.6), layout="constrained")
        cmap, norm = plt.get_cmap("cividis"), Normalize(0, 100)
        any_shared = False
        for i, r in enumerate(grid.recipes):
            x = 0.0
            for k, p in enumerate(r.phases):
                code = 100 * sum(w for src, w in p.weights().items() if src in code_sources)
                key = json.dumps([[q.name, q.mixture, q.tokens] for q in r.phases[: k + 1]], sort_keys=True)
                shared = len(prefixes[key]) > 1
                any_shared |= shared
                ax.barh(
                    i,
                    p.tokens / 1e6,
                    left=x,
                    color=cmap(norm(code)),
                    edgecolor="black",
                    hatch="//" if shared else None,
                    lw=0.8,
                )
                rgb = cmap(norm(code))[:3]
                light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 0.5
                ax.text(
                    x + p.tokens / 2e6,
                    i,
                    f"{p.name}\n{code:.0f}% code",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if light else "white",
                )
                x += p.tokens / 1e6
        ax.set_yticks(range(len(grid.recipes)), [r.name for r in grid.recipes])
        for lab, r in zip(ax.get_yticklabels(), grid.recipes):
            lab.set_color(S.recipe_color(r.name))
        ax.invert_yaxis()
        ax.set_xlabel("training tokens (millions)")
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="code share of the phase (%)")
        ax.set_title(
            "recipes and phases"
            + (" (hatched: phases shared by several recipes, trained once and branched from)" if any_shared else ""),
            fontsize="medium",
        )
        return fig

    _figure(s, folder, "grid.png", "Recipes, phases, code share and branch points", draw)
    table = runs_table(out)
    if not table.empty:
        keep = [
            c
            for c in table.columns
            if c in ("run", "recipe", "seed", "steps", "branched_from", "warmup", "warmup_copy_loss")
            or c.startswith("tokens/")
            or c.startswith("val/")
        ]
        t = table[keep].copy()
        tok = [c for c in keep if c.startswith("tokens/")]
        t[tok] = t[tok].fillna(0)  # a source a run never read: 0 tokens
        t["branched_from"] = t["branched_from"].replace("", "trained from the start")
        if "warmup" in t:  # a run without a warm-up, and one loaded from a cache older than its stored loss
            t["warmup_copy_loss"] = [
                f"{v:.2f}" if _finite(v) else "not stored" if w else ""
                for w, v in zip(t["warmup"], t["warmup_copy_loss"])
            ]
            t["warmup"] = t["warmup"].replace("", "none")
        s.add_table(
            t,
            counts=("seed", "steps", *tok),
            decimals_of={c: 3 for c in keep if c.startswith("val/")},
            reasons={c: "no held-out tokens" for c in keep if c.startswith("val/")},
            rename={
                **{c: f"tokens of {c[7:]}" for c in tok},
                **{c: f"held-out loss on {c[4:]} (nats/token)" for c in keep if c.startswith("val/")},
                "branched_from": "branched from",
                "warmup": "induction warm-up rows",
                "warmup_copy_loss": f"warm-up's last copy loss (nats; planted below {PLANTED_COPY_LOSS:g})",
            },
        )
    return s


def _vocab_size(runs) -> int | None:
    """The vocabulary size of a model set's models (from their configs): the one they share, else the
    largest (None when no config names one)."""
    sizes = {r.record.get("model", {}).get("vocab_size") for r in runs} - {None}
    return max(sizes) if sizes else None


def _model_set_section(models, runs) -> Section:
    """The section that replaces "The grid" for a model set: its file, and its models with their shapes."""

    s = Section("Model set")
    groups = models.groups
    s.add_text(
        f"Model set **{models.name}**"
        + (f" (file {models.path})" if getattr(models, "path", None) else "")
        + f": {len(runs)} checkpoints in {len(groups)} groups ({', '.join(groups)}), compared with the baseline "
        "group as a grid's recipes are with its baseline recipe (groups play the role of recipes, seeds pair as "
        "usual). These models were not trained by codetransfer: there are no training phases or data to show, "
        "and held-out loss on codetransfer's sources is not measured."
    )
    by_name = {e.name: e for e in models.entries}
    rows = []
    for r in runs:
        e, shape = by_name[r.name], r.record.get("model", {})
        # a local folder by its name; a hub id (its snapshot folder is named by a commit) by the id
        folder = e.folder.name if Path(e.source).name == e.folder.name else e.source
        if e.revision:
            folder += f"@{e.revision}"
        rows.append(
            {
                "run": r.name,
                "group": e.group,
                "seed": e.seed,
                "step": e.step,
                "folder": folder,
                "architecture": shape.get("model_type"),
                "layers": shape.get("n_layers"),
                "d_model": shape.get("d_model"),
                "context": r.record.get("n_ctx") or shape.get("n_ctx"),
                "vocabulary": shape.get("vocab_size"),
            }
        )
    s.add_table(
        pd.DataFrame(rows),
        counts=("seed", "step", "layers", "d_model", "context", "vocabulary"),
        reasons={"step": "not given"},
    )
    return s


def _category_chance(table: pd.DataFrame, baseline: str) -> dict[str, float]:
    """Mean chance accuracy of each category's items (over the baseline's per-level rows, weighted by items)."""
    t = table[
        (table["metric"] == "accuracy")
        & (table["difficulty"].astype(str) != "all")
        & ~table["task"].astype(str).str.startswith("heldout:")
    ]
    if baseline in set(t["recipe"]):
        t = t[t["recipe"] == baseline]
    if "chance" not in t.columns or t.empty:
        return {}
    w = t["n_items"] if "n_items" in t.columns else pd.Series(1.0, index=t.index)
    return {c: float(np.average(g["chance"], weights=w[g.index])) for c, g in t.groupby("category")}


def _verdict(r) -> str:
    """What one seed-paired comparison row supports, in words."""
    if r.n_seeds < 3:
        return f"{int(r.n_seeds)} seed(s): an item-level interval, not a claim"
    if r.distinguishable:
        return f"distinguishable from seed noise (Holm p = {r.p_holm:.2g})"
    mde = f"{r.mde:.2g}" if _finite(r.mde) else "unknown"
    return f"not distinguishable (Holm p = {r.p_holm:.2g}); effects larger than {mde} would have been detected"


def _seed_paired(s: Section, comparison: pd.DataFrame, baseline: str) -> list[str]:
    """The seed-paired comparison table (pooled over the levels where the baseline is above chance) and its
    headline: the primary metric (logit difference) on reasoning."""
    pooled = comparison[comparison["pooled"].astype(bool)]
    if pooled.empty:
        s.add_text(
            f"No level has **{baseline}** above chance, so there is no seed-paired headline comparison "
            "(per-level rows are in results/comparison.parquet)."
        )
        return []
    rows = []
    for _, r in pooled.iterrows():
        scale = 100 if r.metric == "correct" else 1
        unit = " pp" if r.metric == "correct" else ""
        rows.append(
            {
                "recipe": r.recipe,
                "compared with": r.baseline,
                "category": r.category,
                "metric": "accuracy" if r.metric == "correct" else "logit difference",
                "recipe - compared": with_interval(
                    r.estimate, r.ci_low, r.ci_high, scale=scale, signed=True, unit=unit
                ),
                "Holm p": f"{r.p_holm:.2g}" if _finite(r.p_holm) else "not tested",
                "smallest detectable": f"{scale * r.mde:.2g}{unit}" if _finite(r.mde) else "unknown",
                "seeds": r.n_seeds,
                "items": r.n_items,
                "verdict": _verdict(r),
                "levels": r.pooled_levels,
            }
        )
    s.add_table(pd.DataFrame(rows), counts=("seeds", "items"))
    s.add_text(
        f"Seed-paired comparisons with **{baseline}** (and of each recipe that names a control, "
        "`compare_with`, with that control): per seed, the recipe and the recipe it is compared with are scored on "
        "the same items and their difference is the unit; 95% hierarchical bootstrap intervals (seeds, then "
        "items); p from a mixed model with seed as a random effect, Holm-corrected over the rows; the "
        "smallest detectable effect is for 80% power at the corrected level (alpha 0.05 divided by the rows "
        "compared, as the corrected interval) given the seeds' spread. Pooled over the "
        "levels where the baseline is above chance (listed); per-level rows are in "
        "results/comparison.parquet. The logit difference (answer minus best other candidate) is the "
        "primary metric."
    )
    null = pooled["recipe"].map(is_data_order_label).astype(bool)
    if null.any():
        s.add_text(
            f"Rows '{baseline} (data order k)' are the **data-order null**: the {baseline} runs trained in data order "
            f"k against the {baseline} runs of the same init seeds, which share their initialisation and shared "
            "phases and differ only in the order of the later rows; a recipe's difference is read against it."
        )
    lead = pooled[(pooled["metric"] == "logit_diff") & (pooled["category"] == "reasoning") & ~null]
    if lead.empty:
        return []
    # the controlled comparisons (a recipe against the control it names) first, then those with the baseline
    lead = lead.assign(_vs_baseline=lead["baseline"].astype(str) == baseline).sort_values("_vs_baseline", kind="stable")
    parts = []
    for _, r in lead.iterrows():
        diff = with_interval(r.estimate, r.ci_low, r.ci_high, signed=True)
        if r.n_seeds < 3 or r.distinguishable:
            verdict = _verdict(r)
        else:
            mde = f"{r.mde:.2g}" if _finite(r.mde) else "unknown"
            verdict = f"Holm p = {r.p_holm:.2g}; 80% power for effects of {mde} or more"
        parts.append(f"{r.recipe} - {r.baseline} {diff} ({verdict})")
    seeds = sorted({int(n) for n in lead["n_seeds"]})
    called = lead["distinguishable"].astype(bool).sum()
    return [
        f"Reasoning, seed-paired logit difference over {'/'.join(map(str, seeds))} seed(s), pooled over the levels "
        f"where the compared-with recipe is above chance; {int(called)} of {len(lead)} comparisons distinguishable "
        "from seed noise after Holm: " + "; ".join(parts) + "."
    ]


def _eval_section(results: Path, folder: Path, baseline: str) -> tuple[Section, list[str]]:

    s = Section("Evaluation: the paper-style table")
    findings = []
    table, summary = _read(results / "eval.parquet"), _read(results / "summary.csv")
    if table is None:
        s.missing.append("eval.parquet: the eval stage has not run")
        return s, findings
    chance = _category_chance(table, baseline)
    comparison = _read(results / "comparison.parquet")
    if comparison is not None and not comparison.empty:
        findings += _seed_paired(s, comparison, baseline)
    if summary is not None and not summary.empty:
        rows = []
        for _, r in summary.iterrows():
            ch = chance.get(r.category) if r["of"] == "accuracy" else None
            below = ch is not None and _finite(r.baseline_value) and r.baseline_value <= ch + 1e-12
            if below:
                # relative change against a baseline at chance says nothing: report the difference in points
                b = float(r.baseline_value)
                cell = with_interval(
                    (r.recipe_value - b),
                    b * r.ci_low if _finite(r.ci_low) else None,
                    b * r.ci_high if _finite(r.ci_high) else None,
                    scale=100,
                    signed=True,
                    unit=" pp",
                    missing="undefined",
                )
                kind = (
                    f"difference in percentage points (baseline {100 * b:.0f}% is at or below chance {100 * ch:.0f}%)"
                )
            elif not _finite(r.value):
                cell, kind = "undefined: the baseline scores 0", "relative change"
            else:
                cell = with_interval(r.value, r.ci_low, r.ci_high, scale=100, signed=True, unit="%")
                kind = "relative change"
            distinct = (_finite(r.ci_low) and r.ci_low > 0) or (_finite(r.ci_high) and r.ci_high < 0)
            rows.append(
                {
                    "recipe": r.recipe,
                    "category": r.category,
                    "of": r["of"],
                    "recipe / baseline": f"{100 * r.recipe_value:.0f}% / {100 * r.baseline_value:.0f}%"
                    if r["of"] == "accuracy"
                    else f"{r.recipe_value:.3g} / {r.baseline_value:.3g}",
                    "change vs " + baseline: cell,
                    "measured as": kind,
                    "distinguishable from noise": ("yes" if distinct else "no")
                    if r.n_seeds >= 3
                    else f"{int(r.n_seeds)} seed(s): an item-level interval, not a claim",
                    "items": r.n_items,
                    "seeds": r.n_seeds,
                }
            )
        s.add_table(pd.DataFrame(rows), counts=("items", "seeds"))
        s.add_text(
            f"Change of each recipe against **{baseline}**, 95% bootstrap intervals over items (and seeds "
            "where there are several), rounded to the interval's first significant digit. Where the "
            "baseline is at or below chance a relative change is meaningless, so the difference in "
            "percentage points is given (its interval: the relative interval times the baseline, "
            "approximate). 'unbounded': some bootstrap resamples of the baseline average 0. "
            "'distinguishable from noise' = the interval excludes 0. For held-out loss, negative is better."
        )
        acc = summary[(summary["of"] == "accuracy") & (summary["category"] == "reasoning")]
        acc = acc[acc["value"].map(_finite)]
        if not acc.empty:
            best = acc.loc[acc["value"].idxmax()]
            verdict = (
                "distinguishable from noise"
                if (_finite(best.ci_low) and best.ci_low > 0) or (_finite(best.ci_high) and best.ci_high < 0)
                else "NOT distinguishable from noise"
            )
            if best.n_seeds < 3:
                verdict = f"{int(best.n_seeds)} seed(s): an item-level interval, not a claim"
            ch = chance.get("reasoning")
            if ch is not None and best.baseline_value <= ch + 1e-12:
                change = (
                    f"{100 * (best.recipe_value - best.baseline_value):+.0f} percentage points (baseline at chance)"
                )
            else:
                change = with_interval(best.value, best.ci_low, best.ci_high, scale=100, signed=True, unit="%")
            findings.append(
                f"Reasoning accuracy: best recipe vs {baseline} is {best.recipe} at {change} "
                f"({verdict} at this number of seeds and items)."
            )

        def draw_rel():
            fig, ax = plt.subplots(figsize=(8, 3.6), layout="constrained")
            plot_relative_change(summary[summary["of"] == "accuracy"], ax=ax)
            return fig

        _figure(
            s,
            folder,
            "relative_change.png",
            f"Relative change of accuracy vs {baseline} per category (arrows: interval unbounded above)",
            draw_rel,
        )
    tasks = [t for t in table["task"].unique() if not str(t).startswith("heldout:")]
    for task in tasks:

        def draw(task=task):
            fig, ax = plt.subplots(figsize=(6.5, 3.5), layout="constrained")
            plot_accuracy_vs_difficulty(table, task=task, ax=ax)
            return fig

        _figure(s, folder, f"eval_{_file(task)}.png", f"{task}: accuracy against difficulty per recipe", draw)
    run_rows = table[
        (table["metric"] == "accuracy")
        & (table["difficulty"].astype(str) == "0")
        & ~table["run"].astype(str).str.endswith("*")
    ]
    if not run_rows.empty and baseline in set(run_rows["recipe"]):
        b = run_rows[run_rows["recipe"] == baseline]
        above = b[b["ci_low"] > b["chance"]]
        s.add_text(
            f"Easiest level, {baseline}: above chance (interval) on "
            f"{', '.join(sorted(above['task'])) or 'no task'}; at chance on "
            f"{', '.join(sorted(set(b['task']) - set(above['task']))) or 'no task'}."
        )
        if "copy_chance" in b.columns:
            keyed = b[b["ci_low"] > b["copy_chance"]]
            s.add_text(
                "Above the copy baseline (guessing among the values the prompt mentions, which needs no "
                f"use of the question): {', '.join(sorted(keyed['task'])) or 'no task'}."
            )
    return s, findings


def _phases(out: Path, grid):
    """Phase boundaries in tokens: from the run records (tokens actually seen), else from the grid."""

    try:
        runs = [r for r in find_runs(out) if r.record.get("tokens_by_phase")]
    except CodetransferError:
        runs = []
    t = phase_table(runs) if runs else pd.DataFrame()
    return t if not t.empty else phase_table(grid)


def _tokens_per_step(out: Path) -> dict[str, int]:

    found = {}
    try:
        for r in find_runs(out):
            try:
                found[r.name] = tokens_per_step(r.record)
            except CodetransferError:
                pass
    except CodetransferError:
        pass
    return found


def _learning(results: Path, folder: Path, phases, model_set: bool = False) -> tuple[Section, list[str]]:
    """Learning curves: accuracy against training tokens on the easiest level, one panel per
    reasoning family, and the first checkpoint whose interval clears chance."""

    s = Section("Learning curves")
    t = _read(results / "learning.parquet")
    if t is None or t.empty:
        s.missing.append(
            "learning.parquet: a model set's checkpoints are scored one by one (give each step its own entry, "
            "with step set, to compare them)"
            if model_set
            else "learning.parquet: no intermediate checkpoints were scored (train the grid with train.snapshot_every > 0)"
        )
        return s, []
    t = t.assign(difficulty=t["difficulty"].astype(str))
    levels = sorted((d for d in t["difficulty"].unique() if d != "all"), key=int)
    if not levels:
        s.missing.append("learning.parquet: no per-level rows")
        return s, []
    level = levels[0]
    reasoning = sorted(t.loc[t["category"] == "reasoning", "task"].unique()) or sorted(t["task"].unique())

    def draw():
        cols = min(3, len(reasoning))
        rows = -(-len(reasoning) // cols)
        fig, axes = plt.subplots(
            rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False, layout="constrained", sharey=True
        )
        for k, ax in enumerate(axes.flat):
            if k >= len(reasoning):
                ax.set_visible(False)
                continue
            plot_learning_curves(t, task=reasoning[k], difficulty=level, ax=ax, phases=phases)
            if ax.get_legend() is not None and k != cols - 1:
                ax.get_legend().remove()
        return fig

    steps = [int(x) for x in sorted(t["step"].unique())]
    _figure(
        s,
        folder,
        "learning_curves.png",
        f"Accuracy at difficulty {level} against training tokens (millions), one line per recipe; dashed "
        "vertical lines: phase boundaries",
        draw,
    )
    s.add_text(
        f"Every saved checkpoint and the final model ({len(steps)} checkpoints) scored on the same "
        f"difficulty-{level} items; bands are 95% bootstrap intervals over items (and "
        "seeds); the lines named 'chance' and 'copy baseline' are guessing uniformly and copying a value "
        "the prompt mentions. Points of one curve share items and training history."
    )
    first = first_above_chance(t, difficulty=level)
    if not first.empty:
        last = t.groupby("recipe")["tokens"].max()
        first = first.assign(
            cell=[
                f"{tok / 1e6:.2f}M tokens (step {st})"
                if pd.notna(st)
                else f"not above chance by {last.get(rc, float('nan')) / 1e6:.2f}M tokens"
                for st, tok, rc in zip(first["step"], first["tokens"], first["recipe"])
            ]
        )
        wide = first.pivot_table(index="recipe", columns="task", values="cell", aggfunc="first")
        wide = wide.fillna("not scored").reset_index()
        wide.columns.name = None
        s.add_text(f"First checkpoint whose accuracy interval lies above chance (difficulty {level}):")
        s.add_table(wide)
    _emergence(s, t, _read(results / "attention_over_training.parquet"), level, reasoning)
    return s, []


def _emergence(s: Section, learning: pd.DataFrame, over: pd.DataFrame | None, level: str, reasoning) -> None:
    """When the induction head and above-copy accuracy appeared, per recipe over its seeds
    (:func:`~codetransfer.analysis.learning.emergence_summary`)."""
    runs = learning[~learning["run"].astype(str).str.endswith("*") & (learning["step"] > 0)]
    per_step = (runs["tokens"] / runs["step"]).groupby(runs["run"]).first().round().astype(int).to_dict()
    if over is not None and not set(over["run"]) - {r for r in over["run"] if str(r).endswith("*")} <= set(per_step):
        over = None  # runs the learning table does not know: their tokens per step are unknown here
    summary = emergence_summary(emergence_table(learning, over, per_step, difficulty=level))
    summary = summary[(summary["measure"] == "induction") | summary["task"].isin(reasoning)]
    if summary.empty:
        return

    def cell(r) -> str:
        if r.reached < r.seeds:
            return f"{r.reached} of {r.seeds} seeds by {r.last_tokens / 1e6:.1f}M tokens"
        if np.isfinite(r.ci_low):
            low = max(r.ci_low, 0.0)  # a t interval on token counts can reach below 0, the counts cannot
            return f"{r.tokens / 1e6:.1f}M [{low / 1e6:.1f}, {r.ci_high / 1e6:.1f}] ({r.seeds} seeds)"
        return f"{r.tokens / 1e6:.1f}M ({r.seeds} seed{'s' if r.seeds > 1 else ''})"

    summary = summary.assign(
        cell=[cell(r) for r in summary.itertuples()],
        what=[
            f"induction head (best score {INDUCTION_EMERGED} or more)" if m == "induction" else f"{t} beats copy"
            for m, t in zip(summary["measure"], summary["task"])
        ],  # fmt: skip
    )
    wide = summary.pivot_table(index="recipe", columns="what", values="cell", aggfunc="first").reset_index()
    wide.columns.name = None
    s.add_text(
        "When it appeared: training tokens until each run's best induction head (repeated random tokens) scores "
        f"{INDUCTION_EMERGED} or more, and until its difficulty-{level} accuracy beats the copy baseline with its "
        "item interval; the mean over seeds with a t interval when every seed got there, else how many did "
        "(a censored mean is not reported)."
    )
    s.add_table(wide)


def _probes(results: Path, folder: Path) -> tuple[Section, list[str]]:

    s = Section("Probing: where is the world state decodable?")
    findings = []
    t = _read(results / "probes.parquet")
    if t is None or t.empty:
        s.missing.append("probes.parquet: the probe stage has not run or found nothing to probe")
        return s, findings
    same = t[t["fit_on"] == t["test_on"]] if "fit_on" in t else t
    cross = t[t["fit_on"] != t["test_on"]] if "fit_on" in t else t.iloc[:0]
    dec = _read(results / "decodability.parquet")
    if dec is None:  # a probes table from before the job wrote decodability.parquet
        try:
            dec = decodability_table(t)
        except CodetransferError as e:
            s.missing.append(f"decodability.parquet: {e}")
    if dec is not None:
        s.add_text(
            "A layer counts as decodable only against an untrained model of the same shape: each trained run's "
            "probe selectivity minus that of its random-init twin (same items, rows and splits), per training "
            f"seed; the recipe's mean difference has a seed-level 95% t interval over its seeds, and the layer is "
            f"decodable when that interval lies above 0 with at least {MIN_SEEDS} seeds. With fewer seeds the "
            "interval is item-level and nothing is called decodable. Numbers are rounded to what their interval "
            "supports; label families ending in @query and @op are non-local world state (tasks/render.py)."
        )
    for (task, site), g in same.groupby(["task", "site"]):
        g = g.assign(family=g["pos"].map(label_family))
        families = sorted(g["family"].unique())
        for metric in ("accuracy", "selectivity"):

            def draw(g=g, metric=metric, families=families, task=task, site=site):
                fig, axes = plt.subplots(
                    len(families), 1, figsize=(7, 3.2 * len(families)), layout="constrained", squeeze=False
                )
                for ax, family in zip(axes[:, 0], families):
                    rows = g[g["family"] == family]
                    pooled = rows.groupby(["run", "recipe", "seed", "layer", "metric"], as_index=False)[
                        ["value", "ci_low", "ci_high"]
                    ].mean()
                    pooled = pooled.assign(task=task, site=site, pos=family, probe=rows["probe"].iloc[0], head=-1)
                    plot_probe_curves(pooled, metric=metric, ax=ax)
                    ax.set_title(f"{task} / {site} / {family}: probe {metric}", fontsize="medium")
                return fig

            _figure(
                s,
                folder,
                f"probe_{_file(task)}_{_file(site)}_{metric}.png",
                f"{task}, {site}: probe {metric} against layer per label family (mean over its labels), one line "
                "per recipe (grey dashed: the random-init twins)",
                draw,
            )
        if dec is None:
            continue
        d = dec[(dec["task"] == task) & (dec["site"] == site) & dec["head"].isna()]
        agg = d[d["seed"].isna()]
        if agg.empty:
            continue

        def draw_dec(agg=agg, task=task, site=site):
            fams = sorted(agg["family"].unique())
            fig, axes = plt.subplots(len(fams), 1, figsize=(7, 3.2 * len(fams)), layout="constrained", squeeze=False)
            for ax, family in zip(axes[:, 0], fams):
                plot_decodability(agg[agg["family"] == family], ax=ax)
                ax.set_title(f"{task} / {site} / {family}: trained − random-init twin", fontsize="medium")
            return fig

        _figure(
            s,
            folder,
            f"probe_{_file(task)}_{_file(site)}_decodability.png",
            f"{task}, {site}: probe selectivity of the trained runs minus their random-init twins against layer, "
            "per recipe with its interval (seed-level with 3 or more seeds); filled dots: decodable",
            draw_dec,
        )
        first = first_decodable_layers(d)
        shown = first.assign(
            interval=[_interval_words(r.interval, r.n_seeds) for r in first.itertuples()],
            layer=[str(v) if not pd.isna(v) else "none above the twin" for v in first["layer"]],
            estimate=[with_interval(r.estimate, r.ci_low, r.ci_high, signed=True) for r in first.itertuples()],
        )[["recipe", "family", "n_seeds", "interval", "layer", "estimate"]]
        s.add_text(
            f"First decodable layer, {task} / {site}: the first layer whose trained − twin selectivity interval "
            "lies above 0 (seed-level), with that difference (where none is: the best layer's):"
        )
        s.add_table(
            shown,
            counts=("n_seeds",),
            rename={
                "family": "label family",
                "n_seeds": "seeds",
                "layer": "first decodable layer",
                "estimate": "trained − twin",
            },
        )
        s.add_text(f"Per layer, {task} / {site}: trained and twin selectivity (means over seeds) and their difference:")
        s.add_table(_per_layer(agg), counts=("layer",))
        findings.append(_probe_finding(task, site, first))
    if not cross.empty:
        c = cross[cross.metric == "accuracy"].groupby(["recipe", "fit_on", "test_on"])["value"].mean().reset_index()
        s.add_text(
            "Cross-format probing (fit on one rendering, test on the other), mean accuracy over layers and labels "
            "(no interval: a description, not a finding):"
        )
        s.add_table(c.rename(columns={"value": "mean accuracy"}), decimals_of={"mean accuracy": 2})
    return s, findings


def _interval_words(kind: str, n_seeds: int) -> str:
    return (
        f"seed-level ({n_seeds} seeds)"
        if kind == "seed"
        else f"item-level ({n_seeds} seed{'s' * (n_seeds != 1)}): not a claim"
    )


def _per_layer(agg: pd.DataFrame) -> pd.DataFrame:
    """Display rows of a decodability table's recipe rows: trained and twin rounded as their difference's interval
    allows, the difference with its interval, and whether the layer is decodable."""
    rows = []
    for r in agg.sort_values(["family", "recipe", "layer"]).itertuples():
        d = decimals(r.ci_low, r.ci_high)
        rows.append(
            {
                "label family": r.family,
                "recipe": r.recipe,
                "layer": r.layer,
                "trained": f"{r.trained:.{d}f}",
                "random-init twin": f"{r.twin:.{d}f}",
                "trained − twin": with_interval(r.estimate, r.ci_low, r.ci_high, signed=True),
                "decodable": "yes" if r.decodable else ("no" if r.interval == "seed" else "not claimed (item-level)"),
            }
        )
    return pd.DataFrame(rows)


def _probe_finding(task: str, site: str, first: pd.DataFrame) -> str:
    """One headline sentence per task and site from the first-decodable table."""
    parts = []
    for family, g in first.groupby("family", sort=True):
        if (g["interval"] != "seed").all():
            n = int(g["n_seeds"].max())
            parts.append(
                f"{family}: item-level intervals only ({n} seed{'s' * (n != 1)}), so no layer is called decodable "
                "(not a claim)"
            )
            continue
        hit = g[g["layer"].notna()]
        miss = g[g["layer"].isna()]
        words = []
        if len(hit):
            words.append(
                "decodable above the random-init twin in "
                + ", ".join(
                    f"{r.recipe} from layer {r.layer} ({with_interval(r.estimate, r.ci_low, r.ci_high, signed=True)})"
                    for r in hit.itertuples()
                )
            )
        if len(miss):
            words.append(
                "not above the twin at any layer in "
                + ", ".join(
                    f"{r.recipe} (best {with_interval(r.estimate, r.ci_low, r.ci_high, signed=True)})"
                    for r in miss.itertuples()
                )
            )
        parts.append(f"{family}: " + "; ".join(words))
    return (
        f"Probing ({task}, {site}), trained selectivity minus the random-init twin's, 95% intervals over seeds: "
        + ". ".join(parts)
        + "."
    )


def _component_name(r, with_pos: bool = True) -> str:
    """``site L<layer>[ H<head>][ @<position>]`` of a patched cell (a table row)."""
    head = f" H{int(r['head'])}" if pd.notna(r.get("head")) and r["head"] >= 0 else ""
    p = r.get("pos_label") if pd.notna(r.get("pos_label")) else r.get("pos")
    pos = f" @{p}" if with_pos and pd.notna(p) and str(p) != "all" else ""
    return f"{r['site']} L{r['layer']}{head}{pos}"


def _component_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Name each patched component, and merge rows that are the same measurement under several
    position labels (e.g. '@last' and '@query' on one token): one row, labels joined by '='."""

    def pos(r):
        p = r.get("pos_label") if pd.notna(r.get("pos_label")) else r.get("pos")
        return str(p) if pd.notna(p) and str(p) != "all" else ""

    rows = rows.assign(
        component=rows.apply(lambda r: _component_name(r, with_pos=False), axis=1), _pos=rows.apply(pos, axis=1)
    )
    keys = [
        c
        for c in ("source_recipe", "recipe", "run", "component", "value", "ci_low", "ci_high", "null")
        if c in rows.columns
    ]
    merged = rows.groupby(keys, as_index=False, sort=False, dropna=False)["_pos"].agg(
        lambda p: " = ".join("@" + x for x in dict.fromkeys(p) if x)
    )
    merged["component"] = [f"{c} {p}".strip() for c, p in zip(merged["component"], merged["_pos"])]
    return merged.drop(columns="_pos")


def _patching(
    results: Path, folder: Path, baseline: str, difficulty: int | None = None, recipes=()
) -> tuple[Section, list[str]]:
    """The patching section: within-model maps, then cross-model shares (only where the recipes' seed-paired
    gap excludes 0) and cross-rendering effects (next to their token-matched control). ``difficulty``: the
    level of the patched items (to find the recipes' gap in ``comparison.parquet``); ``recipes``: the grid's
    recipe names (to read a cross-model pair label ``A->B`` whose names hold ``->``)."""

    s = Section("Activation patching: what do the models use?")
    findings = []
    aimed = aim_words(results)
    if aimed:
        s.add_text(aimed)
    t = _read(results / "patching.parquet")
    patched = t
    if t is None or t.empty:
        s.missing.append("patching.parquet: the patch stage has not run")
    else:
        den = t[t["metric"] == "denoising"]
        recipes = sorted(den["recipe"].unique())
        for site in [x for x in ("resid_pre", "attn_out", "mlp_out") if x in set(den["site"])]:

            def draw(site=site):
                axes = plot_side_by_side(
                    den, by="recipe", kind="layer_pos", site=site, metric="denoising", values=recipes
                )
                return axes[0].figure

            _figure(
                s,
                folder,
                f"patch_{site}.png",
                f"Denoising patching of {site}, layer x position, per recipe (one colour scale)",
                draw,
            )
        if "head_out" in set(den["site"]):

            def draw_h():
                axes = plot_side_by_side(
                    den,
                    by="recipe",
                    kind="layer_head",
                    site="head_out",
                    metric="denoising",
                    pos_label="all",
                    values=recipes,
                )
                return axes[0].figure

            _figure(s, folder, "patch_heads.png", "Denoising patching of each head's output (all positions)", draw_h)
        for other in recipes:
            if other == baseline or baseline not in recipes:
                continue

            def draw_d(other=other):
                fig, ax = plt.subplots(figsize=(6.5, 3.6), layout="constrained")
                plot_difference(
                    den, other, baseline, by="recipe", kind="layer_pos", site="resid_pre", metric="denoising", ax=ax
                )
                return fig

            _figure(
                s,
                folder,
                f"patch_diff_{_file(other)}.png",
                f"resid_pre denoising map: {other} minus {baseline}, on the scale of the maps above; dots: "
                "cells whose difference is within the intervals",
                draw_d,
            )
    over = _read(results / "patching_over_training.parquet")
    if over is not None and not over.empty:
        site = "head_out" if "head_out" in set(over["site"]) else str(over["site"].iloc[0])
        pos = "all" if "all" in set(over["pos_label"].astype(str)) else "last"

        def draw_o():
            fig, ax = plt.subplots(figsize=(6.5, 3.6), layout="constrained")
            plot_strongest_cell_over_training(over, site=site, pos_label=pos, ax=ax)
            return fig

        _figure(
            s,
            folder,
            "patch_over_training.png",
            f"Over training: the strongest {site} cell's denoising effect ({pos} positions) at each saved "
            "checkpoint, mean over seeds (band: the seeds' range)",
            draw_o,
        )
    comparison = _read(results / "comparison.parquet")
    cm = _read(results / "cross_model.parquet")
    if cm is None or cm.empty:
        s.missing.append("cross_model.parquet: no cross-model patching (needs the baseline recipe)")
    else:
        known = set(recipes)
        for t in (comparison, patched):
            if t is not None and not t.empty:
                known |= {str(r) for col in ("recipe", "baseline") if col in t for r in t[col].dropna().unique()}
        findings += _cross_model(s, cm, comparison, baseline, known, difficulty)
    cr = _read(results / "cross_rendering.parquet")
    if cr is not None and not cr.empty:
        findings += _cross_rendering(s, cr)
    return s, findings


# --------------------------------------------------------------------------------------------------
# patching across models and renderings: a number is a finding only next to its control


def _excludes_zero(low, high) -> bool:
    return (_finite(low) and float(low) > 0) or (_finite(high) and float(high) < 0)


def _split_pair(label: str, recipes: set[str]) -> tuple[str, str]:
    """``("A", "B")`` of a cross-model label ``"A->B"``; recipe names may hold ``->`` themselves, so the
    split whose two sides are both known recipes wins (else the last ``->``)."""
    parts = str(label).split("->")
    splits = [("->".join(parts[:k]), "->".join(parts[k:])) for k in range(1, len(parts))]
    for a, b in splits:
        if a in recipes and b in recipes:
            return a, b
    return splits[-1] if splits else (str(label), "")


def _data_order_pair(label: str) -> bool:
    """Whether a cross-model label ``"A->B"`` patches a run into the run it differs from only in data order."""
    parts = label.split("->")
    return any(is_data_order_pair("->".join(parts[:k]), "->".join(parts[k:])) for k in range(1, len(parts)))


def aim_words(results: Path) -> str | None:
    """One sentence on what the patch, probe and attention stages looked at and why (``results/aim.json``,
    written by the job's :func:`~codetransfer.pipeline.aim`); None without the file."""
    path = results / "aim.json"
    if not path.is_file():
        return None
    try:
        a = json.loads(path.read_text())
        task, level = str(a["task"]), int(a["difficulty"])
        if a.get("found"):
            iv = with_interval(a["estimate"], a["ci_low_corrected"], a["ci_high_corrected"], signed=True)
            recipe, against = a["recipe"], a["against"]
            direction = a.get("direction")
            if direction not in ("advantage", "disadvantage"):  # an older record: read it off the sign
                direction = "advantage" if float(a["estimate"]) > 0 else "disadvantage"
            what = (
                f"an advantage of {recipe} over {against}"
                if direction == "advantage"
                else f"a disadvantage of {recipe} (it scores below {against})"
            )
            if "direction" not in a:  # chosen before the aim preferred advantages: by p alone
                why = "the distinguishable seed-paired gap with the smallest p"
            elif direction == "advantage":
                why = "the distinguishable seed-paired advantage with the smallest p"
            else:
                why = "no advantage is distinguishable, and this is the disadvantage with the smallest p"
            return (
                f"**Aim.** The instruments look at {task} level {level}, where the evaluation found a gap, "
                f"{what}: {recipe} - {against} = {iv} logits (corrected 95% "
                f"interval, Holm p {a['p_holm']:.2g}, {int(a['n_seeds'])} seeds); {why}."
            )
        why = str(a.get("reason", ""))
        return f"**Aim.** {task} level {level}, the configured task and level ({why})."
    except (ValueError, KeyError, TypeError) as e:
        raise CodetransferError(
            f"{path}: damaged aim record ({type(e).__name__}: {e}); delete it and rerun the job's analysis stages"
        ) from None


def _gap_words(gap, recipe: str, other: str) -> str:
    if gap is None:
        return f"results/comparison.parquet has no seed-paired comparison of {recipe} with {other} on these items"
    iv = with_interval(gap["estimate"], gap["ci_low_corrected"], gap["ci_high_corrected"], signed=True)
    where = (
        f"{gap['category']} levels pooled"
        if bool(gap.get("pooled", False))
        else f"{gap['task']} level {gap['difficulty']}"
    )
    return (
        f"{recipe} - {other} = {iv} in logit difference ({where}) over {int(gap['n_seeds'])} seed(s) "
        "(corrected 95% interval)"
    )


def _cross_model(
    s: Section, cm: pd.DataFrame, comparison: pd.DataFrame | None, baseline: str, recipes: set[str], difficulty
) -> list[str]:
    """Cross-model shares, each shown only where the two recipes' seed-paired gap excludes 0 (else "no gap
    to explain"); shares outside :data:`STABLE_SHARE` flagged as unstable; next to each share its same-recipe
    null, read on that pair's gap (:func:`~codetransfer.analysis.verdict.null_shares`)."""
    rows = cm[cm["metric"] == "cross_model"].copy()
    if rows.empty:
        return []
    pairs = [_split_pair(r, recipes) for r in rows["recipe"].astype(str)]
    rows["recipe_a"], rows["recipe_b"] = [a for a, _ in pairs], [b for _, b in pairs]
    rows["_cell"] = patched_cell(rows)
    same = rows["recipe_a"] == rows["recipe_b"]
    nulls, rows = rows[same], rows[~same]
    data_order = not nulls.empty and all(_data_order_pair(str(r)) for r in nulls["run"])
    readable = set(NULL_ENDPOINTS) <= set(cm.columns)
    s.add_text(
        "**Where code exposure changes the reasoning circuit.** Cross-model patching puts one component of one "
        f"model into the other on the same prompts, both ways (a recipe into the {baseline} model or its control: "
        "does the component suffice? and back: does the recipe's behaviour need it?); 'share of the gap' is the "
        "part of the two models' logit-difference gap on those prompts that the component carries (1 = all of it), "
        "with its 95% interval. A share is shown only where the two recipes differ beyond seed noise (the "
        "seed-paired comparison is distinguishable: its corrected interval excludes 0 and its Holm p is below 0.05, over at least 3 seeds); a share outside "
        f"[{STABLE_SHARE[0]}, {STABLE_SHARE[1]}] divides by a small gap and is flagged as unstable"
        + (
            "; no same-recipe (seed-vs-seed) pair was patched, so there is no null to show."
            if nulls.empty
            else "; 'null' is what another model of the receiving recipe, patched into the same run at the same "
            "cell, does there, as a share of the tested pair's gap: "
            + (
                "a run of the same recipe and init seed that shares its shared phases and differs only in the "
                "order of the later rows (the data-order null: it shows what a foreign model as close as that "
                "does, not one as far as the other recipe's)."
                if data_order
                else "the recipe's run of another seed."
            )
        )
    )
    findings, tables = [], []
    for (ra, rb), g in rows.groupby(["recipe_a", "recipe_b"], sort=True):
        task = str(g["task"].iloc[0])
        gap = recipe_gap(comparison, ra, rb, task, difficulty)
        if not has_gap(gap):
            s.add_text(
                f"{ra} into {rb} ({task}): no gap to explain — {_gap_words(gap, ra, rb)}; its cross-model shares "
                "are not reported, only the within-model maps above."
            )
            findings.append(
                f"Cross-model patching: no gap to explain between {ra} and {rb} ({_gap_words(gap, ra, rb)}), "
                "so no share of it is reported."
            )
            continue
        if not nulls.empty:
            null = null_shares(cm, g, rb)
            g = g.assign(
                null=[
                    f"{v:.2f}" if _finite(v) else "no null pair" if readable else "rerun the patch stage to read it"
                    for v in null
                ]
            )
        merged = _component_rows(g)
        stable = merged["value"].between(*STABLE_SHARE)
        top = merged[stable].sort_values("value", ascending=False).head(8)
        wild = merged[~stable & merged["value"].map(_finite)]
        wild = wild.loc[wild["value"].abs().sort_values(ascending=False).index].head(4)
        table = pd.concat([top, wild])
        table["reading"] = [
            f"unstable: outside [{STABLE_SHARE[0]}, {STABLE_SHARE[1]}]"
            if not STABLE_SHARE[0] <= v <= STABLE_SHARE[1]
            else (
                "interval excludes 0"
                if _excludes_zero(lo, hi)
                else "interval includes 0: not distinguishable from noise"
            )
            for v, lo, hi in zip(table["value"], table["ci_low"], table["ci_high"])
        ]
        tables.append(table)
        s.add_text(f"{ra} into {rb} ({task}): {_gap_words(gap, ra, rb)}.")
        if top.empty:
            lo, hi = STABLE_SHARE
            s.add_text(f"Every share of the {ra} - {rb} gap lies outside [{lo}, {hi}]: unstable, none is reported.")
            continue
        best = top.iloc[0]
        null = (
            f"; another model of {rb} ({'data-order' if data_order else 'seed'} null) gives {best['null']} of "
            "the gap there"
            if "null" in best and _finite(pd.to_numeric(best["null"], errors="coerce"))
            else ""
        )
        sig = (
            "interval excludes 0"
            if _excludes_zero(best.ci_low, best.ci_high)
            else "interval includes 0: not distinguishable from noise"
        )
        findings.append(
            f"Cross-model patching: of the gap {_gap_words(gap, ra, rb)}, the component carrying most is "
            f"{best.component} in {best.run} "
            f"({with_interval(best.value, best.ci_low, best.ci_high)} of it; {sig}{null})."
        )
    if tables:
        t = pd.concat(tables, ignore_index=True)
        keep = [c for c in ("run", "component", "value", "ci_low", "ci_high", "null", "reading") if c in t.columns]
        s.add_table(
            t[keep],
            intervals={"value": ("ci_low", "ci_high")},
            rename={"value": "share of the gap [95% interval]", "run": "patched pair",
                    "null": "null: same recipe and init seed, other data order (share of this gap)"
                    if data_order else "null: same recipe, other seed (share of this gap)"},
        )  # fmt: skip
    # a share is headlined before a "no gap" statement
    return sorted(findings, key=lambda f: "no gap to explain" in f)


NOISE = 1e-6
"""Differences smaller than this on a patching scale (1 = the whole clean-vs-counterfactual gap) are float
noise: a control equal to its score by construction differs from it by about 1e-7 (another forward pass)."""


def cross_rendering_reading(score, score_low, score_high, control, excess_low, noise: float = NOISE) -> str:
    """What one cross-rendering cell supports: a shared representation only where the score's interval
    and the interval of its excess over the token-matched control both lie above 0; token identity where
    the control lies within the score's interval (or at or above the score); a score or control outside
    :data:`STABLE_SHARE` divides by a small gap and is unstable. ``noise`` is the float tolerance of
    every comparison."""
    if not _finite(control):
        return "no control measured: not a finding"
    lo, hi = STABLE_SHARE
    if not all(_finite(v) and lo <= float(v) <= hi for v in (score, control)):
        return f"unstable: outside [{lo}, {hi}], not a finding"
    exceeds = _finite(excess_low) and float(excess_low) > noise
    if not ((_finite(score_low) and float(score_low) > noise) or (_finite(score_high) and float(score_high) < -noise)):
        if exceeds:
            return "exceeds its control, but the score's interval includes 0: not a finding"
        return "no effect (interval includes 0)"
    if exceeds:
        return "exceeds its control: a shared representation"
    c = float(control)
    within = _finite(score_low) and _finite(score_high) and score_low - noise <= c <= score_high + noise
    if within or (_finite(score) and c >= float(score) - noise):
        return "token identity, not a shared representation"
    return "not distinguishable from its control: not a finding"


def _cross_rendering(s: Section, cr: pd.DataFrame) -> list[str]:
    """Per run, the largest code->text effect next to its token-matched control and the cell that exceeds
    its control most; a "Shared representation" finding only where the excess interval lies above 0."""
    names = {"cross_rendering": "score", "cross_rendering_control": "control", "cross_rendering_excess": "excess",
             "within_rendering": "within"}  # fmt: skip
    cr = cr.assign(_cell=patched_cell(cr))
    keys = ["run", "recipe", "seed", "site", "layer", "head", "pos_label", "_cell"]
    base = cr[cr["metric"] == "cross_rendering"][keys].copy()
    if base.empty:
        return []
    for metric, name in names.items():
        part = cr[cr["metric"] == metric][["run", "_cell", "value", "ci_low", "ci_high"]]
        part = part.rename(columns={"value": name, "ci_low": f"{name}_low", "ci_high": f"{name}_high"})
        base = base.merge(part.drop_duplicates(["run", "_cell"]), on=["run", "_cell"], how="left")
    for name in names.values():  # an interval narrower than float noise is exact: printed as such
        v, lo, hi = base[name], base[f"{name}_low"], base[f"{name}_high"]
        exact = (hi - lo).abs() < NOISE
        v = v.where(~(exact & (v.abs() < NOISE)), 0.0)
        base[name], base[f"{name}_low"], base[f"{name}_high"] = v, lo.where(~exact, v), hi.where(~exact, v)
    base["reading"] = [
        cross_rendering_reading(*v)
        for v in zip(base["score"], base["score_low"], base["score_high"], base["control"], base["excess_low"])
    ]
    base["component"] = [_component_name(r) for _, r in base.iterrows()]
    shown, identity, shared, n_unstable = [], [], [], 0
    for _, g in base.groupby(["run"], sort=True):
        unstable = g["reading"].str.startswith("unstable")
        n_unstable += int(unstable.sum())
        g = g[g["score"].map(_finite) & ~unstable]
        if g.empty:
            continue
        effects = g[[_excludes_zero(a - NOISE, b + NOISE) for a, b in zip(g["score_low"], g["score_high"])]]
        best = (effects if not effects.empty else g).loc[lambda t: t["score"].idxmax()]  # the largest effect
        picked = [best]
        if best["reading"].startswith("token identity"):
            identity.append(best)
        lead = g[g["excess"].map(_finite)]
        if not lead.empty:
            picked.append(lead.loc[lead["excess"].idxmax()])  # the largest excess, a finding or not
            found = lead[lead["reading"].str.startswith("exceeds its control: a shared")]
            if not found.empty:  # the surest finding: the highest lower end
                top = found.loc[found["excess_low"].idxmax()]
                picked.append(top)
                shared.append(top)
        shown += list({r["_cell"]: r for r in picked}.values())
    s.add_text(
        "Cross-rendering patching: the code rendering of the clean world patched into the text rendering of "
        "the counterfactual at aligned positions (1 = the clean text's answer), next to its control — the "
        "same cell patched from the code rendering of the counterfactual world holding the same token at "
        "that position — and the excess over the control (95% intervals from the same item resamples). Per "
        "run: the largest effect (among scores whose interval excludes 0), and the cell that exceeds its "
        "control most. Only a score and an excess "
        "whose intervals lie above 0 show a representation the two renderings share; a control within the score's "
        "interval means the patch carries the token, not the world. The control rules out the token at the "
        "patched position, not the tokens the code prompt mentions before it (which attention can gather "
        "in any model)."
        + (
            f" {n_unstable} cell(s) whose score or control lies outside [{STABLE_SHARE[0]}, {STABLE_SHARE[1]}] "
            "(a small clean-vs-counterfactual gap on these items) are left out as unstable."
            if n_unstable
            else ""
        )
    )
    if not shown:
        s.add_text("No cross-rendering cell is stable: nothing to report.")
        return []
    t = pd.DataFrame(shown).infer_objects()
    s.add_table(
        t[["recipe", "seed", "component", "score", "score_low", "score_high", "control", "control_low",
           "control_high", "excess", "excess_low", "excess_high", "within", "within_low", "within_high", "reading"]],
        intervals={"score": ("score_low", "score_high"), "control": ("control_low", "control_high"),
                   "excess": ("excess_low", "excess_high"), "within": ("within_low", "within_high")},
        counts=("seed",),
        reasons={"control": "no control measured", "excess": "no control measured"},
        rename={"score": "code→text [95%]", "control": "control [95%]", "excess": "excess over control [95%]",
                "within": "text→text reference [95%]"},
    )  # fmt: skip
    for r in identity:
        s.add_text(
            f"{r.recipe} (seed {_seed(r.seed)}): the largest code→text effect, "
            f"{with_interval(r.score, r.score_low, r.score_high)} at {r.component}, is matched by its control "
            f"({with_interval(r.control, r.control_low, r.control_high)}): token identity, not a shared representation."
        )
    if not shared:
        s.add_text(
            "No cell's code→text effect exceeds its token-matched control by its interval: no representation "
            "shared by the two renderings is shown beyond token identity."
        )
        return []
    r = max(shared, key=lambda x: x.excess_low)
    return [
        f"Shared representation: in {r.recipe} (seed {_seed(r.seed)}) the code rendering's {r.component} restores "
        f"{with_interval(r.score, r.score_low, r.score_high)} of the text answer against "
        f"{with_interval(r.control, r.control_low, r.control_high)} for its token-matched control (excess "
        f"{with_interval(r.excess, r.excess_low, r.excess_high, signed=True)})."
    ]


def _seed(seed) -> str:
    return str(int(seed)) if _finite(seed) else "all"


def _attention(
    results: Path,
    folder: Path,
    baseline: str,
    phases,
    per_step: dict[str, int],
    vocab_size: int | None,
    out: Path,
    runs=None,
) -> tuple[Section, list[str]]:
    """The attention section; ``runs``: the runs whose heads the interactive views show (default: the
    complete runs in ``out``)."""

    s = Section("Attention heads")
    findings = []
    t = _read(results / "attention.parquet")
    if t is None or t.empty:
        s.missing.append("attention.parquet: the attention stage has not run")
        return s, findings
    recipes = sorted(t["recipe"].unique())
    for metric in [m for m in ("induction", "previous_token", "attn_to_answer_source") if m in set(t["metric"])]:

        def draw(metric=metric):
            fig, axes = plt.subplots(
                1, len(recipes), figsize=(3.9 * len(recipes), 3.1), squeeze=False, layout="constrained"
            )
            for ax, r in zip(axes[0], recipes):
                plot_head_scores(t, metric, ax=ax, recipe=r)
            return fig

        _figure(s, folder, f"heads_{metric}.png", f"{metric} score of every head, per recipe (one colour scale)", draw)
        if baseline in recipes:
            for other in recipes:
                if other == baseline:
                    continue

                def draw_d(metric=metric, other=other):
                    fig, ax = plt.subplots(figsize=(5, 3.1), layout="constrained")
                    plot_head_score_difference(t, other, baseline, metric, ax=ax)
                    return fig

                _figure(
                    s,
                    folder,
                    f"heads_{metric}_diff_{_file(other)}.png",
                    f"{metric}: {other} minus {baseline} (dots: within the intervals)",
                    draw_d,
                )
    over = _read(results / "attention_over_training.parquet")
    if over is not None and not over.empty:
        if "tokens" not in over.columns and per_step and set(over["run"]) <= set(per_step):
            over = over.assign(tokens=over["step"] * over["run"].map(per_step))

        def draw_over():
            metrics = [m for m in ("previous_token", "induction", "induction_loss") if m in set(over["metric"])]
            fig, axes = plt.subplots(
                1, len(metrics), figsize=(4.6 * len(metrics), 3.4), squeeze=False, layout="constrained"
            )
            for k, (ax, m) in enumerate(zip(axes[0], metrics)):
                plot_best_head_over_training(over, m, ax=ax, phases=phases, vocab_size=vocab_size)
                if k != len(metrics) - 1 and ax.get_legend() is not None:
                    ax.get_legend().remove()
            return fig

        _figure(
            s,
            folder,
            "heads_over_training.png",
            "When head roles appear: the best head's previous-token and induction scores, and the induction "
            "loss against the uniform-guess level, at every saved checkpoint",
            draw_over,
        )
    best = best_heads(t)
    if not best.empty:
        s.add_text(
            "Strongest induction head of each run (score on repeated random tokens: attention share on the token "
            "after the earlier copy, with its item-level 95% interval). Head indices are not shared between "
            "independently initialised seeds, so a recipe is read from its runs' best heads, not from one head "
            "averaged over seeds:"
        )
        s.add_table(
            best[["run", "recipe", "seed", "layer", "head", "value", "ci_low", "ci_high"]].rename(
                columns={"value": "induction score"}
            ),
            intervals={"induction score": ("ci_low", "ci_high")},
            counts=("seed", "layer", "head"),
        )

        def strongest(g: pd.DataFrame) -> str:
            if len(g) == 1:
                r = g.iloc[0]  # a Series: r.head would be its method
                where = f"L{int(r['layer'])}H{int(r['head'])}"
                return f"{r['recipe']} {where} {with_interval(r['value'], r['ci_low'], r['ci_high'])}"
            return f"{g['recipe'].iloc[0]} {' / '.join(f'{v:.2f}' for v in g['value'])} ({len(g)} runs)"

        findings.append(
            "Induction heads: each run's strongest score — "
            + ", ".join(strongest(g) for _, g in best.groupby("recipe", sort=True))
            + "."
        )
        _head_views(s, folder, out, t, best.drop_duplicates("recipe"), runs)
    return s, findings


def _circuit(results: Path, folder: Path, baseline: str) -> tuple[Section, list[str]]:
    """The circuit section (:mod:`codetransfer.analysis.circuit`): lookup heads, their ablation, the share of
    each recipe gap they carry next to control heads, CKA per layer against the seed null. Headlines: a share
    over at least MIN_SEEDS_DISTINGUISHABLE seeds above 0 and above the control heads' share by both
    ablations; a layer where every seed's CKA to the baseline lies below every seed-vs-seed CKA."""
    s = Section("Circuit: lookup heads, ablation and representation similarity")
    findings: list[str] = []
    gap = _read(results / "circuit_gap.parquet")
    drop = _read(results / "circuit.parquet")
    if gap is None or drop is None:
        s.missing.append("circuit_gap.parquet: the circuit stage has not run")
        return s, findings
    heads = _read(results / "circuit_heads.parquet")
    s.add_text(
        "Each run's lookup heads are its top heads by the attention stage's score "
        + (f"'{heads['by'].iloc[0]}'" if heads is not None and len(heads) else "")
        + " (retrieval: attention from the final position to the answer's source minus the distractors); as "
        "many control heads are drawn at random from its heads that are not candidates for the circuit (a score "
        "below half the lowest chosen head's, and not a previous-token partner on repeated random tokens"
        + (
            f"; {int((~heads['eligible'].astype(bool)).sum())} control heads filled the sets up where too few "
            "were left: the lowest-scoring others"
            if heads is not None and "eligible" in heads.columns and not heads["eligible"].astype(bool).all()
            else ""
        )
        + "). Both sets are mean- and resample-ablated "
        "on the task's items. The share of a recipe's gap over its reference is the part of the gap (logit "
        "difference) that ablating the recipe's heads in both models removes; it is withheld where the gap's "
        "interval includes 0, and it means something only where it exceeds the control heads' share. With fewer "
        f"than {MIN_SEEDS_DISTINGUISHABLE} seeds an interval is item-level, not a claim."
    )
    pooled = gap[gap["run"].astype(str).str.endswith("*") & (gap["metric"] == "logit_diff")]
    if not pooled.empty:
        keys = ["recipe", "reference", "comparison", "method"]
        chosen = pooled[pooled["heads_set"] == "chosen"]
        control = pooled[pooled["heads_set"] == "control"][[*keys, "value", "ci_low", "ci_high"]]
        t = chosen.merge(
            control.rename(columns={"value": "control", "ci_low": "control_low", "ci_high": "control_high"}),
            on=keys,
            how="left",
        ).rename(columns={"value": "share", "ci_low": "share_low", "ci_high": "share_high", "n_seeds": "seeds"})
        t = t[[*keys, "gap", "gap_low", "gap_high", "share", "share_low", "share_high", "control", "control_low",
               "control_high", "seeds"]].sort_values(["comparison", *keys]).reset_index(drop=True)  # fmt: skip
        s.add_table(
            t,
            intervals={"gap": ("gap_low", "gap_high"), "share": ("share_low", "share_high"),
                       "control": ("control_low", "control_high")},
            counts=("seeds",),
            reasons={"share": "withheld: the gap's interval includes 0", "control": "withheld"},
            rename={"gap": "gap (logit diff) [95%]", "share": "share removed, chosen heads [95%]",
                    "control": "share removed, control heads [95%]"},
        )  # fmt: skip

        def beats_control(r) -> bool:
            return (
                r.seeds >= MIN_SEEDS_DISTINGUISHABLE
                and _finite(r.share_low)
                and r.share_low > 0
                and (not _finite(r.control_high) or r.share_low > r.control_high)
            )

        for (recipe, reference, comparison), g in t.groupby(["recipe", "reference", "comparison"], sort=True):
            mean = g[g["method"] == "mean"]
            if comparison == "seed_null" or mean.empty or not all(beats_control(r) for r in g.itertuples()):
                continue  # every ablation (mean and resample) must beat its control heads
            r = next(mean.itertuples())
            findings.append(
                f"Circuit: ablating {recipe}'s lookup heads removes "
                f"{with_interval(r.share, r.share_low, r.share_high)} of its logit-difference gap over "
                f"{reference} (mean ablation, {int(r.seeds)} seeds), against "
                f"{with_interval(r.control, r.control_low, r.control_high)} for as many control heads."
            )
    _figure(s, folder, "circuit_share.png", "Share of each recipe gap removed by ablating the recipe's lookup heads "
            "(mean ablation; grey: control heads)", lambda: plot_gap_share(gap).figure)  # fmt: skip
    _figure(s, folder, "circuit_drop.png", "Accuracy drop when each recipe's lookup heads are mean-ablated "
            "(grey: control heads), over seeds", lambda: plot_ablation_drop(drop).figure)  # fmt: skip
    over = _read(results / "circuit_over_training.parquet")
    if over is not None and not over.empty:
        _figure(s, folder, "circuit_over_training.png", "Induction score (on repeated random tokens, whatever "
                "score chose them) of the heads chosen at the end, at every saved checkpoint (a falling line: the "
                "circuit erodes; band: 95% t interval over seeds, for recipes with 3 or more seeds)",
                lambda: plot_heads_over_training(over).figure)  # fmt: skip
    cka = _read(results / "cka.parquet")
    if cka is None or cka.empty:
        s.missing.append("cka.parquet: no pairs of runs were compared")
        return s, findings
    _figure(s, folder, "circuit_cka.png", "Linear CKA of the residual stream to the baseline per layer (band: "
            "range over seeds), and between seeds of the baseline (the null)", lambda: plot_cka(cka).figure)  # fmt: skip
    cross = cka[cka["comparison"] != "seed_null"]
    null = cka[cka["comparison"] == "seed_null"].groupby("layer")["value"]
    summary = cross.groupby(["recipe_a", "recipe_b", "layer"], as_index=False).agg(
        cka=("value", "mean"), seed_null=("seed_null", "first"), seeds=("value", "size"),
        within_seed_null=("within_seed_null", lambda v: bool(v.fillna(False).all())), highest=("value", "max"),
    )  # fmt: skip
    s.add_text(
        "Linear CKA per layer, each recipe against its reference (mean over seeds), next to the seed-vs-seed "
        "CKA of the baseline (where the grid has data seeds: its data-order runs against their init seed's own "
        "order), and whether it is not below that null in every seed ('within seed null': the two differ there "
        "no more than seeds do). This describes the models; it does not decide whether patching between them "
        "is meaningful: that is read against the patching null (arms branched from one base, far below a "
        "data-order null in CKA, still carry the planted circuit in the control-aligned grid; docs/control.md)."
    )
    s.add_table(
        summary.drop(columns="highest").rename(columns={"recipe_a": "recipe", "recipe_b": "reference"}),
        counts=("layer", "seeds"),
        reasons={"seed_null": "no seed pairs"},
    )
    if not null.size().empty:
        low = null.min()
        for r in summary[summary["recipe_b"] == baseline].itertuples():
            if r.seeds >= MIN_SEEDS_DISTINGUISHABLE and r.layer in low.index and r.highest < low[r.layer]:
                findings.append(
                    f"Representation similarity: {r.recipe_a} differs from {baseline} at layer {int(r.layer)} more "
                    f"than seeds of {baseline} differ (CKA {r.cka:.2f} in every seed below the seed-vs-seed "
                    f"{low[r.layer]:.2f})."
                )
                break
    return s, findings


def _verdicts(results: Path, tmp: Path, grid, baseline: str, recipes) -> tuple[Section, str | None, bool]:
    """The verdict section (:mod:`codetransfer.analysis.verdict`): per instrument, what it found against its
    control, and on a grid with a planted answer whether it found it; also written as ``verdicts.parquet``.
    Returns the section, its one-sentence summary and whether the grid has a planted answer."""
    planted = planted_answer(grid)
    controls = {r.name: r.compare_with for r in grid.recipes} if grid is not None else {}
    table = verdicts(read_tables(results), recipes, baseline, controls, planted)
    title = (
        "Did each instrument find the planted answer?" if planted else "What each instrument found, against its control"
    )
    s = Section(title)
    if table.empty or (table["verdict"] == "not run").all():
        s.missing.append("no result tables: run the eval and analysis stages")
        return s, None, planted is not None
    table.to_parquet(tmp / "verdicts.parquet", index=False)
    if planted is not None:
        s.add_text(
            f"This grid has a known answer: the {planted.arm} arm was trained first on rows that reward copying a "
            "repeated span, which plants the lookup circuit (a previous-token head and an induction head); "
            f"{', '.join(planted.controls)} were not"
            + (f" ({planted.null[0]} saw the same tokens shuffled: nothing to copy)" if planted.null else "")
            + ". An instrument that does not separate them misses a transfer known to be there; one that "
            "separates the two control arms reports a difference that is not there. Probing and similarity "
            "have no known answer here (the copying circuit stores no world state): they are shown, not judged."
        )
    s.add_text(
        "Each row is one instrument on one pair of recipes; its finding counts only against the control named. "
        "Seed intervals computed here (attention, ablation, cross-model patching) are Bonferroni-corrected over "
        "the pairs; evaluation uses the comparison table's Holm-corrected intervals."
    )
    shown = table.assign(pair=table["recipe"] + " vs " + table["reference"])
    cols = ["instrument", "pair", "verdict", "evidence", "control"]
    if planted is not None:
        shown["expected"] = shown["expected"].map({True: "the planted difference", False: "nothing (null)"})
        cols.insert(2, "expected")
    s.add_table(shown[cols], reasons={"expected": "no known answer"})
    return s, verdict_words(table, planted), planted is not None


def _head_views(s: Section, folder: Path, out: Path, table: pd.DataFrame, best: pd.DataFrame, found=None) -> None:
    """CircuitsVis attention views of the named heads' layers (one page per recipe, on repeated random
    tokens), each at most VIEW_MAX_BYTES; skipped with a reason when circuitsvis is not installed.
    ``found``: the runs to show (default: the complete runs in ``out``)."""
    try:
        import circuitsvis
    except ImportError:
        s.missing.append(
            "interactive head views: the circuitsvis package is not installed (pip install 'codetransfer[notebooks]')"
        )
        return

    by_run, by_recipe = {}, {}
    try:
        for r in find_runs(out, complete_only=True) if found is None else found:
            by_recipe.setdefault(r.recipe, r)
            by_run[r.name] = r
    except CodetransferError as e:
        s.missing.append(f"interactive head views: {e}")
        return
    for row in best.itertuples():  # the row's own run where it names one, else a run of its recipe
        info = by_run.get(getattr(row, "run", None)) or by_recipe.get(row.recipe)
        if info is None:
            s.missing.append(f"interactive view of {row.recipe} L{row.layer}H{row.head}: no complete run")
            continue
        try:
            run = load_run(info)
            tok = run.tokenizer
            ids = repeated_random_tokens(ordinary_token_ids(tok), 1, 12, 0, tok.bos_token_id)
            with torch.no_grad():
                pat = attention_patterns(run.bridge, ids)
            words = [tok.decode([i]) for i in ids[0].tolist()]
            page = attention_heads_view(pat, words, layer=int(row.layer))._repr_html_()
        except (CodetransferError, RuntimeError, ValueError, KeyError) as e:
            s.missing.append(f"interactive view of {row.recipe}: {str(e).splitlines()[0][:160]}")
            continue
        # CircuitsVis inlines its 1.3 MB script bundle in every view: the report ships it once
        # (circuitsvis.js) and each view keeps only its element and its render call
        start, end = page.find("CircuitsVis.render("), page.rfind("</script>")
        uuid = page[page.find('id="') + 4 : page.find('"', page.find('id="') + 4)]
        if start < 0 or end < start or not uuid.startswith("circuits-vis-"):
            s.missing.append(f"interactive view of {row.recipe}: unexpected CircuitsVis output")
            continue
        call = page[start:end].replace("</", "<\\/")
        snippet = f'<div id="{uuid}" style="margin: 15px 0;"></div><script>{call}</script>'
        if len(snippet.encode()) > VIEW_MAX_BYTES:
            s.missing.append(
                f"interactive view of {row.recipe} layer {int(row.layer)}: "
                f"{len(snippet.encode()) // 1000} kB is over the {VIEW_MAX_BYTES // 1000} kB limit"
            )
            continue
        bundle = folder / "circuitsvis.js"
        if not bundle.exists():
            bundle.write_text(
                (Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js").read_text(encoding="utf-8"),
                encoding="utf-8",
            )

        s.add_view(
            Markup(snippet),
            f"{row.recipe}: every head of layer {int(row.layer)} (named head: "
            f"H{int(row.head)}) on a sequence of random tokens repeated twice (CircuitsVis; choose a head "
            "to see its pattern)",
        )


# --------------------------------------------------------------------------------------------------


def _inline(text: str):

    out = html.escape(str(text))
    parts = out.split("**")
    return Markup("".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts)))


def _environment():

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"], default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["inline"] = _inline
    env.filters["md"] = md_escape
    return env


def render(sections: list[Section], headline: list[str], title: str, subtitle: str) -> tuple[str, str]:
    """The report's HTML page and markdown summary from the templates."""
    env = _environment()
    views = any(kind == "view" for s in sections for kind, _ in s.blocks)
    ctx = dict(sections=sections, headline=headline, title=title, subtitle=subtitle, views=views)
    page = env.get_template("report.html.j2").render(**ctx)
    md_env = _environment()
    md_env.autoescape = False
    md = md_env.get_template("summary.md.j2").render(**ctx)
    return page, md


def write_report(out: str | Path, grid, settings, models=None) -> Path:
    """Write ``out/report/index.html`` and ``summary.md`` from ``out/results``; returns the html path.

    ``grid``: the grid the runs were trained from; or, for a job over checkpoints codetransfer did not train,
    ``grid=None`` and ``models``: the model set (a model-set file or a loaded
    :class:`~codetransfer.trained.modelset.ModelSet`): a "Model set" section replaces "The grid", and there are
    no phases or training data to show."""

    matplotlib.use("Agg")
    out = Path(out)
    results = out / "results"
    folder = out / "report"
    tmp = out / ".report.tmp"

    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if models is not None:
            from codetransfer.trained.modelset import load_model_set

            models = models if hasattr(models, "entries") else load_model_set(models)
        elif grid is None:
            raise CodetransferError("report: give the grid the runs were trained from, or the model set")
        return _write_report(out, grid, settings, results, folder, tmp, models)
    except KeyError as e:  # a table that reads but lacks a column the report needs
        raise CodetransferError(
            f"{results}: a result table has no column {e}; delete the damaged table and rerun the stage that writes it"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left behind on a failure


def _write_report(out: Path, grid, settings, results: Path, folder: Path, tmp: Path, models=None) -> Path:

    baseline = getattr(settings, "baseline", "text-only")
    if models is not None:  # checkpoints codetransfer did not train: no phases, no training data
        from codetransfer.trained.modelset import model_runs

        runs = model_runs(models)
        phases, per_step, recipes = None, {}, models.groups
        vocab = _vocab_size(runs)
        first = _model_set_section(models, runs)
    else:
        runs = None
        phases, per_step, recipes = _phases(out, grid), _tokens_per_step(out), [r.name for r in grid.recipes]
        vocab = grid.tokenizer.vocab_size
        first = _grid_section(out, grid, tmp)
    verdict, verdict_line, planted = _verdicts(results, tmp, grid, baseline, recipes)
    sections, headline = ([verdict, first] if planted else [first, verdict]), []
    for build in (
        lambda: _eval_section(results, tmp, baseline),
        lambda: _learning(results, tmp, phases, models is not None),
        lambda: _probes(results, tmp),
        lambda: _patching(results, tmp, baseline, getattr(settings, "patch_difficulty", None), recipes),
        lambda: _attention(results, tmp, baseline, phases, per_step, vocab, out, runs),
        lambda: _circuit(results, tmp, baseline),
    ):
        s, f = build()
        sections.append(s)
        headline += f
    # the headlines: evaluation, circuit (cross-model), representation/heads, and an ablation or similarity
    # finding that beats its control (circuit stage)
    headline = (
        headline[:1]
        + [h for h in headline if h.startswith("Cross-model")][:1]
        + [h for h in headline if h.startswith(("Shared representation", "Probing", "Induction"))][:1]
        + [h for h in headline if h.startswith(("Circuit:", "Representation similarity"))][:1]
    )
    if verdict_line is not None:  # a grid with a planted answer opens with it; any other grid ends with it
        headline = [verdict_line, *headline] if planted else [*headline, verdict_line]
    headline = list(dict.fromkeys(headline))
    if not headline:
        headline = ["No result tables were found: run the eval, probe, patch and attention stages."]
    title = (
        f"codetransfer report — model set {models.name}"
        if models is not None
        else f"codetransfer report — grid {grid.name}"
    )
    probed = ", ".join(names(getattr(settings, "probe_tasks", ()))) or "none"
    patched = ", ".join(names(getattr(settings, "patch_task", ()))) or "none"
    subtitle = (
        f"Baseline {'group' if models is not None else 'recipe'}: {baseline}. Probed tasks: {probed}; patched task: {patched}. "
        "Intervals are 95% bootstrap intervals; numbers are rounded to what their interval supports."
    )
    page, md = render(sections, headline, title, subtitle)
    (tmp / "index.html").write_text(page)
    (tmp / "summary.md").write_text(md)
    (tmp / "headline.json").write_text(json.dumps(headline, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    screenshot(folder / "index.html", folder / "report.png")
    return folder / "index.html"


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 900) -> bool:
    """The page's first screen as a PNG, through headless Chromium when it is installed (else nothing).
    Returns whether the file was written."""

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return False
    try:
        subprocess.run(
            [
                exe,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                f"--window-size={width},{height}",
                f"--screenshot={png}",
                Path(page).resolve().as_uri(),
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return png.is_file()
