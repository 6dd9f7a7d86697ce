"""Why this score: the bank entries a retrieval attended to most, with the retrieval's own softmax weights.

Image level (per variant): softmax(q Kᵀ / τ) over the image bank, q and K as the variant's score() uses them
(TF: normalised features; FT: through the FT projections; CLIP: FT's image retrieval, which its image probability
comes from). Patch level: one grid cell's patch retrieval (TF's or FT's; MRAD-CLIP's map is made from text prompts
conditioned on FT's patch retrieval, so FT's is shown for CLIP).

    top_entries(det, enc, "ft", k=5)[0]   # [{"index", "id", "label", "weight"}, …] for image 0, weight-sorted
    explain_patch(det, enc, "tf", row=10, col=20)   # {"normal", "anomalous", "top_entries", …}
"""
from __future__ import annotations

import torch

from .errors import MRADError
from .heads import retrieve
from .retrieval import top_weights

LABELS = ("normal", "anomalous")
NO_IMAGES_NOTE = ("this bank records no images (the authors' banks do not): entries are shown by index and label "
                  "only")


def bank_note(bank) -> str | None:
    """NO_IMAGES_NOTE when the bank has no image ids, else None."""
    return NO_IMAGES_NOTE if bank.ids is None else None


def _entries(weights, indices, labels, ids) -> list:
    return [{"index": int(i), "id": ids[int(i)] if ids is not None else None, "label": LABELS[int(labels[int(i)])],
             "weight": float(w)} for w, i in zip(weights.tolist(), indices.tolist())]


def top_entries(detector, encoding, variant: str, k: int = 5) -> list:
    """For each of the B encoded images: its image retrieval's k highest-weighted image-bank entries,
    [{"index": bank row, "id": image id or None, "label": "normal"|"anomalous", "weight": softmax weight}],
    weight descending. Thumbnails, when the bank has them: detector.image_bank.thumbnails[index]."""
    if k < 1:
        raise MRADError(f"the number of top entries must be at least 1, not {k}")
    detector.require(variant)
    with torch.inference_mode():
        (query, keys, _), _ = detector.retrieval_inputs(encoding, variant)
        w, idx = top_weights(query, keys, k, detector.config.retrieval_temperature)
    bank = detector.image_bank
    labels = bank.labels.cpu()
    return [_entries(wi.cpu(), ii.cpu(), labels, bank.ids) for wi, ii in zip(w, idx)]


def patch_at(x: float, y: float, width: int, height: int, grid: int) -> tuple[int, int]:
    """A point (x right, y down, in pixels) of a width x height image or map -> (row, col) of its patch on the
    grid x grid patch grid (the model stretches the image to a square, so each axis scales on its own)."""
    if not (0 <= x < width and 0 <= y < height):
        raise MRADError(f"point ({x}, {y}) is outside the {width}x{height} image")
    return int(y * grid // height), int(x * grid // width)


def thumbnail(bank, index: int):
    """The (h, w, 3) uint8 thumbnail stored for image-bank row `index`, or None (none stored for it)."""
    if bank.thumbnails is None:
        return None
    t = bank.thumbnails[index]
    return t.numpy() if bool(t.any()) else None


def explain_patch(detector, encoding, variant: str, row: int, col: int, k: int = 5, image: int = 0) -> dict:
    """One patch of one image: {"row", "col", "normal", "anomalous" (its patch-retrieval probabilities),
    "top_entries": [{"index", "id" (the image it came from) or None, "image_index" (that image's image-bank row)
    or None, "label", "weight"}], "note"}. For CLIP the retrieval shown is FT's."""
    detector.require(variant)
    g = detector.backbone.grid
    if not (0 <= row < g and 0 <= col < g):
        raise MRADError(f"patch ({row}, {col}) is outside the {g}x{g} grid")
    with torch.inference_mode():
        _, (query, keys, values) = detector.retrieval_inputs(encoding[image], variant)
        q = query[0, row * g + col][None]
        probs = retrieve(q, keys, values, detector.config.retrieval_temperature)[0].float().cpu()
        w, idx = top_weights(q, keys, k, detector.config.retrieval_temperature)
    pb = detector.patch_bank
    owner = pb.owner
    entries = _entries(w[0].cpu(), idx[0].cpu(), pb.labels.cpu(), None)
    for e in entries:
        o = int(owner[e["index"]]) if owner is not None else -1
        e["image_index"] = o if o >= 0 else None
        e["id"] = pb.ids[o] if o >= 0 and pb.ids is not None else None
    note = "MRAD-CLIP's map comes from text prompts conditioned on this (FT) patch retrieval" \
        if variant == "clip" else None
    if owner is None:
        note = "; ".join(n for n in (note, "this patch bank records no images") if n)
    return {"row": row, "col": col, "normal": float(probs[0]), "anomalous": float(probs[1]),
            "top_entries": entries, "note": note}
