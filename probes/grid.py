"""The probing sweep of a grid's runs, with random-init baselines, and the merge of its shards.

:func:`probe_grid` checks its inputs, adds (optionally) a random-init model of each run's shape as a
baseline run, writes the sweep's unit list (``OUT/parts/manifest.json``) and runs
:func:`codetransfer.probes.sweep.run_probe_sweep` (one parquet part per run x task x site unit,
restartable and shardable). :func:`merge_probe_parts` joins the parts into ``probes.parquet`` and,
from the manifest, names the parts and shards still missing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from codetransfer import artifacts
from codetransfer.analysis.grid import items_up_to
from codetransfer.analysis import sites
from codetransfer.errors import CodetransferError, did_you_mean
from codetransfer.probes.decodability import TWIN_RECIPE_SUFFIX, TWIN_RUN_SUFFIX
from codetransfer.probes.estimators import PROBES
from codetransfer.probes.sweep import check_label_patterns, merge_parts, run_probe_sweep
from codetransfer.tasks import get_task
from codetransfer.trained import LoadedRun, load_run
from codetransfer.trained.tokenizer import load_tokenizer

PARTS = "parts"
"""Where probing parts go, relative to the results folder."""


def probe_site(site: str) -> str:
    """A probe site's canonical name (``attn.2`` -> ``attn_out.2``); refuses unknown kinds and bare ``resid``
    (:func:`codetransfer.analysis.sites.parse_sites`)."""
    return sites.parse_sites([site], allowed=sites.STORE_KINDS, where="--sites")[0].name


@dataclass(frozen=True)
class RandomInit:
    """A trained run's folder, to be loaded as a random-init model of the same shape (a probing baseline)."""

    path: Path
    """The trained run's folder (shape and tokenizer are read from it)."""
    seed: int
    """The trained run's seed; the random init uses ``1000 + seed``."""

    def __fspath__(self) -> str:  # the sweep reads the trained weights' size and time for its part keys
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


def random_init_run(source: RandomInit, device: str = "cpu") -> LoadedRun:
    """TransformerLens' ``random_init_bridge`` of the run's folder (HF initialisation), as a loaded run."""
    from transformer_lens.tools.analysis import random_init_bridge  # heavy, and only for this baseline

    tokenizer = load_tokenizer(str(source.path))
    bridge = random_init_bridge(str(source.path), seed=1000 + int(source.seed), device=device, tokenizer=tokenizer)
    # built from the config, it keeps the config's dtype in the buffers it casts no parameters of (the unembed's
    # zero bias of an fp16 / bf16 checkpoint), which then meet fp32 weights: every floating tensor in fp32
    bridge.original_model.float()
    bridge.cfg.default_prepend_bos = True
    return LoadedRun(bridge.eval(), tokenizer, None)  # no trained record: the sweep reads bridge and tokenizer


def with_random_init(runs: Sequence) -> list:
    """``runs`` followed by a random-init twin of each (``<name>+random-init``, recipe ``<recipe> (random init)``:
    :data:`~codetransfer.probes.decodability.TWIN_RUN_SUFFIX`, :data:`~codetransfer.probes.decodability.TWIN_RECIPE_SUFFIX`)."""
    runs = list(runs)
    return runs + [
        dataclasses.replace(
            r,
            name=f"{r.name}{TWIN_RUN_SUFFIX}",
            recipe=f"{r.recipe}{TWIN_RECIPE_SUFFIX}",
            path=RandomInit(Path(r.path), int(r.seed)),
        )
        for r in runs
    ]


def probe_units(runs: Sequence, tasks: Sequence[str], sites: Sequence[str]) -> list[dict]:
    """The sweep's units in the sweep's order (sorted run, task, site), each with the part file it writes."""
    units = sorted((str(r.name), t, s) for r in runs for t in tasks for s in sites)
    return [dict(id="/".join(u), part="__".join(artifacts.safe_name(x) for x in u) + ".parquet") for u in units]


def probe_grid(
    runs: Sequence,
    tasks: Sequence[str],
    sites: Sequence[str],
    out: str | Path,
    *,
    shard: tuple[int, int] = (0, 1),
    n_items: int = 200,
    item_seed: int = 0,
    max_difficulty: int | None = None,
    probe: str = "linear",
    split: str = "entity",
    target: str = "label",
    seeds: Sequence[int] = (0, 1, 2),
    min_rows: int = 20,
    cross_format: bool = True,
    mdl: bool = True,
    batch_size: int = 16,
    keep_stores: bool = True,
    random_baseline: bool = False,
    labels: Sequence[str] | None = None,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Probe runs x tasks x sites (``run_probe_sweep``) into ``out``; returns the merged table of the parts present.

    Args:
        runs: complete runs (``trained.find_runs``).
        tasks: task families; sites: site kinds or ``kind.layer`` (aliases ``resid``, ``attn``, ``mlp``).
        out: the results folder (``parts/``, ``stores/``, ``probes.parquet``).
        shard: ``(i, n)``: the ``i``-th of ``n`` contiguous blocks of units.
        max_difficulty: only items of this difficulty or lower (None: every level).
        random_baseline: also probe a random-init model of each run's shape.
        labels: label-name patterns to probe (``probes.sweep.item_rows``; e.g. ``probes.sweep.NONLOCAL_LABELS``);
            None: every label of the items.
        the others: as :func:`codetransfer.probes.sweep.run_probe_sweep`.
    """
    if not tasks:
        raise CodetransferError("--tasks: expected a comma-separated list, got nothing")
    for t in tasks:
        get_task(t)  # refuses unknown names with a hint
    sites = [probe_site(s) for s in sites]
    if not sites:
        raise CodetransferError("--sites: expected a comma-separated list, got nothing")
    if probe not in PROBES:
        raise CodetransferError(
            f"--probe: expected one of {', '.join(PROBES)}, got '{probe}'{did_you_mean(probe, PROBES)}"
        )
    if split not in ("entity", "group"):
        raise CodetransferError(f"--split: expected entity or group, got '{split}'")
    if target not in ("label", "family"):
        raise CodetransferError(f"--target: expected label or family, got '{target}'")
    if n_items < 1:
        raise CodetransferError(f"--n-items: expected a positive number, got {n_items}")
    labels = check_label_patterns(labels, "--labels")
    if not runs:
        raise CodetransferError("--runs: no complete runs; train them first ('codetransfer train')")
    runs = with_random_init(runs) if random_baseline else list(runs)

    def load(path):
        if isinstance(path, RandomInit):
            return random_init_run(path, device)
        return load_run(path, device=device)

    generate = None
    if max_difficulty is not None:

        def generate(task, n, seed):
            return items_up_to(get_task(task), n, seed, max_difficulty)

    table = run_probe_sweep(
        runs,
        tasks,
        sites,
        out,
        shard=shard,
        n_items=n_items,
        item_seed=item_seed,
        probe=probe,
        target=target,
        split=split,
        seeds=seeds,
        min_rows=min_rows,
        cross_format=cross_format,
        mdl=mdl,
        batch_size=batch_size,
        keep_stores=keep_stores,
        labels=labels,
        load=load,
        generate=generate,
        progress=progress,
    )
    # the sweep's unit list, so that a merge of shards can name the parts still missing (written once this
    # shard is done: a refused sweep writes nothing)
    artifacts.write_manifest(
        Path(out) / PARTS, dict(kind="probe", n_shards=shard[1], units=probe_units(runs, tasks, sites))
    )
    return table


def _unit_of_part(path: Path) -> tuple[str, str, str] | None:
    bits = path.stem.rsplit("__", 2)
    return tuple(bits) if len(bits) == 3 else None


def check_probe_parts(out: str | Path, allow_partial: bool = False) -> list[str]:
    """The missing probing units of ``out/parts`` (``run/task/site``), or a refusal.

    The expected units are the manifest's (written by :func:`probe_grid`); for parts written without one,
    every (run, task, site) combination seen among the parts. Refuses (unless ``allow_partial``) when
    parts are missing, and when there are none.
    """
    out = Path(out)
    folder = out / PARTS
    parts = sorted(folder.glob("*.parquet"))
    if not parts:
        raise CodetransferError(
            f"--out: no probing parts in {folder}; run 'codetransfer probe ... --shard i/n --out' into it first"
        )
    manifest = artifacts.read_manifest(folder)
    if manifest is not None:
        units = manifest["units"]
        missing = artifacts.missing_parts(folder, manifest)
        if missing and not allow_partial:
            n = int(manifest.get("n_shards", 1))
            raise CodetransferError(
                f"merge: {len(missing)} of {len(units)} probing parts are missing ({artifacts.unit_names(units, missing)}); "
                f"re-run probe shard {artifacts.shards_to_rerun(missing, len(units), n)} with the same arguments "
                "(finished parts are skipped), or pass --allow-partial"
            )
        return [units[k]["id"] for k in missing]
    present = {u for u in map(_unit_of_part, parts) if u is not None}
    runs, tasks, sites = (sorted({u[k] for u in present}) for k in range(3))
    expected = sorted((r, t, s) for r in runs for t in tasks for s in sites)
    missing = ["/".join(u) for u in expected if u not in present]
    if missing and not allow_partial:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise CodetransferError(
            f"merge: {len(missing)} of {len(expected)} probing parts are missing ({shown}); re-run the probe shards "
            "that hold them with the same arguments (finished parts are skipped), or pass --allow-partial"
        )
    return missing


def merge_probe_parts(
    out: str | Path, allow_partial: bool = False, log: Callable[[str], None] | None = None
) -> pd.DataFrame:
    """Merge ``out/parts/*.parquet`` into ``out/probes.parquet`` (``probes.sweep.merge_parts``); returns it.

    Refuses as :func:`check_probe_parts` does, before writing anything.
    """
    missing = check_probe_parts(out, allow_partial)
    if missing and log:
        log(f"note: merging probing parts with {len(missing)} missing")
    return merge_parts(out)
