"""codetransfer patch --runs DIR --task T --sites resid,attn,mlp,head --out RESULTS [--cross-model A B [--cross-model-only]] [--cross-rendering] [--shard i/n]

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
is a fixed list of units (:func:`plan_units`: per run each site's within-run sweeps, the attribution
screen, each site's cross-rendering patching; then each cross-model site), in the order of the final
tables' rows. Shard ``i`` computes the ``i``-th of ``n`` contiguous blocks and writes one parquet part
per unit atomically under ``RESULTS/parts/patch/`` with the sweep's settings hash in its metadata,
next to ``manifest.json`` (all units and the settings); finished parts are skipped on a re-run, and a
shard refuses a folder that holds a sweep with other settings. The last shard to finish (or
``codetransfer merge --out RESULTS``) concatenates the parts in unit order into the same tables an
unsharded run writes. Without ``--shard`` nothing goes to ``parts/``: the tables are made in memory.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
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
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="do the I-th of N blocks of units, one part each under OUT/parts/patch (finished parts "
                        "are skipped); the last shard to finish, or 'codetransfer merge', writes the tables")


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


@dataclass(frozen=True)
class Unit:
    """One piece of the patching work: its own part table when the sweep is sharded."""

    kind: str
    """``within`` (a run's sweeps of one site), ``attribution`` (a run's attribution screen),
    ``rendering`` (a run's cross-rendering patching of one site) or ``cross`` (cross-model, one site)."""
    run: str
    """The run's name (``A->B`` for cross-model units)."""
    site: str
    """The site (``""`` for attribution)."""

    @property
    def table(self) -> str:
        """The final table the unit's rows go to."""
        return {"within": "patching.parquet", "attribution": "patching.parquet",
                "rendering": "cross_rendering.parquet", "cross": "cross_model.parquet"}[self.kind]

    @property
    def id(self) -> str:
        """A file-name-safe identifier, unique within one sweep."""
        return f"{self.table.removesuffix('.parquet')}__{_safe(self.run)}__{self.site or 'attribution'}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(name))


def plan_units(run_names: list[str], sites: list[str], *, attribution: bool = False, cross_rendering: bool = False,
               cross_model: tuple[str, str] | None = None, cross_model_only: bool = False) -> list[Unit]:
    """The sweep's units in their fixed order: each run (in the given, sorted order) with its sites, its
    attribution screen and its cross-rendering sites, then the cross-model sites. This is also the
    row order of the final tables; shard ``i/n`` takes the ``i``-th contiguous block, so a shard
    loads each of its runs once."""
    units = []
    if not cross_model_only:
        for name in run_names:
            units += [Unit("within", name, s) for s in sites]
            if attribution:
                units.append(Unit("attribution", name, ""))
            if cross_rendering:
                units += [Unit("rendering", name, s) for s in sites]
    if cross_model:
        units += [Unit("cross", f"{cross_model[0]}->{cross_model[1]}", s) for s in sites]
    ids = [u.id for u in units]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise CodetransferError(f"--runs: two runs map to the same part name {dup!r}; rename one of the run folders")
    return units


class _Worker:
    """Computes units, keeping the last two loaded runs (and a run's clean/corrupted caches)."""

    def __init__(self, args, by_name, batch, rbatch, log):
        self.args, self.by_name, self.batch, self.rbatch, self.log = args, by_name, batch, rbatch, log
        self.positions = batch.positions if args.positions == "named" else None
        self.directions = ["denoising"] + (["noising"] if args.noising else [])
        self.loaded: dict = {}
        self.caches: dict = {}

    def _load(self, name):
        from codetransfer.trained import load_run

        if name not in self.loaded:
            while len(self.loaded) >= 2:
                old = next(iter(self.loaded))
                self.loaded.pop(old)
                self.caches.pop(old, None)
            self.loaded[name] = load_run(self.by_name[name], device=self.args.device)
        return self.loaded[name]

    def _meta(self, info):
        return dict(run=info.name, recipe=info.recipe, seed=info.seed, task=self.args.task)

    def _tokens(self):
        dev = self.args.device
        return self.batch.clean_tokens.to(dev), self.batch.corrupted_tokens.to(dev)

    def _caches(self, name, model):
        from codetransfer.analysis import patching as P

        if name not in self.caches:
            self.caches.clear()  # one run's activations at a time, as an unsharded sweep always did
            clean_t, corr_t = self._tokens()
            self.caches[name] = (P.run_cache(model, clean_t, self.batch.metric),
                                 P.run_cache(model, corr_t, self.batch.metric))  # fmt: skip
        return self.caches[name]

    def compute(self, unit: Unit):
        """The unit's rows (one DataFrame)."""
        import pandas as pd

        from codetransfer.analysis import patching as P

        a, batch, site = self.args, self.batch, unit.site
        boot = dict(n_boot=a.n_boot, seed=a.seed)
        frames = []
        if unit.kind == "cross":
            name_a, name_b = a.cross_model
            ra, rb = self._load(name_a), self._load(name_b)
            self.log(f"cross-model {name_a} -> {name_b}: {site}")
            sweep = P.cross_model_patching(ra.bridge, rb.bridge, batch.clean_tokens.to(a.device), batch.metric, site,
                                           positions=self.positions, tokenizer_a=ra.tokenizer,
                                           tokenizer_b=rb.tokenizer, max_rows=a.max_rows)  # fmt: skip
            m = dict(run=f"{name_a}->{name_b}", recipe=f"{ra.info.recipe}->{rb.info.recipe}", seed=rb.info.seed,
                     task=a.task)  # fmt: skip
            frames.append(sweep.table(m, **boot))
            return pd.concat(frames, ignore_index=True)
        lr = self._load(unit.run)
        model, meta = lr.bridge, self._meta(lr.info)
        if unit.kind == "within":
            clean_t, corr_t = self._tokens()
            caches = self._caches(unit.run, model)
            for direction in self.directions:
                self.log(f"{unit.run}: {direction} {site}")
                sweep = P.activation_patching(model, clean_t, corr_t, batch.metric, site, direction=direction,
                                              positions=self.positions, caches=caches, max_rows=a.max_rows)  # fmt: skip
                frames.append(sweep.table(meta, **boot))
            if site in ("head_out", "q", "k", "v"):
                sweep = P.activation_patching(model, clean_t, corr_t, batch.metric, site, by_pos=False,
                                              caches=caches, max_rows=a.max_rows)  # fmt: skip
                frames.append(sweep.table(meta, **boot))
        elif unit.kind == "attribution":
            clean_t, corr_t = self._tokens()
            self.log(f"{unit.run}: attribution patching screen")
            rho, joined = P.attribution_agreement(model, clean_t, corr_t, batch.metric,
                                                  caches=self._caches(unit.run, model))  # fmt: skip
            joined = joined.melt(id_vars=["site", "layer", "head", "pos"], value_vars=["attribution", "exact"],
                                 var_name="metric", value_name="value")  # fmt: skip
            joined["pos_label"] = joined["pos"].astype(str)
            joined["metric"] = joined["metric"].map({"attribution": "attribution", "exact": "exact_effect"})
            summary = pd.DataFrame([dict(site="all", metric="attribution_spearman", value=rho)])
            for t in (joined, summary):  # the integer columns stay integers next to the summary's missing ones
                frames.append(t.assign(**meta, **{c: t[c].astype("Int64") for c in ("layer", "head", "pos") if c in t}))
            self.log(f"{unit.run}: attribution vs exact patching, Spearman rho = {rho:.3f} over {len(joined) // 2} nodes")
        else:  # rendering
            self.log(f"{unit.run}: cross-rendering {site}")
            for sweep in P.cross_rendering_patching(model, self.rbatch, site, max_rows=a.max_rows):
                frames.append(sweep.table(meta, **boot))
        return pd.concat(frames, ignore_index=True)


def sweep_settings(args, infos, sites: list[str], items) -> dict:
    """Everything that decides a sweep's rows (not device or batching): parts of different settings never mix."""
    return dict(
        kind="patch", task=args.task, task_version=str(getattr(items[0], "version", "")) if items else "",
        sites=sites, n_items=args.n_items, difficulty=args.difficulty, seed=args.seed, n_boot=args.n_boot,
        positions=args.positions, noising=bool(args.noising), attribution=bool(args.attribution),
        cross_rendering=bool(args.cross_rendering), cross_model=list(args.cross_model or []),
        cross_model_only=bool(args.cross_model_only),
        runs=[dict(name=i.name, recipe=i.recipe, seed=i.seed, recipe_hash=i.record.get("recipe_hash"),
                   tokenizer=i.record.get("tokenizer_sha256")) for i in infos],  # fmt: skip
    )


def run(args) -> int:
    from codetransfer.analysis import patching as P
    from codetransfer.commands import merge as M
    from codetransfer.commands.probe import parse_shard
    from codetransfer.tasks import get_task
    from codetransfer.trained import check_same_grid, find_runs
    from codetransfer.trained.loading import read_json
    from codetransfer.trained.tokenizer import load_tokenizer

    shard = parse_shard(args.shard) if args.shard is not None else None
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
    units = plan_units([i.name for i in infos], sites, attribution=args.attribution,
                       cross_rendering=args.cross_rendering, cross_model=args.cross_model,
                       cross_model_only=args.cross_model_only)  # fmt: skip
    worker = _Worker(args, by_name, batch, rbatch, log)

    if shard is None:  # one process: every unit in memory, tables written at the end
        frames: dict[str, list] = {}
        for unit in units:
            frames.setdefault(unit.table, []).append(worker.compute(unit))
        written = M.finalize_patch_tables(frames)
        write_tables(out, written)
        for name, t in written.items():
            print(f"wrote {out / name} ({len(t)} rows)")
        return 0

    # sharded: one part per unit under RESULTS/parts/patch, finished parts skipped
    i, n = shard
    settings = sweep_settings(args, infos, sites, items)
    digest = M.settings_hash(settings)
    folder = out / M.PATCH_PARTS
    M.check_manifest(folder, settings)
    manifest = dict(kind="patch", settings_hash=digest, settings=settings, n_shards=n,
                    tables=list(dict.fromkeys(u.table for u in units)),
                    units=[dict(id=u.id, table=u.table, part=f"{u.id}.parquet") for u in units])  # fmt: skip
    M.write_json_atomic(folder / M.MANIFEST, manifest)
    bounds = M.shard_bounds(len(units), n)
    mine = units[bounds[i] : bounds[i + 1]]
    done = 0
    for unit in mine:
        part = folder / f"{unit.id}.parquet"
        meta = M.part_meta(part) if part.exists() else None
        if meta is not None and meta.get("settings") == digest and meta.get("unit") == unit.id:
            continue
        M.write_part(worker.compute(unit), part, dict(settings=digest, unit=unit.id, table=unit.table))
        done += 1
    missing, _ = M.part_status(folder, manifest)
    print(f"shard {i}/{n}: {done} of its {len(mine)} units computed, {len(mine) - done} already done; "
          f"{len(units) - len(missing)} of {len(units)} parts present in {folder}")
    if missing:
        print(f"when every shard has finished: codetransfer merge --out {out} --kind patch")
        return 0
    for name, t in M.merge_patch(out).items():
        print(f"wrote {out / name} ({len(t)} rows)")
    return 0
