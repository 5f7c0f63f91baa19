"""Export task items as local datasets and as lm-evaluation-harness tasks.

``export_tasks(names, out, format=...)`` writes, per task family, the items that
``codetransfer eval`` scores with the same ``n_items``, ``seed`` and ``max_difficulty`` (the
generators are seeded, so the same arguments give the same items):

- ``<task>.jsonl``: one item per line — ``task, index, version, seed, category, rendering,
  difficulty, template, prompt, candidates, label, answer, chance``;
- with ``format="lm-eval"`` also ``<task>.yaml``, an lm-evaluation-harness ``multiple_choice``
  task over the item's candidates (``doc_to_text: prompt``, ``doc_to_choice: candidates``,
  ``doc_to_target: label``, ``target_delimiter: ""`` because candidates carry their own leading
  space), and ``codetransfer.yaml``, a group of all of them. lm-eval's ``acc`` is then the
  summed-log-probability argmax over the candidates, which is ``codetransfer eval``'s accuracy.

Run them with ``lm_eval --model hf --model_args pretrained=RUN_FOLDER --include_path OUT --tasks
codetransfer``. The YAML files name their JSONL files by absolute path (lm-eval resolves data files
against the working directory): export again after moving the folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from codetransfer.errors import CodetransferError, did_you_mean

FORMATS = ("jsonl", "lm-eval")
GROUP = "codetransfer"
FIELDS = (
    "task",
    "index",
    "version",
    "seed",
    "category",
    "rendering",
    "difficulty",
    "template",
    "prompt",
    "candidates",
    "label",
    "answer",
    "chance",
)


def export_items(names: Sequence[str] | None, n_items: int, seed: int, max_difficulty: int | None = None) -> dict:
    """``{task: items}`` exactly as ``codetransfer eval --n-items N --seed S [--max-difficulty D]`` makes them."""
    from codetransfer.tasks import get_task, task_names

    known = list(task_names())
    names = list(names) if names else known
    if n_items < 1:
        raise CodetransferError(f"--n-items: expected a positive number of items per task, got {n_items}")
    out = {}
    for name in names:
        if name not in known:
            raise CodetransferError(
                f"--tasks: unknown task '{name}'{did_you_mean(name, known)}; choose from {', '.join(known)}"
            )
        items = list(get_task(name).generate(n_items, seed))
        if max_difficulty is not None:
            items = [it for it in items if it.difficulty <= max_difficulty]
        if not items:
            raise CodetransferError(f"--max-difficulty: task '{name}' has no items of difficulty <= {max_difficulty}")
        out[name] = items
    return out


def item_record(item) -> dict:
    """The JSON-able fields of one item (see the module docstring)."""
    rec = {k: getattr(item, k) for k in FIELDS if k not in ("candidates", "answer")}
    rec["candidates"] = list(item.candidates)
    rec["answer"] = item.answer
    return {k: rec[k] for k in FIELDS}


def lm_eval_yaml(task: str, data_file: Path) -> str:
    """The lm-evaluation-harness task config of one exported family (``multiple_choice``)."""
    return "\n".join(
        [
            f"# codetransfer task family '{task}' as an lm-evaluation-harness multiple-choice task:",
            "# candidates are scored by summed log-probability, like `codetransfer eval`.",
            f"task: {GROUP}_{task}",
            f"tag: {GROUP}_tasks",
            "dataset_path: json",
            "dataset_kwargs:",
            "  data_files:",
            f"    test: {json.dumps(str(data_file))}",
            "test_split: test",
            "output_type: multiple_choice",
            "doc_to_text: prompt",
            "doc_to_choice: candidates",
            "doc_to_target: label",
            'target_delimiter: ""',
            "metric_list:",
            "  - metric: acc",
            "    aggregation: mean",
            "    higher_is_better: true",
            "metadata:",
            "  version: 1.0",
            "",
        ]
    )


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def export_tasks(
    names: Sequence[str] | None,
    out: str | Path,
    *,
    format: str = "lm-eval",
    n_items: int = 200,
    seed: int = 0,
    max_difficulty: int | None = None,
) -> list[Path]:
    """Write the items of ``names`` (all families when empty) to ``out``; returns the files written.

    Everything is checked (format, task names, items) before the first file is written.
    """
    if format not in FORMATS:
        raise CodetransferError(
            f"--format: expected one of {', '.join(FORMATS)}, got {format!r}{did_you_mean(format, FORMATS)}"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CodetransferError(f"{out}: is a file; pass a folder to export into")
    items = export_items(names, n_items, seed, max_difficulty)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for task, its in items.items():
        data = out / f"{task}.jsonl"
        _write(data, "".join(json.dumps(item_record(it)) + "\n" for it in its))
        written.append(data)
        if format == "lm-eval":
            _write(out / f"{task}.yaml", lm_eval_yaml(task, data.resolve()))
            written.append(out / f"{task}.yaml")
    if format == "lm-eval":
        group = "\n".join(
            [
                f"group: {GROUP}",
                "task:",
                *[f"  - {GROUP}_{t}" for t in items],
                "aggregate_metric_list:",
                "  - metric: acc",
                "    aggregation: mean",
                "    weight_by_size: true",
                "metadata:",
                "  version: 1.0",
                "",
            ]
        )
        _write(out / f"{GROUP}.yaml", group)
        written.append(out / f"{GROUP}.yaml")
    return written
