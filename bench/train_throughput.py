"""Training throughput: our trainer vs a minimal plain-PyTorch loop, and model FLOPs utilisation.

Trains the same model shape for the same steps with ``codetransfer.trained.train.train_run`` and with
the smallest correct loop (AdamW, clipping, same loss), in one process, and prints the ratio of
tokens/s (median per-step time after warm-up) and our tokens/s as a fraction of the fp32 matmul
FLOP/s measured on this machine. Targets on 2 CPU cores: ratio >= 0.95, utilisation >= 0.6.

    python bench/train_throughput.py [--steps 40] [--layers 4 --d-model 256 --batch 16 --ctx 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from codetransfer.trained.config import GridConfig, LRSchedule, ModelConfig, Phase, Recipe, SourceConfig, TrainConfig
from codetransfer.trained.model import build_model, flops_per_token
from codetransfer.trained.train import make_optimizer, token_losses, train_run


def matmul_peak(n: int = 1024, seconds: float = 3.0) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        best = max(best, 10 * 2 * n**3 / (time.perf_counter() - t))
    return best


def plain_loop(grid: GridConfig, vocab: int, tokens: np.ndarray, steps: int) -> list[float]:
    """The minimal loop: same model, optimizer, loss; contiguous rows; returns per-step seconds."""
    model = build_model(grid.model, vocab, seed=0).train()
    opt = make_optimizer(model, grid)
    for g in opt.param_groups:
        g["lr"] = 1e-3
    b, t = grid.train.batch_size, grid.model.n_ctx
    times = []
    for s in range(steps):
        t0 = time.perf_counter()
        x = torch.from_numpy(tokens[s * b * t : (s + 1) * b * t].astype(np.int64).reshape(b, t))
        token_losses(model, x).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args()

    steps = args.steps + args.warmup
    grid = GridConfig(
        name="bench",
        model=ModelConfig(n_layers=args.layers, d_model=args.d_model, n_heads=max(1, args.d_model // 64),
                          d_mlp=4 * args.d_model, n_ctx=args.ctx),
        tokenizer=None,  # not used: the token stream below is synthetic
        sources={"a": SourceConfig(kind="files", path="-")},
        recipes=(Recipe("r", (Phase("p", {"a": 1.0}, (steps + 1) * args.batch * args.ctx, LRSchedule()),)),),
        train=TrainConfig(batch_size=args.batch, eval_every=0, save_every=10**9),
    )
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, args.vocab, size=(steps + 1) * args.batch * args.ctx, dtype=np.uint16)
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "data"
        data.mkdir()
        np.save(data / "a.train.npy", tokens)
        np.save(data / "a.heldout.npy", tokens[: args.ctx * 4])
        (data / "manifest.json").write_text(json.dumps({"vocab_size": args.vocab}))
        run = Path(d) / "run"
        run.mkdir()
        t0 = time.perf_counter()
        train_run(grid, grid.recipes[0], 0, data, run, stop_after_steps=steps, progress=False)
        ours_wall = time.perf_counter() - t0
        per_step = [args.batch * args.ctx / json.loads(ln)["tokens_per_s"]
                    for ln in (run / "metrics.jsonl").read_text().splitlines()][args.warmup:]
    plain = plain_loop(grid, args.vocab, tokens, steps)[args.warmup:]
    tok = args.batch * args.ctx
    ours_tps, plain_tps = tok / statistics.median(per_step), tok / statistics.median(plain)
    peak = matmul_peak()
    fpt = flops_per_token(grid.model, args.vocab, args.ctx)
    print(f"shape: {args.layers} layers, d_model {args.d_model}, vocab {args.vocab}, batch {args.batch}x{args.ctx}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"ours   {ours_tps:10,.0f} tokens/s   (whole call incl. model build: {steps * tok / ours_wall:,.0f})")
    print(f"plain  {plain_tps:10,.0f} tokens/s")
    print(f"ratio ours/plain: {ours_tps / plain_tps:.3f}   (target >= 0.95)")
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s; model FLOPs/token {fpt / 1e6:.2f}M")
    print(f"MFU ours {ours_tps * fpt / peak:.3f}   plain {plain_tps * fpt / peak:.3f}   (target >= 0.6)")


if __name__ == "__main__":
    main()
