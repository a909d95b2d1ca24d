#!/usr/bin/env python3
"""moe_ref.py: PyTorch reference fixtures for camotrain's mixture-of-experts block (config
type `moe`, src/nn/layer_moe.c), checked by tests/test_moe.c.

Each case is a network file tests/fixtures/moe/NAME.cfg (a 3x3 stem conv, then the moe
block) and the same network written here in PyTorch, independently of the C parser: a
module with `gate` (nn.Linear on the globally pooled input), `experts` (an nn.ModuleList
of conv-GELU-conv residual branches), routing by softmax and torch.topk, the top-k
probabilities renormalised, each expert run on the images routed to it only (index_select)
and its output added back with index_add weighted by the renormalised gate. The objective
is sum(out * grad_output) + balance_weight * L_bal with Switch Transformer's loss for top-k
routings, L_bal = K * sum_e f_e * P_e, f_e = (routings to e) / (N * k) (a constant: it
changes only by jumps), P_e = the mean gate probability of e over the N images.

Values (computed in float64, stored as float32): r(seed, i) = fmix32((seed + i*0x9E3779B9)
mod 2^32) / 2^31 - 1, seed = fnv1a32(name) (+ salt for the input); weights of 2 or more
dimensions r * sqrt(3 / fan_in) (the gate's times `gate_scale`, so that routing is decided
by clear margins), biases 0.1 r; grad_output r(fnv1a32("grad.main"), i). The generator
takes the first input salt for which, in every image, the k-th and (k+1)-th probabilities
differ by at least 1e-3 (metadata `margin`): float32 rounding cannot change the routing.

Tensors (NCHW / PyTorch layouts): input, param.NAME, grad_output, output, gate_weights
(N, K: renormalised, 0 where not routed), dinput, grad.NAME. Metadata: config, batch,
height, width, experts, top_k, balance_weight, balance_loss, margin, routed (per image the
selected experts), versions.

Run: /tmp/venv-hmoe/bin/python tools/moe_ref.py [--out tests/fixtures/moe]
(a venv with --system-site-packages over Debian's python3-torch 1.13, plus safetensors).
"""
import argparse
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from ref_hash import fnv1a32, hash_uniform  # the closed-form values (tools/torch_ref.py's)

CASES = {
    # CamoXpert's shape: 7 experts, 4 per image
    "moe_block": dict(batch=4, height=6, width=5, C=6, hidden=5, experts=7, top_k=4,
                      balance_weight=0.5, gate_scale=4.0),
    # 3 images x 2 routings over 7 experts: some experts idle
    "moe_idle": dict(batch=3, height=5, width=4, C=4, hidden=3, experts=7, top_k=2,
                     balance_weight=0.1, gate_scale=4.0),
}

CFG = """# {name}.cfg: written by tools/moe_ref.py (the reference of tests/test_moe.c)
name = "{name}";
input_channels = 3;
classes = {C};
layers = (
  {{ name = "stem"; type = "conv"; filters = {C}; size = 3; }},
  {{ name = "moe"; type = "moe"; experts = {experts}; top_k = {top_k};
    balance_weight = {balance_weight};
    expert = (
      {{ name = "conv1"; type = "conv"; filters = {hidden}; size = 3; act = "gelu"; }},
      {{ name = "conv2"; type = "conv"; filters = {C}; size = 3; }},
      {{ name = "add"; type = "add"; from = ["conv2", "input"]; }}
    ); }}
);
"""


class ConvAct(nn.Module):
    """camotrain's `conv` with an activation: children conv (and act)"""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x):
        return F.gelu(self.conv(x))


class Expert(nn.Module):
    def __init__(self, C, hidden):
        super().__init__()
        self.conv1 = ConvAct(C, hidden)
        self.conv2 = nn.Conv2d(hidden, C, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.conv1(x)) + x


class MoE(nn.Module):
    def __init__(self, C, hidden, experts, top_k):
        super().__init__()
        self.k = top_k
        self.gate = nn.Linear(C, experts)
        self.experts = nn.ModuleList(Expert(C, hidden) for _ in range(experts))

    def forward(self, x):
        p = self.gate(x.mean(dim=(2, 3))).softmax(dim=-1)
        top_p, top_i = p.topk(self.k, dim=-1)
        w = top_p / top_p.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        dense = torch.zeros_like(p)
        for e, expert in enumerate(self.experts):
            rows, slot = (top_i == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue  # an idle expert runs neither way
            y = expert(x.index_select(0, rows))
            out = out.index_add(0, rows, w[rows, slot].view(-1, 1, 1, 1) * y)
            dense = dense.index_put((rows, torch.full_like(rows, e)), w[rows, slot])
        n, K = p.shape
        f = F.one_hot(top_i, K).sum(dim=(0, 1)).to(p.dtype) / (n * self.k)
        balance = K * (f * p.mean(dim=0)).sum()
        return out, balance, dense, p, top_i


class Net(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.stem = nn.Conv2d(3, c["C"], 3, padding=1)
        self.moe = MoE(c["C"], c["hidden"], c["experts"], c["top_k"])

    def forward(self, x):
        return self.moe(self.stem(x))


def fill(net, c):
    with torch.no_grad():
        for name, t in net.named_parameters():
            v = hash_uniform(fnv1a32(name), t.numel())
            if t.dim() >= 2:
                v = v * math.sqrt(3.0 / (t.numel() // t.shape[0]))
                if name == "moe.gate.weight":
                    v = v * c["gate_scale"]
            else:
                v = 0.1 * v
            t.copy_(torch.from_numpy(v).view_as(t))


def margin_of(p, k):
    s = p.sort(dim=-1, descending=True).values
    return float((s[:, k - 1] - s[:, k]).min()) if k < p.shape[1] else 1.0


def make(name, c, out_dir):
    torch.manual_seed(0)
    net = Net(c).double()
    fill(net, c)
    N, H, W = c["batch"], c["height"], c["width"]
    numel = N * 3 * H * W
    for salt in range(1000):
        x = torch.from_numpy(hash_uniform(fnv1a32("input") + salt, numel)).view(N, 3, H, W)
        with torch.no_grad():
            _, _, _, p, _ = net(x)
        margin = margin_of(p, c["top_k"])
        if margin >= 1e-3:
            break
    x = x.float().double().requires_grad_(True)  # the values C reads: float32
    with torch.no_grad():  # the stored parameters are float32 too
        for t in net.parameters():
            t.copy_(t.float().double())
    out, balance, dense, p, top_i = net(x)
    gout = torch.from_numpy(hash_uniform(fnv1a32("grad.main"), out.numel()))
    gout = gout.view_as(out).float().double()
    obj = (out * gout).sum() + c["balance_weight"] * balance
    obj.backward()
    t = {"input": x.detach(), "grad_output": gout, "output": out.detach(),
         "gate_weights": dense.detach(), "dinput": x.grad}
    for pname, prm in net.named_parameters():
        t["param." + pname] = prm.detach()
        # an idle expert's parameters get no gradient: zeros, as camotrain's stay
        t["grad." + pname] = prm.grad if prm.grad is not None else torch.zeros_like(prm)
    t = {k: v.float().contiguous() for k, v in t.items()}
    routed = ";".join(",".join(str(int(e)) for e in sorted(row.tolist())) for row in top_i)
    meta = {"config": f"tests/fixtures/moe/{name}.cfg", "batch": str(N), "height": str(H),
            "width": str(W), "experts": str(c["experts"]), "top_k": str(c["top_k"]),
            "balance_weight": repr(c["balance_weight"]), "balance_loss": repr(float(balance)),
            "margin": repr(margin), "routed": routed, "versions": f"torch {torch.__version__}"}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, name + ".cfg"), "w") as f:
        f.write(CFG.format(name=name, **c))
    save_file(t, os.path.join(out_dir, name + ".safetensors"), metadata=meta)
    print(f"{name}: routed {routed}, balance {float(balance):.6f}, margin {margin:.3g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/moe")
    a = ap.parse_args()
    for name, c in CASES.items():
        make(name, c, a.out)


if __name__ == "__main__":
    main()
