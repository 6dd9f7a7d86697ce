"""The authors' files from Google Drive, file by file (the resolver's last step, and `mrad fetch-official`).

One file: GET the URL from MRAD_DRIVE_URL (a template with `{id}`; default Google's usercontent download URL;
`off` disables Drive) with httpx, streaming into a temporary file next to its destination while hashing it;
follow Drive's "cannot scan for viruses" confirmation form; refuse an HTML page (quota, sign-in, errors) with
one message naming the file, its Drive link and where to put a manual download; check the sha256 against the
registry's table (plus MRAD_ACCEPT_DIGESTS); move it atomically to $MRAD_CACHE_DIR/drive/<authors' name>; then
convert it once to our safetensors layout beside it (mrad_<kind>_<source>.safetensors). Later runs load the
converted file: no pickle, no hashing. On any failure nothing is left in the cache. A lock per file makes
concurrent requests (threads) wait for one download.

Why httpx and not gdown: a plain streaming GET works the same for Google's URL and for any MRAD_DRIVE_URL
(a proxy, a mirror, the tests' stand-in on 127.0.0.1); gdown rewrites and scrapes Drive URLs, keeps partial
files of its own and reports failures as free text. httpx2 is the client huggingface_hub uses here, so network
failures are classified the same way for the Hub and for Drive (hub.unreachable).
"""
from __future__ import annotations

import hashlib
import html
import os
import re
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

from .hub import FLAGS, HubError, project_dirs
from .registry import Artefact, OfficialFile

DEFAULT_URL = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"
_LOCKS: dict = {}
_LOCKS_GUARD = threading.Lock()


class DriveError(HubError):
    """A file that could not be had from Google Drive; the message names it, its Drive link and the fix."""


def url_template() -> str | None:
    """MRAD_DRIVE_URL (must contain {id}), the default, or None when set to `off` or when HF_HUB_OFFLINE=1."""
    from huggingface_hub import constants

    template = os.environ.get("MRAD_DRIVE_URL", "").strip() or DEFAULT_URL
    if template.lower() in ("off", "0", "none", "false") or constants.is_offline_mode():
        return None
    if "{id}" not in template:
        raise HubError(f"MRAD_DRIVE_URL={template!r} has no {{id}} placeholder: use e.g. "
                       f"http://host:port/{{id}}, or unset it for Google Drive ({DEFAULT_URL})")
    return template


def cache_dir() -> Path:
    """$MRAD_CACHE_DIR/drive (default ~/.cache/mrad/drive): verified originals and their converted files."""
    return Path(os.environ.get("MRAD_CACHE_DIR") or Path.home() / ".cache" / "mrad").expanduser() / "drive"


def accepted(official: OfficialFile) -> list:
    """The registry's digest, then any in MRAD_ACCEPT_DIGESTS (comma- or space-separated sha256)."""
    extra = re.split(r"[,\s]+", os.environ.get("MRAD_ACCEPT_DIGESTS", "").lower())
    return [official.sha256] + [d for d in extra if re.fullmatch(r"[0-9a-f]{64}", d) and d != official.sha256]


def converted(art: Artefact) -> Path | None:
    """Our safetensors file converted from the authors' download, if it is in the cache."""
    path = cache_dir() / art.filename
    return path if art.official and path.is_file() else None


def manual_fix(art: Artefact, roots=None) -> str:
    """Where a person puts a manual download."""
    off = art.official
    where = Path((roots or project_dirs())[0]) / art.local_dir / off.name
    return (f"download it by hand from {off.link} and save it as {where} (or give its path with "
            f"{FLAGS[art.kind]}); it is then used without downloading")


def _lock(path: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(path), threading.Lock())


# ---------------------------------------------------------------- one HTTP download
_FORM = re.compile(r"<form[^>]*\bid=\"download-form\"[^>]*>(.*?)</form>", re.S | re.I)
_INPUT = re.compile(r"<input[^>]*type=\"hidden\"[^>]*>", re.I)
_ATTR = re.compile(r"(\w+)=\"([^\"]*)\"")
_LEGACY = re.compile(r"href=\"(/uc\?export=download[^\"]*confirm=[^\"]+)\"", re.I)


def confirm_url(page: str, url: str) -> str | None:
    """The URL behind Drive's "Google Drive can't scan this file for viruses" page (its download form), or None."""
    form = _FORM.search(page)
    if form:
        attrs = dict(_ATTR.findall(page[form.start():form.start() + page[form.start():].index(">") + 1]))
        params = {}
        for tag in _INPUT.findall(form[1]):
            a = dict(_ATTR.findall(tag))
            if "name" in a:
                params[a["name"]] = html.unescape(a.get("value", ""))
        action = html.unescape(attrs.get("action", url))
        return urljoin(url, action) + ("&" if "?" in action else "?") + urlencode(params)
    legacy = _LEGACY.search(page)
    return urljoin(url, html.unescape(legacy[1])) if legacy else None


def _page_reason(page: str) -> str:
    text = re.sub(r"<[^>]+>", " ", page)
    text = " ".join(html.unescape(text).split())
    if re.search(r"quota|too many users", text, re.I):
        return "its quota page (too many downloads of this file recently)"
    if re.search(r"sign in|accounts\.google", text, re.I):
        return "a sign-in page (the file is not shared publicly)"
    return f"an HTML page ({text[:120]!r})" if text else "an empty HTML page"


def _page(response, first: bytes, rest) -> str | None:
    """The text of an HTML answer (Drive's confirmation, quota or sign-in pages), None for a file."""
    if "text/html" in response.headers.get("content-type", "") or \
            first.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        return (first + b"".join(rest)).decode("utf-8", "replace")
    return None


def _stream(client, url, art, tmp, roots):
    """GET url into the open file `tmp`; returns sha256. Follows one confirmation page. Raises DriveError."""
    from . import progress

    off, label = art.official, art.label
    for _ in range(2):
        with client.stream("GET", url) as r:
            if r.status_code != 200:
                raise DriveError(f"{label}: Google Drive answered HTTP {r.status_code} for {off.name} (file id "
                                 f"{off.drive_id}, {url}). To fix: run again later, or {manual_fix(art, roots)}.",
                                 f"HTTP {r.status_code} from {urlsplit(url).netloc}")
            total = int(r.headers["content-length"]) if r.headers.get("content-length", "").isdigit() else None
            chunks = r.iter_bytes()  # as the bytes arrive (a chunk size would buffer: no progress to show)
            with progress.track(label, off.name, url, total) as dl:
                first = next(chunks, b"")
                page = _page(r, first, chunks)
                if page is None:
                    digest, done = hashlib.sha256(), 0
                    for chunk in _chain_first(first, chunks):
                        tmp.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        dl.advance(len(chunk))
            if page is not None:
                nxt = confirm_url(page, url)
                if nxt and nxt != url:
                    url = nxt
                    continue
                raise DriveError(f"{label}: Google Drive sent {_page_reason(page)} instead of {off.name} (file id "
                                 f"{off.drive_id}). To fix: {manual_fix(art, roots)}.", "Drive sent an HTML page")
            if total is not None and done != total:
                raise DriveError(f"{label}: the download of {off.name} from {url} stopped after {done} of {total} "
                                 f"bytes; nothing was kept. To fix: run again, or {manual_fix(art, roots)}.",
                                 "the download was incomplete")
            return digest.hexdigest()
    raise DriveError(f"{label}: Google Drive kept asking for confirmation for {off.name}. To fix: "
                     f"{manual_fix(art, roots)}.", "Drive sent an HTML page")


def _chain_first(first, rest):
    yield first
    yield from rest


def _download(art: Artefact, dest: Path, roots) -> str:
    """Download the authors' file to `dest` (atomically, verified). Returns its sha256. Raises DriveError."""
    import httpx2

    off, template = art.official, url_template()
    url = template.replace("{id}", off.drive_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{off.name}.", suffix=".part", delete=False)
    try:
        with tmp, httpx2.Client(follow_redirects=True, timeout=httpx2.Timeout(60.0, connect=15.0)) as client:
            try:
                digest = _stream(client, url, art, tmp, roots)
            except httpx2.TransportError as e:
                where = urlsplit(url).netloc
                what = "was interrupted" if isinstance(e, (httpx2.ReadError, httpx2.RemoteProtocolError,
                                                           httpx2.ReadTimeout)) else "could not start"
                raise DriveError(f"{art.label}: the download of {off.name} from {where} {what} "
                                 f"({type(e).__name__}: {e}); nothing was kept. To fix: check the network and run "
                                 f"again, or {manual_fix(art, roots)}.", f"Google Drive ({where}) could not be "
                                                                         f"reached: {e}") from e
        ok = accepted(off)
        if digest not in ok:
            also = f" (or one of MRAD_ACCEPT_DIGESTS: {', '.join(ok[1:])})" if ok[1:] else ""
            raise DriveError(f"{art.label}: {off.name} downloaded from {url} has sha256 {digest} but {off.sha256} is "
                             f"expected{also}; nothing was kept. The expected digest is the registry's (reported by an "
                             f"independent evaluation harness). To fix: run again; if the authors re-published the "
                             f"file and you trust it, accept it with MRAD_ACCEPT_DIGESTS={digest}; or "
                             f"{manual_fix(art, roots)}.", "sha256 mismatch")
        os.chmod(tmp.name, 0o644)
        os.replace(tmp.name, dest)
        return digest
    finally:
        Path(tmp.name).unlink(missing_ok=True)


# ---------------------------------------------------------------- the cache
def fetch_original(art: Artefact, roots=None) -> Path:
    """The authors' file in the cache, downloaded (once, under a lock) and verified when not there yet."""
    dest = cache_dir() / art.official.name
    with _lock(dest):
        if not dest.is_file():
            _download(art, dest, roots)
    return dest


def ensure(art: Artefact, roots=None) -> Path:
    """Our converted safetensors file for `art`, downloading and converting the authors' file once."""
    from .cli.convert import convert
    from .errors import MRADError

    out = cache_dir() / art.filename
    with _lock(out):
        if out.is_file():
            return out
        original = fetch_original(art, roots)
        try:
            convert(original, out.parent, art.kind, art.source, force=True)
        except (MRADError, OSError, RuntimeError) as e:
            original.unlink(missing_ok=True)
            raise DriveError(f"{art.label}: {original.name} from Google Drive has the expected digest but could not "
                             f"be converted ({e}); it was removed from {original.parent}. To fix: "
                             f"{manual_fix(art, roots)}.", "conversion failed") from e
    return out
