"""`codetransfer attention` end to end on a hand-made grid folder of tiny random runs (no training)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from codetransfer.cli import main
from codetransfer.trained.config import ModelConfig

CTX = ModelConfig(n_layers=2, d_model=64, n_heads=4, d_mlp=256, n_ctx=128)


def _grid(root, runs):
    from conftest import save_tiny_model

    for recipe, seed, cfg in runs:
        d = root / "runs" / f"{recipe}-s{seed}"
        d.mkdir(parents=True)
        save_tiny_model(d, cfg, seed=seed)
        (d / "codetransfer.json").write_text(
            json.dumps(
                {
                    "recipe": recipe,
                    "seed": seed,
                    "status": "complete",
                    "grid": "test",
                    "model": {"n_layers": cfg.n_layers, "n_ctx": cfg.n_ctx},
                    "tokenizer_sha256": "same",
                }
            )
        )
    return root


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return _grid(tmp_path_factory.mktemp("grid"), [("text-only", 0, CTX), ("code25", 1, CTX)])


ARGS = ["--n-items", "3", "--n-seqs", "2", "--half-len", "5", "--n-boot", "10"]


def test_attention_cli_writes_one_row_per_run_task_head_metric(grid, tmp_path, capsys):
    out = tmp_path / "results"
    rc = main(["attention", "--runs", str(grid), "--out", str(out), "--tasks", "counting", *ARGS])
    assert rc == 0, capsys.readouterr().err
    t = pd.read_parquet(out / "attention.parquet")
    assert list(t.columns) == [
        "run",
        "recipe",
        "seed",
        "task",
        "rendering",
        "layer",
        "head",
        "metric",
        "value",
        "ci_low",
        "ci_high",
    ]
    assert set(t.run) == {"text-only-s0", "code25-s1"} and set(t.task) == {"repeated_random", "counting"}
    assert set(t[t.task == "counting"].rendering) == {"text", "code"}
    assert not t.duplicated(["run", "task", "rendering", "layer", "head", "metric"]).any()
    assert (t.groupby(["run", "task", "rendering", "metric"]).size() == 8).all()
    # two differently initialised runs have different scores
    a, b = (t[(t.run == r) & (t.metric == "entropy")].value.to_numpy() for r in ("text-only-s0", "code25-s1"))
    assert not (abs(a - b) < 1e-6).all()
    assert not list(out.glob(".*tmp"))


def test_attention_cli_refuses_bad_input_and_writes_nothing(grid, tmp_path, capsys):
    out = tmp_path / "results"
    rc = main(["attention", "--runs", str(grid), "--out", str(out), "--tasks", "countng", *ARGS])
    err = capsys.readouterr().err
    assert rc == 2 and "did you mean 'counting'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    rc = main(["attention", "--runs", str(tmp_path / "nope"), "--out", str(out), *ARGS])
    assert rc == 2 and not out.exists()
    rc = main(["attention", "--runs", str(grid), "--out", str(out), "--n-seqs", "0"])
    assert rc == 2 and "--n-seqs" in capsys.readouterr().err


def test_attention_cli_refuses_runs_of_different_shapes(tmp_path, capsys):
    from dataclasses import replace

    grid = _grid(tmp_path / "g", [("a", 0, CTX), ("b", 0, replace(CTX, n_layers=3))])
    out = tmp_path / "results"
    rc = main(["attention", "--runs", str(grid), "--out", str(out), "--tasks", "none", *ARGS])
    err = capsys.readouterr().err
    assert rc == 2 and "differ in model shape" in err
    assert not out.exists()
