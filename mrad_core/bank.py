"""Memory banks: keys (N, D) with one-hot values (N, 2) (column 1 = anomalous) and provenance.

Files: the official `{"keys", "values"}` torch files (read with weights_only=True) or our safetensors
layout (tensors `keys`, `values`, optional `owner` and `thumbnails`; string metadata: format, kind, source,
image_ids as JSON, …). Provenance: meta["image_ids"] names the images (one per image-bank row; null = unknown);
a patch bank's `owner[i]` is the position in image_ids of the image its row i came from (-1 = unknown), so entries
can be removed by image (bank_edit.py).
Building follows the reference exactly: image bank = normalised image features; patch bank = per image,
one key per non-empty region (anomalous / normal on the 37x37 grid) = normalised mean of the averaged tokens.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import MRADError, first_line

BANK_FORMAT = "mrad-bank/1"
BANK_KINDS = {"image": "image feature", "patch": "patch token"}


class BankError(MRADError):
    """A bank that is missing, unreadable or malformed; the message names the file and the problem."""


@dataclass
class MemoryBank:
    keys: torch.Tensor  # (N, D) float32, L2-normalised rows
    values: torch.Tensor  # (N, 2) one-hot float32, column 1 = anomalous
    kind: str = "image"  # "image" (D = CLIP embedding, 768) or "patch" (D = vision width, 1024)
    meta: dict = field(default_factory=dict)  # source, image_ids, backbone, created, …
    owner: torch.Tensor | None = None  # (N,) int64: row of meta["image_ids"] each entry came from, -1 = unknown
    thumbnails: torch.Tensor | None = None  # image bank: (N, h, w, 3) uint8, one small RGB image per entry

    def __post_init__(self):
        self.check()

    def __len__(self):
        return self.keys.shape[0]

    @property
    def dim(self):
        return self.keys.shape[1]

    @property
    def labels(self):
        return self.values.argmax(dim=1)

    @property
    def source(self):
        return self.meta.get("source", "unknown")

    @property
    def ids(self) -> list | None:
        """The recorded image ids (None where an entry's image is unknown), or None: the bank records no images."""
        return self.meta.get("image_ids")

    def check(self, dim: int | None = None, where: str = ""):
        """Raise BankError unless keys are (N, D) (D == dim when given) and values (N, 2) one-hot."""
        where = where or f"{self.kind} bank"
        k, v = self.keys, self.values
        if self.kind not in BANK_KINDS:
            raise BankError(f"{where}: kind must be 'image' or 'patch', not {self.kind!r}")
        if k.ndim != 2 or k.shape[0] == 0:
            raise BankError(f"{where}: keys must be a non-empty (N, D) matrix, got shape {tuple(k.shape)}")
        if v.ndim != 2 or v.shape != (k.shape[0], 2):
            raise BankError(f"{where}: values must be ({k.shape[0]}, 2) one-hot labels, got {tuple(v.shape)}")
        if not torch.all((v == 0) | (v == 1)) or not torch.all(v.sum(1) == 1):
            raise BankError(f"{where}: values are not one-hot rows ([1, 0] normal, [0, 1] anomalous)")
        if self.owner is not None and (self.owner.shape != (k.shape[0],) or self.owner.is_floating_point()):
            raise BankError(f"{where}: owner must be ({k.shape[0]},) integers, got {tuple(self.owner.shape)} "
                            f"{self.owner.dtype}")
        if self.thumbnails is not None and (self.thumbnails.ndim != 4 or self.thumbnails.shape[0] != k.shape[0]
                                            or self.thumbnails.shape[3] != 3 or self.thumbnails.dtype != torch.uint8):
            raise BankError(f"{where}: thumbnails must be ({k.shape[0]}, h, w, 3) uint8, got "
                            f"{tuple(self.thumbnails.shape)} {self.thumbnails.dtype}")
        if dim is not None and k.shape[1] != dim:
            raise BankError(f"{where}: keys have dimension {k.shape[1]} but this model's {BANK_KINDS[self.kind]}s "
                            f"have {dim} (an image bank holds {BANK_KINDS['image']}s, a patch bank {BANK_KINDS['patch']}s; "
                            f"are the image and patch banks swapped?)")
        return self

    def to(self, device):
        return MemoryBank(self.keys.to(device), self.values.to(device), self.kind, self.meta, self.owner,
                          self.thumbnails)

    @classmethod
    def load(cls, path, kind: str = "image"):
        path = Path(path)
        where = f"{kind} bank {path}"
        if not path.is_file():
            raise BankError(f"{where}: no such file")
        try:
            if path.suffix == ".safetensors":
                from safetensors import safe_open
                with safe_open(str(path), framework="pt") as f:
                    # cloned: the file may be memory-mapped, and ZeroGPU deletes mapped files under the HF cache
                    tensors = {k: f.get_tensor(k).clone() for k in f.keys()}
                    meta = dict(f.metadata() or {})
                if meta.get("format") != BANK_FORMAT:
                    raise BankError(f"{where}: not an MRAD bank (metadata format {meta.get('format')!r})")
                if meta.get("kind", kind) != kind:
                    raise BankError(f"{where}: this file is a {meta['kind']} bank")
                if "image_ids" in meta:
                    meta["image_ids"] = json.loads(meta["image_ids"])
            else:
                tensors = torch.load(path, map_location="cpu", weights_only=True)
                meta = {"format": "official", "file": path.name}
            if not isinstance(tensors, dict) or not {"keys", "values"} <= set(tensors):
                found = sorted(tensors) if isinstance(tensors, dict) else type(tensors).__name__
                raise BankError(f"{where}: expected tensors 'keys' and 'values', found {found}")
        except BankError:
            raise
        except Exception as e:
            raise BankError(f"{where}: cannot be read ({first_line(e)})") from e
        meta.pop("kind", None)
        try:
            return cls(tensors["keys"].float(), tensors["values"].float(), kind, meta, tensors.get("owner"),
                       tensors.get("thumbnails"))
        except BankError as e:
            raise BankError(f"{where}: {str(e).split(': ', 1)[1]}") from None

    def save(self, path):
        from safetensors.torch import save_file
        meta = {k: (json.dumps(v) if k == "image_ids" else str(v)) for k, v in self.meta.items()
                if k not in ("format", "file")}
        meta.update(format=BANK_FORMAT, kind=self.kind)
        tensors = {"keys": self.keys.detach().cpu().contiguous().float(),
                   "values": self.values.detach().cpu().contiguous().float()}
        for name in ("owner", "thumbnails"):
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name).cpu().contiguous()
        save_file(tensors, str(path), metadata=meta)


def one_hot(labels) -> torch.Tensor:
    return F.one_hot(torch.as_tensor(labels, dtype=torch.long), 2).float()


def image_entries(image_features: torch.Tensor):
    """(B, E) image features -> (B, E) bank keys."""
    return F.normalize(image_features.float(), dim=-1)


def patch_entries(patch_avg: torch.Tensor, masks: torch.Tensor, return_owner: bool = False):
    """Averaged (not normalised) patch tokens (B, N, W) and binary masks (B, S, S) -> (keys (M, W), labels (M,)),
    and with return_owner the image (0..B-1) of each entry (M,). Per image the anomalous region (mask exactly 1
    on the grid) comes first, then the normal one (exactly 0)."""
    b, n, _ = patch_avg.shape
    g = int(round(n ** 0.5))
    grid = F.interpolate(masks[:, None].float(), size=(g, g), mode="bilinear", align_corners=False).view(b, n)
    keys, labels, owner = [], [], []
    for i, (tokens, m) in enumerate(zip(patch_avg, grid)):
        for label, region in ((1, m == 1), (0, m == 0)):
            if region.any():
                keys.append(F.normalize(tokens[region].mean(0), dim=-1))
                labels.append(label)
                owner.append(i)
    if return_owner:
        return torch.stack(keys), torch.tensor(labels), torch.tensor(owner, dtype=torch.long)
    return torch.stack(keys), torch.tensor(labels)


class BankBuilder:
    """Accumulates bank entries batch by batch (each image encoded once) and returns both banks."""

    def __init__(self, **meta):
        self.meta = meta
        self._image, self._image_labels, self._patch, self._patch_labels, self.ids = [], [], [], [], []
        self._owner, self._thumbs = [], []

    def add(self, encoding, labels, masks, ids=None, thumbnails=None):
        """encoding of B images, labels (B,) 0/1, masks (B, S, S) 0/1, ids: B names, thumbnails (B, h, w, 3)
        uint8 (optional; give them with every batch or never)."""
        self._image.append(image_entries(encoding.image_feature).cpu())
        self._image_labels.append(torch.as_tensor(labels).long().cpu())
        keys, patch_labels, owner = patch_entries(encoding.patch_avg, masks.to(encoding.patch_avg.device), True)
        self._patch.append(keys.cpu())
        self._patch_labels.append(patch_labels)
        self._owner.append(owner + len(self.ids))
        if thumbnails is not None:
            self._thumbs.append(torch.as_tensor(thumbnails, dtype=torch.uint8).cpu())
        self.ids.extend(ids or [str(len(self.ids) + i) for i in range(len(encoding))])

    def build(self):
        if not self._image:
            raise BankError("no images were added to the bank")
        meta = {**self.meta, "image_ids": list(self.ids)}
        thumbs = torch.cat(self._thumbs) if self._thumbs else None
        image = MemoryBank(torch.cat(self._image), one_hot(torch.cat(self._image_labels)), "image", dict(meta),
                           thumbnails=thumbs)
        patch = MemoryBank(torch.cat(self._patch), one_hot(torch.cat(self._patch_labels)), "patch", dict(meta),
                           torch.cat(self._owner))
        return image, patch
