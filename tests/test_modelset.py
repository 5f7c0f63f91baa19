"""Model sets: tiny random GPT-2, GPT-NeoX (Pythia-shaped, sharded) and Llama (fp16, no BOS token)
checkpoints saved with save_pretrained, loaded as runs and analysed through the library functions
the verbs call; the loader's refusals; our own tokenizers' BOS as seen by plain transformers."""

from __future__ import annotations

import hashlib
import json
import shutil
import time

import numpy as np
import pytest
import torch

from conftest import TOKENIZER_TEXTS
from codetransfer.errors import CodetransferError

N_CTX = 256


def _tokenizer(style: str):
    """A byte-level BPE built with ``tokenizers`` (no download): 'gpt2' = one <|endoftext|> that is
    both BOS and EOS, no pad; 'pythia' = bos/eos/pad at ids 3/4/5; 'nobos' = eos and pad, no BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = {
        "gpt2": ["<|endoftext|>"],
        "pythia": ["<a>", "<b>", "<c>", "<s>", "</s>", "<pad>"],
        "nobos": ["</s>", "<pad>"],
    }[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        TOKENIZER_TEXTS,
        trainers.BpeTrainer(
            vocab_size=420,
            min_frequency=1,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    kw = {
        "gpt2": dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>"),
        "pythia": dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>"),
        "nobos": dict(eos_token="</s>", pad_token="<pad>"),
    }[style]
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=N_CTX, **kw)


def _save(folder, arch: str, seed: int | None = None):
    """Save a random ``arch`` checkpoint and its tokenizer to ``folder``; ``seed``: the weights' torch seed
    (default: one per architecture). The tokenizer of an architecture is the same whatever the seed."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    style = {"gpt2": "gpt2", "gpt_neox": "pythia", "llama": "nobos"}[arch]
    tok = _tokenizer(style)
    v = len(tok)
    torch.manual_seed({"gpt2": 1, "gpt_neox": 2, "llama": 3}[arch] if seed is None else seed)
    if arch == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=N_CTX, vocab_size=v, bos_token_id=0, eos_token_id=0)
        )
        kw = {}
    elif arch == "gpt_neox":  # Pythia's shape: parallel residual, partial rotary
        model = GPTNeoXForCausalLM(
            GPTNeoXConfig(
                num_hidden_layers=2,
                hidden_size=64,
                num_attention_heads=4,
                intermediate_size=256,
                max_position_embeddings=N_CTX,
                vocab_size=v,
                rotary_pct=0.25,
                use_parallel_residual=True,
            )
        )
        kw = {"max_shard_size": "100KB"}
    else:
        model = LlamaForCausalLM(
            LlamaConfig(
                num_hidden_layers=2,
                hidden_size=64,
                num_attention_heads=4,
                num_key_value_heads=4,
                intermediate_size=128,
                max_position_embeddings=N_CTX,
                vocab_size=v,
            )
        )
        model = model.half()
        kw = {}
    model.save_pretrained(folder, **kw)
    tok.save_pretrained(folder)
    return folder


ARCHS = ("gpt2", "gpt_neox", "llama")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("foreign")
    return {a: _save(root / a, a) for a in ARCHS}


@pytest.fixture(scope="module")
def model_set_file(folders, tmp_path_factory):
    path = folders["gpt2"].parent / "set.toml"
    path.write_text(
        'baseline = "base"\n'
        + "".join(
            f'[[model]]\npath = "{a}"\ngroup = "{g}"\nseed = 0\n' + (f"step = {s}\n" if s else "")
            for a, g, s in (("gpt2", "base", None), ("gpt_neox", "+code", 1000), ("llama", "+code", None))
        )
    )
    return path


@pytest.fixture(scope="module")
def runs(model_set_file):
    from codetransfer.trained.modelset import model_runs

    return model_runs(model_set_file)


@pytest.fixture(scope="module")
def loaded(runs):
    from codetransfer.trained import load_run

    return {r.record["model"]["model_type"]: load_run(r) for r in runs}


def test_checkpoints_are_what_the_loader_must_handle(folders):
    assert (folders["gpt_neox"] / "model.safetensors.index.json").exists()
    assert not (folders["gpt_neox"] / "model.safetensors").exists()
    cfg = json.loads((folders["gpt2"] / "config.json").read_text())
    assert "n_positions" in cfg and "max_position_embeddings" not in cfg
    from safetensors import safe_open

    with safe_open(str(folders["llama"] / "model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16


def test_context_length_whatever_its_name():
    from codetransfer.trained.loading import context_length

    assert context_length({"n_positions": 1024}) == 1024
    assert context_length({"max_position_embeddings": 2048, "n_ctx": 7}) == 2048
    assert context_length({"n_ctx": 77}) == 77
    assert context_length({"text_config": {"max_position_embeddings": 9}}) == 9
    with pytest.raises(CodetransferError, match="no context length"):
        context_length({"hidden_size": 4})


def test_model_set_runs_carry_group_seed_step_shape_and_bos_policy(runs):
    by = {r.record["model"]["model_type"]: r for r in runs}
    assert [r.recipe for r in runs] == ["base", "+code", "+code"]
    assert [r.name for r in runs] == ["base-s0", "plus_code-s0-step1000", "plus_code-s0"]
    assert all(r.status == "complete" and r.grid == "set" for r in runs)
    assert by["gpt_neox"].record["steps"] == 1000
    assert {k: r.record["n_ctx"] for k, r in by.items()} == {"gpt2": N_CTX, "gpt_neox": N_CTX, "llama": N_CTX}
    pol = {k: r.record["bos_policy"] for k, r in by.items()}
    assert (pol["gpt2"]["bos_token"], pol["gpt2"]["bos_from"], pol["gpt2"]["pad_from"]) == (
        "<|endoftext|>",
        "bos",
        "eos",
    )
    assert (pol["gpt_neox"]["bos_id"], pol["gpt_neox"]["pad_id"], pol["gpt_neox"]["pad_from"]) == (3, 5, "pad")
    assert (pol["llama"]["bos_token"], pol["llama"]["bos_from"]) == ("</s>", "eos")
    from codetransfer.trained.modelset import load_model_set, policy_table

    assert load_model_set(runs[0].path.parent / "set.toml").baseline == "base"
    assert list(policy_table(runs).bos_from) == ["bos", "bos", "eos"]


def _reference_logprobs(folder, tokenizer, items):
    """Candidate log-probs from plain transformers (fp32) on ``[bos] + prompt + candidate``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    bos = tokenizer.bos_token_id
    out = []
    for it in items:
        p = tokenizer(it.prompt, add_special_tokens=False)["input_ids"]
        row = []
        for c in it.candidates:
            cid = tokenizer(c, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([[bos, *p, *cid]])
            with torch.no_grad():
                lp = torch.log_softmax(model(ids).logits[0].double(), -1)
            row.append(sum(lp[len(p) + t, tok].item() for t, tok in enumerate(cid)))
        out.append(row)
    return np.array(out)


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_scores_equal_plain_transformers(loaded, folders, arch):
    from codetransfer.analysis.evaluate import candidate_logprobs, score_runs
    from codetransfer.tasks import get_task

    run = loaded[arch]
    assert run.bridge.cfg.n_ctx == N_CTX
    items = get_task("entity_tracking").generate(6, seed=0, difficulty=0)
    ours = np.array(candidate_logprobs(run.bridge, run.tokenizer, items, batch_size=4))
    ref = _reference_logprobs(folders[arch], run.tokenizer, items)
    assert np.abs(ours - ref).max() < 1e-4
    table = score_runs([run], {"entity_tracking": items}, batch_size=4)
    assert set(table.recipe) == {run.info.recipe} and len(table) == len(items)


@pytest.mark.parametrize("arch", ARCHS)
def test_patching_every_position_restores_the_clean_run(loaded, arch):
    from codetransfer.analysis import patching as P
    from codetransfer.tasks import get_task

    run = loaded[arch]
    items = get_task("entity_tracking").generate(24, seed=0, difficulty=0)
    batch = P.pair_batch(items, run.tokenizer, drop_misaligned=True)
    assert batch.clean_tokens.shape[0] >= 4
    assert (batch.clean_tokens[:, 0] == run.tokenizer.bos_token_id).all()
    sweep = P.activation_patching(
        run.bridge, batch.clean_tokens, batch.corrupted_tokens, batch.metric, "resid_pre", by_pos=False
    )
    assert torch.allclose(sweep.normalised()[0], torch.tensor(1.0), atol=1e-4)
    if arch == "gpt_neox":  # Pythia's parallel attention + MLP has no residual stream between them
        with pytest.raises(CodetransferError, match="runs attention and MLP in parallel"):
            P.patch_head_out(run.bridge, batch.clean_tokens, batch.corrupted_tokens, batch.metric)
    heads = P.activation_patching(
        run.bridge, batch.clean_tokens, batch.corrupted_tokens, batch.metric, "v", by_pos=False
    )
    t = heads.table(
        dict(run=run.info.name, recipe=run.info.recipe, seed=run.info.seed, task="entity_tracking"), n_boot=20
    )
    assert set(t["head"].dropna()) == set(range(4)) and set(t["layer"]) == {0, 1} and t["value"].notna().all()


def test_attention_scores_every_head_of_every_model(loaded):
    from codetransfer.analysis.attention import score_runs as attention_runs, score_run
    from codetransfer.tasks import get_task

    items = {"entity_tracking": get_task("entity_tracking").generate(6, seed=0, difficulty=0)}
    t = attention_runs(list(loaded.values()), score=score_run, items_by_task=items, n_seqs=4, half_len=8, n_boot=20)
    assert set(t.run) == {r.info.name for r in loaded.values()}
    per_run = t[t.metric == t.metric.iloc[0]].groupby("run").size()
    assert (per_run == 8).all()  # 2 layers x 4 heads, one row each
    assert np.isfinite(t.value).all()


def test_probe_sweep_runs_on_the_model_set(runs, tmp_path):
    from codetransfer.probes.sweep import run_probe_sweep

    table = run_probe_sweep(
        runs,
        ["entity_tracking"],
        ["resid_post.1"],
        tmp_path / "probes",
        n_items=40,
        seeds=(0,),
        mdl=False,
        cross_format=False,
        min_rows=10,
    )
    assert set(table.run) == {r.name for r in runs}
    assert set(table.recipe) == {"base", "+code"}


# ---- refusals -----------------------------------------------------------------------------------


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _set(tmp_path, body: str):
    path = tmp_path / "m.toml"
    path.write_text(body)
    return path


def test_bad_model_sets_are_refused_in_one_line(folders, tmp_path):
    from codetransfer.trained.modelset import load_model_set

    g = folders["gpt2"]
    cases = {
        "": "no \\[\\[model\\]\\] entries",
        f'[[model]]\npath = "{g}"\ngroup = "a"\n': r"model\[0\].seed: expected an integer",
        f'[[model]]\npath = "{g}"\nhub = "x/y"\ngroup = "a"\nseed = 0\n': "exactly one of path",
        f'[[model]]\npath = "{g}"\ngroup = "a"\nseed = 0\ngrup = 1\n': "unknown field.*did you mean 'group'",
        f'baseline = "b"\n[[model]]\npath = "{g}"\ngroup = "a"\nseed = 0\n': "'b' is not a group",
        f'[[model]]\npath = "{g}"\ngroup = "a"\nseed = 0\n[[model]]\npath = "{g}"\ngroup = "a"\nseed = 0\n': "run name 'a-s0' repeats model\\[0\\]",
        f'[[model]]\npath = "{tmp_path}/nope"\ngroup = "a"\nseed = 0\n': "does not exist",
        "[[model]\n": "not valid TOML",
    }
    for body, message in cases.items():
        with pytest.raises(CodetransferError, match=message) as e:
            load_model_set(_set(tmp_path, body))
        assert "\n" not in str(e.value)


def test_hub_id_offline_is_refused_at_once(tmp_path, monkeypatch):
    from codetransfer.trained.modelset import load_model_set

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    t0 = time.time()
    with pytest.raises(CodetransferError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE=1"):
        load_model_set(_set(tmp_path, '[[model]]\nhub = "nobody/no-such-model"\ngroup = "a"\nseed = 0\n'))
    assert time.time() - t0 < 5


def _edit_config(folder, **change):
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in change.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "damage,message",
    [
        ("auto_map", "auto_map"),
        ("no_model_type", "no model_type"),
        ("unknown_type", "model_type 'gpt3' is not a causal LM"),
        ("bin_only", "only pickled weights"),
        ("shape", "has shape .* but config.json implies"),
        ("missing_shard", "shard .* is missing"),
        ("tokenizer", "damaged tokenizer"),
    ],
)
def test_damaged_checkpoints_are_refused_in_one_line(folders, tmp_path, damage, message):
    from codetransfer.trained import load_run

    src = folders["gpt_neox"] if damage == "missing_shard" else folders["gpt2"]
    f = _copy(src, tmp_path / "m")
    if damage == "auto_map":
        _edit_config(f, auto_map={"AutoModelForCausalLM": "modeling_x.X"})
    elif damage == "no_model_type":
        _edit_config(f, model_type=None)
    elif damage == "unknown_type":
        _edit_config(f, model_type="gpt3")
    elif damage == "bin_only":
        (f / "model.safetensors").rename(f / "pytorch_model.bin")
    elif damage == "shape":
        _edit_config(f, n_embd=32)
    elif damage == "missing_shard":
        index = json.loads((f / "model.safetensors.index.json").read_text())
        (f / sorted(set(index["weight_map"].values()))[-1]).unlink()
    elif damage == "tokenizer":
        (f / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "NotAModel"}}')
    with pytest.raises(CodetransferError, match=message) as e:
        load_run(f)
    assert "\n" not in str(e.value)


# ---- our own tokenizers, as other tools see them --------------------------------------------------


def test_our_tokenizer_adds_bos_like_training_and_knows_the_context(tiny_model_dir):
    from transformers import AutoTokenizer

    from codetransfer.trained.tokenizer import encode_documents, encode_with_bos, load_tokenizer, train_tokenizer

    hf = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ours = load_tokenizer(tiny_model_dir)
    for text in ["The pen is in box A.", "def f(x):\n    return x + 1"]:
        assert hf(text)["input_ids"] == encode_with_bos(ours, text)[0]
        assert hf(text)["input_ids"] == encode_documents(ours, [text])[0][:-1]
    assert train_tokenizer(TOKENIZER_TEXTS, 400, 1, model_max_length=128).model_max_length == 128


def test_transformers_logits_on_autotokenizer_ids_equal_our_eval(tiny_model_dir, tiny_bridge, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from codetransfer.analysis.evaluate import candidate_logprobs
    from codetransfer.tasks import get_task

    hf_tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    items = get_task("entity_tracking").generate(4, seed=1, difficulty=0)
    ours = np.array(candidate_logprobs(tiny_bridge, tiny_tokenizer, items))
    ref = []
    for it in items:
        ctx = hf_tok(it.prompt)["input_ids"]  # default call: the tokenizer adds BOS itself
        row = []
        for c in it.candidates:
            whole = hf_tok(it.prompt + c)["input_ids"]
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
            row.append(sum(lp[t - 1, whole[t]].item() for t in range(len(ctx), len(whole))))
        ref.append(row)
    assert np.abs(ours - np.array(ref)).max() < 1e-4


def test_select_runs_takes_exactly_one_of_runs_and_models(model_set_file, tmp_path):
    from codetransfer.trained.modelset import select_runs

    assert [r.recipe for r in select_runs(models=model_set_file)] == ["base", "+code", "+code"]
    for kw in ({}, {"runs": tmp_path, "models": model_set_file}):
        with pytest.raises(CodetransferError, match="give exactly one"):
            select_runs(**kw)
    with pytest.raises(CodetransferError, match="no complete runs in .*--models FILE"):
        select_runs(runs=tmp_path)


# The map in docs/models.md: our site -> the HF module whose input (i) or output (o) it equals.
HF_SITES = {
    "gpt2": {
        "blocks.1.hook_resid_pre": ("transformer.h.1", "i"),
        "blocks.1.hook_resid_mid": ("transformer.h.1.ln_2", "i"),
        "blocks.1.hook_attn_out": ("transformer.h.1.attn", "o"),
        "blocks.1.hook_mlp_out": ("transformer.h.1.mlp", "o"),
        "blocks.1.attn.hook_z": ("transformer.h.1.attn.c_proj", "i"),
        "blocks.1.hook_resid_post": ("transformer.h.1", "o"),
    },
    "gpt_neox": {
        "blocks.1.hook_resid_pre": ("gpt_neox.layers.1", "i"),
        "blocks.1.hook_attn_out": ("gpt_neox.layers.1.attention", "o"),
        "blocks.1.hook_mlp_out": ("gpt_neox.layers.1.mlp", "o"),
        "blocks.1.attn.hook_z": ("gpt_neox.layers.1.attention.dense", "i"),
        "blocks.1.hook_resid_post": ("gpt_neox.layers.1", "o"),
    },
    "llama": {
        "blocks.1.hook_resid_pre": ("model.layers.1", "i"),
        "blocks.1.hook_resid_mid": ("model.layers.1.post_attention_layernorm", "i"),
        "blocks.1.hook_attn_out": ("model.layers.1.self_attn", "o"),
        "blocks.1.hook_mlp_out": ("model.layers.1.mlp", "o"),
        "blocks.1.attn.hook_z": ("model.layers.1.self_attn.o_proj", "i"),
        "blocks.1.attn.hook_q": ("model.layers.1.self_attn.q_proj", "o"),
        "blocks.1.attn.hook_v": ("model.layers.1.self_attn.v_proj", "o"),
        "blocks.1.hook_resid_post": ("model.layers.1", "o"),
    },
}


@pytest.mark.parametrize("arch", ARCHS)
def test_site_map_to_hf_modules(loaded, folders, arch):
    from codetransfer.trained.loading import load_hf_model

    run, hf = loaded[arch], load_hf_model(folders[arch])
    tokens = torch.tensor([[run.tokenizer.bos_token_id, 30, 41, 52, 63, 74, 85]])
    _, cache = run.bridge.run_with_cache(tokens)
    got, hooks = {}, []
    for hook, (module, side) in HF_SITES[arch].items():

        def grab(m, args, out, hook=hook, side=side):
            x = args[0] if side == "i" else out
            got[hook] = x[0] if isinstance(x, tuple) else x

        hooks.append(hf.get_submodule(module).register_forward_hook(grab))
    with torch.no_grad():
        hf(tokens)
    for h in hooks:
        h.remove()
    for hook in HF_SITES[arch]:
        assert torch.allclose(cache[hook].reshape(got[hook].shape), got[hook], atol=1e-5), hook


def test_old_saved_tokenizers_can_be_given_the_bos_and_keep_their_hash(tiny_model_dir, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from codetransfer.trained.tokenizer import add_bos_to_saved_tokenizer, load_tokenizer, tokenizer_hash

    folder = _copy(tiny_model_dir, tmp_path / "old")
    data = json.loads((folder / "tokenizer.json").read_text())
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {},
    }  # as transformers saved our tokenizers before
    old_hash = hashlib.sha256(Tokenizer.from_str(json.dumps(data)).to_str().encode()).hexdigest()[:16]
    (folder / "tokenizer.json").write_text(json.dumps(data))
    before = load_tokenizer(folder)
    assert AutoTokenizer.from_pretrained(str(folder))("The pen")["input_ids"][0] != 0
    add_bos_to_saved_tokenizer(folder, n_ctx=64)
    hf = AutoTokenizer.from_pretrained(str(folder))
    assert hf("The pen")["input_ids"] == [0, *before("The pen", add_special_tokens=False)["input_ids"]]
    assert hf.model_max_length == 64
    assert tokenizer_hash(hf) == tokenizer_hash(before) == tokenizer_hash(load_tokenizer(tiny_model_dir)) == old_hash
    assert Tokenizer.from_file(str(folder / "tokenizer.json")).post_processor is not None
    with pytest.raises(CodetransferError, match="not a codetransfer tokenizer"):
        gpt2 = _copy(tiny_model_dir, tmp_path / "g")
        _tokenizer("gpt2").save_pretrained(gpt2)
        add_bos_to_saved_tokenizer(gpt2, 64)


def test_transformer_lens_to_tokens_adds_one_bos(tiny_bridge, tiny_tokenizer):
    from codetransfer.trained.tokenizer import encode_with_bos

    text = "The pen is in box A."
    assert tiny_bridge.to_tokens(text)[0].tolist() == encode_with_bos(tiny_tokenizer, text)[0]


def test_analysis_verbs_take_a_model_set_on_the_command_line(tmp_path):
    """``--models FILE`` wherever ``--runs`` is taken: two GPT-2 checkpoints as groups 'base' and '+code'."""
    import pandas as pd

    from codetransfer.cli import main

    for name in ("a", "b"):
        _save(tmp_path / name, "gpt2")
    models = tmp_path / "set.toml"
    models.write_text(
        'baseline = "base"\n[[model]]\npath = "a"\ngroup = "base"\nseed = 0\n'
        '[[model]]\npath = "b"\ngroup = "+code"\nseed = 0\n'
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "eval",
                "--models",
                str(models),
                "--out",
                str(out / "eval"),
                "--tasks",
                "counting",
                "--n-items",
                "8",
                "--max-difficulty",
                "0",
                "--fit-context",
                "--n-boot",
                "20",
                "--baseline",
                "base",
            ]
        )
        == 0
    )
    scores = pd.read_parquet(out / "eval" / "scores.parquet")
    assert set(scores["recipe"]) == {"base", "+code"}
    assert (
        main(
            [
                "attention",
                "--models",
                str(models),
                "--out",
                str(out / "att"),
                "--n-seqs",
                "4",
                "--tasks",
                "counting",
                "--max-difficulty",
                "0",
                "--n-items",
                "8",
                "--half-len",
                "8",
                "--n-boot",
                "0",
            ]
        )
        == 0
    )
    assert set(pd.read_parquet(out / "att" / "attention.parquet")["recipe"]) == {"base", "+code"}
    assert main(["eval", "--models", str(models), "--runs", str(tmp_path), "--out", str(out / "x")]) == 2
