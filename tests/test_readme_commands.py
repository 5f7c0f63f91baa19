"""Every command of the README's "## Command line" block works as pasted, in order, on what precedes it.

The block is read from README.md, comments are stripped, and each command runs in-process
(``codetransfer.cli.main``) in a fresh working directory, in the README's order; it must exit 0 and
write the files its comment promises. A command in backticks inside a comment (``codetransfer tasks
show entity_tracking``) runs right after its line. An ``[optional part]`` runs twice: once without it, and
once more with each optional part (its placeholders, ``A B`` of ``--cross-model A B``, filled with runs of
the grid trained above). The block of "## From Python / notebooks" runs at the end, on the same runs.

What the test changes, and why (everything else is the README's text):

* ``tiny`` -> ``TINY_STANDIN``, only as the grid argument of ``train`` and ``run`` (:data:`SUBSTITUTES`):
  the preset trains 3 seeds x 4 arms for minutes each. The stand-in has the preset's model, tokenizer
  size and sources (checked against the preset below: the same 128-token context, so the same items fit),
  a shared base phase, a short induction warm-up, snapshots (``--checkpoints``), 2 recipes, 1 seed, and a
  few thousand tokens per run. ``grid show tiny`` runs on the real preset (it only prints it).
* flags appended to some verbs (:data:`EXTRA_FLAGS`), never written into the README: ``--n-items`` for
  the analysis verbs (small, but >= 2 per level for ``eval`` so that every level's prompt length is still
  checked against the context, as at the default 200); ``--jobs 1`` for ``train`` and ``run`` (the README
  names ``--jobs N``; one process here); ``run`` also gets ``--settings`` with small ``JobSettings``.
* inputs the README does not show how to make: ``pairs.toml`` for ``--models`` is written here from two
  runs of the stand-in grid, as docs/models.md describes a model-set file (groups ``base`` and ``+code``).

Not run: the "## Set-up" block (``make demo`` trains the real preset, ``make test`` is the whole suite)
and the commands quoted in running text (GPU and cluster set-ups: docs/scaling.md). A new command in the
Command line block, a changed one, or a ``codetransfer`` command in any other ``bash`` block fails
``test_the_test_knows_every_readme_command`` until this file says what it promises.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import tomllib
from pathlib import Path

import pandas as pd

from codetransfer.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Command line"
PYTHON_SECTION = "## From Python / notebooks"
SETUP_BLOCK = ("make demo", "make test")  # the "## Set-up" block: known, not run (see the module docstring)

#: the stand-in for the ``tiny`` preset: its [model], tokenizer size and sources, trained for seconds
TINY_STANDIN = """
name = "tiny-standin"
description = "the tiny preset's model, tokenizer size and sources; seconds of training"
seeds = [0]
[model]
arch = "llama"
n_layers = 2
d_model = 64
n_heads = 4
d_mlp = 256
n_ctx = 128
rotary_pct = 0.25
[tokenizer]
vocab_size = 512
sample_bytes = 100000
[sources.gcide]
kind = "gcide"
max_bytes = 40000
[sources.narratives]
kind = "synthetic_narrative"
max_bytes = 40000
[sources.stdlib]
kind = "stdlib"
max_bytes = 40000
[sources.programs]
kind = "synthetic_program"
max_bytes = 40000
[train]
batch_size = 4
eval_every = 4
eval_tokens = 1024
save_every = 4
snapshot_every = 4
induction_warmup = 4
[[recipes]]
name = "text-only"
[[recipes.phases]]
name = "base"
mixture = { gcide = 0.25, narratives = 0.75 }
tokens = 2048
[[recipes.phases]]
name = "arm"
mixture = { gcide = 0.25, narratives = 0.75 }
tokens = 2048
[[recipes]]
name = "text+programs"
[[recipes.phases]]
name = "base"
mixture = { gcide = 0.25, narratives = 0.75 }
tokens = 2048
[[recipes.phases]]
name = "arm"
mixture = { gcide = 0.125, narratives = 0.375, programs = 0.5 }
tokens = 2048
"""
STANDIN_FILE = "tiny-standin.toml"

#: the README's token -> what the test passes instead, as the grid argument of these verbs only
SUBSTITUTES = {"tiny": STANDIN_FILE}
SUBSTITUTED_VERBS = ("train", "run")

#: small job settings for ``run`` (fields of codetransfer.pipeline.JobSettings), written to SETTINGS_FILE
JOB_SETTINGS = """
eval_items = 8
curve_items = 4
probe_items = 40
patch_items = 8
attention_items = 4
"""
SETTINGS_FILE = "job.toml"

#: flags the test appends to a verb's README command (added here only; the README shows the defaults).
#: 14 eval items: two per level of the families with the most levels (7), so the context check sees
#: every level as with the default 200; 40 probe items: enough rows per label for the probes.
EXTRA_FLAGS = {
    "train": ["--jobs", "1"],
    "eval": ["--n-items", "14"],
    "probe": ["--n-items", "40"],
    "patch": ["--n-items", "8"],
    "attention": ["--n-items", "8"],
    "run": ["--settings", SETTINGS_FILE, "--jobs", "1"],
}

#: the model-set file the ``--models`` command reads, written from runs of the stand-in (docs/models.md)
PAIRS_FILE = "pairs.toml"
PAIRS = """
name = "code-pairs"
baseline = "base"

[[model]]
path = "runs/tiny/runs/text-only-s0"
group = "base"
seed = 0

[[model]]
path = "runs/tiny/runs/text+programs-s0"
group = "+code"
seed = 0
"""

TASK_FILES = [f"out/tasks/{t}.{ext}" for t in (
    "entity_tracking", "variable_binding", "counting", "possession", "knowledge_cloze", "code_state"
) for ext in ("jsonl", "yaml")] + ["out/tasks/codetransfer.yaml"]  # fmt: skip

#: every command of the block, as the README writes it (comment stripped), in order -> the files it writes,
#: per variant: "" the command without its [optional] parts, else the optional part that is added
PROMISES: dict[str, dict[str, tuple[str, ...]]] = {
    "codetransfer grid show tiny": {"": ()},
    "codetransfer train tiny --out runs/tiny": {
        "": ("runs/tiny/runs/text-only-s0/config.json", "runs/tiny/runs/text+programs-s0/config.json")
    },
    "codetransfer runs runs/tiny": {"": ()},
    "codetransfer tasks": {"": ()},
    "codetransfer tasks show entity_tracking": {"": ()},
    "codetransfer eval --runs runs/tiny --out results": {
        "": ("results/eval.parquet", "results/summary.csv", "results/scores.parquet")
    },
    "codetransfer eval --runs runs/tiny --out results --checkpoints": {
        "": ("results/eval.parquet", "results/summary.csv", "results/learning.parquet")
    },
    "codetransfer probe --runs runs/tiny --tasks entity_tracking --sites resid_post --out results": {
        "": ("results/probes.parquet",)
    },
    "codetransfer patch --runs runs/tiny --task entity_tracking --out results [--cross-model A B] [--cross-rendering]": {
        "": ("results/patching.parquet",),
        "--cross-model A B": ("results/patching.parquet", "results/cross_model.parquet"),
        "--cross-rendering": ("results/patching.parquet", "results/cross_rendering.parquet"),
    },
    "codetransfer attention --runs runs/tiny --out results [--checkpoints]": {
        "": ("results/attention.parquet",),
        "--checkpoints": ("results/attention.parquet", "results/attention_over_training.parquet"),
    },
    "codetransfer merge --out results": {"": ("results/probes.parquet",)},
    "codetransfer run tiny --out out/demo": {
        "": (
            "out/demo/report/index.html",
            "out/demo/results/eval.parquet",
            "out/demo/results/comparison.parquet",
            "out/demo/results/probes.parquet",
            "out/demo/results/patching.parquet",
            "out/demo/results/attention.parquet",
        )
    },
    "codetransfer eval --models pairs.toml --out results": {"": ("results/eval.parquet", "results/summary.csv")},
    "codetransfer tasks export out/tasks --format lm-eval": {"": tuple(TASK_FILES)},
}


# ------------------------------------------------------------------------------------------------
# reading the README


def bash_blocks(text: str) -> list[tuple[str, list[str]]]:
    """``(section heading, lines)`` of every ```bash block of ``text``."""
    blocks, heading, current = [], "", None
    for line in text.splitlines():
        if current is None:
            if line.startswith("## "):
                heading = line.strip()
            elif line.strip() == "```bash":
                current = []
        elif line.strip() == "```":
            blocks.append((heading, current))
            current = None
        else:
            current.append(line)
    return blocks


def python_block(text: str, section: str) -> str:
    """The first ```python block under ``section``."""
    body = text.split(section, 1)[1]
    return body.split("```python\n", 1)[1].split("```", 1)[0]


def split_comment(line: str) -> tuple[str, str]:
    """``(command, comment)``: a ``#`` after whitespace starts a shell comment."""
    parts = re.split(r"(?:^|\s)#", line, maxsplit=1)
    return parts[0].strip(), (parts[1].strip() if len(parts) > 1 else "")


def readme_commands(text: str) -> list[str]:
    """The Command line block's commands in order, each followed by the commands quoted in its comment."""
    blocks = [lines for heading, lines in bash_blocks(text) if heading == SECTION]
    assert len(blocks) == 1, f"README.md: expected one ```bash block under '{SECTION}', found {len(blocks)}"
    commands = []
    for line in blocks[0]:
        command, comment = split_comment(line)
        if command:
            commands.append(command)
        commands += re.findall(r"`(codetransfer [^`]+)`", comment)
    return commands


def variants(command: str) -> list[tuple[str, str]]:
    """``(optional part or "", command line)``: without the ``[...]`` parts, then with each one."""
    optional = re.findall(r"\[([^\]]+)\]", command)
    base = re.sub(r"\s*\[[^\]]+\]", "", command).strip()
    return [("", base)] + [(part, f"{base} {part}") for part in optional]


def to_argv(line: str, placeholders: dict[str, str]) -> list[str]:
    """``line`` (``codetransfer VERB ...``) as the argv of ``main``, with the test's substitutions and flags."""
    argv = shlex.split(line)
    assert argv[0] == "codetransfer", line
    argv = [placeholders.get(a, a) for a in argv[1:]]
    if argv[0] in SUBSTITUTED_VERBS and argv[1] in SUBSTITUTES:
        argv[1] = SUBSTITUTES[argv[1]]
    if argv[:2] != ["tasks", "export"]:  # cheap as pasted: no extra flags
        argv += EXTRA_FLAGS.get(argv[0], [])
    return argv


# ------------------------------------------------------------------------------------------------
# fast checks: the test knows the README, the stand-in mirrors the preset


def test_the_test_knows_every_readme_command():
    text = README.read_text()
    commands = readme_commands(text)
    unknown = [c for c in commands if c not in PROMISES]
    assert not unknown, (
        "README.md has commands that tests/test_readme_commands.py does not know; add each to PROMISES "
        f"(the files it writes): {unknown}"
    )
    assert commands == list(PROMISES), "README.md's Command line block changed order or lost commands"
    for command, promised in PROMISES.items():
        assert [v for v, _ in variants(command)] == list(promised), command
    for heading, lines in bash_blocks(text):
        if heading == SECTION:
            continue
        commands = [split_comment(line)[0] for line in lines if split_comment(line)[0]]
        assert not [c for c in commands if c.startswith("codetransfer")], (
            f"README.md: a ```bash block under '{heading}' has codetransfer commands; run it in this test"
        )
        assert tuple(commands) == SETUP_BLOCK, f"README.md: unknown ```bash block under '{heading}': {commands}"


def test_the_standin_has_the_tiny_presets_shape():
    """Same model (so the same context and the same items fit), tokenizer size, sources and baseline."""
    from codetransfer.trained.config import grid_from_dict
    from codetransfer.trained.presets import preset

    tiny, standin = preset("tiny"), grid_from_dict(tomllib.loads(TINY_STANDIN))
    assert standin.model == tiny.model
    assert standin.tokenizer.vocab_size == tiny.tokenizer.vocab_size
    assert {n: s.kind for n, s in standin.sources.items()} == {n: s.kind for n, s in tiny.sources.items()}
    assert [r.name for r in standin.recipes][0] == [r.name for r in tiny.recipes][0] == "text-only"
    assert standin.train.snapshot_every > 0 and standin.train.induction_warmup > 0
    assert [p.name for p in standin.recipes[0].phases] == [p.name for p in tiny.recipes[0].phases]


# ------------------------------------------------------------------------------------------------
# the commands, in order


def _stamp(path: Path):
    return (path.stat().st_mtime_ns, path.stat().st_ino) if path.exists() else None


@contextlib.contextmanager
def _one_thread():
    """One torch and BLAS thread: on a busy 2-core machine two threads make the forwards several times slower."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


def _check_output(argv: list[str], out: str, placeholders: dict[str, str]) -> None:
    """What the comment promises on stdout, for the verbs that only print."""
    from codetransfer.tasks import task_names
    from codetransfer.trained import load_grid

    if argv[:2] == ["grid", "show"]:  # "a preset as the grid TOML that `train` accepts"
        Path("shown.toml").write_text(out)
        assert load_grid("shown.toml").name == argv[2]
    elif argv[0] == "runs":  # "recipe, seed, tokens per source, val loss, status"
        header = out.splitlines()[0].split()
        assert {"run", "recipe", "seed", "status", "val/gcide"} <= set(header), header
        assert out.count(" complete ") == 2 and placeholders["A"] in out and placeholders["B"] in out
    elif argv == ["tasks"]:
        assert all(t in out for t in task_names())
    elif argv[:2] == ["tasks", "show"]:
        assert f"[{argv[2]} #" in out and "candidates:" in out


def test_readme_commands_run_in_order(tmp_path, monkeypatch, capsys):
    from codetransfer.trained import find_runs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["codetransfer"])  # main(argv) sets sys.argv; restored after the test
    Path(STANDIN_FILE).write_text(TINY_STANDIN)
    Path(SETTINGS_FILE).write_text(JOB_SETTINGS)
    placeholders: dict[str, str] = {}
    probes_before_merge = None
    with _one_thread():
        for command in readme_commands(README.read_text()):
            if "--models " + PAIRS_FILE in command:
                Path(PAIRS_FILE).write_text(PAIRS)  # the README does not show how to make it
            for part, line in variants(command):
                argv = to_argv(line, placeholders)
                promised = [Path(f) for f in PROMISES[command][part]]
                before = {f: _stamp(f) for f in promised}
                if argv[0] == "merge":
                    probes_before_merge = pd.read_parquet("results/probes.parquet")
                capsys.readouterr()
                rc = main(argv)
                out, err = capsys.readouterr()
                assert rc == 0, f"`{line}` (run as {argv}) exited {rc}:\n{err[-3000:]}"
                unwritten = [str(f) for f in promised if _stamp(f) is None or _stamp(f) == before[f]]
                assert not unwritten, f"`{line}` did not write {unwritten}"
                if argv[0] == "train":  # the runs that fill `--cross-model A B`: a recipe into the baseline
                    runs = {r.recipe: r.name for r in find_runs("runs/tiny", complete_only=True)}
                    placeholders.update(A=runs["text+programs"], B=runs["text-only"])
                _check_output(argv, out, placeholders)
                if argv[0] == "merge":  # the parts of the probe sweep above make its table again
                    pd.testing.assert_frame_equal(pd.read_parquet("results/probes.parquet"), probes_before_merge)
                if "--models" in argv:  # the model set's baseline group is the summary's baseline
                    summary = pd.read_csv("results/summary.csv")
                    assert set(summary["recipe"]) == {"+code"} and set(summary["baseline"]) == {"base"}
        # "## From Python / notebooks", on the runs trained above
        scope: dict = {}
        exec(python_block(README.read_text(), PYTHON_SECTION), scope)
    assert scope["run"].bridge is not None and scope["run"].info.name in placeholders.values()
    assert pd.read_parquet("results/cross_model.parquet")["run"].str.contains("->").all()
