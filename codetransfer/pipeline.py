"""The main job: train a grid, evaluate, probe, patch, analyse attention, write the report.

``run_job(grid, out)`` runs the stages in order. The work is cut into *units* — one training run,
one run's evaluation / probing sweep / patching sweeps / head scores, one cross-model pair — and each
unit is skipped when ``out/units/<unit>.json`` records that it finished with the
same *key*: a hash of the job settings and of the recipes of the runs it reads. Killing the job and
running it again finishes it without redoing finished units; changing one recipe in the grid
retrains that run and redoes the units that read it; the grid-wide tables (the evaluation's
per-recipe rows and relative-change summary, the merged tables) are rebuilt from the units' tables.
Units write their tables atomically, and the merged tables are rebuilt from the unit tables, so a
re-run after a kill gives identical tables.

Each stage prints one summary line with its time; commands inside show their own progress.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from codetransfer.errors import CodetransferError, did_you_mean


@dataclass(frozen=True)
class JobSettings:
    """How much analysis the main job does per run (the tiny demo uses the defaults)."""

    baseline: str = "text-only"
    """Recipe every other recipe is compared with (relative change, cross-model patching)."""
    eval_items: int = 300
    """Items per task family for evaluation, spread over its levels (45-50 at the easiest level of the tiny
    grid's reasoning families: a 95% interval of about +-0.13)."""
    curve_items: int = 60
    """Items per task family for the learning curves (runs that kept checkpoints: grid train.snapshot_every > 0)."""
    curve_max_difficulty: int = 0
    """Hardest difficulty of the learning curves' items (0: the easiest level only)."""
    probe_tasks: str = "entity_tracking"
    """Comma-separated task families to probe."""
    probe_sites: str = "resid_post"
    """Comma-separated probe sites (resid_pre, resid_mid, resid_post, attn_out, mlp_out, head)."""
    probe_items: int = 120
    """Items per probed task."""
    probe_max_difficulty: int = 3
    """Hardest difficulty probed (lowered automatically to what fits the models' context)."""
    patch_task: str = "entity_tracking"
    """Task family whose counterfactual pairs are patched."""
    patch_sites: str = "resid,attn,mlp,head"
    """Patching sites."""
    patch_items: int = 48
    """Clean/counterfactual pairs per patching sweep."""
    patch_difficulty: int = 0
    """Difficulty of the patched items (the level the models can do)."""
    attention_tasks: str = "entity_tracking"
    """Task families for task-aligned head scores."""
    attention_items: int = 48
    """Items per task for head scores."""
    seed: int = 0
    """Seed of item generators and bootstrap."""


STAGES = ("train", "eval", "probe", "patch", "attention", "report")


def load_settings(path: str | Path, **overrides) -> JobSettings:
    """``JobSettings`` from a TOML or JSON file of field = value pairs (``codetransfer run --settings``).

    Fields left out keep their defaults; ``overrides`` (e.g. ``baseline`` from the command line)
    win over the file. An unknown field or a value of the wrong type is refused with a one-line error.
    """
    import dataclasses

    path = Path(path)
    if not path.is_file():
        raise CodetransferError(f"--settings: file {path} does not exist; give a .toml or .json file of JobSettings fields")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            import tomllib

            data = tomllib.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
        raise CodetransferError(f"--settings: {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: "
                                f"{str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CodetransferError(f"--settings: {path} must hold a table of field = value pairs, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(JobSettings)}
    types = {"int": int, "str": str}
    values = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    for name, value in values.items():
        if name not in fields:
            raise CodetransferError(f"--settings: unknown field '{name}' in {path}{did_you_mean(name, fields)}; "
                                    f"fields: {', '.join(fields)}")
        want = types[fields[name].type]
        if not isinstance(value, want) or isinstance(value, bool):
            raise CodetransferError(f"--settings: field '{name}' in {path} must be {fields[name].type}, "
                                    f"got {value!r}; e.g. {name} = {getattr(JobSettings(), name)!r}")
    return check_settings(JobSettings(**values), f"--settings: {path}")


#: the least value of each numeric JobSettings field (every one has an upper bound of 2**32 - 1)
SETTINGS_LOW = {"eval_items": 1, "curve_items": 1, "curve_max_difficulty": 0, "probe_items": 1,
                "probe_max_difficulty": 0, "patch_items": 1, "patch_difficulty": 0, "attention_items": 1, "seed": 0}


def check_settings(settings: JobSettings, where: str = "settings") -> JobSettings:
    """Refuse job settings out of range (no items, a negative seed) or naming unknown task families, so that
    ``codetransfer run`` refuses them before it trains anything."""
    from codetransfer.tasks import task_names
    from codetransfer.trained.checks import check_number

    for name, low in SETTINGS_LOW.items():
        check_number(getattr(settings, name), f"{where}: field {name}", low, 2**32 - 1)
    known = task_names()
    for name in ("probe_tasks", "patch_task", "attention_tasks"):
        for task in getattr(settings, name).split(","):
            if task.strip() not in known:
                raise CodetransferError(f"{where}: field {name}: unknown task family '{task}'"
                                        f"{did_you_mean(task.strip(), known)}; families: {', '.join(known)}")
    return settings


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Units:
    """Records of finished units in ``out/units`` (the restart bookkeeping)."""

    def __init__(self, out: Path):
        from codetransfer.trained.checks import read_record

        self.folder = out / "units"
        for p in sorted(self.folder.glob("*.json")):  # a damaged record is refused before any unit works
            read_record(p, "unit record")

    def done(self, name: str, key: str) -> bool:
        p = self.folder / f"{name}.json"
        from codetransfer.trained.checks import read_record

        return p.exists() and read_record(p, "unit record").get("key") == key

    def run(self, name: str, key: str, work) -> bool:
        """Call ``work()`` unless unit ``name`` finished with ``key``; record it; True when it worked."""
        if self.done(name, key):
            return False
        t0 = time.time()
        work()
        self.finish(name, key, time.time() - t0)
        return True

    def finish(self, name: str, key: str, seconds: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        p = self.folder / f"{name}.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "seconds": round(seconds, 1)}))
        os.replace(tmp, p)


def _cli(args: list[str]) -> None:
    """Run one ``codetransfer`` command in-process; its CodetransferError propagates."""
    from codetransfer import cli

    parser = cli.build_parser_for(args[0])
    ns = parser.parse_args(args)
    code = ns._run(ns)
    if code:
        raise CodetransferError(f"stage command 'codetransfer {' '.join(args)}' failed with exit status {code}")


def _merge(parts: list[Path], dest: Path) -> pd.DataFrame | None:
    from codetransfer.trained.checks import read_table

    tables = [read_table(p, "unit table") for p in parts if p.exists()]
    if not tables:
        return None
    table = pd.concat(tables, ignore_index=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, dest)
    return table


def _merge_eval(score_parts: list[Path], loss_parts: list[Path], results: Path, settings: JobSettings) -> None:
    """The grid's eval tables from the per-run units' scores (the same tables one ``codetransfer eval`` writes)."""
    from codetransfer.commands import write_tables
    from codetransfer.commands.eval import eval_tables

    from codetransfer.trained.checks import read_table

    scores = pd.concat([read_table(p, "unit table") for p in score_parts], ignore_index=True)
    losses = [read_table(p, "unit table") for p in loss_parts if p.exists()]
    losses = pd.concat(losses, ignore_index=True) if losses else None
    table, summary = eval_tables(scores, losses, settings.baseline, 2000, settings.seed)
    write_tables(results, {"eval.parquet": table, "summary.csv": summary, "scores.parquet": scores})


def _curve_args(run, settings: JobSettings) -> list[str]:
    """``codetransfer eval`` flags that add ``run``'s learning curve; [] when it kept no checkpoints."""
    from codetransfer.trained.runs import run_checkpoints

    if len(run_checkpoints(run)) < 2:
        return []
    return ["--checkpoints", "--curve-items", str(settings.curve_items),
            "--curve-max-difficulty", str(settings.curve_max_difficulty)]


def _merge_learning(parts: list[Path], results: Path, settings: JobSettings) -> None:
    """``results/learning.parquet`` (and its per-item ``learning_scores.parquet``) from the per-run eval
    units' checkpoint scores; nothing when no run kept checkpoints."""
    if not parts:
        return
    from codetransfer.analysis.learning import learning_table_from_scores
    from codetransfer.commands import write_tables

    from codetransfer.trained.checks import read_table

    scores = pd.concat([read_table(p, "unit table") for p in parts], ignore_index=True)
    table = learning_table_from_scores(scores, 2000, seed=settings.seed)
    write_tables(results, {"learning.parquet": table, "learning_scores.parquet": scores})


def _fitting_difficulty(task: str, run, settings: JobSettings) -> int:
    """The hardest level <= settings.probe_max_difficulty whose items all fit the run's context."""
    from codetransfer.analysis.evaluate import fit_to_context
    from codetransfer.tasks import get_task
    from codetransfer.trained.tokenizer import load_tokenizer

    from codetransfer.commands import items_up_to

    n_ctx = run.record["model"]["n_ctx"]
    family = get_task(task)
    tokenizer = load_tokenizer(run.path)
    best = None
    for d in sorted(d for d in family.difficulties if d <= settings.probe_max_difficulty):
        # exactly the items the probe sweep will draw at this limit, and their twins (probes read twins too)
        generated = items_up_to(family, settings.probe_items, settings.seed, d)
        items = {task: generated + [it.twin for it in generated if it.twin is not None]}
        kept, _ = fit_to_context(items, tokenizer, n_ctx)
        if len(kept.get(task, [])) < len(items[task]):
            break
        best = d
    if best is None:
        raise CodetransferError(f"{task}: no difficulty level fits the models' context n_ctx={n_ctx}")
    return best


def run_job(grid_spec: str, out: str | Path, settings: JobSettings = JobSettings(), device: str = "cpu",
            stages: tuple[str, ...] = STAGES, log=print, jobs: int = 1) -> dict:
    """Run the main job; returns ``{stage: seconds}``. See the module docstring."""
    from codetransfer.trained import find_runs, load_grid, train_grid

    grid = load_grid(grid_spec)
    out = Path(out)
    results = out / "results"
    timings: dict[str, float] = {}
    skey = asdict(settings)

    def stage(name: str):
        class _S:
            def __enter__(self_):
                self_.t0 = time.time()
                log(f"== {name}")

            def __exit__(self_, *exc):
                if exc[0] is None:
                    timings[name] = time.time() - self_.t0
                    log(f"== {name}: done in {timings[name]:.0f}s")

        return _S()

    if "train" in stages:
        with stage("train"):
            train_grid(grid, out, device=device, log=log, jobs=jobs)
    runs = [r for r in find_runs(out, complete_only=True) if r.recipe in {x.name for x in grid.recipes}]
    if not runs:
        raise CodetransferError(f"{out}: no complete runs of grid '{grid.name}'; run the train stage first")
    units = Units(out)
    run_key = {r.name: r.record["recipe_hash"] for r in runs}
    results.mkdir(parents=True, exist_ok=True)
    seed = str(settings.seed)

    if "eval" in stages:
        with stage("eval"):
            # one unit per run (a changed recipe re-scores only its runs); the grid tables come from their scores
            score_parts, loss_parts, curve_parts, worked = [], [], [], False
            for r in runs:
                name = f"eval-{r.name}"
                dest = results / "units" / name
                curve = _curve_args(r, settings)  # learning curves of the runs that kept checkpoints
                key = _hash(["eval", skey, r.name, run_key[r.name]] + curve)
                def work():
                    _cli(["eval", "--runs", str(r.path), "--out", str(dest), "--n-items", str(settings.eval_items),
                          "--fit-context", "--seed", seed, "--device", device, "--heldout-windows", "32",
                          "--n-boot", "200", *curve])

                if units.run(name, key, work):
                    worked = True
                score_parts.append(dest / "scores.parquet")
                loss_parts.append(dest / "losses.parquet")
                if curve:
                    curve_parts.append(dest / "learning_scores.parquet")
            _merge_eval(score_parts, loss_parts, results, settings)
            if not worked:
                log("eval: up to date")
            _merge_learning(curve_parts, results, settings)
    if "probe" in stages:
        with stage("probe"):
            # one unit per run, like patching: a changed recipe re-probes only its runs
            parts, worked = [], False
            for r in runs:
                name = f"probe-{r.name}"
                dest = results / "units" / name
                key = _hash(["probe", skey, r.name, run_key[r.name]])
                def work():  # the sweep redoes parts made from other settings or an older model of this name
                    hardest = min(_fitting_difficulty(t, r, settings) for t in settings.probe_tasks.split(","))
                    _cli(["probe", "--runs", str(r.path), "--tasks", settings.probe_tasks, "--sites",
                          settings.probe_sites, "--out", str(dest), "--n-items", str(settings.probe_items),
                          "--max-difficulty", str(hardest), "--item-seed", seed, "--seeds", "0", "--drop-stores",
                          "--random-baseline", "--device", device])

                if units.run(name, key, work):
                    worked = True
                parts.append(dest / "probes.parquet")
            _merge(parts, results / "probes.parquet")
            if not worked:
                log("probe: up to date")

    if "patch" in stages:
        with stage("patch"):
            parts_within, parts_rendering, parts_cross = [], [], []
            for r in runs:
                name = f"patch-{r.name}"
                dest = results / "units" / name
                key = _hash(["patch", skey, r.name, run_key[r.name]])
                def work():
                    _cli(["patch", "--runs", str(r.path), "--task", settings.patch_task, "--sites",
                          settings.patch_sites, "--out", str(dest), "--cross-rendering", "--n-items",
                          str(settings.patch_items), "--difficulty", str(settings.patch_difficulty),
                          "--seed", seed, "--device", device])

                units.run(name, key, work)
                parts_within.append(dest / "patching.parquet")
                parts_rendering.append(dest / "cross_rendering.parquet")
            base = [r for r in runs if r.recipe == settings.baseline]
            for b in base:
                for a in runs:
                    if a.recipe == settings.baseline or a.seed != b.seed:
                        continue
                    name = f"cross-{a.name}-into-{b.name}"
                    dest = results / "units" / name
                    key = _hash(["cross", skey, a.name, run_key[a.name], b.name, run_key[b.name]])
                    def work():
                        _cli(["patch", "--runs", str(out), "--task", settings.patch_task, "--sites",
                              settings.patch_sites, "--out", str(dest), "--cross-model", a.name, b.name, "--cross-model-only",
                              "--n-items", str(settings.patch_items), "--difficulty", str(settings.patch_difficulty),
                              "--seed", seed, "--device", device])

                    units.run(name, key, work)
                    parts_cross.append(dest / "cross_model.parquet")
            _merge(parts_within, results / "patching.parquet")
            _merge(parts_rendering, results / "cross_rendering.parquet")
            _merge(parts_cross, results / "cross_model.parquet")

    if "attention" in stages:
        with stage("attention"):
            parts, over_training = [], []
            for r in runs:
                name = f"attention-{r.name}"
                dest = results / "units" / name
                with_checkpoints = ["--checkpoints"] if _curve_args(r, settings) else []  # head roles over training
                key = _hash(["attention", skey, r.name, run_key[r.name]] + with_checkpoints)
                def work():
                    hardest = min(_fitting_difficulty(t, r, settings) for t in settings.attention_tasks.split(","))
                    _cli(["attention", "--runs", str(r.path), "--tasks", settings.attention_tasks, "--out", str(dest),
                          "--max-difficulty", str(hardest), "--n-items", str(settings.attention_items),
                          "--seed", seed, "--device", device, *with_checkpoints])

                units.run(name, key, work)
                parts.append(dest / "attention.parquet")
                if with_checkpoints:
                    over_training.append(dest / "attention_over_training.parquet")
            _merge(parts, results / "attention.parquet")
            if over_training:
                _merge(over_training, results / "attention_over_training.parquet")

    if "report" in stages:
        with stage("report"):
            from codetransfer.report import write_report

            report = write_report(out, grid, settings)
            timings["report_path"] = str(report)
    return timings
