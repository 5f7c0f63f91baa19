"""A small model trained on repeated random tokens grows an induction head that our score finds, and
ablating that head raises our induction loss.

Recipe: a 2-layer GPT-NeoX from ``build_model`` (d_model 64, 2 heads per layer, rotary on a quarter
of each head's dimensions as in the grid's default) with its MLPs zeroed and frozen (attention-only,
as in Olsson et al. 2022), trained with AdamW (lr 2e-3, batch 32, 600 steps) on rows
``[bos] + r + x x x ...``: a random prefix ``r``, then a random span ``x`` repeated periodically,
with the period (4..20) and the prefix length drawn per row; the loss counts only the positions
predictable by copying. Tokens are the shared tokenizer's 304 ordinary ids. Head (1, 1) keeps its
initial queries and keys (its values and output still train), so (1, 0) is the only layer-1 head
that can learn where to look; the score must find it among all heads without being told.

Why each choice (measured while choosing it; ``bench/attention_induction.py`` has the sweep):
- with MLPs kept, none of 29 settings (up to 3,000 steps) grew a canonical induction head: most
  stayed on the loss plateau, the rest lowered the induction loss with no head showing the pattern;
  attention-only with the loss on predictable positions: 37 of 45 settings did;
- left alone, EVERY layer-1 head becomes an induction head (scores 0.88-0.98 on all four heads of a
  4-head model), and ablating any one of them raises the induction loss by only 0.05-0.4 nats
  because the others copy too: hence the frozen queries and keys of (1, 1);
- with rotary on half the dimensions, 2 of 3 seeds built a LAGGED induction circuit: layer-0 heads
  attending a fixed 8-11 positions back, and the layer-1 head attending a fixed distance after the
  canonical target (8 positions in one model: ``induction_shift_profile`` 0.91 at shift 8). It
  predicts the copy almost as well (induction loss 0.17-0.25 nats), but our induction score
  (TransformerLens' definition) sees 0.0 on every head. With rotary on a
  quarter of the dimensions, 6 of 6 seeds built the canonical circuit: induction head (1, 0) with
  score 0.96-0.98, a previous-token head in layer 0, induction loss 0.03-0.07 nats, and ablating
  (1, 0) raised it by 7.8-8.4 nats while the heads with neither role moved it by at most 0.14.
  The phase change comes at 300-350 steps (seeds 0-3), so 600 steps leave a margin of about 2x.

The model is saved with ``save_pretrained`` plus the shared tokenizer and loaded back as a
TransformerBridge the normal way (``load_bridge``); its random-init twin (same seed, same zeroed
MLPs) is the baseline. Training runs on one thread (the model is tiny: more threads only add
contention on a shared machine), restored afterwards.
"""

from __future__ import annotations

import pytest
import torch

from codetransfer.analysis import attention as A
from codetransfer.errors import CodetransferError
from codetransfer.trained.config import ModelConfig

CFG = ModelConfig(n_layers=2, d_model=64, n_heads=2, d_mlp=256, n_ctx=64, rotary_pct=0.25)
SEQ_LEN, BATCH, STEPS, LR = 48, 32, 600, 2e-3
PERIOD = (4, 20)
FROZEN_QK = ((1, 1),)  # keeps its initial queries and keys: cannot become an induction head
INDUCTION_HEAD = (1, 0)  # the one head free to become one
HALF = 20  # probe sequences [bos] + x + x with len(x) = HALF, the analysis' own layout


def periodic_batch(token_ids: torch.Tensor, gen: torch.Generator, bos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[bos] + r + x x x ...`` per row (random prefix ``r``, random period ``len(x)``) and the mask of
    the positions predictable by copying (from the second token of the second period on)."""
    ar = torch.arange(SEQ_LEN)[None]
    x = token_ids[torch.randint(0, len(token_ids), (BATCH, SEQ_LEN), generator=gen)]
    x[:, 0] = bos_id
    period = torch.randint(PERIOD[0], PERIOD[1] + 1, (BATCH, 1), generator=gen)
    room = (SEQ_LEN - 1 - 2 * period).clamp_min(1)
    start = 1 + (torch.rand(BATCH, 1, generator=gen) * room).long()
    idx = torch.where(ar >= start + period, start + (ar - start) % period, ar)
    return x.gather(1, idx), ar >= start + period + 1


def attention_only(model) -> None:
    """Zero and freeze every MLP: the residual stream then sees attention only."""
    for block in model.gpt_neox.layers:
        for p in block.mlp.parameters():
            p.data.zero_()
            p.requires_grad_(False)


def freeze_queries_and_keys(model, cfg: ModelConfig, heads) -> None:
    """Keep the query and key weights of ``heads`` ((layer, head) pairs) at their initial values (their
    gradients are zeroed; values and outputs still train): such a head cannot learn where to look."""
    dh = cfg.d_model // cfg.n_heads
    masks: dict[int, torch.Tensor] = {}
    for layer, head in heads:
        m = masks.setdefault(layer, torch.ones(cfg.n_heads, 3 * dh))
        m[head, : 2 * dh] = 0  # GPT-NeoX packs each head's output rows as [q | k | v]
    for layer, m in masks.items():
        qkv = model.gpt_neox.layers[layer].attention.query_key_value
        qkv.weight.register_hook(lambda g, m=m.reshape(-1, 1): g * m)
        qkv.bias.register_hook(lambda g, m=m.reshape(-1): g * m)


def train_induction_model(
    tokenizer, cfg: ModelConfig = CFG, seed: int = 0, steps: int = STEPS, lr: float = LR, frozen_qk=FROZEN_QK
):
    """The recipe of the module docstring; ``steps=0`` gives the random-init twin."""
    from codetransfer.trained.model import build_model

    model = build_model(cfg, vocab_size=len(tokenizer), seed=seed)
    attention_only(model)
    if steps == 0:
        return model.eval()
    freeze_queries_and_keys(model, cfg, frozen_qk)
    ids = torch.tensor(A.ordinary_token_ids(tokenizer))
    gen = torch.Generator().manual_seed(seed + 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
        model.train()
        for _ in range(steps):
            x, predictable = periodic_batch(ids, gen, tokenizer.bos_token_id)
            logits = model(input_ids=x).logits[:, :-1]
            ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
            mask = predictable[:, 1:].float()
            loss = (ce * mask).sum() / mask.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{'trained': (bridge, tokenizer), 'random': (bridge, tokenizer)}``, both loaded from disk."""
    from conftest import TOKENIZER_TEXTS

    from codetransfer.trained.loading import load_bridge
    from codetransfer.trained.tokenizer import train_tokenizer

    tok = train_tokenizer(TOKENIZER_TEXTS, vocab_size=400, min_frequency=1)
    out = {}
    for name, steps in (("trained", STEPS), ("random", 0)):
        folder = tmp_path_factory.mktemp(f"induction_{name}")
        tok.save_pretrained(folder)
        train_induction_model(tok, steps=steps).save_pretrained(folder)
        out[name] = load_bridge(folder, device="cpu")
    return out


@pytest.fixture(scope="module")
def scores(runs):
    """Pattern scores of every head on fresh repeated random tokens: ``metric, layer, head -> value``."""
    return {
        name: A.standard_head_scores(bridge, tok, n_seqs=32, half_len=HALF, seed=1, n_boot=50).set_index(
            ["metric", "layer", "head"]
        )["value"]
        for name, (bridge, tok) in runs.items()
    }


def _rise(bridge, tok, method: str):
    t = A.induction_loss_scores(bridge, tok, n_seqs=32, half_len=HALF, seed=2, method=method, n_boot=50)
    s = t.set_index(["metric", "layer", "head"])["value"]
    return float(s.loc["induction_loss"].iloc[0]), s.loc[f"ablation_{method}_induction_loss"]


def test_the_score_finds_the_induction_head_that_training_grew(scores):
    trained, random = scores["trained"].loc["induction"], scores["random"].loc["induction"]
    assert trained.idxmax() == INDUCTION_HEAD
    assert trained.loc[INDUCTION_HEAD] > 0.8
    assert trained.drop(INDUCTION_HEAD).max() < 0.2
    assert random.max() < 0.2  # random init: near-uniform attention (about 1 / positions)
    # its K-composition partner: a previous-token head in layer 0, absent at random init
    assert scores["trained"].loc["previous_token"].loc[0].max() > 0.5
    assert scores["random"].loc["previous_token"].loc[0].max() < 0.3


def test_the_trained_induction_head_attends_to_the_canonical_target_not_a_lagged_one(runs):
    bridge, tok = runs["trained"]
    tokens = A.repeated_random_tokens(A.ordinary_token_ids(tok), 16, HALF, seed=4, bos_id=tok.bos_token_id)
    shifts = list(range(-1, 12))
    prof = A.induction_shift_profile(A.attention_patterns(bridge, tokens), tokens, shifts).nanmean(1)
    layer, head = INDUCTION_HEAD
    assert shifts[int(prof[:, layer, head].argmax())] == 0
    assert prof[shifts.index(1) :, layer, head].max() < 0.1


@pytest.mark.parametrize("method", A.ABLATIONS)
def test_ablating_the_induction_head_raises_induction_loss_and_other_heads_do_not(runs, scores, method):
    clean, rise = _rise(*runs["trained"], method)
    assert clean < 0.5
    assert rise.loc[INDUCTION_HEAD] > 2.0, rise
    # the layer-0 previous-token head feeds the induction head's keys: ablating it hurts too
    prev = scores["trained"].loc["previous_token"].loc[0]
    partner = (0, int(prev.idxmax()))
    assert rise.loc[partner] > 0.5, rise
    # heads with neither role barely matter
    for head in rise.index:
        if head not in (INDUCTION_HEAD, partner):
            assert rise.loc[head] < 0.1 * rise.loc[INDUCTION_HEAD], (head, rise)
    # nothing to break in the random-init twin
    clean_random, rise_random = _rise(*runs["random"], method)
    assert clean_random > 4.0
    assert rise_random.abs().max() < 0.3, rise_random


def test_second_copy_is_predicted_far_better_than_the_first(runs):
    for name, (bridge, tok) in runs.items():
        tokens = A.repeated_random_tokens(A.ordinary_token_ids(tok), 32, HALF, seed=3, bos_id=tok.bos_token_id)
        with torch.inference_mode():
            logits = bridge(tokens, return_type="logits")
        logp = torch.log_softmax(logits.float(), -1)
        first = float(-logp[:, 1:HALF].gather(-1, tokens[:, 2 : HALF + 1, None]).mean())  # x[1:] in copy 1
        second = float(A.induction_loss(logits, tokens).mean())  # x[1:] in copy 2
        if name == "trained":
            assert first > 4.0 and second < 0.5 and second < 0.1 * first, (first, second)
        else:
            assert abs(second - first) < 0.5, (first, second)  # random init: no copying


# ------------------------------------------------------------------ induction with a lag (no training)


def _planted(tokens: torch.Tensor, shift: int) -> torch.Tensor:
    """Patterns [layer 1, batch, head 2, q, k]: head 0 attends ``shift`` keys after the induction target
    in the second copy of ``[bos] + x + x`` (BOS elsewhere); head 1 attends uniformly."""
    b, n = tokens.shape
    half = (n - 1) // 2
    pat = torch.zeros(1, b, 2, n, n)
    pat[0, :, 0, :, 0] = 1.0
    for q in range(half + 1, n):
        target = q - half + 1 + shift
        pat[0, :, 0, q] = 0
        pat[0, :, 0, q, target] = 1.0
    pat[0, :, 1] = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    return pat


def test_shift_profile_peaks_at_the_planted_lag_where_the_induction_score_sees_nothing():
    tokens = A.repeated_random_tokens(list(range(3, 40)), 4, 12, seed=0)
    pat = _planted(tokens, shift=3)
    prof = A.induction_shift_profile(pat, tokens, shifts=range(-1, 6)).nanmean(1)  # shift layer head
    assert torch.allclose(prof[:, 0, 0], torch.tensor([0, 0, 0, 0, 1.0, 0, 0]), atol=1e-6)
    assert A.pattern_scores(pat, tokens, scores=["induction"])["induction"].nanmean(0)[0, 0] < 1e-6
    # shift 0 and -1 are the induction and duplicate-token scores
    rand = torch.rand(2, 3, 4, 10, 10).tril()
    rand = rand / rand.sum(-1, keepdim=True)
    toks = torch.randint(3, 7, (3, 10))  # few ids: many duplicates
    prof = A.induction_shift_profile(rand, toks, shifts=(0, -1))
    ref = A.pattern_scores(rand, toks, scores=["induction", "duplicate_token"])
    assert torch.allclose(prof[0], ref["induction"], equal_nan=True)
    assert torch.allclose(prof[1], ref["duplicate_token"], equal_nan=True)


def test_shift_profile_refuses_no_shifts():
    tokens = A.repeated_random_tokens(list(range(3, 40)), 1, 4, seed=0)
    with pytest.raises(CodetransferError, match="shifts"):
        A.induction_shift_profile(_planted(tokens, 0), tokens, shifts=())
