"""Load a saved model folder as a TransformerBridge plus tokenizer — the one way analyses get a model.

A bridge is always booted fresh from the saved folder (wrapping a live HF model changes it in place),
with the tokenizer passed at boot, the BOS policy set to match training, an explicit device, and in
eval mode.

The folder is checked before transformers sees it, so that a bad checkpoint gets a one-line error
instead of a traceback from deep inside ``from_pretrained``:

- ``config.json`` must parse, name a ``model_type`` that transformers knows as a causal LM, and
  carry no ``auto_map`` (models that need remote code are never run);
- weights are safetensors, one file (``model.safetensors``) or sharded
  (``model.safetensors.index.json`` plus every shard it names); pickled ``*.bin`` weights are refused;
- every tensor is readable (a truncated file fails here) and every tensor whose name the model
  declares has the shape that ``config.json`` implies.

Folders written by other tools (a GPT-2, Pythia or Llama saved with ``save_pretrained``) load the
same way; their weights may be fp16 or bf16 and are analysed in fp32 unless ``dtype`` says otherwise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from codetransfer.errors import CodetransferError, did_you_mean
from codetransfer.trained.tokenizer import load_tokenizer

SINGLE_WEIGHTS = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
#: config fields that hold a model's context length, in the order they are tried
CONTEXT_FIELDS = (
    "max_position_embeddings",
    "n_positions",
    "n_ctx",
    "seq_length",
    "max_sequence_length",
    "seq_len",
    "max_seq_len",
)


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CodetransferError(f"{path}: missing {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" ({e.msg} at line {e.lineno})" if isinstance(e, json.JSONDecodeError) else ""
        raise CodetransferError(f"{path}: damaged {what}{where}") from None


def context_length(config: dict) -> int:
    """The context length of a model from its ``config.json`` dict, whatever the field is called
    (``max_position_embeddings`` for GPT-NeoX / Llama, ``n_positions`` for GPT-2, ``n_ctx`` ...);
    nested ``text_config`` is searched too."""
    for cfg in (config, config.get("text_config") or {}):
        for key in CONTEXT_FIELDS:
            value = cfg.get(key)
            if isinstance(value, int) and value > 0:
                return value
    raise CodetransferError(
        f"config.json: no context length (none of {', '.join(CONTEXT_FIELDS)}); add one of them to the config"
    )


def folder_context_length(folder: str | Path) -> int:
    """:func:`context_length` of the ``config.json`` in ``folder``."""
    return context_length(read_json(Path(folder) / "config.json", "model config"))


def weight_files(folder: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint folder (one file or every shard of an index).

    Refuses folders with only pickled weights, indexes naming missing shards, and folders without weights.
    """
    folder = Path(folder)
    if (folder / SINGLE_WEIGHTS).is_file():
        return [folder / SINGLE_WEIGHTS]
    if (folder / SHARD_INDEX).is_file():
        index = read_json(folder / SHARD_INDEX, "shard index")
        shards = sorted(set((index.get("weight_map") or {}).values()))
        if not shards:
            raise CodetransferError(f"{folder / SHARD_INDEX}: no weight_map; the checkpoint is damaged, save it again")
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CodetransferError(
                f"{folder}: shard {missing[0]} (of {len(shards)}) named in {SHARD_INDEX} is missing; "
                "copy or download the whole checkpoint"
            )
        return [folder / s for s in shards]
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
    if pickles:
        raise CodetransferError(
            f"{folder}: only pickled weights ({pickles[0]}); codetransfer loads safetensors only — convert with "
            "AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder, safe_serialization=True) "
            "where you trust the file"
        )
    raise CodetransferError(
        f"{folder}: no {SINGLE_WEIGHTS} or {SHARD_INDEX}; the run is incomplete — run 'codetransfer train' again "
        "or point at a complete checkpoint"
    )


def check_config(folder: str | Path) -> dict:
    """``config.json`` of ``folder`` if it describes a causal LM that transformers builds without remote code."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CodetransferError(
            f"{folder}: no config.json; expected a run folder written by 'codetransfer train' "
            "or a checkpoint saved with save_pretrained"
        )
    config = read_json(folder / "config.json", "model config")
    if not isinstance(config, dict):
        raise CodetransferError(f"{folder / 'config.json'}: expected a JSON object")
    if config.get("auto_map"):
        raise CodetransferError(
            f"{folder}: config.json has auto_map (the model needs its own remote code); codetransfer runs only "
            "architectures built into transformers"
        )
    kind = config.get("model_type")
    if not kind:
        raise CodetransferError(f"{folder / 'config.json'}: no model_type; the config is damaged, save it again")
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        names = list(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
        raise CodetransferError(
            f"{folder / 'config.json'}: model_type {kind!r} is not a causal LM that transformers knows"
            f"{did_you_mean(kind, names)}"
        )
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as e:  # transformers raises several types for bad configs
        raise CodetransferError(
            f"{folder / 'config.json'}: transformers cannot read it ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160]})"
        ) from None
    context_length(config)
    return config


def _expected_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the model that ``config.json`` describes (built on the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=False)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # checkpoints may be saved from the base model (no 'transformer.' / 'model.' prefix) or with it
    prefix = getattr(model, "base_model_prefix", "")
    if prefix:
        shapes.update({k[len(prefix) + 1 :]: s for k, s in list(shapes.items()) if k.startswith(prefix + ".")})
    return shapes


def check_model_folder(folder: str | Path, check_shapes: bool = True) -> Path:
    """Refuse folders without a complete, readable HF causal-LM checkpoint before transformers sees them."""
    from safetensors import safe_open

    folder = Path(folder)
    check_config(folder)
    files = weight_files(folder)
    expected = _expected_shapes(folder) if check_shapes else {}
    matched = 0
    for weights in files:
        try:
            with safe_open(str(weights), framework="pt") as f:
                names = list(f.keys())
                for n in names:  # reads every tensor: a truncated file fails here
                    sl = f.get_slice(n)
                    sl[:1]
                    shape = tuple(sl.get_shape())
                    want = expected.get(n)
                    if want is not None:
                        matched += 1
                        if want != shape:
                            raise CodetransferError(
                                f"{weights}: tensor {n} has shape {list(shape)} but config.json implies {list(want)}; "
                                "the weights and config.json belong to different models"
                            )
        except CodetransferError:
            raise
        except Exception as e:  # safetensors raises several types for damaged files
            raise CodetransferError(
                f"{weights}: damaged or truncated checkpoint ({type(e).__name__}); delete the folder and save or "
                "train it again"
            ) from None
    if check_shapes and matched == 0:
        raise CodetransferError(
            f"{folder}: no tensor of the weights is a parameter of the {read_json(folder / 'config.json', 'model config')['model_type']} "
            "model that config.json describes; the weights and config.json belong to different models"
        )
    return folder


def load_hf_model(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The plain HF causal LM of a folder (safetensors only, never remote code), in eval mode, in ``dtype``."""
    from transformers import AutoModelForCausalLM

    folder = check_model_folder(folder)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=dtype, use_safetensors=True, trust_remote_code=False, attn_implementation="sdpa"
    )
    return model.to(device).eval()


def load_bridge(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """``(bridge, tokenizer)`` for a saved model folder: a fresh TransformerBridge in eval mode.

    The tokenizer follows :func:`~codetransfer.trained.tokenizer.load_tokenizer`'s BOS policy (every
    prompt is ``[bos] + tokens(text)``), so the bridge's ``default_prepend_bos`` is set to match.
    """
    from transformer_lens import TransformerBridge

    folder = check_model_folder(folder)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = load_tokenizer(folder)
    bridge = TransformerBridge.boot_transformers(str(folder), tokenizer=tokenizer, device=device, dtype=dtype)
    bridge.cfg.default_prepend_bos = True
    return bridge.eval(), tokenizer
