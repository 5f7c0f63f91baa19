"""Activation patching: within a model, between models of the grid, and between renderings.

Method
------
Activation patching (ROME; Zhang & Nanda 2023 for best practice) asks which activations a model
*uses*. We run the model on two prompts that differ in one fact — the *clean* prompt (an
:class:`~codetransfer.tasks.items.Item`) and its *counterfactual* (the "corrupted" run, whose right
answer is another candidate) — and measure the logit difference

    metric = logit(answer of the clean item) - logit(answer of the counterfactual)

at the position that predicts the answer. Then we re-run one prompt while replacing a single
activation (a *site* at one layer, one position, one head) with its value from the other run:

* **denoising** (the default, ``direction="denoising"``): run the corrupted prompt, patch in a
  clean activation. A site whose clean value restores the clean answer is *sufficient* to carry
  the fact.
* **noising** (``direction="noising"``): run the clean prompt, patch in a corrupted activation. A
  site whose corrupted value destroys the answer is *necessary*.

Both are reported on one scale, ``(patched - corrupted) / (clean - corrupted)``: 0 is the
corrupted run and 1 the clean run. The scale is a ratio of item means (more stable than a mean of
per-item ratios when a pair's gap is small), and its interval is a percentile bootstrap over items.

Sites (TransformerBridge hook names, ``l`` = layer): ``resid_pre`` (``blocks.l.hook_resid_pre``),
``resid_mid`` (the residual after attention), ``attn_out`` and ``mlp_out`` (a layer's write), per
head ``head_out`` (``blocks.l.attn.hook_z``, i.e. the head's output before the shared ``W_O``), and
``q``/``k``/``v`` (``blocks.l.attn.hook_q/k/v``). Each is swept by layer and position (``by_pos``)
or by layer over all positions; head sites also by head. Names and hooks come from
:mod:`codetransfer.analysis.sites` (the vocabulary probing and the store share; ``attn``, ``mlp``
and ``head`` are accepted for ``attn_out``, ``mlp_out`` and ``head_out``, a bare ``resid`` is
refused as ambiguous). Prompts are encoded by :mod:`codetransfer.analysis.encoding`.

Speed
-----
TransformerLens' ``transformer_lens.patching`` runs one full forward per cell. Here

1. the clean and corrupted runs are cached once (residual streams, layer writes, ``hook_z``, and
   the keyword arguments every block receives: mask, rotary embeddings);
2. a patched run starts *at the patched layer*: block ``l`` is called directly on the cached
   residual (``bridge.blocks[l](resid, **block_kwargs)``) instead of re-running blocks ``0..l-1``;
   a write (``attn_out``, ``mlp_out``, a head's ``z @ W_O``) is patched by adding the
   source-minus-target difference to the cached residual after it, so ``attn_out`` / ``head_out``
   runs start after block ``l``'s attention and ``mlp_out`` runs at block ``l + 1``;
3. many cells are stacked along the batch dimension of one forward (``max_rows`` rows per call);
4. only the logits at the answer position are computed (the unembedding is the largest matmul of
   a small-vocabulary model at short prompts).

``q``/``k``/``v`` are patched with a hook on block ``l`` (still starting at ``l``, still stacked).
The results equal TransformerLens' own patching functions on the same inputs (tested to 1e-5),
with one deliberate exception: on this bridge ``hook_resid_mid`` is the input of ``ln2`` only, so
TransformerLens' ``get_act_patch_resid_mid`` changes the MLP's input but not the residual skip;
our ``resid_mid`` replaces the whole residual stream after attention (patching every position then
restores the source run exactly, as for ``resid_pre``).

Also here: path patching from a sender head into receivers' q/k/v
(:func:`path_patching`, TransformerLens' ``get_act_patch_direct_path``), attribution patching as a
fast screen with its rank agreement to exact patching (:func:`attribution_screen`), circuit
faithfulness (:func:`circuit_faithfulness`), cross-model patching (:func:`cross_model_patching`,
Prakash et al. 2024) and cross-rendering patching (:func:`cross_rendering_patching`).

Cross-rendering patching and its control
----------------------------------------
Cross-rendering patching runs the *text* rendering of the counterfactual world (the target, '0') with
one activation taken from the *code* rendering of the clean world (the source) at an aligned
position, on the same scale as above (1 = the text rendering of the clean world). A score of 1 does
not by itself show a representation shared by the two renderings: at the position where the two
worlds differ (the changed fact, e.g. ``answer_source``) the code prompt holds the clean answer's
token, the same token the clean text holds there, so the first layer's residual (the token
embedding) restores the clean text exactly in any model, text-only included.

The **control** patches the same cells from the code rendering of the *counterfactual* world (the
code twin of the target's counterfactual, whose answer is the counterfactual's, not the clean one),
holding at the patched position the token the real source holds there (token-matched). At a position
where the two worlds' code prompts hold the same token (every position but the changed fact) this is
the counterfactual's code twin unchanged: whatever a patch from it restores is common to both worlds,
not the clean answer. At the changed fact (and before it) the control's prompt equals the real
source's up to the position, so a causal model gives the control the score's value — the effect is the
token, not a representation of the world — and the control is set to the score there exactly (a
second forward pass would differ by float noise). The sweep's table (:meth:`PatchingSweep.table`)
holds, per cell, ``cross_rendering`` (the score), ``cross_rendering_control`` and
``cross_rendering_excess`` = score - control with an interval from the same item resamples. The
report counts a cell as a shared representation only where the score's and the excess's intervals
lie above 0; where the control lies within the score's interval the score is token identity. The
control rules out the token at the patched position, not the tokens the code prompt mentions before
it: a position after the changed fact that gathers them by attention (as even a random model's heads
do) carries the clean world's token in both renderings alike.

Usage::

    from codetransfer.analysis import patching as P
    from codetransfer.analysis.patching_plots import plot_layer_head
    from codetransfer.tasks import get_task

    items = get_task("entity_tracking").generate(64, seed=0)
    batch = P.pair_batch(items, run.tokenizer, drop_misaligned=True)   # run = load_run(...)
    sweep = P.patch_head_out(run.bridge, batch.clean_tokens, batch.corrupted_tokens, batch.metric,
                             positions=batch.positions)                # span keys + 'last'
    table = sweep.table(dict(run=run.info.name, recipe=run.info.recipe, seed=run.info.seed,
                             task="entity_tracking"))
    plot_layer_head(table, pos_label="last")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from jaxtyping import Float, Int
from scipy.stats import spearmanr
from torch import Tensor
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.patching import get_act_patch_direct_path
from transformer_lens.tools.analysis import attribution_patch

from codetransfer.analysis import encoding, schema, sites
from codetransfer.analysis.stats import ratio_bootstrap_ci
from codetransfer.errors import CodetransferError, did_you_mean
from codetransfer.trained.tokenizer import tokenizer_hash

# ----------------------------------------------------------------------------------------------
# Sites

SITES = sites.PATCH_KINDS
"""Site kinds that patching supports (see :mod:`codetransfer.analysis.sites`)."""
HEAD_SITES = sites.HEAD_KINDS
DIRECTIONS = ("denoising", "noising")
TABLE_COLUMNS = schema.columns("patching")


def hook_name(site: str, layer: int) -> str:
    """The TransformerBridge hook name of ``site`` at ``layer``."""
    return sites.Site(check_site(site), layer).hook


def check_site(site: str) -> str:
    """The canonical patching site kind for ``site`` (``attn`` -> ``attn_out``); refuses others."""
    return sites.resolve_kind(site, SITES, "site")


def parse_sites(text: str) -> list[str]:
    """Canonical patching site kinds of a comma-separated list (``"resid_pre,attn,mlp,head"``)."""
    return sites.parse_kinds(text, SITES, "sites")


# ----------------------------------------------------------------------------------------------
# The metric


@dataclass(frozen=True)
class LogitDiff:
    """Per item: logit of the clean answer minus logit of the counterfactual answer at one position."""

    position: Int[Tensor, " batch"]
    """Token index whose next-token logits are read (the last prompt token)."""
    answer: Int[Tensor, " batch"]
    """First token of the clean item's answer."""
    counter: Int[Tensor, " batch"]
    """First token of the counterfactual's answer (must differ from ``answer``)."""

    def __post_init__(self):
        n = {len(self.position), len(self.answer), len(self.counter)}
        if len(n) != 1:
            raise CodetransferError(
                f"LogitDiff: position, answer and counter must have one entry per item, got lengths "
                f"{len(self.position)}, {len(self.answer)}, {len(self.counter)}"
            )
        same = (self.answer == self.counter).nonzero().flatten().tolist()
        if same:
            raise CodetransferError(
                f"counterfactual: item(s) {same[:5]} have the same answer token as their counterfactual; "
                "a counterfactual must change the answer — drop those items or fix the generator"
            )

    def __len__(self) -> int:
        return len(self.answer)

    def __call__(self, logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, " batch"]:
        """The metric on full logits (any batch that is a whole number of copies of the items)."""
        rows = torch.arange(logits.shape[0], device=logits.device)
        reps = logits.shape[0] // len(self)
        pos = self.position.to(logits.device).repeat(reps)
        return self.from_final(logits[rows, pos])

    def from_final(self, final: Float[Tensor, "rows vocab"]) -> Float[Tensor, " rows"]:
        """The metric on logits already taken at ``position`` (rows = copies of the items)."""
        reps = final.shape[0] // len(self)
        rows = torch.arange(final.shape[0], device=final.device)
        a = self.answer.to(final.device).repeat(reps)
        c = self.counter.to(final.device).repeat(reps)
        return final[rows, a] - final[rows, c]

    def mean(self) -> Callable[[Tensor], Tensor]:
        """A scalar metric (batch mean), the form TransformerLens' patching functions expect."""
        return lambda logits: self(logits).mean()


# ----------------------------------------------------------------------------------------------
# Cached runs


@dataclass
class RunCache:
    """One unpatched run: the activations every patched run starts from, plus block kwargs."""

    tokens: Int[Tensor, "batch pos"]
    acts: dict[str, Tensor]
    """Hook name -> activation ``[batch, pos, ...]`` (resid_pre/mid/post, writes, z, q, k, v)."""
    block_kwargs: list[dict]
    """Keyword arguments each block received (attention mask, rotary embeddings, ...)."""
    final: Float[Tensor, "batch vocab"]
    """Logits at the metric position."""
    metric: Float[Tensor, " batch"]
    """The unpatched run's metric per item."""
    position: Int[Tensor, " batch"]
    """The metric position per item (where ``final`` was read)."""


def _cache_names(n_layers: int) -> list[str]:
    """Every hook a patched run may start from or patch, at every layer."""
    return [sites.HOOKS[kind].format(layer=l) for l in range(n_layers) for kind in sites.KINDS]


def check_model(model) -> None:
    """Refuse models the fast runner cannot re-enter (no ``blocks`` stack, training mode)."""
    if not hasattr(model, "blocks") or not hasattr(model, "ln_final") or not hasattr(model, "unembed"):
        raise CodetransferError(
            f"model: expected a TransformerBridge with blocks, ln_final and unembed, got {type(model).__name__}; "
            "load it with codetransfer.trained.loading.load_bridge"
        )
    if model.training:
        raise CodetransferError("model: is in training mode; call model.eval() before patching")


def run_cache(model, tokens: Int[Tensor, "batch pos"], metric: LogitDiff) -> RunCache:
    """Run ``model`` once on ``tokens`` and keep what patched runs need."""
    check_model(model)
    n_layers = model.cfg.n_layers
    captured: dict[int, dict] = {}

    def grab(index):
        def pre_hook(module, args, kwargs):
            captured[index] = dict(kwargs)

        return pre_hook

    handles = [blk.register_forward_pre_hook(grab(i), with_kwargs=True) for i, blk in enumerate(model.blocks)]
    names = set(_cache_names(n_layers))
    try:
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    finally:
        for h in handles:
            h.remove()
    block_kwargs = []
    for i in range(n_layers):
        kw = dict(captured[i])
        kw["layer_past"] = None
        kw["use_cache"] = False
        block_kwargs.append(kw)
    acts = {n: cache[n].detach() for n in names if n in cache}
    rows = torch.arange(tokens.shape[0])
    final = logits[rows, metric.position.to(logits.device)].detach()
    return RunCache(tokens, acts, block_kwargs, final, metric.from_final(final), metric.position)


def _expand_kwargs(kwargs: dict, reps: int) -> dict:
    if reps == 1:
        return kwargs
    out = dict(kwargs)
    mask = out.get("attention_mask")
    if isinstance(mask, Tensor) and mask.shape[0] > 1:
        out["attention_mask"] = mask.repeat(reps, *([1] * (mask.ndim - 1)))
    return out


def _run_from(
    model, target: RunCache, h: Float[Tensor, "rows pos d_model"], layer: int, mid: bool, hooks=()
) -> Float[Tensor, "rows vocab"]:
    """Finish a forward from residual ``h`` entering block ``layer`` (after its attention if ``mid``).

    Returns the logits at the metric position of each row (rows = copies of the target batch).
    """
    batch = target.tokens.shape[0]
    reps = h.shape[0] // batch
    n_layers = model.cfg.n_layers
    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
        if mid:
            blk = model.blocks[layer]
            h = h + blk.mlp(blk.ln2(h))
            layer += 1
        for l in range(layer, n_layers):
            out = model.blocks[l](h, **_expand_kwargs(target.block_kwargs[l], reps))
            h = out[0] if isinstance(out, tuple) else out
        pos = target.position.to(h.device).repeat(reps)
        last = h[torch.arange(h.shape[0], device=h.device), pos]
        return model.unembed(model.ln_final(last))


# ----------------------------------------------------------------------------------------------
# Cells and the generic patcher


@dataclass(frozen=True)
class Cell:
    """One patch: a site at a layer, optionally one head, at one position per item or all positions."""

    layer: int
    head: int | None = None
    pos: Int[Tensor, " batch"] | None = field(default=None, compare=False)
    """Target token index per item; None = all positions."""
    src_pos: Int[Tensor, " batch"] | None = field(default=None, compare=False)
    """Source token index per item (defaults to ``pos``; differs across renderings)."""
    pos_label: str = "all"
    """How the position is named in tables: an absolute index ('3'), a span key, or 'all'."""


def _delta_at(src: Tensor, tgt: Tensor, cell: Cell) -> tuple[Tensor, Tensor | None]:
    """(source minus target at the cell, target positions) for one cell."""
    if cell.pos is None:
        s, t = src, tgt
    else:
        rows = torch.arange(tgt.shape[0])
        sp = cell.pos if cell.src_pos is None else cell.src_pos
        s, t = src[rows, sp], tgt[rows, cell.pos]
    if cell.head is not None:
        s, t = s[..., cell.head, :], t[..., cell.head, :]
    return s - t, cell.pos


def _set_at(act: Tensor, src: Tensor, cell: Cell) -> None:
    """In place: ``act`` (one copy of the target batch) takes ``src``'s value at ``cell``."""
    if cell.pos is None:
        if cell.head is None:
            act[:] = src
        else:
            act[:, :, cell.head] = src[:, :, cell.head]
        return
    rows = torch.arange(act.shape[0])
    sp = cell.pos if cell.src_pos is None else cell.src_pos
    if cell.head is None:
        act[rows, cell.pos] = src[rows, sp]
    else:
        act[rows, cell.pos, cell.head] = src[rows, sp, cell.head]


def _chunks(cells: Sequence[Cell], size: int):
    for i in range(0, len(cells), size):
        yield i, cells[i : i + size]


def patch_cells(
    model,
    target: RunCache,
    source_acts: Mapping[str, Tensor],
    site: str,
    cells: Sequence[Cell],
    metric: LogitDiff,
    max_rows: int = 256,
) -> Float[Tensor, "cell batch"]:
    """The generic patcher: the metric of ``target`` with ``site`` replaced by the source at each cell.

    ``source_acts`` maps hook names to source activations (same batch; positions may differ when
    cells carry ``src_pos``). Cells are grouped by layer and stacked along the batch dimension.
    """
    site = check_site(site)
    check_model(model)
    if site in ("resid_mid", "attn_out", "head_out") and getattr(model.cfg, "parallel_attn_mlp", False):
        raise CodetransferError(
            f"site: {site!r} needs a sequential block (attention, then the MLP on its output), but this model "
            "runs attention and MLP in parallel (use_parallel_residual=True); patch resid_pre, mlp_out, q, k or v"
        )
    kv = getattr(model.cfg, "n_key_value_heads", None)
    if site in ("k", "v") and kv not in (None, model.cfg.n_heads):
        raise CodetransferError(
            f"site: {site!r} needs one key/value head per query head, but the model has n_key_value_heads={kv} "
            f"for n_heads={model.cfg.n_heads}; patch 'q' or 'head_out' instead"
        )
    batch = target.tokens.shape[0]
    n_layers = model.cfg.n_layers
    out = torch.empty(len(cells), batch)
    per_call = max(1, max_rows // batch)
    by_layer: dict[int, list[int]] = {}
    for i, c in enumerate(cells):
        if not 0 <= c.layer < n_layers:
            raise CodetransferError(f"layer: expected 0..{n_layers - 1} for this model, got {c.layer}")
        if c.head is not None and not 0 <= c.head < model.cfg.n_heads:
            raise CodetransferError(f"head: expected 0..{model.cfg.n_heads - 1} for this model, got {c.head}")
        by_layer.setdefault(c.layer, []).append(i)
    for layer, idx in by_layer.items():
        name = hook_name(site, layer)
        if name not in source_acts:
            raise CodetransferError(f"source activations: missing {name!r}; build them with run_cache")
        src, tgt = source_acts[name], target.acts[name]
        if site == "head_out":
            # Each head's write into the residual stream (z @ W_O per head), once per layer.
            W_O = model.blocks[layer].attn.W_O.detach()  # [head, d_head, d_model]
            with torch.no_grad():
                src = torch.einsum("bphd,hdm->bphm", src, W_O)
                tgt = torch.einsum("bphd,hdm->bphm", tgt, W_O)
        for start, chunk_idx in _chunks(idx, per_call):
            chunk = [cells[i] for i in chunk_idx]
            final = _patched_final(model, target, src, tgt, site, layer, chunk)
            out[chunk_idx] = metric.from_final(final).view(len(chunk), batch).cpu()
    return out


def _patched_final(
    model, target: RunCache, src: Tensor, tgt: Tensor, site: str, layer: int, chunk: list[Cell]
) -> Tensor:
    """Final-position logits of one stacked forward: one copy of the target batch per cell.

    ``src`` / ``tgt`` are the source and target activations at the site (for ``head_out``, each
    head's residual write ``z @ W_O``, ``[batch, pos, head, d_model]``).
    """
    acts = target.acts
    reps = len(chunk)
    if site in ("resid_pre", "resid_mid"):
        base = acts[hook_name(site, layer)]
        h = base.repeat(reps, 1, 1)
        for i, cell in enumerate(chunk):
            _set_at(h[i * len(base) : (i + 1) * len(base)], src, cell)
        return _run_from(model, target, h, layer, mid=site == "resid_mid")
    if site in ("attn_out", "head_out", "mlp_out"):
        if site == "mlp_out":
            start = f"blocks.{layer}.hook_resid_post"
        else:
            start = f"blocks.{layer}.hook_resid_mid"
        base = acts[start]
        h = base.repeat(reps, 1, 1)
        b = len(base)
        for i, cell in enumerate(chunk):
            d, pos = _delta_at(src, tgt, cell)
            view = h[i * b : (i + 1) * b]
            if pos is None:
                view += d
            else:
                view[torch.arange(b), pos] += d
        if site == "mlp_out":
            if layer + 1 == model.cfg.n_layers:
                with torch.no_grad():
                    pos = target.position.to(h.device).repeat(reps)
                    last = h[torch.arange(h.shape[0]), pos]
                    return model.unembed(model.ln_final(last))
            return _run_from(model, target, h, layer + 1, mid=False)
        return _run_from(model, target, h, layer, mid=True)
    # q / k / v: hook inside block ``layer``, starting from its cached input.
    base = acts[f"blocks.{layer}.hook_resid_pre"]
    b = len(base)

    def hook(act, hook):
        act = act.clone()
        for i, cell in enumerate(chunk):
            _set_at(act[i * b : (i + 1) * b], src, cell)
        return act

    return _run_from(model, target, base.repeat(reps, 1, 1), layer, mid=False, hooks=[(hook_name(site, layer), hook)])


# ----------------------------------------------------------------------------------------------
# Sweeps


@dataclass(frozen=True)
class PatchingSweep:
    """Raw result of a sweep: the metric per cell and item, plus the two unpatched endpoints."""

    site: str
    direction: str
    cells: tuple[Cell, ...]
    values: Float[Tensor, "cell batch"]
    """Metric of the patched run per cell and item."""
    clean: Float[Tensor, " batch"]
    """Metric of the unpatched run that is '1' on the scale (clean run; model A across models)."""
    corrupted: Float[Tensor, " batch"]
    """Metric of the unpatched run that is '0' on the scale (corrupted run; model B across models)."""
    metric: str = "logit_diff"
    cell_sites: tuple[str, ...] | None = None
    """Per-cell site names where one sweep mixes sites (path patching: 'path_q', ...)."""
    control: Float[Tensor, "cell batch"] | None = None
    """Metric of the control patch of the same cells per item (cross-rendering: the token-matched code
    twin of the counterfactual world), on the same anchors; None when the sweep has no control."""

    def __post_init__(self):
        if self.control is not None and self.control.shape != self.values.shape:
            raise CodetransferError(
                f"control: expected one value per cell and item like values {tuple(self.values.shape)}, "
                f"got {tuple(self.control.shape)}"
            )

    def normalised(self) -> Float[Tensor, " cell"]:
        """``(mean patched - mean corrupted) / (mean clean - mean corrupted)`` per cell."""
        gap = self.clean.mean() - self.corrupted.mean()
        return (self.values.mean(1) - self.corrupted.mean()) / gap

    def normalised_control(self) -> Float[Tensor, " cell"]:
        """The control's :meth:`normalised` scale per cell (NaN without a control)."""
        if self.control is None:
            return torch.full((len(self.cells),), float("nan"))
        gap = self.clean.mean() - self.corrupted.mean()
        return (self.control.mean(1) - self.corrupted.mean()) / gap

    def grid(self) -> Tensor:
        """Mean raw metric per cell, shaped like TransformerLens' result ([layer, pos(, head)])."""
        layers = sorted({c.layer for c in self.cells})
        labels = list(dict.fromkeys(c.pos_label for c in self.cells))
        heads = sorted({c.head for c in self.cells if c.head is not None})
        shape = [len(layers)] + ([len(labels)] if labels != ["all"] else []) + ([len(heads)] if heads else [])
        g = torch.full(shape, float("nan"))
        means = self.values.mean(1)
        for c, m in zip(self.cells, means):
            ix = [layers.index(c.layer)]
            if labels != ["all"]:
                ix.append(labels.index(c.pos_label))
            if heads:
                ix.append(heads.index(c.head))
            g[tuple(ix)] = m
        return g

    def table(self, meta: Mapping[str, object] | None = None, n_boot: int = 1000, ci: float = 0.95, seed: int = 0):
        """Tidy rows (:data:`codetransfer.analysis.schema.TABLES` ``["patching"]``): metric '<direction>' is the
        normalised scale, 'logit_diff' raw; with a :attr:`control`, also '<direction>_control' (the
        control on the same scale) and '<direction>_excess' (patched minus control on that scale:
        ``(mean patched - mean control) / (mean clean - mean corrupted)``), all three intervals from the
        same item resamples."""
        n = len(self.cells)
        stacked = self.values
        if self.control is not None:
            # the excess is the ratio of (patched - control + corrupted): one resample serves the three
            stacked = torch.cat([self.values, self.control, self.values - self.control + self.corrupted])
        norm, lo, hi = ratio_bootstrap_ci(
            stacked, self.clean, self.corrupted, n_resamples=n_boot, confidence=ci, seed=seed
        )
        raw = self.values.mean(1).numpy()
        rows = []
        for i, c in enumerate(self.cells):
            base = dict(
                site=self.site if self.cell_sites is None else self.cell_sites[i],
                layer=c.layer,
                head=c.head,
                pos=int(c.pos_label) if c.pos_label.lstrip("-").isdigit() else None,
                pos_label=c.pos_label,
            )
            rows.append({**base, "metric": self.direction, "value": norm[i], "ci_low": lo[i], "ci_high": hi[i]})
            rows.append({**base, "metric": self.metric, "value": float(raw[i]), "ci_low": None, "ci_high": None})
            if self.control is not None:
                for k, name in ((n + i, "control"), (2 * n + i, "excess")):
                    rows.append({**base, "metric": f"{self.direction}_{name}", "value": norm[k], "ci_low": lo[k],
                                 "ci_high": hi[k]})  # fmt: skip
        return _tidy(rows, meta)


def _tidy(rows: list[dict], meta: Mapping[str, object] | None) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    meta = dict(meta or {})
    for col in ("run", "recipe", "seed", "task"):
        df[col] = meta.get(col)
    for col in ("head", "pos", "layer"):
        if col in df:
            df[col] = df[col].astype("Int64")
    for col in ("value", "ci_low", "ci_high"):
        df[col] = df[col].astype(float)
    extra = [c for c in df.columns if c not in TABLE_COLUMNS]
    return df[[c for c in TABLE_COLUMNS if c in df.columns] + extra]


def make_cells(
    model,
    site: str,
    n_pos: int,
    by_pos: bool = True,
    positions: Mapping[str, Tensor] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    batch: int | None = None,
) -> list[Cell]:
    """The cells of a sweep, in TransformerLens' order (layer, pos, head).

    ``positions`` (name -> token index per item) replaces the absolute positions ``0..n_pos-1``;
    ``by_pos=False`` patches all positions at once.
    """
    site = check_site(site)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    layers = range(n_layers) if layers is None else layers
    hs: list[int | None] = list(range(n_heads) if heads is None else heads) if site in HEAD_SITES else [None]
    if not by_pos:
        pos_list = [(None, None, "all")]
    elif positions is not None:
        pos_list = []
        for k, v in positions.items():
            if isinstance(v, tuple):
                pos_list.append((v[0], v[1], str(k)))
            else:
                pos_list.append((v, None, str(k)))
    else:
        if batch is None:
            raise CodetransferError("batch: needed to build absolute positions")
        pos_list = [(torch.full((batch,), p, dtype=torch.long), None, str(p)) for p in range(n_pos)]
    return [Cell(l, h, p, sp, label) for l in layers for (p, sp, label) in pos_list for h in hs]


def activation_patching(
    model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: LogitDiff,
    site: str,
    *,
    by_pos: bool = True,
    direction: str = "denoising",
    positions: Mapping[str, Tensor] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    max_rows: int = 256,
    caches: tuple[RunCache, RunCache] | None = None,
) -> PatchingSweep:
    """Patch ``site`` between a clean and a corrupted run at every layer (x position x head).

    ``direction="denoising"`` runs the corrupted prompt with clean activations patched in;
    ``"noising"`` the reverse. ``caches`` = ``(clean, corrupted)`` from :func:`run_cache` avoids
    recomputing them across sites.
    """
    site = check_site(site)
    if direction not in DIRECTIONS:
        raise CodetransferError(
            f"direction: expected one of {', '.join(DIRECTIONS)}, got {direction!r}{did_you_mean(direction, DIRECTIONS)}"
        )
    _check_pair(clean_tokens, corrupted_tokens, metric)
    if caches is None:
        caches = (run_cache(model, clean_tokens, metric), run_cache(model, corrupted_tokens, metric))
    clean, corrupted = caches
    target, source = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    cells = make_cells(
        model, site, clean_tokens.shape[1], by_pos, positions, layers, heads, batch=clean_tokens.shape[0]
    )
    values = patch_cells(model, target, source.acts, site, cells, metric, max_rows=max_rows)
    return PatchingSweep(site, direction, tuple(cells), values, clean.metric.cpu(), corrupted.metric.cpu())


def _check_pair(clean: Tensor, corrupted: Tensor, metric: LogitDiff) -> None:
    if clean.ndim != 2 or corrupted.ndim != 2:
        raise CodetransferError(
            f"tokens: expected [batch, pos] tensors, got clean {tuple(clean.shape)} and corrupted {tuple(corrupted.shape)}"
        )
    if clean.shape != corrupted.shape:
        raise CodetransferError(
            f"corrupted_tokens: expected the clean shape {tuple(clean.shape)} (positions must align), got "
            f"{tuple(corrupted.shape)}; use counterfactuals that tokenize to the same length"
        )
    if len(metric) != clean.shape[0]:
        raise CodetransferError(f"metric: expected {clean.shape[0]} items, got {len(metric)}")
    if (metric.position >= clean.shape[1]).any() or (metric.position < 0).any():
        raise CodetransferError(f"metric.position: expected indices in 0..{clean.shape[1] - 1}")


def _named(site: str, by_pos: bool, doc: str):
    def fn(model, clean_tokens, corrupted_tokens, metric, **kwargs) -> PatchingSweep:
        return activation_patching(model, clean_tokens, corrupted_tokens, metric, site, by_pos=by_pos, **kwargs)

    fn.__doc__ = doc + "\n\n    See :func:`activation_patching` for the arguments."
    return fn


patch_resid_pre = _named("resid_pre", True, "Residual stream entering each layer, by layer and position.")
patch_resid_mid = _named("resid_mid", True, "Residual stream after each layer's attention, by layer and position.")
patch_attn_out = _named("attn_out", True, "Each layer's attention output, by layer and position.")
patch_attn_out_all_pos = _named("attn_out", False, "Each layer's attention output at all positions at once.")
patch_mlp_out = _named("mlp_out", True, "Each layer's MLP output, by layer and position.")
patch_mlp_out_all_pos = _named("mlp_out", False, "Each layer's MLP output at all positions at once.")
patch_head_out = _named("head_out", True, "Each head's output (hook_z), by layer, position and head.")
patch_head_out_all_pos = _named("head_out", False, "Each head's output (hook_z) at all positions, by layer and head.")
patch_head_q = _named("q", True, "Each head's queries, by layer, position and head.")
patch_head_k = _named("k", True, "Each head's keys, by layer, position and head.")
patch_head_v = _named("v", True, "Each head's values, by layer, position and head.")
patch_head_q_all_pos = _named("q", False, "Each head's queries at all positions, by layer and head.")
patch_head_k_all_pos = _named("k", False, "Each head's keys at all positions, by layer and head.")
patch_head_v_all_pos = _named("v", False, "Each head's values at all positions, by layer and head.")


# ----------------------------------------------------------------------------------------------
# From task items to token batches


@dataclass(frozen=True)
class PairBatch:
    """Clean items and their counterfactuals as aligned, right-padded token tensors."""

    clean_tokens: Int[Tensor, "batch pos"]
    corrupted_tokens: Int[Tensor, "batch pos"]
    metric: LogitDiff
    positions: dict[str, Int[Tensor, " batch"]]
    """Named token positions per item: span keys shared by every item (span end) and 'last' (the
    token whose next-token logits are read: the prompt's last token, or the last token the two
    answers share when they start alike)."""
    n_dropped: int = 0
    """Items left out because their counterfactual tokenized to another length (``drop_misaligned``)."""


_answer_tokens = encoding.answer_tokens
_pad = encoding.pad_rows


def _span_positions(item, offsets, keys) -> dict[str, int]:
    return encoding.span_positions(offsets, item.spans, keys)


def pair_batch(items: Sequence, tokenizer, drop_misaligned: bool = False) -> PairBatch:
    """Encode items (``[bos] + prompt``) with their counterfactuals for within-model patching.

    Refuses items without a counterfactual, counterfactuals with the same answer token, and
    (unless ``drop_misaligned``) counterfactuals that tokenize to another length.
    """
    if not items:
        raise CodetransferError("items: expected at least one item, got none")
    clean_rows, corr_rows, pos, ans, cnt, offs, kept = [], [], [], [], [], [], []
    for i, it in enumerate(items):
        cf = it.counterfactual
        if cf is None:
            raise CodetransferError(
                f"items[{i}] ({it.task}): has no counterfactual; patching needs clean/counterfactual pairs"
            )
        shared, a, c = _answer_tokens(tokenizer, it.answer, cf.answer, f"items[{i}] ({it.task})")
        ids, off = encoding.encode_prompt(tokenizer, it.prompt)
        cids, _ = encoding.encode_prompt(tokenizer, cf.prompt)
        ids, cids = ids + shared, cids + shared
        if len(ids) != len(cids):
            if drop_misaligned:
                continue
            raise CodetransferError(
                f"items[{i}] ({it.task}): prompt is {len(ids)} tokens but its counterfactual {len(cids)}; "
                "positions must align — pass drop_misaligned=True to skip such items"
            )
        clean_rows.append(ids)
        corr_rows.append(cids)
        pos.append(encoding.answer_position(ids))
        ans.append(a)
        cnt.append(c)
        offs.append(off)
        kept.append(it)
    if not kept:
        raise CodetransferError("items: every counterfactual tokenizes to another length; nothing to patch")
    keys = sorted(set.intersection(*(set(it.spans) for it in kept)))
    named = {k: [] for k in keys}
    for it, off in zip(kept, offs):
        for k, p in _span_positions(it, off, keys).items():
            named[k].append(p)
    positions = {k: torch.tensor(v) for k, v in named.items()}
    positions["last"] = torch.tensor(pos)
    pad = tokenizer.pad_token_id
    metric = LogitDiff(torch.tensor(pos), torch.tensor(ans), torch.tensor(cnt))
    return PairBatch(_pad(clean_rows, pad), _pad(corr_rows, pad), metric, positions, len(items) - len(kept))


# ----------------------------------------------------------------------------------------------
# Across models (Prakash et al. 2024)

_SHAPE_FIELDS = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab")


def check_same_shape(model_a, model_b, tokenizer_a=None, tokenizer_b=None) -> None:
    """Refuse a model pair whose activations cannot be exchanged (shape or tokenizer differs)."""
    for f in _SHAPE_FIELDS:
        va, vb = getattr(model_a.cfg, f, None), getattr(model_b.cfg, f, None)
        if va != vb:
            raise CodetransferError(
                f"model_b: cfg.{f} is {vb} but model_a has {va}; cross-model patching needs two runs of "
                "the same shape — pick runs of one grid"
            )
    if (tokenizer_a is None) != (tokenizer_b is None):
        raise CodetransferError("tokenizer_b: pass both tokenizers or neither to check that the models share one")
    if tokenizer_a is not None:
        ha, hb = tokenizer_hash(tokenizer_a), tokenizer_hash(tokenizer_b)
        if ha != hb:
            raise CodetransferError(
                f"tokenizer_b: vocabulary hash {hb} differs from model_a's {ha}; cross-model patching needs "
                "runs that share the grid tokenizer"
            )


def cross_model_patching(
    model_a,
    model_b,
    tokens: Int[Tensor, "batch pos"],
    metric: LogitDiff,
    site: str,
    *,
    by_pos: bool = True,
    positions: Mapping[str, Tensor] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    tokenizer_a=None,
    tokenizer_b=None,
    max_rows: int = 256,
    caches: tuple[RunCache, RunCache] | None = None,
) -> PatchingSweep:
    """Run model B on ``tokens`` with one component's activation replaced by model A's (same prompt).

    The sweep's scale is the share of A's advantage that the component carries:
    ``(patched - metric_B) / (metric_A - metric_B)`` (NaN when the two models' metrics coincide,
    e.g. a model with itself; the raw ``logit_diff`` rows then equal ``metric_A``).
    A head's ``head_out`` is its ``hook_z``, so B's own ``W_O`` maps it into the residual stream.
    """
    site = check_site(site)
    check_same_shape(model_a, model_b, tokenizer_a, tokenizer_b)
    if len(metric) != tokens.shape[0]:
        raise CodetransferError(f"metric: expected {tokens.shape[0]} items, got {len(metric)}")
    if caches is None:
        caches = (run_cache(model_a, tokens, metric), run_cache(model_b, tokens, metric))
    a, b = caches
    cells = make_cells(model_b, site, tokens.shape[1], by_pos, positions, layers, heads, batch=tokens.shape[0])
    values = patch_cells(model_b, b, a.acts, site, cells, metric, max_rows=max_rows)
    return PatchingSweep(site, "cross_model", tuple(cells), values, a.metric.cpu(), b.metric.cpu())


# ----------------------------------------------------------------------------------------------
# Across renderings


@dataclass(frozen=True)
class RenderingBatch:
    """Target (other-rendering counterfactual), source (clean world in ``from_rendering``), the
    clean target-rendering prompt and the control (counterfactual world in ``from_rendering``), with
    positions aligned by shared span keys."""

    target_tokens: Int[Tensor, "batch pos"]
    """The counterfactual in the target rendering (the '0' run, patched)."""
    clean_tokens: Int[Tensor, "batch pos"]
    """The clean item in the target rendering (the '1' run; also the within-rendering source)."""
    source_tokens: Int[Tensor, "batch src_pos"]
    """The clean item in the source rendering (the cross-rendering source)."""
    metric: LogitDiff
    source_metric: LogitDiff
    positions: dict[str, tuple[Int[Tensor, " batch"], Int[Tensor, " batch"]]]
    """Span key -> (target position, source position) per item; includes 'last'."""
    n_dropped: int = 0
    """Items left out because their counterfactual tokenized to another length (``drop_misaligned``)."""
    control_tokens: Int[Tensor, "batch ctl_pos"] | None = None
    """The counterfactual world in the source rendering (the code twin of the target's counterfactual),
    before the token at a patched position is matched to the source's (:meth:`control_at`)."""
    control_positions: dict[str, Int[Tensor, " batch"]] = field(default_factory=dict)
    """Span key -> position in ``control_tokens`` per item (the keys of ``positions``)."""
    control_metric: LogitDiff | None = None
    """The metric read at the control prompt's own last position."""

    def control_at(self, key: str) -> Int[Tensor, "batch ctl_pos"]:
        """The token-matched control for cells at ``key``: ``control_tokens`` with each item's token at
        ``key`` set to the source's token there (a no-op where the two worlds hold the same token)."""
        if self.control_tokens is None or key not in self.control_positions:
            raise CodetransferError(
                f"key: no control position {key!r} in this batch (have {', '.join(self.control_positions) or 'none'}); "
                "build it with rendering_batch"
            )
        rows = torch.arange(self.control_tokens.shape[0])
        out = self.control_tokens.clone()
        out[rows, self.control_positions[key]] = self.source_tokens[rows, self.positions[key][1]]
        return out


def rendering_batch(
    items: Sequence, tokenizer, from_rendering: str = "code", drop_misaligned: bool = False
) -> RenderingBatch:
    """Pair each item's rendering-``from_rendering`` version (source) with the other rendering's
    counterfactual (target), aligned at the span keys the two share (span ends) and the last token,
    and with the counterfactual world's ``from_rendering`` version (the control, see the module
    docstring), aligned at the same keys. Refuses items without a twin, a counterfactual or a
    counterfactual in the source rendering."""
    if not items:
        raise CodetransferError("items: expected at least one item, got none")
    tgt_rows, cln_rows, src_rows, tpos, spos, ans, cnt, aligned = [], [], [], [], [], [], [], []
    ctl_rows, kpos = [], []
    for i, it in enumerate(items):
        target = it.twin if it.rendering == from_rendering else it
        source = None if target is None else target.twin
        if target is None or source is None or source.rendering != from_rendering:
            raise CodetransferError(
                f"items[{i}] ({it.task}): has no {from_rendering!r} twin; cross-rendering patching needs "
                "items with a twin rendering (e.g. entity_tracking, variable_binding)"
            )
        cf = target.counterfactual
        if cf is None:
            raise CodetransferError(f"items[{i}] ({it.task}): its {target.rendering} rendering has no counterfactual")
        control = next(
            (x for x in (source.counterfactual, cf.twin) if x is not None and x.rendering == from_rendering), None
        )
        if control is None:
            raise CodetransferError(
                f"items[{i}] ({it.task}): its counterfactual has no {from_rendering!r} twin; the cross-rendering "
                "control patches from the counterfactual world's source rendering"
            )
        shared, a, c = _answer_tokens(tokenizer, target.answer, cf.answer, f"items[{i}] ({it.task})")
        ids, off = encoding.encode_prompt(tokenizer, target.prompt)
        cids, coff = encoding.encode_prompt(tokenizer, cf.prompt)
        sids, soff = encoding.encode_prompt(tokenizer, source.prompt)
        kids, koff = encoding.encode_prompt(tokenizer, control.prompt)
        ids, cids, sids, kids = ids + shared, cids + shared, sids + shared, kids + shared
        if len(ids) != len(cids):
            if drop_misaligned:
                continue
            raise CodetransferError(
                f"items[{i}] ({it.task}): prompt is {len(ids)} tokens but its counterfactual {len(cids)}; "
                "positions must align — pass drop_misaligned=True to skip such items"
            )
        keys = sorted(set(cf.spans) & set(source.spans) & set(control.spans))
        if not keys:
            raise CodetransferError(f"items[{i}] ({it.task}): the two renderings share no span keys to align")
        tp = _span_positions(cf, coff, keys)
        sp = _span_positions(source, soff, keys)
        kp = _span_positions(control, koff, keys)
        tgt_rows.append(cids)
        cln_rows.append(ids)
        src_rows.append(sids)
        ctl_rows.append(kids)
        tpos.append({**tp, "last": encoding.answer_position(cids)})
        spos.append({**sp, "last": encoding.answer_position(sids)})
        kpos.append({**kp, "last": encoding.answer_position(kids)})
        ans.append(a)
        cnt.append(c)
        aligned.append(set(keys) | {"last"})
    if not aligned:
        raise CodetransferError("items: every counterfactual tokenizes to another length; nothing to patch")
    keys = sorted(set.intersection(*aligned), key=lambda k: (k == "last", k))
    positions = {k: (torch.tensor([p[k] for p in tpos]), torch.tensor([p[k] for p in spos])) for k in keys}
    control_positions = {k: torch.tensor([p[k] for p in kpos]) for k in keys}
    pad = tokenizer.pad_token_id
    metric = LogitDiff(positions["last"][0], torch.tensor(ans), torch.tensor(cnt))
    source_metric = LogitDiff(positions["last"][1], torch.tensor(ans), torch.tensor(cnt))
    control_metric = LogitDiff(control_positions["last"], torch.tensor(ans), torch.tensor(cnt))
    return RenderingBatch(
        _pad(tgt_rows, pad),
        _pad(cln_rows, pad),
        _pad(src_rows, pad),
        metric,
        source_metric,
        positions,
        len(items) - len(aligned),
        _pad(ctl_rows, pad),
        control_positions,
        control_metric,
    )


def cross_rendering_patching(
    model,
    batch: RenderingBatch,
    site: str,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    max_rows: int = 256,
) -> tuple[PatchingSweep, PatchingSweep]:
    """Patch the source rendering of the clean world into the target rendering's counterfactual.

    Returns ``(cross, within)``: ``cross`` patches from the other rendering at aligned positions, with
    its :attr:`~PatchingSweep.control` (the same cells patched from the token-matched source rendering
    of the counterfactual world, see the module docstring); ``within`` patches from the clean prompt
    of the target rendering at the same positions (the ceiling). All are scaled 0 = target
    counterfactual, 1 = target clean.
    """
    site = check_site(site)
    if batch.control_tokens is None:
        raise CodetransferError("batch: has no control prompts; build it with rendering_batch")
    clean = run_cache(model, batch.clean_tokens, batch.metric)
    target = run_cache(model, batch.target_tokens, batch.metric)
    source = run_cache(model, batch.source_tokens, batch.source_metric)
    n = batch.target_tokens.shape[0]
    cross_cells = make_cells(model, site, 0, True, batch.positions, layers, heads, batch=n)
    within_pos = {k: (t, t) for k, (t, _) in batch.positions.items()}
    within_cells = make_cells(model, site, 0, True, within_pos, layers, heads, batch=n)
    control_pos = {k: (t, batch.control_positions[k]) for k, (t, _) in batch.positions.items()}
    control_cells = make_cells(model, site, 0, True, control_pos, layers, heads, batch=n)
    cross = patch_cells(model, target, source.acts, site, cross_cells, batch.metric, max_rows=max_rows)
    within = patch_cells(model, target, clean.acts, site, within_cells, batch.metric, max_rows=max_rows)
    # Where an item's control prompt equals its source prompt up to the position (the changed fact), a
    # causal model gives the patched run the same numbers: the control is the score there, exactly (another
    # forward pass would add float noise, which must not pass for an excess over the control).
    same = {k: _same_prefix(batch, k) for k in batch.positions}
    control = cross.clone()
    for tokens, keys in _distinct_controls(batch, same):
        idx = [i for i, c in enumerate(control_cells) if c.pos_label in keys and not same[c.pos_label].all()]
        if not idx:
            continue
        acts = run_cache(model, tokens, batch.control_metric).acts
        values = patch_cells(
            model, target, acts, site, [control_cells[i] for i in idx], batch.metric, max_rows=max_rows
        )
        for row, i in zip(values, idx):
            other = ~same[control_cells[i].pos_label]
            control[i, other] = row[other]
    top, bottom = clean.metric.cpu(), target.metric.cpu()
    return (
        PatchingSweep(site, "cross_rendering", tuple(cross_cells), cross, top, bottom, control=control),
        PatchingSweep(site, "within_rendering", tuple(within_cells), within, top, bottom),
    )


def _same_prefix(batch: RenderingBatch, key: str) -> Tensor:
    """Per item: whether the token-matched control prompt at ``key`` equals the source prompt up to and
    including the position (where the two worlds' code prompts differ in the token there, and only
    there or later)."""
    tokens, src = batch.control_at(key), batch.source_tokens
    ctl_pos, src_pos = batch.control_positions[key], batch.positions[key][1]
    return torch.tensor([
        int(k) == int(p) and torch.equal(tokens[i, : int(k) + 1], src[i, : int(p) + 1])
        for i, (k, p) in enumerate(zip(ctl_pos, src_pos))
    ])  # fmt: skip


def _distinct_controls(batch: RenderingBatch, same: Mapping[str, Tensor]) -> list[tuple[Tensor, set[str]]]:
    """The token-matched control prompts of a batch, each with the position keys it serves. Keys whose
    prompts are equal share one forward pass; an item whose control equals the source up to the position
    (``same``) takes the score, so its row is left as the counterfactual's code twin: usually every key
    shares one prompt."""
    out: list[tuple[Tensor, set[str]]] = []
    for key in batch.positions:
        tokens = torch.where(same[key][:, None], batch.control_tokens, batch.control_at(key))
        for seen, keys in out:
            if torch.equal(seen, tokens):
                keys.add(key)
                break
        else:
            out.append((tokens, {key}))
    return out


# ----------------------------------------------------------------------------------------------
# Path patching, attribution patching, faithfulness


def path_patching(
    model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: LogitDiff,
    sender: tuple[int, int],
    components: Sequence[str] = ("q", "k", "v"),
    caches: tuple[RunCache, RunCache] | None = None,
) -> PatchingSweep:
    """Direct path patching from a sender head into every later head's q, k or v input.

    Uses TransformerLens' ``get_act_patch_direct_path``: the sender's clean-minus-corrupted write
    (``z @ W_O``) is added to one receiver's own copy of the residual, so every other reader still
    sees the corrupted sender. Cells have ``site`` = 'path_q' / 'path_k' / 'path_v', ``layer`` and
    ``head`` of the receiver; receivers at or before the sender's layer are left out.
    """
    _check_pair(clean_tokens, corrupted_tokens, metric)
    layer, head = sender
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise CodetransferError(f"sender: expected (layer < {n_layers}, head < {n_heads}), got {sender}")
    if layer == n_layers - 1:
        raise CodetransferError(f"sender: layer {layer} is the last one; a sender needs later receiver heads")
    bad = [c for c in components if c not in ("q", "k", "v")]
    if bad:
        raise CodetransferError(f"components: expected a subset of q, k, v, got {bad}")
    if caches is None:
        caches = (run_cache(model, clean_tokens, metric), run_cache(model, corrupted_tokens, metric))
    clean, corrupted = caches
    names = {f"blocks.{layer}.attn.hook_z"}
    _, cc = model.run_with_cache(clean_tokens, names_filter=lambda n: n in names)
    _, xc = model.run_with_cache(corrupted_tokens, names_filter=lambda n: n in names)
    cells, rows = [], []
    for comp in components:
        # TL's metric returns a scalar; ask per item so that intervals over items are possible.
        per_item = []
        for i in range(clean_tokens.shape[0]):
            m = LogitDiff(metric.position[i : i + 1], metric.answer[i : i + 1], metric.counter[i : i + 1])
            one_c = _slice_cache(cc, i)
            one_x = _slice_cache(xc, i)
            r = get_act_patch_direct_path(
                model, corrupted_tokens[i : i + 1], one_c, one_x, m.mean(), layer, head, comp, verbose=False
            )
            per_item.append(r[layer + 1 :].reshape(-1))
        rows.append(torch.stack(per_item, 1))
        cells += [Cell(dl, dh, None, None, "all") for dl in range(layer + 1, n_layers) for dh in range(n_heads)]
    values = torch.cat(rows, 0)
    n_per = (n_layers - layer - 1) * n_heads
    sites = tuple(f"path_{c}" for c in components for _ in range(n_per))
    return PatchingSweep(
        "path", "denoising", tuple(cells), values.cpu(), clean.metric.cpu(), corrupted.metric.cpu(), cell_sites=sites
    )


def _slice_cache(cache, i: int):
    return ActivationCache({k: v[i : i + 1] for k, v in cache.items()}, cache.model)


def attribution_screen(
    model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: LogitDiff,
) -> pd.DataFrame:
    """Attribution patching (TransformerLens' ``attribution_patch``, node granularity) as a screen.

    One row per node: ``site`` 'head_out' (layer, head, pos) or 'mlp_out' (layer, pos) or 'embed'
    (pos), ``value`` = the first-order estimate of the denoising effect (patched - corrupted) in
    logit-difference units, averaged over items.
    """
    _check_pair(clean_tokens, corrupted_tokens, metric)
    totals: dict = {}
    n = clean_tokens.shape[0]
    for i in range(n):
        m = LogitDiff(metric.position[i : i + 1], metric.answer[i : i + 1], metric.counter[i : i + 1])
        res = attribution_patch(
            model, clean_tokens[i : i + 1], corrupted_tokens[i : i + 1], lambda lg, m=m: m(lg).sum()
        )
        for node, s in res.node_scores.items():
            totals[node] = totals.get(node, 0.0) + s / n
    site = {"attn_head_out": "head_out", "mlp_out": "mlp_out", "embed": "embed"}
    rows = [
        dict(site=site[nd.kind], layer=nd.layer, head=nd.head, pos=nd.position, pos_label=str(nd.position),
             metric="attribution", value=v)
        for nd, v in totals.items()
    ]  # fmt: skip
    return pd.DataFrame(rows)


def attribution_agreement(
    model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: LogitDiff,
    caches: tuple[RunCache, RunCache] | None = None,
) -> tuple[float, pd.DataFrame]:
    """Spearman rank correlation between attribution patching and exact denoising patching over
    every head-by-position and MLP-by-position node, with the joined table (columns
    ``attribution``, ``exact`` = mean patched - mean corrupted)."""
    screen = attribution_screen(model, clean_tokens, corrupted_tokens, metric)
    if caches is None:
        caches = (run_cache(model, clean_tokens, metric), run_cache(model, corrupted_tokens, metric))
    frames = []
    for site in ("head_out", "mlp_out"):
        sw = activation_patching(model, clean_tokens, corrupted_tokens, metric, site, caches=caches)
        eff = (sw.values.mean(1) - sw.corrupted.mean()).numpy()
        frames.append(
            pd.DataFrame(
                dict(site=site, layer=[c.layer for c in sw.cells], head=[c.head for c in sw.cells],
                     pos=[int(c.pos_label) for c in sw.cells], exact=eff)
            )
        )  # fmt: skip
    exact = pd.concat(frames)
    exact["head"] = exact["head"].astype("Int64")
    scr = screen[screen.site != "embed"].rename(columns={"value": "attribution"})[
        ["site", "layer", "head", "pos", "attribution"]
    ]
    scr = scr.astype({"head": "Int64", "layer": int})
    joined = exact.merge(scr, on=["site", "layer", "head", "pos"], how="inner")
    if len(joined) < 3:
        return float("nan"), joined
    rho = spearmanr(joined["attribution"], joined["exact"]).statistic
    return float(rho), joined


def circuit_faithfulness(
    model,
    tokens: Int[Tensor, "batch pos"],
    metric: LogitDiff,
    keep: Sequence[tuple[str, int, int | None]],
    ablation: str = "mean",
    reference_tokens: Int[Tensor, "ref pos"] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Keep a set of components, ablate every other head output and MLP output, and report the
    fraction of the full model's metric that the circuit keeps.

    ``keep`` holds ``("head", layer, head)`` and ``("mlp", layer, None)`` entries. ``ablation`` is
    ``"mean"`` (an ablated component takes its mean over ``reference_tokens`` — default ``tokens``
    — at each position) or ``"zero"``. Returns ``full``, ``circuit`` and ``empty`` (everything
    ablated) mean metrics and ``faithfulness = (circuit - empty) / (full - empty)`` (a ratio of item
    means) with a percentile bootstrap interval over items (``ci_low``, ``ci_high``).

    This is node-level (components, not edges). TransformerLens' ``tools.analysis.faithfulness``
    is edge-level, one clean/corrupt pair at a time, with corrupt or mean replacement and no zero
    ablation; use it directly for edge circuits from ``attribution_patch(..., granularity="edge")``.
    """
    check_model(model)
    if ablation not in ("mean", "zero"):
        raise CodetransferError(f"ablation: expected 'mean' or 'zero', got {ablation!r}")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    keep_heads, keep_mlps = set(), set()
    for entry in keep:
        kind, layer, head = entry
        if kind == "head" and 0 <= layer < n_layers and head is not None and 0 <= head < n_heads:
            keep_heads.add((layer, head))
        elif kind == "mlp" and 0 <= layer < n_layers:
            keep_mlps.add(layer)
        else:
            raise CodetransferError(
                f"keep: expected ('head', layer, head) or ('mlp', layer, None) with layer < {n_layers} and "
                f"head < {n_heads}, got {entry!r}"
            )
    ref = tokens if reference_tokens is None else reference_tokens
    if ref.shape[1] != tokens.shape[1]:
        raise CodetransferError(
            f"reference_tokens: expected {tokens.shape[1]} positions like tokens, got {ref.shape[1]}"
        )
    names = {f"blocks.{l}.attn.hook_z" for l in range(n_layers)} | {f"blocks.{l}.hook_mlp_out" for l in range(n_layers)}
    with torch.no_grad():
        _, rc = model.run_with_cache(ref, names_filter=lambda n: n in names)
    means = {n: (rc[n].mean(0, keepdim=True) if ablation == "mean" else torch.zeros_like(rc[n][:1])) for n in names}

    def run(heads_kept, mlps_kept) -> Tensor:
        hooks = []
        for l in range(n_layers):
            ablate = [h for h in range(n_heads) if (l, h) not in heads_kept]
            if ablate:
                zname = f"blocks.{l}.attn.hook_z"

                def zhook(act, hook, ablate=ablate, zname=zname):
                    act = act.clone()
                    act[:, :, ablate] = means[zname][:, :, ablate].expand(act.shape[0], -1, -1, -1)
                    return act

                hooks.append((zname, zhook))
            if l not in mlps_kept:
                mname = f"blocks.{l}.hook_mlp_out"
                hooks.append((mname, lambda act, hook, mname=mname: means[mname].expand_as(act).clone()))
        with torch.no_grad():
            return metric(model.run_with_hooks(tokens, fwd_hooks=hooks)).cpu()

    all_heads = {(l, h) for l in range(n_layers) for h in range(n_heads)}
    full = run(all_heads, set(range(n_layers)))
    circuit = run(keep_heads, keep_mlps)
    empty = run(set(), set())
    value, low, high = ratio_bootstrap_ci(circuit[None], full, empty, n_resamples=n_boot, seed=seed)
    return dict(
        full=float(full.mean()), circuit=float(circuit.mean()), empty=float(empty.mean()),
        faithfulness=float(value[0]), ci_low=float(low[0]), ci_high=float(high[0]),
    )  # fmt: skip
