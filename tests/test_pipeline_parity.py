"""The main job's tables equal the library functions' tables computed directly on the same runs.

The job cuts the work into per-run units and merges their tables; calling ``evaluate_grid``,
``probe_grid``, ``patch_grid`` and ``attention_grid`` once over all runs of the grid must give the
same rows (the grid-wide evaluation tables from the direct scores with the job's bootstrap count).
"""

from __future__ import annotations

import dataclasses
import io
import json

import pandas as pd
import pytest

from gridfiles import synthetic_grid

from codetransfer.analysis.grid import (
    DEFAULT_BASELINE,
    PatchSettings,
    attention_grid,
    eval_tables,
    evaluate_grid,
    hardest_fitting_level,
    items_up_to,
    patch_grid,
    patch_sites,
)
from codetransfer.pipeline import (
    GRID_N_BOOT,
    HELDOUT_WINDOWS,
    PROBE_SPLIT_SEEDS,
    UNIT_N_BOOT,
    JobSettings,
    run_job,
    unit_threads,
)
from codetransfer.probes.grid import probe_grid
from codetransfer.tasks import get_task, task_names
from codetransfer.trained import find_runs

GRID = synthetic_grid(
    "parity",
    """
[train]
batch_size = 4
eval_every = 8
eval_tokens = 1024
save_every = 4
[[recipes]]
name = "text-only"
[[recipes.phases]]
name = "main"
mixture = { gcide = 1, narratives = 1 }
tokens = 8192
[[recipes]]
name = "balanced"
[[recipes.phases]]
name = "main"
mixture = { gcide = 1, narratives = 1, programs = 1 }
tokens = 8192
""",
)

SETTINGS = JobSettings(
    eval_items=6,
    probe_items=40,  # at least min_rows (20) rows of the query label per rendering
    probe_max_difficulty=1,
    probe_sites=["resid_post"],
    patch_items=4,
    patch_sites="resid_pre,head",
    attention_items=4,
)


@pytest.fixture(autouse=True)
def _as_a_unit():
    """The direct calls run with the job's units' thread count: float sums depend on it (exact comparisons)."""
    with unit_threads():
        yield


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    (root / "grid.toml").write_text(GRID)
    run_job(
        str(root / "grid.toml"),
        root / "out",
        SETTINGS,
        stages=("train", "eval", "probe", "patch", "attention", "circuit"),
        log=lambda *a: None,
    )
    runs = find_runs(root / "out", complete_only=True)
    assert [r.recipe for r in runs] == ["balanced", "text-only"]
    return root, runs


def _table(root, name):
    return pd.read_parquet(root / "out" / "results" / name)


def _stored(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` as read back from a parquet file (list columns come back as arrays), like the job's tables."""
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    return pd.read_parquet(io.BytesIO(buf.getvalue()))


def test_eval_tables_equal_one_evaluation_of_every_run(job):
    root, runs = job
    s = SETTINGS
    tasks = {t: items_up_to(get_task(t), s.eval_items, s.seed, s.eval_max_difficulty) for t in task_names()}
    direct = evaluate_grid(
        runs,
        runs_dir=root / "out",
        tasks=tasks,
        n_items=s.eval_items,
        seed=s.seed,
        baseline=DEFAULT_BASELINE,
        n_boot=UNIT_N_BOOT,
        heldout_windows=HELDOUT_WINDOWS,
        fit_context=True,
    )
    pd.testing.assert_frame_equal(_table(root, "scores.parquet"), _stored(direct["scores.parquet"]), check_exact=True)
    table, summary = eval_tables(direct["scores.parquet"], direct["losses.parquet"], s.baseline, GRID_N_BOOT, s.seed)
    pd.testing.assert_frame_equal(_table(root, "eval.parquet"), _stored(table), check_exact=True)
    pd.testing.assert_frame_equal(
        pd.read_csv(root / "out" / "results" / "summary.csv"),
        pd.read_csv(io.StringIO(summary.to_csv(index=False))),
        check_exact=True,
    )
    assert {"accuracy", "loss"} <= set(summary["of"])  # both kinds of relative change are there


def test_probe_table_equals_one_sweep_of_every_run(job, tmp_path):
    root, runs = job
    s = SETTINGS
    hardest = min(
        hardest_fitting_level(t, runs[0], s.probe_items, s.seed, s.probe_max_difficulty) for t in s.probe_tasks
    )
    direct = probe_grid(
        runs,
        s.probe_tasks,
        s.probe_sites,
        tmp_path / "probe",
        n_items=s.probe_items,
        item_seed=s.seed,
        max_difficulty=hardest,
        seeds=PROBE_SPLIT_SEEDS,
        keep_stores=False,
        random_baseline=True,
        labels=s.probe_labels,
    )
    got = _table(root, "probes.parquet")
    assert set(got["pos"]) >= {"box@query"} and set(got["pos"]) <= {"box@query", "box@op"}
    assert len(got) and set(got["recipe"]) == {
        "balanced",
        "text-only",
        "balanced (random init)",
        "text-only (random init)",
    }
    pd.testing.assert_frame_equal(got, _stored(direct), check_exact=True)


def test_patch_tables_equal_one_sweep_of_every_run(job):
    root, runs = job
    s = SETTINGS
    patch = PatchSettings(
        task=s.patch_task,
        sites=tuple(patch_sites(s.patch_sites)),
        n_items=s.patch_items,
        difficulty=s.patch_difficulty,
        seed=s.seed,
    )
    within = patch_grid(runs, dataclasses.replace(patch, cross_rendering=True))
    for name in ("patching.parquet", "cross_rendering.parquet"):
        pd.testing.assert_frame_equal(_table(root, name), _stored(within[name]), check_exact=True)
    cross = patch_grid(
        runs, dataclasses.replace(patch, cross_model=("balanced-s0", "text-only-s0"), cross_model_only=True)
    )
    assert list(cross) == ["cross_model.parquet"]
    job = _table(root, "cross_model.parquet")
    assert set(job["run"]) == {"balanced-s0->text-only-s0", "text-only-s0->balanced-s0"}  # the job patches both ways
    forward = job[job["run"] == "balanced-s0->text-only-s0"].reset_index(drop=True)
    pd.testing.assert_frame_equal(forward, _stored(cross["cross_model.parquet"]), check_exact=True)
    back = patch_grid(
        runs, dataclasses.replace(patch, cross_model=("text-only-s0", "balanced-s0"), cross_model_only=True)
    )
    pd.testing.assert_frame_equal(
        job[job["run"] == "text-only-s0->balanced-s0"].reset_index(drop=True),
        _stored(back["cross_model.parquet"]),
        check_exact=True,
    )


def test_attention_table_equals_one_scoring_of_every_run(job):
    root, runs = job
    s = SETTINGS
    hardest = min(
        hardest_fitting_level(t, runs[0], s.probe_items, s.seed, s.probe_max_difficulty) for t in s.attention_tasks
    )
    direct = attention_grid(runs, s.attention_tasks, n_items=s.attention_items, seed=s.seed, max_difficulty=hardest)
    assert list(direct) == ["attention.parquet"]  # no checkpoints kept: no table over training
    pd.testing.assert_frame_equal(
        _table(root, "attention.parquet"), _stored(direct["attention.parquet"]), check_exact=True
    )


def test_circuit_tables_equal_one_circuit_analysis_of_the_grid(job):
    from codetransfer.analysis.circuit import circuit_grid
    from codetransfer.pipeline import CIRCUIT_BY, CIRCUIT_ITEMS, GRID_N_BOOT, circuit_k

    root, runs = job
    s = SETTINGS
    model = runs[0].record["model"]
    direct = circuit_grid(
        runs,
        s.attention_tasks[0],
        attention=_table(root, "attention.parquet"),
        k=circuit_k(model["n_layers"] * model["n_heads"]),
        by=CIRCUIT_BY,
        n_items=CIRCUIT_ITEMS,
        max_difficulty=s.eval_max_difficulty,
        baseline=s.baseline,
        seed=s.seed,
        n_boot=GRID_N_BOOT,
    )
    assert set(direct) == {"circuit.parquet", "circuit_gap.parquet", "circuit_heads.parquet", "cka.parquet"}
    for name, table in direct.items():
        pd.testing.assert_frame_equal(_table(root, name), _stored(table), check_exact=True)


def test_two_workers_give_the_same_tables_and_records(job, tmp_path):
    """``jobs=2`` runs the analysis units on two worker processes: every table and unit record equals ``jobs=1``'s
    (seconds aside), and one line per finished unit is printed."""
    import shutil

    root, _ = job
    out = tmp_path / "out"
    shutil.copytree(root / "out" / "runs", out / "runs")
    shutil.copytree(root / "out" / "data", out / "data")
    shutil.copy2(root / "out" / "grid.json", out / "grid.json")
    lines: list[str] = []
    run_job(
        str(root / "grid.toml"),
        out,
        SETTINGS,
        stages=("eval", "probe", "patch", "attention", "circuit"),
        log=lines.append,
        jobs=2,
    )
    one = sorted(p.relative_to(root / "out") for p in (root / "out" / "results").rglob("*.parquet"))
    two = sorted(p.relative_to(out) for p in (out / "results").rglob("*.parquet"))
    assert one == two and len(one) > 20
    for rel in one:
        pd.testing.assert_frame_equal(pd.read_parquet(root / "out" / rel), pd.read_parquet(out / rel), check_exact=True)
    records = sorted(p.name for p in (out / "units").glob("*.json"))
    assert records == sorted(p.name for p in (root / "out" / "units").glob("*.json"))
    for name in records:
        a, b = (json.loads((o / "units" / name).read_text()) for o in (root / "out", out))
        assert a["key"] == b["key"], name
    finished = [ln for ln in lines if " units" in ln and ln.split(":")[0] + ".json" in records]
    assert len(finished) == len(records), lines


def test_cross_model_pairs_baseline_controls_and_the_seed_null():
    from types import SimpleNamespace as NS

    from codetransfer.pipeline import cross_model_pairs

    runs = [
        NS(name=f"{r}-s{s}", recipe=r, seed=s)
        for r in ("text+code", "text-diluted", "text-only")
        for s in (0, 1, 2)
        if not (r == "text+code" and s == 2)  # a seed the recipe lacks
    ]
    pairs = [(a.name, b.name) for a, b in cross_model_pairs(runs, "text-only", {"text+code": "text-diluted"})]
    assert pairs == [
        ("text+code-s0", "text-only-s0"),
        ("text+code-s0", "text-diluted-s0"),
        ("text+code-s1", "text-only-s1"),
        ("text+code-s1", "text-diluted-s1"),
        ("text-diluted-s0", "text-only-s0"),
        ("text-diluted-s1", "text-only-s1"),
        ("text-diluted-s2", "text-only-s2"),
        ("text-only-s1", "text-only-s0"),  # the nulls: the next seed's run into each run of a receiving recipe
        ("text-only-s2", "text-only-s1"),
        ("text-only-s0", "text-only-s2"),
        ("text-diluted-s1", "text-diluted-s0"),
        ("text-diluted-s2", "text-diluted-s1"),
        ("text-diluted-s0", "text-diluted-s2"),
    ]


def test_the_job_scores_its_items_spread_over_the_levels_it_evaluates(job):
    """``eval_items`` items per family spread evenly over levels 0..eval_max_difficulty, the same for every run."""
    root, _ = job
    scores = _table(root, "scores.parquet")
    per_level = scores.groupby(["run", "task", "difficulty"]).size()
    assert set(scores["difficulty"].astype(int)) <= set(range(SETTINGS.eval_max_difficulty + 1))
    assert (per_level == SETTINGS.eval_items // (SETTINGS.eval_max_difficulty + 1)).all(), per_level
