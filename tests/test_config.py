"""Grid files are validated into frozen configs; bad ones are refused naming the field."""

import tomllib

import pytest

from codetransfer.errors import CodetransferError
from codetransfer.trained.config import grid_from_dict, load_grid
from codetransfer.trained.presets import PRESETS, mix, preset
from gridfiles import MINI_GRID


def data():
    return tomllib.loads(MINI_GRID)


def test_valid_grid_roundtrip_and_frozen():
    g = grid_from_dict(data())
    assert g.model.d_model == 32 and len(g.recipes) == 3
    assert g.recipe("balanced->text").phases[1].weights() == {"gcide": 1.0}
    with pytest.raises(Exception):
        g.model.d_model = 64  # frozen


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda d: d["recipes"][0]["phases"][0].update(mixture={"gcdie": 1.0}),
            r"unknown source 'gcdie' \(did you mean 'gcide'\?\)",
        ),
        (lambda d: d["recipes"][0]["phases"][0].update(mixture={"gcide": -1.0}), r"weights must be >= 0"),
        (lambda d: d["recipes"][0]["phases"][0].update(mixture={"gcide": 0.0}), r"sum to zero"),
        (lambda d: d["recipes"][0]["phases"][0].pop("tokens"), r"phases\[0\].*tokens: required field is missing"),
        (lambda d: d["recipes"][0]["phases"][0].update(tokens=0), r"positive token budget"),
        (lambda d: d["sources"]["gcide"].update(kind="gcid"), r"unknown kind 'gcid' \(did you mean 'gcide'\?\)"),
        (lambda d: d["model"].update(d_modle=3), r"model.d_modle: unknown field \(did you mean 'd_model'\?\)"),
        (lambda d: d["model"].update(n_heads=3), r"not divisible by n_heads=3"),
        (lambda d: d["model"].update(n_layers="two"), r"model.n_layers: expected an integer, got 'two'"),
        (lambda d: d["recipes"][0]["phases"][0]["lr"].update(schedule="cosin"), r"lr.schedule: expected one of"),
        (lambda d: d["recipes"].append(dict(d["recipes"][0])), r"duplicate recipe name"),
    ],
)
def test_bad_grids_are_refused_naming_the_field(mutate, message):
    d = data()
    mutate(d)
    with pytest.raises(CodetransferError, match=message) as e:
        grid_from_dict(d)
    assert "\n" not in str(e.value)


def test_presets_load_and_unknown_preset_suggests():
    for name in PRESETS:
        g = preset(name)
        if name == "tiny":  # the controlled arms
            continue
        if name == "control":  # the planted-transfer control's arms
            assert [(r.name, r.warmup) for r in g.recipes] == [
                ("text-only", "none"), ("scrambled", "scrambled"), ("copy", "periodic")
            ]  # fmt: skip
            continue
        if name == "control-aligned":  # one base with the periodic warm-up; kept, or erased by the scrambled rows
            assert [(r.name, r.warmup, [p.warmup for p in r.phases]) for r in g.recipes] == [
                ("erased", "grid", ["none", "scrambled"]), ("kept", "grid", ["none", "none"])
            ]  # fmt: skip
            assert g.recipes[0].phases[0] == g.recipes[1].phases[0] and g.train.induction_warmup > 0
            continue
        if name == "emergence":  # from scratch: no warm-up, one phase per arm, a snapshot every 1M tokens
            assert [r.name for r in g.recipes] == ["text-only", "text-diluted", "balanced", "code-only"]
            assert g.train.induction_warmup == 0 and all(r.warmup == "grid" and len(r.phases) == 1 for r in g.recipes)
            assert g.train.snapshot_every * g.train.batch_size * g.model.n_ctx == 2**20
            assert g.recipes[0].phases[0].tokens == 2**24
            continue
        assert {r.name for r in g.recipes} >= {"text-only", "balanced", "code->text", "balanced->text"}
    full = {r.name for r in preset("tiny-full").recipes}
    assert {"code-25", "code-75", "code-90", "code-100", "balanced->text+cooldown-text", "additive-50"} <= full
    with pytest.raises(CodetransferError, match="did you mean 'tiny'"):
        load_grid("tinny")


def test_mixture_code_share():
    for share in (0.0, 0.25, 0.5, 0.9, 1.0):
        w = mix(share)
        assert sum(w.values()) == pytest.approx(1.0)
        assert w.get("stdlib", 0) + w.get("programs", 0) == pytest.approx(share)
    plain, boosted = mix(0.2), mix(0.2, synthetic_code_boost=3.0)
    assert boosted["programs"] / boosted["stdlib"] == pytest.approx(3 * plain["programs"] / plain["stdlib"])


def test_bookkeeping_fields_do_not_change_the_grid_identity_but_optimisation_does():
    import dataclasses

    from codetransfer.trained.presets import preset

    g = preset("tiny")
    for field, value in (("eval_every", 7), ("eval_tokens", 1024), ("save_every", 9), ("snapshot_every", 3)):
        other = dataclasses.replace(g, train=dataclasses.replace(g.train, **{field: value}))
        assert other.fingerprint() == g.fingerprint(), field
    for field, value in (("batch_size", 4), ("weight_decay", 0.0), ("grad_clip", 0.5)):
        other = dataclasses.replace(g, train=dataclasses.replace(g.train, **{field: value}))
        assert other.fingerprint() != g.fingerprint(), field


@pytest.mark.parametrize("name", ["text-only", "balanced->text", "code-25", "a_b.c+d", "x1"])
def test_valid_names(name):
    from codetransfer.trained.checks import check_name

    assert check_name(name, "n") == name


@pytest.mark.parametrize("name", ["", "../escaped", "a/b", ".hidden", "a..b", "a b", "-x", "x" * 65, "a\\b", 3])
def test_invalid_names_are_refused(name):
    from codetransfer.trained.checks import check_name

    with pytest.raises(CodetransferError, match="not a valid name"):
        check_name(name, "n")


def test_inside_refuses_paths_that_leave_the_output_folder(tmp_path):
    from codetransfer.trained.checks import inside

    assert inside(tmp_path, tmp_path / "runs" / "a-s0") == tmp_path / "runs" / "a-s0"
    with pytest.raises(CodetransferError, match="outside the output folder"):
        inside(tmp_path / "out", tmp_path / "out" / "runs" / ".." / ".." / "escaped")
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "elsewhere")  # a link that points outside
    with pytest.raises(CodetransferError, match="outside the output folder"):
        inside(tmp_path / "out", tmp_path / "out" / "link" / "x.npy")


def test_two_recipes_that_would_share_a_run_folder_are_refused_naming_both():
    d = data()
    d["recipes"].append({**d["recipes"][1], "name": "balanced-text"})
    with pytest.raises(CodetransferError, match="recipes 'balanced->text' and 'balanced-text' would share"):
        grid_from_dict(d)


@pytest.mark.parametrize(
    "table, field, value, message",
    [
        ("train", "weight_decay", -1.0, r"train.weight_decay: expected a value in \[0, 10\], got -1.0"),
        ("train", "beta1", 2.0, r"train.beta1: expected a value in \[0, 1\), got 2.0"),
        ("train", "beta2", float("nan"), "train.beta2: expected a finite number"),
        ("train", "save_every", 0, "train.save_every: expected a value >= 1, got 0"),
        ("train", "eval_tokens", 0, "train.eval_tokens"),
        ("model", "n_ctx", 100_000_000, "model.n_ctx"),
        ("tokenizer", "vocab_size", 10, "tokenizer.vocab_size"),
        ("train", "grad_clip", float("inf"), "train.grad_clip: expected a finite number"),
    ],
)
def test_numbers_are_checked_for_range_and_finiteness(table, field, value, message):
    d = data()
    d[table][field] = value
    with pytest.raises(CodetransferError, match=message):
        grid_from_dict(d)


def test_learning_rates_are_finite():
    for bad in (float("nan"), float("inf"), -1.0):
        d = data()
        d["recipes"][0]["phases"][0]["lr"]["peak"] = bad
        with pytest.raises(CodetransferError, match="lr.peak" if bad == -1.0 else "finite"):
            grid_from_dict(d)


def test_seeds_must_be_distinct_and_non_negative():
    for seeds, message in (([-1], r"seeds\[0\]"), ([0, 0], "duplicate seeds")):
        d = data()
        d["seeds"] = seeds
        with pytest.raises(CodetransferError, match=message):
            grid_from_dict(d)


def test_tiny_arms_share_one_base_and_differ_from_their_control_in_one_thing():
    g = preset("tiny")
    assert g.seeds == (0, 1, 2)
    arms = {r.name: r for r in g.recipes}
    assert set(arms) == {"text-only", "text-diluted", "text+stdlib", "text+programs"}
    assert all(r.phases[0] == g.recipes[0].phases[0] for r in g.recipes)  # one base, trained once per seed
    assert all(r.description for r in g.recipes)

    def dose(r, source):  # tokens of a source after the base
        return sum(p.tokens * p.weights().get(source, 0.0) for p in r.phases[1:])

    # the dose of task text is the same in the code arms and in text-diluted, half of text-only's
    for name in ("text-diluted", "text+stdlib", "text+programs"):
        assert dose(arms[name], "narratives") == pytest.approx(dose(arms["text-only"], "narratives") / 2)
    assert arms["text+stdlib"].compare_with == "text-diluted" and arms["text+programs"].compare_with == "text+stdlib"
    # each arm and its control differ in one source swapped for another at equal tokens
    for name in ("text+stdlib", "text+programs"):
        a, c = arms[name].phases[-1].weights(), arms[arms[name].compare_with].phases[-1].weights()
        changed = {s for s in a.keys() | c.keys() if a.get(s, 0) != pytest.approx(c.get(s, 0))}
        assert len(changed) == 2 and sum(a.get(s, 0) - c.get(s, 0) for s in changed) == pytest.approx(0)


def test_compare_with_names_another_recipe_and_is_bookkeeping():
    from codetransfer.trained.gridfile import grid_to_toml
    from codetransfer.trained.runs import recipe_hash

    d = data()
    d["recipes"][1]["compare_with"] = "text-only"
    g = grid_from_dict(d)
    assert g.recipes[1].compare_with == "text-only"
    assert recipe_hash(g.recipes[1]) == recipe_hash(grid_from_dict(data()).recipes[1])  # nothing to retrain
    assert grid_from_dict(tomllib.loads(grid_to_toml(g))) == g
    for bad, match in [("text-onyl", r"did you mean 'text-only'"), (d["recipes"][1]["name"], "not another recipe")]:
        d["recipes"][1]["compare_with"] = bad
        with pytest.raises(CodetransferError, match=match) as e:
            grid_from_dict(d)
        assert "compare_with" in str(e.value) and "\n" not in str(e.value)
