"""The app's "Make it yours" model work, as functions of a Service: calibrate an inspection profile, teach a bank
(add a normal or defect image, remove entries), explain a score. Each function is one model call (the page runs it
through `gpu_call`): plain data in, plain data out. A taught bank is kept as a custom bank of the catalogue (its
files), one new bank id per edit, so any process (a fresh ZeroGPU worker too) can load it and the earlier ids stay
as they were (undo = go back to the earlier id: its results are restored exactly).

    start = {"source": "visa", "bank_id": None}                # or None: start from an empty bank
    bank_id, image_id, a = add_example(service, start, None, "part.png", mask=None, current="part.png")
    bank_id, a = remove_examples(service, bank_id, [image_id], current="part.png")
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import bank_edit, explain, profile as profiles, viz
from .errors import MRADError
from .images import load_image, preprocess, thumbnails_from_pixels
from .records import Analysis, VariantOutput

MIN_CALIBRATION, MAX_CALIBRATION = 5, 50
TAUGHT_NAME = "taught"  # the source name of banks taught from empty
START_NAMES = {"env": "your files", "visa": "VisA", "mvtec": "MVTec AD", "examples": "the examples",
               "custom": "my bank"}  # short names of the sources (sources.LABELS words them in full)


def _banks(service, start, bank_id):
    """(image bank, patch bank) to edit: the taught bank `bank_id`, else the start's (None, None when empty)."""
    if bank_id:
        return service.catalogue.bank(bank_id)
    if start is None:
        return None, None
    det = service.detector(service.catalogue.check(start["source"]), start.get("bank_id"))
    return det.image_bank, det.patch_bank


def _rescore(service, current, variants, bank_id, calibrate):
    """The current image (if any) scored with the taught bank `bank_id` (its encoding re-used when cached); with
    `calibrate`, with the calibrated scale's reference levels of the new bank."""
    if current is None:
        return None
    return service.analyze(current, variants, "custom", bank_id, calibrate=calibrate)


def add_example(service, start, bank_id, image, mask=None, name=None, current=None, variants=("tf",),
                calibrate=False) -> tuple:
    """Teach one image: `mask` None -> a normal image ("This is normal"); a (H, W) array or mask file (non-zero =
    defect) -> a defect image, the masked region anomalous, the rest normal (as bank building does). The image is
    encoded once (the cached encoding when it is the current image). Returns (new bank id, the added image's id,
    the current image re-scored with the new bank or None)."""
    loaded = load_image(image, service.settings.max_pixels)
    pixels = preprocess(loaded.image, service.config.image_size)[None]
    if mask is not None:
        mask = np.asarray(load_image(mask).image.convert("L")) if isinstance(mask, (str, Path)) else np.asarray(mask)
        if mask.ndim != 2:
            raise MRADError(f"a defect mask must be one grey image (H, W), not an array of shape {mask.shape}")
        if not mask.any():
            raise MRADError("the defect mask is empty: paint the defect with the brush (or upload its mask) first")
    image_bank, patch_bank = _banks(service, start, bank_id)
    enc, _ = service.encode_cached(service.encoder(), pixels)
    image_id = bank_edit.fresh_id(image_bank, Path(name or loaded.name).stem or "image")
    thumbs = thumbnails_from_pixels(pixels)
    if mask is None:
        banks = bank_edit.add_normal(image_bank, patch_bank, enc.to("cpu"), [image_id], thumbs)
    else:
        banks = bank_edit.add_defect(image_bank, patch_bank, enc.to("cpu"), [mask > 0], [image_id], thumbs)
    if bank_id is None and start and start.get("source") in ("visa", "mvtec"):
        for bank in banks:  # a bank taught from the paper's keeps its heads: FT and CLIP still run on it
            bank.meta["heads_from"] = start["source"]
    label = bank_name(image_bank, None if bank_id else start)
    for bank in banks:  # the name the teach report and the bank's files show
        bank.meta["source"] = label
    new_id = service.catalogue.add_bank(banks, label)
    return new_id, image_id, _rescore(service, current, variants, new_id, calibrate)


def bank_name(image_bank, start=None) -> str:
    """The name of a bank taught from `image_bank` (None: from empty): the name it records, else (the authors' files
    record none) "taught from <the start's source>"."""
    if image_bank is None:
        return TAUGHT_NAME
    if image_bank.meta.get("source"):
        return image_bank.meta["source"]
    key = (start or {}).get("source")
    return f"taught from {START_NAMES.get(key, key)}" if key else TAUGHT_NAME


def remove_examples(service, bank_id, ids, current=None, variants=("tf",), calibrate=False) -> tuple:
    """Remove images (their image entry and every patch entry they gave) from a taught bank: (new bank id or None
    when nothing is left, the current image re-scored or None). The result equals the one before they were added."""
    if not ids:
        raise MRADError("choose the taught image(s) to remove")
    banks = bank_edit.remove_images(*service.catalogue.bank(bank_id), list(ids))
    if banks[0] is None:
        return None, None
    new_id = service.catalogue.add_bank(banks, banks[0].source)
    return new_id, _rescore(service, current, variants, new_id, calibrate)


def calibrate(service, images, variants, source, bank_id=None, rate=profiles.DEFAULT_RATE, name="",
              progress=None) -> profiles.Profile:
    """Score 5–50 known-good images with the variants that can run and make an inspection profile.
    progress(fraction, text): on a CPU (seconds per image) after each image, else after each batch."""
    images = list(images or [])
    if not MIN_CALIBRATION <= len(images) <= MAX_CALIBRATION:
        raise MRADError(f"give {MIN_CALIBRATION}–{MAX_CALIBRATION} known-good images of one product to calibrate "
                        f"on ({len(images)} given)")
    profiles.check_rate(rate)
    for p in images:  # every file checked first: a bad one is named before any model work
        load_image(p, service.settings.max_pixels)
    scorer = service.scorer(source, bank_id)
    run, _ = scorer.plan(variants)
    n, det = len(images), scorer.detector
    each = None
    if progress is not None:
        progress(0.0, f"calibrating: scoring known-good image 1 of {n}")
        each = lambda done: progress(done / n, f"calibrating: scored known-good image {done} of {n}")  # noqa: E731
    return profiles.calibrate(det, [str(p) for p in images], run, rate, name,
                              names=[Path(str(p)).name for p in images], progress=each,
                              batch_size=1 if progress is not None and det.device.type == "cpu" else None)


def explain_image(service, image, variants, source, bank_id=None, k: int = 5) -> dict:
    """{"entries": {variant: [{"index", "id", "label", "weight", "thumbnail": (h, w, 3) uint8 or None}]},
    "note": None or why the bank shows no images, "grid": the patch grid size} for one image."""
    det, enc = _encoded(service, image, source, bank_id)
    run, _ = service.scorer(source, bank_id).plan(variants)
    bank = det.image_bank
    entries = {}
    for v in run:
        rows = explain.top_entries(det, enc, v, min(k, len(bank)))[0]
        entries[v] = [{**e, "thumbnail": explain.thumbnail(bank, e["index"])} for e in rows]
    return {"entries": entries, "note": explain.bank_note(bank), "grid": det.backbone.grid}


def explain_point(service, image, variant, source, bank_id, x, y, width, height, k: int = 5) -> dict:
    """A clicked point (x, y) of a width x height map -> explain.explain_patch of its patch."""
    det, enc = _encoded(service, image, source, bank_id)
    row, col = explain.patch_at(x, y, width, height, det.backbone.grid)
    return explain.explain_patch(det, enc, variant, row, col, min(k, len(det.patch_bank)))


def _encoded(service, image, source, bank_id):
    if image is None:
        raise MRADError("no image: press Detect on an image first")
    det = service.detector(source, bank_id)
    loaded = load_image(image, service.settings.max_pixels)
    enc, _ = service.encode_cached(det, preprocess(loaded.image, service.config.image_size)[None])
    return det, enc


# ---------------------------------------------------------------------- no model: profiles on the page
def profile_levels(profile: profiles.Profile) -> dict:
    """{variant: viz.Calibration} putting the profile's scale (median -> 0, pixel threshold -> 1) on the app's
    calibrated view (which maps low -> 0 and high -> 0.5)."""
    return {v: viz.Calibration(p.pixel_median, p.pixel_median + max(p.pixel_threshold - p.pixel_median, 1e-6) / 2)
            for v, p in profile.variants.items()}


def with_levels(analysis: Analysis | None, levels: dict) -> Analysis | None:
    """The analysis with its variants' calibrations replaced by `levels` (where given)."""
    if analysis is None:
        return None
    outputs = {v: VariantOutput(**{**o.__dict__, "calibration": levels[v]}) if v in levels else o
               for v, o in analysis.outputs.items()}
    return Analysis(**{**analysis.__dict__, "outputs": outputs})


def taught_ids(service, bank_id, start_ids=()) -> list:
    """The ids of the images a taught bank holds beyond those of its start (newest last)."""
    if not bank_id:
        return []
    start = set(start_ids)
    return [i for i in (service.catalogue.bank(bank_id)[0].ids or []) if i is not None and i not in start]


def import_bundle(service, paths) -> tuple:
    """Uploaded files -> (bank id or None, Profile or None): an image bank + patch bank pair (safetensors, names
    ending in image_bank / patch_bank) and / or a profile (.json)."""
    from .bank import MemoryBank
    paths = [Path(str(p)) for p in paths or []]
    if not paths:
        raise MRADError("upload a profile (.json) and / or a bank's two files (*image_bank.safetensors, "
                        "*patch_bank.safetensors)")
    image = [p for p in paths if p.name.endswith("image_bank.safetensors")]
    patch = [p for p in paths if p.name.endswith("patch_bank.safetensors")]
    jsons = [p for p in paths if p.suffix.lower() == ".json"]
    other = [p.name for p in paths if p not in image + patch + jsons]
    if other or len(image) > 1 or len(patch) > 1 or len(jsons) > 1 or len(image) != len(patch):
        raise MRADError("upload at most one profile (.json) and one bank pair (*image_bank.safetensors with "
                        "*patch_bank.safetensors)" + (f"; not recognised: {', '.join(other)}" if other else ""))
    bank_id = None
    if image:
        banks = (MemoryBank.load(image[0], "image"), MemoryBank.load(patch[0], "patch"))
        bank_id = service.catalogue.add_bank(banks, banks[0].source)
    return bank_id, profiles.Profile.load(jsons[0]) if jsons else None
