"""Files the analyses write: atomic writes, content keys, shards and the bookkeeping of restartable work.

A base module like :mod:`codetransfer.errors`: every package may import it (it imports nothing of the
project but the errors module).

* Atomic writes (:func:`write_text`, :func:`write_json`, :func:`write_parquet`): the data goes to a
  temporary file named after the host and process (shards on several machines may share a folder)
  and is renamed into place, so a reader never sees half a file. :func:`write_tables` writes several
  tables all-or-nothing.
* :func:`key`: the short sha256 of an object's sorted JSON, which restart records and parquet parts
  carry to say what they were made from.
* Shards (:func:`parse_shard`, :func:`shard_bounds`, :func:`shard_of`, :func:`shard_units`): shard
  ``i/n`` takes the ``i``-th of ``n`` contiguous blocks of a fixed list of units.
* :class:`UnitRecords`: the main job's ``out/units/<unit>.json`` records (a unit is skipped when its
  record holds the same key).
* Part manifests (:func:`write_manifest`, :func:`read_manifest`, :func:`missing_parts`): a sharded
  sweep lists its units and their part files in ``manifest.json`` so that a merge can say which parts,
  and which shards, are missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from codetransfer.errors import CodetransferError

MANIFEST = "manifest.json"
"""File name of a parts folder's unit list."""


# ---------------------------------------------------------------------- keys and names
def key(obj, length: int = 16) -> str:
    """The first ``length`` hex digits of the sha256 of ``obj`` as sorted JSON (non-JSON values as ``str``).

    Restart records (16 digits) and patching parts (12 digits) use it; the same object always gives the
    same key, so a restarted job recognises what it finished."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def safe_name(name) -> str:
    """``name`` with every run of characters outside ``A-Za-z0-9_.=-`` replaced by ``_`` (a file name)."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(name))


# ---------------------------------------------------------------------- atomic writes
def tmp_path(path: str | os.PathLike) -> Path:
    """A hidden temporary name next to ``path``, unique per host and process."""
    path = Path(path)
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def _replace(tmp: Path, path: Path, write: Callable[[Path], None]) -> None:
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace(tmp_path(path), path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike, data, indent: int | None = 1) -> None:
    """Write ``data`` as JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=indent, default=str))


def write_parquet(table, path: str | os.PathLike, metadata: Mapping[bytes, bytes] | None = None) -> None:
    """Write a DataFrame to ``path`` atomically (no index), with ``metadata`` added to the parquet schema."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = pa.Table.from_pandas(table, preserve_index=False)
    if metadata:
        t = t.replace_schema_metadata({**(t.schema.metadata or {}), **metadata})
    _replace(tmp_path(path), path, lambda tmp: pq.write_table(t, tmp))


def read_parquet_metadata(path: str | os.PathLike, name: bytes) -> bytes | None:
    """Schema metadata ``name`` of a parquet file; None when absent or the file is unreadable."""
    try:
        md = pq.read_schema(path).metadata or {}
    except Exception:  # a truncated or foreign file: treat as not finished
        return None
    return md.get(name)


def write_tables(out: str | os.PathLike, tables: Mapping) -> None:
    """Write ``{file name: DataFrame}`` into ``out`` all at once: every table goes to a temporary file
    first and the files are renamed only when all were written, so an error leaves nothing partial.
    Names ending in ``.csv`` are written as CSV, the others as parquet."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmps = {}
    try:
        for name, table in tables.items():
            tmp = tmp_path(out / name)
            if name.endswith(".csv"):
                table.to_csv(tmp, index=False)
            else:
                table.to_parquet(tmp, index=False)
            tmps[name] = tmp
        for name, tmp in tmps.items():
            os.replace(tmp, out / name)
    finally:
        for tmp in tmps.values():
            if tmp.exists():
                tmp.unlink()


# ---------------------------------------------------------------------- shards
def parse_shard(text: str, flag: str = "--shard") -> tuple[int, int]:
    """``"1/4"`` -> ``(1, 4)``; refuses anything else with a one-line error naming ``flag``."""
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise CodetransferError(f"{flag}: expected i/n such as 0/4, got '{text}'") from None
    if not (n >= 1 and 0 <= i < n):
        raise CodetransferError(f"{flag}: expected 0 <= i < n, got '{text}'; shards of 4 are 0/4 .. 3/4")
    return i, n


def shard_bounds(n_units: int, n_shards: int) -> np.ndarray:
    """Start indices of the ``n_shards`` contiguous blocks of ``n_units`` (plus the end)."""
    return np.linspace(0, n_units, n_shards + 1).round().astype(int)


def shard_units(units: Sequence, shard: tuple[int, int]) -> list:
    """The units of shard ``(i, n)``: the ``i``-th of ``n`` contiguous blocks of ``units``."""
    i, n = shard
    bounds = shard_bounds(len(units), n)
    return list(units[bounds[i] : bounds[i + 1]])


def shard_of(index: int, n_units: int, n_shards: int) -> int:
    """Which shard (0-based) of ``n_shards`` owns unit number ``index``."""
    bounds = shard_bounds(n_units, n_shards)
    return int(np.searchsorted(bounds, index, side="right") - 1)


# ---------------------------------------------------------------------- the main job's unit records
class UnitRecords:
    """Records of finished units in ``folder`` (``<unit>.json`` holding the unit's key and seconds).

    Every record is read when the records are opened, so a damaged one is refused (one line, naming the
    file) before any unit works; the folder itself is created only when the first unit finishes."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        for p in sorted(self.folder.glob("*.json")):
            self._read(p)

    @staticmethod
    def _read(path: Path) -> dict:
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CodetransferError(f"{path}: damaged unit record ({type(e).__name__}); delete it and rerun") from None
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            raise CodetransferError(
                f"{path}: damaged unit record (expected an object with a 'key'); delete it and rerun"
            )
        return record

    def done(self, name: str, unit_key: str) -> bool:
        """True when unit ``name`` finished with ``unit_key``."""
        p = self.folder / f"{name}.json"
        return p.exists() and self._read(p)["key"] == unit_key

    def run(self, name: str, unit_key: str, work: Callable[[], object]) -> bool:
        """Call ``work()`` unless unit ``name`` finished with ``unit_key``; record it; True when it worked."""
        if self.done(name, unit_key):
            return False
        t0 = time.time()
        work()
        self.finish(name, unit_key, time.time() - t0)
        return True

    def finish(self, name: str, unit_key: str, seconds: float) -> None:
        """Record unit ``name`` as finished with ``unit_key``."""
        write_json(self.folder / f"{name}.json", {"key": unit_key, "seconds": round(seconds, 1)}, indent=None)


# ---------------------------------------------------------------------- part manifests
def write_manifest(folder: str | os.PathLike, manifest: Mapping) -> None:
    """Write a parts folder's ``manifest.json`` (``units``: a list of dicts with ``id`` and ``part``)."""
    write_json(Path(folder) / MANIFEST, dict(manifest))


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of a parts folder, None when there is none; a damaged one is refused."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    fix = "re-run any one shard of the sweep to rewrite it"
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CodetransferError(f"{path}: not valid JSON; {fix}") from None
    if (
        not isinstance(manifest, dict)
        or not isinstance(manifest.get("units"), list)
        or not all(isinstance(u, dict) and isinstance(u.get("part"), str) for u in manifest["units"])
    ):
        raise CodetransferError(
            f"{path}: damaged sweep manifest (expected 'units': a list of objects with a 'part'); {fix}"
        )
    return manifest


def missing_parts(folder: str | os.PathLike, manifest: Mapping) -> list[int]:
    """Indices of the manifest's units whose part file is absent from ``folder``."""
    folder = Path(folder)
    return [k for k, unit in enumerate(manifest["units"]) if not (folder / unit["part"]).exists()]


def unit_names(units: Sequence[Mapping], idx: Sequence[int], limit: int = 3) -> str:
    """``a, b, c and 4 more``: the ids of units ``idx``."""
    shown = ", ".join(units[k]["id"] for k in idx[:limit])
    return shown + (f" and {len(idx) - limit} more" if len(idx) > limit else "")


def shards_to_rerun(missing: Sequence[int], n_units: int, n_shards: int) -> str:
    """``1/3, 2/3``: the shards that own the ``missing`` unit indices."""
    shards = sorted({shard_of(k, n_units, n_shards) for k in missing})
    return ", ".join(f"{s}/{n_shards}" for s in shards)
