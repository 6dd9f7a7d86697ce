"""The model holder for servers (the Gradio app): loads lazily and once, thread-safe, says what it is doing.

    service = Service()                        # cheap: nothing is loaded yet
    a = service.analyze("part.png", ["tf", "ft", "clip"], source="visa")
    a.maps["tf"]                               # (H, W) float16 display map, H, W = image fitted into 518 px
    a.scores["ft"]                             # {"score", "image_prob", "map_top"}

One backbone is shared by every source; heads and banks are loaded per source ("visa"/"mvtec" = the paper's
files via the resolver, "env" = files given by MRAD_* variables or flags, "examples" = a bank built from the
synthetic images in assets/, "custom" = a bank built in the app). Every request encodes its image once and
scores each chosen variant from that encoding. Batches: see batch.py.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import viz
from .backbone import Backbone
from .bank import BankBuilder, MemoryBank
from .config import DEFAULT, VARIANTS
from .detector import PRECISIONS, Detector, fast_precision, resolve_device
from .errors import MRADError
from .heads import Heads
from .images import load_image, load_mask, preprocess
from .loading import resolve_paths

ASSETS = Path(os.environ.get("MRAD_ASSETS", Path(__file__).resolve().parents[1] / "assets"))
MAX_CUSTOM_BANKS = 16
MAX_ENCODINGS = 8  # recent single-image encodings kept (~11 MB each at full size): re-runs skip the backbone
SOURCES = {
    "env": "Your files (MRAD_HEADS / MRAD_IMAGE_BANK / MRAD_PATCH_BANK)",
    "visa": "VisA memory + VisA-trained heads (the paper's pairing for MVTec AD and other datasets)",
    "mvtec": "MVTec AD memory + MVTec-trained heads (the paper's pairing for VisA; non-commercial)",
    "examples": "Built-in synthetic examples (assets/bank; MRAD-TF out of the box)",
    "custom": "My bank (build it in the 'Memory bank' tab)",
}
NAMES = {"tf": "MRAD-TF", "ft": "MRAD-FT", "clip": "MRAD-CLIP"}


@dataclass
class Analysis:
    """One image, scored by several variants from one encoding; what the app caches in gr.State."""

    name: str
    notes: list
    image: np.ndarray  # (H, W, 3) uint8 display image, longer side <= 518
    maps: dict  # variant -> (H, W) float16 smoothed map, resized from the model's 518 x 518
    scores: dict  # variant -> {"score", "image_prob", "map_top"} floats in [0, 1]
    latency_ms: dict  # variant -> ms of scoring ("encode" -> ms of the shared encoding)
    skipped: dict = field(default_factory=dict)  # variant -> why it could not run
    key: str = ""  # source key (calibrations are per source key and variant)
    source: str = ""  # its label
    setup: dict = field(default_factory=dict)  # device, precision, model

    def summary(self, image_threshold=0.5, view: viz.View = viz.View(), calibration: dict | None = None) -> dict:
        """JSON-ready result: per variant score, verdict, image probability, map top-1 %, area %, latency.
        `calibration`: variant -> viz.Calibration (or None: calibrated falls back to raw)."""
        out, calibration = {}, calibration or {}
        for v, s in self.scores.items():
            norm = viz.normalise(self.maps[v], view.normalisation, calibration.get(v))
            out[v] = {**{k: round(float(x), 5) for k, x in s.items()},
                      "anomalous": bool(s["score"] >= image_threshold),
                      "defect_area_percent": round(viz.area_percent(viz.threshold_mask(norm, view.pixel_threshold)), 3),
                      "latency_ms": round(self.latency_ms[v], 1)}
        return {"image": self.name, "notes": self.notes, "source": self.source, **self.setup,
                "encode_ms": round(self.latency_ms["encode"], 1), "image_threshold": image_threshold,
                "pixel_threshold": view.pixel_threshold, "normalisation": view.normalisation if view.normalisation
                != "calibrated" or all(calibration.get(v) for v in self.scores) else "raw (no calibration yet)",
                "variants": out, "skipped": self.skipped}


def _error_text(exc: BaseException, what: str) -> str:
    return f"{what} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''})"


class Service:
    """Lazy, thread-safe holder of the backbone, the per-source detectors, custom banks and calibrations."""

    def __init__(self, files: dict | None = None, model=None, device=None, precision=None, batch_size=None,
                 assets=None, download: bool = True):
        self.files = resolve_paths(**(files or {}))  # explicit > MRAD_* environment > None
        self.model = model or os.environ.get("MRAD_MODEL") or DEFAULT.model_name
        self.config = replace(DEFAULT, model_name=self.model)
        self.device = resolve_device(device or os.environ.get("MRAD_DEVICE") or None)
        # auto: the fastest precision within the accuracy bounds of bench/bench.py (fp16 on CUDA, bf16 MLPs on
        # CPUs with native bf16, else fp32); shown in the status line
        self.precision = precision or os.environ.get("MRAD_PRECISION") or "auto"
        if self.precision == "auto":
            self.precision = fast_precision(self.device)
        if self.precision not in PRECISIONS:
            raise MRADError(f"MRAD_PRECISION must be one of {', '.join(PRECISIONS)} or auto, "
                            f"not {self.precision!r}")
        self.batch_size = int(batch_size or os.environ.get("MRAD_BATCH_SIZE", 8))
        self.assets = Path(assets or ASSETS)
        self.download = download
        self.calibrate_maps = os.environ.get("MRAD_CALIBRATION", "1") != "0"
        self.workdir = Path(tempfile.mkdtemp(prefix="mrad-app-"))  # batch outputs, CSVs, saved banks
        weakref.finalize(self, shutil.rmtree, str(self.workdir), True)
        self.calls = Counter()  # model calls: "encode" (images encoded), "score" (variant runs)
        self._lock = threading.RLock()
        self._backbone = None
        self._detectors: dict = {}
        self._banks: OrderedDict = OrderedDict()  # custom bank id -> (image bank, patch bank)
        self._reference = None  # Encoding of the normal reference images (calibration)
        self._calibrations: dict = {}
        self._calibration_lock = threading.Lock()
        self._threads: list = []
        self._encodings: OrderedDict = OrderedDict()  # sha1 of the model input -> Encoding (one backbone per service)
        self._status = "idle: nothing loaded yet (the model loads on first use)"

    # ------------------------------------------------------------------ setup and status
    @property
    def uses_env(self) -> bool:
        return any(self.files[k] for k in ("heads", "image_bank", "patch_bank"))

    def sources(self) -> list:
        """[(label, key)] offered in this setup; MRAD_* files replace the paper's sources (they override them)."""
        keys = ["env"] if self.uses_env else ["visa", "mvtec"]
        return [(SOURCES[k], k) for k in keys + ["examples", "custom"]]

    def default_source(self) -> str:
        wanted = os.environ.get("MRAD_APP_SOURCE")
        if wanted in dict((k, 1) for _, k in self.sources()):
            return wanted
        if self.uses_env:
            return "env"
        for key in ("visa", "mvtec"):
            try:
                if self._delivery(key).paths.get("image_bank"):
                    return key
            except Exception:  # a status check must never stop the app from opening
                pass
        return "examples"

    def _delivery(self, source):
        from .loading import delivery_status
        return delivery_status(source=source, model=self.model)

    def status(self) -> str:
        return f"{self._status} · device {self.device.type.upper()} · precision {self.precision}"

    def tidy(self, max_age: float = 7200):
        """Delete work files older than `max_age` seconds (the UI has long since fetched them)."""
        cutoff = time.time() - max_age
        for p in self.workdir.iterdir():
            if p.stat().st_mtime >= cutoff:
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def set_status(self, text):
        self._status = text

    def describe(self, source: str, bank_id=None) -> str:
        """Markdown: what the source is, what is available or missing and how to provide it. Loads nothing."""
        lines = [f"**{SOURCES.get(source, source)}**"]
        if source in ("visa", "mvtec"):
            from .registry import LICENCES
            try:
                res = self._delivery(source)
                lines += [f"- {s.line()}" for s in res.statuses]
            except Exception as e:
                lines.append(f"- status unavailable: {e}")
            lines.append(f"- licence: {LICENCES[source]}")
        elif source == "env":
            lines += [f"- {k}: `{v}`" for k, v in self.files.items() if v]
            if not self.files["heads"]:
                lines.append("- no heads (MRAD_HEADS): only MRAD-TF can run")
        elif source == "examples":
            n = len(list((self.assets / "bank").glob("*.png")))
            lines.append(f"- built on first use from the {n} synthetic files in `{self.assets / 'bank'}` "
                         "(procedural textures, not dataset images); FT/CLIP run only when MRAD_HEADS gives heads")
        elif source == "custom":
            lines.append("- ready: " + self.bank_info(bank_id) if bank_id in self._banks else
                         "- not built yet: upload normal images in the 'Memory bank' tab")
        det = self._detectors.get(self.key(source, bank_id))
        if det is not None:
            lines.append(f"- loaded: variants {', '.join(NAMES[v] for v in det.variants)}; "
                         f"banks of {len(det.image_bank)} images / {len(det.patch_bank)} regions")
        return "\n".join(lines)

    # ------------------------------------------------------------------ loading (once, under the lock)
    def key(self, source, bank_id=None):
        return f"custom:{bank_id}" if source == "custom" else source

    def backbone(self) -> Backbone:
        with self._lock:
            if self._backbone is None:
                path = self.files["backbone"]
                try:
                    if not path:
                        from . import hub
                        self.set_status("locating / downloading the CLIP backbone (first use) …")
                        path = hub.backbone_weights(self.model, self.config.pretrained, allow_download=self.download)
                    self.set_status(f"loading the CLIP backbone {Path(path).name if path else self.model} …")
                    self._backbone = Backbone.load(path, self.config)
                except MRADError as e:  # its message already says what is missing and how to provide it
                    self.set_status(str(e))
                    raise
                except Exception as e:
                    self.set_status("the CLIP backbone could not be loaded")
                    raise MRADError(_error_text(e, "loading the CLIP backbone") + "; set MRAD_BACKBONE to a local "
                                    "ViT-L/14@336 state dict or allow access to the Hugging Face Hub") from e
            return self._backbone

    def detector(self, source: str, bank_id=None) -> Detector:
        """The Detector of a source, loaded on first use (heads and banks per source, one shared backbone)."""
        if source not in SOURCES:
            raise MRADError(f"unknown source {source!r}; choose from {', '.join(SOURCES)}")
        if source == "custom" and bank_id not in self._banks:
            raise MRADError("no custom bank yet: build one in the 'Memory bank' tab from your normal images "
                            "(custom banks live for this server session only)")
        key = self.key(source, bank_id)
        with self._lock:
            if key not in self._detectors:
                backbone = self.backbone()
                self.set_status(f"loading heads and memory banks for '{source}' …")
                try:
                    heads, banks = self._parts(source, bank_id, backbone)
                    det = Detector(backbone, heads, *banks, device=self.device, precision=self.precision,
                                   batch_size=self.batch_size)
                except MRADError as e:
                    self.set_status(f"'{source}' is not available")
                    raise MRADError(f"{SOURCES[source]}: {e}") from e
                self._detectors[key] = det
            self.set_status(f"ready ({', '.join(k.split(':')[0] for k in self._detectors)} loaded)")
            return self._detectors[key]

    def _parts(self, source, bank_id, backbone):
        """(heads or None, (image bank, patch bank)) of a source."""
        if source in ("visa", "mvtec"):
            from .loading import resolve_artefacts
            self.set_status(f"locating / downloading the '{source}' heads and banks …")
            res = resolve_artefacts(model=self.model, source=source, download=self.download, require=("tf",),
                                    strict_backbone=False)
            heads = Heads.load(res.paths["heads"]) if res.paths.get("heads") else None
            return heads, (MemoryBank.load(res.paths["image_bank"], "image"),
                           MemoryBank.load(res.paths["patch_bank"], "patch"))
        heads = Heads.load(self.files["heads"]) if self.files["heads"] else None
        if source == "env":
            if not (self.files["image_bank"] and self.files["patch_bank"]):
                raise MRADError("MRAD_IMAGE_BANK and MRAD_PATCH_BANK must both be set to memory bank files")
            return heads, (MemoryBank.load(self.files["image_bank"], "image"),
                           MemoryBank.load(self.files["patch_bank"], "patch"))
        if source == "examples":
            return heads, self._examples_bank(backbone)
        return heads, self._banks[bank_id]

    def _encoder(self, backbone) -> Detector:
        return Detector(backbone, device=self.device, precision=self.precision, batch_size=self.batch_size)

    def _examples_bank(self, backbone):
        folder = self.assets / "bank"
        images = sorted(p for p in folder.glob("*.png") if not p.stem.endswith("_mask"))
        if not images:
            raise MRADError(f"no example images in {folder}: run `python assets/make_examples.py`")
        self.set_status(f"building the examples bank from {len(images)} synthetic images …")
        masks = [folder / f"{p.stem}_mask.png" for p in images]
        return self.make_banks(backbone, images, [m if m.is_file() else None for m in masks], [p.stem for p in images],
                           source="examples")

    def make_banks(self, backbone, images, masks, ids, **meta):
        """Encode images (each once) with masks (None = normal) -> (image bank, patch bank)."""
        builder = BankBuilder(backbone=Path(self.model).name, built_by="mrad app", **meta)
        enc = self.encode(self._encoder(backbone), images)
        size = self.config.image_size
        builder.add(enc, [int(m is not None) for m in masks], torch.stack([load_mask(m, size) for m in masks]), ids)
        return builder.build()

    # ------------------------------------------------------------------ model calls (counted)
    def encode(self, det: Detector, images):
        """Images (sources or a (B, 3, S, S) tensor) -> Encoding; counts images encoded."""
        self.calls["encode"] += len(images)
        return det.encode(images)

    def encode_cached(self, det: Detector, pixels: torch.Tensor):
        """encode() of one image, re-using the encoding when the same image comes again (another source or other
        variants): every source shares this service's backbone, so the encoding depends on the pixels only."""
        key = hashlib.sha1(pixels.numpy().tobytes()).hexdigest()
        with self._lock:
            if key in self._encodings:
                self._encodings.move_to_end(key)
                return self._encodings[key]
        enc = self.encode(det, pixels)
        with self._lock:
            self._encodings[key] = enc
            while len(self._encodings) > MAX_ENCODINGS:
                self._encodings.popitem(last=False)
        return enc

    def score(self, det, enc, variant):
        self.calls["score"] += 1
        return det.score(enc, variant)

    def calibration(self, key: str, variant: str):
        """The cached viz.Calibration of (source key, variant), or None while it is not computed. Never runs
        the model: re-renders call this."""
        return self._calibrations.get((key, variant))

    def calibrate(self, det: Detector, key: str, variants, wait: bool = False):
        """Compute missing calibrations from the normal reference images (assets/examples/*_good.png): the
        references are encoded once per backbone, then scored once per source and variant. In a background
        thread unless `wait` (the first result should not wait for them)."""
        todo = [v for v in variants if (key, v) not in self._calibrations]
        if not (self.calibrate_maps and todo):
            return

        def work():
            with self._calibration_lock:
                self.set_status(f"calibrating maps on normal reference images for '{key}' …")
                try:
                    if self._reference is None:
                        refs = sorted((self.assets / "examples").glob("*_good.png"))
                        if not refs:
                            return
                        self._reference = self.encode(self._encoder(det.backbone), refs)
                    for v in todo:
                        if (key, v) not in self._calibrations:
                            self._calibrations[key, v] = viz.Calibration.from_maps(
                                self.score(det, self._reference, v).map)
                    self.set_status(f"ready ({', '.join(k.split(':')[0] for k in self._detectors)} loaded)")
                except Exception as e:  # calibration is optional: report, keep serving
                    self.set_status(_error_text(e, "calibration"))

        if wait:
            work()
        else:
            thread = threading.Thread(target=work, name="mrad-calibration", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def wait_calibration(self, timeout=None):
        """Wait for background calibrations (tests, batch jobs)."""
        for t in list(self._threads):
            t.join(timeout)

    # ------------------------------------------------------------------ single images
    def runnable(self, det: Detector, variants) -> tuple:
        """(variants to run, {variant: why not}) for a detector; MRADError when none can run."""
        variants = list(dict.fromkeys(variants or []))
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown or not variants:
            raise MRADError(f"choose at least one variant of {', '.join(VARIANTS)}"
                            + (f" (unknown: {', '.join(map(str, unknown))})" if unknown else ""))
        skipped = {}
        for v in variants:
            try:
                det.require(v)
            except MRADError as e:
                skipped[v] = str(e)
        run = [v for v in variants if v not in skipped]
        if not run:
            raise MRADError("none of the chosen variants can run with this source: " + "; ".join(skipped.values()))
        return run, skipped

    def analyze(self, image, variants=VARIANTS, source="env", bank_id=None, wait_calibration=False) -> Analysis:
        """Load and check the image, encode it once, score each runnable variant; calibrations are computed
        in the background unless `wait_calibration`. Raises MRADError."""
        loaded = load_image(image)
        det = self.detector(source, bank_id)
        run, skipped = self.runnable(det, variants)
        pixels = preprocess(loaded.image, self.config.image_size)[None]
        t0 = time.perf_counter()
        enc = self.encode_cached(det, pixels)
        latency = {"encode": 1000 * (time.perf_counter() - t0)}
        display = viz.fit(np.asarray(loaded.image))
        maps, scores = {}, {}
        for v in run:
            t0 = time.perf_counter()
            r = self.score(det, enc, v)
            latency[v] = 1000 * (time.perf_counter() - t0)
            top = (r.score[0] - self.config.image_weight * r.image_prob[0]) / (1 - self.config.image_weight)
            scores[v] = {"score": float(r.score[0]), "image_prob": float(r.image_prob[0]), "map_top": float(top)}
            maps[v] = viz.resize_map(r.map[0], display.shape)
        key = self.key(source, bank_id)
        self.calibrate(det, key, run, wait=wait_calibration)
        return Analysis(loaded.name, loaded.notes, display, maps, scores, latency, skipped, key, SOURCES[source],
                        {"device": self.device.type, "precision": self.precision, "model": Path(self.model).name})

    # ------------------------------------------------------------------ custom banks
    def add_bank(self, banks, name) -> str:
        """Keep a custom (image bank, patch bank) pair for this server session (the oldest beyond
        MAX_CUSTOM_BANKS is forgotten, with its detector and calibrations); returns its id."""
        with self._lock:
            bank_id = uuid.uuid4().hex[:12]
            self._banks[bank_id] = banks
            while len(self._banks) > MAX_CUSTOM_BANKS:
                old = self.key("custom", self._banks.popitem(last=False)[0])
                self._detectors.pop(old, None)
                self._calibrations = {k: c for k, c in self._calibrations.items() if k[0] != old}
            self.set_status(f"bank '{name}' ready")
        return bank_id

    def bank_info(self, bank_id) -> str:
        image, patch = self._banks[bank_id]
        n_bad = int(image.labels.sum())
        return (f"'{image.source}': {len(image)} images ({len(image) - n_bad} normal, {n_bad} defect), "
                f"{len(patch)} patch regions")

    def save_bank(self, bank_id) -> list:
        """Write a custom bank as two safetensors files (usable with --image-bank/--patch-bank); their paths."""
        image, patch = self._banks[bank_id]
        paths = [self.workdir / f"bank_{bank_id}_{k}.safetensors" for k in ("image", "patch")]
        image.save(paths[0])
        patch.save(paths[1])
        return paths
