"""Teaching a bank pair (image bank, patch bank): add normal or defect images, remove them again, merge pairs.

Every function returns NEW banks (the inputs are never modified), so an app can keep the earlier pair for undo.
Entries are made exactly as bank building makes them (`BankBuilder`: the image feature as an image entry; per
image the masked region's mean token as an anomalous patch entry and the rest's as a normal one), from an
`Encoding` the caller already has. Provenance: meta["image_ids"] gets the added ids appended (null for the
entries of banks that record no images, e.g. the authors'); the patch bank's `owner` says which image each patch
row came from, so `remove_images` takes out exactly what was added and restores the earlier tensors.

    ib, pb = add_normal(ib, pb, encoding[i:i + 1], ["part_017.png"], thumbnails)      # "This is normal"
    ib, pb = add_defect(ib, pb, encoding[i:i + 1], mask[None], ["scratch.png"])       # "Mark the defect"
    ib, pb = remove_images(ib, pb, ["scratch.png"])                                  # undo
    det = detector.with_banks(ib, pb)                                                # re-score at once

Start from nothing with image_bank = patch_bank = None. A bank that holds only one class (e.g. only normal
images) is allowed, but every image then retrieves the same label: `one_class_note` says so.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .bank import BankBuilder, BankError, MemoryBank
from .errors import MRADError
from .images import load_mask


def _provenance(image_bank: MemoryBank, patch_bank: MemoryBank):
    """(ids (N,) list with None for unknown, owner (P,) int64 with -1 for unknown, thumbnails or None)."""
    n = len(image_bank)
    ids = image_bank.ids
    if ids is None:
        ids = [None] * n
    elif len(ids) != n:
        raise BankError(f"image bank records {len(ids)} image ids for {n} entries; its provenance is broken")
    if patch_bank.ids is not None and image_bank.ids is not None and list(patch_bank.ids) != list(ids):
        raise BankError("the image and patch banks record different images: they are not one pair")
    owner = patch_bank.owner
    if owner is None:
        owner = torch.full((len(patch_bank),), -1, dtype=torch.long)
    elif len(owner) and int(owner.max()) >= n:
        raise BankError(f"patch bank rows refer to image {int(owner.max())}, the image bank has {n}")
    return list(ids), owner.long().cpu(), image_bank.thumbnails


def _pair(ids, image_keys, image_values, thumbs, patch_keys, patch_values, owner, meta):
    """Two MemoryBanks from the parts; provenance that is all unknown is dropped (as in the authors' banks)."""
    meta = dict(meta)
    meta.pop("image_ids", None)
    if any(i is not None for i in ids):
        meta["image_ids"] = list(ids)
    if thumbs is not None and not thumbs.any():
        thumbs = None
    owner = owner if bool((owner >= 0).any()) else None
    return (MemoryBank(image_keys, image_values, "image", dict(meta), thumbnails=thumbs),
            MemoryBank(patch_keys, patch_values, "patch", dict(meta), owner))


def _thumbs(a, na, b, nb):
    """Concatenate optional (n, h, w, 3) thumbnails; a missing side becomes zeros (= no thumbnail)."""
    if a is None and b is None:
        return None
    shape = (a if a is not None else b).shape[1:]
    a = a if a is not None else torch.zeros((na, *shape), dtype=torch.uint8)
    b = b if b is not None else torch.zeros((nb, *shape), dtype=torch.uint8)
    if a.shape[1:] != b.shape[1:]:
        raise BankError(f"thumbnails of {tuple(a.shape[1:])} and {tuple(b.shape[1:])} cannot be mixed")
    return torch.cat([a.cpu(), b.cpu()])


def merge(first: tuple, second: tuple) -> tuple:
    """(image bank, patch bank) + (image bank, patch bank) -> one pair, first's entries then second's.
    Either pair may be (None, None). Image ids must not repeat."""
    (ia, pa), (ib, pb) = first, second
    for name, (i, p) in (("first", first), ("second", second)):
        if (i is None) != (p is None):
            raise MRADError(f"the {name} pair has only one of its two banks")
    if ia is None:
        return ib, pb
    if ib is None:
        return ia, pa
    if ia.dim != ib.dim or pa.dim != pb.dim:
        raise BankError(f"banks of different models cannot be merged: keys of {ia.dim}/{pa.dim} and "
                        f"{ib.dim}/{pb.dim} dimensions")
    ids_a, own_a, th_a = _provenance(ia, pa)
    ids_b, own_b, th_b = _provenance(ib, pb)
    dupes = sorted({i for i in ids_a if i is not None} & {i for i in ids_b if i is not None})
    if dupes:
        raise MRADError(f"both banks hold image(s) {', '.join(map(str, dupes[:5]))}: remove them from one first")
    owner = torch.cat([own_a, torch.where(own_b >= 0, own_b + len(ids_a), own_b)])
    meta = dict(ia.meta)
    if ib.source != ia.source:
        meta["source"] = f"{ia.source} + {ib.source}"
    dev = ia.keys.device
    return _pair(ids_a + ids_b, torch.cat([ia.keys, ib.keys.to(dev)]), torch.cat([ia.values, ib.values.to(dev)]),
                 _thumbs(th_a, len(ia), th_b, len(ib)), torch.cat([pa.keys, pb.keys.to(dev)]),
                 torch.cat([pa.values, pb.values.to(dev)]), owner, meta)


def _masks(masks, n: int) -> torch.Tensor:
    """(n, H, W) tensor, or n mask sources (paths, PIL images, arrays: non-zero = defect) -> (n, H, W) 0/1."""
    if isinstance(masks, torch.Tensor):
        out = masks.float()
    else:
        masks = list(masks)
        out = [m if isinstance(m, torch.Tensor) else
               load_mask(Image.fromarray((np.asarray(m) > 0).astype(np.uint8) * 255) if isinstance(m, np.ndarray)
                         else m) for m in masks]
        out = torch.stack([m.float() for m in out]) if out else torch.zeros(0)
    if out.ndim != 3 or out.shape[0] != n:
        raise MRADError(f"give one (H, W) mask per defect image: {n} image(s), masks of shape {tuple(out.shape)}")
    if not torch.all((out == 0) | (out == 1)):
        raise MRADError("masks must hold only 0 (normal) and 1 (defect)")
    return out


def add_images(image_bank, patch_bank, encoding, labels, masks, ids, thumbnails=None) -> tuple:
    """Add B encoded images as bank building does. labels (B,) 0/1, masks (B, H, W) 0/1 (zeros for a normal
    image), ids: B new unique names, thumbnails (B, h, w, 3) uint8 or None. Returns (image bank, patch bank)."""
    n = len(encoding)
    ids = [str(i) for i in ids]
    if len(ids) != n or any(not i for i in ids):
        raise MRADError(f"give one non-empty id per added image ({n} image(s), {len(ids)} id(s))")
    known = set(image_bank.ids or []) if image_bank is not None else set()
    taken = sorted({i for i in ids if i in known or ids.count(i) > 1})
    if taken:
        raise MRADError(f"image id(s) {', '.join(taken[:5])} already in the bank or given twice "
                        "(bank_edit.fresh_id makes a free one)")
    builder = BankBuilder(source=image_bank.source if image_bank is not None else "taught")
    builder.add(encoding, torch.as_tensor(labels).long(), masks, ids,
                None if thumbnails is None else torch.as_tensor(thumbnails, dtype=torch.uint8))
    new_image, new_patch = builder.build()
    for label, i, region in zip(torch.as_tensor(labels).tolist(), ids, range(n)):
        if label == 1 and not bool(((new_patch.owner == region) & (new_patch.labels == 1)).any()):
            raise MRADError(f"the defect mask of {i} covers no whole patch of the model's grid (mark a larger "
                            "region: at least about one 14-pixel patch of the 518-pixel input)")
    if image_bank is not None:
        dev = image_bank.keys.device
        new_image, new_patch = new_image.to(dev), new_patch.to(dev)
    return merge((image_bank, patch_bank), (new_image, new_patch))


def add_normal(image_bank, patch_bank, encoding, ids, thumbnails=None) -> tuple:
    """"This is normal": each image -> one normal image entry and one normal patch entry (the whole image)."""
    g = encoding.patch_avg.shape[1]
    return add_images(image_bank, patch_bank, encoding, [0] * len(encoding), torch.zeros(len(encoding), g, g),
                      ids, thumbnails)


def add_defect(image_bank, patch_bank, encoding, masks, ids, thumbnails=None) -> tuple:
    """"Mark the defect": each image -> an anomalous image entry, the masked region's anomalous patch entry and the
    rest's normal patch entry. masks: (B, H, W) 0/1 tensor or B sources (path, PIL, array; non-zero = defect)."""
    return add_images(image_bank, patch_bank, encoding, [1] * len(encoding), _masks(masks, len(encoding)), ids,
                      thumbnails)


def remove_images(image_bank, patch_bank, ids) -> tuple:
    """Remove the images named by `ids` (their image entry and every patch entry they gave). Removing what was
    added restores the earlier banks exactly (same tensors, same order). Everything removed -> (None, None)."""
    all_ids, owner, thumbs = _provenance(image_bank, patch_bank)
    if image_bank.ids is not None and patch_bank.owner is None:
        raise BankError("this patch bank does not record which entries came from which image (built by an older "
                        "mrad); rebuild it to remove images")
    unknown = [i for i in ids if i not in all_ids]
    if unknown:
        listed = ", ".join(str(i) for i in all_ids if i is not None)[:300] or "none: it records no images"
        raise MRADError(f"no image {', '.join(map(str, unknown[:5]))} in the bank (ids: {listed})")
    gone = torch.tensor([i in set(ids) for i in all_ids])
    keep_patch = ~torch.isin(owner, torch.nonzero(gone).flatten())
    if bool(gone.all()):
        return None, None
    if not bool(keep_patch.any()):
        raise MRADError("removing these images would leave an image bank without patch entries")
    new_index = torch.cumsum(~gone, 0) - 1  # old image row -> new image row
    kept_owner = owner[keep_patch]
    kept_owner = torch.where(kept_owner >= 0, new_index[kept_owner.clamp(min=0)], kept_owner)
    keep = ~gone.to(image_bank.keys.device)
    kp = keep_patch.to(patch_bank.keys.device)
    return _pair([i for i, g in zip(all_ids, gone.tolist()) if not g], image_bank.keys[keep],
                 image_bank.values[keep], None if thumbs is None else thumbs[~gone], patch_bank.keys[kp],
                 patch_bank.values[kp], kept_owner, image_bank.meta)


def fresh_id(image_bank, base: str) -> str:
    """`base`, or `base#2`, `base#3`, … : the first that the bank does not hold yet."""
    known = set((image_bank.ids or []) if image_bank is not None else [])
    name, k = base, 1
    while name in known:
        k += 1
        name = f"{base}#{k}"
    return name


def one_class_note(image_bank) -> str | None:
    """A warning when the bank cannot discriminate (only normal or only anomalous entries), else None."""
    if image_bank is None:
        return "the bank is empty: add at least one normal and one anomalous image"
    counts = image_bank.labels.bincount(minlength=2).tolist()
    if counts[0] == 0 or counts[1] == 0:
        have, lack = ("anomalous", "normal") if counts[0] == 0 else ("normal", "anomalous")
        return (f"the image bank holds only {have} entries: every image retrieves '{have}' with probability 1, so "
                f"image-level scores cannot tell images apart; add at least one {lack} image")
    return None
