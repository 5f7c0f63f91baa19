"""Issue #3's bar as a test: the tiny preset's text-only model, trained from scratch as the demo trains it
(induction warm-up, the shared text base, then the text-only arm: 750k tokens), looks keys up on held-out names at the easiest level of every
reasoning family. About 90 s on 2 CPU cores (docs/learnability.md has the measurements behind the design)."""

from __future__ import annotations

from codetransfer.analysis.evaluate import score_runs, tidy_table
from codetransfer.tasks import get_task
from codetransfer.trained import find_runs, load_run, train_grid
from codetransfer.trained.presets import preset

REASONING = ("entity_tracking", "variable_binding", "counting", "possession")


def test_tiny_text_only_model_is_above_chance_at_the_easiest_level(tmp_path):
    train_grid(preset("tiny"), tmp_path, only=["text-only"], seeds=[0], progress=False, log=lambda *a: None)
    run = load_run(find_runs(tmp_path)[0])
    items = {t: get_task(t).generate(60, seed=11, difficulty=0, split="eval") for t in REASONING}
    table = tidy_table(score_runs([run], items), n_boot=1000)
    acc = table[(table.metric == "accuracy") & (table.run == run.info.name) & (table.difficulty == "0")].set_index(
        "task"
    )
    assert set(acc.index) == set(REASONING)
    for task, r in acc.iterrows():  # the 95% interval above a uniform guess, on every family
        assert r.ci_low > r.chance, (task, r.value, r.ci_low, r.chance)
    # and above what copying a mentioned value gets where copying is not enough: a lookup by key
    for task in ("entity_tracking", "variable_binding"):
        assert acc.loc[task, "ci_low"] > acc.loc[task, "copy_chance"], acc.loc[task].to_dict()
