"""Shared fixtures: tiny models built (not trained) in a temporary folder, offline."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch  # noqa: F401  (imported before the tests import transformers)

from codetransfer.trained.config import ModelConfig

TINY = ModelConfig(n_layers=2, d_model=64, n_heads=4, d_mlp=256, n_ctx=64)

TOKENIZER_TEXTS = ["The pen is in box A. The apple is in box B. Where is the pen? The pen is in box A."] * 50 + [
    "def f(x):\n    return x + 1\nbox_a = ['pen']\nprint(box_a)\n"
] * 50


def save_tiny_model(folder, cfg: ModelConfig = TINY, seed: int = 0, vocab_size: int = 400):
    """Save a randomly initialised model of shape ``cfg`` and a small BPE tokenizer to ``folder``."""
    from codetransfer.trained.model import build_model
    from codetransfer.trained.tokenizer import train_tokenizer

    tok = train_tokenizer(TOKENIZER_TEXTS, vocab_size=vocab_size, min_frequency=1)
    tok.save_pretrained(folder)
    build_model(cfg, vocab_size=len(tok), seed=seed).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved random 2-layer GPT-NeoX (d_model 64, 4 heads) + tokenizer (bos=0, eos=1, pad=2)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_bridge(tiny_model_dir):
    """A TransformerBridge booted fresh from ``tiny_model_dir`` (eval mode, CPU, float32)."""
    from codetransfer.trained.loading import load_bridge

    bridge, _ = load_bridge(tiny_model_dir, device="cpu")
    return bridge


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from codetransfer.trained.tokenizer import load_tokenizer

    return load_tokenizer(tiny_model_dir)
