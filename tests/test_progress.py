"""mrad_core.progress: the registry of running downloads the app shows (thread-safe, listeners throttled)."""
from __future__ import annotations

import threading

from mrad_core import progress


def test_track_lists_downloads_and_tells_listeners_sparingly(monkeypatch):
    monkeypatch.setattr(progress, "NOTIFY_EVERY", 3600.0)  # only start, the last byte and the end are told
    heard = []

    def broken(snapshot):
        raise RuntimeError("a listener that fails must not break the download")
    progress.add_listener(heard.append)
    progress.add_listener(broken)
    try:
        with progress.track("heads", "a.pth", "http://x/a", total_bytes=100, bar=False) as a, \
                progress.track("bank", "b.pt", "http://x/b", bar=False) as b:
            for _ in range(10):
                a.advance(10)
            b.advance(2_500_000)
            now = {d["file"]: d for d in progress.current_downloads()}
            assert now["a.pth"]["done_bytes"] == 100 and now["b.pt"]["total_bytes"] is None
            text = progress.describe()
            assert "downloading heads: a.pth from http://x/a: 100 B of 100 B (100%)" in text
            assert "downloading bank: b.pt from http://x/b: 2.5 MB so far" in text
    finally:
        progress.remove_listener(heard.append)
        progress.remove_listener(broken)
    assert progress.current_downloads() == [] and heard[-1] == []
    assert len(heard) == 5  # a starts, b starts, a's last byte, b ends, a ends: not one call per chunk


def test_threads_advancing_at_once_lose_no_bytes():
    with progress.track("x", "x.bin", "here", total_bytes=8 * 1000, bar=False) as dl:
        threads = [threading.Thread(target=lambda: [dl.advance(1) for _ in range(1000)]) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert progress.current_downloads()[0]["done_bytes"] == 8000
