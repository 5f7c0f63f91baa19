"""The report of a main job: ``DIR/report/index.html`` (static, offline) and ``DIR/report/summary.md``.

Built from the result tables only (compute once, plot after): the grid, the paper-style table,
evaluation curves, learning curves (when the grid kept checkpoints), probing curves, patching maps,
head tables, and the headline findings — each claim with its interval, null results stated as such. A figure that cannot be drawn (its table is
missing or holds no such rows) is listed with the reason instead of silently left out.
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from codetransfer.errors import CodetransferError


@dataclass
class Section:
    """A titled part of the report: paragraphs, tables and figures in reading order."""

    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def add_text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def add_table(self, md: str) -> None:
        self.blocks.append(("table", md))

    def add_figure(self, file: str, caption: str) -> None:
        self.blocks.append(("figure", (file, caption)))


def _read(path: Path) -> pd.DataFrame | None:
    from codetransfer.trained.checks import read_table

    if path.exists():  # a damaged table is refused naming the file (delete it and rerun its stage)
        return read_table(path, "result table", fix="delete it and rerun the stage that writes it")
    return None


def _pct(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:+.1f}%"


def _figure(section: Section, folder: Path, name: str, caption: str, draw) -> None:
    """Draw with ``draw()`` (which returns a matplotlib Figure) into folder/name.png, or note why not."""
    import matplotlib.pyplot as plt

    try:
        fig = draw()
    except (CodetransferError, KeyError, ValueError, IndexError) as e:
        section.missing.append(f"{caption}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}")
        plt.close("all")
        return
    fig.savefig(folder / name, dpi=110, bbox_inches="tight")
    plt.close(fig)
    section.add_figure(name, caption)


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------


def _grid_section(out: Path, grid, folder: Path) -> Section:
    import matplotlib.pyplot as plt

    from codetransfer.trained import runs_table

    s = Section("The grid")
    s.add_text(f"Grid **{grid.name}**: {grid.model.n_layers} layers, d_model {grid.model.d_model}, "
                  f"{grid.model.n_heads} heads, context {grid.model.n_ctx}, vocabulary {grid.tokenizer.vocab_size}; "
                  f"seeds {list(grid.seeds)}. Sources: " + ", ".join(f"{k} ({v.kind})" for k, v in grid.sources.items()) + ".")
    code_sources = {k for k, v in grid.sources.items() if v.kind in ("stdlib", "synthetic_program") or v.category == "code"}

    def draw():
        fig, ax = plt.subplots(figsize=(9, 0.55 * len(grid.recipes) + 1.2))
        cmap = plt.get_cmap("coolwarm")
        seen: dict[str, str] = {}
        for i, r in enumerate(grid.recipes):
            x = 0.0
            prefix = []
            for p in r.phases:
                prefix.append(json.dumps([p.name, p.mixture, p.tokens], sort_keys=True))
                code = sum(w for k, w in p.weights().items() if k in code_sources)
                ax.barh(i, p.tokens / 1e6, left=x, color=cmap(code), edgecolor="black")
                key = "|".join(prefix)
                label = p.name + (" (shared)" if key in seen and seen[key] != r.name else "")
                seen.setdefault(key, r.name)
                ax.text(x + p.tokens / 2e6, i, f"{label}\n{100 * code:.0f}% code", ha="center", va="center", fontsize=7)
                x += p.tokens / 1e6
        ax.set_yticks(range(len(grid.recipes)), [r.name for r in grid.recipes])
        ax.invert_yaxis()
        ax.set_xlabel("training tokens (millions); colour = code share of the phase")
        ax.set_title("recipes and phases (phases marked 'shared' are trained once and branched from)")
        return fig

    _figure(s, folder, "grid.png", "Recipes, phases, code share and branch points", draw)
    table = runs_table(out)
    if not table.empty:
        keep = [c for c in table.columns if c in ("run", "recipe", "seed", "steps", "branched_from")
                or c.startswith("tokens/") or c.startswith("val/")]
        s.add_table(_md_table(table[keep].fillna(0)))
    return s


def _eval_section(results: Path, folder: Path, baseline: str) -> tuple[Section, list[str]]:
    import matplotlib.pyplot as plt

    from codetransfer.analysis.evaluate import plot_accuracy_vs_difficulty, plot_relative_change

    s = Section("Evaluation: the paper-style table")
    findings = []
    table, summary = _read(results / "eval.parquet"), _read(results / "summary.csv")
    if table is None:
        s.missing.append("eval.parquet: the eval stage has not run")
        return s, findings
    if summary is not None and not summary.empty:
        rows = []
        for _, r in summary.iterrows():
            distinct = r.ci_low > 0 or r.ci_high < 0
            rows.append({"recipe": r.recipe, "category": r.category, "of": r["of"],
                         "change vs " + baseline: f"{_pct(r.value)} [{_pct(r.ci_low)}, {_pct(r.ci_high)}]",
                         "distinguishable from noise": "yes" if distinct else "no"})
        s.add_table(_md_table(pd.DataFrame(rows)))
        s.add_text(f"Relative change of each recipe against **{baseline}**, 95% bootstrap intervals over items "
                      "(and seeds where there are several). 'distinguishable from noise' = the interval excludes 0. "
                      "For held-out loss, negative is better.")
        acc = summary[(summary["of"] == "accuracy") & (summary["category"] == "reasoning")].dropna(subset=["value"])
        if not acc.empty:
            best = acc.loc[acc["value"].idxmax()]
            verdict = "distinguishable from noise" if best.ci_low > 0 or best.ci_high < 0 else "NOT distinguishable from noise"
            findings.append(f"Reasoning accuracy: best recipe vs {baseline} is {best.recipe} at {_pct(best.value)} "
                            f"[{_pct(best.ci_low)}, {_pct(best.ci_high)}] ({verdict} at this number of seeds and items).")

        def draw_rel():
            fig, ax = plt.subplots(figsize=(8, 3.5))
            plot_relative_change(summary[summary["of"] == "accuracy"], ax=ax)
            return fig

        _figure(s, folder, "relative_change.png", f"Relative change of accuracy vs {baseline} per category", draw_rel)
    tasks = [t for t in table["task"].unique() if not str(t).startswith("heldout:")]
    for task in tasks:
        def draw(task=task):
            fig, ax = plt.subplots(figsize=(6, 3.5))
            plot_accuracy_vs_difficulty(table, task=task, ax=ax)
            return fig

        _figure(s, folder, f"eval_{task}.png", f"{task}: accuracy against difficulty per recipe", draw)
    run_rows = table[(table["metric"] == "accuracy") & (table["difficulty"].astype(str) == "0")
                     & ~table["run"].astype(str).str.endswith("*")]
    if not run_rows.empty and baseline in set(run_rows["recipe"]):
        b = run_rows[run_rows["recipe"] == baseline]
        above = b[b["ci_low"] > b["chance"]]
        s.add_text(f"Easiest level, {baseline}: above chance (interval) on "
                      f"{', '.join(sorted(above['task'])) or 'no task'}; at chance on "
                      f"{', '.join(sorted(set(b['task']) - set(above['task']))) or 'no task'}.")
        if "copy_chance" in b.columns:
            keyed = b[b["ci_low"] > b["copy_chance"]]
            s.add_text("Above the copy baseline (guessing among the values the prompt mentions, which needs no "
                       f"use of the question): {', '.join(sorted(keyed['task'])) or 'no task'}.")
    return s, findings


def _learning(results: Path, folder: Path) -> tuple[Section, list[str]]:
    """Learning curves (issue #3): accuracy against training tokens on the easiest level, one panel per
    reasoning family, and the first checkpoint whose interval clears chance."""
    import matplotlib.pyplot as plt

    from codetransfer.analysis.learning import first_above_chance, plot_learning_curves

    s = Section("Learning curves")
    t = _read(results / "learning.parquet")
    if t is None or t.empty:
        s.missing.append("learning.parquet: no intermediate checkpoints were scored (train the grid with "
                         "train.snapshot_every > 0)")
        return s, []
    t = t.assign(difficulty=t["difficulty"].astype(str))
    levels = sorted((d for d in t["difficulty"].unique() if d != "all"), key=int)
    if not levels:
        s.missing.append("learning.parquet: no per-level rows")
        return s, []
    level = levels[0]
    reasoning = sorted(t.loc[t["category"] == "reasoning", "task"].unique()) or sorted(t["task"].unique())

    def draw():
        cols = min(4, len(reasoning))
        rows = -(-len(reasoning) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.2 * rows), squeeze=False, layout="constrained")
        for k, ax in enumerate(axes.flat):
            if k >= len(reasoning):
                ax.set_visible(False)
                continue
            plot_learning_curves(t, task=reasoning[k], difficulty=level, ax=ax)
            if k and ax.get_legend() is not None:
                ax.get_legend().remove()
        return fig

    steps = [int(x) for x in sorted(t["step"].unique())]
    listed = ", ".join(map(str, steps)) if len(steps) <= 12 else f"{steps[0]}, {steps[1]}, ..., {steps[-1]}"
    _figure(s, folder, "learning_curves.png",
            f"Accuracy at difficulty {level} against training tokens, one line per recipe (reasoning families)", draw)
    s.add_text(f"Every saved checkpoint and the final model ({len(steps)} steps: {listed}) scored on the same "
               f"difficulty-{level} items; bands are 95% bootstrap intervals over items (and "
               "seeds), the dashed line is chance, the dotted line the accuracy of copying a value the prompt "
               "mentions. Points of one curve share items and training history.")
    first = first_above_chance(t, difficulty=level)
    if not first.empty:
        first = first.assign(cell=[f"{tok / 1e6:.2f}M tokens (step {st})" if pd.notna(st) else "not above chance"
                                   for st, tok in zip(first["step"], first["tokens"])])
        wide = first.pivot(index="recipe", columns="task", values="cell").fillna("").reset_index()
        s.add_text(f"First checkpoint whose accuracy interval lies above chance (difficulty {level}):")
        s.add_table(_md_table(wide))
    return s, []


def _probes(results: Path, folder: Path) -> tuple[Section, list[str]]:
    import matplotlib.pyplot as plt

    from codetransfer.probes.plots import first_decodable_layer, plot_probe_curves

    s = Section("Probing: where is the world state decodable?")
    findings = []
    t = _read(results / "probes.parquet")
    if t is None or t.empty:
        s.missing.append("probes.parquet: the probe stage has not run or found nothing to probe")
        return s, findings
    same = t[t["fit_on"] == t["test_on"]] if "fit_on" in t else t
    cross = t[t["fit_on"] != t["test_on"]] if "fit_on" in t else t.iloc[:0]
    for (task, site), g in same.groupby(["task", "site"]):
        pooled = g.groupby(["run", "recipe", "seed", "layer", "metric"], as_index=False)[["value", "ci_low", "ci_high"]].mean()
        pooled = pooled.assign(task=task, site=site, pos="pooled", probe=g["probe"].iloc[0], head=-1)
        for metric in ("accuracy", "selectivity"):
            def draw(pooled=pooled, metric=metric):
                fig, ax = plt.subplots(figsize=(6, 3.5))
                plot_probe_curves(pooled, metric=metric, ax=ax)
                ax.set_title(f"{task} / {site}: probe {metric} (mean over labels)")
                return fig

            _figure(s, folder, f"probe_{task}_{site}_{metric}.png",
                    f"{task}, {site}: probe {metric} against layer, one line per recipe", draw)
        fd = first_decodable_layer(pooled, threshold=float(pooled[pooled.metric == "accuracy"]["value"].max()) * 0.9)
        if not fd.empty:
            s.add_table(_md_table(fd))
        sel = pooled[pooled.metric == "selectivity"].groupby("recipe")["value"].max()
        random = sel[sel.index.str.endswith("(random init)")]
        trained = sel[~sel.index.str.endswith("(random init)")]
        if len(trained):
            finding = (f"Probing ({task}, {site}): best-layer selectivity by recipe — "
                       + ", ".join(f"{k} {v:.2f}" for k, v in trained.sort_values(ascending=False).items()))
            if len(random):
                finding += (f"; random-init twins of the same shape reach {random.min():.2f}–{random.max():.2f}, "
                            + ("so the trained models' probes do NOT beat the random-init baseline"
                               if random.max() >= trained.max() else "below the trained models"))
            findings.append(finding + ".")
    if not cross.empty:
        c = cross[cross.metric == "accuracy"].groupby(["recipe", "fit_on", "test_on"])["value"].mean().reset_index()
        s.add_text("Cross-format probing (fit on one rendering, test on the other), mean accuracy over layers and labels:")
        s.add_table(_md_table(c.round(3)))
    return s, findings


def _patching(results: Path, folder: Path, baseline: str) -> tuple[Section, list[str]]:
    import matplotlib.pyplot as plt

    from codetransfer.analysis.patching_plots import plot_difference, plot_side_by_side

    s = Section("Activation patching: what do the models use?")
    findings = []
    t = _read(results / "patching.parquet")
    if t is None or t.empty:
        s.missing.append("patching.parquet: the patch stage has not run")
    else:
        den = t[t["metric"] == "denoising"]
        recipes = sorted(den["recipe"].unique())
        for site in [x for x in ("resid_pre", "attn_out", "mlp_out") if x in set(den["site"])]:
            def draw(site=site):
                axes = plot_side_by_side(den, by="recipe", kind="layer_pos", site=site, metric="denoising")
                return axes[0].figure

            _figure(s, folder, f"patch_{site}.png", f"Denoising patching of {site}, layer x position, per recipe", draw)
        if "head_out" in set(den["site"]):
            def draw_h():
                axes = plot_side_by_side(den, by="recipe", kind="layer_head", site="head_out", metric="denoising",
                                         pos_label="all")
                return axes[0].figure

            _figure(s, folder, "patch_heads.png", "Denoising patching of each head's output (all positions)", draw_h)
        for other in recipes:
            if other == baseline or baseline not in recipes:
                continue

            def draw_d(other=other):
                fig, ax = plt.subplots(figsize=(6, 3.5))
                plot_difference(den, other, baseline, by="recipe", kind="layer_pos", site="resid_pre",
                                metric="denoising", ax=ax)
                return fig

            _figure(s, folder, f"patch_diff_{other.replace('>', '')}.png",
                    f"resid_pre denoising map: {other} minus {baseline}", draw_d)
    cm = _read(results / "cross_model.parquet")
    if cm is None or cm.empty:
        s.missing.append("cross_model.parquet: no cross-model patching (needs the baseline recipe)")
    else:
        rows = cm[cm["metric"] == "cross_model"].copy()
        if not rows.empty:
            def component(r):
                head = f" H{int(r['head'])}" if pd.notna(r.get("head")) and r["head"] >= 0 else ""
                pos = r.get("pos_label") if pd.notna(r.get("pos_label")) else r.get("pos")
                return f"{r.site} L{r.layer}{head}" + (f" @{pos}" if pd.notna(pos) and str(pos) != "all" else "")

            label = rows.apply(component, axis=1)
            rows = rows.assign(component=label)
            src_col = "source_recipe" if "source_recipe" in rows else None
            top = rows.sort_values("value", ascending=False).head(8)
            keep = [c for c in ("source_recipe", "recipe", "component", "value", "ci_low", "ci_high") if c in top.columns]
            s.add_text("**Where code exposure changes the reasoning circuit.** Cross-model patching puts one component "
                          f"of a code-exposed model into the {baseline} model on the same prompts; 'value' is the share of "
                          "the code-exposed model's advantage that the component carries (1 = all of it).")
            s.add_table(_md_table(top[keep].round(3)))
            best = top.iloc[0]
            sig = "interval excludes 0" if best.ci_low > 0 else "interval includes 0: not distinguishable from noise"
            findings.append(f"Cross-model patching: the component carrying most of the gap is {best.component} "
                            f"({best.value:.2f} [{best.ci_low:.2f}, {best.ci_high:.2f}] of the advantage; {sig})"
                            + (f", from {best[src_col]}" if src_col else "") + ".")
    cr = _read(results / "cross_rendering.parquet")
    if cr is not None and not cr.empty:
        g = cr.groupby(["recipe", "metric"])["value"].max().unstack()
        s.add_text("Cross-rendering patching (code rendering patched into the text rendering at aligned positions), "
                      "best site per recipe; compare with the same patch taken from the text rendering:")
        s.add_table(_md_table(g.reset_index().round(3)))
        if "cross_rendering" in g:
            best = g["cross_rendering"].idxmax()
            findings.append(f"Shared representation: the largest code→text patch effect is {g['cross_rendering'].max():.2f} "
                            f"(recipe {best}; within-text reference "
                            f"{g.get('within_rendering', pd.Series(dtype=float)).get(best, float('nan')):.2f}).")
    return s, findings


def _attention(results: Path, folder: Path, baseline: str) -> tuple[Section, list[str]]:
    import matplotlib.pyplot as plt

    from codetransfer.analysis.attention_plots import plot_head_score_difference, plot_head_scores

    s = Section("Attention heads")
    findings = []
    t = _read(results / "attention.parquet")
    if t is None or t.empty:
        s.missing.append("attention.parquet: the attention stage has not run")
        return s, findings
    recipes = sorted(t["recipe"].unique())
    for metric in [m for m in ("induction", "previous_token", "attn_to_answer_source") if m in set(t["metric"])]:
        def draw(metric=metric):
            fig, axes = plt.subplots(1, len(recipes), figsize=(3.6 * len(recipes), 3), squeeze=False, layout="constrained")
            for ax, r in zip(axes[0], recipes):
                plot_head_scores(t, metric, ax=ax, recipe=r)
            return fig

        _figure(s, folder, f"heads_{metric}.png", f"{metric} score of every head, per recipe", draw)
        if baseline in recipes:
            for other in recipes:
                if other == baseline:
                    continue

                def draw_d(metric=metric, other=other):
                    fig, ax = plt.subplots(figsize=(4, 3))
                    plot_head_score_difference(t, other, baseline, metric, ax=ax)
                    return fig

                _figure(s, folder, f"heads_{metric}_diff_{other.replace('>', '')}.png", f"{metric}: {other} minus {baseline}", draw_d)
    over = _read(results / "attention_over_training.parquet")
    if over is not None and not over.empty:
        def draw_over():
            metrics = [m for m in ("previous_token", "induction", "induction_loss") if m in set(over["metric"])]
            fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3), squeeze=False, layout="constrained")
            for ax, m in zip(axes[0], metrics):
                o = over[over["metric"] == m]
                agg = "min" if m == "induction_loss" else "max"  # the loss is one value per run and step
                for r, g in o.groupby("recipe"):
                    line = g.groupby("step")["value"].agg(agg)
                    ax.plot(line.index, line.values, marker="o", label=r)
                ax.set_xlabel("step")
                ax.set_ylabel(m if m == "induction_loss" else f"best head's {m} score")
            axes[0][0].legend(fontsize="small")
            return fig

        _figure(s, folder, "heads_over_training.png",
                "When head roles appear: the best head's previous-token and induction scores, and the induction "
                "loss, at every saved checkpoint", draw_over)
    ind = t[t["metric"] == "induction"]
    if not ind.empty:
        best = ind.loc[ind.groupby("recipe")["value"].idxmax()][["recipe", "layer", "head", "value"]]
        s.add_text("Strongest induction head per recipe:")
        s.add_table(_md_table(best.round(3)))
        findings.append("Induction heads: strongest score per recipe — "
                        + ", ".join(f"{r.recipe} L{r.layer}H{r.head} {r.value:.2f}" for r in best.itertuples()) + ".")
    return s, findings


def _html(sections: list[Section], headline: list[str], title: str) -> str:
    def md_table_to_html(md: str) -> str:
        lines = [ln for ln in md.splitlines() if ln.strip()]
        head = [c.strip() for c in lines[0].strip("|").split("|")]
        body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
        h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
        b = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
        return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"

    def inline(text: str) -> str:
        out = html.escape(text)
        parts = out.split("**")
        return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))

    body = [f"<h1>{html.escape(title)}</h1>", "<h2>Headline findings</h2><ol>"]
    body += [f"<li>{inline(h)}</li>" for h in headline] + ["</ol>"]
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        for kind, payload in s.blocks:
            if kind == "text":
                body.append(f"<p>{inline(payload)}</p>")
            elif kind == "table":
                body.append(md_table_to_html(payload))
            else:
                f, cap = payload
                body.append(f'<figure><img src="{html.escape(f)}" alt="{html.escape(cap)}">'
                            f'<figcaption>{html.escape(cap)}</figcaption></figure>')
        if s.missing:
            body.append("<p class='missing'>Not shown: " + "; ".join(html.escape(m) for m in s.missing) + "</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}"
             "table{border-collapse:collapse;margin:0.6em 0;font-size:0.9em}td,th{border:1px solid #bbb;padding:3px 7px}"
             "img{max-width:100%}figure{margin:1em 0}figcaption{color:#555;font-size:0.9em}.missing{color:#a33}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def _markdown(sections: list[Section], headline: list[str], title: str) -> str:
    out = [f"# {title}", "", "## Headline findings", ""]
    out += [f"{i}. {h}" for i, h in enumerate(headline, 1)] + [""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for kind, payload in s.blocks:
            out += [f"![{payload[1]}]({payload[0]})" if kind == "figure" else payload, ""]
        if s.missing:
            out += ["Not shown: " + "; ".join(s.missing), ""]
    return "\n".join(out)


def write_report(out: str | Path, grid, settings) -> Path:
    """Write ``out/report/index.html`` and ``summary.md`` from ``out/results``; returns the html path."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    results = out / "results"
    folder = out / "report"
    tmp = out / ".report.tmp"
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        return _write_report(out, grid, settings, results, folder, tmp)
    except KeyError as e:  # a table that reads but lacks a column the report needs
        raise CodetransferError(f"{results}: a result table has no column {e}; delete the damaged table and rerun "
                                "the stage that writes it") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left behind on a failure


def _write_report(out: Path, grid, settings, results: Path, folder: Path, tmp: Path) -> Path:
    import shutil

    baseline = settings.baseline
    sections, headline = [_grid_section(out, grid, tmp)], []
    for build in (lambda: _eval_section(results, tmp, baseline), lambda: _learning(results, tmp),
                  lambda: _probes(results, tmp),
                  lambda: _patching(results, tmp, baseline), lambda: _attention(results, tmp, baseline)):
        s, f = build()
        sections.append(s)
        headline += f
    # the three headlines: evaluation, circuit (cross-model), representation/heads
    headline = headline[:1] + [h for h in headline if h.startswith("Cross-model")][:1] + \
        [h for h in headline if h.startswith(("Shared representation", "Probing", "Induction"))][:1]
    if not headline:
        headline = ["No result tables were found: run the eval, probe, patch and attention stages."]
    title = f"codetransfer report — grid {grid.name}"
    (tmp / "index.html").write_text(_html(sections, headline, title))
    (tmp / "summary.md").write_text(_markdown(sections, headline, title))
    (tmp / "headline.json").write_text(json.dumps(headline, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder / "index.html"
