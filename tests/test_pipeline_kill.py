"""Issue #7: killing ``codetransfer run`` at a random moment and re-running it completes with
identical tables.

The real command runs in a subprocess on a very small grid (``--settings`` keeps every stage
small). An uninterrupted reference run gives each stage's duration (from the ``== stage`` lines it
prints). A second output folder is then SIGKILLed twice at seeded random moments: once while the
train stage trains the models, and once, on the re-run, inside a later stage picked at random (among
those that last a second or more, so that a time-based kill can aim at them); a third invocation
runs to completion. Every parquet table under ``results/`` (merged tables and the units' parts),
``summary.csv`` and the report's headline must equal the reference exactly.
``CODETRANSFER_KILL_SEED=n`` picks other kill moments (to hunt for restart bugs by hand).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from gridfiles import synthetic_grid

from codetransfer.cli import main as cli
from codetransfer.pipeline import JobSettings, load_settings

GRID = synthetic_grid(
    "kill",
    """
[train]
batch_size = 4
eval_every = 8
eval_tokens = 1024
save_every = 2
[[recipes]]
name = "text-only"
[[recipes.phases]]
name = "main"
mixture = { gcide = 1, narratives = 1 }
tokens = 24576
[[recipes]]
name = "balanced"
[[recipes.phases]]
name = "main"
mixture = { gcide = 1, narratives = 1, programs = 1 }
tokens = 24576
""",
)

SETTINGS = """
eval_items = 6
probe_items = 40
probe_max_difficulty = 1
patch_items = 4
patch_sites = "resid_pre,attn,head"
attention_items = 4
"""

LATER = ("eval", "probe", "patch", "attention", "circuit", "report")
DATA_READY = "data ready in "  # printed by the train stage when tokenizer and token arrays are ready


class Job:
    """``codetransfer run`` in a subprocess (its own process group); its output lines with times."""

    def __init__(self, root: Path, out: str):
        exe = Path(sys.executable).with_name("codetransfer")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "codetransfer.cli"]
        cmd += ["run", str(root / "grid.toml"), "--out", str(root / out), "--settings", str(root / "settings.toml")]
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "MPLBACKEND": "Agg",
        }
        self.lines: list[tuple[float, str]] = []
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append((time.monotonic() - self.t0, line.rstrip("\n")))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, text: str, timeout: float = 300) -> float:
        """Block until an output line starts with ``text``; returns its time."""
        with self.changed:
            ok = self.changed.wait_for(
                lambda: any(ln.startswith(text) for _, ln in self.lines) or self.proc.poll() is not None,
                timeout=timeout,
            )
            hit = [t for t, ln in self.lines if ln.startswith(text)]
        assert hit, f"'{text}' not printed (ok={ok}); output:\n{self.output()}"
        return hit[0]

    def stage_now(self) -> str:
        """The stage the job is in: the last '== stage' line not yet followed by its 'done' line."""
        with self.changed:
            marks = [ln[3:] for _, ln in self.lines if ln.startswith("== ")]
        return marks[-1] if marks and ": done" not in marks[-1] else "between stages"

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        self.reader.join(timeout=60)

    def finish(self, timeout: float = 300) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=60)
        return rc

    def output(self) -> str:
        return "\n".join(ln for _, ln in self.lines)

    def stage_seconds(self) -> dict[str, float]:
        """Seconds of each stage; 'models' is the train stage after the data is ready (the training itself)."""
        start = {ln[3:]: t for t, ln in self.lines if ln.startswith("== ") and ": done" not in ln}
        end = {ln[3:].split(":")[0]: t for t, ln in self.lines if ln.startswith("== ") and ": done" in ln}
        start["models"], end["models"] = self.wait_for(DATA_READY), end.get("train", 0.0)
        return {s: end[s] - start[s] for s in end}


def kill_inside(job: Job, marker: str, seconds: float, rng: random.Random) -> tuple[float, str]:
    """SIGKILL ``job`` a random fraction of ``seconds`` after it printed the line starting with ``marker``."""
    started = job.wait_for(marker)
    delay = rng.uniform(0.05, 0.6) * seconds  # margin: the killed job may run faster than the reference did
    time.sleep(max(0.0, started + delay - (time.monotonic() - job.t0)))
    alive, where = job.proc.poll() is None, job.stage_now()
    job.kill()
    assert alive, f"the job ended before the kill {delay:.1f}s after {marker!r}; output:\n{job.output()}"
    return delay, where


def result_files(out: Path) -> dict[str, Path]:
    files = sorted(p for p in (out / "results").rglob("*") if p.suffix in (".parquet", ".csv"))
    return {str(p.relative_to(out)): p for p in files}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    (root / "grid.toml").write_text(GRID)
    (root / "settings.toml").write_text(SETTINGS)
    return root


def test_killed_twice_at_random_moments_then_rerun_gives_identical_tables(root):
    rng = random.Random(int(os.environ.get("CODETRANSFER_KILL_SEED", "0")))
    reference = Job(root, "reference")
    assert reference.finish() == 0, reference.output()
    seconds = reference.stage_seconds()
    assert set(seconds) == {"train", "models", *LATER}, reference.output()

    first = Job(root, "killed")  # killed while it trains the models
    delay, where = kill_inside(first, DATA_READY, seconds["models"], rng)
    assert where == "train", f"first kill {delay:.1f}s after the data was ready landed in {where}"
    print(f"killed {delay:.2f}s into training the models ({seconds['models']:.1f}s in the reference run)")
    assert not (root / "killed" / "report").exists()

    later = rng.choice([s for s in LATER if seconds[s] >= 1.0] or ["report"])  # stages long enough to aim at
    second = Job(root, "killed")  # the re-run, killed inside a later stage
    delay, where = kill_inside(second, f"== {later}", seconds[later], rng)
    assert where != "train", f"second kill {delay:.1f}s after '== {later}' landed in {where}"
    print(f"killed {delay:.2f}s into {later} ({seconds[later]:.1f}s in the reference run), in stage {where}")

    last = Job(root, "killed")
    assert last.finish() == 0, last.output()
    assert (
        "run text-only-s0: complete, skipped" in last.output() and "run balanced-s0: complete, skipped" in last.output()
    )

    ref, got = result_files(root / "reference"), result_files(root / "killed")
    assert set(got) == set(ref) and len(ref) > 10
    for name, path in ref.items():
        read = pd.read_parquet if path.suffix == ".parquet" else pd.read_csv
        pd.testing.assert_frame_equal(read(got[name]), read(path), check_exact=True, obj=name)
    headline = [json.loads((root / d / "report" / "headline.json").read_text()) for d in ("reference", "killed")]
    assert headline[0] == headline[1]


def test_settings_file_sets_job_settings_and_baseline_flag_wins(tmp_path):
    (tmp_path / "s.toml").write_text('eval_items = 7\npatch_sites = "resid_pre"\nbaseline = "balanced"\n')
    (tmp_path / "s.json").write_text('{"probe_items": 9, "seed": 3}')
    assert load_settings(tmp_path / "s.toml") == JobSettings(eval_items=7, patch_sites="resid_pre", baseline="balanced")
    assert load_settings(tmp_path / "s.toml", baseline="text-only").baseline == "text-only"
    assert load_settings(tmp_path / "s.json") == JobSettings(probe_items=9, seed=3)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "eval_item = 7\n",
            "--settings: unknown field 'eval_item' in {f} (did you mean 'eval_items'?); fields: baseline,",
        ),
        ('eval_items = "7"\n', "--settings: field 'eval_items' in {f} must be int, got '7'; e.g. eval_items = 600"),
        ("probe_tasks = 3\n", "--settings: field 'probe_tasks' in {f} must be str, got 3"),
        ("eval_items = \n", "--settings: {f} is not valid TOML"),
    ],
)
def test_run_command_refuses_bad_settings_file_and_writes_nothing(tmp_path, capsys, text, message):
    f = tmp_path / "settings.toml"
    f.write_text(text)
    out = tmp_path / "out"
    assert cli(["run", "tiny", "--out", str(out), "--settings", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(f=f)) and err.count("\n") == 1
    assert not out.exists()


def test_run_command_refuses_missing_settings_file(tmp_path, capsys):
    assert cli(["run", "tiny", "--out", str(tmp_path / "out"), "--settings", str(tmp_path / "nope.toml")]) == 2
    assert "--settings: file" in capsys.readouterr().err and not (tmp_path / "out").exists()
