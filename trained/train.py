"""The training loop: one run = one recipe (a list of phases) on one seed.

Flat and plain PyTorch: AdamW (no decay on biases and norms), gradient clipping, gradient
accumulation, bf16 autocast on CUDA, a deterministic data order from the seed (see ``data.Mixer``),
per-source training loss and held-out validation loss logged to ``metrics.jsonl``, and a progress
bar with tokens/s and ETA. The optimizer, its step counter and the learning-rate schedule carry
across phases.

Resumable state is written atomically to ``state/step-N/`` (weights as safetensors, optimizer and
RNG states as tensors loaded with ``weights_only=True``, the data cursor as JSON) and published by
replacing ``state/LATEST``; a crash during a save leaves the previous state intact. A run killed at
any moment and restarted with the same command ends with weights bit-identical to an uninterrupted
run on the same device.

Data parallel: launched under ``torchrun``, each process takes rows ``rank::world`` of the same
global batch and DDP averages gradients (gloo on CPU, NCCL on CUDA); only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from codetransfer.errors import CodetransferError
from codetransfer.trained.config import GridConfig, LRSchedule, Phase, Recipe, TrainConfig, warmup_rows
from codetransfer.trained.data import Mixer, load_tokens
from codetransfer.trained.model import build_model


@dataclass
class Cursor:
    """Where a run is: everything besides weights and optimizer needed to continue exactly."""

    phase: int = 0
    """Index of the current phase."""
    step_in_phase: int = 0
    """Optimizer steps done in the current phase."""
    step: int = 0
    """Optimizer steps done in the whole run."""
    taken: dict[str, int] = field(default_factory=dict)
    """Rows taken from each source over the run (the position in each source's stream)."""
    phase_rows: dict[str, int] = field(default_factory=dict)
    """Rows taken from each source in the current phase (the mixer's deficit state)."""
    tokens_by_phase: list[dict[str, int]] = field(default_factory=list)
    """Training tokens per source, per finished or current phase."""


def phase_steps(phase: Phase, batch_size: int, n_ctx: int) -> int:
    return max(1, math.ceil(phase.tokens / (batch_size * n_ctx)))


def lr_at(s: LRSchedule, step: int, total: int) -> float:
    """Learning rate at ``step`` (0-based) of a phase of ``total`` steps."""
    warm = int(s.warmup * total)
    if step < warm:
        return s.peak * (step + 1) / warm
    if s.schedule == "constant":
        return s.peak
    frac = (step - warm) / max(1, total - warm - 1)
    if s.schedule == "linear":
        return s.peak + (s.final - s.peak) * frac
    return s.final + 0.5 * (s.peak - s.final) * (1 + math.cos(math.pi * frac))


# --------------------------------------------------------------------------------------------------
# Training state on disk


def save_state(folder: Path, model, optimizer, cursor: Cursor, keep: int = 1) -> Path:
    """Write state atomically into ``folder/step-N`` and point ``folder/LATEST`` at it."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    name = f"step-{cursor.step:08d}"
    _drop_stale_tmp(folder, ".tmp-step-*", ".LATEST-*")
    tmp = folder / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"cpu": torch.get_rng_state()}, tmp / "rng.pt")
    (tmp / "cursor.json").write_text(json.dumps(asdict(cursor)))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    final = folder / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    latest_tmp = folder / f".LATEST-{os.getpid()}"
    latest_tmp.write_text(name)
    os.replace(latest_tmp, folder / "LATEST")
    olds = sorted(p for p in folder.glob("step-*") if p.name != name)
    for old in olds[: max(0, len(olds) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _drop_stale_tmp(folder: Path, *patterns: str) -> None:
    """Remove what a killed writer left half-written in ``folder`` (one run writes a folder at a time)."""
    for pattern in patterns:
        for stale in folder.glob(pattern):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def load_state(folder: Path, model, optimizer) -> Cursor | None:
    """Restore the state published in ``folder/LATEST``; None when there is none."""
    from safetensors.torch import load_file

    latest = folder / "LATEST"
    if not latest.is_file():
        return None
    path = folder / latest.read_text().strip()
    try:
        model.load_state_dict(load_file(path / "model.safetensors"))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        torch.set_rng_state(torch.load(path / "rng.pt", weights_only=True)["cpu"])
        return Cursor(**json.loads((path / "cursor.json").read_text()))
    except Exception as e:
        raise CodetransferError(
            f"{path}: damaged training state ({type(e).__name__}: {str(e)[:120]}); delete {folder} to restart the run"
        ) from None


# --------------------------------------------------------------------------------------------------


def make_optimizer(model, grid: GridConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.ndim >= 2 and "norm" not in n and "embed" not in n else no_decay).append(p)
    t = grid.train
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.0,
        betas=(t.beta1, t.beta2),
        fused=False,
        foreach=True,
    )


def token_losses(model, x: torch.Tensor) -> torch.Tensor:
    """Per-row mean next-token loss of rows ``x`` (batch, n_ctx)."""
    logits = model(input_ids=x).logits[:, :-1]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), x[:, 1:].reshape(-1), reduction="none")
    return loss.view(x.size(0), -1).mean(1)


@torch.no_grad()
def validation_losses(model, heldout: dict[str, np.ndarray], n_ctx: int, n_tokens: int, device, batch: int = 16):
    """Mean loss on the first ``n_tokens`` held-out tokens of each source (fixed windows)."""
    was_training = model.training
    model.eval()
    out = {}
    for s, arr in heldout.items():
        n = max(1, min(len(arr) // n_ctx, n_tokens // n_ctx))
        rows = torch.from_numpy(np.asarray(arr[: n * n_ctx], dtype=np.int64).reshape(n, n_ctx))
        losses = []
        for i in range(0, n, batch):
            with _autocast(device):
                losses.append(token_losses(model, rows[i : i + batch].to(device)))
        out[s] = float(torch.cat(losses).mean())
    model.train(was_training)
    return out


def _autocast(device):
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Progress:
    """A tqdm bar over tokens with tokens/s and ETA (quiet when ``enabled`` is False)."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit="tok",
                unit_scale=True,
                dynamic_ncols=True,
                file=sys.stderr,
                mininterval=1.0,
            )

    def update(self, n: int, **post):
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(post, refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()


DATA_ORDER_TAG = 0x64617461
"""Last entry of the seed sequence of a data order's permutation (``(seed, data_seed, phase, tag)``), so that it
is drawn from a stream of its own."""

THREADS_PER_RUN = 1
"""Torch CPU threads of one run, however it is started (results depend on the thread count)."""


@contextlib.contextmanager
def run_threads(device, threads: int = THREADS_PER_RUN):
    """Work with ``threads`` torch threads on CPU (restored afterwards); unchanged on GPU."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_run(*args, device: str | torch.device = "cpu", **kwargs) -> Cursor:
    """Train (or continue) one run with :data:`THREADS_PER_RUN` CPU threads; see :func:`_train_run` for the
    arguments. Every way of training a run (one process, worker processes, a test) gets the same thread count,
    so the same weights."""
    with run_threads(device):
        return _train_run(*args, device=device, **kwargs)


def _train_run(
    grid: GridConfig,
    recipe: Recipe,
    seed: int,
    data_dir: Path,
    run_dir: Path,
    *,
    device: str | torch.device = "cpu",
    start_from: Path | None = None,
    start_phase: int = 0,
    branch_dirs: dict[int, Path] | None = None,
    stop_after_steps: int | None = None,
    progress: bool = True,
    data_seed: int = 0,
    data_from: int = 0,
) -> Cursor:
    """Train (or continue) one run; returns the final cursor.

    ``data_seed``: with a value > 0, the phases from index ``data_from`` on (those after the shared prefix) take
    their rows in another order (:meth:`~codetransfer.trained.data.Mixer.reordered_rows`, seeded by ``seed``,
    ``data_seed`` and the phase index); the earlier phases and the initialisation are those of ``seed``.

    ``start_from``: a state folder (a branch) to start from at phase ``start_phase`` when the run has no
    state of its own. ``branch_dirs``: phase index -> folder where the state at the end of that phase is
    published for other recipes that share the phases so far. ``stop_after_steps``: stop early (tests).
    """
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if dist else 0
    world = torch.distributed.get_world_size() if dist else 1
    t = grid.train
    n_ctx = grid.model.n_ctx
    if t.batch_size % (world * t.grad_accum):
        raise CodetransferError(
            f"train.batch_size: {t.batch_size} must be divisible by processes x grad_accum = {world} x {t.grad_accum}"
        )
    tokenizer_vocab = json.loads((data_dir / "manifest.json").read_text())["vocab_size"]
    model = build_model(grid.model, vocab_size=tokenizer_vocab, seed=seed).to(device)
    model.train()
    optimizer = make_optimizer(model, grid)
    state_dir = run_dir / "state"
    cursor = load_state(state_dir, model, optimizer)
    fresh = cursor is None and start_from is None
    if cursor is None and start_from is not None:
        cursor = load_state(start_from, model, optimizer)
        cursor.phase, cursor.step_in_phase, cursor.phase_rows = start_phase, 0, {}
    cursor = cursor or Cursor()
    ddp_model = model
    if dist:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model)

    sources = sorted({s for p in recipe.phases for s in p.weights()})
    streams = {s: load_tokens(data_dir, s, "train") for s in sources}
    heldout = {s: load_tokens(data_dir, s, "heldout") for s in sorted(grid.sources)}
    mixer = Mixer(streams, n_ctx=n_ctx, seed=seed)
    metrics = run_dir / "metrics.jsonl"
    if rank == 0:
        _truncate_metrics(metrics, cursor.step)
    rows = warmup_rows(grid, recipe)
    if fresh and rows:
        _warm_up(
            model,
            grid,
            seed,
            data_dir,
            tokenizer_vocab,
            device,
            metrics if rank == 0 else None,
            progress and rank == 0,
            rows,
        )
        if dist:  # every rank warmed up alike, but CUDA's backward is not bit-reproducible: rank 0's weights win
            for tensor in model.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)
    total_tokens = sum(phase_steps(p, t.batch_size, n_ctx) for p in recipe.phases) * t.batch_size * n_ctx
    done_tokens = sum(phase_steps(p, t.batch_size, n_ctx) for p in recipe.phases[: cursor.phase])
    done_tokens = (done_tokens + cursor.step_in_phase) * t.batch_size * n_ctx
    label = f"{recipe.name} s{seed}" + (f" d{data_seed}" if data_seed else "")
    bar = Progress(total_tokens, done_tokens, label, progress and rank == 0)
    per_rank = t.batch_size // world
    micro = per_rank // t.grad_accum
    steps_run = 0

    def log(record):
        if rank == 0:
            with open(metrics, "a") as f:
                f.write(json.dumps(record) + "\n")

    while cursor.phase < len(recipe.phases):
        phase = recipe.phases[cursor.phase]
        weights = phase.weights()
        n_steps = phase_steps(phase, t.batch_size, n_ctx)
        while len(cursor.tokens_by_phase) <= cursor.phase:
            cursor.tokens_by_phase.append({})
        stopping = stop_after_steps is not None and steps_run >= stop_after_steps
        if phase.warmup != "none" and cursor.step_in_phase == 0 and not stopping:
            # not saved on its own: a run stopped before the phase's first save redoes it (deterministic per seed);
            # after a shared prefix it is cached by that prefix, so the runs that branch there compute it once
            after = branch_dirs.get(cursor.phase - 1) if branch_dirs else None
            _phase_warm_up(
                model, grid, seed, tokenizer_vocab, device, phase, cursor.step, metrics if rank == 0 else None,
                progress and rank == 0, data_dir / "warmup", after.name if after is not None else None,
            )  # fmt: skip
            if dist:  # as after the warm-up at the start: rank 0's weights win
                for tensor in model.state_dict().values():
                    torch.distributed.broadcast(tensor, src=0)
        t_last, tok_last = time.perf_counter(), 0
        while cursor.step_in_phase < n_steps:
            if stop_after_steps is not None and steps_run >= stop_after_steps:
                bar.close()
                return cursor
            lr = lr_at(phase.lr, cursor.step_in_phase, n_steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            first_row = cursor.step_in_phase * t.batch_size
            if data_seed and cursor.phase >= data_from:
                order = (seed, data_seed, cursor.phase, DATA_ORDER_TAG)
                row_sources, x_all = mixer.reordered_rows(
                    weights, n_steps * t.batch_size, first_row, t.batch_size, cursor.taken, cursor.phase_rows, order
                )
            else:
                row_sources = Mixer.allocate(weights, first_row, t.batch_size, cursor.phase_rows)
                x_all = mixer.rows(row_sources, cursor.taken)
            mine = slice(rank, None, world)
            x = torch.from_numpy(x_all[mine]).to(device)
            src = row_sources[mine]
            row_loss = torch.empty(per_rank)
            for k in range(t.grad_accum):
                sl = slice(k * micro, (k + 1) * micro)
                sync = contextlib.nullcontext() if (not dist or k == t.grad_accum - 1) else ddp_model.no_sync()
                with sync, _autocast(device):
                    losses = token_losses(ddp_model, x[sl])
                    (losses.mean() / t.grad_accum).backward()
                row_loss[sl] = losses.detach().float().cpu()
            if dist:  # log the loss of the whole global batch, rows in global order
                mine_dev = row_loss.to(device)
                parts = [torch.empty_like(mine_dev) for _ in range(world)]
                torch.distributed.all_gather(parts, mine_dev)
                row_loss = torch.stack(parts, 1).reshape(-1).cpu()
                src = row_sources
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for s in row_sources:
                cursor.tokens_by_phase[cursor.phase][s] = cursor.tokens_by_phase[cursor.phase].get(s, 0) + n_ctx
            cursor.step_in_phase += 1
            cursor.step += 1
            steps_run += 1
            tok_last += t.batch_size * n_ctx
            loss = float(row_loss.mean())
            if not math.isfinite(loss):  # the run stays partial: its record is never marked complete
                bar.close()
                raise CodetransferError(
                    f"run {run_dir.name}: the training loss became {loss} at step {cursor.step} (phase '{phase.name}'); "
                    f"lower lr.peak or set train.grad_clip, then delete {run_dir} and train again"
                )
            bar.update(t.batch_size * n_ctx, loss=f"{loss:.3f}", phase=phase.name)
            now = time.perf_counter()
            record = {
                "step": cursor.step,
                "phase": phase.name,
                "lr": lr,
                "loss": loss,
                "tokens_per_s": round(tok_last / max(now - t_last, 1e-9)),
            }
            for s in sorted(set(src)):
                record[f"loss/{s}"] = float(row_loss[[i for i, r in enumerate(src) if r == s]].mean())
            log(record)
            t_last, tok_last = now, 0
            end_of_phase = cursor.step_in_phase == n_steps
            if t.eval_every and (cursor.step % t.eval_every == 0 or end_of_phase):
                val = validation_losses(model, heldout, n_ctx, t.eval_tokens, device)
                log({"step": cursor.step, "phase": phase.name, **{f"val/{s}": v for s, v in val.items()}})
            if t.snapshot_every and cursor.step % t.snapshot_every == 0 and rank == 0:
                _snapshot(model, data_dir, run_dir / "checkpoints" / f"step-{cursor.step:08d}")
            if end_of_phase:
                cursor.phase += 1
                cursor.step_in_phase = 0
                cursor.phase_rows = {}
            if rank == 0 and (end_of_phase or cursor.step % t.save_every == 0):
                # the shared state is published before the run's own state moves past it: a kill in between
                # then leaves a run that redoes the end of the phase, never a branch that is not published
                if end_of_phase and branch_dirs and (cursor.phase - 1) in branch_dirs:
                    b = branch_dirs[cursor.phase - 1]
                    if not (b / "LATEST").exists():
                        save_state(b, model, optimizer, cursor)
                save_state(state_dir, model, optimizer, cursor)
            if end_of_phase:
                break
    bar.close()
    if rank == 0:
        _snapshot(model, data_dir, run_dir)
    return cursor


def _warm_up(
    model,
    grid: GridConfig,
    seed: int,
    data_dir: Path,
    vocab_size: int,
    device,
    metrics: Path | None,
    progress: bool,
    rows: str = "periodic",
) -> None:
    """The induction warm-up of a run started from scratch (``trained/warmup.py``) on ``rows`` (``periodic``
    or ``scrambled``), cached per seed and rows under ``data_dir/warmup``; its copy loss goes to
    ``metrics.jsonl`` as ``{"warmup_step", "copy_loss"}`` lines."""
    from codetransfer.trained.warmup import warmed_up_state

    t = grid.train
    records, log = _warmup_log(t.induction_warmup, f"s{seed} ({rows})", progress, rows=rows)
    computed, copy_loss = warmed_up_state(
        model,
        data_dir / "warmup",
        _warmup_key(grid, rows),
        vocab_size,
        t.induction_warmup,
        t.induction_warmup_lr,
        seed,
        device,
        log,
        write=metrics is not None,
        scrambled=rows == "scrambled",
    )
    if progress and computed:
        print(file=sys.stderr)
    if metrics is not None:  # rank 0 only writes and warns, under DDP
        old = [ln for ln in metrics.read_text().splitlines() if ln.strip()] if metrics.exists() else []
        if computed or not any("warmup_step" in ln for ln in old):  # a restart from scratch: replace the old lines
            records = records or [_cached_record(t, rows, copy_loss)]
            _replace_lines(metrics, old, records, lambda ln: "warmup_step" in ln)
    _check_planted(computed, rows, copy_loss, vocab_size, t, f"s{seed}", device, writes=metrics is not None)


def _cached_record(t: TrainConfig, rows: str, copy_loss: float | None, **fields) -> dict:
    """The ``metrics.jsonl`` line of a warm-up loaded from the cache: its last copy loss, as the run that
    computed it logged it (None from an older cache file)."""
    loss = None if copy_loss is None else round(copy_loss, 4)
    return {**fields, "rows": rows, "warmup_step": t.induction_warmup, "copy_loss": loss, "cached": True}


def _check_planted(
    computed: bool,
    rows: str,
    copy_loss: float | None,
    vocab_size: int,
    t: TrainConfig,
    label: str,
    device,
    writes: bool,
) -> None:
    """Act on a periodic warm-up that ended without the circuit (``copy_loss``, its last; scrambled rows plant nothing).
    With ``train.induction_warmup_required`` the run stops with that sentence as its error, whether the warm-up was
    computed or loaded from the cache; under torch.distributed every rank reads rank 0's loss, so all stop together.
    Otherwise the rank that ``writes`` says it on stderr, whatever ``progress``, if it computed the warm-up (a cached
    one was warned of by the run that computed it): a run that would learn no lookup is then seen minutes into its
    training, not after it."""
    from codetransfer.trained.warmup import not_planted

    if rows != "periodic":
        return
    if t.induction_warmup_required:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            loss = torch.tensor([math.nan if copy_loss is None else copy_loss], device=device)
            torch.distributed.broadcast(loss, src=0)
            copy_loss = None if math.isnan(loss.item()) else loss.item()
        if msg := not_planted(copy_loss, vocab_size, t.induction_warmup, t.induction_warmup_lr):
            raise CodetransferError(
                f"{label}: {msg}; stopped before training on text (train.induction_warmup_required; set it to false "
                "to train on without the circuit)"
            )
    elif computed and writes:
        if msg := not_planted(copy_loss, vocab_size, t.induction_warmup, t.induction_warmup_lr):
            print(f"warning: {label}: {msg}", file=sys.stderr, flush=True)


def _warmup_key(grid: GridConfig, rows: str) -> dict:
    """What a cached warm-up's weights depend on besides steps, lr, seed and vocabulary (``warmed_up_state``):
    the model shape and the rows (``periodic`` or ``scrambled``, at the warm-up's row shape)."""
    return {"model": asdict(grid.model), "rows": f"{rows}-32x48-v1"}


def _warmup_log(total: int, label: str, progress: bool, **fields) -> tuple[list[dict], Callable[[int, float], None]]:
    """The records a warm-up's copy loss goes to (every 50 steps and the last, with ``fields``), and the logging
    callback that fills them and, with ``progress``, prints the loss on one line of stderr."""
    records, t0 = [], time.perf_counter()

    def log(step: int, loss: float) -> None:
        if step % 50 == 0 or step == total:
            records.append({**fields, "warmup_step": step, "copy_loss": round(loss, 4)})
            if progress:
                print(
                    f"\r  induction warm-up {label}: step {step}/{total}, copy loss {loss:.3f}, "
                    f"{time.perf_counter() - t0:.0f}s",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )

    return records, log


def _replace_lines(metrics: Path, old: list[str], records: list[dict], drop: Callable[[str], bool]) -> None:
    """Rewrite ``metrics`` atomically: its ``old`` lines but those ``drop`` matches, then ``records``."""
    kept = [ln for ln in old if not drop(ln)]
    _write_atomic(metrics, "".join(ln + "\n" for ln in kept + [json.dumps(r) for r in records]))


def _phase_warm_up(
    model,
    grid: GridConfig,
    seed: int,
    vocab_size: int,
    device,
    phase: Phase,
    step: int,
    metrics,
    progress: bool,
    cache_dir: Path,
    after: str | None = None,
) -> None:
    """The induction warm-up at the start of ``phase`` (:attr:`Phase.warmup`: its ``periodic`` or ``scrambled``
    rows) on the model as the earlier phases left it, ``train.induction_warmup`` steps on its own AdamW; its copy
    loss goes to ``metrics.jsonl`` as ``{"step", "phase", "warmup_step", "copy_loss"}`` lines (those of an earlier,
    interrupted try replaced). ``after``: the key of the shared state the phase starts from (its branch folder's
    name), where there is one: the warmed-up weights are then cached in ``cache_dir`` under it, and a run that
    branches from the same state (a data-order twin) loads them (its line says ``"cached": true``)."""
    from codetransfer.trained.warmup import induction_warmup, warmed_up_state

    t = grid.train
    label = f"s{seed} ({phase.warmup}) in phase '{phase.name}'"
    records, log = _warmup_log(t.induction_warmup, label, progress, step=step, phase=phase.name, rows=phase.warmup)
    scrambled = phase.warmup == "scrambled"
    computed = True
    if after is not None:
        computed, copy_loss = warmed_up_state(
            model, cache_dir, {**_warmup_key(grid, phase.warmup), "after": after}, vocab_size, t.induction_warmup, t.induction_warmup_lr, seed, device, log,
            write=metrics is not None, scrambled=scrambled,
        )  # fmt: skip
    else:
        copy_loss = induction_warmup(
            model, vocab_size, t.induction_warmup, t.induction_warmup_lr, seed, device, log, scrambled=scrambled
        )
    if progress and computed:
        print(file=sys.stderr)
    if metrics is not None:
        if not computed:
            records = [_cached_record(t, phase.warmup, copy_loss, step=step, phase=phase.name)]
        old = [ln for ln in metrics.read_text().splitlines() if ln.strip()] if metrics.exists() else []

        def earlier_try(line: str) -> bool:
            with contextlib.suppress(json.JSONDecodeError):
                r = json.loads(line)
                return "warmup_step" in r and r.get("phase") == phase.name
            return False

        _replace_lines(metrics, old, records, earlier_try)
    _check_planted(computed, phase.warmup, copy_loss, vocab_size, t, label, device, writes=metrics is not None)


def _snapshot(model, data_dir: Path, folder: Path) -> None:
    """An HF checkpoint (safetensors + config.json) plus the grid's tokenizer in ``folder``."""
    from transformers.utils import logging as hf_logging

    folder.mkdir(parents=True, exist_ok=True)
    hf_logging.disable_progress_bar()
    # written into a temporary folder and moved file by file: a reader never sees a half-written checkpoint
    _drop_stale_tmp(folder, ".tmp-checkpoint-*")
    tmp = folder / f".tmp-checkpoint-{os.getpid()}"
    tmp.mkdir()
    model.save_pretrained(tmp, safe_serialization=True)
    for f in (data_dir / "tokenizer").iterdir():
        shutil.copy2(f, tmp / f.name)
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == "config.json"):  # config.json last
        os.replace(f, folder / f.name)
    tmp.rmdir()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after the state we resume from (they will be logged again)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = []
    for ln in lines:
        try:
            if json.loads(ln).get("step", 0) <= step:
                kept.append(ln)
        except json.JSONDecodeError:
            pass
    _write_atomic(path, "".join(ln + "\n" for ln in kept))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
