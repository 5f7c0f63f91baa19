"""Training the runs of a grid in parallel worker processes on one machine.

The method
----------
``train_grid(..., jobs=N)`` turns the grid into an ordered list of tasks and runs them on ``N`` worker
processes (``concurrent.futures.ProcessPoolExecutor``, "spawn" start method), each with one torch
thread. The tasks, per seed, in the order ``jobs=1`` trains them:

* a warm-up task when the grid has an induction warm-up (``train.induction_warmup``) and a run of the
  seed starts from scratch: it computes the seed's warm-up once (cached under ``data/warmup``), logging
  its copy loss into the metrics of the first run that needs it, exactly as that run would have;
* one task per run (``runs._train_one``; the runs of the grid's ``data_seeds`` after those of the seed's own
  data order). A run waits for the warm-up task of its seed and for every
  earlier run of its seed that shares a phase prefix with it (a branch point): when it starts, the shared
  state it may branch from is published exactly as in sequential training, so it makes the same branching
  decision. Runs that share nothing run side by side.

Every task decides what to do from the files on disk when it starts, as sequential training does, so a
grid trained with any ``jobs`` ends bit-identical (weights, metrics and records other than times). Torch's
CPU thread count changes float results (the reduction order of some kernels), so on CPU every run trains
with one torch thread, ``jobs=1`` included.

Workers write only their run's folder (atomic state saves, metrics lines) and print nothing; the parent
prints one line per finished run and an overall line with tokens/s and ETA. Workers die with the parent
(``PR_SET_PDEATHSIG``, plus a watchdog on the parent's pid), so a killed ``codetransfer train`` leaves no
run being written behind it, and the same command continues where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch

from codetransfer.errors import CodetransferError
from codetransfer.trained.config import GridConfig, Recipe, prefix_key
from codetransfer.trained.train import THREADS_PER_RUN, run_threads


@dataclass(frozen=True)
class Task:
    """One unit of work of a grid: a seed's warm-up or a run."""

    kind: str
    """'warmup' or 'run'."""
    seed: int
    """The seed."""
    recipe: str
    """The recipe (for a warm-up: the recipe of the run whose metrics get the warm-up's copy loss)."""
    after: tuple[int, ...]
    """Indices of the tasks that must finish first."""
    tokens: int
    """Training tokens this task is expected to train (0 for a warm-up): the ETA's denominator."""
    data_seed: int = 0
    """The run's data seed (grid field ``data_seeds``; 0: its init seed's own order); for a warm-up, that of the
    run whose metrics get the copy loss."""


def default_jobs() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0))


def _prefix_json(recipe: Recipe, k: int) -> str:
    return json.dumps([dataclasses.asdict(p) for p in recipe.phases[: k + 1]], sort_keys=True)


def plan_tasks(grid: GridConfig, recipes: list[Recipe], seeds, out: Path, shared: dict) -> list[Task]:
    """The ordered tasks that train the runs of ``recipes`` x ``seeds`` (x the grid's data seeds) not complete
    in ``out``. Per seed: the runs of its own data order, then those of each data seed in turn; a run with a data
    seed waits, like any run, for the earlier runs of its init seed that share a phase prefix with it (the run of
    its own recipe among them), so it finds the shared state published.

    Dependencies only point to earlier tasks, so the list order is a valid sequential order (``jobs=1``)."""
    from codetransfer.trained.runs import RUN_FILE, run_hash, run_name, shared_length
    from codetransfer.trained.train import phase_steps

    step_tokens = grid.train.batch_size * grid.model.n_ctx
    tasks: list[Task] = []
    for seed in seeds:
        warm_index = None
        seen: list[tuple[Recipe, int]] = []  # earlier runs of this seed and their task index
        for data_seed, recipe in [(0, r) for r in recipes] + [(d, r) for d in grid.data_seeds for r in recipes]:
            run_dir = out / "runs" / run_name(recipe.name, seed, data_seed)
            rec = _record(run_dir / RUN_FILE)
            this = run_hash(recipe, data_seed, shared_length(recipe, shared))
            same = rec is not None and rec.get("recipe_hash") == this
            if same and rec.get("status") == "complete":
                tasks.append(Task("run", seed, recipe.name, (), 0, data_seed))  # logs "complete, skipped"
                continue
            keys = {
                k: _prefix_json(recipe, k) for k in range(len(recipe.phases) - 1) if _prefix_json(recipe, k) in shared
            }
            after = [
                i for r, i in seen if any(_prefix_json(r, k) == key for k, key in keys.items() if k < len(r.phases) - 1)
            ]
            done_steps = _state_step(run_dir) if same else 0
            branch_k = None
            if not done_steps:
                for k in sorted(keys, reverse=True):
                    on_disk = (out / "branches" / prefix_key(grid, recipe.phases[: k + 1], seed) / "LATEST").exists()
                    if on_disk or any(_prefix_json(r, k) == keys[k] for r, _ in seen if k < len(r.phases) - 1):
                        branch_k = k
                        break
            if branch_k is not None:
                done_steps = sum(
                    phase_steps(p, grid.train.batch_size, grid.model.n_ctx) for p in recipe.phases[: branch_k + 1]
                )
            total = sum(phase_steps(p, grid.train.batch_size, grid.model.n_ctx) for p in recipe.phases)
            fresh = not done_steps
            if fresh and grid.train.induction_warmup and warm_index is None and not _distributed():
                warm_index = len(tasks)
                tasks.append(Task("warmup", seed, recipe.name, (), 0, data_seed))
            if warm_index is not None and fresh:
                after.append(warm_index)
            seen.append((recipe, len(tasks)))
            tasks.append(
                Task(
                    "run",
                    seed,
                    recipe.name,
                    tuple(sorted(set(after))),
                    max(0, total - done_steps) * step_tokens,
                    data_seed,
                )
            )
    return tasks


def _distributed() -> bool:
    """Under torchrun every rank warms its own model up inside its run (only rank 0 writes)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _record(path: Path) -> dict | None:
    """A run's record, None when it has none; a damaged one is refused (one line: delete it and train again)."""
    from codetransfer.trained.runs import read_run_record

    return read_run_record(path) if path.exists() else None


def _state_step(run_dir: Path) -> int:
    """The step of a run's saved training state (0 when it has none)."""
    try:
        name = (run_dir / "state" / "LATEST").read_text().strip()
        return int(json.loads((run_dir / "state" / name / "cursor.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return 0


# --------------------------------------------------------------------------------------------------
# Executing the tasks


def run_task(grid: GridConfig, task: Task, out: Path, shared: dict, device: str, progress: bool, log) -> dict:
    """Do one task in this process; returns ``{"tokens", "seconds"}`` (tokens trained now)."""
    from codetransfer.trained.runs import _train_one, run_name

    t0 = time.perf_counter()
    run_dir = out / "runs" / run_name(task.recipe, task.seed, task.data_seed)
    with run_threads(device):
        if task.kind == "warmup":
            computed = warm_up_seed(grid, task.seed, out / "data", run_dir, device, progress)
            return {"tokens": 0, "seconds": time.perf_counter() - t0, "computed": computed}
        before = _state_step(run_dir)
        _train_one(grid, grid.recipe(task.recipe), task.seed, out, shared, device, progress, log, task.data_seed)
    rec = _record(run_dir / "codetransfer.json") or {}
    start = before
    if not before and rec.get("branched_from"):
        k = len(rec["branched_from"].get("phases", []))
        start = sum(p["steps"] for p in rec.get("tokens_by_phase", [])[:k])
    trained = max(0, int(rec.get("steps") or 0) - start) if task.tokens else 0
    return {"tokens": trained * grid.train.batch_size * grid.model.n_ctx, "seconds": time.perf_counter() - t0}


def warm_up_seed(grid: GridConfig, seed: int, data_dir: Path, run_dir: Path, device, progress: bool) -> bool:
    """Compute (or find cached) the induction warm-up of ``seed``, as the fresh run ``run_dir`` would at its
    start, its copy loss logged into that run's metrics; True when it was computed now."""
    from codetransfer.trained.model import build_model
    from codetransfer.trained.train import _warm_up

    vocab = json.loads((data_dir / "manifest.json").read_text())["vocab_size"]
    model = build_model(grid.model, vocab_size=vocab, seed=seed).to(device)
    model.train()
    run_dir.mkdir(parents=True, exist_ok=True)
    cache = data_dir / "warmup"
    before = set(cache.glob("*.safetensors")) if cache.is_dir() else set()
    _warm_up(model, grid, seed, data_dir, vocab, device, run_dir / "metrics.jsonl", progress)
    return set(cache.glob("*.safetensors")) != before


def worker_init(parent: int) -> None:
    """In a worker: one torch thread, and die with the parent."""
    torch.set_num_threads(THREADS_PER_RUN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops the workers
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker(grid: GridConfig, task: Task, out: str, shared: dict, device: str) -> dict:
    messages: list[str] = []
    result = run_task(
        grid, task, Path(out), shared, device, False, lambda *a, **k: messages.append(" ".join(str(x) for x in a))
    )
    return {**result, "messages": messages}


def run_tasks(
    grid: GridConfig, tasks: list[Task], out: Path, shared: dict, *, device: str, jobs: int, progress: bool, log
) -> None:
    """Do ``tasks`` in order (``jobs=1``, in this process) or on ``jobs`` worker processes, each task once
    its dependencies are done; prints a line per finished run and the grid's tokens/s and ETA."""
    total = sum(t.tokens for t in tasks)
    state = {"tokens": 0, "t0": time.perf_counter(), "done": 0}
    n_runs = sum(t.tokens > 0 for t in tasks)

    def finished(task: Task, result: dict) -> None:
        from codetransfer.trained.runs import run_name

        for m in result.get("messages", []):
            log(m)
        if task.kind == "warmup":
            what = "computed" if result.get("computed") else "cached"
            log(f"induction warm-up s{task.seed}: {what} in {result['seconds']:.0f}s")
            return
        if not task.tokens:
            return
        state["tokens"] += result["tokens"]
        state["done"] += 1
        tok, sec = result["tokens"], result["seconds"]
        log(
            f"run {run_name(task.recipe, task.seed, task.data_seed)}: {tok:,} tokens in {sec:.0f}s, {tok / max(sec, 1e-9):,.0f} tokens/s"
        )
        elapsed = time.perf_counter() - state["t0"]
        rate = state["tokens"] / max(elapsed, 1e-9)
        left = max(0, total - state["tokens"])
        eta = f"ETA {left / rate:.0f}s" if rate > 0 and left else ("done" if not left else "ETA ?")
        log(
            f"grid: {state['done']}/{n_runs} runs, {state['tokens']:,}/{total:,} tokens, {rate:,.0f} tokens/s, "
            f"{elapsed:.0f}s, {eta}"
        )

    if jobs == 1:
        for task in tasks:
            finished(task, run_task(grid, task, out, shared, device, progress, log))
        return
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=worker_init, initargs=(os.getpid(),))
    pending = dict(enumerate(tasks))
    done: set[int] = set()
    running = {}
    try:
        while pending or running:
            for i in [i for i, t in pending.items() if set(t.after) <= done]:
                task = pending.pop(i)
                if task.kind == "run" and not task.tokens:
                    run_task(grid, task, out, shared, device, False, log)  # complete: skipped, in order
                    done.add(i)
                    continue
                running[pool.submit(_worker, grid, task, str(out), shared, device)] = i
            if not running:
                continue
            ready, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in ready:
                i = running.pop(f)
                finished(tasks[i], f.result())
                done.add(i)
    except BaseException:
        stop_pool(pool)  # stop the runs still training
        raise
    pool.shutdown(wait=True)


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Kill a pool's workers now (their work is abandoned) and shut it down without waiting."""
    for p in list(getattr(pool, "_processes", {}).values()):
        with contextlib.suppress(Exception):
            p.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def check_jobs(jobs: int) -> None:
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise CodetransferError(f"--jobs: expected a number of worker processes >= 1, got {jobs!r}")
    if jobs > 1 and _distributed():
        raise CodetransferError("--jobs: parallel runs and torchrun do not mix; use --jobs 1 under torchrun")
