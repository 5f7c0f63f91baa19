"""The task registry: look families up by name (lm-eval-harness style), list them.

The registry is the immutable tuple ``families.FAMILIES``; nothing is registered at import time
by side effect. ``get_task(name)`` returns the family object, whose ``generate(n, seed,
difficulty=None, split="eval")`` gives a list of :class:`~codetransfer.tasks.items.Item`. An unknown
name raises :class:`~codetransfer.errors.CodetransferError` with a "did you mean" hint.
"""

from __future__ import annotations

from codetransfer.errors import CodetransferError, did_you_mean
from codetransfer.tasks.families import FAMILIES, TaskFamily


def task_names() -> tuple[str, ...]:
    """Names of all task families, in registry order."""
    return tuple(f.name for f in FAMILIES)


def get_task(name: str) -> TaskFamily:
    """The task family called ``name``."""
    for f in FAMILIES:
        if f.name == name:
            return f
    raise CodetransferError(
        f"unknown task '{name}'{did_you_mean(str(name), task_names())}; choose one of {', '.join(task_names())}"
    )


def get_tasks(names: str | list[str]) -> list[TaskFamily]:
    """Several families from a list or a comma-separated string ('entity_tracking,counting')."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise CodetransferError("no task names given; pass e.g. 'entity_tracking,counting'")
    return [get_task(n) for n in names]


def list_tasks() -> list[dict]:
    """One dict per family: name, category, rendering, version, difficulties, description."""
    return [
        {
            "name": f.name,
            "category": f.category,
            "rendering": f.rendering,
            "version": f.version,
            "difficulties": list(f.difficulties),
            "description": f.description,
        }
        for f in FAMILIES
    ]
