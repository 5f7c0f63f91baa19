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
    parser.add_argument("--runs", required=True, help="grid output folder (or one run folder) with trained runs")
    parser.add_argument("--tasks", required=True, help="comma-separated task families, e.g. entity_tracking,code_state")
    parser.add_argument("--sites", default="resid_post",
                        help="comma-separated sites: resid_pre, resid_mid, resid_post, attn_out, mlp_out, head "
                             "(all layers) or kind.layer (default resid_post)")
    parser.add_argument("--out", required=True, help="results folder (parts/, stores/, probes.parquet)")
    parser.add_argument("--shard", default="0/1", help="i/n: do the i-th of n blocks of units (default 0/1)")
    parser.add_argument("--n-items", type=int, default=200, help="items generated per task (default 200)")
    parser.add_argument("--random-baseline", action="store_true",
                        help="also probe a random-init model of each run's shape (recipe '<recipe> (random init)')")
    parser.add_argument("--max-difficulty", type=int, default=None,
                        help="only items of this difficulty or lower (keeps prompts inside small models' context)")
    parser.add_argument("--item-seed", type=int, default=0, help="task generator seed (default 0)")
    parser.add_argument("--probe", default="linear", help="linear (default), mlp or ridge")
    parser.add_argument("--split", default="entity", help="entity (default) or group (by template)")
    parser.add_argument("--target", default="label", help="label (each label name, default) or family (pooled)")
    parser.add_argument("--seeds", default="0,1,2", help="split seeds (default 0,1,2)")
    parser.add_argument("--min-rows", type=int, default=20, help="skip probing problems with fewer rows (default 20)")
    parser.add_argument("--no-cross-format", action="store_true", help="do not probe across code/text twins")
    parser.add_argument("--no-mdl", action="store_true", help="skip online-code MDL")
    parser.add_argument("--batch-size", type=int, default=16, help="items per forward pass (default 16)")
    parser.add_argument("--drop-stores", action="store_true", help="delete each unit's activation store when done")
    parser.add_argument("--device", default="cpu", help="device to run the models on (default cpu)")


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/4"`` -> ``(1, 4)``; refuses anything else with a one-line error."""
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise CodetransferError(f"--shard: expected i/n such as 0/4, got '{text}'") from None
    if not (n >= 1 and 0 <= i < n):
        raise CodetransferError(f"--shard: expected 0 <= i < n, got '{text}'; shards of 4 are 0/4 .. 3/4")
    return i, n


def _split_list(text: str, flag: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise CodetransferError(f"{flag}: expected a comma-separated list, got '{text}'")
    return items


def run(args) -> int:
    from codetransfer.analysis.store import SITE_KINDS
    from codetransfer.errors import did_you_mean
    from codetransfer.probes.estimators import PROBES
    from codetransfer.probes.sweep import run_probe_sweep
    from codetransfer.tasks import get_task
    from codetransfer.trained import find_runs, load_run

    shard = parse_shard(args.shard)
    tasks = _split_list(args.tasks, "--tasks")
    for t in tasks:
        get_task(t)  # refuses unknown names with a hint
    sites = [_alias(s) for s in _split_list(args.sites, "--sites")]
    for s in sites:
        kind = s.split(".")[0]
        if kind not in SITE_KINDS:
            raise CodetransferError(
                f"--sites: unknown site '{s}'; expected kinds {', '.join(SITE_KINDS)} (optionally .layer)"
                f"{did_you_mean(kind, SITE_KINDS)}"
            )
    if args.probe not in PROBES:
        raise CodetransferError(f"--probe: expected one of {', '.join(PROBES)}, got '{args.probe}'{did_you_mean(args.probe, PROBES)}")
    if args.split not in ("entity", "group"):
        raise CodetransferError(f"--split: expected entity or group, got '{args.split}'")
    if args.target not in ("label", "family"):
        raise CodetransferError(f"--target: expected label or family, got '{args.target}'")
    if args.n_items < 1:
        raise CodetransferError(f"--n-items: expected a positive number, got {args.n_items}")
    try:
        seeds = [int(s) for s in _split_list(args.seeds, "--seeds")]
    except ValueError:
        raise CodetransferError(f"--seeds: expected comma-separated integers, got '{args.seeds}'") from None
    runs = find_runs(args.runs, complete_only=True)
    if not runs:
        raise CodetransferError(f"--runs: no complete runs under {args.runs}; train them first ('codetransfer train')")
    device = args.device
    if args.random_baseline:
        import dataclasses

        runs = runs + [dataclasses.replace(r, name=f"{r.name}+random-init", recipe=f"{r.recipe} (random init)",
                                           path=RandomInit(r.path, r.seed)) for r in runs]

    def load(path):
        if isinstance(path, RandomInit):
            return _random_init_run(path, device)
        return load_run(path, device=device)

    table = run_probe_sweep(
        runs, tasks, sites, args.out, shard=shard, n_items=args.n_items, item_seed=args.item_seed,
        probe=args.probe, target=args.target, split=args.split, seeds=seeds, min_rows=args.min_rows,
        cross_format=not args.no_cross_format, mdl=not args.no_mdl, batch_size=args.batch_size,
        keep_stores=not args.drop_stores, load=load,
        generate=_generator(args.max_difficulty),
        progress=lambda msg: print(msg, flush=True),
    )
    print(f"{len(table)} rows in {args.out}/probes.parquet")
    return 0


#: the patching/attention site names, accepted here too
SITE_ALIASES = {"resid": "resid_post", "attn": "attn_out", "mlp": "mlp_out"}


def _alias(site: str) -> str:
    kind, dot, layer = site.partition(".")
    return SITE_ALIASES.get(kind, kind) + dot + layer


class RandomInit(str):
    """The path of a trained run, marked to be loaded as a random-init model of the same shape."""

    def __new__(cls, path, seed: int):
        obj = super().__new__(cls, str(path))
        obj.seed = seed
        return obj


def _random_init_run(path: "RandomInit", device):
    """A run-like object: TransformerLens' random_init_bridge of the run's folder (HF initialisation)."""
    from types import SimpleNamespace

    from transformer_lens.tools.analysis import random_init_bridge

    from codetransfer.trained.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(path))
    bridge = random_init_bridge(str(path), seed=1000 + int(path.seed), device=device, tokenizer=tokenizer)
    bridge.cfg.default_prepend_bos = True
    return SimpleNamespace(bridge=bridge.eval(), tokenizer=tokenizer)


def _generator(max_difficulty):
    """The sweep's item generator, limited to levels <= max_difficulty (None: the sweep's default)."""
    if max_difficulty is None:
        return None

    def generate(task, n, seed):
        from codetransfer.commands import items_up_to
        from codetransfer.tasks import get_task

        return items_up_to(get_task(task), n, seed, max_difficulty)

    return generate
