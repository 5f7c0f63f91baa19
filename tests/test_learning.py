"""Issue #3, learning curves: checkpoints of a run trained here are listed (shared phases borrowed by
the branched run), scored by ``codetransfer eval --checkpoints`` into a tidy table whose last point is
exactly what ``codetransfer eval`` gives for the final model on the same items; bad input refused."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from gridfiles import synthetic_grid

from codetransfer.analysis.learning import (
    first_above_chance,
    learning_items,
    learning_table,
    learning_table_from_scores,
    plot_learning_curves,
    tokens_per_step,
)
from codetransfer.cli import main as cli
from codetransfer.errors import CodetransferError
from codetransfer.trained import find_runs, load_grid, train_grid
from codetransfer.trained.runs import run_checkpoints

# 4 x 128 = 512 tokens per step; text-only 8 steps; the two balanced-> recipes share a 4-step phase
GRID = synthetic_grid(
    "learn",
    """
[train]
batch_size = 4
eval_every = 8
eval_tokens = 1024
save_every = 4
snapshot_every = 3
[[recipes]]
name = "text-only"
[[recipes.phases]]
name = "main"
mixture = { gcide = 1, narratives = 1 }
tokens = 4096
[[recipes]]
name = "balanced->text"
[[recipes.phases]]
name = "balanced"
mixture = { narratives = 1, programs = 1 }
tokens = 2048
[[recipes.phases]]
name = "text"
mixture = { gcide = 1, narratives = 1 }
tokens = 2048
[[recipes]]
name = "balanced->code"
[[recipes.phases]]
name = "balanced"
mixture = { narratives = 1, programs = 1 }
tokens = 2048
[[recipes.phases]]
name = "code"
mixture = { programs = 1 }
tokens = 2048
""",
)

N_CURVE = 14  # entity_tracking has 7 levels: the same items as `eval --n-items 98 --max-difficulty 0`
EVAL = [
    "--tasks",
    "entity_tracking",
    "--max-difficulty",
    "0",
    "--heldout-windows",
    "0",
    "--n-boot",
    "200",
    "--seed",
    "3",
]


@pytest.fixture(scope="module")
def grid_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    (root / "grid.toml").write_text(GRID)
    train_grid(load_grid(root / "grid.toml"), root / "out", progress=False, log=lambda *a: None)
    return root / "out"


@pytest.fixture(scope="module")
def curves(grid_out, tmp_path_factory):
    results = tmp_path_factory.mktemp("curves")
    assert (
        cli(
            [
                "eval",
                "--runs",
                str(grid_out),
                "--out",
                str(results),
                "--n-items",
                "7",
                *EVAL,
                "--checkpoints",
                "--curve-items",
                str(N_CURVE),
            ]
        )
        == 0
    )
    return results


def test_checkpoints_are_listed_with_the_final_model_and_borrowed_shared_phases(grid_out):
    runs = {r.recipe: r for r in find_runs(grid_out)}
    own = run_checkpoints(runs["text-only"])
    assert list(own) == [3, 6, 8]
    assert own[8] == runs["text-only"].path and own[3].name == "step-00000003"
    # balanced->code branched from the shared 4-step phase that balanced->text trained
    assert runs["balanced->code"].record["branched_from"]["phases"] == ["balanced"]
    code = run_checkpoints(runs["balanced->code"])
    assert list(code) == [3, 6, 8]
    assert code[3] == runs["balanced->text"].path / "checkpoints" / "step-00000003"
    assert code[6] == runs["balanced->code"].path / "checkpoints" / "step-00000006"
    assert list(run_checkpoints(runs["balanced->code"], borrow=False)) == [6, 8]
    assert tokens_per_step(runs["text-only"].record) == 4 * 128


def test_learning_table_has_every_checkpoint_and_ends_at_the_eval_of_the_final_model(grid_out, curves, tmp_path):
    table = pd.read_parquet(curves / "learning.parquet")
    assert {
        "run",
        "recipe",
        "seed",
        "step",
        "tokens",
        "task",
        "difficulty",
        "metric",
        "value",
        "ci_low",
        "ci_high",
        "chance",
    } <= set(table.columns)
    acc = table[(table["metric"] == "accuracy") & (table["difficulty"] == "0")]
    for run, g in acc[~acc["run"].str.endswith("*")].groupby("run"):
        g = g.sort_values("step")
        assert list(g["step"]) == [3, 6, 8], run
        assert list(g["tokens"]) == [3 * 512, 6 * 512, 8 * 512]
        assert (g["n_items"] == N_CURVE).all()
    assert set(table["difficulty"]) == {"0", "all"}
    # parity: `codetransfer eval` on the same items (levels cycle, so n_items x 7 and difficulty 0)
    ref = tmp_path / "ref"
    assert cli(["eval", "--runs", str(grid_out), "--out", str(ref), "--n-items", str(7 * N_CURVE), *EVAL]) == 0
    ev = pd.read_parquet(ref / "eval.parquet")
    cols = ["run", "task", "difficulty", "metric"]
    final = table[table["step"] == 8].drop(columns=["step", "tokens"]).sort_values(cols).reset_index(drop=True)
    ev = ev.sort_values(cols).reset_index(drop=True)[final.columns]
    pd.testing.assert_frame_equal(final, ev, check_dtype=False)
    # and the per-item scores of the final step are the eval's, item for item
    sc = pd.read_parquet(curves / "learning_scores.parquet")
    last = sc[sc["step"] == 8].sort_values(["run", "index"]).reset_index(drop=True)
    ref_sc = pd.read_parquet(ref / "scores.parquet").sort_values(["run", "index"]).reset_index(drop=True)
    assert list(last["index"]) == list(ref_sc["index"])
    np.testing.assert_array_equal(last["logit_diff"].to_numpy(), ref_sc["logit_diff"].to_numpy())
    # an earlier checkpoint is a different model: its scores differ from the final one's
    first = sc[(sc["step"] == 3) & (sc["run"] == "text-only-s0")]["logit_diff"].to_numpy()
    assert not np.allclose(first, last[last["run"] == "text-only-s0"]["logit_diff"].to_numpy())


def test_the_borrowed_checkpoint_is_scored_once_for_both_branches(curves):
    sc = pd.read_parquet(curves / "learning_scores.parquet")
    a = sc[(sc["step"] == 3) & (sc["recipe"] == "balanced->text")]["logit_diff"].to_numpy()
    b = sc[(sc["step"] == 3) & (sc["recipe"] == "balanced->code")]["logit_diff"].to_numpy()
    np.testing.assert_array_equal(a, b)  # the same shared-phase model
    c = sc[(sc["step"] == 6) & (sc["recipe"] == "balanced->code")]["logit_diff"].to_numpy()
    assert not np.allclose(a, c)


def test_checkpoints_refused_without_any_and_a_run_without_is_a_note(grid_out, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(grid_out, bare)
    for ck in (bare / "runs").glob("*/checkpoints"):
        shutil.rmtree(ck)
    capsys.readouterr()
    assert (
        cli(["eval", "--runs", str(bare), "--out", str(tmp_path / "r"), *EVAL, "--n-items", "7", "--checkpoints"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --checkpoints:")
    assert "train.snapshot_every" in err
    assert not (tmp_path / "r").exists()

    some = tmp_path / "some"
    shutil.copytree(grid_out, some)
    shutil.rmtree(some / "runs" / "text-only-s0" / "checkpoints")
    assert (
        cli(
            [
                "eval",
                "--runs",
                str(some),
                "--out",
                str(tmp_path / "r2"),
                *EVAL,
                "--n-items",
                "7",
                "--checkpoints",
                "--curve-items",
                "7",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "note: run text-only-s0 has no intermediate checkpoints" in err
    table = pd.read_parquet(tmp_path / "r2" / "learning.parquet")
    assert set(table["recipe"]) == {"balanced->text", "balanced->code"}

    assert (
        cli(["eval", "--runs", str(some), "--out", str(tmp_path / "r3"), *EVAL, "--checkpoints", "--curve-items", "0"])
        == 2
    )
    assert "--curve-items: expected an integer >= 1, got 0" in capsys.readouterr().err

    weights = some / "runs" / "balanced-code-s0" / "checkpoints" / "step-00000006" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated checkpoint is refused before scoring
    assert cli(["eval", "--runs", str(some), "--out", str(tmp_path / "r4"), *EVAL, "--checkpoints"]) == 2
    err = capsys.readouterr().err
    assert "step-00000006/model.safetensors: damaged or truncated checkpoint" in err and "scoring" not in err
    assert not (tmp_path / "r4").exists()


def test_plot_has_one_line_per_recipe_and_a_chance_line(curves):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.read_parquet(curves / "learning.parquet")
    fig, ax = plt.subplots()
    assert plot_learning_curves(table, task="entity_tracking", ax=ax) is ax
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert sorted(lb for lb in labels if not lb.endswith("chance")) == ["balanced->code", "balanced->text", "text-only"]
    chance = [ln for ln in ax.get_lines() if ln.get_label() == "chance"]
    assert len(chance) == 1 and chance[0].get_linestyle() == "--"
    assert chance[0].get_ydata()[0] == pytest.approx(table["chance"].mean())
    line = next(ln for ln in ax.get_lines() if ln.get_label() == "text-only")
    np.testing.assert_array_equal(line.get_xdata(), [3 * 512, 6 * 512, 8 * 512])
    with pytest.raises(CodetransferError, match="did you mean 'entity_tracking'"):
        plot_learning_curves(table, task="entity_trackin")
    with pytest.raises(CodetransferError, match="difficulty: level '3'"):
        plot_learning_curves(table, task="entity_tracking", difficulty=3)
    plt.close(fig)


def _scores(run, recipe, seed, correct):
    n = len(correct)
    return pd.DataFrame(
        {
            "run": run,
            "recipe": recipe,
            "seed": seed,
            "task": "t",
            "category": "reasoning",
            "index": np.arange(n),
            "difficulty": 0,
            "chance": 0.5,
            "correct": correct,
            "logit_diff": np.where(correct, 1.0, -1.0),
        }
    )


def test_learning_table_known_values_and_bad_input():
    at2 = pd.concat(
        [_scores("a-s0", "a", 0, [True, False, False, False]), _scores("a-s1", "a", 1, [True, True, False, False])]
    )
    at5 = pd.concat(
        [_scores("a-s0", "a", 0, [True, True, True, False]), _scores("a-s1", "a", 1, [True, True, True, True])]
    )
    t = learning_table({5: at5, 2: at2}, {"a-s0": 100, "a-s1": 100}, n_boot=100)
    acc = t[(t["metric"] == "accuracy") & (t["difficulty"] == "0")].set_index(["run", "step"])
    assert acc.loc[("a-s0", 2), "value"] == 0.25 and acc.loc[("a-s1", 5), "value"] == 1.0
    assert acc.loc[("a*", 2), "value"] == pytest.approx(0.375) and acc.loc[("a*", 5), "tokens"] == 500
    assert list(t["step"].drop_duplicates()) == [2, 5]
    # the same table from scores that carry step and tokens (what per-run units store)
    flat = pd.concat([at2.assign(step=2, tokens=200), at5.assign(step=5, tokens=500)])
    pd.testing.assert_frame_equal(learning_table_from_scores(flat, n_boot=100), t)
    with pytest.raises(CodetransferError, match="tokens_per_step: no entry for run 'a-s1'"):
        learning_table({2: at2}, {"a-s0": 100})
    with pytest.raises(CodetransferError, match="differ in tokens per step"):
        learning_table({2: at2}, {"a-s0": 100, "a-s1": 200})
    with pytest.raises(CodetransferError, match="missing columns"):
        learning_table({2: at2.drop(columns="run")}, 100)
    with pytest.raises(CodetransferError, match="empty"):
        learning_table({}, 100)


def test_first_above_chance_is_the_first_step_whose_interval_clears_chance():
    half, right = [True, False] * 10, [True] * 20
    steps = {
        2: pd.concat([_scores("a-s0", "a", 0, half), _scores("b-s0", "b", 0, half)]),
        5: pd.concat([_scores("a-s0", "a", 0, right), _scores("b-s0", "b", 0, half)]),
        9: pd.concat([_scores("a-s0", "a", 0, right), _scores("b-s0", "b", 0, [False] * 20)]),
    }
    first = first_above_chance(learning_table(steps, 100, n_boot=200)).set_index("recipe")
    assert first.loc["a", "step"] == 5 and first.loc["a", "tokens"] == 500 and first.loc["a", "value"] == 1.0
    assert pd.isna(first.loc["b", "step"]) and first.loc["b", "chance"] == 0.5
    with pytest.raises(CodetransferError, match="no column 'copy'"):
        first_above_chance(learning_table(steps, 100, n_boot=200), against="copy")


def test_learning_items_are_the_eval_items_at_the_kept_levels():
    from codetransfer.analysis.evaluate import make_items

    ours = learning_items(["counting"], 10, seed=4, max_difficulty=1)["counting"]
    ref = make_items(["counting"], 30, 4, max_difficulty=1)["counting"]  # 6 levels: 5 per level in 30 items
    assert [(i.index, i.difficulty, i.prompt) for i in ours] == [(i.index, i.difficulty, i.prompt) for i in ref]
    with pytest.raises(CodetransferError, match="unknown task 'countin'"):
        learning_items(["countin"], 10, 0)


def test_pipeline_writes_learning_table_restartably_and_the_report_shows_it(grid_out, tmp_path, capsys):
    from codetransfer.pipeline import JobSettings, run_job

    out = tmp_path / "out"
    shutil.copytree(grid_out, out)
    grid = grid_out.parent / "grid.toml"
    settings = JobSettings(eval_items=7, curve_items=N_CURVE)
    run_job(str(grid), out, settings, stages=("eval", "report"), log=lambda *a: None)
    table = pd.read_parquet(out / "results" / "learning.parquet")
    assert set(table["step"]) == {3, 6, 8} and set(table["recipe"]) == {"text-only", "balanced->text", "balanced->code"}
    # killed inside one run's eval unit: its record and output gone; the re-run redoes it alone, same table
    units = {p.name: p.stat().st_mtime_ns for p in (out / "units").glob("eval-*.json")}
    (out / "units" / "eval-balanced-code-s0.json").unlink()
    shutil.rmtree(out / "results" / "units" / "eval-balanced-code-s0")
    run_job(str(grid), out, settings, stages=("eval",), log=lambda *a: None)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "units").glob("eval-*.json")}
    assert {k for k in units if units[k] != after.get(k)} == {"eval-balanced-code-s0.json"}
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results" / "learning.parquet"), table)
    page = (out / "report" / "index.html").read_text()
    sections = [h.split("</h2>")[0] for h in page.split("<h2>")[1:]]
    at = sections.index("Learning curves")
    assert sections[at - 1].startswith("Evaluation: the paper-style table")
    section = page.split("<h2>Learning curves</h2>")[1].split("<h2>")[0]
    assert 'src="learning_curves.png"' in section and (out / "report" / "learning_curves.png").is_file()
    assert "First checkpoint whose accuracy interval lies above chance" in section and "<table" in section


def test_attention_over_training_scores_every_checkpoint(grid_out, tmp_path):
    from codetransfer.analysis.attention_plots import plot_score_over_training

    out = tmp_path / "att"
    assert (
        cli(
            [
                "attention",
                "--runs",
                str(grid_out),
                "--out",
                str(out),
                "--tasks",
                "none",
                "--n-seqs",
                "4",
                "--half-len",
                "6",
                "--n-boot",
                "0",
                "--checkpoints",
            ]
        )
        == 0
    )
    t = pd.read_parquet(out / "attention_over_training.parquet")
    final = pd.read_parquet(out / "attention.parquet")
    for r in find_runs(grid_out):
        steps = sorted(t.loc[t["run"] == r.name, "step"].unique())
        assert steps == sorted(run_checkpoints(r))
        # the last checkpoint is the final model: its scores equal the run's own head table
        last = t[(t["run"] == r.name) & (t["step"] == steps[-1])].drop(columns="step").reset_index(drop=True)
        pd.testing.assert_frame_equal(last, final[final["run"] == r.name].reset_index(drop=True))
    ax = plot_score_over_training(t[t["run"] == "text-only-s0"], "previous_token", top=2)
    assert len(ax.lines) == 2


def test_attention_checkpoints_refused_without_snapshots(tmp_path, capsys):
    root = tmp_path / "g"
    root.mkdir()
    (root / "grid.toml").write_text(GRID.replace("snapshot_every = 3", "snapshot_every = 0"))
    assert "snapshot_every = 0" in (root / "grid.toml").read_text()
    train_grid(load_grid(root / "grid.toml"), root / "out", only=("text-only",), progress=False, log=lambda *a: None)
    assert (
        cli(
            [
                "attention",
                "--runs",
                str(root / "out"),
                "--out",
                str(tmp_path / "a"),
                "--tasks",
                "none",
                "--n-seqs",
                "2",
                "--half-len",
                "4",
                "--checkpoints",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "train.snapshot_every" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()


def test_pipeline_scores_heads_over_training_and_the_report_plots_it(grid_out, tmp_path):
    from codetransfer.pipeline import JobSettings, run_job

    out = tmp_path / "out"
    shutil.copytree(grid_out, out)
    grid = grid_out.parent / "grid.toml"
    settings = JobSettings(attention_items=4, attention_tasks="entity_tracking")
    run_job(str(grid), out, settings, stages=("attention", "report"), log=lambda *a: None)
    over = pd.read_parquet(out / "results" / "attention_over_training.parquet")
    assert set(over["step"]) == {3, 6, 8} and set(over["recipe"]) == {"text-only", "balanced->text", "balanced->code"}
    assert {"previous_token", "induction", "induction_loss"} <= set(over["metric"])
    section = (out / "report" / "index.html").read_text().split("<h2>Attention heads</h2>")[1].split("<h2>")[0]
    assert 'src="heads_over_training.png"' in section and (out / "report" / "heads_over_training.png").is_file()
    # one row per run with that run's own strongest induction head (one seed per recipe here)
    md = (out / "report" / "summary.md").read_text().split("## Attention heads")[1].split("\n## ")[0]
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and "-s0 |" in ln]
    assert sorted(ln.split(" | ")[0][2:] for ln in rows) == ["balanced-code-s0", "balanced-text-s0", "text-only-s0"]


def test_emergence_table_finds_the_first_checkpoint_and_censors_the_rest():
    from codetransfer.analysis.learning import emergence_summary, emergence_table

    over, learn = [], []
    # recipe "a": the induction head passes 0.5 at step 2 (seed 0) and 3 (seed 1); "b" never
    for recipe, crossing in (("a", {0: 2, 1: 3}), ("b", {0: 99, 1: 99})):
        for seed, at in crossing.items():
            for step in (1, 2, 3, 4):
                for head, v in enumerate([0.6 if step >= at else 0.1, 0.05]):
                    over.append(dict(run=f"{recipe}-s{seed}", recipe=recipe, seed=seed, step=step,
                                     task="repeated_random", layer=1, head=head, metric="induction", value=v))  # fmt: skip
                acc = 0.9 if step >= at else 0.3
                learn.append(dict(run=f"{recipe}-s{seed}", recipe=recipe, seed=seed, step=step, task="counting",
                                  difficulty="0", metric="accuracy", value=acc, ci_low=acc - 0.1, copy_chance=0.5))  # fmt: skip
    over.append(dict(over[0], run="a*", seed=pd.NA, value=1.0))  # pooled rows are not runs
    t = emergence_table(pd.DataFrame(learn), pd.DataFrame(over), tokens_per_step=1000)
    ind = t[t["measure"] == "induction"].set_index("run")
    assert ind.loc["a-s0", "tokens"] == 2000 and ind.loc["a-s1", "tokens"] == 3000
    assert ind.loc["b-s0", "tokens"] is pd.NA and ind.loc["b-s0", "last_tokens"] == 4000
    assert "a*" not in ind.index
    beats = t[t["measure"] == "beats copy"].set_index("run")
    assert beats.loc["a-s1", "step"] == 3 and beats.loc["a-s1", "task"] == "counting"
    s = emergence_summary(t).set_index(["recipe", "measure"])
    assert s.loc[("a", "induction"), "reached"] == 2 and s.loc[("a", "induction"), "tokens"] == 2500
    assert s.loc[("a", "induction"), "ci_low"] < 2500 < s.loc[("a", "induction"), "ci_high"]
    assert s.loc[("b", "induction"), "reached"] == 0 and np.isnan(s.loc[("b", "induction"), "tokens"])
    # per-run tokens per step
    t2 = emergence_table(None, pd.DataFrame(over), tokens_per_step={"a-s0": 10, "a-s1": 10, "b-s0": 10, "b-s1": 10})
    assert t2.set_index("run").loc["a-s0", "tokens"] == 20
