"""Attention analysis: which heads do what, which heads matter, and how heads differ across runs.

The method, in the order the functions appear:

1. **Head scores from attention patterns.** One forward pass over a batch of token sequences caches
   every layer's ``hook_pattern`` (``names_filter``: nothing else is kept). A *detection pattern*
   marks, for each query position, the key positions a head of a given kind should attend to; the
   definitions are TransformerLens' ``head_detector`` ones (previous token: key ``q-1``; duplicate
   token: earlier keys holding the same token; induction: the key *after* an earlier copy of the
   current token). Scores are computed for all heads at once, batched:

   - ``reduction="rows"`` (the default, used in tables): the attention mass that a query puts on its
     detection targets, averaged over the query positions that *have* a target. A head whose pattern
     is exactly the detection pattern scores 1.0; a head that never looks at the targets scores 0.
   - ``reduction="head_detector"``: TransformerLens' ``"mul"`` measure, ``sum(pattern * detection) /
     sum(pattern)`` over the whole square (rows without a target count in the denominator, so a
     perfect induction head scores about 0.5 on a sequence repeated twice). Equal to
     ``transformer_lens.head_detector.detect_head`` on the same prompts (tested).

   ``induction_shift_profile`` scores the key ``d`` positions after the induction target for a
   range of shifts ``d`` (shift 0 is the induction score): a trained model can run induction through
   lagged heads, and its induction head then attends a fixed distance after the canonical target,
   where the standard score (TransformerLens' too) sees nothing.

   Plus two pattern statistics that need no detection pattern: ``entropy`` (nats, mean over query
   positions after BOS) and ``bos`` (attention to position 0, mean over query positions after BOS).
   The standard probe set is ``repeated_random_tokens``: ``[bos] + x + x`` with ``x`` drawn (seeded,
   without replacement where the vocabulary allows) from the run's own non-special token ids.

2. **Task-aligned attention.** Items carry character spans (``item.spans``). Each prompt is encoded
   as ``[bos] + tokens(prompt)``; a span covers the tokens whose character range overlaps it. From
   the final position (where the answer is predicted; if all candidates start with the same
   token(s), e.g. a lone space, those tokens are appended and the last of them is used) we read,
   for every head, the attention mass on the ``query`` and ``answer_source`` spans
   (``attn_to_query``, ``attn_to_answer_source``), on the *distractor* tokens
   (``attn_to_distractors``: spans whose key starts with ``distractor``; else the other entities'
   value spans, keys ending in ``.value`` that do not overlap ``answer_source``, as the tasks package
   records them; else word-boundary mentions of the wrong candidates' text outside
   ``answer_source``) and the difference (``attn_answer_minus_distractors``). The same scores on
   ``item.twin`` give the other rendering (column ``rendering``).

3. **Causal importance.** The metric is the logit difference at the final position between the
   answer's first token and the mean of the distractors' first tokens (first after the prefix that
   all candidates share, see 2.). A head is ablated by replacing its ``hook_z`` (its output before
   ``W_O``) with zeros or with its mean over all real token positions of the item set; one forward
   per layer ablates each head of that layer in its own copy of the batch. Reported: mean change
   of the metric (ablated - clean) with a percentile bootstrap interval over items.
   **Direct logit attribution** per head: the head's output at the final position,
   ``(z - c_h) @ W_O[h]``, where ``c_h = ln1.bias @ W_V[h] + b_V[h]`` is the part of every value
   vector that does not depend on the input (every attention pattern passes it on unchanged, so
   TransformerLens folds it into ``b_O`` and credits it to no head), put through the final
   LayerNorm's *linear* part (centre, divide by the cached scale of the full residual, multiply by
   its weight) and dotted with ``W_U[:, answer] - mean(W_U[:, distractors])``. On a bridge in
   ``enable_compatibility_mode()`` the same number is TransformerLens'
   ``direct_logit_attribution(..., unit="head")``, which we then use; compatibility mode mutates
   weights, so keep a SEPARATE bridge for it (tested equal).

4. **Induction loss** that works for any vocabulary size and device: cross-entropy on the second
   copy of ``[bos] + x + x`` (positions whose token is predictable by copying, i.e. all of the second
   copy except its first token), per sequence. Head ablations report its increase.

5. **Across runs.** ``score_run`` gives a tidy table (``task, rendering, layer, head, metric, value,
   ci_low, ci_high``); callers add ``run, recipe, seed``. Heads are matched across two runs by their
   score *profiles* (one vector of metric values per head, each metric z-scored over the heads of
   both runs): Hungarian matching (``scipy.optimize.linear_sum_assignment``) on the RMS profile
   distance; a matched pair farther apart than ``threshold`` means the head's role has no counterpart
   in the other run. ``score_checkpoints`` scores a training trajectory (``step`` column).

Sequences of different lengths are right-padded: with causal attention, real positions never see
the padding (tested), and every statistic ignores padded positions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from codetransfer.analysis import encoding, schema
from codetransfer.errors import CodetransferError, did_you_mean

DETECTION_KINDS = ("previous_token", "duplicate_token", "induction")
PATTERN_SCORES = (*DETECTION_KINDS, "entropy", "bos")
REDUCTIONS = ("rows", "head_detector")
ABLATIONS = ("mean", "zero")
SPAN_KEYS = ("query", "answer_source")
"""Item spans whose attention from the final position is reported (plus the distractors)."""
RANDOM_TASK = "repeated_random"
"""Value of the ``task`` column for scores measured on repeated random tokens."""
TABLE_COLUMNS = schema.columns("attention", run_columns=False)


# --------------------------------------------------------------------------------------------
# inputs


def ordinary_token_ids(tokenizer) -> list[int]:
    """The tokenizer's token ids without its special tokens (the run's own vocabulary)."""
    special = set(tokenizer.all_special_ids)
    return [i for i in range(len(tokenizer)) if i not in special]


def repeated_random_tokens(
    token_ids: Sequence[int], n_seqs: int, half_len: int, seed: int, bos_id: int | None = 0
) -> Int[Tensor, "batch pos"]:
    """``n_seqs`` sequences ``[bos] + x + x`` with ``x`` of ``half_len`` tokens drawn from ``token_ids``.

    Tokens are drawn without replacement within ``x`` when ``len(token_ids) >= half_len`` (so every
    repeat is the planned one), otherwise with replacement. Deterministic given ``seed``.
    """
    if half_len < 2:
        raise CodetransferError(f"half_len: expected at least 2 tokens per half, got {half_len}")
    if n_seqs < 1:
        raise CodetransferError(f"n_seqs: expected at least 1 sequence, got {n_seqs}")
    ids = torch.as_tensor(list(token_ids), dtype=torch.long)
    if ids.numel() < 2:
        raise CodetransferError(f"token_ids: expected at least 2 token ids to draw from, got {ids.numel()}")
    gen = torch.Generator().manual_seed(seed)
    if ids.numel() >= half_len:
        draw = torch.stack([torch.randperm(ids.numel(), generator=gen)[:half_len] for _ in range(n_seqs)])
    else:
        draw = torch.randint(0, ids.numel(), (n_seqs, half_len), generator=gen)
    half = ids[draw]
    parts = [half, half]
    if bos_id is not None:
        parts.insert(0, torch.full((n_seqs, 1), bos_id, dtype=torch.long))
    return torch.cat(parts, dim=1)


@dataclass(frozen=True)
class EncodedItems:
    """Items encoded as ``[bos] + tokens(prompt)``, right-padded into one batch."""

    tokens: Int[Tensor, "batch pos"]
    """Token ids, padded on the right with the tokenizer's pad id."""
    lengths: Int[Tensor, " batch"]
    """Number of real tokens of each prompt (BOS included)."""
    span_tokens: tuple[dict[str, tuple[int, ...]], ...]
    """Per item: span key -> token positions overlapping the character span."""
    distractor_tokens: tuple[tuple[int, ...], ...]
    """Per item: token positions of the distractors (see the module docstring)."""
    answer_ids: Int[Tensor, " batch"]
    """First token of the right candidate after the candidates' shared prefix."""
    distractor_ids: tuple[tuple[int, ...], ...]
    """Per item: first tokens of the wrong candidates (those that differ from the answer's)."""

    @property
    def final(self) -> Int[Tensor, " batch"]:
        """Position where the answer's distinguishing token is predicted: the last prompt token, or the
        last token of the prefix that all candidates share (which ``tokens`` then include)."""
        return self.lengths - 1


_span_positions = encoding.span_tokens


def _distractor_positions(item, offsets) -> tuple[int, ...]:
    answer = item.spans.get("answer_source", (0, 0))
    keys = [k for k in item.spans if k.startswith("distractor")]
    if not keys:  # the other entities' values ("e1.value" ...), where the generator records them
        keys = [k for k, (s, e) in item.spans.items() if k.endswith(".value") and (e <= answer[0] or s >= answer[1])]
    if keys:
        found = {p for k in keys for p in _span_positions(offsets, *item.spans[k])}
        return tuple(sorted(found - set(_span_positions(offsets, *answer))))
    found = set()
    for j, cand in enumerate(item.candidates):
        text = cand.strip()
        if j == item.label or not text or text == item.answer.strip():
            continue
        for m in re.finditer(rf"(?<!\w){re.escape(text)}(?!\w)", item.prompt):
            if m.end() <= answer[0] or m.start() >= answer[1]:
                found.update(_span_positions(offsets, m.start(), m.end()))
    final = len(offsets) - 1
    return tuple(sorted(found - {final}))


def encode_items(tokenizer, items: Sequence, *, need: Sequence[str] = ()) -> EncodedItems:
    """Encode items (``codetransfer.tasks.items.Item``) with the BOS policy and locate their spans.

    ``need``: span keys every item must have (refused with a one-line error otherwise).
    """
    items = list(items)
    if not items:
        raise CodetransferError("items: expected at least one item, got an empty list")
    rows, spans, distractors, answers, wrong = [], [], [], [], []
    for n, item in enumerate(items):
        for key in need:
            if key not in item.spans:
                raise CodetransferError(
                    f"item {n} of task '{item.task}': no span '{key}' (has {sorted(item.spans) or 'none'}); "
                    f"this score needs items whose generator records '{key}' in Item.spans"
                )
        ids, offsets = encoding.encode_prompt(tokenizer, item.prompt)
        if len(ids) < 2:
            raise CodetransferError(f"item {n} of task '{item.task}': empty prompt; every item needs a prompt")
        cands = [encoding.tokens(tokenizer, c) for c in item.candidates]
        if not all(cands):
            raise CodetransferError(f"item {n} of task '{item.task}': empty candidate in {item.candidates!r}")
        k = encoding.shared_prefix_len(cands)  # tokens every candidate starts with: they join the prompt
        ids = ids + cands[0][:k]
        rows.append(ids)
        spans.append({key: _span_positions(offsets, s, e) for key, (s, e) in item.spans.items()})
        distractors.append(_distractor_positions(item, offsets))
        first = [c[k] for c in cands]
        answers.append(first[item.label])
        wrong.append(tuple(sorted({t for j, t in enumerate(first) if j != item.label and t != first[item.label]})))
    lengths = torch.tensor([len(r) for r in rows])
    tokens = encoding.pad_rows(rows, encoding.pad_id(tokenizer))
    return EncodedItems(tokens, lengths, tuple(spans), tuple(distractors), torch.tensor(answers), tuple(wrong))


def _check_tokens(bridge, tokens: Tensor, lengths: Tensor | None) -> Tensor:
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype not in (torch.long, torch.int):
        raise CodetransferError(
            f"tokens: expected an integer tensor of shape (batch, pos), got {type(tokens).__name__} "
            f"{tuple(getattr(tokens, 'shape', ()))}"
        )
    if tokens.shape[1] > bridge.cfg.n_ctx:
        raise CodetransferError(
            f"tokens: {tokens.shape[1]} positions exceed the model's context of {bridge.cfg.n_ctx}; use shorter sequences"
        )
    if int(tokens.max()) >= bridge.cfg.d_vocab or int(tokens.min()) < 0:
        raise CodetransferError(
            f"tokens: ids must lie in [0, {bridge.cfg.d_vocab}), got [{int(tokens.min())}, {int(tokens.max())}]; "
            "were they made with this run's tokenizer?"
        )
    if lengths is None:
        return torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long)
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    if lengths.shape != (tokens.shape[0],) or int(lengths.min()) < 1 or int(lengths.max()) > tokens.shape[1]:
        raise CodetransferError(f"lengths: expected one length in [1, {tokens.shape[1]}] per sequence")
    return lengths


def check_heads(bridge, heads: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Refuse (layer, head) pairs the model does not have."""
    out = []
    for layer, head in heads:
        if not 0 <= layer < bridge.cfg.n_layers:
            raise CodetransferError(
                f"layer: expected 0..{bridge.cfg.n_layers - 1} for this {bridge.cfg.n_layers}-layer model, got {layer}"
            )
        if not 0 <= head < bridge.cfg.n_heads:
            raise CodetransferError(
                f"head: expected 0..{bridge.cfg.n_heads - 1} for this {bridge.cfg.n_heads}-head model, got {head}"
            )
        out.append((int(layer), int(head)))
    return out


# --------------------------------------------------------------------------------------------
# 1. head scores from patterns


def detection_pattern(tokens: Int[Tensor, "batch pos"], kind: str) -> Float[Tensor, "batch pos pos"]:
    """TransformerLens' ``head_detector`` detection patterns, for a batch of sequences at once."""
    if kind not in DETECTION_KINDS:
        raise CodetransferError(
            f"kind: expected one of {DETECTION_KINDS}, got '{kind}'{did_you_mean(kind, DETECTION_KINDS)}"
        )
    b, n = tokens.shape
    if kind == "previous_token":
        det = torch.zeros(n, n)
        det[1:, :-1] = torch.eye(n - 1)
        return det.expand(b, n, n).clone()
    same = (tokens[:, :, None] == tokens[:, None, :]).float()
    dup = torch.tril(same, diagonal=-1)  # earlier positions only: the current token is excluded
    if kind == "duplicate_token":
        return dup
    ind = torch.zeros_like(dup)
    ind[:, :, 1:] = dup[:, :, :-1]  # key after the earlier copy; column 0 stays 0
    return torch.tril(ind)


def attention_patterns(
    bridge, tokens: Int[Tensor, "batch pos"], *, batch_size: int = 32
) -> Float[Tensor, "layer batch head q k"]:
    """Every layer's attention pattern (only ``hook_pattern`` is cached)."""
    _check_tokens(bridge, tokens, None)
    out = []
    with torch.inference_mode():
        for chunk in tokens.split(batch_size):
            _, cache = bridge.run_with_cache(chunk, names_filter=lambda name: name.endswith("attn.hook_pattern"))
            out.append(torch.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(bridge.cfg.n_layers)]))
    return torch.cat(out, dim=1).float()


def prompt_attention(bridge, tokenizer, prompt: str, layer: int, head: int) -> tuple[Float[Tensor, "q k"], list[str]]:
    """One head's attention pattern on ``[bos] + tokens(prompt)`` and the token strings (for
    :func:`codetransfer.analysis.attention_plots.plot_attention_pattern`)."""
    ((layer, head),) = check_heads(bridge, [(layer, head)])
    ids, offsets = encoding.encode_prompt(tokenizer, prompt)
    pats = attention_patterns(bridge, torch.tensor([ids]))
    return pats[layer, 0, head], [tokenizer.bos_token] + [prompt[s:e] for s, e in offsets[1:]]


def _valid_mask(lengths: Tensor, n: int) -> Float[Tensor, "batch pos pos"]:
    ar = torch.arange(n)
    real = (ar[None, :] < lengths[:, None]).float()
    return real[:, :, None] * real[:, None, :]


def pattern_scores(
    patterns: Float[Tensor, "layer batch head q k"],
    tokens: Int[Tensor, "batch pos"],
    *,
    lengths: Int[Tensor, " batch"] | None = None,
    scores: Sequence[str] = PATTERN_SCORES,
    reduction: str = "rows",
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
) -> dict[str, Float[Tensor, "batch layer head"]]:
    """Per-sequence scores of every head (see the module docstring for the definitions).

    ``exclude_bos`` / ``exclude_current_token`` zero that attention before scoring, like
    ``head_detector`` (they apply to the detection scores only).
    """
    for s in scores:
        if s not in PATTERN_SCORES:
            raise CodetransferError(
                f"scores: unknown score '{s}'{did_you_mean(s, PATTERN_SCORES)}; expected some of {PATTERN_SCORES}"
            )
    if reduction not in REDUCTIONS:
        raise CodetransferError(f"reduction: expected one of {REDUCTIONS}, got '{reduction}'")
    n_layers, b, n_heads, n, _ = patterns.shape
    lengths = torch.full((b,), n, dtype=torch.long) if lengths is None else torch.as_tensor(lengths)
    valid = _valid_mask(lengths, n)  # batch q k
    pat = patterns * valid[None, :, None]
    real_q = (torch.arange(n)[None, :] < lengths[:, None]).float()  # batch q
    after_bos = real_q.clone()
    after_bos[:, 0] = 0
    out: dict[str, Tensor] = {}
    masked = pat
    if exclude_bos or exclude_current_token:
        masked = pat.clone()
        if exclude_bos:
            masked[..., 0] = 0
        if exclude_current_token:
            masked = masked * (1 - torch.eye(n))
    for s in scores:
        if s in DETECTION_KINDS:
            val = _detection_score(masked, detection_pattern(tokens, s) * valid, reduction)
        elif s == "entropy":
            ent = -(pat * torch.log(pat.clamp_min(1e-30))).sum(-1)  # layer batch head q
            val = (ent * after_bos[None, :, None]).sum(-1) / after_bos.sum(-1).clamp_min(1)[None, :, None]
        else:  # bos
            val = (pat[..., 0] * after_bos[None, :, None]).sum(-1) / after_bos.sum(-1).clamp_min(1)[None, :, None]
        out[s] = val.permute(1, 0, 2).contiguous()
    return out


def _detection_score(
    masked: Float[Tensor, "layer batch head q k"], det: Float[Tensor, "batch q k"], reduction: str
) -> Float[Tensor, "layer batch head"]:
    """Attention mass on the detection targets, reduced as ``reduction`` says (module docstring)."""
    hit = (masked * det[None, :, None]).sum(-1)  # layer batch head q
    mass = masked.sum(-1)
    if reduction == "head_detector":
        return hit.sum(-1) / mass.sum(-1).clamp_min(1e-12)
    rows = (det.sum(-1) > 0).float()  # batch q
    frac = hit / mass.clamp_min(1e-12)
    val = (frac * rows[None, :, None]).sum(-1) / rows.sum(-1).clamp_min(1)[None, :, None]
    return torch.where(rows.sum(-1)[None, :, None] > 0, val, torch.full_like(val, float("nan")))


def induction_shift_profile(
    patterns: Float[Tensor, "layer batch head q k"],
    tokens: Int[Tensor, "batch pos"],
    shifts: Sequence[int] = tuple(range(-1, 16)),
    *,
    lengths: Int[Tensor, " batch"] | None = None,
) -> Float[Tensor, "shift batch layer head"]:
    """Attention on the key ``shift`` positions after the induction target, per head (``rows`` reduction).

    Shift 0 is the ``induction`` score (the key after an earlier copy of the current token); shift
    -1 is the ``duplicate_token`` score (the earlier copy itself). A head whose profile peaks at a
    shift ``d > 0`` runs induction with a lag: it matches keys through an earlier-layer head that
    attends ``d + 1`` positions back and reads the next token through one that attends ``d`` back,
    so the standard score misses it. Seen in training: a 2-layer attention-only model whose
    layer-0 heads attended 8 and 9 positions back predicted the second copy of ``[bos] + x + x``
    to 0.17 nats with induction scores of 0.0 on every head; its layer-1 head scores 0.9 at shift 8.
    """
    if not shifts:
        raise CodetransferError("shifts: expected at least one shift (e.g. range(-1, 16)), got none")
    n_layers, b, n_heads, n, _ = patterns.shape
    lengths = torch.full((b,), n, dtype=torch.long) if lengths is None else torch.as_tensor(lengths)
    valid = _valid_mask(lengths, n)
    pat = patterns * valid[None, :, None]
    dup = detection_pattern(tokens, "duplicate_token")  # batch q k: earlier copies
    out = []
    for shift in shifts:
        step = int(shift) + 1  # target key = earlier copy + step
        det = torch.zeros_like(dup)
        if step >= 0:
            if step < n:
                det[:, :, step:] = dup[:, :, : n - step]
        elif -step < n:
            det[:, :, :step] = dup[:, :, -step:]
        det = torch.tril(det) * valid  # keys after the query are out of reach
        out.append(_detection_score(pat, det, "rows").permute(1, 0, 2))
    return torch.stack(out)


def head_scores(
    bridge,
    tokens: Int[Tensor, "batch pos"],
    *,
    lengths: Int[Tensor, " batch"] | None = None,
    scores: Sequence[str] = PATTERN_SCORES,
    reduction: str = "rows",
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    batch_size: int = 32,
) -> dict[str, Float[Tensor, "batch layer head"]]:
    """Per-sequence pattern scores of all heads on ``tokens`` (right-padded when ``lengths`` is given)."""
    lengths = _check_tokens(bridge, tokens, lengths)
    out: dict[str, list[Tensor]] = {s: [] for s in scores}
    for tok_chunk, len_chunk in zip(tokens.split(batch_size), lengths.split(batch_size)):
        tok_chunk = tok_chunk[:, : int(len_chunk.max())]
        pats = attention_patterns(bridge, tok_chunk, batch_size=batch_size)
        got = pattern_scores(
            pats,
            tok_chunk,
            lengths=len_chunk,
            scores=scores,
            reduction=reduction,
            exclude_bos=exclude_bos,
            exclude_current_token=exclude_current_token,
        )
        for s in scores:
            out[s].append(got[s])
    return {s: torch.cat(v) for s, v in out.items()}


def _table(per_item: Mapping[str, Tensor], *, task: str, rendering: str, n_boot: int, seed: int) -> pd.DataFrame:
    """Tidy rows (layer, head, metric, value, ci) from per-item [n, layer, head] tensors."""
    from codetransfer.analysis.stats import nan_bootstrap_ci

    frames = []
    for metric, vals in per_item.items():
        mean, lo, hi = nan_bootstrap_ci(vals, n_resamples=n_boot, seed=seed)
        n_layers, n_heads = mean.shape
        layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
        frames.append(
            pd.DataFrame(
                {
                    "task": task,
                    "rendering": rendering,
                    "layer": layer.ravel(),
                    "head": head.ravel(),
                    "metric": metric,
                    "value": mean.numpy().ravel(),
                    "ci_low": lo.numpy().ravel(),
                    "ci_high": hi.numpy().ravel(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def standard_head_scores(
    bridge,
    tokenizer,
    *,
    n_seqs: int = 32,
    half_len: int = 20,
    seed: int = 0,
    n_boot: int = 1000,
    batch_size: int = 32,
    token_ids: Sequence[int] | None = None,
) -> pd.DataFrame:
    """The five pattern scores of every head on repeated random tokens of the run's vocabulary
    (``token_ids``, default: every non-special token of ``tokenizer``).

    Returns a tidy table (``task='repeated_random'``, rendering ``''``), intervals over sequences.
    """
    if 1 + 2 * half_len > bridge.cfg.n_ctx:
        raise CodetransferError(
            f"half_len: {half_len} gives {1 + 2 * half_len} tokens, more than the context of {bridge.cfg.n_ctx}; "
            f"use half_len <= {(bridge.cfg.n_ctx - 1) // 2}"
        )
    ids = ordinary_token_ids(tokenizer) if token_ids is None else token_ids
    tokens = repeated_random_tokens(ids, n_seqs, half_len, seed, tokenizer.bos_token_id)
    per_seq = head_scores(bridge, tokens, batch_size=batch_size)
    return _table(per_seq, task=RANDOM_TASK, rendering="", n_boot=n_boot, seed=seed)


# --------------------------------------------------------------------------------------------
# 2. task-aligned attention


def _final_attention(bridge, enc: EncodedItems, batch_size: int) -> Float[Tensor, "batch layer head k"]:
    out = []
    for start in range(0, enc.tokens.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        lengths = enc.lengths[sl]
        toks = enc.tokens[sl, : int(lengths.max())]
        pats = attention_patterns(bridge, toks, batch_size=batch_size)  # layer b head q k
        rows = pats.permute(1, 3, 0, 2, 4)[torch.arange(toks.shape[0]), lengths - 1]  # b layer head k
        out.append(torch.nn.functional.pad(rows, (0, enc.tokens.shape[1] - toks.shape[1])))
    return torch.cat(out)


def task_attention_scores(
    bridge, tokenizer, items: Sequence, *, n_boot: int = 1000, seed: int = 0, batch_size: int = 32
) -> pd.DataFrame:
    """Attention from the final position to each span, the answer source and the distractors.

    Metrics: ``attn_to_query``, ``attn_to_answer_source``, ``attn_to_distractors`` and
    ``attn_answer_minus_distractors`` (every item needs an ``answer_source`` span). One block of rows per rendering:
    ``items`` themselves, and their twins when every item has one.
    """
    items = list(items)
    groups = [items]
    if items and all(it.twin is not None for it in items):
        groups.append([it.twin for it in items])
    frames = []
    for group in groups:
        _check_one_rendering(group)
        enc = encode_items(tokenizer, group, need=("answer_source",))
        _check_tokens(bridge, enc.tokens, enc.lengths)
        att = _final_attention(bridge, enc, batch_size)  # batch layer head k
        per_item: dict[str, Tensor] = {}
        for key in SPAN_KEYS:
            per_item[f"attn_to_{key}"] = _mass(att, [s.get(key) for s in enc.span_tokens])
        per_item["attn_to_distractors"] = _mass(att, list(enc.distractor_tokens))
        per_item["attn_answer_minus_distractors"] = per_item["attn_to_answer_source"] - per_item["attn_to_distractors"]
        frames.append(_table(per_item, task=group[0].task, rendering=group[0].rendering, n_boot=n_boot, seed=seed))
    return pd.concat(frames, ignore_index=True)


def _check_one_rendering(items: Sequence) -> None:
    kinds = {(it.task, it.rendering) for it in items}
    if len(kinds) > 1:
        raise CodetransferError(
            f"items: expected one task and rendering per call, got {sorted(kinds)}; score each group separately"
        )


def _mass(att: Float[Tensor, "batch layer head k"], positions: Sequence) -> Float[Tensor, "batch layer head"]:
    """Attention mass on the given positions per item (NaN where an item lacks them)."""
    out = torch.full(att.shape[:3], float("nan"))
    for i, pos in enumerate(positions):
        if pos is None:
            continue
        out[i] = att[i][..., list(pos)].sum(-1) if pos else 0.0
    return out


# --------------------------------------------------------------------------------------------
# 3. causal importance: ablation and direct logit attribution


def logit_diff(logits: Float[Tensor, "batch pos vocab"], enc: EncodedItems, offset: int = 0) -> Float[Tensor, " batch"]:
    """Logit of the answer's first token minus the mean over the distractors' first tokens, at the final position."""
    rows = torch.arange(logits.shape[0])
    final = logits[rows, enc.final[offset : offset + logits.shape[0]]]  # batch vocab
    out = []
    for i in range(final.shape[0]):
        wrong = enc.distractor_ids[offset + i]
        out.append(final[i, enc.answer_ids[offset + i]] - final[i, list(wrong)].mean())
    return torch.stack(out)


def _check_metric_items(enc: EncodedItems) -> None:
    for i, wrong in enumerate(enc.distractor_ids):
        if not wrong:
            raise CodetransferError(
                f"item {i}: every wrong candidate starts with the answer's first token; the logit difference needs "
                "candidates whose first tokens differ"
            )


def head_means(
    bridge, tokens: Int[Tensor, "batch pos"], lengths: Int[Tensor, " batch"] | None = None, *, batch_size: int = 32
) -> Float[Tensor, "layer head d_head"]:
    """Mean of every head's ``hook_z`` over all real token positions (the mean-ablation reference)."""
    lengths = _check_tokens(bridge, tokens, lengths)
    total = torch.zeros(bridge.cfg.n_layers, bridge.cfg.n_heads, bridge.cfg.d_head)
    count = 0
    with torch.inference_mode():
        for toks, lens in zip(tokens.split(batch_size), lengths.split(batch_size)):
            _, cache = bridge.run_with_cache(toks, names_filter=lambda name: name.endswith("attn.hook_z"))
            real = (torch.arange(toks.shape[1])[None, :] < lens[:, None]).float()  # b pos
            for l in range(bridge.cfg.n_layers):
                total[l] += torch.einsum("bphd,bp->hd", cache[f"blocks.{l}.attn.hook_z"].float(), real)
            count += int(real.sum())
    return total / count


def ablated_metric(
    bridge,
    tokens: Int[Tensor, "batch pos"],
    metric: Callable[[Tensor, int], Tensor],
    *,
    method: str = "mean",
    means: Float[Tensor, "layer head d_head"] | None = None,
    lengths: Int[Tensor, " batch"] | None = None,
    batch_size: int = 32,
) -> tuple[Float[Tensor, " batch"], Float[Tensor, "batch layer head"]]:
    """``metric(logits, offset) -> [batch]`` on the clean run and with each head ablated in turn.

    ``offset`` is the index of the chunk's first sequence. For each layer, the batch is copied once
    per head and copy ``h`` has head ``h``'s ``hook_z`` replaced by ``means[l, h]`` (``method='mean'``;
    default: means over ``tokens``' real positions) or by zeros. Returns (clean, ablated).
    """
    if method not in ABLATIONS:
        raise CodetransferError(f"method: expected one of {ABLATIONS}, got '{method}'{did_you_mean(method, ABLATIONS)}")
    lengths = _check_tokens(bridge, tokens, lengths)
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    if method == "mean" and means is None:
        means = head_means(bridge, tokens, lengths, batch_size=batch_size)
    if method == "zero":
        means = torch.zeros(n_layers, n_heads, bridge.cfg.d_head)
    chunk = max(1, batch_size // n_heads)
    clean, ablated = [], []
    with torch.inference_mode():
        for start in range(0, tokens.shape[0], chunk):
            toks = tokens[start : start + chunk]
            b = toks.shape[0]
            clean.append(metric(bridge(toks), start))
            reps = toks.repeat(n_heads, 1)  # copy h = rows h*b .. (h+1)*b
            per_layer = []
            for l in range(n_layers):

                def hook(z, hook, l=l, b=b):
                    z = z.clone()
                    for h in range(n_heads):
                        z[h * b : (h + 1) * b, :, h] = means[l, h].to(z.dtype)
                    return z

                logits = bridge.run_with_hooks(reps, fwd_hooks=[(f"blocks.{l}.attn.hook_z", hook)])
                vals = torch.stack([metric(logits[h * b : (h + 1) * b], start) for h in range(n_heads)], dim=-1)
                per_layer.append(vals)  # b head
            ablated.append(torch.stack(per_layer, dim=1))  # b layer head
    return torch.cat(clean).float(), torch.cat(ablated).float()


def head_ablation_scores(
    bridge,
    tokenizer,
    items: Sequence,
    *,
    method: str = "mean",
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
) -> pd.DataFrame:
    """Change of the answer-vs-distractor logit difference when each head is ablated (ablated - clean).

    Metric name ``ablation_<method>_logit_diff``; the mean ablation uses the means over the items' own
    token positions. Also returns the clean metric as ``logit_diff`` (same value for every head).
    """
    items = list(items)
    _check_one_rendering(items)
    enc = encode_items(tokenizer, items)
    _check_metric_items(enc)
    clean, ablated = ablated_metric(
        bridge,
        enc.tokens,
        lambda logits, off: logit_diff(logits, enc, off),
        method=method,
        lengths=enc.lengths,
        batch_size=batch_size,
    )
    delta = ablated - clean[:, None, None]
    per_item = {f"ablation_{method}_logit_diff": delta}
    return _table(per_item, task=items[0].task, rendering=items[0].rendering, n_boot=n_boot, seed=seed)


def _value_constant(bridge, layer: int) -> Float[Tensor, "head d_head"]:
    """The part of every value vector that does not depend on the input: ``ln1.bias @ W_V + b_V`` (zero for
    a model without biases, such as Llama)."""
    attn = bridge.blocks[layer].attn
    W_V = attn.W_V.detach().float()  # head d_model d_head
    const = attn.b_V.detach().float() if isinstance(attn.b_V, Tensor) else W_V.new_zeros(W_V.shape[0], W_V.shape[2])
    ln = bridge.blocks[layer].ln1
    bias = getattr(getattr(ln, "original_component", ln), "bias", None)
    if isinstance(bias, Tensor):
        const = const + torch.einsum("m,hmd->hd", bias.detach().float(), W_V)
    return const


def _ln_final_weight(bridge) -> Tensor:
    ln = bridge.ln_final
    w = getattr(ln, "weight", None)
    if w is None:
        w = ln.original_component.weight
    return w.detach().float()


def head_logit_attribution(bridge, enc: EncodedItems) -> Float[Tensor, "batch layer head"]:
    """Direct logit attribution of every head to the answer-vs-distractors logit difference.

    With ``bridge.compatibility_mode`` this is TransformerLens' ``direct_logit_attribution`` (one call
    per distractor, averaged); otherwise the manual computation of the module docstring.
    """
    _check_metric_items(enc)
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    if getattr(bridge, "compatibility_mode", False):
        return _tl_head_dla(bridge, enc)
    with torch.inference_mode():
        _, cache = bridge.run_with_cache(
            enc.tokens, names_filter=lambda n: n.endswith("attn.hook_z") or n == "ln_final.hook_scale"
        )
        rows = torch.arange(enc.tokens.shape[0])
        scale = cache["ln_final.hook_scale"][rows, enc.final].float()  # b 1
        w = _ln_final_weight(bridge)
        W_U = bridge.W_U.detach().float()
        direction = torch.stack(
            [W_U[:, a] - W_U[:, list(d)].mean(-1) for a, d in zip(enc.answer_ids.tolist(), enc.distractor_ids)]
        )  # b d_model
        out = torch.zeros(enc.tokens.shape[0], n_layers, n_heads)
        centred = getattr(bridge.cfg, "normalization_type", "LN") in ("LN", "LNPre")
        for l in range(n_layers):
            z = cache[f"blocks.{l}.attn.hook_z"][rows, enc.final].float()  # b head d_head
            z = z - _value_constant(bridge, l)
            res = torch.einsum("bhd,hdm->bhm", z, bridge.blocks[l].attn.W_O.detach().float())
            if centred:  # LayerNorm subtracts the mean; RMSNorm does not
                res = res - res.mean(-1, keepdim=True)
            out[:, l] = torch.einsum("bhm,bm->bh", res / scale[:, None], direction * w)
    return out


def _tl_head_dla(bridge, enc: EncodedItems) -> Tensor:
    from transformer_lens.tools.analysis import direct_logit_attribution

    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    b = enc.tokens.shape[0]
    out = torch.zeros(b, n_layers, n_heads)
    with torch.inference_mode():
        _, cache = bridge.run_with_cache(enc.tokens)
        width = max(len(d) for d in enc.distractor_ids)
        counts = torch.tensor([float(len(d)) for d in enc.distractor_ids])
        for j in range(width):
            # the j-th distractor of each item; items with fewer distractors repeat their last one, masked out
            wrong = torch.tensor([d[min(j, len(d) - 1)] for d in enc.distractor_ids])
            keep = torch.tensor([float(j < len(d)) for d in enc.distractor_ids])
            res = direct_logit_attribution(
                bridge, answer_tokens=enc.answer_ids, incorrect_tokens=wrong, unit="head", pos=None, cache=cache
            )
            att = res.attribution[: n_layers * n_heads, torch.arange(b), enc.final]  # component b
            out += att.T.reshape(b, n_layers, n_heads) * keep[:, None, None]
    return out / counts[:, None, None]


def head_dla_scores(
    bridge, tokenizer, items: Sequence, *, n_boot: int = 1000, seed: int = 0, batch_size: int = 32
) -> pd.DataFrame:
    """Tidy table of per-head direct logit attribution (metric ``dla_logit_diff``) with intervals."""
    items = list(items)
    _check_one_rendering(items)
    enc = encode_items(tokenizer, items)
    _check_tokens(bridge, enc.tokens, enc.lengths)
    parts = []
    for start in range(0, len(items), batch_size):
        sub = _subset(enc, start, start + batch_size)
        parts.append(head_logit_attribution(bridge, sub))
    return _table(
        {"dla_logit_diff": torch.cat(parts)}, task=items[0].task, rendering=items[0].rendering, n_boot=n_boot, seed=seed
    )


def _subset(enc: EncodedItems, start: int, stop: int) -> EncodedItems:
    lengths = enc.lengths[start:stop]
    return EncodedItems(
        enc.tokens[start:stop, : int(lengths.max())],
        lengths,
        enc.span_tokens[start:stop],
        enc.distractor_tokens[start:stop],
        enc.answer_ids[start:stop],
        enc.distractor_ids[start:stop],
    )


# --------------------------------------------------------------------------------------------
# 4. induction loss


def induction_loss(
    logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, " batch"]:
    """Mean cross-entropy on the predictable part of the second copy of ``[bos] + x + x`` per sequence.

    With ``half = (pos - 1) // 2``, the targets are positions ``half + 2 .. 2 * half`` (the second
    copy except its first token, which no earlier context predicts).
    """
    n = tokens.shape[1]
    if n < 5 or (n - 1) % 2:
        raise CodetransferError(
            f"tokens: expected [bos] + x + x with len(x) >= 2 (odd length >= 5), got length {n}; "
            "use repeated_random_tokens"
        )
    half = (n - 1) // 2
    logp = torch.log_softmax(logits.float(), dim=-1)
    # the logit at position p predicts token p + 1
    pred = logp[:, half + 1 : 2 * half]  # predicts positions half+2 .. 2*half
    target = tokens[:, half + 2 :]
    return -pred.gather(-1, target[..., None]).squeeze(-1).mean(-1)


def induction_loss_scores(
    bridge,
    tokenizer,
    *,
    n_seqs: int = 32,
    half_len: int = 20,
    seed: int = 0,
    method: str = "mean",
    n_boot: int = 1000,
    batch_size: int = 32,
    token_ids: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Induction loss of the model (metric ``induction_loss``, one row per head with the same value)
    and its increase when each head is ablated (``ablation_<method>_induction_loss``), on repeated
    random tokens drawn from ``token_ids`` (default: every non-special token of ``tokenizer``)."""
    ids = ordinary_token_ids(tokenizer) if token_ids is None else token_ids
    tokens = repeated_random_tokens(ids, n_seqs, half_len, seed, tokenizer.bos_token_id)
    clean, ablated = ablated_metric(
        bridge,
        tokens,
        lambda logits, off: induction_loss(logits, tokens[off : off + logits.shape[0]]),
        method=method,
        batch_size=batch_size,
    )
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    per_seq = {
        "induction_loss": clean[:, None, None].expand(-1, n_layers, n_heads),
        f"ablation_{method}_induction_loss": ablated - clean[:, None, None],
    }
    return _table(per_seq, task=RANDOM_TASK, rendering="", n_boot=n_boot, seed=seed)


# --------------------------------------------------------------------------------------------
# 5. across runs


def score_run(
    bridge,
    tokenizer,
    items_by_task: Mapping[str, Sequence] | None = None,
    *,
    n_seqs: int = 32,
    half_len: int = 20,
    seed: int = 0,
    ablation: str = "mean",
    n_boot: int = 1000,
    batch_size: int = 32,
    progress: Callable[[str], None] = lambda msg: None,
) -> pd.DataFrame:
    """Every score of every head of one run: pattern scores and induction loss on repeated random
    tokens, and per task (and its twin rendering) task attention, ablation and DLA. Task attention
    uses the items that have an ``answer_source`` span (none in e.g. knowledge cloze).

    Columns: task, rendering, layer, head, metric, value, ci_low, ci_high. The caller adds
    ``run, recipe, seed`` (see :func:`score_runs`).
    """
    if ablation not in ABLATIONS:
        raise CodetransferError(
            f"ablation: expected one of {ABLATIONS}, got '{ablation}'{did_you_mean(ablation, ABLATIONS)}"
        )
    half_len = min(half_len, (bridge.cfg.n_ctx - 1) // 2)
    kw = dict(n_boot=n_boot, seed=seed, batch_size=batch_size)
    progress("attention: pattern scores and induction loss on repeated random tokens")
    frames = [
        standard_head_scores(bridge, tokenizer, n_seqs=n_seqs, half_len=half_len, **kw),
        induction_loss_scores(bridge, tokenizer, n_seqs=n_seqs, half_len=half_len, method=ablation, **kw),
    ]
    for task, items in (items_by_task or {}).items():
        items = list(items)
        progress(f"attention: task {task} ({len(items)} items)")
        renderings = [items] + ([[it.twin for it in items]] if all(it.twin is not None for it in items) else [])
        task_frames = []
        with_source = [it for it in items if "answer_source" in it.spans]
        if len(with_source) < len(items):
            progress(
                f"attention: task {task}: {len(items) - len(with_source)} of {len(items)} items have no "
                "'answer_source' span; task-aligned attention uses the others"
            )
        if with_source:
            task_frames.append(task_attention_scores(bridge, tokenizer, with_source, **kw))
        for group in renderings:
            task_frames.append(head_ablation_scores(bridge, tokenizer, group, method=ablation, **kw))
            task_frames.append(head_dla_scores(bridge, tokenizer, group, **kw))
        for f in task_frames:
            f["task"] = task  # a twin keeps its family's name; its rendering says which it is
        frames.extend(task_frames)
    return pd.concat(frames, ignore_index=True)[list(TABLE_COLUMNS)]


def score_runs(runs: Iterable, score: Callable[..., pd.DataFrame] = score_run, **kwargs) -> pd.DataFrame:
    """Score runs given as objects with ``.bridge, .tokenizer, .info`` (``.info.name/.recipe/.seed``)
    into one table with ``run, recipe, seed`` columns first. Refuses runs of different shapes."""
    frames, shape = [], None
    for run in runs:
        cfg = run.bridge.cfg
        this = (cfg.n_layers, cfg.n_heads)
        if shape is not None and this != shape:
            raise CodetransferError(
                f"run '{run.info.name}': {this[0]} layers x {this[1]} heads, but earlier runs have "
                f"{shape[0]} x {shape[1]}; compare runs of one grid (same model shape)"
            )
        shape = this
        t = score(run.bridge, run.tokenizer, **kwargs)
        frames.append(schema.add_run_columns(t, run))
    if not frames:
        raise CodetransferError("runs: expected at least one run, got none")
    return pd.concat(frames, ignore_index=True)


def score_checkpoints(
    checkpoints: Mapping[int, str | Path],
    items_by_task: Mapping[str, Sequence] | None = None,
    *,
    device: str | torch.device = "cpu",
    score: Callable[..., pd.DataFrame] = score_run,
    **kwargs,
) -> pd.DataFrame:
    """Score each checkpoint folder of a training run (``step -> folder``) into one table with a
    ``step`` column. ``score(bridge, tokenizer, items_by_task, **kwargs)`` defaults to :func:`score_run`."""
    from codetransfer.trained.loading import load_bridge

    if not checkpoints:
        raise CodetransferError("checkpoints: expected a mapping step -> checkpoint folder, got an empty one")
    frames, shape = [], None
    for step in sorted(checkpoints):
        bridge, tokenizer = load_bridge(checkpoints[step], device=device)
        this = (bridge.cfg.n_layers, bridge.cfg.n_heads)
        if shape is not None and this != shape:
            raise CodetransferError(
                f"checkpoints[{step}]: {this[0]} layers x {this[1]} heads differs from {shape[0]} x {shape[1]}; "
                "all checkpoints must come from one run"
            )
        shape = this
        t = score(bridge, tokenizer, items_by_task, **kwargs)
        t.insert(0, "step", int(step))
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def best_heads(table: pd.DataFrame, metric: str = "induction", task: str = "repeated_random") -> pd.DataFrame:
    """The strongest head of every run by ``metric`` on ``task`` (the highest score; the lowest for a loss):
    ``table``'s row of that head, one per run, in run order. Head indices are not comparable across
    independently initialised seeds, so a recipe's strength is read from its runs' best heads (per seed),
    never from one (layer, head) averaged over seeds; the attention verdict and the report both read this."""
    need = {"run", "task", "layer", "head", "metric", "value"}
    if not need <= set(table.columns):
        raise CodetransferError(f"table: expected columns {sorted(need)}, missing {sorted(need - set(table.columns))}")
    t = table[(table["metric"] == metric) & (table["task"].astype(str) == task) & table["value"].notna()]
    if t.empty:
        return t.reset_index(drop=True)
    pick = t.groupby("run", sort=True)["value"]
    rows = pick.idxmin() if metric.endswith("_loss") else pick.idxmax()
    return t.loc[rows.to_numpy()].reset_index(drop=True)


def head_profiles(table: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (run, layer, head), one column per ``task/rendering/metric`` (the head's profile)."""
    need = {"run", "layer", "head", "metric", "value"}
    if not need <= set(table.columns):
        raise CodetransferError(f"table: expected columns {sorted(need)}, missing {sorted(need - set(table.columns))}")
    t = table
    if metrics is not None:
        unknown = set(metrics) - set(t["metric"])
        if unknown:
            m = sorted(unknown)[0]
            raise CodetransferError(f"metrics: '{m}' is not in the table{did_you_mean(m, set(t['metric']))}")
        t = t[t["metric"].isin(metrics)]
    key = t["metric"]
    for col in ("rendering", "task"):
        if col in t.columns:
            key = t[col].astype(str) + "/" + key
    t = t.assign(feature=key)
    return t.pivot_table(index=["run", "layer", "head"], columns="feature", values="value", aggfunc="mean")


def _profiles_of(table: pd.DataFrame, run_a: str, run_b: str, metrics) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = set(table["run"]) if "run" in table.columns else set()
    for r in (run_a, run_b):
        if r not in runs:
            raise CodetransferError(f"run: '{r}' is not in the table{did_you_mean(r, runs)}; runs: {sorted(runs)}")
    prof = head_profiles(table[table["run"].isin([run_a, run_b])], metrics)
    prof = prof.dropna(axis=1, how="any")
    if prof.shape[1] == 0:
        raise CodetransferError("metrics: the two runs share no metric measured on every head; score both runs alike")
    a, b = prof.loc[run_a], prof.loc[run_b]
    if a.shape[0] != b.shape[0]:
        raise CodetransferError(
            f"runs '{run_a}' and '{run_b}' have {a.shape[0]} and {b.shape[0]} heads; compare runs of the same shape"
        )
    std = prof.std(axis=0, ddof=0).replace(0, 1.0)
    mean = prof.mean(axis=0)
    return (a - mean) / std, (b - mean) / std


def match_heads(
    table: pd.DataFrame,
    run_a: str,
    run_b: str,
    *,
    metrics: Sequence[str] | None = None,
    threshold: float = 1.0,
) -> pd.DataFrame:
    """Hungarian matching of run_a's heads to run_b's heads by score profile.

    Profiles are z-scored per feature over the heads of both runs; the distance is the RMS
    difference over features. Returns one row per pair: ``layer_a, head_a, layer_b, head_b,
    distance, matched`` (``distance <= threshold``) and ``role_a``/``role_b`` (the feature with the
    largest z-score of each head).
    """
    from scipy.optimize import linear_sum_assignment

    a, b = _profiles_of(table, run_a, run_b, metrics)
    dist = np.sqrt(((a.values[:, None, :] - b.values[None, :, :]) ** 2).mean(-1))
    rows, cols = linear_sum_assignment(dist)
    return pd.DataFrame(
        {
            "run_a": run_a,
            "layer_a": [a.index[i][0] for i in rows],
            "head_a": [a.index[i][1] for i in rows],
            "run_b": run_b,
            "layer_b": [b.index[j][0] for j in cols],
            "head_b": [b.index[j][1] for j in cols],
            "distance": dist[rows, cols],
            "matched": dist[rows, cols] <= threshold,
            "role_a": [a.columns[int(np.argmax(a.values[i]))] for i in rows],
            "role_b": [b.columns[int(np.argmax(b.values[j]))] for j in cols],
        }
    )


def unmatched_roles(table: pd.DataFrame, run_a: str, run_b: str, **kwargs) -> pd.DataFrame:
    """Heads of run_a whose best counterpart in run_b (Hungarian matching) is farther than ``threshold``."""
    m = match_heads(table, run_a, run_b, **kwargs)
    return m[~m["matched"]].reset_index(drop=True)
