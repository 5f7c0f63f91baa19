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


def items_up_to(family, n: int, seed: int, max_difficulty: int | None):
    """``n`` items of a task family, spread evenly over its levels <= ``max_difficulty`` (all levels when
    None); used to keep prompts inside a small model's context."""
    from codetransfer.errors import CodetransferError

    if max_difficulty is None:
        return family.generate(n, seed)
    levels = [d for d in family.difficulties if d <= max_difficulty]
    if not levels:
        raise CodetransferError(
            f"--max-difficulty: {family.name} has no level <= {max_difficulty} "
            f"(levels {min(family.difficulties)}-{max(family.difficulties)})"
        )
    per = -(-n // len(levels))
    return [it for d in levels for it in family.generate(per, seed, difficulty=d)][:n]
