"""`mrad monitor` and the monitor core on the tiny model: scores equal `mrad predict` on the same pixels, the
EWMA rule recomputed from frames.csv, alarms, the newest-frame-wins slot, and every bad input refused cleanly."""
import csv
import json
import math
import struct
import threading

import cv2
import numpy as np
import pytest
from PIL import Image

from mrad_core.cli import main
from mrad_core.monitor import DriftRule, LatestSlot, Monitor, StreamScorer, measure
from mrad_core.video import open_source
from tiny_model import synthetic_image

THRESHOLD = 0.5
LAM, L, BASELINE = 0.2, 3.0, 4
N_FRAMES = 14


@pytest.fixture
def model_args(tiny_files):
    f = tiny_files
    return ["--model", f["model"], "--backbone", f["backbone"], "--heads", f["heads"], "--image-bank",
            f["image_bank"], "--patch-bank", f["patch_bank"], "--device", "cpu", "--engine", "torch",
            "--precision", "fp32"]


def line_frames():
    """Good frames (one product, sensor noise), then frames with a defect, then a slow brightness drift."""
    good = np.asarray(synthetic_image(300)[0]).astype(np.float32)
    rng = np.random.default_rng(0)
    frames = [np.clip(good + rng.normal(0, 2, good.shape), 0, 255).astype(np.uint8) for _ in range(6)]
    frames += [np.asarray(synthetic_image(400 + i, defect=True)[0]) for i in range(2)]
    frames += [np.clip(good * (1 + 0.05 * (i + 1)), 0, 255).astype(np.uint8) for i in range(6)]
    return frames


def write_video(path, frames, fourcc="MJPG", fps=5):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def predict_scores(paths, out, model_args):
    assert main(["predict", *map(str, paths), "--out", str(out), *model_args]) == 0
    return json.loads((out / "scores.json").read_text())


def recompute(rows, variant, mu0=None, sigma0=None, threshold=THRESHOLD, lam=LAM, width=L, baseline=BASELINE):
    """The documented rule, from the CSV's scores alone -> [(ewma, lower, upper, state)] per row."""
    xs = [float(r["score"]) for r in rows if r["variant"] == variant]
    out, t, z = [], 0, None
    if mu0 is not None:
        z = mu0
    for i, x in enumerate(xs):
        if mu0 is None and i < baseline:
            out.append((None, None, None, "anomaly" if x >= threshold else "collecting"))
            if i == baseline - 1:
                mu0, sigma0 = float(np.mean(xs[:baseline])), float(np.std(xs[:baseline], ddof=1))
                z = mu0
            continue
        t += 1
        z = lam * x + (1 - lam) * z
        half = width * sigma0 * math.sqrt(lam / (2 - lam) * (1 - (1 - lam) ** (2 * t)))
        lo, hi = mu0 - half, mu0 + half
        state = "anomaly" if x >= threshold else "drift" if (z < lo or z > hi) else "stable"
        out.append((z, lo, hi, state))
    return out


def check_rule(rows, variants, **kw):
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        for r, (z, lo, hi, state) in zip(mine, recompute(rows, v, **kw), strict=True):
            assert r["state"] == state, (v, r["frame"])
            assert (r["anomalous"] == "true") == (float(r["score"]) >= kw.get("threshold", THRESHOLD))
            if z is None:
                assert r["ewma"] == r["lower"] == r["upper"] == ""
            else:
                assert abs(float(r["ewma"]) - z) <= 1e-9 and abs(float(r["lower"]) - lo) <= 1e-9
                assert abs(float(r["upper"]) - hi) <= 1e-9


def alarms_from_rows(rows, variants):
    """Maximal anomaly runs and drift-run onsets, recomputed from the CSV's states."""
    anomalies, drift = [], []
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        prev = None
        for r in mine:
            if r["state"] == "anomaly":
                if prev != "anomaly":
                    anomalies.append({"variant": v, "start_s": float(r["t_s"]), "frames": 0, "max_score": -1})
                a = anomalies[-1]
                a["end_s"], a["frames"] = float(r["t_s"]), a["frames"] + 1
                a["max_score"] = max(a["max_score"], float(r["score"]))
            if r["state"] == "drift" and prev != "drift":
                drift.append({"variant": v, "onset_s": float(r["t_s"]), "frame": int(r["frame"])})
            prev = r["state"]
    key = lambda d: (d.get("start_s", d.get("onset_s")), d["variant"])  # noqa: E731
    return sorted(anomalies, key=key), sorted(drift, key=key)


@pytest.mark.parametrize("ext,fourcc", [("mp4", "mp4v"), ("webm", "VP80"), ("avi", "MJPG"), ("mkv", "XVID"),
                                        ("mov", "mp4v")])
def test_containers_decode_every_frame_with_its_time(tmp_path, ext, fourcc):
    frames = line_frames()
    src = open_source(write_video(tmp_path / f"line.{ext}", frames, fourcc))
    decoded = list(src)
    assert [f.index for f in decoded] == list(range(N_FRAMES)) and src.info.frames == N_FRAMES
    assert [f.t_s for f in decoded] == pytest.approx([i / 5 for i in range(N_FRAMES)], abs=1e-3)
    assert decoded[0].image.shape == frames[0].shape and decoded[0].image.dtype == np.uint8
    # RGB order, as the frames were written (lossy codecs: a mean difference of a few levels)
    assert np.abs(decoded[0].image.astype(int) - frames[0]).mean() < 12


def test_video_scores_equal_predict_and_the_rule_recomputes(tiny_files, model_args, tmp_path):
    video = write_video(tmp_path / "line.avi", line_frames(), "MJPG")
    out = tmp_path / "out"
    assert main(["monitor", str(video), "--out", str(out), "--baseline", str(BASELINE), "--variant", "tf", "ft",
                 "--image-threshold", str(THRESHOLD), "--overlay-video", *model_args]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["alarms.json", "frames.csv", "overlay.mp4", "timeline.png"]
    rows = read_csv(out / "frames.csv")
    assert list(rows[0]) == ["frame", "t_s", "variant", "score", "anomalous", "map_top", "defect_area_percent",
                             "latency_ms", "ewma", "lower", "upper", "state"]
    assert [r["variant"] for r in rows[:2]] == ["tf", "ft"] and len(rows) == 2 * N_FRAMES
    assert [float(r["t_s"]) for r in rows[::2]] == pytest.approx([i / 5 for i in range(N_FRAMES)], abs=1e-6)

    # the same decoded pixels through `mrad predict`
    frames = list(open_source(video))
    pngs = []
    for f in frames:
        pngs.append(tmp_path / "decoded" / f"f{f.index:03d}.png")
        pngs[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(f.image).save(pngs[-1])
    expected = predict_scores(pngs, tmp_path / "pred", model_args)
    for r in rows:
        e = expected[f"f{int(r['frame']):03d}"][r["variant"]]
        assert abs(float(r["score"]) - e["score"]) <= 1e-5 and abs(float(r["map_top"]) - e["map_top"]) <= 1e-5

    check_rule(rows, ("tf", "ft"))
    alarms = json.loads((out / "alarms.json").read_text())
    anomalies, drift = alarms_from_rows(rows, ("tf", "ft"))
    assert alarms["anomalies"] == anomalies and alarms["drift"] == drift
    assert alarms["scored_frames"] == N_FRAMES and alarms["dropped_frames"] == 0
    # the story of the line: the defect frames alarm on TF, then the brightness drift moves the EWMA out
    tf_runs = [a for a in alarms["anomalies"] if a["variant"] == "tf"]
    assert [(a["frames"], a["start_s"]) for a in tf_runs] == [(2, pytest.approx(6 / 5))]
    tf_drift = [d for d in alarms["drift"] if d["variant"] == "tf"]
    assert tf_drift and tf_drift[-1]["frame"] >= 8
    first_out = next(r for r in rows if r["variant"] == "tf" and r["ewma"] and r["state"] != "anomaly"
                     and not float(r["lower"]) <= float(r["ewma"]) <= float(r["upper"]))
    assert tf_drift[0]["frame"] == int(first_out["frame"])
    cap = cv2.VideoCapture(str(out / "overlay.mp4"))
    n = 0
    while cap.grab():
        n += 1
    assert n == N_FRAMES and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 2 * 128


def test_folder_of_pngs_gives_exactly_predicts_scores(tiny_files, model_args, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(line_frames()[4:9]):
        Image.fromarray(f).save(folder / f"cam_{i:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main(["monitor", str(folder), "--out", str(out), "--fps", "2", "--baseline", "3", *model_args]) == 0
    rows = read_csv(out / "frames.csv")
    expected = predict_scores(sorted(folder.glob("*.png")), tmp_path / "pred", model_args)
    assert len(rows) == 5 * 3
    for r in rows:
        i = int(r["frame"])
        assert float(r["t_s"]) == i / 2
        assert float(r["score"]) == expected[f"cam_{i:02d}"][r["variant"]]["score"]  # the same files: exact
    check_rule(rows, ("tf", "ft", "clip"), baseline=3)


def test_folder_times_from_exif(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    for i, (name, stamp) in enumerate((("a.jpg", "2026:01:02 10:00:00"), ("b.jpg", "2026:01:02 10:00:07"),
                                       ("c.jpg", "2026:01:02 10:01:00"))):
        exif = Image.Exif()
        exif[306] = stamp
        synthetic_image(i)[0].save(folder / name, exif=exif)
    info = open_source(folder).info
    assert info.times == [0.0, 7.0, 60.0] and "EXIF" in " ".join(info.notes)


def test_sampling_by_fps_and_every(tmp_path):
    video = write_video(tmp_path / "v.avi", (line_frames() * 2)[:10], fps=10)  # 0.0, 0.1, … 0.9 s
    assert open_source(video, fps=4).info.sampled == [0, 3, 5, 8]
    assert open_source(video, every=4).info.sampled == [0, 4, 8]
    assert open_source(video).info.sampled == list(range(10))


def test_portrait_phone_video_is_scored_upright(tmp_path):
    """An mp4 whose track matrix says 'rotate 90°' (as a phone writes): frames arrive rotated right."""
    img = np.zeros((48, 64, 3), np.uint8)
    img[:10, :20] = 255  # a block at the top left
    path = write_video(tmp_path / "phone.mp4", [img] * 3, "mp4v")
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd") - 4 + 48  # version 0 tkhd: the 3x3 matrix starts 48 bytes into the box
    assert struct.unpack(">9i", data[at:at + 36])[0] == 0x10000
    data[at:at + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    path.write_bytes(bytes(data))
    src = open_source(path)
    assert src.info.rotation == 90 and "rotated 90°" in src.info.describe()
    frame = next(iter(src)).image
    assert frame.shape == (64, 48, 3)
    ys, xs = np.nonzero(frame[..., 0] > 128)
    assert ys.max() < 24 and xs.min() > 30  # the block is now at the top right


def test_profile_sets_threshold_and_baseline(tiny_files, model_args, tmp_path, capsys):
    video = write_video(tmp_path / "v.avi", line_frames()[:6])
    normal = [0.42, 0.43, 0.425, 0.431]
    profile = {"format": "mrad-profile/1", "name": "p", "rate": 0.01,
               "bank": {"image": {"name": "other.safetensors", "sha256": "0" * 64, "digest_of": "file"}},
               "variants": {"tf": {"image_threshold": 0.47, "pixel_threshold": 0.6, "pixel_median": 0.2,
                                   "normal_scores": normal}}}
    (tmp_path / "p.json").write_text(json.dumps(profile))
    out = tmp_path / "out"
    assert main(["monitor", str(video), "--out", str(out), "--profile", str(tmp_path / "p.json"), "--variant", "tf",
                 *model_args]) == 0
    assert "image bank differs from the one the profile was calibrated with" in capsys.readouterr().err
    rows = read_csv(out / "frames.csv")
    assert all(r["state"] != "collecting" for r in rows) and rows[0]["ewma"]
    check_rule(rows, ("tf",), mu0=float(np.mean(normal)), sigma0=float(np.std(normal, ddof=1)), threshold=0.47)


def test_reclassify_keeps_scores_and_calls_no_model():
    rng = np.random.default_rng(1)
    mon = Monitor.create(("tf",), image_threshold=0.9, rule=DriftRule(baseline=4))
    for i, s in enumerate(np.concatenate([rng.normal(0.4, 0.01, 10), [0.6, 0.62], rng.normal(0.45, 0.01, 6)])):
        mon.add({"frame": i, "t_s": i / 10, "variants": {"tf": {"score": float(s), "map_top": 0.1,
                                                                  "defect_area_percent": 0.0, "latency_ms": 1.0}}})
    assert not any(r["variants"]["tf"]["anomalous"] for r in mon.records)
    again = mon.reclassify(image_threshold=0.55)
    assert [r["variants"]["tf"]["score"] for r in again.records] == [r["variants"]["tf"]["score"] for r in mon.records]
    assert [r["frame"] for r in again.records if r["variants"]["tf"]["state"] == "anomaly"] == [10, 11]
    assert again.alarms()["anomalies"] == [{"variant": "tf", "start_s": 1.0, "end_s": 1.1, "frames": 2,
                                            "max_score": 0.62}]


def test_timeline_is_bounded():
    mon = Monitor.create(("tf",), rule=DriftRule(baseline=2), max_records=5)
    for i in range(12):
        mon.add({"frame": i, "t_s": float(i), "variants": {"tf": {"score": 0.1 + 0.01 * (i % 2), "map_top": 0.0,
                                                                  "defect_area_percent": 0.0, "latency_ms": 0.0}}})
    assert [r["frame"] for r in mon.records] == [7, 8, 9, 10, 11] and mon.scored_frames == 12


def test_newest_frame_wins_with_a_slow_scorer():
    """The scorer blocks on frame 0 until released; meanwhile the source sends frames 1..9 at once: only one frame
    waits (the newest), 8 are dropped, and the scorer continues with frame 9."""
    started, release = threading.Event(), threading.Event()
    scored = []

    def slow(item):
        scored.append(item)
        if item == 0:
            started.set()
            release.wait()

    stream = StreamScorer(slow, idle_s=5)
    stream.submit(0)
    assert started.wait(10)
    for i in range(1, 10):
        stream.submit(i)
        assert stream.waiting == 1
    assert stream.dropped == 8
    release.set()
    assert stream.wait_scored(2, timeout=10)
    assert scored == [0, 9] and stream.dropped == 8 and stream.waiting == 0
    stream.close()


def test_latest_slot_is_bounded():
    slot = LatestSlot()
    for i in range(1000):
        slot.put(i)
    assert slot.waiting == 1 and slot.dropped == 999 and slot.take(0) == 9 * 111
    slot.close()


def _fails(argv, capsys, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and message in err[-1], err


def _bad_inputs(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    frames = line_frames()
    good = write_video(d / "good.avi", frames[:10])
    data = good.read_bytes()
    (d / "truncated.avi").write_bytes(data[:len(data) * 6 // 10])
    (d / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 20)
    (d / "empty.mp4").write_bytes(b"")
    writer = cv2.VideoWriter(str(d / "zero.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    writer.release()
    (d / "codec.avi").write_bytes(data.replace(b"MJPG", b"ZZZZ"))
    import wave
    with wave.open(str(d / "speech.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(b"\0\0" * 800)
    (d / "nothing").mkdir()
    (d / "nothing" / "readme.txt").write_text("no images")
    return d, good


def test_bad_inputs_get_a_message_and_leave_nothing(tiny_files, model_args, tmp_path, capsys):
    d, good = _bad_inputs(tmp_path)
    cases = [("truncated.avi", [], "truncated or corrupt: only"),
             ("corrupt.mp4", [], "not a video that can be read"),
             ("empty.mp4", [], "the file is empty"),
             ("zero.avi", [], "the video has no frames"),
             ("codec.avi", [], "the video codec ZZZZ cannot be decoded"),
             ("speech.wav", [], "audio-only file (WAV) has no video stream"),
             ("nothing", [], "the folder has no images"),
             ("missing.mp4", [], "no such file or folder"),
             ("good.avi", ["--max-frames", "4"], "10 frames would be scored, more than the limit of 4"),
             ("good.avi", ["--every", "0"], "--every must be a whole number"),
             ("good.avi", ["--baseline", "1"], "--baseline must be at least 2"),
             ("good.avi", ["--ewma-lambda", "1.5"], "--ewma-lambda must be in (0, 1]"),
             ("good.avi", ["--profile", str(d / "speech.wav")], "not a JSON file")]
    for name, extra, message in cases:
        out = tmp_path / f"out_{name}_{len(extra)}"
        _fails(["monitor", str(d / name), "--out", str(out), *extra, *model_args], capsys, message)
        assert not out.exists(), name
    # an existing output folder keeps what it had, and gets nothing new
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    _fails(["monitor", str(d / "truncated.avi"), "--out", str(out), *model_args], capsys, "truncated")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_a_failure_while_scoring_leaves_nothing(tiny_files, model_args, tmp_path, monkeypatch, capsys):
    """An error on the 3rd frame (the data changed under us): the staging folder is removed, no output exists."""
    import mrad_core.cli.monitor as cli
    video = write_video(tmp_path / "v.avi", line_frames()[:6])
    real, calls = cli.score_frame, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            from mrad_core.video import VideoError
            raise VideoError("v.avi: frame 2 could not be decoded (corrupt data)")
        return real(*a, **k)

    monkeypatch.setattr(cli, "score_frame", failing)
    out = tmp_path / "out"
    _fails(["monitor", str(video), "--out", str(out), *model_args], capsys, "frame 2 could not be decoded")
    assert not out.exists()


def test_measure_and_monitor_from_a_detector(tiny_detector):
    """The core alone: one encode per frame for every variant, records with every field."""
    from mrad_core.monitor import score_frame
    frame = line_frames()[0]
    results, latency = score_frame(tiny_detector, frame, ("tf", "clip"))
    mon = Monitor.create(("tf", "clip"), rule=DriftRule(baseline=2))
    rec = mon.add(measure(0, 0.0, results, latency))
    x = rec["variants"]["clip"]
    assert x["score"] == float(results["clip"].score[0]) and x["latency_ms"] > 0 and x["state"] in ("collecting",
                                                                                                      "anomaly")
    assert 0 <= x["defect_area_percent"] <= 100
    assert x["defect_area_percent"] == pytest.approx(100 * float(np.mean(results["clip"].map[0] >= 0.5)))


def test_4k_video_decodes_at_full_size(tmp_path):
    """A 3840x2160 video is accepted (under the pixel limit) and decoded at full size; the model input is resized
    as `mrad predict` resizes a 4K image."""
    big = cv2.resize(line_frames()[0], (3840, 2160), interpolation=cv2.INTER_NEAREST)
    src = open_source(write_video(tmp_path / "uhd.avi", [big, big]))
    assert (src.info.width, src.info.height) == (3840, 2160)
    assert [f.image.shape for f in src] == [(2160, 3840, 3)] * 2
