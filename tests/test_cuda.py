"""CUDA: training, loading, patching, extraction and the CLI on a GPU agree with the CPU.

These tests run only where ``torch.cuda.is_available()`` (they are skipped elsewhere). Each one runs
the same computation on the CPU (fp32, the reference) and on the GPU and compares:

* fp32 training on the GPU follows the CPU's loss curve step for step (1e-4);
* the trainer's bf16 autocast path (``train._autocast`` on CUDA) is really taken, makes the loss fall
  and ends within 3% of the fp32 curve;
* a checkpoint trained on the GPU loads on the CPU through our loader, with bridge logits equal to
  Hugging Face's (1e-4), and on the GPU equal to the CPU (1e-4);
* activation patching and activation extraction on the GPU equal the CPU (1e-4);
* ``codetransfer eval`` / ``patch --device cuda`` write the same tables as ``--device cpu``.

``CODETRANSFER_TEST_CUDA_DEVICE=cpu`` runs the same code with the CPU in place of the GPU: a dry run
of the test logic on a machine without one (the comparisons are then trivially close).
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from codetransfer.analysis import patching as P
from codetransfer.analysis.store import ActivationStore, extract_activations, parse_sites
from codetransfer.cli import main as cli
from codetransfer.trained import load_grid, train_grid
from codetransfer.trained import train as train_module
from codetransfer.trained.config import ModelConfig
from codetransfer.trained.loading import load_bridge, load_hf_model
from codetransfer.trained.train import train_run
from gridfiles import write_grid

DEVICE = os.environ.get("CODETRANSFER_TEST_CUDA_DEVICE", "cuda")
ON_GPU = DEVICE.startswith("cuda")

pytestmark = pytest.mark.skipif(
    ON_GPU and not torch.cuda.is_available(),
    reason="needs a CUDA GPU (CODETRANSFER_TEST_CUDA_DEVICE=cpu dry-runs the test logic on a CPU)",
)

FP32_STEPS = 12  # fp32 GPU vs CPU: steps compared one by one (eval at step 10 included)


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _vals(run_dir, source: str) -> list[float]:
    recs = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r[f"val/{source}"] for r in recs if f"val/{source}" in r]


class _Spy:
    """Wraps ``train.token_losses``: records the device of every batch and whether autocast was on."""

    def __init__(self, inner):
        self.inner, self.devices, self.autocast = inner, set(), set()

    def __call__(self, model, x):
        self.devices.add(x.device.type)
        on = torch.is_autocast_enabled(x.device.type)
        self.autocast.add((on, torch.get_autocast_dtype(x.device.type) if on else None))
        return self.inner(model, x)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """The mini grid's 'text-only' recipe trained on the CPU in fp32 (40 steps): the reference."""
    grid = load_grid(write_grid(tmp_path_factory.mktemp("cuda_grid")))
    out = tmp_path_factory.mktemp("cuda_cpu_out")
    train_grid(grid, out, only=["text-only"], progress=False, log=lambda *a: None)
    return grid, out / "data", out / "runs" / "text-only-s0"


@pytest.fixture(scope="module")
def bf16_run(cpu_run, tmp_path_factory):
    """The same recipe trained to the end on the GPU through the trainer's own (bf16 autocast) path."""
    grid, data, _ = cpu_run
    run_dir = tmp_path_factory.mktemp("cuda_bf16_run")
    spy = _Spy(train_module.token_losses)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "token_losses", spy)
        train_run(grid, grid.recipe("text-only"), 0, data, run_dir, device=DEVICE, progress=False)
    return run_dir, spy


def test_fp32_training_on_gpu_follows_the_cpu_loss_curve(cpu_run, tmp_path, monkeypatch):
    grid, data, cpu_dir = cpu_run
    spy = _Spy(train_module.token_losses)
    monkeypatch.setattr(train_module, "token_losses", spy)
    monkeypatch.setattr(train_module, "_autocast", lambda device: contextlib.nullcontext())  # fp32 on the GPU too
    train_run(
        grid, grid.recipe("text-only"), 0, data, tmp_path, device=DEVICE, stop_after_steps=FP32_STEPS, progress=False
    )
    assert spy.devices == {torch.device(DEVICE).type}
    assert spy.autocast == {(False, None)}
    gpu, cpu = _losses(tmp_path), _losses(cpu_dir)[:FP32_STEPS]
    assert len(gpu) == FP32_STEPS
    assert cpu[0] - cpu[-1] > 0.1  # the curve moves: the comparison is not between two flat lines
    assert max(abs(a - b) for a, b in zip(gpu, cpu)) < 1e-4, list(zip(gpu, cpu))
    assert abs(_vals(tmp_path, "gcide")[0] - _vals(cpu_dir, "gcide")[0]) < 1e-4  # the eval at step 10


def test_bf16_autocast_training_on_gpu_learns_like_fp32(cpu_run, bf16_run):
    _, _, cpu_dir = cpu_run
    run_dir, spy = bf16_run
    assert spy.devices == {torch.device(DEVICE).type}
    if ON_GPU:  # the trainer's CUDA path is bf16 autocast (on a CPU dry run there is none)
        assert spy.autocast == {(True, torch.bfloat16)}
    bf16, fp32 = _losses(run_dir), _losses(cpu_dir)
    assert len(bf16) == len(fp32) == 40
    assert bf16[-1] < bf16[0] - 0.5
    tail_bf16, tail_fp32 = np.mean(bf16[-5:]), np.mean(fp32[-5:])
    assert abs(tail_bf16 - tail_fp32) / tail_fp32 < 0.03, (tail_bf16, tail_fp32)
    val_bf16, val_fp32 = _vals(run_dir, "gcide")[-1], _vals(cpu_dir, "gcide")[-1]
    assert abs(val_bf16 - val_fp32) / val_fp32 < 0.03, (val_bf16, val_fp32)


def test_gpu_checkpoint_loads_on_cpu_and_bridge_equals_hf(bf16_run):
    run_dir, _ = bf16_run
    weights = load_file(run_dir / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}  # fp32 master weights, not bf16 copies
    bridge, tok = load_bridge(run_dir, device="cpu")
    hf = load_hf_model(run_dir, device="cpu")
    assert next(bridge.parameters()).device.type == "cpu"
    x = torch.tensor([[tok.bos_token_id, 5, 17, 33, 99, 200, 7, 250]])
    with torch.no_grad():
        ref = hf(x).logits
        assert (ref - bridge(x)).abs().max().item() < 1e-4
        gpu_bridge, _ = load_bridge(run_dir, device=DEVICE)
        assert next(gpu_bridge.parameters()).device.type == torch.device(DEVICE).type
        assert (gpu_bridge(x.to(DEVICE)).cpu() - ref).abs().max().item() < 1e-4
    assert ref.std() > 0.1  # a trained model, not constant logits


def _pair(batch=3, pos=6, vocab=300):
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(3, vocab, (batch, pos), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 1 + torch.randint(0, 50, (batch,), generator=g)) % vocab
    metric = P.LogitDiff(torch.full((batch,), pos - 1), torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10]))
    return clean, corrupted, metric


@pytest.fixture(scope="module")
def gpu_bridge(tiny_model_dir):
    bridge, _ = load_bridge(tiny_model_dir, device=DEVICE)
    return bridge


@pytest.mark.parametrize(
    "site,by_pos",
    [("resid_pre", True), ("attn_out", True), ("mlp_out", True), ("head_out", True), ("q", False), ("v", False)],
)
def test_patching_on_gpu_equals_cpu(tiny_bridge, gpu_bridge, site, by_pos):
    clean, corrupted, metric = _pair()
    cpu = P.activation_patching(tiny_bridge, clean, corrupted, metric, site, by_pos=by_pos, max_rows=7)
    gpu = P.activation_patching(
        gpu_bridge, clean.to(DEVICE), corrupted.to(DEVICE), metric, site, by_pos=by_pos, max_rows=7
    )
    assert gpu.values.shape == cpu.values.shape
    assert torch.allclose(gpu.values.cpu(), cpu.values, atol=1e-4, rtol=0)
    assert torch.allclose(gpu.clean.cpu(), cpu.clean, atol=1e-4, rtol=0)
    assert torch.allclose(gpu.corrupted.cpu(), cpu.corrupted, atol=1e-4, rtol=0)
    assert (cpu.values - cpu.corrupted).abs().max() > 5e-4  # some cell moves the metric


@pytest.mark.parametrize("method", ["hooks", "cache"])
def test_activation_extraction_on_gpu_equals_cpu(tiny_bridge, gpu_bridge, tmp_path, method):
    rng = np.random.default_rng(0)
    tokens = [[0, *rng.integers(3, 300, n).tolist()] for n in (5, 9, 7, 11)]  # ragged: padding is exercised
    positions = [[1, len(t) - 1] for t in tokens]
    sites = [s.name for s in parse_sites(["resid_post", "head.1"], tiny_bridge.cfg.n_layers)]
    stores = {}
    for name, bridge, dev in (("cpu", tiny_bridge, "cpu"), ("gpu", gpu_bridge, DEVICE)):
        store = ActivationStore.create(
            tmp_path / name,
            run="r",
            task="t",
            task_version="1",
            seed=0,
            sites=sites,
            d_model=tiny_bridge.cfg.d_model,
            n_heads=tiny_bridge.cfg.n_heads,
        )
        stores[name] = extract_activations(
            bridge, tokens, positions, ["resid_post", "head.1"], store, batch_size=3, method=method, device=dev
        )
    for site in sites:
        a, b = stores["cpu"].read(site), stores["gpu"].read(site)
        assert a.shape == b.shape and a.shape[0] == 8
        assert np.abs(a).max() > 1e-3  # not all zeros
        assert np.abs(a - b).max() < 1e-4, site
    pd.testing.assert_frame_equal(stores["cpu"].index, stores["gpu"].index)


CLI_CTX = ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, n_ctx=256)


@pytest.fixture(scope="module")
def runs_folder(tmp_path_factory):
    """Two tiny random runs with the registry's run record, and held-out data (no training)."""
    from conftest import save_tiny_model

    root = tmp_path_factory.mktemp("cuda_cli_runs")
    for recipe, seed in (("text-only", 0), ("code25", 1)):
        d = root / "runs" / f"{recipe}-s{seed}"
        d.mkdir(parents=True)
        save_tiny_model(d, CLI_CTX, seed=seed)
        (d / "codetransfer.json").write_text(json.dumps({
            "recipe": recipe, "seed": seed, "status": "complete", "grid": "test",
            "model": {"n_ctx": CLI_CTX.n_ctx}, "tokenizer_sha256": "same",
        }))  # fmt: skip
    (root / "data").mkdir()
    (root / "data" / "manifest.json").write_text(json.dumps({"tokenizer_sha256": "same"}))  # the runs' tokenizer
    rng = np.random.default_rng(0)
    np.save(root / "data" / "gcide.heldout.npy", rng.integers(3, 300, 3 * CLI_CTX.n_ctx).astype(np.uint16))
    return root


def _same_table(a: pd.DataFrame, b: pd.DataFrame, keys: list[str]) -> None:
    a = a.sort_values(keys, kind="stable").reset_index(drop=True)
    b = b.sort_values(keys, kind="stable").reset_index(drop=True)
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    for c in a.columns:
        if pd.api.types.is_float_dtype(a[c]):
            assert np.allclose(a[c].to_numpy(float), b[c].to_numpy(float), atol=1e-4, rtol=1e-4, equal_nan=True), c
        else:
            assert a[c].astype(str).tolist() == b[c].astype(str).tolist(), c


VERBS = {
    "eval": (
        ["--tasks", "knowledge_cloze", "--n-items", "12", "--n-boot", "50", "--heldout-windows", "2"],
        "eval.parquet",
        ["run", "task", "difficulty", "metric"],
    ),
    "patch": (
        ["--task", "counting", "--sites", "resid_pre,mlp", "--n-items", "4", "--difficulty", "0", "--n-boot", "20"],
        "patching.parquet",
        ["run", "site", "layer", "pos_label", "metric"],
    ),
}


@pytest.mark.parametrize("verb", list(VERBS))
def test_cli_device_cuda_writes_the_cpu_tables(runs_folder, tmp_path, capsys, verb):
    extra, table, keys = VERBS[verb]
    outs = {}
    for name, dev in (("ref", "cpu"), ("dev", DEVICE)):
        out = tmp_path / name
        rc = cli([verb, "--runs", str(runs_folder), "--out", str(out), "--device", dev, *extra])
        assert rc == 0, capsys.readouterr().err
        outs[name] = pd.read_parquet(out / table)
    _same_table(outs["ref"], outs["dev"], keys)
