#!/usr/bin/env python3
"""camoxpert_cfg.py: writes conf/models/camoxpert.cfg (and, with --small, the small variant
tests/fixtures/camoxpert_small.cfg that trains on a CPU in seconds).

CamoXpert, seed 004's network as camotrain builds it:
  - encoder: timm's EdgeNeXt (edgenext_base; small: edgenext_small) under timm's names
    (tools/edgenext_cfg.py), so a timm state dict loads with init.weights;
  - SDTA enhancement: one more split depth-wise transposed-attention block (EdgeNeXt's
    SplitTransposeBlock, with positional encoding) on the 1/32 features, `enhance.*`;
  - decoder with skip connections: 1x1 lateral projections of the four stages to D channels,
    top-down: the coarser map resized to the next stage's size, concatenated with its lateral,
    fused by a 3x3 conv + BN + ReLU (`decoder.fuse.<i>`);
  - a mixture of experts on the finest decoder map (`moe`: 7 experts, 4 per image, each a
    residual pair of 3x3 convs with GELU; no batch norm inside experts, so sync-BN stays
    possible), then the 1x1 classifier resized to the input (`out`);
  - deep supervision: classifiers on the 1/8 and 1/16 decoder maps, resized to the input,
    loss weights 0.5 and 0.25 (`aux2`, `aux3`).
No PyTorch needed. Run: python3 tools/camoxpert_cfg.py [--check]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import edgenext_cfg  # noqa: E402

ROOT = edgenext_cfg.ROOT
# file -> (encoder variant, decoder width D, experts, top_k, SDTA scales and heads of enhance)
VARIANTS = {
    "conf/models/camoxpert.cfg": ("edgenext_b", 64, 7, 4),
    "tests/fixtures/camoxpert_small.cfg": ("edgenext_s", 16, 7, 4),
}


def network(path):
    enc, D, K, top_k = VARIANTS[path]
    dims = edgenext_cfg.VARIANTS[enc][1]
    w = edgenext_cfg.Writer()
    feats = edgenext_cfg.encoder(w, enc)
    w.comment("SDTA enhancement of the 1/32 features (a SplitTransposeBlock with positional "
              "encoding)")
    x = edgenext_cfg.sdta_block(w, "enhance", feats[3], dims[3], 4, 8, True, 0.0, 4)
    w.comment("decoder: 1x1 laterals to %d channels, top-down with skip connections" % D)
    d = w.add("decoder.lateral.3", "linear", filters=D, frm=x)
    maps = {3: d}
    for i in (2, 1, 0):
        lat = w.add("decoder.lateral.%d" % i, "linear", filters=D, frm=feats[i])
        up = w.add("decoder.up.%d" % i, "resize", like=lat, frm=d)
        w.add("decoder.cat.%d" % i, "concat", frm=[up, lat])
        d = w.add("decoder.fuse.%d" % i, "conv", filters=D, size=3, bn=True, act="relu")
        maps[i] = d
    w.comment("mixture of experts: %d experts, %d per image (docs/models.md)" % (K, top_k))
    w.lines.append(
        '  { name = "moe"; type = "moe"; experts = %d; top_k = %d; balance_weight = 0.01;\n'
        '    expert = ( { name = "conv1"; type = "conv"; filters = %d; size = 3; act = "gelu"; },\n'
        '               { name = "conv2"; type = "conv"; filters = %d; size = 3; },\n'
        '               { name = "add"; type = "add"; from = ["conv2", "input"]; } ); },'
        % (K, top_k, D, D))
    w.add("head", "conv", filters="classes", size=1, bias=True)
    w.add("out", "resize", like="input")
    w.comment("deep supervision: the 1/8 and 1/16 decoder maps")
    for i, s in ((1, 2), (2, 3)):
        w.add("aux%d_head" % s, "conv", filters="classes", size=1, bias=True, frm=maps[i])
        w.add("aux%d" % s, "resize", like="input")
    w.lines[-1] = w.lines[-1].rstrip(",")
    head = """# %s: CamoXpert (seed 004) as camotrain builds it, written by
# tools/camoxpert_cfg.py (its docstring and docs/models.md "CamoXpert" describe it): timm's
# %s encoder under timm's names, an SDTA enhancement block on the 1/32 features, a
# top-down decoder (%d channels) with skip connections, a %d-expert top-%d mixture of experts
# on the 1/4 map, deep supervision at 1/8 and 1/16.
name = "%s";
input_channels = 3;
classes = 1;

layers = (
""" % (os.path.basename(path), enc, D, K, top_k, os.path.basename(path)[:-4])
    tail = """);

outputs = (
  { name = "main"; layer = "out"; },
  { name = "aux2"; layer = "aux2"; weight = 0.5; },
  { name = "aux3"; layer = "aux3"; weight = 0.25; }
);

groups = {
  encoder = ["stem", "stages"];
  decoder = ["enhance", "decoder", "moe", "head", "out", "aux"];
};

# train.checkpointing recomputes these blocks in backward (docs/models.md)
checkpoint_blocks = ["stages.*.blocks.*", "enhance"];
"""
    return head + "\n".join(w.lines[2:]) + "\n" + tail


def main(argv):
    bad = 0
    for path in VARIANTS:
        text, full = network(path), os.path.join(ROOT, path)
        if argv == ["--check"]:
            same = os.path.exists(full) and open(full).read() == text
            print("%s: %s" % (path, "ok" if same else "DIFFERS from tools/camoxpert_cfg.py"))
            bad += not same
        else:
            with open(full, "w") as f:
                f.write(text)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
