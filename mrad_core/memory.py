"""Giving memory back to the system after the weights moved elsewhere (Linux with glibc; a no-op elsewhere).

OpenVINO maps the IR's weight file and, while compiling for the CPU, copies the weights into its own layout; the
compiled model never reads the mapped copy again, yet its pages stay resident (1.2 GB for ViT-L/14).
`page_out(path)` asks the kernel to drop them (MADV_PAGEOUT on the read-only mappings of that file: clean file
pages, re-read from disk should anything touch them again, so contents never change); `paging_out(path)` keeps
doing so while the compiler reads them, so the weights are not resident twice at the peak. `rss_mb()` reads the current
and peak RSS, `resident_kb(path)` how much of a mapped file is resident. (No `malloc_trim`: called while other threads
ran, it was followed by segmentation faults in the test suite.)
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
import threading
from pathlib import Path

MADV_PAGEOUT = 21  # Linux >= 5.4


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


def _mappings(path: str | Path, proc_file: str):
    """For each mapping of `path` in /proc/self/maps or smaps: (start, end, permissions, the smaps lines that
    follow it). Nothing where there is no /proc."""
    target = str(Path(path).resolve())
    try:
        lines = Path(proc_file).read_text().splitlines()
    except OSError:
        return
    current = None
    for line in lines:
        parts = line.split(maxsplit=5)
        if parts and "-" in parts[0] and not parts[0].endswith(":"):  # a mapping's first line
            if current:
                yield current
            current = None
            if len(parts) == 6 and parts[5] == target:
                start, end = (int(x, 16) for x in parts[0].split("-"))
                current = (start, end, parts[1], [])
        elif current:
            current[3].append(parts)
    if current:
        yield current


def mapped_ranges(path: str | Path, maps: str = "/proc/self/maps") -> list[tuple[int, int, str]]:
    """(start, end, permissions) of this process's mappings of `path`."""
    return [(start, end, perms) for start, end, perms, _ in _mappings(path, maps)]


def resident_kb(path: str | Path, smaps: str = "/proc/self/smaps") -> int:
    """kB of `path`'s mappings resident in this process (0 where there is no /proc)."""
    return sum(int(f[1]) for *_, fields in _mappings(path, smaps) for f in fields if f and f[0] == "Rss:")


def page_out(path: str | Path) -> int:
    """Drop the resident pages of this process's read-only mappings of `path`; returns the bytes advised (0 where
    the system cannot: another OS, an old kernel, no such mapping). Writable mappings are left alone."""
    libc = _libc()
    if libc is None:
        return 0
    done = 0
    for start, end, perms in mapped_ranges(path):
        if "w" not in perms and libc.madvise(start, end - start, MADV_PAGEOUT) == 0:
            done += end - start
    return done


@contextlib.contextmanager
def paging_out(path: str | Path, interval: float = 0.05):
    """Page out `path`'s mappings every `interval` seconds while the block runs, and once after it. A reader that
    still needs a page faults it back in from the file (the peak drops by up to the file's size; OpenVINO's compile
    of the ViT-L/14 encoder takes about a second longer)."""
    stop = threading.Event()

    def watch():
        while not stop.wait(interval):
            page_out(path)

    watcher = threading.Thread(target=watch, name="mrad-page-out", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        page_out(path)


def rss_mb() -> dict:
    """{"rss_mb", "peak_rss_mb"} of this process from /proc (empty where there is no /proc)."""
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return {"rss_mb": int(status["VmRSS"].split()[0]) / 1024, "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024}
    except (OSError, KeyError, ValueError):
        return {}
