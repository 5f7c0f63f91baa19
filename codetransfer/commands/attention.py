"""codetransfer attention --runs DIR --out RESULTS [--tasks T,...] [--n-items K]

Scores every head of every complete run under DIR (see :mod:`codetransfer.analysis.attention`):
previous-token, duplicate-token, induction, entropy and BOS scores and the induction loss (with each
head's ablation effect) on repeated random tokens of the grid's vocabulary, and per task (items
generated once, seeded, shared by all runs; twins in the other rendering too) the attention from the
final position to the answer source and the distractors, the effect of ablating each head on the
answer-vs-distractor logit difference, and each head's direct logit attribution. Writes, at the end
and atomically (nothing partial is left on error), ``RESULTS/attention.parquet``: one row per
run x task x rendering x layer x head x metric (``run, recipe, seed, task, rendering, layer, head,
metric, value, ci_low, ci_high``). With ``--checkpoints`` it also scores every saved checkpoint of
every run (pattern scores and induction loss: when each head role appears during training) into
``RESULTS/attention_over_training.parquet`` (the same columns plus ``step``); plot it with
``codetransfer.analysis.attention_plots.plot_score_over_training``.
"""

from __future__ import annotations

from pathlib import Path

from codetransfer.errors import CodetransferError

OUT_FILE = "attention.parquet"
OVER_TRAINING_FILE = "attention_over_training.parquet"


def add_arguments(p) -> None:
    p.add_argument("--runs", default=None, help="a grid output folder (or its runs/ folder, or one run)")
    p.add_argument(
        "--models",
        default=None,
        help="a model-set TOML file naming checkpoints (instead of --runs; see docs/models.md)",
    )
    p.add_argument("--out", required=True, help=f"results folder (created); {OUT_FILE} goes there")
    p.add_argument(
        "--tasks",
        default=None,
        help="comma-separated task families (default: all; see `codetransfer tasks`; 'none' for random tokens only)",
    )
    p.add_argument("--n-items", type=int, default=64, help="items per task (default 64)")
    p.add_argument("--n-seqs", type=int, default=32, help="repeated random sequences (default 32)")
    p.add_argument(
        "--half-len",
        type=int,
        default=None,
        help="tokens per half of a repeated random sequence (default 20, or what fits the context)",
    )
    p.add_argument("--ablation", choices=("mean", "zero"), default="mean", help="head ablation (default mean)")
    p.add_argument(
        "--max-difficulty",
        type=int,
        default=None,
        help="only items of this difficulty or lower (default: the hardest level whose items fit the models' context)",
    )
    p.add_argument("--seed", type=int, default=0, help="item generator, random tokens and bootstrap seed (default 0)")
    p.add_argument("--batch-size", type=int, default=32, help="rows per forward (default 32)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--checkpoints",
        action="store_true",
        help=f"also score every saved checkpoint of every run (pattern scores and induction loss over "
        f"training) into {OVER_TRAINING_FILE}; runs need the grid field train.snapshot_every > 0",
    )


def run(args) -> int:
    from codetransfer.analysis.grid import attention_grid
    from codetransfer.artifacts import write_tables
    from codetransfer.tasks import get_task, task_names
    from codetransfer.trained.modelset import select_runs

    for flag, value, low in (
        ("--n-items", args.n_items, 1),
        ("--n-seqs", args.n_seqs, 1),
        ("--half-len", args.half_len or 2, 2),
        ("--batch-size", args.batch_size, 1),
        ("--n-boot", args.n_boot, 0),
    ):
        if value < low:
            raise CodetransferError(f"{flag}: expected an integer >= {low}, got {value}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CodetransferError(f"--out: {out} is a file; pass a folder for the results")
    if args.tasks is None:
        tasks = list(task_names())
    elif args.tasks.strip().lower() == "none":
        tasks = []
    else:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for t in tasks:
        get_task(t)  # unknown names: one-line did-you-mean error, before any work
    infos = select_runs(args.runs, args.models)
    max_difficulty = args.max_difficulty
    if max_difficulty is None and tasks:  # the levels whose items fit the models' context
        from codetransfer.analysis.grid import fitting_max_difficulty

        max_difficulty = fitting_max_difficulty(tasks, infos, args.n_items, args.seed)
    tables = attention_grid(
        infos,
        tasks,
        n_items=args.n_items,
        n_seqs=args.n_seqs,
        half_len=args.half_len,
        ablation=args.ablation,
        max_difficulty=max_difficulty,
        seed=args.seed,
        batch_size=args.batch_size,
        n_boot=args.n_boot,
        checkpoints=args.checkpoints,
        device=args.device,
    )
    write_tables(out, tables)
    print(
        f"wrote {out / OUT_FILE} ({len(tables[OUT_FILE])} rows, {len(infos)} runs, tasks: {', '.join(tasks) or 'none'})"
        + (f", {out / OVER_TRAINING_FILE}" if OVER_TRAINING_FILE in tables else "")
    )
    return 0
