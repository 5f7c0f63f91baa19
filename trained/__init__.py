"""codetransfer.trained: sources, tokenizer, recipes and grid, the training loop, the run registry.

The public entry points::

    grid = load_grid("tiny")                     # a preset name or a .toml file
    train_grid(grid, "out/")                     # trains what is missing
    runs = find_runs("out/")                     # RunInfo per run
    run = load_run(runs[0])                      # .bridge (TransformerBridge), .tokenizer, .info
"""

from codetransfer.trained.config import GridConfig, ModelConfig, Phase, Recipe, grid_from_dict, load_grid
from codetransfer.trained.runs import LoadedRun, RunInfo, check_same_grid, find_runs, load_run, runs_table, train_grid

__all__ = [
    "GridConfig",
    "ModelConfig",
    "Phase",
    "Recipe",
    "grid_from_dict",
    "load_grid",
    "LoadedRun",
    "RunInfo",
    "check_same_grid",
    "find_runs",
    "load_run",
    "runs_table",
    "train_grid",
]
