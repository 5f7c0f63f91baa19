"""Control tasks and label baselines: is the probe reading the representation or memorising?

A probe's accuracy alone does not say that a representation *encodes* a property: an expressive
probe can memorise. Hewitt & Liang (2019) pair every probing task with a *control task* that has the
same output space and the same input structure but labels that the representation cannot "know":
every word *type* (here: the entity, token or template a row is about) gets a random label, drawn
once and fixed, from the task's label distribution. A probe can score well on the control task only
by memorising type → label. **Selectivity** is task accuracy minus control accuracy on the same
held-out rows; a good probe is accurate *and* selective.

The label-shuffle baseline permutes the labels across rows (optionally within groups), destroying
any relation between activation and label while keeping the label distribution; a probe that beats
it has found *something*, and MDL (``probes.mdl``) says how much.

All randomness comes from an explicit ``seed`` (``numpy.random.default_rng``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from codetransfer.errors import CodetransferError


def control_labels(types: Sequence, labels: Sequence, seed: int = 0, *, distribution: str = "empirical") -> np.ndarray:
    """Hewitt & Liang control task: one random, fixed label per type.

    Args:
        types: per row, the type whose label is drawn (entity name, token id, template...).
        labels: per row, the real task label (defines the output space and, with
            ``distribution="empirical"``, the label frequencies to sample from).
        seed: the control task's seed (a different seed is a different control task).
        distribution: ``"empirical"`` (sample the task's label frequencies, as Hewitt & Liang) or
            ``"uniform"`` over the label set.

    Returns:
        per row, the control label (same dtype as ``labels``).
    """
    types = np.asarray(types)
    labels = np.asarray(labels)
    if types.shape[0] != labels.shape[0]:
        raise CodetransferError(f"types: expected one type per label ({labels.shape[0]}), got {types.shape[0]}")
    if distribution not in ("empirical", "uniform"):
        raise CodetransferError(f"distribution: expected 'empirical' or 'uniform', got '{distribution}'")
    classes, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum() if distribution == "empirical" else None
    rng = np.random.default_rng(seed)
    uniq, inverse = np.unique(types, return_inverse=True)
    drawn = rng.choice(len(classes), size=len(uniq), p=p)
    return classes[drawn[inverse.ravel()]]


def shuffled_labels(labels: Sequence, seed: int = 0, groups: Sequence | None = None) -> np.ndarray:
    """Permute labels across rows (within each group when ``groups`` is given)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if groups is None:
        return labels[rng.permutation(len(labels))]
    groups = np.asarray(groups)
    if groups.shape[0] != labels.shape[0]:
        raise CodetransferError(f"groups: expected one group per label ({labels.shape[0]}), got {groups.shape[0]}")
    out = labels.copy()
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        out[idx] = labels[idx[rng.permutation(len(idx))]]
    return out


def selectivity(task_accuracy: float | np.ndarray, control_accuracy: float | np.ndarray):
    """Hewitt & Liang selectivity: task accuracy minus control-task accuracy."""
    return np.asarray(task_accuracy) - np.asarray(control_accuracy)


def majority_accuracy(train_labels: Sequence, test_labels: Sequence) -> float:
    """Accuracy of always predicting the most frequent training label (the floor to beat)."""
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    classes, counts = np.unique(train_labels, return_counts=True)
    return float(np.mean(test_labels == classes[np.argmax(counts)]))
