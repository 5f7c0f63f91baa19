"""Induction warm-up: a few hundred steps of in-context copying before language-model training.

The method
----------
Every reasoning task of ``tasks/`` is a lookup: the answer is the token that followed the queried key
earlier in the prompt ("Joe 4 pears. ... Joe" -> " 4"). A transformer does that with two heads: a
previous-token head in one layer writes "the token before me was Joe" into the value's position, and an
induction head in a later layer attends from the query's "Joe" to that position and copies " 4". Small
models find this pair late: in language-model pre-training it appears after ~10^7 tokens at the tiny
grid's batch shape, and none of the tiny models measured grew it from the synthetic narratives in 24M
tokens (docs/learnability.md). On rows of random tokens whose second half repeats the first,
with the loss only on the repeated positions, a two-layer Llama grows it in 500-750 steps, provided the
rows use every token id of the vocabulary (with 40% of the output rows never seen it stays on the copying
plateau for 3,000 steps). Wider models need a smaller learning rate: a 4-layer d_model-256 Llama plants the
pair in 1,300-1,500 steps at 5e-4 and never at 2e-3 (``TrainConfig.induction_warmup_lr``).

So a run may start with ``TrainConfig.induction_warmup`` such steps (a curriculum: the circuit is
learned on clean data, then used and kept on the narratives). The rows: ``[bos] + r + x x x ...`` with
``r`` random and ``x`` a random span of 4-20 tokens repeated to the end of the 48-token row; ids drawn
uniformly from every non-special token of the vocabulary. The warm-up has its own AdamW (no weight
decay) and leaves no optimizer state behind; it depends only on the model shape, the vocabulary size, the
seed and its own settings, so :func:`warmed_up_state` computes it once per seed and caches it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Callable

import torch
from jaxtyping import Bool, Int
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from codetransfer.errors import CodetransferError

N_SPECIAL = 3
"""Token ids 0-2 are bos, eos and pad (``trained/tokenizer.py``); rows draw from the others."""
ROWS, ROW_LEN, PERIOD = 32, 48, (4, 20)


def random_spans(
    ids: Int[Tensor, " n_ids"], n: int, gen: torch.Generator, seq_len: int = ROW_LEN, period: tuple[int, int] = PERIOD
) -> tuple[Int[Tensor, "n seq"], Int[Tensor, "n 1"], Int[Tensor, "n 1"]]:
    """``n`` rows ``[bos] + random tokens from ids``, and per row a span: its length (drawn from ``period``)
    and its start, placed so that two copies of it fit in the row. The layouts below repeat that span."""
    if len(ids) < 2:
        raise ValueError(f"ids: expected at least 2 token ids to draw from, got {len(ids)}")
    x = ids[torch.randint(0, len(ids), (n, seq_len), generator=gen)]
    x[:, 0] = 0
    length = torch.randint(period[0], period[1] + 1, (n, 1), generator=gen)
    room = (seq_len - 1 - 2 * length).clamp_min(0) + 1
    start = 1 + (torch.rand(n, 1, generator=gen) * room).long()
    return x, length, start


def periodic_rows(
    ids: Int[Tensor, " n_ids"], n: int, gen: torch.Generator, seq_len: int = ROW_LEN, period: tuple[int, int] = PERIOD
) -> tuple[Int[Tensor, "n seq"], Bool[Tensor, "n seq"]]:
    """``n`` rows ``[bos] + r + x x x ...`` of tokens drawn uniformly from ``ids``, and the mask of positions
    predictable by copying (the token there equals the one a period earlier, from the second repeat's first
    token + 1 on). Also the rows of ``bench/attention_induction.py --data periodic``."""
    x, length, start = random_spans(ids, n, gen, seq_len, period)
    ar = torch.arange(seq_len)[None]
    idx = torch.where(ar >= start + length, start + (ar - start) % length, ar)
    return x.gather(1, idx), ar >= start + length + 1


def scrambled_rows(
    ids: Int[Tensor, " n_ids"], n: int, gen: torch.Generator, seq_len: int = ROW_LEN, period: tuple[int, int] = PERIOD
) -> tuple[Int[Tensor, "n seq"], Bool[Tensor, "n seq"]]:
    """:func:`periodic_rows` with each row's tokens after ``[bos]`` shuffled: the same tokens as often, the same
    loss positions, and no span to copy (the repeat structure destroyed). The planted-transfer control's twin:
    the same optimisation on the same token coverage that, unlike the periodic rows, rewards no induction head."""
    x, mask = periodic_rows(ids, n, gen, seq_len, period)
    order = torch.argsort(torch.rand(n, seq_len - 1, generator=gen), dim=1) + 1
    return torch.cat([x[:, :1], x.gather(1, order)], dim=1), mask


def induction_warmup(
    model,
    vocab_size: int,
    steps: int,
    lr: float,
    seed: int,
    device: str | torch.device = "cpu",
    log: Callable[[int, float], None] | None = None,
    scrambled: bool = False,
    rows: int = ROWS,
) -> float:
    """Train ``model`` in place for ``steps`` steps of ``rows`` rows on :func:`periodic_rows` (with ``scrambled``:
    :func:`scrambled_rows`); returns the last copy loss (nats on the predictable positions; a working induction
    head gives < 0.3, none ~ln(vocab)). ``rows`` other than :data:`ROWS` is for measurements
    (``bench/warmup_shape.py``): the training runs' warm-up and its cache use :data:`ROWS`."""
    if vocab_size <= N_SPECIAL + 1:
        raise ValueError(f"vocab_size: expected more than {N_SPECIAL + 1} tokens, got {vocab_size}")
    ids = torch.arange(N_SPECIAL, vocab_size)
    gen = torch.Generator().manual_seed(seed + 7)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    was_training = model.training
    model.train()
    loss_value = float("nan")
    for step in range(steps):
        x, mask = (scrambled_rows if scrambled else periodic_rows)(ids, rows, gen)
        x, mask = x.to(device), mask[:, 1:].to(device).float()
        logits = model(input_ids=x).logits[:, :-1].float()
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
        loss = (ce * mask).sum() / mask.sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if log is not None:
            log(step + 1, loss_value)
    model.train(was_training)
    return loss_value


PLANTED_COPY_LOSS = 1.0
"""Copy loss (nats) below which a periodic warm-up counts as having planted the circuit: the tiny shape ends at
0.16-0.47, ``small``'s at 0.19 (2,000 steps); without the circuit it stays near ln(vocabulary) (8.3 at 4,096 tokens)."""


def failed(copy_loss: float | None) -> bool:
    """Whether a periodic warm-up that ended with ``copy_loss`` did not plant the circuit (at or above
    :data:`PLANTED_COPY_LOSS`); an unknown loss (None, NaN) is not called a failure."""
    return copy_loss is not None and copy_loss >= PLANTED_COPY_LOSS


def not_planted(copy_loss: float | None, vocab_size: int, steps: int, lr: float) -> str | None:
    """The warning for a periodic warm-up that ended with ``copy_loss`` at or above :data:`PLANTED_COPY_LOSS`,
    else None: the runs would start their text phases without the copying circuit, and at the presets'
    budgets they then learn no lookup (docs/learnability.md)."""
    if not failed(copy_loss):
        return None
    return (
        f"the induction warm-up did not plant the copying circuit: copy loss {copy_loss:.2f} nats after {steps:,} "
        f"steps at lr {lr:g} (uniform guessing {math.log(vocab_size - N_SPECIAL):.2f}, planted below "
        f"{PLANTED_COPY_LOSS:g}); lower train.induction_warmup_lr (about 2e-3 x 64 / d_model) or raise "
        "train.induction_warmup (docs/learnability.md)"
    )


def warmed_up_state(
    model,
    cache_dir: Path,
    key: dict,
    vocab_size: int,
    steps: int,
    lr: float,
    seed: int,
    device: str | torch.device = "cpu",
    log: Callable[[int, float], None] | None = None,
    write: bool = True,
    scrambled: bool = False,
) -> tuple[bool, float | None]:
    """Bring ``model`` (freshly built for ``seed``) to its warmed-up weights: load them from ``cache_dir`` if
    a run with the same ``key`` (model shape etc.), steps, lr and seed computed them, else compute them
    (and save them when ``write``, with their last copy loss). Returns whether it computed them, and the
    warm-up's last copy loss (None from a cache file written before the loss was stored with it). The file is
    written atomically, so concurrent runs of one seed at worst compute the same weights twice."""
    ident = json.dumps({**key, "vocab_size": vocab_size, "steps": steps, "lr": lr, "seed": seed}, sort_keys=True)
    path = cache_dir / f"warmup-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.safetensors"
    if path.exists():
        try:
            with safe_open(str(path), framework="pt") as f:
                stored = (f.metadata() or {}).get("copy_loss")
            state = load_file(path)
            device_of = next(model.parameters()).device
            missing, unexpected = model.load_state_dict({k: v.to(device_of) for k, v in state.items()}, strict=False)
        except Exception as e:  # a truncated or foreign file
            raise CodetransferError(
                f"induction warm-up cache {path} is unreadable ({type(e).__name__}); delete it and rerun"
            ) from None
        tied = {k for k in missing if "lm_head" in k or "embed_out" in k}  # saved once, under the embedding
        if unexpected or set(missing) - tied:
            raise CodetransferError(
                f"induction warm-up cache {path} does not fit this model (missing {sorted(set(missing) - tied)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}); delete it and rerun"
            )
        try:
            return False, float(stored) if stored is not None else None
        except ValueError:  # not a number: a file written by something else; the weights fit, the loss is unknown
            return False, None
    copy_loss = induction_warmup(model, vocab_size, steps, lr, seed, device, log, scrambled=scrambled)
    if write:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        seen, unique = set(), {}
        for k, v in state.items():  # tied weights: save one copy
            if v.data_ptr() not in seen:
                seen.add(v.data_ptr())
                unique[k] = v
        save_file(unique, tmp, metadata={"ident": ident, "copy_loss": repr(copy_loss)})
        os.replace(tmp, path)
    return True, copy_loss
