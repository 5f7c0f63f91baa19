"""Benchmark: our patching sweeps against TransformerLens' on the same model and inputs.

A random-init 4-layer GPT-NeoX (d_model 256, 8 heads, vocab 4096) and a batch of 8 clean/corrupted
pairs of 32 tokens. For the residual stream (layer x position) and the head-by-position sweep
(layer x position x head, hook_z) it times ``transformer_lens.patching.get_act_patch_resid_pre`` /
``get_act_patch_attn_head_out_by_pos`` and ours (``codetransfer.analysis.patching``, both including
the clean/corrupted caching), and prints the speed ratio and the max absolute difference.

    .venv/bin/python bench/patching.py [--threads 2] [--pos 32] [--batch 8] [--max-rows 256] [--attribution]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pos", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-rows", type=int, default=256)
    ap.add_argument("--sweeps", default="resid_pre,head_out")
    ap.add_argument(
        "--attribution",
        action="store_true",
        help="also time attribution patching and report its Spearman agreement with exact patching",
    )
    args = ap.parse_args()

    import torch
    import transformer_lens.patching as tlp

    from codetransfer.analysis import patching as P
    from codetransfer.trained.config import ModelConfig
    from codetransfer.trained.loading import load_bridge
    from codetransfer.trained.model import build_model
    from codetransfer.trained.tokenizer import train_tokenizer

    torch.set_num_threads(args.threads)
    cfg = ModelConfig(n_layers=4, d_model=256, n_heads=8, d_mlp=1024, n_ctx=128)
    folder = tempfile.mkdtemp(prefix="bench_patching_")
    texts = [f"the box {i} has a pen {i * 7}. def f{i}(x): return x + {i}" for i in range(3000)]
    tok = train_tokenizer(texts, vocab_size=4096, min_frequency=1)
    tok.save_pretrained(folder)
    build_model(cfg, vocab_size=4096, seed=0).save_pretrained(folder)
    bridge, _ = load_bridge(folder, device="cpu")

    g = torch.Generator().manual_seed(0)
    B, T = args.batch, args.pos
    clean = torch.randint(3, 4096, (B, T), generator=g)
    corrupted = clean.clone()
    corrupted[:, T // 3] = torch.randint(3, 4096, (B,), generator=g)
    metric = P.LogitDiff(
        torch.full((B,), T - 1), torch.randint(3, 4096, (B,), generator=g), torch.randint(3, 4096, (B,), generator=g)
    )
    print(
        f"model: 4 layers, d_model 256, 8 heads, vocab 4096; batch {B} x {T} tokens; "
        f"{torch.get_num_threads()} threads; max_rows {args.max_rows}"
    )
    tl_fns = {"resid_pre": tlp.get_act_patch_resid_pre, "head_out": tlp.get_act_patch_attn_head_out_by_pos}
    for site in args.sweeps.split(","):
        t0 = time.perf_counter()
        _, clean_cache = bridge.run_with_cache(clean)
        ref = tl_fns[site](bridge, corrupted, clean_cache, metric.mean())
        t_tl = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = P.activation_patching(bridge, clean, corrupted, metric, site, max_rows=args.max_rows).grid()
        t_ours = time.perf_counter() - t0
        diff = (ours - ref).abs().max().item()
        print(
            f"{site:10s} cells {ref.numel():5d}  TL {t_tl:7.2f} s  ours {t_ours:6.2f} s  "
            f"speed-up {t_tl / t_ours:5.1f}x  max |diff| {diff:.2e}"
        )
    if args.attribution:
        t0 = time.perf_counter()
        rho, joined = P.attribution_agreement(bridge, clean, corrupted, metric)
        print(
            f"attribution patching vs exact (head x pos + mlp x pos, {len(joined)} nodes): "
            f"Spearman rho {rho:.3f}  ({time.perf_counter() - t0:.1f} s incl. exact sweeps)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
