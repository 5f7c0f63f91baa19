"""The one site vocabulary (codetransfer.analysis.sites) and its use by patching, the store and probing."""

from __future__ import annotations

import pytest
import torch

from codetransfer.analysis import patching as P
from codetransfer.analysis import sites as S
from codetransfer.analysis import store
from codetransfer.errors import CodetransferError


def test_every_hook_name_exists_on_the_bridge(tiny_bridge):
    names = set(tiny_bridge.hook_dict)
    for kind in S.KINDS:
        for layer in range(tiny_bridge.cfg.n_layers):
            assert S.Site(kind, layer).hook in names, kind


def test_hooks_read_what_the_kind_says(tiny_bridge):
    tokens = torch.tensor([[0, 5, 6, 7, 8]])
    with torch.no_grad():
        _, cache = tiny_bridge.run_with_cache(tokens)
    # resid_post of layer 0 is resid_pre of layer 1; resid_mid = resid_pre + attn_out; resid_post = resid_mid + mlp_out
    get = lambda kind, layer: cache[S.Site(kind, layer).hook]  # noqa: E731
    torch.testing.assert_close(get("resid_post", 0), get("resid_pre", 1))
    torch.testing.assert_close(get("resid_mid", 0), get("resid_pre", 0) + get("attn_out", 0), atol=1e-5, rtol=0)
    torch.testing.assert_close(get("resid_post", 0), get("resid_mid", 0) + get("mlp_out", 0), atol=1e-5, rtol=0)


def test_parse_expands_keeps_order_and_resolves_aliases():
    got = S.parse_sites("attn,head_out.1.2,resid_pre.0,attn_out.1", 2)
    assert [s.name for s in got] == ["attn_out.0", "attn_out.1", "head_out.1.2", "resid_pre.0"]
    assert got[2] == S.Site("head_out", 1, 2) and got[2].hook == "blocks.1.attn.hook_z"
    assert [s.name for s in S.parse_sites(["mlp", "head"])] == ["mlp_out", "head_out"]  # patterns without layers
    assert S.Site("head", 0) == S.Site("head_out", 0)


@pytest.mark.parametrize(
    "text,match",
    [
        ("resid", "'resid' is ambiguous; write one of resid_pre, resid_mid, resid_post"),
        ("resid.1", "ambiguous"),
        ("resid_psot", "did you mean 'resid_post'"),
        ("attn_ot", "did you mean 'attn_out'"),
        ("mlp_out.x", "layer in 'mlp_out.x' must be an integer"),
        ("mlp_out.0.1", "expected 'kind.layer' at most"),
        ("mlp_out.5", "the model has 2 layers"),
        ("", "expected at least one"),
    ],
)
def test_parse_refuses_with_a_hint(text, match):
    with pytest.raises(CodetransferError, match=match):
        S.parse_sites(text, 2)


def test_each_consumer_refuses_kinds_it_cannot_use():
    with pytest.raises(CodetransferError, match="'resid_post' is not supported here"):
        P.check_site("resid_post")
    with pytest.raises(CodetransferError, match="'q' is not supported here"):
        store.parse_sites("q", 2)
    with pytest.raises(CodetransferError, match="ambiguous"):
        P.parse_sites("resid,attn")


def test_old_names_are_aliases_of_the_one_vocabulary():
    assert P.SITES == S.PATCH_KINDS and P.HEAD_SITES == S.HEAD_KINDS
    assert P.check_site("head") == "head_out" and P.check_site("attn") == "attn_out"
    assert P.hook_name("mlp", 1) == "blocks.1.hook_mlp_out"
    assert set(S.STORE_KINDS) <= set(store.SITE_KINDS) and "head" in store.SITE_KINDS
    assert store.Site is S.Site and store.HOOKS["head_out"] == S.HOOKS["head_out"]
    # the main job's patch sites, spelled without the ambiguous 'resid'
    assert P.parse_sites("resid_pre,attn,mlp,head") == ["resid_pre", "attn_out", "mlp_out", "head_out"]


def test_patching_tables_name_the_canonical_kind(tiny_bridge):
    torch.manual_seed(0)
    clean = torch.randint(1, 300, (3, 5))
    corrupted = clean.clone()
    corrupted[:, 2] = (corrupted[:, 2] + 7) % 300
    metric = P.LogitDiff(torch.full((3,), 4), torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8]))
    by_alias = P.activation_patching(tiny_bridge, clean, corrupted, metric, "attn")
    by_name = P.activation_patching(tiny_bridge, clean, corrupted, metric, "attn_out")
    assert by_alias.site == "attn_out"
    torch.testing.assert_close(by_alias.values, by_name.values)
    assert set(by_alias.table(n_boot=10).site) == {"attn_out"}
