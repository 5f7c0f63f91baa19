"""Attention head scores: parity with TransformerLens' head_detector, forced patterns, task spans,
ablation, direct logit attribution, induction loss, head matching, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from codetransfer.analysis import attention as A
from codetransfer.errors import CodetransferError
from codetransfer.tasks.items import Item
from codetransfer.trained.tokenizer import encode_with_bos

PROMPTS = [
    "The pen is in box A. The apple is in box B. The pen is in box",
    "def f(x):\n    return x + 1\nbox_a = ['pen']\nbox_a = ['pen']",
    "The pen is in box A. The pen is in box A.",
]


def _pad(tokenizer, prompts):
    rows = [encode_with_bos(tokenizer, p)[0] for p in prompts]
    lengths = torch.tensor([len(r) for r in rows])
    tokens = torch.full((len(rows), int(lengths.max())), tokenizer.pad_token_id)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r)
    return tokens, lengths


def _item(prompt, answer_span, candidates=(" A", " B"), label=0, twin=None, rendering="text", extra=None):
    spans = {"query": (prompt.rindex("pen"), prompt.rindex("pen") + 3), "answer_source": answer_span}
    spans.update(extra or {})
    return Item(
        task="entity_tracking",
        version="test",
        seed=0,
        index=0,
        category="reasoning",
        rendering=rendering,
        prompt=prompt,
        candidates=candidates,
        label=label,
        difficulty=0,
        spans=spans,
        twin=twin,
    )


TEXT = "The pen is in box A. The apple is in box B. The pen is in box"
CODE = "box_a = ['pen']\nbox_b = ['apple']\nprint(box_"


def _items():
    code = _item(CODE, (4, 5), candidates=(" a", " b"), rendering="code")
    return [
        _item(TEXT, (18, 19), twin=code),
        _item("The apple is in box B. The pen is in box A. The pen is in box", (41, 42), twin=code),
    ]


# ------------------------------------------------------------------ pattern scores


@pytest.mark.parametrize("kind", A.DETECTION_KINDS)
def test_detection_patterns_equal_head_detector(kind):
    from transformer_lens import head_detector as hd

    tokens = torch.randint(3, 9, (4, 12))  # small id range: many duplicates
    ours = A.detection_pattern(tokens, kind)
    for i in range(tokens.shape[0]):
        theirs = getattr(hd, f"get_{kind}_head_detection_pattern")(tokens[i : i + 1])
        assert torch.equal(ours[i], theirs)


@pytest.mark.parametrize("kind", A.DETECTION_KINDS)
@pytest.mark.parametrize("exclude_bos,exclude_current", [(False, False), (True, False), (False, True), (True, True)])
def test_scores_equal_head_detector(tiny_bridge, tiny_tokenizer, kind, exclude_bos, exclude_current):
    from transformer_lens.head_detector import detect_head

    tokens, lengths = _pad(tiny_tokenizer, PROMPTS)
    ours = A.head_scores(
        tiny_bridge,
        tokens,
        lengths=lengths,
        scores=[kind],
        reduction="head_detector",
        exclude_bos=exclude_bos,
        exclude_current_token=exclude_current,
    )[kind].mean(0)
    theirs = detect_head(
        tiny_bridge, PROMPTS, f"{kind}_head", exclude_bos=exclude_bos, exclude_current_token=exclude_current
    )
    assert torch.allclose(ours, theirs.float(), atol=1e-5), (ours, theirs)


def test_padding_does_not_change_scores(tiny_bridge, tiny_tokenizer):
    tokens, lengths = _pad(tiny_tokenizer, PROMPTS)
    together = A.head_scores(tiny_bridge, tokens, lengths=lengths)
    for i, p in enumerate(PROMPTS):
        alone = A.head_scores(tiny_bridge, torch.tensor([encode_with_bos(tiny_tokenizer, p)[0]]))
        for s, v in alone.items():
            assert torch.allclose(together[s][i], v[0], atol=1e-5, equal_nan=True), s


def _forced(kind, half):
    def hook(pattern, hook):
        n = pattern.shape[-1]
        f = torch.zeros_like(pattern)
        f[..., :, 0] = 1.0  # rows without a target look at BOS
        for q in range(1, n):
            target = q - 1 if kind == "previous_token" else (q - half + 1 if q > half else None)
            if target is not None:
                f[..., q, 0] = 0.0
                f[..., q, target] = 1.0
        return f

    return hook


@pytest.mark.parametrize("kind", ["previous_token", "induction"])
def test_forced_pattern_scores_one_on_its_score_only(tiny_bridge, tiny_tokenizer, kind):
    half = 12
    tokens = A.repeated_random_tokens(A.ordinary_token_ids(tiny_tokenizer), 8, half, seed=1)
    with tiny_bridge.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", _forced(kind, half))]):
        scores = {s: v.mean(0) for s, v in A.head_scores(tiny_bridge, tokens).items()}
    assert torch.allclose(scores[kind][1], torch.ones(4), atol=1e-6)
    others = [s for s in A.DETECTION_KINDS if s != kind]
    for s in others:
        assert scores[s][1].max() < 0.1, (s, scores[s][1])
    assert scores["entropy"][1].abs().max() < 1e-6
    # the unforced layer 0 of a random model is diffuse: no score near 1
    assert scores[kind][0].max() < 0.5


def test_repeated_random_tokens_are_seeded_and_from_the_vocabulary(tiny_tokenizer):
    ids = A.ordinary_token_ids(tiny_tokenizer)
    a = A.repeated_random_tokens(ids, 5, 10, seed=3)
    assert torch.equal(a, A.repeated_random_tokens(ids, 5, 10, seed=3))
    assert not torch.equal(a, A.repeated_random_tokens(ids, 5, 10, seed=4))
    assert (a[:, 0] == 0).all() and torch.equal(a[:, 1:11], a[:, 11:])
    assert set(a[:, 1:].flatten().tolist()) <= set(ids) and 0 not in a[:, 1:]
    assert all(len(set(row[1:11].tolist())) == 10 for row in a)  # no accidental repeats inside a half


# ------------------------------------------------------------------ task-aligned attention


def test_task_attention_reads_the_spans(tiny_bridge, tiny_tokenizer):
    items = _items()
    enc = A.encode_items(tiny_tokenizer, items)
    # the answer source of item 0 is the " A" of "box A"; of item 1 too (second sentence)
    for i, it in enumerate(items):
        (pos,) = enc.span_tokens[i]["answer_source"]
        ids, offsets = encode_with_bos(tiny_tokenizer, it.prompt)
        assert it.prompt[offsets[pos][0] : offsets[pos][1]].strip() == "A"
        (d,) = enc.distractor_tokens[i]
        assert it.prompt[offsets[d][0] : offsets[d][1]].strip() == "B"

    def to_answer(pattern, hook):
        f = torch.zeros_like(pattern)
        f[..., :, 0] = 1.0
        if pattern.shape[0] == len(items) and pattern.shape[-1] == enc.tokens.shape[1]:
            for i in range(len(items)):
                q = int(enc.final[i])
                f[i, :, q, 0] = 0.0
                f[i, :, q, enc.span_tokens[i]["answer_source"][0]] = 0.75
                f[i, :, q, enc.distractor_tokens[i][0]] = 0.25
        return f

    with tiny_bridge.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", to_answer)]):
        table = A.task_attention_scores(tiny_bridge, tiny_tokenizer, items, n_boot=50)
    text = table[(table.rendering == "text") & (table.layer == 0)].set_index(["metric", "head"])["value"]
    assert np.allclose(text.loc["attn_to_answer_source"], 0.75)
    assert np.allclose(text.loc["attn_to_distractors"], 0.25)
    assert np.allclose(text.loc["attn_answer_minus_distractors"], 0.5)
    assert set(table.rendering) == {"text", "code"}  # the twins were scored too
    free = table[(table.rendering == "text") & (table.layer == 1) & (table.metric == "attn_to_answer_source")]
    assert (free.value < 0.5).all() and (free.ci_low <= free.value).all() and (free.value <= free.ci_high).all()


def test_items_without_the_needed_span_are_refused(tiny_bridge, tiny_tokenizer):
    item = _item(TEXT, (18, 19))
    bare = Item(**{**item.__dict__, "spans": {"query": (0, 3)}})
    with pytest.raises(CodetransferError, match="answer_source") as e:
        A.task_attention_scores(tiny_bridge, tiny_tokenizer, [bare])
    assert "\n" not in str(e.value)
    same = Item(**{**item.__dict__, "candidates": (" A", " A")})
    with pytest.raises(CodetransferError, match="first token"):
        A.head_ablation_scores(tiny_bridge, tiny_tokenizer, [same])


# ------------------------------------------------------------------ ablation and DLA


@pytest.mark.parametrize("method", A.ABLATIONS)
def test_ablation_equals_a_manual_hooked_run(tiny_bridge, tiny_tokenizer, method):
    items = _items()
    table = A.head_ablation_scores(tiny_bridge, tiny_tokenizer, items, method=method, n_boot=20)
    enc = A.encode_items(tiny_tokenizer, items)
    means = A.head_means(tiny_bridge, enc.tokens, enc.lengths)
    with torch.inference_mode():
        clean = A.logit_diff(tiny_bridge(enc.tokens), enc)
        for layer, head in [(0, 2), (1, 3)]:

            def hook(z, hook):
                z = z.clone()
                z[:, :, head] = means[layer, head] if method == "mean" else 0.0
                return z

            logits = tiny_bridge.run_with_hooks(enc.tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
            want = (A.logit_diff(logits, enc) - clean).mean().item()
            got = table.query("layer == @layer and head == @head")["value"].item()
            assert got == pytest.approx(want, abs=1e-5)
            assert abs(want) > 1e-6  # the ablation does something on this model


def _model_with_learned_norms(folder, arch: str = "gpt_neox"):
    """A saved tiny model whose norm weights (and LayerNorm biases) are not 1/0 (so DLA must use them)."""
    import dataclasses

    from conftest import TINY, TOKENIZER_TEXTS
    from codetransfer.trained.model import build_model
    from codetransfer.trained.tokenizer import train_tokenizer

    tok = train_tokenizer(TOKENIZER_TEXTS, vocab_size=400, min_frequency=1)
    tok.save_pretrained(folder)
    model = build_model(dataclasses.replace(TINY, arch=arch), vocab_size=len(tok), seed=5)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name or "final_layer_norm" in name or name == "model.norm.weight":
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])  # LayerNorm + biases; RMSNorm, no biases (the tiny grid)
def test_dla_manual_equals_transformer_lens_in_compatibility_mode(tmp_path, arch):
    from codetransfer.trained.loading import load_bridge

    folder = _model_with_learned_norms(tmp_path, arch)
    plain, tok = load_bridge(folder)
    compat, _ = load_bridge(folder)  # a SEPARATE bridge: compatibility mode mutates weights
    compat.enable_compatibility_mode()
    items = _items() + [_item(TEXT, (18, 19), candidates=(" A", " B", " C", " pen"))]
    enc = A.encode_items(tok, items)
    manual = A.head_logit_attribution(plain, enc)
    tl = A.head_logit_attribution(compat, enc)
    assert torch.allclose(manual, tl, atol=1e-4), (manual - tl).abs().max()
    assert manual.abs().max() > 1e-3
    # the tidy table carries the same numbers
    table = A.head_dla_scores(plain, tok, items[:2], n_boot=10)
    assert np.allclose(table.sort_values(["layer", "head"]).value, manual[:2].mean(0).flatten().numpy(), atol=1e-5)


# ------------------------------------------------------------------ induction loss


def test_induction_loss_known_answers():
    tokens = A.repeated_random_tokens(range(3, 50), 3, 6, seed=0)
    vocab = 50
    uniform = torch.zeros(3, tokens.shape[1], vocab)
    assert torch.allclose(A.induction_loss(uniform, tokens), torch.full((3,), float(np.log(vocab))))
    perfect = torch.full((3, tokens.shape[1], vocab), -1e4)
    perfect.scatter_(-1, tokens.roll(-1, dims=1)[..., None], 1e4)  # predicts the next token everywhere
    assert A.induction_loss(perfect, tokens).abs().max() < 1e-4
    # only the predictable half counts: wrong guesses in the first half change nothing
    perfect[:, :7] = 0.0
    assert A.induction_loss(perfect, tokens).abs().max() < 1e-4
    with pytest.raises(CodetransferError, match="odd length"):
        A.induction_loss(uniform[:, :6], tokens[:, :6])


def test_induction_loss_equals_manual_cross_entropy(tiny_bridge, tiny_tokenizer):
    tokens = A.repeated_random_tokens(A.ordinary_token_ids(tiny_tokenizer), 4, 8, seed=2)
    with torch.inference_mode():
        logits = tiny_bridge(tokens)
    manual = (
        torch.nn.functional.cross_entropy(
            logits[:, 9:16].reshape(-1, logits.shape[-1]), tokens[:, 10:17].reshape(-1), reduction="none"
        )
        .view(4, 7)
        .mean(-1)
    )
    assert torch.allclose(A.induction_loss(logits, tokens), manual, atol=1e-5)


# ------------------------------------------------------------------ across runs


def _grid_table(perm, drop_role=None):
    """Two runs of 2x3 heads; run b holds run a's heads permuted by ``perm`` (and maybe loses one role)."""
    rng = np.random.default_rng(0)
    metrics = ["previous_token", "induction", "bos", "entropy"]
    prof_a = rng.uniform(size=(6, 4))
    prof_b = prof_a[perm].copy()
    if drop_role is not None:
        prof_b[list(perm).index(drop_role)] = [0.0, 0.0, 5.0, 9.0]
    rows = []
    for run, prof in (("a", prof_a), ("b", prof_b)):
        for k in range(6):
            for m, metric in enumerate(metrics):
                rows.append(
                    dict(
                        run=run,
                        recipe=run,
                        seed=0,
                        task="repeated_random",
                        rendering="",
                        layer=k // 3,
                        head=k % 3,
                        metric=metric,
                        value=prof[k, m],
                        ci_low=np.nan,
                        ci_high=np.nan,
                    )
                )
    return pd.DataFrame(rows)


def test_match_heads_recovers_a_permutation_and_flags_a_lost_role():
    perm = [4, 0, 5, 1, 3, 2]
    m = A.match_heads(_grid_table(perm), "a", "b")
    got = {(r.layer_a * 3 + r.head_a): (r.layer_b * 3 + r.head_b) for r in m.itertuples()}
    assert got == {perm[j]: j for j in range(6)}
    assert np.allclose(m.distance, 0) and m.matched.all()
    lost = A.unmatched_roles(_grid_table(perm, drop_role=4), "a", "b", threshold=1.0)
    assert [(r.layer_a, r.head_a) for r in lost.itertuples()] == [(1, 1)]


def test_comparisons_refuse_unknown_runs_metrics_and_other_shapes():
    table = _grid_table([0, 1, 2, 3, 4, 5])
    with pytest.raises(CodetransferError, match="did you mean 'a'"):
        A.match_heads(table, "aa", "b")
    with pytest.raises(CodetransferError, match="metrics"):
        A.match_heads(table, "a", "b", metrics=["inductoin"])
    small = table[~((table.run == "b") & (table.layer == 1))]
    with pytest.raises(CodetransferError, match="same shape"):
        A.match_heads(small, "a", "b")


def test_score_runs_refuses_runs_of_different_shapes(tiny_bridge, tiny_tokenizer):
    from types import SimpleNamespace as NS

    other = NS(
        bridge=NS(cfg=NS(n_layers=3, n_heads=4)), tokenizer=tiny_tokenizer, info=NS(name="big", recipe="r", seed=0)
    )
    run = NS(bridge=tiny_bridge, tokenizer=tiny_tokenizer, info=NS(name="tiny", recipe="r", seed=0))
    fake = lambda bridge, tok, **kw: pd.DataFrame({"layer": [0], "value": [1.0]})  # noqa: E731
    out = A.score_runs([run], score=fake)
    assert list(out.columns[:3]) == ["run", "recipe", "seed"]
    with pytest.raises(CodetransferError, match="3 layers x 4 heads"):
        A.score_runs([run, other], score=fake)


def test_bad_heads_tokens_and_options_are_refused(tiny_bridge):
    with pytest.raises(CodetransferError, match="layer: expected 0..1"):
        A.check_heads(tiny_bridge, [(2, 0)])
    with pytest.raises(CodetransferError, match="head: expected 0..3"):
        A.check_heads(tiny_bridge, [(0, 4)])
    with pytest.raises(CodetransferError, match="ids must lie"):
        A.head_scores(tiny_bridge, torch.tensor([[0, 10_000]]))
    with pytest.raises(CodetransferError, match="context"):
        A.head_scores(tiny_bridge, torch.zeros(1, 100, dtype=torch.long))
    with pytest.raises(CodetransferError, match="did you mean 'induction'"):
        A.head_scores(tiny_bridge, torch.zeros(1, 5, dtype=torch.long), scores=["inductin"])
    with pytest.raises(CodetransferError, match="method"):
        A.ablated_metric(tiny_bridge, torch.zeros(1, 5, dtype=torch.long), lambda l, o: l[:, 0, 0], method="resample")


def test_circuitsvis_view_renders_offline_with_the_tokens():
    import torch

    from codetransfer.analysis.attention_plots import attention_heads_view
    from codetransfer.errors import CodetransferError

    tokens = ["<|bos|>", "The", " pen", " is", " in", " box"]
    patterns = torch.rand(2, 1, 4, 6, 6).tril().softmax(-1)  # [layer, batch, head, q, k]
    html = attention_heads_view(patterns, tokens, layer=1)._repr_html_()  # what a notebook displays
    assert "CircuitsVis" in html and '" pen"' in html
    assert "unpkg.com" not in html and 'src="http' not in html  # the JavaScript is inline: renders offline
    with pytest.raises(CodetransferError, match="layer"):
        attention_heads_view(patterns, tokens, layer=2)
    with pytest.raises(CodetransferError, match="tokens"):
        attention_heads_view(patterns, tokens[:-1], layer=0)


def test_best_heads_takes_each_runs_own_strongest_head_not_one_head_averaged_over_seeds():
    from codetransfer.analysis.attention import best_heads

    rows = []
    # seed 0's induction head is L1H0, seed 1's L1H1: the (layer, head) mean over seeds would be 0.45 for both
    for seed, scores in enumerate([[0.80, 0.10], [0.10, 0.70]]):
        for head, v in enumerate(scores):
            for metric, value in (("induction", v), ("induction_loss", 5.0 - 4 * v)):
                rows.append(dict(run=f"copy-s{seed}", recipe="copy", seed=seed, task="repeated_random", layer=1,
                                 head=head, metric=metric, value=value, ci_low=value - 0.05, ci_high=value + 0.05))  # fmt: skip
        rows.append(dict(run=f"copy-s{seed}", recipe="copy", seed=seed, task="counting", layer=0, head=1,
                         metric="induction", value=0.99, ci_low=0.9, ci_high=1.0))  # fmt: skip  # another task
    t = pd.DataFrame(rows)
    best = best_heads(t)
    assert list(zip(best["run"], best["head"], best["value"])) == [("copy-s0", 0, 0.80), ("copy-s1", 1, 0.70)]
    assert list(best_heads(t, "induction_loss")["head"]) == [0, 1]  # a loss: the lowest
    assert best_heads(t, "previous_token").empty
    with pytest.raises(CodetransferError, match="missing"):
        best_heads(t.drop(columns="task"))
