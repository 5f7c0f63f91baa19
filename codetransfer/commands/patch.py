"""codetransfer patch --runs DIR --task T --sites resid,attn,mlp,head --out RESULTS [--cross-model A B [--cross-model-only]] [--cross-rendering]

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
"""

from __future__ import annotations

import sys
from pathlib import Path

from codetransfer.commands import write_tables
from codetransfer.errors import CodetransferError, did_you_mean

SITE_ALIASES = {
    "resid": "resid_pre",
    "resid_pre": "resid_pre",
    "resid_mid": "resid_mid",
    "attn": "attn_out",
    "attn_out": "attn_out",
    "mlp": "mlp_out",
    "mlp_out": "mlp_out",
    "head": "head_out",
    "head_out": "head_out",
    "q": "q",
    "k": "k",
    "v": "v",
}


def add_arguments(p) -> None:
    p.add_argument("--runs", required=True, help="a grid output folder (or its runs/ folder, or one run)")
    p.add_argument("--task", required=True, help="task family with counterfactuals (see `codetransfer tasks`)")
    p.add_argument("--sites", default="resid,attn,mlp,head",
                   help="comma-separated sites: resid, resid_mid, attn, mlp, head, q, k, v (default resid,attn,mlp,head)")
    p.add_argument("--out", required=True, help="results folder (created)")
    p.add_argument("--cross-model", nargs=2, metavar=("A", "B"), default=None,
                   help="also patch run A's activations into run B (run names as listed by `codetransfer runs`)")
    p.add_argument("--cross-model-only", action="store_true",
                   help="with --cross-model: load only runs A and B and write only cross_model.parquet")
    p.add_argument("--cross-rendering", action="store_true",
                   help="also patch the code rendering into the text rendering at aligned positions")
    p.add_argument("--noising", action="store_true", help="also run noising sweeps (clean run, corrupted patches)")
    p.add_argument("--attribution", action="store_true",
                   help="also screen every head/MLP node by attribution patching and report its Spearman rank "
                        "agreement with exact patching (rows metric=attribution, attribution_spearman)")
    p.add_argument("--positions", choices=("named", "absolute"), default="named",
                   help="position axis: span keys + last (default) or token indices")
    p.add_argument("--n-items", type=int, default=64, help="items (default 64)")
    p.add_argument("--difficulty", type=int, default=None, help="only items of this difficulty (default: all)")
    p.add_argument("--seed", type=int, default=0, help="item generator and bootstrap seed (default 0)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--max-rows", type=int, default=256, help="rows per forward (default 256)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def parse_sites(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise CodetransferError("--sites: expected a comma-separated list such as resid,attn,mlp,head, got nothing")
    out = []
    for s in names:
        if s not in SITE_ALIASES:
            raise CodetransferError(
                f"--sites: unknown site {s!r}{did_you_mean(s, SITE_ALIASES)}; choose from {', '.join(SITE_ALIASES)}"
            )
        if SITE_ALIASES[s] not in out:
            out.append(SITE_ALIASES[s])
    return out


def run(args) -> int:
    import pandas as pd

    from codetransfer.analysis import patching as P
    from codetransfer.tasks import get_task
    from codetransfer.trained import check_same_grid, find_runs, load_run
    from codetransfer.trained.loading import read_json
    from codetransfer.trained.tokenizer import load_tokenizer

    for flag, value, low in (("--n-items", args.n_items, 1), ("--n-boot", args.n_boot, 10),
                             ("--max-rows", args.max_rows, 1)):  # fmt: skip
        if value < low:
            raise CodetransferError(f"{flag}: expected an integer >= {low}, got {value}")
    sites = parse_sites(args.sites)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CodetransferError(f"--out: {out} is a file; pass a folder for the results")
    infos = find_runs(Path(args.runs), complete_only=True)
    if not infos:
        raise CodetransferError(f"--runs: no complete runs in {args.runs}; train them with 'codetransfer train'")
    check_same_grid(infos)
    by_name = {i.name: i for i in infos}
    if args.cross_model:
        for name in args.cross_model:
            if name not in by_name:
                raise CodetransferError(
                    f"--cross-model: no complete run named {name!r}{did_you_mean(name, by_name)} "
                    f"(have {', '.join(by_name)})"
                )
        if args.cross_model[0] == args.cross_model[1]:
            raise CodetransferError("--cross-model: A and B are the same run; pass two different runs")
    if args.cross_model_only:
        if not args.cross_model:
            raise CodetransferError("--cross-model-only: needs --cross-model A B")
        if args.cross_rendering or args.noising or args.attribution:
            raise CodetransferError(
                "--cross-model-only: writes only cross_model.parquet; drop --cross-rendering, --noising and --attribution"
            )

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    items = get_task(args.task).generate(args.n_items, args.seed, difficulty=args.difficulty)
    tokenizer = load_tokenizer(infos[0].path)
    batch = P.pair_batch(items, tokenizer, drop_misaligned=True)
    if batch.n_dropped:
        log(f"note: {batch.n_dropped} of {len(items)} items dropped (counterfactual tokenizes to another length)")
    rbatch = P.rendering_batch(items, tokenizer, "code", drop_misaligned=True) if args.cross_rendering else None
    n_ctx = int(read_json(Path(infos[0].path) / "config.json", "model config")["max_position_embeddings"])
    widths = [batch.clean_tokens.shape[1]] + ([rbatch.source_tokens.shape[1]] if rbatch is not None else [])
    if max(widths) > n_ctx:
        raise CodetransferError(
            f"--task: items of {args.task} are up to {max(widths)} tokens but the models' context is {n_ctx}; "
            "pass --difficulty with a lower level"
        )
    positions = batch.positions if args.positions == "named" else None
    directions = ["denoising"] + (["noising"] if args.noising else [])

    def meta(info):
        return dict(run=info.name, recipe=info.recipe, seed=info.seed, task=args.task)

    tables: dict[str, list] = {"patching.parquet": [], "cross_model.parquet": [], "cross_rendering.parquet": []}
    loaded = {}
    within_runs = [] if args.cross_model_only else infos
    if args.cross_model_only:
        for name in args.cross_model:
            loaded[name] = load_run(by_name[name], device=args.device)
    for info in within_runs:
        lr = load_run(info, device=args.device)
        model = lr.bridge
        dev = dict(device=args.device)
        clean_t, corr_t = batch.clean_tokens.to(**dev), batch.corrupted_tokens.to(**dev)
        caches = (P.run_cache(model, clean_t, batch.metric), P.run_cache(model, corr_t, batch.metric))
        for site in sites:
            for direction in directions:
                log(f"{info.name}: {direction} {site}")
                sweep = P.activation_patching(model, clean_t, corr_t, batch.metric, site, direction=direction,
                                              positions=positions, caches=caches, max_rows=args.max_rows)  # fmt: skip
                tables["patching.parquet"].append(sweep.table(meta(info), n_boot=args.n_boot, seed=args.seed))
            if site in ("head_out", "q", "k", "v"):
                sweep = P.activation_patching(model, clean_t, corr_t, batch.metric, site, by_pos=False,
                                              caches=caches, max_rows=args.max_rows)  # fmt: skip
                tables["patching.parquet"].append(sweep.table(meta(info), n_boot=args.n_boot, seed=args.seed))
        if args.attribution:
            log(f"{info.name}: attribution patching screen")
            rho, joined = P.attribution_agreement(model, clean_t, corr_t, batch.metric, caches=caches)
            joined = joined.melt(id_vars=["site", "layer", "head", "pos"], value_vars=["attribution", "exact"],
                                 var_name="metric", value_name="value")  # fmt: skip
            joined["pos_label"] = joined["pos"].astype(str)
            joined["metric"] = joined["metric"].map({"attribution": "attribution", "exact": "exact_effect"})
            summary = pd.DataFrame([dict(site="all", metric="attribution_spearman", value=rho)])
            for t in (joined, summary):
                tables["patching.parquet"].append(t.assign(**meta(info)))
            log(f"{info.name}: attribution vs exact patching, Spearman rho = {rho:.3f} over {len(joined) // 2} nodes")
        if rbatch is not None:
            for site in sites:
                log(f"{info.name}: cross-rendering {site}")
                for sweep in P.cross_rendering_patching(model, rbatch, site, max_rows=args.max_rows):
                    tables["cross_rendering.parquet"].append(sweep.table(meta(info), n_boot=args.n_boot, seed=args.seed))
        if args.cross_model and info.name in args.cross_model:
            loaded[info.name] = lr
        else:
            del lr
    if args.cross_model:
        a, b = (loaded[n] for n in args.cross_model)
        tokens = batch.clean_tokens.to(args.device)
        for site in sites:
            log(f"cross-model {a.info.name} -> {b.info.name}: {site}")
            sweep = P.cross_model_patching(a.bridge, b.bridge, tokens, batch.metric, site, positions=positions,
                                           tokenizer_a=a.tokenizer, tokenizer_b=b.tokenizer, max_rows=args.max_rows)
            m = dict(run=f"{a.info.name}->{b.info.name}", recipe=f"{a.info.recipe}->{b.info.recipe}",
                     seed=b.info.seed, task=args.task)  # fmt: skip
            tables["cross_model.parquet"].append(sweep.table(m, n_boot=args.n_boot, seed=args.seed))
    written = {name: pd.concat(parts, ignore_index=True) for name, parts in tables.items() if parts}
    for t in written.values():
        t["seed"] = t["seed"].astype("Int64")
    write_tables(out, written)
    for name, t in written.items():
        print(f"wrote {out / name} ({len(t)} rows)")
    return 0
