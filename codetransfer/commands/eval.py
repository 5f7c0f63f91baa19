"""codetransfer eval --runs DIR --out RESULTS [--tasks T,...] [--n-items K] [--baseline RECIPE]

Scores every complete run under DIR on every task (items generated once, seeded, shared by all runs),
plus the held-out loss of every source when DIR holds the grid's prepared data (``DIR/data/*.heldout.npy``),
and writes, all at the end and atomically (nothing partial is left on error):

* ``RESULTS/eval.parquet``: the tidy table (``run, recipe, seed, task, category, difficulty, metric,
  value, ci_low, ci_high, chance, copy_chance, n_items``); per-run rows and per-recipe rows aggregated over seeds
  (``run = "<recipe>*"``, ``seed`` empty). Held-out loss rows have ``task = "heldout:<source>"``.
* ``RESULTS/summary.csv``: relative change of every recipe vs the baseline recipe per category
  (accuracy on tasks; held-out loss per source category), with bootstrap intervals.
* ``RESULTS/scores.parquet``: the per-item scores (candidate log-probs, correct, logit_diff) of every run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from codetransfer.commands import write_tables
from codetransfer.errors import CodetransferError, did_you_mean

DEFAULT_BASELINE = "text-only"


def add_arguments(p) -> None:
    p.add_argument("--runs", required=True, help="a grid output folder (or its runs/ folder, or one run)")
    p.add_argument("--out", required=True, help="results folder (created); eval.parquet, summary.csv go there")
    p.add_argument("--tasks", default=None, help="comma-separated task families (default: all; see `codetransfer tasks`)")
    p.add_argument("--n-items", type=int, default=200, help="items per task (default 200)")
    p.add_argument("--seed", type=int, default=0, help="item generator and bootstrap seed (default 0)")
    p.add_argument("--baseline", default=None, help=f"baseline recipe of the summary (default '{DEFAULT_BASELINE}')")
    p.add_argument("--batch-size", type=int, default=32, help="rows per forward (default 32)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--heldout-windows", type=int, default=64,
                   help="held-out context windows per source (default 64; 0 skips the held-out loss)")
    p.add_argument("--max-difficulty", type=int, default=None, help="keep items of this difficulty or lower")
    p.add_argument("--fit-context", action="store_true",
                   help="drop the difficulty levels whose items are longer than the models' context (default: refuse)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _heldout_arrays(runs_dir: Path, infos) -> dict[str, Path]:
    """``{source: path}`` of the grid's held-out token arrays, if the grid's data folder is found."""
    for root in (runs_dir, runs_dir.parent, Path(infos[0].path).parent.parent):
        data = root / "data"
        if data.is_dir():
            found = {p.name[: -len(".heldout.npy")]: p for p in sorted(data.glob("*.heldout.npy"))}
            if found:
                return found
    return {}


def _source_categories(heldout: dict[str, Path]) -> dict[str, str]:
    """``{source: 'code'|'text'}`` from the grid's data manifest (written by the training room)."""
    if not heldout:
        return {}
    manifest = next(iter(heldout.values())).parent / "manifest.json"
    if not manifest.is_file():
        return {}
    import json

    sources = json.loads(manifest.read_text()).get("sources", {})
    return {name: info["category"] for name, info in sources.items() if "category" in info}


def run(args) -> int:
    import pandas as pd

    from codetransfer.analysis.evaluate import (
        SUMMARY_COLUMNS,
        check_fits_context,
        fit_to_context,
        format_summary,
        heldout_scores,
        make_items,
        relative_change_summary,
        score_runs,
        tidy_table,
    )
    from codetransfer.tasks import task_names
    from codetransfer.trained import check_same_grid, find_runs, load_run
    from codetransfer.trained.loading import read_json
    from codetransfer.trained.tokenizer import load_tokenizer

    for flag, value, low in (("--n-items", args.n_items, 1), ("--batch-size", args.batch_size, 1),
                             ("--n-boot", args.n_boot, 10), ("--heldout-windows", args.heldout_windows, 0)):
        if value < low:
            raise CodetransferError(f"{flag}: expected an integer >= {low}, got {value}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CodetransferError(f"--out: {out} is a file; pass a folder for the results")
    runs_dir = Path(args.runs)
    infos = find_runs(runs_dir, complete_only=True)
    if not infos:
        raise CodetransferError(f"--runs: no complete runs in {runs_dir}; train them with 'codetransfer train'")
    check_same_grid(infos)
    recipes = sorted({i.recipe for i in infos})
    baseline = args.baseline or DEFAULT_BASELINE
    if baseline not in recipes and args.baseline is not None:
        raise CodetransferError(
            f"--baseline: recipe '{baseline}' is not among the runs' recipes{did_you_mean(baseline, recipes)} "
            f"({', '.join(recipes)})"
        )
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else list(task_names())
    items = make_items(tasks, args.n_items, args.seed, args.max_difficulty)
    heldout = _heldout_arrays(runs_dir, infos) if args.heldout_windows > 0 else {}

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    # Runs of one grid share shape and tokenizer (check_same_grid): check every item before loading a model.
    n_ctx = int(read_json(Path(infos[0].path) / "config.json", "model config")["max_position_embeddings"])
    tokenizer = load_tokenizer(infos[0].path)
    if args.fit_context:
        items, dropped = fit_to_context(items, tokenizer, n_ctx)
        for task, levels in dropped.items():
            log(f"note: {task}: difficulty {', '.join(map(str, levels))} dropped (longer than n_ctx={n_ctx})")
        if not items:
            raise CodetransferError(f"--fit-context: no task has items that fit the context n_ctx={n_ctx}")
    else:
        check_fits_context(items, tokenizer, n_ctx, hint="pass --fit-context to drop those levels, "
                           "--max-difficulty D, or --tasks without them")

    scores, losses = [], []
    for info in infos:
        loaded = load_run(info, device=args.device)
        scores.append(score_runs([loaded], items, args.batch_size, args.device, progress=log))
        if heldout:
            log(f"held-out loss of run {info.name} on {', '.join(heldout)}")
            ls = heldout_scores(loaded.bridge, heldout, batch_size=8, device=args.device,
                                max_windows=args.heldout_windows, categories=_source_categories(heldout))
            losses.append(ls.assign(run=info.name, recipe=info.recipe, seed=info.seed))
        del loaded
    scores = pd.concat(scores, ignore_index=True)
    tables = [tidy_table(scores, args.n_boot, seed=args.seed)]
    summaries = []
    if baseline in recipes:
        summaries.append(relative_change_summary(scores, baseline, "accuracy", args.n_boot, seed=args.seed))
    else:
        log(f"note: no '{baseline}' runs, so no relative-change summary (pass --baseline RECIPE)")
    if losses:
        losses = pd.concat(losses, ignore_index=True)
        tables.append(tidy_table(losses, args.n_boot, seed=args.seed))
        if baseline in recipes:
            summaries.append(relative_change_summary(losses, baseline, "loss", args.n_boot, seed=args.seed))
    table = pd.concat(tables, ignore_index=True)
    table["seed"] = table["seed"].astype("Int64")
    summary = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    write_tables(out, {"eval.parquet": table, "summary.csv": summary, "scores.parquet": scores})
    for of, s in summary.groupby("of", sort=False):
        print(format_summary(s))
    print(f"wrote {out / 'eval.parquet'} ({len(table)} rows), {out / 'summary.csv'}, {out / 'scores.parquet'}")
    return 0
