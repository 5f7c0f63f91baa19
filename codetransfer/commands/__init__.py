"""One module per ``codetransfer`` verb, each with ``add_arguments(parser)`` and ``run(args) -> int``.

A verb parses its flags, calls one library function and prints what it wrote. The modules import only
the standard library at their top (``codetransfer --help`` imports all of them); the library is
imported inside ``run``.
"""


class _PresetNames:
    """The names of the shipped grids, ``', '.join(PRESETS)``, looked up when a help text is printed."""

    def __str__(self) -> str:
        from codetransfer.trained.presets import PRESETS

        return ", ".join(PRESETS)


def add_grid_argument(p, help: str, **kwargs):
    """Add the positional ``grid`` argument (a grid .toml file or a preset name) to the verb's parser ``p``.

    ``help`` may say ``%(presets)s``: argparse formats a help string with its argument's attributes, and the
    argument carries the preset names (:data:`codetransfer.trained.presets.PRESETS`) as one that is read only
    when the help is printed, so the list cannot go stale and building the parser (``codetransfer --help``
    builds every verb's) still imports nothing but the standard library."""
    action = p.add_argument("grid", **kwargs)
    # set after add_argument, which (in newer Pythons) checks a help string against the attributes it knows
    action.help, action.presets = help, _PresetNames()
    return action
