"""`mrad monitor`: score a video file or a folder of images frame by frame, with the EWMA drift rule and alarms."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .. import viz
from ..config import VARIANTS
from ..errors import MRADError
from ..monitor import CsvWriter, DriftRule, Monitor, measure, save_figure, score_frame, timeline_figure
from ..profile import Profile, mismatches, setup_identity
from ..records import name
from ..settings import settings_of
from ..video import DEFAULT_MAX_FRAMES, open_source
from .common import add_model_args, detector_from_args

COMMAND = "monitor"
OVERLAY_SIDE = 360  # longer side of each variant's tile in overlay.mp4
STATE_COLOURS = {"anomaly": (230, 40, 40), "drift": (255, 150, 0), "collecting": (160, 160, 160),
                 "stable": (40, 190, 80)}


def add_parser(sub, name_):
    p = sub.add_parser(name_, help="score a video or a folder of frames over time: drift and alarms",
                       description="Score the sampled frames of a video (mp4/webm/avi/mkv/mov) or a folder of images "
                                   "(name order; times from EXIF DateTime, else place at --fps), one encode per "
                                   "frame for every variant. Writes DIR/frames.csv, DIR/alarms.json, DIR/timeline.png "
                                   "and with --overlay-video DIR/overlay.mp4. The drift rule is in docs/monitor.md.")
    p.add_argument("input", metavar="SOURCE", help="video file or folder of images")  # --source: the model's
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fps", type=float, default=None, metavar="F",
                   help="sample F frames per second by the frames' timestamps (a folder: its images' rate when "
                        "they have no EXIF time; default 1)")
    g.add_argument("--every", type=int, default=None, metavar="N", help="score every N-th frame")
    p.add_argument("--profile", metavar="P", default=None,
                   help="inspection profile (`mrad calibrate`): its image thresholds, and μ0, σ0 from its normal "
                        "scores (no baseline frames)")
    p.add_argument("--image-threshold", type=float, default=None, metavar="T",
                   help="image threshold without a profile (default 0.5)")
    p.add_argument("--variant", nargs="+", choices=(*VARIANTS, "all"), default=["all"], metavar="V",
                   help=f"variants to score: {', '.join(VARIANTS)} or all (default: all)")
    p.add_argument("--baseline", type=int, default=30, metavar="N",
                   help="without a profile, the first N scored frames set μ0, σ0 (default: %(default)s)")
    p.add_argument("--ewma-lambda", type=float, default=0.2, metavar="X", help="EWMA weight λ (default: %(default)s)")
    p.add_argument("--ewma-l", type=float, default=3.0, metavar="X",
                   help="control limits at L standard deviations (default: %(default)s)")
    p.add_argument("--max-frames", type=int, default=None, metavar="N",
                   help="refuse more sampled frames than this [$MRAD_MAX_FRAMES] (default: "
                        f"{DEFAULT_MAX_FRAMES})")
    p.add_argument("--overlay-video", action="store_true", help="also write DIR/overlay.mp4")
    add_model_args(p)
    p.set_defaults(run=run)


def variants_of(choice) -> tuple:
    if "all" in choice:
        return VARIANTS
    return tuple(v for v in VARIANTS if v in choice)


def run(args):
    variants = variants_of(args.variant)
    rule = DriftRule(args.ewma_lambda, args.ewma_l, args.baseline).check()
    max_frames = args.max_frames if args.max_frames is not None else settings_of(args).max_frames
    if max_frames < 1:
        raise MRADError(f"--max-frames must be at least 1, not {max_frames}")
    source = open_source(args.input, args.fps, args.every, max_frames)  # every refusal before the model loads
    profile = Profile.load(args.profile) if args.profile else None
    if profile is not None:
        for v in variants:
            profile.variant(v)
        if args.image_threshold is not None:
            print("mrad monitor: warning: --image-threshold is ignored: the profile's thresholds are used",
                  file=sys.stderr)
    threshold = 0.5 if args.image_threshold is None else args.image_threshold
    model_args = argparse.Namespace(**vars(args))
    model_args.variant = variants[0] if len(variants) == 1 else ("all" if variants == VARIANTS else None)
    detector = detector_from_args(model_args)
    for v in variants:
        detector.require(v)
    if profile is not None:
        for line in mismatches(profile, setup_identity(detector)):
            print(f"mrad monitor: warning: {line}; its thresholds may not fit", file=sys.stderr)
    monitor = Monitor.create(variants, profile, threshold, rule)
    info = source.info
    print(f"mrad monitor: {info.describe()}; {detector.run_info['engine']} {detector.run_info['precision']} on "
          f"{detector.run_info['device']}", file=sys.stderr)

    out = Path(args.out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".mrad-monitor-", dir=out))
    try:
        writer = CsvWriter(staging / "frames.csv", variants)
        video = None
        try:
            bar = tqdm(total=len(source), desc="mrad monitor", unit="frame", file=sys.stderr)
            with bar:
                for frame in source:
                    results, latency = score_frame(detector, frame.image, variants)
                    record = monitor.add(measure(frame.index, frame.t_s, results, latency, profile))
                    writer.write(record)
                    if args.overlay_video:
                        tile = overlay_frame(frame.image, results, record, monitor)
                        if video is None:
                            video = _video_writer(staging / "overlay.mp4", tile, info)
                        video.write(cv2.cvtColor(tile, cv2.COLOR_RGB2BGR))
                    bar.update(1)
        finally:
            writer.close()
            if video is not None:
                video.release()
        alarms = monitor.alarms()
        (staging / "alarms.json").write_text(json.dumps(alarms, indent=1))
        save_figure(timeline_figure(monitor, title=f"{info.name}: {monitor.scored_frames} frames scored"),
                    staging / "timeline.png")
        for f in staging.iterdir():  # all done: move the outputs into place
            os.replace(f, out / f.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {monitor.scored_frames} frame(s) x {len(variants)} variant(s) to {out}: "
          f"{len(alarms['anomalies'])} anomaly alarm(s), {len(alarms['drift'])} drift onset(s)")
    return 0


def _video_writer(path, tile, info):
    fps = info.fps if info.kind == "video" and info.fps > 0 else 1.0
    if len(info.sampled) > 1 and info.times[info.sampled[-1]] > 0:  # the sampled frames' own rate
        fps = (len(info.sampled) - 1) / info.times[info.sampled[-1]]
    h, w = tile.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), max(0.1, float(fps)), (w, h))
    if not writer.isOpened():
        raise MRADError("this OpenCV build cannot write an MPEG-4 video (overlay.mp4); run without --overlay-video")
    return writer


def overlay_frame(image: np.ndarray, results: dict, record: dict, monitor: Monitor) -> np.ndarray:
    """One overlay.mp4 frame: per variant the frame with its heatmap (viz.render), its score and state burnt in,
    side by side; even width and height (what MPEG-4 needs)."""
    base = viz.fit(image, OVERLAY_SIDE)
    tiles = []
    for v, r in results.items():
        x = record["variants"][v]
        tile, _ = viz.render(base, viz.resize_map(r.map[0], base.shape, np.float32), viz.View())
        tile = np.ascontiguousarray(tile)
        label = f"{name(v)} {x['score']:.3f} {x['state']}"
        cv2.rectangle(tile, (0, 0), (tile.shape[1], 24), STATE_COLOURS[x["state"]], -1)
        cv2.putText(tile, label, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.putText(tile, f"t={record['t_s']:.2f}s frame {record['frame']}", (6, tile.shape[0] - 8),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    out = np.hstack(tiles)
    h, w = out.shape[:2]
    return np.ascontiguousarray(out[:h - h % 2, :w - w % 2])
