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
* ``RESULTS/losses.parquet``: the per-window held-out losses of every run (when the grid's data is found).

With ``--checkpoints`` it also scores every saved checkpoint of every run (``RUN/checkpoints/step-N/``,
kept when the grid's ``train.snapshot_every`` > 0, and the final model) on the easiest levels
(``--curve-max-difficulty``, default 0; ``--curve-items`` per task, default 60) and writes with the
others ``RESULTS/learning.parquet`` (the learning curves, :mod:`codetransfer.analysis.learning`:
eval.parquet's columns plus ``step`` and ``tokens``) and ``RESULTS/learning_scores.parquet`` (their
per-item scores). A run without intermediate checkpoints is left out with a note; when no run has
any, ``--checkpoints`` is refused before anything is scored.
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
    p.add_argument("--checkpoints", action="store_true",
                   help="also score every saved checkpoint of every run: learning curves in learning.parquet")
    p.add_argument("--curve-items", type=int, default=60, help="items per task for the learning curves (default 60)")
    p.add_argument("--curve-max-difficulty", type=int, default=0,
                   help="hardest level of the learning curves' items (default 0, the easiest)")


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
        check_fits_context,
        fit_to_context,
        format_summary,
        heldout_scores,
        make_items,
        score_runs,
    )
    from codetransfer.tasks import task_names
    from codetransfer.trained import check_same_grid, find_runs, load_run
    from codetransfer.trained.loading import read_json
    from codetransfer.trained.tokenizer import load_tokenizer

    for flag, value, low in (("--n-items", args.n_items, 1), ("--batch-size", args.batch_size, 1),
                             ("--n-boot", args.n_boot, 10), ("--heldout-windows", args.heldout_windows, 0)):
        if value < low:
            raise CodetransferError(f"{flag}: expected an integer >= {low}, got {value}")
    if args.checkpoints and (args.curve_items < 1 or args.curve_max_difficulty < 0):
        flag, value, low = (("--curve-items", args.curve_items, 1) if args.curve_items < 1
                            else ("--curve-max-difficulty", args.curve_max_difficulty, 0))
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
    if args.baseline is not None:
        from codetransfer.trained.checks import check_baseline

        check_baseline(baseline, recipes)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else list(task_names())
    items = make_items(tasks, args.n_items, args.seed, args.max_difficulty)
    heldout = _heldout_arrays(runs_dir, infos) if args.heldout_windows > 0 else {}
    curves = checkpoint_curves(infos, runs_dir) if args.checkpoints else {}

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
    if curves:
        curve_items = _curve_items(tasks, args, tokenizer, n_ctx, log)

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
    losses = pd.concat(losses, ignore_index=True) if losses else None
    if baseline not in recipes:
        log(f"note: no '{baseline}' runs, so no relative-change summary (pass --baseline RECIPE)")
    table, summary = eval_tables(scores, losses, baseline, args.n_boot, args.seed)
    written = {"eval.parquet": table, "summary.csv": summary, "scores.parquet": scores}
    if losses is not None:
        written["losses.parquet"] = losses
    if curves:
        from codetransfer.analysis.learning import learning_table_from_scores

        written["learning_scores.parquet"] = learning_scores(infos, curves, curve_items, args.batch_size,
                                                             args.device, log)
        written["learning.parquet"] = learning_table_from_scores(written["learning_scores.parquet"], args.n_boot,
                                                                 seed=args.seed)
    write_tables(out, written)
    for of, s in summary.groupby("of", sort=False):
        print(format_summary(s))
    print(f"wrote {out / 'eval.parquet'} ({len(table)} rows), {out / 'summary.csv'}, {out / 'scores.parquet'}")
    if curves:
        print(f"wrote {out / 'learning.parquet'} ({len(written['learning.parquet'])} rows, "
              f"{sum(len(c) for c in curves.values())} checkpoints of {len(curves)} runs)")
    return 0


def eval_tables(scores, losses, baseline: str, n_boot: int, seed: int):
    """``(eval table, summary)`` from per-item ``scores`` and per-window held-out ``losses`` (or None) of runs.

    What ``codetransfer eval`` writes; the main job calls it on the scores of per-run units, so that one
    changed recipe re-scores one run and only this cheap step sees every run.
    """
    import pandas as pd

    from codetransfer.analysis.evaluate import SUMMARY_COLUMNS, relative_change_summary, tidy_table

    recipes = set(scores["recipe"])
    tables = [tidy_table(scores, n_boot, seed=seed)]
    summaries = []
    if baseline in recipes:
        summaries.append(relative_change_summary(scores, baseline, "accuracy", n_boot, seed=seed))
    if losses is not None and len(losses):
        tables.append(tidy_table(losses, n_boot, seed=seed))
        if baseline in recipes:
            summaries.append(relative_change_summary(losses, baseline, "loss", n_boot, seed=seed))
    table = pd.concat(tables, ignore_index=True)
    table["seed"] = table["seed"].astype("Int64")
    summary = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    return table, summary


# --------------------------------------------------------------------------------------------------
# learning curves (--checkpoints)


def checkpoint_curves(infos, runs_dir) -> dict[str, list[tuple[int, Path]]]:
    """``{run: [(step, folder), ...]}`` for the runs that kept intermediate checkpoints (their final model
    last); a one-line note for each run without; a one-line error when no run has any or when a
    checkpoint is damaged (checked here, before any model is scored)."""
    from codetransfer.trained.loading import check_model_folder
    from codetransfer.trained.runs import run_checkpoints

    out, without = {}, []
    for info in infos:
        ckpts = list(run_checkpoints(info).items())
        if len(ckpts) > 1:
            for _, folder in ckpts:
                check_model_folder(folder)
            out[info.name] = ckpts
        else:
            without.append(info.name)
    if not out:
        raise CodetransferError(
            f"--checkpoints: no run in {runs_dir} kept intermediate checkpoints (RUN/checkpoints/step-N/); "
            "set the grid field train.snapshot_every > 0 (e.g. 250) and train the grid into a new --out folder"
        )
    for name in without:
        print(f"note: run {name} has no intermediate checkpoints (trained with train.snapshot_every = 0); "
              "left out of learning.parquet", file=sys.stderr, flush=True)
    return out


def _curve_items(tasks, args, tokenizer, n_ctx: int, log) -> dict:
    """The learning curves' items (``learning_items``), fitted to the context like the evaluation's."""
    from codetransfer.analysis.evaluate import check_fits_context, fit_to_context
    from codetransfer.analysis.learning import learning_items

    items = learning_items(tasks, args.curve_items, args.seed, args.curve_max_difficulty)
    if not args.fit_context:
        check_fits_context(items, tokenizer, n_ctx, hint="pass --fit-context to drop those levels, "
                           "a lower --curve-max-difficulty, or --tasks without them")
        return items
    items, dropped = fit_to_context(items, tokenizer, n_ctx)
    for task, levels in dropped.items():
        log(f"note: learning curves: {task}: difficulty {', '.join(map(str, levels))} dropped "
            f"(longer than n_ctx={n_ctx})")
    if not items:
        raise CodetransferError(f"--curve-max-difficulty: no task has curve items that fit the context n_ctx={n_ctx}")
    return items


def learning_scores(infos, curves, items, batch_size: int, device, log=None):
    """Per-item scores (``score_runs`` rows plus ``step`` and ``tokens``) of every checkpoint in ``curves``.

    Each checkpoint folder is loaded here (analyses never load models) as a fresh bridge and scored once;
    a checkpoint of shared phases that several branched runs borrow is scored once and listed for each.
    """
    import pandas as pd

    from codetransfer.analysis.evaluate import score_runs
    from codetransfer.analysis.learning import tokens_per_step
    from codetransfer.trained import LoadedRun
    from codetransfer.trained.loading import load_bridge

    cache, frames = {}, []
    for info in infos:
        if info.name not in curves:
            continue
        per_step = tokens_per_step(info.record)
        for step, folder in curves[info.name]:
            key = Path(folder).resolve()
            if key not in cache:
                if log is not None:
                    log(f"learning curve of run {info.name}: step {step}")
                bridge, tokenizer = load_bridge(folder, device=device)
                cache[key] = score_runs([LoadedRun(bridge, tokenizer, info)], items, batch_size, device)
                del bridge
            frames.append(cache[key].assign(run=info.name, recipe=info.recipe, seed=info.seed, step=int(step),
                                            tokens=int(step) * per_step))
    return pd.concat(frames, ignore_index=True)
