"""The Monitor tab: a video scored frame by frame (in chunks, each chunk one model call, like a batch) on a timeline
with the EWMA drift rule, re-classified without scoring again; and the browser's camera, scored live with the
newest frame winning. API: /monitor_video.

Mounting (page.py): `self.monitor = MonitorTab(self)` and `("Monitor", [self.monitor])` in `self.tabs`. It uses the
page's `gpu_chunk` (batch.score_chunk through gpu_call), `variants`, `source`, `bank_id` and `model_events`.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import torch

from .. import records, viz
from ..config import VARIANTS
from ..errors import MRADError
from ..images import load_image, preprocess
from ..monitor import DriftRule, Monitor, StreamScorer, measure, save_figure, timeline_figure, write_csv
from ..profile import Profile
from ..video import open_source
from .gpu import user_errors

PREVIEW_TILE = 224  # px per tile of a frame's preview (input + one overlay per variant)
THUMBNAILS = 60  # anomalous frames shown as thumbnails
LIVE_RECORDS = 300  # the camera's rolling timeline
LIVE_BASELINE = 20  # camera frames that set μ0, σ0
LIVE_STREAMS = 4  # cameras streaming at once (each has one scoring thread)
CAMERA_ON_ZEROGPU = ("The live camera needs a dedicated GPU: on ZeroGPU every frame would ask for a GPU of its own. "
                     "Record a video and score it in the Video tab (it is scored in chunks, like a batch).")


class LiveSession:
    """One browser's camera stream: a StreamScorer (newest frame wins) feeding a rolling Monitor."""

    def __init__(self, tab, variants, source, bank_id, threshold):
        self.tab, self.key = tab, (tuple(variants), source, bank_id, float(threshold))
        self.variants = tuple(variants)
        self.monitor = Monitor.create(self.variants, None, float(threshold), DriftRule(baseline=LIVE_BASELINE),
                                      max_records=LIVE_RECORDS, max_alarms=200)
        self.stream = StreamScorer(self._score, idle_s=30)
        self.started, self.received, self.overlay, self.scored_times = time.monotonic(), 0, None, []

    def submit(self, image):
        self.received += 1
        self.stream.submit((self.received - 1, time.monotonic() - self.started, np.ascontiguousarray(image)))

    def _score(self, item):
        index, t_s, image = item
        source, bank_id = self.key[1], self.key[2]
        display = viz.fit(np.asarray(load_image(image).image), 360)
        start = time.perf_counter()
        scored = self.tab.page.gpu_chunk(self.tab.pixels([image]), list(self.variants), source, bank_id)
        ms = 1000 * (time.perf_counter() - start)
        results = {v: r[0:1] for v, r in scored.results.items()}
        if tuple(results) != self.variants:  # a variant this bank cannot run: monitor the rest
            self.monitor = Monitor.create(tuple(results), None, self.monitor.thresholds[self.variants[0]],
                                          self.monitor.rule, max_records=LIVE_RECORDS, max_alarms=200)
            self.variants = tuple(results)
        record = self.monitor.add(measure(index, t_s, results, {v: ms for v in results}))
        self.monitor.dropped_frames = self.stream.dropped
        self.overlay = overlay_tiles(display, results, record)
        self.scored_times = (self.scored_times + [time.monotonic()])[-20:]

    def fps(self) -> float:
        t = self.scored_times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0

    def status(self) -> str:
        rec = self.monitor.latest()
        if self.stream.error is not None:
            return f"⚠️ {self.stream.error}"
        if rec is None:
            return "waiting for the first scored frame …"
        parts = [f"**{records.name(v)}** {x['score']:.3f} · {x['state']}" for v, x in rec["variants"].items()]
        return (" | ".join(parts) + f"  \n{self.monitor.scored_frames} frames scored · {self.fps():.1f} frames/s · "
                f"{self.stream.dropped} dropped (newest frame wins)")

    def close(self, timeout: float | None = 0) -> bool:
        return self.stream.close(timeout)


def overlay_tiles(display, results: dict, record: dict) -> np.ndarray:
    """Per variant the frame with its heatmap, score and state, side by side (one image)."""
    tiles, labels = [display], ["input"]
    for v, r in results.items():
        x = record["variants"][v]
        tile, _ = viz.render(display, viz.resize_map(r.map[0], display.shape, np.float32), viz.View())
        tiles.append(tile)
        labels.append(f"{records.name(v)} {x['score']:.3f} {x['state']}")
    return viz.tile_grid(tiles, labels, size=PREVIEW_TILE, columns=len(tiles))


def live_frame(live: LiveSession | None):
    """The camera's rolling timeline as a long table for gr.LinePlot: t_s, value, series (per variant the score, and
    after the baseline its EWMA and limits; the image threshold)."""
    import pandas as pd
    rows = []
    if live is not None:
        for r in list(live.monitor.records):
            rows.append((r["t_s"], live.monitor.thresholds[live.variants[0]], "threshold"))
            for v, x in r["variants"].items():
                rows.append((r["t_s"], x["score"], f"{records.name(v)} score"))
                if x["ewma"] is not None:
                    rows.append((r["t_s"], x["ewma"], f"{records.name(v)} EWMA"))
                    rows.append((r["t_s"], x["lower"], f"{records.name(v)} lower"))
                    rows.append((r["t_s"], x["upper"], f"{records.name(v)} upper"))
    return pd.DataFrame(rows, columns=["t_s", "value", "series"])


class MonitorTab:
    def __init__(self, page):
        self.page = page

    @property
    def max_frames(self) -> int:
        return self.page.settings.max_frames  # [MRAD_MAX_FRAMES]

    def build(self):
        with gr.Tabs():
            with gr.Tab("Video", id="monitor-video"):
                gr.Markdown("A recorded video (mp4, webm, avi, mkv, mov): its sampled frames are scored in chunks, "
                            "each frame encoded once for every variant chosen above, then put on a timeline with the "
                            "EWMA drift rule (docs/monitor.md). Threshold and profile re-classify without scoring "
                            "again.")
                with gr.Row():
                    self.video = gr.File(label="Video (mp4, webm, avi, mkv, mov)",  # any file: mrad_core.video explains
                                          elem_id="monitor-video-file")
                    self.profile = gr.File(label="Inspection profile (optional, JSON)",
                                           elem_id="monitor-profile")
                with gr.Row():
                    self.fps = gr.Number(2, label="Frames per second to score (0 = every frame)", minimum=0)
                    self.threshold = gr.Slider(0, 1, 0.5, step=0.01, label="Image threshold (without a profile)",
                                               elem_id="monitor-threshold")
                    self.baseline = gr.Number(30, precision=0, minimum=2, label="Baseline frames (without a profile)")
                self.run = gr.Button("Score the video", variant="primary", elem_id="monitor-run")
                self.report = gr.Markdown(elem_id="monitor-report")
                self.plot = gr.Plot(label="Timeline: scores, threshold, EWMA and limits, anomalous spans shaded")
                self.pick = gr.Slider(0, 1, 0, step=1, label="Frame (scored frames in order)", elem_id="monitor-pick")
                self.frame_view = gr.Image(label="The frame and its overlays", interactive=False, type="filepath")
                self.frame_text = gr.Markdown()
                self.thumbs = gr.Gallery(label="Anomalous frames", columns=6, height="auto")
                with gr.Row():
                    self.csv = gr.File(label="frames.csv")
                    self.zip = gr.File(label="Report ZIP: frames.csv, alarms.json, timeline.png, anomalous frames")
                self.scores = gr.State(None)  # the scores of the video on screen (re-classified without the model)
                self.api_run = gr.Button(visible=False)
                self.api_out = gr.JSON(visible=False)
            with gr.Tab("Camera", id="monitor-camera"):
                if self.page.settings.zero_gpu:
                    gr.Markdown(CAMERA_ON_ZEROGPU, elem_id="monitor-camera-note")
                    self.camera = None
                else:
                    gr.Markdown("Your browser's camera, scored live. When scoring is slower than the camera the "
                                "newest frame wins (the others are counted as dropped); the first "
                                f"{LIVE_BASELINE} scored frames set the drift baseline.")
                    with gr.Row():
                        self.camera = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Camera",
                                               elem_id="monitor-camera")
                        self.live_view = gr.Image(label="Live overlay", interactive=False, elem_id="monitor-live")
                    self.live_text = gr.Markdown(elem_id="monitor-live-text")
                    self.live_plot = gr.LinePlot(x="t_s", y="value", color="series", label="Rolling timeline",
                                                 elem_id="monitor-live-plot", x_title="time (s)", y_title="score")
                    self.live_threshold = gr.Slider(0, 1, 0.5, step=0.01, label="Image threshold (live)")
                    self.live = gr.State(None, delete_callback=lambda s: s.close() if s is not None else None)

    def wire(self):
        p = self.page
        outs = [self.plot, self.report, self.pick, self.frame_view, self.frame_text, self.thumbs, self.csv, self.zip,
                self.scores]
        self.run.click(self.score_video, [self.video, self.profile, self.fps, p.variants, self.threshold,
                                          self.baseline, p.source, p.bank_id], outs, api_visibility="private",
                       show_progress_on=[self.report, self.plot], **p.model_events)
        for trigger in (self.threshold.release, self.profile.change):
            trigger(self.reclassify, [self.scores, self.threshold, self.profile, self.baseline], outs,
                    api_visibility="private", show_progress="hidden")
        self.pick.change(self.show_frame, [self.scores, self.pick], [self.frame_view, self.frame_text],
                         api_visibility="private", show_progress="hidden")
        self.api_run.click(self.monitor_video, [self.video, self.profile, self.fps, p.variants], self.api_out,
                           api_name="monitor_video", **p.model_events)
        if self.camera is not None:
            self.camera.stream(self.camera_frame, [self.camera, self.live, p.variants, p.source, p.bank_id,
                                                   self.live_threshold],
                               [self.live_view, self.live_text, self.live_plot, self.live], stream_every=0.5,
                               time_limit=600, concurrency_limit=LIVE_STREAMS, concurrency_id="monitor-camera",
                               api_visibility="private", show_progress="hidden")

    # ------------------------------------------------------------------ video
    def pixels(self, images) -> torch.Tensor:
        size = self.page.service.config.image_size
        return torch.stack([preprocess(load_image(im, self.page.settings.max_pixels).image, size) for im in images])

    def scored(self, video, profile_file, fps, variants, threshold=0.5, baseline=30, source=None, bank_id=None,
               progress=None) -> dict:
        """Score a video's sampled frames chunk by chunk -> the session state: {"measures", "variants", "name",
        "dir", "previews", "info"} (plain data; the monitor is rebuilt from it)."""
        if not video:
            raise MRADError("no video: upload one (mp4, webm, avi, mkv, mov)")
        src = open_source(str(video), fps=float(fps) if fps else None, max_frames=self.max_frames,
                          max_pixels=self.page.settings.max_pixels)
        profile = Profile.load(str(profile_file)) if profile_file else None
        rule = DriftRule(baseline=int(baseline or 30)).check()
        source = self.page.source_of(source)
        service = self.page.service
        service.tidy()
        out = Path(tempfile.mkdtemp(dir=service.workdir, prefix="monitor-"))
        (out / "previews").mkdir()
        try:
            measures, previews, run = self._score_chunks(src, out, profile, variants, threshold, rule, source,
                                                         bank_id, progress)
        except BaseException:  # nothing half-written stays behind
            shutil.rmtree(out, ignore_errors=True)
            raise
        return {"measures": measures, "variants": list(run), "name": src.info.name, "dir": str(out),
                "previews": previews, "info": src.info.describe()}

    def _score_chunks(self, src, out, profile, variants, threshold, rule, source, bank_id, progress):
        """The frames of `src` in chunks, each chunk one model call (page.gpu_chunk) -> (measures, previews, run)."""
        n, chunk, done = len(src), max(1, self.page.settings.batch_size), 0
        run, measures, previews, monitor = None, [], [], None
        frames = iter(src)
        while done < n:
            batch = [f for _, f in zip(range(chunk), frames)]
            if not batch:
                break
            if progress:
                progress(done / n, f"scoring frames {done + 1}-{done + len(batch)} of {n}")
            start = time.perf_counter()
            result = self.page.gpu_chunk(self.pixels([f.image for f in batch]), list(variants or VARIANTS), source,
                                         bank_id)
            ms = 1000 * (time.perf_counter() - start) / len(batch)  # per frame, all variants (one encode each)
            if run is None:
                run = tuple(result.results)
                monitor = Monitor.create(run, profile, float(threshold), rule)
            for i, f in enumerate(batch):
                one = {v: r[i] for v, r in result.results.items()}
                measured = measure(f.index, f.t_s, one, {v: ms for v in one}, profile)
                record = monitor.add(measured)
                measures.append(measured)
                preview = out / "previews" / f"frame_{f.index:06d}.jpg"
                tiles = overlay_tiles(viz.fit(f.image, PREVIEW_TILE * 2), one, record)
                cv2.imwrite(str(preview), cv2.cvtColor(tiles, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
                previews.append(str(preview))
            done += len(batch)
        return measures, previews, run

    @staticmethod
    def monitor_of(state, threshold, profile_file, baseline) -> Monitor:
        profile = Profile.load(str(profile_file)) if profile_file else None
        mon = Monitor.create(state["variants"], profile, float(threshold), DriftRule(baseline=int(baseline or 30)))
        for m in state["measures"]:
            mon.add(m)
        return mon

    def outputs(self, state, mon: Monitor) -> dict:
        out = Path(state["dir"])
        write_csv(out / "frames.csv", mon.rows())
        alarms = mon.alarms()
        (out / "alarms.json").write_text(json.dumps(alarms, indent=1))
        fig = timeline_figure(mon, title=f"{state['name']}: {mon.scored_frames} frames scored", width=10)
        save_figure(fig, out / "timeline.png")
        flagged = [(state["previews"][i], f"frame {r['frame']} · t={r['t_s']:.2f}s · " + ", ".join(
            f"{records.name(v)} {x['score']:.3f}" for v, x in r["variants"].items() if x["anomalous"]))
            for i, r in enumerate(mon.records) if any(x["anomalous"] for x in r["variants"].values())]
        with zipfile.ZipFile(out / "monitor_report.zip", "w", zipfile.ZIP_DEFLATED) as z:
            for name in ("frames.csv", "alarms.json", "timeline.png"):
                z.write(out / name, name)
            for path, _ in flagged:
                z.write(path, f"anomalous/{Path(path).name}")
        n_anom, n_drift = len(alarms["anomalies"]), len(alarms["drift"])
        report = (f"**{mon.scored_frames} frames scored** ({state['info']}) with "
                  f"{', '.join(records.name(v) for v in mon.variants)}: {n_anom} anomaly alarm(s), {n_drift} drift "
                  "onset(s). Thresholds: " + ", ".join(f"{records.name(v)} {t:.3f}" for v, t in mon.thresholds.items()))
        state = dict(state, records=list(mon.records))  # classified, for choosing a frame
        pick = 0
        return {self.plot: fig, self.report: report,
                self.pick: gr.Slider(0, max(1, mon.scored_frames - 1), value=pick, step=1),
                self.frame_view: state["previews"][pick] if state["previews"] else None,
                self.frame_text: self.frame_md(state["records"], pick), self.thumbs: flagged[:THUMBNAILS],
                self.csv: str(out / "frames.csv"), self.zip: str(out / "monitor_report.zip"), self.scores: state}

    @staticmethod
    def frame_md(records_: list, i: int) -> str:
        if not records_:
            return ""
        r = records_[min(max(0, i), len(records_) - 1)]
        return f"frame {r['frame']} · t = {r['t_s']:.2f} s  \n" + "  \n".join(
            f"**{records.name(v)}** score {x['score']:.4f} · {x['state']} · area {x['defect_area_percent']:.2f} %"
            for v, x in r["variants"].items())

    @user_errors
    def score_video(self, video, profile_file=None, fps=2, variants=VARIANTS, threshold=0.5, baseline=30,
                    source=None, bank_id=None, progress=gr.Progress()):
        state = self.scored(video, profile_file, fps, variants, threshold, baseline, source, bank_id,
                            lambda f, d: progress(f, desc=d))
        return self.outputs(state, self.monitor_of(state, threshold, profile_file, baseline))

    @user_errors
    def reclassify(self, state, threshold=0.5, profile_file=None, baseline=30):
        """Another threshold or profile: the same scores (session state), no model call."""
        if not state:
            return gr.skip()  # nothing scored yet: no update (an empty dict would be too few outputs)
        return self.outputs(state, self.monitor_of(state, threshold, profile_file, baseline))

    def show_frame(self, state, i):
        if not state or not state.get("previews"):
            return gr.skip()  # nothing scored yet: no update (an empty dict would be too few outputs)
        i = min(max(0, int(i or 0)), len(state["previews"]) - 1)
        return {self.frame_view: state["previews"][i], self.frame_text: self.frame_md(state.get("records", []), i)}

    @user_errors
    def monitor_video(self, video, profile=None, fps=2, variants=VARIANTS):
        """API: a video file, an optional profile JSON file, fps, variants -> alarms.json's JSON plus "frames": the
        per-frame records ({"frame", "t_s", "variants": {v: {score, anomalous, map_top, defect_area_percent,
        latency_ms, ewma, lower, upper, state}}})."""
        state = self.scored(video, profile, fps, variants)
        mon = self.monitor_of(state, 0.5, profile, 30)
        return {**mon.alarms(), "frames": list(mon.records)}

    # ------------------------------------------------------------------ camera
    def camera_frame(self, image, live=None, variants=VARIANTS, source=None, bank_id=None, threshold=0.5):
        """One camera frame: handed to the session's scorer (newest frame wins), answered at once with the latest
        overlay, scores, state and rolling timeline."""
        if self.page.settings.zero_gpu:
            raise gr.Error(CAMERA_ON_ZEROGPU)
        if image is None:
            return gr.skip()  # nothing scored yet: no update (an empty dict would be too few outputs)
        try:
            key = (tuple(v for v in VARIANTS if v in (variants or [])), self.page.source_of(source), bank_id,
                   float(threshold))
            if not key[0]:
                raise MRADError("choose at least one variant")
        except MRADError as e:
            return {self.live_text: f"⚠️ {e}"}
        if live is None or live.key != key:
            if live is not None:
                live.close()
            live = LiveSession(self, *key)
        live.submit(image)
        return {self.live_view: live.overlay if live.overlay is not None else gr.skip(),
                self.live_text: live.status(), self.live_plot: live_frame(live), self.live: live}
