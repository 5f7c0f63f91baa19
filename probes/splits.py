"""Train/test splits that hold out whole templates or entities.

Rows of a probing set are not independent: rows from one item share a prompt, items from one template
share wording, items about one entity share its name. Splitting rows (or items) at random lets a probe
score by recognising a template or an entity it has seen. So splits here are always by *group*:

* :func:`group_splits` holds out whole groups (e.g. templates), via ``GroupShuffleSplit``, for several
  seeds;
* :func:`entity_splits` holds out a set of *entities*: every row that mentions a held-out entity is a
  test row and no training row mentions one (rows mention several entities, so this is not a plain
  group split).

There is deliberately no item-level split.

Intervals over these splits come from :func:`codetransfer.analysis.stats.cluster_bootstrap_ci`: a
percentile bootstrap that resamples test *groups* when groups are given, rows otherwise; with several
split seeds each resample draws from every seed's test set and averages over seeds, matching a value
reported as the mean over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import GroupShuffleSplit

from codetransfer.errors import CodetransferError


@dataclass(frozen=True)
class Split:
    """One held-out split."""

    seed: int
    """Seed that drew it."""
    train: np.ndarray
    """Row indices to fit on."""
    test: np.ndarray
    """Row indices to score on (no group / entity in common with ``train``)."""


def _check_labels(labels, train, seed, what):
    if labels is not None and len(np.unique(np.asarray(labels)[train])) < 2:
        raise CodetransferError(
            f"labels: the {what} split with seed {seed} leaves a single class in training; "
            "use more items or a smaller test_fraction"
        )


def group_splits(
    groups: Sequence,
    *,
    labels: Sequence | None = None,
    test_fraction: float = 0.3,
    seeds: Sequence[int] = (0, 1, 2),
) -> list[Split]:
    """Hold out about ``test_fraction`` of the groups, once per seed."""
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise CodetransferError(
            f"groups: expected at least 2 distinct groups (templates/entities) to hold some out, got {n_groups}; "
            "generate items from more templates or split by entity"
        )
    if not 0 < test_fraction < 1:
        raise CodetransferError(f"test_fraction: expected a number in (0, 1), got {test_fraction}")
    out = []
    for seed in seeds:
        gss = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=int(seed))
        train, test = next(gss.split(np.zeros(len(groups)), groups=groups))
        _check_labels(labels, train, seed, "group")
        out.append(Split(int(seed), np.sort(train), np.sort(test)))
    return out


def entity_splits(
    entities: Sequence[Sequence[str]],
    *,
    labels: Sequence | None = None,
    test_fraction: float = 0.3,
    seeds: Sequence[int] = (0, 1, 2),
) -> list[Split]:
    """Hold out entities: rows mentioning any held-out entity are test rows, the rest train.

    Entities are added to the held-out set in a random order (per seed) until at least
    ``test_fraction`` of the rows are test rows; an entity whose rows would leave less than half the
    intended training share (e.g. the entity every row is about) is never held out.
    """
    sets = [frozenset(e) for e in entities]
    universe = sorted(set().union(*sets)) if sets else []
    if len(universe) < 2:
        raise CodetransferError(
            f"entities: expected at least 2 distinct entities to hold some out, got {len(universe)}"
        )
    if not 0 < test_fraction < 1:
        raise CodetransferError(f"test_fraction: expected a number in (0, 1), got {test_fraction}")
    n = len(sets)
    out = []
    for seed in seeds:
        rng = np.random.default_rng(int(seed))
        held: set[str] = set()
        in_test = np.zeros(n, dtype=bool)
        for ent in rng.permutation(universe):
            if in_test.mean() >= test_fraction:
                break
            grown = in_test | np.array([ent in s for s in sets])
            if grown.mean() > 1 - (1 - test_fraction) / 2:
                continue  # an entity in most rows (e.g. the one asked about) cannot be held out
            held.add(ent)
            in_test = grown
        train, test = np.flatnonzero(~in_test), np.flatnonzero(in_test)
        if len(train) == 0 or len(test) == 0:
            raise CodetransferError(
                "entities: every row mentions so many entities that no entity split leaves training rows; "
                "split by template instead"
            )
        _check_labels(labels, train, seed, "entity")
        out.append(Split(int(seed), train, test))
    return out
