"""`codetransfer tasks export`: the items `codetransfer eval` scores, as JSONL and as
lm-evaluation-harness tasks that reproduce its log-probabilities and accuracy."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from codetransfer.cli import main


def test_jsonl_holds_the_items_eval_scores(tmp_path):
    from codetransfer.analysis.evaluate import make_items
    from codetransfer.tasks.export import export_tasks

    files = export_tasks(["counting", "code_state"], tmp_path, format="jsonl", n_items=12, seed=3, max_difficulty=1)
    assert sorted(f.name for f in files) == ["code_state.jsonl", "counting.jsonl"]
    want = make_items(["counting", "code_state"], 12, 3, max_difficulty=1)
    for task, items in want.items():
        rows = [json.loads(ln) for ln in (tmp_path / f"{task}.jsonl").read_text().splitlines()]
        assert [(r["index"], r["prompt"], tuple(r["candidates"]), r["label"], r["difficulty"]) for r in rows] == [
            (it.index, it.prompt, it.candidates, it.label, it.difficulty) for it in items
        ]
        assert all(r["candidates"][r["label"]] == r["answer"] for r in rows)
    assert not list(tmp_path.glob("*.yaml"))


def test_lm_eval_configs_name_their_data_and_group(tmp_path, capsys):
    assert main(["tasks", "export", str(tmp_path), "--tasks", "counting", "--n-items", "4"]) == 0
    assert "--include_path" in capsys.readouterr().out
    yaml = (tmp_path / "counting.yaml").read_text()
    assert "output_type: multiple_choice" in yaml and 'target_delimiter: ""' in yaml
    assert json.dumps(str((tmp_path / "counting.jsonl").resolve())) in yaml
    assert "  - codetransfer_counting" in (tmp_path / "codetransfer.yaml").read_text()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--format", "csv"], "--format: expected one of jsonl, lm-eval"),
        (["--tasks", "countin"], "did you mean 'counting'"),
        (["--n-items", "0"], "--n-items: expected a positive number"),
    ],
)
def test_bad_export_arguments_are_refused_before_writing(tmp_path, capsys, argv, message):
    out = tmp_path / "x"
    assert main(["tasks", "export", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm-eval is not installed (extra [lm-eval])")
def test_lm_eval_on_a_run_reproduces_codetransfer_eval(tmp_path):
    """Default lm-eval settings (no add_bos_token): the saved tokenizer adds the BOS training used."""
    from conftest import TINY, save_tiny_model
    from codetransfer.analysis.evaluate import make_items, score_items
    from codetransfer.tasks.export import export_tasks
    from codetransfer.trained.loading import load_bridge

    run = save_tiny_model(tmp_path / "run", dataclasses.replace(TINY, n_ctx=256))
    tasks = ["entity_tracking", "code_state"]
    export_tasks(tasks, tmp_path / "tasks", n_items=40, seed=0, max_difficulty=0)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "ds"),
    }
    subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "lm_eval"),
            "--model",
            "hf",
            "--model_args",
            f"pretrained={run},dtype=float32",
            "--include_path",
            str(tmp_path / "tasks"),
            "--tasks",
            "codetransfer",
            "--device",
            "cpu",
            "--output_path",
            str(tmp_path / "out"),
            "--log_samples",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    bridge, tok = load_bridge(run)
    items = make_items(tasks, 40, 0, max_difficulty=0)
    for task in tasks:
        ours = score_items(bridge, tok, items[task])
        (samples,) = (tmp_path / "out").rglob(f"samples_codetransfer_{task}_*.jsonl")
        rows = sorted((json.loads(ln) for ln in samples.read_text().splitlines()), key=lambda r: int(r["doc_id"]))
        theirs = np.array([[float(r[0]) for r in s["filtered_resps"]] for s in rows])
        assert np.abs(theirs - np.stack(ours.logprobs.to_numpy())).max() < 1e-4
        assert np.mean([float(s["acc"]) for s in rows]) == pytest.approx(ours.correct.mean(), abs=1e-12)
