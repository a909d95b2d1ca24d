"""torch_losses.py: camotrain's losses written in PyTorch, shared by the fixture generator
tools/loss_ref.py and the PyTorch sides of the benchmarks (tools/torch_bench.py,
torch_cpu_bench.py, torch_mem_bench.py), so that all of them train and check one formula.
"""
import torch
import torch.nn.functional as F


def structure_loss(x, t):
    """SINet-V2 / F3Net structure loss of logits x against a binary mask t (N, 1, H, W), mean
    over images of weighted BCE + weighted IoU, as src/backend/cpu/cpu_loss.c computes it
    (tools/loss_ref.py's docstring: the weighted BCE is the documented form, not the
    published code's plain mean)."""
    weit = 1 + 5 * torch.abs(F.avg_pool2d(t, kernel_size=31, stride=1, padding=15) - t)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    wbce = (weit * bce).sum(dim=(2, 3)) / weit.sum(dim=(2, 3))
    p = torch.sigmoid(x)
    inter = (p * t * weit).sum(dim=(2, 3))
    union = ((p + t) * weit).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (wbce + wiou).mean()
