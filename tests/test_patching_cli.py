"""`codetransfer patch` end to end on a hand-made folder of tiny random runs (no training)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from codetransfer.cli import main
from codetransfer.trained.config import ModelConfig

CTX = ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, n_ctx=256)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    from conftest import save_tiny_model

    root = tmp_path_factory.mktemp("patch_grid")
    for recipe, seed in (("text-only", 0), ("code25", 1)):
        d = root / "runs" / f"{recipe}-s{seed}"
        d.mkdir(parents=True)
        save_tiny_model(d, CTX, seed=seed)
        (d / "codetransfer.json").write_text(json.dumps({
            "recipe": recipe, "seed": seed, "status": "complete", "grid": "test",
            "model": {"n_ctx": CTX.n_ctx}, "tokenizer_sha256": "same",
        }))  # fmt: skip
    return root


def test_patch_cli_writes_three_tables(grid, tmp_path, capsys):
    out = tmp_path / "results"
    rc = main(["patch", "--runs", str(grid), "--task", "counting", "--sites", "resid_pre,head", "--out", str(out),
               "--n-items", "4", "--difficulty", "0", "--n-boot", "20", "--cross-model", "code25-s1", "text-only-s0",
               "--cross-rendering"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    within = pd.read_parquet(out / "patching.parquet")
    assert set(within.run) == {"text-only-s0", "code25-s1"}
    assert set(within.site) == {"resid_pre", "head_out"}
    assert {"last", "query", "all"} <= set(within.pos_label)
    # At layer 0 the residual is the token embedding: the query and last tokens are the same in the
    # clean and the counterfactual prompt, so patching them there changes nothing.
    same = within[(within.site == "resid_pre") & (within.layer == 0) & within.pos_label.isin(["query", "last"])
                  & (within.metric == "denoising")]  # fmt: skip
    assert len(same) == 4 and same.value.abs().max() < 1e-5
    moved = within[(within.site == "resid_pre") & (within.metric == "denoising")]
    assert moved.value.abs().max() > 1e-2
    cross = pd.read_parquet(out / "cross_model.parquet")
    assert set(cross.run) == {"code25-s1->text-only-s0"} and "cross_model" in set(cross.metric)
    rend = pd.read_parquet(out / "cross_rendering.parquet")
    assert {"cross_rendering", "within_rendering"} <= set(rend.metric)
    for t in (within, cross, rend):
        assert {"run", "recipe", "seed", "task", "site", "layer", "head", "pos", "metric", "value", "ci_low",
                "ci_high"} <= set(t.columns)  # fmt: skip


def test_patch_cli_cross_model_only(grid, tmp_path, capsys):
    out = tmp_path / "results"
    rc = main(["patch", "--runs", str(grid), "--task", "counting", "--sites", "mlp", "--out", str(out),
               "--n-items", "3", "--difficulty", "0", "--n-boot", "20", "--cross-model", "code25-s1", "text-only-s0",
               "--cross-model-only"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["cross_model.parquet"]
    cross = pd.read_parquet(out / "cross_model.parquet")
    assert set(cross.site) == {"mlp_out"} and set(cross.metric) == {"cross_model", "logit_diff"}


def test_patch_cli_attribution_screen(grid, tmp_path, capsys):
    out = tmp_path / "results"
    one_run = grid / "runs" / "text-only-s0"
    rc = main(["patch", "--runs", str(one_run), "--task", "counting", "--sites", "mlp", "--out", str(out),
               "--n-items", "2", "--difficulty", "0", "--n-boot", "20", "--attribution"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    table = pd.read_parquet(out / "patching.parquet")
    rho = table[table.metric == "attribution_spearman"]
    assert len(rho) == 1 and -1 <= rho.value.item() <= 1
    nodes = table[table.metric == "attribution"]
    assert set(nodes.site) == {"head_out", "mlp_out"} and len(nodes) == len(table[table.metric == "exact_effect"])
    assert "Spearman rho" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--sites", "resid_pre,atn"], "--sites: unknown site kind 'atn' (did you mean 'attn'?)"),
        (["--sites", "resid,attn"], "--sites: 'resid' is ambiguous; write one of resid_pre, resid_mid, resid_post"),
        (["--cross-model", "code25-s1", "text-only-s9"], "--cross-model: no complete run named 'text-only-s9'"),
        (["--n-items", "0"], "--n-items"),
        (["--cross-model-only"], "--cross-model-only: needs --cross-model A B"),
    ],
)
def test_patch_cli_bad_input_writes_nothing(grid, tmp_path, capsys, extra, match):
    out = tmp_path / "results"
    rc = main(["patch", "--runs", str(grid), "--task", "counting", "--out", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and match in err[-1] and err[-1].startswith("error: ")
    assert not out.exists() or list(out.iterdir()) == []
