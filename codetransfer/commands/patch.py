"""codetransfer patch --runs DIR --task T --sites resid_pre,attn,mlp,head --out RESULTS [--cross-model A B [--cross-model-only]] [--cross-rendering] [--shard i/n]

Activation patching of every complete run under DIR on one task's clean/counterfactual pairs (items
generated once, seeded, shared by all runs), written at the end and atomically:

* ``RESULTS/patching.parquet``: within each run, denoising (and with ``--noising`` noising) sweeps of
  every site by layer x position (x head); rows ``metric = denoising|noising`` hold the normalised
  value (0 = counterfactual run, 1 = clean run) with a bootstrap interval over items, rows
  ``metric = logit_diff`` the raw patched logit difference.
* ``RESULTS/cross_model.parquet`` (``--cross-model A B``): run B with each component taken from run A
  on the same prompts; ``metric = cross_model`` is the share of A's advantage the component carries.
* ``RESULTS/cross_rendering.parquet`` (``--cross-rendering``): in every run, the code rendering of
  the clean world patched into the text rendering's counterfactual at aligned span positions
  (``metric = cross_rendering``), next to the same patch from the clean text (``within_rendering``).

Positions are named (``--positions named``, default): the span keys shared by every item (e.g.
``query``, ``e0.value``) and ``last`` (the token that predicts the answer), so that items of different
lengths line up; ``--positions absolute`` uses token indices instead.

Sharding (``--shard i/n``, e.g. one shard per task of a cluster job array sharing RESULTS): the work
is a fixed list of units (:func:`codetransfer.analysis.grid.plan_patch_units`: per run each site's within-run sweeps, the attribution
screen, each site's cross-rendering patching; then each cross-model site), in the order of the final
tables' rows. Shard ``i`` computes the ``i``-th of ``n`` contiguous blocks and writes one parquet part
per unit atomically under ``RESULTS/parts/patch/`` with the sweep's settings hash in its metadata,
next to ``manifest.json`` (all units and the settings); finished parts are skipped on a re-run, and a
shard refuses a folder that holds a sweep with other settings. The last shard to finish (or
``codetransfer merge --out RESULTS``) concatenates the parts in unit order into the same tables an
unsharded run writes. Without ``--shard`` nothing goes to ``parts/``: the tables are made in memory.
"""

from __future__ import annotations

from pathlib import Path

from codetransfer.errors import CodetransferError


def add_arguments(p) -> None:
    p.add_argument("--runs", default=None, help="a grid output folder (or its runs/ folder, or one run)")
    p.add_argument(
        "--models",
        default=None,
        help="a model-set TOML file naming checkpoints (instead of --runs; see docs/models.md)",
    )
    p.add_argument("--task", required=True, help="task family with counterfactuals (see `codetransfer tasks`)")
    p.add_argument(
        "--sites",
        default="resid_pre,attn_out,mlp_out,head_out",
        help="comma-separated sites: resid_pre, resid_mid, attn_out, mlp_out, head_out, q, k, v (aliases attn, mlp, head; default resid_pre,attn_out,mlp_out,head_out)",
    )
    p.add_argument("--out", required=True, help="results folder (created)")
    p.add_argument(
        "--cross-model",
        nargs=2,
        metavar=("A", "B"),
        default=None,
        help="also patch run A's activations into run B (run names as listed by `codetransfer runs`)",
    )
    p.add_argument(
        "--cross-model-only",
        action="store_true",
        help="with --cross-model: load only runs A and B and write only cross_model.parquet",
    )
    p.add_argument(
        "--cross-rendering",
        action="store_true",
        help="also patch the code rendering into the text rendering at aligned positions",
    )
    p.add_argument("--noising", action="store_true", help="also run noising sweeps (clean run, corrupted patches)")
    p.add_argument(
        "--attribution",
        action="store_true",
        help="also screen every head/MLP node by attribution patching and report its Spearman rank "
        "agreement with exact patching (rows metric=attribution, attribution_spearman)",
    )
    p.add_argument(
        "--positions",
        choices=("named", "absolute"),
        default="named",
        help="position axis: span keys + last (default) or token indices",
    )
    p.add_argument("--n-items", type=int, default=64, help="items (default 64)")
    p.add_argument(
        "--difficulty",
        type=int,
        default=0,
        help="difficulty of the patched items (default 0: the level small models can do; a level whose items "
        "exceed the models' context is refused)",
    )
    p.add_argument("--seed", type=int, default=0, help="item generator and bootstrap seed (default 0)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--max-rows", type=int, default=256, help="rows per forward (default 256)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="do the I-th of N blocks of units, one part each under OUT/parts/patch (finished parts "
        "are skipped); the last shard to finish, or 'codetransfer merge', writes the tables",
    )


def run(args) -> int:
    from codetransfer.analysis.grid import PatchSettings, patch_grid, patch_shard, patch_sites
    from codetransfer.artifacts import parse_shard, write_tables
    from codetransfer.trained.modelset import select_runs

    shard = parse_shard(args.shard) if args.shard is not None else None
    for flag, value, low in (("--n-items", args.n_items, 1), ("--n-boot", args.n_boot, 10),
                             ("--max-rows", args.max_rows, 1)):  # fmt: skip
        if value < low:
            raise CodetransferError(f"{flag}: expected an integer >= {low}, got {value}")
    sites = patch_sites(args.sites.split(","))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CodetransferError(f"--out: {out} is a file; pass a folder for the results")
    infos = select_runs(args.runs, args.models)
    settings = PatchSettings(
        task=args.task,
        sites=tuple(sites),
        n_items=args.n_items,
        difficulty=args.difficulty,
        seed=args.seed,
        n_boot=args.n_boot,
        positions=args.positions,
        noising=args.noising,
        attribution=args.attribution,
        cross_rendering=args.cross_rendering,
        cross_model=tuple(args.cross_model) if args.cross_model else None,
        cross_model_only=args.cross_model_only,
        max_rows=args.max_rows,
    )
    if shard is None:  # one process: every unit in memory, tables written at the end
        written = patch_grid(infos, settings, device=args.device)
        write_tables(out, written)
        for name, t in written.items():
            print(f"wrote {out / name} ({len(t)} rows)")
        return 0
    i, n = shard
    report = patch_shard(infos, settings, out, shard, device=args.device)
    print(
        f"shard {i}/{n}: {report.computed} of its {report.mine} units computed, {report.mine - report.computed} "
        f"already done; {report.present} of {report.total} parts present in {report.folder}"
    )
    if not report.tables:
        print(f"when every shard has finished: codetransfer merge --out {out} --kind patch")
        return 0
    for name, t in report.tables.items():
        print(f"wrote {out / name} ({len(t)} rows)")
    return 0
