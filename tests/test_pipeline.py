"""The main job: every stage runs, the report holds every section, restarts redo nothing finished,
and a changed recipe redoes only the units that read it."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from codetransfer.cli import main as cli
from codetransfer.pipeline import JobSettings, run_job

GRID = """
name = "pipe"
seeds = [0]
[model]
n_layers = 2
d_model = 32
n_heads = 2
d_mlp = 64
n_ctx = 128
[tokenizer]
vocab_size = 512
sample_bytes = 150000
[sources.gcide]
kind = "gcide"
max_bytes = 60000
[sources.narratives]
kind = "synthetic_narrative"
max_bytes = 60000
[sources.stdlib]
kind = "stdlib"
max_bytes = 60000
[sources.programs]
kind = "synthetic_program"
max_bytes = 60000
[train]
batch_size = 8
eval_every = 50
eval_tokens = 2048
save_every = 50
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
mixture = { gcide = 1, narratives = 1, stdlib = 1, programs = 1 }
tokens = 8192
"""

SETTINGS = JobSettings(eval_items=10, probe_items=40, patch_items=6, attention_items=6)
TABLES = (
    "eval.parquet",
    "probes.parquet",
    "decodability.parquet",
    "patching.parquet",
    "cross_model.parquet",
    "cross_rendering.parquet",
    "attention.parquet",
    "circuit.parquet",
    "circuit_gap.parquet",
    "circuit_heads.parquet",
    "cka.parquet",
)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    (root / "grid.toml").write_text(GRID)
    run_job(str(root / "grid.toml"), root / "out", SETTINGS, log=lambda *a: None)
    return root


def tables(out: Path) -> dict[str, pd.DataFrame]:
    return {t: pd.read_parquet(out / "results" / t) for t in TABLES}


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def test_every_stage_writes_its_table_and_the_report_has_every_section(job):
    out = job / "out"
    for name, t in tables(out).items():
        assert len(t) > 0, name
    # the job probes the non-local labels only, and compares every trained run with its random-init twin
    from codetransfer.analysis import schema

    probes, dec = tables(out)["probes.parquet"], tables(out)["decodability.parquet"]
    assert set(probes["pos"]) <= {"box@query", "box@op"} and "box@query" in set(probes["pos"])
    schema.check(dec, "decodability")
    assert set(dec["recipe"]) == {"text-only", "balanced"} and set(dec["family"]) == set(probes["pos"])
    assert not dec["decodable"].any() and (dec["interval"] == "item").all()  # one seed: never a claim
    page = (out / "report" / "index.html").read_text()
    for title in (
        "Headline findings",
        "The grid",
        "paper-style table",
        "Probing",
        "Activation patching",
        "Attention heads",
        "Circuit: lookup heads",
    ):
        assert title in page
    parser = _Images()
    parser.feed(page)
    assert len(parser.images) >= 8
    assert all((out / "report" / src).is_file() for src in parser.images)
    headline = json.loads((out / "report" / "headline.json").read_text())
    assert len(headline) == 4  # a grid without a planted answer ends with what beat its control
    assert headline[-1].startswith(("Beats its control", "No instrument found"))
    assert "## Headline findings" in (out / "report" / "summary.md").read_text()


def test_rerun_does_no_work_and_keeps_tables(job, capsys):
    out = job / "out"
    before = tables(out)
    units = {p.name: p.stat().st_mtime_ns for p in (out / "units").glob("*.json")}
    run_job(str(job / "grid.toml"), out, SETTINGS)
    printed = capsys.readouterr().out
    assert "eval: up to date" in printed and "probe: up to date" in printed and "circuit: up to date" in printed
    assert units == {p.name: p.stat().st_mtime_ns for p in (out / "units").glob("*.json")}
    for name, t in tables(out).items():
        pd.testing.assert_frame_equal(t, before[name])


def test_interrupted_unit_is_redone_and_tables_are_identical(job, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(job / "out", out)
    before = tables(out)
    # as if killed inside the attention and cross-model units: their records and outputs are gone
    for unit in ("attention-text-only-s0", "cross-balanced-s0-into-text-only-s0"):
        (out / "units" / f"{unit}.json").unlink()
        shutil.rmtree(out / "results" / "units" / unit)
    run_job(str(job / "grid.toml"), out, SETTINGS, stages=("patch", "attention", "report"), log=lambda *a: None)
    for name, t in tables(out).items():
        pd.testing.assert_frame_equal(t, before[name])


def test_changing_one_recipe_redoes_only_what_depends_on_it(job, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(job / "out", out)
    grid = job / "grid2.toml"
    grid.write_text(
        GRID.replace(
            "mixture = { gcide = 1, narratives = 1, stdlib = 1, programs = 1 }",
            "mixture = { gcide = 1, narratives = 1, stdlib = 2, programs = 2 }",
        )
    )
    units = {p.stem: json.loads(p.read_text())["key"] for p in (out / "units").glob("*.json")}
    weights = (out / "runs" / "text-only-s0" / "model.safetensors").stat().st_mtime_ns
    text_only_scores = pd.read_parquet(out / "results" / "units" / "eval-text-only-s0" / "scores.parquet")
    run_job(
        str(grid),
        out,
        SETTINGS,
        stages=("train", "eval", "probe", "patch", "attention", "circuit"),
        log=lambda *a: None,
    )
    after = {p.stem: json.loads(p.read_text())["key"] for p in (out / "units").glob("*.json")}
    changed = {u for u in units if units[u] != after[u]}
    assert changed == {
        "eval-balanced-s0",
        "probe-balanced-s0",
        "patch-balanced-s0",
        "attention-balanced-s0",
        "cross-balanced-s0-into-text-only-s0",
        "cross-text-only-s0-into-balanced-s0",  # the other way: does balanced need the component?
        "circuit-balanced-s0",
        "circuit-balanced-s0-vs-text-only-s0",
    }
    assert (out / "runs" / "text-only-s0" / "model.safetensors").stat().st_mtime_ns == weights
    # the grid-wide eval table is rebuilt from the units: the unchanged run's rows are the same scores
    scores = pd.read_parquet(out / "results" / "scores.parquet")
    pd.testing.assert_frame_equal(scores[scores["run"] == "text-only-s0"].reset_index(drop=True), text_only_scores)
    assert set(pd.read_parquet(out / "results" / "probes.parquet")["run"]) >= {"text-only-s0", "balanced-s0"}


def test_run_command_refuses_unknown_stage(tmp_path, capsys):
    assert cli(["run", "tiny", "--out", str(tmp_path / "o"), "--stages", "train,evl"]) == 2
    err = capsys.readouterr().err
    assert "unknown stage 'evl' (did you mean 'eval'?)" in err
    assert not (tmp_path / "o").exists()


def test_probe_random_init_baseline_and_site_aliases(job, tmp_path):
    import torch

    from codetransfer.commands.probe import RandomInit, _random_init_run
    from codetransfer.trained import find_runs, load_run

    out = tmp_path / "probe"
    assert (
        cli(
            [
                "probe",
                "--runs",
                str(job / "out"),
                "--tasks",
                "entity_tracking",
                "--sites",
                "resid_post.1",
                "--out",
                str(out),
                "--n-items",
                "40",
                "--max-difficulty",
                "0",
                "--seeds",
                "0",
                "--no-mdl",
                "--no-cross-format",
                "--random-baseline",
            ]
        )
        == 0
    )
    t = pd.read_parquet(out / "probes.parquet")
    assert {"text-only", "text-only (random init)", "balanced (random init)"} <= set(t["recipe"])
    assert set(t["site"]) == {"resid_post"} and set(t["layer"]) == {1}
    run = find_runs(job / "out")[0]
    trained, rand = load_run(run), _random_init_run(RandomInit(run.path, run.seed), "cpu")
    x = torch.tensor([[0, 5, 17, 33]])
    with torch.no_grad():
        assert not torch.allclose(trained.bridge(x), rand.bridge(x))
    assert rand.bridge.cfg.n_layers == trained.bridge.cfg.n_layers


def test_report_loads_in_headless_chromium_and_a_missing_image_is_flagged(job, tmp_path):
    """Issue #7: the page loads without errors and every image is found (tests/report_browser.py)."""
    from report_browser import browser_or_skip, check_page

    browser = browser_or_skip()
    try:
        assert check_page(browser, job / "out" / "report" / "index.html") == []
        bad = tmp_path / "report"
        shutil.copytree(job / "out" / "report", bad)
        (bad / "patch_heads.png").unlink()  # known-bad copy: one figure gone
        problems = check_page(browser, bad / "index.html")
    finally:
        browser.quit()
    assert "image not loaded: patch_heads.png" in problems
    assert any(p.startswith("console error") and "patch_heads.png" in p for p in problems)


NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOK_NAMES = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
EXECUTED = any(c.get("outputs") for p in NOTEBOOKS.glob("*.ipynb") for c in json.loads(p.read_text())["cells"])
"""Whether the committed notebooks carry outputs (bench/execute_notebooks.py runs them on the demo's output)."""
PLOTS = ("plot_", "plt.", "attention_heads_view")
"""A code cell that calls one of these shows a figure (or CircuitsVis' view)."""


def _results(cell) -> list[dict]:
    return [o for o in cell.get("outputs", []) if o.get("output_type") in ("display_data", "execute_result")]


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebook_executes_without_error(job, tmp_path, monkeypatch, name):
    """A copy of the notebook, outputs stripped, runs top to bottom against the tiny test job."""
    import dataclasses

    import nbformat
    from nbclient import NotebookClient

    out = tmp_path / "out"
    shutil.copytree(job / "out", out)  # results are up to date: the notebooks plot them and call the API
    monkeypatch.setenv("CODETRANSFER_GRID", str(job / "grid.toml"))
    monkeypatch.setenv("CODETRANSFER_OUT", str(out))
    monkeypatch.setenv("CODETRANSFER_SETTINGS", json.dumps(dataclasses.asdict(SETTINGS)))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    assert any(_results(c) for c in nb.cells)
    nbformat.validate(nb)


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_committed_notebook_is_valid_nbformat_with_cell_ids(name):
    import nbformat

    raw = json.loads((NOTEBOOKS / name).read_text())
    assert (raw["nbformat"], raw["nbformat_minor"]) >= (4, 5), "cell ids need nbformat 4.5"
    ids = [c.get("id") for c in raw["cells"]]
    assert all(ids), f"cells without an id: {[i for i, x in enumerate(ids) if not x]}"
    assert len(set(ids)) == len(ids), "cell ids must be unique"
    nbformat.validate(nbformat.reads(json.dumps(raw), as_version=4))


@pytest.mark.xfail(
    not EXECUTED, strict=False, reason="notebooks not yet executed on out/demo: run bench/execute_notebooks.py"
)
@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_committed_notebook_has_outputs(name):
    """Committed as executed top to bottom: every code cell has its execution count in order, a cell that ends
    in an expression shows something, a cell that plots shows the figure, and no cell failed."""
    import ast

    import nbformat

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "run every cell once, in order"
    for c in code:
        where = f"cell {c.get('id')}"
        assert not [o for o in c.outputs if o.output_type == "error"], f"{where} failed"
        body = ast.parse(c.source).body
        if body and isinstance(body[-1], ast.Expr) and not c.source.rstrip().endswith(";"):
            assert c.outputs, f"{where} ends in an expression but shows nothing"
        if any(p in c.source for p in PLOTS):
            assert any({"image/png", "text/html"} & set(o.get("data", {})) for o in _results(c)), f"{where}: no figure"
    assert any(_results(c) for c in code), "no displayed result in the whole notebook"
