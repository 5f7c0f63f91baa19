"""Does the induction warm-up plant the lookup circuit at a preset's shape?

Builds the preset's model at its tokenizer's vocabulary size, runs the warm-up (``trained/warmup.py``) and prints
the copy loss every 100 steps and, every 250, the induction loss on repeated random tokens with the best
previous-token and induction score per layer. Uniform guessing is ln(vocab - 3) nats; a planted circuit gives a
copy loss below 1 and an induction head above 0.5 (the tiny shape: 0.16 and 0.9 at 1,000 steps).

    python bench/warmup_shape.py small --lr 2e-3 --steps 1000     # 744 s on one CPU core: stays at 8.32 nats
    python bench/warmup_shape.py small                            # the preset's 2,000 steps at lr 5e-4: planted
    python bench/warmup_shape.py small --rows 256 --device cuda    # rows scaled to the vocabulary (tiny: 32 / 509)
    python bench/warmup_shape.py small --vocab 512 --lr 5e-4       # one factor of the shape at a time
    python bench/warmup_shape.py small --model '{"n_layers": 2}'   # ModelConfig fields overridden
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from codetransfer.analysis.attention import induction_loss, pattern_scores, repeated_random_tokens
from codetransfer.trained.model import build_model
from codetransfer.trained.presets import preset
from codetransfer.trained.warmup import N_SPECIAL, ROWS, induction_warmup


def measure(model, probe) -> tuple[float, list[float], list[float]]:
    """Induction loss on ``probe``, best previous-token and best induction score per layer. Attention patterns
    need eager attention; the model goes back to its own implementation afterwards, so that the warm-up between
    two measurements trains as the runs' does (with eager attention left on, the tiny warm-up of seed 0 ended at
    copy loss 0.148 instead of the runs' 0.182: the same maths, other rounding)."""
    attn, was = model.config._attn_implementation, model.training
    model.config._attn_implementation = "eager"
    model.eval()
    try:
        with torch.no_grad():
            out = model(input_ids=probe, output_attentions=True)
    finally:
        model.config._attn_implementation = attn
        model.train(was)
    s = pattern_scores(torch.stack(out.attentions), probe, scores=["induction", "previous_token"])
    best = {k: [round(v, 3) for v in s[k].nanmean(0).max(dim=-1).values.tolist()] for k in s}
    return round(induction_loss(out.logits, probe).mean().item(), 3), best["previous_token"], best["induction"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", nargs="?", default="small")
    ap.add_argument("--seeds", default="0", help="comma-separated init seeds")
    ap.add_argument("--steps", type=int, help="warm-up steps (default: the preset's train.induction_warmup)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, default=ROWS, help=f"rows per step (default {ROWS}, the runs' warm-up)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--every", type=int, default=250, help="steps between head scores")
    ap.add_argument("--vocab", type=int, help="model vocabulary (default: the preset's tokenizer's)")
    ap.add_argument("--lr", type=float, help="warm-up learning rate (default: the preset's)")
    ap.add_argument("--model", default="{}", help="JSON of ModelConfig fields to override")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    grid = preset(args.preset)
    grid = dataclasses.replace(grid, model=dataclasses.replace(grid.model, **json.loads(args.model)))
    vocab = args.vocab or grid.tokenizer.vocab_size
    lr = args.lr or grid.train.induction_warmup_lr
    steps = args.steps or grid.train.induction_warmup or 1000
    print(f"{args.preset}: {grid.model}, vocabulary {vocab}, lr {lr}, {args.rows} rows x {steps} steps", flush=True)
    probe = repeated_random_tokens(list(range(N_SPECIAL, vocab)), 16, 20, seed=1).to(args.device)
    for seed in (int(s) for s in args.seeds.split(",")):
        model = build_model(grid.model, vocab, seed=seed).to(args.device)
        print(f"{args.preset} seed {seed}: before (induction loss, previous-token, induction) {measure(model, probe)}")
        t0 = time.time()

        def log(k: int, loss: float) -> None:
            if k % 100 == 0:
                print(f"  step {k}: copy loss {loss:.3f}, {time.time() - t0:.0f}s", flush=True)
            if k % args.every == 0:
                print(f"    {measure(model, probe)}", flush=True)

        induction_warmup(model, vocab, steps, lr, seed, args.device, log, rows=args.rows)
        print(f"{args.preset} seed {seed}: after {measure(model, probe)}, {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
