"""Detector: the model, heads and banks loaded once; `encode()` once per image, `score()` per variant.

    det = Detector.from_files(backbone=..., heads=..., image_bank=..., patch_bank=...)
    enc = det.encode(["a.png", "b.png"])           # the expensive part, once
    tf, ft, clip = (det.score(enc, v) for v in ("tf", "ft", "clip"))   # cheap, re-uses enc
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F

from . import maps
from .backbone import Backbone, Encoding, TorchEncoder, exact_fp32
from .bank import MemoryBank
from .config import DEFAULT, VARIANTS, MRADConfig
from .errors import MRADError
from .heads import Heads, clip_patch_probs, regional_prior
from .images import load_image, preprocess
from .retrieval import retrieve_any


@dataclass
class Result:
    """One variant's output for a batch of B images (index it for one image)."""

    variant: str
    score: np.ndarray  # (B,)        image anomaly score, 0.3 * top-1 % of map + 0.7 * image_prob
    image_prob: np.ndarray  # (B,)   image-level retrieval probability of "anomalous"
    patch_map: np.ndarray  # (B, g, g) raw patch anomaly probabilities on the 37x37 grid
    map: np.ndarray  # (B, S, S)     smoothed anomaly map at 518x518, float32
    map_top: np.ndarray  # (B,)      mean of the top 1 % of the smoothed map (the score's map part)
    extras: dict = field(default_factory=dict)  # seg_probs (B, N, 2); CLIP: prior, text_features (B, 2, E)

    def __len__(self):
        return len(self.score)

    def __getitem__(self, i):
        sl = slice(i, i + 1) if isinstance(i, int) else i
        kw = {f.name: getattr(self, f.name)[sl] for f in fields(self) if f.name not in ("variant", "extras")}
        return Result(self.variant, extras={k: v[sl] for k, v in self.extras.items()}, **kw)


def availability(has_banks: bool, heads: str) -> dict:
    """The one rule for which variants a setup can run: {variant: None if it can, else why not}.
    has_banks: both memory banks are there; heads: "none", "ft" (the projections only), "clip" (with the prompt
    parts) or "unknown" (a heads file not read yet: everything may run, checked on load)."""
    if not has_banks:
        why = ("needs the memory banks (--image-bank and --patch-bank, or MRAD_IMAGE_BANK / MRAD_PATCH_BANK)")
        return {v: f"MRAD-{v.upper()} {why}" for v in VARIANTS}
    out = {"tf": None}
    for v in ("ft", "clip"):
        if heads == "none":
            out[v] = (f"MRAD-{v.upper()} needs trained heads (--heads or MRAD_HEADS); this setup has banks only, so "
                      "only MRAD-TF can run")
        elif heads == "ft" and v == "clip":
            out[v] = ("MRAD-CLIP needs a checkpoint with prompt_learner and prompt_proj; these heads hold only the "
                      "MRAD-FT projections")
        else:
            out[v] = None
    return out


def check_variant(variant: str, available: dict) -> str | None:
    """Why `variant` cannot run under `available` (an `availability` dict), or None when it can."""
    if variant not in VARIANTS:
        return f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}"
    return available[variant]


class Detector:
    """Holds the frozen backbone, the heads and both memory banks; all variants share one encoding.

    device: a concrete device ("cpu", "cuda", "cuda:N"; mrad_core.runtime.resolve decides it for the entry points).
    engine: who runs the image encoder: None = the backbone's own PyTorch forward (TorchEncoder), or an engine object
    from mrad_core.runtime.make_encoder (e.g. OpenVINO) with `.name`, `.check(precision)` and
    `.encode(pixels, precision)`. precision: fp32 (the reference), bf16, fp16 or bf16-mlp; "auto" is a runtime
    decision (runtime.resolve). `run_info` says which engine and precision are in use."""

    def __init__(self, backbone: Backbone, heads: Heads | None = None, image_bank: MemoryBank | None = None,
                 patch_bank: MemoryBank | None = None, device="cpu", precision: str = "fp32", batch_size: int = 8,
                 engine=None):
        if precision == "auto":
            raise MRADError("precision 'auto' is decided per machine by mrad_core.runtime.resolve(); give the "
                            "Detector the engine and precision it chose (or use mrad_core.artefacts.load_detector)")
        if isinstance(engine, str) and engine != "torch":
            raise MRADError(f"engine {engine!r}: build it with mrad_core.runtime.make_encoder and pass the object "
                            "(the Detector itself only knows the PyTorch forward)")
        self.device = torch.device(device or "cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise MRADError(f"device {self.device} was asked for, but torch cannot use a CUDA device; use cpu")
        self.batch_size = batch_size
        self.config: MRADConfig = backbone.config
        self.backbone = backbone.to(self.device)
        if (image_bank is None) != (patch_bank is None):
            raise MRADError("give both memory banks (image and patch) or neither")
        if image_bank is not None:
            image_bank = image_bank.check(backbone.image_dim, "image bank").to(self.device)
            patch_bank = patch_bank.check(backbone.patch_dim, "patch bank").to(self.device)
        self.image_bank, self.patch_bank = image_bank, patch_bank
        self.heads = None
        if heads is not None:
            if heads.image_proj.mlp1.in_features != backbone.image_dim or \
                    heads.patch_proj.fc[0].in_features != backbone.patch_dim:
                raise MRADError(f"heads were made for features of {heads.image_proj.mlp1.in_features}/"
                                f"{heads.patch_proj.fc[0].in_features} dims, the backbone gives "
                                f"{backbone.image_dim}/{backbone.patch_dim}")
            self.heads = heads.to(self.device).eval().requires_grad_(False)
        self.precision = precision
        self.engine = TorchEncoder(self.backbone, self.device) if engine in (None, "torch") else engine
        try:
            self.engine.check(self.precision)
        except MRADError as e:
            raise MRADError(f"precision must be one this engine runs: {e}") from None
        self._ft_keys = None  # bank keys through the FT key projections, computed once

    @classmethod
    def from_files(cls, backbone=None, heads=None, image_bank=None, patch_bank=None, config: MRADConfig = DEFAULT,
                   **kw):
        """Paths (or None) -> Detector. backbone=None takes open_clip's pretrained OpenAI weights."""
        return cls(Backbone.load(backbone, config),
                   Heads.load(heads) if heads else None,
                   MemoryBank.load(image_bank, "image") if image_bank else None,
                   MemoryBank.load(patch_bank, "patch") if patch_bank else None, **kw)

    @property
    def variants(self) -> tuple:
        """The variants this setup can run."""
        return tuple(v for v, why in self.availability().items() if why is None)

    def availability(self) -> dict:
        """{variant: None if it can run, else why not} (the one rule, `availability`, on what is loaded)."""
        heads = "none" if self.heads is None else "clip" if self.heads.has_clip else "ft"
        return availability(self.image_bank is not None, heads)

    def require(self, variant: str):
        why = check_variant(variant, self.availability())
        if why:
            raise MRADError(why)

    def score_batch(self, pixels, variants) -> dict:
        """Images or (B, 3, S, S) pixels -> {variant: Result}: encoded once, scored by every variant."""
        for v in variants:
            self.require(v)
        enc = self.encode(pixels)
        return {v: self.score(enc, v) for v in variants}

    def pixels(self, images) -> torch.Tensor:
        """Image sources (paths, bytes, PIL, arrays) -> (B, 3, S, S) model input."""
        return torch.stack([preprocess(load_image(im).image, self.config.image_size) for im in images])

    @torch.inference_mode()
    def encode(self, images) -> Encoding:
        """Images (sources, or a (B, 3, S, S) tensor of preprocessed pixels) -> Encoding, in batches."""
        pixels = images if isinstance(images, torch.Tensor) else self.pixels(images)
        out = []
        for start in range(0, len(pixels), self.batch_size):
            out.append(self.engine.encode(pixels[start:start + self.batch_size], self.precision))
        return Encoding.cat(out)

    @property
    def run_info(self) -> dict:
        """Which engine and precision encode images (for scores.json / run.json and status lines)."""
        return {"engine": self.engine.name, "precision": self.precision, "device": self.device.type}

    def _ft_bank_keys(self):
        if self._ft_keys is None:
            self._ft_keys = (self.heads.image_proj.mlp2(self.image_bank.keys),
                             self.heads.patch_proj.fc[1](self.patch_bank.keys))
        return self._ft_keys

    def with_banks(self, image_bank: MemoryBank, patch_bank: MemoryBank) -> "Detector":
        """The same backbone and heads (shared, not copied) with other banks, e.g. after `bank_edit.add_*`."""
        if image_bank is None or patch_bank is None:
            raise MRADError("a detector needs both banks (an empty bank cannot be scored with: add a normal and an "
                            "anomalous image first)")
        other = copy.copy(self)
        image_bank = image_bank.check(self.backbone.image_dim, "image bank").to(self.device)
        patch_bank = patch_bank.check(self.backbone.patch_dim, "patch bank").to(self.device)
        other.image_bank, other.patch_bank, other._ft_keys = image_bank, patch_bank, None
        other.banks_edited = True  # the banks are no longer the files in `delivery` (profile.setup_identity)
        return other

    @torch.inference_mode()
    def retrieval_inputs(self, encoding: Encoding, variant: str):
        """What the variant's two retrievals read: ((image query (B, E'), keys (M, E'), values (M, 2)),
        (patch queries (B, N, E'), keys (P, E'), values (P, 2))). TF: normalised features against the bank keys;
        FT and CLIP: both through the FT query / key projections."""
        enc = encoding.to(self.device)
        feat = F.normalize(enc.image_feature, dim=-1)
        patches = F.normalize(enc.patch_avg, dim=-1)
        ib, pb = self.image_bank, self.patch_bank
        if variant == "tf":
            return (feat, ib.keys, ib.values), (patches, pb.keys, pb.values)
        image_keys, patch_keys = self._ft_bank_keys()
        return ((self.heads.image_proj.mlp1(feat), image_keys, ib.values),
                (self.heads.patch_proj.fc[0](patches), patch_keys, pb.values))

    @torch.inference_mode()
    def score(self, encoding: Encoding, variant: str) -> Result:
        """Score an encoding with one variant ("tf", "ft" or "clip"). The heads run in fp32 (TF32 off on CUDA)."""
        with exact_fp32(self.device):
            return self._score(encoding, variant)

    def _score(self, encoding: Encoding, variant: str) -> Result:
        self.require(variant)
        cfg = self.config
        enc = encoding.to(self.device)
        tau = cfg.retrieval_temperature
        (iq, ik, iv), (pq, pk, pv) = self.retrieval_inputs(enc, variant)
        img, seg = retrieve_any(iq, ik, iv, tau), retrieve_any(pq, pk, pv, tau)  # chunked for large banks
        extras = {"seg_probs": seg}
        patch_map = seg[..., 1]
        if variant == "clip":
            tokens = F.normalize(enc.proj_avg, dim=-1)
            prior = regional_prior(tokens, seg[..., 1] > cfg.region_threshold)
            # the text tower stays fp32: it is cheap (77 tokens) and reduced precision there costs accuracy
            probs, text = clip_patch_probs(self.heads, self.backbone, tokens, prior, cfg.text_temperature)
            patch_map = (probs[..., 1] + 1 - probs[..., 0]) / 2
            extras.update(prior=prior, text_features=text)
        full = maps.upsample(patch_map.float(), cfg.image_size).cpu().numpy()
        smoothed = maps.smooth(full, cfg.smoothing_sigma)
        image_prob = img[:, 1].float().cpu().numpy()
        top = maps.top_mean(smoothed, cfg.top_fraction)
        score = maps.image_score(top, image_prob, cfg.image_weight)
        g = self.backbone.grid
        return Result(variant, score, image_prob, patch_map.float().cpu().numpy().reshape(-1, g, g), smoothed,
                      top.astype(np.float32), {k: v.float().cpu().numpy() for k, v in extras.items()})

    def predict(self, images, variants=VARIANTS) -> dict:
        """Encode once, score with every requested variant: {variant: Result}."""
        return self.score_batch(images, variants)
