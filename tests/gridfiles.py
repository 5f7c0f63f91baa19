"""Small grid files for the training tests (seconds to train on 2 cores)."""

from __future__ import annotations

import textwrap

MINI_GRID = textwrap.dedent(
    """
    name = "mini"
    seeds = [0]
    [model]
    n_layers = 1
    d_model = 32
    n_heads = 2
    d_mlp = 64
    n_ctx = 32
    [tokenizer]
    vocab_size = 384
    sample_bytes = 100000
    [sources.stdlib]
    kind = "stdlib"
    max_bytes = 120000
    [sources.gcide]
    kind = "gcide"
    max_bytes = 120000
    [train]
    batch_size = 8
    eval_every = 10
    eval_tokens = 2048
    save_every = 5
    [[recipes]]
    name = "text-only"
    [[recipes.phases]]
    name = "main"
    mixture = { gcide = 1.0 }
    tokens = 10240
    lr = { schedule = "cosine", peak = 3e-3, final = 3e-4, warmup = 0.1 }
    [[recipes]]
    name = "balanced->text"
    [[recipes.phases]]
    name = "balanced"
    mixture = { gcide = 1, stdlib = 1 }
    tokens = 5120
    lr = { schedule = "cosine", peak = 3e-3, final = 1e-3 }
    [[recipes.phases]]
    name = "text"
    mixture = { gcide = 1 }
    tokens = 5120
    lr = { schedule = "linear", peak = 1e-3, final = 0 }
    [[recipes]]
    name = "balanced->code"
    [[recipes.phases]]
    name = "balanced"
    mixture = { gcide = 1, stdlib = 1 }
    tokens = 5120
    lr = { schedule = "cosine", peak = 3e-3, final = 1e-3 }
    [[recipes.phases]]
    name = "code"
    mixture = { stdlib = 1 }
    tokens = 5120
    lr = { schedule = "linear", peak = 1e-3, final = 0 }
    """
)


def write_grid(folder, text: str = MINI_GRID, name: str = "grid.toml"):
    path = folder / name
    path.write_text(text)
    return path


#: model, tokenizer and sources of the small grids on the world simulator's corpora (n_ctx 128: task items fit)
SYNTHETIC_HEAD = """
name = "{name}"
seeds = [0]
[model]
n_layers = 1
d_model = 32
n_heads = 2
d_mlp = 64
n_ctx = 128
[tokenizer]
vocab_size = 384
sample_bytes = 60000
[sources.gcide]
kind = "gcide"
max_bytes = 30000
[sources.narratives]
kind = "synthetic_narrative"
max_bytes = 30000
[sources.programs]
kind = "synthetic_program"
max_bytes = 30000
"""


def synthetic_grid(name: str, rest: str) -> str:
    """A grid file: SYNTHETIC_HEAD named ``name``, then ``rest`` (its [train] table and recipes)."""
    return SYNTHETIC_HEAD.format(name=name) + rest.lstrip("\n")
