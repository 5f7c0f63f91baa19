"""codetransfer merge --out RESULTS [--kind probe|patch|all] [--allow-partial]

Merges the per-unit parts that sharded sweeps (``codetransfer probe|patch ... --shard i/n``, e.g. one
shard per task of a cluster job array, all writing into one RESULTS folder) left under
``RESULTS/parts/`` into the final tables, the same tables an unsharded run writes:

* ``--kind patch``: ``RESULTS/parts/patch/*.parquet`` -> ``patching.parquet`` (and
  ``cross_model.parquet``, ``cross_rendering.parquet`` when the sweep made them);
* ``--kind probe``: ``RESULTS/parts/*.parquet`` -> ``probes.parquet``;
* ``--kind all`` (default): both, each where its parts exist.

How a sharded sweep is laid out: the work is a deterministic list of *units* (for patching: run x
site per table, a run's attribution screen, each cross-model site; for probing: run x task x site),
shard ``i`` of ``n`` takes the ``i``-th of ``n`` contiguous blocks of that list
(:mod:`codetransfer.artifacts`), and each unit writes one parquet part atomically (temporary file,
then rename); a re-run skips finished parts, so a failed array task is simply re-submitted. A
patching part carries, in its parquet metadata, the unit it holds and a *settings hash* (task, sites,
items, seeds, runs and their recipe hashes ...); a probing part a key of its settings and model. Each
parts folder holds a ``manifest.json`` listing every unit of the sweep. Merging concatenates the
parts (patching: in the manifest's order), so the merged tables equal the unsharded run's exactly,
and refuses (one line, exit 2) when

* parts are missing: it names how many, which units and which shards to re-run (``--allow-partial``
  merges what is there);
* patching parts come from different settings (a shard run with other arguments into the same folder).

Probing parts written without a manifest (by ``probes.sweep.run_probe_sweep`` called directly): merge
takes the expected units to be every (run, task, site) combination seen among the parts.

The library functions: :func:`codetransfer.analysis.grid.merge_patch_parts` and
:func:`codetransfer.probes.grid.merge_probe_parts`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from codetransfer.errors import CodetransferError


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="the RESULTS folder the shards wrote into")
    p.add_argument(
        "--kind",
        choices=("probe", "patch", "all"),
        default="all",
        help="which sweep's parts to merge (default all: each kind whose parts exist)",
    )
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="merge the parts present even when some are missing (the tables are then incomplete)",
    )


def run(args) -> int:
    from codetransfer.analysis.grid import PATCH_PARTS, check_patch_parts, merge_patch_parts
    from codetransfer.artifacts import MANIFEST
    from codetransfer.probes.grid import PARTS, check_probe_parts, merge_probe_parts

    out = Path(args.out)
    if not out.is_dir():
        raise CodetransferError(f"--out: {out} is not a folder; pass the RESULTS folder the shards wrote into")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    kinds = ["probe", "patch"] if args.kind == "all" else [args.kind]
    if args.kind == "all":
        have = {"probe": any((out / PARTS).glob("*.parquet")), "patch": (out / PATCH_PARTS / MANIFEST).exists()}
        kinds = [k for k in kinds if have[k]]
        if not kinds:
            raise CodetransferError(
                f"--out: no probing or patching parts under {out / PARTS}; run the sharded sweeps into {out} first"
            )
    for kind in kinds:  # refuse before writing anything
        (check_probe_parts if kind == "probe" else check_patch_parts)(out, args.allow_partial)
    results = {}
    for kind in kinds:
        if kind == "probe":
            results["probes.parquet"] = merge_probe_parts(out, args.allow_partial, log)
        else:
            results.update(merge_patch_parts(out, args.allow_partial, log))
    for name, t in results.items():
        print(f"wrote {out / name} ({len(t)} rows)")
    return 0
