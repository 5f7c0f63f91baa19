import pytest
import torch

from codetransfer.errors import CodetransferError
from codetransfer.trained.loading import load_bridge, load_hf_model
from codetransfer.trained.tokenizer import char_to_token, encode_with_bos


def test_bridge_logits_equal_hf_logits(tiny_model_dir, tiny_bridge, tiny_tokenizer):
    hf = load_hf_model(tiny_model_dir)
    ids, _ = encode_with_bos(tiny_tokenizer, "The pen is in box A. The apple is in box")
    x = torch.tensor([ids])
    with torch.no_grad():
        diff = (hf(x).logits - tiny_bridge(x)).abs().max().item()
    assert diff < 1e-5
    assert tiny_bridge.cfg.default_prepend_bos


def test_encode_with_bos_and_char_to_token(tiny_tokenizer):
    text = "The pen is in box A."
    ids, offsets = encode_with_bos(tiny_tokenizer, text)
    assert ids[0] == tiny_tokenizer.bos_token_id == 0
    i = char_to_token(offsets, text.index("pen") + 3)
    assert "pen" in tiny_tokenizer.decode([ids[i]])
    with pytest.raises(CodetransferError, match="outside the prompt"):
        char_to_token(offsets, len(text) + 5)


def test_truncated_checkpoint_is_refused(tiny_model_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CodetransferError, match="truncated"):
        load_bridge(bad)
