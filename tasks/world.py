"""A seeded simulator of a small world: the latent state behind every reasoning task.

The method
----------
Every reasoning family (entity tracking, variable binding, counting, possession) is one *world*: a
mapping from **keys** (objects, people, variables) to **values** (a box letter, a holder's name, a
digit, a count), changed by a sequence of :class:`Event` s. One event is one sentence of prose and
one statement of the Python rendering (``tasks/render.py``), so the two renderings of an event
sequence share their latent state event by event.

Operations (``Event.op``) and what they do to the state::

    put(key, value)        key appears with value           "A hat is put into box C."  / hat = C
    move(key, value)       key gets another value           "The pen is moved to box B." / pen = B
    give(key, value)       move, phrased as a hand-over     "Tom gives the ball to Ann." / ball = Ann
    remove(key)            key disappears                   "The cup is removed from box A." / del cup
    swap(key, key2)        two keys exchange values         "The pen and the cup switch boxes."
    assign(key, value)     a variable gets a constant       "Tom's number is 3."          / tom = 3
    copy(key, src)         key gets the value of src        "Ann's number is Tom's."      / ann = tom
    add(key, n) / sub(key, n)   count changes by n          "Tom buys 2 apples."          / tom += 2
    transfer(key, dst, n)  n units go from key to dst       "Tom gives 2 apples to Ann."

Queries (``World.where / contents / count_at / value``) answer "where is Y", "what is in X",
"how many things are in X", "what is the value of Y" from the state; the families use ``value``.

Provenance: every value carries the *source* of its last literal statement, ``(event index, role)``
("the B in sentence 3"). ``move``/``assign`` set it, ``copy`` and ``swap`` carry it along,
arithmetic clears it. Items use it for the ``answer_source`` span: where the answer was last stated.

Determinism: the simulator has no randomness; the samplers below take an explicit
``random.Random`` and draw from it only, so a seed fixes everything.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from codetransfer.errors import CodetransferError

OPS = ("put", "move", "give", "remove", "swap", "assign", "copy", "add", "sub", "transfer")
#: ops whose `value` argument is a literal value (box, holder, digit)
VALUE_OPS = ("put", "move", "give", "assign")

Source = tuple[int, str] | None

#: relative frequency of operations in location worlds (moves and swaps change what is asked about)
OP_WEIGHTS = {"move": 3, "swap": 2, "put": 1, "remove": 1}


@dataclass(frozen=True)
class Event:
    """One operation on the world (one sentence / one statement)."""

    op: str
    """One of OPS."""
    key: str
    """The key the event is about (object, person or variable name, lower case)."""
    value: str = ""
    """Literal new value (put/move/give/assign), the source key (copy), the partner key (swap) or the
    receiving key (transfer)."""
    n: int = 0
    """Amount for add/sub/transfer."""

    def fact(self) -> str:
        """Canonical one-line form, e.g. ``move(pen,B)``; two event lists differ in one fact iff
        exactly one of these strings differs."""
        args = (
            [self.key]
            + ([self.value] if self.value else [])
            + ([str(self.n)] if self.op in ("add", "sub", "transfer") else [])
        )
        return f"{self.op}({','.join(args)})"


@dataclass(frozen=True)
class State:
    """The world after some events: values and where each value was last literally stated."""

    values: dict[str, str] = field(default_factory=dict)
    """key -> current value as text (a box letter, a holder's name, a digit, a count)."""
    sources: dict[str, Source] = field(default_factory=dict)
    """key -> (event index, role) of the literal statement the value came from, or None."""

    def value(self, key: str) -> str:
        """The value of ``key`` ("where is Y", "what is Y bound to", "how many does Y have")."""
        if key not in self.values:
            raise CodetransferError(
                f"query key '{key}' is not in the world (keys: {sorted(self.values)}); ask about a key that exists"
            )
        return self.values[key]

    def where(self, key: str) -> str:
        """Alias of :meth:`value` for location worlds."""
        return self.value(key)

    def contents(self, holder: str) -> tuple[str, ...]:
        """Keys whose value is ``holder``, sorted ("what is in box B")."""
        return tuple(sorted(k for k, v in self.values.items() if v == holder))

    def count_at(self, holder: str) -> int:
        """How many keys have value ``holder`` ("how many things are in box B")."""
        return len(self.contents(holder))


def apply(state: State, event: Event, index: int) -> State:
    """The state after ``event`` (the ``index``-th event); raises CodetransferError if it is invalid."""
    v = dict(state.values)
    s = dict(state.sources)
    op, k = event.op, event.key

    def need(key: str) -> None:
        if key not in v:
            raise CodetransferError(
                f"event {index} '{event.fact()}' uses '{key}', which is not in the world; put it first"
            )

    if op not in OPS:
        raise CodetransferError(f"event {index}: op '{op}' is unknown; expected one of {OPS}")
    if op == "put" or op == "assign":
        if op == "put" and k in v:
            raise CodetransferError(f"event {index} '{event.fact()}': '{k}' is already in the world; use move")
        v[k], s[k] = event.value, (index, "value")
    elif op in ("move", "give"):
        need(k)
        if v[k] == event.value:
            raise CodetransferError(
                f"event {index} '{event.fact()}': '{k}' already has value {event.value}; move it elsewhere"
            )
        v[k], s[k] = event.value, (index, "value")
    elif op == "remove":
        need(k)
        del v[k]
        del s[k]
    elif op == "swap":
        need(k), need(event.value)
        if k == event.value:
            raise CodetransferError(f"event {index} '{event.fact()}': cannot swap '{k}' with itself")
        k2 = event.value
        v[k], v[k2] = v[k2], v[k]
        s[k], s[k2] = s[k2], s[k]
    elif op == "copy":
        need(event.value)
        v[k], s[k] = v[event.value], s[event.value]
    elif op in ("add", "sub"):
        need(k)
        new = int(v[k]) + (event.n if op == "add" else -event.n)
        if new < 0:
            raise CodetransferError(f"event {index} '{event.fact()}': count of '{k}' would be negative")
        v[k], s[k] = str(new), None
    elif op == "transfer":
        need(k), need(event.value)
        if int(v[k]) < event.n:
            raise CodetransferError(f"event {index} '{event.fact()}': '{k}' has only {v[k]}")
        v[k], v[event.value] = str(int(v[k]) - event.n), str(int(v[event.value]) + event.n)
        s[k], s[event.value] = None, None
    return State(v, s)


def simulate(events: list[Event] | tuple[Event, ...]) -> list[State]:
    """States after each event (``len(events)`` states), starting from the empty world."""
    states: list[State] = []
    state = State()
    for i, ev in enumerate(events):
        state = apply(state, ev, i)
        states.append(state)
    return states


def is_valid(events) -> bool:
    """Whether the event sequence runs without an invalid operation."""
    try:
        simulate(events)
    except CodetransferError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Samplers: one per world kind. Each returns (events, n_initial, query_key). The first
# ``n_initial`` events are the initial state; the rest are the `difficulty` operations.


def sample_locations(
    rng: random.Random,
    n_ops: int,
    keys: list[str],
    places: list[str],
    n_keys: int,
    ops: tuple[str, ...] = ("move", "swap", "put", "remove"),
    move_op: str = "move",
) -> tuple[list[Event], int, str]:
    """Objects in boxes (or with people). The query key (a random initial object, so not always the
    first one stated) is touched by at least one op when n_ops > 0.

    ``keys`` is the pool of object names (the first ``n_keys`` sampled ones start in the world, the
    rest can be ``put`` later); ``places`` the possible values. ``remove`` never removes the query
    key, so the question stays answerable.
    """
    pool = rng.sample(keys, len(keys))
    live = pool[:n_keys]
    spare = pool[n_keys:]
    query = rng.choice(live)
    events = [Event("put", k, rng.choice(places)) for k in live]
    n_init = len(events)
    touch_at = rng.randrange(n_ops) if n_ops else -1
    state = simulate(events)[-1]
    for step in range(n_ops):
        for _ in range(100):
            op = rng.choices(ops, weights=[OP_WEIGHTS.get(o, 1) for o in ops])[0]
            if step == touch_at:
                op = rng.choice([o for o in ops if o in ("move", "swap")])
            if op == "move":
                k = query if step == touch_at else rng.choice(live)
                ev = Event(move_op, k, rng.choice([p for p in places if p != state.values[k]]))
            elif op == "swap":
                others = [x for x in live if x != query] if step == touch_at else live
                k = query if step == touch_at else rng.choice(live)
                cands = [x for x in others if x != k and state.values[x] != state.values[k]]
                if not cands:
                    continue
                k2 = rng.choice(cands)
                if rng.random() < 0.5:  # the queried key is not always named first
                    k, k2 = k2, k
                ev = Event("swap", k, k2)
            elif op == "put":
                if not spare:
                    continue
                k = spare.pop(0)
                live.append(k)
                ev = Event("put", k, rng.choice(places))
            else:  # remove
                cands = [x for x in live if x != query]
                if len(live) <= 2 or not cands:
                    continue
                k = rng.choice(cands)
                live.remove(k)
                ev = Event("remove", k)
            break
        else:  # pragma: no cover - pools are large enough
            raise CodetransferError("could not sample an operation; enlarge the entity pools")
        state = apply(state, ev, len(events))
        events.append(ev)
    return events, n_init, query


def sample_binding(
    rng: random.Random, chain: int, names: list[str], digits: list[str], n_chains: int = 3
) -> tuple[list[Event], int, str]:
    """Variable-binding chains: ``n_chains`` roots get distinct constants, then ``copy`` hops.

    The query chain has exactly ``chain`` hops (0 = ask the root itself); each distractor chain has
    0..chain hops. The chains' events are interleaved at random, each chain in order.
    n_initial is the number of root assignments (they come first).
    """
    need = n_chains * (chain + 1)
    if need > len(names):
        raise CodetransferError(
            f"difficulty {chain} needs {need} names, the pool has {len(names)}; lower the difficulty"
        )
    vars_ = rng.sample(names, need)
    consts = rng.sample(digits, n_chains)
    chains = []
    for c in range(n_chains):
        length = chain if c == 0 else rng.randint(0, chain)
        chains.append(vars_[c * (chain + 1) : c * (chain + 1) + length + 1])
    events = [Event("assign", ch[0], consts[c]) for c, ch in enumerate(chains)]
    rng.shuffle(events)
    pending = [list(zip(ch[1:], ch[:-1])) for ch in chains]
    while any(pending):
        c = rng.choice([i for i, p in enumerate(pending) if p])
        dst, src = pending[c].pop(0)
        events.append(Event("copy", dst, src))
    return events, n_chains, chains[0][-1]


def sample_counts(
    rng: random.Random, n_ops: int, names: list[str], n_people: int = 2, max_count: int = 9
) -> tuple[list[Event], int, str]:
    """Small counts that change by add / sub / transfer; every count stays within 0..max_count.

    The query person is involved in at least one op when n_ops > 0.
    """
    people = rng.sample(names, n_people)
    query = rng.choice(people)
    events = [Event("assign", p, str(rng.randint(1, 6))) for p in people]
    state = simulate(events)[-1]
    touch_at = rng.randrange(n_ops) if n_ops else -1
    for step in range(n_ops):
        for _ in range(200):
            op = rng.choice(("add", "sub", "transfer"))
            k = query if step == touch_at else rng.choice(people)
            n = rng.randint(1, 3)
            if op == "add":
                ev = Event("add", k, "", n)
            elif op == "sub":
                ev = Event("sub", k, "", n)
            else:
                if step == touch_at and rng.random() < 0.5:
                    k, dst = rng.choice([p for p in people if p != query]), query
                else:
                    dst = rng.choice([p for p in people if p != k])
                ev = Event("transfer", k, dst, n)
            try:
                new = apply(state, ev, len(events))
            except CodetransferError:
                continue
            if max(int(x) for x in new.values.values()) > max_count:
                continue
            break
        else:  # pragma: no cover
            raise CodetransferError("could not sample a counting operation")
        state = new
        events.append(ev)
    return events, n_people, query
