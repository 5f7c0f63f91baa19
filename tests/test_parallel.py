"""Parallel grid training (trained/parallel.py): any --jobs gives the same runs, bit for bit; a SIGKILL of the
parent leaves no worker behind and the same command then ends identical; progress lines per finished run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from codetransfer.cli import main as cli
from codetransfer.errors import CodetransferError
from codetransfer.trained import load_grid, runs_table, train_grid
from codetransfer.trained.parallel import plan_tasks
from codetransfer.trained.runs import _shared_prefixes
from gridfiles import MINI_GRID, write_grid

# the mini grid as a Llama with a 20-step induction warm-up and two seeds: 6 runs, two of them branching
GRID = (
    MINI_GRID.replace("seeds = [0]", "seeds = [0, 1]")
    .replace("n_ctx = 32", 'n_ctx = 64\narch = "llama"')
    .replace("save_every = 5", "save_every = 5\ninduction_warmup = 20\nsnapshot_every = 10")
)
TIMES = {"tokens_per_s", "train_seconds"}
CLI = [sys.executable, "-m", "codetransfer.cli"]


def with_data_of(src: Path, dest: Path) -> Path:
    """A new grid folder holding ``src``'s prepared data (its manifest records the preparation time, which the
    run records hash)."""
    dest.mkdir()
    shutil.copytree(src / "data", dest / "data", ignore=shutil.ignore_patterns("warmup"))
    shutil.copy2(src / "grid.json", dest / "grid.json")
    return dest


def train(root: Path, name: str, jobs: int, data_from: Path | None = None) -> tuple[Path, list[str]]:
    if data_from is not None:
        with_data_of(data_from, root / name)
    lines: list[str] = []
    train_grid(
        load_grid(root / "grid.toml"),
        root / name,
        jobs=jobs,
        progress=False,
        log=lambda *a: lines.append(" ".join(map(str, a))),
    )
    return root / name, lines


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    write_grid(root, GRID)
    return root


@pytest.fixture(scope="module")
def sequential(root):
    return train(root, "one", jobs=1)


@pytest.fixture(scope="module")
def parallel(root, sequential):
    return train(root, "two", jobs=2, data_from=sequential[0])


def drop_times(value):
    if isinstance(value, dict):
        return {k: drop_times(v) for k, v in value.items() if k not in TIMES}
    if isinstance(value, list):
        return [drop_times(v) for v in value]
    return value


def assert_same_outputs(a: Path, b: Path) -> None:
    """Every safetensors tensor, metrics line and run record (times aside) of two grid folders are equal."""
    tensors = sorted(p.relative_to(a) for p in a.rglob("*.safetensors"))
    assert tensors == sorted(p.relative_to(b) for p in b.rglob("*.safetensors"))
    assert len(tensors) > 10
    for rel in tensors:
        ta, tb = load_file(a / rel), load_file(b / rel)
        assert ta.keys() == tb.keys(), rel
        for k in ta:
            assert ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape and (ta[k] == tb[k]).all(), (rel, k)
    for pattern in ("runs/*/metrics.jsonl", "runs/*/codetransfer.json", "runs/*/state/*/cursor.json"):
        files = sorted(p.relative_to(a) for p in a.glob(pattern))
        assert files == sorted(p.relative_to(b) for p in b.glob(pattern)) and files, pattern
        for rel in files:
            assert drop_times(_read(a / rel)) == drop_times(_read(b / rel)), rel


def _read(path: Path):
    if path.suffix == ".jsonl":
        return [json.loads(ln) for ln in path.read_text().splitlines()]
    return json.loads(path.read_text())


def test_two_jobs_give_bit_identical_runs(sequential, parallel):
    (one, _), (two, _) = sequential, parallel
    assert_same_outputs(one, two)
    records = {p.parent.name: json.loads(p.read_text()) for p in two.glob("runs/*/codetransfer.json")}
    assert sorted(records) == [f"{r}-s{s}" for r in ("balanced-code", "balanced-text", "text-only") for s in (0, 1)]
    assert all(r["status"] == "complete" for r in records.values())
    # balanced->code branched from the balanced phase that balanced->text trained (per seed)
    assert records["balanced-code-s1"]["branched_from"]["phases"] == ["balanced"]
    assert records["balanced-text-s1"]["branched_from"] is None
    assert len(list((two / "data" / "warmup").glob("*.safetensors"))) == 2  # one warm-up per seed
    warm = {
        name: [
            json.loads(ln)
            for ln in (two / "runs" / name / "metrics.jsonl").read_text().splitlines()
            if "warmup_step" in ln
        ]
        for name in records
    }
    # the first fresh run of a seed holds the warm-up's copy loss; the other fresh one loaded it from the cache
    assert warm["text-only-s0"][0]["copy_loss"] > 0 and warm["balanced-text-s0"][0].get("cached") is True
    assert warm["balanced-code-s0"] == []  # branched: started from the shared state, not from scratch


def test_runs_show_the_warmup_each_run_went_through_and_name_those_it_did_not_plant(parallel, capsys):
    two, _ = parallel
    table = runs_table(two).set_index("run")
    assert set(table["warmup"]) == {"periodic"}
    for s in (0, 1):
        (computed,) = [
            r["copy_loss"]
            for name in (f"text-only-s{s}", f"balanced-text-s{s}")
            for r in map(json.loads, (two / "runs" / name / "metrics.jsonl").read_text().splitlines())
            if "warmup_step" in r and not r.get("cached")
        ]
        # the run that computed the seed's warm-up, the one that loaded it, the one branched after it: one loss
        loss = table.loc[[f"text-only-s{s}", f"balanced-text-s{s}", f"balanced-code-s{s}"], "warmup_copy_loss"]
        assert (loss == computed).all() and computed > 1  # 20 steps do not plant it
    assert cli(["runs", str(two)]) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if "did not plant" in ln]
    assert all(name in line for name in table.index) and "raise train.induction_warmup" in line


def test_progress_lines_name_each_run_with_its_tokens(parallel):
    _, lines = parallel
    per_run = {ln.split(":")[0][4:]: ln for ln in lines if ln.startswith("run ") and "tokens/s" in ln}
    # 10,240 tokens at 8 x 64 per step = 20 steps; a branched run trains its last phase only (10 steps)
    expected = {"text-only": 20, "balanced-text": 20, "balanced-code": 10}
    assert sorted(per_run) == sorted(f"{r}-s{s}" for r in expected for s in (0, 1))
    for name, ln in per_run.items():
        assert f": {expected[name[:-3]] * 8 * 64:,} tokens in " in ln, ln
    overall = [ln for ln in lines if ln.startswith("grid: ")]
    assert len(overall) == 6 and overall[-1].startswith("grid: 6/6 runs, 51,200/51,200 tokens, ")
    assert "ETA" in overall[0] and overall[-1].endswith("done")
    assert sum("induction warm-up s" in ln and "computed" in ln for ln in lines) == 2


def test_plan_orders_branches_and_warmups(root, tmp_path):
    grid = load_grid(root / "grid.toml")
    tasks = plan_tasks(grid, list(grid.recipes), grid.seeds, tmp_path, _shared_prefixes(grid))
    names = [(t.kind, t.recipe, t.seed) for t in tasks]
    assert names[:4] == [
        ("warmup", "text-only", 0),
        ("run", "text-only", 0),
        ("run", "balanced->text", 0),
        ("run", "balanced->code", 0),
    ]
    assert tasks[1].after == (0,) and tasks[2].after == (0,)
    assert tasks[3].after == (2,)  # waits for the run that trains the shared phase, not for the warm-up
    assert [t.after for t in tasks[4:]] == [(), (4,), (4,), (6,)]
    # a complete grid plans nothing to train
    done = plan_tasks(grid, list(grid.recipes), grid.seeds, root / "one", _shared_prefixes(grid))
    assert [t.kind for t in done] == ["run"] * 6 and all(t.tokens == 0 and t.after == () for t in done)


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkill_of_the_parent_kills_the_workers_and_a_rerun_ends_identical(root, sequential):
    out = with_data_of(sequential[0], root / "killed")
    cmd = [*CLI, "train", str(root / "grid.toml"), "--out", str(out), "--jobs", "2", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # killed while seed 1's first run trains (which worker runs what before then depends on timing; seed 1's
    # last run, balanced->code, branches after balanced->text and cannot be complete by then)
    state = out / "runs" / "text-only-s1" / "state" / "LATEST"
    deadline, workers = time.time() + 180, []
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and state.read_text() >= "step-00000005":
            workers = children(proc.pid)
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert workers, "the parallel training did not get far enough"
    t0 = time.time()
    while any(alive(w) for w in workers) and time.time() < t0 + 10:
        time.sleep(0.05)
    assert not any(alive(w) for w in workers), "workers outlived the killed parent"
    assert not (out / "runs" / "balanced-code-s1" / "model.safetensors").exists(), "killed too late"
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_outputs(sequential[0], out)


def test_bad_jobs_refused_and_nothing_written(root, tmp_path, capsys):
    with pytest.raises(CodetransferError, match=r"--jobs: expected a number of worker processes >= 1, got 0"):
        train_grid(load_grid(root / "grid.toml"), tmp_path / "a", jobs=0, log=lambda *a: None)
    assert cli(["train", str(root / "grid.toml"), "--out", str(tmp_path / "b"), "--jobs", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --jobs: expected") and err.count("\n") == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
