"""Layer sweeps of probes over stored activations, cross-format probing, and the batch sweep.

:func:`probe_layers` answers "at which site and layer is this property linearly decodable?" for one
set of rows. For every site (``resid_post.3``; ``head_out.3`` is probed head by head; see
:mod:`codetransfer.analysis.sites`) it fits a probe on
the training rows of each group split (by template or by entity, several seeds; see
``probes.splits``) and scores it on the held-out rows, next to the same probe trained on a
Hewitt & Liang control task (``probes.controls``) over the same rows, and an online-code MDL
(``probes.mdl``). The splits are drawn once and shared by all sites, so layers are compared on the
same held-out rows. Output is a tidy table, one row per (site, layer, head, metric):

``run, recipe, seed, task, site, layer, head, pos, probe, metric, value, ci_low, ci_high``

with metrics ``accuracy``, ``control_accuracy``, ``selectivity`` (paired per held-out row),
``majority`` (always the most frequent training label), ``mdl_bits`` and ``compression`` (one
transmission order, no interval), optionally ``shuffled_accuracy`` (label-shuffle baseline); a
``ridge`` probe reports ``r2`` instead (interval: min..max over split seeds). ``head`` is missing
(``Int64`` NA, :data:`~codetransfer.analysis.schema.NO_HEAD`) for sites that are not per-head. ``value`` is the mean
over split seeds and ``[ci_low, ci_high]`` a 95% cluster bootstrap over held-out groups.
``seed`` is the *training* seed of the run (from the caller or the store's meta), never a split seed.

:func:`cross_format_probe` fits on one rendering's activations (e.g. the Python rendering of a world
state) and tests on the other's (the English rendering), and the reverse, on held-out groups shared
by both, next to the within-format scores on the same splits: a probe that transfers suggests one
representation for both formats.

:func:`probe_store` runs :func:`probe_layers` (and :func:`cross_format_probe` on twin rows) for each
label of a store built from task items (:func:`item_rows` gives the tokens, label positions and index).

:func:`run_probe_sweep` is the restartable, shardable batch job over runs × tasks × sites: each
(run, task, site) unit extracts its activations into an :class:`~codetransfer.analysis.store.
ActivationStore`, probes every layer, and writes one parquet part atomically; a unit whose part
exists is skipped, so a restarted or re-sharded sweep repeats no work (a unit interrupted between
extraction and its part reuses its store when the store's run, task version and seed match). Parts are merged into
``probes.parquet``. Shard ``(i, n)`` takes the i-th of n contiguous blocks of the sorted unit list
(units sort by run, so a shard loads few models).

Sparse probing: TransformerLens' ``tools.analysis.sparse_probing.fit_sparse_probe`` fits a *binary*
k-sparse logistic probe (coordinates chosen by train-split class-mean difference, optional grouped
split) — :func:`sparse_probe_rows` wraps it for binary labels to ask how many neurons carry a
property; it is not a replacement for the dense probes above.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import clone
from threadpoolctl import threadpool_limits

from codetransfer import artifacts
from codetransfer.analysis import encoding, schema
from codetransfer.analysis.sites import Site
from codetransfer.analysis.stats import cluster_bootstrap_ci
from codetransfer.analysis.store import ActivationStore, extract_activations, parse_sites
from codetransfer.errors import CodetransferError, did_you_mean
from codetransfer.probes.decodability import label_family
from codetransfer.probes.controls import control_labels, majority_accuracy, shuffled_labels
from codetransfer.probes.estimators import make_probe
from codetransfer.probes.mdl import online_codelength
from codetransfer.probes.splits import Split, entity_splits, group_splits

COLUMNS = list(schema.columns("probes"))
"""Columns of a probing table (:data:`codetransfer.analysis.schema.TABLES` ``["probes"]``)."""


def _site_arrays(source, site: str, rows) -> np.ndarray:
    if isinstance(source, ActivationStore):
        return source.read(site, rows)
    if site not in source:
        raise CodetransferError(f"sites: no activations for site '{site}'; have {', '.join(source)}")
    arr = np.asarray(source[site])
    return arr if rows is None else arr[rows]


def _source_sites(source) -> list[str]:
    return source.sites if isinstance(source, ActivationStore) else list(source)


def _make_splits(labels, groups, split: str, seeds, test_fraction) -> list[Split]:
    if split == "entity":
        return entity_splits(groups, labels=labels, test_fraction=test_fraction, seeds=seeds)
    if split == "group":
        return group_splits(groups, labels=labels, test_fraction=test_fraction, seeds=seeds)
    raise CodetransferError(f"split: expected 'group' or 'entity', got '{split}'")


def _group_ids(groups, split) -> np.ndarray:
    """Cluster ids for the bootstrap (for entity splits: the row's entity set)."""
    if split == "entity":
        return np.asarray(["|".join(sorted(g)) for g in groups])
    return np.asarray(groups)


def probe_layers(
    source: ActivationStore | Mapping[str, np.ndarray],
    labels: Sequence,
    groups: Sequence,
    *,
    sites: Sequence[str] | None = None,
    rows: Sequence[int] | None = None,
    split: str = "group",
    probe: str = "linear",
    probe_params: Mapping | None = None,
    control_types: Sequence | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    test_fraction: float = 0.3,
    mdl: bool = True,
    shuffle_baseline: bool = False,
    n_boot: int = 1000,
    meta: Mapping | None = None,
    pos: str = "all",
    fit_counter: Callable[[], None] | None = None,
    blas_threads: int | None = 1,
) -> pd.DataFrame:
    """Probe every site of ``source`` for ``labels`` on group-held-out splits.

    Args:
        source: an :class:`ActivationStore` or a mapping ``site -> [rows, d]`` (``head.*`` sites:
            ``[rows, heads, d]``).
        labels: per row (of ``rows`` when given), the class label (or a number for ``ridge``).
        groups: per row, the template id (``split="group"``) or the tuple of entities
            (``split="entity"``).
        sites: which sites to probe (default all of ``source``).
        rows: a subset of the source's rows (e.g. one label family); labels/groups align with it.
        split: ``"group"`` or ``"entity"``.
        probe: ``linear``, ``mlp`` or ``ridge``; ``probe_params`` go to its constructor.
        control_types: per row, the type for the control task (default: the row's group).
        seeds: split seeds; the control task of split ``s`` uses seed ``s``.
        test_fraction: held-out share of groups (entities).
        mdl: add online-code MDL (``mdl_bits``, ``compression``; first seed's order).
        shuffle_baseline: add ``shuffled_accuracy``: the probe fitted on training labels permuted
            across training rows, scored against the true held-out labels.
        meta: ``run, recipe, seed, task`` values for the table (default from the store's meta).
        pos: the value of the ``pos`` column (which token position/label family the rows are).
        fit_counter: called once per probe fit (for tests and progress).
        blas_threads: BLAS/OpenMP threads during fitting (probes are small: 1 thread is several
            times faster than 2 on small matrices; None leaves the setting alone).

    Returns:
        the tidy table described in the module docstring.
    """
    labels = np.asarray(labels)
    n = len(labels)
    groups = list(groups) if split == "entity" else np.asarray(groups)
    if len(groups) != n:
        raise CodetransferError(f"groups: expected one group per label ({n}), got {len(groups)}")
    if rows is not None:
        rows = np.asarray(rows)
        if len(rows) != n:
            raise CodetransferError(f"rows: expected one row index per label ({n}), got {len(rows)}")
    if probe != "ridge" and len(np.unique(labels)) < 2:
        raise CodetransferError(
            f"labels: expected at least 2 classes, got only {np.unique(labels).tolist()!r}; "
            "a single-class property cannot be probed: choose another label or more items"
        )
    make_probe(probe)  # refuse unknown names early
    all_sites = _source_sites(source)
    sites = list(all_sites if sites is None else sites)
    for s in sites:
        if s not in all_sites:
            raise CodetransferError(
                f"sites: '{s}' is not in the activations (have {', '.join(all_sites)}){did_you_mean(s, all_sites)}"
            )
    if meta is None:
        meta = {}
        if isinstance(source, ActivationStore):
            extra = source.meta.get("extra", {})
            meta = {
                "run": source.meta["run"],
                "task": source.meta["task"],
                "recipe": extra.get("recipe"),
                "seed": extra.get("run_seed"),
            }
    splits = _make_splits(labels, groups, split, seeds, test_fraction)
    clusters = _group_ids(groups, split)
    if control_types is None:
        control_types = clusters
    control_types = np.asarray(control_types)

    out = []
    with threadpool_limits(blas_threads):
        for site in sites:
            out.extend(
                _probe_site(
                    source,
                    site,
                    rows,
                    labels,
                    splits,
                    clusters,
                    control_types,
                    probe,
                    probe_params,
                    mdl,
                    n_boot,
                    meta,
                    pos,
                    fit_counter,
                    shuffle_baseline,
                )
            )
    table = pd.DataFrame(out)
    table["head"] = schema.head_column(table["head"])
    return table[[c for c in COLUMNS if c in table.columns] + [c for c in table.columns if c not in COLUMNS]]


def _probe_site(
    source,
    site,
    rows,
    labels,
    splits,
    clusters,
    control_types,
    probe,
    probe_params,
    mdl,
    n_boot,
    meta,
    pos,
    fit_counter,
    shuffle_baseline=False,
):
    """Rows for one site (every head separately for ``head.*`` sites)."""
    out = []
    spec = Site.from_name(site)
    X_site = _site_arrays(source, site, rows)
    heads = range(X_site.shape[1]) if X_site.ndim == 3 else [None]
    for head in heads:
        X = X_site[:, head, :] if head is not None else X_site
        base = dict(
            meta,
            site=spec.kind,
            layer=spec.layer,
            head=schema.NO_HEAD if head is None else int(head),
            pos=pos,
            probe=probe,
        )
        out.extend(
            {**base, **r}
            for r in _probe_one(
                X,
                labels,
                splits,
                clusters,
                control_types,
                probe,
                probe_params or {},
                mdl,
                n_boot,
                fit_counter,
                shuffle_baseline,
            )
        )
    return out


def _probe_one(
    X, labels, splits, clusters, control_types, probe, params, mdl, n_boot, fit_counter, shuffle_baseline=False
):
    est = make_probe(probe, **params)

    def fit(y_train, train):
        if fit_counter is not None:
            fit_counter()
        # the inner CV that picks C is grouped too (GroupKFold over the training rows' groups)
        return clone(est).fit(X[train], y_train, groups=clusters[train])

    if probe == "ridge":
        scores = []
        for sp in splits:
            model = fit(labels[sp.train], sp.train)
            scores.append(model.score(X[sp.test], labels[sp.test]))
        return [
            dict(metric="r2", value=float(np.mean(scores)), ci_low=float(np.min(scores)), ci_high=float(np.max(scores)))
        ]
    task_c, ctrl_c, sel, maj, grp, shuf = [], [], [], [], [], []
    for sp in splits:
        if shuffle_baseline:
            y_shuf = shuffled_labels(labels[sp.train], seed=sp.seed)
            if len(np.unique(y_shuf)) > 1:
                ok = fit(y_shuf, sp.train).predict(X[sp.test]) == labels[sp.test]
                shuf.append((ok.astype(float), clusters[sp.test]))
        ctrl = control_labels(control_types, labels, seed=sp.seed)
        task_ok = fit(labels[sp.train], sp.train).predict(X[sp.test]) == labels[sp.test]
        if len(np.unique(ctrl[sp.train])) > 1:
            ctrl_ok = fit(ctrl[sp.train], sp.train).predict(X[sp.test]) == ctrl[sp.test]
        else:  # the control task drew one label for every training type: majority is the probe
            ctrl_ok = ctrl[sp.test] == ctrl[sp.train][0]
        task_c.append(task_ok.astype(float))
        ctrl_c.append(ctrl_ok.astype(float))
        sel.append(task_c[-1] - ctrl_c[-1])
        maj.append(np.full(len(sp.test), majority_accuracy(labels[sp.train], labels[sp.test])))
        grp.append(clusters[sp.test])
    rows = []
    for metric, vals in (("accuracy", task_c), ("control_accuracy", ctrl_c), ("selectivity", sel)):
        v, lo, hi = cluster_bootstrap_ci(vals, grp, n_resamples=n_boot, seed=0)
        rows.append(dict(metric=metric, value=v, ci_low=lo, ci_high=hi))
    if shuf:
        v, lo, hi = cluster_bootstrap_ci([a for a, _ in shuf], [g for _, g in shuf], n_resamples=n_boot, seed=0)
        rows.append(dict(metric="shuffled_accuracy", value=v, ci_low=lo, ci_high=hi))
    rows.append(dict(metric="majority", value=float(np.mean([m.mean() for m in maj])), ci_low=np.nan, ci_high=np.nan))
    if mdl:
        if fit_counter is not None:
            fit_counter()
        code = online_codelength(X, labels, seed=splits[0].seed)
        rows.append(dict(metric="mdl_bits", value=code.online_bits, ci_low=np.nan, ci_high=np.nan))
        rows.append(dict(metric="compression", value=code.compression, ci_low=np.nan, ci_high=np.nan))
    return rows


def cross_format_probe(
    X_a: np.ndarray,
    y_a: Sequence,
    groups_a: Sequence,
    X_b: np.ndarray,
    y_b: Sequence,
    groups_b: Sequence,
    *,
    formats: tuple[str, str] = ("code", "text"),
    probe: str = "linear",
    probe_params: Mapping | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    test_fraction: float = 0.3,
    n_boot: int = 1000,
) -> pd.DataFrame:
    """Fit on one format and test on the other (both directions) and within each format.

    ``groups_a`` / ``groups_b`` are ids shared across formats (e.g. the world state or entity set a
    twin pair shares): a split holds out the same groups in both formats, so the cross-format score
    is never on a twin of a training row. Returns rows with ``fit_on``, ``test_on``, ``metric``
    (``accuracy``), ``value``, ``ci_low``, ``ci_high``.
    """
    X = {formats[0]: np.asarray(X_a), formats[1]: np.asarray(X_b)}
    y = {formats[0]: np.asarray(y_a), formats[1]: np.asarray(y_b)}
    g = {formats[0]: np.asarray(groups_a), formats[1]: np.asarray(groups_b)}
    for f in formats:
        if len(X[f]) != len(y[f]) or len(y[f]) != len(g[f]):
            raise CodetransferError(
                f"{f}: expected as many activation rows, labels and groups, got {len(X[f])}, {len(y[f])}, {len(g[f])}"
            )
        if len(np.unique(y[f])) < 2:
            raise CodetransferError(f"{f} labels: expected at least 2 classes, got {np.unique(y[f]).tolist()!r}")
    if X[formats[0]].shape[1:] != X[formats[1]].shape[1:]:
        raise CodetransferError(
            f"X: the two formats' activations differ in shape {X[formats[0]].shape[1:]} vs {X[formats[1]].shape[1:]}"
        )
    all_groups = np.unique(np.concatenate([g[formats[0]], g[formats[1]]]))
    splits = group_splits(all_groups, test_fraction=test_fraction, seeds=seeds)
    est = make_probe(probe, **(probe_params or {}))
    results = {(a, b): ([], []) for a in formats for b in formats}
    with threadpool_limits(1):
        _cross_fit(splits, all_groups, formats, X, y, g, est, results)
    out = []
    for (a, b), (vals, grps) in results.items():
        v, lo, hi = cluster_bootstrap_ci(vals, grps, n_resamples=n_boot)
        out.append(dict(fit_on=a, test_on=b, probe=probe, metric="accuracy", value=v, ci_low=lo, ci_high=hi))
    return pd.DataFrame(out)


def _cross_fit(splits, all_groups, formats, X, y, g, est, results):
    for sp in splits:
        train_groups, test_groups = all_groups[sp.train], all_groups[sp.test]
        for a in formats:
            tr = np.isin(g[a], train_groups)
            if len(np.unique(y[a][tr])) < 2:
                raise CodetransferError(
                    f"{a} labels: split seed {sp.seed} leaves one class in training; use more items"
                )
            model = clone(est).fit(X[a][tr], y[a][tr])
            for b in formats:
                te = np.isin(g[b], test_groups)
                results[(a, b)][0].append((model.predict(X[b][te]) == y[b][te]).astype(float))
                results[(a, b)][1].append(g[b][te])


def sparse_probe_rows(
    X: np.ndarray,
    labels: Sequence,
    groups: Sequence,
    *,
    ks: Sequence[int] = (1, 4, 16),
    seed: int = 0,
    test_fraction: float = 0.3,
) -> pd.DataFrame:
    """k-sparse binary probes (TransformerLens ``sweep_sparse_probe``) as tidy rows.

    ``labels`` must be binary; ``groups`` (any hashables) are held out whole. Returns rows with
    ``k``, ``features`` (the selected coordinates, comma-separated), ``metric`` (``accuracy``,
    ``roc_auc``) and ``value``.
    """
    import torch
    from transformer_lens.tools.analysis.sparse_probing import sweep_sparse_probe

    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(classes) != 2:
        raise CodetransferError(f"labels: sparse probing needs exactly 2 classes, got {classes.tolist()!r}")
    _, gid = np.unique(np.asarray(groups), return_inverse=True)
    try:
        res = sweep_sparse_probe(
            torch.as_tensor(np.asarray(X), dtype=torch.float32),
            torch.as_tensor(labels == classes[1]),
            ks=list(ks),
            groups=torch.as_tensor(gid),
            preprocess="standardize",
            seed=seed,
            test_fraction=test_fraction,
        )
    except ValueError as e:
        raise CodetransferError(f"sparse probe: {e}".replace("\n", " ")) from None
    return pd.DataFrame(
        [
            dict(
                k=r.k,
                features=",".join(str(int(f)) for f in r.selected_features),
                metric=m,
                value=float(getattr(r.metrics, m)),
            )
            for r in res.results
            for m in ("accuracy", "roc_auc")
        ]
    )


# ---------------------------------------------------------------------- the batch sweep
_safe = artifacts.safe_name

PART_KEY = b"codetransfer.part_key"


def _atomic_parquet(df: pd.DataFrame, path: Path, key: str | None = None) -> None:
    """Write ``df`` to ``path`` atomically (temporary name unique per host and process), with ``key`` in
    the parquet metadata when given."""
    artifacts.write_parquet(df, path, None if key is None else {PART_KEY: key.encode()})


def _part_key(settings: Mapping, info, task: str, site: str) -> str:
    """What a probe part depends on: the sweep settings, the unit and the model it read (its recipe hash
    and weights file's size and time, so a retrained run of the same name is probed again)."""
    weights = Path(getattr(info, "path", "")) / "model.safetensors"
    stat = weights.stat() if weights.exists() else None
    model = {
        "recipe_hash": (getattr(info, "record", None) or {}).get("recipe_hash"),
        "weights": [stat.st_size, stat.st_mtime_ns] if stat else None,
    }
    return artifacts.key({"settings": settings, "task": task, "site": site, "model": model})


def _read_part_key(path: Path) -> str | None:
    value = artifacts.read_parquet_metadata(path, PART_KEY)  # None for a damaged part: it is redone
    return value.decode() if value else None


NONLOCAL_LABELS = ("*@query", "*@op")
"""Label-name patterns of the non-local world state (``tasks/render.py``): at the query's last token, the
queried key's value (``box@query``); after an operation statement that does not name its new value, the
operated key's value (``box@op``). The main job probes these by default."""


def label_matches(name: str, patterns: Sequence[str] | None) -> bool:
    """Whether label ``name`` matches one of the shell-style ``patterns`` (``fnmatch``; None: every label)."""
    return patterns is None or any(fnmatch.fnmatchcase(str(name), p) for p in patterns)


def check_label_patterns(patterns: Sequence[str] | None, where: str = "labels") -> tuple[str, ...] | None:
    """``patterns`` as a tuple of non-empty strings (None stays None); refuses anything else in one line."""
    if patterns is None:
        return None
    if isinstance(patterns, str) or not all(isinstance(p, str) and p.strip() for p in patterns) or not patterns:
        raise CodetransferError(
            f"{where}: expected a non-empty list of label-name patterns such as ['*@query', 'box(*)'], got {patterns!r}"
        )
    return tuple(p.strip() for p in patterns)


def item_rows(
    items: Sequence, tokenizer, *, twins: bool = False, labels: Sequence[str] | None = None
) -> tuple[list[list[int]], list[list[int]], pd.DataFrame]:
    """Token ids, label token positions and the index table of a list of task items.

    Each item label becomes one row at the token holding the label span's last character (after
    BOS). With ``twins`` the items' twin renderings follow as extra items (``pair`` = the index of
    the original item). ``labels``: shell-style patterns of the label names to keep (e.g.
    :data:`NONLOCAL_LABELS`, ``["box(*)"]``; None keeps every label); a selection that keeps no label
    is refused. Returns ``(tokens, positions, index)``; the index has ``item, pair, label, family,
    value, template, entities, rendering``.
    """
    labels = check_label_patterns(labels)
    sequence = [(i, it) for i, it in enumerate(items)]
    if twins:
        sequence += [(i, it.twin) for i, it in enumerate(items) if getattr(it, "twin", None) is not None]
    tokens, positions, recs = [], [], []
    for k, (pair, item) in enumerate(sequence):
        ids, offsets = encoding.encode_prompt(tokenizer, item.prompt)
        ps = []
        for lab in item.labels:
            if not label_matches(lab.name, labels):
                continue
            ps.append(encoding.span_token(offsets, lab.end))
            recs.append(
                dict(
                    item=k,
                    pair=pair,
                    label=lab.name,
                    family=label_family(lab.name),
                    value=str(lab.value),
                    template=str(item.template),
                    entities="|".join(item.entities),
                    rendering=item.rendering,
                )
            )
        tokens.append(ids)
        positions.append(ps)
    if labels is not None and not recs:
        names = sorted({lab.name for _, it in sequence for lab in it.labels})
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        raise CodetransferError(
            f"labels: no label of these items matches {list(labels)}; their labels are {shown or 'none'}"
        )
    return tokens, positions, pd.DataFrame(recs)


def probe_store(
    store: ActivationStore,
    *,
    target: str = "label",
    split: str = "entity",
    probe: str = "linear",
    probe_params: Mapping | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    min_rows: int = 20,
    cross_format: bool = True,
    mdl: bool = True,
    meta: Mapping | None = None,
    skipped: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Probe every site of a store made by :func:`item_rows` + ``extract_activations``.

    One probing problem per ``target`` value: ``"label"`` (each label name, e.g. ``box(pen)``: where
    is the pen after this sentence) or ``"family"`` (``box``, all objects pooled). Rows of the first
    rendering in the index are probed with :func:`probe_layers` (columns ``fit_on`` = ``test_on`` =
    that rendering); with ``cross_format`` and twin rows present, :func:`cross_format_probe` adds
    rows fitted on one rendering and tested on the other (groups: the rows' entity sets, shared by
    twins). Problems with fewer than ``min_rows`` rows or a single class are skipped (reported
    through ``skipped``).
    """
    if target not in ("label", "family"):
        raise CodetransferError(f"target: expected 'label' or 'family', got '{target}'")
    idx = store.index
    renderings = list(dict.fromkeys(idx["rendering"])) if "rendering" in idx.columns else [None]
    main = renderings[0]
    tables = []
    for name, sub_all in idx.groupby(target, sort=True):
        sub = sub_all if main is None else sub_all[sub_all["rendering"] == main]
        if len(sub) < min_rows or sub["value"].nunique() < 2:
            if skipped:
                skipped(f"{name}: {len(sub)} rows, {sub['value'].nunique()} classes")
            continue
        groups = [tuple(e.split("|")) for e in sub["entities"]] if split == "entity" else sub["template"].to_numpy()
        values = sub["value"].to_numpy()
        if probe == "ridge":  # regression needs numbers (e.g. counts)
            values = pd.to_numeric(sub["value"], errors="coerce").to_numpy(dtype=float)
            if np.isnan(values).any():
                raise CodetransferError(
                    f"probe: 'ridge' needs numeric labels but '{name}' has values like {sub['value'].iloc[0]!r}; "
                    "use the linear probe for categorical labels"
                )
        try:
            t = probe_layers(
                store,
                values,
                groups,
                rows=sub["row"].to_numpy(),
                split=split,
                probe=probe,
                probe_params=probe_params,
                seeds=seeds,
                meta=meta,
                pos=str(name),
                mdl=mdl,
            )
        except CodetransferError as e:
            if skipped:
                skipped(f"{name}: {e}")
            continue
        t["fit_on"] = t["test_on"] = main
        tables.append(t)
        if cross_format and len(renderings) > 1 and probe != "ridge":
            other = sub_all[sub_all["rendering"] == renderings[1]]
            if len(other) < min_rows or other["value"].nunique() < 2:
                continue
            for site in store.sites:
                A, B = store.read(site, sub["row"].to_numpy()), store.read(site, other["row"].to_numpy())
                heads = range(A.shape[1]) if A.ndim == 3 else [None]
                for head in heads:
                    a = A if head is None else A[:, head]
                    b = B if head is None else B[:, head]
                    try:
                        c = cross_format_probe(
                            a,
                            sub["value"],
                            sub["entities"],
                            b,
                            other["value"],
                            other["entities"],
                            formats=(main, renderings[1]),
                            probe=probe,
                            probe_params=probe_params,
                            seeds=seeds,
                        )
                    except CodetransferError as e:
                        if skipped:
                            skipped(f"{name} cross-format at {site}: {e}")
                        break
                    c = c[c["fit_on"] != c["test_on"]]
                    spec = Site.from_name(site)
                    for k, v in dict(
                        meta or {},
                        site=spec.kind,
                        layer=spec.layer,
                        head=schema.NO_HEAD if head is None else int(head),
                        pos=str(name),
                    ).items():
                        c[k] = v
                    tables.append(c)
    if not tables:
        return pd.DataFrame(columns=COLUMNS + ["fit_on", "test_on"])
    table = pd.concat(tables, ignore_index=True)
    table["head"] = schema.head_column(table["head"])
    return table[[c for c in COLUMNS if c in table.columns] + [c for c in table.columns if c not in COLUMNS]]


def _default_load(path):
    from codetransfer.trained import load_run

    return load_run(path, device="cpu")


def _default_generate(task: str, n: int, seed: int):
    from codetransfer.tasks import get_task

    return get_task(task).generate(n, seed)


def run_probe_sweep(
    runs: Sequence,
    tasks: Sequence[str],
    sites: Sequence[str],
    out_dir: str | os.PathLike,
    shard: tuple[int, int] = (0, 1),
    *,
    n_items: int = 200,
    item_seed: int = 0,
    probe: str = "linear",
    probe_params: Mapping | None = None,
    target: str = "label",
    split: str = "entity",
    seeds: Sequence[int] = (0, 1, 2),
    min_rows: int = 20,
    cross_format: bool = True,
    mdl: bool = True,
    batch_size: int = 16,
    keep_stores: bool = True,
    labels: Sequence[str] | None = None,
    load: Callable | None = None,
    generate: Callable | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Probe runs × tasks × site kinds, one atomic parquet part per unit; skip finished units.

    Args:
        runs: run infos (``.name, .path, .recipe, .seed``) from ``codetransfer.trained.find_runs``.
        tasks: task family names.
        sites: site kinds (``resid_post``...) or ``kind.layer``; each is one unit per (run, task).
        out_dir: where ``parts/``, ``stores/`` and the merged ``probes.parquet`` go.
        shard: ``(i, n)``: this process does the i-th of n contiguous blocks of the sorted unit
            list (contiguous, so that a shard loads each of its runs once).
        n_items, item_seed: items generated per task.
        probe, probe_params, target, split, seeds, min_rows, cross_format, mdl: as :func:`probe_store`.
        labels: label-name patterns to probe (:func:`item_rows`; e.g. :data:`NONLOCAL_LABELS`); None: all.
        load: ``path -> run`` with ``.bridge`` and ``.tokenizer`` (default ``trained.load_run``).
        generate: ``(task, n, seed) -> items`` (default ``tasks.get_task(task).generate``).

    Returns:
        the merged table of every part present in ``out_dir`` (all shards done so far).
    """
    i, n = shard
    if not (isinstance(i, int) and isinstance(n, int) and n >= 1 and 0 <= i < n):
        raise CodetransferError(f"shard: expected (i, n) with 0 <= i < n, got {shard!r}; e.g. --shard 0/4")
    if not runs or not tasks or not sites:
        raise CodetransferError("runs, tasks and sites: expected at least one of each, got an empty list")
    labels = check_label_patterns(labels)
    load = load or _default_load
    generate = generate or _default_generate
    out_dir = Path(out_dir)
    units = sorted((str(r.name), t, s) for r in runs for t in tasks for s in sites)
    by_name = {str(r.name): r for r in runs}
    mine = artifacts.shard_units(units, (i, n))
    loaded_name, loaded = None, None
    items_cache: dict = {}
    settings = {
        "n_items": n_items,
        "item_seed": item_seed,
        "probe": probe,
        "probe_params": probe_params,
        "target": target,
        "split": split,
        "seeds": list(seeds),
        "min_rows": min_rows,
        "cross_format": cross_format,
        "mdl": mdl,
    }
    if labels is not None:  # only when given: the parts of sweeps over every label keep their keys
        settings["labels"] = list(labels)
    for run_name, task, site in mine:
        part = out_dir / "parts" / f"{_safe(run_name)}__{_safe(task)}__{_safe(site)}.parquet"
        info = by_name[run_name]
        key = _part_key(settings, info, task, site)
        if part.exists() and _read_part_key(part) == key:
            continue  # finished with the same settings and model (another key: redone, never merged stale)
        if progress:
            progress(f"probing {run_name} / {task} / {site}")
        if loaded_name != run_name:
            loaded, loaded_name = load(info.path), run_name
        bridge = loaded.bridge
        # refuse a site the model lacks before any work is written
        site_names = [s.name for s in parse_sites([site], int(bridge.cfg.n_layers))]
        if task not in items_cache:
            items_cache[task] = generate(task, n_items, item_seed)
        items = items_cache[task]
        if not items:
            raise CodetransferError(f"task '{task}': the generator returned no items; raise --n-items")
        tokens, positions, index = item_rows(items, loaded.tokenizer, twins=cross_format, labels=labels)
        store_dir = out_dir / "stores" / _safe(run_name) / _safe(task) / _safe(site)
        version = str(getattr(items[0], "version", ""))
        expect = {"run": run_name, "task": task, "task_version": version, "seed": item_seed}
        try:  # a unit interrupted after extraction reuses its store, if it was made from the same inputs
            store = ActivationStore.open(store_dir, expect=expect)
            if (
                sorted(store.sites) != sorted(site_names)
                or store.n_rows != len(index)
                or list(store.index["label"]) != list(index["label"])
            ):
                raise CodetransferError("store differs")
        except CodetransferError:
            store = ActivationStore.create(
                store_dir,
                **expect,
                sites=site_names,
                d_model=int(bridge.cfg.d_model),
                n_heads=int(bridge.cfg.n_heads),
                capacity=max(1, len(index)),
                extra={"recipe": getattr(info, "recipe", None), "run_seed": getattr(info, "seed", None)},
                overwrite=True,
            )
            store = extract_activations(bridge, tokens, positions, [site], store, batch_size=batch_size, index=index)
        meta = {
            "run": run_name,
            "recipe": getattr(info, "recipe", None),
            "seed": getattr(info, "seed", None),
            "task": task,
        }
        table = probe_store(
            store,
            target=target,
            split=split,
            probe=probe,
            probe_params=probe_params,
            seeds=seeds,
            min_rows=min_rows,
            cross_format=cross_format,
            mdl=mdl,
            meta=meta,
            skipped=(lambda m: progress(f"skipped {run_name}/{task}/{site} {m}")) if progress else None,
        )
        part.parent.mkdir(parents=True, exist_ok=True)
        _atomic_parquet(table, part, key=key)
        if not keep_stores:
            shutil.rmtree(store_dir, ignore_errors=True)
    return merge_parts(out_dir)


def merge_parts(out_dir: str | os.PathLike) -> pd.DataFrame:
    """Concatenate every finished part into ``probes.parquet`` (atomic) and return it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = sorted((out_dir / "parts").glob("*.parquet"))
    from codetransfer.trained.checks import read_table

    frames = [read_table(p, "probe part", fix="delete it and rerun the sweep (or that shard)") for p in parts]
    frames = [f for f in frames if len(f)]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    _atomic_parquet(table, out_dir / "probes.parquet")
    return table
