"""One module per ``codetransfer`` verb, each with ``add_arguments(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import os
from pathlib import Path


def write_tables(out: str | os.PathLike, tables: dict) -> None:
    """Write ``{file name: DataFrame}`` into ``out`` all at once: every table goes to a temporary file
    first and the files are renamed only when all were written, so an error leaves nothing partial."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmps = {}
    try:
        for name, table in tables.items():
            tmp = out / f".{name}.tmp"
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
