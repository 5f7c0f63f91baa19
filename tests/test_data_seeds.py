"""Data seeds (grid field ``data_seeds``): a data-order axis next to the init seeds.

A run ``<recipe>-s<seed>-d<k>`` starts from the weights of ``<recipe>-s<seed>`` at the end of the phases its recipe
shares with another recipe (the same initialisation, warm-up and shared state) and trains on the same rows after
them in another order. A grid without data seeds trains, names and hashes everything as before; with them, the
runs of the seeds' own orders are unchanged, parallel training equals sequential, and the job patches and compares
the baseline's runs that differ in data order only: the data-order null.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from codetransfer import artifacts
from codetransfer.cli import main as cli
from codetransfer.errors import CodetransferError
from codetransfer.trained import find_runs, grid_from_dict, load_grid, runs_table, train_grid
from codetransfer.trained.checks import is_data_order_pair, run_folder
from codetransfer.trained.data import Mixer
from codetransfer.trained.gridfile import grid_to_toml
from codetransfer.trained.runs import _shared_prefixes, recipe_hash, run_hash, shared_length
from codetransfer.trained.train import train_run
from gridfiles import MINI_GRID, write_grid

# the mini grid as a Llama with a 20-step induction warm-up: one recipe from scratch (text-only) and two that share
# their first phase ('balanced'), 20 steps per run
BASE = MINI_GRID.replace("n_ctx = 32", 'n_ctx = 64\narch = "llama"').replace(
    "save_every = 5", "save_every = 5\ninduction_warmup = 20"
)
WITH_ORDERS = BASE.replace("seeds = [0]", "seeds = [0]\ndata_seeds = [1, 2]")
TIMES = {"tokens_per_s", "train_seconds"}


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def weights(run_dir: Path) -> dict:
    return load_file(Path(run_dir) / "model.safetensors")


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def drop_times(value):
    if isinstance(value, dict):
        return {k: drop_times(v) for k, v in value.items() if k not in TIMES}
    if isinstance(value, list):
        return [drop_times(v) for v in value]
    return value


def train(root: Path, text: str, name: str, jobs: int = 1, data_from: Path | None = None) -> Path:
    write_grid(root, text, f"{name}.toml")
    out = root / name
    if data_from is not None:  # the same prepared data (its manifest records the preparation time)
        out.mkdir()
        shutil.copytree(data_from / "data", out / "data", ignore=shutil.ignore_patterns("warmup"))
        shutil.copy2(data_from / "grid.json", out / "grid.json")
    train_grid(load_grid(root / f"{name}.toml"), out, jobs=jobs, progress=False, log=lambda *a: None)
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("data-seeds")


@pytest.fixture(scope="module")
def plain(root):
    return train(root, BASE, "plain")


@pytest.fixture(scope="module")
def orders(root, plain):
    return train(root, WITH_ORDERS, "orders", data_from=plain)


# ------------------------------------------------------------------------------------------- the grid field


def test_default_grids_keep_their_identity():
    """Fingerprints, recipe hashes, run names and the printed grid file of the presets, as before data seeds."""
    tiny = load_grid("tiny")
    assert tiny.data_seeds == ()
    assert tiny.fingerprint() == "95098b42cb361fba"
    assert [recipe_hash(r) for r in tiny.recipes] == [
        "a45a6ec06a0eff2a", "f0e8616fb213d435", "82e97d9e74d3d462", "69ce104a7d72bf41",
    ]  # fmt: skip
    text = grid_to_toml(tiny)
    assert "data_seeds" not in text
    assert artifacts.key(text) == "231ad8eacaf48682"
    assert run_folder("balanced->text", 2) == "balanced-text-s2"
    gpu = load_grid("gpu")
    assert gpu.fingerprint() == "25409137883337bc"  # since its warm-up took a learning rate for its width
    # data seeds do not enter the fingerprint (the runs of the seeds' own orders are the same runs)
    assert dataclasses.replace(tiny, data_seeds=(1,)).fingerprint() == tiny.fingerprint()


def test_data_seeds_round_trip_through_the_grid_file(tmp_path):
    g = grid_from_dict({**load_grid("tiny").to_dict(), "data_seeds": [3, 1]})
    assert g.data_seeds == (3, 1)
    text = grid_to_toml(g)
    assert "data_seeds = [3, 1]" in text
    (tmp_path / "g.toml").write_text(text)
    assert load_grid(tmp_path / "g.toml") == g


@pytest.mark.parametrize(
    "value, message",
    [
        ([0], r"data_seeds\[0\]: 0 is every run's own data order"),
        ([1, -1], r"data_seeds\[1\]"),
        ([2, 2], "duplicate data seeds"),
        ([2**32], r"data_seeds\[0\]"),
        (["1"], "expected an integer"),
        (1, "expected a list"),
    ],
)
def test_bad_data_seeds_are_refused_with_one_line(value, message):
    d = load_grid("tiny").to_dict()
    d["data_seeds"] = value
    with pytest.raises(CodetransferError, match=message) as e:
        grid_from_dict(d)
    assert "\n" not in str(e.value)


def test_run_names_of_data_orders_never_meet_those_of_the_seeds_own_orders():
    assert run_folder("balanced->text", 0, 1) == "balanced-text-s0-d1"
    assert run_folder("text-only", 3, 0) == "text-only-s3"
    assert is_data_order_pair("text-only-s0-d2", "text-only-s0")
    assert not is_data_order_pair("text-only-s1", "text-only-s0")
    assert not is_data_order_pair("text-only-s0-d1", "text-only-s1")
    assert not is_data_order_pair("text-only-s0", "text-only-s0")
    # a recipe named like a data-order run still gets a folder of its own
    assert run_folder("x-s0-d1", 0) != run_folder("x", 0, 1)


# ------------------------------------------------------------------------------------------------ the mixer


def test_a_data_order_takes_the_phase_rows_of_the_default_order_permuted():
    rng = np.random.default_rng(0)
    streams = {"a": rng.integers(0, 500, 4000), "b": rng.integers(500, 1000, 2400)}
    weights, n_rows, batch = {"a": 0.7, "b": 0.3}, 60, 8
    start = {"a": 7, "b": 3}  # rows each stream had given before the phase

    def default():
        taken, counts, rows = dict(start), {}, []
        for first in range(0, n_rows, batch):
            src = Mixer.allocate(weights, first, min(batch, n_rows - first), counts)
            rows.append(Mixer(streams, 16, seed=5).rows(src, taken))
        return np.concatenate(rows), taken

    def reordered(order, chunks):
        m = Mixer(streams, 16, seed=5)
        taken, counts, rows = dict(start), {}, []
        for first in range(0, n_rows, chunks):
            _, r = m.reordered_rows(weights, n_rows, first, min(chunks, n_rows - first), taken, counts, order)
            rows.append(r)
        return np.concatenate(rows), taken

    base, taken = default()
    one, taken_one = reordered((5, 1, 0, 9), batch)
    assert taken_one == taken  # the streams stand where the default order leaves them
    assert sorted(map(tuple, one)) == sorted(map(tuple, base))  # the same rows ...
    assert not np.array_equal(one, base)  # ... in another order
    # resuming mid-phase (other chunk sizes, a fresh mixer) gives the same rows in the same order
    assert np.array_equal(reordered((5, 1, 0, 9), 5)[0], one)
    assert not np.array_equal(reordered((5, 2, 0, 9), batch)[0], one)  # another data seed: another order


# --------------------------------------------------------------------------------------------- training


def test_default_runs_are_unchanged_by_data_seeds(plain, orders):
    """Adding data seeds adds runs and changes nothing of the seed's own runs: weights, records, metrics."""
    names = sorted(r.name for r in find_runs(orders))
    assert names == sorted(
        f"{s}-s0{d}" for s in ("text-only", "balanced-text", "balanced-code") for d in ("", "-d1", "-d2")
    )
    for r in find_runs(plain):
        other = orders / "runs" / r.name
        assert sha(r.path / "model.safetensors") == sha(other / "model.safetensors"), r.name
        ma = [drop_times(json.loads(ln)) for ln in (r.path / "metrics.jsonl").read_text().splitlines()]
        mb = [drop_times(json.loads(ln)) for ln in (other / "metrics.jsonl").read_text().splitlines()]
        assert ma == mb, r.name
        a = drop_times(json.loads((r.path / "codetransfer.json").read_text()))
        b = drop_times(json.loads((other / "codetransfer.json").read_text()))
        assert a == b and "data_seed" not in a, r.name
    data = {r.name: r for r in find_runs(orders)}
    assert data["text-only-s0-d1"].data_seed == 1 and data["text-only-s0"].data_seed == 0
    rec = data["balanced-text-s0-d2"].record
    assert rec["data_seed"] == 2 and rec["data_order_from_phase"] == 1 and rec["seed"] == 0
    # its recipe hash (the job's unit keys) names the recipe, the data seed and where the reordering starts
    own_hash = data["balanced-text-s0"].record["recipe_hash"]
    assert own_hash == recipe_hash(load_grid(Path(orders).parent / "orders.toml").recipe("balanced->text"))
    assert rec["recipe_hash"] == run_hash(load_grid(Path(orders).parent / "orders.toml").recipe("balanced->text"), 2, 1)
    assert len({own_hash, rec["recipe_hash"], data["balanced-text-s0-d1"].record["recipe_hash"]}) == 3
    # the same rows per source and phase, different weights
    for name in ("text-only", "balanced-text", "balanced-code"):
        own, d1, d2 = (data[f"{name}-s0{d}"] for d in ("", "-d1", "-d2"))
        assert own.record["tokens_by_phase"] == d1.record["tokens_by_phase"] == d2.record["tokens_by_phase"]
        w = [weights(r.path) for r in (own, d1, d2)]
        assert not same_weights(w[0], w[1]) and not same_weights(w[1], w[2]) and not same_weights(w[0], w[2])
    # a run with a data seed branches from the state its recipe's own-order run shares
    assert data["balanced-code-s0-d1"].record["branched_from"] == data["balanced-code-s0"].record["branched_from"]


def test_same_weights_at_the_end_of_the_shared_base_then_different(orders, tmp_path):
    """Trained alone (nothing to branch from), the run with a data seed trains the shared phase itself: its state
    at the end of that phase equals the own-order run's, its final weights equal the grid's run of that data seed
    (which branched instead) and differ from the own-order run's."""
    grid = load_grid(Path(orders).parent / "orders.toml")
    recipe = grid.recipe("balanced->text")
    shared = _shared_prefixes(grid)
    assert shared_length(grid, recipe, shared) == 1 and shared_length(grid, grid.recipe("text-only"), shared) == 0
    data = orders / "data"
    base_steps = 10  # 5120 tokens of 8 x 64
    states = {}
    for d in (0, 1):
        run_dir = tmp_path / f"d{d}"
        run_dir.mkdir()
        kw = dict(progress=False, data_seed=d, data_from=1)
        train_run(grid, recipe, 0, data, run_dir, stop_after_steps=base_steps, **kw)
        name = (run_dir / "state" / "LATEST").read_text().strip()
        assert name == f"step-{base_steps:08d}"
        states[d] = load_file(run_dir / "state" / name / "model.safetensors")
        train_run(grid, recipe, 0, data, run_dir, **kw)  # on to the end
    assert same_weights(states[0], states[1])  # the end of the shared base
    final = {d: weights(tmp_path / f"d{d}") for d in (0, 1)}
    assert not same_weights(final[0], final[1])  # after it
    assert same_weights(final[0], weights(orders / "runs" / "balanced-text-s0"))
    assert same_weights(final[1], weights(orders / "runs" / "balanced-text-s0-d1"))


def test_a_data_order_run_killed_mid_phase_resumes_bit_identical(orders, tmp_path):
    """text-only shares no phase: its data order 2 reorders its only phase from the first step; stopped after 7
    steps (state saved at step 5, mid-phase) and run again, it ends with the grid's run's weights."""
    grid = load_grid(Path(orders).parent / "orders.toml")
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    kw = dict(progress=False, data_seed=2, data_from=0)
    cursor = train_run(grid, grid.recipe("text-only"), 0, orders / "data", run_dir, stop_after_steps=7, **kw)
    assert cursor.step == 7 and (run_dir / "state" / "LATEST").read_text().strip() == "step-00000005"
    train_run(grid, grid.recipe("text-only"), 0, orders / "data", run_dir, **kw)
    assert same_weights(weights(run_dir), weights(orders / "runs" / "text-only-s0-d2"))
    assert not same_weights(weights(run_dir), weights(orders / "runs" / "text-only-s0"))


def test_a_data_order_run_is_retrained_when_its_reordering_moves(orders, tmp_path):
    """Without balanced->code, balanced->text shares no phase: its data-order runs now reorder from the first
    phase, so they are retrained (their recipe hash changes, and with it the job's unit keys); every run of a
    seed's own order is kept."""
    out = tmp_path / "orders"
    shutil.copytree(orders, out)
    text = WITH_ORDERS[: WITH_ORDERS.index('[[recipes]]\nname = "balanced->code"')]
    grid = load_grid(write_grid(tmp_path, text, "fewer.toml"))
    assert [r.name for r in grid.recipes] == ["text-only", "balanced->text"]
    lines = []
    train_grid(grid, out, progress=False, log=lambda *a: lines.append(" ".join(map(str, a))))
    retrained = sorted(ln.split(":")[0][4:] for ln in lines if "recipe changed, retraining" in ln)
    assert retrained == ["balanced-text-s0-d1", "balanced-text-s0-d2"]
    runs = {r.name: r for r in find_runs(out)}
    assert runs["balanced-text-s0-d1"].record["data_order_from_phase"] == 0
    assert runs["balanced-text-s0-d1"].record["recipe_hash"] == run_hash(grid.recipe("balanced->text"), 1, 0)
    assert sha(out / "runs" / "balanced-text-s0-d1" / "model.safetensors") != sha(
        orders / "runs" / "balanced-text-s0-d1" / "model.safetensors"
    )
    for name in ("balanced-text-s0", "text-only-s0", "text-only-s0-d1"):
        assert sha(out / "runs" / name / "model.safetensors") == sha(orders / "runs" / name / "model.safetensors")


def test_parallel_training_with_data_seeds_equals_sequential(root, orders):
    two = train(root, WITH_ORDERS, "orders-two", jobs=2, data_from=orders)
    runs = sorted(r.name for r in find_runs(orders))
    assert runs == sorted(r.name for r in find_runs(two))
    for name in runs:
        a, b = orders / "runs" / name, two / "runs" / name
        assert sha(a / "model.safetensors") == sha(b / "model.safetensors"), name
        ra = drop_times(json.loads((a / "codetransfer.json").read_text()))
        rb = drop_times(json.loads((b / "codetransfer.json").read_text()))
        assert ra == rb, name
        ma = [drop_times(json.loads(ln)) for ln in (a / "metrics.jsonl").read_text().splitlines()]
        mb = [drop_times(json.loads(ln)) for ln in (b / "metrics.jsonl").read_text().splitlines()]
        assert ma == mb, name


def test_runs_table_and_cli_show_the_data_seed(plain, orders, capsys):
    assert "data_seed" not in runs_table(plain).columns  # as before: no data seeds, no column
    table = runs_table(orders).set_index("run")
    assert table.loc["text-only-s0-d2", "data_seed"] == 2 and table.loc["text-only-s0", "data_seed"] == 0
    assert list(table.columns[:3]) == ["recipe", "seed", "data_seed"]
    assert cli(["runs", str(orders)]) == 0
    out = capsys.readouterr().out
    assert "data_seed" in out.splitlines()[0] and "balanced-code-s0-d1" in out


def test_a_complete_grid_with_data_seeds_is_skipped(orders):
    lines = []
    before = {r.name: sha(r.path / "model.safetensors") for r in find_runs(orders)}
    grid = load_grid(Path(orders).parent / "orders.toml")
    train_grid(grid, orders, progress=False, log=lambda *a: lines.append(" ".join(map(str, a))))
    assert sum("complete, skipped" in ln for ln in lines) == 9
    assert {r.name: sha(r.path / "model.safetensors") for r in find_runs(orders)} == before


# ---------------------------------------------------------------------------------------- the job's null


def info(recipe: str, seed: int, data_seed: int = 0):
    return SimpleNamespace(name=run_folder(recipe, seed, data_seed), recipe=recipe, seed=seed, data_seed=data_seed)


def names(pairs) -> list[tuple[str, str]]:
    return [(a.name, b.name) for a, b in pairs]


def test_cross_model_pairs_use_the_data_order_null_when_there_is_one():
    from codetransfer.pipeline import cross_model_pairs

    own = [info(r, s) for r in ("code", "text-only") for s in (0, 1)]
    # without data seeds: the init-seed null, the next seed's run into each run of the receiving recipe
    assert names(cross_model_pairs(own, "text-only", {})) == [
        ("code-s0", "text-only-s0"), ("code-s1", "text-only-s1"),
        ("text-only-s1", "text-only-s0"), ("text-only-s0", "text-only-s1"),
    ]  # fmt: skip
    runs = own + [info("text-only", s, d) for s in (0, 1) for d in (1, 2)] + [info("code", 0, 1)]
    runs = sorted(runs, key=lambda r: r.name)  # the job's order: by run name
    assert names(cross_model_pairs(runs, "text-only", {})) == [
        ("code-s0", "text-only-s0"),
        ("code-s1", "text-only-s1"),
        ("text-only-s0-d1", "text-only-s0"),
        ("text-only-s0-d2", "text-only-s0"),
        ("text-only-s1-d1", "text-only-s1"),
        ("text-only-s1-d2", "text-only-s1"),
    ]  # code receives nothing one way, so its data-order run is never paired; each null pair shares its init seed
    assert all(is_data_order_pair(a.name, b.name) for a, b in cross_model_pairs(runs, "text-only", {})[2:])
    both = names(cross_model_pairs(runs, "text-only", {}, both_ways=True))
    assert both[-2:] == [("code-s0-d1", "code-s0"), ("code-s0", "code-s1")]  # both ways, code receives too: its
    # seed-0 run's null is its data-order twin; its seed-1 run has none, so the next seed's run is its null


def item_scores(effects: dict[str, float], seeds=(0, 1, 2), orders=(0,), n_items=30, rng=0) -> pd.DataFrame:
    """Per-item scores of runs ``<recipe>-s<seed>[-d<k>]``: an item effect shared by every run, a run effect per
    init seed, a small data-order effect and noise; ``effects``: each recipe's shift."""
    r = np.random.default_rng(rng)
    item = r.normal(0, 1, n_items)
    rows = []
    for recipe, shift in effects.items():
        for s in seeds:
            seed_shift = r.normal(0, 0.3)
            for d in orders if recipe == "text-only" else (0,):
                v = 1.0 + shift + seed_shift + item + r.normal(0, 0.05) + r.normal(0, 0.3, n_items)
                for j in range(n_items):
                    rows.append(dict(run=run_folder(recipe, s, d), recipe=recipe, seed=s, task="t", index=j,
                                     category="reasoning", difficulty=0, chance=0.25, logit_diff=v[j],
                                     correct=float(v[j] > 0)))  # fmt: skip
    return pd.DataFrame(rows)


def test_comparison_table_adds_the_data_order_null_and_keeps_the_recipe_rows():
    from codetransfer.analysis.compare import data_order_label
    from codetransfer.analysis.grid import comparison_table

    plain = item_scores({"text-only": 0.0, "code": 0.8})
    with_orders = item_scores({"text-only": 0.0, "code": 0.8}, orders=(0, 1, 2))
    assert set(with_orders["run"]) > set(plain["run"])
    own_runs = with_orders[~with_orders["run"].str.contains("-d")]
    expect = comparison_table(own_runs, "text-only", 200, 0)
    orders = {r: int(r.rsplit("-d", 1)[1]) for r in set(with_orders["run"]) if "-d" in r}
    table = comparison_table(with_orders, "text-only", 200, 0, data_seeds=orders)
    null = table[table["recipe"].str.contains("data order")]
    recipe_rows = table[~table["recipe"].str.contains("data order")].reset_index(drop=True)
    pd.testing.assert_frame_equal(recipe_rows, expect)  # the recipe rows pair the seeds' own orders, as before
    assert sorted(set(null["recipe"])) == [data_order_label("text-only", 1), data_order_label("text-only", 2)]
    assert (null["baseline"] == "text-only").all() and (null["n_seeds"] == 3).all()
    assert null["pooled"].any() and (~null["pooled"]).any()  # per level and pooled, like the recipe rows
    # the null is small next to the recipe's effect, and it is paired by init seed (a seed's shift cancels)
    diff = null[(null["metric"] == "logit_diff") & ~null["pooled"]]
    code = recipe_rows[(recipe_rows["metric"] == "logit_diff") & ~recipe_rows["pooled"]]
    assert diff["estimate"].abs().max() < 0.2 < 0.5 < code["estimate"].iloc[0]
    # without the mapping the same scores are refused as two runs of one recipe and seed (as before)
    with pytest.raises(CodetransferError, match="twice"):
        comparison_table(with_orders, "text-only", 200, 0)


# ------------------------------------------------------------------------------------------ the report


def test_report_names_the_data_order_null(tmp_path):
    from test_report_patching import _comparison, _section, with_null

    cm = with_null("text-only-s0-d1->text-only-s0", 0.95)
    text, tables, findings = _section(tmp_path, cross_model=cm, comparison=_comparison("code25", 0.2, 0.9))
    assert "differs only in the order of the later rows (the data-order null: it shows what a foreign model" in text
    assert "another seed" not in text
    assert findings[0].endswith("another model of text-only (data-order null) gives -0.05 of the gap there).")
    assert "null: same recipe and init seed, other data order" in tables and "text-only-s0-d1" not in tables


def test_report_names_the_data_order_rows_of_the_comparison_and_keeps_them_out_of_the_headline():
    from codetransfer.analysis.grid import comparison_table
    from codetransfer.report import Section, _seed_paired

    scores = item_scores({"text-only": 0.0, "code": 0.8}, orders=(0, 1))
    orders = {r: 1 for r in set(scores["run"]) if r.endswith("-d1")}
    table = comparison_table(scores, "text-only", 200, 0, data_seeds=orders)
    s = Section("Evaluation")
    findings = _seed_paired(s, table, "text-only")
    text = "\n".join(str(b) for kind, b in s.blocks if kind == "text")
    tables = "\n".join(b.markdown for kind, b in s.blocks if kind == "table")
    assert "'text-only (data order k)' are the **data-order null**" in text
    assert "text-only (data order 1)" in tables
    assert len(findings) == 1 and "code - text-only" in findings[0] and "data order" not in findings[0]
    assert "1 of 1 comparisons" in findings[0] or "0 of 1 comparisons" in findings[0]


def test_the_job_patches_and_compares_the_data_order_null(tmp_path):
    """The main job over a grid with a data seed: the baseline's run in data order 1 is patched into the run of its
    init seed's own order (no init-seed null pair), and the comparison table holds the data-order null rows."""
    from codetransfer.pipeline import JobSettings, run_job
    from gridfiles import synthetic_grid

    grid = synthetic_grid(
        "orders",
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
tokens = 4096
[[recipes]]
name = "balanced"
[[recipes.phases]]
name = "main"
mixture = { gcide = 1, narratives = 1, programs = 1 }
tokens = 4096
""",
    ).replace("seeds = [0]", "seeds = [0, 1]\ndata_seeds = [1]")
    assert "data_seeds = [1]" in grid
    (tmp_path / "grid.toml").write_text(grid)
    settings = JobSettings(eval_items=6, patch_items=4, patch_sites="resid_pre")
    run_job(
        str(tmp_path / "grid.toml"), tmp_path / "out", settings, stages=("train", "eval", "patch"), log=lambda *a: None
    )
    results = tmp_path / "out" / "results"
    cross = pd.read_parquet(results / "cross_model.parquet")
    assert sorted(set(cross["run"])) == [  # the recipes both ways; into each run its data-order twin
        "balanced-s0->text-only-s0",
        "balanced-s0-d1->balanced-s0",
        "balanced-s1->text-only-s1",
        "balanced-s1-d1->balanced-s1",
        "text-only-s0->balanced-s0",
        "text-only-s0-d1->text-only-s0",
        "text-only-s1->balanced-s1",
        "text-only-s1-d1->text-only-s1",
    ]
    # every row carries its pair's unpatched metrics, the same for all cells of a pair: a null is read on them
    ends = cross.groupby("run")[["source_metric", "target_metric"]].nunique()
    assert (ends == 1).all(axis=None), ends
    into = cross.drop_duplicates("run").set_index("run")["target_metric"]
    assert into["balanced-s0-d1->balanced-s0"] == into["text-only-s0->balanced-s0"]  # one receiving run
    comparison = pd.read_parquet(results / "comparison.parquet")
    assert set(comparison["recipe"]) == {"balanced", "text-only (data order 1)"}
    assert (comparison["n_seeds"] == 2).all()
    scores = pd.read_parquet(results / "scores.parquet")
    assert {"text-only-s0-d1", "balanced-s1-d1"} <= set(scores["run"])  # every run is evaluated


def test_the_job_never_aims_at_the_data_order_null():
    """``compare.gap_target`` (what the job aims patching, probing and head scores at) skips the null rows even
    where a null row is the strongest distinguishable one."""
    from codetransfer.analysis.compare import data_order_label, gap_target, is_data_order_label
    from test_report_patching import _comparison

    real = _comparison("code25", 0.2, 0.9)
    null = _comparison(data_order_label("text-only", 1), 0.5, 1.5).assign(p_holm=0.001)
    assert is_data_order_label(null["recipe"].iloc[0]) and not is_data_order_label("text-only")
    assert gap_target(pd.concat([null, real], ignore_index=True))["recipe"] == "code25"
    assert gap_target(null) is None
