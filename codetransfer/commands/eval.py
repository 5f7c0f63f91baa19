"""codetransfer eval --runs DIR --out RESULTS [--tasks T,...] [--n-items K] [--baseline RECIPE]

Scores every complete run under DIR on every task (items generated once, seeded, shared by all runs),
plus the held-out loss of every source when DIR holds the grid's prepared data (``DIR/data/*.heldout.npy``),
and writes, all at the end and atomically (nothing partial is left on error):

* ``RESULTS/eval.parquet``: the tidy table (``run, recipe, seed, task, category, difficulty, metric,
  value, ci_low, ci_high, chance, copy_chance, n_items``); per-run rows and per-recipe rows aggregated over seeds
  (``run = "<recipe>*"``, ``seed`` empty). Held-out loss rows have ``task = "heldout:<source>"``.
* ``RESULTS/summary.csv``: relative change of every recipe vs the baseline recipe per category
  (accuracy on tasks; held-out loss per source category), with bootstrap intervals. The baseline is
  ``--baseline``, else (with ``--models``) the model set's ``baseline`` group, else ``text-only``.
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

from pathlib import Path

from codetransfer.errors import CodetransferError

DEFAULT_BASELINE = "text-only"
"""The summary's baseline recipe when --baseline is not given (``analysis.grid.DEFAULT_BASELINE``)."""


def add_arguments(p) -> None:
    p.add_argument("--runs", default=None, help="a grid output folder (or its runs/ folder, or one run)")
    p.add_argument(
        "--models",
        default=None,
        help="a model-set TOML file naming checkpoints (instead of --runs; see docs/models.md)",
    )
    p.add_argument("--out", required=True, help="results folder (created); eval.parquet, summary.csv go there")
    p.add_argument(
        "--tasks", default=None, help="comma-separated task families (default: all; see `codetransfer tasks`)"
    )
    p.add_argument("--n-items", type=int, default=200, help="items per task (default 200)")
    p.add_argument("--seed", type=int, default=0, help="item generator and bootstrap seed (default 0)")
    p.add_argument(
        "--baseline",
        default=None,
        help=f"baseline recipe of the summary (default: the model set's baseline with --models, else '{DEFAULT_BASELINE}')",
    )
    p.add_argument("--batch-size", type=int, default=32, help="rows per forward (default 32)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument(
        "--heldout-windows",
        type=int,
        default=64,
        help="held-out context windows per source (default 64; 0 skips the held-out loss)",
    )
    p.add_argument("--max-difficulty", type=int, default=None, help="keep items of this difficulty or lower")
    p.add_argument(
        "--fit-context",
        action="store_true",
        default=True,
        help="drop the difficulty levels whose items are longer than the models' context, and say so (default)",
    )
    p.add_argument(
        "--no-fit-context",
        dest="fit_context",
        action="store_false",
        help="refuse items longer than the models' context instead of dropping their levels",
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--checkpoints",
        action="store_true",
        help="also score every saved checkpoint of every run: learning curves in learning.parquet",
    )
    p.add_argument("--curve-items", type=int, default=60, help="items per task for the learning curves (default 60)")
    p.add_argument(
        "--curve-max-difficulty",
        type=int,
        default=0,
        help="hardest level of the learning curves' items (default 0, the easiest)",
    )


def _source_categories(heldout):
    """``{source: 'code'|'text'}`` from the grid's data manifest (see ``analysis.grid.source_categories``)."""
    from codetransfer.analysis.grid import source_categories

    return source_categories(heldout)


def _model_set_baseline(models) -> str | None:
    """The ``baseline`` group a model-set file names (docs/models.md), or None (no file, or none named)."""
    if models is None:
        return None
    from codetransfer.trained.modelset import load_model_set

    return load_model_set(models, resolve=False).baseline


def run(args) -> int:
    from codetransfer.analysis.evaluate import format_summary
    from codetransfer.analysis.grid import evaluate_grid
    from codetransfer.artifacts import write_tables
    from codetransfer.trained import check_same_grid
    from codetransfer.trained.modelset import select_runs
    from codetransfer.trained.checks import check_baseline

    for flag, value, low in (
        ("--n-items", args.n_items, 1),
        ("--batch-size", args.batch_size, 1),
        ("--n-boot", args.n_boot, 10),
        ("--heldout-windows", args.heldout_windows, 0),
    ):
        if value < low:
            raise CodetransferError(f"{flag}: expected an integer >= {low}, got {value}")
    if args.checkpoints and (args.curve_items < 1 or args.curve_max_difficulty < 0):
        flag, value, low = (
            ("--curve-items", args.curve_items, 1)
            if args.curve_items < 1
            else ("--curve-max-difficulty", args.curve_max_difficulty, 0)
        )
        raise CodetransferError(f"{flag}: expected an integer >= {low}, got {value}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CodetransferError(f"--out: {out} is a file; pass a folder for the results")
    runs_dir = Path(args.runs) if args.runs is not None else None
    infos = select_runs(args.runs, args.models)
    check_same_grid(infos)
    recipes = sorted({i.recipe for i in infos})
    baseline = args.baseline or _model_set_baseline(args.models) or DEFAULT_BASELINE
    if args.baseline is not None:
        check_baseline(baseline, recipes)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    written = evaluate_grid(
        infos,
        runs_dir=runs_dir,
        tasks=tasks,
        n_items=args.n_items,
        seed=args.seed,
        baseline=baseline,
        batch_size=args.batch_size,
        n_boot=args.n_boot,
        heldout_windows=args.heldout_windows,
        max_difficulty=args.max_difficulty,
        fit_context=args.fit_context,
        checkpoints=args.checkpoints,
        curve_items_per_task=args.curve_items,
        curve_max_difficulty=args.curve_max_difficulty,
        device=args.device,
    )
    write_tables(out, written)
    table, summary = written["eval.parquet"], written["summary.csv"]
    for of, s in summary.groupby("of", sort=False):
        print(format_summary(s))
    print(f"wrote {out / 'eval.parquet'} ({len(table)} rows), {out / 'summary.csv'}, {out / 'scores.parquet'}")
    if "learning.parquet" in written:
        curves = written["learning_scores.parquet"].groupby("run")["step"].nunique()
        print(
            f"wrote {out / 'learning.parquet'} ({len(written['learning.parquet'])} rows, "
            f"{int(curves.sum())} checkpoints of {len(curves)} runs)"
        )
    return 0
