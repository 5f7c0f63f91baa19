"""A grid as the TOML file that ``load_grid`` reads back: :func:`grid_to_toml`.

``codetransfer grid show tiny`` prints a shipped preset this way, so that a user can copy it, edit
it and train it (``codetransfer train my-grid.toml``). :func:`to_toml` writes any plain dict of
TOML-able values (str, int, float, bool, lists, dicts): tables as ``[a.b]``, lists of tables as
``[[a.b]]``, and inside those the small flat tables (a phase's ``mixture`` and ``lr``) inline.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

from codetransfer.trained.config import GridConfig, SourceConfig, recipe_dict


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _string(k)


def _string(s: str) -> str:
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_scalar(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"not a TOML value: {v!r}")


def _is_table_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, dict) for x in v)


def _flat(v: Any) -> bool:
    return isinstance(v, dict) and not any(isinstance(x, dict) or _is_table_list(x) for x in v.values())


def _table(d: dict, path: list[str], lines: list[str], inline_flat: bool) -> None:
    simple = {
        k: v
        for k, v in d.items()
        if not (isinstance(v, dict) and not (inline_flat and _flat(v))) and not _is_table_list(v)
    }
    for k, v in simple.items():
        lines.append(f"{_key(k)} = {_scalar(v)}")
    for k, v in d.items():
        if k in simple:
            continue
        sub = path + [_key(k)]
        if isinstance(v, dict):
            if not v or any(not isinstance(x, dict) for x in v.values()):  # a header only where it holds values
                if lines:
                    lines.append("")
                lines.append(f"[{'.'.join(sub)}]")
            _table(v, sub, lines, inline_flat)
        else:
            for item in v:
                lines.append("")
                lines.append(f"[[{'.'.join(sub)}]]")
                _table(item, sub, lines, True)  # inside a list of tables: small flat tables inline


def to_toml(data: dict) -> str:
    """``data`` (a plain dict) as TOML text that ``tomllib.loads`` reads back to an equal dict (tuples as lists)."""
    lines: list[str] = []
    _table(data, [], lines, inline_flat=False)
    return "\n".join(lines) + "\n"


def grid_to_toml(grid: GridConfig) -> str:
    """The grid file of ``grid``: ``load_grid`` of the text (saved as a ``.toml`` file) gives an equal grid."""
    d = grid.to_dict()
    d["recipes"] = [recipe_dict(r) for r in grid.recipes]  # phases without their default warm-up
    defaults = dataclasses.asdict(SourceConfig(kind="files"))
    for src in d.get("sources", {}).values():  # fields at their defaults say nothing (e.g. a stdlib's "category")
        for field in [f for f, v in src.items() if f != "kind" and v == defaults.get(f, object())]:
            del src[field]
    for r in d.get("recipes", []):
        if not r.get("compare_with"):
            r.pop("compare_with", None)  # the default: compared with the job's baseline only
        if r.get("warmup") == "grid":
            r.pop("warmup", None)  # the default: the grid's train.induction_warmup
    if not d["train"].get("induction_warmup_required"):
        d["train"].pop("induction_warmup_required", None)  # the default: a failed warm-up warns and training goes on
    if not d.get("data_seeds"):
        d.pop("data_seeds", None)  # the default: every run in its init seed's own data order only
    order = ["name", "description", "seeds", "data_seeds", "model", "tokenizer", "train", "sources", "recipes"]
    d = {k: d[k] for k in order if k in d} | {k: v for k, v in d.items() if k not in order}
    return to_toml(d)
