"""`mrad doctor [--json]`: this machine's table of engines x precisions (speed per image, accuracy against fp32 on
the bundled example images) and what `--precision auto` picks from it. Measured once per CPU, library versions
and backbone (mrad_core/autotune.py), then answered from the cache."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import autotune, runtime
from ..artefacts.errors import HubError
from ..artefacts.resolve import backbone_file
from ..errors import MRADError
from ..settings import settings_of
from .common import add_model_args, config_of, detector_from_args, model_of

COMMAND = "doctor"


def add_parser(sub, name):
    p = sub.add_parser(name, help="measure which engine and precision `auto` should use on this machine",
                       description="Measure each engine x precision this CPU runs natively (fp32; bf16 where the "
                                   "CPU has it; a kept int8 recipe) on a few bundled images, against fp32's maps "
                                   "(bounds: max abs difference <= 1e-2, correlation >= 0.999), and print the "
                                   "table and the fastest pair inside the bounds, which `--precision auto` then "
                                   "uses. The result is cached per CPU, library versions and backbone; a second "
                                   "call answers from the cache.")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help='print {"cpu_class", "choice", "candidates"} as JSON')
    p.add_argument("--force", action="store_true", help="measure again even when a cached result exists")
    p.add_argument("--images", type=int, default=autotune.IMAGES, metavar="N",
                   help="bundled example images per candidate (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                   help="where the decision is cached (default: $MRAD_CACHE_DIR, else ~/.cache/mrad)")
    p.add_argument("--assets", type=Path, default=None, metavar="DIR",
                   help="where the example images are (default: $MRAD_ASSETS, else the bundled assets)")
    p.set_defaults(run=run)


def local_backbone(args, settings):
    """The backbone file when it is on this machine (nothing is downloaded to answer from the cache)."""
    try:
        return backbone_file(args.backbone, model_of(args), settings.artefacts, allow_download=False)
    except HubError:
        return None


def run(args):
    if args.images < 1:
        raise MRADError("--images must be at least 1")
    if args.device not in (None, "cpu"):
        raise MRADError("mrad doctor measures the CPU engines; on CUDA `auto` is fp16 autocast (--device cpu)")
    settings = settings_of(args)
    cache_dir = args.cache_dir or settings.cache_dir
    assets = args.assets or settings.assets
    engine = args.engine  # only this engine's pairs (and the fp32 reference)
    flags, versions = runtime.cpu_flags(), autotune.library_versions()
    model, size = model_of(args), config_of(args).image_size
    # the decision is keyed by the backbone: its file's digest (hashed once, cached), nothing loaded
    path = local_backbone(args, settings)
    digest = autotune.weights_digest(path, cache_dir)
    backbone_id = autotune.backbone_identity(digest, model, size) if path else None
    decision = None
    if backbone_id is not None and not args.force:
        decision = autotune.load_decision(cache_dir, autotune.cache_key(flags, versions, backbone_id))
    if decision is not None:
        decision = {**decision, "from_cache": True}
        if engine is not None:  # the cached table, the choice among this engine's pairs
            decision["choice"] = dict(zip(("engine", "precision"), autotune.select(decision["candidates"], engine)))
    else:
        load_args = argparse.Namespace(**{**vars(args), "engine": "torch", "precision": "fp32", "device": "cpu",
                                          "variant": "tf"})  # PyTorch keeps the vision weights; maps need banks
        det = detector_from_args(load_args)
        digest = digest or autotune.weights_digest(det.backbone.weights_path, cache_dir)
        backbone_id = autotune.backbone_identity(digest, model, size)
        images = autotune.bundled_images(assets, args.images)
        progress = None if args.json else (lambda f, text: print(f"[{f:4.0%}] {text}", file=sys.stderr, flush=True))
        decision = autotune.tune(det, images, cache_dir, backbone_id=backbone_id, flags=flags, versions=versions,
                                 engine=engine, force=args.force,
                                 int8_factory=_int8_factory(det, assets, cache_dir, digest), progress=progress)
    if args.json:
        print(json.dumps(autotune.doctor_json(decision)))
        return 0
    choice = decision["choice"]
    where = "from the cache" if decision.get("from_cache") else f"measured in {decision.get('measure_s', 0):.0f} s"
    print(f"CPU class {decision['cpu_class']}; {len(decision.get('images', []))} bundled images; {where} "
          f"({autotune.cache_path(cache_dir, decision['key'])})")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in decision.get("versions", {}).items() if v))
    print(autotune.rows_table(decision["candidates"], (choice["engine"], choice["precision"])))
    print(f"auto: {choice['engine']} {choice['precision']} (the fastest within max abs <= "
          f"{autotune.BOUND_MAX_ABS:g} and correlation >= {autotune.BOUND_CORR} of PyTorch fp32's maps)")
    return 0


def _int8_factory(det, assets: Path, cache_dir, digest):
    """The kept int8 recipe's engine maker (calibrated on the built-in bank's images, not the measured ones), or
    None (no recipe kept: int8 is not a candidate)."""
    from .. import quantize
    if quantize.KEPT_RECIPE is None or not quantize.nncf_available():
        return None
    calibration = sorted(Path(assets, "bank").glob("*.png"))
    calibration = [p for p in calibration if not p.stem.endswith("_mask")][:quantize.CALIBRATION_IMAGES]
    return quantize.int8_factory(quantize.KEPT_RECIPE, det.pixels(calibration), cache_dir, digest)
