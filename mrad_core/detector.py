"""Detector: the model, heads and banks loaded once; `encode()` once per image, `score()` per variant.

    det = Detector.from_files(backbone=..., heads=..., image_bank=..., patch_bank=...)
    enc = det.encode(["a.png", "b.png"])           # the expensive part, once
    tf, ft, clip = (det.score(enc, v) for v in ("tf", "ft", "clip"))   # cheap, re-uses enc
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F

from . import engines, maps
from .backbone import Backbone, Encoding
from .bank import MemoryBank
from .config import DEFAULT, VARIANTS, MRADConfig
from .errors import MRADError
from .heads import Heads, clip_patch_probs, regional_prior, retrieve
from .images import load_image, preprocess

# name -> autocast dtype of the whole backbone; "bf16-mlp" runs only the backbone's MLPs in bf16
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "bf16-mlp": None}


@dataclass
class Result:
    """One variant's output for a batch of B images (index it for one image)."""

    variant: str
    score: np.ndarray  # (B,)        image anomaly score, 0.3 * top-1 % of map + 0.7 * image_prob
    image_prob: np.ndarray  # (B,)   image-level retrieval probability of "anomalous"
    patch_map: np.ndarray  # (B, g, g) raw patch anomaly probabilities on the 37x37 grid
    map: np.ndarray  # (B, S, S)     smoothed anomaly map at 518x518, float32
    extras: dict = field(default_factory=dict)  # seg_probs (B, N, 2); CLIP: prior, text_features (B, 2, E)

    def __len__(self):
        return len(self.score)

    def __getitem__(self, i):
        sl = slice(i, i + 1) if isinstance(i, int) else i
        kw = {f.name: getattr(self, f.name)[sl] for f in fields(self) if f.name not in ("variant", "extras")}
        return Result(self.variant, extras={k: v[sl] for k, v in self.extras.items()}, **kw)


def fast_precision(device: torch.device) -> str:
    """PyTorch's `auto` precision (engines.resolve_auto uses it when the benchmark recorded nothing for this CPU
    and OpenVINO is not installed): the fastest one that keeps the maps within the bounds for a default (1e-2 max
    abs, correlation >= 0.999 of fp32 on the parity fixture; bench/bench.py measures them). On CUDA that is fp16
    autocast. On CPU, full bf16 misses the correlation bound (0.9976) while bf16 MLPs alone meet it (0.99998) at
    ~1.4x the fp32 speed; without native bf16 kernels it would only be slower, so such CPUs stay fp32."""
    if device.type == "cuda":
        return "fp16"
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return "bf16-mlp" if supported is not None and supported() else "fp32"


def resolve_device(device=None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MRADError("--device cuda was asked for, but no CUDA device is available (use --device cpu)")
    return device


class Detector:
    """Holds the frozen backbone, the heads and both memory banks; all variants share one encoding.

    engine: who runs the image encoder, "torch" (default) or "openvino" (CPU; converts once, caches the IR and
    releases the PyTorch vision weights; see engines.py). precision="auto" picks the engine too unless one is given
    (engines.resolve_auto). `run_info` says which engine and precision are in use."""

    def __init__(self, backbone: Backbone, heads: Heads | None = None, image_bank: MemoryBank | None = None,
                 patch_bank: MemoryBank | None = None, device=None, precision: str = "fp32", batch_size: int = 8,
                 engine: str | None = None):
        if precision not in (*PRECISIONS, "auto"):
            raise MRADError(f"precision must be one of {', '.join(PRECISIONS)} or auto, not {precision!r}")
        self.device = resolve_device(device)
        if precision == "auto":  # the fastest engine (unless given) and precision inside the bounds
            engine, precision = engines.resolve_auto(self.device, engine)
        engine = engine or "torch"
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
        # who runs the image encoder ("torch" | "openvino"); OpenVINO releases the PyTorch vision weights
        self.engine = engines.make_engine(engine, self.backbone, self.device)
        self.engine.check(self.precision)
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
        if self.image_bank is None:
            return ()
        if self.heads is None:
            return ("tf",)
        return ("tf", "ft", "clip") if self.heads.has_clip else ("tf", "ft")

    def require(self, variant: str):
        if variant not in VARIANTS:
            raise MRADError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        if variant in self.variants:
            return
        if self.image_bank is None:
            raise MRADError(f"MRAD-{variant.upper()} needs the memory banks (--image-bank and --patch-bank, "
                            "or MRAD_IMAGE_BANK / MRAD_PATCH_BANK)")
        if self.heads is None:
            raise MRADError(f"MRAD-{variant.upper()} needs trained heads (--heads or MRAD_HEADS); "
                            "this setup has banks only, so only MRAD-TF can run")
        raise MRADError("MRAD-CLIP needs a checkpoint with prompt_learner and prompt_proj; "
                        "these heads hold only the MRAD-FT projections")

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

    @torch.inference_mode()
    def score(self, encoding: Encoding, variant: str) -> Result:
        """Score an encoding with one variant ("tf", "ft" or "clip")."""
        self.require(variant)
        cfg = self.config
        enc = encoding.to(self.device)
        feat = F.normalize(enc.image_feature, dim=-1)
        patches = F.normalize(enc.patch_avg, dim=-1)
        ib, pb, tau = self.image_bank, self.patch_bank, cfg.retrieval_temperature
        if variant == "tf":
            img = retrieve(feat, ib.keys, ib.values, tau)
            seg = retrieve(patches, pb.keys, pb.values, tau)
        else:
            image_keys, patch_keys = self._ft_bank_keys()
            img = retrieve(self.heads.image_proj.mlp1(feat), image_keys, ib.values, tau)
            seg = retrieve(self.heads.patch_proj.fc[0](patches), patch_keys, pb.values, tau)
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
        score = maps.image_score(smoothed, image_prob, cfg.top_fraction, cfg.image_weight)
        g = self.backbone.grid
        return Result(variant, score, image_prob, patch_map.float().cpu().numpy().reshape(-1, g, g), smoothed,
                      {k: v.float().cpu().numpy() for k, v in extras.items()})

    def predict(self, images, variants=VARIANTS) -> dict:
        """Encode once, score with every requested variant: {variant: Result}."""
        for v in variants:
            self.require(v)
        enc = self.encode(images)
        return {v: self.score(enc, v) for v in variants}
