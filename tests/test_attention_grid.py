"""Attention tables of whole runs and checkpoints, and their plots."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch

from codetransfer.analysis import attention as A
from codetransfer.analysis import attention_plots as P
from codetransfer.errors import CodetransferError

from test_attention import _items


@pytest.fixture(scope="module")
def run_table(tiny_bridge, tiny_tokenizer):
    return A.score_run(tiny_bridge, tiny_tokenizer, {"entity_tracking": _items()}, n_seqs=4, half_len=6, n_boot=20)


def test_score_run_table_is_tidy_and_complete(run_table):
    t = run_table
    assert list(t.columns) == list(A.TABLE_COLUMNS)
    # every metric has exactly one row per head
    assert (t.groupby(["task", "rendering", "metric"]).size() == 8).all()
    metrics = set(t.metric)
    assert set(A.PATTERN_SCORES) | {"induction_loss", "ablation_mean_induction_loss"} <= metrics
    assert {"attn_to_answer_source", "ablation_mean_logit_diff", "dla_logit_diff"} <= metrics
    assert set(t[t.task == "entity_tracking"].rendering) == {"text", "code"}
    bounded = t[t.metric.isin(["previous_token", "induction", "bos", "attn_to_answer_source"])]
    assert bounded.value.between(0, 1).all()
    ok = t.dropna(subset=["ci_low"])
    assert ((ok.ci_low <= ok.value + 1e-6) & (ok.value <= ok.ci_high + 1e-6)).all()


def test_score_checkpoints_adds_steps_and_refuses_other_shapes(tmp_path):
    from conftest import TINY, save_tiny_model
    from dataclasses import replace

    a = save_tiny_model(tmp_path / "s0", seed=0)
    b = save_tiny_model(tmp_path / "s10", seed=1)

    def score(bridge, tok, items, **kw):
        return A.standard_head_scores(bridge, tok, n_seqs=2, half_len=4, n_boot=5)

    t = A.score_checkpoints({10: b, 0: a}, score=score)
    assert sorted(set(t.step)) == [0, 10] and list(t.columns[:1]) == ["step"]
    # different initialisations give different scores
    v0 = t[(t.step == 0) & (t.metric == "entropy")].value.to_numpy()
    v1 = t[(t.step == 10) & (t.metric == "entropy")].value.to_numpy()
    assert not np.allclose(v0, v1)
    c = save_tiny_model(tmp_path / "s20", cfg=replace(TINY, n_layers=3), seed=0)
    with pytest.raises(CodetransferError, match="3 layers"):
        A.score_checkpoints({0: a, 20: c}, score=score)


def _two_recipes(run_table):
    a = run_table.assign(run="a0", recipe="text", seed=0)
    b = run_table.assign(run="b0", recipe="code", seed=0, value=run_table.value * 0.5)
    return pd.concat([a, b], ignore_index=True)


def test_plots_return_axes_with_the_values(run_table):
    import matplotlib.pyplot as plt

    grid = _two_recipes(run_table)
    ax = P.plot_head_scores(grid, "previous_token", recipe="text")
    img = ax.images[0].get_array()
    want = run_table[run_table.metric == "previous_token"].pivot(index="layer", columns="head", values="value")
    assert np.allclose(img, want.values, atol=1e-6)
    ax = P.plot_head_score_difference(grid, "text", "code", "previous_token")
    assert np.allclose(ax.images[0].get_array(), want.values * 0.5, atol=1e-6)
    steps = pd.concat([run_table.assign(step=s, value=run_table.value + s) for s in (0, 100)])
    ax = P.plot_score_over_training(steps, "induction", top=2)
    assert len(ax.lines) == 2 and list(ax.lines[0].get_xdata()) == [0, 100]
    pattern = torch.rand(2, 4, 5, 5)
    ax = P.plot_attention_pattern(pattern, ["<|bos|>", "a", "b", "c", "d"], layer=1, head=2)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["<|bos|>", "a", "b", "c", "d"]
    assert np.allclose(ax.images[0].get_array(), pattern[1, 2].numpy())
    plt.close("all")


def test_one_prompt_pattern_plot(tiny_bridge, tiny_tokenizer):
    import matplotlib.pyplot as plt

    prompt = "The pen is in box A. The pen is in box"
    pattern, tokens = A.prompt_attention(tiny_bridge, tiny_tokenizer, prompt, 1, 2)
    assert tokens[0] == "<|bos|>" and "".join(tokens[1:]) == prompt
    assert pattern.shape == (len(tokens), len(tokens)) and torch.allclose(pattern.sum(-1), torch.ones(len(tokens)))
    ax = P.plot_attention_pattern(pattern, tokens)
    assert np.allclose(ax.images[0].get_array(), pattern.numpy())
    with pytest.raises(CodetransferError, match="head: expected 0..3"):
        A.prompt_attention(tiny_bridge, tiny_tokenizer, prompt, 1, 7)
    plt.close("all")


def test_plots_refuse_bad_input(run_table):
    grid = _two_recipes(run_table)
    with pytest.raises(CodetransferError, match="did you mean 'induction'"):
        P.plot_head_scores(grid, "inductoin")
    with pytest.raises(CodetransferError, match="recipe"):
        P.plot_head_score_difference(grid, "text", "cod", "induction")
    other = grid[~((grid.recipe == "code") & (grid.layer == 1))]
    with pytest.raises(CodetransferError, match="same model shape"):
        P.plot_head_score_difference(other, "text", "code", "induction")
    with pytest.raises(CodetransferError, match="step"):
        P.plot_score_over_training(grid, "induction")
    with pytest.raises(CodetransferError, match="layer 0..1"):
        P.plot_attention_pattern(torch.rand(2, 4, 3, 3), ["a", "b", "c"], layer=2, head=0)
    with pytest.raises(CodetransferError, match="square"):
        P.plot_attention_pattern(torch.rand(3, 3), ["a", "b"])
