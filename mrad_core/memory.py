"""How much memory this process holds: `rss_mb()` (current and peak RSS), `resident_kb(path)` (how much of a mapped file
is resident), `mapped_ranges(path)` (this process's mappings of a file), from /proc (empty elsewhere).

Nothing here gives memory back with madvise or malloc_trim any more. Both were removed while chasing segmentation
faults of the test suite on this project's CI machines (Firecracker, kernel 6.18): long runs crashed in later,
unrelated tests after `malloc_trim`, and one crashed in this module's MADV_PAGEOUT test; the full suite in one
process still crashed without either, so neither is proven the cause (see tests/run_all.py). The OpenVINO engine
lets go of the IR it read once compiled instead (engines.OpenVINOEngine.compiled).
"""
from __future__ import annotations

from pathlib import Path


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


def rss_mb() -> dict:
    """{"rss_mb", "peak_rss_mb"} of this process from /proc (empty where there is no /proc)."""
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return {"rss_mb": int(status["VmRSS"].split()[0]) / 1024, "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024}
    except (OSError, KeyError, ValueError):
        return {}
