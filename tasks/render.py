"""Two renderings of one event sequence: English prose and a Python program, with aligned spans.

The method
----------
A :class:`Scenario` is a world kind (``boxes``, ``possession``, ``binding``, ``counting``), its event
list (``tasks/world.py``), the query key, the candidate answers, and the presentation choices (which
template set, which code style, where distractor sentences go, which unit noun). ``render(scenario,
"text")`` and ``render(scenario, "code")`` turn it into a prompt whose last line stops right before
the answer::

    text:  The pen is in box B. The cup is in box A. The pen is moved to box C. The pen is in box   -> " C"
    code:  A, B, C, D, E = "ABCDE"
           pen = B
           cup = A
           pen = C
           assert pen ==                                                                           -> " C"

Both renderings use the same candidates (" A" ... " E", " Tom", " 3"), so the answer token is the same
and the code prompt plus the right candidate executes without an AssertionError, while every wrong
candidate fails the assert (that is how the tests check simulator = program).

Templates are strings with ``{role}`` fields. Roles that both renderings show get named spans:
``e{i}`` (the whole statement of event i), ``e{i}.key``, ``e{i}.value``, ``e{i}.key2``, ``e{i}.src``,
``e{i}.dst``, ``e{i}.n`` (the mention of that argument), ``query`` (the queried key in the last line)
and ``answer_source`` (the literal statement of the answer value the query's value was copied from,
when one exists: a copy chain or a swap carries it along, arithmetic does not). Roles only prose shows
(``old``: the previous holder in "Tom gives the ball to Ann", the box in "removed from box A") get no
span. Distractor sentences (prose only) carry no spans and no labels. Probing labels: after the
statement of each event, for each key of the scenario, ``{fn}({key})`` = its value or ``none``
(fn = box / holder / value / count). Twins therefore share span keys and label sequences.

Labels of *non-local* world state, whose value the tokens around their position do not give away:

* ``{fn}@query`` at the prompt's last token (the end of the query line): the queried key's value after
  every operation, i.e. the answer. The query line names the key, not its value, which was stated
  (and then changed) earlier.
* ``{fn}@op`` after the statement of an operation that changes its key's value *without naming the
  new value*: a swap (the first-named key takes the partner's value), a copy (the source's value) and
  arithmetic (add, sub, transfer: the new count). A move, put or give names its new value in its own
  statement (local), a removal says ``none`` with its verb: they get no ``@op`` label.

The per-statement ``{fn}({key})`` labels mix both kinds (the key a statement names and sets is local
there, the others are not); probe them by name.

Honest splits: every world kind has *train* and *eval* template variants for each operation and
distinct code styles per split; the canonical state sentence ("The pen is in box B.") and the query
line are shared by both splits, because the easiest level must be solvable by copying a stated fact.
Entity pools (objects, people, units) are disjoint between splits (``POOLS``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from codetransfer.errors import CodetransferError
from codetransfer.tasks.items import Label
from codetransfer.tasks.world import Event, State, simulate

KINDS = ("boxes", "possession", "binding", "counting")
SPLITS = ("train", "eval")
BOX_LETTERS = ("A", "B", "C", "D", "E")
DIGITS = tuple("0123456789")

_TRAIN_OBJECTS = """
arrow axe badge barrel basket bat bean bed belt bench blade blanket board boat bolt bone bottle bow bowl
brick bucket bud bulb button cable cage can candle cap car cart chain chair chalk cheese chip cloak cloth
coat cone cord cork crown cube curtain dart desk dial dice dish disk dress fan feather fence file flag flask
flute foil fruit glass glove glue gown grape hammer harp helmet hook horn hose jar jug kettle knife knot
ladder lace leaf lens letter lid lock log mask mat medal mirror mop mug nail needle net note oar pad pail
paint pan paper pearl pebble pepper piano pillow pin pipe plate plug pot pouch pump purse quilt rack radio
rake rod roll rug sack saddle scarf screw seed shawl sheet shell shield shirt sign skirt sled slipper soap
spade spoon spring stamp stick stone stool straw string sword table tag tape tent
"""
_TRAIN_PEOPLE = """
Aaron Abby Alan Alice Andy Angela Arthur Barbara Beth Betty Bill Brian Bruce Carol Chris Clara Colin Craig
Dave David Dean Diana Donna Doug Edith Edward Ella Ellen Eric Frank Gary Gina Grace Greg Hank Harry Helen
Henry Holly Hugh Irene Isaac Jake James Jean Jeff Jenny Jill Joan Joel Jonas Josh Joy Judy Julia Karen Karl
Keith Kevin Larry Laura Leah Lena Lewis Linda Lisa Lois Louis Luke Lynn Marc Maria Marie Martin Matt Maya
Mona Nancy Nathan Neil Nora Oliver Olga Oscar Owen Peter Phil Rachel Ralph Rita Rob Robin Ron Ross Ruby Russ
Ryan Sally Sean Seth Simon Sonia Steve Susan Tara Terry Tess Tina Todd Tony Vera Victor Vince Wade Walt
Wendy Will Yara Yuri Zack Omar Hugo Igor Ivan Jose Juan Kurt Lars Lee Milo Neva Otto Rex Rudy Saul Vic Wes
Abe Al Ava Bea Cy Di Dora Ed Eli Flo Gil Hal Ike
"""

#: Entity pools. Train and eval are disjoint. The training pools are large (150 objects, 150 people):
#: with a dozen names a small model learns one lookup per name, which does not carry over to held-out
#: names; with 150 it has to learn a lookup by content (docs/learnability.md).
POOLS: dict[str, dict[str, tuple[str, ...]]] = {
    "objects": {
        "train": tuple(_TRAIN_OBJECTS.split()),
        "eval": ("coin", "ring", "map", "doll", "fork", "sock", "drum", "kite", "vase", "comb", "brush", "clock"),
    },
    "people": {
        "train": tuple(_TRAIN_PEOPLE.split()),
        "eval": (
            "Max",
            "Eve",
            "Dan",
            "Amy",
            "Ben",
            "Kim",
            "Joe",
            "Sue",
            "Tim",
            "Meg",
            "Ted",
            "Liz",
            "Jim",
            "Anna",
            "Leo",
            "Ivy",
            "Ray",
            "Zoe",
            "Roy",
            "Mia",
            "Ian",
            "Ada",
            "Gus",
            "Pam",
        ),
    },
    "units": {
        "train": ("apple", "egg", "plum", "cake"),
        "eval": ("pear", "nut", "fig", "bun"),
    },
    "distractors": {
        "train": (
            "It is a quiet morning.",
            "The window is open.",
            "A dog barks outside.",
            "The room smells of tea.",
            "Rain taps on the roof.",
        ),
        "eval": (
            "The sun is shining.",
            "A bird sings nearby.",
            "The clock ticks softly.",
            "Somebody hums a tune.",
            "The door creaks.",
        ),
    },
}

#: Per world kind: the canonical state sentence, the query line and per-op prose variants per split.
#: State sentences put the value right after the key ("The pen B.", "Joe 4 pears.") and the query ends on
#: the key: the key->value layout that a two-layer model learns to look up within the tiny grid's budget.
#: The longer prose ("The pen is in box B.") needs the key 3-4 tokens before the value, which no tiny model
#: measured learned in 24M tokens (docs/learnability.md); operations stay in prose.
#: Template set k of a split uses variant k % len(variants) of every op.
TEXT: dict[str, dict] = {
    "boxes": {
        "state": "The {key} {value}.",
        "query": "The {key}",
        "fn": "box",
        "ops": {
            "move": {
                "train": ("The {key} is moved to box {value}.", "Someone moves the {key} to box {value}."),
                "eval": ("The {key} is transferred to box {value}.", "The {key} goes into box {value}."),
            },
            "swap": {
                "train": ("The {key} and the {key2} switch boxes.", "The {key} and the {key2} are swapped."),
                "eval": ("The {key} and the {key2} trade places.", "The {key} changes places with the {key2}."),
            },
            "put": {
                "train": ("A {key} is put into box {value}.", "Someone puts a {key} in box {value}."),
                "eval": ("A {key} is added to box {value}.", "Someone drops a {key} into box {value}."),
            },
            "remove": {
                "train": ("The {key} is removed from box {old}.", "Someone takes the {key} out of box {old}."),
                "eval": ("The {key} is taken away from box {old}.", "The {key} is lifted out of box {old}."),
            },
        },
    },
    "possession": {
        "state": "The {key} {value}.",
        "query": "The {key}",
        "fn": "holder",
        "ops": {
            "give": {
                "train": ("{old} gives the {key} to {value}.", "{old} hands the {key} to {value}."),
                "eval": ("{old} passes the {key} to {value}.", "{value} gets the {key} from {old}."),
            },
            "swap": {
                "train": (
                    "{old} and {old2} trade the {key} and the {key2}.",
                    "{old} swaps the {key} for the {key2} of {old2}.",
                ),
                "eval": (
                    "{old} and {old2} exchange the {key} and the {key2}.",
                    "{old} gives the {key} to {old2} for the {key2}.",
                ),
            },
            "put": {
                "train": ("{value} finds a {key}.", "{value} gets a new {key}."),
                "eval": ("{value} buys a {key}.", "{value} picks up a {key}."),
            },
            "remove": {
                "train": ("{old} loses the {key}.", "{old} throws the {key} away."),
                "eval": ("The {key} of {old} breaks.", "{old} sells the {key}."),
            },
        },
    },
    "binding": {
        "state": "{key} {value}.",
        "query": "{key}",
        "fn": "value",
        "ops": {
            "copy": {
                "train": ("{key}'s number is the same as {src}'s.", "{key} copies the number of {src}."),
                "eval": ("{key} takes {src}'s number.", "{key} picks the number that {src} has."),
            },
        },
    },
    "counting": {
        "state": "{key} {value} {unit_v}.",
        "query": "{key}",
        "fn": "count",
        "ops": {
            "add": {
                "train": ("{key} buys {n} more {unit_n}.", "{key} finds {n} more {unit_n}."),
                "eval": ("{key} gets {n} more {unit_n}.", "{key} picks up {n} more {unit_n}."),
            },
            "sub": {
                "train": ("{key} eats {n} {unit_n}.", "{key} drops {n} {unit_n}."),
                "eval": ("{key} loses {n} {unit_n}.", "{key} throws away {n} {unit_n}."),
            },
            "transfer": {
                "train": ("{key} gives {n} {unit_n} to {dst}.", "{key} hands {n} {unit_n} to {dst}."),
                "eval": ("{key} passes {n} {unit_n} to {dst}.", "{dst} gets {n} {unit_n} from {key}."),
            },
        },
    },
}
N_TEXT_SETS = 2

#: Code styles: how a key becomes an lvalue (NAME is replaced), the prelude, swap/add/transfer forms.
CODE_STYLES: dict[str, dict[str, str]] = {
    "plain": {"lvalue": "NAME", "prelude": "", "swap": "tuple", "arith": "aug"},
    "dict": {"lvalue": 'w["NAME"]', "prelude": "w = {}", "swap": "tuple", "arith": "aug"},
    "attr": {"lvalue": "s.NAME", "prelude": "class S:\n    pass\ns = S()", "swap": "temp", "arith": "expanded"},
    "plain_tmp": {"lvalue": "NAME", "prelude": "", "swap": "temp", "arith": "expanded"},
}
CODE_SETS = {"train": ("plain", "dict"), "eval": ("attr", "plain_tmp")}

CODE_OPS = {
    "set": "$key = {value}",
    "remove": "del $key",
    "copy": "$key = $src",
    "swap/tuple": "$key, $key2 = $key2, $key",
    "swap/temp": "tmp = $key; $key = $key2; $key2 = tmp",
    "add/aug": "$key += {n}",
    "sub/aug": "$key -= {n}",
    "add/expanded": "$key = $key + {n}",
    "sub/expanded": "$key = $key - {n}",
    "transfer/aug": "$key, $dst = $key - {n}, $dst + {n}",
    "transfer/expanded": "$key = $key - {n}; $dst = $dst + {n}",
    "query": "assert $key ==",
}
#: operations whose statement changes its key's value without naming the new value (they get a ``{fn}@op`` label)
UNNAMED_OPS = ("swap", "copy", "add", "sub", "transfer")
#: roles that both renderings show (they get spans); others (old, old2, unit_*) are prose-only
SHARED_ROLES = ("key", "value", "key2", "src", "dst", "n")


@dataclass(frozen=True)
class Scenario:
    """A latent world plus the presentation choices; rendering it is deterministic."""

    kind: str
    """World kind, one of KINDS."""
    events: tuple[Event, ...]
    """All events; the first ``n_init`` state the initial world."""
    n_init: int
    """Number of initial-state events (difficulty = len(events) - n_init, except binding)."""
    query: str
    """Key asked about in the last line."""
    candidates: tuple[str, ...]
    """Answer strings with their leading space (" B")."""
    split: str = "eval"
    """'train' or 'eval': which template variants and code styles are used."""
    text_set: int = 0
    """Index of the prose template set within the split."""
    code_style: str = "plain"
    """One of CODE_SETS[split]."""
    distractors: tuple[tuple[int, str], ...] = ()
    """(event index, sentence): prose distractor placed before that event (index len(events) = before the query)."""
    unit: str = ""
    """Counting only: the unit noun (singular)."""
    people: tuple[str, ...] = field(default=())
    """Possession only: the holders (code prelude defines them as string constants)."""

    def states(self) -> list[State]:
        return simulate(self.events)

    def answer(self) -> str:
        """The simulator's answer, with the leading space of a candidate."""
        return " " + self.states()[-1].value(self.query)

    @property
    def label(self) -> int:
        ans = self.answer()
        if ans not in self.candidates:
            raise CodetransferError(
                f"answer {ans!r} is not among the candidates {self.candidates}; widen the candidate set"
            )
        return self.candidates.index(ans)

    def keys(self) -> tuple[str, ...]:
        """Every key that occurs in the scenario, in order of first appearance."""
        out: list[str] = []
        for e in self.events:
            for k in (e.key, e.value if e.op in ("swap", "copy", "transfer") else None):
                if k and k not in out:
                    out.append(k)
        return tuple(out)


@dataclass(frozen=True)
class Rendered:
    """One rendering of a scenario."""

    prompt: str
    spans: dict[str, tuple[int, int]]
    labels: tuple[Label, ...]
    template: str


_FIELD = re.compile(r"\{(\w+)\}")


def fill(template: str, fields: dict[str, str]) -> tuple[str, dict[str, tuple[int, int]]]:
    """Fill ``{role}`` fields; return the text and each role's first (start, end) span."""
    out: list[str] = []
    spans: dict[str, tuple[int, int]] = {}
    pos = 0
    last = 0
    for m in _FIELD.finditer(template):
        lit = template[last : m.start()]
        out.append(lit)
        pos += len(lit)
        role = m.group(1)
        if role not in fields:
            raise CodetransferError(f"template {template!r} needs field '{role}'; fields given: {sorted(fields)}")
        val = fields[role]
        spans.setdefault(role, (pos, pos + len(val)))
        out.append(val)
        pos += len(val)
        last = m.end()
    out.append(template[last:])
    return "".join(out), spans


def _display(kind: str, key: str) -> str:
    """How a key is written in prose (people are capitalised)."""
    return key.capitalize() if kind in ("binding", "counting") else key


def _plural(unit: str, n: int) -> str:
    return unit if n == 1 else unit + "s"


def _fields(sc: Scenario, i: int, ev: Event, before: State | None, rendering: str) -> dict[str, str]:
    disp = (lambda k: _display(sc.kind, k)) if rendering == "text" else (lambda k: k)
    f = {"key": disp(ev.key), "n": str(ev.n)}
    if ev.op in ("swap", "copy"):
        f["key2" if ev.op == "swap" else "src"] = disp(ev.value)
    elif ev.op == "transfer":
        f["dst"] = disp(ev.value)
    else:
        f["value"] = ev.value
    if before is not None and ev.key in before.values:
        f["old"] = before.values[ev.key]
    if ev.op == "swap" and before is not None:
        f["old2"] = before.values[ev.value]
    if sc.unit:
        f["unit_n"] = _plural(sc.unit, ev.n)
        if ev.value.isdigit():
            f["unit_v"] = _plural(sc.unit, int(ev.value))
    return f


def _text_statement(sc: Scenario, i: int, ev: Event) -> str:
    spec = TEXT[sc.kind]
    if i < sc.n_init or ev.op == "assign":
        return spec["state"]
    variants = spec["ops"].get(ev.op)
    if variants is None:
        raise CodetransferError(f"world '{sc.kind}' has no prose template for op '{ev.op}'")
    v = variants[sc.split]
    return v[sc.text_set % len(v)]


def _code_statement(sc: Scenario, ev: Event) -> str:
    style = CODE_STYLES[sc.code_style]
    if ev.op in ("put", "move", "give", "assign"):
        t = CODE_OPS["set"]
    elif ev.op in ("remove", "copy"):
        t = CODE_OPS[ev.op]
    elif ev.op == "swap":
        t = CODE_OPS["swap/" + style["swap"]]
    else:
        t = CODE_OPS[f"{ev.op}/{style['arith']}"]
    return _lvalues(t, style)


def _lvalues(template: str, style: dict[str, str]) -> str:
    return re.sub(r"\$(\w+)", lambda m: style["lvalue"].replace("NAME", "{" + m.group(1) + "}"), template)


def _prelude(sc: Scenario) -> list[str]:
    lines = []
    if sc.kind == "boxes":
        lines.append(f'{", ".join(BOX_LETTERS)} = "{"".join(BOX_LETTERS)}"')
    if sc.kind == "possession":
        lines.append(f"{', '.join(sc.people)} = {', '.join(repr(p).replace(chr(39), chr(34)) for p in sc.people)}")
    pre = CODE_STYLES[sc.code_style]["prelude"]
    if pre:
        lines.append(pre)
    return lines


def prelude(sc: Scenario) -> list[str]:
    """Lines a code rendering starts with (box / holder constants, the style's container)."""
    return _prelude(sc)


def statement(sc: Scenario, i: int, states: list[State], rendering: str) -> str:
    """The sentence (text) or statement (code) of event ``i``; ``states = sc.states()``."""
    ev = sc.events[i]
    before = states[i - 1] if i else State()
    tpl = _text_statement(sc, i, ev) if rendering == "text" else _code_statement(sc, ev)
    return fill(tpl, _fields(sc, i, ev, before, rendering))[0]


def restatement(sc: Scenario, key: str, value: str, rendering: str) -> str:
    """A statement of a key's current value: the canonical state sentence, or ``assert key == value``."""
    if rendering == "text":
        f = {"key": _display(sc.kind, key), "value": value}
        if sc.unit:
            f["unit_v"] = _plural(sc.unit, int(value))
        return fill(TEXT[sc.kind]["state"], f)[0]
    return fill(_lvalues(CODE_OPS["query"], CODE_STYLES[sc.code_style]), {"key": key})[0] + " " + value


def render(sc: Scenario, rendering: str) -> Rendered:
    """Render a scenario as prose (``"text"``) or as a Python program (``"code"``)."""
    if rendering not in ("text", "code"):
        raise CodetransferError(f"rendering must be 'text' or 'code', got {rendering!r}")
    if sc.split not in SPLITS:
        raise CodetransferError(f"split must be one of {SPLITS}, got {sc.split!r}")
    states = sc.states()
    keys = sc.keys()
    fn = TEXT[sc.kind]["fn"]
    sep = " " if rendering == "text" else "\n"
    parts: list[str] = []
    pos = 0
    spans: dict[str, tuple[int, int]] = {}
    labels: list[Label] = []

    def emit(s: str) -> int:
        nonlocal pos
        if parts:
            parts.append(sep)
            pos += len(sep)
        start = pos
        parts.append(s)
        pos += len(s)
        return start

    if rendering == "code":
        for line in _prelude(sc):
            emit(line)
    distract = dict(sc.distractors) if rendering == "text" else {}
    for i, ev in enumerate(sc.events):
        if i in distract:
            emit(distract[i])
        before = states[i - 1] if i else State()
        f = _fields(sc, i, ev, before, rendering)
        tpl = _text_statement(sc, i, ev) if rendering == "text" else _code_statement(sc, ev)
        s, sp = fill(tpl, f)
        start = emit(s)
        spans[f"e{i}"] = (start, start + len(s))
        for role, (a, b) in sp.items():
            if role in SHARED_ROLES:
                spans[f"e{i}.{role}"] = (start + a, start + b)
        for k in keys:
            labels.append(Label(start + len(s), f"{fn}({k})", states[i].values.get(k, "none")))
        if i >= sc.n_init and ev.op in UNNAMED_OPS:
            labels.append(Label(start + len(s), f"{fn}@op", states[i].values[ev.key]))
    if len(sc.events) in distract:
        emit(distract[len(sc.events)])
    if rendering == "text":
        q = TEXT[sc.kind]["query"]
        qf = {"key": _display(sc.kind, sc.query)}
    else:
        q = _lvalues(CODE_OPS["query"], CODE_STYLES[sc.code_style])
        qf = {"key": sc.query}
    s, sp = fill(q, qf)
    start = emit(s)
    spans["query"] = (start + sp["key"][0], start + sp["key"][1])
    labels.append(Label(start + len(s), f"{fn}@query", states[-1].values[sc.query]))
    src = states[-1].sources.get(sc.query)
    if src is not None:
        spans["answer_source"] = spans[f"e{src[0]}.{src[1]}"]
    template = (
        f"{sc.split}/{sc.kind}/text{sc.text_set}" if rendering == "text" else f"{sc.split}/{sc.kind}/{sc.code_style}"
    )
    return Rendered("".join(parts), spans, tuple(labels), template)


def execute_code_answer(prompt: str, candidate: str) -> bool:
    """Run ``prompt + candidate`` (a code rendering) in a fresh namespace; True iff the assert holds.

    Only for programs this module generated (tests and the generator's self-check).
    """
    try:
        exec(compile(prompt + candidate, "<codetransfer-task>", "exec"), {"__builtins__": __builtins__})
    except AssertionError:
        return False
    return True


def program_value(prompt: str) -> str:
    """Execute a code rendering up to its query line and evaluate the queried expression."""
    body, _, last = prompt.rpartition("\n")
    if not last.startswith("assert ") or not last.endswith(" =="):
        raise CodetransferError(f"last line of a code prompt must be 'assert EXPR ==', got {last!r}")
    ns: dict = {}
    exec(compile(body, "<codetransfer-task>", "exec"), ns)
    return str(eval(last[len("assert ") : -len(" ==")], ns))
