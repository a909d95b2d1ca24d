#!/usr/bin/env python3
"""segformer_cfg.py: writes conf/models/segformer_bN.cfg, transformers'
SegformerForSemanticSegmentation (MiT-bN encoder + all-MLP decode head) layer by layer with
transformers' parameter names (docs/models.md "SegFormer"). No dependencies.

The sizes are those of transformers' SegformerConfig for nvidia/mit-bN (its conversion
script, convert_segformer_original_to_pytorch.py): every variant has heads 1/2/5/8,
sequence reduction 8/4/2/1, patches 7/3/3/3 with strides 4/2/2/2, MLP ratio 4 and
drop_path_rate 0.1; they differ in hidden sizes, depths and the decoder width.

    tools/segformer_cfg.py b1 > conf/models/segformer_b1.cfg
    tools/segformer_cfg.py --check      # every shipped segformer_b*.cfg is what this writes
"""
import os
import sys

VARIANTS = {  # hidden sizes, depths, decoder_hidden_size
    "b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256),
    "b1": ([64, 128, 320, 512], [2, 2, 2, 2], 256),
    "b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768),
}
HEADS = [1, 2, 5, 8]
SR = [8, 4, 2, 1]
PATCH = [7, 3, 3, 3]
STRIDE = [4, 2, 2, 2]
MLP_RATIO = 4
DROP_PATH_RATE = 0.1
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

HEADER = """\
# segformer_{v}: Hugging Face transformers' SegformerForSemanticSegmentation with the
# nvidia/mit-{v} encoder (MiT-{V}: hidden sizes {hs}, depths {dp}, heads 1/2/5/8,
# sequence reduction 8/4/2/1, overlapping patch embeddings 7/3/3/3 with strides 4/2/2/2, MLP
# ratio 4) and the all-MLP decode head ({dec} channels), layer for layer, with transformers'
# parameter names: a state dict saved from transformers (e.g. nvidia/mit-{v}, or a
# nvidia/segformer-{v}-finetuned-* checkpoint, written as safetensors by
# tools/convert_weights.py) loads with `init.weights` (the classifier only for the same
# class count). Every LayerNorm has eps 1e-5 (transformers builds them with PyTorch's
# default); stochastic depth with transformers' linear schedule to drop_path_rate 0.1;
# dropouts (hidden, attention, classifier) are left out (camotrain has none). Output: the
# logits at 1/4 scale resized to the input (bilinear, align_corners false), as transformers
# does in its loss. Checked against transformers' own model: tests/fixtures/segformer_{v}.*
# (tools/torch_ref.py, tools/ref_nets.py; docs/models.md "SegFormer").
"""
HEADER_GEN = "# Written by tools/segformer_cfg.py {v}.\n"


def drop_path_rates(depths):
    """transformers' schedule: linspace(0, drop_path_rate, total blocks), block by block."""
    n = sum(depths)
    return [DROP_PATH_RATE * i / (n - 1) for i in range(n)]


def layer(name, typ, extra="", src=None):
    s = '  {{ name = "{}"; type = "{}";{}'.format(name, typ, extra)
    if src:
        s += ' from = "{}";'.format(src)
    return s + " },"


def block(s, j, c, prev, p):
    """One SegformerLayer: efficient self-attention (sequence reduction sr), Mix-FFN."""
    b = "segformer.encoder.block.%d.%d" % (s, j)
    a = b + ".attention.self"
    ln = " eps = 1e-5;"
    out = [layer(b + ".layer_norm_1", "layernorm", ln, prev),
           layer(a + ".query", "linear", " filters = %d;" % c)]
    if SR[s] > 1:
        out += [layer(a + ".sr", "conv", " filters = %d; size = %d; stride = %d; pad = 0;"
                      % (c, SR[s], SR[s]), b + ".layer_norm_1"),
                layer(a + ".layer_norm", "layernorm", ln),
                layer(a + ".key", "linear", " filters = %d;" % c),
                layer(a + ".value", "linear", " filters = %d;" % c, a + ".layer_norm")]
    else:
        out += [layer(a + ".key", "linear", " filters = %d;" % c, b + ".layer_norm_1"),
                layer(a + ".value", "linear", " filters = %d;" % c, b + ".layer_norm_1")]
    out += ['  {{ name = "{a}.attn"; type = "attention"; heads = {h};\n'
            '     from = ["{a}.query", "{a}.key", "{a}.value"]; }},'.format(a=a, h=HEADS[s]),
            layer(b + ".attention.output.dense", "linear", " filters = %d;" % c),
            layer(b + ".drop_path1", "drop_path", " p = %.7f;" % p),
            '  {{ name = "{b}.add1"; type = "add"; from = ["{r}", "{b}.drop_path1"]; }},'
            .format(b=b, r=prev),
            layer(b + ".layer_norm_2", "layernorm", ln),
            layer(b + ".mlp.dense1", "linear", " filters = %d;" % (MLP_RATIO * c)),
            layer(b + ".mlp.dwconv.dwconv", "conv", " filters = %d; size = 3; groups = %d;"
                  % (MLP_RATIO * c, MLP_RATIO * c)),
            layer(b + ".mlp.act", "gelu"),
            layer(b + ".mlp.dense2", "linear", " filters = %d;" % c),
            layer(b + ".drop_path2", "drop_path", " p = %.7f;" % p),
            '  {{ name = "{b}.add2"; type = "add"; from = ["{b}.add1", "{b}.drop_path2"]; }},'
            .format(b=b)]
    return out, b + ".add2"


def stage(s, c, depth, rates, prev):
    e = "segformer.encoder"
    out = ["  # stage %d: overlapping patch embedding (%dx%d, stride %d), %d blocks of %d "
           "channels, %d head%s, reduction %d" % (s + 1, PATCH[s], PATCH[s], STRIDE[s], depth,
                                                  c, HEADS[s], "" if HEADS[s] == 1 else "s",
                                                  SR[s]),
           layer(e + ".patch_embeddings.%d.proj" % s, "conv",
                 " filters = %d; size = %d; stride = %d; pad = %d;"
                 % (c, PATCH[s], STRIDE[s], PATCH[s] // 2), prev),
           layer(e + ".patch_embeddings.%d.layer_norm" % s, "layernorm", " eps = 1e-5;")]
    prev = e + ".patch_embeddings.%d.layer_norm" % s
    for j in range(depth):
        lines, prev = block(s, j, c, prev, rates[j])
        out += lines
    out.append(layer(e + ".layer_norm.%d" % s, "layernorm", " eps = 1e-5;"))
    return out


def decode_head(dec):
    d = "decode_head.linear_c."
    stage1 = "segformer.encoder.layer_norm.0"
    out = ["  # decode_head (SegformerDecodeHead): each stage's linear_c to %d channels, resized to"
           % dec,
           "  # stage 1's size (1/4), concatenated in transformers' order c4, c3, c2, c1; "
           "linear_fuse,",
           "  # batch_norm, relu; the classifier (its Dropout(0.1) is left out)",
           layer(d + "0.proj", "linear", " filters = %d;" % dec, stage1)]
    for s in (1, 2, 3):
        out += [layer(d + "%d.proj" % s, "linear", " filters = %d;" % dec,
                      "segformer.encoder.layer_norm.%d" % s),
                '  {{ name = "{}{}.up"; type = "resize"; like = "{}"; }},'.format(d, s, stage1)]
    out += ['  { name = "decode_head.cat"; type = "concat";',
            '    from = ["decode_head.linear_c.3.up", "decode_head.linear_c.2.up", '
            '"decode_head.linear_c.1.up",',
            '            "decode_head.linear_c.0.proj"]; },',
            layer("decode_head.linear_fuse", "conv", " filters = %d; size = 1; bias = false;"
                  % dec),
            layer("decode_head.batch_norm", "batchnorm"),
            layer("decode_head.activation", "relu"),
            '  { name = "decode_head.classifier"; type = "conv"; filters = "classes"; size = 1; },',
            '  { name = "out"; type = "resize"; like = "input"; }']
    return out


def network(v):
    hs, depths, dec = VARIANTS[v]
    rates = drop_path_rates(depths)
    text = HEADER.format(v=v, V=v.upper(), hs="/".join(map(str, hs)),
                         dp="/".join(map(str, depths)), dec=dec)
    if v != "b0":  # (segformer_b0.cfg predates this tool and is reproduced as it is)
        text += HEADER_GEN.format(v=v)
    lines = ['name = "segformer_%s";' % v, "input_channels = 3;", "classes = 1;", "",
             "layers = ("]
    prev, k = None, 0
    for s in range(4):
        lines += stage(s, hs[s], depths[s], rates[k:k + depths[s]], prev)
        lines.append("")
        prev, k = "segformer.encoder.layer_norm.%d" % s, k + depths[s]
    lines += decode_head(dec)
    lines += [");", "", 'outputs = ( { name = "main"; layer = "out"; } );', "", "groups = {",
              '  encoder = ["segformer"];', '  decoder = ["decode_head", "out"];', "};", "",
              "# train.checkpointing recomputes these blocks in backward (docs/models.md)",
              'checkpoint_blocks = ["segformer.encoder.block.*.*"];']
    return text + "\n".join(lines) + "\n"


def main(argv):
    if argv == ["--check"]:
        bad = 0
        for v in sorted(VARIANTS):
            path = os.path.join(ROOT, "conf/models/segformer_%s.cfg" % v)
            same = open(path).read() == network(v)
            print("%s: %s" % (path, "ok" if same else "DIFFERS from tools/segformer_cfg.py"))
            bad += not same
        return 1 if bad else 0
    if len(argv) != 1 or argv[0] not in VARIANTS:
        sys.stderr.write("usage: segformer_cfg.py {%s} | --check\n" % ",".join(sorted(VARIANTS)))
        return 2
    sys.stdout.write(network(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
