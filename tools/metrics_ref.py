#!/usr/bin/env python3
"""Reference values for tests/test_metrics.c, computed with PySODMetrics (the field's tool).

Writes tests/fixtures/metrics_ref.safetensors holding
  img{i}_pred, img{i}_gt   U8 (H, W)   prediction 0..255 and ground-truth mask
  per-image results        F32 (N,)    sm, em_mean, em_max, em_adp, wfm, fm_mean, fm_max,
                                       fm_adp, mae, iou, dice (each image scored alone)
  all_<metric>             F32 ()      the same metrics over the whole set (curves averaged
                                       over images before the max, as PySODMetrics does)
  cls_pred, cls_gt         I32 (N,)    multi-class labels; cls_k, cls_ignore I32 ()
  cls_iou (K,), cls_miou, cls_pixel_acc, cls_mean_acc   F32 (numpy reference)

The images cover: smooth predictions with min-max normalisation active (values not spanning
0..255), an all-background GT and an all-foreground GT (special-cased by S, E and wF), a
binary prediction, and odd sizes.

Regenerate (from the repository root):
    pip install pysodmetrics safetensors numpy
    python3 tools/metrics_ref.py
"""
import os
import warnings

import numpy as np
import py_sod_metrics as M
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                   "metrics_ref.safetensors")
NAMES = ["sm", "em_mean", "em_max", "em_adp", "wfm", "fm_mean", "fm_max", "fm_adp", "mae",
         "iou", "dice"]


def box_blur(x, r):
    """Cheap smoothing so predictions look like network outputs, not white noise."""
    k = 2 * r + 1
    p = np.pad(x, r, mode="edge")
    c = np.cumsum(np.cumsum(p, 0), 1)
    c = np.pad(c, ((1, 0), (1, 0)))
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def ellipse(h, w, cy, cx, ry, rx):
    y, x = np.ogrid[:h, :w]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1


def make_images(rng):
    imgs = []
    # 1: one blob, smooth prediction in 20..230 (min-max normalisation matters)
    h, w = 48, 64
    gt = ellipse(h, w, 20, 30, 12, 18)
    p = box_blur(gt * 0.7 + rng.random((h, w)) * 0.5, 3)
    imgs.append((np.clip(20 + p / p.max() * 210, 0, 255).astype(np.uint8), gt))
    # 2: two blobs, odd size, noisy prediction spanning 0..255
    h, w = 37, 29
    gt = ellipse(h, w, 10, 8, 6, 5) | ellipse(h, w, 26, 20, 8, 6)
    p = box_blur(gt * 1.0 + rng.normal(0, 0.4, (h, w)), 1)
    imgs.append((((p - p.min()) / (p.max() - p.min()) * 255).astype(np.uint8), gt))
    # 3: all-background GT with a weak false-positive smear
    h, w = 25, 31
    gt = np.zeros((h, w), bool)
    p = box_blur(rng.random((h, w)) ** 3, 2)
    imgs.append((((p / p.max()) * 90).astype(np.uint8), gt))
    # 4: all-foreground GT
    h, w = 19, 23
    gt = np.ones((h, w), bool)
    p = box_blur(0.6 + 0.4 * rng.random((h, w)), 1)
    imgs.append((((p / p.max()) * 255).astype(np.uint8), gt))
    # 5: binary (0/255) prediction, shifted blob: thresholds collapse to two levels
    h, w = 40, 33
    gt = ellipse(h, w, 22, 15, 11, 9)
    imgs.append((ellipse(h, w, 24, 18, 10, 10).astype(np.uint8) * 255, gt))
    # 6: thin structure (wF's distance transform and edges), wide image
    h, w = 21, 70
    gt = np.zeros((h, w), bool)
    gt[8:12, 5:60] = True
    gt[3:18, 30:33] = True
    p = box_blur(gt * 0.8 + rng.random((h, w)) * 0.4, 2)
    imgs.append((((p / p.max()) * 250).astype(np.uint8), gt))
    return [(pr.astype(np.uint8), np.where(g, 255, 0).astype(np.uint8)) for pr, g in imgs]


def iou_dice(pred, gt):
    """IoU/Dice at 0.5 on the raw prediction (pred >= 127.5, gt > 127); empty vs empty = 1."""
    p, g = pred >= 128, gt > 127
    inter, union, tot = (p & g).sum(), (p | g).sum(), p.sum() + g.sum()
    return (1.0 if union == 0 else inter / union), (1.0 if tot == 0 else 2 * inter / tot)


def score(pairs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm, em, wfm, fm, mae = (M.Smeasure(), M.Emeasure(), M.WeightedFmeasure(),
                                M.Fmeasure(), M.MAE())
    ious, dices = [], []
    for pred, gt in pairs:
        for m in (sm, em, wfm, fm, mae):
            m.step(pred=pred, gt=gt)
        i, d = iou_dice(pred, gt)
        ious.append(i)
        dices.append(d)
    e = em.get_results()["em"]
    f = fm.get_results()["fm"]
    return dict(sm=sm.get_results()["sm"], em_mean=e["curve"].mean(), em_max=e["curve"].max(),
                em_adp=e["adp"], wfm=wfm.get_results()["wfm"], fm_mean=f["curve"].mean(),
                fm_max=f["curve"].max(), fm_adp=f["adp"], mae=mae.get_results()["mae"],
                iou=np.mean(ious), dice=np.mean(dices))


def multiclass(rng, K=7, ignore=255, n=3000):
    """Labels where class 3 is never predicted, class 4 never right, class 5 only
    predicted (IoU 0, no accuracy) and class 6 absent from both (IoU NaN, skipped)."""
    gt = rng.integers(0, K - 2, n).astype(np.int32)
    gt[rng.random(n) < 0.1] = ignore
    pred = np.where(rng.random(n) < 0.6, gt, rng.integers(0, K - 1, n)).astype(np.int32)
    pred[pred == ignore] = 0
    pred[pred == 3] = 2
    pred = np.where(gt == 4, 2, pred).astype(np.int32)
    pred[(gt != 4) & (pred == 4)] = 1
    valid = gt != ignore
    cm = np.bincount(gt[valid] * K + pred[valid], minlength=K * K).reshape(K, K).astype(float)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, np.nan)
        acc = np.where(cm.sum(1) > 0, inter / cm.sum(1), np.nan)
    res = dict(cls_pred=pred, cls_gt=gt, cls_k=np.array(K, np.int32),
               cls_ignore=np.array(ignore, np.int32), cls_iou=iou.astype(np.float32),
               cls_miou=np.float32(np.nanmean(iou)),
               cls_pixel_acc=np.float32(inter.sum() / cm.sum()),
               cls_mean_acc=np.float32(np.nanmean(acc)))
    return {k: np.asarray(v) for k, v in res.items()}


def main():
    rng = np.random.default_rng(20240611)
    pairs = make_images(rng)
    t = {}
    for i, (pred, gt) in enumerate(pairs):
        t[f"img{i}_pred"], t[f"img{i}_gt"] = pred, gt
    per = [score([pg]) for pg in pairs]
    for name in NAMES:
        t[name] = np.array([p[name] for p in per], np.float32)
    for name, v in score(pairs).items():
        t["all_" + name] = np.array(v, np.float32)
    t["n_images"] = np.array(len(pairs), np.int32)
    t.update(multiclass(rng))
    save_file(t, OUT)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")
    for name in NAMES:
        print(f"  {name:8s} all={float(t['all_' + name]):.6f} per={np.round(t[name], 4)}")


if __name__ == "__main__":
    main()
