"""``codetransfer run --models FILE``: the main job's analysis stages and report over checkpoints codetransfer
did not train (tiny random GPT-2s in two groups x two seeds, and a Llama whose shape admits no cross-model
pair), through the command line; and its refusals, each one line with nothing written."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from codetransfer.cli import main
from test_modelset import _save

SETTINGS = """
eval_items = 8
eval_max_difficulty = 0
probe_items = 40
probe_max_difficulty = 0
probe_sites = ["resid_post"]
patch_task = "variable_binding"
patch_items = 4
patch_sites = ["resid_pre", "attn_out"]
attention_items = 4
"""
NAME = "pairs <zz> & co"
CODE = "+code<zz>"
TABLES = ("eval", "comparison", "probes", "patching", "cross_model", "attention")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("modelset_job")
    entries = []
    for k, (group, seed) in enumerate((("base", 0), ("base", 1), (CODE, 0), (CODE, 1))):
        _save(root / f"gpt2-{k}", "gpt2", seed=10 + k)
        entries.append(f'[[model]]\npath = "gpt2-{k}"\ngroup = "{group}"\nseed = {seed}\n')
    _save(root / "llama", "llama")
    entries.append('[[model]]\npath = "llama"\ngroup = "llama"\nseed = 0\nstep = 500\n')
    (root / "pairs.toml").write_text(f'name = "{NAME}"\nbaseline = "base"\n' + "".join(entries))
    (root / "small.toml").write_text(SETTINGS)
    out = root / "out"
    rc = main(
        [
            "run",
            "--models",
            str(root / "pairs.toml"),
            "--out",
            str(out),
            "--settings",
            str(root / "small.toml"),
            "--jobs",
            "1",
        ]
    )
    return root, out, rc


def test_model_set_job_writes_every_table_and_a_model_set_report(job):
    root, out, rc = job
    assert rc == 0
    for name in TABLES:
        t = pd.read_parquet(out / "results" / f"{name}.parquet")
        assert len(t) > 0, name
        if name == "comparison":  # each group against the baseline group, seed-paired
            assert set(t["baseline"]) == {"base"} and {CODE, "llama"} <= set(t["recipe"])
        elif name != "cross_model":
            assert {"base", CODE, "llama"} <= set(t["recipe"]), name
    cross = pd.read_parquet(out / "results" / "cross_model.parquet")
    pairs = set(cross["run"])  # 'A->B'
    # each +code seed into the base of its seed and back (4), and into each run of both groups the group's run of
    # the other seed (the null, 4): no llama
    assert len(pairs) == 8 and sum(p.split("->")[0][:4] == p.split("->")[1][:4] for p in pairs) == 4, pairs
    assert not any("llama" in p for p in pairs)
    assert not (out / "runs").exists() and not (out / "data").exists()
    page = (out / "report" / "index.html").read_text()
    assert "codetransfer report — model set pairs &lt;zz&gt; &amp; co" in page
    assert "<zz>" not in page  # names from the model-set file are escaped
    assert "Model set" in page and "The grid" not in page
    for text in ("base", "+code&lt;zz&gt;", "gpt2-3", "llama", "Activation patching", "Attention heads"):
        assert text in page, text
    summary = (out / "report" / "summary.md").read_text()
    assert "model set pairs &lt;zz&gt; &amp; co" in summary
    headline = json.loads((out / "report" / "headline.json").read_text())
    assert headline and "No result tables" not in headline[0]


def test_model_set_job_rerun_does_no_work(job, capsys):
    root, out, _ = job
    before = {p: p.stat().st_mtime_ns for p in (out / "units").glob("*.json")}
    args = ["run", "--models", str(root / "pairs.toml"), "--out", str(out), "--settings", str(root / "small.toml")]
    assert main([*args, "--stages", "eval,probe,patch,attention"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "units").glob("*.json")} == before
    assert "eval: up to date" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["tiny", "--models", "{root}/pairs.toml"], "give exactly one of GRID"),
        ([], "give exactly one of GRID"),
        (["--models", "{root}/pairs.toml", "--stages", "train,eval"], "leave train out of --stages"),
        (["--models", "{root}/pairs.toml", "--baseline", "bse"], "'bse' is not a group.*did you mean 'base'"),
        (["--models", "{root}/pairs.toml", "--settings", "{root}/bad.toml"], "'text' is not a group"),
        (["--models", "{root}/nope.toml"], "does not exist"),
    ],
)
def test_model_set_job_refusals_are_one_line_and_write_nothing(job, tmp_path, capsys, args, message):
    import re

    root, _, _ = job
    (root / "bad.toml").write_text('baseline = "text"\n')
    out = tmp_path / "o"
    assert main(["run", *(a.format(root=root) for a in args), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and re.search(message, err), err
    assert not out.exists()


def test_run_job_refuses_model_set_baseline_that_is_not_a_group(job, tmp_path):
    from codetransfer.errors import CodetransferError
    from codetransfer.pipeline import STAGES, JobSettings, run_job

    root, _, _ = job
    with pytest.raises(CodetransferError, match="'bas' is not a group of model set .*did you mean 'base'"):
        run_job(None, tmp_path / "o", JobSettings(baseline="bas"), models=root / "pairs.toml", log=lambda *a: None)
    with pytest.raises(CodetransferError, match="leave train out"):
        run_job(None, tmp_path / "o", stages=STAGES, models=root / "pairs.toml", log=lambda *a: None)
    with pytest.raises(CodetransferError, match="exactly one of GRID"):
        run_job("tiny", tmp_path / "o", models=root / "pairs.toml", log=lambda *a: None)
    assert not (tmp_path / "o").exists()
