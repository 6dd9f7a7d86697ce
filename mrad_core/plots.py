"""The evaluation plots people read: image-level ROC and PR curves, the PRO curve AUPRO integrates, score
histograms of good vs defective images with the chosen thresholds, and a gallery of the worst mistakes.

Every function returns a matplotlib `Figure` built without pyplot (no global state: safe in a server's worker
threads) and `save_png` renders it with the Agg canvas. Inputs are plain arrays: labels (N,) 0/1, scores (N,)
per variant, images (H, W, 3) uint8, masks (H, W) bool.
"""
from __future__ import annotations

import textwrap

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from .files import atomic

NAMES = {"tf": "MRAD-TF", "ft": "MRAD-FT", "clip": "MRAD-CLIP"}
COLOURS = {"tf": "tab:blue", "ft": "tab:orange", "clip": "tab:green"}


def name(variant: str) -> str:
    return NAMES.get(variant, variant)


def pct(x) -> str:
    """Fraction -> "91.2%" (a tiny negative value shows as 0.0%, not -0.0%); "–" when undefined."""
    return "–" if x is None or x != x else f"{round(100 * float(x), 1) + 0.0:.1f}%"


def _colour(variant, i):
    return COLOURS.get(variant, f"C{i % 10}")


def _note(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes, fontsize=10, color="0.3")


def roc_pr_figure(labels, scores: dict, title: str, class_means: dict | None = None) -> Figure:
    """Image-level ROC (left) and precision-recall (right) curves of every variant in `scores` ({variant: (N,)}),
    AUROC / AP of these scores in the legend, plus the means over classes when given (pooled images:
    class_means = {variant: {"image_auroc": x, "image_ap": y}})."""
    labels = np.asarray(labels).astype(int)
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    roc_ax, pr_ax = fig.subplots(1, 2)
    n_bad, n_good = int(labels.sum()), int((labels == 0).sum())
    fig.suptitle(f"{title}: image scores ({n_good} good, {n_bad} defective)")
    roc_ax.set(title="ROC curve", xlabel="false positive rate (good images flagged)",
               ylabel="true positive rate (defects caught)", xlim=(0, 1), ylim=(0, 1.02))
    pr_ax.set(title="Precision-recall curve", xlabel="recall (defects caught)",
              ylabel="precision (flagged images that are defective)", xlim=(0, 1), ylim=(0, 1.02))
    if n_bad == 0 or n_good == 0:
        for ax in (roc_ax, pr_ax):
            _note(ax, f"undefined: only {'good' if n_bad == 0 else 'defective'} images")
        return fig
    roc_ax.plot([0, 1], [0, 1], ls=":", color="0.6", label="chance (AUROC 50.0%)")
    pr_ax.axhline(n_bad / len(labels), ls=":", color="0.6", label=f"chance (AP {pct(n_bad / len(labels))})")
    for i, (v, s) in enumerate(scores.items()):
        s = np.asarray(s, dtype=np.float64)
        means = (class_means or {}).get(v)
        extra = {k: f", class mean {pct(means[k])}" if means else "" for k in ("image_auroc", "image_ap")}
        fpr, tpr, _ = roc_curve(labels, s)
        roc_ax.plot(fpr, tpr, color=_colour(v, i), lw=2,
                    label=f"{name(v)} (AUROC {pct(roc_auc_score(labels, s))}{extra['image_auroc']})")
        precision, recall, _ = precision_recall_curve(labels, s)
        pr_ax.step(recall, precision, where="post", color=_colour(v, i), lw=2,
                   label=f"{name(v)} (AP {pct(average_precision_score(labels, s))}{extra['image_ap']})")
    roc_ax.legend(loc="lower right", fontsize=9)
    pr_ax.legend(loc="lower left", fontsize=9)
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
    return fig


def _pro_axes(ax, curves: dict, title: str, max_fpr: float, names: bool = True):
    ax.set(title=title, xlabel="pixel false positive rate", ylabel="per-region overlap (PRO)", xlim=(0, max_fpr),
           ylim=(0, 1.02))
    drawn = False
    for i, (label, (fprs, pros, value)) in enumerate(curves.items()):
        shown = name(label) if names else label
        colour = _colour(label, i) if names else f"C{i % 10}"
        if fprs is None:
            ax.plot([], [], color=colour, ls="--", label=f"{shown}: undefined ({value})")
            continue
        order = np.argsort(fprs, kind="stable")
        ax.plot(np.asarray(fprs)[order], np.asarray(pros)[order], color=colour, lw=2,
                label=f"{shown} (AUPRO {pct(value)})")
        drawn = True
    if not drawn:
        _note(ax, "no PRO curve: it needs defect masks")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def pro_figure(curves: dict, title: str, max_fpr: float = 0.3) -> Figure:
    """PRO curves up to FPR `max_fpr` of several variants: {variant: (fprs, pros, aupro) or (None, None, reason)};
    the legend gives each curve's AUPRO (or why it is undefined)."""
    fig = Figure(figsize=(6.5, 4.8), layout="constrained")
    _pro_axes(fig.subplots(), curves, f"{title}: PRO curve (FPR < {max_fpr:g}, the range AUPRO integrates)",
              max_fpr)
    return fig


def pro_grid_figure(per_variant: dict, title: str, means: dict | None = None, max_fpr: float = 0.3) -> Figure:
    """One panel per variant with the PRO curve of every class: {variant: {class: (fprs, pros, aupro) or
    (None, None, reason)}}; `means[variant]` (mean AUPRO over classes) goes in the panel title."""
    fig = Figure(figsize=(5.5 * len(per_variant), 4.8), layout="constrained")
    axes = fig.subplots(1, len(per_variant), squeeze=False)[0]
    fig.suptitle(f"{title}: PRO curves per class (FPR < {max_fpr:g}, the range AUPRO integrates)")
    for ax, (v, curves) in zip(axes, per_variant.items()):
        mean = (means or {}).get(v)
        sub = f"{name(v)}: mean AUPRO {pct(mean)}"
        _pro_axes(ax, curves, sub, max_fpr, names=False)
    return fig


def histogram_figure(labels, scores: dict, thresholds: dict, title: str, bins: int = 20) -> Figure:
    """One panel per variant: histograms of the image scores of good vs defective images, with vertical lines at
    `thresholds[variant]` ({"f1": {"threshold", "f1", ...} | None, "fpr": {..., "max_fpr"} | None})."""
    labels = np.asarray(labels).astype(int)
    fig = Figure(figsize=(4.2 * len(scores), 4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(scores), squeeze=False)[0])
    fig.suptitle(f"{title}: image scores of good vs defective images")
    for ax, (v, s) in zip(axes, scores.items()):
        s = np.asarray(s, dtype=np.float64)
        lo, hi = float(s.min()), float(s.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
        ax.hist(s[labels == 0], edges, alpha=0.6, color="tab:green", label=f"good ({int((labels == 0).sum())})")
        ax.hist(s[labels == 1], edges, alpha=0.6, color="tab:red", label=f"defective ({int(labels.sum())})")
        th = thresholds.get(v) or {}
        if th.get("f1"):
            t = th["f1"]
            ax.axvline(t["threshold"], color="k", lw=2, label=f"F1-optimal {t['threshold']:.3f} (F1 {t['f1']:.2f})")
        if th.get("fpr"):
            t = th["fpr"]
            ax.axvline(t["threshold"], color="0.4", ls="--", lw=1.5,
                       label=f"FPR ≤ {pct(t['max_fpr'])}: {t['threshold']:.3f} (recall {t['recall']:.2f})")
        ax.set(title=name(v), xlabel="image anomaly score", ylabel="images")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return fig


def gallery_figure(rows: list, title: str) -> Figure:
    """Rows of dict(image (H, W, 3) uint8, overlay (H, W, 3) uint8, mask (H, W) bool, caption str) -> a
    3-column figure: image | overlay | ground-truth mask, each row under its caption on a line of its own (a row
    is a sub-figure, so the caption never runs into the panels' headings)."""
    n = max(1, len(rows))
    fig = Figure(figsize=(9, 3.0 * n + 0.5), layout="constrained")
    fig.suptitle(title)
    if not rows:
        axes = fig.subplots(1, 3)
        for ax in axes:
            ax.set_axis_off()
        _note(axes[1], "no images to show")
        return fig
    for row, sub in zip(rows, fig.subfigures(n, 1, squeeze=False)[:, 0]):
        sub.suptitle(textwrap.shorten(row["caption"], 110, placeholder=" …"), x=0.01, ha="left", fontsize=9,
                     fontweight="bold")
        a_img, a_ovl, a_mask = sub.subplots(1, 3)
        a_img.imshow(row["image"])
        a_ovl.imshow(row["overlay"])
        a_mask.imshow(np.asarray(row["mask"], dtype=np.uint8), cmap="gray", vmin=0, vmax=1)
        a_img.set_title("image", fontsize=9)
        a_ovl.set_title("anomaly map", fontsize=9)
        a_mask.set_title("ground truth" if np.asarray(row["mask"]).any() else "ground truth (empty)", fontsize=9)
        for ax in (a_img, a_ovl, a_mask):
            ax.set_xticks([])
            ax.set_yticks([])
    return fig


def save_png(fig: Figure, path, dpi: int = 100) -> Path:
    """Render `fig` with the Agg canvas to a PNG at `path` (written to a temporary name, then moved)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with atomic(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path
