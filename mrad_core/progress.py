"""Downloads in progress, for the app and the console: a small thread-safe registry.

    with progress.track("heads (trained on VisA)", "test_on_mvtec.pth", url, total_bytes=n) as dl:
        dl.advance(len(chunk))              # also drives a tqdm bar on the console
    progress.current_downloads()            # [{"label", "file", "source", "done_bytes", "total_bytes"}, ...]
    progress.describe()                     # one line per download, for a status text
    progress.add_listener(fn)               # fn(snapshot list) on start, end, and every 0.1 s of progress

`done` may also be a callable returning the bytes so far (e.g. the size of a partial file another library writes,
as for the CLIP backbone through huggingface_hub): it is evaluated when a snapshot is taken.
"""
from __future__ import annotations

import itertools
import threading
import time
from contextlib import contextmanager

_LOCK = threading.Lock()
_ACTIVE: dict = {}  # id -> Download
_LISTENERS: list = []
_IDS = itertools.count()
NOTIFY_EVERY = 0.1  # seconds


class Download:
    def __init__(self, label, file, source, total_bytes=None, done=None, bar=True):
        self.label, self.file, self.source, self.total_bytes = label, file, source, total_bytes
        self._done, self._probe, self.started = 0, done, time.time()
        self._told = time.monotonic()  # listeners heard of it when it started (track)
        self._bar = None
        if bar:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=file, leave=False)

    @property
    def done_bytes(self) -> int:
        if self._probe is not None:
            try:
                return int(self._probe())
            except Exception:  # a probe must never break a snapshot
                return 0
        return self._done

    def advance(self, n: int):
        now = time.monotonic()
        with _LOCK:
            self._done += n
            due = now - self._told >= NOTIFY_EVERY or self._done == self.total_bytes
            if due:
                self._told = now
        if self._bar is not None:
            self._bar.update(n)
        if due:  # listeners hear at most every NOTIFY_EVERY seconds, and at the last byte
            _notify()

    def snapshot(self) -> dict:
        return {"label": self.label, "file": self.file, "source": self.source, "done_bytes": self.done_bytes,
                "total_bytes": self.total_bytes, "started": self.started}

    def close(self):
        if self._bar is not None:
            self._bar.close()


@contextmanager
def track(label: str, file: str, source: str, total_bytes: int | None = None, done=None, bar: bool = True):
    """Register a download for the duration of the block; yields the Download (call .advance(n))."""
    dl = Download(label, file, source, total_bytes, done, bar)
    key = next(_IDS)
    with _LOCK:
        _ACTIVE[key] = dl
    _notify()
    try:
        yield dl
    finally:
        with _LOCK:
            _ACTIVE.pop(key, None)
        dl.close()
        _notify()


def current_downloads() -> list:
    """Snapshots of the downloads running now, oldest first."""
    with _LOCK:
        active = list(_ACTIVE.values())
    return [d.snapshot() for d in active]


def _size(n) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def describe(downloads=None) -> str:
    """'downloading <label>: <file> from <source>: 12.0 MB of 57.0 MB (21%)', one line per download."""
    lines = []
    for d in current_downloads() if downloads is None else downloads:
        done, total = d["done_bytes"], d["total_bytes"]
        amount = f"{_size(done)} of {_size(total)} ({100 * done / total:.0f}%)" if total else f"{_size(done)} so far"
        lines.append(f"downloading {d['label']}: {d['file']} from {d['source']}: {amount}")
    return "\n".join(lines)


def add_listener(fn):
    with _LOCK:
        _LISTENERS.append(fn)


def remove_listener(fn):
    with _LOCK:
        if fn in _LISTENERS:
            _LISTENERS.remove(fn)


def _notify():
    with _LOCK:
        listeners = list(_LISTENERS)
    if listeners:
        snap = current_downloads()
        for fn in listeners:
            try:
                fn(snap)
            except Exception:  # a broken listener must not break a download
                pass
