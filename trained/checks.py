"""Checks at the front door: names, numbers, paths, devices and the files the project reads back.

Every loader and every verb uses these, so a bad value is refused the same way wherever it enters and
before anything is written. Each check raises :class:`~codetransfer.errors.CodetransferError` with one
line that names the field, flag or file, what is wrong with it and how to fix it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from codetransfer.errors import CodetransferError

#: names of sources, recipes and phases: they become file and folder names and table values
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+>-]*")
NAME_MAX = 64
NAME_RULE = (
    f"1-{NAME_MAX} characters, letters, digits and _ . + > -, starting with a letter or digit (e.g. 'balanced->text')"
)


def check_name(name: Any, where: str) -> str:
    """Refuse a name that is not a safe identifier (see ``NAME_RULE``): no '/', no '..', no spaces."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or len(name) > NAME_MAX or ".." in name:
        raise CodetransferError(f"{where}: {name!r} is not a valid name; use {NAME_RULE}")
    return name


def run_folder(recipe: str, seed: int, data_seed: int = 0) -> str:
    """The folder name of the run of ``recipe`` with init ``seed`` (``'balanced->text'``, 0 -> ``balanced-text-s0``);
    a run with another data order than its init seed's own (``data_seed`` > 0) gets ``-d<data_seed>``
    (``balanced-text-s0-d1``). A name without ``-d`` ends in ``-s<digits>``, one with it in ``-d<digits>``, so the
    two never meet; and since ``>`` is dropped, a run name never holds ``->`` (a cross-model pair is ``A->B``)."""
    return f"{recipe.replace('>', '')}-s{seed}" + (f"-d{data_seed}" if data_seed else "")


def is_data_order_pair(a: str, b: str) -> bool:
    """Whether run ``a`` is run ``b`` with another data order: ``a`` is ``b`` + ``-d<k>`` (same recipe, same init
    seed and shared base; see :func:`run_folder`)."""
    return re.fullmatch(re.escape(str(b)) + r"-d[1-9][0-9]*", str(a)) is not None


def is_data_order_run(name: str) -> bool:
    """Whether run folder ``name`` is a run with another data order than its init seed's own (``-s<seed>-d<k>``,
    :func:`run_folder`): a data-order twin, which pools over init seeds leave out."""
    return re.search(r"-s[0-9]+-d[1-9][0-9]*$", str(name)) is not None


def check_number(
    value: float,
    where: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Refuse a NaN or infinite number, or one outside ``[low, high]`` (open ends where asked)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise CodetransferError(f"{where}: expected a finite number, got {value}")
    bad = (low is not None and (value < low or (low_open and value == low))) or (
        high is not None and (value > high or (high_open and value == high))
    )
    if bad:
        lo = "" if low is None else f"{'(' if low_open else '['}{low:g}"
        hi = "" if high is None else f"{high:g}{')' if high_open else ']'}"
        rng = (
            f"{lo}, {hi}"
            if lo and hi
            else (f">{'' if low_open else '='} {low:g}" if lo else f"<{'' if high_open else '='} {high:g}")
        )
        raise CodetransferError(f"{where}: expected a value {'in ' + rng if lo and hi else rng}, got {value}")


def inside(root: str | Path, path: str | Path, what: str = "path") -> Path:
    """``path`` when it stays under ``root`` (after resolving '..' and links); refuses it otherwise."""
    root_r, path_r = Path(root).resolve(), Path(path).resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise CodetransferError(
            f"{what} {path} would be written outside the output folder {root}; rename it so that it stays inside"
        )
    return Path(path)


def check_folder(path: str | Path | None, flag: str) -> None:
    """Refuse ``path`` when it exists and is not a folder (a file given to ``--out`` or ``--runs``)."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise CodetransferError(f"{flag}: {path} is a file, not a folder; give a folder")


def check_device(device: str) -> str:
    """Refuse a torch device that cannot be used here (``--device cuda`` without CUDA, a typo)."""
    import torch

    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CodetransferError(
            f"--device: '{device}' is not available here ({msg}); use cpu or an available device"
        ) from None
    return device


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path``; a missing, unreadable or non-UTF-8 file is refused naming ``what``."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise CodetransferError(f"{path}: missing {what}") from None
    except IsADirectoryError:
        raise CodetransferError(f"{path}: expected a {what} file, found a folder") from None
    except UnicodeDecodeError as e:
        raise CodetransferError(f"{path}: {what} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def read_record(path: str | Path, what: str, fix: str = "delete it and rerun") -> dict:
    """A JSON object the project wrote (a run record, a unit record, a manifest); a damaged one (not JSON,
    not an object) is refused with one line naming the file and ``fix``."""
    path = Path(path)
    try:
        data = json.loads(read_text(path, what))
    except json.JSONDecodeError as e:
        raise CodetransferError(f"{path}: damaged {what} ({e.msg} at line {e.lineno}); {fix}") from None
    except CodetransferError as e:
        if "missing" in str(e):
            raise
        raise CodetransferError(f"{e}; {fix}") from None
    if not isinstance(data, dict):
        raise CodetransferError(f"{path}: damaged {what} (a JSON {type(data).__name__}, not an object); {fix}")
    return data


def require_keys(
    record: dict, keys: dict[str, type | tuple], path: str | Path, what: str, fix: str = "delete it and rerun"
) -> dict:
    """Refuse ``record`` when a key of ``keys`` is missing or has the wrong type."""
    for k, tp in keys.items():
        if k not in record:
            raise CodetransferError(f"{path}: damaged {what} (no '{k}' field); {fix}")
        v = record[k]
        if not isinstance(v, tp) or (isinstance(v, bool) and tp is int):
            raise CodetransferError(f"{path}: damaged {what} ('{k}' is {v!r}); {fix}")
    return record


def read_table(path: str | Path, what: str, columns: tuple[str, ...] = (), fix: str = "delete it and rerun"):
    """A parquet or csv table the project wrote; a damaged one (unreadable, columns missing) is refused
    with one line naming the file and ``fix``."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise CodetransferError(f"{path}: missing {what}; {fix}")
    try:
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as e:  # pyarrow / pandas raise many types for a damaged file
        raise CodetransferError(
            f"{path}: damaged {what} ({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}); {fix}"
        ) from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise CodetransferError(f"{path}: damaged {what} (no column {', '.join(map(repr, missing))}); {fix}")
    return table


def check_flags(args) -> None:
    """The flags several verbs share, checked once before any work: ``--out`` and ``--runs`` (folders, not
    files) and ``--device`` (usable here)."""
    for attr, flag in (("out", "--out"), ("runs", "--runs"), ("folder", "folder")):
        check_folder(getattr(args, attr, None), flag)
    if getattr(args, "device", None) is not None:
        check_device(args.device)


def check_baseline(baseline: str, recipes, where: str = "--baseline") -> str:
    """Refuse a baseline recipe that is not among ``recipes`` (with a did-you-mean)."""
    from codetransfer.errors import did_you_mean

    recipes = sorted(set(recipes))
    if baseline not in recipes:
        raise CodetransferError(
            f"{where}: recipe '{baseline}' is not among the recipes{did_you_mean(baseline, recipes)} "
            f"({', '.join(recipes)}); pick one of them"
        )
    return baseline
