#!/usr/bin/python3
"""pretrained_ref.py: fixtures of tests/test_pretrained.c and tests/test_pretrained.sh
(init.weights, docs/models.md "Pretrained weights"), from torchvision, through
tools/convert_weights.py.

  /usr/bin/python3 tools/pretrained_ref.py                  # rewrite tests/fixtures/pretrained/
  /usr/bin/python3 tools/pretrained_ref.py --weights OUT.safetensors [--arch resnet50]
                                            # only the converted ResNet file (default resnet18)

1. torchvision's resnet18 (fc.* and num_batches_tracked included, as torchvision has them)
   with every tensor set by a closed-form rule (below), saved with torch.save, converted to
   safetensors by tools/convert_weights.py, and the converted file checked value by value
   against the model. Its 47 MB are not kept: resnet18_features.safetensors holds the
   file's manifest (order, names, dtypes, shapes and the sequential float64 sum of each
   tensor), a 2x3x64x64 input and torchvision's layer4 features on it (eval mode, float32).
   tests/test_pretrained.c writes the same file from the rule, checks it against the
   manifest (so it holds the converter's values, bit for bit), loads it with
   camo_net_load_pretrained into conf/models/fpn_r18.cfg and compares layer4.1's output.
   With CAMO_PRETRAINED_WEIGHTS=FILE (tests/test_pretrained.sh, where torch is installed:
   --weights FILE) it loads the converter's own file instead.
   The same for torchvision's resnet50: resnet50_features.safetensors (its 102 MB not kept;
   a 1x3x64x64 input), loaded into conf/models/fpn_r50.cfg, layer4.2's output compared
   (CAMO_PRETRAINED_WEIGHTS_R50=FILE, --weights FILE --arch resnet50).
2. tiny.safetensors: a small torchvision-style ResNet (conv1, bn1, layer1.0 BasicBlock, fc)
   with torch's seeded random init and random BN statistics, saved and converted;
   tiny_backbone.safetensors: a segmenter around it (backbone.*, head.*) saved as
   {"state_dict": ..., "meta": ...} as mmsegmentation does (the converter unwraps it).
   tests/test_pretrained.sh loads them into tests/fixtures/pretrained/tiny_net.cfg.

Rule (values computed in float64, rounded to float32; r(seed, i) as docs/models.md, seed =
fnv1a32(name)): 4-d and 2-d weights r * sqrt(3 / fan_in) (fan_in = numel / shape[0]);
running_mean 0.2 r; running_var 1 + 0.5 r; other weights 1 + 0.2 r; biases 0.1 r;
num_batches_tracked 1000. Input: r(fnv1a32("input"), i), NCHW.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "pretrained")
CONVERT = os.path.join(HERE, "convert_weights.py")
sys.path.insert(0, HERE)
from convert_weights import write_safetensors  # noqa: E402  (the same writer)
from ref_hash import fnv1a32, hash_uniform  # noqa: E402  (tools/torch_ref.py's values)

SIZES = {"resnet18": (2, 64, 64), "resnet50": (1, 64, 64)}  # input N, H, W of the fixture


def rule_value(name, shape):
    n = int(np.prod(shape)) if len(shape) else 1
    r = hash_uniform(fnv1a32(name), n)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_mean":
        v = 0.2 * r
    elif leaf == "running_var":
        v = 1.0 + 0.5 * r
    elif len(shape) in (2, 4):
        v = r * np.sqrt(3.0 / (n // shape[0]))
    elif leaf == "weight":
        v = 1.0 + 0.2 * r
    else:
        v = 0.1 * r
    return v.astype(np.float32).reshape(shape)


def set_by_rule(model):
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype == torch.int64:
                t.fill_(1000)
            else:
                t.copy_(torch.from_numpy(rule_value(name, tuple(t.shape))))


def read_safetensors(path):
    """{name: (dtype, shape, bytes)} in file order, and the metadata (by hand: no package)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        b, end = e["data_offsets"]
        out[name] = (e["dtype"], e["shape"], data[b:end])
    return out, meta


def convert(pth, out, *extra):
    subprocess.run([sys.executable, CONVERT, pth, out, *extra], check=True,
                   stdout=subprocess.DEVNULL)


def check_converted(path, sd):
    """The converted file holds exactly the state dict (names, order, dtypes, values)."""
    got, _ = read_safetensors(path)
    assert list(got) == list(sd), "converted names or order differ from the state dict"
    for name, t in sd.items():
        dtype, shape, raw = got[name]
        want = t.contiguous().numpy()
        assert shape == list(want.shape), name
        assert dtype == {"float32": "F32", "int64": "I64"}[str(want.dtype)], name
        assert raw == want.tobytes(), f"{name}: converted values differ"
    try:  # the safetensors package reads it too, where installed
        from safetensors.torch import load_file
        back = load_file(path)
        assert all(torch.equal(back[k], sd[k]) for k in sd)
        print("  safetensors.torch.load_file reads the converted file: equal")
    except ImportError:
        pass


def resnet_weights(arch, tmp, out):
    """Rule-valued torchvision ARCH -> .pth -> convert_weights.py -> out; returns model, state
    dict."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None)
    set_by_rule(model)
    sd = model.state_dict()
    pth = os.path.join(tmp, arch + ".pth")
    torch.save(sd, pth)
    convert(pth, out)
    check_converted(out, sd)
    return model, sd


def layer4(model, x):
    m = model
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


def manifest(sd):
    """One line per tensor: name dtype d0,d1,... sum (sequential float64 sum, float.hex)."""
    lines = []
    for name, t in sd.items():
        a = t.numpy().reshape(-1)
        dtype = "I64" if a.dtype == np.int64 else "F32"
        s = float(np.cumsum(a.astype(np.float64))[-1]) if a.size else 0.0
        lines.append(f"{name} {dtype} {','.join(map(str, t.shape)) or '-'} {s.hex()}")
    return "\n".join(lines) + "\n"


def features_fixture(arch, model, sd, path):
    N, H, W = SIZES[arch]
    model.eval()
    x = hash_uniform(fnv1a32("input"), N * 3 * H * W).astype(np.float32).reshape(N, 3, H, W)
    with torch.no_grad():
        y = layer4(model, torch.from_numpy(x))
        y64 = layer4(model.double(), torch.from_numpy(x).double())
    model.float()
    err = float((y.double() - y64).abs().max() / y64.abs().max())
    meta = {"manifest": manifest(sd), "input": "input", "features": "layer4",
            "batch": str(N), "height": str(H), "width": str(W),
            "f32_vs_f64": f"{err:.3g}", "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "rule": "tools/pretrained_ref.py (docstring)"}
    write_safetensors(path, [("input", "F32", torch.from_numpy(x)), ("layer4", "F32", y)], meta)
    print(f"{path}: input {list(x.shape)}, layer4 {list(y.shape)}, float32 vs float64 "
          f"torchvision {err:.2e}")


class TinyResNet(torch.nn.Module):
    """torchvision's ResNet names on a small scale: conv1, bn1, layer1.0 (BasicBlock), fc."""

    def __init__(self, width=8, classes=2):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.relu = torch.nn.ReLU(inplace=True)
        self.layer1 = torch.nn.Sequential(torchvision.models.resnet.BasicBlock(width, width))
        self.fc = torch.nn.Linear(width, classes)


class TinySegmenter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = TinyResNet()
        self.head = torch.nn.Conv2d(8, 1, 1)


def randomise_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.8, 1.2)
                m.bias.uniform_(-0.1, 0.1)
                m.num_batches_tracked.fill_(7)


def tiny_fixtures(tmp):
    torch.manual_seed(1)
    tiny = TinyResNet()
    randomise_bn(tiny)
    pth = os.path.join(tmp, "tiny.pth")
    torch.save(tiny.state_dict(), pth)
    out = os.path.join(OUT_DIR, "tiny.safetensors")
    convert(pth, out)
    check_converted(out, tiny.state_dict())
    seg = TinySegmenter()
    randomise_bn(seg)
    pth = os.path.join(tmp, "tiny_backbone.pth")
    torch.save({"meta": {"epoch": 5, "note": "mmsegmentation-style"}, "state_dict": seg.state_dict()},
               pth)
    out = os.path.join(OUT_DIR, "tiny_backbone.safetensors")
    convert(pth, out)
    check_converted(out, seg.state_dict())
    print(f"{OUT_DIR}/tiny.safetensors, tiny_backbone.safetensors: converted and checked")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", help="only write the converted ResNet file here (for "
                    "CAMO_PRETRAINED_WEIGHTS / _R50), no fixtures")
    ap.add_argument("--arch", choices=sorted(SIZES), default="resnet18",
                    help="with --weights: the torchvision model (default resnet18)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if a.weights:
            resnet_weights(a.arch, tmp, a.weights)
            print(f"{a.weights}: converted and checked against torchvision's {a.arch} state dict")
            return
        os.makedirs(OUT_DIR, exist_ok=True)
        for arch in sorted(SIZES):
            out = os.path.join(tmp, arch + ".safetensors")
            model, sd = resnet_weights(arch, tmp, out)
            os.remove(out)
            features_fixture(arch, model, sd, os.path.join(OUT_DIR, arch + "_features.safetensors"))
        tiny_fixtures(tmp)


if __name__ == "__main__":
    main()
