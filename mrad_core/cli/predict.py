"""`mrad predict`: score images with MRAD-TF / FT / CLIP; write scores.json and one map per image and variant.

Image arguments alone keep the original contract (keyed by stem, every image checked first, outputs written at the
end). Folders, globs and @LIST files make it an archive run (mrad_core/archive.py): streamed through DataLoader
workers, committed batch by batch to OUT/store/, resumable, sharded under torchrun, plus OUT/scores.csv."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import archive
from ..config import VARIANTS
from ..distributed import launched_world, setup, teardown
from ..records import scores_entry
from ..errors import MRADError
from ..explain import bank_note, top_entries
from ..images import load_image
from ..profile import Profile, mismatches, setup_identity
from ..settings import settings_of
from .common import add_model_args, detector_from_args

COMMAND = "predict"


def add_parser(sub, name):
    p = sub.add_parser(name, help="score images, folders or whole archives and write anomaly maps",
                       description="Encode each image once and score it with the chosen variants. With image "
                                   "arguments only: OUT/scores.json ({stem: {variant: {score, image_prob, map_top}}}), "
                                   "OUT/<stem>.<variant>.npy (smoothed 518x518 float32 map) and OUT/run.json "
                                   "(how the run was made: engine, precision, device, variants). With folders "
                                   "(recursive), globs or @LIST files (one path per line): an archive run, keyed by "
                                   "the path relative to its folder: OUT/scores.csv (image, variant, score, "
                                   "image_prob, map_top, anomalous, error), OUT/scores.json, OUT/run.json, "
                                   "OUT/maps/<key>.<variant>.npy (--maps npy) and the crash-safe store OUT/store/ "
                                   "(SQLite, one transaction per batch): the same command again continues where a "
                                   "killed run stopped. Shard it with `torchrun --nproc-per-node N -m mrad_core "
                                   "predict ...`. See docs/archive.md.")
    p.add_argument("images", nargs="+", metavar="SOURCE",
                   help="image files, folders (searched recursively; hidden entries skipped), shell-style globs "
                        "(quote them) or @LIST (a text file naming one image per line)")
    p.add_argument("--variant", choices=(*VARIANTS, "all"), default="all", help="default: %(default)s")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--profile", metavar="JSON", default=None,
                   help="inspection profile from `mrad calibrate`: adds \"anomalous\": true|false per variant "
                        "(score above that variant's image threshold)")
    p.add_argument("--explain", type=int, metavar="K", default=0,
                   help="add per variant \"top_entries\": the K image-bank entries the image retrieval weighted "
                        "most ([{index, id, label, weight}], weight descending; CLIP shows FT's retrieval)")
    p.add_argument("--workers", type=int, default=2,
                   help="archive runs: image-decoding processes (default: %(default)s)")
    p.add_argument("--maps", choices=archive.MAPS, default="npy",
                   help="write each smoothed map as .npy (1 MB per image and variant) or none (default: %(default)s)")
    p.add_argument("--strict", action="store_true",
                   help="archive runs: stop at the first unreadable image instead of recording it as an error row")
    p.add_argument("--overwrite", action="store_true",
                   help="archive runs: discard what OUT holds and start afresh (also when it holds another run)")
    add_model_args(p)
    p.set_defaults(run=run)


def _stems(paths):
    stems = [Path(p).stem for p in paths]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise MRADError(f"several images share the name {', '.join(dupes)}; outputs are named by image stem")
    return stems


def run(args):
    if args.batch_size < 1 or args.workers < 0:
        raise MRADError("--batch-size must be >= 1 and --workers >= 0")
    if archive.explicit_only(args.images) and launched_world() <= 1:
        return run_images(args)
    return run_archive(args)


def run_images(args):
    """Image arguments only, one process: the original contract."""
    variants = VARIANTS if args.variant == "all" else (args.variant,)
    stems = _stems(args.images)
    for path in args.images:  # every image must be readable before any work or output
        load_image(path)
    if args.explain < 0:
        raise MRADError(f"--explain takes the number of top entries (>= 1), not {args.explain}")
    profile = Profile.load(args.profile) if args.profile else None
    detector = detector_from_args(args)
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
                if args.maps == "npy":
                    np.save(staging / f"{stem}.{v}.npy", result.map[0].astype(np.float32))
        (staging / "scores.json").write_text(json.dumps(scores, indent=1))
        (staging / "run.json").write_text(json.dumps({**detector.run_info, "variants": list(variants)}, indent=1))
        for f in staging.iterdir():  # all done: move the outputs into place
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {len(scores)} image(s) x {len(variants)} variant(s) to {out}")
    return 0


def _identity(args, detector, variants, profile_path):
    delivery = getattr(detector, "delivery", None)
    paths = delivery.paths if delivery else {}
    return {"store_version": archive.STORE_VERSION, "inputs": archive.describe_sources(args.images),
            "variants": list(variants), "model": args.model,
            "files": {k: archive.file_identity(paths.get(k)) for k in ("backbone", "heads", "image_bank",
                                                                       "patch_bank")},
            "precision": detector.precision, "engine": detector.engine.name, "maps": args.maps,
            "profile": archive.file_identity(profile_path)}


def run_archive(args):
    """Folders, globs, @LIST (or any input under torchrun): streamed, stored, resumable, sharded."""
    variants = VARIANTS if args.variant == "all" else (args.variant,)
    if args.explain:
        raise MRADError("--explain works with image arguments only, not with folders, globs or lists")
    items = archive.expand(args.images)
    profile = Profile.load(args.profile) if args.profile else None
    shard, args.device = setup(args.device, settings_of(args).dist_timeout_hours)
    ok = False
    try:
        detector = detector_from_args(args)
        for v in variants:
            detector.require(v)
            if profile is not None:
                profile.variant(v)
        if profile is not None and shard.main:
            for line in mismatches(profile, setup_identity(detector)):
                print(f"mrad predict: warning: {line}; its thresholds may not fit", file=sys.stderr)
        out = Path(args.out)
        summary = archive.score_archive(
            detector, items, variants, out, identity=_identity(args, detector, variants, args.profile), shard=shard,
            batch_size=args.batch_size, workers=args.workers, maps=args.maps, profile=profile, strict=args.strict,
            overwrite=args.overwrite)
        if shard.main:
            archive.write_json(out / "run.json", {**detector.run_info, "variants": list(variants),
                                                  "images": summary["images"], "errors": summary["errors"],
                                                  "processes": shard.world, "maps": args.maps})
            resumed = f", {summary['skipped']} already scored before" if summary["skipped"] else ""
            print(f"wrote {summary['images']} image(s) x {len(variants)} variant(s) to {out} "
                  f"({summary['errors']} unreadable{resumed})")
        ok = True
    finally:
        teardown(shard, ok)
    return 0
