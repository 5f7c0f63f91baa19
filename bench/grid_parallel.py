"""Wall time of training the tiny grid with --jobs 1 and with --jobs N (default 2), in one invocation.

The data (tokenizer, token arrays) is prepared once and copied into both output folders, so the two times
are the training alone: the per-seed induction warm-up, then the runs (one torch thread each in both modes;
jobs=N trains up to N runs side by side). ``--fraction`` scales every phase's tokens and the warm-up's steps
so that the bench runs in a few minutes. Both folders end bit-identical (checked at the end).

    python bench/grid_parallel.py                    # the tiny preset at full size (1M tokens per run)
    python bench/grid_parallel.py --fraction 0.1     # 100k tokens per run, a 100-step warm-up

The last line is ``ratio <jobs=1 seconds / jobs=N seconds>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def scaled(grid, fraction: float):
    """``grid`` with every phase's tokens and the warm-up's steps times ``fraction``."""
    recipes = tuple(
        dataclasses.replace(
            r, phases=tuple(dataclasses.replace(p, tokens=max(1, int(p.tokens * fraction))) for p in r.phases)
        )
        for r in grid.recipes
    )
    train = dataclasses.replace(grid.train, induction_warmup=int(round(grid.train.induction_warmup * fraction)))
    return dataclasses.replace(grid, recipes=recipes, train=train)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="tiny", help="preset or grid file (default tiny)")
    ap.add_argument("--fraction", type=float, default=1.0, help="scale of tokens per phase and warm-up steps")
    ap.add_argument("--jobs", type=int, default=2, help="workers of the parallel mode (default 2)")
    ap.add_argument("--keep", metavar="DIR", help="train into DIR (kept) instead of a temporary folder")
    args = ap.parse_args()

    import torch
    from safetensors.torch import load_file

    from codetransfer.trained import load_grid, train_grid
    from codetransfer.trained.data import prepare_data
    from codetransfer.trained.runs import _write_json

    grid = scaled(load_grid(args.grid), args.fraction)
    root = Path(args.keep or tempfile.mkdtemp(prefix="grid-parallel-"))
    t0 = time.time()
    prepare_data(grid, root / "data", log=lambda *a: None)
    steps = grid.train.induction_warmup
    per_run = [sum(p.tokens for p in r.phases) for r in grid.recipes]
    print(
        f"grid {grid.name} x{args.fraction}: {len(grid.recipes)} recipes x {len(grid.seeds)} seeds, "
        f"{per_run[0]:,} tokens per run, warm-up {steps} steps; data ready in {time.time() - t0:.0f}s; "
        f"{len(os.sched_getaffinity(0))} cores, torch {torch.__version__}",
        flush=True,
    )
    seconds = {}
    for jobs in (1, args.jobs):
        out = root / f"jobs-{jobs}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        shutil.copytree(root / "data", out / "data")
        _write_json(out / "grid.json", {"name": grid.name, "fingerprint": grid.fingerprint(), "grid": grid.to_dict()})
        t0 = time.perf_counter()
        train_grid(grid, out, jobs=jobs, progress=False, log=lambda *a: None)
        seconds[jobs] = time.perf_counter() - t0
        print(f"jobs {jobs}: {seconds[jobs]:.1f}s", flush=True)
    a, b = root / "jobs-1", root / f"jobs-{args.jobs}"
    same = all(
        all(torch.equal(x[k], y[k]) for k in x)
        for p in sorted(a.glob("runs/*/model.safetensors"))
        for x, y in [(load_file(p), load_file(b / p.relative_to(a)))]
    )
    print(f"final weights identical: {same}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    print(f"ratio {seconds[1] / seconds[args.jobs]:.2f}")


if __name__ == "__main__":
    main()
