"""Timed frames for the monitor: a video file (OpenCV's FFmpeg backend) or a folder of images, sampled.

    src = open_source("line.mp4", fps=2)           # or every=5; a folder of images works the same way
    src.info.sampled, src.info.notes              # how many frames will be scored, what was noticed
    for frame in src:                              # Frame(index, t_s, image (H, W, 3) uint8 RGB, name)
        ...

Video: mp4 / webm / avi / mkv / mov (whatever codecs the FFmpeg inside OpenCV decodes). Rotation metadata is
honoured (CAP_PROP_ORIENTATION_AUTO: a portrait phone video arrives upright). Times come from each frame's
timestamp (CAP_PROP_POS_MSEC), so a variable frame rate is handled, relative to the first frame. A first pass
counts the frames and reads their timestamps (decoding is cheap next to scoring), so that the sampled frames, the
frame limit and truncation are known before any scoring.

Folder: the images with an image extension, in name order. Times: each image's EXIF DateTimeOriginal / DateTime
relative to the first image's, when every image has one; else its place in the order at `fps` (default 1 image/s).

Sampling: `fps=F` takes the first frame at or after each multiple of 1/F seconds (on the frames' own times);
`every=N` takes frames 0, N, 2N, … ; neither takes every frame. More sampled frames than `max_frames` is refused
before anything is scored (the message says so and how to sample fewer).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

from .errors import MRADError
from .images import DEFAULT_MAX_PIXELS, load_image

VIDEO_EXTS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_MAX_FRAMES = 2000  # sampled frames per run (the app and CLI pass MRAD_MAX_FRAMES from Settings)
DEFAULT_FOLDER_FPS = 1.0
EXIF_DATETIME_ORIGINAL, EXIF_DATETIME, EXIF_IFD = 36867, 306, 0x8769
# magic bytes of audio files that have no video stream at all
_AUDIO_MAGIC = ((b"RIFF", 8, b"WAVE", "WAV"), (b"ID3", None, None, "MP3"), (b"fLaC", None, None, "FLAC"),
                (b"OggS", None, None, "Ogg"))


class VideoError(MRADError):
    """A video or frame folder that cannot be monitored, with a message meant for the user."""


@dataclass
class Frame:
    index: int  # the frame's place in the source (decoded frame number, or image number in name order)
    t_s: float  # seconds from the first frame
    image: np.ndarray  # (H, W, 3) uint8 RGB, upright
    name: str  # "frame 12" or the image's file name


@dataclass
class SourceInfo:
    kind: str  # "video" | "folder"
    name: str
    frames: int  # frames decoded (video) or images found (folder)
    times: list  # seconds of every frame, in order
    sampled: list  # indices of the frames that will be scored
    width: int = 0
    height: int = 0
    rotation: int = 0  # degrees of the rotation metadata (applied)
    fps: float = 0.0  # the container's nominal frame rate (video) or the --fps used for places (folder)
    codec: str = ""
    notes: list = field(default_factory=list)
    files: list = field(default_factory=list)  # folder: the image paths, in name order

    def describe(self) -> str:
        what = (f"{self.frames} frames, {self.width}x{self.height}, {self.codec or 'unknown codec'}"
                if self.kind == "video" else f"{self.frames} images")
        return f"{self.name}: {what}; {len(self.sampled)} sampled" + "".join(f"; {n}" for n in self.notes)


def check_sampling(fps=None, every=None):
    if fps is not None and every is not None:
        raise VideoError("give --fps or --every, not both")
    if fps is not None and not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise VideoError(f"--fps must be a positive number of frames per second, not {fps!r}")
    if every is not None and (not isinstance(every, int) or every < 1):
        raise VideoError(f"--every must be a whole number of frames >= 1, not {every!r}")


def sample(times, fps=None, every=None) -> list:
    """Indices of the frames to score: every frame; every N-th (0, N, 2N …); or at `fps`, the first frame at or
    after each multiple of 1/fps seconds (frames' own times, so a variable frame rate is sampled evenly)."""
    check_sampling(fps, every)
    n = len(times)
    if every is not None:
        return list(range(0, n, every))
    if fps is None:
        return list(range(n))
    out, step, next_t = [], 1.0 / fps, 0.0
    for i, t in enumerate(times):
        if t >= next_t - 1e-9:  # a timestamp rounded to the microsecond still counts as on time
            out.append(i)
            next_t = (math.floor(t / step + 1e-9) + 1) * step
    return out


def check_limit(info: SourceInfo, max_frames: int):
    if max_frames is not None and len(info.sampled) > max_frames:
        raise VideoError(f"{info.name}: {len(info.sampled)} frames would be scored, more than the limit of "
                         f"{max_frames} (MRAD_MAX_FRAMES / --max-frames): refused, nothing was scored; sample fewer "
                         "with --fps or --every, or raise the limit")


def _audio_kind(path: Path) -> str | None:
    """'WAV', 'MP3' … when the file is an audio file with no video stream (by its bytes), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError:
        return None
    for magic, at, second, kind in _AUDIO_MAGIC:
        if head.startswith(magic) and (at is None or head[at:at + len(second)] == second):
            return kind
    if head[4:8] == b"ftyp":  # MP4 family: audio only when a sound track is declared and no video track
        if head[8:12] in (b"M4A ", b"M4B ") or (b"soun" in head and b"vide" not in head):
            return "MP4 audio (M4A)"
    if len(head) > 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06:  # MPEG audio frame sync
        return "MP3"
    return None


_AUDIO_ENTRIES = {b"mp4a", b"ac-3", b"ec-3", b"Opus", b"fLaC", b"alac", b"samr", b"sowt", b"twos", b".mp3", b"lpcm"}


def _container_codec(path: Path) -> str:
    """The video codec a container declares (AVI strh handler, MP4/MOV sample entry, Matroska CodecID), read from
    its first and last MB; "" when none is found. Names the codec when OpenCV cannot open the file."""
    import re
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
            f.seek(max(0, path.stat().st_size - (1 << 20)))
            data = head + f.read()
    except OSError:
        return ""
    for m in re.finditer(rb"strhvids|strh....vids", data):
        at = m.start() + (8 if data[m.start() + 4:m.start() + 8] == b"vids" else 12)
        code = data[at:at + 4]
        if code.strip(b"\0 ") and code.isascii():
            return code.decode("ascii", "replace").strip()
    for m in re.finditer(rb"stsd", data):
        code = data[m.start() + 16:m.start() + 20]
        if len(code) == 4 and code not in _AUDIO_ENTRIES and code.isascii() and code.isalnum():
            return code.decode("ascii")
    m = re.search(rb"\x86[\x80-\xff](V_[A-Z0-9/_.]+)", data)
    return m.group(1).decode("ascii") if m else ""


def _fourcc(cap) -> str:
    code = int(cap.get(cv2.CAP_PROP_FOURCC) or 0)
    text = "".join(chr((code >> 8 * i) & 0xFF) for i in range(4))
    return text if code and text.isprintable() and text.strip() else ""


def _open_capture(path: Path):
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if cap.isOpened():
        cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)  # rotation metadata applied to decoded frames (FFmpeg's default)
    return cap


def probe_video(path, fps=None, every=None, max_frames=DEFAULT_MAX_FRAMES, max_pixels=DEFAULT_MAX_PIXELS) \
        -> SourceInfo:
    """First pass over a video: frame count, timestamps, size, rotation; the sampled frames; every refusal
    (VideoError) before anything is scored."""
    path = Path(path)
    check_sampling(fps, every)
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path.name}: the file is empty")
    audio = _audio_kind(path)
    if audio:
        raise VideoError(f"{path.name}: an audio-only file ({audio}) has no video stream to monitor")
    cap = _open_capture(path)
    try:
        if not cap.isOpened():
            codec = _container_codec(path)
            if codec:
                raise VideoError(f"{path.name}: the video codec {codec} cannot be decoded by this OpenCV/FFmpeg build "
                                 "(or the file is corrupt or truncated); re-encode it as MPEG-4/H.264 (mp4) or "
                                 "VP8/VP9 (webm)")
            raise VideoError(f"{path.name}: not a video that can be read: the file is corrupt or truncated, or not "
                             f"a video container ({', '.join(e[1:] for e in VIDEO_EXTS)})")
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        codec, declared = _fourcc(cap), int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        rotation = int(cap.get(cv2.CAP_PROP_ORIENTATION_META) or 0) % 360
        nominal = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if width <= 0 or height <= 0:
            raise VideoError(f"{path.name}: no video stream (an audio-only file?)")
        times = []
        while cap.grab():
            times.append(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
    finally:
        cap.release()
    if not times:
        if declared > 0:
            raise VideoError(f"{path.name}: none of its {declared} frames could be decoded: the codec "
                             f"{codec or '(unknown)'} is not supported by this OpenCV/FFmpeg build, or the data is "
                             "corrupt; re-encode it as H.264/MPEG-4 (mp4) or VP8/VP9 (webm)")
        raise VideoError(f"{path.name}: the video has no frames")
    if declared > 0 and len(times) < 0.9 * declared - 1:
        raise VideoError(f"{path.name}: truncated or corrupt: only {len(times)} of its {declared} frames could be "
                         "decoded")
    notes = []
    if rotation in (90, 180, 270):  # OpenCV reports the size after the rotation
        notes.append(f"rotated {rotation}° as its metadata says")
    if width * height > max_pixels:
        raise VideoError(f"{path.name}: frames of {width}x{height} px are larger than the {max_pixels / 1e6:.0f} MP "
                         "limit")
    times = _monotonic([t - times[0] for t in times])
    info = SourceInfo("video", path.name, len(times), times, sample(times, fps, every), width, height, rotation,
                      nominal, codec, notes)
    check_limit(info, max_frames)
    return info


def _monotonic(times) -> list:
    """Timestamps never go backwards (a container's odd first pts): each is at least the one before."""
    out, last = [], 0.0
    for t in times:
        last = max(last, t if math.isfinite(t) else last)
        out.append(last)
    return out


def iter_video(path, info: SourceInfo):
    """Decode the sampled frames (Frame, RGB, upright) in order."""
    wanted = set(info.sampled)
    cap = _open_capture(Path(path))
    try:
        for i in range(info.frames):
            if not cap.grab():
                raise VideoError(f"{info.name}: decoding stopped at frame {i} of {info.frames}: the file changed or "
                                 "is corrupt")
            if i in wanted:
                ok, bgr = cap.retrieve()
                if not ok or bgr is None:
                    raise VideoError(f"{info.name}: frame {i} could not be decoded (corrupt data)")
                if bgr.ndim == 2:
                    bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
                yield Frame(i, info.times[i], np.ascontiguousarray(bgr[..., ::-1]), f"frame {i}")
    finally:
        cap.release()


def exif_time(path) -> datetime | None:
    """An image's EXIF DateTimeOriginal, else DateTime, else None."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            exif = img.getexif()
            value = exif.get_ifd(EXIF_IFD).get(EXIF_DATETIME_ORIGINAL) or exif.get(EXIF_DATETIME)
    except Exception:  # unreadable here means "no time"; the image itself is checked when it is loaded
        return None
    try:
        return datetime.strptime(str(value).strip("\x00 "), "%Y:%m:%d %H:%M:%S") if value else None
    except ValueError:
        return None


def probe_folder(path, fps=None, every=None, max_frames=DEFAULT_MAX_FRAMES) -> SourceInfo:
    path = Path(path)
    check_sampling(fps, every)
    files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                    and not p.name.startswith(".")), key=lambda p: p.name)
    if not files:
        raise VideoError(f"{path}: the folder has no images ({', '.join(e[1:] for e in IMAGE_EXTS)})")
    stamps = [exif_time(f) for f in files]
    notes = []
    place_fps = fps or DEFAULT_FOLDER_FPS
    if all(stamps):
        times = _monotonic([(s - stamps[0]).total_seconds() for s in stamps])
        notes.append("times from the images' EXIF DateTime")
    else:
        times = [i / place_fps for i in range(len(files))]
        if any(stamps):
            notes.append("some images have no EXIF DateTime: times from their place in name order")
    info = SourceInfo("folder", path.name, len(files), times, sample(times, fps, every), fps=place_fps, notes=notes,
                      files=[str(f) for f in files])
    check_limit(info, max_frames)
    return info


def iter_folder(info: SourceInfo, max_pixels=DEFAULT_MAX_PIXELS):
    for i in info.sampled:
        f = info.files[i]
        loaded = load_image(f, max_pixels)  # as `mrad predict` reads a file (EXIF orientation, modes, limits)
        yield Frame(i, info.times[i], np.asarray(loaded.image), Path(f).name)


class FrameSource:
    """A probed video or folder: `info` and iteration over the sampled frames (len = how many)."""

    def __init__(self, path, fps=None, every=None, max_frames=DEFAULT_MAX_FRAMES, max_pixels=DEFAULT_MAX_PIXELS):
        self.path, self.max_pixels = Path(path), max_pixels
        if self.path.is_dir():
            self.info = probe_folder(self.path, fps, every, max_frames)
        elif self.path.suffix.lower() in IMAGE_EXTS:
            raise VideoError(f"{self.path.name}: a single image; give a video file or a folder of images")
        else:
            self.info = probe_video(self.path, fps, every, max_frames, max_pixels)

    def __len__(self):
        return len(self.info.sampled)

    def __iter__(self):
        if self.info.kind == "folder":
            return iter_folder(self.info, self.max_pixels)
        return iter_video(self.path, self.info)


def open_source(path, fps=None, every=None, max_frames=DEFAULT_MAX_FRAMES, max_pixels=DEFAULT_MAX_PIXELS) \
        -> FrameSource:
    """A video file or a folder of images -> FrameSource (VideoError for anything that cannot be monitored)."""
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    return FrameSource(path, fps, every, max_frames, max_pixels)
