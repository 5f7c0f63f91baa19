"""World simulator, renderings and task families: known answers, simulator == executed program,
aligned twins, one-fact counterfactuals, determinism, bad input refused."""

from __future__ import annotations

import random
import re
from dataclasses import replace

import pytest

from codetransfer.errors import CodetransferError
from codetransfer.tasks import Item, get_task, get_tasks, list_tasks, task_names
from codetransfer.tasks.families import (
    TRAIN_TEXT_MAX,
    WorldFamily,
    counterfactual,
    gcide_dir,
    mine_gcide,
    sample_scenario,
)
from codetransfer.tasks.render import (
    CODE_SETS,
    KINDS,
    POOLS,
    SPLITS,
    Scenario,
    execute_code_answer,
    program_value,
    render,
)
from codetransfer.tasks.world import Event, is_valid, simulate

WORLD_TASKS = [f.name for f in (get_task(n) for n in task_names()) if isinstance(f, WorldFamily)]
E = Event


# ----------------------------------------------------------------------------- simulator, known answers


def test_simulator_known_answers():
    ev = [
        E("put", "pen", "A"),
        E("put", "cup", "B"),
        E("move", "pen", "C"),
        E("swap", "pen", "cup"),
        E("put", "hat", "B"),
        E("remove", "cup"),
    ]
    st = simulate(ev)
    assert st[2].where("pen") == "C"
    assert st[3].where("pen") == "B" and st[3].where("cup") == "C"
    assert st[4].contents("B") == ("hat", "pen") and st[4].count_at("B") == 2
    assert "cup" not in st[5].values
    # provenance: after the swap the pen's value was stated by event 1 ("cup is in box B")
    assert st[3].sources["pen"] == (1, "value")
    counts = simulate(
        [
            E("assign", "tom", "3"),
            E("assign", "ann", "1"),
            E("transfer", "tom", "ann", 2),
            E("add", "ann", "", 4),
            E("sub", "tom", "", 1),
        ]
    )
    assert counts[-1].values == {"tom": "0", "ann": "7"}
    assert counts[-1].sources["ann"] is None and counts[0].sources["tom"] == (0, "value")
    binding = simulate(
        [E("assign", "tom", "3"), E("copy", "ann", "tom"), E("assign", "tom", "5"), E("copy", "bob", "ann")]
    )
    assert binding[-1].value("bob") == "3" and binding[-1].sources["bob"] == (0, "value")


@pytest.mark.parametrize(
    "events",
    [
        [E("move", "pen", "A")],  # not in the world
        [E("put", "pen", "A"), E("put", "pen", "B")],  # put twice
        [E("put", "pen", "A"), E("move", "pen", "A")],  # move to where it is
        [E("put", "pen", "A"), E("swap", "pen", "pen")],  # swap with itself
        [E("assign", "tom", "1"), E("sub", "tom", "", 2)],  # negative count
        [E("assign", "tom", "1"), E("assign", "ann", "0"), E("transfer", "tom", "ann", 3)],
        [E("fly", "pen", "A")],  # unknown op
    ],
)
def test_invalid_events_are_refused_in_one_line(events):
    assert not is_valid(events)
    with pytest.raises(CodetransferError) as e:
        simulate(events)
    assert "\n" not in str(e.value)


def test_query_about_missing_key_is_refused():
    with pytest.raises(CodetransferError, match="not in the world"):
        simulate([E("put", "pen", "A")])[-1].value("cup")


# ----------------------------------------------------------------------------- simulator == program


@pytest.mark.parametrize("kind", KINDS)
def test_simulator_equals_executed_program(kind):
    """Thousands of random sequences (all difficulties, both splits, all code styles): the executed
    program's value of the queried variable is the simulator's answer, and of all candidates only
    the right one passes the program's final assert."""
    rng = random.Random(f"parity-{kind}")
    checked = 0
    for t in range(800):
        split = SPLITS[t % 2]
        sc = sample_scenario(kind, rng, rng.randint(0, 6 if kind in ("boxes", "possession") else 5), split)
        for style in CODE_SETS[split]:
            code = render(replace(sc, code_style=style), "code").prompt
            assert " " + program_value(code) == sc.answer()
            checked += 1
        if t % 20 == 0:
            passes = [execute_code_answer(code, c) for c in sc.candidates]
            assert passes == [c == sc.answer() for c in sc.candidates]
    assert checked == 1600


def test_simulator_contents_and_counts_equal_program_state():
    """'what is in X' / 'how many in X' from the simulator equal the executed program's variables."""
    rng = random.Random(3)
    for _ in range(300):
        sc = sample_scenario("boxes", rng, rng.randint(0, 6), "eval")
        sc = replace(sc, code_style="plain")
        body = render(sc, "code").prompt.rpartition("\n")[0]
        ns: dict = {}
        exec(body, ns)
        state = sc.states()[-1]
        live = [k for k in sc.keys() if k in ns]
        assert set(live) == set(state.values)
        for box in "ABCDE":
            assert state.contents(box) == tuple(sorted(k for k in live if ns[k] == box))
            assert state.count_at(box) == sum(ns[k] == box for k in live)


# ----------------------------------------------------------------------------- items: structure


@pytest.fixture(scope="module")
def world_items() -> dict[str, list[Item]]:
    return {name: get_task(name).generate(42, seed=7) for name in WORLD_TASKS}


def _same_entity(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def test_twins_share_span_keys_and_spans_name_the_same_entity(world_items):
    for name, items in world_items.items():
        for it in items:
            tw = it.twin
            assert tw is not None and tw.rendering != it.rendering
            assert it.spans.keys() == tw.spans.keys(), name
            assert "query" in it.spans
            for key, (a, b) in it.spans.items():
                if re.fullmatch(r"e\d+", key):
                    continue  # whole statements differ in wording by design
                a2, b2 = tw.spans[key]
                assert _same_entity(it.prompt[a:b], tw.prompt[a2:b2]), (name, key, it.prompt[a:b], tw.prompt[a2:b2])
            q = it.prompt[slice(*it.spans["query"])]
            assert q.lower() in [e.lower() for e in it.entities]


def test_answer_source_span_holds_the_answer(world_items):
    n = 0
    for items in world_items.values():
        for it in items:
            for x in (it, it.twin):
                if "answer_source" in x.spans:
                    n += 1
                    assert " " + x.prompt[slice(*x.spans["answer_source"])] == x.answer
    assert n > 100


def test_labels_are_aligned_across_twins_and_match_the_state(world_items):
    for items in world_items.values():
        for it in items:
            tw = it.twin
            assert [(l.name, l.value) for l in it.labels] == [(l.name, l.value) for l in tw.labels]
            state = [l for l in it.labels if "@" not in l.name]
            ends = sorted({l.end for l in state})
            assert len(ends) == len(it.facts)  # one label position per statement
            text, code = (it, tw) if it.rendering == "text" else (tw, it)
            for x, end_char in ((text, "."), (code, "\n")):
                for l in x.labels:
                    if l.name.endswith("@query"):  # the query's last token: the end of the prompt
                        assert l.end == len(x.prompt) and l.value == x.answer.strip()
                    elif end_char == ".":
                        assert x.prompt[l.end - 1] == "."  # end of a sentence
                    else:
                        assert x.prompt[l.end] == "\n"  # end of a statement line
            assert sum(l.name.endswith("@query") for l in it.labels) == 1
    # a known label: after "... moved to box C." the pen is in C
    sc = Scenario(
        "boxes",
        (E("put", "pen", "A"), E("put", "cup", "B"), E("move", "pen", "C")),
        2,
        "pen",
        tuple(" " + b for b in "ABCDE"),
    )
    r = render(sc, "text")
    last = [l for l in r.labels if l.end == r.spans["e2"][1]]
    assert {(l.name, l.value) for l in last} == {("box(pen)", "C"), ("box(cup)", "B")}
    assert r.prompt.endswith("The pen") and r.spans["answer_source"] == r.spans["e2.value"]


def _nonlocal(r):
    return [(l.end, l.name, l.value) for l in r.labels if "@" in l.name]


def test_nonlocal_labels_hand_checked():
    """``@query``: the answer at the prompt's end; ``@op``: the new value after an operation that does not name it
    (a swap, a copy, arithmetic), at the end of that statement; a move names its box and gets none."""
    boxes = tuple(" " + b for b in "ABCDE")
    # after a move the queried object is in its new box
    sc = Scenario("boxes", (E("put", "pen", "A"), E("put", "cup", "B"), E("move", "pen", "C")), 2, "pen", boxes)
    for rendering in ("text", "code"):
        r = render(sc, rendering)
        assert _nonlocal(r) == [(len(r.prompt), "box@query", "C")]
    # a move then a swap: the pen goes to C, then takes the cup's box B (the cup gets C)
    events = (E("put", "pen", "A"), E("put", "cup", "B"), E("move", "pen", "C"), E("swap", "pen", "cup"))
    for query, answer in (("pen", "B"), ("cup", "C")):
        sc = Scenario("boxes", events, 2, query, boxes, split="train")
        for rendering in ("text", "code"):
            r = render(sc, rendering)
            assert _nonlocal(r) == [(r.spans["e3"][1], "box@op", "B"), (len(r.prompt), "box@query", answer)]
        assert render(sc, "text").prompt[: render(sc, "text").spans["e3"][1]].endswith("switch boxes.")
    # possession: a swap hands each object to the other's holder
    people = ("Ann", "Bob", "Cy")
    sc = Scenario(
        "possession",
        (E("put", "ball", "Ann"), E("put", "hat", "Bob"), E("swap", "ball", "hat"), E("give", "hat", "Cy")),
        2,
        "ball",
        tuple(" " + p for p in people),
        people=people,
    )
    r = render(sc, "text")
    assert _nonlocal(r) == [(r.spans["e2"][1], "holder@op", "Bob"), (len(r.prompt), "holder@query", "Bob")]
    # counting: the new count after arithmetic (named nowhere), both partners of a transfer
    sc = Scenario(
        "counting",
        (E("assign", "tom", "3"), E("assign", "ann", "1"), E("add", "tom", n=2), E("transfer", "tom", "ann", n=4)),
        2,
        "ann",
        tuple(" " + d for d in "0123456789"),
        unit="pear",
    )
    for rendering in ("text", "code"):
        r = render(sc, rendering)
        assert _nonlocal(r) == [
            (r.spans["e2"][1], "count@op", "5"),
            (r.spans["e3"][1], "count@op", "1"),
            (len(r.prompt), "count@query", "5"),
        ]
    # binding: a copy takes the source's value, stated two statements earlier
    sc = Scenario(
        "binding",
        (E("assign", "tom", "3"), E("assign", "ann", "7"), E("copy", "eve", "tom")),
        2,
        "eve",
        (" 3", " 7"),
    )
    r = render(sc, "code")
    assert _nonlocal(r) == [(r.spans["e2"][1], "value@op", "3"), (len(r.prompt), "value@query", "3")]


def test_counterfactual_differs_in_exactly_one_fact_and_changes_the_answer(world_items):
    for name, items in world_items.items():
        for it in items:
            for x in (it, it.twin):
                cf = x.counterfactual
                assert cf is not None and cf.rendering == x.rendering
                assert cf.candidates == x.candidates and cf.label != x.label
                assert len(cf.facts) == len(x.facts)
                assert sum(a != b for a, b in zip(x.facts, cf.facts)) == 1, (name, x.facts, cf.facts)
                assert cf.template == x.template
            assert it.counterfactual.twin.prompt == it.twin.counterfactual.prompt


def test_counterfactual_search_finds_only_real_one_fact_changes():
    sc = Scenario("boxes", (E("put", "pen", "A"), E("put", "cup", "B")), 2, "pen", tuple(" " + b for b in "ABCDE"))
    cf = counterfactual(sc, random.Random(0))
    assert cf.events[1] == sc.events[1] and cf.events[0].value != "A"
    # no single-fact change can alter the answer when the candidates allow only one value
    with pytest.raises(CodetransferError, match="counterfactual"):
        counterfactual(Scenario("boxes", sc.events, 2, "pen", (" A",)), random.Random(0))


def test_code_renderings_execute_and_only_the_answer_passes(world_items):
    for items in world_items.values():
        for it in items[:10]:
            code = it if it.rendering == "code" else it.twin
            assert [execute_code_answer(code.prompt, c) for c in code.candidates] == [
                i == code.label for i in range(len(code.candidates))
            ]


def test_prompts_end_before_the_answer_and_candidates_are_space_prefixed(world_items):
    for items in world_items.values():
        for it in items:
            for x in (it, it.twin, it.counterfactual):
                assert not x.prompt.endswith((" ", "\n"))
                assert all(c.startswith(" ") and c.strip() for c in x.candidates)
                assert len(set(x.candidates)) == len(x.candidates)
                assert x.difficulty == it.difficulty


def test_difficulty_is_the_number_of_operations():
    for name in ("entity_tracking", "counting", "possession", "code_state"):
        for d in (0, 3, 5):
            for it in get_task(name).generate(5, seed=1, difficulty=d):
                n_init = len({l.end for l in it.labels if "@" not in l.name}) - d  # initial facts + d operations
                assert it.difficulty == d and n_init >= 2
                assert all(f.startswith(("put(", "assign(")) for f in it.facts[:n_init])
    for d in (0, 2, 4):  # binding: number of copy hops from the query back to its constant
        for it in get_task("variable_binding").generate(5, seed=1, difficulty=d):
            facts = {f[5:-1].split(",")[0]: f[5:-1].split(",")[1] for f in it.facts if f.startswith("copy(")}
            q, hops = it.prompt[slice(*it.spans["query"])].lower(), 0
            while q in facts:
                q, hops = facts[q], hops + 1
            assert hops == d


# ----------------------------------------------------------------------------- splits, determinism


def test_train_and_eval_splits_use_disjoint_entities_and_templates():
    for name in WORLD_TASKS:
        tr = get_task(name).generate(30, seed=0, split="train")
        ev = get_task(name).generate(30, seed=0, split="eval")
        ents_tr = {e for it in tr for e in it.entities}
        ents_ev = {e for it in ev for e in it.entities}
        assert not ents_tr & ents_ev, name
        assert not {it.template for it in tr} & {it.template for it in ev}
        assert {it.split for it in tr} == {"train"} and {it.split for it in ev} == {"eval"}
    assert not set(POOLS["people"]["train"]) & set(POOLS["people"]["eval"])
    assert not set(POOLS["objects"]["train"]) & set(POOLS["objects"]["eval"])
    for kind, m in TRAIN_TEXT_MAX.items():  # evaluation asks for more steps than narratives show
        fam = next(get_task(n) for n in WORLD_TASKS if get_task(n).kind == kind)
        assert max(fam.difficulties) > m


def test_generators_are_deterministic_per_seed_and_differ_across_seeds():
    for name in task_names():
        f = get_task(name)
        a, b, c = f.generate(6, seed=11), f.generate(6, seed=11), f.generate(6, seed=12)
        assert a == b
        assert [x.prompt for x in a] != [x.prompt for x in c]
        assert f.generate(3, seed=11) == a[:3]  # item i does not depend on n
        assert len({x.prompt for x in a}) == 6


def test_entity_tracking_and_code_state_share_scenarios():
    et = get_task("entity_tracking").generate(5, seed=2)
    cs = get_task("code_state").generate(5, seed=2)
    assert [x.twin.prompt for x in et] == [x.prompt for x in cs]
    assert all(x.category == "code" and x.rendering == "code" for x in cs)


# ----------------------------------------------------------------------------- knowledge


def test_knowledge_cloze_items_are_checkable_against_the_gloss():
    items = get_task("knowledge_cloze").generate(30, seed=0)
    for it in items:
        word = it.prompt[slice(*it.spans["query"])]
        assert re.fullmatch(r"An? [a-z]+ is a kind of", it.prompt) and word in it.prompt
        cat = it.answer.strip()
        gloss = it.source.lower()
        assert gloss.startswith(f"gcide '{word}'") and re.search(rf"\b{cat}", gloss), it.source
        cf = it.counterfactual
        assert cf.candidates == it.candidates and cf.label != it.label
        assert len(it.candidates) == 4
    assert {it.difficulty for it in items} == {0, 1, 2}
    known = {r[0]: r[1] for r in mine_gcide(gcide_dir())}
    assert known["sparrow"] == "bird" and known["salmon"] == "fish" and known["baseball"] == "game"
    assert (
        "lapdog" in known and "housedog" not in known
    )  # "A dog trained to guard..." is not "a kind of dog" by the rule


# ----------------------------------------------------------------------------- registry, bad input


def test_unknown_family_gets_did_you_mean():
    with pytest.raises(CodetransferError, match="did you mean 'entity_tracking'") as e:
        get_task("entity_trackin")
    assert "\n" not in str(e.value)
    with pytest.raises(CodetransferError, match="unknown task 'nope'"):
        get_tasks("counting,nope")
    assert [f.name for f in get_tasks("counting, possession")] == ["counting", "possession"]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"difficulty": 99}, "difficulty 99"),
        ({"difficulty": -1}, "difficulty -1"),
        ({"split": "test"}, "split"),
        ({"n": -3}, "n must"),
    ],
)
def test_bad_generate_arguments_get_one_line_errors(kwargs, field):
    args = {"n": 2, "seed": 0, **kwargs}
    for name in ("entity_tracking", "knowledge_cloze"):
        with pytest.raises(CodetransferError, match=field) as e:
            get_task(name).generate(**args)
        assert "\n" not in str(e.value)


def test_list_tasks_describes_every_family():
    rows = list_tasks()
    assert [r["name"] for r in rows] == list(task_names())
    assert {"entity_tracking", "variable_binding", "counting", "knowledge_cloze", "code_state", "possession"} <= set(
        task_names()
    )
    for r in rows:
        assert r["category"] in ("reasoning", "knowledge", "code") and r["difficulties"] and r["version"]


def test_recency_shortcut_is_controlled():
    """'Copy the last mentioned value' must not solve the tasks (it would get ~0.7 at one operation)."""
    from codetransfer.tasks.families import last_mentioned

    sc = Scenario(
        "boxes",
        (E("put", "pen", "A"), E("put", "cup", "B"), E("move", "pen", "C"), E("remove", "cup")),
        2,
        "pen",
        tuple(" " + b for b in "ABCDE"),
    )
    assert last_mentioned(sc) == " B"  # "The cup is removed from box B." is the last mention
    # with operations only: at level 0 the queried key is uniform, and last-mentioned scores what
    # copying scores (test_no_positional_shortcut_beats_copying)
    for name, d in (("entity_tracking", 1), ("possession", 1), ("entity_tracking", 2)):
        items = get_task(name).generate(60, seed=5, difficulty=d)
        hits = 0
        for it in items:
            mentions = re.findall(
                r"(?:\bbox |\bThe [a-z]+ )([A-E])\b"
                if name == "entity_tracking"
                else "|".join(c.strip() for c in it.candidates),
                it.prompt[: it.prompt.rfind(".") + 1],
            )
            hits += " " + mentions[-1] == it.answer
        assert hits / len(items) < 0.45, (name, d, hits)


def _mentioned_in_order(it) -> list[int]:
    """Candidate indices in the order the prose before the query line mentions them (one per mention)."""
    body = it.prompt[: it.prompt.rfind(".") + 1]
    hits = []
    for i, c in enumerate(it.candidates):
        for m in re.finditer(rf"(?<!\w){re.escape(c.strip())}(?!\w)", body):
            hits.append((m.start(), i))
    return [i for _, i in sorted(hits)]


@pytest.mark.parametrize("name", ["entity_tracking", "variable_binding", "counting", "possession"])
def test_no_positional_shortcut_beats_copying(name):
    """Answering with the first or the last candidate the prose mentions must not beat copying a
    mentioned candidate at random (``copy_chance``), at any level. Version 4 forced the recency rate to
    1/len(candidates) even without operations, which made the first stated count the answer of 90% of
    counting items at difficulty 0 (two people, ten digit candidates)."""
    from codetransfer.analysis.evaluate import copy_chance

    fam = get_task(name)
    for d in fam.difficulties:
        items = fam.generate(120, seed=3, difficulty=d)
        first = last = copy = 0.0
        for it in items:
            order = _mentioned_in_order(it)
            first += bool(order) and order[0] == it.label
            last += bool(order) and order[-1] == it.label
            copy += copy_chance(it.prompt, it.candidates, it.label)
        first, last, copy = first / len(items), last / len(items), copy / len(items)
        assert first <= copy + 0.15 and last <= copy + 0.15, (name, d, round(first, 2), round(last, 2), round(copy, 2))
