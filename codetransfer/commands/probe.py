"""codetransfer probe --runs DIR --tasks T[,T...] --sites S[,S...] --out RESULTS [--shard i/n] [--n-items K]

Probing sweep over runs × tasks × sites (all layers of each site kind, or ``kind.layer``). Each
(run, task, site) unit extracts activations at the tokens that carry the task items' labels, fits
linear probes on entity- (or template-) held-out splits with control tasks, MDL and cross-format
(code ↔ text) transfer, and writes one parquet part; finished units are skipped, so the command can
be re-run after an interruption or run as several shards (``--shard 0/4`` ... ``--shard 3/4``, on
several machines sharing RESULTS). All parts are merged into ``RESULTS/probes.parquet``.
"""

from __future__ import annotations

from codetransfer.errors import CodetransferError


def add_arguments(parser) -> None:
    parser.add_argument("--runs", default=None, help="grid output folder (or one run folder) with trained runs")
    parser.add_argument(
        "--models",
        default=None,
        help="a model-set TOML file naming checkpoints (instead of --runs; see docs/models.md)",
    )
    parser.add_argument("--tasks", required=True, help="comma-separated task families, e.g. entity_tracking,code_state")
    parser.add_argument(
        "--sites",
        default="resid_post",
        help="comma-separated sites: resid_pre, resid_mid, resid_post, attn_out, mlp_out, head "
        "(all layers) or kind.layer (default resid_post)",
    )
    parser.add_argument("--out", required=True, help="results folder (parts/, stores/, probes.parquet)")
    parser.add_argument("--shard", default="0/1", help="i/n: do the i-th of n blocks of units (default 0/1)")
    parser.add_argument("--n-items", type=int, default=200, help="items generated per task (default 200)")
    parser.add_argument(
        "--random-baseline",
        action="store_true",
        help="also probe a random-init model of each run's shape (recipe '<recipe> (random init)')",
    )
    parser.add_argument(
        "--max-difficulty",
        type=int,
        default=None,
        help="only items of this difficulty or lower (default: the hardest level whose items fit the models' context)",
    )
    parser.add_argument("--item-seed", type=int, default=0, help="task generator seed (default 0)")
    parser.add_argument("--probe", default="linear", help="linear (default), mlp or ridge")
    parser.add_argument("--split", default="entity", help="entity (default) or group (by template)")
    parser.add_argument(
        "--labels",
        default=None,
        help="comma-separated label-name patterns to probe, e.g. '*@query,*@op' (the non-local world state) or "
        "'box(*)' (default: every label)",
    )
    parser.add_argument("--target", default="label", help="label (each label name, default) or family (pooled)")
    parser.add_argument("--seeds", default="0,1,2", help="split seeds (default 0,1,2)")
    parser.add_argument("--min-rows", type=int, default=20, help="skip probing problems with fewer rows (default 20)")
    parser.add_argument("--no-cross-format", action="store_true", help="do not probe across code/text twins")
    parser.add_argument("--no-mdl", action="store_true", help="skip online-code MDL")
    parser.add_argument("--batch-size", type=int, default=16, help="items per forward pass (default 16)")
    parser.add_argument("--drop-stores", action="store_true", help="delete each unit's activation store when done")
    parser.add_argument("--device", default="cpu", help="device to run the models on (default cpu)")


def _split_list(text: str, flag: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise CodetransferError(f"{flag}: expected a comma-separated list, got '{text}'")
    return items


def run(args) -> int:
    from codetransfer.artifacts import parse_shard
    from codetransfer.probes.grid import probe_grid
    from codetransfer.trained.modelset import select_runs

    shard = parse_shard(args.shard)
    tasks = _split_list(args.tasks, "--tasks")
    sites = _split_list(args.sites, "--sites")
    try:
        seeds = [int(s) for s in _split_list(args.seeds, "--seeds")]
    except ValueError:
        raise CodetransferError(f"--seeds: expected comma-separated integers, got '{args.seeds}'") from None
    runs = select_runs(args.runs, args.models)
    max_difficulty = args.max_difficulty
    if max_difficulty is None:  # the levels whose items fit the models' context
        from codetransfer.analysis.grid import fitting_max_difficulty

        max_difficulty = fitting_max_difficulty(tasks, runs, args.n_items, args.item_seed)
    table = probe_grid(
        runs,
        tasks,
        sites,
        args.out,
        shard=shard,
        n_items=args.n_items,
        item_seed=args.item_seed,
        max_difficulty=max_difficulty,
        probe=args.probe,
        split=args.split,
        target=args.target,
        seeds=seeds,
        min_rows=args.min_rows,
        cross_format=not args.no_cross_format,
        mdl=not args.no_mdl,
        batch_size=args.batch_size,
        keep_stores=not args.drop_stores,
        random_baseline=args.random_baseline,
        labels=None if args.labels is None else _split_list(args.labels, "--labels"),
        device=args.device,
        progress=lambda msg: print(msg, flush=True),
    )
    print(f"{len(table)} rows in {args.out}/probes.parquet")
    return 0


def __getattr__(name: str):
    """``RandomInit`` and ``_random_init_run`` live in :mod:`codetransfer.probes.grid` (imported on use)."""
    if name in ("RandomInit", "_random_init_run"):
        from codetransfer.probes import grid

        return grid.RandomInit if name == "RandomInit" else grid.random_init_run
    raise AttributeError(name)
