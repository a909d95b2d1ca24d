"""ref_hash.py: the integer hashes behind the closed-form values of the reference fixtures
(docs/models.md "Reference tests"), shared by tools/torch_ref.py, pretrained_ref.py,
attention_ref.py and moe_ref.py. Integer arithmetic only, so the C tests (tests/test_util.h,
tests/test_torch_ref.c) compute exactly the same values. Needs numpy alone.
"""
import numpy as np

MASK32 = 0xFFFFFFFF


def fnv1a32(s):
    """32-bit FNV-1a of the UTF-8 bytes of s: the seed of a tensor's values from its name."""
    h = 2166136261
    for b in s.encode("utf-8"):
        h = ((h ^ b) * 16777619) & MASK32
    return h


def hash_uniform(seed, n):
    """n values in [-1, 1): murmur3's fmix32 of (seed + i * 0x9E3779B9) mod 2^32, / 2^31 - 1.
    Hashed, not smooth: a rule such as sin(a*i + phase) makes every conv weight matrix rank 2
    (each row a shifted sinusoid), and a train-mode BN network built on it is so
    ill-conditioned that float32 PyTorch itself is off by 10-100% from float64 after eight
    resblocks."""
    i = np.arange(n, dtype=np.uint64)
    x = (np.uint64(seed & MASK32) + i * np.uint64(0x9E3779B9)) & np.uint64(MASK32)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x85EBCA6B)) & np.uint64(MASK32)
    x ^= x >> np.uint64(13)
    x = (x * np.uint64(0xC2B2AE35)) & np.uint64(MASK32)
    x ^= x >> np.uint64(16)
    return x.astype(np.float64) / 2147483648.0 - 1.0
