"""The task item: the contract between task generators and every analysis.

An :class:`Item` is tokenizer-independent: positions are *character* spans into ``prompt``.
Analyses turn them into token positions with the run's tokenizer (offset mapping), after the
BOS token that every prompt is encoded with (see ``codetransfer.trained`` for the BOS policy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

CATEGORIES = ("reasoning", "knowledge", "code")
RENDERINGS = ("text", "code")


@dataclass(frozen=True)
class Label:
    """One probing label: after the prompt's character ``end``, property ``name`` has ``value``.

    Example: after the sentence that ends at character 57, ``holder(pen)`` is ``"box B"``.
    ``end`` is the exclusive end of the span whose last token carries the label.
    """

    end: int
    name: str
    value: str


@dataclass(frozen=True)
class Item:
    """One scored question.

    The model reads ``prompt`` (no trailing space) and each of ``candidates`` is scored by the summed
    log-probability of its tokens as the continuation; ``candidates[label]`` is the right answer.
    Candidates start with a space where a space belongs (" B"), so that the answer is the token the
    model would emit next.
    """

    task: str
    """Name of the task family in the registry."""
    version: str
    """Generator version; changes whenever the generator's output changes."""
    seed: int
    """Seed of the generator call that produced this item."""
    index: int
    """Position of the item in its generated list."""
    category: str
    """One of CATEGORIES: reasoning, knowledge or code."""
    rendering: str
    """One of RENDERINGS: 'text' (English prose) or 'code' (a Python program)."""
    prompt: str
    candidates: tuple[str, ...]
    label: int
    difficulty: int
    """Family-specific difficulty level, 0 = easiest (e.g. number of operations)."""
    template: str = ""
    """Template id (for splits by template)."""
    entities: tuple[str, ...] = ()
    """Entity names used (for splits by entity)."""
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Named character spans into ``prompt``: at least 'query' (the entity asked about) and, where it
    exists, 'answer_source' (where the answer was last stated); twins share the keys."""
    labels: tuple[Label, ...] = ()
    """Per-position probing labels."""
    counterfactual: Item | None = None
    """Partner differing in exactly one fact, with a different answer (same candidates, other label)."""
    twin: Item | None = None
    """The same world state rendered in the other format, with the same span keys."""
    facts: tuple[str, ...] = ()
    """Canonical facts behind the prompt, one per statement (e.g. ``move(pen,C)``); a counterfactual
    partner differs from its item in exactly one of them."""
    split: str = ""
    """'train' or 'eval': which entity pools and templates the generator drew from."""
    source: str = ""
    """Provenance a person can check (e.g. the dictionary gloss a knowledge item was mined from)."""

    @property
    def answer(self) -> str:
        return self.candidates[self.label]

    @property
    def chance(self) -> float:
        """Accuracy of a uniform guess among the candidates."""
        return 1.0 / len(self.candidates)
