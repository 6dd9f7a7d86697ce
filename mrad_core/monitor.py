"""Monitoring a line: timed frames scored one encode each for every chosen variant, on a bounded timeline, with an
EWMA drift chart per variant, alarms, and a newest-frame-wins slot for live streams.

    mon = Monitor.create(("tf", "ft", "clip"), profile=None, image_threshold=0.5, rule=DriftRule())
    rec = mon.add(measure_frame(detector, frame.image, frame.index, frame.t_s, mon.variants)[0])
    mon.rows(), mon.alarms()                      # frames.csv rows, alarms.json
    again = mon.reclassify(image_threshold=0.7)   # other threshold / profile: the same scores, no model call

The drift rule (per variant; anyone can recompute it from frames.csv):
    μ0, σ0 = mean and standard deviation (ddof=1) of the profile's normal_scores for the variant, or, without a
             profile, of the first `baseline` scored frames (those frames are in state `collecting`)
    t      = 1, 2, … counts the scored frames after the baseline (all scored frames with a profile)
    z_0 = μ0,   z_t = λ·x_t + (1 − λ)·z_{t−1}          (x_t: the frame's score)
    limits = μ0 ± L·σ0·sqrt(λ/(2 − λ)·(1 − (1 − λ)^(2t)))
    state  = anomaly     if x_t ≥ image threshold (the profile's, else the one given)
             collecting  else, while the baseline is being collected
             drift       else, if z_t < lower or z_t > upper
             stable      else
Every scored frame updates the EWMA (anomalous ones too). Alarms: the maximal runs of consecutive `anomaly` frames
(per variant) and the first frame of every maximal run of `drift` frames.
"""
from __future__ import annotations

import csv
import math
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from .config import VARIANTS
from .errors import MRADError
from .records import is_anomalous, name

CSV_COLUMNS = ("frame", "t_s", "variant", "score", "anomalous", "map_top", "defect_area_percent", "latency_ms",
               "ewma", "lower", "upper", "state")
STATES = ("anomaly", "collecting", "drift", "stable")
RAW_PIXEL_THRESHOLD = 0.5  # defect area without a profile: map pixels >= 0.5 ("as close to anomalous as normal")
DEFAULT_MAX_RECORDS = 100_000
DEFAULT_MAX_ALARMS = 10_000


@dataclass(frozen=True)
class DriftRule:
    lam: float = 0.2  # λ, the EWMA weight of the newest score
    L: float = 3.0  # width of the control limits in standard deviations of the EWMA
    baseline: int = 30  # scored frames that set μ0, σ0 when no profile gives them

    def check(self) -> "DriftRule":
        if not (isinstance(self.lam, (int, float)) and 0 < self.lam <= 1):
            raise MRADError(f"--ewma-lambda must be in (0, 1], not {self.lam!r}")
        if not (isinstance(self.L, (int, float)) and math.isfinite(self.L) and self.L > 0):
            raise MRADError(f"--ewma-l must be a positive number, not {self.L!r}")
        if not isinstance(self.baseline, int) or self.baseline < 2:
            raise MRADError(f"--baseline must be at least 2 frames (a standard deviation needs two), not "
                            f"{self.baseline!r}")
        return self

    def half_width(self, sigma0: float, t: int) -> float:
        return self.L * sigma0 * math.sqrt(self.lam / (2 - self.lam) * (1 - (1 - self.lam) ** (2 * t)))


def mean_sd(scores) -> tuple:
    """(mean, standard deviation with ddof=1) as Python floats."""
    x = np.asarray(scores, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1))


class Chart:
    """One variant's EWMA chart (see the module docstring)."""

    def __init__(self, rule: DriftRule, mu0: float | None = None, sigma0: float | None = None):
        self.rule, self.mu0, self.sigma0 = rule, mu0, sigma0
        self.collected = [] if mu0 is None else None
        self.t, self.z = 0, mu0

    def update(self, x: float) -> tuple:
        """-> (ewma, lower, upper) for the score x; all None while the baseline is being collected."""
        if self.collected is not None:
            self.collected.append(float(x))
            if len(self.collected) == self.rule.baseline:
                self.mu0, self.sigma0 = mean_sd(self.collected)
                self.z, self.collected = self.mu0, None
            return None, None, None
        self.t += 1
        lam = self.rule.lam
        self.z = lam * float(x) + (1 - lam) * self.z
        half = self.rule.half_width(self.sigma0, self.t)
        return self.z, self.mu0 - half, self.mu0 + half


def state_of(score, threshold, ewma, lower, upper) -> str:
    if is_anomalous(score, threshold):
        return "anomaly"
    if ewma is None:
        return "collecting"
    if ewma < lower or ewma > upper:
        return "drift"
    return "stable"


def defect_area(anomaly_map, variant: str, profile=None) -> float:
    """% of map pixels at or above the pixel threshold: the profile's (calibrated map >= 1), else raw >= 0.5."""
    m = np.asarray(anomaly_map, dtype=np.float32)
    if profile is not None and variant in profile.variants:
        return 100.0 * float(np.mean(profile.calibrated_map(variant, m) >= 1.0))
    return 100.0 * float(np.mean(m >= RAW_PIXEL_THRESHOLD))


def measure(frame: int, t_s: float, results: dict, latency_ms: dict, profile=None) -> dict:
    """One frame's raw measurements (what re-classification keeps): {"frame", "t_s", "variants": {v: {"score",
    "map_top", "defect_area_percent", "latency_ms"}}}. `results`: {variant: Result of this one frame}."""
    return {"frame": int(frame), "t_s": float(t_s), "variants": {
        v: {"score": float(r.score[0]), "map_top": float(r.map_top[0]),
            "defect_area_percent": defect_area(r.map[0], v, profile), "latency_ms": float(latency_ms[v])}
        for v, r in results.items()}}


def score_frame(detector, image, variants) -> tuple:
    """One frame (H, W, 3) uint8 RGB or a (1, 3, S, S) pixel tensor: one encode, every variant scored ->
    ({variant: Result}, {variant: latency ms = the encode + that variant's scoring})."""
    from .runtime import synchronize
    start = time.perf_counter()
    enc = detector.encode(image if hasattr(image, "dim") else [image])
    synchronize(detector.device)
    encode_ms = 1000 * (time.perf_counter() - start)
    results, latency = {}, {}
    for v in variants:
        t0 = time.perf_counter()
        results[v] = detector.score(enc, v)
        latency[v] = encode_ms + 1000 * (time.perf_counter() - t0)
    return results, latency


class Monitor:
    """The timeline of one stream: classified records (bounded), EWMA charts, alarms, counters. Thread-safe."""

    def __init__(self, variants, thresholds: dict, rule: DriftRule = DriftRule(), baselines: dict | None = None,
                 profile=None, max_records: int | None = DEFAULT_MAX_RECORDS, max_alarms: int = DEFAULT_MAX_ALARMS):
        self.variants = tuple(variants)
        if not self.variants:
            raise MRADError("choose at least one variant to monitor")
        self.thresholds = {v: float(thresholds[v]) for v in self.variants}
        self.rule = rule.check()
        self.baselines = dict(baselines or {})  # variant -> (μ0, σ0) given by a profile
        self.profile = profile
        self.charts = {v: Chart(self.rule, *self.baselines.get(v, (None, None))) for v in self.variants}
        self.records = deque(maxlen=max_records)  # classified records, oldest dropped first
        self.anomalies = deque(maxlen=max_alarms)
        self.drift = deque(maxlen=max_alarms)
        self._open = {v: None for v in self.variants}  # the anomaly run in progress
        self._last_state = {v: None for v in self.variants}
        self.scored_frames = 0
        self.dropped_frames = 0
        self._lock = threading.RLock()

    @classmethod
    def create(cls, variants, profile=None, image_threshold: float = 0.5, rule: DriftRule = DriftRule(), **kw):
        """Thresholds and μ0, σ0 from the profile where it has the variant; else `image_threshold` and a
        collected baseline."""
        thresholds, baselines = {}, {}
        for v in variants:
            if profile is not None:
                p = profile.variant(v)  # ProfileError when the profile lacks the variant
                if len(p.normal_scores) < 2:
                    raise MRADError(f"profile {profile.name!r} has one normal score for {name(v)}; the drift limits "
                                    "need a standard deviation: calibrate with at least two normal images")
                thresholds[v], baselines[v] = p.image_threshold, mean_sd(p.normal_scores)
            else:
                thresholds[v] = float(image_threshold)
        return cls(variants, thresholds, rule, baselines, profile, **kw)

    def add(self, measured: dict) -> dict:
        """Classify one frame's measurements (from `measure`) and append it: -> the record {"frame", "t_s",
        "variants": {v: {score, anomalous, map_top, defect_area_percent, latency_ms, ewma, lower, upper, state}}}."""
        with self._lock:
            t_s, out = measured["t_s"], {}
            for v in self.variants:
                m = measured["variants"][v]
                ewma, lower, upper = self.charts[v].update(m["score"])
                state = state_of(m["score"], self.thresholds[v], ewma, lower, upper)
                out[v] = {"score": m["score"], "anomalous": is_anomalous(m["score"], self.thresholds[v]),
                          "map_top": m["map_top"], "defect_area_percent": m["defect_area_percent"],
                          "latency_ms": m["latency_ms"], "ewma": ewma, "lower": lower, "upper": upper, "state": state}
                self._alarms(v, measured["frame"], t_s, m["score"], state)
            record = {"frame": measured["frame"], "t_s": t_s, "variants": out}
            self.records.append(record)
            self.scored_frames += 1
            return record

    def _alarms(self, v, frame, t_s, score, state):
        run = self._open[v]
        if state == "anomaly":
            if run is None:
                run = self._open[v] = {"variant": v, "start_s": t_s, "end_s": t_s, "frames": 0, "max_score": score}
                self.anomalies.append(run)  # kept up to date while it is open
            run["end_s"], run["frames"], run["max_score"] = t_s, run["frames"] + 1, max(run["max_score"], score)
        else:
            self._open[v] = None
        if state == "drift" and self._last_state[v] != "drift":
            self.drift.append({"variant": v, "onset_s": t_s, "frame": frame})
        self._last_state[v] = state

    def alarms(self) -> dict:
        """alarms.json: {"anomalies": [{variant, start_s, end_s, frames, max_score}], "drift": [{variant, onset_s,
        frame}], "dropped_frames", "scored_frames"}, each list in time order."""
        with self._lock:
            order = {v: i for i, v in enumerate(VARIANTS)}
            by_time = lambda key: lambda a: (a[key], order.get(a["variant"], 9))  # noqa: E731
            return {"anomalies": sorted((dict(a) for a in self.anomalies), key=by_time("start_s")),
                    "drift": sorted((dict(d) for d in self.drift), key=by_time("onset_s")),
                    "dropped_frames": int(self.dropped_frames), "scored_frames": int(self.scored_frames)}

    def rows(self, records=None) -> list:
        """frames.csv rows (dicts of CSV_COLUMNS), one per frame and variant."""
        with self._lock:
            records = list(self.records) if records is None else records
        return [csv_row(r, v) for r in records for v in self.variants if v in r["variants"]]

    def measures(self) -> list:
        """The raw measurements of the records kept (what re-classification needs)."""
        keep = ("score", "map_top", "defect_area_percent", "latency_ms")
        with self._lock:
            return [{"frame": r["frame"], "t_s": r["t_s"],
                     "variants": {v: {k: x[k] for k in keep} for v, x in r["variants"].items()}} for r in self.records]

    def reclassify(self, profile=None, image_threshold: float = 0.5, rule: DriftRule | None = None) -> "Monitor":
        """A new Monitor over the same scores with another profile / threshold / rule: no model call."""
        other = Monitor.create(self.variants, profile, image_threshold, rule or self.rule,
                               max_records=self.records.maxlen, max_alarms=self.anomalies.maxlen)
        for m in self.measures():
            other.add(m)
        other.dropped_frames = self.dropped_frames
        return other

    def latest(self) -> dict | None:
        with self._lock:
            return self.records[-1] if self.records else None


def _num(x):
    return "" if x is None else repr(float(x))


def csv_row(record: dict, v: str) -> dict:
    """One frames.csv row; floats written exactly (repr), so the CSV recomputes to the last bit."""
    x = record["variants"][v]
    return {"frame": record["frame"], "t_s": _num(record["t_s"]), "variant": v, "score": _num(x["score"]),
            "anomalous": "true" if x["anomalous"] else "false", "map_top": _num(x["map_top"]),
            "defect_area_percent": _num(x["defect_area_percent"]), "latency_ms": _num(x["latency_ms"]),
            "ewma": _num(x["ewma"]), "lower": _num(x["lower"]), "upper": _num(x["upper"]), "state": x["state"]}


class CsvWriter:
    """frames.csv written as frames are scored (nothing of the timeline has to stay in memory for it)."""

    def __init__(self, path, variants):
        self.variants = tuple(variants)
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, CSV_COLUMNS)
        self.writer.writeheader()

    def write(self, record: dict):
        for v in self.variants:
            self.writer.writerow(csv_row(record, v))

    def close(self):
        self.file.close()


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------------------------------------------------- plot
def timeline_figure(monitor: Monitor, records=None, title: str = "", width: float = 11.0):
    """matplotlib Figure (no pyplot): per variant, scores over time, the image threshold, the EWMA and its control
    limits, anomalous spans shaded and drift onsets marked."""
    from matplotlib.figure import Figure

    from .plots import _colour

    records = list(monitor.records) if records is None else records
    alarms = monitor.alarms()
    n = len(monitor.variants)
    fig = Figure(figsize=(width, 2.4 * n + 0.6), layout="constrained")
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    for i, (ax, v) in enumerate(zip(axes, monitor.variants)):
        t = np.array([r["t_s"] for r in records], dtype=np.float64)
        x = [r["variants"][v] for r in records]
        score = np.array([e["score"] for e in x], dtype=np.float64)
        nan = float("nan")
        ewma = np.array([nan if e["ewma"] is None else e["ewma"] for e in x], dtype=np.float64)
        lower = np.array([nan if e["lower"] is None else e["lower"] for e in x], dtype=np.float64)
        upper = np.array([nan if e["upper"] is None else e["upper"] for e in x], dtype=np.float64)
        for a in alarms["anomalies"]:
            if a["variant"] == v:
                ax.axvspan(a["start_s"], a["end_s"] if a["end_s"] > a["start_s"] else a["start_s"] + 1e-3,
                           color="tab:red", alpha=0.15, lw=0)
        ax.plot(t, score, ".-", color=_colour(v, i), lw=0.8, ms=3, label="score")
        threshold = monitor.thresholds[v]
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:.3f}")
        ax.plot(t, ewma, color="black", lw=1.2, label=f"EWMA (λ={monitor.rule.lam:g})")
        ax.plot(t, lower, color="0.4", ls=":", lw=1, label=f"limits (L={monitor.rule.L:g})")
        ax.plot(t, upper, color="0.4", ls=":", lw=1)
        for d in alarms["drift"]:
            if d["variant"] == v:
                ax.axvline(d["onset_s"], color="tab:orange", lw=1.2)
        ax.set_ylabel(name(v))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7, ncols=4)
    axes[-1].set_xlabel("time (s)")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def save_figure(fig, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------------------------------- live streams
_EMPTY = object()


class LatestSlot:
    """Newest frame wins: at most one item waits; putting a new one replaces (and counts as dropped) the waiting one.
    Nothing queues without bound."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item = _EMPTY
        self._closed = False
        self.received = 0
        self.dropped = 0

    def put(self, item) -> bool:
        """Leave `item` for the consumer; True when it replaced a waiting one (dropped)."""
        with self._cond:
            replaced = self._item is not _EMPTY
            self.dropped += replaced
            self.received += 1
            self._item = item
            self._cond.notify_all()
            return replaced

    def take(self, timeout: float | None = None):
        """The waiting item (the newest), or _EMPTY after `timeout` seconds / once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not _EMPTY or self._closed, timeout)
            item, self._item = self._item, _EMPTY
            return item

    @property
    def waiting(self) -> int:
        with self._cond:
            return int(self._item is not _EMPTY)

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class StreamScorer:
    """One stream's worker: frames are submitted as fast as they come; one thread scores the newest waiting frame,
    one at a time (`score(item)`); frames that arrive while it is busy replace each other (counted as dropped).
    The thread ends after `idle_s` seconds without a frame and starts again with the next one."""

    def __init__(self, score, idle_s: float = 30.0, on_error=None):
        self.score, self.idle_s, self.on_error = score, idle_s, on_error
        self.slot = LatestSlot()
        self.scored = 0
        self.error = None
        self._lock = threading.Lock()
        self._thread = None
        self._done = threading.Condition()

    @property
    def dropped(self) -> int:
        return self.slot.dropped

    @property
    def waiting(self) -> int:
        return self.slot.waiting

    def submit(self, item):
        self.slot.put(item)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mrad-stream", daemon=True)
                self._thread.start()

    def _run(self):
        while True:
            item = self.slot.take(self.idle_s)
            if item is _EMPTY:
                with self._lock:
                    if self.slot.waiting:  # a frame arrived just now: keep going
                        continue
                    self._thread = None
                    return
            try:
                self.score(item)
                self.error = None
            except Exception as e:  # one bad frame must not end the stream
                self.error = e
                if self.on_error:
                    self.on_error(e)
            with self._done:
                self.scored += 1
                self._done.notify_all()

    def wait_scored(self, n: int, timeout: float | None = None) -> bool:
        """Block until `n` frames in all have been scored (tests, shutdown)."""
        with self._done:
            return self._done.wait_for(lambda: self.scored >= n, timeout)

    def close(self, timeout: float | None = 0) -> bool:
        """No more frames; waits up to `timeout` seconds (None: as long as it takes) for the frame being scored and
        the thread to end. True when no thread runs any more."""
        self.slot.close()
        with self._lock:
            thread = self._thread
        if thread is not None and timeout != 0:
            thread.join(timeout)
        return thread is None or not thread.is_alive()
