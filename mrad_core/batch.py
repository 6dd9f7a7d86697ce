"""Many uploaded files at once, for the app and API: batches read from uploads, folders and ZIP archives (one
error per bad entry, never an exception for a bad file) and scored chunk by chunk with a Service (each image
encoded once), written as overlays/*.png, maps/*.npy (518 x 518 float32 smoothed maps), results.csv and a ZIP;
and custom memory banks built from uploaded normal (and defect + mask) images.
"""
from __future__ import annotations

import csv
import os
import re
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from . import viz
from .config import VARIANTS
from .errors import MRADError
from .images import ImageError, load_image, preprocess
from .service import NAMES

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
MAX_BATCH = int(os.environ.get("MRAD_MAX_BATCH", 500))
MAX_ENTRY_BYTES = 256 * 2 ** 20  # one ZIP entry, uncompressed
MAX_ZIP_BYTES = 4 * 2 ** 30  # all entries of one ZIP, uncompressed


def run_batch(service, paths, variants=VARIANTS, source="env", bank_id=None, view: viz.View = viz.View(),
              image_threshold=0.5, progress=None) -> "BatchReport":
    """Score uploads/folders/ZIPs with `service` chunk by chunk (each image encoded once); write overlays/*.png,
    maps/*.npy (518 x 518 float32 smoothed maps), results.csv and results.zip. Bad entries become rows
    with an error; MRADError only when nothing can be scored."""
    entries, errors = collect_files(paths)
    if not entries:
        raise MRADError("no images to analyse" + "".join(f"; {n}: {m}" for n, m in errors))
    det = service.detector(source, bank_id)
    run, skipped = service.runnable(det, variants)
    key = service.key(source, bank_id)
    service.calibrate(det, key, run, wait=view.normalisation == "calibrated")
    calib = {v: service.calibration(key, v) for v in run}
    out = Path(tempfile.mkdtemp(dir=service.workdir, prefix="batch-"))
    for d in ("overlays", "maps", "previews"):
        (out / d).mkdir()
    rows, gallery, n = [], [], len(entries)
    for start in range(0, n, service.batch_size):
        if progress:
            progress(start / n, f"encoding images {start + 1}-{min(n, start + service.batch_size)} of {n}")
        loaded = []
        for e in entries[start:start + service.batch_size]:
            try:
                loaded.append((e, load_image(e.source())))
            except ImageError as err:
                errors.append((e.name, str(err).removeprefix("image: ").removeprefix(f"{e.name}: ")))
        if not loaded:
            continue
        size = service.config.image_size
        enc = service.encode(det, torch.stack([preprocess(li.image, size) for _, li in loaded]))
        results = {v: service.score(det, enc, v) for v in run}
        for i, (e, li) in enumerate(loaded):
            row, tiles = _batch_item(out, e.name, li, {v: r[i] for v, r in results.items()}, view, calib,
                                     image_threshold)
            rows.append(row)
            preview = out / "previews" / f"{safe_stem(e.name)}.jpg"
            cv2.imwrite(str(preview), cv2.cvtColor(viz.tile_grid(tiles, ["input"] + [NAMES[v] for v in run]),
                                                  cv2.COLOR_RGB2BGR))
            gallery.append((str(preview), " · ".join([e.name] + [
                f"{NAMES[v]} {row[v + '_score']:.3f} {'ANOMALOUS' if row[v + '_anomalous'] else 'normal'}"
                for v in run])))
    if progress:
        progress(1.0, "writing the CSV and ZIP")
    order = sorted(range(len(rows)), key=lambda k: -rows[k]["mean_score"])
    rows = [rows[k] for k in order] + [{"file": name, "error": msg} for name, msg in errors]
    gallery = [gallery[k] for k in order]
    columns = ["file", "mean_score"] + [f"{v}_{c}" for v in run for c in ROW_FIELDS] + ["notes", "error"]
    csv_path = out / "results.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    zip_path = out / "mrad_results.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(csv_path, "results.csv")
        for d in ("overlays", "maps"):
            for f in sorted((out / d).iterdir()):
                z.write(f, f"{d}/{f.name}")
    return BatchReport(rows, columns, gallery, csv_path, zip_path, errors, run, skipped)


ROW_FIELDS = ("score", "anomalous", "image_prob", "area_percent")


def build_bank(service, normal, defects=(), name="my bank") -> tuple:
    """Build a custom bank with `service` -> (bank id, notes). `normal`: image paths; `defects`: defect images
    together with their masks, paired by name (x.png + x_mask.png). Without defect images the synthetic defects
    of assets/bank give the anomalous memories (retrieval needs both kinds)."""
    masks = {Path(p).stem[:-5]: p for p in defects if Path(p).stem.endswith("_mask")}
    notes, images, image_masks, ids = [], [], [], []
    todo = [(p, False) for p in normal] + [(p, True) for p in defects if not Path(p).stem.endswith("_mask")]
    for src, is_defect in todo:
        if is_defect and Path(src).stem not in masks:
            notes.append(f"{Path(src).name}: skipped, a defect image needs its mask ({Path(src).stem}_mask.png)")
            continue
        try:
            images.append(load_image(src).image)
        except ImageError as e:
            notes.append(str(e))
            continue
        image_masks.append(masks[Path(src).stem] if is_defect else None)
        ids.append(Path(src).stem)
    if not any(m is None for m in image_masks):
        raise MRADError("no usable normal image: " + ("; ".join(notes) or "upload at least one"))
    if all(m is None for m in image_masks):
        synth = sorted((service.assets / "bank").glob("*_mask.png"))
        images += [load_image(p.with_name(p.name.replace("_mask", ""))).image for p in synth]
        image_masks += synth
        ids += [p.stem.replace("_mask", "") for p in synth]
        notes.append(f"no defect images given: the {len(synth)} synthetic defects of assets/bank were added "
                     "as the anomalous memories (MRAD retrieves between normal and anomalous memories)")
    service.set_status(f"building the bank '{name}' from {len(images)} images …")
    banks = service.make_banks(service.backbone(), images, image_masks, ids, source=name)
    return service.add_bank(banks, name), notes


def safe_stem(name) -> str:
    """File stem usable as an output file name."""
    return re.sub(r"[^\w.-]+", "_", Path(name).stem) or "image"


@dataclass
class BatchReport:
    rows: list  # dicts: scored images by mean score (desc), then one row per error
    columns: list
    gallery: list  # [(preview grid image path, caption)] in row order
    csv: Path
    zip: Path
    errors: list  # [(name, message)]
    variants: list
    skipped: dict


def _batch_item(out, name, loaded, results, view, calib, image_threshold):
    """Write one image's overlays and maps; -> (CSV row, [input tile, overlay per variant])."""
    stem = safe_stem(name)
    display = viz.fit(np.asarray(loaded.image))
    row, tiles = {"file": name, "notes": "; ".join(loaded.notes)}, [display]
    for v, r in results.items():
        np.save(out / "maps" / f"{stem}_{v}.npy", r.map[0].astype(np.float32))
        overlay, area = viz.render(display, viz.resize_map(r.map[0], display.shape, np.float32), view, calib[v])
        cv2.imwrite(str(out / "overlays" / f"{stem}_{v}.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        tiles.append(overlay)
        row.update({f"{v}_score": round(float(r.score[0]), 5), f"{v}_anomalous": bool(r.score[0] >= image_threshold),
                    f"{v}_image_prob": round(float(r.image_prob[0]), 5), f"{v}_area_percent": round(area, 3)})
    row["mean_score"] = round(float(np.mean([row[f"{v}_score"] for v in results])), 5)
    return row, tiles


@dataclass
class Entry:
    """One image of a batch: a file, or a member of a ZIP archive (read only when its turn comes)."""

    name: str
    path: str
    member: str | None = None

    def source(self):
        """Path or bytes for load_image; ImageError when the ZIP member cannot be read."""
        if self.member is None:
            return self.path
        try:
            with zipfile.ZipFile(self.path) as archive:
                return archive.read(self.member)
        except Exception as e:  # CRC errors, encryption, unsupported compression, truncated archive
            raise ImageError(f"unreadable ZIP entry {self.member} ({type(e).__name__}: {e})") from e


def collect_files(paths, limit: int = MAX_BATCH) -> tuple:
    """Uploaded files, folder contents and ZIP archives -> ([Entry], [(name, error)]). Never raises for a bad
    file or entry: each gets its own error. Names are made unique."""
    entries, errors = [], []
    for path in paths or []:
        path = Path(path)
        if path.suffix.lower() == ".zip":
            _read_zip(path, entries, errors)
        elif path.suffix.lower() in IMAGE_EXTS or path.suffix == "":
            entries.append(Entry(path.name, str(path)))
        else:
            errors.append((path.name, f"skipped: {path.suffix} is not an image type ({', '.join(sorted(IMAGE_EXTS))})"))
    if len(entries) > limit:
        errors.append((f"{len(entries) - limit} more", f"skipped: a batch takes at most {limit} images"))
        entries = entries[:limit]
    seen = Counter()  # unique stems: outputs are named by stem
    for e in entries:
        stem = safe_stem(e.name)
        seen[stem] += 1
        if seen[stem] > 1:
            e.name = f"{stem}_{seen[stem]}{Path(e.name).suffix}"
    return entries, errors


def _read_zip(path: Path, entries, errors):
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        errors.append((path.name, f"not a readable ZIP archive ({e})"))
        return
    total = 0
    with archive:
        for info in archive.infolist():
            name = info.filename
            base = Path(name).name
            if info.is_dir() or name.startswith("__MACOSX/") or base.startswith("."):
                continue
            where = f"{path.name}:{name}"
            if Path(base).suffix.lower() not in IMAGE_EXTS:
                errors.append((where, "skipped: not an image file"))
                continue
            total += info.file_size
            if info.file_size > MAX_ENTRY_BYTES or total > MAX_ZIP_BYTES:
                errors.append((where, "skipped: too large when uncompressed"))
                continue
            entries.append(Entry(base, str(path), name))
