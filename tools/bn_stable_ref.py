#!/usr/bin/env python3
"""bn_stable_ref.py: PyTorch's float64 training-mode batch norm on the ill-conditioned input
of tests/test_bn_stable.c, printed as the C table that test holds (REF_*).

Input: R rows (images of 1x1 pixels) by C = 4 channels,
  x[r][c] = float32(BASE[c] + STEP[c] * r), r = 0 .. R-1,
with mean^2 / var from 1e4 to 1e14: E[x^2] - mean^2 in float32 cancels to noise there.
For R = 2 (one replica's rows) and R = 4 (two replicas of 2 rows under sync-BN):
torch.native_batch_norm(x.double(), None, None, zeros, ones, training=True, momentum=1,
eps=EPS) gives the output, the batch mean and invstd; running_var after it is the unbiased
batch variance (momentum 1).

Run: /tmp/venv-hbn/bin/python tools/bn_stable_ref.py   (Debian's python3-torch 1.13)
"""
import textwrap

import torch

BASE = [1000.0, -30000.0, 5.0, 100000.0]
STEP = [1e-3, 0.5, 0.1, 0.03]
EPS = 1e-10


def reference(rows):
    x = torch.tensor([[BASE[c] + STEP[c] * r for c in range(4)] for r in range(rows)],
                     dtype=torch.float32).double().reshape(rows, 4, 1, 1)
    rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    y, mean, invstd = torch.native_batch_norm(x, None, None, rm, rv, True, 1.0, EPS)
    return y.reshape(rows, 4), mean, invstd, rv


def c_array(name, t):
    vals = ", ".join("%.17g" % v for v in t.flatten().tolist())
    return "\n".join(textwrap.wrap("static const double %s[] = {%s};" % (name, vals), 100,
                                    subsequent_indent="    "))


def main():
    print("/* tools/bn_stable_ref.py, torch %s */" % torch.__version__)
    for rows in (2, 4):
        y, mean, invstd, rv = reference(rows)
        print(c_array("REF%d_Y" % rows, y))
        print(c_array("REF%d_MEAN" % rows, mean))
        print(c_array("REF%d_INVSTD" % rows, invstd))
        print(c_array("REF%d_VAR_UNBIASED" % rows, rv))


if __name__ == "__main__":
    main()
