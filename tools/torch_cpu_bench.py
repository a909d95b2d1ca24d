#!/usr/bin/env python3
"""PyTorch side of tools/bench_cpu_models.sh (make bench): the CPU training step of a
network of conf/models, built by its independent reference in tools/ref_nets.py
(torchvision ResNets, torchvision / mmsegmentation-style heads), trained as camotrain does
in the same bench (AdamW, the structure loss on the main output plus 0.4 x the auxiliary
one, batch B of SIZE x SIZE random images), fp32, on T threads. Prints "img/s X".

Needs torch and torchvision (Debian: apt-get install python3-torch python3-torchvision).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_nets  # noqa: E402
from torch_losses import structure_loss  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, choices=sorted(ref_nets.BUILDERS))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = ref_nets.BUILDERS[a.model](1).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-4)
    x = torch.randn(a.batch, 3, a.size, a.size)
    t = (torch.rand(a.batch, 1, a.size, a.size) > 0.5).float()

    def step():
        opt.zero_grad(set_to_none=True)
        outs = net(x)
        loss = structure_loss(outs[0], t) + sum(0.4 * structure_loss(o, t) for o in outs[1:])
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    dt = time.perf_counter() - t0
    print("img/s %.3f  (%d steps of %d at %dx%d in %.2f s, %d threads)"
          % (a.steps * a.batch / dt, a.steps, a.batch, a.size, a.size, dt, a.threads))


if __name__ == "__main__":
    main()
