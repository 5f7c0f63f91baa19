"""The probes' logistic regressions without scikit-learn's per-call overhead, with the same numbers.

A probing sweep fits thousands of small L2 logistic regressions (a few hundred rows, tens of
features): every linear probe is a ``LogisticRegressionCV`` (8 values of C on 3 inner folds, then a
refit), every MDL block a ``LogisticRegression``. At this size scikit-learn spends most of its time
outside the arithmetic: array-API dispatch in each loss/gradient evaluation of the L-BFGS solver,
input validation and label re-encoding in each log-loss score. This module runs *the same
computation* without that overhead:

* :func:`loss_gradient` is ``LinearModelLoss.loss_gradient`` (multinomial or binomial half loss, no
  sample weights, intercept fitted) on NumPy arrays: the same Cython point-wise loss and the same
  matrix products on arrays of the same dtype and memory layout;
* :func:`lbfgs` is SciPy's ``_minimize_lbfgsb`` driver loop (same ``setulb`` calls, options and
  evaluation points, including the cast of the evaluation point to the starting point's dtype);
* :func:`logistic_path` is ``_logistic_regression_path`` (lbfgs, l2) with warm starts along Cs;
* :func:`fit_logistic_cv` is ``LogisticRegressionCV.fit`` (``scoring="neg_log_loss"``, refit on the
  C with the best summed fold score, warm-started from the folds' mean coefficients) and
  :func:`fit_logistic` is ``LogisticRegression.fit``; both return the scikit-learn estimator with
  its fitted attributes set, so prediction goes through scikit-learn unchanged.

Every step is a transcription of the scikit-learn / SciPy code (versions pinned by the project), so
coefficients agree bit for bit; ``tests/test_probes_fast.py`` checks that against scikit-learn on
binary, multiclass, float32 and float64 problems, so a change in either library that breaks the
equality fails there. Only the plain case is taken here (lbfgs, l2, ``class_weight=None``, no sample
weights, dense input); callers fall back to scikit-learn for anything else.
"""

from __future__ import annotations

import contextlib
import numbers

import numpy as np
from scipy import special
from scipy.optimize import OptimizeResult
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

try:  # scikit-learn's private loss classes and helpers (the fast path re-implements around them)
    from sklearn._loss.loss import HalfBinomialLoss, HalfMultinomialLoss
    from sklearn.utils._array_api import get_namespace
    from sklearn.utils.optimize import _check_optimize_result
except ImportError:  # pragma: no cover - another scikit-learn layout: the probes use scikit-learn itself
    get_namespace = None

try:  # SciPy's L-BFGS-B step routine, as its own driver calls it
    from scipy.optimize import _lbfgsb
    from scipy.optimize._lbfgsb_py import status_messages as _STATUS, task_messages as _TASK
except ImportError:  # pragma: no cover - another SciPy layout: use scipy.optimize.minimize itself
    _lbfgsb = None

_xp = get_namespace(np.zeros(1))[0] if get_namespace else None  # the namespace scikit-learn uses for NumPy input
_ENABLED = [get_namespace is not None]


def enabled() -> bool:
    """Whether the probes use this module (True unless inside :func:`reference`)."""
    return _ENABLED[-1]


@contextlib.contextmanager
def reference():
    """Inside this context the probes fit through scikit-learn itself (the reference that
    ``bench/probing.py`` and the tests compare this module with)."""
    _ENABLED.append(False)
    try:
        yield
    finally:
        _ENABLED.pop()


_CONTROLLER: list = [None, -1]  # a ThreadpoolController and the len(sys.modules) it was made at


def blas_threads(n: int | None):
    """``threadpoolctl.threadpool_limits(n)`` (None: no change), without re-scanning the loaded
    libraries on every call: the controller is made again only after new modules were imported."""
    import sys

    from threadpoolctl import ThreadpoolController

    if n is None:
        return contextlib.nullcontext()
    if _CONTROLLER[0] is None or _CONTROLLER[1] != len(sys.modules):
        _CONTROLLER[:] = [ThreadpoolController(), len(sys.modules)]
    return _CONTROLLER[0].limit(limits=n)


_EPS = np.finfo(float).eps
_CONVERGENCE_MSG = (
    "Please also refer to the documentation for alternative solver options:\n"
    "    https://scikit-learn.org/stable/modules/linear_model.html#logistic-regression"
)


# ---------------------------------------------------------------------- loss and solver
class LogisticObjective:
    """Mean half log-loss plus ``l2/2 |w|^2`` and its gradient, as ``LinearModelLoss.loss_gradient``.

    For one problem (rows ``X`` ``[rows, features]``, float64 or float32, C-contiguous; targets ``y``
    ``[rows]`` in X's dtype: class indices for ``HalfMultinomialLoss``, 0/1 for
    ``HalfBinomialLoss``), called as ``objective(coef, l2_reg_strength) -> (loss, grad)`` with
    ``coef`` ``[classes * (features + 1)]`` (classes contiguous per feature, intercepts last; binary:
    ``[features + 1]``) and ``l2_reg_strength = 1 / (C * rows)``. The point-wise buffers are kept
    between calls; every operation is scikit-learn's, on arrays of the same dtype and layout.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, base_loss):
        self.X = X
        self.y = y
        self.n_samples, self.n_features = X.shape
        self.n_classes = base_loss.n_classes
        self.multiclass = base_loss.is_multiclass
        self.closs = base_loss.closs
        self.loss_out = np.empty_like(y)
        self.gradient_out = (
            np.empty((self.n_samples, self.n_classes), dtype=X.dtype)
            if self.multiclass
            else np.empty(self.n_samples, dtype=X.dtype)
        )

    def __call__(self, coef: np.ndarray, l2_reg_strength: float):
        X, n_samples, n_features = self.X, self.n_samples, self.n_features
        loss_out, grad_pointwise = self.loss_out, self.gradient_out
        cast = coef.dtype != X.dtype  # np.asarray(w, dtype=X.dtype) is w itself otherwise
        if not self.multiclass:
            weights = coef[:-1]
            raw = X @ (np.array(weights, dtype=X.dtype) if cast else weights)
            raw += np.array(coef[-1], dtype=X.dtype) if cast else coef[-1]
            norm2_w = weights @ weights
        else:
            # coef is the F-ravel of W = [classes, features + 1]: W[:, :-1].T is coef[:k * features] viewed
            # as a C-contiguous [features, classes] array (the same memory and strides as scikit-learn's
            # weights.T) and W[:, -1] is coef's contiguous tail
            n_classes = self.n_classes
            flat = coef[: n_classes * n_features]
            weights_t = flat.reshape((n_features, n_classes))
            intercept = coef[n_classes * n_features :]
            raw = X @ (np.array(weights_t, dtype=X.dtype) if cast else weights_t)
            raw += np.array(intercept, dtype=X.dtype) if cast else intercept
            norm2_w = np.dot(flat, flat)
        # positional: loss_gradient(y_true, raw_prediction, sample_weight, loss_out, gradient_out, n_threads)
        self.closs.loss_gradient(self.y, raw, None, loss_out, grad_pointwise, 1)
        loss = float(np.add.reduce(loss_out) / n_samples)
        loss += float(0.5 * l2_reg_strength * norm2_w)
        grad_pointwise /= n_samples
        if not self.multiclass:
            grad = np.empty_like(coef, dtype=weights.dtype)
            grad[:n_features] = X.T @ grad_pointwise + l2_reg_strength * weights
            grad[-1] = np.add.reduce(grad_pointwise)
            return loss, grad
        grad = np.empty(coef.shape[0], dtype=coef.dtype)  # the F-ravel of a [classes, features + 1] array
        data = grad_pointwise.T @ X
        data += l2_reg_strength * weights_t.T
        grad[: n_classes * n_features].reshape((n_features, n_classes))[...] = data.T
        grad[n_classes * n_features :] = np.add.reduce(grad_pointwise, axis=0)
        return loss, grad


def loss_gradient(coef, X, y, base_loss, l2_reg_strength):
    """One evaluation of :class:`LogisticObjective` (``LinearModelLoss.loss_gradient`` without sample
    weights, intercept fitted); ``coef`` 1-D as there."""
    return LogisticObjective(X, y, base_loss)(coef, l2_reg_strength)


def lbfgs(
    fun,
    x0,
    args=(),
    *,
    maxiter: int,
    gtol: float,
    maxls: int = 50,
    ftol: float = 64 * _EPS,
    maxcor: int = 10,
    maxfun: int = 15000,
) -> OptimizeResult:
    """Unbounded L-BFGS-B, step for step SciPy's ``minimize(method="L-BFGS-B", jac=True)``.

    ``fun(x, *args) -> (f, g)``. Like SciPy, ``fun`` is evaluated at ``x0`` first, at points cast to
    ``x0``'s floating dtype, and not again at an unchanged point. Returns ``x, fun, nit, nfev,
    status`` (0 converged, 1 iteration/evaluation limit, 2 other) and ``message``.
    """
    if _lbfgsb is None:  # pragma: no cover
        from scipy.optimize import minimize

        return minimize(
            fun,
            x0,
            args=args,
            method="L-BFGS-B",
            jac=True,
            options={"maxiter": maxiter, "maxls": maxls, "gtol": gtol, "ftol": ftol},
        )
    x0 = np.atleast_1d(np.asarray(x0))
    if x0.dtype.kind in np.typecodes["AllInteger"]:
        x0 = np.asarray(x0, dtype=float)
    x0 = np.asarray(x0).ravel()
    (n,) = x0.shape
    x_dtype = x0.dtype if np.issubdtype(x0.dtype, np.floating) else np.float64
    at = x0.astype(x_dtype)  # ScalarFunction evaluates at x0 on creation (fun must not modify its x)
    f_at, g_at = fun(at, *args)
    at_bytes = at.astype(np.float64).tobytes()  # the point last evaluated, as float64 (x's dtype)
    nfev = 1

    nbd = np.zeros(n, np.int32)
    low_bnd = np.zeros(n, np.float64)
    upper_bnd = np.zeros(n, np.float64)
    x = np.array(x0, dtype=np.float64)
    f = np.array(0.0, dtype=np.float64)
    g = np.zeros((n,), dtype=np.float64)
    m = maxcor
    wa = np.zeros(2 * m * n + 5 * n + 11 * m * m + 8 * m, np.float64)
    iwa = np.zeros(3 * n, dtype=np.int32)
    task = np.zeros(2, dtype=np.int32)
    ln_task = np.zeros(2, dtype=np.int32)
    lsave = np.zeros(4, dtype=np.int32)
    isave = np.zeros(44, dtype=np.int32)
    dsave = np.zeros(29, dtype=np.float64)
    factr = ftol / _EPS
    n_iterations = 0
    while True:
        g = g.astype(np.float64)
        _lbfgsb.setulb(
            m, x, low_bnd, upper_bnd, nbd, f, g, factr, gtol, wa, iwa, task, lsave, isave, dsave, maxls, ln_task
        )
        state = task[0]
        if state == 3:
            # SciPy re-evaluates unless np.array_equal(x, at), i.e. x equals at cast back to float64; equal
            # bytes are equal values, and a point that differs only in the sign of a zero (the one case bytes
            # tell apart) does not occur on an unbounded L-BFGS path, where x equals the last point at the start
            if x.tobytes() != at_bytes:
                at = x.astype(x_dtype)
                at_bytes = (at if x_dtype == np.float64 else at.astype(np.float64)).tobytes()
                f_at, g_at = fun(at, *args)
                nfev += 1
            f, g = f_at, g_at
        elif state == 1:
            n_iterations += 1
            if n_iterations >= maxiter:
                task[0], task[1] = 5, 504
            elif nfev > maxfun:
                task[0], task[1] = 5, 502
        else:
            break
    if task[0] == 4:
        status = 0
    elif nfev > maxfun or n_iterations >= maxiter:
        status = 1
    else:
        status = 2
    message = _STATUS[task[0]] + ": " + _TASK[task[1]]
    return OptimizeResult(x=x, fun=f, nit=n_iterations, nfev=nfev, status=status, message=message, success=status == 0)


# ---------------------------------------------------------------------- regularisation path
def logistic_path(X, y_idx, n_classes: int, Cs, *, max_iter: int, tol: float = 1e-4, coef=None):
    """L2 logistic regressions along ``Cs`` (each warm-started from the last), as
    ``_logistic_regression_path(solver="lbfgs")``.

    Args:
        X: ``[rows, features]`` float64 or float32, C-contiguous.
        y_idx: ``[rows]`` class index of each row among ``n_classes`` classes (all of the problem's
            classes, present in these rows or not).
        Cs: the inverse regularisation strengths (an int ``k``: ``logspace(-4, 4, k)``).
        coef: optional start, ``[classes, features + 1]`` (binary: ``[features + 1]``).

    Returns:
        ``(coefs, Cs, n_iter)``: ``coefs`` is ``[len(Cs), classes, features + 1]`` (binary:
        ``[len(Cs), features + 1]``, the positive class's), intercept last.
    """
    if isinstance(Cs, numbers.Integral):
        Cs = np.logspace(-4, 4, Cs)
    n_samples, n_features = X.shape
    is_binary = n_classes == 2
    if is_binary:
        w0 = np.zeros(n_features + 1, dtype=X.dtype)
        target = _xp.ones(y_idx.shape, dtype=X.dtype)
        target[~(y_idx == 1)] = 0.0
        base_loss = HalfBinomialLoss()
    else:
        target = _xp.asarray(y_idx, dtype=X.dtype)
        w0 = np.zeros((n_classes, n_features + 1), order="F", dtype=X.dtype)
        base_loss = HalfMultinomialLoss(n_classes=n_classes)
    if coef is not None:
        if is_binary:
            w0[:] = coef if coef.ndim == 1 else coef[0]
        else:
            w0[:, : coef.shape[1]] = coef
    if not is_binary:
        w0 = w0.ravel(order="F")
    coefs = []
    n_iter = _xp.zeros(len(Cs), dtype=_xp.int32)
    objective = LogisticObjective(X, target, base_loss)
    for i, C in enumerate(Cs):
        l2_reg_strength = 1.0 / (C * n_samples)
        res = lbfgs(objective, w0, args=(l2_reg_strength,), maxiter=max_iter, gtol=tol)
        n_iter_i = _check_optimize_result("lbfgs", res, max_iter, extra_warning_msg=_CONVERGENCE_MSG)
        w0 = res.x
        w = w0 if is_binary else np.reshape(w0, (n_classes, -1), order="F")
        coefs.append(_xp.asarray(w.copy(order="K"), dtype=X.dtype))
        n_iter[i] = n_iter_i
    return _xp.stack(coefs), _xp.asarray(Cs), n_iter


def _encode(y, classes):
    """Index of each label in the sorted ``classes`` (``LabelEncoder.transform``)."""
    return np.searchsorted(classes, y)


def _neg_log_loss(X_test, y_test_idx, w, n_classes: int) -> float:
    """The ``neg_log_loss`` score of path coefficients ``w`` on held-out rows, as
    ``_log_reg_scoring_path`` computes it (predict_proba, then ``-log_loss(labels=classes)``)."""
    if n_classes == 2:
        coef, intercept = w[..., :-1], w[..., -1]
        prob = X_test @ coef + intercept
        prob = special.expit(prob, out=prob)
        y_prob = _xp.stack([1 - prob, prob], axis=1)[:, 1]
        y_prob = y_prob[:, np.newaxis]
        y_prob = _xp.concat([1 - y_prob, y_prob], axis=1)
        onehot = (y_test_idx == 1).astype(int)[:, np.newaxis]
        onehot = _xp.concat((1 - onehot, onehot), axis=1)
    else:
        coef, intercept = w[..., :-1], w[..., -1]
        y_prob = X_test @ coef.T + intercept
        y_prob -= _xp.reshape(_xp.max(y_prob, axis=1), (-1, 1))
        np.exp(y_prob, out=np.asarray(y_prob))
        y_prob /= _xp.reshape(_xp.sum(y_prob, axis=1), (-1, 1))
        onehot = np.zeros((len(y_test_idx), n_classes), dtype=int)
        onehot[np.arange(len(y_test_idx)), y_test_idx] = 1
    eps = _xp.finfo(y_prob.dtype).eps
    y_prob = np.clip(y_prob, eps, 1 - eps)  # exact, as the array-API clip
    onehot = _xp.astype(onehot, y_prob.dtype, copy=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        temp = onehot * _xp.log(y_prob)
    loss = -_xp.sum(_xp.where(onehot == 0.0, _xp.asarray(0.0, dtype=temp.dtype), temp), axis=1)
    return -1 * float(_xp.asarray(np.average(loss)))


def fit_logistic_cv(
    X, y, folds, *, Cs=8, max_iter: int = 100, tol: float = 1e-4, random_state=None
) -> LogisticRegressionCV:
    """``LogisticRegressionCV(Cs, cv=folds, l1_ratios=(0.0,), scoring="neg_log_loss", max_iter,
    random_state, use_legacy_attributes=False).fit(X, y)``, returned fitted.

    ``folds`` is a list of ``(train, test)`` row-index pairs (the inner CV splits). The score of
    each C is its held-out log-loss summed over folds; the refit on all rows starts from the mean of
    the folds' coefficients at the best C.
    """
    X = np.asarray(X, dtype=np.float64, order="C")
    y = np.asarray(y)
    n_features = X.shape[1]
    classes = np.unique(y)
    n_classes = len(classes)
    if n_classes < 2:
        raise ValueError(
            f"This solver needs samples of at least 2 classes in the data, but the data contains "
            f"only one class: {classes[0]}."
        )
    y_idx = _encode(y, classes)
    paths, all_scores, n_iters = [], [], []
    Cs_ = None
    for train, test in folds:
        coefs, Cs_, n_iter = logistic_path(X[train], y_idx[train], n_classes, Cs, max_iter=max_iter, tol=tol)
        X_test, y_test = X[test], y_idx[test]
        all_scores.append(np.array([_neg_log_loss(X_test, y_test, w, n_classes) for w in coefs]))
        paths.append(coefs)
        n_iters.append(n_iter)
    n_folds, n_l1 = len(paths), 1
    is_binary = n_classes == 2
    k = 1 if is_binary else n_classes
    if is_binary:
        coefs_paths = np.reshape(paths, (n_folds, n_l1, len(Cs_), -1))
        coefs_paths = np.swapaxes(coefs_paths, 1, 2)[None, ...]
    else:
        coefs_paths = np.reshape(paths, (n_folds, n_l1, len(Cs_), n_classes, -1))
        coefs_paths = np.moveaxis(coefs_paths, (0, 1, 3), (1, 3, 0))
    n_iter_ = np.swapaxes(np.reshape(n_iters, (n_folds, n_l1, len(Cs_))), 1, 2)[None, ...]
    scores = np.swapaxes(np.reshape(all_scores, (n_folds, n_l1, len(Cs_))), 1, 2)[None, ...]
    scores = np.tile(scores, (k, 1, 1, 1))
    scores_sum = scores[0].sum(axis=0)
    best_index = np.unravel_index(np.argmax(scores_sum), scores_sum.shape)
    C_ = Cs_[best_index[0]]
    if is_binary:
        coef_init = np.mean(coefs_paths[0, :, *best_index, :], axis=0)
    else:
        coef_init = np.mean(coefs_paths[:, :, *best_index, :], axis=1)
    w, _, _ = logistic_path(X, y_idx, n_classes, [C_], max_iter=max_iter, tol=tol, coef=coef_init)
    w = w[0]

    model = LogisticRegressionCV(
        Cs=Cs,
        cv=folds,
        l1_ratios=(0.0,),
        scoring="neg_log_loss",
        max_iter=max_iter,
        tol=tol,
        random_state=random_state,
        use_legacy_attributes=False,
    )
    model.classes_ = classes
    model.n_features_in_ = n_features
    model.Cs_ = Cs_
    model.l1_ratios_ = np.asarray((0.0,))
    model.l1_ratio_ = 0.0
    model.C_ = float(C_)
    if is_binary:
        model.coef_ = w[:n_features][None, :]
        model.intercept_ = np.zeros(1)
        model.intercept_[0] = w[-1]
    else:
        model.coef_ = w[:, :n_features]
        model.intercept_ = w[:, -1]
    newpaths = coefs_paths.reshape(k, n_folds, len(Cs_), n_l1, n_features + 1)
    model.coefs_paths_ = np.moveaxis(newpaths, (0, 1, 3), (3, 0, 1))
    model.scores_ = np.moveaxis(scores[0], (1, 2), (2, 1))
    model.n_iter_ = np.moveaxis(n_iter_[0], (1, 2), (2, 1))
    return model


def fit_logistic(
    X, y, *, C: float = 1.0, max_iter: int = 100, tol: float = 1e-4, random_state=None
) -> LogisticRegression:
    """``LogisticRegression(C, max_iter, random_state).fit(X, y)`` (lbfgs, l2), returned fitted."""
    X = np.asarray(X)
    if X.dtype not in (np.float64, np.float32):
        X = X.astype(np.float64)
    X = np.ascontiguousarray(X)
    y = np.asarray(y)
    classes = np.unique(y)
    n_classes = len(classes)
    if n_classes < 2:
        raise ValueError(
            f"This solver needs samples of at least 2 classes in the data, but the data contains "
            f"only one class: {classes[0]!r}"
        )
    coefs, _, n_iter = logistic_path(X, _encode(y, classes), n_classes, [C], max_iter=max_iter, tol=tol)
    model = LogisticRegression(C=C, max_iter=max_iter, tol=tol, random_state=random_state)
    model.classes_ = classes
    model.n_features_in_ = X.shape[1]
    model.n_iter_ = _xp.asarray(n_iter, dtype=_xp.int32)
    coef = coefs[0, ...]
    if n_classes == 2:
        model.intercept_ = coef[-1:]
        model.coef_ = coef[:-1][None, :]
    else:
        model.intercept_ = coef[:, -1]
        model.coef_ = coef[:, :-1]
    return model
