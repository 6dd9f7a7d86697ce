"""`mrad predict`: score images with MRAD-TF / FT / CLIP; write scores.json and one map per image and variant."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..config import VARIANTS
from ..errors import MRADError
from ..images import load_image
from .common import add_model_args, detector_from_args

COMMAND = "predict"


def add_parser(sub, name):
    p = sub.add_parser(name, help="score images and write anomaly maps",
                       description="Encode each image once and score it with the chosen variants. Writes "
                                   "OUT/scores.json ({stem: {variant: {score, image_prob}}}), "
                                   "OUT/<stem>.<variant>.npy (smoothed 518x518 float32 map) and OUT/run.json "
                                   "(how the run was made: engine, precision, device, variants).")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--variant", choices=(*VARIANTS, "all"), default="all", help="default: %(default)s")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_model_args(p)
    p.set_defaults(run=run)


def _stems(paths):
    stems = [Path(p).stem for p in paths]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise MRADError(f"several images share the name {', '.join(dupes)}; outputs are named by image stem")
    return stems


def run(args):
    variants = VARIANTS if args.variant == "all" else (args.variant,)
    stems = _stems(args.images)
    for path in args.images:  # every image must be readable before any work or output
        load_image(path)
    detector = detector_from_args(args)
    for v in variants:
        detector.require(v)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".mrad-predict-", dir=out))
    try:
        scores = {}
        for path, stem in tqdm(list(zip(args.images, stems)), desc="mrad predict", unit="image"):
            encoding = detector.encode([path])
            scores[stem] = {}
            for v in variants:
                result = detector.score(encoding, v)
                scores[stem][v] = {"score": float(result.score[0]), "image_prob": float(result.image_prob[0])}
                np.save(staging / f"{stem}.{v}.npy", result.map[0].astype(np.float32))
        (staging / "scores.json").write_text(json.dumps(scores, indent=1))
        (staging / "run.json").write_text(json.dumps({**detector.run_info, "variants": list(variants)}, indent=1))
        for f in staging.iterdir():  # all done: move the outputs into place
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {len(scores)} image(s) x {len(variants)} variant(s) to {out}")
    return 0
