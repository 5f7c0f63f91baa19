"""`codetransfer probe`: a sweep over a run folder, restart does nothing, bad input exits 2 writing nothing."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from codetransfer.cli import main as cli


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    from conftest import TINY, save_tiny_model
    from codetransfer.trained.runs import RUN_FILE

    root = tmp_path_factory.mktemp("grid")
    run = root / "runs" / "text-only-s0"
    run.mkdir(parents=True)
    save_tiny_model(run, cfg=dataclasses.replace(TINY, n_ctx=512))
    (run / RUN_FILE).write_text(json.dumps({"recipe": "text-only", "seed": 0, "status": "complete"}))
    return root


ARGS = ["--tasks", "entity_tracking", "--n-items", "14", "--seeds", "0", "--no-mdl", "--min-rows", "30"]


def test_probe_cli_sweeps_and_restarts(runs_dir, tmp_path, capsys):
    out = tmp_path / "res"
    assert cli(["probe", "--runs", str(runs_dir), "--sites", "resid_post.1", "--out", str(out), *ARGS]) == 0
    table = pd.read_parquet(out / "probes.parquet")
    assert set(table["run"]) == {"text-only-s0"} and set(table["recipe"]) == {"text-only"}
    assert set(table["layer"]) == {1} and "accuracy" in set(table["metric"])
    capsys.readouterr()
    assert cli(["probe", "--runs", str(runs_dir), "--sites", "resid_post.1", "--out", str(out), *ARGS]) == 0
    assert "probing" not in capsys.readouterr().out  # nothing redone
    # --labels: only the selected labels are probed, with their random-init twins
    out2 = tmp_path / "query"
    argv = ["probe", "--runs", str(runs_dir), "--sites", "resid_post.1", "--out", str(out2), "--labels", "*@query"]
    argv += [*ARGS[:-2], "--min-rows", "10", "--random-baseline", "--no-cross-format"]
    assert cli(argv) == 0
    table = pd.read_parquet(out2 / "probes.parquet")
    assert set(table["pos"]) == {"box@query"} and set(table["recipe"]) == {"text-only", "text-only (random init)"}


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--sites", "resid_post.9"], "layers"),
        (["--sites", "resid_pots"], "resid_post"),
        (["--shard", "2/2"], "shard"),
        (["--tasks", "entity_trackin"], "entity_tracking"),
        (["--labels", "holder@*"], "no label of these items matches"),
        (["--labels", ","], "--labels"),
    ],
)
def test_probe_cli_refuses_bad_input_writing_nothing(runs_dir, tmp_path, capsys, extra, needle):
    out = tmp_path / "res"
    argv = ["probe", "--runs", str(runs_dir), "--out", str(out), *ARGS, *extra]
    assert cli(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and needle in err[0]
    assert not out.exists()
