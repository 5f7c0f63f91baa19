"""The package list in pyproject.toml names every sub-package, so a non-editable install has all of them."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_for_setuptools():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, dirs = set(tool["packages"]), tool["package-dir"]
    found = set()
    for package, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join((package, *rel.parts)))
    assert found, "no packages found: package-dir changed?"
    assert found <= listed, f"sub-packages missing from [tool.setuptools] packages: {sorted(found - listed)}"
