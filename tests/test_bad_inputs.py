"""Bad input never gets past the front door.

Every case drives the command line in-process (``codetransfer.cli.main``) with one bad input and checks
the same four things: exit status 2, exactly one ``error:`` line on stderr, no traceback, and an output
tree (paths and content hashes) identical before and after. The cases that need a trained grid share one
tiny trained output folder (two recipes, a few steps each), copied per case before it is damaged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from codetransfer import cli

from gridfiles import MINI_GRID

# ----------------------------------------------------------------------------------------------- helpers


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` -> the sha256 of its content ('dir' for folders)."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def refused(capsys, argv: list[str], root: Path) -> str:
    """Run ``codetransfer argv``; assert the refusal contract; return the error line."""
    capsys.readouterr()
    before = tree(root)
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, f"exit {code} for {argv}; stderr: {err}"
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, err
    assert tree(root) == before, f"{argv} changed the output tree"
    return errors[0]


def sub(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# a grid whose second recipe mixes a source named by the case
def with_source(name: str) -> str:
    return MINI_GRID.replace("[sources.gcide]", f'[sources."{name}"]\nkind = "gcide"\n[sources.gcide]', 1).replace(
        "mixture = { gcide = 1.0 }", f'mixture = {{ "{name}" = 1.0 }}', 1
    )


EXTRA_RECIPE = """
[[recipes]]
name = "{name}"
[[recipes.phases]]
name = "main"
mixture = {{ gcide = 1.0 }}
tokens = 1024
"""
RECIPE_TEXT = '''name = "text-only"'''

GRID_CASES = {
    # names become paths: one identifier rule for sources, recipes and phases
    "source-escapes": (with_source("../../../escaped"), "not a valid name"),
    "source-slash": (with_source("a/b"), "not a valid name"),
    "source-dot": (with_source(".hidden"), "not a valid name"),
    "source-space": (with_source("my source"), "not a valid name"),
    "source-dotdot": (with_source("a..b"), "not a valid name"),
    "recipe-slash": (sub(MINI_GRID, RECIPE_TEXT, 'name = "a/b"'), "not a valid name"),
    "recipe-dotdot": (sub(MINI_GRID, RECIPE_TEXT, 'name = ".."'), "not a valid name"),
    "recipe-empty": (sub(MINI_GRID, RECIPE_TEXT, 'name = ""'), "not a valid name"),
    "recipe-long": (sub(MINI_GRID, RECIPE_TEXT, f'name = "{"x" * 100}"'), "not a valid name"),
    "phase-slash": (sub(MINI_GRID, 'name = "main"', 'name = "x/y"'), "not a valid name"),
    "phase-duplicate": (sub(MINI_GRID, 'name = "text"', 'name = "balanced"'), "duplicate phase name"),
    "recipe-collision": (
        MINI_GRID + EXTRA_RECIPE.format(name="balanced-text"),
        "recipes 'balanced->text' and 'balanced-text' would share the run folder",
    ),
    "recipe-collision-gt": (MINI_GRID + EXTRA_RECIPE.format(name="balanced>-code"), "would share the run folder"),
    "grid-name": (sub(MINI_GRID, 'name = "mini"', 'name = "../mini"'), "not a valid name"),
    # numbers: finite and in range, at load time
    "lr-nan": (sub(MINI_GRID, "peak = 3e-3, final = 3e-4", "peak = nan, final = 3e-4"), "finite"),
    "lr-inf": (sub(MINI_GRID, "peak = 3e-3, final = 3e-4", "peak = inf, final = 3e-4"), "finite"),
    "lr-final-neg-inf": (sub(MINI_GRID, "peak = 3e-3, final = 3e-4", "peak = 3e-3, final = -inf"), "finite"),
    "lr-zero": (sub(MINI_GRID, "peak = 3e-3, final = 3e-4", "peak = 0, final = 0"), "lr.peak"),
    "lr-final-negative": (sub(MINI_GRID, "peak = 3e-3, final = 3e-4", "peak = 3e-3, final = -1e-4"), "lr.final"),
    "lr-huge": (sub(MINI_GRID, "peak = 3e-3, final = 3e-4", "peak = 1e6, final = 3e-4"), "lr.peak"),
    "warmup-nan": (sub(MINI_GRID, "warmup = 0.1", "warmup = nan"), "finite"),
    "weight-decay-negative": (sub(MINI_GRID, "batch_size = 8", "batch_size = 8\nweight_decay = -1"), "weight_decay"),
    "beta1-2": (sub(MINI_GRID, "batch_size = 8", "batch_size = 8\nbeta1 = 2.0"), "beta1"),
    "beta1-1": (sub(MINI_GRID, "batch_size = 8", "batch_size = 8\nbeta1 = 1.0"), "beta1"),
    "beta2-nan": (sub(MINI_GRID, "batch_size = 8", "batch_size = 8\nbeta2 = nan"), "finite"),
    "grad-clip-negative": (sub(MINI_GRID, "batch_size = 8", "batch_size = 8\ngrad_clip = -1.0"), "grad_clip"),
    "grad-clip-inf": (sub(MINI_GRID, "batch_size = 8", "batch_size = 8\ngrad_clip = inf"), "finite"),
    "eval-every-negative": (sub(MINI_GRID, "eval_every = 10", "eval_every = -5"), "eval_every"),
    "eval-tokens-zero": (sub(MINI_GRID, "eval_tokens = 2048", "eval_tokens = 0"), "eval_tokens"),
    "save-every-zero": (sub(MINI_GRID, "save_every = 5", "save_every = 0"), "save_every"),
    "snapshot-every-negative": (
        sub(MINI_GRID, "save_every = 5", "save_every = 5\nsnapshot_every = -1"),
        "snapshot_every",
    ),
    "induction-lr-nan": (sub(MINI_GRID, "save_every = 5", "save_every = 5\ninduction_warmup_lr = nan"), "finite"),
    "induction-negative": (
        sub(MINI_GRID, "save_every = 5", "save_every = 5\ninduction_warmup = -3"),
        "induction_warmup",
    ),
    "batch-zero": (sub(MINI_GRID, "batch_size = 8", "batch_size = 0"), "batch_size"),
    "grad-accum-zero": (sub(MINI_GRID, "batch_size = 8", "batch_size = 8\ngrad_accum = 0"), "grad_accum"),
    "n-ctx-huge": (sub(MINI_GRID, "n_ctx = 32", "n_ctx = 100000000"), "n_ctx"),
    "n-ctx-one": (sub(MINI_GRID, "n_ctx = 32", "n_ctx = 1"), "n_ctx"),
    "n-layers-zero": (sub(MINI_GRID, "n_layers = 1", "n_layers = 0"), "n_layers"),
    "d-model-indivisible": (sub(MINI_GRID, "d_model = 32", "d_model = 33"), "divisible"),
    "rotary-inf": (sub(MINI_GRID, "[tokenizer]", "rotary_pct = inf\n[tokenizer]"), "finite"),
    "rotary-zero": (sub(MINI_GRID, "[tokenizer]", "rotary_pct = 0.0\n[tokenizer]"), "rotary_pct"),
    "vocab-tiny": (sub(MINI_GRID, "vocab_size = 384", "vocab_size = 10"), "vocab_size"),
    "vocab-huge": (sub(MINI_GRID, "vocab_size = 384", "vocab_size = 70000"), "vocab_size"),
    "sample-bytes-zero": (sub(MINI_GRID, "sample_bytes = 100000", "sample_bytes = 0"), "sample_bytes"),
    "heldout-nan": (sub(MINI_GRID, "max_bytes = 120000", "max_bytes = 120000\nheldout_fraction = nan"), "finite"),
    "heldout-one": (
        sub(MINI_GRID, "max_bytes = 120000", "max_bytes = 120000\nheldout_fraction = 1.0"),
        "heldout_fraction",
    ),
    "max-bytes-negative": (sub(MINI_GRID, "max_bytes = 120000", "max_bytes = -1"), "max_bytes"),
    "mixture-inf": (sub(MINI_GRID, "mixture = { gcide = 1.0 }", "mixture = { gcide = inf }"), "finite"),
    "mixture-negative": (sub(MINI_GRID, "mixture = { gcide = 1.0 }", "mixture = { gcide = -1.0 }"), "weights"),
    "mixture-unknown": (sub(MINI_GRID, "mixture = { gcide = 1.0 }", "mixture = { gcid = 1.0 }"), "did you mean"),
    "tokens-negative": (sub(MINI_GRID, "tokens = 10240", "tokens = -5"), "tokens"),
    "seed-negative": (sub(MINI_GRID, "seeds = [0]", "seeds = [-1]"), "seeds[0]"),
    "seed-huge": (sub(MINI_GRID, "seeds = [0]", "seeds = [99999999999]"), "seeds[0]"),
    "seed-duplicate": (sub(MINI_GRID, "seeds = [0]", "seeds = [0, 0]"), "duplicate seeds"),
    "seed-float": (sub(MINI_GRID, "seeds = [0]", "seeds = [0.5]"), "integer"),
    # data seeds (extra data orders): positive, distinct integers; 0 is every run's own order
    "data-seed-zero": (sub(MINI_GRID, "seeds = [0]", "seeds = [0]\ndata_seeds = [1, 0]"), "data_seeds[1]: 0 is"),
    "data-seed-negative": (sub(MINI_GRID, "seeds = [0]", "seeds = [0]\ndata_seeds = [-2]"), "data_seeds[0]"),
    "data-seed-huge": (sub(MINI_GRID, "seeds = [0]", "seeds = [0]\ndata_seeds = [99999999999]"), "data_seeds[0]"),
    "data-seed-duplicate": (
        sub(MINI_GRID, "seeds = [0]", "seeds = [0]\ndata_seeds = [1, 2, 1]"),
        "duplicate data seeds",
    ),
    "data-seed-float": (sub(MINI_GRID, "seeds = [0]", "seeds = [0]\ndata_seeds = [1.5]"), "integer"),
    "data-seed-not-list": (sub(MINI_GRID, "seeds = [0]", "seeds = [0]\ndata_seeds = 1"), "expected a list"),
    "unknown-field": (sub(MINI_GRID, "batch_size = 8", "batch_sise = 8"), "did you mean"),
    "not-toml": ("name = \n[[[", "not valid TOML"),
}


@pytest.mark.parametrize("case", sorted(GRID_CASES))
def test_bad_grid_refused_before_anything_is_written(case, tmp_path, capsys):
    text, expect = GRID_CASES[case]
    grid = tmp_path / "grid.toml"
    grid.write_text(text)
    line = refused(capsys, ["train", grid, "--out", tmp_path / "out", "--quiet"], tmp_path)
    assert expect in line, line
    assert "\n" not in line


@pytest.mark.parametrize("verb", ["train", "run"])
def test_grid_not_utf8(verb, tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_bytes(MINI_GRID.encode().replace(b'"mini"', b'"mini\xff\xfe"'))
    line = refused(capsys, [verb, grid, "--out", tmp_path / "out"], tmp_path)
    assert "not UTF-8" in line and "grid.toml" in line


# --------------------------------------------------------------------------------------- flags, settings


def _grid(tmp_path) -> Path:
    grid = tmp_path / "grid.toml"
    grid.write_text(MINI_GRID)
    return grid


FLAG_CASES = {
    "train-seed-not-in-grid": (lambda g, o: ["train", g, "--out", o, "--seed", "7"], "seed 7 is not a seed"),
    "train-only-typo": (lambda g, o: ["train", g, "--out", o, "--only", "text-onyl"], "did you mean"),
    "train-device-bogus": (lambda g, o: ["train", g, "--out", o, "--device", "bogus"], "--device"),
    "train-device-ordinal": (lambda g, o: ["train", g, "--out", o, "--device", "cuda:99"], "--device"),
    "run-device-ordinal": (lambda g, o: ["run", g, "--out", o, "--device", "cuda:99"], "--device"),
    "eval-device-ordinal": (lambda g, o: ["eval", "--runs", o, "--out", o, "--device", "cuda:99"], "--device"),
    "probe-device-ordinal": (
        lambda g, o: ["probe", "--runs", o, "--out", o, "--tasks", "entity_tracking", "--device", "cuda:99"],
        "--device",
    ),
    "patch-device-ordinal": (
        lambda g, o: ["patch", "--runs", o, "--out", o, "--task", "entity_tracking", "--device", "cuda:99"],
        "--device",
    ),
    "attention-device-ordinal": (
        lambda g, o: ["attention", "--runs", o, "--out", o, "--device", "cuda:99"],
        "--device",
    ),
    "run-baseline-typo": (lambda g, o: ["run", g, "--out", o, "--baseline", "text-onyl"], "did you mean 'text-only'"),
    "run-stage-typo": (lambda g, o: ["run", g, "--out", o, "--stages", "train,evall"], "did you mean"),
    "run-missing-grid-file": (lambda g, o: ["run", g.parent / "nope.toml", "--out", o], "does not exist"),
    "run-unknown-preset": (lambda g, o: ["run", "tinyy", "--out", o], "tiny"),
    "argparse-unknown-verb": (lambda g, o: ["trian", g], "invalid choice"),
    "argparse-missing-out": (lambda g, o: ["run", g], "--out"),
    "argparse-bad-int": (lambda g, o: ["train", g, "--out", o, "--seed", "x"], "invalid int"),
    "argparse-unknown-flag": (lambda g, o: ["train", g, "--out", o, "--frobnicate"], "unrecognized"),
}


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_bad_flag_refused(case, tmp_path, capsys):
    argv, expect = FLAG_CASES[case]
    line = refused(capsys, argv(_grid(tmp_path), tmp_path / "out"), tmp_path)
    assert expect in line, line


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("verb", ["train", "run", "eval", "probe", "patch", "attention"])
def test_cuda_without_cuda(verb, tmp_path, capsys):
    g, o = _grid(tmp_path), tmp_path / "out"
    argv = [verb, g, "--out", o] if verb in ("train", "run") else [verb, "--runs", o, "--out", o]
    argv += {"patch": ["--task", "entity_tracking"], "probe": ["--tasks", "entity_tracking"]}.get(verb, [])
    assert "--device" in refused(capsys, argv + ["--device", "cuda"], tmp_path)


@pytest.mark.parametrize("verb", ["train", "run", "eval", "attention", "merge"])
def test_file_where_a_folder_is_expected(verb, tmp_path, capsys):
    g = _grid(tmp_path)
    f = tmp_path / "a-file"
    f.write_text("x")
    argv = {
        "train": ["train", g, "--out", f],
        "run": ["run", g, "--out", f],
        "merge": ["merge", "--out", f],
        "eval": ["eval", "--runs", f, "--out", tmp_path / "res"],
        "attention": ["attention", "--runs", tmp_path, "--out", f],
    }[verb]
    assert "is a file, not a folder" in refused(capsys, argv, tmp_path)


SETTINGS_CASES = {
    "eval-items-zero": ("eval_items = 0", "eval_items"),
    "probe-items-negative": ("probe_items = -1", "probe_items"),
    "patch-items-zero": ("patch_items = 0", "patch_items"),
    "seed-negative": ("seed = -3", "seed"),
    "difficulty-negative": ("patch_difficulty = -1", "patch_difficulty"),
    "unknown-field": ("eval_itemz = 3", "did you mean 'eval_items'"),
    "wrong-type": ('eval_items = "many"', "must be int"),
    "task-typo": ('probe_tasks = "entity_trackin"', "did you mean"),
    "probe-labels-empty": ("probe_labels = []", "probe_labels"),
    "probe-labels-match-nothing": ('probe_labels = ["holder@*"]', "no label of task 'entity_tracking'"),
    "baseline-typo": ('baseline = "text-onyl"', "did you mean"),
    "aim-unknown": ('aim = "gaps"', "did you mean 'gap'"),
    "checkpoint-site-typo": ('patch_checkpoint_sites = ["head_ot"]', "patch_checkpoint_sites"),
    "not-toml": ("eval_items = = 3", "not valid TOML"),
}


@pytest.mark.parametrize("case", sorted(SETTINGS_CASES))
def test_bad_settings_refused_before_training(case, tmp_path, capsys):
    text, expect = SETTINGS_CASES[case]
    settings = tmp_path / "settings.toml"
    settings.write_text(text + "\n")
    line = refused(capsys, ["run", _grid(tmp_path), "--out", tmp_path / "out", "--settings", settings], tmp_path)
    assert expect in line, line


def test_settings_not_utf8(tmp_path, capsys):
    settings = tmp_path / "settings.toml"
    settings.write_bytes(b'baseline = "\xff"\n')
    refused(capsys, ["run", _grid(tmp_path), "--out", tmp_path / "out", "--settings", settings], tmp_path)


# ------------------------------------------------------------------------------- a tiny trained grid

TRAINED_GRID = (
    MINI_GRID.split("[[recipes]]")[0]
    + """
[[recipes]]
name = "text-only"
[[recipes.phases]]
name = "main"
mixture = { gcide = 1.0 }
tokens = 512
[[recipes]]
name = "code->text"
[[recipes.phases]]
name = "code"
mixture = { stdlib = 1.0 }
tokens = 512
"""
)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A grid output folder with two complete runs (2 steps each) and the main job's eval stage done on them
    (one item per task family), its grid file and its settings file."""
    folder = tmp_path_factory.mktemp("bad_inputs_trained")
    grid = folder / "grid.toml"
    grid.write_text(TRAINED_GRID)
    (folder / "settings.toml").write_text("eval_items = 1\n")
    assert cli.main(["train", str(grid), "--out", str(folder / "out"), "--quiet"]) == 0
    assert (
        cli.main(
            [
                "run",
                str(grid),
                "--out",
                str(folder / "out"),
                "--stages",
                "eval",
                "--settings",
                str(folder / "settings.toml"),
            ]
        )
        == 0
    )
    return folder


@pytest.fixture
def copy(trained, tmp_path):
    """A private copy of the trained folder (a case may damage it)."""
    shutil.copytree(trained, tmp_path / "t")
    return tmp_path / "t"


RECORD_DAMAGE = {
    "empty-object": b"{}",
    "list": b"[1, 2]",
    "not-json": b"{ this is not json",
    "not-utf8": b'{"recipe": "\xff"}',
    "seed-string": b'{"recipe": "text-only", "seed": "zero", "status": "complete"}',
}


@pytest.mark.parametrize("damage", sorted(RECORD_DAMAGE))
@pytest.mark.parametrize("verb", ["eval", "runs", "train"])
def test_damaged_run_record(verb, damage, copy, capsys):
    (copy / "out" / "runs" / "text-only-s0" / "codetransfer.json").write_bytes(RECORD_DAMAGE[damage])
    out = copy / "out"
    argv = {
        "eval": ["eval", "--runs", out, "--out", copy / "res"],
        "runs": ["runs", out],
        "train": ["train", copy / "grid.toml", "--out", out, "--quiet"],
    }[verb]
    line = refused(capsys, argv, copy)
    assert "codetransfer.json" in line and ("delete" in line), line


def test_eval_baseline_typo(copy, capsys):
    line = refused(capsys, ["eval", "--runs", copy / "out", "--out", copy / "res", "--baseline", "text-onyl"], copy)
    assert "did you mean 'text-only'" in line


def test_run_baseline_typo_on_a_trained_grid(copy, capsys):
    line = refused(capsys, ["run", copy / "grid.toml", "--out", copy / "out", "--baseline", "code-text"], copy)
    assert "did you mean 'code->text'" in line


def test_train_seed_not_in_grid_on_a_trained_grid(copy, capsys):
    refused(capsys, ["train", copy / "grid.toml", "--out", copy / "out", "--seed", "1"], copy)


def test_attention_half_len_too_long(copy, capsys):
    line = refused(
        capsys,
        ["attention", "--runs", copy / "out", "--out", copy / "res", "--half-len", "500", "--tasks", "none"],
        copy,
    )
    assert "--half-len" in line and "<= 15" in line


def _eval_stage(copy) -> list:
    return ["run", copy / "grid.toml", "--out", copy / "out", "--stages", "eval", "--settings", copy / "settings.toml"]


@pytest.mark.parametrize("damage", [b"[not a record", b"[]", b"\xff\xfe"])
def test_unit_record_damaged(damage, copy, capsys):
    (copy / "out" / "units" / "eval-text-only-s0.json").write_bytes(damage)
    line = refused(capsys, _eval_stage(copy), copy)
    assert "eval-text-only-s0.json" in line and "delete" in line


@pytest.mark.parametrize("table", ["scores.parquet", "losses.parquet"])
def test_unit_table_damaged(table, copy, capsys):
    (copy / "out" / "results" / "units" / "eval-code-text-s0" / table).write_bytes(b"PAR1 not a table")
    line = refused(capsys, _eval_stage(copy), copy)
    assert f"eval-code-text-s0/{table}" in line and "delete" in line


def test_unit_table_damaged_while_other_units_still_need_work(copy, capsys):
    """The damaged table is refused before the units that still have work run (nothing changes)."""
    (copy / "out" / "units" / "eval-text-only-s0.json").unlink()  # this unit would work again
    (copy / "out" / "results" / "units" / "eval-code-text-s0" / "scores.parquet").write_bytes(b"PAR1 not a table")
    line = refused(capsys, _eval_stage(copy), copy)
    assert "eval-code-text-s0/scores.parquet" in line and "delete" in line


def test_report_given_a_table_without_its_columns(copy, capsys):
    import pandas as pd

    pd.DataFrame({"x": [1, 2]}).to_parquet(copy / "out" / "results" / "eval.parquet")
    line = refused(capsys, ["run", copy / "grid.toml", "--out", copy / "out", "--stages", "report"], copy)
    assert "no column" in line and "results" in line
    assert not (copy / "out" / ".report.tmp").exists()


@pytest.mark.parametrize(
    "table", ["eval.parquet", "summary.csv", "attention.parquet", "probes.parquet", "patching.parquet"]
)
def test_damaged_result_table_given_to_the_report(table, copy, capsys):
    results = copy / "out" / "results"
    (results / table).write_bytes(b"PAR1 garbage \x00\xff")
    line = refused(capsys, ["run", copy / "grid.toml", "--out", copy / "out", "--stages", "report"], copy)
    assert table in line and "delete" in line
    assert not (copy / "out" / ".report.tmp").exists()


def test_merge_damaged_probe_part(tmp_path, capsys):
    parts = tmp_path / "res" / "parts"
    parts.mkdir(parents=True)
    (parts / "run-s0__entity_tracking__resid_post.parquet").write_bytes(b"not parquet")
    line = refused(capsys, ["merge", "--out", tmp_path / "res", "--kind", "probe"], tmp_path)
    assert "probe part" in line and "delete" in line


@pytest.mark.parametrize("manifest", [b"[]", b"{}", b"{ broken", b'{"units": 3}'])
def test_merge_damaged_patch_manifest(manifest, tmp_path, capsys):
    parts = tmp_path / "res" / "parts" / "patch"
    parts.mkdir(parents=True)
    (parts / "manifest.json").write_bytes(manifest)
    line = refused(capsys, ["merge", "--out", tmp_path / "res", "--kind", "patch"], tmp_path)
    assert "manifest.json" in line


# ---------------------------------------------------------------- failures after the door, and records


def test_activation_store_with_damaged_metadata(tmp_path):
    from codetransfer.analysis.store import ActivationStore
    from codetransfer.errors import CodetransferError

    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "meta.json").write_text("[1, 2")
    with pytest.raises(CodetransferError, match="meta.json: damaged activation store metadata"):
        ActivationStore.open(tmp_path / "store")


def test_non_finite_loss_stops_training_and_never_completes(copy, capsys, monkeypatch):
    import codetransfer.trained.train as train_mod

    real = train_mod.token_losses
    monkeypatch.setattr(train_mod, "token_losses", lambda model, x: real(model, x) * math.nan)
    grid = copy / "grid.toml"
    grid.write_text(TRAINED_GRID.replace("tokens = 512", "tokens = 768", 1))  # text-only changed: retrained
    capsys.readouterr()
    # in-process (--jobs 1): the patched loss does not reach worker processes
    assert cli.main(["train", str(grid), "--out", str(copy / "out"), "--quiet", "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        ln for ln in err.splitlines() if "training loss became nan" in ln
    ]
    record = json.loads((copy / "out" / "runs" / "text-only-s0" / "codetransfer.json").read_text())
    assert record["status"] == "partial"


def test_data_manifest_holds_no_wall_time(trained):
    data = trained / "out" / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert "seconds" not in manifest
    assert json.loads((data / "timing.json").read_text())["seconds"] >= 0


def test_run_folders_and_checkpoints_have_no_leftovers(trained):
    leftovers = [p for p in (trained / "out").rglob("*") if p.name.startswith(".tmp") or p.suffix == ".tmp"]
    assert leftovers == []
    assert (trained / "out" / "runs" / "code-text-s0" / "config.json").is_file()


# ------------------------------------------------------------ no traceback reaches the terminal


@pytest.mark.parametrize(
    "argv", [["train", "{grid}", "--out", "{out}", "--seed", "x"], ["train", "{grid}", "--out", "{out}"]]
)
def test_subprocess_prints_one_line(argv, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(with_source("../../../escaped"))
    argv = [a.format(grid=grid, out=tmp_path / "out") for a in argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    before = tree(tmp_path)
    p = subprocess.run(
        [sys.executable, "-m", "codetransfer.cli", *argv], capture_output=True, text=True, env=env, timeout=120
    )
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert [ln for ln in p.stderr.splitlines() if ln.strip()] == [p.stderr.strip()]
    assert p.stderr.startswith("error: ")
    assert tree(tmp_path) == before


def test_a_reader_that_closes_the_output_early_gets_no_traceback():
    """``codetransfer ... | head``: 200 KB of items, more than a pipe holds, into a reader that stops at one line."""
    cli = f"{shlex.quote(sys.executable)} -m codetransfer.cli tasks show counting --n 300"
    p = subprocess.run(
        ["bash", "-c", f"{cli} | head -1; echo rc=${{PIPESTATUS[0]}} >&2"], capture_output=True, text=True, timeout=120
    )
    assert p.stdout.startswith("[counting #0]") and p.stdout.count("\n") == 1
    assert "Traceback" not in p.stderr and "BrokenPipeError" not in p.stderr
    assert p.stderr.strip() == "rc=141"
