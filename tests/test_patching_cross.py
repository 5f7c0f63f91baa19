"""Patching across models and renderings, task items to batches, and refused inputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformer_lens.patching as tlp

from codetransfer.analysis import patching as P
from codetransfer.errors import CodetransferError
from codetransfer.tasks.items import Item

B, T = 3, 6


def _tokens(seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, 300, (B, T), generator=g)
    metric = P.LogitDiff(torch.full((B,), T - 1), torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10]))
    return tokens, metric


def _load(folder):
    from codetransfer.trained.loading import load_bridge

    return load_bridge(folder, device="cpu")


@pytest.fixture(scope="module")
def twin_dirs(tmp_path_factory, tiny_model_dir):
    """A random-init twin (other seed) and a twin whose last MLP writes nothing."""
    from conftest import save_tiny_model
    from transformers import AutoModelForCausalLM

    from codetransfer.trained.tokenizer import load_tokenizer

    random_dir = save_tiny_model(tmp_path_factory.mktemp("random_twin"), seed=1)
    ablated_dir = tmp_path_factory.mktemp("ablated_twin")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    with torch.no_grad():
        out = model.gpt_neox.layers[-1].mlp.dense_4h_to_h
        out.weight.zero_()
        out.bias.zero_()
    model.save_pretrained(ablated_dir)
    load_tokenizer(tiny_model_dir).save_pretrained(ablated_dir)
    return random_dir, ablated_dir


def test_cross_model_with_itself_is_the_identity(tiny_bridge):
    tokens, metric = _tokens()
    sweep = P.cross_model_patching(tiny_bridge, tiny_bridge, tokens, metric, "resid_pre")
    assert torch.allclose(sweep.values, sweep.clean.expand_as(sweep.values), atol=1e-5)
    assert torch.isnan(sweep.normalised()).all()  # no advantage to carry


def test_cross_model_ablated_twin_carries_exactly_the_ablated_component(tiny_bridge, twin_dirs):
    tokens, metric = _tokens()
    ablated, _ = _load(twin_dirs[1])
    sweep = P.cross_model_patching(tiny_bridge, ablated, tokens, metric, "mlp_out", by_pos=False)
    assert abs(sweep.clean.mean() - sweep.corrupted.mean()) > 1e-3
    # Layer 0 is identical in both models (nothing to carry); layer 1's MLP is all of A's advantage.
    assert torch.allclose(sweep.normalised(), torch.tensor([0.0, 1.0]), atol=1e-5)


def test_cross_model_random_twin_equals_transformer_lens_hooks(tiny_bridge, twin_dirs):
    tokens, metric = _tokens()
    b, _ = _load(twin_dirs[0])
    sweep = P.cross_model_patching(tiny_bridge, b, tokens, metric, "attn_out")
    cache_a = tiny_bridge.run_with_cache(tokens)[1]
    import pandas as pd

    df = pd.DataFrame([(0, 1), (1, 3), (1, 5)], columns=["layer", "pos"])
    ref = tlp.get_act_patch_attn_out(b, tokens, cache_a, metric.mean(), index_axis_names=None, index_df=df)
    grid = sweep.grid()
    assert torch.allclose(torch.stack([grid[l, p] for l, p in df.itertuples(index=False)]), ref, atol=1e-5)
    # A random twin does not share A's computation: patching one layer's write is not all of it.
    assert (sweep.normalised() - 1).abs().max() > 1e-2
    table = sweep.table(dict(run="a->b"), n_boot=20)
    assert set(table.metric) == {"cross_model", "logit_diff"}


def test_cross_model_refuses_other_shape_and_tokenizer(tiny_bridge, tiny_tokenizer, tmp_path):
    from conftest import save_tiny_model

    from codetransfer.trained.config import ModelConfig

    tokens, metric = _tokens()
    small = save_tiny_model(tmp_path / "small", ModelConfig(n_layers=1, d_model=64, n_heads=4, d_mlp=256, n_ctx=64))
    other, _ = _load(small)
    with pytest.raises(CodetransferError, match="n_layers") as e:
        P.cross_model_patching(tiny_bridge, other, tokens, metric, "resid_pre")
    assert "\n" not in str(e.value)
    from codetransfer.trained.tokenizer import train_tokenizer

    tok_b = train_tokenizer(["x = [1, 2, 3]\nprint(x)\n"] * 20, vocab_size=300, min_frequency=1)
    with pytest.raises(CodetransferError, match="tokenizer_b") as e:
        P.cross_model_patching(
            tiny_bridge, tiny_bridge, tokens, metric, "resid_pre", tokenizer_a=tiny_tokenizer, tokenizer_b=tok_b
        )
    _one_line(e)


# ---------------------------------------------------------------- items


def _item(prompt, answer, candidates=(" A", " B"), spans=None, rendering="text", **kw):
    return Item(
        task="hand", version="0", seed=0, index=0, category="reasoning", rendering=rendering, prompt=prompt,
        candidates=candidates, label=candidates.index(answer), difficulty=0, spans=spans or {}, **kw,
    )  # fmt: skip


def _spans(prompt):
    first = prompt.index("box ") + 4
    query = prompt.rindex(" ", 0, len(prompt) - len(" is in box")) + 1
    return {"e0.value": (first, first + 1), "query": (query, query + 3)}


def _hand_items():
    """Text items with a one-fact counterfactual and a 'code' twin that is the text after a prefix (the
    counterfactual has its own code twin, the code twin the counterfactual's as its counterfactual)."""
    items = []
    prefix = "# state of the boxes\n"

    def code_spans(text):
        return {k: (s + len(prefix), e + len(prefix)) for k, (s, e) in _spans(text).items()}

    for (a, b), (x, y) in zip((("A", "B"), ("B", "A"), ("A", "B")), (("pen", "cup"), ("pen", "cup"), ("cup", "pen"))):
        text = f"The {x} is in box {a}. The {y} is in box {b}. The {x} is in box"
        cf_text = text.replace(f"box {a}.", f"box {b}.", 1)
        cand = (" A", " B", " C")
        cf_code = _item(prefix + cf_text, f" {b}", cand, code_spans(cf_text), rendering="code")
        cf = _item(cf_text, f" {b}", cand, _spans(cf_text), twin=cf_code)
        twin = _item(prefix + text, f" {a}", cand, code_spans(text), rendering="code", counterfactual=cf_code)
        items.append(_item(text, f" {a}", cand, _spans(text), counterfactual=cf, twin=twin))
    return items


def test_pair_batch_positions_and_metric(tiny_tokenizer):
    items = _hand_items()
    batch = P.pair_batch(items, tiny_tokenizer)
    from codetransfer.trained.tokenizer import encode_with_bos

    ids, _ = encode_with_bos(tiny_tokenizer, items[0].prompt)
    assert batch.clean_tokens[0, : len(ids)].tolist() == ids
    assert (batch.clean_tokens != batch.corrupted_tokens).any(1).all()
    lengths = [len(encode_with_bos(tiny_tokenizer, it.prompt)[0]) for it in items]
    assert batch.metric.position.tolist() == [n - 1 for n in lengths]  # right-padded, own last token
    assert (batch.clean_tokens[0, lengths[0] :] == tiny_tokenizer.pad_token_id).all()
    assert set(batch.positions) == {"e0.value", "query", "last"}
    p = int(batch.positions["e0.value"][0])
    assert tiny_tokenizer.decode([int(batch.clean_tokens[0, p])]).strip() == "A"
    assert tiny_tokenizer.decode([int(batch.corrupted_tokens[0, p])]).strip() == "B"


def test_named_positions_sweep(tiny_bridge, tiny_tokenizer):
    batch = P.pair_batch(_hand_items(), tiny_tokenizer)
    sweep = P.patch_resid_pre(
        tiny_bridge, batch.clean_tokens, batch.corrupted_tokens, batch.metric, positions=batch.positions
    )
    norm = dict(zip([(c.layer, c.pos_label) for c in sweep.cells], sweep.normalised().tolist()))
    # At layer 0 the only changed token is the first box letter; the query token carries nothing.
    assert norm[(0, "e0.value")] == pytest.approx(1.0, abs=1e-5)
    assert norm[(0, "query")] == pytest.approx(0.0, abs=1e-5)


def test_cross_rendering_aligns_positions(tiny_bridge, tiny_tokenizer):
    batch = P.rendering_batch(_hand_items(), tiny_tokenizer, from_rendering="code")
    assert set(batch.positions) == {"e0.value", "query", "last"}
    t, s = batch.positions["e0.value"]
    assert (s > t).all()  # the code twin's prefix shifts its positions
    cross, within = P.cross_rendering_patching(tiny_bridge, batch, "resid_pre")
    c = dict(zip([(x.layer, x.pos_label) for x in cross.cells], cross.values.mean(1).tolist()))
    w = dict(zip([(x.layer, x.pos_label) for x in within.cells], within.values.mean(1).tolist()))
    # Layer 0's residual is the token embedding, and the aligned source tokens are the clean ones.
    for key in ("e0.value", "query", "last"):
        assert c[(0, key)] == pytest.approx(w[(0, key)], abs=1e-5)
    assert max(abs(c[(1, k)] - w[(1, k)]) for k in ("e0.value", "query")) > 1e-4  # context differs later
    assert within.normalised()[0].item() == pytest.approx(1.0, abs=1e-5)  # layer 0, e0.value


# ---------------------------------------------------------------- the cross-rendering control


def bag_of_tokens_model(folder, src):
    """A hand-set 2-layer GPT-NeoX (weights of ``src`` changed): every head attends uniformly to the
    positions so far (query and key weights 0) and copies them (value and output weights the identity),
    MLPs write nothing, the unembedding is 50 x the embedding. Every position's residual after layer 0
    holds the mean of the embeddings before it, so the answer follows the box tokens the prompt holds:
    at layer 0 a position holds its own token only (token identity), after it the code rendering's
    residual carries its world's box tokens along the same directions as the text's (a shared direction)."""
    from transformers import AutoModelForCausalLM

    from codetransfer.trained.tokenizer import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(src))
    d, n_heads = model.config.hidden_size, model.config.num_attention_heads
    dh = d // n_heads
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            qkv = layer.attention.query_key_value  # rows per head: [q (dh), k (dh), v (dh)]
            qkv.weight.zero_()
            qkv.bias.zero_()
            for h in range(n_heads):
                qkv.weight[(3 * h + 2) * dh : (3 * h + 3) * dh, h * dh : (h + 1) * dh] = torch.eye(dh)
            layer.attention.dense.weight.copy_(torch.eye(d))
            layer.attention.dense.bias.zero_()
            layer.mlp.dense_4h_to_h.weight.zero_()
            layer.mlp.dense_4h_to_h.bias.zero_()
        model.lm_head.weight.copy_(50 * model.gpt_neox.embed_in.weight)
    model.save_pretrained(folder)
    load_tokenizer(src).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bag_bridge(tmp_path_factory, tiny_model_dir):
    bridge, _ = _load(bag_of_tokens_model(tmp_path_factory.mktemp("bag_of_tokens"), tiny_model_dir))
    return bridge


def cells(table) -> dict:
    """``{(site, layer, pos_label): {metric: (value, ci_low, ci_high)}}`` of a cross-rendering table."""
    out: dict = {}
    for r in table.itertuples():
        out.setdefault((r.site, r.layer, r.pos_label), {})[r.metric] = (r.value, r.ci_low, r.ci_high)
    return out


def test_control_prompts_are_the_counterfactual_world_holding_the_source_token(tiny_tokenizer):
    batch = P.rendering_batch(_hand_items(), tiny_tokenizer)
    src, ctl = batch.source_tokens, batch.control_tokens
    rows = torch.arange(len(src))
    t, s = batch.positions["e0.value"]
    k = batch.control_positions["e0.value"]
    assert (src[rows, s] != ctl[rows, k]).all()  # the changed fact: the two worlds' code twins differ there
    matched = batch.control_at("e0.value")
    assert (matched[rows, k] == src[rows, s]).all()
    assert all(torch.equal(matched[i, : k[i] + 1], src[i, : s[i] + 1]) for i in rows)  # equal up to the fact
    for key in ("query", "last"):  # the same token in both worlds: the counterfactual's code twin unchanged
        assert torch.equal(batch.control_at(key), ctl)
    assert batch.control_metric.position.tolist() == batch.control_positions["last"].tolist()


def test_token_identity_scores_one_against_a_control_of_one(bag_bridge, tiny_bridge, tiny_tokenizer):
    batch = P.rendering_batch(_hand_items(), tiny_tokenizer)
    for model in (bag_bridge, tiny_bridge):  # any model: layer 0's residual is the token embedding
        cross, _ = P.cross_rendering_patching(model, batch, "resid_pre", layers=[0])
        c = cells(cross.table(n_boot=200))[("resid_pre", 0, "e0.value")]
        assert c["cross_rendering"][0] == pytest.approx(1.0, abs=1e-5)
        # the control's prompt equals the source's up to the changed fact: the same numbers, no float noise
        assert c["cross_rendering_control"] == c["cross_rendering"]
        assert c["cross_rendering_excess"] == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)
    assert torch.equal(cross.control[0], cross.values[0])


def test_a_shared_direction_beats_its_control(bag_bridge, tiny_tokenizer):
    batch = P.rendering_batch(_hand_items(), tiny_tokenizer)
    for site in ("resid_pre", "attn_out"):
        cross, within = P.cross_rendering_patching(bag_bridge, batch, site, layers=[1] if site == "resid_pre" else [0])
        table = cross.table(n_boot=500)
        last = cells(table)[(site, 1 if site == "resid_pre" else 0, "last")]
        score, control, excess = (
            last[m] for m in ("cross_rendering", "cross_rendering_control", "cross_rendering_excess")
        )
        assert excess[1] > 0.1  # the excess's interval lies above 0
        assert excess[0] == pytest.approx(score[0] - control[0], abs=1e-6)
        assert score[0] > control[0] + 0.1
    # the table: one row per cell and metric, intervals from the same resamples
    assert set(table.metric) == {"cross_rendering", "logit_diff", "cross_rendering_control", "cross_rendering_excess"}
    assert len(table) == 4 * len(cross.cells)


def test_control_needs_the_counterfactual_world_in_the_source_rendering(tiny_bridge, tiny_tokenizer):
    items = _hand_items()
    bare = dataclasses.replace(
        items[0],
        counterfactual=dataclasses.replace(items[0].counterfactual, twin=None),
        twin=dataclasses.replace(items[0].twin, counterfactual=None),
    )
    with pytest.raises(CodetransferError, match="counterfactual has no 'code' twin") as e:
        P.rendering_batch([bare], tiny_tokenizer)
    _one_line(e)
    batch = P.rendering_batch(items, tiny_tokenizer)
    with pytest.raises(CodetransferError, match="no control prompts") as e:
        P.cross_rendering_patching(tiny_bridge, dataclasses.replace(batch, control_tokens=None), "resid_pre")
    _one_line(e)
    cross, _ = P.cross_rendering_patching(tiny_bridge, batch, "resid_pre", layers=[0])
    with pytest.raises(CodetransferError, match="control: expected one value per cell and item") as e:
        dataclasses.replace(cross, control=cross.control[:, :1])
    _one_line(e)


# ---------------------------------------------------------------- refused inputs


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)


def test_refuses_equal_answers(tiny_tokenizer):
    with pytest.raises(CodetransferError, match="same answer") as e:
        P.LogitDiff(torch.tensor([3]), torch.tensor([5]), torch.tensor([5]))
    _one_line(e)
    items = _hand_items()
    bad = dataclasses.replace(items[0], counterfactual=dataclasses.replace(items[0].counterfactual, label=0))
    with pytest.raises(CodetransferError, match="same tokens") as e:
        P.pair_batch([bad], tiny_tokenizer)
    _one_line(e)


def test_refuses_misaligned_counterfactuals(tiny_tokenizer):
    items = _hand_items()
    cf = items[0].counterfactual
    longer = dataclasses.replace(items[0], counterfactual=dataclasses.replace(cf, prompt="Oh. " + cf.prompt))
    with pytest.raises(CodetransferError, match="positions must align") as e:
        P.pair_batch([longer, items[1]], tiny_tokenizer)
    _one_line(e)
    assert P.pair_batch([longer, items[1]], tiny_tokenizer, drop_misaligned=True).n_dropped == 1
    with pytest.raises(CodetransferError, match="counterfactual"):
        P.pair_batch([dataclasses.replace(items[0], counterfactual=None)], tiny_tokenizer)
    with pytest.raises(CodetransferError, match="twin"):
        P.rendering_batch([dataclasses.replace(items[0], twin=None)], tiny_tokenizer)


def test_refuses_bad_sites_and_shapes(tiny_bridge):
    tokens, metric = _tokens()
    with pytest.raises(CodetransferError, match="did you mean 'resid_pre'") as e:
        P.activation_patching(tiny_bridge, tokens, tokens, metric, "resid_pr")
    _one_line(e)
    with pytest.raises(CodetransferError, match="direction"):
        P.activation_patching(tiny_bridge, tokens, tokens, metric, "resid_pre", direction="denoise")
    with pytest.raises(CodetransferError, match="positions must align"):
        P.activation_patching(tiny_bridge, tokens, tokens[:, :-1], metric, "resid_pre")
    with pytest.raises(CodetransferError, match="layer: expected 0..1"):
        P.activation_patching(tiny_bridge, tokens, tokens, metric, "resid_pre", layers=[2])
    with pytest.raises(CodetransferError, match="head: expected 0..3"):
        P.activation_patching(tiny_bridge, tokens, tokens, metric, "head_out", heads=[4], layers=[0])
    with pytest.raises(CodetransferError, match="keep"):
        P.circuit_faithfulness(tiny_bridge, tokens, metric, [("head", 0, 9)])
    with pytest.raises(CodetransferError, match="sender"):
        P.path_patching(tiny_bridge, tokens, tokens, metric, sender=(1, 0))


def test_refuses_sites_a_parallel_residual_model_lacks(tiny_model_dir, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model.config.use_parallel_residual = True
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    bridge, _ = _load(tmp_path)
    tokens, metric = _tokens()
    with pytest.raises(CodetransferError, match="in parallel") as e:
        P.activation_patching(bridge, tokens, tokens, metric, "resid_mid")
    _one_line(e)
