"""`mrad doctor [--json]`: this machine's table of engines x precisions (speed per image, accuracy against fp32 on
the bundled example images) and what `--precision auto` picks from it. Measured once per CPU, library versions
and backbone (mrad_core/autotune.py), then answered from the cache."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from .. import autotune
from ..config import DEFAULT
from ..errors import MRADError
from .common import add_model_args, detector_from_args

COMMAND = "doctor"


def add_parser(sub, name):
    p = sub.add_parser(name, help="measure which engine and precision `auto` should use on this machine",
                       description="Measure each engine x precision this CPU runs natively (fp32; bf16 where the "
                                   "CPU has it; a kept int8 recipe) on a few bundled images, against fp32's maps "
                                   "(bounds: max abs difference <= 1e-2, correlation >= 0.999), and print the "
                                   "table and the fastest pair inside the bounds, which `--precision auto` then "
                                   "uses. The result is cached per CPU, library versions and backbone; a second "
                                   "call answers from the cache.")
    add_model_args(p, precision_default="fp32")
    p.add_argument("--json", action="store_true", help='print {"cpu_class", "choice", "candidates"} as JSON')
    p.add_argument("--force", action="store_true", help="measure again even when a cached result exists")
    p.add_argument("--images", type=int, default=autotune.IMAGES, metavar="N",
                   help="bundled example images per candidate (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                   help="where the decision is cached (default: the app's MRAD_CACHE_DIR, else ~/.cache/mrad)")
    p.add_argument("--assets", type=Path, default=None, metavar="DIR",
                   help="where the example images are (default: the app's MRAD_ASSETS)")
    p.set_defaults(run=run)


def _settings():
    from ..settings import Settings
    return Settings.from_env()


def cache_dir_from(args, settings) -> Path:
    if args.cache_dir is not None:
        return args.cache_dir
    configured = getattr(settings, "cache_dir", None)  # Settings.cache_dir once the lead adds it
    if configured:
        return Path(configured)
    from ..engines import cache_root  # today: $MRAD_CACHE_DIR or ~/.cache/mrad
    return cache_root()


def run(args):
    if args.images < 1:
        raise MRADError("--images must be at least 1")
    if args.device not in (None, "cpu"):
        raise MRADError("mrad doctor measures the CPU engines; on CUDA `auto` is fp16 autocast (--device cpu)")
    settings = _settings()
    cache_dir = cache_dir_from(args, settings)
    engine = args.engine  # only this engine's pairs (and the fp32 reference)
    # the decision is keyed by the backbone: find its file without loading anything, and answer from the cache
    from ..loading import resolve_artefacts
    resolution = resolve_artefacts(args.backbone, model=args.model, download=False, strict_backbone=False)
    backbone_id = autotune.backbone_identity(resolution.paths.get("backbone"), args.model,
                                             replace(DEFAULT, model_name=args.model).image_size)
    decision = None if args.force else autotune.load_decision(
        cache_dir, autotune.cache_key(autotune.cpu_flags(), autotune.library_versions(), backbone_id))
    if decision is not None:
        decision = {**decision, "from_cache": True}
        if engine is not None:  # the cached table, the choice among this engine's pairs
            decision["choice"] = dict(zip(("engine", "precision"), autotune.select(decision["candidates"], engine)))
    else:
        load_args = argparse.Namespace(**{**vars(args), "engine": "torch", "precision": "fp32", "device": "cpu",
                                          "variant": "tf"})  # PyTorch keeps the vision weights; maps need banks
        det = detector_from_args(load_args)
        images = autotune.bundled_images(args.assets or settings.assets, args.images)
        progress = None if args.json else (lambda f, text: print(f"[{f:4.0%}] {text}", file=sys.stderr, flush=True))
        decision = autotune.tune(det, images, cache_dir, backbone_id=backbone_id, engine=engine, force=args.force,
                                 int8_factory=_int8_factory(det, args.assets or settings.assets, cache_dir),
                                 progress=progress)
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


def _int8_factory(det, assets: Path, cache_dir):
    """The kept int8 recipe's engine maker (calibrated on the built-in bank's images, not the measured ones), or
    None (no recipe kept: int8 is not a candidate)."""
    from .. import quantize
    if quantize.KEPT_RECIPE is None or not quantize.nncf_available():
        return None
    calibration = sorted(Path(assets, "bank").glob("*.png"))
    calibration = [p for p in calibration if not p.stem.endswith("_mask")][:quantize.CALIBRATION_IMAGES]
    return quantize.int8_factory(quantize.KEPT_RECIPE, det.pixels(calibration), cache_dir)
