"""The induction warm-up (trained/warmup.py): its rows and the trainer's use of it. The circuit it grows (and that
its scrambled twin does not) is asserted on the planted grids: tests/test_planted.py and test_planted_aligned.py."""

from __future__ import annotations

import dataclasses
import textwrap
import json

import pytest
import torch

from codetransfer.errors import CodetransferError
from codetransfer.trained import load_grid, train_grid
from codetransfer.trained.config import _validate
from codetransfer.trained.presets import preset
from codetransfer.trained.train import train_run
from codetransfer.trained.warmup import N_SPECIAL, periodic_rows
from gridfiles import MINI_GRID, write_grid


def test_periodic_rows_copy_targets_are_predictable_by_copying():
    x, mask = periodic_rows(torch.arange(N_SPECIAL, 100), 64, torch.Generator().manual_seed(0))
    assert x.shape == mask.shape == (64, 48)
    assert (x[:, 0] == 0).all() and (x[:, 1:] >= N_SPECIAL).all() and (x < 100).all()
    assert mask.sum(1).min() >= 4 - 1  # every row has copy targets (a 4-token span placed last: 3)
    for row, m in zip(x.tolist(), mask.tolist()):
        for t in (t for t in range(48) if m[t]):
            # the token before t occurred earlier, followed by the token at t: an induction head answers it
            assert any(row[p - 1] == row[t - 1] and row[p] == row[t] for p in range(1, t - 1))


def _warm_grid(grid_file):
    grid = load_grid(grid_file)
    return dataclasses.replace(
        grid,
        model=dataclasses.replace(grid.model, arch="llama", n_ctx=64),
        train=dataclasses.replace(grid.train, induction_warmup=20),
    )


def test_trainer_warms_up_fresh_runs_once_per_seed_and_resumes_bit_identically(tmp_path):
    from test_training import assert_same_weights

    grid = _warm_grid(write_grid(tmp_path))
    out = tmp_path / "out"
    train_grid(load_grid(write_grid(tmp_path)), out, only=["text-only"], progress=False, log=lambda *a: None)
    data = out / "data"
    a, b, c = (tmp_path / n for n in ("a", "b", "c"))
    for d in (a, b, c):
        d.mkdir()
    train_run(grid, grid.recipe("text-only"), 0, data, a, progress=False)
    cached = list((data / "warmup").glob("warmup-*.safetensors"))
    assert len(cached) == 1
    lines = [json.loads(ln) for ln in (a / "metrics.jsonl").read_text().splitlines()]
    warm = [r for r in lines if "warmup_step" in r]
    assert [r["warmup_step"] for r in warm] == [20] and warm[0]["copy_loss"] > 0
    # a second run of the seed loads the cached weights; interrupted at step 7 and resumed, it ends equal
    train_run(grid, grid.recipe("text-only"), 0, data, b, stop_after_steps=7, progress=False)
    train_run(grid, grid.recipe("text-only"), 0, data, b, progress=False)
    assert_same_weights(a, b)
    assert [
        r.get("cached") for r in map(json.loads, (b / "metrics.jsonl").read_text().splitlines()) if "warmup_step" in r
    ] == [True]
    # the warm-up changes the weights: without it the same run ends elsewhere
    cold = dataclasses.replace(grid, train=dataclasses.replace(grid.train, induction_warmup=0))
    train_run(cold, cold.recipe("text-only"), 0, data, c, progress=False)
    from safetensors.torch import load_file

    wa, wc = load_file(a / "model.safetensors"), load_file(c / "model.safetensors")
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_damaged_warmup_cache_is_refused(tmp_path):
    grid = _warm_grid(write_grid(tmp_path))
    out = tmp_path / "out"
    train_grid(load_grid(write_grid(tmp_path)), out, only=["text-only"], progress=False, log=lambda *a: None)
    run = tmp_path / "run"
    run.mkdir()
    train_run(grid, grid.recipe("text-only"), 0, out / "data", run, stop_after_steps=1, progress=False)
    (cache,) = (out / "data" / "warmup").glob("warmup-*.safetensors")
    cache.write_bytes(cache.read_bytes()[:100])
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(CodetransferError, match="warm-up cache .* is unreadable .*; delete it and rerun"):
        train_run(grid, grid.recipe("text-only"), 0, out / "data", again, progress=False)
    assert not (again / "model.safetensors").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(induction_warmup=-1), r"train.induction_warmup: expected a value >= 0, got -1"),
        (dict(induction_warmup=10, induction_warmup_lr=0.0), r"induction_warmup_lr: expected a value in \(0, 10\]"),
    ],
)
def test_bad_warmup_settings_are_refused(tmp_path, change, message):
    grid = load_grid(write_grid(tmp_path))
    with pytest.raises(CodetransferError, match=message):
        _validate(dataclasses.replace(grid, train=dataclasses.replace(grid.train, **change)), "grid")


def test_warmup_longer_than_the_context_is_refused(tmp_path):
    grid = load_grid(write_grid(tmp_path))  # n_ctx 32
    with pytest.raises(CodetransferError, match="rows are 48 tokens long, longer than model.n_ctx=32"):
        _validate(dataclasses.replace(grid, train=dataclasses.replace(grid.train, induction_warmup=10)), "grid")


# ---------------------------------------------------------------------------------------------------------------
# a recipe's own warm-up (Recipe.warmup): the planted-transfer control's arms


def test_scrambled_rows_hold_the_same_tokens_and_loss_positions_and_nothing_to_copy():
    from codetransfer.trained.warmup import scrambled_rows

    ids = torch.arange(N_SPECIAL, 500)
    px, pmask = periodic_rows(ids, 64, torch.Generator().manual_seed(3))
    sx, smask = scrambled_rows(ids, 64, torch.Generator().manual_seed(3))
    assert torch.equal(pmask, smask) and (sx[:, 0] == 0).all()
    assert torch.equal(px.sort(1).values, sx.sort(1).values)  # the same tokens, as often, per row

    def repeated_4grams(x):
        n = 0
        for row in x.tolist():
            grams = [tuple(row[i : i + 4]) for i in range(1, len(row) - 3)]
            n += len(grams) - len(set(grams))
        return n

    assert repeated_4grams(px) > 20 * 64 and repeated_4grams(sx) < 64  # a span to copy in every row; none left


def _recipe(name: str, warmup: str, main_mixture: str = "gcide = 1.0", main_warmup: str = "none") -> str:
    """A two-phase recipe (a shared-looking ``base``, then ``main``) with its own warm-up and ``main``'s
    (``Phase.warmup``), as grid-file text."""
    return textwrap.dedent(
        f"""
        [[recipes]]
        name = "{name}"
        warmup = "{warmup}"
        [[recipes.phases]]
        name = "base"
        mixture = {{ gcide = 1.0 }}
        tokens = 2048
        [[recipes.phases]]
        name = "main"
        mixture = {{ {main_mixture} }}
        tokens = 2048
        warmup = "{main_warmup}"
        """
    )


def _grid_with(tmp_path, name: str, recipes: str):
    """The test grid file's model and sources as a Llama with n_ctx 64 and a 5-step induction warm-up, and
    ``recipes`` (grid-file text)."""
    text = write_grid(tmp_path).read_text()
    text = text[: text.index("[[recipes]]")].replace("n_ctx = 32", "n_ctx = 64")
    text = text.replace("[model]", '[model]\narch = "llama"').replace("[train]", "[train]\ninduction_warmup = 5")
    path = tmp_path / name
    path.write_text(text + recipes)
    return load_grid(path)


WARMUPS = "".join(
    _recipe(name, warmup, mixture)
    for name, warmup, mixture in (
        ("none", "none", "gcide = 1.0"),
        ("none-b", "none", "gcide = 1.0, stdlib = 1.0"),
        ("copy", "periodic", "gcide = 1.0"),
        ("scrambled", "scrambled", "gcide = 1.0"),
    )
)


def _warmup_grid(tmp_path):
    return _grid_with(tmp_path, "warmups.toml", WARMUPS)


def test_each_recipe_starts_from_its_own_warmup_and_shares_a_base_only_with_the_same_one(tmp_path, capfd):
    from codetransfer.trained.config import prefix_key, warmup_rows
    from codetransfer.trained.runs import find_runs

    grid = _warmup_grid(tmp_path)
    assert [warmup_rows(grid, r) for r in grid.recipes] == [None, None, "periodic", "scrambled"]
    out = tmp_path / "out"
    train_grid(grid, out, progress=False, log=lambda *a: None)
    assert len(list((out / "data" / "warmup").glob("warmup-*.safetensors"))) == 2  # periodic and scrambled
    # a few steps plant nothing: said once for the periodic rows, never for the scrambled ones (nothing to plant)
    assert capfd.readouterr().err.count("warning: s0: the induction warm-up did not plant") == 1
    runs = {r.recipe: r for r in find_runs(out)}
    for name, rows in (("none", None), ("copy", "periodic"), ("scrambled", "scrambled")):
        lines = [json.loads(ln) for ln in (runs[name].path / "metrics.jsonl").read_text().splitlines()]
        assert any("warmup_step" in ln for ln in lines) == (rows is not None), name
    # the two runs without a warm-up share their base; the warmed-up runs start elsewhere and share nothing
    assert runs["none-b"].record["branched_from"] or runs["none"].record["branched_from"]
    assert not runs["copy"].record.get("branched_from") and not runs["scrambled"].record.get("branched_from")
    keys = {r.name: prefix_key(grid, r, 1, 0) for r in grid.recipes}
    assert keys["none"] == keys["none-b"] and len({keys["none"], keys["copy"], keys["scrambled"]}) == 3
    from safetensors.torch import load_file

    w = {n: load_file(runs[n].path / "model.safetensors") for n in ("none", "copy", "scrambled")}
    assert any(not torch.equal(w["copy"][k], w["scrambled"][k]) for k in w["copy"])
    assert any(not torch.equal(w["none"][k], w["scrambled"][k]) for k in w["none"])


def test_the_default_warmup_keeps_every_presets_keys_and_hashes():
    """Grids that do not set Recipe.warmup are trained, shared and recognised as they always were: their
    prefix keys and recipe hashes are those of the formulas before the field existed."""
    from codetransfer import artifacts
    from codetransfer.trained.config import prefix_key
    from codetransfer.trained.presets import PRESETS
    from codetransfer.trained.runs import recipe_hash

    for name in ("tiny", "tiny-full", "small", "gpu"):
        grid = preset(name)
        for r in grid.recipes:
            old = dataclasses.asdict(r)
            old.pop("compare_with"), old.pop("warmup")
            for p in old["phases"]:
                p.pop("warmup")  # Phase.warmup, at its default
            assert recipe_hash(r) == artifacts.key(old), (name, r.name)
            phases = [{k: v for k, v in dataclasses.asdict(p).items() if k != "warmup"} for p in r.phases[:1]]
            assert prefix_key(grid, r, 1, 0) == artifacts.key({"grid": grid.fingerprint(), "seed": 0, "phases": phases})
    assert "control" in PRESETS


def test_a_warmup_that_plants_nothing_is_named_with_its_loss_and_the_fix():
    from codetransfer.trained.warmup import not_planted

    assert not_planted(0.3, 4096, 2000, 5e-4) is None and not_planted(None, 4096, 2000, 5e-4) is None
    msg = not_planted(8.31, 4096, 1000, 2e-3)
    assert "copy loss 8.31 nats after 1,000 steps at lr 0.002 (uniform guessing 8.32" in msg
    assert "lower train.induction_warmup_lr" in msg


def test_a_recipe_warmup_without_warmup_steps_is_refused(tmp_path):
    grid = _warmup_grid(tmp_path)
    with pytest.raises(CodetransferError, match=r"warmup: 'periodic' takes train.induction_warmup steps, which is 0"):
        _validate(dataclasses.replace(grid, train=dataclasses.replace(grid.train, induction_warmup=0)), "grid")


# ---------------------------------------------------------------------------------------------------------------
# a phase's own warm-up (Phase.warmup): arms branched from one base that differ by the warm-up's rows


def _branched_grid(tmp_path):
    arms = _recipe("text-only", "none") + _recipe("scrambled", "none", main_warmup="scrambled")
    return _grid_with(tmp_path, "branched.toml", arms + _recipe("copy", "none", main_warmup="periodic"))


def test_arms_branch_from_one_base_and_differ_by_their_phase_warmup(tmp_path, capfd):
    from safetensors.torch import load_file

    from codetransfer.analysis.verdict import Planted, planted_answer
    from codetransfer.trained.config import all_warmup_rows, prefix_key
    from codetransfer.trained.runs import find_runs

    grid = _branched_grid(tmp_path)
    assert [all_warmup_rows(grid, r) for r in grid.recipes] == [(), ("scrambled",), ("periodic",)]
    assert planted_answer(grid) == Planted("copy", ("text-only", "scrambled"), ("scrambled", "text-only"))
    assert len({prefix_key(grid, r, 1, 0) for r in grid.recipes}) == 1  # one base
    assert len({prefix_key(grid, r, 2, 0) for r in grid.recipes}) == 3
    out = tmp_path / "out"
    train_grid(grid, out, progress=False, log=lambda *a: None)
    runs = {r.recipe: r for r in find_runs(out)}
    assert sum(bool(r.record.get("branched_from")) for r in runs.values()) == 2
    err = capfd.readouterr().err
    assert err.count("the induction warm-up did not plant") == 1 and "s0 (periodic) in phase 'main'" in err
    # no warm-up at any run's start; the two phase warm-ups after the shared base, cached by that base
    assert len(list((out / "data" / "warmup").glob("warmup-*.safetensors"))) == 2
    base_steps = runs["copy"].record["tokens_by_phase"][0]["steps"]
    for name, rows in (("text-only", None), ("scrambled", "scrambled"), ("copy", "periodic")):
        lines = [json.loads(ln) for ln in (runs[name].path / "metrics.jsonl").read_text().splitlines()]
        warm = [r for r in lines if "warmup_step" in r]
        if rows is None:
            assert not warm
        else:  # logged once, at the main phase's start
            assert [(r["phase"], r["step"], r["warmup_step"]) for r in warm] == [("main", base_steps, 5)], name
    w = {n: load_file(runs[n].path / "model.safetensors") for n in runs}
    for a, b in (("copy", "scrambled"), ("copy", "text-only"), ("scrambled", "text-only")):
        assert any(not torch.equal(w[a][k], w[b][k]) for k in w[a]), (a, b)


def test_a_run_stopped_at_or_after_its_phase_warmup_resumes_bit_identically(tmp_path):
    from test_training import assert_same_weights

    grid = _branched_grid(tmp_path)
    out = tmp_path / "out"
    train_grid(grid, out, only=["text-only"], progress=False, log=lambda *a: None)
    copy = grid.recipe("copy")
    whole = tmp_path / "whole"
    whole.mkdir()
    train_run(grid, copy, 0, out / "data", whole, progress=False)
    lines = [json.loads(ln) for ln in (whole / "metrics.jsonl").read_text().splitlines()]
    (start,) = [r["step"] for r in lines if "warmup_step" in r]
    for stop in (start, start + 1):  # before the warm-up (redone on resume) and after it (not redone)
        run = tmp_path / f"stop{stop}"
        run.mkdir()
        train_run(grid, copy, 0, out / "data", run, stop_after_steps=stop, progress=False)
        train_run(grid, copy, 0, out / "data", run, progress=False)
        assert_same_weights(whole, run)
        warm = [ln for ln in (run / "metrics.jsonl").read_text().splitlines() if "warmup_step" in ln]
        assert len(warm) == 1, warm


def test_a_data_order_twin_loads_its_phase_warmup_from_the_shared_base_s_cache_bit_identically(tmp_path):
    """The phase warm-up after a shared base depends on that base and the seed only, so a data-order twin, which
    branches from the same base, loads the weights its own-order run computed (logged as cached): the same weights
    as computing them again."""
    from test_training import assert_same_weights

    from codetransfer.trained.config import prefix_key

    grid = dataclasses.replace(_branched_grid(tmp_path), data_seeds=(1,))
    out = tmp_path / "out"
    train_grid(grid, out, only=["text-only", "scrambled"], progress=False, log=lambda *a: None)
    assert len(list((out / "data" / "warmup").glob("warmup-*.safetensors"))) == 1  # the scrambled rows, once
    warm = {}
    for name in ("scrambled-s0", "scrambled-s0-d1"):
        lines = (out / "runs" / name / "metrics.jsonl").read_text().splitlines()
        warm[name] = [json.loads(ln) for ln in lines if "warmup_step" in ln]
    assert warm["scrambled-s0"][0]["copy_loss"] > 0 and "cached" not in warm["scrambled-s0"][0]
    assert [r.get("cached") for r in warm["scrambled-s0-d1"]] == [True]
    scrambled = grid.recipe("scrambled")
    again = tmp_path / "again"  # the twin from the same base, its warm-up computed (no cache to read)
    again.mkdir()
    base = out / "branches" / prefix_key(grid, scrambled, 1, 0)
    train_run(grid, scrambled, 0, out / "data", again, start_from=base, start_phase=1, data_seed=1, data_from=1,
              progress=False)  # fmt: skip
    assert_same_weights(out / "runs" / "scrambled-s0-d1", again)


def test_a_phase_warmup_without_warmup_steps_is_refused_and_the_default_is_not_written(tmp_path):
    from codetransfer.trained.gridfile import grid_to_toml

    grid = _branched_grid(tmp_path)
    with pytest.raises(
        CodetransferError,
        match=r"\('scrambled'\).phases\[1\] \('main'\).warmup: 'scrambled' takes train.induction_warmup steps, which is 0",
    ):
        _validate(dataclasses.replace(grid, train=dataclasses.replace(grid.train, induction_warmup=0)), "grid")
    text = grid_to_toml(grid)
    assert text.count('warmup = "periodic"') == 1 and text.count('warmup = "scrambled"') == 1
    assert 'warmup = "none"' in text and text.count('warmup = "none"') == 3  # the recipes' own, not the phases'


def test_the_cache_keeps_the_warmups_copy_loss_and_an_older_file_loads_without_it(tmp_path):
    from safetensors.torch import load_file, save_file

    from codetransfer.trained.config import ModelConfig
    from codetransfer.trained.model import build_model
    from codetransfer.trained.warmup import warmed_up_state

    cfg = ModelConfig(arch="llama", n_layers=1, d_model=32, n_heads=2, d_mlp=64, n_ctx=64)
    key, args = {"model": "test"}, (60, 3, 2e-3, 0)  # vocabulary, steps, lr, seed

    def warm(**kw):
        model = build_model(cfg, vocab_size=60, seed=0)
        return warmed_up_state(model, tmp_path, key, *args, **kw), model

    (computed, loss), first = warm()
    assert computed and loss > 0
    (computed, cached), second = warm()
    assert not computed and cached == loss  # as the computing run logged it, exactly
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    (path,) = tmp_path.glob("warmup-*.safetensors")
    save_file(load_file(path), path, metadata={"ident": "an older cache"})  # written before the loss was stored
    (computed, cached), _ = warm()
    assert not computed and cached is None


def test_a_required_warmup_that_plants_nothing_stops_the_grid_before_any_text_and_again_on_a_rerun(tmp_path, capsys):
    """``train.induction_warmup_required`` (the ``small`` and ``gpu`` presets): 20 steps plant nothing, so the grid
    stops after the warm-up with one line naming the loss and the fix; the setting changes no weights, so the same
    folder then trains on without it."""
    from codetransfer import cli

    text = MINI_GRID.replace("n_ctx = 32", 'n_ctx = 64\narch = "llama"')
    required = text.replace("[train]\n", "[train]\ninduction_warmup = 20\ninduction_warmup_required = true\n")
    grid, out = write_grid(tmp_path, required), tmp_path / "out"
    argv = ["train", str(grid), "--out", str(out), "--only", "text-only", "--quiet", "--jobs", "1"]
    cached = []
    for _ in range(2):  # computed, then loaded from the cache
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: s0: the induction warm-up did not plant the copying circuit: copy loss ")
        assert "induction_warmup_required" in err and len(err.splitlines()) == 1 and "warning" not in err
        assert list(out.rglob("model.safetensors")) == [] and not (out / "runs" / "text-only-s0" / "state").exists()
        warm = [json.loads(ln) for ln in (out / "runs" / "text-only-s0" / "metrics.jsonl").read_text().splitlines()]
        assert [r["warmup_step"] for r in warm] == [20] and warm[0]["copy_loss"] >= 1.0  # where `runs` reads it
        cached.append({p: p.stat().st_mtime_ns for p in (out / "data" / "warmup").glob("*.safetensors")})
    assert len(cached[0]) == 1 and cached[1] == cached[0]  # the rerun stopped on the cached warm-up
    write_grid(tmp_path, required.replace("induction_warmup_required = true", "induction_warmup_required = false"))
    assert cli.main(argv) == 0
    assert "warning" not in capsys.readouterr().err  # the cache's computing run warned (or stopped) already
    assert (out / "runs" / "text-only-s0" / "model.safetensors").is_file()
