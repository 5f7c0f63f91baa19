"""Every result table the library builds has the columns of codetransfer.analysis.schema, and so does README."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from codetransfer.analysis import attention as A
from codetransfer.analysis import evaluate as E
from codetransfer.analysis import patching as P
from codetransfer.analysis import schema
from codetransfer.analysis.learning import learning_table
from codetransfer.errors import CodetransferError
from codetransfer.probes.sweep import probe_layers
from codetransfer.tasks.items import Item

README = Path(__file__).resolve().parents[1] / "README.md"
INFO = SimpleNamespace(name="r0", recipe="text-only", seed=0)


def _run(bridge, tokenizer, name, recipe, seed):
    return SimpleNamespace(
        bridge=bridge, tokenizer=tokenizer, info=SimpleNamespace(name=name, recipe=recipe, seed=seed)
    )


def _items():
    prompts = ["The pen is in box A. Where is the pen? It is in box", "def f(x):\n    return", "The apple is in box B."]
    return [
        Item(
            task="t",
            version="1",
            seed=0,
            index=i,
            category=cat,
            rendering="text",
            prompt=p,
            candidates=(" A", " B", " x"),
            label=i % 2,
            difficulty=i % 2,
        )
        for i, (p, cat) in enumerate(zip(prompts, ("reasoning", "knowledge", "reasoning")))
    ]


@pytest.fixture(scope="module")
def scores(tiny_bridge, tiny_tokenizer):
    runs = [_run(tiny_bridge, tiny_tokenizer, f"{r}-s{s}", r, s) for r in ("text-only", "code25") for s in (0, 1)]
    return E.score_runs(runs, {"t": _items()})


def test_evaluation_tables(scores, tiny_bridge):
    schema.check(scores, "scores")
    schema.check(E.tidy_table(scores, n_boot=20), "eval")
    schema.check(E.relative_change_summary(scores, baseline="text-only", n_boot=20), "summary")
    cols = list(schema.columns("scores"))
    schema.check(learning_table({1: scores[cols], 2: scores[cols]}, 10, n_boot=20), "learning")
    losses = E.heldout_scores(tiny_bridge, {"stdlib": np.arange(200) % 300})
    schema.check(losses, "losses", run_columns=False)
    schema.check(schema.add_run_columns(losses, INFO), "losses")


def test_probe_table(tiny_bridge):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    groups = np.arange(80) % 10
    acts = {
        "resid_post.0": rng.standard_normal((80, 4)) + y[:, None],
        "head_out.1": rng.standard_normal((80, 2, 4)) + y[:, None, None],
    }
    t = probe_layers(
        acts, y, groups, meta=dict(run="r0", recipe="text-only", seed=0, task="t"), mdl=False, seeds=(0,), n_boot=20
    )
    schema.check(t, "probes")
    assert t.loc[t.site == "resid_post", "head"].isna().all()  # no head: Int64 NA, as in patching tables
    assert set(t.loc[t.site == "head_out", "head"]) == {0, 1}


def test_patching_tables(tiny_bridge, tiny_tokenizer):
    from test_patching_cross import _hand_items

    meta = dict(run="r0", recipe="text-only", seed=0, task="t")
    batch = P.pair_batch(_hand_items(), tiny_tokenizer)
    for site in ("resid_pre", "head_out"):
        sweep = P.activation_patching(
            tiny_bridge, batch.clean_tokens, batch.corrupted_tokens, batch.metric, site, positions=batch.positions
        )
        t = schema.check(sweep.table(meta, n_boot=20), "patching")
        assert t["head"].isna().all() if site == "resid_pre" else t["head"].notna().all()
    cross = P.cross_model_patching(
        tiny_bridge, tiny_bridge, batch.clean_tokens, batch.metric, "mlp_out", positions=batch.positions
    )
    schema.check(cross.table(dict(meta, run="r0->r0"), n_boot=20), "cross_model")
    rbatch = P.rendering_batch(_hand_items(), tiny_tokenizer, "code")
    for sweep in P.cross_rendering_patching(tiny_bridge, rbatch, "attn_out"):
        schema.check(sweep.table(meta, n_boot=20), "cross_rendering")


def test_attention_tables(tiny_bridge, tiny_tokenizer, tiny_model_dir):
    kw = dict(n_seqs=2, half_len=4, n_boot=10)
    t = A.score_runs([_run(tiny_bridge, tiny_tokenizer, "r0", "text-only", 0)], A.score_run, items_by_task=None, **kw)
    schema.check(t, "attention")
    over = A.score_checkpoints({1: tiny_model_dir}, None, **kw)
    schema.check(schema.add_run_columns(over, INFO), "attention_over_training")


def test_check_refuses_other_columns_and_sentinel_heads():
    good = pd.DataFrame({c: [1] for c in schema.columns("patching")}).astype({"head": "Int64"})
    schema.check(good, "patching")
    with pytest.raises(CodetransferError, match="missing \\['pos_label'\\]"):
        schema.check(good.drop(columns="pos_label"), "patching")
    with pytest.raises(CodetransferError, match="unexpected \\['extra'\\]"):
        schema.check(good.assign(extra=1), "patching")
    with pytest.raises(CodetransferError, match="'head' must be an integer column"):
        schema.check(good.assign(head=[None]).astype({"head": object}), "patching")
    with pytest.raises(CodetransferError, match="unknown table 'patchign'.*did you mean 'patching'"):
        schema.columns("patchign")
    with pytest.raises(CodetransferError, match="run: expected a loaded run"):
        schema.add_run_columns(good, object())


def test_add_run_columns_puts_them_first_once():
    df = pd.DataFrame({"task": ["t"], "seed": [9]})
    out = schema.add_run_columns(df, SimpleNamespace(info=INFO), name="a->b")
    assert list(out.columns) == ["run", "recipe", "seed", "task"] and out.iloc[0].tolist() == [
        "a->b",
        "text-only",
        0,
        "t",
    ]


def test_readme_lists_every_table_with_its_schema_columns():
    text = README.read_text()
    block = re.search(r"<!-- result tables: start -->\n(.*?)<!-- result tables: end -->", text, re.S)
    assert block, "README.md: the result tables section is missing"
    rows = [r for r in block.group(1).splitlines() if r.startswith("| `")]
    assert rows == schema.readme_rows()
    listed = {re.match(r"\| `([^`]+)`", r).group(1) for r in rows}
    assert listed == {t.file for t in schema.TABLES.values()}


def test_head_column_is_nullable_integer():
    col = schema.head_column([None, 2, schema.NO_HEAD])
    assert str(col.dtype) == "Int64" and col.isna().tolist() == [True, False, True]
    assert col[1] == 2
