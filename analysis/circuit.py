"""The causal test of a circuit claim over a grid: lookup heads, their ablation, and representation similarity.

A claim such as "text-only training erodes the warm-up's retrieval circuit; code keeps it" names heads and a
gap between recipes. :func:`circuit_grid` tests it on the runs of a grid:

1. **Heads.** Each run's lookup heads are its top ``k`` heads by one score of the attention stage
   (``attention.parquet``; ``by``): ``retrieval`` (default: ``attn_answer_minus_distractors`` of the task's
   text rendering, the attention the final position pays to the answer's source minus the distractors),
   ``induction`` (the induction score on repeated random tokens) or ``patching`` (the run's own ``head_out``
   denoising score at every position, ``patching.parquet``). Next to them, ``k`` *control* heads are drawn
   at random (seeded) from the run's heads that are not candidates for the circuit: an ablation that removes
   as much with control heads says nothing about the chosen ones, and a control set that holds a member of a
   distributed circuit (an induction circuit spread over every head of a layer, with its previous-token
   partners one layer down) removes as much for that reason and says nothing either. Not drawn: the chosen
   heads, every head whose ``by`` score is at least :data:`CONTROL_SCORE_SHARE` of the lowest chosen head's
   (when that score is > 0), and, where the run's previous-token scores on repeated random tokens are known
   (``partners``: :func:`partner_scores_of`), every head scoring at least :data:`PARTNER_SCORE` there (the
   previous-token partners of an induction circuit). When fewer than ``k`` heads remain, the non-chosen heads
   of the lowest ``by`` score fill the set up, so it always has ``k`` heads; ``circuit_heads.parquet`` marks
   them ``eligible = False`` (True for the chosen heads and the control heads drawn at random).
   ``heads`` overrides the choice per run.
2. **Ablation.** On ``n_items`` items of the task (the job: its evaluation items' family, seed and levels,
   fitted to the context) each run is scored clean and with its chosen (and control) heads mean- and
   resample-ablated (:mod:`codetransfer.analysis.ablation`). Scores per item: the logit difference at the
   final position between the answer's first token and the mean of the distractors' first tokens, and
   first-token accuracy (the answer's first token above every distractor's). ``circuit.parquet``: the drop
   (clean - ablated) per run, and per recipe over its init seeds (a run in another data order keeps its own
   row and stays out of the pool: it shares its init seed's weights up to the branch, so it is no new seed).
3. **Gap share.** For each pair (run ``A`` of a recipe, reference run ``B`` of the same seed: the baseline
   and the recipe's ``compare_with`` control; and, as the null, comparison ``seed_null``: where the baseline
   has runs in other data orders (grid field ``data_seeds``), each of them against the baseline run of its
   init seed's own order (the gap data order alone makes), else the baseline of every other seed against the
   baseline of the first seed; :func:`circuit_pairs`; runs in another data order are paired only there) the
   heads chosen in ``A`` are ablated in both models, and the share of the gap
   ``A - B`` that the ablation removes is :func:`~codetransfer.analysis.ablation.gap_share` (per seed, item
   bootstrap; withheld when the gap's interval includes 0). Across seeds the share of the mean gap,
   ``(mean(gap) - mean(gap_ablated)) / mean(gap)``, has a seeds-then-items interval
   (:func:`~codetransfer.analysis.stats.paired_hierarchical_bootstrap_means`); with fewer than
   :data:`~codetransfer.analysis.compare.MIN_SEEDS_DISTINGUISHABLE` seeds the table says ``interval =
   'item'``: an item-level interval, not a claim. The share of the mean gap (a ratio of means) is used rather
   than the mean of the per-seed shares, which a seed with a near-zero gap would blow up.
4. **Similarity.** Per pair, linear CKA (:mod:`codetransfer.analysis.similarity`) of the residual stream
   after each block (``resid_post``) over every real token of the items but BOS. ``cka.parquet`` gives each
   pair's value next to the seed-vs-seed value at the layer (``seed_null``: the mean over the baseline's
   null pairs, data-order pairs where the grid has them) and ``within_seed_null``: the recipe-vs-reference CKA
   is not below the seed-vs-seed one (the two differ no more than seeds do). It describes; it does not gate
   patching: arms branched from one base in the ``control-aligned`` grid have CKA 0.21-0.49 against their
   data-order twins' 0.95-0.99, and cross-model patching, read against that null, still finds the planted
   circuit between them (docs/control.md).
5. **Over training.** From ``attention_over_training.parquet`` (runs that kept checkpoints), the *induction*
   score (:data:`OVER_TRAINING_METRIC`, the table's ``metric``) of the heads chosen at the end, and of the
   control heads, at every saved checkpoint (``circuit_over_training.parquet``): an eroding circuit shows as
   a falling line. The checkpoints are scored on repeated random tokens only, so this is the induction score
   whatever ``by`` chose the heads (the retrieval score is not measured there). Per recipe with at least
   :data:`~codetransfer.analysis.compare.MIN_SEEDS_DISTINGUISHABLE` seeds, rows ``run = '<recipe>*'`` give,
   per step and head set, the mean over init seeds of each seed's mean over its heads, with a Student t interval
   over the seeds (``interval = 'seed'``, :func:`~codetransfer.analysis.stats.seed_t_interval`); the rows of
   one head keep the attention table's interval (``interval = 'item'``).

The main job runs the same pieces as units (:func:`circuit_run_part` per run, :func:`circuit_pair_part`
per pair) and joins their per-item scores with :func:`circuit_tables`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from codetransfer.analysis import schema
from codetransfer.analysis.ablation import ablated_scores, ablation_values, gap_share
from codetransfer.analysis.attention import RANDOM_TASK, EncodedItems, encode_items
from codetransfer.analysis.compare import MIN_SEEDS_DISTINGUISHABLE
from codetransfer.analysis.similarity import linear_cka
from codetransfer.analysis.stats import (
    bootstrap_ci,
    hierarchical_bootstrap_ci,
    paired_hierarchical_bootstrap_means,
    seed_t_interval,
)
from codetransfer.errors import CodetransferError, did_you_mean
from codetransfer.trained.checks import is_data_order_run

CHOICES = {
    "retrieval": "attn_answer_minus_distractors",
    "induction": "induction",
    "patching": "denoising",
}
"""How lookup heads are chosen: the score each rule ranks heads by (see the module docstring)."""
CONTROL_SCORE_SHARE = 0.5
"""A head whose ``by`` score is at least this share of the lowest chosen head's score (when that is > 0) is a
candidate for the circuit and never a control head."""
PARTNER_METRIC = "previous_token"
"""The score (on repeated random tokens, :data:`~codetransfer.analysis.attention.RANDOM_TASK`) that finds the
previous-token partners of an induction circuit (:func:`partner_scores_of`)."""
PARTNER_SCORE = 0.2
"""A head whose :data:`PARTNER_METRIC` score is at least this is a previous-token partner of an induction
circuit (the layer-0 half of it) and never a control head."""
OVER_TRAINING_METRIC = "induction"
"""The score ``circuit_over_training.parquet`` tracks: the checkpoints are scored on repeated random tokens
only (:data:`~codetransfer.analysis.attention.RANDOM_TASK`), where the induction score is measured and the
retrieval score is not."""
CONTROL_RULE = f"not-candidates(by>={CONTROL_SCORE_SHARE}*lowest,{PARTNER_METRIC}>={PARTNER_SCORE})"
"""The rule control heads are drawn by, as the job's circuit units name it in their keys (a changed rule
redoes them)."""
METHODS = ("mean", "resample")
HEAD_SETS = ("chosen", "control")
MIN_ITEMS = 8
"""Fewest items a circuit analysis accepts (resampling and the intervals need several)."""
METRICS = {"accuracy": 1, "logit_diff": 0}
"""Per-item metrics and their column in the scores' last axis."""
SCORE_COLUMNS = schema.RUN_COLUMNS + (
    "task",
    "heads_of",
    "heads_set",
    "heads",
    "method",
    "index",
    "logit_diff",
    "correct",
)
"""Columns of the per-item scores the units write (``circuit_scores.parquet``)."""

Log = Callable[[str], None]


def _noop(msg: str) -> None:
    pass


def heads_label(heads: Sequence[tuple[int, int]]) -> str:
    """``"L1H2,L1H3"``: heads as the tables name them."""
    return ",".join(f"L{layer}H{head}" for layer, head in sorted(heads))


# ------------------------------------------------------------------------------------------ 1. heads


def head_scores_of(
    info, attention: pd.DataFrame | None, by: str, task: str, patching: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per head of run ``info`` (``layer, head, value``): the score heads are ranked by under ``by``."""
    if by not in CHOICES:
        raise CodetransferError(f"by: expected one of {tuple(CHOICES)}, got '{by}'{did_you_mean(by, CHOICES)}")
    if by == "patching":
        t, what = patching, "patching table (patch stage, site head_out)"
        sel = None if t is None else t[(t["site"] == "head_out") & (t["pos_label"] == "all") & (t["task"] == task)]
    else:
        t, what = attention, "attention table (attention stage)"
        if t is None:
            sel = None
        elif by == "induction":
            sel = t[t["task"] == RANDOM_TASK]
        else:
            sel = t[(t["task"] == task) & (t["rendering"] == "text")]
    if sel is not None:
        sel = sel[(sel["run"] == info.name) & (sel["metric"] == CHOICES[by])]
    if sel is None or sel.empty:
        raise CodetransferError(
            f"heads of run '{info.name}': no '{CHOICES[by]}' scores for task '{task}' in the {what}; "
            f"score the run there first or give its heads"
        )
    return sel.groupby(["layer", "head"], as_index=False)["value"].mean()


def partner_scores_of(info, attention: pd.DataFrame | None) -> pd.DataFrame | None:
    """One row per head of run ``info`` (``layer, head, value``): its :data:`PARTNER_METRIC` score on repeated
    random tokens in ``attention`` (``attention.parquet``), or None when the table has none for the run."""
    if attention is None or attention.empty or not {"run", "task", "metric"} <= set(attention.columns):
        return None
    t = attention[
        (attention["run"] == info.name) & (attention["task"] == RANDOM_TASK) & (attention["metric"] == PARTNER_METRIC)
    ]
    if t.empty:
        return None
    return t.groupby(["layer", "head"], as_index=False)["value"].mean()


def control_candidates(
    chosen: Sequence[tuple[int, int]],
    value: Mapping[tuple[int, int], float],
    partners: pd.DataFrame | None = None,
) -> list[tuple[int, int]]:
    """The heads control heads are drawn from (in ``value``'s order): not in ``chosen``, a ``by`` score below
    :data:`CONTROL_SCORE_SHARE` of the lowest chosen head's (when that is > 0) and, with ``partners`` (one row
    per head, ``layer, head, value``: :func:`partner_scores_of`), a previous-token score below
    :data:`PARTNER_SCORE` (a head missing from ``partners`` counts as below)."""
    lowest = min((value[h] for h in chosen), default=np.nan)
    bar = CONTROL_SCORE_SHARE * lowest if np.isfinite(lowest) and lowest > 0 else np.inf
    partner = set()
    if partners is not None:
        partner = {
            (int(a), int(b))
            for a, b, v in zip(partners["layer"], partners["head"], partners["value"])
            if np.isfinite(v) and v >= PARTNER_SCORE
        }
    return [h for h in value if h not in chosen and h not in partner and not value[h] >= bar]


def choose_heads(
    info,
    scores: pd.DataFrame,
    *,
    k: int = 2,
    by: str = "retrieval",
    task: str = "",
    heads: Sequence[tuple[int, int]] | None = None,
    seed: int = 0,
    partners: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Run ``info``'s chosen heads (top ``k`` of ``scores``, or ``heads`` when given) and as many control
    heads, drawn at random (seeded by ``seed`` and the run's seed) from the heads that are not candidates for
    the circuit (:func:`control_candidates`; the module docstring, point 1); when too few are, the other
    non-chosen heads of the lowest score fill the set up (``eligible`` False).

    ``scores``: one row per head of the model (``layer, head, value``, :func:`head_scores_of`); ``partners``:
    the run's previous-token scores on repeated random tokens (:func:`partner_scores_of`; None: unknown, no
    head is left out as a partner). Returns ``circuit_heads`` rows: ``run, recipe, seed, task, heads_set, rank,
    layer, head, by, value, eligible``.
    """
    all_heads = [(int(layer), int(head)) for layer, head in zip(scores["layer"], scores["head"])]
    value = dict(zip(all_heads, scores["value"].astype(float)))
    if heads is None:
        if not 1 <= k <= len(all_heads) // 2:
            raise CodetransferError(
                f"k: expected 1 to {len(all_heads) // 2} heads (half the model's {len(all_heads)}: the rest "
                f"give the control heads), got {k}"
            )
        ranked = sorted(all_heads, key=lambda h: (-value[h], h))
        chosen = ranked[:k]
    else:
        chosen = []
        for pair in heads:
            h = (int(pair[0]), int(pair[1])) if len(pair) == 2 else None
            if h not in value:
                raise CodetransferError(
                    f"heads of run '{info.name}': {tuple(pair)!r} is not a (layer, head) of the model "
                    f"({max(all_heads)[0] + 1} layers x {max(all_heads)[1] + 1} heads)"
                )
            chosen.append(h)
        chosen = sorted(set(chosen))
        if len(chosen) > len(all_heads) // 2:
            raise CodetransferError(
                f"heads of run '{info.name}': {len(chosen)} heads given; at most {len(all_heads) // 2} "
                "(the rest give the control heads)"
            )
    eligible = control_candidates(chosen, value, partners)
    rng = np.random.default_rng([int(seed), int(info.seed)])
    n = min(len(chosen), len(eligible))
    control = [eligible[i] for i in sorted(rng.choice(len(eligible), size=n, replace=False))]
    fill = sorted(
        (h for h in all_heads if h not in chosen and h not in eligible),
        key=lambda h: (value[h] if np.isfinite(value[h]) else np.inf, h),
    )[: len(chosen) - n]
    rows = [
        dict(
            task=task,
            heads_set=name,
            rank=r,
            layer=h[0],
            head=h[1],
            by=by if heads is None else "given",
            value=value[h],
            eligible=h not in fill,
        )
        for name, group in (("chosen", chosen), ("control", control + fill))
        for r, h in enumerate(group)
    ]
    return schema.add_run_columns(pd.DataFrame(rows), info)


def _heads(table: pd.DataFrame, heads_set: str) -> list[tuple[int, int]]:
    t = table[table["heads_set"] == heads_set]
    return [(int(a), int(b)) for a, b in zip(t["layer"], t["head"])]


# ------------------------------------------------------------------------------------------ 2. ablation


def circuit_items(task: str, n_items: int, seed: int, max_difficulty: int | None, tokenizer, n_ctx: int) -> list:
    """``n_items`` items of ``task`` spread over its levels <= ``max_difficulty`` (the evaluation's draw), the
    levels whose prompts exceed ``n_ctx`` dropped; refuses fewer than :data:`MIN_ITEMS`."""
    from codetransfer.analysis.evaluate import fit_to_context
    from codetransfer.analysis.grid import items_up_to
    from codetransfer.tasks import get_task

    if n_items < MIN_ITEMS:
        raise CodetransferError(f"n_items: expected at least {MIN_ITEMS} items for a circuit analysis, got {n_items}")
    items = items_up_to(get_task(task), n_items, seed, max_difficulty)
    kept, _ = fit_to_context({task: items}, tokenizer, n_ctx)
    items = kept.get(task, [])
    if len(items) < MIN_ITEMS:
        raise CodetransferError(
            f"{task}: {len(items)} items fit the models' context n_ctx={n_ctx}; a circuit analysis needs at "
            f"least {MIN_ITEMS} (lower max_difficulty)"
        )
    return items


def _item_metrics(enc: EncodedItems):
    """``metric(logits, tokens) -> [batch, 2]`` (logit difference, first-token correct) for
    :func:`~codetransfer.analysis.ablation.ablated_scores`, which calls it on consecutive row chunks of
    ``enc.tokens``: it keeps the offset of the next chunk (reset with ``metric.reset()``)."""
    state = {"offset": 0}

    def metric(logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch 2"]:
        off = state["offset"]
        rows = torch.arange(logits.shape[0])
        final = logits[rows, enc.final[off : off + logits.shape[0]]].float()  # batch vocab
        out = []
        for i in range(final.shape[0]):
            wrong = list(enc.distractor_ids[off + i])
            answer = final[i, enc.answer_ids[off + i]]
            out.append(torch.stack([answer - final[i, wrong].mean(), (answer > final[i, wrong].max()).float()]))
        state["offset"] = off + logits.shape[0]
        return torch.stack(out)

    metric.reset = lambda: state.update(offset=0)
    return metric


def ablation_item_scores(
    bridge,
    enc: EncodedItems,
    head_sets: Mapping[str, Sequence[tuple[int, int]]],
    methods: Sequence[str] = METHODS,
    *,
    clean: bool = True,
    seed: int = 0,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Per-item ``logit_diff`` and ``correct`` of ``bridge`` on ``enc`` with each head set of ``head_sets``
    (``{name: [(layer, head), ...]}``) ablated by each of ``methods``, and (``clean``) without ablation
    (``method='clean'``, ``heads_set=''``). Columns ``heads_set, heads, method, index, logit_diff, correct``."""
    for i, wrong in enumerate(enc.distractor_ids):
        if not wrong:
            raise CodetransferError(
                f"item {i}: every wrong candidate starts with the answer's first token; the circuit's logit "
                "difference needs candidates whose first tokens differ"
            )
    metric = _item_metrics(enc)
    todo = ([("", [], "clean")] if clean else []) + [(n, hs, m) for n, hs in head_sets.items() for m in methods]
    frames = []
    for name, heads, method in todo:
        values = (
            None
            if method == "clean"
            else ablation_values(
                bridge, enc.tokens, heads, method, lengths=enc.lengths, seed=seed, batch_size=batch_size
            )
        )
        metric.reset()
        got = ablated_scores(bridge, enc.tokens, metric, values, batch_size).double().numpy()  # items 2
        frames.append(
            pd.DataFrame(
                {
                    "heads_set": name,
                    "heads": heads_label(heads),
                    "method": method,
                    "index": np.arange(len(got)),
                    "logit_diff": got[:, 0],
                    "correct": got[:, 1],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _scored(info, task: str, heads_of: str, table: pd.DataFrame) -> pd.DataFrame:
    table.insert(0, "heads_of", heads_of)
    table.insert(0, "task", task)
    return schema.add_run_columns(table, info)[list(SCORE_COLUMNS)]


def resid_activations(bridge, enc: EncodedItems, batch_size: int = 64) -> dict[int, Float[Tensor, "rows d_model"]]:
    """The residual stream after every block at every real token of ``enc`` but BOS, rows in item order."""
    n_layers = bridge.cfg.n_layers
    names = {f"blocks.{layer}.hook_resid_post": layer for layer in range(n_layers)}
    out: dict[int, list[Tensor]] = {layer: [] for layer in range(n_layers)}
    with torch.inference_mode():
        for start in range(0, enc.tokens.shape[0], batch_size):
            toks = enc.tokens[start : start + batch_size]
            lens = enc.lengths[start : start + batch_size]
            real = (torch.arange(toks.shape[1])[None, :] < lens[:, None]) & (torch.arange(toks.shape[1])[None, :] > 0)
            _, cache = bridge.run_with_cache(toks, names_filter=lambda name: name in names)
            for name, layer in names.items():
                out[layer].append(cache[name].float()[real])
    return {layer: torch.cat(parts) for layer, parts in out.items()}


def circuit_run_part(
    loaded,
    heads: pd.DataFrame,
    items: Sequence,
    *,
    methods: Sequence[str] = METHODS,
    seed: int = 0,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Per-item scores of one loaded run, clean and with its own chosen and control heads (``heads``:
    :func:`choose_heads`) ablated: ``circuit_scores`` rows (:data:`SCORE_COLUMNS`)."""
    info = loaded.info
    task = str(heads["task"].iloc[0])
    enc = encode_items(loaded.tokenizer, items)
    sets = {name: _heads(heads, name) for name in HEAD_SETS}
    t = ablation_item_scores(loaded.bridge, enc, sets, methods, seed=seed, batch_size=batch_size)
    return _scored(info, task, info.name, t)


def circuit_pair_part(
    loaded_a,
    loaded_b,
    heads_a: pd.DataFrame,
    items: Sequence,
    comparison: str,
    *,
    methods: Sequence[str] = METHODS,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, pd.DataFrame]:
    """One pair: run ``b`` scored with run ``a``'s chosen and control heads ablated (``circuit_scores``
    rows, ``heads_of`` = a; its clean rows are left out, :func:`circuit_run_part` has them), and the linear CKA
    of the two runs' residual streams per layer (``cka`` rows without the seed-null columns)."""
    a, b = loaded_a.info, loaded_b.info
    cfg_a, cfg_b = loaded_a.bridge.cfg, loaded_b.bridge.cfg
    if (cfg_a.n_layers, cfg_a.n_heads, cfg_a.d_model) != (cfg_b.n_layers, cfg_b.n_heads, cfg_b.d_model):
        raise CodetransferError(
            f"runs '{a.name}' and '{b.name}' differ in shape; a head (layer, head) names the same head only in "
            "models of one shape"
        )
    task = str(heads_a["task"].iloc[0])
    enc = encode_items(loaded_b.tokenizer, items)
    sets = {name: _heads(heads_a, name) for name in HEAD_SETS}
    t = ablation_item_scores(loaded_b.bridge, enc, sets, methods, clean=False, seed=seed, batch_size=batch_size)
    scores = _scored(b, task, a.name, t)
    acts_a = resid_activations(loaded_a.bridge, encode_items(loaded_a.tokenizer, items), batch_size)
    acts_b = resid_activations(loaded_b.bridge, enc, batch_size)
    cka = pd.DataFrame(
        [
            dict(
                run_a=a.name,
                run_b=b.name,
                recipe_a=a.recipe,
                recipe_b=b.recipe,
                seed_a=int(a.seed),
                seed_b=int(b.seed),
                comparison=comparison,
                task=task,
                site="resid_post",
                layer=layer,
                metric="linear_cka",
                value=linear_cka(acts_a[layer], acts_b[layer]),
                n_rows=int(acts_a[layer].shape[0]),
            )
            for layer in sorted(acts_a)
        ]
    )
    return {"scores": scores, "cka": cka}


def circuit_pairs(runs: Sequence, baseline: str, controls: Mapping[str, str]) -> list[tuple]:
    """``(A, B, comparison)``: the run pairs of the main job's cross-model patching
    (:func:`codetransfer.pipeline.cross_model_pairs`), labelled. Every recipe's run against the baseline's run
    of its seed (``baseline``) and against its ``compare_with`` control's run of its seed (``control``), and a
    null pair of two models of the baseline recipe (``seed_null``, the label the seed-null consumers read: the
    ``seed_null`` column of ``cka.parquet``, the report, the plots):

    * where the baseline has runs in another data order (grid field ``data_seeds``, runs
      ``<baseline>-s<s>-d<k>``, ``data_seed`` > 0), the *data-order null*: each of them against the baseline's
      run ``<baseline>-s<s>`` of its own init seed (same initialisation, same data content, only the order
      differs: the gap data order alone makes);
    * else the *init-seed null*: the baseline's run of every other seed against its run of the first seed.

    Only runs in their init seed's own data order (``data_seed`` 0, or no such attribute) are paired across
    recipes: a ``-d<k>`` run of a recipe is not another seed of it (it shares its init seed's initialisation
    and data), so it is neither an ``A`` of a ``baseline`` or ``control`` pair nor their reference."""
    own = [r for r in runs if not getattr(r, "data_seed", 0)]
    by = {(r.recipe, r.seed): r for r in own}
    pairs = []
    for a in sorted(own, key=lambda r: r.name):
        refs = {baseline: "baseline"}
        if controls.get(a.recipe):
            refs.setdefault(controls[a.recipe], "control")
        for other, comparison in refs.items():
            b = by.get((other, a.seed))
            if a.recipe != other and b is not None:
                pairs.append((a, b, comparison))
    orders = sorted(
        (r for r in runs if r.recipe == baseline and getattr(r, "data_seed", 0) and (baseline, r.seed) in by),
        key=lambda r: (r.seed, r.data_seed),
    )
    if orders:
        return pairs + [(a, by[(baseline, a.seed)], "seed_null") for a in orders]
    base = sorted((r for r in own if r.recipe == baseline), key=lambda r: r.seed)
    pairs += [(a, base[0], "seed_null") for a in base[1:]]
    return pairs


# ------------------------------------------------------------------------------------------ 3. tables


def _interval_kind(n: int) -> str:
    return "seed" if n >= MIN_SEEDS_DISTINGUISHABLE else "item"


def _drop_table(scores: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    own = scores[scores["heads_of"] == scores["run"]]
    rows = []
    key = ["task", "heads_set", "method"]
    for (task, heads_set, method), g in own[own["method"] != "clean"].groupby(key, sort=True):
        for recipe, gr in g.groupby("recipe", sort=True):
            per_seed = []
            for run, gg in gr.groupby("run", sort=True):
                twin = is_data_order_run(run)  # its own rows; the pool is over init seeds
                clean = own[(own["run"] == run) & (own["method"] == "clean")]
                clean = clean.sort_values("index")
                gg = gg.sort_values("index")
                for metric, col in (("accuracy", "correct"), ("logit_diff", "logit_diff")):
                    c, a = clean[col].to_numpy(float), gg[col].to_numpy(float)
                    mean, lo, hi = bootstrap_ci(c - a, n_boot, seed=seed)
                    rows.append(
                        dict(run=run, recipe=recipe, seed=int(gg["seed"].iloc[0]), task=task, heads_set=heads_set,
                             heads=gg["heads"].iloc[0], method=method, metric=metric, clean=c.mean(),
                             ablated=a.mean(), value=float(mean), ci_low=float(lo), ci_high=float(hi),
                             interval="item", n_seeds=1, n_items=len(c))
                    )  # fmt: skip
                    if not twin:
                        per_seed.append((metric, c, a))
            for metric in METRICS:
                cs = [c for m, c, _ in per_seed if m == metric]
                abl = [a for m, _, a in per_seed if m == metric]
                if len({len(c) for c in cs}) != 1:
                    continue
                c, a = np.stack(cs), np.stack(abl)
                iv = hierarchical_bootstrap_ci(c - a, n_boot, seed=seed)
                rows.append(
                    dict(run=f"{recipe}*", recipe=recipe, seed=pd.NA, task=task, heads_set=heads_set, heads="",
                         method=method, metric=metric, clean=c.mean(), ablated=a.mean(), value=iv.value,
                         ci_low=iv.low, ci_high=iv.high, interval=_interval_kind(len(cs)), n_seeds=len(cs),
                         n_items=c.shape[1])
                )  # fmt: skip
    table = pd.DataFrame(rows, columns=list(schema.columns("circuit")))
    table["seed"] = table["seed"].astype("Int64")
    return table


def _terms(index: Mapping, a: str, b: str, heads_set: str, method: str, col: str) -> dict[str, np.ndarray]:
    """The four per-item arrays of the gap of run ``a`` over reference ``b`` with ``a``'s heads ablated
    (``index``: :func:`_index` of the scores)."""
    empty = np.zeros(0)
    return {
        "a_clean": index.get((b, b, "", "clean", col), empty),  # the clean rows belong to no head set
        "a_ablated": index.get((b, a, heads_set, method, col), empty),
        "b_clean": index.get((a, a, "", "clean", col), empty),
        "b_ablated": index.get((a, a, heads_set, method, col), empty),
    }


def _index(scores: pd.DataFrame) -> dict[tuple, np.ndarray]:
    """``{(run, heads_of, heads_set, method, column): per-item values in item order}``."""
    out = {}
    for key, g in scores.sort_values("index", kind="stable").groupby(["run", "heads_of", "heads_set", "method"]):
        for col in ("correct", "logit_diff"):
            out[(*key, col)] = g[col].to_numpy(float)
    return out


def _gap_table(
    scores: pd.DataFrame, pairs: pd.DataFrame, n_boot: int, seed: int, confidence: float = 0.95
) -> pd.DataFrame:
    rows, pooled = [], {}
    heads = scores.drop_duplicates(["run", "heads_of", "heads_set"]).set_index(["run", "heads_of", "heads_set"])[
        "heads"
    ]
    task = str(scores["task"].iloc[0]) if len(scores) else ""
    index = _index(scores)
    for p in pairs.itertuples(index=False):
        for heads_set in HEAD_SETS:
            for method in sorted(set(scores["method"]) - {"clean"}):
                for metric, col in (("accuracy", "correct"), ("logit_diff", "logit_diff")):
                    terms = _terms(index, p.run_a, p.run_b, heads_set, method, col)
                    if min(len(v) for v in terms.values()) == 0 or len({len(v) for v in terms.values()}) != 1:
                        raise CodetransferError(
                            f"circuit: missing per-item scores for {p.run_a} against {p.run_b}; rerun the circuit stage"
                        )
                    t = gap_share(terms, n_boot=n_boot, confidence=confidence, seed=seed).set_index("metric")
                    rows.append(
                        dict(run=p.run_a, recipe=p.recipe_a, seed=int(p.seed_a), reference=p.recipe_b,
                             reference_run=p.run_b, comparison=p.comparison, task=task, heads_set=heads_set,
                             heads=heads.get((p.run_a, p.run_a, heads_set), ""), method=method, metric=metric,
                             gap=t.loc["gap", "value"], gap_low=t.loc["gap", "ci_low"],
                             gap_high=t.loc["gap", "ci_high"], gap_ablated=t.loc["gap_ablated", "value"],
                             value=t.loc["share", "value"], ci_low=t.loc["share", "ci_low"],
                             ci_high=t.loc["share", "ci_high"], withheld=bool(t.loc["share", "withheld"]),
                             interval="item", n_seeds=1, n_items=len(terms["a_clean"]))
                    )  # fmt: skip
                    key = (p.recipe_a, p.recipe_b, p.comparison, heads_set, method, metric)
                    pooled.setdefault(key, []).append(terms)
    alpha = (1 - confidence) / 2
    for (recipe, reference, comparison, heads_set, method, metric), group in sorted(pooled.items()):
        x = np.stack([t["b_clean"] - t["a_clean"] for t in group])  # seeds items: the gap
        y = np.stack([t["b_ablated"] - t["a_ablated"] for t in group])  # the gap with the heads ablated
        mx, my = paired_hierarchical_bootstrap_means(x, y, n_boot, seed)
        gap_lo, gap_hi = np.quantile(mx, [alpha, 1 - alpha])
        withheld = bool(gap_lo <= 0 <= gap_hi) or abs(x.mean()) < 1e-12
        with np.errstate(divide="ignore", invalid="ignore"):
            boot = np.where(np.abs(mx) > 1e-12, (mx - my) / mx, np.nan)
        if withheld or not np.isfinite(boot).any():
            share, lo, hi = np.nan, np.nan, np.nan
        else:
            share = float((x.mean() - y.mean()) / x.mean())
            lo, hi = (float(v) for v in np.nanquantile(boot, [alpha, 1 - alpha]))
        rows.append(
            dict(run=f"{recipe}*", recipe=recipe, seed=pd.NA, reference=reference, reference_run=f"{reference}*",
                 comparison=comparison, task=task, heads_set=heads_set, heads="", method=method, metric=metric,
                 gap=x.mean(), gap_low=gap_lo, gap_high=gap_hi, gap_ablated=y.mean(), value=share, ci_low=lo,
                 ci_high=hi, withheld=withheld, interval=_interval_kind(len(group)), n_seeds=len(group),
                 n_items=x.shape[1])
        )  # fmt: skip
    table = pd.DataFrame(rows, columns=list(schema.columns("circuit_gap")))
    table["seed"] = table["seed"].astype("Int64")
    table["withheld"] = table["withheld"].astype(bool)
    return table


def _cka_table(cka: pd.DataFrame) -> pd.DataFrame:
    cols = list(schema.columns("cka"))
    if cka is None or cka.empty:
        return pd.DataFrame(columns=cols)
    null = cka[cka["comparison"] == "seed_null"].groupby("layer")["value"].mean()
    t = cka.copy()
    t["seed_null"] = t["layer"].map(null).astype(float)
    within = pd.array([pd.NA] * len(t), dtype="boolean")
    ok = (t["comparison"] != "seed_null").to_numpy() & t["seed_null"].notna().to_numpy()
    within[ok] = (t["value"] >= t["seed_null"]).to_numpy()[ok]
    t["within_seed_null"] = within
    return t[cols].reset_index(drop=True)


def _over_training_table(heads: pd.DataFrame, over: pd.DataFrame | None, confidence: float = 0.95) -> pd.DataFrame:
    cols = list(schema.columns("circuit_over_training"))
    if over is None or over.empty:
        return pd.DataFrame(columns=cols)
    chosen = heads[["run", "heads_set", "rank", "layer", "head"]]
    over = over[(over["task"] == RANDOM_TASK) & (over["metric"] == OVER_TRAINING_METRIC)]
    t = over.merge(chosen, on=["run", "layer", "head"], how="inner")
    t = t.sort_values(["run", "heads_set", "rank", "metric", "step"], kind="stable")
    t = t.assign(interval="item", n_seeds=1)
    pooled = []
    own = t[~t["run"].map(is_data_order_run).astype(bool)]  # pooled over init seeds: data-order twins left out
    per_seed = own.groupby(["recipe", "heads_set", "step", "run"], sort=True)["value"].mean().reset_index()
    for (recipe, heads_set, step), g in per_seed.groupby(["recipe", "heads_set", "step"], sort=True):
        values = g["value"].to_numpy(float)
        if len(values) < MIN_SEEDS_DISTINGUISHABLE or not np.isfinite(values).all():
            continue
        iv = seed_t_interval(values, confidence)
        pooled.append(
            dict(run=f"{recipe}*", recipe=recipe, seed=pd.NA, step=step, heads_set=heads_set, rank=pd.NA,
                 task=RANDOM_TASK, rendering=str(t["rendering"].iloc[0]), layer=pd.NA, head=schema.NO_HEAD,
                 metric=OVER_TRAINING_METRIC, value=iv.value, ci_low=iv.low, ci_high=iv.high, interval="seed",
                 n_seeds=len(values))
        )  # fmt: skip
    if pooled:
        t = pd.concat([t[cols], pd.DataFrame(pooled, columns=cols)], ignore_index=True)
    t = t[cols].reset_index(drop=True)
    for col in ("seed", "rank", "layer", "head"):
        t[col] = t[col].astype("Int64")
    return t


def circuit_tables(
    scores: pd.DataFrame,
    heads: pd.DataFrame,
    cka: pd.DataFrame | None,
    pairs: Sequence[tuple],
    *,
    over_training: pd.DataFrame | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """The circuit tables from the per-item scores (:func:`circuit_run_part`, :func:`circuit_pair_part`), the
    chosen heads, the pairs' CKA rows and ``pairs`` (``(A, B, comparison)``: :func:`circuit_pairs`):
    ``circuit.parquet``, ``circuit_gap.parquet``, ``circuit_heads.parquet``, ``cka.parquet`` and, with
    ``over_training`` (``attention_over_training.parquet``), ``circuit_over_training.parquet``."""
    pair_table = pd.DataFrame(
        [
            dict(run_a=a.name, recipe_a=a.recipe, seed_a=a.seed, run_b=b.name, recipe_b=b.recipe, comparison=c)
            for a, b, c in pairs
        ],
        columns=["run_a", "recipe_a", "seed_a", "run_b", "recipe_b", "comparison"],
    )
    tables = {
        "circuit.parquet": _drop_table(scores, n_boot, seed),
        "circuit_gap.parquet": _gap_table(scores, pair_table, n_boot, seed),
        "circuit_heads.parquet": heads[list(schema.columns("circuit_heads"))].reset_index(drop=True),
        "cka.parquet": _cka_table(cka),
    }
    if over_training is not None:
        tables["circuit_over_training.parquet"] = _over_training_table(heads, over_training)
    return tables


# ------------------------------------------------------------------------------------------ 4. the grid


def circuit_grid(
    runs: Sequence,
    task: str = "entity_tracking",
    *,
    attention: pd.DataFrame | None = None,
    patching: pd.DataFrame | None = None,
    attention_over_training: pd.DataFrame | None = None,
    heads: Mapping[str, Sequence[tuple[int, int]]] | None = None,
    k: int = 2,
    by: str = "retrieval",
    n_items: int = 48,
    max_difficulty: int | None = None,
    methods: Sequence[str] = METHODS,
    baseline: str = "text-only",
    controls: Mapping[str, str] | None = None,
    seed: int = 0,
    n_boot: int = 2000,
    batch_size: int = 64,
    device: str = "cpu",
    load: Callable | None = None,
    log: Log = _noop,
) -> dict[str, pd.DataFrame]:
    """The circuit analysis of a grid's runs (see the module docstring): heads, ablation drops, gap shares,
    CKA and the heads over training, as tables keyed by file name (:func:`circuit_tables`).

    ``attention`` / ``patching``: the attention stage's and the patch stage's tables (``by`` says which is
    read; the previous-token scores of ``attention``, where it has them, keep the partners of an induction
    circuit out of the control heads: :func:`choose_heads`); ``heads``: ``{run name: [(layer, head), ...]}``
    chosen by hand (then no table is read for those runs). ``max_difficulty``: the hardest level of the items
    (None: every level). ``baseline`` and ``controls`` (``{recipe: compare_with}``) give the pairs
    (:func:`circuit_pairs`).
    """
    from codetransfer.trained import load_run

    load = load or load_run
    infos = sorted(runs, key=lambda r: r.name)
    if not infos:
        raise CodetransferError("runs: expected at least one run, got none")
    unknown = sorted(set(heads or {}) - {r.name for r in infos})
    if unknown:
        raise CodetransferError(
            f"heads: '{unknown[0]}' is not a run of the grid{did_you_mean(unknown[0], [r.name for r in infos])}"
        )
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise CodetransferError(f"methods: expected some of {METHODS}, got {list(methods)}")
    loaded = {r.name: load(r, device=device) for r in infos}
    first = next(iter(loaded.values()))
    items = circuit_items(task, n_items, seed, max_difficulty, first.tokenizer, first.bridge.cfg.n_ctx)
    choice, frames = {}, []
    for r in infos:
        given = (heads or {}).get(r.name)
        if given is None:
            scores = head_scores_of(r, attention, by, task, patching)
        else:
            cfg = loaded[r.name].bridge.cfg
            grid = [(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
            scores = pd.DataFrame({"layer": [g[0] for g in grid], "head": [g[1] for g in grid], "value": np.nan})
        partners = partner_scores_of(r, attention)
        choice[r.name] = choose_heads(r, scores, k=k, by=by, task=task, heads=given, seed=seed, partners=partners)
        log(f"circuit: run {r.name}: heads {heads_label(_heads(choice[r.name], 'chosen'))}")
        frames.append(
            circuit_run_part(loaded[r.name], choice[r.name], items, methods=methods, seed=seed, batch_size=batch_size)
        )
    pairs = circuit_pairs(infos, baseline, controls or {})
    cka = []
    for a, b, comparison in pairs:
        log(f"circuit: {a.name} against {b.name} ({comparison})")
        part = circuit_pair_part(
            loaded[a.name],
            loaded[b.name],
            choice[a.name],
            items,
            comparison,
            methods=methods,
            seed=seed,
            batch_size=batch_size,
        )
        frames.append(part["scores"])
        cka.append(part["cka"])
    return circuit_tables(
        pd.concat(frames, ignore_index=True),
        pd.concat(choice.values(), ignore_index=True),
        pd.concat(cka, ignore_index=True) if cka else None,
        pairs,
        over_training=attention_over_training,
        n_boot=n_boot,
        seed=seed,
    )
