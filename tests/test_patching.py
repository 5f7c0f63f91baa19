"""Activation patching: parity with TransformerLens, exact restorations, a planted mechanism."""

from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as tlp

from codetransfer.analysis import patching as P

B, T = 3, 6
PLANTED_HEAD = 2


def _pair(seed=0, vocab=300, corrupt_at=2):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, vocab, (B, T), generator=g)
    corrupted = clean.clone()
    corrupted[:, corrupt_at] = (clean[:, corrupt_at] + 1 + torch.randint(0, 50, (B,), generator=g)) % vocab
    metric = P.LogitDiff(torch.full((B,), T - 1), torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10]))
    return clean, corrupted, metric


@pytest.fixture(scope="module", params=["gpt_neox", "llama"])
def tiny_bridge(request, tmp_path_factory):
    """The tiny random model as a bridge in both architectures of the presets (GPT-NeoX: LayerNorm, biases,
    packed qkv; Llama, the tiny grid's: RMSNorm, no biases, gated MLP), so every parity test runs on both."""
    import dataclasses

    from conftest import TINY, save_tiny_model
    from codetransfer.trained.loading import load_bridge

    folder = save_tiny_model(
        tmp_path_factory.mktemp(f"tiny_{request.param}"), dataclasses.replace(TINY, arch=request.param)
    )
    return load_bridge(folder, device="cpu")[0]


@pytest.fixture(scope="module")
def pair():
    return _pair()


@pytest.fixture(scope="module")
def caches(tiny_bridge, pair):
    clean, corrupted, metric = pair
    return P.run_cache(tiny_bridge, clean, metric), P.run_cache(tiny_bridge, corrupted, metric)


@pytest.fixture(scope="module")
def clean_cache(tiny_bridge, pair):
    return tiny_bridge.run_with_cache(pair[0])[1]


TL_BY_POS = {
    "resid_pre": tlp.get_act_patch_resid_pre,
    "attn_out": tlp.get_act_patch_attn_out,
    "mlp_out": tlp.get_act_patch_mlp_out,
    "head_out": tlp.get_act_patch_attn_head_out_by_pos,
}
TL_ALL_POS = {
    "head_out": tlp.get_act_patch_attn_head_out_all_pos,
    "q": tlp.get_act_patch_attn_head_q_all_pos,
    "k": tlp.get_act_patch_attn_head_k_all_pos,
    "v": tlp.get_act_patch_attn_head_v_all_pos,
}


# TransformerLens runs one forward per cell; compare on a fixed sample of cells to keep tests fast.
SAMPLE = [(0, 0, 1), (0, 2, 0), (0, 5, 3), (1, 2, 2), (1, 4, 1), (1, 5, 0), (1, 5, 2)]


def _tl_sample(fn, model, corrupted, cache, metric, with_head):
    import pandas as pd

    cols = ["layer", "pos", "head"] if with_head else ["layer", "pos"]
    df = pd.DataFrame(sorted({c[: len(cols)] for c in SAMPLE}), columns=cols)
    return df, fn(model, corrupted, cache, metric.mean(), index_axis_names=None, index_df=df)


@pytest.mark.parametrize("site", list(TL_BY_POS))
def test_by_position_equals_transformer_lens(tiny_bridge, pair, caches, clean_cache, site):
    clean, corrupted, metric = pair
    # max_rows=7 forces several stacked chunks per layer (2 cells of 3 items per forward).
    ours = P.activation_patching(tiny_bridge, clean, corrupted, metric, site, caches=caches, max_rows=7).grid()
    assert ours.shape == ((2, T, 4) if site == "head_out" else (2, T))
    df, ref = _tl_sample(TL_BY_POS[site], tiny_bridge, corrupted, clean_cache, metric, site == "head_out")
    picked = torch.stack([ours[tuple(row)] for row in df.itertuples(index=False)])
    assert torch.allclose(picked, ref, atol=1e-5, rtol=0)
    assert ref.abs().max() > 1e-3  # the comparison is not between two zero maps


@pytest.mark.parametrize("site", list(TL_ALL_POS))
def test_all_positions_equals_transformer_lens(tiny_bridge, pair, caches, clean_cache, site):
    clean, corrupted, metric = pair
    ours = P.activation_patching(tiny_bridge, clean, corrupted, metric, site, by_pos=False, caches=caches).grid()
    ref = TL_ALL_POS[site](tiny_bridge, corrupted, clean_cache, metric.mean())
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("site", ["q", "k"])
def test_qk_by_position_equals_transformer_lens(tiny_bridge, pair, caches, clean_cache, site):
    clean, corrupted, metric = pair
    ours = P.activation_patching(tiny_bridge, clean, corrupted, metric, site, caches=caches).grid()
    fn = tlp.get_act_patch_attn_head_q_by_pos if site == "q" else tlp.get_act_patch_attn_head_k_by_pos
    df, ref = _tl_sample(fn, tiny_bridge, corrupted, clean_cache, metric, True)
    picked = torch.stack([ours[tuple(row)] for row in df.itertuples(index=False)])
    assert torch.allclose(picked, ref, atol=1e-5, rtol=0)


def test_noising_equals_transformer_lens_with_roles_swapped(tiny_bridge, pair, caches):
    clean, corrupted, metric = pair
    corrupted_cache = tiny_bridge.run_with_cache(corrupted)[1]
    ours = P.patch_attn_out(tiny_bridge, clean, corrupted, metric, direction="noising", caches=caches).grid()
    ref = tlp.get_act_patch_attn_out(tiny_bridge, clean, corrupted_cache, metric.mean())
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("site", ["resid_pre", "resid_mid"])
@pytest.mark.parametrize("direction,expected", [("denoising", 1.0), ("noising", 0.0)])
def test_patching_every_position_restores_the_source_run(tiny_bridge, pair, caches, site, direction, expected):
    clean, corrupted, metric = pair
    sweep = P.activation_patching(
        tiny_bridge, clean, corrupted, metric, site, by_pos=False, direction=direction, caches=caches
    )
    assert abs(sweep.clean.mean() - sweep.corrupted.mean()) > 1e-3
    assert torch.allclose(sweep.normalised(), torch.full((2,), expected, dtype=torch.float64).float(), atol=1e-5)
    table = sweep.table(n_boot=50)
    norm = table[table.metric == direction]
    assert len(norm) == 2 and (norm.ci_low <= norm.value + 1e-9).all() and (norm.value <= norm.ci_high + 1e-9).all()


def test_resid_pre_at_layer_zero_is_one_at_the_changed_position_only(tiny_bridge, pair, caches):
    clean, corrupted, metric = pair
    grid = P.patch_resid_pre(tiny_bridge, clean, corrupted, metric, caches=caches).normalised().view(2, T)
    expected = torch.zeros(T)
    expected[2] = 1.0
    assert torch.allclose(grid[0], expected, atol=1e-5)


def test_table_has_design_columns(tiny_bridge, pair, caches):
    clean, corrupted, metric = pair
    table = P.patch_head_out(tiny_bridge, clean, corrupted, metric, caches=caches).table(
        dict(run="r", recipe="text", seed=1, task="t"), n_boot=20
    )
    for col in (
        "run",
        "recipe",
        "seed",
        "task",
        "site",
        "layer",
        "head",
        "pos",
        "metric",
        "value",
        "ci_low",
        "ci_high",
    ):
        assert col in table.columns
    assert len(table) == 2 * 2 * T * 4
    assert set(table.metric) == {"denoising", "logit_diff"}


# ---------------------------------------------------------------- a planted mechanism


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_model_dir):
    """The tiny model with every head's values zeroed except layer 1's PLANTED_HEAD.

    Attention is the only way information moves between positions, so the corrupted token at
    position 2 can reach the last position only through that one head.
    """
    from transformers import AutoModelForCausalLM

    from codetransfer.trained.loading import load_bridge
    from codetransfer.trained.tokenizer import load_tokenizer

    folder = tmp_path_factory.mktemp("planted")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    cfg = model.config
    d_head = cfg.hidden_size // cfg.num_attention_heads
    with torch.no_grad():
        for layer, block in enumerate(model.gpt_neox.layers):
            qkv = block.attention.query_key_value
            for h in range(cfg.num_attention_heads):
                if layer == 1 and h == PLANTED_HEAD:
                    continue
                rows = slice(h * 3 * d_head + 2 * d_head, (h + 1) * 3 * d_head)
                qkv.weight[rows] = 0.0
                qkv.bias[rows] = 0.0
            if layer == 1:  # a strong value path for the planted head
                rows = slice(PLANTED_HEAD * 3 * d_head + 2 * d_head, (PLANTED_HEAD + 1) * 3 * d_head)
                qkv.weight[rows] *= 8.0
    model.save_pretrained(folder)
    load_tokenizer(tiny_model_dir).save_pretrained(folder)
    bridge, _ = load_bridge(folder, device="cpu")
    return bridge


def test_head_sweep_finds_the_planted_head_and_no_other(planted):
    clean, corrupted, metric = _pair(seed=1)
    sweep = P.patch_head_out(planted, clean, corrupted, metric)
    assert abs(sweep.clean.mean() - sweep.corrupted.mean()) > 1e-2
    grid = sweep.normalised().view(2, T, 4)
    expected = torch.zeros(2, T, 4)
    expected[1, T - 1, PLANTED_HEAD] = 1.0
    assert torch.allclose(grid, expected, atol=1e-4)
    all_pos = P.patch_head_out_all_pos(planted, clean, corrupted, metric).normalised().view(2, 4)
    assert all_pos.argmax().item() == 4 + PLANTED_HEAD
    assert torch.allclose(all_pos, expected.sum(1), atol=1e-4)


def test_faithfulness_of_the_planted_circuit(planted):
    clean, _, metric = _pair(seed=1)
    keep = [("head", 1, PLANTED_HEAD), ("mlp", 0, None), ("mlp", 1, None)]
    res = P.circuit_faithfulness(planted, clean, metric, keep, ablation="zero")
    assert res["faithfulness"] == pytest.approx(1.0, abs=1e-4)
    assert res["ci_low"] == pytest.approx(1.0, abs=1e-4) and res["ci_high"] == pytest.approx(1.0, abs=1e-4)
    res = P.circuit_faithfulness(planted, clean, metric, keep[1:], ablation="zero")
    assert abs(res["faithfulness"] - 1.0) > 1e-2


def test_attribution_screen_agrees_on_the_planted_head(planted):
    clean, corrupted, metric = _pair(seed=1)
    rho, joined = P.attribution_agreement(planted, clean, corrupted, metric)
    assert -1.0 <= rho <= 1.0
    heads = joined[joined.site == "head_out"]
    top_exact = heads.loc[heads.exact.abs().idxmax()]
    top_attr = heads.loc[heads.attribution.abs().idxmax()]
    assert (top_exact.layer, top_exact["head"], top_exact.pos) == (1, PLANTED_HEAD, T - 1)
    assert (top_attr.layer, top_attr["head"], top_attr.pos) == (1, PLANTED_HEAD, T - 1)
    # Heads without values have exactly zero effect under both methods.
    silent = heads[heads["head"] != PLANTED_HEAD]
    assert silent.exact.abs().max() < 1e-5 and silent.attribution.abs().max() < 1e-5


def test_path_patching_matches_transformer_lens_batch_mean(tiny_bridge, pair, caches):
    clean, corrupted, metric = pair
    sweep = P.path_patching(tiny_bridge, clean, corrupted, metric, sender=(0, 1), components=("v",), caches=caches)
    clean_cache = tiny_bridge.run_with_cache(clean)[1]
    corrupted_cache = tiny_bridge.run_with_cache(corrupted)[1]
    # TL's metric is the batch mean of a per-item metric, so the per-item loop must average to it.
    ref = tlp.get_act_patch_direct_path(
        tiny_bridge, corrupted, clean_cache, corrupted_cache, metric.mean(), 0, 1, "v", verbose=False
    )
    assert torch.allclose(sweep.values.mean(1), ref[1], atol=1e-5)
    assert set(sweep.table(n_boot=20).site) == {"path_v"}
