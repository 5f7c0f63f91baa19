"""The report's circuit section: a share is headlined only over at least 3 seeds and above its control heads'
share for every ablation; a CKA finding only where every seed lies below every seed-vs-seed value."""

from __future__ import annotations

import pandas as pd
import pytest

from codetransfer.analysis import schema
from codetransfer.report import _circuit


def _gap(share, control, n_seeds=3):
    rows = []
    for method in ("mean", "resample"):
        for heads_set, (v, lo, hi) in (("chosen", share), ("control", control)):
            rows.append(
                dict(run="code*", recipe="code", seed=pd.NA, reference="text-only", reference_run="text-only*",
                     comparison="baseline", task="t", heads_set=heads_set, heads="", method=method,
                     metric="logit_diff", gap=0.5, gap_low=0.2, gap_high=0.8, gap_ablated=0.05, value=v, ci_low=lo,
                     ci_high=hi, withheld=False, interval="seed" if n_seeds >= 3 else "item", n_seeds=n_seeds,
                     n_items=48)
            )  # fmt: skip
    t = pd.DataFrame(rows, columns=list(schema.columns("circuit_gap")))
    t["seed"] = t["seed"].astype("Int64")
    return t


def _drop():
    rows = [
        dict(run="code*", recipe="code", seed=pd.NA, task="t", heads_set=h, heads="", method=m, metric="accuracy",
             clean=0.6, ablated=0.4, value=0.2, ci_low=0.1, ci_high=0.3, interval="seed", n_seeds=3, n_items=48)
        for h in ("chosen", "control")
        for m in ("mean", "resample")
    ]  # fmt: skip
    t = pd.DataFrame(rows, columns=list(schema.columns("circuit")))
    t["seed"] = t["seed"].astype("Int64")
    return t


def _cka(cross):
    rows = []
    for seed, v in enumerate(cross):
        rows.append(dict(run_a=f"code-s{seed}", run_b=f"text-only-s{seed}", recipe_a="code", recipe_b="text-only",
                         seed_a=seed, seed_b=seed, comparison="baseline", value=v))  # fmt: skip
    for seed, v in ((1, 0.8), (2, 0.85)):
        rows.append(dict(run_a=f"text-only-s{seed}", run_b="text-only-s0", recipe_a="text-only",
                         recipe_b="text-only", seed_a=seed, seed_b=0, comparison="seed_null", value=v))  # fmt: skip
    t = pd.DataFrame(rows).assign(task="t", site="resid_post", layer=0, metric="linear_cka", n_rows=100)
    null = t.loc[t["comparison"] == "seed_null", "value"].mean()
    t["seed_null"] = null
    t["within_seed_null"] = pd.array([v >= null if c != "seed_null" else pd.NA for v, c in zip(t["value"], t["comparison"])],
                              dtype="boolean")  # fmt: skip
    return t[list(schema.columns("cka"))]


def _section(tmp_path, gap, cka):
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    gap.to_parquet(results / "circuit_gap.parquet")
    _drop().to_parquet(results / "circuit.parquet")
    cka.to_parquet(results / "cka.parquet")
    folder = tmp_path / "report"
    folder.mkdir(exist_ok=True)
    return _circuit(results, folder, "text-only")


@pytest.mark.parametrize(
    "share, control, n_seeds, headlined",
    [
        ((0.9, 0.7, 1.1), (0.05, -0.1, 0.2), 3, True),
        ((0.9, 0.7, 1.1), (0.8, 0.6, 1.0), 3, False),  # the control heads carry as much: nothing about these heads
        ((0.9, 0.7, 1.1), (0.05, -0.1, 0.2), 2, False),  # fewer than 3 seeds: an item-level interval
        ((0.3, -0.1, 0.7), (0.0, -0.1, 0.1), 3, False),  # the share's interval includes 0
    ],
)
def test_a_share_is_headlined_only_above_its_control_over_three_seeds(tmp_path, share, control, n_seeds, headlined):
    section, findings = _section(tmp_path, _gap(share, control, n_seeds), _cka([0.95, 0.96, 0.97]))
    circuit = [f for f in findings if f.startswith("Circuit:")]
    assert bool(circuit) == headlined, findings
    if headlined:
        assert "code" in circuit[0] and "text-only" in circuit[0] and "3 seeds" in circuit[0]
    figures = [b for kind, b in section.blocks if kind == "figure"]
    assert {f for f, _ in figures} >= {"circuit_share.png", "circuit_drop.png", "circuit_cka.png"}
    assert all((tmp_path / "report" / f).is_file() for f, _ in figures)


@pytest.mark.parametrize("cross, headlined", [([0.5, 0.6, 0.7], True), ([0.5, 0.6, 0.82], False)])
def test_cka_is_headlined_only_below_every_seed_pair(tmp_path, cross, headlined):
    _, findings = _section(tmp_path, _gap((0.3, -0.1, 0.7), (0.0, -0.1, 0.1)), _cka(cross))
    assert any(f.startswith("Representation similarity") for f in findings) == headlined, findings


def test_missing_tables_are_named(tmp_path):
    (tmp_path / "results").mkdir()
    section, findings = _circuit(tmp_path / "results", tmp_path, "text-only")
    assert findings == [] and any("circuit stage has not run" in m for m in section.missing)
