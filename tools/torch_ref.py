#!/usr/bin/env python3
"""PyTorch reference fixtures for tests/test_torch_ref.c (docs/models.md, "Reference tests").

Reads a network file (conf/models/*.cfg, tests/fixtures/layers/*.cfg) with the `libconf`
package and builds the network in PyTorch INDEPENDENTLY of the C parser: a graph module that
runs the layer list in order, composite layers expanded as docs/models.md says, modules
registered at their dotted paths so that state_dict names are exactly the C names
("layer1.0.conv1.weight", "enc1a.conv.weight", "head.weight", ...). A FIXTURES entry may
name a reference builder of tools/ref_nets.py instead (torchvision's ResNets and
DeepLabV3, mmsegmentation's PSP/UPer heads): the network is then built from those, not from
the file's layers, and must have the same parameter names and shapes as the file.

Parameters and the input get the closed-form values of docs/models.md (computed in float64,
rounded to float32). The forward pass (train mode, or eval with --eval) and the backward
pass (upstream gradient of every output from the closed-form rule; in train mode plus
balance_weight * L_bal of every `moe` block over the batch's images, which the C test arms
with camo_moe_set_balance_norm(net, N)) run in float64 on those float32 values; the results
are rounded to float32 and saved, so the reference's own rounding error is negligible. A
float32 run is made too and its error against the float64 reference is printed: it shows how
much a correct float32 implementation may differ.

Fixture contents (PyTorch layout, F32): `input`, `output.<o>` per output, `dinput`,
`grad.<param>` (params of at most S values) or `gradsample.<param>` (values at flat
indices (k*2654435761) mod numel, k = 0..S-1) + `gradsumsq.<param>` (shape [1]),
`buffer.<name>` (BN running_mean / running_var after the forward pass); S = 4096, or the
fixture's `samples` metadata (FIXTURE_SAMPLES: fewer, to keep a big network's file small).
Metadata: config (path relative to the repository root), batch, height, width, training,
kink_margin; with a moe block route_margin (the smallest gap between a selected and an
unselected gate probability of one image: the input is drawn again below ROUTE_MARGIN) and
balance_loss.

Regenerate (from the repository root; CI does not need PyTorch, the fixtures are committed):
    pip install torch safetensors libconf numpy
    (or Debian: apt-get install --no-install-recommends python3-torch python3-numpy, then
     /usr/bin/python3 -m pip install --break-system-packages safetensors libconf, and run
     /usr/bin/python3 rather than a pyenv python3)
    python3 tools/torch_ref.py --all
One fixture:
    python3 tools/torch_ref.py --config FILE --batch N --height H --width W [--eval] \\
        [--ref BUILDER] --out tests/fixtures/NAME.safetensors
Some of them: python3 tools/torch_ref.py --all --only deeplabv3_r18,pspnet_r18 (file names)
"""
import argparse
import math
import os
import sys

import libconf
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_nets  # noqa: E402
from ref_hash import fnv1a32, hash_uniform  # noqa: E402  (the closed-form values)

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
SAMPLES = 4096
SAMPLE_MUL = 2654435761
TOL = 1e-4          # normwise relative error allowed by tests/test_torch_ref.c
GRAD_FLOOR = 1e-7   # gradient denominators >= GRAD_FLOOR * largest gradient of the fixture
SAFETY = 10.0       # tol.<name> = SAFETY * float32 PyTorch's own error where that exceeds TOL

# Every fixture the C tests use: (config, batch, height, width, training, output file[,
# reference builder of tools/ref_nets.py; default GraphNet, the interpreter of the file]).
L = "tests/fixtures/layers/"
M = "conf/models/"
FIXTURES = [
    (L + "conv.cfg", 2, 9, 7, True, "tests/fixtures/layer_conv.safetensors"),
    (L + "conv_act.cfg", 2, 9, 7, True, "tests/fixtures/layer_conv_act.safetensors"),
    (L + "batchnorm.cfg", 2, 9, 7, True, "tests/fixtures/layer_batchnorm.safetensors"),
    (L + "batchnorm.cfg", 2, 9, 7, False, "tests/fixtures/layer_batchnorm_eval.safetensors"),
    (L + "layernorm.cfg", 2, 9, 7, True, "tests/fixtures/layer_layernorm.safetensors"),
    (L + "act.cfg", 2, 9, 7, True, "tests/fixtures/layer_act.safetensors"),
    (L + "pool.cfg", 2, 12, 10, True, "tests/fixtures/layer_pool.safetensors"),
    (L + "adaptive_avgpool.cfg", 2, 7, 5, True, "tests/fixtures/layer_adaptive_avgpool.safetensors"),
    (L + "resize.cfg", 2, 9, 7, True, "tests/fixtures/layer_resize.safetensors"),
    (L + "concat.cfg", 2, 9, 7, True, "tests/fixtures/layer_concat.safetensors"),
    (L + "add.cfg", 2, 9, 7, True, "tests/fixtures/layer_add.safetensors"),
    (L + "mul.cfg", 2, 9, 7, True, "tests/fixtures/layer_mul.safetensors"),
    (L + "softmax.cfg", 2, 9, 7, True, "tests/fixtures/layer_softmax.safetensors"),
    (L + "resblock.cfg", 2, 12, 10, True, "tests/fixtures/layer_resblock.safetensors"),
    (L + "resblock_dilated.cfg", 2, 12, 10, True,
     "tests/fixtures/layer_resblock_dilated.safetensors"),
    (L + "bottleneck.cfg", 2, 12, 10, True, "tests/fixtures/layer_bottleneck.safetensors"),
    ("conf/models/unet_s.cfg", 2, 40, 40, True, "tests/fixtures/unet_s.safetensors"),
    ("conf/models/unet_s.cfg", 2, 40, 40, False, "tests/fixtures/unet_s_eval.safetensors"),
    ("conf/models/fpn_r18.cfg", 2, 80, 80, True, "tests/fixtures/fpn_r18.safetensors"),
    # issue 15's networks, against torchvision / mmsegmentation-style references. Batch 4:
    # a train-mode BN after global pooling (ASPP image pooling, PPM bin 1) normalises N
    # rows, and with N = 2 some channel's two values nearly agree (var/E[x^2] ~ 1e-6), a
    # cancellation that float32 sums cannot resolve (docs/models.md, "Reference tests").
    (M + "deeplabv3_r18.cfg", 4, 32, 32, True, "tests/fixtures/deeplabv3_r18.safetensors",
     "deeplabv3_r18"),
    (M + "pspnet_r18.cfg", 4, 32, 32, True, "tests/fixtures/pspnet_r18.safetensors",
     "pspnet_r18"),
    (M + "upernet_r18.cfg", 4, 48, 48, True, "tests/fixtures/upernet_r18.safetensors",
     "upernet_r18"),
    # The r50 networks in eval mode: in train mode, BN over a few rows in 16 bottleneck
    # blocks amplifies float32 rounding to 1e-4 of float64 at fixture sizes (PyTorch's own
    # float32 run), beyond any ReLU margin; train-mode BN and every head are checked by the
    # r18 fixtures above and layer_bottleneck.
    (M + "deeplabv3_r50.cfg", 1, 32, 32, False, "tests/fixtures/deeplabv3_r50.safetensors",
     "deeplabv3_r50"),
    (M + "pspnet_r50.cfg", 1, 32, 32, False, "tests/fixtures/pspnet_r50.safetensors",
     "pspnet_r50"),
    (M + "upernet_r50.cfg", 1, 48, 48, False, "tests/fixtures/upernet_r50.safetensors",
     "upernet_r50"),
    (M + "fpn_r50.cfg", 1, 48, 48, False, "tests/fixtures/fpn_r50.safetensors", "fpn_r50"),
    # transformers' SegformerForSemanticSegmentation (mit-b0) itself, in train mode (batch 4
    # for decode_head's BN) on conf/models/segformer_b0.cfg less its stochastic depth: the
    # fixture's file is derived from it with every drop_path p = 0 (DERIVED below), the
    # reference has drop_path_rate 0, and the file's own p are checked against
    # transformers' schedule for drop_path_rate 0.1.
    ("tests/fixtures/segformer_b0.cfg", 4, 64, 64, True,
     "tests/fixtures/segformer_b0.safetensors", "segformer_b0"),
    # mit-b1 and mit-b2 (conf/models/segformer_b1.cfg, _b2.cfg) the same way; smaller inputs
    # keep the fixtures (gradient samples of every parameter) and the C test small.
    ("tests/fixtures/segformer_b1.cfg", 4, 64, 64, True,
     "tests/fixtures/segformer_b1.safetensors", "segformer_b1"),
    ("tests/fixtures/segformer_b2.cfg", 2, 64, 64, True,
     "tests/fixtures/segformer_b2.safetensors", "segformer_b2"),
    # CamoXpert, the whole network (EdgeNeXt-small encoder, SDTA enhancement, decoder, the
    # 7-expert top-4 moe block with its balancing loss, three outputs) interpreted from
    # tests/fixtures/camoxpert_small.cfg less its stochastic depth (DERIVED), in train mode.
    ("tests/fixtures/camoxpert_small_ref.cfg", 2, 64, 64, True,
     "tests/fixtures/camoxpert_small.safetensors"),
]

# Fixtures with fewer gradient samples than SAMPLES (written as `samples` metadata): mit-b2's
# 16 blocks would take 2.8 MB at 4096 per tensor, 1.7 MB at 2048.
FIXTURE_SAMPLES = {"tests/fixtures/segformer_b2.safetensors": 2048}



def segformer_no_drop_path(src, dst):
    """tests/fixtures/segformer_bN.cfg: the network file with every drop_path p = 0 (the
    fixture compares deterministic passes); first checks the file's p against transformers'
    linear schedule (drop_path_rate 0.1, both drop paths of a block)."""
    import re
    text = open(src).read()
    variant = re.search(r"segformer_(b[0-9])\.cfg$", src).group(1)
    want = ref_nets.segformer_drop_path_rates(0.1, variant)
    got = re.findall(r'name = "([^"]+)\.drop_path[12]"; type = "drop_path"; p = ([0-9.eE+-]+);',
                     text)
    assert len(got) == 2 * len(want), "%s: %d drop_path layers, transformers has %d blocks" % (
        src, len(got), len(want))
    for blk, p in got:
        assert abs(float(p) - want[blk]) < 1e-6, "%s: %s p = %s, transformers %g" % (
            src, blk, p, want[blk])
    text, n = re.subn(r'(type = "drop_path"; p = )[0-9.eE+-]+;', r"\g<1>0.0;", text)
    assert n == len(got)
    with open(dst, "w") as f:
        f.write("# written by tools/torch_ref.py from %s: every drop_path p = 0, for the\n"
                "# deterministic comparison with transformers (%s)\n"
                % (src, dst[:-len(".cfg")] + ".safetensors") + text)


def no_drop_path(src, dst):
    """A network file with every drop_path p = 0 (tests/fixtures/camoxpert_small_ref.cfg:
    the fixture compares deterministic passes; the moe block and its balance_weight stay)."""
    import re
    text, n = re.subn(r'(type = "drop_path"; p = )[0-9.eE+-]+;', r"\g<1>0.0;", open(src).read())
    assert n > 0, src + ": no drop_path layer"
    with open(dst, "w") as f:
        f.write("# written by tools/torch_ref.py from %s: every drop_path p = 0, for the\n"
                "# deterministic comparison (%s)\n"
                % (src, dst[:-len("_ref.cfg")] + ".safetensors") + text)


# Fixture network files derived from another file before the fixture is made: path ->
# (source, function(source, path)).
DERIVED = {"tests/fixtures/segformer_%s.cfg" % v: ("conf/models/segformer_%s.cfg" % v,
                                                  segformer_no_drop_path)
           for v in ("b0", "b1", "b2")}
DERIVED["tests/fixtures/camoxpert_small_ref.cfg"] = ("tests/fixtures/camoxpert_small.cfg",
                                                     no_drop_path)


# ---------------------------------------------------------------- closed-form values

def param_value(name, shape):
    """Closed-form value of a parameter or buffer (float64 array rounded to float32)."""
    n = int(np.prod(shape)) if len(shape) else 1
    r = hash_uniform(fnv1a32(name), n)
    if name.endswith(".running_mean"):
        v = np.zeros(n)
    elif name.endswith(".running_var"):
        v = np.ones(n)
    elif len(shape) >= 2:  # conv [out, in/groups, kh, kw], linear [out, in], ...
        fan_in = int(np.prod(shape[1:]))
        v = r * math.sqrt(3.0 / fan_in)
    elif name.endswith(".weight"):
        v = 1.0 + 0.1 * r
    elif name.endswith(".bias"):
        v = 0.1 * r
    elif name.rsplit(".", 1)[-1].startswith("gamma"):  # timm's layer scales: the C test's
        v = 0.1 * r                                      # fallback rule, a bias's
    else:
        raise ValueError("no closed-form rule for " + name)
    return v.astype(np.float32).reshape(shape)


def input_value(shape, salt=0):
    n = int(np.prod(shape))
    return hash_uniform(fnv1a32("input") + salt, n).astype(np.float32).reshape(shape)


# A ReLU input within rounding distance of 0, or a max-pool window whose two largest values
# are that close, is decided by rounding: float32 (C or PyTorch) may take the other side,
# which moves a gradient by a whole upstream value. Such values are unavoidable in big
# nets (about one per million at 1e-7 of the tensor's scale), so the input is drawn again
# (salt 0, 1, ...) until every decision has a margin of KINK_MARGIN relative to the
# tensor's largest value, about 10x float32's error on these nets.
KINK_MARGIN = 1e-6
KINK_TRIES = 64


def kink_margin(model, x):
    """Smallest relative distance of any ReLU / max-pool decision from its kink."""
    worst = [math.inf]

    def hook(mod, inp, out):
        if not isinstance(mod, (nn.ReLU, nn.LeakyReLU, nn.MaxPool2d)):
            return  # (other modules may take lists: UPerHead)
        v = inp[0].detach()
        scale = float(v.abs().max()) or 1.0
        if isinstance(mod, (nn.ReLU, nn.LeakyReLU)):
            worst[0] = min(worst[0], float(v.abs().min()) / scale)
        elif isinstance(mod, nn.MaxPool2d):
            k, st, pd = pair(mod.kernel_size), pair(mod.stride), pair(mod.padding)
            vp = F.pad(v, (pd[1], pd[1], pd[0], pd[0]), value=-math.inf)
            cols = F.unfold(vp, k, stride=st)  # (N, C*kh*kw, L)
            cols = cols.view(v.shape[0], v.shape[1], k[0] * k[1], -1)
            top = cols.topk(2, dim=2).values
            gap = (top[:, :, 0] - top[:, :, 1]).abs()
            gap = gap[(gap > 0) & torch.isfinite(gap)]  # exact ties: a convention, not rounding
            if gap.numel():
                worst[0] = min(worst[0], float(gap.min()) / scale)

    h = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        with torch.no_grad():
            model(torch.from_numpy(x).double())
    finally:
        h.remove()
    return worst[0]


# A moe block's routing compares gate probabilities: a selected and an unselected p of one
# image closer than ROUTE_MARGIN might swap in float32, so the input is drawn again then too.
ROUTE_MARGIN = 1e-4


def route_margin(model):
    """Smallest gap between a selected and an unselected gate probability of one image over
    the moe blocks of a GraphNet in its last forward (inf without any)."""
    return min(getattr(model, "moe_margins", []) + [math.inf])


def output_grad_value(oname, shape):
    n = int(np.prod(shape))
    return hash_uniform(fnv1a32("grad." + oname), n).astype(np.float32).reshape(shape)


# ---------------------------------------------------------------- network modules

class LayerNorm2d(nn.Module):
    """ConvNeXt's LayerNorm2d: LayerNorm over channels at every pixel."""

    def __init__(self, c, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock (names included); with dilation,
    mmsegmentation's: conv1 padding = dilation = `dil`, conv2 undilated."""

    def __init__(self, cin, cout, stride, dil=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, dil, dil, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        idt = x if self.downsample is None else self.downsample(x)
        return self.relu(out + idt)


class ConvBlock(nn.Module):
    """conv with bn or an activation: children conv, bn, act."""

    def __init__(self, conv, bn, act):
        super().__init__()
        self.conv = conv
        if bn is not None:
            self.bn = bn
        self.act = act

    def forward(self, x):
        x = self.conv(x)
        if hasattr(self, "bn"):
            x = self.bn(x)
        return self.act(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


def make_act(name, slope=0.01):
    if name == "linear":
        return Identity()
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(slope)
    if name == "silu":
        return nn.SiLU()
    if name == "gelu":
        return nn.GELU(approximate="none")
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "tanh":
        return nn.Tanh()
    raise ValueError("unknown activation " + repr(name))


ACT_TYPES = ("relu", "silu", "gelu", "sigmoid", "tanh", "leaky_relu")


def as_list(v):
    if isinstance(v, (list, tuple)):
        return list(v)
    return [v]


def pair(v):
    if isinstance(v, (list, tuple)):
        assert len(v) == 2
        return int(v[0]), int(v[1])
    return int(v), int(v)


class GraphNet(nn.Module):
    """Runs the layer list in order; each layer reads the previous layer's output or `from`."""

    def __init__(self, cfg):
        super().__init__()
        self.in_ch = int(cfg.get("input_channels", 3))
        self.classes = int(cfg.get("classes", 1))
        self.moe_terms = []  # (balance_weight, L_bal) of each moe block in the last forward
        self.moe_margins = []  # each moe block's routing margin in the last forward
        chans = {"input": self.in_ch}
        self.specs, prev = self._build_list(cfg["layers"], chans, "input")
        outs = cfg.get("outputs")
        if outs is None:
            outs = [{"name": "main", "layer": prev}]
        self.outputs = [(o["name"], o["layer"]) for o in outs]
        for _, lay in self.outputs:
            assert lay in chans, "unknown output layer " + lay

    def _build_list(self, layers, chans, prev, scope="", scope_input=None):
        """Specs of a layer list (name, type, inputs, fn); inside a moe expert (`scope`
        NAME.experts.<e>.), names are the expert's own and "input" is scope_input."""
        def full(s):
            return scope_input if scope and s == "input" else scope + s
        specs = []
        for ls in layers:
            name, typ = full(ls["name"]), ls["type"]
            assert name not in chans, "layer name used twice: " + name
            ins = [full(s) for s in as_list(ls["from"])] if "from" in ls else [prev]
            for s in ins:
                assert s in chans, "unknown layer %r in %r" % (s, name)
            if scope and "like" in ls:
                ls = dict(ls, like=full(ls["like"]))
            cout, fn = self._build(name, typ, ls, [chans[s] for s in ins])
            chans[name] = cout
            specs.append((name, typ, ins, fn))
            prev = name
        return specs, prev

    def _moe(self, name, ls, cin):
        """camotrain's `moe` block (docs/models.md "Mixture of experts"), the same network as
        tools/moe_ref.py's MoE written over the config: p = softmax(gate(mean over pixels)),
        the top_k largest p per image (of equal values the lower index first), weights
        renormalised over them; each expert runs on its routed images only and is added back
        weighted. Records the balancing term K * sum_e f_e * P_e (f: routed fractions,
        constants) and the routing margin (smallest gap between a selected and an unselected
        p of one image)."""
        K, k = int(ls["experts"]), int(ls["top_k"])
        bw = float(ls.get("balance_weight", 0.01))
        assert 1 <= k <= K <= 7
        gate = self._register(name + ".gate", nn.Linear(cin[0], K))
        experts, cout = [], None
        for e in range(K):
            scope = "%s.experts.%d." % (name, e)
            chans = {scope + "dispatch": cin[0]}
            specs, last = self._build_list(ls["expert"], chans, scope + "dispatch", scope,
                                           scope + "dispatch")
            assert cout in (None, chans[last]), "experts give different channel counts"
            cout = chans[last]
            experts.append((scope + "dispatch", specs, last))

        def run_expert(e, x, o):
            key, specs, last = experts[e]
            loc = {key: x}
            loc.update(o)  # (the outer maps stay readable, as resize's `like = "input"`)
            loc[key] = x
            for lname, _, ins, fn in specs:
                loc[lname] = fn([loc[s] for s in ins], loc)
            return loc[last]

        def moe(xs, o):
            x = xs[0]
            p = torch.softmax(gate(x.mean(dim=(2, 3))), dim=-1)
            pv = p.detach().cpu().numpy()
            sel = torch.zeros_like(p)
            margin = math.inf
            for i in range(p.shape[0]):  # k passes, strict >: the lower index wins a tie
                order = sorted(range(K), key=lambda e: (-pv[i, e], e))
                sel[i, order[:k]] = 1
                if k < K:
                    margin = min(margin, float(pv[i, order[k - 1]] - pv[i, order[k]]))
            kept = p * sel
            w = kept / kept.sum(dim=-1, keepdim=True)
            out = None
            for e in range(K):
                rows = sel[:, e].nonzero(as_tuple=True)[0]
                if rows.numel() == 0:
                    continue  # an idle expert runs neither way
                y = w[rows, e].view(-1, 1, 1, 1) * run_expert(e, x.index_select(0, rows), o)
                if out is None:
                    out = torch.zeros((x.shape[0],) + tuple(y.shape[1:]), dtype=y.dtype)
                out = out.index_add(0, rows, y)
            f = sel.sum(dim=0) / (p.shape[0] * k)
            self.moe_terms.append((bw, K * (f * p.mean(dim=0)).sum()))
            self.moe_margins.append(margin)
            return out
        return cout, moe

    def _register(self, path, module):
        """Registers module at a dotted path, creating plain containers on the way."""
        parts = path.split(".")
        parent = self
        for p in parts[:-1]:
            child = parent._modules.get(p)
            if child is None:
                child = nn.Module()
                parent.add_module(p, child)
            parent = child
        assert parts[-1] not in parent._modules, "module registered twice: " + path
        parent.add_module(parts[-1], module)
        return module

    def _build(self, name, typ, ls, cin):
        if typ == "conv":
            f = ls["filters"]
            filters = self.classes if f == "classes" else int(f)
            size = int(ls["size"])
            stride = int(ls.get("stride", 1))
            dil = int(ls.get("dilation", 1))
            pad = int(ls.get("pad", dil * (size - 1) // 2))
            groups = int(ls.get("groups", 1))
            bn = bool(ls.get("bn", False))
            bias = bool(ls.get("bias", not bn))
            act = ls.get("act", "linear")
            conv = nn.Conv2d(cin[0], filters, size, stride, pad, dil, groups, bias=bias)
            if not bn and act == "linear":
                m = self._register(name, conv)
            else:
                m = self._register(name, ConvBlock(conv, nn.BatchNorm2d(filters) if bn else None,
                                                   make_act(act)))
            return filters, lambda xs, o: m(xs[0])
        if typ == "batchnorm":
            m = self._register(name, nn.BatchNorm2d(cin[0], eps=float(ls.get("eps", 1e-5)),
                                                    momentum=float(ls.get("momentum", 0.1))))
            return cin[0], lambda xs, o: m(xs[0])
        if typ == "layernorm":
            m = self._register(name, LayerNorm2d(cin[0], float(ls.get("eps", 1e-6))))
            return cin[0], lambda xs, o: m(xs[0])
        if typ in ACT_TYPES:
            a = make_act(typ, float(ls.get("slope", 0.01)))
            return cin[0], lambda xs, o: a(xs[0])
        if typ == "maxpool":
            size = int(ls["size"])
            m = nn.MaxPool2d(size, int(ls.get("stride", size)), int(ls.get("pad", 0)))
            return cin[0], lambda xs, o: m(xs[0])
        if typ == "avgpool":
            size = int(ls["size"])
            m = nn.AvgPool2d(size, int(ls.get("stride", size)), int(ls.get("pad", 0)),
                             count_include_pad=bool(ls.get("count_include_pad", True)))
            return cin[0], lambda xs, o: m(xs[0])
        if typ == "adaptive_avgpool":
            m = nn.AdaptiveAvgPool2d(pair(ls["size"]))
            return cin[0], lambda xs, o: m(xs[0])
        if typ == "resize":
            ac = bool(ls.get("align_corners", False))
            if "scale" in ls:
                s = float(ls["scale"])
                return cin[0], lambda xs, o: F.interpolate(xs[0], scale_factor=s, mode="bilinear",
                                                           align_corners=ac)
            if "size" in ls:
                hw = pair(ls["size"])
                return cin[0], lambda xs, o: F.interpolate(xs[0], size=hw, mode="bilinear",
                                                           align_corners=ac)
            like = ls["like"]
            return cin[0], lambda xs, o: F.interpolate(xs[0], size=tuple(o[like].shape[2:]),
                                                       mode="bilinear", align_corners=ac)
        if typ == "concat":
            assert len(cin) >= 2
            return sum(cin), lambda xs, o: torch.cat(xs, dim=1)
        if typ == "add":
            assert len(cin) >= 2 and all(c == cin[0] for c in cin)
            return cin[0], lambda xs, o: sum(xs[1:], xs[0])
        if typ == "mul":
            assert len(cin) == 2 and cin[1] in (cin[0], 1)

            def mul(xs, o):
                a, b = xs
                assert b.shape[2:] == a.shape[2:] or b.shape[2:] == (1, 1)
                assert b.shape[2:] != (1, 1) or b.shape[1] == a.shape[1]
                return a * b
            return cin[0], mul
        if typ == "softmax":
            return cin[0], lambda xs, o: torch.softmax(xs[0], dim=1)
        if typ == "resblock":
            filters = int(ls["filters"])
            m = self._register(name, BasicBlock(cin[0], filters, int(ls.get("stride", 1)),
                                                int(ls.get("dilation", 1))))
            return filters, lambda xs, o: m(xs[0])
        if typ == "bottleneck":  # torchvision's own Bottleneck, out of place ReLU
            width, stride = int(ls["filters"]), int(ls.get("stride", 1))
            down = None
            if stride != 1 or cin[0] != 4 * width:
                down = nn.Sequential(nn.Conv2d(cin[0], 4 * width, 1, stride, bias=False),
                                     nn.BatchNorm2d(4 * width))
            m = torchvision.models.resnet.Bottleneck(cin[0], width, stride, down,
                                                     dilation=int(ls.get("dilation", 1)))
            m.relu.inplace = False
            m = self._register(name, m)
            return 4 * width, lambda xs, o: m(xs[0])
        if typ == "linear":  # nn.Linear on the channels of every pixel
            filters = int(ls["filters"])
            m = self._register(name, nn.Linear(cin[0], filters,
                                               bias=bool(ls.get("bias", True))))
            return filters, lambda xs, o: m(xs[0].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if typ == "attention":  # transformers' SegformerEfficientSelfAttention's core
            heads = int(ls["heads"])
            assert len(cin) == 3 and cin[0] == cin[1] == cin[2] and cin[0] % heads == 0

            def attention(xs, o):
                q, k, v = xs
                B, C, H, W = q.shape
                d = C // heads

                def split(t):
                    return t.flatten(2).transpose(1, 2).reshape(B, -1, heads, d).transpose(1, 2)
                a = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d), dim=-1)
                y = (a @ split(v)).transpose(1, 2).reshape(B, H * W, C)
                return y.transpose(1, 2).reshape(B, C, H, W)
            return cin[0], attention
        if typ == "drop_path":  # deterministic passes only (camotrain's draws are not here)
            p = float(ls["p"])

            def drop_path(xs, o):
                assert p == 0.0 or not self.training, "drop_path p > 0 in training: " + name
                return xs[0]
            return cin[0], drop_path
        if typ == "xca":  # timm's CrossCovarianceAttn's core (tools/edgenext_ref.py)
            heads = int(ls["heads"])
            c = cin[0] // 3 if len(cin) == 1 else cin[0]
            # (its qkv, registered before it, made the container already)
            m = self._get(name) if self._has(name) else self._register(name, nn.Module())
            m.temperature = nn.Parameter(torch.ones(heads, 1, 1))

            def xca(xs, o):
                q, k, v = torch.split(xs[0], c, dim=1) if len(xs) == 1 else xs
                B, _, H, W = q.shape

                def split(t):
                    return t.reshape(B, heads, c // heads, H * W)
                a = F.normalize(split(q), dim=-1) @ F.normalize(split(k), dim=-1).transpose(-2, -1)
                a = torch.softmax(a * m.temperature, dim=-1)
                return (a @ split(v)).reshape(B, c, H, W)
            return c, xca
        if typ == "layer_scale":  # timm's bare gamma, named as the layer
            parent, leaf = name.rsplit(".", 1) if "." in name else ("", name)
            holder = self._register(parent, nn.Module()) if parent and not self._has(parent) \
                else (self._get(parent) if parent else self)
            holder.register_parameter(leaf, nn.Parameter(torch.ones(cin[0])))
            return cin[0], lambda xs, o: xs[0] * getattr(holder, leaf).view(1, -1, 1, 1)
        if typ == "moe":
            return self._moe(name, ls, cin)
        if typ == "slice":  # x[:, start:start+channels]
            s0 = int(ls.get("start", 0))
            n = int(ls.get("channels", cin[0] - s0))
            return n, lambda xs, o: xs[0][:, s0:s0 + n]
        if typ == "fourier_pos":  # timm's PositionalEncodingFourier less its projection
            import edgenext_ref
            hid, temp = int(ls.get("hidden_dim", 32)), float(ls.get("temperature", 10000))
            return 2 * hid, lambda xs, o: edgenext_ref.fourier_encoding(
                xs[0].shape[0], xs[0].shape[2], xs[0].shape[3], hid, temp).to(xs[0].dtype)
        raise ValueError("unknown layer type %r (layer %r)" % (typ, name))

    def _get(self, path):
        m = self
        for p in path.split("."):
            m = m._modules[p]
        return m

    def _has(self, path):
        try:
            self._get(path)
            return True
        except KeyError:
            return False

    def forward(self, x):
        self.moe_terms, self.moe_margins = [], []
        o = {"input": x}
        for name, _, ins, fn in self.specs:
            o[name] = fn([o[s] for s in ins], o)
        return [o[lay] for _, lay in self.outputs]


def load_config(path):
    with open(path) as f:
        return libconf.load(f, includedir=os.path.dirname(os.path.abspath(path)))


# ---------------------------------------------------------------- fixture generation

def run(model, dtype, x, grads, training):
    model = model.to(dtype)
    model.train(training)
    xi = torch.tensor(x, dtype=dtype, requires_grad=True)
    outs = model(xi)
    total = sum((y * torch.tensor(g, dtype=dtype)).sum() for y, g in zip(outs, grads))
    if training:  # + balance_weight * L_bal of every moe block (the C test arms it, norm N)
        total = total + sum(bw * t for bw, t in getattr(model, "moe_terms", []))
    model.zero_grad(set_to_none=True)
    total.backward()
    res = {"out": [y.detach().float().numpy() for y in outs], "dinput": xi.grad.float().numpy()}
    res["grad"] = {n: (p.grad.float().numpy() if p.grad is not None else np.zeros(p.shape, np.float32))
                   for n, p in model.named_parameters()}
    res["buffer"] = {n: b.detach().float().numpy() for n, b in model.named_buffers()
                     if n.endswith(".running_mean") or n.endswith(".running_var")}
    res["balance"] = [float(t) for _, t in getattr(model, "moe_terms", [])]
    return res


def normwise(a, b, floor=0.0):
    """max|a-b| / max(max|b|, floor): the measure of tests/test_torch_ref.c."""
    m = max(float(np.max(np.abs(b))) if b.size else 0.0, floor)
    d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if b.size else 0.0
    return d / m if m > 0 else d


def sample_idx(numel, samples=SAMPLES):
    return (np.arange(samples, dtype=np.uint64) * np.uint64(SAMPLE_MUL)) % np.uint64(numel)


def geometry(model):
    """Parameter shapes, and every conv's and BN's hyper-parameters, by module path."""
    g = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            g[n] = ("conv", m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                    m.bias is not None)
        elif isinstance(m, nn.BatchNorm2d):
            g[n] = ("bn", m.eps, m.momentum)
        elif isinstance(m, (nn.LayerNorm, LayerNorm2d)):
            g[n] = ("ln", float(m.eps))
    return g


def reference_builder(cfg, ref):
    """A function making fresh copies of the network: GraphNet (the interpreter of the file)
    or, with `ref`, ref_nets.BUILDERS[ref]. The reference must have the file's parameter
    names and shapes, and the same kernel, stride, padding, dilation, groups and bias in
    every conv (and eps, momentum in every BN): the C test checks the values on a small
    input, where a dilation of 12 or 36 only ever meets padding; this checks the wiring at
    any size."""
    if not ref:
        return lambda: GraphNet(cfg)
    builder = ref_nets.BUILDERS[ref]
    classes = int(cfg.get("classes", 1))

    def build():
        return builder(classes)
    want, got = geometry(GraphNet(cfg)), geometry(build())
    bad = ["%s: file %s, reference %s" % (n, want.get(n), got.get(n))
           for n in sorted(set(want) | set(got)) if want.get(n) != got.get(n)]
    if bad:
        raise SystemExit("reference %s differs from the network file in %d places:\n  %s"
                         % (ref, len(bad), "\n  ".join(bad[:20])))
    return build


def make_fixture(config, batch, height, width, training, out, quiet=False, ref_name=None,
                 samples=SAMPLES):
    if config in DERIVED:
        DERIVED[config][1](DERIVED[config][0], config)
    cfg = load_config(config)
    build = reference_builder(cfg, ref_name)
    model = build()
    sd = model.state_dict()
    with torch.no_grad():
        for n, t in sd.items():
            if n.endswith(".num_batches_tracked"):
                continue
            t.copy_(torch.from_numpy(param_value(n, tuple(t.shape))))
    probe64 = build()
    probe64.load_state_dict(model.state_dict())
    probe64 = probe64.double().train(training)
    best = (-1.0, 0, math.inf)
    for salt in range(KINK_TRIES):
        xs = input_value((batch, model.in_ch, height, width), salt)
        margin = kink_margin(probe64, xs)
        route = route_margin(probe64)  # (of kink_margin's forward)
        # (a routing near a tie counts as a kink at margin 0)
        best = max(best, (margin if route >= ROUTE_MARGIN else 0.0, salt, route))
        if margin >= KINK_MARGIN and route >= ROUTE_MARGIN:
            break
    if best[0] < KINK_MARGIN:
        raise SystemExit("%s %dx%dx%d: no input among %d keeps every ReLU/max-pool decision "
                         "%.0e from its kink and every moe routing %.0e from a tie (best "
                         "%.2e): use a smaller size" % (config, batch, height, width,
                                                        KINK_TRIES, KINK_MARGIN, ROUTE_MARGIN,
                                                        best[0]))
    x = input_value((batch, model.in_ch, height, width), best[1])

    # output shapes: one no-grad eval-free pass on a throwaway copy
    probe = build()
    probe.load_state_dict(model.state_dict())
    probe.train(training)
    with torch.no_grad():
        shapes = [tuple(y.shape) for y in probe(torch.from_numpy(x))]
    grads = [output_grad_value(oname, s) for (oname, _), s in zip(model.outputs, shapes)]

    m64 = build()
    m64.load_state_dict(model.state_dict())
    m32 = build()
    m32.load_state_dict(model.state_dict())
    ref = run(m64, torch.float64, x, grads, training)
    f32 = run(m32, torch.float32, x, grads, training)

    tensors = {"input": x}
    pairs = {}  # fixture tensor name -> (float32 torch value, reference)

    def track(name, a, b):
        pairs[name] = (a, b)

    for (oname, _), y, y32 in zip(model.outputs, ref["out"], f32["out"]):
        tensors["output." + oname] = y
        track("output." + oname, y32, y)
    tensors["dinput"] = ref["dinput"]
    track("dinput", f32["dinput"], ref["dinput"])
    for n, g in ref["grad"].items():
        g32 = f32["grad"][n]
        if g.size <= samples:
            tensors["grad." + n] = g
            track("grad." + n, g32, g)
        else:
            idx = sample_idx(g.size, samples)
            tensors["gradsample." + n] = g.reshape(-1)[idx].copy()
            d = g.astype(np.float64).reshape(-1)
            tensors["gradsumsq." + n] = np.array([np.dot(d, d)], dtype=np.float32)
            track("gradsample." + n, g32.reshape(-1)[idx], g.reshape(-1)[idx])
    for n, b in ref["buffer"].items():
        tensors["buffer." + n] = b
        track("buffer." + n, f32["buffer"][n], b)

    # Error of PyTorch's own float32 run against the reference, with the C test's measure:
    # gradients get a floor of GRAD_FLOOR * (largest gradient of the fixture) so that
    # gradients that are zero in exact arithmetic (a conv bias right before a train-mode
    # BN) are measured against the scale of the others. Where float32 PyTorch itself is
    # off by more than TOL / SAFETY, the tensor gets `tol.<name>` = SAFETY * its error in
    # the metadata (ill-conditioned: a ReLU decided by rounding, a long chain of train-mode
    # BNs); the C test uses that instead of TOL.
    gmax = max([float(np.max(np.abs(b))) for k, (a, b) in pairs.items() if k.startswith("grad")]
               + [0.0])
    meta = {}
    worst = ("", 0.0)
    for k, (a, b) in pairs.items():
        e = normwise(a, b, GRAD_FLOOR * gmax if k.startswith("grad") else 0.0)
        if e > worst[1]:
            worst = (k, e)
        if e * SAFETY > TOL:
            meta["tol." + k] = "%.3g" % (e * SAFETY)
    rel = os.path.relpath(os.path.abspath(config), ROOT)
    meta.update({"config": rel, "batch": str(batch), "height": str(height), "width": str(width),
                 "training": "1" if training else "0", "kink_margin": "%.3g" % best[0]})
    if math.isfinite(best[2]):  # a moe network: its routing margin and balancing loss
        meta["route_margin"] = "%.3g" % best[2]
        meta["balance_loss"] = ",".join("%.9g" % t for t in ref["balance"])
    if ref_name:
        meta["reference"] = "tools/ref_nets.py:" + ref_name
    if samples != SAMPLES:
        meta["samples"] = str(samples)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_file(tensors, out, metadata=meta)
    if not quiet:
        ntol = sum(1 for k in meta if k.startswith("tol."))
        print("%s: %s%s %dx%dx%d %s, %d tensors, %d bytes; float32 torch vs reference: worst "
              "%s %.2e; %d tensors with a looser tol; kink margin %.2g (input salt %d)%s"
              % (out, rel, " (%s)" % ref_name if ref_name else "", batch, height, width,
                 "train" if training else "eval", len(tensors), os.path.getsize(out), worst[0],
                 worst[1], ntol, best[0], best[1],
                 "; routing margin %.3g" % best[2] if math.isfinite(best[2]) else ""),
              flush=True)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--eval", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--ref", choices=sorted(ref_nets.BUILDERS),
                    help="build the network with this tools/ref_nets.py builder")
    ap.add_argument("--samples", type=int, default=SAMPLES,
                    help="gradient samples per big parameter (default %(default)s)")
    ap.add_argument("--all", action="store_true", help="regenerate every fixture of the C tests")
    ap.add_argument("--only", help="with --all: only these fixtures (file names without "
                    ".safetensors, comma-separated)")
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    if a.all:
        os.chdir(ROOT)
        for cfgp, n, h, w, tr, out, *ref in FIXTURES:
            if a.only and os.path.basename(out)[:-12] not in a.only.split(","):
                continue
            make_fixture(cfgp, n, h, w, tr, out, ref_name=ref[0] if ref else None,
                         samples=FIXTURE_SAMPLES.get(out, SAMPLES))
        return 0
    if not (a.config and a.height and a.width and a.out):
        ap.error("--config, --height, --width and --out are required (or --all)")
    make_fixture(a.config, a.batch, a.height, a.width, not a.eval, a.out, ref_name=a.ref,
                 samples=a.samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
