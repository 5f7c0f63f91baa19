"""probes.fast computes what scikit-learn computes: equal coefficients, scores and probe tables.

The fast path is only worth having if it changes no number; these tests compare it with scikit-learn
itself (``LogisticRegressionCV`` / ``LogisticRegression``, and the probes inside
``probes.fast.reference()``) on binary and multiclass, float32 and float64, converged and
iteration-capped problems, and on a whole probing table."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold

from codetransfer.probes import fast
from codetransfer.probes.estimators import LinearProbe
from codetransfer.probes.mdl import online_codelength
from codetransfer.probes.sweep import probe_layers


def _problem(seed: int, n: int, d: int, k: int, dtype):
    rng = np.random.default_rng(seed)
    y = np.array([f"c{v}" for v in rng.integers(0, k, n)], dtype=object)
    y[:k] = [f"c{v}" for v in range(k)]
    X = rng.normal(size=(n, d)) + 1.5 * (y == "c1")[:, None] * (np.arange(d) < 3)
    return X.astype(dtype), y


CASES = [
    (0, 90, 12, 2, np.float64, 200),
    (1, 120, 30, 4, np.float64, 200),
    (2, 80, 40, 3, np.float32, 200),
    (3, 150, 20, 5, np.float64, 7),
    (4, 60, 8, 2, np.float32, 7),
]


@pytest.mark.parametrize("seed,n,d,k,dtype,max_iter", CASES)
def test_logistic_cv_equals_scikit_learn_bit_for_bit(seed, n, d, k, dtype, max_iter):
    X, y = _problem(seed, n, d, k, dtype)
    folds = list(StratifiedKFold(3, shuffle=True, random_state=0).split(X, y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = LogisticRegressionCV(
            Cs=8,
            cv=folds,
            l1_ratios=(0.0,),
            scoring="neg_log_loss",
            max_iter=max_iter,
            random_state=0,
            use_legacy_attributes=False,
        ).fit(X, y)
        new = fast.fit_logistic_cv(X, y, folds, Cs=8, max_iter=max_iter, random_state=0)
    assert new.C_ == ref.C_
    for attr in ("classes_", "coef_", "intercept_", "scores_", "coefs_paths_", "n_iter_", "Cs_"):
        np.testing.assert_array_equal(getattr(new, attr), getattr(ref, attr), err_msg=attr)
    np.testing.assert_array_equal(new.predict_proba(X), ref.predict_proba(X))


@pytest.mark.parametrize("seed,n,d,k,dtype,max_iter", CASES)
def test_logistic_fit_equals_scikit_learn_bit_for_bit(seed, n, d, k, dtype, max_iter):
    X, y = _problem(seed, n, d, k, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = LogisticRegression(C=0.7, max_iter=max_iter).fit(X, y)
        new = fast.fit_logistic(X, y, C=0.7, max_iter=max_iter)
    assert new.coef_.dtype == ref.coef_.dtype
    for attr in ("classes_", "coef_", "intercept_", "n_iter_"):
        np.testing.assert_array_equal(getattr(new, attr), getattr(ref, attr), err_msg=attr)


def test_iteration_cap_warns_like_scikit_learn():
    X, y = _problem(5, 100, 20, 3, np.float64)
    with pytest.warns(ConvergenceWarning, match="failed to converge"):
        fast.fit_logistic(X, y, max_iter=2)


def test_linear_probe_and_mdl_equal_their_reference_fits():
    X, y = _problem(6, 140, 16, 3, np.float32)
    groups = np.arange(140) % 9
    for g in (groups, None):  # grouped inner CV, stratified inner CV
        new = LinearProbe().fit(X, y, groups=g)
        with fast.reference():
            ref = LinearProbe().fit(X, y, groups=g)
        assert type(ref.pipeline_[-1]) is type(new.pipeline_[-1]) and new.C_ == ref.C_
        np.testing.assert_array_equal(new.coef_, ref.coef_)
        np.testing.assert_array_equal(new.predict_proba(X), ref.predict_proba(X))
    labels = np.asarray(y, dtype=str)
    with fast.reference():
        ref_code = online_codelength(X, labels, seed=3)
    assert online_codelength(X, labels, seed=3) == ref_code


def test_probe_table_equals_the_reference_table():
    rng = np.random.default_rng(7)
    n, d = 160, 24
    ents = [f"e{i}" for i in range(12)]
    groups = [tuple(rng.choice(ents, size=2, replace=False)) for _ in range(n)]
    labels = np.array([g[0][-1] for g in groups])  # decodable from the activations below
    code = {e: rng.normal(size=d) for e in ents}
    acts = {
        f"resid_post.{layer}": np.stack([code[g[0]] * layer + rng.normal(size=d) for g in groups]).astype(np.float32)
        for layer in range(2)
    }
    kw = dict(split="entity", seeds=(0, 1), n_boot=200)
    new = probe_layers(acts, labels, groups, **kw)
    with fast.reference():
        ref = probe_layers(acts, labels, groups, **kw)
    assert len(new) == len(ref) > 0 and {"accuracy", "mdl_bits", "selectivity"} <= set(new["metric"])
    assert new.drop(columns=["value", "ci_low", "ci_high"]).equals(ref.drop(columns=["value", "ci_low", "ci_high"]))
    np.testing.assert_array_equal(
        new[["value", "ci_low", "ci_high"]].to_numpy(), ref[["value", "ci_low", "ci_high"]].to_numpy()
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("start", ["zeros", "random"])
def test_lbfgs_takes_scipys_steps_and_evaluations(dtype, start):
    """``fast.lbfgs`` against ``scipy.optimize.minimize(method="L-BFGS-B")``: the same point, value,
    iterations and number of evaluations, from a float32 or float64 start (SciPy evaluates at points cast to
    the start's dtype and skips an evaluation at an unchanged point)."""
    from scipy.optimize import minimize
    from sklearn._loss.loss import HalfMultinomialLoss

    X, y = _problem(7, 100, 10, 3, dtype)
    target = np.searchsorted(np.unique(y), y).astype(dtype)
    objective = fast.LogisticObjective(np.ascontiguousarray(X), target, HalfMultinomialLoss(n_classes=3))
    x0 = np.zeros(3 * 11, dtype=dtype)
    if start == "random":
        x0 = np.random.default_rng(0).normal(size=3 * 11).astype(dtype)
    for reg in (1e-3, 1.0):
        ours = fast.lbfgs(objective, x0, args=(reg,), maxiter=100, gtol=1e-4)
        ref = minimize(objective, x0, args=(reg,), method="L-BFGS-B", jac=True,
                       options={"maxiter": 100, "gtol": 1e-4, "ftol": 64 * np.finfo(float).eps})  # fmt: skip
        assert np.array_equal(ours.x, ref.x) and ours.fun == ref.fun
        assert (ours.nit, ours.nfev, ours.status) == (ref.nit, ref.nfev, ref.status)
