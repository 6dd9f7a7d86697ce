"""Evaluation metrics, as the AnomalyCLIP/MRAD reference computes them (its metrics.py).

- image AUROC / AP: sklearn `roc_auc_score` / `average_precision_score` of the image scores.
- pixel AUROC: `roc_auc_score` over every pixel of every map of a class.
- AUPRO: the reference's `cal_pro_score`: 200 thresholds `np.arange(min, max, (max - min) / 200)`; at each,
  PRO = mean over ALL ground-truth regions of all images (skimage `label`, full connectivity) of the fraction of the
  region above the threshold, FPR = pixels above the threshold outside the masks / pixels outside the masks; keep
  the thresholds with FPR < 0.3, rescale those FPRs to [0, 1] (min-max) and integrate PRO over them with
  sklearn `auc`. Computed here image by image with sorted values and `searchsorted` (same counts as thresholding
  the whole stack 200 times, a fraction of the memory and time).

Where the reference is undefined (one class only in the labels or masks, a constant map, fewer than two
thresholds below FPR 0.3) the metric is NaN; means over classes skip NaNs.
"""
from __future__ import annotations

import math

import numpy as np
from skimage.measure import label, regionprops
from sklearn.metrics import auc, average_precision_score, roc_auc_score

METRICS = ("pixel_auroc", "pixel_aupro", "image_auroc", "image_ap")  # the paper's column order
TITLES = {"pixel_auroc": "pixel AUROC", "pixel_aupro": "AUPRO", "image_auroc": "image AUROC", "image_ap": "image AP"}


def _two_classes(labels) -> bool:
    u = np.unique(labels)
    return len(u) == 2


def image_auroc(labels, scores) -> float:
    """labels (N,) 0/1, scores (N,) -> AUROC, NaN unless both classes occur."""
    labels = np.asarray(labels).ravel()
    return float(roc_auc_score(labels, np.asarray(scores).ravel())) if _two_classes(labels) else math.nan


def image_ap(labels, scores) -> float:
    """labels (N,) 0/1, scores (N,) -> average precision, NaN unless both classes occur."""
    labels = np.asarray(labels).ravel()
    return float(average_precision_score(labels, np.asarray(scores).ravel())) if _two_classes(labels) else math.nan


def pixel_auroc(masks, maps) -> float:
    """masks (N, H, W) 0/1, maps (N, H, W) -> AUROC over all pixels, NaN unless both classes occur."""
    gt = np.asarray(masks).astype(np.uint8).ravel()
    if gt.size == 0 or gt.min() == gt.max():
        return math.nan
    return float(roc_auc_score(gt, np.asarray(maps).ravel()))


def _above(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold, how many values are > it (values sorted ascending)."""
    return len(sorted_values) - np.searchsorted(sorted_values, thresholds, side="right")


def pro_curve(masks, maps, max_step: int = 200, expect_fpr: float = 0.3):
    """masks (N, H, W) 0/1 and anomaly maps (N, H, W) float -> (fprs, pros): the reference's PRO curve at its
    thresholds whose FPR < `expect_fpr` (raw FPRs, not rescaled; thresholds ascending, so FPRs descending), the
    curve AUPRO integrates. None where it cannot be computed (no defect pixels, no normal pixels, constant maps)."""
    masks = [np.asarray(m) > 0.5 for m in masks]
    maps = [np.asarray(a) for a in maps]
    if not maps or not any(m.any() for m in masks) or all(m.all() for m in masks):
        return None
    min_th = min(a.min() for a in maps)
    max_th = max(a.max() for a in maps)
    if not max_th > min_th:
        return None
    delta = (max_th - min_th) / max_step
    ths = np.arange(min_th, max_th, delta)  # float64, exactly the reference's thresholds
    fp = np.zeros(len(ths), np.int64)
    n_normal = 0
    region_counts = []  # per region: (pixels above each threshold) / area
    for mask, amap in zip(masks, maps):
        normal = np.sort(amap[~mask].astype(np.float64))
        fp += _above(normal, ths)
        n_normal += normal.size
        for region in regionprops(label(mask, connectivity=mask.ndim)):
            values = np.sort(amap[region.coords[:, 0], region.coords[:, 1]].astype(np.float64))
            region_counts.append(_above(values, ths) / region.area)
    pros = np.mean(region_counts, axis=0)
    fprs = fp / n_normal
    keep = fprs < expect_fpr
    return fprs[keep], pros[keep]


def aupro(masks, maps, max_step: int = 200, expect_fpr: float = 0.3) -> float:
    """masks (N, H, W) 0/1 and anomaly maps (N, H, W) float -> normalised area under the PRO curve up to
    FPR `expect_fpr` (the reference's cal_pro_score). NaN where the reference is undefined."""
    return integrate_pro(pro_curve(masks, maps, max_step, expect_fpr))


def integrate_pro(curve) -> float:
    """(fprs, pros) from pro_curve (or None) -> AUPRO: FPRs min-max rescaled to [0, 1], PRO integrated with
    sklearn `auc`; NaN for None or fewer than two distinct FPRs."""
    if curve is None:
        return math.nan
    fprs, pros = curve
    if len(fprs) < 2 or fprs.max() == fprs.min():
        return math.nan
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return float(auc(fprs, pros))


def class_metrics(labels, scores, masks, maps) -> dict:
    """One class: labels (N,), image scores (N,), masks (N, H, W), maps (N, H, W) -> {metric: value}."""
    return {"pixel_auroc": pixel_auroc(masks, maps), "pixel_aupro": aupro(masks, maps),
            "image_auroc": image_auroc(labels, scores), "image_ap": image_ap(labels, scores)}


def mean_metrics(per_class: dict) -> dict:
    """{cls: {metric: value}} -> {metric: mean over the classes where it is defined (NaN if none)}."""
    out = {}
    for m in METRICS:
        vals = [v[m] for v in per_class.values() if m in v and not math.isnan(v[m])]
        out[m] = float(np.mean(vals)) if vals else math.nan
    return out
