"""From task items to tokens: one encoder for evaluation, patching, attention and probing.

Every analysis reads an :class:`~codetransfer.tasks.items.Item` the same way:

* **BOS policy.** A prompt is encoded as ``[bos] + tokens(prompt)`` (no other special tokens), the
  way the models were trained on documents; BOS has the empty character span ``(0, 0)``
  (:func:`encode_prompt`).
* **Candidates.** A candidate is tokenized on its own (``tokens(candidate)``) and must continue the
  prompt: ``tokens(prompt + candidate) == tokens(prompt) + tokens(candidate)``
  (:func:`check_continuation`).
* **Shared candidate prefix.** When candidates start with the same tokens (a lone space before a
  digit in a small vocabulary), those tokens join the prompt and the answer is read at the first
  token where they differ (:func:`shared_prefix_len`, :func:`answer_tokens`).
* **Answer position.** The next-token logits that predict the answer are read at the last token of
  the (extended) prompt: index ``len(ids) - 1`` (:func:`answer_position`).
* **Spans.** An item's character span ``(start, end)`` maps to the token that holds its last
  character (:func:`span_token`), or to every token that overlaps it (:func:`span_tokens`).
* **Padding.** Rows of different lengths are right-padded with the tokenizer's pad id
  (:func:`pad_rows`); the models are causal, so a position never sees the padding after it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from codetransfer.errors import CodetransferError
from codetransfer.trained.tokenizer import char_to_token, encode_with_bos


def bos_id(tokenizer) -> int:
    """The tokenizer's BOS id; refuses a tokenizer without one."""
    bos = tokenizer.bos_token_id
    if bos is None:
        raise CodetransferError("tokenizer: has no bos_token; load the run's tokenizer with codetransfer")
    return bos


def pad_id(tokenizer) -> int:
    """The id padding uses: the tokenizer's pad id, else its BOS id."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.bos_token_id


def encode_prompt(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """``[bos] + tokens(text)`` and each token's character span in ``text`` (BOS: ``(0, 0)``)."""
    return encode_with_bos(tokenizer, text)


def tokens(tokenizer, text: str) -> list[int]:
    """``tokens(text)`` without special tokens (a candidate or an answer on its own)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_batch(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """``tokens(text)`` of many texts at once, without special tokens (the fast backend's batch call)."""
    return [e.ids for e in tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def check_continuation(
    prompt_ids: Sequence[int], cand_ids: Sequence[int], joint_ids: Sequence[int], name: str, cand: str, prompt: str
) -> None:
    """Refuse a candidate whose tokens change when it follows the prompt (its first token merges)."""
    if list(joint_ids) != list(prompt_ids) + list(cand_ids):
        raise CodetransferError(
            f"{name}: candidate {cand!r} does not tokenize as a continuation (its first token merges "
            f"with the prompt's end {prompt[-8:]!r}); start candidates with a space or end the "
            "prompt at a word boundary"
        )


def shared_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Number of leading tokens every sequence shares, leaving each at least one token after them."""
    k = 0
    while all(len(c) > k + 1 for c in seqs) and len({c[k] for c in seqs}) == 1:
        k += 1
    return k


def answer_tokens(tokenizer, answer: str, counter: str, where: str) -> tuple[list[int], int, int]:
    """``(shared prefix, answer token, counter token)``: the first tokens where the two answers differ.

    When both answers start with the same tokens, the shared tokens are appended to the prompt and
    the metric reads the next one. Refuses answers with the same tokens (or one a prefix of the other).
    """
    a, c = tokens(tokenizer, answer), tokens(tokenizer, counter)
    k = shared_prefix_len([a, c])
    if k >= min(len(a), len(c)) or a[k] == c[k]:
        raise CodetransferError(
            f"{where}: answer {answer!r} and counterfactual answer {counter!r} have the same tokens (or one is a "
            "prefix of the other); a counterfactual must change the answer"
        )
    return a[:k], a[k], c[k]


def answer_position(ids: Sequence[int]) -> int:
    """The token whose next-token logits predict the answer: the last one of ``ids``."""
    return len(ids) - 1


def span_token(offsets: Sequence[tuple[int, int]], char_end: int) -> int:
    """The token holding character ``char_end - 1`` (a span's last character); offsets from :func:`encode_prompt`."""
    return char_to_token(offsets, char_end)


def span_positions(
    offsets: Sequence[tuple[int, int]], spans: Mapping[str, tuple[int, int]], keys: Sequence[str]
) -> dict[str, int]:
    """Span key -> :func:`span_token` of the span's end, for ``keys``."""
    return {k: span_token(offsets, spans[k][1]) for k in keys}


def span_tokens(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, ...]:
    """Every token (BOS excluded) that overlaps the characters ``start..end``."""
    return tuple(i for i, (s, e) in enumerate(offsets) if i > 0 and s < end and e > start and e > s)


def pad_rows(rows: Sequence[Sequence[int]], pad: int, width: int | None = None) -> Int[Tensor, "row pos"]:
    """Right-pad token rows with ``pad`` into one ``[row, pos]`` long tensor (``width`` = longest by default)."""
    if not rows:
        raise CodetransferError("rows: expected at least one token row, got none")
    width = max(len(r) for r in rows) if width is None else width
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return out
