"""`codetransfer eval` end to end on a hand-made grid folder of tiny runs (no training)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from codetransfer.cli import main
from codetransfer.trained.config import ModelConfig

CTX = ModelConfig(n_layers=2, d_model=64, n_heads=4, d_mlp=256, n_ctx=128)


def make_grid(root, runs, cfg=CTX):
    """``root/runs/<recipe>-s<seed>/`` tiny random runs with the registry's run record, and held-out data."""
    from conftest import save_tiny_model

    for recipe, seed in runs:
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
                    "model": {"n_ctx": cfg.n_ctx},
                    "tokenizer_sha256": "same",
                }
            )
        )
    (root / "data").mkdir()
    (root / "data" / "manifest.json").write_text(json.dumps({"tokenizer_sha256": "same"}))  # the runs' tokenizer
    rng = np.random.default_rng(0)
    np.save(root / "data" / "stdlib.heldout.npy", rng.integers(3, 300, 5 * cfg.n_ctx).astype(np.uint16))
    np.save(root / "data" / "gcide.heldout.npy", rng.integers(3, 300, 3 * cfg.n_ctx).astype(np.uint16))
    return root


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return make_grid(tmp_path_factory.mktemp("grid"), [("text-only", 0), ("text-only", 1), ("code25", 0)])


def test_eval_cli_writes_tables(grid, tmp_path, capsys):
    out = tmp_path / "results"
    rc = main(
        [
            "eval",
            "--runs",
            str(grid),
            "--out",
            str(out),
            "--tasks",
            "knowledge_cloze",
            "--n-items",
            "12",
            "--n-boot",
            "200",
            "--heldout-windows",
            "4",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    table = pd.read_parquet(out / "eval.parquet")
    assert set(table["run"]) == {"text-only-s0", "text-only-s1", "code25-s0", "text-only*", "code25*"}
    assert set(table["task"]) == {"knowledge_cloze", "heldout:stdlib", "heldout:gcide"}
    assert set(table["metric"]) == {"accuracy", "logit_diff", "loss"}
    loss = table[(table.metric == "loss") & (table.run == "code25-s0")].set_index("task")
    assert loss.loc["heldout:stdlib", "category"] == "code"
    assert np.log(len(range(300))) - 3 < loss.loc["heldout:stdlib", "value"] < 10  # a random model: ~log(vocab)
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["recipe"]) == {"code25"} and set(summary["baseline"]) == {"text-only"}
    assert set(zip(summary["of"], summary["category"])) == {
        ("accuracy", "knowledge"),
        ("loss", "code"),
        ("loss", "text"),
    }
    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == 3 * 12
    # the accuracy in the table is the mean of the per-item scores
    acc = table[(table.run == "code25-s0") & (table.metric == "accuracy") & (table.difficulty == "all")]
    assert acc["value"].item() == pytest.approx(scores[scores.run == "code25-s0"]["correct"].mean())
    assert "relative change of accuracy vs 'text-only'" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--tasks", "knowledge_clozee"], "unknown task 'knowledge_clozee' (did you mean 'knowledge_cloze'?)"),
        (["--tasks", "knowledge_cloze", "--baseline", "text-onyl"], "--baseline: recipe 'text-onyl'"),
        (["--tasks", "knowledge_cloze", "--n-items", "0"], "--n-items"),
    ],
)
def test_eval_cli_bad_input_writes_nothing(grid, tmp_path, capsys, extra, match):
    out = tmp_path / "results"
    rc = main(["eval", "--runs", str(grid), "--out", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and match in err[-1] and err[-1].startswith("error: ")
    assert not out.exists() or list(out.iterdir()) == []


def test_eval_cli_too_long_items_leave_previous_results(tmp_path, capsys):
    """Items longer than the context are refused with --no-fit-context, and when no level fits at all: the previous
    results are neither removed nor overwritten."""
    small = make_grid(
        tmp_path / "g", [("text-only", 0)], ModelConfig(n_layers=1, d_model=32, n_heads=2, d_mlp=64, n_ctx=16)
    )
    out = tmp_path / "results"
    out.mkdir()
    (out / "eval.parquet").write_text("previous")
    rc = main(
        [
            "eval",
            "--runs",
            str(small),
            "--out",
            str(out),
            "--tasks",
            "knowledge_cloze,entity_tracking",
            "--n-items",
            "4",
            "--no-fit-context",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "longer than the model's context n_ctx=16" in err
    assert "leave out --no-fit-context" in err and "entity_tracking difficulty" in err
    assert sorted(p.name for p in out.iterdir()) == ["eval.parquet"]
    assert (out / "eval.parquet").read_text() == "previous"
    rc = main(
        [
            "eval",
            "--runs",
            str(small),
            "--out",
            str(out),
            "--tasks",
            "knowledge_cloze,entity_tracking",
            "--n-items",
            "4",
        ]
    )
    assert rc == 2 and "--fit-context: no task has items that fit" in capsys.readouterr().err
    assert (out / "eval.parquet").read_text() == "previous"


def test_eval_cli_one_run_without_baseline(grid, tmp_path, capsys):
    out = tmp_path / "one"
    rc = main(
        [
            "eval",
            "--runs",
            str(grid / "runs" / "code25-s0"),
            "--out",
            str(out),
            "--tasks",
            "knowledge_cloze",
            "--n-items",
            "6",
            "--n-boot",
            "100",
            "--heldout-windows",
            "0",
        ]
    )
    assert rc == 0
    assert "no 'text-only' runs" in capsys.readouterr().err
    assert pd.read_csv(out / "summary.csv").empty
    table = pd.read_parquet(out / "eval.parquet")
    assert set(table["run"]) == {"code25-s0", "code25*"} and "loss" not in set(table["metric"])
