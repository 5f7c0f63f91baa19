"""The main job: train a grid, evaluate, probe, patch, analyse attention, write the report.

``run_job(grid, out)`` runs the stages in order; ``run_job(None, out, models=FILE)`` runs the analysis stages
and the report over the checkpoints of a model set (docs/models.md) instead, training nothing. The work is cut into *units* — one training run,
one run's evaluation / probing sweep / patching sweeps / head scores, one cross-model pair — and each
unit is skipped when ``out/units/<unit>.json`` records that it finished with the
same *key*: a hash of the job settings and of the recipes of the runs it reads. Killing the job and
running it again finishes it without redoing finished units; changing one recipe in the grid
retrains that run and redoes the units that read it; the grid-wide tables (the evaluation's
per-recipe rows and relative-change summary, the merged tables) are rebuilt from the units' tables.
Units write their tables atomically, and the merged tables are rebuilt from the unit tables, so a
re-run after a kill gives identical tables.

Each stage calls the library functions the ``codetransfer`` verbs call (:mod:`codetransfer.analysis.grid`,
:mod:`codetransfer.probes.grid`) with the settings of :class:`JobSettings` and the fixed choices below
(:data:`UNIT_N_BOOT` ...). Each stage prints one summary line with its time; the analyses print their own
progress. The stages, units, keys and files are described in docs/design.md.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import sys
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from codetransfer import artifacts
from codetransfer.analysis.grid import (
    DEFAULT_BASELINE,
    PATCHING_OVER_TRAINING_FILE,
    PatchSettings,
    attention_grid,
    comparison_table,
    eval_tables,
    evaluate_grid,
    hardest_fitting_level,
    items_up_to,
    patch_checkpoints,
    patch_grid,
    patch_sites,
)
from codetransfer.analysis.compare import gap_target, pooled_gap
from codetransfer.analysis.learning import learning_table_from_scores
from codetransfer.errors import CodetransferError, did_you_mean
from codetransfer.probes.decodability import decodability_table
from codetransfer.probes.grid import probe_grid
from codetransfer.probes.sweep import NONLOCAL_LABELS, check_label_patterns, label_matches
from codetransfer.report import write_report
from codetransfer.trained import find_runs, load_grid, train_grid
from codetransfer.trained.parallel import stop_pool, worker_init
from codetransfer.trained.runs import run_checkpoints
from codetransfer.trained.train import run_threads
from codetransfer.trained.checks import check_number, read_table
from codetransfer.tasks import get_task, task_names

GRID_N_BOOT = 2000
"""Bootstrap resamples of the grid-wide evaluation tables (``results/eval.parquet``, ``summary.csv``,
``learning.parquet``)."""
UNIT_N_BOOT = 200
"""Bootstrap resamples of a per-run evaluation unit's own tables (``results/units/eval-<run>/``); the
grid-wide tables are recomputed from the units' per-item scores with :data:`GRID_N_BOOT`."""
HELDOUT_WINDOWS = 32
"""Context windows per held-out source in each run's held-out loss."""
PROBE_SPLIT_SEEDS = (0,)
"""Split seeds of the probing sweep (one held-out split of entities per probe)."""
CIRCUIT_ITEMS = 48
"""Items of the circuit stage (the first attention task, drawn like the evaluation's items)."""
CIRCUIT_HEADS = 2
"""Lookup heads per run that the circuit stage ablates (and as many control heads)."""
CIRCUIT_BY = "retrieval"
"""How the circuit stage chooses each run's lookup heads (:data:`codetransfer.analysis.circuit.CHOICES`)."""

_LIST_FIELDS = (
    "probe_tasks",
    "probe_sites",
    "probe_labels",
    "patch_sites",
    "patch_checkpoint_sites",
    "attention_tasks",
)


def _as_names(value, name: str) -> tuple[str, ...]:
    """A tuple of names from a tuple/list of strings or one comma-separated string."""
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(",") if t.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise CodetransferError(
        f"JobSettings.{name}: expected a list of strings (or one comma-separated string), got {value!r}"
    )


@dataclass(frozen=True)
class JobSettings:
    """How much analysis the main job does per run (the tiny demo uses the defaults).

    List fields take a tuple or list of names, or (as older settings files wrote them) one
    comma-separated string: ``probe_sites = ["resid_post", "mlp_out"]`` or ``"resid_post,mlp_out"``.
    """

    baseline: str = "text-only"
    """Recipe every other recipe is compared with (relative change, cross-model patching)."""
    aim: str = "gap"
    """What the patch, probe and attention stages look at. ``"gap"``: the reasoning task and level of the
    seed-paired comparison with a distinguishable gap (the smallest Holm p; :func:`aim`), so that the
    instruments explain a difference that exists; where no comparison has one, the fixed choice below, and the
    report says there is no gap to explain. ``"fixed"``: always ``patch_task`` at ``patch_difficulty``,
    ``probe_tasks`` and ``attention_tasks``."""
    eval_items: int = 600
    """Items per task family for evaluation, spread evenly over its levels up to ``eval_max_difficulty`` (300
    at each of the two easiest levels: a 95% interval of about +-0.05 per model)."""
    eval_max_difficulty: int = 1
    """Hardest level evaluated (levels with operations before the query stay at chance in the tiny grid);
    above every family's hardest level (e.g. 99): every level."""
    curve_items: int = 60
    """Items per task family for the learning curves (runs that kept checkpoints: grid train.snapshot_every > 0)."""
    curve_max_difficulty: int = 0
    """Hardest difficulty of the learning curves' items (0: the easiest level only)."""
    probe_tasks: tuple[str, ...] = ("entity_tracking",)
    """Task families to probe."""
    probe_sites: tuple[str, ...] = ("resid_post",)
    """Probe sites (resid_pre, resid_mid, resid_post, attn_out, mlp_out, head; all layers, or kind.layer)."""
    probe_labels: tuple[str, ...] = NONLOCAL_LABELS
    """Label-name patterns probed (shell-style, ``probes.sweep.item_rows``). The default is the non-local world
    state, which the tokens around the label do not give away: ``*@query`` (at the query's last token, the queried
    key's value after every operation) and ``*@op`` (after an operation statement that does not name its new
    value, e.g. a swap, the operated key's value). ``["box(*)"]``: the per-statement box of every object (local
    where a statement names it); ``["*"]``: every label."""
    probe_items: int = 288
    """Items per probed task (144 at each of the demo's two levels: the non-local labels are one row per item, or
    per operation, so 288 items cost about half of what 96 items cost with every per-statement label)."""
    probe_max_difficulty: int = 3
    """Hardest difficulty probed (lowered automatically to what fits the models' context)."""
    patch_task: str = "entity_tracking"
    """Task family whose counterfactual pairs are patched."""
    patch_sites: tuple[str, ...] = ("resid_pre", "attn_out", "mlp_out", "head_out")
    """Patching sites (resid_pre, resid_mid, attn_out, mlp_out, head_out, q, k, v; aliases attn, mlp, head)."""
    patch_items: int = 48
    """Clean/counterfactual pairs per patching sweep."""
    patch_difficulty: int = 0
    """Difficulty of the patched items (the level the models can do)."""
    patch_checkpoint_sites: tuple[str, ...] = ()
    """Sites patched again at every saved checkpoint of the runs that kept checkpoints (names as
    ``patch_sites``, e.g. ``["head_out"]``: which heads carry the lookup over training), written to
    ``patching_over_training.parquet``; empty (the default, within the demo's time budget): none."""
    attention_tasks: tuple[str, ...] = ("entity_tracking",)
    """Task families for task-aligned head scores (empty: random-token scores only)."""
    attention_items: int = 48
    """Items per task for head scores."""
    seed: int = 0
    """Seed of item generators and bootstrap."""

    def __post_init__(self):
        for name in _LIST_FIELDS:
            object.__setattr__(self, name, _as_names(getattr(self, name), name))

    def key(self) -> dict:
        """The settings as the units' keys hash them: list fields as comma-joined strings (the form the
        keys have always hashed, so that finished units of older jobs are recognised)."""
        d = dataclasses.asdict(self)
        return {k: ",".join(v) if k in _LIST_FIELDS else v for k, v in d.items()}


STAGES = ("train", "eval", "probe", "patch", "attention", "circuit", "report")
AIMS = ("gap", "fixed")
#: task categories whose gaps the job aims at ("reasoning": the paper's non-code reasoning question)
AIM_CATEGORIES = ("reasoning",)
AIM_FILE = "aim.json"


def _type_error(name: str, value, path: Path) -> CodetransferError:
    f = {f.name: f for f in dataclasses.fields(JobSettings)}[name]
    default = getattr(JobSettings(), name)
    if name in _LIST_FIELDS:
        return CodetransferError(
            f"--settings: field '{name}' in {path} must be str, got {value!r}: a list of strings "
            f"or one comma-separated string, e.g. {name} = {json.dumps(list(default))}"
        )
    return CodetransferError(
        f"--settings: field '{name}' in {path} must be {f.type}, got {value!r}; e.g. {name} = {default!r}"
    )


def load_settings(path: str | Path, **overrides) -> JobSettings:
    """``JobSettings`` from a TOML or JSON file of field = value pairs (``codetransfer run --settings``).

    Fields left out keep their defaults; ``overrides`` (e.g. ``baseline`` from the command line)
    win over the file. List fields take a list of strings or one comma-separated string. An unknown
    field or a value of the wrong type is refused with a one-line error.
    """
    path = Path(path)
    if not path.is_file():
        raise CodetransferError(
            f"--settings: file {path} does not exist; give a .toml or .json file of JobSettings fields"
        )
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else tomllib.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
        raise CodetransferError(
            f"--settings: {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {str(e).splitlines()[0]}"
        ) from None
    if not isinstance(data, dict):
        raise CodetransferError(
            f"--settings: {path} must hold a table of field = value pairs, got {type(data).__name__}"
        )
    fields = {f.name: f for f in dataclasses.fields(JobSettings)}
    values = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    for name, value in values.items():
        if name not in fields:
            raise CodetransferError(
                f"--settings: unknown field '{name}' in {path}{did_you_mean(name, fields)}; fields: {', '.join(fields)}"
            )
        if name in _LIST_FIELDS:
            ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        else:
            ok = isinstance(value, {"int": int, "str": str}[fields[name].type]) and not isinstance(value, bool)
        if not ok:
            raise _type_error(name, value, path)
    return check_settings(JobSettings(**values), f"--settings: {path}")


#: the least value of each numeric JobSettings field (every one has an upper bound of 2**32 - 1)
SETTINGS_LOW = {
    "eval_items": 1,
    "eval_max_difficulty": 0,
    "curve_items": 1,
    "curve_max_difficulty": 0,
    "probe_items": 1,
    "probe_max_difficulty": 0,
    "patch_items": 1,
    "patch_difficulty": 0,
    "attention_items": 1,
    "seed": 0,
}


def check_settings(settings: JobSettings, where: str = "settings") -> JobSettings:
    """Refuse job settings out of range (no items, a negative seed) or naming unknown task families, so that
    ``codetransfer run`` refuses them before it trains anything."""
    for name, low in SETTINGS_LOW.items():
        check_number(getattr(settings, name), f"{where}: field {name}", low, 2**32 - 1)
    patterns = check_label_patterns(settings.probe_labels, f"{where}: field probe_labels")
    if settings.aim not in AIMS:
        raise CodetransferError(
            f"{where}: field aim: unknown value {settings.aim!r}{did_you_mean(settings.aim, AIMS)}; "
            f"expected one of {', '.join(AIMS)}"
        )
    for name in ("patch_sites", "patch_checkpoint_sites"):
        if getattr(settings, name):
            try:
                patch_sites(getattr(settings, name))
            except CodetransferError as e:
                raise CodetransferError(f"{where}: field {name}: {str(e).removeprefix('--sites: ')}") from None
    known = task_names()
    for name in ("probe_tasks", "patch_task", "attention_tasks"):
        value = getattr(settings, name)
        for task in value.split(",") if isinstance(value, str) else value:
            if task.strip() not in known:
                raise CodetransferError(
                    f"{where}: field {name}: unknown task family '{task}'"
                    f"{did_you_mean(task.strip(), known)}; families: {', '.join(known)}"
                )
    for task in settings.probe_tasks:  # a few items per level: the labels the probe stage would find
        family = get_task(task)
        levels = [d for d in family.difficulties if d <= settings.probe_max_difficulty] or list(family.difficulties[:1])
        names = sorted({lab.name for d in levels for it in family.generate(2, settings.seed, d) for lab in it.labels})
        if not any(label_matches(n, patterns) for n in names):
            raise CodetransferError(
                f"{where}: field probe_labels: no label of task '{task}' up to difficulty "
                f"{settings.probe_max_difficulty} matches {list(patterns)}; its labels look like "
                f"{', '.join(names[:6])} (patterns are shell-style, e.g. '*@query')"
            )
    return settings


def _merge(parts: list[Path], dest: Path) -> pd.DataFrame | None:
    """Concatenate the units' tables (those that exist) into ``dest`` (atomic); None when there are none."""
    tables = [read_table(p, "unit table") for p in parts if p.exists()]
    if not tables:
        return None
    table = pd.concat(tables, ignore_index=True)
    artifacts.write_parquet(table, dest)
    return table


def _merge_eval(
    score_parts: list[Path],
    loss_parts: list[Path],
    results: Path,
    settings: JobSettings,
    controls: dict[str, str],
    data_seeds: dict[str, int] | None = None,
) -> None:
    """The grid's eval tables from the per-run units' scores (the same tables one ``codetransfer eval`` writes);
    ``controls``: each recipe's ``compare_with``, compared besides the baseline; ``data_seeds``: ``{run: data
    seed}`` of the runs in another data order (the comparison's data-order null)."""
    scores = pd.concat([read_table(p, "unit table") for p in score_parts], ignore_index=True)
    losses = [read_table(p, "unit table") for p in loss_parts if p.exists()]
    losses = pd.concat(losses, ignore_index=True) if losses else None
    table, summary = eval_tables(scores, losses, settings.baseline, GRID_N_BOOT, settings.seed)
    comparison = comparison_table(scores, settings.baseline, GRID_N_BOOT, settings.seed, controls, data_seeds)
    artifacts.write_tables(
        results,
        {"eval.parquet": table, "summary.csv": summary, "scores.parquet": scores, "comparison.parquet": comparison},
    )


def _merge_learning(parts: list[Path], results: Path, settings: JobSettings) -> None:
    """``results/learning.parquet`` (and its per-item ``learning_scores.parquet``) from the per-run eval
    units' checkpoint scores; nothing when no run kept checkpoints."""
    if not parts:
        return
    scores = pd.concat([read_table(p, "unit table") for p in parts], ignore_index=True)
    table = learning_table_from_scores(scores, GRID_N_BOOT, seed=settings.seed)
    artifacts.write_tables(results, {"learning.parquet": table, "learning_scores.parquet": scores})


def _has_curve(run) -> bool:
    """Whether ``run`` kept intermediate checkpoints (its learning curve and head roles over training); a
    model-set checkpoint is one model (a set compares steps as entries of their own)."""
    return run.record.get("source") != "model_set" and len(run_checkpoints(run)) >= 2


def _curve_key(settings: JobSettings) -> list[str]:
    """What an eval unit's key adds for a run with checkpoints (the curve settings, in the form the keys
    have always hashed)."""
    return [
        "--checkpoints",
        "--curve-items",
        str(settings.curve_items),
        "--curve-max-difficulty",
        str(settings.curve_max_difficulty),
    ]


def _hardest(tasks, run, n_items: int, settings: JobSettings) -> int | None:
    """The hardest level <= settings.probe_max_difficulty at which every task's items fit ``run``'s context."""
    levels = [hardest_fitting_level(t, run, n_items, settings.seed, settings.probe_max_difficulty) for t in tasks]
    return min(levels) if levels else None


def _check_unit_tables(results: Path) -> None:
    """Refuse a damaged table left by an earlier unit (unreadable parquet footer) before any unit works, so that
    a refusal leaves the output as it was."""
    for path in sorted((results / "units").glob("*/*.parquet")):
        try:
            pq.read_metadata(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise CodetransferError(f"{path}: damaged unit table ({type(e).__name__}); delete it and rerun") from None


@contextmanager
def _stage(name: str, timings: dict, log):
    t0 = time.time()
    log(f"== {name}")
    yield
    timings[name] = time.time() - t0
    log(f"== {name}: done in {timings[name]:.0f}s")


# ---------------------------------------------------------------------- units and the pool that runs them
UNIT_THREADS = 1
"""Torch and BLAS threads of one analysis unit, however it runs (in this process with ``jobs=1`` or in a
worker): float results depend on the thread count, so every unit gets the same one and any ``jobs`` gives the
same tables."""


@dataclass(frozen=True)
class Unit:
    """One piece of the main job's analysis: ``fn(**kwargs, log=...)`` writes the unit's tables."""

    name: str
    """``<stage>-<run>`` (or ``cross-<A>-into-<B>``): the file name of its record in ``OUT/units/``."""
    key: str
    """Hash of what the unit reads (settings, runs, recipes): a finished unit with the same key is skipped."""
    fn: Callable
    """A module-level function (workers import it by name)."""
    kwargs: dict
    """Its arguments (picklable: runs, paths, settings)."""
    device: str = "cpu"
    """Torch device of the unit."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextmanager
def unit_threads(device: str = "cpu"):
    """Torch and BLAS at :data:`UNIT_THREADS` threads, as every analysis unit runs: a library function called
    directly under it gives the job's floats exactly (with another thread count they may differ in the last bits)."""
    with run_threads(device, UNIT_THREADS), threadpool_limits(UNIT_THREADS):
        yield


def _call_unit(unit: Unit, log) -> float:
    """Run ``unit`` under :func:`unit_threads`; returns its seconds."""
    t0 = time.time()
    with unit_threads(unit.device):
        unit.fn(**unit.kwargs, device=unit.device, log=log)
    return time.time() - t0


def _unit_worker(unit: Unit) -> tuple[float, list[str]]:
    """In a worker process: run ``unit``, keeping its messages for the parent to print in one piece."""
    messages: list[str] = []
    return _call_unit(unit, messages.append), messages


class UnitPool:
    """Runs the main job's units: in this process (``jobs=1``) or on ``jobs`` worker processes ("spawn", one
    thread each, dying with the parent as the training workers do). Workers start on the first unit that needs
    one and serve every stage. One line per finished unit, then the stage's count and ETA."""

    def __init__(self, records: artifacts.UnitRecords, jobs: int, log):
        self.records, self.jobs, self.log = records, jobs, log
        self._pool: ProcessPoolExecutor | None = None

    def run(self, units: list[Unit]) -> bool:
        """Run the ``units`` not finished with their keys; True when any worked."""
        todo = [u for u in units if not self.records.done(u.name, u.key)]
        if not todo:
            return False
        t0, n = time.time(), len(todo)

        def finished(k: int, unit: Unit, seconds: float, messages: list[str]) -> None:
            for m in messages:
                self.log(m)
            self.records.finish(unit.name, unit.key, seconds)
            left = (time.time() - t0) / k * (n - k)
            self.log(f"{unit.name}: {seconds:.0f}s ({k}/{n} units{f', ETA {left:.0f}s' if k < n else ''})")

        if self.jobs == 1 or len(todo) == 1:
            for k, unit in enumerate(todo, 1):
                finished(k, unit, _call_unit(unit, _stderr), [])
            return True
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                max_workers=self.jobs, mp_context=ctx, initializer=worker_init, initargs=(os.getpid(),)
            )
        running = {self._pool.submit(_unit_worker, u): u for u in todo}
        k = 0
        try:
            while running:
                ready, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in ready:
                    unit = running.pop(f)
                    seconds, messages = f.result()
                    k += 1
                    finished(k, unit, seconds, messages)
        except BaseException:
            self.close(kill=True)
            raise
        return True

    def close(self, kill: bool = False) -> None:
        if self._pool is None:
            return
        if kill:
            stop_pool(self._pool)
        else:
            self._pool.shutdown(wait=True)
        self._pool = None


def cross_model_pairs(runs, baseline: str, controls: dict[str, str], both_ways: bool = False) -> list[tuple]:
    """The ``(A, B)`` run pairs the main job patches A into B: every recipe's run into the baseline's run of
    its seed; each recipe that names a control (``compare_with``) into the control's run of its seed; with
    ``both_ways`` (the main job), each of those pairs also the other way round, B into A, right after it. Then,
    for every recipe that receives a pair (the baseline first), its *null pairs*: another model of that recipe
    patched into each of its runs, what a foreign model without the recipe difference does there (read on the
    tested pair's gap by :func:`~codetransfer.analysis.verdict.null_shares`):

    * the *data-order null*, where the grid has data seeds (``data_seeds``): each run with another data order
      into the run of its init seed's own order (the same initialisation and shared phases, only the order of
      the later rows differs: aligned like arms that branch from one base);
    * else (a run without such a twin) the *init-seed null*: the recipe's run of the next seed (the last seed's
      into the first's), where the recipe has two or more.

    Only runs in their init seed's own data order (``data_seed`` 0) are paired across recipes.

    A into B asks whether A's component *suffices* to give B A's behaviour; B into A whether A's behaviour
    *needs* it (replaced by B's, does A lose its advantage?). The second locates a circuit that the first misses
    where B's later layers cannot read what A's component writes (docs/control.md, the aligned control)."""
    own = [r for r in runs if not getattr(r, "data_seed", 0)]
    by = {(r.recipe, r.seed): r for r in own}
    pairs, seen = [], set()
    for a in own:
        for other in dict.fromkeys([baseline, controls.get(a.recipe, "")]):
            b = by.get((other, a.seed))
            if other and a.recipe != other and b is not None:
                for x, y in [(a, b), (b, a)] if both_ways else [(a, b)]:
                    if (x.name, y.name) not in seen:  # two recipes that name each other: each direction once
                        seen.add((x.name, y.name))
                        pairs.append((x, y))
    for recipe in dict.fromkeys([baseline] + [b.recipe for _, b in pairs]):
        mine = sorted((r for r in own if r.recipe == recipe), key=lambda r: r.seed)
        for i, b in enumerate(mine):
            twins = sorted(
                (r for r in runs if r.recipe == recipe and r.seed == b.seed and getattr(r, "data_seed", 0)),
                key=lambda r: r.data_seed,
            )
            if twins:
                pairs += [(t, b) for t in twins]
            elif len(mine) > 1:
                pairs.append((mine[(i + 1) % len(mine)], b))
    return pairs


def _comparable(a, b) -> bool:
    """Whether runs ``a`` and ``b`` share model shape and tokenizer (what cross-model patching needs)."""
    return all(a.record.get(k) == b.record.get(k) for k in ("model", "tokenizer_sha256"))


def _eval_unit(run, dest: Path, settings: JobSettings, curve: bool, device: str, log) -> None:
    tasks = {  # spread evenly over the levels evaluated (the same items for every run)
        name: items_up_to(get_task(name), settings.eval_items, settings.seed, settings.eval_max_difficulty)
        for name in task_names()
    }
    tables = evaluate_grid(
        [run],
        runs_dir=run.path,
        tasks=tasks,
        n_items=settings.eval_items,
        seed=settings.seed,
        # the unit's own summary (the grid's comes from every unit's scores): a model set's run is its own baseline
        baseline=run.recipe if run.record.get("source") == "model_set" else DEFAULT_BASELINE,
        n_boot=UNIT_N_BOOT,
        # held-out loss reads the grid's token arrays, made with its tokenizer: none for a model set's checkpoints
        heldout_windows=0 if run.record.get("source") == "model_set" else HELDOUT_WINDOWS,
        fit_context=True,
        checkpoints=curve,
        curve_items_per_task=settings.curve_items,
        curve_max_difficulty=settings.curve_max_difficulty,
        device=device,
        log=log,
    )
    artifacts.write_tables(dest, tables)


def _probe_unit(run, dest: Path, settings: JobSettings, max_difficulty: int | None, device: str, log) -> None:
    # the sweep redoes parts made from other settings or an older model
    probe_grid(
        [run],
        settings.probe_tasks,
        settings.probe_sites,
        dest,
        n_items=settings.probe_items,
        item_seed=settings.seed,
        seeds=PROBE_SPLIT_SEEDS,
        keep_stores=False,
        random_baseline=True,
        labels=settings.probe_labels,
        max_difficulty=max_difficulty,
        device=device,
        progress=log,
    )


def _patch_unit(run, dest: Path, patch: PatchSettings, device: str, log, checkpoint_sites=()) -> None:
    tables = patch_grid([run], dataclasses.replace(patch, cross_rendering=True), device=device, log=log)
    if checkpoint_sites:  # the same items at every saved checkpoint
        over = dataclasses.replace(patch, sites=tuple(checkpoint_sites))
        tables.update(patch_checkpoints([run], over, device=device, log=log))
    artifacts.write_tables(dest, tables)


def _cross_unit(runs, a: str, b: str, dest: Path, patch: PatchSettings, device: str, log) -> None:
    cross = dataclasses.replace(patch, cross_model=(a, b), cross_model_only=True)
    artifacts.write_tables(dest, patch_grid(runs, cross, device=device, log=log))


def _attention_unit(
    run, dest: Path, settings: JobSettings, curve: bool, max_difficulty: int | None, device: str, log
) -> None:
    tables = attention_grid(
        [run],
        settings.attention_tasks,
        n_items=settings.attention_items,
        seed=settings.seed,
        max_difficulty=max_difficulty,
        checkpoints=curve,
        device=device,
        log=log,
    )
    artifacts.write_tables(dest, tables)


def _circuit_task(run, results: Path, settings: JobSettings) -> str | None:
    """The task ``run``'s attention unit scored heads on (the first of ``attention_tasks`` when it did, else the
    first it scored), whose items the circuit stage ablates; None when it scored none or the unit is missing."""
    from codetransfer.analysis.attention import RANDOM_TASK

    path = results / "units" / f"attention-{run.name}" / "attention.parquet"
    if not path.exists():
        return None
    scored = sorted(set(pq.read_table(path, columns=["task"]).column("task").to_pylist()) - {RANDOM_TASK})
    preferred = [t for t in settings.attention_tasks if t in scored]
    return (preferred or scored or [None])[0]


def _circuit_heads(run, task: str, results: Path, settings: JobSettings):
    """``run``'s chosen and control heads, from its attention unit's table (its previous-token scores on
    repeated random tokens, where it has them, keep an induction circuit's partners out of the controls)."""
    from codetransfer.analysis.circuit import choose_heads, head_scores_of, partner_scores_of

    path = results / "units" / f"attention-{run.name}" / "attention.parquet"
    attention = read_table(path, "unit table")
    scores = head_scores_of(run, attention, CIRCUIT_BY, task)
    k = circuit_k(len(scores))
    partners = partner_scores_of(run, attention)
    return choose_heads(run, scores, k=k, by=CIRCUIT_BY, task=task, seed=settings.seed, partners=partners)


def circuit_k(n_heads: int) -> int:
    """Heads the circuit stage chooses in a model of ``n_heads`` heads in all: :data:`CIRCUIT_HEADS`, at most
    half of them (the others give the control heads)."""
    return max(1, min(CIRCUIT_HEADS, n_heads // 2))


def _circuit_items(loaded, task: str, settings: JobSettings):
    from codetransfer.analysis.circuit import circuit_items

    cfg = loaded.bridge.cfg
    return circuit_items(task, CIRCUIT_ITEMS, settings.seed, settings.eval_max_difficulty, loaded.tokenizer, cfg.n_ctx)


def _circuit_unit(run, task: str, results: Path, dest: Path, settings: JobSettings, device: str, log) -> None:
    from codetransfer.analysis.circuit import circuit_run_part
    from codetransfer.trained import load_run

    heads = _circuit_heads(run, task, results, settings)
    loaded = load_run(run, device=device)
    scores = circuit_run_part(loaded, heads, _circuit_items(loaded, task, settings), seed=settings.seed)
    artifacts.write_tables(dest, {"circuit_heads.parquet": heads, "circuit_scores.parquet": scores})


def _circuit_pair_unit(
    a, b, comparison: str, task: str, results: Path, dest: Path, settings: JobSettings, device: str, log
) -> None:
    from codetransfer.analysis.circuit import circuit_pair_part
    from codetransfer.trained import load_run

    heads = _circuit_heads(a, task, results, settings)
    la, lb = load_run(a, device=device), load_run(b, device=device)
    part = circuit_pair_part(la, lb, heads, _circuit_items(la, task, settings), comparison, seed=settings.seed)
    artifacts.write_tables(dest, {"circuit_scores.parquet": part["scores"], "cka.parquet": part["cka"]})


def model_set_baseline(model_set, baseline: str | None = None) -> str:
    """The baseline group of a job over ``model_set`` (a :class:`~codetransfer.trained.modelset.ModelSet`):
    ``baseline`` when given (refused in one line, with a did-you-mean, unless it is a group of the set), else
    the set's ``baseline``, else its first group."""
    groups = model_set.groups
    if baseline is not None:
        if baseline not in groups:
            raise CodetransferError(
                f"--baseline: '{baseline}' is not a group of model set '{model_set.name}'"
                f"{did_you_mean(baseline, groups)} ({', '.join(groups)}); pick one of them"
            )
        return baseline
    return model_set.baseline or groups[0]


def _job_runs(grid_spec, models, out: Path, settings: JobSettings, stages, device: str, log, jobs: int, timings):
    """The runs the analysis stages work on, the job's settings (the model set's baseline filled in), the
    recipes' controls and what the report is written from (``grid`` or ``models``)."""
    if (grid_spec is None) == (models is None):
        raise CodetransferError(
            "run: give exactly one of GRID (a grid .toml file or preset name, trained first) or --models FILE "
            "(a model-set TOML file of checkpoints, see docs/models.md)"
        )
    if models is not None:
        from codetransfer.trained.modelset import load_model_set, model_runs

        if "train" in stages:
            raise CodetransferError(
                "--stages: a model set is not trained (its checkpoints are given); leave train out of --stages "
                "with --models"
            )
        model_set = load_model_set(models)
        given = settings.baseline
        if given == JobSettings.baseline and given not in model_set.groups:
            given = None  # the default recipe name: the set's own baseline
        settings = dataclasses.replace(settings, baseline=model_set_baseline(model_set, given))
        runs = sorted(model_runs(model_set), key=lambda r: r.name)  # run order, as find_runs gives a grid's
        return runs, settings, {}, {"grid": None, "models": model_set}
    grid = load_grid(grid_spec)
    settings = dataclasses.replace(settings, baseline=grid_baseline(grid, settings.baseline))  # before training
    if "train" in stages:
        with _stage("train", timings, log):
            train_grid(grid, out, device=device, log=log, jobs=jobs)
    runs = [r for r in find_runs(out, complete_only=True) if r.recipe in {x.name for x in grid.recipes}]
    if not runs:
        raise CodetransferError(f"{out}: no complete runs of grid '{grid.name}'; run the train stage first")
    controls = {r.name: r.compare_with for r in grid.recipes if r.compare_with}
    return runs, settings, controls, {"grid": grid}


def grid_baseline(grid, baseline: str) -> str:
    """The baseline recipe of a job over ``grid``: ``baseline`` when it is a recipe of the grid; the grid's first
    recipe when ``baseline`` is the default (``text-only``) and the grid has none of that name; else refused in
    one line."""
    names = [r.name for r in grid.recipes]
    if baseline in names:
        return baseline
    if baseline == JobSettings.baseline:
        return names[0]
    raise CodetransferError(
        f"--baseline: '{baseline}' is not a recipe of grid '{grid.name}'{did_you_mean(baseline, names)} "
        f"({', '.join(names)}); pick one of them"
    )


def run_job(
    grid_spec: str | None,
    out: str | Path,
    settings: JobSettings = JobSettings(),
    device: str = "cpu",
    stages: tuple[str, ...] | None = None,
    log=print,
    jobs: int = 1,
    models: str | Path | None = None,
) -> dict:
    """Run the main job; returns ``{stage: seconds}`` (and ``report_path``). See the module docstring.

    ``jobs``: worker processes for training runs and analysis units (one thread each; the runs and tables do
    not depend on it).

    ``models``: a model-set TOML file (docs/models.md) instead of ``grid_spec`` (exactly one of the two): its
    checkpoints are the runs (groups as recipes), nothing is trained (``stages``, default every stage but
    ``train``, must leave it out),
    and the analysis units, their keys and files are those of a grid. The baseline is ``settings.baseline``
    when it is a group of the set or was changed from the default (then it must be a group), else the set's
    ``baseline`` (else its first group)."""
    if stages is None:
        stages = STAGES if models is None else tuple(s for s in STAGES if s != "train")
    out = Path(out)
    results = out / "results"
    timings: dict[str, float] = {}
    runs, settings, controls, source = _job_runs(grid_spec, models, out, settings, stages, device, log, jobs, timings)
    records = artifacts.UnitRecords(out / "units")  # a damaged record is refused before any unit works
    _check_unit_tables(results)  # and so is a damaged table of a finished unit
    results.mkdir(parents=True, exist_ok=True)
    pool = UnitPool(records, jobs, log)
    try:
        settings = _analyse(runs, results, settings, controls, stages, pool, timings, device, log)
    except BaseException:
        pool.close(kill=True)
        raise
    pool.close()
    if "report" in stages:
        with _stage("report", timings, log):
            report = write_report(out, source["grid"], settings, models=source.get("models"))
            timings["report_path"] = str(report)
    return timings


def aim(results: Path, settings: JobSettings, log=print) -> tuple[JobSettings, dict]:
    """The settings the patch, probe and attention stages run with, and the record of why (written to
    ``results/aim.json`` by the job, read by the report).

    With ``settings.aim == "gap"`` and a seed-paired comparison in ``results/comparison.parquet`` whose gap is
    distinguishable (:func:`codetransfer.analysis.compare.gap_target` over :data:`AIM_CATEGORIES`, an advantage
    of the recipe before a disadvantage), the comparison's task and level replace ``patch_task``,
    ``patch_difficulty``, ``probe_tasks`` and ``attention_tasks``, and the record's ``direction`` says whether
    the gap is an ``"advantage"`` (estimate > 0) or a ``"disadvantage"``; otherwise they stay as given and the
    record says why (no gap, no comparison table, or ``aim = "fixed"``)."""
    record = dict(
        aim=settings.aim,
        found=False,
        task=settings.patch_task,
        difficulty=int(settings.patch_difficulty),
        recipe=None,
        against=None,
    )
    if settings.aim != "gap":
        return settings, dict(record, reason="aim = fixed: the configured task and level")
    path = results / "comparison.parquet"
    if not path.exists():
        log(
            f"aim: no {path.name} (run the eval stage); patching {settings.patch_task} level {settings.patch_difficulty}"
        )
        return settings, dict(record, reason="no seed-paired comparison table: the eval stage has not run")
    comparison = read_table(path, "result table")
    row = gap_target(comparison, AIM_CATEGORIES)
    if row is None:
        pooled = pooled_gap(comparison, AIM_CATEGORIES)
        if pooled is None:
            why = f"no {'/'.join(AIM_CATEGORIES)} comparison has a distinguishable gap"
        else:  # patching needs one task and level: a gap seen only when the levels are pooled has no items to split
            why = (
                f"no single task level has a distinguishable gap, only the pooled {pooled['category']} levels "
                f"({pooled['recipe']} - {pooled['baseline']} = {pooled['estimate']:+.2f}, "
                f"Holm p {pooled['p_holm']:.2g})"
            )
        log(f"aim: {why}; within-model maps on {settings.patch_task} level {settings.patch_difficulty}")
        return settings, dict(record, reason=why if pooled is not None else "no gap to explain")
    task, level = str(row["task"]), int(row["difficulty"])
    direction = "advantage" if float(row["estimate"]) > 0 else "disadvantage"
    reason = (
        "the distinguishable seed-paired advantage with the smallest Holm p"
        if direction == "advantage"
        else "no advantage is distinguishable; the disadvantage with the smallest Holm p"
    )
    record.update(
        found=True,
        task=task,
        difficulty=level,
        recipe=str(row["recipe"]),
        against=str(row["baseline"]),
        direction=direction,
        reason=reason,
        **{k: float(row[k]) for k in ("estimate", "ci_low_corrected", "ci_high_corrected", "p_holm")},
        n_seeds=int(row["n_seeds"]),
    )
    log(
        f"aim: {task} level {level}: {row['recipe']} - {row['baseline']} = {row['estimate']:+.2f} "
        f"[{row['ci_low_corrected']:+.2f}, {row['ci_high_corrected']:+.2f}] logits, Holm p {row['p_holm']:.2g} "
        f"({reason})"
    )
    aimed = dataclasses.replace(
        settings, patch_task=task, patch_difficulty=level, probe_tasks=(task,), attention_tasks=(task,)
    )
    return aimed, record


def _analyse(
    runs, results: Path, settings: JobSettings, controls: dict, stages, pool: UnitPool, timings: dict, device: str, log
):
    """The analysis stages: each makes its units, runs them on ``pool``, and merges their tables in run order.
    Returns the settings the later stages ran with (:func:`aim` may have changed the task and level)."""
    skey = settings.key()
    run_key = {r.name: r.record["recipe_hash"] for r in runs}
    units = results / "units"

    def unit(name: str, key: list, fn: Callable, **kwargs) -> Unit:
        return Unit(name, artifacts.key(key), fn, {**kwargs, "dest": units / name}, device)

    if "eval" in stages:
        with _stage("eval", timings, log):
            # one unit per run (a changed recipe re-scores only its runs); the grid tables come from their scores
            todo, curve_parts = [], []
            for r in runs:
                curve = _has_curve(r)  # learning curves of the runs that kept checkpoints
                key = ["eval", skey, r.name, run_key[r.name]] + (_curve_key(settings) if curve else [])
                todo.append(unit(f"eval-{r.name}", key, _eval_unit, run=r, settings=settings, curve=curve))
                if curve:
                    curve_parts.append(units / f"eval-{r.name}" / "learning_scores.parquet")
            if not pool.run(todo):
                log("eval: up to date")
            _merge_eval(
                [u.kwargs["dest"] / "scores.parquet" for u in todo],
                [u.kwargs["dest"] / "losses.parquet" for u in todo],
                results,
                settings,
                controls,
                {r.name: r.data_seed for r in runs if getattr(r, "data_seed", 0)},
            )
            _merge_learning(curve_parts, results, settings)

    # what the instruments look at: the task and level of a distinguishable gap, when the evaluation found one
    settings, aimed = aim(results, settings, log)
    artifacts.write_json(results / AIM_FILE, aimed)
    skey = settings.key()

    if "probe" in stages:
        with _stage("probe", timings, log):
            # one unit per run, like patching: a changed recipe re-probes only its runs
            todo = [
                unit(
                    f"probe-{r.name}",
                    ["probe", skey, r.name, run_key[r.name]],
                    _probe_unit,
                    run=r,
                    settings=settings,
                    max_difficulty=_hardest(settings.probe_tasks, r, settings.probe_items, settings),
                )
                for r in runs
            ]
            if not pool.run(todo):
                log("probe: up to date")
            probes = _merge([u.kwargs["dest"] / "probes.parquet" for u in todo], results / "probes.parquet")
            decodability = results / "decodability.parquet"
            try:  # trained minus random-init twin, seed by seed
                if probes is None or not len(probes):
                    raise CodetransferError("the probe stage found nothing to probe")
                artifacts.write_parquet(decodability_table(probes), decodability)
            except CodetransferError as e:  # never a stale table next to new probes; the report says it is missing
                decodability.unlink(missing_ok=True)
                log(f"note: no decodability table: {e}")

    if "patch" in stages:
        with _stage("patch", timings, log):
            patch = PatchSettings(
                task=settings.patch_task,
                sites=tuple(patch_sites(settings.patch_sites)),
                n_items=settings.patch_items,
                difficulty=settings.patch_difficulty,
                seed=settings.seed,
            )
            over_sites = tuple(patch_sites(settings.patch_checkpoint_sites)) if settings.patch_checkpoint_sites else ()
            within = [
                unit(
                    f"patch-{r.name}",
                    ["patch", skey, r.name, run_key[r.name]],
                    _patch_unit,
                    run=r,
                    patch=patch,
                    checkpoint_sites=over_sites if _has_curve(r) else (),
                )
                for r in runs
            ]
            pairs = []
            for a, b in cross_model_pairs(runs, settings.baseline, controls, both_ways=True):
                if _comparable(a, b):
                    pairs.append((a, b))
                else:  # only in a model set: a grid's runs share shape and tokenizer
                    log(
                        f"note: no cross-model patching of {a.name} into {b.name}: they differ in model shape or "
                        "tokenizer (see docs/models.md)"
                    )
            one_grid = all(_comparable(runs[0], r) for r in runs)
            cross = [
                unit(
                    f"cross-{a.name}-into-{b.name}",
                    # "endpoints": the rows carry the pair's unpatched metrics (parts written before are redone)
                    ["cross", skey, a.name, run_key[a.name], b.name, run_key[b.name], "endpoints"],
                    _cross_unit,
                    runs=runs if one_grid else [a, b],
                    a=a.name,
                    b=b.name,
                    patch=patch,
                )
                for a, b in pairs
            ]
            pool.run(within + cross)
            _merge([u.kwargs["dest"] / "patching.parquet" for u in within], results / "patching.parquet")
            _merge([u.kwargs["dest"] / "cross_rendering.parquet" for u in within], results / "cross_rendering.parquet")
            _merge([u.kwargs["dest"] / "cross_model.parquet" for u in cross], results / "cross_model.parquet")
            if over_sites:
                _merge(
                    [u.kwargs["dest"] / PATCHING_OVER_TRAINING_FILE for u in within],
                    results / PATCHING_OVER_TRAINING_FILE,
                )

    if "attention" in stages:
        with _stage("attention", timings, log):
            todo, over_training = [], []
            for r in runs:
                curve = _has_curve(r)  # head roles over training
                key = ["attention", skey, r.name, run_key[r.name]] + (["--checkpoints"] if curve else [])
                max_difficulty = _hardest(settings.attention_tasks, r, settings.probe_items, settings)
                todo.append(
                    unit(
                        f"attention-{r.name}",
                        key,
                        _attention_unit,
                        run=r,
                        settings=settings,
                        curve=curve,
                        max_difficulty=max_difficulty,
                    )
                )
                if curve:
                    over_training.append(units / f"attention-{r.name}" / "attention_over_training.parquet")
            pool.run(todo)
            _merge([u.kwargs["dest"] / "attention.parquet" for u in todo], results / "attention.parquet")
            if over_training:
                _merge(over_training, results / "attention_over_training.parquet")

    if "circuit" in stages:
        with _stage("circuit", timings, log):
            _circuit_stage(runs, results, settings, controls, skey, run_key, unit, pool, log)
    return settings


def _circuit_stage(runs, results: Path, settings: JobSettings, controls: dict, skey, run_key, unit, pool, log) -> None:
    """Lookup heads, their ablation and CKA (:mod:`codetransfer.analysis.circuit`): one unit per run and one
    per pair of :func:`~codetransfer.analysis.circuit.circuit_pairs`; the grid's tables from their scores."""
    from codetransfer.analysis.circuit import CONTROL_RULE, circuit_pairs, circuit_tables

    tasks = {_circuit_task(r, results, settings) for r in runs}
    if len(tasks) != 1 or None in tasks:
        log(
            "circuit: nothing to do: the attention stage scored no task on every run alike "
            f"({sorted(map(str, tasks))}); run it with attention_tasks set"
        )
        return
    task = tasks.pop()
    fixed = ["--task", task, "--items", CIRCUIT_ITEMS, "--heads", CIRCUIT_HEADS, "--by", CIRCUIT_BY]
    fixed += ["--controls", CONTROL_RULE]
    own = [
        unit(
            f"circuit-{r.name}",
            ["circuit", skey, r.name, run_key[r.name]] + fixed,
            _circuit_unit,
            run=r,
            task=task,
            results=results,
            settings=settings,
        )
        for r in runs
    ]
    pairs = [(a, b, c) for a, b, c in circuit_pairs(runs, settings.baseline, controls) if _comparable(a, b)]
    pair_units = [
        unit(
            f"circuit-{a.name}-vs-{b.name}",
            ["circuit-pair", skey, a.name, run_key[a.name], b.name, run_key[b.name], c] + fixed,
            _circuit_pair_unit,
            a=a,
            b=b,
            comparison=c,
            task=task,
            results=results,
            settings=settings,
        )
        for a, b, c in pairs
    ]
    if not pool.run(own + pair_units):
        log("circuit: up to date")
    todo = own + pair_units
    scores = pd.concat(
        [read_table(u.kwargs["dest"] / "circuit_scores.parquet", "unit table") for u in todo], ignore_index=True
    )
    heads = pd.concat([read_table(u.kwargs["dest"] / "circuit_heads.parquet", "unit table") for u in own])
    cka = [read_table(u.kwargs["dest"] / "cka.parquet", "unit table") for u in pair_units]
    over = results / "attention_over_training.parquet"
    tables = circuit_tables(
        scores,
        heads,
        pd.concat(cka, ignore_index=True) if cka else None,
        pairs,
        over_training=read_table(over, "table") if over.exists() else None,
        n_boot=GRID_N_BOOT,
        seed=settings.seed,
    )
    artifacts.write_tables(results, tables)
