"""Scoring task items by candidate log-probability, every run on every task, with bootstrap intervals.

**Scoring one item.** The model reads ``[bos] + tokens(prompt)`` (the BOS policy of
``codetransfer.trained.tokenizer``). Each candidate is scored by the *summed* log-probability of its
tokens as the continuation of the prompt (no length normalisation, as :class:`~codetransfer.tasks.items.Item`
specifies)::

    logprob(c) = sum_k log p(c_k | bos, prompt, c_1 .. c_{k-1})

The item is ``correct`` when the answer's log-probability is strictly larger than every other
candidate's, and ``logit_diff = logprob(answer) - max(logprob(other candidates))`` (> 0 iff correct).

The candidate is tokenized on its own and appended to the prompt's tokens ("as planned"). Byte-level
BPE may tokenize ``prompt + candidate`` differently — e.g. a candidate ``"x"`` after a prompt ending in
``"bo"`` becomes the single token ``"box"`` — and then the planned continuation is not what the model
would read; such candidates are refused (the task generator should start candidates with a space).

**Batching.** Every item is turned into as few rows as possible: one row ``bos + prompt`` when all its
candidates are single tokens (one forward gives every candidate's log-probability at the prompt's last
position), otherwise one row ``bos + prompt + c[:-1]`` per multi-token candidate, with the
single-token candidates read off the first row. Rows are sorted by length, right-padded and run in
batches of ``batch_size`` rows, one forward each; the model is causal, so a position's logits do not
depend on the padding after it (no attention mask needed, and rotary positions start at 0 for every
row). Only the scored positions go through ``log_softmax``. Everything is checked (context length,
candidate tokenization, labels) before the first forward, so a bad item wastes no compute and leaves
no partial table.

**Across runs.** :func:`score_runs` scores the same items (generated once per task, seeded) with every
loaded run and returns one row per (run, item). :func:`tidy_table` turns that into the tidy
table: per run x task x difficulty (and ``'all'``) x metric (``accuracy``, ``logit_diff``), the mean
with a percentile-bootstrap interval over items; plus, in the SAME table, one row per *recipe*
aggregated over its seeds, marked ``run = "<recipe>*"`` and ``seed = <NA>``, whose interval comes from
the seeds-then-items bootstrap of :mod:`codetransfer.analysis.stats` (items are shared by all seeds,
so the crossed version). ``difficulty`` is a string column (``"0"``, ``"1"``, ..., ``"all"``) so that
the table stores in parquet. Filter ``run.str.endswith("*")`` to get (or drop) the aggregated rows.
Next to ``chance`` (a uniform guess among the candidates) the table carries ``copy_chance``: the accuracy
of guessing uniformly among the candidates the prompt *mentions* (:func:`copy_chance`). A model above
``chance`` but not above ``copy_chance`` may only be copying a stated value without using the question.

:func:`relative_change_summary` gives the paper's headline: per category (reasoning, knowledge, code)
the relative change of each recipe's accuracy vs a baseline recipe (default ``"text-only"``), items of
all the category's tasks pooled, with a bootstrap interval of the ratio (seeds of each recipe resampled
independently, item resamples shared because every run saw the same items).

:func:`heldout_scores` is the per-source held-out next-token loss on token arrays (the train stage's
``<source>.heldout.npy`` files), one row per non-overlapping window of the model's context; the
``stdlib`` source is the ``code`` category by default (other sources ``text``). Its rows go through
:func:`tidy_table` (metric ``loss``, difficulty ``'all'``) and :func:`relative_change_summary`
(``metric="loss"``; windows are shared by all runs, so paired like items). :func:`heldout_loss` is the
one-model shortcut with a bootstrap over windows.

Not done: candidates of one item that span several tokens each get their own row with the prompt
repeated (no KV-cache prefix sharing or packed tree attention); for the short prompts of the task
families this costs at most (number of multi-token candidates - 1) extra prompt passes per item.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from codetransfer.analysis import encoding, schema
from codetransfer.analysis.stats import (
    bootstrap_ci,
    hierarchical_bootstrap_ci,
    relative_change_ci,
)
from codetransfer.errors import CodetransferError, did_you_mean
from codetransfer.tasks import get_task, task_names

METRICS = ("accuracy", "logit_diff")
SUMMARY_COLUMNS = schema.columns("summary")
#: metric name -> the per-item (or per-window) score column it averages
METRIC_COLUMNS = {"accuracy": "correct", "logit_diff": "logit_diff", "loss": "loss"}

#: per-item score columns (besides run, recipe, seed)
ITEM_COLUMNS = schema.columns("scores", run_columns=False)


def copy_chance(prompt: str, candidates: Sequence[str], label: int) -> float:
    """Accuracy of a model that copies a candidate the prompt mentions, chosen uniformly, ignoring the question.

    A candidate is *mentioned* when its stripped text occurs in the prompt as a whole word. With no
    candidate mentioned this is the uniform guess ``1 / len(candidates)``. At the easiest levels most
    answers are copied from a stated fact, so this, not ``chance``, is the bar that shows a model uses
    the queried key (e.g. "The pen is in box B. The cup is in box A. The pen is in box" -> 1/2).
    """
    seen = [
        i for i, c in enumerate(candidates) if c.strip() and re.search(rf"(?<!\w){re.escape(c.strip())}(?!\w)", prompt)
    ]
    if not seen:
        return 1.0 / len(candidates)
    return (label in seen) / len(seen)


# --------------------------------------------------------------------------------------------------
# model helpers (TransformerBridge or plain HF causal LM)


def model_n_ctx(model) -> int:
    """The context length of a TransformerBridge (``cfg.n_ctx``) or a HF model (``max_position_embeddings``)."""
    cfg = getattr(model, "cfg", None)
    n = getattr(cfg, "n_ctx", None)
    if n is None:
        n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if n is None:
        raise CodetransferError(
            f"model: cannot find its context length (no cfg.n_ctx or config.max_position_embeddings) on a "
            f"{type(model).__name__}; pass a TransformerBridge or a transformers causal LM"
        )
    return int(n)


def forward_logits(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos vocab"]:
    """Logits of a TransformerBridge (returns a tensor) or a HF causal LM (returns ``.logits``)."""
    out = model(tokens)
    return out if isinstance(out, Tensor) else out.logits


# --------------------------------------------------------------------------------------------------
# planning: items -> rows of tokens and scored (row, position, target) entries


def _item_name(item) -> str:
    return f"item {item.task}#{item.index}"


def _plan(items: Sequence, tokenizer, n_ctx: int):
    """Token rows and scored entries for ``items``; raises on the first bad item (before any forward)."""
    if len(items) == 0:
        raise CodetransferError("items: expected at least one item to score, got an empty list")
    bos = encoding.bos_id(tokenizer)
    prompt_ids = encoding.encode_batch(tokenizer, [it.prompt for it in items])
    cand_ids = encoding.encode_batch(tokenizer, [c for it in items for c in it.candidates])
    joint_ids = encoding.encode_batch(tokenizer, [it.prompt + c for it in items for c in it.candidates])

    rows: list[list[int]] = []
    entry_row, entry_pos, entry_tgt, entry_pair = [], [], [], []
    pair = 0
    for i, it in enumerate(items):
        name = _item_name(it)
        k = len(it.candidates)
        if k < 2:
            raise CodetransferError(f"{name}: expected at least 2 candidates, got {k}; fix the task generator")
        if len(set(it.candidates)) != k:
            raise CodetransferError(f"{name}: candidates {it.candidates!r} repeat; they must be distinct")
        if not 0 <= it.label < k:
            raise CodetransferError(f"{name}: label {it.label} is not an index into its {k} candidates")
        p = [bos, *prompt_ids[i]]
        if len(prompt_ids[i]) == 0:
            raise CodetransferError(f"{name}: the prompt is empty; every item needs a prompt")
        first_row = None
        for j, cand in enumerate(it.candidates):
            c = cand_ids[pair + j]
            if len(c) == 0:
                raise CodetransferError(f"{name}: candidate {j} is empty; candidates need at least one token")
            encoding.check_continuation(prompt_ids[i], c, joint_ids[pair + j], name, cand, it.prompt)
            need = len(p) + len(c) - 1
            if need > n_ctx:
                raise CodetransferError(
                    f"{name}: prompt + candidate {j} is {need} tokens (with BOS), longer than the model's "
                    f"context n_ctx={n_ctx}; use shorter items (lower difficulty) or a model with a longer context"
                )
        for j, cand in enumerate(it.candidates):
            c = cand_ids[pair + j]
            if len(c) > 1:
                row = len(rows)
                rows.append(p + c[:-1])
                if first_row is None:
                    first_row = row
                for t, tok in enumerate(c):
                    entry_row.append(row)
                    entry_pos.append(encoding.answer_position(p) + t)
                    entry_tgt.append(tok)
                    entry_pair.append(pair + j)
        if first_row is None:
            first_row = len(rows)
            rows.append(p)
        for j, _ in enumerate(it.candidates):
            c = cand_ids[pair + j]
            if len(c) == 1:
                entry_row.append(first_row)
                entry_pos.append(encoding.answer_position(p))
                entry_tgt.append(c[0])
                entry_pair.append(pair + j)
        pair += k
    entries = np.array([entry_row, entry_pos, entry_tgt, entry_pair], dtype=np.int64)
    return rows, entries, pair


def _batches(rows: list[list[int]], batch_size: int):
    """Row indices in batches of similar length (longest first)."""
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r]))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def _pad(rows: list[list[int]], batch: list[int], pad_id: int, device) -> Int[Tensor, "batch pos"]:
    return encoding.pad_rows([rows[r] for r in batch], pad_id).to(device)


@torch.no_grad()
def candidate_logprobs(
    model, tokenizer, items: Sequence, batch_size: int = 32, device: str | torch.device = "cpu"
) -> list[np.ndarray]:
    """Summed continuation log-probability of every candidate of every item (one array per item)."""
    if batch_size < 1:
        raise CodetransferError(f"batch_size: expected a positive number of rows per forward, got {batch_size}")
    rows, entries, n_pairs = _plan(items, tokenizer, model_n_ctx(model))
    pad_id = encoding.pad_id(tokenizer)
    scores = torch.zeros(n_pairs, dtype=torch.float64)
    by_row = np.argsort(entries[0], kind="stable")
    starts = np.searchsorted(entries[0][by_row], np.arange(len(rows) + 1))
    for batch in _batches(rows, batch_size):
        tokens = _pad(rows, batch, pad_id, device)
        logits = forward_logits(model, tokens)
        sel = np.concatenate([by_row[starts[r] : starts[r + 1]] for r in batch])
        local = np.concatenate([np.full(starts[r + 1] - starts[r], b) for b, r in enumerate(batch)])
        b_idx = torch.as_tensor(local, device=logits.device)
        p_idx = torch.as_tensor(entries[1][sel], device=logits.device)
        tgt = torch.as_tensor(entries[2][sel], device=logits.device)
        lp = torch.log_softmax(logits[b_idx, p_idx].float(), dim=-1).gather(1, tgt[:, None])[:, 0]
        scores.index_add_(0, torch.as_tensor(entries[3][sel]), lp.double().cpu())
    out, s = [], 0
    flat = scores.numpy()
    for it in items:
        out.append(flat[s : s + len(it.candidates)].copy())
        s += len(it.candidates)
    return out


def score_items(
    model, tokenizer, items: Sequence, batch_size: int = 32, device: str | torch.device = "cpu"
) -> pd.DataFrame:
    """One row per item: log-probability of every candidate, ``correct`` and ``logit_diff``.

    ``model`` is a loaded TransformerBridge or a HF causal LM, already on ``device``. Columns:
    ``task, version, item_seed, index, category, rendering, difficulty, template, n_candidates, label,
    chance, copy_chance`` (see :func:`copy_chance`), ``logprobs`` (list, one per candidate),
    ``logprob_answer, logit_diff, correct``.
    """
    lps = candidate_logprobs(model, tokenizer, items, batch_size, device)
    recs = []
    for it, lp in zip(items, lps):
        others = np.delete(lp, it.label)
        diff = float(lp[it.label] - others.max())
        recs.append(
            (
                it.task,
                it.version,
                it.seed,
                it.index,
                it.category,
                it.rendering,
                int(it.difficulty),
                it.template,
                len(it.candidates),
                it.label,
                1.0 / len(it.candidates),
                copy_chance(it.prompt, it.candidates, it.label),
                lp.tolist(),
                float(lp[it.label]),
                diff,
                diff > 0,
            )
        )
    return pd.DataFrame.from_records(recs, columns=list(ITEM_COLUMNS))


# --------------------------------------------------------------------------------------------------
# every run on every task


def item_token_lengths(items: Sequence, tokenizer) -> np.ndarray:
    """Tokens each item needs in one row: ``1 (bos) + len(prompt) + len(longest candidate) - 1``."""
    prompt = [len(e) for e in encoding.encode_batch(tokenizer, [it.prompt for it in items])]
    cands = [len(e) for e in encoding.encode_batch(tokenizer, [c for it in items for c in it.candidates])]
    out, s = [], 0
    for it, p in zip(items, prompt):
        out.append(p + max(cands[s : s + len(it.candidates)]))
        s += len(it.candidates)
    return np.array(out, dtype=np.int64)


def fit_to_context(
    items_by_task: Mapping[str, Sequence], tokenizer, n_ctx: int
) -> tuple[dict[str, list], dict[str, list[int]]]:
    """Drop whole difficulty levels that have an item longer than ``n_ctx`` tokens.

    Returns ``(kept items by task, dropped levels by task)``; tasks with no level left are dropped.
    Whole levels go (not single items) so that every difficulty row that remains is unbiased.
    """
    kept, dropped = {}, {}
    for task, items in items_by_task.items():
        lengths = item_token_lengths(items, tokenizer)
        bad = sorted({int(it.difficulty) for it, n in zip(items, lengths) if n > n_ctx})
        if bad:
            dropped[task] = bad
        keep = [it for it in items if int(it.difficulty) not in bad]
        if keep:
            kept[task] = keep
    return kept, dropped


def check_fits_context(items_by_task: Mapping[str, Sequence], tokenizer, n_ctx: int, hint: str = "") -> None:
    """Refuse (one line) when some task has items longer than ``n_ctx``, naming the levels that do not fit."""
    _, dropped = fit_to_context(items_by_task, tokenizer, n_ctx)
    if dropped:
        what = "; ".join(f"{t} difficulty {', '.join(map(str, d))}" for t, d in dropped.items())
        raise CodetransferError(
            f"tasks: items longer than the model's context n_ctx={n_ctx} tokens ({what}); "
            + (hint or "generate lower difficulties or drop those tasks")
        )


def make_items(tasks, n_items: int, seed: int, max_difficulty: int | None = None) -> dict[str, list]:
    """``{task name: items}``: generated once (seeded) from the task registry, or passed through.

    ``tasks`` is a list of task names (or a comma-separated string) — items come from
    ``codetransfer.tasks.get_task(name).generate(n_items, seed)``, whose difficulty levels cycle over the
    items — or already a mapping of name to items. ``max_difficulty`` keeps only items of lower or equal
    difficulty (so fewer than ``n_items`` remain; their indices keep identifying them).
    """
    if isinstance(tasks, Mapping):
        out = {str(k): list(v) for k, v in tasks.items()}
    else:
        if isinstance(tasks, str):
            tasks = [t for t in tasks.split(",") if t]
        if n_items < 1:
            raise CodetransferError(f"n_items: expected a positive number of items per task, got {n_items}")
        known = list(task_names())
        out = {}
        for name in tasks:
            if name not in known:
                raise CodetransferError(
                    f"tasks: unknown task '{name}'{did_you_mean(name, known)}; choose from {', '.join(known)}"
                )
            out[name] = list(get_task(name).generate(n_items, seed))
    if max_difficulty is not None:
        out = {k: [it for it in v if it.difficulty <= max_difficulty] for k, v in out.items()}
    if not out:
        raise CodetransferError("tasks: expected at least one task, got none")
    for name, items in out.items():
        if len(items) == 0:
            raise CodetransferError(
                f"tasks: task '{name}' has no items"
                + (f" of difficulty <= {max_difficulty}" if max_difficulty is not None else "")
                + "; ask for more items or a higher difficulty"
            )
    return out


def _run_meta(run) -> tuple[str, str, int]:
    info = getattr(run, "info", run)
    try:
        return str(info.name), str(info.recipe), int(info.seed)
    except AttributeError:
        raise CodetransferError(
            f"loaded_runs: expected loaded runs with .bridge, .tokenizer and .info (.name, .recipe, .seed), "
            f"got a {type(run).__name__}; load them with codetransfer.trained.load_run"
        ) from None


def score_runs(
    loaded_runs: Sequence,
    items_by_task: Mapping[str, Sequence],
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress=None,
) -> pd.DataFrame:
    """Per-item scores of every run on every task: :func:`score_items` rows plus ``run, recipe, seed``.

    A run is any object with ``.bridge`` (or ``.model``), ``.tokenizer`` and ``.info`` with ``.name``,
    ``.recipe``, ``.seed`` (what ``codetransfer.trained.load_run`` returns).
    """
    if len(loaded_runs) == 0:
        raise CodetransferError("loaded_runs: expected at least one run to evaluate, got none")
    metas = [_run_meta(r) for r in loaded_runs]
    names = [m[0] for m in metas]
    if len(set(names)) != len(names):
        raise CodetransferError(f"loaded_runs: run names repeat ({names}); every run needs its own name")
    frames = []
    for run, (name, recipe, seed) in zip(loaded_runs, metas):
        model = getattr(run, "bridge", None)
        model = getattr(run, "model", None) if model is None else model
        for task, items in items_by_task.items():
            if progress is not None:
                progress(f"scoring run {name} on {task} ({len(items)} items)")
            df = score_items(model, run.tokenizer, items, batch_size, device)
            frames.append(schema.add_run_columns(df, SimpleNamespace(name=name, recipe=recipe, seed=seed)))
    return pd.concat(frames, ignore_index=True)


def _levels(df: pd.DataFrame):
    if "difficulty" in df.columns:
        for d in sorted(df["difficulty"].unique()):
            yield str(d), df[df["difficulty"] == d]
    yield "all", df


def _metric_values(df: pd.DataFrame, metric: str) -> np.ndarray:
    return df[METRIC_COLUMNS[metric]].to_numpy(dtype=float)


def _metrics_of(scores: pd.DataFrame) -> list[str]:
    return [m for m, col in METRIC_COLUMNS.items() if col in scores.columns]


def _chance(df: pd.DataFrame, column: str = "chance") -> float:
    return float(df[column].mean()) if column in df.columns else float("nan")


def tidy_table(scores: pd.DataFrame, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """The tidy evaluation table from :func:`score_runs`'s per-item scores (see module docstring).

    Columns: ``run, recipe, seed, task, category, difficulty, metric, value, ci_low, ci_high, chance,
    copy_chance, n_items`` (``copy_chance``: mean of :func:`copy_chance`, the bar a key-blind copier
    reaches); per-run rows and, with ``run = "<recipe>*"``, per-recipe rows aggregated over seeds.
    Also takes :func:`heldout_scores` rows (per window, metric ``loss``, difficulty ``'all'`` only).
    """
    rng = np.random.default_rng(seed)
    metrics = _metrics_of(scores)
    recs = []
    for (run, recipe, rseed, task, category), g in scores.groupby(
        ["run", "recipe", "seed", "task", "category"], sort=True
    ):
        for level, gl in _levels(g):
            for metric in metrics:
                v, lo, hi = bootstrap_ci(_metric_values(gl, metric), n_boot, ci, rng)
                recs.append(
                    (
                        run,
                        recipe,
                        rseed,
                        task,
                        category,
                        level,
                        metric,
                        float(v),
                        float(lo),
                        float(hi),
                        _chance(gl),
                        _chance(gl, "copy_chance"),
                        len(gl),
                    )
                )
    for (recipe, task, category), g in scores.groupby(["recipe", "task", "category"], sort=True):
        for level, gl in _levels(g):
            for metric in metrics:
                m = (
                    gl.assign(_v=_metric_values(gl, metric))
                    .pivot_table(index="seed", columns="index", values="_v", aggfunc="mean")
                    .dropna(axis=1)
                )
                if m.shape[1] == 0:
                    continue
                iv = hierarchical_bootstrap_ci(m.to_numpy(), n_boot, ci, rng, crossed=True)
                recs.append(
                    (
                        f"{recipe}*",
                        recipe,
                        pd.NA,
                        task,
                        category,
                        level,
                        metric,
                        iv.value,
                        iv.low,
                        iv.high,
                        _chance(gl),
                        _chance(gl, "copy_chance"),
                        m.shape[1],
                    )
                )
    table = pd.DataFrame.from_records(recs, columns=list(schema.columns("eval")))
    table["seed"] = table["seed"].astype("Int64")
    table["difficulty"] = table["difficulty"].astype(str)
    return table


def evaluate_runs(
    loaded_runs: Sequence,
    tasks,
    n_items: int = 200,
    seed: int = 0,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    n_boot: int = 2000,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Every run on every task: the tidy table of :func:`tidy_table` (items generated once, shared by all runs).

    Items longer than a run's context are refused before any run is scored (see :func:`fit_to_context`
    to drop those difficulty levels instead).
    """
    items = make_items(tasks, n_items, seed)
    for run in loaded_runs:
        _run_meta(run)
        model = getattr(run, "bridge", None)
        model = getattr(run, "model", None) if model is None else model
        check_fits_context(items, run.tokenizer, model_n_ctx(model))
    return tidy_table(score_runs(loaded_runs, items, batch_size, device), n_boot, ci, seed)


# --------------------------------------------------------------------------------------------------
# paper-style summary


def relative_change_summary(
    scores: pd.DataFrame,
    baseline: str = "text-only",
    metric: str = "accuracy",
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Relative change of every recipe vs ``baseline`` per category, with bootstrap intervals of the ratio.

    Columns: ``recipe, baseline, category, metric`` (``"relative_change"``), ``of`` (the metric compared),
    ``value, ci_low, ci_high`` (``value = 0.082`` means +8.2%), ``recipe_value, baseline_value, n_seeds,
    n_items``. Items of all tasks of a category are pooled (equal weight per item). With
    :func:`heldout_scores` rows and ``metric="loss"`` it is the relative change of held-out loss per
    category (negative = better).
    """
    if metric not in _metrics_of(scores):
        raise CodetransferError(
            f"metric: expected one of {', '.join(_metrics_of(scores))} (the scores' columns), got '{metric}'"
        )
    recipes = sorted(scores["recipe"].unique())
    if baseline not in recipes:
        raise CodetransferError(
            f"baseline: recipe '{baseline}' is not among the evaluated recipes{did_you_mean(baseline, recipes)} "
            f"({', '.join(recipes)}); pass --baseline with one of them"
        )
    rng = np.random.default_rng(seed)
    df = scores.assign(_v=_metric_values(scores, metric), _key=scores["task"] + "#" + scores["index"].astype(str))
    recs = []
    for category, g in df.groupby("category", sort=True):
        mats = {
            r: gr.pivot_table(index="seed", columns="_key", values="_v", aggfunc="mean")
            for r, gr in g.groupby("recipe")
        }
        if baseline not in mats:
            continue
        base = mats[baseline]
        for recipe in recipes:
            if recipe == baseline or recipe not in mats:
                continue
            cols = base.columns.intersection(mats[recipe].columns)
            r_m = mats[recipe][cols].dropna(axis=1).to_numpy()
            b_m = base[cols].dropna(axis=1).to_numpy()
            paired = r_m.shape[1] == b_m.shape[1]
            if b_m.mean() == 0:
                iv_value = iv_low = iv_high = float("nan")
            else:
                iv = relative_change_ci(r_m, b_m, n_boot, ci, rng, paired_items=paired)
                iv_value, iv_low, iv_high = iv.value, iv.low, iv.high
            recs.append(
                (
                    recipe,
                    baseline,
                    category,
                    "relative_change",
                    metric,
                    iv_value,
                    iv_low,
                    iv_high,
                    float(r_m.mean()),
                    float(b_m.mean()),
                    r_m.shape[0],
                    r_m.shape[1],
                )
            )
    return pd.DataFrame.from_records(recs, columns=list(SUMMARY_COLUMNS))


def format_summary(summary: pd.DataFrame) -> str:
    """A small text table: recipes as rows, categories as columns, ``+8.2% [+1.0, +15.3]`` cells."""
    if summary.empty:
        return "(no recipes to compare with the baseline)"
    cell = summary.apply(
        lambda r: (
            f"{100 * r.value:+.1f}% [{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}]" if np.isfinite(r.value) else "n/a"
        ),
        axis=1,
    )
    wide = summary.assign(cell=cell).pivot(index="recipe", columns="category", values="cell").fillna("")
    base = summary["baseline"].iloc[0]
    return f"relative change of {summary['of'].iloc[0]} vs '{base}' (percentile bootstrap CI)\n" + wide.to_string()


# --------------------------------------------------------------------------------------------------
# held-out loss


@torch.no_grad()
def heldout_scores(
    model,
    token_arrays_by_source: Mapping[str, np.ndarray | str | Path],
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    max_windows: int | None = None,
    categories: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Per-window held-out next-token loss (nats/token) of every source.

    Each source's token array (a uint16 array or a path to a ``.npy`` file) is cut into non-overlapping
    windows of the model's ``n_ctx`` tokens (the last partial window is dropped; at most ``max_windows``
    evenly spaced windows are used). Rows: ``task`` (``"heldout:<source>"``), ``category`` (``stdlib`` ->
    ``code`` unless ``categories`` says otherwise; other sources ``"text"``), ``index`` (window), ``loss``.
    """
    cats = {"stdlib": "code", **(categories or {})}
    n_ctx = model_n_ctx(model)
    if len(token_arrays_by_source) == 0:
        raise CodetransferError("token_arrays_by_source: expected at least one source, got none")
    frames = []
    for source, arr in token_arrays_by_source.items():
        if isinstance(arr, (str, Path)):
            try:
                arr = np.load(arr, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise CodetransferError(f"token_arrays_by_source['{source}']: cannot read {arr} ({e})") from None
        arr = np.asarray(arr)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise CodetransferError(
                f"token_arrays_by_source['{source}']: expected a 1-D integer token array, got {arr.dtype} {arr.shape}"
            )
        n_win = len(arr) // n_ctx
        if n_win == 0:
            raise CodetransferError(
                f"token_arrays_by_source['{source}']: {len(arr)} tokens is shorter than one window of n_ctx={n_ctx}"
            )
        starts = np.arange(n_win) * n_ctx
        if max_windows is not None and n_win > max_windows:
            starts = starts[np.unique(np.linspace(0, n_win - 1, max_windows).round().astype(int))]
        windows = np.stack([np.asarray(arr[s : s + n_ctx], dtype=np.int64) for s in starts])
        per_window = []
        for s in range(0, len(windows), batch_size):
            x = torch.as_tensor(windows[s : s + batch_size], device=device)
            logits = forward_logits(model, x).float()
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none"
            ).view(x.shape[0], -1)
            per_window.append(nll.mean(1).cpu().numpy())
        frames.append(
            pd.DataFrame(
                {
                    "task": f"heldout:{source}",
                    "category": cats.get(source, "text"),
                    "index": np.arange(len(windows)),
                    "loss": np.concatenate(per_window),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def heldout_loss(
    model,
    token_arrays_by_source: Mapping[str, np.ndarray | str | Path],
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    max_windows: int | None = None,
    categories: Mapping[str, str] | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-source held-out loss rows (``task, category, metric='loss', value, ci_low, ci_high, n_windows``),
    the interval a bootstrap over windows; see :func:`heldout_scores`."""
    scores = heldout_scores(model, token_arrays_by_source, batch_size, device, max_windows, categories)
    rng = np.random.default_rng(seed)
    recs = []
    for (task, category), g in scores.groupby(["task", "category"], sort=False):
        v, lo, hi = bootstrap_ci(g["loss"].to_numpy(), n_boot, ci, rng)
        recs.append((task, category, "loss", float(v), float(lo), float(hi), len(g)))
    return pd.DataFrame.from_records(
        recs, columns=["task", "category", "metric", "value", "ci_low", "ci_high", "n_windows"]
    )


# --------------------------------------------------------------------------------------------------
# plots


def select_task(table: pd.DataFrame, task: str | None) -> tuple[pd.DataFrame, str]:
    """The rows of ``task`` (which may be omitted when the table has one task), and its name."""
    tasks = sorted(table["task"].unique())
    if task is None:
        if len(tasks) != 1:
            raise CodetransferError(f"task: the table has {len(tasks)} tasks ({', '.join(tasks)}); pass task=...")
        task = tasks[0]
    elif task not in tasks:
        raise CodetransferError(f"task: '{task}' is not in the table{did_you_mean(task, tasks)}; choose from {tasks}")
    return table[table["task"] == task], task


def plot_accuracy_vs_difficulty(table: pd.DataFrame, task: str | None = None, ax=None, metric: str = "accuracy"):
    """One line per recipe (seed-aggregated rows ``run = "<recipe>*"``, else per run) of ``metric`` vs
    difficulty, with CI bands, the chance line and (where the table has it) the copy baseline.
    ``task`` may be omitted when the table has one task."""
    from matplotlib.ticker import MaxNLocator

    from codetransfer.analysis import style as S

    t = table[(table["metric"] == metric) & (table["difficulty"] != "all")]
    t, task = select_task(t, task)
    agg = t[t["run"].str.endswith("*")]
    t, key = (agg, "recipe") if len(agg) else (t, "run")
    ax = ax if ax is not None else S.new_axes()
    for name, g in t.groupby(key, sort=True):
        g = g.assign(_d=g["difficulty"].astype(int)).sort_values("_d")
        S.line_with_band(
            ax,
            g["_d"],
            g["value"],
            g["ci_low"],
            g["ci_high"],
            label=str(name).rstrip("*"),
            color=S.recipe_color(g["recipe"].iloc[0]),
        )
    if metric == "accuracy" and len(t):
        d = t.assign(_d=t["difficulty"].astype(int))
        ch = d.groupby("_d")["chance"].mean()
        ax.plot(ch.index, ch.values, color=S.REFERENCE_COLOR, ls="--", lw=1, label="chance")
        if "copy_chance" in d.columns and d["copy_chance"].notna().any():
            cc = d.groupby("_d")["copy_chance"].mean()
            ax.plot(cc.index, cc.values, color=S.REFERENCE_COLOR, ls=":", lw=1, label="copy baseline")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("difficulty level (task generator)")
    ax.set_ylabel(S.metric_style(metric).label, fontsize="small")
    ax.set_title(task, fontsize="medium")
    S.legend_outside(ax)
    return ax


def plot_relative_change(summary: pd.DataFrame, ax=None):
    """Grouped bars: relative change vs the baseline per category, one bar per recipe (its fixed
    colour), CI error bars. An interval end that is not finite (a baseline resample with mean 0) is
    drawn as an arrow running off the axes and labelled "unbounded"; a change that is not defined
    (baseline mean 0) is written as "undefined" instead of a bar."""
    from codetransfer.analysis import style as S

    ax = ax if ax is not None else S.new_axes((7, 3.6))
    cats = sorted(summary["category"].unique())
    recipes = sorted(summary["recipe"].unique())
    width = 0.8 / max(1, len(recipes))
    finite = summary[["value", "ci_low", "ci_high"]].to_numpy(dtype=float) * 100
    finite = finite[np.isfinite(finite)]
    top = float(np.max(np.abs(finite))) * 1.15 if finite.size else 10.0
    arrows = []
    for k, recipe in enumerate(recipes):
        g = summary[summary["recipe"] == recipe].set_index("category").reindex(cats)
        x = np.arange(len(cats)) + (k - (len(recipes) - 1) / 2) * width
        v, lo, hi = (g[c].to_numpy(dtype=float) * 100 for c in ("value", "ci_low", "ci_high"))
        ok = np.isfinite(v)
        ax.bar(x[ok], v[ok], width, color=S.recipe_color(recipe), label=recipe)
        fin = ok & np.isfinite(lo) & np.isfinite(hi)
        ax.errorbar(
            x[fin],
            v[fin],
            yerr=np.vstack([v[fin] - lo[fin], hi[fin] - v[fin]]),
            fmt="none",
            ecolor="black",
            capsize=3,
            lw=1,
        )
        for xi, vi, li, hii in zip(x, v, lo, hi):
            if not np.isfinite(vi):
                ax.text(xi, 0, "undefined", rotation=90, ha="center", va="bottom", fontsize="x-small")
                continue
            for end, sign in ((hii, 1), (li, -1)):
                if not np.isfinite(end):  # inf, or NaN where the ratio's resamples diverged
                    other = li if sign > 0 else hii
                    start = other if np.isfinite(other) else vi
                    ax.vlines(xi, min(start, vi) if sign > 0 else max(start, vi), sign * top, color="black", lw=1)
                    arrows.append((xi, sign * top, sign))
    for xi, yi, sign in arrows:
        ax.annotate("", xy=(xi, yi), xytext=(xi, yi - sign * 1e-9), arrowprops=dict(arrowstyle="-|>", color="black"))
        ax.text(xi, yi, "unbounded", ha="center", va="bottom" if sign > 0 else "top", fontsize="x-small")
    if arrows:
        ax.set_ylim(-top * 1.1 if any(s < 0 for *_, s in arrows) else None, top * 1.1)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(cats)), cats)
    ax.set_xlabel("task category")
    of = summary["of"].iloc[0] if "of" in summary.columns and len(summary) else "accuracy"
    ax.set_ylabel(
        f"relative change of {of} vs '{summary['baseline'].iloc[0]}' (%)" if len(summary) else "relative change (%)",
        fontsize="small",
    )
    S.legend_outside(ax, "recipe")
    return ax
