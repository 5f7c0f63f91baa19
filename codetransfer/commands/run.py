"""codetransfer run GRID --out DIR [--settings FILE]: the main job (train, eval, probe, patch, attention, report).

``codetransfer run --models FILE --out DIR``: the same analysis stages and report over the checkpoints of a
model-set file (docs/models.md) instead of a trained grid; nothing is trained.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from codetransfer.commands import add_grid_argument
from codetransfer.errors import CodetransferError, did_you_mean


def add_arguments(p) -> None:
    add_grid_argument(
        p,
        "a grid .toml file or a preset name (%(presets)s); or leave it out and pass --models",
        nargs="?",
        default=None,
    )
    p.add_argument(
        "--models",
        metavar="FILE",
        default=None,
        help="a model-set TOML file naming checkpoints (docs/models.md) instead of GRID: no training; the "
        "analysis stages and the report run over its models (groups as recipes)",
    )
    p.add_argument("--out", required=True, help="output folder (runs, results/, report/)")
    p.add_argument(
        "--stages",
        default=None,
        help="comma-separated stages to run (default: all; with --models all but train)",
    )
    p.add_argument(
        "--settings",
        metavar="FILE",
        help="a .toml or .json file of job settings (codetransfer.pipeline.JobSettings fields, e.g. "
        "eval_items = 20, probe_items = 40, patch_items = 8, attention_items = 8, seed = 1); "
        "fields left out keep their defaults, unknown fields are refused",
    )
    p.add_argument(
        "--baseline",
        default=None,
        help="baseline recipe (default: the settings file's, else text-only, else the grid's first recipe); with "
        "--models a group of the set (default: the settings file's, else the set's baseline, else its first group)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="worker processes for training runs and analysis units, one thread each; results do not depend "
        "on it (default: the CPU cores available on cpu, 1 on a GPU)",
    )


def _names_baseline(path) -> bool:
    """Whether the settings file ``path`` (already read by ``load_settings``) sets ``baseline``."""
    import tomllib

    path = Path(path)
    data = json.loads(path.read_text()) if path.suffix == ".json" else tomllib.loads(path.read_text())
    return "baseline" in data


def run(args) -> int:
    from codetransfer.pipeline import STAGES, JobSettings, load_settings, model_set_baseline, run_job

    if (args.grid is None) == (args.models is None):
        raise CodetransferError(
            "run: give exactly one of GRID (a grid .toml file or preset name) or --models FILE (a model-set "
            "TOML file of checkpoints, see docs/models.md)"
        )
    stages = None  # every stage (but train with --models)
    if args.stages is not None:
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        for s in stages:
            if s not in STAGES:
                raise CodetransferError(
                    f"--stages: unknown stage '{s}'{did_you_mean(s, STAGES)}; stages: {', '.join(STAGES)}"
                )
        if args.models is not None and "train" in stages:
            raise CodetransferError(
                "--stages: a model set is not trained (its checkpoints are given); leave train out of --stages "
                "with --models"
            )
    if args.settings:
        settings = load_settings(args.settings, baseline=args.baseline)
    else:
        settings = JobSettings(**({"baseline": args.baseline} if args.baseline else {}))
    if args.models is not None:  # the baseline is a group of the set: the one asked for, else the set's own
        import dataclasses

        from codetransfer.trained.modelset import load_model_set

        asked = args.baseline or (settings.baseline if args.settings and _names_baseline(args.settings) else None)
        settings = dataclasses.replace(settings, baseline=model_set_baseline(load_model_set(args.models), asked))
    elif args.baseline is not None or settings.baseline != JobSettings().baseline:  # asked for: must exist
        from codetransfer.trained import load_grid
        from codetransfer.trained.checks import check_baseline

        check_baseline(settings.baseline, [r.name for r in load_grid(args.grid).recipes])
    t0 = time.time()
    from codetransfer.commands.train import default_jobs

    jobs = default_jobs(args.device) if args.jobs is None else args.jobs
    timings = run_job(args.grid, args.out, settings, device=args.device, stages=stages, jobs=jobs, models=args.models)
    report = timings.pop("report_path", None)
    print(f"\nmain job done in {time.time() - t0:.0f}s: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    if report:
        headline = json.loads((Path(report).parent / "headline.json").read_text())
        print(f"report: {report}")
        for i, h in enumerate(headline, 1):
            print(f"  {i}. {h}")
    return 0
