"""The one seam for the app's model work: which variants run (and why the others do not), then batches of pixels
scored with every variant from one encoding, in this process or through the page's GPU-call proxy.

    scorer = service.scorer("visa", call=page.gpu_chunk)   # call: the GPU proxy of batch.score_chunk (ZeroGPU)
    run, skipped = scorer.plan(["tf", "ft", "clip"])       # exact: the source's detector is loaded to say it
    results = scorer.score_batch(pixels, run)              # {variant: Result}, one encoding per image

Batch, Evaluate, teaching, inspection profiles (and the monitor and bulk scoring) call this: a Scorer has the
Detector's batch protocol (`config.image_size`, `require(variant)`, `score_batch(pixels, variants)`), so
evaluate.evaluate and evaluate_samples take either.
"""
from __future__ import annotations

from . import batch
from .errors import MRADError


class Scorer:
    """Plans and scores for one source (and custom bank) of a Service."""

    def __init__(self, service, source: str, bank_id=None, call=None, per_image: bool = True):
        """per_image: `call` takes progress(done, total) for the images of a batch (False on ZeroGPU, where a GPU
        call's arguments are pickled)."""
        self.service, self.source, self.bank_id = service, service.catalogue.check(source), bank_id
        self.per_image = per_image
        self.on_image = None  # set by evaluate_samples: on_image(done, total) images of the batch encoded
        self.config = service.config
        self._call = call or (lambda *a, **k: batch.score_chunk(service, *a, **k))
        self._planned = None
        self.levels: dict = {}  # variant -> viz.Calibration the last scored chunk brought back

    @property
    def detector(self):
        """The source's Detector in this process (loaded on first use), for work that needs it whole (profiles)."""
        return self.service.detector(self.source, self.bank_id)

    def plan(self, variants) -> tuple:
        """(variants to run, {variant: why not}); MRADError when none can run. Exact: loads the detector."""
        run, skipped = self.service.runnable(self.detector, variants)
        self._planned = set(run)
        return run, skipped

    def require(self, variant: str):
        if self._planned is None:
            self.plan([variant])
        if variant not in self._planned:
            raise MRADError(f"{variant} was not planned for this scorer: plan() the variants first")

    def score_batch(self, pixels, variants, calibrate: bool = False, calibrations=None) -> dict:
        """(B, 3, S, S) pixels -> {variant: Result} (through `call`: a GPU call per batch in the app)."""
        extra = {"progress": self.on_image} if self.on_image is not None and self.per_image else {}
        chunk = self._call(pixels, list(variants), self.source, self.bank_id, calibrate=calibrate,
                           calibrations=calibrations, **extra)
        missing = [v for v in variants if v not in chunk.results]
        if missing:  # the plan loaded this source: only a bank changed under us can get here
            raise MRADError("; ".join(chunk.skipped.get(v, f"{v} did not run") for v in missing))
        self.levels.update(chunk.levels)
        return chunk.results
