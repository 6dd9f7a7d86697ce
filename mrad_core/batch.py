"""Many uploaded files at once, for the app and API: batches read from uploads, folders and ZIP archives (one
error per bad entry, never an exception for a bad file), scored chunk by chunk (each image encoded once) and written
as overlays/*.png, maps/*.npy (518 x 518 float32 smoothed maps), results.csv and a ZIP.

The model part of a chunk (`score_chunk`) takes and returns plain data, so the app can run it as a GPU call of its
own (on ZeroGPU each chunk is a short GPU call) and write the files after it returns.
"""
from __future__ import annotations

import csv
import re
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from . import records, viz
from .backbone import Encoding
from .config import VARIANTS
from .errors import MRADError
from .images import ImageError, load_image, preprocess

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
MAX_ENTRY_BYTES = 256 * 2 ** 20  # one ZIP entry, uncompressed
MAX_ZIP_BYTES = 4 * 2 ** 30  # all entries of one ZIP, uncompressed


@dataclass
class ChunkScores:
    """What the model part of a chunk returns (picklable)."""

    results: dict  # variant -> Result for the chunk's B images
    skipped: dict  # variant -> why it could not run
    levels: dict = field(default_factory=dict)  # variant -> viz.Calibration (calibrated view)


def encode_each(service, det, pixels: torch.Tensor, progress=None):
    """Encode a chunk: in one call, or (with progress(done, total), on a CPU where a chunk takes seconds per image)
    image by image, progress after each. Either way each image is encoded once (the same `service.calls`)."""
    if progress is None or det.device.type != "cpu":
        enc = service.encode(det, pixels)
        if progress is not None:
            progress(len(pixels), len(pixels))
        return enc
    parts = []
    for i in range(len(pixels)):
        parts.append(service.encode(det, pixels[i:i + 1]))
        progress(i + 1, len(pixels))
    return Encoding.cat(parts)


def score_chunk(service, pixels: torch.Tensor, variants, source, bank_id=None, calibrate=False,
                calibrations=None, progress=None) -> ChunkScores:
    """The model part of a batch chunk: (B, 3, S, S) pixels -> every runnable variant's Result (one encoding).
    progress(done, total): images of the chunk encoded so far (None on ZeroGPU: a GPU call's arguments are
    pickled)."""
    det = service.detector(source, bank_id)
    run, skipped = service.runnable(det, variants)
    enc = encode_each(service, det, pixels, progress)
    levels = service.calibrations(det, source, bank_id, run, calibrations, compute=calibrate)
    return ChunkScores({v: service.score(det, enc, v) for v in run}, skipped, levels)


def run_batch(service, paths, variants=VARIANTS, source="env", bank_id=None, view: viz.View = viz.View(),
              image_threshold=0.5, progress=None, score=None, calibrations=None,
              per_image: bool = True) -> "BatchReport":
    """Score uploads/folders/ZIPs chunk by chunk and write the outputs (see the module docstring). `score` runs
    the model part of a chunk (default: `score_chunk` with `service`); bad entries become rows with an error;
    MRADError only when nothing can be scored. progress(fraction, text) after each image encoded (`per_image`;
    False: after each chunk, for model calls that cannot take a callback, as on ZeroGPU)."""
    settings = service.settings
    entries, errors = collect_files(paths, settings.max_batch)
    if not entries:
        raise MRADError("no images to analyse" + "".join(f"; {n}: {m}" for n, m in errors))
    score = score or (lambda *a, **k: score_chunk(service, *a, **k))
    out = Path(tempfile.mkdtemp(dir=service.workdir, prefix="batch-"))
    for d in ("overlays", "maps", "previews"):
        (out / d).mkdir()
    rows, gallery, n, run, skipped = [], [], len(entries), [], {}
    size, chunk = service.config.image_size, settings.batch_size
    for start in range(0, n, chunk):
        if progress:
            progress(start / n, f"scoring images {start + 1}-{min(n, start + chunk)} of {n}")
        def each(done, total, start=start):
            progress(min(start + done, n) / n, f"encoded image {min(start + done, n)} of {n}")
        loaded = []
        for e in entries[start:start + chunk]:
            try:
                loaded.append((e, load_image(e.source(), settings.max_pixels)))
            except ImageError as err:
                errors.append((e.name, str(err).removeprefix("image: ").removeprefix(f"{e.name}: ")))
        if not loaded:
            continue
        pixels = torch.stack([preprocess(li.image, size) for _, li in loaded])
        scored = score(pixels, variants, source, bank_id, calibrate=view.normalisation == "calibrated",
                       calibrations=calibrations, **({"progress": each} if progress and per_image else {}))
        run, skipped = list(scored.results), scored.skipped
        for i, (e, li) in enumerate(loaded):
            row, tiles = _batch_item(out, e.name, li, {v: r[i] for v, r in scored.results.items()}, view,
                                     scored.levels, image_threshold)
            rows.append(row)
            preview = out / "previews" / f"{safe_stem(e.name)}.jpg"
            cv2.imwrite(str(preview), cv2.cvtColor(viz.tile_grid(tiles, ["input"] + [records.name(v) for v in run]),
                                                  cv2.COLOR_RGB2BGR))
            gallery.append((str(preview), " · ".join([e.name] + [  # short verdicts: the caption fits one line
                f"{records.name(v)} {row[v + '_score']:.3f} {'✗' if row[v + '_anomalous'] else '✓'}"
                for v in run])))
    if progress:
        progress(1.0, "writing the CSV and ZIP")
    order = sorted(range(len(rows)), key=lambda k: -rows[k]["mean_score"])
    rows = [rows[k] for k in order] + [{"file": name, "error": msg} for name, msg in errors]
    gallery = [gallery[k] for k in order]
    columns = records.batch_columns(run)
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


def _batch_item(out, name, loaded, results, view, levels, image_threshold):
    """Write one image's overlays and maps; -> (CSV row, [input tile, overlay per variant])."""
    stem = safe_stem(name)
    display = viz.fit(np.asarray(loaded.image))
    tiles, areas = [display], {}
    for v, r in results.items():
        np.save(out / "maps" / f"{stem}_{v}.npy", r.map[0].astype(np.float32))
        overlay, areas[v] = viz.render(display, viz.resize_map(r.map[0], display.shape, np.float32), view,
                                       levels.get(v))
        cv2.imwrite(str(out / "overlays" / f"{stem}_{v}.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        tiles.append(overlay)
    return records.batch_row(name, results, areas, image_threshold, loaded.notes), tiles


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


def collect_files(paths, limit: int = 500) -> tuple:
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
