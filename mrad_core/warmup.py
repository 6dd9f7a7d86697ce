"""A first result without waiting for the OpenVINO conversion.

When the encoder's IR is not cached yet (a new machine, a new backbone), `WarmEngine` answers `encode` with the
PyTorch engine at once while a background thread converts the encoder (engines.cached_ir) and compiles it
(engines.OpenVINOEngine); the next encode after that runs on OpenVINO. Each encode says who served it
(`served()`: {"engine", "precision"} of the calling thread's last encode), so a /predict answer and the card can
name it. Results before and after the switch agree within the fp32 parity tolerance (OpenVINO fp32 is exact).

The PyTorch vision weights are released (as OpenVINOEngine does with release=True) only after the switch and once
no PyTorch encode is in flight: new encodes go to OpenVINO from the moment it is ready, and the release waits for
the last PyTorch one to return.

Not on ZeroGPU (background work is not allowed there, and the model runs on the GPU with PyTorch): the caller
passes background=False and gets today's behaviour from `engine_for` (a synchronous conversion, or PyTorch).

    engine = engine_for(backbone, device, "fp32", cache_dir, digest)   # OpenVINOEngine when cached
    enc = engine.encode(pixels, "fp32"); engine.served()   # {"engine": "torch", "precision": "fp32"} at first
    engine.join()                                          # the conversion thread has ended (tests, shutdown)

cache_dir is Settings.cache_dir (the IR goes to <cache_dir>/openvino/<key>, engines.ir_dir), digest the backbone
file's sha256 (artefacts.digest.file_sha256), as for engines.make_engine.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import torch

from . import engines
from .backbone import Encoding
from .errors import first_line

TORCH_WHILE_CONVERTING = "fp32"  # what PyTorch serves meanwhile: exact (its reduced precisions are other numbers)


def ir_cached(backbone, cache_dir, weights_digest: str | None = None) -> bool:
    """Whether the encoder's IR for this backbone is already converted (then OpenVINO starts in seconds)."""
    return engines.is_converted(engines.ir_dir(backbone, cache_dir, weights_digest))


class WarmEngine:
    """PyTorch now, OpenVINO once it is converted and compiled (in a background thread started here).

    precision: the OpenVINO precision to compile (what `auto` or the user chose; "fp32" or "bf16"); PyTorch
    serves fp32 meanwhile. build: () -> OpenVINO engine (default: OpenVINOEngine(backbone, cache_dir,
    release=False, precision=precision, weights_digest=weights_digest)); tests and the app may wrap it.
    on_switch(engine) is called after the switch (e.g. to update the status line). release: free the PyTorch vision
    weights after the switch. The conversion thread is a daemon (a server's exit does not wait for it), and
    `join()` waits for it to end (tests must, before anything forks)."""

    def __init__(self, backbone, device, precision: str = "fp32", cache_dir=None, weights_digest: str | None = None,
                 build=None, on_switch=None, release: bool = True, start: bool = True):
        engines.OpenVINOEngine.check(precision)  # before anything runs
        self.backbone, self.device, self.precision, self.release = backbone, torch.device(device), precision, release
        self.torch = engines.TorchEngine(backbone, self.device)
        if build is None and cache_dir is None:
            raise engines.EngineError("the OpenVINO engine needs a cache directory for its converted encoder "
                                      "(Settings.cache_dir)")
        self._build = build or (lambda: engines.OpenVINOEngine(backbone, cache_dir, release=False,
                                                               precision=precision, weights_digest=weights_digest))
        self.on_switch = on_switch
        self.openvino = None  # the engine once switched
        self.error = None  # why the conversion failed (then PyTorch keeps serving)
        self.info = {"warm_start": True}
        self._cond = threading.Condition()
        self._inflight = 0  # PyTorch encodes running now
        self._local = threading.local()
        self.ready = threading.Event()  # set when the switch is done (or the conversion failed)
        self.switch_pending = threading.Event()  # OpenVINO serves new encodes; waiting for PyTorch ones to end
        self._thread = threading.Thread(target=self._convert, name="mrad-openvino-convert", daemon=True)
        if start:
            self.start()

    def start(self):
        self._thread.start()

    # ---- what Detector uses
    @property
    def name(self) -> str:
        """The engine new encodes go to now."""
        return "openvino" if self.openvino is not None else "torch"

    def check(self, precision: str):
        engines.OpenVINOEngine.check(precision)

    def encode(self, pixels: torch.Tensor, precision: str = "fp32") -> Encoding:
        with self._cond:
            ov = self.openvino
            if ov is None:
                self._inflight += 1
        if ov is not None:
            enc = ov.encode(pixels, precision)
            self._local.served = {"engine": "openvino", "precision": precision}
            return enc
        try:
            enc = self.torch.encode(pixels, TORCH_WHILE_CONVERTING)
        finally:
            with self._cond:
                self._inflight -= 1
                self._cond.notify_all()
        self._local.served = {"engine": "torch", "precision": TORCH_WHILE_CONVERTING}
        return enc

    def served(self) -> dict | None:
        """{"engine", "precision"} that served this thread's last encode (None before any)."""
        return getattr(self._local, "served", None)

    def status(self) -> dict:
        """{"state": "converting" | "switching" | "ready" | "failed", "engine" (serving now), "error"}."""
        if self.error is not None:
            state = "failed"
        elif self.ready.is_set():
            state = "ready"
        elif self.switch_pending.is_set():
            state = "switching"
        else:
            state = "converting"
        return {"state": state, "engine": self.name, "precision": self.precision if self.openvino is not None
                else TORCH_WHILE_CONVERTING, "error": self.error, **{k: v for k, v in self.info.items()
                                                                      if k.endswith("_s")}}

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the switch (or the failure); True when OpenVINO serves."""
        self.ready.wait(timeout)
        return self.openvino is not None

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the conversion thread to end (after the switch and on_switch, or the failure); True when it
        has (or never started)."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # ---- the background work
    def _convert(self):
        t = time.perf_counter()
        try:
            engine = self._build()
        except Exception as e:  # noqa: BLE001 (PyTorch keeps serving; the status says why)
            self.error = first_line(e)
            self.ready.set()
            return
        self.info.update(getattr(engine, "info", {}), background_s=time.perf_counter() - t)
        with self._cond:
            self.openvino = engine  # from now on new encodes go to OpenVINO
            self.switch_pending.set()
            self._cond.wait_for(lambda: self._inflight == 0)  # the weights stay until the last PyTorch encode ends
            self.backbone.openvino_engine = engine  # make_engine re-uses it for other detectors on this backbone
            if self.release:
                self.backbone.release_vision()
        self.ready.set()
        if self.on_switch is not None:
            self.on_switch(engine)


def engine_for(backbone, device, precision: str = "fp32", cache_dir=None, weights_digest: str | None = None,
               background: bool = True, progress=None, **kw):
    """The OpenVINO encoder for this backbone without a wait on a cold start: the engine already made for the
    backbone (or the WarmEngine already converting for it), OpenVINOEngine when the IR is cached (seconds), or a
    WarmEngine converting in the background when it is not. background=False (ZeroGPU, or whoever wants today's
    behaviour) converts here and now (progress(text) is told before). **kw: WarmEngine's (on_switch, build, …)."""
    device = torch.device(device)
    warm = getattr(backbone, "warm_engine", None)
    if warm is not None and warm.openvino is None and warm.error is None:
        return warm  # one conversion per backbone: detectors made meanwhile share it
    existing = getattr(backbone, "openvino_engine", None)
    if existing is not None or not background or device.type != "cpu" or \
            ir_cached(backbone, cache_dir, weights_digest):
        return engines.make_engine("openvino", backbone, device, precision, cache_dir=cache_dir,
                                   weights_digest=weights_digest, progress=progress)
    backbone.warm_engine = WarmEngine(backbone, device, precision, cache_dir, weights_digest, **kw)
    return backbone.warm_engine


def convert_if_local(backbone, model: str | None, cache_dir, options=None) -> str:
    """Convert the encoder's IR now when the backbone's file is on this machine (never downloads it): for the
    Docker build, so that the image's first start compiles a cached IR instead of converting. options: the
    settings' ArtefactOptions (Settings.artefacts). Returns a line saying what was done."""
    from dataclasses import replace

    from .artefacts.digest import file_sha256
    from .artefacts.errors import HubError
    from .artefacts.resolve import backbone_file
    from .backbone import Backbone
    from .config import DEFAULT

    if not engines.openvino_available():
        return "OpenVINO is not installed: nothing to convert"
    try:
        path = backbone_file(backbone, model, options, allow_download=False)
    except HubError:
        path = None
    if not path:
        return ("the backbone is not on this machine (build with PRELOAD=1 to fetch it): the first start converts "
                "the encoder in the background")
    loaded = Backbone.load(path, replace(DEFAULT, model_name=model or DEFAULT.model_name))
    digest = file_sha256(path, cache_dir) if Path(path).is_file() else None
    xml, info = engines.cached_ir(loaded, cache_dir, digest)
    what = f"converted in {info['convert_s']:.0f} s" if info["converted"] else "already cached"
    return f"OpenVINO IR of the encoder {what}: {xml}"


def main(argv=None) -> int:
    """`python -m mrad_core.warmup`: convert the encoder's IR if the backbone is local (the Docker build's step)."""
    import argparse

    from .settings import Settings
    ap = argparse.ArgumentParser(prog="python -m mrad_core.warmup", description=convert_if_local.__doc__)
    ap.add_argument("--backbone", default=None, help="backbone file (default: $MRAD_BACKBONE, else open_clip's)")
    ap.add_argument("--model", default=None, help="open_clip model name or config .json (default: $MRAD_MODEL)")
    args = ap.parse_args(argv)
    settings = Settings.from_env()  # MRAD_BACKBONE, MRAD_MODEL, MRAD_CACHE_DIR: where the app will look
    print(convert_if_local(args.backbone, args.model or settings.model, settings.cache_dir, settings.artefacts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
