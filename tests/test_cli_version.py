"""`--version`, `python -m codetransfer`, the presets a verb's help lists, the licence file and the declared
dependencies."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import codetransfer
from codetransfer.cli import main
from codetransfer.trained.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]


def test_python_m_codetransfer_prints_the_version():
    out = subprocess.run(
        [sys.executable, "-m", "codetransfer", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"codetransfer {codetransfer.__version__}"


@pytest.mark.parametrize("verb", ["run", "train"])
def test_the_grid_help_lists_every_preset(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help at the terminal width
    assert f"a preset name ({', '.join(PRESETS)})" in text
    assert {"control", "emergence"} <= set(PRESETS) and all(name in text for name in PRESETS)


def test_building_the_parser_does_not_import_the_presets():
    # `codetransfer --help` builds every verb's parser; the preset names are read only when a verb's help is printed
    code = (
        "import sys; from codetransfer.cli import build_parser; build_parser(); "
        "assert 'codetransfer.trained.presets' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_licence_file_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"]["text"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "2026 codetransfer contributors" in text
    assert project["urls"]["Homepage"].startswith("https://")


def test_threadpoolctl_is_declared_where_it_is_imported():
    deps = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    used = set()
    for f in (ROOT / "probes").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                used.add(node.module.split(".")[0])
    assert "threadpoolctl" in used and "threadpoolctl" in deps
