"""`--version`, `python -m codetransfer`, the licence file and the declared dependencies."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import codetransfer

ROOT = Path(__file__).resolve().parents[1]


def test_python_m_codetransfer_prints_the_version():
    out = subprocess.run(
        [sys.executable, "-m", "codetransfer", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"codetransfer {codetransfer.__version__}"


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
