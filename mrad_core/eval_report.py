"""Evaluating a user's labelled images in one call, for the app's Evaluate tab and the /evaluate API.

    labelled = read_labelled("parts.zip")                  # or [(image, "good"|"bad", mask or None), ...]
    report = evaluate_samples(detector, labelled, ("tf", "ft", "clip"), progress=lambda f, text: ...)
    headers, rows = report.table()                         # variants side by side, "–" where undefined
    report.zip                                             # metrics.json/csv, scores.csv, plots, overlays

The metrics come from evaluate.evaluate() (each image encoded once, every variant scored from that encoding)
and the plots and thresholds from analysis.EvalAnalysis, the same code `mrad eval --plots` runs, so the numbers are
those `mrad eval` gives on the same files.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .eval_analysis import POOLED, EvalAnalysis
from .config import VARIANTS
from .errors import MRADError
from .evaluate import _nan_to_none, _pct, evaluate, write_report
from .labelled import MAX_IMAGES, LabelledSet, read_labelled
from .metrics import METRICS, TITLES
from .plots import name as variant_name

ZIP_NAME = "mrad_evaluation.zip"


@dataclass
class EvalReport:
    """Everything the Evaluate tab shows. Metric values are fractions, None where undefined."""

    variants: list
    metrics: dict  # {variant: {"classes": {cls: {metric: value | None, n_images, n_anomalous}}, "mean": {...}}}
    undefined: dict  # {variant: {cls | "mean": {metric: reason}}} for the metrics that are None
    thresholds: dict  # {variant: {cls | "all_classes": {"f1": dict | None, "fpr": dict | None, "reason"}}}
    images: list  # [{"name", "cls_name", "label", "scores": {variant: score}}] in evaluation order
    mistakes: list  # gallery images on the wrong side of their class's F1-optimal threshold (up to `gallery`
    #                 false positives and negatives per class and variant): [{"variant", "class", "kind", "name",
    #                 "label", "score", "threshold", "overlay" (path relative to out_dir)}]
    plots: list  # [Path] PNG figures (per class, then all_classes)
    errors: list  # [(entry, message)] entries that were skipped or need a note
    has_masks: bool
    out_dir: Path
    zip: Path
    info: dict = field(default_factory=dict)

    def table(self) -> tuple:
        """-> (headers, rows): one row per class (then "mean" if several) and metric, the variants side by side as
        percentages with one decimal, "–" where undefined, and a last column saying why. Pixel metrics only when
        masks were given."""
        metrics = [k for k in METRICS if self.has_masks or not k.startswith("pixel")]
        headers = ["class", "metric", *(variant_name(v) for v in self.variants), "note"]
        first = self.metrics[self.variants[0]]
        rows = []
        classes = list(first["classes"])
        for cls in classes + (["mean"] if len(classes) > 1 else []):  # one class: its mean is the same row
            for k in metrics:
                values = [(self.metrics[v]["classes"][cls] if cls != "mean" else self.metrics[v]["mean"])[k]
                          for v in self.variants]
                why = sorted({self.undefined[v].get(cls, {}).get(k) for v in self.variants} - {None})
                rows.append([cls, TITLES[k], *(_pct(x).replace("-", "–") for x in values), "; ".join(why)])
        return headers, rows

    def threshold_table(self, scope: str = POOLED) -> tuple:
        """-> (headers, rows): per variant the F1-optimal threshold and the one at the false-alarm rate, for
        `scope` (a class, or "all_classes" = every image pooled); "–" and the reason when undefined."""
        rate = self.info.get("false_alarm_rate", 0.05)
        headers = ["variant", "F1-optimal threshold", "F1", "precision", "recall",
                   f"threshold at FPR ≤ {100 * rate:g}%", "FPR", "recall at that FPR", "note"]
        rows = []
        for v in self.variants:
            t = self.thresholds[v][scope]
            f1, fa = t["f1"], t["fpr"]
            cells = [f"{f1['threshold']:.4f}", f"{f1['f1']:.3f}", f"{f1['precision']:.3f}", f"{f1['recall']:.3f}"] \
                if f1 else ["–"] * 4
            cells += [f"{fa['threshold']:.4f}", f"{fa['fpr']:.3f}", f"{fa['recall']:.3f}"] if fa else ["–"] * 3
            rows.append([variant_name(v), *cells, t["reason"] or ""])
        return headers, rows

    def threshold(self, kind: str = "f1", scope: str = POOLED) -> dict:
        """{variant: image threshold or None}: kind "f1" (F1-optimal) or "fpr" (at the false-alarm rate), for a
        class or all images pooled; for the single-image view's image-threshold slider (flag score >= it)."""
        if kind not in ("f1", "fpr"):
            raise MRADError(f"threshold kind must be 'f1' or 'fpr', not {kind!r}")
        if any(scope not in self.thresholds[v] for v in self.variants):
            raise MRADError(f"no class {scope!r}; choose from {', '.join(self.thresholds[self.variants[0]])}")
        return {v: (self.thresholds[v][scope][kind] or {}).get("threshold") for v in self.variants}

    def to_dict(self) -> dict:
        """JSON-ready summary for the API (paths relative to out_dir)."""
        rel = lambda p: Path(p).relative_to(self.out_dir).as_posix()  # noqa: E731
        return {"variants": self.variants, "metrics": self.metrics, "undefined": self.undefined,
                "thresholds": self.thresholds, "mistakes": self.mistakes, "plots": [rel(p) for p in self.plots],
                "errors": [{"entry": n, "message": m} for n, m in self.errors], "has_masks": self.has_masks,
                "n_images": len(self.images), **{k: v for k, v in self.info.items() if k != "variants"}}


def evaluate_samples(detector, samples, variants=VARIANTS, *, progress=None, out_dir=None, workdir=None,
                     false_alarm_rate: float = 0.05, gallery: int = 3, batch_size: int = 8,
                     max_images: int = MAX_IMAGES) -> EvalReport:
    """Evaluate labelled images with `detector`: a mrad_core Detector, or the app's service.Scorer (the model part
    of each batch through the page's GPU calls); anything with `config.image_size`, `require(variant)` and
    `score_batch(pixels, variants) -> {variant: Result}`.

    samples: a LabelledSet, a ZIP or folder path, or [(image, label[, mask])] (see labelled.py; at most
    `max_images` of them are read).
    progress: None or progress(fraction in [0, 1], text), called as images are scored and plots drawn.
    out_dir: where the report goes (default: a new folder under `workdir` / the temp folder); it receives
    metrics.json/csv, scores.csv, table.md, analysis.json, plots/, overlays/ and mrad_evaluation.zip of them all.
    MRADError for an unusable set (labelled.py) or a variant the detector cannot run."""
    if not 0 <= false_alarm_rate <= 1:
        raise MRADError(f"the false-alarm rate must be between 0 and 1, got {false_alarm_rate}")
    if gallery < 0 or batch_size < 1:
        raise MRADError("gallery must be >= 0 and batch_size >= 1")
    variants = tuple(variants)
    if not variants:
        raise MRADError("choose at least one variant")
    for v in variants:
        detector.require(v)
    if isinstance(samples, LabelledSet):
        return _evaluate(detector, samples, variants, progress, out_dir, workdir, false_alarm_rate, gallery,
                         batch_size)
    labelled = read_labelled(samples, workdir, max_images)
    try:
        return _evaluate(detector, labelled, variants, progress, out_dir, workdir, false_alarm_rate, gallery,
                         batch_size)
    finally:  # the copies read from a ZIP or folder: the report holds what it needs
        if labelled.root is not None:
            shutil.rmtree(labelled.root, ignore_errors=True)


def _evaluate(detector, labelled, variants, progress, out_dir, workdir, false_alarm_rate, gallery, batch_size):
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="mrad-eval-", dir=workdir))
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda fraction, text: None)
    n = len(labelled.records)
    say(0.0, f"scoring {n} images with {', '.join(variant_name(v) for v in variants)}")
    analysis = EvalAnalysis(out, variants, false_alarm_rate=false_alarm_rate, gallery=gallery, names=labelled.names)

    last = [0.0]

    done_before = [0]

    def scored(done, total):
        last[0], done_before[0] = 0.9 * done / total, done
        say(last[0], f"scored {done} of {total} images")

    if getattr(detector, "per_image", False) and progress is not None:  # a Scorer: per image, inside each batch
        detector.on_image = lambda k, size: say(0.9 * min(done_before[0] + k, n) / n,
                                                f"encoded image {min(done_before[0] + k, n)} of {n}")

    def on_class(cls, *args):  # evaluate() goes class by class: plots are drawn between the classes' batches
        say(last[0], f"thresholds and plots for {cls}")
        analysis(cls, *args)

    report = evaluate(detector, labelled.records, variants, batch_size=batch_size, workers=0, progress=False,
                      on_class=on_class, on_progress=scored)
    for im in report["images"]:
        im["path"] = labelled.names.get(im["path"], Path(im["path"]).name)
    say(0.95, "pooled plots and the report files")
    content = analysis.finish(report)
    info = {"dataset": "labelled images", "layout": labelled.layout, "variants": list(variants), "n_images": n,
            "n_good": labelled.n_good, "n_defective": labelled.n_bad, "n_masks": labelled.n_masks,
            "false_alarm_rate": false_alarm_rate, "skipped": [{"entry": e, "message": m} for e, m in labelled.errors]}
    written = write_report(report, out, info)
    zip_path = out / ZIP_NAME
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in [*written, out / "analysis.json", *analysis.plots,
                  *sorted((out / "overlays").rglob("*.png"))]:
            z.write(f, f.relative_to(out).as_posix())
    say(1.0, "done")
    return EvalReport(list(variants), _nan_to_none(report["metrics"]), content["undefined"], content["thresholds"],
                      [{"name": im["path"], "cls_name": im["cls_name"], "label": im["label"], "scores": im["scores"]}
                       for im in report["images"]],
                      content["mistakes"], list(analysis.plots), list(labelled.errors), labelled.n_masks > 0, out,
                      zip_path, info)


def report_json(report: EvalReport) -> str:
    """The API's JSON text of a report (NaN-free: undefined values are null)."""
    return json.dumps(_nan_to_none(report.to_dict()), indent=1, default=str)
