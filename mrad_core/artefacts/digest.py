"""sha256 of files: the one hashing function everyone uses (`file_sha256`, cached by (real path, size, mtime) in
<cache_dir>/verified.json so a large file is hashed once), the check of a file against its expected size and digest
(`verify`), and the digest the Hub recorded for a file in the Hugging Face cache (`lfs_sha256`)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from pathlib import Path

from .errors import HubError
from .options import cache_path

SHA256 = re.compile(r"[0-9a-f]{64}")
_LOCK = threading.Lock()  # guards the digest cache (file and _MEMO)
_MEMO: dict = {}  # "realpath|size|mtime_ns" -> sha256, this process's copy of verified.json


def sha256_of(path) -> str:
    """sha256 of a file, hashed now (no cache)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_sha256(path, cache_dir=None) -> str:
    """sha256 of a file, cached in memory and in <cache_dir>/verified.json (default ~/.cache/mrad; pass
    Settings.cache_dir), so a large file is hashed once (and again only when it changes)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key, cache = f"{real}|{st.st_size}|{st.st_mtime_ns}", Path(cache_dir or cache_path()) / "verified.json"
    with _LOCK:
        if key not in _MEMO:
            try:
                _MEMO.update(json.loads(cache.read_text()))
            except (OSError, ValueError):
                pass
        if key in _MEMO:
            return _MEMO[key]
    digest = sha256_of(real)
    with _LOCK:
        _MEMO[key] = digest
        try:
            try:
                known = json.loads(cache.read_text())
            except (OSError, ValueError):
                known = {}
            known[key] = digest
            cache.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=cache.parent, delete=False, suffix=".tmp") as tmp:
                json.dump(known, tmp)
            os.replace(tmp.name, cache)
        except OSError:  # a read-only home: the in-memory verdict still saves re-hashing in this process
            pass
    return digest


def lfs_sha256(path) -> str | None:
    """The sha256 the Hub recorded for a file in the HF cache: its blob is named after the LFS etag."""
    real = Path(os.path.realpath(path))
    return real.name if real.parent.name == "blobs" and SHA256.fullmatch(real.name) else None


def verify(path, label: str, sha256: str | None = None, size: int | None = None, fix: str = "",
           cache_dir=None) -> str:
    """Check size and sha256 (those known). Returns what was checked; raises HubError on a mismatch."""
    path = str(path)
    real = os.path.realpath(path)
    where = path if real == path else f"{path} (-> {real})"
    fix = fix or f"delete {where} and run again to download it afresh"
    actual_size = os.path.getsize(real)
    if size is not None and actual_size != size:
        raise HubError(f"{label}: {where} has {actual_size} bytes but {size} are expected (a truncated or "
                       f"interrupted copy?). To fix: {fix}.")
    hub_digest = lfs_sha256(path)
    expected = sha256 or hub_digest
    if expected is None:
        return "size verified, no published sha256" if size is not None else "unverified (no published digest)"
    actual = file_sha256(path, cache_dir)
    if actual != expected.lower():
        origin = "the registry" if sha256 else "the Hub's LFS record"
        raise HubError(f"{label}: {where} is corrupt or incomplete: its sha256 is {actual} but {expected} is "
                       f"expected (from {origin}; {actual_size} bytes on disk). To fix: {fix}.")
    return "sha256 verified"
