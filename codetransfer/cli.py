"""``codetransfer <verb>``: the thin command-line layer over the library.

Each verb lives in ``codetransfer/commands/<verb>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``: it parses its flags, calls one library function and prints (the map of verbs
to library functions is in docs/design.md). Bad input raises :class:`~codetransfer.errors.CodetransferError`; it is printed
as one line (``error: ...``) with exit status 2 and no traceback; a reader that closes the output early
(``| head``) ends the command quietly with status 141, as it would a shell tool.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import codetransfer
from codetransfer.errors import CodetransferError

#: verb -> one-line help. Modules are imported lazily so that `codetransfer --help` is instant.
VERBS = {
    "train": "train the runs of a grid that are missing (skips complete ones)",
    "runs": "list the runs in a folder with tokens seen and validation loss",
    "tasks": "list the task families, or show sample items",
    "grid": "list the shipped grids, or print one as a grid .toml file",
    "eval": "score every run on every task; writes eval.parquet",
    "probe": "probing sweep over runs x tasks x sites x layers; writes probes.parquet",
    "patch": "activation patching sweeps; writes patching.parquet (and cross-model / cross-rendering)",
    "attention": "attention head scores of every run; writes attention.parquet",
    "merge": "merge the parts of sharded probe/patch sweeps (--shard i/n) into the final tables",
    "run": "the main job: train, evaluate, probe, patch, attention, report (or --models FILE: no training)",
}


def _command(verb: str):
    try:
        return importlib.import_module(f"codetransfer.commands.{verb}")
    except ModuleNotFoundError as e:
        if e.name == f"codetransfer.commands.{verb}":
            return None
        raise


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``error: ...`` line (no usage block), like every other refusal."""

    def error(self, message: str):
        raise CodetransferError(f"{self.prog}: {message} (see '{self.prog} --help')")


def build_parser(wanted: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only the module of verb ``wanted`` is imported (all of them when None)."""
    parser = _Parser(prog="codetransfer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"codetransfer {codetransfer.__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, help_ in VERBS.items():
        p = sub.add_parser(verb, help=help_, description=help_)
        # Import only the module of the verb being run (or all of them for --help listings).
        if wanted in (verb, None, "-h", "--help"):
            mod = _command(verb)
            if mod is not None:
                mod.add_arguments(p)
                p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser = build_parser(sys.argv[1] if len(sys.argv) > 1 else None)
    try:
        args = parser.parse_args(sys.argv[1:])
        from codetransfer.trained.checks import check_flags

        check_flags(args)  # --out / --runs / --device of every verb, before any work
    except CodetransferError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.verb is None:
        parser.print_help()
        return 2
    run = getattr(args, "_run", None)
    if run is None:
        print(f"error: '{args.verb}' is not available in this version of codetransfer", file=sys.stderr)
        return 2
    try:
        return int(run(args) or 0)
    except CodetransferError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader closed our stdout (`codetransfer runs DIR | head`): stop quietly
        _silence_stdout()
        return 141  # 128 + SIGPIPE, as a shell tool killed by the closed pipe


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not raise a second BrokenPipeError."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
