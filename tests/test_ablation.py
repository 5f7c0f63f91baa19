"""Circuit ablation and representation similarity (analysis/ablation.py, analysis/similarity.py).

Known answer: two models identical but for one induction head (zeroed in the "baseline" twin). The gap
between them is that head's; ablating it removes the gap (share ~1), ablating another head does not
(share ~0), and the gap between a model and itself withholds its share.
"""

from __future__ import annotations

import pytest
import torch

from codetransfer.analysis.ablation import ablation_values, gap_ablation
from codetransfer.analysis.attention import repeated_random_tokens
from codetransfer.analysis.similarity import cka_table, linear_cka
from codetransfer.errors import CodetransferError
from codetransfer.trained.loading import load_bridge
from codetransfer.trained.model import build_model
from codetransfer.trained.presets import preset
from codetransfer.trained.tokenizer import train_tokenizer
from codetransfer.trained.warmup import N_SPECIAL, induction_warmup
from conftest import TOKENIZER_TEXTS

HALF = 20


def copy_logprob(logits, tokens):
    """Mean log-probability of the repeated half's tokens (what an induction head predicts)."""
    logp = logits.float().log_softmax(-1)[:, HALF:-1]  # predicting positions HALF+1 .. 2*HALF
    target = tokens[:, HALF + 1 :]
    return logp.gather(-1, target[..., None])[..., 0].mean(-1)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(baseline bridge without the head, bridge with it, the head, the least useful head, tokens, drops)."""
    cfg = preset("tiny").model
    model = build_model(cfg, 512, seed=0)
    induction_warmup(model, 512, steps=1000, lr=2e-3, seed=0)
    tokens = repeated_random_tokens(list(range(N_SPECIAL, 512)), 48, HALF, seed=3)
    d_head = cfg.d_model // cfg.n_heads

    def o_proj(layer):
        return model.model.layers[layer].self_attn.o_proj.weight

    def score():
        with torch.no_grad():
            return copy_logprob(model(input_ids=tokens).logits, tokens).mean().item()

    clean, drops = score(), {}
    for layer in range(cfg.n_layers):  # the head whose silencing costs the most copying is the planted one
        for h in range(cfg.n_heads):
            saved = o_proj(layer).data[:, h * d_head : (h + 1) * d_head].clone()
            o_proj(layer).data[:, h * d_head : (h + 1) * d_head] = 0
            drops[(layer, h)] = clean - score()
            o_proj(layer).data[:, h * d_head : (h + 1) * d_head] = saved
    head = max(drops, key=drops.get)  # measured: a layer-0 previous-token head (layer-1 heads are redundant)
    other = min(drops, key=drops.get)
    tok = train_tokenizer(TOKENIZER_TEXTS, vocab_size=400, min_frequency=1)
    with_dir, without_dir = (tmp_path_factory.mktemp(n) for n in ("with", "without"))
    tok.save_pretrained(with_dir)
    model.save_pretrained(with_dir)
    o_proj(head[0]).data[:, head[1] * d_head : (head[1] + 1) * d_head] = 0
    tok.save_pretrained(without_dir)
    model.save_pretrained(without_dir)
    (a, _), (b, _) = load_bridge(without_dir), load_bridge(with_dir)
    return a, b, head, other, tokens, drops


@pytest.mark.parametrize("method", ["mean", "resample"])
def test_ablating_the_planted_head_removes_its_gap(planted, method):
    a, b, head, other, tokens, drops = planted
    assert max(drops.values()) > 1.0, drops  # the warm-up grew a head that copying depends on
    table = gap_ablation(a, b, tokens, copy_logprob, [head], method, n_boot=500).set_index("metric")
    assert table.loc["gap", "ci_low"] > 0.5, table
    assert not table.loc["share", "withheld"]
    assert 0.75 < table.loc["share", "value"] < 1.25, table
    # the twin without the head is untouched by ablating it (its output there is already zero)
    assert table.loc["a_ablated", "value"] == pytest.approx(table.loc["a_clean", "value"], abs=1e-4)

    decoy = gap_ablation(a, b, tokens, copy_logprob, [other], method, n_boot=500).set_index("metric")
    assert abs(decoy.loc["share", "value"]) < 0.25, decoy


def test_share_of_no_gap_is_withheld(planted):
    _, b, head, _, tokens, _ = planted
    table = gap_ablation(b, b, tokens, copy_logprob, [head], "mean", n_boot=200).set_index("metric")
    assert table.loc["gap", "value"] == pytest.approx(0.0, abs=1e-6)
    assert table.loc["share", "withheld"] and torch.isnan(torch.tensor(table.loc["share", "value"]))


def test_resample_takes_another_items_activations_and_mean_is_constant(planted):
    _, b, head, _, tokens, _ = planted
    res = ablation_values(b, tokens, [head], "resample", seed=1)[head]
    mean = ablation_values(b, tokens, [head], "mean")[head]
    from codetransfer.analysis.ablation import head_outputs

    z = head_outputs(b, tokens, [head[0]])[head[0]][:, :, head[1]]
    matches = [[bool(torch.equal(res[i], z[j])) for j in range(len(z))] for i in range(len(z))]
    assert all(sum(row) == 1 and not row[i] for i, row in enumerate(matches))  # exactly one other item each
    assert torch.allclose(mean, z.mean((0, 1)).expand_as(mean), atol=1e-5)


def test_bad_heads_and_methods_are_refused(planted):
    a, b, _, _, tokens, _ = planted
    with pytest.raises(CodetransferError, match="outside the model's 2 layers x 4 heads"):
        gap_ablation(a, b, tokens, copy_logprob, [(2, 0)])
    with pytest.raises(CodetransferError, match="did you mean 'mean'"):
        gap_ablation(a, b, tokens, copy_logprob, [(1, 0)], method="meen")
    with pytest.raises(CodetransferError, match="at least 2 items"):
        ablation_values(b, tokens[:1], [(1, 0)], "resample")


def test_linear_cka_known_answers():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=gen)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen))
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-9)  # rotation and scale: same representation
    assert linear_cka(x, torch.randn(200, 16, generator=gen)) < 0.2  # unrelated
    # the formula, written out with the centring matrix H (Kornblith et al. 2019, eq. 5 with linear kernels)
    y = torch.randn(200, 8, generator=gen).double() + x[:, :8].double()
    h = torch.eye(200, dtype=torch.double) - 1.0 / 200
    k, l = x.double() @ x.double().T, y @ y.T
    hsic = lambda a, c: torch.trace(a @ h @ c @ h)  # noqa: E731
    assert linear_cka(x, y) == pytest.approx(float(hsic(k, l) / (hsic(k, k) * hsic(l, l)).sqrt()), rel=1e-9)
    with pytest.raises(CodetransferError, match="same inputs"):
        linear_cka(x, x[:10])


def test_cka_table_labels_seed_pairs_as_the_baseline():
    gen = torch.Generator().manual_seed(0)
    acts = {r: {0: torch.randn(50, 4, generator=gen), 1: torch.randn(50, 4, generator=gen)} for r in ("t0", "t1", "c0")}
    table = cka_table(acts, {"t0": "text", "t1": "text", "c0": "code"})
    assert len(table) == 6
    assert set(table.loc[(table.run_a == "t0") & (table.run_b == "t1"), "pair"]) == {"same_recipe"}
    assert set(table.loc[table.run_a == "c0", "pair"]) == {"cross_recipe"}
