"""The one item encoder (codetransfer.analysis.encoding) against the definitions it implements."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from codetransfer.analysis import attention as A
from codetransfer.analysis import encoding as E
from codetransfer.analysis import patching as P
from codetransfer.errors import CodetransferError
from codetransfer.probes.sweep import item_rows
from codetransfer.tasks.items import Item


def _item(prompt, candidates, label, spans=None, labels=()):
    return Item(
        task="t",
        version="1",
        seed=0,
        index=0,
        category="reasoning",
        rendering="text",
        prompt=prompt,
        candidates=tuple(candidates),
        label=label,
        difficulty=0,
        spans=spans or {},
        labels=tuple(labels),
    )


def test_prompt_is_bos_then_its_tokens_with_offsets(tiny_tokenizer):
    ids, offsets = E.encode_prompt(tiny_tokenizer, "The pen is in box A.")
    assert ids[0] == tiny_tokenizer.bos_token_id and offsets[0] == (0, 0)
    assert ids[1:] == tiny_tokenizer("The pen is in box A.", add_special_tokens=False)["input_ids"]
    assert "".join("The pen is in box A."[s:e] for s, e in offsets[1:]).replace(" ", "") == "ThepenisinboxA."


def test_shared_prefix_keeps_a_token_after_it():
    assert E.shared_prefix_len([[1, 2, 3], [1, 2, 4]]) == 2
    assert E.shared_prefix_len([[1, 2], [1, 2, 4]]) == 1  # never eats a candidate's last token
    assert E.shared_prefix_len([[5], [6]]) == 0


def test_answer_tokens_known_answers_and_refusals(tiny_tokenizer):
    shared, a, c = E.answer_tokens(tiny_tokenizer, " A", " B", "x")
    ta, tb = E.tokens(tiny_tokenizer, " A"), E.tokens(tiny_tokenizer, " B")
    k = next(i for i in range(min(len(ta), len(tb))) if ta[i] != tb[i])
    assert (shared, a, c) == (ta[:k], ta[k], tb[k])
    for same in ((" A", " A"), (" box", " box A")):
        with pytest.raises(CodetransferError, match="same tokens"):
            E.answer_tokens(tiny_tokenizer, *same, "items[0]")


def test_pad_rows_right_pads():
    out = E.pad_rows([[1, 2, 3], [4]], 0)
    assert out.dtype == torch.long and out.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert E.pad_rows([[1]], 9, width=3).tolist() == [[1, 9, 9]]


def test_span_token_is_the_token_holding_the_last_character(tiny_tokenizer):
    prompt = "The pen is in box A. Where is the pen?"
    ids, offsets = E.encode_prompt(tiny_tokenizer, prompt)
    end = prompt.index("A.") + 1
    t = E.span_token(offsets, end)
    assert offsets[t][0] <= end - 1 < offsets[t][1]
    assert E.span_positions(offsets, {"v": (end - 1, end)}, ["v"]) == {"v": t}
    assert t in E.span_tokens(offsets, end - 1, end)


def test_every_consumer_encodes_an_item_alike(tiny_tokenizer):
    from codetransfer.tasks.items import Label

    prompt = "The pen is in box A. The cup is in box B. The pen is in box"
    spans = {"answer_source": (prompt.index("A."), prompt.index("A.") + 1)}
    cf = _item(prompt.replace("box A.", "box B.", 1), [" A", " B"], 1, spans)
    item = _item(prompt, [" A", " B"], 0, spans, labels=[Label(spans["answer_source"][1], "holder(pen)", "A")])
    item = dataclasses.replace(item, counterfactual=cf)
    ids, offsets = E.encode_prompt(tiny_tokenizer, prompt)
    shared, a, _ = E.answer_tokens(tiny_tokenizer, " A", " B", "x")
    want = ids + shared
    enc = A.encode_items(tiny_tokenizer, [item])
    pair = P.pair_batch([item], tiny_tokenizer)
    toks, pos, _ = item_rows([item], tiny_tokenizer)
    assert enc.tokens[0].tolist() == want == pair.clean_tokens[0].tolist()
    assert int(enc.final[0]) == int(pair.metric.position[0]) == len(want) - 1
    assert int(enc.answer_ids[0]) == int(pair.metric.answer[0]) == a
    assert toks[0] == ids and pos[0] == [E.span_token(offsets, spans["answer_source"][1])]
