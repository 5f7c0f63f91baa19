"""Load a saved model folder as a TransformerBridge plus tokenizer — the one way analyses get a model.

A bridge is always booted fresh from the saved folder (wrapping a live HF model changes it in place),
with the tokenizer passed at boot, the BOS policy set to match training, an explicit device, and in
eval mode.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from codetransfer.errors import CodetransferError
from codetransfer.trained.tokenizer import load_tokenizer


def check_model_folder(folder: str | Path) -> Path:
    """Refuse folders without a complete HF checkpoint before transformers sees them."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CodetransferError(f"{folder}: no config.json; expected a run folder written by 'codetransfer train'")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise CodetransferError(f"{folder}: no model.safetensors; the run is incomplete — run 'codetransfer train' again")
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            names = list(f.keys())
            for n in names:  # reads every tensor: a truncated file fails here
                f.get_slice(n)[:1]
    except Exception as e:  # safetensors raises several types for damaged files
        raise CodetransferError(
            f"{weights}: damaged or truncated checkpoint ({type(e).__name__}); delete the run folder and retrain it"
        ) from None
    return folder


def load_hf_model(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The plain HF causal LM of a folder (safetensors only, never remote code), in eval mode."""
    from transformers import AutoModelForCausalLM

    folder = check_model_folder(folder)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=dtype, use_safetensors=True, trust_remote_code=False, attn_implementation="sdpa"
    )
    return model.to(device).eval()


def load_bridge(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """``(bridge, tokenizer)`` for a saved model folder: a fresh TransformerBridge in eval mode."""
    from transformer_lens import TransformerBridge

    folder = check_model_folder(folder)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = load_tokenizer(folder)
    bridge = TransformerBridge.boot_transformers(str(folder), tokenizer=tokenizer, device=device, dtype=dtype)
    bridge.cfg.default_prepend_bos = True
    return bridge.eval(), tokenizer


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CodetransferError(f"{path}: missing {what}") from None
    except json.JSONDecodeError as e:
        raise CodetransferError(f"{path}: damaged {what} ({e.msg} at line {e.lineno})") from None
