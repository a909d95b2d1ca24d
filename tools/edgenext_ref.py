#!/usr/bin/env python3
"""edgenext_ref.py: reference fixtures for conf/models/edgenext_s.cfg and edgenext_b.cfg,
from timm's (0.9.16) own EdgeNeXt (tests/test_torch_ref.c and tests/test_edgenext.c check
them; docs/models.md "EdgeNeXt").

- tests/fixtures/edgenext_{s,b}.cfg: the network file with every drop_path p = 0, after
  checking the file's p against timm's schedule (drop_path_rate 0.1), and with the four stage
  outputs as extra outputs (stage1..stage4), so each stage is compared on its own.
- tests/fixtures/edgenext_{s,b}.safetensors: tools/torch_ref.py's make_fixture with the
  builder below: timm.create_model("edgenext_small"/"edgenext_base") at random init, its
  `stem` and `stages` registered at the root (timm's state dict names), and a SegFormer-style
  all-MLP head written here (decode_head.*); closed-form parameter values by name, a 2x3x64x64
  input, train mode, float64 reference; the outputs (logits and stage outputs), the input
  gradient and every parameter gradient (sampled for the large ones) of sum(outputs * fixed
  upstream gradients). torch_ref.py checks first that the reference has the file's parameter
  names and shapes, conv geometry and LayerNorm eps.
- tests/fixtures/edgenext/timm_{edgenext_small,edgenext_base}.txt: the state dict of timm's
  model as tools/convert_weights.py writes it (torch.save, then the converter): one line
  "name dtype d0,d1,..." per tensor, in file order. tests/test_edgenext.c writes such a file
  (closed-form values) and loads it into the network (every encoder tensor, timm's classifier
  head.* unexpected, only decode_head.* missing).
- tests/fixtures/edgenext/fourier_pos.safetensors: timm's PositionalEncodingFourier before its
  projection (the projection set to the identity) at a few sizes: pos.HxW, (64, H, W).

Run: /tmp/venv-edgenext/bin/python tools/edgenext_ref.py [--only s|b]
(a venv with --system-site-packages over Debian's torch 1.13, plus timm==0.9.16, safetensors,
libconf).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

import timm
from timm.models.edgenext import PositionalEncodingFourier

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import edgenext_cfg  # noqa: E402
import ref_nets  # noqa: E402
import torch_ref  # noqa: E402

ROOT = os.path.normpath(os.path.join(HERE, ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")


def fourier_encoding(B, H, W, hidden=32, temperature=10000):
    """timm's PositionalEncodingFourier((B, H, W)) before its projection: the projection
    (a 1x1 conv 2*hidden -> 2*hidden) set to the identity, bias 0, which passes every
    value through exactly."""
    pe = PositionalEncodingFourier(hidden_dim=hidden, dim=2 * hidden, temperature=temperature)
    with torch.no_grad():
        pe.token_projection.weight.copy_(torch.eye(2 * hidden).view(2 * hidden, 2 * hidden, 1, 1))
        pe.token_projection.bias.zero_()
        return pe((B, H, W)).detach()


class AllMLPHead(nn.Module):
    """SegFormer's decode head (transformers' SegformerDecodeHead, dropout left out): per
    stage a Linear to E channels, resized to stage 1's size, concatenated c4..c1, a 1x1 conv
    without bias, BN, ReLU, the classifier."""

    def __init__(self, dims, E, classes):
        super().__init__()
        self.linear_c = nn.ModuleList()
        for c in dims:
            m = nn.Module()
            m.proj = nn.Linear(c, E)
            self.linear_c.append(m)
        self.linear_fuse = nn.Conv2d(4 * E, E, 1, bias=False)
        self.batch_norm = nn.BatchNorm2d(E)
        self.activation = nn.ReLU()
        self.classifier = nn.Conv2d(E, classes, 1)

    def forward(self, feats):
        size = feats[0].shape[2:]
        ys = []
        for f, m in zip(feats, self.linear_c):
            y = m.proj(f.flatten(2).transpose(1, 2)).transpose(1, 2)
            y = y.reshape(f.shape[0], -1, f.shape[2], f.shape[3])
            if y.shape[2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            ys.append(y)
        y = self.linear_fuse(torch.cat(ys[::-1], dim=1))
        return self.classifier(self.activation(self.batch_norm(y)))


class EdgeNeXtSeg(nn.Module):
    """timm's EdgeNeXt (its stem and stages at the root, drop_path_rate 0) + AllMLPHead;
    outputs: the logits resized to the input, then the four stage outputs."""

    def __init__(self, classes, variant):
        super().__init__()
        timm_name, dims, _, E = edgenext_cfg.VARIANTS[variant]
        m = timm.create_model(timm_name, drop_path_rate=0.0)
        self.stem, self.stages = m.stem, m.stages
        self.decode_head = AllMLPHead(dims, E, classes)
        self.in_ch, self.classes = 3, classes
        _, feats = edgenext_cfg.network(variant)
        self.outputs = [("main", "out")] + [("stage%d" % (i + 1), f) for i, f in enumerate(feats)]

    def forward(self, x):
        y, feats = self.stem(x), []
        for s in self.stages:
            y = s(y)
            feats.append(y)
        logits = F.interpolate(self.decode_head(feats), size=x.shape[2:], mode="bilinear",
                               align_corners=False)
        return [logits] + feats


for _v in edgenext_cfg.VARIANTS:
    ref_nets.BUILDERS[_v] = lambda classes, v=_v: ref_nets.finish(EdgeNeXtSeg(classes, v))


def timm_drop_path_rates(variant, rate):
    """{block path: p} of timm's model built with drop_path_rate = rate."""
    m = timm.create_model(edgenext_cfg.VARIANTS[variant][0], drop_path_rate=rate)
    out = {}
    for i, s in enumerate(m.stages):
        for j, b in enumerate(s.blocks):
            out["stages.%d.blocks.%d" % (i, j)] = float(getattr(b.drop_path, "drop_prob", 0.0))
    return out


def derive_cfg(variant):
    """tests/fixtures/<variant>.cfg: p = 0 (checked first), stage outputs added."""
    src = os.path.join(ROOT, "conf", "models", variant + ".cfg")
    dst = os.path.join(FIX, variant + ".cfg")
    text = open(src).read()
    want = timm_drop_path_rates(variant, edgenext_cfg.VARIANTS[variant][2])
    got = re.findall(r'name = "(stages\.\d+\.blocks\.\d+)\.drop_path(?:_xca)?"; '
                     r'type = "drop_path"; p = ([0-9.eE+-]+);', text)
    blocks = {b for b, _ in got}
    assert blocks == set(want), "%s: drop_path blocks differ from timm's" % src
    for blk, p in got:
        assert abs(float(p) - want[blk]) < 1e-6, "%s: %s p = %s, timm %g" % (src, blk, p,
                                                                           want[blk])
    text, n = re.subn(r'(type = "drop_path"; p = )[0-9.eE+-]+;', r"\g<1>0.0;", text)
    assert n == len(got)
    _, feats = edgenext_cfg.network(variant)
    outs = ['{ name = "main"; layer = "out"; }'] + [
        '{ name = "stage%d"; layer = "%s"; }' % (i + 1, f) for i, f in enumerate(feats)]
    text, n = re.subn(r'outputs = \(.*?\);', "outputs = (\n  " + ",\n  ".join(outs) + "\n);",
                      text, flags=re.S)
    assert n == 1
    with open(dst, "w") as f:
        f.write("# written by tools/edgenext_ref.py from conf/models/%s.cfg: every drop_path "
                "p = 0 and the\n# stage outputs added, for the comparison with timm "
                "(tests/fixtures/%s.safetensors)\n" % (variant, variant) + text)
    return os.path.relpath(dst, ROOT)


def timm_manifest(timm_name):
    """timm's state dict through torch.save and tools/convert_weights.py: name dtype shape."""
    m = timm.create_model(timm_name)
    with tempfile.TemporaryDirectory() as d:
        pth, st = os.path.join(d, "m.pth"), os.path.join(d, "m.safetensors")
        torch.save(m.state_dict(), pth)
        subprocess.run([sys.executable, os.path.join(HERE, "convert_weights.py"), pth, st],
                       check=True, stdout=subprocess.DEVNULL)
        from safetensors import safe_open
        lines = []
        with safe_open(st, "pt") as f:
            for k in f.keys():  # sorted by name, as the converter writes them
                t = f.get_tensor(k)
                lines.append("%s %s %s" % (k, str(t.dtype).replace("torch.", ""),
                                           ",".join(str(s) for s in t.shape)))
    out = os.path.join(FIX, "edgenext", "timm_%s.txt" % timm_name)
    with open(out, "w") as f:
        f.write("# %s (timm %s) state dict via tools/convert_weights.py: name dtype shape\n"
                % (timm_name, timm.__version__) + "\n".join(lines) + "\n")
    print("%s: %d tensors" % (out, len(lines)))


def fourier_fixture():
    sizes = [(5, 7), (16, 16), (10, 12)]
    t = {"pos.%dx%d" % hw: fourier_encoding(1, hw[0], hw[1])[0].contiguous() for hw in sizes}
    out = os.path.join(FIX, "edgenext", "fourier_pos.safetensors")
    save_file(t, out, metadata={"hidden_dim": "32", "temperature": "10000",
                                "timm": timm.__version__})
    print("%s: %s" % (out, ", ".join(sorted(t))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["s", "b"], help="one variant's network fixture")
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.chdir(ROOT)
    os.makedirs(os.path.join(FIX, "edgenext"), exist_ok=True)
    if not a.only:
        fourier_fixture()
        for v in edgenext_cfg.VARIANTS:
            timm_manifest(edgenext_cfg.VARIANTS[v][0])
    for v in edgenext_cfg.VARIANTS:
        if a.only and v != "edgenext_" + a.only:
            continue
        cfg = derive_cfg(v)
        torch_ref.make_fixture(cfg, 2, 64, 64, True, os.path.join(FIX, v + ".safetensors"),
                               ref_name=v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
