"""Prepared data of a grid: the shared tokenizer and each source's token stream, and the mixer.

``prepare_data(grid, folder)`` reads every source once, trains the shared BPE on an equal-share sample
of all sources, and writes each source's train and held-out documents as flat token arrays
(``[bos] doc [eos] [bos] doc [eos] ...``, uint16) plus ``manifest.json`` (provenance, token counts,
tokenizer hash). It is skipped when the folder already holds data for the same grid fingerprint.

The mixer (:class:`Mixer`) decides, with no randomness, which source each training row comes from:
row r of a phase goes to the source with the largest deficit ``w_s * (r + 1) - n_s``, so every prefix
of the phase matches the mixture to within one row. Each source's stream is cut into windows of
``n_ctx`` tokens, visited in a permuted order that depends on the seed (re-permuted every epoch).
Its whole state is the number of rows taken from each source, so resuming is exact.

A run with another data order (grid field ``data_seeds``) takes, in a phase after its shared prefix, the same
rows as the run of its init seed (the same sources and the same windows, :meth:`Mixer.allocate` and
:meth:`Mixer.rows` over the whole phase) in another order: :meth:`Mixer.reordered_rows` draws row ``q`` of
the phase from row ``perm[q]`` of that plan, ``perm`` a permutation of the phase's rows seeded by the init
seed, the data seed and the phase index. Its state is the same two counters (rows per source over the run
and in the phase), so resuming is exact as well.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codetransfer.errors import CodetransferError
from codetransfer.trained.config import GridConfig
from codetransfer.trained.checks import inside, read_record
from codetransfer.trained.sources import load_source, sha256
from codetransfer.trained.tokenizer import encode_documents, tokenizer_hash, train_tokenizer


def _sample(docs: list[str], budget: int) -> list[str]:
    out, total = [], 0
    for d in docs:
        if total >= budget:
            break
        out.append(d[: budget - total])
        total += len(out[-1])
    return out


def _write_tokens(path: Path, streams: list[list[int]]) -> int:
    flat = np.fromiter((t for s in streams for t in s), dtype=np.uint16)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, flat)
    os.replace(tmp, path)
    return int(flat.size)


def prepare_data(grid: GridConfig, folder: str | Path, log=print) -> dict:
    """Tokenizer + token arrays of every source of ``grid`` in ``folder``; returns the manifest."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if manifest_path.exists():
        manifest = read_record(manifest_path, "data manifest", f"delete {folder} and rerun")
        if manifest.get("grid_fingerprint") == grid.fingerprint():
            return manifest
        raise CodetransferError(
            f"{folder} holds data of another grid configuration; use another output folder or delete it"
        )
    if grid.tokenizer.vocab_size > 65535:
        raise CodetransferError(f"tokenizer.vocab_size: at most 65535 supported, got {grid.tokenizer.vocab_size}")
    t0 = time.time()
    sources = {name: load_source(name, cfg, seed=0) for name, cfg in grid.sources.items()}
    folder.mkdir(parents=True, exist_ok=True)  # only once every source has loaded
    share = grid.tokenizer.sample_bytes // len(sources)
    sample = [d for s in sources.values() for d in _sample(s.train, share)]
    tokenizer = train_tokenizer(sample, vocab_size=grid.tokenizer.vocab_size, model_max_length=grid.model.n_ctx)
    if len(tokenizer) > grid.tokenizer.vocab_size:
        raise CodetransferError(f"tokenizer has {len(tokenizer)} tokens, more than vocab_size")
    tokenizer.save_pretrained(folder / "tokenizer")
    info = {}
    for name, s in sources.items():
        counts = {}
        for split, docs in (("train", s.train), ("heldout", s.heldout)):
            counts[split] = _write_tokens(
                inside(folder, folder / f"{name}.{split}.npy", f"source '{name}':"), encode_documents(tokenizer, docs)
            )
        info[name] = {
            "kind": s.kind,
            "category": s.category,
            "documents": {"train": len(s.train), "heldout": len(s.heldout)},
            "tokens": counts,
            "bytes_per_token": round(sum(len(d.encode()) for d in s.train) / max(counts["train"], 1), 3),
            "provenance": s.provenance,
        }
        log(f"  source {name:<20} {counts['train']:>10,} train / {counts['heldout']:>8,} held-out tokens")
    manifest = {
        "grid_fingerprint": grid.fingerprint(),
        "tokenizer_sha256": tokenizer_hash(tokenizer),
        "vocab_size": len(tokenizer),
        "sources": info,
    }
    # the wall time is kept apart from the manifest, so that identical preparations have identical manifests
    tmp = folder / ".timing.json.tmp"
    tmp.write_text(json.dumps({"seconds": round(time.time() - t0, 1)}))
    os.replace(tmp, folder / "timing.json")
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, manifest_path)
    return manifest


def load_tokens(folder: str | Path, source: str, split: str) -> np.ndarray:
    path = Path(folder) / f"{source}.{split}.npy"
    if not path.is_file():
        raise CodetransferError(f"{path}: missing token array; run 'codetransfer train' to prepare the data")
    return np.load(path, mmap_mode="r")


@dataclass
class Mixer:
    """Deterministic mixture of sources into fixed-length rows (see the module docstring)."""

    streams: dict[str, np.ndarray]
    n_ctx: int
    seed: int

    def __post_init__(self):
        self.n_windows = {s: len(a) // self.n_ctx for s, a in self.streams.items()}
        for s, n in self.n_windows.items():
            if n == 0:
                raise CodetransferError(f"source '{s}' has fewer than n_ctx={self.n_ctx} training tokens")
        self._perms: dict[tuple[str, int], np.ndarray] = {}
        self._index = {s: i for i, s in enumerate(sorted(self.streams))}
        self._plan_key: tuple | None = None  # the phase whose reordering plan is cached (reordered_rows)
        self._plan: tuple = ()

    def _window(self, source: str, k: int) -> int:
        n = self.n_windows[source]
        epoch, i = divmod(k, n)
        key = (source, epoch)
        if key not in self._perms:
            if len(self._perms) > 64:
                self._perms.clear()
            rng = np.random.default_rng([self.seed, self._index[source], epoch])
            self._perms[key] = rng.permutation(n)
        return int(self._perms[key][i])

    @staticmethod
    def allocate(weights: dict[str, float], first_row: int, n_rows: int, counts: dict[str, int]) -> list[str]:
        """Sources of rows ``first_row .. first_row + n_rows`` of a phase; updates ``counts`` (rows per
        source taken in this phase so far)."""
        out = []
        names = sorted(weights)
        for r in range(first_row, first_row + n_rows):
            best = max(names, key=lambda s: (weights[s] * (r + 1) - counts.get(s, 0), -names.index(s)))
            counts[best] = counts.get(best, 0) + 1
            out.append(best)
        return out

    def _phase_plan(self, weights: dict[str, float], n_rows: int, order: tuple[int, ...]):
        """``(sources, occurrence, perm)`` of a phase of ``n_rows`` rows: the source of each row in the default
        order, how many rows of that source come before it in the phase, and the permutation of the rows."""
        key = (tuple(sorted(weights.items())), n_rows, order)
        if self._plan_key != key:
            sources = Mixer.allocate(weights, 0, n_rows, {})
            seen: dict[str, int] = {}
            occurrence = np.empty(n_rows, dtype=np.int64)
            for r, s in enumerate(sources):
                occurrence[r] = seen.get(s, 0)
                seen[s] = occurrence[r] + 1
            perm = np.random.default_rng(list(order)).permutation(n_rows)
            self._plan_key, self._plan = key, (sources, occurrence, perm)
        return self._plan

    def reordered_rows(
        self,
        weights: dict[str, float],
        n_rows: int,
        first_row: int,
        n: int,
        taken: dict[str, int],
        counts: dict[str, int],
        order: tuple[int, ...],
    ) -> tuple[list[str], np.ndarray]:
        """``(sources, rows)`` of rows ``first_row .. first_row + n`` of a phase of ``n_rows`` rows in the data
        order ``order`` (a tuple of non-negative integers seeding the permutation): the rows the default order
        (:meth:`allocate` then :meth:`rows`) gives the phase, permuted. ``taken`` (rows per source over the run)
        and ``counts`` (rows per source in this phase) are updated in place, as there; their difference is
        where each source's stream stood when the phase began."""
        sources, occurrence, perm = self._phase_plan(weights, n_rows, order)
        start = {s: taken.get(s, 0) - counts.get(s, 0) for s in weights}
        out_sources = []
        out = np.empty((n, self.n_ctx), dtype=np.int64)
        for i, q in enumerate(range(first_row, first_row + n)):
            r = int(perm[q])
            s = sources[r]
            w = self._window(s, start[s] + int(occurrence[r]))
            taken[s] = taken.get(s, 0) + 1
            counts[s] = counts.get(s, 0) + 1
            out[i] = self.streams[s][w * self.n_ctx : (w + 1) * self.n_ctx]
            out_sources.append(s)
        return out_sources, out

    def rows(self, sources: list[str], taken: dict[str, int]) -> np.ndarray:
        """Token rows for ``sources`` (one per row), continuing each source's stream from ``taken``
        (rows per source over the whole run so far, updated in place)."""
        out = np.empty((len(sources), self.n_ctx), dtype=np.int64)
        for i, s in enumerate(sources):
            w = self._window(s, taken.get(s, 0))
            taken[s] = taken.get(s, 0) + 1
            out[i] = self.streams[s][w * self.n_ctx : (w + 1) * self.n_ctx]
        return out


def data_hash(folder: str | Path) -> str:
    """Hash of the data manifest (recorded in each run's manifest)."""
    return sha256((Path(folder) / "manifest.json").read_bytes())[:16]
