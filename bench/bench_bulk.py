#!/usr/bin/env python
"""Bulk scoring rate (`mrad predict` over a folder: mrad_core/archive.py) next to the single-image rate.

    python bench/bench_bulk.py --tiny [--images 48]                 # the tiny test model (quick, CPU)
    python bench/bench_bulk.py [--device cuda] [--precision fp16]   # the full-size parity fixture (../shared)

Single: one image at a time, decoded then encoded then scored (today's `mrad predict IMAGE...` loop).
Bulk: archive.score_archive over a folder of the same images (decoding in DataLoader workers while the model
encodes, results committed per batch to the SQLite store, --maps none), at batch sizes 1, 4, 8 and 1 vs 2 workers,
for one variant (tf) and all three. Prints images/s and the ratio bulk / single; the issue's bar: on CPU every
bulk rate >= the single-image rate; on a GPU >= 200 images/s for MRAD-TF at fp16.
`measure(detector, image_paths)` is what bench/bench.py calls with its own detector.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mrad_core import archive  # noqa: E402
from mrad_core.config import VARIANTS  # noqa: E402
from mrad_core.runtime import synchronize  # noqa: E402

BATCHES = (1, 4, 8)
WORKERS = (1, 2)


def single_rate(detector, paths, variants) -> float:
    """Images/s scoring one image at a time (decode, encode, score each variant)."""
    detector.score(detector.encode([paths[0]]), variants[0])  # warm-up
    synchronize(detector.device)
    t0 = time.perf_counter()
    for p in paths:
        enc = detector.encode([p])
        for v in variants:
            detector.score(enc, v)
    synchronize(detector.device)
    return len(paths) / (time.perf_counter() - t0)


def bulk_rate(detector, folder, variants, batch_size, workers) -> float:
    """Images/s of archive.score_archive over `folder` (a fresh store each time; maps not written)."""
    items = archive.expand([folder])
    out = Path(tempfile.mkdtemp(prefix="mrad-bench-bulk-"))
    old = detector.batch_size
    detector.batch_size = batch_size
    try:
        t0 = time.perf_counter()
        archive.score_archive(detector, items, variants, out, identity={"bench": True}, batch_size=batch_size,
                              workers=workers, maps="none", progress=False)
        synchronize(detector.device)
        return len(items) / (time.perf_counter() - t0)
    finally:
        detector.batch_size = old
        shutil.rmtree(out, ignore_errors=True)


def measure(detector, image_paths, n_images: int = 32) -> dict:
    """{"single": {variants: rate}, "bulk": [{variants, batch, workers, rate, ratio}]}: `n_images` copies of
    `image_paths` (cycled) in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="mrad-bench-images-"))
    try:
        paths = []
        for i in range(n_images):
            src = Path(image_paths[i % len(image_paths)])
            dst = folder / f"{i:05d}{src.suffix}"
            shutil.copyfile(src, dst)
            paths.append(str(dst))
        sets = {"tf": ("tf",), "all": tuple(v for v in VARIANTS if v in detector.variants)}
        result = {"n_images": n_images, "run_info": detector.run_info, "single": {}, "bulk": []}
        for name, variants in sets.items():
            single = single_rate(detector, paths, variants)
            result["single"][name] = single
            for batch in BATCHES:
                for workers in WORKERS:
                    rate = bulk_rate(detector, folder, variants, batch, workers)
                    result["bulk"].append({"variants": name, "batch": batch, "workers": workers, "rate": rate,
                                           "ratio": rate / single})
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def report(result: dict) -> str:
    info = result["run_info"]
    lines = [f"bulk scoring, {result['n_images']} images, {info['engine']} {info['precision']} on {info['device']}",
             f"{'variants':<9}{'batch':>6}{'workers':>8}{'images/s':>10}{'x single':>10}"]
    for name, single in result["single"].items():
        lines.append(f"{name:<9}{'single':>6}{'':>8}{single:>10.2f}{1.0:>10.2f}")
        for b in result["bulk"]:
            if b["variants"] == name:
                lines.append(f"{'':<9}{b['batch']:>6}{b['workers']:>8}{b['rate']:>10.2f}{b['ratio']:>10.2f}")
    return "\n".join(lines)


def _tiny_detector(device, precision, engine):
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import make_tiny_files

    from mrad_core.loading import load_detector
    files = make_tiny_files(Path(tempfile.mkdtemp(prefix="mrad-bench-tiny-")))
    det = load_detector(files["backbone"], files["heads"], files["image_bank"], files["patch_bank"],
                        model=files["model"], device=device, precision=precision, engine=engine)
    return det, files["images"]


def _parity_detector(shared: Path, device, precision, engine):
    from bench import fixture_backbone  # the full-size deterministic backbone of bench.py

    from mrad_core.loading import load_detector
    parity = shared / "parity"
    det = load_detector(fixture_backbone(shared), parity / "heads_official.pth", parity / "cache_model_fixture.pt",
                        parity / "cache_patch_model_fixture.pt", device=device, precision=precision, engine=engine)
    return det, sorted(str(p) for p in parity.glob("query_*.png"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the tiny test model instead of the full-size fixture")
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("MRAD_SHARED", ROOT.parent / "shared")))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--engine", default=None)
    ap.add_argument("--images", type=int, default=32, help="images per measurement (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    make = _tiny_detector if args.tiny else (lambda *a: _parity_detector(args.shared, *a))
    detector, images = make(args.device, args.precision, args.engine)
    result = measure(detector, images, args.images)
    print(report(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
