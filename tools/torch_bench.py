#!/usr/bin/env python3
"""PyTorch side of `make bench-gpu` (tools/bench_gpu.sh).

Builds the same network as camotrain from its config file (GraphNet of tools/torch_ref.py,
which builds it independently of the C parser), trains it with AdamW and the structure loss
on every output (auxiliary outputs with their config weights, as camotrain's deep
supervision) under torch.autocast (bf16 or fp16 with a GradScaler), channels_last, on
random images and masks that stay on the GPU. Prints "img/s X" (steps after the warm-up)
and the peak memory torch reserved.

Needs torch with CUDA, numpy and libconf (pip install torch numpy libconf).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_losses import structure_loss  # noqa: E402
from torch_ref import GraphNet, load_config  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "off"])
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("torch_bench: torch has no usable CUDA device")
    dev = torch.device("cuda", 0)
    torch.backends.cudnn.benchmark = True
    cfg = load_config(a.model)
    net = GraphNet(cfg).to(dev).to(memory_format=torch.channels_last)
    weights = [1.0] + [float(o.get("weight", 1.0)) for o in cfg.get("outputs", [])[1:]]
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": torch.float32}[a.amp]
    scaler = torch.cuda.amp.GradScaler(enabled=a.amp == "fp16")
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    t = (torch.rand(a.batch, 1, a.size, a.size, device=dev, generator=g) > 0.5).float()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype, enabled=a.amp != "off"):
            outs = net(x)
        loss = sum(w * structure_loss(o.float(), t) for w, o in zip(weights, outs))
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print("img/s %.1f  (%d steps of %d in %.2f s, last loss %.4f)"
          % (a.steps * a.batch / dt, a.steps, a.batch, dt, loss.item()))
    print("max_memory_reserved_mib %.0f  max_memory_allocated_mib %.0f"
          % (torch.cuda.max_memory_reserved() / 2**20, torch.cuda.max_memory_allocated() / 2**20))


if __name__ == "__main__":
    main()
