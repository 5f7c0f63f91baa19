"""Benchmark: activation extraction tokens/s vs a bare ``bridge(tokens)`` forward on the same batches.

    .venv/bin/python bench/extraction.py [--layers 4] [--d-model 256] [--batches 8] [--batch 16] [--seq 128] [--threads N]

Builds a random GPT-NeoX of the given shape in a temporary folder, boots a TransformerBridge from it,
and times, over the same batches (repeats interleaved, median of each):

* ``bare``: ``bridge(tokens)`` (the reference; target: extraction at ≥ 0.8 of its tokens/s);
* ``hooks``: :func:`extract_activations` with ``method="hooks"`` (gather in forward hooks);
* ``cache``: :func:`extract_activations` with ``method="cache"`` (``run_with_cache(names_filter)``);
* ``hooks@L0``: hooks, only layer-0 sites, so the forward pass stops after block 0.

Sites: resid_pre, resid_mid, resid_post, attn_out, mlp_out and head at every layer, 4 positions per
prompt, written to an on-disk ActivationStore (the write is included in the time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from codetransfer.analysis.store import ActivationStore, extract_activations, parse_sites
from codetransfer.trained.config import ModelConfig
from codetransfer.trained.loading import load_bridge
from codetransfer.trained.model import build_model
from codetransfer.trained.tokenizer import train_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp())
    cfg = ModelConfig(
        n_layers=args.layers, d_model=args.d_model, n_heads=args.heads, d_mlp=4 * args.d_model, n_ctx=args.seq
    )
    tok = train_tokenizer(["the pen is in box A. def f(x): return x"] * 200, vocab_size=300, min_frequency=1)
    tok.save_pretrained(tmp / "m")
    build_model(cfg, vocab_size=args.vocab, seed=0).save_pretrained(tmp / "m")
    bridge, _ = load_bridge(tmp / "m", device=args.device)
    n_items = args.batches * args.batch
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, args.vocab, (n_items, args.seq), generator=g)
    positions = [sorted(torch.randperm(args.seq, generator=g)[:4].tolist()) for _ in range(n_items)]
    all_sites = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head"]
    l0_sites = [f"{k}.0" for k in all_sites]

    def bare():
        with torch.inference_mode():
            for s in range(0, n_items, args.batch):
                bridge(tokens[s : s + args.batch].to(args.device))

    def extract(method, sites):
        def go():
            names = [s.name for s in parse_sites(sites, args.layers)]
            store = ActivationStore.create(
                tmp / "store",
                run="bench",
                task="bench",
                task_version="0",
                seed=0,
                sites=names,
                d_model=args.d_model,
                n_heads=args.heads,
                capacity=4 * n_items,
                overwrite=True,
            )
            extract_activations(bridge, tokens, positions, sites, store, batch_size=args.batch, method=method)

        return go

    cases = {
        "bare": bare,
        "hooks": extract("hooks", all_sites),
        "cache": extract("cache", all_sites),
        "hooks@L0": extract("hooks", l0_sites),
    }
    for fn in cases.values():  # warm-up
        fn()
    times = {k: [] for k in cases}
    for _ in range(args.repeats):
        for k, fn in cases.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    n_tok = n_items * args.seq
    print(
        f"model: {args.layers} layers, d_model {args.d_model}, {args.heads} heads; {args.batches} batches of "
        f"{args.batch}x{args.seq} tokens; torch threads {torch.get_num_threads()}; device {args.device}"
    )
    base = statistics.median(times["bare"])
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"{k:>9}: {n_tok / med:10.0f} tokens/s   ratio vs bare {base / med:5.2f}")


if __name__ == "__main__":
    main()
