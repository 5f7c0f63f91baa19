"""The batch probing sweep on a tiny model and real task items: restartable, shardable, refusals; plots."""

from __future__ import annotations

import dataclasses
import types

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest

from codetransfer.errors import CodetransferError
from codetransfer.probes.plots import first_decodable_layer, plot_first_decodable_layer, plot_probe_curves
from codetransfer.probes.sweep import COLUMNS, item_rows, run_probe_sweep

FAST = dict(n_items=24, seeds=(0,), min_rows=30, probe_params={"Cs": 2, "cv": 2}, mdl=False)


@pytest.fixture(scope="module")
def long_ctx_model(tmp_path_factory):
    from conftest import TINY, save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("probe_model"), cfg=dataclasses.replace(TINY, n_ctx=256))


class Counter:
    """Counts model loads and task generations, the expensive steps of a unit."""

    def __init__(self):
        self.loads = 0
        self.generates = 0

    def load(self, path):
        from codetransfer.trained.loading import load_bridge

        self.loads += 1
        bridge, tok = load_bridge(path, device="cpu")
        return types.SimpleNamespace(bridge=bridge, tokenizer=tok)

    def generate(self, task, n, seed):
        from codetransfer.tasks import get_task

        self.generates += 1
        return get_task(task).generate(n, seed, difficulty=1)


def _runs(path):
    return [
        types.SimpleNamespace(name="r_text", path=path, recipe="text", seed=0),
        types.SimpleNamespace(name="r_code", path=path, recipe="code25", seed=1),
    ]


def test_item_rows_put_labels_on_the_token_that_ends_their_span(tiny_tokenizer):
    from codetransfer.tasks import get_task

    items = get_task("entity_tracking").generate(3, 0, difficulty=1)
    tokens, positions, index = item_rows(items, tiny_tokenizer, twins=True)
    assert len(tokens) == 6 and set(index["rendering"]) == {"text", "code"}
    k = 0
    for item_tokens, pos, item in zip(tokens, positions, list(items) + [it.twin for it in items]):
        assert item_tokens[0] == tiny_tokenizer.bos_token_id
        for p, lab in zip(pos, item.labels):
            # the token at p decodes to text that ends exactly where the label span ends
            upto = tiny_tokenizer.decode(item_tokens[1 : p + 1])
            assert item.prompt[: lab.end].endswith(upto[-3:]) and len(upto) >= lab.end
            assert index.loc[k, "label"] == lab.name
            k += 1


def test_item_rows_select_labels_and_put_the_nonlocal_ones_where_claimed(tiny_tokenizer):
    from codetransfer.probes.sweep import NONLOCAL_LABELS
    from codetransfer.tasks import get_task

    items = get_task("entity_tracking").generate(12, 0, difficulty=2)
    tokens, positions, index = item_rows(items, tiny_tokenizer, twins=True, labels=NONLOCAL_LABELS)
    assert set(index["family"]) == {"box@query", "box@op"} and set(index["rendering"]) == {"text", "code"}
    k = 0
    for item_tokens, pos, item in zip(tokens, positions, list(items) + [it.twin for it in items]):
        kept = [lab for lab in item.labels if "@" in lab.name]
        assert len(pos) == len(kept) and sum(lab.name == "box@query" for lab in kept) == 1
        for p, lab in zip(pos, kept):
            upto = tiny_tokenizer.decode(item_tokens[1 : p + 1])
            assert index.loc[k, "label"] == lab.name and index.loc[k, "value"] == lab.value
            if lab.name == "box@query":  # the prompt's last token, where the answer is predicted
                assert p == len(item_tokens) - 1 and lab.value == item.answer.strip()
            else:  # the end of the operation's statement
                if item.rendering == "text":
                    assert upto.endswith(".")
                else:
                    assert item.prompt[lab.end] == "\n"
                assert item.prompt[: lab.end].endswith(upto[-3:])
            k += 1
    # every label: the per-statement ones come back; a pattern that matches nothing is refused in one line
    _, _, all_rows = item_rows(items, tiny_tokenizer, labels=None)
    assert {"box", "box@query", "box@op"} == set(all_rows["family"])
    _, _, boxes = item_rows(items, tiny_tokenizer, labels=["box(*)"])
    assert set(boxes["family"]) == {"box"}
    with pytest.raises(CodetransferError, match="no label of these items matches") as e:
        item_rows(items, tiny_tokenizer, labels=["holder@*"])
    assert "\n" not in str(e.value)
    with pytest.raises(CodetransferError, match="patterns"):
        item_rows(items, tiny_tokenizer, labels="*@query")


def test_sweep_restarts_without_repeating_work_and_shards_partition(tmp_path, long_ctx_model):
    runs = _runs(long_ctx_model)[:1]
    sites = ["resid_post.1", "head.1"]  # 'head' is the alias of 'head_out'; tables name the kind
    # two shards together = one full sweep
    c0, c1 = Counter(), Counter()
    run_probe_sweep(
        runs, ["entity_tracking"], sites, tmp_path / "s", shard=(0, 2), load=c0.load, generate=c0.generate, **FAST
    )
    parts_after_0 = sorted(p.name for p in (tmp_path / "s" / "parts").glob("*.parquet"))
    table = run_probe_sweep(
        runs, ["entity_tracking"], sites, tmp_path / "s", shard=(1, 2), load=c1.load, generate=c1.generate, **FAST
    )
    parts = sorted(p.name for p in (tmp_path / "s" / "parts").glob("*.parquet"))
    assert len(parts_after_0) == 1 and len(parts) == 2
    assert c0.loads == 1 and c1.loads == 1 and c0.generates == 1
    mtimes = {p: (tmp_path / "s" / "parts" / p).stat().st_mtime_ns for p in parts}
    # a restart of the whole sweep does nothing but merge
    c2 = Counter()
    again = run_probe_sweep(
        runs, ["entity_tracking"], sites, tmp_path / "s", load=c2.load, generate=c2.generate, **FAST
    )
    assert c2.loads == 0 and c2.generates == 0
    assert mtimes == {p: (tmp_path / "s" / "parts" / p).stat().st_mtime_ns for p in parts}
    pd.testing.assert_frame_equal(table, again)
    merged = pd.read_parquet(tmp_path / "s" / "probes.parquet")
    assert len(merged) == len(table) > 0
    assert set(COLUMNS) <= set(merged.columns)
    assert set(merged["run"]) == {"r_text"} and set(merged["site"]) == {"resid_post", "head_out"}
    assert set(merged.loc[merged.site == "head_out", "head"]) == {0, 1, 2, 3}
    assert merged.loc[merged.site == "resid_post", "head"].isna().all() and str(merged["head"].dtype) == "Int64"
    assert {"accuracy", "selectivity", "control_accuracy"} <= set(merged["metric"])
    # cross-format rows: fitted on one rendering, tested on the other
    cross = merged[merged["fit_on"] != merged["test_on"]]
    assert set(zip(cross.fit_on, cross.test_on)) == {("text", "code"), ("code", "text")}
    acc = merged[merged.metric == "accuracy"]
    assert ((acc.value >= 0) & (acc.value <= 1)).all()
    # a unit interrupted after extraction (part missing, store complete) reuses its store
    part = tmp_path / "s" / "parts" / parts[0]
    before = pd.read_parquet(part)
    npys = list((tmp_path / "s" / "stores").rglob("*.npy"))
    npy_times = {p: p.stat().st_mtime_ns for p in npys}
    part.unlink()
    c3 = Counter()
    run_probe_sweep(runs, ["entity_tracking"], sites, tmp_path / "s", load=c3.load, generate=c3.generate, **FAST)
    assert c3.loads == 1 and {p: p.stat().st_mtime_ns for p in npys} == npy_times
    pd.testing.assert_frame_equal(pd.read_parquet(part), before)


def test_sweep_refuses_bad_sites_and_shards_writing_nothing(tmp_path, long_ctx_model):
    c = Counter()
    with pytest.raises(CodetransferError, match="layers") as e:
        run_probe_sweep(
            _runs(long_ctx_model)[:1],
            ["entity_tracking"],
            ["resid_post.9"],
            tmp_path / "x",
            load=c.load,
            generate=c.generate,
            **FAST,
        )
    assert "\n" not in str(e.value)
    with pytest.raises(CodetransferError, match="shard"):
        run_probe_sweep(_runs(long_ctx_model), ["entity_tracking"], ["resid_post"], tmp_path / "x", shard=(2, 2))
    assert not (tmp_path / "x").exists()


def _table():
    rows = []
    rng = np.random.default_rng(0)
    for recipe, shift in (("text", 0), ("code25", 1)):
        for seed in (0, 1):
            for layer in range(4):
                v = min(1.0, 0.4 + 0.2 * (layer + shift))
                rows.append(
                    dict(
                        run=f"{recipe}-{seed}",
                        recipe=recipe,
                        seed=seed,
                        task="t",
                        site="resid_post",
                        layer=layer,
                        head=-1,
                        pos="box(pen)",
                        probe="linear",
                        metric="accuracy",
                        value=v + rng.normal(0, 0.01),
                        ci_low=v - 0.05,
                        ci_high=v + 0.05,
                    )
                )
    return pd.DataFrame(rows)


def test_first_decodable_layer_and_plots():
    table = _table()
    first = first_decodable_layer(table, threshold=0.75).set_index("run")["layer"]
    assert first["text-0"] == 2 and first["code25-0"] == 1
    assert np.isnan(first_decodable_layer(table, threshold=2.0)["layer"]).all()
    ax = plot_probe_curves(table)
    assert len(ax.get_lines()) == 2 and {t.get_text() for t in ax.get_legend().get_texts()} == {"text", "code25"}
    ax = plot_first_decodable_layer(table, threshold=0.75)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["code25", "text"]
    two_sites = pd.concat([table, table.assign(site="attn_out")])
    with pytest.raises(CodetransferError, match="site"):
        plot_probe_curves(two_sites)
    with pytest.raises(CodetransferError, match="selectivity"):
        plot_probe_curves(table, metric="selectivity")


def test_parts_of_other_settings_are_redone_not_merged_stale(tmp_path, long_ctx_model):
    runs = _runs(long_ctx_model)[:1]
    c0, c1, c2 = Counter(), Counter(), Counter()
    run_probe_sweep(
        runs, ["entity_tracking"], ["resid_post.1"], tmp_path / "s", load=c0.load, generate=c0.generate, **FAST
    )
    # the same folder with another setting: the part is recomputed, not reused
    other = {**FAST, "min_rows": FAST.get("min_rows", 20) + 1}
    run_probe_sweep(
        runs, ["entity_tracking"], ["resid_post.1"], tmp_path / "s", load=c1.load, generate=c1.generate, **other
    )
    assert c1.loads == 1
    # and a repeat of that setting is up to date
    run_probe_sweep(
        runs, ["entity_tracking"], ["resid_post.1"], tmp_path / "s", load=c2.load, generate=c2.generate, **other
    )
    assert c2.loads == 0
    assert len(list((tmp_path / "s" / "parts").glob("*.parquet"))) == 1
