"""Representation similarity across models: linear CKA per layer, against a seed-versus-seed baseline.

Method
------
Linear centred kernel alignment (Kornblith et al. 2019) compares two models' activations on the same
``n`` inputs, ``X`` [n, d1] and ``Y`` [n, d2], after centring each feature:

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F * ||Y^T Y||_F)

It is 1 when ``Y`` is an orthogonal transformation and isotropic rescaling of ``X`` (the same
representation in another basis), near 0 for unrelated representations, and invariant to the basis a
seed happens to learn. Two recipes' models are comparable at a layer only relative to two *seeds* of one
recipe: :func:`cka_table` labels every pair ``same_recipe`` or ``cross_recipe``, so a cross-recipe
similarity below the seed-versus-seed level says the recipes differ there, and one at that level says
they do not (and that patching between them at that layer is as legitimate as between seeds).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from codetransfer.errors import CodetransferError


def linear_cka(x: Float[Tensor, "n d1"], y: Float[Tensor, "n d2"]) -> float:
    """Linear CKA of two activation matrices over the same ``n`` inputs (rows)."""
    if x.ndim != 2 or y.ndim != 2:
        raise CodetransferError(
            f"linear_cka: expected two [n, d] matrices, got shapes {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] != y.shape[0]:
        raise CodetransferError(
            f"linear_cka: the two matrices must hold the same inputs (rows), got {x.shape[0]} and {y.shape[0]}"
        )
    if x.shape[0] < 2:
        raise CodetransferError("linear_cka: expected at least 2 inputs")
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / norm) if norm > 0 else float("nan")


def cka_table(
    activations: Mapping[str, Mapping[int, Float[Tensor, "n d"]]], recipes: Mapping[str, str]
) -> pd.DataFrame:
    """CKA of every pair of runs at every layer they share.

    ``activations``: ``{run: {layer: [n, d]}}``, every run on the same ``n`` inputs in the same order;
    ``recipes``: ``{run: recipe}``. Returns ``run_a, run_b, recipe_a, recipe_b, layer, pair, value`` with
    ``pair`` = ``same_recipe`` (two seeds of one recipe: the baseline) or ``cross_recipe``.
    """
    missing = [r for r in activations if r not in recipes]
    if missing:
        raise CodetransferError(f"cka_table: no recipe given for runs {missing}")
    rows = []
    for a, b in combinations(sorted(activations), 2):
        for layer in sorted(set(activations[a]) & set(activations[b])):
            rows.append(
                dict(
                    run_a=a,
                    run_b=b,
                    recipe_a=recipes[a],
                    recipe_b=recipes[b],
                    layer=layer,
                    pair="same_recipe" if recipes[a] == recipes[b] else "cross_recipe",
                    metric="linear_cka",
                    value=linear_cka(activations[a][layer], activations[b][layer]),
                )
            )
    return pd.DataFrame(rows, columns=["run_a", "run_b", "recipe_a", "recipe_b", "layer", "pair", "metric", "value"])
