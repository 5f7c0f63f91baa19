"""A planted-transfer control: does a code-category source with exact in-context repeats plant the lookup circuit?

The tiny shape (2-layer Llama, d_model 64, 4 heads, BPE 512, n_ctx 128) learns the tasks' in-context lookup
only after an induction warm-up (``trained/warmup.py``); from the narratives alone it grows no induction
head at this budget (docs/learnability.md). So a source whose documents can only be predicted by copying
from earlier in the context should plant the circuit, and a twin with the same words but no repeats
should not. Three arms on one tokenizer (trained on narratives, glosses and repeat documents), one
optimizer and one cosine schedule over ``--tokens``, **no warm-up**:

    copy        --copy-tokens of ``repeat_documents`` (tasks/corpus.py), then the text mixture
    scrambled   the same budget of ``repeat_documents(scrambled=True)`` (same words, nothing to copy), then text
    text-only   the text mixture throughout (75% narratives, 25% GCIDE glosses by document)
    warmup      the positive control: ``trained/warmup.py``'s 1,000-step induction warm-up, then text throughout

``--interleave`` mixes the repeat documents into the text from the start (their share = copy-tokens / tokens)
instead of a first phase. Prints per arm: the best layer-1 induction score and the best layer-0
previous-token score on ``[bos] + x + x`` of random tokens (every ordinary id, ``analysis.attention``),
the induction loss there (nats on the second copy), the best layer-1 score at a lag of 0-15 (a lagged
circuit, ``induction_shift_profile``), and the loss on held-out repeat documents in order and scrambled
(copying makes the first lower), after the first phase and at the end, and accuracy at
difficulty 0 per reasoning family on training and held-out names (``bench/tasks_learnability.py``'s
scorer). One thread by default. Not a test; the last line is ``RESULT {json}``.

    .venv/bin/python bench/control_design.py --seed 0 --tokens 1000000 --copy-tokens 300000
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tasks_learnability import accuracy_of, gloss_texts  # noqa: E402

FAMILIES = ("entity_tracking", "variable_binding", "counting", "possession")
ARMS = ("copy", "scrambled", "text-only", "warmup")


def rows_of(tok, docs: list[str], ctx: int) -> torch.Tensor:
    """The documents encoded (``[bos] + tokens + [eos]`` each), concatenated and cut into rows of ``ctx``."""
    from codetransfer.trained.tokenizer import encode_documents

    stream = [t for d in encode_documents(tok, docs) for t in d]
    n = len(stream) // ctx
    return torch.tensor(stream[: n * ctx]).view(n, ctx)


@torch.no_grad()
def doc_loss(model, rows: torch.Tensor) -> float:
    """Mean next-token loss (nats) of ``model`` on ``rows``."""
    was = model.training
    model.eval()
    loss = sum(model(input_ids=rows[i : i + 32], labels=rows[i : i + 32]).loss.item() for i in range(0, len(rows), 32))
    model.train(was)
    return round(loss / len(range(0, len(rows), 32)), 3)


@torch.no_grad()
def circuit_scores(model, tok, seed: int, probes: dict | None = None) -> dict:
    """Best layer-0 previous-token and layer-1 induction scores (``rows`` reduction, mean over 32 sequences
    of ``[bos] + x + x``, ``x`` 20 random ordinary tokens) and the induction loss on the second copy."""
    from codetransfer.analysis.attention import (
        induction_loss,
        induction_shift_profile,
        ordinary_token_ids,
        pattern_scores,
        repeated_random_tokens,
    )

    tokens = repeated_random_tokens(ordinary_token_ids(tok), 32, 20, seed=1000 + seed, bos_id=tok.bos_token_id)
    was = model.training
    model.eval()
    impl = model.config._attn_implementation
    model.config._attn_implementation = "eager"  # attention weights for the scores
    out = model(input_ids=tokens, output_attentions=True)
    model.config._attn_implementation = impl
    model.train(was)
    pats = torch.stack(out.attentions)  # layer batch head q k
    s = {k: v.mean(0) for k, v in pattern_scores(pats, tokens, scores=["induction", "previous_token"]).items()}
    prof = induction_shift_profile(pats, tokens, shifts=range(0, 16)).mean(1)[:, 1]  # shift head (layer 1)
    lag = {"lag_best": round(prof.max().item(), 3), "lag_shift": int(prof.max(1).values.argmax())}
    losses = {f"loss_{k}": doc_loss(model, v) for k, v in (probes or {}).items()}
    return {
        **lag,
        **losses,
        "induction_l1": round(s["induction"][1].max().item(), 3),
        "induction_head": int(s["induction"][1].argmax()),
        "prev_l0": round(s["previous_token"][0].max().item(), 3),
        "induction_loss": round(induction_loss(out.logits, tokens).mean().item(), 3),
    }


def repeat_coverage(tok, docs: list[str]) -> float:
    """Share of the tokenizer's ordinary ids that occur in the documents."""
    from codetransfer.analysis.attention import ordinary_token_ids
    from codetransfer.trained.tokenizer import encode_documents

    seen = {t for d in encode_documents(tok, docs) for t in d}
    ids = ordinary_token_ids(tok)
    return sum(i in seen for i in ids) / len(ids)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1_000_000, help="training tokens per arm (both phases)")
    ap.add_argument("--copy-tokens", type=int, default=300_000, help="tokens of the repeat phase (copy, scrambled)")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--items", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--interleave", action="store_true", help="mix the repeat documents into the text instead of a phase"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--token-rows",
        action="store_true",
        help="the repeat phase on the warm-up's periodic rows of token ids (trained/warmup.py, every ordinary "
        "id, rows of --ctx tokens) with the loss on every position: what no text source can write",
    )
    ap.add_argument(
        "--mask",
        action="store_true",
        help="with --token-rows: the loss on the copyable positions only (the warm-up's loss; not a data source)",
    )
    ap.add_argument(
        "--rep-warmup-opt",
        action="store_true",
        help="with --token-rows: the repeat phase with the warm-up's optimisation (32 rows a step, constant "
        "lr 2e-3, no weight decay, its own AdamW) before the text phase's optimizer and schedule",
    )
    ap.add_argument("--twice", action="store_true", help="repeat documents with the span twice among fresh words")
    ap.add_argument(
        "--single-token",
        action="store_true",
        help="repeat documents from the lexicon words that are one token of the tokenizer (token-level "
        "periodic rows, as the warm-up's), instead of every lexicon word",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    arms = args.arms.split(",")
    if not set(arms) <= set(ARMS):
        ap.error(f"--arms: expected some of {', '.join(ARMS)}")

    from codetransfer.tasks import get_task
    from codetransfer.tasks.corpus import repeat_documents, synthetic_documents
    from codetransfer.trained.config import ModelConfig
    from codetransfer.trained.model import build_model
    from codetransfer.trained.tokenizer import train_tokenizer

    t0 = time.time()
    n_docs = args.tokens // 200 + 200
    narr = list(synthetic_documents("narrative", n_docs, seed=args.seed))
    glosses = gloss_texts(60000, args.seed)
    eng = ["\n".join(glosses[i : i + 8]) for i in range(0, len(glosses), 8)]
    n_rep = args.copy_tokens // 60 + 200
    lay = "twice" if args.twice else "periodic"
    reps = {
        "copy": list(repeat_documents(n_rep, seed=args.seed, layout=lay)),
        "scrambled": list(repeat_documents(n_rep, seed=args.seed, scrambled=True, layout=lay)),
    }
    tok = train_tokenizer(narr[:3000] + eng[:1500] + reps["copy"][:1500], vocab_size=args.vocab)
    if args.single_token:
        from codetransfer.tasks.corpus import repeat_lexicon

        lex = tuple(w for w in repeat_lexicon() if len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1)
        print(f"single-token lexicon: {len(lex)} words", flush=True)
        reps = {
            "copy": list(repeat_documents(n_rep, seed=args.seed, lexicon=lex)),
            "scrambled": list(repeat_documents(n_rep, seed=args.seed, scrambled=True, lexicon=lex)),
        }
    else:
        lex = None
    rng = random.Random(args.seed)
    text_docs = narr + eng[: int(len(narr) / 3)]
    rng.shuffle(text_docs)
    text = rows_of(tok, text_docs, args.ctx)
    rep_rows = {k: rows_of(tok, v, args.ctx) for k, v in reps.items()}
    held = {
        "copy": list(repeat_documents(64, seed=args.seed, split="heldout", lexicon=lex, layout=lay)),
        "scrambled": list(
            repeat_documents(64, seed=args.seed, scrambled=True, split="heldout", lexicon=lex, layout=lay)
        ),
    }
    probes = {
        k: rows_of(tok, v, args.ctx)[:32] for k, v in held.items()
    }  # the same documents, words in or out of order
    if args.token_rows:
        from codetransfer.trained.warmup import periodic_rows

        gen = torch.Generator().manual_seed(args.seed + 7)
        n_rows = args.copy_tokens // args.ctx + 64
        rows, copyable = periodic_rows(torch.arange(3, len(tok)), n_rows, gen, seq_len=args.ctx)
        masks = copyable[64:]
        shuffled = torch.stack(
            [
                r[torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(args.ctx - 1, generator=gen)])]
                for r in rows
            ]
        )
        rep_rows = {"copy": rows[64:], "scrambled": shuffled[64:]}
        probes = {"copy": rows[:32], "scrambled": shuffled[:32]}
    cover = {k: round(repeat_coverage(tok, v[:3000]), 3) for k, v in reps.items()}
    text_cover = round(repeat_coverage(tok, text_docs[:3000]), 3)
    print(
        f"seed {args.seed}: text rows {len(text)}, repeat rows {len(rep_rows['copy'])}; id coverage: text {text_cover}, "
        f"repeats {cover}; prep {time.time() - t0:.0f}s",
        flush=True,
    )

    steps = args.tokens // (args.batch * args.ctx)
    steps1 = args.copy_tokens // (args.batch * args.ctx)
    cfg = ModelConfig(arch="llama", n_layers=2, d_model=64, n_heads=4, d_mlp=256, n_ctx=args.ctx)
    results = []
    for arm in arms:
        t1 = time.time()
        model = build_model(cfg, vocab_size=len(tok), seed=args.seed).to(args.device)
        mid = {}
        if arm == "warmup":  # the positive control: the tiny preset's induction warm-up, then text throughout
            from codetransfer.trained.warmup import induction_warmup

            induction_warmup(model, len(tok), 1000, 2e-3, args.seed)
            mid = circuit_scores(model, tok, args.seed, probes)
            print(f"  warmup after the induction warm-up: {mid}", flush=True)
        if args.rep_warmup_opt and arm in rep_rows and args.token_rows:
            wopt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
            gw = torch.Generator().manual_seed(args.seed + 7)
            model.train()
            for s in range(steps1):
                sel = torch.randint(0, len(rep_rows[arm]), (32,), generator=gw)
                x, m = rep_rows[arm][sel], masks[sel].float()
                ce = torch.nn.functional.cross_entropy(
                    model(input_ids=x).logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none"
                )
                loss = (ce * m[:, 1:]).sum() / m[:, 1:].sum() if args.mask else ce.mean()
                loss.backward()
                wopt.step(), wopt.zero_grad(set_to_none=True)
                if s % max(1, steps1 // 5) == 0:
                    print(
                        f"  {arm} repeat step {s}/{steps1} loss {loss.item():.3f} ({time.time() - t1:.0f}s)", flush=True
                    )
            mid = circuit_scores(model, tok, args.seed, probes)
            print(f"  {arm} after the repeat phase (warm-up optimisation): {mid}", flush=True)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
        warm = max(1, steps // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
        )
        g = torch.Generator().manual_seed(args.seed)
        text_perm = torch.cat(
            [torch.randperm(len(text), generator=g) for _ in range(steps * args.batch // len(text) + 1)]
        )
        rep = None if args.rep_warmup_opt else rep_rows.get(arm)
        rep_perm = (
            torch.cat([torch.randperm(len(rep), generator=g) for _ in range(steps1 * args.batch // len(rep) + 1)])
            if rep is not None
            else None
        )
        share = steps1 / steps
        ti = ri = 0
        model.train()
        for s in range(steps):
            if rep is not None and (int((s + 1) * share) > int(s * share) if args.interleave else s < steps1):
                sel, ri = rep_perm[ri : ri + args.batch], ri + args.batch
                x, m = rep[sel], (masks[sel] if args.mask and args.token_rows else None)
            else:
                (x, m), ti = (text[text_perm[ti : ti + args.batch]], None), ti + args.batch
            if m is None:
                loss = model(input_ids=x.to(args.device), labels=x.to(args.device)).loss
            else:
                ce = torch.nn.functional.cross_entropy(
                    model(input_ids=x).logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none"
                )
                loss = (ce * m[:, 1:]).sum() / m[:, 1:].sum()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
            if s == steps1 - 1 and rep is not None:
                mid = circuit_scores(model, tok, args.seed, probes)
                print(f"  {arm} after phase 1 (step {s + 1}): loss {loss.item():.3f} {mid}", flush=True)
            if s % max(1, steps // 5) == 0:
                print(f"  {arm} step {s}/{steps} loss {loss.item():.3f} ({time.time() - t1:.0f}s)", flush=True)
        model.eval()
        end = circuit_scores(model, tok, args.seed, probes)
        acc = {}
        for name in FAMILIES:
            for split in ("train", "eval"):
                items = get_task(name).generate(args.items, seed=1000 + args.seed, difficulty=0, split=split)
                acc[f"{name}/{split}"] = round(accuracy_of(model, tok, args, items), 3)
        row = dict(
            arm=arm,
            seed=args.seed,
            interleave=args.interleave,
            single_token=args.single_token,
            token_rows=args.token_rows,
            twice=args.twice,
            mask=args.mask,
            rep_warmup_opt=args.rep_warmup_opt,
            copy_tokens=args.copy_tokens,
            tokens=args.tokens,
            phase1=mid,
            end=end,
            acc=acc,
            seconds=round(time.time() - t1),
        )
        print(f"ARM {json.dumps(row)}", flush=True)
        results.append(row)
    print(
        "RESULT " + json.dumps(dict(args=vars(args), coverage=dict(text=text_cover, **cover), results=results)),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
