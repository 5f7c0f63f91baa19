"""Grid-level analyses: every run of a grid evaluated, patched and scored for attention, as tables.

These functions take the runs of a grid (``trained.RunInfo`` from ``trained.find_runs``) and load each
model themselves (``load``, by default ``trained.load_run``), run the per-run analyses of
:mod:`codetransfer.analysis.evaluate`, :mod:`~codetransfer.analysis.learning`,
:mod:`~codetransfer.analysis.patching` and :mod:`~codetransfer.analysis.attention`, and return tidy
tables keyed by the file name they are written to (``{"eval.parquet": DataFrame, ...}``). Writing
is the caller's business (:func:`codetransfer.artifacts.write_tables`): the ``codetransfer eval |
patch | attention`` commands and the main job (:mod:`codetransfer.pipeline`) call them.

* :func:`evaluate_grid`: task scores and held-out losses (``eval.parquet``, ``summary.csv``,
  ``scores.parquet``, ``losses.parquet``), and with ``checkpoints`` the learning curves of every saved
  checkpoint (``learning.parquet``, ``learning_scores.parquet``);
* :func:`patch_grid`: activation patching within each run, across renderings and across models
  (``patching.parquet``, ``cross_rendering.parquet``, ``cross_model.parquet``); the work is a fixed list
  of :class:`PatchUnit` (:func:`plan_patch_units`) that :func:`patch_shard` computes one block at a time
  into parquet parts and :func:`merge_patch_parts` joins into the same tables;
* :func:`attention_grid`: head scores (``attention.parquet``) and, with ``checkpoints``, head scores
  over training (``attention_over_training.parquet``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from codetransfer import artifacts
from codetransfer.analysis import patching as P
from codetransfer.analysis import schema, sites
from codetransfer.analysis.compare import compare_recipes, data_order_label, headline_comparison
from codetransfer.analysis.attention import score_checkpoints, score_run, score_runs as attention_score_runs
from codetransfer.analysis.evaluate import (
    SUMMARY_COLUMNS,
    check_fits_context,
    fit_to_context,
    heldout_scores,
    make_items,
    relative_change_summary,
    score_runs,
    tidy_table,
)
from codetransfer.analysis.learning import learning_items, learning_table_from_scores, tokens_per_step
from codetransfer.errors import CodetransferError, did_you_mean
from codetransfer.tasks import get_task, task_names
from codetransfer.trained import LoadedRun, check_same_grid, load_run
from codetransfer.trained.loading import check_model_folder, folder_context_length, load_bridge
from codetransfer.trained.checks import read_table
from codetransfer.trained.runs import run_checkpoints
from codetransfer.trained.tokenizer import load_tokenizer

Log = Callable[[str], None]

DEFAULT_BASELINE = "text-only"
"""The recipe the relative-change summary compares with when none is given."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _n_ctx(info) -> int:
    """The run's context length, whatever its config calls it (GPT-2: ``n_positions``)."""
    return folder_context_length(info.path)


def items_up_to(family, n: int, seed: int, max_difficulty: int | None):
    """``n`` items of a task family, spread evenly over its levels <= ``max_difficulty`` (all levels when
    None); used to keep prompts inside a small model's context."""
    if max_difficulty is None:
        return family.generate(n, seed)
    levels = [d for d in family.difficulties if d <= max_difficulty]
    if not levels:
        raise CodetransferError(
            f"--max-difficulty: {family.name} has no level <= {max_difficulty} "
            f"(levels {min(family.difficulties)}-{max(family.difficulties)})"
        )
    per = -(-n // len(levels))
    return [it for d in levels for it in family.generate(per, seed, difficulty=d)][:n]


def hardest_fitting_level(task: str, run, n_items: int, seed: int, max_difficulty: int) -> int:
    """The hardest level <= ``max_difficulty`` at which the ``n_items`` items that :func:`items_up_to` draws
    (and their twins in the other rendering) all fit ``run``'s context; refuses when none does."""
    n_ctx = _n_ctx(run)
    family = get_task(task)
    tokenizer = load_tokenizer(run.path)
    best = None
    for d in sorted(d for d in family.difficulties if d <= max_difficulty):
        generated = items_up_to(family, n_items, seed, d)
        items = {task: generated + [it.twin for it in generated if it.twin is not None]}
        kept, _ = fit_to_context(items, tokenizer, n_ctx)
        if len(kept.get(task, [])) < len(items[task]):
            break
        best = d
    if best is None:
        raise CodetransferError(f"{task}: no difficulty level fits the models' context n_ctx={n_ctx}")
    return best


def fitting_max_difficulty(tasks: Sequence[str], runs: Sequence, n_items: int, seed: int, log: Log = _stderr) -> int:
    """The hardest level at which the ``n_items`` items of every task (:func:`items_up_to`, with their twins)
    fit the context of every run: what the analysis verbs use when no ``--max-difficulty`` is given. Says
    which levels it leaves out."""
    best = None
    for task in tasks:
        top = max(get_task(task).difficulties)
        seen: dict = {}
        for run in runs:
            tokenizer = Path(run.path) / "tokenizer.json"
            content = hashlib.sha256(tokenizer.read_bytes()).hexdigest() if tokenizer.is_file() else str(tokenizer)
            key = (_n_ctx(run), content)
            if key not in seen:  # the runs of one grid share their context and tokenizer: measured (and said) once
                seen[key] = level = hardest_fitting_level(task, run, n_items, seed, top)
                if level < top:
                    log(f"note: {task}: levels above {level} left out (their prompts exceed n_ctx={key[0]})")
            best = seen[key] if best is None else min(best, seen[key])
    if best is None:
        raise CodetransferError("tasks: expected at least one task")
    return best


# ================================================================================================
# evaluation and learning curves


def eval_tables(
    scores: pd.DataFrame, losses: pd.DataFrame | None, baseline: str, n_boot: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(eval table, summary)`` from per-item ``scores`` and per-window held-out ``losses`` (or None) of runs.

    The eval table holds per-run rows and per-recipe rows (``tidy_table``, bootstrap intervals over
    items); the summary the relative change of every recipe vs ``baseline`` per category (empty when no
    run has the baseline recipe). The main job calls it on the scores of per-run units, so that one
    changed recipe re-scores one run and only this cheap step sees every run.
    """
    recipes = set(scores["recipe"])
    tables = [tidy_table(scores, n_boot, seed=seed)]
    summaries = []
    if baseline in recipes:
        summaries.append(relative_change_summary(scores, baseline, "accuracy", n_boot, seed=seed))
    if losses is not None and len(losses):
        tables.append(tidy_table(losses, n_boot, seed=seed))
        if baseline in recipes:
            summaries.append(relative_change_summary(losses, baseline, "loss", n_boot, seed=seed))
    table = pd.concat(tables, ignore_index=True)
    table["seed"] = table["seed"].astype("Int64")
    summary = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    return table, summary


def comparison_table(
    scores: pd.DataFrame,
    baseline: str,
    n_boot: int,
    seed: int,
    controls: Mapping[str, str] | None = None,
    data_seeds: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """Seed-paired comparisons of every recipe with ``baseline`` (:mod:`codetransfer.analysis.compare`), and of
    each recipe of ``controls`` (``{recipe: its control recipe}``, the grid's ``compare_with``) with its control
    (rows whose ``baseline`` column names the control).

    Rows per recipe x category x task x difficulty, for the logit difference (the primary metric:
    graded, less variance) and for accuracy; plus per category the headline rows pooled over the levels
    where the baseline is above chance (``pooled`` true, ``pooled_levels`` naming them). Each row has its
    hierarchical interval, the two-level p-value, Holm's correction over the rows of its block, the
    minimum detectable effect, ``n_seeds``, ``n_items`` and ``distinguishable`` (never with fewer than 3
    seeds). Empty when no run has the baseline recipe.

    ``data_seeds``: ``{run: data seed}`` of the runs trained in another data order than their init seed's own
    (grid field ``data_seeds``; ``RunInfo.data_seed``). The recipe comparisons pair the runs of the init seeds'
    own orders only, as without data seeds; the baseline's runs in data order ``k`` then give the *data-order
    null*: rows whose ``recipe`` is :func:`data_order_label` (``"<baseline> (data order k)"``), compared with the
    baseline and paired by init seed, in a block of their own (their own Holm correction). A null row is what two
    runs of one recipe, one initialisation and one shared base differ by when only the order of the later rows
    differs: the noise a recipe row's difference is read against. Without data seeds there is no null row (the
    recipe rows' seed-paired intervals span the init seeds' spread).
    """
    orders = {str(k): int(v) for k, v in (data_seeds or {}).items() if v}
    null_scores = None
    if orders and "run" in scores.columns:
        k = scores["run"].astype(str).map(orders).fillna(0).astype(int)
        null = (k > 0) & (scores["recipe"].astype(str) == baseline)
        null_scores = scores[null].copy()
        null_scores["recipe"] = [data_order_label(baseline, int(v)) for v in k[null]]
        scores = scores[k == 0]
    scored = set(scores["recipe"])
    if baseline not in scored:
        return pd.DataFrame()
    pairs = [(baseline, None, scores)]  # (compared with, the recipes compared (None: all others), their scores)
    for control in sorted({c for r, c in (controls or {}).items() if c and c != baseline and r in scored}):
        if control in scored:
            pairs.append((control, sorted(r for r, c in controls.items() if c == control and r in scored), scores))
    if null_scores is not None and len(null_scores):
        labels = sorted(set(null_scores["recipe"]), key=lambda r: int(r.rsplit(" ", 1)[1].rstrip(")")))
        own = scores[scores["recipe"].astype(str) == baseline]
        pairs.append((baseline, labels, pd.concat([own, null_scores], ignore_index=True)))
    blocks = []
    for against, recipes, table in pairs:
        for metric in ("logit_diff", "correct"):
            per_level = compare_recipes(
                table,
                against,
                metric,
                ("category", "task", "difficulty"),
                recipes=recipes,
                n_resamples=n_boot,
                seed=seed,
            )
            per_level["pooled"], per_level["pooled_levels"] = False, ""
            blocks.append(per_level)
            blocks.append(
                headline_comparison(
                    table,
                    against,
                    metric,
                    ("category",),
                    ("task", "difficulty"),
                    recipes=recipes,
                    n_resamples=n_boot,
                    seed=seed,
                )
            )
    blocks = [b for b in blocks if len(b)]
    if not blocks:
        return pd.DataFrame()
    table = pd.concat(blocks, ignore_index=True)
    # a pooled row has no one difficulty (its levels are in pooled_levels): <NA>, so the column stays integer
    table["difficulty"] = pd.to_numeric(table["difficulty"], errors="coerce").astype("Int64")
    return table


def heldout_arrays(runs_dir: Path, infos) -> dict[str, Path]:
    """``{source: path}`` of the grid's held-out token arrays (``data/*.heldout.npy`` in ``runs_dir``, its
    parent, or the grid folder of the first run), or ``{}`` when the grid's data folder is not found. A data
    folder counts only when its manifest names the runs' tokenizer (``tokenizer_sha256``): token arrays of
    another tokenizer (a neighbouring grid's, next to checkpoints of a model set) would be scored as noise."""
    tokenizers = {i.record.get("tokenizer_sha256") for i in infos}
    if len(tokenizers) != 1 or None in tokenizers:  # a model set, or runs that do not name their tokenizer
        return {}
    for root in (runs_dir, runs_dir.parent, Path(infos[0].path).parent.parent):
        data = root / "data"
        if data.is_dir():
            try:
                manifest = json.loads((data / "manifest.json").read_text())
            except (OSError, ValueError):
                continue
            if manifest.get("tokenizer_sha256") not in tokenizers:
                continue
            found = {p.name[: -len(".heldout.npy")]: p for p in sorted(data.glob("*.heldout.npy"))}
            if found:
                return found
    return {}


def source_categories(heldout: Mapping[str, Path]) -> dict[str, str]:
    """``{source: 'code'|'text'}`` from the grid's data manifest (written by the train stage)."""
    if not heldout:
        return {}
    manifest = next(iter(heldout.values())).parent / "manifest.json"
    if not manifest.is_file():
        return {}
    sources = json.loads(manifest.read_text()).get("sources", {})
    return {name: info["category"] for name, info in sources.items() if "category" in info}


def checkpoint_curves(infos, runs_dir, log: Log = _stderr) -> dict[str, list[tuple[int, Path]]]:
    """``{run: [(step, folder), ...]}`` for the runs that kept intermediate checkpoints (their final model
    last); a one-line note for each run without; a one-line error when no run has any or when a
    checkpoint is damaged (checked here, before any model is scored)."""
    out, without = {}, []
    for info in infos:
        ckpts = list(run_checkpoints(info).items())
        if len(ckpts) > 1:
            for _, folder in ckpts:
                check_model_folder(folder)
            out[info.name] = ckpts
        else:
            without.append(info.name)
    if not out:
        raise CodetransferError(
            f"--checkpoints: no run in {runs_dir} kept intermediate checkpoints (RUN/checkpoints/step-N/); "
            "set the grid field train.snapshot_every > 0 (e.g. 250) and train the grid into a new --out folder"
        )
    for name in without:
        log(
            f"note: run {name} has no intermediate checkpoints (trained with train.snapshot_every = 0); "
            "left out of learning.parquet"
        )
    return out


def curve_items(
    tasks, n_items: int, seed: int, max_difficulty: int, tokenizer, n_ctx: int, fit_context: bool, log: Log = _stderr
) -> dict:
    """The learning curves' items (``learning_items``), fitted to the context like the evaluation's."""
    items = learning_items(tasks, n_items, seed, max_difficulty)
    if not fit_context:
        check_fits_context(
            items,
            tokenizer,
            n_ctx,
            hint="leave out --no-fit-context to drop those levels, or pass a lower --curve-max-difficulty or --tasks without them",
        )
        return items
    items, dropped = fit_to_context(items, tokenizer, n_ctx)
    for task, levels in dropped.items():
        log(
            f"note: learning curves: {task}: difficulty {', '.join(map(str, levels))} dropped "
            f"(longer than n_ctx={n_ctx})"
        )
    if not items:
        raise CodetransferError(f"--curve-max-difficulty: no task has curve items that fit the context n_ctx={n_ctx}")
    return items


def learning_scores(infos, curves, items, batch_size: int, device, log: Log | None = None) -> pd.DataFrame:
    """Per-item scores (``score_runs`` rows plus ``step`` and ``tokens``) of every checkpoint in ``curves``.

    Each checkpoint folder is loaded as a fresh bridge and scored once; a checkpoint of shared phases
    that several branched runs borrow is scored once and listed for each.
    """
    cache, frames = {}, []
    for info in infos:
        if info.name not in curves:
            continue
        per_step = tokens_per_step(info.record)
        for step, folder in curves[info.name]:
            where = Path(folder).resolve()
            if where not in cache:
                if log is not None:
                    log(f"learning curve of run {info.name}: step {step}")
                bridge, tokenizer = load_bridge(folder, device=device)
                cache[where] = score_runs([LoadedRun(bridge, tokenizer, info)], items, batch_size, device)
                del bridge
            frames.append(
                cache[where].assign(
                    run=info.name, recipe=info.recipe, seed=info.seed, step=int(step), tokens=int(step) * per_step
                )
            )
    return pd.concat(frames, ignore_index=True)


def evaluate_grid(
    runs: Sequence,
    *,
    runs_dir: str | Path | None = None,
    tasks: Sequence[str] | None = None,
    n_items: int = 200,
    seed: int = 0,
    baseline: str = DEFAULT_BASELINE,
    batch_size: int = 32,
    n_boot: int = 2000,
    heldout_windows: int = 64,
    max_difficulty: int | None = None,
    fit_context: bool = False,
    checkpoints: bool = False,
    curve_items_per_task: int = 60,
    curve_max_difficulty: int = 0,
    device: str = "cpu",
    load: Callable = load_run,
    log: Log = _stderr,
) -> dict[str, pd.DataFrame]:
    """Score every run on every task (items generated once, seeded, shared by all runs) and on the grid's
    held-out text and code; with ``checkpoints``, every saved checkpoint on the easiest levels.

    Args:
        runs: complete runs of one grid (``trained.find_runs``).
        runs_dir: the folder they were found in; the grid's ``data/`` (held-out arrays) is looked for
            there, in its parent and in the first run's grid folder (default: the first run's folder).
        tasks: task families (default: all), or ``{family: items}`` to score exactly those items.
        n_items, seed, max_difficulty: items per task, generator and bootstrap seed, hardest level.
        baseline: recipe of the relative-change summary (no summary when no run has it).
        n_boot: bootstrap resamples of every interval.
        heldout_windows: context windows per held-out source (0: no held-out loss).
        fit_context: drop the levels whose items are longer than the models' context (else refuse).
        checkpoints, curve_items_per_task, curve_max_difficulty: the learning curves' settings.
        load: ``(info, device=...) -> LoadedRun``.

    Returns:
        ``{"eval.parquet", "summary.csv", "scores.parquet"}`` plus ``"losses.parquet"`` when the grid's
        held-out data is found and ``"learning.parquet"``, ``"learning_scores.parquet"`` with checkpoints.
    """
    infos = list(runs)
    if not infos:
        raise CodetransferError("runs: expected at least one complete run; train them with 'codetransfer train'")
    check_same_grid(infos)
    runs_dir = Path(runs_dir) if runs_dir is not None else Path(infos[0].path)
    recipes = sorted({i.recipe for i in infos})
    if not isinstance(tasks, Mapping):  # names (default: all); a mapping of name to items is used as given
        tasks = list(tasks) if tasks else list(task_names())
    items = make_items(tasks, n_items, seed, max_difficulty)
    heldout = heldout_arrays(runs_dir, infos) if heldout_windows > 0 else {}
    curves = checkpoint_curves(infos, runs_dir, log) if checkpoints else {}

    # Runs of one grid share shape and tokenizer (check_same_grid): check every item before loading a model.
    n_ctx = _n_ctx(infos[0])
    tokenizer = load_tokenizer(infos[0].path)
    if fit_context:
        items, dropped = fit_to_context(items, tokenizer, n_ctx)
        for task, levels in dropped.items():
            log(f"note: {task}: difficulty {', '.join(map(str, levels))} dropped (longer than n_ctx={n_ctx})")
        if not items:
            raise CodetransferError(f"--fit-context: no task has items that fit the context n_ctx={n_ctx}")
    else:
        check_fits_context(
            items,
            tokenizer,
            n_ctx,
            hint="leave out --no-fit-context to drop those levels, or pass --max-difficulty D or --tasks without them",
        )
    if curves:
        c_items = curve_items(
            tasks, curve_items_per_task, seed, curve_max_difficulty, tokenizer, n_ctx, fit_context, log
        )

    scores, losses = [], []
    for info in infos:
        loaded = load(info, device=device)
        scores.append(score_runs([loaded], items, batch_size, device, progress=log))
        if heldout:
            log(f"held-out loss of run {info.name} on {', '.join(heldout)}")
            ls = heldout_scores(
                loaded.bridge,
                heldout,
                batch_size=8,
                device=device,
                max_windows=heldout_windows,
                categories=source_categories(heldout),
            )
            losses.append(ls.assign(run=info.name, recipe=info.recipe, seed=info.seed))
        del loaded
    scores = pd.concat(scores, ignore_index=True)
    losses = pd.concat(losses, ignore_index=True) if losses else None
    if baseline not in recipes:
        log(f"note: no '{baseline}' runs, so no relative-change summary (pass --baseline RECIPE)")
    table, summary = eval_tables(scores, losses, baseline, n_boot, seed)
    tables = {"eval.parquet": table, "summary.csv": summary, "scores.parquet": scores}
    if losses is not None:
        tables["losses.parquet"] = losses
    if curves:
        tables["learning_scores.parquet"] = learning_scores(infos, curves, c_items, batch_size, device, log)
        tables["learning.parquet"] = learning_table_from_scores(tables["learning_scores.parquet"], n_boot, seed=seed)
    return tables


# ================================================================================================
# activation patching

PATCH_PARTS = Path("parts") / "patch"
"""Where sharded patching parts go, relative to the results folder."""
PART_META = b"codetransfer"
"""Parquet schema-metadata key holding a patching part's ``{"settings": hash, "unit": id, "table": name}``."""


def patch_sites(names: Sequence[str], flag: str = "--sites") -> list[str]:
    """Site kinds (aliases allowed: ``attn``, ``mlp``, ``head``) -> the distinct kinds patched, in order
    (:func:`codetransfer.analysis.sites.parse_kinds`; a bare ``resid`` is refused as ambiguous)."""
    return sites.parse_kinds([s for s in names if s.strip()], allowed=sites.PATCH_KINDS, where=flag)


@dataclass(frozen=True)
class PatchSettings:
    """Everything that decides a patching sweep's rows (not the device)."""

    task: str
    """Task family whose clean/counterfactual pairs are patched."""
    sites: tuple[str, ...] = ("resid_pre", "attn_out", "mlp_out", "head_out")
    """Sites patched (names as :func:`patch_sites` returns them)."""
    n_items: int = 64
    """Clean/counterfactual pairs generated."""
    difficulty: int | None = None
    """Only items of this difficulty (None: every level)."""
    seed: int = 0
    """Item generator and bootstrap seed."""
    n_boot: int = 1000
    """Bootstrap resamples of the intervals over items."""
    positions: str = "named"
    """``named`` (span keys shared by every item, and ``last``) or ``absolute`` (token indices)."""
    noising: bool = False
    """Also run noising sweeps (clean run, corrupted patches)."""
    attribution: bool = False
    """Also screen every head/MLP node by attribution patching, with its rank agreement with exact patching."""
    cross_rendering: bool = False
    """Also patch the code rendering into the text rendering at aligned positions, with the token-matched
    control (the counterfactual world's code rendering; see
    :func:`~codetransfer.analysis.patching.cross_rendering_patching`)."""
    cross_model: tuple[str, str] | None = None
    """``(A, B)``: also patch run A's activations into run B."""
    cross_model_only: bool = False
    """With ``cross_model``: only the cross-model table (only runs A and B are loaded)."""
    max_rows: int = 256
    """Rows per forward pass."""


@dataclass(frozen=True)
class PatchUnit:
    """One piece of the patching work: its own part table when the sweep is sharded."""

    kind: str
    """``within`` (a run's sweeps of one site), ``attribution`` (a run's attribution screen),
    ``rendering`` (a run's cross-rendering patching of one site) or ``cross`` (cross-model, one site)."""
    run: str
    """The run's name (``A->B`` for cross-model units)."""
    site: str
    """The site (``""`` for attribution)."""

    @property
    def table(self) -> str:
        """The final table the unit's rows go to."""
        return {
            "within": "patching.parquet",
            "attribution": "patching.parquet",
            "rendering": "cross_rendering.parquet",
            "cross": "cross_model.parquet",
        }[self.kind]

    @property
    def id(self) -> str:
        """A file-name-safe identifier, unique within one sweep."""
        return f"{self.table.removesuffix('.parquet')}__{artifacts.safe_name(self.run)}__{self.site or 'attribution'}"


def plan_patch_units(
    run_names: Sequence[str],
    sites: Sequence[str],
    *,
    attribution: bool = False,
    cross_rendering: bool = False,
    cross_model: tuple[str, str] | None = None,
    cross_model_only: bool = False,
) -> list[PatchUnit]:
    """The sweep's units in their fixed order: each run (in the given, sorted order) with its sites, its
    attribution screen and its cross-rendering sites, then the cross-model sites. This is also the
    row order of the final tables; shard ``i/n`` takes the ``i``-th contiguous block, so a shard
    loads each of its runs once."""
    units = []
    if not cross_model_only:
        for name in run_names:
            units += [PatchUnit("within", name, s) for s in sites]
            if attribution:
                units.append(PatchUnit("attribution", name, ""))
            if cross_rendering:
                units += [PatchUnit("rendering", name, s) for s in sites]
    if cross_model:
        units += [PatchUnit("cross", f"{cross_model[0]}->{cross_model[1]}", s) for s in sites]
    ids = [u.id for u in units]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise CodetransferError(f"--runs: two runs map to the same part name {dup!r}; rename one of the run folders")
    return units


class _PatchWorker:
    """Computes units, keeping the last two loaded runs (and a run's clean/corrupted caches)."""

    def __init__(self, settings: PatchSettings, by_name, batch, rbatch, device, load, log):
        self.s, self.by_name, self.batch, self.rbatch, self.device = settings, by_name, batch, rbatch, device
        self.load, self.log = load, log
        self.positions = batch.positions if settings.positions == "named" else None
        self.directions = ["denoising"] + (["noising"] if settings.noising else [])
        self.loaded: dict = {}
        self.caches: dict = {}

    def _load(self, name):
        if name not in self.loaded:
            while len(self.loaded) >= 2:
                old = next(iter(self.loaded))
                self.loaded.pop(old)
                self.caches.pop(old, None)
            self.loaded[name] = self.load(self.by_name[name], device=self.device)
        return self.loaded[name]

    def _meta(self, info):
        return dict(run=info.name, recipe=info.recipe, seed=info.seed, task=self.s.task)

    def _tokens(self):
        return self.batch.clean_tokens.to(self.device), self.batch.corrupted_tokens.to(self.device)

    def _caches(self, name, model):
        if name not in self.caches:
            self.caches.clear()  # one run's activations at a time
            clean_t, corr_t = self._tokens()
            self.caches[name] = (P.run_cache(model, clean_t, self.batch.metric),
                                 P.run_cache(model, corr_t, self.batch.metric))  # fmt: skip
        return self.caches[name]

    def compute(self, unit: PatchUnit) -> pd.DataFrame:
        """The unit's rows (one DataFrame)."""
        s, batch, site = self.s, self.batch, unit.site
        boot = dict(n_boot=s.n_boot, seed=s.seed)
        frames = []
        if unit.kind == "cross":
            name_a, name_b = s.cross_model
            ra, rb = self._load(name_a), self._load(name_b)
            self.log(f"cross-model {name_a} -> {name_b}: {site}")
            sweep = P.cross_model_patching(ra.bridge, rb.bridge, batch.clean_tokens.to(self.device), batch.metric, site,
                                           positions=self.positions, tokenizer_a=ra.tokenizer,
                                           tokenizer_b=rb.tokenizer, max_rows=s.max_rows)  # fmt: skip
            m = dict(run=f"{name_a}->{name_b}", recipe=f"{ra.info.recipe}->{rb.info.recipe}", seed=rb.info.seed,
                     task=s.task)  # fmt: skip
            # the unpatched models' mean metric on these items: a null pair's shares read on this pair's gap
            frames.append(sweep.table(m, **boot).assign(source_metric=float(sweep.clean.mean()),
                                                         target_metric=float(sweep.corrupted.mean())))  # fmt: skip
            return pd.concat(frames, ignore_index=True)
        lr = self._load(unit.run)
        model, meta = lr.bridge, self._meta(lr.info)
        if unit.kind == "within":
            clean_t, corr_t = self._tokens()
            caches = self._caches(unit.run, model)
            for direction in self.directions:
                self.log(f"{unit.run}: {direction} {site}")
                sweep = P.activation_patching(model, clean_t, corr_t, batch.metric, site, direction=direction,
                                              positions=self.positions, caches=caches, max_rows=s.max_rows)  # fmt: skip
                frames.append(sweep.table(meta, **boot))
            if site in ("head_out", "q", "k", "v"):
                sweep = P.activation_patching(model, clean_t, corr_t, batch.metric, site, by_pos=False,
                                              caches=caches, max_rows=s.max_rows)  # fmt: skip
                frames.append(sweep.table(meta, **boot))
        elif unit.kind == "attribution":
            clean_t, corr_t = self._tokens()
            self.log(f"{unit.run}: attribution patching screen")
            rho, joined = P.attribution_agreement(model, clean_t, corr_t, batch.metric,
                                                  caches=self._caches(unit.run, model))  # fmt: skip
            frames += attribution_rows(rho, joined, meta)
            self.log(f"{unit.run}: attribution vs exact patching, Spearman rho = {rho:.3f} over {len(joined)} nodes")
        else:  # rendering
            self.log(f"{unit.run}: cross-rendering {site}")
            for sweep in P.cross_rendering_patching(model, self.rbatch, site, max_rows=s.max_rows):
                frames.append(sweep.table(meta, **boot))
        return pd.concat(frames, ignore_index=True)


def attribution_rows(rho: float, joined: pd.DataFrame, meta: Mapping) -> list[pd.DataFrame]:
    """The patching table's rows of an attribution screen: per node ``metric = attribution`` and
    ``exact_effect`` (long format), and one ``attribution_spearman`` row (``site = "all"``) with ``rho``."""
    long = joined.melt(id_vars=["site", "layer", "head", "pos"], value_vars=["attribution", "exact"],
                       var_name="metric", value_name="value")  # fmt: skip
    long["pos_label"] = long["pos"].astype(str)
    long["metric"] = long["metric"].map({"attribution": "attribution", "exact": "exact_effect"})
    summary = pd.DataFrame([dict(site="all", metric="attribution_spearman", value=rho)])
    # the integer columns stay integers next to the summary's missing ones
    return [
        t.assign(**meta, **{c: t[c].astype("Int64") for c in ("layer", "head", "pos") if c in t})
        for t in (long, summary)
    ]


def finalize_patch_tables(frames: Mapping[str, list]) -> dict[str, pd.DataFrame]:
    """``{table name: [unit frames in unit order]}`` -> ``{table name: DataFrame}`` (non-empty ones only).

    The one place where the unsharded sweep and the merge of parts make the final tables, so that they agree.
    """
    out = {}
    for name, parts in frames.items():
        if not parts:
            continue
        t = pd.concat(parts, ignore_index=True)
        for col in ("seed", "layer", "head", "pos"):  # integers with gaps, whatever the parts' own dtypes
            if col in t:
                t[col] = t[col].astype("Int64")
        out[name] = t
    return out


@dataclass
class _PatchPlan:
    infos: list
    by_name: dict
    items: list
    units: list[PatchUnit]
    worker: _PatchWorker


def _patch_plan(runs: Sequence, s: PatchSettings, device: str, load: Callable, log: Log) -> _PatchPlan:
    """Checks, items, batches and units of a sweep (everything refused before any model is run)."""
    infos = list(runs)
    if not infos:
        raise CodetransferError("--runs: no complete runs; train them with 'codetransfer train'")
    check_same_grid(infos)
    by_name = {i.name: i for i in infos}
    if s.cross_model:
        for name in s.cross_model:
            if name not in by_name:
                raise CodetransferError(
                    f"--cross-model: no complete run named {name!r}{did_you_mean(name, by_name)} "
                    f"(have {', '.join(by_name)})"
                )
        if s.cross_model[0] == s.cross_model[1]:
            raise CodetransferError("--cross-model: A and B are the same run; pass two different runs")
    if s.cross_model_only:
        if not s.cross_model:
            raise CodetransferError("--cross-model-only: needs --cross-model A B")
        if s.cross_rendering or s.noising or s.attribution:
            raise CodetransferError(
                "--cross-model-only: writes only cross_model.parquet; drop --cross-rendering, --noising and --attribution"
            )
    items = get_task(s.task).generate(s.n_items, s.seed, difficulty=s.difficulty)
    tokenizer = load_tokenizer(infos[0].path)
    batch = P.pair_batch(items, tokenizer, drop_misaligned=True)
    if batch.n_dropped:
        log(f"note: {batch.n_dropped} of {len(items)} items dropped (counterfactual tokenizes to another length)")
    rbatch = P.rendering_batch(items, tokenizer, "code", drop_misaligned=True) if s.cross_rendering else None
    n_ctx = _n_ctx(infos[0])
    widths = [batch.clean_tokens.shape[1]]
    if rbatch is not None:  # the code twins of the clean and of the counterfactual world (the control)
        widths += [rbatch.source_tokens.shape[1], rbatch.control_tokens.shape[1]]
    if max(widths) > n_ctx:
        raise CodetransferError(
            f"--task: items of {s.task} are up to {max(widths)} tokens but the models' context is {n_ctx}; "
            "pass --difficulty with a lower level"
        )
    units = plan_patch_units([i.name for i in infos], s.sites, attribution=s.attribution,
                             cross_rendering=s.cross_rendering, cross_model=s.cross_model,
                             cross_model_only=s.cross_model_only)  # fmt: skip
    worker = _PatchWorker(s, by_name, batch, rbatch, device, load, log)
    return _PatchPlan(infos, by_name, items, units, worker)


def patch_grid(
    runs: Sequence, settings: PatchSettings, *, device: str = "cpu", load: Callable = load_run, log: Log = _stderr
) -> dict[str, pd.DataFrame]:
    """Activation patching of every run (items generated once, seeded, shared by all runs), in memory.

    Returns ``{"patching.parquet": ...}`` plus ``"cross_rendering.parquet"`` and ``"cross_model.parquet"``
    when ``settings`` asks for them (only the latter with ``cross_model_only``). Rows come in the order
    of :func:`plan_patch_units`.
    """
    plan = _patch_plan(runs, settings, device, load, log)
    frames: dict[str, list] = {}
    for unit in plan.units:
        frames.setdefault(unit.table, []).append(plan.worker.compute(unit))
    return finalize_patch_tables(frames)


PATCHING_OVER_TRAINING_FILE = "patching_over_training.parquet"


def patch_checkpoints(
    runs: Sequence, settings: PatchSettings, *, device: str = "cpu", log: Log = _stderr
) -> dict[str, pd.DataFrame]:
    """Within-model patching of every saved checkpoint of each run: the same items, sites and positions as
    :func:`patch_grid` on the final model, once per checkpoint (``trained.run_checkpoints``: the intermediate
    ones, those a branched run borrows from its shared phases, and the final model at the last step).

    A run that kept fewer than two checkpoints has no curve (a note says so). Cross-rendering, cross-model,
    noising and attribution are not repeated over training. Returns ``{"patching_over_training.parquet":
    rows of patching.parquet with a step column}`` (empty when no run kept checkpoints)."""
    within = dataclasses.replace(
        settings, cross_rendering=False, cross_model=None, cross_model_only=False, noising=False, attribution=False
    )
    frames = []
    for info in runs:
        found = run_checkpoints(info)
        if len(found) < 2:
            log(f"note: run {info.name} kept no intermediate checkpoints; no patching over training")
            continue
        for folder in found.values():
            check_model_folder(folder)  # every checkpoint checked before any is patched
        for step, folder in found.items():

            def load(i, device=device, folder=folder):
                bridge, tokenizer = load_bridge(folder, device=device)
                return LoadedRun(bridge=bridge, tokenizer=tokenizer, info=i)

            t = patch_grid([info], within, device=device, load=load, log=lambda *a: None)["patching.parquet"]
            t.insert(t.columns.get_loc("task"), "step", int(step))
            frames.append(t)
        log(f"patch: {len(found)} checkpoints of run {info.name}")
    if not frames:
        return {PATCHING_OVER_TRAINING_FILE: pd.DataFrame(columns=schema.columns("patching_over_training"))}
    return {PATCHING_OVER_TRAINING_FILE: pd.concat(frames, ignore_index=True)}


def patch_sweep_settings(settings: PatchSettings, infos, items) -> dict:
    """The sharded sweep's settings record (what its parts' settings hash is made of)."""
    s = settings
    return dict(
        kind="patch",
        task=s.task,
        task_version=str(getattr(items[0], "version", "")) if items else "",
        sites=list(s.sites),
        n_items=s.n_items,
        difficulty=s.difficulty,
        seed=s.seed,
        n_boot=s.n_boot,
        positions=s.positions,
        noising=bool(s.noising),
        attribution=bool(s.attribution),
        cross_rendering=bool(s.cross_rendering),
        # parts written before the cross-rendering control existed hold no control rows: another sweep
        **({"cross_rendering_control": "token-matched"} if s.cross_rendering else {}),
        cross_model=list(s.cross_model or []),
        cross_model_only=bool(s.cross_model_only),
        runs=[
            dict(
                name=i.name,
                recipe=i.recipe,
                seed=i.seed,
                recipe_hash=i.record.get("recipe_hash"),
                tokenizer=i.record.get("tokenizer_sha256"),
            )
            for i in infos
        ],  # fmt: skip
    )


def _part_meta(path: Path) -> dict | None:
    raw = artifacts.read_parquet_metadata(path, PART_META)
    try:
        return json.loads(raw) if raw else None
    except ValueError:  # damaged metadata: the part counts as not finished
        return None


def check_patch_manifest(folder: Path, sweep: dict) -> None:
    """Refuse to add parts to a folder that holds a sweep with other settings (naming what differs)."""
    old = artifacts.read_manifest(folder)
    if old is None or old.get("settings_hash") == artifacts.key(sweep, 12):
        return
    before = old.get("settings", {})
    diff = sorted(k for k in set(before) | set(sweep) if before.get(k) != sweep.get(k))
    raise CodetransferError(
        f"--out: {folder} holds parts of a patch sweep with other settings (differs in {', '.join(diff) or '?'}); "
        f"re-run with the same arguments, or pass another --out, or delete {folder}"
    )


def patch_part_status(folder: Path, manifest: Mapping) -> tuple[list[int], list[int]]:
    """Indices of the manifest's units whose part is missing, and of those written with other settings."""
    missing, foreign = [], []
    for k, unit in enumerate(manifest["units"]):
        path = folder / unit["part"]
        if not path.exists():
            missing.append(k)
            continue
        meta = _part_meta(path)
        if meta is None or meta.get("settings") != manifest["settings_hash"] or meta.get("unit") != unit["id"]:
            foreign.append(k)
    return missing, foreign


@dataclass(frozen=True)
class ShardReport:
    """What one shard of a sharded sweep did."""

    computed: int
    """Units this shard computed now."""
    mine: int
    """Units of this shard."""
    present: int
    """Parts of the whole sweep present in the folder after this shard."""
    total: int
    """Units of the whole sweep."""
    folder: Path
    """The parts folder."""
    tables: dict = field(default_factory=dict)
    """The merged tables, written when this shard completed the sweep (else empty)."""


def patch_shard(
    runs: Sequence,
    settings: PatchSettings,
    out: str | Path,
    shard: tuple[int, int],
    *,
    device: str = "cpu",
    load: Callable = load_run,
    log: Log = _stderr,
) -> ShardReport:
    """Shard ``(i, n)`` of a patching sweep: one parquet part per unit of its block under ``out/parts/patch``
    (finished parts are skipped; a folder holding a sweep of other settings is refused), next to
    ``manifest.json``; the shard that completes the sweep merges the parts into ``out``'s tables."""
    plan = _patch_plan(runs, settings, device, load, log)
    i, n = shard
    out = Path(out)
    sweep = patch_sweep_settings(settings, plan.infos, plan.items)
    digest = artifacts.key(sweep, 12)
    folder = out / PATCH_PARTS
    check_patch_manifest(folder, sweep)
    manifest = dict(kind="patch", settings_hash=digest, settings=sweep, n_shards=n,
                    tables=list(dict.fromkeys(u.table for u in plan.units)),
                    units=[dict(id=u.id, table=u.table, part=f"{u.id}.parquet") for u in plan.units])  # fmt: skip
    artifacts.write_manifest(folder, manifest)
    mine = artifacts.shard_units(plan.units, shard)
    done = 0
    for unit in mine:
        part = folder / f"{unit.id}.parquet"
        meta = _part_meta(part) if part.exists() else None
        if meta is not None and meta.get("settings") == digest and meta.get("unit") == unit.id:
            continue
        artifacts.write_parquet(
            plan.worker.compute(unit),
            part,
            {PART_META: json.dumps(dict(settings=digest, unit=unit.id, table=unit.table)).encode()},
        )
        done += 1
    missing, _ = patch_part_status(folder, manifest)
    tables = {} if missing else merge_patch_parts(out)
    return ShardReport(done, len(mine), len(plan.units) - len(missing), len(plan.units), folder, tables)


def check_patch_parts(out: str | Path, allow_partial: bool = False) -> tuple[dict, list[int]]:
    """The manifest of ``out/parts/patch`` and the indices of its missing units, or a refusal.

    Raises :class:`CodetransferError` when no sweep is there, when parts are missing (unless
    ``allow_partial``) or when parts were written with other settings than the manifest's.
    """
    out = Path(out)
    folder = out / PATCH_PARTS
    manifest = artifacts.read_manifest(folder)
    if manifest is None:
        raise CodetransferError(
            f"--out: no patching parts in {out} ({PATCH_PARTS / artifacts.MANIFEST} is missing); "
            "run 'codetransfer patch ... --shard i/n --out' into this folder first"
        )
    units = manifest["units"]
    missing, foreign = patch_part_status(folder, manifest)
    if foreign:
        raise CodetransferError(
            f"merge: {len(foreign)} of {len(units)} patching parts in {folder} come from other settings than the "
            f"manifest's ({artifacts.unit_names(units, foreign)}); delete them and re-run their shards with the "
            "manifest's arguments"
        )
    if len(missing) == len(units) or (missing and not allow_partial):
        n = int(manifest.get("n_shards", 1))
        raise CodetransferError(
            f"merge: {len(missing)} of {len(units)} patching parts are missing ({artifacts.unit_names(units, missing)}); "
            f"re-run shard {artifacts.shards_to_rerun(missing, len(units), n)} with the same arguments"
            + (", or pass --allow-partial to merge what is there" if len(missing) < len(units) else "")
        )
    return manifest, missing


def merge_patch_parts(out: str | Path, allow_partial: bool = False, log: Log | None = None) -> dict[str, pd.DataFrame]:
    """Merge ``out/parts/patch`` into the patching tables (written atomically into ``out``); returns them.

    Parts are concatenated in the manifest's unit order, so the tables equal the unsharded sweep's.
    Refuses as :func:`check_patch_parts` does, before writing anything.
    """
    out = Path(out)
    folder = out / PATCH_PARTS
    manifest, missing = check_patch_parts(out, allow_partial)
    units = manifest["units"]
    if missing and log:
        log(f"note: merging {len(units) - len(missing)} of {len(units)} patching parts ({len(missing)} missing)")
    frames: dict[str, list] = {t: [] for t in manifest.get("tables", [])}
    skip = set(missing)
    for k, unit in enumerate(units):
        if k not in skip:
            frames.setdefault(unit["table"], []).append(
                read_table(folder / unit["part"], "patching part", fix="delete it and rerun that shard")
            )
    tables = finalize_patch_tables(frames)
    artifacts.write_tables(out, tables)
    return tables


# ================================================================================================
# attention heads

ATTENTION_FILE = "attention.parquet"
ATTENTION_OVER_TRAINING_FILE = "attention_over_training.parquet"


def attention_grid(
    runs: Sequence,
    tasks: Sequence[str] = (),
    *,
    n_items: int = 64,
    n_seqs: int = 32,
    half_len: int | None = None,
    ablation: str = "mean",
    max_difficulty: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    n_boot: int = 1000,
    checkpoints: bool = False,
    device: str = "cpu",
    load: Callable = load_run,
    log: Log = _stderr,
) -> dict[str, pd.DataFrame]:
    """Head scores of every run (:mod:`codetransfer.analysis.attention`): pattern scores and the induction
    loss on repeated random tokens, and per task (items generated once, seeded, shared by all runs) the
    task-aligned scores; with ``checkpoints`` the pattern scores of every saved checkpoint.
    ``half_len``: tokens per half of the repeated sequences; None gives 20, shortened to fit the runs'
    context; a value given that does not fit is refused.

    Returns ``{"attention.parquet": ...}`` plus ``"attention_over_training.parquet"`` with checkpoints.
    """
    infos = list(runs)
    families = [get_task(t) for t in tasks]  # unknown names: one-line did-you-mean error, before any work
    if not infos:
        raise CodetransferError("--runs: no complete runs; train them with 'codetransfer train'")
    check_same_grid(infos)
    fit = (int(infos[0].record["model"]["n_ctx"]) - 1) // 2
    if half_len is not None and half_len > fit:  # refused, not shortened behind the user's back
        raise CodetransferError(
            f"--half-len: {half_len} gives {1 + 2 * half_len} tokens, more than the "
            f"runs' context of {2 * fit + 1}; use --half-len <= {fit}"
        )
    half_len = 20 if half_len is None else half_len
    items = {f.name: items_up_to(f, n_items, seed, max_difficulty) for f in families}

    def loaded():
        for info in infos:
            log(f"attention: run {info.name}")
            yield load(info, device=device)

    found_ckpts = {}
    if checkpoints:  # checked before any scoring: nothing is written on a refusal
        without = []
        for info in infos:
            found = run_checkpoints(info)
            if len(found) < 2:
                without.append(info.name)
                continue
            for folder in found.values():
                check_model_folder(folder)
            found_ckpts[info.name] = (info, found)
        if not found_ckpts:
            raise CodetransferError(
                "--checkpoints: no run kept intermediate checkpoints; set the grid field train.snapshot_every > 0 "
                "and train again"
            )
        for name in without:
            log(f"note: run {name} kept no intermediate checkpoints; it has no curve over training")
    kw = dict(
        n_seqs=n_seqs,
        half_len=half_len,
        seed=seed,
        ablation=ablation,
        n_boot=n_boot,
        batch_size=batch_size,
        progress=log,
    )
    tables = {ATTENTION_FILE: attention_score_runs(loaded(), score_run, items_by_task=items, **kw)}
    if found_ckpts:
        frames = []
        for info, found in found_ckpts.values():
            log(f"attention: {len(found)} checkpoints of run {info.name}")
            t = score_checkpoints(found, None, device=device, **kw)
            t.insert(0, "seed", info.seed)
            t.insert(0, "recipe", info.recipe)
            t.insert(0, "run", info.name)
            frames.append(t)
        tables[ATTENTION_OVER_TRAINING_FILE] = pd.concat(frames, ignore_index=True)
    return tables
