"""Writing files so that no reader ever sees half of one: write under a temporary name beside the target, then
rename it into place in one step (os.replace); on an error the temporary file is removed and the target untouched.

    with atomic(out / "scores.csv") as tmp:
        tmp.write_text(text)
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path


def safe_name(text, default: str = "x", limit: int | None = None) -> str:
    """A file-name-safe version of a name (letters, digits, '_', '.', '-'), at most `limit` characters."""
    safe = re.sub(r"[^\w.-]+", "_", str(text).strip())[:limit].strip("._")
    return safe or default


@contextmanager
def atomic(path):
    """Yield a temporary path beside `path`; it replaces `path` when the block ends without an error."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text: str) -> Path:
    """Write `text` to `path` atomically."""
    with atomic(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def sync(path) -> None:
    """Flush `path`'s data to disk (before renaming it into place: a crash then leaves the old file or the whole new
    one, and its pages are clean, so a mapping of it can be dropped from memory at once)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
