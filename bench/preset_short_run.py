"""Does a preset's model learn the tasks at all? One short run of its shape on this machine.

Keeps the preset's model, tokenizer, batch, optimiser and induction warm-up, and trains one recipe (default
``text-only``) of one seed for ``--tokens`` (its phases scaled to that budget, the learning-rate schedule
with them; sources capped at ``--source-bytes``), with a snapshot every ``--snapshot-every`` steps. Then the
main job's ``eval`` and ``attention`` stages, and a print of difficulty-0 accuracy per family against chance
and the copy baseline, at the end and over training, and the best induction score over training.

    python bench/preset_short_run.py small --tokens 5000000 --out out/small-short --threads 2

Not a test: it prints what one run measured; the grid file it trained is ``OUT/grid.toml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path

import pandas as pd

from codetransfer.pipeline import run_job
from codetransfer.trained import parallel, train
from codetransfer.trained.gridfile import grid_to_toml
from codetransfer.trained.presets import preset


def short_grid(name: str, recipe: str, tokens: int, seed: int, source_bytes: int, snapshot_every: int):
    grid = preset(name)
    (r,) = [r for r in grid.recipes if r.name == recipe]
    total = sum(p.tokens for p in r.phases)
    phases = tuple(dataclasses.replace(p, tokens=round(p.tokens * tokens / total)) for p in r.phases)
    train = dataclasses.replace(grid.train, snapshot_every=snapshot_every, save_every=snapshot_every)
    return dataclasses.replace(
        grid,
        name=f"{name}-short",
        description=f"{name}'s shape, {recipe} only, {tokens:,} tokens, seed {seed}",
        recipes=(dataclasses.replace(r, phases=phases),),
        seeds=(seed,),
        sources={k: dataclasses.replace(v, max_bytes=source_bytes) for k, v in grid.sources.items()},
        train=train,
    )


def summary(results: Path) -> None:
    ev = pd.read_parquet(results / "eval.parquet")
    acc = ev[(ev.metric == "accuracy") & (ev.difficulty == "0") & ~ev.run.str.endswith("*")]  # runs, not recipes
    print(acc[["task", "value", "ci_low", "ci_high", "chance", "copy_chance", "n_items"]].to_string(index=False))
    lp = results / "learning.parquet"
    if lp.exists():
        lc = pd.read_parquet(lp)
        lc = lc[(lc.metric == "accuracy") & (lc.difficulty == "0")]
        print(lc.pivot_table(index="tokens", columns="task", values="value").round(2).to_string())
    ap = results / "attention_over_training.parquet"
    if ap.exists():
        at = pd.read_parquet(ap)
        at = at[at.metric.isin(["previous_token", "induction"])]  # scores whose best head means something
        print(at.groupby(["step", "metric"])["value"].max().unstack().round(2).to_string())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", nargs="?", default="small")
    ap.add_argument("--recipe", default="text-only")
    ap.add_argument("--tokens", type=int, default=5_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source-bytes", type=int, default=12_000_000, help="cap on each source's bytes")
    ap.add_argument("--snapshot-every", type=int, default=50, help="steps between snapshots (learning curves)")
    ap.add_argument("--out", default="out/preset-short")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the run (the library trains with 1)")
    args = ap.parse_args()
    if args.threads != 1:  # a measurement, not a grid's run: other thread counts give other (equally valid) weights
        parallel.run_threads = train.run_threads = functools.partial(train.run_threads, threads=args.threads)
    grid = short_grid(args.preset, args.recipe, args.tokens, args.seed, args.source_bytes, args.snapshot_every)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.toml").write_text(grid_to_toml(grid))
    timings = run_job(str(out / "grid.toml"), out, device=args.device, stages=("train", "eval", "attention"))
    print({k: round(v) for k, v in timings.items() if isinstance(v, float)})
    summary(out / "results")


if __name__ == "__main__":
    main()
