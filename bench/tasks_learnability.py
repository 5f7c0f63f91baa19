"""Can a tiny model learn the easiest level of each reasoning family from the synthetic corpus?

Trains a small GPT-NeoX (default 2 layers, d_model 128) from scratch on ``synthetic_documents``
(narratives + programs, half each by documents) mixed with real English (GCIDE glosses, so that the
evaluation entity names, which the synthetic corpus never shows, get trained embeddings), for a
token budget (default 1.5M) on CPU, then scores evaluation items of every world family by summed
candidate log-probability and prints accuracy vs chance per family x difficulty x split.

    .venv/bin/python bench/tasks_learnability.py --tokens 1500000

Not a test: prints numbers measured in one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

import torch


def gloss_texts(n: int, seed: int) -> list[str]:
    from codetransfer.tasks.families import gcide_dir

    rng = random.Random(seed)
    out = []
    for f in sorted(os.listdir(gcide_dir())):
        with open(os.path.join(gcide_dir(), f), encoding="utf-8") as fh:
            data = json.load(fh)
        for word, e in data.items():
            for p in e.get("pos") or []:
                for d in p.get("definitions") or []:
                    out.append(f"{word}: {d.get('text', '')}")
    rng.shuffle(out)
    return out[:n]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1_500_000)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--english", type=float, default=0.25, help="fraction of documents that are GCIDE glosses (grouped)")
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save", default="", help="folder to save the trained model and tokenizer to")
    ap.add_argument("--load", default="", help="skip training: evaluate the model saved in this folder")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from codetransfer.tasks import get_task
    from codetransfer.tasks.corpus import synthetic_documents
    from codetransfer.trained.config import ModelConfig
    from codetransfer.trained.model import build_model
    from codetransfer.trained.tokenizer import encode_documents, encode_with_bos, train_tokenizer

    t0 = time.time()
    if args.load:
        from transformers import AutoModelForCausalLM

        from codetransfer.trained.tokenizer import load_tokenizer

        tok = load_tokenizer(args.load)
        model = AutoModelForCausalLM.from_pretrained(args.load).eval()
        return evaluate(model, tok, args, t0)
    n_docs = args.tokens // 200 + 200
    narr = list(synthetic_documents("narrative", n_docs // 2, seed=args.seed))
    prog = list(synthetic_documents("program", n_docs // 2, seed=args.seed))
    glosses = gloss_texts(60000, args.seed)
    eng = ["\n".join(glosses[i:i + 8]) for i in range(0, len(glosses), 8)]
    tok = train_tokenizer(narr[:2000] + prog[:2000] + eng[:3000], vocab_size=args.vocab)
    rng = random.Random(args.seed)
    docs = narr + prog
    n_eng = int(len(docs) * args.english / (1 - args.english))
    docs += eng[:n_eng]
    rng.shuffle(docs)
    stream = [t for d in encode_documents(tok, docs) for t in d]
    n_seq = min(len(stream) // args.ctx, args.tokens // args.ctx)
    data = torch.tensor(stream[: n_seq * args.ctx]).view(n_seq, args.ctx)
    print(f"data: {n_seq * args.ctx:,} tokens ({len(narr)} narratives, {len(prog)} programs, {n_eng} gloss docs); "
          f"vocab {len(tok)}; prep {time.time() - t0:.0f}s", flush=True)
    for w in (" pen", " box", " B", " coin", " Max", " Anna", " 3", " =="):
        print(f"  {w!r} -> {len(tok(w, add_special_tokens=False)['input_ids'])} token(s)", end="")
    print()

    cfg = ModelConfig(n_layers=args.layers, d_model=args.d_model, n_heads=4, d_mlp=4 * args.d_model, n_ctx=args.ctx)
    model = build_model(cfg, vocab_size=len(tok), seed=args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    steps = n_seq // args.batch
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    perm = torch.randperm(n_seq, generator=torch.Generator().manual_seed(args.seed))
    model.train()
    t1 = time.time()
    for s in range(steps):
        x = data[perm[s * args.batch:(s + 1) * args.batch]]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        if s % max(1, steps // 10) == 0 or s == steps - 1:
            print(f"  step {s}/{steps} loss {loss.item():.3f} ({(s + 1) * args.batch * args.ctx / (time.time() - t1):,.0f} tok/s)", flush=True)
    model.eval()
    if args.save:
        model.save_pretrained(args.save)
        tok.save_pretrained(args.save)
    return evaluate(model, tok, args, t0)


def evaluate(model, tok, args, t0) -> int:
    from codetransfer.tasks import get_task
    from codetransfer.trained.tokenizer import encode_with_bos

    @torch.no_grad()
    def accuracy(items) -> float:
        right = 0
        for it in items:
            ids, _ = encode_with_bos(tok, it.prompt)
            seqs = [ids + tok(c, add_special_tokens=False)["input_ids"] for c in it.candidates]
            L = max(map(len, seqs))
            x = torch.tensor([s + [2] * (L - len(s)) for s in seqs])
            logp = torch.log_softmax(model(input_ids=x).logits.float(), -1)
            scores = []
            for b, s in enumerate(seqs):
                scores.append(sum(logp[b, t - 1, s[t]].item() for t in range(len(ids), len(s))))
            right += int(max(range(len(scores)), key=scores.__getitem__) == it.label)
        return right / len(items)

    def baselines(items) -> tuple[float, float]:
        """Accuracy of (a) a uniform guess among candidates mentioned in the prompt and
        (b) the candidate mentioned last: what copying without tracking the key would get."""
        uni = last = 0.0
        for it in items:
            pos = {i: it.prompt.rfind(c.strip()) for i, c in enumerate(it.candidates)}
            seen = [i for i, p in pos.items() if p >= 0]
            uni += (it.label in seen) / max(1, len(seen)) if seen else 1 / len(it.candidates)
            last += (max(seen, key=pos.get) == it.label) if seen else 1 / len(it.candidates)
        return uni / len(items), last / len(items)

    print(f"\n{'task':<18}{'split':<7}{'diff':>5}{'acc':>7}{'chance':>8}{'copy-any':>9}{'copy-last':>10}   (text twin acc for code_state)")
    for name in ("entity_tracking", "variable_binding", "counting", "possession", "code_state"):
        fam = get_task(name)
        for split in ("train", "eval"):
            for d in (0, 1, 2):
                items = fam.generate(args.items, seed=1000 + args.seed, difficulty=d, split=split)
                acc = accuracy(items)
                extra = ""
                if name == "code_state":
                    extra = f"   text twin {accuracy([it.twin for it in items]):.2f}"
                b_any, b_last = baselines(items)
                print(f"{name:<18}{split:<7}{d:>5}{acc:>7.2f}{items[0].chance:>8.2f}{b_any:>9.2f}{b_last:>10.2f}{extra}", flush=True)
    print(f"total {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
