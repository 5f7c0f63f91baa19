"""An on-disk activation store, and extraction of chosen token positions from a loaded bridge.

Probing needs the same activations many times (every probe, control task, MDL run and split seed
reads them again), while a forward pass is the expensive part. So activations are extracted once,
at the token positions that carry labels only, and written to disk:

```
store_dir/
  meta.json            run, task, generator version, seed, sites, d_model, dtype, n_rows, complete
  index.parquet        one row per stored activation row: row, item, pos, and any label columns
  acts/<site>.npy      one memory-mapped float array per site, rows aligned with the index
```

A *site* is ``"<kind>.<layer>"`` (:mod:`codetransfer.analysis.sites`): ``kind`` is one of
``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out`` read from the matching
``blocks.{l}.hook_*``, or ``head_out``, the per-head output ``z[h] @ W_O[h]``, computed from
``blocks.{l}.attn.hook_z`` and the layer's ``W_O`` because the bridge has no per-head hook.
``resid_pre.3`` has shape ``[rows, d_model]``; ``head_out.3`` has shape ``[rows, n_heads, d_model]``
(its heads sum, plus ``b_O``, to ``attn_out.3``). The aliases ``attn``, ``mlp`` and ``head`` are
accepted for ``attn_out``, ``mlp_out`` and ``head_out``; a bare ``resid`` is refused.

Arrays are ``.npy`` files opened with :func:`numpy.lib.format.open_memmap`, so reading a site never
loads the whole store: :meth:`ActivationStore.iter_chunks` streams rows in chunks that fit a memory
budget, and :meth:`ActivationStore.read` copies only the rows asked for. Writing appends in batches;
the arrays grow by doubling when the caller's capacity estimate was too small and are trimmed to the
exact row count on :meth:`ActivationStore.close`. Nothing touches the disk until the first append, so
an extraction refused for bad input writes nothing. ``meta.json`` says ``"complete": false`` until
close, and an incomplete store (an interrupted extraction) is refused on open.

:meth:`ActivationStore.open` takes ``expect={"run": ..., "task_version": ..., "seed": ...}`` and
refuses a store made from another run, generator version or seed, so that a stale store is never
probed by mistake.

Extraction (:func:`extract_activations`) runs the bridge with forward hooks that gather only the
wanted positions into buffers as the forward pass goes (``run_with_hooks``), and stops the forward
pass after the last layer any site needs (``stop_at_layer``). The alternative,
``run_with_cache(names_filter=...)``, keeps full ``[batch, pos, d_model]`` tensors for every hook and
then gathers; ``bench/extraction.py`` measures both against a bare ``bridge(tokens)`` forward.
Prompts of different lengths are right-padded: the model is causal, so a position's activations do
not depend on padding after it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from codetransfer.analysis import encoding
from codetransfer.analysis import sites as sitespec
from codetransfer import artifacts
from codetransfer.errors import CodetransferError, did_you_mean

SITE_KINDS = sitespec.STORE_KINDS + tuple(a for a, k in sitespec.ALIASES.items() if k in sitespec.STORE_KINDS)
"""Site kinds the store accepts (canonical kinds of :mod:`~codetransfer.analysis.sites` and their aliases);
a site is ``f"{kind}.{layer}"``."""

HOOKS = {kind: sitespec.HOOKS[kind] for kind in sitespec.STORE_KINDS}
"""The bridge hook each stored site kind reads."""

Site = sitespec.Site
"""A site (``kind``, ``layer``); see :class:`codetransfer.analysis.sites.Site`."""

META_KEYS_CHECKED = ("run", "task", "task_version", "seed")
"""Keys of ``meta.json`` that :meth:`ActivationStore.open` can be asked to check."""

_DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64}


def parse_sites(spec: Sequence[str] | str, n_layers: int) -> list[Site]:
    """Turn ``["resid_post", "head_out.1"]`` into concrete sites (one per layer) the store can hold.

    A bare kind means that kind at every layer; ``kind.layer`` means one layer. Unknown kinds (with a
    did-you-mean hint), the ambiguous ``resid``, kinds the store cannot hold and layers the model
    lacks are refused. See :func:`codetransfer.analysis.sites.parse_sites`.
    """
    out = sitespec.parse_sites(spec, n_layers, allowed=sitespec.STORE_KINDS)
    whole = [s.name for s in out if s.head is not None]
    if whole:
        raise CodetransferError(f"sites: the store keeps every head of a layer; write '{whole[0].rsplit('.', 1)[0]}'")
    return out


def site_shape(site: Site, d_model: int, n_heads: int) -> tuple[int, ...]:
    """Per-row shape of a site's array."""
    return (n_heads, d_model) if site.per_head else (d_model,)


_atomic_write_text = artifacts.write_text


class ActivationStore:
    """Memory-mapped activations per site, an index table and a ``meta.json``.

    Make one with :meth:`create`, fill it with :meth:`append` (or :func:`extract_activations`) and
    :meth:`close` it; read it with :meth:`open`. Reading methods never load more than asked.
    """

    def __init__(self, path: Path, meta: dict, writable: bool):
        self.path = Path(path)
        self.meta = meta
        self._writable = writable
        self._arrays: dict[str, np.memmap] = {}
        self._index_parts: list[pd.DataFrame] = []
        self._index: pd.DataFrame | None = None
        self._pending = None

    # ------------------------------------------------------------------ creation and writing
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        run: str,
        task: str,
        task_version: str,
        seed: int,
        sites: Sequence[str],
        d_model: int,
        n_heads: int = 1,
        dtype: str = "float32",
        capacity: int = 1024,
        extra: Mapping | None = None,
        overwrite: bool = False,
    ) -> "ActivationStore":
        """Start a new store at ``path`` (a directory that must not exist unless ``overwrite``).

        ``sites`` are concrete site names (``"resid_post.0"``); ``capacity`` is the expected row
        count (arrays grow if it is exceeded). ``extra`` is stored in ``meta.json`` as is (e.g.
        recipe, run seed, positions policy).
        """
        path = Path(path)
        if dtype not in _DTYPES:
            raise CodetransferError(
                f"dtype: expected one of {', '.join(_DTYPES)}, got '{dtype}'{did_you_mean(dtype, _DTYPES)}"
            )
        parsed = []
        for name in sites:
            site = sitespec.Site.from_name(name, sitespec.STORE_KINDS)
            if site.layer is None or site.head is not None:
                raise CodetransferError(
                    f"sites: store sites are '<kind>.<layer>' with kind in {', '.join(sitespec.STORE_KINDS)}, "
                    f"got '{name}'; use parse_sites() to expand bare kinds"
                )
            parsed.append(site)
        if not parsed:
            raise CodetransferError("sites: expected at least one site, got none")
        if int(capacity) < 1:
            raise CodetransferError(f"capacity: expected a positive row count, got {capacity}")
        if path.exists() and not overwrite:
            raise CodetransferError(
                f"store path '{path}' already exists; pass overwrite=True or choose another directory"
            )
        meta = {
            "format": 1,
            "run": str(run),
            "task": str(task),
            "task_version": str(task_version),
            "seed": int(seed),
            "sites": [s.name for s in parsed],
            "d_model": int(d_model),
            "n_heads": int(n_heads),
            "dtype": dtype,
            "n_rows": 0,
            "complete": False,
            "extra": dict(extra or {}),
        }
        store = cls(path, meta, writable=True)
        store._pending = (parsed, int(capacity), bool(overwrite))
        return store

    def _materialize(self) -> None:
        """Create the directory and arrays on the first append, so a refused call writes nothing."""
        parsed, capacity, overwrite = self._pending
        if self.path.exists():
            if not overwrite:
                raise CodetransferError(
                    f"store path '{self.path}' already exists; pass overwrite=True or choose another directory"
                )
            shutil.rmtree(self.path)
        (self.path / "acts").mkdir(parents=True)
        d_model, n_heads = self.meta["d_model"], self.meta["n_heads"]
        for site in parsed:
            self._arrays[site.name] = np.lib.format.open_memmap(
                self._array_path(site.name),
                mode="w+",
                dtype=_DTYPES[self.meta["dtype"]],
                shape=(capacity, *site_shape(site, d_model, n_heads)),
            )
        _atomic_write_text(self.path / "meta.json", json.dumps(self.meta, indent=1))
        self._pending = None

    def _array_path(self, site: str) -> Path:
        return self.path / "acts" / f"{site}.npy"

    def _grow(self, site: str, needed: int) -> None:
        old = self._arrays[site]
        new_cap = max(needed, 2 * old.shape[0])
        tmp = self._array_path(site).with_suffix(".grow.npy")
        new = np.lib.format.open_memmap(tmp, mode="w+", dtype=old.dtype, shape=(new_cap, *old.shape[1:]))
        n = self.meta["n_rows"]
        step = max(1, (64 << 20) // max(1, old[0].nbytes))
        for start in range(0, n, step):
            stop = min(n, start + step)
            new[start:stop] = old[start:stop]
        new.flush()
        del old
        os.replace(tmp, self._array_path(site))
        self._arrays[site] = new

    def append(self, acts: Mapping[str, np.ndarray | Tensor], index: pd.DataFrame) -> None:
        """Append one batch: ``acts[site]`` has one row per row of ``index``.

        ``index`` must hold ``item`` and ``pos`` columns (plus any label columns); the ``row``
        column is assigned here. Every site of the store must be given.
        """
        if not self._writable:
            raise CodetransferError(f"store '{self.path}' was opened read-only; create a new store to write")
        missing = [s for s in self.meta["sites"] if s not in acts]
        unknown = [s for s in acts if s not in self.meta["sites"]]
        if missing or unknown:
            raise CodetransferError(
                f"acts: expected exactly the store's sites {self.meta['sites']}, missing {missing}, "
                f"unknown {unknown}; pass one array per site"
            )
        for col in ("item", "pos"):
            if col not in index.columns:
                raise CodetransferError(f"index: expected an '{col}' column, got columns {list(index.columns)}")
        n_new = len(index)
        start = self.meta["n_rows"]
        d_model, n_heads = self.meta["d_model"], self.meta["n_heads"]
        for site, arr in acts.items():
            kind, _, layer = site.partition(".")
            want = (n_new, *site_shape(Site(kind, int(layer)), d_model, n_heads))
            if tuple(arr.shape) != want:
                raise CodetransferError(f"acts['{site}']: expected shape {want}, got {tuple(arr.shape)}")
        if self._pending is not None:
            self._materialize()
        for site, arr in acts.items():
            if isinstance(arr, Tensor):
                arr = arr.detach().to("cpu").numpy()
            if start + n_new > self._arrays[site].shape[0]:
                self._grow(site, start + n_new)
            self._arrays[site][start : start + n_new] = arr
        part = index.reset_index(drop=True).copy()
        part.insert(0, "row", np.arange(start, start + n_new, dtype=np.int64))
        self._index_parts.append(part)
        self.meta["n_rows"] = start + n_new

    def close(self) -> "ActivationStore":
        """Trim arrays to the row count, write the index and mark the store complete.

        The memmaps are kept as ``.npy`` files; growing copies them in chunks, trimming likewise.

        Returns the store reopened read-only.
        """
        if not self._writable:
            return self
        n = self.meta["n_rows"]
        if n == 0:
            raise CodetransferError(f"store '{self.path}': no rows were appended; nothing to close")
        for site in list(self._arrays):
            arr = self._arrays[site]
            arr.flush()
            if arr.shape[0] != n:
                tmp = self._array_path(site).with_suffix(".trim.npy")
                new = np.lib.format.open_memmap(tmp, mode="w+", dtype=arr.dtype, shape=(n, *arr.shape[1:]))
                step = max(1, (64 << 20) // max(1, arr[0].nbytes))
                for s in range(0, n, step):
                    new[s : s + step] = arr[s : min(n, s + step)]
                new.flush()
                del new
                os.replace(tmp, self._array_path(site))
            self._arrays.pop(site)
            del arr
        index = pd.concat(self._index_parts, ignore_index=True)
        tmp = self.path / "index.parquet.tmp"
        index.to_parquet(tmp, index=False)
        os.replace(tmp, self.path / "index.parquet")
        self.meta["complete"] = True
        _atomic_write_text(self.path / "meta.json", json.dumps(self.meta, indent=1))
        self._writable = False
        self._index_parts = []
        return ActivationStore.open(self.path)

    # ------------------------------------------------------------------ reading
    @classmethod
    def open(cls, path: str | os.PathLike, expect: Mapping | None = None) -> "ActivationStore":
        """Open a complete store read-only; refuse it if ``expect`` disagrees with its meta.

        ``expect`` may name any of :data:`META_KEYS_CHECKED` (run, task, task_version, seed).
        """
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.exists():
            raise CodetransferError(
                f"store path '{path}' has no meta.json; expected a directory made by ActivationStore.create"
            )
        from codetransfer.trained.checks import read_record

        meta = read_record(meta_path, "activation store metadata", fix=f"delete {path} and extract again")
        if not meta.get("complete"):
            raise CodetransferError(
                f"store '{path}' is incomplete (extraction was interrupted); delete it and extract again"
            )
        for key, want in (expect or {}).items():
            if key not in META_KEYS_CHECKED:
                raise CodetransferError(
                    f"expect: unknown key '{key}'; expected some of {', '.join(META_KEYS_CHECKED)}"
                    f"{did_you_mean(key, META_KEYS_CHECKED)}"
                )
            have = meta.get(key)
            if str(have) != str(want):
                raise CodetransferError(
                    f"store '{path}' was made with {key}={have!r} but {want!r} was expected; "
                    "re-extract activations for this run/task version/seed or point at the matching store"
                )
        return cls(path, meta, writable=False)

    @property
    def sites(self) -> list[str]:
        """Site names held, e.g. ``["resid_post.0", "resid_post.1"]``."""
        return list(self.meta["sites"])

    @property
    def n_rows(self) -> int:
        return int(self.meta["n_rows"])

    @property
    def index(self) -> pd.DataFrame:
        """The index table (row, item, pos, label columns...)."""
        if self._writable:
            raise CodetransferError(f"store '{self.path}' is still being written; close() it before reading")
        if self._index is None:
            self._index = pd.read_parquet(self.path / "index.parquet")
        return self._index

    def _check_site(self, site: str) -> None:
        if self._writable:
            raise CodetransferError(f"store '{self.path}' is still being written; close() it before reading")
        if site not in self.meta["sites"]:
            raise CodetransferError(
                f"site: store '{self.path}' has no site '{site}'; it has {', '.join(self.meta['sites'])}"
                f"{did_you_mean(site, self.meta['sites'])}"
            )

    def array(self, site: str) -> np.memmap:
        """The whole site as a read-only memory map (nothing is loaded until indexed)."""
        self._check_site(site)
        return np.load(self._array_path(site), mmap_mode="r")

    def read(self, site: str, rows: Sequence[int] | np.ndarray | slice | None = None) -> np.ndarray:
        """Copy rows of a site into memory (all rows when ``rows`` is None)."""
        arr = self.array(site)
        out = np.array(arr if rows is None else arr[rows])
        del arr
        return out

    def chunk_rows(self, site: str, memory_budget: int) -> int:
        """Rows per chunk so that one chunk of ``site`` takes at most ``memory_budget`` bytes."""
        arr = self.array(site)
        row_bytes = int(np.prod(arr.shape[1:])) * arr.dtype.itemsize
        if memory_budget < row_bytes:
            raise CodetransferError(
                f"memory_budget: {memory_budget} bytes is less than one row of '{site}' "
                f"({row_bytes} bytes); raise the budget"
            )
        return int(memory_budget // row_bytes)

    def iter_chunks(self, site: str, memory_budget: int = 256 << 20) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, rows)`` chunks of a site, each at most ``memory_budget`` bytes."""
        step = self.chunk_rows(site, memory_budget)
        arr = self.array(site)
        for start in range(0, arr.shape[0], step):
            yield start, np.array(arr[start : start + step])
        del arr

    def __repr__(self) -> str:
        return (
            f"ActivationStore('{self.path}', run={self.meta['run']!r}, task={self.meta['task']!r}, "
            f"rows={self.n_rows}, sites={len(self.meta['sites'])})"
        )


# ---------------------------------------------------------------------- extraction
def _pad_tokens(tokens, pad_id: int) -> tuple[Int[Tensor, "item pos"], list[int]]:
    """Right-pad a list of token sequences (or pass a 2-D tensor through) and return lengths."""
    if isinstance(tokens, Tensor):
        if tokens.ndim != 2:
            raise CodetransferError(
                f"tokens: expected a 2-D [item, pos] tensor or a list of sequences, got shape {tuple(tokens.shape)}"
            )
        return tokens.long(), [tokens.shape[1]] * tokens.shape[0]
    seqs = [torch.as_tensor(list(t), dtype=torch.long) for t in tokens]
    if not seqs or any(len(s) == 0 for s in seqs):
        raise CodetransferError("tokens: expected a non-empty list of non-empty token sequences")
    return encoding.pad_rows(seqs, pad_id), [len(s) for s in seqs]


def extract_activations(
    bridge,
    tokens: Sequence[Sequence[int]] | Int[Tensor, "item pos"],
    positions: Sequence[Sequence[int]],
    sites: Sequence[str] | str,
    store: ActivationStore,
    batch_size: int = 16,
    *,
    index: pd.DataFrame | None = None,
    method: str = "hooks",
    device: str | torch.device | None = None,
) -> ActivationStore:
    """Run ``bridge`` over ``tokens`` and append the activations at ``positions`` to ``store``.

    Args:
        bridge: a loaded ``TransformerBridge`` (in eval mode).
        tokens: one token sequence per item (BOS included), or a 2-D tensor.
        positions: for each item, the token positions to keep (row order: item by item, in the
            order given).
        sites: site specs (``"resid_post"`` = every layer, ``"head_out.1"`` = one layer); must match the
            store's sites once expanded.
        store: a writable store from :meth:`ActivationStore.create`; it is closed and returned.
        batch_size: items per forward pass.
        index: optional extra columns (labels...), one row per kept position, in row order.
        method: ``"hooks"`` (gather inside forward hooks, stop after the last needed layer) or
            ``"cache"`` (``run_with_cache(names_filter=...)`` then gather).
        device: where to run; defaults to the bridge's device.

    Nothing is written when an argument is refused (positions outside a prompt, unknown sites,
    layers the model lacks).
    """
    cfg = bridge.cfg
    n_layers, d_model, n_heads = int(cfg.n_layers), int(cfg.d_model), int(cfg.n_heads)
    parsed = parse_sites(sites, n_layers)
    names = [s.name for s in parsed]
    if sorted(names) != sorted(store.meta["sites"]):
        raise CodetransferError(
            f"sites: expanded to {names} but the store was created for {store.meta['sites']}; "
            "create the store with the same sites"
        )
    if store.meta["d_model"] != d_model or (any(s.per_head for s in parsed) and store.meta["n_heads"] != n_heads):
        raise CodetransferError(
            f"store: made for d_model={store.meta['d_model']}, n_heads={store.meta['n_heads']} but the model has "
            f"d_model={d_model}, n_heads={n_heads}; create the store from this model's config"
        )
    if method not in ("hooks", "cache"):
        raise CodetransferError(
            f"method: expected 'hooks' or 'cache', got '{method}'{did_you_mean(method, ['hooks', 'cache'])}"
        )
    if int(batch_size) < 1:
        raise CodetransferError(f"batch_size: expected a positive integer, got {batch_size}")
    pad_id = getattr(getattr(bridge, "tokenizer", None), "pad_token_id", None) or 0
    padded, lengths = _pad_tokens(tokens, pad_id)
    if len(positions) != len(lengths):
        raise CodetransferError(
            f"positions: expected one list of positions per item ({len(lengths)} items), got {len(positions)}"
        )
    n_ctx = getattr(cfg, "n_ctx", None)
    if n_ctx is not None and padded.shape[1] > n_ctx:
        raise CodetransferError(
            f"tokens: longest prompt has {padded.shape[1]} tokens but the model's context is {n_ctx}; shorten the prompts"
        )
    for i, (pos_list, length) in enumerate(zip(positions, lengths)):
        for p in pos_list:
            if not 0 <= int(p) < length:
                raise CodetransferError(
                    f"positions: item {i} asks for token position {p} but its prompt has {length} tokens "
                    f"(0..{length - 1}); fix the char→token mapping or drop the label"
                )
    n_rows = sum(len(p) for p in positions)
    if n_rows == 0:
        raise CodetransferError("positions: no positions to extract; give at least one position per item")
    if index is not None and len(index) != n_rows:
        raise CodetransferError(f"index: expected one row per kept position ({n_rows}), got {len(index)} rows")
    if device is None:
        device = next(bridge.parameters()).device
    row_starts = np.concatenate([[0], np.cumsum([len(p) for p in positions])])
    stop_at = max(s.layer for s in parsed) + 1
    W_O = {s.layer: bridge.blocks[s.layer].attn.W_O.detach().to(device) for s in parsed if s.per_head}

    for start in range(0, len(lengths), int(batch_size)):
        stop = min(len(lengths), start + int(batch_size))
        width = max(lengths[start:stop])
        batch = padded[start:stop, :width].to(device)
        b_idx = torch.tensor(
            [i - start for i in range(start, stop) for _ in positions[i]], dtype=torch.long, device=device
        )
        p_idx = torch.tensor(
            [int(p) for i in range(start, stop) for p in positions[i]], dtype=torch.long, device=device
        )
        gathered: dict[str, Tensor] = {}
        with torch.inference_mode():
            if method == "hooks":
                hooks = []
                for site in parsed:

                    def hook(act, hook, _name=site.name):
                        gathered[_name] = act[b_idx, p_idx].detach().clone()

                    hooks.append((site.hook, hook))
                bridge.run_with_hooks(batch, fwd_hooks=hooks, stop_at_layer=stop_at if stop_at < n_layers else None)
            else:
                _, cache = bridge.run_with_cache(
                    batch,
                    names_filter=sorted({s.hook for s in parsed}),
                    stop_at_layer=stop_at if stop_at < n_layers else None,
                )
                for site in parsed:
                    gathered[site.name] = cache[site.hook][b_idx, p_idx]
                del cache
            for site in parsed:
                if site.per_head:
                    z = gathered[site.name]  # [rows, head, d_head]
                    gathered[site.name] = torch.einsum("rhd,hdm->rhm", z, W_O[site.layer])
        item_ids = [i for i in range(start, stop) for _ in positions[i]]
        part = pd.DataFrame({"item": np.asarray(item_ids, dtype=np.int64), "pos": p_idx.cpu().numpy().astype(np.int64)})
        if index is not None:
            row0 = int(row_starts[start])
            extra = index.iloc[row0 : row0 + len(part)].reset_index(drop=True)
            extra = extra.drop(columns=[c for c in ("row", "item", "pos") if c in extra.columns])
            part = pd.concat([part, extra], axis=1)
        store.append({k: v.float().cpu().numpy() for k, v in gathered.items()}, part)
    return store.close()
