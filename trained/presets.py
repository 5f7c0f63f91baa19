"""Named grids shipped with the package: the paper's variants at three sizes.

"To Code or Not to Code?" (Aryabumi et al., 2024) compared, at equal model shape and tokenizer:
text-only; balanced (50% code); code→text (initialise on code, continue on text); balanced→text;
a code-share sweep (0–100% code); a cooldown phase with and without (high-quality, synthetic) code;
and competitive (fixed total tokens) versus additive (fixed text tokens) mixing.

Here "text" is real English (GCIDE glosses) plus world-simulator narratives, and "code" is the
standard library plus world-simulator programs. Sizes:

* ``tiny``       — the demo: a controlled grid (:func:`tiny_arms`: one shared base per seed, then arms that
                   each differ from another in one thing), 2-layer Llama d_model 64 after an induction
                   warm-up, 3 seeds, trains on 2 CPU cores within the demo's budget;
* ``tiny-full``  — every variant of the paper at the tiny size, one seed;
* ``control``    — the planted-transfer control (docs/control.md): copy / scrambled / no warm-up rows, then text;
* ``control-aligned`` — the same known answer in arms branched from one base (a planted circuit kept or erased),
                   aligned so that cross-model patching applies;
* ``emergence``  — the emergence question (docs/emergence.md): the tiny shape from scratch with no warm-up,
                   text-only / text-diluted / balanced / code-only, 3 seeds, 16M tokens per run (about where
                   induction heads emerge for batch 8 x 128), a snapshot every 1M: about 2 h on 2 CPU cores;
* ``small``      — every variant, 4 layers d_model 256: hours on a CPU, minutes on a GPU;
* ``gpu``        — every variant, 12 layers d_model 768 (~85M non-embedding parameters), 100M tokens per
                   run, one seed: 1.07B tokens for the whole grid (shared phases trained once), which one
                   H200 trained in about 55 minutes at the 327k tokens/s measured there with GPT-NeoX blocks
                   of the same size (bf16, micro-batch 16 x 1024); more seeds or tokens with torchrun on several
                   GPUs (docs/scaling.md).

``small`` and ``gpu`` use the design the tiny grid learns with (docs/learnability.md): Llama blocks (gated MLP,
no biases, rotary on every dimension) and the induction warm-up. GPT-NeoX at d_model 64-128 never grew an
induction head within the budgets tried there, and their batches put natural emergence late (Aoyama et al.'s
fit: about 64M tokens for ``small``'s 64 x 256, 256M for ``gpu``'s 256 x 1024, beyond their 50M and 100M per
run). Their warm-up's learning rate is scaled to their width (:func:`warmup_lr`): at ``small``'s shape the tiny
grid's 2e-3 never planted the circuit, 5e-4 does by step 1,500, and a ``small`` model trained on ``text-only`` for
a tenth of its budget (5M tokens, CPU) is far above the copy baseline at difficulty 0 (entity tracking 0.95,
binding 0.92, counting 0.89, possession 0.71; docs/learnability.md). ``gpu``'s warm-up (d_model 768) follows the
rule unmeasured: check it with ``bench/gpu_check.sh`` before a long sweep.
"""

from __future__ import annotations

import dataclasses

from codetransfer.errors import CodetransferError, did_you_mean
from codetransfer.trained.config import (
    GridConfig,
    LRSchedule,
    ModelConfig,
    Phase,
    Recipe,
    SourceConfig,
    TokenizerConfig,
    TrainConfig,
    grid_from_dict,
)

TEXT = ("gcide", "narratives")
CODE = ("stdlib", "programs")


SYNTHETIC_SHARE = 0.75
"""Share of the synthetic (world-simulator) source inside the text part and inside the code part.

The tiny grid's text-only mixture (75% narratives) is the one measured in docs/learnability.md."""


def mix(code_share: float, synthetic_code_boost: float = 1.0) -> dict[str, float]:
    """Mixture with ``code_share`` of code; inside text and inside code, SYNTHETIC_SHARE is synthetic
    (synthetic code weighted ``synthetic_code_boost`` times more in a cooldown)."""
    text = 1.0 - code_share
    syn = SYNTHETIC_SHARE
    code_synth = syn * synthetic_code_boost / (syn * synthetic_code_boost + 1 - syn)
    out = {
        "gcide": text * (1 - syn),
        "narratives": text * syn,
        "stdlib": code_share * (1 - code_synth),
        "programs": code_share * code_synth,
    }
    return {k: round(v, 6) for k, v in out.items() if v > 0}


def recipes(tokens: int, peak_lr: float, full: bool) -> tuple[Recipe, ...]:
    """The paper's recipes for a total budget of ``tokens`` per run (additive mixing: more)."""
    lr = LRSchedule(schedule="cosine", peak=peak_lr, final=peak_lr / 10, warmup=0.05)
    init = LRSchedule(schedule="cosine", peak=peak_lr, final=peak_lr / 2, warmup=0.05)
    cont = LRSchedule(schedule="cosine", peak=peak_lr / 2, final=peak_lr / 10)
    hold = LRSchedule(schedule="constant", peak=peak_lr / 2)
    cool = LRSchedule(schedule="linear", peak=peak_lr / 2, final=0.0)
    half, main, tail = tokens // 2, tokens * 4 // 5, tokens // 5

    def one(name, share, desc):
        return Recipe(name, (Phase("main", mix(share), tokens, lr),), desc)

    init_bal = Phase("balanced-init", mix(0.5), half, init)
    init_code = Phase("code-init", mix(1.0), half, init)
    text_cont = Phase("text", mix(0.1), half, cont)  # the paper's continued pre-training keeps ~10% code
    core = [
        one("text-only", 0.0, "baseline: no code"),
        one("balanced", 0.5, "50% code throughout"),
        Recipe("code->text", (init_code, text_cont), "initialise on code, continue mostly on text"),
        Recipe("balanced->text", (init_bal, text_cont), "the paper's best recipe: balanced init, then mostly text"),
        Recipe(
            "balanced->text+cooldown-code",
            (init_bal, Phase("text", mix(0.1), main - half, hold), Phase("cooldown", mix(0.2, 3.0), tail, cool)),
            "balanced->text with a cooldown that upweights (synthetic) code",
        ),
    ]
    if not full:  # the demo: the paper's four headline recipes
        return tuple(r for r in core if r.name in ("text-only", "balanced", "code->text", "balanced->text"))
    extra = [one(f"code-{int(s * 100)}", s, f"code-share sweep: {int(s * 100)}% code") for s in (0.25, 0.75, 0.9, 1.0)]
    extra += [
        Recipe(
            "balanced->text+cooldown-text",
            (init_bal, Phase("text", mix(0.1), main - half, hold), Phase("cooldown", mix(0.0), tail, cool)),
            "balanced->text with a text-only cooldown (control for the code cooldown)",
        ),
        Recipe(
            "additive-50",
            (Phase("main", mix(0.5), 2 * tokens, lr),),
            "additive mixing: the text-only run's text tokens plus as many code tokens",
        ),
    ]
    # competitive mixing at 50% is 'balanced' (fixed total tokens)
    return tuple(core + extra)


def sources(scale: int) -> dict[str, SourceConfig]:
    """The embedded default sources; ``scale`` caps each source's bytes."""
    return {
        "gcide": SourceConfig(kind="gcide", max_bytes=scale),
        "narratives": SourceConfig(kind="synthetic_narrative", max_bytes=scale),
        "stdlib": SourceConfig(kind="stdlib", max_bytes=scale),
        "programs": SourceConfig(kind="synthetic_program", max_bytes=scale),
    }


TINY_BASE_TOKENS = 250_000
"""Tokens of the tiny grid's shared base phase (after the warm-up): the lookup is in place by then."""
TINY_ARM_TOKENS = 500_000
"""Tokens of each tiny arm after the base (750k tokens per run in all)."""
NARRATIVE_DOSE = 0.375
"""Share of narratives in the tiny grid's code arms and in ``text-diluted``: half of text-only's 0.75."""


def tiny_arms(base_tokens: int = TINY_BASE_TOKENS, arm_tokens: int = TINY_ARM_TOKENS) -> tuple[Recipe, ...]:
    """The controlled arms of the tiny grid: one shared base (trained once per seed and branched from, so
    every arm starts from the same weights), then one continuation per arm. Each arm differs from one other
    arm in one thing, named in its description:

    * ``text-only`` -- the base's text mixture (75% narratives, 25% GCIDE glosses);
    * ``text-diluted`` -- the code arms' narrative dose (37.5%), the rest neutral English (GCIDE): against
      ``text-only`` it measures the dose alone;
    * ``text+stdlib`` -- the same narrative dose, natural code (the standard library) in place of half of the
      English: against ``text-diluted``, code that is not about the task versus English;
    * ``text+programs`` -- the same, with the world simulator's programs (same-world code): against
      ``text+stdlib``, code about the task versus code that is not;

    The paper's recipes themselves (balanced, code->text, balanced->text ...) are in ``tiny-full``.
    """
    base = Phase("base", mix(0.0), base_tokens, LRSchedule(schedule="cosine", peak=3e-3, final=1.5e-3, warmup=0.05))
    cont = LRSchedule(schedule="cosine", peak=1.5e-3, final=3e-4)
    diluted = {"gcide": round(1 - NARRATIVE_DOSE, 6), "narratives": NARRATIVE_DOSE}
    with_code = {"gcide": round(0.5 - NARRATIVE_DOSE, 6), "narratives": NARRATIVE_DOSE}

    def arm(name, mixture, desc, control=""):
        return Recipe(name, (base, Phase("arm", mixture, arm_tokens, cont)), desc, control)

    return (
        arm("text-only", mix(0.0), "baseline: the base's text mixture continued (75% narratives)"),
        arm(
            "text-diluted",
            diluted,
            "the code arms' narrative dose (37.5%), the rest English glosses: the dose of task text alone",
        ),
        arm(
            "text+stdlib",
            {**with_code, "stdlib": 0.5},
            "natural code instead of half the English, same narrative dose: code vs English",
            "text-diluted",
        ),
        arm(
            "text+programs",
            {**with_code, "programs": 0.5},
            "same-world programs instead of half the English, same narrative dose: task code vs other code",
            "text+stdlib",
        ),
    )


WARMUP_STEPS = 1000
"""Steps of the induction warm-up at the tiny shape (tiny, tiny-full, control, emergence's warm-up arms)."""


def warmup_lr(d_model: int) -> float:
    """Learning rate of the induction warm-up at width ``d_model``: 2e-3 at d_model 64, scaled as 1 / d_model.

    Measured at ``small``'s shape (``bench/warmup_shape.py``, docs/learnability.md): at 2e-3 the copy loss stays at
    uniform guessing for 5,300 steps; at 5e-4 (this rule at d_model 256) an induction head (0.94) and its
    previous-token partner (1.00) form by step 1,500 and the copy loss falls from 8.3 to 1.5 nats; at 2.5e-4 the
    circuit has not formed by step 1,500. At d_model 512 the rule's 2.5e-4 had not formed it by step 2,000 with 2
    layers (its previous-token head sat in the last layer) nor with 4 (copy loss 5.09, still falling): a starting
    point for wider models, not a measured law. Adam's update moves a width-d layer's output about d times a
    coordinate's step, hence 1 / d (as muP's hidden-layer rule)."""
    return float(f"{2e-3 * 64 / d_model:.2g}")


def _tiny_grid(name: str, description: str, recipes_: tuple[Recipe, ...], seeds: tuple[int, ...]) -> GridConfig:
    # Sized by measurement (docs/learnability.md): a Llama block (gated MLP, no biases), d_model 64
    # and a 512-token BPE, after a 1,000-step induction warm-up, looks keys up in the narratives within 1M
    # tokens; GPT-NeoX at d_model 128 with 2,048 tokens did not in 16M. Snapshots every 250 steps give the
    # learning curves their intermediate checkpoints.
    return GridConfig(
        name=name,
        description=description,
        model=ModelConfig(arch="llama", n_layers=2, d_model=64, n_heads=4, d_mlp=256, n_ctx=128),
        tokenizer=TokenizerConfig(vocab_size=512, sample_bytes=1_000_000),
        sources=sources(2_000_000),
        recipes=recipes_,
        seeds=seeds,
        train=TrainConfig(
            batch_size=8,
            eval_every=250,
            eval_tokens=8192,
            save_every=250,
            snapshot_every=250,
            induction_warmup=WARMUP_STEPS,
        ),
    )


def _tiny() -> GridConfig:
    return _tiny_grid(
        "tiny",
        "demo-sized controlled grid: 2-layer Llama, d_model 64, BPE 512, an induction warm-up and a "
        "shared 250k-token text base per seed, then four 500k-token arms; 3 seeds",
        tiny_arms(),
        (0, 1, 2),
    )


def _tiny_full() -> GridConfig:
    """Every variant of the paper at the tiny size, from scratch (after the warm-up), one seed."""
    return _tiny_grid(
        "tiny-full",
        "every variant of the paper at the tiny size: 2-layer Llama, d_model 64, BPE 512, an induction "
        "warm-up, then 1M tokens per run",
        recipes(tokens=1_000_000, peak_lr=3e-3, full=True),
        (0,),
    )


def control_arms(text_tokens: int = 1_000_000) -> tuple[Recipe, ...]:
    """The planted-transfer control's arms (docs/control.md): the same text phase after three starts. ``copy``
    starts with the warm-up's periodic rows, whose loss rewards copying a repeated span (it plants the lookup
    circuit: a previous-token head and an induction head); ``scrambled`` with the same rows, tokens shuffled
    (the same tokens and optimisation, nothing to copy); ``text-only`` with nothing. An instrument that finds
    no difference between ``copy`` and the others misses a transfer known to be there."""
    text = Phase("text", mix(0.0), text_tokens, LRSchedule(schedule="cosine", peak=3e-3, final=3e-4, warmup=0.05))
    return (
        Recipe("text-only", (text,), "baseline: the text phase from scratch, no warm-up", warmup="none"),
        Recipe(
            "scrambled",
            (text,),
            "the warm-up's rows with each row shuffled (same tokens, nothing to copy), then the text phase",
            "text-only",
            warmup="scrambled",
        ),
        Recipe(
            "copy",
            (text,),
            "the warm-up's periodic rows (copying rewarded: plants the lookup circuit), then the text phase",
            "scrambled",
            warmup="periodic",
        ),
    )


def _control() -> GridConfig:
    return _tiny_grid(
        "control",
        "planted-transfer control at the tiny shape: copy (periodic warm-up rows), scrambled (the same rows "
        "shuffled) and text-only (none), then the same 1M-token text phase; 3 seeds. The instruments must find "
        "the lookup circuit in copy only",
        control_arms(),
        (0, 1, 2),
    )


ALIGNED_BASE_TOKENS = 100_000
"""Tokens of the aligned control's shared text base, after the periodic warm-up."""
ALIGNED_ARM_TOKENS = 200_000
"""Tokens of each aligned control arm's text phase. Longer, the contrast fades: with 250k + 500k the erased arm
regrew part of the circuit (best induction head 0.08-0.21) while kept's eroded (0.38-0.44), and only attention
still told them apart (docs/control.md)."""


def aligned_control_arms(
    base_tokens: int = ALIGNED_BASE_TOKENS, arm_tokens: int = ALIGNED_ARM_TOKENS
) -> tuple[Recipe, ...]:
    """The aligned planted-transfer control's arms (docs/control.md): one shared base per seed, the periodic warm-up
    (which plants the lookup circuit) then text, and two branches from it. ``erased`` first trains on the warm-up's
    scrambled rows, which erase the circuit (same tokens, nothing to copy: copying is penalised), then text;
    ``kept`` continues on text. The arms share the base (initialisation, warm-up and first text phase), which the
    ``control`` preset's arms do not, so activations can be patched between them (cross-model patching): each
    instrument must find the circuit in ``kept`` and not in ``erased``. (Planting after a base does not work at
    this shape, and the arms' CKA still falls to the seed null's level: docs/control.md.)"""
    base = Phase("base", mix(0.0), base_tokens, LRSchedule(schedule="cosine", peak=3e-3, final=1.5e-3, warmup=0.05))
    cont = LRSchedule(schedule="cosine", peak=1.5e-3, final=3e-4)
    return (
        Recipe(
            "erased",
            (base, Phase("text", mix(0.0), arm_tokens, cont, warmup="scrambled")),
            "the shared base's circuit erased by the warm-up's scrambled rows (nothing to copy), then text",
        ),
        Recipe(
            "kept",
            (base, Phase("text", mix(0.0), arm_tokens, cont)),
            "the shared base (its circuit planted by the periodic warm-up), then text: the circuit kept",
            "erased",
        ),
    )


def _control_aligned() -> GridConfig:
    grid = _tiny_grid(
        "control-aligned",
        "aligned planted-transfer control at the tiny shape: a shared base per seed (the periodic warm-up, then 100k "
        "tokens of text), then kept (200k tokens of text) or erased (the scrambled rows, then the same text); 3 seeds, "
        "each arm also in a second data order (its cross-model null). The instruments, cross-model patching "
        "included, must find the lookup circuit in kept only",
        aligned_control_arms(),
        (0, 1, 2),
    )
    # a data-order twin of every run shares its base: the aligned null of cross-model patching
    return dataclasses.replace(grid, data_seeds=(1,))


EMERGENCE_STEPS = 16_384
"""Optimizer steps per emergence run: 16M tokens (2^24) at batch 8 x 128, about where Aoyama, Wilcox and
Schneider (2025)'s fit N = 10^5.7 sqrt(B C) puts induction-head emergence for that batch and context."""
EMERGENCE_SNAPSHOT = 1_024
"""Steps between the emergence runs' snapshots (1M tokens): 16 points per learning curve."""


def emergence_arms(tokens: int = EMERGENCE_STEPS * 8 * 128) -> tuple[Recipe, ...]:
    """The emergence grid's arms, each one phase from scratch with no warm-up: does code make the lookup circuit
    (previous-token + induction head) and the tasks that need it appear sooner?

    * ``text-only`` -- English only (75% narratives, 25% GCIDE glosses);
    * ``text-diluted`` -- balanced's narrative dose (37.5%), the rest English: the dose of task text alone;
    * ``balanced`` -- 50% code (the paper's competitive mixing), against ``text-diluted``: code in place of English
      at the same narrative dose;
    * ``code-only`` -- code only (75% the world simulator's programs, 25% the standard library).
    """
    lr = LRSchedule(schedule="cosine", peak=3e-3, final=3e-4, warmup=0.02)
    diluted = {"gcide": round(1 - NARRATIVE_DOSE, 6), "narratives": NARRATIVE_DOSE}

    def arm(name, mixture, desc, control=""):
        return Recipe(name, (Phase("main", mixture, tokens, lr),), desc, control)

    return (
        arm("text-only", mix(0.0), "baseline: English only (75% narratives), from scratch"),
        arm("text-diluted", diluted, "balanced's narrative dose (37.5%), the rest English glosses: the dose alone"),
        arm("balanced", mix(0.5), "50% code at the same narrative dose: code in place of English", "text-diluted"),
        arm("code-only", mix(1.0), "code only (75% same-world programs): does code alone grow the circuit?"),
    )


def _emergence() -> GridConfig:
    grid = _tiny_grid(
        "emergence",
        "the emergence question: the tiny shape from scratch with no warm-up, text-only / text-diluted / balanced / "
        "code-only, 16M tokens per run, a snapshot every 1M; 3 seeds; about 2 h on 2 CPU cores",
        emergence_arms(),
        (0, 1, 2),
    )
    # 8 MB per source: the 16M-token runs see each source's documents a few times, not 15
    train = dataclasses.replace(
        grid.train,
        induction_warmup=0,
        eval_every=EMERGENCE_SNAPSHOT,
        save_every=EMERGENCE_SNAPSHOT,
        snapshot_every=EMERGENCE_SNAPSHOT,
    )
    return dataclasses.replace(grid, sources=sources(8_000_000), train=train)


def _small() -> GridConfig:
    return GridConfig(
        name="small",
        description="4 layers, d_model 256, 50M tokens per run, 3 seeds: hours on a CPU, minutes on a GPU",
        model=ModelConfig(arch="llama", n_layers=4, d_model=256, n_heads=8, d_mlp=1024, n_ctx=256),
        tokenizer=TokenizerConfig(vocab_size=4096, sample_bytes=8_000_000),
        sources=sources(40_000_000),
        recipes=recipes(tokens=50_000_000, peak_lr=1e-3, full=True),
        seeds=(0, 1, 2),
        train=TrainConfig(
            batch_size=64,
            eval_every=250,
            save_every=500,
            snapshot_every=1000,
            induction_warmup=2000,  # the circuit forms by 1,500 steps at this shape (warmup_lr)
            induction_warmup_lr=warmup_lr(256),
            induction_warmup_required=True,  # hours of training: stop after the warm-up if it planted nothing
        ),
    )


def _gpu() -> GridConfig:
    return GridConfig(
        name="gpu",
        description="12 layers, d_model 768 (~85M non-embedding params), 100M tokens per run, 1 seed: "
        "about an hour on one H100/H200 for the whole grid",
        # a gated MLP of 2,048 (Llama's 8/3 d_model) keeps ~85M non-embedding parameters: 12 x (4 + 3 x 8/3) x 768^2
        model=ModelConfig(arch="llama", n_layers=12, d_model=768, n_heads=12, d_mlp=2048, n_ctx=1024),
        tokenizer=TokenizerConfig(vocab_size=8192, sample_bytes=20_000_000),
        sources=sources(0),
        recipes=recipes(tokens=100_000_000, peak_lr=6e-4, full=True),
        seeds=(0,),
        train=TrainConfig(
            batch_size=64,
            grad_accum=4,
            eval_every=200,
            save_every=500,
            snapshot_every=250,
            # not measured at this shape: the rule's lr plants at d_model 256 by 1,500 steps and not yet at 512 by 2,000
            # (docs/learnability.md); 6,000 steps of 32 x 48 rows are minutes on a GPU
            induction_warmup=6000,
            induction_warmup_lr=warmup_lr(768),
            induction_warmup_required=True,  # an hour of GPU: stop after the warm-up (minutes) if it planted nothing
        ),
    )


PRESETS = {
    "tiny": _tiny,
    "tiny-full": _tiny_full,
    "control": _control,
    "control-aligned": _control_aligned,
    "emergence": _emergence,
    "small": _small,
    "gpu": _gpu,
}


def preset(name: str) -> GridConfig:
    """The shipped grid called ``name`` (see PRESETS), validated by the loader of grid files
    (``grid_from_dict``) exactly as a user's file is."""
    if name not in PRESETS:
        raise CodetransferError(
            f"grid '{name}' is neither a .toml file nor a preset{did_you_mean(name, PRESETS)}; presets: {', '.join(PRESETS)}"
        )
    return grid_from_dict(PRESETS[name]().to_dict(), where=f"preset '{name}'")
