"""The top layer: the main job calls the library (no argparse, no commands), typed job settings with
their legacy keys, presets printed as grid files that load back equal, and the artifacts helpers."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from codetransfer import artifacts
from codetransfer.cli import main as cli
from codetransfer.errors import CodetransferError
from codetransfer.pipeline import JobSettings, load_settings

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
    return names


def test_pipeline_imports_no_argparse_and_no_command():
    names = _imports(ROOT / "codetransfer" / "pipeline.py")
    assert "codetransfer.analysis.grid" in names  # the inspection sees the imports
    assert not {n for n in names if n == "argparse" or n.startswith("codetransfer.commands") or n == "codetransfer.cli"}


@pytest.mark.parametrize("folder", ["tasks", "trained", "analysis", "probes"])
def test_lower_packages_import_nothing_of_the_top_layer(folder):
    for path in (ROOT / folder).rglob("*.py"):
        bad = {
            n
            for n in _imports(path)
            if n.startswith(
                ("codetransfer.commands", "codetransfer.cli", "codetransfer.pipeline", "codetransfer.report")
            )
        }
        assert not bad, f"{path.name} imports {bad}"


def test_settings_lists_from_toml_lists_and_comma_strings(tmp_path):
    (tmp_path / "a.toml").write_text('probe_sites = ["resid_post", "mlp_out"]\npatch_sites = "resid_pre, attn"\n')
    s = load_settings(tmp_path / "a.toml")
    assert s.probe_sites == ("resid_post", "mlp_out") and s.patch_sites == ("resid_pre", "attn")
    assert s == JobSettings(probe_sites="resid_post,mlp_out", patch_sites=["resid_pre", "attn"])
    (tmp_path / "b.json").write_text('{"attention_tasks": ["entity_tracking", "counting"]}')
    assert load_settings(tmp_path / "b.json").attention_tasks == ("entity_tracking", "counting")
    (tmp_path / "c.toml").write_text("probe_sites = [1, 2]\n")
    with pytest.raises(CodetransferError, match=r"field 'probe_sites' .* must be str, got \[1, 2\]"):
        load_settings(tmp_path / "c.toml")


def test_unit_keys_hash_the_settings_as_they_always_did():
    # the key form: list fields comma-joined (what the job hashed when they were strings); every field, so a
    # changed default (eval_items 300 -> 600 over levels 0-1) redoes the units it changes
    legacy = dict(
        baseline="text-only",
        aim="gap",
        eval_items=600,
        eval_max_difficulty=1,
        curve_items=60,
        curve_max_difficulty=0,
        probe_tasks="entity_tracking",
        probe_sites="resid_post",
        probe_labels="*@query,*@op",  # the non-local labels (issue #17): a new field, so every unit is redone once
        probe_items=288,
        probe_max_difficulty=3,
        patch_task="entity_tracking",
        patch_sites="resid_pre,attn_out,mlp_out,head_out",
        patch_items=48,
        patch_difficulty=0,
        patch_checkpoint_sites="",
        attention_tasks="entity_tracking",
        attention_items=48,
        seed=0,
    )
    assert JobSettings().key() == legacy
    obj = ["eval", legacy, "text-only-s0", "abc"]
    expected = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
    assert artifacts.key(obj) == expected[:16] and artifacts.key(obj, 12) == expected[:12]
    assert artifacts.key(["eval", JobSettings(probe_sites=["resid_post"]).key()]) == artifacts.key(["eval", legacy])


@pytest.mark.parametrize("name", ["tiny", "tiny-full", "control", "control-aligned", "emergence", "small", "gpu"])
def test_grid_show_prints_a_grid_file_that_loads_back_equal(name, tmp_path, capsys):
    from codetransfer.trained import load_grid
    from codetransfer.trained.presets import PRESETS
    from codetransfer.trained.runs import recipe_hash

    assert cli(["grid", "show", name]) == 0
    path = tmp_path / "grid.toml"
    path.write_text(capsys.readouterr().out)
    loaded, shipped, raw = load_grid(path), load_grid(name), PRESETS[name]()
    assert loaded == shipped == raw
    assert loaded.fingerprint() == raw.fingerprint()  # validated presets keep their runs' identity
    assert [recipe_hash(r) for r in loaded.recipes] == [recipe_hash(r) for r in raw.recipes]


def test_presets_are_validated_like_grid_files(monkeypatch):
    import dataclasses

    from codetransfer.trained import presets

    broken = dataclasses.replace(presets.PRESETS["tiny"](), seeds=())
    monkeypatch.setitem(presets.PRESETS, "broken", lambda: broken)
    with pytest.raises(CodetransferError, match=r"preset 'broken'\.seeds: expected at least one seed"):
        presets.preset("broken")


def test_grid_lists_presets_and_refuses_unknown(capsys):
    assert cli(["grid"]) == 0
    assert [ln.split()[0] for ln in capsys.readouterr().out.splitlines()] == [
        "tiny",
        "tiny-full",
        "control",
        "control-aligned",
        "emergence",
        "small",
        "gpu",
    ]
    assert cli(["grid", "show", "tinny"]) == 2
    assert "did you mean 'tiny'" in capsys.readouterr().err


@pytest.mark.parametrize("n_units", [0, 1, 5, 13])
@pytest.mark.parametrize("n_shards", [1, 2, 3, 7])
def test_shards_cover_every_unit_once_in_order(n_units, n_shards):
    units = list(range(n_units))
    blocks = [artifacts.shard_units(units, (i, n_shards)) for i in range(n_shards)]
    assert [u for b in blocks for u in b] == units
    assert all(artifacts.shard_of(u, n_units, n_shards) == i for i, b in enumerate(blocks) for u in b)
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


@pytest.mark.parametrize("text", ["3/3", "x", "1/0", "-1/2", "1/2/3"])
def test_parse_shard_refuses_bad_values(text):
    with pytest.raises(CodetransferError, match="^--shard: expected"):
        artifacts.parse_shard(text)
    assert artifacts.parse_shard("2/3") == (2, 3)


def test_write_tables_is_all_or_nothing(tmp_path):
    good = pd.DataFrame({"a": [1, 2]})
    bad = pd.DataFrame({"a": [object()]})  # pyarrow cannot write it
    with pytest.raises(Exception):
        artifacts.write_tables(tmp_path / "r", {"good.parquet": good, "bad.parquet": bad})
    assert list((tmp_path / "r").iterdir()) == []
    artifacts.write_tables(tmp_path / "r", {"good.parquet": good, "s.csv": good})
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["good.parquet", "s.csv"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "r" / "good.parquet"), good)


def test_parquet_metadata_round_trip_and_safe_names(tmp_path):
    artifacts.write_parquet(pd.DataFrame({"x": [1.5]}), tmp_path / "p.parquet", {b"k": b"v"})
    assert artifacts.read_parquet_metadata(tmp_path / "p.parquet", b"k") == b"v"
    (tmp_path / "broken.parquet").write_text("not parquet")
    assert artifacts.read_parquet_metadata(tmp_path / "broken.parquet", b"k") is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert artifacts.safe_name("a->b c/d") == "a-_b_c_d"


def test_probe_merge_names_the_shard_whose_runs_appear_in_no_part(tmp_path):
    """A manifest lists every unit: a shard that wrote nothing is found (the parts alone cannot show it)."""
    from codetransfer.probes.grid import check_probe_parts, probe_units

    class Run:
        def __init__(self, name):
            self.name = name

    units = probe_units([Run("b-s0"), Run("a-s0")], ["entity_tracking"], ["resid_post"])
    assert [u["id"] for u in units] == ["a-s0/entity_tracking/resid_post", "b-s0/entity_tracking/resid_post"]
    parts = tmp_path / "parts"
    artifacts.write_manifest(parts, dict(kind="probe", n_shards=2, units=units))
    artifacts.write_parquet(pd.DataFrame({"run": ["a-s0"]}), parts / units[0]["part"])
    with pytest.raises(CodetransferError, match=r"1 of 2 probing parts are missing \(b-s0/.*re-run probe shard 1/2"):
        check_probe_parts(tmp_path)
    assert check_probe_parts(tmp_path, allow_partial=True) == ["b-s0/entity_tracking/resid_post"]
