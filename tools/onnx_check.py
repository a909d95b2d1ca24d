#!/usr/bin/env python3
"""onnx_check.py: checks a `camotrain export` against camotrain itself.

Exports the checkpoint to ONNX, runs onnx.checker (full check: shape inference too) on the
file, runs `camotrain predict --dump-logits` on a folder of images (the network's input
and main-output logits at the network's resolution, as .npy), feeds the same inputs to
onnxruntime and compares its main output with camotrain's logits: every value must agree
within TOL * max(1, |logit|). With --dynamic-batch every image goes through one batch.

    tools/onnx_check.py --camotrain ./camotrain --ckpt runs/x/best.ckpt --images DIR \\
        [--work DIR] [--opset N] [--dynamic-batch] [--all-outputs] [--tol 1e-4]

Prints one line with the figures (max abs and relative difference) and exits 0 when the
check passes, 1 when it fails, 2 on a usage or export error, 3 when onnx or onnxruntime
cannot be imported (pip install onnx onnxruntime; tests/test_export.sh skips then).
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile


def run(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        sys.stderr.write("onnx_check: %s failed (exit %d):\n%s" % (" ".join(cmd), p.returncode,
                                                                  p.stdout))
        sys.exit(2)
    return p.stdout


def export(args, path):
    cmd = [args.camotrain, "export", "--ckpt", args.ckpt, "--onnx", path]
    if args.opset:
        cmd += ["--opset", str(args.opset)]
    if args.dynamic_batch:
        cmd.append("--dynamic-batch")
    if args.all_outputs:
        cmd.append("--all-outputs")
    return run(cmd).strip()


def camotrain_logits(args, work):
    """{stem: (input, logits)} from camotrain predict --dump-logits, NCHW float32."""
    import numpy as np
    dump, pred = os.path.join(work, "dump"), os.path.join(work, "pred")
    run([args.camotrain, "predict", "--ckpt", args.ckpt, "--input", args.images, "--output",
         pred, "--dump-logits", dump])
    out = {}
    for f in sorted(glob.glob(os.path.join(dump, "*.input.npy"))):
        stem = os.path.basename(f)[:-len(".input.npy")]
        out[stem] = (np.load(f), np.load(os.path.join(dump, stem + ".logits.npy")))
    if not out:
        sys.stderr.write("onnx_check: predict dumped no logits for %s\n" % args.images)
        sys.exit(2)
    return out


def check_outputs(sess, model, results):
    """Every graph output has the shape its value_info declares (N = the batch run)."""
    bad = []
    for vi, r in zip(model.graph.output, results):
        dims = [d.dim_value if d.HasField("dim_value") else r.shape[0]
                for d in vi.type.tensor_type.shape.dim]
        if list(r.shape) != dims:
            bad.append("%s: shape %s, declared %s" % (vi.name, list(r.shape), dims))
    return bad


def compare(args, model, path, pairs):
    """(max abs diff, max |ref|, max abs diff / max |ref|, failures) of onnxruntime against
    camotrain."""
    import numpy as np
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    stems = sorted(pairs)
    batches = [stems] if args.dynamic_batch else [[s] for s in stems]
    worst_abs = ref_max = 0.0
    problems = []
    for b in batches:
        x = np.concatenate([pairs[s][0] for s in b], axis=0)
        res = sess.run(None, {"input": x})
        problems += check_outputs(sess, model, res)
        for i, s in enumerate(b):
            got, want = res[0][i:i + 1], pairs[s][1]
            if got.shape != want.shape:
                problems.append("%s: onnxruntime %s, camotrain %s" % (s, got.shape, want.shape))
                continue
            d = np.abs(got.astype(np.float64) - want)
            scale = np.maximum(1.0, np.abs(want))
            worst_abs = max(worst_abs, float(d.max()))
            ref_max = max(ref_max, float(np.abs(want).max()))
            if not np.all(d <= args.tol * scale):
                k = int(np.argmax(d / scale))
                problems.append("%s: value %d: onnxruntime %.8g, camotrain %.8g" % (
                    s, k, got.ravel()[k], want.ravel()[k]))
    worst_rel = worst_abs / ref_max if ref_max > 0 else worst_abs
    if worst_rel > args.tol:  # small logits: relative to the largest one too
        problems.append("max abs diff %.3g is over %g of the largest |logit| %.3g" % (
            worst_abs, args.tol, ref_max))
    return worst_abs, ref_max, worst_rel, problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--camotrain", default="./camotrain")
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--images", required=True, help="folder of images for predict")
    ap.add_argument("--work", help="scratch folder (default: a temporary one)")
    ap.add_argument("--opset", type=int)
    ap.add_argument("--dynamic-batch", action="store_true")
    ap.add_argument("--all-outputs", action="store_true")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    try:
        import numpy  # noqa: F401
        import onnx
        import onnxruntime
    except ImportError as e:
        print("onnx_check: needs numpy, onnx and onnxruntime (%s)" % e)
        return 3
    work = args.work or tempfile.mkdtemp(prefix="onnx_check.")
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, "model.onnx")
    export(args, path)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)  # raises on an invalid model
    pairs = camotrain_logits(args, work)
    worst_abs, ref_max, worst_rel, problems = compare(args, model, path, pairs)
    ops = sorted({n.op_type for n in model.graph.node})
    what = "%s opset %d%s%s" % (model.graph.name, model.opset_import[0].version,
                                ", dynamic batch" if args.dynamic_batch else "",
                                ", all outputs" if args.all_outputs else "")
    print("onnx_check: %s: onnx %s checker ok; %d nodes (%s); onnxruntime %s vs camotrain "
          "predict on %d images: max abs diff %.3g, max |logit| %.3g, rel diff %.3g "
          "(tol %g): %s" % (
              what, onnx.__version__, len(model.graph.node), " ".join(ops),
              onnxruntime.__version__, len(pairs), worst_abs, ref_max, worst_rel, args.tol,
              "FAIL" if problems else "PASS"))
    for p in problems[:10]:
        print("  " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
