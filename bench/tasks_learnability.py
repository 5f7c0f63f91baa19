"""Can a tiny model learn the easiest level of each reasoning family from the synthetic corpus?

Trains a small GPT-NeoX (default 2 layers, d_model 128) from scratch on ``synthetic_documents``
(narratives, plus programs with ``--code``) mixed with real English (GCIDE glosses), for a token budget,
then scores items of every reasoning family by summed candidate log-probability and prints accuracy next to
chance and the copy baseline per family x difficulty x split (``train`` = training entity names,
``eval`` = held-out names). Data-design switches, each a hypothesis of docs/learnability.md:

    --pool N      N training objects and people instead of the shipped 12 / 24 (content-general lookup?)
    --tie         tied input/output embeddings (copying generalises to unseen tokens?)
    --tokpool     every pool word a single token (held-out names are 2-token words otherwise)
    --short 1|2|3 boxes/binding facts with the value 2 or 3 tokens after the key (shorter lookups); 1: every
                  family's facts put the value right after the key and the query ends on the key
                  ("The pen B. ... The pen" -> " B"): what a plain induction head copies
    --drill       restate every fact (denser supervision)
    --rot F       fraction of each head's dimensions with rotary embeddings (grid default 0.25)
    --nomlp       attention-only (MLPs zeroed and frozen): do MLPs delay the lookup circuit?
    --curve K     K evaluations of level 0 during training (learning curve lines "CURVE {...}")
    --arch llama  Llama instead of GPT-NeoX (gated MLP, no biases: grows induction heads on clean data, see
                  bench/attention_induction.py; does it learn the lookup sooner?)
    --warm-induction K   K steps on repeated random tokens first (an induction-head warm-up); --warm-ids all
                  draws them from every id of the vocabulary instead of the narratives' ids
    --mention     training distractor sentences mention every pool entity, held-out ones included, outside
                  any task role (are held-out names failing only because their embeddings never trained?)

    .venv/bin/python bench/tasks_learnability.py --tokens 1000000 --vocab 2048 --ctx 128 --batch 8 --lr 3e-3
    bash bench/learnability_sweep.sh      # the GPU sweep of docs/learnability.md (13 variants at once)

Since tasks version 6 the library's defaults are what ``--short 1 --drill --pool 150`` switched on
here (so those switches no longer change anything, ``--short 2/3`` and ``--pool N`` still replace them), and the
tiny preset is ``--arch llama --d-model 64 --vocab 512 --warm-induction 1000 --warm-ids all``; numbers
measured before are on version-5 items with the old defaults (docs/learnability.md says which).

Not a test: prints numbers measured in one run; the last line is ``RESULT {json}``.
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


#: larger training entity pools for --pool (disjoint from the evaluation pools in tasks/render.py)
OBJECTS = """apple arrow axe badge barrel basket bat bean bed belt bench blade blanket board boat bolt bone bottle bow bowl
box_ brick bucket bud bulb bun_ button cable cage can candle cap car cart chain chair chalk cheese chip cloak cloth coat
cone cord cork crown cube cup_ curtain dart desk dial dice dish disk dress egg_ fan feather fence file flag flask flute
foil fruit glass glove glue gown grape hammer harp helmet hook horn hose jar jug kettle knife knot ladder lace leaf
lens letter lid lock log mask mat medal mirror mop mug nail needle net note nut_ oar pad pail paint pan paper pearl
pebble pepper piano pillow pin pipe plate plug pot pouch pump purse quilt rack radio rake rod roll rug sack saddle
scarf screw seed shawl sheet shell shield shirt sign skirt sled slipper soap spade spoon spring stamp stick stone stool
straw string sword table tag tape tent thread ticket tile tin tool towel toy tray trunk tube umbrella vest wagon wallet
watch wheel whip whistle wire wreath yarn""".split()
NAMES = """Aaron Abby Alan Alice Andy Angela Arthur Barbara Beth Betty Bill Brian Bruce Carol Chris Clara Colin Craig Dave
David Dean Diana Donna Doug Edith Edward Ella Ellen Eric Frank Gary Gina Grace Greg Hank Harry Helen Henry Holly Hugh
Irene Isaac Jake James Jean Jeff Jenny Jill Joan Joel Jonas Josh Joy Judy Julia Karen Karl Keith Kevin Larry Laura
Leah Lena Lewis Linda Lisa Lois Louis Luke Lynn Marc Maria Marie Martin Matt Maya Mona Nancy Nathan Neil Nora Oliver
Olga Oscar Owen Peter Phil Rachel Ralph Rita Rob Robin Ron Ross Ruby Russ Ryan Sally Sean Seth Simon Sonia Steve Susan
Tara Terry Tess Tina Todd Tony Vera Victor Vince Wade Walt Wendy Will Yara Yuri Zack Omar Hugo Igor Ivan Jose Juan
Kurt Lars Lee Milo Neva Otto Rex Rudy Saul Vic Wes Abe Al Ava Bea Cy Di Dora Ed Eli Flo Gil Hal Ike Jo Kay Lou Ned
Ola Pat Rob_ Sal Tom_ Val Viv""".split()
OBJECTS = [o for o in OBJECTS if not o.endswith("_") and o != "apple"]
NAMES = [n for n in NAMES if not n.endswith("_")]


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
    ap.add_argument(
        "--english", type=float, default=0.25, help="fraction of documents that are GCIDE glosses (grouped)"
    )
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--pool", type=int, default=0, help="train entity pools: this many objects and people (0 = shipped)"
    )
    ap.add_argument("--code", type=float, default=0.0, help="share of synthetic docs that are programs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--unique", type=int, default=4_000_000, help="cap on unique tokens generated (repeat beyond)")
    ap.add_argument("--curve", type=int, default=0, help="evaluate eval-split level 0 this many times during training")
    ap.add_argument("--tag", default="")
    ap.add_argument("--short", type=int, default=0, help="2 or 3: key-to-value distance of boxes/binding facts")
    ap.add_argument("--tokpool", action="store_true", help="tokenizer sample includes every pool word (single tokens)")
    ap.add_argument("--rot", type=float, default=0.25, help="rotary_pct: fraction of head dims with rotary")
    ap.add_argument("--nomlp", action="store_true", help="attention-only: zero and freeze every MLP")
    ap.add_argument("--drill", action="store_true", help="restate every fact (denser lookups)")
    ap.add_argument("--tie", action="store_true")
    ap.add_argument(
        "--warm-induction",
        type=int,
        default=0,
        help="first train this many steps on repeated random tokens (32 x 48, loss on the copyable "
        "positions, as in tests/test_attention_induction_training.py): an induction-head warm-up",
    )
    ap.add_argument(
        "--warm-ids",
        choices=("narratives", "all"),
        default="narratives",
        help="token ids of the warm-up rows: those the narratives use, or every id of the vocabulary "
        "(output rows that never occur hold the clean-data model on the plateau)",
    )
    ap.add_argument(
        "--mention",
        action="store_true",
        help="training distractor sentences mention every pool entity (held-out ones too), outside task roles",
    )
    ap.add_argument("--arch", choices=("gpt_neox", "llama"), default="gpt_neox")
    ap.add_argument("--save", default="", help="folder to save the trained model and tokenizer to")
    ap.add_argument("--load", default="", help="skip training: evaluate the model saved in this folder")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.pool:
        from codetransfer.tasks.render import POOLS

        POOLS["objects"]["train"] = tuple(OBJECTS[: args.pool])
        POOLS["people"]["train"] = tuple(NAMES[: args.pool])

    from codetransfer.tasks import get_task
    from codetransfer.tasks.corpus import synthetic_documents
    from codetransfer.trained.config import ModelConfig
    from codetransfer.trained.model import build_model
    from codetransfer.trained.tokenizer import encode_documents, train_tokenizer

    t0 = time.time()
    if args.load:
        from transformers import AutoModelForCausalLM

        from codetransfer.trained.tokenizer import load_tokenizer

        tok = load_tokenizer(args.load)
        model = AutoModelForCausalLM.from_pretrained(args.load).eval()
        return evaluate(model, tok, args, t0)
    from codetransfer.tasks.render import TEXT, POOLS as _P

    if args.short == 1:  # the value right after the key, the query ending on the key: a plain induction copy
        TEXT["boxes"]["state"], TEXT["boxes"]["query"] = "The {key} {value}.", "The {key}"
        TEXT["binding"]["state"], TEXT["binding"]["query"] = "{key} {value}.", "{key}"
        TEXT["counting"]["state"], TEXT["counting"]["query"] = "{key} {value} {unit_v}.", "{key}"
        TEXT["possession"]["state"], TEXT["possession"]["query"] = "The {key} {value}.", "The {key}"
    elif args.short == 2:
        TEXT["boxes"]["state"], TEXT["boxes"]["query"] = "The {key} in {value}.", "The {key} in"
        TEXT["binding"]["state"], TEXT["binding"]["query"] = "{key} chose {value}.", "{key} chose"
    elif args.short == 3:
        TEXT["boxes"]["state"], TEXT["boxes"]["query"] = "The {key} is in {value}.", "The {key} is in"
        TEXT["binding"]["state"], TEXT["binding"]["query"] = "{key} has number {value}.", "{key} has number"
    if args.mention:
        import codetransfer.tasks.families as _f

        people = _P["people"]["train"] + _P["people"]["eval"]
        things = _P["objects"]["train"] + _P["objects"]["eval"] + _P["units"]["train"] + _P["units"]["eval"]
        forms = (
            "{p} is asleep.",
            "{p} sings a song.",
            "{p} looks at a {o}.",
            "A {o} lies on the floor.",
            "{p} draws a {o}.",
            "Nobody wants the old {o}.",
        )
        sents = [
            f.format(p=people[i % len(people)], o=things[(i * 7) % len(things)])
            for i in range(240)
            for f in forms[i % 6 : i % 6 + 1]
        ]
        _P["distractors"]["train"] = tuple(_P["distractors"]["train"]) + tuple(sents)
        _f.DISTRACTOR_RATE = max(_f.DISTRACTOR_RATE, 0.5)
    if args.drill:
        import codetransfer.tasks.corpus as _c

        _c.RESTATE_INITIAL = _c.RESTATE_FINAL = _c.RESTATE_AFTER_OP = 1.0
        _c.RESTATE_OTHER = 0.6
    n_docs = min(args.tokens, args.unique) // 200 + 200
    narr = list(synthetic_documents("narrative", int(n_docs * (1 - args.code)), seed=args.seed))
    prog = list(synthetic_documents("program", int(n_docs * args.code), seed=args.seed))
    glosses = gloss_texts(60000, args.seed)
    eng = ["\n".join(glosses[i : i + 8]) for i in range(0, len(glosses), 8)]
    extra = []
    if args.tokpool:
        words = sorted(
            {w for kind in ("objects", "people", "units") for split in ("train", "eval") for w in _P[kind][split]}
        )
        extra = [" ".join(words) + "\n" + " ".join(w.lower() for w in words)] * 400
    tok = train_tokenizer(narr[:3000] + prog[:2000] + eng[:1500] + extra, vocab_size=args.vocab)
    rng = random.Random(args.seed)
    docs = narr + prog
    n_eng = int(len(docs) * args.english / (1 - args.english))
    docs += eng[:n_eng]
    rng.shuffle(docs)
    stream = [t for d in encode_documents(tok, docs) for t in d]
    n_seq = min(len(stream) // args.ctx, args.tokens // args.ctx)
    data = torch.tensor(stream[: n_seq * args.ctx]).view(n_seq, args.ctx)
    total_seq = args.tokens // args.ctx
    print(
        f"data: {n_seq * args.ctx:,} tokens ({len(narr)} narratives, {len(prog)} programs, {n_eng} gloss docs); "
        f"vocab {len(tok)}; prep {time.time() - t0:.0f}s",
        flush=True,
    )
    for w in (" pen", " box", " B", " coin", " Max", " Anna", " Zoe", " 3", " Rex", " wagon"):
        print(f"  {w!r} -> {len(tok(w, add_special_tokens=False)['input_ids'])} token(s)", end="")
    print()

    cfg = ModelConfig(
        n_layers=args.layers,
        d_model=args.d_model,
        n_heads=4,
        d_mlp=4 * args.d_model,
        n_ctx=args.ctx,
        rotary_pct=args.rot,
        arch=args.arch,
    )
    model = build_model(cfg, vocab_size=len(tok), seed=args.seed).to(args.device)
    if args.tie:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    if args.nomlp:
        for block in model.base_model.layers:
            for p in block.mlp.parameters():
                p.data.zero_()
                p.requires_grad_(False)
    if args.warm_induction:  # over the tokens the narratives use, or over every id (--warm-ids all)
        ids = (
            list(range(3, len(tok)))
            if args.warm_ids == "all"
            else sorted({t for d in encode_documents(tok, narr[:2000]) for t in d if t > 2})
        )
        warm_up_induction(model, torch.tensor(ids), args)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95)
    )
    steps = total_seq // args.batch
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    g = torch.Generator().manual_seed(args.seed)
    perm = torch.cat([torch.randperm(n_seq, generator=g) for _ in range(total_seq // n_seq + 1)])
    curve = []
    curve_at = {int(steps * (k + 1) / args.curve) - 1 for k in range(args.curve)} if args.curve else set()
    model.train()
    t1 = time.time()
    for s in range(steps):
        x = data[perm[s * args.batch : (s + 1) * args.batch]].to(args.device)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        if s in curve_at:
            model.eval()
            point = {"step": s + 1, "tokens": (s + 1) * args.batch * args.ctx}
            for name in ("entity_tracking", "variable_binding", "counting", "possession"):
                fam = get_task(name)
                point[name] = accuracy_of(model, tok, args, fam.generate(60, seed=77, difficulty=0, split="eval"))
            curve.append(point)
            print("CURVE " + json.dumps(point), flush=True)
            model.train()
        if s % max(1, steps // 10) == 0 or s == steps - 1:
            print(
                f"  step {s}/{steps} loss {loss.item():.3f} ({(s + 1) * args.batch * args.ctx / (time.time() - t1):,.0f} tok/s)",
                flush=True,
            )
    model.eval()
    if args.save:
        model.save_pretrained(args.save)
        tok.save_pretrained(args.save)
    return evaluate(model, tok, args, t0, curve)


def warm_up_induction(model, ids: torch.Tensor, args) -> None:
    """``args.warm_induction`` AdamW steps (lr 2e-3) on ``[bos] + r + x x x ...`` rows of random tokens
    drawn from ``ids`` with the loss on the positions predictable by copying; prints the copy loss."""
    from attention_induction import batch  # the same rows as the #6 sweep (bench/ is on sys.path when run)

    gen = torch.Generator().manual_seed(args.seed + 7)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.0)
    model.train()
    for step in range(args.warm_induction):
        x, pred = batch("periodic", ids, gen, 32, 48, (4, 20))
        x, mask = x.to(args.device), pred[:, 1:].float().to(args.device)
        ce = torch.nn.functional.cross_entropy(
            model(input_ids=x).logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none"
        )
        loss = (ce * mask).sum() / mask.sum()
        loss.backward()
        opt.step(), opt.zero_grad(set_to_none=True)
        if step % max(1, args.warm_induction // 6) == 0 or step == args.warm_induction - 1:
            print(f"  induction warm-up step {step} copy loss {loss.item():.3f} ({len(ids)} token ids)", flush=True)


@torch.no_grad()
def accuracy_of(model, tok, args, items) -> float:
    """Share of items whose answer has the highest summed candidate log-probability (plain HF model)."""
    from codetransfer.trained.tokenizer import encode_with_bos

    right = 0
    for it in items:
        ids, _ = encode_with_bos(tok, it.prompt)
        seqs = [ids + tok(c, add_special_tokens=False)["input_ids"] for c in it.candidates]
        L = max(map(len, seqs))
        x = torch.tensor([s + [2] * (L - len(s)) for s in seqs], device=args.device)
        logp = torch.log_softmax(model(input_ids=x).logits.float(), -1).cpu()
        scores = [sum(logp[b, t - 1, s[t]].item() for t in range(len(ids), len(s))) for b, s in enumerate(seqs)]
        right += int(max(range(len(scores)), key=scores.__getitem__) == it.label)
    return right / len(items)


def evaluate(model, tok, args, t0, curve=()) -> int:
    from codetransfer.tasks import get_task

    def accuracy(items) -> float:
        return accuracy_of(model, tok, args, items)

    def baselines(items) -> tuple[float, float, float]:
        """Accuracy of (a) a uniform guess among candidates mentioned in the prompt, (b) the candidate
        mentioned last and (c) the one mentioned first: what copying without the key would get."""
        uni = last = first = 0.0
        for it in items:
            pos = {i: it.prompt.rfind(c.strip()) for i, c in enumerate(it.candidates)}
            head = {i: it.prompt.find(c.strip()) for i, c in enumerate(it.candidates)}
            seen = [i for i, p in pos.items() if p >= 0]
            uni += (it.label in seen) / max(1, len(seen)) if seen else 1 / len(it.candidates)
            last += (max(seen, key=pos.get) == it.label) if seen else 1 / len(it.candidates)
            first += (min(seen, key=head.get) == it.label) if seen else 1 / len(it.candidates)
        return uni / len(items), last / len(items), first / len(items)

    results = []
    print(
        f"\n{'task':<18}{'split':<7}{'diff':>5}{'acc':>7}{'chance':>8}{'copy-any':>9}{'copy-last':>10}{'copy-first':>11}"
    )
    for name in ("entity_tracking", "variable_binding", "counting", "possession"):
        fam = get_task(name)
        for split in ("train", "eval"):
            for d in (0, 1):
                items = fam.generate(args.items, seed=1000 + args.seed, difficulty=d, split=split)
                acc = accuracy(items)
                extra = ""
                if name == "code_state":
                    extra = f"   text twin {accuracy([it.twin for it in items]):.2f}"
                b_any, b_last, b_first = baselines(items)
                print(
                    f"{name:<18}{split:<7}{d:>5}{acc:>7.2f}{items[0].chance:>8.2f}{b_any:>9.2f}{b_last:>10.2f}{b_first:>11.2f}{extra}",
                    flush=True,
                )
                results.append(
                    dict(
                        tag=args.tag,
                        task=name,
                        split=split,
                        d=d,
                        acc=acc,
                        chance=items[0].chance,
                        copy_any=b_any,
                        copy_first=b_first,
                        copy_last=b_last,
                    )
                )
    print(f"total {time.time() - t0:.0f}s")
    print(
        "RESULT "
        + json.dumps(dict(tag=args.tag, args=vars(args), results=results, curve=list(curve), seconds=time.time() - t0)),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
