"""The model: Hugging Face GPT-NeoX (Pythia's architecture), or Llama, built from a ModelConfig.

Every run of a grid has the same shape. GPT-NeoX is built with ``use_parallel_residual=False`` (so
TransformerLens exposes ``hook_resid_mid``), SDPA attention and no grouped-query attention.
"""

from __future__ import annotations

import torch

from codetransfer.trained.config import ModelConfig


def hf_config(cfg: ModelConfig, vocab_size: int):
    """The transformers config object for ``cfg`` (bos=0, eos=1, pad=2, untied embeddings)."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_mlp,
        max_position_embeddings=cfg.n_ctx,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    if cfg.arch == "gpt_neox":
        from transformers import GPTNeoXConfig

        return GPTNeoXConfig(
            **common,
            use_parallel_residual=False,
            rotary_pct=cfg.rotary_pct,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            attn_implementation="sdpa",
        )
    from transformers import LlamaConfig

    return LlamaConfig(**common, num_key_value_heads=cfg.n_heads, attn_implementation="sdpa")


def build_model(cfg: ModelConfig, vocab_size: int, seed: int) -> torch.nn.Module:
    """A freshly initialised causal LM of shape ``cfg``; initialisation depends on ``seed`` only."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(hf_config(cfg, vocab_size), attn_implementation="sdpa")
    return model


def n_params(model: torch.nn.Module, non_embedding: bool = True) -> int:
    n = sum(p.numel() for p in model.parameters())
    if non_embedding:
        n -= model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    return n


def flops_per_token(cfg: ModelConfig, vocab_size: int, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), PaLM-style estimate.

    6 * N (dense matmuls, N = non-embedding params + unembedding) + 12 * L * d * T (attention).
    """
    per_layer = 4 * cfg.d_model * cfg.d_model + 2 * cfg.d_model * cfg.d_mlp
    n = cfg.n_layers * per_layer + cfg.d_model * vocab_size
    return 6 * n + 12 * cfg.n_layers * cfg.d_model * seq_len
