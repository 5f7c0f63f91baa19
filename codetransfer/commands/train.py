"""codetransfer train GRID [--out DIR] [--only RECIPE ...] [--device DEV] [--jobs N]"""

from __future__ import annotations

import os

from codetransfer.commands import add_grid_argument


def add_arguments(p) -> None:
    add_grid_argument(p, "a grid .toml file or a preset name (%(presets)s)")
    p.add_argument("--out", default="runs", help="output folder (default: ./runs)")
    p.add_argument("--only", action="append", metavar="RECIPE", help="train only this recipe (repeatable)")
    p.add_argument("--seed", action="append", type=int, help="train only this seed (repeatable)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...); default cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs trained side by side in worker processes, one torch thread each; results do not "
        "depend on it (default: the CPU cores available on cpu, 1 on a GPU or under torchrun)",
    )


def run(args) -> int:
    import torch

    from codetransfer.trained import load_grid, runs_table, train_grid

    from codetransfer.trained.checks import check_device

    grid = load_grid(args.grid)
    device = check_device(args.device)  # the check every verb gets (also done before the verb starts)
    dist = _init_distributed(device)
    train_grid(
        grid,
        args.out,
        only=args.only,
        seeds=args.seed,
        device=_local_device(device),
        progress=not args.quiet,
        log=print if _rank() == 0 else (lambda *a, **k: None),
        jobs=default_jobs(device, dist) if args.jobs is None else args.jobs,
    )
    if dist:
        torch.distributed.destroy_process_group()
    if _rank() == 0:
        print(runs_table(args.out).to_string(index=False))
    return 0


def default_jobs(device: str, dist: bool = False) -> int:
    """--jobs default: the CPU cores available when training on CPU outside torchrun, else 1."""
    from codetransfer.trained.parallel import default_jobs as cores

    return cores() if device == "cpu" and not dist else 1


def _rank() -> int:
    return int(os.environ.get("RANK", 0))


def _init_distributed(device: str) -> bool:
    """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL on CUDA, gloo on CPU)."""
    import torch

    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    backend = "nccl" if device.startswith("cuda") else "gloo"
    torch.distributed.init_process_group(backend)
    return True


def _local_device(device: str) -> str:
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device
