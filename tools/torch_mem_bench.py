#!/usr/bin/env python3
"""PyTorch side of tools/bench_memory.sh (make bench): the memory of one CPU training step.

Builds the network of a camotrain config file (GraphNet of tools/torch_ref.py), trains it as
camotrain does (AdamW, structure loss on every output with its config weight), fp32, batch B
of SIZE x SIZE random images, NCHW or channels_last. Training memory = peak resident memory
during the third step (after the optimizer state exists; the peak is reset just before
it, /proc/self/clear_refs) minus the resident memory of the runtime alone (after `import
torch` and one small convolution forward/backward, so the kernels' libraries are loaded,
before the model exists). Prints "train_bytes N".

Needs torch and libconf (Debian: apt-get install python3-torch python3-libconf).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:  # torch_ref writes fixtures with safetensors; building a network does not need it
    import safetensors.numpy  # noqa: F401
except ImportError:  # Debian has no python3-safetensors: a stand-in that is never called
    import types
    stub = types.ModuleType("safetensors.numpy")
    stub.save_file = None
    sys.modules["safetensors"] = types.ModuleType("safetensors")
    sys.modules["safetensors.numpy"] = stub
import torch_ref  # noqa: E402
from torch_losses import structure_loss  # noqa: E402


def rss_field(name):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(name + " not in /proc/self/status")


def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--channels-last", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    # the runtime alone: libraries loaded by a small step, then freed
    c = torch.nn.Conv2d(3, 4, 3).to(memory_format=fmt)
    c(torch.randn(1, 3, 8, 8).contiguous(memory_format=fmt)).sum().backward()
    del c
    base = rss_field("VmRSS")
    cfg = torch_ref.load_config(a.config)
    net = torch_ref.GraphNet(cfg).train().to(memory_format=fmt)
    weights = [float(o.get("weight", 1.0)) for o in cfg["outputs"]]
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-4)
    x = torch.randn(a.batch, 3, a.size, a.size).contiguous(memory_format=fmt)
    t = (torch.rand(a.batch, 1, a.size, a.size) > 0.5).float()

    def step():
        opt.zero_grad(set_to_none=True)
        outs = net(x)
        loss = sum(w * structure_loss(o, t) for w, o in zip(weights, outs))
        loss.backward()
        opt.step()

    step()
    step()
    reset_peak()
    step()
    print("train_bytes %d  (peak %d - runtime %d, %s)" % (rss_field("VmHWM") - base,
          rss_field("VmHWM"), base, "channels_last" if a.channels_last else "NCHW"))


if __name__ == "__main__":
    main()
