#!/usr/bin/env python3
"""PyTorch reference values for tests/test_loss_torch.c: the four fused losses and the SGD /
AdamW steps of the backend op table (src/backend/backend.h), written to
tests/fixtures/loss_ref.safetensors.

Inputs (deterministic; the C test regenerates them the same way, math.sin/cos in double,
then rounded to float32):
  binary losses: N=2, 1 channel, H=37, W=45 (larger than the 31x31 pool window)
    logits x (NCHW flat index i)  = 3 * sin(0.37*i + 0.1)
    target t[n,0,h,w]             = 1 if sin(0.21*h + 0.5*n) * cos(0.17*w + 0.3) > 0.2 else 0
  cross-entropy: N=2, C=4, H=13, W=17
    logits x (NCHW flat index i)  = 3 * sin(0.37*i + 0.1)
    label[n,h,w]                  = (3*h + 5*w + 7*n) % 5, and 4 -> 255 (ignore_index)
  optimizers: n=257 weights, 5 steps
    w0[i] = sin(0.11*i + 0.2);  grad at step s (0-based): g_s[i] = 0.5 * cos(0.07*i + 0.5*s)
    the C side passes g_s with grad_scale; here the gradient is grad_scale * g_s.

Losses (PyTorch formulas; per-pixel BCE = max(x,0) - x*t + log(1 + exp(-|x|))):
  bce       = F.binary_cross_entropy_with_logits(x, t)             (mean over pixels)
  structure = SINet-V2 / F3Net structure_loss, per image:
              weit = 1 + 5*|avg_pool2d(t, 31, stride 1, padding 15) - t|
              wbce = sum(weit*bce)/sum(weit)
              p = sigmoid(x); inter = sum(p*t*weit); union = sum((p+t)*weit)
              wiou = 1 - (inter+1)/(union-inter+1); loss = mean over images of wbce + wiou
              (The published code calls binary_cross_entropy_with_logits(..., reduce='none'),
              which PyTorch's legacy argument handling reads as reduction='mean', so there
              the "weighted" BCE is the plain mean BCE. camotrain implements the weighted
              form its documentation describes, as here.)
  dice      = mean over images of 1 - (2*sum(p*t)+1)/(sum(p)+sum(t)+1), p = sigmoid(x)
  ce        = F.cross_entropy(x, label, ignore_index=255)           (mean over valid pixels)
Optimizers: torch.optim.SGD (lr 0.1, momentum 0.9, wd 1e-4, grad_scale 0.5) and SGD with
Nesterov (lr 0.05, momentum 0.9, wd 5e-4, grad_scale 1), torch.optim.AdamW (lr 1e-2,
betas (0.9, 0.999), eps 1e-8, wd 0.05, grad_scale 0.5).

Everything runs in float64 on the float32-rounded inputs and is rounded to float32 when
saved, so the reference's own rounding is negligible. Keys (float32, NCHW):
  bin.logits, bin.target, {bce,structure,dice}.loss [1], {bce,structure,dice}.dlogits,
  ce.logits, ce.labels (as float), ce.loss [1], ce.dlogits,
  opt.w0, opt.grads [5, n], sgd.w, sgd.buf, sgd_nesterov.w, sgd_nesterov.buf,
  adamw.w, adamw.m, adamw.v
Regenerate (from the repository root): python3 tools/loss_ref.py [--out FILE]
"""
import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_losses import structure_loss  # noqa: E402  (the formula the benchmarks train with)

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "loss_ref.safetensors")

BN, BH, BW = 2, 37, 45
CN, CC, CH, CW = 2, 4, 13, 17
IGNORE = 255
NOPT, STEPS = 257, 5


def f32(values, shape):
    """float64 tensor of float32-rounded values"""
    return torch.tensor(values, dtype=torch.float32).reshape(shape).double()


def logits(shape):
    n = math.prod(shape)
    return f32([3 * math.sin(0.37 * i + 0.1) for i in range(n)], shape)


def binary_target():
    t = [1.0 if math.sin(0.21 * h + 0.5 * n) * math.cos(0.17 * w + 0.3) > 0.2 else 0.0
         for n in range(BN) for h in range(BH) for w in range(BW)]
    return f32(t, (BN, 1, BH, BW))


def ce_labels():
    lab = [(3 * h + 5 * w + 7 * n) % 5 for n in range(CN) for h in range(CH) for w in range(CW)]
    return torch.tensor([IGNORE if v == 4 else v for v in lab]).reshape(CN, CH, CW)


def dice_loss(x, t):
    p = torch.sigmoid(x)
    inter = (p * t).sum(dim=(1, 2, 3))
    return (1 - (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + t.sum(dim=(1, 2, 3)) + 1)).mean()


def loss_and_grad(fn, x, *args):
    x = x.clone().requires_grad_(True)
    loss = fn(x, *args)
    loss.backward()
    return loss.detach().reshape(1), x.grad


def run_optim(make, grad_scale, w0, grads):
    w = torch.nn.Parameter(w0.clone())
    opt = make([w])
    for g in grads:
        w.grad = grad_scale * g
        opt.step()
    return w.detach(), opt.state[w]


def main():
    ap = argparse.ArgumentParser(description="tests/fixtures/loss_ref.safetensors")
    ap.add_argument("--out", default=OUT, help="where to write (default: the fixture)")
    path = ap.parse_args().out
    out = {}
    x, t = logits((BN, 1, BH, BW)), binary_target()
    out["bin.logits"], out["bin.target"] = x, t
    for name, fn in (("bce", F.binary_cross_entropy_with_logits), ("structure", structure_loss),
                     ("dice", dice_loss)):
        out[name + ".loss"], out[name + ".dlogits"] = loss_and_grad(fn, x, t)
    xc, lab = logits((CN, CC, CH, CW)), ce_labels()
    out["ce.logits"], out["ce.labels"] = xc, lab.double()
    out["ce.loss"], out["ce.dlogits"] = loss_and_grad(
        lambda v: F.cross_entropy(v, lab, ignore_index=IGNORE), xc)

    w0 = f32([math.sin(0.11 * i + 0.2) for i in range(NOPT)], (NOPT,))
    grads = f32([0.5 * math.cos(0.07 * i + 0.5 * s) for s in range(STEPS) for i in range(NOPT)],
                (STEPS, NOPT))
    out["opt.w0"], out["opt.grads"] = w0, grads
    w, st = run_optim(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
                      0.5, w0, grads)
    out["sgd.w"], out["sgd.buf"] = w, st["momentum_buffer"]
    w, st = run_optim(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                                weight_decay=5e-4), 1.0, w0, grads)
    out["sgd_nesterov.w"], out["sgd_nesterov.buf"] = w, st["momentum_buffer"]
    w, st = run_optim(lambda p: torch.optim.AdamW(p, lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
                                                  weight_decay=0.05), 0.5, w0, grads)
    out["adamw.w"], out["adamw.m"], out["adamw.v"] = w, st["exp_avg"], st["exp_avg_sq"]

    out = {k: v.detach().float().contiguous() for k, v in out.items()}
    save_file(out, path, metadata={"generator": "tools/loss_ref.py", "torch": torch.__version__})
    for k in ("bce.loss", "structure.loss", "dice.loss", "ce.loss"):
        print(f"{k} = {out[k].item():.7g}")
    print("wrote", os.path.relpath(path, ROOT))


if __name__ == "__main__":
    main()
