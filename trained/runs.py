"""The run registry: train a grid into a folder, find its runs, load one for analysis.

Folder layout of ``codetransfer train GRID --out OUT``::

    OUT/grid.json                 the resolved grid (refuses a different grid in the same folder)
    OUT/data/                     shared tokenizer, token arrays per source and split, manifest.json
    OUT/branches/<key>/           training state at the end of phases shared by several recipes
    OUT/runs/<recipe>-s<seed>[-d<k>]/  one run (``-d<k>``: data seed k, grid field ``data_seeds``): HF checkpoint (config.json + model.safetensors), tokenizer,
                                  codetransfer.json (resolved recipe, manifest, status), metrics.jsonl,
                                  state/ (resumable), checkpoints/step-N/ (intermediate HF checkpoints)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

import codetransfer
from codetransfer import artifacts
from codetransfer.errors import CodetransferError, did_you_mean
from codetransfer.trained.checks import check_folder, inside, read_record, require_keys, run_folder
from codetransfer.trained.config import GridConfig, Recipe, prefix_json, prefix_key, recipe_dict, recipe_identity
from codetransfer.trained.data import data_hash, prepare_data
from codetransfer.trained.loading import load_bridge, read_json
from codetransfer.trained.train import phase_steps, train_run

RUN_FILE = "codetransfer.json"


def run_name(recipe: str, seed: int, data_seed: int = 0) -> str:
    """Folder name of a run (recipe names are checked at load time: two recipes never share a folder);
    ``-d<data_seed>`` for a run with another data order than its init seed's own."""
    return run_folder(recipe, seed, data_seed)


def recipe_hash(recipe: Recipe) -> str:
    """Identity of what a run of ``recipe`` trains (``compare_with``, bookkeeping, left out;
    :func:`~codetransfer.trained.config.recipe_identity`)."""
    return artifacts.key(recipe_identity(recipe))


def run_hash(recipe: Recipe, data_seed: int = 0, data_from: int = 0) -> str:
    """Identity of what a run trains, stored as its record's ``recipe_hash`` (the job's unit keys read it):
    :func:`recipe_hash` for a run of its init seed's own data order (``data_seed`` 0); for data seed ``k`` also
    ``k`` and ``data_from``, the phase its reordering starts at (:func:`shared_length`), so that a change of the
    grid that moves it retrains the run and redoes its analyses."""
    h = recipe_hash(recipe)
    return h if not data_seed else artifacts.key([h, "data order", data_seed, data_from])


@dataclass(frozen=True)
class RunInfo:
    """What the registry knows about one run folder."""

    name: str
    path: Path
    recipe: str
    seed: int
    status: str
    """'complete', 'partial' (state saved, not finished) or 'new'."""
    grid: str
    record: dict
    data_seed: int = 0
    """The run's data seed (grid field ``data_seeds``): 0 for the data order of its init seed ``seed``."""


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def check_out_folder(grid: GridConfig, out: Path) -> None:
    """Refuse an output folder that holds a different grid (different shape, tokenizer or sources)."""
    path = out / "grid.json"
    if path.exists():
        old = read_record(path, "grid record", f"delete {out} and train again")
        if old.get("fingerprint") != grid.fingerprint():
            raise CodetransferError(
                f"{out} holds grid '{old.get('name')}' with a different model, tokenizer, sources or training "
                f"settings than grid '{grid.name}'; use another --out folder or delete {out}"
            )


def train_grid(
    grid: GridConfig,
    out: str | Path,
    *,
    only: list[str] | None = None,
    seeds: list[int] | None = None,
    device: str = "cpu",
    progress: bool = True,
    log=print,
    jobs: int = 1,
) -> list[RunInfo]:
    """Train every (recipe, seed) and (recipe, seed, data seed) of ``grid`` that is not complete in ``out``;
    returns all runs. ``seeds`` selects init seeds (with all their data seeds).

    ``jobs``: worker processes training runs side by side (``trained/parallel.py``); any ``jobs`` gives
    bit-identical runs. On CPU every run trains with one torch thread."""
    from codetransfer.trained.parallel import check_jobs, plan_tasks, run_tasks

    check_jobs(jobs)
    out = Path(out)
    check_folder(out, "--out")
    recipes = list(grid.recipes)
    if seeds is not None:
        for s in seeds:
            if s not in grid.seeds:
                raise CodetransferError(
                    f"--seed: seed {s} is not a seed of grid '{grid.name}' "
                    f"(seeds: {', '.join(map(str, grid.seeds))}); add it to the grid's seeds"
                )
    if only:
        names = [r.name for r in grid.recipes]
        for o in only:
            if o not in names:
                raise CodetransferError(
                    f"--only: unknown recipe '{o}'{did_you_mean(o, names)}; recipes: {', '.join(names)}"
                )
        recipes = [r for r in recipes if r.name in only]
    check_out_folder(grid, out)
    t0 = time.time()
    rank = _rank()
    if rank == 0:  # under torchrun only rank 0 prepares data and writes records; the others wait
        manifest = prepare_data(grid, out / "data", log=log)
        _write_json(out / "grid.json", {"name": grid.name, "fingerprint": grid.fingerprint(), "grid": grid.to_dict()})
    _barrier()
    if rank != 0:
        manifest = read_json(out / "data" / "manifest.json", "data manifest")
    log(f"data ready in {time.time() - t0:.1f}s (vocab {manifest['vocab_size']})")
    shared = _shared_prefixes(grid)
    tasks = plan_tasks(grid, recipes, seeds if seeds is not None else grid.seeds, out, shared)
    run_tasks(grid, tasks, out, shared, device=device, jobs=jobs, progress=progress, log=log)
    return find_runs(out)


def _rank() -> int:
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_rank() if dist else 0


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _shared_prefixes(grid: GridConfig) -> dict[tuple, int]:
    """Phase prefixes (as tuples of phase dicts) used by more than one recipe -> how many."""
    counts: dict[tuple, int] = {}
    for r in grid.recipes:
        for k in range(1, len(r.phases)):
            key = prefix_json(grid, r, k)
            counts[key] = counts.get(key, 0) + 1
    return {k: v for k, v in counts.items() if v > 1}


def shared_length(grid: GridConfig, recipe: Recipe, shared: dict) -> int:
    """Phases at the start of ``recipe`` that another recipe shares (its longest prefix in ``shared``): a run with
    another data seed branches after them and reorders the phases that follow."""
    n = 0
    for k in range(len(recipe.phases) - 1):
        if prefix_json(grid, recipe, k + 1) in shared:
            n = k + 1
    return n


def _train_one(grid, recipe, seed, out, shared, device, progress, log, data_seed: int = 0):
    run_dir = inside(
        out, out / "runs" / run_name(recipe.name, seed, data_seed), f"run folder of recipe '{recipe.name}':"
    )
    record_path = run_dir / RUN_FILE
    data_from = shared_length(grid, recipe, shared)
    this = run_hash(recipe, data_seed, data_from)
    if record_path.exists():
        rec = read_run_record(record_path)
        if rec.get("status") == "complete" and rec.get("recipe_hash") == this:
            log(f"run {run_dir.name}: complete, skipped")
            return
        if rec.get("recipe_hash") != this:
            log(f"run {run_dir.name}: recipe changed, retraining")
            _barrier()
            if _rank() == 0:
                shutil.rmtree(run_dir)
            _barrier()
    run_dir.mkdir(parents=True, exist_ok=True)
    # Branch points: phase k's end state is shared when phases[:k+1] are used by several recipes.
    branch_dirs, start_from, start_phase, branched = {}, None, 0, None
    for k in range(len(recipe.phases) - 1):
        if prefix_json(grid, recipe, k + 1) in shared:
            branch_dirs[k] = out / "branches" / prefix_key(grid, recipe, k + 1, seed)
    if not (run_dir / "state" / "LATEST").exists():
        for k in sorted(branch_dirs, reverse=True):
            if (branch_dirs[k] / "LATEST").exists():
                start_from, start_phase = branch_dirs[k], k + 1
                branched = {
                    "state": str(branch_dirs[k].relative_to(out)),
                    "phases": [p.name for p in recipe.phases[: k + 1]],
                }
                log(f"run {run_dir.name}: branching from shared phases {branched['phases']}")
                break
    record = {
        "name": run_dir.name,
        "grid": grid.name,
        "grid_fingerprint": grid.fingerprint(),
        "recipe": recipe.name,
        "recipe_hash": this,
        "recipe_config": recipe_dict(recipe),
        "seed": seed,
        **({"data_seed": data_seed, "data_order_from_phase": data_from} if data_seed else {}),
        "model": dataclasses.asdict(grid.model),
        "status": "partial",
        "codetransfer_version": codetransfer.__version__,
        "torch_version": torch.__version__,
        "data_manifest_sha256": data_hash(out / "data"),
        "tokenizer_sha256": read_json(out / "data" / "manifest.json", "data manifest")["tokenizer_sha256"],
        "branched_from": branched
        if branched
        else (read_run_record(record_path).get("branched_from") if record_path.exists() else None),
    }
    if _rank() == 0:
        _write_json(record_path, record)
    _barrier()
    t0 = time.time()
    cursor = train_run(
        grid,
        recipe,
        seed,
        out / "data",
        run_dir,
        device=device,
        start_from=start_from,
        start_phase=start_phase,
        branch_dirs=branch_dirs,
        progress=progress,
        data_seed=data_seed,
        data_from=data_from,
    )
    n_ctx, bs = grid.model.n_ctx, grid.train.batch_size
    val = _last_val(run_dir / "metrics.jsonl")
    warmups = _warmups(run_dir / "metrics.jsonl")
    record.update(
        status="complete",
        steps=cursor.step,
        tokens_by_phase=[
            {"phase": p.name, "steps": phase_steps(p, bs, n_ctx), "tokens": toks}
            for p, toks in zip(recipe.phases, cursor.tokens_by_phase)
        ],
        tokens_by_source={
            s: sum(t.get(s, 0) for t in cursor.tokens_by_phase)
            for s in sorted({s for t in cursor.tokens_by_phase for s in t})
        },
        final_val_loss=val,
        **({"warmups": warmups} if warmups else {}),
        train_seconds=round(time.time() - t0, 1),
    )
    if _rank() == 0:
        _write_json(record_path, record)
    _barrier()
    log(
        f"run {run_dir.name}: complete in {time.time() - t0:.0f}s, val loss "
        + ", ".join(f"{k} {v:.3f}" for k, v in val.items())
    )


def _last_val(path: Path) -> dict[str, float]:
    val = {}
    if path.exists():
        for ln in path.read_text().splitlines():
            rec = json.loads(ln)
            val.update({k[4:]: v for k, v in rec.items() if k.startswith("val/")})
    return val


def _warmups(path: Path) -> list[dict]:
    """The induction warm-ups a run did itself, in order, as the last ``metrics.jsonl`` line of each logged it:
    its rows (``periodic`` or ``scrambled``), the phase it opened (None: the run's start) and its last copy loss
    (None for one loaded from a cache written before the loss was stored with it)."""
    last: dict = {}
    if path.exists():
        for ln in path.read_text().splitlines():
            rec = json.loads(ln)
            if "warmup_step" in rec:
                last[rec.get("phase")] = rec
    return [{"rows": r.get("rows", "periodic"), "phase": p, "copy_loss": r["copy_loss"]} for p, r in last.items()]


def last_warmup(info: RunInfo, runs: list[RunInfo] | None = None) -> dict | None:
    """The last induction warm-up a complete run's weights went through (:func:`_warmups`' fields), or None: its
    own, else, for a run branched from shared phases, the last one of those phases as the run that trained them
    logged it (:func:`branch_source`; ``runs``: the folder's complete runs, to search without reading it again)."""
    rec = info.record
    own = rec.get("warmups") or []
    if own or not rec.get("branched_from"):
        return own[-1] if own else None
    source = branch_source(info, runs)
    shared = {None, *rec["branched_from"].get("phases", [])}
    inherited = [w for w in (source.record.get("warmups") or []) if w.get("phase") in shared] if source else []
    return inherited[-1] if inherited else None


def read_run_record(path: Path) -> dict:
    """A run's ``codetransfer.json``; a damaged one (not a JSON object, no recipe or seed) is refused."""
    fix = f"delete {Path(path).parent} and train it again"
    rec = require_keys(read_record(path, "run record", fix), {"recipe": str, "seed": int}, path, "run record", fix)
    d = rec.get("data_seed", 0)
    if isinstance(d, bool) or not isinstance(d, int) or d < 0:
        raise CodetransferError(f"{path}: run record field 'data_seed' is {d!r}, not an integer >= 0; {fix}")
    return rec


def find_runs(folder: str | Path, complete_only: bool = False) -> list[RunInfo]:
    """Runs under ``folder`` (a grid output folder, its ``runs/`` folder, or one run folder)."""
    folder = Path(folder)
    if not folder.exists():
        raise CodetransferError(
            f"{folder} does not exist; train a grid first ('codetransfer train tiny --out {folder}')"
        )
    check_folder(folder, "--runs")
    if (folder / RUN_FILE).exists():
        candidates = [folder]
    else:
        base = folder / "runs" if (folder / "runs").is_dir() else folder
        candidates = sorted(p for p in base.iterdir() if (p / RUN_FILE).exists())
    runs = []
    for p in candidates:
        rec = read_run_record(p / RUN_FILE)
        info = RunInfo(
            name=p.name,
            path=p,
            recipe=rec["recipe"],
            seed=rec["seed"],
            status=rec.get("status", "new"),
            grid=rec.get("grid", ""),
            record=rec,
            data_seed=rec.get("data_seed", 0),
        )
        if not complete_only or info.status == "complete":
            runs.append(info)
    return runs


def run_checkpoints(info: RunInfo, borrow: bool = True) -> dict[int, Path]:
    """``{step: folder}`` of the HF checkpoints of a complete run, in step order: the intermediate ones
    in ``RUN/checkpoints/step-N/`` (grid field ``train.snapshot_every``) and the final model (the run
    folder itself) at the run's last step, which replaces an intermediate checkpoint of the same step.

    A run branched from shared phases (``record["branched_from"]``) did not train those phases itself,
    so with ``borrow`` the checkpoints up to the branch point come from a run of the same folder, seed
    and grid that starts with the same phases and trained them (they are the same model: the shared
    state is what the branch started from). An incomplete run has no checkpoints to offer: ``{}``.
    """
    if info.status != "complete":
        return {}
    found: dict[int, Path] = {}
    if borrow and info.record.get("branched_from"):
        found.update(_borrowed_checkpoints(info))
    folder = Path(info.path) / "checkpoints"
    if folder.is_dir():
        for p in folder.iterdir():
            name = p.name
            if p.is_dir() and name.startswith("step-") and name[5:].isdigit():
                found[int(name[5:])] = p
    last = info.record.get("steps")
    if last is not None:
        found[int(last)] = Path(info.path)
    return dict(sorted(found.items()))


def _borrowed_checkpoints(info: RunInfo) -> dict[int, Path]:
    """Checkpoints of the shared phases a branched run started from (see :func:`run_checkpoints`)."""
    rec = info.record
    k = len(rec["branched_from"].get("phases", []))
    steps = [p.get("steps") for p in rec.get("tokens_by_phase", [])[:k]]
    if len(steps) < k or None in steps:
        return {}
    source = branch_source(info)
    return {s: p for s, p in run_checkpoints(source).items() if s <= sum(steps)} if source else {}


def branch_source(info: RunInfo, runs: list[RunInfo] | None = None) -> RunInfo | None:
    """The complete run that trained the shared phases the run ``info`` branched from: of the same folder, seed
    and grid, starting with the same phases and not itself branched from them; None if there is none (or
    ``info`` did not branch). ``runs``: the folder's complete runs, where the caller has them."""
    rec = info.record
    k = len((rec.get("branched_from") or {}).get("phases", []))
    phases = rec.get("recipe_config", {}).get("phases", [])[:k]
    if k == 0 or len(phases) < k:
        return None
    for other in runs if runs is not None else find_runs(Path(info.path).parent, complete_only=True):
        o = other.record
        if (
            other.name == info.name
            or other.status != "complete"
            or other.seed != info.seed
            or o.get("grid_fingerprint") != rec.get("grid_fingerprint")
            or o.get("recipe_config", {}).get("phases", [])[:k] != phases
        ):
            continue
        if o.get("branched_from") and len(o["branched_from"].get("phases", [])) >= k:
            continue  # it branched from the same (or a longer) shared state: it did not train these phases
        return other
    return None


def check_same_grid(runs: list[RunInfo]) -> None:
    """Refuse comparisons of runs that differ in shape, tokenizer or training data.

    The data check compares the hash of the data manifest each run was trained on (it holds every
    source's provenance: file hashes of the stdlib, package versions, generator versions). Two machines
    with different Python versions prepare different ``stdlib`` code, and their runs are not one grid.
    """
    if not runs:
        return
    ref = runs[0].record
    for r in runs[1:]:
        for key, what in (("model", "model shape"), ("tokenizer_sha256", "tokenizer")):
            if r.record.get(key) != ref.get(key):
                raise CodetransferError(
                    f"runs {runs[0].name} and {r.name} differ in {what}; compare runs of one grid only"
                )
        a, b = ref.get("data_manifest_sha256"), r.record.get("data_manifest_sha256")
        if a and b and a != b:
            raise CodetransferError(
                f"runs {runs[0].name} and {r.name} were trained on different data (data hashes {a} and {b}, "
                "e.g. another Python's standard library); compare runs prepared from the same data only"
            )


@dataclass
class LoadedRun:
    """A run ready for analysis: a fresh TransformerBridge (eval mode), its tokenizer and its record."""

    bridge: object
    tokenizer: object
    info: RunInfo


def load_run(
    path: str | Path | RunInfo, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> LoadedRun:
    """Load a complete run as a TransformerBridge booted fresh from its folder, plus tokenizer.

    ``path`` is a run folder, a run info (from :func:`find_runs` or a model set), or any checkpoint
    folder saved with ``save_pretrained`` (see :mod:`codetransfer.trained.modelset`)."""
    info = path if isinstance(path, RunInfo) else None
    if info is None and not (Path(path) / RUN_FILE).exists() and (Path(path) / "config.json").is_file():
        from codetransfer.trained.modelset import folder_run  # a checkpoint codetransfer did not train

        info = folder_run(path)
    if info is None:
        found = find_runs(path)
        if len(found) != 1:
            raise CodetransferError(f"{path}: expected one run folder, found {len(found)}")
        info = found[0]
    if info.status != "complete":
        raise CodetransferError(f"run {info.name} is {info.status}, not complete; run 'codetransfer train' again")
    bridge, tokenizer = load_bridge(info.path, device=device, dtype=dtype)
    return LoadedRun(bridge=bridge, tokenizer=tokenizer, info=info)


def runs_table(folder: str | Path) -> pd.DataFrame:
    """One row per run: recipe, seed (and ``data_seed`` when some run has another data order than its init
    seed's: 0 for that own order), status, phases, the recipe's description (the question it answers), tokens
    per source, final validation loss per source, and, where some run had an induction warm-up, the rows of its
    last one (``warmup``: ``periodic`` or ``scrambled``) and that warm-up's last copy loss (``warmup_copy_loss``:
    below :data:`~codetransfer.trained.warmup.PLANTED_COPY_LOSS` a periodic warm-up planted the circuit)."""
    rows = []
    runs = find_runs(folder)
    data_seeds = any(r.data_seed for r in runs)
    complete = [r for r in runs if r.status == "complete"]
    warmup = {r.name: last_warmup(r, complete) for r in complete}
    warmups = any(warmup.values())
    for r in runs:
        rec = r.record
        row = {
            "run": r.name,
            "recipe": r.recipe,
            "seed": r.seed,
            **({"data_seed": r.data_seed} if data_seeds else {}),
            "status": r.status,
            "phases": "→".join(p["name"] for p in rec.get("recipe_config", {}).get("phases", [])),
            "steps": rec.get("steps"),
            "branched_from": "→".join(rec["branched_from"]["phases"]) if rec.get("branched_from") else "",
            "data": rec.get("data_manifest_sha256", ""),
            "description": rec.get("recipe_config", {}).get("description", ""),
        }
        if warmups:
            w = warmup.get(r.name) or {}
            row.update(warmup=w.get("rows", ""), warmup_copy_loss=w.get("copy_loss"))
        for s, n in rec.get("tokens_by_source", {}).items():
            row[f"tokens/{s}"] = n
        for s, v in rec.get("final_val_loss", {}).items():
            row[f"val/{s}"] = round(v, 4)
        rows.append(row)
    return pd.DataFrame(rows)
