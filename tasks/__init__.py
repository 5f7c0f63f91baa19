"""codetransfer.tasks: world simulator, text/code renderings, task families, synthetic corpus.

Public API::

    from codetransfer.tasks import get_task, list_tasks, Item, Label
    items = get_task("entity_tracking").generate(n=100, seed=0, difficulty=2)
"""

from codetransfer.tasks.items import CATEGORIES, RENDERINGS, Item, Label
from codetransfer.tasks.registry import get_task, get_tasks, list_tasks, task_names

__all__ = ["CATEGORIES", "RENDERINGS", "Item", "Label", "get_task", "get_tasks", "list_tasks", "task_names"]
