"""The planted-transfer control's source: repeat documents carry exact in-context repeats, their scrambled
twin the same words with nothing to copy; the source kind, its config field and the control grid file."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from codetransfer.errors import CodetransferError
from codetransfer.tasks.corpus import REPEAT_SPAN, repeat_documents, repeat_lexicon
from codetransfer.trained.config import SourceConfig, grid_from_dict, load_grid
from codetransfer.trained.sources import load_source

CONTROL_TOML = Path(__file__).parent / "grids" / "control.toml"


def longest_period(words: list[str]) -> int:
    """The longest tail of ``words`` that repeats itself with some period p (words[i] == words[i - p]), in words."""
    best = 0
    for p in range(1, len(words) // 2 + 1):
        run = 0
        for i in range(len(words) - 1, p - 1, -1):
            if words[i] != words[i - p]:
                break
            run += 1
        best = max(best, run)
    return best


def repeated_ngrams(words: list[str], n: int) -> int:
    """How many n-grams of ``words`` occur more than once."""
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return sum(c > 1 for c in grams.values())


def test_copy_documents_repeat_a_span_and_scrambled_twins_do_not():
    copy = list(repeat_documents(200, seed=3))
    scrambled = list(repeat_documents(200, seed=3, scrambled=True))
    assert len(copy) == len(scrambled) == 200
    for c, s in zip(copy, scrambled):
        cw, sw = c.split(" "), s.split(" ")
        assert Counter(cw) == Counter(sw)  # the same words, as often
        assert longest_period(cw) >= REPEAT_SPAN[0]  # at least one full extra copy of the span
        assert repeated_ngrams(cw, 4) > 0
    # scrambling destroys the repeats: the span's words recur, so a few 4-word sequences repeat by chance
    # (30 in these 200 documents), against more than 1,500 in order
    grams = [sum(repeated_ngrams(d.split(" "), 4) for d in docs) for docs in (copy, scrambled)]
    assert grams[0] > 1000 and grams[1] < grams[0] / 20
    assert sum(longest_period(s.split(" ")) >= REPEAT_SPAN[0] for s in scrambled) < 5


def test_repeat_documents_are_deterministic_split_and_cover_the_lexicon():
    assert list(repeat_documents(20, seed=1)) == list(repeat_documents(20, seed=1))
    assert list(repeat_documents(20, seed=1)) != list(repeat_documents(20, seed=2))
    train, held = set(repeat_documents(300, seed=1)), set(repeat_documents(30, seed=1, split="heldout"))
    assert not train & held
    lexicon = repeat_lexicon()
    assert list(lexicon) == sorted(set(lexicon)) and all(w and " " not in w for w in lexicon)
    assert {"def", "return", "The", "A"} <= set(lexicon)
    # every UTF-8 continuation byte 80-BF occurs in some word
    bytes_seen = {b for w in lexicon for b in w.encode()}
    assert set(range(0x80, 0xC0)) <= bytes_seen and set(range(0x21, 0x7F)) <= bytes_seen
    with pytest.raises(CodetransferError, match="split"):
        list(repeat_documents(1, seed=0, split="eval"))
    with pytest.raises(CodetransferError, match="layout"):
        list(repeat_documents(1, seed=0, layout="thrice"))


def test_twice_layout_holds_two_copies_among_fresh_words():
    for doc in repeat_documents(50, seed=4, layout="twice"):
        words = doc.split(" ")
        assert repeated_ngrams(words, REPEAT_SPAN[0]) > 0  # the span's second copy
        # no periodic run: the span's words recur, other words only by chance
        assert sum(c > 1 for c in Counter(words).values()) <= REPEAT_SPAN[1] + 3
        assert longest_period(words) <= REPEAT_SPAN[1] + 1


def test_tokenized_copies_repeat_tokens():
    from codetransfer.trained.tokenizer import encode_documents, train_tokenizer

    copy = list(repeat_documents(60, seed=0))
    scrambled = list(repeat_documents(60, seed=0, scrambled=True))
    tok = train_tokenizer(copy + scrambled, vocab_size=320)
    ids_c, ids_s = encode_documents(tok, copy), encode_documents(tok, scrambled)
    # a word of the scrambled twin still recurs (its tokens repeat inside the word), a 12-token run rarely
    assert all(repeated_ngrams(d, 12) > 0 for d in ids_c)
    assert sum(repeated_ngrams(d, 12) for d in ids_c) > 10 * sum(repeated_ngrams(d, 12) for d in ids_s)


def test_synthetic_repeats_source_is_code_with_provenance():
    cfg = SourceConfig(kind="synthetic_repeats", max_bytes=40_000)
    src = load_source("repeats", cfg, seed=0)
    twin = load_source("scrambled", SourceConfig(kind="synthetic_repeats", scrambled=True, max_bytes=40_000), seed=0)
    assert src.category == twin.category == "code"
    assert 38_000 <= sum(len(d.encode()) for d in src.train + src.heldout) <= 45_000
    assert not set(src.train) & set(src.heldout)
    assert src.provenance["scrambled"] is False and twin.provenance["scrambled"] is True
    assert src.provenance["lexicon_sha256"] == twin.provenance["lexicon_sha256"]
    assert [Counter(d.split(" ")) for d in src.train[:20]] == [Counter(d.split(" ")) for d in twin.train[:20]]
    assert src.train[:20] != twin.train[:20]


def test_control_grid_file_loads_and_scrambled_is_validated():
    grid = load_grid(str(CONTROL_TOML))
    assert grid.sources["scrambled"].scrambled and not grid.sources["repeats"].scrambled
    assert grid.train.induction_warmup == 0
    assert {r.name for r in grid.recipes} == {"text-only", "copy->text", "scrambled->text"}
    # equal budgets per recipe
    assert len({sum(p.tokens for p in r.phases) for r in grid.recipes}) == 1
    data = grid.to_dict()
    data["sources"]["repeats"]["scrambled"] = "yes"
    with pytest.raises(CodetransferError, match=r"sources\.repeats\.scrambled: expected true or false"):
        grid_from_dict(data)
    data["sources"]["repeats"]["scrambled"] = False
    data["sources"]["gcide"]["scrambled"] = True
    with pytest.raises(CodetransferError, match=r"sources\.gcide\.scrambled: only kind 'synthetic_repeats'"):
        grid_from_dict(data)
    # the field enters the fingerprint only when set: copy and scrambled sources make different data
    data["sources"]["gcide"]["scrambled"] = False
    a = grid_from_dict(data)
    data["sources"]["repeats"]["scrambled"] = True
    assert grid_from_dict(data).fingerprint() != a.fingerprint()
