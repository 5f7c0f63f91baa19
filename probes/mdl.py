"""Minimum description length probing with the online code (Voita & Titov, 2020).

Instead of "how accurate is the probe", MDL asks "how many bits does it take to transmit the labels
given the representations". With the *online* (prequential) code the data, in a fixed random order,
is cut at timesteps ``t_1 < t_2 < ... < t_S = n``:

1. the first ``t_1`` labels are sent with the uniform code: ``t_1 * log2(K)`` bits (K classes);
2. for each next block ``(t_i, t_{i+1}]`` a probe is trained on the first ``t_i`` rows and the block's
   labels are sent with it: ``sum -log2 p(y_j | x_j)`` bits.

The total is the online codelength. A representation in which the label is easy to extract gives a
short code *and* gets there with little data, so MDL also reflects how much data a probe needs, which
accuracy hides. ``compression = uniform_codelength / online_codelength`` with the uniform codelength
``n * log2(K)``; > 1 means the probe beats sending labels blind.

Choices made here (stated, since they change the numbers): the default block fractions are Voita &
Titov's (0.1%, 0.2%, 0.4%, 0.8%, 1.6%, 3.2%, 6.25%, 12.5%, 25%, 50%, 100%), rounded to whole rows and
deduplicated, with at least ``min_first_block`` rows in the first block. A block whose training
prefix holds a single class is coded with Laplace-smoothed class frequencies of that prefix (a valid
code; no probe can be fitted). Probe probabilities are mixed with ``epsilon`` of the uniform
distribution so that a confident mistake costs a bounded number of bits. The probe defaults to an
L2 logistic regression with fixed ``C`` (cross-validating C in every block would cost 10x and mostly
matters for the first tiny blocks); pass any classifier with ``predict_proba``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from codetransfer.errors import CodetransferError

VOITA_TITOV_FRACTIONS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class OnlineCode:
    """Result of an online-code MDL run."""

    online_bits: float
    """Total online codelength in bits."""
    uniform_bits: float
    """Codelength of the uniform code, n * log2(K)."""
    compression: float
    """uniform_bits / online_bits."""
    block_ends: tuple[int, ...]
    """Row counts t_1..t_S at which blocks end."""
    block_bits: tuple[float, ...]
    """Bits spent on each block (the first is the uniform-coded block)."""
    n_classes: int
    """K, the number of classes in the labels."""


def default_mdl_probe(C: float = 1.0, max_iter: int = 300):
    """Standardise + L2 logistic regression: the default probe of :func:`online_codelength`."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))


def _default_fit(X: np.ndarray, y: np.ndarray):
    """``default_mdl_probe().fit(X, y)``, the logistic regression fitted by :func:`probes.fast.fit_logistic`."""
    from sklearn.pipeline import Pipeline

    from codetransfer.probes.fast import fit_logistic

    lr = default_mdl_probe()[-1]
    scale = StandardScaler().fit(X)
    model = fit_logistic(scale.transform(X), y, C=lr.C, max_iter=lr.max_iter, tol=lr.tol)
    return Pipeline([("standardscaler", scale), ("logisticregression", model)])


def online_codelength(
    X: np.ndarray,
    y: Sequence,
    *,
    estimator=None,
    fractions: Sequence[float] = VOITA_TITOV_FRACTIONS,
    min_first_block: int = 2,
    epsilon: float = 1e-3,
    seed: int = 0,
) -> OnlineCode:
    """Online-code MDL of labels ``y`` given features ``X`` ``[rows, features]``.

    ``seed`` fixes the random transmission order. Raises on single-class labels, mismatched
    lengths, or fractions that are not increasing in (0, 1] ending at 1.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise CodetransferError(f"X: expected [rows, features] with {y.shape[0]} rows, got shape {X.shape}")
    classes, y_idx = np.unique(y, return_inverse=True)
    K = len(classes)
    if K < 2:
        raise CodetransferError(
            f"y: expected labels of at least 2 classes, got only {classes.tolist()!r}; MDL of a constant is 0 bits"
        )
    fr = np.asarray(fractions, dtype=float)
    if fr.ndim != 1 or len(fr) < 2 or np.any(np.diff(fr) <= 0) or fr[0] <= 0 or fr[-1] != 1.0:
        raise CodetransferError(f"fractions: expected increasing values in (0, 1] ending at 1.0, got {list(fractions)}")
    n = len(y)
    ends = sorted({max(min_first_block, int(round(f * n))) for f in fr} | {n})
    ends = [e for e in ends if e <= n]
    if len(ends) < 2:
        raise CodetransferError(f"X: {n} rows are too few for an online code; give at least {min_first_block + 1} rows")
    order = np.random.default_rng(seed).permutation(n)
    Xo, yo = X[order], y_idx[order]
    from codetransfer.probes import fast

    default = estimator is None and fast.enabled()  # the default probe through probes.fast: same numbers, faster
    estimator = default_mdl_probe() if estimator is None else estimator
    bits = [ends[0] * np.log2(K)]
    for start, stop in zip(ends[:-1], ends[1:]):
        train_y = yo[:start]
        present = np.unique(train_y)
        if len(present) < 2:
            counts = np.bincount(train_y, minlength=K) + 1.0
            proba = np.tile(counts / counts.sum(), (stop - start, 1))
        else:
            model = _default_fit(Xo[:start], train_y) if default else clone(estimator).fit(Xo[:start], train_y)
            p = model.predict_proba(Xo[start:stop])
            proba = np.zeros((stop - start, K))
            proba[:, np.asarray(model.classes_, dtype=int)] = p
        proba = (1 - epsilon) * proba + epsilon / K
        bits.append(float(-np.log2(proba[np.arange(stop - start), yo[start:stop]]).sum()))
    online = float(np.sum(bits))
    uniform = float(n * np.log2(K))
    return OnlineCode(online, uniform, uniform / online, tuple(int(e) for e in ends), tuple(float(b) for b in bits), K)
