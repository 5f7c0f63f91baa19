"""codetransfer merge --out RESULTS [--kind probe|patch|all] [--allow-partial]

Merges the per-unit parts that sharded sweeps (``codetransfer probe|patch ... --shard i/n``, e.g. one
shard per task of a cluster job array, all writing into one RESULTS folder) left under
``RESULTS/parts/`` into the final tables, the same tables an unsharded run writes:

* ``--kind patch``: ``RESULTS/parts/patch/*.parquet`` -> ``patching.parquet`` (and
  ``cross_model.parquet``, ``cross_rendering.parquet`` when the sweep made them);
* ``--kind probe``: ``RESULTS/parts/*.parquet`` -> ``probes.parquet``;
* ``--kind all`` (default): both, each where its parts exist.

How a sharded sweep is laid out (the design ``probes.sweep.run_probe_sweep`` introduced): the work is
a deterministic list of *units* (for patching: run x site per table, a run's attribution screen, each
cross-model site), shard ``i`` of ``n`` takes the ``i``-th of ``n`` contiguous blocks of that list, and
each unit writes one parquet part atomically (temporary file, then rename); a re-run skips finished
parts, so a failed array task is simply re-submitted. A patching part carries, in its parquet
metadata, the unit it holds and a *settings hash* (task, sites, items, seeds, runs and their recipe
hashes ...); ``parts/patch/manifest.json`` lists every unit of the sweep with the settings. Merging
concatenates the parts in the manifest's order, so the merged tables equal the unsharded run's
exactly, and refuses (one line, exit 2) when

* parts are missing: it names how many, which units and which shards to re-run (``--allow-partial``
  merges what is there);
* parts come from different settings (a shard run with other arguments into the same folder).

Probing parts carry no manifest or settings hash (``probes.sweep`` writes plain parts): merge takes
the expected units to be every (run, task, site) combination seen among the parts, which catches a
shard that did part of a run but not a shard whose runs are absent from every other part.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from codetransfer.errors import CodetransferError

PATCH_PARTS = Path("parts") / "patch"
"""Where patching parts go, relative to RESULTS."""
MANIFEST = "manifest.json"
"""The sweep's unit list and settings, in the parts folder."""
META_KEY = b"codetransfer"
"""Parquet schema-metadata key holding a part's ``{"settings": hash, "unit": id, "table": name}``."""


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="the RESULTS folder the shards wrote into")
    p.add_argument("--kind", choices=("probe", "patch", "all"), default="all",
                   help="which sweep's parts to merge (default all: each kind whose parts exist)")
    p.add_argument("--allow-partial", action="store_true",
                   help="merge the parts present even when some are missing (the tables are then incomplete)")


# ---------------------------------------------------------------------- shared by the sharded sweeps
def settings_hash(settings: dict) -> str:
    """A short, stable hash of a JSON-able settings dict (12 hex digits)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def shard_bounds(n_units: int, n_shards: int) -> np.ndarray:
    """Start indices of the ``n_shards`` contiguous blocks of ``n_units`` (plus the end), as probing uses."""
    return np.linspace(0, n_units, n_shards + 1).round().astype(int)


def shard_of(index: int, n_units: int, n_shards: int) -> int:
    """Which shard (0-based) of ``n_shards`` owns unit number ``index``."""
    bounds = shard_bounds(n_units, n_shards)
    return int(np.searchsorted(bounds, index, side="right") - 1)


def _tmp_name(path: Path) -> Path:
    # shards on several machines may share the folder: the pid alone is not unique
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def write_part(table, path: Path, meta: dict) -> None:
    """Write one unit's table atomically, with ``meta`` in the parquet schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    t = pa.Table.from_pandas(table, preserve_index=False)
    t = t.replace_schema_metadata({**(t.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    tmp = _tmp_name(path)
    try:
        pq.write_table(t, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def part_meta(path: Path) -> dict | None:
    """The ``meta`` a part was written with (None for a part without it or an unreadable file)."""
    import pyarrow.parquet as pq

    try:
        md = pq.read_schema(path).metadata or {}
    except Exception:  # a truncated or foreign file: treat as not finished
        return None
    raw = md.get(META_KEY)
    try:
        return json.loads(raw) if raw else None
    except ValueError:  # damaged metadata: treat as not finished
        return None


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    from codetransfer.trained.checks import read_record, require_keys

    fix = "re-run any one shard of the sweep to rewrite it"
    return require_keys(read_record(path, "sweep manifest", fix), {"units": list}, path, "sweep manifest", fix)


def check_manifest(folder: Path, settings: dict, what: str = "patch") -> None:
    """Refuse to add parts to a folder that holds a sweep with other settings (naming what differs)."""
    old = read_manifest(folder)
    if old is None or old.get("settings_hash") == settings_hash(settings):
        return
    before = old.get("settings", {})
    diff = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
    raise CodetransferError(
        f"--out: {folder} holds parts of a {what} sweep with other settings (differs in {', '.join(diff) or '?'}); "
        f"re-run with the same arguments, or pass another --out, or delete {folder}"
    )


def part_status(folder: Path, manifest: dict) -> tuple[list[int], list[int]]:
    """Indices of the manifest's units whose part is missing, and of those written with other settings."""
    missing, foreign = [], []
    for k, unit in enumerate(manifest["units"]):
        path = folder / unit["part"]
        if not path.exists():
            missing.append(k)
            continue
        meta = part_meta(path)
        if meta is None or meta.get("settings") != manifest["settings_hash"] or meta.get("unit") != unit["id"]:
            foreign.append(k)
    return missing, foreign


def _names(units: Sequence[dict], idx: Sequence[int], limit: int = 3) -> str:
    shown = ", ".join(units[k]["id"] for k in idx[:limit])
    return shown + (f" and {len(idx) - limit} more" if len(idx) > limit else "")


def finalize_patch_tables(frames: dict[str, list]) -> dict:
    """``{table name: [unit frames in unit order]}`` -> ``{table name: DataFrame}`` (non-empty ones only).

    The one place where the unsharded patch run and the merge make the final tables, so that they agree.
    """
    import pandas as pd

    out = {}
    for name, parts in frames.items():
        if not parts:
            continue
        t = pd.concat(parts, ignore_index=True)
        for col in ("seed", "layer", "head", "pos"):  # integers with gaps, whatever the parts' own dtypes
            if col in t:
                t[col] = t[col].astype("Int64")
        out[name] = t
    return out


def check_patch(out: str | os.PathLike, allow_partial: bool = False) -> tuple[dict, list[int]]:
    """The manifest of ``out/parts/patch`` and the indices of its missing units, or a refusal.

    Raises :class:`CodetransferError` when no sweep is there, when parts are missing (unless
    ``allow_partial``) or when parts were written with other settings than the manifest's.
    """
    out = Path(out)
    folder = out / PATCH_PARTS
    manifest = read_manifest(folder)
    if manifest is None:
        raise CodetransferError(
            f"--out: no patching parts in {out} ({PATCH_PARTS / MANIFEST} is missing); "
            "run 'codetransfer patch ... --shard i/n --out' into this folder first"
        )
    units = manifest["units"]
    missing, foreign = part_status(folder, manifest)
    if foreign:
        raise CodetransferError(
            f"merge: {len(foreign)} of {len(units)} patching parts in {folder} come from other settings than the "
            f"manifest's ({_names(units, foreign)}); delete them and re-run their shards with the manifest's arguments"
        )
    if len(missing) == len(units) or (missing and not allow_partial):
        n = int(manifest.get("n_shards", 1))
        shards = sorted({shard_of(k, len(units), n) for k in missing})
        raise CodetransferError(
            f"merge: {len(missing)} of {len(units)} patching parts are missing ({_names(units, missing)}); "
            f"re-run shard {', '.join(f'{s}/{n}' for s in shards)} with the same arguments"
            + (", or pass --allow-partial to merge what is there" if len(missing) < len(units) else "")
        )
    return manifest, missing


def merge_patch(out: str | os.PathLike, allow_partial: bool = False, log=None) -> dict:
    """Merge ``out/parts/patch`` into the patching tables (written atomically into ``out``); returns them.

    Refuses as :func:`check_patch` does, before writing anything.
    """
    import pandas as pd

    from codetransfer.commands import write_tables

    out = Path(out)
    folder = out / PATCH_PARTS
    manifest, missing = check_patch(out, allow_partial)
    units = manifest["units"]
    if missing and log:
        log(f"note: merging {len(units) - len(missing)} of {len(units)} patching parts ({len(missing)} missing)")
    from codetransfer.trained.checks import read_table

    frames: dict[str, list] = {t: [] for t in manifest.get("tables", [])}
    skip = set(missing)
    for k, unit in enumerate(units):
        if k not in skip:
            frames.setdefault(unit["table"], []).append(
                read_table(folder / unit["part"], "patching part", fix="delete it and rerun that shard"))
    tables = finalize_patch_tables(frames)
    write_tables(out, tables)
    return tables


def _probe_unit(path: Path) -> tuple[str, str, str] | None:
    bits = path.stem.rsplit("__", 2)
    return tuple(bits) if len(bits) == 3 else None


def check_probe(out: str | os.PathLike, allow_partial: bool = False) -> list[tuple[str, str, str]]:
    """The missing probing units ``(run, task, site)`` of ``out/parts``, or a refusal.

    Refuses (unless ``allow_partial``) when the parts present do not cover every (run, task, site)
    combination that appears among them, and when there are no parts.
    """
    out = Path(out)
    parts = sorted((out / "parts").glob("*.parquet"))
    if not parts:
        raise CodetransferError(
            f"--out: no probing parts in {out / 'parts'}; run 'codetransfer probe ... --shard i/n --out' into it first"
        )
    present = {u for u in map(_probe_unit, parts) if u is not None}
    runs, tasks, sites = (sorted({u[k] for u in present}) for k in range(3))
    expected = sorted((r, t, s) for r in runs for t in tasks for s in sites)
    missing = [u for u in expected if u not in present]
    if missing and not allow_partial:
        shown = ", ".join("/".join(u) for u in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise CodetransferError(
            f"merge: {len(missing)} of {len(expected)} probing parts are missing ({shown}); re-run the probe shards "
            "that hold them with the same arguments (finished parts are skipped), or pass --allow-partial"
        )
    return missing


def merge_probe(out: str | os.PathLike, allow_partial: bool = False, log=None):
    """Merge ``out/parts/*.parquet`` into ``out/probes.parquet`` (``probes.sweep.merge_parts``); returns it.

    Refuses as :func:`check_probe` does, before writing anything.
    """
    from codetransfer.probes.sweep import merge_parts

    missing = check_probe(out, allow_partial)
    if missing and log:
        log(f"note: merging probing parts with {len(missing)} missing")
    return merge_parts(out)


def run(args) -> int:
    import sys

    out = Path(args.out)
    if not out.is_dir():
        raise CodetransferError(f"--out: {out} is not a folder; pass the RESULTS folder the shards wrote into")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    kinds = ["probe", "patch"] if args.kind == "all" else [args.kind]
    if args.kind == "all":
        have = {"probe": any((out / "parts").glob("*.parquet")), "patch": (out / PATCH_PARTS / MANIFEST).exists()}
        kinds = [k for k in kinds if have[k]]
        if not kinds:
            raise CodetransferError(
                f"--out: no probing or patching parts under {out / 'parts'}; run the sharded sweeps into {out} first"
            )
    for kind in kinds:  # refuse before writing anything
        (check_probe if kind == "probe" else check_patch)(out, args.allow_partial)
    results = {}
    for kind in kinds:
        if kind == "probe":
            results["probes.parquet"] = merge_probe(out, args.allow_partial, log)
        else:
            results.update(merge_patch(out, args.allow_partial, log))
    for name, t in results.items():
        print(f"wrote {out / name} ({len(t)} rows)")
    return 0
