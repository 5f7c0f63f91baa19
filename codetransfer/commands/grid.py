"""codetransfer grid [show NAME|FILE]

Without a sub-command: list the shipped grids (presets) with their descriptions. ``show`` prints a
preset (or a grid file, after validation) as the TOML file that ``codetransfer train`` accepts: save
it, edit it and train it (``codetransfer grid show tiny > my-grid.toml``).
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="grid_cmd", metavar="COMMAND")
    show = sub.add_parser("show", help="print a preset (or a grid file) as a grid .toml file")
    show.add_argument("name", help="a preset name (see `codetransfer grid`) or a grid .toml file")


def run(args) -> int:
    from codetransfer.trained import load_grid
    from codetransfer.trained.gridfile import grid_to_toml
    from codetransfer.trained.presets import PRESETS, preset

    if args.grid_cmd == "show":
        print(grid_to_toml(load_grid(args.name)), end="")
        return 0
    for name in PRESETS:
        print(f"{name:<10} {preset(name).description}")
    return 0
