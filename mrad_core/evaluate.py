"""Evaluating MRAD-TF / FT / CLIP on a dataset split: per class and mean image AUROC, image AP, pixel AUROC and
AUPRO (metrics.py, as the reference), a paper-style table, CSV and JSON, optional overlays.

Each image is encoded once and scored by every requested variant from that encoding. Classes are evaluated one
after the other (rank 0 holds one class's maps at a time: variants x 1 MB per image at 518 px); within a class,
batches are sharded across processes (distributed.py) and gathered in item order, so the metrics are identical to
one process.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .datasets import RecordDataset
from .distributed import Shard, rounds, run_rounds
from .files import atomic, write_text
from .images import load_image
from .metrics import METRICS, TITLES, class_metrics, mean_metrics


def group_by_class(records) -> dict:
    """{class name: [record index]} in order of first appearance."""
    groups = {}
    for i, r in enumerate(records):
        groups.setdefault(r.cls_name, []).append(i)
    return groups


def _spec(n_variants: int, size: int) -> dict:
    return {"index": ((), torch.int64), "label": ((), torch.int64), "score": ((n_variants,), torch.float32),
            "map": ((n_variants, size, size), torch.float32), "mask": ((size, size), torch.uint8)}


def _outputs(detector, variants, batch) -> dict:
    """One batch -> per image: scores (V,) and smoothed maps (V, S, S) of every variant, from ONE encoding."""
    out = detector.score_batch(batch["pixels"], variants)
    results = [out[v] for v in variants]
    return {"index": batch["index"], "label": batch["label"],
            "score": torch.from_numpy(np.stack([r.score for r in results], 1)).float(),
            "map": torch.from_numpy(np.stack([r.map for r in results], 1)).float(),
            "mask": (batch["mask"] > 0.5).to(torch.uint8)}


def overlay(image_path, amap: np.ndarray, mask: np.ndarray) -> Image.Image:
    """Image stretched to the map's size with the map (0..1, jet) blended on it and the ground truth outlined."""
    import cv2

    size = amap.shape[0]
    img = np.asarray(load_image(image_path).image.resize((size, size), Image.BICUBIC), dtype=np.float32)
    heat = cv2.applyColorMap((np.clip(amap, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    out = np.ascontiguousarray((0.5 * img + 0.5 * heat).astype(np.uint8))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 2)
    return Image.fromarray(out)


def evaluate(detector, records, variants, *, batch_size: int = 8, workers: int = 0, shard: Shard = Shard(),
             progress: bool = True, overlay_dir=None, overlays: int = 0, on_class=None, on_progress=None):
    """detector: anything with `config.image_size`, `require(variant)` and `score_batch(pixels, variants) ->
    {variant: Result}` (a Detector, or the app's service.Scorer that runs the model part through its GPU calls).
    -> (rank 0) {"metrics": {variant: {"classes": {cls: {metric: value, n_images, n_anomalous}},
    "mean": {metric: value}}}, "images": [{"path", "cls_name", "label", "scores": {variant: score}}]};
    None on the other ranks. Metric values are fractions (NaN where undefined).

    Rank 0 calls `on_class(cls, records, labels (n,), scores (n, V), masks (n, S, S) uint8, maps (n, V, S, S))`
    once per class while its maps are in memory (plots, galleries), and `on_progress(done, total)` after each
    batch."""
    for v in variants:
        detector.require(v)
    size = detector.config.image_size
    sp = _spec(len(variants), size)
    per_class = {v: {} for v in variants}
    images, done = [], 0
    bar = tqdm(total=len(records), unit="image", desc="mrad eval", disable=not (progress and shard.main))
    for cls, members in group_by_class(records).items():
        subset = [records[i] for i in members]
        n = len(subset)
        labels, scores = np.zeros(n, np.int64), np.zeros((n, len(variants)), np.float32)
        maps = np.zeros((n, len(variants), size, size), np.float32) if shard.main else None
        masks = np.zeros((n, size, size), np.uint8) if shard.main else None
        plan = rounds(0, n, batch_size, shard)
        for rows in run_rounds(RecordDataset(subset, size), plan, lambda b: _outputs(detector, variants, b), sp,
                               shard, workers):
            if rows is None:
                continue
            idx = rows["index"].numpy()
            labels[idx], scores[idx] = rows["label"].numpy(), rows["score"].numpy()
            maps[idx], masks[idx] = rows["map"].numpy(), rows["mask"].numpy()
            bar.update(len(idx))
            done += len(idx)
            if on_progress is not None:
                on_progress(done, len(records))
        if not shard.main:
            continue
        for j, v in enumerate(variants):
            m = class_metrics(labels, scores[:, j], masks, maps[:, j])
            per_class[v][cls] = {**m, "n_images": n, "n_anomalous": int(labels.sum())}
        if on_class is not None:
            on_class(cls, subset, labels, scores, masks, maps)
        for i, r in enumerate(subset):
            images.append({"path": r.image, "cls_name": cls, "label": int(labels[i]),
                           "scores": {v: float(scores[i, j]) for j, v in enumerate(variants)}})
            if i < overlays and overlay_dir is not None:
                for j, v in enumerate(variants):
                    folder = Path(overlay_dir) / v / cls
                    folder.mkdir(parents=True, exist_ok=True)
                    overlay(r.image, maps[i, j], masks[i]).save(folder / f"{i:04d}_{Path(r.image).stem}.png")
        del maps, masks
    bar.close()
    if not shard.main:
        return None
    return {"metrics": {v: {"classes": per_class[v], "mean": mean_metrics(per_class[v])} for v in variants},
            "images": images}


def _pct(x) -> str:
    """Fraction -> percent with one decimal; "-" when undefined; a tiny negative value shows as 0.0, not -0.0."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{round(100 * x, 1) + 0.0:.1f}"


def _fixed(x) -> str:
    """Fraction -> 6 decimals for the CSV, without a negative zero."""
    return f"{round(float(x), 6) + 0.0:.6f}"


def format_table(variant_metrics: dict, title: str) -> str:
    """Paper-style table: one row per class and the mean, values in % with one decimal ("-" = undefined)."""
    rows = [[cls, *(_pct(m[k]) for k in METRICS)] for cls, m in variant_metrics["classes"].items()]
    rows.append(["mean", *(_pct(variant_metrics["mean"][k]) for k in METRICS)])
    head = ["class", *(TITLES[k] for k in METRICS)]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                       for i, (c, w) in enumerate(zip(r, widths))) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([title, line(head), sep, *(line(r) for r in rows[:-1]), sep, line(rows[-1])])


def _nan_to_none(x):
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


def write_report(report: dict, out_dir, info: dict) -> list[Path]:
    """OUT/metrics.json (info + metrics, NaN as null), OUT/metrics.csv (one row per variant and class, and the
    mean), OUT/scores.csv (per image) and OUT/table.md (the printed tables)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = report["metrics"]
    write_text(out / "metrics.json", json.dumps(_nan_to_none({**info, "metrics": metrics}), indent=1) + "\n")
    rows = [["variant", "class", "n_images", "n_anomalous", *METRICS]]
    for v, vm in metrics.items():
        for cls, m in vm["classes"].items():
            rows.append([v, cls, m["n_images"], m["n_anomalous"], *(_fixed(m[k]) for k in METRICS)])
        rows.append([v, "mean", "", "", *(_fixed(vm['mean'][k]) for k in METRICS)])
    variants = list(metrics)
    srows = [["path", "class", "label", *(f"score_{v}" for v in variants)]]
    srows += [[im["path"], im["cls_name"], im["label"], *(f"{im['scores'][v]:.6f}" for v in variants)]
              for im in report["images"]]
    paths = []
    for name, table in (("metrics.csv", rows), ("scores.csv", srows)):
        with atomic(out / name) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(table)
        paths.append(out / name)
    tables = "\n\n".join(format_table(vm, f"MRAD-{v.upper()} on {info.get('dataset', '?')}")
                         for v, vm in metrics.items())
    write_text(out / "table.md", tables + "\n")
    return [out / "metrics.json", *paths, out / "table.md"]
