"""Decision thresholds on image scores chosen from labels: the one that maximises F1, and the one at a chosen
false-alarm rate (FPR on the good images). Convention, as sklearn's: an image is flagged when score >= threshold.

Both come from sklearn's `precision_recall_curve` / `roc_curve` (no hand-rolled sweeps). They need both good and
defective images; otherwise the functions return None (and `thresholds` says why).
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve


def _check(labels, scores):
    labels = np.asarray(labels).astype(np.int64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    return labels, scores


def _stats(labels, scores, threshold: float) -> dict:
    """Confusion counts and rates when flagging score >= threshold."""
    flagged = scores >= threshold
    tp, fp = int((flagged & (labels == 1)).sum()), int((flagged & (labels == 0)).sum())
    fn, tn = int((~flagged & (labels == 1)).sum()), int((~flagged & (labels == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"threshold": float(threshold), "precision": precision, "recall": recall, "f1": f1,
            "fpr": fp / (fp + tn) if fp + tn else 0.0, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def f1_threshold(labels, scores) -> dict | None:
    """labels (N,) 0/1, scores (N,) -> {"threshold", "precision", "recall", "f1", "fpr", "tp", "fp", "fn", "tn"} at
    the threshold with the highest F1 (the lowest such threshold on ties); None unless both classes occur."""
    labels, scores = _check(labels, scores)
    if len(np.unique(labels)) != 2:
        return None
    precision, recall, ths = precision_recall_curve(labels, scores)
    p, r = precision[:-1], recall[:-1]  # the last point (precision 1, recall 0) has no threshold
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    return _stats(labels, scores, ths[int(np.argmax(f1))])


def fpr_threshold(labels, scores, max_fpr: float = 0.05) -> dict | None:
    """labels (N,) 0/1, scores (N,) -> the same dict at the LOWEST threshold whose false-alarm rate (fraction of
    good images flagged) is <= max_fpr, i.e. the most defects caught within that budget; None unless both
    classes occur. If even the highest score exceeds the budget, the threshold lies just above every score."""
    labels, scores = _check(labels, scores)
    if not 0 <= max_fpr <= 1:
        raise ValueError(f"max_fpr must be in [0, 1], got {max_fpr}")
    if len(np.unique(labels)) != 2:
        return None
    fpr, _, ths = roc_curve(labels, scores, drop_intermediate=False)  # thresholds decreasing, ths[0] = inf
    ok = np.flatnonzero(fpr <= max_fpr)
    idx = int(ok[-1])
    threshold = ths[idx] if idx > 0 else np.nextafter(scores.max(), np.inf)
    return {**_stats(labels, scores, threshold), "max_fpr": float(max_fpr)}


def thresholds(labels, scores, max_fpr: float = 0.05) -> dict:
    """-> {"f1": dict | None, "fpr": dict | None, "reason": str | None} (reason says why they are undefined)."""
    labels, scores = _check(labels, scores)
    reason = None
    if labels.size == 0:
        reason = "no images"
    elif labels.min() == labels.max():
        reason = "only defective images" if labels[0] else "only good images"
    return {"f1": f1_threshold(labels, scores), "fpr": fpr_threshold(labels, scores, max_fpr),
            "reason": reason and f"{reason}: a threshold needs both good and defective images"}
