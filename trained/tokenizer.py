"""The grid's shared tokenizer and its BOS policy.

One byte-level BPE (HF ``tokenizers``) is trained on a sample of the grid's mixture and shared by
every run of the grid. It is saved as a ``PreTrainedTokenizerFast`` folder, so that
``AutoTokenizer.from_pretrained(run_dir)`` and ``TransformerBridge.boot_transformers(run_dir, tokenizer=...)``
load it.

BOS policy (explicit, the same in training and analysis): the tokenizer itself adds no special
tokens; every document and every prompt is encoded as ``[bos] + tokens(text)`` (training documents
also end in ``[eos]``). Booted bridges get ``cfg.default_prepend_bos = True`` to match.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from codetransfer.errors import CodetransferError

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD)  # ids 0, 1, 2


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """Train a byte-level BPE on ``texts``; returns a ``PreTrainedTokenizerFast`` (bos=0, eos=1, pad=2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise CodetransferError(
            f"tokenizer.vocab_size: expected at least 300 (256 bytes + specials + merges), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=1 << 30
    )


def load_tokenizer(folder: str | Path):
    """Load a saved grid tokenizer, checking the special-token contract."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise CodetransferError(f"no tokenizer.json in {folder}: is it a run or grid folder written by codetransfer?")
    tok = AutoTokenizer.from_pretrained(str(folder))
    if (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) != (0, 1, 2):
        raise CodetransferError(
            f"tokenizer in {folder}: expected bos/eos/pad ids 0/1/2, got "
            f"{tok.bos_token_id}/{tok.eos_token_id}/{tok.pad_token_id}; retrain it with codetransfer"
        )
    return tok


def tokenizer_hash(tokenizer) -> str:
    """A content hash of the tokenizer's vocabulary and merges (to check two runs share one)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def encode_with_bos(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``[bos] + tokens(text)`` and each token's character span in ``text``.

    The BOS token gets the empty span ``(0, 0)``.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [tokenizer.bos_token_id, *enc["input_ids"]], [(0, 0), *map(tuple, enc["offset_mapping"])]


def encode_documents(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Training encoding: ``[bos] + tokens(text) + [eos]`` per document (batched, fast)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    encs = tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)
    return [[bos, *e.ids, eos] for e in encs]


def char_to_token(offsets: Sequence[tuple[int, int]], char_end: int) -> int:
    """Index of the token that holds character ``char_end - 1`` (the last character of a span).

    ``offsets`` come from :func:`encode_with_bos`. Raises when the position is outside the text.
    """
    if char_end <= 0:
        raise CodetransferError(f"char_end: expected a position inside the prompt (> 0), got {char_end}")
    c = char_end - 1
    for i in range(len(offsets) - 1, 0, -1):
        start, end = offsets[i]
        if start <= c < end:
            return i
    raise CodetransferError(
        f"char_end: position {char_end} is outside the prompt ({offsets[-1][1]} characters); "
        "check the item's spans"
    )
