#!/usr/bin/env python3
"""edgenext_cfg.py: writes conf/models/edgenext_s.cfg and edgenext_b.cfg, timm's (0.9.16)
EdgeNeXt encoders `edgenext_small` / `edgenext_base` layer for layer, under timm's parameter
names, with an all-MLP segmentation head (SegFormer's decode head) under `decode_head.`.

No PyTorch needed (tools/edgenext_ref.py checks the files against timm's own model).
Run from anywhere: python3 tools/edgenext_cfg.py
"""
import math
import os

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# timm's EdgeNeXt defaults shared by both variants (edgenext.py, class EdgeNeXt)
COMMON = dict(depths=(3, 3, 9, 3), global_blocks=(0, 1, 1, 1), kernel_sizes=(3, 5, 7, 9),
              heads=(8, 8, 8, 8), d2_scales=(2, 2, 3, 4), use_pos_emb=(False, True, False, False),
              expand_ratio=4)
# name -> (timm model, dims, drop_path_rate of the EdgeNeXt paper's recipe, decoder width)
VARIANTS = {
    "edgenext_s": ("edgenext_small", (48, 96, 160, 304), 0.1, 256),
    "edgenext_b": ("edgenext_base", (80, 160, 288, 584), 0.1, 512),
}
EPS = "=1e-6"  # every LayerNorm / LayerNorm2d of timm's EdgeNeXt
LS_INIT = "=1e-6"  # timm's ls_init_value: every gamma starts there (unless loaded)


def drop_path_rates(rate, n):
    """torch.linspace(0, rate, n) in float32, as timm's dp_rates (printed to 7 digits)."""
    import struct
    out = []
    for k in range(n):
        v = rate * k / (n - 1) if n > 1 else 0.0
        out.append(struct.unpack("f", struct.pack("f", v))[0])
    return out


class Writer:
    def __init__(self):
        self.lines = []

    def add(self, name, typ, **kw):
        """One layer line; strings quoted, lists of names, numbers as given (str = literal
        number text such as "1e-6", marked with a leading '=')."""
        parts = ['name = "%s"' % name, 'type = "%s"' % typ]
        for k, v in kw.items():
            k = "from" if k == "frm" else k
            if isinstance(v, (list, tuple)):
                v = "[" + ", ".join('"%s"' % s for s in v) + "]"
            elif isinstance(v, bool):
                v = "true" if v else "false"
            elif isinstance(v, str):
                v = v[1:] if v.startswith("=") else '"%s"' % v
            parts.append("%s = %s" % (k, v))
        self.lines.append("  { " + "; ".join(parts) + "; },")
        return name

    def comment(self, text):
        self.lines.append("")
        self.lines.append("  # " + text)


def mlp_residual(w, p, src, C, dp, ratio):
    """The end both blocks share, after their `norm`: Mlp (fc1, GELU, fc2), gamma, drop_path,
    and the add to the block's input src."""
    w.add(p + ".mlp.fc1", "linear", filters=ratio * C)
    w.add(p + ".mlp.act", "gelu")
    w.add(p + ".mlp.fc2", "linear", filters=C)
    w.add(p + ".gamma", "layer_scale", init=LS_INIT)
    w.add(p + ".drop_path", "drop_path", p="=%.7f" % dp)
    return w.add(p + ".add", "add", frm=[src, p + ".drop_path"])


def conv_block(w, p, src, C, ks, dp, ratio):
    """timm's ConvBlock: dwconv, LayerNorm, Mlp (fc1, GELU, fc2), gamma, drop_path, residual."""
    w.add(p + ".conv_dw", "conv", filters=C, size=ks, groups=C, frm=src)
    w.add(p + ".norm", "layernorm", eps=EPS)
    return mlp_residual(w, p, src, C, dp, ratio)


def sdta_block(w, p, src, C, scales, heads, pos, dp, ratio):
    """timm's SplitTransposeBlock: channel chunks, each depthwise 3x3 conv fed the previous
    conv's output plus its chunk, the last chunk passed through; positional encoding; XCA
    half (norm_xca, xca, gamma_xca, drop_path, residual); inverted bottleneck (norm, mlp,
    gamma, drop_path) added to the block's input."""
    width = max(int(math.ceil(C / scales)), C // scales)
    n = max(1, scales - 1)  # convs; x.chunk(n + 1): chunks of ceil(C / (n + 1))
    chunk = int(math.ceil(C / (n + 1)))
    assert chunk == width and n * chunk < C, (C, scales)
    outs = []
    prev = None
    for i in range(n):
        s = w.add(p + ".split.%d" % i, "slice", start=i * chunk, channels=chunk, frm=src)
        if prev is not None:
            s = w.add(p + ".sum.%d" % i, "add", frm=[prev, s])
        prev = w.add(p + ".convs.%d" % i, "conv", filters=width, size=3, groups=width, frm=s)
        outs.append(prev)
    outs.append(w.add(p + ".split.%d" % n, "slice", start=n * chunk, frm=src))
    x = w.add(p + ".cat", "concat", frm=outs)
    if pos:
        w.add(p + ".pos_embd.fourier", "fourier_pos", hidden_dim=32, temperature=10000.0)
        w.add(p + ".pos_embd.token_projection", "conv", filters=C, size=1)
        x = w.add(p + ".pos_add", "add", frm=[p + ".cat", p + ".pos_embd.token_projection"])
    w.add(p + ".norm_xca", "layernorm", eps=EPS, frm=x)
    w.add(p + ".xca.qkv", "linear", filters=3 * C)
    w.add(p + ".xca", "xca", heads=heads)
    w.add(p + ".xca.proj", "linear", filters=C)
    w.add(p + ".gamma_xca", "layer_scale", init=LS_INIT)
    w.add(p + ".drop_path_xca", "drop_path", p="=%.7f" % dp)
    x = w.add(p + ".add_xca", "add", frm=[x, p + ".drop_path_xca"])
    w.add(p + ".norm", "layernorm", eps=EPS, frm=x)
    return mlp_residual(w, p, src, C, dp, ratio)


def encoder(w, name):
    """timm's EdgeNeXt layers under timm's names into w; the four stages' outputs."""
    timm_name, dims, rate, E = VARIANTS[name]
    c = COMMON
    dp = drop_path_rates(rate, sum(c["depths"]))
    w.comment("stem: 4x4 patchify conv (stride 4), LayerNorm2d")
    x = w.add("stem.0", "conv", filters=dims[0], size=4, stride=4, pad=0)
    x = w.add("stem.1", "layernorm", eps=EPS)
    feats, k = [], 0
    for i in range(4):
        C, depth = dims[i], c["depths"][i]
        w.comment("stage %d: %d channels, %d blocks (%d conv, kernel %d; %d SDTA, %d scales, "
                  "%d heads%s)" % (i + 1, C, depth, depth - c["global_blocks"][i],
                                   c["kernel_sizes"][i], c["global_blocks"][i],
                                   c["d2_scales"][i], c["heads"][i],
                                   ", positional encoding" if c["use_pos_emb"][i] else ""))
        if i > 0:  # LayerNorm2d, 2x2 stride-2 conv
            w.add("stages.%d.downsample.0" % i, "layernorm", eps=EPS, frm=x)
            x = w.add("stages.%d.downsample.1" % i, "conv", filters=C, size=2, stride=2, pad=0)
        for j in range(depth):
            p = "stages.%d.blocks.%d" % (i, j)
            if j < depth - c["global_blocks"][i]:
                x = conv_block(w, p, x, C, c["kernel_sizes"][i], dp[k], c["expand_ratio"])
            else:
                x = sdta_block(w, p, x, C, c["d2_scales"][i], c["heads"][i],
                               c["use_pos_emb"][i], dp[k], c["expand_ratio"])
            k += 1
        feats.append(x)
    return feats


def network(name):
    timm_name, dims, rate, E = VARIANTS[name]
    c = COMMON
    w = Writer()
    feats = encoder(w, name)
    w.comment("decode_head: SegFormer's all-MLP head (%d channels): each stage's linear_c,\n"
              "  # resized to stage 1's size (1/4), concatenated c4, c3, c2, c1; linear_fuse,\n"
              "  # batch_norm, relu, classifier; logits resized to the input" % E)
    w.add("decode_head.linear_c.0.proj", "linear", filters=E, frm=feats[0])
    ups = []
    for i in range(1, 4):
        w.add("decode_head.linear_c.%d.proj" % i, "linear", filters=E, frm=feats[i])
        ups.append(w.add("decode_head.linear_c.%d.up" % i, "resize", like=feats[0]))
    w.add("decode_head.cat", "concat", frm=ups[::-1] + ["decode_head.linear_c.0.proj"])
    w.add("decode_head.linear_fuse", "conv", filters=E, size=1, bias=False)
    w.add("decode_head.batch_norm", "batchnorm")
    w.add("decode_head.activation", "relu")
    w.add("decode_head.classifier", "conv", filters="classes", size=1)
    w.add("out", "resize", like="input")
    w.lines[-1] = w.lines[-1].rstrip(",")
    head = """# %s: timm's (0.9.16) `%s` encoder (EdgeNeXt: dims %s, depths %s,
# conv-block kernels %s, one SDTA block (split depthwise convs over %s channel scales,
# transposed channel attention with %s heads) ending stages 2-4, Fourier positional encoding in
# stage 2, LayerNorm eps 1e-6 everywhere) with every parameter under timm's name (stem.0,
# stages.1.downsample.1, stages.2.blocks.8.xca.qkv, ...gamma_xca, ...pos_embd.token_projection),
# so a timm state dict (tools/convert_weights.py) loads with `init.weights` (its classifier,
# head.norm and head.fc, reported unexpected), and a SegFormer-style all-MLP decode head
# (%d channels) under decode_head.*. Stochastic depth: timm's linear schedule to %g (the
# paper's recipe; timm's model default is 0). layer_scale starts at 1e-6, as timm's, unless
# loaded. Output: 1/4-scale logits resized to the input (bilinear, align_corners false).
# Written by tools/edgenext_cfg.py; checked against timm's own model by
# tools/edgenext_ref.py (tests/fixtures/%s.*; docs/models.md "EdgeNeXt").
name = "%s";
input_channels = 3;
classes = 1;

layers = (
""" % (name, timm_name, "/".join(map(str, dims)), "/".join(map(str, c["depths"])),
                 "/".join(map(str, c["kernel_sizes"])), "/".join(map(str, c["d2_scales"])),
                 c["heads"][0], E, rate, name, name)
    tail = """);

outputs = ( { name = "main"; layer = "out"; } );

groups = {
  encoder = ["stem", "stages"];
  decoder = ["decode_head", "out"];
};

# train.checkpointing recomputes these blocks in backward (docs/models.md)
checkpoint_blocks = ["stages.*.blocks.*"];
"""
    return head + "\n".join(w.lines[2:]) + "\n" + tail, feats


def main():
    for name in VARIANTS:
        text, _ = network(name)
        with open(os.path.join(ROOT, "conf", "models", name + ".cfg"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
