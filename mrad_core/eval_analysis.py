"""What `mrad eval --plots` and the app's evaluation add to the metrics: per class and pooled over all images,
thresholds from the labels, PRO curves, why a metric is undefined, the hardest images, and the figures.

`EvalAnalysis` is evaluate()'s `on_class` hook (it sees each class's maps while they are in memory), then
`finish(report)` draws the pooled figures and writes OUT/analysis.json. Files (under OUT):

    plots/<class>/roc_pr.png, pro.png, histograms.png, gallery_<variant>.png
    plots/all_classes/roc_pr.png, histograms.png (pooled images), pro.png (every class's curve per variant)
    overlays/<variant>/<class>/<kind>_<n>_<name>.png   the gallery's overlays
    analysis.json   {"thresholds", "false_alarm_rate", "undefined", "plots", "mistakes"}
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np

from . import plots, viz
from .images import load_image
from .metrics import METRICS, TITLES, integrate_pro, pro_curve
from .thresholds import thresholds

POOLED = "all_classes"


def _safe(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", str(text)).strip("._") or "x"


def undefined_reasons(labels, masks, maps, aupro: float) -> dict:
    """labels (N,), masks (N, H, W) 0/1, maps (N, H, W) and the class's AUPRO -> {metric: reason} for the
    metrics metrics.py leaves undefined (NaN) on these inputs, in METRICS order."""
    labels, masks = np.asarray(labels), np.asarray(masks)
    n_bad = int(labels.sum())
    why = {}
    if len(np.unique(labels)) < 2:
        why["image_auroc"] = why["image_ap"] = "only defective images" if n_bad else "only good images"
    if not masks.any():
        pixel = "no defective images" if n_bad == 0 else "no defect masks given"
    elif masks.all():
        pixel = "every pixel is marked defective"
    elif np.max(maps) == np.min(maps):
        pixel = "the anomaly maps are constant"
    else:
        pixel = "fewer than two PRO thresholds below a pixel FPR of 0.3"
    if masks.size == 0 or masks.min() == masks.max():
        why["pixel_auroc"] = pixel
    if math.isnan(aupro):
        why["pixel_aupro"] = pixel
    return {k: why[k] for k in METRICS if k in why}


class EvalAnalysis:
    """evaluate(on_class=EvalAnalysis(...)) hook; `names` maps record.image to the name shown (default: file name)."""

    def __init__(self, out_dir, variants, *, false_alarm_rate: float = 0.05, gallery: int = 3, names=None,
                 draw: bool = True):
        self.out, self.variants = Path(out_dir), tuple(variants)
        self.rate, self.k, self.names, self.draw = false_alarm_rate, gallery, names or {}, draw
        self.thresholds = {v: {} for v in self.variants}  # {v: {class: thresholds()}}, POOLED added by finish
        self.pro = {v: {} for v in self.variants}  # {v: {class: (fprs, pros, aupro) | (None, None, reason)}}
        self.reasons = {v: {} for v in self.variants}  # {v: {class | "mean": {metric: reason}}}
        self.mistakes, self.plots = [], []

    def name(self, record) -> str:
        return self.names.get(record.image, Path(record.image).name)

    def _save(self, fig, *parts) -> Path:
        path = plots.save_png(fig, self.out.joinpath("plots", *parts))
        self.plots.append(path)
        return path

    def __call__(self, cls, records, labels, scores, masks, maps):
        """One class: labels (n,), scores (n, V), masks (n, S, S) uint8, maps (n, V, S, S)."""
        for j, v in enumerate(self.variants):
            self.thresholds[v][cls] = thresholds(labels, scores[:, j], self.rate)
            curve = pro_curve(masks, maps[:, j])
            value = integrate_pro(curve)
            self.reasons[v][cls] = undefined_reasons(labels, masks, maps[:, j], value)
            self.pro[v][cls] = (None, None, self.reasons[v][cls]["pixel_aupro"]) if math.isnan(value) \
                else (curve[0], curve[1], value)
        if not self.draw:
            return
        d = _safe(cls)
        by_v = {v: scores[:, j] for j, v in enumerate(self.variants)}
        self._save(plots.roc_pr_figure(labels, by_v, cls), d, "roc_pr.png")
        self._save(plots.pro_figure({v: self.pro[v][cls] for v in self.variants}, cls), d, "pro.png")
        self._save(plots.histogram_figure(labels, by_v, {v: self.thresholds[v][cls] for v in self.variants}, cls),
                   d, "histograms.png")
        for j, v in enumerate(self.variants if self.k > 0 else ()):
            rows = self._gallery(cls, v, records, labels, scores[:, j], masks, maps[:, j])
            th = self.thresholds[v][cls]["f1"]
            at = f"F1-optimal threshold {th['threshold']:.3f}" if th else "no threshold: one kind of image only"
            self._save(plots.gallery_figure(rows, f"{plots.name(v)} on {cls}: hardest good and defective images "
                                                  f"({at})"), d, f"gallery_{v}.png")

    def _gallery(self, cls, v, records, labels, scores, masks, maps) -> list:
        """The k highest-scoring good and k lowest-scoring defective images, as gallery rows; records mistakes
        (at the class's F1-optimal threshold) in self.mistakes and writes their overlays."""
        th = self.thresholds[v][cls]["f1"]
        t = th["threshold"] if th else None
        good = [i for i in np.argsort(-scores, kind="stable") if labels[i] == 0][:self.k]
        bad = [i for i in np.argsort(scores, kind="stable") if labels[i] == 1][:self.k]
        rows = []
        for n, i in enumerate([*good, *bad]):
            s, label, name = float(scores[i]), int(labels[i]), self.name(records[i])
            wrong = t is not None and (s >= t) != bool(label)
            kind = ("false positive" if label == 0 else "false negative") if wrong else \
                   ("good, highest score" if label == 0 else "defective, lowest score")
            rel = "" if t is None else f" {'≥' if s >= t else '<'} {t:.3f}"
            base = viz.fit(np.asarray(load_image(records[i].image).image), 256)
            overlay, _ = viz.render(base, viz.resize_map(maps[i], base.shape, np.float32))
            mask = cv2.resize(masks[i], (base.shape[1], base.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
            path = self.out / "overlays" / v / _safe(cls) / f"{_safe(kind)}_{n}_{_safe(Path(name).stem)}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
            rows.append({"image": base, "overlay": overlay, "mask": mask,
                         "caption": f"{kind.upper() if wrong else kind} · {name} · score {s:.3f}{rel}"})
            if wrong:
                self.mistakes.append({"variant": v, "class": cls, "kind": kind, "name": name, "label": label,
                                      "score": s, "threshold": t, "overlay": str(path.relative_to(self.out))})
        return rows

    def finish(self, report: dict) -> dict:
        """Pooled thresholds and figures, reasons for undefined means; writes OUT/analysis.json -> its content."""
        images = report["images"]
        labels = np.array([im["label"] for im in images])
        by_v = {v: np.array([im["scores"][v] for im in images]) for v in self.variants}
        means = {v: report["metrics"][v]["mean"] for v in self.variants}
        for v in self.variants:
            self.thresholds[v][POOLED] = thresholds(labels, by_v[v], self.rate)
            self.reasons[v]["mean"] = {k: "undefined in every class" for k in METRICS if math.isnan(means[v][k])}
        if self.draw:
            classes = len(self.pro[self.variants[0]]) if self.variants else 0
            extra = means if classes > 1 else None
            title = f"all {classes} classes pooled" if classes > 1 else "all images"
            self._save(plots.roc_pr_figure(labels, by_v, title, extra), POOLED, "roc_pr.png")
            self._save(plots.histogram_figure(labels, by_v, {v: self.thresholds[v][POOLED] for v in self.variants},
                                              title), POOLED, "histograms.png")
            self._save(plots.pro_grid_figure(self.pro, "all classes", {v: means[v]["pixel_aupro"]
                                                                       for v in self.variants}), POOLED, "pro.png")
        content = {"false_alarm_rate": self.rate, "thresholds": self.thresholds, "undefined": self.reasons,
                   "plots": [p.relative_to(self.out).as_posix() for p in self.plots], "mistakes": self.mistakes,
                   "metric_titles": TITLES}
        path = self.out / "analysis.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=1) + "\n")
        return content
