"""Benchmark: items/s of ``score_items`` against a bare batched forward over the same tokens.

A random-init GPT-NeoX (default 4 layers, d_model 256, 8 heads, n_ctx 256) with a BPE trained on the
task items' prompts (so cloze answers span several tokens), scoring real task items (``entity_tracking``: single-token
candidates; ``knowledge_cloze``: multi-token candidates; ``code_state``). Three timings per model kind
(TransformerBridge and the plain HF model):

* ``score_items``: the full scoring path (planning, tokenization checks, padding, forward,
  log-softmax at the scored positions, scatter into candidates, DataFrame);
* ``bare forward``: only ``model(tokens)`` on exactly the padded batches ``score_items`` builds;
* ``naive``: one unbatched forward per (prompt, candidate) pair (what a simple loop would do), on a
  subset of the items.

For a small model scoring should be forward-bound: ``bare / score_items`` near 1.

    .venv/bin/python bench/eval.py [--threads 2] [--n-items 128] [--batch-size 32] [--layers 4 --d-model 256]
    .venv/bin/python bench/eval.py --threads 1 --clock cpu      # on a machine busy with other work
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _best_of(fn, repeats: int, clock) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-items", type=int, default=128, help="items per task")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--naive-items", type=int, default=24)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="'cpu' times this process's CPU seconds (robust on a busy machine with --threads 1)",
    )
    args = ap.parse_args()

    import torch

    from codetransfer.analysis import evaluate as E
    from codetransfer.tasks import get_task
    from codetransfer.trained.config import ModelConfig
    from codetransfer.trained.loading import load_bridge, load_hf_model
    from codetransfer.trained.model import build_model
    from codetransfer.trained.tokenizer import encode_with_bos, train_tokenizer

    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    items = []
    for name in ("entity_tracking", "knowledge_cloze", "code_state"):
        items += get_task(name).generate(args.n_items, seed=0)
    # BPE trained on the prompts only: answers that never occur in a prompt (cloze words) span several tokens
    tok = train_tokenizer([it.prompt for it in items] * 3, vocab_size=4096, min_frequency=1)
    cfg = ModelConfig(n_layers=args.layers, d_model=args.d_model, n_heads=8, d_mlp=4 * args.d_model, n_ctx=256)
    folder = tempfile.mkdtemp(prefix="bench_eval_")
    tok.save_pretrained(folder)
    build_model(cfg, vocab_size=len(tok), seed=0).save_pretrained(folder)
    bridge, tok = load_bridge(folder, device=args.device)
    hf = load_hf_model(folder, device=args.device)

    rows, entries, n_pairs = E._plan(items, tok, cfg.n_ctx)
    batches = [E._pad(rows, b, tok.pad_token_id, args.device) for b in E._batches(rows, args.batch_size)]
    n_multi = sum(any(len(tok(c, add_special_tokens=False)["input_ids"]) > 1 for c in it.candidates) for it in items)
    n_tokens = sum(b.numel() for b in batches)
    print(
        f"model: {args.layers} layers, d_model {args.d_model}, vocab {len(tok)}; {len(items)} items "
        f"({n_multi} with multi-token candidates), {n_pairs} candidates -> {len(rows)} rows, {len(batches)} "
        f"batches, {n_tokens} padded tokens; {torch.get_num_threads()} threads, device {args.device}, {args.clock} clock"
    )
    sub = items[:: max(1, len(items) // args.naive_items)][: args.naive_items]

    def naive(model):
        with torch.no_grad():
            for it in sub:
                p, _ = encode_with_bos(tok, it.prompt)
                for c in it.candidates:
                    ids = tok(c, add_special_tokens=False)["input_ids"]
                    lp = torch.log_softmax(E.forward_logits(model, torch.tensor([p + ids], device=args.device))[0], -1)
                    sum(lp[len(p) - 1 + t, ids[t]].item() for t in range(len(ids)))

    for kind, model in (("bridge", bridge), ("hf", hf)):

        def bare():
            with torch.no_grad():
                for b in batches:
                    E.forward_logits(model, b)

        E.score_items(model, tok, items[:8], args.batch_size, args.device)  # warm-up
        t_score = _best_of(lambda: E.score_items(model, tok, items, args.batch_size, args.device), args.repeats, clock)
        t_bare = _best_of(bare, args.repeats, clock)
        t_naive = _best_of(lambda: naive(model), 1, clock) * len(items) / len(sub)
        print(
            f"{kind:6s}  score_items {len(items) / t_score:8.1f} items/s   bare forward {len(items) / t_bare:8.1f} "
            f"items/s   ratio bare/score {t_bare / t_score:.2f}   naive one-pair-at-a-time "
            f"{len(items) / t_naive:7.1f} items/s (x{t_naive / t_score:.1f} slower)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
