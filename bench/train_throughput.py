"""Training throughput: our trainer vs a minimal plain-PyTorch loop, and model FLOPs utilisation.

Trains the same model shape for the same steps with ``codetransfer.trained.train.train_run`` and with
the smallest correct loop (AdamW, clipping, same loss, same micro-batching), in one process, and
prints the ratio of tokens/s (median per-step time after warm-up) and our tokens/s as a fraction of
the matmul FLOP/s measured on this machine (fp32 on a CPU; the chosen precision on a GPU). Targets on
2 CPU cores: ratio >= 0.95, utilisation >= 0.6.

Precision: ``train_run`` itself trains fp32 on a CPU and under bf16 autocast on CUDA. ``--precision``
overrides that for both loops of this benchmark (it replaces the trainer's autocast context), so fp32
on CUDA and bf16 on a CPU can be measured too.

``--preset gpu`` takes the model shape, vocabulary, batch and gradient accumulation of a shipped grid
and also prints the projected wall time of the whole grid at the measured rate (the token budgets of
all runs, with the phases that recipes share trained once, as ``train_grid`` does).

    python bench/train_throughput.py [--steps 40] [--layers 4 --d-model 256 --batch 16 --ctx 256]
    python bench/train_throughput.py --device cuda --precision bf16 --preset gpu --steps 20 --peak-tflops 790
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from codetransfer.trained import train as train_module
from codetransfer.trained.config import GridConfig, LRSchedule, ModelConfig, Phase, Recipe, SourceConfig, TrainConfig
from codetransfer.trained.model import build_model, flops_per_token
from codetransfer.trained.train import make_optimizer, phase_steps, token_losses, train_run

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def autocast_for(device: torch.device, precision: str):
    """The autocast context of ``precision`` on ``device`` (fp32: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, precision: str, seconds: float = 3.0) -> float:
    """Best FLOP/s of square matmuls in ``precision`` (n=1024 on a CPU, 8192 on a GPU)."""
    n = 8192 if device.type == "cuda" else 1024
    dtype = DTYPES[precision]
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(device)
        best = max(best, 10 * 2 * n**3 / (time.perf_counter() - t))
    return best


def plain_loop(
    grid: GridConfig, vocab: int, tokens: np.ndarray, steps: int, device: torch.device, precision: str
) -> list[float]:
    """The minimal loop: same model, optimizer, loss, micro-batches; contiguous rows; per-step seconds."""
    model = build_model(grid.model, vocab, seed=0).to(device).train()
    opt = make_optimizer(model, grid)
    for g in opt.param_groups:
        g["lr"] = 1e-3
    b, t, accum = grid.train.batch_size, grid.model.n_ctx, grid.train.grad_accum
    micro = b // accum
    times = []
    for s in range(steps):
        sync(device)
        t0 = time.perf_counter()
        x = torch.from_numpy(tokens[s * b * t : (s + 1) * b * t].astype(np.int64).reshape(b, t)).to(device)
        for k in range(accum):
            with autocast_for(device, precision):
                (token_losses(model, x[k * micro : (k + 1) * micro]).mean() / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t0)
    del model, opt
    return times


def grid_tokens(grid: GridConfig) -> tuple[int, int]:
    """``(tokens trained, runs)`` for the whole grid: every (recipe, seed), shared phases once.

    Mirrors ``train_grid``: a phase prefix ``phases[:k+1]`` (not a recipe's last phase) that several
    recipes start with is trained by the first of them and branched from by the others; token budgets
    are rounded up to whole optimizer steps as ``train_run`` does.
    """
    t = grid.train
    key = lambda phases: json.dumps([dataclasses.asdict(p) for p in phases], sort_keys=True)  # noqa: E731
    uses: dict[str, int] = {}
    for r in grid.recipes:
        for k in range(1, len(r.phases)):
            uses[key(r.phases[:k])] = uses.get(key(r.phases[:k]), 0) + 1
    shared = {k for k, n in uses.items() if n > 1}
    total = 0
    for _seed in grid.seeds:
        trained: set[str] = set()
        for r in grid.recipes:
            start = 0
            for k in range(len(r.phases) - 1, 0, -1):
                if key(r.phases[:k]) in trained:
                    start = k
                    break
            total += (
                sum(phase_steps(p, t.batch_size, grid.model.n_ctx) for p in r.phases[start:])
                * t.batch_size
                * grid.model.n_ctx
            )
            trained |= {key(r.phases[:k]) for k in range(1, len(r.phases)) if key(r.phases[:k]) in shared}
    return total, len(grid.recipes) * len(grid.seeds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument(
        "--grad-accum",
        type=int,
        default=None,
        help="micro-batches per step (default 1, or the preset's); batch/grad_accum rows per forward",
    )
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument(
        "--preset",
        default=None,
        help="take shape, vocab, batch and grad_accum from this shipped grid "
        "(tiny, small, gpu) and project the whole grid's wall time",
    )
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...); default cpu")
    ap.add_argument(
        "--precision",
        choices=sorted(DTYPES),
        default=None,
        help="fp32 or bf16 (autocast); default: what train_run does (fp32 on CPU, bf16 on CUDA)",
    )
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="also report MFU against this nominal peak (TFLOP/s), e.g. 790 for bf16 on an H200",
    )
    ap.add_argument("--no-plain", action="store_true", help="skip the plain loop (no ratio)")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {args.device}: CUDA is not available here; use --device cpu")
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    steps = args.steps + args.warmup
    if args.preset:
        from codetransfer.trained.presets import preset

        p = preset(args.preset)
        model_cfg, vocab = p.model, p.tokenizer.vocab_size
        train_cfg = dataclasses.replace(
            p.train, eval_every=0, save_every=10**9, snapshot_every=0, grad_accum=args.grad_accum or p.train.grad_accum
        )
    else:
        p = None
        model_cfg = ModelConfig(
            n_layers=args.layers,
            d_model=args.d_model,
            n_heads=max(1, args.d_model // 64),
            d_mlp=4 * args.d_model,
            n_ctx=args.ctx,
        )
        vocab = args.vocab
        train_cfg = TrainConfig(batch_size=args.batch, grad_accum=args.grad_accum or 1, eval_every=0, save_every=10**9)
    batch, ctx = train_cfg.batch_size, model_cfg.n_ctx
    if batch % train_cfg.grad_accum:
        raise SystemExit(f"error: --grad-accum {train_cfg.grad_accum} must divide the batch size {batch}")
    grid = GridConfig(
        name="bench",
        model=model_cfg,
        tokenizer=None,  # not used: the token stream below is synthetic
        sources={"a": SourceConfig(kind="files", path="-")},
        recipes=(Recipe("r", (Phase("p", {"a": 1.0}, (steps + 1) * batch * ctx, LRSchedule()),)),),
        train=train_cfg,
    )
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, vocab, size=(steps + 1) * batch * ctx, dtype=np.uint16)
    tok = batch * ctx
    if device.type == "cuda":
        print(
            f"device: {torch.cuda.get_device_name(device)}; tf32 matmul allowed: "
            f"{torch.backends.cuda.matmul.allow_tf32}",
            flush=True,
        )
    print(
        f"shape: {model_cfg.n_layers} layers, d_model {model_cfg.d_model}, heads {model_cfg.n_heads}, "
        f"d_mlp {model_cfg.d_mlp}, vocab {vocab}, batch {batch}x{ctx} in {train_cfg.grad_accum} micro-batches, "
        f"{precision}, {device}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "data"
        data.mkdir()
        np.save(data / "a.train.npy", tokens)
        np.save(data / "a.heldout.npy", tokens[: ctx * 4])
        (data / "manifest.json").write_text(json.dumps({"vocab_size": vocab}))
        run = Path(d) / "run"
        run.mkdir()
        t0 = time.perf_counter()
        # the trainer's own autocast choice is replaced by the requested precision
        with mock.patch.object(train_module, "_autocast", lambda dev: autocast_for(torch.device(dev), precision)):
            train_run(grid, grid.recipes[0], 0, data, run, device=device, stop_after_steps=steps, progress=False)
        sync(device)
        ours_wall = time.perf_counter() - t0
        records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        per_step = [tok / r["tokens_per_s"] for r in records][args.warmup :]
        losses = [r["loss"] for r in records]
    if device.type == "cuda":
        torch.cuda.empty_cache()
    ours_tps = tok / statistics.median(per_step)
    print(
        f"ours   {ours_tps:12,.0f} tokens/s   (whole call incl. model build: {steps * tok / ours_wall:,.0f}); "
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps",
        flush=True,
    )
    if not args.no_plain:
        plain = plain_loop(grid, vocab, tokens, steps, device, precision)[args.warmup :]
        plain_tps = tok / statistics.median(plain)
        print(f"plain  {plain_tps:12,.0f} tokens/s")
        print(f"ratio ours/plain: {ours_tps / plain_tps:.3f}   (target >= 0.95)")
    peak = matmul_peak(device, precision)
    fpt = flops_per_token(model_cfg, vocab, ctx)
    print(f"{precision} matmul peak measured: {peak / 1e12:.2f} TFLOP/s; model FLOPs/token {fpt / 1e6:.2f}M")
    line = f"MFU ours {ours_tps * fpt / peak:.3f} of measured"
    if not args.no_plain:
        line += f"   plain {plain_tps * fpt / peak:.3f}"
    if args.peak_tflops:
        line += f"   | ours {ours_tps * fpt / (args.peak_tflops * 1e12):.3f} of nominal {args.peak_tflops:g} TFLOP/s"
    print(line + ("   (target >= 0.6)" if device.type == "cpu" else ""))
    if p is not None:
        total, n_runs = grid_tokens(p)
        hours = total / ours_tps / 3600
        print(
            f"grid '{p.name}': {n_runs} runs, {total:,} tokens to train (shared phases once) -> "
            f"{hours:.1f} h at {ours_tps:,.0f} tokens/s on one device ({hours / n_runs * 60:.0f} min per run on "
            f"average; evaluation and checkpoint time not included)"
        )


if __name__ == "__main__":
    main()
