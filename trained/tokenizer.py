"""The grid's shared tokenizer and its BOS policy.

One byte-level BPE (HF ``tokenizers``) is trained on a sample of the grid's mixture and shared by
every run of the grid. It is saved as a ``PreTrainedTokenizerFast`` folder, so that
``AutoTokenizer.from_pretrained(run_dir)`` and ``TransformerBridge.boot_transformers(run_dir, tokenizer=...)``
load it.

BOS policy (explicit, the same in training and analysis): every document and every prompt is
encoded as ``[bos] + tokens(text)`` (training documents also end in ``[eos]``). Our own code encodes
with ``add_special_tokens=False`` and adds the BOS itself; the saved tokenizer carries a
``TemplateProcessing`` post-processor that adds the same BOS, so that other tools calling it with the
default ``add_special_tokens=True`` (``AutoTokenizer``, lm-evaluation-harness, nnsight) see the ids
training saw, and ``model_max_length`` is the grid's context length. Booted bridges get
``cfg.default_prepend_bos = True`` to match.

Tokenizers of models codetransfer did not train keep their own special tokens; the same policy
applies with the tokenizer's BOS, or its EOS where it has no BOS (TransformerLens' habit, e.g.
``<|endoftext|>`` for GPT-2 and Pythia), and its EOS as the pad token where it has none
(see :func:`bos_policy`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from codetransfer.errors import CodetransferError

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD)  # ids 0, 1, 2


#: ``model_max_length`` of HF tokenizers that do not know their model's context length
UNKNOWN_MAX_LENGTH = 1 << 30


def bos_post_processor():
    """The post-processor that makes the saved tokenizer add ``<|bos|>`` like training did."""
    from tokenizers import processors

    return processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B:1", special_tokens=[(BOS, 0)])


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, model_max_length: int | None = None):
    """Train a byte-level BPE on ``texts``; returns a ``PreTrainedTokenizerFast`` (bos=0, eos=1, pad=2).

    The tokenizer adds ``<|bos|>`` when called with special tokens (see the module's BOS policy) and
    knows ``model_max_length`` (the model's context length) when it is given.
    """
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
    if tok.token_to_id(BOS) != 0:
        raise CodetransferError(f"tokenizer: {BOS} did not get id 0; report this as a bug")
    tok.post_processor = bos_post_processor()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=model_max_length or UNKNOWN_MAX_LENGTH,
    )


@dataclass(frozen=True)
class BosPolicy:
    """How prompts are encoded for one model: ``[bos_id] + tokens(text)``, padded with ``pad_id``."""

    bos_id: int
    """Token id prepended to every prompt and document."""
    bos_token: str
    """That token as a string (``<|bos|>`` for our runs, ``<|endoftext|>`` for GPT-2 ...)."""
    bos_from: str
    """'bos' (the tokenizer's own BOS token) or 'eos' (the tokenizer has no BOS; its EOS is used)."""
    pad_id: int
    """Token id used to pad batches (never scored)."""
    pad_from: str
    """'pad' (the tokenizer's own pad token) or 'eos' (it has none; its EOS is used)."""

    def as_dict(self) -> dict:
        return {
            "bos_id": self.bos_id,
            "bos_token": self.bos_token,
            "bos_from": self.bos_from,
            "pad_id": self.pad_id,
            "pad_from": self.pad_from,
        }


def bos_policy(tokenizer) -> BosPolicy:
    """The BOS / pad policy of a loaded tokenizer (after :func:`load_tokenizer` filled the gaps)."""
    return (
        tokenizer.codetransfer_bos_policy if hasattr(tokenizer, "codetransfer_bos_policy") else _policy(tokenizer, "")
    )


def _policy(tok, folder) -> BosPolicy:
    if tok.eos_token_id is None and tok.bos_token_id is None:
        raise CodetransferError(
            f"tokenizer in {folder}: has neither a BOS nor an EOS token, so there is no token to start prompts "
            "with; add a bos_token to its tokenizer_config.json"
        )
    bos_from = "bos" if tok.bos_token_id is not None else "eos"
    pad_from = "pad" if tok.pad_token_id is not None else "eos"
    bos = tok.bos_token if bos_from == "bos" else tok.eos_token
    bos_id = tok.bos_token_id if bos_from == "bos" else tok.eos_token_id
    if pad_from == "eos" and tok.eos_token_id is None:
        pad_from, pad_id = "bos", bos_id
    else:
        pad_id = tok.pad_token_id if pad_from == "pad" else tok.eos_token_id
    return BosPolicy(bos_id=int(bos_id), bos_token=str(bos), bos_from=bos_from, pad_id=int(pad_id), pad_from=pad_from)


def _is_codetransfer_folder(folder: Path) -> bool:
    """A run folder or a grid's data/tokenizer folder (whose tokenizer must keep ids 0/1/2)."""
    return (folder / "codetransfer.json").is_file() or (folder.parent / "manifest.json").is_file()


def load_tokenizer(folder: str | Path):
    """Load a saved tokenizer and apply the BOS policy (see the module docstring).

    A codetransfer run's tokenizer must have bos/eos/pad ids 0/1/2. Any other tokenizer keeps its
    special tokens; where it has no BOS token its EOS becomes the BOS, where it has no pad token its
    EOS becomes the pad (recorded as ``tokenizer.codetransfer_bos_policy``, see :func:`bos_policy`).
    """
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise CodetransferError(
            f"no tokenizer.json in {folder}: expected a run or grid folder written by codetransfer, or a checkpoint "
            "saved with a fast tokenizer (tokenizer.save_pretrained)"
        )
    try:
        json.loads((folder / "tokenizer.json").read_text())
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as e:  # json / tokenizers / transformers raise several types for damaged files
        raise CodetransferError(
            f"{folder / 'tokenizer.json'}: damaged tokenizer ({type(e).__name__}); save the tokenizer again"
        ) from None
    if not getattr(tok, "is_fast", False):
        raise CodetransferError(f"tokenizer in {folder}: not a fast tokenizer; save it with tokenizers / transformers")
    ids = (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    if _is_codetransfer_folder(folder) and ids != (0, 1, 2):
        raise CodetransferError(
            f"tokenizer in {folder}: expected bos/eos/pad ids 0/1/2, got "
            f"{tok.bos_token_id}/{tok.eos_token_id}/{tok.pad_token_id}; retrain it with codetransfer"
        )
    policy = _policy(tok, folder)
    if policy.bos_from != "bos":
        tok.bos_token = policy.bos_token
    if policy.pad_from != "pad":
        tok.pad_token = tok.convert_ids_to_tokens(policy.pad_id)
    tok.codetransfer_bos_policy = policy
    return tok


def tokenizer_hash(tokenizer) -> str:
    """A content hash of the tokenizer's vocabulary, merges, normalisation and pre-tokenisation (to
    check two runs share one). The post-processor (which special tokens a default call adds) is left
    out, so a tokenizer hashes the same with or without the BOS post-processor."""
    from tokenizers import Tokenizer, processors

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    # the no-op template transformers gives a tokenizer without special-token rules, so that hashes
    # equal those of tokenizers saved before the BOS post-processor
    backend.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])
    return hashlib.sha256(backend.to_str().encode()).hexdigest()[:16]


def add_bos_to_saved_tokenizer(folder: str | Path, n_ctx: int) -> None:
    """Give a codetransfer tokenizer saved before the BOS post-processor existed (in a run or grid
    folder) that post-processor and ``model_max_length = n_ctx``, in place. Token ids of every
    ``add_special_tokens=False`` call, and :func:`tokenizer_hash`, stay the same."""
    folder = Path(folder)
    tok = load_tokenizer(folder)
    if (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) != (0, 1, 2) or tok.convert_ids_to_tokens(0) != BOS:
        raise CodetransferError(
            f"tokenizer in {folder}: not a codetransfer tokenizer (bos/eos/pad 0/1/2); "
            "other tokenizers keep their own special-token policy"
        )
    if n_ctx < 1:
        raise CodetransferError(f"n_ctx: expected the model's context length (>= 1), got {n_ctx}")
    tok.backend_tokenizer.post_processor = bos_post_processor()
    tok.model_max_length = n_ctx
    del tok.codetransfer_bos_policy
    tok.save_pretrained(str(folder))


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
        f"char_end: position {char_end} is outside the prompt ({offsets[-1][1]} characters); check the item's spans"
    )
