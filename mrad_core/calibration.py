"""The "calibrated" map scale: per (source, variant) reference levels from normal reference images.

    cal = Calibrator(sorted(Path("assets/examples").glob("*_good.png")))
    levels = cal.ensure(detector, "visa", ["tf", "ft"], service)   # {variant: viz.Calibration}

Levels are computed inside a model call, on demand, never in a background thread: on a ZeroGPU Space the GPU is
released as soon as a call returns, and on a CPU a thread would compete with the next request. The reference images
are encoded once per backbone; each (source, variant) is then scored once. Levels computed in another process (a
ZeroGPU worker) come back with the results and can be given to `remember`.
"""
from __future__ import annotations

import threading

from . import viz
from .backbone import Encoding
from .records import name


class Calibrator:
    """Reference levels of the normal images `references` (paths), per (source key, variant)."""

    def __init__(self, references, enabled: bool = True):
        self.references = list(references)
        self.enabled = enabled and bool(self.references)
        self._lock = threading.Lock()  # one calibration at a time; the levels dict is only written under it
        self._levels: dict = {}
        self._encoding = None  # Encoding of the references (one backbone per service)

    def get(self, key: str, variant: str):
        """The levels of (source key, variant), or None while they are not computed. Never runs the model."""
        return self._levels.get((key, variant))

    def remember(self, key: str, levels: dict):
        """Keep levels computed elsewhere (e.g. carried in the app's session state from a GPU worker)."""
        with self._lock:
            for v, c in (levels or {}).items():
                if c is not None:
                    self._levels.setdefault((key, v), c)

    def forget(self, key: str):
        with self._lock:
            self._levels = {k: c for k, c in self._levels.items() if k[0] != key}

    def ensure(self, detector, key: str, variants, calls, progress=None) -> dict:
        """{variant: Calibration} for `variants` of this source, computing the missing ones now. `calls` runs the
        model (`calls.encode(detector, images)`, `calls.score(detector, encoding, variant)`: the service's counted
        model calls). progress(fraction, text) after each reference image encoded and each variant scored (the
        references are then encoded one by one; without it, in one call). Empty when calibration is off."""
        if not self.enabled:
            return {}
        with self._lock:
            todo = [v for v in variants if (key, v) not in self._levels]
            n = len(self.references)
            steps = (n if self._encoding is None else 0) + len(todo)
            if todo and self._encoding is None:
                if progress is None:
                    self._encoding = calls.encode(detector, self.references)
                else:
                    parts = []
                    for i, ref in enumerate(self.references):
                        progress(i / steps, f"calibrating: encoding normal reference image {i + 1} of {n}")
                        parts.append(calls.encode(detector, [ref]))
                    self._encoding = Encoding.cat(parts)
            done = steps - len(todo)
            for i, v in enumerate(todo):
                if progress is not None:
                    progress((done + i) / steps, f"calibrating: scoring the {n} references with {name(v)}")
                self._levels[key, v] = viz.Calibration.from_maps(calls.score(detector, self._encoding, v).map)
            return {v: self._levels[key, v] for v in variants}
