"""Activation store: exact round trip, streaming under a memory budget, refusals; extraction parity."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch

from codetransfer.analysis.store import ActivationStore, extract_activations, parse_sites
from codetransfer.errors import CodetransferError

META = dict(run="runA", task="boxes", task_version="1", seed=3)


def _fill(path, n_rows=50, batches=4, capacity=8, d=8, heads=2):
    rng = np.random.default_rng(0)
    store = ActivationStore.create(
        path, sites=["resid_post.0", "head_out.1"], d_model=d, n_heads=heads, capacity=capacity, **META
    )
    res, head, idx = [], [], []
    for b in np.array_split(np.arange(n_rows), batches):
        r = rng.standard_normal((len(b), d)).astype(np.float32)
        h = rng.standard_normal((len(b), heads, d)).astype(np.float32)
        ix = pd.DataFrame({"item": b // 3, "pos": b % 3, "label": [f"v{i % 4}" for i in b]})
        store.append({"resid_post.0": r, "head_out.1": h}, ix)
        res.append(r), head.append(h), idx.append(ix)
    return store.close(), np.concatenate(res), np.concatenate(head), pd.concat(idx, ignore_index=True)


def test_store_round_trips_exactly_through_growth_and_trim(tmp_path):
    # capacity 8 < 50 rows forces several doublings, then a trim to exactly 50 rows on close
    store, res, head, idx = _fill(tmp_path / "s")
    reopened = ActivationStore.open(tmp_path / "s", expect=META)
    assert reopened.n_rows == 50
    assert np.array_equal(reopened.read("resid_post.0"), res)
    assert np.array_equal(reopened.read("head_out.1"), head)
    assert reopened.array("head_out.1").shape == (50, 2, 8)
    assert list(reopened.index["row"]) == list(range(50))
    pd.testing.assert_frame_equal(reopened.index.drop(columns="row"), idx, check_dtype=False)
    assert np.array_equal(reopened.read("resid_post.0", [3, 7, 49]), res[[3, 7, 49]])
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["complete"] and meta["d_model"] == 8 and meta["sites"] == ["resid_post.0", "head_out.1"]


def test_store_streams_in_chunks_under_memory_budget(tmp_path):
    rng = np.random.default_rng(1)
    n, d = 4000, 64  # 1 MiB of float32
    data = rng.standard_normal((n, d)).astype(np.float32)
    store = ActivationStore.create(tmp_path / "big", sites=["resid_pre.0"], d_model=d, capacity=n, **META)
    for b in np.array_split(np.arange(n), 5):
        store.append({"resid_pre.0": data[b]}, pd.DataFrame({"item": b, "pos": 0}))
    store = store.close()
    budget = 64 * 1024  # 16x smaller than the array
    tracemalloc.start()
    total = np.zeros(d, dtype=np.float64)
    seen, max_chunk = 0, 0
    for start, chunk in store.iter_chunks("resid_pre.0", memory_budget=budget):
        assert start == seen
        max_chunk = max(max_chunk, chunk.nbytes)
        total += chunk.sum(0, dtype=np.float64)
        seen += len(chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seen == n and max_chunk <= budget
    assert peak < 3 * budget < data.nbytes
    np.testing.assert_allclose(total, data.sum(0, dtype=np.float64), rtol=1e-10)
    with pytest.raises(CodetransferError, match="memory_budget"):
        next(store.iter_chunks("resid_pre.0", memory_budget=10))


@pytest.mark.parametrize("key,value", [("run", "runB"), ("task_version", "2"), ("seed", 4)])
def test_store_from_another_run_version_or_seed_is_refused(tmp_path, key, value):
    _fill(tmp_path / "s")
    with pytest.raises(CodetransferError) as e:
        ActivationStore.open(tmp_path / "s", expect={**META, key: value})
    assert "\n" not in str(e.value) and key in str(e.value)


def test_incomplete_or_missing_store_is_refused(tmp_path):
    store = ActivationStore.create(tmp_path / "s", sites=["resid_pre.0"], d_model=4, **META)
    store.append({"resid_pre.0": np.zeros((2, 4), np.float32)}, pd.DataFrame({"item": [0, 1], "pos": 0}))
    with pytest.raises(CodetransferError, match="incomplete"):
        ActivationStore.open(tmp_path / "s")
    with pytest.raises(CodetransferError, match="meta.json"):
        ActivationStore.open(tmp_path / "nothing")
    with pytest.raises(CodetransferError, match="already exists"):
        ActivationStore.create(tmp_path / "s", sites=["resid_pre.0"], d_model=4, **META).append(
            {"resid_pre.0": np.zeros((1, 4), np.float32)}, pd.DataFrame({"item": [0], "pos": 0})
        )


def test_parse_sites_expands_and_refuses():
    # 'head' is the group alias of the per-head output 'head_out', the name patching uses too
    assert [s.name for s in parse_sites(["resid_post", "head.1"], 2)] == ["resid_post.0", "resid_post.1", "head_out.1"]
    assert [s.name for s in parse_sites("attn,mlp_out.1", 2)] == ["attn_out.0", "attn_out.1", "mlp_out.1"]
    with pytest.raises(CodetransferError, match="resid_pre, resid_mid, resid_post"):
        parse_sites(["resid"], 2)
    with pytest.raises(CodetransferError, match="not supported here"):
        parse_sites(["q"], 2)
    with pytest.raises(CodetransferError, match="resid_post"):
        parse_sites(["resid_pots"], 2)
    with pytest.raises(CodetransferError, match="2 layers"):
        parse_sites(["mlp_out.5"], 2)


# ---------------------------------------------------------------------- extraction on a tiny model
def _prompts(tokenizer):
    from codetransfer.trained.tokenizer import encode_with_bos

    texts = [
        "The pen is in box A.",
        "def f(x):\n    return x + 1",
        "The apple is in box B. Where is the pen?",
        "box_a = ['pen']",
    ]
    return [encode_with_bos(tokenizer, t)[0] for t in texts]


@pytest.mark.parametrize(
    "method,sites",
    [
        ("hooks", ["resid_pre", "resid_mid", "resid_post.1", "attn_out.0", "mlp_out.1", "head_out"]),
        ("cache", ["resid_pre", "resid_mid", "resid_post.1", "attn_out.0", "mlp_out.1", "head_out"]),
        ("hooks", ["resid_post.0", "head.0", "mlp_out.0"]),  # the forward pass stops after block 0
    ],
)
def test_extraction_matches_full_run_with_cache(tmp_path, tiny_bridge, tiny_tokenizer, method, sites):
    bridge = tiny_bridge
    toks = _prompts(tiny_tokenizer)
    positions = [[0, len(t) - 1] if i % 2 else [len(t) - 1] for i, t in enumerate(toks)]
    names = [s.name for s in parse_sites(sites, bridge.cfg.n_layers)]
    store = ActivationStore.create(
        tmp_path / method, sites=names, d_model=bridge.cfg.d_model, n_heads=bridge.cfg.n_heads, capacity=2, **META
    )
    labels = pd.DataFrame({"label": [f"L{i}" for i in range(sum(map(len, positions)))]})
    store = extract_activations(bridge, toks, positions, sites, store, batch_size=3, index=labels, method=method)
    # reference: each prompt alone (no padding), full cache
    r = 0
    for i, (t, ps) in enumerate(zip(toks, positions)):
        with torch.no_grad():
            _, cache = bridge.run_with_cache(torch.tensor([t]))
        W_O = {l: bridge.blocks[l].attn.W_O.detach() for l in range(bridge.cfg.n_layers)}
        b_O = {l: bridge.blocks[l].attn.b_O.detach() for l in range(bridge.cfg.n_layers)}
        for p in ps:
            for name in names:
                kind, layer = name.split(".")
                if kind == "head_out":
                    z = cache[f"blocks.{layer}.attn.hook_z"][0, p]
                    want = torch.einsum("hd,hdm->hm", z, W_O[int(layer)])
                    # heads sum (plus b_O) to attn_out
                    np.testing.assert_allclose(
                        (want.sum(0) + b_O[int(layer)]).numpy(),
                        cache[f"blocks.{layer}.hook_attn_out"][0, p].numpy(),
                        atol=1e-5,
                    )
                else:
                    want = cache[f"blocks.{layer}.hook_{kind}"][0, p]
                np.testing.assert_allclose(store.read(name, [r])[0], want.numpy(), atol=1e-5)
            assert store.index.loc[r, ["item", "pos", "label"]].tolist() == [i, p, f"L{r}"]
            r += 1
    assert store.n_rows == r


def test_extraction_refuses_bad_positions_and_sites_writing_nothing(tmp_path, tiny_bridge, tiny_tokenizer):
    toks = _prompts(tiny_tokenizer)
    d, h = tiny_bridge.cfg.d_model, tiny_bridge.cfg.n_heads
    store = ActivationStore.create(tmp_path / "s", sites=["resid_post.0"], d_model=d, n_heads=h, **META)
    with pytest.raises(CodetransferError, match="position") as e:
        extract_activations(tiny_bridge, toks, [[len(t)] for t in toks], ["resid_post.0"], store)
    assert "\n" not in str(e.value)
    with pytest.raises(CodetransferError, match="layers"):
        extract_activations(tiny_bridge, toks, [[0] for t in toks], ["resid_post.7"], store)
    with pytest.raises(CodetransferError, match="positions"):
        extract_activations(tiny_bridge, toks, [[0]], ["resid_post.0"], store)
    assert not (tmp_path / "s").exists()


def test_store_to_probe_on_real_activations_finds_token_identity(tmp_path, tiny_bridge, tiny_tokenizer):
    """Known answer: resid_pre.0 is the token embedding (rotary, no position embedding), so the letter
    at the probed position is linearly decodable there; a label unrelated to the prompt is not."""
    from codetransfer.probes.sweep import probe_layers
    from codetransfer.trained.tokenizer import char_to_token, encode_with_bos

    objects = ["pen", "apple", "cup", "key", "ring", "coin", "book", "hat", "shoe", "doll", "fork", "map"]
    letters = ["A", "B", "C", "D"]
    toks, positions, rows = [], [], []
    rng = np.random.default_rng(0)
    for obj in objects:
        for letter in letters:
            for lead in ("The", "A"):
                text = f"{lead} {obj} is in box {letter}"
                ids, offsets = encode_with_bos(tiny_tokenizer, text)
                toks.append(ids)
                positions.append([char_to_token(offsets, len(text))])
                rows.append(dict(letter=letter, obj=obj, noise=str(rng.integers(0, 4))))
    index = pd.DataFrame(rows)
    store = ActivationStore.create(
        tmp_path / "s", sites=["resid_pre.0", "resid_post.1"], d_model=64, n_heads=4, capacity=len(toks), **META
    )
    store = extract_activations(tiny_bridge, toks, positions, ["resid_pre.0", "resid_post.1"], store, index=index)
    idx = store.index
    found = probe_layers(
        store,
        idx["letter"],
        idx["obj"],
        rows=idx["row"],
        seeds=(0, 1),
        mdl=False,
        n_boot=100,
        meta=dict(run="r", recipe="x", seed=0, task="t"),
    )
    acc = found[found.metric == "accuracy"].set_index("layer")["value"]
    assert acc[0] == 1.0
    noise = probe_layers(
        store,
        idx["noise"],
        idx["obj"],
        rows=idx["row"],
        seeds=(0, 1),
        mdl=False,
        n_boot=100,
        meta=dict(run="r", recipe="x", seed=0, task="t"),
    )
    assert (noise[noise.metric == "accuracy"]["value"] < 0.5).all()
