"""Sharded sweeps (`--shard i/n`) merged by `codetransfer merge` equal the unsharded run, exactly.

One module grid of two tiny random runs (no training) serves patching and probing. Shards 0/3 and
2/3 run first: merging then must refuse (naming the shard to re-run), shard 1/3 completes the sweep,
and the merged tables must equal an unsharded run's with ``pandas.testing.assert_frame_equal``.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from codetransfer.cli import main
from codetransfer.trained.config import ModelConfig

CTX = ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, n_ctx=512)
RUNS = ("code25-s1", "text-only-s0")
PATCH = ["patch", "--task", "counting", "--sites", "resid_pre,head", "--n-items", "4", "--difficulty", "0",
         "--n-boot", "20", "--attribution", "--cross-rendering", "--cross-model", *RUNS]  # fmt: skip
PROBE = ["probe", "--tasks", "entity_tracking", "--sites", "resid_post.0,resid_post.1", "--n-items", "14",
         "--seeds", "0", "--no-mdl", "--min-rows", "30", "--no-cross-format", "--drop-stores"]  # fmt: skip
PATCH_TABLES = ("patching.parquet", "cross_model.parquet", "cross_rendering.parquet")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    from conftest import save_tiny_model

    root = tmp_path_factory.mktemp("shard_grid")
    for name in RUNS:
        recipe, seed = name.rsplit("-s", 1)
        d = root / "runs" / name
        d.mkdir(parents=True)
        save_tiny_model(d, CTX, seed=int(seed))
        (d / "codetransfer.json").write_text(json.dumps({
            "recipe": recipe, "seed": int(seed), "status": "complete", "grid": "test",
            "model": {"n_ctx": CTX.n_ctx}, "tokenizer_sha256": "same",
        }))  # fmt: skip
    return root


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def patch_unsharded(grid, tmp_path_factory):
    out = tmp_path_factory.mktemp("patch_whole")
    assert main([*PATCH, "--runs", str(grid), "--out", str(out)]) == 0
    assert not (out / "parts").exists()  # without --shard: the tables only, as before
    return out


def test_patch_shards_then_merge_equal_the_unsharded_run(grid, patch_unsharded, tmp_path, capsys):
    out = tmp_path / "res"
    for i in (0, 2):
        rc, stdout, err = _run([*PATCH, "--runs", grid, "--out", out, "--shard", f"{i}/3"], capsys)
        assert rc == 0, err
        assert "codetransfer merge" in stdout
    # no final table before every part is there
    assert not any((out / t).exists() for t in PATCH_TABLES)
    rc, _, err = _run(["merge", "--out", out, "--kind", "patch"], capsys)
    assert rc == 2 and "re-run shard 1/3" in err and "missing" in err
    assert not any((out / t).exists() for t in PATCH_TABLES)
    # the last shard completes the sweep and writes the tables; merge rewrites the same ones
    assert _run([*PATCH, "--runs", grid, "--out", out, "--shard", "1/3"], capsys)[0] == 0
    assert all((out / t).exists() for t in PATCH_TABLES)
    for t in PATCH_TABLES:
        (out / t).unlink()
    rc, stdout, err = _run(["merge", "--out", out], capsys)
    assert rc == 0, err
    for t in PATCH_TABLES:
        pd.testing.assert_frame_equal(pd.read_parquet(out / t), pd.read_parquet(patch_unsharded / t))
    # a re-run of a finished shard computes nothing
    rc, stdout, _ = _run([*PATCH, "--runs", grid, "--out", out, "--shard", "1/3"], capsys)
    assert rc == 0 and "0 of its" in stdout


def test_patch_merge_allow_partial_takes_what_is_there(grid, patch_unsharded, tmp_path, capsys):
    out = tmp_path / "res"
    argv = [*PATCH, "--runs", grid, "--out", out, "--cross-model-only", "--shard", "0/2"]
    argv.remove("--attribution")
    argv.remove("--cross-rendering")
    assert _run(argv, capsys)[0] == 0  # cross-model only: units resid_pre, head_out; shard 0/2 = resid_pre
    rc, _, err = _run(["merge", "--out", out, "--kind", "patch", "--allow-partial"], capsys)
    assert rc == 0, err
    merged = pd.read_parquet(out / "cross_model.parquet")
    whole = pd.read_parquet(patch_unsharded / "cross_model.parquet")
    assert set(merged.site) == {"resid_pre"} and set(whole.site) == {"resid_pre", "head_out"}
    pd.testing.assert_frame_equal(merged, whole[whole.site == "resid_pre"].reset_index(drop=True))
    assert sorted(p.name for p in out.iterdir()) == ["cross_model.parquet", "parts"]


def test_merge_refuses_parts_of_other_settings(grid, tmp_path, capsys):
    base = [a for a in PATCH if a not in ("--attribution", "--cross-rendering")][:-3] + ["--sites", "mlp"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run([*base, "--runs", grid, "--out", a, "--shard", "0/2"], capsys)[0] == 0
    # a shard with other settings refuses the folder before writing anything
    before = sorted((a / "parts" / "patch").iterdir())
    rc, _, err = _run([*base, "--n-boot", "30", "--runs", grid, "--out", a, "--shard", "1/2"], capsys)
    assert rc == 2 and "other settings (differs in n_boot)" in err
    assert sorted((a / "parts" / "patch").iterdir()) == before
    # parts that got mixed anyway (e.g. copied between folders) are refused by merge
    assert _run([*base, "--n-boot", "30", "--runs", grid, "--out", b, "--shard", "1/2"], capsys)[0] == 0
    for p in (b / "parts" / "patch").glob("*.parquet"):
        shutil.copy(p, a / "parts" / "patch" / p.name)
    rc, _, err = _run(["merge", "--out", a], capsys)
    assert rc == 2 and "come from other settings" in err
    assert not (a / "patching.parquet").exists()


@pytest.mark.parametrize("shard", ["3/3", "x", "1/0", "-1/2", "1/2/3", "0/0"])
def test_bad_shard_values_are_refused_writing_nothing(grid, tmp_path, capsys, shard):
    out = tmp_path / "res"
    for cmd in (PATCH, PROBE):
        rc, _, err = _run([*cmd, "--runs", grid, "--out", out, f"--shard={shard}"], capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and lines[-1].startswith("error: --shard:")
        assert not out.exists()


def test_merge_refuses_a_folder_without_parts(tmp_path, capsys):
    rc, _, err = _run(["merge", "--out", tmp_path], capsys)
    assert rc == 2 and "no probing or patching parts" in err
    rc, _, err = _run(["merge", "--out", tmp_path, "--kind", "patch"], capsys)
    assert rc == 2 and "manifest.json is missing" in err
    rc, _, err = _run(["merge", "--out", tmp_path / "nowhere"], capsys)
    assert rc == 2 and "--out" in err


def test_probe_shards_then_merge_equal_the_unsharded_run(grid, tmp_path, capsys):
    whole, out = tmp_path / "whole", tmp_path / "res"
    assert _run([*PROBE, "--runs", grid, "--out", whole], capsys)[0] == 0
    # 4 units (2 runs x 2 sites): shard 0/3 = unit 0, 1/3 = units 1-2, 2/3 = unit 3
    for i in (0, 2):
        assert _run([*PROBE, "--runs", grid, "--out", out, "--shard", f"{i}/3"], capsys)[0] == 0
    rc, _, err = _run(["merge", "--out", out, "--kind", "probe"], capsys)
    assert rc == 2 and "2 of 4 probing parts are missing" in err
    assert _run([*PROBE, "--runs", grid, "--out", out, "--shard", "1/3"], capsys)[0] == 0
    (out / "probes.parquet").unlink()
    rc, _, err = _run(["merge", "--out", out, "--kind", "probe"], capsys)
    assert rc == 0, err
    merged, expected = pd.read_parquet(out / "probes.parquet"), pd.read_parquet(whole / "probes.parquet")
    assert set(merged.run) == set(RUNS) and set(merged.layer) == {0, 1} and len(merged)
    pd.testing.assert_frame_equal(merged, expected)
