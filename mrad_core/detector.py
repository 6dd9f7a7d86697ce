"""Detector: the model, heads and banks loaded once; `encode()` once per image, `score()` per variant.

    det = Detector.from_files(backbone=..., heads=..., image_bank=..., patch_bank=...)
    enc = det.encode(["a.png", "b.png"])           # the expensive part, once
    tf, ft, clip = (det.score(enc, v) for v in ("tf", "ft", "clip"))   # cheap, re-uses enc
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import engines, maps
from .backbone import Backbone, Encoding
from .bank import MemoryBank
from .config import DEFAULT, VARIANTS, MRADConfig
from .errors import MRADError
from .heads import Heads, clip_patch_probs, regional_prior
from .images import load_image, preprocess
from .retrieval import retrieve_any

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
    map_top: np.ndarray  # (B,)      mean of the top 1 % of the smoothed map (the score's map part)
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


def gpu_present() -> bool:
    """The machine has an NVIDIA GPU and driver (whether or not this torch build can use it)."""
    return Path("/proc/driver/nvidia/version").is_file() or bool(os.environ.get("NVIDIA_VISIBLE_DEVICES", "")
                                                                     .strip() not in ("", "void", "none"))


def torch_report() -> str:
    """torch, its CUDA build and the driver: one line for the start-up log."""
    driver = ""
    try:
        driver = Path("/proc/driver/nvidia/version").read_text().split("Kernel Module")[1].split()[0]
    except (OSError, IndexError):
        pass
    cuda = torch.version.cuda or "none (CPU build)"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none usable"
    return f"torch {torch.__version__}, CUDA build {cuda}, NVIDIA driver {driver or 'not found'}, GPU {gpu}"


def resolve_device(device=None) -> torch.device:
    """None/"auto" -> CUDA when usable, else CPU; but never a silent CPU fallback on a machine that has a GPU
    (e.g. a torch built for a newer CUDA than the driver supports): that is an error naming the versions."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if gpu_present():
            raise MRADError(f"this machine has an NVIDIA GPU but torch cannot use it ({torch_report()}); install a "
                            "torch build for the driver's CUDA version (e.g. the CUDA 12 wheels from "
                            "download.pytorch.org/whl/cu126), or choose the CPU explicitly with --device cpu / "
                            "MRAD_DEVICE=cpu")
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MRADError(f"--device {device} was asked for, but torch cannot use a CUDA device ({torch_report()}); "
                        "use --device cpu")
    return device


def check_precision(precision: str, device: torch.device):
    """bf16 needs native support: GPUs before Ampere (T4: compute capability 7.5) only emulate it, slowly."""
    if device.type == "cuda" and precision in ("bf16", "bf16-mlp") and torch.cuda.get_device_capability(device) < (8, 0):
        raise MRADError(f"precision {precision} needs a GPU with native bf16 (compute capability 8.0+, e.g. A10G, "
                        f"L4, A100); {torch.cuda.get_device_name(device)} has none: use fp16 or auto")


def synchronize(device: torch.device):
    """Wait for queued GPU work, so that a clock read after it measures it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
        check_precision(precision, self.device)
        if self.device.type == "cuda" and precision == "fp32":
            # reproducible fp32: TF32 matmuls/convolutions round inputs to 10 mantissa bits and miss the parity bars
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
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
        self.engine = engines.make_engine(engine, self.backbone, self.device, self.precision)
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
        """Score an encoding with one variant ("tf", "ft" or "clip")."""
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
        for v in variants:
            self.require(v)
        enc = self.encode(images)
        return {v: self.score(enc, v) for v in variants}
