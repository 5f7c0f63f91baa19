"""Scoring items, tidy tables and summaries of codetransfer.analysis.evaluate, on tiny models."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest
import torch

from codetransfer.analysis.evaluate import (
    evaluate_runs,
    heldout_loss,
    relative_change_summary,
    score_items,
    score_runs,
    tidy_table,
)
from codetransfer.errors import CodetransferError
from codetransfer.tasks.items import Item
from codetransfer.trained.loading import load_bridge, load_hf_model
from codetransfer.trained.tokenizer import encode_with_bos


def make_item(prompt, candidates, label, index=0, difficulty=0, task="t", category="reasoning"):
    return Item(
        task=task,
        version="1",
        seed=0,
        index=index,
        category=category,
        rendering="text",
        prompt=prompt,
        candidates=tuple(candidates),
        label=label,
        difficulty=difficulty,
    )


def naive_logprobs(hf, tok, item):
    """One sequence per candidate, no batching, no padding: the definition."""
    p, _ = encode_with_bos(tok, item.prompt)
    out = []
    for c in item.candidates:
        ids = tok(c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(hf(torch.tensor([p + ids])).logits[0].double(), -1)
        out.append(sum(lp[len(p) - 1 + t, ids[t]].item() for t in range(len(ids))))
    return np.array(out)


MIXED_ITEMS = [
    make_item("The pen is in box A. Where is the pen? It is in box", [" A", " B"], 0, 0),
    make_item("The apple is in box B. The pen", [" is in box A", " is", " apple pen box"], 1, 1, difficulty=1),
    make_item("def f(x):\n    return", [" x + 1", " x", " box_a"], 0, 2, difficulty=1),
    make_item("print(box_a", [")", "['pen'])"], 1, 3),
    make_item("The", [" pen", " apple is in box B.", " box"], 2, 4, difficulty=2),
]


@pytest.fixture(scope="module")
def tiny_hf(tiny_model_dir):
    return load_hf_model(tiny_model_dir)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_multi_token_scores_equal_naive_computation(tiny_bridge, tiny_hf, tiny_tokenizer, batch_size):
    expected = [naive_logprobs(tiny_hf, tiny_tokenizer, it) for it in MIXED_ITEMS]
    assert any(len(tiny_tokenizer(c, add_special_tokens=False)["input_ids"]) > 1 for c in MIXED_ITEMS[1].candidates)
    for model in (tiny_bridge, tiny_hf):
        df = score_items(model, tiny_tokenizer, MIXED_ITEMS, batch_size=batch_size)
        assert len(df) == len(MIXED_ITEMS)
        for exp, got in zip(expected, df["logprobs"]):
            np.testing.assert_allclose(got, exp, atol=1e-4)
        row = df.iloc[-1]
        exp = expected[-1]
        assert row["logit_diff"] == pytest.approx(exp[2] - max(exp[0], exp[1]), abs=1e-4)
        assert bool(row["correct"]) == (exp[2] > max(exp[0], exp[1]))
        assert row["chance"] == pytest.approx(1 / 3)


class CountingModel(torch.nn.Module):
    """Wraps a HF model, recording the shape of every forward."""

    def __init__(self, hf):
        super().__init__()
        self.hf, self.config, self.shapes = hf, hf.config, []

    def forward(self, tokens):
        self.shapes.append(tuple(tokens.shape))
        return self.hf(tokens)


def test_single_token_candidates_need_one_row_per_item(tiny_hf, tiny_tokenizer):
    items = [
        make_item("The pen is in box A. Where is the pen? It is in box" + " A" * i, [" A", " B", " C"], i % 3, i)
        for i in range(6)
    ]
    counting = CountingModel(tiny_hf)
    score_items(counting, tiny_tokenizer, items, batch_size=64)
    assert len(counting.shapes) == 1 and counting.shapes[0][0] == 6
    # a multi-token candidate adds one row per multi-token candidate, and the item's single tokens share it
    counting.shapes.clear()
    score_items(counting, tiny_tokenizer, [MIXED_ITEMS[1]], batch_size=64)
    assert counting.shapes[0][0] == 2  # " is in box A" and " apple pen box"; " is" is read off the first row


# -- a briefly trained model scores above chance; a random one is at chance ----------------------------

NAMES = [
    "zok",
    "mip",
    "tav",
    "rul",
    "fen",
    "gob",
    "hix",
    "jat",
    "kuv",
    "lep",
    "nod",
    "pes",
    "qir",
    "sab",
    "tum",
    "vog",
    "wex",
    "yab",
    "dut",
    "cim",
]
BOXES = [" A", " B", " C", " D"]


def fact_items():
    return [
        make_item(f"The {n} is in box", BOXES, i % 4, i, difficulty=i % 2, task="facts", category="knowledge")
        for i, n in enumerate(NAMES)
    ]


def train_briefly(folder, items, steps=60, seed=0):
    """Memorise the items' answers with a plain PyTorch loop over the HF model (a few seconds on 2 cores).

    The loss is on the answer tokens only (the names before them are unpredictable)."""
    from codetransfer.trained.tokenizer import load_tokenizer

    tok = load_tokenizer(folder)
    model = load_hf_model(folder).train()
    seqs = [encode_with_bos(tok, it.prompt + it.answer + ".")[0] for it in items]
    width = max(map(len, seqs))
    x = torch.full((len(seqs), width), tok.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.tensor(s)
        n_prompt = len(encode_with_bos(tok, items[i].prompt)[0])
        labels[i, n_prompt : len(s)] = torch.tensor(s[n_prompt:])
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is as fast, and immune to a busy machine (53 s -> 1 s)
    try:
        for _ in range(steps):
            loss = model(x, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(folder)
    return float(loss.detach())


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    from conftest import save_tiny_model

    folder = save_tiny_model(tmp_path_factory.mktemp("trained"))
    final_loss = train_briefly(folder, fact_items())
    assert final_loss < 0.5
    return folder


def test_trained_model_above_chance_random_model_at_chance(trained_dir, tiny_model_dir):
    from codetransfer.analysis.stats import bootstrap_ci

    items = fact_items()
    trained, tok = load_bridge(trained_dir)
    random_init, tok0 = load_bridge(tiny_model_dir)
    acc_t = score_items(trained, tok, items)["correct"].to_numpy(float)
    acc_r = score_items(random_init, tok0, items)["correct"].to_numpy(float)
    _, lo_t, hi_t = bootstrap_ci(acc_t, seed=0)
    _, lo_r, hi_r = bootstrap_ci(acc_r, seed=0)
    assert lo_t > 0.25, acc_t.mean()
    assert lo_r <= 0.25 <= hi_r, acc_r.mean()


def test_evaluate_runs_tidy_table(trained_dir, tiny_model_dir):
    runs = []
    for name, recipe, seed, folder in [
        ("code-a", "code", 0, trained_dir),
        ("text-a", "text-only", 0, tiny_model_dir),
        ("text-b", "text-only", 1, tiny_model_dir),
    ]:
        bridge, tok = load_bridge(folder)
        runs.append(
            types.SimpleNamespace(
                bridge=bridge, tokenizer=tok, info=types.SimpleNamespace(name=name, recipe=recipe, seed=seed)
            )
        )
    items = {"facts": fact_items()}
    table = evaluate_runs(runs, items, n_items=len(NAMES), seed=0, n_boot=500)
    assert {
        "run",
        "recipe",
        "seed",
        "task",
        "category",
        "difficulty",
        "metric",
        "value",
        "ci_low",
        "ci_high",
        "chance",
    } <= set(table.columns)
    assert set(table["difficulty"]) == {"0", "1", "all"}
    assert set(table["metric"]) == {"accuracy", "logit_diff"}
    assert set(table["run"]) == {"code-a", "text-a", "text-b", "code*", "text-only*"}
    acc = table[(table.metric == "accuracy") & (table.difficulty == "all")].set_index("run")
    assert acc.loc["code-a", "ci_low"] > 0.25 and acc.loc["code-a", "chance"] == 0.25
    # identical models with two seeds: the recipe row equals the run rows
    assert acc.loc["text-only*", "value"] == pytest.approx(acc.loc["text-a", "value"])
    assert pd.isna(acc.loc["text-only*", "seed"]) and acc.loc["text-a", "seed"] == 0
    assert (table["ci_low"] <= table["value"] + 1e-12).all() and (table["value"] <= table["ci_high"] + 1e-12).all()


# -- tables from hand-made scores (known answers) -----------------------------------------------------


def fake_scores(acc_by_run: dict[tuple[str, str, int], float], n=400, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for (run, recipe, s), p in acc_by_run.items():
        for task, category in [("boxes", "reasoning"), ("facts", "knowledge")]:
            correct = rng.random(n) < p
            frames.append(
                pd.DataFrame(
                    {
                        "run": run,
                        "recipe": recipe,
                        "seed": s,
                        "task": task,
                        "category": category,
                        "index": np.arange(n),
                        "difficulty": np.arange(n) % 3,
                        "chance": 0.25,
                        "correct": correct,
                        "logit_diff": np.where(correct, 1.0, -1.0),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def test_tidy_table_values_are_group_means(tmp_path):
    scores = fake_scores({("a0", "A", 0): 0.4, ("a1", "A", 1): 0.8, ("b0", "B", 0): 0.5})
    table = tidy_table(scores, n_boot=300)
    g = scores[(scores.run == "a0") & (scores.task == "boxes") & (scores.difficulty == 1)]
    row = table[
        (table.run == "a0") & (table.task == "boxes") & (table.difficulty == "1") & (table.metric == "accuracy")
    ]
    assert row["value"].item() == pytest.approx(g["correct"].mean())
    agg = table[
        (table.run == "A*") & (table.task == "boxes") & (table.difficulty == "all") & (table.metric == "accuracy")
    ]
    per_seed = scores[(scores.recipe == "A") & (scores.task == "boxes")].groupby("seed")["correct"].mean()
    assert agg["value"].item() == pytest.approx(per_seed.mean())
    # seeds 0.4 and 0.8: the seed-aggregated interval is much wider than either run's item interval
    run_row = table[
        (table.run == "a0") & (table.task == "boxes") & (table.difficulty == "all") & (table.metric == "accuracy")
    ]
    assert (agg["ci_high"] - agg["ci_low"]).item() > 2 * (run_row["ci_high"] - run_row["ci_low"]).item()
    table.to_parquet(tmp_path / "t.parquet")
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert back["seed"].isna().sum() == (table["run"].str.endswith("*")).sum()


def test_relative_change_summary_known_answer():
    scores = fake_scores(
        {("t0", "text-only", 0): 0.5, ("t1", "text-only", 1): 0.5, ("c0", "code25", 0): 0.6, ("c1", "code25", 1): 0.6},
        n=3000,
    )
    summary = relative_change_summary(scores, baseline="text-only", n_boot=500)
    assert list(summary["category"]) == ["knowledge", "reasoning"]
    assert set(summary["recipe"]) == {"code25"}
    for _, r in summary.iterrows():
        assert r.value == pytest.approx(r.recipe_value / r.baseline_value - 1)
        assert r.ci_low < 0.2 < r.ci_high and r.ci_high - r.ci_low < 0.15
    with pytest.raises(CodetransferError, match="baseline: recipe 'text' is not among"):
        relative_change_summary(scores, baseline="text")


def test_heldout_loss_equals_hf_loss(tiny_hf, tiny_bridge):
    rng = np.random.default_rng(0)
    n_ctx = tiny_hf.config.max_position_embeddings
    arr = rng.integers(3, 300, size=3 * n_ctx + 5).astype(np.uint16)
    table = heldout_loss(tiny_bridge, {"stdlib": arr, "gcide": arr[: n_ctx + 1]}, batch_size=2, n_boot=200)
    x = torch.as_tensor(arr[: 3 * n_ctx].astype(np.int64)).view(3, n_ctx)
    with torch.no_grad():
        expected = tiny_hf(x, labels=x).loss.item()
    row = table.set_index("task").loc["heldout:stdlib"]
    assert row["value"] == pytest.approx(expected, abs=1e-4)
    assert row["category"] == "code" and row["metric"] == "loss"
    assert table.set_index("task").loc["heldout:gcide", "category"] == "text"
    with pytest.raises(CodetransferError, match="shorter than one window"):
        heldout_loss(tiny_bridge, {"tiny": arr[:10]})


# -- bad inputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "items, match",
    [
        ([], "at least one item"),
        ([make_item("The pen is in box A." * 20, [" A", " B"], 0)], "longer than the model's context n_ctx=64"),
        ([make_item("The pen is in bo", ["x A", " B"], 0)], "does not tokenize as a continuation"),
        ([make_item("The pen is in box", [" A", " B"], 2)], "label 2"),
        ([make_item("The pen is in box", [" A", " A"], 0)], "repeat"),
        ([make_item("The pen is in box", [" A"], 0)], "at least 2 candidates"),
        ([make_item("The pen is in box", [" A", ""], 0)], "candidate 1 is empty"),
    ],
)
def test_bad_items_are_refused_with_one_line(tiny_hf, tiny_tokenizer, items, match):
    good = make_item("The pen is in box", [" A", " B"], 0)
    counting = CountingModel(tiny_hf)
    with pytest.raises(CodetransferError, match=match) as e:
        score_items(counting, tiny_tokenizer, [good, *items] if items else items)
    assert "\n" not in str(e.value)
    assert counting.shapes == []  # refused before any forward


def test_fit_to_context_drops_whole_levels(tiny_tokenizer):
    from codetransfer.analysis.evaluate import check_fits_context, fit_to_context, item_token_lengths

    short = "The pen is in box"
    items = [
        make_item(short, [" A", " B"], 0, 0, difficulty=0),
        make_item(short, [" A", " B"], 0, 1, difficulty=1),
        make_item(short + " A." * 30, [" A", " B"], 0, 2, difficulty=1),
        make_item(short, [" A", " apple pen box pen"], 0, 3, difficulty=2),
    ]
    lengths = item_token_lengths(items, tiny_tokenizer)
    assert lengths[0] == len(encode_with_bos(tiny_tokenizer, short)[0])  # bos + prompt + 1 - 1
    assert (
        lengths[3] == lengths[0] + len(tiny_tokenizer(" apple pen box pen", add_special_tokens=False)["input_ids"]) - 1
    )
    n_ctx = int(lengths[3])
    kept, dropped = fit_to_context({"t": items, "u": items[2:3]}, tiny_tokenizer, n_ctx)
    assert dropped == {"t": [1], "u": [1]}
    assert [it.index for it in kept["t"]] == [0, 3] and "u" not in kept
    check_fits_context({"t": items[:2]}, tiny_tokenizer, n_ctx)
    with pytest.raises(CodetransferError, match=rf"n_ctx={n_ctx} tokens \(t difficulty 1\)"):
        check_fits_context({"t": items}, tiny_tokenizer, n_ctx)


def test_score_runs_refuses_bad_runs(tiny_hf, tiny_tokenizer):
    items = {"t": [make_item("The pen is in box", [" A", " B"], 0)]}
    with pytest.raises(CodetransferError, match="loaded_runs: expected at least one"):
        score_runs([], items)
    with pytest.raises(CodetransferError, match="loaded_runs: expected loaded runs"):
        score_runs([tiny_hf], items)
    with pytest.raises(CodetransferError, match="batch_size"):
        score_items(tiny_hf, tiny_tokenizer, items["t"], batch_size=0)


def test_plots_draw_one_line_per_recipe_and_chance():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from codetransfer.analysis.evaluate import plot_accuracy_vs_difficulty, plot_relative_change

    scores = fake_scores({("t0", "text-only", 0): 0.5, ("c0", "code25", 0): 0.7}, n=60)
    table = tidy_table(scores, n_boot=100)
    fig, ax = plt.subplots()
    out = plot_accuracy_vs_difficulty(table, task="boxes", ax=ax)
    assert out is ax and [l.get_label() for l in ax.lines] == ["code25", "text-only", "chance"]
    assert list(ax.lines[0].get_xdata()) == [0, 1, 2]
    with pytest.raises(CodetransferError, match="task"):
        plot_accuracy_vs_difficulty(table)
    fig2, ax2 = plt.subplots()
    assert plot_relative_change(relative_change_summary(scores, n_boot=100), ax=ax2) is ax2
    assert len(ax2.patches) == 2  # one recipe x two categories
    plt.close("all")


def test_copy_chance_known_answers():
    from codetransfer.analysis.evaluate import copy_chance

    boxes = (" A", " B", " C", " D", " E")
    # two of five boxes mentioned, the answer among them: a key-blind copier is right half the time
    assert copy_chance("The pen is in box B. The cup is in box A. The pen is in box", boxes, 1) == 0.5
    # the answer is not mentioned: copying can never be right
    assert copy_chance("The pen is in box B. The cup is in box A. The pen is in box", boxes, 3) == 0.0
    # whole words only: "Bob" does not mention " B", "Anna" does not mention " Ann"
    assert copy_chance("Bob has the pen. The pen is with", (" B", " Bob"), 1) == 1.0
    assert copy_chance("Anna has 3 pens. Anna has", (" Ann", " 3"), 1) == 1.0
    # nothing mentioned: the uniform guess
    assert copy_chance("Nothing here is", (" 1", " 2", " 3", " 4"), 0) == 0.25


def test_tidy_table_carries_the_copy_baseline_of_real_items(tiny_bridge, tiny_tokenizer):
    from codetransfer.analysis.evaluate import copy_chance, score_runs, tidy_table
    from codetransfer.tasks import get_task

    class Run:
        bridge, tokenizer = tiny_bridge, tiny_tokenizer

        class info:
            name, recipe, seed = "r-s0", "r", 0

    items = get_task("entity_tracking").generate(12, seed=3, difficulty=0)
    table = tidy_table(score_runs([Run()], {"entity_tracking": items}), n_boot=50)
    row = table[(table["run"] == "r-s0") & (table["difficulty"] == "0") & (table["metric"] == "accuracy")].iloc[0]
    expected = np.mean([copy_chance(it.prompt, it.candidates, it.label) for it in items])
    assert row["copy_chance"] == pytest.approx(expected)
    # level 0 of entity tracking states every fact once: copying beats the uniform guess, but is not certain
    assert row["chance"] < row["copy_chance"] < 1.0


def test_fitting_max_difficulty_measures_and_says_once_per_context_and_tokenizer(tmp_path, monkeypatch):
    """The runs of one grid share context and tokenizer (each run folder holds its own copy of the file): the
    fitting level is measured, and the levels it leaves out are named, once per distinct pair, not per run."""
    from types import SimpleNamespace

    from codetransfer.analysis import grid as G

    measured = []
    monkeypatch.setattr(G, "_n_ctx", lambda run: 128)
    monkeypatch.setattr(G, "hardest_fitting_level", lambda task, run, n, seed, top: measured.append(run.name) or 1)
    runs = []
    for name, content in (("a-s0", "tok-1"), ("a-s1", "tok-1"), ("b-s0", "tok-2")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tokenizer.json").write_text(content)
        runs.append(SimpleNamespace(name=name, path=tmp_path / name))
    said = []
    assert G.fitting_max_difficulty(["entity_tracking"], runs, 10, 0, log=said.append) == 1
    assert measured == ["a-s0", "b-s0"]
    assert len(said) == 2 and all("levels above 1 left out" in s for s in said)


def test_heldout_arrays_only_from_a_data_folder_of_the_runs_tokenizer(tmp_path):
    """Held-out token arrays are scored only under the tokenizer that wrote them: a neighbouring data folder
    of another tokenizer (or runs that name none, as a model set's checkpoints) gives no held-out loss."""
    import json
    from types import SimpleNamespace

    import numpy as np

    from codetransfer.analysis.grid import heldout_arrays

    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "narratives.heldout.npy", np.zeros(4, dtype=np.uint16))
    (tmp_path / "data" / "manifest.json").write_text(json.dumps({"tokenizer_sha256": "aaa"}))
    (tmp_path / "runs" / "r-s0").mkdir(parents=True)

    def runs(tok):
        return [
            SimpleNamespace(path=tmp_path / "runs" / "r-s0", record={} if tok is None else {"tokenizer_sha256": tok})
        ]

    assert list(heldout_arrays(tmp_path / "runs", runs("aaa"))) == ["narratives"]
    assert heldout_arrays(tmp_path / "runs", runs("bbb")) == {}
    assert heldout_arrays(tmp_path / "runs", runs(None)) == {}
