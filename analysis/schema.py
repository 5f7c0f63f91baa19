"""The columns of every result table, in one place, and the conventions they share.

Each table the library writes has a :class:`Table` entry in :data:`TABLES`: its file name, its
columns in order, and optional columns that some rows' producers add. :func:`check` tests a frame
against its entry; :func:`order` puts a frame's columns in schema order.

Conventions:

* **run columns.** Tables about trained runs start with :data:`RUN_COLUMNS` (``run, recipe,
  seed``): :func:`add_run_columns` adds them from a loaded run (or its info). Aggregates over the
  training seeds of one recipe have ``run = "<recipe>*"`` and a missing ``seed``.
* **no head.** A row that is not about one attention head (a residual-stream or MLP site, a
  layer's whole attention write) has ``head`` = missing: the pandas nullable integer ``Int64``'s
  ``NA`` (:data:`NO_HEAD`), in probing and patching tables alike (:func:`head_column`), so
  ``table["head"].isna()`` selects the rows without a head and a head index is never confused
  with a sentinel value. A ``head`` column is always of an integer dtype (``Int64`` where a head
  can be missing; attention tables, where every row is a head, keep ``int64``).
* **sites.** ``site`` holds a kind of :mod:`codetransfer.analysis.sites` (``resid_pre``,
  ``head_out``, ...), the layer sits in ``layer`` and the head in ``head``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from codetransfer.errors import CodetransferError, did_you_mean

RUN_COLUMNS = ("run", "recipe", "seed")
"""The columns that say which trained run a row is about."""

NO_HEAD = pd.NA
"""The ``head`` value of rows that are not about one head (column dtype ``Int64``)."""

HEAD_DTYPE = "Int64"


@dataclass(frozen=True)
class Table:
    """The schema of one result table."""

    name: str
    """Short name (the key of :data:`TABLES`)."""
    file: str
    """File name the command line writes it to."""
    columns: tuple[str, ...]
    """Columns every row has, in order (run columns included where the table has them)."""
    optional: tuple[str, ...] = ()
    """Columns some producers add after :attr:`columns` (e.g. ``fit_on, test_on`` of cross-format probes)."""
    description: str = ""
    """What one row is."""


_EVAL = ("task", "category", "difficulty", "metric", "value", "ci_low", "ci_high", "chance", "copy_chance", "n_items")
_PATCH = ("task", "site", "layer", "head", "pos", "pos_label", "metric", "value", "ci_low", "ci_high")
_ATTN = ("task", "rendering", "layer", "head", "metric", "value", "ci_low", "ci_high")
_ITEM = (
    "task", "version", "item_seed", "index", "category", "rendering", "difficulty", "template",
    "n_candidates", "label", "chance", "copy_chance", "logprobs", "logprob_answer", "logit_diff", "correct",
)  # fmt: skip

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "eval",
            "eval.parquet",
            RUN_COLUMNS + _EVAL,
            description="a run (or recipe) on a task category and difficulty: one metric with its interval",
        ),
        Table("scores", "scores.parquet", RUN_COLUMNS + _ITEM, description="one item scored by one run"),
        Table(
            "losses",
            "losses.parquet",
            RUN_COLUMNS + ("task", "category", "index", "loss"),
            description="one held-out window's next-token loss under one run",
        ),
        Table(
            "summary",
            "summary.csv",
            (
                "recipe",
                "baseline",
                "category",
                "metric",
                "of",
                "value",
                "ci_low",
                "ci_high",
                "recipe_value",
                "baseline_value",
                "n_seeds",
                "n_items",
            ),
            description="relative change of a recipe against the baseline recipe in one category",
        ),
        Table(
            "comparison",
            "comparison.parquet",
            (
                "recipe",
                "baseline",
                "metric",
                "scale",
                "category",
                "task",
                "difficulty",
                "estimate",
                "ci_low",
                "ci_high",
                "ci_low_corrected",
                "ci_high_corrected",
                "recipe_value",
                "baseline_value",
                "n_seeds",
                "n_items",
                "p_value",
                "p_holm",
                "p_signflip",
                "test",
                "mde",
                "distinguishable",
                "pooled",
                "pooled_levels",
            ),
            description="a recipe against the baseline, paired by seed and item, at one level (or pooled over "
            "the levels where the baseline is above chance)",
        ),
        Table(
            "learning",
            "learning.parquet",
            RUN_COLUMNS + ("step", "tokens") + _EVAL,
            description="an eval row at one training checkpoint",
        ),
        Table(
            "probes",
            "probes.parquet",
            RUN_COLUMNS + ("task", "site", "layer", "head", "pos", "probe", "metric", "value", "ci_low", "ci_high"),
            optional=("fit_on", "test_on"),
            description="a probe at one site, layer (and head) for one label: one metric with its interval",
        ),
        Table(
            "decodability",
            "decodability.parquet",
            RUN_COLUMNS
            + ("task", "family", "site", "layer", "head", "metric", "trained", "twin", "estimate", "ci_low", "ci_high")
            + ("n_seeds", "interval", "decodable"),
            description="a trained run's probe metric minus its random-init twin's for one label family at one site "
            "and layer, per seed, and per recipe (run '<recipe>*') with a seed-level interval ('item'-level with "
            "fewer than 3 seeds); decodable: the recipe's seed-level interval lies above 0",
        ),
        Table(
            "patching",
            "patching.parquet",
            RUN_COLUMNS + _PATCH,
            description="one patched cell (site, layer, head, position) within a run",
        ),
        Table(
            "patching_over_training",
            "patching_over_training.parquet",
            RUN_COLUMNS + ("step",) + _PATCH,
            description="a patching row at one training checkpoint",
        ),
        Table(
            "cross_model",
            "cross_model.parquet",
            RUN_COLUMNS + _PATCH,
            optional=("source_metric", "target_metric"),
            description="one cell of run A patched into run B (run = 'A->B'; seed: B's); source_metric and "
            "target_metric: A's and B's unpatched mean logit difference on the patched items",
        ),
        Table(
            "cross_rendering",
            "cross_rendering.parquet",
            RUN_COLUMNS + _PATCH,
            description="one cell of the code rendering patched into the text rendering (metric "
            "'cross_rendering'), of its token-matched control, the counterfactual world's code rendering "
            "('cross_rendering_control'), their difference ('cross_rendering_excess'), or the clean text "
            "patched in ('within_rendering')",
        ),
        Table(
            "attention",
            "attention.parquet",
            RUN_COLUMNS + _ATTN,
            description="one head's attention score on one task and rendering",
        ),
        Table(
            "attention_over_training",
            "attention_over_training.parquet",
            RUN_COLUMNS + ("step",) + _ATTN,
            description="an attention row at one training checkpoint",
        ),
        Table(
            "circuit_heads",
            "circuit_heads.parquet",
            RUN_COLUMNS + ("task", "heads_set", "rank", "layer", "head", "by", "value", "eligible"),
            description="one of a run's lookup heads (heads_set 'chosen': top-k by the score 'by') or of its "
            "control heads ('control': drawn at random from the heads that are not candidates for the circuit; "
            "eligible False: a lowest-score head that filled the set up when too few were left)",
        ),
        Table(
            "circuit",
            "circuit.parquet",
            RUN_COLUMNS
            + ("task", "heads_set", "heads", "method", "metric", "clean", "ablated", "value", "ci_low", "ci_high")
            + ("interval", "n_seeds", "n_items"),
            description="the drop (clean - ablated) of a run's (or recipe's, run '<recipe>*') accuracy or logit "
            "difference when its chosen or control heads are mean- or resample-ablated",
        ),
        Table(
            "circuit_gap",
            "circuit_gap.parquet",
            RUN_COLUMNS
            + ("reference", "reference_run", "comparison", "task", "heads_set", "heads", "method", "metric")
            + ("gap", "gap_low", "gap_high", "gap_ablated", "value", "ci_low", "ci_high", "withheld")
            + ("interval", "n_seeds", "n_items"),
            description="the share of a run's (or recipe's over seeds) gap over its reference (baseline, control "
            "or, for the null (comparison seed_null), the baseline's first seed, or where the grid has data seeds the "
            "baseline run of the same init seed in its own data order) that ablating the run's heads removes; "
            "withheld when the gap's interval includes 0",
        ),
        Table(
            "circuit_over_training",
            "circuit_over_training.parquet",
            RUN_COLUMNS + ("step", "heads_set", "rank") + _ATTN + ("interval", "n_seeds"),
            description="a head chosen at the end of a run (or a control head): its induction score (metric) on "
            "repeated random tokens at one training checkpoint; per recipe (run '<recipe>*', no rank, layer or "
            "head) with 3 or more seeds, the mean over seeds of each seed's mean over its heads with a t interval "
            "over seeds (interval 'seed')",
        ),
        Table(
            "cka",
            "cka.parquet",
            ("run_a", "run_b", "recipe_a", "recipe_b", "seed_a", "seed_b", "comparison", "task", "site")
            + ("layer", "metric", "value", "n_rows", "seed_null", "within_seed_null"),
            description="linear CKA of two runs' residual streams at one layer, next to the seed-vs-seed value "
            "(seed_null) and whether it is not below it (within_seed_null)",
        ),
    )
}
"""Every result table, by short name."""


def table(name: str) -> Table:
    """The schema of table ``name``; refuses unknown names."""
    if name not in TABLES:
        raise CodetransferError(
            f"table: unknown table '{name}'{did_you_mean(name, TABLES)}; expected one of {', '.join(TABLES)}"
        )
    return TABLES[name]


def columns(name: str, run_columns: bool = True) -> tuple[str, ...]:
    """The columns of table ``name`` in order (without ``run, recipe, seed`` when ``run_columns`` is False)."""
    cols = table(name).columns
    return cols if run_columns else tuple(c for c in cols if c not in RUN_COLUMNS)


def head_column(values) -> pd.Series | pd.arrays.IntegerArray:
    """``values`` as a ``head`` column: dtype ``Int64``, :data:`NO_HEAD` where there is no head."""
    if isinstance(values, pd.Series):
        return values.astype(HEAD_DTYPE)
    return pd.array([NO_HEAD if v is None else v for v in values], dtype=HEAD_DTYPE)


def order(df: pd.DataFrame, name: str, run_columns: bool = True) -> pd.DataFrame:
    """``df`` with the schema's columns first, in order (those it has), then any others as they were."""
    cols = columns(name, run_columns)
    return df[[c for c in cols if c in df.columns] + [c for c in df.columns if c not in cols]]


def check(df: pd.DataFrame, name: str, run_columns: bool = True) -> pd.DataFrame:
    """Refuse ``df`` unless its columns are exactly table ``name``'s (in order, then optional ones).

    Also refuses a ``head`` column that is not of an integer dtype (a float or object column means
    a sentinel or ``None`` crept in). Returns ``df``.
    """
    t = table(name)
    want = list(columns(name, run_columns))
    have = list(df.columns)
    extra = [c for c in have[len(want) :]]
    if have[: len(want)] != want or any(c not in t.optional for c in extra):
        missing = [c for c in want if c not in have]
        unknown = [c for c in have if c not in want and c not in t.optional]
        raise CodetransferError(
            f"table '{name}': expected columns {want} (then optionally {list(t.optional)}), got {have}; "
            f"missing {missing}, unexpected {unknown}"
        )
    if "head" in df.columns and not pd.api.types.is_integer_dtype(df["head"].dtype):
        raise CodetransferError(
            f"table '{name}': column 'head' must be an integer column ({HEAD_DTYPE}, NA = no head), got {df['head'].dtype}"
        )
    return df


def add_run_columns(df: pd.DataFrame, run, *, name: str | None = None) -> pd.DataFrame:
    """``df`` with ``run, recipe, seed`` from ``run`` inserted first (in place; also returned).

    ``run`` is a loaded run (with ``.info``) or a run info with ``.name, .recipe, .seed``; ``name``
    overrides the run name (e.g. ``"A->B"``).
    """
    info = getattr(run, "info", run)
    try:
        values = (str(info.name) if name is None else name, info.recipe, info.seed)
    except AttributeError:
        raise CodetransferError(
            f"run: expected a loaded run or run info with .name, .recipe and .seed, got a {type(run).__name__}; "
            "load it with codetransfer.trained.load_run"
        ) from None
    for col, value in reversed(list(zip(RUN_COLUMNS, values))):
        if col in df.columns:
            df.pop(col)
        df.insert(0, col, value)
    return df


def readme_rows(names: Sequence[str] | None = None) -> list[str]:
    """The README's table list: one markdown row per table, ``| `file` | `col, col, ...` | description |``."""
    rows = []
    for t in (TABLES[n] for n in (names or TABLES)):
        cols = ", ".join(t.columns) + ("" if not t.optional else f" (+ {', '.join(t.optional)})")
        rows.append(f"| `{t.file}` | `{cols}` | {t.description} |")
    return rows
