"""Model sets: checkpoints codetransfer did not train, named in a TOML file, loaded as runs.

A model set lets every analysis (evaluation, probing, patching, attention) compare public models —
a base model and its code-trained sibling, or one model at several training steps — exactly as it
compares the runs of a trained grid. Each entry names a checkpoint by local folder or hub id and
gives it a ``group`` (the "recipe" of the comparison: ``base``, ``+code`` ...), a ``seed`` and
optionally a training ``step``::

    name = "pythia-code"          # optional; default: the file's stem
    baseline = "base"             # the group others are compared with

    [[model]]
    path = "ckpt/gpt2-small"      # a folder (relative to this file) ...
    group = "base"
    seed = 0

    [[model]]
    hub = "EleutherAI/pythia-70m-deduped"   # ... or a hub id (cached locally, or downloaded when online)
    revision = "step143000"                 # optional hub revision
    group = "+code"
    seed = 0
    step = 143000                           # optional
    name = "pythia-70m"                     # optional run name; default: derived from group, seed, step

:func:`load_model_set` validates the file (one-line errors naming the entry and field) and checks
every checkpoint folder before anything is loaded; :func:`model_runs` gives the same
:class:`~codetransfer.trained.runs.RunInfo` objects :func:`~codetransfer.trained.runs.find_runs`
gives for a trained grid (the group is the run's ``recipe``), so ``load_run(info)`` and every
analysis take them unchanged. The run record carries the model's shape (for
:func:`~codetransfer.trained.runs.check_same_grid`), its tokenizer hash, context length and BOS
policy.

Hub ids are resolved without waiting on a network that is not there: with ``HF_HUB_OFFLINE=1``
(codetransfer's default) only the local Hugging Face cache is consulted, and a missing id is
refused at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from codetransfer.errors import CodetransferError, did_you_mean
from codetransfer.trained.loading import check_model_folder, context_length, read_json, weight_files
from codetransfer.trained.runs import RunInfo

ENTRY_FIELDS = ("path", "hub", "revision", "group", "seed", "step", "name")
TOP_FIELDS = ("name", "baseline", "model")
#: files fetched for a hub id (never pickled weights, never code)
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


@dataclass(frozen=True)
class ModelEntry:
    """One checkpoint of a model set."""

    name: str
    """Run name (unique in the set); what tables' ``run`` column shows."""
    group: str
    """The comparison's "recipe" (``base``, ``+code`` ...); tables' ``recipe`` column."""
    seed: int
    """Seed (or replicate index) of the model within its group; tables' ``seed`` column."""
    source: str
    """The local folder or hub id as written in the file."""
    folder: Path
    """The resolved checkpoint folder (a hub id's local snapshot)."""
    step: int | None = None
    """Training step of the checkpoint, when the set compares one model over training."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of a hub id."""


@dataclass(frozen=True)
class ModelSet:
    """A validated model set: its entries and the baseline group."""

    name: str
    """Name of the set (the ``grid`` of its runs)."""
    baseline: str | None
    """The group others are compared with (must be one of the entries' groups)."""
    entries: tuple[ModelEntry, ...]
    """The checkpoints, in file order."""
    path: Path | None = None
    """The model-set file it was read from."""

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(e.group for e in self.entries))


def _where(path: Path, i: int | None, field: str) -> str:
    return f"{path}: model[{i}].{field}" if i is not None else f"{path}: {field}"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_hub_id(repo_id: str, revision: str | None = None, where: str = "hub") -> Path:
    """The local folder of hub model ``repo_id``: its cached snapshot, or (online only) a download of
    its json / safetensors / tokenizer files. Offline and not cached: refused at once, no network call."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?", repo_id):
        raise CodetransferError(f"{where}: {repo_id!r} is not a hub id (owner/name) or an existing folder")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(cached, str):
        return Path(cached).parent
    if _offline():
        raise CodetransferError(
            f"{where}: hub id {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; download it "
            f"first (huggingface-cli download {repo_id}) or unset HF_HUB_OFFLINE, or give a local folder as path"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # network, auth, missing repo: several types
        raise CodetransferError(
            f"{where}: cannot download {repo_id!r} ({type(e).__name__}); check the id, your network and your hub token"
        ) from None


def _int(value, where: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise CodetransferError(f"{where}: expected an integer >= {low}, got {value!r}")
    return value


def _str(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CodetransferError(f"{where}: expected a non-empty string, got {value!r}")
    return value.strip()


def parse_model_set(data: dict, path: Path, resolve: bool = True) -> ModelSet:
    """Validate the parsed TOML of a model set (``path`` names the file in errors and anchors
    relative folders). With ``resolve``, hub ids are resolved and every folder is checked."""
    for key in data:
        if key not in TOP_FIELDS:
            raise CodetransferError(
                f"{_where(path, None, key)}: unknown field{did_you_mean(key, TOP_FIELDS)}; "
                f"expected {', '.join(TOP_FIELDS)}"
            )
    models = data.get("model")
    if not isinstance(models, list) or not models:
        raise CodetransferError(f"{path}: no [[model]] entries; add one per checkpoint (path or hub, group, seed)")
    entries, names = [], {}
    for i, m in enumerate(models):
        if not isinstance(m, dict):
            raise CodetransferError(f"{_where(path, i, 'model')}: expected a [[model]] table")
        for key in m:
            if key not in ENTRY_FIELDS:
                raise CodetransferError(
                    f"{_where(path, i, key)}: unknown field{did_you_mean(key, ENTRY_FIELDS)}; "
                    f"expected {', '.join(ENTRY_FIELDS)}"
                )
        if ("path" in m) == ("hub" in m):
            raise CodetransferError(
                f"{_where(path, i, 'path')}: give exactly one of path (a local folder) or hub (a hub id)"
            )
        group = _str(m.get("group"), _where(path, i, "group"))
        seed = _int(m.get("seed"), _where(path, i, "seed"))
        step = _int(m["step"], _where(path, i, "step")) if "step" in m else None
        revision = _str(m["revision"], _where(path, i, "revision")) if "revision" in m else None
        if revision is not None and "hub" not in m:
            raise CodetransferError(f"{_where(path, i, 'revision')}: only hub ids have revisions; drop it or use hub")
        if "path" in m:
            source = _str(m["path"], _where(path, i, "path"))
            folder = Path(source).expanduser()
            folder = folder if folder.is_absolute() else path.parent / folder
            if resolve and not folder.is_dir():
                raise CodetransferError(f"{_where(path, i, 'path')}: folder {folder} does not exist")
        else:
            source = _str(m["hub"], _where(path, i, "hub"))
            folder = resolve_hub_id(source, revision, _where(path, i, "hub")) if resolve else Path(source)
        name = m.get("name")
        if name is None:
            safe_group = re.sub(r"[^A-Za-z0-9_.=-]+", "_", group.replace("+", "plus_")).strip("_") or "group"
            name = f"{safe_group}-s{seed}" + (f"-step{step}" if step is not None else "")
        name = _str(name, _where(path, i, "name"))
        if not _NAME.match(name):
            raise CodetransferError(
                f"{_where(path, i, 'name')}: {name!r} must be letters, digits and _ . + = - (it becomes a file name)"
            )
        if name in names:
            raise CodetransferError(
                f"{_where(path, i, 'name')}: run name {name!r} repeats model[{names[name]}]; give distinct group, "
                "seed or step, or a name"
            )
        names[name] = i
        entries.append(
            ModelEntry(
                name=name, group=group, seed=seed, source=source, folder=Path(folder), step=step, revision=revision
            )
        )
    groups = list(dict.fromkeys(e.group for e in entries))
    baseline = data.get("baseline")
    if baseline is not None:
        baseline = _str(baseline, _where(path, None, "baseline"))
        if baseline not in groups:
            raise CodetransferError(
                f"{_where(path, None, 'baseline')}: {baseline!r} is not a group of the set"
                f"{did_you_mean(baseline, groups)} ({', '.join(groups)})"
            )
    name = _str(data.get("name", path.stem), _where(path, None, "name"))
    if resolve:
        for i, e in enumerate(entries):
            try:
                check_model_folder(e.folder)
            except CodetransferError as err:
                raise CodetransferError(f"{path}: model[{i}] ({e.name}): {err}") from None
    return ModelSet(name=name, baseline=baseline, entries=tuple(entries), path=path)


def load_model_set(path: str | Path, resolve: bool = True) -> ModelSet:
    """Read and validate a model-set TOML file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CodetransferError(f"--models: {path} does not exist; write a model-set TOML file (see docs/models.md)")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CodetransferError(f"{path}: not valid TOML ({str(e).splitlines()[0]})") from None
    return parse_model_set(data, path, resolve=resolve)


def model_shape(config: dict) -> dict:
    """The shape fields of a HF config that decide whether two models can be compared site by site."""
    keys = {
        "n_layers": ("num_hidden_layers", "n_layer", "num_layers"),
        "d_model": ("hidden_size", "n_embd", "d_model"),
        "n_heads": ("num_attention_heads", "n_head", "num_heads"),
        "n_kv_heads": ("num_key_value_heads",),
        "vocab_size": ("vocab_size",),
    }
    out = {"model_type": config.get("model_type")}
    for name, options in keys.items():
        out[name] = next((config[k] for k in options if k in config), None)
    out["n_ctx"] = context_length(config)
    return out


def _weights_fingerprint(folder: Path) -> str:
    files = weight_files(folder)
    blob = json.dumps([[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def entry_record(entry: ModelEntry, set_name: str) -> dict:
    """The run record of a model-set entry (what ``codetransfer.json`` holds for a trained run)."""
    from codetransfer.trained.tokenizer import bos_policy, load_tokenizer, tokenizer_hash

    config = read_json(entry.folder / "config.json", "model config")
    tok = load_tokenizer(entry.folder)
    return {
        "name": entry.name,
        "grid": set_name,
        "recipe": entry.group,
        "recipe_hash": _weights_fingerprint(entry.folder),
        "seed": entry.seed,
        "status": "complete",
        "steps": entry.step,
        "source": "model_set",
        "checkpoint": entry.source,
        "revision": entry.revision,
        "model": model_shape(config),
        "n_ctx": context_length(config),
        "tokenizer_sha256": tokenizer_hash(tok),
        "bos_policy": bos_policy(tok).as_dict(),
        "torch_dtype": config.get("torch_dtype") or config.get("dtype"),
    }


def model_runs(model_set: ModelSet | str | Path) -> list[RunInfo]:
    """Run infos of a model set's checkpoints (group as recipe), ready for ``load_run`` and the analyses."""
    ms = model_set if isinstance(model_set, ModelSet) else load_model_set(model_set)
    return [
        RunInfo(
            name=e.name,
            path=e.folder,
            recipe=e.group,
            seed=e.seed,
            status="complete",
            grid=ms.name,
            record=entry_record(e, ms.name),
        )
        for e in ms.entries
    ]


def folder_run(folder: str | Path, group: str = "model", seed: int = 0, name: str | None = None) -> RunInfo:
    """The run info of one checkpoint folder (a one-entry model set), e.g. for a notebook."""
    folder = Path(folder)
    check_model_folder(folder)
    entry = ModelEntry(name=name or folder.name, group=group, seed=seed, source=str(folder), folder=folder)
    return RunInfo(
        name=entry.name,
        path=folder,
        recipe=group,
        seed=seed,
        status="complete",
        grid="",
        record=entry_record(entry, ""),
    )


def policy_table(runs: list[RunInfo]):
    """One row per run: name, group, seed, step, checkpoint, context length and BOS / pad policy
    (for reports, so that a table's numbers can be read with the encoding they were made with)."""
    import pandas as pd

    rows = []
    for r in runs:
        rec = r.record
        pol = rec.get("bos_policy") or {}
        rows.append(
            {
                "run": r.name,
                "recipe": r.recipe,
                "seed": r.seed,
                "step": rec.get("steps"),
                "checkpoint": rec.get("checkpoint", str(r.path)),
                "model_type": rec.get("model", {}).get("model_type"),
                "n_ctx": rec.get("n_ctx") or rec.get("model", {}).get("n_ctx"),
                "bos_token": pol.get("bos_token"),
                "bos_from": pol.get("bos_from"),
                "pad_from": pol.get("pad_from"),
            }
        )
    return pd.DataFrame(rows)


def select_runs(runs: str | Path | None = None, models: str | Path | None = None) -> list[RunInfo]:
    """The complete runs an analysis verb works on: the runs of a trained grid folder (``--runs``)
    or the checkpoints of a model-set file (``--models``), exactly one of the two.

    The verbs' context length is then ``runs[i].record["model"]["n_ctx"]`` for a model set, or
    :func:`~codetransfer.trained.loading.folder_context_length` of ``runs[i].path`` for either.
    """
    from codetransfer.trained.runs import find_runs

    if (runs is None) == (models is None):
        raise CodetransferError(
            "--runs / --models: give exactly one: a grid output folder (--runs) or a model-set "
            "TOML file (--models, see docs/models.md)"
        )
    if models is not None:
        return model_runs(models)
    found = find_runs(Path(runs), complete_only=True)
    if not found:
        raise CodetransferError(
            f"--runs: no complete runs in {runs}; train them with 'codetransfer train', or "
            "name checkpoints in a model-set file and pass --models FILE"
        )
    return found
