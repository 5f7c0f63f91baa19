"""`codetransfer tasks` and `codetransfer tasks show`."""

from __future__ import annotations

from codetransfer.cli import main
from codetransfer.tasks import get_task, task_names


def test_tasks_lists_every_family(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in task_names():
        line = next(l for l in out.splitlines() if l.startswith(name + " "))
        assert get_task(name).category in line and get_task(name).version in line


def test_tasks_show_prints_items_with_answer_marked(capsys):
    assert main(["tasks", "show", "counting", "--n", "2", "--seed", "5", "--difficulty", "1"]) == 0
    out = capsys.readouterr().out
    items = get_task("counting").generate(2, 5, 1)
    for it in items:
        assert it.prompt in out
        assert f"[{it.answer!r}]" in out
        assert f"counterfactual answer: {it.counterfactual.answer!r}" in out
        assert it.twin.prompt.splitlines()[-1] in out


def test_tasks_show_bad_input_is_one_line_error(capsys):
    assert main(["tasks", "show", "countin"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'counting'" in err and err.count("\n") == 1
    assert main(["tasks", "show", "counting", "--difficulty", "17"]) == 2
    assert "difficulty 17" in capsys.readouterr().err
    assert main(["tasks", "show", "counting", "--n", "0"]) == 2
