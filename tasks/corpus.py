"""Synthetic training documents from the world simulator: prose narratives and Python programs.

The method
----------
A document is a few short *episodes* separated by blank lines. An episode is one world scenario
(boxes, possession, binding or counting; ``families.sample_scenario`` with ``split="train"``: the
training entity pools, prose templates and code styles, never the evaluation ones) rendered as prose
(``kind="narrative"``) or as a program (``kind="program"``), with **dense supervision**: after the
initial facts and after most operations the document restates current values in the exact form the
evaluation query uses ("The pen C." / ``assert pen == C``), and every episode ends by
restating the values of the other keys and then of its query key (every fact is restated: version 4's
denser drill, measured in docs/learnability.md). Right after the initial facts comes a
lookup drill (each fact restated with probability ``RESTATE_INITIAL``, in random order), so every
episode carries several retrieval targets that need the key, not only the last sentence. So the easiest level (no operation) is solvable by copying an
earlier statement (an induction-style repeat: "The pen B. ... The pen" -> B),
while restatements after moves, swaps, copies and arithmetic need the state to be tracked.

Honest splits (docs/design.md, "the embedded default"): narratives show at most ``families.TRAIN_TEXT_MAX``
operations (hops for binding); programs go up to the families' full depth (the transfer question is
whether deep programs help deep prose). Entity names, templates, code styles and distractor sentences
are disjoint from evaluation items, so no evaluation prompt or held-out fact sentence can occur here.

``split="train"`` and ``split="heldout"`` partition documents by a hash of their text (1 in 10 goes
to heldout), so the two splits never share a document. Generation is deterministic for a seed.
Every program document executes without error (all its asserts hold), which the tests check.
"""

from __future__ import annotations

import functools
import hashlib
import random
from typing import Iterator, Literal

from codetransfer.errors import CodetransferError
from codetransfer.tasks.families import FAMILIES, TRAIN_TEXT_MAX, sample_scenario
from codetransfer.tasks.render import KINDS, prelude, restatement, statement

VERSION = "4"
"""Bumped whenever the documents for a given seed change."""

RESTATE_INITIAL = 1.0
"""Probability of restating each initial fact right after the initial state (a lookup drill)."""
RESTATE_FINAL = 1.0
"""Probability of restating each other key at the end of an episode (before the query key)."""
RESTATE_AFTER_OP = 1.0
"""Probability of restating a key the operation changed."""
RESTATE_OTHER = 0.6
"""Probability of also restating a random other key after a statement."""
HELDOUT_EVERY = 10
"""One in this many documents (by text hash) belongs to the heldout split."""


def _max_depth(kind: str, doc_kind: str) -> int:
    if doc_kind == "narrative":
        return TRAIN_TEXT_MAX[kind]
    return max(max(f.difficulties) for f in FAMILIES if getattr(f, "kind", None) == kind)


def episode(rng: random.Random, world: str, doc_kind: str, difficulty: int) -> str:
    """One episode of ``world`` at ``difficulty`` with restatements, rendered for ``doc_kind``."""
    rendering = "text" if doc_kind == "narrative" else "code"
    sc = sample_scenario(world, rng, difficulty, "train")
    states = sc.states()
    lines: list[str] = list(prelude(sc)) if rendering == "code" else []
    distract = dict(sc.distractors) if rendering == "text" else {}
    for i, ev in enumerate(sc.events):
        if i in distract:
            lines.append(distract[i])
        lines.append(statement(sc, i, states, rendering))
        vals = states[i].values
        if i < sc.n_init - 1:
            continue
        said = []
        if i == sc.n_init - 1:  # lookup drill after the initial facts: restate keys in random order
            said = [k for k in rng.sample(sorted(vals), len(vals)) if rng.random() < RESTATE_INITIAL]
        else:
            touched = [k for k in (ev.key, ev.value) if k in vals]
            if ev.op in ("put", "move", "give", "assign"):
                touched = touched[:1]
            said = [k for k in touched if rng.random() < RESTATE_AFTER_OP]
            if rng.random() < RESTATE_OTHER:
                said.append(rng.choice(sorted(vals)))
        for k in dict.fromkeys(said):
            lines.append(restatement(sc, k, vals[k], rendering))
    if len(sc.events) in distract:
        lines.append(distract[len(sc.events)])
    final = states[-1].values
    others = [k for k in rng.sample(sorted(final), len(final)) if k != sc.query and rng.random() < RESTATE_FINAL]
    for k in others + [sc.query]:
        lines.append(restatement(sc, k, final[k], rendering))
    return (" " if rendering == "text" else "\n").join(lines)


def synthetic_documents(
    kind: Literal["narrative", "program"], n: int, seed: int, split: Literal["train", "heldout"] = "train"
) -> Iterator[str]:
    """``n`` documents of ``kind`` for ``split``; deterministic for (kind, seed, split)."""
    if kind not in ("narrative", "program"):
        raise CodetransferError(f"kind must be 'narrative' or 'program', got {kind!r}")
    if split not in ("train", "heldout"):
        raise CodetransferError(
            f"split must be 'train' or 'heldout', got {split!r}; evaluation items come from codetransfer.tasks.get_task"
        )
    if not isinstance(n, int) or n < 0:
        raise CodetransferError(f"n must be a non-negative integer, got {n!r}")
    made = 0
    j = 0
    while made < n:
        rng = random.Random(f"corpus|{VERSION}|{kind}|{seed}|{j}")
        j += 1
        episodes = []
        for _ in range(rng.randint(3, 6)):
            world = rng.choice(KINDS)
            episodes.append(episode(rng, world, kind, rng.randint(0, _max_depth(world, kind))))
        doc = "\n\n".join(episodes)
        bucket = int(hashlib.sha1(doc.encode()).hexdigest(), 16) % HELDOUT_EVERY
        if (bucket == 0) == (split == "heldout"):
            made += 1
            yield doc


REPEATS_VERSION = "1"
"""Bumped whenever the repeat documents for a given seed change."""
REPEAT_WORDS = (40, 64)
"""Words per repeat document (inclusive range): about 60-128 tokens of a 512-token BPE, one n_ctx-128 row."""
REPEAT_SPAN = (4, 12)
"""Length in words of the span that a repeat document repeats (inclusive range)."""


@functools.lru_cache(maxsize=1)
def repeat_lexicon() -> tuple[str, ...]:
    """The words repeat documents draw from, sorted: every whitespace-separated word of 400 training
    narratives and 400 training programs (seed 0), Python's keywords and builtins, every printable ASCII
    character, and a character for each byte value that valid UTF-8 can hold (U+0100-U+013F for the
    continuation bytes, one character per two-, three- and four-byte lead; unprintable ones dropped). So a
    byte-level BPE trained on any mix of these sources sees most of its ids in the documents."""
    import builtins
    import keyword

    words: set[str] = set()
    for kind in ("narrative", "program"):
        for doc in synthetic_documents(kind, 400, seed=0):
            words.update(doc.split())
    words.update(keyword.kwlist)
    words.update(w for w in dir(builtins) if not w.startswith("_"))
    words.update(chr(c) for c in range(33, 127))
    words.update(chr(c) for c in range(0x100, 0x140))  # lead C4 with every continuation byte 80-BF
    words.update(chr(((lead - 0xC0) << 6) + 1) for lead in range(0xC2, 0xE0) if lead != 0xC4)  # two-byte leads
    words.update(chr(0x1000 * k + 0x100) for k in range(1, 16) if k != 0xD)  # three-byte leads E1-EF (no surrogates)
    words.update(("\u0900", "\U00010400", "\U00040100", "\U00080100", "\U00100100"))  # leads E0, F0-F4
    words = {w for w in words if w.isprintable()}
    return tuple(sorted(words))


def repeat_documents(
    n: int,
    seed: int,
    scrambled: bool = False,
    split: Literal["train", "heldout"] = "train",
    lexicon: tuple[str, ...] | None = None,
    layout: Literal["periodic", "twice"] = "periodic",
) -> Iterator[str]:
    """``n`` documents of random words, each carrying an exact in-context repeat; deterministic for
    (seed, scrambled, split).

    A document is ``r + x x x ...``: ``r`` a random prefix and ``x`` a random span of
    ``REPEAT_SPAN`` words repeated until the document has its length (``REPEAT_WORDS``), every word drawn
    uniformly from :func:`repeat_lexicon` and joined by single spaces: the induction warm-up's periodic rows
    (``trained/warmup.py``) written as text, so a language model trained on them meets tokens it can only
    predict by copying from earlier in the context. ``scrambled=True`` is the control: the same document
    with its words shuffled, so the same words occur as often but no span repeats (beyond chance) and
    there is nothing to copy. Heldout and train documents are disjoint by a hash of the unscrambled text.
    ``lexicon`` replaces :func:`repeat_lexicon` (e.g. the words that are single tokens of a tokenizer).
    ``layout="twice"``: ``r1 + x + r2 + x + r3`` instead, fresh random words around two copies of the span,
    so that only the second copy is predictable and guessing "a word this document used" helps little.
    """
    if layout not in ("periodic", "twice"):
        raise CodetransferError(f"layout must be 'periodic' or 'twice', got {layout!r}")
    if split not in ("train", "heldout"):
        raise CodetransferError(f"split must be 'train' or 'heldout', got {split!r}")
    if not isinstance(n, int) or n < 0:
        raise CodetransferError(f"n must be a non-negative integer, got {n!r}")
    lexicon = repeat_lexicon() if lexicon is None else tuple(lexicon)
    if len(lexicon) < 2:
        raise CodetransferError(f"lexicon: expected at least 2 words, got {len(lexicon)}")
    made = j = 0
    while made < n:
        rng = random.Random(f"repeats|{REPEATS_VERSION}|{seed}|{j}")
        j += 1
        total = rng.randint(*REPEAT_WORDS)
        span = rng.randint(*REPEAT_SPAN)
        start = rng.randint(0, total - 2 * span)
        prefix = [rng.choice(lexicon) for _ in range(start)]
        x = [rng.choice(lexicon) for _ in range(span)]
        if layout == "twice":
            gap = rng.randint(0, total - start - 2 * span)
            middle = [rng.choice(lexicon) for _ in range(gap)]
            words = prefix + x + middle + x + [rng.choice(lexicon) for _ in range(total - start - 2 * span - gap)]
        else:
            words = prefix + [x[i % span] for i in range(total - start)]
        doc = " ".join(words)
        bucket = int(hashlib.sha1(doc.encode()).hexdigest(), 16) % HELDOUT_EVERY
        if (bucket == 0) != (split == "heldout"):
            continue
        made += 1
        if scrambled:
            rng.shuffle(words)
            doc = " ".join(words)
        yield doc
