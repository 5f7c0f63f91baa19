"""Probing classifiers and regressors as scikit-learn estimators.

A probe is a small supervised model fitted on activations ``X`` (``[rows, features]``) to predict a
property ``y`` of the input. These classes only *compose* scikit-learn: each builds a
``Pipeline(StandardScaler, <sklearn model>)`` in ``fit`` and delegates to it, so that

* ``LinearProbe`` is logistic regression on standardised features with the inverse regularisation
  ``C`` chosen by cross-validated log-loss (``LogisticRegressionCV``). With ``groups`` given to
  ``fit`` the inner cross-validation is a ``GroupKFold``, so C is never chosen on rows that share a
  template or entity with the rows it is scored on. Without ``class_weight`` the fit runs through
  ``probes.fast`` (scikit-learn's computation step for step, bit-identical coefficients, a fraction
  of the time on probe-sized problems); ``probes.fast.reference()`` makes it use scikit-learn itself.
* ``RidgeProbe`` is ridge regression (for scalar properties such as a count), alpha by CV
  (``RidgeCV``; efficient leave-one-out when ``cv`` is None).
* ``MLPProbe`` is a one-hidden-layer MLP classifier (a higher-capacity probe; compare its
  selectivity with the linear probe's before reading anything into its accuracy).

They follow scikit-learn conventions: ``__init__`` only stores parameters, ``fit`` returns ``self``,
learned attributes end in ``_`` (``pipeline_``, ``classes_``, ``n_features_in_``, ``C_`` /
``alpha_``), and ``sklearn.utils.estimator_checks`` passes (see the tests). They can be cloned,
grid-searched and cross-validated like any sklearn estimator.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeCV
from sklearn.model_selection import GroupKFold, StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from threadpoolctl import threadpool_limits
from sklearn.utils.validation import check_is_fitted, validate_data

from codetransfer.errors import CodetransferError, did_you_mean
from codetransfer.probes import fast


class _PipelineProbe(BaseEstimator):
    """Shared delegation to a fitted ``pipeline_``."""

    def _check(self, X):
        check_is_fitted(self, "pipeline_")
        return validate_data(self, X, reset=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        return tags


class _ClassifierProbe(ClassifierMixin, _PipelineProbe):
    def _fit_pipeline(self, X, y, model, sample_weight=None):
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(
                f"y: expected labels of at least 2 classes, got 1 class ({self.classes_[0]!r}); "
                "a probe cannot learn from a single class: choose a property that varies"
            )
        self.pipeline_ = Pipeline([("scale", StandardScaler()), ("model", model)])
        with warnings.catch_warnings(), threadpool_limits(self.blas_threads):
            if not self.warn_convergence:
                warnings.simplefilter("ignore", ConvergenceWarning)
            if sample_weight is None:
                self.pipeline_.fit(X, y)
            else:
                self.pipeline_.fit(X, y, scale__sample_weight=sample_weight, model__sample_weight=sample_weight)
        return self

    def predict(self, X):
        X = self._check(X)
        return self.pipeline_.predict(X)

    def predict_proba(self, X):
        X = self._check(X)
        return self.pipeline_.predict_proba(X)

    def predict_log_proba(self, X):
        return np.log(np.clip(self.predict_proba(X), 1e-300, None))


class LinearProbe(_ClassifierProbe):
    """Logistic-regression probe on standardised features, C chosen by cross-validation.

    Parameters:
        Cs: number of C values on a log grid (int) or the grid itself (as ``LogisticRegressionCV``).
        cv: number of inner folds for choosing C (capped by the smallest class / group count); with
            fewer than 2 rows in some class, C is fixed at 1 instead.
        max_iter: lbfgs iterations.
        class_weight: None or "balanced".
        warn_convergence: pass sklearn's ConvergenceWarning on (False silences it).
        random_state: seeds fold shuffling.
        blas_threads: BLAS/OpenMP threads while fitting (1 is fastest for probe-sized problems;
            None leaves the process setting alone).
    """

    def __init__(
        self, Cs=8, cv=3, max_iter=200, class_weight=None, warn_convergence=False, random_state=0, blas_threads=1
    ):
        self.Cs = Cs
        self.blas_threads = blas_threads
        self.cv = cv
        self.max_iter = max_iter
        self.class_weight = class_weight
        self.warn_convergence = warn_convergence
        self.random_state = random_state

    def fit(self, X, y, groups=None):
        """Fit on ``X`` ``[rows, features]`` and labels ``y``; ``groups`` makes the inner CV grouped."""
        y_arr = np.asarray(y)
        _, counts = np.unique(y_arr, return_counts=True)
        n_folds = int(min(self.cv, counts.min())) if len(counts) else 0
        if groups is not None:
            n_folds = min(n_folds if n_folds else self.cv, len(np.unique(np.asarray(groups))))
        if n_folds >= 2:
            if groups is not None:
                cv = list(GroupKFold(n_splits=n_folds).split(np.zeros(len(y_arr)), y_arr, groups))
            else:
                cv = StratifiedKFold(n_folds, shuffle=True, random_state=self.random_state)
        if self.class_weight is None and fast.enabled():  # the plain case, without scikit-learn's overhead
            return self._fit_fast(X, y, cv if n_folds >= 2 else None)
        if n_folds >= 2:
            model = LogisticRegressionCV(
                Cs=self.Cs,
                cv=cv,
                l1_ratios=(0.0,),
                scoring="neg_log_loss",
                max_iter=self.max_iter,
                class_weight=self.class_weight,
                random_state=self.random_state,
                use_legacy_attributes=False,
            )
        else:  # too few rows per class for inner CV: a fixed, moderate C
            model = LogisticRegression(
                C=1.0, max_iter=self.max_iter, class_weight=self.class_weight, random_state=self.random_state
            )
        self._fit_pipeline(X, y, model)
        fitted = self.pipeline_.named_steps["model"]
        self.n_iter_ = int(np.max(fitted.n_iter_))
        self.C_ = float(np.ravel(fitted.C_)[0]) if hasattr(fitted, "C_") else float(fitted.C)
        return self

    def _fit_fast(self, X, y, cv):
        """What :meth:`fit` computes, through :mod:`codetransfer.probes.fast` (equal coefficients)."""
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(
                f"y: expected labels of at least 2 classes, got 1 class ({self.classes_[0]!r}); "
                "a probe cannot learn from a single class: choose a property that varies"
            )
        with warnings.catch_warnings(), fast.blas_threads(self.blas_threads):
            if not self.warn_convergence:
                warnings.simplefilter("ignore", ConvergenceWarning)
            scale = StandardScaler().fit(X)
            Xt = scale.transform(X)
            if cv is None:
                model = fast.fit_logistic(Xt, y, C=1.0, max_iter=self.max_iter, random_state=self.random_state)
            else:
                folds = cv if isinstance(cv, list) else list(cv.split(np.asarray(Xt, dtype=np.float64), y))
                model = fast.fit_logistic_cv(
                    Xt, y, folds, Cs=self.Cs, max_iter=self.max_iter, random_state=self.random_state
                )
        self.pipeline_ = Pipeline([("scale", scale), ("model", model)])
        self.n_iter_ = int(np.max(model.n_iter_))
        self.C_ = float(np.ravel(model.C_)[0]) if hasattr(model, "C_") else float(model.C)
        return self

    def decision_function(self, X):
        X = self._check(X)
        return self.pipeline_.decision_function(X)

    @property
    def coef_(self):
        """Weights in the original (unstandardised) feature space, ``[classes or 1, features]``."""
        check_is_fitted(self, "pipeline_")
        scale = self.pipeline_.named_steps["scale"].scale_
        return self.pipeline_.named_steps["model"].coef_ / scale


class MLPProbe(_ClassifierProbe):
    """One-hidden-layer MLP probe on standardised features (a higher-capacity control on linearity).

    Parameters:
        hidden: hidden width.
        alpha: L2 penalty.
        max_iter: training epochs (adam).
        early_stopping: hold out 10% of the training rows to stop early.
        warn_convergence: pass sklearn's ConvergenceWarning on.
        random_state: seeds initialisation and batching.
        blas_threads: BLAS/OpenMP threads while fitting (None: leave alone).
    """

    def __init__(
        self,
        hidden=64,
        alpha=1e-3,
        max_iter=300,
        early_stopping=False,
        warn_convergence=False,
        random_state=0,
        blas_threads=1,
    ):
        self.hidden = hidden
        self.blas_threads = blas_threads
        self.alpha = alpha
        self.max_iter = max_iter
        self.early_stopping = early_stopping
        self.warn_convergence = warn_convergence
        self.random_state = random_state

    def fit(self, X, y, groups=None):
        model = MLPClassifier(
            hidden_layer_sizes=(self.hidden,),
            alpha=self.alpha,
            max_iter=self.max_iter,
            early_stopping=self.early_stopping,
            random_state=self.random_state,
        )
        self._fit_pipeline(X, y, model)
        self.n_iter_ = int(self.pipeline_.named_steps["model"].n_iter_)
        return self


class RidgeProbe(RegressorMixin, _PipelineProbe):
    """Ridge-regression probe on standardised features, alpha chosen by (leave-one-out) CV.

    Parameters:
        alphas: the grid of penalties.
        cv: None for efficient leave-one-out, or a number of folds.
    """

    def __init__(self, alphas=(1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0), cv=None):
        self.alphas = alphas
        self.cv = cv

    def fit(self, X, y, groups=None, sample_weight=None):
        X, y = validate_data(self, X, y, y_numeric=True)
        self.pipeline_ = Pipeline([("scale", StandardScaler()), ("model", RidgeCV(alphas=self.alphas, cv=self.cv))])
        if sample_weight is None:
            self.pipeline_.fit(X, y)
        else:
            self.pipeline_.fit(X, y, scale__sample_weight=sample_weight, model__sample_weight=sample_weight)
        self.alpha_ = float(self.pipeline_.named_steps["model"].alpha_)
        return self

    def predict(self, X):
        X = self._check(X)
        return self.pipeline_.predict(X)


PROBES = {"linear": LinearProbe, "mlp": MLPProbe, "ridge": RidgeProbe}
"""Probe names used by sweeps and the CLI."""


def make_probe(name: str, **params) -> BaseEstimator:
    """A fresh probe by name (``linear``, ``mlp``, ``ridge``)."""
    if name not in PROBES:
        raise CodetransferError(
            f"probe: unknown probe '{name}'; expected one of {', '.join(PROBES)}{did_you_mean(name, PROBES)}"
        )
    return PROBES[name](**params)
