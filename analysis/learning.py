"""Learning curves: how task accuracy grows during training, per recipe of the grid.

**What is measured.** When the grid's ``train.snapshot_every`` is above 0, training keeps intermediate
HF checkpoints in ``RUN/checkpoints/step-N/`` (``codetransfer.trained.runs.run_checkpoints`` lists
them, the final model at the run's last step included). Every checkpoint of every run is scored on
the SAME items, exactly as the final models are scored by :mod:`codetransfer.analysis.evaluate`
(summed candidate log-probability; an item is correct when its answer beats every other candidate).
Tiny models get above chance on the easiest levels first, so the curves use difficulty 0 by default.

**Which items.** :func:`learning_items` takes, per task, the items that ``codetransfer eval`` itself
scores at the kept levels: eval's generator gives item ``i`` the level ``levels[i mod L]``, so the
curve's ``n`` items at level ``d`` (``n`` split evenly over the kept levels, rounded up) are items
``d, d + L, d + 2L, ...``. ``codetransfer eval --n-items n*L --max-difficulty D`` scores exactly
these items, so there the curve's last point is the evaluation's number, not a second estimate of it
(with other ``--n-items`` the two share their first items).

**The table.** :func:`learning_table` turns per-item scores at each step (``score_runs`` rows) into
The tidy table (``codetransfer.analysis.schema``): for every step, :func:`~codetransfer.analysis.evaluate.tidy_table`'s rows
(per run, and per recipe aggregated over seeds with ``run = "<recipe>*"``, intervals from the
item bootstrap or the seeds-then-items bootstrap), plus ``step`` (optimizer steps) and ``tokens``
(training tokens seen: ``step x batch_size x n_ctx``, the tokens per step read from the run record).
Each step is bootstrapped on its own with the same ``seed``: intervals are per point; points of one
curve share items and training history, so they are not independent samples (compare curves by
their bands at a given step, not by fitting through the points).

**Models are loaded by the caller.** Analyses take a loaded model and never load one: the command
(``codetransfer eval --checkpoints``) loads each checkpoint with
``codetransfer.trained.loading.load_bridge`` and scores it with
:func:`~codetransfer.analysis.evaluate.score_runs`; this module only shapes and plots the scores.

Not done: there is no step-0 point (training does not snapshot the random initialisation; the
dashed chance line stands for it), and a run branched from shared phases gets the shared phases'
checkpoints from the run that trained them (``run_checkpoints``), so those points repeat that run's.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from codetransfer.analysis.evaluate import select_task, tidy_table
from codetransfer.errors import CodetransferError, did_you_mean
from codetransfer.tasks import get_task, task_names

#: the learning table's first columns; the others are :func:`~codetransfer.analysis.evaluate.tidy_table`'s
#: (``task, category, difficulty, metric, value, ci_low, ci_high, chance, copy_chance, n_items``)
KEY_COLUMNS = ("run", "recipe", "seed", "step", "tokens")

_SCORE_COLUMNS = ("run", "recipe", "seed", "task", "category", "index", "difficulty", "correct")


def tokens_per_step(record: Mapping) -> int:
    """Training tokens per optimizer step of a run (``batch_size x n_ctx``), from its run record
    (``RunInfo.record``): the tokens it saw over the steps it took."""
    phases = record.get("tokens_by_phase") or []
    steps = sum(int(p.get("steps", 0)) for p in phases)
    tokens = sum(int(sum(p.get("tokens", {}).values())) for p in phases)
    if steps <= 0 or tokens <= 0:
        raise CodetransferError(
            f"run record '{record.get('name', '?')}': no tokens_by_phase with steps and tokens (is the run "
            "complete?); train it to completion with 'codetransfer train'"
        )
    if tokens % steps:
        raise CodetransferError(
            f"run record '{record.get('name', '?')}': {tokens} tokens over {steps} steps is not a whole number "
            "of tokens per step; the record is damaged, retrain the run"
        )
    return tokens // steps


def learning_items(tasks, n_items: int, seed: int, max_difficulty: int = 0) -> dict[str, list]:
    """``{task: items}``: ``n_items`` per task (rounded up to a multiple of the kept levels) at the levels
    ``<= max_difficulty``, the very items ``codetransfer eval`` scores at those levels (module docstring).

    ``tasks`` is a list of task names or a comma-separated string.
    """
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if not tasks:
        raise CodetransferError("tasks: expected at least one task family, got none")
    if n_items < 1:
        raise CodetransferError(f"n_items: expected a positive number of items per task, got {n_items}")
    if max_difficulty < 0:
        raise CodetransferError(f"max_difficulty: expected a level >= 0, got {max_difficulty}")
    known = list(task_names())
    out = {}
    for name in tasks:
        if name not in known:
            raise CodetransferError(
                f"tasks: unknown task '{name}'{did_you_mean(name, known)}; choose from {', '.join(known)}"
            )
        family = get_task(name)
        levels = list(family.difficulties)
        kept = [p for p, d in enumerate(levels) if d <= max_difficulty]
        if not kept:
            raise CodetransferError(f"max_difficulty: task '{name}' has no level <= {max_difficulty} (levels {levels})")
        per = -(-n_items // len(kept))
        items = []
        for p in kept:  # item i of eval's generator has level levels[i % L]: the items p, p + L, ...
            items += family.generate(per * len(levels), seed, difficulty=levels[p])[p :: len(levels)]
        out[name] = sorted(items, key=lambda it: it.index)
    return out


def learning_table(
    scores_by_step: Mapping[int, pd.DataFrame],
    tokens_per_step: int | Mapping[str, int],
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """The tidy learning-curve table (see the module docstring) from per-item scores at each step.

    ``scores_by_step[step]`` holds :func:`~codetransfer.analysis.evaluate.score_runs` rows (``run,
    recipe, seed, task, ...``) of every run that has a checkpoint at ``step``. ``tokens_per_step`` is
    the training tokens per step, one number for all runs or ``{run: tokens}`` (see
    :func:`tokens_per_step`). Columns: :data:`KEY_COLUMNS`, then those of ``tidy_table``.
    """
    if not scores_by_step:
        raise CodetransferError("scores_by_step: expected a mapping step -> per-item scores, got an empty one")
    frames = []
    for step in sorted(scores_by_step):
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise CodetransferError(f"scores_by_step: steps must be integers >= 0, got {step!r}")
        scores = scores_by_step[step]
        missing = [c for c in _SCORE_COLUMNS if c not in scores.columns]
        if missing:
            raise CodetransferError(
                f"scores_by_step[{step}]: missing columns {missing}; pass score_runs(...) rows (run, recipe, seed, ...)"
            )
        if scores.empty:
            raise CodetransferError(f"scores_by_step[{step}]: no rows; leave out steps that were not scored")
        per_run = _tokens_by_run(scores, tokens_per_step, step)
        per_recipe = {}
        for recipe, g in scores.groupby("recipe"):
            values = {per_run[r] for r in g["run"].unique()}
            if len(values) != 1:
                raise CodetransferError(
                    f"tokens_per_step: the runs of recipe '{recipe}' differ in tokens per step ({sorted(values)}); "
                    "compare runs of one grid only"
                )
            per_recipe[f"{recipe}*"] = values.pop()
        t = tidy_table(scores, n_boot, ci, seed)
        tokens = t["run"].map({**per_run, **per_recipe}).astype("int64") * int(step)
        frames.append(t.assign(step=int(step), tokens=tokens))
    table = pd.concat(frames, ignore_index=True)
    table = table[list(KEY_COLUMNS) + [c for c in table.columns if c not in KEY_COLUMNS]]
    table["step"] = table["step"].astype("int64")
    return table


def learning_table_from_scores(
    curve_scores: pd.DataFrame, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """:func:`learning_table` of per-item scores that carry their ``step`` and ``tokens`` (training tokens
    seen at that step) as columns: what ``codetransfer eval --checkpoints`` writes to
    ``learning_scores.parquet``, so that the scores of several runs (per-run units) merge into one table."""
    missing = [c for c in ("step", "tokens") if c not in curve_scores.columns]
    if missing:
        raise CodetransferError(f"curve_scores: missing columns {missing}; pass learning_scores.parquet rows")
    if curve_scores.empty:
        raise CodetransferError("curve_scores: no rows; score at least one checkpoint")
    if (curve_scores["step"] < 1).any():
        raise CodetransferError("curve_scores: steps must be >= 1 (the tokens per step come from tokens / step)")
    per_step = curve_scores["tokens"] // curve_scores["step"]
    by_run = pd.DataFrame({"run": curve_scores["run"], "t": per_step}).drop_duplicates()
    if by_run["run"].duplicated().any():
        bad = by_run.loc[by_run["run"].duplicated(), "run"].iloc[0]
        raise CodetransferError(
            f"curve_scores: run '{bad}' has different tokens per step at different steps; "
            "its rows come from different runs of the same name"
        )
    tokens = dict(zip(by_run["run"], by_run["t"].astype(int)))
    cols = [c for c in curve_scores.columns if c not in ("step", "tokens")]
    frames = {int(step): g[cols].reset_index(drop=True) for step, g in curve_scores.groupby("step", sort=True)}
    return learning_table(frames, tokens, n_boot, ci, seed)


def _tokens_by_run(scores: pd.DataFrame, tokens_per_step, step) -> dict[str, int]:
    runs = [str(r) for r in scores["run"].unique()]
    if isinstance(tokens_per_step, Mapping):
        lost = [r for r in runs if r not in tokens_per_step]
        if lost:
            raise CodetransferError(
                f"tokens_per_step: no entry for run '{lost[0]}' (scored at step {step}); give {{run: tokens}} "
                "for every run, e.g. from learning.tokens_per_step(run_info.record)"
            )
        out = {r: tokens_per_step[r] for r in runs}
    else:
        out = {r: tokens_per_step for r in runs}
    for r, v in out.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise CodetransferError(f"tokens_per_step: expected a positive integer for run '{r}', got {v!r}")
    return {r: int(v) for r, v in out.items()}


def first_above_chance(
    table: pd.DataFrame, difficulty: str | int = "0", metric: str = "accuracy", against: str = "chance"
) -> pd.DataFrame:
    """Per recipe (the seed-aggregated rows; per run when the table has none) and task: the first
    checkpoint whose interval lies above ``against`` (``"chance"`` or ``"copy_chance"``), i.e.
    ``ci_low > against``. Columns ``run, recipe, task, step, tokens, value, ci_low, <against>``; ``step``
    and ``tokens`` are empty (<NA>) when no checkpoint gets there."""
    if against not in table.columns:
        raise CodetransferError(f"against: the table has no column '{against}'; use 'chance' or 'copy_chance'")
    t = table[(table["metric"] == metric) & (table["difficulty"].astype(str) == str(difficulty))]
    if t.empty:
        raise CodetransferError(f"table: no rows of metric '{metric}' at difficulty '{difficulty}'")
    agg = t[t["run"].astype(str).str.endswith("*")]
    t = agg if len(agg) else t
    recs = []
    for (run, recipe, task), g in t.groupby(["run", "recipe", "task"], sort=True):
        g = g.sort_values("step")
        above = g[g["ci_low"] > g[against]]
        r = above.iloc[0] if len(above) else None
        recs.append(
            (
                run,
                recipe,
                task,
                pd.NA if r is None else int(r["step"]),
                pd.NA if r is None else int(r["tokens"]),
                float("nan") if r is None else float(r["value"]),
                float("nan") if r is None else float(r["ci_low"]),
                float(g[against].mean()),
            )
        )
    out = pd.DataFrame.from_records(
        recs, columns=["run", "recipe", "task", "step", "tokens", "value", "ci_low", against]
    )
    return out.astype({"step": "Int64", "tokens": "Int64"})


INDUCTION_EMERGED = 0.5
"""Best-head induction score (on repeated random tokens) at which :func:`emergence_table` counts an induction
head as emerged: a canonical head scores above 0.9, a model without one about 0.03 (docs/learnability.md)."""


def emergence_table(
    learning: pd.DataFrame | None,
    over_training: pd.DataFrame | None,
    tokens_per_step: int | Mapping[str, int],
    induction: float = INDUCTION_EMERGED,
    difficulty: str | int = "0",
) -> pd.DataFrame:
    """When each run got there: per run (init seeds; the pooled ``<recipe>*`` rows left out), the first saved
    checkpoint where

    * ``measure = "induction"``: its best head's induction score (``over_training``: the attention stage over
      checkpoints, ``attention_over_training.parquet``) reaches ``induction``;
    * ``measure = "beats copy"`` (one row per task): its accuracy at ``difficulty`` (``learning``:
      ``learning.parquet``) beats the copy baseline with its item interval (``ci_low > copy_chance``).

    Columns ``run, recipe, seed, measure, task, step, tokens, checkpoints, last_tokens``: ``step`` and ``tokens``
    empty (<NA>) when no checkpoint got there (censored at ``last_tokens``, the run's last checkpoint).
    ``tokens_per_step``: one number, or per run (:func:`tokens_per_step` of each run record)."""

    def tokens(run: str, step) -> int:
        per = tokens_per_step if isinstance(tokens_per_step, int) else tokens_per_step[run]
        return int(step) * int(per)

    recs = []
    if over_training is not None and not over_training.empty:
        t = over_training[(over_training["metric"] == "induction") & (over_training["task"] == "repeated_random")]
        t = t[~t["run"].astype(str).str.endswith("*")]
        best = t.groupby(["run", "recipe", "seed", "step"], as_index=False)["value"].max()
        for (run, recipe, seed), g in best.groupby(["run", "recipe", "seed"], sort=True):
            g = g.sort_values("step")
            hit = g[g["value"] >= induction]
            step = int(hit["step"].iloc[0]) if len(hit) else None
            recs.append((run, recipe, seed, "induction", "", step, len(g), tokens(run, g["step"].max())))
    if learning is not None and not learning.empty:
        t = learning[(learning["metric"] == "accuracy") & (learning["difficulty"].astype(str) == str(difficulty))]
        t = t[~t["run"].astype(str).str.endswith("*")]
        for (run, recipe, seed, task), g in t.groupby(["run", "recipe", "seed", "task"], sort=True):
            g = g.sort_values("step")
            hit = g[g["ci_low"] > g["copy_chance"]]
            step = int(hit["step"].iloc[0]) if len(hit) else None
            recs.append((run, recipe, seed, "beats copy", task, step, len(g), tokens(run, g["step"].max())))
    out = pd.DataFrame.from_records(
        recs, columns=["run", "recipe", "seed", "measure", "task", "step", "checkpoints", "last_tokens"]
    )
    out.insert(6, "tokens", [pd.NA if pd.isna(s) else tokens(r, s) for r, s in zip(out["run"], out["step"])])
    return out.astype({"step": "Int64", "tokens": "Int64", "seed": "Int64"})


def emergence_summary(table: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per recipe, measure and task of :func:`emergence_table`: how many seeds got there, and the tokens it took
    (mean with a seed t interval when every seed got there, at least two; otherwise empty: a censored mean is
    not a mean). Columns ``recipe, measure, task, seeds, reached, tokens, ci_low, ci_high, last_tokens``."""
    from codetransfer.analysis.stats import seed_t_interval

    recs = []
    for (recipe, measure, task), g in table.groupby(["recipe", "measure", "task"], sort=True):
        reached = g["tokens"].notna()
        mean = lo = hi = np.nan
        if reached.all() and len(g) >= 2:
            iv = seed_t_interval(g["tokens"].astype(float).to_numpy(), confidence)
            mean, lo, hi = iv.value, iv.low, iv.high
        elif reached.all():
            mean = float(g["tokens"].iloc[0])
        recs.append((recipe, measure, task, len(g), int(reached.sum()), mean, lo, hi, int(g["last_tokens"].min())))
    return pd.DataFrame.from_records(
        recs, columns=["recipe", "measure", "task", "seeds", "reached", "tokens", "ci_low", "ci_high", "last_tokens"]
    )


def plot_learning_curves(
    table: pd.DataFrame,
    task: str | None = None,
    difficulty: str | int = "0",
    metric: str = "accuracy",
    ax=None,
    phases=None,
):
    """``metric`` against training tokens, one line per recipe (the seed-aggregated rows
    ``run = "<recipe>*"``; per run when the table has none) with its interval band, a dashed chance
    line for accuracy (and a dotted ``copy_chance`` line when the table has that column). ``task`` may be omitted when the table has one task. Training tokens are drawn in millions;
    ``phases`` (a grid, run records or a phase table: :func:`codetransfer.analysis.style.phase_table`)
    adds the recipes' phase boundaries. Returns the Axes."""
    from codetransfer.analysis import style as S

    need = {"run", "recipe", "task", "difficulty", "metric", "value", "ci_low", "ci_high", "tokens"}
    if not need <= set(table.columns):
        raise CodetransferError(
            f"table: expected a learning table (learning_table) with columns {sorted(need)}, "
            f"missing {sorted(need - set(table.columns))}"
        )
    metrics = sorted(table["metric"].unique())
    if metric not in metrics:
        raise CodetransferError(
            f"metric: '{metric}' is not in the table{did_you_mean(metric, metrics)}; choose from {metrics}"
        )
    t = table[table["metric"] == metric]
    t, task = select_task(t, task)
    levels = sorted(t["difficulty"].astype(str).unique())
    if str(difficulty) not in levels:
        raise CodetransferError(
            f"difficulty: level '{difficulty}' of task '{task}' is not in the table; choose from {levels}"
        )
    t = t[t["difficulty"].astype(str) == str(difficulty)]
    agg = t[t["run"].astype(str).str.endswith("*")]
    t, key = (agg, "recipe") if len(agg) else (t, "run")
    ax = ax if ax is not None else S.new_axes()
    for name, g in t.groupby(key, sort=True):
        g = g.sort_values("tokens")
        S.line_with_band(
            ax,
            g["tokens"],
            g["value"],
            g["ci_low"],
            g["ci_high"],
            label=str(name).rstrip("*"),
            color=S.recipe_color(g["recipe"].iloc[0]),
        )
    if metric == "accuracy" and "chance" in t.columns and len(t):
        chance = float(t["chance"].mean())
        copy = float(t["copy_chance"].mean()) if "copy_chance" in t.columns and t["copy_chance"].notna().any() else None
        same = copy is not None and abs(copy - chance) < 1e-9
        S.reference_line(ax, chance, "chance = copy baseline" if same else "chance", legend="chance")
        if copy is not None:
            S.reference_line(ax, copy, "copy baseline", ls=":", legend="copy chance", named=not same)
    S.tokens_axis(ax)
    S.draw_phase_boundaries(ax, phases, sorted(t["recipe"].astype(str).unique()))
    ax.set_ylabel(S.metric_style(metric).label, fontsize="small")
    ax.set_title(f"{task} (difficulty {difficulty})", fontsize="medium")
    S.legend_outside(ax, "recipe")
    return ax
