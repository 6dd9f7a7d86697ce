"""The model holder for servers (the Gradio app): settings, the lazy backbone, one Detector per source, status, and
`analyze()` — one image encoded once and scored by each chosen variant.

    service = Service(Settings.from_env())                # cheap: nothing is loaded yet
    a = service.analyze("part.png", ["tf", "ft", "clip"], source="visa")
    a.outputs["ft"].score, a.outputs["ft"].map            # records.VariantOutput per variant

Its parts, each in its own module: sources and custom banks (catalogue.py), the calibrated map scale
(calibration.py), recent encodings (an LRU: the same image again re-uses its encoding), record fields (records.py).
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
import time
import weakref
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import autotune, runtime, viz, warmup
from .artefacts.digest import file_sha256
from .artefacts.resolve import backbone_file
from .backbone import Backbone
from .calibration import Calibrator
from .catalogue import SOURCE_LABELS, Catalogue, build_banks
from .config import DEFAULT, VARIANTS
from .detector import Detector, check_variant
from .errors import MRADError, first_line
from .images import load_image, preprocess
from .lru import LRU
from .records import Analysis, VariantOutput, name
from .runtime import synchronize
from .scorer import Scorer
from .settings import Settings

log = logging.getLogger("mrad.service")
KEPT_CUSTOM_DETECTORS = 16  # detectors of custom banks kept loaded (their files stay; a later use reloads them)
KEPT_ENCODINGS = 8  # recent single-image encodings (about 20 MB each at full size): a re-run skips the backbone


def error_text(exc: BaseException, what: str) -> str:
    """One line for an unexpected exception: what failed, its type and the first line of its message."""
    return f"{what} failed ({first_line(exc, 300)})"


def _noop(fraction, text):
    pass


class Service:
    """Lazy, thread-safe holder of the backbone and the per-source detectors. Model calls are counted in `calls`
    ("encode": images encoded, "score": variant runs), so tests can prove that re-renders run no model."""

    def __init__(self, settings: Settings | None = None, **overrides):
        """settings: the app's Settings (built once at start by the app factory); None = Settings.from_env(
        **overrides), for scripts and tests."""
        self.settings = s = settings or Settings.from_env(**overrides)
        self.config = replace(DEFAULT, model_name=s.model)
        # the app's entry in runtime.ENTRY_DEFAULTS (auto: the fastest engine and precision inside the bounds; this
        # machine's own measurement once `mrad doctor` made one, else the recorded facts, else what is exact)
        try:
            self.runtime = runtime.resolve("app", s.device, s.engine, s.precision, visible_devices=s.visible_devices,
                                           measured=self._measured())
        except MRADError as e:
            raise MRADError(f"the app's MRAD_DEVICE / MRAD_ENGINE / MRAD_PRECISION: {e}") from None
        self.device, self.engine, self.precision = self.runtime.device, self.runtime.engine, self.runtime.precision
        self.workdir = Path(tempfile.mkdtemp(prefix="mrad-app-"))  # batch outputs, CSVs, custom banks
        weakref.finalize(self, shutil.rmtree, str(self.workdir), True)
        self.catalogue = Catalogue(s, self.workdir)
        self.calibrator = Calibrator(sorted((s.assets / "examples").glob("*_good.png")), s.calibration)
        self.encodings = LRU(KEPT_ENCODINGS)  # sha1 of the model input -> (Encoding, who served it)
        self.calls = Counter()
        self._lock = threading.RLock()  # loading: one backbone, one detector per source
        self._backbone = None
        self._detectors: dict = {}
        self._status = "idle: nothing loaded yet (the model loads on first use)"

    def _measured(self) -> list | None:
        """This machine's cached `auto` measurement for the configured backbone (autotune.measured_for), or None:
        looked up only for `auto`, and nothing is hashed while no measurement is cached at all."""
        s = self.settings
        if s.precision not in (None, "", "auto") or not autotune.any_measured(s.cache_dir):
            return None
        try:
            path = backbone_file(None, s.model, s.artefacts, allow_download=False)
        except MRADError:
            return None
        return autotune.measured_for(s.cache_dir, path, s.model, self.config.image_size)

    # ------------------------------------------------------------------ status
    def status(self) -> str:
        since = getattr(self, "_since", None)
        busy = since is not None and not self._status.startswith(("ready", "idle"))
        elapsed = f" ({time.monotonic() - since:.0f} s so far)" if busy else ""
        measured = " (auto: measured on this machine)" if "measured" in self.runtime.why else ""
        return f"{self._status}{elapsed} · {self.runtime.describe()}{measured}{self._warm_note()}"

    def warm_engine(self):
        """The WarmEngine converting (or done converting) the encoder for OpenVINO in the background, or None."""
        return getattr(self._backbone, "warm_engine", None)

    def join_background(self, timeout: float | None = None) -> bool:
        """Wait for the background OpenVINO conversion (if one runs) to end; True when none runs (tests call this
        before they end: no thread may outlive them, nor run while something forks)."""
        warm = self.warm_engine()
        return warm is None or warm.join(timeout)

    def _warm_note(self) -> str:
        warm = self.warm_engine()
        if warm is None:
            return ""
        state = warm.status()
        if state["state"] in ("converting", "switching"):
            return (" · OpenVINO: converting the image encoder in the background (once per backbone); PyTorch fp32 "
                    "answers meanwhile")
        if state["state"] == "failed":
            return f" · OpenVINO conversion failed ({state['error']}): PyTorch fp32 serves"
        return ""

    def set_status(self, text: str, busy: bool = True):
        """What the server is doing now; busy: work under way (the status line counts its seconds)."""
        self._status, self._since = text, (time.monotonic() if busy else None)

    def _background_conversion(self) -> bool:
        """OpenVINO's one-time conversion runs in the background (PyTorch answers meanwhile): on a CPU, not on
        ZeroGPU (no background work there) nor when emulating it (model calls fork: no thread may be converting)."""
        s = self.settings
        return self.engine == "openvino" and self.device.type == "cpu" and not s.zero_gpu and not s.emulate_zero_gpu

    def _encoder_stage(self) -> str:
        """What preparing the image encoder involves with this engine (said while a detector loads)."""
        if self.engine != "openvino" or self._background_conversion():
            return ""
        return ("; then the image encoder for OpenVINO: the first time for this backbone it is converted for this "
                "CPU and cached (3–4 minutes on a 2-core CPU, once per backbone; later starts read the cache in "
                "seconds)")

    def _ready(self):
        loaded = dict.fromkeys(SOURCE_LABELS[k[0]].split(" (")[0] for k in self._detectors)  # each source once
        self.set_status("ready (" + ", ".join(loaded) + ")")

    def tidy(self, max_age: float = 7200):
        """Delete work files older than `max_age` seconds (the UI has long since fetched them)."""
        cutoff = time.time() - max_age
        old = [p for p in self.workdir.iterdir() if p.name != "banks"] + list(self.catalogue.bank_dir.glob("*"))
        for p in old:
            if p.stat().st_mtime >= cutoff:
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def backbone_problem(self) -> str | None:
        """Why the backbone cannot load right now without a download, or None when it is here. Loads nothing."""
        if self._backbone is not None or self.settings.files.get("backbone"):
            return None
        try:
            backbone_file(None, self.settings.model, self.settings.artefacts, allow_download=False)
        except MRADError as e:
            return str(e)
        return None

    # ------------------------------------------------------------------ loading (once, under the lock)
    def backbone(self) -> Backbone:
        with self._lock:
            if self._backbone is None:
                path = self.settings.files.get("backbone")
                try:
                    if not path:
                        self.set_status("locating / downloading the CLIP backbone (first use, about 1.7 GB) …")
                        path = backbone_file(None, self.settings.model, self.settings.artefacts,
                                             allow_download=self.settings.download)
                    self.set_status(f"loading the CLIP backbone {Path(path).name if path else self.settings.model} …")
                    self._backbone = Backbone.load(path, self.config)
                except MRADError:  # its message (the notice and the Detect summary show it) says what to do
                    self.set_status("the CLIP backbone could not be loaded: see the notice above", busy=False)
                    raise
                except Exception as e:
                    self.set_status("the CLIP backbone could not be loaded", busy=False)
                    raise MRADError(error_text(e, "loading the CLIP backbone") + "; set MRAD_BACKBONE to a local "
                                    "ViT-L/14@336 state dict or allow access to the Hugging Face Hub") from e
            return self._backbone

    def detector(self, source: str, bank_id=None) -> Detector:
        """The Detector of a source, loaded on first use (heads and banks per source, one shared backbone)."""
        self.catalogue.check(source)
        if source == "custom" and not self.catalogue.has_bank(bank_id):
            raise MRADError("no custom bank yet: build one in the Bank tab from your normal images")
        key = (source, bank_id if source == "custom" else None)
        with self._lock:
            if key not in self._detectors:
                backbone = self.backbone()
                self.set_status(f"loading heads and memory banks: {SOURCE_LABELS[source]}"
                                f"{self._encoder_stage()} …")
                try:
                    heads, image_bank, patch_bank = self.catalogue.parts(source, bank_id, self._examples_bank)
                    self._detectors[key] = self._detector(backbone, heads, image_bank, patch_bank)
                    custom = [k for k in self._detectors if k[0] == "custom"]
                    for old in custom[:-KEPT_CUSTOM_DETECTORS]:  # every taught edit is a bank: keep the recent ones
                        del self._detectors[old]
                except MRADError as e:
                    self.set_status(f"{SOURCE_LABELS[source]} is not available", busy=False)
                    raise MRADError(f"{SOURCE_LABELS[source]}: {e}") from e
            self._ready()
            return self._detectors[key]

    def _detector(self, backbone, heads=None, image_bank=None, patch_bank=None) -> Detector:
        """A Detector on the shared backbone with this service's engine (converted once per backbone file)."""
        path = backbone.weights_path
        digest = file_sha256(path, self.settings.cache_dir) if path and Path(path).is_file() else None
        if self._background_conversion():  # the IR not converted yet: PyTorch now, OpenVINO once converted
            encoder = warmup.engine_for(backbone, self.device, self.precision, self.settings.cache_dir, digest,
                                        progress=self.set_status)
        else:
            encoder = runtime.make_encoder(self.runtime, backbone, cache_dir=self.settings.cache_dir,
                                           weights_digest=digest, progress=self.set_status)
        return Detector(backbone, heads, image_bank, patch_bank, device=self.device, precision=self.precision,
                        batch_size=self.settings.batch_size, engine=encoder)

    def encoder(self) -> Detector:
        """A Detector without banks: encodes only (bank building)."""
        return self._detector(self.backbone())

    def scorer(self, source: str, bank_id=None, call=None, per_image: bool = True) -> Scorer:
        """The model seam of a source for batch, evaluate, teach and profile (see scorer.py); `call` is the page's
        GPU-call proxy of batch.score_chunk, None = in this process."""
        return Scorer(self, source, bank_id, call, per_image)

    def _examples_bank(self):
        images, masks, ids = self.catalogue.example_images()
        self.set_status(f"building the examples bank from {len(images)} synthetic images …")
        return build_banks(self, self.encoder(), images, masks, ids, self.settings.batch_size,
                           backbone=Path(self.settings.model).name, built_by="mrad app", source="examples")

    def preload(self, source: str | None = None):
        """Load the backbone and a source's detector now (a ZeroGPU Space does this at start, in the main process,
        so that every GPU worker forks with the model in memory)."""
        self.detector(source or self.catalogue.default())

    # ------------------------------------------------------------------ model calls (counted)
    def encode(self, det: Detector, images):
        """Images (sources or a (B, 3, S, S) tensor) -> Encoding; counts images encoded."""
        self.calls["encode"] += len(images)
        return det.encode(images)

    def score(self, det: Detector, enc, variant: str):
        self.calls["score"] += 1
        return det.score(enc, variant)

    def encode_cached(self, det: Detector, pixels) -> tuple:
        """(Encoding, re-used?) of one preprocessed image; the same pixels again re-use their encoding (every
        source shares this service's backbone, so the encoding depends on the pixels only)."""
        enc, reused, _ = self.encode_served(det, pixels)
        return enc, reused

    def encode_served(self, det: Detector, pixels) -> tuple:
        """encode_cached's (Encoding, re-used?) and who served that encoding: {"engine", "precision"} (during a
        background conversion PyTorch fp32, then OpenVINO)."""
        key = hashlib.sha1(pixels.numpy().tobytes()).hexdigest()
        hit = self.encodings.get(key)
        if hit is not None:
            return hit[0], True, hit[1]
        enc = self.encode(det, pixels)
        served = getattr(det.engine, "served", lambda: None)() or {"engine": det.engine.name,
                                                                    "precision": self.precision}
        self.encodings.put(key, (enc, served))
        return enc, False, served

    def runnable(self, det: Detector, variants) -> tuple:
        """(variants to run, {variant: why not}) for a detector; MRADError when none can run."""
        variants = list(dict.fromkeys(variants or []))
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown or not variants:
            raise MRADError(f"choose at least one variant of {', '.join(name(v) for v in VARIANTS)}"
                            + (f" (unknown: {', '.join(map(str, unknown))})" if unknown else ""))
        available = det.availability()
        skipped = {v: check_variant(v, available) for v in variants if check_variant(v, available)}
        run = [v for v in VARIANTS if v in variants and v not in skipped]
        if not run:
            raise MRADError("none of the chosen variants can run with this memory bank: " + "; ".join(skipped.values()))
        return run, skipped

    @staticmethod
    def calibration_key(source: str, bank_id=None) -> str:
        """Calibration levels belong to a source (each custom bank is one)."""
        return f"{source}:{bank_id}" if source == "custom" else source

    def calibrations(self, det: Detector, source: str, bank_id, variants, known=None, compute=True,
                     progress=None) -> dict:
        """{variant: viz.Calibration or None} of a source; with `compute`, the missing ones are computed now
        (progress(fraction, text) after each reference image). `known`: levels the session carried from an earlier
        call (e.g. from another ZeroGPU worker)."""
        key = self.calibration_key(source, bank_id)
        self.calibrator.remember(key, known or {})
        if compute:
            return self.calibrator.ensure(det, key, variants, self, progress)
        return {v: self.calibrator.get(key, v) for v in variants}

    # ------------------------------------------------------------------ one image
    def analyze(self, image, variants=VARIANTS, source: str = "env", bank_id=None, calibrate: bool = False,
                calibrations=None, progress=_noop) -> Analysis:
        """Load and check the image, encode it once (or re-use its encoding), score each runnable variant.
        With `calibrate`, the calibrated scale's levels are computed now where missing and carried in the result.
        progress(fraction, text) reports the stages. Raises MRADError."""
        progress = progress or _noop
        loaded = load_image(image, self.settings.max_pixels)
        if (source, bank_id if source == "custom" else None) in self._detectors:
            progress(0.05, "preparing")
        else:
            progress(0.05, "loading the model (the CLIP backbone" + (", downloaded first if missing" if
                     self._backbone is None else "") + f"), heads and banks{self._encoder_stage()}: see the "
                     "status line above")
        det = self.detector(source, bank_id)
        run, skipped = self.runnable(det, variants)
        pixels = preprocess(loaded.image, self.config.image_size)[None]
        progress(0.15, f"encoding {loaded.name} with CLIP")
        self.set_status(f"encoding {loaded.name} …")
        try:
            t0 = time.perf_counter()
            enc, reused, served = self.encode_served(det, pixels)
            synchronize(self.device)
            encode_ms = 0.0 if reused else 1000 * (time.perf_counter() - t0)
            levels = self.calibrations(det, source, bank_id, run, calibrations, compute=calibrate,
                                       progress=lambda f, words: progress(0.2 + 0.4 * f, words))
            display = viz.fit(np.asarray(loaded.image))
            outputs = {}
            for i, v in enumerate(run):
                progress(0.6 + 0.4 * i / len(run), f"scoring with {name(v)}")
                t0 = time.perf_counter()
                r = self.score(det, enc, v)
                synchronize(self.device)
                latency = 1000 * (time.perf_counter() - t0)
                outputs[v] = VariantOutput.from_result(r[0], viz.resize_map(r.map[0], display.shape), latency,
                                                       levels.get(v))
        finally:
            self._ready()
        setup = {"device": self.device.type, "engine": served["engine"], "precision": served["precision"],
                 "model": Path(self.settings.model).name}
        return Analysis(loaded.name, loaded.notes, display, outputs, skipped, encode_ms, reused, source,
                        SOURCE_LABELS[source], setup)

    def calibrate(self, analysis: Analysis, bank_id=None, calibrations=None, progress=_noop) -> Analysis:
        """The same analysis with the calibrated scale's levels of its variants (computed now where missing;
        progress(fraction, text) after each reference image)."""
        if analysis.calibrated or not self.settings.calibration:
            return analysis
        det = self.detector(analysis.source, bank_id)
        self.set_status("calibrating the map scale on the normal reference images …")
        try:
            levels = self.calibrations(det, analysis.source, bank_id, list(analysis.outputs), calibrations,
                                       progress=progress or _noop)
        finally:
            self._ready()
        return analysis.with_calibrations(levels)

    # ------------------------------------------------------------------ custom banks
    def build_bank(self, normal, defects=(), bank_name="my bank", progress=_noop) -> tuple:
        """Build a custom bank from uploads (each image encoded once, in chunks) -> (bank id, notes)."""
        images, masks, ids, notes = self.catalogue.custom_inputs(normal, defects)
        self.set_status(f"building the bank '{bank_name}' from {len(images)} images …")
        try:
            banks = build_banks(self, self.encoder(), images, masks, ids, self.settings.batch_size, progress,
                                backbone=Path(self.settings.model).name, built_by="mrad app", source=bank_name)
        finally:
            self._ready() if self._detectors else self.set_status("ready")
        return self.catalogue.add_bank(banks, bank_name), notes
