"""What each instrument found, against its control, and whether it found a planted answer.

Every instrument of the job answers one question about two recipes ``a`` and ``b`` (``b`` the reference: the
baseline, or ``a``'s ``compare_with`` control). Its finding counts only where it beats its control with a
seed-level interval (at least :data:`~codetransfer.analysis.compare.MIN_SEEDS_DISTINGUISHABLE` seeds):

* **evaluation** -- ``a`` scores above ``b`` (logit difference, the reasoning levels pooled): the seed-paired
  comparison is distinguishable (corrected interval excludes 0, Holm p < 0.05) and positive. Control: the seeds.
* **attention** -- ``a``'s best induction head (on repeated random tokens) scores above ``b``'s: the per-seed
  difference of the best heads' scores, paired by init seed, has a t interval above 0. Control: ``b``'s heads.
* **ablation** -- mean-ablating ``a``'s lookup heads (the circuit stage) removes logit difference in ``a``
  (interval above 0) and more than ablating ``b``'s own lookup heads removes in ``b`` (the seed-paired
  difference above 0). Control: the same ablation in ``b``; the random control heads of ``a`` are reported next
  to it.
* **gap share** -- mean-ablating ``a``'s lookup heads in both models removes most of the ``a - b`` gap on the
  circuit's items: a share of at least :data:`MOST` with a seed interval above 0 and above the interval of as
  many random control heads. Control: the random heads.
* **cross-model patching** -- one component carries most of the gap, patched either way (``a``'s into ``b``: does
  it suffice? ``b``'s into ``a``: does ``a`` need it?): the mean over seeds of its share is at least :data:`MOST`
  with a seed interval above 0, inside the stable range, and above the same-recipe null of that component: another
  model of the receiving recipe (a data-order twin, or another init seed) patched into the same run at the same
  cell, read as a share of the *tested* pair's gap (:func:`null_shares`); the seed-paired difference (share minus
  null, at least 3 seeds) must have a t interval above 0. A share with no null beats no control and is not found
  (replacing a component by a foreign model's may break what any foreign activation would). Control: the
  same-recipe pair.
* **probing** -- a label is decodable in ``a`` (trained above its random-init twin with a seed interval) at a
  layer where it is not in ``b``. Control: the random-init twin.
* **similarity** -- at some layer every seed's linear CKA between ``a`` and ``b`` lies below every seed-vs-seed
  CKA of the baseline. Control: the seed null.

A grid carries a **planted answer** (:func:`planted_answer`) when one recipe's runs end their warm-ups (at their
start or in a phase) on the periodic copying rows and others get no warm-up or end on the scrambled rows (the
``control`` and ``control-aligned`` presets, docs/control.md):
code (the periodic rows) is known to plant the lookup circuit in that arm. Then the evaluation, attention and
ablation must find the planted arm above each control arm, the gap share and cross-model patching must find
heads or a component that carry most of the gap, and the scrambled arm must not differ from the arm with no warm-up (a null: same
tokens, nothing to copy). :func:`verdicts` says per instrument ``found`` / ``missed`` (or ``as expected`` /
``false positive`` for the null), with the numbers. Probing and similarity have no planted answer (the
copying circuit stores no world state, and nothing fixes how much it moves the representation): they are
reported, not judged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from codetransfer.analysis.attention import best_heads
from codetransfer.analysis.compare import MIN_SEEDS_DISTINGUISHABLE, has_gap, recipe_gap
from codetransfer.analysis.stats import seed_t_interval
from codetransfer.errors import CodetransferError
from codetransfer.trained.checks import is_data_order_pair, is_data_order_run, read_table
from codetransfer.trained.config import all_warmup_rows

MOST = 0.5
"""The share of a gap a component must carry (seed mean) to count as carrying most of it."""
STABLE_SHARE = (-0.5, 1.5)
"""A cross-model share outside this range divides by a gap that is small on the patched items: it is flagged as
unstable and never headlined (the report) or counted (the verdicts)."""
NULL_ENDPOINTS = ("source_metric", "target_metric")
"""The columns of ``cross_model.parquet`` that hold a pair's unpatched metrics (:func:`null_shares`)."""
TABLES = ("comparison", "attention", "circuit", "circuit_gap", "cross_model", "decodability", "cka")
"""The result tables (``results/<name>.parquet``) the verdicts read."""
COLUMNS = ("instrument", "recipe", "reference", "expected", "found", "verdict", "evidence", "control")
"""Columns of :func:`verdicts`' table: ``expected`` is True (a planted answer to find), False (a null: nothing
to find) or None (no known answer); ``found`` is True, False, or None where the instrument has not run."""


@dataclass(frozen=True)
class Planted:
    """A grid's planted answer: ``arm`` has the lookup circuit planted; ``controls`` do not; ``null`` is the pair
    (scrambled arm, arm without warm-up) that must not differ."""

    arm: str
    controls: tuple[str, ...]
    null: tuple[str, str] | None


def planted_answer(grid) -> Planted | None:
    """The planted answer of ``grid`` (a :class:`~codetransfer.trained.config.GridConfig`), or None. A recipe's runs
    have the copying circuit when the last induction warm-up they get (at their start, ``Recipe.warmup``, or in a
    phase, ``Phase.warmup``) has the periodic rows; they have none when they get no warm-up or when their last one
    has the scrambled rows (which erase a circuit planted before them: the aligned control, docs/control.md). A
    grid has a planted answer when exactly one recipe has the circuit and at least one has none. The null is the
    pair (a recipe with only scrambled rows, a recipe with no warm-up), where both exist."""
    if grid is None:
        return None
    by = {r.name: all_warmup_rows(grid, r) for r in grid.recipes}
    arms = [n for n, w in by.items() if w and w[-1] == "periodic"]
    controls = tuple(n for n, w in by.items() if not w or w[-1] == "scrambled")
    if len(arms) != 1 or not controls:
        return None
    scrambled = [n for n, w in by.items() if w == ("scrambled",)]
    none = [n for n, w in by.items() if not w]
    return Planted(arms[0], controls, (scrambled[0], none[0]) if scrambled and none else None)


def read_tables(results: str | Path) -> dict[str, pd.DataFrame | None]:
    """The tables :func:`verdicts` reads from a job's ``results`` folder (None for each that is missing), and the
    aim record (``aim``: a one-row frame, or None)."""
    results = Path(results)
    out: dict[str, pd.DataFrame | None] = {}
    for name in TABLES:
        path = results / f"{name}.parquet"
        out[name] = read_table(path, "result table") if path.is_file() else None
    aim = results / "aim.json"
    try:
        out["aim"] = pd.DataFrame([json.loads(aim.read_text())]) if aim.is_file() else None
    except ValueError as e:
        raise CodetransferError(
            f"{aim}: damaged aim record ({e}); delete it and rerun the job's analysis stages"
        ) from None
    return out


# ------------------------------------------------------------------------------------------ the instruments
# Each takes the tables and two recipes and returns (found, evidence, control): found None when the instrument
# has no data for the pair.


def _iv(x: float, lo: float, hi: float) -> str:
    """``+0.28 [+0.18, +0.38]``: two decimals, three for an interval narrower than 0.02; never ``-0.00``."""
    d = 3 if abs(float(hi) - float(lo)) < 0.02 else 2

    def f(v: float) -> str:
        v = float(v)
        return f"{0.0 if round(v, d) == 0 else v:+.{d}f}"

    return f"{f(x)} [{f(lo)}, {f(hi)}]"


def _per_seed(table: pd.DataFrame, recipe: str, value: str = "value") -> pd.Series:
    """Per-seed values of ``recipe`` (init-seed runs only: data-order runs and pooled rows left out)."""
    t = table[(table["recipe"].astype(str) == recipe) & table["seed"].notna()]
    t = t[~t["run"].map(is_data_order_run).astype(bool) & ~t["run"].astype(str).str.endswith("*")]
    return t.groupby(t["seed"].astype(int))[value].max()


def _paired(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, list[int]]:
    """The per-seed differences ``a - b`` over the seeds where both are finite, and those seeds."""
    seeds = [s for s in sorted(set(a.index) & set(b.index)) if np.isfinite(a[s]) and np.isfinite(b[s])]
    return (a[seeds] - b[seeds]).to_numpy(float), seeds


def _seeds_text(values: pd.Series) -> str:
    return " / ".join(f"{v:.2f}" for v in values.to_numpy(float))


def patched_cell(rows: pd.DataFrame) -> pd.Series:
    """One string per patched cell (site, layer, head, position)."""
    return (
        rows["site"].astype(str)
        + "|" + rows["layer"].astype(str)
        + "|" + rows["head"].astype("string").fillna("")
        + "|" + rows["pos_label"].astype("string").fillna("")
    )  # fmt: skip


def evaluation(tables, a: str, b: str, confidence: float = 0.95):
    c = tables.get("comparison")
    row, where = None, "reasoning levels pooled"
    if c is not None and not c.empty and "pooled" in c:
        c = c[(c["recipe"].astype(str) == a) & (c["baseline"].astype(str) == b) & (c["metric"] == "logit_diff")]
        c = c[c["category"].astype(str) == "reasoning"]
        if "scale" in c:
            c = c[c["scale"].astype(str) == "difference"]
        pooled = c[c["pooled"].astype(bool)]
        if len(pooled) == 1:
            row = pooled.iloc[0]
        elif not c.empty:  # no level has b above chance, so nothing was pooled: the strongest single level
            levels = c[~c["pooled"].astype(bool)]
            gap = levels[[has_gap(r) and float(r["estimate"]) > 0 for _, r in levels.iterrows()]]
            pick = gap if not gap.empty else levels
            if not pick.empty:  # one seed leaves p_holm empty: such rows come last
                row = pick.sort_values("p_holm", na_position="last").iloc[0]
                where = f"{row['task']} level {int(row['difficulty'])}, the strongest level; nothing pooled"
    if row is None:
        return None, f"no seed-paired comparison of {a} with {b} on reasoning", "the seeds"
    n = int(row["n_seeds"])
    words = (
        f"{a} - {b} = {_iv(row['estimate'], row['ci_low_corrected'], row['ci_high_corrected'])} logits ({where}, "
        f"corrected 95% interval, Holm p {row['p_holm']:.2g}, {n} seeds"
    )
    found = has_gap(row) and float(row["estimate"]) > 0
    if not has_gap(row):
        mde = row.get("mde")
        small = pd.notna(mde) and n >= MIN_SEEDS_DISTINGUISHABLE and abs(float(row["estimate"])) < float(mde)
        words += (  # the detectable effect describes a null; an estimate above it is one Holm's correction kept out
            f"; not distinguishable: effects of {float(mde):.2g} or more would have been detected"
            if small
            else "; not distinguishable after the correction for every comparison made"
        )
    return found, words + ")", "seed-paired over init seeds, Holm-corrected"


def attention(tables, a: str, b: str, confidence: float = 0.95):
    t = tables.get("attention")
    if t is None or t.empty:
        return None, "the attention stage has not run", f"{b}'s heads"
    best = best_heads(t)  # each run's best induction head on repeated random tokens
    sa, sb = _per_seed(best, a), _per_seed(best, b)
    diffs, seeds = _paired(sa, sb)
    if len(seeds) < 2:
        return None, f"fewer than 2 seeds with both {a} and {b} scored", f"{b}'s heads"
    iv = seed_t_interval(diffs, confidence)
    words = (
        f"best induction score per seed {a} {_seeds_text(sa[seeds])} vs {b} {_seeds_text(sb[seeds])}: difference "
        f"{_iv(iv.value, iv.low, iv.high)} over {len(seeds)} seeds"
    )
    prev = best_heads(t, "previous_token")
    pa, pb = _per_seed(prev, a), _per_seed(prev, b)
    if len(pa) and len(pb):
        words += f" (best previous-token score {a} {_seeds_text(pa)}, {b} {_seeds_text(pb)})"
    found = len(seeds) >= MIN_SEEDS_DISTINGUISHABLE and iv.low > 0
    return found, words, f"{b}'s heads, paired by init seed"


def ablation(tables, a: str, b: str, confidence: float = 0.95):
    t = tables.get("circuit")
    if t is None or t.empty:
        return None, "the circuit stage has not run", f"{b}'s lookup heads ablated in {b}"
    t = t[(t["method"] == "mean") & (t["metric"] == "logit_diff")]
    chosen = t[t["heads_set"] == "chosen"]
    sa, sb = _per_seed(chosen, a), _per_seed(chosen, b)
    diffs, seeds = _paired(sa, sb)
    if len(seeds) < 2:
        return None, f"fewer than 2 seeds with both {a} and {b} ablated", f"{b}'s lookup heads ablated in {b}"
    own, diff = seed_t_interval(sa[seeds].to_numpy(float), confidence), seed_t_interval(diffs, confidence)
    words = (
        f"mean-ablating {a}'s lookup heads removes {_iv(own.value, own.low, own.high)} logits in {a}, "
        f"{_iv(diff.value, diff.low, diff.high)} more than {b}'s lookup heads remove in {b} ({len(seeds)} seeds)"
    )
    control = _per_seed(t[t["heads_set"] == "control"], a).dropna()
    if len(control) >= 2:
        c = seed_t_interval(control.to_numpy(float), confidence)
        words += f"; as many random control heads of {a} remove {_iv(c.value, c.low, c.high)}"
    found = len(seeds) >= MIN_SEEDS_DISTINGUISHABLE and own.low > 0 and diff.low > 0
    return found, words, f"{b}'s lookup heads ablated in {b}, paired by init seed"


def gap_share(tables, a: str, b: str, confidence: float = 0.95):
    g = tables.get("circuit_gap")
    control = f"as many random control heads of {a}, ablated the same way"
    if g is None or g.empty:
        return None, "the circuit stage has not run", control
    g = g[g["run"].astype(str).str.endswith("*") & (g["metric"] == "logit_diff") & (g["method"] == "mean")]
    g = g[(g["recipe"].astype(str) == a) & (g["reference"].astype(str) == b)]
    chosen, rand = g[g["heads_set"] == "chosen"], g[g["heads_set"] == "control"]
    if chosen.empty:
        return None, f"no gap share of {a} over {b}", control
    r = chosen.iloc[0]
    gap = f"{a} - {b} = {_iv(r['gap'], r['gap_low'], r['gap_high'])} logits on the circuit items"
    if bool(r["withheld"]) or not np.isfinite(float(r["value"])):
        return False, f"{gap}: the gap's interval includes 0, no share to split", control
    words = (
        f"of the gap {gap}, mean-ablating {a}'s lookup heads in both models removes "
        f"{_iv(r['value'], r['ci_low'], r['ci_high'])} ({int(r['n_seeds'])} seeds)"
    )
    c_high = np.nan
    if not rand.empty and np.isfinite(float(rand.iloc[0]["value"])):
        c = rand.iloc[0]
        c_high = float(c["ci_high"])
        words += f"; the control heads remove {_iv(c['value'], c['ci_low'], c['ci_high'])}"
    found = (
        int(r["n_seeds"]) >= MIN_SEEDS_DISTINGUISHABLE
        and float(r["value"]) >= MOST
        and float(r["ci_low"]) > 0
        and (not np.isfinite(c_high) or float(r["ci_low"]) > c_high)
    )
    return found, words, control


def cross_model(tables, a: str, b: str, confidence: float = 0.95):
    cm = tables.get("cross_model")
    control = "the same component patched between two runs of one recipe"
    if cm is None or cm.empty:
        return None, "no cross-model patching", control
    rows = cm[cm["metric"] == "cross_model"]
    # both directions split the same gap: a's component into b (does it suffice?) and b's into a (does a need it?)
    ways = {f"{a}->{b}": f"{a}'s, patched into {b}", f"{b}->{a}": f"{b}'s, patched into {a}"}
    pair = rows[rows["recipe"].astype(str).isin(list(ways))]
    if pair.empty:
        return None, f"{a} and {b} were not patched into each other", control
    aim = tables.get("aim")
    task = str(pair["task"].iloc[0])
    level = int(aim["difficulty"].iloc[0]) if aim is not None and "difficulty" in aim else None
    gap = recipe_gap(tables.get("comparison"), a, b, task, level)
    where = f"{task} level {level}" if level is not None else task
    if not has_gap(gap):
        return False, f"no distinguishable gap between {a} and {b} at the patched items ({where}) to split", control
    cell = patched_cell(pair)
    best, best_mean = None, -np.inf
    for (label, c), g in pair.groupby([pair["recipe"].astype(str), cell]):
        v = g["value"].to_numpy(float)
        if len(v) < 2 or not np.isfinite(v).all():
            continue
        iv = seed_t_interval(v, confidence)
        if STABLE_SHARE[0] <= iv.value <= STABLE_SHARE[1] and iv.value > best_mean:
            best, best_mean = (label, c, g, iv), iv.value
    if best is None:
        return False, f"no component's share of the {a} - {b} gap ({where}) is stable over 2 or more seeds", control
    label, c, g, iv = best
    r = g.iloc[0]
    name = f"{r['site']} L{r['layer']}" + (f" H{int(r['head'])}" if pd.notna(r["head"]) else "") + f" @{r['pos_label']}"
    receiver = b if label == f"{a}->{b}" else a
    g = g.sort_values("seed")
    null = null_shares(cm, g, receiver)
    words = (
        f"of the {a} - {b} gap ({where}, "
        f"{_iv(gap['estimate'], gap['ci_low_corrected'], gap['ci_high_corrected'])} logits) {name} ({ways[label]}) "
        f"carries the most: {_iv(iv.value, iv.low, iv.high)} over {len(g)} seeds"
    )
    paired = null.notna().to_numpy()
    beats = None
    if paired.any():
        words += (
            f"; another model of {receiver} patched there gives {_seeds_text(null[paired])} of that gap "
            "(the same-recipe null)"
        )
    if paired.sum() >= MIN_SEEDS_DISTINGUISHABLE:
        beats = seed_t_interval(g["value"].to_numpy(float)[paired] - null[paired].to_numpy(float), confidence)
        words += f"; the component minus the null: {_iv(beats.value, beats.low, beats.high)}"
    elif not set(NULL_ENDPOINTS) <= set(cm.columns):
        words += (
            ": no same-recipe null to beat (cross_model.parquet holds no unpatched metrics to read a null on this "
            "pair's gap; rerun the patch stage)"
        )
    else:  # a share no null can be set against might be what any foreign activation does there
        words += (
            f": no same-recipe null to beat in {MIN_SEEDS_DISTINGUISHABLE} seeds (the job patches another run of "
            f"{receiver} into each of its runs where {receiver} has 2 or more seeds or data seeds)"
        )
    found = (
        len(g) >= MIN_SEEDS_DISTINGUISHABLE and iv.value >= MOST and iv.low > 0 and beats is not None and beats.low > 0
    )
    return found, words, control


def null_shares(cm: pd.DataFrame, rows: pd.DataFrame, receiver: str) -> pd.Series:
    """The same-recipe null of each cross-model share in ``rows`` (metric ``cross_model``, pairs patched into
    runs of ``receiver``), read on that row's own scale.

    The job patches another model of each receiving recipe (a data-order twin, or the next init seed: see
    :func:`codetransfer.pipeline.cross_model_pairs`) into each of its runs at the same cells. That model has no
    recipe difference to carry, so what it moves is what a foreign activation does there. Its share of the
    *tested* pair's gap is ``(null patched - target) / (source - target)``, with ``source`` and ``target`` the
    tested pair's unpatched metrics on the same items (columns ``source_metric``, ``target_metric``) and
    ``null patched`` the null pair's raw ``logit_diff`` at the cell. With several null models for one run, the
    largest share. NaN where the run has no null pair, or where the table holds no unpatched metrics (written
    before they were stored). A null read on its own pair's gap divides by about 0 (two runs of one recipe);
    on the tested pair's gap it is a number the tested share can be set against, seed by seed."""
    out = pd.Series(np.nan, index=rows.index, dtype=float)
    if rows.empty or not set(NULL_ENDPOINTS) <= set(cm.columns):
        return out
    raw = cm[(cm["metric"] == "logit_diff") & (cm["recipe"].astype(str) == f"{receiver}->{receiver}")]
    if raw.empty:
        return out
    nulls = pd.DataFrame(
        {"seed": raw["seed"].astype(int).to_numpy(), "cell": patched_cell(raw).to_numpy(),
         "patched": raw["value"].astype(float).to_numpy()}
    )  # fmt: skip
    tested = pd.DataFrame(
        {"i": rows.index, "seed": rows["seed"].astype(int).to_numpy(), "cell": patched_cell(rows).to_numpy(),
         "source": rows["source_metric"].astype(float).to_numpy(),
         "target": rows["target_metric"].astype(float).to_numpy()}
    )  # fmt: skip
    m = tested.merge(nulls, on=["seed", "cell"])
    if m.empty:
        return out
    share = (m["patched"] - m["target"]) / (m["source"] - m["target"])
    best = share.groupby(m["i"]).max()
    out.loc[best.index] = best.to_numpy()
    return out


def probing(tables, a: str, b: str, confidence: float = 0.95):
    d = tables.get("decodability")
    control = "the random-init twin of each run"
    if d is None or d.empty:
        return None, "the probe stage has not run", control
    pooled = d[d["run"].astype(str).str.endswith("*")]
    ra, rb = pooled[pooled["recipe"].astype(str) == a], pooled[pooled["recipe"].astype(str) == b]
    if ra.empty:
        return None, f"no seed-level decodability rows for {a}", control
    keys = ["task", "family", "site", "layer"]
    in_b = set(map(tuple, rb.loc[rb["decodable"].astype(bool), keys].astype(str).to_numpy()))
    only = ra[ra["decodable"].astype(bool) & ~ra[keys].astype(str).apply(tuple, axis=1).isin(in_b)]
    best = ra.loc[ra["estimate"].astype(float).idxmax()]
    if only.empty:
        return (
            False,
            (
                f"nothing decodable in {a} beyond {b}; best: {best['family']} layer {int(best['layer'])}, trained - twin "
                f"{_iv(best['estimate'], best['ci_low'], best['ci_high'])} ({int(best['n_seeds'])} seeds)"
            ),
            control,
        )
    r = only.loc[only["estimate"].astype(float).idxmax()]
    return (
        True,
        (
            f"{r['family']} layer {int(r['layer'])} decodable in {a} and not in {b}: trained - twin "
            f"{_iv(r['estimate'], r['ci_low'], r['ci_high'])} ({int(r['n_seeds'])} seeds)"
        ),
        control,
    )


def similarity(tables, a: str, b: str, confidence: float = 0.95):
    cka = tables.get("cka")
    control = "the baseline's null CKA (its data-order twins, else its other init seeds)"
    if cka is None or cka.empty:
        return None, "the circuit stage compared no runs", control
    pair = cka[(cka["recipe_a"].astype(str) == a) & (cka["recipe_b"].astype(str) == b)]
    null = cka[cka["comparison"] == "seed_null"]
    if pair.empty or null.empty:
        return None, f"no CKA of {a} against {b}" if pair.empty else "no seed-vs-seed pairs", control
    # the baseline's null pairs: its data-order twins where the grid has data seeds, else its other init seeds
    twins = all(is_data_order_pair(str(x), str(y)) for x, y in zip(null["run_a"], null["run_b"]))
    kind = "data-order" if twins else "seed-vs-seed"
    words = []
    for layer, g in pair.groupby("layer"):
        n = null[null["layer"] == layer]["value"]
        if len(g) >= MIN_SEEDS_DISTINGUISHABLE and len(n) and g["value"].max() < n.min():
            return (
                True,
                (
                    f"layer {int(layer)}: CKA {g['value'].min():.2f}-{g['value'].max():.2f} in every seed, below every "
                    f"{kind} CKA ({n.min():.2f}-{n.max():.2f})"
                ),
                control,
            )
        words.append(f"layer {int(layer)} {g['value'].min():.2f}-{g['value'].max():.2f} (null {n.min():.2f}+)")
    return False, "no layer below the seed null: " + "; ".join(words), control


JUDGED = ("evaluation", "attention", "ablation", "gap share", "cross-model patching")
"""The instruments with a planted answer to find (planted arm against each control arm)."""
NULL_JUDGED = ("evaluation", "attention", "ablation")
"""The instruments that must find nothing between the null pair (scrambled against no warm-up)."""

INSTRUMENTS = {
    "evaluation": evaluation,
    "attention": attention,
    "ablation": ablation,
    "gap share": gap_share,
    "cross-model patching": cross_model,
    "probing": probing,
    "similarity": similarity,
}
"""Each instrument's check (see the module docstring), in the order the verdict table lists them."""


def _row(instrument: str, a: str, b: str, expected, tables, confidence: float) -> dict:
    found, evidence, control = INSTRUMENTS[instrument](tables, a, b, confidence)
    if found is None:
        verdict = "not run"
    elif expected is True:
        verdict = "found" if found else "missed"
    elif expected is False:
        verdict = "false positive" if found else "as expected: nothing"
    else:
        verdict = "found" if found else "nothing found"
    return dict(
        instrument=instrument, recipe=a, reference=b, expected=expected, found=found, verdict=verdict,
        evidence=evidence, control=control,
    )  # fmt: skip


def verdicts(tables: dict, recipes, baseline: str, controls: dict | None = None, planted: Planted | None = None):
    """The verdict table (:data:`COLUMNS`): with a ``planted`` answer, each instrument on the planted arm against
    each control arm (expected: found; probing and similarity: no known answer) and the null pair (expected:
    nothing); otherwise each instrument on every recipe against the ``baseline`` and its ``controls`` entry
    (``compare_with``), with no expectation. ``tables``: :func:`read_tables`. The seed-level intervals computed
    here (attention, ablation, cross-model patching) are Bonferroni-corrected over the pairs judged (95% jointly);
    evaluation reads the comparison table's Holm-corrected intervals."""
    if planted is not None:
        pairs = [(planted.arm, b, True) for b in planted.controls] + ([(*planted.null, False)] if planted.null else [])
    else:
        pairs = [
            (a, b, None)
            for a in recipes
            if a != baseline
            for b in dict.fromkeys([baseline, (controls or {}).get(a) or baseline])
        ]
    # the seed intervals these verdicts compute are Bonferroni-corrected over the pairs judged
    confidence = 1 - 0.05 / max(1, len(pairs))
    # cross-model patching runs for the patched pairs only: a pair never patched is left out, not listed as "not run"
    cm = tables.get("cross_model")
    patched = None if cm is None or cm.empty else set(cm["recipe"].astype(str))
    rows = []
    for a, b, planted_pair in pairs:
        for name in INSTRUMENTS:
            if name == "cross-model patching" and patched is not None and not {f"{a}->{b}", f"{b}->{a}"} & patched:
                continue
            if planted_pair is None:
                expected = None
            elif planted_pair:
                expected = True if name in JUDGED else None
            else:
                expected = False if name in NULL_JUDGED else None
            if expected is False or planted_pair is not False:
                rows.append(_row(name, a, b, expected, tables, confidence))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def verdict_words(table: pd.DataFrame, planted: Planted | None) -> str:
    """One sentence: which instruments found the planted answer (or found anything, without one)."""
    if table.empty:
        return "No instrument has run."
    if planted is not None:
        judged = table[(table["expected"] == True) & (table["verdict"] != "not run")]  # noqa: E712 (object column)
        null = table[table["expected"] == False]  # noqa: E712
        fp = sorted(set(null.loc[null["verdict"] == "false positive", "instrument"]))
        hit, part, miss = [], [], []
        for instrument, g in judged.groupby("instrument", sort=False):
            k = int((g["verdict"] == "found").sum())
            (hit if k == len(g) else miss if k == 0 else part).append(
                instrument if k in (0, len(g)) else f"{instrument} ({k} of {len(g)} control arms)"
            )
        text = (
            f"Planted answer ({planted.arm} has the copying circuit; {', '.join(planted.controls)} "
            f"{'does' if len(planted.controls) == 1 else 'do'} not): "
            + (f"found by {', '.join(hit)}" if hit else "found by no instrument")
            + (f"; against some control arms only by {', '.join(part)}" if part else "")
            + (f"; missed by {', '.join(miss)}" if miss else "")
            + "."
        )
        if planted.null is not None and not null.empty:
            text += f" Null ({planted.null[0]} vs {planted.null[1]}): " + (
                f"false positive from {', '.join(fp)}." if fp else "no instrument reports a difference."
            )
        return text
    hit = table[table["verdict"] == "found"]
    if hit.empty:
        return "No instrument found a difference that beats its control."
    return (
        "Beats its control: "
        + "; ".join(
            f"{r.instrument} ({r.recipe} vs {r.reference})" for r in hit.drop_duplicates(["instrument"]).itertuples()
        )
        + "."
    )
