"""Synthetic training documents: disjoint from evaluation, executable programs, splits, determinism."""

from __future__ import annotations

import re

import pytest

from codetransfer.errors import CodetransferError
from codetransfer.tasks import get_task
from codetransfer.tasks.corpus import synthetic_documents
from codetransfer.tasks.families import TRAIN_TEXT_MAX, WorldFamily
from codetransfer.tasks.render import POOLS, TEXT


@pytest.fixture(scope="module")
def docs() -> dict[tuple[str, str], list[str]]:
    return {
        (k, s): list(synthetic_documents(k, 150, seed=0, split=s))
        for k in ("narrative", "program")
        for s in ("train", "heldout")
    }


def test_documents_are_disjoint_from_evaluation_items(docs):
    corpus = "\n\n".join(d for ds in docs.values() for d in ds)
    words = set(re.findall(r"[A-Za-z]+", corpus.lower()))
    held_out = {w.lower() for pool in ("objects", "people", "units") for w in POOLS[pool]["eval"]}
    held_out |= {w + "s" for w in POOLS["units"]["eval"]}
    assert not words & held_out
    for sentence in POOLS["distractors"]["eval"]:
        assert sentence not in corpus
    for spec in TEXT.values():  # evaluation-only phrasings never occur in training narratives
        for variants in spec["ops"].values():
            for tpl in variants["eval"]:
                assert not _template_regex(tpl).search(corpus), tpl
    for name in [n for n in ("entity_tracking", "variable_binding", "counting", "possession", "code_state")]:
        for it in get_task(name).generate(40, seed=0):
            for x in (it, it.twin, it.counterfactual):
                assert x.prompt not in corpus
                for a, b in [v for k, v in x.spans.items() if re.fullmatch(r"e\d+", k)]:
                    if any(e.lower() in x.prompt[a:b].lower() for e in x.entities):
                        # no fact sentence with held-out entities ("ring = C" may end "string = C")
                        assert not re.search(r"(?<![A-Za-z_])" + re.escape(x.prompt[a:b]), corpus)


def test_program_documents_execute_and_their_asserts_are_checked(docs):
    for split in ("train", "heldout"):
        for d in docs[("program", split)]:
            exec(compile(d, "<doc>", "exec"), {})
    doc = docs[("program", "train")][0]
    last = doc.rstrip().splitlines()[-1]
    m = re.fullmatch(r"(assert .* == )(\S+)", last)
    assert m
    wrong = {"A": "B", "B": "A", "C": "D", "D": "C", "E": "A"}.get(m.group(2), None)
    if wrong is None:  # a digit or a person's name
        wrong = str((int(m.group(2)) + 1) % 10) if m.group(2).isdigit() else '"nobody"'
    with pytest.raises(AssertionError):
        exec(compile(doc[: doc.rstrip().rindex("\n") + 1] + m.group(1) + wrong, "<doc>", "exec"), {})


def test_train_and_heldout_never_share_a_document(docs):
    for kind in ("narrative", "program"):
        assert not set(docs[(kind, "train")]) & set(docs[(kind, "heldout")])
        assert len(set(docs[(kind, "train")])) == 150


def _template_regex(tpl: str, group: bool = False) -> re.Pattern:
    """A prose template as a regex (amounts are digits, other fields are words)."""

    def field(m):
        pat = r"\d+" if m.group(1) == "n" else r"[A-Za-z0-9]+"
        return f"({pat})" if group else pat

    return re.compile(re.sub(r"\\\{(\w+)\\\}", field, re.escape(tpl)))


def _chain_depth(ep: str) -> int:
    """Longest copy chain in a binding episode (both train phrasings put the copier first)."""
    src = {}
    for tpl in TEXT["binding"]["ops"]["copy"]["train"]:
        for dst, s in _template_regex(tpl, group=True).findall(ep):
            src[dst] = s

    def depth(k):
        return 1 + depth(src[k]) if k in src else 0

    return max((depth(k) for k in src), default=0)


def test_narratives_show_no_more_operations_than_allowed(docs):
    n_ops = 0
    for d in docs[("narrative", "train")]:
        for ep in d.split("\n\n"):
            for kind, spec in TEXT.items():
                if kind == "binding":
                    depth = _chain_depth(ep)
                    assert depth <= TRAIN_TEXT_MAX[kind], ep
                    n_ops += depth
                    continue
                pats = [_template_regex(t) for v in spec["ops"].values() for t in v["train"]]
                ops = sum(len(p.findall(ep)) for p in pats)
                assert ops <= TRAIN_TEXT_MAX[kind], ep
                n_ops += ops
    assert n_ops > 300
    # programs go deeper than narratives (the transfer question)
    deep = 0
    for d in docs[("program", "train")]:
        for ep in d.split("\n\n"):
            deep += sum(1 for line in ep.splitlines() if not line.startswith("assert")) > 3 + 3 + 2
    assert deep > 20


def test_narratives_restate_facts_in_the_query_form(docs):
    """The easiest level is copyable: an episode repeats stated facts verbatim (same sentence twice)."""
    repeated = 0
    for d in docs[("narrative", "train")]:
        for ep in d.split("\n\n"):
            sents = re.findall(r"[^.]+\.", ep)
            sents = [s.strip() for s in sents]
            repeated += len(sents) != len(set(sents))
    assert repeated > 0.5 * sum(len(d.split("\n\n")) for d in docs[("narrative", "train")])


def test_documents_are_deterministic_and_seed_dependent():
    a = list(synthetic_documents("narrative", 5, seed=3))
    assert a == list(synthetic_documents("narrative", 5, seed=3))
    assert a != list(synthetic_documents("narrative", 5, seed=4))
    assert a[:2] == list(synthetic_documents("narrative", 2, seed=3))


@pytest.mark.parametrize(
    "args, msg",
    [
        (("poem", 2, 0, "train"), "kind"),
        (("narrative", 2, 0, "eval"), "split"),
        (("program", -1, 0, "train"), "n must"),
    ],
)
def test_bad_corpus_arguments(args, msg):
    with pytest.raises(CodetransferError, match=msg):
        list(synthetic_documents(*args))


def test_world_families_cover_the_corpus_worlds():
    kinds = {get_task(n).kind for n in ("entity_tracking", "variable_binding", "counting", "possession")}
    assert kinds == set(TRAIN_TEXT_MAX)
    assert all(isinstance(get_task(n), WorldFamily) for n in ("entity_tracking", "code_state"))
