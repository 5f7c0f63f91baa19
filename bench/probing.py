"""Benchmark: the main job's probing sweep, scikit-learn fits (reference) vs ``probes.fast``, same inputs.

    .venv/bin/python bench/probing.py [--run RUN_DIR] [--n-items 96] [--max-difficulty 1] [--repeats 1]

Runs ``codetransfer probe`` in-process with the main job's probe settings (task entity_tracking,
sites resid_post, the job's ``probe_items`` and ``probe_labels``, one split seed, ``--drop-stores``, ``--random-baseline``: the run and its
random-init twin) twice per repeat into fresh folders: once inside ``probes.fast.reference()``
(every linear probe and MDL block fitted by scikit-learn's ``LogisticRegressionCV`` /
``LogisticRegression``, the implementation before the fast path) and once as shipped. It checks
that the two ``probes.parquet`` tables agree (same rows and labels, numbers within 1e-6), prints the
median wall and CPU time of each, the CPU-time ratio and, last, ``ratio <reference / fast>`` (wall).

``--run`` is a trained run folder (e.g. the tiny grid's ``runs/text-only-s0``; ``--max-difficulty``
should then be what the main job picks for it, 1 for the tiny grid). Without it a random model of
the tiny grid's shape (2-layer Llama, d_model 64) and a tokenizer trained on the task's prompts are
built in a temporary folder: the same amount of work, less realistic probes. Model loading and the
imports are paid once before timing. Times on a shared machine are noisy: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd


def _random_run(folder: Path, n_items: int, max_difficulty: int) -> Path:
    """A complete-looking run folder: a random tiny-grid-shaped model and a tokenizer fitted to the items."""
    from codetransfer.commands import items_up_to
    from codetransfer.tasks import get_task
    from codetransfer.trained.model import build_model
    from codetransfer.trained.presets import preset
    from codetransfer.trained.runs import RUN_FILE
    from codetransfer.trained.tokenizer import train_tokenizer

    items = items_up_to(get_task("entity_tracking"), n_items, 0, max_difficulty)
    texts = [it.prompt for it in items] + [it.twin.prompt for it in items if it.twin is not None]
    run = folder / "runs" / "random-s0"
    run.mkdir(parents=True)
    tok = train_tokenizer(texts * 4, vocab_size=512, min_frequency=1)
    tok.save_pretrained(run)
    model = preset("tiny").model
    build_model(model, vocab_size=len(tok), seed=0).save_pretrained(run)
    (run / RUN_FILE).write_text(json.dumps({"recipe": "random", "seed": 0, "status": "complete"}))
    return run


def _sweep(run: Path, out: Path, args) -> tuple[float, float]:
    from codetransfer.cli import main as cli

    argv = [
        "probe",
        "--runs",
        str(run),
        "--tasks",
        "entity_tracking",
        "--sites",
        "resid_post",
        "--out",
        str(out),
        "--n-items",
        str(args.n_items),
        "--max-difficulty",
        str(args.max_difficulty),
        "--item-seed",
        "0",
        "--seeds",
        "0",
        *(["--labels", ",".join(args.labels)] if args.labels else []),
        "--drop-stores",
        "--random-baseline",
        "--device",
        "cpu",
    ]
    t0, c0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = cli(argv)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if rc != 0:
        raise SystemExit(f"codetransfer probe exited {rc}: {' '.join(argv)}")
    return seconds, cpu


def compare(a: pd.DataFrame, b: pd.DataFrame, tol: float = 1e-6) -> float:
    """Largest absolute difference of the numeric columns; raises if rows, labels or NaNs differ or a
    number differs by more than ``tol``."""
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        raise AssertionError(f"tables differ in shape: {a.shape} {list(a.columns)} vs {b.shape} {list(b.columns)}")
    worst = 0.0
    for col in a.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if pd.api.types.is_numeric_dtype(a[col]) and pd.api.types.is_numeric_dtype(b[col]):
            x, y = x.astype(float), y.astype(float)
            if not np.array_equal(np.isnan(x), np.isnan(y)):
                raise AssertionError(f"column {col}: NaNs in different rows")
            ok = ~np.isnan(x)
            diff = float(np.max(np.abs(x[ok] - y[ok]), initial=0.0))
            if diff > tol:
                raise AssertionError(f"column {col}: values differ by up to {diff:.3g} (> {tol})")
            worst = max(worst, diff)
        elif (
            not (pd.isna(a[col]).to_numpy() == pd.isna(b[col]).to_numpy()).all()
            or not (a[col].astype(str).to_numpy() == b[col].astype(str).to_numpy()).all()
        ):
            raise AssertionError(f"column {col}: labels differ")
    return worst


def main() -> None:
    from codetransfer.pipeline import JobSettings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=None, help="a trained run folder (default: a random tiny-grid-shaped model)")
    ap.add_argument(
        "--n-items",
        type=int,
        default=JobSettings().probe_items,
        help="items per task (default: the main job's probe_items)",
    )
    ap.add_argument("--max-difficulty", type=int, default=1, help="hardest item level (the tiny grid's: 1)")
    ap.add_argument(
        "--labels",
        default=",".join(JobSettings().probe_labels),
        help="label name patterns probed (default: the main job's probe_labels; 'all': every label)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="timed (reference, fast) pairs; medians are reported")
    args = ap.parse_args()
    args.labels = None if args.labels == "all" else args.labels.split(",")

    from codetransfer.probes import fast
    from codetransfer.trained import load_run

    tmp = Path(tempfile.mkdtemp(prefix="bench-probing-"))
    run = Path(args.run) if args.run else _random_run(tmp / "model", args.n_items, args.max_difficulty)
    load_run(run)  # imports and first load paid before timing
    import codetransfer.probes.sweep  # noqa: F401
    from transformer_lens.tools.analysis import random_init_bridge  # noqa: F401

    times: dict[str, list[float]] = {"reference": [], "fast": []}
    cpus: dict[str, list[float]] = {"reference": [], "fast": []}
    tables: dict[str, pd.DataFrame] = {}
    for r in range(args.repeats):
        for name in ("reference", "fast"):
            out = tmp / f"{name}-{r}"
            with fast.reference() if name == "reference" else contextlib.nullcontext():
                wall, cpu = _sweep(run, out, args)
            times[name].append(wall)
            cpus[name].append(cpu)
            tables[name] = pd.read_parquet(out / "probes.parquet")
            print(f"{name:9s} repeat {r}: {wall:.1f} s wall, {cpu:.1f} s cpu, {len(tables[name])} rows", flush=True)
    worst = compare(tables["reference"], tables["fast"])
    ref, new = statistics.median(times["reference"]), statistics.median(times["fast"])
    ref_cpu, new_cpu = statistics.median(cpus["reference"]), statistics.median(cpus["fast"])
    print(f"tables agree: {len(tables['fast'])} rows, largest difference {worst:.3g}")
    print(f"reference {ref:.1f} s wall, {ref_cpu:.1f} s cpu")
    print(f"fast      {new:.1f} s wall, {new_cpu:.1f} s cpu")
    print(f"cpu ratio {ref_cpu / new_cpu:.2f}")
    print(f"ratio {ref / new:.2f}")


if __name__ == "__main__":
    main()
