"""`mrad calibrate`: thresholds from known-good images -> an inspection profile (JSON) for `mrad predict --profile`."""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from ..config import VARIANTS
from ..errors import MRADError
from ..images import load_image
from ..profile import DEFAULT_RATE, calibrate
from .common import add_model_args, detector_from_args

COMMAND = "calibrate"


def add_parser(sub, name):
    p = sub.add_parser(name, help="set thresholds from known-good images (an inspection profile)",
                       description="Score 5-50 known-good images of one product with each variant and write a "
                                   "profile: image threshold = quantile(normal scores, 1 - rate), pixel threshold = "
                                   "the same over the normal maps' pixels, and the normal scores (in the order of "
                                   "the images given). `mrad predict --profile` then flags scores above the image "
                                   "threshold.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="known-good (normal) images")
    p.add_argument("--out", required=True, metavar="JSON", help="profile file to write")
    p.add_argument("--rate", type=float, default=DEFAULT_RATE,
                   help="share of normal images allowed above the threshold (default: %(default)s)")
    p.add_argument("--name", default=None, help="profile name (default: the --out file's stem)")
    p.add_argument("--variant", choices=(*VARIANTS, "all"), default="all", help="default: %(default)s")
    add_model_args(p)
    p.set_defaults(run=run)


def run(args):
    if not 0 < args.rate < 1:
        raise MRADError(f"--rate must be between 0 and 1 (e.g. 0.01 for 1 %), not {args.rate}")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise MRADError(f"--out {out}: folder {out.parent} does not exist")
    for path in args.images:  # every image must be readable before any work
        load_image(path)
    detector = detector_from_args(args)
    variants = VARIANTS if args.variant == "all" else (args.variant,)
    if len(args.images) < 5:
        print(f"note: {len(args.images)} image(s); 5-50 known-good images give steadier thresholds")
    with tqdm(total=len(args.images), desc="mrad calibrate", unit="image") as bar:
        profile = calibrate(detector, args.images, variants, args.rate, args.name or out.stem,
                            progress=lambda n: bar.update(n - bar.n))
    profile.save(out)
    for v, p in profile.variants.items():
        print(f"{v}: image threshold {p.image_threshold:.4f}, pixel threshold {p.pixel_threshold:.4f} "
              f"(median pixel {p.pixel_median:.4f})")
    print(f"wrote {out}")
    return 0
