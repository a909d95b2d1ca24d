#!/usr/bin/env python3
"""attention_ref.py: PyTorch reference fixtures for camotrain's transformer layer types
(linear, attention, xca, layer_scale, drop_path), checked by tests/test_attention.c.

Each fixture is a small network file, tests/fixtures/attention/NAME.cfg, and the same network
built in PyTorch from the reference implementations themselves, not from the C parser:
  - attention, drop_path: Hugging Face transformers' SegformerLayer (efficient self-attention
    with sequence reduction, Mix-FFN, stochastic depth) behind a 3x3 stem convolution;
  - xca, xca_zero_channel: timm's CrossCovarianceAttn with the XCA half and the inverted
    bottleneck of timm's SplitTransposeBlock around it (norm_xca, gamma_xca, norm, mlp,
    gamma: the block's own forward, less its channel-split convolutions and positional
    encoding); xca_zero_channel zeroes one query channel (F.normalize's clamp);
  - layer_scale: timm's EdgeNeXt ConvBlock (7x7 depthwise, LayerNorm, Mlp, gamma, DropPath);
  - linear: timm's Mlp (Linear, GELU, Linear) after a LayerNorm, and a Linear without bias.
Parameter names are the reference modules' state_dict names, which the network files use.

Values (docs/models.md "Reference tests", computed in double, rounded to float32):
  r(seed, i) = fmix32((seed + i * 0x9E3779B9) mod 2^32) / 2^31 - 1, seed = fnv1a32(name);
  weights of 2 or more dimensions r * sqrt(3 / fan_in); `temperature` 1 + 0.5 r; `gamma*`
  0.5 + 0.25 r; other `*.weight` 1 + 0.1 r; biases 0.1 r; input r(fnv1a32("input"), i);
  upstream gradient of output o r(fnv1a32("grad." + o), i) (NCHW order).
The parameters are stored in the fixture too (param.NAME, PyTorch layout), so the C test
loads them through camo_net_load_pretrained, the path PyTorch state dicts take.

drop_path draws camotrain's numbers: image i of a forward is kept when
  u = camo_rand_uniform(key, fnv1a32(layer name)) >= p,
  key = h(h(h(rng_seed ^ "droppath") ^ rng_step) ^ (rng_sample0 + i)), h = splitmix64's
finaliser (src/nn/layer_residual.c); the reference's drop_path functions are patched to use
these u in place of torch.rand / bernoulli_, their arithmetic otherwise unchanged.

The reference runs in float64 (the truth the C float32 result is judged against); a float32
run is recorded as metadata `torch_f32_err` (float32 PyTorch's own normwise error).

Fixture tensors (NCHW / PyTorch layouts): input, param.NAME, grad_output.O, output.O, dinput,
grad.NAME. Metadata: config, batch, height, width, training, rng_seed, rng_step,
rng_sample0, outputs, drop_decisions, grad_floor (the least denominator of a parameter
gradient's error), tol.TENSOR (where float32 PyTorch itself is off by more than 1e-5),
torch_f32_err, versions.

Run: /tmp/venv-t1/bin/python tools/attention_ref.py [--out tests/fixtures/attention]
(a venv with --system-site-packages over Debian's torch 1.13, plus safetensors,
timm==0.9.16 and transformers==4.30.2).
"""
import argparse
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

import timm
import timm.layers.drop as timm_drop
from timm.layers import Mlp
from timm.models.edgenext import ConvBlock, CrossCovarianceAttn
import transformers
from transformers import SegformerConfig
from transformers.models.segformer import modeling_segformer as hf

from ref_hash import fnv1a32, hash_uniform  # the closed-form values (tools/torch_ref.py's)

M64 = (1 << 64) - 1

# ---- closed-form values (tests/test_torch_ref.c, docs/models.md) ----


def param_value(name, shape):
    n = int(np.prod(shape)) if shape else 1
    r = hash_uniform(fnv1a32(name), n)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "temperature":
        v = 1.0 + 0.5 * r
    elif len(shape) >= 2:
        v = r * math.sqrt(3.0 / float(np.prod(shape[1:])))
    elif leaf.startswith("gamma"):
        v = 0.5 + 0.25 * r
    elif leaf == "weight":
        v = 1.0 + 0.1 * r
    else:
        v = 0.1 * r
    return v.astype(np.float32).reshape(shape)


# ---- camotrain's drop_path draws (src/core/common.c, src/nn/layer_residual.c) ----


def hash64(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def rand_uniform(key, counter):
    return np.float32((hash64(key ^ hash64(counter)) >> 40) * (1.0 / 16777216.0))


def drop_draws(rng, name, n):
    seed, step, sample0 = rng
    out = []
    for i in range(n):
        key = hash64((seed ^ 0x64726F7070617468) & M64)
        key = hash64(key ^ (step & M64))
        key = hash64(key ^ ((sample0 + i) & M64))
        out.append(rand_uniform(key, fnv1a32(name)))
    return np.array(out, dtype=np.float32)


class Draws:
    """The drop_path layers of one forward, in call order; records the decisions."""

    def __init__(self, rng, names):
        self.rng, self.names, self.k, self.decisions = rng, names, 0, []

    def next(self, n, p):
        name = self.names[self.k]
        self.k += 1
        u = drop_draws(self.rng, name, n)
        self.decisions += [bool(x >= np.float32(p)) for x in u]  # the C rule
        return u


DRAWS = None


def hf_drop_path(input, drop_prob=0.0, training=False, scale_by_keep=True):
    """transformers' drop_path (modeling_segformer) with torch.rand replaced."""
    if drop_prob == 0.0 or not training:
        return input
    keep_prob = 1 - drop_prob
    shape = (input.shape[0],) + (1,) * (input.ndim - 1)
    u = torch.tensor(DRAWS.next(input.shape[0], drop_prob), dtype=input.dtype)
    random_tensor = keep_prob + u.view(shape)
    random_tensor.floor_()
    return input.div(keep_prob) * random_tensor


def timm_drop_path(x, drop_prob=0.0, training=False, scale_by_keep=True):
    """timm's drop_path (timm.layers.drop) with bernoulli_ replaced by u >= p."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    u = DRAWS.next(x.shape[0], drop_prob)
    random_tensor = torch.tensor(u >= np.float32(drop_prob), dtype=x.dtype).view(shape)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


hf.drop_path = hf_drop_path
timm_drop.drop_path = timm_drop_path

# ---- the reference networks ----


def tokens_to_nchw(t, H, W):
    B, _, C = t.shape
    return t.transpose(1, 2).reshape(B, C, H, W)


class SegformerRef(nn.Module):
    """stem conv, then one transformers SegformerLayer on its pixels as tokens"""

    def __init__(self, C, heads, sr, mlp_ratio, drop_path):
        super().__init__()
        cfg = SegformerConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                              hidden_act="gelu")
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.blk = hf.SegformerLayer(cfg, hidden_size=C, num_attention_heads=heads,
                                     drop_path=drop_path, sequence_reduction_ratio=sr,
                                     mlp_ratio=mlp_ratio)

    def forward(self, x):
        y = self.stem(x)
        H, W = y.shape[2:]
        t = self.blk(y.flatten(2).transpose(1, 2), H, W)[0]
        return {"main": tokens_to_nchw(t, H, W)}


class XcaBlock(nn.Module):
    """timm's SplitTransposeBlock (edgenext.py) less its split convolutions and positional
    encoding: the same submodules, names and forward"""

    def __init__(self, dim, num_heads, drop_path):
        super().__init__()
        self.norm_xca = nn.LayerNorm(dim, eps=1e-6)
        self.gamma_xca = nn.Parameter(torch.ones(dim))
        self.xca = CrossCovarianceAttn(dim, num_heads=num_heads, qkv_bias=True)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim, act_layer=nn.GELU)
        self.gamma = nn.Parameter(torch.ones(dim))
        self.drop_path = timm_drop.DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        shortcut = x
        B, C, H, W = x.shape
        x = x.reshape(B, C, H * W).permute(0, 2, 1)
        x = x + self.drop_path(self.gamma_xca * self.xca(self.norm_xca(x)))
        xca = x
        x = x.reshape(B, H, W, C)
        x = self.norm(x)
        x = self.mlp(x)
        x = self.gamma * x
        x = x.permute(0, 3, 1, 2)
        x = shortcut + self.drop_path(x)
        return x, tokens_to_nchw(xca, H, W)


class XcaRef(nn.Module):
    def __init__(self, C, heads, drop_path):
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.blk = XcaBlock(C, heads, drop_path)

    def forward(self, x):
        main, xca = self.blk(self.stem(x))
        return {"main": main, "xca": xca}


class ConvBlockRef(nn.Module):
    """stem conv, then timm's EdgeNeXt ConvBlock"""

    def __init__(self, C, drop_path):
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.blk = ConvBlock(C, kernel_size=7, drop_path=drop_path)

    def forward(self, x):
        return {"main": self.blk(self.stem(x))}


class MlpRef(nn.Module):
    """stem conv, LayerNorm, timm Mlp, residual; a Linear without bias as a second output"""

    def __init__(self, C):
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.norm = nn.LayerNorm(C, eps=1e-6)
        self.mlp = Mlp(C, 3 * C, act_layer=nn.GELU)
        self.head = nn.Linear(C, 5, bias=False)

    def forward(self, x):
        y = self.stem(x)
        H, W = y.shape[2:]
        t = y.flatten(2).transpose(1, 2)
        t = t + self.mlp(self.norm(t))
        return {"main": tokens_to_nchw(t, H, W), "head": tokens_to_nchw(self.head(t), H, W)}


# ---- the network files ----

CFG_LINEAR = """# linear: timm's Mlp (Linear, GELU, Linear) after a LayerNorm, a Linear without bias
# (tools/attention_ref.py writes this file and its fixture)
name = "t_linear";
input_channels = 3;
layers = (
  { name = "stem"; type = "conv"; filters = 8; size = 3; },
  { name = "norm"; type = "layernorm"; eps = 1e-6; },
  { name = "mlp.fc1"; type = "linear"; filters = 24; },
  { name = "mlp.act"; type = "gelu"; },
  { name = "mlp.fc2"; type = "linear"; filters = 8; },
  { name = "add"; type = "add"; from = ["stem", "mlp.fc2"]; },
  { name = "head"; type = "linear"; filters = 5; bias = false; }
);
outputs = (
  { name = "main"; layer = "add"; },
  { name = "head"; layer = "head"; }
);
"""


def cfg_segformer(name, drop):
    dp1 = '  { name = "blk.drop_path1"; type = "drop_path"; p = 0.5; },\n' if drop else ""
    dp2 = '  { name = "blk.drop_path2"; type = "drop_path"; p = 0.5; },\n' if drop else ""
    a1 = "blk.drop_path1" if drop else "blk.attention.output.dense"
    a2 = "blk.drop_path2" if drop else "blk.mlp.dense2"
    what = ",\n# stochastic depth p = 0.5 on both residual branches" if drop else ""
    return f"""# {name}: transformers' SegformerLayer: efficient self-attention (2 heads, keys
# and values from a 2x2 stride-2 reduction), Mix-FFN, nn.LayerNorm's default eps 1e-5{what}
# (tools/attention_ref.py writes this file and its fixture)
name = "t_{name}";
input_channels = 3;
layers = (
  {{ name = "stem"; type = "conv"; filters = 16; size = 3; }},
  {{ name = "blk.layer_norm_1"; type = "layernorm"; eps = 1e-5; }},
  {{ name = "blk.attention.self.query"; type = "linear"; filters = 16; }},
  {{ name = "blk.attention.self.sr"; type = "conv"; filters = 16; size = 2; stride = 2; pad = 0;
     from = "blk.layer_norm_1"; }},
  {{ name = "blk.attention.self.layer_norm"; type = "layernorm"; eps = 1e-5; }},
  {{ name = "blk.attention.self.key"; type = "linear"; filters = 16; }},
  {{ name = "blk.attention.self.value"; type = "linear"; filters = 16;
     from = "blk.attention.self.layer_norm"; }},
  {{ name = "blk.attention.self.attn"; type = "attention"; heads = 2;
     from = ["blk.attention.self.query", "blk.attention.self.key", "blk.attention.self.value"]; }},
  {{ name = "blk.attention.output.dense"; type = "linear"; filters = 16; }},
{dp1}  {{ name = "blk.add1"; type = "add"; from = ["stem", "{a1}"]; }},
  {{ name = "blk.layer_norm_2"; type = "layernorm"; eps = 1e-5; }},
  {{ name = "blk.mlp.dense1"; type = "linear"; filters = 32; }},
  {{ name = "blk.mlp.dwconv.dwconv"; type = "conv"; filters = 32; size = 3; groups = 32; }},
  {{ name = "blk.mlp.act"; type = "gelu"; }},
  {{ name = "blk.mlp.dense2"; type = "linear"; filters = 16; }},
{dp2}  {{ name = "blk.add2"; type = "add"; from = ["blk.add1", "{a2}"]; }}
);
"""


def cfg_xca(name, what):
    return f"""# {name}: timm's CrossCovarianceAttn (4 heads, fused qkv) in the XCA half
# and inverted bottleneck of timm's SplitTransposeBlock{what}
# (tools/attention_ref.py writes this file and its fixture)
name = "t_{name}";
input_channels = 3;
layers = (
  {{ name = "stem"; type = "conv"; filters = 16; size = 3; }},
  {{ name = "blk.norm_xca"; type = "layernorm"; eps = 1e-6; }},
  {{ name = "blk.xca.qkv"; type = "linear"; filters = 48; }},
  {{ name = "blk.xca"; type = "xca"; heads = 4; }},
  {{ name = "blk.xca.proj"; type = "linear"; filters = 16; }},
  {{ name = "blk.gamma_xca"; type = "layer_scale"; }},
  {{ name = "blk.add_xca"; type = "add"; from = ["stem", "blk.gamma_xca"]; }},
  {{ name = "blk.norm"; type = "layernorm"; eps = 1e-6; }},
  {{ name = "blk.mlp.fc1"; type = "linear"; filters = 64; }},
  {{ name = "blk.mlp.act"; type = "gelu"; }},
  {{ name = "blk.mlp.fc2"; type = "linear"; filters = 16; }},
  {{ name = "blk.gamma"; type = "layer_scale"; }},
  {{ name = "blk.add"; type = "add"; from = ["stem", "blk.gamma"]; }}
);
outputs = (
  {{ name = "main"; layer = "blk.add"; }},
  {{ name = "xca"; layer = "blk.add_xca"; }}
);
"""


CFG_LAYER_SCALE = """# layer_scale: timm's EdgeNeXt ConvBlock: 7x7 depthwise conv, LayerNorm
# (eps 1e-6), Mlp, gamma, DropPath (p = 0.25), residual
# (tools/attention_ref.py writes this file and its fixture)
name = "t_layer_scale";
input_channels = 3;
layers = (
  { name = "stem"; type = "conv"; filters = 16; size = 3; },
  { name = "blk.conv_dw"; type = "conv"; filters = 16; size = 7; groups = 16; },
  { name = "blk.norm"; type = "layernorm"; eps = 1e-6; },
  { name = "blk.mlp.fc1"; type = "linear"; filters = 64; },
  { name = "blk.mlp.act"; type = "gelu"; },
  { name = "blk.mlp.fc2"; type = "linear"; filters = 16; },
  { name = "blk.gamma"; type = "layer_scale"; },
  { name = "blk.drop_path"; type = "drop_path"; p = 0.25; },
  { name = "blk.add"; type = "add"; from = ["stem", "blk.drop_path"]; }
);
"""

RNG = (12345, 7, 3)  # rng_seed, rng_step, rng_sample0 of the drop_path fixtures


def zero_query_channel(vals):
    """q channel 1 of the fused qkv projection is 0 for every token: F.normalize's clamp"""
    vals["blk.xca.qkv.weight"][1, :] = 0
    vals["blk.xca.qkv.bias"][1] = 0


FIXTURES = [
    # name, cfg, model, N, H, W, drop_path layer names in call order, tweak
    ("linear", CFG_LINEAR, lambda: MlpRef(8), 2, 7, 6, [], None),
    ("attention", cfg_segformer("attention", False), lambda: SegformerRef(16, 2, 2, 2, 0.0),
     2, 12, 10, [], None),
    ("drop_path", cfg_segformer("drop_path", True), lambda: SegformerRef(16, 2, 2, 2, 0.5),
     4, 8, 6, ["blk.drop_path1", "blk.drop_path2"], None),
    ("xca", cfg_xca("xca", ""), lambda: XcaRef(16, 4, 0.0), 2, 9, 7, [], None),
    ("xca_zero_channel", cfg_xca("xca_zero_channel",
                                 ",\n# query channel 1 zero (its qkv weight row and bias are 0)"),
     lambda: XcaRef(16, 4, 0.0), 2, 6, 5, [], zero_query_channel),
    ("layer_scale", CFG_LAYER_SCALE, lambda: ConvBlockRef(16, 0.25), 6, 9, 8,
     ["blk.drop_path"], None),
]


def run(model, vals, x0, grads, dtype, draw_names, N):
    """forward and backward in dtype; outputs, dinput, parameter gradients (float64 numpy)"""
    global DRAWS
    model = model.to(dtype).train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(vals[name]).to(dtype))
    DRAWS = Draws(RNG, draw_names)
    x = torch.from_numpy(x0).to(dtype).requires_grad_(True)
    outs = model(x)
    loss = sum((outs[o] * torch.from_numpy(grads[o]).to(dtype)).sum() for o in grads)
    loss.backward()
    assert DRAWS.k == len(draw_names), "a drop_path layer was not called"
    res = {"output." + o: outs[o].detach().double().numpy() for o in grads}
    res["dinput"] = x.grad.double().numpy()
    for name, p in model.named_parameters():
        res["grad." + name] = p.grad.double().numpy()
    return res, DRAWS.decisions


TOL = 1e-4          # tests/test_attention.c's bound (docs/models.md "Reference tests")
GRAD_FLOOR = 1e-7   # gradient denominators >= GRAD_FLOOR * the fixture's gradient scale
SAFETY = 10.0       # tol.<name> = SAFETY * float32 PyTorch's own error where that exceeds TOL


def normwise(a, b, floor=0.0):
    m = max(np.abs(b).max(), floor)
    return np.abs(a - b).max() / (m if m > 0 else 1.0)


def outputs_of(cfg):
    """the output names the network file lists, "main" when it lists none"""
    if "outputs = (" not in cfg:
        return ["main"]
    tail = cfg.split("outputs = (")[1]
    return [s.split('"')[0] for s in tail.split('name = "')[1:]]


def make(fx, out_dir):
    name, cfg, make_model, N, H, W, draw_names, tweak = fx
    torch.manual_seed(0)
    model = make_model()
    vals = {n: param_value(n, tuple(p.shape)) for n, p in model.named_parameters()}
    if tweak:
        tweak(vals)
    x0 = hash_uniform(fnv1a32("input"), N * 3 * H * W).astype(np.float32).reshape(N, 3, H, W)
    with torch.no_grad():  # output shapes; eval mode draws nothing
        outs = model.double().eval()(torch.from_numpy(x0).double())
    shapes = {o: tuple(t.shape) for o, t in outs.items()}
    names = outputs_of(cfg)
    assert sorted(names) == sorted(shapes), (names, list(shapes))
    grads = {o: hash_uniform(fnv1a32("grad." + o), int(np.prod(shapes[o])))
             .astype(np.float32).reshape(shapes[o]) for o in names}
    ref, decisions = run(make_model(), vals, x0, grads, torch.float64, draw_names, N)
    f32, dec32 = run(make_model(), vals, x0, grads, torch.float32, draw_names, N)
    assert decisions == dec32
    if draw_names:
        assert any(decisions) and not all(decisions), f"{name}: draws keep all or none"
    # as tools/torch_ref.py: where float32 PyTorch itself is off float64 by more than
    # TOL / SAFETY (a gradient that is 0 in exact arithmetic, as the key bias's: softmax
    # ignores a shift of a whole row), the tensor gets tol.<name> = SAFETY * that error
    # the scale: the median of the parameter gradients' largest values (xca_zero_channel's
    # 1e12 row of the qkv weight gradient must not hide every other gradient under its floor)
    floor = GRAD_FLOOR * float(np.median([np.abs(v).max() for k, v in ref.items()
                                          if k.startswith("grad.")]))
    errs = {k: normwise(f32[k], ref[k], floor if k.startswith("grad.") else 0.0) for k in ref}
    f32_err = max(errs.values())
    t = {"input": torch.from_numpy(x0)}
    for n in vals:
        t["param." + n] = torch.from_numpy(vals[n])
    for o in names:
        t["grad_output." + o] = torch.from_numpy(grads[o])
    for k, v in ref.items():
        t[k] = torch.from_numpy(v.astype(np.float32)).contiguous()
    meta = {"config": cfg, "batch": str(N), "height": str(H), "width": str(W),
            "training": "1", "rng_seed": str(RNG[0]), "rng_step": str(RNG[1]),
            "rng_sample0": str(RNG[2]), "outputs": ",".join(names),
            "torch_f32_err": "%.3g" % f32_err,
            "drop_decisions": "".join("1" if d else "0" for d in decisions),
            "grad_floor": "%.9g" % floor,
            "generator": "tools/attention_ref.py",
            "versions": "torch %s, timm %s, transformers %s" % (
                torch.__version__, timm.__version__, transformers.__version__)}
    loose = {k: e for k, e in errs.items() if e > TOL / SAFETY}
    for k, e in loose.items():
        meta["tol." + k] = "%.3g" % (SAFETY * e)
    with open(os.path.join(out_dir, name + ".cfg"), "w") as f:
        f.write(cfg)
    save_file(t, os.path.join(out_dir, name + ".safetensors"), metadata=meta)
    print("%-18s N=%d %dx%d: %d tensors, float32 PyTorch off float64 by %.3g%s%s" % (
        name, N, H, W, len(t), f32_err,
        "".join(" (tol.%s %.3g)" % (k, SAFETY * e) for k, e in loose.items()),
        ", drop_path kept " + meta["drop_decisions"] if draw_names else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/attention")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for fx in FIXTURES:
        make(fx, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
