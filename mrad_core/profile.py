"""Inspection profiles: thresholds calibrated on a user's own known-good images, saved as versioned JSON.

Per variant, from the scores and maps of the normal images (5–50 of one product):
    image_threshold = numpy.quantile(normal scores, 1 - rate)        at most `rate` of normal images lie above it
    pixel_threshold = numpy.quantile(all normal map pixels, 1 - rate)
    pixel_median    = numpy.median(all normal map pixels)             a typical normal pixel
The calibrated map scale (`calibrated_map`) is the same for every variant: 0 = pixel_median, 1 = pixel_threshold.
An image is anomalous when its score reaches the image threshold (score >= threshold: records.is_anomalous).

File (`Profile.save` / `Profile.load`, format "mrad-profile/1"):
    {"format", "name", "rate", "created", "images": [names], "bank": {"image": ID, "patch": ID}, "heads": ID|null,
     "variants": {variant: {"image_threshold", "pixel_threshold", "pixel_median", "normal_scores": [...]}}}
    ID = {"name", "sha256", "digest_of": "file" (hub.file_sha256 of the file) | "tensors" (of an in-memory bank's
    keys and values, or heads' state)}
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .config import VARIANTS
from .errors import MRADError, first_line
from .files import write_text
from .records import is_anomalous

PROFILE_FORMAT = "mrad-profile/1"
DEFAULT_RATE = 0.01


class ProfileError(MRADError):
    """A profile file that is missing, unreadable, of another version or malformed."""


@dataclass
class VariantProfile:
    image_threshold: float
    pixel_threshold: float
    pixel_median: float
    normal_scores: list  # one per calibration image, in the order given


@dataclass
class Profile:
    name: str
    rate: float
    variants: dict  # {variant: VariantProfile}
    bank: dict = field(default_factory=dict)  # {"image": ID, "patch": ID}
    heads: dict | None = None
    images: list = field(default_factory=list)
    created: str = ""
    format: str = PROFILE_FORMAT

    def variant(self, v: str) -> VariantProfile:
        if v not in self.variants:
            raise ProfileError(f"profile {self.name!r} has no thresholds for MRAD-{v.upper()} (it has "
                               f"{', '.join(self.variants)}); calibrate again with that variant")
        return self.variants[v]

    def is_anomalous(self, v: str, score):
        """score(s) -> bool(s) by the one verdict rule (records.is_anomalous) at the variant's image threshold."""
        return is_anomalous(score, self.variant(v).image_threshold)

    def calibrated_map(self, v: str, anomaly_map: np.ndarray) -> np.ndarray:
        """A variant's map (any shape) on the calibrated scale: 0 = typical normal pixel, 1 = pixel threshold.
        Not clipped (values above 1 are above the threshold)."""
        p = self.variant(v)
        return ((np.asarray(anomaly_map, dtype=np.float32) - p.pixel_median)
                / max(p.pixel_threshold - p.pixel_median, 1e-12)).astype(np.float32)

    def to_json(self) -> dict:
        return {"format": self.format, "name": self.name, "rate": self.rate, "created": self.created,
                "images": list(self.images), "bank": self.bank, "heads": self.heads,
                "variants": {v: asdict(p) for v, p in self.variants.items()}}

    def save(self, path) -> Path:
        """Write the JSON atomically (a temporary file, then renamed)."""
        path = write_text(path, json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def load(cls, path) -> "Profile":
        path = Path(path)
        if not path.is_file():
            raise ProfileError(f"profile {path}: no such file")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ProfileError(f"profile {path}: not a JSON file ({first_line(e, 120)})") from None
        try:
            return cls.from_json(data)
        except ProfileError as e:
            raise ProfileError(f"profile {path}: {e}") from None

    @classmethod
    def from_json(cls, data) -> "Profile":
        """Validate a parsed profile; ProfileError names the first problem."""
        if not isinstance(data, dict) or "format" not in data:
            raise ProfileError("not an MRAD profile (no 'format' field)")
        fmt = data["format"]
        if fmt != PROFILE_FORMAT:
            if isinstance(fmt, str) and fmt.startswith("mrad-profile/"):
                raise ProfileError(f"format {fmt} is not supported (this mrad reads {PROFILE_FORMAT}); "
                                   "calibrate again with `mrad calibrate`")
            raise ProfileError(f"not an MRAD profile (format {fmt!r})")
        rate = data.get("rate")
        if not _number(rate) or not 0 < rate < 1:
            raise ProfileError(f"rate must be a number between 0 and 1, not {rate!r}")
        variants = data.get("variants")
        if not isinstance(variants, dict) or not variants:
            raise ProfileError("'variants' must map at least one variant to its thresholds")
        parsed = {}
        for v, p in variants.items():
            if v not in VARIANTS:
                raise ProfileError(f"unknown variant {v!r} (expected {', '.join(VARIANTS)})")
            if not isinstance(p, dict):
                raise ProfileError(f"variants.{v} must be an object")
            for key in ("image_threshold", "pixel_threshold", "pixel_median"):
                if not _number(p.get(key)):
                    raise ProfileError(f"variants.{v}.{key} must be a finite number, not {p.get(key)!r}")
            scores = p.get("normal_scores")
            if not isinstance(scores, list) or not scores or not all(_number(s) for s in scores):
                raise ProfileError(f"variants.{v}.normal_scores must be a non-empty list of numbers")
            parsed[v] = VariantProfile(float(p["image_threshold"]), float(p["pixel_threshold"]),
                                       float(p["pixel_median"]), [float(s) for s in scores])
        return cls(name=str(data.get("name", "")), rate=float(rate), variants=parsed, bank=data.get("bank") or {},
                   heads=data.get("heads"), images=list(data.get("images") or []), created=str(data.get("created", "")),
                   format=fmt)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def thresholds(normal_scores, normal_maps, rate: float = DEFAULT_RATE) -> VariantProfile:
    """normal_scores (B,), normal_maps (B, H, W) of known-good images -> one variant's VariantProfile."""
    check_rate(rate)
    scores = np.asarray(normal_scores, dtype=np.float64).reshape(-1)
    pixels = np.asarray(normal_maps, dtype=np.float32).reshape(-1)
    if scores.size == 0 or pixels.size == 0:
        raise MRADError("calibration needs at least one normal image")
    return VariantProfile(float(np.quantile(scores, 1 - rate)), float(np.quantile(pixels, 1 - rate)),
                          float(np.median(pixels)), [float(s) for s in scores])


def check_rate(rate):
    if not _number(rate) or not 0 < rate < 1:
        raise MRADError(f"the false-alarm rate must be between 0 and 1 (e.g. 0.01 for 1 %), not {rate!r}")


def tensor_digest(*tensors) -> str:
    """sha256 over the tensors' shapes, dtypes and bytes (for banks and heads that are not files)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def identity(obj, path=None) -> dict:
    """{"name", "sha256", "digest_of"} of a bank or heads: of its file when `path` is given, else of its tensors."""
    if path:
        from .artefacts.digest import file_sha256  # verdicts cached in the default cache (not worth a setting)
        return {"name": Path(path).name, "sha256": file_sha256(path), "digest_of": "file"}
    if hasattr(obj, "keys") and hasattr(obj, "values") and isinstance(obj.keys, torch.Tensor):
        return {"name": obj.source, "sha256": tensor_digest(obj.keys, obj.values), "digest_of": "tensors"}
    state = obj.state_dict()
    return {"name": obj.meta.get("file", "heads"), "sha256": tensor_digest(*(state[k] for k in sorted(state))),
            "digest_of": "tensors"}


def setup_identity(detector, paths: dict | None = None) -> dict:
    """{"bank": {"image": ID, "patch": ID}, "heads": ID or None} of a detector. paths: {"image_bank", "patch_bank",
    "heads"} files (default: those it was loaded from, when artefacts.load_detector made it; banks swapped in by
    Detector.with_banks are identified by their tensors)."""
    if paths is None:
        paths = dict(getattr(getattr(detector, "delivery", None), "paths", None) or {})
        if getattr(detector, "banks_edited", False):  # Detector.with_banks: in-memory banks, digest their tensors
            paths.pop("image_bank", None), paths.pop("patch_bank", None)
    return {"bank": {"image": identity(detector.image_bank, paths.get("image_bank")),
                     "patch": identity(detector.patch_bank, paths.get("patch_bank"))},
            "heads": identity(detector.heads, paths.get("heads")) if detector.heads is not None else None}


def mismatches(profile: Profile, setup: dict) -> list:
    """What differs between the profile's recorded bank / heads and `setup` (setup_identity): readable lines."""
    out = []
    for kind in ("image", "patch"):
        a, b = (profile.bank or {}).get(kind), setup["bank"][kind]
        if a and a.get("sha256") != b["sha256"] and a.get("digest_of") == b["digest_of"]:
            out.append(f"the {kind} bank differs from the one the profile was calibrated with ({a.get('name')})")
    a, b = profile.heads, setup["heads"]
    if a and b and a.get("sha256") != b["sha256"] and a.get("digest_of") == b["digest_of"]:
        out.append(f"the heads differ from those the profile was calibrated with ({a.get('name')})")
    return out


def profile_from_results(results: dict, rate: float = DEFAULT_RATE, name: str = "", setup: dict | None = None,
                         images=()) -> Profile:
    """{variant: (normal scores (B,), normal maps (B, H, W))} -> Profile (e.g. from results the app has)."""
    check_rate(rate)
    if not results:
        raise MRADError("calibration needs at least one variant")
    setup = setup or {"bank": {}, "heads": None}
    return Profile(name=name, rate=float(rate),
                   variants={v: thresholds(s, m, rate) for v, (s, m) in results.items()},
                   bank=setup["bank"], heads=setup["heads"], images=[str(i) for i in images],
                   created=datetime.now(timezone.utc).replace(microsecond=0).isoformat())


def calibrate(detector, images, variants=None, rate: float = DEFAULT_RATE, name: str = "", paths=None,
              names=None, progress=None, batch_size: int | None = None) -> Profile:
    """Score known-good `images` (sources) with each variant (default: all the detector runs) and make a Profile.
    Images are encoded once each, batch by batch (`batch_size`, default the detector's), so memory stays at one
    batch of encodings plus the maps. progress(images done) after each batch."""
    check_rate(rate)
    images = list(images)
    if not images:
        raise MRADError("calibration needs at least one normal image")
    variants = tuple(variants or detector.variants)
    for v in variants:
        detector.require(v)
    scores = {v: [] for v in variants}
    maps = {v: [] for v in variants}
    step = max(1, batch_size or detector.batch_size)
    for start in range(0, len(images), step):
        enc = detector.encode(images[start:start + step])
        for v in variants:
            r = detector.score(enc, v)
            scores[v].append(r.score)
            maps[v].append(r.map)
        if progress:
            progress(min(start + step, len(images)))
    results = {v: (np.concatenate(scores[v]), np.concatenate(maps[v])) for v in variants}
    return profile_from_results(results, rate, name, setup_identity(detector, paths),
                                names if names is not None else [getattr(i, "name", str(i)) for i in images])
