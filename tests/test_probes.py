"""Probes on synthetic activations: planted directions are found, random ones are not; MDL; splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from codetransfer.analysis.stats import cluster_bootstrap_ci
from codetransfer.errors import CodetransferError
from codetransfer.probes.controls import control_labels, selectivity, shuffled_labels
from codetransfer.probes.estimators import LinearProbe, MLPProbe, RidgeProbe, make_probe
from codetransfer.probes.mdl import online_codelength
from codetransfer.probes.splits import entity_splits, group_splits
from codetransfer.probes.sweep import COLUMNS, cross_format_probe, probe_layers, sparse_probe_rows

META = {"run": "r0", "recipe": "balanced", "seed": 0, "task": "boxes"}


def synth(n=300, d=32, seed=0, strength=3.0, n_classes=3):
    """Rows with a label planted along fixed directions, plus an entity embedding in every row."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    ent = rng.integers(0, 30, n)
    tmpl = rng.integers(0, 10, n)
    E = rng.standard_normal((30, d))
    W = rng.standard_normal((n_classes, d))
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    planted = rng.standard_normal((n, d)) + 0.5 * E[ent] + strength * W[y]
    unrelated = rng.standard_normal((n, d)) + 0.5 * E[ent]
    return y, ent, tmpl, planted.astype(np.float32), unrelated.astype(np.float32)


@parametrize_with_checks([LinearProbe(Cs=4), RidgeProbe(), MLPProbe(hidden=16, max_iter=200)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_planted_direction_found_and_selective_random_not():
    y, ent, tmpl, planted, unrelated = synth()
    table = probe_layers(
        {"resid_post.0": planted, "resid_post.1": unrelated},
        y,
        tmpl,
        control_types=ent,
        meta=META,
        n_boot=300,
        shuffle_baseline=True,
    )
    assert set(COLUMNS) <= set(table.columns)
    v = table.set_index(["layer", "metric"])["value"]
    assert v[(0, "accuracy")] > 0.85
    assert v[(0, "selectivity")] > 0.3
    assert v[(1, "accuracy")] < 0.55
    assert v[(1, "selectivity")] < 0.1
    assert v[(0, "mdl_bits")] < 0.5 * v[(1, "mdl_bits")]
    assert v[(0, "shuffled_accuracy")] < 0.55  # shuffled training labels teach nothing
    acc0 = table[(table.layer == 0) & (table.metric == "accuracy")].iloc[0]
    assert acc0.ci_low <= acc0.value <= acc0.ci_high and acc0.ci_high - acc0.ci_low < 0.2
    assert (table.run == "r0").all() and table["head"].isna().all()
    assert str(table["head"].dtype) == "Int64"  # schema: no head = Int64 NA, never a sentinel


def test_head_sites_are_probed_per_head():
    y, ent, tmpl, planted, unrelated = synth(n=200, d=16)
    heads = np.stack([unrelated, planted], axis=1)  # head 1 carries the label
    table = probe_layers({"head_out.0": heads}, y, tmpl, meta=META, mdl=False, seeds=(0,), n_boot=50)
    assert set(table.site) == {"head_out"}
    acc = table[table.metric == "accuracy"].set_index("head")["value"]
    assert acc[1] > 0.85 and acc[0] < 0.55


def test_mdl_lower_for_planted_feature_than_for_shuffled_labels():
    y, ent, tmpl, planted, _ = synth(n=400)
    real = online_codelength(planted, y, seed=0)
    shuffled = online_codelength(planted, shuffled_labels(y, seed=1), seed=0)
    assert real.online_bits < 0.5 * shuffled.online_bits
    assert real.compression > 2 > shuffled.compression
    assert real.uniform_bits == pytest.approx(400 * np.log2(3))
    assert real.block_ends[-1] == 400 and sum(real.block_bits) == pytest.approx(real.online_bits)
    # the first block is sent with the uniform code
    assert real.block_bits[0] == pytest.approx(real.block_ends[0] * np.log2(3))


def test_control_labels_fixed_per_type_and_follow_label_distribution():
    rng = np.random.default_rng(0)
    types = rng.integers(0, 500, 5000)
    labels = rng.choice(["a", "b"], size=5000, p=[0.8, 0.2])
    ctrl = control_labels(types, labels, seed=3)
    for t in np.unique(types)[:50]:
        assert len(set(ctrl[types == t])) == 1
    type_labels = pd.Series(ctrl).groupby(types).first()
    assert 0.7 < (type_labels == "a").mean() < 0.9
    assert not np.array_equal(control_labels(types, labels, seed=4), ctrl)
    assert selectivity(0.9, 0.6) == pytest.approx(0.3)


def test_group_and_entity_splits_never_share_a_group():
    rng = np.random.default_rng(0)
    tmpl = rng.integers(0, 12, 200)
    for sp in group_splits(tmpl, seeds=(0, 1, 2)):
        assert not set(tmpl[sp.train]) & set(tmpl[sp.test])
        assert len(sp.train) + len(sp.test) == 200
    names = [f"e{i}" for i in range(20)]
    ents = [tuple(rng.choice(names, 2, replace=False)) for _ in range(200)]
    splits = entity_splits(ents, test_fraction=0.3, seeds=(0, 1))
    for sp in splits:
        train_ents = {e for i in sp.train for e in ents[i]}
        test_only = {e for i in sp.test for e in ents[i]} - train_ents
        # every test row mentions at least one entity never seen in training
        assert all(set(ents[i]) & test_only for i in sp.test)
        assert len(sp.test) >= 0.3 * 200
    assert not np.array_equal(splits[0].test, splits[1].test)


def test_bootstrap_interval_covers_and_narrows():
    rng = np.random.default_rng(0)
    small = (rng.random(50) < 0.7).astype(float)
    big = (rng.random(5000) < 0.7).astype(float)
    v, lo, hi = cluster_bootstrap_ci(small)
    V, LO, HI = cluster_bootstrap_ci(big)
    assert lo < 0.7 < hi and LO < 0.7 < HI and (HI - LO) < (hi - lo) / 5
    # cluster bootstrap: one group of identical values is one draw, so the interval is wider
    groups = np.repeat(np.arange(50), 100)
    clustered = np.repeat((rng.random(50) < 0.7).astype(float), 100)
    _, clo, chi = cluster_bootstrap_ci(clustered, groups)
    _, rlo, rhi = cluster_bootstrap_ci(clustered)
    assert (chi - clo) > 3 * (rhi - rlo)


def test_cross_format_transfer_when_shared_and_not_when_not():
    rng = np.random.default_rng(0)
    n, d = 300, 24
    world = np.arange(n)  # twins share a world id
    y = rng.integers(0, 2, n)
    w_shared = rng.standard_normal(d)
    w_other = rng.standard_normal(d)
    code = rng.standard_normal((n, d)) + 3 * np.outer(2 * y - 1, w_shared) / np.linalg.norm(w_shared)
    text_shared = rng.standard_normal((n, d)) + 3 * np.outer(2 * y - 1, w_shared) / np.linalg.norm(w_shared)
    text_other = rng.standard_normal((n, d)) + 3 * np.outer(2 * y - 1, w_other) / np.linalg.norm(w_other)
    groups = world // 10
    shared = cross_format_probe(code, y, groups, text_shared, y, groups, seeds=(0,), n_boot=100).set_index(
        ["fit_on", "test_on"]
    )
    other = cross_format_probe(code, y, groups, text_other, y, groups, seeds=(0,), n_boot=100).set_index(
        ["fit_on", "test_on"]
    )
    assert shared.loc[("code", "text"), "value"] > 0.85 and shared.loc[("text", "code"), "value"] > 0.85
    assert other.loc[("code", "code"), "value"] > 0.85 and other.loc[("text", "text"), "value"] > 0.85
    assert other.loc[("code", "text"), "value"] < 0.7


def test_sparse_probe_finds_single_planted_neuron():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 16))
    y = rng.integers(0, 2, 120)
    X[:, 7] += 4 * y
    rows = sparse_probe_rows(X, y, rng.integers(0, 12, 120), ks=(1, 2))
    acc = rows[rows.metric == "accuracy"].set_index("k")
    assert acc.loc[1, "value"] > 0.9 and acc.loc[1, "features"] == "7"

    with pytest.raises(CodetransferError, match="2 classes"):
        sparse_probe_rows(X, rng.integers(0, 3, 120), np.arange(120) // 10)


# ---------------------------------------------------------------------- refusals
def test_single_class_labels_refused():
    X = np.random.default_rng(0).standard_normal((40, 8))
    with pytest.raises(CodetransferError, match="2 classes") as e:
        probe_layers({"resid_post.0": X}, np.zeros(40), np.arange(40) // 4)
    assert "\n" not in str(e.value)
    with pytest.raises(CodetransferError, match="2 classes"):
        online_codelength(X, np.ones(40))
    with pytest.raises(ValueError, match="class"):
        LinearProbe().fit(X, np.zeros(40))


def test_unknown_site_and_probe_and_ungrouped_data_refused():
    y, ent, tmpl, planted, _ = synth(n=60)
    with pytest.raises(CodetransferError, match="resid_post.0"):
        probe_layers({"resid_post.0": planted}, y, tmpl, sites=["resid_post.3"])
    with pytest.raises(CodetransferError, match="linear"):
        make_probe("linaer")
    with pytest.raises(CodetransferError, match="groups"):
        probe_layers({"resid_post.0": planted}, y, np.zeros(60))
