"""Patching plots draw the table's values in the right cells."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from codetransfer.analysis import patching_plots as PP
from codetransfer.errors import CodetransferError


def _table():
    rows = []
    for recipe, scale in (("text", 1.0), ("code", 2.0)):
        for seed in (0, 1):
            for layer in range(2):
                for pos in range(3):
                    rows.append(
                        dict(
                            run=f"{recipe}-{seed}",
                            recipe=recipe,
                            seed=seed,
                            task="t",
                            site="resid_pre",
                            layer=layer,
                            head=None,
                            pos=pos,
                            pos_label=str(pos),
                            metric="denoising",
                            value=scale * (layer * 10 + pos) + seed,
                            ci_low=0.0,
                            ci_high=1.0,
                        )
                    )
                for head in range(4):
                    rows.append(
                        dict(
                            run=f"{recipe}-{seed}",
                            recipe=recipe,
                            seed=seed,
                            task="t",
                            site="head_out",
                            layer=layer,
                            head=head,
                            pos=None,
                            pos_label="all",
                            metric="denoising",
                            value=scale * (layer + head / 10),
                            ci_low=0.0,
                            ci_high=1.0,
                        )
                    )
    return pd.DataFrame(rows)  # fmt: skip


def test_layer_pos_heatmap_averages_seeds():
    ax = PP.plot_layer_pos(_table(), site="resid_pre", recipe="text")
    img = ax.images[0].get_array()
    assert img.shape == (2, 3)
    assert np.allclose(img, [[0.5, 1.5, 2.5], [10.5, 11.5, 12.5]])


def test_layer_head_side_by_side_and_difference():
    t = _table()
    axes = PP.plot_side_by_side(t, by="recipe", kind="layer_head", site="head_out")
    assert len(axes) == 2 and axes[0].images[0].get_array().shape == (2, 4)
    ax = PP.plot_difference(t, "code", "text", kind="layer_pos", site="resid_pre")
    assert np.allclose(ax.images[0].get_array(), [[0, 1, 2], [10, 11, 12]])


def test_plot_refuses_unknown_site():
    with pytest.raises(CodetransferError, match="site"):
        PP.plot_layer_pos(_table(), site="mlp_out")
