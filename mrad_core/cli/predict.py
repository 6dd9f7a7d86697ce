"""`mrad predict`: score images with MRAD-TF / FT / CLIP; write scores.json and one map per image and variant."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..config import VARIANTS
from ..records import scores_entry
from ..errors import MRADError
from ..explain import bank_note, top_entries
from ..images import load_image
from ..profile import Profile, mismatches, setup_identity
from .common import add_model_args, detector_from_args

COMMAND = "predict"


def add_parser(sub, name):
    p = sub.add_parser(name, help="score images and write anomaly maps",
                       description="Encode each image once and score it with the chosen variants. Writes "
                                   "OUT/scores.json ({stem: {variant: {score, image_prob, map_top}}}), "
                                   "OUT/<stem>.<variant>.npy (smoothed 518x518 float32 map) and OUT/run.json "
                                   "(how the run was made: engine, precision, device, variants).")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--variant", choices=(*VARIANTS, "all"), default="all", help="default: %(default)s")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--profile", metavar="JSON", default=None,
                   help="inspection profile from `mrad calibrate`: adds \"anomalous\": true|false per variant "
                        "(score above that variant's image threshold)")
    p.add_argument("--explain", type=int, metavar="K", default=0,
                   help="add per variant \"top_entries\": the K image-bank entries the image retrieval weighted "
                        "most ([{index, id, label, weight}], weight descending; CLIP shows FT's retrieval)")
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
    if args.explain < 0:
        raise MRADError(f"--explain takes the number of top entries (>= 1), not {args.explain}")
    profile = Profile.load(args.profile) if args.profile else None
    detector = detector_from_args(args, openvino_default=True)
    for v in variants:
        detector.require(v)
        if profile is not None:
            profile.variant(v)
    if profile is not None:
        for line in mismatches(profile, setup_identity(detector)):
            print(f"mrad predict: warning: {line}; its thresholds may not fit", file=sys.stderr)
    if args.explain and bank_note(detector.image_bank):
        print(f"note: {bank_note(detector.image_bank)}")
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
                scores[stem][v] = scores_entry(result)
                if profile is not None:
                    scores[stem][v]["anomalous"] = bool(profile.is_anomalous(v, result.score[0]))
                if args.explain:
                    scores[stem][v]["top_entries"] = top_entries(detector, encoding, v, args.explain)[0]
                np.save(staging / f"{stem}.{v}.npy", result.map[0].astype(np.float32))
        (staging / "scores.json").write_text(json.dumps(scores, indent=1))
        (staging / "run.json").write_text(json.dumps({**detector.run_info, "variants": list(variants)}, indent=1))
        for f in staging.iterdir():  # all done: move the outputs into place
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {len(scores)} image(s) x {len(variants)} variant(s) to {out}")
    return 0
