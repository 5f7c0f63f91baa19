"""The quick GPU facts quoted in the notes and the gpu preset: bf16 training tokens/s of the gpu preset's shape
(plain loop over our model, autocast bf16, fused AdamW, micro-batch 16 and 32 x 1024) and loss parity
(CPU vs CUDA fp32 for 3 steps; CUDA fp32 vs bf16 over 60 steps of a tiny model on repeated-half data).

Measured on an H200 (torch 2.11.0+cu130), 2026-11-26: 327k tok/s at micro-batch 16 (MFU 0.27 of 790
TFLOP/s), 283k at 32; CPU vs CUDA fp32 max loss difference 4.8e-7; mean of the last 10 losses fp32 5.746,
bf16 5.741. `bash bench/gpu_check.sh` is the fuller check (our trainer, CUDA tests).

    python bench/gpu_quick.py      # needs a CUDA GPU
"""

import json
import time
import torch
from codetransfer.trained.config import ModelConfig
from codetransfer.trained.model import build_model, flops_per_token
from codetransfer.trained.train import token_losses, _autocast
from codetransfer.trained.presets import preset

out = {}
print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
g = preset("gpu")
for bs, compiled in ((16, False), (32, False)):
    m = build_model(g.model, g.tokenizer.vocab_size, seed=0).cuda().train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True)
    x = torch.randint(3, g.tokenizer.vocab_size, (bs, g.model.n_ctx), device="cuda")
    ts = []
    for s in range(14):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with _autocast("cuda"):
            loss = token_losses(m, x).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    dt = sorted(ts[4:])[len(ts[4:]) // 2]
    tps = bs * g.model.n_ctx / dt
    fpt = flops_per_token(g.model, g.tokenizer.vocab_size, g.model.n_ctx)
    out[f"gpu_preset_b{bs}"] = dict(
        tok_s=tps, mfu_vs_790T=tps * fpt / 790e12, step_s=dt, mem_gb=torch.cuda.max_memory_allocated() / 1e9
    )
    print(out, flush=True)
    del m, opt
    torch.cuda.empty_cache()
# parity: tiny shape, same batches: cpu fp32 vs cuda fp32 (first 3 steps), cuda fp32 vs cuda bf16 (60 steps)
cfg = ModelConfig(n_layers=2, d_model=128, n_heads=4, d_mlp=512, n_ctx=128)
gen = torch.Generator().manual_seed(0)
data = torch.randint(3, 300, (60, 8, 128), generator=gen)
data[:, :, 64:] = data[:, :, :64]  # repeated halves: learnable


def curve(device, bf16, steps):
    torch.manual_seed(0)
    m = build_model(cfg, 512, seed=0).to(device).train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    ls = []
    for s in range(steps):
        x = data[s].to(device)
        if bf16:
            with _autocast(device):
                loss = token_losses(m, x).mean()
        else:
            loss = token_losses(m, x).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ls.append(loss.item())
    return ls


cpu = curve("cpu", False, 3)
c32 = curve("cuda", False, 60)
c16 = curve("cuda", True, 60)
out["cpu_vs_cuda_fp32_maxdiff_3steps"] = max(abs(a - b) for a, b in zip(cpu, c32[:3]))
out["fp32_first_last"] = (c32[0], sum(c32[-10:]) / 10)
out["bf16_first_last"] = (c16[0], sum(c16[-10:]) / 10)
print("GPUQUICK " + json.dumps(out), flush=True)
