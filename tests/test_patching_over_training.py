"""Patching over training: the job's patch units patch the same items at every saved checkpoint
(``analysis.grid.patch_checkpoints``), and the final checkpoint's rows are the final model's patching rows."""

from __future__ import annotations

import pandas as pd

from codetransfer.analysis import schema
from codetransfer.pipeline import JobSettings, run_job
from codetransfer.trained import find_runs
from codetransfer.trained.runs import run_checkpoints
from test_pipeline import GRID

SETTINGS = JobSettings(
    eval_items=10, patch_items=6, patch_sites=("resid_pre", "head_out"), patch_checkpoint_sites=("head_out",)
)


def test_the_patch_stage_patches_every_checkpoint_and_the_last_equals_the_final_model(tmp_path):
    grid = GRID.replace("save_every = 50", "save_every = 50\nsnapshot_every = 4")
    (tmp_path / "grid.toml").write_text(grid)
    out = tmp_path / "out"
    run_job(str(tmp_path / "grid.toml"), out, SETTINGS, stages=("train", "patch"), log=lambda *a: None)
    over = schema.check(pd.read_parquet(out / "results" / "patching_over_training.parquet"), "patching_over_training")
    within = pd.read_parquet(out / "results" / "patching.parquet")
    for info in find_runs(out, complete_only=True):
        steps = sorted(run_checkpoints(info))
        rows = over[over["run"] == info.name]
        assert len(steps) >= 2 and sorted(rows["step"].unique()) == steps
        assert set(rows["site"]) == {"head_out"}
        # the last checkpoint is the final model: the same numbers as the final model's own patching
        last = rows[rows["step"] == steps[-1]].drop(columns="step").reset_index(drop=True)
        final = within[(within["run"] == info.name) & (within["site"] == "head_out")].reset_index(drop=True)
        pd.testing.assert_frame_equal(last, final[last.columns])
        # and training changed the heads' effects: the first checkpoint differs
        first = rows[rows["step"] == steps[0]]["value"].to_numpy()
        assert not (first == last["value"].to_numpy()).all()


def test_strongest_cell_over_training_takes_the_largest_cell_per_run_and_step():
    from codetransfer.analysis.patching_plots import plot_strongest_cell_over_training, strongest_cell_over_training

    rows = []
    for step, values in ((10, {(0, 0): 0.1, (1, 1): 0.7}), (20, {(0, 0): 0.5, (1, 1): 0.2})):
        for (layer, head), v in values.items():
            rows.append(dict(run="a-s0", recipe="a", seed=0, step=step, task="t", site="head_out", layer=layer,
                             head=head, pos=None, pos_label="all", metric="denoising", value=v, ci_low=v - 0.1,
                             ci_high=v + 0.1))  # fmt: skip
    best = strongest_cell_over_training(pd.DataFrame(rows))
    assert best[["step", "layer", "head", "value"]].values.tolist() == [[10, 1, 1, 0.7], [20, 0, 0, 0.5]]
    assert plot_strongest_cell_over_training(pd.DataFrame(rows)).get_xlabel() == "training step"


def test_the_report_draws_patching_over_training(tmp_path):
    from codetransfer.report import _patching

    rows = [
        dict(run=f"a-s{seed}", recipe="a", seed=seed, step=step, task="t", site="head_out", layer=0, head=0,
             pos=None, pos_label="all", metric="denoising", value=0.1 * step, ci_low=0.0, ci_high=1.0)
        for seed in (0, 1) for step in (1, 2, 3)
    ]  # fmt: skip
    (tmp_path / "results").mkdir()
    pd.DataFrame(rows).to_parquet(tmp_path / "results" / "patching_over_training.parquet")
    s, _ = _patching(tmp_path / "results", tmp_path, "a")
    figures = [b[0] for kind, b in s.blocks if kind == "figure"]
    assert "patch_over_training.png" in figures and (tmp_path / "patch_over_training.png").stat().st_size > 1000
