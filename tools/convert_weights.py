#!/usr/bin/env python3
"""convert_weights.py: a PyTorch checkpoint (.pth/.pt/.bin) -> safetensors, for camotrain's
init.weights (docs/models.md "Pretrained weights"). camotrain never unpickles: this script
does, with torch, and writes the tensors of the state dict as they are (PyTorch names,
layouts and dtypes), so that the C side reads plain data.

  tools/convert_weights.py resnet18-f37072fd.pth weights/resnet18.safetensors
  tools/convert_weights.py deeplab.pth weights/deeplab.safetensors --key model
  tools/convert_weights.py IN.pth OUT.safetensors --list      # names, dtypes, shapes too

The state dict: the loaded object itself when it maps names to tensors, else the entry
--key names (dotted for nested dicts: "state_dict", "model", "module.state_dict"), else the
first of state_dict, model, model_state_dict, state, net, network, params, module that holds
one. Non-tensor values are dropped (counted). float64 tensors are written as F32 (camotrain
computes in fp32); F32, F16, BF16, I64, I32 and U8 are kept as they are; other dtypes
(bool, int8, int16, complex) are dropped with a warning. Only torch is needed: the file is
written by hand (8-byte header length, JSON header, data), readable by the safetensors
package.
"""
import argparse
import json
import os
import struct
import sys

AUTO_KEYS = ("state_dict", "model", "model_state_dict", "state", "net", "network", "params",
             "module")


def fail(msg):
    print(f"convert_weights.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def load(path, unsafe):
    import torch
    if not os.path.isfile(path):
        fail(f"{path}: no such file")
    kwargs = {"map_location": "cpu"}
    if not unsafe:
        kwargs["weights_only"] = True  # tensors and plain containers only: no code runs
    try:
        return torch.load(path, **kwargs)
    except TypeError:  # a torch without weights_only (before 1.13)
        if unsafe:
            raise
        fail("this torch has no torch.load(weights_only=True); pass --unsafe-pickle for a "
             "file you trust")
    except Exception as e:  # noqa: BLE001 (the pickle's own errors vary)
        if unsafe:
            fail(f"{path}: {e}")
        fail(f"{path}: {e}\n  the file holds more than tensors and plain containers; if you "
             "trust it, pass --unsafe-pickle (runs the pickle's code)")


def is_tensor_dict(obj):
    import torch
    return isinstance(obj, dict) and any(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap(obj, key):
    if key:
        for part in key.split("."):
            if not isinstance(obj, dict) or part not in obj:
                have = ", ".join(map(str, obj.keys())) if isinstance(obj, dict) else type(obj).__name__
                fail(f"--key {key}: no entry '{part}' (the object has: {have})")
            obj = obj[part]
        if not is_tensor_dict(obj):
            fail(f"--key {key}: that entry holds no tensors")
        return obj, key
    if hasattr(obj, "state_dict") and not isinstance(obj, dict):  # a whole nn.Module
        return obj.state_dict(), "state_dict()"
    if is_tensor_dict(obj):
        return obj, None
    if isinstance(obj, dict):
        for k in AUTO_KEYS:
            if k in obj and is_tensor_dict(obj[k]):
                return obj[k], k
        for k, v in obj.items():  # one level deeper, any name
            if is_tensor_dict(v):
                return v, str(k)
        fail("no state dict found (a dict of tensors); entries: " +
             ", ".join(map(str, obj.keys())) + "; give --key")
    fail(f"no state dict found in a {type(obj).__name__}")


def tensors_of(sd):
    """[(name, tensor)] in the state dict's order, dtypes camotrain reads; dropped names."""
    import torch
    keep = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
            torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8"}
    out, dropped, widened = [], [], []
    for name, t in sd.items():
        if not isinstance(t, torch.Tensor):
            dropped.append((str(name), type(t).__name__))
            continue
        t = t.detach().cpu()
        if t.dtype == torch.float64:
            t = t.to(torch.float32)
            widened.append(str(name))
        if t.dtype not in keep:
            dropped.append((str(name), str(t.dtype)))
            continue
        out.append((str(name), keep[t.dtype], t.contiguous()))
    return out, dropped, widened


def raw_bytes(t, dtype):
    import torch
    if dtype == "BF16":  # numpy has no bfloat16: the same 2 bytes as int16
        t = t.view(torch.int16)
    return t.numpy().tobytes()  # little-endian hosts (x86-64, aarch64), as camotrain


def write_safetensors(path, tensors, metadata):
    """The safetensors layout: u64 header size, JSON header (padded with spaces to 8 bytes),
    then the tensors' bytes back to back in header order."""
    header, blobs, off = {"__metadata__": metadata}, [], 0
    for name, dtype, t in tensors:
        b = raw_bytes(t, dtype)
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)
    return 8 + len(h) + off


def main():
    ap = argparse.ArgumentParser(
        description="Convert a PyTorch checkpoint (.pth/.pt/.bin) to safetensors for "
                    "camotrain's init.weights.",
        epilog="Example: tools/convert_weights.py resnet18-f37072fd.pth "
               "weights/resnet18.safetensors (torchvision's ImageNet ResNet-18 from "
               "https://download.pytorch.org/models/resnet18-f37072fd.pth; ResNet-50: "
               "resnet50-11ad3fa6.pth). Then in the training config: init = { weights = "
               "\"weights/resnet18.safetensors\"; }; with init.prefix for names that carry "
               "one (\"backbone.\", \"module.\").")
    ap.add_argument("input", help="PyTorch file: .pth / .pt (torch.save) or a Hugging Face "
                    "pytorch_model.bin")
    ap.add_argument("output", help="safetensors file to write")
    ap.add_argument("--key", help="entry of the loaded dict that holds the state dict "
                    "(dotted for nested dicts), e.g. state_dict or model; default: found")
    ap.add_argument("--list", action="store_true", help="also print every tensor's name, "
                    "dtype and shape")
    ap.add_argument("--unsafe-pickle", action="store_true", help="load with full unpickling "
                    "(runs code in the file: only for files you trust) when weights_only "
                    "loading refuses the file")
    a = ap.parse_args()
    try:
        import torch  # noqa: F401
    except ImportError:
        fail("needs PyTorch (python3 -m pip install torch, or Debian's python3-torch)")
    obj = load(a.input, a.unsafe_pickle)
    sd, where = unwrap(obj, a.key)
    tensors, dropped, widened = tensors_of(sd)
    if not tensors:
        fail("the state dict has no tensor camotrain can read")
    meta = {"format": "pt", "source": os.path.basename(a.input),
            "converted_by": "camotrain tools/convert_weights.py"}
    size = write_safetensors(a.output, tensors, meta)
    if a.list:
        for name, dtype, t in tensors:
            print(f"  {name:56s} {dtype:5s} {list(t.shape)}")
    print(f"wrote {a.output}: {len(tensors)} tensors, {size / 1e6:.1f} MB"
          f" (state dict: {where or 'the whole file'})")
    if widened:
        print(f"  {len(widened)} float64 tensors written as F32 (e.g. {widened[0]})")
    if dropped:
        print(f"  dropped {len(dropped)} entries that are not tensors camotrain reads "
              f"(e.g. {dropped[0][0]}: {dropped[0][1]})", file=sys.stderr)


if __name__ == "__main__":
    main()
