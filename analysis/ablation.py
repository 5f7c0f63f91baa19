"""Circuit ablation: how much of the gap between two models a set of heads carries.

Method
------
A claim such as "code keeps the retrieval circuit in use" names heads. Its causal test removes those
heads' contribution and asks what is left (Wang et al. 2023, Chan et al. 2022):

* **mean ablation** replaces each named head's output ``hook_z`` by its mean over the real token
  positions of a reference batch (the model's own activations on the same distribution);
* **resample ablation** replaces it, item by item, with the head's output on *another* item of the
  batch at the same position (a fixed derangement drawn from ``seed``): the head still writes something
  of the right distribution, but nothing about this item;
* **zero ablation** sets it to zero (off-distribution; kept for comparison with older work).

For two models ``a`` (e.g. the baseline recipe) and ``b`` (the recipe with the advantage), both scored on
the same items with a per-item metric ``M`` (a logit difference, a log-probability), the gap is the
mean paired difference ``G = mean_i(M_b(i) - M_a(i))``. Ablating heads ``H`` in each model gives
``G_H``, and the share of the gap the heads carry is

    share = (G - G_H) / G

1 when the heads carry the whole gap, 0 when the gap survives their removal. A share is a ratio: it is
only meaningful where ``G``'s interval excludes 0, so :func:`gap_ablation` returns ``share = NaN`` with
``withheld = True`` otherwise (intervals are percentile bootstraps over items, paired: one resample of
items shared by all four terms). Seed-level statements come from repeating this per seed and comparing
the per-seed shares (:mod:`codetransfer.analysis.stats`).

Heads are named ``(layer, head)``. The same heads are ablated in both models, which presumes the models
share a base so that head ``(l, h)`` means the same in both (check with
:mod:`codetransfer.analysis.similarity`'s CKA before trusting a cross-model head identity).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from codetransfer.errors import CodetransferError, did_you_mean

ABLATIONS = ("mean", "resample", "zero")
Metric = Callable[[Float[Tensor, "batch pos vocab"], Int[Tensor, "batch pos"]], Float[Tensor, " batch"]]
"""A per-item metric: ``metric(logits, tokens) -> [batch]`` (tokens are the rows the logits came from)."""


def _check_heads(bridge, heads: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    out = []
    for pair in heads:
        if len(pair) != 2:
            raise CodetransferError(f"heads: expected (layer, head) pairs, got {pair!r}")
        layer, head = int(pair[0]), int(pair[1])
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise CodetransferError(
                f"heads: ({layer}, {head}) is outside the model's {n_layers} layers x {n_heads} heads"
            )
        out.append((layer, head))
    if not out:
        raise CodetransferError("heads: expected at least one (layer, head) to ablate")
    return sorted(set(out))


def _derangement(n: int, seed: int) -> Tensor:
    """A permutation of ``range(n)`` without fixed points (for resampling another item), seeded."""
    if n < 2:
        raise CodetransferError("resample ablation needs at least 2 items (each takes another item's activations)")
    gen = torch.Generator().manual_seed(seed)
    shift = int(torch.randint(1, n, (1,), generator=gen))
    perm = torch.randperm(n, generator=gen)
    out = torch.empty(n, dtype=torch.long)
    out[perm] = perm.roll(shift)  # item perm[k] takes perm[k - shift]: a single cycle, no fixed point
    return out


def head_outputs(
    bridge, tokens: Int[Tensor, "batch pos"], layers: Sequence[int], batch_size: int = 64
) -> dict[int, Float[Tensor, "batch pos head d_head"]]:
    """Every head's ``hook_z`` at ``layers`` on ``tokens`` (the source of mean and resample ablations)."""
    names = {f"blocks.{layer}.attn.hook_z": layer for layer in layers}
    out: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    with torch.inference_mode():
        for toks in tokens.split(batch_size):
            _, cache = bridge.run_with_cache(toks, names_filter=lambda name: name in names)
            for name, layer in names.items():
                out[layer].append(cache[name].float())
    return {layer: torch.cat(parts) for layer, parts in out.items()}


def ablation_values(
    bridge,
    tokens: Int[Tensor, "batch pos"],
    heads: Sequence[tuple[int, int]],
    method: str = "mean",
    *,
    lengths: Int[Tensor, " batch"] | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[tuple[int, int], Float[Tensor, "batch pos d_head"]]:
    """The value each ablated head's ``hook_z`` takes on each row of ``tokens`` (see the module docstring).

    ``lengths`` (real tokens per row; default: every position is real) restricts the mean to real positions.
    """
    if method not in ABLATIONS:
        raise CodetransferError(f"method: expected one of {ABLATIONS}, got '{method}'{did_you_mean(method, ABLATIONS)}")
    heads = _check_heads(bridge, heads)
    n, pos = tokens.shape
    d_head = bridge.cfg.d_head
    if method == "zero":
        return {h: torch.zeros(n, pos, d_head) for h in heads}
    z = head_outputs(bridge, tokens, sorted({layer for layer, _ in heads}), batch_size)
    if method == "resample":
        perm = _derangement(n, seed)
        return {(layer, head): z[layer][perm, :, head] for layer, head in heads}
    real = torch.ones(n, pos) if lengths is None else (torch.arange(pos)[None, :] < lengths[:, None]).float()
    count = real.sum()
    values = {}
    for layer, head in heads:
        mean = torch.einsum("bpd,bp->d", z[layer][:, :, head], real) / count
        values[(layer, head)] = mean.expand(n, pos, d_head)
    return values


def _replace_heads(values, layer: int, heads: Sequence[int], start: int, stop: int):
    """A ``hook_z`` hook that writes rows ``start:stop`` of ``values`` into ``heads`` of ``layer``."""

    def hook(z: Float[Tensor, "batch pos head d_head"], hook) -> Tensor:
        z = z.clone()
        for head in heads:
            z[:, :, head] = values[(layer, head)][start:stop].to(z.dtype)
        return z

    return hook


def ablated_scores(
    bridge,
    tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    values: dict[tuple[int, int], Float[Tensor, "batch pos d_head"]] | None,
    batch_size: int = 64,
) -> Float[Tensor, " batch"]:
    """``metric`` per row of ``tokens`` with every head of ``values`` replaced by its value (none: clean run)."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in values or {}:
        by_layer.setdefault(layer, []).append(head)
    out = []
    with torch.inference_mode():
        for start in range(0, tokens.shape[0], batch_size):
            toks = tokens[start : start + batch_size]
            stop = start + toks.shape[0]
            hooks = [
                (f"blocks.{layer}.attn.hook_z", _replace_heads(values, layer, heads, start, stop))
                for layer, heads in by_layer.items()
            ]
            logits = bridge.run_with_hooks(toks, fwd_hooks=hooks) if hooks else bridge(toks)
            out.append(metric(logits, toks).float())
    return torch.cat(out)


def _paired_bootstrap(terms: np.ndarray, n_boot: int, confidence: float, seed: int) -> np.ndarray:
    """Bootstrap means of ``terms`` [k, items], one item resample shared by the k rows: [n_boot, k]."""
    n = terms.shape[1]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    return terms[:, idx].mean(axis=2).T


def gap_ablation(
    model_a,
    model_b,
    tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    heads: Sequence[tuple[int, int]],
    method: str = "mean",
    *,
    lengths: Int[Tensor, " batch"] | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    batch_size: int = 64,
) -> pd.DataFrame:
    """The share of model ``b``'s advantage over model ``a`` that ``heads`` carry (see the module docstring).

    Both models are scored on the same ``tokens``; each model's ablation values come from its own
    activations. Returns one row per metric (``metric`` column): ``a_clean``, ``a_ablated``,
    ``b_clean``, ``b_ablated`` (mean metric of each model), ``gap`` (b - a), ``gap_ablated``, and
    ``share`` ((gap - gap_ablated) / gap), each with ``ci_low``/``ci_high`` (paired item bootstrap) and
    ``n_items``; the share row has ``withheld = True`` and NaN values when the gap's interval includes 0.
    """
    if method not in ABLATIONS:
        raise CodetransferError(f"method: expected one of {ABLATIONS}, got '{method}'{did_you_mean(method, ABLATIONS)}")
    if model_a.cfg.n_layers != model_b.cfg.n_layers or model_a.cfg.n_heads != model_b.cfg.n_heads:
        raise CodetransferError(
            "gap_ablation: the two models have different shapes "
            f"({model_a.cfg.n_layers}x{model_a.cfg.n_heads} vs {model_b.cfg.n_layers}x{model_b.cfg.n_heads} layers x heads); "
            "head (layer, head) must name the same head in both"
        )
    heads = _check_heads(model_a, heads)
    scores = {}
    for name, model in (("a", model_a), ("b", model_b)):
        values = ablation_values(model, tokens, heads, method, lengths=lengths, seed=seed, batch_size=batch_size)
        scores[f"{name}_clean"] = ablated_scores(model, tokens, metric, None, batch_size).double().numpy()
        scores[f"{name}_ablated"] = ablated_scores(model, tokens, metric, values, batch_size).double().numpy()
    table = gap_share(scores, n_boot=n_boot, confidence=confidence, seed=seed)
    table["method"] = method
    table["heads"] = ",".join(f"L{layer}H{head}" for layer, head in heads)
    table["n_items"] = int(tokens.shape[0])
    return table


GAP_TERMS = ("a_clean", "a_ablated", "b_clean", "b_ablated")
"""The four per-item scores a gap share is made of (see the module docstring)."""


def gap_share(
    scores: dict[str, Float[np.ndarray, " items"]], *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """The share of the gap ``b - a`` that an ablation removes, from per-item scores of both models.

    ``scores``: the :data:`GAP_TERMS` as arrays over the same items (item ``i`` of each is the same item).
    Returns the rows of :func:`gap_ablation` (``metric, value, ci_low, ci_high, withheld``): the four mean
    scores, ``gap``, ``gap_ablated`` and ``share``, intervals from one paired item bootstrap; the share is
    withheld (NaN) when the gap's interval includes 0.
    """
    missing = [t for t in GAP_TERMS if t not in scores]
    if missing:
        raise CodetransferError(f"gap_share: missing per-item scores {missing}; expected {list(GAP_TERMS)}")
    terms = np.stack([np.asarray(scores[t], dtype=np.float64) for t in GAP_TERMS])
    if terms.shape[1] < 2:
        raise CodetransferError(f"gap_share: expected at least 2 items, got {terms.shape[1]}")
    boot = _paired_bootstrap(terms, n_boot, confidence, seed)  # [boot, 4]
    point = terms.mean(axis=1)

    def derived(m):  # [..., 4] -> gap, gap_ablated, share
        gap = m[..., 2] - m[..., 0]
        gap_abl = m[..., 3] - m[..., 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(np.abs(gap) > 1e-12, (gap - gap_abl) / gap, np.nan)
        return gap, gap_abl, share

    alpha = (1 - confidence) / 2
    rows = []
    for k, name in enumerate(GAP_TERMS):
        lo, hi = np.quantile(boot[:, k], [alpha, 1 - alpha])
        rows.append(dict(metric=name, value=float(point[k]), ci_low=float(lo), ci_high=float(hi)))
    p_gap, p_gap_abl, p_share = derived(point)
    b_gap, b_gap_abl, b_share = derived(boot)
    gap_lo, gap_hi = np.quantile(b_gap, [alpha, 1 - alpha])
    rows.append(dict(metric="gap", value=float(p_gap), ci_low=float(gap_lo), ci_high=float(gap_hi)))
    lo, hi = np.quantile(b_gap_abl, [alpha, 1 - alpha])
    rows.append(dict(metric="gap_ablated", value=float(p_gap_abl), ci_low=float(lo), ci_high=float(hi)))
    withheld = bool(gap_lo <= 0 <= gap_hi)
    if withheld or not np.isfinite(b_share).any():
        rows.append(dict(metric="share", value=np.nan, ci_low=np.nan, ci_high=np.nan, withheld=True))
    else:
        lo, hi = np.nanquantile(b_share, [alpha, 1 - alpha])
        rows.append(dict(metric="share", value=float(p_share), ci_low=float(lo), ci_high=float(hi), withheld=False))
    table = pd.DataFrame(rows)
    table["withheld"] = table["withheld"].fillna(False).astype(bool)
    return table
